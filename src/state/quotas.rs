//! Quota counters: what each key and consumer with a `quota` used in its current calendar
//! window, kept across reloads and restarts.
//!
//! Like the rate-limit buckets, counters are registered by id beside the snapshot and handed to
//! each published [`super::Live`] in vectors indexed like its keys and consumers, so a request
//! reaches its counter without a map lookup. Unlike buckets, a counter is kept when its quota
//! changes: a reload that raises a plan from 1,000 to 5,000 a day keeps what was used today.
//! A counter whose *period* changes carries what was used into the new window (no free
//! allowance for switching plans), and starts from 0 at the next window.
//!
//! Counters are saved to `<keys file stem>.quotas.json` beside the keys file every
//! [`super::quotas_file::FLUSH_EVERY`] and at shutdown, so a restart does not hand out a fresh month; a crash loses
//! at most that much counting.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use dashmap::DashMap;

use crate::model::{Id, Period, Quota, Window};
use crate::snapshot::Snapshot;

/// The share of a quota at which `quota.warning` is due.
pub const WARN_AT_PERCENT: u64 = 80;

/// One key's or consumer's counter.
#[derive(Debug, Default)]
pub struct Counter {
    state: Mutex<Used>,
    /// `local-sync`: on the list of counters the next sync sends (each at most once).
    pub queued: std::sync::atomic::AtomicBool,
}

/// What a counter holds for its current window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Used {
    /// The window counted in; `start == end == 0` before the first request.
    pub start: u64,
    pub end: u64,
    /// Requests let through in the window (with `[cluster]`, the fleet's as last known plus
    /// this instance's since).
    pub used: u64,
    /// Extra requests granted for this window (`POST …/quota/grant`).
    pub granted: u64,
    /// `quota.warning` and `quota.exceeded` were already due in this window.
    #[serde(default)]
    pub warned: bool,
    #[serde(default)]
    pub exceeded: bool,
    /// `local-sync`: taken here since the last sync, still to be added to the fleet's count.
    #[serde(skip)]
    pub pending: u64,
    #[serde(skip)]
    pub period: Option<Period>,
}

impl Used {
    /// The requests allowed in the window: the plan's plus what was granted.
    pub fn allowance(&self, quota: Quota) -> u64 {
        quota.limit.saturating_add(self.granted)
    }

    pub fn remaining(&self, quota: Quota) -> u64 {
        self.allowance(quota).saturating_sub(self.used)
    }

    pub fn window(&self) -> Window {
        Window {
            start: self.start,
            end: self.end,
        }
    }

    /// Moves to the window of `quota` holding `now`: a new window starts from 0; a changed
    /// period keeps what was used in the window it replaces.
    fn roll(&mut self, quota: Quota, now: u64) {
        // The common case, without calendar arithmetic: still inside the same window.
        if self.period == Some(quota.period) && self.start <= now && now < self.end {
            return;
        }
        let w = quota.window(now);
        if self.start == w.start && self.end == w.end {
            self.period = Some(quota.period);
            return;
        }
        let period_changed = self.period.is_some_and(|p| p != quota.period);
        let still_current = self.start <= now && now < self.end;
        if !(period_changed && still_current) {
            *self = Used {
                pending: self.pending,
                ..Used::default()
            };
        }
        self.start = w.start;
        self.end = w.end;
        self.period = Some(quota.period);
    }
}

/// What one quota said about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub quota: Quota,
    pub used: Used,
    /// This request crossed [`WARN_AT_PERCENT`] (due once per window).
    pub warn: bool,
    /// This request was the first refused in the window (due once per window).
    pub first_refusal: bool,
}

impl Counter {
    fn lock(&self) -> MutexGuard<'_, Used> {
        // The state is plain numbers: a panic elsewhere cannot leave it half-written.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the counter in the window of `quota` holding `now`.
    pub fn peek(&self, quota: Quota, now: u64) -> Used {
        let mut u = self.lock();
        u.roll(quota, now);
        *u
    }

    /// Sets what was used in the current window back to 0.
    pub fn reset(&self, quota: Quota, now: u64) -> Used {
        let mut u = self.lock();
        u.roll(quota, now);
        u.used = 0;
        u.warned = false;
        u.exceeded = false;
        *u
    }

    /// Grants `n` more requests for the current window.
    pub fn grant(&self, quota: Quota, now: u64, n: u64) -> Used {
        let mut u = self.lock();
        u.roll(quota, now);
        u.granted = u.granted.saturating_add(n);
        if u.used < u.allowance(quota) {
            u.exceeded = false;
        }
        *u
    }

    /// `local-sync`: what to add to the fleet's count, taken out of `pending`.
    pub fn to_send(&self, quota: Quota, now: u64) -> (Window, u64) {
        let mut u = self.lock();
        u.roll(quota, now);
        (u.window(), std::mem::take(&mut u.pending))
    }

    /// `local-sync`: the fleet's count after this instance's was added (`used` and `granted` of
    /// `window`), plus what was taken here since.
    pub fn synced(&self, window: Window, used: u64, granted: u64) {
        let mut u = self.lock();
        if u.window() == window {
            u.used = used.saturating_add(u.pending);
            u.granted = granted;
        }
    }

    /// Restores a saved window (at start).
    fn restore(&self, saved: Used) {
        let mut u = self.lock();
        *u = Used {
            pending: 0,
            period: None,
            ..saved
        };
    }
}

/// The quotas' answer to one request: whether it may pass, and each quota's state after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    pub allowed: bool,
    /// The key's, the consumer's.
    pub verdicts: [Option<Verdict>; 2],
}

/// Takes one request from every quota of a request (its key's, its consumer's) when all allow,
/// at `now` (seconds since the epoch). A refusal spends nothing. `pending`: also count it as
/// still to be sent to the fleet (`local-sync`).
pub fn take(quotas: [Option<(&Counter, Quota)>; 2], now: u64, pending: bool) -> Taken {
    // Always the key's lock before the consumer's: no other path holds two.
    let mut guards: [Option<(MutexGuard<'_, Used>, Quota)>; 2] = quotas.map(|q| {
        q.map(|(c, quota)| {
            let mut g = c.lock();
            g.roll(quota, now);
            (g, quota)
        })
    });
    let allowed = guards
        .iter()
        .flatten()
        .all(|(u, quota)| u.used < u.allowance(*quota));
    let mut out = [None, None];
    for (slot, g) in guards.iter_mut().enumerate() {
        let Some((u, quota)) = g else { continue };
        let (mut warn, mut first_refusal) = (false, false);
        if allowed {
            u.used += 1;
            if pending {
                u.pending += 1;
            }
            if !u.warned && u.used * 100 >= u.allowance(*quota) * WARN_AT_PERCENT {
                u.warned = true;
                warn = true;
            }
        } else if u.used >= u.allowance(*quota) && !u.exceeded {
            u.exceeded = true;
            first_refusal = true;
        }
        out[slot] = Some(Verdict {
            quota: *quota,
            used: **u,
            warn,
            first_refusal,
        });
    }
    Taken {
        allowed,
        verdicts: out,
    }
}

/// The counters of one snapshot, indexed like its keys and consumers (`None` without a quota).
#[derive(Debug, Default)]
pub struct Counters {
    keys: Vec<Option<Arc<Counter>>>,
    consumers: Vec<Option<Arc<Counter>>>,
}

impl Counters {
    pub fn key(&self, index: usize) -> Option<&Counter> {
        self.keys.get(index).and_then(|c| c.as_deref())
    }

    pub fn consumer(&self, index: usize) -> Option<&Counter> {
        self.consumers.get(index).and_then(|c| c.as_deref())
    }

    /// The key's counter as shared, for a `local-sync` instance to queue it for the fleet.
    pub fn key_arc(&self, index: usize) -> Option<&Arc<Counter>> {
        self.keys.get(index).and_then(Option::as_ref)
    }

    pub fn consumer_arc(&self, index: usize) -> Option<&Arc<Counter>> {
        self.consumers.get(index).and_then(Option::as_ref)
    }
}

/// Every counter by id, carried from snapshot to snapshot.
#[derive(Default)]
pub struct Registry {
    keys: DashMap<Id, Arc<Counter>>,
    consumers: DashMap<Id, Arc<Counter>>,
}

/// Whose quota: a key's or a consumer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Owner {
    Key,
    Consumer,
}

impl Owner {
    /// As Redis keys, events and the API name it.
    pub fn name(self) -> &'static str {
        match self {
            Owner::Key => "key",
            Owner::Consumer => "consumer",
        }
    }
}

impl Registry {
    /// The counters for `snap`: the registered one of every id that still has a quota, a new
    /// one for the others; ids without a quota are forgotten.
    pub fn attach(&self, snap: &Snapshot) -> Counters {
        Counters {
            keys: carry(&self.keys, snap.keys.iter().map(|k| (&k.id, k.quota()))),
            consumers: carry(
                &self.consumers,
                snap.consumers.iter().map(|c| (&c.id, c.quota)),
            ),
        }
    }

    pub fn get(&self, owner: Owner, id: &str) -> Option<Arc<Counter>> {
        let map = match owner {
            Owner::Key => &self.keys,
            Owner::Consumer => &self.consumers,
        };
        map.get(&Id::new(id)?).map(|c| c.clone())
    }

    /// Every counter with something used or granted, for saving.
    pub fn saved(&self) -> State {
        let dump = |map: &DashMap<Id, Arc<Counter>>| {
            map.iter()
                .filter_map(|e| {
                    let u = *e.value().lock();
                    (u.used != 0 || u.granted != 0).then(|| (e.key().as_str().to_owned(), u))
                })
                .collect()
        };
        State {
            version: 1,
            keys: dump(&self.keys),
            consumers: dump(&self.consumers),
        }
    }

    pub fn restore(&self, state: State) {
        for (map, saved) in [(&self.keys, state.keys), (&self.consumers, state.consumers)] {
            for (id, used) in saved {
                if let Some(c) = Id::new(&id).and_then(|id| map.get(&id)) {
                    c.restore(used);
                }
            }
        }
    }
}

fn carry<'a>(
    registry: &DashMap<Id, Arc<Counter>>,
    items: impl Iterator<Item = (&'a Id, Option<Quota>)>,
) -> Vec<Option<Arc<Counter>>> {
    let mut live = HashSet::new();
    // Read by index with `get`, where a missing slot is no quota too: the vector ends at the
    // last item with a quota, so a config without any has none (instead of 8 MB of `None`
    // for 1,000,000 keys).
    let mut out: Vec<Option<Arc<Counter>>> = Vec::new();
    for (i, (id, quota)) in items.enumerate() {
        if quota.is_none() {
            continue;
        }
        live.insert(id.clone());
        // Cloned out of the read guard before `entry` takes the shard's write lock.
        let kept = registry.get(id).map(|c| c.clone());
        out.resize(i, None);
        out.push(Some(kept.unwrap_or_else(|| {
            registry.entry(id.clone()).or_default().clone()
        })));
    }
    registry.retain(|id, _| live.contains(id));
    out
}

/// The counters as saved (`state/quotas_file.rs`).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct State {
    pub version: u32,
    pub keys: BTreeMap<String, Used>,
    pub consumers: BTreeMap<String, Used>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;
    /// 2027-01-01T00:00:00Z.
    const JAN1: u64 = 1_798_761_600;

    fn q(text: &str) -> Quota {
        Quota::parse(text).unwrap()
    }

    fn one(c: &Counter, quota: Quota, now: u64) -> Verdict {
        take([Some((c, quota)), None], now, false).verdicts[0].unwrap()
    }

    #[test]
    fn a_quota_allows_its_limit_per_window_and_starts_again_at_the_next() {
        let c = Counter::default();
        let quota = q("3/day");
        let allowed = (0..5)
            .filter(|i| take([Some((&c, quota)), None], JAN1 + i, false).allowed)
            .count();
        assert_eq!(allowed, 3);
        assert_eq!(c.peek(quota, JAN1 + 10).used, 3);
        // The last second of the day is still the same window; midnight starts a new one.
        assert_eq!(c.peek(quota, JAN1 + DAY - 1).used, 3);
        assert_eq!(one(&c, quota, JAN1 + DAY).used.used, 1);
    }

    #[test]
    fn a_refusal_by_either_quota_spends_neither() {
        let (key, consumer) = (Counter::default(), Counter::default());
        let (kq, cq) = (q("10/day"), q("2/day"));
        let both = |now| take([Some((&key, kq)), Some((&consumer, cq))], now, false);
        both(JAN1);
        both(JAN1);
        let refused = both(JAN1);
        assert!(!refused.allowed);
        assert!(refused.verdicts[1].unwrap().first_refusal);
        assert!(!refused.verdicts[0].unwrap().first_refusal);
        assert_eq!(key.peek(kq, JAN1).used, 2);
        assert_eq!(consumer.peek(cq, JAN1).used, 2);
        // The second refusal is not the first any more.
        assert!(!both(JAN1).verdicts[1].unwrap().first_refusal);
    }

    #[test]
    fn the_warning_is_due_once_at_eighty_percent() {
        let c = Counter::default();
        let quota = q("10/hour");
        let warned: Vec<bool> = (0..10).map(|i| one(&c, quota, JAN1 + i).warn).collect();
        assert_eq!(warned.iter().filter(|w| **w).count(), 1);
        assert!(warned[7], "the 8th request uses 80%");
    }

    #[test]
    fn reset_and_grant_act_on_the_current_window() {
        let c = Counter::default();
        let quota = q("2/month");
        one(&c, quota, JAN1);
        one(&c, quota, JAN1);
        assert!(one(&c, quota, JAN1).first_refusal);
        let granted = c.grant(quota, JAN1, 3);
        assert_eq!((granted.used, granted.remaining(quota)), (2, 3));
        for _ in 0..3 {
            assert!(!one(&c, quota, JAN1).first_refusal);
        }
        assert_eq!(c.peek(quota, JAN1).remaining(quota), 0);
        // Exceeded again after the grant: due once more.
        assert!(one(&c, quota, JAN1).first_refusal);
        let reset = c.reset(quota, JAN1 + 5);
        assert_eq!((reset.used, reset.granted), (0, 3));
        // A grant lasts only its window: February starts with the plan alone.
        let feb = JAN1 + 31 * DAY;
        assert_eq!(c.peek(quota, feb).granted, 0);
        assert_eq!(c.peek(quota, feb).used, 0);
    }

    #[test]
    fn a_changed_limit_keeps_what_was_used_and_a_changed_period_carries_it() {
        let registry = Registry::default();
        let config = |quota: &str| {
            format!(
                "[[targets]]\nname = \"p\"\nupstream = \"http://127.0.0.1:1\"\n[[keys]]\nid = \"k\"\nsecret = \"s\"\nquota = \"{quota}\"\n[[keys]]\nid = \"free\"\nsecret = \"f\"\n"
            )
        };
        let load = |quota: &str| {
            crate::config::parse(&config(quota), std::path::Path::new("t.toml"))
                .unwrap()
                .snapshot
        };
        let first = registry.attach(&load("5/day"));
        assert!(first.key(1).is_none());
        for _ in 0..4 {
            one(first.key(0).unwrap(), q("5/day"), JAN1 + 100);
        }
        let raised = registry.attach(&load("50/day"));
        assert_eq!(raised.key(0).unwrap().peek(q("50/day"), JAN1 + 200).used, 4);
        let monthly = registry.attach(&load("1000/month"));
        let c = monthly.key(0).unwrap();
        assert_eq!(c.peek(q("1000/month"), JAN1 + 300).used, 4);
        assert_eq!(c.peek(q("1000/month"), JAN1 + 2 * DAY).used, 4);
        assert_eq!(c.peek(q("1000/month"), JAN1 + 31 * DAY).used, 0);
    }
}
