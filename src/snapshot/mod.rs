//! The validated configuration, as the request path reads it.
//!
//! A [`Snapshot`] is built whole by `config::validate`, never edited after, and published in one
//! atomic swap by [`Published`]. A request loads one snapshot and uses it to its end, so it never
//! sees half of an old config and half of a new one. Everything here is already checked and
//! converted (CIDRs, rates, hashes, header values): nothing is parsed on the request path.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, Guard};
use bytes::{Bytes, BytesMut};
use http::uri::{Authority, Scheme};
use http::{HeaderName, HeaderValue};
use ipnet::IpNet;

pub use crate::config::raw::{Access, Role, Status};
use crate::limits::{Buckets, Limits};
use crate::proxy::route::Routes;
use crate::secret::KeyHash;
use crate::tls::TlsFiles;

/// Index of a target in [`Snapshot::targets`]. A config holds at most `u16::MAX` targets.
pub type TargetIdx = u16;

/// A validated id (key, consumer or target), kept ready to send as a header value.
///
/// Ids are restricted at load time to `[A-Za-z0-9._:@-]`, so they are both valid header values
/// and safe to print in logs; holding them as `Bytes` lets the request path attach
/// `X-Keygate-Key-Id` with a reference-count bump instead of an allocation. (Not as a
/// `HeaderValue`, which is 8 bytes larger: a million keys each hold one.)
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Id(Bytes);

impl Id {
    /// The characters an id may contain, for error messages.
    pub const ALLOWED: &'static str = "letters, digits and . _ : @ -";
    /// Longest id accepted: ids travel in headers and logs on every request.
    pub const MAX_LEN: usize = 128;

    /// `None` unless `s` is 1..=[`Id::MAX_LEN`] characters of [`Id::ALLOWED`].
    pub fn new(s: &str) -> Option<Id> {
        Self::valid(s).then(|| Id(Bytes::copy_from_slice(s.as_bytes())))
    }

    fn valid(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'@' | b'-'))
    }

    pub fn as_str(&self) -> &str {
        // Checked ASCII in `new`, so this never falls back.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    pub fn header_value(&self) -> HeaderValue {
        // Checked in `new` (a byte loop over a short id here); never the empty fallback.
        HeaderValue::from_maybe_shared(self.0.clone())
            .unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

impl std::fmt::Debug for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Makes the ids of many keys without an allocation each: an id is a slice of a shared buffer
/// of [`IdArena::CHUNK`] bytes (a `Bytes` view, so sending it as a header is still a reference
/// count bump). Chunks are small so that an id kept after its snapshot is gone (the rate-limit
/// registry keeps the ids of buckets it carries over) keeps little else alive with it, and so
/// that the reference counts of busy keys are spread over many chunks.
#[derive(Default)]
pub struct IdArena {
    buf: BytesMut,
}

impl IdArena {
    pub const CHUNK: usize = 1024;

    /// Like [`Id::new`], with the bytes in the arena.
    pub fn id(&mut self, s: &str) -> Option<Id> {
        if !Id::valid(s) {
            return None;
        }
        if self.buf.capacity() - self.buf.len() < s.len() {
            self.buf = BytesMut::with_capacity(Self::CHUNK);
        }
        self.buf.extend_from_slice(s.as_bytes());
        Some(Id(self.buf.split().freeze()))
    }
}

/// A rate such as `10/second`: `count` requests per `per`, with a burst of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: NonZeroU32,
    pub per: Duration,
}

impl std::fmt::Display for Rate {
    /// The canonical text form: `10/second`, `1000/minute`, `5/hour`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "second",
            60 => "minute",
            _ => "hour",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl Rate {
    /// Parses `N/second|minute|hour` (also `s`, `m`, `h`, `sec`, `min`, `hr`), N > 0.
    pub fn parse(text: &str) -> Result<Rate, String> {
        let (n, unit) = text.split_once('/').ok_or_else(|| {
            format!("rate {text:?} is not of the form N/unit, e.g. \"10/second\"")
        })?;
        let count: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("rate {text:?}: {n:?} is not a whole number"))?;
        let count =
            NonZeroU32::new(count).ok_or_else(|| format!("rate {text:?}: N must be at least 1"))?;
        let secs = match unit.trim() {
            "second" | "sec" | "s" => 1,
            "minute" | "min" | "m" => 60,
            "hour" | "hr" | "h" => 3600,
            other => {
                return Err(format!(
                    "rate {text:?}: unknown unit {other:?}; use second, minute or hour (or s, m, h)"
                ));
            }
        };
        Ok(Rate {
            count,
            per: Duration::from_secs(secs),
        })
    }
}

/// A list that a key holds in one pointer: nothing when empty, else a list that keys with the
/// same one share (see `config::validate`, which makes each distinct list once).
#[derive(Debug)]
pub struct List<T>(Option<Arc<Box<[T]>>>);

impl<T> List<T> {
    pub fn new(items: Vec<T>) -> List<T> {
        List((!items.is_empty()).then(|| Arc::new(items.into_boxed_slice())))
    }

    pub fn as_slice(&self) -> &[T] {
        self.0.as_deref().map_or(&[], |b| &b[..])
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.as_slice().iter()
    }
}

impl<T> Default for List<T> {
    fn default() -> Self {
        List(None)
    }
}

impl<T> Clone for List<T> {
    fn clone(&self) -> Self {
        List(self.0.clone())
    }
}

impl<T: PartialEq> PartialEq for List<T> {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl<T: Eq> Eq for List<T> {}

impl<T: std::hash::Hash> std::hash::Hash for List<T> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state);
    }
}

/// So that a set of lists can be searched by a slice.
impl<T> std::borrow::Borrow<[T]> for List<T> {
    fn borrow(&self) -> &[T] {
        self.as_slice()
    }
}

/// The deploy targets a key or consumer is bound to; empty means every target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TargetSet(List<TargetIdx>);

impl TargetSet {
    pub fn new(mut targets: Vec<TargetIdx>) -> TargetSet {
        targets.sort_unstable();
        targets.dedup();
        TargetSet(List::new(targets))
    }

    /// Shares `list`, which [`TargetSet::new`] has already sorted and deduplicated.
    pub fn from_list(list: List<TargetIdx>) -> TargetSet {
        TargetSet(list)
    }

    /// True when unrestricted, or when `t` is one of the bound targets.
    pub fn allows(&self, t: TargetIdx) -> bool {
        self.0.is_empty() || self.0.as_slice().contains(&t)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = TargetIdx> + '_ {
        self.0.iter().copied()
    }
}

/// An IP allow-list; empty means any address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct IpList(List<IpNet>);

impl IpList {
    pub fn new(nets: Vec<IpNet>) -> IpList {
        IpList(List::new(nets))
    }

    pub fn from_list(list: List<IpNet>) -> IpList {
        IpList(list)
    }

    /// True when unrestricted, or when `ip` falls in one of the networks. `ip` must already be
    /// canonical (an IPv4-mapped IPv6 address turned into IPv4) so that IPv4 rules match it.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.0.is_empty() || self.0.iter().any(|n| n.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &IpNet> {
        self.0.iter()
    }
}

/// Path prefixes a key may call (stored without a trailing `/`); empty means any path.
pub type Paths = List<Box<str>>;

/// A key's restrictions beyond its status and expiry: which targets, addresses and paths. Held
/// behind one pointer, shared by the keys that have the same ones (and none for a key without).
#[derive(Debug, Default, PartialEq, Eq, Hash)]
pub struct Rules {
    pub targets: TargetSet,
    pub allow_ips: IpList,
    pub paths: Paths,
}

impl Rules {
    const NONE: Rules = Rules {
        targets: TargetSet(List(None)),
        allow_ips: IpList(List(None)),
        paths: List(None),
    };

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty() && self.allow_ips.is_empty() && self.paths.is_empty()
    }
}

static NO_RULES: Rules = Rules::NONE;

/// `[server]`.
#[derive(Debug)]
pub struct Server {
    /// Changing it needs a restart: a reload logs that and keeps the bound socket.
    pub listen: SocketAddr,
    pub trusted_proxies: IpList,
    pub key_header: HeaderName,
    pub key_query: Box<str>,
    pub failed_auth_limit: Rate,
    /// How long a shutdown waits for requests and upgraded connections in flight.
    pub shutdown_timeout: Duration,
    /// Client connections served at once, over all workers; more wait in the listen backlog.
    pub max_connections: u32,
    /// A client must send a request's whole head within this (slowloris).
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers) read; larger gets 431.
    pub max_header_bytes: u32,
    /// HTTP/2 streams one client connection may have open at once.
    pub max_streams: u32,
    /// A client connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Whether the listener speaks TLS cannot change live; the files it reads can.
    pub tls: Option<TlsFiles>,
}

/// `[cluster]`: Redis shared by several instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// One Redis's URL; with `nodes`, the first node's, for messages.
    pub redis: String,
    /// `redis_cluster`: the seed nodes of a Redis Cluster; with `sentinel_master`, the
    /// Sentinels of `redis_sentinel` (empty: one Redis).
    pub nodes: Vec<String>,
    /// `sentinel_master`: the name of the master the Sentinels watch.
    pub sentinel_master: Option<String>,
    pub mode: ClusterMode,
    pub on_redis_error: OnRedisError,
    pub timeout: Duration,
    pub sync_interval: Duration,
    pub prefix: String,
}

/// `[cluster] mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterMode {
    /// Every rate-limited request asks Redis: exact across the fleet, one round trip each.
    Strict,
    /// Decide locally and reconcile with Redis every `sync_interval`: no round trip on the
    /// request path, an overshoot of at most what the other instances admit in one interval.
    LocalSync,
}

/// `[cluster] on_redis_error`: what a rate-limited request gets while Redis fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRedisError {
    /// Not limited at all.
    Allow,
    /// Refused with 503 `rate_limit_unavailable`.
    Deny,
    /// Limited by this instance's own buckets.
    Local,
}

/// `[log]`: the access log, one line per request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Log {
    pub access: AccessTo,
    pub format: LogFormat,
}

/// `[log] access`: where access log lines go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AccessTo {
    Off,
    #[default]
    Stdout,
    /// Appended to; resolved against the config file's directory.
    File(std::path::PathBuf),
}

/// `[log] format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

/// `[[targets]]`: a deploy target and its upstream.
#[derive(Debug)]
pub struct Target {
    pub name: Id,
    pub scheme: Scheme,
    pub authority: Authority,
    /// `Host` sent upstream unless `preserve_host`: the upstream's own authority.
    pub upstream_host: HeaderValue,
    pub hosts: Vec<Box<str>>,
    pub path_prefix: Box<str>,
    pub timeout: Duration,
    /// Largest request body in bytes (`None`: unlimited); more gets 413 `body_too_large`.
    pub max_body: Option<u64>,
    pub preserve_host: bool,
    /// The verifier for an `https://` upstream.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// `[[consumers]]`: an account that owns keys.
#[derive(Debug)]
pub struct Consumer {
    pub id: Id,
    pub name: Option<Box<str>>,
    pub allow_ips: IpList,
    pub targets: TargetSet,
    pub rate_limit: Option<Rate>,
    pub max_keys: Option<u32>,
    pub created_at: Option<SystemTime>,
    /// Defined in the keys file (changeable through the admin API), not the main file.
    pub managed: bool,
}

/// `[[keys]]`: one API key, by the hash of its secret.
///
/// A million of these are held at once, so the fields that requests read are kept in the struct
/// (lists as one shared pointer each) and the rest, which only the admin API and the commands
/// read, in one allocation of their own that keys without any of them do not have: see
/// [`Key::name`], [`Key::prefix`], [`Key::created_at`], [`Key::previous`], [`Key::rate_limit`].
#[derive(Debug)]
pub struct Key {
    pub id: Id,
    /// Index into [`Snapshot::consumers`].
    pub consumer: Option<u32>,
    pub hash: KeyHash,
    pub status: Status,
    pub expires_at: Option<SystemTime>,
    pub access: Access,
    /// Defined in the keys file (changeable through the admin API), not the main file.
    pub managed: bool,
    rules: Option<Arc<Rules>>,
    cold: Cold,
}

/// Everything a [`Key`] is made of.
#[derive(Debug, Default)]
pub struct KeyParts<'a> {
    pub id: Option<Id>,
    pub name: Option<&'a str>,
    pub consumer: Option<u32>,
    pub hash: Option<KeyHash>,
    pub status: Status,
    pub expires_at: Option<SystemTime>,
    /// `None` for none (what [`Rules::default`] also means); validate shares equal ones.
    pub rules: Option<Arc<Rules>>,
    pub access: Access,
    pub rate_limit: Option<Rate>,
    pub created_at: Option<SystemTime>,
    pub prefix: Option<&'a str>,
    pub previous: Option<(KeyHash, SystemTime)>,
    pub managed: bool,
}

impl Key {
    /// `None` without an id or a hash.
    pub fn new(p: KeyParts<'_>) -> Option<Key> {
        let cold = Cold::new(&p);
        Some(Key {
            id: p.id?,
            consumer: p.consumer,
            hash: p.hash?,
            status: p.status,
            expires_at: p.expires_at,
            access: p.access,
            managed: p.managed,
            rules: p.rules.filter(|r| !r.is_empty()),
            cold,
        })
    }

    pub fn rules(&self) -> &Rules {
        self.rules.as_deref().unwrap_or(&NO_RULES)
    }

    /// The deploy targets the key is bound to; empty means every target.
    pub fn targets(&self) -> &TargetSet {
        &self.rules().targets
    }

    pub fn allow_ips(&self) -> &IpList {
        &self.rules().allow_ips
    }

    /// Path prefixes the key may call, matched on whole segments; empty means any path.
    pub fn paths(&self) -> &Paths {
        &self.rules().paths
    }

    pub fn name(&self) -> Option<&str> {
        self.cold.text(Cold::NAME)
    }

    /// The first characters of the secret, for people to recognise it by.
    pub fn prefix(&self) -> Option<&str> {
        self.cold.text(Cold::PREFIX)
    }

    pub fn created_at(&self) -> Option<SystemTime> {
        self.cold.get(Cold::CREATED).map(decode_time)
    }

    /// After a rotation: the old secret's hash, valid until the given time.
    pub fn previous(&self) -> Option<(KeyHash, SystemTime)> {
        let b = self.cold.get(Cold::PREVIOUS)?;
        let mut hash = [0; 32];
        hash.copy_from_slice(&b[..32]);
        Some((KeyHash(hash), decode_time(&b[32..])))
    }

    pub fn rate_limit(&self) -> Option<Rate> {
        let b = self.cold.get(Cold::RATE)?;
        Some(Rate {
            count: NonZeroU32::new(u32_at(b, 0))?,
            per: Duration::new(u64_at(b, 4), u32_at(b, 12)),
        })
    }
}

/// The fields of a key that requests do not read, encoded in one allocation: a byte of flags,
/// then the fixed-size fields present (`PREVIOUS`, `CREATED`, `RATE`, in that order), then the
/// name (a `u32` length and its bytes) and the prefix (the rest).
#[derive(Debug, Default, PartialEq, Eq)]
struct Cold(Option<Box<[u8]>>);

/// A time as seconds since the epoch (negative before it) and nanoseconds.
const TIME_LEN: usize = 12;

impl Cold {
    const PREVIOUS: u8 = 1;
    const CREATED: u8 = 2;
    const RATE: u8 = 4;
    const NAME: u8 = 8;
    const PREFIX: u8 = 16;
    /// The fixed-size fields, in their order.
    const FIXED: [(u8, usize); 3] = [
        (Cold::PREVIOUS, 32 + TIME_LEN),
        (Cold::CREATED, TIME_LEN),
        (Cold::RATE, 16),
    ];

    fn new(p: &KeyParts<'_>) -> Cold {
        let fields = [
            (Cold::PREVIOUS, p.previous.is_some()),
            (Cold::CREATED, p.created_at.is_some()),
            (Cold::RATE, p.rate_limit.is_some()),
            (Cold::NAME, p.name.is_some()),
            (Cold::PREFIX, p.prefix.is_some()),
        ];
        let flags = fields
            .iter()
            .filter(|(_, present)| *present)
            .fold(0, |acc, (f, _)| acc | f);
        if flags == 0 {
            return Cold(None);
        }
        // A name is stored with a 32-bit length (a longer one, which no file of 4 GiB could
        // hold anyway, would lose its end).
        let name = p
            .name
            .map(|n| &n[..n.floor_char_boundary(u32::MAX as usize)]);
        let len = 1
            + Cold::FIXED
                .iter()
                .filter(|(f, _)| flags & f != 0)
                .map(|(_, len)| len)
                .sum::<usize>()
            + name.map_or(0, |n| 4 + n.len())
            + p.prefix.map_or(0, str::len);
        let mut out = Vec::with_capacity(len);
        out.push(flags);
        if let Some((hash, until)) = p.previous {
            out.extend_from_slice(&hash.0);
            encode_time(until, &mut out);
        }
        if let Some(t) = p.created_at {
            encode_time(t, &mut out);
        }
        if let Some(r) = p.rate_limit {
            out.extend_from_slice(&r.count.get().to_le_bytes());
            out.extend_from_slice(&r.per.as_secs().to_le_bytes());
            out.extend_from_slice(&r.per.subsec_nanos().to_le_bytes());
        }
        if let Some(name) = name {
            out.extend_from_slice(&(name.len() as u32).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
        }
        if let Some(prefix) = p.prefix {
            out.extend_from_slice(prefix.as_bytes());
        }
        Cold(Some(out.into_boxed_slice()))
    }

    /// The bytes of one field, when present.
    fn get(&self, field: u8) -> Option<&[u8]> {
        let b = self.0.as_deref()?;
        let flags = b[0];
        if flags & field == 0 {
            return None;
        }
        let mut at = 1;
        for (f, len) in Cold::FIXED {
            if f == field {
                return b.get(at..at + len);
            }
            if flags & f != 0 {
                at += len;
            }
        }
        let mut name = 0..0;
        if flags & Cold::NAME != 0 {
            let len = u32_at(b.get(at..)?, 0) as usize;
            name = at + 4..at + 4 + len;
            at = name.end;
        }
        match field {
            Cold::NAME => b.get(name),
            _ => b.get(at..),
        }
    }

    fn text(&self, field: u8) -> Option<&str> {
        // Written from a `&str`, so this never fails.
        std::str::from_utf8(self.get(field)?).ok()
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut v = [0; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

fn encode_time(t: SystemTime, out: &mut Vec<u8>) {
    let (secs, nanos) = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        // Before the epoch: whole seconds down, nanoseconds up, so that both add.
        Err(e) => {
            let d = e.duration();
            match d.subsec_nanos() {
                0 => (-(d.as_secs() as i64), 0),
                n => (-(d.as_secs() as i64) - 1, 1_000_000_000 - n),
            }
        }
    };
    out.extend_from_slice(&secs.to_le_bytes());
    out.extend_from_slice(&nanos.to_le_bytes());
}

fn decode_time(b: &[u8]) -> SystemTime {
    let secs = u64_at(b, 0) as i64;
    let nanos = Duration::from_nanos(u64::from(u32_at(b, 8)));
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64) + nanos
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + nanos
    }
}

/// `[admin]` with its `[[admin_keys]]`.
#[derive(Debug)]
pub struct Admin {
    pub listen: SocketAddr,
    pub key_prefix: Box<str>,
    pub keys: HashMap<KeyHash, AdminKey>,
}

/// One `[[admin_keys]]` entry.
#[derive(Debug, Clone)]
pub struct AdminKey {
    pub id: Id,
    pub role: Role,
}

/// How a presented secret matched a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matched {
    /// The key's current secret.
    Current,
    /// The secret it had before its last rotation, valid until the given time.
    Previous(SystemTime),
}

impl Key {
    /// Same id aside, whether `other` grants exactly what `self` does (consumer compared by the
    /// caller, since its index depends on the snapshot).
    pub fn same_settings(&self, other: &Key) -> bool {
        self.name() == other.name()
            && self.hash == other.hash
            && self.status == other.status
            && self.expires_at == other.expires_at
            && self.rules() == other.rules()
            && self.access == other.access
            && self.rate_limit() == other.rate_limit()
            && self.previous() == other.previous()
    }
}

/// One whole, validated configuration.
#[derive(Debug)]
pub struct Snapshot {
    pub server: Server,
    /// `[log]`: read at start; changing it needs a restart.
    pub log: Log,
    /// `[metrics] listen`: read at start; changing it needs a restart.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `[cluster]`: read at start; changing it needs a restart.
    pub cluster: Option<ClusterConfig>,
    pub targets: Vec<Target>,
    pub routes: Routes,
    pub consumers: Vec<Consumer>,
    pub keys: Vec<Key>,
    by_hash: KeyTable,
    /// Rate-limit buckets, indexed like `keys` and `consumers`. Fresh when built; replaced by
    /// the surviving ones by [`Published`] so that they outlive reloads.
    pub buckets: Buckets,
    pub admin: Option<Admin>,
    /// The file of managed consumers and keys, when there is one.
    pub keys_file: Option<std::path::PathBuf>,
    /// When each key (by index) was last allowed through, in seconds since the Unix epoch;
    /// 0 for never. Coarse on purpose: the request path stores at most once a second per key.
    last_used: Box<[AtomicU32]>,
}

impl Snapshot {
    /// Assembles a snapshot; `validate` has already refused duplicate hashes.
    pub fn new(
        server: Server,
        targets: Vec<Target>,
        consumers: Vec<Consumer>,
        keys: Vec<Key>,
    ) -> Snapshot {
        let mut table = KeyTable::with_capacity(keys.len());
        for (i, k) in keys.iter().enumerate() {
            table.insert(&keys, k.hash, i, false);
            if let Some((previous, _)) = k.previous() {
                table.insert(&keys, previous, i, true);
            }
        }
        Snapshot::with_table(server, targets, consumers, keys, table)
    }

    /// [`Snapshot::new`] with the table of `keys` already built (by `validate`, which fills it
    /// as it goes to find duplicate hashes).
    pub fn with_table(
        server: Server,
        targets: Vec<Target>,
        consumers: Vec<Consumer>,
        keys: Vec<Key>,
        by_hash: KeyTable,
    ) -> Snapshot {
        let routes = Routes::build(&targets);
        let mut snap = Snapshot {
            server,
            log: Log::default(),
            metrics_listen: None,
            cluster: None,
            targets,
            routes,
            consumers,
            keys,
            by_hash,
            buckets: Buckets::default(),
            admin: None,
            keys_file: None,
            last_used: Box::new([]),
        };
        snap.last_used = snap.keys.iter().map(|_| AtomicU32::new(0)).collect();
        snap.buckets = Buckets::fresh(&snap);
        snap
    }

    /// The one table lookup of the request path: the key, its index, and which of its secrets
    /// matched.
    pub fn key_by_hash(&self, hash: &KeyHash) -> Option<(usize, &Key, Matched)> {
        let (index, previous) = self.by_hash.get(&self.keys, hash)?;
        let key = &self.keys[index];
        let matched = match previous {
            true => Matched::Previous(key.previous()?.1),
            false => Matched::Current,
        };
        Some((index, key, matched))
    }

    /// Records that the key at `index` was used at `now`: a load and, at most once a second, a
    /// store. No lock, no allocation.
    pub fn touch(&self, index: usize, now: SystemTime) {
        let secs = unix_secs(now);
        if let Some(slot) = self.last_used.get(index)
            && slot.load(Ordering::Relaxed) != secs
        {
            slot.store(secs, Ordering::Relaxed);
        }
    }

    pub fn last_used_at(&self, index: usize) -> Option<SystemTime> {
        let secs = self.last_used.get(index)?.load(Ordering::Relaxed);
        (secs != 0).then(|| SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(secs)))
    }

    /// The last use of the key at `index` in seconds since the epoch; 0 for never.
    pub fn last_used_secs(&self, index: usize) -> u32 {
        self.last_used
            .get(index)
            .map_or(0, |s| s.load(Ordering::Relaxed))
    }

    /// Raises the last use of the key at `index` to `secs` (never lowers it).
    pub fn merge_last_used(&self, index: usize, secs: u32) {
        if let Some(slot) = self.last_used.get(index) {
            slot.fetch_max(secs, Ordering::Relaxed);
        }
    }

    /// `(key id, seconds)` of every key used so far.
    pub fn used_keys(&self) -> impl Iterator<Item = (&str, u32)> {
        self.keys
            .iter()
            .zip(self.last_used.iter())
            .filter_map(|(k, t)| {
                let secs = t.load(Ordering::Relaxed);
                (secs != 0).then(|| (k.id.as_str(), secs))
            })
    }

    /// Copies last-use times from `old` by key id (a reload must not forget them).
    fn carry_last_used(&self, old: &Snapshot) {
        let mut used = old.used_keys().peekable();
        if used.peek().is_none() {
            return;
        }
        let index: HashMap<&str, usize> = self
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.id.as_str(), i))
            .collect();
        for (id, secs) in used {
            if let Some(&i) = index.get(id) {
                self.merge_last_used(i, secs);
            }
        }
    }

    pub fn consumer_of(&self, key: &Key) -> Option<&Consumer> {
        key.consumer.map(|i| &self.consumers[i as usize])
    }

    pub fn target(&self, t: TargetIdx) -> &Target {
        &self.targets[usize::from(t)]
    }

    /// A one-line summary, as `keygate check` prints it.
    pub fn summary(&self) -> String {
        format!(
            "{} targets, {} consumers, {} keys",
            self.targets.len(),
            self.consumers.len(),
            self.keys.len()
        )
    }
}

/// Keys by the hashes of their secrets (current and, after a rotation, previous): open
/// addressing over `u32` slots, each the index of a key in `Snapshot::keys` with 7 bits of the
/// hash (so that a slot of another key rarely costs a look at that key) and a bit for "previous
/// hash"; linear probing from a slot chosen by the hash's first bytes, which SHA-256 makes
/// uniform (no client can choose them without a preimage). At least 1.3 slots per entry, so a
/// lookup is one probe of one cache line, plus the one key it finds, however many keys there are.
#[derive(Debug, Default)]
pub struct KeyTable {
    slots: Box<[u32]>,
    len: usize,
}

impl KeyTable {
    /// At most this many keys: an index takes 24 bits of a slot.
    pub const MAX_KEYS: usize = INDEX_MASK as usize;

    /// Room for `entries` before it grows.
    pub fn with_capacity(entries: usize) -> KeyTable {
        KeyTable {
            slots: vec![EMPTY; KeyTable::slots_for(entries)].into_boxed_slice(),
            len: 0,
        }
    }

    fn slots_for(entries: usize) -> usize {
        (entries + entries.div_ceil(3) + 1)
            .next_power_of_two()
            .max(8)
    }

    /// The index of the key whose current (`false`) or previous (`true`) hash is `hash`.
    pub fn get(&self, keys: &[Key], hash: &KeyHash) -> Option<(usize, bool)> {
        let (_, entry) = self.find(keys, hash).ok()?;
        Some(((entry & INDEX_MASK) as usize, entry & PREVIOUS != 0))
    }

    /// Adds `hash` for `keys[index]` (which must already hold it) unless the table has it:
    /// then returns the key index and kind that has it, as [`KeyTable::get`] would.
    pub fn try_insert(
        &mut self,
        keys: &[Key],
        hash: KeyHash,
        index: usize,
        previous: bool,
    ) -> Option<(usize, bool)> {
        self.put(keys, hash, index, previous, false)
    }

    /// Adds `hash` for `keys[index]` (which must already hold it), replacing any entry of the
    /// same hash; returns the replaced one's key index and kind.
    pub fn insert(
        &mut self,
        keys: &[Key],
        hash: KeyHash,
        index: usize,
        previous: bool,
    ) -> Option<(usize, bool)> {
        self.put(keys, hash, index, previous, true)
    }

    fn put(
        &mut self,
        keys: &[Key],
        hash: KeyHash,
        index: usize,
        previous: bool,
        replace: bool,
    ) -> Option<(usize, bool)> {
        assert!(
            index < KeyTable::MAX_KEYS,
            "too many keys for the key table"
        );
        if KeyTable::slots_for(self.len + 1) > self.slots.len() {
            self.grow(keys);
        }
        let entry = (index as u32 & INDEX_MASK)
            | (tag(&hash) << TAG_SHIFT)
            | if previous { PREVIOUS } else { 0 };
        match self.find(keys, &hash) {
            Ok((slot, old)) => {
                if replace {
                    self.slots[slot] = entry;
                }
                Some(((old & INDEX_MASK) as usize, old & PREVIOUS != 0))
            }
            Err(slot) => {
                self.slots[slot] = entry;
                self.len += 1;
                None
            }
        }
    }

    /// `Ok((slot, entry))` where `hash` is, else `Err(slot)` of the empty slot it would take.
    fn find(&self, keys: &[Key], hash: &KeyHash) -> Result<(usize, u32), usize> {
        let mask = self.slots.len().wrapping_sub(1);
        if self.slots.is_empty() {
            return Err(0);
        }
        let tag = tag(hash) << TAG_SHIFT;
        let mut slot = home(hash) & mask;
        loop {
            let entry = self.slots[slot];
            if entry == EMPTY {
                return Err(slot);
            }
            if entry & TAG_MASK == tag && entry_hash(keys, entry).as_ref() == Some(hash) {
                return Ok((slot, entry));
            }
            slot = (slot + 1) & mask;
        }
    }

    fn grow(&mut self, keys: &[Key]) {
        let old = std::mem::take(&mut self.slots);
        self.slots = vec![EMPTY; KeyTable::slots_for((self.len + 1) * 2)].into_boxed_slice();
        let mask = self.slots.len() - 1;
        for entry in old.iter().copied().filter(|&e| e != EMPTY) {
            let Some(hash) = entry_hash(keys, entry) else {
                continue;
            };
            let mut slot = home(&hash) & mask;
            while self.slots[slot] != EMPTY {
                slot = (slot + 1) & mask;
            }
            self.slots[slot] = entry;
        }
    }

    /// Bytes held.
    pub fn memory(&self) -> usize {
        self.slots.len() * std::mem::size_of::<u32>()
    }
}

const EMPTY: u32 = u32::MAX;
const PREVIOUS: u32 = 1 << 31;
const TAG_SHIFT: u32 = 24;
const TAG_MASK: u32 = 0x7f << TAG_SHIFT;
/// Index bits; the all-ones index is never used, so no entry is `EMPTY`.
const INDEX_MASK: u32 = (1 << TAG_SHIFT) - 1;

fn home(hash: &KeyHash) -> usize {
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.0[..8]);
    u64::from_le_bytes(first) as usize
}

fn tag(hash: &KeyHash) -> u32 {
    u32::from(hash.0[8] & 0x7f)
}

/// The hash an entry stands for.
fn entry_hash(keys: &[Key], entry: u32) -> Option<KeyHash> {
    let key = keys.get((entry & INDEX_MASK) as usize)?;
    match entry & PREVIOUS {
        0 => Some(key.hash),
        _ => key.previous().map(|(h, _)| h),
    }
}

/// How long `publish` waits for requests still on a replaced snapshot before leaving its
/// freeing to the last of them. Requests hold a snapshot only while they decide (microseconds).
pub const RETIRE_WAIT: Duration = Duration::from_millis(100);

/// Waits until no request holds the replaced snapshot, copies its last-use times into `next`
/// (so none recorded meanwhile is lost), and frees it here, so that no request ever pays for
/// freeing a large key table (100,000 keys take milliseconds to drop).
fn retire(mut old: Arc<Snapshot>, next: &Snapshot) {
    let deadline = std::time::Instant::now() + RETIRE_WAIT;
    loop {
        match Arc::try_unwrap(old) {
            Ok(snapshot) => {
                next.carry_last_used(&snapshot);
                return drop(snapshot);
            }
            Err(shared) if std::time::Instant::now() < deadline => {
                old = shared;
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(shared) => return next.carry_last_used(&shared),
        }
    }
}

/// Seconds since the Unix epoch as stored in `last_used` (fits a `u32` until 2106).
pub fn unix_secs(t: SystemTime) -> u32 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs().min(u64::from(u32::MAX)) as u32)
}

/// The current snapshot, swapped whole; readers never wait on a writer. Also keeps the
/// rate-limit registry, so every published snapshot shares the buckets of the one before.
pub struct Published {
    current: ArcSwap<Snapshot>,
    generation: AtomicU64,
    limits: Limits,
}

impl Published {
    pub fn new(mut first: Snapshot) -> Published {
        let limits = Limits::default();
        let mut buckets = std::mem::take(&mut first.buckets);
        limits.attach(&first, &mut buckets);
        first.buckets = buckets;
        Published {
            current: ArcSwap::from_pointee(first),
            generation: AtomicU64::new(1),
            limits,
        }
    }

    /// The snapshot a request uses from its start to its end. Hold it only across synchronous
    /// work; take what must outlive an `.await` out of it first.
    pub fn load(&self) -> Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// Replaces the snapshot in one atomic swap and returns the new generation number.
    ///
    /// Blocks until the replaced snapshot is freed (at most [`RETIRE_WAIT`]): call it from the
    /// reload thread, never from a request.
    pub fn publish(&self, mut next: Snapshot) -> u64 {
        let mut buckets = std::mem::take(&mut next.buckets);
        self.limits.attach(&next, &mut buckets);
        next.buckets = buckets;
        // Times recorded so far go in before the swap, so a reader never sees a used key as
        // unused; those recorded between this copy and the swap follow in `retire`.
        next.carry_last_used(&self.current.load());
        let next = Arc::new(next);
        let old = self.current.swap(next.clone());
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        retire(old, &next);
        generation
    }

    /// The current snapshot as an owned `Arc`, for work that awaits while holding it (never a
    /// request: those use [`Published::load`]).
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_long_and_short_units() {
        let r = Rate::parse("10/second").unwrap();
        assert_eq!((r.count.get(), r.per), (10, Duration::from_secs(1)));
        assert_eq!(Rate::parse("5/m").unwrap().per, Duration::from_secs(60));
        assert_eq!(
            Rate::parse("1/hour").unwrap().per,
            Duration::from_secs(3600)
        );
        for bad in [
            "",
            "10",
            "0/second",
            "-1/second",
            "10/day",
            "ten/second",
            "10/",
        ] {
            assert!(Rate::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ids_are_header_safe() {
        assert!(Id::new("acme-reports_1.v2:eu@x").is_some());
        for bad in [
            "",
            "has space",
            "quote\"",
            "é",
            "new\nline",
            &"x".repeat(129),
        ] {
            assert!(Id::new(bad).is_none(), "{bad:?}");
        }
    }

    fn key(i: u32, parts: KeyParts<'_>) -> Key {
        Key::new(KeyParts {
            id: Id::new(&format!("k{i}")),
            hash: Some(KeyHash::of(&i.to_le_bytes())),
            ..parts
        })
        .unwrap()
    }

    #[test]
    fn cold_fields_round_trip() {
        let before_epoch = SystemTime::UNIX_EPOCH - Duration::new(86_400, 250_000_000);
        let later = SystemTime::UNIX_EPOCH + Duration::new(1_800_000_000, 999_999_999);
        let rate = Rate::parse("5/minute").unwrap();
        let previous = (KeyHash::of(b"old"), later);
        let full = key(
            1,
            KeyParts {
                name: Some("Ünïcode name"),
                prefix: Some("kg_ab"),
                created_at: Some(before_epoch),
                previous: Some(previous),
                rate_limit: Some(rate),
                ..KeyParts::default()
            },
        );
        assert_eq!(full.name(), Some("Ünïcode name"));
        assert_eq!(full.prefix(), Some("kg_ab"));
        assert_eq!(full.created_at(), Some(before_epoch));
        assert_eq!(full.previous(), Some(previous));
        assert_eq!(full.rate_limit(), Some(rate));
        let some = key(
            2,
            KeyParts {
                prefix: Some(""),
                created_at: Some(SystemTime::UNIX_EPOCH),
                ..KeyParts::default()
            },
        );
        assert_eq!(some.name(), None);
        assert_eq!(some.prefix(), Some(""));
        assert_eq!(some.created_at(), Some(SystemTime::UNIX_EPOCH));
        assert_eq!((some.previous(), some.rate_limit()), (None, None));
        let none = key(3, KeyParts::default());
        assert_eq!(none.cold, Cold(None));
        assert_eq!(
            (none.name(), none.prefix(), none.created_at()),
            (None, None, None)
        );
    }

    #[test]
    fn the_key_table_finds_current_and_previous_hashes() {
        let until = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let keys: Vec<Key> = (0..5000u32)
            .map(|i| {
                let previous =
                    (i % 3 == 0).then(|| (KeyHash::of(&(i + 1_000_000).to_le_bytes()), until));
                key(
                    i,
                    KeyParts {
                        previous,
                        ..KeyParts::default()
                    },
                )
            })
            .collect();
        // Built from too small a start, so that it grows on the way.
        let mut table = KeyTable::with_capacity(10);
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(table.try_insert(&keys, k.hash, i, false), None);
            if let Some((h, _)) = k.previous() {
                assert_eq!(table.try_insert(&keys, h, i, true), None);
            }
        }
        assert!(
            table.slots.len() * 10 >= table.len * 13,
            "at least 1.3 slots per entry"
        );
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(table.get(&keys, &k.hash), Some((i, false)));
            if let Some((h, _)) = k.previous() {
                assert_eq!(table.get(&keys, &h), Some((i, true)));
            }
        }
        for miss in 0..5000u32 {
            assert_eq!(
                table.get(&keys, &KeyHash::of(&(miss + 9_000_000).to_le_bytes())),
                None
            );
        }
        // A hash already there: kept by `try_insert`, replaced by `insert`.
        assert_eq!(
            table.try_insert(&keys, keys[7].hash, 8, false),
            Some((7, false))
        );
        assert_eq!(table.get(&keys, &keys[7].hash), Some((7, false)));
        assert_eq!(
            table.insert(&keys, keys[7].hash, 7, false),
            Some((7, false))
        );
    }

    #[test]
    fn equal_lists_compare_equal_however_they_are_held() {
        let a = IpList::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let b = IpList::new(vec!["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(a, b);
        assert_eq!(a.clone(), a);
        assert_ne!(a, IpList::default());
        assert!(IpList::new(vec![]).is_empty());
        assert_eq!(
            TargetSet::new(vec![3, 1, 3]).iter().collect::<Vec<_>>(),
            [1, 3]
        );
    }

    #[test]
    fn ids_in_an_arena_are_ids() {
        let mut arena = IdArena::default();
        let ids: Vec<Id> = (0..500)
            .map(|i| arena.id(&format!("key-{i:07}")).unwrap())
            .collect();
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(id, &Id::new(&format!("key-{i:07}")).unwrap());
            assert_eq!(id.header_value(), format!("key-{i:07}").as_str());
        }
        assert!(arena.id("not valid").is_none());
        assert!(arena.id(&"x".repeat(Id::MAX_LEN)).is_some());
    }

    #[test]
    fn empty_sets_allow_everything() {
        assert!(TargetSet::default().allows(3));
        assert!(TargetSet::new(vec![1, 2]).allows(2));
        assert!(!TargetSet::new(vec![1, 2]).allows(3));
        assert!(IpList::default().allows("1.2.3.4".parse().unwrap()));
        let l = IpList::new(vec!["10.0.0.0/8".parse().unwrap()]);
        assert!(l.allows("10.1.2.3".parse().unwrap()));
        assert!(!l.allows("11.1.2.3".parse().unwrap()));
    }
}
