//! The admin API against a real keygate and real files: every endpoint, role and error, and its effect on the proxy.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::admin::*;
use crate::harness::*;

// --- keys: create, get, list -----------------------------------------------------------------

/// POST /v1/keys answers 201 with the secret once; the key works on the proxy right after the
/// 201; GET and list never show the secret or a hash and show exactly the key's fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_shows_the_secret_once_and_the_key_works_at_once() {
    let gw = Gateway::start("create").await;
    let api = gw.api();
    let body = json!({
        "id": "full",
        "name": "Full key",
        "consumer": "acme",
        "status": "active",
        "expires_at": "2030-01-01T00:00:00Z",
        "targets": ["main"],
        "allow_ips": ["127.0.0.1"],
        "access": "read-write",
        "paths": ["/live"],
        "rate_limit": "100/second",
    });
    let (created, secret) = api.create_key(body).await;
    // No sleep: the 201 means the proxy already knows the key.
    assert_admitted(gw.proxy, &secret, "full").await;

    assert_key_shape(&created, true);
    assert_generated_secret(&secret, "kg_");
    let prefix = created["prefix"].as_str().unwrap();
    assert!(
        prefix.starts_with("kg_") && prefix.len() > 3 && prefix.len() < secret.len() / 2,
        "{prefix}"
    );
    assert!(secret.starts_with(prefix), "{prefix} vs {secret}");
    assert_eq!(created["id"], "full");
    assert_eq!(created["name"], "Full key");
    assert_eq!(created["consumer"], "acme");
    assert_eq!(created["status"], "active");
    assert_eq!(created["expires_at"], "2030-01-01T00:00:00Z");
    assert_eq!(created["targets"], json!(["main"]));
    assert!(
        created["allow_ips"][0]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1"),
        "{created}"
    );
    assert_eq!(created["allow_ips"].as_array().unwrap().len(), 1);
    assert_eq!(created["access"], "read-write");
    assert_eq!(created["paths"], json!(["/live"]));
    assert_eq!(created["rate_limit"], "100/second");
    assert_eq!(created["managed"], true);
    let made = rfc3339(&created["created_at"]);
    let now = time::OffsetDateTime::now_utc();
    assert!(
        (now - made).whole_seconds().abs() < 120,
        "created_at {made} vs now {now}"
    );

    // GET: the same key, without the secret or any hash.
    let resp = api.get("/v1/keys/full").await;
    let shown = expect(&resp, 200);
    assert_key_shape(&shown, false);
    assert!(!resp.text().contains(&secret), "{}", resp.text());
    assert!(!resp.text().contains("sha256:"), "{}", resp.text());
    for field in KEY_FIELDS {
        if field != "last_used_at" {
            assert_eq!(shown[field], created[field], "{field}");
        }
    }
    // The list: the same, and the main-file key with managed = false.
    let resp = api.get("/v1/keys").await;
    let list = expect(&resp, 200);
    assert!(!resp.text().contains(&secret), "{}", resp.text());
    assert!(!resp.text().contains("sha256:"), "{}", resp.text());
    let items = list["items"].as_array().unwrap();
    for item in items {
        assert_key_shape(item, false);
    }
    assert_eq!(ids(items), ["full", STATIC_ID]);
    assert_eq!(items[1]["managed"], false);
    assert_eq!(list["next_after"], Value::Null);

    // The file keeps the hash, never the secret.
    let text = gw.files.keys_text();
    assert!(!text.contains(&secret), "{text}");
    assert!(text.contains(&keygate_hash(&secret)), "{text}");

    // Without an id, one is generated; without fields, the defaults.
    let (bare, bare_secret) = api.create_key(json!({})).await;
    assert_key_shape(&bare, true);
    let id = bare["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("key_"), "{id}");
    assert_eq!(bare["status"], "active");
    assert_eq!(bare["access"], "read-write");
    assert_eq!(bare["consumer"], Value::Null);
    assert_eq!(bare["expires_at"], Value::Null);
    assert_eq!(bare["last_used_at"], Value::Null);
    assert_eq!(bare["targets"], json!([]));
    assert_ne!(bare_secret, secret);
    assert_admitted(gw.proxy, &bare_secret, &id).await;
    assert_no_keygate_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_by_consumer_and_pages_with_limit_and_after() {
    let gw = Gateway::start("list").await;
    let api = gw.api();
    api.create_consumer(json!({"id": "globex"})).await;
    let mut acme = Vec::new();
    for i in 0..5 {
        let id = format!("acme-{i}");
        api.create_key(json!({"id": id, "consumer": "acme"})).await;
        acme.push(id);
    }
    for i in 0..2 {
        api.create_key(json!({"id": format!("globex-{i}"), "consumer": "globex"}))
            .await;
    }

    let list = expect(&gw.reader().get("/v1/keys?consumer=acme").await, 200);
    let items = list["items"].as_array().unwrap();
    assert_eq!(ids(items), acme);
    assert!(items.iter().all(|k| k["consumer"] == "acme"));
    let list = expect(&api.get("/v1/keys?consumer=globex").await, 200);
    assert_eq!(
        ids(list["items"].as_array().unwrap()),
        ["globex-0", "globex-1"]
    );

    // Pages of 3, by id, until next_after is null.
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    for _ in 0..10 {
        let path = match &after {
            None => "/v1/keys?limit=3".to_owned(),
            Some(a) => format!("/v1/keys?limit=3&after={a}"),
        };
        let page = expect(&api.get(&path).await, 200);
        let items = page["items"].as_array().unwrap().clone();
        assert!(items.len() <= 3, "{page}");
        pages += 1;
        match page["next_after"].as_str() {
            Some(next) => {
                assert_eq!(items.len(), 3, "a page before the last is full: {page}");
                assert_eq!(Some(next), items[2]["id"].as_str());
                after = Some(next.to_owned());
                all.extend(items);
            }
            None => {
                all.extend(items);
                break;
            }
        }
    }
    assert_eq!(pages, 3, "8 keys in pages of 3");
    let mut want: Vec<String> = acme.clone();
    want.extend([
        "globex-0".to_owned(),
        "globex-1".to_owned(),
        STATIC_ID.into(),
    ]);
    want.sort();
    assert_eq!(ids(&all), want);
    // The consumer filter pages too.
    let page = expect(
        &api.get("/v1/keys?consumer=acme&limit=2&after=acme-1").await,
        200,
    );
    assert_eq!(ids(page["items"].as_array().unwrap()), ["acme-2", "acme-3"]);
    assert_eq!(page["next_after"], "acme-3");

    assert_problem(&api.get("/v1/keys?consumer=nobody").await, 404, "not_found");
    for bad in [
        "/v1/keys?limit=0",
        "/v1/keys?limit=many",
        "/v1/keys?limit=100000",
    ] {
        assert_field_problem(&api.get(bad).await, "invalid_field", "limit");
    }
    assert_field_problem(
        &api.get("/v1/keys?colour=red").await,
        "invalid_field",
        "colour",
    );
    assert_no_keygate_panic();
}

// --- keys: patch, delete ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_changes_each_field_and_the_proxy_follows_at_once() {
    let gw = Gateway::start("patch").await;
    let api = gw.api();
    // No rate_limit yet: changing one rate to another is the ignored test below.
    let (_, secret) = api.create_key(json!({"id": "k", "name": "before"})).await;
    assert_admitted(gw.proxy, &secret, "k").await;

    let patched = expect(
        &api.patch(
            "/v1/keys/k",
            &json!({
                "name": "after",
                "expires_at": "2031-02-03T04:05:06Z",
                "rate_limit": "7/minute",
                "paths": ["/live", "/reports"],
                "allow_ips": ["127.0.0.0/8"],
            }),
        )
        .await,
        200,
    );
    assert_key_shape(&patched, false);
    assert_eq!(patched["name"], "after");
    assert_eq!(patched["expires_at"], "2031-02-03T04:05:06Z");
    assert_eq!(patched["rate_limit"], "7/minute");
    assert_eq!(patched["paths"], json!(["/live", "/reports"]));
    assert_eq!(patched["allow_ips"], json!(["127.0.0.0/8"]));
    assert_eq!(api.key("k").await, patched);
    let text = gw.files.keys_text();
    assert!(
        text.contains("name = \"after\"") && text.contains("7/minute"),
        "{text}"
    );

    // status inactive: refused at once, then active again.
    let off = expect(
        &api.patch("/v1/keys/k", &json!({"status": "inactive"}))
            .await,
        200,
    );
    assert_eq!(off["status"], "inactive");
    assert_refused(gw.proxy, &secret, "key_inactive").await;
    expect(
        &api.patch("/v1/keys/k", &json!({"status": "active"})).await,
        200,
    );
    assert_admitted(gw.proxy, &secret, "k").await;

    // access read-only: a POST is refused.
    let ro = expect(
        &api.patch("/v1/keys/k", &json!({"access": "read-only"}))
            .await,
        200,
    );
    assert_eq!(ro["access"], "read-only");
    let post = H1::connect(gw.proxy)
        .await
        .send(request("POST", PROBE, &[("x-api-key", &secret)], full("x")))
        .await;
    assert_problem(&post, 403, "access_denied");
    assert_admitted(gw.proxy, &secret, "k").await;

    // paths: outside them is refused.
    assert_problem(
        &call_path(gw.proxy, "/elsewhere", &secret).await,
        403,
        "access_denied",
    );

    // targets: bound to "other", the main target refuses it.
    let t = expect(
        &api.patch("/v1/keys/k", &json!({"targets": ["other"]}))
            .await,
        200,
    );
    assert_eq!(t["targets"], json!(["other"]));
    assert_refused(gw.proxy, &secret, "target_not_allowed").await;
    expect(&api.patch("/v1/keys/k", &json!({"targets": []})).await, 200);
    assert_admitted(gw.proxy, &secret, "k").await;

    // allow_ips elsewhere: refused from 127.0.0.1.
    expect(
        &api.patch("/v1/keys/k", &json!({"allow_ips": ["192.0.2.0/24"]}))
            .await,
        200,
    );
    assert_refused(gw.proxy, &secret, "ip_not_allowed").await;
    expect(
        &api.patch("/v1/keys/k", &json!({"allow_ips": []})).await,
        200,
    );

    // expires_at in the past: expired; null clears it.
    expect(
        &api.patch("/v1/keys/k", &json!({"expires_at": "2001-01-01T00:00:00Z"}))
            .await,
        200,
    );
    assert_refused(gw.proxy, &secret, "key_expired").await;
    let cleared = expect(
        &api.patch(
            "/v1/keys/k",
            &json!({"expires_at": null, "name": null, "rate_limit": null, "paths": []}),
        )
        .await,
        200,
    );
    assert_eq!(cleared["expires_at"], Value::Null);
    assert_eq!(cleared["name"], Value::Null);
    assert_eq!(cleared["rate_limit"], Value::Null);
    assert_eq!(cleared["paths"], json!([]));
    assert_eq!(cleared["allow_ips"], json!([]));
    assert_eq!(cleared["targets"], json!([]));
    assert_admitted(gw.proxy, &secret, "k").await;
    let text = gw.files.keys_text();
    assert!(
        !text.contains("rate_limit") && !text.contains("expires_at"),
        "{text}"
    );

    // An empty patch changes nothing. `last_used_at` is left out of the comparison: the request
    // admitted since `cleared` was read moves it when the second has turned in between.
    let mut unchanged = expect(&api.patch("/v1/keys/k", &json!({})).await, 200);
    let mut before = cleared.clone();
    for v in [&mut unchanged, &mut before] {
        v.as_object_mut().unwrap().remove("last_used_at");
    }
    assert_eq!(unchanged, before);
    assert_no_keygate_panic();
}

/// Changing a key's (or a consumer's) rate_limit from one rate to another answers 200 and the new
/// rate is in force. Runs the real binary: the bug hangs keygate's publish for good, which in
/// process would hang the test's runtime too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_from_one_rate_limit_to_another_answers_and_applies() {
    let files = Files::for_binary("rate-change", Some(INITIAL_KEYS)).await;
    let kg = Process::start(&files.config).await;
    let api = kg.api();
    let (_, secret) = api
        .create_key(json!({"id": "metered", "rate_limit": "5/second"}))
        .await;
    assert_admitted(kg.proxy, &secret, "metered").await;

    let answer = try_send(
        kg.admin,
        ADMIN_SECRET,
        "PATCH",
        "/v1/keys/metered",
        r#"{"rate_limit":"1/minute"}"#,
    )
    .await;
    let (status, body) =
        answer.expect("PATCH rate_limit 5/second -> 1/minute: no answer within 10 s");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    // The new rate (a burst of 1 per minute) is in force.
    assert_admitted(kg.proxy, &secret, "metered").await;
    assert_problem(&call(kg.proxy, &secret).await, 429, "rate_limited");

    api.create_consumer(json!({"id": "metered-c", "rate_limit": "5/second"}))
        .await;
    let answer = try_send(
        kg.admin,
        ADMIN_SECRET,
        "PATCH",
        "/v1/consumers/metered-c",
        r#"{"rate_limit":"1/minute"}"#,
    )
    .await;
    let (status, body) = answer.expect("consumer rate_limit change: no answer within 10 s");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (status, log) = kg.terminate().await;
    assert!(status.success(), "{status}: {log:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_key_is_refused_right_after_the_204() {
    let (gw, api, secret) = Gateway::start_with_key("delete", "doomed").await;
    let (_, kept) = api.create_key(json!({"id": "kept"})).await;
    assert_admitted(gw.proxy, &secret, "doomed").await;

    let resp = api.delete("/v1/keys/doomed").await;
    assert_eq!(resp.status.as_u16(), 204, "{}", resp.text());
    assert!(resp.body.is_empty());
    // No sleep: refused at once.
    assert_refused(gw.proxy, &secret, "key_invalid").await;
    assert_admitted(gw.proxy, &kept, "kept").await;
    assert_problem(&api.get("/v1/keys/doomed").await, 404, "not_found");
    assert_problem(&api.delete("/v1/keys/doomed").await, 404, "not_found");
    let text = gw.files.keys_text();
    assert!(!text.contains("doomed") && text.contains("kept"), "{text}");
    assert_no_keygate_panic();
}

// --- keys: rotate ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_without_grace_refuses_the_old_secret_at_once() {
    let gw = Gateway::start("rotate-0").await;
    let api = gw.api();
    let (created, old) = api.create_key(json!({"id": "r", "name": "rotating"})).await;

    let resp = api.rotate("r", 0).await;
    let rotated = expect(&resp, 200);
    assert_key_shape(&rotated, true);
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert!(new.starts_with(rotated["prefix"].as_str().unwrap()));
    assert_eq!(rotated["name"], "rotating");
    assert_eq!(rotated["created_at"], created["created_at"]);
    assert_refused(gw.proxy, &old, "key_invalid").await;
    assert_admitted(gw.proxy, &new, "r").await;

    // No body at all: grace 0 too.
    let resp = api.send("POST", "/v1/keys/r/rotate", None).await;
    let newest = expect(&resp, 200)["secret"].as_str().unwrap().to_owned();
    assert_refused(gw.proxy, &new, "key_invalid").await;
    assert_admitted(gw.proxy, &newest, "r").await;

    let shown = api.get("/v1/keys/r").await;
    assert!(!shown.text().contains("sha256:") && !shown.text().contains(&newest));
    let text = gw.files.keys_text();
    assert!(!text.contains("previous_hash"), "{text}");
    assert!(!text.contains(&newest), "{text}");
    assert_no_keygate_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_with_grace_keeps_both_secrets_working() {
    let (gw, api, old) = Gateway::start_with_key("rotate-60", "r").await;
    let resp = api.rotate("r", 60).await;
    let new = expect(&resp, 200)["secret"].as_str().unwrap().to_owned();
    assert_admitted(gw.proxy, &old, "r").await;
    assert_admitted(gw.proxy, &new, "r").await;
    let text = gw.files.keys_text();
    assert!(
        text.contains("previous_hash") && text.contains("previous_expires_at"),
        "{text}"
    );
    let shown = api.get("/v1/keys/r").await;
    assert!(!shown.text().contains("sha256:"), "{}", shown.text());
    assert_key_shape(&shown.json(), false);

    // A second rotation without grace ends both older secrets.
    let resp = api.post("/v1/keys/r/rotate", &json!({})).await;
    let third = expect(&resp, 200)["secret"].as_str().unwrap().to_owned();
    assert_refused(gw.proxy, &old, "key_invalid").await;
    assert_refused(gw.proxy, &new, "key_invalid").await;
    assert_admitted(gw.proxy, &third, "r").await;

    // A grace period ends by itself: the old secret stops, the new one goes on.
    let (_, short_old) = api.create_key(json!({"id": "short"})).await;
    let resp = api.rotate("short", 2).await;
    let short_new = expect(&resp, 200)["secret"].as_str().unwrap().to_owned();
    until_outcome(gw.proxy, &short_old, 403, "key_invalid").await;
    assert_admitted(gw.proxy, &short_new, "short").await;
    assert_no_keygate_panic();
}

// --- allow_ips -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_allow_ips_are_added_and_removed_by_percent_encoded_cidr() {
    let (gw, api, secret) = Gateway::start_with_key("key-ips", "k").await;

    let k = expect(
        &api.post("/v1/keys/k/allow_ips", &json!({"cidr": "10.0.0.0/8"}))
            .await,
        200,
    );
    assert_key_shape(&k, false);
    assert_eq!(k["allow_ips"], json!(["10.0.0.0/8"]));
    assert_refused(gw.proxy, &secret, "ip_not_allowed").await;

    let k = expect(
        &api.post("/v1/keys/k/allow_ips", &json!({"cidr": "127.0.0.1"}))
            .await,
        200,
    );
    assert_eq!(k["allow_ips"].as_array().unwrap().len(), 2, "{k}");
    assert_admitted(gw.proxy, &secret, "k").await;
    // Adding one that is there already changes nothing.
    let again = expect(
        &api.post("/v1/keys/k/allow_ips", &json!({"cidr": "10.0.0.0/8"}))
            .await,
        200,
    );
    assert_eq!(again["allow_ips"], k["allow_ips"]);

    let k = expect(&api.delete("/v1/keys/k/allow_ips/10.0.0.0%2F8").await, 200);
    assert_eq!(k["allow_ips"].as_array().unwrap().len(), 1, "{k}");
    assert!(
        k["allow_ips"][0].as_str().unwrap().starts_with("127.0.0.1"),
        "{k}"
    );
    assert!(!gw.files.keys_text().contains("10.0.0.0/8"));
    assert_admitted(gw.proxy, &secret, "k").await;

    // Only 192.0.2.1 left: refused from here; removed (bare address): open again.
    expect(
        &api.post("/v1/keys/k/allow_ips", &json!({"cidr": "192.0.2.1"}))
            .await,
        200,
    );
    expect(
        &api.delete("/v1/keys/k/allow_ips/127.0.0.1%2F32").await,
        200,
    );
    assert_refused(gw.proxy, &secret, "ip_not_allowed").await;
    let k = expect(&api.delete("/v1/keys/k/allow_ips/192.0.2.1").await, 200);
    assert_eq!(k["allow_ips"], json!([]));
    assert_admitted(gw.proxy, &secret, "k").await;

    // Not in the list, not an address, not a key.
    assert_field_problem(
        &api.delete("/v1/keys/k/allow_ips/10.0.0.0%2F8").await,
        "invalid_field",
        "allow_ips",
    );
    assert_field_problem(
        &api.post("/v1/keys/k/allow_ips", &json!({"cidr": "10.0.0.0/33"}))
            .await,
        "invalid_field",
        "allow_ips",
    );
    assert_problem(
        &api.post("/v1/keys/nope/allow_ips", &json!({"cidr": "10.0.0.1"}))
            .await,
        404,
        "not_found",
    );
    assert_problem(
        &api.delete("/v1/keys/nope/allow_ips/10.0.0.1").await,
        404,
        "not_found",
    );
    assert_no_keygate_panic();
}

// --- allow_origins ---------------------------------------------------------------------------

/// `allow_origins` on a key and a consumer: created, patched (kept normalised), cleared with
/// `[]`, refused with the field when malformed; the proxy follows at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_origins_are_set_patched_and_cleared_on_keys_and_consumers() {
    let gw = Gateway::start("origins").await;
    let api = gw.api();
    let (created, secret) = api
        .create_key(json!({"id": "web", "allow_origins": ["HTTPS://Shop.Example.com:443", "https://*.example.com"]}))
        .await;
    assert_key_shape(&created, true);
    assert_eq!(
        created["allow_origins"],
        json!(["https://shop.example.com", "https://*.example.com"])
    );
    assert_refused(gw.proxy, &secret, "origin_not_allowed").await;
    let from = |origin: &'static str| {
        let (proxy, secret) = (gw.proxy, secret.clone());
        async move {
            get(
                proxy,
                PROBE,
                &[("x-api-key", secret.as_str()), ("origin", origin)],
            )
            .await
        }
    };
    assert_eq!(from("https://a.example.com").await.status, 200);
    let k = expect(
        &api.patch(
            "/v1/keys/web",
            &json!({"allow_origins": ["http://localhost:5173"]}),
        )
        .await,
        200,
    );
    assert_eq!(k["allow_origins"], json!(["http://localhost:5173"]));
    assert_problem(
        &from("https://a.example.com").await,
        403,
        "origin_not_allowed",
    );
    assert_eq!(from("http://localhost:5173").await.status, 200);
    assert!(
        gw.files
            .keys_text()
            .contains("allow_origins = [\"http://localhost:5173\"]")
    );
    let k = expect(
        &api.patch("/v1/keys/web", &json!({"allow_origins": []}))
            .await,
        200,
    );
    assert_eq!(k["allow_origins"], json!([]));
    assert_admitted(gw.proxy, &secret, "web").await;
    for bad in [
        "shop.example.com",
        "https://a.com/path",
        "https://a.*.com",
        "null",
    ] {
        assert_field_problem(
            &api.patch("/v1/keys/web", &json!({"allow_origins": [bad]}))
                .await,
            "invalid_field",
            "allow_origins",
        );
    }

    // One at a time, as allow_ips: added normalised and once, removed however it is written.
    let path = "/v1/keys/web/allow_origins";
    let k = expect(
        &api.post(path, &json!({"origin": "HTTPS://A.example.com:443"}))
            .await,
        200,
    );
    assert_eq!(k["allow_origins"], json!(["https://a.example.com"]));
    let again = expect(
        &api.post(path, &json!({"origin": "https://a.example.com"}))
            .await,
        200,
    );
    assert_eq!(again["allow_origins"], k["allow_origins"]);
    assert_refused(gw.proxy, &secret, "origin_not_allowed").await;
    let k = expect(
        &api.delete(&format!("{path}/https%3A%2F%2FA.Example.com%3A443"))
            .await,
        200,
    );
    assert_eq!(k["allow_origins"], json!([]));
    assert_admitted(gw.proxy, &secret, "web").await;
    assert_field_problem(
        &api.delete(&format!("{path}/https%3A%2F%2Fa.example.com"))
            .await,
        "invalid_field",
        "allow_origins",
    );
    assert_field_problem(
        &api.post(path, &json!({"origin": "https://a.com/x"})).await,
        "invalid_field",
        "allow_origins",
    );

    // A consumer's list applies to its keys.
    let c = api
        .create_consumer(json!({"id": "shops", "allow_origins": ["https://shop.example.com"]}))
        .await;
    assert_eq!(c["allow_origins"], json!(["https://shop.example.com"]));
    let (_, owned) = api
        .create_key(json!({"id": "owned", "consumer": "shops"}))
        .await;
    assert_refused(gw.proxy, &owned, "origin_not_allowed").await;
    let c = expect(
        &api.patch("/v1/consumers/shops", &json!({"allow_origins": []}))
            .await,
        200,
    );
    assert_eq!(c["allow_origins"], json!([]));
    assert_admitted(gw.proxy, &owned, "owned").await;
    let c = expect(
        &api.post(
            "/v1/consumers/shops/allow_origins",
            &json!({"origin": "https://*.example.com"}),
        )
        .await,
        200,
    );
    assert_eq!(c["allow_origins"], json!(["https://*.example.com"]));
    assert_refused(gw.proxy, &owned, "origin_not_allowed").await;
    let c = expect(
        &api.delete("/v1/consumers/shops/allow_origins/https%3A%2F%2F*.example.com")
            .await,
        200,
    );
    assert_eq!(c["allow_origins"], json!([]));
    assert_field_problem(
        &api.post(
            "/v1/consumers",
            &json!({"id": "bad", "allow_origins": ["ftp:/x"]}),
        )
        .await,
        "invalid_field",
        "allow_origins",
    );
    assert_no_keygate_panic();
}

// --- consumers -------------------------------------------------------------------------------

#[track_caller]
fn assert_consumer_shape(c: &Value) {
    let mut got: Vec<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
    got.sort_unstable();
    assert_eq!(got, CONSUMER_FIELDS, "fields of {c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_are_created_listed_patched_and_deleted() {
    let gw = Gateway::start("consumers").await;
    let api = gw.api();
    let created = api
        .create_consumer(json!({
            "id": "globex",
            "name": "Globex",
            "targets": ["main"],
            "rate_limit": "100/minute",
            "max_keys": 3,
        }))
        .await;
    assert_consumer_shape(&created);
    assert_eq!(created["id"], "globex");
    assert_eq!(created["name"], "Globex");
    assert_eq!(created["targets"], json!(["main"]));
    assert_eq!(created["rate_limit"], "100/minute");
    assert_eq!(created["max_keys"], 3);
    assert_eq!(created["keys"], 0);
    assert_eq!(created["managed"], true);
    rfc3339(&created["created_at"]);
    assert_eq!(
        expect(&gw.reader().get("/v1/consumers/globex").await, 200),
        created
    );

    // The list: acme (keys file), globex, house (main file, managed = false), by id; paged.
    let list = expect(&api.get("/v1/consumers").await, 200);
    let items = list["items"].as_array().unwrap();
    assert_eq!(ids(items), ["acme", "globex", HOUSE_CONSUMER]);
    items.iter().for_each(assert_consumer_shape);
    assert_eq!(items[2]["managed"], false);
    let page = expect(&api.get("/v1/consumers?limit=2").await, 200);
    assert_eq!(ids(page["items"].as_array().unwrap()), ["acme", "globex"]);
    assert_eq!(page["next_after"], "globex");
    let page = expect(&api.get("/v1/consumers?limit=2&after=globex").await, 200);
    assert_eq!(ids(page["items"].as_array().unwrap()), [HOUSE_CONSUMER]);
    assert_eq!(page["next_after"], Value::Null);

    // A key of globex: the consumer's restrictions apply on the proxy.
    let (_, secret) = api
        .create_key(json!({"id": "g1", "consumer": "globex"}))
        .await;
    assert_admitted(gw.proxy, &secret, "g1").await;
    assert_eq!(
        expect(&api.get("/v1/consumers/globex").await, 200)["keys"],
        1
    );
    let patched = expect(
        &api.patch(
            "/v1/consumers/globex",
            &json!({"name": "Globex Inc", "targets": ["other"], "rate_limit": null}),
        )
        .await,
        200,
    );
    assert_consumer_shape(&patched);
    assert_eq!(patched["name"], "Globex Inc");
    assert_eq!(patched["targets"], json!(["other"]));
    assert_eq!(patched["rate_limit"], Value::Null);
    assert_refused(gw.proxy, &secret, "target_not_allowed").await;
    expect(
        &api.patch("/v1/consumers/globex", &json!({"targets": []}))
            .await,
        200,
    );
    assert_admitted(gw.proxy, &secret, "g1").await;

    // allow_ips on the consumer, removed by percent-encoded CIDR.
    let c = expect(
        &api.post(
            "/v1/consumers/globex/allow_ips",
            &json!({"cidr": "10.0.0.0/8"}),
        )
        .await,
        200,
    );
    assert_eq!(c["allow_ips"], json!(["10.0.0.0/8"]));
    assert_refused(gw.proxy, &secret, "ip_not_allowed").await;
    let c = expect(
        &api.delete("/v1/consumers/globex/allow_ips/10.0.0.0%2F8")
            .await,
        200,
    );
    assert_eq!(c["allow_ips"], json!([]));
    assert_admitted(gw.proxy, &secret, "g1").await;
    assert_field_problem(
        &api.post(
            "/v1/consumers/globex/allow_ips",
            &json!({"cidr": "10.0.0.0/99"}),
        )
        .await,
        "invalid_field",
        "allow_ips",
    );
    assert_field_problem(
        &api.delete("/v1/consumers/globex/allow_ips/10.0.0.0%2F8")
            .await,
        "invalid_field",
        "allow_ips",
    );

    // A consumer that owns keys cannot go; once its key is gone, it can.
    assert_problem(
        &api.delete("/v1/consumers/globex").await,
        409,
        "consumer_in_use",
    );
    assert_eq!(api.delete("/v1/keys/g1").await.status.as_u16(), 204);
    let resp = api.delete("/v1/consumers/globex").await;
    assert_eq!(resp.status.as_u16(), 204, "{}", resp.text());
    assert_problem(&api.get("/v1/consumers/globex").await, 404, "not_found");
    assert_problem(&api.delete("/v1/consumers/globex").await, 404, "not_found");
    assert_problem(
        &api.patch("/v1/consumers/globex", &json!({"name": "x"}))
            .await,
        404,
        "not_found",
    );
    assert!(!gw.files.keys_text().contains("globex"));

    // Ids are unique; main-file consumers are read-only.
    assert_problem(
        &api.post("/v1/consumers", &json!({"id": "acme"})).await,
        409,
        "id_taken",
    );
    assert_problem(
        &api.post("/v1/consumers", &json!({"id": HOUSE_CONSUMER}))
            .await,
        409,
        "id_taken",
    );
    assert_problem(
        &api.patch(
            &format!("/v1/consumers/{HOUSE_CONSUMER}"),
            &json!({"name": "x"}),
        )
        .await,
        409,
        "consumer_read_only",
    );
    assert_problem(
        &api.delete(&format!("/v1/consumers/{HOUSE_CONSUMER}")).await,
        409,
        "consumer_read_only",
    );
    assert_no_keygate_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_keys_refuses_one_key_too_many() {
    let gw = Gateway::start("max-keys").await;
    let api = gw.api();
    api.create_consumer(json!({"id": "small", "max_keys": 2}))
        .await;
    api.create_key(json!({"id": "s1", "consumer": "small"}))
        .await;
    api.create_key(json!({"id": "s2", "consumer": "small"}))
        .await;
    let before = gw.files.keys_bytes();
    let p = assert_problem(
        &api.post("/v1/keys", &json!({"id": "s3", "consumer": "small"}))
            .await,
        409,
        "key_limit_reached",
    );
    assert!(p["detail"].as_str().unwrap().contains("small"), "{p}");
    assert_eq!(p["field"], "consumer", "{p}");
    assert_eq!(
        gw.files.keys_bytes(),
        before,
        "a refused key wrote the file"
    );
    assert_problem(&api.get("/v1/keys/s3").await, 404, "not_found");
    // Keys without that consumer are not limited.
    api.create_key(json!({"id": "free"})).await;
    // Raising the limit allows one more.
    expect(
        &api.patch("/v1/consumers/small", &json!({"max_keys": 3}))
            .await,
        200,
    );
    api.create_key(json!({"id": "s3", "consumer": "small"}))
        .await;
    assert_problem(
        &api.post("/v1/keys", &json!({"id": "s4", "consumer": "small"}))
            .await,
        409,
        "key_limit_reached",
    );
    // null removes the limit.
    let c = expect(
        &api.patch("/v1/consumers/small", &json!({"max_keys": null}))
            .await,
        200,
    );
    assert_eq!(c["max_keys"], Value::Null);
    assert_eq!(c["keys"], 3);
    api.create_key(json!({"id": "s4", "consumer": "small"}))
        .await;
    assert_no_keygate_panic();
}

// --- last_used_at ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_used_at_is_null_until_a_proxied_request_then_its_time() {
    let gw = Gateway::start("last-used").await;
    let api = gw.api();
    let (created, secret) = api.create_key(json!({"id": "u"})).await;
    assert_eq!(created["last_used_at"], Value::Null);
    assert_eq!(api.key("u").await["last_used_at"], Value::Null);
    assert_eq!(api.key(STATIC_ID).await["last_used_at"], Value::Null);

    // A refused request is no use.
    expect(
        &api.patch("/v1/keys/u", &json!({"status": "inactive"}))
            .await,
        200,
    );
    assert_refused(gw.proxy, &secret, "key_inactive").await;
    assert_eq!(api.key("u").await["last_used_at"], Value::Null);
    expect(
        &api.patch("/v1/keys/u", &json!({"status": "active"})).await,
        200,
    );

    let before = time::OffsetDateTime::now_utc();
    assert_admitted(gw.proxy, &secret, "u").await;
    assert_admitted(gw.proxy, STATIC_SECRET, STATIC_ID).await;
    let after = time::OffsetDateTime::now_utc();
    for id in ["u", STATIC_ID] {
        let used = rfc3339(&api.key(id).await["last_used_at"]);
        assert!(
            used >= before - time::Duration::seconds(1)
                && used <= after + time::Duration::seconds(1),
            "{id}: last_used_at {used} not within {before}..{after}"
        );
    }
    // A change to the key keeps it; the TOML file is never written for it.
    let text = gw.files.keys_text();
    let shown = expect(
        &api.patch("/v1/keys/u", &json!({"name": "renamed"})).await,
        200,
    );
    assert_ne!(shown["last_used_at"], Value::Null, "{shown}");
    assert!(!gw.files.keys_text().contains("last_used"), "{text}");
    assert_no_keygate_panic();
}

/// `last_used_at` of a used key never reads null again, not even while another change is being
/// published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_used_at_does_not_flicker_to_null_during_other_changes() {
    let (gw, api, secret) = Gateway::start_with_key("last-used-flicker", "used").await;
    api.create_key(json!({"id": "busy"})).await;
    assert_admitted(gw.proxy, &secret, "used").await;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let patcher = {
        let (api, done) = (api.clone(), done.clone());
        tokio::spawn(async move {
            for i in 0..300 {
                let name = json!({"name": format!("change {i}")});
                expect(&api.patch("/v1/keys/busy", &name).await, 200);
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let (api, done) = (api.clone(), done.clone());
        readers.spawn(async move {
            let (mut reads, mut nulls) = (0, 0);
            for _ in 0..100_000 {
                if done.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                reads += 1;
                if api.key("used").await["last_used_at"].is_null() {
                    nulls += 1;
                }
            }
            (reads, nulls)
        });
    }
    let (mut reads, mut nulls) = (0, 0);
    within("the readers", async {
        while let Some(r) = readers.join_next().await {
            let (r, n) = r.unwrap();
            reads += r;
            nulls += n;
        }
    })
    .await;
    within("the patches", patcher).await.unwrap();
    assert!(reads > 0);
    assert_eq!(
        nulls, 0,
        "last_used_at read null {nulls} times in {reads} reads"
    );
    assert_no_keygate_panic();
}

/// `last_used_at` is flushed at shutdown (SIGTERM) and read back at start: a restart of the real
/// binary on the same files shows the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_used_at_survives_a_sigterm_restart() {
    let files = Files::for_binary("last-used-restart", Some(INITIAL_KEYS)).await;
    let kg = Process::start(&files.config).await;
    let api = kg.api();
    let (_, secret) = api.create_key(json!({"id": "used"})).await;
    api.create_key(json!({"id": "idle"})).await;
    assert_admitted(kg.proxy, &secret, "used").await;
    let first = api.key("used").await["last_used_at"].clone();
    rfc3339(&first);

    // Let the periodic flush write the first use, then use the key again in a later second: only
    // the flush at shutdown can save that one (the next periodic flush is seconds away).
    let state = files.state_path();
    poll(
        Duration::from_secs(15),
        "the periodic last-used flush",
        async || {
            std::fs::read_to_string(&state)
                .ok()
                .filter(|t| t.contains("\"used\""))
        },
    )
    .await;
    let second = poll(Duration::from_secs(5), "a later last_used_at", async || {
        assert_admitted(kg.proxy, &secret, "used").await;
        let now = api.key("used").await["last_used_at"].clone();
        (now != first).then_some(now)
    })
    .await;
    assert!(rfc3339(&second) > rfc3339(&first));

    let (status, log) = kg.terminate().await;
    assert!(
        status.success(),
        "keygate exit after SIGTERM: {status}: {log:#?}"
    );
    let saved = std::fs::read_to_string(&state).unwrap();
    let secs = rfc3339(&second).unix_timestamp();
    assert!(saved.contains(&secs.to_string()), "{saved} lacks {secs}");

    let kg = Process::start(&files.config).await;
    let api = kg.api();
    assert_eq!(api.key("used").await["last_used_at"], second);
    assert_eq!(api.key("idle").await["last_used_at"], Value::Null);
    assert_admitted(kg.proxy, &secret, "used").await;
    kg.terminate_cleanly().await;
}

/// Both listeners on `127.0.0.1:0` are two different ephemeral ports, never the same one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_listeners_may_ask_for_port_0() {
    let files = Files::new(
        "port-0",
        Some("127.0.0.1:0"),
        "127.0.0.1:0",
        Some(INITIAL_KEYS),
    )
    .await;
    let kg = Process::start(&files.config).await;
    assert_ne!(kg.admin, kg.proxy);
    expect(&kg.api().get("/v1/keys").await, 200);
    assert_admitted(kg.proxy, STATIC_SECRET, STATIC_ID).await;
    kg.terminate_cleanly().await;
}

// --- roles and admin authentication ----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_keys_missing_wrong_or_read_only_are_refused() {
    let gw = Gateway::start("roles").await;
    let api = gw.api();
    let (_, secret) = api
        .create_key(json!({"id": "k", "allow_ips": ["127.0.0.1"]}))
        .await;
    let before = gw.files.keys_bytes();

    let nobody = Api::new(gw.admin, None);
    let wrong = Api::new(gw.admin, Some("kg_admin_wrong_secret_0123456789"));
    // A proxy key is no admin key, and an admin key is no proxy key.
    let proxy_key = Api::new(gw.admin, Some(&secret));
    for path in ["/v1/keys", "/v1/keys/k", "/v1/consumers", "/v1/nothing"] {
        assert_problem(&nobody.get(path).await, 403, "key_missing");
        assert_problem(&wrong.get(path).await, 403, "key_invalid");
        assert_problem(&proxy_key.get(path).await, 403, "key_invalid");
    }
    assert_problem(
        &Api::new(gw.admin, Some("")).get("/v1/keys").await,
        403,
        "key_missing",
    );
    assert_problem(
        &nobody.post("/v1/keys", &json!({"id": "x"})).await,
        403,
        "key_missing",
    );
    assert_problem(&wrong.delete("/v1/keys/k").await, 403, "key_invalid");
    assert_refused(gw.proxy, ADMIN_SECRET, "key_invalid").await;

    // The read role may list and get...
    let reader = gw.reader();
    for path in [
        "/v1/keys",
        "/v1/keys?consumer=acme",
        "/v1/keys/k",
        "/v1/consumers",
        "/v1/consumers/acme",
    ] {
        expect(&reader.get(path).await, 200);
    }
    // ...and change nothing.
    let writes: [(&str, &str, Option<&str>); 11] = [
        ("POST", "/v1/keys", Some(r#"{"id":"x"}"#)),
        ("PATCH", "/v1/keys/k", Some(r#"{"status":"inactive"}"#)),
        ("DELETE", "/v1/keys/k", None),
        ("POST", "/v1/keys/k/rotate", Some("{}")),
        (
            "POST",
            "/v1/keys/k/allow_ips",
            Some(r#"{"cidr":"10.0.0.1"}"#),
        ),
        ("DELETE", "/v1/keys/k/allow_ips/127.0.0.1", None),
        ("POST", "/v1/consumers", Some(r#"{"id":"x"}"#)),
        ("PATCH", "/v1/consumers/acme", Some(r#"{"name":"x"}"#)),
        ("DELETE", "/v1/consumers/acme", None),
        (
            "POST",
            "/v1/consumers/acme/allow_ips",
            Some(r#"{"cidr":"10.0.0.1"}"#),
        ),
        ("DELETE", "/v1/consumers/acme/allow_ips/10.0.0.0%2F8", None),
    ];
    for (method, path, body) in writes {
        let resp = reader.send(method, path, body).await;
        let p = assert_problem(&resp, 403, "role_insufficient");
        assert!(!p["detail"].as_str().unwrap().is_empty(), "{method} {path}");
    }
    assert_eq!(
        gw.files.keys_bytes(),
        before,
        "a refused change wrote the file"
    );
    assert_admitted(gw.proxy, &secret, "k").await;
    assert_eq!(api.key("k").await["status"], "active");
    assert_no_keygate_panic();
}

// --- errors ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn main_file_keys_are_shown_but_read_only() {
    let gw = Gateway::start("read-only").await;
    let api = gw.api();
    let before = gw.files.keys_bytes();
    let main_before = std::fs::read(&gw.files.config).unwrap();

    let shown = api.key(STATIC_ID).await;
    assert_key_shape(&shown, false);
    assert_eq!(shown["managed"], false);
    assert_eq!(shown["id"], STATIC_ID);

    let path = format!("/v1/keys/{STATIC_ID}");
    for resp in [
        api.patch(&path, &json!({"status": "inactive"})).await,
        api.patch(&path, &json!({})).await,
        api.delete(&path).await,
        api.post(&format!("{path}/rotate"), &json!({"grace_seconds": 0}))
            .await,
        api.post(&format!("{path}/allow_ips"), &json!({"cidr": "10.0.0.1"}))
            .await,
        api.delete(&format!("{path}/allow_ips/10.0.0.1")).await,
    ] {
        let p = assert_problem(&resp, 409, "key_read_only");
        assert!(p["detail"].as_str().unwrap().contains(STATIC_ID), "{p}");
    }
    assert_eq!(gw.files.keys_bytes(), before);
    assert_eq!(std::fs::read(&gw.files.config).unwrap(), main_before);
    assert_admitted(gw.proxy, STATIC_SECRET, STATIC_ID).await;
    assert_no_keygate_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_endpoints_and_methods_and_taken_ids() {
    let (gw, api, _) = Gateway::start_with_key("not-found", "k").await;
    for resp in [
        api.get("/v1/keys/nope").await,
        api.patch("/v1/keys/nope", &json!({"name": "x"})).await,
        api.delete("/v1/keys/nope").await,
        api.post("/v1/keys/nope/rotate", &json!({})).await,
        api.get("/v1/consumers/nope").await,
        api.get("/v1/nothing").await,
        api.get("/v2/keys").await,
        api.get("/console/nope.js").await,
    ] {
        assert_problem(&resp, 404, "not_found");
    }
    assert_problem(
        &api.send("PUT", "/v1/keys/k", Some("{}")).await,
        405,
        "method_not_allowed",
    );
    assert_problem(
        &api.post("/v1/keys/k", &json!({})).await,
        405,
        "method_not_allowed",
    );
    // The console's page is GET and HEAD only, like the probes.
    let put = api.send("PUT", "/", Some("{}")).await;
    assert_problem(&put, 405, "method_not_allowed");

    let before = gw.files.keys_bytes();
    for id in ["k", STATIC_ID] {
        let p = assert_problem(
            &api.post("/v1/keys", &json!({"id": id})).await,
            409,
            "id_taken",
        );
        assert!(p["detail"].as_str().unwrap().contains(id), "{p}");
    }
    assert_eq!(gw.files.keys_bytes(), before);
    assert_no_keygate_panic();
}

/// Bad bodies get 400 problem+json naming the field, and write nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_name_the_field_and_write_nothing() {
    let (gw, api, _) = Gateway::start_with_key("bad-bodies", "k").await;
    let before = gw.files.keys_bytes();
    let keys = "/v1/keys";

    // Unknown fields: invalid_body, the detail names the field.
    for (method, path, body, name) in [
        ("POST", keys, r#"{"id":"x","nmae":"typo"}"#, "nmae"),
        ("POST", keys, r#"{"secret":"mine"}"#, "secret"),
        ("PATCH", "/v1/keys/k", r#"{"hash":"sha256:00"}"#, "hash"),
        ("POST", "/v1/keys/k/allow_ips", r#"{"ip":"10.0.0.1"}"#, "ip"),
        ("POST", "/v1/keys/k/rotate", r#"{"grace":5}"#, "grace"),
        (
            "POST",
            "/v1/consumers",
            r#"{"id":"c","maxkeys":1}"#,
            "maxkeys",
        ),
    ] {
        let p = assert_problem(
            &api.send(method, path, Some(body)).await,
            400,
            "invalid_body",
        );
        let detail = p["detail"].as_str().unwrap();
        let field = p["field"].as_str().unwrap_or("");
        assert!(
            detail.contains(&format!("`{name}`")) || field == name,
            "{method} {path} {body}: the problem does not name {name}: {p}"
        );
    }

    // Values keygate checks: invalid_field with `field`.
    for (method, path, body, field) in [
        (
            "POST",
            keys,
            json!({"allow_ips": ["10.0.0.0/33"]}),
            "allow_ips",
        ),
        (
            "POST",
            keys,
            json!({"allow_ips": ["not-an-ip"]}),
            "allow_ips",
        ),
        (
            "POST",
            keys,
            json!({"expires_at": "tomorrow"}),
            "expires_at",
        ),
        (
            "POST",
            keys,
            json!({"expires_at": "2030-13-01T00:00:00Z"}),
            "expires_at",
        ),
        (
            "POST",
            keys,
            json!({"rate_limit": "5/fortnight"}),
            "rate_limit",
        ),
        (
            "POST",
            keys,
            json!({"rate_limit": "0/second"}),
            "rate_limit",
        ),
        ("POST", keys, json!({"targets": ["nowhere"]}), "targets"),
        ("POST", keys, json!({"paths": ["no-slash"]}), "paths"),
        ("POST", keys, json!({"consumer": "nobody"}), "consumer"),
        ("POST", keys, json!({"id": "bad id"}), "id"),
        (
            "PATCH",
            "/v1/keys/k",
            json!({"allow_ips": ["300.0.0.1"]}),
            "allow_ips",
        ),
        (
            "PATCH",
            "/v1/keys/k",
            json!({"expires_at": "soon"}),
            "expires_at",
        ),
        (
            "PATCH",
            "/v1/keys/k",
            json!({"rate_limit": "fast"}),
            "rate_limit",
        ),
        (
            "PATCH",
            "/v1/keys/k",
            json!({"targets": ["main", "nowhere"]}),
            "targets",
        ),
        (
            "POST",
            "/v1/keys/k/allow_ips",
            json!({"cidr": "10.0.0.0/33"}),
            "allow_ips",
        ),
        (
            "POST",
            "/v1/consumers",
            json!({"id": "c", "allow_ips": ["x"]}),
            "allow_ips",
        ),
        (
            "POST",
            "/v1/consumers",
            json!({"id": "c", "rate_limit": "1/week"}),
            "rate_limit",
        ),
        (
            "POST",
            "/v1/consumers",
            json!({"id": "c", "targets": ["nowhere"]}),
            "targets",
        ),
        ("POST", "/v1/consumers", json!({"id": "bad id"}), "id"),
        (
            "PATCH",
            "/v1/consumers/acme",
            json!({"allow_ips": ["1.2.3.4/40"]}),
            "allow_ips",
        ),
    ] {
        let resp = api.send(method, path, Some(&body.to_string())).await;
        let p = assert_field_problem(&resp, "invalid_field", field);
        assert!(!p["detail"].as_str().unwrap().is_empty());
    }

    // Wrong types: invalid_body, with the field.
    for (method, path, body, field) in [
        ("POST", keys, json!({"status": "paused"}), "status"),
        ("POST", keys, json!({"access": "admin"}), "access"),
        ("POST", keys, json!({"allow_ips": "10.0.0.1"}), "allow_ips"),
        ("PATCH", "/v1/keys/k", json!({"name": 5}), "name"),
        (
            "POST",
            "/v1/keys/k/rotate",
            json!({"grace_seconds": "soon"}),
            "grace_seconds",
        ),
        (
            "POST",
            "/v1/keys/k/rotate",
            json!({"grace_seconds": -1}),
            "grace_seconds",
        ),
        (
            "POST",
            "/v1/consumers",
            json!({"id": "c", "max_keys": -1}),
            "max_keys",
        ),
    ] {
        let resp = api.send(method, path, Some(&body.to_string())).await;
        assert_field_problem(&resp, "invalid_body", field);
    }

    // Not JSON, or not the right JSON.
    for (method, path, body) in [
        ("POST", keys, "{\"id\":"),
        ("POST", keys, "not json"),
        ("POST", keys, ""),
        ("POST", keys, "[1,2]"),
        ("PATCH", "/v1/keys/k", "{,}"),
        ("POST", "/v1/consumers", "{}"),
        ("POST", "/v1/keys/k/allow_ips", "{}"),
    ] {
        assert_problem(
            &api.send(method, path, Some(body)).await,
            400,
            "invalid_body",
        );
    }

    assert_eq!(
        gw.files.keys_bytes(),
        before,
        "a refused change wrote the file"
    );
    assert_eq!(
        expect(&api.get("/v1/keys").await, 200)["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_no_keygate_panic();
}

/// Every error the admin API makes is problem+json with status, title, detail, code and a
/// request_id equal to X-Request-Id, which is kept when the caller sends one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_problem_json_with_the_request_id() {
    let gw = Gateway::start("problems").await;
    let mut h1 = H1::connect(gw.admin).await;
    let resp = h1
        .send(request(
            "GET",
            "/v1/keys/nope",
            &[("x-api-key", ADMIN_SECRET), ("x-request-id", "trace-me-42")],
            empty(),
        ))
        .await;
    let p = assert_problem(&resp, 404, "not_found");
    assert_eq!(p["request_id"], "trace-me-42");
    assert_eq!(p["title"], "Not Found");
    let resp = h1.send(request("GET", "/v1/keys", &[], empty())).await;
    let p = assert_problem(&resp, 403, "key_missing");
    assert_ne!(p["request_id"], "trace-me-42");
    // A success carries a request id too, and is not cached.
    let resp = gw.api().get("/v1/keys").await;
    assert!(resp.header("x-request-id").is_some_and(|v| !v.is_empty()));
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    assert_no_keygate_panic();
}

/// Wrong admin keys count against the caller's address like wrong API keys do: past
/// `failed_auth_limit`, even a good admin key from there gets 429 with Retry-After.
#[tokio::test]
async fn guessing_admin_keys_is_limited_per_address() {
    let g = Gateway::start("admin-guessing").await;
    // Lower the shared test config's generous limit, and add a key whose arrival shows that
    // the reload is in.
    let text = std::fs::read_to_string(&g.files.config).unwrap();
    let text = text.replace(
        "failed_auth_limit = \"10000/second\"",
        "failed_auth_limit = \"3/minute\"",
    ) + &format!(
        "\n[[keys]]\nid = \"probe\"\nhash = \"{}\"\n",
        keygate_hash("probe-secret")
    );
    let tmp = g.files.config.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &g.files.config).unwrap();
    until_outcome(g.proxy, "probe-secret", 200, "").await;

    // A missing key is not a guess.
    let nobody = Api::new(g.admin, None);
    for _ in 0..5 {
        assert_problem(&nobody.get("/v1/keys").await, 403, "key_missing");
    }
    let guesser = Api::new(g.admin, Some("not-an-admin-key"));
    for _ in 0..3 {
        assert_problem(&guesser.get("/v1/keys").await, 403, "key_invalid");
    }
    let blocked = g.api().get("/v1/keys").await;
    assert_problem(&blocked, 429, "too_many_failures");
    let retry: u64 = blocked
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!((1..=20).contains(&retry), "Retry-After {retry}");
}

// --- probes ----------------------------------------------------------------------------------

/// `/healthz` and `/readyz` answer load balancers and Kubernetes without a key and without any
/// secret in the answer; every other path still needs one, and only GET/HEAD are probes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_probes_need_no_key() {
    let files = Files::new(
        "probes",
        Some("127.0.0.1:0"),
        "127.0.0.1:0",
        Some(INITIAL_KEYS),
    )
    .await;
    let kg = Process::start(&files.config).await;
    let anon = Api::new(kg.admin, None);

    let health = anon.get("/healthz").await;
    assert_eq!(expect(&health, 200), json!({"status": "ok"}));
    assert_eq!(health.header("content-type"), Some("application/json"));

    // Polled: the process announces the proxy listener just before its workers run.
    let ready = poll(Duration::from_secs(5), "/readyz 200", async || {
        let r = anon.get("/readyz").await;
        (r.status == 200).then_some(r)
    })
    .await;
    let body = ready.json();
    assert_eq!(body["status"], "ready");
    assert!(body["generation"].as_u64().is_some(), "{body}");
    assert!(body["keys"].as_u64().unwrap() >= 1, "{body}");
    assert!(!ready.text().contains("sha256"), "{}", ready.text());

    assert_eq!(anon.send("HEAD", "/healthz", None).await.status, 200);
    assert_problem(
        &anon.send("POST", "/healthz", None).await,
        403,
        "key_missing",
    );
    assert_problem(&anon.get("/v1/keys").await, 403, "key_missing");
    expect(&kg.api().get("/v1/keys").await, 200);

    kg.terminate_cleanly().await;
}
