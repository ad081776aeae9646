//! Verify: the decision alone, for the forward-auth of a proxy that stays in front
//! (nginx `auth_request`, Traefik `forwardAuth`, Caddy `forward_auth`, Envoy `ext_authz`;
//! docs/forward-auth.md). Nothing is forwarded: the answer is 200 with the key's identity and
//! rate-limit headers for the proxy to copy, or the refusal the proxy mode would give.
//!
//! The call describes the original request: `X-Forwarded-Method` / `-Uri` / `-Host` / `-Proto`
//! (Traefik, Caddy), `X-Original-Method` / `X-Original-URI` (the nginx recipe), else the call
//! itself (Envoy sends the original method, path and headers). The decision is
//! [`Proxy::decide`], the proxy mode's own, on the original method, host, path and query, and the
//! call's headers (which these proxies copy from the client's request). Only the `[verify]
//! trusted_proxies` may call, and they are checked before the description is: from anyone else
//! these headers would let a client describe whatever request it likes.

use std::net::SocketAddr;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Instant;

use crate::http::body::RequestBody;
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{Either, Full};

use super::deny::{Deny, Refusal};
use super::forward::{X_KEYGATE_CONSUMER, X_KEYGATE_KEY_ID};
use super::observe::{Activity, Body, Exchange};
use super::{Asked, Proxy, client_ip, respond, route};
use crate::http::request_id;

const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// What `X-Forwarded-Proto` may say.
const SCHEMES: [&[u8]; 4] = [b"http", b"https", b"ws", b"wss"];
const X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
const X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
/// On a refusal, for nginx: its `auth_request` turns any status but 2xx, 401 and 403 into a
/// 500, so the recipe reads the real status and code from these (`auth_request_set`).
pub const X_KEYGATE_STATUS: HeaderName = HeaderName::from_static("x-keygate-status");
pub const X_KEYGATE_CODE: HeaderName = HeaderName::from_static("x-keygate-code");

impl Proxy {
    /// Answers one forward-auth call from `peer`. Never fails: every error is a response.
    /// Not an `async fn`, which would keep the request twice in its future (see
    /// [`Proxy::handle`]).
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice in its future"
    )]
    pub fn verify(
        self: Arc<Self>,
        req: Request<RequestBody>,
        peer: SocketAddr,
        activity: Option<Arc<Activity>>,
    ) -> impl Future<Output = Response<Body>> + Send + 'static {
        async move {
            let request_id = request_id::of(req.headers());
            let original = Original::of(&req);
            let (method, host) = match &original {
                Ok(o) => (&o.method, o.host),
                Err(_) => (req.method(), None),
            };
            let mut exchange = Exchange::begin(
                &self.observer,
                method,
                || host.and_then(|h| HeaderValue::from_str(h).ok()),
                &request_id,
                Instant::now(),
                activity.as_ref(),
            );
            let outcome = self.decide_for(&req, original, peer, &mut exchange).await;
            let code = outcome.as_ref().err().map(|r| r.deny.code());
            let (outcome, rate) = match outcome {
                Ok((identity, rate)) => {
                    let mut resp = Response::new(Either::Right(Full::default()));
                    let headers = resp.headers_mut();
                    headers.insert(X_KEYGATE_KEY_ID, identity.0);
                    if let Some(c) = identity.1 {
                        headers.insert(X_KEYGATE_CONSUMER, c);
                    }
                    (Ok(resp), rate)
                }
                Err(refusal) => (Err(refusal), None),
            };
            // No CORS headers: the calling proxy answers the browser, with its own.
            let mut resp = respond::respond(outcome, rate.as_ref(), None, request_id, exchange);
            if let Some(code) = code {
                let status = HeaderValue::from(resp.status().as_u16());
                let headers = resp.headers_mut();
                headers.insert(X_KEYGATE_STATUS, status);
                headers.insert(X_KEYGATE_CODE, HeaderValue::from_static(code));
            }
            debug_assert!(resp.status() == StatusCode::OK || code.is_some());
            resp
        }
    }

    /// The proxy mode's decision on the original request, for a trusted caller; the key's and
    /// consumer's ids as header values, taken while the snapshot is held. The caller is checked
    /// before its description: an untrusted peer learns nothing from how its headers are read.
    async fn decide_for(
        &self,
        req: &Request<RequestBody>,
        original: Result<Original<'_>, Deny>,
        peer: SocketAddr,
        exchange: &mut Exchange,
    ) -> Result<(Identity, Option<crate::limits::RateStatus>), Refusal> {
        let snap = self.published.load();
        // A reload that removed `[verify]` leaves the listener bound (a restart closes it)
        // and believing nobody.
        let Some(verify) = &snap.verify else {
            return Err(Deny::ProxyNotTrusted.into());
        };
        let trusted = &verify.trusted_proxies;
        if !trusted.allows(client_ip::canonical(peer.ip())) {
            exchange.client(client_ip::canonical(peer.ip()));
            return Err(Deny::ProxyNotTrusted.into());
        }
        let original = original?;
        let asked = Asked {
            method: &original.method,
            host: original.host,
            path: original.uri.path(),
            query: original.uri.query(),
            path_and_query: original.uri.path_and_query().map_or("/", |pq| pq.as_str()),
            headers: req.headers(),
            body_len: declared_length(req.headers()),
        };
        let decided = self.decide(&snap, &asked, peer, trusted, exchange).await?;
        let key = decided.authorized.key;
        let identity = (
            key.id.header_value(),
            snap.consumer_of(key).map(|c| c.id.header_value()),
        );
        Ok((identity, decided.rate))
    }
}

/// The key's id and its consumer's, as the 200 carries them.
type Identity = (HeaderValue, Option<HeaderValue>);

/// The original request, as the calling proxy describes it.
struct Original<'r> {
    method: Method,
    uri: Uri,
    /// Port included, as in `Host`.
    host: Option<&'r str>,
}

impl<'r> Original<'r> {
    /// Reads the forwarded description, falling back to the call itself. A header sent twice
    /// is refused rather than guessed: the two could disagree about what is being asked.
    fn of<B>(req: &'r Request<B>) -> Result<Original<'r>, Deny> {
        let h = req.headers();
        let method = match one_of(h, &[X_FORWARDED_METHOD, X_ORIGINAL_METHOD])? {
            None => req.method().clone(),
            Some(v) => Method::from_bytes(v.as_bytes()).map_err(|_| Deny::InvalidRequest)?,
        };
        let uri = match one_of(h, &[X_FORWARDED_URI, X_ORIGINAL_URI])? {
            None => req.uri().clone(),
            Some(v) => {
                let text = v.to_str().map_err(|_| Deny::InvalidRequest)?;
                // Origin-form (`/path?query`) as all four proxies send it; an absolute URI's
                // path and query are taken, its authority is not believed over the host.
                let uri = Uri::from_str(text).map_err(|_| Deny::InvalidRequest)?;
                if uri.path_and_query().is_none() || !uri.path().starts_with('/') {
                    return Err(Deny::InvalidRequest);
                }
                uri
            }
        };
        // Read so that a call describing a scheme other than `SCHEMES` is refused, as any other
        // unreadable description is. Nothing in the decision depends on the scheme: the proxy
        // mode uses its connection's only for the `X-Forwarded-Proto` it sends upstream, and a
        // verify call forwards nothing.
        if let Some(v) = one_of(h, &[X_FORWARDED_PROTO])? {
            // A list, when proxies before the caller appended theirs: the first is the client's.
            let first = v
                .as_bytes()
                .split(|&b| b == b',')
                .next()
                .unwrap_or_default();
            let scheme = first.trim_ascii();
            // Traefik says `ws` / `wss` for a WebSocket upgrade.
            if !SCHEMES.iter().any(|s| scheme.eq_ignore_ascii_case(s)) {
                return Err(Deny::InvalidRequest);
            }
        }
        let host = match one_of(h, &[X_FORWARDED_HOST])? {
            // A list, when proxies before the caller appended theirs: the first is the host the
            // client asked for.
            Some(v) => {
                let text = v.to_str().map_err(|_| Deny::InvalidRequest)?;
                Some(text.split(',').next().unwrap_or_default().trim())
            }
            // `Host`, else (HTTP/2, as Envoy may call) the authority.
            None => route::request_host_port(req),
        };
        Ok(Original { method, uri, host })
    }
}

/// The value of the first of `names` present, refusing one sent twice.
fn one_of<'h>(
    headers: &'h HeaderMap,
    names: &[HeaderName],
) -> Result<Option<&'h HeaderValue>, Deny> {
    for name in names {
        let mut values = headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (Some(_), Some(_)) => return Err(Deny::InvalidRequest),
            (Some(v), None) => return Ok(Some(v)),
            _ => {}
        }
    }
    Ok(None)
}

/// The original body's `Content-Length`, when the proxy passed it on (0 when not known).
fn declared_length(headers: &HeaderMap) -> u64 {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder()
            .method(Method::GET)
            .uri("/_keygate?x=1")
            .header("host", "127.0.0.1:8081");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    /// (method, path?query, host) as `Original::of` reads them, or the code it refuses with.
    fn read(headers: &[(&str, &str)]) -> Result<(String, String, Option<String>), &'static str> {
        let req = call(headers);
        let o = Original::of(&req).map_err(|d| d.code())?;
        let pq = o.uri.path_and_query().map(|pq| pq.as_str().to_owned());
        Ok((
            o.method.to_string(),
            pq.unwrap_or_default(),
            o.host.map(str::to_owned),
        ))
    }

    #[test]
    fn the_forwarded_headers_win_then_the_original_ones_then_the_call() {
        let own = (
            "GET".into(),
            "/_keygate?x=1".into(),
            Some("127.0.0.1:8081".into()),
        );
        assert_eq!(read(&[]), Ok(own));
        let nginx = read(&[("x-original-method", "POST"), ("x-original-uri", "/a?b=1")]);
        assert_eq!(nginx.unwrap().0, "POST");
        let both = read(&[
            ("x-forwarded-method", "PUT"),
            ("x-original-method", "POST"),
            ("x-forwarded-uri", "/f"),
            ("x-original-uri", "/o"),
            ("x-forwarded-host", "api.example.com:8443, proxy.internal"),
        ]);
        assert_eq!(
            both,
            Ok((
                "PUT".into(),
                "/f".into(),
                Some("api.example.com:8443".into())
            ))
        );
        // The scheme, HTTP's or WebSocket's (Traefik), first of a list, in any case.
        for proto in ["http", "https", "HTTPS", "https, http", "ws", "wss"] {
            assert!(read(&[("x-forwarded-proto", proto)]).is_ok(), "{proto}");
        }
        // An absolute URI gives its path and query; its authority is not the host.
        let absolute = read(&[("x-forwarded-uri", "https://elsewhere.example/p?q=2")]);
        assert_eq!(
            absolute,
            Ok(("GET".into(), "/p?q=2".into(), Some("127.0.0.1:8081".into())))
        );
    }

    #[test]
    fn an_unreadable_or_repeated_description_is_invalid_request() {
        for headers in [
            &[("x-forwarded-uri", "/a"), ("x-forwarded-uri", "/b")][..],
            &[("x-original-method", "GET"), ("x-original-method", "POST")],
            &[("x-forwarded-host", "a"), ("x-forwarded-host", "b")],
            &[("x-forwarded-uri", "relative/path")],
            &[("x-forwarded-uri", "*")],
            &[("x-forwarded-method", "GE T")],
            &[("x-forwarded-proto", "ftp")],
            &[("x-forwarded-proto", "")],
            &[
                ("x-forwarded-proto", "https"),
                ("x-forwarded-proto", "https"),
            ],
        ] {
            assert_eq!(read(headers), Err("invalid_request"), "{headers:?}");
        }
    }
}
