//! The request path. Each phase is a file and only hands its result forward:
//!
//! ```text
//! server      accept, HTTP/1.1 + h2c
//! route       Host + path -> target                       (404 no_route)
//! credential  X-API-Key header, else api_key query         (403 key_missing / key_invalid)
//! client_ip   peer + trusted X-Forwarded-For/Forwarded -> client address
//! policy      failed attempts, hash, lookup, status, expiry, IP, target, access, rate limit
//!             (429 too_many_failures, 403 key_invalid / key_inactive / key_expired /
//!              ip_not_allowed / target_not_allowed / access_denied, 429 rate_limited)
//! forward     rewrite headers + URI, stream to upstream    (502 / 504)
//! deny        Deny -> problem+json, the one place errors become responses
//! observe     metrics and the access log line, once the response body is done
//! ```

pub mod client_ip;
pub mod credential;
pub mod deny;
pub mod forward;
pub mod observe;
pub mod policy;
pub mod pool;
pub mod request_id;
pub mod route;
pub mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::{Either, Full};
use hyper::body::{Body as _, Incoming};

use crate::cluster::{Cluster, Shared, Unavailable};
use crate::limits::{self, FailedAuth, RateStatus};
use crate::metrics::{Metrics, Shard};
use crate::snapshot::Published;
use crate::snapshot::{OnRedisError, Snapshot};
use crate::tls::Connector;
use deny::Deny;
use forward::{Caller, Plan};
use observe::{Activity, Exchange, Observer};
use policy::{Facts, Now};
use request_id::X_REQUEST_ID;

/// A response body before [`observe::Body`] wraps it: the upstream's, streamed, or keygate's own.
pub type Inner = Either<pool::PooledBody, Full<Bytes>>;
pub use observe::Body;

/// The gateway's request handler: the published config, the state beside it, the upstream pool.
///
/// Each server worker thread has its own (see [`Proxy::worker`]): the config, the failed-attempt
/// table and the metrics are shared, the upstream pool is the worker's, so an upstream
/// connection is only ever driven by the thread whose requests use it.
pub struct Proxy {
    published: Arc<Published>,
    failures: Arc<FailedAuth>,
    /// Start of the monotonic time the failed-attempt table counts in.
    epoch: Instant,
    pool: Arc<pool::Pool>,
    /// This worker's own: each request holds a reference while its response is sent, and a
    /// count shared by the workers would be an atomic both cores write on every request.
    observer: Arc<Observer>,
    /// `[cluster]`: rate limits shared with the other instances.
    cluster: Option<Arc<Cluster>>,
}

impl Proxy {
    /// A handler with metrics of its own and no access log (tests, benches).
    pub fn new(published: Arc<Published>) -> Proxy {
        Proxy::observed(published, {
            let metrics = Metrics::new();
            Observer {
                shard: metrics.shard(),
                metrics,
                access: None,
            }
        })
    }

    /// A handler that counts into `observer`'s metrics and writes its access log.
    pub fn observed(published: Arc<Published>, observer: Observer) -> Proxy {
        let pool = pool::Pool::new(Connector::new(published.clone()));
        Proxy {
            published,
            failures: Arc::new(FailedAuth::default()),
            epoch: Instant::now(),
            pool,
            observer: Arc::new(observer),
            cluster: None,
        }
    }

    /// Shares rate limits through `cluster`.
    pub fn with_cluster(mut self, cluster: Option<Arc<Cluster>>) -> Proxy {
        self.cluster = cluster;
        self
    }

    /// A sibling for another worker thread: same config, same failed-attempt counts (a guesser
    /// gets no more tries by landing on another worker), same metrics and access log, its own
    /// upstream pool.
    pub fn worker(&self) -> Proxy {
        Proxy {
            published: self.published.clone(),
            failures: self.failures.clone(),
            epoch: self.epoch,
            pool: pool::Pool::new(Connector::new(self.published.clone())),
            observer: Arc::new(Observer {
                metrics: self.observer.metrics.clone(),
                shard: self.observer.metrics.shard(),
                access: self.observer.access.clone(),
            }),
            cluster: self.cluster.clone(),
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.observer.metrics
    }

    /// This worker's share of the metrics.
    pub fn shard(&self) -> &Arc<Shard> {
        &self.observer.shard
    }

    pub fn published(&self) -> &Arc<Published> {
        &self.published
    }

    /// This worker's upstream connections.
    pub fn pool(&self) -> &Arc<pool::Pool> {
        &self.pool
    }

    /// Handles one request from `peer`, end to end. Never fails: every error is a response.
    /// `proto` is how the client reached us: `http` or `https`. `activity` is the connection's,
    /// for its idle timeout.
    pub async fn handle(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        proto: &'static str,
        activity: Option<&Arc<Activity>>,
    ) -> Response<Body> {
        let started = Instant::now();
        let request_id = request_id::of(req.headers());
        let mut exchange = Exchange::begin(&self.observer, &req, &request_id, started, activity);
        let admitted = match self.admit(&mut req, peer, proto, &request_id, &mut exchange) {
            Ok(Admission {
                fleet: Some(fleet),
                plan,
                max_body,
                ..
            }) => self
                .ask_fleet(fleet, &mut exchange)
                .await
                .map(|rate| (plan, rate, max_body)),
            Ok(a) => Ok((a.plan, a.rate, a.max_body)),
            Err(deny) => Err(deny),
        };
        let (outcome, rate) = match admitted {
            Ok((plan, rate, max_body)) => {
                // Only an upgraded connection's tunnel outlives the exchange and holds it.
                let upgrade = plan.upgrade;
                let counted =
                    exchange.body_size(req.body().size_hint().exact(), req.body().is_end_stream());
                let sent = Instant::now();
                let outcome = forward::send(
                    &self.pool,
                    req,
                    plan,
                    max_body,
                    counted,
                    activity.filter(|_| upgrade).cloned(),
                )
                .await;
                if outcome.is_ok() {
                    exchange.upstream_answered(sent.elapsed());
                }
                (outcome, rate)
            }
            Err(deny) => (Err(deny), None),
        };
        let mut resp = match outcome {
            Ok(resp) => resp.map(Either::Left),
            Err(deny) => {
                if !matches!(deny, Deny::RateLimited(_)) {
                    exchange.denied(deny.code(), None);
                }
                deny.response(&request_id)
            }
        };
        if let Some(rate) = &rate {
            deny::rate_headers(rate, resp.headers_mut());
        }
        resp.headers_mut().insert(X_REQUEST_ID, request_id);
        exchange.status(resp.status().as_u16());
        resp.map(|inner| Body::new(inner, exchange))
    }

    /// `[cluster] mode = "strict"`: the fleet's decision on the limits `admit` left to it, one
    /// Redis round trip; without Redis, what `on_redis_error` says.
    async fn ask_fleet(
        &self,
        fleet: Fleet,
        exchange: &mut Exchange,
    ) -> Result<Option<RateStatus>, Deny> {
        let Some(cluster) = &self.cluster else {
            return Ok(None);
        };
        let decided = match cluster.decide(&fleet.shared).await {
            Ok(decided) => decided.map(Some),
            Err(Unavailable) => match cluster.on_error() {
                OnRedisError::Allow => Ok(None),
                OnRedisError::Deny => return Err(Deny::RateLimitUnavailable),
                OnRedisError::Local => limits::check(
                    fleet.snap.buckets.key(fleet.index),
                    fleet.consumer.and_then(|c| fleet.snap.buckets.consumer(c)),
                ),
            },
        };
        match decided {
            Ok(status) => {
                fleet.snap.touch(fleet.index, SystemTime::now());
                Ok(status)
            }
            Err(limited) => {
                if let Some(key) = fleet.snap.keys.get(fleet.index) {
                    exchange.denied("rate_limited", Some(&key.id));
                }
                Err(Deny::RateLimited(limited))
            }
        }
    }

    /// Phases 1-6a under one snapshot load; the snapshot is released before anything awaits.
    fn admit(
        &self,
        req: &mut Request<Incoming>,
        peer: SocketAddr,
        proto: &'static str,
        request_id: &HeaderValue,
        exchange: &mut Exchange,
    ) -> Result<Admission, Deny> {
        let snap = self.published.load();
        let mut found_key = None;
        let mut fleet = None;
        exchange.path(req.uri(), &snap.server.key_query);
        let result = (|| -> Result<Admission, Deny> {
            let server = &snap.server;
            // Before routing and the credential, so the access log names the client of every
            // refusal, `no_route` and `key_missing` included.
            let client_ip = client_ip::resolve(peer.ip(), req.headers(), &server.trusted_proxies);
            exchange.client(client_ip);
            let target = snap.routes.find_for(req).ok_or(Deny::NoRoute)?;
            let t = snap.target(target);
            exchange.routed(&t.name);
            let secret = credential::extract(
                req.headers(),
                req.uri().query(),
                &server.key_header,
                &server.key_query,
            )?;
            let facts = Facts {
                secret: &secret,
                target,
                method: req.method(),
                path: req.uri().path(),
                client_ip,
            };
            let now = Now {
                wall: SystemTime::now(),
                mono: exchange.started().saturating_duration_since(self.epoch),
            };
            let mut shared = self.cluster.as_ref().map(|_| Shared::default());
            let mut admitted = policy::decide_noting(
                &snap,
                &self.failures,
                &facts,
                now,
                &mut found_key,
                shared.as_mut(),
            )?;
            match (&self.cluster, shared) {
                (Some(cluster), Some(shared)) if !shared.is_empty() => {
                    if cluster.strict() {
                        // Decided once the snapshot guard is released (`ask_fleet`), which then
                        // marks the key used: this keeps the snapshot its index points into.
                        fleet = Some(Fleet {
                            shared,
                            snap: Arc::clone(&snap),
                            index: admitted.index,
                            consumer: admitted.key.consumer.map(|c| c as usize),
                        });
                    } else {
                        admitted.rate = decide_locally(cluster, &shared)?;
                        snap.touch(admitted.index, now.wall);
                    }
                }
                _ => snap.touch(admitted.index, now.wall),
            }
            // Known from `Content-Length` before a byte of the body is read; a chunked body is
            // counted as it streams (`forward::Upload`).
            if let Some(max) = t.max_body
                && req.body().size_hint().lower() > max
            {
                return Err(Deny::BodyTooLarge);
            }
            let key = admitted.key;
            let caller = Caller {
                key,
                consumer: snap.consumer_of(key),
                peer: client_ip::canonical(peer.ip()),
                proto,
                request_id,
            };
            let plan = forward::rewrite(req, server, t, &caller);
            Ok(Admission {
                plan,
                rate: admitted.rate,
                max_body: t.max_body,
                fleet: fleet.take(),
            })
        })();
        if let Some(index) = found_key
            && let Some(key) = snap.keys.get(index)
        {
            if exchange.logging() {
                exchange.key(&key.id, snap.consumer_of(key).map(|c| &c.id));
            }
            if let Err(deny @ Deny::RateLimited(_)) = &result {
                exchange.denied(deny.code(), Some(&key.id));
            }
        }
        if let Err(deny) = &result {
            // A 429 carries its own rate-limit headers; everything else is logged at debug only,
            // since denials are what a gateway does all day.
            tracing::debug!(
                code = deny.code(),
                method = %req.method(),
                path = %credential::redact(
                    req.uri().path_and_query().map_or("/", |pq| pq.as_str()),
                    &snap.server.key_query
                ),
                "denied"
            );
        }
        result
    }
}

/// `[cluster] mode = "local-sync"`: this instance's view of the fleet's buckets; during an
/// outage, what `on_redis_error` says.
fn decide_locally(cluster: &Cluster, shared: &Shared) -> Result<Option<RateStatus>, Deny> {
    if !cluster.available() {
        match cluster.on_error() {
            OnRedisError::Allow => return Ok(None),
            OnRedisError::Deny => return Err(Deny::RateLimitUnavailable),
            // The view keeps deciding: during an outage it holds only this instance's counts.
            OnRedisError::Local => {}
        }
    }
    cluster
        .decide_locally(shared)
        .map(Some)
        .map_err(Deny::RateLimited)
}

/// What `admit` lets through: the request's plan, and either its rate-limit state or the
/// limits the fleet still has to decide.
struct Admission {
    plan: Plan,
    rate: Option<RateStatus>,
    max_body: Option<u64>,
    fleet: Option<Fleet>,
}

/// Limits for Redis to decide (`strict`), with the snapshot whose key and buckets they are.
struct Fleet {
    shared: Shared,
    snap: Arc<Snapshot>,
    index: usize,
    consumer: Option<usize>,
}
