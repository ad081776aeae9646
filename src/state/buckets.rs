//! Rate-limit buckets that outlive a config reload.
//!
//! The published [`super::Live`] holds the buckets in vectors indexed like its snapshot's keys and
//! consumers, so a request reaches its bucket without a map lookup or a lock: only the limiter's
//! own atomics. When a snapshot is published, [`Buckets::carry_over`] hands it the bucket of
//! every id that stays with the same rate in the snapshot it replaces (so an unrelated edit gives
//! nobody a fresh burst) and a new bucket to new or changed ids; the buckets of ids that are gone
//! go with the old snapshot. The old snapshot is the registry: no map of buckets by id is kept
//! beside it (for 1,000,000 keys, one in eight with a rate limit, such a map held 11 MB).

use std::collections::HashMap;
use std::sync::Arc;

use crate::limits::Bucket;
use crate::snapshot::Snapshot;

/// The buckets of one snapshot, indexed like its keys and consumers.
#[derive(Debug, Default)]
pub struct Buckets {
    keys: Vec<Option<Arc<Bucket>>>,
    consumers: Vec<Option<Arc<Bucket>>>,
}

impl Buckets {
    /// Fresh buckets for every key and consumer that has a rate limit.
    pub fn fresh(snap: &Snapshot) -> Buckets {
        Buckets {
            keys: snap
                .keys
                .iter()
                .map(|k| k.rate_limit().map(|r| Arc::new(Bucket::new(r))))
                .collect(),
            consumers: snap
                .consumers
                .iter()
                .map(|c| c.rate_limit.map(|r| Arc::new(Bucket::new(r))))
                .collect(),
        }
    }

    pub fn key(&self, index: usize) -> Option<&Bucket> {
        self.keys.get(index).and_then(|b| b.as_deref())
    }

    pub fn consumer(&self, index: usize) -> Option<&Bucket> {
        self.consumers.get(index).and_then(|b| b.as_deref())
    }
}

impl Buckets {
    /// Gives these buckets (built fresh for `snap`) the bucket of every id that `old_snap` has
    /// with the same rate in `old`, its buckets.
    pub fn carry_over(&mut self, snap: &Snapshot, old_snap: &Snapshot, old: &Buckets) {
        let keys = snap.keys.iter().map(|k| k.id.as_str());
        let old_keys = old_snap.keys.iter().map(|k| k.id.as_str());
        carry(
            keys.zip(self.keys.iter_mut()),
            old_keys.zip(old.keys.iter()),
        );
        let consumers = snap.consumers.iter().map(|c| c.id.as_str());
        let old_consumers = old_snap.consumers.iter().map(|c| c.id.as_str());
        carry(
            consumers.zip(self.consumers.iter_mut()),
            old_consumers.zip(old.consumers.iter()),
        );
    }
}

/// Replaces each fresh bucket in `slots` by the bucket of the same id and rate in `old`.
fn carry<'a>(
    slots: impl Iterator<Item = (&'a str, &'a mut Option<Arc<Bucket>>)>,
    old: impl Iterator<Item = (&'a str, &'a Option<Arc<Bucket>>)>,
) {
    // Ids come from the config, which whoever may create keys writes in part: a seeded hash.
    let by_id: HashMap<&str, &Arc<Bucket>, foldhash::fast::RandomState> = old
        .filter_map(|(id, bucket)| Some((id, bucket.as_ref()?)))
        .collect();
    if by_id.is_empty() {
        return;
    }
    for (id, slot) in slots {
        let Some(fresh) = slot else { continue };
        if let Some(old) = by_id.get(id).filter(|old| old.rate() == fresh.rate()) {
            *slot = Some(Arc::clone(old));
        }
    }
}
