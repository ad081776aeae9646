//! The order of the checks: IP, target, access, then the rate limit last, so a refused request spends no quota.

use crate::harness::policy::*;
use crate::harness::*;

/// Key `guarded`: from 127.0.0.1 only, on `main` only, read-only, under `/ok`, 2/minute.
const GUARDED: &str = "kg_guarded_b3JkZXJUZXN0R3VhcmRlZEtleV8wMDAwMDAwMQ";
/// Key `shop-pinned` of consumer `shop` (2/minute): from 127.0.0.1 only, on `main` only.
const SHOP_PINNED: &str = "kg_shoppin_b3JkZXJUZXN0U2hvcFBpbm5lZEtleV8wMDAx";
/// Key `shop-open` of consumer `shop`: no restrictions of its own.
const SHOP_OPEN: &str = "kg_shopopen_b3JkZXJUZXN0U2hvcE9wZW5LZXlfMDAwMDE";

const OTHER_HOST: &str = "other.example.com";

async fn gateway() -> Gw {
    crate::harness::gateway()
        .target(target("main"))
        .target(target("other").echo("main").hosts(&[OTHER_HOST]))
        .consumer(consumer("shop").rate_limit("2/minute"))
        .key(
            key("guarded", GUARDED)
                .allow_ips(&["127.0.0.1"])
                .targets(&["main"])
                .access("read-only")
                .paths(&["/ok"])
                .rate_limit("2/minute"),
        )
        .key(
            key("shop-pinned", SHOP_PINNED)
                .consumer("shop")
                .allow_ips(&["127.0.0.1"])
                .targets(&["main"])
                .access("read-only"),
        )
        .key(key("shop-open", SHOP_OPEN).consumer("shop"))
        .start()
        .await
}

/// One request: method, path, Host, source address.
async fn call(gw: &Gw, secret: &str, method: &str, path: &str, host: &str, from: &str) -> Resp {
    gw.request(method, path)
        .host(host)
        .key(secret)
        .from(from)
        .send()
        .await
}

#[tokio::test]
async fn refusals_for_ip_target_or_access_spend_no_quota() {
    let gw = gateway().await;
    for _ in 0..4 {
        let resp = call(&gw, GUARDED, "GET", "/ok", HOST, "127.0.0.2").await;
        assert_problem(&resp, 403, "ip_not_allowed");
        let resp = call(&gw, GUARDED, "GET", "/ok", OTHER_HOST, "127.0.0.1").await;
        assert_problem(&resp, 403, "target_not_allowed");
        let resp = call(&gw, GUARDED, "POST", "/ok", HOST, "127.0.0.1").await;
        assert_problem(&resp, 403, "access_denied");
        let resp = call(&gw, GUARDED, "GET", "/admin", HOST, "127.0.0.1").await;
        assert_problem(&resp, 403, "access_denied");
    }
    assert_eq!(gw.hits(), 0);
    // The whole burst of 2 is still there.
    for remaining in [1, 0] {
        let resp = call(&gw, GUARDED, "GET", "/ok", HOST, "127.0.0.1").await;
        assert_eq!(resp.echo().one("x-keygate-key-id"), Some("guarded"));
        assert_eq!(num_header(&resp, "ratelimit-remaining"), remaining);
    }
    let resp = call(&gw, GUARDED, "GET", "/ok", HOST, "127.0.0.1").await;
    assert_problem(&resp, 429, "rate_limited");
    assert_eq!(gw.hits(), 2);
}

#[tokio::test]
async fn refusals_spend_none_of_the_consumers_quota_either() {
    let gw = gateway().await;
    for _ in 0..4 {
        let resp = call(&gw, SHOP_PINNED, "GET", "/r", HOST, "127.0.0.2").await;
        assert_problem(&resp, 403, "ip_not_allowed");
        let resp = call(&gw, SHOP_PINNED, "GET", "/r", OTHER_HOST, "127.0.0.1").await;
        assert_problem(&resp, 403, "target_not_allowed");
        let resp = call(&gw, SHOP_PINNED, "DELETE", "/r", HOST, "127.0.0.1").await;
        assert_problem(&resp, 403, "access_denied");
    }
    // The consumer's 2/minute is untouched: the other key gets both, then 429.
    for remaining in [1, 0] {
        let resp = call(&gw, SHOP_OPEN, "GET", "/r", HOST, "127.0.0.1").await;
        assert_eq!(resp.echo().one("x-keygate-key-id"), Some("shop-open"));
        assert_eq!(num_header(&resp, "ratelimit-remaining"), remaining);
    }
    let resp = call(&gw, SHOP_PINNED, "GET", "/r", HOST, "127.0.0.1").await;
    assert_problem(&resp, 429, "rate_limited");
    assert_eq!(gw.hits(), 2);
}

#[tokio::test]
async fn the_first_failing_check_in_contract_order_answers() {
    let gw = gateway().await;
    // Wrong address, target, method and path at once: the IP answers.
    let resp = call(&gw, GUARDED, "POST", "/admin", OTHER_HOST, "127.0.0.2").await;
    assert_problem(&resp, 403, "ip_not_allowed");
    // Right address; wrong target, method and path: the target answers.
    let resp = call(&gw, GUARDED, "POST", "/admin", OTHER_HOST, "127.0.0.1").await;
    assert_problem(&resp, 403, "target_not_allowed");
    // Right address and target; wrong method and path: access answers.
    let resp = call(&gw, GUARDED, "POST", "/admin", HOST, "127.0.0.1").await;
    assert_problem(&resp, 403, "access_denied");
    assert_eq!(gw.hits(), 0);
}

#[tokio::test]
async fn an_exhausted_key_is_still_refused_for_ip_target_and_access_first() {
    let gw = gateway().await;
    for _ in 0..2 {
        let resp = call(&gw, GUARDED, "GET", "/ok", HOST, "127.0.0.1").await;
        assert_eq!(resp.status, 200);
    }
    let resp = call(&gw, GUARDED, "GET", "/ok", HOST, "127.0.0.1").await;
    assert_problem(&resp, 429, "rate_limited");
    // Over its limit, but these would be refused anyway: they say why, not "slow down".
    let resp = call(&gw, GUARDED, "GET", "/ok", HOST, "127.0.0.2").await;
    assert_problem(&resp, 403, "ip_not_allowed");
    let resp = call(&gw, GUARDED, "GET", "/ok", OTHER_HOST, "127.0.0.1").await;
    assert_problem(&resp, 403, "target_not_allowed");
    let resp = call(&gw, GUARDED, "PUT", "/ok", HOST, "127.0.0.1").await;
    assert_problem(&resp, 403, "access_denied");
    assert_eq!(gw.hits(), 2);
}
