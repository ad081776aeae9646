//! Forward: the request as the upstream sees it, then the exchange itself.
//!
//! [`rewrite`] runs while the snapshot is loaded and edits the request in place (no header map
//! is copied): credential out, hop-by-hop headers out; the identity and forwarding headers are
//! written as head lines (`wire::Added`) that replace the client's copies when the head is sent.
//! [`send`] then runs with no snapshot held, streams both bodies, and turns an `Upgrade` into a
//! byte tunnel.

pub(super) mod body;
pub(super) mod wire;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use crate::http::body::RequestBody;
use crate::http::h1;
use bytes::Bytes;
use futures_util::FutureExt as _;
use http::header::{CONNECTION, HOST, UPGRADE};
use http::uri::{PathAndQuery, Uri};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt as _;

use self::body::{ClientBody, TooLarge, Upload};
use self::wire::{Added, HOP_BY_HOP};
use super::credential;
use super::deny::Deny;
use super::observe::Activity;
use super::pool::{Pool, PooledBody, Upstream};
use crate::http::request_id::X_REQUEST_ID;
use crate::tls::Stream;

use crate::model::{Consumer, Id, Key, Server, Target};

pub const X_KEYGATE_KEY_ID: HeaderName = HeaderName::from_static("x-keygate-key-id");
pub const X_KEYGATE_CONSUMER: HeaderName = HeaderName::from_static("x-keygate-consumer");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// What `send` needs once the snapshot is released.
#[derive(Debug)]
pub struct Plan {
    pub target: Id,
    pub upstream: Upstream,
    pub timeout: Duration,
    pub upgrade: bool,
    /// The fields keygate sets on the request, written ahead of the client's.
    pub added: Added,
}

/// Who is calling, for the upstream's benefit.
pub struct Caller<'a> {
    pub key: &'a Key,
    pub consumer: Option<&'a Consumer>,
    /// The TCP peer: the hop appended to `X-Forwarded-For` (the client, or the proxy before us).
    pub peer: IpAddr,
    pub proto: &'static str,
    pub request_id: &'a HeaderValue,
}

/// Turns the client's request into the upstream's, in place.
pub fn rewrite<B>(
    req: &mut Request<B>,
    server: &Server,
    target: &Target,
    caller: &Caller<'_>,
) -> Plan {
    let upgrade = is_upgrade(req);
    // The fields keygate sets go into the head as written lines, not into the map; the
    // client's own copies of them (a spoofed `X-Keygate-Key-Id`, its `Host`) are left out
    // when the head is written (`set_by_us`).
    let mut added = Added::new(set_by_us);
    let original_host = req
        .headers()
        .get(HOST)
        .map(HeaderValue::as_bytes)
        .or_else(|| req.uri().authority().map(|a| a.as_str().as_bytes()));
    match (target.preserve_host, original_host) {
        (true, Some(h)) => added.line(&HOST, h),
        _ => added.line(&HOST, target.upstream_host.as_bytes()),
    }
    if let Some(h) = original_host {
        added.line(&X_FORWARDED_HOST, h);
    }

    let headers = req.headers_mut();
    let upgrade_value = if upgrade {
        headers.get(UPGRADE).cloned()
    } else {
        None
    };
    strip_hop_by_hop(headers);
    headers.remove(UPGRADE);
    credential::strip_headers(headers, &server.key_sources);
    if let Some(u) = upgrade_value {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, u);
    }

    // Both ids were checked as header values when the config was read (`Id::new`).
    added.line(&X_KEYGATE_KEY_ID, caller.key.id.as_bytes());
    if let Some(c) = caller.consumer {
        added.line(&X_KEYGATE_CONSUMER, c.id.as_bytes());
    }
    forwarded_for(&mut added, headers, caller.peer);
    added.line(&X_FORWARDED_PROTO, caller.proto.as_bytes());
    added.line(&X_REQUEST_ID, caller.request_id.as_bytes());

    // Origin-form (`/path?query`): the connection already says which upstream this is.
    let path_and_query = match req.uri().path_and_query() {
        None => PathAndQuery::from_static("/"),
        Some(pq) => match pq
            .query()
            .and_then(|q| credential::strip_all(q, server.key_sources.queries()))
        {
            None => pq.clone(),
            Some(stripped) => {
                let text = if stripped.is_empty() {
                    pq.path().to_owned()
                } else {
                    format!("{}?{stripped}", pq.path())
                };
                PathAndQuery::try_from(text).unwrap_or_else(|_| pq.clone())
            }
        },
    };
    *req.uri_mut() = Uri::from(path_and_query);
    *req.version_mut() = Version::HTTP_11;

    Plan {
        target: target.name.clone(),
        upstream: Upstream {
            scheme: target.scheme.clone(),
            authority: target.authority.clone(),
        },
        timeout: target.timeout,
        upgrade,
        added,
    }
}

/// The client's fields that keygate's own replace: `Host`, the forwarding headers, the request
/// id, and every `X-Keygate-*` (only keygate speaks for itself to the upstream).
fn set_by_us(name: &HeaderName) -> bool {
    *name == HOST
        || *name == X_FORWARDED_FOR
        || *name == X_FORWARDED_PROTO
        || *name == X_FORWARDED_HOST
        || *name == X_REQUEST_ID
        || name.as_str().starts_with("x-keygate-")
}

/// Sends the request and returns the upstream's response with its body still streaming.
/// `max_body` bounds the request body (`Content-Length` was checked already; this catches a
/// chunked one as it streams).
pub fn send<'a>(
    pool: &'a Arc<Pool>,
    mut req: Request<RequestBody>,
    plan: Plan,
    sent: Instant,
    max_body: Option<u64>,
    counted: Option<Arc<AtomicU64>>,
    connection: Option<Arc<Activity>>,
) -> impl Future<Output = Result<Response<PooledBody>, Deny>> + Send + use<'a> {
    let client_side = plan.upgrade.then(|| hyper::upgrade::on(&mut req));
    let req = req.map(|body| Upload {
        body,
        left: max_body.unwrap_or(u64::MAX),
        counted,
    });
    let Plan {
        target,
        upstream,
        timeout,
        upgrade,
        added,
    } = plan;
    let exchange = pool.send(upstream, req, added, upgrade);
    // From when it was sent, which the caller has read already: no clock reading of its own.
    let deadline = tokio::time::Instant::from_std(sent) + timeout;
    // A combinator, not an `async` block: a future made outside a block and awaited inside
    // it is kept twice (as the block's capture and as what it awaits); `map` polls it in place.
    tokio::time::timeout_at(deadline, exchange).map(move |answered| {
        let mut resp = match answered {
            Err(_) => {
                tracing::warn!(%target, ?timeout, "upstream timed out");
                return Err(Deny::UpstreamTimeout);
            }
            Ok(Err(e)) if let Some(deny) = upload_failure(&*e) => return Err(deny),
            Ok(Err(e)) => {
                tracing::warn!(%target, error = %error_chain(&*e), "upstream unavailable");
                return Err(Deny::UpstreamUnavailable);
            }
            Ok(Ok(resp)) => resp,
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_side) = client_side
        {
            let Some(upstream_side) = resp.body_mut().take_upgraded() else {
                return Err(Deny::UpstreamUnavailable);
            };
            if let Some(c) = &connection {
                c.becomes_tunnel();
            }
            tokio::spawn(async move {
                tunnel(client_side, upstream_side, target).await;
                // Held until here, so a shutdown waits for the tunnel too.
                drop(connection);
            });
            return Ok(resp);
        }
        // Its hop-by-hop fields were left out as its head was read (`wire::response_map`).
        Ok(resp)
    })
}

/// The client's fault in a failed upstream exchange, if it failed on the request body: past
/// `max_body`, or unreadable.
fn upload_failure(e: &(dyn std::error::Error + 'static)) -> Option<Deny> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if c.is::<TooLarge>() {
            return Some(Deny::BodyTooLarge);
        }
        if c.is::<ClientBody>() {
            return Some(Deny::InvalidBody);
        }
        cur = c.source();
    }
    None
}

/// Copies bytes both ways between an upgraded client and upstream until either side closes.
/// `upstream` carries what the upstream sent right behind its 101, which the client gets first.
async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: (Stream, Bytes), target: Id) {
    let client = match client.await {
        Ok(client) => client,
        Err(e) => {
            tracing::debug!(%target, error = %e, "upgrade failed");
            return;
        }
    };
    let (mut upstream, early) = upstream;
    let mut client = TokioIo::new(client);
    if !early.is_empty()
        && let Err(e) = client.write_all(&early).await
    {
        tracing::debug!(%target, error = %e, "upgraded connection ended with an error");
        return;
    }
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(%target, error = %e, "upgraded connection ended with an error");
    }
}

/// An HTTP/1.1 request that asks to switch protocols (`Connection: upgrade` + `Upgrade`).
fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(UPGRADE)
        && req
            .headers()
            .get_all(CONNECTION)
            .iter()
            .any(|v| h1::has_token(v, "upgrade"))
}

/// Removes the fixed hop-by-hop headers and every header the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the few names a request has, instead of a hashed lookup for each of the
    // eight names: almost no request carries any of them (1% of CPU per request), and only the
    // names present are removed. The response's are left out as its head is read
    // (`wire::response_map`).
    let mut present = 0u16;
    for k in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        // `Connection` names more headers to drop; `keep-alive` (dropped below anyway) and
        // `close` are the usual tokens, and need no list.
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .flat_map(h1::tokens)
            .filter(|t| !t.eq_ignore_ascii_case(b"keep-alive") && !t.eq_ignore_ascii_case(b"close"))
            .filter_map(|t| HeaderName::from_bytes(t).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// `X-Forwarded-For: <what came in>, <client>`, folding repeated headers into one.
fn forwarded_for(added: &mut Added, headers: &HeaderMap, client: IpAddr) {
    added.start(&X_FORWARDED_FOR);
    for prior in headers.get_all(&X_FORWARDED_FOR) {
        // Visible ASCII only, as `to_str` has it: what a proxy before us wrote.
        if prior.to_str().is_ok() {
            added.value(prior.as_bytes());
            added.value(b", ");
        }
    }
    crate::proxy::client_ip::push_ip(added.value_buf(), client);
    added.end();
}

/// An error and its causes on one line: hyper's top-level errors alone say little.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_names_go_with_the_hop_by_hop_headers_and_nothing_else() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret , close"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(http::header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-kept"]);

        let mut plain = HeaderMap::new();
        plain.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
        plain.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut plain);
        assert_eq!(plain.len(), 1);
    }

    /// The upstream's head, as `pool.rs` writes it, of `req` rewritten for the config's first
    /// target by its only key.
    fn upstream_head(config: &str, mut req: Request<()>) -> String {
        let snap = crate::config::parse(config, std::path::Path::new("t.toml"))
            .unwrap()
            .snapshot;
        let (_, key, _) = snap
            .key_by_hash(&crate::model::KeyHash::of(b"live-secret"))
            .unwrap();
        let request_id = HeaderValue::from_static("rid-1");
        let caller = Caller {
            key,
            consumer: snap.consumer_of(key),
            peer: "10.0.0.2".parse().unwrap(),
            proto: "https",
            request_id: &request_id,
        };
        let plan = rewrite(&mut req, &snap.server, snap.target(0), &caller);
        let mut out = Vec::new();
        wire::encode_head(
            &mut out,
            req.method(),
            req.uri(),
            req.headers(),
            &plan.added,
            wire::Sending::Nothing,
        );
        String::from_utf8(out).unwrap()
    }

    const ONE_KEY: &str = "[[targets]]\nname = \"p\"\nupstream = \"http://up.internal:8000\"\n\n[[consumers]]\nid = \"acme\"\n\n[[keys]]\nid = \"k1\"\nsecret = \"live-secret\"\nconsumer = \"acme\"\n";

    #[test]
    fn keygate_s_fields_replace_the_client_s_and_the_rest_pass_in_order() {
        let req = Request::builder()
            .uri("/a?x=1")
            .header(HOST, "api.example.com")
            .header("x-keygate-key-id", "spoofed")
            .header("X-Keygate-Anything", "spoofed")
            .header("accept", "*/*")
            .header(X_FORWARDED_FOR, "203.0.113.9")
            .header(X_FORWARDED_FOR, "198.51.100.1")
            .header(X_FORWARDED_PROTO, "ftp")
            .header(X_FORWARDED_HOST, "evil.example")
            .header(X_REQUEST_ID, "client-chosen")
            .header("x-api-key", "live-secret")
            .header("x-kept", "1")
            .body(())
            .unwrap();
        assert_eq!(
            upstream_head(ONE_KEY, req),
            "GET /a?x=1 HTTP/1.1\r\n\
             host: up.internal:8000\r\n\
             x-forwarded-host: api.example.com\r\n\
             x-keygate-key-id: k1\r\n\
             x-keygate-consumer: acme\r\n\
             x-forwarded-for: 203.0.113.9, 198.51.100.1, 10.0.0.2\r\n\
             x-forwarded-proto: https\r\n\
             x-request-id: rid-1\r\n\
             accept: */*\r\n\
             x-kept: 1\r\n\
             \r\n"
        );
    }

    #[test]
    fn a_preserved_host_is_the_client_s_and_a_hop_by_hop_forwarded_for_is_dropped() {
        let config = ONE_KEY.replace(
            "upstream = \"http://up.internal:8000\"",
            "upstream = \"http://up.internal:8000\"\npreserve_host = true",
        );
        let req = Request::builder()
            .uri("/")
            .header(HOST, "api.example.com")
            .header(CONNECTION, "x-forwarded-for")
            .header(X_FORWARDED_FOR, "203.0.113.9")
            .header("x-api-key", "live-secret")
            .body(())
            .unwrap();
        assert_eq!(
            upstream_head(&config, req),
            "GET / HTTP/1.1\r\n\
             host: api.example.com\r\n\
             x-forwarded-host: api.example.com\r\n\
             x-keygate-key-id: k1\r\n\
             x-keygate-consumer: acme\r\n\
             x-forwarded-for: 10.0.0.2\r\n\
             x-forwarded-proto: https\r\n\
             x-request-id: rid-1\r\n\
             \r\n"
        );
    }
}
