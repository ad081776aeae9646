//! Failed attempts: past `[server] failed_auth_limit` key_invalid answers, a client address gets 429 too_many_failures for any key.

use crate::harness::policy::*;
use crate::harness::*;

const VALID: &str = "kg_valid_ZmFpbGVkVGVzdFZhbGlkS2V5XzAwMDAwMDAwMDAx";
const OFF: &str = "kg_off_ZmFpbGVkVGVzdE9mZktleV8wMDAwMDAwMDAwMDAwMDE";
const PINNED: &str = "kg_pinned_ZmFpbGVkVGVzdFBpbm5lZEtleV8wMDAwMDAwMDE";

/// Keys `valid`, `off` (inactive) and `pinned` (127.0.0.1 only); `server` is the `[server]`
/// table's lines.
async fn gateway(server: &str) -> Gw {
    server
        .lines()
        .fold(crate::harness::gateway(), |gw, line| gw.server(line))
        .key(key("valid", VALID))
        .key(key("off", OFF).line("status = \"inactive\""))
        .key(key("pinned", PINNED).allow_ips(&["127.0.0.1"]))
        .start()
        .await
}

async fn guess(gw: &Gw, from: &str, n: usize) -> Resp {
    let secret = format!("kg_guess_{n:04}_not_a_key");
    gw.get("/r").key(&secret).from(from).send().await
}

/// A request with the valid key and `headers` from `from`.
async fn with_valid_key(gw: &Gw, from: &str, headers: &[(&str, &str)]) -> Resp {
    gw.get("/r")
        .key(VALID)
        .headers(headers)
        .from(from)
        .send()
        .await
}

/// Checks that a request with the valid key from `from` passes, as key `valid`.
async fn assert_valid_key_passes(gw: &Gw, from: &str) {
    gw.get("/r").key(VALID).from(from).echo_as("valid").await;
}

/// Checks that a request without a key from `from` is refused with 403 `key_missing`.
async fn assert_key_missing(gw: &Gw, from: &str) {
    gw.get("/r").from(from).problem(403, "key_missing").await;
}

/// Checks a 429 `too_many_failures` with a `Retry-After` in `1..=max` whole seconds.
#[track_caller]
fn assert_blocked(resp: &Resp, max: u64) {
    assert_problem(resp, 429, "too_many_failures");
    let retry = num_header(resp, "retry-after");
    assert!(
        (1..=max).contains(&retry),
        "Retry-After {retry} is not within 1..={max}"
    );
    assert_no_rate_headers(resp);
}

#[tokio::test]
async fn past_the_limit_an_address_is_refused_even_with_a_valid_key() {
    let gw = gateway("failed_auth_limit = \"3/minute\"").await;
    // Before any failure the valid key works from there.
    assert_valid_key_passes(&gw, "127.0.0.1").await;
    for n in 0..3 {
        assert_problem(&guess(&gw, "127.0.0.1", n).await, 403, "key_invalid");
    }
    // 3/minute: the next failure may come in 20 s at the latest.
    let resp = with_valid_key(&gw, "127.0.0.1", &[]).await;
    assert_blocked(&resp, 20);
    assert_blocked(&guess(&gw, "127.0.0.1", 99).await, 20);
    // Any key, any way it is sent.
    let resp = gw
        .get(&format!("/r?api_key={VALID}"))
        .from("127.0.0.1")
        .send()
        .await;
    assert_blocked(&resp, 20);
    // Another address is not affected.
    assert_valid_key_passes(&gw, "127.0.0.2").await;
    assert_eq!(gw.hits(), 2);
    assert_no_keygate_panic();
}

#[tokio::test]
async fn the_block_covers_keys_that_would_otherwise_pass_any_check() {
    let gw = gateway("failed_auth_limit = \"2/minute\"").await;
    for n in 0..2 {
        assert_problem(&guess(&gw, "127.0.0.1", n).await, 403, "key_invalid");
    }
    // The IP-pinned key is allowed from 127.0.0.1, but the address is blocked first.
    assert_blocked(&gw.get("/r").key(PINNED).from("127.0.0.1").send().await, 30);
    // The inactive key would say key_inactive; the block answers before the lookup.
    assert_blocked(&gw.get("/r").key(OFF).from("127.0.0.1").send().await, 30);
    assert_eq!(gw.hits(), 0);
}

#[tokio::test]
async fn a_missing_key_does_not_count() {
    let gw = gateway("failed_auth_limit = \"3/minute\"").await;
    for _ in 0..10 {
        assert_key_missing(&gw, "127.0.0.1").await;
    }
    assert_valid_key_passes(&gw, "127.0.0.1").await;
    // Two invalid keys among them still leave room for one more failure.
    for n in 0..2 {
        assert_problem(&guess(&gw, "127.0.0.1", n).await, 403, "key_invalid");
        assert_key_missing(&gw, "127.0.0.1").await;
    }
    assert_eq!(with_valid_key(&gw, "127.0.0.1", &[]).await.status, 200);
    assert_problem(&guess(&gw, "127.0.0.1", 2).await, 403, "key_invalid");
    assert_blocked(&with_valid_key(&gw, "127.0.0.1", &[]).await, 20);
    assert_eq!(gw.hits(), 2);
}

#[tokio::test]
async fn other_refusals_do_not_count() {
    let gw = gateway("failed_auth_limit = \"2/minute\"").await;
    for _ in 0..5 {
        // key_inactive: the key exists, so this is not guessing.
        gw.get("/r")
            .key(OFF)
            .from("127.0.0.2")
            .problem(403, "key_inactive")
            .await;
        // ip_not_allowed from an address the key is not pinned to.
        gw.get("/r")
            .key(PINNED)
            .from("127.0.0.2")
            .problem(403, "ip_not_allowed")
            .await;
    }
    assert_valid_key_passes(&gw, "127.0.0.2").await;
    assert_eq!(gw.hits(), 1);
}

#[tokio::test]
async fn the_default_limit_is_thirty_per_minute() {
    let gw = gateway("").await;
    let start = std::time::Instant::now();
    for n in 0..30 {
        assert_problem(&guess(&gw, "127.0.0.1", n).await, 403, "key_invalid");
    }
    // 30/minute refills one failure every 2 s: only a run of 30 that took less than that
    // must leave the address blocked (a machine this slow says nothing either way).
    let resp = with_valid_key(&gw, "127.0.0.1", &[]).await;
    let fast = start.elapsed() < std::time::Duration::from_millis(1900);
    if fast {
        assert_blocked(&resp, 2);
    } else {
        eprintln!(
            "note: 30 requests took {:?}; not checking the block",
            start.elapsed()
        );
    }
    assert_eq!(with_valid_key(&gw, "127.0.0.2", &[]).await.status, 200);
    assert_eq!(gw.hits(), if fast { 1 } else { 2 });
}

/// Behind a trusted proxy, failures count against the client the proxy reports, not against
/// the proxy: one guessing client must not lock out everyone else behind the same proxy.
#[tokio::test]
async fn failures_count_per_client_behind_a_trusted_proxy() {
    let gw = gateway("failed_auth_limit = \"2/minute\"\ntrusted_proxies = [\"127.0.0.3\"]").await;
    let guesser = [("x-forwarded-for", "198.51.100.1")];
    let bystander = [("x-forwarded-for", "198.51.100.2")];
    for n in 0..2 {
        gw.get("/r")
            .key(&format!("kg_guess_{n}"))
            .headers(&guesser)
            .from("127.0.0.3")
            .problem(403, "key_invalid")
            .await;
    }
    let resp = with_valid_key(&gw, "127.0.0.3", &guesser).await;
    assert_blocked(&resp, 30);
    let resp = with_valid_key(&gw, "127.0.0.3", &bystander).await;
    assert_eq!(resp.echo().one("x-keygate-key-id"), Some("valid"));
    // An untrusted peer cannot escape its own block by claiming another address.
    for n in 0..2 {
        assert_problem(&guess(&gw, "127.0.0.4", n).await, 403, "key_invalid");
    }
    let resp = with_valid_key(&gw, "127.0.0.4", &bystander).await;
    assert_blocked(&resp, 30);
    assert_eq!(gw.hits(), 1);
}
