//! keygate: an authenticating reverse proxy. Every request needs a valid API key; a valid key
//! reaches its deploy target's upstream with the credential stripped and the caller's identity
//! attached.
//!
//! # Layout
//!
//! The request path, in the order a request meets it (`src/proxy/`):
//!
//! ```text
//! server.rs      accept TCP, speak HTTP/1.1 or h2c
//! route.rs       Host + path -> target                      404 no_route
//! credential.rs  X-API-Key header, else api_key query        403 key_missing / key_invalid
//! client_ip.rs   peer -> canonical client address
//! policy.rs      SHA-256, one lookup, status, expiry         403 key_invalid / inactive / expired
//! forward.rs     strip key, set identity headers, stream     502 / 504 upstream_*
//! deny.rs        every denial -> problem+json, in one place
//! ```
//!
//! Beside it: `config/` reads `keygate.toml` (raw serde types, then validation with line and
//! column), `snapshot.rs` holds the validated config that requests read and that is swapped whole,
//! `secret.rs` hashes and generates secrets, `cli.rs` is the command line.

#![forbid(unsafe_code)]

pub(crate) mod admin;
pub mod cli;
pub(crate) mod cluster;
pub mod config;
pub mod gateway;
pub mod http;
pub mod limits;
pub(crate) mod manage;
pub(crate) mod metrics;
pub(crate) mod model;
pub mod proxy;
pub(crate) mod reload;
pub mod secret;
pub mod snapshot;
pub mod state;
pub mod store;
pub(crate) mod tls;

pub use gateway::{Gateway, Listeners, run};
