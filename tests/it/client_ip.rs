//! The client address: the TCP peer, or what `X-Forwarded-For` / `Forwarded` say only when the peer is a trusted proxy.

use crate::harness::*;

/// Allowed only from 10.1.2.3.
const FROM_10123: &str = "kg_far_Y2xpZW50SXBUZXN0RmFyS2V5XzAwMDAwMDAwMDAwMDE";
/// Allowed only from 127.0.0.1.
const FROM_LOCAL: &str = "kg_local_Y2xpZW50SXBUZXN0TG9jYWxLZXlfMDAwMDAwMDE";
/// Allowed only from 203.0.113.5.
const FROM_203: &str = "kg_doc3_Y2xpZW50SXBUZXN0RG9jM0tleV8wMDAwMDAwMDAwMDE";
/// Allowed only from 198.51.100.1.
const FROM_198: &str = "kg_doc2_Y2xpZW50SXBUZXN0RG9jMktleV8wMDAwMDAwMDAwMDE";
/// Allowed only from 10.0.0.7 (an address inside the trusted 10.0.0.0/8).
const FROM_10007: &str = "kg_hop_Y2xpZW50SXBUZXN0SG9wS2V5XzAwMDAwMDAwMDAwMDAx";
/// Allowed only from 2001:db8::/32.
const FROM_V6: &str = "kg_v6doc_Y2xpZW50SXBUZXN0VjZEb2NLZXlfMDAwMDAwMDE";
/// Allowed only from the trusted proxy 127.0.0.3 itself.
const FROM_PROXY: &str = "kg_proxy_Y2xpZW50SXBUZXN0UHJveHlLZXlfMDAwMDAwMDE";

/// The trusted proxy's source address in these tests.
const PROXY: &str = "127.0.0.3";

async fn gateway() -> Gw {
    crate::harness::gateway()
        .server(&format!("trusted_proxies = [\"{PROXY}\", \"10.0.0.0/8\"]"))
        .key(key("far", FROM_10123).allow_ips(&["10.1.2.3"]))
        .key(key("local", FROM_LOCAL).allow_ips(&["127.0.0.1"]))
        .key(key("doc3", FROM_203).allow_ips(&["203.0.113.5"]))
        .key(key("doc2", FROM_198).allow_ips(&["198.51.100.1"]))
        .key(key("hop", FROM_10007).allow_ips(&["10.0.0.7"]))
        .key(key("v6doc", FROM_V6).allow_ips(&["2001:db8::/32"]))
        .key(key("proxy", FROM_PROXY).allow_ips(&[PROXY]))
        .start()
        .await
}

/// The request passes (and reaches the upstream as `key_id`), or is refused as `ip_not_allowed`.
async fn outcome(gw: &Gw, from: &str, secret: &str, headers: &[(&str, &str)]) -> Option<String> {
    let resp = gw
        .get("/r")
        .key(secret)
        .headers(headers)
        .from(from)
        .send()
        .await;
    if resp.status.is_success() {
        Some(resp.echo().one("x-keygate-key-id").unwrap().to_owned())
    } else {
        assert_problem(&resp, 403, "ip_not_allowed");
        None
    }
}

#[tokio::test]
async fn a_spoofed_x_forwarded_for_from_an_untrusted_peer_changes_nothing() {
    let gw = gateway().await;
    let spoof = [("x-forwarded-for", "10.1.2.3")];
    assert_eq!(outcome(&gw, "127.0.0.1", FROM_10123, &spoof).await, None);
    assert_eq!(
        outcome(&gw, "127.0.0.1", FROM_LOCAL, &spoof)
            .await
            .as_deref(),
        Some("local")
    );
    // Neither does a chain that ends in a trusted address: the peer itself is not trusted.
    let chain = [("x-forwarded-for", "10.1.2.3, 127.0.0.3")];
    assert_eq!(outcome(&gw, "127.0.0.1", FROM_10123, &chain).await, None);
    assert_eq!(outcome(&gw, "127.0.0.1", FROM_PROXY, &chain).await, None);
    assert_eq!(
        outcome(&gw, "127.0.0.1", FROM_LOCAL, &chain)
            .await
            .as_deref(),
        Some("local")
    );
}

#[tokio::test]
async fn a_spoofed_forwarded_from_an_untrusted_peer_changes_nothing() {
    let gw = gateway().await;
    for value in ["for=10.1.2.3", "for=\"10.1.2.3:4711\";proto=https"] {
        let spoof = [("forwarded", value)];
        assert_eq!(outcome(&gw, "127.0.0.1", FROM_10123, &spoof).await, None);
        assert_eq!(
            outcome(&gw, "127.0.0.1", FROM_LOCAL, &spoof)
                .await
                .as_deref(),
            Some("local")
        );
    }
}

#[tokio::test]
async fn x_forwarded_for_from_a_trusted_peer_is_believed() {
    let gw = gateway().await;
    let xff = [("x-forwarded-for", "10.1.2.3")];
    let resp = gw
        .get("/r")
        .key(FROM_10123)
        .headers(&xff)
        .from(PROXY)
        .send()
        .await;
    let echo = resp.echo();
    assert_eq!(echo.one("x-keygate-key-id"), Some("far"));
    // The upstream sees the chain with the proxy appended as the last hop.
    assert_eq!(echo.one("x-forwarded-for"), Some("10.1.2.3, 127.0.0.3"));
    // The client is 10.1.2.3 now, so keys for the proxy's or keygate's own address are refused.
    assert_eq!(outcome(&gw, PROXY, FROM_LOCAL, &xff).await, None);
    assert_eq!(outcome(&gw, PROXY, FROM_PROXY, &xff).await, None);
    // Without the header the trusted proxy is itself the client.
    assert_eq!(
        outcome(&gw, PROXY, FROM_PROXY, &[]).await.as_deref(),
        Some("proxy")
    );
    assert_eq!(outcome(&gw, PROXY, FROM_10123, &[]).await, None);
    assert_eq!(gw.hits(), 2);
}

#[tokio::test]
async fn the_chain_is_walked_from_the_right_skipping_trusted_hops() {
    let gw = gateway().await;
    // 198.51.100.1 is whatever the client wrote; 203.0.113.5 connected to the trusted proxy
    // 10.0.0.7, which connected to the trusted proxy 127.0.0.3, which connected to keygate.
    let chain = [("x-forwarded-for", "198.51.100.1, 203.0.113.5, 10.0.0.7")];
    assert_eq!(
        outcome(&gw, PROXY, FROM_203, &chain).await.as_deref(),
        Some("doc3")
    );
    for secret in [FROM_198, FROM_10007, FROM_PROXY, FROM_LOCAL] {
        assert_eq!(outcome(&gw, PROXY, secret, &chain).await, None);
    }
    // The same chain split over several header lines, one with a port.
    let split = [
        ("x-forwarded-for", "198.51.100.1, 203.0.113.5"),
        ("x-forwarded-for", "10.0.0.7:8080"),
    ];
    assert_eq!(
        outcome(&gw, PROXY, FROM_203, &split).await.as_deref(),
        Some("doc3")
    );
    assert_eq!(outcome(&gw, PROXY, FROM_198, &split).await, None);
    // A client that prepends a forged hop to what the proxy writes gains nothing.
    let forged = [("x-forwarded-for", "10.1.2.3, 198.51.100.1")];
    assert_eq!(outcome(&gw, PROXY, FROM_10123, &forged).await, None);
    assert_eq!(
        outcome(&gw, PROXY, FROM_198, &forged).await.as_deref(),
        Some("doc2")
    );
    // When every hop is trusted, the leftmost one is the client.
    let all_trusted = [("x-forwarded-for", "10.0.0.7, 10.9.9.9")];
    assert_eq!(
        outcome(&gw, PROXY, FROM_10007, &all_trusted)
            .await
            .as_deref(),
        Some("hop")
    );
}

#[tokio::test]
async fn forwarded_from_a_trusted_peer_is_believed_without_x_forwarded_for() {
    let gw = gateway().await;
    let fwd = [("forwarded", "for=10.1.2.3;proto=https;by=127.0.0.3")];
    assert_eq!(
        outcome(&gw, PROXY, FROM_10123, &fwd).await.as_deref(),
        Some("far")
    );
    assert_eq!(outcome(&gw, PROXY, FROM_PROXY, &fwd).await, None);
    // Several elements, walked from the right; a quoted IPv6 node with a port.
    let v6 = [(
        "forwarded",
        "for=198.51.100.1, For=\"[2001:db8:cafe::17]:4711\", for=10.0.0.7",
    )];
    assert_eq!(
        outcome(&gw, PROXY, FROM_V6, &v6).await.as_deref(),
        Some("v6doc")
    );
    assert_eq!(outcome(&gw, PROXY, FROM_198, &v6).await, None);
}

#[tokio::test]
async fn x_forwarded_for_wins_over_forwarded() {
    let gw = gateway().await;
    let both = [
        ("forwarded", "for=198.51.100.1"),
        ("x-forwarded-for", "10.1.2.3"),
    ];
    assert_eq!(
        outcome(&gw, PROXY, FROM_10123, &both).await.as_deref(),
        Some("far")
    );
    assert_eq!(outcome(&gw, PROXY, FROM_198, &both).await, None);
}

#[tokio::test]
async fn an_unreadable_hop_stops_the_walk_at_the_last_address_vouched_for() {
    let gw = gateway().await;
    // "nonsense" cannot be checked, so 10.1.2.3 to its left is not believed; the client is the
    // last hop that a trusted proxy reported: 10.0.0.7.
    let chain = [("x-forwarded-for", "10.1.2.3, nonsense, 10.0.0.7")];
    assert_eq!(outcome(&gw, PROXY, FROM_10123, &chain).await, None);
    assert_eq!(
        outcome(&gw, PROXY, FROM_10007, &chain).await.as_deref(),
        Some("hop")
    );
}
