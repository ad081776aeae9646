//! The load harness's own client (benches/load/run.sh): HTTP/1.1 keep-alive or h2c (HTTP/2 with
//! prior knowledge, several streams per connection), cycling through a file of API keys sent as
//! `X-API-Key`, in one of two modes:
//!
//! - **constant rate** (`--rate R`, open loop, wrk2-style): request k is scheduled at
//!   `start + k/R`, whether or not an earlier answer is late. A pacer thread releases each
//!   request at its scheduled time; a free stream takes it, and its latency is measured from the
//!   scheduled time, not from when it could be sent, so a stalled server shows up in the latency
//!   instead of quietly lowering the rate (coordinated omission is corrected). Requests still
//!   waiting for a free stream 1 s after the duration (or `--timeout`, if shorter) are not sent
//!   and are reported as `unsent`.
//! - **closed loop** (no `--rate`, like `wrk -c N`): every stream sends its next request as soon
//!   as the previous answer is in; latency is measured from the send. This is how h2c is measured
//!   at saturation (Debian's wrk has no HTTP/2).
//!
//! Prints one JSON line: requests, 2xx, non-2xx and socket errors (connect, I/O, timeout)
//! counted separately, statuses, duration, requests/s, the target and achieved rate, and latency
//! min/mean/p50/p90/p99/p99.9/max in ms from a log-linear histogram of every request (values
//! under 256 ns exact, above that 128 buckets per power of two: < 0.4% error; max is exact).
//!
//! Bounded: in time (`--duration`, plus at most `--timeout` for the answers in flight, and a hard
//! stop after that) and in count (`--requests`). Only connects to 127.0.0.1 or ::1.
//!
//! ```text
//! cargo run --release --example loadgen -- --url http://127.0.0.1:8080/ --keys keys.txt \
//!     --proto h2c --connections 4 --streams 8 --duration 5s
//! cargo run --release --example loadgen -- --url http://127.0.0.1:8080/ --keys keys.txt \
//!     --rate 20000 --connections 32 --duration 5s
//! ```

// A test or bench that cannot go on fails loudly: unwrap, expect and panic are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::header::{HOST, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Upper bounds on the arguments, so a typo cannot start an endless or huge run.
const MAX_DURATION: Duration = Duration::from_secs(3600);
const MAX_CONNECTIONS: usize = 10_000;
const MAX_STREAMS: usize = 1_000;
const MAX_THREADS: usize = 64;
const MAX_BODY: usize = 64 << 20;
const MAX_KEYS: usize = 10_000_000;
const MAX_RATE: f64 = 10_000_000.0;
/// Pause after a failed connect before the stream tries again (bounded by the duration).
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);
/// Constant rate: how long after the duration the requests still waiting for a free stream may
/// be sent (at most; also at most `--timeout`), and how often the pacer looks whether it is over.
const DRAIN: Duration = Duration::from_secs(1);
const PACER_POLL: Duration = Duration::from_millis(10);

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    about = "Constant-rate or closed-loop HTTP/1.1 / h2c load against 127.0.0.1 (keygate's load harness)"
)]
struct Args {
    /// Target: http://127.0.0.1:PORT/PATH or http://[::1]:PORT/PATH (no other host is allowed).
    #[arg(long)]
    url: String,
    /// API keys, one per line, sent in turn as X-API-Key (without it: no key header).
    #[arg(long)]
    keys: Option<PathBuf>,
    /// HTTP/1.1 keep-alive, or h2c: HTTP/2 with prior knowledge.
    #[arg(long, value_enum, default_value_t = Proto::H1)]
    proto: Proto,
    /// Connections, opened before the clock starts and kept alive.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Concurrent streams per connection (h2c only; HTTP/1.1 has one request in flight).
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Constant rate in requests/s over all connections (open loop). Without it: closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// How long to send: 5s, 500ms, 1m, or plain seconds.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// At most this many requests in all.
    #[arg(long, default_value_t = 50_000_000)]
    requests: u64,
    /// Per-request timeout (connect included); a request over it is a socket error.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    /// Runtime threads (1: a single-threaded runtime, like `wrk -t1`).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Send a POST body of this many bytes (0: GET without a body).
    #[arg(long, default_value_t = 0)]
    body_bytes: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Proto {
    /// HTTP/1.1 keep-alive.
    H1,
    /// HTTP/2 over clear text with prior knowledge.
    H2c,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("bad duration {s:?} (e.g. 5s, 500ms, 1m)"))?;
    let secs = v * scale;
    if !secs.is_finite() || secs <= 0.0 || secs > MAX_DURATION.as_secs_f64() {
        return Err(format!(
            "duration {s:?} must be above 0 and at most {}s",
            MAX_DURATION.as_secs()
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The parsed `--url`: where to connect and what to put in the request.
struct Target {
    addr: SocketAddr,
    /// origin-form, for HTTP/1.1
    path: Uri,
    /// absolute-form, for HTTP/2 (`:scheme`, `:authority`)
    absolute: Uri,
    host: HeaderValue,
}

fn parse_target(url: &str) -> Result<Target, String> {
    let uri: Uri = url.parse().map_err(|e| format!("bad --url {url:?}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "--url {url:?}: only http:// (clear text) is supported"
        ));
    }
    let host = uri
        .host()
        .ok_or_else(|| format!("--url {url:?} has no host"))?;
    let ip: IpAddr = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| format!("--url {url:?}: the host must be 127.0.0.1 or [::1]"))?;
    if ip != IpAddr::V4(Ipv4Addr::LOCALHOST) && ip != IpAddr::V6(Ipv6Addr::LOCALHOST) {
        return Err(format!(
            "--url {url:?}: only 127.0.0.1 and ::1 are allowed (this is a benchmark client)"
        ));
    }
    let port = uri.port_u16().unwrap_or(80);
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .ok_or_else(|| format!("--url {url:?} has no authority"))?;
    Ok(Target {
        addr: SocketAddr::new(ip, port),
        path: pq.parse().map_err(|e| format!("bad path {pq:?}: {e}"))?,
        absolute: format!("http://{authority}{pq}")
            .parse()
            .map_err(|e| format!("bad url: {e}"))?,
        host: HeaderValue::from_str(&authority).map_err(|e| format!("bad host: {e}"))?,
    })
}

fn read_keys(path: &PathBuf) -> Result<Vec<HeaderValue>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--keys {}: {e}", path.display()))?;
    let mut keys = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if keys.len() == MAX_KEYS {
            return Err(format!("--keys: more than {MAX_KEYS} keys"));
        }
        keys.push(HeaderValue::from_str(line).map_err(|_| {
            format!(
                "--keys {}: a line is not a valid header value",
                path.display()
            )
        })?);
    }
    if keys.is_empty() {
        return Err(format!("--keys {}: no keys", path.display()));
    }
    Ok(keys)
}

// ---- histogram -------------------------------------------------------------------------------

/// Log-linear latency histogram in nanoseconds: exact under 2·SUB ns, then SUB linear buckets per
/// power of two, so a bucket's midpoint is within 1/(2·SUB) = 0.39% of any value in it.
const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = ((64 - SUB_BITS + 1) as usize) * SUB as usize;

struct Histogram {
    counts: Vec<u64>,
    total: u64,
    sum_ns: u128,
    min_ns: u64,
    max_ns: u64,
}

impl Histogram {
    fn new() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            sum_ns: 0,
            min_ns: u64::MAX,
            max_ns: 0,
        }
    }

    fn index(v: u64) -> usize {
        if v < 2 * SUB {
            return v as usize;
        }
        let magnitude = 63 - v.leading_zeros(); // >= SUB_BITS + 1
        let shift = magnitude - SUB_BITS; // v >> shift is in [SUB, 2·SUB)
        (u64::from(shift) * SUB + (v >> shift)) as usize
    }

    /// The midpoint of bucket `i`.
    fn value(i: usize) -> u64 {
        let i = i as u64;
        if i < 2 * SUB {
            return i;
        }
        let shift = i / SUB - 1;
        let low = (i - shift * SUB) << shift;
        low + (1u64 << shift) / 2
    }

    fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.counts[Self::index(ns)] += 1;
        self.total += 1;
        self.sum_ns += u128::from(ns);
        self.min_ns = self.min_ns.min(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.sum_ns += other.sum_ns;
        self.min_ns = self.min_ns.min(other.min_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    /// The value at percentile `p` (0 < p <= 100): the smallest recorded value with at least
    /// p% of all values at or below it, as its bucket's midpoint (never above the exact max).
    fn percentile_ns(&self, p: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((p / 100.0) * self.total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Self::value(i).clamp(self.min_ns, self.max_ns));
            }
        }
        Some(self.max_ns)
    }
}

fn ms(ns: Option<u64>) -> serde_json::Value {
    match ns {
        Some(ns) => json!((ns as f64 / 1e6 * 1e4).round() / 1e4),
        None => serde_json::Value::Null,
    }
}

// ---- per-stream results ----------------------------------------------------------------------

struct Stats {
    hist: Histogram,
    statuses: BTreeMap<u16, u64>,
    connect_errors: u64,
    io_errors: u64,
    timeouts: u64,
    connects: u64,
}

impl Stats {
    fn new() -> Self {
        Stats {
            hist: Histogram::new(),
            statuses: BTreeMap::new(),
            connect_errors: 0,
            io_errors: 0,
            timeouts: 0,
            connects: 0,
        }
    }

    fn merge(&mut self, o: &Stats) {
        self.hist.merge(&o.hist);
        for (s, n) in &o.statuses {
            *self.statuses.entry(*s).or_default() += n;
        }
        self.connect_errors += o.connect_errors;
        self.io_errors += o.io_errors;
        self.timeouts += o.timeouts;
        self.connects += o.connects;
    }
}

// ---- connections -----------------------------------------------------------------------------

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    async fn ready(&mut self) -> bool {
        match self {
            Sender::H1(s) => s.ready().await.is_ok(),
            Sender::H2(s) => s.ready().await.is_ok(),
        }
    }

    async fn send(&mut self, req: Request<Full<Bytes>>) -> hyper::Result<Response<Incoming>> {
        match self {
            Sender::H1(s) => s.send_request(req).await,
            Sender::H2(s) => s.send_request(req).await,
        }
    }
}

/// Everything the streams share.
struct Shared {
    target: Target,
    proto: Proto,
    keys: Vec<HeaderValue>,
    next_key: AtomicU64,
    method: Method,
    body: Bytes,
    timeout: Duration,
    /// Request slots taken so far (the count bound, and in rate mode the schedule index).
    claimed: AtomicU64,
    /// Requests actually put on a connection.
    issued: AtomicU64,
}

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

impl Shared {
    fn request(&self) -> Request<Full<Bytes>> {
        let mut b = Request::builder().method(self.method.clone());
        b = match self.proto {
            Proto::H1 => b
                .uri(self.target.path.clone())
                .header(HOST, self.target.host.clone()),
            Proto::H2c => b.uri(self.target.absolute.clone()),
        };
        if !self.keys.is_empty() {
            let i = self.next_key.fetch_add(1, Ordering::Relaxed) as usize % self.keys.len();
            b = b.header(X_API_KEY, self.keys[i].clone());
        }
        b.body(Full::new(self.body.clone()))
            .expect("a request from valid parts")
    }

    async fn connect(&self) -> Result<Sender, ()> {
        let stream =
            match tokio::time::timeout(self.timeout, TcpStream::connect(self.target.addr)).await {
                Ok(Ok(s)) => s,
                _ => return Err(()),
            };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(stream);
        let handshake = async {
            match self.proto {
                Proto::H1 => {
                    let (send, conn) = http1::handshake(io).await?;
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    Ok::<_, hyper::Error>(Sender::H1(send))
                }
                Proto::H2c => {
                    let (send, conn) = http2::handshake(TokioExecutor::new(), io).await?;
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    Ok(Sender::H2(send))
                }
            }
        };
        match tokio::time::timeout(self.timeout, handshake).await {
            Ok(Ok(s)) => Ok(s),
            _ => Err(()),
        }
    }
}

/// One h2c connection, shared by its streams: whoever finds it closed opens the next one.
struct H2Slot(tokio::sync::Mutex<Option<http2::SendRequest<Full<Bytes>>>>);

/// One sequence of requests: an HTTP/1.1 connection, or one stream slot of an h2c connection.
struct Lane {
    shared: Arc<Shared>,
    slot: Option<Arc<H2Slot>>,
    sender: Option<Sender>,
    stats: Stats,
}

impl Lane {
    /// A connection ready for a request, opening one if needed; `false` after a failed connect
    /// (counted, and paused so a refused port does not spin).
    async fn ensure(&mut self) -> bool {
        if let Some(s) = &mut self.sender {
            if s.ready().await {
                return true;
            }
            self.sender = None;
        }
        match &self.slot {
            None => match self.shared.connect().await {
                Ok(s) => {
                    self.stats.connects += 1;
                    self.sender = Some(s);
                }
                Err(()) => self.stats.connect_errors += 1,
            },
            Some(slot) => {
                let mut conn = slot.0.lock().await;
                if conn.as_ref().is_none_or(|c| c.is_closed()) {
                    *conn = None;
                    match self.shared.connect().await {
                        Ok(Sender::H2(s)) => {
                            self.stats.connects += 1;
                            *conn = Some(s);
                        }
                        _ => self.stats.connect_errors += 1,
                    }
                }
                self.sender = conn.clone().map(Sender::H2);
            }
        }
        let ready = match &mut self.sender {
            Some(s) => s.ready().await,
            None => false,
        };
        if !ready {
            self.sender = None;
            tokio::time::sleep(RECONNECT_PAUSE).await;
        }
        ready
    }

    /// Sends one request and reads the whole answer; latency counts from `from`.
    async fn request(&mut self, from: Instant) {
        let req = self.shared.request();
        let Some(sender) = self.sender.as_mut() else {
            return;
        };
        self.shared.issued.fetch_add(1, Ordering::Relaxed);
        let exchange = async {
            let resp = sender.send(req).await?;
            let status = resp.status();
            let mut body = resp.into_body();
            while let Some(frame) = body.frame().await {
                frame?;
            }
            Ok::<StatusCode, hyper::Error>(status)
        };
        match tokio::time::timeout(self.shared.timeout, exchange).await {
            Ok(Ok(status)) => {
                self.stats.hist.record(from.elapsed());
                *self.stats.statuses.entry(status.as_u16()).or_default() += 1;
            }
            Ok(Err(_)) => {
                self.stats.io_errors += 1;
                self.sender = None;
            }
            Err(_) => {
                self.stats.timeouts += 1;
                self.sender = None;
            }
        }
    }

    /// Closed loop: next request as soon as the previous answer is in, until `end` or the count.
    async fn closed_loop(mut self, end: Instant, max: u64) -> Stats {
        while Instant::now() < end {
            if self.shared.claimed.fetch_add(1, Ordering::Relaxed) >= max {
                break;
            }
            if !self.ensure().await {
                continue;
            }
            self.request(Instant::now()).await;
        }
        self.stats
    }

    /// Open loop: take the next released slot k and send it; latency counts from its scheduled
    /// time `start + k/rate`. Ends after the last slot, or when the pacer closes the semaphore
    /// (the drain time after the duration is over).
    async fn open_loop(
        mut self,
        pacer: Arc<Semaphore>,
        start: Instant,
        rate: f64,
        total: u64,
    ) -> Stats {
        while let Ok(permit) = pacer.acquire().await {
            permit.forget();
            let k = self.shared.claimed.fetch_add(1, Ordering::Relaxed);
            if k >= total {
                break;
            }
            let scheduled = start + Duration::from_secs_f64(k as f64 / rate);
            if !self.ensure().await {
                continue;
            }
            self.request(scheduled).await;
        }
        self.stats
    }
}

/// Asks the kernel for precise sleeps on this thread (the default timer slack is 50 µs).
#[cfg(target_os = "linux")]
fn tighten_timer_slack() {
    const PR_SET_TIMERSLACK: std::ffi::c_int = 29;
    unsafe extern "C" {
        fn prctl(option: std::ffi::c_int, ...) -> std::ffi::c_int;
    }
    // SAFETY: prctl(PR_SET_TIMERSLACK, ns) only changes this thread's timer slack.
    unsafe {
        prctl(PR_SET_TIMERSLACK, 1 as std::ffi::c_ulong);
    }
}

#[cfg(not(target_os = "linux"))]
fn tighten_timer_slack() {}

/// Releases request slot k at `start + k/rate` (one permit each) until all `total` slots are
/// out (the last one is scheduled before the end of the duration), then one extra permit per
/// stream, which the streams read as "done". Slots still waiting for a free stream may be sent
/// until `drain_until`; then the semaphore is closed and the rest count as unsent. Also returns
/// when the semaphore is closed by the caller.
fn pace(
    sem: &Semaphore,
    start: Instant,
    drain_until: Instant,
    rate: f64,
    total: u64,
    lanes: usize,
) {
    tighten_timer_slack();
    let mut released = 0u64;
    while released < total && !sem.is_closed() {
        let now = Instant::now();
        if now >= drain_until {
            break;
        }
        let due = (((now - start).as_secs_f64() * rate).floor() as u64)
            .saturating_add(1)
            .min(total);
        if due > released {
            sem.add_permits((due - released) as usize);
            released = due;
        }
        if released < total {
            let next = start + Duration::from_secs_f64(released as f64 / rate);
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
    }
    sem.add_permits(lanes);
    while !sem.is_closed() {
        let Some(left) = drain_until.checked_duration_since(Instant::now()) else {
            break;
        };
        std::thread::sleep(left.min(PACER_POLL));
    }
    sem.close();
}

// ---- main ------------------------------------------------------------------------------------

fn validate(a: &Args) -> Result<(), String> {
    if a.connections == 0 || a.connections > MAX_CONNECTIONS {
        return Err(format!("--connections must be 1..={MAX_CONNECTIONS}"));
    }
    if a.streams == 0 || a.streams > MAX_STREAMS {
        return Err(format!("--streams must be 1..={MAX_STREAMS}"));
    }
    if a.proto == Proto::H1 && a.streams != 1 {
        return Err("--streams > 1 needs --proto h2c (HTTP/1.1 has one request in flight)".into());
    }
    if a.threads == 0 || a.threads > MAX_THREADS {
        return Err(format!("--threads must be 1..={MAX_THREADS}"));
    }
    if a.requests == 0 {
        return Err("--requests must be at least 1".into());
    }
    if a.body_bytes > MAX_BODY {
        return Err(format!("--body-bytes must be at most {MAX_BODY}"));
    }
    if let Some(r) = a.rate
        && !(r.is_finite() && r > 0.0 && r <= MAX_RATE)
    {
        return Err(format!("--rate must be above 0 and at most {MAX_RATE}"));
    }
    Ok(())
}

async fn run(a: Args, target: Target, keys: Vec<HeaderValue>) -> serde_json::Value {
    let lanes_n = a.connections * a.streams;
    let shared = Arc::new(Shared {
        target,
        proto: a.proto,
        keys,
        next_key: AtomicU64::new(0),
        method: if a.body_bytes > 0 {
            Method::POST
        } else {
            Method::GET
        },
        body: Bytes::from(vec![b'x'; a.body_bytes]),
        timeout: a.timeout,
        claimed: AtomicU64::new(0),
        issued: AtomicU64::new(0),
    });

    // Open every connection before the clock starts (a failure is counted and retried later).
    let mut lanes = Vec::with_capacity(lanes_n);
    let mut setup = Stats::new();
    for _ in 0..a.connections {
        let sender = match shared.connect().await {
            Ok(s) => {
                setup.connects += 1;
                Some(s)
            }
            Err(()) => {
                setup.connect_errors += 1;
                None
            }
        };
        match sender {
            Some(Sender::H2(s)) => {
                let slot = Arc::new(H2Slot(tokio::sync::Mutex::new(Some(s.clone()))));
                for _ in 0..a.streams {
                    lanes.push(Lane {
                        shared: shared.clone(),
                        slot: Some(slot.clone()),
                        sender: Some(Sender::H2(s.clone())),
                        stats: Stats::new(),
                    });
                }
            }
            other => {
                let slot = (a.proto == Proto::H2c)
                    .then(|| Arc::new(H2Slot(tokio::sync::Mutex::new(None))));
                let mut first = other;
                for _ in 0..a.streams {
                    lanes.push(Lane {
                        shared: shared.clone(),
                        slot: slot.clone(),
                        sender: first.take(),
                        stats: Stats::new(),
                    });
                }
            }
        }
    }

    let start = Instant::now();
    let end = start + a.duration;
    let mut total_planned = a.requests;
    let mut tasks = tokio::task::JoinSet::new();
    let mut pacer = None;
    match a.rate {
        None => {
            for lane in lanes {
                tasks.spawn(lane.closed_loop(end, a.requests));
            }
        }
        Some(rate) => {
            let due = (a.duration.as_secs_f64() * rate).ceil() as u64;
            total_planned = due.min(a.requests);
            let sem = Arc::new(Semaphore::new(0));
            for lane in lanes {
                tasks.spawn(lane.open_loop(sem.clone(), start, rate, total_planned));
            }
            let sem2 = sem.clone();
            let drain_until = end + DRAIN.min(a.timeout);
            let thread = std::thread::Builder::new()
                .name("pacer".into())
                .spawn(move || pace(&sem2, start, drain_until, rate, total_planned, lanes_n))
                .expect("spawn the pacer thread");
            pacer = Some((sem, thread));
        }
    }
    let mut stats = setup;
    while let Some(done) = tasks.join_next().await {
        if let Ok(s) = done {
            stats.merge(&s);
        }
    }
    let elapsed = start.elapsed();
    if let Some((sem, thread)) = pacer {
        sem.close();
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }

    let completed = stats.hist.total;
    let ok: u64 = stats
        .statuses
        .iter()
        .filter(|(s, _)| (200..300).contains(*s))
        .map(|(_, n)| n)
        .sum();
    let socket_errors = stats.connect_errors + stats.io_errors + stats.timeouts;
    let secs = elapsed.as_secs_f64();
    let rps = completed as f64 / secs;
    let issued = shared.issued.load(Ordering::Relaxed);
    let (mode, unsent, achieved) = match a.rate {
        Some(rate) => (
            "rate",
            json!(total_planned.saturating_sub(issued)),
            json!((rps / rate * 1e4).round() / 1e4),
        ),
        None => ("closed", json!(null), json!(null)),
    };
    let h = &stats.hist;
    json!({
        "tool": "loadgen",
        "url": a.url,
        "proto": match a.proto { Proto::H1 => "h1", Proto::H2c => "h2c" },
        "mode": mode,
        "connections": a.connections,
        "streams": a.streams,
        "threads": a.threads,
        "body_bytes": a.body_bytes,
        "keys": shared.keys.len(),
        "target_rps": a.rate,
        "duration_s": (secs * 1e4).round() / 1e4,
        "requests": completed,
        "ok_2xx": ok,
        "non_2xx": completed - ok,
        "socket_errors": socket_errors,
        "errors": {"connect": stats.connect_errors, "io": stats.io_errors, "timeout": stats.timeouts},
        "statuses": stats.statuses.iter().map(|(s, n)| (s.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "connects": stats.connects,
        "unsent": unsent,
        "rps": (rps * 100.0).round() / 100.0,
        "achieved_ratio": achieved,
        "latency_ms": {
            "min": ms((h.total > 0).then_some(h.min_ns)),
            "mean": ms((h.total > 0).then(|| (h.sum_ns / u128::from(h.total)) as u64)),
            "p50": ms(h.percentile_ns(50.0)),
            "p90": ms(h.percentile_ns(90.0)),
            "p99": ms(h.percentile_ns(99.0)),
            "p999": ms(h.percentile_ns(99.9)),
            "max": ms((h.total > 0).then_some(h.max_ns)),
        },
    })
}

fn main() -> ExitCode {
    let a = Args::parse();
    let prepared = validate(&a).and_then(|()| {
        let target = parse_target(&a.url)?;
        let keys = match &a.keys {
            Some(p) => read_keys(p)?,
            None => Vec::new(),
        };
        Ok((target, keys))
    });
    let (target, keys) = match prepared {
        Ok(x) => x,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = if a.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(a.threads)
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    // Connecting takes at most `timeout` per connection; answers in flight at the end at most
    // `timeout`; past that something is wrong: stop hard.
    let limit = a.duration + a.timeout * 2 + Duration::from_secs(10);
    let result = rt.block_on(async { tokio::time::timeout(limit, run(a, target, keys)).await });
    rt.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(_) => {
            eprintln!("loadgen: did not finish within {limit:?}; stopped");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_contiguous_and_within_half_a_percent() {
        let close = |v: u64| {
            let i = Histogram::index(v);
            assert!(i < BUCKETS, "{v} -> bucket {i}");
            let mid = Histogram::value(i) as f64;
            assert!(
                (mid - v as f64).abs() <= v as f64 * 0.004 + 0.5,
                "{v} -> {mid}"
            );
            i
        };
        let mut prev = 0;
        for v in 0..2_000_000u64 {
            let i = close(v);
            assert!(i == prev || i == prev + 1, "gap at {v}");
            prev = i;
        }
        for b in 21..64 {
            close((1u64 << b) - 1);
            close(1u64 << b);
            close((1u64 << b) + (1u64 << (b - 1)));
        }
        close(u64::MAX);
    }

    #[test]
    fn percentiles() {
        let mut h = Histogram::new();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let p = |x| h.percentile_ns(x).unwrap() as f64 / 1000.0;
        assert!((p(50.0) - 500.0).abs() < 500.0 * 0.005);
        assert!((p(99.0) - 990.0).abs() < 990.0 * 0.005);
        assert!((p(99.9) - 999.0).abs() < 999.0 * 0.005);
        assert_eq!(h.percentile_ns(100.0), Some(1_000_000));
    }

    #[test]
    fn only_loopback_targets() {
        assert!(parse_target("http://127.0.0.1:8080/").is_ok());
        assert!(parse_target("http://[::1]:8080/x?y=1").is_ok());
        assert!(parse_target("http://10.0.0.1:8080/").is_err());
        assert!(parse_target("http://example.com/").is_err());
        assert!(parse_target("https://127.0.0.1/").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("2h").is_err());
    }
}
