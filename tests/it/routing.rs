//! Step 1, routing: Host and path pick the target; no match is 404 `no_route`.

use crate::harness::*;

/// Five targets, each on its own labelled echo upstream:
/// - `any-root`   any host, `/`
/// - `any-api`    any host, `/api`
/// - `any-api-v2` any host, `/api/v2`
/// - `host-root`  `api.example.com`, `/`
/// - `host-only`  `only.example.com`, `/only`
async fn routed_gateway() -> Gw {
    gateway()
        .target(target("any-root"))
        .target(target("any-api").path_prefix("/api"))
        .target(target("any-api-v2").path_prefix("/api/v2/"))
        .target(target("host-root").hosts(&["api.example.com"]))
        .target(
            target("host-only")
                .hosts(&["Only.Example.com"])
                .path_prefix("/only"),
        )
        .shared_keys()
        .start()
        .await
}

/// Which upstream served `path` for `host`.
async fn served_by(gw: &Gw, host: &str, path: &str) -> String {
    gw.get(path).host(host).key(SECRET).echo().await.upstream
}

/// Asserts that each `(host, path, target)` is served by that target.
async fn assert_routes(gw: &Gw, routes: &[(&str, &str, &str)]) {
    for (host, path, target) in routes {
        let served = served_by(gw, host, path).await;
        assert_eq!(served, *target, "Host: {host}, path {path}");
    }
}

#[tokio::test]
async fn host_match_beats_any_host_even_with_a_longer_prefix() {
    let gw = routed_gateway().await;
    // The any-host targets have longer prefixes for these paths; the host target still wins.
    assert_routes(
        &gw,
        &[
            ("api.example.com", "/", "host-root"),
            ("api.example.com", "/api/x", "host-root"),
            ("api.example.com", "/api/v2/x", "host-root"),
            // Any other host falls to the any-host targets.
            ("other.example.com", "/api/x", "any-api"),
        ],
    )
    .await;
}

#[tokio::test]
async fn a_host_without_a_matching_prefix_falls_back_to_any_host() {
    let gw = routed_gateway().await;
    assert_routes(
        &gw,
        &[
            ("only.example.com", "/only", "host-only"),
            ("only.example.com", "/only/deep/er", "host-only"),
            ("only.example.com", "/elsewhere", "any-root"),
            ("only.example.com", "/api/v2", "any-api-v2"),
        ],
    )
    .await;
}

#[tokio::test]
async fn longest_path_prefix_wins() {
    let gw = routed_gateway().await;
    assert_routes(
        &gw,
        &[
            (HOST, "/", "any-root"),
            (HOST, "/other", "any-root"),
            (HOST, "/api", "any-api"),
            (HOST, "/api/", "any-api"),
            (HOST, "/api/v1/users", "any-api"),
            // "/api/v2/" in the config matches the segment "/api/v2" with or without the slash.
            (HOST, "/api/v2", "any-api-v2"),
            (HOST, "/api/v2/users?x=1", "any-api-v2"),
        ],
    )
    .await;
}

#[tokio::test]
async fn prefixes_match_whole_segments_only() {
    let gw = routed_gateway().await;
    assert_routes(
        &gw,
        &[
            (HOST, "/apix", "any-root"),
            (HOST, "/api-docs", "any-root"),
            (HOST, "/api/v20", "any-api"),
            (HOST, "/api/v2x/y", "any-api"),
            ("only.example.com", "/onlyx", "any-root"),
        ],
    )
    .await;
}

#[tokio::test]
async fn host_is_case_insensitive_and_its_port_ignored() {
    let gw = routed_gateway().await;
    for host in [
        "API.EXAMPLE.COM",
        "Api.Example.Com",
        "api.example.com:8443",
        "API.example.COM:80",
    ] {
        assert_eq!(
            served_by(&gw, host, "/api/x").await,
            "host-root",
            "Host: {host}"
        );
    }
    // The config spelled this one with capitals.
    assert_routes(&gw, &[("only.example.com:1", "/only", "host-only")]).await;
}

#[tokio::test]
async fn the_upstream_gets_the_path_unchanged() {
    let gw = routed_gateway().await;
    // Routing picks a target; it does not strip the prefix.
    let echo = gw.get("/api/v2/users/7?full=1").key(SECRET).echo().await;
    assert_eq!(echo.upstream, "any-api-v2");
    assert_eq!(echo.uri, "/api/v2/users/7?full=1");
}

/// Target `api` on any host under `/api`, target `hosted` on `api.example.com`, one upstream.
async fn sparse_gateway() -> Gw {
    gateway()
        .target(target("api").echo("only").path_prefix("/api"))
        .target(target("hosted").echo("only").hosts(&["api.example.com"]))
        .shared_keys()
        .start()
        .await
}

#[tokio::test]
async fn no_matching_target_is_404_no_route() {
    let gw = sparse_gateway().await;
    for path in ["/", "/apix", "/other/api", "/ap"] {
        gw.get(path).key(SECRET).problem(404, "no_route").await;
    }
    assert_eq!(gw.hits(), 0, "a 404 no_route must not reach any upstream");
}

/// Routing comes first: no route is 404 even without a key, or with a bad one.
#[tokio::test]
async fn no_route_is_404_even_without_a_key_or_with_a_bad_one() {
    let gw = sparse_gateway().await;
    gw.get("/nothing").problem(404, "no_route").await;
    gw.get("/nothing")
        .key("not-a-key")
        .problem(404, "no_route")
        .await;
    assert_eq!(gw.hits(), 0, "a 404 no_route must not reach any upstream");
}

/// A host that only routes "/" to another host does not route here either.
#[tokio::test]
async fn a_host_routed_nowhere_for_the_path_is_404_no_route() {
    let gw = sparse_gateway().await;
    gw.get("/x")
        .host("elsewhere.example.com")
        .key(SECRET)
        .problem(404, "no_route")
        .await;
    assert_eq!(gw.hits(), 0, "a 404 no_route must not reach any upstream");
}

/// After a 404, the routes that do exist work.
#[tokio::test]
async fn a_sparse_route_table_still_routes_what_it_has() {
    let gw = sparse_gateway().await;
    gw.get("/").key(SECRET).problem(404, "no_route").await;
    assert_eq!(gw.get("/api/x").key(SECRET).echo().await.uri, "/api/x");
    let resp = gw
        .get("/x")
        .host("API.example.com")
        .key(SECRET)
        .send()
        .await;
    assert_eq!(resp.echo().uri, "/x");
}
