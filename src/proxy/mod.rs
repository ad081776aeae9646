//! The request path. Each phase is a file and only hands its result forward:
//!
//! ```text
//! server      accept, HTTP/1.1 + h2c
//! route       Host + path -> target                       (404 no_route)
//! credential  X-API-Key header, else api_key query         (403 key_missing / key_invalid)
//! client_ip   peer -> canonical client address
//! policy      hash, lookup, status, expiry                 (403 key_invalid / inactive / expired)
//! forward     rewrite headers + URI, stream to upstream    (502 / 504)
//! deny        Deny -> problem+json, the one place errors become responses
//! ```

pub mod client_ip;
pub mod credential;
pub mod deny;
pub mod forward;
pub mod policy;
pub mod request_id;
pub mod route;
pub mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::snapshot::Published;
use deny::Deny;
use forward::{Caller, Plan};
use policy::Facts;
use request_id::X_REQUEST_ID;

/// What keygate answers with: the upstream's streamed body, or a small body of its own.
pub type Body = Either<Incoming, Full<Bytes>>;

/// The gateway's request handler: the published config and the upstream pool.
pub struct Proxy {
    published: Arc<Published>,
    client: forward::Client,
}

impl Proxy {
    pub fn new(published: Arc<Published>) -> Proxy {
        Proxy {
            published,
            client: forward::client(),
        }
    }

    pub fn published(&self) -> &Arc<Published> {
        &self.published
    }

    /// Handles one request from `peer`, end to end. Never fails: every error is a response.
    pub async fn handle(&self, mut req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let request_id = request_id::of(req.headers());
        let outcome = match self.admit(&mut req, peer, &request_id) {
            Ok(plan) => forward::send(&self.client, req, plan).await,
            Err(deny) => Err(deny),
        };
        let mut resp = match outcome {
            Ok(resp) => resp.map(Either::Left),
            Err(deny) => deny.response(&request_id),
        };
        resp.headers_mut().insert(X_REQUEST_ID, request_id);
        resp
    }

    /// Phases 1-6a under one snapshot load; the snapshot is released before anything awaits.
    fn admit(
        &self,
        req: &mut Request<Incoming>,
        peer: SocketAddr,
        request_id: &HeaderValue,
    ) -> Result<Plan, Deny> {
        let snap = self.published.load();
        let result = (|| -> Result<Plan, Deny> {
            let target = snap.routes.find_for(req).ok_or(Deny::NoRoute)?;
            let server = &snap.server;
            let secret = credential::extract(
                req.headers(),
                req.uri().query(),
                &server.key_header,
                &server.key_query,
            )?;
            let client_ip = client_ip::canonical(peer.ip());
            let facts = Facts {
                secret: &secret,
                target,
                method: req.method(),
                path: req.uri().path(),
                client_ip,
            };
            let key = policy::decide(&snap, &facts, SystemTime::now())?;
            let caller = Caller {
                key,
                consumer: snap.consumer_of(key),
                client_ip,
                proto: "http",
                request_id,
            };
            Ok(forward::rewrite(req, server, snap.target(target), &caller))
        })();
        if let Err(deny) = &result {
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
