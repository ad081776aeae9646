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

use bytes::Bytes;
use http::{HeaderValue, Method};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use std::fmt::Write as _;

use tracing::field::Field;
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use super::deny::{Deny, Inner, Refusal};
use crate::metrics::{Finished, MethodClass, Metrics, Shard};
use crate::snapshot::{AccessTo, Id, Log, LogFormat};

/// Where access log lines go: a tracing dispatcher of its own, so they never mix with the
/// diagnostic log on stderr, written by a background thread so no request waits on the disk.
pub struct AccessLog {
    dispatch: tracing::Dispatch,
    /// Flushes what is queued when the last worker lets go of the log.
    _flush: WorkerGuard,
}

impl AccessLog {
    /// `None` for `access = "off"`.
    pub fn open(log: &Log) -> std::io::Result<Option<Arc<AccessLog>>> {
        let file = match &log.access {
            AccessTo::Off => return Ok(None),
            // A descriptor of its own, so lines are written in batches: `Stdout` would flush
            // at every newline.
            AccessTo::Stdout => {
                use std::os::fd::AsFd as _;
                std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned()?)
            }
            AccessTo::File(path) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        };
        // The writer thread flushes whenever it has emptied its queue: one write for many lines
        // under load, at once when quiet. Not lossy: in a burst, requests wait for the log
        // rather than lose lines.
        let (writer, guard) = NonBlockingBuilder::default()
            .lossy(false)
            .thread_name("keygate-access-log")
            .finish(std::io::BufWriter::with_capacity(64 * 1024, file));
        Ok(Some(Arc::new(AccessLog {
            dispatch: dispatch(writer, log.format),
            _flush: guard,
        })))
    }
}

fn dispatch(writer: NonBlocking, format: LogFormat) -> tracing::Dispatch {
    let builder = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(false)
        .without_time()
        .with_level(false)
        .with_target(false);
    match format {
        LogFormat::Json => tracing::Dispatch::new(builder.event_format(JsonLine).finish()),
        LogFormat::Text => tracing::Dispatch::new(builder.finish()),
    }
}

/// An access log event as one flat JSON object, its fields in order. tracing-subscriber's own
/// JSON format builds each line through serde and a map of the fields: about 19,500
/// instructions a line under callgrind, against 10,500 this way.
struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &FmtContext<'_, S, N>,
        mut writer: format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut fields = JsonFields {
            out: &mut writer,
            first: true,
            result: Ok(()),
        };
        event.record(&mut fields);
        let JsonFields { first, result, .. } = fields;
        result?;
        writer.write_str(if first { "{}\n" } else { "}\n" })
    }
}

/// Writes each field as `"name":value`, strings escaped as JSON requires.
struct JsonFields<'w, 'a> {
    out: &'w mut format::Writer<'a>,
    first: bool,
    result: std::fmt::Result,
}

impl JsonFields<'_, '_> {
    fn key(&mut self, field: &Field) -> std::fmt::Result {
        self.out.write_str(if self.first { "{\"" } else { ",\"" })?;
        self.first = false;
        self.out.write_str(field.name())?;
        self.out.write_str("\":")
    }

    fn value(&mut self, field: &Field, v: std::fmt::Arguments<'_>, quoted: bool) {
        if self.result.is_err() || field.name() == "message" {
            return;
        }
        self.result = (|| {
            self.key(field)?;
            if !quoted {
                return self.out.write_fmt(v);
            }
            self.out.write_char('"')?;
            Escaped(&mut *self.out).write_fmt(v)?;
            self.out.write_char('"')
        })();
    }
}

impl tracing::field::Visit for JsonFields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.value(field, format_args!("{value}"), true);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.value(field, format_args!("{value}"), false);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.value(field, format_args!("{value}"), false);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.value(field, format_args!("{value}"), false);
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.value(field, format_args!("{value}"), false);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.value(field, format_args!("{value:?}"), true);
    }
}

/// Escapes what is written through it for a JSON string: quotes, backslashes, control bytes.
struct Escaped<'w, W: std::fmt::Write>(&'w mut W);

impl<W: std::fmt::Write> std::fmt::Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let mut rest = s;
        while let Some(i) = rest.find(|c: char| c == '"' || c == '\\' || c < ' ') {
            self.0.write_str(&rest[..i])?;
            let c = rest.as_bytes()[i];
            match c {
                b'"' => self.0.write_str("\\\"")?,
                b'\\' => self.0.write_str("\\\\")?,
                b'\n' => self.0.write_str("\\n")?,
                b'\r' => self.0.write_str("\\r")?,
                b'\t' => self.0.write_str("\\t")?,
                _ => write!(self.0, "\\u{c:04x}")?,
            }
            rest = &rest[i + 1..];
        }
        self.0.write_str(rest)
    }
}

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
        let time = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        // Milliseconds to the microsecond: 0.213, not 0.21300000000000002.
        let ms = |d: Duration| d.as_micros() as f64 / 1000.0;
        // Every value here is the config's or keygate's own, or redacted: never the secret.
        tracing::dispatcher::with_default(&log.dispatch, || {
            tracing::info!(
                time = %time,
                request_id = l.request_id.to_str().unwrap_or_default(),
                client_ip = l.client_ip.map(tracing::field::display),
                method = l.method.as_str(),
                host = l.host.as_ref().and_then(|h| h.to_str().ok()),
                path = &*l.path,
                "target" = l.target.as_ref().map(Id::as_str),
                key_id = l.key.as_ref().map(Id::as_str),
                consumer = l.consumer.as_ref().map(Id::as_str),
                status = self.status,
                code = self.code,
                upstream_ms = self.upstream.map(ms),
                total_ms = ms(total),
                bytes_in = self.bytes_in,
                bytes_out,
            );
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever a field holds, the line is one JSON object that reads back to the same values:
    /// quotes, backslashes, newlines and other control bytes are escaped; other text is kept.
    #[test]
    fn json_lines_escape_what_json_requires_and_keep_the_rest() {
        let path = std::env::temp_dir().join(format!("keygate-json-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let log = AccessLog::open(&Log {
            access: AccessTo::File(path.clone()),
            format: LogFormat::Json,
        })
        .unwrap()
        .unwrap();
        let nasty = "a\"b\\c\nd\re\tf\u{1}g\u{7f}h é 中 /?x=1&y=\"2\"";
        tracing::dispatcher::with_default(&log.dispatch, || {
            tracing::info!(
                text = nasty,
                n = 7u64,
                neg = -3i64,
                ms = 0.25f64,
                flag = true,
                ip = %std::net::IpAddr::from([10, 0, 0, 1]),
                absent = None::<&str>,
            );
        });
        drop(log);
        let written = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(written.lines().count(), 1, "{written}");
        let v: serde_json::Value = serde_json::from_str(&written).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "text": nasty, "n": 7, "neg": -3, "ms": 0.25, "flag": true, "ip": "10.0.0.1"
            })
        );
    }
}
