//! Respond: the one place a request's outcome becomes the client's response, and the one place
//! a refusal is recorded (metrics and access log, through the [`Exchange`]).

use http::{HeaderValue, Response};

use super::cors::Browser;
use super::deny::{Inner, Refusal, rate_headers};
use super::observe::{Body, Exchange};
use crate::http::request_id::X_REQUEST_ID;
use crate::limits::RateStatus;

/// The upstream's answer (or the verify listener's 200) or keygate's refusal, with the rate-limit state of an admitted
/// request (shown on its response, even when the upstream then fails), the request id, and
/// the exchange that finishes with the response body. A browser's request to a target with
/// `[targets.cors]` gets its CORS headers here, on an answer and a refusal alike.
pub fn respond(
    outcome: Result<Response<Inner>, Refusal>,
    rate: Option<&RateStatus>,
    browser: Option<&Browser>,
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
    if let Some(browser) = browser {
        browser.label(resp.headers_mut());
    }
    finish(resp, request_id, exchange)
}

/// A CORS preflight keygate answered itself (`cors.rs`), recorded like any answer.
pub fn preflight(browser: &Browser, request_id: HeaderValue, exchange: Exchange) -> Response<Body> {
    finish(browser.preflight(), request_id, exchange)
}

fn finish(
    mut resp: Response<Inner>,
    mut request_id: HeaderValue,
    mut exchange: Exchange,
) -> Response<Body> {
    // Unique to the request, so HTTP/2's HPACK gains nothing from adding it to the connection's
    // table: sent as "never indexed", it costs no insert and evicts nothing that would repeat.
    request_id.set_sensitive(true);
    resp.headers_mut().insert(X_REQUEST_ID, request_id);
    exchange.status(resp.status().as_u16());
    resp.map(|inner| Body::new(inner, exchange))
}
