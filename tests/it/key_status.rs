//! Steps 3 and 4: the key lookup (unknown key), then the key's status and expiry.

use std::time::{Duration, SystemTime};

use crate::harness::*;

async fn gateway() -> Gw {
    crate::harness::gateway().shared_keys().start().await
}

/// `secret` gets 403 `code` in the key header and in the `api_key` query parameter alike.
async fn assert_refused_either_way(gw: &Gw, secret: &str, code: &str) {
    gw.get("/r").key(secret).problem(403, code).await;
    let in_query = format!("/r?api_key={secret}");
    gw.get(&in_query).problem(403, code).await;
}

#[tokio::test]
async fn unknown_key_is_403_key_invalid() {
    let gw = gateway().await;
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
        assert_refused_either_way(&gw, wrong, "key_invalid").await;
    }
    assert_eq!(gw.hits(), 0, "an unknown key must not reach the upstream");
}

#[tokio::test]
async fn keys_stored_by_hash_and_by_plaintext_secret_both_work() {
    let gw = gateway().await;
    gw.get("/r").key(SECRET).echo_as("primary").await;
    gw.get("/r").key(SECRET_LONER).echo_as("loner").await;
}

#[tokio::test]
async fn inactive_key_is_403_key_inactive() {
    let gw = gateway().await;
    assert_refused_either_way(&gw, SECRET_INACTIVE, "key_inactive").await;
    assert_eq!(gw.hits(), 0);
}

#[tokio::test]
async fn expired_key_is_403_key_expired() {
    let gw = gateway().await;
    assert_refused_either_way(&gw, SECRET_EXPIRED, "key_expired").await;
    assert_eq!(gw.hits(), 0);
}

#[tokio::test]
async fn key_expiring_in_the_future_passes() {
    let gw = gateway().await;
    let echo = gw.get("/r").key(SECRET_FUTURE).echo_as("future").await;
    assert_eq!(echo.one("x-keygate-consumer"), Some("acme"));
}

/// Expiry is a point in time, checked against the clock on every request: keys that expired a
/// second ago (or right now) are refused, one that expires in an hour passes; offsets count.
#[tokio::test]
async fn expiry_is_checked_against_the_current_time() {
    let now = SystemTime::now();
    let stamp = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    let expires = |t: SystemTime| format!("expires_at = {}", stamp(t));
    let gw = crate::harness::gateway()
        .key(
            key(
                "just-expired",
                "kg_just_expired_secret_for_tests_000000000000001",
            )
            .line(&expires(now - Duration::from_secs(1))),
        )
        .key(
            // Whole seconds, rounded down: not after now.
            key(
                "expires-now",
                "kg_expires_now_secret_for_tests_0000000000000001",
            )
            .line(&expires(now)),
        )
        .key(
            key(
                "expires-soon",
                "kg_expires_soon_secret_for_tests_000000000000001",
            )
            .line(&expires(now + Duration::from_secs(3600))),
        )
        .key(
            // 23:00 at -02:00 is 01:00 UTC the next day: long past either way.
            key(
                "offset-past",
                "kg_offset_past_secret_for_tests_00000000000000001",
            )
            .line("expires_at = 2020-06-01T23:00:00-02:00"),
        )
        .start()
        .await;
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
        let resp = gw.get("/r").key(secret).send().await;
        assert!(!resp.text().contains(secret));
        match outcome {
            Some(code) => {
                assert_problem(&resp, 403, code);
            }
            None => assert_eq!(resp.echo().one("x-keygate-key-id"), Some("expires-soon")),
        }
    }
    assert_eq!(gw.hits(), 1);
}

#[tokio::test]
async fn an_inactive_key_is_refused_whatever_its_expiry() {
    let gw = crate::harness::gateway()
        .key(
            key("off-but-current", OFF_BUT_CURRENT)
                .line("status = \"inactive\"")
                .line("expires_at = 2999-01-01T00:00:00Z"),
        )
        .key(key("explicitly-active", EXPLICITLY_ACTIVE).line("status = \"active\""))
        .start()
        .await;
    gw.get("/r")
        .key(OFF_BUT_CURRENT)
        .problem(403, "key_inactive")
        .await;
    let echo = gw
        .get("/r")
        .key(EXPLICITLY_ACTIVE)
        .echo_as("explicitly-active")
        .await;
    assert!(!echo.has("x-keygate-consumer"));
}

const OFF_BUT_CURRENT: &str = "kg_off_but_current_secret_for_tests_0000000000001";
const EXPLICITLY_ACTIVE: &str = "kg_explicitly_active_secret_for_tests_00000000001";
