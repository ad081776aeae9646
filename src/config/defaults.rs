//! The default of every setting the config may leave out, in one place: `config/keygate.toml`
//! documents each, and `tests/config_defaults.rs` checks that they match.

use std::time::Duration;

/// Where keygate listens when `[server] listen` is absent.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_KEY_HEADER: &str = "X-API-Key";
pub const DEFAULT_KEY_QUERY: &str = "api_key";
/// Prefix of the secrets the admin API generates, so a leaked one is recognisable in a scan.
pub const DEFAULT_KEY_PREFIX: &str = crate::model::DEFAULT_KEY_PREFIX;
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
/// `[server] shutdown_timeout`: time for requests in flight after SIGTERM or SIGINT.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long keygate waits for an upstream's response headers before answering 504.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

/// `[cluster] timeout`: the longest a request waits on Redis. A local round trip takes well
/// under a millisecond; past 50 ms Redis is treated as down and `on_redis_error` decides, so a
/// slow Redis adds at most this to a request.
pub const DEFAULT_CLUSTER_TIMEOUT: Duration = Duration::from_millis(50);
/// `[cluster] sync_interval`: how stale a `local-sync` instance's view of the others may be.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(10);

/// `[usage] flush_interval`: how often counts reach the file and the fleet (what a crash loses).
pub const DEFAULT_USAGE_FLUSH_INTERVAL: Duration =
    crate::model::UsageConfig::DEFAULT_FLUSH_INTERVAL;
/// `[usage] retention`: days of daily counts kept.
pub const DEFAULT_USAGE_RETENTION_DAYS: u32 = crate::model::UsageConfig::DEFAULT_RETENTION_DAYS;

/// `[admin] session_idle`: a console session unused this long ends.
pub const DEFAULT_SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
/// `[admin] session_max`: a console session ends this long after sign-in.
pub const DEFAULT_SESSION_MAX: Duration = Duration::from_secs(12 * 3600);
/// `[admin] audit_log`: the file name beside the keys file.
pub const DEFAULT_AUDIT_LOG: &str = "audit.jsonl";

/// `[[webhooks]] timeout`: one delivery attempt, connect to response head.
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// `[[webhooks]] retry_initial`: the first retry's wait; doubled each time, up to an hour.
pub const DEFAULT_WEBHOOK_RETRY_INITIAL: Duration = Duration::from_secs(30);
/// `[[webhooks]] retry_for`: a receiver down for a day still gets what happened meanwhile.
pub const DEFAULT_WEBHOOK_RETRY_FOR: Duration = Duration::from_secs(24 * 3600);
/// `[[webhooks]] max_pending`: bounds memory and the spool file while a receiver is down.
pub const DEFAULT_WEBHOOK_MAX_PENDING: u32 = 10_000;
