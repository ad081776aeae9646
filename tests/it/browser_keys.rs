//! Browser keys (issue 17): `allow_origins` on keys and consumers (403 `origin_not_allowed`),
//! and `[targets.cors]`: keygate answers a target's CORS preflights itself and labels its real
//! answers, refusals included, so that a page can read them. Most of it on the real binary; the
//! finer points on the in-process gateway; one real Chromium.

use http::StatusCode;
use serde_json::json;

use crate::harness::admin::*;
use crate::harness::browser::Browser;
use crate::harness::policy::{connect_from, ip};
use crate::harness::*;

const SHOP: &str = "https://shop.example.com";
const WEB_SECRET: &str = "kg_web_YnJvd3NlcktleVdlYlNlY3JldEZvclRlc3RzMDAwMDE";
const SHOP_SECRET: &str = "kg_shop_YnJvd3NlcktleVNob3BTZWNyZXRGb3JUZXN0czAwMDE";
const LIMITED_SECRET: &str = "kg_lim_YnJvd3NlcktleUxpbWl0ZWRTZWNyZXRGb3JUZXN0czE";
const PLAIN_SECRET: &str = "kg_plain_YnJvd3NlcktleVBsYWluU2VjcmV0Rm9yVGVzdHMwMQ";

/// The keys file of the binary tests: `web` for the shop's own origin, `shop-key` of a consumer
/// whose pages are any subdomain of example.com, `limited` (1/minute) for the shop, `plain`
/// without any origin list.
fn keys_file() -> String {
    format!(
        r#"{INITIAL_KEYS}
[[consumers]]
id = "shops"
allow_origins = ["https://*.example.com"]

[[keys]]
id = "web"
hash = "{web}"
allow_origins = ["{SHOP}", "http://localhost:5173"]

[[keys]]
id = "shop-key"
hash = "{shop}"
consumer = "shops"

[[keys]]
id = "limited"
hash = "{limited}"
allow_origins = ["{SHOP}"]
rate_limit = "1/minute"

[[keys]]
id = "plain"
hash = "{plain}"
"#,
        web = keygate_hash(WEB_SECRET),
        shop = keygate_hash(SHOP_SECRET),
        limited = keygate_hash(LIMITED_SECRET),
        plain = keygate_hash(PLAIN_SECRET),
    )
}

/// The binary on the admin tests' files with [`keys_file`], target `main` with `cors` (an
/// inline `[targets.cors]` table) when given, `other` (`/other`) never.
async fn binary(name: &str, cors: Option<&str>) -> (Files, Process) {
    let files = Files::for_binary_with(name, "", None).await;
    std::fs::write(&files.keys, keys_file()).unwrap();
    if let Some(cors) = cors {
        files.add_to_target("main", &format!("cors = {cors}"));
    }
    let kg = Process::start(&files.config).await;
    (files, kg)
}

async fn send(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Resp {
    H1::connect(addr)
        .await
        .send(request(method, path, headers, empty()))
        .await
}

#[track_caller]
fn passed_as(resp: &Resp, key_id: &str) {
    assert_eq!(resp.echo().one("x-keygate-key-id"), Some(key_id));
}

/// No response header of the CORS protocol's `Access-Control-*` family.
#[track_caller]
fn no_cors_headers(resp: &Resp) {
    let cors: Vec<_> = resp
        .headers
        .keys()
        .filter(|k| k.as_str().starts_with("access-control-"))
        .collect();
    assert!(cors.is_empty(), "CORS headers {cors:?} on {resp:?}");
}

// --- allow_origins ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_origins_on_a_key_and_a_consumer_on_the_binary() {
    let (files, kg) = binary("origins-binary", None).await;
    let p = kg.proxy;
    // The key's own list: exact, case-insensitive, the default port normalised.
    for origin in [
        SHOP,
        "HTTPS://Shop.EXAMPLE.com:443",
        "http://localhost:5173",
    ] {
        let r = send(
            p,
            "GET",
            PROBE,
            &[("x-api-key", WEB_SECRET), ("origin", origin)],
        )
        .await;
        passed_as(&r, "web");
    }
    for origin in [
        "https://evil.example.net",
        "http://shop.example.com",
        "https://shop.example.com:8443",
        "http://localhost:5174",
        "null",
    ] {
        let r = send(
            p,
            "GET",
            PROBE,
            &[("x-api-key", WEB_SECRET), ("origin", origin)],
        )
        .await;
        assert_problem(&r, 403, "origin_not_allowed");
    }
    // Neither Origin nor Referer.
    let r = send(p, "GET", PROBE, &[("x-api-key", WEB_SECRET)]).await;
    assert_problem(&r, 403, "origin_not_allowed");
    // The Referer's origin when there is no Origin (a same-origin GET sends none).
    let r = send(
        p,
        "GET",
        PROBE,
        &[
            ("x-api-key", WEB_SECRET),
            ("referer", "https://shop.example.com/cart?id=7"),
        ],
    )
    .await;
    passed_as(&r, "web");
    let r = send(
        p,
        "GET",
        PROBE,
        &[
            ("x-api-key", WEB_SECRET),
            ("referer", "https://evil.example.net/shop.example.com"),
        ],
    )
    .await;
    assert_problem(&r, 403, "origin_not_allowed");
    // The consumer's wildcard: one or more labels, not the bare domain.
    for origin in ["https://a.example.com", "https://a.b.example.com"] {
        let r = send(
            p,
            "GET",
            PROBE,
            &[("x-api-key", SHOP_SECRET), ("origin", origin)],
        )
        .await;
        passed_as(&r, "shop-key");
    }
    for origin in ["https://example.com", "https://a.example.com.evil.net"] {
        let r = send(
            p,
            "GET",
            PROBE,
            &[("x-api-key", SHOP_SECRET), ("origin", origin)],
        )
        .await;
        assert_problem(&r, 403, "origin_not_allowed");
    }
    // A key without a list is as before: any origin, or none.
    passed_as(
        &send(p, "GET", PROBE, &[("x-api-key", PLAIN_SECRET)]).await,
        "plain",
    );
    assert_eq!(
        files.up.hits(),
        7,
        "a refused request must not reach the upstream"
    );
    kg.terminate_cleanly().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_refusal_spends_no_rate_limit_on_the_binary() {
    let (_files, kg) = binary("origins-rate", None).await;
    let p = kg.proxy;
    for _ in 0..3 {
        let r = send(
            p,
            "GET",
            PROBE,
            &[
                ("x-api-key", LIMITED_SECRET),
                ("origin", "https://evil.example.net"),
            ],
        )
        .await;
        assert_problem(&r, 403, "origin_not_allowed");
        assert_eq!(
            r.header("ratelimit"),
            None,
            "a refusal before the rate phase"
        );
    }
    let ok = [("x-api-key", LIMITED_SECRET), ("origin", SHOP)];
    passed_as(&send(p, "GET", PROBE, &ok).await, "limited");
    assert_problem(&send(p, "GET", PROBE, &ok).await, 429, "rate_limited");
    kg.terminate_cleanly().await;
}

const PINNED_SECRET: &str = "kg_pin_YnJvd3NlcktleVBpbm5lZFNlY3JldEZvclRlc3RzMDE";
const BOTH_SECRET: &str = "kg_both_YnJvd3NlcktleUJvdGhMaXN0c1NlY3JldDAwMDAwMDE";

/// The binary on [`keys_file`] with `extra` keys after it (no `[targets.cors]`).
async fn binary_with_keys(name: &str, extra: &str) -> (Files, Process) {
    let files = Files::for_binary_with(name, "", None).await;
    std::fs::write(&files.keys, format!("{}\n{extra}", keys_file())).unwrap();
    let kg = Process::start(&files.config).await;
    (files, kg)
}

/// `allow_origins` is checked with the IP list, after it, and before the rate limit: from an
/// address off the key's `allow_ips` the answer is `ip_not_allowed` whatever the origin; from
/// its address, `origin_not_allowed` until the page's origin is sent; neither refusal spends
/// the key's one request a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ip_list_then_the_origin_list_then_the_rate_limit_on_the_binary() {
    let pinned = format!(
        "[[keys]]\nid = \"pinned\"\nhash = \"{}\"\nallow_ips = [\"127.0.0.2\"]\n\
         allow_origins = [\"{SHOP}\"]\nrate_limit = \"1/minute\"\n",
        keygate_hash(PINNED_SECRET)
    );
    let (files, kg) = binary_with_keys("origins-after-ips", &pinned).await;
    let from = async |client: &str, origin: Option<&str>| {
        let mut headers = vec![("x-api-key", PINNED_SECRET)];
        headers.extend(origin.map(|o| ("origin", o)));
        connect_from(ip(client), kg.proxy)
            .await
            .send(request("GET", PROBE, &headers, empty()))
            .await
    };
    for origin in [None, Some("https://evil.example.net"), Some(SHOP)] {
        let r = from("127.0.0.3", origin).await;
        assert_problem(&r, 403, "ip_not_allowed");
        assert_eq!(
            r.header("ratelimit"),
            None,
            "a refusal before the rate phase"
        );
    }
    for origin in [None, Some("https://evil.example.net")] {
        let r = from("127.0.0.2", origin).await;
        assert_problem(&r, 403, "origin_not_allowed");
        assert_eq!(
            r.header("ratelimit"),
            None,
            "a refusal before the rate phase"
        );
    }
    passed_as(&from("127.0.0.2", Some(SHOP)).await, "pinned");
    assert_problem(&from("127.0.0.2", Some(SHOP)).await, 429, "rate_limited");
    assert_eq!(files.up.hits(), 1);
    kg.terminate_cleanly().await;
}

/// A key's list and its consumer's both apply: an origin must be on each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_lists_apply_when_key_and_consumer_have_one_on_the_binary() {
    // Consumer `shops` of [`keys_file`] allows any subdomain of example.com.
    let both = format!(
        "[[keys]]\nid = \"both\"\nhash = \"{}\"\nconsumer = \"shops\"\n\
         allow_origins = [\"https://a.example.com\", \"https://example.com\"]\n",
        keygate_hash(BOTH_SECRET)
    );
    let (files, kg) = binary_with_keys("origins-both", &both).await;
    let from = async |origin: &str| {
        send(
            kg.proxy,
            "GET",
            PROBE,
            &[("x-api-key", BOTH_SECRET), ("origin", origin)],
        )
        .await
    };
    passed_as(&from("https://a.example.com").await, "both");
    // The key lists it; the consumer's wildcard does not cover the bare domain.
    assert_problem(
        &from("https://example.com").await,
        403,
        "origin_not_allowed",
    );
    // The consumer's wildcard covers it; the key does not list it.
    assert_problem(
        &from("https://b.example.com").await,
        403,
        "origin_not_allowed",
    );
    assert_eq!(files.up.hits(), 1);
    kg.terminate_cleanly().await;
}

#[tokio::test]
async fn both_lists_apply_when_key_and_consumer_have_one() {
    let gw = gateway()
        .consumer(consumer("shops").allow_origins(&["https://*.example.com"]))
        .key(
            key(
                "both",
                "kg_both_YnJvd3NlcktleUJvdGhMaXN0c1NlY3JldDAwMDAwMDE",
            )
            .consumer("shops")
            .allow_origins(&["https://a.example.com", "https://example.com"]),
        )
        .start()
        .await;
    let from = |origin: &'static str| gw.get("/r").key_of("both").header("origin", origin);
    from("https://a.example.com").echo_as("both").await;
    // The key lists it; the consumer's wildcard does not cover the bare domain.
    from("https://example.com")
        .problem(403, "origin_not_allowed")
        .await;
    // The consumer's wildcard covers it; the key does not list it.
    from("https://b.example.com")
        .problem(403, "origin_not_allowed")
        .await;
    assert_eq!(gw.hits(), 1);
}

#[tokio::test]
async fn the_ip_list_is_checked_before_the_origin_list() {
    let gw = gateway()
        .key(
            key(
                "pinned",
                "kg_pin_YnJvd3NlcktleVBpbm5lZFNlY3JldEZvclRlc3RzMDE",
            )
            .allow_ips(&["127.0.0.2"])
            .allow_origins(&[SHOP]),
        )
        .start()
        .await;
    gw.get("/r")
        .key_of("pinned")
        .from("127.0.0.3")
        .problem(403, "ip_not_allowed")
        .await;
    gw.get("/r")
        .key_of("pinned")
        .from("127.0.0.2")
        .problem(403, "origin_not_allowed")
        .await;
    gw.get("/r")
        .key_of("pinned")
        .from("127.0.0.2")
        .header("origin", SHOP)
        .echo_as("pinned")
        .await;
}

/// The verify listener (forward-auth) decides `allow_origins` on the headers the calling proxy
/// copied from the browser's request, as the proxy mode does; it adds no CORS headers (the
/// calling proxy answers the browser).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verify_listener_checks_allow_origins_on_the_binary() {
    let files = Files::for_binary_with("origins-verify", "", None).await;
    std::fs::write(&files.keys, keys_file()).unwrap();
    files.add_to_target("main", &format!("cors = {CORS}"));
    files.append_to_config(
        "[verify]\nlisten = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.1\"]\n",
    );
    let mut kg = Process::start(&files.config).await;
    let verify = kg.wait_addr("verify listening").await;
    let call = |origin: Option<&'static str>| async move {
        let mut headers = vec![("x-api-key", WEB_SECRET), ("x-forwarded-uri", "/orders")];
        if let Some(o) = origin {
            headers.push(("origin", o));
        }
        send(verify, "GET", "/", &headers).await
    };
    let ok = call(Some(SHOP)).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    assert_eq!(ok.header("x-keygate-key-id"), Some("web"));
    no_cors_headers(&ok);
    for origin in [Some("https://evil.example.net"), None] {
        let r = call(origin).await;
        assert_problem(&r, 403, "origin_not_allowed");
        assert_eq!(r.header("x-keygate-code"), Some("origin_not_allowed"));
        no_cors_headers(&r);
    }
    assert_eq!(files.up.hits(), 0, "the verify listener forwards nothing");
    kg.terminate_cleanly().await;
}

// --- [targets.cors] --------------------------------------------------------------------------

const CORS: &str = r#"{ allow_origins = ["https://shop.example.com", "https://*.apps.example.com"], allow_methods = ["GET", "POST"], allow_headers = ["X-API-Key", "Content-Type"], expose_headers = ["X-Total-Count"], max_age = "10m" }"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflights_are_answered_without_a_key_on_the_binary() {
    let (files, kg) = binary("cors-preflight", Some(CORS)).await;
    let p = kg.proxy;
    let preflight = |origin: &'static str| {
        [
            ("origin", origin),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "x-api-key, content-type"),
        ]
    };
    for origin in [SHOP, "https://a.apps.example.com"] {
        let r = send(p, "OPTIONS", "/orders", &preflight(origin)).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{r:?}");
        assert_eq!(r.header("access-control-allow-origin"), Some(origin));
        assert_eq!(r.header("access-control-allow-methods"), Some("GET, POST"));
        assert_eq!(
            r.header("access-control-allow-headers"),
            Some("X-API-Key, Content-Type")
        );
        assert_eq!(r.header("access-control-max-age"), Some("600"));
        assert_eq!(r.header("access-control-allow-credentials"), None);
        assert!(r.header("vary").unwrap().contains("Origin"), "{r:?}");
        assert!(r.body.is_empty());
    }
    // An unlisted origin's preflight: answered, without any CORS header, so the browser fails
    // it; never forwarded.
    for origin in [
        "https://evil.example.net",
        "https://apps.example.com",
        "null",
    ] {
        let r = send(p, "OPTIONS", "/orders", &preflight(origin)).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{r:?}");
        no_cors_headers(&r);
    }
    assert_eq!(
        files.up.hits(),
        0,
        "a preflight must not reach the upstream"
    );
    // A target without [targets.cors]: an OPTIONS is an ordinary request, as before.
    let r = send(p, "OPTIONS", "/other/x", &preflight(SHOP)).await;
    assert_problem(&r, 403, "key_missing");
    no_cors_headers(&r);
    let mut with_key = preflight(SHOP).to_vec();
    with_key.push(("x-api-key", PLAIN_SECRET));
    let r = send(p, "OPTIONS", "/other/x", &with_key).await;
    assert_eq!(r.echo().method, "OPTIONS");
    no_cors_headers(&r);
    // On the cors target, an OPTIONS that is not a preflight (no request method) is a request.
    let r = send(
        p,
        "OPTIONS",
        "/orders",
        &[("origin", SHOP), ("x-api-key", PLAIN_SECRET)],
    )
    .await;
    assert_eq!(r.echo().method, "OPTIONS");
    assert_eq!(files.up.hits(), 2);
    kg.terminate_cleanly().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_and_refusals_carry_cors_headers_on_the_binary() {
    let (_files, kg) = binary("cors-answers", Some(CORS)).await;
    let p = kg.proxy;
    let expose = |r: &Resp| {
        let v = r
            .header("access-control-expose-headers")
            .unwrap_or_default()
            .to_owned();
        for h in [
            "RateLimit",
            "RateLimit-Policy",
            "Retry-After",
            "X-Request-Id",
            "X-Total-Count",
        ] {
            assert!(v.split(", ").any(|x| x == h), "{h} not exposed: {v:?}");
        }
    };
    let labelled = |r: &Resp, origin: &str| {
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some(origin),
            "{r:?}"
        );
        assert!(
            r.headers
                .get_all("vary")
                .iter()
                .any(|v| v.to_str().unwrap().contains("Origin")),
            "no Vary: Origin on {r:?}"
        );
        expose(r);
    };
    // The upstream's 200.
    let r = send(
        p,
        "GET",
        PROBE,
        &[("origin", SHOP), ("x-api-key", WEB_SECRET)],
    )
    .await;
    passed_as(&r, "web");
    labelled(&r, SHOP);
    // keygate's refusals: 403 key_missing, 403 origin_not_allowed (the cors list allows the
    // page, the key does not), 429 rate_limited.
    let r = send(p, "GET", PROBE, &[("origin", SHOP)]).await;
    assert_problem(&r, 403, "key_missing");
    labelled(&r, SHOP);
    let apps = "https://x.apps.example.com";
    let r = send(
        p,
        "GET",
        PROBE,
        &[("origin", apps), ("x-api-key", WEB_SECRET)],
    )
    .await;
    assert_problem(&r, 403, "origin_not_allowed");
    labelled(&r, apps);
    let limited = [("origin", SHOP), ("x-api-key", LIMITED_SECRET)];
    passed_as(&send(p, "GET", PROBE, &limited).await, "limited");
    let r = send(p, "GET", PROBE, &limited).await;
    assert_problem(&r, 429, "rate_limited");
    labelled(&r, SHOP);
    assert!(r.header("retry-after").is_some());
    // An unlisted origin's answers carry none, whatever the upstream says.
    let r = send(
        p,
        "GET",
        PROBE,
        &[
            ("origin", "https://evil.example.net"),
            ("x-api-key", PLAIN_SECRET),
            ("x-reply-header", "Access-Control-Allow-Origin: *"),
        ],
    )
    .await;
    passed_as(&r, "plain");
    no_cors_headers(&r);
    // Without Origin (server to server): as before, none.
    let r = send(p, "GET", PROBE, &[("x-api-key", PLAIN_SECRET)]).await;
    passed_as(&r, "plain");
    no_cors_headers(&r);
    assert_eq!(r.header("vary"), None);
    kg.terminate_cleanly().await;
}

#[tokio::test]
async fn credentials_and_a_default_policy_in_process() {
    let gw = gateway()
        .target(target("main").line(
            r#"cors = { allow_origins = ["https://*.example.com"], allow_credentials = true }"#,
        ))
        .key(key(
            "k",
            "kg_k_YnJvd3NlcktleUNyZWRlbnRpYWxzU2VjcmV0MDAwMDAwMQ",
        ))
        .start()
        .await;
    let origin = "https://a.example.com";
    let r = gw
        .request("OPTIONS", "/r")
        .headers(&[
            ("origin", origin),
            ("access-control-request-method", "PUT"),
            ("access-control-request-headers", "x-api-key"),
        ])
        .send()
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    // The origin itself, never `*`, with credentials.
    assert_eq!(r.header("access-control-allow-origin"), Some(origin));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("GET, HEAD, POST, PUT, PATCH, DELETE")
    );
    // Not configured: the headers the preflight asked for.
    assert_eq!(r.header("access-control-allow-headers"), Some("x-api-key"));
    assert_eq!(r.header("access-control-max-age"), None);
    let r = gw
        .get("/r")
        .key_of("k")
        .header("origin", origin)
        .send()
        .await;
    assert_eq!(r.header("access-control-allow-origin"), Some(origin));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(gw.hits(), 1);
}

/// `allow_credentials` and the defaults of `[targets.cors]` on the binary: the preflight and
/// every answer (a refusal too) name the origin itself with `Allow-Credentials: true`; without
/// `allow_methods` the usual methods are allowed, without `allow_headers` the headers the
/// preflight asked for, and without `max_age` none is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_and_a_default_policy_on_the_binary() {
    let cors = r#"{ allow_origins = ["https://*.example.com"], allow_credentials = true }"#;
    let (files, kg) = binary("cors-credentials", Some(cors)).await;
    let p = kg.proxy;
    let origin = "https://a.example.com";
    let r = send(
        p,
        "OPTIONS",
        "/orders",
        &[
            ("origin", origin),
            ("access-control-request-method", "PUT"),
            ("access-control-request-headers", "x-api-key, x-trace"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{r:?}");
    // The origin itself, never `*`, with credentials.
    assert_eq!(r.header("access-control-allow-origin"), Some(origin));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("GET, HEAD, POST, PUT, PATCH, DELETE")
    );
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("x-api-key, x-trace")
    );
    assert_eq!(r.header("access-control-max-age"), None);
    assert_eq!(
        files.up.hits(),
        0,
        "a preflight must not reach the upstream"
    );
    let credentialed = |r: &Resp| {
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some(origin),
            "{r:?}"
        );
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    };
    let r = send(
        p,
        "GET",
        PROBE,
        &[("origin", origin), ("x-api-key", PLAIN_SECRET)],
    )
    .await;
    passed_as(&r, "plain");
    credentialed(&r);
    let r = send(p, "GET", PROBE, &[("origin", origin)]).await;
    assert_problem(&r, 403, "key_missing");
    credentialed(&r);
    assert_eq!(files.up.hits(), 1);
    kg.terminate_cleanly().await;
}

// --- config errors ----------------------------------------------------------------------------

#[test]
fn config_errors_name_file_line_and_key() {
    let config = "[[targets]]\nname = \"main\"\nupstream = \"http://127.0.0.1:9\"\n\n[targets.cors]\nallow_origins = [\"*\"]\nallow_credentials = true\n\n[[consumers]]\nid = \"shops\"\nallow_origins = [\"https://shop.example.com/app\"]\n\n[[keys]]\nid = \"web\"\nsecret = \"s\"\nallow_origins = [\"https://a.*.example.com\", \"shop.example.com\"]\n";
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["check", "--config", "/dev/stdin"])
        .env_remove("KEYGATE_CONFIG")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(config.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for want in [
        "/dev/stdin:7:21: target \"main\": cors.allow_credentials = true cannot go with \"*\"",
        "/dev/stdin:11:18: consumer \"shops\": allow_origins: \"https://shop.example.com/app\" must not have a path",
        "/dev/stdin:16:18: key \"web\": allow_origins: \"https://a.*.example.com\"",
        "/dev/stdin:16:45: key \"web\": allow_origins: \"shop.example.com\" must be scheme://host[:port]",
    ] {
        assert!(stderr.contains(want), "want {want:?} in:\n{stderr}");
    }
}

// --- a real browser ---------------------------------------------------------------------------

/// A page server: any path answers a blank HTML page (its origin is what matters).
async fn page_server() -> Upstream {
    start_upstream_with(|_req, _peer| async {
        http::Response::builder()
            .header("content-type", "text/html; charset=utf-8")
            .body(full("<!doctype html><title>shop</title><p>shop</p>"))
            .unwrap()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_a_listed_origin_reads_answers_and_refusals_in_chromium() {
    let Some(browser) = Browser::start("browser-keys").await else {
        return;
    };
    let shop = page_server().await;
    let elsewhere = page_server().await;
    let shop_origin = format!("http://127.0.0.1:{}", shop.addr.port());
    let files = Files::for_binary_with("cors-chromium", "", None).await;
    let keys = format!(
        "{INITIAL_KEYS}\n[[keys]]\nid = \"web\"\nhash = \"{}\"\nallow_origins = [\"{shop_origin}\"]\n\n[[keys]]\nid = \"other-site\"\nhash = \"{}\"\nallow_origins = [\"https://elsewhere.example.com\"]\n",
        keygate_hash(WEB_SECRET),
        keygate_hash(SHOP_SECRET),
    );
    std::fs::write(&files.keys, keys).unwrap();
    files.add_to_target(
        "main",
        &format!(
            "cors = {{ allow_origins = [\"{shop_origin}\"], allow_headers = [\"X-API-Key\"] }}"
        ),
    );
    let kg = Process::start(&files.config).await;
    let api = format!("http://127.0.0.1:{}{PROBE}", kg.proxy.port());
    // What a page's script sees: the status and the JSON, or that the fetch failed.
    let call = "const done = arguments[arguments.length - 1];\
        fetch(arguments[0], { headers: { 'X-API-Key': arguments[1] } })\
          .then(r => r.json().then(j => done({ status: r.status, json: j,\
              request_id: r.headers.get('X-Request-Id') })))\
          .catch(e => done({ failed: String(e) }));";

    browser.goto(&format!("{shop_origin}/shop")).await;
    let ok = browser
        .js_async(call, vec![json!(api), json!(WEB_SECRET)])
        .await;
    assert_eq!(ok["status"], 200, "{ok}");
    assert_eq!(ok["json"]["upstream"], "main", "{ok}");
    let seen = &ok["json"]["headers"];
    let has = |name: &str, value: &str| {
        seen.as_array()
            .unwrap()
            .iter()
            .any(|h| h[0] == name && h[1] == value)
    };
    assert!(has("x-keygate-key-id", "web"), "{ok}");
    assert!(
        has("origin", &shop_origin),
        "the browser sent its origin: {ok}"
    );
    // The exposed X-Request-Id is readable by the page.
    assert!(
        ok["request_id"].as_str().is_some_and(|s| !s.is_empty()),
        "{ok}"
    );
    // A refusal's problem+json is readable too.
    let refused = browser
        .js_async(call, vec![json!(api), json!(SHOP_SECRET)])
        .await;
    assert_eq!(refused["status"], 403, "{refused}");
    assert_eq!(refused["json"]["code"], "origin_not_allowed", "{refused}");
    assert_eq!(
        refused["json"]["request_id"], refused["request_id"],
        "{refused}"
    );

    // For a person to look at: what the shop's page read.
    browser
        .js(
            "document.body.innerHTML = '<pre></pre>';\
             document.querySelector('pre').textContent =\
               JSON.stringify(arguments[0].json.headers.filter(h => h[0].startsWith('x-keygate'))) +\
               '\\n' + JSON.stringify(arguments[1], null, 1);",
            vec![ok.clone(), refused.clone()],
        )
        .await;
    browser.screenshot("browser-keys-shop", (900, 500)).await;

    // From an unlisted origin the preflight fails: the page gets no answer at all.
    browser
        .goto(&format!("http://127.0.0.1:{}/", elsewhere.addr.port()))
        .await;
    let failed = browser
        .js_async(call, vec![json!(api), json!(WEB_SECRET)])
        .await;
    assert!(
        failed["failed"]
            .as_str()
            .is_some_and(|e| e.contains("TypeError")),
        "{failed}"
    );
    assert_eq!(files.up.hits(), 1, "only the allowed call went upstream");
    kg.terminate_cleanly().await;
}
