//! The admin API against HTTP and its own document, from outside: numbers out of range, bodies of
//! the wrong JSON type, 405s with `Allow`, and no panic ever reaching a response.

use serde_json::json;

use crate::harness::admin::*;
use crate::harness::*;

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
    let (gw, api, secret) = Gateway::start_with_key("grace-overflow", "k").await;
    let before = gw.files.keys_bytes();
    for grace in [
        json!(35009115257423436_u64),
        json!(u64::MAX),
        json!(1e300),
        json!(315_360_001),
    ] {
        let resp = api.rotate("k", grace).await;
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
    let (gw, api, old) = Gateway::start_with_key("grace-max", "k").await;
    let resp = api.rotate("k", 315_360_000).await;
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
    // The rotation's body is optional: none at all is the default, white space is not JSON
    // (schemathesis found `\n` accepted).
    let blank = api.send("POST", "/v1/keys/k/rotate", Some("\n")).await;
    assert_eq!(blank.status, 400, "{}", blank.text());
    assert_eq!(blank.json()["code"], "invalid_body");
    expect(&api.send("POST", "/v1/keys/k/rotate", None).await, 200);
    assert_no_keygate_panic();
}

/// A body that is JSON but not an object (`[]`, `1`, `"x"`, `null`, `true`) is a 400 on every
/// endpoint that takes a body; none is read as an empty change, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_an_object_is_a_400() {
    let (gw, api, _) = Gateway::start_with_key("wrong-json-type", "k").await;
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
    let (_gw, api, _) = Gateway::start_with_key("allow", "k").await;
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

/// Whether `body` is valid for the request schema `schema` of docs/admin-api.yaml.
fn document_allows(schema: &str, body: &serde_json::Value) -> bool {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/admin-api.yaml"))
        .unwrap();
    let spec: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
    let root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": spec["components"],
        "allOf": [{"$ref": format!("#/components/schemas/{schema}")}],
    });
    // Formats asserted too, as a validating client (and schemathesis) does.
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&root)
        .expect("the schema compiles")
        .is_valid(body)
}

/// An admin API operation that takes a body: the method, the path, the document's schema.
type Operation = (&'static str, &'static str, &'static str);
const NEW_KEY: Operation = ("POST", "/v1/keys", "NewKey");
const ROTATE: Operation = ("POST", "/v1/keys/k/rotate", "Rotate");
const KEY_PATCH: Operation = ("PATCH", "/v1/keys/k", "KeyPatch");
const NEW_CONSUMER: Operation = ("POST", "/v1/consumers", "NewConsumer");
const CONSUMER_PATCH: Operation = ("PATCH", "/v1/consumers/acme", "ConsumerPatch");
const CONSUMER_CIDR: Operation = ("POST", "/v1/consumers/acme/allow_ips", "Cidr");
const GRANT: Operation = ("POST", "/v1/keys/k/quota/grant", "QuotaGrant");
const RESET: Operation = ("POST", "/v1/keys/k/quota/reset", "QuotaReset");

/// docs/admin-api.yaml is exact: every body below is accepted by keygate exactly when the
/// document allows it (ids, IP and CIDR spellings, paths, rates, integers and their ranges,
/// `null` where it means nothing, unknown fields).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_and_the_server_agree_on_every_body() {
    let (_gw, api, _) = Gateway::start_with_key("document-exact", "k").await;
    let long_id = "i".repeat(128);
    let too_long_id = "i".repeat(129);
    let cases = vec![
        (NEW_KEY, json!({})),
        (NEW_KEY, json!({"id": long_id})),
        (NEW_KEY, json!({"id": too_long_id})),
        (NEW_KEY, json!({"id": ""})),
        (NEW_KEY, json!({"id": "a b"})),
        (NEW_KEY, json!({"id": "a.b_c:d@e-F9"})),
        (NEW_KEY, json!({"name": null})),
        (NEW_KEY, json!({"targets": null})),
        (NEW_KEY, json!({"status": null})),
        (NEW_KEY, json!({"unknown": 1})),
        (NEW_KEY, json!({"allow_ips": ["10.0.0.1"]})),
        (NEW_KEY, json!({"allow_ips": ["10.0.0.1/8"]})),
        (NEW_KEY, json!({"allow_ips": ["010.0.0.1"]})),
        (NEW_KEY, json!({"allow_ips": ["10.0.0.0/08"]})),
        (NEW_KEY, json!({"allow_ips": ["10.0.0.0/33"]})),
        (NEW_KEY, json!({"allow_ips": ["10.0.0.0/"]})),
        (NEW_KEY, json!({"allow_ips": ["::ffff:1.2.3.4"]})),
        (NEW_KEY, json!({"allow_ips": ["2001:db8::/128"]})),
        (NEW_KEY, json!({"allow_ips": ["2001:db8::/129"]})),
        (NEW_KEY, json!({"allow_ips": ["::1:2:3:4:5:6:7:8/64"]})),
        (NEW_KEY, json!({"allow_ips": ["fe80::1%eth0"]})),
        (NEW_KEY, json!({"paths": ["/reports/x"]})),
        (NEW_KEY, json!({"paths": ["/a b"]})),
        (NEW_KEY, json!({"paths": ["/a?b"]})),
        (NEW_KEY, json!({"paths": ["a"]})),
        (NEW_KEY, json!({"rate_limit": "5/s"})),
        (NEW_KEY, json!({"rate_limit": " +05 / hour "})),
        (NEW_KEY, json!({"rate_limit": "4294967295/m"})),
        (NEW_KEY, json!({"rate_limit": "4294967296/m"})),
        (NEW_KEY, json!({"rate_limit": "0/s"})),
        (NEW_KEY, json!({"rate_limit": "5/day"})),
        (NEW_KEY, json!({"expires_at": "2030-01-01T00:00:00Z"})),
        (NEW_KEY, json!({"expires_at": "2030-01-01"})),
        (ROTATE, json!({"grace_seconds": 0})),
        (ROTATE, json!({"grace_seconds": 60.0})),
        (ROTATE, json!({"grace_seconds": 315_360_000})),
        (ROTATE, json!({"grace_seconds": 315_360_001})),
        (ROTATE, json!({"grace_seconds": 2.5})),
        (ROTATE, json!({"grace_seconds": -1})),
        (ROTATE, json!({"grace_seconds": null})),
        (KEY_PATCH, json!({"name": null})),
        (KEY_PATCH, json!({"targets": null})),
        (KEY_PATCH, json!({"access": null})),
        (KEY_PATCH, json!({"rate_limit": null})),
        (NEW_KEY, json!({"quota": "1000/day"})),
        (NEW_KEY, json!({"quota": " _1_000 / mo "})),
        (NEW_KEY, json!({"quota": "9007199254740992/w"})),
        (NEW_KEY, json!({"quota": "9007199254740993/w"})),
        (NEW_KEY, json!({"quota": "0/day"})),
        (NEW_KEY, json!({"quota": "_/day"})),
        (NEW_KEY, json!({"quota": "+1/day"})),
        (NEW_KEY, json!({"quota": "5/minute"})),
        (NEW_KEY, json!({"quota": "5/Day"})),
        (NEW_KEY, json!({"quota": null})),
        (KEY_PATCH, json!({"quota": "10/hour"})),
        (GRANT, json!({"requests": 1})),
        (GRANT, json!({"requests": 1_099_511_627_776_u64})),
        (GRANT, json!({"requests": 1_099_511_627_777_u64})),
        (GRANT, json!({"requests": 0})),
        (GRANT, json!({"requests": 2.0})),
        (GRANT, json!({"requests": 2.5})),
        (GRANT, json!({"requests": -1})),
        (GRANT, json!({"requests": null})),
        (GRANT, json!({})),
        (RESET, json!({})),
        (RESET, json!({"requests": 1})),
        (KEY_PATCH, json!({"quota": null})),
        (
            NEW_CONSUMER,
            json!({"id": "c1", "max_keys": 4294967295_u64}),
        ),
        (
            NEW_CONSUMER,
            json!({"id": "c2", "max_keys": 4294967296_u64}),
        ),
        (NEW_CONSUMER, json!({"id": "c3", "max_keys": 1.0})),
        (NEW_CONSUMER, json!({"id": "c4", "max_keys": null})),
        (NEW_CONSUMER, json!({"id": "c5", "name": null})),
        (NEW_CONSUMER, json!({"name": "no id"})),
        (NEW_CONSUMER, json!({"id": "c6", "quota": "5/hour"})),
        (
            NEW_CONSUMER,
            json!({"id": "c7", "default_key": true, "max_keys": 0}),
        ),
        (
            NEW_CONSUMER,
            json!({"id": "c8", "default_key": true, "max_keys": 1}),
        ),
        (
            NEW_CONSUMER,
            json!({"id": "c9", "default_key": false, "max_keys": 0}),
        ),
        (CONSUMER_PATCH, json!({"quota": "1/week"})),
        (CONSUMER_PATCH, json!({"quota": null})),
        (CONSUMER_PATCH, json!({"max_keys": null})),
        (CONSUMER_PATCH, json!({"max_keys": 7})),
        (CONSUMER_PATCH, json!({"allow_ips": null})),
        (CONSUMER_CIDR, json!({"cidr": "192.0.2.0/24"})),
        (CONSUMER_CIDR, json!({"cidr": "192.0.2.0/024"})),
        (CONSUMER_CIDR, json!({"cidr": null})),
    ];
    let mut disagreements = Vec::new();
    for ((method, path, schema), body) in cases {
        let allowed = document_allows(schema, &body);
        let resp = api.send(method, path, Some(&body.to_string())).await;
        let accepted = resp.status.is_success();
        if accepted != allowed || (!accepted && resp.status != 400) {
            disagreements.push(format!(
                "{method} {path} {body}: the document {} it, keygate answered {}: {}",
                if allowed { "allows" } else { "forbids" },
                resp.status,
                resp.text()
            ));
        }
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");
    assert_no_keygate_panic();
}

/// `keygate keys rotate --grace-seconds` goes through the same store: a grace beyond the clock
/// is refused with the field named and a non-zero exit, not a panic, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rotate_command_refuses_a_grace_beyond_the_clock() {
    let files = Files::new("grace-command", None, "127.0.0.1:0", Some(INITIAL_KEYS)).await;
    cmd_json(&files.config, &["keys", "create", "--id", "k"]).await;
    let before = files.keys_bytes();
    let out = keygate_cmd(
        &files.config,
        &[
            "keys",
            "rotate",
            "k",
            "--grace-seconds",
            "35009115257423436",
        ],
    )
    .await;
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("grace_seconds"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(files.keys_bytes(), before);
}
