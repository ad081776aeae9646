//! With `[cluster]`: the fleet's usage summed in Redis. Each flush sends what this instance
//! counted since the last one as one pipeline of `HINCRBY`s (chunked at [`CHUNK`] commands),
//! never a write per request; every instance's admin API reads the sums back.
//!
//! Layout, under `[cluster] prefix`:
//! - `usage:d:<YYYY-MM-DD>:<key id>`: a hash of a key's counts that day (fields as
//!   [`Counts::fields`] names them, and `consumer`), expiring `retention` days after its last
//!   write;
//! - `usage:h:<YYYY-MM-DDTHH:00:00Z>:<key id>`: the same for an hour, expiring after 49 hours;
//! - `usage:dk:<day>` and `usage:hk:<hour>`: sets of the key ids with counts in that period,
//!   so reading a day does not scan Redis.

use std::collections::HashMap;
use std::time::Duration;

use super::book::{Entry, HOURS_KEPT, Query};
use super::counts::{Counts, day_of_hour, day_string, hour_string};
use super::shard::Taken;
use crate::cluster::Cluster;
use crate::model::Id;

/// Commands per pipeline: one round trip each, small enough to answer within `[cluster]
/// timeout` on a healthy Redis.
const CHUNK: usize = 1000;
/// The longest a flush or a read waits for Redis.
const WAIT: Duration = Duration::from_secs(2);

fn day_hash(prefix: &str, day: u32, key: &str) -> String {
    format!("{prefix}usage:d:{}:{key}", day_string(day))
}

fn hour_hash(prefix: &str, hour: u32, key: &str) -> String {
    format!("{prefix}usage:h:{}:{key}", hour_string(hour))
}

fn day_index(prefix: &str, day: u32) -> String {
    format!("{prefix}usage:dk:{}", day_string(day))
}

fn hour_index(prefix: &str, hour: u32) -> String {
    format!("{prefix}usage:hk:{}", hour_string(hour))
}

/// Adds `taken` to the fleet's sums. `false` when Redis did not take all of it; the caller
/// keeps it for the next flush. (A chunk taken before a later one fails is not sent again:
/// each chunk holds whole rows, so what Redis has is never counted twice.)
pub async fn send(cluster: &Cluster, retention_days: u32, taken: &[Taken]) -> bool {
    let prefix = cluster.config().prefix.clone();
    let day_ttl = i64::from(retention_days + 1) * 86_400;
    let hour_ttl = i64::from(HOURS_KEPT + 1) * 3600;
    let mut pipe = redis::pipe();
    let mut commands = 0;
    let mut sent_all = true;
    for (i, t) in taken.iter().enumerate() {
        let key = t.key.as_str();
        let day = day_of_hour(t.hour);
        for (hash, index, ttl) in [
            (
                day_hash(&prefix, day, key),
                day_index(&prefix, day),
                day_ttl,
            ),
            (
                hour_hash(&prefix, t.hour, key),
                hour_index(&prefix, t.hour),
                hour_ttl,
            ),
        ] {
            for (field, v) in t.counts.fields() {
                pipe.hincr(&hash, field, v).ignore();
                commands += 1;
            }
            if let Some(c) = &t.consumer {
                pipe.hset(&hash, "consumer", c.as_str()).ignore();
            }
            pipe.expire(&hash, ttl).ignore();
            pipe.sadd(&index, key).ignore();
            pipe.expire(&index, ttl).ignore();
            commands += 4;
        }
        if commands >= CHUNK || i + 1 == taken.len() {
            if cluster.pipeline::<()>(&pipe, WAIT).await.is_none() {
                sent_all = false;
                break;
            }
            pipe = redis::pipe();
            commands = 0;
        }
    }
    sent_all
}

/// Reads the rows `q` asks for from the fleet's sums, by period then key; `None` when Redis
/// does not answer.
pub async fn entries(cluster: &Cluster, q: &Query) -> Option<Vec<Entry>> {
    let prefix = cluster.config().prefix.clone();
    let periods: Vec<u32> = q.periods().collect();
    // Which keys have counts in each period.
    let mut candidates: Vec<(u32, String)> = Vec::new();
    match &q.key {
        Some(k) => candidates.extend(periods.iter().map(|p| (*p, k.clone()))),
        None => {
            for chunk in periods.chunks(CHUNK) {
                let mut pipe = redis::pipe();
                for &p in chunk {
                    let index = if q.hourly {
                        hour_index(&prefix, p)
                    } else {
                        day_index(&prefix, p)
                    };
                    pipe.smembers(index);
                }
                let sets: Vec<Vec<String>> = cluster.pipeline(&pipe, WAIT).await?;
                for (&p, mut keys) in chunk.iter().zip(sets) {
                    keys.sort();
                    candidates.extend(keys.into_iter().map(|k| (p, k)));
                }
            }
        }
    }
    let mut out = Vec::new();
    for chunk in candidates.chunks(CHUNK) {
        let mut pipe = redis::pipe();
        for (p, k) in chunk {
            let hash = if q.hourly {
                hour_hash(&prefix, *p, k)
            } else {
                day_hash(&prefix, *p, k)
            };
            pipe.hgetall(hash);
        }
        let hashes: Vec<HashMap<String, String>> = cluster.pipeline(&pipe, WAIT).await?;
        for ((p, k), fields) in chunk.iter().zip(hashes) {
            let mut counts = Counts::default();
            let mut consumer = None;
            for (f, v) in &fields {
                if f == "consumer" {
                    consumer = Id::new(v);
                } else if let Ok(n) = v.parse::<u64>() {
                    counts.set_field(f, n);
                }
            }
            let Some(key) = Id::new(k) else { continue };
            if counts.is_zero() || !q.wants(k, consumer.as_ref().map(Id::as_str)) {
                continue;
            }
            out.push(Entry {
                period: *p,
                key,
                consumer,
                counts,
            });
        }
    }
    Some(out)
}
