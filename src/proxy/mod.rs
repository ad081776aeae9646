//! The request path: phases in the order a request meets them, each a file that only hands
//! its result forward. [`Proxy::handle`] reads top to bottom: `admit` (one snapshot load) ->
//! `forward` -> `respond`.
//!
//! ```text
//! server      accept, HTTP/1.1 + h2c, edge limits
//! client_ip   peer + trusted X-Forwarded-For/Forwarded -> client address
//! route       Host + path -> target                        404 no_route
//! cors        [targets.cors] only: a preflight is answered   204 (no key needed)
//!             here; other answers get their CORS headers
//!             in respond
//! credential  [server] key_sources, in order: header,      403 key_missing / key_invalid
//!             query, bearer, cookie (default X-API-Key, api_key)
//! authorize   (after the failed-attempt block, 429 too_many_failures) hash, one lookup,
//!             status, expiry, IP, origin, target, access:   403 key_invalid / key_inactive /
//!             pure                                          key_expired / ip_not_allowed /
//!                                                           origin_not_allowed /
//!                                                           target_not_allowed / access_denied
//! (max_body   a Content-Length over the target's max_body   413 body_too_large)
//! rate        rate limits, then quotas: local, local-sync   429 rate_limited / quota_exceeded,
//!             or strict, behind one call                    503 rate_limit_unavailable
//! forward     rewrite headers + URI, stream to upstream     413 / 400 body, 502 / 504 upstream
//! respond     outcome -> response; a refusal is recorded here, once
//! observe     metrics and the access log line, once the response body is done
//! ```
//!
//! `client_ip` to `rate`, but for `cors` (the proxy's alone), are [`Proxy::decide`], which the
//! verify listener (`verify.rs`, forward-auth: the decision alone, on the request a trusted
//! proxy describes) runs as well.
//!
//! A refusal is a [`deny::Refusal`]: the phase's typed [`Deny`] and the key it concerns.

pub mod access_log;
pub mod authorize;
pub mod client_ip;
pub mod cors;
pub mod credential;
pub mod deny;
pub mod forward;
pub mod observe;
pub mod pool;
pub mod rate;
pub mod respond;
pub mod route;
pub mod server;
pub mod verify;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::FutureExt as _;
use http::header::HOST;
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use http_body_util::Either;
use hyper::body::Body as _;

use crate::http::body::RequestBody;

use crate::cluster::Cluster;
use crate::http::request_id;
use crate::limits::{FailedAuth, RateStatus};
use crate::metrics::{Metrics, Shard};
use crate::model::{IpList, TargetIdx};
use crate::snapshot::Snapshot;
use crate::state::{Live, Published};
use crate::tls::Connector;
use authorize::{Authorized, Facts, authorize};
use deny::{Deny, Refusal};
use forward::{Caller, Plan};
use observe::{Activity, Exchange, Observer};
use rate::RateLimiter;

pub use deny::Inner;
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
    /// Local buckets, or with a `[cluster]` the fleet's.
    rate: RateLimiter,
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
                events: None,
                usage: None,
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
            rate: RateLimiter::default(),
        }
    }

    /// Shares rate limits through `cluster`.
    pub fn with_cluster(mut self, cluster: Option<Arc<Cluster>>) -> Proxy {
        self.rate = RateLimiter::new(cluster);
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
                events: self.observer.events.clone(),
                usage: self
                    .observer
                    .usage
                    .as_ref()
                    .map(crate::usage::Meter::sibling),
            }),
            rate: self.rate.clone(),
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
    ///
    /// Not an `async fn`, nor is any phase it awaits: an `async fn` keeps its arguments twice
    /// in its future (as passed, and moved into the body), and the future of each phase is
    /// inside its caller's. Here each argument is kept once, the arguments a phase only needs
    /// before its first wait are used before its future is made, and the decision is taken
    /// apart before the forward's wait. The request's future went from 4,872 bytes (with the
    /// handler's wrapper) to 2,472 (`-Zprint-type-sizes`), and it is moved whole several times
    /// a request.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice in its future"
    )]
    pub fn handle(
        self: Arc<Self>,
        mut req: Request<RequestBody>,
        peer: SocketAddr,
        proto: &'static str,
        activity: Option<Arc<Activity>>,
    ) -> impl Future<Output = Response<Body>> + Send + 'static {
        async move {
            let request_id = request_id::of(req.headers());
            let mut exchange = Exchange::begin(
                &self.observer,
                req.method(),
                || request_host_value(&req),
                &request_id,
                Instant::now(),
                activity.as_ref(),
            );
            // Only a request with `Origin` to a `[targets.cors]` target has one.
            let mut browser = None;
            let admission = self
                .admit(
                    &mut req,
                    peer,
                    proto,
                    &request_id,
                    &mut exchange,
                    &mut browser,
                )
                .await;
            let admitted = match admission {
                Ok(Admission::Preflight(b)) => {
                    return respond::preflight(&b, request_id, exchange);
                }
                Ok(Admission::Forward(admitted)) => admitted,
                Err(refusal) => {
                    let browser = browser.as_ref();
                    return respond::respond(Err(refusal), None, browser, request_id, exchange);
                }
            };
            let rate = admitted.rate;
            let answer = self
                .forward(req, admitted, activity.as_ref(), &mut exchange)
                .await;
            respond::respond(
                answer.map(|r| r.map(Either::Left)),
                rate.as_ref(),
                browser.as_ref(),
                request_id,
                exchange,
            )
        }
    }

    /// The request as received -> [`Proxy::decide`] -> the plan `forward` carries out, on one
    /// snapshot load. A browser's request to a `[targets.cors]` target leaves its [`cors::Browser`]
    /// in `browser`, for `respond` to label the answer (or the refusal) with; its preflight ends
    /// here, before the credential.
    async fn admit(
        &self,
        req: &mut Request<RequestBody>,
        peer: SocketAddr,
        proto: &'static str,
        request_id: &HeaderValue,
        exchange: &mut Exchange,
        browser: &mut Option<cors::Browser>,
    ) -> Result<Admission, Refusal> {
        let snap = self.published.load();
        let asked = Asked::received(req);
        // Before the credential: browsers never send a key on a preflight.
        if snap.cors && asked.headers.contains_key(http::header::ORIGIN) {
            *browser = self.browser(&snap, &asked, peer, exchange);
            if let Some(b) = browser.take_if(|b| b.is_preflight()) {
                return Ok(Admission::Preflight(b));
            }
        }
        let decided = self
            .decide(&snap, &asked, peer, &snap.server.trusted_proxies, exchange)
            .await?;
        let key = decided.authorized.key;
        let t = snap.target(decided.target);
        let caller = Caller {
            key,
            consumer: snap.consumer_of(key),
            peer: client_ip::canonical(peer.ip()),
            proto,
            request_id,
        };
        let plan = forward::rewrite(req, &snap.server, t, &caller);
        Ok(Admission::Forward(Admitted {
            plan,
            rate: decided.rate,
            max_body: t.max_body,
        }))
    }

    /// The decision, the same for the proxy and for the verify listener (`proxy/verify.rs`):
    /// client IP -> route -> credential -> authorize -> body size -> rate -> mark used, on the
    /// `snap` the caller loaded. Synchronous but for `strict` rate limits, which wait on Redis
    /// (bounded by `[cluster] timeout`) with the snapshot held, so the key's index stays valid
    /// for marking it used. `trusted` are the proxies whose forwarding headers are believed.
    async fn decide<'s>(
        &self,
        snap: &'s Live,
        asked: &Asked<'_>,
        peer: SocketAddr,
        trusted: &IpList,
        exchange: &mut Exchange,
    ) -> Result<Decided<'s>, Refusal> {
        let server = &snap.server;
        exchange.path(asked.path_and_query, server.key_sources.queries());
        // Before routing and the credential, so the access log names the client of every
        // refusal, `no_route` and `key_missing` included.
        let client_ip = client_ip::resolve(peer.ip(), asked.headers, trusted);
        exchange.client(client_ip);
        let target = snap
            .routes
            .find_asked(asked.host, asked.path)
            .ok_or(Deny::NoRoute)?;
        let t = snap.target(target);
        exchange.routed(&t.name);
        let secret = credential::extract(asked.headers, asked.query, server.key_sources.list())?;
        let facts = Facts {
            secret: &secret,
            target,
            method: asked.method,
            path: asked.path,
            client_ip,
            origin: snap
                .origins
                .then(|| cors::request_origin(asked.headers))
                .flatten(),
        };
        let now = Now {
            wall: SystemTime::now(),
            mono: exchange.started().saturating_duration_since(self.epoch),
        };
        let authorized = guarded_authorize(snap, &self.failures, &facts, now)?;
        // Always: usage counts every request of a known key (a slot lookup, no allocation).
        let key = authorized.key;
        exchange.key(&key.id, snap.consumer_of(key).map(|c| &c.id));
        // Known from `Content-Length` before a byte of the body is read, so such a request
        // spends no rate limit or quota; a chunked body is counted as it streams
        // (`forward::Upload`).
        if let Some(max) = t.max_body
            && asked.body_len > max
        {
            return Err(Refusal::of_key(
                Deny::BodyTooLarge,
                key,
                snap.consumer_of(key),
            ));
        }
        let events = self.observer.events.as_deref();
        let rate = self.rate.take(snap, &authorized, now.wall, events).await?;
        // The one place a key is marked used: it was let through.
        snap.touch(authorized.index, now.wall);
        exchange.allowed();
        Ok(Decided {
            authorized,
            target,
            rate,
        })
    }

    /// A browser's request to a target with `[targets.cors]` (`cors.rs`); for a preflight,
    /// which `decide` never sees, the access log's path, client and target are noted here.
    fn browser(
        &self,
        snap: &Live,
        asked: &Asked<'_>,
        peer: SocketAddr,
        exchange: &mut Exchange,
    ) -> Option<cors::Browser> {
        let browser = cors::Browser::of(snap, asked.method, asked.host, asked.path, asked.headers)?;
        if browser.is_preflight() {
            let server = &snap.server;
            exchange.path(asked.path_and_query, server.key_sources.queries());
            exchange.client(client_ip::resolve(
                peer.ip(),
                asked.headers,
                &server.trusted_proxies,
            ));
            exchange.routed(&snap.target(browser.target).name);
        }
        Some(browser)
    }

    /// Sends the admitted request upstream, with no snapshot held, and streams the answer back.
    /// What it needs before the upstream's answer is used before its future is made (see
    /// [`Proxy::handle`]).
    fn forward<'a>(
        &'a self,
        req: Request<RequestBody>,
        admitted: Admitted,
        activity: Option<&Arc<Activity>>,
        exchange: &'a mut Exchange,
    ) -> impl Future<Output = Result<Response<pool::PooledBody>, Refusal>> + use<'a> {
        // Only an upgraded connection's tunnel outlives the exchange and holds it.
        let tunnel = activity.filter(|_| admitted.plan.upgrade).cloned();
        let counted =
            exchange.body_size(req.body().size_hint().exact(), req.body().is_end_stream());
        let sent = Instant::now();
        let answer = forward::send(
            &self.pool,
            req,
            admitted.plan,
            sent,
            admitted.max_body,
            counted,
            tunnel,
        );
        // `map`, not an `async` block: see `forward::send`.
        answer.map(move |answer| {
            let answer = answer?;
            exchange.upstream_answered(sent.elapsed());
            Ok(answer)
        })
    }
}

/// The request a decision is about: the one received (proxy mode), or the one a calling proxy
/// describes in its headers (verify mode). Everything the phases before forwarding read.
pub struct Asked<'r> {
    pub method: &'r Method,
    /// `Host` (or the authority), port included.
    pub host: Option<&'r str>,
    /// Empty for a request target without a path (authority-form), which has no route.
    pub path: &'r str,
    pub query: Option<&'r str>,
    /// `path?query` as sent, for the access log (the credential redacted there).
    pub path_and_query: &'r str,
    /// Where the credential is read from (the key header, `Authorization`, `Cookie`).
    pub headers: &'r HeaderMap,
    /// The body's declared length (`Content-Length`), 0 when not known before it streams.
    pub body_len: u64,
}

impl<'r> Asked<'r> {
    /// The request as the client sent it to the proxy listener.
    pub fn received(req: &'r Request<RequestBody>) -> Asked<'r> {
        Asked {
            method: req.method(),
            host: route::request_host_port(req),
            path: req.uri().path(),
            query: req.uri().query(),
            path_and_query: req.uri().path_and_query().map_or("/", |pq| pq.as_str()),
            headers: req.headers(),
            body_len: req.body().size_hint().lower(),
        }
    }
}

/// The request's host for the access log: the `Host` header, else the URI's authority (h2).
fn request_host_value<B>(req: &Request<B>) -> Option<HeaderValue> {
    req.headers().get(HOST).cloned().or_else(|| {
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    })
}

/// What [`Proxy::decide`] lets through.
pub struct Decided<'s> {
    pub authorized: Authorized<'s>,
    pub target: TargetIdx,
    pub rate: Option<RateStatus>,
}

/// [`authorize`] behind the failed-attempt block: an address past `failed_auth_limit` wrong
/// secrets is refused before its secret is even hashed, and every wrong secret counts.
pub fn guarded_authorize<'s>(
    snap: &'s Snapshot,
    failures: &FailedAuth,
    facts: &Facts<'_>,
    now: Now,
) -> Result<Authorized<'s>, Refusal> {
    let limit = snap.server.failed_auth_limit;
    failures
        .blocked(facts.client_ip, limit, now.mono)
        .map_err(Deny::TooManyFailures)?;
    authorize(snap, facts, now.wall).inspect_err(|refused| {
        if refused.deny == Deny::KeyInvalid {
            failures.record(facts.client_ip, limit, now.mono);
        }
    })
}

/// The time of a decision: wall clock for expiry and last use, monotonic for failed-attempt
/// counting.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub wall: SystemTime,
    pub mono: Duration,
}

/// What `admit` ends with: a preflight it answers itself, or a request to forward.
#[allow(
    clippy::large_enum_variant,
    reason = "returned once per request and matched at once; boxing `Admitted` would allocate on every forwarded request to save bytes only a preflight wastes"
)]
enum Admission {
    Preflight(cors::Browser),
    Forward(Admitted),
}

/// What `admit` lets through: the request's plan and its rate-limit state.
struct Admitted {
    plan: Plan,
    rate: Option<RateStatus>,
    max_body: Option<u64>,
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn failed_attempts_block_the_address_for_any_key() {
        let config = "[server]\nfailed_auth_limit = \"2/minute\"\n\n[[targets]]\nname = \"p\"\nupstream = \"http://127.0.0.1:1\"\n\n[[keys]]\nid = \"live\"\nsecret = \"live-secret\"\n";
        let snap = crate::config::parse(config, Path::new("t.toml"))
            .unwrap()
            .snapshot;
        let f = FailedAuth::new(64);
        let now = Now {
            wall: SystemTime::UNIX_EPOCH,
            mono: Duration::from_secs(1),
        };
        let code = |secret: &str, ip: &str, now: Now| {
            let facts = Facts {
                secret: secret.as_bytes(),
                target: 0,
                method: &http::Method::GET,
                path: "/",
                client_ip: ip.parse().unwrap(),
                origin: None,
            };
            match guarded_authorize(&snap, &f, &facts, now) {
                Ok(_) => "ok",
                Err(r) => r.deny.code(),
            }
        };
        assert_eq!(code("guess-1", "192.0.2.7", now), "key_invalid");
        assert_eq!(code("guess-2", "192.0.2.7", now), "key_invalid");
        assert_eq!(code("live-secret", "192.0.2.7", now), "too_many_failures");
        assert_eq!(code("live-secret", "192.0.2.8", now), "ok");
        let later = Now {
            mono: now.mono + Duration::from_secs(30),
            ..now
        };
        assert_eq!(code("live-secret", "192.0.2.7", later), "ok");
    }
}
