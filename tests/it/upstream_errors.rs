//! Upstream failures: refused or reset is 502 `upstream_unavailable`, no answer in time is 504.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::harness::*;

/// Two targets: `/bad` goes to `bad_upstream` (with `extra` in its table), the rest to a good
/// echo upstream, so each test also shows the gateway keeps serving after the failure.
async fn gateway(bad_upstream: SocketAddr, extra: &str) -> Gw {
    let mut bad = target("bad").upstream(bad_upstream).path_prefix("/bad");
    if !extra.is_empty() {
        bad = bad.line(extra);
    }
    crate::harness::gateway()
        .target(target("good"))
        .target(bad)
        .shared_keys()
        .start()
        .await
}

async fn assert_good_target_still_works(gw: &Gw) {
    assert_eq!(gw.get("/fine").key(SECRET).echo().await.upstream, "good");
    assert_no_keygate_panic();
}

/// `/bad/x` is 502 `upstream_unavailable`, and the good target still works after it.
async fn assert_unavailable_then_good(gw: &Gw) {
    gw.get("/bad/x")
        .key(SECRET)
        .problem(502, "upstream_unavailable")
        .await;
    assert_good_target_still_works(gw).await;
}

#[tokio::test]
async fn refused_connection_is_502_upstream_unavailable() {
    let gw = gateway(closed_port().await, "").await;
    gw.get("/bad/x")
        .key(SECRET)
        .problem(502, "upstream_unavailable")
        .await;
    // The key in the query is not carried into the error either (checked for every response).
    gw.get(&format!("/bad?api_key={SECRET}"))
        .problem(502, "upstream_unavailable")
        .await;
    assert_good_target_still_works(&gw).await;
}

#[tokio::test]
async fn reset_connection_is_502_upstream_unavailable() {
    let gw = gateway(start_resetting_upstream().await, "").await;
    for _ in 0..3 {
        gw.get("/bad/x")
            .key(SECRET)
            .problem(502, "upstream_unavailable")
            .await;
    }
    let resp = H1::connect(gw.addr)
        .await
        .send(request(
            "POST",
            "/bad/upload",
            &[("x-api-key", SECRET)],
            full(pattern(0, 100_000)),
        ))
        .await;
    assert_problem(&resp, 502, "upstream_unavailable");
    assert_good_target_still_works(&gw).await;
}

#[tokio::test]
async fn connection_closed_without_an_answer_is_502_upstream_unavailable() {
    let gw = gateway(start_closing_upstream().await, "").await;
    assert_unavailable_then_good(&gw).await;
}

#[tokio::test]
async fn an_upstream_that_does_not_speak_http_is_502_upstream_unavailable() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let garbage = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for _ in 0..100 {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(b"SSH-2.0-OpenSSH_9.6\r\n\r\n").await;
            });
        }
    });
    let gw = gateway(garbage, "").await;
    assert_unavailable_then_good(&gw).await;
}

#[tokio::test]
async fn no_answer_within_the_target_timeout_is_504_upstream_timeout() {
    let gw = gateway(start_silent_upstream().await, "timeout = \"200ms\"").await;
    let started = Instant::now();
    let resp = gw.get("/bad/x").key(SECRET).send().await;
    let took = started.elapsed();
    assert_problem(&resp, 504, "upstream_timeout");
    assert!(
        took >= Duration::from_millis(200),
        "answered before the timeout: {took:?}"
    );
    assert!(
        took < Duration::from_secs(10),
        "the configured timeout was not used: {took:?}"
    );
    assert_good_target_still_works(&gw).await;
}

#[tokio::test]
async fn a_slow_answer_within_the_timeout_is_not_a_timeout() {
    let slow = start_upstream_with(|_req, _| async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        http::Response::new(full("late but fine"))
    })
    .await;
    let gw = gateway(slow.addr, "timeout = \"5s\"").await;
    let resp = gw.get("/bad/x").key(SECRET).send().await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "late but fine");
}

#[tokio::test]
async fn upstream_errors_over_keep_alive_leave_the_client_connection_usable() {
    let gw = gateway(closed_port().await, "").await;
    let mut h1 = H1::connect(gw.addr).await;
    let resp = h1
        .send(request("GET", "/bad", &[("x-api-key", SECRET)], empty()))
        .await;
    assert_problem(&resp, 502, "upstream_unavailable");
    let resp = h1
        .send(request("GET", "/ok", &[("x-api-key", SECRET)], empty()))
        .await;
    assert_eq!(resp.echo().upstream, "good");
}

#[tokio::test]
async fn a_client_request_id_is_kept_on_upstream_errors() {
    let gw = gateway(start_silent_upstream().await, "timeout = \"200ms\"").await;
    let resp = gw
        .get("/bad")
        .key(SECRET)
        .header("x-request-id", "trace-504")
        .send()
        .await;
    let json = assert_problem(&resp, 504, "upstream_timeout");
    assert_eq!(json["request_id"], "trace-504");
}
