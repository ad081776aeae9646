//! SIGTERM and SIGINT on the real binary: stop accepting, let requests in flight finish within
//! `[server] shutdown_timeout`, exit 0; a second signal exits at once.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use common::admin::*;
use common::*;

/// Files whose only upstream is `up`, with `shutdown_timeout = "10s"`.
async fn files(name: &str, up: SocketAddr) -> Files {
    Files::for_binary_with(name, "shutdown_timeout = \"10s\"", Some(up)).await
}

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
    let release = tokio::time::timeout(Duration::from_secs(5), up.arrived.recv())
        .await
        .expect("the request reaches the upstream")
        .unwrap();
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

/// A request in flight when SIGTERM arrives still gets its 200; meanwhile new connections are
/// refused; then the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_request_in_flight_finish_and_refuses_new_connections() {
    let mut up = held_upstream().await;
    let files = files("shutdown-drain", up.addr).await;
    let kg = Process::start(&files.config).await;
    let proxy = kg.proxy;

    let (in_flight, release) = held_request(proxy, &mut up).await;
    signal_and_wait_refused(kg.pid(), "-TERM", proxy).await;

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
    let mut up = held_upstream().await;
    let files = files("shutdown-twice", up.addr).await;
    let kg = Process::start(&files.config).await;
    let proxy = kg.proxy;
    let (_in_flight, _release) = held_request(proxy, &mut up).await;
    let started = Instant::now();
    // The first one must have been taken before the second is sent.
    signal_and_wait_refused(kg.pid(), "-TERM", proxy).await;
    signal(kg.pid(), "-INT");
    let (status, log) = kg.wait_exit().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(status.code(), Some(1), "{log:#?}");
}
