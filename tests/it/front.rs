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
