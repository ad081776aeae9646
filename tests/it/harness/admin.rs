//! Helpers for the admin API, store and key-command tests: a config directory with a keys file
//! and two admin keys, keygate serving it in process (admin API on its own `127.0.0.1:0`
//! listener) or as the real binary (for restarts, SIGTERM and SIGKILL), an admin API client, the
//! key commands, and bounded polls.
//!
//! Every wait is a bounded poll for the expected state, never a fixed sleep.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use serde_json::Value;

use super::*;

/// Admin key `ops`, role `admin`.
pub const ADMIN_SECRET: &str = "kg_admin_YWRtaW5TZWNyZXRGb3JBZG1pbkFwaVRlc3RzMDAx";
/// Admin key `auditor`, role `read`.
pub const READER_SECRET: &str = "kg_reader_cmVhZGVyU2VjcmV0Rm9yQWRtaW5BcGlUZXN0czE";
/// Key `static`, defined in the main file (read-only for the API), no consumer.
pub const STATIC_SECRET: &str = "kg_static_c3RhdGljU2VjcmV0Rm9yQWRtaW5BcGlUZXN0czE";
pub const STATIC_ID: &str = "static";
/// A consumer defined in the main file (read-only for the API).
pub const HOUSE_CONSUMER: &str = "house";

/// The fields of a key as the admin API and the commands show it, exactly.
pub const KEY_FIELDS: [&str; 17] = [
    "id",
    "name",
    "consumer",
    "prefix",
    "status",
    "created_at",
    "expires_at",
    "last_used_at",
    "targets",
    "allow_ips",
    "allow_origins",
    "access",
    "paths",
    "rate_limit",
    "quota",
    "quota_state",
    "managed",
];

/// The fields of a consumer as the admin API and the commands show it, exactly (sorted).
pub const CONSUMER_FIELDS: [&str; 13] = [
    "allow_ips",
    "allow_origins",
    "created_at",
    "default_key",
    "id",
    "keys",
    "managed",
    "max_keys",
    "name",
    "quota",
    "quota_state",
    "rate_limit",
    "targets",
];

/// The path every proxy probe uses (target `main`).
pub use super::live::PROBE_PATH as PROBE;
/// A path routed to target `other`.
pub const OTHER_PATH: &str = "/other/x";

/// How long a change made on the files (not through the API) may take to reach the proxy: the
/// watcher sees it within milliseconds, the periodic check within 5 s.
pub const RELOAD_LIMIT: Duration = Duration::from_secs(10);
/// Pause between two probes of a poll.
pub const POLL_EVERY: Duration = Duration::from_millis(10);

/// `sha256:<hex>` as keygate computes it.
pub fn keygate_hash(secret: &str) -> String {
    keygate::secret::KeyHash::of(secret.as_bytes()).to_string()
}

// ---------------------------------------------------------------------------------------------
// Polls
// ---------------------------------------------------------------------------------------------

/// Probes until `probe` returns `Some`, every 10 ms, for at most `limit`.
pub use super::live::eventually_for as poll;

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

/// A fresh temp directory, removed when dropped (the one the reload tests use).
pub use super::live::TempDir as Dir;

/// The main config: `keys_file = "keys.toml"`, `[admin]` on `admin_listen` with an admin and a
/// read admin key, targets `main` (`/`) and `other` (`/other`) on the upstream, a main-file
/// consumer `house` and a main-file key `static`.
pub fn main_config(up: SocketAddr, server_listen: Option<&str>, admin_listen: &str) -> String {
    let listen = server_listen.map_or_else(String::new, |l| format!("listen = \"{l}\"\n"));
    format!(
        r#"# A test config: the main file, never rewritten by keygate.
keys_file = "keys.toml"

[server]
{listen}failed_auth_limit = "10000/second"

[admin]
listen = "{admin_listen}"

[[admin_keys]]
id = "ops"
hash = "{admin}"
role = "admin"

[[admin_keys]]
id = "auditor"
hash = "{reader}"
role = "read"

[[targets]]
name = "main"
upstream = "http://{up}"

[[targets]]
name = "other"
upstream = "http://{up}"
path_prefix = "/other"

[[consumers]]
id = "{HOUSE_CONSUMER}"

[[keys]]
id = "{STATIC_ID}"
hash = "{static_hash}"
"#,
        admin = keygate_hash(ADMIN_SECRET),
        reader = keygate_hash(READER_SECRET),
        static_hash = keygate_hash(STATIC_SECRET),
    )
}

/// The keys file most tests start from: a comment and consumer `acme`.
pub const INITIAL_KEYS: &str = "# Managed by keygate; edits by hand are welcome.\n\n[[consumers]]\nid = \"acme\"\nname = \"ACME\"\n";

/// A config directory: `keygate.toml`, `keys.toml`, and the echo upstream its targets point at.
pub struct Files {
    pub dir: Dir,
    pub config: PathBuf,
    pub keys: PathBuf,
    pub up: Upstream,
}

impl Files {
    /// Writes the files; `keys` is the keys file's content (`None`: no keys file yet).
    pub async fn new(
        name: &str,
        server_listen: Option<&str>,
        admin_listen: &str,
        keys: Option<&str>,
    ) -> Files {
        let dir = Dir::new(name);
        let up = start_upstream("main").await;
        let config = dir.join("keygate.toml");
        let keys_path = dir.join("keys.toml");
        std::fs::write(&config, main_config(up.addr, server_listen, admin_listen)).unwrap();
        if let Some(k) = keys {
            std::fs::write(&keys_path, k).unwrap();
        }
        Files {
            dir,
            config,
            keys: keys_path,
            up,
        }
    }

    /// Files for the real binary: the proxy and the admin API on `127.0.0.1:0`, their
    /// addresses read from the log (a port picked free and written into the file could be
    /// taken by another test before keygate binds it).
    pub async fn for_binary(name: &str, keys: Option<&str>) -> Files {
        Files::new(name, Some("127.0.0.1:0"), "127.0.0.1:0", keys).await
    }

    /// Files for the binary with `lines` at the top of `[server]` and every target on `up`
    /// (`None`: the echo upstream).
    pub async fn for_binary_with(name: &str, lines: &str, up: Option<SocketAddr>) -> Files {
        let files = Files::for_binary(name, Some(INITIAL_KEYS)).await;
        let mut text = std::fs::read_to_string(&files.config).unwrap();
        text = text.replace("[server]\n", &format!("[server]\n{lines}\n"));
        if let Some(up) = up {
            text = text.replace(&files.up.addr.to_string(), &up.to_string());
        }
        std::fs::write(&files.config, text).unwrap();
        files
    }

    /// The files for `name` with `lines` in `[server]`, every target on a [`held_upstream`], and
    /// keygate started on them: the upstream, the files and the process.
    pub async fn start_before_held_upstream(
        name: &str,
        lines: &str,
    ) -> (HeldUpstream, Files, Process) {
        let up = held_upstream().await;
        let files = Files::for_binary_with(name, lines, Some(up.addr)).await;
        let kg = Process::start(&files.config).await;
        (up, files, kg)
    }

    /// Adds `[metrics] listen` on a port of its own, starts keygate on these files and returns
    /// the process and the metrics listener's address (read from its log line).
    pub async fn start_with_metrics_port(&self) -> (Process, SocketAddr) {
        self.append_to_config("\n[metrics]\nlisten = \"127.0.0.1:0\"\n");
        let mut kg = Process::start(&self.config).await;
        let line = kg
            .wait_log("the metrics listening line", |l| {
                l.contains("metrics listening")
            })
            .await;
        (kg, logged_addr(&line))
    }

    /// Adds `lines` to the `[[targets]]` table named `target` of the main config.
    pub fn add_to_target(&self, target: &str, lines: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let table = format!("name = \"{target}\"\n");
        assert!(text.contains(&table), "no target {target:?} in {text}");
        let text = text.replacen(&table, &format!("{table}{lines}\n"), 1);
        std::fs::write(&self.config, text).unwrap();
    }

    /// Adds `lines` at the top of the main config's `[admin]` table (e.g.
    /// `session_idle = "1s"`).
    pub fn add_to_admin(&self, lines: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        assert!(text.contains("[admin]\n"), "no [admin] in {text}");
        let text = text.replacen("[admin]\n", &format!("[admin]\n{lines}\n"), 1);
        std::fs::write(&self.config, text).unwrap();
    }

    /// Sets `[server] failed_auth_limit` (the shared config's is far above what any test sends).
    pub fn set_failed_auth_limit(&self, limit: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let from = "failed_auth_limit = \"10000/second\"";
        assert!(text.contains(from), "no {from} in {text}");
        let text = text.replacen(from, &format!("failed_auth_limit = \"{limit}\""), 1);
        std::fs::write(&self.config, text).unwrap();
    }

    /// Where the admin API and the commands append their audit lines by default: beside the
    /// keys file.
    pub fn audit_path(&self) -> PathBuf {
        self.dir.join("audit.jsonl")
    }

    /// The audit log at `path`, one JSON value per line (empty when there is no file).
    pub fn audit_lines_at(path: &Path) -> Vec<Value> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("an audit line is not JSON ({e}): {l:?}"))
            })
            .collect()
    }

    /// The default audit log's lines.
    pub fn audit_lines(&self) -> Vec<Value> {
        Files::audit_lines_at(&self.audit_path())
    }

    /// Appends `toml` to the main config.
    pub fn append_to_config(&self, toml: &str) {
        let mut text = std::fs::read_to_string(&self.config).unwrap();
        text.push('\n');
        text.push_str(toml);
        std::fs::write(&self.config, text).unwrap();
    }

    /// The keys file's text ("" when it does not exist).
    pub fn keys_text(&self) -> String {
        std::fs::read_to_string(&self.keys).unwrap_or_default()
    }

    /// The keys file's bytes (`None` when it does not exist).
    pub fn keys_bytes(&self) -> Option<Vec<u8>> {
        std::fs::read(&self.keys).ok()
    }

    /// Where `last_used_at` is kept: beside the keys file.
    pub fn state_path(&self) -> PathBuf {
        self.dir.join("keys.last_used.json")
    }

    /// The names in the directory, sorted.
    pub fn dir_entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// The config as keygate loads it from disk now.
    pub fn load(&self) -> keygate::config::Loaded {
        match keygate::config::load(&self.config) {
            Ok(l) => l,
            Err(e) => panic!("the files do not load: {e}\n---\n{}", self.keys_text()),
        }
    }

    /// The ids of every key in the files as keygate loads them.
    pub fn key_ids(&self) -> Vec<String> {
        self.load()
            .snapshot
            .keys
            .iter()
            .map(|k| k.id.as_str().to_owned())
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// keygate in process
// ---------------------------------------------------------------------------------------------

/// keygate serving [`Files`] in this process with its real reloader, proxy and admin API on
/// their own `127.0.0.1:0` listeners.
pub struct Gateway {
    pub files: Files,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
}

impl Gateway {
    /// Starts on a fresh directory whose keys file is [`INITIAL_KEYS`].
    pub async fn start(name: &str) -> Gateway {
        Gateway::start_with(name, Some(INITIAL_KEYS)).await
    }

    pub async fn start_with(name: &str, keys: Option<&str>) -> Gateway {
        let files = Files::new(name, None, "127.0.0.1:0", keys).await;
        Gateway::serve(files).await
    }

    /// Starts on a fresh directory (keys file [`INITIAL_KEYS`]) whose `[admin]` table also has
    /// `admin_lines`.
    pub async fn start_with_admin(name: &str, admin_lines: &str) -> Gateway {
        let files = Files::new(name, None, "127.0.0.1:0", Some(INITIAL_KEYS)).await;
        files.add_to_admin(admin_lines);
        Gateway::serve(files).await
    }

    /// keygate in process on `files` as they are now (made by [`Files::new`] without a proxy
    /// `listen`, then edited as the test needs).
    pub async fn serve(files: Files) -> Gateway {
        watch_panics();
        let gateway = match super::load_quiet(&files.config) {
            Ok(l) => l,
            Err(e) => panic!("test config is invalid: {e:#}"),
        };
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (proxy_addr, admin_addr) = (proxy.local_addr().unwrap(), admin.local_addr().unwrap());
        tokio::spawn(async move {
            let served = super::launch::serve(gateway, proxy, Some(admin)).await;
            if let Err(e) = served {
                eprintln!("keygate failed to serve: {e:#}");
            }
        });
        Gateway {
            files,
            proxy: proxy_addr,
            admin: admin_addr,
        }
    }

    /// The admin API as the `admin` role.
    pub fn api(&self) -> Api {
        Api::new(self.admin, Some(ADMIN_SECRET))
    }

    /// [`Gateway::start`], then key `id` created through the admin API: the gateway, the API as
    /// the admin, and the key's secret.
    pub async fn start_with_key(name: &str, id: &str) -> (Gateway, Api, String) {
        let gw = Gateway::start(name).await;
        let api = gw.api();
        let (_, secret) = api.create_key(serde_json::json!({ "id": id })).await;
        (gw, api, secret)
    }

    /// The admin API as the `read` role.
    pub fn reader(&self) -> Api {
        Api::new(self.admin, Some(READER_SECRET))
    }
}

// ---------------------------------------------------------------------------------------------
// The admin API
// ---------------------------------------------------------------------------------------------

/// A client of the admin API presenting `secret` (or nothing) in `X-API-Key`.
#[derive(Clone)]
pub struct Api {
    pub addr: SocketAddr,
    secret: Option<String>,
}

impl Api {
    pub fn new(addr: SocketAddr, secret: Option<&str>) -> Api {
        Api {
            addr,
            secret: secret.map(str::to_owned),
        }
    }

    /// Sends `method path` with `body` (raw text, sent as JSON) on a fresh connection.
    pub async fn send(&self, method: &str, path: &str, body: Option<&str>) -> Resp {
        let mut headers = Vec::new();
        if let Some(s) = &self.secret {
            headers.push(("x-api-key", s.as_str()));
        }
        if body.is_some() {
            headers.push(("content-type", "application/json"));
        }
        let body = body.map_or_else(empty, |b| full(b.to_owned()));
        H1::connect(self.addr)
            .await
            .send(request(method, path, &headers, body))
            .await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send("GET", path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Resp {
        self.send("POST", path, Some(&body.to_string())).await
    }

    /// `POST /v1/keys/{id}/rotate` with `grace_seconds`.
    pub async fn rotate(&self, id: &str, grace_seconds: impl serde::Serialize) -> Resp {
        let body = serde_json::json!({ "grace_seconds": grace_seconds });
        self.post(&format!("/v1/keys/{id}/rotate"), &body).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Resp {
        self.send("PATCH", path, Some(&body.to_string())).await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.send("DELETE", path, None).await
    }

    /// Creates a key; returns the key as shown and its secret.
    pub async fn create_key(&self, body: Value) -> (Value, String) {
        let resp = self.post("/v1/keys", &body).await;
        let key = expect(&resp, 201);
        let secret = key["secret"]
            .as_str()
            .unwrap_or_else(|| panic!("no secret in the 201: {key}"))
            .to_owned();
        (key, secret)
    }

    /// `GET /v1/keys/{id}`, which must answer 200.
    pub async fn key(&self, id: &str) -> Value {
        expect(&self.get(&format!("/v1/keys/{id}")).await, 200)
    }

    pub async fn create_consumer(&self, body: Value) -> Value {
        expect(&self.post("/v1/consumers", &body).await, 201)
    }

    /// Every key, following `next_after` (bounded).
    pub async fn all_keys(&self, query: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..10_000 {
            let mut path = format!("/v1/keys?limit=1000{query}");
            if let Some(a) = &after {
                path.push_str(&format!("&after={a}"));
            }
            let page = expect(&self.get(&path).await, 200);
            items.extend(page["items"].as_array().unwrap().iter().cloned());
            match page["next_after"].as_str() {
                Some(a) => after = Some(a.to_owned()),
                None => return items,
            }
        }
        panic!("too many pages");
    }
}

/// Asserts `status` and a JSON body (`application/json`), and returns the body.
#[track_caller]
pub fn expect(resp: &Resp, status: u16) -> Value {
    assert_eq!(
        resp.status.as_u16(),
        status,
        "expected {status}, got {}: {}",
        resp.status,
        resp.text()
    );
    assert_eq!(
        resp.header("content-type"),
        Some("application/json"),
        "content-type of {}",
        resp.text()
    );
    resp.json()
}

/// Asserts a 400 problem naming `field` in its `field` member, and returns the body.
#[track_caller]
pub fn assert_field_problem(resp: &Resp, code: &str, field: &str) -> Value {
    let p = assert_problem(resp, 400, code);
    assert_eq!(p["field"].as_str(), Some(field), "field in {p}");
    p
}

/// Asserts that `key` has exactly the fields of a key (plus `secret` when `with_secret`), and
/// that no hash is among its values.
#[track_caller]
pub fn assert_key_shape(key: &Value, with_secret: bool) {
    let obj = key
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {key}"));
    let mut got: Vec<&str> = obj.keys().map(String::as_str).collect();
    got.sort_unstable();
    let mut want: Vec<&str> = KEY_FIELDS.to_vec();
    if with_secret {
        want.push("secret");
    }
    want.sort_unstable();
    assert_eq!(got, want, "fields of {key}");
    let text = key.to_string();
    assert!(!text.contains("sha256:"), "a hash is shown: {text}");
    assert!(!text.contains("\"hash\""), "a hash is shown: {text}");
}

/// Parses an RFC 3339 time as the API shows it.
#[track_caller]
pub fn rfc3339(v: &Value) -> time::OffsetDateTime {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("not an RFC 3339 string: {v}"));
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{s:?} is not RFC 3339: {e}"))
}

/// Yesterday and today (UTC) as `YYYY-MM-DD`: a usage range that holds "now" even across
/// midnight.
pub fn days() -> (String, String) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let day = |secs: u64| {
        let d = time::OffsetDateTime::from_unix_timestamp(secs as i64)
            .unwrap()
            .date();
        format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
    };
    (day(now - 86_400), day(now))
}

/// The ids of a list of keys or consumers.
pub fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The proxy
// ---------------------------------------------------------------------------------------------

/// A GET of `path` on the proxy with `secret` in `X-API-Key`.
pub async fn call_path(proxy: SocketAddr, path: &str, secret: &str) -> Resp {
    get(proxy, path, &[("x-api-key", secret)]).await
}

/// A GET of [`PROBE`] on the proxy with `secret`, and a response's status and problem code:
/// the same as the reload tests'.
pub use super::live::{call, outcome};

/// Asserts that `secret` reaches the upstream as key `id`, now.
pub async fn assert_admitted(proxy: SocketAddr, secret: &str, id: &str) {
    let resp = call(proxy, secret).await;
    assert_eq!(
        resp.status.as_u16(),
        200,
        "key {id} was refused: {}",
        resp.text()
    );
    assert_eq!(resp.echo().one("x-keygate-key-id"), Some(id));
}

/// Asserts that `secret` is refused with 403 `code`, now.
pub async fn assert_refused(proxy: SocketAddr, secret: &str, code: &str) {
    assert_problem(&call(proxy, secret).await, 403, code);
}

/// Polls until `secret` gets `status` and `code` ("" for the upstream's answer).
pub async fn until_outcome(proxy: SocketAddr, secret: &str, status: u16, code: &str) {
    let want = (status, code.to_owned());
    poll(
        RELOAD_LIMIT,
        &format!("the key to get {status} {code:?}"),
        async || (outcome(&call(proxy, secret).await) == want).then_some(()),
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Non-panicking admin calls, for traffic that a killed keygate interrupts
// ---------------------------------------------------------------------------------------------

/// Sends one admin request; `None` on any connection error or after 10 s.
pub async fn try_send(
    addr: SocketAddr,
    secret: &str,
    method: &str,
    path: &str,
    body: &str,
) -> Option<(u16, Bytes)> {
    let exchange = async {
        let stream = TcpStream::connect(addr).await.ok()?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = request(
            method,
            path,
            &[("x-api-key", secret), ("content-type", "application/json")],
            full(body.to_owned()),
        );
        let resp = sender.send_request(req).await.ok()?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .ok()
        .flatten()
}

// ---------------------------------------------------------------------------------------------
// The binary
// ---------------------------------------------------------------------------------------------

pub use super::process::{BIN, Process};

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------

/// Runs `keygate <args> --config <config>` and waits (bounded) for it.
pub async fn keygate_cmd(config: &Path, args: &[&str]) -> Output {
    let out = tokio::process::Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("KEYGATE_CONFIG")
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    within(&format!("keygate {args:?}"), out)
        .await
        .expect("run keygate")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs a command that must succeed and print JSON; returns the JSON.
pub async fn cmd_json(config: &Path, args: &[&str]) -> Value {
    let out = keygate_cmd(config, args).await;
    assert!(
        out.status.success(),
        "keygate {args:?} failed ({}): {}",
        out.status,
        text(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout) {
        Ok(v) => v,
        Err(e) => panic!(
            "keygate {args:?} printed no JSON ({e}): {}",
            text(&out.stdout)
        ),
    }
}

/// `keygate check` on the files must pass.
pub async fn assert_check_passes(config: &Path) {
    let out = keygate_cmd(config, &["check"]).await;
    assert!(
        out.status.success(),
        "keygate check failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// `keygate_open_connections` as the admin listener at `admin` reports it now.
pub async fn open_connections(admin: SocketAddr) -> f64 {
    let resp = get(admin, "/metrics", &[]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let text = resp.text();
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix("keygate_open_connections "))
        .unwrap_or_else(|| panic!("no keygate_open_connections in {text}"));
    value.trim().parse().unwrap()
}
