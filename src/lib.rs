//! keygate: an authenticating reverse proxy. Every request needs a valid API key; a valid key
//! reaches its deploy target's upstream with the credential stripped and the caller's identity
//! attached. `docs/architecture.md` tells the whole story; this is the map.
//!
//! The request path (`proxy::Proxy::handle`), one file per phase:
//!
//! ```text
//! http/listener  accept, TLS, HTTP/1.1 + h2, edge limits     400 invalid_request, 431
//! client_ip      peer or trusted forwarders -> client address
//! route          Host + path -> target                        404 no_route
//! credential     [server] key_sources: header, query, bearer, 403 key_missing / key_invalid
//!                cookie (default X-API-Key, then api_key)
//! authorize      pure: checksum, hash, one lookup, status,    429 too_many_failures, 403 ...
//!                expiry, IP, target, access
//! rate           rate limits, then quotas: local, local-sync   429 rate_limited,
//!                or strict, one call                           429 quota_exceeded
//! forward        strip the key, stream to the upstream         413 / 400 / 502 / 504
//! respond        the one place a refusal is recorded and rendered
//! observe        metrics and the access log, when the body ends
//! ```

#![forbid(unsafe_code)]

// Operations: the process, its commands, and what changes or watches the state.
pub(crate) mod admin;
pub mod audit;
pub mod cli;
pub(crate) mod cluster;
// Webhook events: emitted by the reloader and the request path (a non-blocking push; it
// imports nothing of the request path), delivered by its own task.
pub mod events;
pub mod gateway;
pub(crate) mod manage;
pub(crate) mod metrics;
pub(crate) mod reload;
pub mod store;
pub mod usage;

// The request path.
pub mod http;
pub mod proxy;

// State and config: what a request reads, and how it is built.
pub mod config;
pub mod limits;
pub(crate) mod model;
pub mod secret;
pub mod snapshot;
pub mod state;
pub(crate) mod tls;

pub use gateway::{Gateway, Listeners, run};
