//! The gateway builder and the request builder: a test says which targets, consumers and keys
//! its keygate has and what it sends, instead of writing TOML and a `call` helper of its own.
//!
//! ```ignore
//! let gw = gateway()
//!     .consumer(consumer("shop").rate_limit("2/minute"))
//!     .key(key("guarded", GUARDED).allow_ips(&["127.0.0.1"]).access("read-only"))
//!     .start()
//!     .await;
//! let resp = gw.get("/ok").key(GUARDED).from("127.0.0.2").send().await;
//! assert_problem(&resp, 403, "ip_not_allowed");
//! ```
//!
//! [`GatewayBuilder::start`] writes the config, starts one labelled echo upstream per distinct
//! label its targets name, and a real keygate (the library's proxy server, through
//! [`super::launch`]) on `127.0.0.1:0`. Every response [`Req::send`] reads is checked for the
//! shared test secrets and for every secret of the gateway's own keys.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::TcpListener;

use super::policy::{connect_from, ip};
use super::*;

/// `"text"` as a TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `["a", "b"]` as a TOML array of strings.
fn toml_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| toml_str(s)).collect();
    format!("[{}]", quoted.join(", "))
}

/// The lines of one table, each `name = value`, in the order given.
#[derive(Clone, Default)]
pub struct Lines(Vec<String>);

impl Lines {
    fn set(&mut self, name: &str, value: String) {
        self.0.push(format!("{name} = {value}"));
    }

    fn raw(&mut self, line: &str) {
        self.0.push(line.to_owned());
    }

    fn write(&self, out: &mut String) {
        for line in &self.0 {
            out.push_str(line);
            out.push('\n');
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What the gateway has
// ---------------------------------------------------------------------------------------------

/// Where a target sends its requests.
#[derive(Clone)]
enum Upstreamed {
    /// An echo upstream labelled so, started by the builder (one per label).
    Echo(String),
    /// `http://{addr}`: an upstream the test started (or a closed port).
    At(SocketAddr),
}

/// A `[[targets]]` table.
#[derive(Clone)]
pub struct Target {
    name: String,
    upstream: Upstreamed,
    lines: Lines,
}

/// Target `name` on `/`, any host, to an echo upstream labelled `name`.
pub fn target(name: &str) -> Target {
    Target {
        name: name.to_owned(),
        upstream: Upstreamed::Echo(name.to_owned()),
        lines: Lines::default(),
    }
}

impl Target {
    /// To the echo upstream labelled `label` (shared with every target that names it).
    pub fn echo(mut self, label: &str) -> Target {
        self.upstream = Upstreamed::Echo(label.to_owned());
        self
    }

    /// To `http://{addr}` instead of an echo upstream.
    pub fn upstream(mut self, addr: SocketAddr) -> Target {
        self.upstream = Upstreamed::At(addr);
        self
    }

    pub fn hosts(mut self, hosts: &[&str]) -> Target {
        self.lines.set("hosts", toml_list(hosts));
        self
    }

    pub fn path_prefix(mut self, prefix: &str) -> Target {
        self.lines.set("path_prefix", toml_str(prefix));
        self
    }

    /// Any other line of the table, as TOML (e.g. `timeout = "200ms"`).
    pub fn line(mut self, line: &str) -> Target {
        self.lines.raw(line);
        self
    }
}

/// What a consumer and a key can both be restricted by, and any other line of their table.
pub trait Restricted: Sized {
    #[doc(hidden)]
    fn lines(&mut self) -> &mut Lines;

    fn rate_limit(mut self, limit: &str) -> Self {
        self.lines().set("rate_limit", toml_str(limit));
        self
    }

    fn allow_ips(mut self, ips: &[&str]) -> Self {
        self.lines().set("allow_ips", toml_list(ips));
        self
    }

    fn allow_origins(mut self, origins: &[&str]) -> Self {
        self.lines().set("allow_origins", toml_list(origins));
        self
    }

    fn targets(mut self, targets: &[&str]) -> Self {
        self.lines().set("targets", toml_list(targets));
        self
    }

    /// Any other line of the table, as TOML (e.g. `status = "inactive"`). A `# comment` is
    /// kept as written.
    fn line(mut self, line: &str) -> Self {
        self.lines().raw(line);
        self
    }
}

/// A `[[consumers]]` table.
#[derive(Clone)]
pub struct Consumer {
    id: String,
    lines: Lines,
}

/// Consumer `id`, without restrictions until given some.
pub fn consumer(id: &str) -> Consumer {
    Consumer {
        id: id.to_owned(),
        lines: Lines::default(),
    }
}

impl Restricted for Consumer {
    fn lines(&mut self) -> &mut Lines {
        &mut self.lines
    }
}

/// A `[[keys]]` table.
#[derive(Clone)]
pub struct Key {
    id: String,
    secret: String,
    hashed: bool,
    lines: Lines,
}

/// Key `id` with `secret`, stored as the plaintext `secret`, without restrictions until given
/// some.
pub fn key(id: &str, secret: &str) -> Key {
    Key {
        id: id.to_owned(),
        secret: secret.to_owned(),
        hashed: false,
        lines: Lines::default(),
    }
}

impl Key {
    /// Stored as `hash = "sha256:…"` instead of the plaintext secret.
    pub fn hashed(mut self) -> Key {
        self.hashed = true;
        self
    }

    pub fn consumer(mut self, id: &str) -> Key {
        self.lines.set("consumer", toml_str(id));
        self
    }

    /// `"read-only"` or `"read-write"`.
    pub fn access(mut self, access: &str) -> Key {
        self.lines.set("access", toml_str(access));
        self
    }

    pub fn paths(mut self, paths: &[&str]) -> Key {
        self.lines.set("paths", toml_list(paths));
        self
    }
}

impl Restricted for Key {
    fn lines(&mut self) -> &mut Lines {
        &mut self.lines
    }
}

// ---------------------------------------------------------------------------------------------
// The builder
// ---------------------------------------------------------------------------------------------

/// What a test's keygate has; [`GatewayBuilder::start`] runs it.
#[derive(Clone)]
pub struct GatewayBuilder {
    server: Lines,
    targets: Vec<Target>,
    consumers: Vec<Consumer>,
    keys: Vec<Key>,
    shared_keys: bool,
    listen: SocketAddr,
}

/// A gateway with nothing yet: without a [`GatewayBuilder::target`], it gets one any-host
/// target `main` on `/` to an echo upstream labelled `main`.
pub fn gateway() -> GatewayBuilder {
    GatewayBuilder {
        server: Lines::default(),
        targets: Vec::new(),
        consumers: Vec::new(),
        keys: Vec::new(),
        shared_keys: false,
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
    }
}

/// A gateway with the shared test keys ([`GatewayBuilder::shared_keys`]) and one any-host target
/// `main` on `/` to `upstream`, an upstream the test started itself.
pub async fn gateway_to(upstream: SocketAddr) -> Gw {
    gateway()
        .target(target("main").upstream(upstream))
        .shared_keys()
        .start()
        .await
}

impl GatewayBuilder {
    pub fn target(mut self, target: Target) -> GatewayBuilder {
        self.targets.push(target);
        self
    }

    pub fn consumer(mut self, consumer: Consumer) -> GatewayBuilder {
        self.consumers.push(consumer);
        self
    }

    pub fn key(mut self, key: Key) -> GatewayBuilder {
        self.keys.push(key);
        self
    }

    /// The shared test keys and consumer `acme` ([`keys_toml`]: `primary` is [`SECRET`], …).
    pub fn shared_keys(mut self) -> GatewayBuilder {
        self.shared_keys = true;
        self
    }

    /// A line of the `[server]` table, as TOML (e.g. `trusted_proxies = ["10.0.0.0/8"]`).
    pub fn server(mut self, line: &str) -> GatewayBuilder {
        self.server.raw(line);
        self
    }

    /// The address keygate listens on (default `127.0.0.1:0`).
    pub fn listen(mut self, addr: SocketAddr) -> GatewayBuilder {
        self.listen = addr;
        self
    }

    fn targets(&self) -> Vec<Target> {
        if self.targets.is_empty() {
            vec![target("main")]
        } else {
            self.targets.clone()
        }
    }

    /// The config text, with each echo label's upstream at `echo(label)`.
    fn config(&self, echo: impl Fn(&str) -> SocketAddr) -> String {
        let mut out = String::new();
        if !self.server.0.is_empty() {
            out.push_str("[server]\n");
            self.server.write(&mut out);
            out.push('\n');
        }
        for t in self.targets() {
            let addr = match &t.upstream {
                Upstreamed::Echo(label) => echo(label),
                Upstreamed::At(addr) => *addr,
            };
            out.push_str(&format!(
                "[[targets]]\nname = {}\nupstream = \"http://{addr}\"\n",
                toml_str(&t.name)
            ));
            t.lines.write(&mut out);
            out.push('\n');
        }
        for c in &self.consumers {
            out.push_str(&format!("[[consumers]]\nid = {}\n", toml_str(&c.id)));
            c.lines.write(&mut out);
            out.push('\n');
        }
        for k in &self.keys {
            let stored = if k.hashed {
                format!("hash = {}", toml_str(&hash_of(&k.secret)))
            } else {
                format!("secret = {}", toml_str(&k.secret))
            };
            out.push_str(&format!("[[keys]]\nid = {}\n{stored}\n", toml_str(&k.id)));
            k.lines.write(&mut out);
            out.push('\n');
        }
        if self.shared_keys {
            out.push_str(&keys_toml());
        }
        out
    }

    /// Starts the echo upstreams and keygate; fails the test if the address cannot be bound.
    pub async fn start(self) -> Gw {
        let listen = self.listen;
        match self.try_start().await {
            Some(gw) => gw,
            None => panic!("cannot listen on {listen}"),
        }
    }

    /// Like [`GatewayBuilder::start`]; `None` when the listen address cannot be bound here (e.g.
    /// no IPv6 loopback), so that a test can skip.
    pub async fn try_start(self) -> Option<Gw> {
        watch_panics();
        let mut ups: Vec<(String, Upstream)> = Vec::new();
        for t in self.targets() {
            if let Upstreamed::Echo(label) = &t.upstream
                && !ups.iter().any(|(l, _)| l == label)
            {
                ups.push((label.clone(), start_upstream(label).await));
            }
        }
        let config = self.config(|label| {
            ups.iter()
                .find(|(l, _)| l == label)
                .map(|(_, up)| up.addr)
                .unwrap_or_else(|| panic!("no echo upstream {label}"))
        });
        // Checked before binding, so that an invalid config fails the test even where the
        // address cannot be bound.
        if let Err(e) = keygate::config::parse(&config, std::path::Path::new("test.toml")) {
            panic!("test config is invalid: {e}\n---\n{config}");
        }
        let listener = match TcpListener::bind(self.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("note: cannot listen on {} here ({e})", self.listen);
                return None;
            }
        };
        let addr = listener.local_addr().unwrap();
        launch::spawn_proxy(&config, listener);
        let keys: Vec<(String, String)> = self
            .keys
            .iter()
            .map(|k| (k.id.clone(), k.secret.clone()))
            .collect();
        let mut secrets: Vec<String> = self.keys.iter().map(|k| k.secret.clone()).collect();
        secrets.extend(ALL_SECRETS.iter().map(|s| (*s).to_owned()));
        Some(Gw {
            addr,
            ups,
            keys: keys.into(),
            secrets: secrets.into(),
            config,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The running gateway and its requests
// ---------------------------------------------------------------------------------------------

/// A running keygate and its echo upstreams.
pub struct Gw {
    pub addr: SocketAddr,
    ups: Vec<(String, Upstream)>,
    /// Its keys' ids and secrets.
    keys: Arc<[(String, String)]>,
    secrets: Arc<[String]>,
    /// The config it runs, as written.
    pub config: String,
}

impl Gw {
    /// The echo upstream labelled `label`.
    #[track_caller]
    pub fn up(&self, label: &str) -> &Upstream {
        match self.ups.iter().find(|(l, _)| l == label) {
            Some((_, up)) => up,
            None => panic!("no echo upstream {label}"),
        }
    }

    /// The secret of its key `id`.
    #[track_caller]
    pub fn secret(&self, id: &str) -> &str {
        match self.keys.iter().find(|(k, _)| k == id) {
            Some((_, secret)) => secret,
            None => panic!("no key {id} in this gateway"),
        }
    }

    /// Requests that reached any of its echo upstreams.
    pub fn hits(&self) -> usize {
        self.ups.iter().map(|(_, up)| up.hits()).sum()
    }

    /// GETs each of `paths` with `secret` in `X-API-Key`: each must reach the upstream with its
    /// path and query unchanged.
    pub async fn assert_paths_reach_the_upstream_unchanged(&self, secret: &str, paths: &[&str]) {
        for path in paths {
            let echo = self.get(path).key(secret).echo().await;
            assert_eq!(echo.uri, *path, "the path reaches the upstream unchanged");
        }
    }

    /// A GET of `path` (origin form, sent as given).
    pub fn get(&self, path: &str) -> Req {
        self.request("GET", path)
    }

    /// A `method` request for `path` (origin form, sent as given).
    pub fn request(&self, method: &str, path: &str) -> Req {
        Req {
            addr: self.addr,
            method: method.to_owned(),
            path: path.to_owned(),
            headers: Vec::new(),
            from: None,
            body: None,
            h2: false,
            keys: self.keys.clone(),
            secrets: self.secrets.clone(),
        }
    }

    /// Fails if `resp` carries a secret of this gateway's keys or a shared test secret.
    #[track_caller]
    pub fn assert_no_secret(&self, resp: &Resp) {
        assert_none_of(resp, self.secrets.iter().map(String::as_str));
    }
}

/// One request to a [`Gw`], sent on a fresh connection by [`Req::send`].
#[must_use = "a request does nothing until sent"]
pub struct Req {
    addr: SocketAddr,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    from: Option<IpAddr>,
    body: Option<Bytes>,
    h2: bool,
    keys: Arc<[(String, String)]>,
    secrets: Arc<[String]>,
}

impl Req {
    /// `X-API-Key: secret`.
    pub fn key(self, secret: &str) -> Req {
        self.header("x-api-key", secret)
    }

    /// A header line; a name given twice is sent twice. `host` replaces the default [`HOST`].
    pub fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// `X-API-Key` with the secret of the gateway's key `id`.
    #[track_caller]
    pub fn key_of(self, id: &str) -> Req {
        let secret = match self.keys.iter().find(|(k, _)| k == id) {
            Some((_, secret)) => secret.clone(),
            None => panic!("no key {id} in this gateway"),
        };
        self.key(&secret)
    }

    /// Header lines, in order (see [`Req::header`]).
    pub fn headers(mut self, headers: &[(&str, &str)]) -> Req {
        for (name, value) in headers {
            self = self.header(name, value);
        }
        self
    }

    /// `Host` (HTTP/1.1) or `:authority` (HTTP/2).
    pub fn host(self, host: &str) -> Req {
        self.header("host", host)
    }

    /// From this loopback source address (e.g. `127.0.0.2`) instead of 127.0.0.1.
    pub fn from(mut self, source: &str) -> Req {
        self.from = Some(ip(source));
        self
    }

    /// To `addr` instead of the gateway's own address (e.g. its port over another family).
    pub fn to(mut self, addr: SocketAddr) -> Req {
        self.addr = addr;
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Req {
        self.body = Some(body.into());
        self
    }

    /// Over HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1.
    pub fn h2(mut self) -> Req {
        self.h2 = true;
        self
    }

    /// Sends it and checks that keygate refused it with `status` and problem `code`
    /// ([`assert_problem`]); returns the problem. (A failure names the harness's line; the
    /// message says what came instead.)
    pub async fn problem(self, status: u16, code: &str) -> serde_json::Value {
        assert_problem(&self.send().await, status, code)
    }

    /// Sends it and returns what the echo upstream saw (failing unless it answered 200).
    pub async fn echo(self) -> Echo {
        self.send().await.echo()
    }

    /// [`Req::echo`], checking that keygate forwarded it as key `key_id` (the upstream saw
    /// `X-Keygate-Key-Id: key_id`).
    pub async fn echo_as(self, key_id: &str) -> Echo {
        let echo = self.echo().await;
        assert_eq!(echo.one("x-keygate-key-id"), Some(key_id), "{echo:?}");
        echo
    }

    /// Sends it on a fresh connection and reads the whole response, checked for secrets.
    pub async fn send(self) -> Resp {
        let body = self.body.clone().map_or_else(empty, full);
        let resp = if self.h2 {
            assert!(self.from.is_none(), "HTTP/2 from another source: not built");
            let authority = self
                .headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("host"))
                .map_or(HOST, |(_, v)| v.as_str());
            let headers: Vec<(&str, &str)> = self
                .headers
                .iter()
                .filter(|(k, _)| !k.eq_ignore_ascii_case("host"))
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let req = h2_request(&self.method, authority, &self.path, &headers, body);
            H2::connect(self.addr).await.send(req).await
        } else {
            let headers: Vec<(&str, &str)> = self
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let req = request(&self.method, &self.path, &headers, body);
            let mut conn = match self.from {
                Some(from) => connect_from(from, self.addr).await,
                None => H1::connect(self.addr).await,
            };
            conn.send(req).await
        };
        assert_none_of(&resp, self.secrets.iter().map(String::as_str));
        resp
    }
}

/// The check every [`Req::send`] makes: a secret of the gateway's own keys (not only the shared
/// test secrets) that comes back in a response fails the test. The echo upstream reflects every
/// request header, so one sent in another header comes back in the body.
#[tokio::test]
#[should_panic(expected = "a secret came back in the response body")]
async fn a_secret_of_the_gateways_own_keys_coming_back_fails_the_request() {
    const OWN: &str = "kg_own_aGFybmVzc1NlbGZUZXN0T3duS2V5XzAwMDAwMDAwMDE";
    let gw = gateway().key(key("own", OWN)).start().await;
    let _ = gw.get("/r").key(OWN).header("x-copy", OWN).send().await;
}
