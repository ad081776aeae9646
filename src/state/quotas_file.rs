//! Quota counters across restarts: `<keys file stem>.quotas.json` beside the keys file, saved
//! every [`FLUSH_EVERY`] (when something changed) and at shutdown, read at start. A crash loses
//! at most that much counting. Apart from `quotas.rs` so that the counters the request path
//! reads import nothing of the store.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::Published;
use super::quotas::{Registry, State};
use crate::snapshot::Snapshot;

/// How often counters reach the disk: what a crash (not a shutdown) can lose.
pub const FLUSH_EVERY: Duration = Duration::from_secs(5);

/// `keys.quotas.json` beside `keys.toml`, or `keygate.quotas.json` beside the config.
pub fn path_for(snap: &Snapshot, config: &Path) -> PathBuf {
    snap.state_file(config, "quotas")
}

/// Reads saved counters into the registry (after the first snapshot attached its counters).
/// A missing file is a first start; an unreadable one is logged and ignored.
pub fn restore(registry: &Registry, path: &Path) {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            return tracing::warn!(path = %path.display(), error = %e, "cannot read quota counters");
        }
    };
    match serde_json::from_slice::<State>(&text) {
        Ok(state) => registry.restore(state),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable quota counters")
        }
    }
}

/// Writes every counter (temp file, fsync, rename) unless nothing changed since `last`.
pub fn save(registry: &Registry, path: &Path, last: &mut Option<Vec<u8>>) -> std::io::Result<()> {
    let state = registry.saved();
    // No file for a gateway that never counted a quota.
    if state.keys.is_empty() && state.consumers.is_empty() && last.is_none() && !path.exists() {
        return Ok(());
    }
    let text = serde_json::to_vec(&state).map_err(std::io::Error::other)?;
    if last.as_deref() == Some(&text[..]) {
        return Ok(());
    }
    crate::store::write_atomic(path, &text)?;
    *last = Some(text);
    Ok(())
}

/// Saves the counters every [`FLUSH_EVERY`] while the process runs (when something changed);
/// call [`flush`] at shutdown.
pub fn spawn(published: Arc<Published>, config: PathBuf) {
    tokio::spawn(async move {
        let mut last: Option<Vec<u8>> = None;
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let p = published.clone();
            let config = config.clone();
            let before = last.take();
            let saved = tokio::task::spawn_blocking(move || {
                let path = path_for(&p.load(), &config);
                let mut last = before;
                let result = save(p.quotas(), &path, &mut last);
                (last, result.map_err(|e| (path, e)))
            })
            .await;
            match saved {
                Ok((written, Ok(()))) => last = written,
                Ok((written, Err((path, e)))) => {
                    last = written;
                    tracing::warn!(path = %path.display(), error = %e, "cannot write quota counters");
                }
                Err(e) => tracing::warn!(error = %e, "quota counter flush failed"),
            }
        }
    });
}

/// One last write, at shutdown.
pub fn flush(published: &Published, config: &Path) {
    let path = path_for(&published.load(), config);
    if let Err(e) = save(published.quotas(), &path, &mut None) {
        tracing::warn!(path = %path.display(), error = %e, "cannot write quota counters");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Quota;
    use crate::state::quotas::take;

    /// 2027-01-01T00:00:00Z.
    const JAN1: u64 = 1_798_761_600;
    const DAY: u64 = 86_400;

    fn q(text: &str) -> Quota {
        Quota::parse(text).unwrap()
    }

    #[test]
    fn counters_survive_a_save_and_restore() {
        let text = "[[targets]]\nname = \"p\"\nupstream = \"http://127.0.0.1:1\"\n[[consumers]]\nid = \"acme\"\nquota = \"100/week\"\n[[keys]]\nid = \"k\"\nsecret = \"s\"\nconsumer = \"acme\"\nquota = \"9/day\"\n";
        let snap = crate::config::parse(text, Path::new("t.toml"))
            .unwrap()
            .snapshot;
        let registry = Registry::default();
        let counters = registry.attach(&snap);
        let now = JAN1 + 60;
        take(
            [
                Some((counters.key(0).unwrap(), q("9/day"))),
                Some((counters.consumer(0).unwrap(), q("100/week"))),
            ],
            now,
            false,
        );
        counters.consumer(0).unwrap().grant(q("100/week"), now, 7);
        let dir = std::env::temp_dir().join(format!("keygate-quotas-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys.quotas.json");
        let mut last = None;
        save(&registry, &path, &mut last).unwrap();
        let fresh = Registry::default();
        let again = fresh.attach(&snap);
        restore(&fresh, &path);
        assert_eq!(again.key(0).unwrap().peek(q("9/day"), now).used, 1);
        let c = again.consumer(0).unwrap().peek(q("100/week"), now);
        assert_eq!((c.used, c.granted), (1, 7));
        // Next week the saved window is over.
        assert_eq!(
            again
                .consumer(0)
                .unwrap()
                .peek(q("100/week"), now + 7 * DAY)
                .used,
            0
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
