//! Credential: the key from the places `[server] key_sources` lists (a header, a query
//! parameter, `Authorization: Bearer`, a cookie), tried in order; and, for the upstream and for
//! logs, the request with those places removed or redacted.
//!
//! Everything here takes hostile input: lengths are capped, decoding never panics, and any
//! ambiguity (the key header twice, two places carrying different keys) is refused rather than
//! guessed.
//!
//! [`extract`] reads only headers and a query, never a `Request`: the proxy passes its request's,
//! a forward-auth check the original request's as the calling proxy reports them.

use std::borrow::Cow;

use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderMap, HeaderValue};
use percent_encoding::percent_decode;

use super::deny::Deny;
pub use crate::model::{KeySource, KeySources};

/// Longest secret considered: generated secrets are ~41 bytes; anything much longer is not a
/// key, and hashing megabytes of header on every guess would be a cheap way to burn our CPU.
pub const MAX_SECRET_LEN: usize = 512;

/// Finds the presented secret in `sources`, in order. `Ok` holds raw bytes (query values
/// percent-decoded). Every source is read: two carrying different keys are refused
/// (`key_invalid`), the same key in two places is fine; an empty value is no key.
pub fn extract<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    sources: &[KeySource],
) -> Result<Cow<'a, [u8]>, Deny> {
    let mut found = None;
    for source in sources {
        match source {
            KeySource::Header(name) => {
                let mut values = headers.get_all(name).iter();
                match (values.next(), values.next()) {
                    (Some(_), Some(_)) => return Err(Deny::KeyInvalid),
                    (Some(v), None) => offer(&mut found, Cow::Borrowed(v.as_bytes()))?,
                    _ => {}
                }
            }
            KeySource::Query(name) => {
                if let Some(v) = query.and_then(|q| first_param(q, name)) {
                    offer(&mut found, v)?;
                }
            }
            KeySource::Bearer => {
                let mut tokens = headers
                    .get_all(AUTHORIZATION)
                    .iter()
                    .filter_map(bearer_token);
                match (tokens.next(), tokens.next()) {
                    // Like the key header twice: which one was meant?
                    (Some(_), Some(_)) => return Err(Deny::KeyInvalid),
                    (Some(t), None) => offer(&mut found, Cow::Borrowed(t))?,
                    _ => {}
                }
            }
            KeySource::Cookie(name) => {
                // h2 clients may send each cookie in its own `cookie` header.
                for v in headers.get_all(COOKIE) {
                    for value in cookie_values(v.as_bytes(), name) {
                        offer(&mut found, Cow::Borrowed(value))?;
                    }
                }
            }
        }
    }
    found.ok_or(Deny::KeyMissing)
}

/// Adds one place's value to what was found: the first non-empty one is the key, any later one
/// must be the same bytes.
fn offer<'a>(found: &mut Option<Cow<'a, [u8]>>, value: Cow<'a, [u8]>) -> Result<(), Deny> {
    if value.is_empty() {
        return Ok(());
    }
    if value.len() > MAX_SECRET_LEN {
        return Err(Deny::KeyInvalid);
    }
    match found {
        None => *found = Some(value),
        Some(key) if key.as_ref() == value.as_ref() => {}
        Some(_) => return Err(Deny::KeyInvalid),
    }
    Ok(())
}

/// The token of `Bearer <token>` (RFC 6750 2.1: the scheme is case-insensitive, then one or
/// more spaces). `None` for another scheme (a Basic login for the upstream is not a key) or
/// an empty token.
fn bearer_token(value: &HeaderValue) -> Option<&[u8]> {
    let v = value.as_bytes();
    let (scheme, rest) = v.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// The values of every `name=value` pair of one `Cookie` header (RFC 6265 5.4: pairs separated
/// by `;` and optional white space; a value may be in double quotes). Names are case-sensitive.
fn cookie_values<'v>(header: &'v [u8], name: &str) -> impl Iterator<Item = &'v [u8]> {
    header
        .split(|b| *b == b';')
        .filter_map(move |pair| cookie_value(pair, name))
}

/// The value of one `name=value` cookie pair, if it is named `name`.
fn cookie_value<'v>(pair: &'v [u8], name: &str) -> Option<&'v [u8]> {
    let pair = pair.trim_ascii();
    let at = pair.iter().position(|b| *b == b'=')?;
    if pair[..at].trim_ascii_end() != name.as_bytes() {
        return None;
    }
    let value = pair[at + 1..].trim_ascii_start();
    Some(match value {
        [b'"', inner @ .., b'"'] => inner,
        v => v,
    })
}

/// Takes every configured header, `Authorization` when it is a Bearer token (with `bearer`
/// among the sources) and every key cookie out of `headers`, in place. Another `Authorization`
/// (say a Basic login for the upstream) and every other cookie stay, byte for byte.
/// Allocates only when there is a bearer token or a key cookie to take out.
pub fn strip_headers(headers: &mut HeaderMap, sources: &KeySources) {
    for name in sources.headers() {
        headers.remove(name);
    }
    if sources.bearer()
        && headers
            .get_all(AUTHORIZATION)
            .iter()
            .any(|v| bearer_token(v).is_some())
    {
        let kept: Vec<HeaderValue> = headers
            .get_all(AUTHORIZATION)
            .iter()
            .filter(|v| bearer_token(v).is_none())
            .cloned()
            .collect();
        headers.remove(AUTHORIZATION);
        for v in kept {
            headers.append(AUTHORIZATION, v);
        }
    }
    let cookies = sources.cookies();
    if !cookies.is_empty()
        && headers
            .get_all(COOKIE)
            .iter()
            .any(|v| has_key_cookie(v.as_bytes(), cookies))
    {
        let values: Vec<HeaderValue> = headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| match strip_cookies(v.as_bytes(), cookies) {
                None => Some(v.clone()),
                Some(rest) if rest.is_empty() => None,
                // Made of bytes the header already had: always a valid value.
                Some(rest) => HeaderValue::from_bytes(&rest).ok(),
            })
            .collect();
        headers.remove(COOKIE);
        for v in values {
            headers.append(COOKIE, v);
        }
    }
}

/// One `Cookie` header without its `names` pairs, every other byte as the client sent it (the
/// separator before a removed pair goes with it). `None` when it has none of them.
pub fn strip_cookies(header: &[u8], names: &[Box<str>]) -> Option<Vec<u8>> {
    if !has_key_cookie(header, names) {
        return None;
    }
    let mut out = Vec::with_capacity(header.len());
    let kept = header
        .split(|b| *b == b';')
        .filter(|p| !is_key_cookie(p, names));
    for (i, pair) in kept.enumerate() {
        if i == 0 {
            // The first pair kept may have followed a removed one: no space to start with.
            out.extend_from_slice(pair.trim_ascii_start());
        } else {
            out.push(b';');
            out.extend_from_slice(pair);
        }
    }
    Some(out)
}

fn has_key_cookie(header: &[u8], names: &[Box<str>]) -> bool {
    header
        .split(|b| *b == b';')
        .any(|p| is_key_cookie(p, names))
}

fn is_key_cookie(pair: &[u8], names: &[Box<str>]) -> bool {
    names.iter().any(|n| cookie_value(pair, n).is_some())
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

/// True when the decoded name of a `name=value` pair is one of `names`.
fn is_named<N: AsRef<str>>(pair: &str, names: &[N]) -> bool {
    let name = decode(pair.split_once('=').map_or(pair, |(k, _)| k));
    names.iter().any(|n| name.as_ref() == n.as_ref().as_bytes())
}

/// The query without any `name` pair, every other byte as the client sent it (order, encoding,
/// empty pairs). `None` when there is no such pair, so the caller keeps the original untouched.
pub fn strip(query: &str, name: &str) -> Option<String> {
    strip_all(query, &[name])
}

/// [`strip`] for every name of `names` (the query sources).
pub fn strip_all<N: AsRef<str>>(query: &str, names: &[N]) -> Option<String> {
    if names.is_empty() || !query.split('&').any(|p| is_named(p, names)) {
        return None;
    }
    let mut out = String::with_capacity(query.len());
    for (i, pair) in query.split('&').filter(|p| !is_named(p, names)).enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(pair);
    }
    Some(out)
}

/// `path?query` with the value of every `name` pair replaced by `REDACTED`, for logs.
pub fn redact<'a>(path_and_query: &'a str, name: &str) -> Cow<'a, str> {
    redact_all(path_and_query, &[name])
}

/// [`redact`] for every name of `names` (the query sources).
pub fn redact_all<'a, N: AsRef<str>>(path_and_query: &'a str, names: &[N]) -> Cow<'a, str> {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return Cow::Borrowed(path_and_query);
    };
    if names.is_empty() || !query.split('&').any(|p| is_named(p, names)) {
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
            Some((k, _)) if is_named(pair, names) => {
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
    use http::{HeaderName, HeaderValue};

    fn hdr() -> HeaderName {
        HeaderName::from_static("x-api-key")
    }

    /// Today's default: `header:X-API-Key`, then `query:api_key`.
    fn sources() -> Vec<KeySource> {
        vec![KeySource::Header(hdr()), KeySource::Query("api_key".into())]
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
        assert_eq!(extract(&h, None, &sources()).unwrap().as_ref(), b"abc");
        let none = headers(&[]);
        let q = Some("x=1&api_key=q%2By+z&api_key=second");
        assert_eq!(extract(&none, q, &sources()).unwrap().as_ref(), b"q+y z");
        assert_eq!(
            extract(&none, Some("api%5Fkey=k"), &sources())
                .unwrap()
                .as_ref(),
            b"k"
        );
    }

    #[test]
    fn missing_and_ambiguous() {
        let none = headers(&[]);
        assert_eq!(extract(&none, None, &sources()), Err(Deny::KeyMissing));
        assert_eq!(
            extract(&none, Some("api_key="), &sources()),
            Err(Deny::KeyMissing)
        );
        assert_eq!(
            extract(&none, Some("apikey=1"), &sources()),
            Err(Deny::KeyMissing)
        );
        let twice = headers(&["a", "a"]);
        assert_eq!(extract(&twice, None, &sources()), Err(Deny::KeyInvalid));
        let one = headers(&["a"]);
        assert_eq!(
            extract(&one, Some("api_key=b"), &sources()),
            Err(Deny::KeyInvalid)
        );
        assert_eq!(
            extract(&one, Some("api_key=a"), &sources())
                .unwrap()
                .as_ref(),
            b"a"
        );
        let long = headers(&[&"k".repeat(MAX_SECRET_LEN + 1)]);
        assert_eq!(extract(&long, None, &sources()), Err(Deny::KeyInvalid));
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
            let _ = extract(&none, Some(q), &sources());
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

    fn src(list: &[&str]) -> KeySources {
        KeySources::new(
            list.iter()
                .map(|s| match s.split_once(':') {
                    None => KeySource::Bearer,
                    Some(("header", n)) => {
                        KeySource::Header(HeaderName::from_bytes(n.as_bytes()).unwrap())
                    }
                    Some(("query", n)) => KeySource::Query((*n).into()),
                    Some(("cookie", n)) => KeySource::Cookie((*n).into()),
                    _ => unreachable!(),
                })
                .collect(),
        )
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn got(h: &HeaderMap, q: Option<&str>, s: &KeySources) -> Result<Vec<u8>, Deny> {
        extract(h, q, s.list()).map(Cow::into_owned)
    }

    const ALL: [&str; 4] = [
        "header:X-API-Key",
        "query:api_key",
        "bearer",
        "cookie:kg_key",
    ];

    #[test]
    fn each_source_alone() {
        let s = src(&ALL);
        assert_eq!(got(&map(&[("x-api-key", "k1")]), None, &s).unwrap(), b"k1");
        assert_eq!(got(&map(&[]), Some("api_key=k2"), &s).unwrap(), b"k2");
        assert_eq!(
            got(&map(&[("authorization", "Bearer k3")]), None, &s).unwrap(),
            b"k3"
        );
        assert_eq!(
            got(&map(&[("cookie", "a=1; kg_key=k4; b=2")]), None, &s).unwrap(),
            b"k4"
        );
        assert_eq!(got(&map(&[]), None, &s), Err(Deny::KeyMissing));
    }

    #[test]
    fn only_the_listed_sources_are_read() {
        let header_only = src(&["header:X-Token"]);
        for h in [
            map(&[("x-api-key", "k")]),
            map(&[("authorization", "Bearer k")]),
            map(&[("cookie", "kg_key=k")]),
        ] {
            assert_eq!(
                got(&h, Some("api_key=k"), &header_only),
                Err(Deny::KeyMissing)
            );
        }
        assert_eq!(
            got(&map(&[("x-token", "k")]), None, &header_only).unwrap(),
            b"k"
        );
        // The order given is the order read; every listed place is still compared.
        let reversed = src(&[
            "cookie:kg_key",
            "bearer",
            "query:api_key",
            "header:X-API-Key",
        ]);
        let all = map(&[
            ("x-api-key", "k"),
            ("authorization", "bearer k"),
            ("cookie", "kg_key=k"),
        ]);
        assert_eq!(got(&all, Some("api_key=k"), &reversed).unwrap(), b"k");
        let last_differs = map(&[("x-api-key", "other"), ("cookie", "kg_key=k")]);
        assert_eq!(got(&last_differs, None, &reversed), Err(Deny::KeyInvalid));
    }

    #[test]
    fn two_places_two_keys_is_key_invalid_the_same_key_is_fine() {
        let s = src(&ALL);
        type Case<'c> = (&'c [(&'c str, &'c str)], Option<&'c str>);
        let cases: [Case<'_>; 4] = [
            (&[("x-api-key", "a"), ("authorization", "Bearer b")], None),
            (&[("cookie", "kg_key=b")], Some("api_key=a")),
            (
                &[("authorization", "Bearer a"), ("cookie", "kg_key=b")],
                None,
            ),
            (&[("cookie", "kg_key=a"), ("cookie", "kg_key=b")], None),
        ];
        for (h, q) in cases {
            assert_eq!(got(&map(h), q, &s), Err(Deny::KeyInvalid), "{h:?} {q:?}");
        }
        let same = map(&[
            ("x-api-key", "a"),
            ("authorization", "Bearer a"),
            ("cookie", "kg_key=a"),
            ("cookie", "x=1; kg_key=\"a\""),
        ]);
        assert_eq!(got(&same, Some("api_key=a"), &s).unwrap(), b"a");
        // Two bearer tokens are as ambiguous as the key header twice.
        let twice = map(&[("authorization", "Bearer a"), ("authorization", "Bearer a")]);
        assert_eq!(got(&twice, None, &s), Err(Deny::KeyInvalid));
    }

    #[test]
    fn bearer_is_case_insensitive_and_other_schemes_are_not_keys() {
        let s = src(&["bearer"]);
        for v in ["Bearer k", "bearer k", "BEARER k", "BeArEr   k"] {
            assert_eq!(
                got(&map(&[("authorization", v)]), None, &s).unwrap(),
                b"k",
                "{v}"
            );
        }
        for v in [
            "Basic dXNlcjpwYXNz",
            "Bearer",
            "Bearer ",
            "Bearerk",
            "Token k",
            "Bear k",
            "k",
        ] {
            assert_eq!(
                got(&map(&[("authorization", v)]), None, &s),
                Err(Deny::KeyMissing),
                "{v}"
            );
        }
        // A Basic login beside the bearer token: the token is the key.
        let both = map(&[
            ("authorization", "Basic dXNlcjpwYXNz"),
            ("authorization", "Bearer k"),
        ]);
        assert_eq!(got(&both, None, &s).unwrap(), b"k");
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let s = src(&["cookie:kg_key"]);
        for (v, want) in [
            ("kg_key=k", Some(&b"k"[..])),
            ("a=1;kg_key=k", Some(b"k")),
            ("a=1;  kg_key = k ;b=2", Some(b"k")),
            ("kg_key=\"k\"", Some(b"k")),
            ("KG_KEY=k", None),
            ("my_kg_key=k", None),
            ("kg_key", None),
            ("kg_key=", None),
            ("", None),
            (";;;", None),
        ] {
            let h = map(&[("cookie", v)]);
            let r = got(&h, None, &s);
            match want {
                Some(w) => assert_eq!(r.unwrap(), w, "{v}"),
                None => assert_eq!(r, Err(Deny::KeyMissing), "{v}"),
            }
        }
        // h2 sends each cookie in its own header.
        let split = map(&[("cookie", "a=1"), ("cookie", "kg_key=k"), ("cookie", "b=2")]);
        assert_eq!(got(&split, None, &s).unwrap(), b"k");
    }

    #[test]
    fn every_source_is_capped() {
        let s = src(&ALL);
        let long = "k".repeat(MAX_SECRET_LEN + 1);
        let bearer = format!("Bearer {long}");
        let cookie = format!("kg_key={long}");
        for h in [
            map(&[("authorization", &bearer)]),
            map(&[("cookie", &cookie)]),
        ] {
            assert_eq!(got(&h, None, &s), Err(Deny::KeyInvalid));
        }
        let ok = "k".repeat(MAX_SECRET_LEN);
        assert_eq!(
            got(&map(&[("cookie", &format!("kg_key={ok}"))]), None, &s)
                .unwrap()
                .len(),
            MAX_SECRET_LEN
        );
    }

    #[test]
    fn hostile_headers_do_not_panic() {
        let s = src(&ALL);
        let mut h = HeaderMap::new();
        for v in [
            &b"\xff\xfe"[..],
            b"Bearer \xff",
            b"bearer",
            b"kg_key=\xff; =; ;=;\"",
            b"\"",
            b"kg_key=\"",
            b"=kg_key",
        ] {
            h.append(AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
            h.append(COOKIE, HeaderValue::from_bytes(v).unwrap());
        }
        let _ = extract(&h, Some("%ff=&api_key=%"), s.list());
        strip_headers(&mut h, &s);
    }

    /// The headers left, by name (the map's order across names means nothing), each name's
    /// values in order.
    fn stripped(pairs: &[(&str, &str)], s: &KeySources) -> Vec<(String, String)> {
        let mut h = map(pairs);
        strip_headers(&mut h, s);
        let mut out: Vec<(String, String)> = h
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn strip_takes_only_the_key() {
        let s = src(&ALL);
        assert_eq!(
            stripped(
                &[
                    ("x-api-key", "k"),
                    ("authorization", "Bearer k"),
                    ("cookie", "a=1; kg_key=k; b=\"2\""),
                    ("x-other", "1")
                ],
                &s
            ),
            pairs(&[("cookie", "a=1; b=\"2\""), ("x-other", "1")])
        );
        // Basic stays; another scheme is not the key.
        assert_eq!(
            stripped(&[("authorization", "Basic dXNlcjpwYXNz")], &s),
            pairs(&[("authorization", "Basic dXNlcjpwYXNz")])
        );
        assert_eq!(
            stripped(
                &[
                    ("authorization", "Basic dXNlcjpwYXNz"),
                    ("authorization", "bearer k")
                ],
                &s
            ),
            pairs(&[("authorization", "Basic dXNlcjpwYXNz")])
        );
        // Without `bearer` among the sources, Authorization is the upstream's.
        let no_bearer = src(&["header:X-API-Key"]);
        assert_eq!(
            stripped(
                &[("authorization", "Bearer k"), ("cookie", "kg_key=k")],
                &no_bearer
            ),
            pairs(&[("authorization", "Bearer k"), ("cookie", "kg_key=k")])
        );
        // A cookie header that held only the key goes; the others stay, in order.
        assert_eq!(
            stripped(
                &[
                    ("cookie", "a=1"),
                    ("cookie", "kg_key=k"),
                    ("cookie", "kg_key=k;b=2")
                ],
                &s
            ),
            pairs(&[("cookie", "a=1"), ("cookie", "b=2")])
        );
    }

    #[test]
    fn strip_cookies_keeps_every_other_byte() {
        let names: &[Box<str>] = &["kg_key".into(), "k2".into()];
        for (v, want) in [
            ("a=1; kg_key=s; b=2", Some("a=1; b=2")),
            ("kg_key=s; a=1", Some("a=1")),
            ("a=1;kg_key=s", Some("a=1")),
            ("a=1;  kg_key=s;b=%20x;; c", Some("a=1;b=%20x;; c")),
            ("kg_key=s; k2=t", Some("")),
            ("kg_key=s; a=1; kg_key=s", Some("a=1")),
            ("a=1; b=2", None),
            ("my_kg_key=s", None),
            ("kg_key", None),
        ] {
            let got = strip_cookies(v.as_bytes(), names);
            assert_eq!(got.as_deref(), want.map(str::as_bytes), "{v}");
        }
    }

    #[test]
    fn every_query_source_is_stripped_and_redacted() {
        let names = ["api_key", "token"];
        assert_eq!(
            strip_all("a=1&token=t&api_key=k&b=2", &names).as_deref(),
            Some("a=1&b=2")
        );
        assert_eq!(strip_all("a=1", &names), None);
        assert_eq!(
            redact_all("/p?token=t&a=1&api_key=k", &names),
            "/p?token=REDACTED&a=1&api_key=REDACTED"
        );
        let none: [&str; 0] = [];
        assert_eq!(strip_all("api_key=k", &none), None);
        assert_eq!(redact_all("/p?api_key=k", &none), "/p?api_key=k");
    }
}
