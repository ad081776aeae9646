//! The client address: the TCP peer, or what `X-Forwarded-For` / `Forwarded` say only when the peer is a trusted proxy.

use crate::harness::*;

/// The trusted proxy's source address in these tests.
const PROXY: &str = "127.0.0.3";

/// The keys of these tests: each is allowed from one address (or network) only, so which key
/// passes tells which client address keygate settled on.
const KEYS: [(&str, &str, &str); 7] = [
    (
        "far",
        "kg_far_Y2xpZW50SXBUZXN0RmFyS2V5XzAwMDAwMDAwMDAwMDE",
        "10.1.2.3",
    ),
    (
        "local",
        "kg_local_Y2xpZW50SXBUZXN0TG9jYWxLZXlfMDAwMDAwMDE",
        "127.0.0.1",
    ),
    (
        "doc3",
        "kg_doc3_Y2xpZW50SXBUZXN0RG9jM0tleV8wMDAwMDAwMDAwMDE",
        "203.0.113.5",
    ),
    (
        "doc2",
        "kg_doc2_Y2xpZW50SXBUZXN0RG9jMktleV8wMDAwMDAwMDAwMDE",
        "198.51.100.1",
    ),
    // An address inside the trusted 10.0.0.0/8.
    (
        "hop",
        "kg_hop_Y2xpZW50SXBUZXN0SG9wS2V5XzAwMDAwMDAwMDAwMDAx",
        "10.0.0.7",
    ),
    (
        "v6doc",
        "kg_v6doc_Y2xpZW50SXBUZXN0VjZEb2NLZXlfMDAwMDAwMDE",
        "2001:db8::/32",
    ),
    // The trusted proxy itself.
    (
        "proxy",
        "kg_proxy_Y2xpZW50SXBUZXN0UHJveHlLZXlfMDAwMDAwMDE",
        PROXY,
    ),
];

async fn gateway() -> Gw {
    let mut gw = crate::harness::gateway()
        .server(&format!("trusted_proxies = [\"{PROXY}\", \"10.0.0.0/8\"]"));
    for (id, secret, allowed_from) in KEYS {
        gw = gw.key(key(id, secret).allow_ips(&[allowed_from]));
    }
    gw.start().await
}

/// A request from `from` with key `id` and `headers` passes, as that key.
async fn assert_passes(gw: &Gw, from: &str, id: &str, headers: &[(&str, &str)]) {
    assert_eq!(outcome(gw, from, id, headers).await.as_deref(), Some(id));
}

/// A request from `from` with key `id` and `headers` is refused as `ip_not_allowed`.
async fn assert_refused(gw: &Gw, from: &str, id: &str, headers: &[(&str, &str)]) {
    assert_eq!(outcome(gw, from, id, headers).await, None);
}

/// From `from` with `headers`, key `id` passes and each of `others` is refused: the client
/// address keygate settles on is the one `id` is allowed from, and none of theirs.
async fn assert_passes_only(
    gw: &Gw,
    from: &str,
    headers: &[(&str, &str)],
    id: &str,
    others: &[&str],
) {
    assert_passes(gw, from, id, headers).await;
    for other in others {
        assert_refused(gw, from, other, headers).await;
    }
}

/// The request passes (and reaches the upstream as `key_id`), or is refused as `ip_not_allowed`.
async fn outcome(gw: &Gw, from: &str, id: &str, headers: &[(&str, &str)]) -> Option<String> {
    let resp = gw
        .get("/r")
        .key_of(id)
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
    assert_passes_only(&gw, "127.0.0.1", &spoof, "local", &["far"]).await;
    // Neither does a chain that ends in a trusted address: the peer itself is not trusted.
    let chain = [("x-forwarded-for", "10.1.2.3, 127.0.0.3")];
    assert_passes_only(&gw, "127.0.0.1", &chain, "local", &["far", "proxy"]).await;
}

#[tokio::test]
async fn a_spoofed_forwarded_from_an_untrusted_peer_changes_nothing() {
    let gw = gateway().await;
    for value in ["for=10.1.2.3", "for=\"10.1.2.3:4711\";proto=https"] {
        let spoof = [("forwarded", value)];
        assert_passes_only(&gw, "127.0.0.1", &spoof, "local", &["far"]).await;
    }
}

#[tokio::test]
async fn x_forwarded_for_from_a_trusted_peer_is_believed() {
    let gw = gateway().await;
    let xff = [("x-forwarded-for", "10.1.2.3")];
    let resp = gw
        .get("/r")
        .key_of("far")
        .headers(&xff)
        .from(PROXY)
        .send()
        .await;
    let echo = resp.echo();
    assert_eq!(echo.one("x-keygate-key-id"), Some("far"));
    // The upstream sees the chain with the proxy appended as the last hop.
    assert_eq!(echo.one("x-forwarded-for"), Some("10.1.2.3, 127.0.0.3"));
    // The client is 10.1.2.3 now, so keys for the proxy's or keygate's own address are refused.
    assert_refused(&gw, PROXY, "local", &xff).await;
    assert_refused(&gw, PROXY, "proxy", &xff).await;
    // Without the header the trusted proxy is itself the client.
    assert_passes_only(&gw, PROXY, &[], "proxy", &["far"]).await;
    assert_eq!(gw.hits(), 2);
}

#[tokio::test]
async fn the_chain_is_walked_from_the_right_skipping_trusted_hops() {
    let gw = gateway().await;
    // 198.51.100.1 is whatever the client wrote; 203.0.113.5 connected to the trusted proxy
    // 10.0.0.7, which connected to the trusted proxy 127.0.0.3, which connected to keygate.
    let chain = [("x-forwarded-for", "198.51.100.1, 203.0.113.5, 10.0.0.7")];
    assert_passes_only(
        &gw,
        PROXY,
        &chain,
        "doc3",
        &["doc2", "hop", "proxy", "local"],
    )
    .await;
    // The same chain split over several header lines, one with a port.
    let split = [
        ("x-forwarded-for", "198.51.100.1, 203.0.113.5"),
        ("x-forwarded-for", "10.0.0.7:8080"),
    ];
    assert_passes_only(&gw, PROXY, &split, "doc3", &["doc2"]).await;
    // A client that prepends a forged hop to what the proxy writes gains nothing.
    let forged = [("x-forwarded-for", "10.1.2.3, 198.51.100.1")];
    assert_passes_only(&gw, PROXY, &forged, "doc2", &["far"]).await;
    // When every hop is trusted, the leftmost one is the client.
    let all_trusted = [("x-forwarded-for", "10.0.0.7, 10.9.9.9")];
    assert_passes(&gw, PROXY, "hop", &all_trusted).await;
}

#[tokio::test]
async fn forwarded_from_a_trusted_peer_is_believed_without_x_forwarded_for() {
    let gw = gateway().await;
    let fwd = [("forwarded", "for=10.1.2.3;proto=https;by=127.0.0.3")];
    assert_passes_only(&gw, PROXY, &fwd, "far", &["proxy"]).await;
    // Several elements, walked from the right; a quoted IPv6 node with a port.
    let v6 = [(
        "forwarded",
        "for=198.51.100.1, For=\"[2001:db8:cafe::17]:4711\", for=10.0.0.7",
    )];
    assert_passes_only(&gw, PROXY, &v6, "v6doc", &["doc2"]).await;
}

#[tokio::test]
async fn x_forwarded_for_wins_over_forwarded() {
    let gw = gateway().await;
    let both = [
        ("forwarded", "for=198.51.100.1"),
        ("x-forwarded-for", "10.1.2.3"),
    ];
    assert_passes_only(&gw, PROXY, &both, "far", &["doc2"]).await;
}

#[tokio::test]
async fn an_unreadable_hop_stops_the_walk_at_the_last_address_vouched_for() {
    let gw = gateway().await;
    // "nonsense" cannot be checked, so 10.1.2.3 to its left is not believed; the client is the
    // last hop that a trusted proxy reported: 10.0.0.7.
    let chain = [("x-forwarded-for", "10.1.2.3, nonsense, 10.0.0.7")];
    assert_passes_only(&gw, PROXY, &chain, "hop", &["far"]).await;
}
