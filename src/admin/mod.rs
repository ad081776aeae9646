//! The admin API: JSON over HTTP on its own listener (`[admin] listen`), never the proxy port.
//!
//! Callers present an `[[admin_keys]]` secret in `X-API-Key`; `read` may list and get, `admin`
//! may also change. Reads come from the published snapshot. Writes go through the [`Store`]
//! (validate, write temp, fsync, rename) on a blocking thread and are then published by the
//! reloader, so a key created here works on the proxy as soon as the response is sent, and a
//! deleted one is refused.
//!
//! Errors are problem+json rendered by `http::problem`, as the proxy's are, with these `code`s:
//! `key_missing`, `key_invalid`, `role_insufficient` (403), `too_many_failures` (429, after
//! `[server] failed_auth_limit` wrong keys from one address), `invalid_body`, `invalid_field`,
//! `invalid_change` (400), `not_found` (404), `method_not_allowed` (405, with `Allow`),
//! `key_read_only`, `consumer_read_only`, `id_taken`, `key_limit_reached`, `consumer_in_use`,
//! `no_keys_file`, `store_invalid` (409), `internal` (500, whose detail never carries the cause:
//! that is logged). docs/admin-api.yaml says exactly what each endpoint accepts; the store
//! checks every number's range.

mod console;
mod quota;
pub mod session;
mod usage;

use std::future::Future;
use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::http::body::RequestBody;
use bytes::Bytes;
use futures_util::FutureExt as _;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, SET_COOKIE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::net::TcpListener;

use crate::audit::{self, Actor};
use crate::cluster::Cluster;
use crate::http::problem;
use crate::http::request_id;
use crate::limits::FailedAuth;
use crate::metrics::{self, Metrics};
use crate::model::Quota;
use crate::proxy::credential;
use crate::proxy::deny::Deny;
use crate::reload::{Outcome, Reloader};
use crate::secret::KeyHash;
use crate::snapshot::{Access, Consumer, Role, Snapshot, Status};
use crate::state::quotas::{Counter, Owner, Used};
use crate::state::{Live, Published};
use crate::store::{self, Store, StoreError, Written};

/// The header admin keys are read from (the proxy's `key_header` may be another).
const ADMIN_KEY_HEADER: http::HeaderName = http::HeaderName::from_static("x-api-key");
/// The proxy's reader, given the admin key's one place.
static ADMIN_KEY_SOURCES: [crate::model::KeySource; 1] =
    [crate::model::KeySource::Header(ADMIN_KEY_HEADER)];
/// Largest request body accepted: key and consumer documents are a few hundred bytes.
const MAX_BODY: usize = 64 * 1024;
/// Page size of list endpoints when `?limit=` is absent, and the most it may ask for.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// What the admin API works on.
pub struct Admin {
    published: Arc<Published>,
    store: Arc<Store>,
    /// Wrong admin keys per client address, limited by `[server] failed_auth_limit` like the
    /// proxy's: an admin key is worth more than any API key, so guessing it must be as slow.
    failures: FailedAuth,
    epoch: std::time::Instant,
    /// The proxy listener is serving: set once its workers run, cleared when draining starts.
    ready: Arc<AtomicBool>,
    /// What `GET /metrics` reports.
    metrics: Arc<Metrics>,
    /// `[cluster]`: where the fleet's last-used times are.
    cluster: Option<Arc<Cluster>>,
    /// The console's signed-in people.
    sessions: session::Sessions,
    /// The admin listener serves HTTPS (`[admin.tls]`): session cookies are `Secure`.
    https: bool,
    /// `[usage]`: what the usage endpoints read (`None`: counting is off).
    usage: Option<Arc<crate::usage::Usage>>,
}

/// Who is calling, and how they proved it.
struct Caller {
    actor: Actor,
    role: Role,
    /// With the console's cookie: its token and session.
    session: Option<(String, session::Session)>,
}

/// Addresses tracked for failed admin logins (32 KiB): the admin port sees few clients.
const ADMIN_FAILURE_SLOTS: usize = 4096;

impl Admin {
    /// With a `cluster`, every change is announced to the other instances once published here.
    pub fn new(
        published: Arc<Published>,
        reloader: Arc<Reloader>,
        metrics: Arc<Metrics>,
        cluster: Option<Arc<Cluster>>,
    ) -> Admin {
        // The store publishes each change under its lock, so changes publish in write order.
        let adopt = reloader.clone();
        let runtime = tokio::runtime::Handle::try_current().ok();
        let fleet = cluster.clone();
        let publish: store::Publisher = Box::new(move |loaded, main_text| {
            let outcome = adopt.adopt(loaded, main_text);
            if let (Some(cluster), Some(runtime), Outcome::Published { generation, .. }) =
                (&fleet, &runtime, outcome)
            {
                let cluster = cluster.clone();
                runtime.spawn(async move { cluster.announce(generation).await });
            }
        });
        let store = Arc::new(Store::publishing(reloader.path().to_path_buf(), publish));
        Admin {
            published,
            store,
            failures: FailedAuth::new(ADMIN_FAILURE_SLOTS),
            epoch: std::time::Instant::now(),
            ready: Arc::new(AtomicBool::new(false)),
            metrics,
            cluster,
            sessions: session::Sessions::default(),
            https: false,
            usage: None,
        }
    }

    /// Keeps the default keys the config asks for: at start and after each new config
    /// generation (a reload of a hand edit that adds `default_key = true`), makes those that
    /// are missing. Runs until the runtime stops.
    pub async fn keep_default_keys(self: Arc<Self>) {
        let mut seen = 0;
        loop {
            let generation = self.published.generation();
            if generation != seen {
                seen = generation;
                let admin = self.clone();
                let _ = tokio::task::spawn_blocking(move || admin.ensure_default_keys()).await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Makes the default keys the config asks for and lacks (`default_key = true` written by
    /// hand), audited as keygate's. Blocking.
    fn ensure_default_keys(&self) {
        let snap = self.published.load();
        if store::missing_default_keys(&snap).is_empty() || snap.keys_file.is_none() {
            return;
        }
        let actor = Actor {
            id: "keygate".into(),
            source_ip: None,
            os_user: None,
        };
        match self.store.ensure_default_keys(&self.secret_prefix()) {
            Ok(written) => {
                for (consumer, id) in written.value {
                    tracing::info!(%consumer, key = %id, "made the consumer's default key; rotate it to see a secret");
                    let after = self.key_value(&id);
                    let entry = audit::Entry {
                        actor: &actor,
                        action: "key.create",
                        object: &id,
                        changes: audit::changes(&Value::Null, &after),
                    };
                    if let Some(path) = audit::path_of(&self.published.load())
                        && let Err(e) = audit::append(&path, &entry, std::time::SystemTime::now())
                    {
                        tracing::error!(error = %e, "the audit log could not be written");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not make the consumers' default keys"),
        }
    }

    /// Answers the usage endpoints from `usage`.
    pub fn with_usage(mut self, usage: Option<Arc<crate::usage::Usage>>) -> Admin {
        self.usage = usage;
        self
    }

    /// The admin listener serves HTTPS: session cookies are marked `Secure`.
    pub fn with_https(mut self, https: bool) -> Admin {
        self.https = https;
        self
    }

    /// The flag `GET /readyz` reports: the caller sets it when the proxy serves and clears it
    /// when it stops accepting.
    pub fn readiness(&self) -> Arc<AtomicBool> {
        self.ready.clone()
    }

    /// `GET /healthz`, `GET /readyz` and `GET /metrics`, for load balancers, Kubernetes probes
    /// and Prometheus: no key, no secret in the answer. `None` for any other request.
    /// Other methods on these paths are not probes: they need a key like any other request,
    /// then get a 405.
    fn probe(&self, req: &Request<RequestBody>) -> Option<Answer> {
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            return None;
        }
        let (status, body) = match req.uri().path() {
            "/metrics" => return Some(Ok(metrics::response(&self.metrics, &self.published))),
            "/healthz" => (StatusCode::OK, serde_json::json!({"status": "ok"})),
            "/readyz" => {
                let snap = self.published.load();
                if self.ready.load(Ordering::Relaxed) {
                    let body = serde_json::json!({
                        "status": "ready",
                        "generation": self.published.generation(),
                        "keys": snap.keys.len(),
                    });
                    (StatusCode::OK, body)
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        serde_json::json!({"status": "not_ready"}),
                    )
                }
            }
            _ => return None,
        };
        let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Some(Ok(resp))
    }
}

/// Serves the admin API on `listener` until `shutdown` completes, behind the same front and
/// edge limits as the proxy.
pub async fn serve(
    listener: TcpListener,
    admin: Arc<Admin>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    use crate::http::listener::{self, Connection, Front, Worker};
    let front = Front::new("admin", admin.published.clone())
        .with_tls(tls)
        .with_handshake_timeout(|snap| {
            let tls = snap.admin.as_ref().and_then(|a| a.tls.as_ref());
            tls.map(|t| t.handshake_timeout)
        });
    let handler = move |req: Request<RequestBody>, conn: &Connection| {
        let (admin, peer) = (admin.clone(), conn.peer.ip());
        async move { admin.handle(req, peer).await }
    };
    listener::serve(listener, front, Worker::new(handler), shutdown).await;
}

/// An admin API failure: status, `code`, and a detail for people.
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    code: &'static str,
    detail: String,
    field: Option<String>,
    /// Seconds, for a 429.
    retry_after: Option<u64>,
    /// The methods the path does support, for a 405's `Allow` (RFC 9110 §15.5.6).
    allow: Option<&'static str>,
}

impl Problem {
    fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            code,
            detail: detail.into(),
            field: None,
            retry_after: None,
            allow: None,
        }
    }

    /// A 500 whose detail says nothing about the cause: the cause (a panic's message, an I/O
    /// error's path) is for the log, never for the client.
    fn internal() -> Problem {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "The admin API failed to complete the request; the cause is in keygate's log.",
        )
    }

    fn not_found(what: &str, id: &str) -> Problem {
        Problem::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} {id:?} does not exist"),
        )
    }
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Problem {
        let detail = e.to_string();
        let (status, code) = match &e {
            StoreError::NoKeysFile => (StatusCode::CONFLICT, "no_keys_file"),
            StoreError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            StoreError::ReadOnly { what: "key", .. } => (StatusCode::CONFLICT, "key_read_only"),
            StoreError::ReadOnly { .. } => (StatusCode::CONFLICT, "consumer_read_only"),
            StoreError::Taken { .. } => (StatusCode::CONFLICT, "id_taken"),
            StoreError::KeyLimit(_) => {
                // Named, so that a form shows it beside the consumer it chose.
                let mut p = Problem::new(StatusCode::CONFLICT, "key_limit_reached", detail);
                p.field = Some("consumer".into());
                return p;
            }
            StoreError::ConsumerInUse(_) => (StatusCode::CONFLICT, "consumer_in_use"),
            StoreError::BadField { field, .. } => {
                let mut p = Problem::new(StatusCode::BAD_REQUEST, "invalid_field", detail);
                p.field = Some((*field).to_owned());
                return p;
            }
            StoreError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_change"),
            StoreError::CurrentInvalid(_) => (StatusCode::CONFLICT, "store_invalid"),
            StoreError::Io { .. } => {
                tracing::error!("admin change failed: {e}");
                return Problem::internal();
            }
        };
        Problem::new(status, code, detail)
    }
}

type Answer = Result<Response<Full<Bytes>>, Problem>;

impl Admin {
    async fn handle(&self, req: Request<RequestBody>, peer: IpAddr) -> Response<Full<Bytes>> {
        let request_id = request_id::of(req.headers());
        let answer = or_internal(async {
            if let Some(page) = console_file(&req) {
                return Ok(page);
            }
            match self.probe(&req) {
                Some(answer) => answer,
                None => self.route(req, peer).await,
            }
        })
        .await;
        let mut resp = match answer {
            Ok(resp) => resp,
            Err(p) => problem(&p, &request_id),
        };
        let h = resp.headers_mut();
        h.insert(request_id::X_REQUEST_ID, request_id);
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        // Every answer, not only the page's: a JSON answer opened as a document is then inert.
        h.insert(
            http::header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(console::CSP),
        );
        h.insert(
            http::header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        h.insert(
            http::header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        );
        h.insert(
            http::header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        resp
    }

    /// Who calls: an admin key in `X-API-Key`, else the console's session cookie. A session's
    /// changes must also pass [`same_origin`].
    async fn caller(&self, req: &Request<RequestBody>, peer: IpAddr) -> Result<Caller, Problem> {
        let headers = req.headers();
        let token = session::token(headers);
        if headers.contains_key(&ADMIN_KEY_HEADER) || token.is_none() {
            let key = self.admin_key(req, peer)?;
            return Ok(Caller {
                actor: Actor::admin(key.id.as_str(), peer),
                role: key.role,
                session: None,
            });
        }
        let token = token.unwrap_or_default();
        let snap = self.published.load();
        let (idle, max) = session_limits(&snap);
        let ended = || {
            Problem::new(
                StatusCode::FORBIDDEN,
                "session_expired",
                "The console session has ended: sign in again.",
            )
        };
        let session = match self.shared_session(token, idle, max).await {
            Some(shared) => shared.ok_or_else(ended)?,
            None => self
                .sessions
                .touch(token, std::time::Instant::now(), idle, max)
                .map_err(|_| ended())?,
        };
        // The admin key may have been removed, given a new secret (it leaked?) or another role
        // since sign-in: the session is the secret signed in with, not only the id.
        let Some(role) = snap
            .admin
            .as_ref()
            .and_then(|a| a.keys.get(&session.admin_hash))
            .filter(|k| k.id.as_str() == session.admin_id)
            .map(|k| k.role)
        else {
            self.close_session(token).await;
            return Err(ended());
        };
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            same_origin(req, &session, self.https_for(req, peer))?;
        }
        Ok(Caller {
            actor: Actor::admin(&session.admin_id, peer),
            role,
            session: Some((token.to_owned(), session)),
        })
    }

    /// With `[cluster]`, the session `token` as the fleet has it, so that a console can talk to
    /// any instance behind a load balancer: `Some(Some)` open, `Some(None)` ended, `None` when
    /// there is no cluster or Redis cannot say (this instance's own sessions then decide).
    async fn shared_session(
        &self,
        token: &str,
        idle: Duration,
        max: Duration,
    ) -> Option<Option<session::Session>> {
        let cluster = self.cluster.as_ref()?;
        let hash = KeyHash::of(token.as_bytes()).to_string();
        let now = std::time::SystemTime::now();
        let shared = cluster
            .session_touch(&hash, unix_ms(now), idle, max)
            .await
            .ok()?;
        Some(shared.and_then(|s| {
            let admin_hash = KeyHash::parse(&s.admin_hash)?;
            let age = Duration::from_millis(unix_ms(now).saturating_sub(s.started_ms));
            let started = std::time::Instant::now().checked_sub(age)?;
            Some(session::Session::restored(
                s.admin_id, admin_hash, s.csrf, started,
            ))
        }))
    }

    /// Ends the session `token` here and, with `[cluster]`, on every instance.
    async fn close_session(&self, token: &str) {
        self.sessions.close(token);
        if let Some(cluster) = &self.cluster {
            cluster
                .session_close(&KeyHash::of(token.as_bytes()).to_string())
                .await;
        }
    }

    /// Checks a sign-in or `X-API-Key` secret against `[[admin_keys]]`, throttling wrong ones
    /// per address like `failed_auth_limit`.
    fn check_secret(&self, secret: &[u8], peer: IpAddr) -> Result<crate::model::AdminKey, Problem> {
        let ip = crate::proxy::client_ip::canonical(peer);
        let (limit, now) = (
            self.published.load().server.failed_auth_limit,
            self.epoch.elapsed(),
        );
        if let Err(secs) = self.failures.blocked(ip, limit, now) {
            let mut p = Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_failures",
                "Too many requests with invalid admin keys from this address.",
            );
            p.retry_after = Some(secs);
            return Err(p);
        }
        let snap = self.published.load();
        let found = snap
            .admin
            .as_ref()
            .and_then(|a| a.keys.get(&KeyHash::of(secret)));
        match found {
            Some(k) => Ok(k.clone()),
            None => {
                self.failures.record(ip, limit, now);
                Err(Problem::new(
                    StatusCode::FORBIDDEN,
                    "key_invalid",
                    "The admin key is not valid.",
                ))
            }
        }
    }

    /// The admin key in `X-API-Key`.
    fn admin_key(
        &self,
        req: &Request<RequestBody>,
        peer: IpAddr,
    ) -> Result<crate::model::AdminKey, Problem> {
        // The proxy's reader, without a query parameter: the same hostile values (the header
        // twice, an over-long value) are refused the same way on both fronts.
        let secret = match credential::extract(req.headers(), None, &ADMIN_KEY_SOURCES) {
            Ok(secret) => secret,
            Err(Deny::KeyMissing) => {
                return Err(Problem::new(
                    StatusCode::FORBIDDEN,
                    "key_missing",
                    "Send an admin key in the X-API-Key header, or sign in to the console.",
                ));
            }
            Err(_) => {
                return Err(Problem::new(
                    StatusCode::FORBIDDEN,
                    "key_invalid",
                    "X-API-Key must be given once, and at most 512 bytes long.",
                ));
            }
        };
        self.check_secret(&secret, peer)
    }

    /// `POST /v1/session`: an admin key for a session cookie.
    async fn sign_in(&self, req: Request<RequestBody>, peer: IpAddr) -> Answer {
        let anonymous = Actor::admin("anonymous", peer);
        // A sign-in from another site would sign the browser in as someone else.
        let https = self.https_for(&req, peer);
        if !origin_is_own(&req, https) {
            return Err(cross_site());
        }
        let SignIn { key } = body(req).await?;
        let admin = match self.check_secret(key.as_bytes(), peer) {
            Ok(admin) => admin,
            Err(mut p) => {
                if p.code == "key_invalid" {
                    p.field = Some("key".into());
                    self.audit(
                        &anonymous,
                        "session.sign_in_failed",
                        "",
                        &Value::Null,
                        &Value::Null,
                    )
                    .await?;
                }
                return Err(p);
            }
        };
        let now = std::time::Instant::now();
        let (token, session) = self
            .sessions
            .open(admin.id.as_str(), KeyHash::of(key.as_bytes()), now)
            .map_err(|e| {
                tracing::error!(error = %e, "no randomness for a session token");
                Problem::internal()
            })?;
        if let Some(cluster) = &self.cluster {
            let shared = crate::cluster::SharedSession {
                admin_id: admin.id.to_string(),
                admin_hash: KeyHash::of(key.as_bytes()).to_string(),
                csrf: session.csrf.clone(),
                started_ms: unix_ms(std::time::SystemTime::now()),
            };
            let (idle, _) = session_limits(&self.published.load());
            let hash = KeyHash::of(token.as_bytes()).to_string();
            if !cluster.session_open(&hash, &shared, idle).await {
                tracing::warn!(
                    "Redis did not take the console session: it works on this instance only"
                );
            }
        }
        let actor = Actor::admin(admin.id.as_str(), peer);
        self.audit(
            &actor,
            "session.sign_in",
            admin.id.as_str(),
            &Value::Null,
            &Value::Null,
        )
        .await?;
        let mut resp = json(StatusCode::OK, &self.session_view(&session, admin.role))?;
        if let Ok(v) = HeaderValue::from_str(&session::set_cookie(&token, https)) {
            resp.headers_mut().insert(SET_COOKIE, v);
        }
        Ok(resp)
    }

    /// The browser reached the console over HTTPS: this listener's own TLS, or a TLS-ending
    /// proxy of `[server] trusted_proxies` that says so in `X-Forwarded-Proto`. The origin a
    /// change must come from, and whether the cookie is `Secure`, follow.
    fn https_for(&self, req: &Request<RequestBody>, peer: IpAddr) -> bool {
        if self.https {
            return true;
        }
        let snap = self.published.load();
        let trusted = &snap.server.trusted_proxies;
        let peer = crate::proxy::client_ip::canonical(peer);
        !trusted.is_empty()
            && trusted.allows(peer)
            && req
                .headers()
                .get("x-forwarded-proto")
                .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"))
    }

    fn session_view(&self, s: &session::Session, role: Role) -> Value {
        let snap = self.published.load();
        let (idle, max) = session_limits(&snap);
        let left = max.saturating_sub(s.started.elapsed());
        serde_json::json!({
            "id": s.admin_id,
            "role": role,
            "csrf_token": s.csrf,
            "idle_seconds": idle.as_secs(),
            "expires_at": store::rfc3339(std::time::SystemTime::now() + left),
        })
    }

    /// Records a change in the audit log before it is reported done; a change that cannot be
    /// recorded is reported as failed (it was made: the log says why it was not recorded).
    async fn audit(
        &self,
        actor: &Actor,
        action: &'static str,
        object: &str,
        before: &Value,
        after: &Value,
    ) -> Result<(), Problem> {
        let Some(path) = audit::path_of(&self.published.load()) else {
            return Ok(());
        };
        let (actor, object) = (actor.clone(), object.to_owned());
        let changes = audit::changes(before, after);
        let written = tokio::task::spawn_blocking(move || {
            let entry = audit::Entry {
                actor: &actor,
                action,
                object: &object,
                changes,
            };
            audit::append(&path, &entry, std::time::SystemTime::now())
                .map_err(|e| format!("{}: {e}", path.display()))
        })
        .await;
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                tracing::error!(error = %e, action, "the audit log could not be written");
                Err(Problem::internal())
            }
            Err(e) => {
                tracing::error!(error = %e, action, "the audit log could not be written");
                Err(Problem::internal())
            }
        }
    }

    /// A key as the API shows it now, `null` when there is none.
    fn key_value(&self, id: &str) -> Value {
        let snap = self.published.load();
        find_key(&snap, id).map_or(Value::Null, |i| key_json(&snap, i, None))
    }

    /// A consumer as the API shows it now, `null` when there is none.
    fn consumer_value(&self, id: &str) -> Value {
        let snap = self.published.load();
        find_consumer(&snap, id).map_or(Value::Null, |c| consumer_json(&snap, c))
    }

    async fn route(&self, req: Request<RequestBody>, peer: IpAddr) -> Answer {
        let path = req.uri().path().to_owned();
        let segments: Vec<String> = path
            .trim_matches('/')
            .split('/')
            .map(|s| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .collect();
        let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
        let method = req.method().clone();
        if segs == ["v1", "session"] && method == Method::POST {
            return self.sign_in(req, peer).await;
        }
        let caller = self.caller(&req, peer).await?;
        let writes = method != Method::GET && method != Method::HEAD;
        let Some(allow) = allowed(&segs) else {
            return Err(Problem::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no endpoint {path}"),
            ));
        };
        // Signing out changes nothing but the caller's own session.
        let own_session = segs == ["v1", "session"];
        if writes && caller.role < Role::Admin && !own_session {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "role_insufficient",
                "This admin key may only read.",
            ));
        }
        if !allow.split(", ").any(|m| m == method.as_str()) {
            return Err(not_allowed(&method, &path, allow));
        }
        let query = req.uri().query().unwrap_or_default().to_owned();
        let actor = &caller.actor;
        match (method, segs.as_slice()) {
            (Method::GET, ["v1", "session"]) => match &caller.session {
                Some((_, s)) => json(StatusCode::OK, &self.session_view(s, caller.role)),
                None => json(
                    StatusCode::OK,
                    &serde_json::json!({"id": actor.id, "role": caller.role, "csrf_token": null}),
                ),
            },
            (Method::DELETE, ["v1", "session"]) => {
                if let Some((token, _)) = &caller.session {
                    self.close_session(token).await;
                    self.audit(
                        actor,
                        "session.sign_out",
                        &actor.id,
                        &Value::Null,
                        &Value::Null,
                    )
                    .await?;
                }
                let mut resp = no_content()?;
                if let Ok(v) =
                    HeaderValue::from_str(&session::clear_cookie(self.https_for(&req, peer)))
                {
                    resp.headers_mut().insert(SET_COOKIE, v);
                }
                Ok(resp)
            }
            (Method::GET, ["v1", "targets"]) => {
                let snap = self.published.load();
                let items: Vec<Value> = snap
                    .targets
                    .iter()
                    .map(|t| serde_json::json!({"name": t.name.as_str()}))
                    .collect();
                json(StatusCode::OK, &serde_json::json!({"items": items}))
            }
            (Method::GET, ["v1", "audit"]) => self.list_audit(&query).await,
            (Method::GET, ["v1", "keys"]) => self.list_keys(&query).await,
            (Method::GET, ["v1", "keys", id, "usage"]) => self.key_usage(id, &query).await,
            (Method::POST, ["v1", kind @ ("keys" | "consumers"), id, "quota", what]) => {
                let owner = if *kind == "keys" {
                    Owner::Key
                } else {
                    Owner::Consumer
                };
                self.quota_route(actor, owner, id, what, req).await
            }
            (Method::GET, ["v1", "consumers", id, "usage"]) => {
                self.consumer_usage(id, &query).await
            }
            (Method::GET, ["v1", "usage"]) => self.usage_export(&query, req.headers()).await,
            (Method::POST, ["v1", "keys"]) => {
                let new: store::NewKey = body(req).await?;
                let prefix = self.secret_prefix();
                let written = self.write(move |s| s.create_key(new, &prefix)).await?;
                let (id, secret) = written;
                let after = self.key_value(&id);
                self.audit(actor, "key.create", &id, &Value::Null, &after)
                    .await?;
                let snap = self.published.load();
                let key = find_key(&snap, &id)?;
                json(
                    StatusCode::CREATED,
                    &WithSecret {
                        key: KeyView::of(&snap, key),
                        secret,
                    },
                )
            }
            (Method::GET, ["v1", "keys", id]) => {
                let snap = self.published.load_full();
                let index = find_key(&snap, id)?;
                self.fleet_last_used(&snap, &[index]).await;
                let k = &snap.keys[index];
                if let Some(q) = k.quota() {
                    let tag = snap.consumer_of(k).map(|c| &c.id);
                    self.fleet_quota(Owner::Key, &k.id, tag, q).await;
                }
                json(StatusCode::OK, &KeyView::of(&snap, index))
            }
            (Method::PATCH, ["v1", "keys", id]) => {
                let patch: store::KeyPatch = body(req).await?;
                let id = id.to_string();
                self.change_key(actor, "key.update", id.clone(), move |s| {
                    s.update_key(&id, patch)
                })
                .await
            }
            (Method::DELETE, ["v1", "keys", id]) => {
                let (id, prefix) = (id.to_string(), self.secret_prefix());
                let before = self.key_value(&id);
                let replacement = {
                    let id = id.clone();
                    self.write(move |s| s.delete_key(&id, &prefix)).await?
                };
                self.audit(actor, "key.revoke", &id, &before, &Value::Null)
                    .await?;
                match replacement {
                    None => no_content(),
                    // A consumer's default key: it has a new one, whose secret is shown now.
                    Some(made) => {
                        let made = self.made_default_key(actor, made).await?;
                        json(StatusCode::OK, &serde_json::json!({ "replacement": made }))
                    }
                }
            }
            (Method::POST, ["v1", "keys", id, "rotate"]) => {
                let r: Rotate = body_or_default(req).await?;
                let (id, prefix) = (id.to_string(), self.secret_prefix());
                let grace = Duration::from_secs(r.grace_seconds);
                let before = self.key_value(&id);
                let secret = {
                    let id = id.clone();
                    self.write(move |s| s.rotate_key(&id, grace, &prefix))
                        .await?
                };
                let mut after = self.key_value(&id);
                if let Some(o) = after.as_object_mut() {
                    o.insert("grace_seconds".into(), r.grace_seconds.into());
                }
                self.audit(actor, "key.rotate", &id, &before, &after)
                    .await?;
                let snap = self.published.load();
                json(
                    StatusCode::OK,
                    &WithSecret {
                        key: KeyView::of(&snap, find_key(&snap, &id)?),
                        secret,
                    },
                )
            }
            (Method::POST, ["v1", "keys", id, "allow_ips"]) => {
                let c: Cidr = body(req).await?;
                let id = id.to_string();
                self.change_key(actor, "key.update", id.clone(), move |s| {
                    s.add_key_ip(&id, &c.cidr)
                })
                .await
            }
            (Method::DELETE, ["v1", "keys", id, "allow_ips", cidr @ ..]) if !cidr.is_empty() => {
                let (id, cidr) = (id.to_string(), cidr.join("/"));
                self.change_key(actor, "key.update", id.clone(), move |s| {
                    s.remove_key_ip(&id, &cidr)
                })
                .await
            }
            (Method::POST, ["v1", "keys", id, "allow_origins"]) => {
                let o: OriginItem = body(req).await?;
                let id = id.to_string();
                self.change_key(actor, "key.update", id.clone(), move |s| {
                    s.add_key_origin(&id, &o.origin)
                })
                .await
            }
            (Method::DELETE, ["v1", "keys", id, "allow_origins", origin @ ..])
                if !origin.is_empty() =>
            {
                let (id, origin) = (id.to_string(), origin.join("/"));
                self.change_key(actor, "key.update", id.clone(), move |s| {
                    s.remove_key_origin(&id, &origin)
                })
                .await
            }
            (Method::GET, ["v1", "consumers"]) => self.list_consumers(&query),
            (Method::POST, ["v1", "consumers"]) => {
                let new: store::NewConsumer = body(req).await?;
                let (id, prefix) = (new.id.clone(), self.secret_prefix());
                self.change_consumer(actor, "consumer.create", id, move |s| {
                    s.create_consumer(new, &prefix)
                })
                .await
                .map(|mut resp| {
                    *resp.status_mut() = StatusCode::CREATED;
                    resp
                })
            }
            (Method::GET, ["v1", "consumers", id]) => {
                let snap = self.published.load_full();
                let c = find_consumer(&snap, id)?;
                if let Some(q) = c.quota {
                    self.fleet_quota(Owner::Consumer, &c.id, Some(&c.id), q)
                        .await;
                }
                json(StatusCode::OK, &ConsumerView::of(&snap, c).stated(&snap, c))
            }
            (Method::PATCH, ["v1", "consumers", id]) => {
                let patch: store::ConsumerPatch = body(req).await?;
                let (id, prefix) = (id.to_string(), self.secret_prefix());
                self.change_consumer(actor, "consumer.update", id.clone(), move |s| {
                    s.update_consumer(&id, patch, &prefix)
                })
                .await
            }
            (Method::DELETE, ["v1", "consumers", id]) => {
                let id = id.to_string();
                let before = self.consumer_value(&id);
                {
                    let id = id.clone();
                    self.write(move |s| s.delete_consumer(&id)).await?;
                }
                self.audit(actor, "consumer.delete", &id, &before, &Value::Null)
                    .await?;
                no_content()
            }
            (Method::POST, ["v1", "consumers", id, "allow_ips"]) => {
                let c: Cidr = body(req).await?;
                let id = id.to_string();
                self.change_consumer(actor, "consumer.update", id.clone(), move |s| {
                    Ok(s.add_consumer_ip(&id, &c.cidr)?.map(|()| None))
                })
                .await
            }
            (Method::DELETE, ["v1", "consumers", id, "allow_ips", cidr @ ..])
                if !cidr.is_empty() =>
            {
                let (id, cidr) = (id.to_string(), cidr.join("/"));
                self.change_consumer(actor, "consumer.update", id.clone(), move |s| {
                    Ok(s.remove_consumer_ip(&id, &cidr)?.map(|()| None))
                })
                .await
            }
            (Method::POST, ["v1", "consumers", id, "allow_origins"]) => {
                let o: OriginItem = body(req).await?;
                let id = id.to_string();
                self.change_consumer(actor, "consumer.update", id.clone(), move |s| {
                    Ok(s.add_consumer_origin(&id, &o.origin)?.map(|()| None))
                })
                .await
            }
            (Method::DELETE, ["v1", "consumers", id, "allow_origins", origin @ ..])
                if !origin.is_empty() =>
            {
                let (id, origin) = (id.to_string(), origin.join("/"));
                self.change_consumer(actor, "consumer.update", id.clone(), move |s| {
                    Ok(s.remove_consumer_origin(&id, &origin)?.map(|()| None))
                })
                .await
            }
            // A probe's path spelled another way (`/healthz/`): the probes answer only their
            // exact path.
            _ => Err(Problem::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no endpoint {path}"),
            )),
        }
    }

    fn secret_prefix(&self) -> String {
        self.published.load().key_prefix.to_string()
    }

    /// Runs a store change on a blocking thread, then publishes what it wrote.
    async fn write<T: Send + 'static>(
        &self,
        change: impl FnOnce(&Store) -> Result<Written<T>, StoreError> + Send + 'static,
    ) -> Result<T, Problem> {
        let store = self.store.clone();
        let done = tokio::task::spawn_blocking(move || {
            let written = change(&store)?;
            let Written { value, .. } = written;
            Ok::<_, StoreError>(value)
        })
        .await
        .map_err(|e| {
            // A panic's message may quote anything; it goes to the log, not to the client.
            tracing::error!(error = %e, "admin change failed");
            Problem::internal()
        })?;
        Ok(done?)
    }

    /// A change to key `id`, audited as `action`, answered with the key as it now is.
    async fn change_key(
        &self,
        actor: &Actor,
        action: &'static str,
        id: String,
        change: impl FnOnce(&Store) -> Result<Written<()>, StoreError> + Send + 'static,
    ) -> Answer {
        let before = self.key_value(&id);
        self.write(change).await?;
        let after = self.key_value(&id);
        self.audit(actor, action, &id, &before, &after).await?;
        let snap = self.published.load();
        json(StatusCode::OK, &KeyView::of(&snap, find_key(&snap, &id)?))
    }

    /// A change to consumer `id`, audited, answered with the consumer as it now is (and the
    /// default key it made, with its secret, if it made one).
    async fn change_consumer(
        &self,
        actor: &Actor,
        action: &'static str,
        id: String,
        change: impl FnOnce(&Store) -> Result<Written<Option<(String, String)>>, StoreError>
        + Send
        + 'static,
    ) -> Answer {
        let before = self.consumer_value(&id);
        let made = self.write(change).await?;
        let mut after = self.consumer_value(&id);
        if after.is_null() {
            return Err(Problem::not_found("consumer", &id));
        }
        self.audit(actor, action, &id, &before, &after).await?;
        let snap = self.published.load();
        if let (Ok(c), Some(o)) = (find_consumer(&snap, &id), after.as_object_mut()) {
            let state = ConsumerView::of(&snap, c).stated(&snap, c).quota_state;
            o.insert(
                "quota_state".into(),
                serde_json::to_value(state).unwrap_or_default(),
            );
        }
        if let Some(made) = made {
            let made = self.made_default_key(actor, made).await?;
            if let Some(o) = after.as_object_mut() {
                o.insert("default_key_created".into(), made);
            }
        }
        json(StatusCode::OK, &after)
    }

    /// Audits a default key keygate made, and shows it with its secret (this once).
    async fn made_default_key(
        &self,
        actor: &Actor,
        (id, secret): (String, String),
    ) -> Result<Value, Problem> {
        let view = self.key_value(&id);
        self.audit(actor, "key.create", &id, &Value::Null, &view)
            .await?;
        let mut shown = view;
        if let Some(o) = shown.as_object_mut() {
            o.insert("secret".into(), Value::String(secret));
        }
        Ok(shown)
    }

    /// `[cluster]`: raises the shown keys' `last_used_at` to the fleet's (the max over every
    /// instance), so a key used only through another instance does not look unused here.
    async fn fleet_last_used(&self, snap: &Live, keys: &[usize]) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let ids: Vec<&str> = keys.iter().map(|&i| snap.keys[i].id.as_str()).collect();
        if let Some(times) = cluster.last_used(&ids).await {
            for (&i, t) in keys.iter().zip(times) {
                snap.merge_last_used(i, t);
            }
        }
    }

    async fn list_keys(&self, query: &str) -> Answer {
        let q = Page::parse(query, KEY_FILTERS)?;
        let snap = self.published.load_full();
        let consumer = match &q.consumer {
            None => None,
            Some(c) => Some(
                snap.consumers
                    .iter()
                    .position(|x| x.id.as_str() == c)
                    .ok_or_else(|| Problem::not_found("consumer", c))? as u32,
            ),
        };
        let now = std::time::SystemTime::now();
        let day = Duration::from_secs(86_400);
        let expiring_by = q.expiring_within_days.map(|d| now + day * d as u32);
        let unused_since = q.unused_for_days.map(|d| {
            now.checked_sub(day * d as u32)
                .unwrap_or(std::time::UNIX_EPOCH)
        });
        let id = |i: &usize| snap.keys[*i].id.as_str();
        let matches = |i: &usize| {
            let k = &snap.keys[*i];
            (consumer.is_none() || k.consumer() == consumer)
                && q.after.as_deref().is_none_or(|a| k.id.as_str() > a)
                && q.status.is_none_or(|s| k.status == s)
                && expiring_by.is_none_or(|by| k.expires_at.is_some_and(|e| e > now && e <= by))
                && unused_since.is_none_or(|since| snap.last_used_at(*i).is_none_or(|t| t < since))
                && q.q.as_deref().is_none_or(|needle| {
                    [Some(k.id.as_str()), k.name(), k.prefix()]
                        .into_iter()
                        .flatten()
                        .any(|hay| contains_ignoring_case(hay, needle))
                })
        };
        let mut keys: Vec<usize> = (0..snap.keys.len()).filter(matches).collect();
        // Only the page is sorted: with a million keys, sorting them all for every page would
        // take most of a second; selecting the first `limit` is linear.
        let more = keys.len() > q.limit;
        if more {
            keys.select_nth_unstable_by(q.limit, |a, b| id(a).cmp(id(b)));
            keys.truncate(q.limit);
        }
        keys.sort_unstable_by(|a, b| id(a).cmp(id(b)));
        let next = more
            .then(|| keys.last().map(|i| id(i).to_owned()))
            .flatten();
        self.fleet_last_used(&snap, &keys).await;
        let items: Vec<KeyView<'_>> = keys.iter().map(|&i| KeyView::of(&snap, i)).collect();
        json(
            StatusCode::OK,
            &List {
                items,
                next_after: next,
            },
        )
    }

    /// `GET /v1/audit`: the audit log, newest first.
    async fn list_audit(&self, query: &str) -> Answer {
        let q = Page::parse(query, &["object"])?;
        let after = match q.after.as_deref().filter(|a| !a.is_empty()) {
            None => None,
            Some(a) => Some(a.parse::<u64>().map_err(|_| {
                field_problem("after", "after must be an entry's id (a number)".into())
            })?),
        };
        let Some(path) = audit::path_of(&self.published.load()) else {
            return json(
                StatusCode::OK,
                &serde_json::json!({"items": [], "next_after": null}),
            );
        };
        let (object, limit) = (q.object.clone(), q.limit);
        let page = tokio::task::spawn_blocking(move || {
            audit::page(&path, object.as_deref(), after, limit)
        })
        .await;
        match page {
            Ok(Ok((items, next))) => json(
                StatusCode::OK,
                &List {
                    items,
                    next_after: next,
                },
            ),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "the audit log could not be read");
                Err(Problem::internal())
            }
            Err(e) => {
                tracing::error!(error = %e, "the audit log could not be read");
                Err(Problem::internal())
            }
        }
    }

    fn list_consumers(&self, query: &str) -> Answer {
        let q = Page::parse(query, &[])?;
        let snap = self.published.load();
        let mut consumers: Vec<&Consumer> = snap
            .consumers
            .iter()
            .filter(|c| q.after.as_deref().is_none_or(|a| c.id.as_str() > a))
            .collect();
        consumers.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
        let more = consumers.len() > q.limit;
        consumers.truncate(q.limit);
        let next = more
            .then(|| consumers.last().map(|c| c.id.to_string()))
            .flatten();
        let mut owned = vec![0usize; snap.consumers.len()];
        for k in snap.keys.iter() {
            if let Some(c) = k.consumer().and_then(|c| owned.get_mut(c as usize)) {
                *c += 1;
            }
        }
        let items: Vec<ConsumerView<'_>> = consumers
            .iter()
            .map(|c| {
                let index = snap.consumers.iter().position(|x| std::ptr::eq(x, *c));
                ConsumerView::counted(&snap, c, index.map_or(0, |i| owned[i])).stated(&snap, c)
            })
            .collect();
        json(
            StatusCode::OK,
            &List {
                items,
                next_after: next,
            },
        )
    }
}

/// The methods an endpoint answers, as its 405's `Allow` lists them; `None` for no endpoint.
/// Kept beside [`Admin::route`]'s arms, which it must match.
fn allowed(segs: &[&str]) -> Option<&'static str> {
    match segs {
        // The probes, and the console's page and files.
        ["healthz" | "readyz" | "metrics" | ""] | ["console", _] => Some(PROBE_METHODS),
        ["v1", "session"] => Some("GET, POST, DELETE"),
        ["v1", "targets" | "audit" | "usage"] | ["v1", "keys" | "consumers", _, "usage"] => {
            Some("GET")
        }
        ["v1", "keys" | "consumers"] => Some("GET, POST"),
        ["v1", "keys" | "consumers", _] => Some("GET, PATCH, DELETE"),
        ["v1", "keys", _, "rotate"]
        | ["v1", "keys" | "consumers", _, "allow_ips" | "allow_origins"]
        | ["v1", "keys" | "consumers", _, "quota", "reset" | "grant"] => Some("POST"),
        [
            "v1",
            "keys" | "consumers",
            _,
            "allow_ips" | "allow_origins",
            item @ ..,
        ] if !item.is_empty() => Some("DELETE"),
        _ => None,
    }
}

/// `hay` contains `needle` (lower case), ignoring ASCII case, without allocating: the keys
/// page searches every key.
fn contains_ignoring_case(hay: &str, needle: &str) -> bool {
    let (hay, needle) = (hay.as_bytes(), needle.as_bytes());
    needle.len() <= hay.len()
        && hay
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

/// The console's page and files, for `GET` and `HEAD`; no key needed, nothing secret in them.
fn console_file(req: &Request<RequestBody>) -> Option<Response<Full<Bytes>>> {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return None;
    }
    let (bytes, content_type) = console::file(req.uri().path())?;
    let mut resp = Response::new(Full::new(Bytes::from(bytes.into_owned())));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    Some(resp)
}

/// Milliseconds since the Unix epoch, as the fleet's shared sessions count them.
fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `[admin] session_idle` and `session_max`.
fn session_limits(snap: &Snapshot) -> (Duration, Duration) {
    use crate::config::defaults::{DEFAULT_SESSION_IDLE, DEFAULT_SESSION_MAX};
    snap.admin
        .as_ref()
        .map_or((DEFAULT_SESSION_IDLE, DEFAULT_SESSION_MAX), |a| {
            (a.session_idle, a.session_max)
        })
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    key: String,
}

fn cross_site() -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        "cross_site_request",
        "A change made with the console's session must come from the console itself.",
    )
}

/// The request's `Origin`, when a browser sent one, is the admin listener's own (the scheme it
/// serves and the `Host` asked for), and `Sec-Fetch-Site`, when sent, does not say another site.
fn origin_is_own(req: &Request<RequestBody>, https: bool) -> bool {
    let headers = req.headers();
    if let Some(site) = headers.get("sec-fetch-site")
        && !matches!(site.as_bytes(), b"same-origin" | b"none")
    {
        return false;
    }
    let Some(origin) = headers.get(http::header::ORIGIN) else {
        return true;
    };
    let host = headers
        .get(http::header::HOST)
        .map(HeaderValue::as_bytes)
        .or_else(|| req.uri().authority().map(|a| a.as_str().as_bytes()));
    let scheme: &[u8] = if https { b"https://" } else { b"http://" };
    match (origin.as_bytes().strip_prefix(scheme), host) {
        (Some(o), Some(h)) => o.eq_ignore_ascii_case(h),
        _ => false,
    }
}

/// A change made with a session cookie: from the console's own origin and with the session's
/// CSRF token, which another site can neither read nor guess.
fn same_origin(
    req: &Request<RequestBody>,
    session: &session::Session,
    https: bool,
) -> Result<(), Problem> {
    let token = req
        .headers()
        .get(session::CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if origin_is_own(req, https) && session::same(token, &session.csrf) {
        Ok(())
    } else {
        Err(cross_site())
    }
}

/// The methods of the probes, which answer without a key.
const PROBE_METHODS: &str = "GET, HEAD";

fn not_allowed(method: &Method, path: &str, allow: &'static str) -> Problem {
    let mut p = Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {path}; use {allow}"),
    );
    p.allow = Some(allow);
    p
}

/// The query of list endpoints: `?limit=&after=`, and each endpoint's filters.
#[derive(Default)]
struct Page {
    limit: usize,
    after: Option<String>,
    consumer: Option<String>,
    /// Keys: a case-insensitive part of the name, id or prefix.
    q: Option<String>,
    status: Option<Status>,
    expiring_within_days: Option<u64>,
    unused_for_days: Option<u64>,
    /// Audit: the key or consumer a line is about.
    object: Option<String>,
}

/// The filters of `GET /v1/keys`.
const KEY_FILTERS: &[&str] = &[
    "consumer",
    "q",
    "status",
    "expiring_within_days",
    "unused_for_days",
];

/// Days a filter may span: past this, times overflow nothing but mean nothing either.
const MAX_FILTER_DAYS: u64 = 36_500;

impl Page {
    /// Reads `query`; `filters` are the parameters beside `limit` and `after` this endpoint
    /// takes, any other is refused.
    fn parse(query: &str, filters: &[&str]) -> Result<Page, Problem> {
        let mut page = Page {
            limit: DEFAULT_LIMIT,
            ..Page::default()
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned();
            if k != "limit" && k != "after" && !filters.contains(&k) {
                return Err(field_problem(k, format!("unknown query parameter {k:?}")));
            }
            let days = |v: &str| {
                v.parse::<u64>()
                    .ok()
                    .filter(|n| *n <= MAX_FILTER_DAYS)
                    .ok_or_else(|| {
                        field_problem(k, format!("{k} must be 0 to {MAX_FILTER_DAYS} days"))
                    })
            };
            match k {
                "limit" => {
                    page.limit = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| {
                            field_problem("limit", format!("limit must be 1 to {MAX_LIMIT}"))
                        })?;
                }
                "after" => page.after = Some(v),
                "consumer" => page.consumer = Some(v),
                "object" => page.object = Some(v).filter(|o| !o.is_empty()),
                "q" => page.q = Some(v.trim().to_lowercase()).filter(|q| !q.is_empty()),
                "status" => {
                    page.status = Some(match v.as_str() {
                        "active" => Status::Active,
                        "inactive" => Status::Inactive,
                        _ => {
                            return Err(field_problem(
                                "status",
                                "status must be active or inactive".into(),
                            ));
                        }
                    });
                }
                "expiring_within_days" => page.expiring_within_days = Some(days(&v)?),
                _ => page.unused_for_days = Some(days(&v)?),
            }
        }
        Ok(page)
    }
}

fn field_problem(field: &str, detail: String) -> Problem {
    let mut p = Problem::new(StatusCode::BAD_REQUEST, "invalid_field", detail);
    p.field = Some(field.to_owned());
    p
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Cidr {
    cidr: String,
}

/// `POST …/allow_origins`: one origin to add.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct OriginItem {
    origin: String,
}

#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Rotate {
    /// Range-checked by the store (`store::MAX_GRACE_SECONDS`).
    #[serde(default, deserialize_with = "store::whole")]
    grace_seconds: u64,
}

/// Reads and parses a JSON body; errors name the field (`serde_path_to_error`).
async fn body<T: DeserializeOwned>(req: Request<RequestBody>) -> Result<T, Problem> {
    let bytes = read_body(req).await?;
    parse_json(&bytes)
}

/// Like [`body`], but no body at all is the type's default. White space alone is a body, and
/// not JSON: refused like any other (the document's request body is optional, not blank).
async fn body_or_default<T: DeserializeOwned + Default>(
    req: Request<RequestBody>,
) -> Result<T, Problem> {
    let bytes = read_body(req).await?;
    if bytes.is_empty() {
        return Ok(T::default());
    }
    parse_json(&bytes)
}

async fn read_body(req: Request<RequestBody>) -> Result<Bytes, Problem> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("cannot read the body (at most {MAX_BODY} bytes): {e}"),
        )),
    }
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    // serde would read a struct from an array of its fields in order (`[]` is an empty patch);
    // every body of this API is an object, as the document says.
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "the body must be a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let mut p = Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            e.inner().to_string(),
        );
        // For an unknown field the path is its parent; serde's message names the field itself.
        p.field = (path != ".").then_some(path);
        p
    })
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Answer {
    let body = serde_json::to_vec(value).map_err(|e| {
        tracing::error!(error = %e, "admin answer could not be serialized");
        Problem::internal()
    })?;
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}

fn no_content() -> Answer {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    Ok(resp)
}

/// Awaits `answer`. A bug must not cost the caller its answer, nor show it the panic's
/// message: a panic becomes a 500 `internal`, and its message goes to the log.
async fn or_internal(answer: impl std::future::Future<Output = Answer>) -> Answer {
    AssertUnwindSafe(answer)
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(no message)");
            tracing::error!(panic = message, "admin request panicked");
            Err(Problem::internal())
        })
}

fn problem(p: &Problem, request_id: &HeaderValue) -> Response<Full<Bytes>> {
    let mut shown = problem::Problem::new(
        p.status,
        p.code,
        p.status.canonical_reason().unwrap_or("Error"),
        &p.detail,
    );
    shown.field = p.field.as_deref();
    shown.retry_after = p.retry_after;
    let mut resp = shown.response(request_id);
    if let Some(allow) = p.allow {
        resp.headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static(allow));
    }
    resp
}

/// The index of the key `id`.
fn find_key(snap: &Snapshot, id: &str) -> Result<usize, Problem> {
    snap.keys
        .iter()
        .position(|k| k.id.as_str() == id)
        .ok_or_else(|| Problem::not_found("key", id))
}

/// A key as the audit log and the commands show it, with its secret when one was just made:
/// without its quota's state, which is no setting (and a stopped gateway's command cannot know).
pub(crate) fn key_json(snap: &Live, index: usize, secret: Option<String>) -> serde_json::Value {
    let mut view = KeyView::of(snap, index);
    view.quota_state = None;
    match secret {
        Some(secret) => serde_json::to_value(WithSecret { key: view, secret }),
        None => serde_json::to_value(view),
    }
    .unwrap_or_default()
}

/// A consumer as the audit log and the commands show it.
pub(crate) fn consumer_json(snap: &Snapshot, c: &Consumer) -> serde_json::Value {
    serde_json::to_value(ConsumerView::of(snap, c)).unwrap_or_default()
}

fn find_consumer<'s>(snap: &'s Snapshot, id: &str) -> Result<&'s Consumer, Problem> {
    snap.consumers
        .iter()
        .find(|c| c.id.as_str() == id)
        .ok_or_else(|| Problem::not_found("consumer", id))
}

#[derive(Serialize)]
struct List<T> {
    items: Vec<T>,
    /// Pass as `?after=` for the next page; `null` on the last one.
    next_after: Option<String>,
}

#[derive(Serialize)]
struct WithSecret<'a> {
    #[serde(flatten)]
    key: KeyView<'a>,
    /// Shown once: keygate keeps only its hash.
    secret: String,
}

/// A key as the API shows it: never its secret or hash.
#[derive(Serialize)]
struct KeyView<'a> {
    id: &'a str,
    name: Option<&'a str>,
    consumer: Option<&'a str>,
    prefix: Option<&'a str>,
    status: Status,
    created_at: Option<String>,
    expires_at: Option<String>,
    last_used_at: Option<String>,
    targets: Vec<&'a str>,
    allow_ips: Vec<String>,
    allow_origins: Vec<String>,
    access: Access,
    paths: Vec<&'a str>,
    rate_limit: Option<String>,
    quota: Option<String>,
    /// What the quota's current window used; the API's answers only (not the audit log's).
    quota_state: Option<StateView>,
    managed: bool,
}

impl<'a> KeyView<'a> {
    fn of(snap: &'a Live, index: usize) -> KeyView<'a> {
        let k = &snap.keys[index];
        KeyView {
            id: k.id.as_str(),
            name: k.name(),
            consumer: snap.consumer_of(k).map(|c| c.id.as_str()),
            prefix: k.prefix(),
            status: k.status,
            created_at: k.created_at().map(store::rfc3339),
            expires_at: k.expires_at.map(store::rfc3339),
            last_used_at: snap.last_used_at(index).map(store::rfc3339),
            targets: k
                .targets()
                .iter()
                .map(|t| snap.target(t).name.as_str())
                .collect(),
            allow_ips: k.allow_ips().iter().map(ToString::to_string).collect(),
            allow_origins: k.allow_origins().iter().map(ToString::to_string).collect(),
            access: k.access,
            paths: k.paths().iter().map(|p| &**p).collect(),
            rate_limit: k.rate_limit().map(|r| r.to_string()),
            quota: k.quota().map(|q| q.to_string()),
            quota_state: k
                .quota()
                .and_then(|q| StateView::local(snap.quotas.key(index)?, q)),
            managed: k.managed,
        }
    }
}

/// A quota's current window as the API shows it.
#[derive(Debug, Serialize, Clone)]
struct StateView {
    pub used: u64,
    /// The plan's requests per window, without what was granted.
    pub limit: u64,
    pub granted: u64,
    /// `limit + granted - used`, never below 0.
    pub remaining: u64,
    pub window_start: String,
    pub window_end: String,
}

impl StateView {
    pub(super) fn of(u: &Used, quota: Quota) -> StateView {
        let at = |secs| {
            crate::store::rfc3339(std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
        };
        StateView {
            used: u.used,
            limit: quota.limit,
            granted: u.granted,
            remaining: u.remaining(quota),
            window_start: at(u.start),
            window_end: at(u.end),
        }
    }

    /// This instance's count (with `[cluster]`, as of its last request or sync).
    fn local(counter: &Counter, quota: Quota) -> Option<StateView> {
        Some(StateView::of(
            &counter.peek(
                quota,
                crate::state::unix_secs(std::time::SystemTime::now()).into(),
            ),
            quota,
        ))
    }
}

/// A consumer as the API shows it.
#[derive(Serialize)]
struct ConsumerView<'a> {
    id: &'a str,
    name: Option<&'a str>,
    allow_ips: Vec<String>,
    allow_origins: Vec<String>,
    targets: Vec<&'a str>,
    rate_limit: Option<String>,
    quota: Option<String>,
    quota_state: Option<StateView>,
    max_keys: Option<u32>,
    keys: usize,
    default_key: bool,
    created_at: Option<String>,
    managed: bool,
}

impl<'a> ConsumerView<'a> {
    /// With its quota's current window, as the API (not the audit log) shows it.
    fn stated(mut self, live: &Live, c: &Consumer) -> ConsumerView<'a> {
        let index = live.consumers.iter().position(|x| std::ptr::eq(x, c));
        self.quota_state = c
            .quota
            .and_then(|q| StateView::local(live.quotas.consumer(index?)?, q));
        self
    }

    fn of(snap: &'a Snapshot, c: &'a Consumer) -> ConsumerView<'a> {
        let index = snap
            .consumers
            .iter()
            .position(|x| std::ptr::eq(x, c))
            .map(|i| i as u32);
        let keys = snap
            .keys
            .iter()
            .filter(|k| k.consumer().is_some() && k.consumer() == index)
            .count();
        ConsumerView::counted(snap, c, keys)
    }

    /// With its number of keys already counted: a page of consumers counts them all in one
    /// pass over the keys, not one pass per consumer.
    fn counted(snap: &'a Snapshot, c: &'a Consumer, keys: usize) -> ConsumerView<'a> {
        ConsumerView {
            id: c.id.as_str(),
            name: c.name.as_deref(),
            allow_ips: c.allow_ips.iter().map(ToString::to_string).collect(),
            allow_origins: c.allow_origins.iter().map(ToString::to_string).collect(),
            targets: c
                .targets
                .iter()
                .map(|t| snap.target(t).name.as_str())
                .collect(),
            rate_limit: c.rate_limit.map(|r| r.to_string()),
            quota: c.quota.map(|q| q.to_string()),
            quota_state: None,
            max_keys: c.max_keys,
            keys,
            default_key: c.default_key,
            created_at: c.created_at.map(store::rfc3339),
            managed: c.managed,
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;

    use super::*;

    fn explode() -> Answer {
        panic!("the secret kg_live_do_not_show is in this message")
    }

    #[tokio::test]
    async fn a_panic_is_a_500_that_does_not_show_its_message() {
        let answer = or_internal(async { explode() }).await;
        let resp = match answer {
            Ok(_) => panic!("a panic answered as a success"),
            Err(p) => problem(&p, &HeaderValue::from_static("req-1")),
        };
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("\"code\":\"internal\""), "{body}");
        assert!(!body.contains("kg_live_do_not_show"), "{body}");
        assert!(!body.contains("panic"), "{body}");
    }
}
