//! Every denial keygate answers itself, and the one place a denial becomes a response.
//!
//! Phases return `Err(Deny)` and use `?`; only [`Deny::response`] knows status codes and bodies,
//! so the contract (status, `code`, problem+json shape) lives in one screen of code.

use std::fmt::Write as _;

use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::Either;

use super::pool::PooledBody;
use crate::http::problem::Problem;
use crate::limits::{Limited, RateStatus};
use crate::snapshot::{Consumer, Id, Key};

/// A response body before `observe::Body` wraps it: the upstream's, streamed, or keygate's own.
pub type Inner = Either<PooledBody, http_body_util::Full<bytes::Bytes>>;

/// Why keygate refused or could not complete a request. `code()` strings are a contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deny {
    NoRoute,
    KeyMissing,
    KeyInvalid,
    KeyInactive,
    KeyExpired,
    IpNotAllowed,
    /// The key (or its consumer) has `allow_origins`, and the request's `Origin` (else its
    /// `Referer`'s origin) is not listed, or it has neither.
    OriginNotAllowed,
    TargetNotAllowed,
    AccessDenied,
    /// The request body is larger than the target's `max_body`.
    BodyTooLarge,
    /// The request body could not be read: a malformed chunked encoding, or the client left
    /// before sending all of it.
    InvalidBody,
    /// Boxed, like the next: the state of up to four limits would make every `Result` of
    /// the request path as large, refused or not.
    RateLimited(Box<Limited>),
    /// The key's or its consumer's quota for the current calendar window is used up.
    QuotaExceeded(Box<Limited>),
    /// Too many `key_invalid` answers to this client address; retry after this many seconds.
    TooManyFailures(u64),
    UpstreamUnavailable,
    UpstreamTimeout,
    /// `[cluster] on_redis_error = "deny"` while Redis does not answer.
    RateLimitUnavailable,
    /// A call to the verify listener from outside its trusted proxies.
    ProxyNotTrusted,
    /// A verify call whose description of the original request cannot be read (a malformed or
    /// repeated `X-Forwarded-Uri`, `X-Forwarded-Method`, ...).
    InvalidRequest,
}

impl Deny {
    pub fn status(&self) -> StatusCode {
        match self {
            Deny::NoRoute => StatusCode::NOT_FOUND,
            Deny::KeyMissing
            | Deny::KeyInvalid
            | Deny::KeyInactive
            | Deny::KeyExpired
            | Deny::IpNotAllowed
            | Deny::OriginNotAllowed
            | Deny::TargetNotAllowed
            | Deny::AccessDenied
            | Deny::ProxyNotTrusted => StatusCode::FORBIDDEN,
            Deny::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Deny::InvalidBody | Deny::InvalidRequest => StatusCode::BAD_REQUEST,
            Deny::RateLimited(_) | Deny::QuotaExceeded(_) | Deny::TooManyFailures(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Deny::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            Deny::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Deny::RateLimitUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Deny::NoRoute => "no_route",
            Deny::KeyMissing => "key_missing",
            Deny::KeyInvalid => "key_invalid",
            Deny::KeyInactive => "key_inactive",
            Deny::KeyExpired => "key_expired",
            Deny::IpNotAllowed => "ip_not_allowed",
            Deny::OriginNotAllowed => "origin_not_allowed",
            Deny::TargetNotAllowed => "target_not_allowed",
            Deny::AccessDenied => "access_denied",
            Deny::BodyTooLarge => "body_too_large",
            Deny::InvalidBody => "invalid_body",
            Deny::RateLimited(_) => "rate_limited",
            Deny::QuotaExceeded(_) => "quota_exceeded",
            Deny::TooManyFailures(_) => "too_many_failures",
            Deny::UpstreamUnavailable => "upstream_unavailable",
            Deny::UpstreamTimeout => "upstream_timeout",
            Deny::RateLimitUnavailable => "rate_limit_unavailable",
            Deny::ProxyNotTrusted => "proxy_not_trusted",
            Deny::InvalidRequest => "invalid_request",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Deny::NoRoute => "No route",
            Deny::KeyMissing => "API key missing",
            Deny::KeyInvalid => "API key invalid",
            Deny::KeyInactive => "API key inactive",
            Deny::KeyExpired => "API key expired",
            Deny::IpNotAllowed => "Address not allowed",
            Deny::OriginNotAllowed => "Origin not allowed",
            Deny::TargetNotAllowed => "Target not allowed",
            Deny::AccessDenied => "Access denied",
            Deny::BodyTooLarge => "Request body too large",
            Deny::InvalidBody => "Request body invalid",
            Deny::RateLimited(_) => "Rate limit exceeded",
            Deny::QuotaExceeded(_) => "Quota exceeded",
            Deny::TooManyFailures(_) => "Too many failed attempts",
            Deny::UpstreamUnavailable => "Upstream unavailable",
            Deny::UpstreamTimeout => "Upstream timeout",
            Deny::RateLimitUnavailable => "Rate limit unavailable",
            Deny::ProxyNotTrusted => "Caller not trusted",
            Deny::InvalidRequest => "Invalid request",
        }
    }

    fn detail(&self) -> &'static str {
        // Never echo what the client sent: a detail must not carry a secret back or into a log.
        match self {
            Deny::NoRoute => "No target is configured for this host and path.",
            Deny::KeyMissing => "Send an API key in the X-API-Key header.",
            Deny::KeyInvalid => "The API key is not valid.",
            Deny::KeyInactive => "The API key has been switched inactive.",
            Deny::KeyExpired => "The API key has expired.",
            Deny::IpNotAllowed => "The API key may not be used from this address.",
            Deny::OriginNotAllowed => "The API key may not be used from this web origin.",
            Deny::TargetNotAllowed => "The API key is not bound to this deploy target.",
            Deny::AccessDenied => "The API key may not use this method or path.",
            Deny::BodyTooLarge => "The request body is larger than this target accepts.",
            Deny::InvalidBody => "The request body is malformed or ended early.",
            Deny::RateLimited(_) => "The API key is over its rate limit; see Retry-After.",
            Deny::QuotaExceeded(_) => {
                "The API key's quota for this period is used up; see Retry-After."
            }
            Deny::TooManyFailures(_) => {
                "Too many requests with invalid API keys from this address; see Retry-After."
            }
            Deny::UpstreamUnavailable => "The upstream refused or dropped the connection.",
            Deny::UpstreamTimeout => "The upstream did not answer in time.",
            Deny::RateLimitUnavailable => {
                "The shared rate limit cannot be checked right now; retry shortly."
            }
            Deny::ProxyNotTrusted => {
                "Only the proxies in the verify listener's trusted_proxies may ask for a decision."
            }
            Deny::InvalidRequest => {
                "The forwarded method, URI, host or scheme of the original request cannot be read."
            }
        }
    }

    /// The RFC 9457 problem+json response for this denial, rendered by the renderer the admin
    /// API uses too.
    pub fn response(&self, request_id: &HeaderValue) -> Response<Inner> {
        let mut problem = Problem::new(self.status(), self.code(), self.title(), self.detail());
        problem.retry_after = match self {
            Deny::RateLimited(limited) | Deny::QuotaExceeded(limited) => Some(limited.retry_after),
            Deny::TooManyFailures(secs) => Some(*secs),
            _ => None,
        };
        let mut resp = problem.response(request_id).map(Either::Right);
        if let Deny::RateLimited(limited) | Deny::QuotaExceeded(limited) = self {
            rate_headers(&limited.status, resp.headers_mut());
        }
        resp
    }
}

/// The rate-limit fields of every response to a rate-limited key: Kong's and the older IETF
/// drafts' `RateLimit-Limit/-Remaining/-Reset` for the limit closest to refusing, and the current
/// draft's structured `RateLimit-Policy` and `RateLimit` with every limit that applied, e.g.
/// `RateLimit-Policy: "key";q=10;w=1, "consumer";q=1000;w=60` and
/// `RateLimit: "key";r=9;t=1, "consumer";r=999;t=1`.
pub fn rate_headers(status: &RateStatus, headers: &mut HeaderMap) {
    let Some(binding) = status.binding() else {
        return;
    };
    headers.insert(RATELIMIT_LIMIT, HeaderValue::from(binding.limit));
    headers.insert(RATELIMIT_REMAINING, HeaderValue::from(binding.remaining));
    headers.insert(RATELIMIT_RESET, HeaderValue::from(binding.reset));
    let (mut policy, mut state) = (String::new(), String::new());
    for (i, p) in status.policies.iter().flatten().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let name = p.scope.name();
        let _ = write!(policy, "{sep}\"{name}\";q={};w={}", p.limit, p.window);
        let _ = write!(state, "{sep}\"{name}\";r={};t={}", p.remaining, p.reset);
    }
    if let Ok(v) = HeaderValue::try_from(policy) {
        headers.insert(RATELIMIT_POLICY, v);
    }
    if let Ok(v) = HeaderValue::try_from(state) {
        headers.insert(RATELIMIT, v);
    }
}

const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// A refusal on its way from the phase that made it to the one place it is recorded and
/// answered (`respond`): the reason, and the key (with its consumer) it concerns when the
/// secret matched one, so that the access log and the per-key metrics can name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub deny: Deny,
    pub key: Option<Id>,
    pub consumer: Option<Id>,
}

impl Refusal {
    /// A refusal that concerns `key`.
    pub fn of_key(deny: Deny, key: &Key, consumer: Option<&Consumer>) -> Refusal {
        Refusal {
            deny,
            key: Some(key.id.clone()),
            consumer: consumer.map(|c| c.id.clone()),
        }
    }
}

impl From<Deny> for Refusal {
    /// A refusal made before any key was found (or not about one: the upstream's).
    fn from(deny: Deny) -> Refusal {
        Refusal {
            deny,
            key: None,
            consumer: None,
        }
    }
}
