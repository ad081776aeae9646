//! Respond: the one place a request's outcome becomes the client's response, and the one place
//! a refusal is recorded (metrics and access log, through the [`Exchange`]).

use http::{HeaderValue, Response};

use super::deny::{Inner, Refusal, rate_headers};
use super::observe::{Body, Exchange};
use crate::http::request_id::X_REQUEST_ID;
use crate::limits::RateStatus;

/// The upstream's answer (or the verify listener's 200) or keygate's refusal, with the rate-limit state of an admitted
/// request (shown on its response, even when the upstream then fails), the request id, and
/// the exchange that finishes with the response body.
pub fn respond(
    outcome: Result<Response<Inner>, Refusal>,
    rate: Option<&RateStatus>,
    request_id: HeaderValue,
    mut exchange: Exchange,
) -> Response<Body> {
    let mut resp = match outcome {
        Ok(resp) => resp,
        Err(refusal) => {
            exchange.refused(&refusal);
            // Refusals are what a gateway does all day: debug only. The access log has the rest.
            tracing::debug!(
                code = refusal.deny.code(),
                key_id = refusal.key.as_ref().map(|k| k.as_str()),
                request_id = request_id.to_str().unwrap_or_default(),
                "denied"
            );
            refusal.deny.response(&request_id)
        }
    };
    if let Some(rate) = rate {
        rate_headers(rate, resp.headers_mut());
    }
    resp.headers_mut().insert(X_REQUEST_ID, request_id);
    exchange.status(resp.status().as_u16());
    resp.map(|inner| Body::new(inner, exchange))
}
