//! Helpers for the policy tests (issue 3): clients that connect from a chosen loopback source
//! address, a keygate on a chosen listen address, and readers for the rate-limit headers.
//!
//! The whole of 127.0.0.0/8 is local on Linux, so a test can be several clients at once by
//! binding its socket to 127.0.0.2, 127.0.0.3, ... before connecting to keygate on 127.0.0.1.

use std::net::{IpAddr, SocketAddr};

use tokio::net::{TcpListener, TcpSocket};

use super::{H1, Resp, TestBody, empty, request, watch_panics, within};

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

/// Sends `req` on a fresh connection from `from` and reads the whole response.
pub async fn send_from(from: IpAddr, addr: SocketAddr, req: hyper::Request<TestBody>) -> Resp {
    connect_from(from, addr).await.send(req).await
}

/// A GET of `path` from `from`, on a fresh connection.
pub async fn get_from(
    from: IpAddr,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Resp {
    send_from(from, addr, request("GET", path, headers, empty())).await
}

/// A GET of `/r` from `from` with `secret` in `X-API-Key` and any extra headers.
pub async fn get_key_from(
    from: IpAddr,
    addr: SocketAddr,
    secret: &str,
    extra: &[(&str, &str)],
) -> Resp {
    let mut headers = vec![("x-api-key", secret)];
    headers.extend_from_slice(extra);
    get_from(from, addr, "/r", &headers).await
}

/// Starts a real keygate with `config` on `listen` (port 0 for any free port). `None` when the
/// address cannot be bound here (e.g. no IPv6 loopback), so that a test can skip.
pub async fn start_keygate_on(config: &str, listen: SocketAddr) -> Option<SocketAddr> {
    watch_panics();
    // Checked before binding, so that an invalid config fails even where `listen` cannot be bound.
    if let Err(e) = keygate::config::parse(config, std::path::Path::new("test.toml")) {
        panic!("test config is invalid: {e}\n---\n{config}");
    }
    let listener = match TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("note: cannot listen on {listen} here ({e})");
            return None;
        }
    };
    let addr = listener.local_addr().unwrap();
    super::launch::spawn_proxy(config, listener);
    Some(addr)
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
