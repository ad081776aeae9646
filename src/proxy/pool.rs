//! Forward, its connections: the upstream connections, one pool per server worker.
//!
//! Each worker thread has its own pool (see `server::serve_workers`), so an upstream connection
//! is only used and driven by one thread and the pool's lock is never contended. Connections are
//! HTTP/1.1 (`hyper::client::conn::http1`), keyed by the target's scheme and authority, reused
//! newest first (the warmest socket), and go back to the pool when the response body has been
//! read to its end: [`PooledBody`] hands its connection back when it is dropped after the end.
//! A connection whose body was abandoned, or that answered `101 Switching Protocols`, is never
//! reused.
//!
//! Driving each connection from the task of the request using it (hyper's connection future
//! polled beside the response future, then beside the body), instead of a task per connection,
//! was tried for issue 18 and dropped: 17% less throughput (docs/performance.md).
//!
//! A request that could not be written on a pooled connection because the upstream had just
//! closed it (its idle timeout raced our reuse) is retried once on a new connection; a request
//! that was written is never retried, since it may not be idempotent.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, Scheme, Uri};
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::forward::body::Upload;
use hyper::client::conn::http1::SendRequest;
use tower_service::Service as _;

use crate::tls::Connector;

/// Idle upstream connections are kept this long: long enough to carry bursts, short enough to
/// be closed by us before a typical upstream's own idle timeout (60 s in nginx) closes them under
/// a request in flight.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(50);

/// Idle connections kept per upstream; more than this many finishing at once are closed.
const MAX_IDLE_PER_UPSTREAM: usize = 512;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where a connection goes: the target's upstream scheme and authority (cheap to clone).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Upstream {
    pub scheme: Scheme,
    pub authority: Authority,
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
    sender: SendRequest<Upload>,
    since: Instant,
}

impl Pool {
    pub fn new(connector: Connector) -> Arc<Pool> {
        Arc::new(Pool {
            connector,
            idle: Mutex::new(HashMap::default()),
        })
    }

    /// Sends `req` (origin-form URI, `Host` set) to `upstream` on a pooled or new connection.
    /// The response's body streams; its connection returns to the pool once the body is done.
    pub async fn send(
        self: &Arc<Self>,
        upstream: &Upstream,
        req: Request<Upload>,
    ) -> Result<Response<PooledBody>, BoxError> {
        let mut req = req;
        if let Some(mut sender) = self.checkout(upstream).await {
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.wrap(resp, sender, upstream)),
                Err(mut e) => match e.take_message() {
                    // Never written: the connection was closed under us; retry on a new one.
                    Some(back) => req = back,
                    None => return Err(e.into_error().into()),
                },
            }
        }
        let mut sender = self.connect(upstream).await?;
        let resp = sender.send_request(req).await?;
        Ok(self.wrap(resp, sender, upstream))
    }

    /// The newest idle connection to `upstream` that is still open and ready.
    async fn checkout(&self, upstream: &Upstream) -> Option<SendRequest<Upload>> {
        loop {
            let idle = {
                let mut map = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                map.get_mut(upstream)?.pop()?
            };
            if idle.sender.is_closed() || idle.since.elapsed() > IDLE_TIMEOUT {
                continue;
            }
            let mut sender = idle.sender;
            // Pooled only when ready (see `PooledBody`'s drop); this only notices a close.
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    async fn connect(&self, upstream: &Upstream) -> Result<SendRequest<Upload>, BoxError> {
        let uri = Uri::builder()
            .scheme(upstream.scheme.clone())
            .authority(upstream.authority.clone())
            .path_and_query("/")
            .build()?;
        let io = self.connector.clone().call(uri).await?;
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(io)
            .await?;
        tokio::spawn(async move {
            // Errors here reach the request that was in flight, which reports them.
            let _ = conn.with_upgrades().await;
        });
        Ok(sender)
    }

    fn wrap(
        self: &Arc<Self>,
        resp: Response<Incoming>,
        sender: SendRequest<Upload>,
        upstream: &Upstream,
    ) -> Response<PooledBody> {
        let reuse = resp.status() != http::StatusCode::SWITCHING_PROTOCOLS;
        resp.map(|body| PooledBody {
            body,
            ended: false,
            home: reuse.then(|| Home {
                pool: Arc::downgrade(self),
                upstream: upstream.clone(),
                sender,
            }),
        })
    }

    fn put_back(&self, upstream: Upstream, sender: SendRequest<Upload>) {
        if sender.is_closed() {
            return;
        }
        let mut map = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = map.entry(upstream).or_default();
        if list.len() < MAX_IDLE_PER_UPSTREAM {
            list.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Closes connections idle longer than [`IDLE_TIMEOUT`] or closed by the upstream.
    pub fn reap(&self) {
        let mut map = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        for list in map.values_mut() {
            list.retain(|i| !i.sender.is_closed() && i.since.elapsed() <= IDLE_TIMEOUT);
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

/// An upstream response body that returns its connection to the pool when it is dropped after
/// its last frame.
pub struct PooledBody {
    body: Incoming,
    /// The last frame was read (a chunked body's end is only known from that).
    ended: bool,
    home: Option<Home>,
}

struct Home {
    pool: Weak<Pool>,
    upstream: Upstream,
    sender: SendRequest<Upload>,
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        // Trailers are the last frame of a chunked body, and a server stops reading after them.
        let last = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(frame))) => frame.is_trailers(),
            _ => false,
        };
        if last || this.body.is_end_stream() {
            this.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        let Some(home) = self.home.take() else {
            return;
        };
        if !(self.ended || self.body.is_end_stream()) {
            // Abandoned mid-body: hyper closes the connection; it is not reused.
            return;
        }
        if home.sender.is_ready() {
            if let Some(pool) = home.pool.upgrade() {
                pool.put_back(home.upstream, home.sender);
            }
            return;
        }
        // The response ended but the exchange has not (the request body is still being sent,
        // which an upstream that answers early allows): pool the connection only once it is
        // free, so no other request waits behind someone else's upload.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let Home {
                    pool,
                    upstream,
                    mut sender,
                } = home;
                if sender.ready().await.is_ok()
                    && let Some(pool) = pool.upgrade()
                {
                    pool.put_back(upstream, sender);
                }
            });
        }
    }
}
