//! Events for `[[webhooks]]` (docs/webhooks.md): what happened to a key or a quota, as a JSON
//! body with a unique id, handed to the delivery task ([`deliver`]) without waiting.
//!
//! Emitting never blocks and never waits: [`Events::emit`] is a `try_send` on a bounded
//! channel (a full channel drops the event and counts it), and [`Events::wants`] is one atomic
//! load, so a caller builds no event at all when no webhook listens to its kind.
//!
//! Where key events come from: the **reload diff** ([`Events::key_changes`], called by
//! `reload.rs` when it publishes), not the admin API. Every change reaches the running config
//! through a publish: the admin API's and the console's (`Reloader::adopt`), a `keygate keys …`
//! command's and a hand edit's (the file watcher), another instance's (`[cluster]` announces,
//! each instance reloads). So one place sees every change exactly once per instance. In a
//! fleet every instance sees it: the event's id is derived from the change itself (the key and
//! its views before and after), so every instance makes the same id, and the delivery task
//! claims it in Redis (`SET NX`) before sending; the first instance to claim it delivers it.
//! The same ids make `key.expiring` (each instance scans), `key.expired_used` (once per key per
//! hour) and the quota events (once per window) at most once across the fleet and restarts.

pub mod deliver;
pub mod sign;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};

use crate::metrics::Metrics;
use crate::model::{Id, Key, Webhook};
use crate::snapshot::Snapshot;
use crate::store::rfc3339;

/// Events waiting for the delivery task: a burst of key changes (a script creating keys) fits;
/// past it, events are dropped and counted rather than held in unbounded memory.
const QUEUE: usize = 4096;
/// How long a key change's id suppresses a twin: long enough for every instance of a fleet to
/// reload the same change (seconds), short enough that changing a key back and forth again a
/// minute later is still told.
const KEY_CHANGE_DEDUPE: Duration = Duration::from_secs(60);
/// `key.expired_used`: at most once per key per this.
pub const EXPIRED_USED_EVERY: Duration = Duration::from_secs(3600);
/// `key.expiring` is sent this long before `expires_at`, the earliest first.
pub const EXPIRING_AT: [(Duration, &str); 2] = [
    (Duration::from_secs(7 * 86_400), "7d"),
    (Duration::from_secs(86_400), "1d"),
];

/// The kinds of events, as webhooks name them in `events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    KeyCreated,
    KeyUpdated,
    KeyRevoked,
    KeyExpiring,
    KeyExpiredUsed,
    QuotaWarning,
    QuotaExceeded,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::KeyCreated,
        Kind::KeyUpdated,
        Kind::KeyRevoked,
        Kind::KeyExpiring,
        Kind::KeyExpiredUsed,
        Kind::QuotaWarning,
        Kind::QuotaExceeded,
    ];

    /// Its name, as in `crate::model::EVENT_NAMES`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::KeyCreated => "key.created",
            Kind::KeyUpdated => "key.updated",
            Kind::KeyRevoked => "key.revoked",
            Kind::KeyExpiring => "key.expiring",
            Kind::KeyExpiredUsed => "key.expired_used",
            Kind::QuotaWarning => "quota.warning",
            Kind::QuotaExceeded => "quota.exceeded",
        }
    }

    pub fn of(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// What a quota event is about: whose quota, as the counters name it.
pub use crate::state::quotas::Owner as QuotaScope;

/// One event: its JSON body is made once and sent to every webhook that asked for its kind.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: Kind,
    /// `evt_` and 32 hex digits; the same for the same happening, so receivers (and the fleet)
    /// can drop duplicates.
    pub id: String,
    pub data: Value,
    pub created: SystemTime,
    /// How long this id keeps a second event with the same id from being sent.
    pub dedupe_for: Duration,
}

impl Event {
    fn new(kind: Kind, id_parts: &[&str], data: Value, dedupe_for: Duration) -> Event {
        let mut h = Sha256::new();
        h.update(kind.name());
        for p in id_parts {
            h.update([0]);
            h.update(p.as_bytes());
        }
        let digest = h.finalize();
        Event {
            kind,
            id: format!("evt_{}", hex::encode(&digest[..16])),
            data,
            created: SystemTime::now(),
            dedupe_for,
        }
    }

    /// `quota.warning`: `used` of `limit` (80% or more) in the window ending at `window_end`;
    /// once per scope, id and window.
    pub fn quota_warning(
        scope: QuotaScope,
        id: &str,
        used: u64,
        limit: u64,
        window_end: SystemTime,
    ) -> Event {
        Event::quota(Kind::QuotaWarning, scope, id, used, limit, window_end)
    }

    /// `quota.exceeded`: the first refusal of the window; once per scope, id and window.
    pub fn quota_exceeded(
        scope: QuotaScope,
        id: &str,
        used: u64,
        limit: u64,
        window_end: SystemTime,
    ) -> Event {
        Event::quota(Kind::QuotaExceeded, scope, id, used, limit, window_end)
    }

    fn quota(
        kind: Kind,
        scope: QuotaScope,
        id: &str,
        used: u64,
        limit: u64,
        window_end: SystemTime,
    ) -> Event {
        let end = rfc3339(window_end);
        let until = window_end
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .min(Duration::from_secs(32 * 86_400));
        Event::new(
            kind,
            &[scope.name(), id, &end],
            {
                let mut data = serde_json::Map::new();
                data.insert("scope".into(), scope.name().into());
                data.insert(scope.name().into(), id.into());
                data.insert("used".into(), used.into());
                data.insert("limit".into(), limit.into());
                data.insert("window_end".into(), end.clone().into());
                Value::Object(data)
            },
            until.max(Duration::from_secs(3600)),
        )
    }

    /// The body POSTed: `{"id", "type", "created_at", "data"}`.
    pub fn body(&self) -> String {
        json!({
            "id": self.id,
            "type": self.kind.name(),
            "created_at": rfc3339(self.created),
            "data": self.data,
        })
        .to_string()
    }
}

/// A key as the admin API shows it (the same field names), never its secret or hash; without
/// `last_used_at`, which is not a change.
pub fn key_view(snap: &Snapshot, k: &Key) -> Value {
    json!({
        "id": k.id.as_str(),
        "name": k.name(),
        "consumer": snap.consumer_of(k).map(|c| c.id.as_str()),
        "prefix": k.prefix(),
        "status": k.status,
        "created_at": k.created_at().map(rfc3339),
        "expires_at": k.expires_at.map(rfc3339),
        "targets": k.targets().iter().map(|t| snap.target(t).name.as_str()).collect::<Vec<_>>(),
        "allow_ips": k.allow_ips().iter().map(ToString::to_string).collect::<Vec<_>>(),
        "allow_origins": k.allow_origins().iter().map(ToString::to_string).collect::<Vec<_>>(),
        "access": k.access,
        "paths": k.paths().iter().map(|p| &**p).collect::<Vec<_>>(),
        "rate_limit": k.rate_limit().map(|r| r.to_string()),
        "quota": k.quota().map(|q| q.to_string()),
        "managed": k.managed,
    })
}

/// `key.created`, `key.updated` and `key.revoked` from `old` to `new`: a key that is new, whose
/// settings changed (a rotation and a switch to `inactive` included), or that is gone (the
/// admin API's revoke, `keygate keys revoke`, or a key deleted from the file).
pub fn key_changes(old: &Snapshot, new: &Snapshot, wants: impl Fn(Kind) -> bool) -> Vec<Event> {
    let mut out = Vec::new();
    if !(wants(Kind::KeyCreated) || wants(Kind::KeyUpdated) || wants(Kind::KeyRevoked)) {
        return out;
    }
    let before: std::collections::HashMap<&str, &Key> =
        old.keys.iter().map(|k| (k.id.as_str(), k)).collect();
    let mut kept = std::collections::HashSet::new();
    for k in &new.keys {
        match before.get(k.id.as_str()) {
            None if wants(Kind::KeyCreated) => {
                let view = key_view(new, k);
                out.push(Event::new(
                    Kind::KeyCreated,
                    &[k.id.as_str(), &view.to_string()],
                    json!({ "key": view }),
                    KEY_CHANGE_DEDUPE,
                ));
            }
            None => {}
            Some(o) => {
                kept.insert(k.id.as_str());
                let consumer = |s: &Snapshot, k: &Key| s.consumer_of(k).map(|c| c.id.clone());
                if o.same_settings(k) && consumer(old, o) == consumer(new, k) {
                    continue;
                }
                let kind = Kind::KeyUpdated;
                if !wants(kind) {
                    continue;
                }
                let (was, now) = (key_view(old, o), key_view(new, k));
                let (was_text, now_text) = (was.to_string(), now.to_string());
                out.push(Event::new(
                    kind,
                    &[k.id.as_str(), &was_text, &now_text],
                    json!({ "key": now, "previous": was }),
                    KEY_CHANGE_DEDUPE,
                ));
            }
        }
    }
    if wants(Kind::KeyRevoked) {
        for o in &old.keys {
            if !kept.contains(o.id.as_str()) {
                let view = key_view(old, o);
                out.push(Event::new(
                    Kind::KeyRevoked,
                    &[o.id.as_str(), "removed", &view.to_string()],
                    json!({ "key": view, "removed": true }),
                    KEY_CHANGE_DEDUPE,
                ));
            }
        }
    }
    out
}

/// `key.expiring` due at `now`: for each key not yet expired whose `expires_at` is within 7
/// days (or 1 day), the nearest threshold passed. The id names the key, its `expires_at` and
/// the threshold: the delivery task's persisted memory of ids sent makes it once, and a new
/// `expires_at` arms it again. A key made with 12 hours left gets the 1-day one only.
pub fn expiring(snap: &Snapshot, now: SystemTime) -> Vec<Event> {
    let mut out = Vec::new();
    for k in &snap.keys {
        let Some(at) = k.expires_at else { continue };
        if k.status != crate::model::Status::Active {
            continue;
        }
        let Ok(left) = at.duration_since(now) else {
            continue;
        };
        if left.is_zero() {
            continue;
        }
        let Some((_, label)) = EXPIRING_AT.iter().rev().find(|(d, _)| left <= *d) else {
            continue;
        };
        let at_text = rfc3339(at);
        out.push(Event::new(
            Kind::KeyExpiring,
            &[k.id.as_str(), &at_text, label],
            json!({
                "key": key_view(snap, k),
                "expires_in": label,
                "expires_in_seconds": left.as_secs(),
            }),
            // Remembered until the key has expired: no restart or rescan sends it again.
            left + Duration::from_secs(86_400),
        ));
    }
    out
}

/// `key.expired_used` for key `id` at `now`, when the snapshot still has it.
pub fn expired_used(snap: &Snapshot, id: &Id, now: SystemTime) -> Option<Event> {
    let k = snap.keys.iter().find(|k| k.id == *id)?;
    let hour = secs(now) / EXPIRED_USED_EVERY.as_secs();
    Some(Event::new(
        Kind::KeyExpiredUsed,
        &[k.id.as_str(), &hour.to_string()],
        json!({ "key": key_view(snap, k), "used_at": rfc3339(now) }),
        EXPIRED_USED_EVERY,
    ))
}

pub(crate) fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// What the request path, the reloader and (soon) the quota check hold: the sending half.
pub struct Events {
    /// Bit per [`Kind`] that at least one webhook listens to.
    wants: AtomicU32,
    tx: mpsc::Sender<Msg>,
    hooks: watch::Sender<Arc<Vec<Webhook>>>,
    /// `key.expired_used`: the hour each key was last pushed in, so an attacker replaying an
    /// expired key costs one map lookup per request, not one event.
    expired: DashMap<Id, u64>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("wants", &self.wants)
            .finish_non_exhaustive()
    }
}

/// What goes to the delivery task.
#[derive(Debug)]
pub(crate) enum Msg {
    Event(Event),
    /// Made into an event by the delivery task, off the request path.
    ExpiredUsed(Id, SystemTime),
    /// Write the spool now and say when it is done (shutdown).
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The receiving half, for [`deliver::run`].
pub struct Receiver {
    pub(crate) rx: mpsc::Receiver<Msg>,
    pub(crate) hooks: watch::Receiver<Arc<Vec<Webhook>>>,
}

fn mask(hooks: &[Webhook]) -> u32 {
    hooks
        .iter()
        .flat_map(|h| h.events.iter())
        .filter_map(|e| Kind::of(e))
        .fold(0, |m, k| m | k.bit())
}

impl Events {
    pub fn new(hooks: &[Webhook], metrics: Arc<Metrics>) -> (Arc<Events>, Receiver) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (htx, hrx) = watch::channel(Arc::new(hooks.to_vec()));
        let events = Arc::new(Events {
            wants: AtomicU32::new(mask(hooks)),
            tx,
            hooks: htx,
            expired: DashMap::new(),
            metrics,
        });
        (events, Receiver { rx, hooks: hrx })
    }

    /// Whether any webhook listens to `kind`: check before building an event.
    pub fn wants(&self, kind: Kind) -> bool {
        self.wants.load(Ordering::Relaxed) & kind.bit() != 0
    }

    /// Hands `event` to the delivery task without waiting; dropped (and counted) when no
    /// webhook wants it or the queue is full.
    pub fn emit(&self, event: Event) {
        if !self.wants(event.kind) {
            return;
        }
        let kind = event.kind.name();
        if self.tx.try_send(Msg::Event(event)).is_err() {
            self.metrics.webhook_delivery("", kind, "dropped");
        }
    }

    /// A reload's webhooks: applied to new events and to the deliveries still pending.
    pub fn configure(&self, hooks: &[Webhook]) {
        self.wants.store(mask(hooks), Ordering::Relaxed);
        self.hooks.send_if_modified(|cur| {
            if **cur == hooks {
                return false;
            }
            *cur = Arc::new(hooks.to_vec());
            true
        });
    }

    /// A reload from `old` to `new`: its key events.
    pub fn key_changes(&self, old: &Snapshot, new: &Snapshot) {
        for e in key_changes(old, new, |k| self.wants(k)) {
            self.emit(e);
        }
    }

    /// Writes what is pending to the spool, waiting at most `limit`: the shutdown's last step,
    /// so an event emitted just before SIGTERM is not lost.
    pub async fn flush(&self, limit: Duration) {
        let (done, wait) = tokio::sync::oneshot::channel();
        let _ = tokio::time::timeout(limit, async {
            if self.tx.send(Msg::Flush(done)).await.is_ok() {
                let _ = wait.await;
            }
        })
        .await;
    }

    /// The request path, when an expired key was presented: at most one push per key per
    /// hour, no allocation otherwise.
    pub fn expired_used(&self, key: &Id) {
        if !self.wants(Kind::KeyExpiredUsed) {
            return;
        }
        let now = SystemTime::now();
        let hour = secs(now) / EXPIRED_USED_EVERY.as_secs();
        if self.expired.get(key).is_some_and(|h| *h == hour) {
            return;
        }
        // Bounded by the keys that exist; forgotten wholesale past a size no config reaches by
        // expired keys alone (the per-hour id still dedupes in the delivery task).
        if self.expired.len() > 100_000 {
            self.expired.clear();
        }
        self.expired.insert(key.clone(), hour);
        if self
            .tx
            .try_send(Msg::ExpiredUsed(key.clone(), now))
            .is_err()
        {
            self.metrics
                .webhook_delivery("", Kind::KeyExpiredUsed.name(), "dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const CONFIG: &str =
        "[[targets]]\nname = \"production\"\nupstream = \"http://127.0.0.1:3000\"\n";

    fn snap(keys: &str) -> Snapshot {
        crate::config::parse(&format!("{CONFIG}{keys}"), Path::new("k.toml"))
            .unwrap()
            .snapshot
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn events_expiring_is_sent_7_days_and_1_day_before_and_not_twice() {
        let s = snap(
            "[[keys]]\nid = \"soon\"\nhash = \"sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\nexpires_at = 2030-01-31T00:00:00Z\n",
        );
        let at = s.keys[0].expires_at.unwrap();
        let mut sent = deliver::Seen::default();
        let mut scan = |now: SystemTime| -> Vec<String> {
            expiring(&s, now)
                .into_iter()
                .filter(|e| sent.first(&e.id, secs(now) * 1000, e.dedupe_for))
                .map(|e| e.data["expires_in"].as_str().unwrap().to_owned())
                .collect()
        };
        assert!(scan(at - 8 * DAY).is_empty());
        assert_eq!(scan(at - 7 * DAY), ["7d"]);
        assert!(scan(at - 6 * DAY).is_empty(), "not twice");
        assert!(scan(at - 2 * DAY).is_empty());
        assert_eq!(scan(at - DAY + Duration::from_secs(1)), ["1d"]);
        assert!(scan(at - Duration::from_secs(60)).is_empty(), "not twice");
        assert!(scan(at).is_empty());
        assert!(scan(at + DAY).is_empty());
        // Persisted: what a restart reads back still knows both.
        let restored = deliver::Seen::from_list(sent.to_list(), secs(at - DAY) * 1000);
        let mut sent = restored;
        let again: Vec<_> = expiring(&s, at - Duration::from_secs(3600))
            .into_iter()
            .filter(|e| sent.first(&e.id, secs(at) * 1000 - 3_600_000, e.dedupe_for))
            .collect();
        assert!(again.is_empty());
    }

    #[test]
    fn events_a_key_made_with_hours_left_gets_only_the_1_day_warning() {
        let s =
            snap("[[keys]]\nid = \"k\"\nsecret = \"test\"\nexpires_at = 2030-01-31T00:00:00Z\n");
        let at = s.keys[0].expires_at.unwrap();
        let e = expiring(&s, at - Duration::from_secs(12 * 3600));
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].data["expires_in"], "1d");
        assert_eq!(e[0].kind, Kind::KeyExpiring);
    }

    #[test]
    fn events_key_changes_from_a_reload_diff_carry_no_secret() {
        let hash = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let old = snap(&format!(
            "[[keys]]\nid = \"a\"\nhash = \"{hash}\"\n[[keys]]\nid = \"gone\"\nhash = \"sha256:{}\"\n[[keys]]\nid = \"same\"\nhash = \"sha256:{}\"\n",
            "1".repeat(64),
            "2".repeat(64)
        ));
        let new = snap(&format!(
            "[[keys]]\nid = \"a\"\nhash = \"{hash}\"\nstatus = \"inactive\"\n[[keys]]\nid = \"b\"\nhash = \"sha256:{}\"\nname = \"B\"\n[[keys]]\nid = \"same\"\nhash = \"sha256:{}\"\n",
            "3".repeat(64),
            "2".repeat(64)
        ));
        let all = key_changes(&old, &new, |_| true);
        let kinds: Vec<_> = all
            .iter()
            .map(|e| (e.kind.name(), e.data["key"]["id"].as_str().unwrap()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("key.updated", "a"),
                ("key.created", "b"),
                ("key.revoked", "gone")
            ]
        );
        assert_eq!(all[2].data["removed"], true);
        assert_eq!(all[0].data["key"]["status"], "inactive");
        assert_eq!(all[0].data["previous"]["status"], "active");
        for e in &all {
            let body = e.body();
            assert!(!body.contains("sha256:"), "{body}");
            assert!(!body.contains(&"3".repeat(64)), "{body}");
            assert!(e.id.starts_with("evt_") && e.id.len() == 36);
        }
        // The same change seen twice (two instances of a fleet) has the same id.
        let twice = key_changes(&old, &new, |_| true);
        assert_eq!(all[1].id, twice[1].id);
        // Nobody listening: nothing built.
        assert!(key_changes(&old, &new, |_| false).is_empty());
        let only_created = key_changes(&old, &new, |k| k == Kind::KeyCreated);
        assert_eq!(only_created.len(), 1);
    }

    #[test]
    fn events_quota_constructors_make_one_id_per_window() {
        let end = UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let w = Event::quota_warning(QuotaScope::Key, "k1", 80, 100, end);
        let again = Event::quota_warning(QuotaScope::Key, "k1", 85, 100, end);
        let next = Event::quota_warning(QuotaScope::Key, "k1", 80, 100, end + DAY);
        let x = Event::quota_exceeded(QuotaScope::Consumer, "acme", 100, 100, end);
        assert_eq!(w.id, again.id, "at most once per window");
        assert_ne!(w.id, next.id);
        assert_eq!(w.kind.name(), "quota.warning");
        let body: Value = serde_json::from_str(&x.body()).unwrap();
        assert_eq!(body["type"], "quota.exceeded");
        assert_eq!(body["id"], x.id.as_str());
        assert_eq!(body["data"]["scope"], "consumer");
        assert_eq!(body["data"]["consumer"], "acme");
        assert_eq!(body["data"]["used"], 100);
        assert_eq!(body["data"]["limit"], 100);
        assert_eq!(body["data"]["window_end"], "2030-03-17T17:46:40Z");
    }

    #[test]
    fn events_emit_is_dropped_when_nobody_listens() {
        let (events, mut rx) = Events::new(&[], Metrics::new());
        events.emit(Event::quota_exceeded(
            QuotaScope::Key,
            "k",
            1,
            1,
            SystemTime::now(),
        ));
        events.expired_used(&Id::new("k").unwrap());
        assert!(rx.rx.try_recv().is_err());
    }
}
