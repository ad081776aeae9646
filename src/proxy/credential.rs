//! Credential: the key header, else the first key query parameter; and, for the
//! upstream and for logs, the query with that parameter removed or redacted.
//!
//! Everything here takes hostile input: lengths are capped, decoding never panics, and any
//! ambiguity (the header twice, header and query disagreeing) is refused rather than guessed.

use std::borrow::Cow;

use http::{HeaderMap, HeaderName};
use percent_encoding::percent_decode;

use super::deny::Deny;

/// Longest secret considered: generated secrets are ~46 bytes; anything much longer is not a
/// key, and hashing megabytes of header on every guess would be a cheap way to burn our CPU.
pub const MAX_SECRET_LEN: usize = 512;

/// Finds the presented secret. `Ok` holds raw bytes (query values percent-decoded).
pub fn extract<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    header: &HeaderName,
    param: &str,
) -> Result<Cow<'a, [u8]>, Deny> {
    let mut values = headers.get_all(header).iter();
    let from_header = match (values.next(), values.next()) {
        (Some(_), Some(_)) => return Err(Deny::KeyInvalid),
        (Some(v), None) if !v.as_bytes().is_empty() => Some(v.as_bytes()),
        _ => None,
    };
    let from_query = query
        .and_then(|q| first_param(q, param))
        .filter(|v| !v.is_empty());
    let secret = match (from_header, from_query) {
        (None, None) => return Err(Deny::KeyMissing),
        (Some(h), None) => Cow::Borrowed(h),
        (None, Some(q)) => q,
        (Some(h), Some(q)) if h == q.as_ref() => Cow::Borrowed(h),
        (Some(_), Some(_)) => return Err(Deny::KeyInvalid),
    };
    if secret.len() > MAX_SECRET_LEN {
        return Err(Deny::KeyInvalid);
    }
    Ok(secret)
}

/// The decoded value of the first `name=value` pair whose decoded name is `name`.
fn first_param<'a>(query: &'a str, name: &str) -> Option<Cow<'a, [u8]>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k).as_ref() == name.as_bytes()).then(|| decode(v))
    })
}

/// application/x-www-form-urlencoded decoding of one name or value: `+` is a space, `%XX` a byte.
/// Borrows when there is nothing to decode, which is the common case.
fn decode(s: &str) -> Cow<'_, [u8]> {
    if !s.contains(['%', '+']) {
        return Cow::Borrowed(s.as_bytes());
    }
    let plus_free: Cow<'_, str> = if s.contains('+') {
        Cow::Owned(s.replace('+', " "))
    } else {
        Cow::Borrowed(s)
    };
    Cow::Owned(percent_decode(plus_free.as_bytes()).collect())
}

/// True when the decoded name of a `name=value` pair is `name`.
fn is_named(pair: &str, name: &str) -> bool {
    decode(pair.split_once('=').map_or(pair, |(k, _)| k)).as_ref() == name.as_bytes()
}

/// The query without any `name` pair, every other byte as the client sent it (order, encoding,
/// empty pairs). `None` when there is no such pair, so the caller keeps the original untouched.
pub fn strip(query: &str, name: &str) -> Option<String> {
    if !query.split('&').any(|p| is_named(p, name)) {
        return None;
    }
    let mut out = String::with_capacity(query.len());
    for (i, pair) in query.split('&').filter(|p| !is_named(p, name)).enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(pair);
    }
    Some(out)
}

/// `path?query` with the value of every `name` pair replaced by `REDACTED`, for logs.
pub fn redact<'a>(path_and_query: &'a str, name: &str) -> Cow<'a, str> {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return Cow::Borrowed(path_and_query);
    };
    if !query.split('&').any(|p| is_named(p, name)) {
        return Cow::Borrowed(path_and_query);
    }
    let mut out = String::with_capacity(path_and_query.len());
    out.push_str(path);
    out.push('?');
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((k, _)) if is_named(pair, name) => {
                out.push_str(k);
                out.push_str("=REDACTED");
            }
            _ => out.push_str(pair),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn hdr() -> HeaderName {
        HeaderName::from_static("x-api-key")
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(hdr(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn header_then_query() {
        let h = headers(&["abc"]);
        assert_eq!(
            extract(&h, None, &hdr(), "api_key").unwrap().as_ref(),
            b"abc"
        );
        let none = headers(&[]);
        let q = Some("x=1&api_key=q%2By+z&api_key=second");
        assert_eq!(
            extract(&none, q, &hdr(), "api_key").unwrap().as_ref(),
            b"q+y z"
        );
        assert_eq!(
            extract(&none, Some("api%5Fkey=k"), &hdr(), "api_key")
                .unwrap()
                .as_ref(),
            b"k"
        );
    }

    #[test]
    fn missing_and_ambiguous() {
        let none = headers(&[]);
        assert_eq!(
            extract(&none, None, &hdr(), "api_key"),
            Err(Deny::KeyMissing)
        );
        assert_eq!(
            extract(&none, Some("api_key="), &hdr(), "api_key"),
            Err(Deny::KeyMissing)
        );
        assert_eq!(
            extract(&none, Some("apikey=1"), &hdr(), "api_key"),
            Err(Deny::KeyMissing)
        );
        let twice = headers(&["a", "a"]);
        assert_eq!(
            extract(&twice, None, &hdr(), "api_key"),
            Err(Deny::KeyInvalid)
        );
        let one = headers(&["a"]);
        assert_eq!(
            extract(&one, Some("api_key=b"), &hdr(), "api_key"),
            Err(Deny::KeyInvalid)
        );
        assert_eq!(
            extract(&one, Some("api_key=a"), &hdr(), "api_key")
                .unwrap()
                .as_ref(),
            b"a"
        );
        let long = headers(&[&"k".repeat(MAX_SECRET_LEN + 1)]);
        assert_eq!(
            extract(&long, None, &hdr(), "api_key"),
            Err(Deny::KeyInvalid)
        );
    }

    #[test]
    fn hostile_encoding_does_not_panic() {
        let none = headers(&[]);
        for q in [
            "api_key=%",
            "api_key=%zz",
            "api_key=%e9%ff",
            "%=%&&==&api_key",
            "api_key=%%%",
        ] {
            let _ = extract(&none, Some(q), &hdr(), "api_key");
            let _ = strip(q, "api_key");
            let _ = redact(q, "api_key");
        }
    }

    #[test]
    fn strip_keeps_every_other_byte() {
        assert_eq!(
            strip("a=1&api_key=s&b=%20x", "api_key").as_deref(),
            Some("a=1&b=%20x")
        );
        assert_eq!(strip("api_key=s", "api_key").as_deref(), Some(""));
        assert_eq!(
            strip("z=9&a=1&&api_key=s&api%5Fkey=t", "api_key").as_deref(),
            Some("z=9&a=1&")
        );
        assert_eq!(strip("&a=1&api_key=s", "api_key").as_deref(), Some("&a=1"));
        assert_eq!(strip("a=1&b=2", "api_key"), None);
        assert_eq!(strip("my_api_key=1", "api_key"), None);
    }

    #[test]
    fn redact_hides_values_only() {
        assert_eq!(
            redact("/p?a=1&api_key=secret", "api_key"),
            "/p?a=1&api_key=REDACTED"
        );
        assert_eq!(redact("/p?a=1", "api_key"), "/p?a=1");
        assert_eq!(redact("/p", "api_key"), "/p");
    }
}
