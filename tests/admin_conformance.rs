//! The admin API against HTTP and its own document, from outside: numbers out of range, bodies of
//! the wrong JSON type, 405s with `Allow`, and no panic ever reaching a response.

mod common;

use serde_json::json;

use common::admin::*;
use common::*;

/// Every endpoint that reads a JSON body.
const BODY_ENDPOINTS: [(&str, &str); 7] = [
    ("POST", "/v1/keys"),
    ("PATCH", "/v1/keys/k"),
    ("POST", "/v1/keys/k/rotate"),
    ("POST", "/v1/keys/k/allow_ips"),
    ("POST", "/v1/consumers"),
    ("PATCH", "/v1/consumers/acme"),
    ("POST", "/v1/consumers/acme/allow_ips"),
];

/// The reported case: a `grace_seconds` that overflows the clock is a 400 naming the field, not
/// a 500 with the panic's message; nothing is written and the key keeps its secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grace_beyond_the_clock_is_a_400_not_a_panic() {
    let gw = Gateway::start("grace-overflow").await;
    let api = gw.api();
    let (_, secret) = api.create_key(json!({"id": "k"})).await;
    let before = gw.files.keys_bytes();
    for grace in [
        json!(35009115257423436_u64),
        json!(u64::MAX),
        json!(1e300),
        json!(315_360_001),
    ] {
        let resp = api
            .post("/v1/keys/k/rotate", &json!({"grace_seconds": grace}))
            .await;
        let p = assert_field_problem(&resp, "invalid_field", "grace_seconds");
        assert!(!resp.text().contains("panic"), "{p}");
    }
    assert_eq!(gw.files.keys_bytes(), before, "a refused rotation wrote");
    assert_admitted(gw.proxy, &secret, "k").await;
    assert_no_keygate_panic();
}

/// The longest grace is accepted, and whole numbers count as integers however they are
/// written (`60.0`), as JSON Schema's `integer` says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_numbers_are_integers_up_to_their_maximum() {
    let gw = Gateway::start("grace-max").await;
    let api = gw.api();
    let (_, old) = api.create_key(json!({"id": "k"})).await;
    let resp = api
        .post("/v1/keys/k/rotate", &json!({"grace_seconds": 315_360_000}))
        .await;
    expect(&resp, 200);
    assert_admitted(gw.proxy, &old, "k").await;
    let resp = api
        .send(
            "POST",
            "/v1/keys/k/rotate",
            Some(r#"{"grace_seconds": 60.0}"#),
        )
        .await;
    expect(&resp, 200);
    let c = expect(
        &api.send(
            "POST",
            "/v1/consumers",
            Some(r#"{"id": "c", "max_keys": 3.0}"#),
        )
        .await,
        201,
    );
    assert_eq!(c["max_keys"], 3);
    let c = expect(
        &api.patch("/v1/consumers/c", &json!({"max_keys": 4294967295_u64}))
            .await,
        200,
    );
    assert_eq!(c["max_keys"], 4294967295_u64);
    for bad in [json!(4294967296_u64), json!(1e20)] {
        for resp in [
            api.post("/v1/consumers", &json!({"id": "d", "max_keys": bad}))
                .await,
            api.patch("/v1/consumers/c", &json!({"max_keys": bad}))
                .await,
        ] {
            assert_field_problem(&resp, "invalid_field", "max_keys");
        }
    }
    // Not whole, or below 0: not an integer at all.
    for bad in ["2.5", "-1", "-1.0"] {
        let body = format!(r#"{{"grace_seconds": {bad}}}"#);
        let resp = api.send("POST", "/v1/keys/k/rotate", Some(&body)).await;
        assert_field_problem(&resp, "invalid_body", "grace_seconds");
    }
    assert_no_keygate_panic();
}

/// A body that is JSON but not an object (`[]`, `1`, `"x"`, `null`, `true`) is a 400 on every
/// endpoint that takes a body; none is read as an empty change, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_an_object_is_a_400() {
    let gw = Gateway::start("wrong-json-type").await;
    let api = gw.api();
    api.create_key(json!({"id": "k"})).await;
    let before = gw.files.keys_bytes();
    for (method, path) in BODY_ENDPOINTS {
        for body in ["[]", "[null]", "1", "\"x\"", "null", "true", " []"] {
            let resp = api.send(method, path, Some(body)).await;
            let p = assert_problem(&resp, 400, "invalid_body");
            assert!(
                p["detail"].as_str().unwrap().contains("object"),
                "{method} {path} {body}: {p}"
            );
        }
    }
    assert_eq!(gw.files.keys_bytes(), before, "a refused body wrote");
    assert_no_keygate_panic();
}

/// A 405 lists the methods the path does support in `Allow` (RFC 9110 §15.5.6), on every
/// path; a path that is no endpoint at all is a 404, whatever the method.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_405_carries_allow_with_the_methods_of_its_path() {
    let gw = Gateway::start("allow").await;
    let api = gw.api();
    api.create_key(json!({"id": "k"})).await;
    let cases = [
        ("/healthz", "GET, HEAD", ["POST", "TRACE", "DELETE"]),
        ("/readyz", "GET, HEAD", ["PUT", "TRACE", "OPTIONS"]),
        ("/metrics", "GET, HEAD", ["POST", "TRACE", "PATCH"]),
        ("/v1/keys", "GET, POST", ["PUT", "TRACE", "DELETE"]),
        ("/v1/consumers", "GET, POST", ["PATCH", "TRACE", "DELETE"]),
        ("/v1/keys/k", "GET, PATCH, DELETE", ["POST", "PUT", "TRACE"]),
        (
            "/v1/consumers/acme",
            "GET, PATCH, DELETE",
            ["POST", "PUT", "OPTIONS"],
        ),
        ("/v1/keys/k/rotate", "POST", ["GET", "DELETE", "TRACE"]),
        ("/v1/keys/k/allow_ips", "POST", ["GET", "DELETE", "PUT"]),
        (
            "/v1/consumers/acme/allow_ips",
            "POST",
            ["GET", "DELETE", "PATCH"],
        ),
        (
            "/v1/keys/k/allow_ips/10.0.0.0%2F8",
            "DELETE",
            ["GET", "POST", "TRACE"],
        ),
        (
            "/v1/consumers/acme/allow_ips/10.0.0.1",
            "DELETE",
            ["GET", "PATCH", "PUT"],
        ),
    ];
    for (path, allow, methods) in cases {
        for method in methods {
            let resp = api.send(method, path, None).await;
            assert_problem(&resp, 405, "method_not_allowed");
            assert_eq!(resp.header("allow"), Some(allow), "{method} {path}");
        }
    }
    for path in [
        "/v1/consumers/acme/rotate",
        "/v1/keys/k/rotate/now",
        "/v1/keys/k/nothing",
    ] {
        for method in ["GET", "POST"] {
            let resp = api.send(method, path, None).await;
            assert_problem(&resp, 404, "not_found");
            assert_eq!(resp.header("allow"), None, "{method} {path}");
        }
    }
    assert_no_keygate_panic();
}

/// The admin API reads its key with the proxy's reader: the header twice or longer than 512
/// bytes is `key_invalid` before any lookup, as on the proxy, and the admin key given once
/// works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_key_is_read_like_the_proxy_reads_keys() {
    let gw = Gateway::start("admin-credential").await;
    let long = "k".repeat(513);
    for headers in [
        vec![("x-api-key", ADMIN_SECRET), ("x-api-key", ADMIN_SECRET)],
        vec![("x-api-key", long.as_str())],
    ] {
        let resp = H1::connect(gw.admin)
            .await
            .send(request("GET", "/v1/keys", &headers, empty()))
            .await;
        assert_problem(&resp, 403, "key_invalid");
        let proxied = H1::connect(gw.proxy)
            .await
            .send(request("GET", PROBE, &headers, empty()))
            .await;
        assert_problem(&proxied, 403, "key_invalid");
    }
    for headers in [vec![], vec![("x-api-key", "")]] {
        let resp = H1::connect(gw.admin)
            .await
            .send(request("GET", "/v1/keys", &headers, empty()))
            .await;
        assert_problem(&resp, 403, "key_missing");
    }
    expect(&gw.api().get("/v1/keys").await, 200);
    assert_no_keygate_panic();
}
