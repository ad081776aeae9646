//! The audit log: one JSON line per change (`[admin] audit_log`), whoever made it: the admin
//! API, the console (which is a client of the admin API) or the `keygate keys|consumers`
//! commands. A line is appended, flushed to disk and only then is the change reported done,
//! with the same durability as the keys file it describes.
//!
//! A line names who (`actor`, `source_ip`), what (`action`, `object`) and how (`changes`:
//! field → before and after, computed from the API's views of the object, which never carry
//! a secret or a hash).

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde_json::{Map, Value, json};

use crate::model::AuditLog;
use crate::snapshot::Snapshot;
use crate::store;

/// The default file name, beside the keys file.
pub const DEFAULT_FILE: &str = "audit.jsonl";

/// Where `snap`'s changes are recorded: `[admin] audit_log`, by default `audit.jsonl` beside
/// the keys file (with or without an admin API: the commands change keys too). `None`: off, or
/// no keys file (then nothing can be changed).
pub fn path_of(snap: &Snapshot) -> Option<PathBuf> {
    match snap.admin.as_ref().map(|a| &a.audit_log) {
        Some(AuditLog::Off) => None,
        Some(AuditLog::File(p)) => Some(p.clone()),
        Some(AuditLog::BesideKeysFile) | None => snap
            .keys_file
            .as_ref()
            .map(|k| k.with_file_name(DEFAULT_FILE)),
    }
}

/// Who made a change.
#[derive(Debug, Clone)]
pub struct Actor {
    /// The admin key's id, or `cli`.
    pub id: String,
    pub source_ip: Option<IpAddr>,
    /// For `cli`: the OS user who ran the command.
    pub os_user: Option<String>,
}

impl Actor {
    pub fn admin(id: &str, source_ip: IpAddr) -> Actor {
        Actor {
            id: id.to_owned(),
            source_ip: Some(source_ip),
            os_user: None,
        }
    }

    /// A `keygate keys|consumers` command: `cli`, with the user running it.
    pub fn cli() -> Actor {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .ok()
            .filter(|u| !u.is_empty())
            .or_else(os_user_of_uid);
        Actor {
            id: "cli".to_owned(),
            source_ip: None,
            os_user: user,
        }
    }
}

/// No USER in the environment (a service, `sudo -i`, a container): the name /etc/passwd gives
/// this process's uid, else the uid itself.
fn os_user_of_uid() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .to_owned();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let name = passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        (f.nth(1)? == uid).then(|| name.to_owned())
    });
    Some(name.unwrap_or_else(|| format!("uid {uid}")))
}

/// One change, as a line says it.
pub struct Entry<'a> {
    pub actor: &'a Actor,
    pub action: &'a str,
    pub object: &'a str,
    pub changes: Map<String, Value>,
}

/// Serializes this process's appends, so two lines never interleave; the file lock
/// serializes them with other processes (a command beside the gateway).
static APPEND: Mutex<()> = Mutex::new(());

/// Appends `entry` at `now` to `path` and syncs it to disk. Blocking.
pub fn append(path: &Path, entry: &Entry<'_>, now: SystemTime) -> std::io::Result<()> {
    let mut line = json!({
        "time": store::rfc3339(now),
        "actor": entry.actor.id,
        "source_ip": entry.actor.source_ip.map(|ip| ip.to_string()),
        "action": entry.action,
        "object": entry.object,
        "changes": entry.changes,
    });
    if let (Some(user), Some(obj)) = (&entry.actor.os_user, line.as_object_mut()) {
        obj.insert("os_user".into(), Value::String(user.clone()));
    }
    let mut bytes = serde_json::to_vec(&line).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    let _in_process = APPEND.lock().unwrap_or_else(|p| p.into_inner());
    let created = !path.exists();
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        // `audit_log = "audit/keygate.jsonl"`: a missing directory is made, not a failed change.
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.lock()?;
    // A line cut short by a crash would glue onto the next one: start on a line of our own.
    if !created && !ends_with_newline(path)? {
        bytes.insert(0, b'\n');
    }
    file.write_all(&bytes)?;
    file.sync_data()?;
    if created {
        // The new file's name must survive a crash too.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
    }
    Ok(())
}

fn ends_with_newline(path: &Path) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let len = f.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok(true);
    }
    f.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    f.read_exact(&mut last)?;
    Ok(last[0] == b'\n')
}

/// The fields that differ between two views of an object: `{field: {before, after}}`. A view
/// absent on one side (created, deleted) is an empty object there.
pub fn changes(before: &Value, after: &Value) -> Map<String, Value> {
    let empty = Map::new();
    let b = before.as_object().unwrap_or(&empty);
    let a = after.as_object().unwrap_or(&empty);
    let mut out = Map::new();
    for (field, old) in b {
        let new = a.get(field).unwrap_or(&Value::Null);
        if old != new && !is_noise(field) {
            out.insert(field.clone(), json!({"before": old, "after": new}));
        }
    }
    for (field, new) in a {
        let empty_list = new.as_array().is_some_and(Vec::is_empty);
        if !b.contains_key(field) && !new.is_null() && !empty_list && !is_noise(field) {
            out.insert(field.clone(), json!({"before": null, "after": new}));
        }
    }
    out
}

/// Fields that change without anyone changing them, or are counts derived from other objects.
fn is_noise(field: &str) -> bool {
    matches!(field, "last_used_at" | "keys" | "secret" | "managed")
}

/// One page of the log, newest first: lines that start before byte `after` (an entry's `id` is
/// the byte offset its line starts at), about `object` when given. Returns the page and the
/// `after` of the next one. The file is read backwards from `after` in chunks, so a page costs
/// what it shows, not the size of the log (a filter by object may read further to fill it).
pub fn page(
    path: &Path,
    object: Option<&str>,
    after: Option<u64>,
    limit: usize,
) -> std::io::Result<(Vec<Value>, Option<String>)> {
    use std::io::{Read, Seek, SeekFrom};
    const CHUNK: u64 = 64 * 1024;
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), None)),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let mut pos = after.map_or(len, |a| a.min(len));
    // Bytes from `pos` on whose line starts further back, not yet read.
    let mut tail: Vec<u8> = Vec::new();
    let mut items: Vec<Value> = Vec::new();
    // One more than the page: whether there is a next page.
    while pos > 0 && items.len() <= limit {
        let start = pos.saturating_sub(CHUNK);
        let mut data = vec![0u8; (pos - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut data)?;
        data.extend_from_slice(&tail);
        // Lines wholly in `data`, last first; the bytes before the first newline belong to a
        // line that starts in an earlier chunk, unless this chunk starts the file.
        let mut end = data.len();
        let mut lines = Vec::new();
        for i in (0..data.len()).rev() {
            if data[i] == b'\n' {
                lines.push((i + 1, end));
                end = i;
            }
        }
        if start == 0 {
            lines.push((0, end));
            tail.clear();
        } else {
            tail = data[..end].to_vec();
        }
        for (from, to) in lines {
            if items.len() > limit {
                break;
            }
            // A line cut short by a crash is skipped, not an error for every later reader.
            let Ok(Value::Object(mut entry)) = serde_json::from_slice::<Value>(&data[from..to])
            else {
                continue;
            };
            if object.is_some_and(|o| entry.get("object").and_then(Value::as_str) != Some(o)) {
                continue;
            }
            let offset = start + from as u64;
            entry.insert("id".into(), Value::String(offset.to_string()));
            items.push(Value::Object(entry));
        }
        pos = start;
    }
    let more = items.len() > limit;
    items.truncate(limit);
    let next = more
        .then(|| {
            items
                .last()
                .and_then(|v| v.get("id"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .flatten();
    Ok((items, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh file path of this test process.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("keygate-audit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("audit.jsonl")
    }

    #[test]
    fn changes_name_each_field_that_differs_and_never_the_secret() {
        let before = json!({"name": "a", "status": "active", "last_used_at": "x"});
        let after = json!({"name": "b", "status": "active", "last_used_at": "y", "secret": "kg_s"});
        let c = changes(&before, &after);
        assert_eq!(
            Value::Object(c),
            json!({"name": {"before": "a", "after": "b"}})
        );
        let created = changes(&Value::Null, &json!({"name": "n", "paths": []}));
        assert_eq!(created["name"], json!({"before": null, "after": "n"}));
    }

    #[test]
    fn pages_are_newest_first_and_follow_the_cursor() {
        let path = scratch("pages");
        let actor = Actor::admin("ops", "127.0.0.1".parse().unwrap());
        for i in 0..5 {
            let object = if i % 2 == 0 { "key_a" } else { "key_b" };
            let entry = Entry {
                actor: &actor,
                action: "key.update",
                object,
                changes: Map::new(),
            };
            append(&path, &entry, SystemTime::UNIX_EPOCH).unwrap();
        }
        let objects = |items: &[Value]| -> Vec<String> {
            items
                .iter()
                .map(|v| v["object"].as_str().unwrap().to_owned())
                .collect()
        };
        let (items, next) = page(&path, None, None, 2).unwrap();
        assert_eq!(objects(&items), ["key_a", "key_b"]);
        assert_eq!(next.as_deref(), items[1]["id"].as_str());
        let after = next.unwrap().parse().unwrap();
        let (items, next) = page(&path, None, Some(after), 10).unwrap();
        assert_eq!(objects(&items), ["key_a", "key_b", "key_a"]);
        assert_eq!(items[2]["id"], "0");
        assert_eq!(next, None);
        let (items, _) = page(&path, Some("key_b"), None, 10).unwrap();
        assert_eq!(objects(&items), ["key_b", "key_b"]);
    }

    /// Lines longer than the chunk read backwards, and more lines than one chunk holds, are
    /// read whole and in order.
    #[test]
    fn pages_cross_chunk_boundaries() {
        let path = scratch("chunks");
        let actor = Actor::admin("ops", "127.0.0.1".parse().unwrap());
        let long = "x".repeat(100_000);
        for i in 0..600 {
            let mut changes = Map::new();
            if i % 200 == 0 {
                changes.insert("name".into(), json!({"before": null, "after": long}));
            }
            let object = format!("key_{i}");
            let entry = Entry {
                actor: &actor,
                action: "key.update",
                object: &object,
                changes,
            };
            append(&path, &entry, SystemTime::UNIX_EPOCH).unwrap();
        }
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let (items, next) = page(&path, None, after, 170).unwrap();
            seen.extend(
                items
                    .iter()
                    .map(|v| v["object"].as_str().unwrap().to_owned()),
            );
            match next {
                Some(n) => after = Some(n.parse().unwrap()),
                None => break,
            }
        }
        let want: Vec<String> = (0..600).rev().map(|i| format!("key_{i}")).collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn a_line_cut_short_is_skipped_and_the_next_starts_on_its_own_line() {
        let path = scratch("cut");
        std::fs::write(&path, "{\"action\":\"key.cre").unwrap();
        let actor = Actor::cli();
        let entry = Entry {
            actor: &actor,
            action: "key.revoke",
            object: "key_a",
            changes: Map::new(),
        };
        append(&path, &entry, SystemTime::UNIX_EPOCH).unwrap();
        let (items, _) = page(&path, None, None, 10).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0]["action"], "key.revoke");
        assert_eq!(items[0]["actor"], "cli");
    }
}
