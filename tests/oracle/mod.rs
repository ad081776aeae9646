//! Oracles for the credential and client-address functions, written from their docs and the
//! form-encoding spec rather than from `credential.rs` / `client_ip.rs`, so that a check
//! compares two implementations instead of one with itself.
//!
//! Shared by `tests/properties.rs` and the fuzz targets in `fuzz/fuzz_targets/` (which include
//! this file by path), so both hold the functions to the same rules.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName};
use keygate::proxy::credential::{self, MAX_SECRET_LEN};
use keygate::proxy::deny::Deny;
use keygate::snapshot::IpList;

/// `+` is a space, `%` and two hex digits a byte, anything else (a lone `%` too) itself.
pub fn form_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    out
}

/// The name part of one `&`-separated pair: everything before the first `=`, or all of it.
pub fn name_of(pair: &str) -> &str {
    pair.split_once('=').map_or(pair, |(k, _)| k)
}

/// True when `pair` is a `name` parameter: its decoded name is exactly `name`.
pub fn named(pair: &str, name: &str) -> bool {
    form_decode(name_of(pair)) == name.as_bytes()
}

/// The decoded value of the first `name` pair (empty for a pair without `=`).
pub fn first_value(query: &str, name: &str) -> Option<Vec<u8>> {
    query
        .split('&')
        .find(|p| named(p, name))
        .map(|p| form_decode(p.split_once('=').map_or("", |(_, v)| v)))
}

/// What `strip` must return: `None` without a `name` pair, else the other pairs, in order,
/// joined by `&`, each exactly as it was.
pub fn expected_strip(query: &str, name: &str) -> Option<String> {
    let pairs: Vec<&str> = query.split('&').collect();
    if !pairs.iter().any(|p| named(p, name)) {
        return None;
    }
    let kept: Vec<&str> = pairs.into_iter().filter(|p| !named(p, name)).collect();
    Some(kept.join("&"))
}

/// What `redact` must return: the input, except that every `name` pair with a value becomes
/// `its-name=REDACTED`.
pub fn expected_redact(path_and_query: &str, name: &str) -> String {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.to_owned();
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((k, _)) if named(p, name) => format!("{k}=REDACTED"),
            _ => p.to_owned(),
        })
        .collect();
    format!("{path}?{}", pairs.join("&"))
}

/// What `extract` must return, from its docs: the key header, else the first key query
/// parameter (decoded); the header twice, or header and query disagreeing, is `KeyInvalid`;
/// an empty value counts as absent; longer than `MAX_SECRET_LEN` is `KeyInvalid`.
pub fn expected_extract(
    header_values: &[Vec<u8>],
    query: Option<&str>,
    name: &str,
) -> Result<Vec<u8>, Deny> {
    if header_values.len() > 1 {
        return Err(Deny::KeyInvalid);
    }
    let header = header_values.first().filter(|v| !v.is_empty());
    let query = query
        .and_then(|q| first_value(q, name))
        .filter(|v| !v.is_empty());
    let secret = match (header, query) {
        (None, None) => return Err(Deny::KeyMissing),
        (Some(h), None) => h.clone(),
        (None, Some(q)) => q,
        (Some(h), Some(q)) if *h == q => q,
        (Some(_), Some(_)) => return Err(Deny::KeyInvalid),
    };
    if secret.len() > MAX_SECRET_LEN {
        return Err(Deny::KeyInvalid);
    }
    Ok(secret)
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// Bytes a correct `redact` can write: the path, the non-credential pairs, the credential
/// pairs' names, and its own `?&=REDACTED`. A needle with a byte outside them cannot be in a
/// correct output, so finding it there means a credential value was left in.
pub fn writable_bytes(path_and_query: &str, name: &str) -> [bool; 256] {
    let mut set = [false; 256];
    let mut add = |s: &str| s.bytes().for_each(|b| set[b as usize] = true);
    add("?&=REDACTED");
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    add(path);
    for p in query.split('&') {
        add(if named(p, name) { name_of(p) } else { p });
    }
    set
}

/// A credential value that `out` (redact's output for `input`) still contains: the secret
/// `extract` finds in the query, or a credential pair's raw value, wherever a correct output
/// could not contain it by coincidence (it has a byte that no correct output can have).
pub fn secret_left_in(input: &str, out: &str, name: &str) -> Option<String> {
    let writable = writable_bytes(input, name);
    let (_, query) = input.split_once('?')?;
    let mut needles: Vec<Vec<u8>> = query
        .split('&')
        .filter(|p| named(p, name))
        .filter_map(|p| p.split_once('=').map(|(_, v)| v.as_bytes().to_vec()))
        .collect();
    let header = HeaderName::from_static("x-api-key");
    let sources = [
        credential::KeySource::Header(header),
        credential::KeySource::Query(name.into()),
    ];
    if let Ok(secret) = credential::extract(&HeaderMap::new(), Some(query), &sources) {
        needles.push(secret.into_owned());
    }
    needles
        .into_iter()
        .filter(|n| n.iter().any(|&b| !writable[b as usize]))
        .find(|n| contains(out.as_bytes(), n))
        .map(|n| String::from_utf8_lossy(&n).into_owned())
}

/// Every address written in a forwarding header value, the way anything reading it could find
/// one: maximal runs of `[0-9A-Fa-f:.]` that parse as an address, alone or before a last
/// `:port`. `resolve` may return only the peer or one of these (canonical).
pub fn addresses_in(value: &[u8]) -> Vec<IpAddr> {
    let mut found = Vec::new();
    for run in value.split(|b| !(b.is_ascii_hexdigit() || *b == b':' || *b == b'.')) {
        let Ok(run) = std::str::from_utf8(run) else {
            continue;
        };
        let host = run.rsplit_once(':').map(|(h, _)| h);
        for candidate in std::iter::once(run).chain(host) {
            if let Ok(ip) = candidate.parse::<IpAddr>() {
                found.push(ip.to_canonical());
            }
        }
    }
    found
}

/// The docs' walk: the peer unless it is a trusted proxy; else, from the right and skipping
/// trusted hops, the first untrusted address; an unreadable hop (`None`) ends the walk at the
/// last address vouched for; at most 32 hops are walked.
pub fn expected_client(peer: IpAddr, hops: &[Option<IpAddr>], trusted: &IpList) -> IpAddr {
    let peer = peer.to_canonical();
    if trusted.is_empty() || !trusted.allows(peer) {
        return peer;
    }
    let mut client = peer;
    for hop in hops.iter().rev().take(32) {
        let Some(ip) = hop else { return client };
        client = ip.to_canonical();
        if !trusted.allows(client) {
            return client;
        }
    }
    client
}
