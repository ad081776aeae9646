//! IP allow-lists: the key's and its consumer's `allow_ips` must both allow the client (403 ip_not_allowed).

use std::net::SocketAddr;

use crate::harness::policy::*;
use crate::harness::*;

const PINNED: &str = "kg_pinned_aXBBbGxvd1Rlc3RQaW5uZWRLZXlfMDAwMDAwMDE";
const OFFICE: &str = "kg_office_aXBBbGxvd1Rlc3RPZmZpY2VLZXlfMDAwMDAwMDE";
const LAB: &str = "kg_lab_aXBBbGxvd1Rlc3RMYWJLZXlfMDAwMDAwMDAwMDAwMDE";
const OPEN: &str = "kg_open_aXBBbGxvd1Rlc3RPcGVuS2V5XzAwMDAwMDAwMDAwMDE";
const NET: &str = "kg_net_aXBBbGxvd1Rlc3ROZXRLZXlfMDAwMDAwMDAwMDAwMDE";
const V6: &str = "kg_v6_aXBBbGxvd1Rlc3RWNktleV8wMDAwMDAwMDAwMDAwMDAwMDE";
const V4_ONLY: &str = "kg_v4only_aXBBbGxvd1Rlc3RWNE9ubHlLZXlfMDAwMDAwMDE";

fn config(upstream: SocketAddr) -> String {
    format!(
        r#"
[[targets]]
name = "main"
upstream = "http://{upstream}"

[[consumers]]
id = "office"
# 127.0.0.0 - 127.0.0.3
allow_ips = ["127.0.0.0/30"]

[[consumers]]
id = "lab"
allow_ips = ["127.0.0.3"]

[[keys]]
id = "pinned"
secret = "{PINNED}"
allow_ips = ["127.0.0.2"]

[[keys]]
id = "office-key"
consumer = "office"
secret = "{OFFICE}"
allow_ips = ["127.0.0.2", "127.0.0.5"]

[[keys]]
id = "lab-key"
consumer = "lab"
secret = "{LAB}"

[[keys]]
id = "open"
secret = "{OPEN}"
allow_ips = []

[[keys]]
id = "net"
secret = "{NET}"
allow_ips = ["127.0.8.0/24", "2001:db8::/32"]

[[keys]]
id = "v6"
secret = "{V6}"
allow_ips = ["::1"]

[[keys]]
id = "v4-only"
secret = "{V4_ONLY}"
allow_ips = ["127.0.0.1"]
"#
    )
}

async fn gateway() -> (SocketAddr, Upstream) {
    let up = start_upstream("main").await;
    let addr = start_keygate(&config(up.addr)).await;
    (addr, up)
}

#[track_caller]
fn assert_passed(resp: &Resp, key_id: &str) {
    assert_eq!(resp.echo().one("x-keygate-key-id"), Some(key_id));
}

#[tokio::test]
async fn key_allowed_from_one_address_works_there_and_nowhere_else() {
    let (addr, up) = gateway().await;
    assert_passed(
        &get_key_from(ip("127.0.0.2"), addr, PINNED, &[]).await,
        "pinned",
    );
    for from in ["127.0.0.1", "127.0.0.3", "127.0.0.22"] {
        let resp = get_key_from(ip(from), addr, PINNED, &[]).await;
        assert_problem(&resp, 403, "ip_not_allowed");
    }
    // Through the query parameter too: the check is on the key, not on how it came.
    let resp = get_from(ip("127.0.0.1"), addr, &format!("/r?api_key={PINNED}"), &[]).await;
    assert_problem(&resp, 403, "ip_not_allowed");
    assert_eq!(
        up.hits(),
        1,
        "a refused request must not reach the upstream"
    );
    assert_no_keygate_panic();
}

#[tokio::test]
async fn key_and_consumer_lists_must_both_allow_the_client() {
    let (addr, up) = gateway().await;
    // Both allow 127.0.0.2.
    assert_passed(
        &get_key_from(ip("127.0.0.2"), addr, OFFICE, &[]).await,
        "office-key",
    );
    // The consumer allows 127.0.0.1, the key does not.
    let resp = get_key_from(ip("127.0.0.1"), addr, OFFICE, &[]).await;
    assert_problem(&resp, 403, "ip_not_allowed");
    // The key allows 127.0.0.5, the consumer does not.
    let resp = get_key_from(ip("127.0.0.5"), addr, OFFICE, &[]).await;
    assert_problem(&resp, 403, "ip_not_allowed");
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn a_consumer_list_applies_to_keys_without_their_own() {
    let (addr, up) = gateway().await;
    assert_passed(
        &get_key_from(ip("127.0.0.3"), addr, LAB, &[]).await,
        "lab-key",
    );
    for from in ["127.0.0.1", "127.0.0.2"] {
        let resp = get_key_from(ip(from), addr, LAB, &[]).await;
        assert_problem(&resp, 403, "ip_not_allowed");
    }
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn an_empty_list_allows_any_address() {
    let (addr, up) = gateway().await;
    for from in ["127.0.0.1", "127.0.0.2", "127.0.0.200"] {
        assert_passed(&get_key_from(ip(from), addr, OPEN, &[]).await, "open");
    }
    assert_eq!(up.hits(), 3);
}

#[tokio::test]
async fn networks_match_every_address_inside_them() {
    let (addr, _up) = gateway().await;
    for from in ["127.0.8.1", "127.0.8.254"] {
        assert_passed(&get_key_from(ip(from), addr, NET, &[]).await, "net");
    }
    for from in ["127.0.7.255", "127.0.9.0", "127.0.0.1"] {
        let resp = get_key_from(ip(from), addr, NET, &[]).await;
        assert_problem(&resp, 403, "ip_not_allowed");
    }
}

/// Over IPv6 loopback: a key allowing `::1` works from `::1`; keys allowing only IPv4 addresses
/// or other IPv6 networks are refused. Skipped (with a note) where `::1` cannot be bound.
#[tokio::test]
async fn ipv6_clients_match_ipv6_rules() {
    let up = start_upstream("main").await;
    let Some(addr) = start_keygate_on(&config(up.addr), "[::1]:0".parse().unwrap()).await else {
        eprintln!("note: skipping ipv6_clients_match_ipv6_rules: no IPv6 loopback here");
        return;
    };
    let from = ip("::1");
    assert_passed(&get_key_from(from, addr, V6, &[]).await, "v6");
    assert_passed(&get_key_from(from, addr, OPEN, &[]).await, "open");
    for secret in [V4_ONLY, PINNED, NET, LAB] {
        let resp = get_key_from(from, addr, secret, &[]).await;
        assert_problem(&resp, 403, "ip_not_allowed");
    }
    // And the IPv6-only key is refused to an IPv4 client of an IPv4 listener.
    let v4 = start_keygate(&config(up.addr)).await;
    let resp = get_key_from(ip("127.0.0.1"), v4, V6, &[]).await;
    assert_problem(&resp, 403, "ip_not_allowed");
    assert_passed(
        &get_key_from(ip("127.0.0.1"), v4, V4_ONLY, &[]).await,
        "v4-only",
    );
}

/// A dual-stack listener reports IPv4 clients as `::ffff:a.b.c.d`; IPv4 rules must match them.
/// Uses a listener on the IPv4-mapped loopback address, skipped where that cannot be bound.
#[tokio::test]
async fn ipv4_mapped_peers_match_ipv4_rules() {
    let up = start_upstream("main").await;
    let listen: SocketAddr = "[::ffff:127.0.0.1]:0".parse().unwrap();
    let Some(addr) = start_keygate_on(&config(up.addr), listen).await else {
        eprintln!("note: skipping ipv4_mapped_peers_match_ipv4_rules: cannot bind {listen}");
        return;
    };
    // Reach it over plain IPv4: keygate's socket sees the mapped form of 127.0.0.1.
    let v4 = SocketAddr::new(ip("127.0.0.1"), addr.port());
    let resp = get_key_from(ip("127.0.0.1"), v4, V4_ONLY, &[]).await;
    let echo = resp.echo();
    assert_eq!(echo.one("x-keygate-key-id"), Some("v4-only"));
    // The hop keygate appends is the canonical IPv4 form too.
    assert_eq!(echo.one("x-forwarded-for"), Some("127.0.0.1"));
    let resp = get_key_from(ip("127.0.0.2"), v4, PINNED, &[]).await;
    assert_passed(&resp, "pinned");
    let resp = get_key_from(ip("127.0.0.1"), v4, V6, &[]).await;
    assert_problem(&resp, 403, "ip_not_allowed");
}
