//! Accept: TCP, optionally TLS (ALPN h2 / http/1.1), then HTTP/1.1 (keep-alive, upgrades) or
//! HTTP/2 (h2 over TLS, h2c with prior knowledge in clear) on the same port, then hand each
//! request to [`Proxy::handle`]. Stops accepting on shutdown and lets connections in flight
//! finish, up to a grace period.
//!
//! [`serve_workers`] runs that loop on one thread per core, each a single-threaded tokio runtime
//! accepting from the same listening socket, the way nginx runs worker processes: a connection
//! and everything it does (its requests, its upstream connections from the worker's own pool)
//! stay on one thread, so no task is stolen, no waker crosses threads and no upstream connection
//! is shared between threads.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::rt::{Read, Write};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::metrics::Shard;
use crate::proxy::Proxy;
use crate::proxy::observe::Activity;

/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Open connections per worker, and each worker's inbox for connections handed to it.
///
/// All workers accept from one socket, and the kernel wakes whichever is waiting: often the one
/// that is already busy, so a burst of new connections can land 3:1 on one thread while the
/// other idles (seen with wrk's 32 connections). A worker that holds at least two connections
/// more than the least loaded one passes a new connection over instead of serving it.
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

/// A connection passed to another worker, with its place under `max_connections`.
type Handed = (std::net::TcpStream, SocketAddr, OwnedSemaphorePermit);

/// A worker's place in a [`Balance`].
struct Seat {
    balance: Arc<Balance>,
    me: usize,
    inbox: mpsc::UnboundedReceiver<Handed>,
}

/// Counts one open connection of a worker while it lives.
struct Occupied(Arc<Balance>, usize);

impl Drop for Occupied {
    fn drop(&mut self) {
        self.0.load[self.1].fetch_sub(1, Ordering::Relaxed);
    }
}

/// What one open client connection holds: its place under `max_connections`, its count in its
/// worker's load and in `keygate_open_connections`. Released when dropped.
struct Slot {
    _permit: OwnedSemaphorePermit,
    _occupied: Option<Occupied>,
    metrics: Arc<Shard>,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, occupied: Option<Occupied>, metrics: Arc<Shard>) -> Slot {
        metrics.connection_opened();
        Slot {
            _permit: permit,
            _occupied: occupied,
            metrics,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.connection_closed();
    }
}

/// A client socket with its [`Slot`]: the slot lives exactly as long as the socket, so the
/// connection is counted whoever holds it: hyper while it speaks HTTP, or an upgraded
/// connection's tunnel after hyper has handed the socket over (which ends hyper's connection
/// future long before the client goes). Every call passes straight through.
struct Held<S> {
    io: S,
    _slot: Slot,
}

impl<S: AsyncRead + Unpin> AsyncRead for Held<S> {
    #[inline]
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Held<S> {
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

    #[inline]
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Serves `listener` on `workers` threads until `shutdown` completes, then drains every
/// worker's connections and returns once all workers have stopped.
pub async fn serve_workers(
    listener: TcpListener,
    workers: NonZeroUsize,
    proxy: &Proxy,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    // Out of this runtime's reactor, so each worker can register its own handle to the socket.
    let socket = listener.into_std()?;
    let limit = connection_limit(proxy);
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
        let proxy = Arc::new(proxy.worker());
        let tls = tls.clone();
        let limit = limit.clone();
        let mut stop = stop_rx.clone();
        let seat = Seat {
            balance: balance.clone(),
            me: i,
            inbox,
        };
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
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
                    accept_loop(listener, proxy, tls, stop, limit, Some(seat)).await;
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

/// Serves `listener` until `shutdown` completes, then drains connections. With `tls`, every
/// connection must complete a TLS handshake within `[server.tls] handshake_timeout` first.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let limit = connection_limit(&proxy);
    accept_loop(listener, proxy, tls, shutdown, limit, None).await;
}

/// `[server] max_connections`, shared by all workers. Read at start: changing it needs a restart.
fn connection_limit(proxy: &Proxy) -> Arc<Semaphore> {
    let max = proxy.published().load().server.max_connections;
    Arc::new(Semaphore::new(usize::try_from(max).unwrap_or(usize::MAX)))
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

/// [`serve`], as one of several workers when `seat` is given.
async fn accept_loop(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
    limit: Arc<Semaphore>,
    mut seat: Option<Seat>,
) {
    // Read at start, like the listener itself: changing them needs a restart.
    let (head_timeout, max_head, max_streams, idle_timeout) = {
        let snap = proxy.published().load();
        let s = &snap.server;
        (
            s.header_read_timeout,
            s.max_header_bytes,
            s.max_streams,
            s.idle_timeout,
        )
    };
    let max_head = usize::try_from(max_head).unwrap_or(usize::MAX);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout)
        .max_buf_size(max_head);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(max_head).unwrap_or(u32::MAX))
        .max_concurrent_streams(max_streams);
    let builder = Arc::new(builder);
    // Every connection holds a receiver: `closed()` on the sender is the end of the drain.
    let (drain, _) = watch::channel(false);
    // Ends with the pool, or with this worker's runtime.
    tokio::spawn(crate::proxy::pool::reaper(Arc::downgrade(proxy.pool())));
    tokio::pin!(shutdown);
    loop {
        let handed_over = async {
            match seat.as_mut() {
                Some(seat) => seat.inbox.recv().await,
                None => std::future::pending().await,
            }
        };
        let (stream, peer, permit, accepted_here) = tokio::select! {
            accepted = accept_within(&listener, &limit) => match accepted {
                Ok((stream, peer, permit)) => (stream, peer, permit, true),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            Some((stream, peer, permit)) = handed_over => match TcpStream::from_std(stream) {
                Ok(stream) => (stream, peer, permit, false),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take over a connection");
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let (stream, permit) = match (&seat, accepted_here) {
            (Some(seat), true) => match pass_on(seat, stream, peer, permit) {
                Some(kept) => kept,
                None => continue,
            },
            _ => (stream, permit),
        };
        // Small responses must not wait for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        let occupied = seat.as_ref().map(|seat| {
            seat.balance.load[seat.me].fetch_add(1, Ordering::Relaxed);
            Occupied(seat.balance.clone(), seat.me)
        });
        let stream = Held {
            io: stream,
            _slot: Slot::new(permit, occupied, proxy.shard().clone()),
        };
        let conn = Conn {
            proxy: proxy.clone(),
            builder: builder.clone(),
            stop: drain.subscribe(),
            peer,
            idle_timeout,
        };
        let tls = tls.clone();
        tokio::spawn(conn.serve(stream, tls));
    }
    drop(listener);
    tracing::info!(
        connections = drain.receiver_count(),
        "stopped accepting; draining"
    );
    let _ = drain.send(true);
    // Read now, so a reload before the shutdown applies.
    let grace = proxy.published().load().server.shutdown_timeout;
    if tokio::time::timeout(grace, drain.closed()).await.is_err() {
        tracing::warn!("shutdown grace period over; closing remaining connections");
    }
}

/// Hands `stream` to a less busy worker; gives it back when it is ours to serve.
fn pass_on(
    seat: &Seat,
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
) -> Option<(TcpStream, OwnedSemaphorePermit)> {
    let Some(to) = seat.balance.elsewhere(seat.me) else {
        return Some((stream, permit));
    };
    let stream = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "cannot pass a connection on");
            return None;
        }
    };
    match seat.balance.inbox[to].send((stream, peer, permit)) {
        Ok(()) => None,
        // That worker has stopped: serve it here after all.
        Err(mpsc::error::SendError((stream, _, permit))) => {
            TcpStream::from_std(stream).ok().map(|s| (s, permit))
        }
    }
}

/// One accepted connection.
struct Conn {
    proxy: Arc<Proxy>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    /// Becomes true when the server shuts down. Held (here, by the connection's requests and
    /// by an upgraded tunnel) for as long as the shutdown should wait for it.
    stop: watch::Receiver<bool>,
    peer: SocketAddr,
    idle_timeout: Duration,
}

impl Conn {
    async fn serve(self, stream: Held<TcpStream>, tls: Option<TlsAcceptor>) {
        let Some(acceptor) = tls else {
            return self.http(TokioIo::new(stream), "http").await;
        };
        // Read per connection, so a reload changes it for the next handshake.
        let limit = self
            .proxy
            .published()
            .load()
            .server
            .tls
            .as_ref()
            .map(|t| t.handshake_timeout);
        let limit = limit.unwrap_or(crate::config::validate::DEFAULT_HANDSHAKE_TIMEOUT);
        match tokio::time::timeout(limit, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => self.http(TokioIo::new(stream), "https").await,
            Ok(Err(e)) => tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!(peer = %self.peer, "TLS handshake timed out"),
        }
    }

    /// Serves HTTP on `io` until the client closes, the connection stays idle for
    /// `idle_timeout` (no request in flight: HTTP/1.1 closes, HTTP/2 sends GOAWAY), or the
    /// server shuts down (the same, once the requests in flight are answered).
    async fn http<I>(self, io: I, proto: &'static str)
    where
        I: Read + Write + Unpin + Send + 'static,
    {
        let Conn {
            proxy,
            builder,
            mut stop,
            peer,
            idle_timeout,
        } = self;
        let activity = Arc::new(Activity::new(Instant::now().into_std(), stop.clone()));
        let service = {
            let activity = activity.clone();
            service_fn(move |req| {
                let proxy = proxy.clone();
                let activity = activity.clone();
                async move { Ok::<_, Infallible>(proxy.handle(req, peer, proto, Some(&activity)).await) }
            })
        };
        let conn = builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(conn);
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
                    if let Err(e) = ended {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    break;
                }
                _ = stop.wait_for(|s| *s), if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                () = tokio::time::sleep_until(check), if !closing || idle_close.is_some() => {
                    if idle_since().is_some_and(|since| since.elapsed() >= idle_timeout) {
                        if idle_close.is_some() {
                            tracing::debug!(%peer, "dropping an idle connection that did not close");
                            break;
                        }
                        tracing::debug!(%peer, "closing an idle connection");
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                        idle_close = Some(std::time::Instant::now());
                    }
                }
            }
        }
    }
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
            balance: b.clone(),
            me: 0,
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
            inbox: vec![seat.balance.inbox[0].clone(), tx1].into(),
        });
        let seat = Seat { balance: b, ..seat };
        let client = tokio::spawn(TcpStream::connect(addr));
        let (stream, peer) = listener.accept().await.unwrap();
        let _client = client.await.unwrap().unwrap();
        let permit = limit.clone().acquire_owned().await.unwrap();
        assert!(
            pass_on(&seat, stream, peer, permit).is_none(),
            "handed to worker 1"
        );
        let handed = rx1.recv().await.unwrap();
        assert_eq!(handed.1, peer);
        assert_eq!(
            limit.available_permits(),
            1,
            "the handed connection keeps its place"
        );
    }
}
