//! `keygate keys list|create|show|update|revoke|rotate` and `keygate consumers …`: the admin
//! API's changes, made on the files directly through the same [`Store`], for when the gateway
//! is down or in scripts. A running gateway picks the change up through its reload.

use std::path::Path;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};

use crate::admin::{consumer_json, key_json};
use crate::audit::{self, Actor};
use crate::model::{Access, Status};
use crate::snapshot::Snapshot;
// A command shows keys as the API does, without the times only a running gateway records.
use crate::state::Live;
use crate::store::{ConsumerPatch, KeyPatch, NewConsumer, NewKey, Store, Written};

/// The fields of a key that `create` and `update` set.
#[derive(Debug, Args)]
pub struct KeyFields {
    /// A name for people.
    #[arg(long)]
    name: Option<String>,
    /// active or inactive.
    #[arg(long, value_parser = parse_status)]
    status: Option<Status>,
    /// RFC 3339, e.g. 2027-01-01T00:00:00Z.
    #[arg(long)]
    expires_at: Option<String>,
    /// A deploy target the key is bound to (repeat for several).
    #[arg(long = "target")]
    targets: Vec<String>,
    /// An address or CIDR the key may be used from (repeat for several).
    #[arg(long = "allow-ip")]
    allow_ips: Vec<String>,
    /// A web origin (scheme://host[:port], `*.` for subdomains) browsers may use the key from
    /// (repeat for several).
    #[arg(long = "allow-origin")]
    allow_origins: Vec<String>,
    /// read-only or read-write.
    #[arg(long, value_parser = parse_access)]
    access: Option<Access>,
    /// A path prefix the key may call (repeat for several).
    #[arg(long = "path")]
    paths: Vec<String>,
    /// N/second|minute|hour.
    #[arg(long)]
    rate_limit: Option<String>,
    /// N/hour|day|week|month: requests per calendar window (UTC).
    #[arg(long)]
    quota: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// List keys as JSON.
    List {
        #[arg(long)]
        consumer: Option<String>,
    },
    /// Create a key in the keys file; prints it with its secret, which is shown only this once.
    Create {
        /// Default: a generated `key_…` id.
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        consumer: Option<String>,
        /// Prefix of the generated secret.
        #[arg(long, default_value = "kg_")]
        prefix: String,
        #[command(flatten)]
        fields: KeyFields,
    },
    /// Show one key.
    Show { id: String },
    /// Change a key; lists given replace the key's lists.
    Update {
        id: String,
        #[command(flatten)]
        fields: KeyFields,
        /// Move the key to this consumer.
        #[arg(long)]
        consumer: Option<String>,
        /// Take the key from its consumer.
        #[arg(long, conflicts_with = "consumer")]
        no_consumer: bool,
        /// Remove the expiry.
        #[arg(long, conflicts_with = "expires_at")]
        no_expiry: bool,
        /// Remove the rate limit.
        #[arg(long, conflicts_with = "rate_limit")]
        no_rate_limit: bool,
        /// Remove the quota.
        #[arg(long, conflicts_with = "quota")]
        no_quota: bool,
    },
    /// Delete a key: the next request with it is refused.
    Revoke { id: String },
    /// Give a key a new secret; the old one keeps working for --grace-seconds.
    Rotate {
        id: String,
        #[arg(long, default_value_t = 0)]
        grace_seconds: u64,
        #[arg(long, default_value = "kg_")]
        prefix: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConsumerCommand {
    /// List consumers as JSON.
    List,
    /// Create a consumer in the keys file.
    Create {
        id: String,
        #[command(flatten)]
        fields: ConsumerFields,
    },
    /// Show one consumer.
    Show { id: String },
    /// Change a consumer; lists given replace its lists.
    Update {
        id: String,
        #[command(flatten)]
        fields: ConsumerFields,
        #[arg(long, conflicts_with = "rate_limit")]
        no_rate_limit: bool,
        #[arg(long, conflicts_with = "max_keys")]
        no_max_keys: bool,
        #[arg(long, conflicts_with = "quota")]
        no_quota: bool,
    },
    /// Delete a consumer that owns no keys.
    Delete { id: String },
}

#[derive(Debug, Args)]
pub struct ConsumerFields {
    #[arg(long)]
    name: Option<String>,
    #[arg(long = "allow-ip")]
    allow_ips: Vec<String>,
    /// A web origin browsers may use the consumer's keys from (repeat for several).
    #[arg(long = "allow-origin")]
    allow_origins: Vec<String>,
    #[arg(long = "target")]
    targets: Vec<String>,
    #[arg(long)]
    rate_limit: Option<String>,
    /// N/hour|day|week|month, shared by the consumer's keys.
    #[arg(long)]
    quota: Option<String>,
    #[arg(long)]
    max_keys: Option<u32>,
    /// Keep a default key for the consumer (`--default-key` or `--default-key=false`).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    default_key: Option<bool>,
}

fn parse_status(s: &str) -> Result<Status, String> {
    serde_json::from_value(serde_json::Value::String(s.into()))
        .map_err(|_| "active or inactive".into())
}

fn parse_access(s: &str) -> Result<Access, String> {
    serde_json::from_value(serde_json::Value::String(s.into()))
        .map_err(|_| "read-only or read-write".into())
}

/// `Some(list)` when the flag was given at least once.
fn list(v: Vec<String>) -> Option<Vec<String>> {
    (!v.is_empty()).then_some(v)
}

/// Runs a key command against the files of `config`; prints JSON.
pub fn keys(config: &Path, cmd: KeyCommand) -> anyhow::Result<()> {
    let store = Store::new(config.to_path_buf());
    match cmd {
        KeyCommand::List { consumer } => {
            let snap = Live::new(crate::config::load(config)?.snapshot);
            let owner = match &consumer {
                None => None,
                Some(c) => Some(
                    snap.consumers
                        .iter()
                        .position(|x| x.id.as_str() == c)
                        .ok_or_else(|| anyhow::anyhow!("no consumer has id {c:?}"))?
                        as u32,
                ),
            };
            let items: Vec<_> = (0..snap.keys.len())
                .filter(|&i| owner.is_none() || snap.keys[i].consumer() == owner)
                .map(|i| key_json(&snap, i, None))
                .collect();
            print(&items)
        }
        KeyCommand::Show { id } => {
            let snap = Live::new(crate::config::load(config)?.snapshot);
            print(&key_json(&snap, key_index(&snap, &id)?, None))
        }
        KeyCommand::Create {
            id,
            consumer,
            prefix,
            fields,
        } => {
            let new = NewKey {
                id,
                name: fields.name,
                consumer,
                status: fields.status,
                expires_at: fields.expires_at,
                targets: list(fields.targets),
                allow_ips: list(fields.allow_ips),
                allow_origins: list(fields.allow_origins),
                access: fields.access,
                paths: list(fields.paths),
                rate_limit: fields.rate_limit,
                quota: fields.quota,
            };
            let Written {
                value: (id, secret),
                loaded,
                ..
            } = store.create_key(new, &prefix)?;
            let snap = Live::new(written_snapshot(loaded)?);
            let after = key_json(&snap, key_index(&snap, &id)?, None);
            record(&snap, "key.create", &id, &serde_json::Value::Null, &after)?;
            eprintln!("Give the secret to its owner now: keygate keeps only its hash.");
            print(&key_json(&snap, key_index(&snap, &id)?, Some(secret)))
        }
        KeyCommand::Update {
            id,
            fields,
            consumer,
            no_consumer,
            no_expiry,
            no_rate_limit,
            no_quota,
        } => {
            let patch = KeyPatch {
                name: fields.name.map(Some),
                consumer: if no_consumer {
                    Some(None)
                } else {
                    consumer.map(Some)
                },
                status: fields.status,
                expires_at: if no_expiry {
                    Some(None)
                } else {
                    fields.expires_at.map(Some)
                },
                targets: list(fields.targets),
                allow_ips: list(fields.allow_ips),
                allow_origins: list(fields.allow_origins),
                access: fields.access,
                paths: list(fields.paths),
                rate_limit: if no_rate_limit {
                    Some(None)
                } else {
                    fields.rate_limit.map(Some)
                },
                quota: if no_quota {
                    Some(None)
                } else {
                    fields.quota.map(Some)
                },
            };
            let before = key_before(config, &id)?;
            let snap = Live::new(written_snapshot(store.update_key(&id, patch)?.loaded)?);
            let after = key_json(&snap, key_index(&snap, &id)?, None);
            record(&snap, "key.update", &id, &before, &after)?;
            print(&after)
        }
        KeyCommand::Revoke { id } => {
            let before = key_before(config, &id)?;
            let written = store.delete_key(&id, &secret_prefix(config)?)?;
            if let Some((new_id, secret)) = &written.value {
                eprintln!(
                    "{id:?} was its consumer's default key: a new one, {new_id:?}, replaces it. \
                     Its secret (shown only now): {secret}"
                );
            }
            record(
                &written_snapshot(written.loaded)?,
                "key.revoke",
                &id,
                &before,
                &serde_json::Value::Null,
            )?;
            eprintln!("key {id:?} deleted: a running keygate refuses it once it has reloaded");
            Ok(())
        }
        KeyCommand::Rotate {
            id,
            grace_seconds,
            prefix,
        } => {
            let grace = Duration::from_secs(grace_seconds);
            let before = key_before(config, &id)?;
            let Written {
                value: secret,
                loaded,
                ..
            } = store.rotate_key(&id, grace, &prefix)?;
            let snap = Live::new(written_snapshot(loaded)?);
            let mut after = key_json(&snap, key_index(&snap, &id)?, None);
            if let Some(o) = after.as_object_mut() {
                o.insert("grace_seconds".into(), grace_seconds.into());
            }
            record(&snap, "key.rotate", &id, &before, &after)?;
            eprintln!("Give the new secret to its owner now: keygate keeps only its hash.");
            print(&key_json(&snap, key_index(&snap, &id)?, Some(secret)))
        }
    }
}

/// Runs a consumer command against the files of `config`; prints JSON.
pub fn consumers(config: &Path, cmd: ConsumerCommand) -> anyhow::Result<()> {
    let store = Store::new(config.to_path_buf());
    let show = |snap: &Snapshot, id: &str| -> anyhow::Result<()> {
        let c = snap
            .consumers
            .iter()
            .find(|c| c.id.as_str() == id)
            .ok_or_else(|| anyhow::anyhow!("consumer {id:?} does not exist"))?;
        print(&consumer_json(snap, c))
    };
    match cmd {
        ConsumerCommand::List => {
            let snap = crate::config::load(config)?.snapshot;
            let items: Vec<_> = snap
                .consumers
                .iter()
                .map(|c| consumer_json(&snap, c))
                .collect();
            print(&items)
        }
        ConsumerCommand::Show { id } => show(&crate::config::load(config)?.snapshot, &id),
        ConsumerCommand::Create { id, fields } => {
            let new = NewConsumer {
                id: id.clone(),
                name: fields.name,
                allow_ips: list(fields.allow_ips),
                allow_origins: list(fields.allow_origins),
                targets: list(fields.targets),
                rate_limit: fields.rate_limit,
                quota: fields.quota,
                max_keys: fields.max_keys.map(u64::from),
                default_key: fields.default_key,
            };
            let written = store.create_consumer(new, &secret_prefix(config)?)?;
            let made = written.value.clone();
            let snap = Live::new(written_snapshot(written.loaded)?);
            let after = consumer_value(&snap, &id);
            record(
                &snap,
                "consumer.create",
                &id,
                &serde_json::Value::Null,
                &after,
            )?;
            default_key_made(&snap, made)?;
            show(&snap, &id)
        }
        ConsumerCommand::Update {
            id,
            fields,
            no_rate_limit,
            no_max_keys,
            no_quota,
        } => {
            let patch = ConsumerPatch {
                name: fields.name.map(Some),
                allow_ips: list(fields.allow_ips),
                allow_origins: list(fields.allow_origins),
                targets: list(fields.targets),
                rate_limit: if no_rate_limit {
                    Some(None)
                } else {
                    fields.rate_limit.map(Some)
                },
                quota: if no_quota {
                    Some(None)
                } else {
                    fields.quota.map(Some)
                },
                max_keys: if no_max_keys {
                    Some(None)
                } else {
                    fields.max_keys.map(|m| Some(u64::from(m)))
                },
                default_key: fields.default_key,
            };
            let before = consumer_value(&crate::config::load(config)?.snapshot, &id);
            let written = store.update_consumer(&id, patch, &secret_prefix(config)?)?;
            let made = written.value.clone();
            let snap = Live::new(written_snapshot(written.loaded)?);
            let after = consumer_value(&snap, &id);
            record(&snap, "consumer.update", &id, &before, &after)?;
            default_key_made(&snap, made)?;
            show(&snap, &id)
        }
        ConsumerCommand::Delete { id } => {
            let before = consumer_value(&crate::config::load(config)?.snapshot, &id);
            let snap = written_snapshot(store.delete_consumer(&id)?.loaded)?;
            record(
                &snap,
                "consumer.delete",
                &id,
                &before,
                &serde_json::Value::Null,
            )?;
            eprintln!("consumer {id:?} deleted");
            Ok(())
        }
    }
}

/// The prefix of the secrets keygate makes: `[admin] key_prefix`, else `kg_`.
fn secret_prefix(config: &Path) -> anyhow::Result<String> {
    Ok(crate::config::load(config)?.snapshot.key_prefix.into())
}

/// Audits the default key a consumer command made and shows its secret, this once, on stderr
/// (stdout is the consumer's JSON).
fn default_key_made(snap: &Live, made: Option<(String, String)>) -> anyhow::Result<()> {
    let Some((id, secret)) = made else {
        return Ok(());
    };
    let after = key_json(snap, key_index(snap, &id)?, None);
    record(snap, "key.create", &id, &serde_json::Value::Null, &after)?;
    eprintln!(
        "Default key {id:?} made. Give its secret to the consumer now, keygate keeps only its hash: {secret}"
    );
    Ok(())
}

/// Key `id` as the API shows it before a change; `null` when there is none (the change then
/// fails and says why).
fn key_before(config: &Path, id: &str) -> anyhow::Result<serde_json::Value> {
    let snap = Live::new(crate::config::load(config)?.snapshot);
    Ok(key_index(&snap, id).map_or(serde_json::Value::Null, |i| key_json(&snap, i, None)))
}

fn consumer_value(snap: &Snapshot, id: &str) -> serde_json::Value {
    snap.consumers
        .iter()
        .find(|c| c.id.as_str() == id)
        .map_or(serde_json::Value::Null, |c| consumer_json(snap, c))
}

/// Appends a command's change to the audit log, as `cli` and the OS user; the command fails
/// (after the change) if it cannot, so nobody believes an unrecorded change was recorded.
fn record(
    snap: &Snapshot,
    action: &str,
    object: &str,
    before: &serde_json::Value,
    after: &serde_json::Value,
) -> anyhow::Result<()> {
    let Some(path) = audit::path_of(snap) else {
        return Ok(());
    };
    let actor = Actor::cli();
    let entry = audit::Entry {
        actor: &actor,
        action,
        object,
        changes: audit::changes(before, after),
    };
    audit::append(&path, &entry, SystemTime::now()).map_err(|e| {
        anyhow::anyhow!(
            "the change was made, but the audit log {} could not be written: {e}",
            path.display()
        )
    })
}

/// The config a command's change produced (a command's store has no publisher, so it is there).
fn written_snapshot(loaded: Option<crate::config::Loaded>) -> anyhow::Result<Snapshot> {
    loaded
        .map(|l| l.snapshot)
        .ok_or_else(|| anyhow::anyhow!("the change was published elsewhere"))
}

fn key_index(snap: &Snapshot, id: &str) -> anyhow::Result<usize> {
    snap.keys
        .iter()
        .position(|k| k.id.as_str() == id)
        .ok_or_else(|| anyhow::anyhow!("key {id:?} does not exist"))
}

fn print<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
