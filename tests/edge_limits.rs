//! The limits keygate puts on clients at the edge, each with a config key and a default
//! (`config/keygate.toml`), on the real binary.

mod common;

use std::time::Duration;

use common::admin::*;
use common::*;

/// Files whose `[server]` section starts with `lines`.
async fn files(name: &str, lines: &str) -> Files {
    Files::for_binary_with(name, lines, None).await
}

fn probe() -> hyper::Request<TestBody> {
    request("GET", PROBE, &[("x-api-key", STATIC_SECRET)], empty())
}

/// With `max_connections = 2`, a third client waits (in the listen backlog, costing no file
/// descriptor) until one of the first two leaves, and is then served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_wait_for_a_free_place() {
    let files = files("max-connections", "max_connections = 2").await;
    let kg = Process::start(&files.config).await;
    let mut a = H1::connect(kg.proxy).await;
    let mut b = H1::connect(kg.proxy).await;
    assert_eq!(a.send(probe()).await.status, 200);
    assert_eq!(b.send(probe()).await.status, 200);

    let proxy = kg.proxy;
    let mut third = tokio::spawn(async move { H1::connect(proxy).await.send(probe()).await });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut third)
            .await
            .is_err(),
        "a third connection was served while two were open"
    );
    drop(a);
    let resp = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("served once a place is free")
        .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(b.send(probe()).await.status, 200);
    let (status, _) = kg.terminate().await;
    assert!(status.success());
}

/// `max_connections = 0` is refused with file, line and key.
#[tokio::test]
async fn max_connections_must_be_at_least_one() {
    let files = files("max-connections-zero", "max_connections = 0").await;
    let err = keygate::load(&files.config).unwrap_err().to_string();
    assert!(err.contains("max_connections: must be at least 1"), "{err}");
    assert!(err.contains("keygate.toml:"), "{err}");
}

/// Reads what the server sends until it closes the connection (bounded).
async fn read_until_close(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "still open after 5 s; got {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
}

/// A client that starts a request head and never finishes it is dropped after
/// `header_read_timeout` (slowloris), and keygate goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_sent_too_slowly_is_dropped() {
    use tokio::io::AsyncWriteExt;
    let files = files("slow-head", "header_read_timeout = \"300ms\"").await;
    let kg = Process::start(&files.config).await;
    let mut s = tokio::net::TcpStream::connect(kg.proxy).await.unwrap();
    s.write_all(b"GET /live HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let answer = read_until_close(&mut s).await;
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "closed too early"
    );
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    assert_eq!(H1::connect(kg.proxy).await.send(probe()).await.status, 200);
    let (status, _) = kg.terminate().await;
    assert!(status.success());
}

/// A request head over `max_header_bytes` gets 431 and a close; smaller heads still pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_over_max_header_bytes_gets_431() {
    use tokio::io::AsyncWriteExt;
    let files = files("big-head", "max_header_bytes = 16384").await;
    let kg = Process::start(&files.config).await;
    let mut s = tokio::net::TcpStream::connect(kg.proxy).await.unwrap();
    let big = "a".repeat(20_000);
    let head = format!(
        "GET /live HTTP/1.1\r\nHost: x\r\nX-API-Key: {STATIC_SECRET}\r\nX-Big: {big}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let answer = read_until_close(&mut s).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");

    let fits = "a".repeat(8_000);
    let resp = H1::connect(kg.proxy)
        .await
        .send(request(
            "GET",
            PROBE,
            &[("x-api-key", STATIC_SECRET), ("x-fits", fits.as_str())],
            empty(),
        ))
        .await;
    assert_eq!(resp.status, 200);
    let (status, _) = kg.terminate().await;
    assert!(status.success());
}

/// `max_header_bytes` below hyper's smallest buffer is refused at load.
#[tokio::test]
async fn max_header_bytes_has_a_floor() {
    let files = files("big-head-floor", "max_header_bytes = 100").await;
    let err = keygate::load(&files.config).unwrap_err().to_string();
    assert!(
        err.contains("max_header_bytes: must be at least 8192"),
        "{err}"
    );
}

/// With `max_streams = 2`, a client's third concurrent HTTP/2 request waits (the client honours
/// the advertised limit) until one of the first two is answered; all three then succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streams_past_max_streams_wait_for_a_free_one() {
    let mut up = held_upstream().await;
    let files = Files::for_binary_with("max-streams", "max_streams = 2", Some(up.addr)).await;
    let kg = Process::start(&files.config).await;
    let h2 = H2::connect(kg.proxy).await;
    let authority = kg.proxy.to_string();
    // One exchange first, so the client has the server's SETTINGS (a stream opened before them
    // may be refused instead, which is also allowed).
    let warm = {
        let (mut h2, authority) = (h2.clone(), authority.clone());
        tokio::spawn(async move {
            h2.send(h2_request(
                "GET",
                &authority,
                PROBE,
                &[("x-api-key", STATIC_SECRET)],
                empty(),
            ))
            .await
        })
    };
    let release = tokio::time::timeout(Duration::from_secs(5), up.arrived.recv())
        .await
        .expect("the first request reaches the upstream")
        .unwrap();
    let _ = release.send(());
    assert_eq!(warm.await.unwrap().status, 200);
    let mut sent = Vec::new();
    for _ in 0..3 {
        let mut h2 = h2.clone();
        let authority = authority.clone();
        sent.push(tokio::spawn(async move {
            h2.send(h2_request(
                "GET",
                &authority,
                PROBE,
                &[("x-api-key", STATIC_SECRET)],
                empty(),
            ))
            .await
        }));
    }
    let arrive = async |up: &mut HeldUpstream| {
        tokio::time::timeout(Duration::from_secs(5), up.arrived.recv())
            .await
            .expect("a request reaches the upstream")
            .unwrap()
    };
    let first = arrive(&mut up).await;
    let _second = arrive(&mut up).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), up.arrived.recv())
            .await
            .is_err(),
        "a third stream was open at once"
    );
    let _ = first.send(());
    let third = arrive(&mut up).await;
    drop((_second, third));
    for s in sent {
        // Released or dropped by the upstream: either way answered, none refused or lost.
        let resp = s.await.unwrap();
        assert!(resp.status == 200 || resp.status == 502, "{}", resp.status);
    }
    let (status, _) = kg.terminate().await;
    assert!(status.success());
}
