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
use std::sync::Arc;
use std::time::Duration;

use hyper::rt::{Read, Write};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::Proxy;

/// A client that has not sent its request headers by then is dropped (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long shutdown waits for connections in flight before it gives up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

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
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut stopped = Vec::with_capacity(workers.get());
    for i in 0..workers.get() {
        let socket = socket.try_clone()?;
        let proxy = Arc::new(proxy.worker());
        let tls = tls.clone();
        let mut stop = stop_rx.clone();
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
                    serve(listener, proxy, tls, stop).await;
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
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    // Ends with the pool, or with this worker's runtime.
    tokio::spawn(super::pool::reaper(Arc::downgrade(proxy.pool())));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Small responses must not wait for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            proxy: proxy.clone(),
            builder: builder.clone(),
            watcher: graceful.watcher(),
            peer,
        };
        tokio::spawn(conn.run(stream, tls.clone()));
    }
    drop(listener);
    tracing::info!(
        connections = graceful.count(),
        "stopped accepting; draining"
    );
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period over; closing remaining connections");
    }
}

/// One accepted connection.
struct Conn {
    proxy: Arc<Proxy>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: Watcher,
    peer: SocketAddr,
}

impl Conn {
    async fn run(self, stream: TcpStream, tls: Option<TlsAcceptor>) {
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

    async fn http<I>(self, io: I, proto: &'static str)
    where
        I: Read + Write + Unpin + Send + 'static,
    {
        let Conn {
            proxy,
            builder,
            watcher,
            peer,
        } = self;
        let service = service_fn(move |req| {
            let proxy = proxy.clone();
            async move { Ok::<_, Infallible>(proxy.handle(req, peer, proto).await) }
        });
        let conn = builder.serve_connection_with_upgrades(io, service);
        if let Err(e) = watcher.watch(conn).await {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}
