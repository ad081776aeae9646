//! Every denial keygate answers itself, and the one place a denial becomes a response.
//!
//! Phases return `Err(Deny)` and use `?`; only [`Deny::response`] knows status codes and bodies,
//! so the contract (status, `code`, problem+json shape) lives in one screen of code.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};
use serde::Serialize;

use super::Body;

/// Why keygate refused or could not complete a request. `code()` strings are a contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deny {
    NoRoute,
    KeyMissing,
    KeyInvalid,
    KeyInactive,
    KeyExpired,
    UpstreamUnavailable,
    UpstreamTimeout,
}

impl Deny {
    pub fn status(self) -> StatusCode {
        match self {
            Deny::NoRoute => StatusCode::NOT_FOUND,
            Deny::KeyMissing | Deny::KeyInvalid | Deny::KeyInactive | Deny::KeyExpired => {
                StatusCode::FORBIDDEN
            }
            Deny::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            Deny::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Deny::NoRoute => "no_route",
            Deny::KeyMissing => "key_missing",
            Deny::KeyInvalid => "key_invalid",
            Deny::KeyInactive => "key_inactive",
            Deny::KeyExpired => "key_expired",
            Deny::UpstreamUnavailable => "upstream_unavailable",
            Deny::UpstreamTimeout => "upstream_timeout",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Deny::NoRoute => "No route",
            Deny::KeyMissing => "API key missing",
            Deny::KeyInvalid => "API key invalid",
            Deny::KeyInactive => "API key inactive",
            Deny::KeyExpired => "API key expired",
            Deny::UpstreamUnavailable => "Upstream unavailable",
            Deny::UpstreamTimeout => "Upstream timeout",
        }
    }

    fn detail(self) -> &'static str {
        // Never echo what the client sent: a detail must not carry a secret back or into a log.
        match self {
            Deny::NoRoute => "No target is configured for this host and path.",
            Deny::KeyMissing => "Send an API key in the X-API-Key header.",
            Deny::KeyInvalid => "The API key is not valid.",
            Deny::KeyInactive => "The API key has been switched inactive.",
            Deny::KeyExpired => "The API key has expired.",
            Deny::UpstreamUnavailable => "The upstream refused or dropped the connection.",
            Deny::UpstreamTimeout => "The upstream did not answer in time.",
        }
    }

    /// The RFC 9457 problem+json response for this denial.
    pub fn response(self, request_id: &HeaderValue) -> Response<Body> {
        let problem = Problem {
            kind: self.code(),
            title: self.title(),
            status: self.status().as_u16(),
            detail: self.detail(),
            code: self.code(),
            // Request ids are checked to be visible ASCII before they get here.
            request_id: request_id.to_str().unwrap_or_default(),
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
        *resp.status_mut() = self.status();
        let headers = resp.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type", serialize_with = "problem_type")]
    kind: &'a str,
    title: &'a str,
    status: u16,
    detail: &'a str,
    code: &'a str,
    request_id: &'a str,
}

/// A stable, non-resolvable URI per code (RFC 9457 allows tag URIs for exactly this).
fn problem_type<S: serde::Serializer>(code: &&str, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("tag:keygate,2026:problem:{code}"))
}
