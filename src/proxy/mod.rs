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
//! ```

pub mod client_ip;
pub mod credential;
pub mod deny;
pub mod forward;
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
use hyper::body::Incoming;

use crate::limits::{FailedAuth, RateStatus};
use crate::snapshot::Published;
use crate::tls::Connector;
use deny::Deny;
use forward::{Caller, Plan};
use policy::{Facts, Now};
use request_id::X_REQUEST_ID;

/// What keygate answers with: the upstream's streamed body, or a small body of its own.
pub type Body = Either<pool::PooledBody, Full<Bytes>>;

/// The gateway's request handler: the published config, the state beside it, the upstream pool.
///
/// Each server worker thread has its own (see [`Proxy::worker`]): the config and the
/// failed-attempt table are shared, the upstream pool is the worker's, so an upstream connection
/// is only ever driven by the thread whose requests use it.
pub struct Proxy {
    published: Arc<Published>,
    failures: Arc<FailedAuth>,
    /// Start of the monotonic time the failed-attempt table counts in.
    epoch: Instant,
    pool: Arc<pool::Pool>,
}

impl Proxy {
    pub fn new(published: Arc<Published>) -> Proxy {
        let pool = pool::Pool::new(Connector::new(published.clone()));
        Proxy {
            published,
            failures: Arc::new(FailedAuth::default()),
            epoch: Instant::now(),
            pool,
        }
    }

    /// A sibling for another worker thread: same config, same failed-attempt counts (a guesser
    /// gets no more tries by landing on another worker), its own upstream pool.
    pub fn worker(&self) -> Proxy {
        Proxy {
            published: self.published.clone(),
            failures: self.failures.clone(),
            epoch: self.epoch,
            pool: pool::Pool::new(Connector::new(self.published.clone())),
        }
    }

    pub fn published(&self) -> &Arc<Published> {
        &self.published
    }

    /// This worker's upstream connections.
    pub fn pool(&self) -> &Arc<pool::Pool> {
        &self.pool
    }

    /// Handles one request from `peer`, end to end. Never fails: every error is a response.
    /// `proto` is how the client reached us: `http` or `https`.
    pub async fn handle(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        proto: &'static str,
    ) -> Response<Body> {
        let request_id = request_id::of(req.headers());
        let (outcome, rate) = match self.admit(&mut req, peer, proto, &request_id) {
            Ok((plan, rate)) => (forward::send(&self.pool, req, plan).await, rate),
            Err(deny) => (Err(deny), None),
        };
        let mut resp = match outcome {
            Ok(resp) => resp.map(Either::Left),
            Err(deny) => deny.response(&request_id),
        };
        if let Some(rate) = &rate {
            deny::rate_headers(rate, resp.headers_mut());
        }
        resp.headers_mut().insert(X_REQUEST_ID, request_id);
        resp
    }

    /// Phases 1-6a under one snapshot load; the snapshot is released before anything awaits.
    fn admit(
        &self,
        req: &mut Request<Incoming>,
        peer: SocketAddr,
        proto: &'static str,
        request_id: &HeaderValue,
    ) -> Result<(Plan, Option<RateStatus>), Deny> {
        let snap = self.published.load();
        let result = (|| -> Result<(Plan, Option<RateStatus>), Deny> {
            let target = snap.routes.find_for(req).ok_or(Deny::NoRoute)?;
            let server = &snap.server;
            let secret = credential::extract(
                req.headers(),
                req.uri().query(),
                &server.key_header,
                &server.key_query,
            )?;
            let client_ip = client_ip::resolve(peer.ip(), req.headers(), &server.trusted_proxies);
            let facts = Facts {
                secret: &secret,
                target,
                method: req.method(),
                path: req.uri().path(),
                client_ip,
            };
            let now = Now {
                wall: SystemTime::now(),
                mono: self.epoch.elapsed(),
            };
            let admitted = policy::decide(&snap, &self.failures, &facts, now)?;
            snap.touch(admitted.index, now.wall);
            let key = admitted.key;
            let caller = Caller {
                key,
                consumer: snap.consumer_of(key),
                peer: client_ip::canonical(peer.ip()),
                proto,
                request_id,
            };
            let plan = forward::rewrite(req, server, snap.target(target), &caller);
            Ok((plan, admitted.rate))
        })();
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
