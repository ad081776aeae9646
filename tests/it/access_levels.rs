//! Access levels: `access = "read-only"` and `paths` prefixes on whole segments (403 access_denied).

use std::net::SocketAddr;

use crate::harness::*;

const READER: &str = "kg_reader_YWNjZXNzVGVzdFJlYWRlcktleV8wMDAwMDAwMDE";
const WRITER: &str = "kg_writer_YWNjZXNzVGVzdFdyaXRlcktleV8wMDAwMDAwMDE";
const CONV: &str = "kg_conv_YWNjZXNzVGVzdENvbnZLZXlfMDAwMDAwMDAwMDAwMDE";
const CONV_READER: &str = "kg_convro_YWNjZXNzVGVzdENvbnZSZWFkZXJLZXlfMDAwMDE";

async fn gateway() -> (SocketAddr, Upstream) {
    let up = start_upstream("main").await;
    let config = format!(
        r#"
[[targets]]
name = "main"
upstream = "http://{}"

[[keys]]
id = "reader"
secret = "{READER}"
access = "read-only"

[[keys]]
id = "writer"
secret = "{WRITER}"
access = "read-write"

[[keys]]
id = "conv"
secret = "{CONV}"
paths = ["/conv", "/reports/2026"]

[[keys]]
id = "conv-reader"
secret = "{CONV_READER}"
access = "read-only"
paths = ["/conv"]
"#,
        up.addr
    );
    let addr = start_keygate(&config).await;
    (addr, up)
}

async fn call(addr: SocketAddr, method: &str, path: &str, secret: &str) -> Resp {
    let body = if matches!(method, "POST" | "PUT" | "PATCH") {
        full("{\"x\":1}")
    } else {
        empty()
    };
    H1::connect(addr)
        .await
        .send(request(method, path, &[("x-api-key", secret)], body))
        .await
}

#[tokio::test]
async fn read_only_allows_get_head_and_options() {
    let (addr, up) = gateway().await;
    for method in ["GET", "HEAD", "OPTIONS"] {
        let resp = call(addr, method, "/r", READER).await;
        assert_eq!(resp.status, 200, "{method}: {}", resp.text());
        assert_eq!(resp.header("x-upstream"), Some("main"), "{method}");
    }
    assert_eq!(up.hits(), 3);
}

#[tokio::test]
async fn read_only_refuses_every_other_method() {
    let (addr, up) = gateway().await;
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let resp = call(addr, method, "/r", READER).await;
        assert_problem(&resp, 403, "access_denied");
    }
    // An extension method is not a read either.
    let resp = call(addr, "PROPFIND", "/r", READER).await;
    assert_problem(&resp, 403, "access_denied");
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn read_write_allows_every_method() {
    let (addr, up) = gateway().await;
    for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
        let resp = call(addr, method, "/r", WRITER).await;
        assert_eq!(resp.echo().method, method);
    }
    assert_eq!(up.hits(), 5);
}

#[tokio::test]
async fn paths_allow_their_prefixes_on_whole_segments() {
    let (addr, up) = gateway().await;
    for path in [
        "/conv",
        "/conv/",
        "/conv/x",
        "/conv/x/y?page=2",
        "/reports/2026",
        "/reports/2026/11",
    ] {
        let echo = call(addr, "GET", path, CONV).await.echo();
        assert_eq!(echo.uri, path, "the path reaches the upstream unchanged");
    }
    for path in [
        "/conversions",
        "/conv2",
        "/con",
        "/",
        "/admin",
        "/reports",
        "/reports/2025",
        "/reports/20261",
        "/CONV",
    ] {
        let resp = call(addr, "GET", path, CONV).await;
        assert_problem(&resp, 403, "access_denied");
    }
    assert_eq!(up.hits(), 6);
}

#[tokio::test]
async fn paths_cannot_be_escaped_with_dot_segments_or_encodings() {
    let (addr, up) = gateway().await;
    for path in [
        "/conv/../admin",
        "/conv/./../admin",
        "/conv/..",
        "/conv/%2e%2e/admin",
        "/conv/%2E%2E/admin",
        "/conv/.%2e/admin",
        "/conv%2f..%2fadmin",
        "/conv/%2F..%2Fadmin",
        "/conv/..%5cadmin",
    ] {
        let resp = call(addr, "GET", path, CONV).await;
        assert_problem(&resp, 403, "access_denied");
    }
    // Sent byte for byte, in case a client library would tidy the path.
    for path in ["/conv/../admin", "/conv/%2e%2e/admin", "/conv/..\\admin"] {
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: {HOST}\r\nX-API-Key: {CONV}\r\nConnection: close\r\n\r\n"
        );
        let resp = raw_exchange(addr, head.as_bytes()).await;
        assert_ne!(resp.status, 200, "{path} must not pass");
        if resp.status == 403 {
            assert_problem(&resp, 403, "access_denied");
        }
    }
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn method_and_path_restrictions_combine() {
    let (addr, up) = gateway().await;
    assert_eq!(call(addr, "GET", "/conv/x", CONV_READER).await.status, 200);
    let resp = call(addr, "POST", "/conv/x", CONV_READER).await;
    assert_problem(&resp, 403, "access_denied");
    let resp = call(addr, "GET", "/admin", CONV_READER).await;
    assert_problem(&resp, 403, "access_denied");
    // A path-limited read-write key may write inside its paths.
    assert_eq!(call(addr, "DELETE", "/conv/x", CONV).await.status, 200);
    assert_eq!(up.hits(), 2);
}
