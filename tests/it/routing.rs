//! Step 1, routing: Host and path pick the target; no match is 404 `no_route`.

use std::net::SocketAddr;

use crate::harness::*;

/// Five targets, each on its own labelled echo upstream:
/// - `any-root`   any host, `/`
/// - `any-api`    any host, `/api`
/// - `any-api-v2` any host, `/api/v2`
/// - `host-root`  `api.example.com`, `/`
/// - `host-only`  `only.example.com`, `/only`
async fn routed_gateway() -> (SocketAddr, [Upstream; 5]) {
    let ups = [
        start_upstream("any-root").await,
        start_upstream("any-api").await,
        start_upstream("any-api-v2").await,
        start_upstream("host-root").await,
        start_upstream("host-only").await,
    ];
    let config = format!(
        r#"
[[targets]]
name = "any-root"
upstream = "http://{}"

[[targets]]
name = "any-api"
upstream = "http://{}"
path_prefix = "/api"

[[targets]]
name = "any-api-v2"
upstream = "http://{}"
path_prefix = "/api/v2/"

[[targets]]
name = "host-root"
upstream = "http://{}"
hosts = ["api.example.com"]

[[targets]]
name = "host-only"
upstream = "http://{}"
hosts = ["Only.Example.com"]
path_prefix = "/only"
{}"#,
        ups[0].addr,
        ups[1].addr,
        ups[2].addr,
        ups[3].addr,
        ups[4].addr,
        keys_toml()
    );
    (start_keygate(&config).await, ups)
}

/// Which upstream served `path` for `host`.
async fn served_by(addr: SocketAddr, host: &str, path: &str) -> String {
    get(addr, path, &[("host", host), ("x-api-key", SECRET)])
        .await
        .echo()
        .upstream
}

#[tokio::test]
async fn host_match_beats_any_host_even_with_a_longer_prefix() {
    let (addr, _ups) = routed_gateway().await;
    // The any-host targets have longer prefixes for these paths; the host target still wins.
    assert_eq!(served_by(addr, "api.example.com", "/").await, "host-root");
    assert_eq!(
        served_by(addr, "api.example.com", "/api/x").await,
        "host-root"
    );
    assert_eq!(
        served_by(addr, "api.example.com", "/api/v2/x").await,
        "host-root"
    );
    // Any other host falls to the any-host targets.
    assert_eq!(
        served_by(addr, "other.example.com", "/api/x").await,
        "any-api"
    );
}

#[tokio::test]
async fn a_host_without_a_matching_prefix_falls_back_to_any_host() {
    let (addr, _ups) = routed_gateway().await;
    assert_eq!(
        served_by(addr, "only.example.com", "/only").await,
        "host-only"
    );
    assert_eq!(
        served_by(addr, "only.example.com", "/only/deep/er").await,
        "host-only"
    );
    assert_eq!(
        served_by(addr, "only.example.com", "/elsewhere").await,
        "any-root"
    );
    assert_eq!(
        served_by(addr, "only.example.com", "/api/v2").await,
        "any-api-v2"
    );
}

#[tokio::test]
async fn longest_path_prefix_wins() {
    let (addr, _ups) = routed_gateway().await;
    assert_eq!(served_by(addr, HOST, "/").await, "any-root");
    assert_eq!(served_by(addr, HOST, "/other").await, "any-root");
    assert_eq!(served_by(addr, HOST, "/api").await, "any-api");
    assert_eq!(served_by(addr, HOST, "/api/").await, "any-api");
    assert_eq!(served_by(addr, HOST, "/api/v1/users").await, "any-api");
    // "/api/v2/" in the config matches the segment "/api/v2" with or without the slash.
    assert_eq!(served_by(addr, HOST, "/api/v2").await, "any-api-v2");
    assert_eq!(
        served_by(addr, HOST, "/api/v2/users?x=1").await,
        "any-api-v2"
    );
}

#[tokio::test]
async fn prefixes_match_whole_segments_only() {
    let (addr, _ups) = routed_gateway().await;
    assert_eq!(served_by(addr, HOST, "/apix").await, "any-root");
    assert_eq!(served_by(addr, HOST, "/api-docs").await, "any-root");
    assert_eq!(served_by(addr, HOST, "/api/v20").await, "any-api");
    assert_eq!(served_by(addr, HOST, "/api/v2x/y").await, "any-api");
    assert_eq!(
        served_by(addr, "only.example.com", "/onlyx").await,
        "any-root"
    );
}

#[tokio::test]
async fn host_is_case_insensitive_and_its_port_ignored() {
    let (addr, _ups) = routed_gateway().await;
    for host in [
        "API.EXAMPLE.COM",
        "Api.Example.Com",
        "api.example.com:8443",
        "API.example.COM:80",
    ] {
        assert_eq!(
            served_by(addr, host, "/api/x").await,
            "host-root",
            "Host: {host}"
        );
    }
    // The config spelled this one with capitals.
    assert_eq!(
        served_by(addr, "only.example.com:1", "/only").await,
        "host-only"
    );
}

#[tokio::test]
async fn the_upstream_gets_the_path_unchanged() {
    let (addr, _ups) = routed_gateway().await;
    // Routing picks a target; it does not strip the prefix.
    let echo = get_ok(addr, "/api/v2/users/7?full=1").await.echo();
    assert_eq!(echo.upstream, "any-api-v2");
    assert_eq!(echo.uri, "/api/v2/users/7?full=1");
}

#[tokio::test]
async fn no_matching_target_is_404_no_route() {
    let up = start_upstream("only").await;
    let config = format!(
        r#"
[[targets]]
name = "api"
upstream = "http://{}"
path_prefix = "/api"

[[targets]]
name = "hosted"
upstream = "http://{}"
hosts = ["api.example.com"]
{}"#,
        up.addr,
        up.addr,
        keys_toml()
    );
    let addr = start_keygate(&config).await;

    for path in ["/", "/apix", "/other/api", "/ap"] {
        let resp = get(addr, path, &[("x-api-key", SECRET)]).await;
        assert_problem(&resp, 404, "no_route");
    }
    // Routing comes first: no route is 404 even without a key, or with a bad one.
    assert_problem(&get(addr, "/nothing", &[]).await, 404, "no_route");
    assert_problem(
        &get(addr, "/nothing", &[("x-api-key", "not-a-key")]).await,
        404,
        "no_route",
    );
    // A host that only routes "/" to another host does not route here either.
    assert_problem(
        &get(
            addr,
            "/x",
            &[("host", "elsewhere.example.com"), ("x-api-key", SECRET)],
        )
        .await,
        404,
        "no_route",
    );
    assert_eq!(up.hits(), 0, "a 404 no_route must not reach any upstream");

    // And the routes that do exist still work.
    assert_eq!(get_ok(addr, "/api/x").await.echo().uri, "/api/x");
    assert_eq!(
        get(
            addr,
            "/x",
            &[("host", "API.example.com"), ("x-api-key", SECRET)]
        )
        .await
        .echo()
        .uri,
        "/x"
    );
}
