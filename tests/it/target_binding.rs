//! Deploy-target bindings: the key's and its consumer's `targets` must both include the routed target (403 target_not_allowed).

use crate::harness::*;

/// Requests that reached `production`, `staging` and `sandbox`.
fn hits(gw: &Gw) -> [usize; 3] {
    ["production", "staging", "sandbox"].map(|t| gw.up(t).hits())
}

async fn gateway() -> Gw {
    crate::harness::gateway()
        .target(target("production"))
        .target(target("staging").hosts(&["staging.example.com"]))
        .target(target("sandbox").path_prefix("/sandbox"))
        .consumer(consumer("ci").targets(&["staging", "sandbox"]))
        .key(
            key(
                "stage-only",
                "kg_stage_dGFyZ2V0VGVzdFN0YWdlT25seUtleV8wMDAwMDE",
            )
            .targets(&["staging"]),
        )
        .key(
            key(
                "prod-only",
                "kg_prod_dGFyZ2V0VGVzdFByb2RPbmx5S2V5XzAwMDAwMDE",
            )
            .targets(&["production"]),
        )
        .key(
            key(
                "any-target",
                "kg_any_dGFyZ2V0VGVzdEFueVRhcmdldEtleV8wMDAwMDAx",
            )
            .targets(&[]),
        )
        .key(
            key(
                "ci-prod-stage",
                "kg_ciboth_dGFyZ2V0VGVzdENpUHJvZFN0YWdlS2V5XzAx",
            )
            .consumer("ci")
            .targets(&["production", "staging"]),
        )
        .key(
            key(
                "ci-plain",
                "kg_ciplain_dGFyZ2V0VGVzdENpUGxhaW5LZXlfMDAwMDAx",
            )
            .consumer("ci"),
        )
        .start()
        .await
}

/// Where a request with key `id` lands: the upstream's label, or the denial code.
async fn lands(gw: &Gw, target: &str, id: &str) -> String {
    let (host, path) = match target {
        "production" => (HOST, "/r"),
        "staging" => ("staging.example.com", "/r"),
        "sandbox" => (HOST, "/sandbox/r"),
        other => panic!("no such target {other}"),
    };
    let resp = gw.get(path).host(host).key_of(id).send().await;
    if resp.status.is_success() {
        resp.echo().upstream
    } else {
        let json = assert_problem(&resp, 403, "target_not_allowed");
        json["code"].as_str().unwrap().to_owned()
    }
}

/// Asserts that each `(target, key id, outcome)` lands as [`lands`] says.
async fn assert_lands(gw: &Gw, cases: &[(&str, &str, &str)]) {
    for (target, id, outcome) in cases {
        assert_eq!(
            lands(gw, target, id).await,
            *outcome,
            "key {id} on {target}"
        );
    }
}

#[tokio::test]
async fn a_key_bound_to_staging_is_refused_on_production() {
    let gw = gateway().await;
    assert_lands(
        &gw,
        &[
            ("production", "stage-only", "target_not_allowed"),
            ("sandbox", "stage-only", "target_not_allowed"),
            ("staging", "stage-only", "staging"),
        ],
    )
    .await;
    assert_eq!(hits(&gw), [0, 1, 0]);
}

#[tokio::test]
async fn a_key_bound_to_production_is_refused_on_staging() {
    let gw = gateway().await;
    assert_lands(
        &gw,
        &[
            ("production", "prod-only", "production"),
            ("staging", "prod-only", "target_not_allowed"),
            ("sandbox", "prod-only", "target_not_allowed"),
        ],
    )
    .await;
    assert_eq!(hits(&gw), [1, 0, 0]);
}

#[tokio::test]
async fn a_key_without_bindings_reaches_every_target() {
    let gw = gateway().await;
    for target in ["production", "staging", "sandbox"] {
        assert_eq!(lands(&gw, target, "any-target").await, target);
    }
    assert_eq!(hits(&gw), [1, 1, 1]);
}

#[tokio::test]
async fn consumer_bindings_apply_too() {
    let gw = gateway().await;
    // Key: production + staging; consumer: staging + sandbox. Only staging is in both.
    assert_lands(
        &gw,
        &[
            ("production", "ci-prod-stage", "target_not_allowed"),
            ("sandbox", "ci-prod-stage", "target_not_allowed"),
            ("staging", "ci-prod-stage", "staging"),
            // A key of the consumer without bindings of its own has the consumer's.
            ("production", "ci-plain", "target_not_allowed"),
            ("staging", "ci-plain", "staging"),
            ("sandbox", "ci-plain", "sandbox"),
        ],
    )
    .await;
    assert_eq!(hits(&gw), [0, 2, 1]);
}

/// The target is the one the request is routed to, over HTTP/2 as well (`:authority`).
#[tokio::test]
async fn the_routed_target_decides_over_http2_too() {
    let gw = gateway().await;
    let mut h2 = H2::connect(gw.addr).await;
    let resp = h2
        .send(h2_request(
            "GET",
            "staging.example.com",
            "/r",
            &[("x-api-key", gw.secret("stage-only"))],
            empty(),
        ))
        .await;
    assert_eq!(resp.echo().upstream, "staging");
    let resp = h2
        .send(h2_request(
            "GET",
            HOST,
            "/r",
            &[("x-api-key", gw.secret("stage-only"))],
            empty(),
        ))
        .await;
    assert_problem(&resp, 403, "target_not_allowed");
    assert_eq!(hits(&gw), [0, 1, 0]);
}
