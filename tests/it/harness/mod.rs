//! Shared helpers for the integration tests: real upstreams, a real keygate, and clients.
//!
//! - [`gateway`]: the gateway builder (targets, consumers and keys with their restrictions,
//!   `[server]` lines) and the request builder (`gw.get("/x").key(K).from(ip).send()`);
//! - [`process`]: keygate as the real binary, for signals, exit codes and its output;
//! - [`launch`]: the one place that calls keygate's launch API;
//! - [`admin`]: a config directory with a keys file, the admin API client, the key commands;
//! - [`browser`]: headless Chromium over WebDriver, for the key console;
//! - [`live`]: config files rewritten under a running keygate, TLS certificates and clients;
//! - [`policy`]: clients from a chosen source address, rate-limit header readers;
//! - [`session`]: the key console's session cookie and CSRF token, as a browser sends them;
//! - here: upstreams, responses and their checks, HTTP/1.1, HTTP/2 and raw TCP clients.
//!
//! Everything binds `127.0.0.1:0` first and only then starts serving, so no test waits for a
//! server to come up and no two tests share a port. Every network wait is bounded by
//! [`within`], every loop by a count or by the data it reads.
//!
//! Every response read through these helpers is checked for the test secrets in its headers and
//! body ([`assert_no_secret`]): the echo upstream reflects everything it received, so this also
//! catches a secret that reached the upstream.

#![allow(dead_code)]

pub mod admin;
pub mod browser;
pub mod gateway;
pub mod launch;
pub mod live;
pub mod policy;
pub mod process;
pub mod session;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

pub use gateway::{GatewayBuilder, Gw, Restricted, consumer, gateway, gateway_to, key, target};
pub use process::Process;

/// The longest any single network step of a test may take before the test fails.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections any test server accepts before it stops: a bound, far above what a test uses.
const MAX_CONNECTIONS: usize = 1_000;

/// Bodies larger than this are not scanned for secrets (they are generated test patterns).
const SECRET_SCAN_LIMIT: usize = 1 << 20;

/// The `addr=` of a listening line keygate logs (`keygate listening`, `admin API listening`,
/// `metrics listening`): a loopback address with a real port.
pub fn logged_addr(line: &str) -> SocketAddr {
    let at = line
        .find("addr=")
        .unwrap_or_else(|| panic!("no addr= in {line:?}"))
        + "addr=".len();
    let addr: SocketAddr = line[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{line}");
    addr
}

/// Loads `path` as `keygate run` does, with the access log off unless the config has a `[log]`
/// table: its default (stdout) would bypass the test harness's output capture.
pub fn load_quiet(path: &std::path::Path) -> anyhow::Result<keygate::Gateway> {
    let mut gateway = launch::load(path)?;
    let text = std::fs::read_to_string(path)?;
    if !text.contains("[log]") {
        gateway.snapshot_mut().log.access = keygate::snapshot::AccessTo::Off;
    }
    Ok(gateway)
}

/// Awaits `f`, failing the test if it takes longer than [`IO_TIMEOUT`].
pub async fn within<F: Future>(what: &str, f: F) -> F::Output {
    within_for(IO_TIMEOUT, what, f).await
}

/// Awaits `f`, failing the test if it takes longer than `limit`.
pub async fn within_for<F: Future>(limit: Duration, what: &str, f: F) -> F::Output {
    match tokio::time::timeout(limit, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Keys and config
// ---------------------------------------------------------------------------------------------

/// Key `primary`, consumer `acme`, stored by hash.
pub const SECRET: &str = "kg_primary_Q2xlYXJseU5vdEFSZWFsU2VjcmV0X3ByaW1hcnk";
/// Key `loner`, no consumer, stored as a plaintext `secret`.
pub const SECRET_LONER: &str = "kg_loner_bG9uZXJTZWNyZXRGb3JUZXN0c09ubHlfMDAwMQ";
/// Key `switched-off`, `status = "inactive"`.
pub const SECRET_INACTIVE: &str = "kg_inactive_aW5hY3RpdmVTZWNyZXRGb3JUZXN0c09ubHk";
/// Key `past`, expired in 2001.
pub const SECRET_EXPIRED: &str = "kg_expired_ZXhwaXJlZFNlY3JldEZvclRlc3RzT25seV8x";
/// Key `future`, expires in 2999.
pub const SECRET_FUTURE: &str = "kg_future_ZnV0dXJlU2VjcmV0Rm9yVGVzdHNPbmx5XzAwMDE";

/// Every secret of the test key table: none may ever come back in a response.
pub const ALL_SECRETS: [&str; 5] = [
    SECRET,
    SECRET_LONER,
    SECRET_INACTIVE,
    SECRET_EXPIRED,
    SECRET_FUTURE,
];

/// `sha256:<hex>` of a secret, computed here independently of keygate.
pub fn hash_of(secret: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(secret.as_bytes())))
}

/// The checksum a generated secret ends with, computed here from the README's description
/// rather than by keygate: the CRC32 of `prefix_and_random` in 6 base62 digits (`0-9A-Za-z`),
/// most significant first.
pub fn readme_checksum(prefix_and_random: &str) -> String {
    const DIGITS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut n = crc32fast::hash(prefix_and_random.as_bytes());
    let mut out = [b'0'; 6];
    for d in out.iter_mut().rev() {
        *d = DIGITS[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8(out.to_vec()).unwrap()
}

/// A secret as keygate generates it: `prefix`, 32 random base62 characters and their
/// [`readme_checksum`].
#[track_caller]
pub fn assert_generated_secret(secret: &str, prefix: &str) {
    let rest = secret
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("{secret:?} lacks {prefix}"));
    assert_eq!(rest.len(), 38, "{secret:?}");
    assert!(
        rest.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{secret:?}"
    );
    let (signed, sum) = secret.split_at(secret.len() - 6);
    assert_eq!(sum, readme_checksum(signed), "{secret:?}: checksum");
}

/// The consumers and keys every test config shares (append after the targets).
pub fn keys_toml() -> String {
    format!(
        r#"
[[consumers]]
id = "acme"

[[keys]]
id = "primary"
consumer = "acme"
hash = "{primary}"

[[keys]]
id = "loner"
secret = "{SECRET_LONER}"

[[keys]]
id = "switched-off"
consumer = "acme"
hash = "{inactive}"
status = "inactive"

[[keys]]
id = "past"
hash = "{expired}"
expires_at = 2001-01-01T00:00:00Z

[[keys]]
id = "future"
consumer = "acme"
hash = "{future}"
expires_at = 2999-12-31T23:59:59Z
"#,
        primary = hash_of(SECRET),
        inactive = hash_of(SECRET_INACTIVE),
        expired = hash_of(SECRET_EXPIRED),
        future = hash_of(SECRET_FUTURE),
    )
}

/// One any-host target `main` on `/` to `upstream`, with the shared keys.
pub fn one_target(upstream: SocketAddr) -> String {
    format!(
        "[[targets]]\nname = \"main\"\nupstream = \"http://{upstream}\"\n\n{}",
        keys_toml()
    )
}

/// Starts a real keygate (the library's own server) on `127.0.0.1:0` with this config.
pub async fn start_keygate(config: &str) -> SocketAddr {
    watch_panics();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    launch::spawn_proxy(config, listener);
    addr
}

// ---------------------------------------------------------------------------------------------
// Panics inside keygate
// ---------------------------------------------------------------------------------------------

static FOREIGN_PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Records every panic that does not come from test code. keygate runs inside the test's
/// runtime, where a panicking connection task would be swallowed by tokio; this makes it visible.
pub fn watch_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let file = info.location().map(|l| l.file()).unwrap_or("");
            let in_tests = file.starts_with("tests/") || file.starts_with("tests\\");
            if !in_tests && let Ok(mut p) = FOREIGN_PANICS.lock() {
                p.push(info.to_string());
            }
            previous(info);
        }));
    });
}

/// Fails if anything outside the test code (keygate or a library under it) has panicked, in
/// any test of this test binary so far: a panic is a process-wide signal.
#[track_caller]
pub fn assert_no_keygate_panic() {
    let panics = FOREIGN_PANICS.lock().map(|p| p.clone()).unwrap_or_default();
    assert!(panics.is_empty(), "keygate panicked: {panics:#?}");
}

// ---------------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------------

pub type TestBody = BoxBody<Bytes, Infallible>;

pub fn empty() -> TestBody {
    Full::new(Bytes::new()).boxed()
}

pub fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).boxed()
}

/// A body fed chunk by chunk through a channel: its length is unknown, so HTTP/1.1 sends it
/// chunked and the receiver cannot wait for a `Content-Length` worth of bytes.
pub struct ChanBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChanBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// A streaming body and the sender that feeds it; dropping the sender ends the body.
pub fn channel_body(capacity: usize) -> (mpsc::Sender<Bytes>, TestBody) {
    let (tx, rx) = mpsc::channel(capacity);
    (tx, ChanBody(rx).boxed())
}

/// Reads a body to its end, counting bytes without keeping them.
pub async fn count_body(mut body: Incoming) -> u64 {
    let mut n = 0u64;
    while let Some(frame) = within("a body frame", body.frame()).await {
        if let Ok(data) = frame.expect("body error").into_data() {
            n += data.len() as u64;
        }
    }
    n
}

/// Deterministic test bytes: position `i` holds `i % 251`.
pub fn pattern(start: usize, len: usize) -> Bytes {
    (start..start + len).map(|i| (i % 251) as u8).collect()
}

// ---------------------------------------------------------------------------------------------
// Upstreams
// ---------------------------------------------------------------------------------------------

/// What the echo upstream saw, as it reports it in its JSON response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Echo {
    /// The label the upstream was started with, to tell routing targets apart.
    pub upstream: String,
    pub method: String,
    /// Path and query exactly as they arrived in the request line.
    pub uri: String,
    pub version: String,
    /// Every header line in arrival order, names lowercased, values lossily decoded.
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
    /// The address keygate connected from: the same for requests on one pooled connection.
    pub peer: String,
}

impl Echo {
    /// Every value of a header, in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The only value of a header; fails if it came more than once.
    #[track_caller]
    pub fn one(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(
            all.len() <= 1,
            "{name} arrived {} times: {all:?}",
            all.len()
        );
        all.first().copied()
    }

    pub fn has(&self, name: &str) -> bool {
        !self.all(name).is_empty()
    }
}

/// A running test upstream.
pub struct Upstream {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl Upstream {
    /// How many requests reached it.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// An HTTP/1.1 upstream that answers every request with an [`Echo`] of it, labelled `label`.
///
/// Request headers steer the reply (they travel through keygate like any other header):
/// - `x-reply-status: N` answers with status N;
/// - `x-reply-header: Name: value` (repeatable) adds a response header;
/// - `x-reply-bytes: N` answers with a streamed body of N pattern bytes instead of JSON;
/// - `Connection: upgrade` + `Upgrade: P` answers 101 and then echoes every byte it receives.
pub async fn start_upstream(label: &str) -> Upstream {
    let label: Arc<str> = label.into();
    start_upstream_with(move |req, peer| echo(req, peer, label.clone())).await
}

/// An HTTP/1.1 upstream (with upgrades) that answers with `handler`.
pub async fn start_upstream_with<F, Fut>(handler: F) -> Upstream
where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(handler);
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        for _ in 0..MAX_CONNECTIONS {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req, peer).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Upstream { addr, hits }
}

async fn echo(mut req: Request<Incoming>, peer: SocketAddr, label: Arc<str>) -> Response<TestBody> {
    let wants_upgrade = req.headers().contains_key(UPGRADE)
        && req.headers().get_all(CONNECTION).iter().any(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .to_ascii_lowercase()
                .contains("upgrade")
        });
    if wants_upgrade {
        return echo_upgrade(&mut req);
    }

    let mut headers = Vec::new();
    for (k, v) in req.headers() {
        headers.push((
            k.as_str().to_owned(),
            String::from_utf8_lossy(v.as_bytes()).into_owned(),
        ));
    }
    let status = req
        .headers()
        .get("x-reply-status")
        .and_then(|v| v.to_str().ok()?.parse::<u16>().ok())
        .unwrap_or(200);
    let extra: Vec<(String, String)> = req
        .headers()
        .get_all("x-reply-header")
        .iter()
        .filter_map(|v| {
            let (k, v) = v.to_str().ok()?.split_once(':')?;
            Some((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect();
    let reply_bytes = req
        .headers()
        .get("x-reply-bytes")
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let method = req.method().to_string();
    let uri = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().to_string(), |pq| pq.as_str().to_owned());
    let version = format!("{:?}", req.version());

    let mut body = req.into_body();
    let mut body_len = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(d) = f.into_data() {
                    body_len += d.len() as u64;
                }
            }
            Err(_) => break,
        }
    }

    let mut builder = Response::builder()
        .status(status)
        .header("x-upstream", &*label);
    for (k, v) in &extra {
        builder = builder.header(k.as_str(), v.as_str());
    }
    if let Some(total) = reply_bytes {
        let (tx, body) = channel_body(4);
        tokio::spawn(async move {
            let mut sent = 0;
            while sent < total {
                let n = (total - sent).min(64 * 1024);
                if tx.send(pattern(sent, n)).await.is_err() {
                    break;
                }
                sent += n;
            }
        });
        return builder.body(body).unwrap();
    }
    let echo = Echo {
        upstream: label.to_string(),
        method,
        uri,
        version,
        headers,
        body_len,
        peer: peer.to_string(),
    };
    builder
        .header(CONTENT_TYPE, "application/json")
        .body(full(serde_json::to_vec(&echo).unwrap()))
        .unwrap()
}

/// 101, then echo bytes. The 101 reports what the upstream saw of the credential and identity.
fn echo_upgrade(req: &mut Request<Incoming>) -> Response<TestBody> {
    let protocol = req.headers()[UPGRADE].clone();
    let seen = |name: &str| {
        req.headers().get(name).map_or_else(
            || "absent".to_owned(),
            |v| String::from_utf8_lossy(v.as_bytes()).into_owned(),
        )
    };
    let key_id = seen("x-keygate-key-id");
    let api_key = seen("x-api-key");
    // `/ws-half-close`: the upstream says "bye" and ends its sending side at once, but keeps
    // reading what the client sends until the client ends its own.
    let half_close = req.uri().path() == "/ws-half-close";
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
            if half_close {
                let _ = w.write_all(b"bye").await;
                let _ = w.shutdown().await;
                let _ = tokio::io::copy(&mut r, &mut tokio::io::sink()).await;
            } else {
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(CONNECTION, "upgrade")
        .header(UPGRADE, protocol)
        .header("x-echo-key-id", key_id)
        .header("x-echo-api-key", api_key)
        .body(empty())
        .unwrap()
}

/// An upstream that accepts connections and reads requests but never answers.
pub async fn start_silent_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            if let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        }
    });
    addr
}

/// An upstream that accepts, reads the start of the request, then resets the connection (RST).
pub async fn start_resetting_upstream() -> SocketAddr {
    start_dropping_upstream(true).await
}

/// An upstream that accepts, reads the start of the request, then closes without answering.
pub async fn start_closing_upstream() -> SocketAddr {
    start_dropping_upstream(false).await
}

async fn start_dropping_upstream(reset: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for _ in 0..MAX_CONNECTIONS {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = tokio::time::timeout(IO_TIMEOUT, stream.read(&mut buf)).await;
                if reset {
                    let _ = stream.set_zero_linger();
                }
                drop(stream);
            });
        }
    });
    addr
}

/// A port on 127.0.0.1 that nothing listens on: bound, then released.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

// ---------------------------------------------------------------------------------------------
// Responses and assertions
// ---------------------------------------------------------------------------------------------

/// A whole response as a client received it.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    /// An HTTP/1.1 response read off a raw socket, checked for test secrets like every other.
    pub fn raw_h1(status: StatusCode, headers: HeaderMap, body: Vec<u8>) -> Resp {
        let resp = Resp {
            status,
            version: Version::HTTP_11,
            headers,
            body: body.into(),
        };
        assert_no_secret(&resp);
        resp
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("header is not text"))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        match serde_json::from_slice(&self.body) {
            Ok(v) => v,
            Err(e) => panic!("body is not JSON ({e}): {}", self.text()),
        }
    }

    /// The upstream's echo; fails unless the request reached the echo upstream and got 200.
    #[track_caller]
    pub fn echo(&self) -> Echo {
        assert_eq!(
            self.status,
            StatusCode::OK,
            "expected the upstream's 200, got: {}",
            self.text()
        );
        match serde_json::from_slice(&self.body) {
            Ok(v) => v,
            Err(e) => panic!("body is not an echo ({e}): {}", self.text()),
        }
    }
}

async fn into_resp(resp: Response<Incoming>) -> Resp {
    let (parts, body) = resp.into_parts();
    let body = within("response body", body.collect())
        .await
        .expect("response body failed")
        .to_bytes();
    let resp = Resp {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    };
    assert_no_secret(&resp);
    resp
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Fails if any test secret appears in a header (name or value) or the body of `resp`.
#[track_caller]
pub fn assert_no_secret(resp: &Resp) {
    assert_none_of(resp, ALL_SECRETS);
}

/// Fails if any of `secrets` appears in a header (name or value) or the body of `resp`.
#[track_caller]
pub fn assert_none_of<'s>(resp: &Resp, secrets: impl IntoIterator<Item = &'s str>) {
    for secret in secrets {
        for (name, value) in &resp.headers {
            assert!(
                !contains(value.as_bytes(), secret.as_bytes())
                    && !contains(name.as_str().as_bytes(), secret.as_bytes()),
                "a secret came back in response header {name}: {value:?}"
            );
        }
        if resp.body.len() <= SECRET_SCAN_LIMIT {
            assert!(
                !contains(&resp.body, secret.as_bytes()),
                "a secret came back in the response body: {}",
                resp.text()
            );
        }
    }
}

/// Checks a response keygate made itself: status, `application/problem+json`, and a body with
/// `status`, `title`, `detail`, `code` and a `request_id` equal to the `X-Request-Id` header.
#[track_caller]
pub fn assert_problem(resp: &Resp, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(
        resp.status.as_u16(),
        status,
        "expected {status} {code}, got {} with body: {}",
        resp.status,
        resp.text()
    );
    let content_type = resp.header("content-type").unwrap_or("");
    assert_eq!(
        content_type.split(';').next().unwrap_or("").trim(),
        "application/problem+json",
        "content-type of a keygate error"
    );
    let json = resp.json();
    assert_eq!(
        json["status"].as_u64(),
        Some(u64::from(status)),
        "status in {json}"
    );
    assert_eq!(json["code"].as_str(), Some(code), "code in {json}");
    for field in ["title", "detail"] {
        let v = json[field]
            .as_str()
            .unwrap_or_else(|| panic!("no {field} in {json}"));
        assert!(!v.is_empty(), "empty {field} in {json}");
    }
    let header_id = resp
        .header("x-request-id")
        .unwrap_or_else(|| panic!("no X-Request-Id on a keygate error"));
    assert!(!header_id.is_empty());
    assert_eq!(
        json["request_id"].as_str(),
        Some(header_id),
        "request_id in {json}"
    );
    json
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// Default `Host` of test requests: no target lists it, so it takes any-host routes.
pub const HOST: &str = "gateway.test";

/// An HTTP/1.1 request with origin-form target `path`. `Host` defaults to [`HOST`]; headers
/// are appended, so a name given twice is sent twice.
pub fn request(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: TestBody,
) -> Request<TestBody> {
    let mut all = Vec::with_capacity(headers.len() + 1);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        all.push(("host", HOST));
    }
    all.extend_from_slice(headers);
    build_request(method, path, Version::HTTP_11, &all, body)
}

/// A request for `uri` in `version`, with `headers` appended in order.
fn build_request(
    method: &str,
    uri: &str,
    version: Version,
    headers: &[(&str, &str)],
    body: TestBody,
) -> Request<TestBody> {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .version(version)
        .body(body)
        .unwrap();
    for (k, v) in headers {
        req.headers_mut().append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    req
}

/// Runs a client connection's I/O in the background until it ends.
fn drive(conn: impl Future + Send + 'static) {
    tokio::spawn(async move {
        let _ = conn.await;
    });
}

/// A connected byte stream a client can speak HTTP over (TCP, TLS).
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Io for T {}

/// The methods of [`H1`] and [`H2`] that are the same on either sender.
macro_rules! client_methods {
    () => {
        /// A fresh connection to `addr`.
        pub async fn connect(addr: SocketAddr) -> Self {
            let stream = within("connect", TcpStream::connect(addr)).await.unwrap();
            Self::over(stream).await
        }

        /// Sends a request and reads the whole response.
        pub async fn send(&mut self, req: Request<TestBody>) -> Resp {
            into_resp(self.send_streaming(req).await).await
        }

        /// Sends a request and returns as soon as the response head is in; the body still
        /// streams.
        pub async fn send_streaming(&mut self, req: Request<TestBody>) -> Response<Incoming> {
            within("connection ready", self.sender.ready())
                .await
                .expect("connection closed");
            within("response head", self.sender.send_request(req))
                .await
                .expect("request failed")
        }

        pub fn is_closed(&self) -> bool {
            self.sender.is_closed()
        }
    };
}

/// One HTTP/1.1 client connection (keep-alive: send as many requests as you like on it).
pub struct H1 {
    sender: hyper::client::conn::http1::SendRequest<TestBody>,
}

impl H1 {
    /// HTTP/1.1 over an established connection (TCP from a chosen source, TLS, ...).
    pub async fn over(io: impl Io) -> H1 {
        let handshake = hyper::client::conn::http1::handshake(TokioIo::new(io));
        let (sender, conn) = within("h1 handshake", handshake).await.unwrap();
        drive(conn);
        H1 { sender }
    }

    client_methods!();
}

/// A GET on a fresh HTTP/1.1 connection.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    H1::connect(addr)
        .await
        .send(request("GET", path, headers, empty()))
        .await
}

/// A GET with the primary key in `X-API-Key`.
pub async fn get_ok(addr: SocketAddr, path: &str) -> Resp {
    get(addr, path, &[("x-api-key", SECRET)]).await
}

/// One HTTP/2 client connection with prior knowledge (h2c).
#[derive(Clone)]
pub struct H2 {
    sender: hyper::client::conn::http2::SendRequest<TestBody>,
}

impl H2 {
    /// HTTP/2 over an established connection (e.g. TLS).
    pub async fn over(io: impl Io) -> H2 {
        let io = TokioIo::new(io);
        let handshake = hyper::client::conn::http2::handshake(TokioExecutor::new(), io);
        let (sender, conn) = within("h2 handshake", handshake).await.unwrap();
        drive(conn);
        H2 { sender }
    }

    client_methods!();
}

/// An HTTP/2 request for `http://{authority}{path}` (HTTP/2 carries the host as `:authority`).
pub fn h2_request(
    method: &str,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: TestBody,
) -> Request<TestBody> {
    h2_request_to(method, &format!("http://{authority}{path}"), headers, body)
}

/// An HTTP/2 request for the absolute `uri`, headers appended in order.
pub fn h2_request_to(
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: TestBody,
) -> Request<TestBody> {
    build_request(method, uri, Version::HTTP_2, headers, body)
}

// ---------------------------------------------------------------------------------------------
// Raw TCP
// ---------------------------------------------------------------------------------------------

/// A raw TCP connection, for bytes no HTTP library would send and for upgraded streams.
pub struct Raw {
    pub stream: TcpStream,
    /// Bytes read past the end of the last response.
    pub pending: Vec<u8>,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let stream = within("connect", TcpStream::connect(addr)).await.unwrap();
        Raw {
            stream,
            pending: Vec::new(),
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        within("raw write", self.stream.write_all(bytes))
            .await
            .unwrap();
    }

    async fn fill(&mut self) -> usize {
        let mut buf = [0u8; 16 * 1024];
        let n = within("raw read", self.stream.read(&mut buf))
            .await
            .unwrap_or(0);
        self.pending.extend_from_slice(&buf[..n]);
        n
    }

    /// Reads exactly `n` bytes (after any already pending).
    pub async fn read_exact(&mut self, n: usize) -> Vec<u8> {
        for _ in 0..=n {
            if self.pending.len() >= n {
                break;
            }
            assert!(
                self.fill().await > 0,
                "connection closed after {} of {n} bytes",
                self.pending.len()
            );
        }
        self.pending.drain(..n).collect()
    }

    /// Reads one HTTP/1.1 response: head, then a `Content-Length` or chunked body (none for
    /// 1xx, 204 and 304); without either, the body runs to the end of the connection.
    pub async fn read_response(&mut self) -> Resp {
        let head_end = loop {
            if let Some(i) = self.pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            assert!(self.pending.len() < 1 << 20, "response head too large");
            assert!(
                self.fill().await > 0,
                "connection closed before a response head: {:?}",
                String::from_utf8_lossy(&self.pending)
            );
        };
        let head: Vec<u8> = self.pending.drain(..head_end + 4).collect();
        let head = String::from_utf8_lossy(&head[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let code: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = HeaderMap::new();
        for line in lines {
            let (k, v) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("bad header line {line:?}"));
            headers.append(
                HeaderName::from_bytes(k.trim().as_bytes()).unwrap(),
                HeaderValue::from_str(v.trim()).unwrap(),
            );
        }
        let status = StatusCode::from_u16(code).unwrap();
        let body = if status.is_informational() || code == 204 || code == 304 {
            Vec::new()
        } else if let Some(len) = headers.get("content-length") {
            let len: usize = len.to_str().unwrap().parse().unwrap();
            self.read_exact(len).await
        } else if headers
            .get("transfer-encoding")
            .is_some_and(|v| v.to_str().unwrap_or("").contains("chunked"))
        {
            self.read_chunked().await
        } else {
            let mut body = std::mem::take(&mut self.pending);
            let mut rest = Vec::new();
            within("raw read to end", self.stream.read_to_end(&mut rest))
                .await
                .unwrap();
            body.extend_from_slice(&rest);
            body
        };
        Resp::raw_h1(status, headers, body)
    }

    async fn read_line(&mut self) -> String {
        for _ in 0..=(1 << 16) {
            if let Some(i) = self.pending.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.pending.drain(..i + 2).collect();
                return String::from_utf8_lossy(&line[..i]).into_owned();
            }
            assert!(
                self.fill().await > 0,
                "connection closed inside a chunked body"
            );
        }
        panic!("chunk line too long");
    }

    async fn read_chunked(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        for _ in 0..1_000_000 {
            let size_line = self.read_line().await;
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size {size_line:?}"));
            if size == 0 {
                // Trailers, if any, then the empty line.
                for _ in 0..100 {
                    if self.read_line().await.is_empty() {
                        return body;
                    }
                }
                panic!("too many trailers");
            }
            body.extend(self.read_exact(size).await);
            let _ = self.read_line().await;
        }
        panic!("too many chunks");
    }
}

impl Raw {
    /// Writes `request` and reads one response.
    pub async fn exchange(&mut self, request: &[u8]) -> Resp {
        self.write(request).await;
        self.read_response().await
    }
}

/// Writes `request` on a fresh connection and reads one response.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> Resp {
    Raw::connect(addr).await.exchange(request).await
}

/// An upstream that tells the test when a request arrived and answers it only when released.
pub struct HeldUpstream {
    pub addr: SocketAddr,
    pub arrived: tokio::sync::mpsc::UnboundedReceiver<tokio::sync::oneshot::Sender<()>>,
}

pub async fn held_upstream() -> HeldUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, arrived) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                // Keep-alive: one bodiless request after another, each held until released.
                let mut chunk = [0u8; 4096];
                loop {
                    let mut buf = Vec::new();
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tokio::io::AsyncReadExt::read(&mut s, &mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let (release, released) = tokio::sync::oneshot::channel();
                    let _ = tx.send(release);
                    let _ = released.await;
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nslow-done";
                    if tokio::io::AsyncWriteExt::write_all(&mut s, answer)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    HeldUpstream { addr, arrived }
}

impl HeldUpstream {
    /// Waits (5 s at most) until the next request reaches the upstream and returns its release;
    /// `what` names that request in the failure.
    pub async fn next_arrival(&mut self, what: &str) -> tokio::sync::oneshot::Sender<()> {
        tokio::time::timeout(Duration::from_secs(5), self.arrived.recv())
            .await
            .unwrap_or_else(|_| panic!("{what} reaches the upstream"))
            .unwrap()
    }
}

/// Opens an upgrade (`Upgrade: websocket`) through keygate at `addr` with `secret` in
/// `X-API-Key`, and returns the raw stream once the 101 is in: the echo upstream sends back
/// every byte written to it.
pub async fn open_tunnel(addr: SocketAddr, secret: &str) -> Raw {
    let mut raw = Raw::connect(addr).await;
    let head = format!(
        "GET /ws HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         X-API-Key: {secret}\r\n\r\n"
    );
    raw.write(head.as_bytes()).await;
    let resp = raw.read_response().await;
    assert_eq!(resp.status, StatusCode::SWITCHING_PROTOCOLS, "{resp:?}");
    raw
}

/// Writes `message` into a tunnel from [`open_tunnel`] and checks that it comes back.
pub async fn echo_through(tunnel: &mut Raw, message: &[u8]) {
    tunnel.write(message).await;
    assert_eq!(tunnel.read_exact(message.len()).await, message);
}

/// Closes our side of `tunnel` and asserts that keygate closes its side within `limit`, with
/// nothing more sent.
pub async fn close_tunnel(tunnel: &mut Raw, limit: Duration) {
    within(
        "close our side of the tunnel",
        tokio::io::AsyncWriteExt::shutdown(&mut tunnel.stream),
    )
    .await
    .unwrap();
    let rest = read_to_close(&mut tunnel.stream, limit).await;
    assert!(
        rest.is_empty(),
        "after our close: {:?}",
        String::from_utf8_lossy(&rest)
    );
}

/// Reads from `stream` until the other end closes it (end of stream or reset) and returns what
/// came; fails the test if it is still open after `limit`.
pub async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    for _ in 0..(1 << 16) {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "still open after {limit:?}; read {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
    panic!("more than 65536 reads before the close");
}
