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
    /// The file of `[[consumers]]` and `[[keys]]` that keygate manages (admin API, commands).
    pub keys_file: Option<Spanned<String>>,
    #[serde(default)]
    pub server: RawServer,
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub admin_keys: Vec<RawAdminKey>,
    #[serde(default)]
    pub targets: Vec<RawTarget>,
    #[serde(default)]
    pub consumers: Vec<RawConsumer>,
    #[serde(default)]
    pub keys: Vec<RawKey>,
}

/// The keys file: only consumers and keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeysFile {
    #[serde(default)]
    pub consumers: Vec<RawConsumer>,
    #[serde(default)]
    pub keys: Vec<RawKey>,
}

/// `[admin]`: the admin API's own listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Spanned<String>,
    /// Prefix of secrets the admin API generates.
    pub key_prefix: Option<Spanned<String>>,
}

/// `[[admin_keys]]`: who may call the admin API.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdminKey {
    pub id: Spanned<String>,
    pub hash: Spanned<String>,
    pub role: Role,
}

/// `role = "read" | "admin"`: read may list and get; admin may also change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Admin,
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
    /// Creating one more key for this consumer through the admin API is refused.
    pub max_keys: Option<u32>,
    pub created_at: Option<Spanned<Datetime>>,
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
    /// When the key was made (the admin API sets it).
    pub created_at: Option<Spanned<Datetime>>,
    /// The first characters of the secret, to recognise it by.
    pub prefix: Option<String>,
    /// After a rotation: the hash of the old secret, which keeps working until
    /// `previous_expires_at`.
    pub previous_hash: Option<Spanned<String>>,
    pub previous_expires_at: Option<Spanned<Datetime>>,
}

/// `status = "active" | "inactive"`: an inactive key is refused with `key_inactive`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Active,
    Inactive,
}

/// `access = "read-only" | "read-write"`: read-only allows GET, HEAD and OPTIONS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    ReadOnly,
    #[default]
    ReadWrite,
}
