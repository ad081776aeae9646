//! Helpers for the policy tests (issue 3): clients that connect from a chosen loopback source
//! address (the request builder's `.from(..)`), and readers for the rate-limit headers.
//!
//! The whole of 127.0.0.0/8 is local on Linux, so a test can be several clients at once by
//! binding its socket to 127.0.0.2, 127.0.0.3, ... before connecting to keygate on 127.0.0.1.

use std::net::{IpAddr, SocketAddr};

use tokio::net::TcpSocket;

use super::{H1, Resp, within};

/// Parses a literal address; for test constants only.
#[track_caller]
pub fn ip(s: &str) -> IpAddr {
    s.parse()
        .unwrap_or_else(|_| panic!("{s:?} is not an IP address"))
}

/// An HTTP/1.1 connection to `addr` whose local end is bound to `from` (any free port).
pub async fn connect_from(from: IpAddr, addr: SocketAddr) -> H1 {
    let socket = match from {
        IpAddr::V4(_) => TcpSocket::new_v4(),
        IpAddr::V6(_) => TcpSocket::new_v6(),
    }
    .expect("cannot create a socket");
    socket
        .bind(SocketAddr::new(from, 0))
        .unwrap_or_else(|e| panic!("cannot bind the client to {from}: {e}"));
    let stream = within("connect", socket.connect(addr))
        .await
        .unwrap_or_else(|e| panic!("cannot connect from {from} to {addr}: {e}"));
    assert_eq!(stream.local_addr().unwrap().ip(), from);
    H1::over(stream).await
}

/// A header that must be present, as text.
#[track_caller]
pub fn must_header<'r>(resp: &'r Resp, name: &str) -> &'r str {
    resp.header(name)
        .unwrap_or_else(|| panic!("no {name} header in {} {:?}", resp.status, resp.headers))
}

/// A header that must be present and a whole number.
#[track_caller]
pub fn num_header(resp: &Resp, name: &str) -> u64 {
    let v = must_header(resp, name);
    v.parse()
        .unwrap_or_else(|_| panic!("{name}: {v:?} is not a whole number"))
}

/// Every rate-limit header keygate may send.
pub const RATE_HEADERS: [&str; 5] = [
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "ratelimit-policy",
    "ratelimit",
];

/// Fails if `resp` carries any rate-limit header.
#[track_caller]
pub fn assert_no_rate_headers(resp: &Resp) {
    for name in RATE_HEADERS {
        assert!(
            resp.header(name).is_none(),
            "unexpected {name}: {:?} on a response to a key without a rate limit",
            resp.header(name)
        );
    }
}
