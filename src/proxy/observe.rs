//! After the answer: every request's metrics and access log line, written once its response
//! body has been sent (or dropped), and the activity that tells an idle connection.
//!
//! [`Exchange`] gathers what the phases learn about a request as they go; [`Body`] carries it
//! beside the response and finishes it when hyper drops the body, so the total latency and the
//! bytes sent cover the whole response, streamed or not.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

pub use super::access_log::AccessLog;
use super::access_log::Entry;
use super::deny::{Deny, Inner, Refusal};
use crate::metrics::{Finished, MethodClass, Metrics, Shard};
use crate::snapshot::Id;
use bytes::Bytes;
use http::{HeaderValue, Method};
use hyper::body::{Body as HttpBody, Frame, SizeHint};

/// Per worker: where finished requests are counted and logged.
#[derive(Clone)]
pub struct Observer {
    pub metrics: Arc<Metrics>,
    /// This worker's counts.
    pub shard: Arc<Shard>,
    pub access: Option<Arc<AccessLog>>,
    /// `key.expired_used` for webhooks: a non-blocking push, at most once per key per hour.
    pub events: Option<Arc<crate::events::Events>>,
    /// This worker's usage counts (`None`: `[usage] enabled = false`).
    pub usage: Option<crate::usage::Meter>,
}

/// A client connection's requests in flight, for `[server] idle_timeout`: the listener's.
pub use crate::http::listener::Activity;

/// What the access log says of a request beyond what metrics need; built only when it is on.
struct Line {
    request_id: HeaderValue,
    method: Method,
    host: Option<HeaderValue>,
    /// Path and query, the credential redacted.
    path: Box<str>,
    client_ip: Option<IpAddr>,
    target: Option<Id>,
    key: Option<Id>,
    consumer: Option<Id>,
}

/// One request, from its head to the end of its response.
pub struct Exchange {
    observer: Arc<Observer>,
    activity: Option<Arc<Activity>>,
    started: Instant,
    method: MethodClass,
    /// The target's slot in the shard (`None`: not routed, counted under "").
    target: Option<usize>,
    status: u16,
    code: Option<&'static str>,
    upstream: Option<Duration>,
    bytes_in: u64,
    /// The count of a request body of unknown length, as it streams upstream.
    counted: Option<Arc<AtomicU64>>,
    line: Option<Box<Line>>,
    /// The key's slot in the worker's usage shard, once a key is known.
    usage: Option<u32>,
    /// Let through by authorize and the rate limit.
    allowed: bool,
}

impl Exchange {
    /// `host` is asked only when the access log is on.
    pub fn begin(
        observer: &Arc<Observer>,
        method: &Method,
        host: impl FnOnce() -> Option<HeaderValue>,
        request_id: &HeaderValue,
        started: Instant,
        activity: Option<&Arc<Activity>>,
    ) -> Exchange {
        observer.shard.started();
        if let Some(a) = activity {
            a.begin();
        }
        let line = observer.access.as_ref().map(|_| {
            Box::new(Line {
                request_id: request_id.clone(),
                method: method.clone(),
                host: host(),
                path: Box::default(),
                client_ip: None,
                target: None,
                key: None,
                consumer: None,
            })
        });
        Exchange {
            observer: observer.clone(),
            activity: activity.cloned(),
            started,
            method: MethodClass::of(method),
            target: None,
            status: 0,
            code: None,
            upstream: None,
            bytes_in: 0,
            counted: None,
            line,
            usage: None,
            allowed: false,
        }
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn logging(&self) -> bool {
        self.line.is_some()
    }

    /// The request's path and query, the credential redacted (before `forward` rewrites them).
    /// `key_queries`: every query parameter a key may be read from (`[server] key_sources`);
    /// the log has no request headers, so no other source can reach it.
    pub fn path(&mut self, path_and_query: &str, key_queries: &[Box<str>]) {
        if let Some(l) = &mut self.line {
            l.path = super::credential::redact_all(path_and_query, key_queries).into();
        }
    }

    pub fn routed(&mut self, target: &Id) {
        self.target = Some(self.observer.shard.target(target.as_str()));
        if let Some(l) = &mut self.line {
            l.target = Some(target.clone());
        }
    }

    pub fn client(&mut self, ip: IpAddr) {
        if let Some(l) = &mut self.line {
            l.client_ip = Some(ip);
        }
    }

    /// The key the secret matched (admitted or not) and its consumer.
    pub fn key(&mut self, key: &Id, consumer: Option<&Id>) {
        if let Some(m) = &self.observer.usage {
            self.usage = Some(m.slot(key, consumer));
        }
        if let Some(l) = &mut self.line {
            l.key = Some(key.clone());
            l.consumer = consumer.cloned();
        }
    }

    /// The request body's size when its head says it; otherwise a counter it fills as it is
    /// sent upstream.
    pub fn body_size(&mut self, exact: Option<u64>, empty: bool) -> Option<Arc<AtomicU64>> {
        match exact {
            Some(n) => {
                self.bytes_in = n;
                None
            }
            None if empty => None,
            None => {
                let c = Arc::new(AtomicU64::new(0));
                self.counted = Some(c.clone());
                Some(c)
            }
        }
    }

    /// The request passed authorize and the rate limit: usage counts it as allowed.
    pub fn allowed(&mut self) {
        self.allowed = true;
    }

    /// Counted with the rest when the exchange finishes: one lock of the shard per request.
    pub fn upstream_answered(&mut self, took: Duration) {
        self.upstream = Some(took);
    }

    /// Counts a refusal and notes it for the access log: called once per refused request,
    /// by `respond`.
    pub fn refused(&mut self, refusal: &Refusal) {
        let code = refusal.deny.code();
        self.code = Some(code);
        self.observer.shard.denied(code);
        if let (Deny::RateLimited(_), Some(key)) = (&refusal.deny, &refusal.key) {
            self.observer.shard.rate_limited(key);
        }
        if let (Deny::KeyExpired, Some(key), Some(events)) =
            (&refusal.deny, &refusal.key, &self.observer.events)
        {
            events.expired_used(key);
        }
        if let (Some(l), Some(key)) = (&mut self.line, &refusal.key) {
            l.key = Some(key.clone());
            l.consumer = refusal.consumer.clone();
        }
        if let (None, Some(m), Some(key)) = (self.usage, &self.observer.usage, &refusal.key) {
            self.usage = Some(m.slot(key, refusal.consumer.as_ref()));
        }
    }

    pub fn status(&mut self, status: u16) {
        self.status = status;
    }

    fn finish(&mut self, bytes_out: u64) {
        let now = Instant::now();
        let total = now.saturating_duration_since(self.started);
        if let Some(c) = &self.counted {
            self.bytes_in = c.load(Ordering::Relaxed);
        }
        self.observer.shard.finished(&Finished {
            target: self
                .target
                .unwrap_or_else(|| self.observer.shard.target("")),
            method: self.method,
            status: self.status,
            upstream: self.upstream,
            total,
            bytes_in: self.bytes_in,
            bytes_out,
        });
        if let (Some(slot), Some(m)) = (self.usage.take(), &self.observer.usage) {
            m.record(
                slot,
                &crate::usage::Record {
                    allowed: self.allowed,
                    code: self.code,
                    upstream_status: self.upstream.map(|_| self.status),
                    bytes_in: self.bytes_in,
                    bytes_out,
                },
            );
        }
        if let Some(a) = &self.activity {
            a.end(now);
        }
        if let (Some(log), Some(line)) = (&self.observer.access, self.line.take()) {
            self.log(log, &line, total, bytes_out);
        }
    }

    fn log(&self, log: &AccessLog, l: &Line, total: Duration, bytes_out: u64) {
        // Every value here is the config's or keygate's own, or redacted: never the secret.
        log.log(&Entry {
            request_id: l.request_id.to_str().unwrap_or_default(),
            client_ip: l.client_ip,
            method: l.method.as_str(),
            host: l.host.as_ref().and_then(|h| h.to_str().ok()),
            path: &l.path,
            target: l.target.as_ref().map(Id::as_str),
            key_id: l.key.as_ref().map(Id::as_str),
            consumer: l.consumer.as_ref().map(Id::as_str),
            status: self.status,
            code: self.code,
            upstream: self.upstream,
            total,
            bytes_in: self.bytes_in,
            bytes_out,
        });
    }
}

impl Drop for Exchange {
    /// A request dropped before its answer (the client left while it waited on Redis) still
    /// lets go of its usage slot; a finished one has already counted.
    fn drop(&mut self) {
        if let (Some(slot), Some(m)) = (self.usage.take(), &self.observer.usage) {
            m.release(slot);
        }
    }
}

/// What keygate answers with, carrying its [`Exchange`] to the end of the response.
pub struct Body {
    inner: Inner,
    exchange: Option<Exchange>,
    sent: u64,
}

impl Body {
    pub fn new(inner: Inner, exchange: Exchange) -> Body {
        Body {
            inner,
            exchange: Some(exchange),
            sent: 0,
        }
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.sent += data.len() as u64;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        if let Some(mut e) = self.exchange.take() {
            e.finish(self.sent);
        }
    }
}
