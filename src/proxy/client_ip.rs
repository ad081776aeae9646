//! The client's address, as policy sees it.
//!
//! The client is the TCP peer, unless the peer is one of `[server] trusted_proxies`: then its
//! `X-Forwarded-For` (or, when that is absent, RFC 7239 `Forwarded`) is walked from the right,
//! skipping trusted hops, and the first untrusted address is the client. From any other peer
//! those headers decide nothing: a client cannot choose its own address.
//!
//! `X-Forwarded-For` wins over `Forwarded` because it is the one proxies in front of keygate
//! (load balancers, nginx, CDNs) overwhelmingly maintain; believing a `Forwarded` that such a
//! proxy merely passed along would let a client choose its address.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName};

use crate::snapshot::IpList;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Longest forwarding chain walked: a longer one is a client padding the header, not a network.
const MAX_HOPS: usize = 32;

/// The canonical form of an address: an IPv4-mapped IPv6 peer (`::ffff:1.2.3.4`, which a
/// dual-stack listener reports for IPv4 clients) becomes the IPv4 address, so IPv4 rules match.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}
/// `ip` as its `Display` writes it, appended to `out`; IPv4 by hand, since `Display` (through
/// `core::fmt`) cost 1,300 instructions a request. For `X-Forwarded-For` and the access log.
pub fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(_) => {
            use std::io::Write as _;
            let _ = write!(out, "{ip}");
        }
    }
}

/// The client address for a request from `peer`.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &IpList) -> IpAddr {
    let peer = canonical(peer);
    if trusted.is_empty() || !trusted.allows(peer) {
        return peer;
    }
    let mut hops: Vec<Option<IpAddr>> = Vec::new();
    if headers.contains_key(X_FORWARDED_FOR) {
        for v in headers.get_all(X_FORWARDED_FOR) {
            let Ok(s) = v.to_str() else {
                hops.push(None);
                continue;
            };
            hops.extend(s.split(',').map(|h| parse_node(h.trim())));
        }
    } else {
        for v in headers.get_all(FORWARDED) {
            let Ok(s) = v.to_str() else {
                hops.push(None);
                continue;
            };
            hops.extend(s.split(',').map(forwarded_for));
        }
    }
    // Walk right to left from the peer. An unreadable hop stops the walk at the last address
    // we could vouch for, rather than trusting whatever stands to its left.
    let mut client = peer;
    for hop in hops.iter().rev().take(MAX_HOPS) {
        match hop {
            Some(ip) => {
                client = canonical(*ip);
                if !trusted.allows(client) {
                    return client;
                }
            }
            None => return client,
        }
    }
    client
}

/// The `for=` node of one `Forwarded` element, e.g. `for=192.0.2.60;proto=http`.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("for")
            .then(|| parse_node(v.trim().trim_matches('"')))?
    })
}

/// An address with or without a port: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
/// `[2001:db8::1]`, `[2001:db8::1]:4711`. `unknown` and obfuscated names are `None`.
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    let (host, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn trusted(nets: &[&str]) -> IpList {
        IpList::new(
            nets.iter()
                .map(|n| crate::config::validate::parse_net(n).unwrap())
                .collect(),
        )
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn mapped_ipv6_becomes_ipv4() {
        assert_eq!(canonical(ip("::ffff:203.0.113.7")), ip("203.0.113.7"));
        assert_eq!(canonical(ip("2001:db8::1")), ip("2001:db8::1"));
    }

    #[test]
    fn untrusted_peers_cannot_choose_their_address() {
        let h = headers(&[
            ("x-forwarded-for", "10.1.2.3"),
            ("forwarded", "for=10.1.2.3"),
        ]);
        assert_eq!(
            resolve(ip("203.0.113.9"), &h, &trusted(&["10.0.0.0/8"])),
            ip("203.0.113.9")
        );
        assert_eq!(
            resolve(ip("10.0.0.1"), &h, &IpList::default()),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn trusted_hops_are_skipped_from_the_right() {
        let t = trusted(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "198.51.100.1, 203.0.113.5, 10.0.0.7")]);
        assert_eq!(resolve(ip("10.0.0.1"), &h, &t), ip("203.0.113.5"));
        let split = headers(&[
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-for", "10.0.0.7:8080"),
        ]);
        assert_eq!(resolve(ip("10.0.0.1"), &split, &t), ip("198.51.100.1"));
        let all_trusted = headers(&[("x-forwarded-for", "10.9.9.9, 10.0.0.7")]);
        assert_eq!(resolve(ip("10.0.0.1"), &all_trusted, &t), ip("10.9.9.9"));
        let mapped_peer = resolve(ip("::ffff:10.0.0.1"), &h, &t);
        assert_eq!(mapped_peer, ip("203.0.113.5"));
    }

    #[test]
    fn garbage_stops_the_walk_at_the_last_known_hop() {
        let t = trusted(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "198.51.100.1, nonsense, 10.0.0.7")]);
        assert_eq!(resolve(ip("10.0.0.1"), &h, &t), ip("10.0.0.7"));
    }

    #[test]
    fn forwarded_is_read_when_there_is_no_x_forwarded_for() {
        let t = trusted(&["10.0.0.0/8", "::1"]);
        let h = headers(&[(
            "forwarded",
            "for=192.0.2.60;proto=http, For=\"[2001:db8:cafe::17]:4711\";by=10.0.0.1",
        )]);
        assert_eq!(resolve(ip("::1"), &h, &t), ip("2001:db8:cafe::17"));
        let unknown = headers(&[("forwarded", "for=unknown, for=10.0.0.3")]);
        assert_eq!(resolve(ip("10.0.0.1"), &unknown, &t), ip("10.0.0.3"));
    }

    #[test]
    fn ips_are_written_as_display_writes_them() {
        let ips = [
            "0.0.0.0",
            "9.10.99.100",
            "127.0.0.1",
            "192.168.10.255",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
            "::ffff:10.0.0.1",
        ];
        for ip in ips {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = Vec::new();
            push_ip(&mut out, ip);
            assert_eq!(String::from_utf8(out).unwrap(), ip.to_string());
        }
    }
}
