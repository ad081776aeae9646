//! `last_used_at` across restarts: a small JSON file beside the keys file (or beside the config
//! when there is none), `{"version":1,"last_used":{"key-id":1764028800,…}}`, written atomically
//! every [`FLUSH_EVERY`] when something changed, and once more at shutdown. The TOML files are
//! never rewritten for it; the request path only stores into an atomic (see `Live::touch`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{Live, Published};
use crate::cluster::Cluster;
use crate::model::Id;
use crate::snapshot::Snapshot;

/// How often recorded uses reach the disk: what a crash (not a shutdown) can lose.
pub const FLUSH_EVERY: Duration = Duration::from_secs(5);

#[derive(serde::Serialize, serde::Deserialize)]
struct State {
    version: u32,
    last_used: BTreeMap<String, u32>,
}

/// `keys.last_used.json` beside `keys.toml`, or `keygate.last_used.json` beside the config.
pub fn path_for(snap: &Snapshot, config: &Path) -> PathBuf {
    snap.state_file(config, "last_used")
}

/// Reads the state file into `snap`. A missing file is a first start; an unreadable one is
/// logged and ignored: it only ever holds timestamps.
pub fn restore(snap: &Live, path: &Path) {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            return tracing::warn!(path = %path.display(), error = %e, "cannot read last-used state");
        }
    };
    let state: State = match serde_json::from_slice(&text) {
        Ok(s) => s,
        Err(e) => {
            return tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable last-used state");
        }
    };
    if state.last_used.is_empty() {
        return;
    }
    for (i, k) in snap.keys.iter().enumerate() {
        if let Some(&secs) = state.last_used.get(k.id.as_str()) {
            snap.merge_last_used(i, secs);
        }
    }
}

/// Writes the current times (temp file, fsync, rename). Returns what was written, to skip
/// writing it again.
pub fn save(snap: &Live, path: &Path) -> std::io::Result<u64> {
    let last_used: BTreeMap<String, u32> =
        snap.used_keys().map(|(id, t)| (id.to_owned(), t)).collect();
    let fingerprint = fingerprint(snap);
    let text = serde_json::to_vec(&State {
        version: 1,
        last_used,
    })
    .map_err(std::io::Error::other)?;
    crate::store::write_atomic(path, &text)?;
    Ok(fingerprint)
}

/// Changes whenever any key's time does (times only grow).
fn fingerprint(snap: &Live) -> u64 {
    snap.used_keys()
        .fold(0u64, |acc, (_, t)| acc.wrapping_add(u64::from(t)))
}

/// Flushes every [`FLUSH_EVERY`] while the process runs; call [`flush`] at shutdown. With a
/// `cluster`, each flush first merges the times into the fleet's (the max per key, in one
/// batch) and takes the fleet's back.
pub fn spawn(published: Arc<Published>, config: PathBuf, cluster: Option<Arc<Cluster>>) {
    tokio::spawn(async move {
        let mut written = fingerprint(&published.load());
        let mut shared: HashMap<Id, u32> = HashMap::new();
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let snap = published.load_full();
            if let Some(cluster) = &cluster {
                share(cluster, &snap, &mut shared).await;
            }
            if fingerprint(&snap) == written {
                continue;
            }
            let path = path_for(&snap, &config);
            let saved =
                tokio::task::spawn_blocking(move || save(&snap, &path).map_err(|e| (path, e)))
                    .await;
            match saved {
                Ok(Ok(f)) => written = f,
                Ok(Err((path, e))) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot write last-used state")
                }
                Err(e) => tracing::warn!(error = %e, "last-used flush failed"),
            }
        }
    });
}

/// Sends the times that changed since the last call to the fleet and raises the snapshot's
/// to the fleet's max. Only keys used here are sent; the admin API asks the fleet for the
/// keys it shows.
async fn share(cluster: &Cluster, snap: &Live, sent: &mut HashMap<Id, u32>) {
    let changed: Vec<(Id, u32)> = snap
        .keys
        .iter()
        .enumerate()
        .filter_map(|(i, k)| {
            let t = snap.last_used_secs(i);
            (t != 0 && sent.get(&k.id) != Some(&t)).then(|| (k.id.clone(), t))
        })
        .collect();
    for batch in changed.chunks(10_000) {
        let Some(fleet) = cluster.merge_last_used(batch).await else {
            return;
        };
        for (id, t) in batch {
            sent.insert(id.clone(), *t);
        }
        for (i, k) in snap.keys.iter().enumerate() {
            if let Some(&t) = fleet.get(&k.id) {
                snap.merge_last_used(i, t);
            }
        }
    }
}

/// One last write, at shutdown.
pub fn flush(published: &Published, config: &Path) {
    let snap = published.load_full();
    let path = path_for(&snap, config);
    if let Err(e) = save(&snap, &path) {
        tracing::warn!(path = %path.display(), error = %e, "cannot write last-used state");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn times_survive_a_save_and_restore_and_a_reload() {
        let config = "[[targets]]\nname = \"p\"\nupstream = \"http://127.0.0.1:1\"\n[[keys]]\nid = \"a\"\nsecret = \"a\"\n[[keys]]\nid = \"b\"\nsecret = \"b\"\n";
        let load = || {
            crate::config::parse(config, Path::new("t.toml"))
                .unwrap()
                .snapshot
        };
        let published = Published::new(load());
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        published.load().touch(1, at);
        // A reload keeps the time.
        published.publish(load());
        assert_eq!(published.load().last_used_at(1), Some(at));
        assert_eq!(published.load().last_used_at(0), None);
        let dir = std::env::temp_dir().join(format!("keygate-last-used-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys.last_used.json");
        save(&published.load(), &path).unwrap();
        let fresh = Live::new(load());
        restore(&fresh, &path);
        assert_eq!(fresh.last_used_at(1), Some(at));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn state_sits_beside_the_keys_file() {
        let snap = crate::config::parse_with(
            "keys_file = \"keys.toml\"\n[[targets]]\nname = \"p\"\nupstream = \"http://127.0.0.1:1\"\n",
            Path::new("/etc/kg/keygate.toml"),
            Some(""),
        )
        .unwrap()
        .snapshot;
        assert_eq!(
            path_for(&snap, Path::new("/etc/kg/keygate.toml")),
            Path::new("/etc/kg/keys.last_used.json")
        );
    }
}
