//! Prometheus metrics: what the request path counts, and the text a scrape gets.
//!
//! Every label value comes from the config (target names, key ids, denial codes) or from a
//! closed set (method classes, status codes), never from what a client sends, so the number of
//! series is bounded by the config. The config's own state (generation, keys, last reload) is
//! read when scraped, so the request path never touches it.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;

use crate::snapshot::{Id, Published};

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

/// What the request path and the listeners count. One per process, shared by every worker.
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    denials: Family<CodeLabels, Counter>,
    rate_limited: Family<KeyLabels, Counter>,
    upstream_latency: Family<TargetLabels, Histogram>,
    duration: Family<TargetLabels, Histogram>,
    request_bytes: Family<TargetLabels, Counter>,
    response_bytes: Family<TargetLabels, Counter>,
    in_flight: Gauge,
    connections: Gauge,
    /// `[cluster]`: failed or timed-out Redis calls, and whether Redis answers now.
    redis_errors: Counter,
    redis_up: Gauge,
    /// The last reload attempt: when (seconds since the epoch, as f64 bits) and whether it
    /// published a config. Starts as the load at start.
    reload_time: AtomicU64,
    reload_ok: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        let histogram = || Histogram::new(LATENCY_BUCKETS);
        let m = Metrics {
            requests: Family::default(),
            denials: Family::default(),
            rate_limited: Family::default(),
            upstream_latency: Family::new_with_constructor(histogram),
            duration: Family::new_with_constructor(histogram),
            request_bytes: Family::default(),
            response_bytes: Family::default(),
            in_flight: Gauge::default(),
            connections: Gauge::default(),
            redis_errors: Counter::default(),
            redis_up: Gauge::default(),
            reload_time: AtomicU64::new(0),
            reload_ok: AtomicU64::new(1),
        };
        m.reloaded(SystemTime::now(), true);
        m
    }
}

/// One finished request, as the request path hands it over.
pub struct Finished<'a> {
    pub target: &'a TargetName,
    pub method: MethodClass,
    pub status: u16,
    pub total: Duration,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    /// A request has started; [`Metrics::finished`] ends it.
    pub fn started(&self) {
        self.in_flight.inc();
    }

    pub fn finished(&self, f: &Finished<'_>) {
        self.in_flight.dec();
        let target = TargetLabels {
            target: f.target.clone(),
        };
        self.requests
            .get_or_create(&RequestLabels {
                target: target.target.clone(),
                method: f.method,
                status: f.status,
            })
            .inc();
        self.duration
            .get_or_create(&target)
            .observe(f.total.as_secs_f64());
        if f.bytes_in > 0 {
            self.request_bytes.get_or_create(&target).inc_by(f.bytes_in);
        }
        if f.bytes_out > 0 {
            self.response_bytes
                .get_or_create(&target)
                .inc_by(f.bytes_out);
        }
    }

    /// Time from sending a request upstream to its response's head.
    pub fn upstream(&self, target: &Id, took: Duration) {
        self.upstream_latency
            .get_or_create(&TargetLabels {
                target: TargetName(Some(target.clone())),
            })
            .observe(took.as_secs_f64());
    }

    /// A request keygate answered itself (`code` is a [`Deny`](crate::proxy::deny::Deny) code).
    pub fn denied(&self, code: &'static str) {
        self.denials.get_or_create(&CodeLabels { code }).inc();
    }

    /// A key's own rate limit or its consumer's refused a request made with `key`.
    pub fn rate_limited(&self, key: &Id) {
        self.rate_limited
            .get_or_create(&KeyLabels {
                key_id: key.clone(),
            })
            .inc();
    }

    pub fn redis_error(&self) {
        self.redis_errors.inc();
    }

    pub fn redis_up(&self, up: bool) {
        self.redis_up.set(i64::from(up));
    }

    pub fn connection_opened(&self) {
        self.connections.inc();
    }

    pub fn connection_closed(&self) {
        self.connections.dec();
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

    /// The Prometheus text exposition of everything, with the config's state as of now.
    pub fn encode(&self, published: &Published) -> String {
        let mut r = Registry::with_prefix("keygate");
        r.register(
            "requests",
            "Requests answered, by target, method and status",
            self.requests.clone(),
        );
        r.register(
            "denials",
            "Requests keygate answered itself, by problem code",
            self.denials.clone(),
        );
        r.register(
            "rate_limited",
            "Requests refused by a key's or its consumer's rate limit, by key",
            self.rate_limited.clone(),
        );
        r.register_with_unit(
            "upstream_latency",
            "Time from sending a request upstream to its response head",
            Unit::Seconds,
            self.upstream_latency.clone(),
        );
        r.register_with_unit(
            "request_duration",
            "Time from a request's head to the last byte of its response",
            Unit::Seconds,
            self.duration.clone(),
        );
        r.register_with_unit(
            "request_body",
            "Request body bytes received, by target",
            Unit::Bytes,
            self.request_bytes.clone(),
        );
        r.register_with_unit(
            "response_body",
            "Response body bytes sent, by target",
            Unit::Bytes,
            self.response_bytes.clone(),
        );
        r.register(
            "requests_in_flight",
            "Requests being answered now",
            self.in_flight.clone(),
        );
        r.register(
            "open_connections",
            "Client connections open now",
            self.connections.clone(),
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
        let gauge = |v: i64| {
            let g: Gauge = Gauge::default();
            g.set(v);
            g
        };
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
/// off or its port is not for Prometheus) until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    published: Arc<Published>,
    shutdown: impl Future<Output = ()>,
) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let (metrics, published, builder) = (metrics.clone(), published.clone(), builder.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let resp = match (req.method(), req.uri().path()) {
                    (&Method::GET | &Method::HEAD, "/metrics") => response(&metrics, &published),
                    _ => {
                        let mut r = Response::new(Full::new(Bytes::from_static(b"not found\n")));
                        *r.status_mut() = StatusCode::NOT_FOUND;
                        r
                    }
                };
                std::future::ready(Ok::<_, Infallible>(resp))
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
