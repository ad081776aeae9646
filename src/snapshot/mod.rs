//! The validated configuration, as the request path reads it.
//!
//! A [`Snapshot`] is built whole by `config::validate`, never edited after, and published in one
//! atomic swap by [`Published`]. A request loads one snapshot and uses it to its end, so it never
//! sees half of an old config and half of a new one. Everything here is already checked and
//! converted (CIDRs, rates, hashes, header values): nothing is parsed on the request path.

//!
//! Beside it here: [`KeyTable`], its one lookup table (keys by the hashes of their secrets),
//! and [`Routes`], the routing table built from its targets. The plain data it holds (keys,
//! ids, rates, config sections) is in `crate::model`.

mod key_table;
mod routes;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, Guard};

pub use self::key_table::KeyTable;
pub use self::routes::{Routes, segment_prefix};
use crate::limits::{Buckets, Limits};
// The model's types also by their old paths (`crate::snapshot::Key`,
// `keygate::snapshot::IpList`), for the files that still name them so.
use crate::model::KeyHash;
pub use crate::model::{
    Access, AccessTo, Admin, AdminKey, ClusterConfig, ClusterMode, Consumer, Id, IdArena, IpList,
    Key, KeyParts, List, Log, LogFormat, OnRedisError, Paths, Rate, Role, Rules, Server, Status,
    Target, TargetIdx, TargetSet,
};

/// How a presented secret matched a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matched {
    /// The key's current secret.
    Current,
    /// The secret it had before its last rotation, valid until the given time.
    Previous(SystemTime),
}

/// One whole, validated configuration.
#[derive(Debug)]
pub struct Snapshot {
    pub server: Server,
    /// `[log]`: read at start; changing it needs a restart.
    pub log: Log,
    /// `[metrics] listen`: read at start; changing it needs a restart.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `[cluster]`: read at start; changing it needs a restart.
    pub cluster: Option<ClusterConfig>,
    pub targets: Vec<Target>,
    pub routes: Routes,
    pub consumers: Vec<Consumer>,
    pub keys: Vec<Key>,
    by_hash: KeyTable,
    /// Rate-limit buckets, indexed like `keys` and `consumers`. Fresh when built; replaced by
    /// the surviving ones by [`Published`] so that they outlive reloads.
    pub buckets: Buckets,
    pub admin: Option<Admin>,
    /// The file of managed consumers and keys, when there is one.
    pub keys_file: Option<std::path::PathBuf>,
    /// When each key (by index) was last allowed through, in seconds since the Unix epoch;
    /// 0 for never. Coarse on purpose: the request path stores at most once a second per key.
    last_used: Box<[AtomicU32]>,
}

impl Snapshot {
    /// Assembles a snapshot; `validate` has already refused duplicate hashes.
    pub fn new(
        server: Server,
        targets: Vec<Target>,
        consumers: Vec<Consumer>,
        keys: Vec<Key>,
    ) -> Snapshot {
        let mut table = KeyTable::with_capacity(keys.len());
        for (i, k) in keys.iter().enumerate() {
            table.insert(&keys, k.hash, i, false);
            if let Some((previous, _)) = k.previous() {
                table.insert(&keys, previous, i, true);
            }
        }
        Snapshot::with_table(server, targets, consumers, keys, table)
    }

    /// [`Snapshot::new`] with the table of `keys` already built (by `validate`, which fills it
    /// as it goes to find duplicate hashes).
    pub fn with_table(
        server: Server,
        targets: Vec<Target>,
        consumers: Vec<Consumer>,
        keys: Vec<Key>,
        by_hash: KeyTable,
    ) -> Snapshot {
        let routes = Routes::build(&targets);
        let mut snap = Snapshot {
            server,
            log: Log::default(),
            metrics_listen: None,
            cluster: None,
            targets,
            routes,
            consumers,
            keys,
            by_hash,
            buckets: Buckets::default(),
            admin: None,
            keys_file: None,
            last_used: Box::new([]),
        };
        snap.last_used = snap.keys.iter().map(|_| AtomicU32::new(0)).collect();
        snap.buckets = Buckets::fresh(&snap);
        snap
    }

    /// The one table lookup of the request path: the key, its index, and which of its secrets
    /// matched.
    pub fn key_by_hash(&self, hash: &KeyHash) -> Option<(usize, &Key, Matched)> {
        let (index, previous) = self.by_hash.get(&self.keys, hash)?;
        let key = &self.keys[index];
        let matched = match previous {
            true => Matched::Previous(key.previous()?.1),
            false => Matched::Current,
        };
        Some((index, key, matched))
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
    fn carry_last_used(&self, old: &Snapshot) {
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

    pub fn consumer_of(&self, key: &Key) -> Option<&Consumer> {
        key.consumer.map(|i| &self.consumers[i as usize])
    }

    pub fn target(&self, t: TargetIdx) -> &Target {
        &self.targets[usize::from(t)]
    }

    /// A one-line summary, as `keygate check` prints it.
    pub fn summary(&self) -> String {
        format!(
            "{} targets, {} consumers, {} keys",
            self.targets.len(),
            self.consumers.len(),
            self.keys.len()
        )
    }
}

/// How long `publish` waits for requests still on a replaced snapshot before leaving its
/// freeing to the last of them. Requests hold a snapshot only while they decide (microseconds).
pub const RETIRE_WAIT: Duration = Duration::from_millis(100);

/// Waits until no request holds the replaced snapshot, copies its last-use times into `next`
/// (so none recorded meanwhile is lost), and frees it here, so that no request ever pays for
/// freeing a large key table (100,000 keys take milliseconds to drop).
fn retire(mut old: Arc<Snapshot>, next: &Snapshot) {
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

/// The current snapshot, swapped whole; readers never wait on a writer. Also keeps the
/// rate-limit registry, so every published snapshot shares the buckets of the one before.
pub struct Published {
    current: ArcSwap<Snapshot>,
    generation: AtomicU64,
    limits: Limits,
}

impl Published {
    pub fn new(mut first: Snapshot) -> Published {
        let limits = Limits::default();
        let mut buckets = std::mem::take(&mut first.buckets);
        limits.attach(&first, &mut buckets);
        first.buckets = buckets;
        Published {
            current: ArcSwap::from_pointee(first),
            generation: AtomicU64::new(1),
            limits,
        }
    }

    /// The snapshot a request uses from its start to its end. Hold it only across synchronous
    /// work; take what must outlive an `.await` out of it first.
    pub fn load(&self) -> Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// Replaces the snapshot in one atomic swap and returns the new generation number.
    ///
    /// Blocks until the replaced snapshot is freed (at most [`RETIRE_WAIT`]): call it from the
    /// reload thread, never from a request.
    pub fn publish(&self, mut next: Snapshot) -> u64 {
        let mut buckets = std::mem::take(&mut next.buckets);
        self.limits.attach(&next, &mut buckets);
        next.buckets = buckets;
        // Times recorded so far go in before the swap, so a reader never sees a used key as
        // unused; those recorded between this copy and the swap follow in `retire`.
        next.carry_last_used(&self.current.load());
        let next = Arc::new(next);
        let old = self.current.swap(next.clone());
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        retire(old, &next);
        generation
    }

    /// The current snapshot as an owned `Arc`, for work that awaits while holding it (never a
    /// request: those use [`Published::load`]).
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}
