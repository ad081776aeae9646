//! The access log, buffered like nginx's `access_log FILE buffer=64k flush=1s`: the thread that
//! finishes a request formats its line by hand into a buffer of its own, and the buffer goes to
//! the file in one `write` once it holds 64 KiB, or within a second from the flusher thread
//! (`keygate-access-log`), or when the log is dropped at shutdown.
//!
//! Under load a line costs a lock nobody else holds, the formatting and a share of one `write`
//! per 64 KiB: no channel, no other thread woken, no allocation. Each `write` holds whole lines
//! and the file lock, so lines from different workers never interleave, even on a pipe.

use std::cell::Cell;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::snapshot::{AccessTo, Log, LogFormat};

/// A buffer is written once it holds this much.
const FULL: usize = 64 * 1024;
/// A quiet buffer is written at most this long after its first line.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Buffers; a thread takes one at its first line, round robin. More than the cores any worker
/// pool has, so each worker writes to its own; two threads on one buffer are still correct.
const SLOTS: usize = 64;

/// What one line says; `None` fields are left out of it.
pub struct Entry<'a> {
    pub request_id: &'a str,
    pub client_ip: Option<IpAddr>,
    pub method: &'a str,
    pub host: Option<&'a str>,
    /// Redacted: never the credential.
    pub path: &'a str,
    pub target: Option<&'a str>,
    pub key_id: Option<&'a str>,
    pub consumer: Option<&'a str>,
    pub status: u16,
    pub code: Option<&'a str>,
    pub upstream: Option<Duration>,
    pub total: Duration,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

pub struct AccessLog {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
}

struct Shared {
    format: LogFormat,
    slots: Box<[Mutex<Slot>]>,
    /// Taken for each write, after a slot's lock (never the other way round).
    out: Mutex<std::fs::File>,
    stop: Mutex<bool>,
    wake: Condvar,
    /// A failed write is reported once, not once a second.
    failed: AtomicBool,
}

#[derive(Default)]
struct Slot {
    buf: Vec<u8>,
    clock: Clock,
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
            // O_APPEND: each write lands whole at the end, whoever else appends.
            AccessTo::File(path) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        };
        let shared = Arc::new(Shared {
            format: log.format,
            slots: (0..SLOTS).map(|_| Mutex::default()).collect(),
            out: Mutex::new(file),
            stop: Mutex::new(false),
            wake: Condvar::new(),
            failed: AtomicBool::new(false),
        });
        let flusher = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("keygate-access-log".into())
                .spawn(move || shared.flush_every_second())?
        };
        Ok(Some(Arc::new(AccessLog {
            shared,
            flusher: Some(flusher),
        })))
    }

    /// Appends the line to this thread's buffer, and writes the buffer if it is full.
    pub fn log(&self, e: &Entry<'_>) {
        let shared = &*self.shared;
        let mut slot = lock(&shared.slots[my_slot()]);
        let Slot { buf, clock } = &mut *slot;
        if buf.capacity() == 0 {
            buf.reserve(FULL + 4096);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let time = clock.at(now);
        match shared.format {
            LogFormat::Json => json(buf, time, e),
            LogFormat::Text => text(buf, time, e),
        }
        if buf.len() >= FULL {
            shared.write(buf);
        }
    }
}

impl Drop for AccessLog {
    /// Writes every buffered line before the log goes: a graceful stop loses none.
    fn drop(&mut self) {
        *lock(&self.shared.stop) = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.flusher.take() {
            let _ = t.join();
        }
        // Also when the flusher is gone (it cannot panic, but a join error costs nothing).
        self.shared.flush_all();
    }
}

impl Shared {
    fn flush_every_second(&self) {
        loop {
            let stopped = {
                let stop = lock(&self.stop);
                if *stop {
                    true
                } else {
                    *self
                        .wake
                        .wait_timeout(stop, FLUSH_EVERY)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
            self.flush_all();
            if stopped {
                return;
            }
        }
    }

    fn flush_all(&self) {
        for slot in &*self.slots {
            let mut slot = lock(slot);
            if !slot.buf.is_empty() {
                self.write(&mut slot.buf);
            }
        }
    }

    /// Writes whole lines and empties `buf`, written or not: a log that cannot be written
    /// is reported once on stderr and does not hold lines in memory.
    fn write(&self, buf: &mut Vec<u8>) {
        let written = lock(&self.out).write_all(buf);
        buf.clear();
        if let Err(e) = written
            && !self.failed.swap(true, Ordering::Relaxed)
        {
            tracing::error!(error = %e, "cannot write the access log; its lines are lost until it can");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// This thread's buffer: chosen once, round robin, so each worker thread has one of its own.
fn my_slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    MINE.with(|m| {
        let mut i = m.get();
        if i == usize::MAX {
            i = NEXT.fetch_add(1, Ordering::Relaxed) % SLOTS;
            m.set(i);
        }
        i
    })
}

/// The RFC 3339 time of a line, UTC, to the millisecond: the date and time of day formatted
/// once a second, the milliseconds each line.
#[derive(Default)]
struct Clock {
    second: u64,
    /// `2026-12-03T10:06:31.000Z`, its milliseconds rewritten for each line.
    stamp: [u8; 24],
}

impl Clock {
    fn at(&mut self, since_epoch: Duration) -> &[u8] {
        let s = since_epoch.as_secs();
        if s != self.second || self.stamp[0] == 0 {
            self.second = s;
            let t = time::OffsetDateTime::from_unix_timestamp(i64::try_from(s).unwrap_or(0))
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            let year = u32::try_from(t.year()).unwrap_or(0) % 10000;
            let st = &mut self.stamp;
            digits(&mut st[0..4], year);
            st[4] = b'-';
            digits(&mut st[5..7], u32::from(u8::from(t.month())));
            st[7] = b'-';
            digits(&mut st[8..10], u32::from(t.day()));
            st[10] = b'T';
            digits(&mut st[11..13], u32::from(t.hour()));
            st[13] = b':';
            digits(&mut st[14..16], u32::from(t.minute()));
            st[16] = b':';
            digits(&mut st[17..19], u32::from(t.second()));
            st[19] = b'.';
            st[23] = b'Z';
        }
        digits(&mut self.stamp[20..23], since_epoch.subsec_millis());
        &self.stamp
    }
}

/// `n` in decimal, zero-padded to fill `out`.
fn digits(out: &mut [u8], mut n: u32) {
    for d in out.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// One flat JSON object, the fields in this order, absent ones left out.
fn json(buf: &mut Vec<u8>, time: &[u8], e: &Entry<'_>) {
    buf.extend_from_slice(b"{\"time\":\"");
    buf.extend_from_slice(time);
    buf.push(b'"');
    json_str(buf, b",\"request_id\":\"", Some(e.request_id));
    if let Some(ip) = e.client_ip {
        buf.extend_from_slice(b",\"client_ip\":\"");
        crate::proxy::client_ip::push_ip(buf, ip);
        buf.push(b'"');
    }
    json_str(buf, b",\"method\":\"", Some(e.method));
    json_str(buf, b",\"host\":\"", e.host);
    json_str(buf, b",\"path\":\"", Some(e.path));
    json_str(buf, b",\"target\":\"", e.target);
    json_str(buf, b",\"key_id\":\"", e.key_id);
    json_str(buf, b",\"consumer\":\"", e.consumer);
    buf.extend_from_slice(b",\"status\":");
    buf.extend_from_slice(itoa::Buffer::new().format(e.status).as_bytes());
    json_str(buf, b",\"code\":\"", e.code);
    if let Some(d) = e.upstream {
        buf.extend_from_slice(b",\"upstream_ms\":");
        ms(buf, d, false);
    }
    buf.extend_from_slice(b",\"total_ms\":");
    ms(buf, e.total, false);
    buf.extend_from_slice(b",\"bytes_in\":");
    buf.extend_from_slice(itoa::Buffer::new().format(e.bytes_in).as_bytes());
    buf.extend_from_slice(b",\"bytes_out\":");
    buf.extend_from_slice(itoa::Buffer::new().format(e.bytes_out).as_bytes());
    buf.extend_from_slice(b"}\n");
}

/// `key` is `,"name":"`, one piece.
fn json_str(buf: &mut Vec<u8>, key: &[u8], value: Option<&str>) {
    if let Some(v) = value {
        buf.extend_from_slice(key);
        json_escaped(buf, v);
        buf.push(b'"');
    }
}

/// Quotes, backslashes and control bytes escaped as JSON requires; other text kept as it is.
fn json_escaped(buf: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    // Almost always nothing to escape: one pass without branches, then one copy.
    let special = bytes.iter().fold(false, |any, &c| {
        any | (c < 0x20) | (c == b'"') | (c == b'\\')
    });
    if !special {
        buf.extend_from_slice(bytes);
        return;
    }
    let mut from = 0;
    for (i, &c) in bytes.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..0x20 => b"",
            _ => continue,
        };
        buf.extend_from_slice(&bytes[from..i]);
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            buf.extend_from_slice(b"\\u00");
            buf.push(HEX[usize::from(c >> 4)]);
            buf.push(HEX[usize::from(c & 0xf)]);
        } else {
            buf.extend_from_slice(esc);
        }
        from = i + 1;
    }
    buf.extend_from_slice(&bytes[from..]);
}

/// `name=value` pairs separated by spaces, as tracing's text format writes them: strings quoted
/// and escaped as Rust's `Debug` does, the time and the address bare.
fn text(buf: &mut Vec<u8>, time: &[u8], e: &Entry<'_>) {
    buf.extend_from_slice(b"time=");
    buf.extend_from_slice(time);
    text_str(buf, "request_id", Some(e.request_id));
    if let Some(ip) = e.client_ip {
        buf.extend_from_slice(b" client_ip=");
        crate::proxy::client_ip::push_ip(buf, ip);
    }
    text_str(buf, "method", Some(e.method));
    text_str(buf, "host", e.host);
    text_str(buf, "path", Some(e.path));
    text_str(buf, "target", e.target);
    text_str(buf, "key_id", e.key_id);
    text_str(buf, "consumer", e.consumer);
    buf.extend_from_slice(b" status=");
    buf.extend_from_slice(itoa::Buffer::new().format(e.status).as_bytes());
    text_str(buf, "code", e.code);
    if let Some(d) = e.upstream {
        buf.extend_from_slice(b" upstream_ms=");
        ms(buf, d, true);
    }
    buf.extend_from_slice(b" total_ms=");
    ms(buf, e.total, true);
    buf.extend_from_slice(b" bytes_in=");
    buf.extend_from_slice(itoa::Buffer::new().format(e.bytes_in).as_bytes());
    buf.extend_from_slice(b" bytes_out=");
    buf.extend_from_slice(itoa::Buffer::new().format(e.bytes_out).as_bytes());
    buf.push(b'\n');
}

fn text_str(buf: &mut Vec<u8>, name: &str, value: Option<&str>) {
    let Some(v) = value else { return };
    buf.push(b' ');
    buf.extend_from_slice(name.as_bytes());
    buf.push(b'=');
    if v.bytes()
        .all(|c| (b' '..=b'~').contains(&c) && c != b'"' && c != b'\\')
    {
        buf.push(b'"');
        buf.extend_from_slice(v.as_bytes());
        buf.push(b'"');
    } else {
        let _ = write!(buf, "{v:?}");
    }
}

/// Milliseconds to the microsecond, as an `f64` of them prints (`0.213`, `12`), without the
/// float: `debug` as its `Debug` prints (`12.0`), which tracing's text format uses.
fn ms(buf: &mut Vec<u8>, d: Duration, debug: bool) {
    let us = d.as_micros();
    buf.extend_from_slice(itoa::Buffer::new().format(us / 1000).as_bytes());
    let mut frac = (us % 1000) as u32;
    if frac == 0 {
        if debug {
            buf.extend_from_slice(b".0");
        }
        return;
    }
    let mut len = 3;
    while frac.is_multiple_of(10) {
        frac /= 10;
        len -= 1;
    }
    let mut d = [0u8; 3];
    digits(&mut d[..len], frac);
    buf.push(b'.');
    buf.extend_from_slice(&d[..len]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(path: &'a str, text: &'a str) -> Entry<'a> {
        Entry {
            request_id: text,
            client_ip: Some(IpAddr::from([10, 0, 0, 1])),
            method: "GET",
            host: Some("api.example"),
            path,
            target: Some("main"),
            key_id: Some("k1"),
            consumer: None,
            status: 200,
            code: None,
            upstream: Some(Duration::from_micros(250)),
            total: Duration::from_micros(12_000),
            bytes_in: 0,
            bytes_out: 17,
        }
    }

    /// Whatever a field holds, the line is one JSON object that reads back to the same values:
    /// quotes, backslashes, newlines and other control bytes are escaped; other text is kept.
    #[test]
    fn json_lines_escape_what_json_requires_and_keep_the_rest() {
        let nasty = "a\"b\\c\nd\re\tf\u{1}g\u{7f}h é 中 /?x=1&y=\"2\"";
        let mut buf = Vec::new();
        json(&mut buf, b"2026-12-03T10:06:31.042Z", &entry(nasty, nasty));
        let written = String::from_utf8(buf).unwrap();
        assert_eq!(written.lines().count(), 1, "{written}");
        assert!(written.ends_with("}\n"));
        let v: serde_json::Value = serde_json::from_str(&written).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "time": "2026-12-03T10:06:31.042Z", "request_id": nasty, "client_ip": "10.0.0.1",
                "method": "GET", "host": "api.example", "path": nasty, "target": "main",
                "key_id": "k1", "status": 200, "upstream_ms": 0.25, "total_ms": 12,
                "bytes_in": 0, "bytes_out": 17
            })
        );
        // The field order and number format of the lines written through tracing before.
        assert!(
            written.starts_with("{\"time\":\"2026-12-03T10:06:31.042Z\",\"request_id\":\"a\\\"b"),
            "{written}"
        );
        assert!(
            written.ends_with(
                ",\"status\":200,\"upstream_ms\":0.25,\"total_ms\":12,\"bytes_in\":0,\"bytes_out\":17}\n"
            ),
            "{written}"
        );
    }

    /// The text format is the one tracing's `fmt` wrote: strings as Rust's `Debug` prints them,
    /// milliseconds as an `f64`'s `Debug`.
    #[test]
    fn text_lines_are_what_tracing_wrote() {
        let mut buf = Vec::new();
        text(
            &mut buf,
            b"2026-12-03T10:06:31.042Z",
            &entry("/a?b=\"c\"\n", "r-1"),
        );
        let written = String::from_utf8(buf).unwrap();
        let expected = format!(
            "time=2026-12-03T10:06:31.042Z request_id=\"r-1\" client_ip=10.0.0.1 method=\"GET\" \
             host=\"api.example\" path={:?} target=\"main\" key_id=\"k1\" status=200 \
             upstream_ms=0.25 total_ms=12.0 bytes_in=0 bytes_out=17\n",
            "/a?b=\"c\"\n"
        );
        assert_eq!(written, expected);
    }

    /// Addresses print as their `Display` does.
    #[test]
    fn addresses_print_as_display_does() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.0.0.1",
            "127.0.0.1",
            "99.100.109.255",
            "255.255.255.255",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:10.0.0.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut b = Vec::new();
            crate::proxy::client_ip::push_ip(&mut b, ip);
            assert_eq!(String::from_utf8(b).unwrap(), ip.to_string());
        }
    }

    /// The milliseconds print as `micros as f64 / 1000.0` did, `Display` and `Debug`.
    #[test]
    fn milliseconds_print_as_the_float_did() {
        for us in [
            0u64,
            1,
            10,
            100,
            999,
            1000,
            1001,
            1010,
            12_345,
            250_000,
            987_654_321,
        ] {
            let d = Duration::from_micros(us);
            let f = us as f64 / 1000.0;
            let mut a = Vec::new();
            ms(&mut a, d, false);
            assert_eq!(String::from_utf8(a).unwrap(), format!("{f}"));
            let mut b = Vec::new();
            ms(&mut b, d, true);
            assert_eq!(String::from_utf8(b).unwrap(), format!("{f:?}"));
        }
    }

    /// The cached clock reads back as the instant it was given, to the millisecond, across a
    /// change of second, day and year.
    #[test]
    fn the_clock_is_rfc3339_to_the_millisecond() {
        let mut c = Clock::default();
        for (s, ms) in [
            (1_796_299_591u64, 42u32),
            (1_796_299_591, 999),
            (1_796_299_592, 0),
            (1_798_761_599, 500),
            (1_798_761_600, 1),
        ] {
            let d = Duration::from_secs(s) + Duration::from_millis(u64::from(ms));
            let stamp = std::str::from_utf8(c.at(d)).unwrap().to_owned();
            let t =
                time::OffsetDateTime::parse(&stamp, &time::format_description::well_known::Rfc3339)
                    .unwrap();
            assert_eq!(t.unix_timestamp_nanos(), d.as_nanos() as i128, "{stamp}");
        }
    }

    /// Lines reach the file within the flush interval when quiet, and all of them on drop.
    #[test]
    fn quiet_lines_are_written_within_a_second_and_the_rest_on_drop() {
        let path = std::env::temp_dir().join(format!("keygate-al-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let log = AccessLog::open(&Log {
            access: AccessTo::File(path.clone()),
            format: LogFormat::Json,
        })
        .unwrap()
        .unwrap();
        log.log(&entry("/one", "r-1"));
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while std::fs::read_to_string(&path).unwrap().lines().count() < 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "not flushed within 3 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        for _ in 0..10 {
            log.log(&entry("/two", "r-2"));
        }
        drop(log);
        let written = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(written.lines().count(), 11, "{written}");
    }
}
