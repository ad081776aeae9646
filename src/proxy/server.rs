//! The proxy's port: [`crate::http::listener`] with TLS, one [`Proxy`] per worker thread (its
//! own upstream pool, and that pool's reaper on the same thread), and its open connections
//! counted in `keygate_open_connections`.

use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::Arc;

use crate::http::body::RequestBody;
use http::Request;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::Proxy;
use crate::http::listener::{self, Connection, Front, Gauge, Handler, Worker};
use crate::metrics::Shard;

/// Serves `listener` on `workers` threads until `shutdown` completes, then drains every
/// worker's connections and returns once all workers have stopped.
pub async fn serve_workers(
    listener: TcpListener,
    workers: NonZeroUsize,
    proxy: &Proxy,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let front = Front::new("proxy", proxy.published().clone()).with_tls(tls);
    listener::serve_workers(
        listener,
        workers,
        front,
        |_| worker(Arc::new(proxy.worker())),
        shutdown,
    )
    .await
}

/// Serves the `[verify]` listener on `workers` threads of its own, as [`serve_workers`] does
/// the proxy's: forward-auth calls, answered with the decision alone (`proxy/verify.rs`).
/// Plain HTTP/1.1 and h2c: it listens for the proxy beside it, on a private address.
pub async fn serve_verify_workers(
    listener: TcpListener,
    workers: NonZeroUsize,
    proxy: &Proxy,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let front = Front::new("verify", proxy.published().clone());
    listener::serve_workers(
        listener,
        workers,
        front,
        |_| {
            let proxy = Arc::new(proxy.worker());
            let gauge: Arc<dyn Gauge> = proxy.shard().clone();
            let handler = move |req: Request<RequestBody>, conn: &Connection| {
                let activity = Some(conn.activity.clone());
                proxy.clone().verify(req, conn.peer, activity)
            };
            Worker::new(handler).counted(gauge)
        },
        shutdown,
    )
    .await
}

/// Serves `listener` on the caller's runtime until `shutdown` completes, then drains
/// connections. With `tls`, every connection must complete a TLS handshake within
/// `[server.tls] handshake_timeout` first.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let front = Front::new("proxy", proxy.published().clone()).with_tls(tls);
    listener::serve(listener, front, worker(proxy), shutdown).await;
}

/// What one accept loop of the proxy serves with.
fn worker(proxy: Arc<Proxy>) -> Worker<impl Handler> {
    let reaper = super::pool::reaper(Arc::downgrade(proxy.pool()));
    let gauge: Arc<dyn Gauge> = proxy.shard().clone();
    // The proxy's future itself, not one wrapped around it (which held the request twice).
    let handler = move |req: Request<RequestBody>, conn: &Connection| {
        let activity = Some(conn.activity.clone());
        proxy.clone().handle(req, conn.peer, conn.proto, activity)
    };
    Worker::new(handler).counted(gauge).beside(reaper)
}

/// `keygate_open_connections`, in a worker's share of the metrics.
impl Gauge for Shard {
    fn opened(&self) {
        self.connection_opened();
    }

    fn closed(&self) {
        self.connection_closed();
    }
}
