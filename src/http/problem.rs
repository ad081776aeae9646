//! The one problem+json renderer (RFC 9457) for the proxy's denials and the admin API's errors,
//! so both fronts answer a refusal with the same shape, headers and type URIs.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

/// A refusal as keygate shows it. `code` is the stable contract; `detail` is for people and
/// must never echo a secret.
#[derive(Debug, Clone, Copy)]
pub struct Problem<'a> {
    pub status: StatusCode,
    pub code: &'a str,
    pub title: &'a str,
    pub detail: &'a str,
    /// The admin API's body field or query parameter at fault.
    pub field: Option<&'a str>,
    /// Seconds, sent as `Retry-After` (a 429 or a 503).
    pub retry_after: Option<u64>,
}

impl<'a> Problem<'a> {
    pub fn new(status: StatusCode, code: &'a str, title: &'a str, detail: &'a str) -> Problem<'a> {
        Problem {
            status,
            code,
            title,
            detail,
            field: None,
            retry_after: None,
        }
    }

    /// The response: `application/problem+json`, never cached, `request_id` in the body (the
    /// caller sets the `X-Request-Id` header).
    pub fn response(&self, request_id: &HeaderValue) -> Response<Full<Bytes>> {
        let body = Body {
            kind: self.code,
            title: self.title,
            status: self.status.as_u16(),
            detail: self.detail,
            code: self.code,
            field: self.field,
            // Request ids are checked to be visible ASCII before they get here.
            request_id: request_id.to_str().unwrap_or_default(),
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut resp = Response::new(Full::new(Bytes::from(bytes)));
        *resp.status_mut() = self.status;
        let headers = resp.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(secs) = self.retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// The body, in the order clients and tests have always seen it.
#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type", serialize_with = "problem_type")]
    kind: &'a str,
    title: &'a str,
    status: u16,
    detail: &'a str,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    request_id: &'a str,
}

/// A stable, non-resolvable URI per code (RFC 9457 allows tag URIs for exactly this).
fn problem_type<S: serde::Serializer>(code: &&str, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("tag:keygate,2026:problem:{code}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn body_and_headers() {
        let mut p = Problem::new(StatusCode::BAD_REQUEST, "invalid_field", "Bad Request", "d");
        p.field = Some("limit");
        p.retry_after = Some(3);
        let resp = p.response(&HeaderValue::from_static("rid"));
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/problem+json");
        assert_eq!(resp.headers()[CACHE_CONTROL], "no-store");
        assert_eq!(resp.headers()[RETRY_AFTER], "3");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            &body[..],
            br#"{"type":"tag:keygate,2026:problem:invalid_field","title":"Bad Request","status":400,"detail":"d","code":"invalid_field","field":"limit","request_id":"rid"}"#
        );
    }
}
