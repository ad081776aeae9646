//! Several keygate processes sharing one Redis (`[cluster]`): one rate limit across the fleet,
//! a revocation through one instance refused by the others within a second, Redis killed and
//! brought back mid-test. Every test starts its own `redis-server` on a free port.
//!
//! Without `redis-server` on the machine these tests say so and pass, so that `cargo test`
//! works anywhere; `.ci/run` installs it, and with `CI` set a missing server fails them.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::live::*;
use crate::harness::*;

const FLEET_KEY: &str = "kg_fleet_metered_ZmxlZXRNZXRlcmVkU2VjcmV0MDEyMzQ1";
const OTHER_KEY: &str = "kg_fleet_other_b3RoZXJGbGVldFNlY3JldDAxMjM0NTY3";
const ADMIN_KEY: &str = "kg_fleet_admin_YWRtaW5GbGVldFNlY3JldDAxMjM0NTY3";
const THIRD_KEY: &str = "kg_fleet_third_dGhpcmRGbGVldFNlY3JldDAxMjM0NTY3";

/// A `redis-server` of the test's own, on a free loopback port, without persistence.
pub(crate) struct Redis {
    port: u16,
    child: Option<Child>,
    /// Extra `redis-server` arguments (cluster mode).
    extra: Vec<String>,
}

/// False (after saying why) when redis-server is not installed and `CI` is unset.
fn redis_installed() -> bool {
    let installed = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        assert!(
            std::env::var_os("CI").is_none(),
            "redis-server is not installed (.ci/run installs it)"
        );
        eprintln!("SKIPPED: redis-server is not installed (apt-get install redis-server)");
    }
    installed
}

/// A free loopback port whose +10000 (a cluster node's bus port) is free too.
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair");
}

impl Redis {
    /// `None` when redis-server is not installed (see [`redis_installed`]).
    pub(crate) fn start() -> Option<Redis> {
        if !redis_installed() {
            return None;
        }
        let port = free_port_pair();
        let mut redis = Redis {
            port,
            child: None,
            extra: Vec::new(),
        };
        redis.run();
        Some(redis)
    }

    /// Starts the server (again) on the same port and waits until it answers PING.
    fn run(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let started = Instant::now();
        while !self.answers() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn answers(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// Kills the server (SIGKILL) and waits until its port refuses.
    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        assert!(!self.answers(), "redis still answers after kill");
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// `redis-cli` against this server; its output.
    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// How many times `command` ran since the last `CONFIG RESETSTAT` (commands scripts run
    /// included), from `INFO commandstats`.
    fn calls(&self, command: &str) -> u64 {
        let info = self.cli(&["info", "commandstats"]);
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix)?.split(',').next()?.parse().ok())
            .unwrap_or(0)
    }

    /// Stops the server with SIGSTOP until the guard is dropped: its port still accepts, but
    /// nothing answers, as with a Redis stuck in a long command or a dead host.
    fn freeze(&self) -> Frozen {
        let pid = self.child.as_ref().expect("redis-server running").id();
        signal("-STOP", pid);
        let frozen = Frozen(pid);
        assert!(!self.answers(), "redis still answers after SIGSTOP");
        frozen
    }
}

/// A stopped `redis-server`, sent SIGCONT when dropped, so that a failing test never leaves it
/// stopped (its [`Redis`] kills it in any case).
struct Frozen(u32);

impl Drop for Frozen {
    fn drop(&mut self) {
        signal("-CONT", self.0);
    }
}

fn signal(which: &str, pid: u32) {
    let status = Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {which} {pid}: {status}");
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A Redis Cluster of three masters (no replicas), made with `redis-cli --cluster create`.
struct RedisCluster {
    nodes: Vec<Redis>,
}

impl RedisCluster {
    fn start(dir: &TempDir) -> Option<RedisCluster> {
        if !redis_installed() {
            return None;
        }
        let nodes: Vec<Redis> = (0..3)
            .map(|i| {
                let port = free_port_pair();
                let mut node = Redis {
                    port,
                    child: None,
                    extra: vec![
                        "--cluster-enabled".into(),
                        "yes".into(),
                        "--cluster-config-file".into(),
                        dir.join(&format!("nodes-{i}.conf")).display().to_string(),
                        "--dir".into(),
                        dir.path().display().to_string(),
                    ],
                };
                node.run();
                node
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli --cluster create");
        assert!(created.success(), "redis-cli --cluster create failed");
        let started = Instant::now();
        for n in &nodes {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &n.port.to_string(), "cluster", "info"])
                    .output()
                    .expect("redis-cli cluster info");
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "the cluster never became ok"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Some(RedisCluster { nodes })
    }

    /// `redis_cluster = [...]` for `[cluster]`.
    fn config_line(&self) -> String {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("\"redis://127.0.0.1:{}\"", n.port))
            .collect();
        format!("redis_cluster = [{}]", urls.join(", "))
    }
}

/// A config for one instance of the fleet: its own port, the shared Redis, `cluster` lines
/// (mode, on_redis_error...), one target on `up`, then `rest`.
pub(crate) fn instance_config(up: SocketAddr, redis: &Redis, cluster: &str, rest: &str) -> String {
    format!(
        "{}[cluster]\nredis = \"{}\"\n{cluster}\n\n{}{rest}",
        server_toml("127.0.0.1:0", ""),
        redis.url(),
        target_toml("main", &format!("http://{up}"), ""),
    )
}

/// Starts `n` keygate processes (the real binary), each with its own copy of `config`, and
/// waits until each has connected to Redis.
/// `n` instances on one echo upstream sharing `redis`, with the `[cluster]` lines `cluster`
/// and `rest` after the target (keys, other tables), their files in a temp dir `name`.
async fn start_fleet(
    name: &str,
    redis: &Redis,
    n: usize,
    cluster: &str,
    rest: &str,
) -> (Upstream, TempDir, Vec<Process>) {
    let up = start_upstream("up").await;
    let dir = TempDir::new(name);
    let config = instance_config(up.addr, redis, cluster, rest);
    let gates = fleet(&dir, n, &config).await;
    (up, dir, gates)
}

/// Three instances sharing `redis` with the `[cluster]` lines `cluster`, and one key,
/// `metered` ([`FLEET_KEY`]), at `10/minute`.
async fn start_three_sharing_10_a_minute(
    name: &str,
    redis: &Redis,
    cluster: &str,
) -> (Upstream, TempDir, Vec<Process>) {
    let metered = key_toml("metered", FLEET_KEY, "rate_limit = \"10/minute\"");
    start_fleet(name, redis, 3, cluster, &metered).await
}

async fn fleet(dir: &TempDir, n: usize, config: &str) -> Vec<Process> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let path = dir.join(&format!("instance-{i}.toml"));
        std::fs::write(&path, config).unwrap();
        let mut p = Process::start_proxy(&path).await;
        // Requests before the first connection would fall back to the instance's own limits.
        p.wait_log("the connection to Redis", |l| {
            l.contains("connected to Redis")
        })
        .await;
        out.push(p);
    }
    out
}

/// Sends `total` requests with `secret`, round robin over `gates`, `pause` apart, and counts
/// the answers by (status, code).
async fn spread(
    gates: &[SocketAddr],
    secret: &str,
    total: usize,
    pause: Duration,
) -> std::collections::BTreeMap<(u16, String), usize> {
    let mut seen = std::collections::BTreeMap::new();
    for i in 0..total {
        let resp = call(gates[i % gates.len()], secret).await;
        *seen.entry(outcome(&resp)).or_insert(0) += 1;
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    seen
}

fn count(
    seen: &std::collections::BTreeMap<(u16, String), usize>,
    status: u16,
    code: &str,
) -> usize {
    seen.get(&(status, code.to_owned())).copied().unwrap_or(0)
}

/// `strict`: a key allowed 10 a minute gets 10 across three instances, not 10 each.
#[tokio::test]
async fn strict_mode_shares_one_limit_across_three_instances() {
    let Some(redis) = Redis::start() else { return };
    let (_up, _dir, gates) =
        start_three_sharing_10_a_minute("cluster-strict", &redis, "mode = \"strict\"").await;
    let addrs: Vec<SocketAddr> = gates.iter().map(|g| g.proxy).collect();
    let seen = spread(&addrs, FLEET_KEY, 30, Duration::ZERO).await;
    assert_eq!(count(&seen, 200, ""), 10, "{seen:?}");
    assert_eq!(count(&seen, 429, "rate_limited"), 20, "{seen:?}");
    // The refusal carries the fleet's state.
    let resp = call(addrs[1], FLEET_KEY).await;
    assert_problem(&resp, 429, "rate_limited");
    assert_eq!(resp.header("ratelimit-limit"), Some("10"));
    assert_eq!(resp.header("ratelimit-remaining"), Some("0"));
    let retry: u64 = resp.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=6).contains(&retry), "retry-after {retry}");
    drop(gates);
}

/// `strict` under concurrency: 30 requests in flight at once over three instances, at a key
/// allowed 10 a minute, get exactly 10 through (each decision is one script, atomic in Redis).
#[tokio::test]
async fn strict_mode_is_exact_under_concurrent_requests() {
    let Some(redis) = Redis::start() else { return };
    // Generous: on a loaded machine a call timing out would be decided locally instead.
    let (_up, _dir, gates) = start_three_sharing_10_a_minute(
        "cluster-strict-concurrent",
        &redis,
        "mode = \"strict\"\ntimeout = \"1s\"",
    )
    .await;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..30 {
        let addr = gates[i % gates.len()].proxy;
        calls.spawn(async move { outcome(&call(addr, FLEET_KEY).await) });
    }
    let mut seen = std::collections::BTreeMap::new();
    while let Some(got) = within("30 concurrent requests", calls.join_next()).await {
        *seen.entry(got.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(count(&seen, 200, ""), 10, "{seen:?}");
    assert_eq!(count(&seen, 429, "rate_limited"), 20, "{seen:?}");
}

/// `local-sync`: each instance decides alone and reconciles every 10 ms; spaced requests see
/// the others' counts, so the fleet stays within its documented overshoot of the limit.
#[tokio::test]
async fn local_sync_mode_keeps_the_fleet_near_one_limit() {
    let Some(redis) = Redis::start() else { return };
    let (_up, _dir, gates) = start_three_sharing_10_a_minute(
        "cluster-local-sync",
        &redis,
        "mode = \"local-sync\"\nsync_interval = \"10ms\"",
    )
    .await;
    let addrs: Vec<SocketAddr> = gates.iter().map(|g| g.proxy).collect();
    // Each instance's first request makes its view of the bucket; let them sync once.
    let first = spread(&addrs, FLEET_KEY, 3, Duration::from_millis(50)).await;
    assert_eq!(count(&first, 200, ""), 3, "{first:?}");
    let rest = spread(&addrs, FLEET_KEY, 27, Duration::from_millis(30)).await;
    let allowed = 3 + count(&rest, 200, "");
    assert!(
        (10..=12).contains(&allowed),
        "the fleet let {allowed} through a 10/minute limit: {rest:?}"
    );
    assert_eq!(
        count(&rest, 200, "") + count(&rest, 429, "rate_limited"),
        27
    );
}

/// Redis killed mid-test: with the default `on_redis_error = "local"` requests keep being
/// answered at once, each instance applying its own limit; once Redis is back, limits are
/// shared again.
#[tokio::test]
async fn redis_down_falls_back_to_local_limits_and_recovers() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let (_up, _dir, mut gates) = start_fleet(
        "cluster-outage",
        &redis,
        2,
        // Short enough that twelve requests to a dead Redis end well within the 5 s below,
        // long enough that a Redis slowed by the rest of the suite still answers in time.
        "mode = \"strict\"\ntimeout = \"250ms\"",
        &format!(
            "[metrics]\nlisten = \"127.0.0.1:0\"\n\n{}{}",
            key_toml("metered", FLEET_KEY, "rate_limit = \"4/minute\""),
            key_toml("other", OTHER_KEY, "rate_limit = \"4/minute\"")
        ),
    )
    .await;
    let addrs: Vec<SocketAddr> = gates.iter().map(|g| g.proxy).collect();
    let mut scrape_at = Vec::new();
    for g in gates.iter_mut() {
        scrape_at.push(g.wait_addr("metrics listening").await);
    }
    assert_eq!(redis_metrics(scrape_at[0]).await, (1, 0));

    redis.kill();
    let started = Instant::now();
    let seen = spread(&addrs, FLEET_KEY, 12, Duration::ZERO).await;
    // Each of the two instances allows its own 4.
    assert_eq!(count(&seen, 200, ""), 8, "{seen:?}");
    assert_eq!(count(&seen, 429, "rate_limited"), 4, "{seen:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "requests waited on the dead Redis: {:?}",
        started.elapsed()
    );
    // The outage is logged once per instance, however many requests met it, and counted.
    for (g, at) in gates.iter().zip(&scrape_at) {
        let said = g.lines(|l| l.contains("Redis unavailable"));
        assert_eq!(said.len(), 1, "{said:#?}");
        let (up, errors) = redis_metrics(*at).await;
        assert_eq!(up, 0);
        assert!(errors >= 1, "keygate_redis_errors_total {errors}");
    }

    redis.run();
    // Back (Redis is tried again at most every 500 ms during an outage): the exhausted key
    // passes again on each instance once Redis, which lost its buckets, decides it.
    for addr in &addrs {
        until_status_for(*addr, FLEET_KEY, 200, "", Duration::from_secs(5)).await;
    }
    // And the other key's limit is the fleet's again.
    let seen = spread(&addrs, OTHER_KEY, 12, Duration::from_millis(20)).await;
    assert_eq!(count(&seen, 200, ""), 4, "{seen:?}");
    for (g, at) in gates.iter().zip(&scrape_at) {
        assert_eq!(redis_metrics(*at).await.0, 1);
        assert_eq!(g.lines(|l| l.contains("Redis answers again")).len(), 1);
    }
}

/// `keygate_redis_up` and `keygate_redis_errors_total` from `GET /metrics` at `addr`.
async fn redis_metrics(addr: SocketAddr) -> (u64, u64) {
    let text = get(addr, "/metrics", &[]).await.text();
    let value = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    };
    (
        value("keygate_redis_up"),
        value("keygate_redis_errors_total"),
    )
}

/// `on_redis_error = "deny"` refuses rate-limited requests while Redis is down (503
/// `rate_limit_unavailable`), `"allow"` lets them all through; keys without a limit never
/// notice. Once Redis is back both instances share limits again.
#[tokio::test]
async fn on_redis_error_deny_and_allow() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let up = start_upstream("up").await;
    let dir = TempDir::new("cluster-deny-allow");
    let keys = format!(
        "{}{}{}",
        key_toml("metered", FLEET_KEY, "rate_limit = \"2/minute\""),
        key_toml("free", OTHER_KEY, ""),
        key_toml("later", THIRD_KEY, "rate_limit = \"3/minute\"")
    );
    let deny = fleet(
        &dir,
        1,
        &instance_config(up.addr, &redis, "on_redis_error = \"deny\"", &keys),
    )
    .await;
    let dir2 = TempDir::new("cluster-allow");
    let allow = fleet(
        &dir2,
        1,
        &instance_config(up.addr, &redis, "on_redis_error = \"allow\"", &keys),
    )
    .await;
    redis.kill();
    let seen = spread(&[deny[0].proxy], FLEET_KEY, 3, Duration::ZERO).await;
    assert_eq!(count(&seen, 503, "rate_limit_unavailable"), 3, "{seen:?}");
    let seen = spread(&[deny[0].proxy], OTHER_KEY, 3, Duration::ZERO).await;
    assert_eq!(count(&seen, 200, ""), 3, "{seen:?}");
    let seen = spread(&[allow[0].proxy], FLEET_KEY, 5, Duration::ZERO).await;
    assert_eq!(count(&seen, 200, ""), 5, "{seen:?}");

    redis.run();
    // Redis lost its buckets: the deny instance's next try takes the first of the 2 ...
    until_status_for(deny[0].proxy, FLEET_KEY, 200, "", Duration::from_secs(5)).await;
    // ... and the allow instance, which let everything through, is held to the fleet's again.
    until_status_for(
        allow[0].proxy,
        FLEET_KEY,
        429,
        "rate_limited",
        Duration::from_secs(5),
    )
    .await;
    let seen = spread(
        &[deny[0].proxy, allow[0].proxy],
        THIRD_KEY,
        8,
        Duration::ZERO,
    )
    .await;
    assert_eq!(count(&seen, 200, ""), 3, "{seen:?}");
    assert_eq!(count(&seen, 429, "rate_limited"), 5, "{seen:?}");
}

/// `local-sync` with `on_redis_error = "deny"`: while Redis is down rate-limited requests get
/// 503 `rate_limit_unavailable`, on instances that saw the outage begin and on one started
/// during it; once Redis is back on the same port they are decided by the fleet again,
/// though no request used a bucket meanwhile (the sync asks Redis itself).
#[tokio::test]
async fn local_sync_deny_recovers_after_an_outage_and_from_one_at_start() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let up = start_upstream("up").await;
    let dir = TempDir::new("cluster-local-sync-deny");
    let config = instance_config(
        up.addr,
        &redis,
        "mode = \"local-sync\"\nsync_interval = \"10ms\"\ntimeout = \"50ms\"\non_redis_error = \"deny\"",
        &format!(
            "{}{}",
            key_toml("metered", FLEET_KEY, "rate_limit = \"100/minute\""),
            key_toml("other", OTHER_KEY, "rate_limit = \"4/minute\"")
        ),
    );
    let mut gates = fleet(&dir, 2, &config).await;

    redis.kill();
    // An instance learns of the outage at its next sync, after the request that used a bucket.
    for g in &gates {
        until_status_for(
            g.proxy,
            FLEET_KEY,
            503,
            "rate_limit_unavailable",
            Duration::from_secs(2),
        )
        .await;
    }
    // One that starts while Redis is down refuses too, having never reached it.
    let late = dir.join("instance-late.toml");
    std::fs::write(&late, &config).unwrap();
    let mut late = Process::start_proxy(&late).await;
    late.wait_log("the outage at start", |l| l.contains("Redis unavailable"))
        .await;
    let resp = call(late.proxy, FLEET_KEY).await;
    assert_problem(&resp, 503, "rate_limit_unavailable");
    gates.push(late);
    let addrs: Vec<SocketAddr> = gates.iter().map(|g| g.proxy).collect();

    redis.run();
    for addr in &addrs {
        until_status_for(*addr, FLEET_KEY, 200, "", Duration::from_secs(5)).await;
    }
    // Shared again: on its own each instance would let 4 through, 12 in all. Each decides on
    // its view as of its own last use, so the fleet may overshoot by what the others admitted
    // since (see `local_sync_mode_keeps_the_fleet_near_one_limit`).
    let seen = spread(&addrs, OTHER_KEY, 18, Duration::from_millis(30)).await;
    let allowed = count(&seen, 200, "");
    assert!(
        (4..=6).contains(&allowed),
        "{allowed} through 4/minute: {seen:?}"
    );
    assert_eq!(allowed + count(&seen, 429, "rate_limited"), 18, "{seen:?}");
    for g in &gates {
        assert_eq!(g.lines(|l| l.contains("Redis answers again")).len(), 1);
    }
}

/// A frozen Redis (SIGSTOP: connections stay open, nothing answers) holds no request longer
/// than `timeout`: every rate-limited request is answered well within a second, as
/// `on_redis_error` says, in `strict` (local, deny) and `local-sync` (allow); once it is
/// continued, every instance uses it again and limits are shared again.
#[tokio::test]
async fn a_frozen_redis_holds_no_request_and_is_used_again_once_it_answers() {
    let Some(redis) = Redis::start() else { return };
    let up = start_upstream("up").await;
    let keys = format!(
        "{}{}{}",
        key_toml("metered", FLEET_KEY, "rate_limit = \"4/minute\""),
        key_toml("roomy", OTHER_KEY, "rate_limit = \"1000/minute\""),
        key_toml("later", THIRD_KEY, "rate_limit = \"3/minute\"")
    );
    let (mut dirs, mut gates) = (Vec::new(), Vec::new());
    for (name, cluster) in [
        ("strict-local", "mode = \"strict\""),
        (
            "strict-deny",
            "mode = \"strict\"\non_redis_error = \"deny\"",
        ),
        (
            "local-sync-allow",
            "mode = \"local-sync\"\nsync_interval = \"10ms\"\non_redis_error = \"allow\"",
        ),
    ] {
        let config = instance_config(
            up.addr,
            &redis,
            &format!("timeout = \"50ms\"\n{cluster}"),
            &keys,
        );
        let dir = TempDir::new(&format!("cluster-frozen-{name}"));
        gates.extend(fleet(&dir, 1, &config).await);
        dirs.push(dir);
    }

    let frozen = redis.freeze();
    // local-sync learns of the outage at the sync after a bucket is used; until then its
    // view decides, as it would anyway.
    let resp = within_for(
        Duration::from_secs(1),
        "local-sync on a frozen Redis",
        call(gates[2].proxy, FLEET_KEY),
    )
    .await;
    assert_eq!(outcome(&resp), (200, String::new()));
    gates[2]
        .wait_log("the outage", |l| l.contains("Redis unavailable"))
        .await;
    let expect: [&[((u16, &str), usize)]; 3] = [
        &[((200, ""), 4), ((429, "rate_limited"), 6)],
        &[((503, "rate_limit_unavailable"), 10)],
        &[((200, ""), 10)],
    ];
    for (g, want) in gates.iter().zip(expect) {
        let mut seen = std::collections::BTreeMap::new();
        for _ in 0..10 {
            let asked = Instant::now();
            let resp = call(g.proxy, FLEET_KEY).await;
            let took = asked.elapsed();
            assert!(
                took < Duration::from_secs(1),
                "{:?} waited {took:?}",
                outcome(&resp)
            );
            *seen.entry(outcome(&resp)).or_insert(0) += 1;
        }
        for ((status, code), n) in want {
            assert_eq!(count(&seen, *status, code), *n, "{seen:?}");
        }
    }

    drop(frozen);
    // Each instance finds Redis again (a request in strict, the sync in local-sync, tried at
    // most every 500 ms) ...
    for g in &gates {
        eventually_for(Duration::from_secs(5), "Redis answers again", async || {
            let _ = call(g.proxy, OTHER_KEY).await;
            (!g.lines(|l| l.contains("Redis answers again")).is_empty()).then_some(())
        })
        .await;
    }
    // ... and shares limits through it: one 3/minute across the two strict instances.
    let strict = [gates[0].proxy, gates[1].proxy];
    let seen = spread(&strict, THIRD_KEY, 8, Duration::ZERO).await;
    assert_eq!(count(&seen, 200, ""), 3, "{seen:?}");
    assert_eq!(count(&seen, 429, "rate_limited"), 5, "{seen:?}");
}

/// A key deleted through instance A's admin API is refused by instance B within a second,
/// though B's file watcher cannot see the change (B reaches the shared keys file through a
/// symlink in a directory of its own): the change reaches B over Redis.
#[tokio::test]
async fn a_revocation_on_one_instance_is_refused_by_another_within_a_second() {
    let Some(redis) = Redis::start() else { return };
    let up = start_upstream("up").await;
    let dir = TempDir::new("cluster-revoke");
    for sub in ["shared", "a", "b"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let keys = format!(
        "{}{}",
        key_toml("doomed", FLEET_KEY, ""),
        key_toml("kept", OTHER_KEY, "")
    );
    std::fs::write(dir.join("shared/keys.toml"), &keys).unwrap();
    std::os::unix::fs::symlink(dir.join("shared/keys.toml"), dir.join("b/keys.toml")).unwrap();
    let cluster = "mode = \"strict\"";
    let a_config = format!(
        "keys_file = \"../shared/keys.toml\"\n{}\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[[admin_keys]]\nid = \"ops\"\nhash = \"{}\"\nrole = \"admin\"\n\n",
        instance_config(up.addr, &redis, cluster, ""),
        hash_of(ADMIN_KEY)
    );
    let b_config = format!(
        "keys_file = \"keys.toml\"\n{}",
        instance_config(up.addr, &redis, cluster, "")
    );
    let a_path = dir.join("a/keygate.toml");
    let b_path = dir.join("b/keygate.toml");
    std::fs::write(&a_path, &a_config).unwrap();
    std::fs::write(&b_path, &b_config).unwrap();
    let mut a = Process::start_proxy(&a_path).await;
    let b = Process::start_proxy(&b_path).await;
    let admin = a.wait_addr("admin API listening").await;
    until_status(b.proxy, FLEET_KEY, 200, "").await;
    // Let B's subscription settle (it logs nothing): a change before it would only be seen by
    // its periodic check.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let deleted = crate::harness::admin::Api::new(admin, Some(ADMIN_KEY))
        .delete("/v1/keys/doomed")
        .await;
    assert!(deleted.status.is_success(), "{}", deleted.text());
    let revoked_at = Instant::now();
    until_status_for(
        b.proxy,
        FLEET_KEY,
        403,
        "key_invalid",
        Duration::from_secs(1),
    )
    .await;
    eprintln!("refused by B after {:?}", revoked_at.elapsed());
    let resp = call(b.proxy, OTHER_KEY).await;
    assert_eq!(outcome(&resp), (200, String::new()));
    a.stop().await;
}

/// Polls until `secret` gets `status` and `code` on `addr`, failing after `limit`.
async fn until_status_for(
    addr: SocketAddr,
    secret: &str,
    status: u16,
    code: &str,
    limit: Duration,
) {
    let want = (status, code.to_owned());
    let what = format!("{secret:.12}… to get {want:?} from {addr}");
    eventually_for(limit, &what, async || {
        (outcome(&call(addr, secret).await) == want).then_some(())
    })
    .await;
}

/// `last_used_at` is the fleet's: a key used only through instance B shows its use in
/// instance A's admin API (B merges its times into Redis in batches, every few seconds, never
/// per request).
#[tokio::test]
async fn last_used_at_is_the_latest_use_on_any_instance() {
    let Some(redis) = Redis::start() else { return };
    let up = start_upstream("up").await;
    let dir = TempDir::new("cluster-last-used");
    let keys = key_toml("roaming", FLEET_KEY, "");
    let admin = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[admin_keys]]\nid = \"ops\"\nhash = \"{}\"\nrole = \"read\"\n\n",
        hash_of(ADMIN_KEY)
    );
    let a_path = dir.join("a.toml");
    std::fs::write(
        &a_path,
        instance_config(up.addr, &redis, "", &format!("{admin}{keys}")),
    )
    .unwrap();
    let mut a = Process::start_proxy(&a_path).await;
    let api =
        crate::harness::admin::Api::new(a.wait_addr("admin API listening").await, Some(ADMIN_KEY));
    let b = fleet(&dir, 1, &instance_config(up.addr, &redis, "", &keys)).await;
    assert!(api.get("/v1/keys/roaming").await.json()["last_used_at"].is_null());

    let resp = call(b[0].proxy, FLEET_KEY).await;
    assert_eq!(outcome(&resp), (200, String::new()));
    let started = Instant::now();
    let seen = loop {
        let key = api.get("/v1/keys/roaming").await.json();
        if let Some(t) = key["last_used_at"].as_str() {
            break t.to_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(12),
            "A never learned of B's use: {key}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let listed = api.get("/v1/keys").await.json();
    assert_eq!(
        listed["items"][0]["last_used_at"].as_str(),
        Some(seen.as_str())
    );
    a.stop().await;
}

/// The fleet's last-used times are merged in Redis keeping the max: a time an instance sends
/// later, but older than what another wrote (its clock ahead), does not lower it. And they
/// are sent in batches: 40 requests cost a script call or two, not 40 writes.
#[tokio::test]
async fn fleet_last_used_keeps_the_latest_and_is_written_in_batches() {
    let Some(redis) = Redis::start() else { return };
    let up = start_upstream("up").await;
    let dir = TempDir::new("cluster-last-used-max");
    // 2096: newer than anything this instance's clock says.
    let ahead = "4000000000";
    assert_eq!(
        redis.cli(&["hset", "keygate:last_used", "ahead", ahead]),
        "1"
    );
    let keys = format!(
        "{}{}",
        key_toml("ahead", FLEET_KEY, ""),
        key_toml("fresh", OTHER_KEY, "")
    );
    let gate = fleet(&dir, 1, &instance_config(up.addr, &redis, "", &keys)).await;
    assert_eq!(redis.cli(&["config", "resetstat"]), "OK");
    for i in 0..40 {
        let secret = if i % 2 == 0 { FLEET_KEY } else { OTHER_KEY };
        assert_eq!(
            outcome(&call(gate[0].proxy, secret).await),
            (200, String::new())
        );
    }
    // The next flush (every 5 s) sends both keys' times.
    let fresh: u64 = eventually_for(
        Duration::from_secs(12),
        "the fresh key's time in Redis",
        async || {
            redis
                .cli(&["hget", "keygate:last_used", "fresh"])
                .parse()
                .ok()
        },
    )
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(fresh.abs_diff(now) < 60, "fresh {fresh}, now {now}");
    assert_eq!(redis.cli(&["hget", "keygate:last_used", "ahead"]), ahead);
    let scripts = redis.calls("eval") + redis.calls("evalsha");
    let writes = redis.calls("hset");
    // One flush sends one script (EVALSHA, then EVAL on NOSCRIPT); two if one fell among the
    // requests. Only the fresh key is written: the other's time stays the newer one.
    eprintln!("{scripts} script calls, {writes} HSETs");
    assert!(
        (1..=4).contains(&scripts),
        "{scripts} script calls for 40 requests"
    );
    assert!((1..=2).contains(&writes), "{writes} HSETs for 40 requests");
}

/// On a Redis Cluster (`redis_cluster = [...]`): one limit across two instances, for keys
/// whose buckets live on different nodes, and a consumer's limit judged in the same script as
/// its key's (their buckets share a hash tag, hence a slot).
#[tokio::test]
async fn a_redis_cluster_shares_limits_too() {
    let dir = TempDir::new("cluster-redis-cluster");
    let Some(rc) = RedisCluster::start(&dir) else {
        return;
    };
    let up = start_upstream("up").await;
    let keys = format!(
        "[[consumers]]\nid = \"team\"\nrate_limit = \"6/minute\"\n\n{}{}",
        key_toml("solo", FLEET_KEY, "rate_limit = \"5/minute\""),
        key_toml(
            "member",
            OTHER_KEY,
            "consumer = \"team\"\nrate_limit = \"100/minute\""
        ),
    );
    let config = format!(
        "{}[cluster]\n{}\nmode = \"strict\"\n\n{}{keys}",
        server_toml("127.0.0.1:0", ""),
        rc.config_line(),
        target_toml("main", &format!("http://{}", up.addr), ""),
    );
    let gates = fleet(&dir, 2, &config).await;
    let addrs: Vec<SocketAddr> = gates.iter().map(|g| g.proxy).collect();
    let seen = spread(&addrs, FLEET_KEY, 12, Duration::ZERO).await;
    assert_eq!(count(&seen, 200, ""), 5, "{seen:?}");
    // The member's own 100/minute is not what binds: its consumer's 6/minute is.
    let seen = spread(&addrs, OTHER_KEY, 12, Duration::ZERO).await;
    assert_eq!(count(&seen, 200, ""), 6, "{seen:?}");
    assert_eq!(count(&seen, 429, "rate_limited"), 6, "{seen:?}");
}

/// Through Redis Sentinel (`redis_sentinel`, `sentinel_master`): one limit across two
/// instances on the master Sentinel names; when that master dies and Sentinel promotes its
/// replica, the instances follow it and share limits there.
#[tokio::test]
async fn through_sentinel_limits_follow_a_failover() {
    let Some(mut master) = Redis::start() else {
        return;
    };
    let replica_port = free_port_pair();
    let mut replica = Redis {
        port: replica_port,
        child: None,
        extra: vec![
            "--replicaof".into(),
            "127.0.0.1".into(),
            master.port.to_string(),
        ],
    };
    replica.run();
    let dir = TempDir::new("cluster-sentinel");
    let sentinel_port = free_port_pair();
    let conf = dir.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {sentinel_port}\nbind 127.0.0.1\ndir {}\nsentinel monitor kgmaster 127.0.0.1 {} 1\nsentinel down-after-milliseconds kgmaster 500\nsentinel failover-timeout kgmaster 3000\n",
            dir.path().display(),
            master.port
        ),
    )
    .unwrap();
    // Held in a `Redis` so that it is killed however the test ends.
    let _sentinel = Redis {
        port: sentinel_port,
        child: Some(
            Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server --sentinel"),
        ),
        extra: Vec::new(),
    };
    let master_named = |port: u16| {
        let out = Command::new("redis-cli")
            .args(["-p", &sentinel_port.to_string()])
            .args(["sentinel", "get-master-addr-by-name", "kgmaster"])
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).contains(&port.to_string())
    };
    let started = Instant::now();
    while !master_named(master.port) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "Sentinel never named the master"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let up = start_upstream("up").await;
    let config = format!(
        "{}[cluster]\nredis_sentinel = [\"redis://127.0.0.1:{sentinel_port}\"]\nsentinel_master = \"kgmaster\"\nmode = \"strict\"\n\n{}{}{}",
        server_toml("127.0.0.1:0", ""),
        target_toml("main", &format!("http://{}", up.addr), ""),
        key_toml("before", FLEET_KEY, "rate_limit = \"5/minute\""),
        key_toml("after", OTHER_KEY, "rate_limit = \"4/minute\""),
    );
    let mut gates = fleet(&dir, 2, &config).await;
    let addrs: Vec<SocketAddr> = gates.iter().map(|g| g.proxy).collect();
    let seen = spread(&addrs, FLEET_KEY, 12, Duration::ZERO).await;
    assert_eq!(count(&seen, 200, ""), 5, "{seen:?}");

    master.kill();
    let started = Instant::now();
    while !master_named(replica_port) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "Sentinel never promoted the replica"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Each instance asks Sentinel again once a call fails: drive a few requests until both
    // have moved to the promoted replica.
    let promoted = format!("127.0.0.1:{replica_port}");
    for g in gates.iter_mut() {
        let started = Instant::now();
        while g
            .lines(|l| l.contains("Sentinel names the master") && l.contains(&promoted))
            .is_empty()
        {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "an instance never followed the failover: {:#?}",
                g.log()
            );
            let _ = call(g.proxy, FLEET_KEY).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Redis is tried again at most every 500 ms after a failure: let both get past that.
    tokio::time::sleep(Duration::from_millis(600)).await;
    for addr in &addrs {
        until_status_for(
            *addr,
            FLEET_KEY,
            429,
            "rate_limited",
            Duration::from_secs(5),
        )
        .await;
    }
    let seen = spread(&addrs, OTHER_KEY, 10, Duration::ZERO).await;
    assert_eq!(count(&seen, 200, ""), 4, "{seen:?}");
}

/// `[cluster]` mistakes are refused at load with file, line and the key, never half-applied.
#[test]
fn cluster_config_mistakes_name_the_key() {
    let base = "[[targets]]\nname = \"t\"\nupstream = \"http://127.0.0.1:9\"\n\n";
    let cases = [
        ("redis = \"http://x\"", "redis:"),
        ("mode = \"eventual\"\nredis = \"redis://r\"", "mode:"),
        (
            "redis = \"redis://r\"\non_redis_error = \"panic\"",
            "on_redis_error:",
        ),
        ("redis = \"redis://r\"\ntimeout = \"soon\"", "timeout:"),
        (
            "redis = \"redis://r\"\nredis_cluster = [\"redis://a\"]",
            "give one of",
        ),
        ("redis_cluster = []", "redis_cluster:"),
        ("redis_sentinel = [\"redis://s:26379\"]", "sentinel_master"),
        (
            "redis = \"redis://r\"\nsentinel_master = \"m\"",
            "only with redis_sentinel",
        ),
        ("mode = \"strict\"", "give one of"),
        ("redis = \"redis://r\"\nprefix = \"a{b}\"", "prefix:"),
    ];
    for (lines, want) in cases {
        let text = format!("{base}[cluster]\n{lines}\n");
        let err = match keygate::config::parse(&text, std::path::Path::new("fleet.toml")) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("fleet.toml:"), "{lines}: no file in {err}");
        assert!(err.contains("[cluster]"), "{lines}: no table in {err}");
        assert!(err.contains(want), "{lines}: {want:?} not in {err}");
    }
    let ok =
        format!("{base}[cluster]\nredis = \"rediss://user:pw@r:6380/2\"\nmode = \"local-sync\"\n");
    let loaded = keygate::config::parse(&ok, std::path::Path::new("fleet.toml")).unwrap();
    let c = loaded.snapshot.cluster.expect("[cluster]");
    assert_eq!(c.mode, keygate::snapshot::ClusterMode::LocalSync);
    assert_eq!(c.on_redis_error, keygate::snapshot::OnRedisError::Local);
    assert_eq!(c.timeout, Duration::from_millis(50));
}

/// With `[cluster]`, a console session opened on one instance works on another (a load
/// balancer in front of the admin ports need not be sticky), and signing out on either ends it
/// on both. Fails when sessions live only in the process that opened them.
#[tokio::test]
async fn a_console_session_is_shared_by_the_fleet() {
    use crate::harness::session::{COOKIE, Console};
    let Some(redis) = Redis::start() else { return };
    let up = start_upstream("up").await;
    let dir = TempDir::new("cluster-sessions");
    let config = format!(
        "keys_file = \"keys.toml\"\n{}\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[[admin_keys]]\nid = \"ops\"\nhash = \"{}\"\nrole = \"admin\"\n\n",
        instance_config(up.addr, &redis, "mode = \"strict\"", ""),
        hash_of(ADMIN_KEY)
    );
    let mut admins = Vec::new();
    let mut gates = Vec::new();
    for name in ["a", "b"] {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        let path = dir.join(&format!("{name}/keygate.toml"));
        std::fs::write(&path, &config).unwrap();
        let mut p = Process::start_proxy(&path).await;
        p.wait_log("the connection to Redis", |l| {
            l.contains("connected to Redis")
        })
        .await;
        admins.push(p.wait_addr("admin API listening").await);
        gates.push(p);
    }
    let (a, b) = (Console::plain(admins[0]), Console::plain(admins[1]));
    let s = a.session(ADMIN_KEY).await;
    let cookie = format!("{COOKIE}={}", s.token);

    // B knows the session A opened: it reads, and changes with the session's CSRF token.
    let who = b
        .send("GET", "/v1/session", &[("cookie", &cookie)], None)
        .await;
    assert_eq!(who.status, 200, "{}", who.text());
    assert_eq!(who.json()["csrf_token"], s.csrf.as_str());
    let origin = b.origin();
    let made = b
        .send(
            "POST",
            "/v1/keys",
            &[
                ("cookie", &cookie),
                ("x-csrf-token", &s.csrf),
                ("origin", &origin),
            ],
            Some("{\"id\":\"via-b\"}"),
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.text());

    // Signed out on B: A refuses the cookie too.
    let out = b
        .send(
            "DELETE",
            "/v1/session",
            &[
                ("cookie", &cookie),
                ("x-csrf-token", &s.csrf),
                ("origin", &origin),
            ],
            None,
        )
        .await;
    assert_eq!(out.status, 204, "{}", out.text());
    let after = a
        .send("GET", "/v1/session", &[("cookie", &cookie)], None)
        .await;
    assert_eq!(after.status, 403, "{}", after.text());
    assert_eq!(after.json()["code"], "session_expired");
}
