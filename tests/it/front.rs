//! The HTTP front every port shares (`src/http/listener.rs`), on the real binary: RFC 9112 §3.2
//! (one `Host` per HTTP/1.1 request) on the proxy's, the admin API's and the metrics
//! listener's ports, and diagnostics on stderr without colour codes when stderr is no terminal.
//! The edge limits of the admin and metrics ports are in `tests/edge_limits.rs`, the proxy's
//! `Host` rows (with what the upstream saw) in `tests/hostile.rs`.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};

use crate::harness::admin::*;
use crate::harness::*;

/// Sends `head` on a fresh connection to `addr`; asserts a 400 `invalid_request` problem with
/// `Connection: close`, then the close.
async fn assert_refused_and_closed(addr: SocketAddr, what: &str, head: String) {
    let mut raw = Raw::connect(addr).await;
    raw.write(head.as_bytes()).await;
    let resp = raw.read_response().await;
    assert_eq!(resp.status, 400, "{what}: {}", resp.text());
    assert_eq!(
        resp.header("content-type"),
        Some("application/problem+json"),
        "{what}"
    );
    assert_eq!(resp.header("connection"), Some("close"), "{what}");
    let p = resp.json();
    assert_eq!(p["code"], "invalid_request", "{what}: {p}");
    assert_eq!(p["status"], 400, "{what}: {p}");
    assert_eq!(
        p["type"], "tag:keygate,2026:problem:invalid_request",
        "{what}"
    );
    assert!(
        p["title"].is_string() && p["detail"].is_string(),
        "{what}: {p}"
    );
    assert_eq!(
        p["request_id"].as_str(),
        resp.header("x-request-id"),
        "{what}: {p}"
    );
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), raw.stream.read_to_end(&mut rest))
        .await
        .unwrap_or_else(|_| panic!("{what}: the connection stayed open"));
    assert!(
        read.is_err() || rest.is_empty(),
        "{what}: more after the 400: {:?}",
        String::from_utf8_lossy(&rest)
    );
}

/// On the port at `addr`, an HTTP/1.1 request for `path` (with `extra` header lines) without
/// `Host`, or with two, gets 400 `invalid_request` and a close; with one `Host`, or as HTTP/1.0
/// without any, it is served.
async fn assert_one_host_required(addr: SocketAddr, path: &str, extra: &str) {
    assert_refused_and_closed(
        addr,
        "no Host",
        format!("GET {path} HTTP/1.1\r\n{extra}\r\n"),
    )
    .await;
    assert_refused_and_closed(
        addr,
        "Host twice",
        format!("GET {path} HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n{extra}\r\n"),
    )
    .await;
    let mut raw = Raw::connect(addr).await;
    raw.write(format!("GET {path} HTTP/1.1\r\nHost: a.test\r\n{extra}\r\n").as_bytes())
        .await;
    assert_eq!(raw.read_response().await.status, 200, "one Host");
    let mut raw = Raw::connect(addr).await;
    raw.write(format!("GET {path} HTTP/1.0\r\n{extra}\r\n").as_bytes())
        .await;
    assert_eq!(
        raw.read_response().await.status,
        200,
        "HTTP/1.0 without Host"
    );
}

/// RFC 9112 §3.2 on the proxy's port (was: forwarded and answered 200).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_port_requires_one_host() {
    let files = Files::for_binary_with("host-proxy", "", None).await;
    let kg = Process::start(&files.config).await;
    let key = format!("X-API-Key: {STATIC_SECRET}\r\n");
    assert_one_host_required(kg.proxy, PROBE, &key).await;
    kg.terminate_cleanly().await;
}

/// RFC 9112 §3.2 on the admin API's port (was: answered 200).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_requires_one_host() {
    let files = Files::for_binary_with("host-admin", "", None).await;
    let kg = Process::start(&files.config).await;
    assert_one_host_required(kg.admin, "/healthz", "").await;
    kg.terminate_cleanly().await;
}

/// RFC 9112 §3.2 on the metrics listener's port (was: answered 200).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_port_requires_one_host() {
    let files = Files::for_binary_with("host-metrics", "", None).await;
    let (kg, metrics) = files.start_with_metrics_port().await;
    assert_one_host_required(metrics, "/metrics", "").await;
    kg.terminate_cleanly().await;
}

/// With stderr a pipe (as under systemd, or redirected to a file) and `NO_COLOR` unset, the log
/// carries no ANSI escape codes (was: coloured levels and field names).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_has_no_colour_codes_when_stderr_is_not_a_terminal() {
    let files = Files::for_binary_with("no-colour", "", None).await;
    let mut child = tokio::process::Command::new(BIN)
        .args(["run", "--config"])
        .arg(&files.config)
        .env_remove("KEYGATE_CONFIG")
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .env("KEYGATE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run keygate");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut log = Vec::new();
    let listening = async {
        loop {
            let mut line = Vec::new();
            let n = stderr.read_until(b'\n', &mut line).await.unwrap();
            assert!(n > 0, "keygate exited: {}", String::from_utf8_lossy(&log));
            log.extend_from_slice(&line);
            if String::from_utf8_lossy(&line).contains("keygate listening") {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), listening)
        .await
        .expect("keygate's listening line");
    let pid = child.id().expect("running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(killed.success());
    tokio::time::timeout(Duration::from_secs(10), stderr.read_to_end(&mut log))
        .await
        .expect("stderr to end")
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("keygate's exit")
        .unwrap();
    assert!(status.success(), "{status}");
    let text = String::from_utf8_lossy(&log);
    assert!(text.contains("shutdown signal received"), "{text}");
    assert!(!text.contains("\x1b["), "colour codes in {text:?}");
}

// ---------------------------------------------------------------------------------------------
// keygate's own HTTP/1.1 server (`src/http/h1.rs`) and its hand-over to hyper's
// ---------------------------------------------------------------------------------------------

/// A plain proxy with the echo upstream, and a raw connection to it.
async fn echo_proxy() -> (SocketAddr, Raw) {
    let upstream = start_upstream("h1").await;
    let addr = start_keygate(&one_target(upstream.addr)).await;
    (addr, Raw::connect(addr).await)
}

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\nX-API-Key: {SECRET}\r\n{extra}\r\n")
}

/// One connection goes from bodiless requests (our server's) to one with a body (which hands
/// the connection to hyper), then on with hyper: a GET, and an upgrade to a tunnel. Were the
/// body left unread, its bytes would be taken for the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_goes_from_our_server_to_hyper_at_its_first_body() {
    let (_, mut raw) = echo_proxy().await;
    for path in ["/one", "/two"] {
        let echo = raw.exchange(get(path, "").as_bytes()).await.echo();
        assert_eq!(echo.uri, path);
        assert_eq!(echo.body_len, 0);
    }
    let post = format!(
        "POST /body HTTP/1.1\r\nHost: {HOST}\r\nX-API-Key: {SECRET}\r\nContent-Length: 5\r\n\r\nhello"
    );
    let echo = raw.exchange(post.as_bytes()).await.echo();
    assert_eq!((echo.method.as_str(), echo.body_len), ("POST", 5));
    let echo = raw.exchange(get("/after", "").as_bytes()).await.echo();
    assert_eq!(echo.uri, "/after");
    let upgrade = get("/ws", "Connection: Upgrade\r\nUpgrade: websocket\r\n");
    let resp = raw.exchange(upgrade.as_bytes()).await;
    assert_eq!(resp.status, 101, "{}", resp.text());
    echo_through(&mut raw, b"through the tunnel").await;
}

/// Requests written at once are answered in order, one with a body among them included: the
/// bytes after the last bodiless request go to hyper as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_across_the_hand_over() {
    let (_, mut raw) = echo_proxy().await;
    let post = format!(
        "POST /c HTTP/1.1\r\nHost: {HOST}\r\nX-API-Key: {SECRET}\r\nContent-Length: 3\r\n\r\nabc"
    );
    let all = [get("/a", ""), get("/b", ""), post, get("/d", "")].concat();
    raw.write(all.as_bytes()).await;
    for (path, body_len) in [("/a", 0), ("/b", 0), ("/c", 3), ("/d", 0)] {
        let echo = raw.read_response().await.echo();
        assert_eq!((echo.uri.as_str(), echo.body_len), (path, body_len));
    }
}

/// A request head that arrives in pieces is served (by hyper, which waits for the rest), on a
/// new connection and on one our server has already answered on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_in_pieces_is_served() {
    let (addr, mut raw) = echo_proxy().await;
    for raw in [&mut raw, &mut Raw::connect(addr).await] {
        let echo = raw.exchange(get("/whole", "").as_bytes()).await.echo();
        assert_eq!(echo.uri, "/whole");
        let head = get("/pieces", "");
        raw.write(&head.as_bytes()[..9]).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        raw.write(&head.as_bytes()[9..]).await;
        assert_eq!(raw.read_response().await.echo().uri, "/pieces");
    }
    let mut fresh = Raw::connect(addr).await;
    let head = get("/first-in-pieces", "");
    fresh.write(&head.as_bytes()[..30]).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    fresh.write(&head.as_bytes()[30..]).await;
    assert_eq!(fresh.read_response().await.echo().uri, "/first-in-pieces");
}

/// Answers are framed as hyper frames them: a length when known, chunked when not (a streamed
/// upstream body), no body for HEAD, 204 and 304 (the next answer on the connection proves no
/// stray byte followed), `date` on every answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_framed_as_hyper_frames_them() {
    let (_, mut raw) = echo_proxy().await;
    let resp = raw.exchange(get("/known", "").as_bytes()).await;
    let len: usize = resp.header("content-length").unwrap().parse().unwrap();
    assert_eq!(len, resp.body.len());
    assert_eq!(resp.header("transfer-encoding"), None);
    let date = resp.header("date").expect("a date field");
    assert!(httpdate::parse_http_date(date).is_ok(), "{date}");

    let resp = raw
        .exchange(get("/streamed", "x-reply-bytes: 100000\r\n").as_bytes())
        .await;
    assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
    assert_eq!(resp.body, pattern(0, 100_000));

    let head = format!("HEAD /head HTTP/1.1\r\nHost: {HOST}\r\nX-API-Key: {SECRET}\r\n\r\n");
    raw.write(head.as_bytes()).await;
    let mut head_resp = Vec::new();
    while !head_resp.ends_with(b"\r\n\r\n") {
        head_resp.extend(raw.read_exact(1).await);
    }
    let head_resp = String::from_utf8(head_resp).unwrap();
    assert!(head_resp.starts_with("HTTP/1.1 200 OK\r\n"), "{head_resp}");
    for status in [204, 304] {
        let extra = format!("x-reply-status: {status}\r\n");
        let resp = raw.exchange(get("/empty", &extra).as_bytes()).await;
        assert_eq!(resp.status, status);
        assert_eq!(resp.header("content-length"), None, "{status}");
        assert_eq!(resp.header("transfer-encoding"), None, "{status}");
    }
    let resp = raw.exchange(get("/last", "").as_bytes()).await;
    assert_eq!(resp.echo().uri, "/last", "nothing stray before this answer");
}

/// `Connection: close` from the client gets `connection: close` on the answer and the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_asks_to_close_gets_the_close() {
    let (_, mut raw) = echo_proxy().await;
    raw.exchange(get("/stay", "").as_bytes()).await.echo();
    let resp = raw
        .exchange(get("/go", "Connection: close\r\n").as_bytes())
        .await;
    assert_eq!(resp.echo().uri, "/go");
    assert_eq!(resp.header("connection"), Some("close"));
    let rest = read_to_close(&mut raw.stream, Duration::from_secs(5)).await;
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
}

/// An HTTP/1.0 request after an HTTP/1.1 one on the same connection is answered (by hyper) and
/// the connection closed, as HTTP/1.0 without keep-alive wants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_request_after_ours_is_answered_and_closed() {
    let (_, mut raw) = echo_proxy().await;
    raw.exchange(get("/eleven", "").as_bytes()).await.echo();
    let old = format!("GET /ten HTTP/1.0\r\nX-API-Key: {SECRET}\r\n\r\n");
    raw.write(old.as_bytes()).await;
    let resp = raw.read_response().await;
    assert_eq!(resp.echo().uri, "/ten");
    let rest = read_to_close(&mut raw.stream, Duration::from_secs(5)).await;
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
}

/// A field name is one name in any case: the names our server keeps per worker are matched
/// without regard to case and reach the upstream lowercased, each request with its own value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_names_in_any_case_are_one_name() {
    let (_, mut raw) = echo_proxy().await;
    for (i, name) in ["X-Custom-Field", "x-custom-field", "X-CUSTOM-FIELD"]
        .iter()
        .enumerate()
    {
        let head = format!(
            "GET /case HTTP/1.1\r\nHost: {HOST}\r\nx-API-kEY: {SECRET}\r\n{name}: v{i}\r\n\r\n"
        );
        let echo = raw.exchange(head.as_bytes()).await.echo();
        assert_eq!(echo.all("x-custom-field"), [format!("v{i}")], "{name}");
        assert_eq!(
            echo.all("x-api-key"),
            Vec::<&str>::new(),
            "the key is stripped"
        );
    }
}

/// A client that goes away while its request waits on the upstream ends the request: the
/// upstream connection is dropped (the upstream sees its request abandoned) instead of being
/// waited on for an answer nobody will read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_request_ends_it() {
    struct Abandoned(Option<tokio::sync::oneshot::Sender<()>>);
    impl Drop for Abandoned {
        fn drop(&mut self) {
            if let Some(tx) = self.0.take() {
                let _ = tx.send(());
            }
        }
    }
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel();
    let (abandoned_tx, mut abandoned) = tokio::sync::mpsc::unbounded_channel();
    let upstream = start_upstream_with(move |_req, _peer| {
        let (arrived_tx, abandoned_tx) = (arrived_tx.clone(), abandoned_tx.clone());
        async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let _guard = Abandoned(Some(tx));
            tokio::spawn(async move {
                if rx.await.is_ok() {
                    let _ = abandoned_tx.send(());
                }
            });
            let _ = arrived_tx.send(());
            tokio::time::sleep(Duration::from_secs(30)).await;
            http::Response::new(empty())
        }
    })
    .await;
    let addr = start_keygate(&one_target(upstream.addr)).await;
    let mut raw = Raw::connect(addr).await;
    raw.write(get("/slow", "").as_bytes()).await;
    within("the request reaches the upstream", arrived.recv())
        .await
        .unwrap();
    drop(raw);
    within_for(
        Duration::from_secs(5),
        "the upstream sees the request abandoned",
        abandoned.recv(),
    )
    .await
    .unwrap();
}
