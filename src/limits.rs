//! Rate-limit state that outlives a config reload.
//!
//! [`Bucket`] is one GCRA bucket (governor) and [`check`] applies a key's and its consumer's;
//! which bucket belongs to which key, across reloads, is `state::buckets`'.
//!
//! [`FailedAuth`] counts `key_invalid` answers per client address in a fixed-size table, so a
//! flood of distinct source addresses cannot grow memory.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::model::Rate;

/// One GCRA bucket (governor) for one key or consumer.
pub struct Bucket<C: Clock = DefaultClock> {
    rate: Rate,
    limiter: RateLimiter<NotKeyed, InMemoryState, C, StateInformationMiddleware>,
}

impl<C: Clock> std::fmt::Debug for Bucket<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket")
            .field("rate", &self.rate)
            .finish_non_exhaustive()
    }
}

impl Bucket<DefaultClock> {
    pub fn new(rate: Rate) -> Bucket {
        // Making a clock calibrates it against the CPU (CPUID, ~10 µs); a config with 100,000
        // rate-limited keys would spend a second on that. Clones share the calibration.
        static CLOCK: std::sync::OnceLock<DefaultClock> = std::sync::OnceLock::new();
        Bucket::with_clock(rate, CLOCK.get_or_init(DefaultClock::default).clone())
    }
}

impl<C: Clock> Bucket<C> {
    /// `rate.count` requests per `rate.per`, with a burst of `rate.count`.
    pub fn with_clock(rate: Rate, clock: C) -> Bucket<C> {
        let quota = Quota::with_period(rate.per / rate.count.get())
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(rate.count);
        let limiter = RateLimiter::direct_with_clock(quota, clock).with_middleware();
        Bucket { rate, limiter }
    }

    /// The rate this bucket was made for: a changed rate gets a new bucket.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Takes one request from the bucket.
    fn take(&self, scope: Scope) -> Result<PolicyState, Duration> {
        let limit = self.rate.count.get();
        let interval = self.rate.per / limit;
        match self.limiter.check() {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity().min(limit);
                Ok(PolicyState {
                    scope,
                    limit: u64::from(limit),
                    window: self.rate.per.as_secs(),
                    remaining: u64::from(remaining),
                    // Time until the whole burst is available again.
                    reset: ceil_secs(interval * (limit - remaining)),
                })
            }
            Err(not_until) => Err(not_until.wait_time_from(self.limiter.clock().now())),
        }
    }
}

/// Which limit a [`PolicyState`] describes: named so in the `RateLimit-Policy` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Key,
    Consumer,
    /// The key's quota.
    Quota,
    /// Its consumer's quota.
    ConsumerQuota,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Key => "key",
            Scope::Consumer => "consumer",
            Scope::Quota => "quota",
            Scope::ConsumerQuota => "consumer_quota",
        }
    }
}

/// One limit's state after a decision, for the rate-limit response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyState {
    pub scope: Scope,
    /// Requests per window (for a rate limit also the burst; for a quota with what was granted).
    pub limit: u64,
    /// The window, in seconds.
    pub window: u64,
    pub remaining: u64,
    /// Seconds until `remaining` is back to `limit` (when denied: until the next request may pass).
    pub reset: u64,
}

/// The limits that applied to a request: the key's and the consumer's rate limits, then the
/// key's and the consumer's quotas, each when it has one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateStatus {
    pub policies: [Option<PolicyState>; 4],
}

impl RateStatus {
    /// The limit closest to refusing: the one the `RateLimit-Limit/-Remaining/-Reset` headers show.
    pub fn binding(&self) -> Option<&PolicyState> {
        self.policies
            .iter()
            .flatten()
            .min_by_key(|p| (p.remaining, std::cmp::Reverse(p.reset)))
    }
}

/// A rate-limit refusal: the state to report and when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub status: RateStatus,
    /// Whole seconds, at least 1.
    pub retry_after: u64,
}

/// Applies the key's and the consumer's bucket. `Ok(None)` when neither exists.
///
/// The key's bucket is taken first; when the consumer's then refuses, the key's token is spent.
/// Refusing up front would need a look at both buckets without taking, which governor does not
/// offer, and the cost is at most one token of the key per refusal of its consumer.
// The `Ok` side is as large: boxing the refusal would save nothing.
#[allow(clippy::result_large_err)]
pub fn check<C: Clock>(
    key: Option<&Bucket<C>>,
    consumer: Option<&Bucket<C>>,
) -> Result<Option<RateStatus>, Limited> {
    if key.is_none() && consumer.is_none() {
        return Ok(None);
    }
    let mut status = RateStatus::default();
    for (slot, (bucket, scope)) in [(key, Scope::Key), (consumer, Scope::Consumer)]
        .into_iter()
        .enumerate()
    {
        let Some(bucket) = bucket else { continue };
        match bucket.take(scope) {
            Ok(state) => status.policies[slot] = Some(state),
            Err(wait) => {
                let retry_after = ceil_secs(wait).max(1);
                status.policies[slot] = Some(PolicyState {
                    scope,
                    limit: u64::from(bucket.rate.count.get()),
                    window: bucket.rate.per.as_secs(),
                    remaining: 0,
                    reset: retry_after,
                });
                return Err(Limited {
                    status,
                    retry_after,
                });
            }
        }
    }
    Ok(Some(status))
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Failed-attempt counting per client address, in a fixed amount of memory.
///
/// A set-associative table of [`FailedAuth::SLOTS`] entries, each one `u64`: the top 24 bits tag
/// the address, the low 40 bits hold its GCRA "theoretical arrival time" in milliseconds. A
/// new address takes the least busy entry of its set of [`WAYS`], so a flood of one-off
/// addresses evicts each other long before it evicts an address that is actually blocked.
/// IPv6 clients are counted per /64, the block one subscriber usually holds.
pub struct FailedAuth {
    slots: Box<[AtomicU64]>,
    seed: std::hash::RandomState,
}

/// Entries per set: enough that a blocked address is rarely evicted, few enough to scan.
const WAYS: usize = 8;
const TAG_SHIFT: u32 = 40;
const TIME_MASK: u64 = (1 << TAG_SHIFT) - 1;

impl Default for FailedAuth {
    fn default() -> Self {
        FailedAuth::new(FailedAuth::SLOTS)
    }
}

impl FailedAuth {
    /// 131,072 entries (1 MiB): room for that many busy addresses at once, whatever arrives.
    pub const SLOTS: usize = 1 << 17;

    pub fn new(slots: usize) -> FailedAuth {
        let slots = slots.next_power_of_two().max(WAYS);
        FailedAuth {
            slots: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            seed: Default::default(),
        }
    }

    /// Bytes held by the table: fixed at creation.
    pub fn memory(&self) -> usize {
        self.slots.len() * std::mem::size_of::<AtomicU64>()
    }

    /// `Err(retry_after_secs)` when `ip` is past `limit` failures at `now` (time since any fixed
    /// start; the caller keeps it monotonic).
    pub fn blocked(&self, ip: IpAddr, limit: Rate, now: Duration) -> Result<(), u64> {
        let (set, tag) = self.place(ip);
        let now = millis(now);
        let (interval, tolerance) = gcra(limit);
        for slot in &self.slots[set..set + WAYS] {
            let v = slot.load(Ordering::Relaxed);
            if v >> TAG_SHIFT == tag {
                let tat = v & TIME_MASK;
                let ahead = tat.saturating_sub(now);
                if ahead > tolerance {
                    return Err(ceil_ms(ahead - tolerance)
                        .max(1)
                        .min(ceil_ms(interval).max(1)));
                }
                return Ok(());
            }
        }
        Ok(())
    }

    /// Counts one failure of `ip` at `now`.
    pub fn record(&self, ip: IpAddr, limit: Rate, now: Duration) {
        let (set, tag) = self.place(ip);
        let now = millis(now);
        let (interval, _) = gcra(limit);
        let ways = &self.slots[set..set + WAYS];
        let advance = |v: u64| {
            let tat = (v & TIME_MASK).max(now) + interval;
            (tag << TAG_SHIFT) | (tat & TIME_MASK)
        };
        // Bounded retries: under heavy contention on one set, losing a count is acceptable.
        for _ in 0..4 {
            if let Some(slot) = ways
                .iter()
                .find(|s| s.load(Ordering::Relaxed) >> TAG_SHIFT == tag)
            {
                let v = slot.load(Ordering::Relaxed);
                if slot
                    .compare_exchange(v, advance(v), Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
                {
                    return;
                }
                continue;
            }
            // Not present: replace the entry whose time is furthest in the past (idle longest).
            let victim = ways
                .iter()
                .min_by_key(|s| s.load(Ordering::Relaxed) & TIME_MASK);
            if let Some(slot) = victim {
                let v = slot.load(Ordering::Relaxed);
                if slot
                    .compare_exchange(
                        v,
                        advance(tag << TAG_SHIFT),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    )
                    .is_ok()
                {
                    return;
                }
            }
        }
    }

    /// The first entry of the address's set and its tag (never 0, which marks an empty entry).
    fn place(&self, ip: IpAddr) -> (usize, u64) {
        let h = match ip {
            IpAddr::V4(v4) => self.seed.hash_one(v4),
            IpAddr::V6(v6) => self.seed.hash_one((u128::from(v6) >> 64) as u64),
        };
        let sets = self.slots.len() / WAYS;
        let set = (h as usize & (sets - 1)) * WAYS;
        let tag = (h >> TAG_SHIFT) & 0xFF_FFFF;
        (set, tag.max(1))
    }
}

/// GCRA parameters in milliseconds: emission interval and burst tolerance for `limit`.
fn gcra(limit: Rate) -> (u64, u64) {
    let interval = (limit.per.as_millis() as u64 / u64::from(limit.count.get())).max(1);
    (interval, interval * u64::from(limit.count.get() - 1))
}

fn millis(d: Duration) -> u64 {
    // Offset by one so that time zero is distinguishable from an empty entry.
    (d.as_millis() as u64 + 1) & TIME_MASK
}

fn ceil_ms(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn rate(s: &str) -> Rate {
        Rate::parse(s).unwrap()
    }

    #[test]
    fn burst_then_refill_on_a_fake_clock() {
        let clock = FakeRelativeClock::default();
        let b = Bucket::with_clock(rate("3/minute"), clock.clone());
        let ok = |r: Result<Option<RateStatus>, Limited>| r.unwrap().unwrap().policies[0].unwrap();
        let first = ok(check(Some(&b), None));
        assert_eq!(
            (first.limit, first.window, first.remaining, first.reset),
            (3, 60, 2, 20)
        );
        assert_eq!(ok(check(Some(&b), None)).remaining, 1);
        let last = ok(check(Some(&b), None));
        assert_eq!((last.remaining, last.reset), (0, 60));
        let denied = check(Some(&b), None).unwrap_err();
        assert_eq!(denied.retry_after, 20);
        assert_eq!(denied.status.policies[0].unwrap().remaining, 0);
        clock.advance(Duration::from_secs(19));
        assert_eq!(check(Some(&b), None).unwrap_err().retry_after, 1);
        clock.advance(Duration::from_secs(1));
        assert_eq!(ok(check(Some(&b), None)).remaining, 0);
    }

    #[test]
    fn retry_after_is_at_least_one_second() {
        let clock = FakeRelativeClock::default();
        let b = Bucket::with_clock(rate("10/second"), clock.clone());
        for _ in 0..10 {
            check(Some(&b), None).unwrap();
        }
        assert_eq!(check(Some(&b), None).unwrap_err().retry_after, 1);
    }

    #[test]
    fn consumer_bucket_is_checked_after_the_key() {
        let clock = FakeRelativeClock::default();
        let key = Bucket::with_clock(rate("10/minute"), clock.clone());
        let consumer = Bucket::with_clock(rate("1/minute"), clock.clone());
        let s = check(Some(&key), Some(&consumer)).unwrap().unwrap();
        assert_eq!(s.binding().unwrap().scope, Scope::Consumer);
        let denied = check(Some(&key), Some(&consumer)).unwrap_err();
        assert_eq!(denied.status.policies[1].unwrap().scope, Scope::Consumer);
        assert_eq!(denied.retry_after, 60);
        assert_eq!(check::<FakeRelativeClock>(None, None), Ok(None));
    }

    #[test]
    fn failures_block_past_the_limit_and_refill() {
        let t = FailedAuth::new(1024);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let limit = rate("3/minute");
        let at = Duration::from_secs(1000);
        for _ in 0..3 {
            assert_eq!(t.blocked(ip, limit, at), Ok(()));
            t.record(ip, limit, at);
        }
        assert_eq!(t.blocked(ip, limit, at), Err(20));
        assert_eq!(t.blocked(other, limit, at), Ok(()));
        assert_eq!(t.blocked(ip, limit, at + Duration::from_secs(19)), Err(1));
        assert_eq!(t.blocked(ip, limit, at + Duration::from_secs(20)), Ok(()));
    }

    #[test]
    fn ipv6_counts_per_64() {
        let t = FailedAuth::new(1024);
        let limit = rate("2/minute");
        let at = Duration::from_secs(5);
        t.record("2001:db8:1:2::1".parse().unwrap(), limit, at);
        t.record("2001:db8:1:2::ffff".parse().unwrap(), limit, at);
        assert!(
            t.blocked("2001:db8:1:2:abcd::9".parse().unwrap(), limit, at)
                .is_err()
        );
        assert!(
            t.blocked("2001:db8:1:3::1".parse().unwrap(), limit, at)
                .is_ok()
        );
    }

    #[test]
    fn memory_stays_fixed_under_a_flood_and_blocked_addresses_survive_it() {
        let t = FailedAuth::default();
        let before = t.memory();
        let limit = rate("30/minute");
        let at = Duration::from_secs(100);
        let attacker: IpAddr = "198.51.100.1".parse().unwrap();
        for _ in 0..30 {
            t.record(attacker, limit, at);
        }
        for i in 0..1_000_000u32 {
            t.record(IpAddr::V4((0x0a00_0000 + i).into()), limit, at);
        }
        assert_eq!(t.memory(), before);
        assert_eq!(before, 1 << 20);
        assert!(t.blocked(attacker, limit, at).is_err());
    }
}
