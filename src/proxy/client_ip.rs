//! The client's address, as policy and `X-Forwarded-For` see it.

use std::net::IpAddr;

/// The canonical form of a peer address: an IPv4-mapped IPv6 peer (`::ffff:1.2.3.4`, which a
/// dual-stack listener reports for IPv4 clients) becomes the IPv4 address, so IPv4 rules match it.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_ipv6_becomes_ipv4() {
        let mapped: IpAddr = "::ffff:203.0.113.7".parse().unwrap();
        assert_eq!(canonical(mapped), "203.0.113.7".parse::<IpAddr>().unwrap());
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }
}
