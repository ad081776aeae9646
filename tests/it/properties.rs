//! Property tests (proptest) for the functions that read hostile input before anything else:
//! the credential (`extract`, `strip`, `redact`), the client address (`client_ip::resolve`) and
//! config parsing. The same functions have cargo-fuzz targets in `fuzz/` (see fuzz/README.md);
//! these run in the normal test suite with small case counts (the whole file takes a few
//! seconds in a debug build).
//!
//! The oracles (`tests/oracle/mod.rs`, shared with the fuzz targets) are written from the docs
//! and the form-encoding spec, not from `credential.rs`, so that a property compares two
//! implementations rather than one with itself.

use std::net::IpAddr;
use std::path::Path;

use http::{HeaderMap, HeaderName, HeaderValue};
use keygate::config::{self, LoadError};
use keygate::proxy::client_ip;
use keygate::proxy::credential::{self, MAX_SECRET_LEN};
use keygate::snapshot::IpList;
use proptest::prelude::*;
use proptest::sample::select;

use crate::oracle::*;

const PARAM: &str = "api_key";

fn key_header() -> HeaderName {
    HeaderName::from_static("x-api-key")
}

/// The default sources with the query parameter `name`: the key header, then `name`.
fn sources(name: &str) -> [credential::KeySource; 2] {
    [
        credential::KeySource::Header(key_header()),
        credential::KeySource::Query(name.into()),
    ]
}

fn cases(n: u32) -> ProptestConfig {
    ProptestConfig {
        cases: n,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Generators for queries.

/// Spellings that decode to `api_key`: each is the credential. `api%5Fkey` looks like a near
/// miss but is not one: `extract` decodes names and accepts it, so `strip` must remove it too
/// (else that secret would go upstream) and `redact` must hide its value.
const CREDENTIAL_SPELLINGS: &[&str] = &[
    // Twice: the spelling clients use, drawn more often.
    "api_key",
    "api_key",
    "api%5Fkey",
    "api%5fkey",
    "%61pi_key",
    "api_k%65y",
    "%61%70%69%5F%6B%65%79",
];

/// Names that look like `api_key` but do not decode to it: never the credential.
const NEAR_MISSES: &[&str] = &[
    "API_KEY",
    "Api_Key",
    "api_key[]",
    "api_key%5B%5D",
    "xapi_key",
    "api_keyx",
    "my_api_key",
    "api-key",
    "apikey",
    "api+key",
    "api%20key",
    "api_key+",
    "api_key%20",
    " api_key",
    "api%5Key",
    "api%5",
    "api_key%",
    "api%255Fkey",
    "api_ke",
    "pi_key",
    "%00api_key",
    "api_key%00",
    "api_k%C3%A9y",
    "",
];

/// One `&`-separated piece of a generated query, and whether it is a credential pair.
#[derive(Debug, Clone)]
struct Pair {
    text: String,
    credential: bool,
}

/// A value: anything but `&`, often with `=`, `%`, `+`, escapes, non-ASCII.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9._~=-]{0,6}",
        "[a-z0-9%+=]{0,8}",
        select(vec![
            "",
            "=",
            "==",
            "%",
            "%zz",
            "%e9%ff",
            "%2B",
            "+",
            "a+b",
            "%26",
            "%3D",
            "api_key",
            "api_key=x",
            "é",
            "✓x",
            "%F0%9F",
        ])
        .prop_map(str::to_owned),
    ]
}

/// `name` or `name=value` (`value` may be empty).
fn with_value(name: String, value: Option<String>) -> String {
    match value {
        Some(v) => format!("{name}={v}"),
        None => name,
    }
}

fn credential_pair(value: BoxedStrategy<Option<String>>) -> impl Strategy<Value = Pair> {
    (select(CREDENTIAL_SPELLINGS), value).prop_map(|(name, v)| Pair {
        text: with_value(name.to_owned(), v),
        credential: true,
    })
}

/// A non-credential pair: a near miss, a random name without `_` or `%` (so it cannot decode
/// to `api_key`), or an empty piece (which makes `&&` runs and leading/trailing `&`).
fn other_pair() -> impl Strategy<Value = Pair> {
    let name = prop_oneof![
        select(NEAR_MISSES).prop_map(str::to_owned),
        "[a-zA-Z0-9.~+\\[\\]-]{0,6}",
    ];
    prop_oneof![
        3 => (name, proptest::option::of(value())).prop_map(|(n, v)| with_value(n, v)),
        1 => Just(String::new()),
    ]
    .prop_map(|text| Pair {
        text,
        credential: false,
    })
}

fn pairs(credential_value: BoxedStrategy<Option<String>>) -> impl Strategy<Value = Vec<Pair>> {
    proptest::collection::vec(
        prop_oneof![
            2 => credential_pair(credential_value),
            5 => other_pair(),
        ],
        0..8,
    )
}

fn join(pairs: &[Pair]) -> String {
    pairs
        .iter()
        .map(|p| p.text.as_str())
        .collect::<Vec<_>>()
        .join("&")
}

/// Credential values, from a small pool so that header and query agree now and then.
fn pooled_secret() -> BoxedStrategy<Option<String>> {
    proptest::option::of(prop_oneof![
        select(vec![
            "k1", "k+2", "k%202", "", "K1", "%6B1", "%ZZ", "%", "a=b"
        ])
        .prop_map(str::to_owned),
        Just("x".repeat(MAX_SECRET_LEN)),
        Just("x".repeat(MAX_SECRET_LEN + 1)),
        Just("%78".repeat(MAX_SECRET_LEN + 1)),
        value(),
    ])
    .boxed()
}

/// Header values, from a pool that overlaps the decoded query pool.
fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        select(vec!["k1", "k 2", "", "K1", "%ZZ", "%", "a=b"]).prop_map(|s| s.as_bytes().to_vec()),
        Just(vec![b'x'; MAX_SECRET_LEN]),
        Just(vec![b'x'; MAX_SECRET_LEN + 1]),
        proptest::collection::vec(any::<u8>(), 0..12),
    ]
    .prop_filter("a valid header value", |v| {
        HeaderValue::from_bytes(v).is_ok()
    })
}

/// Secrets that nothing else in a generated query or path contains: `SECRET` then lowercase,
/// sometimes with bytes percent-encoded.
fn marked_secret() -> BoxedStrategy<Option<String>> {
    prop_oneof![
        1 => Just(None),
        6 => ("[a-z0-9]{0,5}", any::<bool>()).prop_map(|(tail, encode)| {
            let s = format!("SECRET{tail}");
            Some(if encode {
                s.bytes().map(|b| format!("%{b:02X}")).collect()
            } else {
                s
            })
        }),
    ]
    .boxed()
}

// ---------------------------------------------------------------------------------------------
// strip

proptest! {
    #![proptest_config(cases(2048))]

    /// Stripping `api_key` removes exactly the pairs that decode to `api_key` and never
    /// changes any other byte: the output is the other pairs, in order, byte for byte.
    #[test]
    fn strip_removes_exactly_the_credential(pairs in pairs(proptest::option::of(value()).boxed())) {
        let query = join(&pairs);
        // The generator's labels agree with the spec's decoding (else the test is wrong).
        for p in &pairs {
            prop_assert_eq!(named(&p.text, PARAM), p.credential, "{:?}", p);
        }
        let expected = pairs.iter().any(|p| p.credential).then(|| {
            pairs
                .iter()
                .filter(|p| !p.credential)
                .map(|p| p.text.as_str())
                .collect::<Vec<_>>()
                .join("&")
        });
        prop_assert_eq!(credential::strip(&query, PARAM), expected, "query {:?}", query);
    }

    /// The same on arbitrary text, against the oracle, for a few parameter names.
    #[test]
    fn strip_arbitrary_text(
        (query, name) in prop_oneof![
            (prop_oneof![any::<String>(), "[a-z_%5Ff&=+]{0,24}"], select(vec![PARAM, "key", "_"])),
            ("(k=|k|&|=|%|\\+|%6B|x){0,8}", Just("k")),
        ],
    ) {
        prop_assert_eq!(credential::strip(&query, name), expected_strip(&query, name));
    }
}

// ---------------------------------------------------------------------------------------------
// extract

proptest! {
    #![proptest_config(cases(2048))]

    /// Header before query; the first query pair only; ambiguity refused; empty is absent;
    /// length capped. Other headers change nothing.
    #[test]
    fn extract_follows_its_docs(
        header_values in proptest::collection::vec(header_value(), 0..3),
        noise in proptest::collection::vec(header_value(), 0..2),
        pairs in pairs(pooled_secret()),
        has_query in any::<bool>(),
    ) {
        let mut headers = HeaderMap::new();
        for v in &noise {
            headers.append("x-api-key2", HeaderValue::from_bytes(v).unwrap());
            headers.append("authorization", HeaderValue::from_bytes(v).unwrap());
        }
        for v in &header_values {
            headers.append(key_header(), HeaderValue::from_bytes(v).unwrap());
        }
        let query = has_query.then(|| join(&pairs));
        let got = credential::extract(&headers, query.as_deref(), &sources(PARAM))
            .map(|s| s.into_owned());
        let want = expected_extract(&header_values, query.as_deref(), PARAM);
        prop_assert_eq!(got, want, "headers {:?} query {:?}", header_values, query);
    }

    /// No panic on arbitrary header bytes and query text.
    #[test]
    fn extract_never_panics(
        header_values in prop_oneof![
            Just(vec![]),
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..16), 1..3),
        ],
        (query, name) in prop_oneof![
            (proptest::option::of(any::<String>()), select(vec![PARAM, "key"])),
            (proptest::option::of("(k=|k|&|=|%|\\+|%6B|x){0,8}"), Just("k")),
        ],
    ) {
        let mut headers = HeaderMap::new();
        let mut kept = Vec::new();
        for v in header_values {
            if let Ok(hv) = HeaderValue::from_bytes(&v) {
                headers.append(key_header(), hv);
                kept.push(v);
            }
        }
        let got = credential::extract(&headers, query.as_deref(), &sources(name))
            .map(|s| s.into_owned());
        prop_assert_eq!(got, expected_extract(&kept, query.as_deref(), name));
    }
}

// ---------------------------------------------------------------------------------------------
// redact

proptest! {
    #![proptest_config(cases(2048))]

    /// With secrets nothing else contains: the output never contains the extracted secret, raw
    /// or decoded, and is exactly the input with each credential value replaced by REDACTED.
    #[test]
    fn redact_never_leaves_the_secret(
        path in "/[a-z0-9/._-]{0,8}",
        pairs in pairs(marked_secret()),
    ) {
        let input = format!("{path}?{}", join(&pairs));
        let out = credential::redact(&input, PARAM);
        if let Ok(secret) = credential::extract(&HeaderMap::new(), Some(&input[path.len() + 1..]), &sources(PARAM)) {
            prop_assert!(!contains(out.as_bytes(), &secret), "{:?}", out);
        }
        for p in pairs.iter().filter(|p| p.credential) {
            if let Some((_, v)) = p.text.split_once('=') {
                prop_assert!(v.is_empty() || !out.contains(v), "{:?} in {:?}", v, out);
            }
        }
        let want = expected_redact(&input, PARAM);
        prop_assert_eq!(out.as_ref(), want.as_str());
        prop_assert_eq!(secret_left_in(&input, &out, PARAM), None);
    }

    /// On arbitrary text: exactly the oracle's output, and no credential value survives.
    #[test]
    fn redact_arbitrary_text(
        (input, name) in prop_oneof![
            (prop_oneof![any::<String>(), "[a-z/?_%5Ff&=+S]{0,24}"], select(vec![PARAM, "key"])),
            ("/\\?(k=|k|&|=|%|\\+|%6B|S|x){0,8}", Just("k")),
        ],
    ) {
        let out = credential::redact(&input, name);
        let want = expected_redact(&input, name);
        prop_assert_eq!(out.as_ref(), want.as_str());
        prop_assert_eq!(secret_left_in(&input, &out, name), None);
    }
}

// ---------------------------------------------------------------------------------------------
// client_ip

const PEERS: &[&str] = &[
    "10.0.0.1",
    "10.9.9.9",
    "127.0.0.1",
    "203.0.113.9",
    "::1",
    "::ffff:10.0.0.1",
    "::ffff:203.0.113.9",
    "2001:db8::5",
    "192.0.2.1",
];

const TRUSTED: &[&str] = &[
    "10.0.0.0/8",
    "127.0.0.1",
    "::1",
    "2001:db8::/32",
    "0.0.0.0/0",
    "::/0",
    "::ffff:10.0.0.0/104",
    "192.0.2.0/24",
    "198.51.100.1",
];

const HOP_IPS: &[&str] = &[
    "10.0.0.7",
    "10.1.2.3",
    "198.51.100.1",
    "203.0.113.5",
    "127.0.0.1",
    "192.0.2.60",
    "2001:db8::1",
    "2001:db8:cafe::17",
    "fe80::1",
    "::ffff:10.0.0.9",
    "::ffff:198.51.100.2",
];

/// Hop texts that are no address.
const GARBAGE: &[&str] = &[
    "unknown",
    "_hidden",
    "",
    "nonsense",
    "[::1",
    "300.1.2.3",
    "1.2.3",
    "10.0.0.1:99999",
    "::ffff:zz",
];

/// One hop: an address (in one of the spellings proxies use) or garbage.
#[derive(Debug, Clone)]
struct Hop {
    text: String,
    ip: Option<IpAddr>,
}

fn hop() -> impl Strategy<Value = Hop> {
    let spelled = (select(HOP_IPS), 0..4u8, 1..65535u16).prop_map(|(s, style, port)| {
        let ip: IpAddr = s.parse().unwrap();
        let text = match (ip, style) {
            (_, 0) => s.to_owned(),
            (IpAddr::V4(_), _) => format!("{s}:{port}"),
            (IpAddr::V6(_), 1) => format!("[{s}]"),
            (IpAddr::V6(_), _) => format!("[{s}]:{port}"),
        };
        Hop { text, ip: Some(ip) }
    });
    prop_oneof![
        4 => spelled,
        1 => select(GARBAGE).prop_map(|g| Hop { text: g.to_owned(), ip: None }),
    ]
}

/// One header line: hops, or an unreadable (non-ASCII) value that stops the walk.
#[derive(Debug, Clone)]
enum Line {
    Hops(Vec<Hop>),
    Unreadable,
}

fn lines() -> impl Strategy<Value = Vec<Line>> {
    proptest::collection::vec(
        prop_oneof![
            6 => proptest::collection::vec(hop(), 0..5).prop_map(Line::Hops),
            1 => Just(Line::Unreadable),
        ],
        0..3,
    )
}

fn xff_value(hops: &[Hop], sep: &str) -> String {
    hops.iter()
        .map(|h| h.text.as_str())
        .collect::<Vec<_>>()
        .join(sep)
}

/// A `Forwarded` element for a hop; `by=` only (no `for=`) reads as no address.
fn forwarded_value(hops: &[Hop], style: u8) -> (String, Vec<Option<IpAddr>>) {
    let mut parsed = Vec::new();
    let elements: Vec<String> = hops
        .iter()
        .enumerate()
        .map(|(i, h)| match (style as usize + i) % 4 {
            0 => {
                parsed.push(h.ip);
                format!("for={};proto=http", h.text)
            }
            1 => {
                parsed.push(h.ip);
                format!("proto=https; For=\"{}\"", h.text)
            }
            2 => {
                parsed.push(h.ip);
                format!("for=\"{}\";by=10.0.0.1", h.text)
            }
            _ => {
                parsed.push(None);
                format!("by={};proto=http", h.text)
            }
        })
        .collect();
    (elements.join(", "), parsed)
}

const UNREADABLE: &[u8] = b"\xff10.0.0.7";

fn ip_list(nets: &[&str]) -> IpList {
    IpList::new(
        nets.iter()
            .map(|n| config::validate::parse_net(n).unwrap())
            .collect(),
    )
}

proptest! {
    #![proptest_config(cases(2048))]

    /// `resolve` returns the peer or an address from the headers; with no trusted proxies, or
    /// an untrusted peer, the peer; and otherwise what the right-to-left walk gives
    /// (X-Forwarded-For, else Forwarded).
    #[test]
    fn client_ip_is_the_peer_or_from_the_headers(
        peer in select(PEERS),
        trusted in proptest::collection::vec(select(TRUSTED), 0..4),
        xff in lines(),
        fwd in lines(),
        comma_only in any::<bool>(),
        style in 0..4u8,
    ) {
        let peer: IpAddr = peer.parse().unwrap();
        let trusted = ip_list(&trusted);
        let mut headers = HeaderMap::new();
        let mut appeared = vec![];
        let mut xff_hops = vec![];
        for line in &xff {
            match line {
                Line::Hops(hops) => {
                    let v = xff_value(hops, if comma_only { "," } else { ", " });
                    headers.append("x-forwarded-for", HeaderValue::from_str(&v).unwrap());
                    // An empty value is one empty (unreadable) hop.
                    if hops.is_empty() {
                        xff_hops.push(None);
                    }
                    xff_hops.extend(hops.iter().map(|h| h.ip));
                    appeared.extend(hops.iter().filter_map(|h| h.ip));
                }
                Line::Unreadable => {
                    headers.append("x-forwarded-for", HeaderValue::from_bytes(UNREADABLE).unwrap());
                    xff_hops.push(None);
                }
            }
        }
        let mut fwd_hops = vec![];
        for line in &fwd {
            match line {
                Line::Hops(hops) => {
                    let (v, parsed) = forwarded_value(hops, style);
                    headers.append("forwarded", HeaderValue::from_str(&v).unwrap());
                    // An empty value is one element with no `for=`.
                    fwd_hops.extend(if hops.is_empty() { vec![None] } else { parsed });
                    appeared.extend(hops.iter().filter_map(|h| h.ip));
                }
                Line::Unreadable => {
                    headers.append("forwarded", HeaderValue::from_bytes(UNREADABLE).unwrap());
                    fwd_hops.push(None);
                }
            }
        }
        let got = client_ip::resolve(peer, &headers, &trusted);
        let canonical_peer = peer.to_canonical();
        prop_assert!(
            got == canonical_peer || appeared.iter().any(|a| a.to_canonical() == got),
            "{} is neither the peer nor in {:?}", got, headers
        );
        if trusted.is_empty() || !trusted.allows(canonical_peer) {
            prop_assert_eq!(got, canonical_peer);
        }
        let hops = if xff.is_empty() { &fwd_hops } else { &xff_hops };
        prop_assert_eq!(got, expected_client(peer, hops, &trusted), "{:?}", headers);
    }

    /// Arbitrary header bytes: no panic; the peer or an address written in the headers; the
    /// peer whenever nobody is trusted.
    #[test]
    fn client_ip_never_panics(
        peer in select(PEERS),
        trusted in proptest::collection::vec(select(TRUSTED), 0..3),
        values in proptest::collection::vec((any::<bool>(), prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..40),
            "[0-9a-f.:, ;=\"\\[\\]forFOR]{0,40}".prop_map(String::into_bytes),
            (proptest::collection::vec(hop(), 0..4), 0..4u8, any::<bool>()).prop_map(|(hops, style, fwd)| {
                if fwd { forwarded_value(&hops, style).0 } else { xff_value(&hops, ",") }.into_bytes()
            }),
        ]), 0..4),
    ) {
        let peer: IpAddr = peer.parse().unwrap();
        let mut headers = HeaderMap::new();
        let mut appeared = vec![];
        for (xff, v) in values {
            if let Ok(hv) = HeaderValue::from_bytes(&v) {
                headers.append(if xff { "x-forwarded-for" } else { "forwarded" }, hv);
                appeared.extend(addresses_in(&v));
            }
        }
        let trusted = ip_list(&trusted);
        let got = client_ip::resolve(peer, &headers, &trusted);
        prop_assert!(got == peer.to_canonical() || appeared.contains(&got), "{} from {:?}", got, headers);
        if trusted.is_empty() {
            prop_assert_eq!(got, peer.to_canonical());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// config

const EXAMPLE: &str = include_str!("../../config/keygate.toml");

/// A config path in a directory that does not exist, so that the example's relative
/// `keys_file` is an empty store rather than whatever lies next to the test.
const CONFIG_PATH: &str = "/nonexistent-keygate-properties/keygate.toml";

/// Parses and checks that every error names a file and a position, in the main file unless
/// the text names a keys file.
fn parse_checked(text: &str) -> Result<(), TestCaseError> {
    let path = Path::new(CONFIG_PATH);
    let result = config::parse(text, path);
    let problems = match &result {
        Ok(loaded) => loaded.warnings.clone(),
        Err(LoadError::Invalid(problems)) => {
            let shown = result.as_ref().unwrap_err().to_string();
            prop_assert!(
                shown.starts_with(CONFIG_PATH) || text.contains("keys_file"),
                "{}",
                shown
            );
            problems.clone()
        }
        Err(e @ (LoadError::Io { file, .. } | LoadError::NotUtf8 { file })) => {
            prop_assert!(e.to_string().starts_with(&file.display().to_string()));
            prop_assert!(text.contains("keys_file"), "{}", e);
            vec![]
        }
    };
    for p in problems {
        let shown = p.to_string();
        prop_assert!(
            shown.starts_with(&format!("{}:{}:{}: ", p.file.display(), p.line, p.column)),
            "{}",
            shown
        );
        prop_assert!(p.line >= 1 && p.column >= 1, "{}", shown);
        prop_assert!(p.file == path || text.contains("keys_file"), "{}", shown);
    }
    Ok(())
}

/// An edit to the example config.
#[derive(Debug, Clone)]
enum Edit {
    Delete(usize, usize),
    Insert(usize, &'static str),
    Swap(usize, usize),
}

const SNIPPETS: &[&str] = &[
    "\n",
    "[",
    "]",
    "[[",
    "]]",
    "\"",
    "'",
    "=",
    "#",
    ",",
    " ",
    "\\",
    "\\u00",
    "0",
    "-1",
    "99999999999999999999",
    "\"\"\"",
    "'''",
    "[[keys]]\n",
    "[[targets]]\n",
    "[[consumers]]\n",
    "[server]\n",
    "[admin]\n",
    "[server.tls]\n",
    "id = \"x\"\n",
    "secret = \"s\"\n",
    "keys = []\n",
    "[keys.x]\n",
    "inf",
    "nan",
    "true",
    "2026-13-45T25:61:61Z",
    "é",
    "\r\n",
    "\u{0}",
    "/0",
    "::",
    "/s",
    "/minute",
    "0s",
];

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 0..12usize).prop_map(|(at, n)| Edit::Delete(at, n)),
        (any::<usize>(), select(SNIPPETS)).prop_map(|(at, s)| Edit::Insert(at, s)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::Swap(a, b)),
    ]
}

/// The char boundary at or before `at % (len + 1)`.
fn boundary(s: &str, at: usize) -> usize {
    let mut i = at % (s.len() + 1);
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn apply(mut text: String, edits: &[Edit]) -> String {
    for e in edits {
        match *e {
            Edit::Delete(at, n) => {
                let from = boundary(&text, at);
                let to = boundary(&text, from + n.min(text.len() - from));
                text.replace_range(from..to.max(from), "");
            }
            Edit::Insert(at, s) => {
                let at = boundary(&text, at);
                text.insert_str(at, s);
            }
            // Two lines trade places.
            Edit::Swap(a, b) => {
                let mut lines: Vec<&str> = text.split('\n').collect();
                let n = lines.len();
                lines.swap(a % n, b % n);
                text = lines.join("\n");
            }
        }
    }
    text
}

proptest! {
    #![proptest_config(cases(128))]

    /// Arbitrary text, and text made of TOML's punctuation and keygate's words: never a panic,
    /// and every error names the file.
    #[test]
    fn config_parse_never_panics(
        text in prop_oneof![
            any::<String>(),
            "([a-z_]{1,8} = (\"[a-z0-9:/.]{0,8}\"|[0-9]{1,3}|\\[\\]|true)\n|\\[\\[?(server|keys|targets|consumers|admin)\\]\\]?\n){0,8}",
        ],
    ) {
        parse_checked(&text)?;
    }

    /// The example config with a few edits: never a panic, and every error names the file.
    #[test]
    fn config_parse_survives_edits_of_the_example(edits in proptest::collection::vec(edit(), 1..5)) {
        let text = apply(EXAMPLE.to_owned(), &edits);
        parse_checked(&text)?;
    }
}

#[test]
fn the_example_config_parses() {
    let loaded = config::parse(EXAMPLE, Path::new(CONFIG_PATH)).unwrap();
    assert!(!loaded.snapshot.keys.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Cookies and bearer tokens (`key_sources`).

/// One cookie pair as a client may send it: a name (sometimes the key cookie's, sometimes a
/// near miss), `=`, a value (sometimes quoted, sometimes empty), with optional white space.
fn cookie_pair() -> impl Strategy<Value = (String, bool)> {
    let name = select(vec![
        "kg_key", "kg_key", "KG_KEY", "kg_key2", "xkg_key", "a", "sid", "b-c",
    ]);
    let value = "[A-Za-z0-9%!#$&'()*+./:<>?@^_`|~-]{0,12}";
    (name, value, any::<bool>(), select(vec!["", " ", "  "])).prop_map(|(n, v, quoted, ws)| {
        let v = if quoted { format!("\"{v}\"") } else { v };
        (format!("{ws}{n}{ws}={ws}{v}{ws}"), n == "kg_key")
    })
}

proptest! {
    #![proptest_config(cases(2048))]

    /// Stripping the key cookie removes exactly the `kg_key` pairs: the rest is the other pairs
    /// with their separators, byte for byte (only white space before the first one kept goes).
    /// And nothing is left for `extract` to find.
    #[test]
    fn strip_cookies_removes_exactly_the_key_cookie(
        pairs in proptest::collection::vec(cookie_pair(), 0..6),
    ) {
        let header = pairs.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>().join(";");
        let names: Vec<Box<str>> = vec!["kg_key".into()];
        let got = credential::strip_cookies(header.as_bytes(), &names);
        let expected = pairs.iter().any(|(_, key)| *key).then(|| {
            let kept: Vec<&str> = pairs.iter().filter(|(_, key)| !*key).map(|(p, _)| p.as_str()).collect();
            kept.join(";").trim_start().as_bytes().to_vec()
        });
        prop_assert_eq!(&got, &expected, "{:?}", header);
        let sources = credential::KeySources::new(vec![credential::KeySource::Cookie("kg_key".into())]);
        let mut headers = HeaderMap::new();
        headers.append(http::header::COOKIE, HeaderValue::from_str(&header).unwrap());
        credential::strip_headers(&mut headers, &sources);
        prop_assert_eq!(
            credential::extract(&headers, None, sources.list()).err(),
            Some(keygate::proxy::deny::Deny::KeyMissing)
        );
    }

    /// Any Authorization and Cookie bytes: no panic, and after stripping no key is found.
    #[test]
    fn bearer_and_cookies_from_any_bytes(
        auth in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..3),
        cookies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..3),
        scheme in select(vec!["Bearer ", "bearer  ", "Basic ", ""]),
    ) {
        let mut headers = HeaderMap::new();
        for a in &auth {
            let v = [scheme.as_bytes(), a].concat();
            if let Ok(v) = HeaderValue::from_bytes(&v) {
                headers.append(http::header::AUTHORIZATION, v);
            }
        }
        for c in &cookies {
            if let Ok(v) = HeaderValue::from_bytes(&[b"kg_key=", c.as_slice()].concat()) {
                headers.append(http::header::COOKIE, v);
            }
        }
        let sources = credential::KeySources::new(vec![
            credential::KeySource::Bearer,
            credential::KeySource::Cookie("kg_key".into()),
        ]);
        if let Ok(s) = credential::extract(&headers, None, sources.list()) {
            prop_assert!(!s.is_empty() && s.len() <= MAX_SECRET_LEN);
        }
        credential::strip_headers(&mut headers, &sources);
        prop_assert_eq!(
            credential::extract(&headers, None, sources.list()).err(),
            Some(keygate::proxy::deny::Deny::KeyMissing)
        );
        // Every Bearer token went (a bare `Bearer ` carries none and may stay).
        for v in headers.get_all(http::header::AUTHORIZATION) {
            let v = v.as_bytes();
            let bearer = v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ");
            prop_assert!(!bearer || v[7..].trim_ascii().is_empty(), "{:?}", v);
        }
    }
}
