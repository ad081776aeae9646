//! `client_ip::resolve` on arbitrary forwarding headers and trusted-proxy lists.
//!
//! Input (text, so seeds are readable; see fuzz/README.md):
//!   line 1: the TCP peer's address (anything else: input skipped)
//!   line 2: trusted proxies, CIDRs or bare addresses separated by spaces or commas (the ones
//!           `[server] trusted_proxies` would refuse are left out)
//!   more lines: headers, `name: value` (value any bytes); the names `x` and `f` are short for
//!           `x-forwarded-for` and `forwarded`
//!
//! Asserts, beyond no panic: the result is canonical; it is the peer, or an address written in
//! the header that is read (`X-Forwarded-For`, else `Forwarded`); with no trusted proxies, or
//! from an untrusted peer, it is the peer.
#![no_main]

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};
use keygate::config::validate::parse_net;
use keygate::proxy::client_ip;
use keygate::snapshot::IpList;
use libfuzzer_sys::fuzz_target;

#[path = "../../tests/oracle/mod.rs"]
#[allow(dead_code)]
mod oracle;
use oracle::*;

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|&b| b == b'\n');
    let Some(peer) = std::str::from_utf8(lines.next().unwrap_or_default())
        .ok()
        .and_then(|s| s.trim().parse::<IpAddr>().ok())
    else {
        return;
    };
    let nets = std::str::from_utf8(lines.next().unwrap_or_default()).unwrap_or("");
    let trusted = IpList::new(
        nets.split([' ', ','])
            .filter(|n| !n.is_empty())
            .filter_map(parse_net)
            .collect(),
    );
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(i) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = match &line[..i] {
            b"x" => &b"x-forwarded-for"[..],
            b"f" => &b"forwarded"[..],
            n => n,
        };
        let value = line[i + 1..].trim_ascii_start();
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            headers.append(n, v);
        }
    }

    let got = client_ip::resolve(peer, &headers, &trusted);
    let peer = peer.to_canonical();
    assert_eq!(got, got.to_canonical(), "not canonical");
    if trusted.is_empty() || !trusted.allows(peer) {
        assert_eq!(got, peer, "an untrusted peer chose its address");
    }
    let read = if headers.contains_key("x-forwarded-for") {
        "x-forwarded-for"
    } else {
        "forwarded"
    };
    let written: Vec<IpAddr> = headers
        .get_all(read)
        .iter()
        .flat_map(|v| addresses_in(v.as_bytes()))
        .collect();
    assert!(
        got == peer || written.contains(&got),
        "{got} is neither the peer nor written in {read}: {written:?}"
    );
});
