//! Hostile input (issue 8): raw bytes over TCP against a real keygate (the library's own
//! server, in this process) in front of a recording upstream. Every case asserts what keygate
//! answered, what the upstream saw (never the key, never a smuggled request), and that keygate
//! still serves a normal request afterwards.
//!
//! `K` is the valid key in `X-API-Key`, `S` its secret, `/r` a routed path. "then open" means
//! the same connection then carries a normal request (so its framing is still in step); "close"
//! means keygate closes the connection after the answers listed.
//!
//! | case | what is sent | expected answer |
//! |------|--------------|-----------------|
//! | `cl_and_te` | `POST` with `Content-Length: 44` and `Transfer-Encoding: chunked`, a `0` chunk, then a smuggled `GET` | 200 (body empty, chunked wins), close; upstream sees one `POST`, no `Content-Length` |
//! | `te_and_cl` | the same, `Transfer-Encoding` first | 200, close; upstream sees one `POST` |
//! | `cl_cl_differ` | `Content-Length: 5` and `Content-Length: 40` | 400, close; upstream sees nothing |
//! | `cl_cl_same` | `Content-Length: 5` twice, 5 bytes | upstream's 200, then open; upstream sees one `Content-Length` |
//! | `cl_list` | `Content-Length: 5, 5` | 400, close |
//! | `cl_plus` | `Content-Length: +5` | 400, close |
//! | `cl_negative` | `Content-Length: -1` | 400, close |
//! | `cl_overflow` | `Content-Length` of 24 nines | 400, close |
//! | `cl_smuggle_in_body` | `Content-Length` covering a whole `GET /smuggled` request | 200, then open; upstream sees it as body bytes only |
//! | `te_xchunked` | `Transfer-Encoding: xchunked` | 400, close |
//! | `te_chunked_identity` | `Transfer-Encoding: chunked, identity` | 400, close |
//! | `te_two_lines` | `Transfer-Encoding: chunked` then `Transfer-Encoding: identity` | 400, close |
//! | `te_space_before_colon` | `Transfer-Encoding : chunked` | 400, close |
//! | `te_obs_fold` | `Transfer-Encoding:` folded onto a ` chunked` line | 400, close |
//! | `te_vtab` | `Transfer-Encoding: \x0bchunked` | 400, close |
//! | `te_upper_with_cl` | `Transfer-Encoding: CHUNKED` and `Content-Length` | 200 (chunked), close; no smuggled request |
//! | `te_http10` | `Transfer-Encoding: chunked` in HTTP/1.0 | 400, close |
//! | `chunk_size_overflow` | a chunk size of 21 hex digits | 400 `invalid_body`, close; the upstream never gets a whole request |
//! | `get_chunked_smuggle` | `GET` with a chunked body holding a smuggled request | 200, then open; upstream sees one bodiless `GET` (hyper sends a `GET` of unknown length without its body) |
//! | `pipelined_no_key` | a keyed `GET`, then in the same write an unkeyed one | 200, 403 `key_missing`, then open |
//! | `space_in_target` | `GET /r /smuggled HTTP/1.1` | 400, close |
//! | `cr_in_header` | a header value with a bare CR | 400, close |
//! | `header_1mb` | one 1 MB header | 431, close |
//! | `query_1mb` | a 1 MB query | 431, close |
//! | `headers_10000` | 10,000 one-byte headers (50 KB, under `max_header_bytes`) | 431, close |
//! | `key_non_utf8` | `X-API-Key: \xff\xfe\xfd` | 403 `key_invalid`, then open |
//! | `key_control_byte` | `X-API-Key` with a `\x01` | 400, close |
//! | `key_nul` | `X-API-Key` ending in NUL | 400, close |
//! | `key_tab_inside` | `X-API-Key: S\tx` | 403 `key_invalid`, then open |
//! | `key_twice` | `X-API-Key: S` twice | 403 `key_invalid`, then open |
//! | `key_empty` | `X-API-Key:` with no value | 403 `key_missing`, then open |
//! | `key_padded` | `X-API-Key:   S   ` | 200 (surrounding blanks are not part of a field value) |
//! | `key_too_long` | a 513-byte key | 403 `key_invalid` |
//! | `key_header_query_differ` | `K` and `?api_key=other` | 403 `key_invalid` |
//! | `q_api_5F_key` | `?api%5Fkey=S&a=1` | 200; upstream sees `/r?a=1` (the same name to keygate, so stripped) |
//! | `q_api_5f_key` | `?a=1&api%5fkey=S` | 200; upstream sees `/r?a=1` |
//! | `q_upper_only` | `?API_KEY=S` | 403 `key_missing`; upstream sees nothing |
//! | `q_upper_with_header` | `K` and `?API_KEY=x` | 200; upstream sees `?API_KEY=x` unchanged |
//! | `q_brackets_only` | `?api_key[]=S` | 403 `key_missing` |
//! | `q_brackets_with_header` | `K` and `?api_key[]=x` | 200; upstream sees `?api_key[]=x` unchanged |
//! | `q_repeated_same` | `?api_key=S&api_key=S` | 200; upstream sees neither |
//! | `q_repeated_first_wins` | `?api_key=S&api_key=wrong` | 200; upstream sees neither |
//! | `q_repeated_wrong_first` | `?api_key=wrong&api_key=S` | 403 `key_invalid` |
//! | `q_empty` | `?api_key=` | 403 `key_missing` |
//! | `q_no_equals` | `?api_key` | 403 `key_missing` |
//! | `q_empty_then_key` | `?api_key=&api_key=S` | 403 `key_missing` (the first one counts) |
//! | `q_empty_with_header` | `K` and `?a=1&api_key=` | 200; upstream sees `/r?a=1` |
//! | `q_double_encoded` | `?api%255Fkey=S` | 403 `key_missing` |
//! | `q_encoded_value` | `?api_key=<S, every byte %-encoded>` | 200; upstream sees `/r` |
//! | `q_plus_name` | `?api+key=S` | 403 `key_missing` |
//! | `q_encoded_equals` | `?api_key%3DS` | 403 `key_missing` |
//! | `q_non_utf8_value` | `?api_key=%FF%FE` | 403 `key_invalid` |
//! | `absolute_form` | `GET http://gateway.test/r?api_key=S&a=1` | 200; upstream sees origin-form `/r?a=1` |
//! | `absolute_form_other_host` | `GET http://evil.example:9/r` with `K` | 200 from the configured upstream, origin-form `/r` |
//! | `absolute_form_userinfo` | `GET http://u:p@gateway.test/r` with `K` | 200; upstream sees `/r`, no userinfo |
//! | `connect_authority` | `CONNECT gateway.test:443` with `K` | 404 `no_route`, then open (was: forwarded as `CONNECT /`, fixed) |
//! | `connect_no_key` | `CONNECT gateway.test:443` without a key | 404 `no_route` (routing comes first), then open |
//! | `upgrade_no_key` | `Connection: upgrade`, `Upgrade: websocket`, no key | 403 `key_missing`, then open |
//! | `asterisk_form` | `OPTIONS * HTTP/1.1` with `K` | 200; upstream sees `OPTIONS *` |
//! | `no_leading_slash` | `GET r HTTP/1.1` (parsed as authority-form) | 404 `no_route`, then open (was: forwarded as `GET /`, fixed) |
//! | `bad_method` | `G(T /r HTTP/1.1` | 400, close |
//! | `bad_version` | `GET /r HTTP/1.2` | 400, close |
//! | `host_missing` | an HTTP/1.1 `GET` with `K` and no `Host` | 400 `invalid_request`, close; upstream sees nothing (RFC 9112 §3.2; was: forwarded, fixed) |
//! | `host_twice` | `Host` twice (the same value) | 400 `invalid_request`, close; upstream sees nothing (was: forwarded, fixed) |
//! | `host_twice_differ` | `Host: gateway.test` then `Host: evil.example` | 400 `invalid_request`, close; upstream sees nothing |
//! | `host_missing_http10` | an HTTP/1.0 `GET` with `K` and no `Host` | upstream's 200 (HTTP/1.0 may omit it), close |
//! | `host_twice_http10` | an HTTP/1.0 `GET` with `Host` twice | 400 `invalid_request`, close; upstream sees nothing |
//!
//! `HOSTILE_CASE=<name>` runs one row of the table alone.
//!
//! Cases with a peer of their own, one test each:
//!
//! | case | what is done | expected answer |
//! |------|--------------|-----------------|
//! | h2 rapid reset | 1,000 HEADERS each followed at once by RST_STREAM, in one write | GOAWAY `ENHANCE_YOUR_CALM`, close; at most 20 reach the upstream |
//! | h2 CR/LF in a header value | an HPACK value with `\r\nx-smuggled: 1` | GOAWAY `PROTOCOL_ERROR`, close; upstream sees nothing |
//! | h2 `transfer-encoding` | `transfer-encoding: chunked` and a smuggled request as DATA | RST_STREAM `PROTOCOL_ERROR`, the connection serves on; upstream sees nothing |
//! | slow reader | a 1 GB response the client stops reading after the head | the upstream stalls below 64 MB, others are served meanwhile, the upstream is released when the client leaves |
//! | upstream resets mid-body | `Content-Length: 1000000` (then chunked), 1000 bytes, RST | 200 head, then a close before the body's end (no final chunk); HTTP/2: the body ends in an error |
//! | upstream oversized header | a 1 MB response header; 10,000 response headers | 502 `upstream_unavailable` |
//! | upstream resets before answering | RST after reading the request | 502 `upstream_unavailable` |
//! | client leaves mid-upload | `Content-Length: 100`, 10 bytes, then the client's write side closes | 400 `invalid_body`; the upstream never gets a whole request |

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};

use crate::harness::*;

/// The longest one read of a case may wait: far above what a local answer takes.
const READ_LIMIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// The recording upstream
// ---------------------------------------------------------------------------------------------

/// One request as the upstream parsed it.
#[derive(Debug, Clone)]
struct Seen {
    /// `METHOD target`, the target exactly as it arrived.
    line: String,
    headers: Vec<(String, Vec<u8>)>,
    /// `None` when the body ended in an error (the request was aborted).
    body: Option<Vec<u8>>,
}

impl Seen {
    fn all(&self, name: &str) -> Vec<&[u8]> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
            .collect()
    }
}

/// Everything the upstream received: the parsed requests and every raw byte.
#[derive(Default)]
struct Record {
    seen: Mutex<Vec<Seen>>,
    raw: Mutex<Vec<u8>>,
}

impl Record {
    /// Takes what was recorded so far.
    fn take(&self) -> (Vec<Seen>, Vec<u8>) {
        (
            std::mem::take(&mut *self.seen.lock().unwrap()),
            std::mem::take(&mut *self.raw.lock().unwrap()),
        )
    }
}

/// A TCP stream that copies every byte it reads into a [`Record`].
struct Tap {
    inner: TcpStream,
    record: Arc<Record>,
}

impl AsyncRead for Tap {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &polled {
            let mut raw = this.record.raw.lock().unwrap();
            raw.extend_from_slice(&buf.filled()[before..]);
        }
        polled
    }
}

impl AsyncWrite for Tap {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, b)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The body every upstream answer has, so a client can tell it from keygate's own.
fn upstream_says(line: &str) -> String {
    format!("upstream saw {line}")
}

/// An HTTP/1.1 upstream that records every request and every byte, and answers 200
/// `upstream saw METHOD target` once it has read the whole body.
async fn recording_upstream() -> (SocketAddr, Arc<Record>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let record = Arc::new(Record::default());
    let rec = record.clone();
    tokio::spawn(async move {
        for _ in 0..1_000 {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let rec = rec.clone();
            tokio::spawn(async move {
                let tap = Tap {
                    inner: stream,
                    record: rec.clone(),
                };
                let service = service_fn(move |req: Request<Incoming>| {
                    let rec = rec.clone();
                    async move {
                        let line = format!(
                            "{} {}",
                            req.method(),
                            req.uri()
                                .path_and_query()
                                .map_or_else(|| req.uri().to_string(), |pq| pq.to_string())
                        );
                        let headers = req
                            .headers()
                            .iter()
                            .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
                            .collect();
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .ok()
                            .map(|b| b.to_bytes().to_vec());
                        let ok = body.is_some();
                        rec.seen.lock().unwrap().push(Seen {
                            line: line.clone(),
                            headers,
                            body,
                        });
                        let status = if ok { 200 } else { 400 };
                        Ok::<_, std::convert::Infallible>(
                            Response::builder()
                                .status(status)
                                .body(full(upstream_says(&line)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tap), service)
                    .await;
            });
        }
    });
    (addr, record)
}

/// keygate in front of a recording upstream, with a failed-attempt limit no case reaches.
async fn gateway() -> (SocketAddr, Arc<Record>) {
    let (up, record) = recording_upstream().await;
    let config = format!(
        "[server]\nfailed_auth_limit = \"100000/second\"\n\n{}",
        one_target(up)
    );
    (start_keygate(&config).await, record)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// What must hold for everything an upstream received, whatever the case: no secret in any
/// byte, no `X-API-Key`, one framing per request.
#[track_caller]
fn assert_upstream_clean(what: &str, seen: &[Seen], raw: &[u8]) {
    for secret in ALL_SECRETS {
        assert!(
            !contains(raw, secret.as_bytes()),
            "{what}: a secret reached the upstream: {:?}",
            String::from_utf8_lossy(raw)
        );
    }
    for s in seen {
        assert!(
            s.all("x-api-key").is_empty(),
            "{what}: X-API-Key reached the upstream: {s:?}"
        );
        let (cl, te) = (s.all("content-length"), s.all("transfer-encoding"));
        assert!(
            cl.len() + te.len() <= 1,
            "{what}: the upstream got ambiguous framing: {s:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A raw client
// ---------------------------------------------------------------------------------------------

/// A raw connection: written from a task of its own (a server that stops reading must not block
/// the test, and a refused write is no failure), read here.
struct RawConn {
    rd: OwnedReadHalf,
    pending: Vec<u8>,
    wr: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
}

impl RawConn {
    async fn connect(addr: SocketAddr) -> RawConn {
        let stream = within("connect", TcpStream::connect(addr)).await.unwrap();
        let (rd, mut w) = stream.into_split();
        let (wr, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(async move {
            while let Some(bytes) = rx.recv().await {
                if w.write_all(&bytes).await.is_err() {
                    return;
                }
            }
        });
        RawConn {
            rd,
            pending: Vec::new(),
            wr,
        }
    }

    fn send(&self, bytes: Vec<u8>) {
        let _ = self.wr.send(bytes);
    }

    /// Reads more; `Ok(0)` (or a reset) is the end of the connection.
    async fn fill(&mut self) -> Result<usize, String> {
        let mut buf = vec![0u8; 64 * 1024];
        match tokio::time::timeout(READ_LIMIT, self.rd.read(&mut buf)).await {
            Err(_) => Err(format!(
                "no answer within {READ_LIMIT:?} (so far: {:?})",
                String::from_utf8_lossy(&self.pending)
            )),
            Ok(Ok(n)) => {
                self.pending.extend_from_slice(&buf[..n]);
                Ok(n)
            }
            Ok(Err(_)) => Ok(0),
        }
    }

    /// The next response head and `Content-Length` body; `Ok(None)` when the connection ends
    /// before a response starts.
    async fn response(&mut self) -> Result<Option<Resp>, String> {
        let head_end = loop {
            if let Some(i) = self.pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if self.fill().await? == 0 {
                if self.pending.is_empty() {
                    return Ok(None);
                }
                return Err(format!(
                    "closed inside a response head: {:?}",
                    String::from_utf8_lossy(&self.pending)
                ));
            }
        };
        let head: Vec<u8> = self.pending.drain(..head_end + 4).collect();
        let (status, headers) = parse_head(&head[..head_end])?;
        let len = match headers.get("content-length") {
            Some(v) => v.to_str().unwrap().parse::<usize>().unwrap(),
            None if headers.contains_key("transfer-encoding") => {
                return Err("a chunked response where none was expected".into());
            }
            None => 0,
        };
        while self.pending.len() < len {
            if self.fill().await? == 0 {
                return Err(format!("closed inside a body: {}", self.pending.len()));
            }
        }
        let body: Vec<u8> = self.pending.drain(..len).collect();
        Ok(Some(Resp::raw_h1(status, headers, body)))
    }

    /// Ok once the server has closed the connection with nothing more to say.
    async fn closed(&mut self) -> Result<(), String> {
        for _ in 0..10_000 {
            let n = self.fill().await.map_err(|e| format!("not closed: {e}"))?;
            if n == 0 {
                return if self.pending.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "bytes after the expected answers: {:?}",
                        String::from_utf8_lossy(&self.pending)
                    ))
                };
            }
            if !self.pending.is_empty() {
                return Err(format!(
                    "bytes after the expected answers: {:?}",
                    String::from_utf8_lossy(&self.pending)
                ));
            }
        }
        Err("never closed".into())
    }
}

fn parse_head(head: &[u8]) -> Result<(StatusCode, HeaderMap), String> {
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut headers = HeaderMap::new();
    for line in lines {
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header line {line:?}"))?;
        headers.append(
            HeaderName::from_bytes(k.trim().as_bytes()).map_err(|e| e.to_string())?,
            HeaderValue::from_str(v.trim()).map_err(|e| e.to_string())?,
        );
    }
    Ok((status, headers))
}

/// The normal request that must work after every case: a fresh connection, the valid key.
async fn assert_still_serving(addr: SocketAddr, record: &Record, what: &str) {
    let resp = get(addr, "/__health", &[("x-api-key", SECRET)]).await;
    assert_eq!(
        resp.status,
        200,
        "{what}: not serving afterwards: {}",
        resp.text()
    );
    assert_eq!(resp.text(), upstream_says("GET /__health"), "{what}");
    let (seen, raw) = record.take();
    assert_upstream_clean(what, &seen, &raw);
    assert_no_keygate_panic();
}

// ---------------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------------

/// One answer on the connection, in order.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// The upstream's 200 for this request (`METHOD target` as the upstream must see it).
    Up(&'static str),
    /// keygate's own problem+json denial.
    Kg(u16, &'static str),
    /// An answer from the HTTP layer itself (hyper): the status and an empty body.
    Http(u16),
}

/// What happens to the connection after the answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    /// keygate closes it, with no further bytes.
    Close,
    /// It stays in step: a normal request on it gets the upstream's 200.
    Open,
}

/// One row of the table.
struct Case {
    name: &'static str,
    send: Vec<u8>,
    answers: Vec<Answer>,
    after: After,
    /// Every request the upstream must see whole, in order, as `METHOD target` and body; nothing
    /// else (a request whose body broke off is not counted: its application never ran).
    upstream: Vec<(&'static str, &'static [u8])>,
}

fn case(
    name: &'static str,
    send: impl Into<Vec<u8>>,
    answers: &[Answer],
    after: After,
    upstream: &[(&'static str, &'static [u8])],
) -> Case {
    Case {
        name,
        send: send.into(),
        answers: answers.to_vec(),
        after,
        upstream: upstream.to_vec(),
    }
}

/// A request head with `Host` and the valid key, then `extra` header lines, then `body`.
fn keyed(line: &str, extra: &str, body: &str) -> Vec<u8> {
    format!("{line}\r\nHost: {HOST}\r\nX-API-Key: {SECRET}\r\n{extra}\r\n{body}").into_bytes()
}

/// A request head with `Host` only, then `extra` header lines.
fn bare(line: &str, extra: &str) -> Vec<u8> {
    format!("{line}\r\nHost: {HOST}\r\n{extra}\r\n").into_bytes()
}

/// The request a smuggling case tries to slip past the gateway.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: gateway.test\r\n\r\n";

/// Every byte of `s` percent-encoded.
fn encode_all(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

use After::{Close, Open};
use Answer::{Http, Kg, Up};

fn cases() -> Vec<Case> {
    let chunk_smuggle = format!("0\r\n\r\n{SMUGGLED}");
    let cl = chunk_smuggle.len();
    let mb = "a".repeat(1 << 20);
    let many_headers: String = (0..10_000).map(|_| "a: b\r\n").collect();
    let headers_10000 = format!("GET /r HTTP/1.1\r\nHost: {HOST}\r\n{many_headers}\r\n");
    vec![
        // --- request smuggling -------------------------------------------------------------
        case(
            "cl_and_te",
            keyed(
                "POST /r HTTP/1.1",
                &format!("Content-Length: {cl}\r\nTransfer-Encoding: chunked\r\n"),
                &chunk_smuggle,
            ),
            &[Up("POST /r")],
            Close,
            &[("POST /r", b"")],
        ),
        case(
            "te_and_cl",
            keyed(
                "POST /r HTTP/1.1",
                &format!("Transfer-Encoding: chunked\r\nContent-Length: {cl}\r\n"),
                &chunk_smuggle,
            ),
            &[Up("POST /r")],
            Close,
            &[("POST /r", b"")],
        ),
        case(
            "cl_cl_differ",
            keyed(
                "POST /r HTTP/1.1",
                "Content-Length: 5\r\nContent-Length: 40\r\n",
                &format!("hello{SMUGGLED}"),
            ),
            &[Http(400)],
            Close,
            &[],
        ),
        case(
            "cl_cl_same",
            keyed(
                "POST /r HTTP/1.1",
                "Content-Length: 5\r\nContent-Length: 5\r\n",
                "hello",
            ),
            &[Up("POST /r")],
            Open,
            &[("POST /r", b"hello")],
        ),
        case(
            "cl_list",
            keyed("POST /r HTTP/1.1", "Content-Length: 5, 5\r\n", "hello"),
            &[Http(400)],
            Close,
            &[],
        ),
        case(
            "cl_plus",
            keyed("POST /r HTTP/1.1", "Content-Length: +5\r\n", "hello"),
            &[Http(400)],
            Close,
            &[],
        ),
        case(
            "cl_negative",
            keyed("POST /r HTTP/1.1", "Content-Length: -1\r\n", "hello"),
            &[Http(400)],
            Close,
            &[],
        ),
        case(
            "cl_overflow",
            keyed(
                "POST /r HTTP/1.1",
                "Content-Length: 999999999999999999999999\r\n",
                "hello",
            ),
            &[Http(400)],
            Close,
            &[],
        ),
        case(
            "cl_smuggle_in_body",
            keyed(
                "POST /r HTTP/1.1",
                &format!("Content-Length: {}\r\n", SMUGGLED.len()),
                SMUGGLED,
            ),
            &[Up("POST /r")],
            Open,
            &[("POST /r", SMUGGLED.as_bytes())],
        ),
        case(
            "te_xchunked",
            keyed(
                "POST /r HTTP/1.1",
                "Transfer-Encoding: xchunked\r\n",
                &chunk_smuggle,
            ),
            &[Http(400)],
            Close,
            &[],
        ),
        case(
            "te_chunked_identity",
            keyed(
                "POST /r HTTP/1.1",
                "Transfer-Encoding: chunked, identity\r\n",
                &chunk_smuggle,
            ),
            &[Http(400)],
            Close,
            &[],
        ),
        case(
            "te_two_lines",
            keyed(
                "POST /r HTTP/1.1",
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
                &chunk_smuggle,
            ),
            &[Http(400)],
            Close,
            &[],
        ),
        case(
            "te_space_before_colon",
            keyed(
                "POST /r HTTP/1.1",
                &format!("Transfer-Encoding : chunked\r\nContent-Length: {cl}\r\n"),
                &chunk_smuggle,
            ),
            &[Http(400)],
            Close,
            &[],
        ),
        case(
            "te_obs_fold",
            keyed(
                "POST /r HTTP/1.1",
                &format!("Content-Length: {cl}\r\nTransfer-Encoding:\r\n chunked\r\n"),
                &chunk_smuggle,
            ),
            &[Http(400)],
            Close,
            &[],
        ),
        case(
            "te_vtab",
            keyed(
                "POST /r HTTP/1.1",
                &format!("Content-Length: {cl}\r\nTransfer-Encoding: \x0bchunked\r\n"),
                &chunk_smuggle,
            ),
            &[Http(400)],
            Close,
            &[],
        ),
        case(
            "te_upper_with_cl",
            keyed(
                "POST /r HTTP/1.1",
                &format!("Content-Length: {cl}\r\nTransfer-Encoding: CHUNKED\r\n"),
                &chunk_smuggle,
            ),
            &[Up("POST /r")],
            Close,
            &[("POST /r", b"")],
        ),
        case(
            "te_http10",
            keyed(
                "POST /r HTTP/1.0",
                "Transfer-Encoding: chunked\r\n",
                &chunk_smuggle,
            ),
            &[Http(400)],
            Close,
            &[],
        ),
        case(
            "chunk_size_overflow",
            keyed(
                "POST /r HTTP/1.1",
                "Transfer-Encoding: chunked\r\n",
                &format!("fffffffffffffffffffff\r\n{SMUGGLED}"),
            ),
            &[Kg(400, "invalid_body")],
            Close,
            &[],
        ),
        case(
            "get_chunked_smuggle",
            keyed(
                "GET /r HTTP/1.1",
                "Transfer-Encoding: chunked\r\n",
                &format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len()),
            ),
            &[Up("GET /r")],
            Open,
            &[("GET /r", b"")],
        ),
        case(
            "pipelined_no_key",
            [
                keyed("GET /r HTTP/1.1", "", ""),
                bare("GET /smuggled HTTP/1.1", ""),
            ]
            .concat(),
            &[Up("GET /r"), Kg(403, "key_missing")],
            Open,
            &[("GET /r", b"")],
        ),
        case(
            "space_in_target",
            keyed("GET /r /smuggled HTTP/1.1", "", ""),
            &[Http(400)],
            Close,
            &[],
        ),
        case(
            "cr_in_header",
            keyed(
                "GET /r HTTP/1.1",
                "X-Note: a\rTransfer-Encoding: chunked\r\n",
                "",
            ),
            &[Http(400)],
            Close,
            &[],
        ),
        // --- sizes ---------------------------------------------------------------------------
        case(
            "header_1mb",
            keyed("GET /r HTTP/1.1", &format!("X-Big: {mb}\r\n"), ""),
            &[Http(431)],
            Close,
            &[],
        ),
        case(
            "query_1mb",
            keyed(&format!("GET /r?x={mb} HTTP/1.1"), "", ""),
            &[Http(431)],
            Close,
            &[],
        ),
        case("headers_10000", headers_10000, &[Http(431)], Close, &[]),
        // --- the key header ------------------------------------------------------------------
        case(
            "key_non_utf8",
            [
                b"GET /r HTTP/1.1\r\nHost: gateway.test\r\nX-API-Key: ".as_slice(),
                b"\xff\xfe\xfd\r\n\r\n",
            ]
            .concat(),
            &[Kg(403, "key_invalid")],
            Open,
            &[],
        ),
        case(
            "key_control_byte",
            bare("GET /r HTTP/1.1", "X-API-Key: kg_\x01abc\r\n"),
            &[Http(400)],
            Close,
            &[],
        ),
        case(
            "key_nul",
            bare("GET /r HTTP/1.1", &format!("X-API-Key: {SECRET}\0\r\n")),
            &[Http(400)],
            Close,
            &[],
        ),
        case(
            "key_tab_inside",
            bare("GET /r HTTP/1.1", &format!("X-API-Key: {SECRET}\tx\r\n")),
            &[Kg(403, "key_invalid")],
            Open,
            &[],
        ),
        case(
            "key_twice",
            bare(
                "GET /r HTTP/1.1",
                &format!("X-API-Key: {SECRET}\r\nX-API-Key: {SECRET}\r\n"),
            ),
            &[Kg(403, "key_invalid")],
            Open,
            &[],
        ),
        case(
            "key_empty",
            bare("GET /r HTTP/1.1", "X-API-Key:\r\n"),
            &[Kg(403, "key_missing")],
            Open,
            &[],
        ),
        case(
            "key_padded",
            bare(
                "GET /r HTTP/1.1",
                &format!("X-API-Key: \t  {SECRET}  \t\r\n"),
            ),
            &[Up("GET /r")],
            Open,
            &[("GET /r", b"")],
        ),
        case(
            "key_too_long",
            bare(
                "GET /r HTTP/1.1",
                &format!("X-API-Key: {}\r\n", "k".repeat(513)),
            ),
            &[Kg(403, "key_invalid")],
            Open,
            &[],
        ),
        case(
            "key_header_query_differ",
            keyed("GET /r?api_key=other HTTP/1.1", "", ""),
            &[Kg(403, "key_invalid")],
            Open,
            &[],
        ),
        // --- the key query parameter ---------------------------------------------------------
        case(
            "q_api_5F_key",
            bare(&format!("GET /r?api%5Fkey={SECRET}&a=1 HTTP/1.1"), ""),
            &[Up("GET /r?a=1")],
            Open,
            &[("GET /r?a=1", b"")],
        ),
        case(
            "q_api_5f_key",
            bare(&format!("GET /r?a=1&api%5fkey={SECRET} HTTP/1.1"), ""),
            &[Up("GET /r?a=1")],
            Open,
            &[("GET /r?a=1", b"")],
        ),
        case(
            "q_upper_only",
            bare(&format!("GET /r?API_KEY={SECRET} HTTP/1.1"), ""),
            &[Kg(403, "key_missing")],
            Open,
            &[],
        ),
        case(
            "q_upper_with_header",
            keyed("GET /r?API_KEY=x HTTP/1.1", "", ""),
            &[Up("GET /r?API_KEY=x")],
            Open,
            &[("GET /r?API_KEY=x", b"")],
        ),
        case(
            "q_brackets_only",
            bare(&format!("GET /r?api_key[]={SECRET} HTTP/1.1"), ""),
            &[Kg(403, "key_missing")],
            Open,
            &[],
        ),
        case(
            "q_brackets_with_header",
            keyed("GET /r?api_key[]=x HTTP/1.1", "", ""),
            &[Up("GET /r?api_key[]=x")],
            Open,
            &[("GET /r?api_key[]=x", b"")],
        ),
        case(
            "q_repeated_same",
            bare(
                &format!("GET /r?api_key={SECRET}&api_key={SECRET} HTTP/1.1"),
                "",
            ),
            &[Up("GET /r")],
            Open,
            &[("GET /r", b"")],
        ),
        case(
            "q_repeated_first_wins",
            bare(
                &format!("GET /r?api_key={SECRET}&b=2&api_key=wrong HTTP/1.1"),
                "",
            ),
            &[Up("GET /r?b=2")],
            Open,
            &[("GET /r?b=2", b"")],
        ),
        case(
            "q_repeated_wrong_first",
            bare(
                &format!("GET /r?api_key=wrong&api_key={SECRET} HTTP/1.1"),
                "",
            ),
            &[Kg(403, "key_invalid")],
            Open,
            &[],
        ),
        case(
            "q_empty",
            bare("GET /r?api_key= HTTP/1.1", ""),
            &[Kg(403, "key_missing")],
            Open,
            &[],
        ),
        case(
            "q_no_equals",
            bare("GET /r?api_key HTTP/1.1", ""),
            &[Kg(403, "key_missing")],
            Open,
            &[],
        ),
        case(
            "q_empty_then_key",
            bare(&format!("GET /r?api_key=&api_key={SECRET} HTTP/1.1"), ""),
            &[Kg(403, "key_missing")],
            Open,
            &[],
        ),
        case(
            "q_empty_with_header",
            keyed("GET /r?a=1&api_key= HTTP/1.1", "", ""),
            &[Up("GET /r?a=1")],
            Open,
            &[("GET /r?a=1", b"")],
        ),
        case(
            "q_double_encoded",
            bare(&format!("GET /r?api%255Fkey={SECRET} HTTP/1.1"), ""),
            &[Kg(403, "key_missing")],
            Open,
            &[],
        ),
        case(
            "q_encoded_value",
            bare(
                &format!("GET /r?api_key={} HTTP/1.1", encode_all(SECRET)),
                "",
            ),
            &[Up("GET /r")],
            Open,
            &[("GET /r", b"")],
        ),
        case(
            "q_plus_name",
            bare(&format!("GET /r?api+key={SECRET} HTTP/1.1"), ""),
            &[Kg(403, "key_missing")],
            Open,
            &[],
        ),
        case(
            "q_encoded_equals",
            bare(&format!("GET /r?api_key%3D{SECRET} HTTP/1.1"), ""),
            &[Kg(403, "key_missing")],
            Open,
            &[],
        ),
        case(
            "q_non_utf8_value",
            bare("GET /r?api_key=%FF%FE HTTP/1.1", ""),
            &[Kg(403, "key_invalid")],
            Open,
            &[],
        ),
        // --- request targets -----------------------------------------------------------------
        case(
            "absolute_form",
            bare(
                &format!("GET http://{HOST}/r?api_key={SECRET}&a=1 HTTP/1.1"),
                "",
            ),
            &[Up("GET /r?a=1")],
            Open,
            &[("GET /r?a=1", b"")],
        ),
        case(
            "absolute_form_other_host",
            keyed("GET http://evil.example:9/r HTTP/1.1", "", ""),
            &[Up("GET /r")],
            Open,
            &[("GET /r", b"")],
        ),
        case(
            "absolute_form_userinfo",
            keyed(&format!("GET http://u:p@{HOST}/r HTTP/1.1"), "", ""),
            &[Up("GET /r")],
            Open,
            &[("GET /r", b"")],
        ),
        case(
            "connect_authority",
            keyed(&format!("CONNECT {HOST}:443 HTTP/1.1"), "", ""),
            &[Kg(404, "no_route")],
            Open,
            &[],
        ),
        case(
            "connect_no_key",
            bare(&format!("CONNECT {HOST}:443 HTTP/1.1"), ""),
            &[Kg(404, "no_route")],
            Open,
            &[],
        ),
        case(
            "upgrade_no_key",
            bare(
                "GET /r HTTP/1.1",
                "Connection: upgrade\r\nUpgrade: websocket\r\n",
            ),
            &[Kg(403, "key_missing")],
            Open,
            &[],
        ),
        case(
            "asterisk_form",
            keyed("OPTIONS * HTTP/1.1", "", ""),
            &[Up("OPTIONS *")],
            Open,
            &[("OPTIONS *", b"")],
        ),
        case(
            "no_leading_slash",
            keyed("GET r HTTP/1.1", "", ""),
            &[Kg(404, "no_route")],
            Open,
            &[],
        ),
        case(
            "bad_method",
            keyed("G(T /r HTTP/1.1", "", ""),
            &[Http(400)],
            Close,
            &[],
        ),
        case(
            "bad_version",
            keyed("GET /r HTTP/1.2", "", ""),
            &[Http(400)],
            Close,
            &[],
        ),
        // --- Host (RFC 9112 §3.2) ------------------------------------------------------------
        case(
            "host_missing",
            format!("GET /r HTTP/1.1\r\nX-API-Key: {SECRET}\r\n\r\n"),
            &[Kg(400, "invalid_request")],
            Close,
            &[],
        ),
        case(
            "host_twice",
            keyed("GET /r HTTP/1.1", &format!("Host: {HOST}\r\n"), ""),
            &[Kg(400, "invalid_request")],
            Close,
            &[],
        ),
        case(
            "host_twice_differ",
            keyed("GET /r HTTP/1.1", "Host: evil.example\r\n", ""),
            &[Kg(400, "invalid_request")],
            Close,
            &[],
        ),
        case(
            "host_missing_http10",
            format!("GET /r HTTP/1.0\r\nX-API-Key: {SECRET}\r\n\r\n"),
            &[Up("GET /r")],
            Close,
            &[("GET /r", b"")],
        ),
        case(
            "host_twice_http10",
            keyed("GET /r HTTP/1.0", &format!("Host: {HOST}\r\n"), ""),
            &[Kg(400, "invalid_request")],
            Close,
            &[],
        ),
    ]
}

/// Runs one case; `Err` says what went wrong.
async fn run_case(addr: SocketAddr, record: Arc<Record>, case: Case) -> Result<(), String> {
    let name = case.name;
    let _ = record.take();
    let mut conn = RawConn::connect(addr).await;
    conn.send(case.send);
    for (i, want) in case.answers.iter().enumerate() {
        let got = conn
            .response()
            .await?
            .ok_or_else(|| format!("closed before answer {i} ({want:?})"))?;
        check_answer(&got, *want).map_err(|e| format!("answer {i}: {e}"))?;
    }
    match case.after {
        After::Close => conn.closed().await?,
        After::Open => {
            conn.send(keyed("GET /__after HTTP/1.1", "", "").to_vec());
            let got = conn
                .response()
                .await?
                .ok_or("closed; expected it to stay open")?;
            check_answer(&got, Up("GET /__after")).map_err(|e| format!("after: {e}"))?;
        }
    }
    let (seen, raw) = record.take();
    assert_upstream_clean(name, &seen, &raw);
    let got: Vec<(String, Vec<u8>)> = seen
        .iter()
        // A request whose body broke off never reached the upstream's application.
        .filter(|s| s.line != "GET /__after" && s.body.is_some())
        .map(|s| (s.line.clone(), s.body.clone().unwrap_or_default()))
        .collect();
    let want: Vec<(String, Vec<u8>)> = case
        .upstream
        .iter()
        .map(|(l, b)| (l.to_string(), b.to_vec()))
        .collect();
    if got != want {
        return Err(format!("the upstream saw {got:?}, expected {want:?}"));
    }
    Ok(())
}

fn check_answer(got: &Resp, want: Answer) -> Result<(), String> {
    let status = got.status.as_u16();
    let is_problem = got.header("content-type") == Some("application/problem+json");
    let ok = match want {
        Up(line) => status == 200 && got.text() == upstream_says(line),
        Kg(s, code) => status == s && is_problem && got.json()["code"].as_str() == Some(code),
        Http(s) => status == s && !is_problem && got.body.is_empty(),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected {want:?}, got {status} {:?} {:?}",
            got.headers,
            got.text()
        ))
    }
}

fn panic_text(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".into()),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn hostile_requests_get_a_clean_answer_and_keygate_keeps_serving() {
    let (addr, record) = gateway().await;
    let cases = cases();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let mut names = std::collections::HashSet::new();
    let mut failures = Vec::new();
    for case in cases {
        let name = case.name;
        assert!(names.insert(name), "case {name} twice");
        if std::env::var("HOSTILE_CASE").is_ok_and(|c| c != name) {
            continue;
        }
        let ran = tokio::spawn(run_case(addr, record.clone(), case)).await;
        match ran {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(format!("{name}: {e}")),
            Err(e) => failures.push(format!("{name}: panicked: {}", panic_text(e))),
        }
        assert_still_serving(addr, &record, name).await;
    }
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// HTTP/2, frame by frame
// ---------------------------------------------------------------------------------------------

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const H2_HEADERS: u8 = 0x1;
const H2_RST_STREAM: u8 = 0x3;
const H2_SETTINGS: u8 = 0x4;
const H2_GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const CANCEL: u32 = 0x8;
const PROTOCOL_ERROR: u32 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    assert!(len < 1 << 14, "one frame of at most 16 KiB");
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with a 7-bit prefix (string lengths, no Huffman).
fn hpack_len(out: &mut Vec<u8>, mut n: usize) {
    if n < 127 {
        out.push(n as u8);
        return;
    }
    out.push(127);
    n -= 127;
    while n >= 128 {
        out.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    out.push(n as u8);
}

/// A header block of "literal without indexing, new name" fields: any bytes, as sent.
fn hpack(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        hpack_len(&mut out, name.len());
        out.extend_from_slice(name);
        hpack_len(&mut out, value.len());
        out.extend_from_slice(value);
    }
    out
}

/// The header block of a keyed request for `path`, plus `extra` fields.
fn h2_keyed(method: &str, path: &str, extra: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut fields: Vec<(&[u8], &[u8])> = vec![
        (b":method", method.as_bytes()),
        (b":scheme", b"http"),
        (b":authority", HOST.as_bytes()),
        (b":path", path.as_bytes()),
        (b"x-api-key", SECRET.as_bytes()),
    ];
    fields.extend_from_slice(extra);
    hpack(&fields)
}

/// One frame as read: type, flags, stream, payload.
type Frame = (u8, u8, u32, Vec<u8>);

impl RawConn {
    /// The next HTTP/2 frame; `Ok(None)` at the end of the connection.
    async fn frame(&mut self) -> Result<Option<Frame>, String> {
        while self.pending.len() < 9 {
            if self.fill().await? == 0 {
                return Ok(None);
            }
        }
        let len = u32::from_be_bytes([0, self.pending[0], self.pending[1], self.pending[2]]);
        let len = len as usize;
        while self.pending.len() < 9 + len {
            if self.fill().await? == 0 {
                return Err("closed inside a frame".into());
            }
        }
        let head: Vec<u8> = self.pending.drain(..9).collect();
        let payload: Vec<u8> = self.pending.drain(..len).collect();
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        Ok(Some((head[3], head[4], stream, payload)))
    }

    /// Every frame until the connection ends (at most `limit` frames).
    async fn frames_to_end(&mut self, limit: usize) -> Vec<Frame> {
        let mut frames = Vec::new();
        for _ in 0..limit {
            match self.frame().await {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => return frames,
                Err(e) => panic!("{e}; frames so far: {:?}", kinds(&frames)),
            }
        }
        panic!("more than {limit} frames: {:?}", kinds(&frames));
    }

    /// Frames until one on `stream` ends it (END_STREAM or RST_STREAM), or a GOAWAY.
    async fn frames_of(&mut self, stream: u32) -> Vec<Frame> {
        let mut frames = Vec::new();
        for _ in 0..1_000 {
            let f = match self.frame().await {
                Ok(Some(f)) => f,
                Ok(None) => panic!("closed; frames so far: {:?}", kinds(&frames)),
                Err(e) => panic!("{e}; frames so far: {:?}", kinds(&frames)),
            };
            let ends = f.0 == H2_GOAWAY
                || (f.2 == stream && (f.0 == H2_RST_STREAM || f.1 & END_STREAM != 0));
            frames.push(f);
            if ends {
                return frames;
            }
        }
        panic!("too many frames: {:?}", kinds(&frames));
    }
}

impl RawConn {
    /// The payload of the HEADERS frame answering `stream` (its HPACK block); panics naming
    /// `what` and the frames read when the stream ends without one.
    async fn answer_head(&mut self, stream: u32, what: &str) -> Vec<u8> {
        let frames = self.frames_of(stream).await;
        frames
            .iter()
            .find(|f| f.0 == H2_HEADERS && f.2 == stream)
            .map(|f| f.3.clone())
            .unwrap_or_else(|| panic!("{what}: no answer: {:?}", kinds(&frames)))
    }
}

fn kinds(frames: &[Frame]) -> Vec<(u8, u32)> {
    frames.iter().map(|f| (f.0, f.2)).collect()
}

/// The error code of a RST_STREAM or GOAWAY frame.
fn error_code(f: &Frame) -> u32 {
    let at = if f.0 == H2_GOAWAY { 4 } else { 0 };
    u32::from_be_bytes(f.3[at..at + 4].try_into().unwrap())
}

/// An h2c connection with the preface and our (empty) SETTINGS sent.
async fn h2_raw(addr: SocketAddr) -> RawConn {
    let conn = RawConn::connect(addr).await;
    conn.send([H2_PREFACE, &h2_frame(H2_SETTINGS, 0, 0, &[])].concat());
    conn
}

/// A normal HTTP/2 request on a fresh connection still gets the upstream's 200.
async fn assert_h2_still_serving(addr: SocketAddr) {
    let mut h2 = H2::connect(addr).await;
    let resp = h2
        .send(h2_request(
            "GET",
            HOST,
            "/__h2",
            &[("x-api-key", SECRET)],
            empty(),
        ))
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), upstream_says("GET /__h2"));
}

/// CVE-2023-44487: streams opened and at once cancelled, a thousand in one write. keygate
/// (h2's limit of 20 streams reset before they are accepted) answers GOAWAY ENHANCE_YOUR_CALM
/// and closes; the upstream sees at most those 20.
#[tokio::test]
async fn h2_rapid_reset_gets_goaway() {
    const STREAMS: u32 = 1_000;
    let (addr, record) = gateway().await;
    let mut conn = h2_raw(addr).await;
    let block = h2_keyed("GET", "/rapid", &[]);
    let mut attack = Vec::new();
    for i in 0..STREAMS {
        let stream = 2 * i + 1;
        attack.extend(h2_frame(
            H2_HEADERS,
            END_HEADERS | END_STREAM,
            stream,
            &block,
        ));
        attack.extend(h2_frame(H2_RST_STREAM, 0, stream, &CANCEL.to_be_bytes()));
    }
    conn.send(attack);
    let frames = conn.frames_to_end(10_000).await;
    let goaway = frames
        .iter()
        .find(|f| f.0 == H2_GOAWAY)
        .unwrap_or_else(|| panic!("no GOAWAY: {:?}", kinds(&frames)));
    assert_eq!(
        error_code(goaway),
        ENHANCE_YOUR_CALM,
        "{:?}",
        kinds(&frames)
    );
    let answered = frames.iter().filter(|f| f.0 == H2_HEADERS).count();
    let (seen, raw) = record.take();
    assert_upstream_clean("rapid reset", &seen, &raw);
    let reached = seen.iter().filter(|s| s.line == "GET /rapid").count();
    assert!(
        reached <= 20 && answered <= 20,
        "{reached} of {STREAMS} cancelled streams reached the upstream, {answered} answered"
    );
    assert_h2_still_serving(addr).await;
    assert_still_serving(addr, &record, "rapid reset").await;
}

/// HTTP/2 carries header values as length-prefixed bytes, so a CR LF in one is no line break
/// there; forwarded on HTTP/1.1 it would be a smuggled header. h2 refuses it as a connection
/// error (GOAWAY PROTOCOL_ERROR, then close). A `transfer-encoding` in HTTP/2 (connection-
/// specific, so the request is malformed) with a smuggled request as its body: the stream is
/// reset (RST_STREAM PROTOCOL_ERROR) and the connection carries a normal request afterwards.
/// Nothing of either reaches the upstream.
#[tokio::test]
async fn h2_malformed_fields_are_refused() {
    let (addr, record) = gateway().await;
    let cases: [(&str, Vec<u8>, &[u8], u8); 2] = [
        (
            "crlf in a value",
            h2_keyed("GET", "/r", &[(b"x-note", b"a\r\nx-smuggled: 1")]),
            b"",
            H2_GOAWAY,
        ),
        (
            "transfer-encoding",
            h2_keyed("POST", "/r", &[(b"transfer-encoding", b"chunked")]),
            SMUGGLED.as_bytes(),
            H2_RST_STREAM,
        ),
    ];
    for (name, block, body, refusal) in cases {
        let mut conn = h2_raw(addr).await;
        if body.is_empty() {
            conn.send(h2_frame(H2_HEADERS, END_HEADERS | END_STREAM, 1, &block));
        } else {
            conn.send(h2_frame(H2_HEADERS, END_HEADERS, 1, &block));
            conn.send(h2_frame(0x0, END_STREAM, 1, body));
        }
        let frames = conn.frames_of(1).await;
        let last = frames.last().unwrap();
        let stream = if refusal == H2_GOAWAY { 0 } else { 1 };
        assert_eq!(
            (last.0, last.2, error_code(last)),
            (refusal, stream, PROTOCOL_ERROR),
            "{name}: {:?}",
            kinds(&frames)
        );
        assert!(
            !frames.iter().any(|f| f.0 == H2_HEADERS),
            "{name}: answered: {:?}",
            kinds(&frames)
        );
        if refusal == H2_GOAWAY {
            let rest = conn.frames_to_end(100).await;
            assert!(rest.is_empty(), "{name}: after GOAWAY: {:?}", kinds(&rest));
        } else {
            // The same connection: a normal request is answered 200 (HPACK 0x88 is ":status: 200").
            conn.send(h2_frame(
                H2_HEADERS,
                END_HEADERS | END_STREAM,
                3,
                &h2_keyed("GET", "/__same", &[]),
            ));
            let head = conn.answer_head(3, name).await;
            assert_eq!(head.first(), Some(&0x88), "{name}: not :status 200");
        }
        let (seen, raw) = record.take();
        assert_upstream_clean(name, &seen, &raw);
        let lines: Vec<&str> = seen.iter().map(|s| s.line.as_str()).collect();
        let want: &[&str] = if refusal == H2_GOAWAY {
            &[]
        } else {
            &["GET /__same"]
        };
        assert_eq!(lines, want, "{name}: what the upstream saw");
        assert_still_serving(addr, &record, name).await;
    }
    assert_h2_still_serving(addr).await;
}

/// The representations in an HPACK block (RFC 7541 §6), by their first bits: 'i' indexed,
/// 'a' literal added to the table, 'w' literal without indexing, 'n' literal never indexed,
/// 's' a table size update. Names and values are skipped, Huffman or not.
fn hpack_kinds(mut block: &[u8]) -> String {
    fn int(b: &mut &[u8], prefix: u8) -> usize {
        let max = (1usize << prefix) - 1;
        let mut n = usize::from(b[0]) & max;
        *b = &b[1..];
        if n == max {
            let mut shift = 0;
            loop {
                let byte = b[0];
                *b = &b[1..];
                n += usize::from(byte & 0x7f) << shift;
                shift += 7;
                if byte & 0x80 == 0 {
                    break;
                }
            }
        }
        n
    }
    fn string(b: &mut &[u8]) {
        let len = int(b, 7);
        *b = &b[len..];
    }
    let mut kinds = String::new();
    while !block.is_empty() {
        let first = block[0];
        let (kind, prefix) = match first {
            0x80..=0xff => ('i', 7),
            0x40..=0x7f => ('a', 6),
            0x20..=0x3f => ('s', 5),
            0x10..=0x1f => ('n', 4),
            _ => ('w', 4),
        };
        let index = int(&mut block, prefix);
        if matches!(kind, 'a' | 'n' | 'w') {
            if index == 0 {
                string(&mut block);
            }
            string(&mut block);
        }
        kinds.push(kind);
    }
    kinds
}

/// `x-request-id` differs on every response, so adding it to the connection's HPACK table
/// only costs an insert and evicts fields that do repeat: it goes as "never indexed", the one
/// such field of an answer (the upstream's own fields may be indexed).
#[tokio::test]
async fn h2_request_ids_are_not_added_to_the_hpack_table() {
    let (addr, _record) = gateway().await;
    let mut conn = h2_raw(addr).await;
    for stream in [1, 3, 5] {
        conn.send(h2_frame(
            H2_HEADERS,
            END_HEADERS | END_STREAM,
            stream,
            &h2_keyed("GET", "/__ids", &[]),
        ));
        let head = conn.answer_head(stream, "request id").await;
        let kinds = hpack_kinds(&head);
        assert_eq!(kinds.matches('n').count(), 1, "stream {stream}: {kinds}");
    }
}

/// keygate starts its HTTP/1.1 or its HTTP/2 server from a plain connection's first read. A
/// client whose first bytes are only the start of the HTTP/2 preface (a slow link, or a peer
/// splitting its writes) still gets HTTP/2; one whose HTTP/1.1 head comes a byte at first
/// still gets HTTP/1.1.
#[tokio::test]
async fn a_first_read_too_short_to_tell_the_protocol_still_gets_the_right_one() {
    let (addr, record) = gateway().await;
    for split in [1, 5, H2_PREFACE.len() - 1] {
        let mut conn = RawConn::connect(addr).await;
        conn.send(H2_PREFACE[..split].to_vec());
        tokio::time::sleep(Duration::from_millis(50)).await;
        conn.send(
            [
                &H2_PREFACE[split..],
                &h2_frame(H2_SETTINGS, 0, 0, &[]),
                &h2_frame(
                    H2_HEADERS,
                    END_HEADERS | END_STREAM,
                    1,
                    &h2_keyed("GET", "/__split", &[]),
                ),
            ]
            .concat(),
        );
        let head = conn
            .answer_head(1, &format!("preface split at {split}"))
            .await;
        // HPACK 0x88 is ":status: 200".
        assert_eq!(head.first(), Some(&0x88), "preface split at {split}");
    }
    let (seen, _) = record.take();
    assert_eq!(seen.iter().filter(|s| s.line == "GET /__split").count(), 3);

    let head = format!("GET /__dribbled HTTP/1.1\r\nHost: {HOST}\r\nX-API-Key: {SECRET}\r\n\r\n");
    let mut conn = RawConn::connect(addr).await;
    conn.send(head.as_bytes()[..1].to_vec());
    tokio::time::sleep(Duration::from_millis(50)).await;
    conn.send(head.as_bytes()[1..].to_vec());
    while !conn.pending.windows(4).any(|w| w == b"\r\n\r\n") {
        if matches!(conn.fill().await, Ok(0) | Err(_)) {
            break;
        }
    }
    let got = String::from_utf8_lossy(&conn.pending);
    assert!(got.starts_with("HTTP/1.1 200 "), "{got}");
}

// ---------------------------------------------------------------------------------------------
// Hostile peers on the other side
// ---------------------------------------------------------------------------------------------

/// keygate with its one target on `upstream`.
async fn gateway_to(upstream: SocketAddr) -> SocketAddr {
    start_keygate(&one_target(upstream)).await
}

/// An upstream that reads each request head, then hands the connection to `answer`.
async fn raw_upstream<F, Fut>(answer: F) -> SocketAddr
where
    F: Fn(TcpStream, String) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        for _ in 0..100 {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 1 << 16 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                answer(stream, String::from_utf8_lossy(&head).into_owned()).await;
            });
        }
    });
    addr
}

/// Reads a raw response head; returns it and the connection, with any body bytes pending.
async fn raw_head(conn: &mut RawConn) -> String {
    for _ in 0..1_000 {
        if let Some(i) = conn.pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = conn.pending.drain(..i + 4).collect();
            return String::from_utf8_lossy(&head).into_owned();
        }
        assert!(conn.fill().await.unwrap() > 0, "closed before a head");
    }
    panic!("no response head");
}

/// Reads until the connection ends; returns what came.
async fn raw_rest(conn: &mut RawConn) -> Vec<u8> {
    for _ in 0..100_000 {
        if conn.fill().await.unwrap() == 0 {
            return std::mem::take(&mut conn.pending);
        }
    }
    panic!("never ended");
}

/// An upstream that answers 200 with a 1 MB header (past hyper's 400 KB client buffer), or,
/// for `/many`, with 10,000 headers (past its 100): keygate answers 502 upstream_unavailable
/// and none of it reaches the client.
#[tokio::test]
async fn an_oversized_upstream_head_is_a_502() {
    let up = raw_upstream(|mut s, head| async move {
        let answer = if head.starts_with("GET /many ") {
            let many: String = (0..10_000).map(|i| format!("x-h{i}: v\r\n")).collect();
            format!("HTTP/1.1 200 OK\r\n{many}content-length: 0\r\n\r\n")
        } else {
            let big = "b".repeat(1 << 20);
            format!("HTTP/1.1 200 OK\r\nx-big: {big}\r\ncontent-length: 0\r\n\r\n")
        };
        let _ = s.write_all(answer.as_bytes()).await;
    })
    .await;
    let addr = gateway_to(up).await;
    for path in ["/big", "/many"] {
        let resp = get(addr, path, &[("x-api-key", SECRET)]).await;
        assert_problem(&resp, 502, "upstream_unavailable");
        assert!(
            !resp
                .headers
                .keys()
                .any(|k| k.as_str().starts_with("x-") && k.as_str() != "x-request-id"),
            "{path}: upstream headers came through: {:?}",
            resp.headers
        );
    }
    let resp = get(addr, "/big", &[]).await;
    assert_problem(&resp, 403, "key_missing");
    assert_no_keygate_panic();
}

/// An upstream that resets the connection after reading the request: 502 upstream_unavailable,
/// and keygate goes on serving.
#[tokio::test]
async fn an_upstream_reset_before_answering_is_a_502() {
    let addr = gateway_to(start_resetting_upstream().await).await;
    for _ in 0..3 {
        let resp = get(addr, "/r", &[("x-api-key", SECRET)]).await;
        assert_problem(&resp, 502, "upstream_unavailable");
    }
    assert_no_keygate_panic();
}

/// An upstream that sends a 200 head and 1000 of 1,000,000 body bytes (with `Content-Length`,
/// then chunked), then resets. The client has the 200 head by then; what it must not get is a
/// body that looks complete: keygate cuts the connection (HTTP/1.1) or resets the stream
/// (HTTP/2). keygate serves the next request.
/// A client that closes its side after 10 of the 100 bytes it announced: the request cannot
/// be completed, and that is the client's doing, so 400 `invalid_body` (not 502), on the read
/// side it still has open; the upstream never sees a whole request.
#[tokio::test]
async fn a_body_cut_short_by_the_client_is_a_400() {
    let (addr, record) = gateway().await;
    let mut conn = RawConn::connect(addr).await;
    conn.send(keyed(
        "POST /r HTTP/1.1",
        "Content-Length: 100\r\n",
        "0123456789",
    ));
    // Dropping the writer task's channel ends it, and its write half shuts down (FIN).
    let (closed, _) = tokio::sync::mpsc::unbounded_channel();
    drop(std::mem::replace(&mut conn.wr, closed));
    let resp = conn.response().await.unwrap().expect("an answer");
    assert_problem(&resp, 400, "invalid_body");
    let (seen, raw) = record.take();
    assert!(
        seen.iter().all(|s| s.body.is_none()),
        "the upstream got a whole request: {seen:?}"
    );
    assert_upstream_clean("cut short", &seen, &raw);
    assert_still_serving(addr, &record, "after a body cut short").await;
}

#[tokio::test]
async fn an_upstream_reset_mid_body_cuts_the_client_off() {
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let gate = release.clone();
    let up = raw_upstream(move |mut s, head| {
        let gate = gate.clone();
        async move {
            let chunked = head.starts_with("GET /chunked ");
            let framing = if chunked {
                "transfer-encoding: chunked"
            } else {
                "content-length: 1000000"
            };
            let mut out = format!("HTTP/1.1 200 OK\r\n{framing}\r\n\r\n").into_bytes();
            if chunked {
                out.extend_from_slice(b"3e8\r\n");
            }
            out.extend(std::iter::repeat_n(b'z', 1000));
            if chunked {
                out.extend_from_slice(b"\r\n");
            }
            if s.write_all(&out).await.is_err() {
                return;
            }
            // Reset only once the client has the head, so the cut is mid-body for sure.
            if let Ok(permit) = gate.acquire().await {
                permit.forget();
            }
            let _ = s.set_zero_linger();
        }
    })
    .await;
    let addr = gateway_to(up).await;
    for path in ["/length", "/chunked"] {
        let mut conn = RawConn::connect(addr).await;
        conn.send(keyed(&format!("GET {path} HTTP/1.1"), "", ""));
        let head = raw_head(&mut conn).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
        release.add_permits(1);
        let body = raw_rest(&mut conn).await;
        let zs = body.iter().filter(|&&b| b == b'z').count();
        assert!(zs <= 1000, "{path}: {zs} bytes");
        if path == "/length" {
            assert!(head.contains("content-length: 1000000"), "{head}");
            assert_eq!(body.len(), zs, "{path}: only body bytes");
        } else {
            assert!(
                !contains(&body, b"0\r\n\r\n"),
                "{path}: the chunked body was ended cleanly: {:?}",
                String::from_utf8_lossy(&body)
            );
        }
    }
    // HTTP/2: the body ends in an error, not a clean end of stream.
    let mut h2 = H2::connect(addr).await;
    let resp = h2
        .send_streaming(h2_request(
            "GET",
            HOST,
            "/length",
            &[("x-api-key", SECRET)],
            empty(),
        ))
        .await;
    assert_eq!(resp.status(), 200);
    release.add_permits(1);
    let body = within("the cut body", resp.into_body().collect()).await;
    assert!(body.is_err(), "HTTP/2 body ended cleanly");
    // Still serving: the same upstream, one more time, with the client reading to the cut.
    let mut conn = RawConn::connect(addr).await;
    conn.send(keyed("GET /length HTTP/1.1", "", ""));
    assert!(raw_head(&mut conn).await.starts_with("HTTP/1.1 200"));
    release.add_permits(1);
    let _ = raw_rest(&mut conn).await;
    assert_no_keygate_panic();
}

/// A client that asks for a 1 GB response and stops reading after the head: keygate buffers a
/// bounded amount (the upstream is held back by TCP flow control, not read into memory), serves
/// other clients meanwhile, and releases the upstream as soon as the client leaves.
#[tokio::test]
async fn a_client_that_stops_reading_holds_back_the_upstream() {
    const TOTAL: u64 = 1 << 30;
    const CHUNK: usize = 64 * 1024;
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (stopped_tx, mut stopped) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let counter = sent.clone();
    let up = start_upstream_with(move |req, _| {
        let (counter, stopped_tx) = (counter.clone(), stopped_tx.clone());
        async move {
            if req.uri().path() != "/huge" {
                return Response::new(full(upstream_says("GET /small")));
            }
            let (tx, body) = channel_body(1);
            tokio::spawn(async move {
                let block = Bytes::from(vec![b'h'; CHUNK]);
                let mut n = 0u64;
                while n < TOTAL {
                    if tx.send(block.clone()).await.is_err() {
                        break;
                    }
                    n += CHUNK as u64;
                    counter.store(n, std::sync::atomic::Ordering::SeqCst);
                }
                let _ = stopped_tx.send(n);
            });
            Response::new(body)
        }
    })
    .await;
    let addr = gateway_to(up.addr).await;
    let mut conn = RawConn::connect(addr).await;
    conn.send(keyed("GET /huge HTTP/1.1", "", ""));
    let head = raw_head(&mut conn).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // The upstream stalls: the count stops growing (polled, bounded), far below the total.
    let mut last = (0u64, 0usize);
    let start = std::time::Instant::now();
    for _ in 0..1_000 {
        let now = sent.load(std::sync::atomic::Ordering::SeqCst);
        last = if now == last.0 {
            (now, last.1 + 1)
        } else {
            (now, 0)
        };
        if last.1 >= 10 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the upstream kept sending: {now} bytes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(last.1 >= 10, "the upstream never stalled");
    assert!(
        last.0 < 64 << 20,
        "{} bytes buffered for a stalled client",
        last.0
    );

    // Others are served meanwhile.
    let resp = get(addr, "/small", &[("x-api-key", SECRET)]).await;
    assert_eq!(resp.text(), upstream_says("GET /small"));

    // The client leaves: keygate lets go of the upstream's response.
    drop(conn);
    let n = within("the upstream to be released", stopped.recv())
        .await
        .unwrap();
    assert!(n < TOTAL, "the whole body was sent");
    let resp = get(addr, "/small", &[("x-api-key", SECRET)]).await;
    assert_eq!(resp.status, 200);
    assert_no_keygate_panic();
}
