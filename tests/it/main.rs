//! keygate's integration tests, as one test binary: one module per area (the file names of the
//! 29 binaries this replaces, so each test keeps its path, e.g. `hostile::smuggling`), and one
//! harness (`harness`) that starts real upstreams and a real keygate and talks to them.
//!
//! One binary links once instead of once per file, and shares one set of helpers. Every test
//! still starts its own keygate on `127.0.0.1:0`, so tests stay independent of each other.
//!
//! Run one area with `cargo test --test it hostile::` (a name filter).

// A test or bench that cannot go on fails loudly: unwrap, expect and panic are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;
/// The credential and client-address oracles; also included by path by the fuzz targets in
/// `fuzz/fuzz_targets/`, so it stays where they look for it.
#[path = "../oracle/mod.rs"]
mod oracle;

mod access_levels;
mod admin_api;
mod admin_conformance;
mod admin_store;
mod browser_keys;
mod cli;
mod client_ip;
mod cluster;
mod config_defaults;
mod console;
mod console_api;
mod console_flows;
mod console_usage;
mod credential;
mod deploy;
mod edge_limits;
mod failed_attempts;
mod forward_auth;
mod forwarding;
mod front;
mod hostile;
mod ip_allow;
mod key_commands;
mod key_sources;
mod key_status;
mod observability;
mod openapi;
mod policy_order;
mod properties;
mod protocols;
mod quotas;
mod rate_limits;
mod reload;
mod routing;
mod shutdown;
mod target_binding;
mod tls;
mod upstream_errors;
mod upstream_pool;
mod upstream_wire;
mod usage;
mod webhooks;
