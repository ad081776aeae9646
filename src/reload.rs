//! Hot reload: watch -> debounce -> read -> validate -> publish, or keep the last good config.
//!
//! Three triggers lead to the same [`Reloader::reload`]:
//! - a change in the config file's **directory** (notify), so that an in-place write, a
//!   truncate-and-write, a write-temp-then-rename and Kubernetes' `..data` symlink swap are all
//!   seen; bursts of events are coalesced by a short debounce;
//! - SIGHUP, which reloads even when the file looks unchanged;
//! - a periodic check of the file's content hash, in case an event is lost (network file
//!   systems, overflowing inotify queues).
//!
//! A file that cannot be read, parsed or validated changes nothing: the last good snapshot keeps
//! serving and the error is logged once per distinct bad content. Parsing runs on a blocking
//! thread, so requests never wait on a reload.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use notify::{RecursiveMode, Watcher as _};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::config::{self, LoadError, Loaded};
use crate::events::Events;
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;
use crate::state::Published;
use crate::tls::CertStore;

/// Quiet time that ends a burst of file events: editors and `kubectl` make several in a row,
/// within a millisecond or two of each other. Short, because it delays every revocation.
pub const DEBOUNCE: Duration = Duration::from_millis(10);
/// Longest a burst may postpone a reload, so a file rewritten nonstop still gets picked up.
const DEBOUNCE_MAX: Duration = Duration::from_millis(200);
/// How often the file's content hash is compared when no event came.
pub const PERIODIC_CHECK: Duration = Duration::from_secs(5);

/// What started a reload, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    FileEvent,
    Signal,
    Periodic,
    /// A change made through the admin API.
    Admin,
    /// Another instance announced a change (`[cluster]`).
    Cluster,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The file's content is what was last loaded (or last refused).
    Unchanged,
    Published {
        generation: u64,
        added: usize,
        removed: usize,
        changed: usize,
    },
    /// The file is unreadable or invalid; the last good config keeps serving.
    Failed,
}

/// Reloads one config file into one [`Published`].
pub struct Reloader {
    path: PathBuf,
    published: Arc<Published>,
    /// Listen address the running listener was configured with: a change needs a restart.
    listen: SocketAddr,
    /// The same for the admin API's listener (`None`: no admin API is running).
    admin_listen: Option<SocketAddr>,
    /// The same for the verify listener.
    verify_listen: Option<SocketAddr>,
    /// Reloads are serialized; holds the content hash last seen (good or bad).
    seen: Mutex<Seen>,
    /// The listener's certificate, when it speaks TLS.
    certs: Option<Arc<CertStore>>,
    /// `[admin.tls]`'s certificate, refreshed like the proxy's.
    admin_certs: Option<Arc<CertStore>>,
    /// Told of every reload that publishes or fails.
    metrics: Arc<Metrics>,
    /// Told of every publish: the webhooks to deliver to, and the key changes (events/mod.rs
    /// says why the key events come from here).
    events: Option<Arc<Events>>,
}

#[derive(Default)]
struct Seen {
    content: Option<[u8; 32]>,
    failed: bool,
    /// The files' metadata taken just before `content` was read: while it is unchanged, the
    /// periodic check skips reading and hashing (a 1,000,000-key file is ~100 MB, which would
    /// otherwise be read and hashed every few seconds for nothing).
    stamp: Option<Stamp>,
}

impl Reloader {
    /// `main_digest` is the [`file_digest`] of the text the published snapshot was loaded from,
    /// `keys_digest` its keys file's (`Loaded::keys_digest`): an edit made since loading is then
    /// seen as one. (A digest, not the text: the text of a 1,000,000-key config is ~160 MB,
    /// which the caller can then free before it starts serving.)
    pub fn new(
        path: PathBuf,
        published: Arc<Published>,
        listen: SocketAddr,
        (main_digest, keys_digest): ([u8; 32], [u8; 32]),
        certs: Option<Arc<CertStore>>,
        metrics: Arc<Metrics>,
    ) -> Reloader {
        let admin_listen = published.load().admin.as_ref().map(|a| a.listen);
        let verify_listen = published.load().verify.as_ref().map(|v| v.listen);
        let seen = Seen {
            content: Some(digest(main_digest, keys_digest)),
            failed: false,
            stamp: None,
        };
        Reloader {
            path,
            published,
            listen,
            admin_listen,
            verify_listen,
            seen: Mutex::new(seen),
            certs,
            admin_certs: None,
            metrics,
            events: None,
        }
    }

    /// Webhook events for every key change this reloader publishes.
    pub fn with_events(mut self, events: Arc<Events>) -> Reloader {
        self.events = Some(events);
        self
    }

    /// The admin listener's certificate (`[admin.tls]`), reloaded with the config.
    pub fn with_admin_certs(mut self, certs: Option<Arc<CertStore>>) -> Reloader {
        self.admin_certs = certs;
        self
    }

    /// Reloads the config, then the listener's certificate (which may change on its own).
    pub fn reload_all(&self, trigger: Trigger) -> Outcome {
        let outcome = self.reload(trigger);
        let tls = self.published.load().server.tls.clone();
        match (&self.certs, tls) {
            (Some(store), Some(files)) => {
                store.refresh(&files);
            }
            (None, None) => {}
            _ if outcome != Outcome::Unchanged => tracing::warn!(
                "[server.tls] was added or removed: restart keygate to apply it; the listener keeps its protocol"
            ),
            _ => {}
        }
        let admin_tls = self
            .published
            .load()
            .admin
            .as_ref()
            .and_then(|a| a.tls.clone());
        if let (Some(store), Some(files)) = (&self.admin_certs, admin_tls) {
            store.refresh(&files);
        }
        outcome
    }

    /// Directories whose changes may need a reload: the config's and the certificate's.
    fn watched_dirs(&self) -> Vec<PathBuf> {
        let mut files = vec![self.path.clone()];
        files.extend(self.published.load().keys_file.clone());
        files.extend(tls_files(&self.published.load()));
        let mut dirs: Vec<PathBuf> = files
            .iter()
            .map(|f| match f.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            })
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    /// The file names whose changes [`concerns`] a reload: the config's, the keys file's and
    /// the certificate's (known at start, like the directories watched; the periodic check
    /// covers files a later reload names).
    fn watched_names(&self) -> HashSet<OsString> {
        let snap = self.published.load();
        let mut files = vec![self.path.clone()];
        files.extend(snap.keys_file.clone());
        files.extend(tls_files(&snap));
        files
            .iter()
            .filter_map(|f| f.file_name().map(ToOwned::to_owned))
            .collect()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads, validates and publishes the file if its content changed (always, for a signal).
    pub fn reload(&self, trigger: Trigger) -> Outcome {
        self.reload_at(trigger, SystemTime::now())
    }

    /// [`Self::reload`] at `now`, which decides whether the files' metadata is old enough to
    /// be trusted.
    fn reload_at(&self, trigger: Trigger, now: SystemTime) -> Outcome {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let started = Instant::now();
        let keys_file = self.published.load().keys_file.clone();
        let stamp = Stamp::of(&self.path, keys_file.as_deref(), now);
        if trigger == Trigger::Periodic && stamp.is_some() && seen.stamp == stamp {
            return Outcome::Unchanged;
        }
        seen.stamp = stamp;
        // The content is hashed as it is read, in small pieces, and only read whole (to be
        // parsed) when it changed: the check at startup and the periodic check of a
        // 1,000,000-key file (~160 MB) then cost a hash, not an allocation of the file's size
        // next to the snapshot being served. A signal reloads anyway: read whole at once.
        let streamed = if trigger == Trigger::Signal {
            None
        } else {
            match file_digest_of(&self.path) {
                Ok(d) => Some(digest(d, keys_digest_of(keys_file.as_deref()))),
                Err(source) => return self.unreadable(&mut seen, source, trigger, now),
            }
        };
        if let Some(digest_now) = streamed {
            if seen.content == Some(digest_now) {
                return Outcome::Unchanged;
            }
            seen.content = Some(digest_now);
        }
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(source) => return self.unreadable(&mut seen, source, trigger, now),
        };
        if streamed.is_none() {
            seen.content = Some(digest(
                file_digest(&bytes),
                keys_digest_of(keys_file.as_deref()),
            ));
        }
        let parsed = std::str::from_utf8(&bytes)
            .map_err(|e| LoadError::Invalid(vec![not_utf8(&self.path, &bytes, e)]))
            .and_then(|text| config::parse(text, &self.path));
        let loaded = match parsed {
            Ok(l) => l,
            Err(e) => {
                seen.failed = true;
                self.metrics.reloaded(now, false);
                tracing::error!(
                    ?trigger,
                    "config reload failed, keeping the last good config:\n{e}"
                );
                return Outcome::Failed;
            }
        };
        seen.failed = false;
        // What was parsed, which an edit after the read above may have made newer: the next
        // check then sees the difference.
        seen.content = Some(digest(file_digest(&bytes), loaded.keys_digest));
        self.install(loaded, trigger, started)
    }

    /// A config file that cannot be read: nothing changes.
    fn unreadable(
        &self,
        seen: &mut Seen,
        source: std::io::Error,
        trigger: Trigger,
        now: SystemTime,
    ) -> Outcome {
        // A missing file during a rename or a ConfigMap swap is normal for a moment;
        // say it once, and keep serving.
        if seen.content.is_some() || !seen.failed {
            let e = LoadError::Io {
                file: self.path.clone(),
                source,
            };
            tracing::error!(
                ?trigger,
                "config reload failed, keeping the last good config: {e}"
            );
        }
        seen.content = None;
        seen.failed = true;
        self.metrics.reloaded(now, false);
        Outcome::Failed
    }

    /// Publishes a config the admin API has just validated and written, without parsing it
    /// again; the watcher then finds nothing new.
    pub fn adopt(&self, loaded: Loaded, main_text: &str) -> Outcome {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let started = Instant::now();
        seen.content = Some(digest(
            file_digest(main_text.as_bytes()),
            loaded.keys_digest,
        ));
        // Written just now: the next periodic check reads the files once more.
        seen.stamp = None;
        seen.failed = false;
        self.install(loaded, Trigger::Admin, started)
    }

    /// The end of every reload: warnings, restart notes, publish, one log line.
    fn install(&self, loaded: Loaded, trigger: Trigger, started: Instant) -> Outcome {
        for w in &loaded.warnings {
            tracing::warn!("{w}");
        }
        let next = loaded.snapshot;
        if next.server.listen != self.listen {
            tracing::warn!(
                running = %self.listen,
                configured = %next.server.listen,
                "[server] listen changed: restart keygate to apply it; keeping the running listener"
            );
        }
        let admin_listen = next.admin.as_ref().map(|a| a.listen);
        if admin_listen != self.admin_listen {
            tracing::warn!(
                running = ?self.admin_listen,
                configured = ?admin_listen,
                "[admin] listen changed: restart keygate to apply it; keeping the running admin listener"
            );
        }
        let verify_listen = next.verify.as_ref().map(|v| v.listen);
        if verify_listen != self.verify_listen {
            tracing::warn!(
                running = ?self.verify_listen,
                configured = ?verify_listen,
                "[verify] listen changed: restart keygate to apply it; keeping the running verify listener (without [verify] it refuses every call)"
            );
        }
        let (added, removed, changed) = diff(&self.published.load(), &next);
        if let Some(events) = &self.events {
            events.configure(&next.webhooks);
            events.key_changes(&self.published.load(), &next);
        }
        let generation = self.published.publish(next);
        self.metrics.reloaded(SystemTime::now(), true);
        tracing::info!(
            generation,
            keys_added = added,
            keys_removed = removed,
            keys_changed = changed,
            elapsed = ?started.elapsed(),
            ?trigger,
            "config reloaded"
        );
        Outcome::Published {
            generation,
            added,
            removed,
            changed,
        }
    }
}

/// Size, modification and change times, inode and device of the main file and the keys file
/// (following symlinks, so a Kubernetes `..data` swap changes it). `None` where unknown, and
/// for a file changed in the last [`STAMP_SETTLE`]: file times have a granularity of a few
/// milliseconds, so an edit made just after the stamp was taken could carry the same times
/// and size, and would be missed (git's "racily clean" index entries, same cure).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp([FileStamp; 2]);

type FileStamp = (u64, i64, i64, i64, i64, u64, u64);

/// How old a file's last change must be before its metadata alone is trusted.
const STAMP_SETTLE: Duration = Duration::from_secs(2);

impl Stamp {
    #[cfg(unix)]
    fn of(main: &Path, keys_file: Option<&Path>, now: SystemTime) -> Option<Stamp> {
        use std::os::unix::fs::MetadataExt as _;
        let settled = now.checked_sub(STAMP_SETTLE)?;
        let one = |p: &Path| -> Option<FileStamp> {
            let m = std::fs::metadata(p).ok()?;
            let changed = SystemTime::UNIX_EPOCH
                + Duration::new(
                    u64::try_from(m.ctime().max(m.mtime())).ok()?,
                    u32::try_from(m.ctime_nsec().max(m.mtime_nsec())).ok()?,
                );
            (changed < settled).then(|| {
                let (len, ino, dev) = (m.len(), m.ino(), m.dev());
                (
                    len,
                    m.mtime(),
                    m.mtime_nsec(),
                    m.ctime(),
                    m.ctime_nsec(),
                    ino,
                    dev,
                )
            })
        };
        let keys = match keys_file {
            None => (0, 0, 0, 0, 0, 0, 0),
            Some(k) => one(k)?,
        };
        Some(Stamp([one(main)?, keys]))
    }

    #[cfg(not(unix))]
    fn of(_: &Path, _: Option<&Path>, _: SystemTime) -> Option<Stamp> {
        None
    }
}

/// What a config is: its main file's [`file_digest`] and its keys file's.
fn digest(main_digest: [u8; 32], keys_digest: [u8; 32]) -> [u8; 32] {
    Sha256::new()
        .chain_update(main_digest)
        .chain_update(keys_digest)
        .finalize()
        .into()
}

/// SHA-256 of a file's text: what [`Reloader::new`] is given for the main file.
pub fn file_digest(text: &[u8]) -> [u8; 32] {
    Sha256::digest(text).into()
}

/// [`file_digest`] of a file as it is now, read in pieces of a fixed size.
fn file_digest_of(path: &Path) -> std::io::Result<[u8; 32]> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let mut hash = Sha256::new();
    // Small enough to stay in cache between the read and the hash.
    let mut buf = vec![0; 256 * 1024];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(hash.finalize().into()),
            Ok(n) => hash.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The keys file's digest as it is now, without parsing it. Unreadable or missing reads as
/// empty, as `config::read_keys_file` has it; parsing reports an unreadable one properly.
fn keys_digest_of(keys_file: Option<&Path>) -> [u8; 32] {
    match keys_file.map(file_digest_of) {
        Some(Ok(d)) => d,
        None | Some(Err(_)) => file_digest(b""),
    }
}

fn not_utf8(path: &Path, bytes: &[u8], e: std::str::Utf8Error) -> config::ConfigError {
    let valid = &bytes[..e.valid_up_to()];
    let text = std::str::from_utf8(valid).unwrap_or_default();
    let (line, column) = config::validate::line_col(text, text.len());
    config::ConfigError {
        severity: config::Severity::Error,
        file: path.to_path_buf(),
        line,
        column,
        subject: None,
        message: "the file is not UTF-8 text".into(),
    }
}

/// Keys added, removed and changed (same id, any field different) from `old` to `new`.
pub fn diff(old: &Snapshot, new: &Snapshot) -> (usize, usize, usize) {
    let before: HashMap<&str, &crate::snapshot::Key> =
        old.keys.iter().map(|k| (k.id.as_str(), k)).collect();
    let (mut added, mut changed, mut kept) = (0, 0, 0);
    for k in &new.keys {
        match before.get(k.id.as_str()) {
            None => added += 1,
            Some(o) => {
                kept += 1;
                let consumer_id =
                    |s: &Snapshot, k: &crate::snapshot::Key| s.consumer_of(k).map(|c| c.id.clone());
                let same_consumer = consumer_id(old, o) == consumer_id(new, k);
                if !same_consumer || !o.same_settings(k) {
                    changed += 1;
                }
            }
        }
    }
    (added, old.keys.len() - kept, changed)
}

/// Starts the watchers and returns at once; reloads run until the runtime stops.
/// Whether a change in a watched directory may concern the config: an event on one of its
/// files (by name), on a Kubernetes `..data` swap, or one that lost track (a rescan). Other
/// files in those directories (an access log or the last-used state written beside the config,
/// an editor's swap file) would otherwise make every write a read and hash of the config.
fn concerns(names: &HashSet<OsString>, event: &notify::Event) -> bool {
    if event.kind.is_access() {
        return false;
    }
    event.need_rescan()
        || event.paths.is_empty()
        || event.paths.iter().any(|p| {
            p.file_name()
                .is_some_and(|n| names.contains(n) || n.as_encoded_bytes().starts_with(b".."))
        })
}

pub fn spawn(reloader: Arc<Reloader>) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::channel::<()>(1);

    let event_tx = tx.clone();
    let names = reloader.watched_names();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| concerns(&names, &e)) {
            // A full channel already holds a pending reload: this event is covered by it.
            let _ = event_tx.try_send(());
        }
    })?;
    for dir in reloader.watched_dirs() {
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    }
    // A change made between reading the config and setting up the watch raised no event: check
    // the files once now, before the listener is announced (usually they are unchanged: one
    // read and hash), instead of leaving it to the periodic check.
    reloader.reload_all(Trigger::FileEvent);

    // Registered before `spawn` returns, so before "keygate listening" is logged: a SIGHUP that
    // arrives from then on reloads instead of taking the default action, which is to exit.
    let mut hup = hangup();
    tokio::spawn(async move {
        // Owned by the task: dropping the watcher would stop the events.
        let _watcher = watcher;
        let mut periodic = tokio::time::interval(PERIODIC_CHECK);
        periodic.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        periodic.tick().await;
        loop {
            let trigger = tokio::select! {
                Some(()) = rx.recv() => {
                    debounce(&mut rx).await;
                    Trigger::FileEvent
                }
                Some(()) = hup.recv() => Trigger::Signal,
                _ = periodic.tick() => Trigger::Periodic,
            };
            let r = reloader.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || r.reload_all(trigger)).await {
                tracing::error!(error = %e, "config reload task failed");
            }
        }
    });
    drop(tx);
    Ok(())
}

/// Waits until events stop for [`DEBOUNCE`] (at most [`DEBOUNCE_MAX`] in all).
async fn debounce(rx: &mut mpsc::Receiver<()>) {
    let deadline = tokio::time::Instant::now() + DEBOUNCE_MAX;
    loop {
        let quiet = tokio::time::sleep(DEBOUNCE);
        tokio::select! {
            more = rx.recv() => if more.is_none() { return },
            () = quiet => return,
            () = tokio::time::sleep_until(deadline) => return,
        }
    }
}

/// SIGHUP as a stream of `()`; never yields where there is no such signal.
fn hangup() -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel(1);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(mut s) => {
                tokio::spawn(async move {
                    while s.recv().await.is_some() {
                        let _ = tx.try_send(());
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot listen for SIGHUP"),
        }
    }
    #[cfg(not(unix))]
    drop(tx);
    rx
}

/// The certificate and key files of `[server.tls]` and `[admin.tls]`.
fn tls_files(snap: &crate::snapshot::Snapshot) -> Vec<PathBuf> {
    let admin = snap.admin.as_ref().and_then(|a| a.tls.as_ref());
    [snap.server.tls.as_ref(), admin]
        .into_iter()
        .flatten()
        .flat_map(|t| [t.cert.clone(), t.key.clone()])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"

[[targets]]
name = "up"
upstream = "http://127.0.0.1:9"

[[keys]]
id = "k1"
hash = "sha256:0000000000000000000000000000000000000000000000000000000000000001"
"#;

    fn reloader(dir: &Path) -> Reloader {
        let path = dir.join("keygate.toml");
        std::fs::write(&path, CONFIG).unwrap();
        let loaded = config::parse(CONFIG, &path).unwrap();
        let listen = loaded.snapshot.server.listen;
        let keys_digest = loaded.keys_digest;
        let published = Arc::new(Published::new(loaded.snapshot));
        Reloader::new(
            path,
            published,
            listen,
            (file_digest(CONFIG.as_bytes()), keys_digest),
            None,
            Metrics::new(),
        )
    }

    /// The keys file edited between loading and the reloader's start (the harness saw this:
    /// the edit was never applied, the reloader having hashed the new file as if loaded).
    #[test]
    fn a_keys_edit_made_while_starting_is_reloaded() {
        let dir = temp_dir("edit-while-starting");
        let path = dir.join("keygate.toml");
        let main = format!("keys_file = \"keys.toml\"\n{CONFIG}");
        std::fs::write(&path, &main).unwrap();
        let keys = dir.join("keys.toml");
        std::fs::write(&keys, "[[consumers]]\nid = \"a\"\n").unwrap();
        let loaded = config::parse(&main, &path).unwrap();
        std::fs::write(
            &keys,
            "[[consumers]]\nid = \"a\"\n\n[[consumers]]\nid = \"b\"\n",
        )
        .unwrap();
        let listen = loaded.snapshot.server.listen;
        let keys_digest = loaded.keys_digest;
        let published = Arc::new(Published::new(loaded.snapshot));
        let r = Reloader::new(
            path,
            published.clone(),
            listen,
            (file_digest(main.as_bytes()), keys_digest),
            None,
            Metrics::new(),
        );
        assert!(matches!(
            r.reload(Trigger::FileEvent),
            Outcome::Published { .. }
        ));
        assert_eq!(published.load().consumers.len(), 2);
        assert_eq!(r.reload(Trigger::FileEvent), Outcome::Unchanged);
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("keygate-reload-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Files written beside the config (an access log, the last-used state, an editor's swap
    /// file) do not make the watcher read the config; its own files and a Kubernetes `..data`
    /// swap do.
    #[test]
    fn only_events_on_the_configs_files_trigger_a_reload() {
        use notify::event::{CreateKind, EventKind, ModifyKind, RenameMode};
        let dir = temp_dir("names");
        let r = reloader(&dir);
        let names = r.watched_names();
        let event = |kind, files: &[&str]| {
            let mut e = notify::Event::new(kind);
            for f in files {
                e = e.add_path(dir.join(f));
            }
            e
        };
        let write = EventKind::Modify(ModifyKind::Any);
        let rename = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
        for ignored in [
            "access.log",
            "keygate.last_used.json",
            ".keygate.toml.swp",
            "keygate.toml~",
        ] {
            assert!(!concerns(&names, &event(write, &[ignored])), "{ignored}");
        }
        assert!(concerns(&names, &event(write, &["keygate.toml"])));
        assert!(concerns(
            &names,
            &event(rename, &["keygate.toml.tmp", "keygate.toml"])
        ));
        assert!(concerns(
            &names,
            &event(EventKind::Create(CreateKind::Any), &["..data"])
        ));
        assert!(concerns(&names, &event(write, &[])), "no path: look");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The periodic check skips unchanged files by their metadata, but an edit that keeps the
    /// size (a changed hash digit) is still seen: its modification and change times differ.
    /// Metadata of a file changed within the last 2 s is not trusted at all.
    #[test]
    fn periodic_check_sees_a_same_size_edit_and_skips_unchanged_files() {
        let dir = temp_dir("stamp");
        let r = reloader(&dir);
        let now = SystemTime::now();
        let later = now + Duration::from_secs(10);
        assert_eq!(r.reload_at(Trigger::Periodic, now), Outcome::Unchanged);
        assert_eq!(
            r.seen.lock().unwrap().stamp,
            None,
            "just written: not trusted"
        );
        assert_eq!(r.reload_at(Trigger::Periodic, later), Outcome::Unchanged);
        assert!(r.seen.lock().unwrap().stamp.is_some());

        // A same-size edit just now: recent, so the file is read whatever its metadata says.
        let path = dir.join("keygate.toml");
        let edited = CONFIG.replace("0001\"", "0002\"");
        assert_eq!(edited.len(), CONFIG.len());
        std::fs::write(&path, &edited).unwrap();
        assert!(matches!(
            r.reload_at(Trigger::Periodic, now),
            Outcome::Published { changed: 1, .. }
        ));
        // Seen later, after it settled: read once more, and its metadata trusted from then on.
        assert_eq!(r.reload_at(Trigger::Periodic, later), Outcome::Unchanged);
        assert!(r.seen.lock().unwrap().stamp.is_some());
        // Another same-size edit with other times: seen from the metadata alone.
        std::fs::write(&path, CONFIG).unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(now - Duration::from_secs(60)).unwrap();
        assert!(matches!(
            r.reload_at(Trigger::Periodic, later),
            Outcome::Published { changed: 1, .. }
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
