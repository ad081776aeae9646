//! Browsers: the request's web origin for `allow_origins` (authorize), and `[targets.cors]`,
//! keygate answering a target's CORS preflights itself and labelling its real answers, the
//! upstream's and keygate's own refusals alike, so that a page can read either.
//!
//! A request without an `Origin` header (the server-to-server case) costs one header lookup
//! here (none when no target has `[targets.cors]`: `Snapshot::cors`) and allocates nothing; `Origin` and `Referer` are read for `allow_origins` only when
//! some key or consumer has one (`Snapshot::origins`).
//!
//! A preflight from an origin the target does not list is answered too, 204 without any
//! `Access-Control-Allow-*` header: the browser fails it as it would fail a refusal, but its
//! console then says what is wrong ("no Access-Control-Allow-Origin header") instead of
//! pointing at a missing key, and an upstream behind a `[targets.cors]` never sees a preflight
//! whose CORS headers keygate would have to overrule.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, REFERER, VARY,
};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body_util::{Either, Full};

use super::deny::Inner;
use crate::model::Cors;
use crate::model::origin::origin_of_url;
use crate::snapshot::{Snapshot, TargetIdx};

/// What `allow_origins` is checked against: the `Origin` header, else the `scheme://host[:port]`
/// start of the `Referer` (a slice of it: nothing copied), else nothing.
pub fn request_origin(headers: &HeaderMap) -> Option<&[u8]> {
    match headers.get(ORIGIN) {
        Some(origin) => Some(origin.as_bytes()),
        None => headers
            .get(REFERER)
            .and_then(|r| origin_of_url(r.as_bytes())),
    }
}

/// A browser's request to a target with `[targets.cors]`: what its answer says about CORS.
#[derive(Debug)]
pub struct Browser {
    /// Held past the snapshot: the answer is labelled after the upstream answered.
    policy: Arc<Cors>,
    /// The request's `Origin` when the target lists it: what `Access-Control-Allow-Origin`
    /// repeats (never `*`).
    allowed: Option<HeaderValue>,
    /// A preflight (`OPTIONS` with `Access-Control-Request-Method`), with the
    /// `Access-Control-Request-Headers` it asked for.
    preflight: Option<Option<HeaderValue>>,
    pub target: TargetIdx,
}

impl Browser {
    /// `None` for a request without `Origin` or one routed (by `host`, port included, and
    /// `path`, as `decide` routes) to a target without `[targets.cors]`: its answer is left as
    /// it is.
    pub fn of(
        snap: &Snapshot,
        method: &Method,
        host: Option<&str>,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<Browser> {
        let origin = headers.get(ORIGIN)?;
        let target = snap.routes.find_asked(host, path)?;
        let policy = snap.target(target).cors.as_ref()?.clone();
        let preflight = (*method == Method::OPTIONS
            && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD))
        .then(|| headers.get(ACCESS_CONTROL_REQUEST_HEADERS).cloned());
        Some(Browser {
            allowed: policy.allows(origin.as_bytes()).then(|| origin.clone()),
            policy,
            preflight,
            target,
        })
    }

    /// A preflight keygate answers itself, before any key is asked for (browsers send none).
    pub fn is_preflight(&self) -> bool {
        self.preflight.is_some()
    }

    /// The answer to a preflight: 204, with the `Access-Control-Allow-*` headers for a listed
    /// origin, without them for another.
    pub fn preflight(&self) -> Response<Inner> {
        let mut resp = Response::new(Either::Right(Full::new(Bytes::new())));
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let h = resp.headers_mut();
        h.insert(VARY, VARY_PREFLIGHT);
        let Some(origin) = &self.allowed else {
            return resp;
        };
        let p = &*self.policy;
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        h.insert(ACCESS_CONTROL_ALLOW_METHODS, p.allow_methods.clone());
        // Echoed when not configured: the key check, not this list, is the gate.
        let headers = p
            .allow_headers
            .clone()
            .or_else(|| self.preflight.clone().flatten());
        if let Some(headers) = headers {
            h.insert(ACCESS_CONTROL_ALLOW_HEADERS, headers);
        }
        if let Some(age) = &p.max_age {
            h.insert(ACCESS_CONTROL_MAX_AGE, age.clone());
        }
        if p.allow_credentials {
            h.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE);
        }
        resp
    }

    /// Labels a real answer (the upstream's or a refusal): the target's policy replaces
    /// whatever CORS headers the upstream sent, so a page of an unlisted origin cannot read it
    /// through an upstream's `Access-Control-Allow-Origin: *`.
    pub fn label(&self, h: &mut HeaderMap) {
        h.remove(ACCESS_CONTROL_ALLOW_ORIGIN);
        h.remove(ACCESS_CONTROL_ALLOW_CREDENTIALS);
        h.remove(ACCESS_CONTROL_EXPOSE_HEADERS);
        let varies = h.get_all(VARY).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|name| name.trim_ascii().eq_ignore_ascii_case(b"origin"))
        });
        if !varies {
            h.append(VARY, VARY_ORIGIN);
        }
        let Some(origin) = &self.allowed else {
            return;
        };
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        h.insert(
            ACCESS_CONTROL_EXPOSE_HEADERS,
            self.policy.expose_headers.clone(),
        );
        if self.policy.allow_credentials {
            h.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE);
        }
    }
}

const VARY_ORIGIN: HeaderValue = HeaderValue::from_static("Origin");
const VARY_PREFLIGHT: HeaderValue = HeaderValue::from_static(
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
);
const TRUE: HeaderValue = HeaderValue::from_static("true");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_replaces_the_upstreams_cors_headers_and_varies_once() {
        let policy = Arc::new(Cors {
            any_origin: false,
            allow_origins: crate::model::OriginList::new(vec![
                crate::model::OriginPattern::parse("https://shop.example.com").unwrap(),
            ]),
            allow_methods: HeaderValue::from_static(Cors::DEFAULT_METHODS),
            allow_headers: None,
            expose_headers: HeaderValue::from_static(Cors::EXPOSED),
            max_age: None,
            allow_credentials: false,
        });
        let browser = |origin: &'static str| Browser {
            allowed: policy
                .allows(origin.as_bytes())
                .then(|| HeaderValue::from_static(origin)),
            policy: policy.clone(),
            preflight: None,
            target: 0,
        };
        let upstream = || {
            let mut h = HeaderMap::new();
            h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
            h.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE);
            h.insert(VARY, HeaderValue::from_static("Accept-Encoding, origin"));
            h
        };
        let mut h = upstream();
        browser("https://shop.example.com").label(&mut h);
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://shop.example.com");
        assert_eq!(h.get(ACCESS_CONTROL_ALLOW_CREDENTIALS), None);
        assert_eq!(h.get_all(VARY).iter().count(), 1);
        let mut h = upstream();
        browser("https://evil.example.net").label(&mut h);
        assert_eq!(h.get(ACCESS_CONTROL_ALLOW_ORIGIN), None);
        assert_eq!(h.get(ACCESS_CONTROL_ALLOW_CREDENTIALS), None);
        let mut h = HeaderMap::new();
        browser("https://shop.example.com").label(&mut h);
        assert_eq!(h[VARY], "Origin");
    }

    #[test]
    fn the_origin_is_the_header_else_the_referers() {
        let mut h = HeaderMap::new();
        assert_eq!(request_origin(&h), None);
        h.insert(
            REFERER,
            HeaderValue::from_static("https://shop.example.com/cart?id=1"),
        );
        assert_eq!(request_origin(&h), Some(&b"https://shop.example.com"[..]));
        h.insert(ORIGIN, HeaderValue::from_static("null"));
        assert_eq!(request_origin(&h), Some(&b"null"[..]));
    }
}
