//! Several keygate instances as one: rate limits and key changes shared through Redis
//! (`[cluster]`).
//!
//! Rate limits are GCRA, as on one instance, with the theoretical arrival time (TAT) of each
//! bucket kept in Redis in microseconds of Redis' own clock (`TIME`), so instances' clocks
//! never have to agree:
//!
//! - `strict`: each rate-limited request runs [`DECIDE`] (one `EVALSHA`, one round trip): exact
//!   across the fleet. Both the key's and its consumer's buckets are judged in the same script
//!   and only taken when both allow.
//! - `local-sync`: each instance decides alone against its last view of the fleet's TAT plus
//!   what it admitted since, and every `sync_interval` sends those counts to Redis ([`ADD`]) and
//!   takes back the fleet's TAT. Overshoot: at most what the other instances admit in one
//!   interval (plus the burst each may take in its first interval).
//!
//! Redis failing or slower than `timeout` never holds a request: it gets what
//! `on_redis_error` says (`local` by default: this instance's own buckets), the outage is
//! logged once, counted in `keygate_redis_errors_total` and shown by `keygate_redis_up`, and
//! Redis is tried again at most every [`RETRY_EVERY`] (by a request in `strict`, by the sync in
//! `local-sync`): the first call that it answers ends the outage.
//!
//! Keys without a rate limit never touch Redis. Key changes made through one instance's admin
//! API are announced on `<prefix>changes`; every instance reloads its config when it hears one
//! (the keys file is shared: a volume all instances mount).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;

use crate::limits::{Limited, PolicyState, RateStatus, Scope};
use crate::metrics::Metrics;
use crate::model::{Quota, Window};
use crate::snapshot::{ClusterConfig, Id, OnRedisError, Rate};
use crate::state::quotas::{Counter, Owner, Taken, Used, Verdict};

/// Judges a request's rate limits and quotas in one round trip, at Redis' `TIME`.
///
/// KEYS: first `ARGV[1]` GCRA buckets (ARGV `2i`, `2i+1`: emission interval in µs and burst),
/// then quota counters, one hash per window (ARGV `2j`, `2j+1`: the plan's limit and when the
/// hash may expire, in ms since the epoch). Takes one request from each only when every bucket
/// and every quota allows: a request refused by either spends neither.
/// Returns `{rate_ok, quota_ok, now, tat…, (used, granted, warn, first_refusal)…}`.
const DECIDE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local nb = tonumber(ARGV[1])
local rate_ok, quota_ok = 1, 1
local tats = {}
for i = 1, nb do
  local interval = tonumber(ARGV[2 * i])
  local burst = tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local new_tat = tat + interval
  if new_tat - burst * interval > now then rate_ok = 0 end
  tats[i] = new_tat
end
local used, granted = {}, {}
for j = nb + 1, #KEYS do
  local v = redis.call('HMGET', KEYS[j], 'used', 'granted')
  used[j] = tonumber(v[1] or 0)
  granted[j] = tonumber(v[2] or 0)
  if used[j] >= tonumber(ARGV[2 * j]) + granted[j] then quota_ok = 0 end
end
local out = {rate_ok, quota_ok, string.format('%.0f', now)}
for i = 1, nb do out[#out + 1] = string.format('%.0f', tats[i]) end
for j = nb + 1, #KEYS do
  local allowance = tonumber(ARGV[2 * j]) + granted[j]
  local warn, first = 0, 0
  if rate_ok == 1 and quota_ok == 1 then
    used[j] = redis.call('HINCRBY', KEYS[j], 'used', 1)
    redis.call('PEXPIREAT', KEYS[j], ARGV[2 * j + 1])
    if used[j] * 100 >= allowance * 80 then
      warn = redis.call('HSETNX', KEYS[j], 'warned', 1)
    end
  elseif rate_ok == 1 and used[j] >= allowance then
    first = redis.call('HSETNX', KEYS[j], 'exceeded', 1)
    redis.call('PEXPIREAT', KEYS[j], ARGV[2 * j + 1])
  end
  out[#out + 1] = used[j]
  out[#out + 1] = granted[j]
  out[#out + 1] = warn
  out[#out + 1] = first
end
if rate_ok == 1 and quota_ok == 1 then
  for i = 1, nb do
    local ttl = math.ceil((tats[i] - now) / 1000) + 1000
    redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', ttl)
  end
end
return out
";

/// Adds what a `local-sync` instance let through to each quota hash in KEYS (ARGV `2j-1`,
/// `2j`: the count and the expiry in ms since the epoch) and returns `{used, granted}…`.
const ADD_QUOTA: &str = r"
local out = {}
for j = 1, #KEYS do
  local n = tonumber(ARGV[2 * j - 1])
  local used = redis.call('HINCRBY', KEYS[j], 'used', n)
  redis.call('PEXPIREAT', KEYS[j], ARGV[2 * j])
  out[#out + 1] = used
  out[#out + 1] = tonumber(redis.call('HGET', KEYS[j], 'granted') or 0)
end
return out
";

/// How long a quota window's hash outlives the window: the admin API can still read it.
const QUOTA_KEPT_MS: u64 = 86_400_000;

/// Adds what an instance admitted to each bucket in KEYS (ARGV: interval in µs and count, per
/// bucket) and returns `{now, tat_1, …, tat_n}`, the fleet's TATs after it.
const ADD: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {string.format('%.0f', now)}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local count = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  if count > 0 then
    tat = tat + count * interval
    local ttl = math.ceil((tat - now) / 1000) + 1000
    redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', ttl)
  end
  out[#out + 1] = string.format('%.0f', tat)
end
return out
";

/// The limits of one request that the fleet shares: its key's and its consumer's rate limits
/// and quotas.
#[derive(Debug, Clone, Default)]
pub struct Shared {
    pub key: Option<(Id, Rate)>,
    pub consumer: Option<(Id, Rate)>,
    /// The key's quota, then the consumer's, with the window of the request.
    pub quotas: [Option<(Id, Quota, Window)>; 2],
    /// The key's consumer, whatever limits it has: its id is the hash tag of every Redis key
    /// of the request, so one script may touch them all on a Redis Cluster.
    pub tag: Option<Id>,
}

/// What the fleet said about a request in `strict` mode.
#[derive(Debug, Clone, Copy)]
pub struct FleetDecision {
    /// The rate limits' answer (`Ok(status)` with no rate limit: an empty status).
    pub rate: Result<RateStatus, Limited>,
    /// The quotas' answer; `allowed` is false also when only the rate limit refused.
    pub quotas: Taken,
}

impl Shared {
    pub fn is_empty(&self) -> bool {
        self.key.is_none() && self.consumer.is_none() && self.quotas.iter().all(Option::is_none)
    }

    pub fn has_rate(&self) -> bool {
        self.key.is_some() || self.consumer.is_some()
    }

    fn buckets(&self) -> impl Iterator<Item = (Scope, &Id, Rate)> {
        let key = self.key.as_ref().map(|(id, r)| (Scope::Key, id, *r));
        let consumer = self
            .consumer
            .as_ref()
            .map(|(id, r)| (Scope::Consumer, id, *r));
        key.into_iter().chain(consumer)
    }
}

/// The quotas of `shared` that are set, with whose they are.
fn quota_owners(shared: &Shared) -> impl Iterator<Item = (Owner, &(Id, Quota, Window))> {
    [Owner::Key, Owner::Consumer]
        .into_iter()
        .zip(&shared.quotas)
        .filter_map(|(owner, q)| q.as_ref().map(|q| (owner, q)))
}

/// A quota counter waiting for the next `local-sync` sync.
struct QueuedQuota {
    counter: Arc<Counter>,
    owner: Owner,
    id: Id,
    quota: Quota,
    tag: Option<Id>,
    /// Synced until then (seconds since the epoch), used here or not.
    watch_until: u64,
}

/// How long a `local-sync` instance keeps syncing a quota after a request used it.
const QUOTA_WATCH_SECS: u64 = 60;

/// A change the admin API makes to the fleet's count of one quota window.
#[derive(Debug, Clone, Copy)]
pub enum QuotaChange {
    Read,
    /// Back to 0; the window's end (seconds since the epoch).
    Reset(u64),
    /// More requests, and the window's end (seconds since the epoch).
    Grant(u64, u64),
}

/// Redis could not answer in time; what to do is `on_redis_error`'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

/// A rate in the units the scripts use.
fn interval_us(rate: Rate) -> u64 {
    let us = rate.per.as_micros() / u128::from(rate.count.get());
    u64::try_from(us).unwrap_or(u64::MAX).max(1)
}

/// One bucket of the fleet as a `local-sync` instance sees it.
struct Mirror {
    /// Its key in Redis.
    key: String,
    interval: u64,
    burst: u32,
    /// This instance's GCRA TAT, in Redis µs: the fleet's as of the last sync, plus what this
    /// instance admitted since.
    tat: AtomicU64,
    /// Requests this instance admitted since the last sync, to be added to the fleet's.
    /// Below zero when a take already sent was given back: a debt settled by later takes.
    pending: AtomicI64,
    /// Used since the last sync: on the list the next sync sends.
    active: AtomicBool,
}

impl Mirror {
    /// Takes one request at `now` (Redis µs): `Ok(remaining)` or `Err(wait in µs)`.
    fn take(&self, now: u64) -> Result<u32, u64> {
        let burst = u64::from(self.burst) * self.interval;
        // Counted before the TAT moves: a sync (`synced`) that reads the count without this
        // take replaces the TAT before this one moves it, so this one moves the new TAT.
        // Counted after, a take that moved the TAT just before the sync read it would be
        // lost from the view until the next sync.
        self.pending.fetch_add(1, Ordering::AcqRel);
        let mut current = self.tat.load(Ordering::Acquire);
        loop {
            let tat = current.max(now) + self.interval;
            let allow_at = tat.saturating_sub(burst);
            if allow_at > now {
                self.pending.fetch_sub(1, Ordering::AcqRel);
                return Err(allow_at - now);
            }
            match self
                .tat
                .compare_exchange_weak(current, tat, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    let remaining = (now - allow_at) / self.interval;
                    return Ok(u32::try_from(remaining).unwrap_or(u32::MAX).min(self.burst));
                }
                Err(t) => current = t,
            }
        }
    }

    /// Undoes a `take` (the other bucket of the request refused it). When a sync has sent
    /// the take already, the fleet counted it: the count goes below zero, and the next takes
    /// pay it back instead of being sent.
    fn give_back(&self) {
        self.tat.fetch_sub(self.interval, Ordering::AcqRel);
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }

    /// What the next sync adds to the fleet's count: the takes since the last one, less any
    /// debt (which stays, for the takes after it to pay).
    fn to_send(&self) -> u64 {
        let sent = self.pending.swap(0, Ordering::AcqRel);
        if sent < 0 {
            self.pending.fetch_add(sent, Ordering::AcqRel);
        }
        u64::try_from(sent).unwrap_or(0)
    }

    /// After a sync: the fleet's TAT, plus what this instance admitted since the counts were
    /// sent (less a debt). Replaces the TAT only if no take moved it since the count was
    /// read, so none is lost; a take racing it may be counted twice until the next sync
    /// (refused a little early, never admitted beyond the limit).
    fn synced(&self, fleet_tat: u64) {
        let interval = i64::try_from(self.interval).unwrap_or(i64::MAX);
        let mut current = self.tat.load(Ordering::Acquire);
        loop {
            let since = self
                .pending
                .load(Ordering::Acquire)
                .saturating_mul(interval);
            let tat = fleet_tat.saturating_add_signed(since);
            match self
                .tat
                .compare_exchange_weak(current, tat, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(t) => current = t,
            }
        }
    }

    /// Seconds until the bucket is full again, as of `now`.
    fn reset(&self, now: u64) -> u64 {
        (self.tat.load(Ordering::Acquire).max(now) - now).div_ceil(1_000_000)
    }
}

/// The fleet's shared state: one per process.
/// A console session as the fleet shares it (`admin::session` keeps the local ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedSession {
    pub admin_id: String,
    /// `sha256:…` of the admin secret signed in with.
    pub admin_hash: String,
    pub csrf: String,
    /// Sign-in time, Unix ms.
    pub started_ms: u64,
}

/// Reads a shared session and pushes back its idle expiry, or ends it at its maximum age.
/// KEYS[1] the session; ARGV now (Unix ms), idle (ms), max (ms).
const SESSION_TOUCH: &str = r#"
local v = redis.call('HMGET', KEYS[1], 'admin_id', 'admin_hash', 'csrf', 'started_ms')
if not v[1] or not v[4] then return false end
local left = tonumber(v[4]) + tonumber(ARGV[3]) - tonumber(ARGV[1])
if left <= 0 then
  redis.call('DEL', KEYS[1])
  return false
end
redis.call('PEXPIRE', KEYS[1], math.min(tonumber(ARGV[2]), left))
return v
"#;

pub struct Cluster {
    config: ClusterConfig,
    redis: Conn,
    /// Where to subscribe to key changes: the Redis, or each node of a cluster in turn (a
    /// PUBLISH reaches every node of a Redis Cluster).
    subscribe_to: Vec<redis::Client>,
    decide: redis::Script,
    add: redis::Script,
    add_quota: redis::Script,
    /// `local-sync` buckets.
    mirrors: DashMap<MirrorId, Arc<Mirror>>,
    /// More mirrors than this and the next sync forgets the full ones ([`forget_full`]).
    evict_above: AtomicUsize,
    /// The buckets used since the last sync, each once: what the next sync sends, found
    /// without walking every bucket this instance ever used.
    used: Mutex<Vec<Arc<Mirror>>>,
    /// `local-sync`: the quota counters that let requests through since the last sync.
    quotas_used: Mutex<Vec<QueuedQuota>>,
    /// Redis µs minus this host's wall-clock µs, learned at each sync.
    offset: AtomicI64,
    up: AtomicBool,
    /// During an outage, no request waits on Redis before this (ms since `epoch`): one call
    /// at most every [`RETRY_EVERY`] finds out whether it is back.
    retry_at: AtomicU64,
    epoch: Instant,
    metrics: Arc<Metrics>,
}

/// Mirrors kept before full ones are forgotten: memory for this many buckets (a few hundred
/// bytes each) is cheap, and walking them is rare.
const MIRRORS_KEPT: usize = 100_000;

/// Forgets the mirrors of full buckets (TAT not after `now`) with nothing left to send and
/// on no sync's list: a new mirror (TAT 0) decides exactly as such a one would, and the
/// fleet's TAT is in Redis. A bucket still filling keeps its view, lest a new one let a
/// burst through before its first sync.
fn forget_full(mirrors: &DashMap<MirrorId, Arc<Mirror>>, now: u64) {
    mirrors.retain(|_, m| {
        m.tat.load(Ordering::Acquire) > now
            || m.pending.load(Ordering::Acquire) != 0
            || Arc::strong_count(m) > 1
    });
}

/// How often, during an outage, a request tries Redis again instead of falling back at once.
const RETRY_EVERY: Duration = Duration::from_millis(500);

impl Cluster {
    /// Connects lazily: keygate starts and serves while Redis is down (per `on_redis_error`).
    pub fn new(config: ClusterConfig, metrics: Arc<Metrics>) -> anyhow::Result<Arc<Cluster>> {
        // Small commands, one at a time per request: Nagle's algorithm would hold each back
        // until the previous one's ACK (40 ms with delayed ACKs).
        let tcp = redis::io::tcp::TcpSettings::default().set_nodelay(true);
        let client = |url: &str| -> redis::RedisResult<redis::Client> {
            let info =
                redis::IntoConnectionInfo::into_connection_info(url)?.set_tcp_settings(tcp.clone());
            redis::Client::open(info)
        };
        let connect_timeout = config.timeout.max(Duration::from_millis(200));
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let (redis, subscribe_to) = if let Some(master) = &config.sentinel_master {
            let sentinels = config
                .nodes
                .iter()
                .map(|u| {
                    redis::IntoConnectionInfo::into_connection_info(u.as_str())
                        .map(|i| i.addr().clone())
                })
                .collect::<redis::RedisResult<Vec<_>>>()?;
            let sentinel = redis::sentinel::SentinelClientBuilder::new(
                sentinels,
                master,
                redis::sentinel::SentinelServerType::Master,
            )?
            .set_client_to_redis_tcp_settings(tcp)
            .build()?;
            let slot = SentinelSlot {
                sentinel: tokio::sync::Mutex::new(sentinel),
                manager: arc_swap::ArcSwapOption::empty(),
                master: Mutex::new(None),
                resolving: AtomicBool::new(false),
                config: manager_config,
            };
            (Conn::Sentinel(Arc::new(slot)), Vec::new())
        } else if config.nodes.is_empty() {
            let single = client(&config.redis)?;
            let manager = ConnectionManager::new_lazy_with_config(single.clone(), manager_config)?;
            (Conn::Single(manager), vec![single])
        } else {
            let nodes = config
                .nodes
                .iter()
                .map(|u| client(u))
                .collect::<redis::RedisResult<Vec<_>>>()?;
            let cluster = ClusterClient::builder(config.nodes.clone())
                .connection_timeout(connect_timeout)
                .response_timeout(config.timeout)
                .retries(1)
                .tcp_settings(tcp)
                .build()?;
            let slot = ClusterSlot {
                client: cluster,
                connection: tokio::sync::OnceCell::new(),
                connecting: AtomicBool::new(false),
            };
            (Conn::Cluster(Arc::new(slot)), nodes)
        };
        metrics.redis_up(true);
        Ok(Arc::new(Cluster {
            config,
            redis,
            subscribe_to,
            decide: redis::Script::new(DECIDE),
            add: redis::Script::new(ADD),
            add_quota: redis::Script::new(ADD_QUOTA),
            mirrors: DashMap::new(),
            evict_above: AtomicUsize::new(MIRRORS_KEPT),
            used: Mutex::new(Vec::new()),
            quotas_used: Mutex::new(Vec::new()),
            offset: AtomicI64::new(0),
            up: AtomicBool::new(true),
            retry_at: AtomicU64::new(0),
            epoch: Instant::now(),
            metrics,
        }))
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Whether requests are decided against Redis on the request path.
    pub fn strict(&self) -> bool {
        self.config.mode == crate::snapshot::ClusterMode::Strict
    }

    /// False from a failed call until one succeeds again.
    pub fn available(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn on_error(&self) -> OnRedisError {
        self.config.on_redis_error
    }

    /// `<prefix>rl:{<consumer or key>}:<scope>:<id>:<count>/<per ms>`: a changed rate starts a
    /// new bucket (as a reload does locally), and a key's and its consumer's buckets share a
    /// hash tag, so one script may touch both on a Redis Cluster.
    fn bucket_key(&self, shared: &Shared, scope: Scope, id: &Id, rate: Rate) -> String {
        let tag = shared.tag.as_ref().unwrap_or(id).as_str();
        format!(
            "{}rl:{{{tag}}}:{}:{}:{}/{}",
            self.config.prefix,
            scope.name(),
            id.as_str(),
            rate.count,
            rate.per.as_millis()
        )
    }

    /// `<prefix>q:{<consumer or key>}:<key|consumer>:<id>:<window start>`: a hash of `used`,
    /// `granted` (and the `warned` / `exceeded` marks) per calendar window, so a new window
    /// starts from nothing and a changed limit keeps what was used.
    pub fn quota_key(&self, tag: Option<&Id>, owner: Owner, id: &Id, window: Window) -> String {
        let tag = tag.unwrap_or(id).as_str();
        let owner = owner.name();
        format!(
            "{}q:{{{tag}}}:{owner}:{}:{}",
            self.config.prefix,
            id.as_str(),
            window.start
        )
    }

    /// `strict`: one round trip deciding every rate limit and quota of `shared`.
    pub async fn decide(&self, shared: &Shared) -> Result<FleetDecision, Unavailable> {
        if !self.worth_trying() {
            return Err(Unavailable);
        }
        let mut call = self.decide.prepare_invoke();
        call.arg(shared.buckets().count());
        for (scope, id, rate) in shared.buckets() {
            call.key(self.bucket_key(shared, scope, id, rate));
            call.arg(interval_us(rate)).arg(rate.count.get());
        }
        for (owner, (id, quota, window)) in quota_owners(shared) {
            call.key(self.quota_key(shared.tag.as_ref(), owner, id, *window));
            call.arg(quota.limit).arg(window.end * 1000 + QUOTA_KEPT_MS);
        }
        let Some(mut conn) = self.redis.get() else {
            self.outage("not connected yet");
            return Err(Unavailable);
        };
        let answer: Result<Vec<u64>, _> =
            tokio::time::timeout(self.config.timeout, call.invoke_async(&mut conn))
                .await
                .map_err(|_| ())
                .and_then(|r| {
                    r.map_err(|e| {
                        self.failed(&e);
                    })
                });
        let Ok(answer) = answer else {
            self.outage("timed out");
            return Err(Unavailable);
        };
        self.recovered();
        let nb = shared.buckets().count();
        let nq = quota_owners(shared).count();
        if answer.len() != 3 + nb + 4 * nq {
            return Err(Unavailable);
        }
        let (rate_ok, quota_ok, now) = (answer[0] == 1, answer[1] == 1, answer[2]);
        let mut quotas = Taken {
            allowed: rate_ok && quota_ok,
            verdicts: [None, None],
        };
        for (i, (slot, (_, quota, window))) in shared
            .quotas
            .iter()
            .enumerate()
            .filter_map(|(slot, q)| q.as_ref().map(|q| (slot, q)))
            .enumerate()
        {
            let v = &answer[3 + nb + 4 * i..3 + nb + 4 * i + 4];
            quotas.verdicts[slot] = Some(Verdict {
                quota: *quota,
                used: Used {
                    start: window.start,
                    end: window.end,
                    used: v[0],
                    granted: v[1],
                    ..Used::default()
                },
                warn: v[2] == 1,
                first_refusal: v[3] == 1,
            });
        }
        let mut status = RateStatus::default();
        let mut wait = 0;
        for (slot, ((scope, _, rate), &tat)) in shared.buckets().zip(&answer[3..]).enumerate() {
            let interval = interval_us(rate);
            let burst = u64::from(rate.count.get());
            let allow_at = tat.saturating_sub(burst * interval);
            let (remaining, reset) = if allow_at > now {
                wait = wait.max(allow_at - now);
                (0, (allow_at - now).div_ceil(1_000_000).max(1))
            } else {
                (
                    ((now - allow_at) / interval).min(burst),
                    (tat - now).div_ceil(1_000_000),
                )
            };
            status.policies[slot] = Some(PolicyState {
                scope,
                limit: u64::from(rate.count.get()),
                window: rate.per.as_secs(),
                remaining,
                reset,
            });
        }
        let rate = if rate_ok {
            Ok(status)
        } else {
            Err(Limited {
                status,
                retry_after: wait.div_ceil(1_000_000).max(1),
            })
        };
        Ok(FleetDecision { rate, quotas })
    }

    /// `local-sync`: adds what this instance let through to each quota's window in one call
    /// and returns the fleet's `(used, granted)` after it, in the same order.
    pub async fn add_quota_counts(
        &self,
        counts: &[(String, Window, u64)],
    ) -> Option<Vec<(u64, u64)>> {
        if counts.is_empty() {
            return Some(Vec::new());
        }
        let mut call = self.add_quota.prepare_invoke();
        for (key, window, n) in counts {
            call.key(key);
            call.arg(*n).arg(window.end * 1000 + QUOTA_KEPT_MS);
        }
        let mut conn = self.redis.get()?;
        let answer: Vec<u64> =
            match tokio::time::timeout(self.config.timeout, call.invoke_async(&mut conn)).await {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => {
                    self.failed(&e);
                    return None;
                }
                Err(_) => return None,
            };
        (answer.len() == 2 * counts.len()).then(|| answer.chunks(2).map(|c| (c[0], c[1])).collect())
    }

    /// The admin API's reset and grant on the fleet's count of one quota window, and reads of
    /// it: `(used, granted)` after the change. `None` when Redis does not answer.
    pub async fn quota_change(&self, key: &str, change: QuotaChange) -> Option<(u64, u64)> {
        let mut conn = self.redis.get()?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        match change {
            QuotaChange::Read => {}
            QuotaChange::Reset(expire_at) => {
                pipe.cmd("HSET").arg(key).arg("used").arg(0).ignore();
                pipe.cmd("HDEL")
                    .arg(key)
                    .arg("warned")
                    .arg("exceeded")
                    .ignore();
                // A reset before the window's first request makes the hash: it must expire.
                pipe.cmd("PEXPIREAT")
                    .arg(key)
                    .arg(expire_at * 1000 + QUOTA_KEPT_MS)
                    .ignore();
            }
            QuotaChange::Grant(n, expire_at) => {
                pipe.cmd("HINCRBY").arg(key).arg("granted").arg(n).ignore();
                pipe.cmd("HDEL").arg(key).arg("exceeded").ignore();
                pipe.cmd("PEXPIREAT")
                    .arg(key)
                    .arg(expire_at * 1000 + QUOTA_KEPT_MS)
                    .ignore();
            }
        }
        pipe.cmd("HMGET").arg(key).arg("used").arg("granted");
        let answer: Result<(Vec<Option<u64>>,), _> =
            tokio::time::timeout(self.config.timeout, pipe.query_async(&mut conn))
                .await
                .ok()?;
        match answer {
            Ok((v,)) => Some((
                v.first().copied().flatten().unwrap_or(0),
                v.get(1).copied().flatten().unwrap_or(0),
            )),
            Err(e) => {
                self.failed(&e);
                None
            }
        }
    }

    /// `local-sync`: decides against this instance's view of the fleet.
    // The `Ok` side is as large: boxing the refusal would save nothing.
    #[allow(clippy::result_large_err)]
    pub fn decide_locally(&self, shared: &Shared) -> Result<RateStatus, Limited> {
        let now = self.now_us();
        let mut status = RateStatus::default();
        let mut taken: Vec<Arc<Mirror>> = Vec::with_capacity(2);
        for (slot, (scope, id, rate)) in shared.buckets().enumerate() {
            let mirror = self.mirror(shared, scope, id, rate);
            if !mirror.active.swap(true, Ordering::AcqRel) {
                self.used
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(mirror.clone());
            }
            let state = |remaining: u32, reset| PolicyState {
                scope,
                limit: u64::from(rate.count.get()),
                window: rate.per.as_secs(),
                remaining: u64::from(remaining),
                reset,
            };
            match mirror.take(now) {
                Ok(remaining) => {
                    status.policies[slot] = Some(state(remaining, mirror.reset(now)));
                    taken.push(mirror);
                }
                Err(wait) => {
                    for m in &taken {
                        m.give_back();
                    }
                    let retry_after = wait.div_ceil(1_000_000).max(1);
                    status.policies[slot] = Some(state(0, retry_after));
                    return Err(Limited {
                        status,
                        retry_after,
                    });
                }
            }
        }
        Ok(status)
    }

    /// The view of one bucket; found without building its Redis key, which only a new one
    /// needs (the request path allocates nothing here once a bucket is known).
    fn mirror(&self, shared: &Shared, scope: Scope, id: &Id, rate: Rate) -> Arc<Mirror> {
        let tag = shared.tag.clone();
        let mid = MirrorId {
            scope: scope == Scope::Key,
            id: id.clone(),
            tag,
            count: rate.count.get(),
            per: rate.per,
        };
        if let Some(m) = self.mirrors.get(&mid) {
            return m.clone();
        }
        self.mirrors
            .entry(mid)
            .or_insert_with(|| {
                Arc::new(Mirror {
                    key: self.bucket_key(shared, scope, id, rate),
                    interval: interval_us(rate),
                    burst: rate.count.get(),
                    tat: AtomicU64::new(0),
                    pending: AtomicI64::new(0),
                    active: AtomicBool::new(false),
                })
            })
            .clone()
    }

    /// This host's clock, moved onto Redis' by the offset learned at the last sync.
    fn now_us(&self) -> u64 {
        let local = i64::try_from(self.now_local_us()).unwrap_or(i64::MAX);
        u64::try_from(local.saturating_add(self.offset.load(Ordering::Relaxed))).unwrap_or(0)
    }

    /// `local-sync`: sends what this instance admitted since the last sync and takes back the
    /// fleet's TATs, for every bucket used since.
    pub async fn sync(&self) {
        self.sync_quotas().await;
        let used = std::mem::take(&mut *self.used.lock().unwrap_or_else(|p| p.into_inner()));
        let mut batch: Vec<Entry> = Vec::with_capacity(used.len());
        for m in used {
            m.active.store(false, Ordering::Release);
            let sent = m.to_send();
            batch.push((m.key.clone(), m, sent));
        }
        if batch.is_empty() {
            // With `on_redis_error` = allow or deny no bucket is used during an outage, so
            // nothing would ever call Redis again: ask it directly, as often as a request may.
            if !self.available() && self.worth_trying() {
                self.probe().await;
            }
            return;
        }
        // One script call for all of them; on a Redis Cluster, one per hash tag (a script's
        // keys must share a slot), all at once.
        let groups: Vec<Vec<Entry>> = if !matches!(self.redis, Conn::Cluster(_)) {
            vec![batch]
        } else {
            let mut by_tag: HashMap<String, Vec<Entry>> = HashMap::new();
            for e in batch {
                by_tag.entry(hash_tag(&e.0).to_owned()).or_default().push(e);
            }
            by_tag.into_values().collect()
        };
        let local_before = self.now_local_us();
        let answers =
            futures_util::future::join_all(groups.iter().map(|g| self.add_counts(g))).await;
        let local_mid = (local_before + self.now_local_us()) / 2;
        let mut failed = false;
        for (group, answer) in groups.iter().zip(answers) {
            match answer {
                Some(v) if v.len() == group.len() + 1 => {
                    self.offset
                        .store(v[0] as i64 - local_mid as i64, Ordering::Relaxed);
                    for ((_, m, _), &tat) in group.iter().zip(&v[1..]) {
                        m.synced(tat);
                    }
                }
                // What was sent is lost to the fleet, but already in each mirror's own TAT:
                // the limit keeps holding on this instance, and nothing piles up to be sent
                // at once after the outage.
                _ => failed = true,
            }
        }
        if failed {
            self.outage("sync failed");
        } else {
            self.recovered();
        }
        // Its references would keep every bucket it sent.
        drop(groups);
        if self.mirrors.len() > self.evict_above.load(Ordering::Relaxed) {
            forget_full(&self.mirrors, self.now_us());
            // Walked again only once as many buckets as are left are added, not at every
            // sync while more than MIRRORS_KEPT buckets are filling.
            let left = self.mirrors.len();
            self.evict_above
                .store(MIRRORS_KEPT.max(left * 2), Ordering::Relaxed);
        }
    }

    /// `local-sync`: queues a quota counter that let a request through for the next sync
    /// (once per sync: the request path allocates here only for a counter's first request).
    pub fn quota_used(
        &self,
        counter: &Arc<Counter>,
        owner: Owner,
        id: &Id,
        quota: Quota,
        tag: Option<&Id>,
    ) {
        if !counter.queued.swap(true, Ordering::AcqRel) {
            self.quotas_used
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(QueuedQuota {
                    counter: counter.clone(),
                    owner,
                    id: id.clone(),
                    quota,
                    tag: tag.cloned(),
                    watch_until: self.now_us() / 1_000_000 + QUOTA_WATCH_SECS,
                });
        }
    }

    /// `local-sync`: adds what this instance let through to the fleet's quota counts and takes
    /// the fleet's counts (and grants) back. What a failed call sent is lost to the fleet but
    /// stays in this instance's count, as for the buckets.
    ///
    /// A counter stays on the list [`QUOTA_WATCH_SECS`] after its first request, sent with
    /// nothing to add when idle here, so this instance keeps up with what the others let
    /// through: an instance's view is then never older than one sync while its key is in use.
    async fn sync_quotas(&self) {
        let queued =
            std::mem::take(&mut *self.quotas_used.lock().unwrap_or_else(|p| p.into_inner()));
        if queued.is_empty() {
            return;
        }
        let now = self.now_us() / 1_000_000;
        let counts: Vec<(String, Window, u64)> = queued
            .iter()
            .map(|q| {
                let (window, n) = q.counter.to_send(q.quota, now);
                (
                    self.quota_key(q.tag.as_ref(), q.owner, &q.id, window),
                    window,
                    n,
                )
            })
            .collect();
        // On a Redis Cluster one call per key: a script's keys must share a slot.
        let answers: Option<Vec<(u64, u64)>> = if matches!(self.redis, Conn::Cluster(_)) {
            let each = futures_util::future::join_all(
                counts
                    .iter()
                    .map(|c| self.add_quota_counts(std::slice::from_ref(c))),
            )
            .await;
            each.into_iter()
                .map(|a| a.and_then(|v| v.first().copied()))
                .collect()
        } else {
            self.add_quota_counts(&counts).await
        };
        match answers {
            Some(fleet) => {
                for (q, ((_, window, _), (used, granted))) in
                    queued.iter().zip(counts.iter().zip(fleet))
                {
                    q.counter.synced(*window, used, granted);
                }
            }
            None => self.outage("quota sync failed"),
        }
        let mut watched = Vec::with_capacity(queued.len());
        for q in queued {
            if now < q.watch_until {
                watched.push(q);
            } else {
                // Queued again by its next request.
                q.counter.queued.store(false, Ordering::Release);
            }
        }
        self.quotas_used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(watched);
    }

    /// One PING, bounded by `timeout`: ends the outage when Redis answers.
    async fn probe(&self) {
        let Some(mut conn) = self.redis.get() else {
            return self.outage("not connected yet");
        };
        let ping = redis::cmd("PING");
        let ping = ping.query_async::<String>(&mut conn);
        match tokio::time::timeout(self.config.timeout, ping).await {
            Ok(Ok(_)) => self.recovered(),
            Ok(Err(e)) => {
                self.failed(&e);
                self.outage("still not answering");
            }
            Err(_) => self.outage("still timing out"),
        }
    }

    /// One ADD call: `[now, tat…]` for `group`'s buckets, or `None` when Redis fails.
    async fn add_counts(&self, group: &[Entry]) -> Option<Vec<u64>> {
        let mut call = self.add.prepare_invoke();
        for (key, m, sent) in group {
            call.key(key);
            call.arg(m.interval).arg(*sent);
        }
        let mut conn = self.redis.get()?;
        match tokio::time::timeout(self.config.timeout, call.invoke_async(&mut conn)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.failed(&e);
                None
            }
            Err(_) => None,
        }
    }

    fn now_local_us(&self) -> u64 {
        u64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_micros(),
        )
        .unwrap_or(u64::MAX)
    }

    /// Tells the fleet that the keys changed (generation `generation` here).
    pub async fn announce(&self, generation: u64) {
        let Some(mut conn) = self.redis.get() else {
            return self.outage("announcing a key change: not connected");
        };
        let channel = self.channel();
        let sent: Result<Result<i64, _>, _> = tokio::time::timeout(
            self.config.timeout.max(Duration::from_secs(1)),
            redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(generation)
                .query_async(&mut conn),
        )
        .await;
        match sent {
            Ok(Ok(_)) => self.recovered(),
            Ok(Err(e)) => {
                self.failed(&e);
                self.outage("announcing a key change failed");
            }
            Err(_) => self.outage("announcing a key change timed out"),
        }
    }

    fn channel(&self) -> String {
        format!("{}changes", self.config.prefix)
    }

    /// Calls `changed` whenever an instance announces a key change, for as long as the
    /// process runs, resubscribing after Redis comes back.
    pub async fn listen(self: Arc<Self>, changed: impl Fn() + Send + Sync + 'static) {
        use futures_util::StreamExt as _;
        let mut backoff = Duration::from_millis(100);
        loop {
            let subscribed = async {
                let mut last = None;
                let clients = match &self.redis {
                    // The master of the moment: after a failover the subscription drops and
                    // is made again on the new one.
                    Conn::Sentinel(slot) => slot.master_client().await.into_iter().collect(),
                    _ => self.subscribe_to.clone(),
                };
                for client in &clients {
                    match client.get_async_pubsub().await {
                        Ok(mut pubsub) => {
                            pubsub.subscribe(self.channel()).await?;
                            return Ok(pubsub);
                        }
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| {
                    redis::RedisError::from((redis::ErrorKind::Client, "no Redis to subscribe to"))
                }))
            };
            match tokio::time::timeout(Duration::from_secs(2), subscribed).await {
                Ok(Ok(pubsub)) => {
                    backoff = Duration::from_millis(100);
                    // Changes made while unsubscribed were missed: look once.
                    changed();
                    let mut messages = pubsub.into_on_message();
                    while messages.next().await.is_some() {
                        changed();
                    }
                    tracing::warn!("lost the Redis subscription to key changes; resubscribing");
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "cannot subscribe to key changes");
                }
                Err(_) => tracing::debug!("subscribing to key changes timed out"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Records the max of `times` (key id -> seconds since the epoch) in the fleet's last-used
    /// hash and returns the fleet's values for the same ids.
    pub async fn merge_last_used(&self, times: &[(Id, u32)]) -> Option<HashMap<Id, u32>> {
        const MERGE: &str = r"
local out = {}
for i = 1, #ARGV, 2 do
  local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or 0)
  local v = tonumber(ARGV[i + 1])
  if v > cur then redis.call('HSET', KEYS[1], ARGV[i], v); cur = v end
  out[#out + 1] = cur
end
return out
";
        if times.is_empty() {
            return Some(HashMap::new());
        }
        let script = redis::Script::new(MERGE);
        let mut call = script.prepare_invoke();
        call.key(format!("{}last_used", self.config.prefix));
        for (id, t) in times {
            call.arg(id.as_str()).arg(*t);
        }
        let mut conn = self.redis.get()?;
        match tokio::time::timeout(
            Duration::from_secs(2),
            call.invoke_async::<Vec<u32>>(&mut conn),
        )
        .await
        {
            Ok(Ok(v)) => Some(times.iter().map(|(id, _)| id.clone()).zip(v).collect()),
            _ => None,
        }
    }

    /// The fleet's last-used times of `ids` (0: never), for the admin API.
    pub async fn last_used(&self, ids: &[&str]) -> Option<Vec<u32>> {
        if ids.is_empty() {
            return Some(Vec::new());
        }
        let mut conn = self.redis.get()?;
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(format!("{}last_used", self.config.prefix)).arg(ids);
        let query = cmd.query_async::<Vec<Option<u32>>>(&mut conn);
        match tokio::time::timeout(self.config.timeout.max(Duration::from_millis(500)), query).await
        {
            Ok(Ok(v)) => Some(v.into_iter().map(Option::unwrap_or_default).collect()),
            _ => None,
        }
    }

    /// Runs `pipe` on the fleet's Redis within `wait`: usage counts go and come back in
    /// batches (`usage::fleet`). `None` when Redis is down, slow or refuses a command.
    pub async fn pipeline<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
        wait: Duration,
    ) -> Option<T> {
        let mut conn = self.redis.get()?;
        match tokio::time::timeout(wait, pipe.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "a usage pipeline failed");
                None
            }
            Err(_) => None,
        }
    }

    /// Shares a console session with the fleet: its fields under `<prefix>session:<hash>`,
    /// gone after `idle` unused (every touch pushes that back) and at `started_ms + max`.
    /// `false` when Redis did not take it (the session then lives on this instance only).
    pub async fn session_open(&self, hash: &str, s: &SharedSession, idle: Duration) -> bool {
        let Some(mut conn) = self.redis.get() else {
            return false;
        };
        let key = format!("{}session:{hash}", self.config.prefix);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_multiple(
                &key,
                &[
                    ("admin_id", s.admin_id.as_str()),
                    ("admin_hash", s.admin_hash.as_str()),
                    ("csrf", s.csrf.as_str()),
                    ("started_ms", s.started_ms.to_string().as_str()),
                ],
            )
            .ignore()
            .pexpire(&key, idle.as_millis().try_into().unwrap_or(i64::MAX))
            .ignore();
        let done = pipe.query_async::<()>(&mut conn);
        matches!(
            tokio::time::timeout(self.config.timeout.max(Duration::from_millis(500)), done).await,
            Ok(Ok(()))
        )
    }

    /// The shared session `hash` at `now_ms`, which then counts as its last use: `Ok(None)`
    /// when it has ended or never was, `Err` when Redis cannot say.
    pub async fn session_touch(
        &self,
        hash: &str,
        now_ms: u64,
        idle: Duration,
        max: Duration,
    ) -> Result<Option<SharedSession>, ()> {
        let mut conn = self.redis.get().ok_or(())?;
        let script = redis::Script::new(SESSION_TOUCH);
        let mut call = script.prepare_invoke();
        call.key(format!("{}session:{hash}", self.config.prefix))
            .arg(now_ms)
            .arg(u64::try_from(idle.as_millis()).unwrap_or(u64::MAX))
            .arg(u64::try_from(max.as_millis()).unwrap_or(u64::MAX));
        let answer = call.invoke_async::<Option<Vec<String>>>(&mut conn);
        match tokio::time::timeout(self.config.timeout.max(Duration::from_millis(500)), answer)
            .await
        {
            Ok(Ok(None)) => Ok(None),
            Ok(Ok(Some(v))) => match <[String; 4]>::try_from(v) {
                Ok([admin_id, admin_hash, csrf, started]) => Ok(Some(SharedSession {
                    admin_id,
                    admin_hash,
                    csrf,
                    started_ms: started.parse().map_err(|_| ())?,
                })),
                Err(_) => Ok(None),
            },
            _ => Err(()),
        }
    }

    /// Claims webhook event `id` for this instance for `ttl` (`SET NX`): `false` when another
    /// instance already did, so each event is sent by one instance of the fleet. `true` when
    /// Redis cannot say: a duplicate (which receivers drop by id) beats a lost event.
    pub async fn claim_event(&self, id: &str, ttl: Duration) -> bool {
        let Some(mut conn) = self.redis.get() else {
            return true;
        };
        let mut cmd = redis::cmd("SET");
        cmd.arg(format!("{}webhook:{id}", self.config.prefix))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1));
        let set = cmd.query_async::<Option<String>>(&mut conn);
        match tokio::time::timeout(self.config.timeout.max(Duration::from_millis(500)), set).await {
            Ok(Ok(answer)) => answer.is_some(),
            _ => true,
        }
    }

    /// Ends the shared session `hash` on every instance.
    pub async fn session_close(&self, hash: &str) {
        let Some(mut conn) = self.redis.get() else {
            return;
        };
        let mut cmd = redis::cmd("DEL");
        cmd.arg(format!("{}session:{hash}", self.config.prefix));
        let del = cmd.query_async::<i64>(&mut conn);
        let _ =
            tokio::time::timeout(self.config.timeout.max(Duration::from_millis(500)), del).await;
    }

    /// Connects and loads the scripts before the first request needs them.
    pub async fn warm(self: Arc<Self>) {
        match &self.redis {
            Conn::Cluster(slot) => {
                let _ = tokio::time::timeout(Duration::from_secs(2), slot.connect()).await;
            }
            Conn::Sentinel(slot) => {
                let _ = tokio::time::timeout(Duration::from_secs(2), slot.resolve()).await;
            }
            Conn::Single(_) => {}
        }
        let Some(mut conn) = self.redis.get() else {
            return self.outage("not answering at start");
        };
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        match tokio::time::timeout(Duration::from_secs(2), ping).await {
            Ok(Ok(_)) => {
                let _ = self.decide.load_async(&mut conn).await;
                let _ = self.add.load_async(&mut conn).await;
                tracing::info!(redis = %self.config.redis, "connected to Redis");
            }
            _ => self.outage("not answering at start"),
        }
    }

    /// False during an outage, except once every [`RETRY_EVERY`].
    fn worth_trying(&self) -> bool {
        if self.up.load(Ordering::Relaxed) {
            return true;
        }
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let at = self.retry_at.load(Ordering::Relaxed);
        now >= at
            && self
                .retry_at
                .compare_exchange(
                    at,
                    now + RETRY_EVERY.as_millis() as u64,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    fn failed(&self, e: &redis::RedisError) {
        tracing::debug!(error = %e, "Redis call failed");
    }

    /// Logs the first failure of an outage, counts every one.
    fn outage(&self, what: &str) {
        self.metrics.redis_error();
        // The master may have moved: ask the Sentinels again.
        if let Conn::Sentinel(slot) = &self.redis {
            slot.clone().resolve_in_background();
        }
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.retry_at
            .store(now + RETRY_EVERY.as_millis() as u64, Ordering::Relaxed);
        if self.up.swap(false, Ordering::AcqRel) {
            self.metrics.redis_up(false);
            tracing::warn!(
                on_redis_error = ?self.config.on_redis_error,
                "Redis unavailable ({what}); rate limits fall back until it answers again"
            );
        }
    }

    fn recovered(&self) {
        if !self.up.load(Ordering::Relaxed) && !self.up.swap(true, Ordering::AcqRel) {
            self.metrics.redis_up(true);
            tracing::info!("Redis answers again; rate limits are shared again");
        }
    }

    /// Runs the `local-sync` reconciliation every `sync_interval` (a no-op in `strict`).
    pub async fn run_sync(self: Arc<Self>) {
        if self.strict() {
            return;
        }
        let mut tick = tokio::time::interval(self.config.sync_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let started = Instant::now();
            self.sync().await;
            if started.elapsed() > self.config.sync_interval * 10 {
                tracing::debug!(elapsed = ?started.elapsed(), "slow rate-limit sync");
            }
        }
    }
}

/// What a `local-sync` bucket is known by: the same as its Redis key, unformatted.
#[derive(Clone, PartialEq, Eq, Hash)]
struct MirrorId {
    /// The key's bucket (else its consumer's).
    scope: bool,
    id: Id,
    /// The consumer whose hash tag the bucket shares.
    tag: Option<Id>,
    count: u32,
    per: Duration,
}

/// A bucket to sync: its Redis key, its mirror, and the count sent.
type Entry = (String, Arc<Mirror>, u64);

/// The `{…}` hash tag of a bucket key: the part a Redis Cluster hashes to pick the slot.
fn hash_tag(key: &str) -> &str {
    key.split_once('{')
        .and_then(|(_, rest)| rest.split_once('}'))
        .map_or(key, |(tag, _)| tag)
}

/// One Redis, a Redis Cluster, or the master Redis Sentinels name.
enum Conn {
    /// A multiplexed connection that reconnects by itself.
    Single(ConnectionManager),
    /// Connected in the background on first use, so no request waits for it.
    Cluster(Arc<ClusterSlot>),
    /// A reconnecting connection to the master the Sentinels name, asked again (in the
    /// background) whenever a call fails: after a failover it is another server.
    Sentinel(Arc<SentinelSlot>),
}

struct SentinelSlot {
    sentinel: tokio::sync::Mutex<redis::sentinel::SentinelClient>,
    manager: arc_swap::ArcSwapOption<ConnectionManager>,
    /// The master's address, as last named.
    master: Mutex<Option<String>>,
    resolving: AtomicBool,
    config: ConnectionManagerConfig,
}

impl SentinelSlot {
    async fn master_client(&self) -> Option<redis::Client> {
        let mut sentinel = self.sentinel.lock().await;
        sentinel.async_get_client().await.ok()
    }

    /// Asks the Sentinels for the master; connects anew when it moved.
    async fn resolve(&self) {
        let Some(client) = self.master_client().await else {
            return;
        };
        let addr = client.get_connection_info().addr().to_string();
        let mut master = self.master.lock().unwrap_or_else(|p| p.into_inner());
        if master.as_deref() == Some(addr.as_str()) && self.manager.load().is_some() {
            return;
        }
        match ConnectionManager::new_lazy_with_config(client, self.config.clone()) {
            Ok(m) => {
                tracing::info!(master = %addr, "Redis Sentinel names the master");
                self.manager.store(Some(Arc::new(m)));
                *master = Some(addr);
            }
            Err(e) => tracing::warn!(error = %e, "cannot connect to the master Sentinel names"),
        }
    }

    fn resolve_in_background(self: Arc<Self>) {
        if self.resolving.swap(true, Ordering::AcqRel) {
            return;
        }
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(2), self.resolve()).await;
            self.resolving.store(false, Ordering::Release);
        });
    }
}

struct ClusterSlot {
    client: ClusterClient,
    connection: tokio::sync::OnceCell<ClusterConnection>,
    connecting: AtomicBool,
}

impl ClusterSlot {
    async fn connect(&self) {
        let _ = self
            .connection
            .get_or_try_init(|| self.client.get_async_connection())
            .await;
    }
}

impl Conn {
    /// A connection to send on, or `None` while a cluster connection is still being made.
    fn get(&self) -> Option<AnyConn> {
        match self {
            Conn::Single(m) => Some(AnyConn::Single(m.clone())),
            Conn::Cluster(slot) => {
                if let Some(c) = slot.connection.get() {
                    return Some(AnyConn::Cluster(c.clone()));
                }
                if !slot.connecting.swap(true, Ordering::AcqRel) {
                    let slot = slot.clone();
                    tokio::spawn(async move {
                        slot.connect().await;
                        slot.connecting.store(false, Ordering::Release);
                    });
                }
                None
            }
            Conn::Sentinel(slot) => match slot.manager.load_full() {
                Some(m) => Some(AnyConn::Single(ConnectionManager::clone(&m))),
                None => {
                    slot.clone().resolve_in_background();
                    None
                }
            },
        }
    }
}

/// Either kind of connection, for the scripts and commands to run on.
enum AnyConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for AnyConn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            AnyConn::Single(c) => c.req_packed_command(cmd),
            AnyConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            AnyConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            AnyConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            AnyConn::Single(c) => c.get_db(),
            AnyConn::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    fn mirror(count: u32, per: Duration) -> Mirror {
        let rate = Rate {
            count: NonZeroU32::new(count).unwrap(),
            per,
        };
        Mirror {
            key: String::new(),
            interval: interval_us(rate),
            burst: count,
            tat: AtomicU64::new(0),
            pending: AtomicI64::new(0),
            active: AtomicBool::new(false),
        }
    }

    /// GCRA at an exact `now`: a burst of `count`, then one request per interval; what the
    /// fleet has taken (its TAT, learned at a sync) counts as if taken here.
    #[test]
    fn a_mirror_is_gcra_over_the_fleets_tat_plus_what_it_admitted() {
        let m = mirror(4, Duration::from_secs(4)); // one a second, burst 4
        let t0 = 1_000_000_000;
        for left in [3, 2, 1, 0] {
            assert_eq!(m.take(t0), Ok(left));
        }
        assert_eq!(
            m.take(t0),
            Err(1_000_000),
            "the next one in exactly a second"
        );
        assert_eq!(m.take(t0 + 999_999), Err(1));
        assert_eq!(m.take(t0 + 1_000_000), Ok(0));
        assert_eq!(m.reset(t0 + 1_000_000), 4, "full again 4 s later");

        // A sync: this instance's 5 reach Redis, where another instance had taken 2 more.
        assert_eq!(m.to_send(), 5);
        m.synced(t0 + 7_000_000);
        assert_eq!(m.take(t0 + 3_000_000), Err(1_000_000));
        assert_eq!(m.take(t0 + 4_000_000), Ok(0));
        assert_eq!(m.reset(t0 + 4_000_000), 4);
        // Admitted after the counts were sent: kept on top of the fleet's TAT.
        m.synced(t0 + 7_000_000);
        assert_eq!(m.reset(t0 + 4_000_000), 4);
        // Giving back undoes a take.
        assert_eq!(m.take(t0 + 5_000_000), Ok(0));
        m.give_back();
        assert_eq!(m.pending.load(Ordering::Relaxed), 1);
        assert_eq!(m.take(t0 + 5_000_000), Ok(0));
    }

    /// Takes on several threads while syncs run back to back: none is lost between a sync's
    /// reading of `pending` and its new TAT, so no more than the burst is ever admitted.
    #[test]
    fn takes_racing_syncs_never_admit_more_than_the_burst() {
        let burst = 300_000;
        let m = mirror(burst, Duration::from_secs(3600));
        let t0 = 1_000_000_000_000;
        let admitted = AtomicU64::new(0);
        let takers_done = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    let mut n = 0;
                    while m.take(t0).is_ok() {
                        n += 1;
                    }
                    admitted.fetch_add(n, Ordering::AcqRel);
                    takers_done.fetch_add(1, Ordering::AcqRel);
                });
            }
            s.spawn(|| {
                // Redis, as ADD keeps it: what every sync sent, on top of t0.
                let mut fleet = t0;
                loop {
                    let last = takers_done.load(Ordering::Acquire) == 3;
                    let sent = m.to_send();
                    fleet += sent * m.interval;
                    m.synced(fleet);
                    if last {
                        break;
                    }
                }
            });
        });
        let admitted = admitted.into_inner();
        assert!(
            admitted <= u64::from(burst),
            "{admitted} through a burst of {burst}"
        );
        // The last sync made the view the fleet's again: exactly the rest of the burst passes.
        let mut rest = 0;
        while m.take(t0).is_ok() {
            rest += 1;
        }
        eprintln!("{admitted} admitted racing the syncs, {rest} after");
        assert_eq!(admitted + rest, u64::from(burst));
    }

    /// A take given back (its request's other bucket refused it) after a sync already sent
    /// it: the fleet counted a request that did not pass, so this instance owes it one, paid
    /// by its next take, which is then not sent.
    #[test]
    fn a_take_given_back_after_its_sync_is_paid_back_by_the_next() {
        let m = mirror(4, Duration::from_secs(4)); // one a second, burst 4
        let t0 = 1_000_000_000;
        assert_eq!(m.take(t0), Ok(3));
        assert_eq!(m.to_send(), 1);
        m.give_back();
        // Redis now holds one request: its TAT is t0 + 1 s.
        m.synced(t0 + 1_000_000);
        assert_eq!(m.take(t0), Ok(3), "the view holds no refused request");
        assert_eq!(m.to_send(), 0, "the fleet has this one already");
        m.synced(t0 + 1_000_000);
        assert_eq!(m.take(t0), Ok(2));
        assert_eq!(m.to_send(), 1);
    }

    /// Past `MIRRORS_KEPT`, only views that a new one would equal are forgotten: full
    /// buckets with nothing to send that no sync holds.
    #[test]
    fn only_full_buckets_are_forgotten() {
        let id = |s: &str| MirrorId {
            scope: true,
            id: Id::new(s).unwrap(),
            tag: None,
            count: 4,
            per: Duration::from_secs(4),
        };
        let t0 = 1_000_000_000;
        let mirrors = DashMap::new();
        let mut held = None;
        for (name, tat, pending, on_a_list) in [
            ("full", t0, 0, false),
            ("filling", t0 + 1, 0, false),
            ("unsent", t0, 1, false),
            ("listed", t0, 0, true),
        ] {
            let m = Arc::new(mirror(4, Duration::from_secs(4)));
            m.tat.store(tat, Ordering::Relaxed);
            m.pending.store(pending, Ordering::Relaxed);
            if on_a_list {
                held = Some(m.clone());
            }
            mirrors.insert(id(name), m);
        }
        forget_full(&mirrors, t0);
        assert!(!mirrors.contains_key(&id("full")));
        for kept in ["filling", "unsent", "listed"] {
            assert!(mirrors.contains_key(&id(kept)), "{kept} was forgotten");
        }
        drop(held);
    }

    #[test]
    fn bucket_keys_share_the_consumers_hash_tag_and_name_the_rate() {
        let id = |s| Id::new(s).unwrap();
        let rate = Rate {
            count: NonZeroU32::new(10).unwrap(),
            per: Duration::from_secs(60),
        };
        let shared = Shared {
            key: Some((id("k1"), rate)),
            consumer: Some((id("acme"), rate)),
            tag: Some(id("acme")),
            ..Shared::default()
        };
        let key = format!(
            "{}rl:{{{}}}:{}:{}:{}/{}",
            "keygate:", "acme", "key", "k1", 10, 60_000
        );
        assert_eq!(hash_tag(&key), "acme");
        assert_eq!(interval_us(rate), 6_000_000);
        let alone = Shared {
            key: Some((id("k1"), rate)),
            ..Shared::default()
        };
        assert!(!alone.is_empty());
        assert_eq!(shared.buckets().count(), 2);
        assert_eq!(hash_tag("no-tag"), "no-tag");
    }
}
