//! The order of the checks: IP, target, access, then the rate limit last, so a refused request spends no quota.

use std::net::SocketAddr;

use crate::harness::policy::*;
use crate::harness::*;

/// Key `guarded`: from 127.0.0.1 only, on `main` only, read-only, under `/ok`, 2/minute.
const GUARDED: &str = "kg_guarded_b3JkZXJUZXN0R3VhcmRlZEtleV8wMDAwMDAwMQ";
/// Key `shop-pinned` of consumer `shop` (2/minute): from 127.0.0.1 only, on `main` only.
const SHOP_PINNED: &str = "kg_shoppin_b3JkZXJUZXN0U2hvcFBpbm5lZEtleV8wMDAx";
/// Key `shop-open` of consumer `shop`: no restrictions of its own.
const SHOP_OPEN: &str = "kg_shopopen_b3JkZXJUZXN0U2hvcE9wZW5LZXlfMDAwMDE";

const OTHER_HOST: &str = "other.example.com";

async fn gateway() -> (SocketAddr, Upstream) {
    let up = start_upstream("main").await;
    let config = format!(
        r#"
[[targets]]
name = "main"
upstream = "http://{up}"

[[targets]]
name = "other"
upstream = "http://{up}"
hosts = ["{OTHER_HOST}"]

[[consumers]]
id = "shop"
rate_limit = "2/minute"

[[keys]]
id = "guarded"
secret = "{GUARDED}"
allow_ips = ["127.0.0.1"]
targets = ["main"]
access = "read-only"
paths = ["/ok"]
rate_limit = "2/minute"

[[keys]]
id = "shop-pinned"
consumer = "shop"
secret = "{SHOP_PINNED}"
allow_ips = ["127.0.0.1"]
targets = ["main"]
access = "read-only"

[[keys]]
id = "shop-open"
consumer = "shop"
secret = "{SHOP_OPEN}"
"#,
        up = up.addr
    );
    let addr = start_keygate(&config).await;
    (addr, up)
}

/// One request: method, path, Host, source address.
async fn call(
    addr: SocketAddr,
    secret: &str,
    method: &str,
    path: &str,
    host: &str,
    from: &str,
) -> Resp {
    let req = request(
        method,
        path,
        &[("host", host), ("x-api-key", secret)],
        empty(),
    );
    send_from(ip(from), addr, req).await
}

#[tokio::test]
async fn refusals_for_ip_target_or_access_spend_no_quota() {
    let (addr, up) = gateway().await;
    for _ in 0..4 {
        let resp = call(addr, GUARDED, "GET", "/ok", HOST, "127.0.0.2").await;
        assert_problem(&resp, 403, "ip_not_allowed");
        let resp = call(addr, GUARDED, "GET", "/ok", OTHER_HOST, "127.0.0.1").await;
        assert_problem(&resp, 403, "target_not_allowed");
        let resp = call(addr, GUARDED, "POST", "/ok", HOST, "127.0.0.1").await;
        assert_problem(&resp, 403, "access_denied");
        let resp = call(addr, GUARDED, "GET", "/admin", HOST, "127.0.0.1").await;
        assert_problem(&resp, 403, "access_denied");
    }
    assert_eq!(up.hits(), 0);
    // The whole burst of 2 is still there.
    for remaining in [1, 0] {
        let resp = call(addr, GUARDED, "GET", "/ok", HOST, "127.0.0.1").await;
        assert_eq!(resp.echo().one("x-keygate-key-id"), Some("guarded"));
        assert_eq!(num_header(&resp, "ratelimit-remaining"), remaining);
    }
    let resp = call(addr, GUARDED, "GET", "/ok", HOST, "127.0.0.1").await;
    assert_problem(&resp, 429, "rate_limited");
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn refusals_spend_none_of_the_consumers_quota_either() {
    let (addr, up) = gateway().await;
    for _ in 0..4 {
        let resp = call(addr, SHOP_PINNED, "GET", "/r", HOST, "127.0.0.2").await;
        assert_problem(&resp, 403, "ip_not_allowed");
        let resp = call(addr, SHOP_PINNED, "GET", "/r", OTHER_HOST, "127.0.0.1").await;
        assert_problem(&resp, 403, "target_not_allowed");
        let resp = call(addr, SHOP_PINNED, "DELETE", "/r", HOST, "127.0.0.1").await;
        assert_problem(&resp, 403, "access_denied");
    }
    // The consumer's 2/minute is untouched: the other key gets both, then 429.
    for remaining in [1, 0] {
        let resp = call(addr, SHOP_OPEN, "GET", "/r", HOST, "127.0.0.1").await;
        assert_eq!(resp.echo().one("x-keygate-key-id"), Some("shop-open"));
        assert_eq!(num_header(&resp, "ratelimit-remaining"), remaining);
    }
    let resp = call(addr, SHOP_PINNED, "GET", "/r", HOST, "127.0.0.1").await;
    assert_problem(&resp, 429, "rate_limited");
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn the_first_failing_check_in_contract_order_answers() {
    let (addr, up) = gateway().await;
    // Wrong address, target, method and path at once: the IP answers.
    let resp = call(addr, GUARDED, "POST", "/admin", OTHER_HOST, "127.0.0.2").await;
    assert_problem(&resp, 403, "ip_not_allowed");
    // Right address; wrong target, method and path: the target answers.
    let resp = call(addr, GUARDED, "POST", "/admin", OTHER_HOST, "127.0.0.1").await;
    assert_problem(&resp, 403, "target_not_allowed");
    // Right address and target; wrong method and path: access answers.
    let resp = call(addr, GUARDED, "POST", "/admin", HOST, "127.0.0.1").await;
    assert_problem(&resp, 403, "access_denied");
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn an_exhausted_key_is_still_refused_for_ip_target_and_access_first() {
    let (addr, up) = gateway().await;
    for _ in 0..2 {
        let resp = call(addr, GUARDED, "GET", "/ok", HOST, "127.0.0.1").await;
        assert_eq!(resp.status, 200);
    }
    let resp = call(addr, GUARDED, "GET", "/ok", HOST, "127.0.0.1").await;
    assert_problem(&resp, 429, "rate_limited");
    // Over its limit, but these would be refused anyway: they say why, not "slow down".
    let resp = call(addr, GUARDED, "GET", "/ok", HOST, "127.0.0.2").await;
    assert_problem(&resp, 403, "ip_not_allowed");
    let resp = call(addr, GUARDED, "GET", "/ok", OTHER_HOST, "127.0.0.1").await;
    assert_problem(&resp, 403, "target_not_allowed");
    let resp = call(addr, GUARDED, "PUT", "/ok", HOST, "127.0.0.1").await;
    assert_problem(&resp, 403, "access_denied");
    assert_eq!(up.hits(), 2);
}
