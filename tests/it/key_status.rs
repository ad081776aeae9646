//! Steps 3 and 4: the key lookup (unknown key), then the key's status and expiry.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use crate::harness::*;

async fn gateway() -> (SocketAddr, Upstream) {
    let up = start_upstream("main").await;
    let addr = start_keygate(&one_target(up.addr)).await;
    (addr, up)
}

#[tokio::test]
async fn unknown_key_is_403_key_invalid() {
    let (addr, up) = gateway().await;
    let near_misses = [
        "not-a-key".to_owned(),
        SECRET.to_uppercase(),
        SECRET[..SECRET.len() - 1].to_owned(),
        format!("{SECRET}x"),
        format!("x{SECRET}"),
        // The stored hash is not a secret.
        hash_of(SECRET),
        hash_of(SECRET).trim_start_matches("sha256:").to_owned(),
    ];
    for wrong in &near_misses {
        assert_problem(
            &get(addr, "/r", &[("x-api-key", wrong)]).await,
            403,
            "key_invalid",
        );
        let resp = get(addr, &format!("/r?api_key={wrong}"), &[]).await;
        assert_problem(&resp, 403, "key_invalid");
    }
    assert_eq!(up.hits(), 0, "an unknown key must not reach the upstream");
}

#[tokio::test]
async fn keys_stored_by_hash_and_by_plaintext_secret_both_work() {
    let (addr, _up) = gateway().await;
    let echo = get(addr, "/r", &[("x-api-key", SECRET)]).await.echo();
    assert_eq!(echo.one("x-keygate-key-id"), Some("primary"));
    let echo = get(addr, "/r", &[("x-api-key", SECRET_LONER)]).await.echo();
    assert_eq!(echo.one("x-keygate-key-id"), Some("loner"));
}

#[tokio::test]
async fn inactive_key_is_403_key_inactive() {
    let (addr, up) = gateway().await;
    let resp = get(addr, "/r", &[("x-api-key", SECRET_INACTIVE)]).await;
    assert_problem(&resp, 403, "key_inactive");
    let resp = get(addr, &format!("/r?api_key={SECRET_INACTIVE}"), &[]).await;
    assert_problem(&resp, 403, "key_inactive");
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn expired_key_is_403_key_expired() {
    let (addr, up) = gateway().await;
    let resp = get(addr, "/r", &[("x-api-key", SECRET_EXPIRED)]).await;
    assert_problem(&resp, 403, "key_expired");
    let resp = get(addr, &format!("/r?api_key={SECRET_EXPIRED}"), &[]).await;
    assert_problem(&resp, 403, "key_expired");
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn key_expiring_in_the_future_passes() {
    let (addr, _up) = gateway().await;
    let echo = get(addr, "/r", &[("x-api-key", SECRET_FUTURE)])
        .await
        .echo();
    assert_eq!(echo.one("x-keygate-key-id"), Some("future"));
    assert_eq!(echo.one("x-keygate-consumer"), Some("acme"));
}

/// Expiry is a point in time, checked against the clock on every request: keys that expired a
/// second ago (or right now) are refused, one that expires in an hour passes; offsets count.
#[tokio::test]
async fn expiry_is_checked_against_the_current_time() {
    let up = start_upstream("main").await;
    let now = SystemTime::now();
    let stamp = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    let config = format!(
        r#"
[[targets]]
name = "main"
upstream = "http://{}"

[[keys]]
id = "just-expired"
secret = "kg_just_expired_secret_for_tests_000000000000001"
expires_at = {}

[[keys]]
id = "expires-now"
secret = "kg_expires_now_secret_for_tests_0000000000000001"
expires_at = {}

[[keys]]
id = "expires-soon"
secret = "kg_expires_soon_secret_for_tests_000000000000001"
expires_at = {}

[[keys]]
id = "offset-past"
secret = "kg_offset_past_secret_for_tests_00000000000000001"
# 23:00 at -02:00 is 01:00 UTC the next day: long past either way.
expires_at = 2020-06-01T23:00:00-02:00
"#,
        up.addr,
        stamp(now - Duration::from_secs(1)),
        // Whole seconds, rounded down: not after now.
        stamp(now),
        stamp(now + Duration::from_secs(3600)),
    );
    let addr = start_keygate(&config).await;
    for (secret, outcome) in [
        (
            "kg_just_expired_secret_for_tests_000000000000001",
            Some("key_expired"),
        ),
        (
            "kg_expires_now_secret_for_tests_0000000000000001",
            Some("key_expired"),
        ),
        (
            "kg_offset_past_secret_for_tests_00000000000000001",
            Some("key_expired"),
        ),
        ("kg_expires_soon_secret_for_tests_000000000000001", None),
    ] {
        let resp = get(addr, "/r", &[("x-api-key", secret)]).await;
        assert!(!resp.text().contains(secret));
        match outcome {
            Some(code) => {
                assert_problem(&resp, 403, code);
            }
            None => assert_eq!(resp.echo().one("x-keygate-key-id"), Some("expires-soon")),
        }
    }
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn an_inactive_key_is_refused_whatever_its_expiry() {
    let up = start_upstream("main").await;
    let config = format!(
        r#"
[[targets]]
name = "main"
upstream = "http://{}"

[[keys]]
id = "off-but-current"
secret = "kg_off_but_current_secret_for_tests_0000000000001"
status = "inactive"
expires_at = 2999-01-01T00:00:00Z

[[keys]]
id = "explicitly-active"
secret = "kg_explicitly_active_secret_for_tests_00000000001"
status = "active"
"#,
        up.addr
    );
    let addr = start_keygate(&config).await;
    let resp = get(
        addr,
        "/r",
        &[(
            "x-api-key",
            "kg_off_but_current_secret_for_tests_0000000000001",
        )],
    )
    .await;
    assert_problem(&resp, 403, "key_inactive");
    let echo = get(
        addr,
        "/r",
        &[(
            "x-api-key",
            "kg_explicitly_active_secret_for_tests_00000000001",
        )],
    )
    .await
    .echo();
    assert_eq!(echo.one("x-keygate-key-id"), Some("explicitly-active"));
    assert!(!echo.has("x-keygate-consumer"));
}
