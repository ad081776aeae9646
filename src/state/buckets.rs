//! Rate-limit buckets that outlive a config reload.
//!
//! Buckets are registered by key or consumer id in a [`DashMap`] beside the snapshot. When a
//! snapshot is published, [`Limits::attach`] hands it the existing bucket of every id that stays
//! with the same rate (so an unrelated edit gives nobody a fresh burst), a new bucket to new or
//! changed ids, and drops the buckets of ids that are gone. The published [`super::Live`] then
//! holds the buckets in vectors indexed like its keys and consumers, so a request reaches its
//! bucket without a map lookup or a lock: only the limiter's own atomics.

use std::sync::Arc;

use dashmap::DashMap;

use crate::limits::Bucket;
use crate::model::Id;
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

/// The registry of buckets by id that carries them across reloads.
#[derive(Default)]
pub struct Limits {
    keys: DashMap<Id, Arc<Bucket>>,
    consumers: DashMap<Id, Arc<Bucket>>,
}

impl Limits {
    /// Gives `buckets` (built fresh for `snap`) the registered bucket of every id whose rate is
    /// unchanged, registers the rest, and forgets ids that `snap` no longer has.
    pub fn attach(&self, snap: &Snapshot, buckets: &mut Buckets) {
        let keys = snap.keys.iter().map(|k| &k.id).zip(buckets.keys.iter_mut());
        carry_over(&self.keys, keys);
        let consumers = snap
            .consumers
            .iter()
            .map(|c| &c.id)
            .zip(buckets.consumers.iter_mut());
        carry_over(&self.consumers, consumers);
    }

    /// How many buckets are registered (keys, consumers): for tests and metrics.
    pub fn len(&self) -> (usize, usize) {
        (self.keys.len(), self.consumers.len())
    }
}

fn carry_over<'a>(
    registry: &DashMap<Id, Arc<Bucket>>,
    slots: impl Iterator<Item = (&'a Id, &'a mut Option<Arc<Bucket>>)>,
) {
    // The first snapshot meets an empty registry: nothing to carry over or drop, so no set of
    // live ids (125,000 of them for 1,000,000 keys, one in eight with a rate limit).
    let first = registry.is_empty();
    let mut live = std::collections::HashSet::new();
    for (id, slot) in slots {
        let Some(fresh) = slot else { continue };
        if !first {
            live.insert(id.clone());
        }
        // The read guard of `get` must be gone before `insert` takes the same shard's write
        // lock, or the reload deadlocks: hence the clone out of it first.
        let kept = registry
            .get(id)
            .filter(|old| old.rate() == fresh.rate())
            .map(|old| old.clone());
        match kept {
            Some(old) => *slot = Some(old),
            None => {
                registry.insert(id.clone(), fresh.clone());
            }
        }
    }
    if !first {
        registry.retain(|id, _| live.contains(id));
    }
}
