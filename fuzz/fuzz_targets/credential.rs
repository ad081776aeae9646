//! `credential::extract`, `strip` and `redact` on hostile requests.
//!
//! Input (text, so seeds are readable; see fuzz/README.md):
//!   line 1: `path?query` (UTF-8; no `?` means no query)
//!   line 2: the key query parameter's name; empty (or one `[server] key_query` would refuse)
//!           means the default `api_key`
//!   more lines: headers, `name: value` (value any bytes); a line without `:` is an
//!           `x-api-key` value
//!
//! Asserts, beyond no panic: `extract` gives exactly what its docs say (header before query,
//! the first query pair, ambiguity refused, length capped); `strip` removes exactly the
//! credential pairs and keeps every other byte; after `strip`, no credential is left to
//! extract; `redact` changes only credential values, to `REDACTED`, and its output never
//! contains a credential value (nor the secret extracted from the query).
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use keygate::proxy::credential::{self, MAX_SECRET_LEN};
use keygate::proxy::deny::Deny;
use libfuzzer_sys::fuzz_target;

#[path = "../../tests/oracle/mod.rs"]
#[allow(dead_code)]
mod oracle;
use oracle::*;

const KEY_HEADER: HeaderName = HeaderName::from_static("x-api-key");

/// What `[server] key_query` accepts (src/config/validate.rs).
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .bytes()
            .any(|b| matches!(b, b'&' | b'=' | b'#' | b'%' | b'+') || b <= b' ')
}

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|&b| b == b'\n');
    let Ok(path_and_query) = std::str::from_utf8(lines.next().unwrap_or_default()) else {
        return;
    };
    let name = std::str::from_utf8(lines.next().unwrap_or_default()).unwrap_or("");
    let name = if plain_name(name) { name } else { "api_key" };
    let mut headers = HeaderMap::new();
    for line in lines {
        let (n, v) = match line.iter().position(|&b| b == b':') {
            Some(i) => (&line[..i], line[i + 1..].trim_ascii_start()),
            None => (&b"x-api-key"[..], line),
        };
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n), HeaderValue::from_bytes(v)) {
            headers.append(n, v);
        }
    }
    let query = path_and_query.split_once('?').map(|(_, q)| q);

    // extract: exactly what the docs say.
    let header_values: Vec<Vec<u8>> = headers
        .get_all(KEY_HEADER)
        .iter()
        .map(|v| v.as_bytes().to_vec())
        .collect();
    let sources = [
        credential::KeySource::Header(KEY_HEADER),
        credential::KeySource::Query(name.into()),
    ];
    let got = credential::extract(&headers, query, &sources).map(|s| s.into_owned());
    // And with the bearer and cookie places too (hostile Authorization and Cookie values):
    // never a panic, and stripping them leaves nothing to extract from them.
    let more = credential::KeySources::new(vec![
        credential::KeySource::Bearer,
        credential::KeySource::Cookie("kg_key".into()),
    ]);
    let _ = credential::extract(&headers, query, more.list());
    let mut stripped_headers = headers.clone();
    credential::strip_headers(&mut stripped_headers, &more);
    assert_eq!(
        credential::extract(&stripped_headers, None, more.list()),
        Err(Deny::KeyMissing)
    );
    if let Ok(s) = &got {
        assert!(!s.is_empty() && s.len() <= MAX_SECRET_LEN);
    }
    assert_eq!(got, expected_extract(&header_values, query, name));

    if let Some(q) = query {
        // strip: exactly the credential pairs go, every other byte stays.
        let stripped = credential::strip(q, name);
        assert_eq!(stripped, expected_strip(q, name), "strip({q:?})");
        // What goes upstream holds no credential at all.
        let upstream = stripped.as_deref().unwrap_or(q);
        if stripped.is_some() {
            assert_eq!(
                credential::extract(&HeaderMap::new(), Some(upstream), &sources),
                Err(Deny::KeyMissing),
                "a credential survives strip({q:?}) = {upstream:?}"
            );
        }
    }

    // redact: only credential values change, and none survives.
    let out = credential::redact(path_and_query, name);
    assert_eq!(secret_left_in(path_and_query, &out, name), None, "{out:?}");
    assert_eq!(out, expected_redact(path_and_query, name));
    if let Some((_, q)) = out.split_once('?') {
        match credential::extract(&HeaderMap::new(), Some(q), &sources) {
            Ok(s) => assert_eq!(&*s, b"REDACTED", "{out:?}"),
            Err(e) => assert_eq!(e, Deny::KeyMissing, "{out:?}"),
        }
    }
});
