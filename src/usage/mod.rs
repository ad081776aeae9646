//! Usage: every request that reaches the authorize step with a known key, counted per key per
//! UTC day (and per hour for the last 48 hours): requests, allowed, denials by code, upstream
//! responses by class, bytes in and out. docs/usage.md tells the whole story.
//!
//! - `counts.rs`: one key's counters in one period, the periods, JSON and CSV;
//! - `shard.rs`: a proxy worker's counts since the last collection (its own, no lock shared
//!   between workers, no allocation once the worker knows the key);
//! - `book.rs`: the collected counts, by day and by hour, pruned by `[usage] retention`;
//! - `store.rs`: the file they survive restarts in;
//! - `fleet.rs`: with `[cluster]`, the fleet's sums in Redis.
//!
//! [`Usage`] ties them together: every `flush_interval` it collects the shards into the book,
//! sends the new counts to the fleet, and writes the file when something changed; at shutdown
//! once more. A crash loses at most one interval.

pub mod book;
pub mod counts;
pub mod fleet;
pub mod shard;
pub mod store;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::cluster::Cluster;
use crate::model::{Id, UsageConfig};
pub use book::{Entry, Query};
pub use counts::Record;
use counts::{Counts, hour_of};
pub use shard::Shard;
use shard::Taken;

/// The gateway's usage counting: the workers' shards, the collected book, its file and the
/// fleet.
pub struct Usage {
    config: UsageConfig,
    path: PathBuf,
    shards: Mutex<Vec<Arc<Shard>>>,
    book: Mutex<Book>,
    /// With a cluster: counts collected here and not yet taken by Redis, by key and hour.
    unsent: Mutex<Unsent>,
    cluster: Option<Arc<Cluster>>,
    /// The book changed since the file was written.
    changed: AtomicBool,
    /// One fleet send at a time, so a read that flushes first and the timer never send the
    /// same counts twice or race on `unsent`.
    sending: tokio::sync::Mutex<()>,
    /// One file write at a time, in collection order.
    writing: Mutex<()>,
}

use book::Book;

/// Counts the fleet has not got yet: by key and hour, with the key's consumer.
type Unsent = HashMap<(Id, u32), (Option<Id>, Counts)>;

/// Where a worker counts: the gateway's [`Usage`] and the worker's own shard.
#[derive(Clone)]
pub struct Meter {
    hub: Arc<Usage>,
    shard: Arc<Shard>,
}

impl Meter {
    /// A meter with a shard of its own, for another worker.
    pub fn sibling(&self) -> Meter {
        self.hub.meter()
    }

    /// The slot of `key` in this worker's shard.
    pub fn slot(&self, key: &Id, consumer: Option<&Id>) -> u32 {
        self.shard.slot(key, consumer) as u32
    }

    /// Lets go of `slot` uncounted: its request was dropped before it was answered.
    pub fn release(&self, slot: u32) {
        self.shard.release(slot as usize);
    }

    /// Counts one finished request of the key in `slot`, in the current UTC hour.
    pub fn record(&self, slot: u32, r: &Record) {
        self.shard
            .record(slot as usize, hour_of(SystemTime::now()), r);
    }
}

/// Where an answer's counts come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// This instance's counts (no `[cluster]`).
    Instance,
    /// The fleet's sums in Redis.
    Fleet,
    /// `[cluster]`, but Redis did not answer: this instance's counts only.
    InstanceFallback,
}

impl Usage {
    /// Counting per `config`, kept at `path` (restored from it now), with `cluster` the fleet's.
    pub fn new(config: UsageConfig, path: PathBuf, cluster: Option<Arc<Cluster>>) -> Arc<Usage> {
        let mut book = match store::load(&path) {
            Ok(b) => b,
            Err(e) => {
                // Kept aside, not overwritten by the next flush: its counts may still be read
                // by hand (or by a newer keygate, for a newer format).
                let aside = path.with_extension("json.unreadable");
                let moved = std::fs::rename(&path, &aside);
                tracing::warn!(path = %path.display(), aside = %aside.display(), moved = moved.is_ok(), error = %e, "unreadable usage file set aside; counting starts anew");
                Book::default()
            }
        };
        // Days past retention go at the first flush, even if nothing new is counted.
        let pruned = book.prune(hour_of(SystemTime::now()), config.retention_days);
        Arc::new(Usage {
            config,
            path,
            shards: Mutex::new(Vec::new()),
            book: Mutex::new(book),
            unsent: Mutex::new(HashMap::new()),
            cluster,
            changed: AtomicBool::new(pruned),
            sending: tokio::sync::Mutex::new(()),
            writing: Mutex::new(()),
        })
    }

    pub fn config(&self) -> &UsageConfig {
        &self.config
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// A meter with a new shard: one per proxy worker.
    pub fn meter(self: &Arc<Self>) -> Meter {
        let shard = Arc::new(Shard::default());
        lock(&self.shards).push(shard.clone());
        Meter {
            hub: self.clone(),
            shard,
        }
    }

    /// Moves the shards' counts into the book (and, with a cluster, into what the fleet has
    /// still to get), then drops what `retention` no longer keeps, as of `now`.
    pub fn collect(&self, now: SystemTime) {
        let mut taken = Vec::new();
        for s in lock(&self.shards).iter() {
            s.take(hour_of(now), &mut taken);
        }
        let mut book = lock(&self.book);
        let mut changed = !taken.is_empty();
        for t in &taken {
            book.add(t);
        }
        changed |= book.prune(hour_of(now), self.config.retention_days);
        drop(book);
        if changed {
            self.changed.store(true, Ordering::Release);
        }
        if self.cluster.is_some() && !taken.is_empty() {
            let mut unsent = lock(&self.unsent);
            for t in taken {
                let e = unsent.entry((t.key, t.hour)).or_default();
                if t.consumer.is_some() {
                    e.0 = t.consumer;
                }
                e.1.add(&t.counts);
            }
        }
    }

    /// Sends what the fleet has not got yet; kept for the next try when Redis fails. Counts
    /// older than `retention` are dropped rather than kept forever through a long outage.
    async fn send(&self, now: SystemTime) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let _one = self.sending.lock().await;
        let batch: Vec<Taken> = {
            let mut unsent = lock(&self.unsent);
            let first_hour =
                hour_of(now).saturating_sub(self.config.retention_days.saturating_mul(24));
            unsent.retain(|(_, hour), _| *hour >= first_hour);
            unsent
                .drain()
                .map(|((key, hour), (consumer, counts))| Taken {
                    key,
                    consumer,
                    hour,
                    counts,
                })
                .collect()
        };
        if batch.is_empty() {
            return;
        }
        if !fleet::send(cluster, self.config.retention_days, &batch).await {
            tracing::warn!(
                rows = batch.len(),
                "usage counts not sent to Redis; trying again at the next flush"
            );
            let mut unsent = lock(&self.unsent);
            for t in batch {
                let e = unsent.entry((t.key, t.hour)).or_default();
                if e.0.is_none() {
                    e.0 = t.consumer;
                }
                e.1.add(&t.counts);
            }
        }
    }

    /// Writes the file if the book changed since the last write. Blocking (fsyncs).
    pub fn write(&self) {
        let _one = lock(&self.writing);
        if !self.changed.swap(false, Ordering::AcqRel) {
            return;
        }
        let bytes = store::render(&lock(&self.book));
        let written = crate::store::write_atomic(&self.path, &bytes);
        if let Err(e) = written {
            self.changed.store(true, Ordering::Release);
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write the usage file");
        }
    }

    /// One flush: collect, send to the fleet, write the file.
    pub async fn flush(self: &Arc<Self>) {
        let now = SystemTime::now();
        self.collect(now);
        self.send(now).await;
        let me = self.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || me.write()).await {
            tracing::warn!(error = %e, "usage flush failed");
        }
    }

    /// Flushes every `flush_interval` while the runtime runs; call [`Usage::flush`] at
    /// shutdown too.
    pub fn spawn(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.config.flush_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                me.flush().await;
            }
        });
    }

    /// The rows `q` asks for, including what the workers counted since the last flush: the
    /// fleet's with a cluster (this instance's counts are sent first), else this instance's.
    pub async fn entries(&self, q: &Query) -> (Vec<Entry>, Scope) {
        let now = SystemTime::now();
        self.collect(now);
        if let Some(cluster) = &self.cluster {
            self.send(now).await;
            if lock(&self.unsent).is_empty()
                && let Some(rows) = fleet::entries(cluster, q).await
            {
                return (rows, Scope::Fleet);
            }
            return (lock(&self.book).entries(q), Scope::InstanceFallback);
        }
        (lock(&self.book).entries(q), Scope::Instance)
    }

    /// Whether this instance has counts of key `id` (a key deleted since still has its usage).
    pub fn knows_key(&self, id: &str) -> bool {
        lock(&self.book).knows_key(id)
    }

    pub fn knows_consumer(&self, id: &str) -> bool {
        lock(&self.book).knows_consumer(id)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn workers_counts_reach_the_book_and_the_file() {
        let dir = std::env::temp_dir().join(format!("keygate-usage-hub-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("u.json");
        let usage = Usage::new(UsageConfig::default(), path.clone(), None);
        let (w1, w2) = (usage.meter(), usage.meter().sibling());
        let key = Id::new("k").unwrap();
        let ok = Record {
            allowed: true,
            upstream_status: Some(200),
            bytes_in: 1,
            bytes_out: 1,
            ..Record::default()
        };
        let s1 = w1.slot(&key, None);
        let s2 = w2.slot(&key, None);
        w1.record(s1, &ok);
        w2.record(s2, &ok);
        w2.record(s2, &ok);
        let today = counts::day_of_hour(hour_of(SystemTime::now()));
        let q = Query {
            from: today,
            to: today,
            hourly: false,
            key: Some("k".into()),
            consumer: None,
        };
        let (rows, scope) = usage.entries(&q).await;
        assert_eq!(scope, Scope::Instance);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].counts.requests, 3);
        usage.flush().await;
        let again = Usage::new(UsageConfig::default(), path, None);
        assert_eq!(again.entries(&q).await.0, rows);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
