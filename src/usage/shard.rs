//! One proxy worker's usage counts since the last collection.
//!
//! A worker only ever writes its own shard; the collector (every `flush_interval`, and before
//! the admin API answers) is the only other party, so the shard's mutex is never contended
//! across cores the way a shared counter would be. A key gets a slot the first time the worker
//! sees it; after that counting a request is a hash lookup and additions, no allocation. A
//! slot unused for over an hour, with no request in flight, is freed at a collection (and its
//! index reused), so a worker holds the keys used lately, not every key it ever saw.

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
    /// foldhash, not SipHash: this lookup is on every proxied request (it was the request
    /// path's largest keygate symbol in `perf`), and key ids come from the operator's config,
    /// not from the client, so there is no flooding to resist.
    index: HashMap<Id, usize, foldhash::fast::FixedState>,
    slots: Vec<Option<Slot>>,
    /// Indexes of freed slots, for the next new key.
    free: Vec<usize>,
}

struct Slot {
    key: Id,
    consumer: Option<Id>,
    /// The hour `counts` are for.
    hour: u32,
    counts: Counts,
    /// Counts of earlier hours not collected yet (a collection spans an hour's end).
    earlier: Vec<(u32, Counts)>,
    /// Requests holding this slot's index that have not been recorded yet: while any does,
    /// the slot is not freed (its index must keep meaning this key).
    in_flight: u32,
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
    /// Every call must be followed by one [`Shard::record`] or [`Shard::release`] of the slot.
    pub fn slot(&self, key: &Id, consumer: Option<&Id>) -> usize {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&i) = t.index.get(key)
            && let Some(Some(s)) = t.slots.get_mut(i)
        {
            if s.consumer.as_ref() != consumer {
                s.consumer = consumer.cloned();
            }
            s.in_flight += 1;
            return i;
        }
        let slot = Slot {
            key: key.clone(),
            consumer: consumer.cloned(),
            hour: 0,
            counts: Counts::default(),
            earlier: Vec::new(),
            in_flight: 1,
        };
        let i = match t.free.pop() {
            Some(i) => {
                t.slots[i] = Some(slot);
                i
            }
            None => {
                t.slots.push(Some(slot));
                t.slots.len() - 1
            }
        };
        t.index.insert(key.clone(), i);
        i
    }

    /// Lets go of `slot` without counting (a request that ended before its answer).
    pub fn release(&self, slot: usize) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(Some(s)) = t.slots.get_mut(slot) {
            s.in_flight = s.in_flight.saturating_sub(1);
        }
    }

    /// Adds one request to `slot` in `hour` (hours since the epoch, UTC).
    pub fn record(&self, slot: usize, hour: u32, r: &Record) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let Some(Some(s)) = t.slots.get_mut(slot) else {
            return;
        };
        s.in_flight = s.in_flight.saturating_sub(1);
        if s.hour != hour {
            if !s.counts.is_zero() {
                let earlier = std::mem::take(&mut s.counts);
                s.earlier.push((s.hour, earlier));
            }
            s.hour = hour;
        }
        s.counts.add_record(r);
    }

    /// Takes every count recorded since the last call, leaving the slots (zeroed) in place but
    /// for those last counted before the hour before `now_hour` with no request in flight.
    pub fn take(&self, now_hour: u32, out: &mut Vec<Taken>) {
        let mut guard = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let t = &mut *guard;
        for (i, entry) in t.slots.iter_mut().enumerate() {
            let Some(s) = entry else { continue };
            if s.counts.is_zero()
                && s.earlier.is_empty()
                && s.in_flight == 0
                && s.hour.saturating_add(1) < now_hour
            {
                t.index.remove(&s.key);
                t.free.push(i);
                *entry = None;
                continue;
            }
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
            .index
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
        shard.take(11, &mut taken);
        let summary: Vec<(&str, u32, u64)> = taken
            .iter()
            .map(|t| (t.key.as_str(), t.hour, t.counts.requests))
            .collect();
        assert_eq!(summary, [("a", 10, 1), ("a", 11, 2), ("b", 11, 1)]);
        assert_eq!(taken[0].consumer, Some(id("acme")));
        // Taken once; the slots stay for the next requests.
        taken.clear();
        shard.take(11, &mut taken);
        assert!(taken.is_empty());
        assert_eq!(shard.len(), 2);
        let b = shard.slot(&id("b"), None);
        shard.record(b, 12, &ok);
        shard.take(12, &mut taken);
        assert_eq!(taken.len(), 1);
        assert_eq!((taken[0].hour, taken[0].counts.requests), (12, 1));
    }

    #[test]
    fn slots_unused_for_an_hour_are_freed_unless_a_request_holds_them() {
        let shard = Shard::default();
        let ok = Record::default();
        let a = shard.slot(&id("a"), None);
        shard.record(a, 10, &ok);
        // In flight across the hours: kept, and its index still means key a.
        let held = shard.slot(&id("a"), None);
        let b = shard.slot(&id("b"), None);
        shard.record(b, 10, &ok);
        let mut taken = Vec::new();
        shard.take(10, &mut taken);
        shard.take(20, &mut taken);
        assert_eq!(shard.len(), 1, "b is freed, a is held");
        let c = shard.slot(&id("c"), None);
        assert_eq!(c, b, "c reuses b's index");
        shard.record(held, 20, &ok);
        shard.record(c, 20, &ok);
        taken.clear();
        shard.take(20, &mut taken);
        let keys: Vec<&str> = taken.iter().map(|t| t.key.as_str()).collect();
        assert_eq!(keys, ["a", "c"]);
        shard.take(22, &mut taken);
        assert_eq!(shard.len(), 0);
        // A request that ends without an answer lets go of its slot.
        let d = shard.slot(&id("d"), None);
        shard.release(d);
        shard.take(30, &mut taken);
        assert!(shard.is_empty());
    }
}
