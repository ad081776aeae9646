//! docs/admin-api.yaml says what the admin API answers: every response of a real session
//! validates against it, and every operation it lists is exercised.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::harness::launch;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::net::TcpListener;

const ADMIN: &str = "openapi-admin-secret";
const READER: &str = "openapi-reader-secret";

struct Session {
    spec: Value,
    client: Client<HttpConnector, Full<Bytes>>,
    admin: SocketAddr,
    /// The proxy, for traffic the usage endpoints count.
    proxy: SocketAddr,
    /// (path template, method) pairs answered 2xx.
    covered: BTreeSet<(String, String)>,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn start() -> Session {
    let spec_text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/admin-api.yaml"))
            .expect("docs/admin-api.yaml");
    let spec: Value = serde_yaml_ng::from_str(&spec_text).expect("the OpenAPI document is YAML");
    let dir = std::env::temp_dir().join(format!("keygate-openapi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hash = |s: &str| keygate::secret::KeyHash::of(s.as_bytes()).to_string();
    let config = format!(
        "keys_file = \"keys.toml\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[admin_keys]]\nid = \"ops\"\nhash = \"{}\"\nrole = \"admin\"\n\n\
         [[admin_keys]]\nid = \"reports\"\nhash = \"{}\"\nrole = \"read\"\n\n\
         [[targets]]\nname = \"production\"\nupstream = \"http://127.0.0.1:9\"\n\n\
         [[keys]]\nid = \"static\"\nhash = \"{}\"\n",
        hash(ADMIN),
        hash(READER),
        hash("static-secret"),
    );
    let path = dir.join("keygate.toml");
    std::fs::write(&path, config).unwrap();
    let mut gateway = launch::load(&path).unwrap();
    // Its default (stdout) would bypass the harness's output capture.
    gateway.snapshot_mut().log.access = keygate::snapshot::AccessTo::Off;
    let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = admin_listener.local_addr().unwrap();
    tokio::spawn(async move { launch::serve(gateway, proxy, Some(admin_listener)).await });
    Session {
        spec,
        client: Client::builder(TokioExecutor::new()).build_http(),
        admin,
        proxy: proxy_addr,
        covered: BTreeSet::new(),
        _dir: TempDir(dir),
    }
}

impl Session {
    /// As the admin, adds `cidr` to the allow list of `owner` (`consumers` or `keys`) `id`, then
    /// removes it by its percent-encoded form.
    async fn add_and_remove_allow_ip(&mut self, owner: &str, id: &str, cidr: &str) {
        let list = format!("/v1/{owner}/{id}/allow_ips");
        let template = format!("/v1/{owner}/{{id}}/allow_ips");
        let body = json!({ "cidr": cidr });
        self.call(Method::POST, &template, &list, Some(ADMIN), Some(body))
            .await;
        let encoded = cidr.replace(':', "%3A").replace('/', "%2F");
        let one = format!("{list}/{encoded}");
        self.call(
            Method::DELETE,
            &format!("{template}/{{cidr}}"),
            &one,
            Some(ADMIN),
            None,
        )
        .await;
    }

    /// As the admin, adds `origin` to the allowed origins of `owner` `id`, then removes it by
    /// its percent-encoded form.
    async fn add_and_remove_allow_origin(&mut self, owner: &str, id: &str, origin: &str) {
        let list = format!("/v1/{owner}/{id}/allow_origins");
        let template = format!("/v1/{owner}/{{id}}/allow_origins");
        let body = json!({ "origin": origin });
        self.call(Method::POST, &template, &list, Some(ADMIN), Some(body))
            .await;
        let encoded = origin.replace(':', "%3A").replace('/', "%2F");
        let one = format!("{list}/{encoded}");
        self.call(
            Method::DELETE,
            &format!("{template}/{{origin}}"),
            &one,
            Some(ADMIN),
            None,
        )
        .await;
    }

    /// Sends a request and checks the answer against the operation `template` + `method`.
    async fn call(
        &mut self,
        method: Method,
        template: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = Request::builder()
            .method(method.clone())
            .uri(format!("http://{}{path}", self.admin));
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let resp = self
            .client
            .request(req.body(Full::new(body)).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let ctype = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let op = &self.spec["paths"][template][method.as_str().to_lowercase()];
        assert!(op.is_object(), "{method} {template} is not in the document");
        let mut answer = &op["responses"][status.to_string()];
        assert!(
            answer.is_object(),
            "{method} {template} answered {status}, which the document does not list"
        );
        if let Some(r) = answer["$ref"].as_str() {
            answer = self.resolve(r);
        }
        let json: Value = if bytes.is_empty() {
            Value::Null
        } else if ctype.as_deref().is_some_and(|c| !c.contains("json")) {
            // The metrics' text format, which the document describes as a string.
            Value::String(String::from_utf8(bytes.to_vec()).unwrap())
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        match (&answer["content"], ctype) {
            (Value::Null, None) => assert!(
                bytes.is_empty(),
                "{status} has a body the document does not describe"
            ),
            (Value::Object(content), Some(ctype)) => {
                let schema = &content.get(&ctype).unwrap_or_else(|| {
                    panic!("{method} {template} {status}: content type {ctype} is not documented")
                })["schema"];
                let root = json!({
                    "$schema": "https://json-schema.org/draft/2020-12/schema",
                    "components": self.spec["components"],
                    "allOf": [schema],
                });
                let validator = jsonschema::draft202012::new(&root).expect("the schema compiles");
                let errors: Vec<String> = validator
                    .iter_errors(&json)
                    .map(|e| format!("{} at {}", e, e.instance_path()))
                    .collect();
                assert!(
                    errors.is_empty(),
                    "{method} {path} -> {status}: {errors:#?}\n{json:#}"
                );
            }
            (content, ctype) => panic!(
                "{method} {template} {status}: documented {content}, got content type {ctype:?}"
            ),
        }
        if (200..300).contains(&status) {
            self.covered
                .insert((template.to_owned(), method.as_str().to_lowercase()));
        }
        (status, json)
    }

    fn resolve(&self, reference: &str) -> &Value {
        let mut v = &self.spec;
        for part in reference.trim_start_matches("#/").split('/') {
            v = &v[part];
        }
        v
    }

    /// Every documented operation, as (template, method).
    fn operations(&self) -> BTreeSet<(String, String)> {
        let mut ops = BTreeSet::new();
        for (template, item) in self.spec["paths"].as_object().unwrap() {
            for method in ["get", "post", "patch", "delete", "put"] {
                if item.get(method).is_some() {
                    ops.insert((template.clone(), method.to_owned()));
                }
            }
        }
        ops
    }
}

#[tokio::test]
async fn every_answer_matches_the_document() {
    let mut s = start().await;
    let a = Some(ADMIN);
    use Method as M;
    // Probes, without a key.
    s.call(M::GET, "/healthz", "/healthz", None, None).await;
    s.call(M::GET, "/readyz", "/readyz", None, None).await;
    let (_, metrics) = s.call(M::GET, "/metrics", "/metrics", None, None).await;
    assert!(
        metrics
            .as_str()
            .is_some_and(|m| m.contains("\nkeygate_config_generation 1\n")),
        "{metrics}"
    );
    // Consumers.
    s.call(
        M::POST,
        "/v1/consumers",
        "/v1/consumers",
        a,
        Some(json!({"id": "acme", "max_keys": 5})),
    )
    .await;
    s.call(M::GET, "/v1/consumers", "/v1/consumers?limit=10", a, None)
        .await;
    s.call(
        M::GET,
        "/v1/consumers/{id}",
        "/v1/consumers/acme",
        Some(READER),
        None,
    )
    .await;
    s.call(
        M::PATCH,
        "/v1/consumers/{id}",
        "/v1/consumers/acme",
        a,
        Some(json!({"name": "ACME", "rate_limit": "100/minute", "quota": "10_000/month"})),
    )
    .await;
    s.add_and_remove_allow_origin("consumers", "acme", "https://*.example.com")
        .await;
    s.add_and_remove_allow_ip("consumers", "acme", "10.0.0.0/8")
        .await;
    // Keys.
    let new = json!({"id": "k1", "name": "CI", "consumer": "acme", "rate_limit": "5/second", "quota": "100/day", "expires_at": "2030-01-01T00:00:00Z", "targets": ["production"], "access": "read-only", "paths": ["/reports"]});
    let (status, created) = s.call(M::POST, "/v1/keys", "/v1/keys", a, Some(new)).await;
    assert_eq!(status, 201);
    assert_eq!(created["quota"], "100/day", "{created}");
    assert_eq!(created["quota_state"]["remaining"], 100, "{created}");
    // Quotas: the key's and its consumer's, granted more and reset.
    let (_, granted) = s
        .call(
            M::POST,
            "/v1/keys/{id}/quota/grant",
            "/v1/keys/k1/quota/grant",
            a,
            Some(json!({"requests": 5})),
        )
        .await;
    assert_eq!(
        (
            &granted["limit"],
            &granted["granted"],
            &granted["remaining"]
        ),
        (&json!(100), &json!(5), &json!(105)),
        "{granted}"
    );
    s.call(
        M::POST,
        "/v1/keys/{id}/quota/reset",
        "/v1/keys/k1/quota/reset",
        a,
        None,
    )
    .await;
    s.call(
        M::POST,
        "/v1/consumers/{id}/quota/grant",
        "/v1/consumers/acme/quota/grant",
        a,
        Some(json!({"requests": 1})),
    )
    .await;
    let (_, reset) = s
        .call(
            M::POST,
            "/v1/consumers/{id}/quota/reset",
            "/v1/consumers/acme/quota/reset",
            a,
            Some(json!({})),
        )
        .await;
    assert_eq!(
        (&reset["used"], &reset["limit"], &reset["granted"]),
        (&json!(0), &json!(10_000), &json!(1)),
        "{reset}"
    );
    assert!(
        created["secret"]
            .as_str()
            .is_some_and(|x| x.starts_with("kg_"))
    );
    s.call(M::POST, "/v1/keys", "/v1/keys", a, Some(json!({})))
        .await;
    let (_, page) = s
        .call(M::GET, "/v1/keys", "/v1/keys?limit=1", a, None)
        .await;
    assert!(page["next_after"].is_string());
    s.call(
        M::GET,
        "/v1/keys",
        "/v1/keys?consumer=acme",
        Some(READER),
        None,
    )
    .await;
    s.call(M::GET, "/v1/keys/{id}", "/v1/keys/k1", a, None)
        .await;
    s.call(M::GET, "/v1/keys/{id}", "/v1/keys/static", a, None)
        .await;
    s.call(
        M::PATCH,
        "/v1/keys/{id}",
        "/v1/keys/k1",
        a,
        Some(json!({"status": "inactive", "expires_at": null, "rate_limit": null, "quota": " 5_000 / week ", "consumer": "acme"})),
    )
    .await;
    s.add_and_remove_allow_origin("keys", "k1", "http://localhost:5173")
        .await;
    s.add_and_remove_allow_ip("keys", "k1", "2001:db8::/32")
        .await;
    s.call(
        M::POST,
        "/v1/keys/{id}/rotate",
        "/v1/keys/k1/rotate",
        a,
        Some(json!({"grace_seconds": 60})),
    )
    .await;
    s.call(
        M::POST,
        "/v1/keys/{id}/rotate",
        "/v1/keys/k1/rotate",
        a,
        None,
    )
    .await;
    // A consumer with a default key: made with it, and made anew when revoked.
    let (_, with_default) = s
        .call(
            M::POST,
            "/v1/consumers",
            "/v1/consumers",
            a,
            Some(json!({"id": "initech", "default_key": true})),
        )
        .await;
    let made = &with_default["default_key_created"];
    assert_eq!(
        made["name"], "Default key (created by keygate)",
        "{with_default}"
    );
    let revoked = format!("/v1/keys/{}", made["id"].as_str().unwrap());
    let (status, again) = s.call(M::DELETE, "/v1/keys/{id}", &revoked, a, None).await;
    assert_eq!(status, 200, "{again}");
    assert!(again["replacement"]["secret"].is_string(), "{again}");
    // The console's page, its session and what its forms read.
    s.call(M::GET, "/", "/", None, None).await;
    let (_, session) = s
        .call(
            M::POST,
            "/v1/session",
            "/v1/session",
            None,
            Some(json!({"key": ADMIN})),
        )
        .await;
    assert_eq!(session["role"], "admin", "{session}");
    s.call(M::GET, "/v1/session", "/v1/session", Some(READER), None)
        .await;
    s.call(M::DELETE, "/v1/session", "/v1/session", a, None)
        .await;
    s.call(M::GET, "/v1/targets", "/v1/targets", Some(READER), None)
        .await;
    let filtered = "/v1/keys?q=ci&status=inactive&expiring_within_days=30&unused_for_days=90";
    s.call(M::GET, "/v1/keys", filtered, Some(READER), None)
        .await;
    let (_, audit) = s
        .call(
            M::GET,
            "/v1/audit",
            "/v1/audit?object=k1&limit=2",
            Some(READER),
            None,
        )
        .await;
    assert_eq!(audit["items"][0]["action"], "key.rotate", "{audit}");
    // Usage: a request of `static` (its upstream refuses: 502), then a key's, a consumer's and
    // everyone's counts, JSON and CSV.
    let counted = crate::harness::get(s.proxy, "/", &[("x-api-key", "static-secret")]).await;
    assert_eq!(counted.status, 502);
    let (_, key_usage) = s
        .call(
            M::GET,
            "/v1/keys/{id}/usage",
            "/v1/keys/static/usage?granularity=hour",
            Some(READER),
            None,
        )
        .await;
    assert_eq!(key_usage["total"]["requests"], 1, "{key_usage}");
    s.call(
        M::GET,
        "/v1/consumers/{id}/usage",
        "/v1/consumers/acme/usage?from=2026-01-01&to=2026-01-31",
        Some(READER),
        None,
    )
    .await;
    let (_, all) = s
        .call(
            M::GET,
            "/v1/usage",
            "/v1/usage?limit=10",
            Some(READER),
            None,
        )
        .await;
    assert_eq!(all["items"][0]["key_id"], "static", "{all}");
    s.call(
        M::GET,
        "/v1/usage",
        "/v1/usage?format=csv",
        Some(READER),
        None,
    )
    .await;
    // Errors are documented problems too.
    let problems = [
        (M::GET, "/v1/keys", "/v1/keys", None, None, 403),
        (M::GET, "/v1/keys", "/v1/keys", Some("wrong"), None, 403),
        (
            M::POST,
            "/v1/keys",
            "/v1/keys",
            Some(READER),
            Some(json!({})),
            403,
        ),
        (M::GET, "/v1/keys/{id}", "/v1/keys/nope", a, None, 404),
        (
            M::POST,
            "/v1/keys",
            "/v1/keys",
            a,
            Some(json!({"alow_ips": []})),
            400,
        ),
        (
            M::POST,
            "/v1/keys",
            "/v1/keys",
            a,
            Some(json!({"allow_ips": ["10.0.0.0/33"]})),
            400,
        ),
        (
            M::POST,
            "/v1/keys",
            "/v1/keys",
            a,
            Some(json!({"id": "k1"})),
            409,
        ),
        (
            M::PATCH,
            "/v1/keys/{id}",
            "/v1/keys/static",
            a,
            Some(json!({"status": "inactive"})),
            409,
        ),
        (M::GET, "/v1/keys", "/v1/keys?limit=0", a, None, 400),
        (M::GET, "/v1/keys", "/v1/keys?status=gone", a, None, 400),
        (M::GET, "/v1/audit", "/v1/audit?after=x", a, None, 400),
        (
            M::GET,
            "/v1/keys/{id}/usage",
            "/v1/keys/nope/usage",
            a,
            None,
            404,
        ),
        (
            M::GET,
            "/v1/usage",
            "/v1/usage?from=2026-02-01&to=2026-01-01",
            a,
            None,
            400,
        ),
        (
            M::POST,
            "/v1/session",
            "/v1/session",
            None,
            Some(json!({"key": "wrong"})),
            403,
        ),
        (
            M::POST,
            "/v1/keys/{id}/quota/grant",
            "/v1/keys/static/quota/grant",
            a,
            Some(json!({"requests": 1})),
            409,
        ),
        (
            M::POST,
            "/v1/keys/{id}/quota/grant",
            "/v1/keys/k1/quota/grant",
            a,
            Some(json!({"requests": 0})),
            400,
        ),
        (
            M::POST,
            "/v1/keys/{id}/quota/grant",
            "/v1/keys/k1/quota/grant",
            a,
            Some(json!({"requests": 1, "more": 1})),
            400,
        ),
        (
            M::POST,
            "/v1/consumers/{id}/quota/reset",
            "/v1/consumers/acme/quota/reset",
            Some(READER),
            None,
            403,
        ),
        (
            M::POST,
            "/v1/consumers/{id}/quota/reset",
            "/v1/consumers/nope/quota/reset",
            a,
            None,
            404,
        ),
        (
            M::DELETE,
            "/v1/consumers/{id}",
            "/v1/consumers/acme",
            a,
            None,
            409,
        ),
    ];
    for (method, template, path, key, body, want) in problems {
        let (status, problem) = s.call(method, template, path, key, body).await;
        assert_eq!(status, want, "{path}: {problem}");
    }
    // Clean up through the API, which exercises the deletes.
    let (_, all) = s
        .call(M::GET, "/v1/keys", "/v1/keys?consumer=acme", a, None)
        .await;
    for k in all["items"].as_array().unwrap() {
        let id = k["id"].as_str().unwrap();
        s.call(
            M::DELETE,
            "/v1/keys/{id}",
            &format!("/v1/keys/{id}"),
            a,
            None,
        )
        .await;
    }
    s.call(
        M::DELETE,
        "/v1/consumers/{id}",
        "/v1/consumers/acme",
        a,
        None,
    )
    .await;
    let missing: Vec<_> = s.operations().difference(&s.covered).cloned().collect();
    assert!(
        missing.is_empty(),
        "documented but never answered 2xx in this session: {missing:?}"
    );
}
