//! The validated configuration, as the request path reads it.
//!
//! A [`Snapshot`] is built whole by `config::validate`, never edited after, and published in one
//! atomic swap by `state::Published`, beside the state that outlives it (rate-limit buckets,
//! last-used times). A request loads one snapshot and uses it to its end, so it never
//! sees half of an old config and half of a new one. Everything here is already checked and
//! converted (CIDRs, rates, hashes, header values): nothing is parsed on the request path.

//!
//! Beside it here: [`KeyTable`], its one lookup table (keys by the hashes of their secrets),
//! and [`Routes`], the routing table built from its targets. The plain data it holds (keys,
//! ids, rates, config sections) is in `crate::model`.

mod key_table;
mod routes;

use std::time::SystemTime;

pub use self::key_table::KeyTable;
pub use self::routes::{Routes, segment_prefix};
// The model's types also by their old paths (`crate::snapshot::Key`,
// `keygate::snapshot::IpList`), for the files that still name them so.
use crate::model::KeyHash;
pub use crate::model::{
    Access, AccessTo, Admin, AdminKey, ClusterConfig, ClusterMode, Consumer, Id, IdArena, IpList,
    Key, KeyParts, List, Log, LogFormat, OnRedisError, Paths, Rate, Role, Rules, Server, Status,
    Target, TargetIdx, TargetSet, UsageConfig, Verify,
};

/// How a presented secret matched a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matched {
    /// The key's current secret.
    Current,
    /// The secret it had before its last rotation, valid until the given time.
    Previous(SystemTime),
}

/// One whole, validated configuration.
#[derive(Debug)]
pub struct Snapshot {
    pub server: Server,
    /// `[log]`: read at start; changing it needs a restart.
    pub log: Log,
    /// `[metrics] listen`: read at start; changing it needs a restart.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `[verify]`: its listener is bound at start; its trusted proxies follow reloads.
    pub verify: Option<Verify>,
    /// `[cluster]`: read at start; changing it needs a restart.
    pub cluster: Option<ClusterConfig>,
    /// `[usage]`: read at start; changing it needs a restart.
    pub usage: UsageConfig,
    pub targets: Vec<Target>,
    pub routes: Routes,
    pub consumers: Vec<Consumer>,
    pub keys: Vec<Key>,
    by_hash: KeyTable,
    /// Whether any key or consumer has `allow_origins`: without, the request path does not
    /// even look for an `Origin` or `Referer`.
    pub origins: bool,
    /// Whether any target has `[targets.cors]`: without, a request's `Origin` is not routed
    /// a second time to find its target's policy.
    pub cors: bool,
    pub admin: Option<Admin>,
    /// The prefix of the secrets keygate generates (`[admin] key_prefix`, else the default):
    /// a presented secret with it and a generated secret's shape must carry a valid checksum
    /// (`secret::checksum_fails`), checked before any hash or lookup.
    pub key_prefix: Box<str>,
    /// The file of managed consumers and keys, when there is one.
    pub keys_file: Option<std::path::PathBuf>,
    /// `[[webhooks]]`: a reload applies them to the deliveries still pending.
    pub webhooks: Vec<crate::model::Webhook>,
}

impl Snapshot {
    /// `<stem>.<what>.json` beside the keys file (`keys.quotas.json` beside `keys.toml`), or
    /// beside the config without one: where the state keygate writes at run time is kept
    /// (last-used times, quota counters, usage counts, pending webhooks).
    pub fn state_file(&self, config: &std::path::Path, what: &str) -> std::path::PathBuf {
        let base = self.keys_file.as_deref().unwrap_or(config);
        let stem = base
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        base.with_file_name(format!("{stem}.{what}.json"))
    }

    /// Assembles a snapshot; `validate` has already refused duplicate hashes.
    pub fn new(
        server: Server,
        targets: Vec<Target>,
        consumers: Vec<Consumer>,
        keys: Vec<Key>,
    ) -> Snapshot {
        let mut table = KeyTable::with_capacity(keys.len());
        for (i, k) in keys.iter().enumerate() {
            table.insert(&keys, k.hash, i, false);
            if let Some((previous, _)) = k.previous() {
                table.insert(&keys, previous, i, true);
            }
        }
        Snapshot::with_table(server, targets, consumers, keys, table)
    }

    /// [`Snapshot::new`] with the table of `keys` already built (by `validate`, which fills it
    /// as it goes to find duplicate hashes).
    pub fn with_table(
        server: Server,
        targets: Vec<Target>,
        consumers: Vec<Consumer>,
        keys: Vec<Key>,
        by_hash: KeyTable,
    ) -> Snapshot {
        let routes = Routes::build(&targets);
        let origins = consumers.iter().any(|c| !c.allow_origins.is_empty())
            || keys.iter().any(|k| !k.allow_origins().is_empty());
        let cors = targets.iter().any(|t| t.cors.is_some());
        Snapshot {
            origins,
            cors,
            server,
            log: Log::default(),
            metrics_listen: None,
            verify: None,
            cluster: None,
            usage: UsageConfig::default(),
            targets,
            routes,
            consumers,
            keys,
            by_hash,
            admin: None,
            key_prefix: crate::model::DEFAULT_KEY_PREFIX.into(),
            keys_file: None,
            webhooks: Vec::new(),
        }
    }

    /// The one table lookup of the request path: the key, its index, and which of its secrets
    /// matched.
    pub fn key_by_hash(&self, hash: &KeyHash) -> Option<(usize, &Key, Matched)> {
        let (index, previous) = self.by_hash.get(&self.keys, hash)?;
        let key = &self.keys[index];
        let matched = match previous {
            true => Matched::Previous(key.previous()?.1),
            false => Matched::Current,
        };
        Some((index, key, matched))
    }

    pub fn consumer_of(&self, key: &Key) -> Option<&Consumer> {
        key.consumer().map(|i| &self.consumers[i as usize])
    }

    pub fn target(&self, t: TargetIdx) -> &Target {
        &self.targets[usize::from(t)]
    }

    /// A one-line summary, as `keygate check` prints it.
    pub fn summary(&self) -> String {
        format!(
            "{} targets, {} consumers, {} keys",
            self.targets.len(),
            self.consumers.len(),
            self.keys.len()
        )
    }
}
