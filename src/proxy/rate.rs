//! Rate: the one place a request's rate limits are decided, after `authorize` has let its key
//! through (so a request refused for any other reason spends no quota).
//!
//! Three modes behind one call, [`RateLimiter::take`]:
//! - local (no `[cluster]`): this instance's buckets, carried by the snapshot;
//! - `[cluster] mode = "local-sync"`: this instance's view of the fleet's buckets, synced with
//!   Redis in the background (`cluster.rs`), so the request path never waits on it;
//! - `[cluster] mode = "strict"`: one Redis round trip decides every limit of the request.
//!
//! When Redis cannot be asked, [`RateLimiter::unavailable`] is the one place `on_redis_error`
//! is decided. A usage quota (a later issue) is one more step beside this one.

use std::sync::Arc;

use super::authorize::Authorized;
use super::deny::{Deny, Refusal};
use crate::cluster::{Cluster, Shared, Unavailable};
use crate::limits::{self, Limited, RateStatus};
use crate::snapshot::{ClusterMode, OnRedisError};
use crate::state::Live;

/// Decides rate limits, locally or with the fleet.
#[derive(Clone, Default)]
pub struct RateLimiter {
    cluster: Option<Arc<Cluster>>,
}

impl RateLimiter {
    /// Limits shared through `cluster` when there is one, else this instance's own.
    pub fn new(cluster: Option<Arc<Cluster>>) -> RateLimiter {
        RateLimiter { cluster }
    }

    /// Takes one request from every limit of the authorized key (its own and its consumer's).
    /// `Ok(None)`: no limit applies (or none could be asked and `on_redis_error = "allow"`).
    ///
    /// Only `strict` awaits (Redis, bounded by `[cluster] timeout`); the other modes complete
    /// on the first poll.
    pub async fn take(
        &self,
        snap: &Live,
        authorized: &Authorized<'_>,
    ) -> Result<Option<RateStatus>, Refusal> {
        let decided = match &self.cluster {
            None => local(snap, authorized),
            Some(cluster) => {
                let shared = shared(snap, authorized);
                if shared.is_empty() {
                    return Ok(None);
                }
                let fleet = match cluster.config().mode {
                    ClusterMode::Strict => cluster.decide(&shared).await,
                    ClusterMode::LocalSync if cluster.available() => {
                        Ok(cluster.decide_locally(&shared))
                    }
                    ClusterMode::LocalSync => Err(Unavailable),
                };
                match fleet {
                    Ok(decided) => decided.map(Some),
                    Err(Unavailable) => {
                        return self.unavailable(cluster, snap, authorized, &shared);
                    }
                }
            }
        };
        decided.map_err(|limited| limited_refusal(snap, authorized, limited))
    }

    /// `on_redis_error`: what a request gets while Redis does not answer.
    fn unavailable(
        &self,
        cluster: &Cluster,
        snap: &Live,
        authorized: &Authorized<'_>,
        shared: &Shared,
    ) -> Result<Option<RateStatus>, Refusal> {
        let decided = match cluster.on_error() {
            OnRedisError::Allow => return Ok(None),
            OnRedisError::Deny => return Err(Deny::RateLimitUnavailable.into()),
            OnRedisError::Local => match cluster.config().mode {
                ClusterMode::Strict => local(snap, authorized),
                // The view keeps deciding: during an outage it holds only this instance's counts.
                ClusterMode::LocalSync => cluster.decide_locally(shared).map(Some),
            },
        };
        decided.map_err(|limited| limited_refusal(snap, authorized, limited))
    }
}

/// This instance's own buckets, found by index in the snapshot.
// The `Ok` side is as large: boxing the refusal would save nothing.
#[allow(clippy::result_large_err)]
fn local(snap: &Live, a: &Authorized<'_>) -> Result<Option<RateStatus>, Limited> {
    limits::check(
        snap.buckets.key(a.index),
        a.key
            .consumer
            .and_then(|c| snap.buckets.consumer(c as usize)),
    )
}

/// The limits of the key and its consumer, named as the fleet shares them.
fn shared(snap: &Live, a: &Authorized<'_>) -> Shared {
    Shared {
        key: a.key.rate_limit().map(|r| (a.key.id.clone(), r)),
        consumer: snap
            .consumer_of(a.key)
            .and_then(|c| c.rate_limit.map(|r| (c.id.clone(), r))),
    }
}

fn limited_refusal(snap: &Live, a: &Authorized<'_>, limited: Limited) -> Refusal {
    Refusal::of_key(
        Deny::RateLimited(Box::new(limited)),
        a.key,
        snap.consumer_of(a.key),
    )
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
        futures_util::FutureExt::now_or_never(limiter.take(snap, &authorized))
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
        let take =
            || futures_util::FutureExt::now_or_never(limiter.take(&snap, &authorized)).unwrap();
        assert!(take().is_ok());
        assert!(take().is_ok());
        let refused = take().unwrap_err();
        assert!(matches!(refused.deny, Deny::RateLimited(_)));
        assert_eq!(refused.key.unwrap().as_str(), "acme-a");
        assert_eq!(refused.consumer.unwrap().as_str(), "acme");
    }
}
