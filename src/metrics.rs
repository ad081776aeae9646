//! Prometheus metrics: what the request path counts, and the text a scrape gets.
//!
//! Every label value comes from the config (target names, key ids, denial codes) or from a
//! closed set (method classes, status codes), never from what a client sends, so the number of
//! series is bounded by the config. The config's own state (generation, keys, last reload) is
//! read when scraped, so the request path never touches it.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::http::body::RequestBody;
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;

use crate::snapshot::Id;
use crate::state::Published;

/// The content type of what the encoder writes: OpenMetrics text, which Prometheus scrapes
/// (and which reads as the classic text format too: its `# UNIT` and `# EOF` lines are comments).
pub const TEXT_FORMAT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latency buckets, in seconds: a gateway adds well under a millisecond, upstreams take up to
/// their timeout (30 s by default).
const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// A method's class: the common methods by name, everything else `OTHER`, so that a client
/// inventing methods cannot mint series.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(clippy::upper_case_acronyms)]
pub enum MethodClass {
    GET,
    HEAD,
    POST,
    PUT,
    PATCH,
    DELETE,
    OPTIONS,
    OTHER,
}

impl MethodClass {
    pub fn of(m: &Method) -> MethodClass {
        match *m {
            Method::GET => MethodClass::GET,
            Method::HEAD => MethodClass::HEAD,
            Method::POST => MethodClass::POST,
            Method::PUT => MethodClass::PUT,
            Method::PATCH => MethodClass::PATCH,
            Method::DELETE => MethodClass::DELETE,
            Method::OPTIONS => MethodClass::OPTIONS,
            _ => MethodClass::OTHER,
        }
    }
}

/// A target's name as a label; `""` for a request no target matched.
#[derive(Clone, Debug, Hash, PartialEq, Eq, Default)]
pub struct TargetName(pub Option<Id>);

impl TargetName {
    /// The label of a target by name; "" for none.
    fn named(name: &str) -> TargetName {
        TargetName(Id::new(name))
    }
}

impl EncodeLabelValue for TargetName {
    fn encode(&self, e: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        e.write_str(self.0.as_ref().map_or("", Id::as_str))
    }
}

impl EncodeLabelValue for Id {
    fn encode(&self, e: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        e.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub target: TargetName,
    pub method: MethodClass,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub target: TargetName,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyLabels {
    pub key_id: Id,
}

/// What the request path and the listeners count: one [`Shard`] per worker thread, summed
/// when scraped. A worker only ever writes its own shard, so counting a request touches no
/// cache line the other cores write (a shared counter would be written by every core on every
/// request); the scrape is the only other reader.
pub struct Metrics {
    shards: Mutex<Vec<Arc<Shard>>>,
    /// `[cluster]`: failed or timed-out Redis calls, and whether Redis answers now.
    redis_errors: Counter,
    redis_up: Gauge,
    /// The last reload attempt: when (seconds since the epoch, as f64 bits) and whether it
    /// published a config. Starts as the load at start.
    reload_time: AtomicU64,
    reload_ok: AtomicU64,
    /// `[[webhooks]]`: deliveries by (webhook, event, outcome), and pending per webhook, as the
    /// delivery task reports them (never the request path).
    webhooks: Mutex<Webhooks>,
}

#[derive(Default)]
struct Webhooks {
    deliveries: BTreeMap<(String, String, &'static str), u64>,
    pending: BTreeMap<String, i64>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    webhook: String,
    event: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookName {
    webhook: String,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
            shards: Mutex::new(Vec::new()),
            redis_errors: Counter::default(),
            redis_up: Gauge::default(),
            reload_time: AtomicU64::new(0),
            reload_ok: AtomicU64::new(1),
            webhooks: Mutex::default(),
        };
        m.reloaded(SystemTime::now(), true);
        m
    }
}

/// One finished request, as the request path hands it over.
pub struct Finished {
    /// From [`Shard::target`].
    pub target: usize,
    pub method: MethodClass,
    pub status: u16,
    /// From sending upstream to the response head; `None` when keygate answered itself.
    pub upstream: Option<Duration>,
    pub total: Duration,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

type Fast = foldhash::fast::FixedState;

/// One worker's counts.
#[derive(Default)]
pub struct Shard {
    in_flight: AtomicI64,
    connections: AtomicI64,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    /// Target names ("" for no target) to their index in `targets`.
    /// foldhash, here and below: counted on every request, and SipHash was 170 instructions a
    /// lookup (callgrind, issue 18). The keys are the config's target names, deny codes and
    /// status classes, never a client's bytes, so no DoS resistance is needed.
    slots: HashMap<Box<str>, usize, Fast>,
    targets: Vec<(Box<str>, PerTarget)>,
    denials: HashMap<&'static str, u64, Fast>,
    rate_limited: HashMap<Id, u64>,
}

#[derive(Default, Clone)]
struct PerTarget {
    requests: HashMap<(MethodClass, u16), u64, Fast>,
    duration: Hist,
    upstream: Hist,
    bytes_in: u64,
    bytes_out: u64,
}

/// A latency histogram's counts: one per bucket of [`LATENCY_BUCKETS`], then `+Inf`.
#[derive(Clone, Default)]
struct Hist {
    buckets: [u64; LATENCY_BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl Hist {
    fn observe(&mut self, d: Duration) {
        let v = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&b| v <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    fn add(&mut self, other: &Hist) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.sum += other.sum;
        self.count += other.count;
    }
}

impl Shard {
    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The slot of target `name` ("" for a request no target matched) in this shard.
    pub fn target(&self, name: &str) -> usize {
        let mut c = self.counts();
        if let Some(&slot) = c.slots.get(name) {
            return slot;
        }
        let slot = c.targets.len();
        c.targets.push((name.into(), PerTarget::default()));
        c.slots.insert(name.into(), slot);
        slot
    }

    /// A request has started; [`Shard::finished`] ends it.
    pub fn started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub fn finished(&self, f: &Finished) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let mut c = self.counts();
        let Some((_, t)) = c.targets.get_mut(f.target) else {
            return;
        };
        *t.requests.entry((f.method, f.status)).or_default() += 1;
        t.duration.observe(f.total);
        if let Some(up) = f.upstream {
            t.upstream.observe(up);
        }
        t.bytes_in += f.bytes_in;
        t.bytes_out += f.bytes_out;
    }

    /// A request keygate answered itself (`code` is a [`Deny`](crate::proxy::deny::Deny) code).
    pub fn denied(&self, code: &'static str) {
        *self.counts().denials.entry(code).or_default() += 1;
    }

    /// A key's own rate limit or its consumer's refused a request made with `key`.
    pub fn rate_limited(&self, key: &Id) {
        let mut c = self.counts();
        match c.rate_limited.get_mut(key) {
            Some(n) => *n += 1,
            None => {
                c.rate_limited.insert(key.clone(), 1);
            }
        }
    }

    pub fn connection_opened(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every shard's counts, summed by label set, for one scrape.
#[derive(Default)]
struct Totals {
    targets: BTreeMap<Box<str>, PerTarget>,
    denials: BTreeMap<&'static str, u64>,
    rate_limited: BTreeMap<String, u64>,
    in_flight: i64,
    connections: i64,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    /// A shard for one more worker (or one test's proxy).
    pub fn shard(&self) -> Arc<Shard> {
        let shard = Arc::new(Shard::default());
        self.shards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(shard.clone());
        shard
    }

    fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for shard in self.shards.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            t.in_flight += shard.in_flight.load(Ordering::Relaxed);
            t.connections += shard.connections.load(Ordering::Relaxed);
            let c = shard.counts();
            for (name, per) in &c.targets {
                let sum = t.targets.entry(name.clone()).or_default();
                for (k, n) in &per.requests {
                    *sum.requests.entry(*k).or_default() += n;
                }
                sum.duration.add(&per.duration);
                sum.upstream.add(&per.upstream);
                sum.bytes_in += per.bytes_in;
                sum.bytes_out += per.bytes_out;
            }
            for (code, n) in &c.denials {
                *t.denials.entry(code).or_default() += n;
            }
            for (id, n) in &c.rate_limited {
                *t.rate_limited.entry(id.as_str().to_owned()).or_default() += n;
            }
        }
        t
    }

    pub fn redis_error(&self) {
        self.redis_errors.inc();
    }

    pub fn redis_up(&self, up: bool) {
        self.redis_up.set(i64::from(up));
    }

    /// A reload attempt at `at`, which published a config or failed.
    pub fn reloaded(&self, at: SystemTime, ok: bool) {
        let secs = at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        self.reload_time.store(secs.to_bits(), Ordering::Relaxed);
        self.reload_ok.store(u64::from(ok), Ordering::Relaxed);
    }

    /// One webhook delivery's outcome: `delivered`, `failed` (to be retried), `gave_up`
    /// (retried for `retry_for`) or `dropped` (past `max_pending`, webhook removed, queue full).
    pub fn webhook_delivery(&self, webhook: &str, event: &str, outcome: &'static str) {
        let mut w = self.webhooks.lock().unwrap_or_else(|p| p.into_inner());
        *w.deliveries
            .entry((webhook.to_owned(), event.to_owned(), outcome))
            .or_default() += 1;
    }

    /// Deliveries waiting, per webhook.
    pub fn webhooks_pending(&self, pending: BTreeMap<String, i64>) {
        self.webhooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pending = pending;
    }

    /// The Prometheus text exposition of everything, with the config's state as of now.
    pub fn encode(&self, published: &Published) -> String {
        let totals = self.totals();
        let mut r = Registry::with_prefix("keygate");
        let requests: Family<RequestLabels, Counter> = Family::default();
        let request_bytes: Family<TargetLabels, Counter> = Family::default();
        let response_bytes: Family<TargetLabels, Counter> = Family::default();
        for (name, per) in &totals.targets {
            let target = TargetName::named(name);
            for (&(method, status), &n) in &per.requests {
                requests
                    .get_or_create(&RequestLabels {
                        target: target.clone(),
                        method,
                        status,
                    })
                    .inc_by(n);
            }
            let labels = TargetLabels {
                target: target.clone(),
            };
            if per.bytes_in > 0 {
                request_bytes.get_or_create(&labels).inc_by(per.bytes_in);
            }
            if per.bytes_out > 0 {
                response_bytes.get_or_create(&labels).inc_by(per.bytes_out);
            }
        }
        r.register(
            "requests",
            "Requests answered, by target, method and status",
            requests,
        );
        let denials: Family<CodeLabels, Counter> = Family::default();
        for (&code, &n) in &totals.denials {
            denials.get_or_create(&CodeLabels { code }).inc_by(n);
        }
        r.register(
            "denials",
            "Requests keygate answered itself, by problem code",
            denials,
        );
        let rate_limited: Family<KeyLabels, Counter> = Family::default();
        for (id, &n) in &totals.rate_limited {
            if let Some(key_id) = Id::new(id) {
                rate_limited.get_or_create(&KeyLabels { key_id }).inc_by(n);
            }
        }
        r.register(
            "rate_limited",
            "Requests refused by a key's or its consumer's rate limit, by key",
            rate_limited,
        );
        r.register_collector(Box::new(Latencies(
            totals
                .targets
                .iter()
                .map(|(name, per)| (name.clone(), per.upstream.clone(), per.duration.clone()))
                .collect(),
        )));
        r.register_with_unit(
            "request_body",
            "Request body bytes received, by target",
            Unit::Bytes,
            request_bytes,
        );
        r.register_with_unit(
            "response_body",
            "Response body bytes sent, by target",
            Unit::Bytes,
            response_bytes,
        );
        let gauge = |v: i64| {
            let g: Gauge = Gauge::default();
            g.set(v);
            g
        };
        r.register(
            "requests_in_flight",
            "Requests being answered now",
            gauge(totals.in_flight),
        );
        r.register(
            "open_connections",
            "Client connections open now",
            gauge(totals.connections),
        );
        r.register(
            "redis_errors",
            "[cluster] Redis calls that failed or timed out",
            self.redis_errors.clone(),
        );
        r.register(
            "redis_up",
            "[cluster] 1 while Redis answers, 0 during an outage (0 without [cluster])",
            self.redis_up.clone(),
        );
        let snap = published.load();
        let count = |n: usize| gauge(i64::try_from(n).unwrap_or(i64::MAX));
        r.register(
            "config_generation",
            "Generation of the config serving now (1 at start, +1 per reload that published)",
            gauge(i64::try_from(published.generation()).unwrap_or(i64::MAX)),
        );
        let time: Gauge<f64, AtomicU64> = Gauge::default();
        time.set(f64::from_bits(self.reload_time.load(Ordering::Relaxed)));
        r.register(
            "config_last_reload_timestamp_seconds",
            "When the config was last loaded or a reload last failed, in seconds since the epoch",
            time,
        );
        r.register(
            "config_last_reload_success",
            "1 when the last load or reload published a config, 0 when it failed",
            gauge(i64::try_from(self.reload_ok.load(Ordering::Relaxed)).unwrap_or(0)),
        );
        r.register(
            "keys_loaded",
            "API keys in the config",
            count(snap.keys.len()),
        );
        r.register(
            "consumers_loaded",
            "Consumers in the config",
            count(snap.consumers.len()),
        );
        r.register(
            "targets_loaded",
            "Deploy targets in the config",
            count(snap.targets.len()),
        );
        {
            let w = self.webhooks.lock().unwrap_or_else(|p| p.into_inner());
            let deliveries: Family<WebhookLabels, Counter> = Family::default();
            for ((webhook, event, outcome), &n) in &w.deliveries {
                deliveries
                    .get_or_create(&WebhookLabels {
                        webhook: webhook.clone(),
                        event: event.clone(),
                        outcome,
                    })
                    .inc_by(n);
            }
            r.register(
                "webhook_deliveries",
                "Webhook delivery attempts and their end, by webhook, event and outcome (delivered, failed, gave_up, dropped)",
                deliveries,
            );
            let pending: Family<WebhookName, Gauge> = Family::default();
            for (webhook, &n) in &w.pending {
                pending
                    .get_or_create(&WebhookName {
                        webhook: webhook.clone(),
                    })
                    .set(n);
            }
            r.register(
                "webhook_pending",
                "Webhook deliveries waiting to be sent or retried, by webhook",
                pending,
            );
        }
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        out
    }
}

/// The answer to `GET /metrics`.
pub fn response(metrics: &Metrics, published: &Published) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(metrics.encode(published))));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT));
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Serves `GET /metrics` alone on `listener` (`[metrics] listen`, for when the admin API is
/// off or its port is not for Prometheus) until `shutdown` completes, behind the same front and
/// edge limits as the proxy.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    published: Arc<Published>,
    shutdown: impl Future<Output = ()>,
) {
    use crate::http::listener::{self, Connection, Front, Worker};
    let front = Front::new("metrics", published.clone());
    let handler = move |req: Request<RequestBody>, _: &Connection| {
        let resp = match (req.method(), req.uri().path()) {
            (&Method::GET | &Method::HEAD, "/metrics") => response(&metrics, &published),
            _ => {
                let mut r = Response::new(Full::new(Bytes::from_static(b"not found\n")));
                *r.status_mut() = StatusCode::NOT_FOUND;
                r
            }
        };
        std::future::ready(resp)
    };
    listener::serve(listener, front, Worker::new(handler), shutdown).await;
}

/// The two latency histograms, by target, as summed over the shards for one scrape.
#[derive(Debug)]
struct Latencies(Vec<(Box<str>, Hist, Hist)>);

impl std::fmt::Debug for Hist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hist").field("count", &self.count).finish()
    }
}

impl Collector for Latencies {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let families = [
            (
                "upstream_latency",
                "Time from sending a request upstream to its response head",
                true,
            ),
            (
                "request_duration",
                "Time from a request's head to the last byte of its response",
                false,
            ),
        ];
        for (name, help, upstream) in families {
            let mut metric = encoder.encode_descriptor(
                name,
                help,
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for (target, up, total) in &self.0 {
                let h = if upstream { up } else { total };
                if h.count == 0 {
                    continue;
                }
                let labels = TargetLabels {
                    target: TargetName::named(target),
                };
                let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
                    .iter()
                    .copied()
                    .chain(std::iter::once(f64::INFINITY))
                    .zip(h.buckets.iter().copied())
                    .collect();
                metric
                    .encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(h.sum, h.count, &buckets, None)?;
            }
        }
        Ok(())
    }
}
