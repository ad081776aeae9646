//! The order of the checks: IP, target, access, then the rate limit last, so a refused request spends no quota.

use crate::harness::policy::*;
use crate::harness::*;

const OTHER_HOST: &str = "other.example.com";

async fn gateway() -> Gw {
    crate::harness::gateway()
        .target(target("main"))
        .target(target("other").echo("main").hosts(&[OTHER_HOST]))
        .consumer(consumer("shop").rate_limit("2/minute"))
        // Key `guarded`: from 127.0.0.1 only, on `main` only, read-only, under `/ok`, 2/minute.
        .key(
            key(
                "guarded",
                "kg_guarded_b3JkZXJUZXN0R3VhcmRlZEtleV8wMDAwMDAwMQ",
            )
            .allow_ips(&["127.0.0.1"])
            .targets(&["main"])
            .access("read-only")
            .paths(&["/ok"])
            .rate_limit("2/minute"),
        )
        // Key `shop-pinned` of consumer `shop` (2/minute): from 127.0.0.1 only, on `main` only.
        .key(
            key(
                "shop-pinned",
                "kg_shoppin_b3JkZXJUZXN0U2hvcFBpbm5lZEtleV8wMDAx",
            )
            .consumer("shop")
            .allow_ips(&["127.0.0.1"])
            .targets(&["main"])
            .access("read-only"),
        )
        // Key `shop-open` of consumer `shop`: no restrictions of its own.
        .key(
            key(
                "shop-open",
                "kg_shopopen_b3JkZXJUZXN0U2hvcE9wZW5LZXlfMDAwMDE",
            )
            .consumer("shop"),
        )
        .start()
        .await
}

/// One request with key `id`: method, path, Host, source address.
async fn call(gw: &Gw, id: &str, method: &str, path: &str, host: &str, from: &str) -> Resp {
    gw.request(method, path)
        .host(host)
        .key_of(id)
        .from(from)
        .send()
        .await
}

/// Requests that must be refused: method, path, Host, source address, and the 403 code.
type Refused<'a> = [(&'a str, &'a str, &'a str, &'a str, &'a str)];

/// Sends each of `cases` with key `id`; each must get 403 with its code.
async fn assert_refused(gw: &Gw, id: &str, cases: &Refused<'_>) {
    for (method, path, host, from, code) in cases {
        let resp = call(gw, id, method, path, host, from).await;
        assert_problem(&resp, 403, code);
    }
}

/// GETs `path` with key `id` from 127.0.0.1 once per entry of `remaining`: each passes, with
/// that many requests left.
async fn assert_passes_with(gw: &Gw, id: &str, path: &str, remaining: &[u64]) {
    for left in remaining {
        let resp = call(gw, id, "GET", path, HOST, "127.0.0.1").await;
        assert_eq!(resp.echo().one("x-keygate-key-id"), Some(id));
        assert_eq!(num_header(&resp, "ratelimit-remaining"), *left);
    }
}

/// GET `path` with key `id` from 127.0.0.1 must get 429 `rate_limited`.
async fn assert_limited(gw: &Gw, id: &str, path: &str) {
    let resp = call(gw, id, "GET", path, HOST, "127.0.0.1").await;
    assert_problem(&resp, 429, "rate_limited");
}

/// Sends `refused` with key `id` four times over (each refused as listed, none reaching the
/// upstream); the 2/minute that `id` is under is then still whole: key `then` (under the same
/// limit) passes twice on `path`, and `id` is refused after that.
async fn assert_refusals_leave_the_quota_whole(
    gw: &Gw,
    id: &str,
    refused: &Refused<'_>,
    then: &str,
    path: &str,
) {
    for _ in 0..4 {
        assert_refused(gw, id, refused).await;
    }
    assert_eq!(gw.hits(), 0);
    assert_passes_with(gw, then, path, &[1, 0]).await;
    assert_limited(gw, id, path).await;
    assert_eq!(gw.hits(), 2);
}

#[tokio::test]
async fn refusals_for_ip_target_or_access_spend_no_quota() {
    let gw = gateway().await;
    let refused = [
        ("GET", "/ok", HOST, "127.0.0.2", "ip_not_allowed"),
        ("GET", "/ok", OTHER_HOST, "127.0.0.1", "target_not_allowed"),
        ("POST", "/ok", HOST, "127.0.0.1", "access_denied"),
        ("GET", "/admin", HOST, "127.0.0.1", "access_denied"),
    ];
    // The whole burst of 2 is still there.
    assert_refusals_leave_the_quota_whole(&gw, "guarded", &refused, "guarded", "/ok").await;
}

#[tokio::test]
async fn refusals_spend_none_of_the_consumers_quota_either() {
    let gw = gateway().await;
    let refused = [
        ("GET", "/r", HOST, "127.0.0.2", "ip_not_allowed"),
        ("GET", "/r", OTHER_HOST, "127.0.0.1", "target_not_allowed"),
        ("DELETE", "/r", HOST, "127.0.0.1", "access_denied"),
    ];
    // The consumer's 2/minute is untouched: the other key gets both, then 429.
    assert_refusals_leave_the_quota_whole(&gw, "shop-pinned", &refused, "shop-open", "/r").await;
}

#[tokio::test]
async fn the_first_failing_check_in_contract_order_answers() {
    let gw = gateway().await;
    let refused = [
        // Wrong address, target, method and path at once: the IP answers.
        ("POST", "/admin", OTHER_HOST, "127.0.0.2", "ip_not_allowed"),
        // Right address; wrong target, method and path: the target answers.
        (
            "POST",
            "/admin",
            OTHER_HOST,
            "127.0.0.1",
            "target_not_allowed",
        ),
        // Right address and target; wrong method and path: access answers.
        ("POST", "/admin", HOST, "127.0.0.1", "access_denied"),
    ];
    assert_refused(&gw, "guarded", &refused).await;
    assert_eq!(gw.hits(), 0);
}

#[tokio::test]
async fn an_exhausted_key_is_still_refused_for_ip_target_and_access_first() {
    let gw = gateway().await;
    for _ in 0..2 {
        let resp = call(&gw, "guarded", "GET", "/ok", HOST, "127.0.0.1").await;
        assert_eq!(resp.status, 200);
    }
    assert_limited(&gw, "guarded", "/ok").await;
    // Over its limit, but these would be refused anyway: they say why, not "slow down".
    let refused = [
        ("GET", "/ok", HOST, "127.0.0.2", "ip_not_allowed"),
        ("GET", "/ok", OTHER_HOST, "127.0.0.1", "target_not_allowed"),
        ("PUT", "/ok", HOST, "127.0.0.1", "access_denied"),
    ];
    assert_refused(&gw, "guarded", &refused).await;
    assert_eq!(gw.hits(), 2);
}
