//! Access levels: `access = "read-only"` and `paths` prefixes on whole segments (403 access_denied).

use crate::harness::*;

async fn gateway() -> Gw {
    crate::harness::gateway()
        .key(
            key(
                "reader",
                "kg_reader_YWNjZXNzVGVzdFJlYWRlcktleV8wMDAwMDAwMDE",
            )
            .access("read-only"),
        )
        .key(
            key(
                "writer",
                "kg_writer_YWNjZXNzVGVzdFdyaXRlcktleV8wMDAwMDAwMDE",
            )
            .access("read-write"),
        )
        .key(
            key(
                "conv",
                "kg_conv_YWNjZXNzVGVzdENvbnZLZXlfMDAwMDAwMDAwMDAwMDE",
            )
            .paths(&["/conv", "/reports/2026"]),
        )
        .key(
            key(
                "conv-reader",
                "kg_convro_YWNjZXNzVGVzdENvbnZSZWFkZXJLZXlfMDAwMDE",
            )
            .access("read-only")
            .paths(&["/conv"]),
        )
        .start()
        .await
}

/// `method` on `path` with key `id`; a write carries a small JSON body.
async fn call(gw: &Gw, method: &str, path: &str, id: &str) -> Resp {
    let req = gw.request(method, path).key_of(id);
    if matches!(method, "POST" | "PUT" | "PATCH") {
        req.body("{\"x\":1}").send().await
    } else {
        req.send().await
    }
}

/// GETs each of `paths` with key `id`: each must be refused with 403 `access_denied`.
async fn assert_each_denied(gw: &Gw, id: &str, paths: &[&str]) {
    for path in paths {
        let resp = call(gw, "GET", path, id).await;
        assert_problem(&resp, 403, "access_denied");
    }
}

#[tokio::test]
async fn read_only_allows_get_head_and_options() {
    let gw = gateway().await;
    for method in ["GET", "HEAD", "OPTIONS"] {
        let resp = call(&gw, method, "/r", "reader").await;
        assert_eq!(resp.status, 200, "{method}: {}", resp.text());
        assert_eq!(resp.header("x-upstream"), Some("main"), "{method}");
    }
    assert_eq!(gw.hits(), 3);
}

#[tokio::test]
async fn read_only_refuses_every_other_method() {
    let gw = gateway().await;
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let resp = call(&gw, method, "/r", "reader").await;
        assert_problem(&resp, 403, "access_denied");
    }
    // An extension method is not a read either.
    let resp = call(&gw, "PROPFIND", "/r", "reader").await;
    assert_problem(&resp, 403, "access_denied");
    assert_eq!(gw.hits(), 0);
}

#[tokio::test]
async fn read_write_allows_every_method() {
    let gw = gateway().await;
    for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
        let resp = call(&gw, method, "/r", "writer").await;
        assert_eq!(resp.echo().method, method);
    }
    assert_eq!(gw.hits(), 5);
}

#[tokio::test]
async fn paths_allow_their_prefixes_on_whole_segments() {
    let gw = gateway().await;
    let inside = [
        "/conv",
        "/conv/",
        "/conv/x",
        "/conv/x/y?page=2",
        "/reports/2026",
        "/reports/2026/11",
    ];
    gw.assert_paths_reach_the_upstream_unchanged(gw.secret("conv"), &inside)
        .await;
    let outside = [
        "/conversions",
        "/conv2",
        "/con",
        "/",
        "/admin",
        "/reports",
        "/reports/2025",
        "/reports/20261",
        "/CONV",
    ];
    assert_each_denied(&gw, "conv", &outside).await;
    assert_eq!(gw.hits(), 6);
}

#[tokio::test]
async fn paths_cannot_be_escaped_with_dot_segments_or_encodings() {
    let gw = gateway().await;
    let escapes = [
        "/conv/../admin",
        "/conv/./../admin",
        "/conv/..",
        "/conv/%2e%2e/admin",
        "/conv/%2E%2E/admin",
        "/conv/.%2e/admin",
        "/conv%2f..%2fadmin",
        "/conv/%2F..%2Fadmin",
        "/conv/..%5cadmin",
    ];
    assert_each_denied(&gw, "conv", &escapes).await;
    // Sent byte for byte, in case a client library would tidy the path.
    let conv = gw.secret("conv");
    for path in ["/conv/../admin", "/conv/%2e%2e/admin", "/conv/..\\admin"] {
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: {HOST}\r\nX-API-Key: {conv}\r\nConnection: close\r\n\r\n"
        );
        let resp = raw_exchange(gw.addr, head.as_bytes()).await;
        gw.assert_no_secret(&resp);
        assert_ne!(resp.status, 200, "{path} must not pass");
        if resp.status == 403 {
            assert_problem(&resp, 403, "access_denied");
        }
    }
    assert_eq!(gw.hits(), 0);
}

#[tokio::test]
async fn method_and_path_restrictions_combine() {
    let gw = gateway().await;
    assert_eq!(call(&gw, "GET", "/conv/x", "conv-reader").await.status, 200);
    let resp = call(&gw, "POST", "/conv/x", "conv-reader").await;
    assert_problem(&resp, 403, "access_denied");
    let resp = call(&gw, "GET", "/admin", "conv-reader").await;
    assert_problem(&resp, 403, "access_denied");
    // A path-limited read-write key may write inside its paths.
    assert_eq!(call(&gw, "DELETE", "/conv/x", "conv").await.status, 200);
    assert_eq!(gw.hits(), 2);
}
