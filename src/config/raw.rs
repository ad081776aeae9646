//! The config file as the user wrote it: serde types that mirror the TOML one to one.
//!
//! Every struct denies unknown fields, so a typo such as `alow_ips` is an error instead of a
//! silently dropped restriction. Values that need checking beyond their TOML type are kept as
//! [`Spanned`] so that `validate` can point at their line and column.

use serde::Deserialize;
use toml::Spanned;
use toml::value::Datetime;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub targets: Vec<RawTarget>,
    #[serde(default)]
    pub consumers: Vec<RawConsumer>,
    #[serde(default)]
    pub keys: Vec<RawKey>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<Spanned<String>>,
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    pub key_header: Option<Spanned<String>>,
    pub key_query: Option<Spanned<String>>,
    pub failed_auth_limit: Option<Spanned<String>>,
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub id: Spanned<String>,
    pub name: Option<String>,
    pub consumer: Option<Spanned<String>>,
    pub hash: Option<Spanned<String>>,
    pub secret: Option<Spanned<String>>,
    pub status: Option<Status>,
    pub expires_at: Option<Spanned<Datetime>>,
    pub targets: Option<Vec<Spanned<String>>>,
    pub allow_ips: Option<Vec<Spanned<String>>>,
    pub access: Option<Access>,
    pub paths: Option<Vec<Spanned<String>>>,
    pub rate_limit: Option<Spanned<String>>,
}

/// `status = "active" | "inactive"`: an inactive key is refused with `key_inactive`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Active,
    Inactive,
}

/// `access = "read-only" | "read-write"`: read-only allows GET, HEAD and OPTIONS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    ReadOnly,
    #[default]
    ReadWrite,
}
