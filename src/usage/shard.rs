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
    /// Slots by where their key's bytes are: the request path's lookup. A request's key id is
    /// the snapshot's, and the slot holds a clone of that very id, so its address is its
    /// identity for as long as the slot keeps it (the bytes cannot be freed and reused under
    /// it). Hashing the address reads no memory: hashing the id's text cost a cache miss on
    /// every request (`perf`: this function was the request path's largest symbol, and a
    /// fifth of it was that read). foldhash, not SipHash: the keys are ours, not a client's.
    by_address: HashMap<(usize, usize), usize, foldhash::fast::FixedState>,
    /// Slots by their key's text: for a key id the shard has not seen at this address (the
    /// same key in a reloaded snapshot, or any id made elsewhere).
    index: HashMap<Id, usize, foldhash::fast::FixedState>,
    slots: Vec<Slot>,
    /// Indexes of freed slots, for the next new key.
    free: Vec<usize>,
}

/// One key's counts. Laid out for the request path: `slot` reads the first cache line (key and
/// consumer) and writes the second (`in_flight`); `record` writes the second (the hot part of
/// `counts`, see [`Counts`]). Default field order put them on three lines.
#[repr(C, align(64))]
struct Slot {
    /// `None` once freed (its index is on the free list).
    key: Option<Id>,
    consumer: Option<Id>,
    /// Requests holding this slot's index that have not been recorded yet: while any does,
    /// the slot is not freed (its index must keep meaning this key).
    in_flight: u32,
    /// The hour `counts` are for.
    hour: u32,
    counts: Counts,
    /// Counts of earlier hours not collected yet (a collection spans an hour's end).
    earlier: Vec<(u32, Counts)>,
}

/// Where an id's bytes are: equal for two ids only if they are clones of one another. Reads
/// the id's pointer and length, not its bytes.
fn address(id: &Id) -> (usize, usize) {
    let b = id.as_bytes();
    (b.as_ptr() as usize, b.len())
}

/// The consumer a slot has is the request's: by address first, the usual case, which reads
/// neither id's bytes.
fn same_consumer(a: Option<&Id>, b: Option<&Id>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => address(a) == address(b) || a == b,
        (None, None) => true,
        _ => false,
    }
}

impl Table {
    /// The slot of `key` when it is not found at its address: the slot of the same key at
    /// another address now goes by this one (a reload's new snapshot; the old id is let go),
    /// or a new slot.
    fn find_or_make(&mut self, key: &Id, consumer: Option<&Id>) -> usize {
        let at = address(key);
        // Taken out and put back under the new id, so that the old one (and its snapshot's
        // bytes) is not kept alive by this map either.
        if let Some((_old, i)) = self.index.remove_entry(key) {
            if let Some(before) = self.slots[i].key.replace(key.clone()) {
                self.by_address.remove(&address(&before));
            }
            self.index.insert(key.clone(), i);
            self.by_address.insert(at, i);
            return i;
        }
        let slot = Slot {
            key: Some(key.clone()),
            consumer: consumer.cloned(),
            in_flight: 0,
            hour: 0,
            counts: Counts::default(),
            earlier: Vec::new(),
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        };
        self.index.insert(key.clone(), i);
        self.by_address.insert(at, i);
        i
    }
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
        let mut guard = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let t = &mut *guard;
        let i = match t.by_address.get(&address(key)) {
            Some(&i) => i,
            None => t.find_or_make(key, consumer),
        };
        let s = &mut t.slots[i];
        if !same_consumer(s.consumer.as_ref(), consumer) {
            s.consumer = consumer.cloned();
        }
        s.in_flight += 1;
        i
    }

    /// Lets go of `slot` without counting (a request that ended before its answer).
    pub fn release(&self, slot: usize) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = t.slots.get_mut(slot)
            && s.key.is_some()
        {
            s.in_flight = s.in_flight.saturating_sub(1);
        }
    }

    /// Adds one request to `slot` in `hour` (hours since the epoch, UTC).
    pub fn record(&self, slot: usize, hour: u32, r: &Record) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let Some(s) = t.slots.get_mut(slot).filter(|s| s.key.is_some()) else {
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
        for (i, s) in t.slots.iter_mut().enumerate() {
            let Some(key) = &s.key else { continue };
            if s.counts.is_zero()
                && s.earlier.is_empty()
                && s.in_flight == 0
                && s.hour.saturating_add(1) < now_hour
            {
                t.index.remove(key);
                t.by_address.remove(&address(key));
                t.free.push(i);
                s.key = None;
                s.consumer = None;
                continue;
            }
            for (hour, counts) in s.earlier.drain(..) {
                out.push(Taken {
                    key: key.clone(),
                    consumer: s.consumer.clone(),
                    hour,
                    counts,
                });
            }
            if !s.counts.is_zero() {
                out.push(Taken {
                    key: key.clone(),
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

    #[test]
    fn the_same_key_from_a_reloaded_snapshot_keeps_its_slot() {
        let shard = Shard::default();
        let ok = Record::default();
        let before = id("a");
        let a = shard.slot(&before, None);
        shard.record(a, 10, &ok);
        // A reload makes the same id anew, at another address: same slot, counted together.
        let after = id("a");
        assert_ne!(address(&before), address(&after));
        assert_eq!(shard.slot(&after, None), a);
        shard.record(a, 10, &ok);
        assert_eq!(shard.slot(&after, None), a);
        shard.record(a, 10, &ok);
        // The old id is let go: its address no longer finds the slot.
        {
            let t = shard.table.lock().unwrap();
            assert_eq!(t.by_address.len(), 1);
            assert_eq!(t.by_address.get(&address(&after)), Some(&a));
        }
        let mut taken = Vec::new();
        shard.take(10, &mut taken);
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].counts.requests, 3);
        // Freed: neither its text nor its address finds it any more.
        shard.take(20, &mut taken);
        assert!(shard.is_empty());
        assert!(shard.table.lock().unwrap().by_address.is_empty());
    }

    #[test]
    fn a_slot_keeps_its_hot_fields_on_two_cache_lines() {
        // `slot` and `record` touch the key, the consumer, `in_flight` and the first 40 bytes
        // of the counts: lines 0 and 1 of a 64-byte aligned slot.
        assert_eq!(std::mem::align_of::<Slot>(), 64);
        assert!(std::mem::offset_of!(Slot, consumer) + std::mem::size_of::<Option<Id>>() <= 64);
        let counts = std::mem::offset_of!(Slot, counts);
        assert!(std::mem::offset_of!(Slot, in_flight) >= 64);
        assert!(counts + std::mem::offset_of!(Counts, classes) + 8 <= 128);
    }
}
