//! Forward-auth (issue 17): keygate's `[verify]` listener answers "may this request pass?" for
//! the proxy a team already runs, and forwards nothing. Real nginx (`auth_request`) and real Caddy
//! (`forward_auth`) in front of the echo upstream, each started on a free port with the very
//! snippet docs/forward-auth.md gives (read from the page, so the page cannot drift from what is
//! tested); the Traefik and Envoy contracts by requests shaped as their documentation and source
//! describe; and the verify listener's own contract: trusted peers only, what a 200 carries, one
//! engine with the proxy (limits, usage counts, access log).
//!
//! Without nginx or caddy those tests say so and pass, so that `cargo test` works anywhere;
//! `.ci/run` installs both, and with `CI` set a missing program fails them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::harness::admin::*;
use crate::harness::policy::{connect_from, ip, must_header, num_header};
use crate::harness::*;

/// Key `fwd-main`, consumer `house`, bound to target `main`.
const MAIN: &str = "kg_fwd_main_Zm9yd2FyZE1haW5TZWNyZXRGb3JUZXN0czAx";
/// Key `fwd-readonly`, no consumer: `access = "read-only"`, `paths = ["/reports"]`.
const READONLY: &str = "kg_fwd_ro_Zm9yd2FyZFJlYWRPbmx5U2VjcmV0Rm9yVGVzdHM";
/// Key `fwd-limited`, consumer `house`: `rate_limit = "2/minute"`.
const LIMITED: &str = "kg_fwd_limited_Zm9yd2FyZExpbWl0ZWRTZWNyZXRGb3JUZXN0";
/// Key `fwd-quota`: `quota = "1/day"`.
const QUOTA: &str = "kg_fwd_quota_Zm9yd2FyZFF1b3RhU2VjcmV0Rm9yVGVzdHMwMQ";
/// Key `fwd-fenced`: `allow_ips = ["127.0.0.2"]`.
const FENCED: &str = "kg_fwd_fenced_Zm9yd2FyZEZlbmNlZFNlY3JldEZvclRlc3Rz";
/// In no key table.
const WRONG: &str = "kg_fwd_wrong_bm90QUtleUluQW55VGFibGVGb3JUZXN0czAx";
/// Every secret here: none may reach a client or (through the echo) the upstream.
const SECRETS: [&str; 6] = [MAIN, READONLY, LIMITED, QUOTA, FENCED, WRONG];

/// The client address the proxies see (the TCP peer of nginx and Caddy), and the one a fenced
/// key is allowed from.
const CLIENT: &str = "127.0.0.2";
/// Another client address, not on any allow-list.
const STRANGER: &str = "127.0.0.3";
/// A peer of the verify listener that is not in its `trusted_proxies`.
const UNTRUSTED_PEER: &str = "127.0.0.5";

/// Fresh ports tried for nginx or Caddy before the test gives up: a port found free can be
/// taken by another test before the program binds it, which it then reports by exiting.
const START_ATTEMPTS: usize = 5;
/// The longest nginx or Caddy may take to answer its readiness probe.
const START_LIMIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// keygate with a verify listener
// ---------------------------------------------------------------------------------------------

/// The keys above, in the main config (beside the harness's `static`).
fn keys() -> String {
    let key = |id: &str, secret: &str, extra: &str| {
        format!(
            "[[keys]]\nid = \"{id}\"\nhash = \"{}\"\n{extra}\n",
            keygate_hash(secret)
        )
    };
    [
        key(
            "fwd-main",
            MAIN,
            "consumer = \"house\"\ntargets = [\"main\"]",
        ),
        key(
            "fwd-readonly",
            READONLY,
            "access = \"read-only\"\npaths = [\"/reports\"]",
        ),
        key(
            "fwd-limited",
            LIMITED,
            "consumer = \"house\"\nrate_limit = \"2/minute\"",
        ),
        key("fwd-quota", QUOTA, "quota = \"1/day\""),
        key("fwd-fenced", FENCED, &format!("allow_ips = [\"{CLIENT}\"]")),
    ]
    .join("\n")
}

/// The real binary with its proxy and admin API on `127.0.0.1:0` (the proxy unused by the
/// proxies in front), `[verify]` on `127.0.0.1:0` trusting only 127.0.0.1 (where nginx, Caddy
/// and these tests' "proxies" connect from), and its JSON access log in `access.log`.
struct Fwd {
    files: Files,
    kg: Process,
    verify: SocketAddr,
}

impl Fwd {
    async fn start(name: &str) -> Fwd {
        Fwd::start_with(name, |_| {}).await
    }

    /// [`Fwd::start`], with `edit` applied to the files before keygate starts.
    async fn start_with(name: &str, edit: impl FnOnce(&Files)) -> Fwd {
        let files = Files::for_binary_with(name, "", None).await;
        files.append_to_config(&keys());
        files.append_to_config(
            "[log]\naccess = \"access.log\"\n\n[verify]\nlisten = \"127.0.0.1:0\"\n\
             trusted_proxies = [\"127.0.0.1\"]\n",
        );
        edit(&files);
        let mut kg = Process::start(&files.config).await;
        let verify = kg.wait_addr("verify listening").await;
        assert_ne!(verify.port(), kg.proxy.port());
        Fwd { files, kg, verify }
    }

    /// The access log's whole lines so far, as JSON (a line still being written is left out).
    fn access_log(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.files.dir.join("access.log")).unwrap_or_default();
        text.split_inclusive('\n')
            .filter_map(|l| l.strip_suffix('\n'))
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("an access log line is not JSON ({e}): {l}"))
            })
            .collect()
    }

    /// Waits (bounded) until the access log has a line with this `request_id`.
    async fn access_line(&self, request_id: &str) -> Value {
        poll(Duration::from_secs(10), "the access log line", async || {
            self.access_log()
                .into_iter()
                .find(|l| l["request_id"] == request_id)
        })
        .await
    }

    /// The usage of key `id` today (and yesterday, for a test run across midnight).
    async fn usage(&self, id: &str) -> Value {
        let (from, to) = days();
        let resp = Api::new(self.kg.admin, Some(READER_SECRET))
            .get(&format!("/v1/keys/{id}/usage?from={from}&to={to}"))
            .await;
        expect(&resp, 200)
    }
}

/// One request on a fresh HTTP/1.1 connection from `from` to `to`, `Host` [`HOST`] unless given;
/// the answer checked for every secret of this file.
async fn send_from(
    from: &str,
    to: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &'static str,
) -> Resp {
    let body = if body.is_empty() { empty() } else { full(body) };
    let resp = connect_from(ip(from), to)
        .await
        .send(request(method, path, headers, body))
        .await;
    assert_none_of(&resp, SECRETS);
    resp
}

/// A GET from [`CLIENT`] with `secret` in `X-API-Key`.
async fn get_with(to: SocketAddr, path: &str, secret: &str) -> Resp {
    send_from(CLIENT, to, "GET", path, &[("x-api-key", secret)], "").await
}

/// keygate's status, code and problem type in a problem+json body: what a refusal keeps through
/// nginx, whose recipe writes the body from keygate's headers (its title and detail are the
/// recipe's).
#[track_caller]
fn assert_keygate_problem(resp: &Resp, status: u16, code: &str) -> Value {
    let json = assert_problem(resp, status, code);
    assert_eq!(
        json["type"],
        format!("tag:keygate,2026:problem:{code}"),
        "{json}"
    );
    json
}

/// A refusal as keygate writes it (problem+json with keygate's own title), with the two
/// headers for nginx.
#[track_caller]
fn assert_keygate_refusal(resp: &Resp, status: u16, code: &str) -> Value {
    let json = assert_keygate_problem(resp, status, code);
    assert_eq!(
        resp.header("x-keygate-status"),
        Some(status.to_string().as_str())
    );
    assert_eq!(resp.header("x-keygate-code"), Some(code));
    json
}

/// `Retry-After` in whole seconds, within `1..=max`.
#[track_caller]
fn retry_after(resp: &Resp, max: u64) -> u64 {
    let secs = num_header(resp, "retry-after");
    assert!((1..=max).contains(&secs), "Retry-After {secs}");
    secs
}

/// Fails unless exactly `want` requests have reached the upstream so far.
#[track_caller]
fn assert_hits(up: &Upstream, want: usize, what: &str) {
    assert_eq!(
        up.hits(),
        want,
        "requests that reached the upstream: {what}"
    );
}

// ---------------------------------------------------------------------------------------------
// The proxies in front: nginx and Caddy, as real programs
// ---------------------------------------------------------------------------------------------

/// The program's path, or `None` (after saying why) when it is not installed and `CI` is unset.
fn program(name: &str, package: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} is not installed (.ci/run installs {package})"
        );
        eprintln!("SKIPPED: {name} is not installed (apt-get install {package})");
    }
    found
}

/// The fenced block after `<!-- tested: NAME -->` in docs/forward-auth.md.
fn doc_snippet(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/forward-auth.md");
    let page = std::fs::read_to_string(&path).expect("docs/forward-auth.md");
    let marker = format!("<!-- tested: {name} -->");
    let at = page
        .find(&marker)
        .unwrap_or_else(|| panic!("no {marker} in docs/forward-auth.md"));
    let rest = &page[at + marker.len()..];
    let open = rest.find("```").expect("a fenced block after the marker");
    let body_start = open + rest[open..].find('\n').expect("a fence line") + 1;
    let len = rest[body_start..]
        .find("\n```")
        .expect("the fenced block's end");
    rest[body_start..body_start + len + 1].to_owned()
}

/// [`doc_snippet`] `name` with its `127.0.0.1:8081` (keygate's verify listener) and
/// `127.0.0.1:3000` (the API) replaced by `verify` and `api`; `listen` is the text the test then
/// replaces with its own port, so it must be there.
fn recipe(name: &str, verify: SocketAddr, api: SocketAddr, listen: &str) -> String {
    let recipe = doc_snippet(name)
        .replace("127.0.0.1:8081", &verify.to_string())
        .replace("127.0.0.1:3000", &api.to_string());
    assert!(recipe.contains(listen), "{recipe}");
    recipe
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// `GET /_fixture_ready` on `port`: true when the answer carries `token` (so it is our program
/// on that port, not another test's server that took it first).
async fn answers_with(port: u16, token: &str) -> bool {
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(b"GET /_fixture_ready HTTP/1.1\r\nHost: ready\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        Some(String::from_utf8_lossy(&out).contains(token))
    };
    tokio::time::timeout(Duration::from_secs(2), probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// A program the test started, killed (and reaped) when dropped, with its temp directory.
struct Started {
    addr: SocketAddr,
    child: Child,
    /// Its config, pid file and logs: removed after the program is killed.
    _dir: Dir,
    /// The file its diagnostics go to, for failure messages.
    log: PathBuf,
}

impl Started {
    /// Runs `command(dir, port, token)` on fresh ports until the program answers its readiness
    /// probe with `token` ([`START_ATTEMPTS`] at most, each bounded by [`START_LIMIT`]).
    async fn start(
        name: &str,
        mut command: impl FnMut(&Dir, u16, &str) -> (Command, PathBuf),
    ) -> Started {
        let mut failures = Vec::new();
        for attempt in 0..START_ATTEMPTS {
            let dir = Dir::new(name);
            let port = free_port();
            let token = format!("{name}-ready-{}-{port}-{attempt}", std::process::id());
            let (mut cmd, log) = command(&dir, port, &token);
            let child = cmd
                .stdin(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
            let mut started = Started {
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                child,
                _dir: dir,
                log,
            };
            let since = Instant::now();
            loop {
                if let Ok(Some(status)) = started.child.try_wait() {
                    failures.push(format!(
                        "port {port}: exited {status}: {}",
                        started.diagnostics()
                    ));
                    break;
                }
                if answers_with(port, &token).await {
                    return started;
                }
                if since.elapsed() > START_LIMIT {
                    panic!(
                        "{name} did not answer on port {port} within {START_LIMIT:?}: {}",
                        started.diagnostics()
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("{name} did not start in {START_ATTEMPTS} attempts: {failures:#?}");
    }

    fn diagnostics(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Real nginx with the [`recipe`] of docs/forward-auth.md, listening on a free port of 127.0.0.1.
async fn start_nginx(verify: SocketAddr, api: SocketAddr) -> Option<Started> {
    let bin = program("nginx", "nginx-light")?;
    let recipe = recipe("nginx", verify, api, "listen 80;");
    Some(
        Started::start("nginx", |dir, port, token| {
            let d = dir.path().display();
            let server = recipe.replacen(
                "listen 80;",
                &format!(
                    "listen 127.0.0.1:{port};\n    location = /_fixture_ready {{ return 200 \"{token}\"; }}"
                ),
                1,
            );
            // One process (no master): killing it on drop frees the port at once, where a
            // killed master would leave its worker serving.
            let conf = format!(
                "master_process off;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
                 events {{ worker_connections 256; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  \
                 proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
                 uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\n{server}\n}}\n"
            );
            let conf_path = dir.join("nginx.conf");
            std::fs::write(&conf_path, conf).unwrap();
            let log = dir.join("error.log");
            let mut cmd = Command::new(&bin);
            cmd.arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(&conf_path)
                .arg("-e")
                .arg(&log)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap());
            (cmd, log)
        })
        .await,
    )
}

/// Real Caddy with the Caddyfile of docs/forward-auth.md, its site `api.example.com` served
/// over plain HTTP on a free port of 127.0.0.1 instead, nothing written outside its temp dir.
async fn start_caddy(verify: SocketAddr, api: SocketAddr) -> Option<Started> {
    let bin = program("caddy", "caddy")?;
    let recipe = recipe("caddy", verify, api, "api.example.com {");
    Some(
        Started::start("caddy", |dir, port, token| {
            let d = dir.path().display();
            let site = recipe.replacen(
                "api.example.com {",
                &format!("http://:{port} {{\n\tbind 127.0.0.1"),
                1,
            );
            let conf = format!(
                "{{\n\tadmin off\n\tauto_https off\n\tstorage file_system {d}/storage\n}}\n\n\
                 http://:{port}/_fixture_ready {{\n\tbind 127.0.0.1\n\trespond \"{token}\" 200\n}}\n\n{site}"
            );
            let conf_path = dir.join("Caddyfile");
            std::fs::write(&conf_path, conf).unwrap();
            let log = dir.join("caddy.log");
            let mut cmd = Command::new(&bin);
            cmd.args(["run", "--adapter", "caddyfile", "--config"])
                .arg(&conf_path)
                .env("HOME", dir.join("home"))
                .env("XDG_CONFIG_HOME", dir.join("config"))
                .env("XDG_DATA_HOME", dir.join("data"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap());
            (cmd, log)
        })
        .await,
    )
}

// ---------------------------------------------------------------------------------------------
// What nginx and Caddy must both do
// ---------------------------------------------------------------------------------------------

/// A proxy in front, for the checks nginx and Caddy share: what differs between them is here.
#[derive(Clone, Copy)]
enum Front {
    /// The recipe writes a refusal's body itself from keygate's headers, and adds the rate-limit
    /// headers to admitted answers.
    Nginx,
    /// Passes keygate's refusals as keygate wrote them, and the upstream's answers as they are.
    Caddy,
}

impl Front {
    /// Checks a refusal as it reaches the client through this proxy; returns its body.
    #[track_caller]
    fn refused(self, resp: &Resp, status: u16, code: &str) -> Value {
        match self {
            Front::Nginx => assert_keygate_problem(resp, status, code),
            Front::Caddy => assert_keygate_refusal(resp, status, code),
        }
    }

    /// Whether admitted answers carry the rate-limit headers.
    fn limits_on_admitted(self) -> bool {
        matches!(self, Front::Nginx)
    }
}

/// Admitted requests through the proxy at `to`: keygate's identity headers replace the ones a
/// client sent (a key without a consumer gets none), the key stays behind, and a request with a
/// body (sent as `body_method`) gets it to the upstream after the bodiless check. Three requests
/// reach the upstream.
async fn assert_admits_through(to: SocketAddr, body_method: &str) {
    let resp = send_from(
        CLIENT,
        to,
        "GET",
        "/x/y?b=1",
        &[
            ("x-api-key", MAIN),
            ("x-keygate-key-id", "spoofed"),
            ("x-keygate-consumer", "spoofed"),
        ],
        "",
    )
    .await;
    let echo = resp.echo();
    assert_eq!(echo.uri, "/x/y?b=1");
    assert_eq!(echo.one("x-keygate-key-id"), Some("fwd-main"));
    assert_eq!(echo.one("x-keygate-consumer"), Some("house"));
    assert!(!echo.has("x-api-key"), "{echo:?}");
    // A key without a consumer: a client's X-Keygate-Consumer does not get through either.
    let resp = send_from(
        CLIENT,
        to,
        "GET",
        "/reports/daily",
        &[("x-api-key", READONLY), ("x-keygate-consumer", "spoofed")],
        "",
    )
    .await;
    let echo = resp.echo();
    assert_eq!(echo.one("x-keygate-key-id"), Some("fwd-readonly"));
    assert!(!echo.has("x-keygate-consumer"), "{echo:?}");
    let resp = send_from(
        CLIENT,
        to,
        body_method,
        "/x",
        &[("x-api-key", MAIN)],
        "hello",
    )
    .await;
    let echo = resp.echo();
    assert_eq!((echo.method.as_str(), echo.body_len), (body_method, 5));
}

/// Refusals through `front` at `to`: no key, a wrong key, a read-only key's POST and a path
/// outside its `paths` (decided on the original method and URI, not on the proxy's own GET), a
/// fenced key from another client (whose own X-Forwarded-For is not believed). The fenced key
/// from its client is admitted: one request reaches the upstream. Returns the body of the
/// `key_missing` refusal.
async fn assert_refusals_through(front: Front, to: SocketAddr) -> Value {
    let missing = send_from(CLIENT, to, "GET", "/x", &[], "").await;
    let missing = front.refused(&missing, 403, "key_missing");
    front.refused(&get_with(to, "/x", WRONG).await, 403, "key_invalid");
    let post = send_from(
        CLIENT,
        to,
        "POST",
        "/reports/a",
        &[("x-api-key", READONLY)],
        "x",
    )
    .await;
    front.refused(&post, 403, "access_denied");
    front.refused(
        &get_with(to, "/admin", READONLY).await,
        403,
        "access_denied",
    );
    // allow_ips on the client's address, which the proxy sends in X-Forwarded-For.
    assert_eq!(get_with(to, "/x", FENCED).await.status, 200);
    let stranger = send_from(STRANGER, to, "GET", "/x", &[("x-api-key", FENCED)], "").await;
    front.refused(&stranger, 403, "ip_not_allowed");
    let spoofing = send_from(
        STRANGER,
        to,
        "GET",
        "/x",
        &[("x-api-key", FENCED), ("x-forwarded-for", CLIENT)],
        "",
    )
    .await;
    front.refused(&spoofing, 403, "ip_not_allowed");
    missing
}

/// The rate limit (2/minute) and the quota (1/day) through `front` at `to`: two admitted
/// requests (with the rate-limit headers where the proxy shows them), then 429 `rate_limited`
/// with `Retry-After` and the rate-limit headers; one admitted, then 429 `quota_exceeded` until
/// midnight UTC. Three requests reach the upstream. Returns the body of the `rate_limited`
/// refusal.
async fn assert_limits_through(front: Front, to: SocketAddr) -> Value {
    for n in 1..=2 {
        let ok = get_with(to, "/x", LIMITED).await;
        assert_eq!(ok.status, 200, "request {n}: {}", ok.text());
        if front.limits_on_admitted() {
            must_header(&ok, "ratelimit-policy");
            must_header(&ok, "ratelimit");
        }
    }
    let limited = get_with(to, "/x", LIMITED).await;
    let json = front.refused(&limited, 429, "rate_limited");
    retry_after(&limited, 60);
    must_header(&limited, "ratelimit-policy");
    must_header(&limited, "ratelimit");
    assert_eq!(get_with(to, "/x", QUOTA).await.status, 200);
    let spent = get_with(to, "/x", QUOTA).await;
    front.refused(&spent, 429, "quota_exceeded");
    retry_after(&spent, 86_400);
    json
}

// ---------------------------------------------------------------------------------------------
// nginx
// ---------------------------------------------------------------------------------------------

/// nginx `auth_request` with the documented recipe: a valid key reaches the upstream with
/// keygate's identity headers and without the key (header or query); every refusal reaches the
/// client with keygate's status, code and type as problem+json, including 429 with `Retry-After`
/// for a rate-limited and a quota-spent key and 404 for no route (which plain `auth_request`
/// would turn into 500); access and paths are decided on the original method and URI, the route
/// on the original host, `allow_ips` on the client's address; with keygate down, nothing passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_admits_refuses_and_passes_429_with_retry_after() {
    // Target `main` only for the tests' own host: another host has no route (404).
    let fx = Fwd::start_with("fwd-nginx", |files| {
        files.add_to_target("main", &format!("hosts = [\"{HOST}\"]"));
    })
    .await;
    let Some(ngx) = start_nginx(fx.verify, fx.files.up.addr).await else {
        return;
    };
    let (to, up) = (ngx.addr, &fx.files.up);

    assert_admits_through(to, "POST").await;
    // The key in the query: checked on the original URI, removed from the upstream's (which
    // Caddy 2.6 cannot do).
    let path = format!("/reports/a?x=1&api_key={READONLY}&y=%20z");
    let resp = send_from(CLIENT, to, "GET", &path, &[], "").await;
    assert_eq!(resp.echo().uri, "/reports/a?x=1&y=%20z");
    assert_hits(up, 4, "the four admitted requests");

    assert_refusals_through(Front::Nginx, to).await;
    // Routing on the original host (nginx's X-Forwarded-Host).
    let elsewhere = send_from(
        CLIENT,
        to,
        "GET",
        "/x",
        &[("x-api-key", MAIN), ("host", "elsewhere.test")],
        "",
    )
    .await;
    assert_keygate_problem(&elsewhere, 404, "no_route");
    assert_hits(up, 5, "refusals reach no upstream");

    assert_limits_through(Front::Nginx, to).await;
    assert_hits(up, 8, "the rate- and quota-limited keys' admitted requests");

    // keygate down: nginx lets nothing through.
    fx.kg.kill().await;
    let down = get_with(to, "/x", MAIN).await;
    assert_eq!(down.status, 503, "{}", down.text());
    assert_eq!(
        down.header("content-type"),
        Some("application/problem+json")
    );
    assert_hits(up, 8, "nothing passes while keygate is down");
    drop(ngx);
}

// ---------------------------------------------------------------------------------------------
// Caddy
// ---------------------------------------------------------------------------------------------

/// Caddy `forward_auth` with the documented Caddyfile: a valid key reaches the upstream with the
/// copied identity headers and without the key; refusals (403, 429 with `Retry-After`) reach the
/// client exactly as keygate wrote them; the original method and URI and the client's address
/// (Caddy's `X-Forwarded-*`) are what keygate decides on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_forward_auth_admits_and_passes_keygate_refusals_through() {
    let fx = Fwd::start("fwd-caddy").await;
    let Some(caddy) = start_caddy(fx.verify, fx.files.up.addr).await else {
        return;
    };
    let (to, up) = (caddy.addr, &fx.files.up);

    assert_admits_through(to, "PUT").await;
    assert_hits(up, 3, "the admitted requests");

    // Refusals come through as keygate wrote them, its title included.
    let missing = assert_refusals_through(Front::Caddy, to).await;
    assert_eq!(missing["title"], "API key missing");
    assert_hits(up, 4, "refusals reach no upstream");

    let limited = assert_limits_through(Front::Caddy, to).await;
    assert_eq!(limited["title"], "Rate limit exceeded");
    assert_hits(up, 7, "the rate- and quota-limited keys' admitted requests");
    drop(caddy);
}

// ---------------------------------------------------------------------------------------------
// Traefik and Envoy: their requests, as documented
// ---------------------------------------------------------------------------------------------

/// A call to the verify listener from 127.0.0.1 (a trusted proxy).
async fn verify_call(fx: &Fwd, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    send_from("127.0.0.1", fx.verify, method, path, headers, "").await
}

/// Target `other` (`/other`) answers only for `other.example.com`, so routing on the original
/// host shows: `fwd-main` is bound to target `main`.
fn other_host_only(files: &Files) {
    files.add_to_target("other", "hosts = [\"other.example.com\"]");
}

/// Traefik's `forwardAuth` (pkg/middlewares/auth/forward.go): a GET of the configured address
/// with the client's headers copied, and the original request in `X-Forwarded-Method`, `-Proto`,
/// `-Host`, `-Uri` and `X-Forwarded-For` (the client's address).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traefik_forward_auth_requests_are_decided_on_the_forwarded_request() {
    let fx = Fwd::start_with("fwd-traefik", other_host_only).await;
    let traefik = async |key: &str, method: &str, host: &str, uri: &str, client: &str| {
        let mut h = vec![
            ("host", "keygate:8081"),
            ("user-agent", "curl/8.5.0"),
            ("x-forwarded-for", client),
            ("x-forwarded-method", method),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", host),
            ("x-forwarded-uri", uri),
        ];
        if !key.is_empty() {
            h.push(("x-api-key", key));
        }
        verify_call(&fx, "GET", "/", &h).await
    };

    let ok = traefik(READONLY, "GET", "api.example.com", "/reports/1?x=2", CLIENT).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.header("x-keygate-key-id"), Some("fwd-readonly"));
    let denied = traefik(READONLY, "DELETE", "api.example.com", "/reports/1", CLIENT).await;
    assert_keygate_refusal(&denied, 403, "access_denied");
    let outside = traefik(READONLY, "GET", "api.example.com", "/admin", CLIENT).await;
    assert_keygate_refusal(&outside, 403, "access_denied");
    // The key in the original URI's query.
    let uri = format!("/reports/1?api_key={READONLY}");
    let ok = traefik("", "GET", "api.example.com", &uri, CLIENT).await;
    assert_eq!(ok.header("x-keygate-key-id"), Some("fwd-readonly"));
    // The client's address.
    assert_eq!(
        traefik(FENCED, "GET", "a.test", "/x", CLIENT).await.status,
        200
    );
    let far = traefik(FENCED, "GET", "a.test", "/x", STRANGER).await;
    assert_keygate_refusal(&far, 403, "ip_not_allowed");
    // Routing on the original host and path: /other/x is target `other` only on its host.
    let ok = traefik(MAIN, "GET", "api.example.com", "/other/x", CLIENT).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let other = traefik(MAIN, "GET", "other.example.com", "/other/x", CLIENT).await;
    assert_keygate_refusal(&other, 403, "target_not_allowed");
    assert_hits(&fx.files.up, 0, "the verify listener forwards nothing");
}

/// Envoy's `ext_authz` with an `http_service` (no `path_prefix`): the original method and path
/// (query included) on the call itself, the original `Host`, `Content-Length: 0`, and the headers
/// `allowed_headers` lets through (`x-api-key`, `x-forwarded-for`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_ext_authz_requests_are_decided_on_the_call_itself() {
    let fx = Fwd::start_with("fwd-envoy", other_host_only).await;
    let envoy = async |key: &str, method: &str, host: &str, path: &str, client: &str| {
        let mut h = vec![
            ("host", host),
            ("content-length", "0"),
            ("x-forwarded-for", client),
        ];
        if !key.is_empty() {
            h.push(("x-api-key", key));
        }
        verify_call(&fx, method, path, &h).await
    };

    let ok = envoy(READONLY, "GET", "api.example.com", "/reports/1?x=2", CLIENT).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert!(ok.body.is_empty(), "{}", ok.text());
    assert_eq!(ok.header("x-keygate-key-id"), Some("fwd-readonly"));
    let denied = envoy(READONLY, "POST", "api.example.com", "/reports/1", CLIENT).await;
    assert_keygate_refusal(&denied, 403, "access_denied");
    let uri = format!("/reports/1?api_key={READONLY}");
    let ok = envoy("", "HEAD", "api.example.com", &uri, CLIENT).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("x-keygate-key-id"), Some("fwd-readonly"));
    assert_eq!(
        envoy(FENCED, "PATCH", "a.test", "/x", CLIENT).await.status,
        200
    );
    let far = envoy(FENCED, "PATCH", "a.test", "/x", STRANGER).await;
    assert_keygate_refusal(&far, 403, "ip_not_allowed");
    let other = envoy(MAIN, "GET", "other.example.com:10000", "/other/x", CLIENT).await;
    assert_keygate_refusal(&other, 403, "target_not_allowed");
    assert_eq!(
        envoy(MAIN, "GET", "api.example.com", "/other/x", CLIENT)
            .await
            .status,
        200
    );
    let missing = envoy("", "GET", "api.example.com", "/x", CLIENT).await;
    assert_keygate_refusal(&missing, 403, "key_missing");
    assert_hits(&fx.files.up, 0, "the verify listener forwards nothing");
}

// ---------------------------------------------------------------------------------------------
// The verify listener's own contract
// ---------------------------------------------------------------------------------------------

/// Only `trusted_proxies` may ask: from any other peer the call is refused 403
/// `proxy_not_trusted` (with a valid key and believable headers), and counts for no key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_outside_trusted_proxies_is_refused() {
    let fx = Fwd::start("fwd-untrusted").await;
    let h = [
        ("x-api-key", MAIN),
        ("x-forwarded-method", "GET"),
        ("x-forwarded-uri", "/x"),
        ("x-forwarded-for", CLIENT),
    ];
    for method in ["GET", "POST"] {
        let resp = send_from(UNTRUSTED_PEER, fx.verify, method, "/", &h, "").await;
        assert_keygate_refusal(&resp, 403, "proxy_not_trusted");
        assert!(resp.header("x-keygate-key-id").is_none(), "{resp:?}");
    }
    // The same call from a trusted peer passes.
    let ok = verify_call(&fx, "GET", "/", &h).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(fx.usage("fwd-main").await["total"]["requests"], 1);
    assert_hits(&fx.files.up, 0, "the verify listener forwards nothing");
}

/// What a 200 carries: an empty body, `X-Keygate-Key-Id`, `X-Keygate-Consumer` only for a key
/// with one, the rate-limit headers only when a limit applies, `X-Request-Id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admitted_call_carries_the_identity_and_the_limits() {
    let fx = Fwd::start("fwd-200").await;
    let call = async |key: &str, request_id: &str| {
        verify_call(
            &fx,
            "GET",
            "/",
            &[
                ("x-api-key", key),
                ("x-forwarded-uri", "/reports/x"),
                ("x-request-id", request_id),
            ],
        )
        .await
    };

    let limited = call(LIMITED, "fwd-200-limited").await;
    assert_eq!(limited.status, 200, "{}", limited.text());
    assert!(limited.body.is_empty(), "{}", limited.text());
    assert_eq!(limited.header("x-keygate-key-id"), Some("fwd-limited"));
    assert_eq!(limited.header("x-keygate-consumer"), Some("house"));
    assert_eq!(limited.header("x-request-id"), Some("fwd-200-limited"));
    let policy = must_header(&limited, "ratelimit-policy");
    assert!(policy.contains("q=2"), "{policy}");
    let remaining = must_header(&limited, "ratelimit");
    assert!(remaining.contains("r=1"), "{remaining}");
    assert!(limited.header("x-keygate-status").is_none());

    let plain = call(READONLY, "fwd-200-plain").await;
    assert_eq!(plain.status, 200, "{}", plain.text());
    assert!(plain.body.is_empty());
    assert_eq!(plain.header("x-keygate-key-id"), Some("fwd-readonly"));
    assert!(plain.header("x-keygate-consumer").is_none(), "{plain:?}");
    assert!(plain.header("ratelimit").is_none(), "{plain:?}");
    assert!(plain.header("ratelimit-policy").is_none(), "{plain:?}");
    assert!(plain.header("x-request-id").is_some());
}

/// One engine: verify calls and proxied requests spend the same rate limit; usage counts and
/// the access log come from the verify calls, the log line with the original method, host and
/// path (its key redacted) and the client's address; nothing is forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_calls_share_limits_with_the_proxy_and_are_counted_and_logged() {
    let fx = Fwd::start("fwd-engine").await;
    let ask = async |key: &str, method: &str, uri: &str, request_id: &str| {
        let mut h = vec![
            ("x-forwarded-method", method),
            ("x-forwarded-uri", uri),
            ("x-forwarded-host", "api.example.com"),
            ("x-forwarded-for", CLIENT),
            ("x-request-id", request_id),
        ];
        if !key.is_empty() {
            h.push(("x-api-key", key));
        }
        verify_call(&fx, "GET", "/", &h).await
    };

    // The rate limit (2/minute): one verify call, one proxied request, then the verify
    // listener refuses.
    assert_eq!(ask(LIMITED, "GET", "/x", "e-1").await.status, 200);
    let proxied = get_with(fx.kg.proxy, "/x", LIMITED).await;
    assert_eq!(proxied.echo().one("x-keygate-key-id"), Some("fwd-limited"));
    let limited = ask(LIMITED, "GET", "/x", "e-2").await;
    assert_keygate_refusal(&limited, 429, "rate_limited");
    retry_after(&limited, 60);
    assert_hits(&fx.files.up, 1, "only the proxied request");

    // Usage: two read-only calls allowed, one refused.
    let uri = format!("/reports/q?api_key={READONLY}&n=1");
    assert_eq!(ask("", "GET", &uri, "e-3").await.status, 200);
    assert_eq!(ask(READONLY, "HEAD", "/reports", "e-4").await.status, 200);
    let denied = ask(READONLY, "POST", "/reports", "e-5").await;
    assert_keygate_refusal(&denied, 403, "access_denied");
    let total = &fx.usage("fwd-readonly").await["total"];
    assert_eq!(total["requests"], 3, "{total}");
    assert_eq!(total["allowed"], 2, "{total}");
    let denials: BTreeMap<String, u64> = serde_json::from_value(total["denials"].clone()).unwrap();
    assert_eq!(denials, BTreeMap::from([("access_denied".to_owned(), 1)]));
    let total = &fx.usage("fwd-limited").await["total"];
    assert_eq!(total["requests"], 3, "{total}");
    assert_eq!(total["denials"]["rate_limited"], 1, "{total}");

    // The access log: the original request, the key redacted.
    let line = fx.access_line("e-3").await;
    assert_eq!(line["method"], "GET", "{line}");
    assert_eq!(line["host"], "api.example.com", "{line}");
    assert_eq!(line["path"], "/reports/q?api_key=REDACTED&n=1", "{line}");
    assert_eq!(line["key_id"], "fwd-readonly", "{line}");
    assert_eq!(line["client_ip"], CLIENT, "{line}");
    assert_eq!(line["status"], 200, "{line}");
    let line = fx.access_line("e-5").await;
    assert_eq!(line["method"], "POST", "{line}");
    assert_eq!(line["path"], "/reports", "{line}");
    assert_eq!(line["status"], 403, "{line}");
    assert_eq!(line["code"], "access_denied", "{line}");
    let line = fx.access_line("e-2").await;
    assert_eq!(line["status"], 429, "{line}");
    assert_eq!(line["code"], "rate_limited", "{line}");
    let log = std::fs::read_to_string(fx.files.dir.join("access.log")).unwrap();
    for secret in SECRETS {
        assert!(!log.contains(secret), "a secret in the access log: {log}");
    }
    assert_hits(&fx.files.up, 1, "verify calls forward nothing");
}

/// `[server] key_sources` apply to verify calls: a key the proxy copied from the client in
/// `Authorization: Bearer` or in a cookie is found there, as in the proxy mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_sources_apply_to_verify_calls() {
    let fx = Fwd::start_with("fwd-sources", |files| {
        let text = std::fs::read_to_string(&files.config).unwrap();
        let sources = "key_sources = [\"header:X-API-Key\", \"bearer\", \"cookie:kg_key\"]";
        let text = text.replacen("[server]\n", &format!("[server]\n{sources}\n"), 1);
        std::fs::write(&files.config, text).unwrap();
    })
    .await;
    let ask = async |headers: &[(&str, &str)]| {
        let mut h = vec![("x-forwarded-uri", "/x"), ("x-forwarded-method", "GET")];
        h.extend_from_slice(headers);
        verify_call(&fx, "GET", "/", &h).await
    };

    let bearer = format!("Bearer {MAIN}");
    let ok = ask(&[("authorization", &bearer)]).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.header("x-keygate-key-id"), Some("fwd-main"));
    let cookie = format!("theme=dark; kg_key={LIMITED}; lang=en");
    let ok = ask(&[("cookie", &cookie)]).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.header("x-keygate-key-id"), Some("fwd-limited"));
    let missing = ask(&[("cookie", "theme=dark")]).await;
    assert_keygate_refusal(&missing, 403, "key_missing");
    let wrong = format!("Bearer {WRONG}");
    assert_keygate_refusal(&ask(&[("authorization", &wrong)]).await, 403, "key_invalid");
}

/// `X-Forwarded-Proto` (Traefik, Caddy) is read with the rest of the description: `http`,
/// `https` and WebSocket's `ws` / `wss` (Traefik's for an upgrade) pass, any other scheme or the
/// header twice is 400 `invalid_request`, as an unreadable
/// method or URI is. From a peer outside `trusted_proxies` every such call is 403
/// `proxy_not_trusted`: the caller is checked before its headers are read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_proto_is_read_and_only_from_a_trusted_peer() {
    let fx = Fwd::start("fwd-proto").await;
    let call = async |from: &str, extra: &[(&'static str, &'static str)]| {
        let mut h = vec![
            ("x-api-key", MAIN),
            ("x-forwarded-method", "GET"),
            ("x-forwarded-host", "api.example.com"),
        ];
        h.extend_from_slice(extra);
        if !extra.iter().any(|(k, _)| *k == "x-forwarded-uri") {
            h.push(("x-forwarded-uri", "/x"));
        }
        send_from(from, fx.verify, "GET", "/", &h, "").await
    };
    let proto = |v| ("x-forwarded-proto", v);
    for ok in [
        &[][..],
        &[proto("https")],
        &[proto("http")],
        &[proto("HTTPS")],
        &[proto("https,http")],
        &[proto("wss")],
    ] {
        let resp = call("127.0.0.1", ok).await;
        assert_eq!(resp.status, 200, "{ok:?}: {}", resp.text());
        assert_eq!(resp.header("x-keygate-key-id"), Some("fwd-main"));
    }
    let bad: [&[(&str, &str)]; 5] = [
        &[proto("ftp")],
        &[proto("wsss")],
        &[proto("")],
        &[proto("https"), proto("http")],
        &[("x-forwarded-uri", "/a"), ("x-forwarded-uri", "/b")],
    ];
    for bad in bad {
        let resp = call("127.0.0.1", bad).await;
        assert_keygate_refusal(&resp, 400, "invalid_request");
        let resp = call(UNTRUSTED_PEER, bad).await;
        assert_keygate_refusal(&resp, 403, "proxy_not_trusted");
    }
    assert_eq!(fx.usage("fwd-main").await["total"]["requests"], 6);
    assert_hits(&fx.files.up, 0, "the verify listener forwards nothing");
}

/// The example config's commented `[verify]` block, switched on (its listener moved to a free
/// port, as the proxy's and the admin API's are), runs on the real binary and answers a verify
/// call for the demo key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_s_verify_block_works_when_switched_on() {
    // The demo key of config/keygate.toml, as the README's quick start uses it.
    const DEMO: &str = "kg_demo_secret_do_not_use_in_production";
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/keygate.toml"))
            .unwrap();
    assert!(example.contains(&keygate_hash(DEMO)), "the demo key's hash");
    let mut switched = String::new();
    let mut block = 0;
    let mut lines = example.lines();
    while let Some(line) = lines.next() {
        if line != "# [verify]" {
            switched.push_str(line);
            switched.push('\n');
            continue;
        }
        switched.push_str("[verify]\n");
        // The block's commented settings, up to its blank line.
        for setting in lines.by_ref().map_while(|l| l.strip_prefix("# ")) {
            block += 1;
            let setting =
                setting.replace("listen = \"127.0.0.1:8081\"", "listen = \"127.0.0.1:0\"");
            switched.push_str(&setting);
            switched.push('\n');
        }
        switched.push('\n');
    }
    assert!(
        block >= 2,
        "no commented [verify] block in config/keygate.toml"
    );
    assert!(
        switched.contains("\nlisten = \"127.0.0.1:0\""),
        "{switched}"
    );
    // The proxy and the admin API on free ports too.
    for port in ["8080", "9901"] {
        let from = format!("listen = \"127.0.0.1:{port}\"");
        assert!(switched.contains(&from), "no {from}");
        switched = switched.replacen(&from, "listen = \"127.0.0.1:0\"", 1);
    }
    let dir = Dir::new("example-verify");
    let config = dir.join("keygate.toml");
    std::fs::write(&config, &switched).unwrap();
    let mut kg = Process::start(&config).await;
    let verify = kg.wait_addr("verify listening").await;

    let call = async |key: &str| {
        let h = [
            ("x-api-key", key),
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "/"),
            ("x-forwarded-host", "localhost:8080"),
        ];
        send_from("127.0.0.1", verify, "GET", "/_keygate", &h, "").await
    };
    let ok = call(DEMO).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.header("x-keygate-key-id"), Some("demo"));
    assert_eq!(ok.header("x-keygate-consumer"), Some("acme"));
    assert!(ok.header("ratelimit-policy").is_some(), "{ok:?}");
    assert_keygate_refusal(&call(WRONG).await, 403, "key_invalid");
    kg.terminate_cleanly().await;
}
