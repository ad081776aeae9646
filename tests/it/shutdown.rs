//! SIGTERM and SIGINT on the real binary: stop accepting, let requests in flight and upgraded
//! tunnels finish within `[server] shutdown_timeout` (cut them when it runs out), answer
//! `/readyz` with 503 meanwhile, exit 0; a second signal exits at once.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::harness::admin::*;
use crate::harness::*;

/// A drain bound far longer than any test here waits.
const LONG_GRACE: &str = "shutdown_timeout = \"10s\"";

fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

/// Starts a request through `proxy` and waits until `up` holds it; returns the request's task
/// and the upstream's release.
async fn held_request(
    proxy: SocketAddr,
    up: &mut HeldUpstream,
) -> (
    tokio::task::JoinHandle<Resp>,
    tokio::sync::oneshot::Sender<()>,
) {
    let in_flight = tokio::spawn(async move {
        let req = request("GET", "/slow", &[("x-api-key", STATIC_SECRET)], empty());
        H1::connect(proxy).await.send(req).await
    });
    let release = up.next_arrival("the request").await;
    (in_flight, release)
}

/// Sends `sig` and waits (bounded) until the proxy port refuses connections.
async fn signal_and_wait_refused(pid: u32, sig: &str, proxy: SocketAddr) {
    signal(pid, sig);
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(proxy).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after {sig}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// keygate (files for `name`, 10 s grace) with one request held at the upstream, sent SIGTERM
/// and refusing new connections: the files, the process, the request's task, its release, and
/// the moment just before SIGTERM was sent.
async fn draining_one_held_request(
    name: &str,
) -> (
    Files,
    Process,
    tokio::task::JoinHandle<Resp>,
    tokio::sync::oneshot::Sender<()>,
    Instant,
) {
    let (mut up, files, kg) = Files::start_before_held_upstream(name, LONG_GRACE).await;
    let (in_flight, release) = held_request(kg.proxy, &mut up).await;
    let signalled = Instant::now();
    signal_and_wait_refused(kg.pid(), "-TERM", kg.proxy).await;
    (files, kg, in_flight, release, signalled)
}

/// A request in flight when SIGTERM arrives still gets its 200; meanwhile new connections are
/// refused; then the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_request_in_flight_finish_and_refuses_new_connections() {
    let (_files, kg, in_flight, release, _) = draining_one_held_request("shutdown-drain").await;
    let _ = release.send(());
    let resp = tokio::time::timeout(Duration::from_secs(5), in_flight)
        .await
        .expect("the request in flight is answered")
        .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), "slow-done");

    let (status, log) = kg.wait_exit().await;
    assert!(
        status.success(),
        "exit after a drained SIGTERM: {status}: {log:#?}"
    );
}

/// A second SIGTERM while a request is still in flight exits at once (well before the 10 s
/// `shutdown_timeout`), with a non-zero status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    // The first one must have been taken before the second is sent.
    let (_files, kg, _in_flight, _release, started) =
        draining_one_held_request("shutdown-twice").await;
    signal(kg.pid(), "-INT");
    let (status, log) = kg.wait_exit().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(status.code(), Some(1), "{log:#?}");
}

/// The drain's bound, for the tests of what happens when it runs out.
const SHORT_GRACE: &str = "shutdown_timeout = \"1s\"";
/// Far longer than [`SHORT_GRACE`] and far shorter than anything the upstream holds: keygate
/// must be gone by then.
const CUT_WITHIN: Duration = Duration::from_secs(5);

/// A request the upstream still holds when `shutdown_timeout` (1 s) runs out is cut: the client's
/// connection closes with no answer, keygate logs it and exits 0, though the upstream never
/// answers. Exit 0 on purpose: the operator asked for the shutdown and it ended as configured
/// (a non-zero status would make systemd or an orchestrator report a failed unit for a routine
/// deploy); the warning in the log is what says requests were cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_when_shutdown_timeout_runs_out_is_cut_and_keygate_exits_0() {
    let (mut up, _files, kg) =
        Files::start_before_held_upstream("shutdown-timeout", SHORT_GRACE).await;
    let mut raw = Raw::connect(kg.proxy).await;
    let head = format!("GET /slow HTTP/1.1\r\nHost: {HOST}\r\nX-API-Key: {STATIC_SECRET}\r\n\r\n");
    raw.write(head.as_bytes()).await;
    // Never released: the upstream would hold the request until the test ends.
    let _held = within("the request reaches the upstream", up.arrived.recv())
        .await
        .unwrap();

    let signalled = Instant::now();
    signal(kg.pid(), "-TERM");
    let answer = read_to_close(&mut raw.stream, CUT_WITHIN).await;
    assert!(
        answer.is_empty(),
        "answered: {:?}",
        String::from_utf8_lossy(&answer)
    );
    let log = exits_0_after_the_grace(kg, signalled).await;
    assert!(
        log.iter().any(|l| l.contains("shutdown grace period over")),
        "{log:#?}"
    );
}

/// Waits for `kg` to exit and asserts it did so with 0, after the 1 s grace from `signalled`
/// and well before [`CUT_WITHIN`]; returns its log.
async fn exits_0_after_the_grace(kg: Process, signalled: Instant) -> Vec<String> {
    let (status, log) = kg.wait_exit().await;
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_secs(1),
        "did not wait for the grace: {took:?}"
    );
    assert!(took < CUT_WITHIN, "took {took:?}");
    assert!(status.success(), "{status}: {log:#?}");
    log
}

/// keygate (files for `name`, `grace` in `[server]`) with a tunnel open through it that has
/// carried `message` both ways: the files, the process and the tunnel.
async fn with_an_open_tunnel(name: &str, grace: &str, message: &[u8]) -> (Files, Process, Raw) {
    let files = Files::for_binary_with(name, grace, None).await;
    let kg = Process::start(&files.config).await;
    let mut tunnel = open_tunnel(kg.proxy, STATIC_SECRET).await;
    echo_through(&mut tunnel, message).await;
    (files, kg, tunnel)
}

/// A tunnel (an upgraded connection) open at SIGTERM keeps carrying bytes both ways after
/// keygate has stopped accepting; when the client closes it, keygate exits 0 at once, well
/// before the 10 s `shutdown_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_open_at_sigterm_keeps_working_until_it_closes_then_keygate_exits_0() {
    let (_files, kg, mut tunnel) =
        with_an_open_tunnel("shutdown-tunnel", LONG_GRACE, b"before").await;

    signal_and_wait_refused(kg.pid(), "-TERM", kg.proxy).await;
    for message in [&b"after"[..], b"\x00\xffbinary\r\n", &[7u8; 100_000]] {
        echo_through(&mut tunnel, message).await;
    }

    let closed = Instant::now();
    close_tunnel(&mut tunnel, CUT_WITHIN).await;
    let (status, log) = kg.wait_exit().await;
    assert!(
        closed.elapsed() < CUT_WITHIN,
        "exit {:?} after the tunnel closed",
        closed.elapsed()
    );
    assert!(status.success(), "{status}: {log:#?}");
}

/// A tunnel still open when `shutdown_timeout` (1 s) runs out is cut, and keygate exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_still_open_when_shutdown_timeout_runs_out_is_cut() {
    let (_files, kg, mut tunnel) =
        with_an_open_tunnel("shutdown-tunnel-cut", SHORT_GRACE, b"open").await;

    let signalled = Instant::now();
    signal_and_wait_refused(kg.pid(), "-TERM", kg.proxy).await;
    echo_through(&mut tunnel, b"still open while draining").await;
    assert!(
        read_to_close(&mut tunnel.stream, CUT_WITHIN)
            .await
            .is_empty()
    );
    exits_0_after_the_grace(kg, signalled).await;
}

/// From the moment SIGTERM arrives, `/readyz` on the admin listener answers 503 (a load
/// balancer or Kubernetes takes the instance out) while the proxy drains; the admin listener
/// stays up until the drain ends. The request in flight still gets its 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_503_while_a_request_drains() {
    let (mut up, _files, kg) =
        Files::start_before_held_upstream("shutdown-readyz", LONG_GRACE).await;
    let admin = kg.admin;
    // Ready once the workers run, a moment after the listening lines.
    poll(Duration::from_secs(5), "/readyz 200", async || {
        (get(admin, "/readyz", &[]).await.status == 200).then_some(())
    })
    .await;

    let (in_flight, release) = held_request(kg.proxy, &mut up).await;
    signal_and_wait_refused(kg.pid(), "-TERM", kg.proxy).await;
    let draining = get(kg.admin, "/readyz", &[]).await;
    assert_eq!(draining.status, 503, "{}", draining.text());
    assert_eq!(draining.json()["status"], "not_ready");
    assert!(!in_flight.is_finished(), "the request was still held");

    let _ = release.send(());
    let resp = within("the request in flight is answered", in_flight)
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    let (status, log) = kg.wait_exit().await;
    assert!(status.success(), "{status}: {log:#?}");
}
