//! IP allow-lists: the key's and its consumer's `allow_ips` must both allow the client (403 ip_not_allowed).

use std::net::SocketAddr;

use crate::harness::policy::*;
use crate::harness::*;

/// The gateway, not started yet (the IPv6 tests choose its listen address).
fn gateway() -> GatewayBuilder {
    crate::harness::gateway()
        // 127.0.0.0 - 127.0.0.3
        .consumer(consumer("office").allow_ips(&["127.0.0.0/30"]))
        .consumer(consumer("lab").allow_ips(&["127.0.0.3"]))
        .key(
            key(
                "pinned",
                "kg_pinned_aXBBbGxvd1Rlc3RQaW5uZWRLZXlfMDAwMDAwMDE",
            )
            .allow_ips(&["127.0.0.2"]),
        )
        .key(
            key(
                "office-key",
                "kg_office_aXBBbGxvd1Rlc3RPZmZpY2VLZXlfMDAwMDAwMDE",
            )
            .consumer("office")
            .allow_ips(&["127.0.0.2", "127.0.0.5"]),
        )
        .key(
            key(
                "lab-key",
                "kg_lab_aXBBbGxvd1Rlc3RMYWJLZXlfMDAwMDAwMDAwMDAwMDE",
            )
            .consumer("lab"),
        )
        .key(
            key(
                "open",
                "kg_open_aXBBbGxvd1Rlc3RPcGVuS2V5XzAwMDAwMDAwMDAwMDE",
            )
            .allow_ips(&[]),
        )
        .key(
            key("net", "kg_net_aXBBbGxvd1Rlc3ROZXRLZXlfMDAwMDAwMDAwMDAwMDE")
                .allow_ips(&["127.0.8.0/24", "2001:db8::/32"]),
        )
        .key(
            key(
                "v6",
                "kg_v6_aXBBbGxvd1Rlc3RWNktleV8wMDAwMDAwMDAwMDAwMDAwMDE",
            )
            .allow_ips(&["::1"]),
        )
        .key(
            key(
                "v4-only",
                "kg_v4only_aXBBbGxvd1Rlc3RWNE9ubHlLZXlfMDAwMDAwMDE",
            )
            .allow_ips(&["127.0.0.1"]),
        )
}

#[track_caller]
fn assert_passed(resp: &Resp, key_id: &str) {
    assert_eq!(resp.echo().one("x-keygate-key-id"), Some(key_id));
}

/// Key `id` passes from each address of `allowed`, and is refused with 403 `ip_not_allowed`
/// from each of `refused`.
async fn assert_allowed_only_from(gw: &Gw, id: &str, allowed: &[&str], refused: &[&str]) {
    for from in allowed {
        assert_passed(&gw.get("/r").key_of(id).from(from).send().await, id);
    }
    for from in refused {
        gw.get("/r")
            .key_of(id)
            .from(from)
            .problem(403, "ip_not_allowed")
            .await;
    }
}

#[tokio::test]
async fn key_allowed_from_one_address_works_there_and_nowhere_else() {
    let gw = gateway().start().await;
    let elsewhere = ["127.0.0.1", "127.0.0.3", "127.0.0.22"];
    assert_allowed_only_from(&gw, "pinned", &["127.0.0.2"], &elsewhere).await;
    // Through the query parameter too: the check is on the key, not on how it came.
    gw.get(&format!("/r?api_key={}", gw.secret("pinned")))
        .from("127.0.0.1")
        .problem(403, "ip_not_allowed")
        .await;
    assert_eq!(
        gw.hits(),
        1,
        "a refused request must not reach the upstream"
    );
    assert_no_keygate_panic();
}

#[tokio::test]
async fn key_and_consumer_lists_must_both_allow_the_client() {
    let gw = gateway().start().await;
    // Both allow 127.0.0.2. The consumer allows 127.0.0.1, the key does not; the key allows
    // 127.0.0.5, the consumer does not.
    let refused = ["127.0.0.1", "127.0.0.5"];
    assert_allowed_only_from(&gw, "office-key", &["127.0.0.2"], &refused).await;
    assert_eq!(gw.hits(), 1);
}

#[tokio::test]
async fn a_consumer_list_applies_to_keys_without_their_own() {
    let gw = gateway().start().await;
    let refused = ["127.0.0.1", "127.0.0.2"];
    assert_allowed_only_from(&gw, "lab-key", &["127.0.0.3"], &refused).await;
    assert_eq!(gw.hits(), 1);
}

#[tokio::test]
async fn an_empty_list_allows_any_address() {
    let gw = gateway().start().await;
    let anywhere = ["127.0.0.1", "127.0.0.2", "127.0.0.200"];
    assert_allowed_only_from(&gw, "open", &anywhere, &[]).await;
    assert_eq!(gw.hits(), 3);
}

#[tokio::test]
async fn networks_match_every_address_inside_them() {
    let gw = gateway().start().await;
    let inside = ["127.0.8.1", "127.0.8.254"];
    let outside = ["127.0.7.255", "127.0.9.0", "127.0.0.1"];
    assert_allowed_only_from(&gw, "net", &inside, &outside).await;
}

/// Over IPv6 loopback: a key allowing `::1` works from `::1`; keys allowing only IPv4 addresses
/// or other IPv6 networks are refused. Skipped (with a note) where `::1` cannot be bound.
#[tokio::test]
async fn ipv6_clients_match_ipv6_rules() {
    let Some(gw) = gateway()
        .listen("[::1]:0".parse().unwrap())
        .try_start()
        .await
    else {
        eprintln!("note: skipping ipv6_clients_match_ipv6_rules: no IPv6 loopback here");
        return;
    };
    let from = "::1";
    assert_passed(&gw.get("/r").key_of("v6").from(from).send().await, "v6");
    assert_passed(&gw.get("/r").key_of("open").from(from).send().await, "open");
    for id in ["v4-only", "pinned", "net", "lab-key"] {
        gw.get("/r")
            .key_of(id)
            .from(from)
            .problem(403, "ip_not_allowed")
            .await;
    }
    // And the IPv6-only key is refused to an IPv4 client of an IPv4 listener.
    let v4 = gateway().start().await;
    let resp = v4.get("/r").key_of("v6").from("127.0.0.1").send().await;
    assert_problem(&resp, 403, "ip_not_allowed");
    assert_passed(
        &v4.get("/r")
            .key_of("v4-only")
            .from("127.0.0.1")
            .send()
            .await,
        "v4-only",
    );
}

/// A dual-stack listener reports IPv4 clients as `::ffff:a.b.c.d`; IPv4 rules must match them.
/// Uses a listener on the IPv4-mapped loopback address, skipped where that cannot be bound.
#[tokio::test]
async fn ipv4_mapped_peers_match_ipv4_rules() {
    let listen: SocketAddr = "[::ffff:127.0.0.1]:0".parse().unwrap();
    let Some(gw) = gateway().listen(listen).try_start().await else {
        eprintln!("note: skipping ipv4_mapped_peers_match_ipv4_rules: cannot bind {listen}");
        return;
    };
    // Reach it over plain IPv4: keygate's socket sees the mapped form of 127.0.0.1.
    let v4 = SocketAddr::new(ip("127.0.0.1"), gw.addr.port());
    let resp = gw
        .get("/r")
        .key_of("v4-only")
        .from("127.0.0.1")
        .to(v4)
        .send()
        .await;
    let echo = resp.echo();
    assert_eq!(echo.one("x-keygate-key-id"), Some("v4-only"));
    // The hop keygate appends is the canonical IPv4 form too.
    assert_eq!(echo.one("x-forwarded-for"), Some("127.0.0.1"));
    let resp = gw
        .get("/r")
        .key_of("pinned")
        .from("127.0.0.2")
        .to(v4)
        .send()
        .await;
    assert_passed(&resp, "pinned");
    gw.get("/r")
        .key_of("v6")
        .from("127.0.0.1")
        .to(v4)
        .problem(403, "ip_not_allowed")
        .await;
}
