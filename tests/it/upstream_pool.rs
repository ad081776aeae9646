//! The upstream connection pool (`src/proxy/pool.rs`) seen from outside: a real keygate over TCP
//! in front of hand-written HTTP/1.1 upstreams ([`start_scripted`]) that number their
//! connections, so every test can tell a reused upstream connection from a new one and shape
//! the wire exactly: chunked bodies, idle closes, `Connection: close`, a reset in the middle of a
//! response head, a body nobody reads to its end.
//!
//! Every scripted response carries `x-conn: N`, the number of the upstream connection (in accept
//! order, from 1) that answered it; keygate passes that header through to the client.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::harness::live::eventually_for;
use crate::harness::*;

/// Connections a scripted upstream accepts before it stops: a bound far above any test here.
const MAX_CONNECTIONS: usize = 500;
/// Requests a scripted upstream reads on one connection before it closes it.
const MAX_REQUESTS_PER_CONNECTION: usize = 1_000;
/// The largest request head a scripted upstream reads.
const MAX_HEAD: usize = 64 * 1024;
/// How long a scripted upstream waits on one read or write before it gives the connection up.
const UPSTREAM_WAIT: Duration = Duration::from_secs(60);
/// How long a test waits for something that follows at once when keygate is right.
const SETTLE: Duration = Duration::from_secs(5);
/// The body of `/cl`.
const HELLO: &[u8] = b"hello world";
/// The length of `/pattern`.
const PATTERN_LEN: usize = 300_000;

// ---------------------------------------------------------------------------------------------
// A scripted raw upstream
// ---------------------------------------------------------------------------------------------

/// One request as a scripted upstream read it.
#[derive(Debug, Clone)]
struct Seen {
    /// The connection it came on: 1 for the first one accepted, and so on.
    conn: usize,
    method: String,
    /// The request target as it arrived.
    path: String,
}

/// What the upstream does with the connection once the reply is written.
enum Then {
    /// Reads the request body, then waits for the next request.
    KeepAlive,
    /// Closes the socket this long after the reply (a FIN, no `Connection: close` needed).
    CloseAfter(Duration),
    /// Resets the connection (RST).
    Reset,
}

/// A reply: raw bytes, written piece by piece, then what happens to the connection.
struct Reply {
    pieces: Vec<Bytes>,
    then: Then,
}

impl Reply {
    fn keep(pieces: Vec<Bytes>) -> Reply {
        Reply {
            pieces,
            then: Then::KeepAlive,
        }
    }
}

/// A running scripted upstream.
struct Scripted {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    ended: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Scripted {
    /// Connections it accepted.
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections it is done with: closed by keygate, or by its own script.
    fn ended(&self) -> usize {
        self.ended.load(Ordering::SeqCst)
    }

    /// Every request it read, in order.
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// How many requests for `path` it read.
    fn times(&self, path: &str) -> usize {
        self.seen().iter().filter(|s| s.path == path).count()
    }
}

/// An HTTP/1.1 upstream written by hand on a raw socket: for each request it reads the head,
/// asks `script` for the reply, writes it, then reads the request's `Content-Length` body (after
/// the reply, so a script can answer early) and waits for the next request on that connection.
async fn start_scripted<F, Fut>(script: F) -> Scripted
where
    F: Fn(Seen) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = Scripted {
        addr: listener.local_addr().unwrap(),
        accepted: Arc::new(AtomicUsize::new(0)),
        ended: Arc::new(AtomicUsize::new(0)),
        seen: Arc::new(Mutex::new(Vec::new())),
    };
    let script = Arc::new(script);
    let (accepted, ended, seen) = (up.accepted.clone(), up.ended.clone(), up.seen.clone());
    tokio::spawn(async move {
        for _ in 0..MAX_CONNECTIONS {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let conn = accepted.fetch_add(1, Ordering::SeqCst) + 1;
            let (script, ended, seen) = (script.clone(), ended.clone(), seen.clone());
            tokio::spawn(async move {
                serve_scripted(stream, conn, &*script, &seen).await;
                // The socket is closed by now: `serve_scripted` owned it.
                ended.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    up
}

async fn serve_scripted<F, Fut>(
    mut stream: TcpStream,
    conn: usize,
    script: &F,
    seen: &Mutex<Vec<Seen>>,
) where
    F: Fn(Seen) -> Fut,
    Fut: Future<Output = Reply>,
{
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    for _ in 0..MAX_REQUESTS_PER_CONNECTION {
        let Some((method, path, body_len)) = read_head(&mut stream, &mut buf).await else {
            return;
        };
        let request = Seen { conn, method, path };
        if let Ok(mut s) = seen.lock() {
            s.push(request.clone());
        }
        let Reply { pieces, then } = script(request).await;
        for piece in pieces {
            match tokio::time::timeout(UPSTREAM_WAIT, stream.write_all(&piece)).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
        match then {
            Then::KeepAlive => {}
            Then::CloseAfter(delay) => {
                tokio::time::sleep(delay).await;
                return;
            }
            Then::Reset => {
                let _ = stream.set_zero_linger();
                return;
            }
        }
        if !skip_body(&mut stream, &mut buf, body_len).await {
            return;
        }
    }
}

/// Reads one request head: method, target and `Content-Length` (0 without one). `None` when
/// the connection ends first, or on a request this upstream does not take (a chunked body).
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, String, usize)> {
    let mut end = None;
    // Bounded: every round reads at least one byte, and the head may not exceed MAX_HEAD.
    for _ in 0..=MAX_HEAD {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            end = Some(i);
            break;
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(UPSTREAM_WAIT, stream.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let end = end?;
    let head: Vec<u8> = buf.drain(..end + 4).collect();
    let head = String::from_utf8_lossy(&head[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let path = request_line.next()?.to_owned();
    let mut body_len = 0;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            body_len = value.parse().ok()?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return None;
        }
    }
    Some((method, path, body_len))
}

/// Reads and discards `len` body bytes (some may already be in `buf`); false if the connection
/// ended first.
async fn skip_body(stream: &mut TcpStream, buf: &mut Vec<u8>, len: usize) -> bool {
    let from_buf = len.min(buf.len());
    buf.drain(..from_buf);
    let mut left = len - from_buf;
    let mut chunk = [0u8; 8192];
    // Bounded: every round reads at least one byte.
    for _ in 0..=len {
        if left == 0 {
            return true;
        }
        let n = match tokio::time::timeout(UPSTREAM_WAIT, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return false,
        };
        let used = n.min(left);
        left -= used;
        buf.extend_from_slice(&chunk[used..n]);
    }
    left == 0
}

// --- reply bytes -----------------------------------------------------------------------------

/// A status line, `x-conn`, the given header lines, and the blank line.
fn head(status: &str, conn: usize, headers: &[&str]) -> Bytes {
    let mut s = format!("HTTP/1.1 {status}\r\nx-conn: {conn}\r\n");
    for h in headers {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    Bytes::from(s)
}

/// `200 OK` with `body` and its `Content-Length`, plus the given header lines.
fn with_length(conn: usize, headers: &[&str], body: &[u8]) -> Vec<Bytes> {
    let length = format!("Content-Length: {}", body.len());
    let mut all = vec![length.as_str()];
    all.extend_from_slice(headers);
    vec![head("200 OK", conn, &all), Bytes::copy_from_slice(body)]
}

/// One chunk of a chunked body: size line, data, CRLF.
fn chunk(data: &[u8]) -> Bytes {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    Bytes::from(out)
}

/// The body of `/chunked` and `/trailers`, sent as several chunks in separate writes.
fn chunked_body() -> Vec<u8> {
    let mut body = b"hello ".to_vec();
    body.extend_from_slice(&pattern(0, 100_000));
    body.extend_from_slice(b"world");
    body
}

fn chunked_pieces(conn: usize, last_chunk: &'static [u8]) -> Vec<Bytes> {
    vec![
        head(
            "200 OK",
            conn,
            &["Transfer-Encoding: chunked", "Content-Type: text/plain"],
        ),
        chunk(b"hello "),
        chunk(&pattern(0, 60_000)),
        chunk(&pattern(60_000, 40_000)),
        chunk(b"world"),
        Bytes::from_static(last_chunk),
    ]
}

/// 64 KiB of `x`: the abandoned large bodies are made of it, so a leftover of one can never
/// pass for the pattern bytes of another response.
static XS: [u8; 64 * 1024] = [b'x'; 64 * 1024];
/// Size of the abandoned large bodies: far more than the socket buffers between the upstream
/// and the client can hold, so the upstream is still writing when the client goes away.
const BIG: usize = 32 * 1024 * 1024;

/// The script of most tests here, by request target:
///
/// - `HEAD` anything: `200` with `Content-Length: 11` and no body;
/// - `/cl`: `200` with the 11-byte [`HELLO`];
/// - `/pattern`: `200` with [`PATTERN_LEN`] pattern bytes and their `Content-Length`;
/// - `/cl0`: `200` with `Content-Length: 0`;
/// - `/204`, `/304`: no body;
/// - `/chunked`: [`chunked_body`] in five chunks; `/trailers`: the same, ended with a trailer;
/// - `/close`: `/cl` with `Connection: close`, then the upstream closes;
/// - `/idle-close`: `/cl` without `Connection: close`, then the upstream closes 5 ms later;
/// - `/close-now`: the same, closed right after the reply;
/// - `/big-cl`, `/big-chunked`: [`BIG`] bytes of `x`, with a length or chunked;
/// - `/partial-reset`, `/partial-close`: half a response head, then RST or FIN;
/// - anything else: `200` with the target as the body.
async fn kinds(s: Seen) -> Reply {
    let c = s.conn;
    if s.method == "HEAD" {
        return Reply::keep(vec![head("200 OK", c, &["Content-Length: 11"])]);
    }
    match s.path.as_str() {
        "/cl" => Reply::keep(with_length(c, &[], HELLO)),
        "/pattern" => Reply::keep(with_length(c, &[], &pattern(0, PATTERN_LEN))),
        "/cl0" => Reply::keep(vec![head("200 OK", c, &["Content-Length: 0"])]),
        "/204" => Reply::keep(vec![head("204 No Content", c, &[])]),
        "/304" => Reply::keep(vec![head("304 Not Modified", c, &["ETag: \"v1\""])]),
        "/chunked" => Reply::keep(chunked_pieces(c, b"0\r\n\r\n")),
        "/trailers" => Reply::keep(chunked_pieces(c, b"0\r\nx-checksum: 1234\r\n\r\n")),
        "/close" => Reply {
            pieces: with_length(c, &["Connection: close"], HELLO),
            then: Then::CloseAfter(Duration::ZERO),
        },
        "/idle-close" => Reply {
            pieces: with_length(c, &[], HELLO),
            then: Then::CloseAfter(Duration::from_millis(5)),
        },
        "/close-now" => Reply {
            pieces: with_length(c, &[], HELLO),
            then: Then::CloseAfter(Duration::ZERO),
        },
        "/big-cl" => {
            let mut pieces = vec![head("200 OK", c, &[&format!("Content-Length: {BIG}")])];
            pieces.extend((0..BIG / XS.len()).map(|_| Bytes::from_static(&XS)));
            Reply::keep(pieces)
        }
        "/big-chunked" => {
            let mut pieces = vec![head("200 OK", c, &["Transfer-Encoding: chunked"])];
            let size_line = Bytes::from(format!("{:x}\r\n", XS.len()));
            for _ in 0..BIG / XS.len() {
                pieces.push(size_line.clone());
                pieces.push(Bytes::from_static(&XS));
                pieces.push(Bytes::from_static(b"\r\n"));
            }
            pieces.push(Bytes::from_static(b"0\r\n\r\n"));
            Reply::keep(pieces)
        }
        "/partial-reset" => Reply {
            pieces: vec![Bytes::from_static(b"HTTP/1.1 200 OK\r\nContent-Le")],
            then: Then::Reset,
        },
        "/partial-close" => Reply {
            pieces: vec![Bytes::from_static(b"HTTP/1.1 200 OK\r\nContent-Le")],
            then: Then::CloseAfter(Duration::ZERO),
        },
        other => Reply::keep(with_length(c, &[], other.as_bytes())),
    }
}

/// A keygate with one target on a [`kinds`] upstream.
async fn gateway() -> (SocketAddr, Scripted) {
    let up = start_scripted(kinds).await;
    let addr = gateway_to(up.addr).await.addr;
    (addr, up)
}

/// A request with the primary key.
pub(crate) fn keyed(method: &str, path: &str) -> http::Request<TestBody> {
    request(method, path, &[("x-api-key", SECRET)], empty())
}

/// The upstream connection that answered, from `x-conn`.
#[track_caller]
pub(crate) fn conn_of(resp: &Resp) -> usize {
    resp.header("x-conn")
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no x-conn on {} {}", resp.status, resp.text()))
}

/// Asserts `200` with `body`, answered on upstream connection `conn`.
#[track_caller]
pub(crate) fn assert_ok(resp: &Resp, body: &[u8], conn: usize, what: &str) {
    assert_eq!(resp.status.as_u16(), 200, "{what}: {}", resp.text());
    assert!(
        resp.body == body,
        "{what}: body of {} bytes differs from the expected {} bytes (starts {:?})",
        resp.body.len(),
        body.len(),
        String::from_utf8_lossy(&resp.body[..resp.body.len().min(64)])
    );
    assert_eq!(
        conn_of(resp),
        conn,
        "{what}: answered on another connection"
    );
}

/// Waits until the upstream is done with `n` connections.
async fn until_ended(up: &Scripted, n: usize, what: &str) {
    eventually_for(SETTLE, what, async || (up.ended() >= n).then_some(())).await;
}

// ---------------------------------------------------------------------------------------------
// 1. Chunked responses
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_chunked_response_streams_whole_and_its_connection_is_reused() {
    let (addr, up) = gateway().await;
    let mut h1 = H1::connect(addr).await;
    for i in 1..=3 {
        let resp = h1.send(keyed("GET", "/chunked")).await;
        assert_ok(&resp, &chunked_body(), 1, &format!("chunked response {i}"));
    }
    assert_eq!(up.accepted(), 1, "upstream connections: {:?}", up.seen());
    assert_no_keygate_panic();
}

/// A trailer section is the last thing of a chunked body; the exchange is over after it.
#[tokio::test]
async fn a_chunked_response_with_trailers_leaves_its_connection_reusable() {
    let (addr, up) = gateway().await;
    let mut h1 = H1::connect(addr).await;
    for i in 1..=3 {
        let resp = h1.send(keyed("GET", "/trailers")).await;
        assert_ok(
            &resp,
            &chunked_body(),
            1,
            &format!("response {i} with trailers"),
        );
    }
    assert_eq!(up.accepted(), 1, "upstream connections: {:?}", up.seen());
    assert_no_keygate_panic();
}

// ---------------------------------------------------------------------------------------------
// 2. Responses of known length, and without a body
// ---------------------------------------------------------------------------------------------

/// Two `method path` exchanges and then a `GET /cl`, all on the first upstream connection.
async fn assert_reused_after(method: &str, path: &str, status: u16, body: &[u8]) {
    let (addr, up) = gateway().await;
    let mut h1 = H1::connect(addr).await;
    for i in 1..=2 {
        let resp = h1.send(keyed(method, path)).await;
        let what = format!("{method} {path} #{i}");
        assert_eq!(resp.status.as_u16(), status, "{what}: {}", resp.text());
        assert_eq!(&resp.body[..], body, "{what}");
        assert_eq!(conn_of(&resp), 1, "{what}: not on the first connection");
    }
    let resp = h1.send(keyed("GET", "/cl")).await;
    assert_ok(&resp, HELLO, 1, &format!("GET /cl after {method} {path}"));
    assert_eq!(
        up.accepted(),
        1,
        "{method} {path}: the upstream connection was not reused: {:?}",
        up.seen()
    );
    assert_no_keygate_panic();
}

#[tokio::test]
async fn a_content_length_response_leaves_its_connection_reusable() {
    assert_reused_after("GET", "/cl", 200, HELLO).await;
}

#[tokio::test]
async fn a_content_length_0_response_leaves_its_connection_reusable() {
    assert_reused_after("GET", "/cl0", 200, b"").await;
}

#[tokio::test]
async fn a_204_leaves_its_connection_reusable() {
    assert_reused_after("GET", "/204", 204, b"").await;
}

#[tokio::test]
async fn a_304_leaves_its_connection_reusable() {
    assert_reused_after("GET", "/304", 304, b"").await;
}

#[tokio::test]
async fn a_head_response_leaves_its_connection_reusable() {
    assert_reused_after("HEAD", "/anything", 200, b"").await;
}

// ---------------------------------------------------------------------------------------------
// 3. and 4. Connections the upstream closes
// ---------------------------------------------------------------------------------------------

/// The upstream answers as if keeping the connection (no `Connection: close`) and closes it
/// 5 ms later. The test waits until it has closed before the next request: a request sent
/// during those 5 ms would be written and then lost, which keygate rightly does not retry.
#[tokio::test]
async fn a_connection_the_upstream_closes_while_idle_is_not_used_again() {
    let (addr, up) = gateway().await;
    let mut h1 = H1::connect(addr).await;
    let resp = h1.send(keyed("GET", "/idle-close")).await;
    assert_ok(&resp, HELLO, 1, "the answer before the close");
    until_ended(&up, 1, "the upstream closed its idle connection").await;

    let resp = h1.send(keyed("GET", "/cl")).await;
    assert_ok(&resp, HELLO, 2, "the request after the upstream closed");
    assert_eq!(up.accepted(), 2, "{:?}", up.seen());
    assert_eq!(up.seen().len(), 2, "a request was lost or repeated");
    assert_no_keygate_panic();
}

/// Same, with the FIN right behind the response.
#[tokio::test]
async fn a_connection_closed_right_after_its_response_is_not_used_again() {
    let (addr, up) = gateway().await;
    let mut h1 = H1::connect(addr).await;
    for i in 1..=3 {
        let resp = h1.send(keyed("GET", "/close-now")).await;
        assert_ok(&resp, HELLO, i, &format!("request {i}"));
        until_ended(&up, i, "the upstream closed after answering").await;
    }
    let resp = h1.send(keyed("GET", "/cl")).await;
    assert_ok(&resp, HELLO, 4, "the request after the closes");
    assert_eq!(up.accepted(), 4, "{:?}", up.seen());
    assert_no_keygate_panic();
}

#[tokio::test]
async fn after_connection_close_the_next_request_uses_a_new_connection() {
    let (addr, up) = gateway().await;
    let mut h1 = H1::connect(addr).await;
    for i in 1..=3 {
        let resp = h1.send(keyed("GET", "/close")).await;
        assert_ok(&resp, HELLO, i, &format!("Connection: close response {i}"));
        // The upstream's `Connection: close` is about its own connection, not the client's.
        assert_eq!(resp.header("connection"), None);
    }
    let resp = h1.send(keyed("GET", "/cl")).await;
    assert_ok(&resp, HELLO, 4, "the request after the closes");
    assert_eq!(up.accepted(), 4, "{:?}", up.seen());
    assert_eq!(up.seen().len(), 4, "a request was lost or repeated");
    assert!(!h1.is_closed(), "the client's connection was closed");
    assert_no_keygate_panic();
}

// ---------------------------------------------------------------------------------------------
// 5. A response body the client abandons
// ---------------------------------------------------------------------------------------------

/// The client reads 256 KiB of a 32 MiB body and disconnects. The upstream connection still
/// holds the rest of that body, so it must be closed, never pooled: the next request must come
/// on a new connection and get its own complete body, never bytes left of the big one.
async fn assert_abandoned_body_is_not_reused(path: &str) {
    let (addr, up) = gateway().await;
    let mut raw = Raw::connect(addr).await;
    raw.write(
        format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\nx-api-key: {SECRET}\r\n\r\n").as_bytes(),
    )
    .await;
    let start = raw.read_exact(256 * 1024).await;
    assert!(
        start.starts_with(b"HTTP/1.1 200"),
        "{path}: {:?}",
        String::from_utf8_lossy(&start[..start.len().min(200)])
    );
    let _ = raw.stream.set_zero_linger();
    drop(raw);
    // keygate drops the upstream connection once it sees the client gone; the upstream, still
    // writing the big body, then fails its write.
    until_ended(&up, 1, "keygate closed the half-read upstream connection").await;

    for i in 1..=2 {
        let resp = get_ok(addr, "/pattern").await;
        assert_ok(
            &resp,
            &pattern(0, PATTERN_LEN),
            2,
            &format!("{path}: request {i} after"),
        );
    }
    let resp = H1::connect(addr).await.send(keyed("GET", "/chunked")).await;
    assert_ok(
        &resp,
        &chunked_body(),
        2,
        &format!("{path}: a chunked one after"),
    );
    assert_eq!(up.accepted(), 2, "{path}: {:?}", up.seen());
    assert_no_keygate_panic();
}

#[tokio::test]
async fn a_content_length_body_the_client_abandons_does_not_return_its_connection() {
    assert_abandoned_body_is_not_reused("/big-cl").await;
}

#[tokio::test]
async fn a_chunked_body_the_client_abandons_does_not_return_its_connection() {
    assert_abandoned_body_is_not_reused("/big-chunked").await;
}

// ---------------------------------------------------------------------------------------------
// 6. Upstreams that fail in the middle of the response head
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_reset_or_close_inside_the_response_head_is_502_and_keygate_keeps_serving() {
    let (addr, up) = gateway().await;
    let mut h1 = H1::connect(addr).await;

    // On a fresh connection.
    let resp = h1.send(keyed("GET", "/partial-reset")).await;
    assert_problem(&resp, 502, "upstream_unavailable");
    let resp = h1.send(keyed("GET", "/cl")).await;
    assert_ok(&resp, HELLO, 2, "after a reset inside the head");

    // On the pooled connection that just answered: the request was written, so it is not
    // retried (it may not be idempotent) and the broken connection is not pooled again.
    let resp = h1.send(keyed("GET", "/partial-close")).await;
    assert_problem(&resp, 502, "upstream_unavailable");
    let resp = h1.send(keyed("GET", "/cl")).await;
    assert_ok(&resp, HELLO, 3, "after a close inside the head");
    let resp = h1.send(keyed("GET", "/partial-reset")).await;
    assert_problem(&resp, 502, "upstream_unavailable");
    let resp = get_ok(addr, "/cl").await;
    assert_ok(&resp, HELLO, 4, "after a reset on a pooled connection");

    assert_eq!(up.times("/partial-reset"), 2, "{:?}", up.seen());
    assert_eq!(up.times("/partial-close"), 1, "{:?}", up.seen());
    assert_eq!(up.accepted(), 4, "{:?}", up.seen());
    assert_no_keygate_panic();
}

// ---------------------------------------------------------------------------------------------
// 7. Many requests at once
// ---------------------------------------------------------------------------------------------

/// Requests in flight at once, each on its own client connection.
const WAVE: usize = 50;
/// How long the upstream holds a reply back waiting for the rest of its wave.
const WAVE_WAIT: Duration = Duration::from_secs(10);

/// The upstream holds every reply until the whole wave of [`WAVE`] requests has arrived, so all
/// of a wave are in flight at once. After the first wave the pool holds [`WAVE`] idle
/// connections, and the second wave must be carried on exactly those.
#[tokio::test]
async fn fifty_concurrent_requests_all_succeed_on_at_most_fifty_connections() {
    let arrived = Arc::new(tokio::sync::watch::channel(0usize).0);
    let held_too_long = Arc::new(AtomicUsize::new(0));
    let (arrivals, late) = (arrived.clone(), held_too_long.clone());
    let up = start_scripted(move |s| {
        let (arrivals, late) = (arrivals.clone(), late.clone());
        async move {
            let mut n = 0;
            arrivals.send_modify(|a| {
                *a += 1;
                n = *a;
            });
            let wave_end = n.div_ceil(WAVE) * WAVE;
            let mut rx = arrivals.subscribe();
            if tokio::time::timeout(WAVE_WAIT, rx.wait_for(|a| *a >= wave_end))
                .await
                .is_err()
            {
                late.fetch_add(1, Ordering::SeqCst);
            }
            Reply::keep(with_length(s.conn, &[], s.path.as_bytes()))
        }
    })
    .await;
    let addr = gateway_to(up.addr).await.addr;

    for wave in 1..=2 {
        let started = Instant::now();
        let mut tasks = JoinSet::new();
        for i in 0..WAVE {
            let path = format!("/wave-{wave}/request-{i}");
            tasks.spawn(async move {
                let resp = get_ok(addr, &path).await;
                (path, resp)
            });
        }
        let mut done = 0;
        for _ in 0..WAVE {
            let Some(joined) = within("a concurrent request", tasks.join_next()).await else {
                break;
            };
            let (path, resp) = joined.expect("request task panicked");
            assert_eq!(resp.status.as_u16(), 200, "{path}: {}", resp.text());
            assert_eq!(resp.text(), path, "a response went to the wrong request");
            done += 1;
        }
        assert_eq!(done, WAVE, "wave {wave}");
        assert_eq!(
            held_too_long.load(Ordering::SeqCst),
            0,
            "wave {wave}: not all {WAVE} requests reached the upstream at once (in {:?})",
            started.elapsed()
        );
        assert!(
            up.accepted() <= WAVE,
            "after wave {wave}: {} upstream connections for {WAVE} concurrent requests",
            up.accepted()
        );
    }
    assert_eq!(*arrived.borrow(), 2 * WAVE, "requests lost or repeated");
    assert_no_keygate_panic();
}

// ---------------------------------------------------------------------------------------------
// A response that ends before its request
// ---------------------------------------------------------------------------------------------

/// The upstream answers a `POST` before its body has arrived (as an upstream refusing an upload
/// does), while the client is still sending it. That connection cannot carry another request
/// until the upload ends, so an unrelated request must not wait for it.
#[tokio::test]
async fn a_request_does_not_wait_for_another_clients_unfinished_upload() {
    let up = start_scripted(kinds).await;
    let addr = crate::harness::gateway()
        .target(target("main").upstream(up.addr).line("timeout = \"3s\""))
        .shared_keys()
        .start()
        .await
        .addr;

    let mut uploader = Raw::connect(addr).await;
    uploader
        .write(
            format!(
                "POST /early HTTP/1.1\r\nHost: {HOST}\r\nx-api-key: {SECRET}\r\n\
                 Content-Length: 10\r\n\r\nab"
            )
            .as_bytes(),
        )
        .await;
    let early = uploader.read_response().await;
    assert_eq!(early.status.as_u16(), 200, "{}", early.text());
    assert_eq!(&early.body[..], b"/early");

    // The upload is still 8 bytes short: a request now must not queue behind it.
    let started = Instant::now();
    let resp = get_ok(addr, "/cl").await;
    assert_eq!(
        resp.status.as_u16(),
        200,
        "after {:?}: {}",
        started.elapsed(),
        resp.text()
    );
    assert_eq!(&resp.body[..], HELLO);
    assert_eq!(conn_of(&resp), 2, "sent on the connection still uploading");

    // The upload ends; everything still works.
    uploader.write(b"cdefghij").await;
    let resp = get_ok(addr, "/cl").await;
    assert_eq!(&resp.body[..], HELLO);
    assert_no_keygate_panic();
}
