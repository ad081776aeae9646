//! Rate limits: per key and per consumer (one shared bucket), 429 rate_limited with Retry-After, and the RateLimit-* headers.
//!
//! Every limit here is per minute or per hour and every test finishes in well under the first
//! refill, so nothing depends on timing and nothing sleeps.

use crate::harness::policy::*;
use crate::harness::*;

/// Host of target `dead`, whose upstream port is closed.
const DEAD_HOST: &str = "dead.example.com";

async fn gateway() -> Gw {
    crate::harness::gateway()
        .target(target("main"))
        .target(
            target("dead")
                .upstream(closed_port().await)
                .hosts(&[DEAD_HOST]),
        )
        .consumer(consumer("team").rate_limit("2/minute"))
        .consumer(consumer("big").rate_limit("5/minute"))
        // Key `metered`: 3/minute.
        .key(
            key(
                "metered",
                "kg_metered_cmF0ZVRlc3RNZXRlcmVkS2V5XzAwMDAwMDAwMQ",
            )
            .rate_limit("3/minute"),
        )
        // Key `other-metered`: 3/minute, its own bucket.
        .key(
            key(
                "other-metered",
                "kg_othermet_cmF0ZVRlc3RPdGhlck1ldGVyZWRLZXlfMDAx",
            )
            .rate_limit("3/minute"),
        )
        // Key `free`: no limit, no consumer.
        .key(key(
            "free",
            "kg_free_cmF0ZVRlc3RGcmVlS2V5XzAwMDAwMDAwMDAwMDAwMQ",
        ))
        // Keys `team-a` and `team-b` of consumer `team` (2/minute); no limits of their own.
        .key(key("team-a", "kg_teama_cmF0ZVRlc3RUZWFtQUtleV8wMDAwMDAwMDAwMDE").consumer("team"))
        .key(key("team-b", "kg_teamb_cmF0ZVRlc3RUZWFtQktleV8wMDAwMDAwMDAwMDE").consumer("team"))
        // Key `both` (2/minute) of consumer `big` (5/minute).
        .key(
            key("both", "kg_both_cmF0ZVRlc3RCb3RoS2V5XzAwMDAwMDAwMDAwMDAwMQ")
                .consumer("big")
                .rate_limit("2/minute"),
        )
        // Key `hourly`: 2/hour.
        .key(key("hourly", "kg_hourly_cmF0ZVRlc3RIb3VybHlLZXlfMDAwMDAwMDAwMQ").rate_limit("2/hour"))
        .start()
        .await
}

async fn call(gw: &Gw, id: &str) -> Resp {
    gw.get("/r").key_of(id).send().await
}

/// Checks a 429 `rate_limited`: problem+json and a `Retry-After` in whole seconds within
/// `1..=max`; returns the Retry-After.
#[track_caller]
fn assert_rate_limited(resp: &Resp, max: u64) -> u64 {
    assert_problem(resp, 429, "rate_limited");
    let retry = num_header(resp, "retry-after");
    assert!(
        (1..=max).contains(&retry),
        "Retry-After {retry} is not within 1..={max}"
    );
    retry
}

#[tokio::test]
async fn three_per_minute_lets_three_pass_and_refuses_the_fourth() {
    let gw = gateway().await;
    let mut last_reset = 0;
    for expected_remaining in [2, 1, 0] {
        let resp = call(&gw, "metered").await;
        assert_eq!(resp.echo().one("x-keygate-key-id"), Some("metered"));
        assert_eq!(num_header(&resp, "ratelimit-limit"), 3);
        assert_eq!(num_header(&resp, "ratelimit-remaining"), expected_remaining);
        let reset = num_header(&resp, "ratelimit-reset");
        assert!(
            (1..=60).contains(&reset) && reset >= last_reset,
            "RateLimit-Reset {reset} after {last_reset}"
        );
        last_reset = reset;
        let policy = must_header(&resp, "ratelimit-policy");
        assert!(policy.contains("\"key\";q=3;w=60"), "{policy}");
        let state = must_header(&resp, "ratelimit");
        assert!(
            state.contains(&format!("\"key\";r={expected_remaining}")),
            "{state}"
        );
    }
    // Nothing refills within this test: 3/minute is one request every 20 s.
    let resp = call(&gw, "metered").await;
    let retry = assert_rate_limited(&resp, 20);
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    assert_eq!(num_header(&resp, "ratelimit-limit"), 3);
    assert_eq!(num_header(&resp, "ratelimit-remaining"), 0);
    let reset = num_header(&resp, "ratelimit-reset");
    assert!((1..=60).contains(&reset), "RateLimit-Reset {reset}");
    assert!(must_header(&resp, "ratelimit-policy").contains("\"key\";q=3;w=60"));
    let state = must_header(&resp, "ratelimit");
    assert!(state.contains("\"key\";r=0"), "{state}");
    // Still refused, and never sent upstream.
    let again = call(&gw, "metered").await;
    let retry_again = assert_rate_limited(&again, 20);
    assert!(retry_again <= retry);
    assert_eq!(gw.hits(), 3);
    assert_no_keygate_panic();
}

#[tokio::test]
async fn keys_without_limits_get_no_rate_limit_headers() {
    let gw = gateway().await;
    for _ in 0..5 {
        let resp = call(&gw, "free").await;
        assert_eq!(resp.status, 200);
        assert_no_rate_headers(&resp);
    }
    // Nor does a denial before any key is known.
    let unknown = gw
        .get("/r")
        .key("kg_unknown_key_for_rate_tests")
        .send()
        .await;
    assert_no_rate_headers(&unknown);
}

#[tokio::test]
async fn each_key_has_its_own_bucket() {
    let gw = gateway().await;
    for _ in 0..3 {
        assert_eq!(call(&gw, "metered").await.status, 200);
    }
    assert_rate_limited(&call(&gw, "metered").await, 20);
    let resp = call(&gw, "other-metered").await;
    assert_eq!(resp.echo().one("x-keygate-key-id"), Some("other-metered"));
    assert_eq!(num_header(&resp, "ratelimit-remaining"), 2);
    assert_eq!(call(&gw, "free").await.status, 200);
    assert_eq!(gw.hits(), 5);
}

#[tokio::test]
async fn a_consumers_keys_share_one_bucket() {
    let gw = gateway().await;
    let a = call(&gw, "team-a").await;
    assert_eq!(a.echo().one("x-keygate-key-id"), Some("team-a"));
    assert_eq!(num_header(&a, "ratelimit-limit"), 2);
    assert_eq!(num_header(&a, "ratelimit-remaining"), 1);
    let policy = must_header(&a, "ratelimit-policy");
    assert!(policy.contains("\"consumer\";q=2;w=60"), "{policy}");
    assert!(!policy.contains("\"key\""), "{policy}");
    let b = call(&gw, "team-b").await;
    assert_eq!(b.echo().one("x-keygate-key-id"), Some("team-b"));
    assert_eq!(num_header(&b, "ratelimit-remaining"), 0);
    // The consumer's two requests are spent, whichever key asks next.
    for id in ["team-a", "team-b"] {
        let resp = call(&gw, id).await;
        assert_rate_limited(&resp, 30);
        assert_eq!(num_header(&resp, "ratelimit-remaining"), 0);
        assert!(must_header(&resp, "ratelimit").contains("\"consumer\";r=0"));
    }
    assert_eq!(gw.hits(), 2);
}

#[tokio::test]
async fn key_and_consumer_limits_both_apply_and_both_are_reported() {
    let gw = gateway().await;
    let resp = call(&gw, "both").await;
    assert_eq!(resp.status, 200);
    let policy = must_header(&resp, "ratelimit-policy");
    assert!(policy.contains("\"key\";q=2;w=60"), "{policy}");
    assert!(policy.contains("\"consumer\";q=5;w=60"), "{policy}");
    let state = must_header(&resp, "ratelimit");
    assert!(state.contains("\"key\";r=1"), "{state}");
    assert!(state.contains("\"consumer\";r=4"), "{state}");
    // The single-limit fields show the limit closest to refusing: the key's.
    assert_eq!(num_header(&resp, "ratelimit-limit"), 2);
    assert_eq!(num_header(&resp, "ratelimit-remaining"), 1);
    assert_eq!(call(&gw, "both").await.status, 200);
    // The key's 2/minute refuses before the consumer's 5/minute.
    let resp = call(&gw, "both").await;
    assert_rate_limited(&resp, 30);
    assert!(must_header(&resp, "ratelimit-policy").contains("\"key\";q=2;w=60"));
    assert_eq!(gw.hits(), 2);
}

#[tokio::test]
async fn per_hour_limits_report_an_hour_window() {
    let gw = gateway().await;
    let first = call(&gw, "hourly").await;
    assert!(must_header(&first, "ratelimit-policy").contains("\"key\";q=2;w=3600"));
    assert_eq!(num_header(&first, "ratelimit-remaining"), 1);
    assert_eq!(call(&gw, "hourly").await.status, 200);
    // One request every 30 minutes.
    let retry = assert_rate_limited(&call(&gw, "hourly").await, 1800);
    assert!(retry > 60, "Retry-After {retry} for a 2/hour limit");
    assert_eq!(gw.hits(), 2);
}

/// The limit holds whatever the transport: HTTP/2 streams on one connection and fresh
/// HTTP/1.1 connections from other source addresses draw on the same bucket.
#[tokio::test]
async fn the_bucket_is_the_keys_not_the_connections() {
    let gw = gateway().await;
    let mut h2 = H2::connect(gw.addr).await;
    let metered = [("x-api-key", gw.secret("metered"))];
    let resp = h2
        .send(h2_request("GET", HOST, "/r", &metered, empty()))
        .await;
    assert_eq!(num_header(&resp, "ratelimit-remaining"), 2);
    for (from, left) in [("127.0.0.2", 1), ("127.0.0.3", 0)] {
        let resp = gw.get("/r").key_of("metered").from(from).send().await;
        assert_eq!(num_header(&resp, "ratelimit-remaining"), left);
    }
    let resp = h2
        .send(h2_request("GET", HOST, "/r", &metered, empty()))
        .await;
    assert_rate_limited(&resp, 20);
    assert_eq!(gw.hits(), 3);
}

/// The headers ride on every response to a limited key, not only keygate's 200s and 429s: an
/// upstream's own error and keygate's 502 carry them too, and both spend quota.
#[tokio::test]
async fn upstream_errors_carry_the_rate_limit_headers_too() {
    let gw = gateway().await;
    let resp = gw
        .get("/r")
        .key_of("metered")
        .header("x-reply-status", "503")
        .send()
        .await;
    assert_eq!(resp.status, 503);
    assert_eq!(num_header(&resp, "ratelimit-remaining"), 2);
    assert!(must_header(&resp, "ratelimit-policy").contains("\"key\";q=3;w=60"));
    let resp = gw.get("/r").host(DEAD_HOST).key_of("metered").send().await;
    assert_problem(&resp, 502, "upstream_unavailable");
    assert_eq!(num_header(&resp, "ratelimit-limit"), 3);
    assert_eq!(num_header(&resp, "ratelimit-remaining"), 1);
    assert!(must_header(&resp, "ratelimit").contains("\"key\";r=1"));
    let resp = gw.get("/r").host(DEAD_HOST).key_of("free").send().await;
    assert_problem(&resp, 502, "upstream_unavailable");
    assert_no_rate_headers(&resp);
}
