//! keygate's own HTTP/1.1 server, for the requests nearly every API client sends: HTTP/1.1,
//! no body, no upgrade, no `Expect`, the whole head in what has been read. A connection known
//! to speak HTTP/1.1 (its first bytes in clear, ALPN `http/1.1` under TLS) starts here; the
//! first request that is anything else (a body, an upgrade, HTTP/1.0, a head cut short by the
//! read, a head hyper would refuse) is handed with the rest of the connection to hyper's
//! HTTP/1.1 server, bytes and all, so every rule of the protocol's harder corners
//! stays hyper's. The answers are written the way hyper writes them (the same framing, `date`,
//! `connection: close` rules), from the same handler.
//!
//! Why: hyper's server costs about 12,000 instructions a keep-alive request on top of the
//! handler (callgrind, issue 18): its dispatcher, the body channel, the read and write buffer
//! strategies. This one parses with the same `httparse`, builds the same `http::Request`,
//! writes head and body in one `writev`, and runs the handler inline.

use std::convert::Infallible;
use std::future::Future;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body, Frame};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::body::RequestBody;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// hyper's limit on a request's header lines; more goes to hyper, which refuses it.
const MAX_HEADERS: usize = 100;

/// A read's size: a request head is rarely more than a few hundred bytes.
const READ_SIZE: usize = 8192;

/// A body chunk at least this long is written from where it is, not copied behind the head.
const COPY_LIMIT: usize = 4096;

/// How this server's turn on a connection ended.
#[derive(Debug)]
pub(super) enum Next {
    /// The connection is done: the client closed it, asked to, an answer said so, the server
    /// is shutting down, or it failed.
    Done,
    /// A request this server leaves to hyper: these bytes (that request's onwards) come first.
    Hyper(Bytes),
    /// Between two requests, with nothing of the next one read, `leave` said the connection
    /// should move, to this worker (a less loaded one).
    Leave(usize),
}

/// Serves requests on `io` until [`Next`]. `first` is what has been read already; `closing`
/// turns true when the connection should close once no request is in flight (shutdown, idle);
/// `leave` is asked after each answer that keeps the connection open, when nothing more has
/// been read, which worker it should go to, if any ([`Next::Leave`]).
pub(super) async fn serve<S, F, Fut, B>(
    io: &mut S,
    first: &[u8],
    call: &F,
    closing: &AtomicBool,
    max_head: usize,
    leave: &(dyn Fn() -> Option<usize> + Sync),
) -> Result<Next, Infallible>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Fn(Request<RequestBody>) -> Fut,
    Fut: Future<Output = Result<Response<B>, Infallible>>,
    B: Body<Data = Bytes, Error: Into<BoxError>>,
{
    let mut rbuf = BytesMut::with_capacity(first.len().max(1024));
    rbuf.extend_from_slice(first);
    let mut wbuf = Vec::with_capacity(1024);
    let mut spans = Vec::new();
    loop {
        if rbuf.is_empty() {
            let read = std::future::poll_fn(|cx| {
                if closing.load(Ordering::Acquire) {
                    return Poll::Ready(Ok(0));
                }
                poll_read(io, &mut rbuf, cx)
            });
            match read.await {
                Ok(0) | Err(_) => return Ok(Next::Done),
                Ok(_) => {}
            }
        } else if closing.load(Ordering::Acquire) {
            return Ok(Next::Done);
        }
        let Some(head) = Head::parse(&rbuf, max_head, &mut spans) else {
            return Ok(Next::Hyper(rbuf.freeze()));
        };
        let bytes = rbuf.split_to(head.len).freeze();
        let Some((req, keep_alive)) = head.request(&bytes, &spans) else {
            // A target or field `http` refuses: hyper answers it (400), from its first byte.
            let mut all = BytesMut::with_capacity(bytes.len() + rbuf.len());
            all.extend_from_slice(&bytes);
            all.extend_from_slice(&rbuf);
            return Ok(Next::Hyper(all.freeze()));
        };
        // The head's, not the request's: a request borrowed here is kept in this future
        // (264 bytes) across the handler's wait, although it has moved into the handler.
        let method = head.method.clone();
        // The handler runs while the socket is watched: a client that goes away ends the
        // request (hyper does the same), and bytes that come meanwhile (a pipelined request)
        // wait in the buffer.
        let resp = {
            let mut handling = pin!(call(req));
            let polled = std::future::poll_fn(|cx| {
                if let Poll::Ready(Ok(resp)) = handling.as_mut().poll(cx) {
                    return Poll::Ready(Some(resp));
                }
                while rbuf.len() < max_head {
                    match poll_read(io, &mut rbuf, cx) {
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(None),
                        Poll::Ready(Ok(_)) => continue,
                        Poll::Pending => break,
                    }
                }
                Poll::Pending
            });
            match polled.await {
                Some(resp) => resp,
                None => return Ok(Next::Done),
            }
        };
        let keep_alive = keep_alive && !closing.load(Ordering::Acquire);
        match answer(io, &mut wbuf, &method, resp, keep_alive).await {
            Ok(true) => KEPT_ALIVE.set(true),
            Ok(false) | Err(_) => return Ok(Next::Done),
        }
        if rbuf.is_empty()
            && let Some(to) = leave()
        {
            return Ok(Next::Leave(to));
        }
        // A long run of pipelined requests answered at once must not keep the worker from its
        // other connections.
        tokio::task::consume_budget().await;
    }
}

/// Reads what the socket has onto `rbuf`; `Ok(0)` at the end of the stream.
fn poll_read<S: AsyncRead + Unpin>(
    io: &mut S,
    rbuf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    // Through a per-worker buffer: the crate forbids `unsafe`, so reading into the spare
    // capacity would mean zeroing it first, a memset of the whole read size every time.
    SCRATCH.with_borrow_mut(|scratch| {
        let mut buf = ReadBuf::new(&mut scratch[..]);
        ready!(Pin::new(io).poll_read(cx, &mut buf))?;
        rbuf.extend_from_slice(buf.filled());
        Poll::Ready(Ok(buf.filled().len()))
    })
}

thread_local! {
    /// Whether this thread answered a request and kept its connection open since
    /// [`kept_alive`] was last asked.
    static KEPT_ALIVE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread has answered a request on a connection that stays open since this was
/// last asked: its next request is coming (see `listener::serve_workers`).
pub(super) fn kept_alive() -> bool {
    KEPT_ALIVE.replace(false)
}

/// Notes an answer on a connection that stays open, from a server other than this one (an
/// HTTP/2 stream's: its connection outlives every stream).
pub(super) fn note_kept_alive() {
    KEPT_ALIVE.set(true);
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; READ_SIZE].into_boxed_slice());
}

/// Fields that make a request hyper's: a body (`Content-Length`, `Transfer-Encoding`, even
/// `Content-Length: 0`: rare, and hyper's rules for the pair are the smuggling defence), an
/// upgrade, an `Expect: 100-continue` to answer.
const NOT_OURS: [&str; 4] = ["content-length", "transfer-encoding", "expect", "upgrade"];

/// Where a header line's name and value are in the head.
#[derive(Clone, Copy)]
struct Span {
    name: (usize, usize),
    value: (usize, usize),
}

/// A request head this server takes: where its parts are in the bytes read.
struct Head {
    len: usize,
    method: Method,
    path: (usize, usize),
}

impl Head {
    /// The head at the start of `buf`, if it is whole and one this server takes; its header
    /// lines' places in `spans`.
    fn parse(buf: &[u8], max_head: usize, spans: &mut Vec<Span>) -> Option<Head> {
        let mut lines = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let len = match req.parse_with_uninit_headers(buf, &mut lines) {
            Ok(httparse::Status::Complete(len)) if len <= max_head => len,
            _ => return None,
        };
        if req.version != Some(1) {
            return None;
        }
        let method = Method::from_bytes(req.method?.as_bytes()).ok()?;
        if method == Method::CONNECT {
            return None;
        }
        let at = |s: &[u8]| {
            let start = s.as_ptr() as usize - buf.as_ptr() as usize;
            (start, start + s.len())
        };
        let path = at(req.path?.as_bytes());
        spans.clear();
        for line in req.headers.iter() {
            if NOT_OURS.iter().any(|n| line.name.eq_ignore_ascii_case(n)) {
                return None;
            }
            spans.push(Span {
                name: at(line.name.as_bytes()),
                value: at(line.value),
            });
        }
        Some(Head { len, method, path })
    }

    /// The request, and whether the connection stays open after it; `None` for a target or a
    /// field name that `http` refuses.
    fn request(&self, head: &Bytes, spans: &[Span]) -> Option<(Request<RequestBody>, bool)> {
        let uri = Uri::from_maybe_shared(head.slice(self.path.0..self.path.1)).ok()?;
        // Room for the two fields the proxy puts back on an upgrade (`Connection`, `Upgrade`);
        // the ones it sets on every request are written as head lines (`wire::Added`).
        let mut headers = maps::take(spans.len() + 2);
        let mut keep_alive = true;
        for span in spans {
            let name = names::get(&head[span.name.0..span.name.1])?;
            let value = HeaderValue::from_maybe_shared(head.slice(span.value.0..span.value.1));
            let value = value.ok()?;
            if name == header::CONNECTION && has_token(&value, "close") {
                keep_alive = false;
            }
            headers.append(name, value);
        }
        let mut req = Request::new(RequestBody::Empty);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = headers;
        Some((req, keep_alive))
    }
}

/// Whether a `Connection`-style list carries `token`.
pub(crate) fn has_token(value: &HeaderValue, token: &str) -> bool {
    tokens(value).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// The tokens of a comma-separated list such as `Connection` or `Transfer-Encoding`, without
/// their optional whitespace; none of a value that is not visible ASCII (`to_str`'s rule).
/// On bytes: `str`'s `split` and `trim` (a char searcher, Unicode whitespace) were ~650
/// instructions a request that says `Connection: close` (callgrind).
pub(crate) fn tokens(value: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    let list = if value.to_str().is_ok() {
        value.as_bytes()
    } else {
        &[]
    };
    list.split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// How the answer's body goes on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Framing {
    Length(u64),
    Chunked,
}

/// Writes `resp` to the request made with `method`; `Ok(true)` if the connection stays open.
async fn answer<S, B>(
    io: &mut S,
    wbuf: &mut Vec<u8>,
    method: &Method,
    resp: Response<B>,
    keep_alive: bool,
) -> io::Result<bool>
where
    S: AsyncWrite + Unpin,
    B: Body<Data = Bytes, Error: Into<BoxError>>,
{
    let (parts, body) = resp.into_parts();
    let status = parts.status;
    if status.is_informational() {
        // No handler of ours gives one to a request without an upgrade (the upstream client
        // skips interim answers and refuses a 101 nobody asked for); hyper answers 500 to it.
        wbuf.clear();
        let empty = HeaderMap::new();
        let status = StatusCode::INTERNAL_SERVER_ERROR;
        write_head(wbuf, method, status, &empty, None, false);
        write_all(io, wbuf, None).await?;
        return Ok(false);
    }
    let length = if body.is_end_stream() {
        None
    } else {
        Some(body.size_hint().exact())
    };
    wbuf.clear();
    let (framing, keep_alive, trailers) =
        write_head(wbuf, method, status, &parts.headers, length, keep_alive);
    maps::give_back(parts.headers);
    // In an `Option`, to be dropped before the answer's last bytes are written, as hyper
    // drops it: the proxy's body records the request (access log, metrics, usage) when
    // dropped, and a client that has its answer may ask at once for what was recorded.
    let mut body = pin!(Some(body));
    let mut left = match framing {
        Framing::Length(0) => {
            // Dropped unread, as hyper does: `HEAD`, 204, 304, an empty body.
            body.set(None);
            write_all(io, wbuf, None).await?;
            return Ok(keep_alive);
        }
        Framing::Length(n) => n,
        Framing::Chunked => u64::MAX,
    };
    loop {
        let Some(mut b) = body.as_mut().as_pin_mut() else {
            return Ok(false);
        };
        let frame = match std::future::poll_fn(|cx| Poll::Ready(b.as_mut().poll_frame(cx))).await {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                // Send what is ready while the body waits.
                if !wbuf.is_empty() {
                    write_all(io, wbuf, None).await?;
                }
                std::future::poll_fn(|cx| b.as_mut().poll_frame(cx)).await
            }
        };
        let ended = b.is_end_stream();
        let data = match frame {
            None => {
                body.set(None);
                if framing == Framing::Chunked {
                    wbuf.extend_from_slice(b"0\r\n\r\n");
                    write_all(io, wbuf, None).await?;
                    return Ok(keep_alive);
                }
                // A body shorter than its length: the client cannot tell where it ends.
                write_all(io, wbuf, None).await?;
                return Ok(false);
            }
            Some(Err(_)) => {
                // The answer cannot be finished; what is sent so far is all the client gets.
                body.set(None);
                write_all(io, wbuf, None).await?;
                return Ok(false);
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(frame) => {
                    if framing == Framing::Chunked {
                        body.set(None);
                        last_chunk(wbuf, frame, trailers.as_deref());
                        write_all(io, wbuf, None).await?;
                        return Ok(keep_alive);
                    }
                    continue;
                }
            },
        };
        if data.is_empty() {
            if ended && framing == Framing::Chunked {
                body.set(None);
                wbuf.extend_from_slice(b"0\r\n\r\n");
                write_all(io, wbuf, None).await?;
                return Ok(keep_alive);
            }
            continue;
        }
        let data = match framing {
            Framing::Length(_) => {
                let n = (data.len() as u64).min(left);
                left -= n;
                data.slice(..n as usize)
            }
            Framing::Chunked => {
                chunk_line(wbuf, data.len());
                data
            }
        };
        let end = left == 0 || ended;
        if end {
            body.set(None);
        }
        if data.len() < COPY_LIMIT {
            wbuf.extend_from_slice(&data);
        } else {
            write_all(io, wbuf, Some(&data)).await?;
        }
        if framing == Framing::Chunked {
            wbuf.extend_from_slice(b"\r\n");
        }
        if end {
            if framing == Framing::Chunked {
                wbuf.extend_from_slice(b"0\r\n\r\n");
            }
            write_all(io, wbuf, None).await?;
            // A body that stopped short of its length (`left` > 0 at its end) leaves the
            // client waiting for bytes that will not come: close.
            return Ok(keep_alive && (framing == Framing::Chunked || left == 0));
        }
    }
}

/// The status line and header lines of an answer, as hyper writes them: a body's length from
/// the body (or a `content-length` the handler set), chunked when unknown, `content-length: 0`
/// for an empty body, none for `HEAD`, 204 and 304; `date`; `connection: close` when the
/// connection closes after it. Gives the framing, whether the connection stays open, and the
/// trailer fields the answer announced (`Trailer`), the only ones a chunked body may end with.
fn write_head(
    out: &mut Vec<u8>,
    method: &Method,
    status: StatusCode,
    headers: &HeaderMap,
    length: Option<Option<u64>>,
    mut keep_alive: bool,
) -> (Framing, bool, Option<Vec<HeaderName>>) {
    let head_only = method == Method::HEAD;
    let no_body = matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
    if status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let mut framing = None;
    let mut wrote_date = false;
    let mut close_said = false;
    let mut trailers: Option<Vec<HeaderName>> = None;
    for (name, value) in headers {
        match *name {
            header::CONTENT_LENGTH => {
                if framing.is_some() {
                    continue;
                }
                match length {
                    Some(Some(n)) => framing = Some(Framing::Length(n)),
                    Some(None) => match value.to_str().ok().and_then(|v| v.parse::<u64>().ok()) {
                        Some(n) => framing = Some(Framing::Length(n)),
                        None => continue,
                    },
                    // No body to send: the length is the answer to `HEAD`'s, else left out.
                    None if head_only => framing = Some(Framing::Length(0)),
                    None => continue,
                }
            }
            header::TRANSFER_ENCODING => {
                if head_only || no_body || framing.is_some() {
                    continue;
                }
                framing = Some(Framing::Chunked);
                out.extend_from_slice(b"transfer-encoding: ");
                out.extend_from_slice(value.as_bytes());
                if !has_token(value, "chunked") {
                    out.extend_from_slice(b", chunked");
                }
                out.extend_from_slice(b"\r\n");
                continue;
            }
            header::CONNECTION if has_token(value, "close") => {
                keep_alive = false;
                close_said = true;
            }
            header::DATE => wrote_date = true,
            header::TRAILER => {
                if head_only || no_body {
                    continue;
                }
                let names = value.to_str().unwrap_or("").split(',');
                let names = names.filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok());
                trailers.get_or_insert_with(Vec::new).extend(names);
            }
            _ => {}
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let framing = match framing {
        Some(f) => f,
        None => match length {
            Some(None) if !head_only && !no_body => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Framing::Chunked
            }
            Some(None) => Framing::Length(0),
            None | Some(Some(0)) => {
                if !head_only && !no_body {
                    out.extend_from_slice(b"content-length: 0\r\n");
                }
                Framing::Length(0)
            }
            Some(Some(n)) => {
                if !no_body {
                    out.extend_from_slice(b"content-length: ");
                    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
                Framing::Length(n)
            }
        },
    };
    let framing = if head_only || no_body {
        Framing::Length(0)
    } else {
        framing
    };
    if !keep_alive && !close_said {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if !wrote_date {
        out.extend_from_slice(b"date: ");
        date::extend(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let trailers = if framing == Framing::Chunked {
        trailers
    } else {
        None
    };
    (framing, keep_alive, trailers)
}

/// The line that opens a chunk of `len` bytes: its size in hex.
pub(crate) fn chunk_line(out: &mut Vec<u8>, len: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = len;
    loop {
        i -= 1;
        digits[i] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk, with the trailer fields of `frame` that the answer announced and that may
/// be trailers at all (hyper's rule).
fn last_chunk(out: &mut Vec<u8>, frame: Frame<Bytes>, announced: Option<&[HeaderName]>) {
    out.extend_from_slice(b"0\r\n");
    if let (Ok(fields), Some(announced)) = (frame.into_trailers(), announced) {
        for (name, value) in &fields {
            if announced.contains(name) && may_trail(name) {
                out.extend_from_slice(name.as_str().as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(value.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Fields that must not come as trailers (hyper's list).
fn may_trail(name: &HeaderName) -> bool {
    !matches!(
        *name,
        header::AUTHORIZATION
            | header::CACHE_CONTROL
            | header::CONTENT_ENCODING
            | header::CONTENT_LENGTH
            | header::CONTENT_RANGE
            | header::CONTENT_TYPE
            | header::HOST
            | header::MAX_FORWARDS
            | header::SET_COOKIE
            | header::TRAILER
            | header::TRANSFER_ENCODING
            | header::TE
    )
}

/// Writes `wbuf` and then `more`, all of it; `wbuf` is left empty.
async fn write_all<S: AsyncWrite + Unpin>(
    io: &mut S,
    wbuf: &mut Vec<u8>,
    more: Option<&Bytes>,
) -> io::Result<()> {
    let (mut a, mut b) = (0usize, 0usize);
    let more: &[u8] = more.map_or(&[], |m| &m[..]);
    while a < wbuf.len() || b < more.len() {
        let slices = [IoSlice::new(&wbuf[a..]), IoSlice::new(&more[b..])];
        let n =
            std::future::poll_fn(|cx| Pin::new(&mut *io).poll_write_vectored(cx, &slices)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_a = n.min(wbuf.len() - a);
        a += from_a;
        b += n - from_a;
    }
    wbuf.clear();
    Ok(())
}

/// Header maps emptied after use, per worker, for the next head read on either side: each new
/// map is two allocations, and one sized too small grows (rehashes) as the proxy adds fields.
pub(crate) mod maps {
    use std::cell::RefCell;

    use http::HeaderMap;

    /// Maps kept per worker; more are dropped.
    const KEPT: usize = 64;
    /// A map with room for more fields than this (a huge request's) is not kept.
    const LARGEST: usize = 64;

    thread_local! {
        static SPARE: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
    }

    /// An empty map with room for `fields`.
    pub(crate) fn take(fields: usize) -> HeaderMap {
        let mut map = SPARE
            .with_borrow_mut(Vec::pop)
            .unwrap_or_else(|| HeaderMap::with_capacity(fields.max(16)));
        map.reserve(fields);
        map
    }

    /// Gives `map` back once its head is written or parsed into something else.
    pub(crate) fn give_back(mut map: HeaderMap) {
        if map.capacity() > LARGEST {
            return;
        }
        map.clear();
        SPARE.with_borrow_mut(|spare| {
            if spare.len() < KEPT {
                spare.push(map);
            }
        });
    }
}

/// Header names made once per worker: `HeaderName::from_bytes` allocates every name outside
/// the standard list (`X-API-Key`, say) each time it is parsed.
mod names {
    use std::cell::RefCell;

    use http::HeaderName;

    /// Enough for the custom fields a worker's clients send; a longer name is not kept.
    const KEPT: usize = 16;
    const LONGEST: usize = 40;

    thread_local! {
        static SEEN: RefCell<(Vec<HeaderName>, usize)> = const { RefCell::new((Vec::new(), 0)) };
    }

    /// The name `raw` spells (any case), `None` if it is not a valid one.
    pub(super) fn get(raw: &[u8]) -> Option<HeaderName> {
        if raw.len() > LONGEST {
            return HeaderName::from_bytes(raw).ok();
        }
        SEEN.with_borrow_mut(|(seen, next)| {
            if let Some(n) = seen
                .iter()
                .find(|n| n.as_str().as_bytes().eq_ignore_ascii_case(raw))
            {
                return Some(n.clone());
            }
            let name = HeaderName::from_bytes(raw).ok()?;
            // Replaced in turn once full, so a client's junk names cannot keep the slots.
            if seen.len() < KEPT {
                seen.push(name.clone());
            } else {
                seen[*next] = name.clone();
                *next = (*next + 1) % KEPT;
            }
            Some(name)
        })
    }
}

/// The `date` field's value, formatted once a second per worker (as hyper caches it).
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    /// `Sun, 06 Nov 1994 08:49:37 GMT`
    const LEN: usize = 29;

    thread_local! {
        static NOW: RefCell<(u64, [u8; LEN])> = const { RefCell::new((u64::MAX, [0; LEN])) };
    }

    pub(super) fn extend(out: &mut Vec<u8>) {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        NOW.with_borrow_mut(|(at, text)| {
            if *at != secs {
                let formatted = httpdate::fmt_http_date(now);
                if formatted.len() == LEN {
                    text.copy_from_slice(formatted.as_bytes());
                    *at = secs;
                }
            }
            out.extend_from_slice(&text[..]);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The head `write_head` writes, with the `date` line taken out, and its framing.
    fn head(
        method: Method,
        status: u16,
        fields: &[(&str, &str)],
        length: Option<Option<u64>>,
        keep_alive: bool,
    ) -> (String, Framing, bool) {
        let mut headers = HeaderMap::new();
        for (k, v) in fields {
            headers.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let status = StatusCode::from_u16(status).unwrap();
        let mut out = Vec::new();
        let (framing, keep, _) =
            write_head(&mut out, &method, status, &headers, length, keep_alive);
        let text = String::from_utf8(out).unwrap();
        let date = text
            .lines()
            .find(|l| l.starts_with("date: "))
            .expect("a date line");
        assert!(httpdate::parse_http_date(&date[6..]).is_ok(), "{date}");
        (text.replace(&format!("{date}\r\n"), ""), framing, keep)
    }

    /// A request's method and an answer's status, fields and body length; the head and
    /// framing expected.
    type Case = (
        Method,
        u16,
        &'static [(&'static str, &'static str)],
        Option<Option<u64>>,
        &'static str,
        Framing,
    );

    /// The framing rules hyper's server applies, applied the same way.
    #[test]
    fn answers_are_framed_by_hyper_s_rules() {
        let cases: &[Case] = &[
            (
                Method::GET,
                200,
                &[],
                Some(Some(5)),
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
                Framing::Length(5),
            ),
            (
                Method::GET,
                200,
                &[],
                Some(None),
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                Framing::Chunked,
            ),
            (
                Method::GET,
                200,
                &[],
                None,
                "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
                Framing::Length(0),
            ),
            // The handler's length is written as it gave it, for a body of unknown size too.
            (
                Method::GET,
                200,
                &[("content-length", "7")],
                Some(None),
                "HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n",
                Framing::Length(7),
            ),
            // HEAD: the length of the body a GET would get, no body.
            (
                Method::HEAD,
                200,
                &[("content-length", "42")],
                None,
                "HTTP/1.1 200 OK\r\ncontent-length: 42\r\n\r\n",
                Framing::Length(0),
            ),
            (
                Method::HEAD,
                200,
                &[],
                Some(None),
                "HTTP/1.1 200 OK\r\n\r\n",
                Framing::Length(0),
            ),
            (
                Method::GET,
                204,
                &[],
                Some(Some(3)),
                "HTTP/1.1 204 No Content\r\n\r\n",
                Framing::Length(0),
            ),
            (
                Method::GET,
                304,
                &[("etag", "\"x\"")],
                None,
                "HTTP/1.1 304 Not Modified\r\netag: \"x\"\r\n\r\n",
                Framing::Length(0),
            ),
            (
                Method::GET,
                599,
                &[],
                None,
                "HTTP/1.1 599 <none>\r\ncontent-length: 0\r\n\r\n",
                Framing::Length(0),
            ),
            // A length on an empty answer is dropped (hyper's rule: it cannot be true).
            (
                Method::GET,
                200,
                &[("content-length", "9")],
                None,
                "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
                Framing::Length(0),
            ),
        ];
        for (method, status, fields, length, want, framing) in cases {
            let got = head(method.clone(), *status, fields, *length, true);
            assert_eq!(
                (got.0.as_str(), got.1, got.2),
                (*want, *framing, true),
                "{method} {status} {fields:?}"
            );
        }
    }

    /// `connection: close` when the connection closes after the answer, unless the answer
    /// says it already; an answer saying it closes the connection.
    #[test]
    fn the_close_is_said_once() {
        let (text, _, keep) = head(Method::GET, 200, &[], None, false);
        assert_eq!(
            (text.matches("connection: close").count(), keep),
            (1, false)
        );
        let (text, _, keep) = head(Method::GET, 400, &[("connection", "close")], None, true);
        assert_eq!(
            (text.matches("connection: close").count(), keep),
            (1, false)
        );
        let (text, _, keep) = head(
            Method::GET,
            200,
            &[("connection", "keep-alive")],
            None,
            true,
        );
        assert_eq!((text.matches("close").count(), keep), (0, true));
    }

    /// Trailers go out only as announced in `Trailer`, and never the fields that may not trail.
    #[test]
    fn only_announced_trailers_are_sent() {
        let mut fields = HeaderMap::new();
        fields.insert("x-sum", HeaderValue::from_static("1"));
        fields.insert("x-other", HeaderValue::from_static("2"));
        fields.insert(header::CONTENT_TYPE, HeaderValue::from_static("a/b"));
        let announced = [HeaderName::from_static("x-sum"), header::CONTENT_TYPE];
        let mut out = Vec::new();
        last_chunk(&mut out, Frame::trailers(fields.clone()), Some(&announced));
        assert_eq!(out, b"0\r\nx-sum: 1\r\n\r\n");
        out.clear();
        last_chunk(&mut out, Frame::trailers(fields), None);
        assert_eq!(out, b"0\r\n\r\n");
    }

    /// A list's tokens are matched without case and without the whitespace around them, empty
    /// items skipped; a value that is not visible ASCII has none.
    #[test]
    fn list_tokens_are_read_on_bytes_as_they_were_on_str() {
        let value = |s: &[u8]| HeaderValue::from_bytes(s).unwrap();
        let of = |s: &[u8]| tokens(&value(s)).map(<[u8]>::to_vec).collect::<Vec<_>>();
        assert_eq!(
            of(b" keep-alive ,\tClose,, x-a "),
            [b"keep-alive".to_vec(), b"Close".to_vec(), b"x-a".to_vec()]
        );
        assert!(has_token(&value(b"Keep-Alive, \tCLOSE\t"), "close"));
        assert!(!has_token(&value(b"closed, unclose"), "close"));
        assert!(!has_token(&value(b"close, caf\xc3\xa9"), "close"));
        assert_eq!(of(b""), Vec::<Vec<u8>>::new());
    }

    /// A head is ours only whole, HTTP/1.1 and without a body, an upgrade or `Expect`.
    #[test]
    fn only_bodiless_http_1_1_heads_are_ours() {
        let ours = |head: &str| Head::parse(head.as_bytes(), 8192, &mut Vec::new()).is_some();
        assert!(ours("GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(ours(
            "DELETE /x?y=1 HTTP/1.1\r\nHost: a\r\nX-Api-Key: k\r\n\r\n"
        ));
        for not in [
            "GET / HTTP/1.1\r\nHost: a\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        ] {
            assert!(!ours(not), "{not:?}");
        }
        let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "x".repeat(100));
        assert!(
            Head::parse(long.as_bytes(), 64, &mut Vec::new()).is_none(),
            "past max_head"
        );
    }

    /// A worker learns that it answered a request on a connection that stays open (it then
    /// yields its core before sleeping, expecting the next one); a `Connection: close` answer,
    /// a new connection per request, does not count.
    #[tokio::test]
    async fn a_kept_alive_answer_is_noted_for_the_worker() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let call = |_req: Request<RequestBody>| async {
            Ok::<_, Infallible>(Response::new(http_body_util::Full::new(Bytes::from("ok"))))
        };
        for (req, kept) in [
            ("GET / HTTP/1.1\r\nHost: a\r\n\r\n", true),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                false,
            ),
        ] {
            let _ = kept_alive();
            let (mut io, mut client) = tokio::io::duplex(4096);
            client.write_all(req.as_bytes()).await.unwrap();
            let closing = AtomicBool::new(false);
            let never = || None;
            let serving = serve(&mut io, &[], &call, &closing, 8192, &never);
            let reading = async {
                let mut got = [0u8; 1024];
                let n = client.read(&mut got).await.unwrap();
                assert!(String::from_utf8_lossy(&got[..n]).ends_with("ok"));
                // The client goes: the server's next read ends its turn.
                drop(client);
            };
            let (served, ()) = tokio::join!(serving, reading);
            assert!(matches!(served, Ok(Next::Done)));
            assert_eq!(kept_alive(), kept, "{req:?}");
            assert!(!kept_alive(), "asking resets it");
        }
    }
}
