//! Raw config -> [`Snapshot`]: every check, every conversion, once, at load time.
//!
//! All problems are collected, not just the first, and each names the file, line and column
//! and the key, consumer or target it belongs to, so one `keygate check` run shows everything
//! that needs fixing.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::BuildHasher as _;
use std::net::{IpAddr, SocketAddr};
use std::ops::{Deref, Range};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::uri::{Scheme, Uri};
use http::{HeaderName, HeaderValue};
use ipnet::IpNet;
use toml::Spanned;
use toml::value::{Datetime, Offset};

use super::raw::{
    HasKeys, RawAdmin, RawAdminKey, RawCluster, RawConfig, RawConsumer, RawKey, RawKeysFile,
    RawLog, RawMetrics, RawServer, RawTarget,
};
use super::{ConfigError, Severity, scan};
use crate::model::TlsFiles;
use crate::secret::KeyHash;
use crate::snapshot::{
    AccessTo, Admin, AdminKey, ClusterConfig, ClusterMode, Consumer, Id, IdArena, IpList, Key,
    KeyParts, KeyTable, List, Log, LogFormat, OnRedisError, Paths, Rate, Rules, Server, Snapshot,
    Target, TargetIdx, TargetSet,
};

/// Where keygate listens when `[server] listen` is absent.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_KEY_HEADER: &str = "X-API-Key";
pub const DEFAULT_KEY_QUERY: &str = "api_key";
/// Prefix of the secrets the admin API generates, so a leaked one is recognisable in a scan.
pub const DEFAULT_KEY_PREFIX: &str = "kg_";
/// Enough for a person mistyping a key; far too few to guess one.
pub const DEFAULT_FAILED_AUTH_LIMIT: &str = "30/minute";
/// A TLS handshake that has not completed by then is dropped: a stalled client holds a socket,
/// never a worker, but without a bound it could hold sockets forever.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// `[server] max_connections`: well under the usual 65,536 open-files limit, which also has to
/// cover one upstream connection per request in flight, the config files and the admin API.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 16_384;
/// `[server] header_read_timeout`: time to send a request's head (slowloris).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// `[server] max_header_bytes`: nginx's default head buffers hold 4 x 8 KiB; keys and tokens
/// make heads bigger than they used to be.
pub const DEFAULT_MAX_HEADER_BYTES: u32 = 64 * 1024;
/// `[server] max_streams`: HTTP/2 streams per connection (nginx's `http2_max_concurrent_streams`).
pub const DEFAULT_MAX_STREAMS: u32 = 128;
/// `[server] idle_timeout`: a connection with no request in flight is closed after this
/// (nginx's `keepalive_timeout` is 75 s).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// `[[targets]] max_body`: largest request body; `"unlimited"` lifts it.
pub const DEFAULT_MAX_BODY: u64 = 10_000_000;
/// hyper's smallest read buffer.
const MIN_MAX_HEADER_BYTES: u32 = 8192;
/// `[server] shutdown_timeout`: time for requests in flight after SIGTERM or SIGINT.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long keygate waits for an upstream's response headers before answering 504.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

/// One file the config is read from: the main file, or the keys file.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub file: &'a Path,
    pub text: &'a str,
}

/// A file as `config::parse` read it: `raw` is what `toml` parsed, either the whole text or
/// (when `scan::split` cut the `[[keys]]` tables out) the rest, and then `chunks` are the
/// bodies of those tables, which `validate` reads one at a time.
#[derive(Debug)]
pub struct File<'a, R> {
    pub source: Source<'a>,
    pub raw: R,
    /// Where the pieces of the text `raw` comes from are in the file (`scan::Split::map`);
    /// empty when it is the whole file.
    pub map: &'a [(usize, usize)],
    pub chunks: &'a [(u32, u32)],
}

/// Why `validate` gave no snapshot.
#[derive(Debug)]
pub enum Failure {
    /// Every problem found.
    Invalid(Vec<ConfigError>),
    /// A `[[keys]]` table of this file (0: main, 1: keys file) is not valid TOML on its own:
    /// the caller parses the whole file with `toml`, which says what is wrong.
    Reparse(usize),
}

/// Who a problem is about (`[server]`, `key "acme"`, or nobody), put into words only when there
/// is a problem: a million keys are checked without formatting a million names.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'s>(&'static str, Option<&'s str>);

impl<'s> Subject<'s> {
    fn item(kind: &'static str, id: &'s str) -> Subject<'s> {
        Subject(kind, Some(id))
    }
}

impl From<&'static str> for Subject<'_> {
    fn from(section: &'static str) -> Self {
        Subject(section, None)
    }
}

impl fmt::Display for Subject<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            None => f.write_str(self.0),
            Some(id) => write!(f, "{} {id:?}", self.0),
        }
    }
}

/// Collects problems with their positions while the raw config is checked.
struct Checker<'a> {
    /// `[0]` is the main file, `[1]` the keys file when there is one.
    sources: Vec<Source<'a>>,
    /// For each source, [`File::map`].
    maps: Vec<&'a [(usize, usize)]>,
    /// The source of the item being checked: spans are positions in it.
    cur: usize,
    /// While a `[[keys]]` table read on its own is checked: the file offset its spans count
    /// from. `None`: spans are offsets in the text of [`File::raw`].
    base: Option<usize>,
    problems: Vec<ConfigError>,
}

impl Checker<'_> {
    fn main_file(&self) -> &Path {
        self.sources[0].file
    }

    /// Where in its file a span of the current item starts.
    fn offset(&self, span_start: usize) -> usize {
        match self.base {
            Some(base) => base + span_start,
            None => scan::file_offset(self.maps[self.cur], span_start),
        }
    }

    /// Where a span of the current source starts (source, file offset), for "first defined at"
    /// messages. The line is only worked out when a message needs it: counting lines for every
    /// key would make loading quadratic in the file's size.
    fn place(&self, span: Range<usize>) -> (usize, usize) {
        (self.cur, self.offset(span.start))
    }

    /// `line N` in the current file, `FILE:N` in the other one.
    fn describe(&self, (src, offset): (usize, usize)) -> String {
        let line = line_col(self.sources[src].text, offset).0;
        if src == self.cur {
            format!("line {line}")
        } else {
            format!("{}:{line}", self.sources[src].file.display())
        }
    }

    fn report(
        &mut self,
        severity: Severity,
        span: Range<usize>,
        subject: Subject,
        message: String,
    ) {
        let source = self.sources[self.cur];
        let (line, column) = line_col(source.text, self.offset(span.start));
        let subject = subject.to_string();
        self.problems.push(ConfigError {
            severity,
            file: source.file.to_path_buf(),
            line,
            column,
            subject: (!subject.is_empty()).then_some(subject),
            message,
        });
    }

    fn error<'s>(
        &mut self,
        span: Range<usize>,
        subject: impl Into<Subject<'s>>,
        message: impl Into<String>,
    ) {
        self.report(Severity::Error, span, subject.into(), message.into());
    }

    fn warn<'s>(
        &mut self,
        span: Range<usize>,
        subject: impl Into<Subject<'s>>,
        message: impl Into<String>,
    ) {
        self.report(Severity::Warning, span, subject.into(), message.into());
    }

    fn has_errors(&self) -> bool {
        self.problems.iter().any(|p| p.severity == Severity::Error)
    }

    /// The id in `raw`, made in `arena` when one is given.
    fn id<S: Deref<Target = str>>(
        &mut self,
        raw: &Spanned<S>,
        what: &str,
        arena: Option<&mut IdArena>,
    ) -> Option<Id> {
        let text: &str = raw.get_ref();
        let id = match arena {
            Some(arena) => arena.id(text),
            None => Id::new(text),
        };
        if id.is_none() {
            self.error(
                raw.span(),
                "",
                format!(
                    "{what} {text:?} is not a valid id: use 1 to {} {}",
                    Id::MAX_LEN,
                    Id::ALLOWED
                ),
            );
        }
        id
    }

    fn nets<'s, S: Deref<Target = str>>(
        &mut self,
        raw: Option<&[Spanned<S>]>,
        subject: impl Into<Subject<'s>>,
        field: &str,
    ) -> Vec<IpNet> {
        let subject = subject.into();
        let mut nets = Vec::new();
        for item in raw.unwrap_or_default() {
            let text: &str = item.get_ref();
            match parse_net(text) {
                Some(n) => nets.push(n),
                None => self.error(
                    item.span(),
                    subject,
                    format!(
                        "{field}: {text:?} is not an IP address or CIDR (e.g. \"203.0.113.0/24\", \"2001:db8::/32\")",
                    ),
                ),
            }
        }
        nets
    }

    fn rate<'s, S: Deref<Target = str>>(
        &mut self,
        raw: Option<&Spanned<S>>,
        subject: impl Into<Subject<'s>>,
        field: &str,
    ) -> Option<Rate> {
        let raw = raw?;
        match Rate::parse(raw.get_ref()) {
            Ok(r) => Some(r),
            Err(e) => {
                self.error(raw.span(), subject, format!("{field}: {e}"));
                None
            }
        }
    }

    fn targets<'s, S: Deref<Target = str>>(
        &mut self,
        raw: Option<&[Spanned<S>]>,
        names: &HashMap<String, TargetIdx>,
        subject: impl Into<Subject<'s>>,
    ) -> Vec<TargetIdx> {
        let subject = subject.into();
        let mut set = Vec::new();
        for t in raw.unwrap_or_default() {
            let name: &str = t.get_ref();
            match names.get(name) {
                Some(&i) => set.push(i),
                None => self.error(
                    t.span(),
                    subject,
                    format!("targets: no [[targets]] is named {name:?}"),
                ),
            }
        }
        set
    }

    fn duration<'s>(
        &mut self,
        raw: Option<&Spanned<String>>,
        subject: impl Into<Subject<'s>>,
        field: &str,
    ) -> Option<Duration> {
        let raw = raw?;
        match humantime::parse_duration(raw.get_ref()) {
            Ok(d) if !d.is_zero() => Some(d),
            _ => {
                self.error(
                    raw.span(),
                    subject,
                    format!(
                        "{field}: {:?} is not a duration such as \"30s\" or \"500ms\"",
                        raw.get_ref()
                    ),
                );
                None
            }
        }
    }

    /// A byte size such as `"10MB"` (10,000,000), `"4MiB"` or `"512"`; `"unlimited"` is `None`.
    fn size<'s>(
        &mut self,
        raw: &Spanned<String>,
        subject: impl Into<Subject<'s>>,
        field: &str,
    ) -> Option<Option<u64>> {
        let text = raw.get_ref().trim();
        if text == "unlimited" {
            return Some(None);
        }
        match text.parse::<bytesize::ByteSize>() {
            Ok(b) => Some(Some(b.as_u64())),
            Err(_) => {
                self.error(
                    raw.span(),
                    subject,
                    format!(
                        "{field}: {:?} is not a size such as \"10MB\", \"512KiB\" or \"unlimited\"",
                        raw.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn instant<'s>(
        &mut self,
        raw: Option<&Spanned<Datetime>>,
        subject: impl Into<Subject<'s>>,
        field: &str,
    ) -> Option<SystemTime> {
        let raw = raw?;
        let t = to_system_time(raw.get_ref());
        if t.is_none() {
            self.error(
                raw.span(),
                subject,
                format!(
                    "{field}: {} is not a date-time with an offset, e.g. 2027-01-01T00:00:00Z",
                    raw.get_ref()
                ),
            );
        }
        t
    }

    fn path<'s, S: Deref<Target = str>>(
        &mut self,
        raw: &Spanned<S>,
        subject: impl Into<Subject<'s>>,
        field: &str,
    ) -> Option<Box<str>> {
        let p: &str = raw.get_ref();
        if !p.starts_with('/') || p.contains(['?', '#']) || p.chars().any(char::is_whitespace) {
            self.error(
                raw.span(),
                subject,
                format!(
                    "{field}: {p:?} must be a path that starts with '/', without '?', '#' or spaces"
                ),
            );
            return None;
        }
        // Stored without a trailing '/' so that "/api/" and "/api" match the same segments.
        let trimmed = p.trim_end_matches('/');
        Some(if trimmed.is_empty() {
            "/".into()
        } else {
            trimmed.into()
        })
    }
}

/// Turns parsed files into a snapshot, or into every problem found in them. Warnings (such as
/// a plaintext secret) are returned in both cases.
pub fn validate(
    main: &File<'_, RawConfig<'_>>,
    keys_file: Option<&File<'_, RawKeysFile<'_>>>,
) -> Result<(Snapshot, Vec<ConfigError>), Failure> {
    let mut c = Checker {
        sources: vec![main.source],
        maps: vec![main.map],
        cur: 0,
        base: None,
        problems: Vec::new(),
    };
    let raw = &main.raw;
    let server = server(&mut c, &raw.server);
    let admin = admin(&mut c, raw.admin.as_ref(), &raw.admin_keys, server.as_ref());
    let log = log(&mut c, raw.log.as_ref(), main.source.file);
    let metrics_listen = metrics(
        &mut c,
        raw.metrics.as_ref(),
        server.as_ref(),
        admin.as_ref(),
    );
    let cluster = raw
        .cluster
        .as_ref()
        .and_then(|r| cluster(&mut c, r.get_ref(), r.span()));
    let (targets, target_names) = targets(&mut c, &raw.targets);
    let keys_path = raw
        .keys_file
        .as_ref()
        .map(|k| relative_to(main.source.file, k.get_ref()));
    if let Some(k) = keys_file {
        c.sources.push(k.source);
        c.maps.push(k.map);
    }
    let consumer_items = raw.consumers.iter().map(|r| (0, r));
    let consumer_items = consumer_items.chain(
        keys_file
            .iter()
            .flat_map(|m| m.raw.consumers.iter().map(|r| (1, r))),
    );
    let (consumers, consumer_ids) = consumers(&mut c, consumer_items, &target_names);
    let count = key_count(main) + keys_file.map_or(0, key_count);
    let mut pass = KeyPass::new(count, &target_names, &consumer_ids);
    pass.file(&mut c, 0, main)?;
    if let Some(k) = keys_file {
        pass.file(&mut c, 1, k)?;
    }
    c.cur = 0;
    c.base = None;
    match (server, admin) {
        (Some(server), Some(admin)) if !c.has_errors() => {
            let mut snap = Snapshot::with_table(server, targets, consumers, pass.keys, pass.table);
            snap.admin = admin;
            snap.keys_file = keys_path;
            snap.log = log;
            snap.metrics_listen = metrics_listen;
            snap.cluster = cluster;
            Ok((snap, c.problems))
        }
        _ => Err(Failure::Invalid(c.problems)),
    }
}

fn key_count<'a, R: HasKeys<'a>>(f: &File<'_, R>) -> usize {
    f.raw.keys().map_or(0, <[_]>::len) + f.chunks.len()
}

/// `[log]`: the access log's destination and format.
fn log(c: &mut Checker<'_>, raw: Option<&RawLog>, config: &Path) -> Log {
    const S: &str = "[log]";
    let Some(raw) = raw else {
        return Log::default();
    };
    let access = match &raw.access {
        None => AccessTo::default(),
        Some(a) => match a.get_ref().as_str() {
            "stdout" => AccessTo::Stdout,
            "off" => AccessTo::Off,
            "" => {
                c.error(
                    a.span(),
                    S,
                    "access: expected \"stdout\", \"off\" or a file path",
                );
                AccessTo::default()
            }
            path => AccessTo::File(relative_to(config, path)),
        },
    };
    let format = match raw.format.as_ref().map(|f| (f, f.get_ref().as_str())) {
        None | Some((_, "json")) => LogFormat::Json,
        Some((_, "text")) => LogFormat::Text,
        Some((f, other)) => {
            c.error(
                f.span(),
                S,
                format!("format: {other:?} is not \"json\" or \"text\""),
            );
            LogFormat::Json
        }
    };
    Log { access, format }
}

/// `[cluster] timeout`: the longest a request waits on Redis. A local round trip takes well
/// under a millisecond; past 50 ms Redis is treated as down and `on_redis_error` decides, so a
/// slow Redis adds at most this to a request.
pub const DEFAULT_CLUSTER_TIMEOUT: Duration = Duration::from_millis(50);
/// `[cluster] sync_interval`: how stale a `local-sync` instance's view of the others may be.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(10);

/// `[cluster]`: the Redis URL and how rate limits use it.
fn cluster(c: &mut Checker<'_>, raw: &RawCluster, table: Range<usize>) -> Option<ClusterConfig> {
    const S: &str = "[cluster]";
    let valid = |url: &str| {
        ["redis://", "rediss://", "redis+unix://", "unix://"]
            .iter()
            .any(|s| url.starts_with(s))
            && redis::IntoConnectionInfo::into_connection_info(url).is_ok()
    };
    let given = [
        raw.redis.as_ref().map(Spanned::span),
        raw.redis_cluster.as_ref().map(Spanned::span),
        raw.redis_sentinel.as_ref().map(Spanned::span),
    ];
    let mut ok = true;
    if given.iter().flatten().count() != 1 {
        c.error(
            given.iter().flatten().nth(1).cloned().unwrap_or(table.clone()),
            S,
            "give one of redis = \"redis://…\", redis_cluster = [\"redis://…\", …] or redis_sentinel = [\"redis://…\", …]",
        );
        ok = false;
    }
    let mut list = |field: &str, raw: &Spanned<Vec<String>>| -> Vec<String> {
        let bad: Vec<&String> = raw.get_ref().iter().filter(|u| !valid(u)).collect();
        if raw.get_ref().is_empty() || !bad.is_empty() {
            c.error(
                raw.span(),
                S,
                format!("{field}: a list of redis:// or rediss:// URLs; not URLs: {bad:?}"),
            );
            ok = false;
        }
        raw.get_ref().clone()
    };
    let (url, nodes) = match (&raw.redis, &raw.redis_cluster, &raw.redis_sentinel) {
        (Some(r), _, _) => {
            if !valid(r.get_ref()) {
                c.error(
                    r.span(),
                    S,
                    format!(
                        "redis: {:?} is not a redis:// or rediss:// URL",
                        r.get_ref()
                    ),
                );
                ok = false;
            }
            (r.get_ref().clone(), Vec::new())
        }
        (None, Some(l), _) => {
            let nodes = list("redis_cluster", l);
            (nodes.first().cloned().unwrap_or_default(), nodes)
        }
        (None, None, Some(l)) => {
            let nodes = list("redis_sentinel", l);
            (nodes.first().cloned().unwrap_or_default(), nodes)
        }
        (None, None, None) => (String::new(), Vec::new()),
    };
    let sentinel_master = match (&raw.redis_sentinel, &raw.sentinel_master) {
        (Some(_), Some(m)) if !m.get_ref().is_empty() => Some(m.get_ref().clone()),
        (Some(l), _) => {
            c.error(
                l.span(),
                S,
                "redis_sentinel needs sentinel_master = \"<the master's name>\"",
            );
            ok = false;
            None
        }
        (None, Some(m)) => {
            c.error(m.span(), S, "sentinel_master: only with redis_sentinel");
            ok = false;
            None
        }
        (None, None) => None,
    };
    let mode = match raw.mode.as_ref().map(|m| (m, m.get_ref().as_str())) {
        None | Some((_, "strict")) => ClusterMode::Strict,
        Some((_, "local-sync")) => ClusterMode::LocalSync,
        Some((m, other)) => {
            c.error(
                m.span(),
                S,
                format!("mode: {other:?} is not \"strict\" or \"local-sync\""),
            );
            ClusterMode::Strict
        }
    };
    let on_redis_error = match raw
        .on_redis_error
        .as_ref()
        .map(|m| (m, m.get_ref().as_str()))
    {
        None | Some((_, "local")) => OnRedisError::Local,
        Some((_, "allow")) => OnRedisError::Allow,
        Some((_, "deny")) => OnRedisError::Deny,
        Some((m, other)) => {
            c.error(
                m.span(),
                S,
                format!("on_redis_error: {other:?} is not \"allow\", \"deny\" or \"local\""),
            );
            OnRedisError::Local
        }
    };
    let timeout = c
        .duration(raw.timeout.as_ref(), S, "timeout")
        .unwrap_or(DEFAULT_CLUSTER_TIMEOUT);
    let sync_interval = c
        .duration(raw.sync_interval.as_ref(), S, "sync_interval")
        .unwrap_or(DEFAULT_SYNC_INTERVAL);
    let prefix = match &raw.prefix {
        None => "keygate:".to_owned(),
        Some(p) => {
            if p.get_ref().is_empty() || p.get_ref().contains(['{', '}', ' ']) {
                c.error(
                    p.span(),
                    S,
                    "prefix: must be non-empty, without braces or spaces",
                );
            }
            p.get_ref().clone()
        }
    };
    ok.then_some(ClusterConfig {
        redis: url,
        nodes,
        sentinel_master,
        mode,
        on_redis_error,
        timeout,
        sync_interval,
        prefix,
    })
}

/// `[metrics] listen`: its own port, never the proxy's or the admin API's.
fn metrics(
    c: &mut Checker<'_>,
    raw: Option<&RawMetrics>,
    server: Option<&Server>,
    admin: Option<&Option<Admin>>,
) -> Option<SocketAddr> {
    const S: &str = "[metrics]";
    let raw = raw?;
    let Ok(listen) = raw.listen.get_ref().parse::<SocketAddr>() else {
        c.error(
            raw.listen.span(),
            S,
            format!("listen: {:?} is not IP:port", raw.listen.get_ref()),
        );
        return None;
    };
    let taken = server.is_some_and(|s| s.listen == listen)
        || admin.is_some_and(|a| a.as_ref().is_some_and(|a| a.listen == listen));
    if listen.port() != 0 && taken {
        c.error(
            raw.listen.span(),
            S,
            "listen: the metrics listener needs its own port",
        );
    }
    Some(listen)
}

/// `[admin]` and `[[admin_keys]]`. `Some(None)` when there is no admin API.
fn admin(
    c: &mut Checker<'_>,
    raw: Option<&RawAdmin>,
    raw_keys: &[RawAdminKey],
    server: Option<&Server>,
) -> Option<Option<Admin>> {
    const S: &str = "[admin]";
    let mut keys = HashMap::new();
    let mut ids: HashMap<&str, (usize, usize)> = HashMap::new();
    for k in raw_keys {
        let subject = Subject::item("admin key", k.id.get_ref());
        let Some(id) = c.id(&k.id, "admin key id", None) else {
            continue;
        };
        if let Some(first) = ids.insert(k.id.get_ref(), c.place(k.id.span())) {
            let first = c.describe(first);
            c.error(
                k.id.span(),
                subject,
                format!("duplicate admin key id (first defined at {first})"),
            );
            continue;
        }
        match KeyHash::parse(k.hash.get_ref()) {
            None => c.error(
                k.hash.span(),
                subject,
                "hash: expected \"sha256:\" followed by 64 hex digits",
            ),
            Some(h) => {
                if keys.insert(h, AdminKey { id, role: k.role }).is_some() {
                    c.error(
                        k.hash.span(),
                        subject,
                        "same secret hash as another admin key",
                    );
                }
            }
        }
    }
    let Some(raw) = raw else {
        if let Some(k) = raw_keys.first() {
            c.warn(
                k.id.span(),
                "",
                "[[admin_keys]] without [admin] listen: the admin API is off",
            );
        }
        return Some(None);
    };
    let listen = match raw.listen.get_ref().parse::<SocketAddr>() {
        Ok(l) => l,
        Err(_) => {
            c.error(
                raw.listen.span(),
                S,
                format!("listen: {:?} is not IP:port", raw.listen.get_ref()),
            );
            return None;
        }
    };
    // Port 0 asks the OS for a free port on each bind, so two port-0 listeners never collide.
    if listen.port() != 0 && server.is_some_and(|s| s.listen == listen) {
        c.error(
            raw.listen.span(),
            S,
            "listen: the admin API needs its own port, never the proxy's",
        );
    }
    if raw_keys.is_empty() {
        c.warn(
            raw.listen.span(),
            S,
            "no [[admin_keys]]: every admin request will be refused",
        );
    }
    let key_prefix = match &raw.key_prefix {
        None => DEFAULT_KEY_PREFIX.into(),
        Some(p) => {
            let ok = p.get_ref().len() <= 16
                && p.get_ref()
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !ok {
                c.error(
                    p.span(),
                    S,
                    "key_prefix: at most 16 letters, digits, '_' or '-'",
                );
            }
            p.get_ref().as_str().into()
        }
    };
    Some(Some(Admin {
        listen,
        key_prefix,
        keys,
    }))
}

fn server(c: &mut Checker<'_>, raw: &RawServer) -> Option<Server> {
    const S: &str = "[server]";
    let listen = match &raw.listen {
        None => DEFAULT_LISTEN.parse().ok(),
        Some(l) => {
            let parsed = l.get_ref().parse::<SocketAddr>().ok();
            if parsed.is_none() {
                c.error(
                    l.span(),
                    S,
                    format!(
                        "listen: {:?} is not IP:port (e.g. \"127.0.0.1:8080\", \"[::1]:8080\")",
                        l.get_ref()
                    ),
                );
            }
            parsed
        }
    };
    let trusted_proxies = IpList::new(c.nets(Some(&raw.trusted_proxies), S, "trusted_proxies"));
    let key_header = match &raw.key_header {
        None => Some(HeaderName::from_static("x-api-key")),
        Some(h) => {
            let parsed = HeaderName::from_bytes(h.get_ref().as_bytes()).ok();
            if parsed.is_none() {
                c.error(
                    h.span(),
                    S,
                    format!("key_header: {:?} is not a valid header name", h.get_ref()),
                );
            }
            parsed
        }
    };
    let key_query: Box<str> = match &raw.key_query {
        None => DEFAULT_KEY_QUERY.into(),
        Some(q) => {
            let name = q.get_ref();
            if name.is_empty()
                || name
                    .bytes()
                    .any(|b| matches!(b, b'&' | b'=' | b'#' | b'%' | b'+') || b <= b' ')
            {
                c.error(
                    q.span(),
                    S,
                    format!("key_query: {name:?} must be a plain, non-empty parameter name"),
                );
            }
            name.as_str().into()
        }
    };
    let tls = raw.tls.as_ref().map(|t| {
        let t = t.get_ref();
        TlsFiles {
            cert: relative_to(c.main_file(), t.cert.get_ref()),
            key: relative_to(c.main_file(), t.key.get_ref()),
            handshake_timeout: c
                .duration(
                    t.handshake_timeout.as_ref(),
                    "[server.tls]",
                    "handshake_timeout",
                )
                .unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT),
        }
    });
    let failed_auth_limit = match &raw.failed_auth_limit {
        None => Rate::parse(DEFAULT_FAILED_AUTH_LIMIT).ok(),
        some => c.rate(some.as_ref(), S, "failed_auth_limit"),
    };
    let shutdown_timeout = c
        .duration(raw.shutdown_timeout.as_ref(), S, "shutdown_timeout")
        .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT);
    let max_connections = match &raw.max_connections {
        None => DEFAULT_MAX_CONNECTIONS,
        Some(n) if *n.get_ref() == 0 => {
            c.error(
                n.span(),
                S,
                "max_connections: must be at least 1".to_owned(),
            );
            DEFAULT_MAX_CONNECTIONS
        }
        Some(n) => *n.get_ref(),
    };
    let header_read_timeout = c
        .duration(raw.header_read_timeout.as_ref(), S, "header_read_timeout")
        .unwrap_or(DEFAULT_HEADER_READ_TIMEOUT);
    let max_header_bytes = match &raw.max_header_bytes {
        None => DEFAULT_MAX_HEADER_BYTES,
        Some(n) if *n.get_ref() < MIN_MAX_HEADER_BYTES => {
            c.error(
                n.span(),
                S,
                format!("max_header_bytes: must be at least {MIN_MAX_HEADER_BYTES}"),
            );
            DEFAULT_MAX_HEADER_BYTES
        }
        Some(n) => *n.get_ref(),
    };
    let max_streams = match &raw.max_streams {
        None => DEFAULT_MAX_STREAMS,
        Some(n) if *n.get_ref() == 0 => {
            c.error(n.span(), S, "max_streams: must be at least 1".to_owned());
            DEFAULT_MAX_STREAMS
        }
        Some(n) => *n.get_ref(),
    };
    let idle_timeout = c
        .duration(raw.idle_timeout.as_ref(), S, "idle_timeout")
        .unwrap_or(DEFAULT_IDLE_TIMEOUT);
    Some(Server {
        listen: listen?,
        max_streams,
        idle_timeout,
        header_read_timeout,
        max_header_bytes,
        shutdown_timeout,
        max_connections,
        trusted_proxies,
        key_header: key_header?,
        key_query,
        failed_auth_limit: failed_auth_limit?,
        tls,
    })
}

fn targets(c: &mut Checker<'_>, raw: &[RawTarget]) -> (Vec<Target>, HashMap<String, TargetIdx>) {
    let mut out = Vec::new();
    let mut names: HashMap<String, TargetIdx> = HashMap::new();
    let mut first_line: HashMap<&str, (usize, usize)> = HashMap::new();
    // (host or "" for any host, prefix) -> target name, to refuse two targets on one route.
    let mut routes: HashMap<(String, Box<str>), String> = HashMap::new();
    // https authority -> ca_file: upstream connections are pooled per authority, so one
    // authority must be verified one way.
    let mut https_cas: HashMap<String, Option<String>> = HashMap::new();
    if raw.is_empty() {
        c.error(
            0..0,
            "",
            "no [[targets]]: keygate needs at least one upstream to route to",
        );
    }
    if raw.len() > usize::from(TargetIdx::MAX) {
        c.error(
            0..0,
            "",
            format!("at most {} [[targets]] are supported", TargetIdx::MAX),
        );
        return (out, names);
    }
    for t in raw {
        let Some(name) = c.id(&t.name, "target name", None) else {
            continue;
        };
        let subject = Subject::item("target", t.name.get_ref());
        if let Some(first) = first_line.insert(t.name.get_ref(), c.place(t.name.span())) {
            let first = c.describe(first);
            c.error(
                t.name.span(),
                subject,
                format!("duplicate target name (first defined at {first})"),
            );
            continue;
        }
        let upstream = upstream(c, &t.upstream, subject);
        let tls = match (&upstream, &t.ca_file) {
            (Some((scheme, ..)), ca) if *scheme == Scheme::HTTPS => {
                let path = ca.as_ref().map(|p| relative_to(c.main_file(), p.get_ref()));
                match crate::tls::upstream_config(path.as_deref()) {
                    Ok(config) => Some(config),
                    Err(e) => {
                        let span = ca.as_ref().map_or(t.upstream.span(), |p| p.span());
                        c.error(span, subject, format!("ca_file: {e}"));
                        None
                    }
                }
            }
            (_, Some(ca)) => {
                c.error(
                    ca.span(),
                    subject,
                    "ca_file: only an https:// upstream is verified against a CA",
                );
                None
            }
            _ => None,
        };
        if let (Some((_, authority, _)), Some(_)) = (&upstream, &tls) {
            let ca = t.ca_file.as_ref().map(|p| p.get_ref().clone());
            match https_cas.entry(authority.as_str().to_owned()) {
                Entry::Occupied(o) if *o.get() != ca => c.error(
                    t.upstream.span(),
                    subject,
                    "another target reaches the same https upstream with a different ca_file",
                ),
                Entry::Occupied(_) => {}
                Entry::Vacant(v) => {
                    v.insert(ca);
                }
            }
        }
        let mut hosts = Vec::new();
        for h in t.hosts.as_deref().unwrap_or_default() {
            let host = h.get_ref().trim_end_matches('.').to_ascii_lowercase();
            let bad_port = host
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
                && !host.ends_with(']');
            if host.is_empty() || host.contains(['/', ' ', '*']) || bad_port {
                c.error(
                    h.span(),
                    subject,
                    format!("hosts: {:?} must be a plain host name without port or wildcard (the port is ignored when matching)", h.get_ref()),
                );
                continue;
            }
            hosts.push(host.into_boxed_str());
        }
        let path_prefix = match &t.path_prefix {
            None => Some("/".into()),
            Some(p) => c.path(p, subject, "path_prefix"),
        };
        let timeout = match &t.timeout {
            None => Some(DEFAULT_UPSTREAM_TIMEOUT),
            some => c.duration(some.as_ref(), subject, "timeout"),
        };
        let max_body = match &t.max_body {
            None => Some(Some(DEFAULT_MAX_BODY)),
            Some(m) => c.size(m, subject, "max_body"),
        };
        let (
            Some((scheme, authority, upstream_host)),
            Some(path_prefix),
            Some(timeout),
            Some(max_body),
        ) = (upstream, path_prefix, timeout, max_body)
        else {
            continue;
        };
        let route_hosts: Vec<String> = if hosts.is_empty() {
            vec![String::new()]
        } else {
            hosts.iter().map(|h| h.to_string()).collect()
        };
        for h in route_hosts {
            let shown = if h.is_empty() {
                "any host".to_owned()
            } else {
                format!("host {h:?}")
            };
            if let Some(other) = routes.insert((h, path_prefix.clone()), t.name.get_ref().clone()) {
                c.error(
                    t.name.span(),
                    subject,
                    format!("{shown} with path_prefix {path_prefix:?} is already routed to target {other:?}"),
                );
            }
        }
        names.insert(t.name.get_ref().clone(), out.len() as TargetIdx);
        out.push(Target {
            name,
            scheme,
            authority,
            upstream_host,
            hosts,
            path_prefix,
            timeout,
            max_body,
            preserve_host: t.preserve_host.unwrap_or(false),
            tls,
        });
    }
    (out, names)
}

fn upstream(
    c: &mut Checker<'_>,
    raw: &Spanned<String>,
    subject: Subject<'_>,
) -> Option<(Scheme, http::uri::Authority, HeaderValue)> {
    let text = raw.get_ref();
    let bad = |c: &mut Checker<'_>, why: &str| {
        c.error(raw.span(), subject, format!("upstream: {text:?} {why}"));
        None
    };
    let Ok(uri) = text.parse::<Uri>() else {
        return bad(c, "is not a URL such as \"http://127.0.0.1:3000\"");
    };
    let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
        return bad(
            c,
            "needs a scheme and a host, e.g. \"http://127.0.0.1:3000\"",
        );
    };
    if scheme != &Scheme::HTTP && scheme != &Scheme::HTTPS {
        return bad(c, "must use http:// or https://");
    }
    if authority.as_str().contains('@') {
        return bad(c, "must not carry credentials");
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return bad(
            c,
            "must not have a path or query: requests keep the path the client sent",
        );
    }
    let host = HeaderValue::from_str(authority.as_str()).ok()?;
    Some((scheme.clone(), authority.clone(), host))
}

fn consumers<'r>(
    c: &mut Checker<'_>,
    raw: impl Iterator<Item = (usize, &'r RawConsumer)>,
    target_names: &HashMap<String, TargetIdx>,
) -> (Vec<Consumer>, HashMap<String, u32>) {
    let mut out = Vec::new();
    let mut ids: HashMap<String, u32> = HashMap::new();
    let mut first_seen: HashMap<&str, (usize, usize)> = HashMap::new();
    for (source, raw) in raw {
        c.cur = source;
        let Some(id) = c.id(&raw.id, "consumer id", None) else {
            continue;
        };
        let subject = Subject::item("consumer", raw.id.get_ref());
        if let Some(first) = first_seen.insert(raw.id.get_ref(), c.place(raw.id.span())) {
            let first = c.describe(first);
            c.error(
                raw.id.span(),
                subject,
                format!("duplicate consumer id (first defined at {first})"),
            );
            continue;
        }
        let created_at = c.instant(raw.created_at.as_ref(), subject, "created_at");
        let allow_ips = IpList::new(c.nets(raw.allow_ips.as_deref(), subject, "allow_ips"));
        let targets = TargetSet::new(c.targets(raw.targets.as_deref(), target_names, subject));
        let rate_limit = c.rate(raw.rate_limit.as_ref(), subject, "rate_limit");
        ids.insert(raw.id.get_ref().clone(), out.len() as u32);
        out.push(Consumer {
            id,
            name: raw.name.as_deref().map(Into::into),
            allow_ips,
            targets,
            rate_limit,
            max_keys: raw.max_keys,
            created_at,
            managed: source == 1,
        });
    }
    c.cur = 0;
    (out, ids)
}

/// The `[[keys]]` of both files, checked one at a time as they are read, into the snapshot's
/// keys and key table; what else is kept while loading is a few bytes per key.
struct KeyPass<'t> {
    target_names: &'t HashMap<String, TargetIdx>,
    consumer_ids: &'t HashMap<String, u32>,
    keys: Vec<Key>,
    table: KeyTable,
    /// For each key, where its id is (source, offset), for "first defined at" messages.
    first: Vec<(u32, usize)>,
    /// Key indices by id, to find duplicates.
    ids: IdIndex,
    arena: IdArena,
    /// Each distinct list and set of rules once, shared by the keys that have it.
    nets: HashSet<List<IpNet>>,
    target_sets: HashSet<List<TargetIdx>>,
    paths: HashSet<Paths>,
    rules: HashSet<Arc<Rules>>,
    too_many: bool,
}

impl<'t> KeyPass<'t> {
    fn new(
        count: usize,
        target_names: &'t HashMap<String, TargetIdx>,
        consumer_ids: &'t HashMap<String, u32>,
    ) -> KeyPass<'t> {
        KeyPass {
            target_names,
            consumer_ids,
            keys: Vec::with_capacity(count),
            table: KeyTable::with_capacity(count),
            first: Vec::with_capacity(count),
            ids: IdIndex::with_capacity(count),
            arena: IdArena::default(),
            nets: HashSet::new(),
            target_sets: HashSet::new(),
            paths: HashSet::new(),
            rules: HashSet::new(),
            too_many: false,
        }
    }

    /// Every key of one file: those `toml` parsed with the file, then the split-off tables.
    fn file<'a, R: HasKeys<'a>>(
        &mut self,
        c: &mut Checker<'_>,
        source: usize,
        file: &File<'_, R>,
    ) -> Result<(), Failure> {
        c.cur = source;
        c.base = None;
        for raw in file.raw.keys().unwrap_or_default() {
            self.key(c, raw, source);
        }
        let text = file.source.text;
        for &(start, end) in file.chunks {
            let (start, end) = (start as usize, end as usize);
            match scan::key(text, start, end) {
                Some(raw) => {
                    c.base = Some(0);
                    self.key(c, &raw, source);
                }
                None => match toml::from_str::<RawKey<'_>>(&text[start..end]) {
                    Ok(raw) => {
                        c.base = Some(start);
                        self.key(c, &raw, source);
                    }
                    Err(_) => return Err(Failure::Reparse(source)),
                },
            }
        }
        c.base = None;
        Ok(())
    }

    fn key(&mut self, c: &mut Checker<'_>, raw: &RawKey<'_>, source: usize) {
        let Some(id) = c.id(&raw.id, "key id", Some(&mut self.arena)) else {
            return;
        };
        let subject = Subject::item("key", raw.id.get_ref());
        let id_hash = self.ids.hash(id.as_str());
        let keys = &self.keys;
        let id_slot = match self
            .ids
            .find(id_hash, |i| keys[i].id.as_str() == id.as_str())
        {
            Ok(first) => {
                let (src, offset) = self.first[first];
                let first = c.describe((src as usize, offset));
                c.error(
                    raw.id.span(),
                    subject,
                    format!("duplicate key id (first defined at {first})"),
                );
                return;
            }
            Err(slot) => slot,
        };
        let hash = match (&raw.hash, &raw.secret) {
            (Some(h), None) => {
                let parsed = KeyHash::parse(h.get_ref());
                if parsed.is_none() {
                    c.error(h.span(), subject, "hash: expected \"sha256:\" followed by 64 hex digits (see `keygate keys hash`)");
                }
                parsed.map(|p| (p, h.span()))
            }
            (None, Some(s)) => {
                if s.get_ref().is_empty() {
                    c.error(s.span(), subject, "secret: must not be empty");
                    None
                } else {
                    c.warn(
                        s.span(),
                        subject,
                        "secret is stored in plaintext; replace it with the `hash = \"sha256:…\"` line that `keygate keys hash` prints",
                    );
                    Some((KeyHash::of(s.get_ref().as_bytes()), s.span()))
                }
            }
            (Some(h), Some(_)) => {
                c.error(
                    h.span(),
                    subject,
                    "has both `hash` and `secret`: keep only `hash`",
                );
                None
            }
            (None, None) => {
                c.error(
                    raw.id.span(),
                    subject,
                    "needs `hash = \"sha256:…\"` (or `secret`)",
                );
                None
            }
        };
        let consumer = match &raw.consumer {
            None => None,
            Some(name) => {
                let found = self.consumer_ids.get(&**name.get_ref()).copied();
                if found.is_none() {
                    c.error(
                        name.span(),
                        subject,
                        format!("consumer: no [[consumers]] has id {:?}", &**name.get_ref()),
                    );
                }
                found
            }
        };
        let expires_at = c.instant(raw.expires_at.as_ref(), subject, "expires_at");
        let created_at = c.instant(raw.created_at.as_ref(), subject, "created_at");
        // A previous hash takes part in the duplicate checks as soon as it parses; it is kept
        // with its time, or with a stand-in when that is wrong (the config is refused then).
        let previous = match (&raw.previous_hash, &raw.previous_expires_at) {
            (None, None) => None,
            (Some(h), Some(until)) => {
                let until = c.instant(Some(until), subject, "previous_expires_at");
                match KeyHash::parse(h.get_ref()) {
                    None => {
                        c.error(
                            h.span(),
                            subject,
                            "previous_hash: expected \"sha256:\" followed by 64 hex digits",
                        );
                        None
                    }
                    Some(ph) => Some((ph, until.unwrap_or(SystemTime::UNIX_EPOCH), h.span())),
                }
            }
            (Some(h), None) => {
                c.error(h.span(), subject, "previous_hash needs previous_expires_at");
                None
            }
            (None, Some(u)) => {
                c.error(u.span(), subject, "previous_expires_at needs previous_hash");
                None
            }
        };
        let targets = c.targets(raw.targets.as_deref(), self.target_names, subject);
        let nets = c.nets(raw.allow_ips.as_deref(), subject, "allow_ips");
        let paths: Vec<Box<str>> = raw
            .paths
            .as_deref()
            .unwrap_or_default()
            .iter()
            .filter_map(|p| c.path(p, subject, "paths"))
            .collect();
        let rate_limit = c.rate(raw.rate_limit.as_ref(), subject, "rate_limit");
        if self.keys.len() >= KeyTable::MAX_KEYS {
            if !self.too_many {
                self.too_many = true;
                c.error(
                    raw.id.span(),
                    "",
                    format!("at most {} [[keys]] are supported", KeyTable::MAX_KEYS),
                );
            }
            return;
        }
        // Every key with a new, valid id is kept from here on, even one with a problem (that
        // config is refused anyway), so that the tables can point at it.
        let index = self.keys.len();
        let mut targets = targets;
        targets.sort_unstable();
        targets.dedup();
        let rules = Rules {
            targets: TargetSet::from_list(intern(&mut self.target_sets, targets)),
            allow_ips: IpList::from_list(intern(&mut self.nets, nets)),
            paths: intern(&mut self.paths, paths),
        };
        let rules = match self.rules.get(&rules) {
            _ if rules.is_empty() => None,
            Some(shared) => Some(shared.clone()),
            None => {
                let rules = Arc::new(rules);
                self.rules.insert(rules.clone());
                Some(rules)
            }
        };
        let key = Key::new(KeyParts {
            id: Some(id),
            name: raw.name.as_deref(),
            consumer,
            hash: Some(hash.as_ref().map_or(KeyHash([0; 32]), |h| h.0)),
            status: raw.status.unwrap_or_default(),
            expires_at,
            rules,
            access: raw.access.unwrap_or_default(),
            rate_limit,
            created_at,
            prefix: raw.prefix.as_deref(),
            previous: previous.as_ref().map(|&(h, until, _)| (h, until)),
            managed: source == 1,
        });
        let Some(key) = key else { return };
        self.keys.push(key);
        self.first
            .push((source as u32, c.offset(raw.id.span().start)));
        self.ids.set(id_slot, id_hash, index);
        if let Some((h, span)) = hash
            && let Some((other, _)) = self.table.try_insert(&self.keys, h, index, false)
        {
            c.error(
                span,
                subject,
                format!(
                    "same secret hash as key {:?}: every key needs its own secret",
                    self.keys[other].id.as_str()
                ),
            );
        }
        if let Some((ph, _, span)) = previous
            && let Some((other, _)) = self.table.insert(&self.keys, ph, index, true)
        {
            c.error(
                span,
                subject,
                format!(
                    "previous_hash is also the hash of key {:?}",
                    self.keys[other].id.as_str()
                ),
            );
        }
    }
}

/// The list already made that equals `items`, or a new one.
fn intern<T: Eq + std::hash::Hash>(set: &mut HashSet<List<T>>, items: Vec<T>) -> List<T> {
    if items.is_empty() {
        return List::default();
    }
    if let Some(l) = set.get(&items[..]) {
        return l.clone();
    }
    let l = List::new(items);
    set.insert(l.clone());
    l
}

/// Key indices by id while loading: open addressing over `u32` slots, each a key index with
/// 8 bits of the id's hash above it (so that another id's slot rarely costs a look at that
/// key), `u32::MAX` for none. Ids may be chosen by whoever may create keys, so they are hashed
/// with a random seed.
struct IdIndex {
    slots: Box<[u32]>,
    len: usize,
    seed: std::hash::RandomState,
}

impl IdIndex {
    fn with_capacity(n: usize) -> IdIndex {
        IdIndex {
            slots: vec![u32::MAX; IdIndex::slots_for(n)].into_boxed_slice(),
            len: 0,
            seed: std::hash::RandomState::new(),
        }
    }

    fn slots_for(n: usize) -> usize {
        (n + n.div_ceil(3) + 1).next_power_of_two().max(8)
    }

    fn hash(&self, id: &str) -> u64 {
        self.seed.hash_one(id)
    }

    /// `Ok(index)` of the key the id belongs to, else `Err(slot)` where it would go.
    fn find(&self, hash: u64, same: impl Fn(usize) -> bool) -> Result<usize, usize> {
        let mask = self.slots.len() - 1;
        let tag = (hash >> 56) as u32;
        let mut slot = hash as usize & mask;
        loop {
            match self.slots[slot] {
                u32::MAX => return Err(slot),
                e if e >> 24 == tag && same((e & 0xff_ffff) as usize) => {
                    return Ok((e & 0xff_ffff) as usize);
                }
                _ => slot = (slot + 1) & mask,
            }
        }
    }

    /// Fills the slot `find` gave (with no insert in between). The table was made for every
    /// key of the files (`key_count`), so it never fills up; an index fits in 24 bits because
    /// the key table holds fewer keys.
    fn set(&mut self, slot: usize, hash: u64, index: usize) {
        debug_assert!(index < KeyTable::MAX_KEYS);
        self.slots[slot] = ((hash >> 56) as u32) << 24 | index as u32;
        self.len += 1;
        assert!(self.len < self.slots.len(), "more keys than counted");
    }
}

/// A bare address is a single host (/32 or /128). An IPv4-mapped IPv6 network becomes the IPv4
/// network it maps, so it matches the way clients are matched.
pub fn parse_net(s: &str) -> Option<IpNet> {
    let net = match s.parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => IpNet::from(s.parse::<IpAddr>().ok()?),
    };
    if let IpNet::V6(v6) = net
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && v6.prefix_len() >= 96
    {
        return ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
            .ok()
            .map(IpNet::V4);
    }
    Some(net)
}

/// A TOML offset date-time as a `SystemTime`; `None` for local dates and times, which name no
/// instant.
fn to_system_time(dt: &Datetime) -> Option<SystemTime> {
    let (date, time, offset) = (dt.date?, dt.time?, dt.offset?);
    let month = time::Month::try_from(date.month).ok()?;
    let date = time::Date::from_calendar_date(i32::from(date.year), month, date.day).ok()?;
    let time = time::Time::from_hms_nano(
        time.hour,
        time.minute,
        time.second.unwrap_or(0),
        time.nanosecond.unwrap_or(0),
    )
    .ok()?;
    let offset = match offset {
        Offset::Z => time::UtcOffset::UTC,
        Offset::Custom { minutes } => {
            time::UtcOffset::from_whole_seconds(i32::from(minutes) * 60).ok()?
        }
    };
    Some(
        time::PrimitiveDateTime::new(date, time)
            .assume_offset(offset)
            .into(),
    )
}

/// A path from the config, relative to the config file's directory (or to the working
/// directory when the config comes from a device such as /dev/stdin).
pub fn relative_to(config: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    match config.parent() {
        _ if p.is_absolute() => p.to_path_buf(),
        Some(dir) if !dir.as_os_str().is_empty() && !config.starts_with("/dev") => dir.join(p),
        _ => p.to_path_buf(),
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = src.get(..offset).unwrap_or(src);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::super::{LoadError, parse};
    use std::path::Path;

    const TARGET: &str =
        "[[targets]]\nname = \"production\"\nupstream = \"http://127.0.0.1:3000\"\n";
    const HASH_A: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    /// The error lines for `src` (after the shared target), which must fail to load.
    fn errors(src: &str) -> Vec<String> {
        match parse(&format!("{TARGET}{src}"), Path::new("k.toml")) {
            Ok(_) => panic!("config was accepted:\n{src}"),
            Err(LoadError::Invalid(e)) => e
                .iter()
                .filter(|p| p.severity == super::super::Severity::Error)
                .map(ToString::to_string)
                .collect(),
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    fn one_error(src: &str) -> String {
        let e = errors(src);
        assert_eq!(e.len(), 1, "{e:#?}");
        e.into_iter().next().unwrap_or_default()
    }

    #[test]
    fn unknown_field_names_line_column_and_field() {
        let e = one_error("[[keys]]\nid = \"k\"\nhash = \"sha256:00\"\nalow_ips = []\n");
        assert!(e.starts_with("k.toml:7:1: unknown field `alow_ips`"), "{e}");
    }

    #[test]
    fn duplicate_key_ids_and_hashes() {
        let e = errors(&format!(
            "[[keys]]\nid = \"a\"\nhash = \"{HASH_A}\"\n[[keys]]\nid = \"a\"\nhash = \"{HASH_A}\"\n[[keys]]\nid = \"b\"\nsecret = \"test\"\n"
        ));
        assert_eq!(e.len(), 2, "{e:#?}");
        assert_eq!(
            e[0],
            "k.toml:8:6: key \"a\": duplicate key id (first defined at line 5)"
        );
        assert!(
            e[1].starts_with("k.toml:12:10: key \"b\": same secret hash as key \"a\""),
            "{}",
            e[1]
        );
    }

    #[test]
    fn references_must_exist() {
        let e = errors(&format!(
            "[[consumers]]\nid = \"acme\"\ntargets = [\"staging\"]\n[[keys]]\nid = \"k\"\nhash = \"{HASH_A}\"\nconsumer = \"acmee\"\ntargets = [\"prod\"]\n"
        ));
        assert_eq!(
            e,
            [
                "k.toml:6:12: consumer \"acme\": targets: no [[targets]] is named \"staging\"",
                "k.toml:10:12: key \"k\": consumer: no [[consumers]] has id \"acmee\"",
                "k.toml:11:12: key \"k\": targets: no [[targets]] is named \"prod\"",
            ]
        );
    }

    #[test]
    fn bad_cidrs_rates_and_hashes() {
        let e = errors(
            "[[keys]]\nid = \"k\"\nhash = \"sha256:abc\"\nallow_ips = [\"10.0.0.0/33\", \"::1\", \"nope\"]\nrate_limit = \"10/day\"\n",
        );
        assert_eq!(e.len(), 4, "{e:#?}");
        assert!(
            e[0].starts_with("k.toml:6:8: key \"k\": hash: expected \"sha256:\""),
            "{}",
            e[0]
        );
        assert!(
            e[1].starts_with("k.toml:7:14: key \"k\": allow_ips: \"10.0.0.0/33\""),
            "{}",
            e[1]
        );
        assert!(
            e[2].starts_with("k.toml:7:36: key \"k\": allow_ips: \"nope\""),
            "{}",
            e[2]
        );
        assert!(
            e[3].contains("rate_limit: rate \"10/day\": unknown unit \"day\""),
            "{}",
            e[3]
        );
    }

    #[test]
    fn hash_xor_secret() {
        let both = one_error(&format!(
            "[[keys]]\nid = \"k\"\nhash = \"{HASH_A}\"\nsecret = \"s\"\n"
        ));
        assert!(
            both.contains("key \"k\": has both `hash` and `secret`"),
            "{both}"
        );
        let neither = one_error("[[keys]]\nid = \"k\"\n");
        assert!(neither.contains("key \"k\": needs `hash"), "{neither}");
    }

    #[test]
    fn unknown_status_and_access() {
        let s = one_error(&format!(
            "[[keys]]\nid = \"k\"\nhash = \"{HASH_A}\"\nstatus = \"actve\"\n"
        ));
        assert!(s.starts_with("k.toml:7:10: unknown variant `actve`"), "{s}");
        let a = one_error(&format!(
            "[[keys]]\nid = \"k\"\nhash = \"{HASH_A}\"\naccess = \"admin\"\n"
        ));
        assert!(a.starts_with("k.toml:7:10: unknown variant `admin`"), "{a}");
    }

    #[test]
    fn local_datetimes_name_no_instant() {
        let e = one_error(&format!(
            "[[keys]]\nid = \"k\"\nhash = \"{HASH_A}\"\nexpires_at = 2027-01-01T00:00:00\n"
        ));
        assert!(
            e.contains(
                "key \"k\": expires_at: 2027-01-01T00:00:00 is not a date-time with an offset"
            ),
            "{e}"
        );
    }

    #[test]
    fn targets_are_checked() {
        let e = errors(
            "[[targets]]\nname = \"production\"\nupstream = \"http://127.0.0.1:3001\"\n[[targets]]\nname = \"x\"\nupstream = \"ftp://h\"\n[[targets]]\nname = \"y\"\nupstream = \"http://h/base\"\npath_prefix = \"api\"\n",
        );
        assert_eq!(e.len(), 4, "{e:#?}");
        assert!(
            e[0].contains("target \"production\": duplicate target name (first defined at line 2)"),
            "{}",
            e[0]
        );
        assert!(
            e[1].contains("target \"x\": upstream: \"ftp://h\" must use http:// or https://"),
            "{}",
            e[1]
        );
        assert!(
            e[2].contains("target \"y\": upstream: \"http://h/base\" must not have a path"),
            "{}",
            e[2]
        );
        assert!(
            e[3].contains("target \"y\": path_prefix: \"api\" must be a path"),
            "{}",
            e[3]
        );
    }

    #[test]
    fn two_targets_on_one_route_are_ambiguous() {
        let e = one_error(
            "[[targets]]\nname = \"other\"\nupstream = \"http://127.0.0.1:3001\"\npath_prefix = \"/\"\n",
        );
        assert!(e.contains("target \"other\": any host with path_prefix \"/\" is already routed to target \"production\""), "{e}");
    }

    #[test]
    fn no_targets_is_an_error() {
        match parse("", Path::new("k.toml")) {
            Err(LoadError::Invalid(e)) => assert!(e[0].message.contains("no [[targets]]")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn plaintext_secret_is_accepted_with_a_warning() {
        let loaded = parse(
            &format!("{TARGET}[[keys]]\nid = \"k\"\nsecret = \"test\"\n"),
            Path::new("k.toml"),
        )
        .unwrap();
        assert_eq!(loaded.warnings.len(), 1);
        assert!(
            loaded.warnings[0]
                .to_string()
                .starts_with("k.toml:6:10: warning: key \"k\": secret is stored in plaintext")
        );
        assert_eq!(loaded.snapshot.keys[0].hash.to_string(), HASH_A);
    }

    #[test]
    fn the_example_config_is_valid() {
        let src = include_str!("../../config/keygate.toml");
        let loaded = parse(src, Path::new("config/keygate.toml")).unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    }

    #[test]
    fn ipv4_mapped_networks_become_ipv4() {
        assert_eq!(
            super::parse_net("::ffff:10.0.0.0/104").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            super::parse_net("198.51.100.7").unwrap().to_string(),
            "198.51.100.7/32"
        );
        assert_eq!(
            super::parse_net("2001:db8::1").unwrap().to_string(),
            "2001:db8::1/128"
        );
    }
}
