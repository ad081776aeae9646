//! Rate: the one place a request's rate limits and quotas are decided, after `authorize` has
//! let its key through (so a request refused for any other reason spends neither).
//!
//! Three modes behind one call, [`RateLimiter::take`]:
//! - local (no `[cluster]`): this instance's buckets and quota counters, carried by the snapshot;
//! - `[cluster] mode = "local-sync"`: this instance's view of the fleet's buckets and counters,
//!   synced with Redis in the background (`cluster.rs`), so the request path never waits on it;
//! - `[cluster] mode = "strict"`: one Redis round trip decides every limit and quota of the
//!   request.
//!
//! Quotas are checked after the rate limits: a request the rate limit refuses spends no quota.
//! When Redis cannot be asked, [`RateLimiter::unavailable`] is the one place `on_redis_error`
//! is decided, for both.

use std::sync::Arc;
use std::time::SystemTime;

use super::authorize::Authorized;
use super::deny::{Deny, Refusal};
use crate::cluster::{Cluster, Shared, Unavailable};
use crate::events::{Event, Events, Kind, QuotaScope};
use crate::limits::{self, Limited, PolicyState, RateStatus, Scope};
use crate::model::Id;
use crate::snapshot::{ClusterMode, OnRedisError};
use crate::state::Live;
use crate::state::quotas::{self, Counter, Owner, Taken};

/// Decides rate limits and quotas, locally or with the fleet.
#[derive(Clone, Default)]
pub struct RateLimiter {
    cluster: Option<Arc<Cluster>>,
}

/// One quota of a request: whose, its id, its plan and this instance's counter.
struct QuotaOf<'s> {
    owner: Owner,
    id: &'s Id,
    quota: crate::model::Quota,
    counter: Option<&'s Arc<Counter>>,
}

/// What the limits said, before it becomes headers or a refusal.
struct Decided {
    rate: Result<Option<RateStatus>, Limited>,
    quotas: Option<Taken>,
}

impl RateLimiter {
    /// Limits shared through `cluster` when there is one, else this instance's own.
    pub fn new(cluster: Option<Arc<Cluster>>) -> RateLimiter {
        RateLimiter { cluster }
    }

    /// Takes one request from every limit of the authorized key (its own and its consumer's
    /// rate limits, then their quotas) at `now`. `Ok(None)`: no limit applies (or none could be
    /// asked and `on_redis_error = "allow"`). Quota warnings and the first refusal of a window
    /// are pushed to `events` without waiting.
    ///
    /// Only `strict` awaits (Redis, bounded by `[cluster] timeout`); the other modes complete
    /// on the first poll.
    pub async fn take(
        &self,
        snap: &Live,
        authorized: &Authorized<'_>,
        now: SystemTime,
        events: Option<&Events>,
    ) -> Result<Option<RateStatus>, Refusal> {
        let secs = crate::state::unix_secs(now).into();
        let quotas = quotas_of(snap, authorized);
        let decided = match &self.cluster {
            None => local(snap, authorized, &quotas, secs, None),
            Some(cluster) => {
                let shared = shared(snap, authorized, &quotas, secs);
                if shared.is_empty() {
                    return Ok(None);
                }
                match cluster.config().mode {
                    ClusterMode::Strict => match cluster.decide(&shared).await {
                        Ok(fleet) => {
                            mirror(&quotas, &fleet.quotas, secs);
                            Decided {
                                rate: fleet.rate.map(Some),
                                quotas: shared
                                    .quotas
                                    .iter()
                                    .any(Option::is_some)
                                    .then_some(fleet.quotas),
                            }
                        }
                        Err(Unavailable) => {
                            self.unavailable(cluster, snap, authorized, &shared, &quotas, secs)?
                        }
                    },
                    ClusterMode::LocalSync if cluster.available() => {
                        synced(cluster, &shared, &quotas, secs)
                    }
                    ClusterMode::LocalSync => {
                        self.unavailable(cluster, snap, authorized, &shared, &quotas, secs)?
                    }
                }
            }
        };
        finish(snap, authorized, decided, secs, events)
    }

    /// `on_redis_error`: what a request gets while Redis does not answer.
    fn unavailable(
        &self,
        cluster: &Cluster,
        snap: &Live,
        authorized: &Authorized<'_>,
        shared: &Shared,
        quotas: &[Option<QuotaOf<'_>>; 2],
        secs: u64,
    ) -> Result<Decided, Refusal> {
        match cluster.on_error() {
            OnRedisError::Allow => Ok(Decided {
                rate: Ok(None),
                quotas: None,
            }),
            OnRedisError::Deny => Err(Deny::RateLimitUnavailable.into()),
            OnRedisError::Local => Ok(match cluster.config().mode {
                ClusterMode::Strict => local(snap, authorized, quotas, secs, None),
                // The view keeps deciding: during an outage it holds only this instance's counts.
                ClusterMode::LocalSync => synced(cluster, shared, quotas, secs),
            }),
        }
    }
}

/// The key's and its consumer's quotas, with this instance's counters.
fn quotas_of<'s>(snap: &'s Live, a: &Authorized<'s>) -> [Option<QuotaOf<'s>>; 2] {
    let consumer = a.key.consumer().map(|c| c as usize);
    [
        a.key.quota().map(|quota| QuotaOf {
            owner: Owner::Key,
            id: &a.key.id,
            quota,
            counter: snap.quotas.key_arc(a.index),
        }),
        consumer.and_then(|c| {
            let owner = snap.consumers.get(c)?;
            Some(QuotaOf {
                owner: Owner::Consumer,
                id: &owner.id,
                quota: owner.quota?,
                counter: snap.quotas.consumer_arc(c),
            })
        }),
    ]
}

/// `strict`: the fleet's counts copied into this instance's counters, so the admin API's
/// lists show them (a lock per quota, beside a Redis round trip).
fn mirror(quotas: &[Option<QuotaOf<'_>>; 2], fleet: &Taken, secs: u64) {
    for (q, v) in quotas.iter().zip(&fleet.verdicts) {
        if let (Some(q), Some(v)) = (q, v)
            && let Some(counter) = q.counter
        {
            counter.peek(q.quota, secs);
            counter.synced(v.used.window(), v.used.used, v.used.granted);
        }
    }
}

/// This instance's own buckets and counters. With `sync`, what the quotas let through is also
/// queued for the fleet (`local-sync`).
fn local(
    snap: &Live,
    a: &Authorized<'_>,
    quotas: &[Option<QuotaOf<'_>>; 2],
    secs: u64,
    sync: Option<(&Cluster, &Shared)>,
) -> Decided {
    let rate = limits::check(
        snap.buckets.key(a.index),
        a.key
            .consumer()
            .and_then(|c| snap.buckets.consumer(c as usize)),
    );
    local_quotas(rate, quotas, secs, sync)
}

/// The quotas after a rate decision: taken only when the rate limits allowed.
fn local_quotas(
    rate: Result<Option<RateStatus>, Limited>,
    quotas: &[Option<QuotaOf<'_>>; 2],
    secs: u64,
    sync: Option<(&Cluster, &Shared)>,
) -> Decided {
    if rate.is_err() || quotas.iter().all(Option::is_none) {
        return Decided { rate, quotas: None };
    }
    let counters =
        [&quotas[0], &quotas[1]].map(|q| q.as_ref().and_then(|q| Some((&**q.counter?, q.quota))));
    let taken = quotas::take(counters, secs, sync.is_some());
    // Refused ones too: an instance refusing a spent quota must keep syncing it to see a
    // grant or a reset made through another instance.
    if let Some((cluster, shared)) = sync {
        for q in quotas.iter().flatten() {
            if let Some(counter) = q.counter {
                cluster.quota_used(counter, q.owner, q.id, q.quota, shared.tag.as_ref());
            }
        }
    }
    Decided {
        rate,
        quotas: Some(taken),
    }
}

/// `local-sync`: the fleet's buckets as this instance sees them, then its quota counters.
fn synced(
    cluster: &Cluster,
    shared: &Shared,
    quotas: &[Option<QuotaOf<'_>>; 2],
    secs: u64,
) -> Decided {
    let rate = if shared.has_rate() {
        cluster.decide_locally(shared).map(Some)
    } else {
        Ok(None)
    };
    local_quotas(rate, quotas, secs, Some((cluster, shared)))
}

/// The limits of the key and its consumer, named as the fleet shares them.
fn shared(snap: &Live, a: &Authorized<'_>, quotas: &[Option<QuotaOf<'_>>; 2], secs: u64) -> Shared {
    let consumer = snap.consumer_of(a.key);
    Shared {
        key: a.key.rate_limit().map(|r| (a.key.id.clone(), r)),
        consumer: consumer.and_then(|c| c.rate_limit.map(|r| (c.id.clone(), r))),
        quotas: [&quotas[0], &quotas[1]].map(|q| {
            q.as_ref()
                .map(|q| (q.id.clone(), q.quota, q.quota.window(secs)))
        }),
        tag: consumer.map(|c| c.id.clone()),
    }
}

/// Headers or a refusal, and the quota events that are due.
fn finish(
    snap: &Live,
    a: &Authorized<'_>,
    decided: Decided,
    secs: u64,
    events: Option<&Events>,
) -> Result<Option<RateStatus>, Refusal> {
    let refusal = |deny| Refusal::of_key(deny, a.key, snap.consumer_of(a.key));
    let mut status = match decided.rate {
        Ok(status) => status,
        Err(limited) => return Err(refusal(Deny::RateLimited(Box::new(limited)))),
    };
    let Some(taken) = decided.quotas else {
        return Ok(status);
    };
    let ids = [Some(&a.key.id), snap.consumer_of(a.key).map(|c| &c.id)];
    let all = status.get_or_insert_with(RateStatus::default);
    let mut retry_after = 0;
    for (slot, verdict) in taken.verdicts.iter().enumerate() {
        let Some(v) = verdict else { continue };
        let allowance = v.used.allowance(v.quota);
        let remaining = v.used.remaining(v.quota);
        let left = v.used.window().seconds_left(secs);
        if !taken.allowed && remaining == 0 {
            retry_after = retry_after.max(left);
        }
        all.policies[2 + slot] = Some(PolicyState {
            scope: [Scope::Quota, Scope::ConsumerQuota][slot],
            limit: allowance,
            window: v.used.end.saturating_sub(v.used.start),
            remaining,
            reset: left,
        });
        if let (Some(events), Some(id)) = (events, ids[slot]) {
            notify(events, [QuotaScope::Key, QuotaScope::Consumer][slot], id, v);
        }
    }
    if taken.allowed {
        Ok(status)
    } else {
        let status = status.unwrap_or_default();
        Err(refusal(Deny::QuotaExceeded(Box::new(Limited {
            status,
            retry_after: retry_after.max(1),
        }))))
    }
}

/// `quota.warning` at 80% and `quota.exceeded` at the window's first refusal: a push, never
/// a wait, and nothing built when no webhook listens.
fn notify(events: &Events, scope: QuotaScope, id: &Id, v: &quotas::Verdict) {
    let end = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(v.used.end);
    let allowance = v.used.allowance(v.quota);
    if v.warn && events.wants(Kind::QuotaWarning) {
        events.emit(Event::quota_warning(
            scope,
            id.as_str(),
            v.used.used,
            allowance,
            end,
        ));
    }
    if v.first_refusal && events.wants(Kind::QuotaExceeded) {
        events.emit(Event::quota_exceeded(
            scope,
            id.as_str(),
            v.used.used,
            allowance,
            end,
        ));
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::proxy::authorize::authorize;
    use crate::proxy::authorize::tests::{CONFIG, facts};

    fn live() -> Live {
        Live::new(
            crate::config::parse(CONFIG, Path::new("t.toml"))
                .unwrap()
                .snapshot,
        )
    }

    /// Authorize, then rate, as the request path does (refusals by code).
    fn decide(snap: &Live, secret: &str, ip: &str) -> Result<Option<RateStatus>, &'static str> {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_798_761_600);
        let authorized = authorize(snap, &facts(secret, ip), now).map_err(|r| r.deny.code())?;
        let limiter = RateLimiter::default();
        futures_util::FutureExt::now_or_never(limiter.take(snap, &authorized, now, None))
            .expect("local limits never wait")
            .map_err(|r| r.deny.code())
    }

    #[test]
    fn rate_limit_is_last_and_shared_by_the_consumer() {
        let snap = live();
        // A refusal for another reason spends no quota.
        for _ in 0..5 {
            assert_eq!(
                decide(&snap, "acme-a-secret", "192.0.2.1"),
                Err("ip_not_allowed")
            );
        }
        let first = decide(&snap, "acme-a-secret", "10.0.0.9").unwrap().unwrap();
        assert_eq!(first.policies[0].unwrap().remaining, 1);
        assert_eq!(first.policies[1].unwrap().remaining, 2);
        assert!(decide(&snap, "acme-b-secret", "10.0.0.9").is_ok());
        assert!(decide(&snap, "acme-a-secret", "10.0.0.9").is_ok());
        // The consumer's 3/minute is spent by a and b together.
        assert_eq!(
            decide(&snap, "acme-b-secret", "10.0.0.9"),
            Err("rate_limited")
        );
        assert_eq!(
            decide(&snap, "acme-a-secret", "10.0.0.9"),
            Err("rate_limited")
        );
        assert_eq!(decide(&snap, "live-secret", "10.0.0.9"), Ok(None));
    }

    #[test]
    fn a_rate_limited_refusal_names_its_key_and_consumer() {
        let snap = live();
        let authorized = authorize(
            &snap,
            &facts("acme-a-secret", "10.0.0.9"),
            SystemTime::UNIX_EPOCH,
        )
        .unwrap();
        let limiter = RateLimiter::default();
        let take = || {
            futures_util::FutureExt::now_or_never(limiter.take(
                &snap,
                &authorized,
                SystemTime::UNIX_EPOCH,
                None,
            ))
            .unwrap()
        };
        assert!(take().is_ok());
        assert!(take().is_ok());
        let refused = take().unwrap_err();
        assert!(matches!(refused.deny, Deny::RateLimited(_)));
        assert_eq!(refused.key.unwrap().as_str(), "acme-a");
        assert_eq!(refused.consumer.unwrap().as_str(), "acme");
    }
}
