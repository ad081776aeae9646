//! The config file as the user wrote it: serde types that mirror the TOML one to one.
//!
//! Every struct denies unknown fields, so a typo such as `alow_ips` is an error instead of a
//! silently dropped restriction. Values that need checking beyond their TOML type are kept as
//! [`Spanned`] so that `validate` can point at their line and column.
//!
//! A key's strings are [`Text`]: borrowed from the file's text wherever they need no unescaping,
//! so that reading a million keys does not copy each of their strings.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use toml::Spanned;
use toml::value::Datetime;

// The values a raw table holds as they are: the model's own.
use crate::model::{Access, Role, Status};

/// A string of the config: borrowed from the file when it is written without escapes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Text<'a>(pub Cow<'a, str>);

impl std::ops::Deref for Text<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor<'a>(std::marker::PhantomData<&'a ()>);

        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visitor<'a> {
            type Value = Text<'a>;

            // As `String` says it, so that a wrong type reads as before.
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }

            fn visit_str<E>(self, v: &str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E>(self, v: String) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }

        d.deserialize_string(Visitor(std::marker::PhantomData))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig<'a> {
    /// The file of `[[consumers]]` and `[[keys]]` that keygate manages (admin API, commands).
    pub keys_file: Option<Spanned<String>>,
    #[serde(default)]
    pub server: RawServer,
    pub admin: Option<RawAdmin>,
    /// `[log]`: the access log.
    pub log: Option<RawLog>,
    /// `[metrics]`: a listener of its own for `/metrics` (the admin API serves it too).
    pub metrics: Option<RawMetrics>,
    /// `[verify]`: the decision-only listener for forward-auth.
    pub verify: Option<Spanned<RawVerify>>,
    /// `[cluster]`: rate limits and key changes shared through Redis.
    pub cluster: Option<Spanned<RawCluster>>,
    /// `[usage]`: per-key usage counting.
    pub usage: Option<RawUsage>,
    #[serde(default)]
    pub admin_keys: Vec<RawAdminKey>,
    /// `[[webhooks]]`: where key and quota events are POSTed.
    #[serde(default)]
    pub webhooks: Vec<Spanned<RawWebhook>>,
    #[serde(default)]
    pub targets: Vec<RawTarget>,
    #[serde(default)]
    pub consumers: Vec<RawConsumer>,
    /// `None` when the file has no `keys` at all (then a split-off `[[keys]]` may not meet one).
    #[serde(borrow)]
    pub keys: Option<Vec<RawKey<'a>>>,
}

/// The keys file: only consumers and keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeysFile<'a> {
    #[serde(default)]
    pub consumers: Vec<RawConsumer>,
    #[serde(borrow)]
    pub keys: Option<Vec<RawKey<'a>>>,
}

/// What [`RawConfig`] and [`RawKeysFile`] share: their keys.
pub trait HasKeys<'a> {
    fn keys(&self) -> Option<&[RawKey<'a>]>;
}

impl<'a> HasKeys<'a> for RawConfig<'a> {
    fn keys(&self) -> Option<&[RawKey<'a>]> {
        self.keys.as_deref()
    }
}

impl<'a> HasKeys<'a> for RawKeysFile<'a> {
    fn keys(&self) -> Option<&[RawKey<'a>]> {
        self.keys.as_deref()
    }
}

/// `[admin]`: the admin API's own listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Spanned<String>,
    /// Prefix of secrets the admin API generates.
    pub key_prefix: Option<Spanned<String>>,
    /// A console session ends after this long without a request.
    pub session_idle: Option<Spanned<String>>,
    /// ... and this long after sign-in, however busy.
    pub session_max: Option<Spanned<String>>,
    /// Where every change is recorded: a path (relative to the config file) or `"off"`.
    pub audit_log: Option<Spanned<String>>,
    /// `[admin.tls]`: the admin listener (and so the console) over HTTPS.
    pub tls: Option<Spanned<RawTls>>,
}

/// `[log]`: where the access log goes and in which format.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// `"stdout"`, `"off"` or a file path (relative to the config file).
    pub access: Option<Spanned<String>>,
    /// `"json"` or `"text"`.
    pub format: Option<Spanned<String>>,
}

/// `[metrics]`: Prometheus metrics on their own listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub listen: Spanned<String>,
}

/// `[verify]`: a listener that answers decisions only, for a proxy's forward-auth.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVerify {
    pub listen: Spanned<String>,
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
}

/// `[cluster]`: several keygate instances sharing rate limits and key changes through Redis.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// `redis://` or `rediss://` URL of one Redis.
    pub redis: Option<Spanned<String>>,
    /// Or the seed nodes of a Redis Cluster.
    pub redis_cluster: Option<Spanned<Vec<String>>>,
    /// Or the Sentinels that know where `sentinel_master` is.
    pub redis_sentinel: Option<Spanned<Vec<String>>>,
    pub sentinel_master: Option<Spanned<String>>,
    /// `"strict"` or `"local-sync"`.
    pub mode: Option<Spanned<String>>,
    /// `"allow"`, `"deny"` or `"local"`.
    pub on_redis_error: Option<Spanned<String>>,
    /// Bound on every Redis call.
    pub timeout: Option<Spanned<String>>,
    /// `local-sync`: how often counts are reconciled.
    pub sync_interval: Option<Spanned<String>>,
    /// Prefix of every Redis key and channel keygate uses.
    pub prefix: Option<Spanned<String>>,
}

/// `[[webhooks]]`: one receiver of events (docs/webhooks.md).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    /// `http://` or `https://` URL the events are POSTed to.
    pub url: Spanned<String>,
    /// The event names it receives, e.g. `["key.created", "quota.exceeded"]`.
    pub events: Spanned<Vec<Spanned<String>>>,
    /// The HMAC-SHA256 signing secret, or a file holding it (relative to the config file).
    pub secret: Option<Spanned<String>>,
    pub secret_file: Option<Spanned<String>>,
    /// Its label in the metrics and logs (default: the URL's host, port and path).
    pub name: Option<Spanned<String>>,
    /// Bound on one delivery attempt.
    pub timeout: Option<Spanned<String>>,
    /// The wait before the first retry; each next one waits twice as long (up to an hour).
    pub retry_initial: Option<Spanned<String>>,
    /// How long a failing delivery is retried before it is given up.
    pub retry_for: Option<Spanned<String>>,
    /// Deliveries waiting for this receiver, at most; past it the oldest is dropped.
    pub max_pending: Option<Spanned<u32>>,
}

/// `[usage]`: per-key usage counts, kept in a file and (with `[cluster]`) summed in Redis.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUsage {
    pub enabled: Option<bool>,
    pub flush_interval: Option<Spanned<String>>,
    pub retention: Option<Spanned<String>>,
    /// Relative to the config file.
    pub file: Option<Spanned<String>>,
}

/// `[[admin_keys]]`: who may call the admin API.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdminKey {
    pub id: Spanned<String>,
    pub hash: Spanned<String>,
    pub role: Role,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<Spanned<String>>,
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    pub key_header: Option<Spanned<String>>,
    pub key_query: Option<Spanned<String>>,
    /// `["header:X-API-Key", "query:api_key", "bearer", "cookie:kg_key"]`; excludes the two above.
    pub key_sources: Option<Spanned<Vec<Spanned<String>>>>,
    pub failed_auth_limit: Option<Spanned<String>>,
    pub shutdown_timeout: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<u32>>,
    pub header_read_timeout: Option<Spanned<String>>,
    pub max_header_bytes: Option<Spanned<u32>>,
    pub max_streams: Option<Spanned<u32>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub tls: Option<Spanned<RawTls>>,
}

/// `[server.tls]`: paths relative to the config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
    pub handshake_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub name: Spanned<String>,
    pub upstream: Spanned<String>,
    pub hosts: Option<Vec<Spanned<String>>>,
    pub path_prefix: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    /// Largest request body, e.g. `"10MB"`, or `"unlimited"`.
    pub max_body: Option<Spanned<String>>,
    pub preserve_host: Option<bool>,
    pub ca_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsumer {
    pub id: Spanned<String>,
    pub name: Option<String>,
    pub allow_ips: Option<Vec<Spanned<String>>>,
    pub targets: Option<Vec<Spanned<String>>>,
    pub rate_limit: Option<Spanned<String>>,
    /// `"100000/month"`: shared by all the consumer's keys.
    pub quota: Option<Spanned<String>>,
    /// Creating one more key for this consumer through the admin API is refused.
    pub max_keys: Option<u32>,
    /// keygate keeps one key named `Default key (created by keygate)` for this consumer.
    pub default_key: Option<bool>,
    pub created_at: Option<Spanned<Datetime>>,
}

/// One `[[keys]]` table. `scan::key` reads the same fields: a field added here goes there too.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey<'a> {
    #[serde(borrow)]
    pub id: Spanned<Text<'a>>,
    #[serde(borrow)]
    pub name: Option<Text<'a>>,
    #[serde(borrow)]
    pub consumer: Option<Spanned<Text<'a>>>,
    #[serde(borrow)]
    pub hash: Option<Spanned<Text<'a>>>,
    #[serde(borrow)]
    pub secret: Option<Spanned<Text<'a>>>,
    pub status: Option<Status>,
    pub expires_at: Option<Spanned<Datetime>>,
    #[serde(borrow)]
    pub targets: Option<Vec<Spanned<Text<'a>>>>,
    #[serde(borrow)]
    pub allow_ips: Option<Vec<Spanned<Text<'a>>>>,
    pub access: Option<Access>,
    #[serde(borrow)]
    pub paths: Option<Vec<Spanned<Text<'a>>>>,
    #[serde(borrow)]
    pub rate_limit: Option<Spanned<Text<'a>>>,
    /// `"100000/month"`: requests per calendar window (UTC).
    #[serde(borrow)]
    pub quota: Option<Spanned<Text<'a>>>,
    /// When the key was made (the admin API sets it).
    pub created_at: Option<Spanned<Datetime>>,
    /// The first characters of the secret, to recognise it by.
    #[serde(borrow)]
    pub prefix: Option<Text<'a>>,
    /// After a rotation: the hash of the old secret, which keeps working until
    /// `previous_expires_at`.
    #[serde(borrow)]
    pub previous_hash: Option<Spanned<Text<'a>>>,
    pub previous_expires_at: Option<Spanned<Datetime>>,
}
