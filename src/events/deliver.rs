//! The delivery task: fans events out to the webhooks that asked for them, POSTs them signed,
//! retries failures with exponential backoff for `retry_for` (a day by default), and keeps
//! what is pending in a spool file beside the keys file, so a restart loses nothing.
//!
//! At least once: a delivery leaves the spool only once its receiver answered 2xx, so one
//! in flight during a crash or a shutdown is sent again after the restart (receivers drop
//! duplicates by the event id). Bounded: at most `max_pending` deliveries per webhook, the
//! oldest dropped first (and counted), so a receiver down for a day costs a bounded amount of
//! memory and disk. The spool is rewritten whole (temp file, fsync, rename), at most every
//! [`FLUSH_DELAY`]: an event emitted that long before a crash may be lost.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::Request;
use http::header::{CONTENT_TYPE, USER_AGENT};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::sign::{SIGNATURE, sign};
use super::{Event, Kind, Msg, Receiver, expired_used, expiring};
use crate::cluster::Cluster;
use crate::metrics::Metrics;
use crate::model::Webhook;
use crate::snapshot::Snapshot;
use crate::state::Published;

/// How long a change to the pending set may wait before the spool is rewritten: a burst of
/// events or of deliveries costs one write, not one each.
pub const FLUSH_DELAY: Duration = Duration::from_millis(250);
/// How often `key.expiring` is looked for.
pub const SCAN_EVERY: Duration = Duration::from_secs(60);
/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// Attempts in flight to one webhook at once: a receiver that hangs holds this many, and the
/// others are not held up.
const IN_FLIGHT_PER_HOOK: usize = 4;
/// Event ids remembered (to send each once), at most: past it the soonest to expire go first.
const SEEN_MAX: usize = 200_000;

/// `keys.webhooks.json` beside `keys.toml`, or `keygate.webhooks.json` beside the config.
/// With `[cluster]` the instances of a fleet usually share the keys file's directory, and each
/// needs a spool of its own: `keys.webhooks.<host>-<config>.json`, named after the host and a
/// digest of this instance's config path, so the same instance finds it again after a restart.
pub fn spool_path(snap: &Snapshot, config: &Path) -> PathBuf {
    let instance = match &snap.cluster {
        None => String::new(),
        Some(_) => {
            let path = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf());
            let digest = sha2::Sha256::digest(path.as_os_str().as_encoded_bytes());
            format!(".{}-{}", host(), hex::encode(&digest[..4]))
        }
    };
    snap.state_file(config, &format!("webhooks{instance}"))
}

/// This machine's name (a pod's name in Kubernetes), in file-name-safe characters.
fn host() -> String {
    let name = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .unwrap_or_default();
    let safe: String = name
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(64)
        .collect();
    if safe.is_empty() {
        "host".to_owned()
    } else {
        safe
    }
}

/// The wait after `failures` failed attempts (1 or more): `initial`, doubled each time, at most
/// [`MAX_BACKOFF`], plus up to a tenth more drawn from `seed`, so the retries of many
/// deliveries that failed together (a receiver's outage) do not all land in the same second.
pub fn backoff(initial: Duration, failures: u32, seed: u64) -> Duration {
    let base = initial
        .saturating_mul(1 << failures.saturating_sub(1).min(20))
        .min(MAX_BACKOFF);
    let tenth = base.as_millis() / 10;
    let jitter = u64::try_from(tenth)
        .ok()
        .filter(|t| *t > 0)
        .map_or(0, |t| seed % t);
    base + Duration::from_millis(jitter)
}

/// Event ids already sent (or being sent), each until a time in ms since the epoch.
#[derive(Debug, Default)]
pub struct Seen(HashMap<String, u64>);

impl Seen {
    /// `true` the first time `id` is met before it is forgotten (`ttl` after `now_ms`).
    pub fn first(&mut self, id: &str, now_ms: u64, ttl: Duration) -> bool {
        if self.0.get(id).is_some_and(|until| *until > now_ms) {
            return false;
        }
        if self.0.len() >= SEEN_MAX {
            self.0.retain(|_, until| *until > now_ms);
            while self.0.len() >= SEEN_MAX {
                let soonest = self
                    .0
                    .iter()
                    .min_by_key(|(_, u)| **u)
                    .map(|(k, _)| k.clone());
                match soonest {
                    Some(k) => self.0.remove(&k),
                    None => break,
                };
            }
        }
        let ttl = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.0.insert(id.to_owned(), now_ms.saturating_add(ttl));
        true
    }

    pub fn to_list(&self) -> Vec<(String, u64)> {
        self.0.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    pub fn from_list(list: Vec<(String, u64)>, now_ms: u64) -> Seen {
        Seen(list.into_iter().filter(|(_, u)| *u > now_ms).collect())
    }
}

/// One delivery of one event to one webhook.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    event: String,
    kind: String,
    hook: String,
    body: String,
    /// Failed attempts so far.
    attempts: u32,
    first_ms: u64,
    next_ms: u64,
    #[serde(skip)]
    in_flight: bool,
}

/// The spool file.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Spool {
    pending: Vec<Pending>,
    seen: Vec<(String, u64)>,
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

fn client() -> HttpClient {
    let tls = match crate::tls::upstream_config(None) {
        Ok(c) => (*c).clone(),
        Err(e) => {
            tracing::warn!(error = %e, "webhooks: no system CA roots; https:// webhooks will fail");
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            })
            .unwrap_or_else(|_| {
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            })
        }
    };
    let mut tls = tls;
    // The builder sets ALPN itself (HTTP/1.1 only: a webhook is one small POST).
    tls.alpn_protocols.clear();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// The delivery task's state.
struct Worker {
    hooks: Arc<Vec<Webhook>>,
    /// By arrival: the first of a webhook's is its oldest.
    pending: BTreeMap<u64, Pending>,
    seq: u64,
    seen: Seen,
    path: PathBuf,
    metrics: Arc<Metrics>,
    cluster: Option<Arc<Cluster>>,
    published: Arc<Published>,
    dirty: bool,
}

/// What one attempt came to: its pending entry, and `Ok` with a 2xx status or why not.
type Attempt = (u64, Result<u16, String>);

/// Runs the deliveries until the process ends.
pub async fn run(
    recv: Receiver,
    published: Arc<Published>,
    metrics: Arc<Metrics>,
    cluster: Option<Arc<Cluster>>,
    path: PathBuf,
) {
    let Receiver {
        mut rx,
        hooks: mut hooks_rx,
    } = recv;
    let spool = read_spool(&path).await;
    let now = now_ms();
    let mut w = Worker {
        hooks: hooks_rx.borrow_and_update().clone(),
        pending: BTreeMap::new(),
        seq: 0,
        seen: Seen::from_list(spool.seen, now),
        path,
        metrics,
        cluster,
        published,
        dirty: false,
    };
    for p in spool.pending {
        w.seq += 1;
        w.pending.insert(w.seq, p);
    }
    if !w.pending.is_empty() {
        tracing::info!(
            pending = w.pending.len(),
            "webhooks: deliveries restored from the spool"
        );
    }
    w.reconfigure(w.hooks.clone());
    let client = client();
    let mut inflight: JoinSet<Attempt> = JoinSet::new();
    let (mut rx_open, mut hooks_open) = (true, true);
    let mut flush_at: Option<Instant> = None;
    let mut next_scan = Instant::now();
    loop {
        w.launch_due(&client, &mut inflight);
        if Instant::now() >= next_scan {
            w.scan().await;
            next_scan = Instant::now() + SCAN_EVERY;
        }
        if w.dirty && flush_at.is_none() {
            flush_at = Some(Instant::now() + FLUSH_DELAY);
        }
        if flush_at.is_some_and(|at| Instant::now() >= at) {
            w.flush().await;
            flush_at = None;
        }
        let mut wake = next_scan;
        if let Some(at) = flush_at {
            wake = wake.min(at);
        }
        if let Some(due) = w.next_due() {
            wake = wake.min(due);
        }
        tokio::select! {
            m = rx.recv(), if rx_open => match m {
                Some(m) => w.accept(m).await,
                None => rx_open = false,
            },
            Some(done) = inflight.join_next(), if !inflight.is_empty() => {
                if let Ok(done) = done {
                    w.finish(done);
                }
            }
            changed = hooks_rx.changed(), if hooks_open => match changed {
                Ok(()) => {
                    let hooks = hooks_rx.borrow_and_update().clone();
                    w.reconfigure(hooks);
                }
                Err(_) => hooks_open = false,
            },
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}

async fn read_spool(path: &Path) -> Spool {
    let p = path.to_path_buf();
    let read = tokio::task::spawn_blocking(move || std::fs::read(&p)).await;
    match read {
        Ok(Ok(bytes)) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::error!(path = %path.display(), error = %e, "webhooks: the spool is not readable JSON; starting without it");
            Spool::default()
        }),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Spool::default(),
        Ok(Err(e)) => {
            tracing::error!(path = %path.display(), error = %e, "webhooks: cannot read the spool");
            Spool::default()
        }
        Err(_) => Spool::default(),
    }
}

impl Worker {
    fn hook(&self, name: &str) -> Option<&Webhook> {
        self.hooks.iter().find(|h| &*h.name == name)
    }

    /// A reload's webhooks: deliveries to a webhook no longer configured are dropped; the
    /// others use the new URL, secret and timings from their next attempt on.
    fn reconfigure(&mut self, hooks: Arc<Vec<Webhook>>) {
        self.hooks = hooks;
        let gone: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| !p.in_flight && self.hook(&p.hook).is_none())
            .map(|(k, _)| *k)
            .collect();
        for k in gone {
            if let Some(p) = self.pending.remove(&k) {
                self.metrics.webhook_delivery(&p.hook, &p.kind, "dropped");
                self.dirty = true;
            }
        }
        self.gauge();
    }

    async fn accept(&mut self, m: Msg) {
        let event = match m {
            Msg::Flush(done) => {
                if self.dirty {
                    self.flush().await;
                }
                let _ = done.send(());
                return;
            }
            Msg::Event(e) => e,
            Msg::ExpiredUsed(id, at) => {
                let snap = self.published.load();
                match expired_used(&snap, &id, at) {
                    Some(e) => e,
                    None => return,
                }
            }
        };
        self.enqueue(event).await;
    }

    /// Once per id (here, and with `[cluster]` in the fleet), to each webhook that wants it.
    async fn enqueue(&mut self, event: Event) {
        let name = event.kind.name();
        let wanted: Vec<Box<str>> = self
            .hooks
            .iter()
            .filter(|h| h.events.iter().any(|e| &**e == name))
            .map(|h| h.name.clone())
            .collect();
        if wanted.is_empty() {
            return;
        }
        let now = now_ms();
        if !self.seen.first(&event.id, now, event.dedupe_for) {
            return;
        }
        self.dirty = true;
        if let Some(c) = &self.cluster
            && !c.claim_event(&event.id, event.dedupe_for).await
        {
            tracing::debug!(id = %event.id, "webhooks: another instance sends this event");
            return;
        }
        let body = event.body();
        for hook in wanted {
            let max = self.hook(&hook).map_or(0, |h| h.max_pending as usize);
            let mine: Vec<u64> = self
                .pending
                .iter()
                .filter(|(_, p)| *p.hook == *hook && !p.in_flight)
                .map(|(k, _)| *k)
                .collect();
            if mine.len() >= max
                && let Some(oldest) = mine.first()
                && let Some(p) = self.pending.remove(oldest)
            {
                tracing::warn!(webhook = %hook, id = %p.event, "webhooks: max_pending reached, dropping the oldest delivery");
                self.metrics.webhook_delivery(&p.hook, &p.kind, "dropped");
            }
            self.seq += 1;
            self.pending.insert(
                self.seq,
                Pending {
                    event: event.id.clone(),
                    kind: name.to_owned(),
                    hook: hook.to_string(),
                    body: body.clone(),
                    attempts: 0,
                    first_ms: now,
                    next_ms: now,
                    in_flight: false,
                },
            );
        }
        self.gauge();
    }

    /// `key.expiring`, when some webhook listens.
    async fn scan(&mut self) {
        let wants = self
            .hooks
            .iter()
            .any(|h| h.events.iter().any(|e| &**e == Kind::KeyExpiring.name()));
        if !wants {
            return;
        }
        let found = expiring(&self.published.load(), SystemTime::now());
        for e in found {
            self.enqueue(e).await;
        }
    }

    fn next_due(&self) -> Option<Instant> {
        let now = now_ms();
        let due = self
            .pending
            .values()
            .filter(|p| !p.in_flight)
            .map(|p| p.next_ms)
            .min()?;
        Some(Instant::now() + Duration::from_millis(due.saturating_sub(now)))
    }

    fn launch_due(&mut self, client: &HttpClient, inflight: &mut JoinSet<Attempt>) {
        let now = now_ms();
        let mut busy: HashMap<String, usize> = HashMap::new();
        for p in self.pending.values().filter(|p| p.in_flight) {
            *busy.entry(p.hook.clone()).or_default() += 1;
        }
        let hooks = self.hooks.clone();
        for (seq, p) in self.pending.iter_mut() {
            if p.in_flight || p.next_ms > now {
                continue;
            }
            let Some(hook) = hooks.iter().find(|h| *h.name == p.hook) else {
                continue;
            };
            let n = busy.entry(p.hook.clone()).or_default();
            if *n >= IN_FLIGHT_PER_HOOK {
                continue;
            }
            *n += 1;
            p.in_flight = true;
            let (seq, client, hook) = (*seq, client.clone(), hook.clone());
            let (event, kind, body, attempt) = (
                p.event.clone(),
                p.kind.clone(),
                p.body.clone(),
                p.attempts + 1,
            );
            inflight.spawn(async move {
                let r = post(&client, &hook, &event, &kind, body, attempt).await;
                (seq, r)
            });
        }
    }

    fn finish(&mut self, (seq, result): Attempt) {
        let Some(p) = self.pending.get_mut(&seq) else {
            return;
        };
        p.in_flight = false;
        self.dirty = true;
        match result {
            Ok(status) => {
                tracing::debug!(webhook = %p.hook, id = %p.event, status, "webhook delivered");
                self.metrics.webhook_delivery(&p.hook, &p.kind, "delivered");
                self.pending.remove(&seq);
            }
            Err(_) if self.hooks.iter().all(|h| *h.name != p.hook) => {
                // Removed by a reload while this attempt was in flight.
                self.metrics.webhook_delivery(&p.hook, &p.kind, "dropped");
                self.pending.remove(&seq);
            }
            Err(why) => {
                p.attempts += 1;
                let now = now_ms();
                let hook = self.hooks.iter().find(|h| *h.name == p.hook);
                let (initial, retry_for) = hook
                    .map_or((Duration::from_secs(30), Duration::ZERO), |h| {
                        (h.retry_initial, h.retry_for)
                    });
                let age = Duration::from_millis(now.saturating_sub(p.first_ms));
                if age >= retry_for {
                    tracing::warn!(webhook = %p.hook, id = %p.event, attempts = p.attempts, error = %why, "webhook delivery given up");
                    self.metrics.webhook_delivery(&p.hook, &p.kind, "gave_up");
                    self.pending.remove(&seq);
                } else {
                    let seed = u64::from_le_bytes(
                        <[u8; 8]>::try_from(&p.event.as_bytes()[p.event.len().saturating_sub(8)..])
                            .unwrap_or_default(),
                    );
                    let wait = backoff(initial, p.attempts, seed);
                    // The last try lands at the end of `retry_for`, not past it.
                    let end = p.first_ms + u64::try_from(retry_for.as_millis()).unwrap_or(u64::MAX);
                    p.next_ms =
                        (now + u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)).min(end);
                    tracing::info!(webhook = %p.hook, id = %p.event, attempts = p.attempts, error = %why, retry_in = ?wait, "webhook delivery failed, will retry");
                    self.metrics.webhook_delivery(&p.hook, &p.kind, "failed");
                }
            }
        }
        self.gauge();
    }

    fn gauge(&self) {
        let mut per: BTreeMap<String, i64> =
            self.hooks.iter().map(|h| (h.name.to_string(), 0)).collect();
        for p in self.pending.values() {
            *per.entry(p.hook.clone()).or_default() += 1;
        }
        self.metrics.webhooks_pending(per);
    }

    async fn flush(&mut self) {
        self.dirty = false;
        let now = now_ms();
        self.seen.0.retain(|_, until| *until > now);
        let spool = Spool {
            pending: self.pending.values().cloned().collect(),
            seen: self.seen.to_list(),
        };
        let path = self.path.clone();
        let written = tokio::task::spawn_blocking(move || {
            let bytes = serde_json::to_vec(&spool).map_err(std::io::Error::other)?;
            crate::store::write_atomic(&path, &bytes)
        })
        .await;
        if !matches!(written, Ok(Ok(()))) {
            tracing::error!(path = %self.path.display(), "webhooks: cannot write the spool; pending deliveries would not survive a restart");
            self.dirty = true;
        }
    }
}

/// One attempt: `Ok(status)` for a 2xx answer within the webhook's timeout.
async fn post(
    client: &HttpClient,
    hook: &Webhook,
    event: &str,
    kind: &str,
    body: String,
    attempt: u32,
) -> Result<u16, String> {
    let t = super::secs(SystemTime::now());
    let signature = sign(&hook.secret, t, body.as_bytes()).ok_or("cannot sign")?;
    let req = Request::post(hook.url.clone())
        .header(CONTENT_TYPE, "application/json")
        .header(USER_AGENT, concat!("keygate/", env!("CARGO_PKG_VERSION")))
        .header("keygate-event-id", event)
        .header("keygate-event-type", kind)
        .header("keygate-delivery-attempt", attempt)
        .header(SIGNATURE, signature)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(hook.timeout, client.request(req)).await {
        Ok(Ok(resp)) if resp.status().is_success() => Ok(resp.status().as_u16()),
        Ok(Ok(resp)) => Err(format!("answered {}", resp.status().as_u16())),
        Ok(Err(e)) => Err(format!("{e}")),
        Err(_) => Err(format!("no answer within {:?}", hook.timeout)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_backoff_doubles_up_to_an_hour_with_a_tenth_of_jitter() {
        let s = Duration::from_secs;
        let i = s(30);
        assert_eq!(backoff(i, 1, 0), s(30));
        assert_eq!(backoff(i, 2, 0), s(60));
        assert_eq!(backoff(i, 3, 0), s(120));
        assert_eq!(backoff(i, 7, 0), s(1920));
        assert_eq!(backoff(i, 8, 0), s(3600));
        assert_eq!(backoff(i, 40, 0), s(3600));
        for seed in [1, 999, 2_999, u64::MAX] {
            let b = backoff(i, 2, seed);
            assert!(b >= s(60) && b < s(66), "{b:?}");
        }
        // A day of retries from 30 s: about 30 attempts, then it is given up.
        let mut t = Duration::ZERO;
        let mut n = 0;
        while t < s(86_400) {
            n += 1;
            t += backoff(i, n, 0);
        }
        assert!((25..=35).contains(&n), "{n}");
    }

    #[test]
    fn events_seen_forgets_after_its_ttl() {
        let mut seen = Seen::default();
        assert!(seen.first("a", 1_000, Duration::from_secs(1)));
        assert!(!seen.first("a", 1_500, Duration::from_secs(1)));
        assert!(seen.first("a", 2_000, Duration::from_secs(1)));
        let back = Seen::from_list(seen.to_list(), 2_500);
        assert_eq!(back.0.len(), 1);
        assert!(Seen::from_list(seen.to_list(), 3_000).0.is_empty());
    }

    /// What the lead's quota check will do: build a quota event, emit it (twice: the same
    /// window), and a receiver gets it once, signed.
    #[tokio::test]
    async fn events_quota_exceeded_is_delivered_once_per_window() {
        use crate::events::{Event, Events, QuotaScope};
        use http_body_util::BodyExt as _;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut got) = tokio::sync::mpsc::channel::<(String, String)>(8);
        tokio::spawn(async move {
            for _ in 0..8 {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let tx = tx.clone();
                            async move {
                                let sig = req.headers()[SIGNATURE].to_str().unwrap().to_owned();
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                let _ = tx
                                    .send((sig, String::from_utf8(body.to_vec()).unwrap()))
                                    .await;
                                Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                    Bytes::new(),
                                )))
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let dir = std::env::temp_dir().join(format!("keygate-events-quota-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("keygate.toml");
        let snap = crate::config::parse(
            &format!(
                "[[targets]]\nname = \"p\"\nupstream = \"http://127.0.0.1:1\"\n[[webhooks]]\nurl = \"http://{addr}/q\"\nevents = [\"quota.exceeded\"]\nsecret = \"qsecret\"\n"
            ),
            &config,
        )
        .unwrap()
        .snapshot;
        let metrics = Metrics::new();
        let (events, rx) = Events::new(&snap.webhooks, metrics.clone());
        let path = spool_path(&snap, &config);
        let published = Arc::new(Published::new(snap));
        let task = tokio::spawn(run(rx, published, metrics.clone(), None, path));
        let end = SystemTime::now() + Duration::from_secs(3600);
        assert!(events.wants(Kind::QuotaExceeded));
        assert!(!events.wants(Kind::QuotaWarning));
        events.emit(Event::quota_exceeded(QuotaScope::Key, "k1", 100, 100, end));
        events.emit(Event::quota_exceeded(QuotaScope::Key, "k1", 101, 100, end));
        let (sig, body) = tokio::time::timeout(Duration::from_secs(10), got.recv())
            .await
            .unwrap()
            .unwrap();
        let now = super::super::secs(SystemTime::now());
        assert!(super::super::sign::verify(
            b"qsecret",
            &sig,
            body.as_bytes(),
            now,
            300
        ));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["type"], "quota.exceeded");
        assert_eq!(v["data"]["key"], "k1");
        assert_eq!(v["data"]["used"], 100);
        assert!(
            tokio::time::timeout(Duration::from_millis(500), got.recv())
                .await
                .is_err(),
            "the second one of the window was sent too"
        );
        task.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A receiver that is down: past `max_pending` the oldest delivery is dropped, and past
    /// `retry_for` one is given up; both counted.
    #[tokio::test]
    async fn events_max_pending_drops_the_oldest_and_retry_for_gives_up() {
        use crate::events::{Event, Events, QuotaScope};

        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let dir = std::env::temp_dir().join(format!("keygate-events-bound-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("keygate.toml");
        let snap = crate::config::parse(
            &format!(
                "[[targets]]\nname = \"p\"\nupstream = \"http://127.0.0.1:1\"\n\
                 [[webhooks]]\nname = \"down\"\nurl = \"http://{closed}/\"\nevents = [\"quota.exceeded\"]\nsecret = \"s\"\nretry_initial = \"1h\"\nmax_pending = 2\n\
                 [[webhooks]]\nname = \"brief\"\nurl = \"http://{closed}/\"\nevents = [\"quota.warning\"]\nsecret = \"s\"\nretry_for = \"1ms\"\n"
            ),
            &config,
        )
        .unwrap()
        .snapshot;
        let metrics = Metrics::new();
        let (events, rx) = Events::new(&snap.webhooks, metrics.clone());
        let path = spool_path(&snap, &config);
        let published = Arc::new(Published::new(snap));
        let task = tokio::spawn(run(
            rx,
            published.clone(),
            metrics.clone(),
            None,
            path.clone(),
        ));
        let text = || metrics.encode(&published);
        let wait_for = async |line: &str| {
            for _ in 0..500 {
                if text().lines().any(|l| l == line) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("no {line:?} in\n{}", text());
        };
        let end = SystemTime::now() + Duration::from_secs(3600);
        for (i, key) in ["k1", "k2", "k3"].into_iter().enumerate() {
            events.emit(Event::quota_exceeded(QuotaScope::Key, key, 1, 1, end));
            wait_for(&format!(
                "keygate_webhook_deliveries_total{{webhook=\"down\",event=\"quota.exceeded\",outcome=\"failed\"}} {}",
                i + 1
            ))
            .await;
        }
        wait_for("keygate_webhook_deliveries_total{webhook=\"down\",event=\"quota.exceeded\",outcome=\"dropped\"} 1").await;
        wait_for("keygate_webhook_pending{webhook=\"down\"} 2").await;
        events.emit(Event::quota_warning(
            QuotaScope::Consumer,
            "acme",
            8,
            10,
            end,
        ));
        wait_for("keygate_webhook_deliveries_total{webhook=\"brief\",event=\"quota.warning\",outcome=\"gave_up\"} 1").await;
        wait_for("keygate_webhook_pending{webhook=\"brief\"} 0").await;
        // The spool holds the two left, not the dropped one.
        for _ in 0..200 {
            let spool = std::fs::read_to_string(&path).unwrap_or_default();
            if spool.matches("\"hook\":\"down\"").count() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let spool = std::fs::read_to_string(&path).unwrap();
        assert_eq!(spool.matches("\"hook\":\"down\"").count(), 2, "{spool}");
        assert!(!spool.contains("\\\"key\\\":\\\"k1\\\""), "{spool}");
        task.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn events_spool_path_is_beside_the_keys_file() {
        assert_eq!(
            spool_path(
                &crate::config::parse(
                    "[[targets]]\nname = \"p\"\nupstream = \"http://127.0.0.1:1\"\n",
                    Path::new("/etc/keygate/keygate.toml")
                )
                .unwrap()
                .snapshot,
                Path::new("/etc/keygate/keygate.toml")
            ),
            Path::new("/etc/keygate/keygate.webhooks.json")
        );
    }
}
