//! Every port's front door, the same for the proxy, the admin API and the metrics listener:
//! accept TCP, optionally TLS (ALPN h2 / http/1.1), then HTTP/1.1 (keep-alive, upgrades) or
//! HTTP/2 (h2 over TLS, h2c with prior knowledge in clear) on the same port, then hand each
//! request to the port's [`Handler`]. Which of hyper's two servers takes a connection is known
//! before its first request: ALPN says it under TLS, the first read in clear (see [`speaks`]);
//! only a connection too short yet to tell goes to hyper-util's sniffing server. The edge limits
//! come from `[server]` and are read when the listener starts: `max_connections`,
//! `header_read_timeout`, `max_header_bytes` (431), `max_streams`, `idle_timeout`, and RFC 9112
//! §3.2's one `Host` per HTTP/1.1 request (else 400 `invalid_request` and a close). Stops
//! accepting on shutdown and lets connections in flight finish, up to `shutdown_timeout`.
//!
//! [`serve_workers`] runs that loop on one thread per core, each a single-threaded tokio runtime
//! accepting from the same listening socket, the way nginx runs worker processes: a connection
//! and everything it does (its requests, its upstream connections from the worker's own pool)
//! stay on one thread, so no task is stolen, no waker crosses threads and no upstream connection
//! is shared between threads. [`serve`] runs it as a task of the caller's runtime.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, HOST};
use http::{HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::{Body as HttpBody, Incoming};
use hyper::rt::{Read, Write};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::body::RequestBody;
use super::h1;
use super::problem::Problem;
use crate::http::request_id;
use crate::state::Published;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `Box::pin(future)`, with the future written straight into its box: `Box::pin` of a future
/// made first copied it whole (kilobytes: a connection's, or a stream's with the handler's
/// inside) from the stack into the box (callgrind: ~660 instructions of `memcpy` a new
/// connection). A macro, not a function: a function's argument is made before the call, and
/// the copy stays (measured).
macro_rules! boxed {
    ($future:expr) => {
        Box::into_pin(Box::write(Box::new_uninit(), $future))
    };
}

/// What a port does with a request that passed the front: the proxy's, the admin API's and the
/// metrics listener's request handlers. Any `Fn(Request, &Connection) -> impl Future` is one.
pub trait Handler: Send + Sync + 'static {
    type Body: HttpBody<Data = Bytes, Error: Into<BoxError>> + Send + 'static;
    type Future: Future<Output = Response<Self::Body>> + Send + 'static;
    fn call(&self, req: Request<RequestBody>, conn: &Connection) -> Self::Future;
}

impl<T, F, B> Handler for T
where
    T: Fn(Request<RequestBody>, &Connection) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: HttpBody<Data = Bytes, Error: Into<BoxError>> + Send + 'static,
{
    type Body = B;
    type Future = F;
    fn call(&self, req: Request<RequestBody>, conn: &Connection) -> F {
        self(req, conn)
    }
}

/// The connection a request came on, as its handler sees it.
pub struct Connection {
    pub peer: SocketAddr,
    /// How the client reached us: `http` or `https`.
    pub proto: &'static str,
    /// Its requests in flight, for the idle timeout; a handler whose response outlives its
    /// future (a streamed body, an upgraded tunnel) holds it for as long.
    pub activity: Arc<Activity>,
}

/// Counts a listener's open connections (the proxy's `keygate_open_connections`).
pub trait Gauge: Send + Sync {
    fn opened(&self);
    fn closed(&self);
}

/// A port: its name in logs, the published config its limits are read from, its TLS.
#[derive(Clone)]
pub struct Front {
    name: &'static str,
    published: Arc<Published>,
    tls: Option<TlsAcceptor>,
    /// Where this port's `handshake_timeout` is in the config (`[server.tls]` by default).
    handshake_timeout: HandshakeTimeout,
}

/// Reads a port's TLS `handshake_timeout` from the config in force.
pub type HandshakeTimeout = fn(&crate::snapshot::Snapshot) -> Option<std::time::Duration>;

fn server_handshake_timeout(snap: &crate::snapshot::Snapshot) -> Option<std::time::Duration> {
    snap.server.tls.as_ref().map(|t| t.handshake_timeout)
}

impl Front {
    /// A plain-HTTP port called `name` in logs (`proxy`, `admin`, `metrics`).
    pub fn new(name: &'static str, published: Arc<Published>) -> Front {
        Front {
            name,
            published,
            tls: None,
            handshake_timeout: server_handshake_timeout,
        }
    }

    /// Reads the TLS handshake's time limit with `read` instead (`[admin.tls]`'s, say).
    pub fn with_handshake_timeout(mut self, read: HandshakeTimeout) -> Front {
        self.handshake_timeout = read;
        self
    }

    /// With `tls`, every connection must complete a TLS handshake within the port's
    /// `handshake_timeout` first (`[server.tls]`'s unless [`Front::with_handshake_timeout`]).
    pub fn with_tls(mut self, tls: Option<TlsAcceptor>) -> Front {
        self.tls = tls;
        self
    }

    /// `[server] max_connections`, shared by all workers. Read at start: changing it needs a
    /// restart. Each port has its own, so a flood on one does not lock the others out.
    fn connection_limit(&self) -> Arc<Semaphore> {
        let max = self.published.load().server.max_connections;
        Arc::new(Semaphore::new(usize::try_from(max).unwrap_or(usize::MAX)))
    }
}

/// What one accept loop serves with: the handler, and what else is its (the proxy gives each
/// worker thread its own handler, connection count and upstream pool reaper).
pub struct Worker<H> {
    handler: H,
    gauge: Option<Arc<dyn Gauge>>,
    beside: Vec<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl<H: Handler> Worker<H> {
    pub fn new(handler: H) -> Worker<H> {
        Worker {
            handler,
            gauge: None,
            beside: Vec::new(),
        }
    }

    /// Counts its open connections in `gauge`.
    pub fn counted(mut self, gauge: Arc<dyn Gauge>) -> Worker<H> {
        self.gauge = Some(gauge);
        self
    }

    /// Runs `task` on the same runtime as the accept loop, until that runtime ends.
    pub fn beside(mut self, task: impl Future<Output = ()> + Send + 'static) -> Worker<H> {
        self.beside.push(Box::pin(task));
        self
    }
}

/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Open connections per worker, and each worker's inbox for connections handed to it.
///
/// All workers accept from one socket, and the kernel wakes whichever is waiting: often the one
/// that is already busy, so a burst of new connections can land 3:1 on one thread while the
/// other idles (seen with wrk's 32 connections). A worker that holds at least two connections
/// more than the least loaded one passes a connection over, at the first moment it can without
/// losing a byte or making the other worker redo work ([`Stage`]): a plain HTTP/1.1 connection
/// between two requests, an HTTP/2 one after its first read, a TLS one at accept. Handing over
/// every busy worker's new connections at accept cost the connection-per-request case its
/// throughput and doubled its p99 (each hand-over is a wake-up of the other worker and a wait
/// for its turn on a core, for a connection that ends after one answer; docs/performance.md): a
/// connection moved between two requests has shown it lives on, so one move serves many.
///
/// A socket per worker (`SO_REUSEPORT`) was tried for issue 18 and dropped: the kernel then
/// picks the worker by a hash of the addresses, busy or not, where the shared socket is taken
/// by whichever worker is free; with a new connection per request it cost 19% of the
/// throughput (docs/performance.md).
struct Balance {
    load: Box<[AtomicUsize]>,
    inbox: Box<[mpsc::UnboundedSender<Handed>]>,
}

impl Balance {
    /// The worker to hand a new connection to, if `me` is too busy for it.
    fn elsewhere(&self, me: usize) -> Option<usize> {
        let mine = self.load[me].load(Ordering::Relaxed);
        let (least, load) = self
            .load
            .iter()
            .map(|l| l.load(Ordering::Relaxed))
            .enumerate()
            .min_by_key(|&(_, l)| l)?;
        (least != me && mine >= load + 2).then_some(least)
    }
}

/// A connection passed to another worker, with its place under `max_connections` and its
/// count in that worker's load (counted when it is handed over, not when the worker gets round
/// to its inbox: counted late, a burst of new connections, wrk opening 32 at once, all went to
/// the worker whose count had not moved yet, which then served 24 of them and the other 8).
struct Handed {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    occupied: Occupied,
    stage: Stage,
}

/// How far a connection had got when it was handed over.
#[derive(Debug)]
enum Stage {
    /// Just accepted: nothing read (a TLS connection, whose handshake is still to come).
    Accepted,
    /// A plain connection whose first read (these bytes) says it speaks HTTP/2.
    Http2(Box<[u8]>),
    /// A plain HTTP/1.1 connection between two requests on our own server: nothing of the next
    /// one read.
    BetweenRequests,
}

/// A worker's way to pass its connections to a less loaded one.
#[derive(Clone)]
struct Mover {
    balance: Arc<Balance>,
    me: usize,
}

impl Mover {
    /// The worker a connection of this one should move to now, if any.
    fn destination(&self) -> Option<usize> {
        self.balance.elsewhere(self.me)
    }

    /// Passes `held` to worker `to`, at `stage`. A connection that cannot be passed (its socket
    /// cannot be taken off this worker, or `to` has stopped, which only happens at shutdown)
    /// is closed, as a shutdown would close it.
    fn pass(&self, to: usize, held: Held<TcpStream>, peer: SocketAddr, stage: Stage) {
        let Held { io, slot, .. } = held;
        let Slot {
            permit, occupied, ..
        } = slot;
        if self.send(to, io, peer, permit, stage).is_some() {
            tracing::debug!(%peer, "closing a connection for a worker that has stopped");
        }
        // This worker's count of it ends here: it is the other's now.
        drop(occupied);
    }

    /// Sends `stream` to worker `to`, counted there from now; gives it back if `to` has
    /// stopped.
    fn send(
        &self,
        to: usize,
        stream: TcpStream,
        peer: SocketAddr,
        permit: OwnedSemaphorePermit,
        stage: Stage,
    ) -> Option<(TcpStream, OwnedSemaphorePermit)> {
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "cannot pass a connection on");
                return None;
            }
        };
        let handed = Handed {
            stream,
            peer,
            permit,
            occupied: Occupied::new(&self.balance, to),
            stage,
        };
        match self.balance.inbox[to].send(handed) {
            Ok(()) => None,
            // Its count there goes with `_`.
            Err(mpsc::error::SendError(handed)) => TcpStream::from_std(handed.stream)
                .ok()
                .map(|s| (s, handed.permit)),
        }
    }
}

/// A worker's place in a [`Balance`].
struct Seat {
    mover: Mover,
    inbox: mpsc::UnboundedReceiver<Handed>,
}

/// Counts one open connection of a worker while it lives.
struct Occupied(Arc<Balance>, usize);

impl Occupied {
    fn new(balance: &Arc<Balance>, worker: usize) -> Occupied {
        balance.load[worker].fetch_add(1, Ordering::Relaxed);
        Occupied(balance.clone(), worker)
    }
}

impl Drop for Occupied {
    fn drop(&mut self) {
        self.0.load[self.1].fetch_sub(1, Ordering::Relaxed);
    }
}

/// What one open client connection holds: its place under `max_connections`, its count in its
/// worker's load and in its port's [`Gauge`]. Released when dropped; taken apart when the
/// connection moves to another worker (see [`Mover`]).
struct Slot {
    permit: OwnedSemaphorePermit,
    occupied: Option<Occupied>,
    _gauge: Option<Counted>,
}

impl Slot {
    fn new(
        permit: OwnedSemaphorePermit,
        occupied: Option<Occupied>,
        gauge: Option<Arc<dyn Gauge>>,
    ) -> Slot {
        Slot {
            permit,
            occupied,
            _gauge: gauge.map(Counted::new),
        }
    }
}

/// One open connection in a [`Gauge`], while it lives.
struct Counted(Arc<dyn Gauge>);

impl Counted {
    fn new(gauge: Arc<dyn Gauge>) -> Counted {
        gauge.opened();
        Counted(gauge)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.closed();
    }
}

/// A client socket with its [`Slot`]: the slot lives exactly as long as the socket, so the
/// connection is counted whoever holds it: hyper while it speaks HTTP, or an upgraded
/// connection's tunnel after hyper has handed the socket over (which ends hyper's connection
/// future long before the client goes). Every call passes straight through, but for a plain
/// connection's first read (see [`Prefetch`]).
struct Held<S> {
    io: S,
    slot: Slot,
    prefetch: Option<Prefetch>,
    /// The connection's; says whether it became a tunnel (see `poll_shutdown`).
    activity: Arc<Activity>,
}

/// A plain connection's first bytes, read in one call. hyper-util's HTTP/2 sniff asks the socket
/// for exactly the 24 bytes of the preface, so an HTTP/1.1 connection paid a second `recvfrom`
/// for the rest of its first request's head: one syscall more per request when every request
/// comes on a new connection (nginx reads the head in one). Reading up to 4 KiB here serves the
/// sniff and then hyper from memory.
struct Prefetch {
    /// What the read got, exactly as many bytes; `None` before the read.
    got: Option<Box<[u8]>>,
    /// Bytes of `got` already handed out.
    at: usize,
}

/// Enough for a typical request head (nginx's `client_header_buffer_size` is 1 KiB); a longer
/// one is read on as usual.
const PREFETCH: usize = 4096;

thread_local! {
    /// Where a worker's first reads land before the bytes they got are copied out: a zeroed
    /// 4 KiB buffer per connection (the crate forbids `unsafe`, so no uninitialised one) was a
    /// memset of 4 KiB for every new connection.
    static FIRST_READ: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; PREFETCH].into_boxed_slice());
}

impl Prefetch {
    fn new() -> Prefetch {
        Prefetch { got: None, at: 0 }
    }

    /// A prefetch whose read has been made, elsewhere (see `Stage::Http2`).
    fn read(got: Box<[u8]>) -> Prefetch {
        Prefetch {
            got: Some(got),
            at: 0,
        }
    }

    /// Makes the one read, if not made yet; the bytes it got.
    fn poll_fill<S: AsyncRead + Unpin>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<&[u8]>> {
        if self.got.is_none() {
            let got = FIRST_READ.with_borrow_mut(|scratch| {
                let mut first = ReadBuf::new(scratch);
                std::task::ready!(Pin::new(io).poll_read(cx, &mut first))?;
                Poll::Ready(Ok::<_, std::io::Error>(Box::<[u8]>::from(first.filled())))
            });
            self.got = Some(std::task::ready!(got)?);
        }
        Poll::Ready(Ok(self.left()))
    }

    /// The bytes read and not handed out yet (none before the read).
    fn left(&self) -> &[u8] {
        self.got.as_deref().map_or(&[], |got| &got[self.at..])
    }
}

impl<S: AsyncRead + Unpin> Held<S> {
    /// Makes the prefetch's read now (nothing without a prefetch): see [`Held::prefetched`].
    fn poll_prefetch(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.prefetch {
            Some(pre) => pre.poll_fill(&mut self.io, cx).map_ok(|_| ()),
            None => Poll::Ready(Ok(())),
        }
    }

    /// The bytes read ahead and not handed out yet (empty at the end of the stream).
    fn prefetched(&self) -> &[u8] {
        self.prefetch.as_ref().map_or(&[], Prefetch::left)
    }

    /// Takes the bytes read ahead: from now on reads go to the socket.
    fn take_prefetched(&mut self) -> Box<[u8]> {
        match self.prefetch.take() {
            Some(Prefetch {
                got: Some(got),
                at: 0,
            }) => got,
            Some(pre) => pre.left().into(),
            None => Box::default(),
        }
    }
}

/// `AsyncWrite`'s writes and flush for a wrapper that changes nothing about writing: each goes
/// to its `io` field (`Held`, `Rewound`; each says its own `poll_shutdown`).
macro_rules! writes_through_io {
    () => {
        #[inline]
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.io).poll_write(cx, buf)
        }

        #[inline]
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
        }

        #[inline]
        fn is_write_vectored(&self) -> bool {
            self.io.is_write_vectored()
        }

        #[inline]
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }
    };
}

/// A stream with bytes already read put back in front of it: what our own HTTP/1.1 server read
/// and leaves to hyper's.
struct Rewound<S> {
    head: Bytes,
    io: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewound<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.head.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = buf.remaining().min(self.head.len());
        buf.put_slice(&self.head[..n]);
        bytes::Buf::advance(&mut self.head, n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewound<S> {
    writes_through_io!();

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Held<S> {
    #[inline]
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let Some(pre) = &mut this.prefetch else {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        };
        // A reader asking for more than the prefetch holds needs no copy.
        if pre.got.is_none() && buf.remaining() >= PREFETCH {
            this.prefetch = None;
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let left = std::task::ready!(pre.poll_fill(&mut this.io, cx))?;
        let n = buf.remaining().min(left.len());
        buf.put_slice(&left[..n]);
        let all = n == left.len();
        pre.at += n;
        if all {
            this.prefetch = None;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Held<S> {
    writes_through_io!();

    /// hyper shuts the socket's sending side down before it drops a connection it closes (a
    /// `Connection: close` answer, an idle or graceful close, HTTP/2's end after GOAWAY). The
    /// drop closes the socket right after, and `close` sends the same FIN, so that `shutdown`
    /// was one syscall per connection more than nginx makes (it closes without one); a TLS
    /// connection's close_notify is written by the TLS layer before it gets here. A tunnel is
    /// the exception: when the upstream stops sending, the client must see the end of the
    /// stream while it may still send, which only a real `shutdown` does.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if !self.activity.is_tunnel() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Serves `listener` on `workers` threads until `shutdown` completes, then drains every
/// worker's connections and returns once all workers have stopped. `worker(i)` is called here,
/// once per thread, for what thread `i` serves with.
pub async fn serve_workers<H: Handler>(
    listener: TcpListener,
    workers: NonZeroUsize,
    front: Front,
    mut worker: impl FnMut(usize) -> Worker<H>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    // Out of this runtime's reactor, so each worker can register its own handle to the socket.
    let socket = listener.into_std()?;
    nodelay_for_all(&socket);
    let limit = front.connection_limit();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (senders, mut inboxes): (Vec<_>, Vec<_>) = (0..workers.get())
        .map(|_| mpsc::unbounded_channel())
        .unzip();
    let balance = Arc::new(Balance {
        load: (0..workers.get()).map(|_| AtomicUsize::new(0)).collect(),
        inbox: senders.into(),
    });
    let mut stopped = Vec::with_capacity(workers.get());
    for (i, inbox) in inboxes.drain(..).enumerate() {
        let socket = socket.try_clone()?;
        let serves = worker(i);
        let front = front.clone();
        let limit = limit.clone();
        let mut stop = stop_rx.clone();
        let seat = Seat {
            mover: Mover {
                balance: balance.clone(),
                me: i,
            },
            inbox,
        };
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        // A worker that has just answered on a connection that stays open yields its core
        // before it sleeps in `epoll_wait`: the gate shares the machine with its upstream and
        // its clients, and the next request is theirs to produce. Asleep, it is woken with a
        // delay of its own (34 µs on average, up to 5.8 ms under load, `perf sched latency`) at
        // three times nginx's rate of context switches; yielded, it stays runnable and finds
        // the request when the core comes back. Keep-alive: +5-8% throughput, p99 4.2 -> 1.1-1.6
        // ms. A worker serving a new connection per request does not yield: its next event is
        // a new connection, which the yield only delayed (p99 2.1 -> 3.5 ms). Alone on its
        // core, the yield returns at once. docs/performance.md, issue 18's seventh round.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(|| {
                if h1::kept_alive() {
                    std::thread::yield_now();
                }
            })
            .build()?;
        std::thread::Builder::new()
            .name(format!("keygate-worker-{i}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(socket) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!(worker = i, error = %e, "worker cannot use the listener");
                            return;
                        }
                    };
                    let stop = async move {
                        let _ = stop.wait_for(|s| *s).await;
                    };
                    accept_loop(listener, front, serves, stop, limit, Some(seat)).await;
                });
                // Dropping the runtime here ends what is left (idle upstream connections).
                drop(runtime);
                let _ = done_tx.send(());
            })?;
        stopped.push(done_rx);
    }
    drop(socket);
    shutdown.await;
    let _ = stop_tx.send(true);
    for done in stopped {
        let _ = done.await;
    }
    Ok(())
}

/// Serves `listener` on the caller's runtime until `shutdown` completes, then drains
/// connections.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    front: Front,
    worker: Worker<H>,
    shutdown: impl Future<Output = ()>,
) {
    let limit = front.connection_limit();
    nodelay_for_all(&listener);
    accept_loop(listener, front, worker, shutdown, limit, None).await;
}

/// Small responses must not wait for Nagle's algorithm: `TCP_NODELAY` on the listening socket,
/// which Linux copies to every socket accepted from it, saves a `setsockopt` per connection
/// (nginx makes none on a connection that is closed after one answer). Where that does not
/// hold, or the option could not be set, each connection gets its own (see `accept_loop`).
fn nodelay_for_all(socket: &impl std::os::fd::AsFd) {
    if cfg!(target_os = "linux") {
        let _ = socket2::SockRef::from(socket).set_tcp_nodelay(true);
    }
}

/// Whether what `listener` accepts starts with `TCP_NODELAY` (see [`nodelay_for_all`]).
fn accepted_with_nodelay(listener: &TcpListener) -> bool {
    cfg!(target_os = "linux")
        && socket2::SockRef::from(listener)
            .tcp_nodelay()
            .unwrap_or(false)
}

/// The next connection, once there is room for it: at `max_connections`, new clients wait in
/// the kernel's listen backlog instead of costing us file descriptors. Cancel-safe.
async fn accept_within(
    listener: &TcpListener,
    limit: &Arc<Semaphore>,
) -> std::io::Result<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    let permit = match limit.clone().acquire_owned().await {
        Ok(p) => p,
        // Never closed; wait for the shutdown instead of spinning.
        Err(_) => std::future::pending().await,
    };
    let (stream, peer) = listener.accept().await?;
    Ok((stream, peer, permit))
}

/// One port's HTTP servers, with the edge limits of `[server]`: HTTP/1.1 alone and HTTP/2 alone
/// for a connection whose protocol is known before its first request (a plain connection's
/// first bytes, a TLS connection's ALPN), and hyper-util's sniffing server for the rest.
struct Servers {
    /// `[server] max_header_bytes`, for our own HTTP/1.1 server (`h1`).
    max_head: usize,
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    auto: auto::Builder<TokioExecutor>,
}

/// [`Servers`], and the idle timeout.
fn http_builders(front: &Front) -> (Servers, Duration) {
    // Read at start, like the listener itself: changing them needs a restart.
    let (head_timeout, max_head, max_streams, idle_timeout) = {
        let snap = front.published.load();
        let s = &snap.server;
        (
            s.header_read_timeout,
            s.max_header_bytes,
            s.max_streams,
            s.idle_timeout,
        )
    };
    let max_head = usize::try_from(max_head).unwrap_or(usize::MAX);
    let max_list = u32::try_from(max_head).unwrap_or(u32::MAX);
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(head_timeout)
        .max_buf_size(max_head);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_header_list_size(max_list)
        .max_concurrent_streams(max_streams);
    let mut auto = auto::Builder::new(TokioExecutor::new());
    auto.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout)
        .max_buf_size(max_head);
    auto.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(max_list)
        .max_concurrent_streams(max_streams);
    let servers = Servers {
        max_head,
        h1,
        h2,
        auto,
    };
    (servers, idle_timeout)
}

/// What a connection speaks, as far as is known before hyper reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Speaks {
    Http1,
    Http2,
    /// Too few bytes yet to tell (or a TLS client that offered no ALPN): hyper-util sniffs.
    Unknown,
}

/// HTTP/2's connection preface (RFC 9113 §3.4), which a client with prior knowledge sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a plain connection whose first bytes are `first` speaks.
fn speaks(first: &[u8]) -> Speaks {
    if first.starts_with(H2_PREFACE) {
        Speaks::Http2
    } else if H2_PREFACE.starts_with(first) {
        Speaks::Unknown
    } else {
        Speaks::Http1
    }
}

/// [`serve`], as one of several workers when `seat` is given.
async fn accept_loop<H: Handler>(
    listener: TcpListener,
    front: Front,
    worker: Worker<H>,
    shutdown: impl Future<Output = ()>,
    limit: Arc<Semaphore>,
    mut seat: Option<Seat>,
) {
    let Worker {
        handler,
        gauge,
        beside,
    } = worker;
    // They end with what they serve, or with this worker's runtime.
    for task in beside {
        tokio::spawn(task);
    }
    let handler = Arc::new(handler);
    let inherits_nodelay = accepted_with_nodelay(&listener);
    let (servers, idle_timeout) = http_builders(&front);
    let servers = Arc::new(servers);
    // Every connection holds a receiver: `closed()` on the sender is the end of the drain.
    let (drain, _) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let handed_over = async {
            match seat.as_mut() {
                Some(seat) => seat.inbox.recv().await,
                None => std::future::pending().await,
            }
        };
        let (stream, peer, permit, handed) = tokio::select! {
            accepted = accept_within(&listener, &limit) => match accepted {
                Ok((stream, peer, permit)) => (stream, peer, permit, None),
                Err(e) => {
                    tracing::warn!(listener = front.name, error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            Some(handed) = handed_over => match TcpStream::from_std(handed.stream) {
                Ok(stream) => (stream, handed.peer, handed.permit, Some((handed.occupied, handed.stage))),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take over a connection");
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let (stream, permit, occupied, stage) = match (&seat, handed) {
            (_, Some((occupied, stage))) => (stream, permit, Some(occupied), stage),
            // A TLS connection can only move before its handshake; a plain one moves later,
            // if at all (see `Balance`).
            (Some(seat), None) if front.tls.is_some() => {
                match pass_on(seat, stream, peer, permit) {
                    Some((stream, permit)) => {
                        let occupied = Occupied::new(&seat.mover.balance, seat.mover.me);
                        (stream, permit, Some(occupied), Stage::Accepted)
                    }
                    None => continue,
                }
            }
            (Some(seat), None) => {
                let occupied = Occupied::new(&seat.mover.balance, seat.mover.me);
                (stream, permit, Some(occupied), Stage::Accepted)
            }
            (None, None) => (stream, permit, None, Stage::Accepted),
        };
        if !inherits_nodelay {
            let _ = stream.set_nodelay(true);
        }
        let stop = drain.subscribe();
        let activity = Arc::new(Activity::new(std::time::Instant::now(), stop.clone()));
        let (prefetch, tls, between_requests) = match stage {
            // TLS reads the socket in records of its own; the sniff then reads plaintext.
            Stage::Accepted => (
                front.tls.is_none().then(Prefetch::new),
                front.tls.clone().map(|t| (t, front.handshake_timeout)),
                false,
            ),
            Stage::Http2(first) => (Some(Prefetch::read(first)), None, false),
            Stage::BetweenRequests => (None, None, true),
        };
        let stream = Held {
            io: stream,
            slot: Slot::new(permit, occupied, gauge.clone()),
            prefetch,
            activity: activity.clone(),
        };
        let conn = Conn {
            handler: handler.clone(),
            published: front.published.clone(),
            servers: servers.clone(),
            stop,
            activity,
            peer,
            idle_timeout,
            mover: seat.as_ref().map(|s| s.mover.clone()),
        };
        tokio::spawn(conn.serve(stream, tls, between_requests));
    }
    drop(listener);
    tracing::info!(
        listener = front.name,
        connections = drain.receiver_count(),
        "stopped accepting; draining"
    );
    let _ = drain.send(true);
    // Read now, so a reload before the shutdown applies.
    let grace = front.published.load().server.shutdown_timeout;
    if tokio::time::timeout(grace, drain.closed()).await.is_err() {
        tracing::warn!(
            listener = front.name,
            "shutdown grace period over; closing remaining connections"
        );
    }
}

/// Hands a just accepted `stream` to a less busy worker; gives it back when it is ours to
/// serve (also when that worker has stopped).
fn pass_on(
    seat: &Seat,
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
) -> Option<(TcpStream, OwnedSemaphorePermit)> {
    match seat.mover.destination() {
        Some(to) => seat.mover.send(to, stream, peer, permit, Stage::Accepted),
        None => Some((stream, permit)),
    }
}

/// One accepted connection.
struct Conn<H> {
    handler: Arc<H>,
    published: Arc<Published>,
    servers: Arc<Servers>,
    /// Becomes true when the server shuts down. Held (here, by the connection's requests and
    /// by an upgraded tunnel) for as long as the shutdown should wait for it.
    stop: watch::Receiver<bool>,
    /// Made at accept, so the socket's [`Held`] shares it.
    activity: Arc<Activity>,
    peer: SocketAddr,
    idle_timeout: Duration,
    /// How it moves to a less loaded worker (see `Balance`); `None` when this port has one.
    mover: Option<Mover>,
}

impl<H: Handler> Conn<H> {
    async fn serve(
        mut self,
        mut stream: Held<TcpStream>,
        tls: Option<(TlsAcceptor, HandshakeTimeout)>,
        between_requests: bool,
    ) {
        if let Some((acceptor, handshake_timeout)) = tls {
            // Boxed, as are the servers below: this future is copied whole into the
            // connection's task (several times: tokio's cell is written as the task starts
            // and ends), and a TLS connection's state (kilobytes) or hyper's (the HTTP/2 and
            // sniffing servers' `http`: 1,408 -> 896 bytes of task cell) would make every
            // plain HTTP/1.1 connection's as large.
            return boxed!(self.tls(stream, acceptor, handshake_timeout)).await;
        }
        let speaks = if between_requests {
            Speaks::Http1
        } else {
            // The first read, which the prefetch makes anyway, says which server to start. A
            // client that sends nothing is closed as an idle one would be.
            let first = std::future::poll_fn(|cx| stream.poll_prefetch(cx));
            tokio::select! {
                read = first => match read {
                    Ok(()) => speaks(stream.prefetched()),
                    Err(e) => {
                        tracing::debug!(peer = %self.peer, error = %e, "first read failed");
                        return;
                    }
                },
                _ = self.stop.wait_for(|s| *s) => return,
                () = tokio::time::sleep(self.idle_timeout) => return,
            }
        };
        match speaks {
            Speaks::Http1 => {
                let first = stream.take_prefetched();
                let peer = self.peer;
                let moving = boxed!(self.own_http1(stream, first, "http", true)).await;
                if let Some((stream, mover, to)) = moving {
                    mover.pass(to, stream, peer, Stage::BetweenRequests);
                }
            }
            Speaks::Http2 => {
                // An HTTP/2 connection stays with one worker for all its streams: it moves now,
                // before any, if it is to move at all.
                if let Some(mover) = &self.mover
                    && let Some(to) = mover.destination()
                {
                    let first = stream.take_prefetched();
                    return mover.pass(to, stream, self.peer, Stage::Http2(first));
                }
                boxed!(self.http(TokioIo::new(stream), "http", speaks)).await;
            }
            Speaks::Unknown => boxed!(self.http(TokioIo::new(stream), "http", speaks)).await,
        }
    }

    /// The TLS handshake, then HTTP as ALPN says.
    async fn tls(
        self,
        stream: Held<TcpStream>,
        acceptor: TlsAcceptor,
        handshake_timeout: HandshakeTimeout,
    ) {
        // Read per connection, so a reload changes it for the next handshake.
        let limit = handshake_timeout(&self.published.load())
            .unwrap_or(crate::config::validate::DEFAULT_HANDSHAKE_TIMEOUT);
        match tokio::time::timeout(limit, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => {
                let speaks = match stream.get_ref().1.alpn_protocol() {
                    Some(b"h2") => Speaks::Http2,
                    Some(b"http/1.1") => Speaks::Http1,
                    _ => Speaks::Unknown,
                };
                if speaks == Speaks::Http1 {
                    // A TLS connection's state is not ours to move: it stays.
                    boxed!(self.own_http1(stream, Box::default(), "https", false)).await;
                    return;
                }
                self.http(TokioIo::new(stream), "https", speaks).await
            }
            Ok(Err(e)) => tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!(peer = %self.peer, "TLS handshake timed out"),
        }
    }

    /// Serves HTTP on `io` until the client closes, the connection stays idle for
    /// `idle_timeout` (no request in flight: HTTP/1.1 closes, HTTP/2 sends GOAWAY), or the
    /// server shuts down (the same, once the requests in flight are answered).
    async fn http<I>(self, io: I, proto: &'static str, speaks: Speaks)
    where
        I: Read + Write + Unpin + Send + 'static,
    {
        let (caller, mut serving, servers) = self.parts(proto);
        let call = move |req: Request<RequestBody>, kept_alive| caller.answer(req, kept_alive);
        // HTTP/1.1 keeps the request's future in place for the connection; HTTP/2 moves each
        // one into a task of its own (hyper's stream future, then tokio's task cell), kilobytes
        // copied twice a request (callgrind, h2c: memcpy was 18% of the instructions), so
        // there it is boxed once and only the pointer moves. Each server's connection is boxed
        // too: inline, it made the connection's future 10 KB, copied whole several times on its
        // way into a task (a new connection per request: 86 KB of `memcpy` under callgrind).
        // Each arm boxes its connection before lending it to `until_done`: a helper taking the
        // connection by value would hold it, unboxed, in this future again.
        match speaks {
            Speaks::Http1 => {
                let conn = servers.h1.serve_connection(
                    io,
                    service_fn(move |req: Request<Incoming>| {
                        call(req.map(RequestBody::Hyper), false)
                    }),
                );
                let mut conn = Box::pin(conn.with_upgrades());
                serving
                    .until_done(conn.as_mut(), |c| c.graceful_shutdown())
                    .await;
            }
            Speaks::Http2 => {
                let conn = servers.h2.serve_connection(
                    io,
                    service_fn(move |req: Request<Incoming>| {
                        // Its connection stays open: the worker yields before it sleeps, as
                        // after a kept-alive HTTP/1.1 answer.
                        boxed!(call(req.map(RequestBody::Hyper), true))
                    }),
                );
                let mut conn = Box::pin(conn);
                serving
                    .until_done(conn.as_mut(), |c| c.graceful_shutdown())
                    .await;
            }
            Speaks::Unknown => {
                let conn = servers.auto.serve_connection_with_upgrades(
                    io,
                    service_fn(move |req: Request<Incoming>| {
                        boxed!(call(req.map(RequestBody::Hyper), false))
                    }),
                );
                let mut conn = Box::pin(conn);
                serving
                    .until_done(conn.as_mut(), |c| c.graceful_shutdown())
                    .await;
            }
        }
    }
}

impl<H: Handler> Conn<H> {
    /// What serving the connection's requests takes, whichever server reads them: the way to
    /// the handler, the loop's state, the servers.
    fn parts(self, proto: &'static str) -> (Caller<H>, Serving, Arc<Servers>) {
        let caller = Caller {
            handler: self.handler,
            connection: Arc::new(Connection {
                peer: self.peer,
                proto,
                activity: self.activity.clone(),
            }),
        };
        let serving = Serving {
            stop: self.stop,
            activity: self.activity,
            peer: self.peer,
            idle_timeout: self.idle_timeout,
        };
        (caller, serving, self.servers)
    }

    /// A connection known to speak HTTP/1.1 (its first bytes in clear, ALPN under TLS), of
    /// which `first` has been read: our own server takes its requests until one it leaves to
    /// hyper's HTTP/1.1 server, which then has the rest of the connection (see `h1`). With
    /// `may_move`, between two requests it may stop to move to a less loaded worker instead:
    /// then it gives back the stream, the way to move it and where to.
    async fn own_http1<S>(
        mut self,
        mut stream: S,
        first: Box<[u8]>,
        proto: &'static str,
        may_move: bool,
    ) -> Option<(S, Mover, usize)>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mover = self.mover.take().filter(|_| may_move);
        let (caller, mut serving, servers) = self.parts(proto);
        let closing = AtomicBool::new(false);
        let call = |req| caller.call(req);
        let leave = || mover.as_ref().and_then(Mover::destination);
        // Pinned here and lent: moved into `until_done`, the server's future (kilobytes) was
        // held twice in this one (the argument, then its pinned copy) and copied between them.
        let next = {
            let ours = std::pin::pin!(h1::serve(
                &mut stream,
                &first,
                &call,
                &closing,
                servers.max_head,
                &leave,
            ));
            serving
                .until_done(ours, |_| closing.store(true, Ordering::Release))
                .await
        };
        let rest = match next {
            Some(h1::Next::Hyper(rest)) => rest,
            Some(h1::Next::Leave(to)) => return mover.map(|m| (stream, m, to)),
            Some(h1::Next::Done) | None => return None,
        };
        drop(first);
        let stream = Rewound {
            head: rest,
            io: stream,
        };
        let conn = servers.h1.serve_connection(
            TokioIo::new(stream),
            service_fn(move |req: Request<Incoming>| caller.call(req.map(RequestBody::Hyper))),
        );
        let conn = std::pin::pin!(conn.with_upgrades());
        serving.until_done(conn, |c| c.graceful_shutdown()).await;
        None
    }
}

/// What a port answers a request with: the front's own refusal, or its handler's response.
type Answer<H> = Response<Either<Full<Bytes>, <H as Handler>::Body>>;

/// A connection's way to its port's handler, for whichever server reads its requests.
struct Caller<H> {
    handler: Arc<H>,
    connection: Arc<Connection>,
}

impl<H: Handler> Caller<H> {
    /// The answer to `req`: the front's own refusal, or the handler's.
    fn call(
        &self,
        req: Request<RequestBody>,
    ) -> impl Future<Output = Result<Answer<H>, Infallible>> + Send + use<H> {
        self.answer(req, false)
    }

    /// [`Caller::call`], noting the answer as kept alive (`h1::note_kept_alive`) when
    /// `kept_alive`: an HTTP/2 stream's, whose connection outlives it. Here, not in a future
    /// wrapped around this one: the wrapper held this future (kilobytes, the handler's inside)
    /// and was moved whole into its box, a copy more on every stream (callgrind, h2c: `memcpy`
    /// was a quarter of the instructions).
    fn answer(
        &self,
        req: Request<RequestBody>,
        kept_alive: bool,
    ) -> impl Future<Output = Result<Answer<H>, Infallible>> + Send + use<H> {
        let refused = invalid_host(&req).then(|| invalid_request(&req));
        let (handler, connection) = (self.handler.clone(), self.connection.clone());
        // The handler's future is made inside this one, on its first poll: made here and
        // moved in, it was copied whole (kilobytes) on every request (callgrind: +11,000
        // instructions a request in memcpy).
        async move {
            if let Some(refused) = refused {
                return Ok::<_, Infallible>(refused.map(Either::Left));
            }
            let in_flight = InFlight::begin(&connection.activity);
            let resp = handler.call(req, &connection).await;
            drop(in_flight);
            if kept_alive {
                h1::note_kept_alive();
            }
            Ok(resp.map(Either::Right))
        }
    }
}

/// What the loop around a connection being served needs, whichever server serves it.
struct Serving {
    stop: watch::Receiver<bool>,
    activity: Arc<Activity>,
    peer: SocketAddr,
    idle_timeout: Duration,
}

impl Serving {
    /// Polls `conn` to its end, asking it to close (`graceful_shutdown`) on shutdown or when
    /// idle for `idle_timeout`; what it ended with, if it ended without an error and was not
    /// dropped for staying idle.
    async fn until_done<C, T, E>(
        &mut self,
        mut conn: Pin<&mut C>,
        graceful_shutdown: impl Fn(Pin<&mut C>),
    ) -> Option<T>
    where
        C: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let Serving {
            stop,
            activity,
            peer,
            idle_timeout,
        } = self;
        let (peer, idle_timeout) = (*peer, *idle_timeout);
        let mut closing = false;
        // When an idle close began. HTTP/2's graceful close waits for the client to answer a
        // PING; a client that never does is dropped once idle for another `idle_timeout`.
        let mut idle_close: Option<std::time::Instant> = None;
        loop {
            // Idle since the last request ended, or since the idle close began.
            let idle_since = || {
                activity
                    .idle_since()
                    .map(|since| idle_close.map_or(since, |began| began.max(since)))
            };
            // Busy: look again in a full period; idle: when the period since it went idle ends.
            let check = match idle_since() {
                Some(since) => Instant::from_std(since) + idle_timeout,
                None => Instant::now() + idle_timeout,
            };
            tokio::select! {
                ended = conn.as_mut() => {
                    return match ended {
                        Ok(t) => Some(t),
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                            None
                        }
                    };
                }
                _ = stop.wait_for(|s| *s), if !closing => {
                    graceful_shutdown(conn.as_mut());
                    closing = true;
                }
                () = tokio::time::sleep_until(check), if !closing || idle_close.is_some() => {
                    if idle_since().is_some_and(|since| since.elapsed() >= idle_timeout) {
                        if idle_close.is_some() {
                            tracing::debug!(%peer, "dropping an idle connection that did not close");
                            return None;
                        }
                        tracing::debug!(%peer, "closing an idle connection");
                        graceful_shutdown(conn.as_mut());
                        closing = true;
                        idle_close = Some(std::time::Instant::now());
                    }
                }
            }
        }
    }
}

/// A client connection's requests in flight, and when the last one ended, for
/// `[server] idle_timeout`.
pub struct Activity {
    active: AtomicUsize,
    /// Set once the connection is an upgraded tunnel: from then on a shutdown of the client
    /// socket is a real one (see `Held::poll_shutdown`).
    tunnel: AtomicBool,
    /// Nanoseconds after `since` at which the last request ended.
    ended_at: AtomicU64,
    /// When the connection was accepted.
    since: std::time::Instant,
    /// The server's shutdown waits while this is held: by the connection, by each request
    /// until its response is sent, and by an upgraded connection's tunnel.
    _drain: tokio::sync::watch::Receiver<bool>,
}

impl Activity {
    pub fn new(now: std::time::Instant, drain: tokio::sync::watch::Receiver<bool>) -> Activity {
        Activity {
            active: AtomicUsize::new(0),
            tunnel: AtomicBool::new(false),
            ended_at: AtomicU64::new(0),
            since: now,
            _drain: drain,
        }
    }

    /// `None` while a request is in flight; else when the connection became idle.
    pub fn idle_since(&self) -> Option<std::time::Instant> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(self.since + Duration::from_nanos(self.ended_at.load(Ordering::Acquire)))
    }

    /// The connection now carries a tunnel (an upgrade), not HTTP.
    pub fn becomes_tunnel(&self) {
        self.tunnel.store(true, Ordering::Release);
    }

    fn is_tunnel(&self) -> bool {
        self.tunnel.load(Ordering::Acquire)
    }

    pub(crate) fn begin(&self) {
        self.active.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn end(&self, at: std::time::Instant) {
        let nanos = u64::try_from(at.saturating_duration_since(self.since).as_nanos());
        self.ended_at
            .store(nanos.unwrap_or(u64::MAX), Ordering::Release);
        self.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One request in flight, from its head until its handler has answered (or was dropped). A
/// handler whose response outlives that (the proxy's streamed bodies and tunnels) marks its
/// own on the same [`Activity`]; counting the same request twice only keeps it busy.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(activity: &Arc<Activity>) -> InFlight {
        activity.begin();
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end(std::time::Instant::now());
    }
}

/// RFC 9112 §3.2: an HTTP/1.1 request without `Host`, or any HTTP/1 request with more than
/// one, is refused, so that no two parties can read a different host out of it. HTTP/1.0 may
/// omit it; HTTP/2 names the authority in `:authority`, which hyper checks.
fn invalid_host<B>(req: &Request<B>) -> bool {
    let mut hosts = req.headers().get_all(HOST).iter();
    match req.version() {
        Version::HTTP_11 => hosts.next().is_none() || hosts.next().is_some(),
        Version::HTTP_10 | Version::HTTP_09 => hosts.nth(1).is_some(),
        _ => false,
    }
}

/// The 400 for a request the front refuses, `invalid_request` in the problem+json shape of
/// every other refusal (`proxy::deny`), with `Connection: close`: what follows it on the
/// connection cannot be trusted to be framed the way the client meant.
fn invalid_request(req: &Request<RequestBody>) -> Response<Full<Bytes>> {
    let id = request_id::of(req.headers());
    let mut resp = Problem::new(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "Invalid request",
        "An HTTP/1.1 request needs exactly one Host header field.",
    )
    .response(&id);
    let headers = resp.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    headers.insert(request_id::X_REQUEST_ID, id);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balance(loads: &[usize]) -> Balance {
        Balance {
            load: loads.iter().map(|&l| AtomicUsize::new(l)).collect(),
            inbox: loads.iter().map(|_| mpsc::unbounded_channel().0).collect(),
        }
    }

    /// The first read says HTTP/2 only with the whole preface, and "not yet known" while it is
    /// a piece of it.
    #[test]
    fn the_first_bytes_say_which_server_takes_the_connection() {
        assert_eq!(speaks(H2_PREFACE), Speaks::Http2);
        assert_eq!(speaks(&[H2_PREFACE, b"\0\0\0\x04"].concat()), Speaks::Http2);
        assert_eq!(speaks(&H2_PREFACE[..10]), Speaks::Unknown);
        assert_eq!(speaks(b""), Speaks::Unknown);
        assert_eq!(speaks(b"GET / HTTP/1.1\r\n"), Speaks::Http1);
        assert_eq!(speaks(b"PRI / HTTP/1.1\r\n"), Speaks::Http1);
        assert_eq!(speaks(b"G"), Speaks::Http1);
    }

    /// RFC 9112 §3.2, by version and number of `Host` lines.
    #[test]
    fn one_host_is_required_of_http_1_1_and_at_most_one_of_http_1_0() {
        let req = |version, hosts: usize| {
            let mut r = Request::new(());
            *r.version_mut() = version;
            for _ in 0..hosts {
                r.headers_mut()
                    .append(HOST, HeaderValue::from_static("a.test"));
            }
            r
        };
        assert!(invalid_host(&req(Version::HTTP_11, 0)));
        assert!(!invalid_host(&req(Version::HTTP_11, 1)));
        assert!(invalid_host(&req(Version::HTTP_11, 2)));
        assert!(!invalid_host(&req(Version::HTTP_10, 0)));
        assert!(!invalid_host(&req(Version::HTTP_10, 1)));
        assert!(invalid_host(&req(Version::HTTP_10, 2)));
        // HTTP/2 names the authority in `:authority`; hyper checks it.
        assert!(!invalid_host(&req(Version::HTTP_2, 0)));
    }

    /// A connection handed over counts for its new worker at once, before that worker reads its
    /// inbox: the next connection of the same burst sees it and stays. Counted only when the
    /// receiver got round to it, a burst of 32 went 24 to 8.
    #[tokio::test]
    async fn a_handed_over_connection_counts_for_its_new_worker_at_once() {
        let (to_0, inbox_0) = mpsc::unbounded_channel();
        let (to_1, mut inbox_1) = mpsc::unbounded_channel();
        let balance = Arc::new(Balance {
            load: [2, 0].into_iter().map(AtomicUsize::new).collect(),
            inbox: vec![to_0, to_1].into(),
        });
        let seat = Seat {
            mover: Mover {
                balance: balance.clone(),
                me: 0,
            },
            inbox: inbox_0,
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limit = Arc::new(Semaphore::new(2));
        let mut clients = Vec::new();
        let mut accept = async || {
            clients.push(TcpStream::connect(addr).await.unwrap());
            let (stream, peer) = listener.accept().await.unwrap();
            let permit = limit.clone().acquire_owned().await.unwrap();
            (stream, peer, permit)
        };

        let (stream, peer, permit) = accept().await;
        assert!(
            pass_on(&seat, stream, peer, permit).is_none(),
            "handed over"
        );
        assert_eq!(balance.load[1].load(Ordering::Relaxed), 1);
        let (stream, peer, permit) = accept().await;
        assert!(
            pass_on(&seat, stream, peer, permit).is_some(),
            "2 against 1: kept"
        );

        // The count leaves with the connection, served or not.
        drop(inbox_1.try_recv().unwrap());
        assert_eq!(balance.load[1].load(Ordering::Relaxed), 0);
    }

    /// `TCP_NODELAY` set once on the listening socket is on every connection accepted from it,
    /// which is what lets `accept_loop` skip the `setsockopt` per connection.
    #[tokio::test]
    async fn accepted_connections_inherit_nodelay_from_the_listener() {
        for set in [false, true] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            if set {
                nodelay_for_all(&listener);
            }
            assert_eq!(accepted_with_nodelay(&listener), set);
            let addr = listener.local_addr().unwrap();
            let _client = TcpStream::connect(addr).await.unwrap();
            let (stream, _) = listener.accept().await.unwrap();
            assert_eq!(stream.nodelay().unwrap(), set, "set on the listener: {set}");
        }
    }

    /// A worker keeps a new connection unless it holds two or more than the least loaded one.
    #[test]
    fn connections_go_to_the_least_loaded_worker_only_when_the_gap_is_two() {
        assert_eq!(balance(&[0, 0]).elsewhere(0), None);
        assert_eq!(balance(&[1, 0]).elsewhere(0), None);
        assert_eq!(balance(&[2, 0]).elsewhere(0), Some(1));
        assert_eq!(balance(&[5, 3, 1]).elsewhere(0), Some(2));
        assert_eq!(balance(&[5, 3, 1]).elsewhere(2), None);
        assert_eq!(balance(&[7]).elsewhere(0), None);
    }

    /// A plain port on a config with one target.
    fn test_front() -> Front {
        let snap = crate::config::parse(
            "[[targets]]\nname = \"p\"\nupstream = \"http://127.0.0.1:1\"\n",
            std::path::Path::new("keygate.toml"),
        )
        .unwrap()
        .snapshot;
        Front::new("test", Arc::new(Published::new(snap)))
    }

    /// Two workers' accept loops on this runtime, each answering with its name (`w0`, `w1`);
    /// worker 0 listens on the address returned and counts `extra` phantom connections, so it
    /// is the busier one. Worker 1's socket is never connected to: what it serves came from
    /// its inbox.
    async fn two_workers(extra: usize) -> (Arc<Balance>, SocketAddr) {
        let front = test_front();
        let (senders, mut inboxes): (Vec<_>, Vec<_>) =
            (0..2).map(|_| mpsc::unbounded_channel()).unzip();
        let balance = Arc::new(Balance {
            load: [extra, 0].into_iter().map(AtomicUsize::new).collect(),
            inbox: senders.into(),
        });
        let limit = Arc::new(Semaphore::new(100));
        let mut addr = None;
        for (me, inbox) in inboxes.drain(..).enumerate() {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr.get_or_insert(listener.local_addr().unwrap());
            let name: &'static str = ["w0", "w1"][me];
            let handler = move |_req: Request<RequestBody>, _conn: &Connection| async move {
                Response::new(Full::new(Bytes::from_static(name.as_bytes())))
            };
            let seat = Seat {
                mover: Mover {
                    balance: balance.clone(),
                    me,
                },
                inbox,
            };
            tokio::spawn(accept_loop(
                listener,
                front.clone(),
                Worker::new(handler),
                std::future::pending(),
                limit.clone(),
                Some(seat),
            ));
        }
        (balance, addr.unwrap())
    }

    /// Sends `req` on `stream` and reads the answer (a `content-length` body); its body.
    async fn exchange(stream: &mut TcpStream, req: &str) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        loop {
            let mut buf = [0u8; 1024];
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).into_owned();
            let Some(end) = text.find("\r\n\r\n") else {
                continue;
            };
            let length: usize = text[..end]
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .unwrap()
                .parse()
                .unwrap();
            if got.len() >= end + 4 + length {
                return text[end + 4..end + 4 + length].to_string();
            }
        }
    }

    /// Waits (up to 2 s) until worker `w` counts `n` connections.
    async fn until_load(balance: &Balance, w: usize, n: usize) {
        for _ in 0..200 {
            if balance.load[w].load(Ordering::Relaxed) == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("worker {w} never counted {n}: {:?}", balance.load);
    }

    /// A plain connection is served by the worker that accepted it, however busy: handing it
    /// over at accept cost the connection-per-request case its throughput.
    #[tokio::test]
    async fn a_plain_connection_is_not_handed_over_at_accept() {
        let (balance, addr) = two_workers(2).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        let req = "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
        assert_eq!(exchange(&mut client, req).await, "w0");
        assert_eq!(balance.load[1].load(Ordering::Relaxed), 0);
    }

    /// A keep-alive connection of the busier worker moves to the other between two requests,
    /// and its next request is answered there, nothing lost on the way.
    #[tokio::test]
    async fn a_keep_alive_connection_moves_between_requests_to_the_less_loaded_worker() {
        let (balance, addr) = two_workers(2).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        let req = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(exchange(&mut client, req).await, "w0");
        until_load(&balance, 1, 1).await;
        assert_eq!(
            balance.load[0].load(Ordering::Relaxed),
            2,
            "its count left with it"
        );
        for _ in 0..3 {
            assert_eq!(exchange(&mut client, req).await, "w1");
        }
        // Balanced now (2 phantoms against 1): it stays.
        assert_eq!(balance.load[1].load(Ordering::Relaxed), 1);
    }

    /// An h2c client connection to `addr`.
    async fn h2c_client(
        addr: SocketAddr,
    ) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>> {
        let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
        let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        send
    }

    /// `GET /` on `send`: the answer's body.
    async fn h2c_get(
        send: &mut hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>,
    ) -> Bytes {
        use http_body_util::BodyExt as _;
        let req = Request::get("http://a/")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        resp.into_body().collect().await.unwrap().to_bytes()
    }

    /// An h2c connection of the busier worker moves after its first read (the preface, which
    /// goes with it), before any of its streams is served.
    #[tokio::test]
    async fn an_h2c_connection_moves_after_its_first_read() {
        let (balance, addr) = two_workers(2).await;
        let mut send = h2c_client(addr).await;
        for _ in 0..3 {
            assert_eq!(h2c_get(&mut send).await, "w1");
        }
        assert_eq!(balance.load[1].load(Ordering::Relaxed), 1);
    }

    /// An answer on an HTTP/2 stream is noted as kept alive for the worker (which then yields
    /// before it sleeps): its connection stays open for the next stream.
    #[tokio::test]
    async fn an_h2_answer_is_noted_as_kept_alive() {
        let (_balance, addr) = two_workers(0).await;
        let mut send = h2c_client(addr).await;
        // The test's runtime is the workers' thread: what they note, this thread reads.
        let _ = h1::kept_alive();
        for _ in 0..2 {
            assert_eq!(h2c_get(&mut send).await, "w0");
            assert!(h1::kept_alive(), "each answer is noted");
            assert!(!h1::kept_alive(), "asking resets it");
        }
    }

    /// A connection passed to a worker that has stopped comes back to be served here.
    #[tokio::test]
    async fn a_connection_for_a_stopped_worker_is_served_by_the_one_that_accepted_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(TcpStream::connect(addr));
        let (stream, peer) = listener.accept().await.unwrap();
        let _client = client.await.unwrap().unwrap();
        let (tx0, rx0) = mpsc::unbounded_channel();
        let (tx1, rx1) = mpsc::unbounded_channel();
        let b = Arc::new(Balance {
            load: vec![AtomicUsize::new(3), AtomicUsize::new(0)].into(),
            inbox: vec![tx0, tx1].into(),
        });
        let seat = Seat {
            mover: Mover {
                balance: b.clone(),
                me: 0,
            },
            inbox: rx0,
        };
        drop(rx1);
        let limit = Arc::new(Semaphore::new(2));
        let permit = limit.clone().acquire_owned().await.unwrap();
        let kept = pass_on(&seat, stream, peer, permit);
        assert!(kept.is_some(), "worker 1 is gone");
        assert_eq!(
            limit.available_permits(),
            1,
            "the place goes with the connection"
        );
        drop(kept);

        let (tx1, mut rx1) = mpsc::unbounded_channel();
        let b = Arc::new(Balance {
            load: vec![AtomicUsize::new(3), AtomicUsize::new(0)].into(),
            inbox: vec![seat.mover.balance.inbox[0].clone(), tx1].into(),
        });
        let seat = Seat {
            mover: Mover { balance: b, me: 0 },
            ..seat
        };
        let client = tokio::spawn(TcpStream::connect(addr));
        let (stream, peer) = listener.accept().await.unwrap();
        let _client = client.await.unwrap().unwrap();
        let permit = limit.clone().acquire_owned().await.unwrap();
        assert!(
            pass_on(&seat, stream, peer, permit).is_none(),
            "handed to worker 1"
        );
        let handed = rx1.recv().await.unwrap();
        assert_eq!(handed.peer, peer);
        assert!(matches!(handed.stage, Stage::Accepted));
        assert_eq!(
            limit.available_permits(),
            1,
            "the handed connection keeps its place"
        );
    }

    /// The first read of a plain connection takes what is there, then hands it out in pieces
    /// as small as the reader asks for: the HTTP/2 sniff's 24 bytes, then the rest.
    #[tokio::test]
    async fn the_first_read_is_one_read_served_in_pieces() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let head = b"GET /a-longer-path?x=1 HTTP/1.1\r\nHost: a\r\nX-Api-Key: k\r\n\r\n";
        client.write_all(head).await.unwrap();
        client.shutdown().await.unwrap();
        let permit = Arc::new(Semaphore::new(1)).acquire_owned().await.unwrap();
        let mut held = Held {
            io: stream,
            slot: Slot::new(permit, None, None),
            prefetch: Some(Prefetch::new()),
            activity: Arc::new(Activity::new(
                std::time::Instant::now(),
                watch::channel(false).1,
            )),
        };
        let mut sniff = [0u8; 24];
        tokio::time::sleep(Duration::from_millis(50)).await;
        held.read_exact(&mut sniff).await.unwrap();
        assert_eq!(&sniff[..], &head[..24]);
        assert!(held.prefetch.is_some(), "the rest is still in memory");
        let mut rest = Vec::new();
        held.read_to_end(&mut rest).await.unwrap();
        assert_eq!(&rest[..], &head[24..]);
        assert!(held.prefetch.is_none());
    }

    /// A connection's future holds its server's future, and the handler's inside it, once:
    /// an `async fn` keeps its argument and a pinned copy of it in two slots, so the loop
    /// around the connection (`until_done`) borrows the server's future instead of taking it.
    /// Taken, a handler future of 8 KB made the connection's future over 16 KB (issue 18: the
    /// proxy's connections were 15.4 KB each, 6.9 KB since).
    #[tokio::test]
    async fn a_connection_holds_its_handlers_future_once() {
        let room = 8192;
        let handler = |_req: Request<RequestBody>, _conn: &Connection| async {
            let held = [7u8; 8192];
            tokio::task::yield_now().await;
            Response::new(Full::new(Bytes::copy_from_slice(&held[..1])))
        };
        let front = test_front();
        let (servers, idle_timeout) = http_builders(&front);
        let activity = Arc::new(Activity::new(
            std::time::Instant::now(),
            watch::channel(false).1,
        ));
        let conn = Conn {
            handler: Arc::new(handler),
            published: front.published.clone(),
            servers: Arc::new(servers),
            stop: watch::channel(false).1,
            activity,
            peer: "127.0.0.1:1".parse().unwrap(),
            idle_timeout,
            mover: None,
        };
        let (io, _client) = tokio::io::duplex(64);
        let serving = conn.own_http1(io, Box::default(), "http", true);
        let size = std::mem::size_of_val(&serving);
        assert!(size > room, "{size} bytes: the handler's future is inside");
        assert!(size < 2 * room, "{size} bytes: held twice");
    }
}
