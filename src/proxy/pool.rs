//! Forward, its connections: the upstream connections, one pool per server worker, and the
//! HTTP/1.1 exchange on them.
//!
//! Each worker thread has its own pool (see `server::serve_workers`), so an upstream connection
//! is only used by one thread and the pool's lock is never contended. Connections are keyed by
//! the target's scheme and authority, reused newest first (the warmest socket), and go back to
//! the pool when the response body has been read to its end: [`PooledBody`] returns its
//! connection as soon as it has read the last byte. A connection whose body was abandoned, that
//! answered `101 Switching Protocols`, `Connection: close` or a body delimited by its close, or
//! that sent more than its response, is never reused.
//!
//! The exchange is our own HTTP/1.1 client (`forward/wire.rs` for the bytes), run inside the
//! request's task: the request head (and the first piece of a small body) goes out in one
//! `writev` from the connection's reused buffer, the response is read into the connection's
//! reused buffer, and its head and body are shared slices of it. hyper's client, which this
//! replaces (issue 18), handed every request to the connection's own task over a channel and
//! the response back over another, with allocations and a task wake-up each way.
//!
//! The request body streams while the response is read: an upstream may answer before the
//! upload ends (a refusal, or an echo). If the response ends first, the rest of the upload is
//! sent from a task of its own, and the connection is pooled once it is done.
//!
//! An idle connection has no task: whether the upstream closed it is seen when it is taken
//! (a read that must find nothing) and by the reaper every few seconds. A request that could
//! not be written at all on a pooled connection (its idle close raced our reuse) is retried once
//! on a new connection; a request that was written is never retried, since it may not be
//! idempotent.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::uri::{Authority, Scheme};
use http::{Request, Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::forward::body::Upload;
use super::forward::wire::{self, Chunk, Dechunk, Framing, Parsed, Sending};
use crate::tls::{Connector, Stream};

/// Idle upstream connections are kept this long: long enough to carry bursts, short enough to
/// be closed by us before a typical upstream's own idle timeout (60 s in nginx) closes them under
/// a request in flight.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(50);

/// Idle connections kept per upstream; more than this many finishing at once are closed.
const MAX_IDLE_PER_UPSTREAM: usize = 512;

/// The first read of a response takes up to this much; a read that fills it doubles the next,
/// up to [`READ_MAX`], so a large body streams in large pieces.
const READ_MIN: usize = 4096;
const READ_MAX: usize = 64 * 1024;

/// How long the rest of an upload the upstream answered early may take before the connection
/// is given up instead of pooled.
const LATE_UPLOAD_LIMIT: Duration = Duration::from_secs(60);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where a connection goes: the target's upstream scheme and authority (cheap to clone).
///
/// Compared and hashed as the config spells them: `Authority`'s own `Hash` feeds the hasher a
/// lowercased byte at a time, about 350 instructions at each checkout and each return (callgrind,
/// issue 18). Two targets spelling one host in different cases then keep two pools, which only
/// costs an idle connection.
#[derive(Clone, Debug)]
pub struct Upstream {
    pub scheme: Scheme,
    pub authority: Authority,
}

impl PartialEq for Upstream {
    fn eq(&self, other: &Upstream) -> bool {
        self.authority.as_str() == other.authority.as_str()
            && self.scheme.as_str() == other.scheme.as_str()
    }
}

impl Eq for Upstream {}

impl std::hash::Hash for Upstream {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.authority.as_str().hash(state);
        self.scheme.as_str().hash(state);
    }
}

/// One worker's upstream connections.
pub struct Pool {
    connector: Connector,
    /// foldhash: SipHash of the authority, a byte at a time (it hashes case-insensitively), was
    /// 1,000 instructions at each checkout and each return. The keys are the config's upstreams,
    /// not a client's input, so a hash without DoS resistance is safe here.
    idle: Mutex<HashMap<Upstream, Vec<Idle>, foldhash::fast::FixedState>>,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// One upstream connection and its buffers, which live as long as it does.
struct Conn {
    io: Stream,
    /// What has been read and not yet handed on.
    rbuf: BytesMut,
    /// The next read's size.
    read_size: usize,
    /// The request head and chunk framing being written.
    wbuf: Vec<u8>,
}

impl Conn {
    fn new(io: Stream) -> Conn {
        Conn {
            io,
            rbuf: BytesMut::new(),
            read_size: READ_MIN,
            wbuf: Vec::with_capacity(1024),
        }
    }

    /// An idle connection is still usable only if there is nothing to read on it: not the
    /// upstream's close, not stray bytes. One read that must not be ready (no waker needed:
    /// the next real poll registers the request's).
    fn still_open(&mut self) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        Pin::new(&mut self.io)
            .poll_read(&mut cx, &mut buf)
            .is_pending()
    }

    /// Reads what the socket has into `rbuf`; `Ok(0)` at the upstream's end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        SCRATCH.with_borrow_mut(|scratch| {
            let mut buf = ReadBuf::new(&mut scratch[..self.read_size]);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
            let n = buf.filled().len();
            self.rbuf.extend_from_slice(buf.filled());
            if n == self.read_size && self.read_size < READ_MAX {
                self.read_size *= 2;
            }
            Poll::Ready(Ok(n))
        })
    }
}

thread_local! {
    /// Where a worker's upstream reads land before they are copied to the connection's buffer:
    /// the crate forbids `unsafe`, so a read into a `BytesMut`'s spare capacity would have to
    /// zero it first, a memset of the whole read size for every read, even one that finds
    /// nothing (callgrind: 12,000 instructions a request). Copying what came costs its length
    /// only, and an idle connection's buffer holds no more than its data.
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; READ_MAX].into_boxed_slice());
}

impl Pool {
    pub fn new(connector: Connector) -> Arc<Pool> {
        Arc::new(Pool {
            connector,
            idle: Mutex::new(HashMap::default()),
        })
    }

    /// Sends `req` (origin-form URI; `added` holds `Host` and the fields keygate sets) to
    /// `upstream` on a pooled or new connection and returns once the response head is read.
    /// The response's body streams; its connection returns to the pool once the body is done.
    /// `upgrade`: the request asks to switch protocols, so a 101 is a valid answer (see
    /// [`PooledBody::take_upgraded`]). The request is taken apart before the future is made,
    /// so the future holds its parts once (see `Proxy::handle`).
    pub fn send(
        self: &Arc<Self>,
        upstream: Upstream,
        req: Request<Upload>,
        added: wire::Added,
        upgrade: bool,
    ) -> impl Future<Output = Result<Response<PooledBody>, BoxError>> + Send + use<'_> {
        let (mut parts, body) = req.into_parts();
        let sending = match body.size_hint().exact() {
            _ if body.is_end_stream() => Sending::Nothing,
            Some(n) => Sending::Length(n),
            // A body of unknown length on a method whose body has no meaning is not sent (as
            // hyper's client did): a chunked `GET` is how a smuggled request would travel.
            None if matches!(
                parts.method,
                http::Method::GET | http::Method::HEAD | http::Method::CONNECT
            ) =>
            {
                Sending::Nothing
            }
            None => Sending::Chunked,
        };
        let head_request = parts.method == http::Method::HEAD;
        let pooled = self.checkout(&upstream);
        async move {
            let (mut conn, reused) = match pooled {
                Some(conn) => (conn, true),
                None => (self.open(&upstream).await?, false),
            };
            conn.wbuf.clear();
            wire::encode_head(
                &mut conn.wbuf,
                &parts.method,
                &parts.uri,
                &parts.headers,
                &added,
                sending,
            );
            // Written: its room serves the next head this worker reads, and the lines' buffer
            // the next request's.
            crate::http::h1::maps::give_back(std::mem::take(&mut parts.headers));
            drop(added);
            // Boxed: the response this becomes is moved half a dozen times on its way to the
            // client (the proxy's phases, `respond`, the front), and inline the exchange (272
            // bytes) made each move that much longer (callgrind: ~50 `memcpy` calls a
            // request); one small allocation costs less.
            let mut ex = Box::new(Exchange {
                conn,
                wpos: 0,
                wdata: Bytes::new(),
                wtail: b"",
                written: 0,
                upload: (sending != Sending::Nothing).then_some(body),
                sending,
                sent: 0,
                sent_all: false,
                write_failed: None,
                interim: 0,
            });
            let head =
                match std::future::poll_fn(|cx| ex.poll_head(cx, head_request, upgrade)).await {
                    Err(Failure::Io(e)) if reused && ex.written == 0 => {
                        // The pooled connection was gone before a byte of the request reached
                        // it: the request is whole in `ex` (head, and any body piece taken), so
                        // try once more.
                        tracing::debug!(error = %e, "pooled upstream connection closed; retrying");
                        ex.conn.io = self.open(&upstream).await?.io;
                        ex.conn.rbuf.clear();
                        ex.write_failed = None;
                        std::future::poll_fn(|cx| ex.poll_head(cx, head_request, upgrade))
                            .await
                            .map_err(Failure::into_box)?
                    }
                    other => other.map_err(Failure::into_box)?,
                };
            let reading = match head.framing {
                Framing::Empty => Reading::Empty,
                Framing::Length(0) => Reading::Empty,
                Framing::Length(n) => Reading::Length(n),
                Framing::Chunked => Reading::Chunked(Dechunk::default()),
                Framing::Close => Reading::Close,
            };
            let upgraded = head.status == StatusCode::SWITCHING_PROTOCOLS;
            let mut resp = Response::new(PooledBody {
                ex: Some(ex),
                reading: if upgraded { Reading::Empty } else { reading },
                keep_alive: head.keep_alive && !upgraded,
                home: Some(Home {
                    pool: Arc::downgrade(self),
                    upstream,
                }),
            });
            *resp.status_mut() = head.status;
            *resp.headers_mut() = head.headers;
            Ok(resp)
        }
    }

    /// The newest idle connection to `upstream` that is still open.
    fn checkout(&self, upstream: &Upstream) -> Option<Conn> {
        let mut map = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = map.get_mut(upstream)?;
        while let Some(mut idle) = list.pop() {
            if idle.since.elapsed() <= IDLE_TIMEOUT && idle.conn.still_open() {
                return Some(idle.conn);
            }
        }
        None
    }

    /// A new connection to `upstream`. Boxed: a connect (and TLS handshake) is rare next to
    /// the requests that reuse a connection, and inline its future (1.2 KB) made every
    /// request's future, and each new client connection's, that much larger to copy.
    fn open<'a>(
        &'a self,
        upstream: &'a Upstream,
    ) -> Pin<Box<dyn Future<Output = Result<Conn, BoxError>> + Send + 'a>> {
        Box::pin(async move {
            let io = self
                .connector
                .open(&upstream.scheme, &upstream.authority)
                .await?;
            Ok(Conn::new(io))
        })
    }

    fn put_back(&self, upstream: Upstream, conn: Conn) {
        let mut map = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = map.entry(upstream).or_default();
        if list.len() < MAX_IDLE_PER_UPSTREAM {
            list.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// Closes connections idle longer than [`IDLE_TIMEOUT`] or closed by the upstream.
    pub fn reap(&self) {
        let mut map = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        for list in map.values_mut() {
            list.retain_mut(|i| i.since.elapsed() <= IDLE_TIMEOUT && i.conn.still_open());
        }
        map.retain(|_, list| !list.is_empty());
    }

    /// Idle connections held, for tests.
    pub fn idle_count(&self) -> usize {
        let map = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        map.values().map(Vec::len).sum()
    }
}

/// Reaps `pool` every few seconds until the pool is gone; runs on the pool's worker.
pub async fn reaper(pool: Weak<Pool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match pool.upgrade() {
            Some(p) => p.reap(),
            None => return,
        }
    }
}

/// Why an exchange failed.
enum Failure {
    /// The client's body: over `max_body`, or unreadable (`forward` answers 413 / 400).
    Upload(BoxError),
    /// The connection.
    Io(io::Error),
    /// The upstream's bytes.
    Wire(wire::WireError),
    /// The client's body did not match the length announced for it.
    Length,
}

impl Failure {
    fn into_box(self) -> BoxError {
        match self {
            Failure::Upload(e) => e,
            Failure::Io(e) => Box::new(e),
            Failure::Wire(e) => Box::new(e),
            Failure::Length => "request body length differs from its Content-Length".into(),
        }
    }
}

/// One request on one connection: the write side (head, body) and the read side's buffer.
struct Exchange {
    conn: Conn,
    /// Written so far of `conn.wbuf`.
    wpos: usize,
    /// The body piece being written after `wbuf`, and what follows it (a chunk's CR LF).
    wdata: Bytes,
    wtail: &'static [u8],
    /// Bytes of this request accepted by the socket.
    written: u64,
    /// The body still to be read from the client.
    upload: Option<Upload>,
    sending: Sending,
    /// Body bytes taken from the client.
    sent: u64,
    /// Everything is written and flushed.
    sent_all: bool,
    /// Writing failed; the upstream may still have answered, so reading goes on.
    write_failed: Option<io::Error>,
    /// Interim (1xx) answers skipped so far.
    interim: usize,
}

impl Exchange {
    fn pending_write(&self) -> bool {
        self.wpos < self.conn.wbuf.len() || !self.wdata.is_empty() || !self.wtail.is_empty()
    }

    /// Writes the request: `Ready(Ok)` once every byte of it is written and flushed.
    fn poll_upload(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Failure>> {
        loop {
            // Take the next body piece as soon as the previous one is written, before writing
            // what is pending: a small body then leaves with its head, in one `writev`.
            if self.wdata.is_empty()
                && self.wtail.is_empty()
                && let Some(upload) = self.upload.as_mut()
            {
                if self.wpos == self.conn.wbuf.len() {
                    self.conn.wbuf.clear();
                    self.wpos = 0;
                }
                match Pin::new(upload).poll_frame(cx) {
                    Poll::Ready(frame) => {
                        self.take(frame)?;
                        continue;
                    }
                    Poll::Pending if !self.pending_write() => {
                        ready!(Pin::new(&mut self.conn.io).poll_flush(cx)).map_err(Failure::Io)?;
                        return Poll::Pending;
                    }
                    Poll::Pending => {}
                }
            }
            if !self.pending_write() {
                ready!(Pin::new(&mut self.conn.io).poll_flush(cx)).map_err(Failure::Io)?;
                self.sent_all = true;
                return Poll::Ready(Ok(()));
            }
            let n = {
                let wbuf = &self.conn.wbuf[self.wpos..];
                let slices = [
                    io::IoSlice::new(wbuf),
                    io::IoSlice::new(&self.wdata),
                    io::IoSlice::new(self.wtail),
                ];
                ready!(Pin::new(&mut self.conn.io).poll_write_vectored(cx, &slices))
                    .map_err(Failure::Io)?
            };
            if n == 0 {
                return Poll::Ready(Err(Failure::Io(io::ErrorKind::WriteZero.into())));
            }
            self.written += n as u64;
            self.advance(n);
        }
    }

    /// Marks `n` written bytes done, across `wbuf`, `wdata` and `wtail`.
    fn advance(&mut self, mut n: usize) {
        let head = (self.conn.wbuf.len() - self.wpos).min(n);
        self.wpos += head;
        n -= head;
        let data = self.wdata.len().min(n);
        bytes::Buf::advance(&mut self.wdata, data);
        n -= data;
        self.wtail = &self.wtail[n.min(self.wtail.len())..];
    }

    /// Queues one frame of the client's body (or its end) for writing.
    fn take(&mut self, frame: Option<Result<Frame<Bytes>, BoxError>>) -> Result<(), Failure> {
        match frame {
            None => {
                self.upload = None;
                match self.sending {
                    Sending::Chunked => wire::last_chunk(&mut self.conn.wbuf, None),
                    Sending::Length(n) if n != self.sent => return Err(Failure::Length),
                    _ => {}
                }
            }
            Some(Err(e)) => return Err(Failure::Upload(e)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(data) => {
                    self.sent += data.len() as u64;
                    if let Sending::Length(n) = self.sending
                        && self.sent > n
                    {
                        return Err(Failure::Length);
                    }
                    if self.sending == Sending::Chunked {
                        wire::chunk_line(&mut self.conn.wbuf, data.len());
                        self.wtail = b"\r\n";
                    }
                    self.wdata = data;
                }
                Err(frame) => {
                    // Trailers end the body; only a chunked body can carry them.
                    if let Ok(trailers) = frame.into_trailers() {
                        self.upload = None;
                        match self.sending {
                            Sending::Chunked => {
                                wire::last_chunk(&mut self.conn.wbuf, Some(&trailers));
                            }
                            Sending::Length(n) if n != self.sent => return Err(Failure::Length),
                            _ => {}
                        }
                    }
                }
            },
        }
        Ok(())
    }

    /// Drives the upload, unless it is done or failed; an error of the connection is kept for
    /// later, since the upstream may have answered before it stopped reading.
    fn poll_upload_on(&mut self, cx: &mut Context<'_>) -> Result<(), Failure> {
        if self.sent_all || self.write_failed.is_some() {
            return Ok(());
        }
        match self.poll_upload(cx) {
            Poll::Ready(Err(Failure::Io(e))) => self.write_failed = Some(e),
            Poll::Ready(Err(other)) => return Err(other),
            Poll::Ready(Ok(())) | Poll::Pending => {}
        }
        Ok(())
    }

    /// Writes the request and reads until the final response head.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        head_request: bool,
        upgrade: bool,
    ) -> Poll<Result<wire::Head, Failure>> {
        self.poll_upload_on(cx)?;
        loop {
            if !self.conn.rbuf.is_empty() {
                match wire::parse_head(&mut self.conn.rbuf, head_request, upgrade)
                    .map_err(Failure::Wire)?
                {
                    Parsed::Final(head) => return Poll::Ready(Ok(head)),
                    Parsed::Interim if self.interim < wire::MAX_INTERIM => {
                        self.interim += 1;
                        continue;
                    }
                    Parsed::Interim => {
                        return Poll::Ready(Err(Failure::Wire(wire::WireError::Malformed(
                            "too many interim responses",
                        ))));
                    }
                    Parsed::Partial => {}
                }
            }
            match ready!(self.conn.poll_fill(cx)) {
                Ok(0) => {
                    let e = self.write_failed.take().unwrap_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "upstream closed the connection before a complete response head",
                        )
                    });
                    return Poll::Ready(Err(Failure::Io(e)));
                }
                Ok(_) => {}
                Err(e) => {
                    return Poll::Ready(Err(Failure::Io(self.write_failed.take().unwrap_or(e))));
                }
            }
        }
    }
}

/// Where the response body is.
enum Reading {
    /// No body (HEAD, 204, 304, a zero length, a 101), or nothing more of one.
    Empty,
    Length(u64),
    Chunked(Dechunk),
    Close,
    Done,
}

struct Home {
    pool: Weak<Pool>,
    upstream: Upstream,
}

/// An upstream response body, read straight from the connection by whoever polls it (hyper's
/// server, in the request's task). Its connection returns to the pool once the last byte is
/// read, and is closed if the body is dropped before that.
pub struct PooledBody {
    ex: Option<Box<Exchange>>,
    reading: Reading,
    keep_alive: bool,
    home: Option<Home>,
}

/// The error of a response body cut short.
fn cut_short() -> BoxError {
    "upstream closed the connection in the middle of the response body".into()
}

impl PooledBody {
    /// The connection of a `101 Switching Protocols`, and what the upstream sent after the
    /// 101's head: the upstream's end of the tunnel.
    pub fn take_upgraded(&mut self) -> Option<(Stream, Bytes)> {
        self.home = None;
        self.ex.take().map(|mut ex| {
            let early = ex.conn.rbuf.split().freeze();
            (ex.conn.io, early)
        })
    }

    /// The body is read: the connection goes back to the pool if it can carry another
    /// request (after the rest of the upload, if the upstream answered before it ended).
    fn finish(&mut self) {
        self.reading = Reading::Done;
        let (Some(ex), Some(home)) = (self.ex.take(), self.home.take()) else {
            return;
        };
        if !self.keep_alive || ex.write_failed.is_some() || !ex.conn.rbuf.is_empty() {
            return;
        }
        if ex.sent_all {
            if let Some(pool) = home.pool.upgrade() {
                pool.put_back(home.upstream, ex.conn);
            }
            return;
        }
        // The response ended but the request has not: finish it from a task of its own, so
        // the connection is pooled only when free and no other request waits behind it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let mut ex = ex;
            runtime.spawn(async move {
                let sent = tokio::time::timeout(
                    LATE_UPLOAD_LIMIT,
                    std::future::poll_fn(|cx| ex.poll_upload(cx)),
                )
                .await;
                if let Ok(Ok(())) = sent
                    && let Some(pool) = home.pool.upgrade()
                {
                    pool.put_back(home.upstream, ex.conn);
                }
            });
        }
    }

    /// The next piece of the body from what is buffered, if there is one.
    fn buffered(&mut self) -> Result<Option<Frame<Bytes>>, BoxError> {
        let Some(ex) = self.ex.as_mut() else {
            return Ok(None);
        };
        let rbuf = &mut ex.conn.rbuf;
        match &mut self.reading {
            Reading::Length(left) if !rbuf.is_empty() => {
                let n = usize::try_from(*left).unwrap_or(usize::MAX).min(rbuf.len());
                let data = rbuf.split_to(n).freeze();
                *left -= n as u64;
                if *left == 0 {
                    self.finish();
                }
                Ok(Some(Frame::data(data)))
            }
            Reading::Chunked(dechunk) => match dechunk.decode(rbuf)? {
                Chunk::Data(data) => Ok(Some(Frame::data(data))),
                Chunk::Trailers(t) => {
                    // The last frame: hyper's server may not ask for the end after it.
                    self.finish();
                    Ok(Some(Frame::trailers(t)))
                }
                Chunk::End => {
                    self.finish();
                    Ok(None)
                }
                Chunk::More => Ok(None),
            },
            Reading::Close if !rbuf.is_empty() => Ok(Some(Frame::data(rbuf.split().freeze()))),
            _ => Ok(None),
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(ex) = this.ex.as_mut() else {
            return Poll::Ready(None);
        };
        // An upload the upstream answered before it ended goes on while the answer streams.
        if let Err(e) = ex.poll_upload_on(cx) {
            this.keep_alive = false;
            this.ex = None;
            return Poll::Ready(Some(Err(e.into_box())));
        }
        loop {
            match &this.reading {
                Reading::Empty | Reading::Done => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Reading::Length(_) | Reading::Chunked(_) | Reading::Close => {}
            }
            match this.buffered() {
                Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(None) if matches!(this.reading, Reading::Done) => return Poll::Ready(None),
                Ok(None) => {}
                Err(e) => {
                    this.ex = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            let Some(ex) = this.ex.as_mut() else {
                return Poll::Ready(None);
            };
            match ready!(ex.conn.poll_fill(cx)) {
                Ok(0) if matches!(this.reading, Reading::Close) => {
                    this.keep_alive = false;
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.ex = None;
                    return Poll::Ready(Some(Err(cut_short())));
                }
                Ok(_) => {}
                Err(e) => {
                    this.ex = None;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.reading, Reading::Empty | Reading::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.reading {
            Reading::Empty | Reading::Done => SizeHint::with_exact(0),
            Reading::Length(n) => SizeHint::with_exact(n),
            Reading::Chunked(_) | Reading::Close => SizeHint::default(),
        }
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body with nothing to read is never polled: it is done all the same. Any other
        // body dropped before its end leaves the rest on the connection, which then closes.
        if matches!(self.reading, Reading::Empty) {
            self.finish();
        }
    }
}
