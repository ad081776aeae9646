//! The validated sections of the config besides the keys, in the order of `config/raw.rs`:
//! what `config/sections/` makes of the raw ones.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::uri::{Authority, Scheme};
use http::{HeaderName, HeaderValue};
use serde::Deserialize;

use super::id::Id;
use super::key_hash::KeyHash;
use super::quota::Quota;
use super::rate::Rate;
use super::rules::{IpList, TargetSet};

/// `[server]`.
#[derive(Debug)]
pub struct Server {
    /// Changing it needs a restart: a reload logs that and keeps the bound socket.
    pub listen: SocketAddr,
    pub trusted_proxies: IpList,
    /// Where a key is read from: `key_sources`, else `key_header` then `key_query`.
    pub key_sources: KeySources,
    pub failed_auth_limit: Rate,
    /// How long a shutdown waits for requests and upgraded connections in flight.
    pub shutdown_timeout: Duration,
    /// Client connections served at once, over all workers; more wait in the listen backlog.
    pub max_connections: u32,
    /// A client must send a request's whole head within this (slowloris).
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers) read; larger gets 431.
    pub max_header_bytes: u32,
    /// HTTP/2 streams one client connection may have open at once.
    pub max_streams: u32,
    /// A client connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Whether the listener speaks TLS cannot change live; the files it reads can.
    pub tls: Option<TlsFiles>,
}

/// One place a request may carry its key (`[server] key_sources`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `header:NAME`: the whole value of that header, which must be given at most once.
    Header(HeaderName),
    /// `query:NAME`: the first `NAME=` parameter, percent-decoded.
    Query(Box<str>),
    /// `bearer`: `Authorization: Bearer <key>` (RFC 6750).
    Bearer,
    /// `cookie:NAME`: that cookie of the `Cookie` header(s).
    Cookie(Box<str>),
}

/// `[server] key_sources`, in the order they are tried, with what `forward` strips and the
/// access log redacts worked out once at load: the request path only reads these lists.
#[derive(Debug, Clone)]
pub struct KeySources {
    list: Box<[KeySource]>,
    headers: Box<[HeaderName]>,
    queries: Box<[Box<str>]>,
    cookies: Box<[Box<str>]>,
    bearer: bool,
}

impl KeySources {
    pub fn new(list: Vec<KeySource>) -> KeySources {
        let mut headers = Vec::new();
        let mut queries = Vec::new();
        let mut cookies = Vec::new();
        let mut bearer = false;
        for source in &list {
            match source {
                KeySource::Header(h) => headers.push(h.clone()),
                KeySource::Query(q) => queries.push(q.clone()),
                KeySource::Cookie(c) => cookies.push(c.clone()),
                KeySource::Bearer => bearer = true,
            }
        }
        KeySources {
            list: list.into(),
            headers: headers.into(),
            queries: queries.into(),
            cookies: cookies.into(),
            bearer,
        }
    }

    /// Every source, in the order they are tried.
    pub fn list(&self) -> &[KeySource] {
        &self.list
    }

    pub fn headers(&self) -> &[HeaderName] {
        &self.headers
    }

    pub fn queries(&self) -> &[Box<str>] {
        &self.queries
    }

    pub fn cookies(&self) -> &[Box<str>] {
        &self.cookies
    }

    pub fn bearer(&self) -> bool {
        self.bearer
    }
}

/// `[server.tls]`: where the listener's certificate chain and private key are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// A handshake not done by then is dropped.
    pub handshake_timeout: std::time::Duration,
}

/// `[admin] key_prefix` when absent (or without `[admin]`): the prefix of generated secrets.
pub const DEFAULT_KEY_PREFIX: &str = "kg_";

/// `[admin]` with its `[[admin_keys]]`.
#[derive(Debug)]
pub struct Admin {
    pub listen: SocketAddr,
    pub key_prefix: Box<str>,
    pub keys: HashMap<KeyHash, AdminKey>,
    pub session_idle: std::time::Duration,
    pub session_max: std::time::Duration,
    /// What `audit_log` says; resolved against the keys file by `Snapshot::audit_log`.
    pub audit_log: AuditLog,
    /// `[admin.tls]`.
    pub tls: Option<TlsFiles>,
}

/// `[admin] audit_log`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AuditLog {
    /// `audit.jsonl` beside the keys file (none without a keys file: nothing can change).
    #[default]
    BesideKeysFile,
    Off,
    File(std::path::PathBuf),
}

/// One `[[admin_keys]]` entry.
#[derive(Debug, Clone)]
pub struct AdminKey {
    pub id: Id,
    pub role: Role,
}

/// `role = "read" | "admin"`: read may list and get; admin may also change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Admin,
}

/// `[verify]`: the decision-only listener a proxy's forward-auth asks (docs/forward-auth.md).
#[derive(Debug, Clone)]
pub struct Verify {
    /// Changing it needs a restart, as for `[server] listen`.
    pub listen: SocketAddr,
    /// The proxies that may ask, and whose `X-Forwarded-*` / `X-Original-*` headers are
    /// believed: `[verify] trusted_proxies`, else `[server] trusted_proxies`; never empty.
    pub trusted_proxies: IpList,
}

/// `[log]`: the access log, one line per request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Log {
    pub access: AccessTo,
    pub format: LogFormat,
}

/// `[log] access`: where access log lines go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AccessTo {
    Off,
    #[default]
    Stdout,
    /// Appended to; resolved against the config file's directory.
    File(std::path::PathBuf),
}

/// `[log] format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

/// `[cluster]`: Redis shared by several instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// One Redis's URL; with `nodes`, the first node's, for messages.
    pub redis: String,
    /// `redis_cluster`: the seed nodes of a Redis Cluster; with `sentinel_master`, the
    /// Sentinels of `redis_sentinel` (empty: one Redis).
    pub nodes: Vec<String>,
    /// `sentinel_master`: the name of the master the Sentinels watch.
    pub sentinel_master: Option<String>,
    pub mode: ClusterMode,
    pub on_redis_error: OnRedisError,
    pub timeout: Duration,
    pub sync_interval: Duration,
    pub prefix: String,
}

/// `[cluster] mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterMode {
    /// Every rate-limited request asks Redis: exact across the fleet, one round trip each.
    Strict,
    /// Decide locally and reconcile with Redis every `sync_interval`: no round trip on the
    /// request path, an overshoot of at most what the other instances admit in one interval.
    LocalSync,
}

/// `[cluster] on_redis_error`: what a rate-limited request gets while Redis fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRedisError {
    /// Not limited at all.
    Allow,
    /// Refused with 503 `rate_limit_unavailable`.
    Deny,
    /// Limited by this instance's own buckets.
    Local,
}

/// `[usage]`: per-key usage counting (`src/usage/`). Read at start; changing it needs a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageConfig {
    /// `enabled = false`: nothing is counted, the usage endpoints answer 404 `usage_disabled`.
    pub enabled: bool,
    /// How often the workers' counts are collected, written to the file and sent to the fleet:
    /// what a crash (not a shutdown) can lose.
    pub flush_interval: Duration,
    /// Days of daily counts kept, today included; hourly counts are kept 48 hours.
    pub retention_days: u32,
    /// `file`: where counts are kept (`None`: `<keys file stem>.usage.json` beside the keys
    /// file, or beside the config without one).
    pub file: Option<PathBuf>,
}

impl UsageConfig {
    /// `[usage] flush_interval` when absent.
    pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(10);
    /// `[usage] retention` when absent: 90 days.
    pub const DEFAULT_RETENTION_DAYS: u32 = 90;
}

impl Default for UsageConfig {
    fn default() -> Self {
        UsageConfig {
            enabled: true,
            flush_interval: UsageConfig::DEFAULT_FLUSH_INTERVAL,
            retention_days: UsageConfig::DEFAULT_RETENTION_DAYS,
            file: None,
        }
    }
}

/// `[[targets]]`: a deploy target and its upstream.
#[derive(Debug)]
pub struct Target {
    pub name: Id,
    pub scheme: Scheme,
    pub authority: Authority,
    /// `Host` sent upstream unless `preserve_host`: the upstream's own authority.
    pub upstream_host: HeaderValue,
    pub hosts: Vec<Box<str>>,
    pub path_prefix: Box<str>,
    pub timeout: Duration,
    /// Largest request body in bytes (`None`: unlimited); more gets 413 `body_too_large`.
    pub max_body: Option<u64>,
    pub preserve_host: bool,
    /// The verifier for an `https://` upstream.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// The name of the key keygate keeps for a consumer with `default_key = true`.
pub const DEFAULT_KEY_NAME: &str = "Default key (created by keygate)";

/// `[[consumers]]`: an account that owns keys.
#[derive(Debug)]
pub struct Consumer {
    pub id: Id,
    pub name: Option<Box<str>>,
    pub allow_ips: IpList,
    pub targets: TargetSet,
    pub rate_limit: Option<Rate>,
    /// Shared by all its keys.
    pub quota: Option<Quota>,
    pub max_keys: Option<u32>,
    /// `default_key = true`: keygate keeps one key named [`DEFAULT_KEY_NAME`] for it, made
    /// with the consumer and made anew when revoked.
    pub default_key: bool,
    pub created_at: Option<SystemTime>,
    /// Defined in the keys file (changeable through the admin API), not the main file.
    pub managed: bool,
}

/// `[[webhooks]]`: one receiver of events.
#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    /// Label in the metrics and logs; unique among the webhooks.
    pub name: Box<str>,
    pub url: http::Uri,
    /// The event names it receives (validated against the known ones).
    pub events: Vec<Box<str>>,
    /// The signing secret's bytes.
    pub secret: Box<[u8]>,
    pub timeout: Duration,
    pub retry_initial: Duration,
    pub retry_for: Duration,
    pub max_pending: u32,
}

// By hand, so that the secret never reaches a log line.
impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

/// Every event a webhook may ask for (`events/mod.rs` makes them; docs/webhooks.md).
pub const EVENT_NAMES: [&str; 7] = [
    "key.created",
    "key.updated",
    "key.revoked",
    "key.expiring",
    "key.expired_used",
    "quota.warning",
    "quota.exceeded",
];
