//! What outlives a config reload, and the publication that swaps configs under it.
//!
//! A request loads one [`Live`]: the validated [`Snapshot`] (read-only, replaced whole by a
//! reload) together with the runtime state indexed like its keys and consumers: the rate-limit
//! buckets ([`buckets`]) and the last-used times. Publishing a new snapshot builds its `Live`
//! with the surviving buckets and the times recorded so far, then swaps it in one atomic store,
//! so a request never sees the config of one generation with the state of another.
//! `last_used` keeps those times across restarts; [`quotas`] holds the quota counters, carried
//! the same way and saved beside them.

pub mod buckets;
pub mod last_used;
pub mod quotas;
pub mod quotas_file;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, Guard};

use crate::snapshot::Snapshot;
pub use buckets::Buckets;

/// A published snapshot with its runtime state. Derefs to the [`Snapshot`], so a request reads
/// the config through it as through the snapshot itself.
#[derive(Debug)]
pub struct Live {
    snapshot: Snapshot,
    /// Rate-limit buckets, indexed like the snapshot's `keys` and `consumers`: those of the
    /// snapshot before for every id whose rate is unchanged (see [`Buckets::carry_over`]).
    pub buckets: Buckets,
    /// Quota counters, indexed like the snapshot's `keys` and `consumers`: carried by id
    /// from the snapshot before, whatever the quota now says (see [`quotas::Registry::attach`]).
    pub quotas: quotas::Counters,
    /// When each key (by index) was last allowed through, in seconds since the Unix epoch;
    /// 0 for never. Coarse on purpose: the request path stores at most once a second per key.
    last_used: Box<[AtomicU32]>,
}

impl std::ops::Deref for Live {
    type Target = Snapshot;

    fn deref(&self) -> &Snapshot {
        &self.snapshot
    }
}

impl Live {
    /// `snapshot` with fresh buckets and no key used yet.
    pub fn new(snapshot: Snapshot) -> Live {
        Live {
            buckets: Buckets::fresh(&snapshot),
            quotas: quotas::Counters::default(),
            last_used: snapshot.keys.iter().map(|_| AtomicU32::new(0)).collect(),
            snapshot,
        }
    }

    /// The snapshot alone, its state dropped (benches edit a setting and build a new `Live`).
    pub fn into_snapshot(self) -> Snapshot {
        self.snapshot
    }

    /// Records that the key at `index` was used at `now`: a load and, at most once a second, a
    /// store. No lock, no allocation.
    pub fn touch(&self, index: usize, now: SystemTime) {
        let secs = unix_secs(now);
        if let Some(slot) = self.last_used.get(index)
            && slot.load(Ordering::Relaxed) != secs
        {
            slot.store(secs, Ordering::Relaxed);
        }
    }

    pub fn last_used_at(&self, index: usize) -> Option<SystemTime> {
        let secs = self.last_used.get(index)?.load(Ordering::Relaxed);
        (secs != 0).then(|| SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(secs)))
    }

    /// The last use of the key at `index` in seconds since the epoch; 0 for never.
    pub fn last_used_secs(&self, index: usize) -> u32 {
        self.last_used
            .get(index)
            .map_or(0, |s| s.load(Ordering::Relaxed))
    }

    /// Raises the last use of the key at `index` to `secs` (never lowers it).
    pub fn merge_last_used(&self, index: usize, secs: u32) {
        if let Some(slot) = self.last_used.get(index) {
            slot.fetch_max(secs, Ordering::Relaxed);
        }
    }

    /// `(key id, seconds)` of every key used so far.
    pub fn used_keys(&self) -> impl Iterator<Item = (&str, u32)> {
        self.keys
            .iter()
            .zip(self.last_used.iter())
            .filter_map(|(k, t)| {
                let secs = t.load(Ordering::Relaxed);
                (secs != 0).then(|| (k.id.as_str(), secs))
            })
    }

    /// Copies last-use times from `old` by key id (a reload must not forget them).
    fn carry_last_used(&self, old: &Live) {
        let mut used = old.used_keys().peekable();
        if used.peek().is_none() {
            return;
        }
        let index: HashMap<&str, usize> = self
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.id.as_str(), i))
            .collect();
        for (id, secs) in used {
            if let Some(&i) = index.get(id) {
                self.merge_last_used(i, secs);
            }
        }
    }
}

/// How long `publish` waits for requests still on a replaced snapshot before leaving its
/// freeing to the last of them. Requests hold a snapshot only while they decide (microseconds).
pub const RETIRE_WAIT: Duration = Duration::from_millis(100);

/// Waits until no request holds the replaced snapshot, copies its last-use times into `next`
/// (so none recorded meanwhile is lost), and frees it here, so that no request ever pays for
/// freeing a large key table (100,000 keys take milliseconds to drop).
fn retire(mut old: Arc<Live>, next: &Live) {
    let deadline = std::time::Instant::now() + RETIRE_WAIT;
    loop {
        match Arc::try_unwrap(old) {
            Ok(snapshot) => {
                next.carry_last_used(&snapshot);
                return drop(snapshot);
            }
            Err(shared) if std::time::Instant::now() < deadline => {
                old = shared;
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(shared) => return next.carry_last_used(&shared),
        }
    }
}

/// Seconds since the Unix epoch as stored in `last_used` (fits a `u32` until 2106).
pub fn unix_secs(t: SystemTime) -> u32 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs().min(u64::from(u32::MAX)) as u32)
}

/// The current snapshot, swapped whole; readers never wait on a writer. Every published
/// snapshot takes the rate-limit buckets of the one before (by id) and the quota registry's.
pub struct Published {
    current: ArcSwap<Live>,
    generation: AtomicU64,
    quotas: quotas::Registry,
}

impl Published {
    pub fn new(first: Snapshot) -> Published {
        let quotas = quotas::Registry::default();
        let mut first = Live::new(first);
        first.quotas = quotas.attach(&first.snapshot);
        Published {
            current: ArcSwap::from_pointee(first),
            generation: AtomicU64::new(1),
            quotas,
        }
    }

    /// The snapshot a request uses from its start to its end. Hold it only across synchronous
    /// work; take what must outlive an `.await` out of it first.
    pub fn load(&self) -> Guard<Arc<Live>> {
        self.current.load()
    }

    /// Replaces the snapshot in one atomic swap and returns the new generation number.
    ///
    /// Blocks until the replaced snapshot is freed (at most [`RETIRE_WAIT`]): call it from the
    /// reload thread, never from a request.
    pub fn publish(&self, next: Snapshot) -> u64 {
        let mut next = Live::new(next);
        // Reloads are serialized (`reload.rs`), so the snapshot read here is the one replaced.
        let current = self.current.load_full();
        next.buckets
            .carry_over(&next.snapshot, &current.snapshot, &current.buckets);
        next.quotas = self.quotas.attach(&next.snapshot);
        // Times recorded so far go in before the swap, so a reader never sees a used key as
        // unused; those recorded between this copy and the swap follow in `retire`.
        next.carry_last_used(&current);
        drop(current);
        let next = Arc::new(next);
        let old = self.current.swap(next.clone());
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        retire(old, &next);
        generation
    }

    /// The current snapshot as an owned `Arc`, for work that awaits while holding it (never a
    /// request: those use [`Published::load`]).
    pub fn load_full(&self) -> Arc<Live> {
        self.current.load_full()
    }

    /// Every quota counter by id (admin resets and grants, saving).
    pub fn quotas(&self) -> &quotas::Registry {
        &self.quotas
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_rate_gets_a_fresh_bucket_without_deadlock() {
        let text = |rate: &str| {
            format!(
                "[[targets]]\nname = \"p\"\nupstream = \"http://127.0.0.1:1\"\n[[keys]]\nid = \"k\"\nsecret = \"s\"\nrate_limit = \"{rate}\"\n"
            )
        };
        let load = |rate: &str| {
            crate::config::parse(&text(rate), std::path::Path::new("t.toml"))
                .unwrap()
                .snapshot
        };
        let published = Published::new(load("1/minute"));
        assert!(crate::limits::check(published.load().buckets.key(0), None).is_ok());
        // Same rate: the spent bucket is kept.
        published.publish(load("1/minute"));
        assert!(crate::limits::check(published.load().buckets.key(0), None).is_err());
        // Another rate: a fresh bucket (this used to deadlock in the registry).
        published.publish(load("2/minute"));
        assert!(crate::limits::check(published.load().buckets.key(0), None).is_ok());
    }

    /// Buckets follow ids, not positions: a key moved in the file and a consumer keep theirs,
    /// a key that was gone for one reload comes back with a fresh one.
    #[test]
    fn buckets_are_carried_by_id_for_keys_and_consumers() {
        let key = |id: &str| {
            format!(
                "[[keys]]\nid = \"{id}\"\nsecret = \"s-{id}\"\nconsumer = \"c\"\nrate_limit = \"1/minute\"\n"
            )
        };
        let load = |keys: &[&str]| {
            let text = format!(
                "[[targets]]\nname = \"p\"\nupstream = \"http://127.0.0.1:1\"\n[[consumers]]\nid = \"c\"\nrate_limit = \"1/minute\"\n{}",
                keys.iter().map(|k| key(k)).collect::<String>()
            );
            crate::config::parse(&text, std::path::Path::new("t.toml"))
                .unwrap()
                .snapshot
        };
        let spent = |p: &Published, i: usize| {
            let live = p.load();
            crate::limits::check(live.buckets.key(i), None).is_err()
        };
        let published = Published::new(load(&["a", "b"]));
        // "a" and the consumer spent, "b" not.
        assert!(!spent(&published, 0) && spent(&published, 0));
        assert!(crate::limits::check(None, published.load().buckets.consumer(0)).is_ok());
        // "b" first now: each key's bucket follows it, the consumer's stays spent.
        published.publish(load(&["b", "a"]));
        assert!(spent(&published, 1));
        assert!(!spent(&published, 0));
        assert!(crate::limits::check(None, published.load().buckets.consumer(0)).is_err());
        // "a" gone for one reload, then back: a fresh bucket; "b" keeps its spent one.
        published.publish(load(&["b"]));
        published.publish(load(&["b", "a"]));
        assert!(spent(&published, 0));
        assert!(!spent(&published, 1));
    }
}
