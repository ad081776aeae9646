//! The limits keygate puts on clients at the edge, each with a config key and a default
//! (`config/keygate.toml`), on the real binary.

mod common;

use std::time::Duration;

use common::admin::*;
use common::*;

/// Files whose `[server]` section starts with `lines`.
async fn files(name: &str, lines: &str) -> Files {
    let files = Files::for_binary(name, Some(INITIAL_KEYS)).await;
    let text = std::fs::read_to_string(&files.config).unwrap();
    let text = text.replace("[server]\n", &format!("[server]\n{lines}\n"));
    std::fs::write(&files.config, text).unwrap();
    files
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
