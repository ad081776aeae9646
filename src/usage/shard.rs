//! One proxy worker's usage counts since the last collection.
//!
//! A worker only ever writes its own shard; the collector (every `flush_interval`, and before
//! the admin API answers) is the only other party, so the shard's mutex is never contended
//! across cores the way a shared counter would be. A key gets a slot the first time the worker
//! sees it; after that counting a request is a hash lookup and additions, no allocation.

use std::collections::HashMap;
use std::sync::Mutex;

use super::counts::{Counts, Record};
use crate::model::Id;

/// One worker's counts, by key slot.
#[derive(Default)]
pub struct Shard {
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    index: HashMap<Id, usize>,
    slots: Vec<Slot>,
}

struct Slot {
    key: Id,
    consumer: Option<Id>,
    /// The hour `counts` are for.
    hour: u32,
    counts: Counts,
    /// Counts of earlier hours not collected yet (a collection spans an hour's end).
    earlier: Vec<(u32, Counts)>,
}

/// What a collection takes from a shard: counts per key, consumer and hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    pub key: Id,
    pub consumer: Option<Id>,
    pub hour: u32,
    pub counts: Counts,
}

impl Shard {
    /// The slot of `key` in this shard, made on its first use (its only allocation). The
    /// consumer is the key's as the request saw it; a key moved to another consumer takes the
    /// new one from its next request on.
    pub fn slot(&self, key: &Id, consumer: Option<&Id>) -> usize {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&i) = t.index.get(key) {
            if t.slots[i].consumer.as_ref() != consumer {
                t.slots[i].consumer = consumer.cloned();
            }
            return i;
        }
        let i = t.slots.len();
        t.slots.push(Slot {
            key: key.clone(),
            consumer: consumer.cloned(),
            hour: 0,
            counts: Counts::default(),
            earlier: Vec::new(),
        });
        t.index.insert(key.clone(), i);
        i
    }

    /// Adds one request to `slot` in `hour` (hours since the epoch, UTC).
    pub fn record(&self, slot: usize, hour: u32, r: &Record) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let Some(s) = t.slots.get_mut(slot) else {
            return;
        };
        if s.hour != hour {
            if !s.counts.is_zero() {
                let earlier = std::mem::take(&mut s.counts);
                s.earlier.push((s.hour, earlier));
            }
            s.hour = hour;
        }
        s.counts.add_record(r);
    }

    /// Takes every count recorded since the last call, leaving the slots (zeroed) in place.
    pub fn take(&self, out: &mut Vec<Taken>) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        for s in &mut t.slots {
            for (hour, counts) in s.earlier.drain(..) {
                out.push(Taken {
                    key: s.key.clone(),
                    consumer: s.consumer.clone(),
                    hour,
                    counts,
                });
            }
            if !s.counts.is_zero() {
                out.push(Taken {
                    key: s.key.clone(),
                    consumer: s.consumer.clone(),
                    hour: s.hour,
                    counts: std::mem::take(&mut s.counts),
                });
            }
        }
    }

    /// Keys this shard has a slot for.
    pub fn len(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .slots
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Id {
        Id::new(s).unwrap()
    }

    #[test]
    fn a_shard_splits_counts_at_the_hour_and_keeps_its_slots() {
        let shard = Shard::default();
        let a = shard.slot(&id("a"), Some(&id("acme")));
        let b = shard.slot(&id("b"), None);
        assert_eq!(shard.slot(&id("a"), Some(&id("acme"))), a);
        let ok = Record {
            allowed: true,
            upstream_status: Some(200),
            ..Record::default()
        };
        shard.record(a, 10, &ok);
        shard.record(a, 11, &ok);
        shard.record(a, 11, &ok);
        shard.record(b, 11, &ok);
        let mut taken = Vec::new();
        shard.take(&mut taken);
        let summary: Vec<(&str, u32, u64)> = taken
            .iter()
            .map(|t| (t.key.as_str(), t.hour, t.counts.requests))
            .collect();
        assert_eq!(summary, [("a", 10, 1), ("a", 11, 2), ("b", 11, 1)]);
        assert_eq!(taken[0].consumer, Some(id("acme")));
        // Taken once; the slots stay for the next requests.
        taken.clear();
        shard.take(&mut taken);
        assert!(taken.is_empty());
        assert_eq!(shard.len(), 2);
        shard.record(b, 12, &ok);
        shard.take(&mut taken);
        assert_eq!(taken.len(), 1);
        assert_eq!((taken[0].hour, taken[0].counts.requests), (12, 1));
    }
}
