//! The limits keygate puts on clients at the edge, each with a config key and a default
//! (`config/keygate.toml`), on the real binary.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use crate::harness::admin::*;
use crate::harness::*;

/// Files whose `[server]` section starts with `lines`.
async fn files(name: &str, lines: &str) -> Files {
    Files::for_binary_with(name, lines, None).await
}

/// keygate started on [`files`] for `name` and `lines`.
async fn start(name: &str, lines: &str) -> (Files, Process) {
    let files = files(name, lines).await;
    let kg = Process::start(&files.config).await;
    (files, kg)
}

fn probe() -> hyper::Request<TestBody> {
    request("GET", PROBE, &[("x-api-key", STATIC_SECRET)], empty())
}

/// [`probe`] over HTTP/2 to `authority`.
fn h2_probe(authority: &str) -> hyper::Request<TestBody> {
    h2_request(
        "GET",
        authority,
        PROBE,
        &[("x-api-key", STATIC_SECRET)],
        empty(),
    )
}

/// A GET of the admin API's `/healthz`.
fn health() -> hyper::Request<TestBody> {
    request("GET", "/healthz", &[], empty())
}

/// On the port at `addr` (`max_connections = 2`): two clients sending `req()` are served; a
/// third waits (in the listen backlog) while both stay, and is served once one leaves; the
/// other goes on being served. `while_full` runs while the two are connected.
async fn assert_a_third_connection_waits_for_a_free_place(
    addr: SocketAddr,
    req: fn() -> hyper::Request<TestBody>,
    while_full: impl AsyncFnOnce(),
) {
    let mut a = H1::connect(addr).await;
    let mut b = H1::connect(addr).await;
    assert_eq!(a.send(req()).await.status, 200);
    assert_eq!(b.send(req()).await.status, 200);
    while_full().await;

    let mut third = tokio::spawn(async move { H1::connect(addr).await.send(req()).await });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut third)
            .await
            .is_err(),
        "a third connection to {addr} was served while two were open"
    );
    drop(a);
    let resp = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("served once a place is free")
        .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(b.send(req()).await.status, 200);
}

/// Asserts that loading `files` fails on the line of its `key`, and that the message shows
/// `shown` (the key and its value).
fn assert_refused_at_its_line(files: &Files, key: &str, shown: &str) {
    let err = format!("{:#}", launch::load(&files.config).unwrap_err());
    let text = std::fs::read_to_string(&files.config).unwrap();
    let line = text.lines().position(|l| l.starts_with(key)).unwrap() + 1;
    assert!(err.contains(&format!("keygate.toml:{line}:")), "{err}");
    assert!(err.contains(shown), "{err}");
}

/// With `max_connections = 2`, a third client waits (in the listen backlog, costing no file
/// descriptor) until one of the first two leaves, and is then served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_wait_for_a_free_place() {
    let (_files, kg) = start("max-connections", "max_connections = 2").await;
    assert_a_third_connection_waits_for_a_free_place(kg.proxy, probe, async || {}).await;
    kg.terminate_cleanly().await;
}

/// `max_connections = 0` is refused with file, line and key.
#[tokio::test]
async fn max_connections_must_be_at_least_one() {
    let files = files("max-connections-zero", "max_connections = 0").await;
    let err = launch::load(&files.config).unwrap_err().to_string();
    assert!(err.contains("max_connections: must be at least 1"), "{err}");
    assert!(err.contains("keygate.toml:"), "{err}");
}

/// How long a connection keygate should close may stay open before the test fails.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// A client that starts a request head and never finishes it is dropped after
/// `header_read_timeout` (slowloris), and keygate goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_sent_too_slowly_is_dropped() {
    let (_files, kg) = start("slow-head", "header_read_timeout = \"300ms\"").await;
    assert_half_head_dropped(kg.proxy, "/live").await;
    assert_eq!(H1::connect(kg.proxy).await.send(probe()).await.status, 200);
    kg.terminate_cleanly().await;
}

/// A request head over `max_header_bytes` gets 431 and a close; smaller heads still pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_over_max_header_bytes_gets_431() {
    let (_files, kg) = start("big-head", "max_header_bytes = 16384").await;
    assert_big_head_gets_431(kg.proxy, PROBE, &[("x-api-key", STATIC_SECRET)]).await;
    kg.terminate_cleanly().await;
}

/// `max_header_bytes` below hyper's smallest buffer is refused at load.
#[tokio::test]
async fn max_header_bytes_has_a_floor() {
    let files = files("big-head-floor", "max_header_bytes = 100").await;
    let err = launch::load(&files.config).unwrap_err().to_string();
    assert!(
        err.contains("max_header_bytes: must be at least 8192"),
        "{err}"
    );
}

/// With `max_streams = 2`, a client's third concurrent HTTP/2 request waits (the client honours
/// the advertised limit) until one of the first two is answered; all three then succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streams_past_max_streams_wait_for_a_free_one() {
    let (mut up, _files, kg) =
        Files::start_before_held_upstream("max-streams", "max_streams = 2").await;
    let h2 = H2::connect(kg.proxy).await;
    let authority = kg.proxy.to_string();
    // One exchange first, so the client has the server's SETTINGS (a stream opened before them
    // may be refused instead, which is also allowed).
    let warm = {
        let (mut h2, authority) = (h2.clone(), authority.clone());
        tokio::spawn(async move { h2.send(h2_probe(&authority)).await })
    };
    let release = up.next_arrival("the first request").await;
    let _ = release.send(());
    assert_eq!(warm.await.unwrap().status, 200);
    let mut sent = Vec::new();
    for _ in 0..3 {
        let mut h2 = h2.clone();
        let authority = authority.clone();
        sent.push(tokio::spawn(
            async move { h2.send(h2_probe(&authority)).await },
        ));
    }
    let first = up.next_arrival("a request").await;
    let _second = up.next_arrival("a request").await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), up.arrived.recv())
            .await
            .is_err(),
        "a third stream was open at once"
    );
    let _ = first.send(());
    let third = up.next_arrival("a request").await;
    drop((_second, third));
    for s in sent {
        // Released or dropped by the upstream: either way answered, none refused or lost.
        let resp = s.await.unwrap();
        assert!(resp.status == 200 || resp.status == 502, "{}", resp.status);
    }
    kg.terminate_cleanly().await;
}

/// `[server]` lines for a 1 s idle timeout; the head timeout is far longer, so only the idle
/// timeout can close a waiting connection.
const IDLE_1S: &str = "idle_timeout = \"1s\"\nheader_read_timeout = \"30s\"";

/// A keep-alive HTTP/1.1 connection with no request in flight is closed by keygate after
/// `idle_timeout` (counted from the end of its last response), and so is one that never sends
/// a request; keygate goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_idle_timeout() {
    let (_files, kg) = start("idle-h1", IDLE_1S).await;
    let mut raw = Raw::connect(kg.proxy).await;
    let mut silent = Raw::connect(kg.proxy).await;
    let opened = std::time::Instant::now();
    raw.write(
        format!("GET {PROBE} HTTP/1.1\r\nHost: x\r\nX-API-Key: {STATIC_SECRET}\r\n\r\n").as_bytes(),
    )
    .await;
    let resp = raw.read_response().await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_ne!(resp.header("connection"), Some("close"));
    let answered = std::time::Instant::now();
    let rest = read_to_close(&mut raw.stream, CLOSE_WITHIN).await;
    let idle = answered.elapsed();
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    assert!(idle >= Duration::from_millis(800), "closed after {idle:?}");

    let rest = read_to_close(&mut silent.stream, CLOSE_WITHIN).await;
    assert!(rest.is_empty() || rest.starts_with(b"HTTP/1.1 408"));
    assert!(opened.elapsed() >= Duration::from_millis(800));
    assert_eq!(H1::connect(kg.proxy).await.send(probe()).await.status, 200);
    kg.terminate_cleanly().await;
}

/// A request held at the upstream for longer than `idle_timeout` is not cut off, over
/// HTTP/1.1 and HTTP/2: the connection is busy, not idle, and both get their 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_longer_than_idle_timeout_is_answered() {
    let (mut up, _files, kg) = Files::start_before_held_upstream("idle-busy", IDLE_1S).await;
    let mut h1 = H1::connect(kg.proxy).await;
    let mut h2 = H2::connect(kg.proxy).await;
    let authority = kg.proxy.to_string();
    let via_h1 = tokio::spawn(async move {
        let resp = h1.send(probe()).await;
        (resp, h1)
    });
    let via_h2 = tokio::spawn(async move { h2.send(h2_probe(&authority)).await });
    let mut releases = Vec::new();
    for _ in 0..2 {
        releases.push(up.next_arrival("each of both requests").await);
    }
    // Held well past the idle timeout.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    for release in releases {
        let _ = release.send(());
    }
    let (resp, h1) = tokio::time::timeout(Duration::from_secs(5), via_h1)
        .await
        .expect("the HTTP/1.1 answer")
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "slow-done");
    let resp = tokio::time::timeout(Duration::from_secs(5), via_h2)
        .await
        .expect("the HTTP/2 answer")
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "slow-done");
    assert!(!h1.is_closed(), "closed right after its answer");
    kg.terminate_cleanly().await;
}

/// An idle HTTP/2 connection gets a GOAWAY after `idle_timeout` and is closed: at once for a
/// client that answers the GOAWAY's PING, and within another `idle_timeout` for one that
/// never reads what it is sent (else a silent client would keep its connection forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_h2_connection_gets_goaway_then_close() {
    let (_files, kg) = start("idle-h2", IDLE_1S).await;

    let mut h2 = H2::connect(kg.proxy).await;
    let authority = kg.proxy.to_string();
    assert_eq!(h2.send(h2_probe(&authority)).await.status, 200);
    let answered = std::time::Instant::now();
    poll(
        Duration::from_secs(5),
        "the idle h2 connection to close",
        async || h2.is_closed().then_some(()),
    )
    .await;
    assert!(
        answered.elapsed() >= Duration::from_millis(800),
        "closed after {:?}",
        answered.elapsed()
    );

    let mut s = tokio::net::TcpStream::connect(kg.proxy).await.unwrap();
    let opened = std::time::Instant::now();
    {
        use tokio::io::AsyncWriteExt;
        // The client preface, then an empty SETTINGS frame; then nothing, not even a PING ack.
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .unwrap();
    }
    let frames = read_to_close(&mut s, CLOSE_WITHIN).await;
    let open_for = opened.elapsed();
    assert!(
        open_for >= Duration::from_millis(800) && open_for < Duration::from_secs(5),
        "closed after {open_for:?}"
    );
    // 9-byte frame headers: length (24 bits), type, flags, stream id.
    let mut types = Vec::new();
    let mut at = 0;
    while at + 9 <= frames.len() {
        let len = usize::from(frames[at]) << 16
            | usize::from(frames[at + 1]) << 8
            | usize::from(frames[at + 2]);
        types.push(frames[at + 3]);
        at += 9 + len;
    }
    assert_eq!(at, frames.len(), "frames end on a frame boundary");
    const SETTINGS: u8 = 0x4;
    const GOAWAY: u8 = 0x7;
    assert_eq!(types.first(), Some(&SETTINGS), "{types:?}");
    assert!(
        types.contains(&GOAWAY),
        "no GOAWAY before the close: {types:?}"
    );
    kg.terminate_cleanly().await;
}

/// With the default `idle_timeout` (60 s), a keep-alive connection idle for 2 s is still open
/// and serves its next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_default_idle_timeout_a_connection_stays_open() {
    use tokio::io::AsyncReadExt;
    let (_files, kg) = start("idle-default", "").await;
    let mut raw = Raw::connect(kg.proxy).await;
    let req = format!("GET {PROBE} HTTP/1.1\r\nHost: x\r\nX-API-Key: {STATIC_SECRET}\r\n\r\n");
    raw.write(req.as_bytes()).await;
    assert_eq!(raw.read_response().await.status, 200);
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(2), raw.stream.read(&mut buf)).await;
    assert!(
        read.is_err(),
        "the connection ended or sent bytes: {read:?}"
    );
    raw.write(req.as_bytes()).await;
    assert_eq!(raw.read_response().await.status, 200);
    kg.terminate_cleanly().await;
}

/// `idle_timeout = "0s"` is refused with file, line and key.
#[tokio::test]
async fn idle_timeout_must_not_be_zero() {
    let files = files("idle-zero", "idle_timeout = \"0s\"").await;
    assert_refused_at_its_line(&files, "idle_timeout", "idle_timeout: \"0s\"");
}

/// An upstream that answers every request whose body arrived whole with that body, and keeps
/// the length of each such body.
async fn body_upstream() -> (Upstream, Arc<Mutex<Vec<usize>>>) {
    use http_body_util::BodyExt;
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = bodies.clone();
    let up = start_upstream_with(move |req, _| {
        let seen = seen.clone();
        async move {
            match req.into_body().collect().await {
                Ok(b) => {
                    let b = b.to_bytes();
                    seen.lock().unwrap().push(b.len());
                    hyper::Response::new(full(b))
                }
                Err(_) => {
                    let mut r = hyper::Response::new(empty());
                    *r.status_mut() = hyper::StatusCode::BAD_REQUEST;
                    r
                }
            }
        }
    })
    .await;
    (up, bodies)
}

/// A POST of `body` to `path` with the static key; with a `Content-Length` unless `chunked`
/// (then sent in 500-byte chunks).
async fn post(proxy: std::net::SocketAddr, path: &str, body: Bytes, chunked: bool) -> Resp {
    let headers = [("x-api-key", STATIC_SECRET)];
    let mut h1 = H1::connect(proxy).await;
    if !chunked {
        return h1.send(request("POST", path, &headers, full(body))).await;
    }
    let (tx, streamed) = channel_body(64);
    for chunk in body.chunks(500) {
        tx.send(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    drop(tx);
    h1.send(request("POST", path, &headers, streamed)).await
}

/// `max_body = "1KB"`: a `Content-Length` over 1000 bytes gets 413 `body_too_large` before the
/// upstream sees anything; a chunked body passing it mid-stream gets 413 too and never reaches
/// the upstream whole; 1000 bytes, either way, reach it exactly. `"unlimited"` lets 2 MB
/// through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_body_refuses_larger_bodies_with_413() {
    let (up, bodies) = body_upstream().await;
    let files = Files::for_binary_with("max-body", "", Some(up.addr)).await;
    files.add_to_target("main", "max_body = \"1KB\"");
    files.add_to_target("other", "max_body = \"unlimited\"");
    let kg = Process::start(&files.config).await;
    let p = kg.proxy;

    for len in [2000, 1001] {
        let resp = post(p, PROBE, pattern(0, len), false).await;
        let problem = assert_problem(&resp, 413, "body_too_large");
        assert!(!problem.to_string().contains(STATIC_SECRET));
        assert_eq!(up.hits(), 0, "the upstream saw the {len}-byte request");
    }
    // Refused on the head alone: no byte of the body is needed, none goes upstream.
    let mut raw = Raw::connect(p).await;
    raw.write(
        format!(
            "POST {PROBE} HTTP/1.1\r\nHost: x\r\nX-API-Key: {STATIC_SECRET}\r\nContent-Length: 2000\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    let resp = tokio::time::timeout(Duration::from_secs(5), raw.read_response())
        .await
        .expect("413 before the body is sent");
    assert_problem(&resp, 413, "body_too_large");
    assert_eq!(up.hits(), 0, "the upstream saw a request");

    let resp = post(p, PROBE, pattern(0, 2000), true).await;
    assert_problem(&resp, 413, "body_too_large");

    for chunked in [false, true] {
        let body = pattern(7, 1000);
        let resp = post(p, PROBE, body.clone(), chunked).await;
        assert_eq!(resp.status, 200, "chunked: {chunked}: {}", resp.text());
        assert!(
            resp.body == body,
            "the upstream got other bytes (chunked: {chunked})"
        );
    }
    let big = pattern(3, 2_000_000);
    let resp = post(p, OTHER_PATH, big.clone(), false).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(resp.body == big, "2 MB came back changed");
    assert_eq!(
        *bodies.lock().unwrap(),
        [1000, 1000, 2_000_000],
        "whole bodies the upstream got"
    );
    kg.terminate_cleanly().await;
}

/// `max_body = "lots"` is refused with file, line and key.
#[tokio::test]
async fn max_body_must_be_a_size() {
    let files = files("max-body-lots", "").await;
    files.add_to_target("main", "max_body = \"lots\"");
    assert_refused_at_its_line(&files, "max_body", "max_body: \"lots\"");
}

// ---------------------------------------------------------------------------------------------
// The admin API's and the metrics listener's ports: the same front, the same limits
// ---------------------------------------------------------------------------------------------

/// Sends half a request head to `addr` and asserts the connection is dropped after
/// `header_read_timeout` (300 ms here), not held open.
async fn assert_half_head_dropped(addr: SocketAddr, path: &str) {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n").as_bytes())
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let answer = read_to_close(&mut s, CLOSE_WITHIN).await;
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "closed too early"
    );
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
}

/// A client that sends half a request head to the admin API's port is dropped after
/// `header_read_timeout` like one on the proxy's port (was: held open forever), and the port
/// goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_sent_too_slowly_to_the_admin_port_is_dropped() {
    let (_files, kg) = start("slow-head-admin", "header_read_timeout = \"300ms\"").await;
    assert_half_head_dropped(kg.admin, "/healthz").await;
    assert_eq!(get(kg.admin, "/healthz", &[]).await.status, 200);
    kg.terminate_cleanly().await;
}

/// The same on the metrics listener's port (`[metrics] listen`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_sent_too_slowly_to_the_metrics_port_is_dropped() {
    let files = files("slow-head-metrics", "header_read_timeout = \"300ms\"").await;
    let (kg, metrics) = files.start_with_metrics_port().await;
    assert_half_head_dropped(metrics, "/metrics").await;
    assert_eq!(get(metrics, "/metrics", &[]).await.status, 200);
    kg.terminate_cleanly().await;
}

/// Sends a 20 KB request head with `headers` to `addr` (`max_header_bytes = 16384` here) and
/// asserts a 431 and a close; then an 8 KB head with them passes.
async fn assert_big_head_gets_431(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let big = "a".repeat(20_000);
    let lines: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{lines}X-Big: {big}\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let answer = read_to_close(&mut s, CLOSE_WITHIN).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");

    let fits = "a".repeat(8_000);
    let mut fitting = headers.to_vec();
    fitting.push(("x-fits", fits.as_str()));
    let resp = get(addr, path, &fitting).await;
    assert_eq!(resp.status, 200);
}

/// A request head over `max_header_bytes` gets 431 and a close on the admin API's port (was:
/// read up to hyper's own 400 KB), and smaller heads still pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_over_max_header_bytes_gets_431_on_the_admin_port() {
    let (_files, kg) = start("big-head-admin", "max_header_bytes = 16384").await;
    assert_big_head_gets_431(kg.admin, "/healthz", &[]).await;
    kg.terminate_cleanly().await;
}

/// The same on the metrics listener's port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_over_max_header_bytes_gets_431_on_the_metrics_port() {
    let files = files("big-head-metrics", "max_header_bytes = 16384").await;
    let (kg, metrics) = files.start_with_metrics_port().await;
    assert_big_head_gets_431(metrics, "/metrics", &[]).await;
    kg.terminate_cleanly().await;
}

/// With `max_connections = 2`, a third client of the admin API waits until one of the first two
/// leaves, like on the proxy's port (was: no limit). The ports count apart: two clients on the
/// admin port leave the proxy's port free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_respects_max_connections() {
    let (_files, kg) = start("max-connections-admin", "max_connections = 2").await;
    let proxy = kg.proxy;
    assert_a_third_connection_waits_for_a_free_place(kg.admin, health, async || {
        assert_eq!(H1::connect(proxy).await.send(probe()).await.status, 200);
    })
    .await;
    kg.terminate_cleanly().await;
}

/// An admin API connection left idle is closed after `idle_timeout` (was: kept forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_admin_connection_is_closed_after_idle_timeout() {
    let (_files, kg) = start("idle-admin", "idle_timeout = \"300ms\"").await;
    let mut raw = Raw::connect(kg.admin).await;
    raw.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let resp = raw.read_response().await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let answered = std::time::Instant::now();
    let rest = read_to_close(&mut raw.stream, CLOSE_WITHIN).await;
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    assert!(answered.elapsed() >= Duration::from_millis(200));
    kg.terminate_cleanly().await;
}
