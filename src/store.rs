//! The keys file as a store: the one way the admin API and the `keys` / `consumers` commands
//! change keys.
//!
//! Every change is: lock, re-read the files as they are on disk now (so a hand edit made since
//! the last change is kept), apply the change to the keys file's TOML document (toml_edit keeps
//! comments and layout), validate the whole resulting config with the same code that loads it,
//! then write a temp file beside the keys file, fsync it, rename it over the keys file and fsync
//! the directory. A change that would make the config invalid writes nothing; a crash leaves the
//! old file or the new one, never a torn one. The caller publishes the returned snapshot (the
//! gateway) or lets the watcher of a running gateway pick the file up (the commands).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use toml_edit::{Array, ArrayOfTables, DocumentMut, Item, Table, value};

use crate::config::{self, LoadError, Loaded};
use crate::model::DEFAULT_KEY_NAME;
use crate::secret::{self, KeyHash};
use crate::snapshot::{Access, Id, Rate, Snapshot, Status};

/// How many characters of a new secret are kept as its `prefix`, after the configured prefix:
/// enough to tell keys apart in a list, far too few to help guess one.
const SHOWN_SECRET_CHARS: usize = 4;

/// The longest `grace_seconds` a rotation takes (ten years): the old secret of a key must stop
/// working some day, and the time it stops must be a date keygate can write and read back.
pub const MAX_GRACE_SECONDS: u64 = 10 * 365 * 24 * 3600;

/// The most keys a consumer's `max_keys` may allow: the config holds it as a 32-bit count.
pub const MAX_MAX_KEYS: u64 = u32::MAX as u64;

/// Why a change was refused. Each maps to one status and `code` in the admin API.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no keys_file is configured: add `keys_file = \"keys.toml\"` to the config")]
    NoKeysFile,
    #[error("{what} {id:?} does not exist")]
    NotFound { what: &'static str, id: String },
    #[error("{what} {id:?} is defined in the main config file, which keygate never rewrites")]
    ReadOnly { what: &'static str, id: String },
    #[error("{what} id {id:?} is already taken")]
    Taken { what: &'static str, id: String },
    #[error("consumer {0:?} already has its max_keys keys")]
    KeyLimit(String),
    #[error("consumer {0:?} still owns keys: delete or move them first")]
    ConsumerInUse(String),
    #[error("{field}: {message}")]
    BadField {
        field: &'static str,
        message: String,
    },
    #[error("the change would make the config invalid:\n{0}")]
    Invalid(LoadError),
    #[error("the config files are invalid now; fix them first:\n{0}")]
    CurrentInvalid(LoadError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn bad(field: &'static str, message: impl Into<String>) -> StoreError {
    StoreError::BadField {
        field,
        message: message.into(),
    }
}

/// What a new key is made from; `None` fields take their defaults.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    #[serde(default, deserialize_with = "not_null")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "not_null")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "not_null")]
    pub consumer: Option<String>,
    #[serde(default, deserialize_with = "not_null")]
    pub status: Option<Status>,
    #[serde(default, deserialize_with = "not_null")]
    pub expires_at: Option<String>,
    #[serde(default, deserialize_with = "not_null")]
    pub targets: Option<Vec<String>>,
    #[serde(default, deserialize_with = "not_null")]
    pub allow_ips: Option<Vec<String>>,
    /// `["https://shop.example.com", "https://*.example.com"]`: where a browser may use it.
    #[serde(default, deserialize_with = "not_null")]
    pub allow_origins: Option<Vec<String>>,
    #[serde(default, deserialize_with = "not_null")]
    pub access: Option<Access>,
    #[serde(default, deserialize_with = "not_null")]
    pub paths: Option<Vec<String>>,
    #[serde(default, deserialize_with = "not_null")]
    pub rate_limit: Option<String>,
    /// `"100000/month"`: requests per calendar window (UTC).
    #[serde(default, deserialize_with = "not_null")]
    pub quota: Option<String>,
}

/// A change to a key: absent fields stay; `null` clears an optional one.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPatch {
    #[serde(default, deserialize_with = "present")]
    pub name: Option<Option<String>>,
    /// Moves the key to another consumer (whose `max_keys` must allow it); `null`: to none.
    #[serde(default, deserialize_with = "present")]
    pub consumer: Option<Option<String>>,
    #[serde(default, deserialize_with = "not_null")]
    pub status: Option<Status>,
    #[serde(default, deserialize_with = "present")]
    pub expires_at: Option<Option<String>>,
    #[serde(default, deserialize_with = "not_null")]
    pub targets: Option<Vec<String>>,
    #[serde(default, deserialize_with = "not_null")]
    pub allow_ips: Option<Vec<String>>,
    /// `["https://shop.example.com", "https://*.example.com"]`: where a browser may use it.
    #[serde(default, deserialize_with = "not_null")]
    pub allow_origins: Option<Vec<String>>,
    #[serde(default, deserialize_with = "not_null")]
    pub access: Option<Access>,
    #[serde(default, deserialize_with = "not_null")]
    pub paths: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    pub rate_limit: Option<Option<String>>,
    /// `null` removes the quota.
    #[serde(default, deserialize_with = "present")]
    pub quota: Option<Option<String>>,
}

/// What a new consumer is made from.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewConsumer {
    pub id: String,
    #[serde(default, deserialize_with = "not_null")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "not_null")]
    pub allow_ips: Option<Vec<String>>,
    /// `["https://shop.example.com", "https://*.example.com"]`: where a browser may use it.
    #[serde(default, deserialize_with = "not_null")]
    pub allow_origins: Option<Vec<String>>,
    #[serde(default, deserialize_with = "not_null")]
    pub targets: Option<Vec<String>>,
    #[serde(default, deserialize_with = "not_null")]
    pub rate_limit: Option<String>,
    /// `"100000/month"`: requests per calendar window (UTC).
    #[serde(default, deserialize_with = "not_null")]
    pub quota: Option<String>,
    /// Any whole number is read; past [`MAX_MAX_KEYS`] the change is refused with the field.
    #[serde(default, deserialize_with = "some_whole")]
    pub max_keys: Option<u64>,
    /// Make the consumer's default key with it, and keep one.
    #[serde(default, deserialize_with = "not_null")]
    pub default_key: Option<bool>,
}

/// A change to a consumer.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerPatch {
    #[serde(default, deserialize_with = "present")]
    pub name: Option<Option<String>>,
    #[serde(default, deserialize_with = "not_null")]
    pub allow_ips: Option<Vec<String>>,
    /// `["https://shop.example.com", "https://*.example.com"]`: where a browser may use it.
    #[serde(default, deserialize_with = "not_null")]
    pub allow_origins: Option<Vec<String>>,
    #[serde(default, deserialize_with = "not_null")]
    pub targets: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    pub rate_limit: Option<Option<String>>,
    /// `null` removes the quota.
    #[serde(default, deserialize_with = "present")]
    pub quota: Option<Option<String>>,
    #[serde(default, deserialize_with = "present_whole")]
    pub max_keys: Option<Option<u64>>,
    /// Turning it on makes the default key if the consumer has none.
    #[serde(default, deserialize_with = "not_null")]
    pub default_key: Option<bool>,
}

/// An optional field that may be absent but not `null`: for these, `null` would mean nothing
/// (it neither clears nor sets), so it is refused as the document says rather than ignored.
fn not_null<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// Tells a field set to `null` (`Some(None)`) from an absent one (`None`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    serde::Deserialize::deserialize(d).map(Some)
}

/// A whole number as JSON Schema's `integer` means it (`5` and `5.0` alike; `5.5` and `-1` are
/// not), so that a client following docs/admin-api.yaml is never refused for how its JSON
/// library writes numbers. Beyond `u64` it saturates; the field's range check then refuses it.
pub(crate) fn whole<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct Whole;
    impl serde::de::Visitor<'_> for Whole {
        type Value = u64;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a whole number, 0 or more")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<u64, E> {
            if v.is_finite() && v >= 0.0 && v.fract() == 0.0 {
                // Saturating: any whole number too large for u64 is out of every field's range.
                Ok(v as u64)
            } else {
                Err(E::invalid_value(serde::de::Unexpected::Float(v), &self))
            }
        }
    }
    d.deserialize_any(Whole)
}

fn some_whole<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    whole(d).map(Some)
}

/// [`present`] for a whole number: `null` clears, absent stays.
fn present_whole<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
    #[derive(serde::Deserialize)]
    struct W(#[serde(deserialize_with = "whole")] u64);
    let v: Option<W> = serde::Deserialize::deserialize(d)?;
    Ok(Some(v.map(|W(n)| n)))
}

/// `max_keys` as the config holds it.
fn check_max_keys(n: u64) -> Result<i64, StoreError> {
    if n > MAX_MAX_KEYS {
        return Err(bad(
            "max_keys",
            format!("{n} is more than the largest max_keys, {MAX_MAX_KEYS}"),
        ));
    }
    Ok(n as i64)
}

/// A change that was written: its result, and the config as it now is on disk.
pub struct Written<T> {
    pub value: T,
    /// `None` when the store's publisher has taken it.
    pub loaded: Option<Loaded>,
    /// The main file's bytes, for the reloader's change detection.
    pub main_text: String,
}

impl<T> Written<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Written<U> {
        Written {
            value: f(self.value),
            loaded: self.loaded,
            main_text: self.main_text,
        }
    }
}

/// What a running gateway does with each change it writes, while the store is still locked
/// (so that changes are published in the order they were written): publish it.
pub type Publisher = Box<dyn Fn(Loaded, &str) + Send + Sync>;

/// An exclusive lock on the store, across threads and processes (an OS file lock on a lock
/// file beside the keys file). Released when dropped; never leaves `Store::change`.
struct StoreLock(#[allow(dead_code)] std::fs::File);

impl StoreLock {
    fn acquire(keys_file: &Path) -> std::io::Result<StoreLock> {
        let name = keys_file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Never deleted: removing a lock file while another process waits on it would let two
        // writers in at once.
        let path = keys_file.with_file_name(format!(".{name}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        file.lock()?;
        Ok(StoreLock(file))
    }
}

/// The keys file of one config.
pub struct Store {
    config: PathBuf,
    publisher: Option<Publisher>,
}

impl Store {
    /// A store for the commands: changes are written; a running gateway reloads them.
    pub fn new(config: PathBuf) -> Store {
        Store {
            config,
            publisher: None,
        }
    }

    /// A store for the gateway: each change is also handed to `publisher` before the lock is
    /// released. `Written::loaded` is then `None`: the publisher took it.
    pub fn publishing(config: PathBuf, publisher: Publisher) -> Store {
        Store {
            config,
            publisher: Some(publisher),
        }
    }

    /// Applies `op` to the keys file, validates, writes atomically. Blocking: call it from a
    /// blocking thread.
    pub fn change<T>(
        &self,
        op: impl FnOnce(&mut DocumentMut, &Snapshot) -> Result<T, StoreError>,
    ) -> Result<Written<T>, StoreError> {
        self.change_as(Edit::Rewrite, op)
    }

    /// [`Store::change`]; with [`Edit::Append`], `op` gets an empty document whose tables are
    /// appended to the keys file's text, which is then never parsed into a document: adding a
    /// key to a 1,000,000-key file must not build an editable tree of the whole file.
    fn change_as<T>(
        &self,
        edit: Edit,
        op: impl FnOnce(&mut DocumentMut, &Snapshot) -> Result<T, StoreError>,
    ) -> Result<Written<T>, StoreError> {
        // Changes are serialized, across processes too (the gateway and a `keygate keys` command):
        // a read-modify-write must not interleave with another. The keys file's path comes from
        // the main file, read once to find it and again (and validated) under the lock.
        let first = std::fs::read_to_string(&self.config).map_err(|source| StoreError::Io {
            path: self.config.clone(),
            source,
        })?;
        let keys_path = match keys_file_of(&first, &self.config) {
            Some(p) => p,
            // Unreadable or without `keys_file`: the whole parse says which, exactly.
            None => config::parse(&first, &self.config)
                .map_err(StoreError::CurrentInvalid)?
                .snapshot
                .keys_file
                .ok_or(StoreError::NoKeysFile)?,
        };
        let lock = StoreLock::acquire(&keys_path).map_err(|source| StoreError::Io {
            path: keys_path.clone(),
            source,
        })?;
        let main_text = std::fs::read_to_string(&self.config).map_err(|source| StoreError::Io {
            path: self.config.clone(),
            source,
        })?;
        let current =
            config::parse(&main_text, &self.config).map_err(StoreError::CurrentInvalid)?;
        let path = current
            .snapshot
            .keys_file
            .clone()
            .ok_or(StoreError::NoKeysFile)?;
        let keys_text = config::read_keys_file(&path).map_err(StoreError::CurrentInvalid)?;
        // Appending `[[keys]]` is only the same as pushing to the array when nothing else in
        // the file defines `keys`.
        let append = edit == Edit::Append && !defines_keys_otherwise(&keys_text);
        // One key's table alone, where it can be found in the plain layout.
        let chunk = match edit {
            Edit::Key(id) if !defines_keys_otherwise(&keys_text) => key_table(&keys_text, id),
            _ => None,
        };
        let mut doc: DocumentMut = if append {
            DocumentMut::new()
        } else if let Some(range) = &chunk {
            keys_text[range.clone()]
                .parse()
                .map_err(|e: toml_edit::TomlError| StoreError::Io {
                    path: path.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?
        } else {
            keys_text
                .parse()
                .map_err(|e: toml_edit::TomlError| StoreError::Io {
                    path: path.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?
        };
        let value = op(&mut doc, &current.snapshot)?;
        let next_text = if append {
            let mut text = keys_text;
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            if !text.is_empty() && !text.ends_with("\n\n") {
                text.push('\n');
            }
            text.push_str(&doc.to_string());
            text
        } else if let Some(range) = chunk {
            let mut text = String::with_capacity(keys_text.len() + 256);
            text.push_str(&keys_text[..range.start]);
            text.push_str(&doc.to_string());
            text.push_str(&keys_text[range.end..]);
            text
        } else {
            doc.to_string()
        };
        let loaded = config::parse_with(&main_text, &self.config, Some(&next_text))
            .map_err(StoreError::Invalid)?;
        write_atomic(&path, next_text.as_bytes()).map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })?;
        let loaded = match &self.publisher {
            Some(publish) => {
                publish(loaded, &main_text);
                None
            }
            None => Some(loaded),
        };
        drop(lock);
        Ok(Written {
            value,
            loaded,
            main_text,
        })
    }

    /// Creates a key and returns its id and secret (shown once, never stored).
    pub fn create_key(
        &self,
        new: NewKey,
        secret_prefix: &str,
    ) -> Result<Written<(String, String)>, StoreError> {
        self.change_as(Edit::Append, |doc, snap| {
            let id = match new.id {
                Some(id) => id,
                None => generated_id("key")?,
            };
            check_id(&id, "id")?;
            if snap.keys.iter().any(|k| k.id.as_str() == id) {
                return Err(StoreError::Taken { what: "key", id });
            }
            if let Some(c) = &new.consumer {
                check_room_for(snap, c, None)?;
            }
            let secret =
                secret::generate(secret_prefix).map_err(|e| bad("secret", e.to_string()))?;
            let mut t = Table::new();
            t["id"] = value(id.as_str());
            set_opt_str(&mut t, "name", new.name.as_deref());
            set_opt_str(&mut t, "consumer", new.consumer.as_deref());
            t["hash"] = value(KeyHash::of(secret.as_bytes()).to_string());
            t["prefix"] = value(shown_prefix(&secret, secret_prefix));
            t["created_at"] = value(datetime(SystemTime::now())?);
            if let Some(s) = new.status {
                t["status"] = value(status_str(s));
            }
            if let Some(e) = &new.expires_at {
                t["expires_at"] = value(parse_datetime(e, "expires_at")?);
            }
            set_list(&mut t, "targets", new.targets.as_deref(), |v| {
                check_target(snap, v)
            })?;
            set_allowed_from(
                &mut t,
                new.allow_ips.as_deref(),
                new.allow_origins.as_deref(),
            )?;
            if let Some(a) = new.access {
                t["access"] = value(access_str(a));
            }
            set_list(&mut t, "paths", new.paths.as_deref(), check_path)?;
            if let Some(r) = &new.rate_limit {
                t["rate_limit"] = value(check_rate(r)?);
            }
            if let Some(q) = &new.quota {
                t["quota"] = value(check_quota(q)?);
            }
            tables(doc, "keys")?.push(t);
            Ok((id, secret))
        })
    }

    pub fn update_key(&self, id: &str, patch: KeyPatch) -> Result<Written<()>, StoreError> {
        self.change_as(Edit::Key(id), |doc, snap| {
            let t = managed_key(doc, snap, id)?;
            if let Some(n) = &patch.name {
                set_opt_str(t, "name", n.as_deref());
            }
            if let Some(c) = &patch.consumer {
                if let Some(c) = c {
                    check_room_for(snap, c, Some(id))?;
                }
                set_opt_str(t, "consumer", c.as_deref());
            }
            if let Some(s) = patch.status {
                t["status"] = value(status_str(s));
            }
            match &patch.expires_at {
                Some(Some(e)) => t["expires_at"] = value(parse_datetime(e, "expires_at")?),
                Some(None) => {
                    t.remove("expires_at");
                }
                None => {}
            }
            set_list(t, "targets", patch.targets.as_deref(), |v| {
                check_target(snap, v)
            })?;
            set_allowed_from(
                t,
                patch.allow_ips.as_deref(),
                patch.allow_origins.as_deref(),
            )?;
            if let Some(a) = patch.access {
                t["access"] = value(access_str(a));
            }
            set_list(t, "paths", patch.paths.as_deref(), check_path)?;
            match &patch.rate_limit {
                Some(Some(r)) => t["rate_limit"] = value(check_rate(r)?),
                Some(None) => {
                    t.remove("rate_limit");
                }
                None => {}
            }
            match &patch.quota {
                Some(Some(q)) => t["quota"] = value(check_quota(q)?),
                Some(None) => {
                    t.remove("quota");
                }
                None => {}
            }
            Ok(())
        })
    }

    /// Deletes a key. When it was a consumer's default key, a new one is made in the same
    /// write and returned (id, secret): such a consumer always has one.
    pub fn delete_key(
        &self,
        id: &str,
        secret_prefix: &str,
    ) -> Result<Written<Option<(String, String)>>, StoreError> {
        self.change_as(Edit::Key(id), |doc, snap| {
            managed_key(doc, snap, id)?;
            let keys = tables(doc, "keys")?;
            keys.retain(|t| t.get("id").and_then(Item::as_str) != Some(id));
            let key = snap.keys.iter().find(|k| k.id.as_str() == id);
            let owner = key.and_then(|k| snap.consumer_of(k));
            match owner {
                Some(c)
                    if c.default_key && key.and_then(|k| k.name()) == Some(DEFAULT_KEY_NAME) =>
                {
                    let (t, new_id, secret) =
                        default_key_table(snap, c.id.as_str(), secret_prefix)?;
                    tables(doc, "keys")?.push(t);
                    Ok(Some((new_id, secret)))
                }
                _ => Ok(None),
            }
        })
    }

    /// Gives the key a new secret. The old one keeps working for `grace`, then stops.
    pub fn rotate_key(
        &self,
        id: &str,
        grace: Duration,
        secret_prefix: &str,
    ) -> Result<Written<String>, StoreError> {
        // Checked before anything is read: `now + grace` must be a time keygate can write.
        let until = (grace.as_secs() <= MAX_GRACE_SECONDS)
            .then(|| SystemTime::now().checked_add(grace))
            .flatten()
            .ok_or_else(|| {
                bad(
                    "grace_seconds",
                    format!(
                        "{} is more than the longest grace, {MAX_GRACE_SECONDS} seconds (ten years)",
                        grace.as_secs()
                    ),
                )
            })?;
        self.change_as(Edit::Key(id), |doc, snap| {
            let old = snap
                .keys
                .iter()
                .find(|k| k.id.as_str() == id)
                .map(|k| k.hash);
            let t = managed_key(doc, snap, id)?;
            let secret =
                secret::generate(secret_prefix).map_err(|e| bad("secret", e.to_string()))?;
            t.remove("secret");
            t["hash"] = value(KeyHash::of(secret.as_bytes()).to_string());
            t["prefix"] = value(shown_prefix(&secret, secret_prefix));
            match old {
                Some(old) if !grace.is_zero() => {
                    t["previous_hash"] = value(old.to_string());
                    t["previous_expires_at"] = value(datetime(until)?);
                }
                _ => {
                    t.remove("previous_hash");
                    t.remove("previous_expires_at");
                }
            }
            Ok(secret)
        })
    }

    pub fn add_key_ip(&self, id: &str, cidr: &str) -> Result<Written<()>, StoreError> {
        self.change_as(Edit::Key(id), |doc, snap| {
            add_to_list(managed_key(doc, snap, id)?, "allow_ips", cidr)
        })
    }

    pub fn remove_key_ip(&self, id: &str, cidr: &str) -> Result<Written<()>, StoreError> {
        self.change_as(Edit::Key(id), |doc, snap| {
            remove_from_list(managed_key(doc, snap, id)?, "allow_ips", cidr)
        })
    }

    pub fn add_key_origin(&self, id: &str, origin: &str) -> Result<Written<()>, StoreError> {
        self.change_as(Edit::Key(id), |doc, snap| {
            add_origin(managed_key(doc, snap, id)?, origin)
        })
    }

    pub fn remove_key_origin(&self, id: &str, origin: &str) -> Result<Written<()>, StoreError> {
        self.change_as(Edit::Key(id), |doc, snap| {
            remove_origin(managed_key(doc, snap, id)?, origin)
        })
    }

    /// Makes the default key of every consumer with `default_key = true` that has none (one
    /// written by hand in a config file, say); returns (consumer, key id) of each made. Their
    /// secrets are shown to nobody: rotating such a key shows its new one.
    pub fn ensure_default_keys(
        &self,
        secret_prefix: &str,
    ) -> Result<Written<Vec<(String, String)>>, StoreError> {
        self.change_as(Edit::Append, |doc, snap| {
            let mut made = Vec::new();
            for c in missing_default_keys(snap) {
                let (t, id, _secret) = default_key_table(snap, c, secret_prefix)?;
                tables(doc, "keys")?.push(t);
                made.push((c.to_owned(), id));
            }
            Ok(made)
        })
    }

    /// Creates a consumer; with `default_key`, also its default key, returned (id, secret).
    pub fn create_consumer(
        &self,
        new: NewConsumer,
        secret_prefix: &str,
    ) -> Result<Written<Option<(String, String)>>, StoreError> {
        self.change(|doc, snap| {
            check_id(&new.id, "id")?;
            if snap.consumers.iter().any(|c| c.id.as_str() == new.id) {
                return Err(StoreError::Taken {
                    what: "consumer",
                    id: new.id.clone(),
                });
            }
            let mut t = Table::new();
            t["id"] = value(new.id.as_str());
            set_opt_str(&mut t, "name", new.name.as_deref());
            set_allowed_from(
                &mut t,
                new.allow_ips.as_deref(),
                new.allow_origins.as_deref(),
            )?;
            set_list(&mut t, "targets", new.targets.as_deref(), |v| {
                check_target(snap, v)
            })?;
            if let Some(r) = &new.rate_limit {
                t["rate_limit"] = value(check_rate(r)?);
            }
            if let Some(q) = &new.quota {
                t["quota"] = value(check_quota(q)?);
            }
            if let Some(m) = new.max_keys {
                t["max_keys"] = value(check_max_keys(m)?);
            }
            if new.default_key == Some(true) {
                t["default_key"] = value(true);
            }
            t["created_at"] = value(datetime(SystemTime::now())?);
            tables(doc, "consumers")?.push(t);
            if new.default_key != Some(true) {
                return Ok(None);
            }
            if new.max_keys == Some(0) {
                return Err(bad(
                    "default_key",
                    "a consumer with max_keys = 0 cannot have a default key",
                ));
            }
            let (k, key_id, secret) = default_key_table(snap, &new.id, secret_prefix)?;
            tables(doc, "keys")?.push(k);
            Ok(Some((key_id, secret)))
        })
    }

    /// Changes a consumer; turning `default_key` on makes its default key if it has none,
    /// returned (id, secret).
    pub fn update_consumer(
        &self,
        id: &str,
        patch: ConsumerPatch,
        secret_prefix: &str,
    ) -> Result<Written<Option<(String, String)>>, StoreError> {
        self.change(|doc, snap| {
            let t = managed_consumer(doc, snap, id)?;
            match patch.default_key {
                Some(true) => t["default_key"] = value(true),
                Some(false) => {
                    t.remove("default_key");
                }
                None => {}
            }
            if let Some(n) = &patch.name {
                set_opt_str(t, "name", n.as_deref());
            }
            set_allowed_from(
                t,
                patch.allow_ips.as_deref(),
                patch.allow_origins.as_deref(),
            )?;
            set_list(t, "targets", patch.targets.as_deref(), |v| {
                check_target(snap, v)
            })?;
            match &patch.rate_limit {
                Some(Some(r)) => t["rate_limit"] = value(check_rate(r)?),
                Some(None) => {
                    t.remove("rate_limit");
                }
                None => {}
            }
            match &patch.quota {
                Some(Some(q)) => t["quota"] = value(check_quota(q)?),
                Some(None) => {
                    t.remove("quota");
                }
                None => {}
            }
            match patch.max_keys {
                Some(Some(m)) => t["max_keys"] = value(check_max_keys(m)?),
                Some(None) => {
                    t.remove("max_keys");
                }
                None => {}
            }
            let index = snap.consumers.iter().position(|c| c.id.as_str() == id);
            let has_default = snap.keys.iter().any(|k| {
                k.consumer().is_some()
                    && k.consumer() == index.map(|i| i as u32)
                    && k.name() == Some(DEFAULT_KEY_NAME)
            });
            if patch.default_key != Some(true) || has_default {
                return Ok(None);
            }
            let (k, key_id, secret) = default_key_table(snap, id, secret_prefix)?;
            tables(doc, "keys")?.push(k);
            Ok(Some((key_id, secret)))
        })
    }

    pub fn delete_consumer(&self, id: &str) -> Result<Written<()>, StoreError> {
        self.change(|doc, snap| {
            managed_consumer(doc, snap, id)?;
            let index = snap.consumers.iter().position(|c| c.id.as_str() == id);
            if snap
                .keys
                .iter()
                .any(|k| k.consumer().is_some() && k.consumer() == index.map(|i| i as u32))
            {
                return Err(StoreError::ConsumerInUse(id.to_owned()));
            }
            tables(doc, "consumers")?.retain(|t| t.get("id").and_then(Item::as_str) != Some(id));
            Ok(())
        })
    }

    pub fn add_consumer_ip(&self, id: &str, cidr: &str) -> Result<Written<()>, StoreError> {
        self.change(|doc, snap| add_to_list(managed_consumer(doc, snap, id)?, "allow_ips", cidr))
    }

    pub fn remove_consumer_ip(&self, id: &str, cidr: &str) -> Result<Written<()>, StoreError> {
        self.change(|doc, snap| {
            remove_from_list(managed_consumer(doc, snap, id)?, "allow_ips", cidr)
        })
    }

    pub fn add_consumer_origin(&self, id: &str, origin: &str) -> Result<Written<()>, StoreError> {
        self.change(|doc, snap| add_origin(managed_consumer(doc, snap, id)?, origin))
    }

    pub fn remove_consumer_origin(
        &self,
        id: &str,
        origin: &str,
    ) -> Result<Written<()>, StoreError> {
        self.change(|doc, snap| remove_origin(managed_consumer(doc, snap, id)?, origin))
    }
}

/// Consumer `consumer` exists and may own one more key (`max_keys`); `moving`, a key it may
/// already own, is not counted twice.
fn check_room_for(snap: &Snapshot, consumer: &str, moving: Option<&str>) -> Result<(), StoreError> {
    let index = snap
        .consumers
        .iter()
        .position(|x| x.id.as_str() == consumer)
        .ok_or_else(|| bad("consumer", format!("no consumer has id {consumer:?}")))?;
    if let Some(max) = snap.consumers[index].max_keys {
        let owned = snap
            .keys
            .iter()
            .filter(|k| k.consumer() == Some(index as u32) && Some(k.id.as_str()) != moving)
            .count();
        if owned >= max as usize {
            return Err(StoreError::KeyLimit(consumer.to_owned()));
        }
    }
    Ok(())
}

/// The consumers with `default_key = true` that own no key of that name.
pub fn missing_default_keys(snap: &Snapshot) -> Vec<&str> {
    let mut has = vec![false; snap.consumers.len()];
    for k in snap
        .keys
        .iter()
        .filter(|k| k.name() == Some(DEFAULT_KEY_NAME))
    {
        if let Some(h) = k.consumer().and_then(|c| has.get_mut(c as usize)) {
            *h = true;
        }
    }
    snap.consumers
        .iter()
        .zip(has)
        .filter(|(c, has)| c.default_key && !has && c.max_keys != Some(0))
        .map(|(c, _)| c.id.as_str())
        .collect()
}

/// A new default key for consumer `consumer`: its table, id and secret. Its `max_keys` is not
/// checked: keygate keeps this key whatever the limit (a limit of 0 refuses `default_key`).
fn default_key_table(
    snap: &Snapshot,
    consumer: &str,
    secret_prefix: &str,
) -> Result<(Table, String, String), StoreError> {
    // 32 random bits: a clash is rare even among a million keys, and a few draws end it.
    let mut id = generated_id("key")?;
    for _ in 0..8 {
        if !snap.keys.iter().any(|k| k.id.as_str() == id) {
            break;
        }
        id = generated_id("key")?;
    }
    let secret = secret::generate(secret_prefix).map_err(|e| bad("secret", e.to_string()))?;
    let mut t = Table::new();
    t["id"] = value(id.as_str());
    t["name"] = value(DEFAULT_KEY_NAME);
    t["consumer"] = value(consumer);
    t["hash"] = value(KeyHash::of(secret.as_bytes()).to_string());
    t["prefix"] = value(shown_prefix(&secret, secret_prefix));
    t["created_at"] = value(datetime(SystemTime::now())?);
    Ok((t, id, secret))
}

/// The `[[name]]` array of the document, created if absent.
/// How [`Store::change_as`] edits the keys file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Edit<'a> {
    /// Parse it into a document, change it, write the document out.
    Rewrite,
    /// Append the tables the change adds.
    Append,
    /// Only the `[[keys]]` table of this id changes: it alone is parsed and rewritten, the
    /// rest of the file is copied as it is (else as `Rewrite`).
    Key(&'a str),
}

/// The byte range of the `[[keys]]` table (header line and body) whose `id` is `id`, in the
/// plain layout [`scan::key`] reads; `None` where it cannot be told that way.
fn key_table(text: &str, id: &str) -> Option<std::ops::Range<usize>> {
    let split = config::scan::split(text)?;
    let pattern = format!("id = \"{id}\"");
    let mut from = 0;
    while let Some(at) = text[from..].find(&pattern).map(|i| i + from) {
        from = at + pattern.len();
        let i = split
            .keys
            .partition_point(|&(start, _)| start as usize <= at);
        let Some(&(start, end)) = i.checked_sub(1).and_then(|i| split.keys.get(i)) else {
            continue;
        };
        let (start, end) = (start as usize, end as usize);
        if at >= end {
            continue;
        }
        // A table in another layout, or another key's table that only mentions the id (in a
        // name, say): look further.
        match config::scan::key(text, start, end) {
            Some(found) if &*found.id.get_ref().0 == id => {}
            _ => continue,
        }
        // The header line ends just before the body.
        let header = text[..start.saturating_sub(1)]
            .rfind('\n')
            .map_or(0, |n| n + 1);
        return Some(header..end);
    }
    None
}

/// The main file's `keys_file`, resolved against it: all a change needs from the main file
/// before taking the lock (the whole config is read and validated under it).
fn keys_file_of(main_text: &str, config: &Path) -> Option<PathBuf> {
    let raw: toml::Table = toml::from_str(main_text).ok()?;
    let file = raw.get("keys_file")?.as_str()?;
    Some(config::validate::relative_to(config, file))
}

/// Whether `keys` appears in the keys file other than as `[[keys]]` headers (a `keys = [...]`
/// array or a `[keys]` table), where appending a `[[keys]]` table would not add to it.
fn defines_keys_otherwise(text: &str) -> bool {
    text.lines().any(|l| {
        let l = l.trim_start();
        (l.starts_with("keys") && l[4..].trim_start().starts_with(['=', '.']))
            || (l.starts_with('[')
                && !l.starts_with("[[")
                && l[1..].trim_start().starts_with("keys"))
            || l.starts_with("\"keys\"")
            || l.starts_with("'keys'")
    })
}

fn tables<'d>(doc: &'d mut DocumentMut, name: &str) -> Result<&'d mut ArrayOfTables, StoreError> {
    let item = doc
        .entry(name)
        .or_insert(Item::ArrayOfTables(ArrayOfTables::new()));
    item.as_array_of_tables_mut().ok_or_else(|| {
        bad(
            "file",
            format!("`{name}` in the keys file is not an array of tables ([[{name}]])"),
        )
    })
}

/// The key's table in the keys file; an error if it is unknown or lives in the main file.
fn managed_key<'d>(
    doc: &'d mut DocumentMut,
    snap: &Snapshot,
    id: &str,
) -> Result<&'d mut Table, StoreError> {
    find(
        doc,
        "keys",
        snap.keys.iter().map(|k| (k.id.as_str(), k.managed)),
        "key",
        id,
    )
}

fn managed_consumer<'d>(
    doc: &'d mut DocumentMut,
    snap: &Snapshot,
    id: &str,
) -> Result<&'d mut Table, StoreError> {
    find(
        doc,
        "consumers",
        snap.consumers.iter().map(|c| (c.id.as_str(), c.managed)),
        "consumer",
        id,
    )
}

fn find<'d, 's>(
    doc: &'d mut DocumentMut,
    array: &str,
    mut known: impl Iterator<Item = (&'s str, bool)>,
    what: &'static str,
    id: &str,
) -> Result<&'d mut Table, StoreError> {
    match known.find(|(k, _)| *k == id) {
        None => {
            return Err(StoreError::NotFound {
                what,
                id: id.to_owned(),
            });
        }
        Some((_, false)) => {
            return Err(StoreError::ReadOnly {
                what,
                id: id.to_owned(),
            });
        }
        Some((_, true)) => {}
    }
    tables(doc, array)?
        .iter_mut()
        .find(|t| t.get("id").and_then(Item::as_str) == Some(id))
        .ok_or_else(|| StoreError::NotFound {
            what,
            id: id.to_owned(),
        })
}

fn add_to_list(t: &mut Table, field: &'static str, item: &str) -> Result<(), StoreError> {
    let item = check_cidr(item)?;
    let list = t.entry(field).or_insert(value(Array::new()));
    let array = list
        .as_array_mut()
        .ok_or_else(|| bad(field, "is not a list in the keys file"))?;
    if !array.iter().any(|v| v.as_str() == Some(item.as_str())) {
        array.push(item);
    }
    Ok(())
}

/// Adds `origin` to `allow_origins`, normalised, unless an equal one is there.
fn add_origin(t: &mut Table, origin: &str) -> Result<(), StoreError> {
    let item = check_origin(origin)?;
    let list = t.entry("allow_origins").or_insert(value(Array::new()));
    let array = list
        .as_array_mut()
        .ok_or_else(|| bad("allow_origins", "is not a list in the keys file"))?;
    if !array.iter().any(|v| same_origin(v.as_str(), &item)) {
        array.push(item);
    }
    Ok(())
}

/// Removes the `allow_origins` entry equal to `origin` (however either is written).
fn remove_origin(t: &mut Table, origin: &str) -> Result<(), StoreError> {
    let not_in = || bad("allow_origins", format!("{origin:?} is not in the list"));
    let Some(array) = t.get_mut("allow_origins").and_then(Item::as_array_mut) else {
        return Err(not_in());
    };
    let before = array.len();
    array.retain(|v| !same_origin(v.as_str(), origin));
    if array.len() == before {
        return Err(not_in());
    }
    Ok(())
}

/// The same origin pattern, compared normalised (`HTTPS://A.com:443` is `https://a.com`).
fn same_origin(stored: Option<&str>, other: &str) -> bool {
    let parse = crate::model::OriginPattern::parse;
    stored.is_some_and(|s| s == other || parse(s).is_ok_and(|a| parse(other) == Ok(a)))
}

fn remove_from_list(t: &mut Table, field: &'static str, item: &str) -> Result<(), StoreError> {
    let wanted = crate::config::validate::parse_net(item);
    let Some(array) = t.get_mut(field).and_then(Item::as_array_mut) else {
        return Err(bad(field, format!("{item:?} is not in the list")));
    };
    let before = array.len();
    // Match by network, so "10.0.0.1" removes "10.0.0.1/32" and the other way round.
    array.retain(|v| {
        let same = v.as_str().is_some_and(|s| {
            s == item || (wanted.is_some() && crate::config::validate::parse_net(s) == wanted)
        });
        !same
    });
    if array.len() == before {
        return Err(bad(field, format!("{item:?} is not in the list")));
    }
    Ok(())
}

fn set_opt_str(t: &mut Table, field: &str, v: Option<&str>) {
    match v {
        Some(v) => t[field] = value(v),
        None => {
            t.remove(field);
        }
    }
}

/// Sets a list field after checking each item; an empty list removes the field (= no limit).
fn set_list(
    t: &mut Table,
    field: &'static str,
    items: Option<&[String]>,
    check: impl Fn(&str) -> Result<String, StoreError>,
) -> Result<(), StoreError> {
    let Some(items) = items else { return Ok(()) };
    if items.is_empty() {
        t.remove(field);
        return Ok(());
    }
    let mut array = Array::new();
    for item in items {
        array.push(check(item)?);
    }
    t[field] = value(array);
    Ok(())
}

/// Where a key or a consumer may be used from (`allow_ips`, then `allow_origins`): one place
/// pairs each list with its check, for both and for creating and changing alike.
fn set_allowed_from(
    t: &mut Table,
    ips: Option<&[String]>,
    origins: Option<&[String]>,
) -> Result<(), StoreError> {
    set_list(t, "allow_ips", ips, check_cidr)?;
    set_list(t, "allow_origins", origins, check_origin)
}

fn check_id(id: &str, field: &'static str) -> Result<(), StoreError> {
    Id::new(id).map(|_| ()).ok_or_else(|| {
        bad(
            field,
            format!(
                "{id:?} is not a valid id: use 1 to {} {}",
                Id::MAX_LEN,
                Id::ALLOWED
            ),
        )
    })
}

/// An address or network as docs/admin-api.yaml's `IpOrCidr` spells it: the address as the
/// standard library reads it (no leading zeros in IPv4 octets), an optional `/prefix` in decimal
/// without leading zeros. Stricter than the config file's reader on purpose: what the API
/// accepts is exactly what its document says.
fn check_cidr(s: &str) -> Result<String, StoreError> {
    let (addr, prefix) = match s.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (s, None),
    };
    let valid = addr.parse::<std::net::IpAddr>().ok().is_some_and(|ip| {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        prefix.is_none_or(|p| {
            let canonical =
                p == "0" || (!p.starts_with('0') && p.bytes().all(|b| b.is_ascii_digit()));
            canonical && p.len() <= 3 && p.parse::<u8>().is_ok_and(|n| n <= max)
        })
    });
    if valid && crate::config::validate::parse_net(s).is_some() {
        Ok(s.to_owned())
    } else {
        Err(bad(
            "allow_ips",
            format!("{s:?} is not an IP address or CIDR"),
        ))
    }
}

/// Kept normalised (lower case, no default port), as the API shows it.
fn check_origin(s: &str) -> Result<String, StoreError> {
    crate::model::OriginPattern::parse(s)
        .map(|p| p.to_string())
        .map_err(|why| bad("allow_origins", format!("{s:?} {why}")))
}

fn check_path(s: &str) -> Result<String, StoreError> {
    if s.starts_with('/') && !s.contains(['?', '#']) && !s.chars().any(char::is_whitespace) {
        Ok(s.to_owned())
    } else {
        Err(bad(
            "paths",
            format!("{s:?} must be a path that starts with '/'"),
        ))
    }
}

fn check_rate(s: &str) -> Result<String, StoreError> {
    Rate::parse(s)
        .map(|_| s.to_owned())
        .map_err(|e| bad("rate_limit", e))
}

/// The canonical form (`100_000/month` is written `100000/month`).
fn check_quota(s: &str) -> Result<String, StoreError> {
    crate::model::Quota::parse(s)
        .map(|q| q.to_string())
        .map_err(|e| bad("quota", e))
}

fn check_target(snap: &Snapshot, name: &str) -> Result<String, StoreError> {
    if snap.targets.iter().any(|t| t.name.as_str() == name) {
        Ok(name.to_owned())
    } else {
        Err(bad("targets", format!("no target is named {name:?}")))
    }
}

fn status_str(s: Status) -> &'static str {
    match s {
        Status::Active => "active",
        Status::Inactive => "inactive",
    }
}

fn access_str(a: Access) -> &'static str {
    match a {
        Access::ReadOnly => "read-only",
        Access::ReadWrite => "read-write",
    }
}

/// A TOML offset date-time from RFC 3339 text, e.g. `2027-01-01T00:00:00Z`.
/// Exactly docs/admin-api.yaml's `Time`: `T` between date and time (the parser takes any byte
/// there), no leap second, years 0001 to 9998 (so that any offset stays within the years TOML
/// can hold once the time is written in UTC).
fn parse_datetime(s: &str, field: &'static str) -> Result<toml_edit::Datetime, StoreError> {
    let refused = || {
        bad(
            field,
            format!(
                "{s:?} is not an RFC 3339 date-time from year 0001 to 9998 such as 2027-01-01T00:00:00Z"
            ),
        )
    };
    let checked = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|_| refused())?;
    let b = s.as_bytes();
    let shaped = matches!(b.get(10), Some(b'T' | b't'))
        && b.get(17..19) != Some(b"60")
        && (1..=9998).contains(&checked.year());
    if !shaped {
        return Err(refused());
    }
    datetime(checked.into()).map_err(|_| refused())
}

/// `t` as a TOML offset date-time in UTC, to the second.
pub fn datetime(t: SystemTime) -> Result<toml_edit::Datetime, StoreError> {
    rfc3339(t).parse().map_err(|_| bad("time", "out of range"))
}

/// `t` as RFC 3339 in UTC, to the second: how the admin API shows times.
pub fn rfc3339(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t)
        .replace_nanosecond(0)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// `kg_AbCd` for a secret `kg_AbCd…`: recognisable, useless for guessing.
fn shown_prefix(secret: &str, configured: &str) -> String {
    secret
        .chars()
        .take(configured.chars().count() + SHOWN_SECRET_CHARS)
        .collect()
}

/// `key_3f9a0c1d`: an id for a key created without one.
fn generated_id(kind: &str) -> Result<String, StoreError> {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).map_err(|e| bad("id", e.to_string()))?;
    Ok(format!("{kind}_{}", hex::encode(b)))
}

/// Replaces `path` with `bytes` so that a crash at any point leaves the old file or the new one:
/// temp file in the same directory, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        if let Ok(meta) = std::fs::metadata(path) {
            f.set_permissions(meta.permissions())?;
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAIN: &str = r#"keys_file = "keys.toml"

[[targets]]
name = "production"
upstream = "http://127.0.0.1:3000"

[[targets]]
name = "staging"
upstream = "http://127.0.0.1:3001"
path_prefix = "/staging"

[[keys]]
id = "static"
secret = "static-secret"
"#;

    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn setup(keys: &str) -> (Dir, Store) {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "keygate-store-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("keygate.toml"), MAIN).unwrap();
        if !keys.is_empty() {
            std::fs::write(dir.join("keys.toml"), keys).unwrap();
        }
        let store = Store::new(dir.join("keygate.toml"));
        (Dir(dir), store)
    }

    fn keys_text(d: &Dir) -> String {
        std::fs::read_to_string(d.0.join("keys.toml")).unwrap()
    }

    /// A created key is appended: every byte already in the file stays as it was (comments,
    /// layout, a last line without a newline), and the result is one more `[[keys]]`.
    #[test]
    fn create_appends_and_keeps_every_byte_of_the_file() {
        let before = "# managed by hand too\n[[consumers]]\nid = \"acme\"\n\n[[keys]]\nid = \"old\"  # keep me\nhash = \"sha256:0000000000000000000000000000000000000000000000000000000000000001\"\nconsumer = \"acme\"";
        let (d, store) = setup(before);
        let new = NewKey {
            id: Some("new".into()),
            consumer: Some("acme".into()),
            ..Default::default()
        };
        let w = store.create_key(new, "kg_").unwrap();
        let text = keys_text(&d);
        assert!(text.starts_with(before), "{text}");
        assert!(
            text[before.len()..].starts_with("\n\n[[keys]]\nid = \"new\""),
            "{text}"
        );
        let snap = w.loaded.unwrap().snapshot;
        assert_eq!(snap.keys.len(), 3);
        assert!(
            snap.keys
                .iter()
                .any(|k| k.id.as_str() == "new" && k.consumer().is_some())
        );
    }

    /// Changing or deleting one key rewrites its table alone: the bytes before and after it are
    /// copied as they are, comments included, and a key found only by a look-alike string
    /// elsewhere is not mistaken for it.
    #[test]
    fn one_key_changes_touch_only_its_table() {
        let h = |n: u32| format!("sha256:{n:064x}");
        let before = format!(
            "# top\n[[keys]]\nid = \"a\"\nhash = \"{}\"\nname = 'id = \"b\"'\n\n# about b\n[[keys]]\nid = \"b\"  # b's line\nhash = \"{}\"\n\n[[keys]]\nid = \"c\"\nhash = \"{}\"\n# tail",
            h(1),
            h(2),
            h(3)
        );
        assert_eq!(key_table(&before, "zz"), None);
        let b = key_table(&before, "b").expect("b's table");
        assert!(
            before[b.clone()].starts_with("[[keys]]\nid = \"b\""),
            "{:?}",
            &before[b.clone()]
        );
        let (d, store) = setup(&before);
        store
            .update_key(
                "b",
                KeyPatch {
                    name: Some(Some("bee".into())),
                    ..Default::default()
                },
            )
            .unwrap();
        let after = keys_text(&d);
        assert!(after.starts_with(&before[..b.start]), "{after}");
        assert!(after.ends_with(&before[b.end..]), "{after}");
        assert!(after[b.start..].contains("name = \"bee\""), "{after}");
        let w = store.delete_key("b", "kg_").unwrap();
        let gone = keys_text(&d);
        assert!(
            gone.starts_with(&before[..b.start]) && gone.ends_with(&before[b.end..]),
            "{gone}"
        );
        assert!(!gone.contains("[[keys]]\nid = \"b\""), "{gone}");
        let ids: Vec<String> = w
            .loaded
            .unwrap()
            .snapshot
            .keys
            .iter()
            .map(|k| k.id.as_str().to_owned())
            .filter(|i| i != "static")
            .collect();
        assert_eq!(ids, ["a", "c"]);
    }

    /// Where `keys` is written another way than `[[keys]]` tables, appending one would not add
    /// to it: the whole file is edited instead, as before.
    #[test]
    fn keys_written_another_way_are_not_appended_to() {
        for other in [
            "keys = []",
            "  keys=[]",
            "[keys]",
            "[ keys.x ]",
            "keys.x = 1",
            "\"keys\" = []",
        ] {
            assert!(defines_keys_otherwise(other), "{other}");
        }
        for fine in [
            "[[keys]]",
            "  [[keys]]",
            "keysmith = 1",
            "# keys = []",
            "id = \"keys\"",
        ] {
            assert!(!defines_keys_otherwise(fine), "{fine}");
        }
        let (_d, store) = setup("keys = []\n");
        let err = store
            .create_key(
                NewKey {
                    id: Some("k".into()),
                    ..Default::default()
                },
                "kg_",
            )
            .err()
            .expect("an inline `keys` array is not an array of tables");
        assert!(err.to_string().contains("array of tables"), "{err}");
    }

    #[test]
    fn create_then_use_the_secret() {
        let (d, store) = setup("");
        let new = NewKey {
            id: Some("api".into()),
            name: Some("API".into()),
            targets: Some(vec!["staging".into()]),
            allow_ips: Some(vec!["10.0.0.0/8".into()]),
            rate_limit: Some("5/second".into()),
            expires_at: Some("2030-01-01T00:00:00+02:00".into()),
            ..Default::default()
        };
        let w = store.create_key(new, "kg_").unwrap();
        let (id, secret) = w.value;
        assert_eq!(id, "api");
        assert!(secret.starts_with("kg_"));
        let text = keys_text(&d);
        assert!(!text.contains(&secret), "the secret must never be stored");
        assert!(text.contains(&KeyHash::of(secret.as_bytes()).to_string()));
        let snap = w.loaded.unwrap().snapshot;
        let (_, key, _) = snap.key_by_hash(&KeyHash::of(secret.as_bytes())).unwrap();
        assert_eq!(key.id.as_str(), "api");
        assert!(key.managed);
        assert_eq!(key.prefix(), Some(&secret[..7]));
        assert!(key.created_at().is_some());
        assert!(key.expires_at.is_some());
        let again = store.create_key(
            NewKey {
                id: Some("api".into()),
                ..Default::default()
            },
            "kg_",
        );
        assert!(matches!(again, Err(StoreError::Taken { .. })));
        let generated = store.create_key(NewKey::default(), "kg_").unwrap().value.0;
        assert!(generated.starts_with("key_"), "{generated}");
    }

    #[test]
    fn main_file_keys_are_read_only() {
        let (_d, store) = setup("");
        let e = store.update_key(
            "static",
            KeyPatch {
                status: Some(Status::Inactive),
                ..Default::default()
            },
        );
        assert!(
            matches!(e, Err(StoreError::ReadOnly { .. })),
            "{e:?}",
            e = e.err()
        );
        assert!(matches!(
            store.delete_key("nope", "kg_"),
            Err(StoreError::NotFound { .. })
        ));
    }

    #[test]
    fn hand_edits_and_comments_survive_a_change() {
        let (d, store) = setup(
            "# managed by keygate, edited by hand too\n[[keys]]\nid = \"a\"\nsecret = \"a-secret\" # legacy\n",
        );
        store
            .create_key(
                NewKey {
                    id: Some("b".into()),
                    ..Default::default()
                },
                "kg_",
            )
            .unwrap();
        // A hand edit between two changes...
        let edited = keys_text(&d).replace("id = \"a\"", "id = \"a\"\nname = \"by hand\"");
        std::fs::write(d.0.join("keys.toml"), edited).unwrap();
        store
            .update_key(
                "b",
                KeyPatch {
                    name: Some(Some("B".into())),
                    ..Default::default()
                },
            )
            .unwrap();
        let text = keys_text(&d);
        assert!(
            text.contains("# managed by keygate, edited by hand too"),
            "{text}"
        );
        assert!(text.contains("# legacy"), "{text}");
        assert!(text.contains("name = \"by hand\""), "{text}");
        assert!(text.contains("name = \"B\""), "{text}");
    }

    #[test]
    fn patch_sets_and_clears() {
        let (d, store) = setup("");
        store
            .create_key(
                NewKey {
                    id: Some("k".into()),
                    rate_limit: Some("1/s".into()),
                    ..Default::default()
                },
                "kg_",
            )
            .unwrap();
        let patch = KeyPatch {
            status: Some(Status::Inactive),
            rate_limit: Some(None),
            access: Some(Access::ReadOnly),
            paths: Some(vec!["/reports".into()]),
            ..Default::default()
        };
        let snap = store
            .update_key("k", patch)
            .unwrap()
            .loaded
            .unwrap()
            .snapshot;
        let k = snap.keys.iter().find(|k| k.id.as_str() == "k").unwrap();
        assert_eq!(
            (k.status, k.access, k.rate_limit()),
            (Status::Inactive, Access::ReadOnly, None)
        );
        assert_eq!(k.paths().as_slice(), [Box::<str>::from("/reports")]);
        assert!(!keys_text(&d).contains("rate_limit"));
    }

    #[test]
    fn bad_input_names_the_field_and_writes_nothing() {
        let (d, store) = setup("[[keys]]\nid = \"a\"\nsecret = \"a-secret\"\n");
        let before = keys_text(&d);
        let cases = [
            (
                NewKey {
                    allow_ips: Some(vec!["10.0.0.0/33".into()]),
                    ..Default::default()
                },
                "allow_ips",
            ),
            (
                NewKey {
                    rate_limit: Some("5/day".into()),
                    ..Default::default()
                },
                "rate_limit",
            ),
            (
                NewKey {
                    expires_at: Some("tomorrow".into()),
                    ..Default::default()
                },
                "expires_at",
            ),
            (
                NewKey {
                    targets: Some(vec!["prod".into()]),
                    ..Default::default()
                },
                "targets",
            ),
            (
                NewKey {
                    consumer: Some("nobody".into()),
                    ..Default::default()
                },
                "consumer",
            ),
            (
                NewKey {
                    id: Some("bad id".into()),
                    ..Default::default()
                },
                "id",
            ),
        ];
        for (new, field) in cases {
            match store.create_key(new, "kg_") {
                Err(StoreError::BadField { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {:?}", other.err()),
            }
        }
        assert_eq!(keys_text(&d), before);
    }

    #[test]
    fn rotation_keeps_the_old_secret_for_the_grace_period() {
        let (d, store) = setup("");
        let (_, first) = store
            .create_key(
                NewKey {
                    id: Some("k".into()),
                    ..Default::default()
                },
                "kg_",
            )
            .unwrap()
            .value;
        let w = store
            .rotate_key("k", Duration::from_secs(60), "kg_")
            .unwrap();
        let snap = w.loaded.unwrap().snapshot;
        let (_, _, matched) = snap.key_by_hash(&KeyHash::of(first.as_bytes())).unwrap();
        assert!(matches!(matched, crate::snapshot::Matched::Previous(_)));
        assert!(snap.key_by_hash(&KeyHash::of(w.value.as_bytes())).is_some());
        let w = store.rotate_key("k", Duration::ZERO, "kg_").unwrap();
        assert!(
            w.loaded
                .unwrap()
                .snapshot
                .key_by_hash(&KeyHash::of(first.as_bytes()))
                .is_none()
        );
        assert!(!keys_text(&d).contains("previous_hash"));
    }

    #[test]
    fn allow_ips_add_and_remove() {
        let (d, store) = setup("");
        store
            .create_key(
                NewKey {
                    id: Some("k".into()),
                    ..Default::default()
                },
                "kg_",
            )
            .unwrap();
        store.add_key_ip("k", "10.0.0.1").unwrap();
        store.add_key_ip("k", "2001:db8::/32").unwrap();
        store.add_key_ip("k", "10.0.0.1").unwrap();
        assert_eq!(keys_text(&d).matches("10.0.0.1").count(), 1);
        assert!(matches!(
            store.add_key_ip("k", "nope"),
            Err(StoreError::BadField {
                field: "allow_ips",
                ..
            })
        ));
        store.remove_key_ip("k", "10.0.0.1/32").unwrap();
        assert!(!keys_text(&d).contains("10.0.0.1"));
        assert!(matches!(
            store.remove_key_ip("k", "10.0.0.1"),
            Err(StoreError::BadField { .. })
        ));
    }

    /// A consumer with `default_key` has one key of that name from the start, a new one each
    /// time it is revoked (its secret returned), and one when the flag is turned on later.
    #[test]
    fn a_default_key_is_made_with_its_consumer_and_anew_when_revoked() {
        let (d, store) = setup("");
        let defaults = |store: &Store| -> Vec<String> {
            let snap = written_snapshot_of(store);
            snap.keys
                .iter()
                .filter(|k| k.name() == Some(DEFAULT_KEY_NAME))
                .map(|k| k.id.to_string())
                .collect()
        };
        let c = NewConsumer {
            id: "acme".into(),
            default_key: Some(true),
            ..Default::default()
        };
        let made = store.create_consumer(c, "kg_").unwrap().value.unwrap();
        assert!(made.1.starts_with("kg_"));
        assert_eq!(defaults(&store), std::slice::from_ref(&made.0));
        assert!(keys_text(&d).contains("default_key = true"));
        let again = store.delete_key(&made.0, "kg_").unwrap().value.unwrap();
        assert_ne!(again.0, made.0);
        assert_eq!(defaults(&store), std::slice::from_ref(&again.0));
        // Another key of the consumer is just deleted.
        let other = NewKey {
            consumer: Some("acme".into()),
            ..Default::default()
        };
        let (other, _) = store.create_key(other, "kg_").unwrap().value;
        assert!(store.delete_key(&other, "kg_").unwrap().value.is_none());
        // Turned on later: made once, not twice.
        store
            .create_consumer(
                NewConsumer {
                    id: "globex".into(),
                    ..Default::default()
                },
                "kg_",
            )
            .unwrap();
        let on = ConsumerPatch {
            default_key: Some(true),
            ..Default::default()
        };
        assert!(
            store
                .update_consumer("globex", on.clone(), "kg_")
                .unwrap()
                .value
                .is_some()
        );
        assert!(
            store
                .update_consumer("globex", on, "kg_")
                .unwrap()
                .value
                .is_none()
        );
        assert_eq!(defaults(&store).len(), 2);
    }

    fn written_snapshot_of(store: &Store) -> Snapshot {
        crate::config::load(&store.config).unwrap().snapshot
    }

    #[test]
    fn consumers_limit_and_own_their_keys() {
        let (_d, store) = setup("");
        let c = NewConsumer {
            id: "acme".into(),
            max_keys: Some(1),
            ..Default::default()
        };
        store.create_consumer(c, "kg_").unwrap();
        let mine = || NewKey {
            consumer: Some("acme".into()),
            ..Default::default()
        };
        store.create_key(mine(), "kg_").unwrap();
        assert!(matches!(
            store.create_key(mine(), "kg_"),
            Err(StoreError::KeyLimit(_))
        ));
        assert!(matches!(
            store.delete_consumer("acme"),
            Err(StoreError::ConsumerInUse(_))
        ));
        let patch = ConsumerPatch {
            max_keys: Some(None),
            ..Default::default()
        };
        store.update_consumer("acme", patch, "kg_").unwrap();
        store.create_key(mine(), "kg_").unwrap();
        store.add_consumer_ip("acme", "192.0.2.0/24").unwrap();
        let snap = store
            .remove_consumer_ip("acme", "192.0.2.0/24")
            .unwrap()
            .loaded
            .unwrap()
            .snapshot;
        assert!(snap.consumers[0].allow_ips.is_empty());
    }

    #[test]
    fn no_keys_file_no_store() {
        let (d, _) = setup("");
        std::fs::write(
            d.0.join("keygate.toml"),
            MAIN.replace("keys_file = \"keys.toml\"", ""),
        )
        .unwrap();
        let store = Store::new(d.0.join("keygate.toml"));
        assert!(matches!(
            store.create_key(NewKey::default(), "kg_"),
            Err(StoreError::NoKeysFile)
        ));
    }
}
