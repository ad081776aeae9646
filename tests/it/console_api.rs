//! The key console's server side over real TCP, without a browser (issue 15): sign-in and the
//! session cookie, the CSRF token and own-origin check on every change made with the cookie,
//! read sessions, sign-out, idle and absolute expiry, the audit log (API and commands), the
//! page's files and their headers, `[admin.tls]`, and config errors.
//!
//! Each test states what breaks it. Sleeps are only where a session's expiry needs time to pass.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::harness::admin::*;
use crate::harness::live::{
    Ca, Leaf, alpn_of, client_config, eventually_for, peer_leaf, replace_file, tls_connect,
};
use crate::harness::session::*;
use crate::harness::*;

/// A wrong admin key, as a typo of a real one would be: it must never be written anywhere.
const TYPO_SECRET: &str = "kg_admin_YWRtaW5TZWNyZXRGb3JBZG1pbkFwaVRlc3RzMDAy";

/// The hex digest of `secret` (what follows `sha256:` in its hash).
fn hex_digest(secret: &str) -> String {
    keygate_hash(secret)
        .strip_prefix("sha256:")
        .unwrap()
        .to_owned()
}

/// Asserts that `text` holds none of `secrets`, nor their hashes or hex digests.
#[track_caller]
fn assert_no_secret_or_hash(what: &str, text: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(!text.contains(s), "{what} holds the secret {s}:\n{text}");
        assert!(
            !text.contains(&hex_digest(s)),
            "{what} holds the hash of {s}:\n{text}"
        );
    }
    assert!(!text.contains("sha256:"), "{what} holds a hash:\n{text}");
}

/// The problem's code and no `Set-Cookie`: a refused sign-in opens nothing.
#[track_caller]
fn assert_refused_without_cookie(resp: &Resp, status: u16, code: &str) -> Value {
    let p = assert_problem(resp, status, code);
    assert!(
        resp.headers.get("set-cookie").is_none(),
        "a refused sign-in set a cookie: {:?}",
        resp.headers
    );
    p
}

// --- sign-in ----------------------------------------------------------------------------------

/// The right admin key gives a session: who, which role, a CSRF token, and a cookie that the
/// page's script cannot read (`HttpOnly`), that no other site's request carries
/// (`SameSite=Strict`), for the whole listener (`Path=/`), and not `Secure` over plain HTTP
/// (a browser would never send it back). Wrong keys get 403 `key_invalid` naming the field.
/// Breaks when an attribute is dropped or added, when the body lacks a field, when a wrong
/// key or a proxy key opens a session, or when a refusal sets a cookie.
#[tokio::test]
async fn sign_in_gives_an_http_only_strict_cookie_and_wrong_keys_none() {
    let g = Gateway::start("console-sign-in").await;
    let console = Console::plain(g.admin);

    let s = console.session(ADMIN_SECRET).await;
    assert_eq!(s.body["id"], "ops", "{}", s.body);
    assert_eq!(s.body["role"], "admin", "{}", s.body);
    assert!(s.csrf.len() >= 32, "a short CSRF token: {:?}", s.csrf);
    assert_eq!(s.body["idle_seconds"], 1800, "{}", s.body);
    // The answer holds the CSRF token: no cache may keep it.
    let cache = s
        .sign_in_headers
        .get("cache-control")
        .map(|v| v.to_str().unwrap());
    assert_eq!(cache, Some("no-store"));
    let expires = rfc3339(&s.body["expires_at"]);
    let in_12h = time::OffsetDateTime::now_utc() + time::Duration::hours(12);
    assert!(
        (expires - in_12h).abs() < time::Duration::minutes(1),
        "expires_at {expires} is not 12 h from now"
    );
    assert_eq!(
        s.set_cookie.sorted_attrs(),
        ["HttpOnly", "Path=/", "SameSite=Strict"],
        "{:?}",
        s.set_cookie
    );
    assert_ne!(
        s.token, s.csrf,
        "the cookie and the CSRF token are the same"
    );
    assert!(s.token.len() >= 32, "a short session token: {:?}", s.token);

    // The cookie alone reads; the session answer repeats the same CSRF token.
    let again = expect(&s.get("/v1/session").await, 200);
    assert_eq!(again["id"], "ops");
    assert_eq!(again["role"], "admin");
    assert_eq!(again["csrf_token"], s.csrf.as_str());
    expect(&s.get("/v1/keys").await, 200);

    // Each sign-in is a session of its own.
    let other = console.session(ADMIN_SECRET).await;
    assert_ne!(other.token, s.token);
    assert_ne!(other.csrf, s.csrf);
    let reader = console.session(READER_SECRET).await;
    assert_eq!(reader.body["id"], "auditor");
    assert_eq!(reader.body["role"], "read");

    // Wrong keys: a typo of the admin key, a key of the proxy, nothing at all.
    for wrong in [TYPO_SECRET, STATIC_SECRET, ""] {
        let p = assert_refused_without_cookie(&console.sign_in(wrong).await, 403, "key_invalid");
        assert_eq!(p["field"], "key", "{p}");
        assert!(!p.to_string().contains(ADMIN_SECRET));
    }

    // No cookie: key_missing; a cookie keygate never issued: session_expired.
    let none = console.send("GET", "/v1/session", &[], None).await;
    assert_problem(&none, 403, "key_missing");
    let forged = console
        .send(
            "GET",
            "/v1/keys",
            &[(
                "cookie",
                "kg_session=kg_bm90QVNlc3Npb25Ub2tlbkF0QWxsMDAwMDAwMDAwMA",
            )],
            None,
        )
        .await;
    assert_problem(&forged, 403, "session_expired");
    assert_no_keygate_panic();
}

/// Wrong admin keys at sign-in count against the client's address like `failed_auth_limit`:
/// past it, even the right key gets 429 `too_many_failures` with `Retry-After`. Breaks when
/// sign-in failures are not counted (the 4th sign-in would succeed).
#[tokio::test]
async fn wrong_sign_ins_past_failed_auth_limit_are_throttled() {
    let files = Files::new("console-throttle", None, "127.0.0.1:0", Some(INITIAL_KEYS)).await;
    files.set_failed_auth_limit("3/minute");
    let g = Gateway::serve(files).await;
    let console = Console::plain(g.admin);

    for _ in 0..3 {
        assert_refused_without_cookie(&console.sign_in(TYPO_SECRET).await, 403, "key_invalid");
    }
    for secret in [ADMIN_SECRET, TYPO_SECRET] {
        let blocked = console.sign_in(secret).await;
        assert_refused_without_cookie(&blocked, 429, "too_many_failures");
        let retry: u64 = blocked
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!((1..=20).contains(&retry), "Retry-After {retry}");
    }
}

// --- cookie, CSRF token, origin ---------------------------------------------------------------

/// With the cookie, reads need nothing more; every change needs the session's CSRF token in
/// `X-CSRF-Token`, an `Origin` (when sent) that is the listener's own, and no
/// `Sec-Fetch-Site` naming another site. A refused change writes nothing (keys file bytes and
/// audit log unchanged). Breaks when any one of these checks is dropped: that case then
/// answers 201 and the keys file changes.
#[tokio::test]
async fn changes_with_the_cookie_need_the_csrf_token_and_the_own_origin() {
    let g = Gateway::start("console-csrf").await;
    let console = Console::plain(g.admin);
    let s = console.session(ADMIN_SECRET).await;
    let other = console.session(ADMIN_SECRET).await;

    let keys = expect(&s.get("/v1/keys").await, 200);
    assert!(ids(keys["items"].as_array().unwrap()).contains(&STATIC_ID.to_owned()));

    let own = &*console.origin();
    let port = g.admin.port();
    let wrong_token = &*"x".repeat(s.csrf.len());
    let other_port = &*format!("http://127.0.0.1:{}", if port == 1 { 2 } else { 1 });
    let https_own = &*format!("https://127.0.0.1:{port}");
    let (csrf, other_csrf, cookie_value) = (s.csrf.as_str(), other.csrf.as_str(), s.token.as_str());
    let refused: Vec<(&str, Vec<(&str, &str)>)> = vec![
        (
            "no token",
            vec![("origin", own), ("sec-fetch-site", "same-origin")],
        ),
        ("no token and no origin", vec![]),
        (
            "an empty token",
            vec![("x-csrf-token", ""), ("origin", own)],
        ),
        (
            "a wrong token",
            vec![("x-csrf-token", wrong_token), ("origin", own)],
        ),
        (
            "another session's token",
            vec![("x-csrf-token", other_csrf), ("origin", own)],
        ),
        (
            "the cookie's own value as the token",
            vec![("x-csrf-token", cookie_value), ("origin", own)],
        ),
        (
            "a foreign Origin",
            vec![("x-csrf-token", csrf), ("origin", "http://evil.example")],
        ),
        (
            "Origin null",
            vec![("x-csrf-token", csrf), ("origin", "null")],
        ),
        (
            "the own host on another port",
            vec![("x-csrf-token", csrf), ("origin", other_port)],
        ),
        (
            "https on a plain listener",
            vec![("x-csrf-token", csrf), ("origin", https_own)],
        ),
        (
            "Sec-Fetch-Site cross-site",
            vec![("x-csrf-token", csrf), ("sec-fetch-site", "cross-site")],
        ),
        (
            "Sec-Fetch-Site same-site",
            vec![("x-csrf-token", csrf), ("sec-fetch-site", "same-site")],
        ),
    ];
    let body = json!({"id": "forged", "name": "Forged"});
    let keys_before = g.files.keys_bytes();
    let audit_before = g.files.audit_lines().len();
    for (case, headers) in &refused {
        let resp = s.send("POST", "/v1/keys", headers, Some(&body)).await;
        assert_eq!(
            resp.status,
            403,
            "{case}: a change was accepted: {}",
            resp.text()
        );
        assert_problem(&resp, 403, "cross_site_request");
        assert_eq!(
            g.files.keys_bytes(),
            keys_before,
            "{case}: the keys file changed"
        );
        assert_eq!(
            g.files.audit_lines().len(),
            audit_before,
            "{case}: a refused change was audited"
        );
    }
    // The session survives the refusals.
    expect(&s.get("/v1/session").await, 200);

    // The page's own change: 201, and the key works on the proxy at once.
    let created = expect(&s.change("POST", "/v1/keys", Some(&body)).await, 201);
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert_admitted(g.proxy, &secret, "forged").await;
    // A client that sends no Origin and no Sec-Fetch-Site at all (not a browser) still needs
    // only the token.
    let curl = s
        .send(
            "POST",
            "/v1/keys",
            &[("x-csrf-token", csrf)],
            Some(&json!({"id": "curl"})),
        )
        .await;
    expect(&curl, 201);

    // A revoke without the token is refused and the key keeps working; with it, it goes.
    let keys_before = g.files.keys_bytes();
    let revoke = s
        .send("DELETE", "/v1/keys/forged", &[("origin", own)], None)
        .await;
    assert_problem(&revoke, 403, "cross_site_request");
    assert_eq!(g.files.keys_bytes(), keys_before);
    assert_admitted(g.proxy, &secret, "forged").await;
    assert_eq!(
        s.change("DELETE", "/v1/keys/forged", None).await.status,
        204
    );
    assert_refused(g.proxy, &secret, "key_invalid").await;

    // A sign-in from another site would sign the browser in as someone else.
    let key = json!({"key": ADMIN_SECRET}).to_string();
    for headers in [
        [
            ("origin", "http://evil.example"),
            ("sec-fetch-site", "cross-site"),
        ],
        [("origin", "http://evil.example"), ("x-case", "origin only")],
        [
            ("sec-fetch-site", "cross-site"),
            ("x-case", "fetch site only"),
        ],
    ] {
        let resp = console
            .send("POST", "/v1/session", &headers, Some(&key))
            .await;
        assert_refused_without_cookie(&resp, 403, "cross_site_request");
    }
    assert_no_keygate_panic();
}

/// A `read` session reads, and every change it asks for is refused 403 `role_insufficient`,
/// even with a valid CSRF token from the own origin; it may still sign itself out. Breaks when
/// a session's role is not checked (the changes then succeed and the keys file changes).
#[tokio::test]
async fn a_read_session_changes_nothing_even_with_a_valid_csrf_token() {
    let (g, _api, secret) = Gateway::start_with_key("console-read", "kept").await;
    let console = Console::plain(g.admin);
    let r = console.session(READER_SECRET).await;
    assert_eq!(r.body["role"], "read");
    expect(&r.get("/v1/keys").await, 200);
    expect(&r.get("/v1/keys/kept").await, 200);
    expect(&r.get("/v1/consumers").await, 200);
    expect(&r.get("/v1/audit").await, 200);

    let keys_before = g.files.keys_bytes();
    let changes: [(&str, &str, Option<Value>); 9] = [
        ("POST", "/v1/keys", Some(json!({"id": "sneaky"}))),
        (
            "PATCH",
            "/v1/keys/kept",
            Some(json!({"name": "taken over"})),
        ),
        ("DELETE", "/v1/keys/kept", None),
        (
            "POST",
            "/v1/keys/kept/rotate",
            Some(json!({"grace_seconds": 0})),
        ),
        (
            "POST",
            "/v1/keys/kept/allow_ips",
            Some(json!({"cidr": "10.0.0.1"})),
        ),
        ("POST", "/v1/consumers", Some(json!({"id": "sneaky"}))),
        ("PATCH", "/v1/consumers/acme", Some(json!({"name": "x"}))),
        ("DELETE", "/v1/consumers/acme", None),
        (
            "POST",
            "/v1/consumers/acme/allow_ips",
            Some(json!({"cidr": "10.0.0.1"})),
        ),
    ];
    for (method, path, body) in &changes {
        let resp = r.change(method, path, body.as_ref()).await;
        assert_problem(&resp, 403, "role_insufficient");
        assert_eq!(
            g.files.keys_bytes(),
            keys_before,
            "{method} {path} changed the keys file"
        );
    }
    assert_admitted(g.proxy, &secret, "kept").await;
    assert_eq!(r.sign_out().await.status, 204);
    assert_problem(&r.get("/v1/keys").await, 403, "session_expired");
}

// --- sign-out and expiry ----------------------------------------------------------------------

/// `DELETE /v1/session` (a change: it needs the CSRF token) ends that session, clears the
/// cookie (`Max-Age=0`) and leaves other sessions open. Breaks when sign-out keeps the session
/// server-side (the old cookie keeps working) or sends no clearing cookie.
#[tokio::test]
async fn sign_out_clears_the_cookie_and_ends_only_that_session() {
    let g = Gateway::start("console-sign-out").await;
    let console = Console::plain(g.admin);
    let a = console.session(ADMIN_SECRET).await;
    let b = console.session(ADMIN_SECRET).await;

    // Another site cannot sign the browser out.
    let forged = a.send("DELETE", "/v1/session", &[], None).await;
    assert_problem(&forged, 403, "cross_site_request");
    expect(&a.get("/v1/session").await, 200);

    let out = a.sign_out().await;
    assert_eq!(out.status, 204, "{}", out.text());
    let cleared = SetCookie::of(&out);
    assert_eq!(cleared.name, COOKIE);
    assert_eq!(cleared.value, "", "{cleared:?}");
    assert_eq!(
        cleared.sorted_attrs(),
        ["HttpOnly", "Max-Age=0", "Path=/", "SameSite=Strict"],
        "{cleared:?}"
    );

    assert_problem(&a.get("/v1/keys").await, 403, "session_expired");
    assert_problem(&a.get("/v1/session").await, 403, "session_expired");
    let body = json!({"id": "late"});
    assert_problem(
        &a.change("POST", "/v1/keys", Some(&body)).await,
        403,
        "session_expired",
    );
    assert!(!g.files.keys_text().contains("late"));
    expect(&b.get("/v1/keys").await, 200);
}

/// How long a request may take here before a timing assertion cannot judge it.
const SLOW: Duration = Duration::from_millis(400);

/// `session_idle = "1s"`: a session used every 300 ms lives past a second; left alone for
/// 1.5 s it is over. Breaks when the idle time is not enforced (the last request succeeds) or
/// counts from sign-in instead of from the last request (the loop's requests fail).
#[tokio::test]
async fn an_idle_session_ends_after_session_idle() {
    let g = Gateway::start_with_admin("console-idle", "session_idle = \"1s\"").await;
    let console = Console::plain(g.admin);
    let s = console.session(ADMIN_SECRET).await;
    assert_eq!(s.body["idle_seconds"], 1, "{}", s.body);

    let started = Instant::now();
    for i in 0..8 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let sent = Instant::now();
        let resp = s.get("/v1/keys").await;
        assert!(
            sent.elapsed() < SLOW,
            "request {i} took {:?}: too slow to judge an idle time of 1 s",
            sent.elapsed()
        );
        expect(&resp, 200);
    }
    assert!(started.elapsed() > Duration::from_secs(2));

    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_problem(&s.get("/v1/keys").await, 403, "session_expired");
    // Gone for good, not only for that request.
    assert_problem(&s.get("/v1/session").await, 403, "session_expired");
}

/// `session_max = "2s"`: a session used every 0.5 s is still refused 2 s after sign-in.
/// Breaks when the absolute limit is not enforced (or is reset by each request).
#[tokio::test]
async fn a_busy_session_ends_at_session_max() {
    let g = Gateway::start_with_admin("console-max", "session_idle = \"1s\"\nsession_max = \"2s\"")
        .await;
    let console = Console::plain(g.admin);
    let before_sign_in = Instant::now();
    let s = console.session(ADMIN_SECRET).await;
    let signed_in = Instant::now();
    let expires = rfc3339(&s.body["expires_at"]);
    let now = time::OffsetDateTime::now_utc();
    assert!(
        expires > now && expires <= now + time::Duration::seconds(3),
        "expires_at {expires} is not 2 s from now"
    );

    let mut ended = false;
    for i in 0..12 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let sent = Instant::now();
        let resp = s.get("/v1/keys").await;
        let answered = Instant::now();
        // Judged only where the timing is unambiguous: the session began between
        // `before_sign_in` and `signed_in`, and was used at most 0.5 s (+ one request) ago.
        if answered - before_sign_in < Duration::from_secs(2) {
            assert_eq!(
                resp.status,
                200,
                "request {i} refused {:?} after sign-in: {}",
                sent - signed_in,
                resp.text()
            );
        } else if sent - signed_in >= Duration::from_secs(2) {
            assert_problem(&resp, 403, "session_expired");
            ended = true;
            break;
        }
    }
    assert!(ended, "the session outlived session_max");
}

/// A session belongs to an admin key of the config: when the key is removed (the config file
/// rewritten, the reloader publishes), its sessions end; when its role drops to `read`, its
/// session may no longer change anything. Breaks when a session keeps the role it had at
/// sign-in.
#[tokio::test]
async fn removing_an_admin_key_ends_its_sessions_and_a_demoted_key_only_reads() {
    let g = Gateway::start("console-key-removed").await;
    let console = Console::plain(g.admin);
    let ops = console.session(ADMIN_SECRET).await;
    let auditor = console.session(READER_SECRET).await;

    let text = std::fs::read_to_string(&g.files.config).unwrap();
    let auditor_table = format!(
        "[[admin_keys]]\nid = \"auditor\"\nhash = \"{}\"\nrole = \"read\"\n",
        keygate_hash(READER_SECRET)
    );
    let ops_role = format!(
        "id = \"ops\"\nhash = \"{}\"\nrole = \"admin\"",
        keygate_hash(ADMIN_SECRET)
    );
    assert!(
        text.contains(&auditor_table) && text.contains(&ops_role),
        "{text}"
    );
    let text = text
        .replace(&auditor_table, "")
        .replace(&ops_role, &ops_role.replace("\"admin\"", "\"read\""));
    replace_file(&g.files.config, text.as_bytes());

    let ended = poll(
        RELOAD_LIMIT,
        "the removed key's session to end",
        async || {
            let r = auditor.get("/v1/keys").await;
            (r.status != 200).then_some(r)
        },
    )
    .await;
    assert_problem(&ended, 403, "session_expired");
    assert_refused_without_cookie(&console.sign_in(READER_SECRET).await, 403, "key_invalid");

    // The same reload made ops a reader: its session reads and changes nothing.
    let now = expect(&ops.get("/v1/session").await, 200);
    assert_eq!(now["role"], "read", "{now}");
    let body = json!({"id": "after-demotion"});
    assert_problem(
        &ops.change("POST", "/v1/keys", Some(&body)).await,
        403,
        "role_insufficient",
    );
}

/// An admin key whose secret is replaced in the config (same id, new hash: what an operator
/// does when the key has leaked) ends the sessions opened with the old secret: otherwise
/// whoever signed in with the leaked key keeps the console for up to `session_max` (12 h by
/// default). Breaks (today) because a session remembers only the admin key's id, and the id
/// is still there.
#[tokio::test]
async fn replacing_an_admin_keys_secret_ends_the_sessions_of_the_old_secret() {
    const NEW_SECRET: &str = "kg_admin_bmV3QWRtaW5TZWNyZXRBZnRlckFMZWFrMDAwMDAwMQ";
    let g = Gateway::start("console-key-replaced").await;
    let console = Console::plain(g.admin);
    let leaked = console.session(ADMIN_SECRET).await;

    let text = std::fs::read_to_string(&g.files.config).unwrap();
    let old_hash = keygate_hash(ADMIN_SECRET);
    assert!(text.contains(&old_hash), "{text}");
    let text = text.replace(&old_hash, &keygate_hash(NEW_SECRET));
    replace_file(&g.files.config, text.as_bytes());
    // The new secret signing in shows the reload is in.
    let fresh = poll(RELOAD_LIMIT, "the new secret to sign in", async || {
        let r = console.sign_in(NEW_SECRET).await;
        (r.status == 200).then_some(r)
    })
    .await;
    assert_eq!(fresh.json()["id"], "ops");
    assert_refused_without_cookie(&console.sign_in(ADMIN_SECRET).await, 403, "key_invalid");

    let old = leaked.get("/v1/keys").await;
    assert_eq!(
        old.status,
        403,
        "a session opened with the replaced secret still works: {}",
        old.text()
    );
    assert_problem(&old, 403, "session_expired");
}

// --- audit log --------------------------------------------------------------------------------

/// The fields every audit line written by the admin API has, exactly (sorted).
const LINE_FIELDS: [&str; 6] = ["action", "actor", "changes", "object", "source_ip", "time"];

/// Asserts one audit line's who, what and when: `actor` (`None`: any), action, object, from
/// 127.0.0.1, at about now.
#[track_caller]
fn assert_line(line: &Value, actor: Option<&str>, action: &str, object: &str) {
    let mut fields: Vec<&str> = line
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(fields, LINE_FIELDS, "{line}");
    if let Some(actor) = actor {
        assert_eq!(line["actor"], actor, "{line}");
    }
    assert_eq!(line["action"], action, "{line}");
    assert_eq!(line["object"], object, "{line}");
    assert_eq!(line["source_ip"], "127.0.0.1", "{line}");
    let at = rfc3339(&line["time"]);
    let now = time::OffsetDateTime::now_utc();
    assert!(
        (now - at).abs() < time::Duration::minutes(1),
        "time {at} is not now: {line}"
    );
    assert!(line["changes"].is_object(), "{line}");
}

/// Runs `change`, which must answer `status`, and returns its answer and the one audit line
/// it appended, read right after the answer: no polling, the line is on disk before the
/// answer is sent.
async fn audited(files: &Files, status: u16, change: impl Future<Output = Resp>) -> (Resp, Value) {
    let before = files.audit_lines().len();
    let resp = change.await;
    assert_eq!(resp.status.as_u16(), status, "{}", resp.text());
    let lines = files.audit_lines();
    assert_eq!(
        lines.len(),
        before + 1,
        "not one new audit line right after the answer: {lines:#?}"
    );
    (resp, lines.last().unwrap().clone())
}

/// Every change through the API, with the cookie or with `X-API-Key`, and every sign-in,
/// failed sign-in and sign-out, is one JSON line in `audit.jsonl` beside the keys file, on disk
/// when the answer arrives, naming who, from where, what, on which object and each changed
/// field's before and after; no secret, hash, session token or CSRF token is ever in the file.
/// `GET /v1/audit` pages through it newest first, filters by object, and a `read` key may read
/// it. Breaks when a change is not audited (or only after the answer), an action is misnamed,
/// the changes are missing, or a secret or hash is written.
#[tokio::test]
async fn every_change_and_sign_in_is_one_audit_line_without_secrets() {
    let g = Gateway::start("console-audit").await;
    let f = &g.files;
    let console = Console::plain(g.admin);
    let api = g.api();

    let (_, line) = audited(f, 403, console.sign_in(TYPO_SECRET)).await;
    assert_line(&line, None, "session.sign_in_failed", "");
    assert_ne!(
        line["actor"], "ops",
        "a wrong key identified someone: {line}"
    );

    let (resp, line) = audited(f, 200, console.sign_in(ADMIN_SECRET)).await;
    assert_line(&line, Some("ops"), "session.sign_in", "ops");
    let cookie = SetCookie::of(&resp).value;
    let csrf = resp.json()["csrf_token"].as_str().unwrap().to_owned();
    let s = Session {
        console: console.clone(),
        token: cookie.clone(),
        csrf: csrf.clone(),
        body: resp.json(),
        sign_in_headers: resp.headers.clone(),
        set_cookie: SetCookie::of(&resp),
    };

    let body = json!({"id": "globex", "name": "Globex"});
    let (_, line) = audited(f, 201, s.change("POST", "/v1/consumers", Some(&body))).await;
    assert_line(&line, Some("ops"), "consumer.create", "globex");
    assert_eq!(
        line["changes"]["name"],
        json!({"before": null, "after": "Globex"})
    );

    let body = json!({"name": "Globex Inc"});
    let (_, line) = audited(
        f,
        200,
        s.change("PATCH", "/v1/consumers/globex", Some(&body)),
    )
    .await;
    assert_line(&line, Some("ops"), "consumer.update", "globex");
    assert_eq!(
        line["changes"],
        json!({"name": {"before": "Globex", "after": "Globex Inc"}})
    );

    let body = json!({"cidr": "192.0.2.0/24"});
    let add = s.change("POST", "/v1/consumers/globex/allow_ips", Some(&body));
    let (_, line) = audited(f, 200, add).await;
    assert_line(&line, Some("ops"), "consumer.update", "globex");
    assert_eq!(
        line["changes"],
        json!({"allow_ips": {"before": [], "after": ["192.0.2.0/24"]}})
    );
    let remove = s.change(
        "DELETE",
        "/v1/consumers/globex/allow_ips/192.0.2.0%2F24",
        None,
    );
    let (_, line) = audited(f, 200, remove).await;
    assert_line(&line, Some("ops"), "consumer.update", "globex");
    assert_eq!(
        line["changes"],
        json!({"allow_ips": {"before": ["192.0.2.0/24"], "after": []}})
    );

    let body = json!({"id": "ci", "name": "CI", "consumer": "globex"});
    let (resp, line) = audited(f, 201, s.change("POST", "/v1/keys", Some(&body))).await;
    let first_secret = resp.json()["secret"].as_str().unwrap().to_owned();
    assert_line(&line, Some("ops"), "key.create", "ci");
    assert_eq!(
        line["changes"]["name"],
        json!({"before": null, "after": "CI"})
    );
    assert_eq!(
        line["changes"]["consumer"],
        json!({"before": null, "after": "globex"})
    );

    let body = json!({"name": "CI 2"});
    let (_, line) = audited(f, 200, s.change("PATCH", "/v1/keys/ci", Some(&body))).await;
    assert_line(&line, Some("ops"), "key.update", "ci");
    assert_eq!(
        line["changes"],
        json!({"name": {"before": "CI", "after": "CI 2"}})
    );

    let body = json!({"cidr": "10.0.0.0/8"});
    let (_, line) = audited(
        f,
        200,
        s.change("POST", "/v1/keys/ci/allow_ips", Some(&body)),
    )
    .await;
    assert_line(&line, Some("ops"), "key.update", "ci");
    assert_eq!(
        line["changes"],
        json!({"allow_ips": {"before": [], "after": ["10.0.0.0/8"]}})
    );

    let remove = s.change("DELETE", "/v1/keys/ci/allow_ips/10.0.0.0%2F8", None);
    let (_, line) = audited(f, 200, remove).await;
    assert_line(&line, Some("ops"), "key.update", "ci");
    assert_eq!(
        line["changes"],
        json!({"allow_ips": {"before": ["10.0.0.0/8"], "after": []}})
    );

    // With X-API-Key instead of the cookie: the same actor.
    let (resp, line) = audited(f, 200, api.rotate("ci", 0)).await;
    let second_secret = resp.json()["secret"].as_str().unwrap().to_owned();
    assert_line(&line, Some("ops"), "key.rotate", "ci");
    assert_ne!(first_secret, second_secret);

    let (_, line) = audited(f, 204, s.change("DELETE", "/v1/keys/ci", None)).await;
    assert_line(&line, Some("ops"), "key.revoke", "ci");
    assert_eq!(
        line["changes"]["name"],
        json!({"before": "CI 2", "after": null})
    );

    let (_, line) = audited(f, 204, api.delete("/v1/consumers/globex")).await;
    assert_line(&line, Some("ops"), "consumer.delete", "globex");
    assert_eq!(
        line["changes"]["name"],
        json!({"before": "Globex Inc", "after": null})
    );

    // Reads are not changes.
    let lines_now = f.audit_lines().len();
    expect(&s.get("/v1/keys").await, 200);
    expect(&api.get("/v1/consumers").await, 200);
    assert_eq!(f.audit_lines().len(), lines_now);

    let (_, line) = audited(f, 204, s.sign_out()).await;
    assert_line(&line, Some("ops"), "session.sign_out", "ops");

    let file = std::fs::read_to_string(f.audit_path()).unwrap();
    assert_no_secret_or_hash(
        "the audit log",
        &file,
        &[&first_secret, &second_secret, ADMIN_SECRET, TYPO_SECRET],
    );
    assert!(
        !file.contains(&cookie),
        "the session token is in the audit log"
    );
    assert!(!file.contains(&csrf), "the CSRF token is in the audit log");

    // GET /v1/audit, as the read key: everything, newest first.
    let reader = g.reader();
    let lines = f.audit_lines();
    assert_eq!(lines.len(), 14, "{lines:#?}");
    let all = expect(&reader.get("/v1/audit?limit=1000").await, 200);
    assert_eq!(all["next_after"], Value::Null);
    let items = all["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), lines.len());
    for (item, line) in items.iter().zip(lines.iter().rev()) {
        let mut item = item.clone();
        let id = item.as_object_mut().unwrap().remove("id");
        assert!(
            id.as_ref().and_then(Value::as_str).is_some(),
            "no id: {item}"
        );
        assert_eq!(
            &item, line,
            "GET /v1/audit shows another line than the file"
        );
    }
    let numbers: Vec<u64> = items
        .iter()
        .map(|i| i["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(
        numbers.windows(2).all(|w| w[0] > w[1]),
        "not newest first: {numbers:?}"
    );
    assert_eq!(items[0]["action"], "session.sign_out");

    // Pages of 5 follow `next_after` to the same list.
    let mut paged = Vec::new();
    let mut path = "/v1/audit?limit=5".to_owned();
    for _ in 0..20 {
        let page = expect(&reader.get(&path).await, 200);
        let got = page["items"].as_array().unwrap();
        assert!(got.len() <= 5, "{page}");
        paged.extend(got.iter().cloned());
        match page["next_after"].as_str() {
            Some(after) => path = format!("/v1/audit?limit=5&after={after}"),
            None => break,
        }
    }
    assert_eq!(paged, items);

    // Filtered by object.
    let actions = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["action"].as_str().unwrap().to_owned())
            .collect()
    };
    let ci = expect(&reader.get("/v1/audit?object=ci").await, 200);
    assert_eq!(
        actions(&ci),
        [
            "key.revoke",
            "key.rotate",
            "key.update",
            "key.update",
            "key.update",
            "key.create"
        ]
    );
    let globex = expect(&reader.get("/v1/audit?object=globex&limit=2").await, 200);
    assert_eq!(actions(&globex), ["consumer.delete", "consumer.update"]);
    let mut all_globex = actions(&globex);
    let after = globex["next_after"].as_str().unwrap();
    let rest = expect(
        &reader
            .get(&format!("/v1/audit?object=globex&after={after}"))
            .await,
        200,
    );
    all_globex.extend(actions(&rest));
    assert_eq!(
        all_globex,
        [
            "consumer.delete",
            "consumer.update",
            "consumer.update",
            "consumer.update",
            "consumer.create"
        ]
    );
    assert_eq!(rest["next_after"], Value::Null);
    assert_field_problem(
        &reader.get("/v1/audit?after=yesterday").await,
        "invalid_field",
        "after",
    );

    // What the API shows of the log holds no secret either.
    assert_no_secret_or_hash(
        "GET /v1/audit",
        &all.to_string(),
        &[&first_secret, &second_secret],
    );
}

/// Empty query parameters, as a page fills the contract's `?object=&after=&limit=` template
/// when the filter box is empty, mean no filter and the first page, as `q=` and `after=` do on
/// `/v1/keys`. Breaks (today): `object=` selects the lines whose object is "" (the failed
/// sign-ins) and `after=` is refused 400.
#[tokio::test]
async fn empty_audit_query_parameters_mean_no_filter_and_the_first_page() {
    let g = Gateway::start("console-audit-empty").await;
    let console = Console::plain(g.admin);
    assert_refused_without_cookie(&console.sign_in(TYPO_SECRET).await, 403, "key_invalid");
    g.api().create_key(json!({"id": "k1"})).await;
    console.session(ADMIN_SECRET).await;
    let reader = g.reader();
    let all = expect(&reader.get("/v1/audit").await, 200);
    assert_eq!(all["items"].as_array().unwrap().len(), 3, "{all}");
    for query in ["object=", "after=", "object=&after=&limit=100"] {
        let resp = reader.get(&format!("/v1/audit?{query}")).await;
        assert_eq!(resp.status, 200, "?{query}: {}", resp.text());
        assert_eq!(resp.json(), all, "?{query} is not the whole log");
    }
}

/// `audit_log = "off"` writes no file at all, and `GET /v1/audit` is empty. Breaks when "off"
/// is taken as a file name or ignored.
#[tokio::test]
async fn audit_log_off_writes_nothing() {
    let g = Gateway::start_with_admin("console-audit-off", "audit_log = \"off\"").await;
    let before = g.files.dir_entries();
    let api = g.api();
    api.create_key(json!({"id": "unlogged"})).await;
    Console::plain(g.admin).session(ADMIN_SECRET).await;
    let after = g.files.dir_entries();
    assert!(
        !after.iter().any(|n| n.contains("audit") || n == "off"),
        "an audit file was written: {before:?} -> {after:?}"
    );
    let page = expect(&api.get("/v1/audit").await, 200);
    assert_eq!(page, json!({"items": [], "next_after": null}));
}

/// `audit_log = "custom/path.jsonl"` is relative to the config file (not to the working
/// directory), and nothing is written beside the keys file. Breaks when the setting is ignored
/// or resolved against the working directory (the directory is not there: the change fails).
#[tokio::test]
async fn audit_log_path_is_relative_to_the_config_file() {
    let files = Files::new(
        "console-audit-path",
        None,
        "127.0.0.1:0",
        Some(INITIAL_KEYS),
    )
    .await;
    // The directory does not exist: keygate makes it rather than fail the change.
    files.add_to_admin("audit_log = \"custom/path.jsonl\"");
    let g = Gateway::serve(files).await;
    let (_, secret) = g.api().create_key(json!({"id": "logged"})).await;

    let custom = g.files.dir.join("custom/path.jsonl");
    let lines = Files::audit_lines_at(&custom);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_line(&lines[0], Some("ops"), "key.create", "logged");
    assert!(
        !g.files.audit_path().exists(),
        "audit.jsonl written beside the keys file"
    );
    let text = std::fs::read_to_string(&custom).unwrap();
    assert_no_secret_or_hash("the audit log", &text, &[&secret]);
    let page = expect(&g.reader().get("/v1/audit").await, 200);
    assert_eq!(page["items"][0]["object"], "logged");
}

/// `keygate keys ...` and `keygate consumers ...` audit too, as actor `cli` with the OS user
/// who ran them and no source address. Breaks when the commands write no audit line (until
/// the commands audit, this fails) or write a secret.
#[tokio::test]
async fn key_commands_audit_as_cli_with_the_os_user() {
    let f = Files::new("console-cli-audit", None, "127.0.0.1:0", Some(INITIAL_KEYS)).await;
    let config = f.config.as_path();
    let expected_user = std::env::var("USER").ok().filter(|u| !u.is_empty());

    let check = |line: &Value, action: &str, object: &str| {
        assert_eq!(line["actor"], "cli", "{line}");
        assert_eq!(line["action"], action, "{line}");
        assert_eq!(line["object"], object, "{line}");
        assert_eq!(line["source_ip"], Value::Null, "{line}");
        rfc3339(&line["time"]);
        let user = line["os_user"]
            .as_str()
            .unwrap_or_else(|| panic!("no os_user: {line}"));
        assert!(!user.is_empty(), "{line}");
        if let Some(expected) = &expected_user {
            assert_eq!(user, expected, "{line}");
        }
    };
    let last = |n: usize| {
        let lines = f.audit_lines();
        assert_eq!(lines.len(), n, "{lines:#?}");
        lines.last().unwrap().clone()
    };

    let created = cmd_json(config, &["keys", "create", "--id", "cli1", "--name", "CLI"]).await;
    let first = created["secret"].as_str().unwrap().to_owned();
    let line = last(1);
    check(&line, "key.create", "cli1");
    assert_eq!(
        line["changes"]["name"],
        json!({"before": null, "after": "CLI"})
    );

    cmd_json(config, &["keys", "update", "cli1", "--name", "CLI 2"]).await;
    let line = last(2);
    check(&line, "key.update", "cli1");
    assert_eq!(
        line["changes"],
        json!({"name": {"before": "CLI", "after": "CLI 2"}})
    );

    let rotated = cmd_json(config, &["keys", "rotate", "cli1"]).await;
    let second = rotated["secret"].as_str().unwrap().to_owned();
    check(&last(3), "key.rotate", "cli1");

    let out = keygate_cmd(config, &["keys", "revoke", "cli1"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    check(&last(4), "key.revoke", "cli1");

    cmd_json(
        config,
        &["consumers", "create", "globex", "--name", "Globex"],
    )
    .await;
    check(&last(5), "consumer.create", "globex");

    let file = std::fs::read_to_string(f.audit_path()).unwrap();
    assert_no_secret_or_hash("the audit log", &file, &[&first, &second]);
}

// --- the page ---------------------------------------------------------------------------------

/// `GET /` is the console's page, `/console/app.js` and `/console/app.css` its script and
/// style, with no key; every answer carries a CSP that allows only the page's own script and
/// style files (no inline script) and forbids framing, and `X-Frame-Options: DENY`. `HEAD`
/// works. Breaks when a header is dropped, a file needs a key, or the CSP allows inline script.
#[tokio::test]
async fn the_page_and_its_files_are_served_without_a_key_under_a_strict_csp() {
    let g = Gateway::start("console-page").await;
    let console = Console::plain(g.admin);

    #[track_caller]
    fn assert_strict_headers(resp: &Resp) {
        let csp = resp
            .header("content-security-policy")
            .unwrap_or_else(|| panic!("no Content-Security-Policy: {:?}", resp.headers));
        let directives: Vec<&str> = csp.split(';').map(str::trim).collect();
        for wanted in [
            "frame-ancestors 'none'",
            "script-src 'self'",
            "default-src 'none'",
        ] {
            assert!(directives.contains(&wanted), "no {wanted:?} in {csp}");
        }
        for unsafe_ in ["'unsafe-inline'", "'unsafe-eval'", "*"] {
            assert!(!csp.contains(unsafe_), "{unsafe_} in {csp}");
        }
        assert_eq!(resp.header("x-frame-options"), Some("DENY"));
        assert_eq!(resp.header("x-content-type-options"), Some("nosniff"));
    }

    for (path, content_type) in [
        ("/", &["text/html"][..]),
        (
            "/console/app.js",
            &["text/javascript", "application/javascript"][..],
        ),
        ("/console/app.css", &["text/css"][..]),
    ] {
        let resp = console.send("GET", path, &[], None).await;
        assert_eq!(resp.status, 200, "GET {path}: {}", resp.text());
        let ct = resp.header("content-type").unwrap_or_default();
        let mime = ct.split(';').next().unwrap().trim();
        assert!(
            content_type.contains(&mime),
            "GET {path}: content-type {ct}"
        );
        assert!(!resp.body.is_empty(), "GET {path}: empty");
        assert_strict_headers(&resp);

        let head = console.send("HEAD", path, &[], None).await;
        assert_eq!(head.status, 200, "HEAD {path}");
        assert_eq!(head.header("content-type"), Some(ct), "HEAD {path}");
        assert!(head.body.is_empty(), "HEAD {path} has a body");
        assert_strict_headers(&head);
    }

    // The same headers on the API's answers, good and bad.
    assert_strict_headers(&g.api().get("/v1/keys").await);
    assert_strict_headers(&console.send("GET", "/v1/keys", &[], None).await);
}

// --- [admin.tls] ------------------------------------------------------------------------------

/// keygate in process whose admin listener serves HTTPS with `leaf` (`[admin.tls]` on
/// `tls/cert.pem` and `tls/key.pem` in its directory).
async fn admin_tls_gateway(name: &str, leaf: &Leaf) -> Gateway {
    admin_tls_gateway_with(name, leaf, "").await
}

/// [`admin_tls_gateway`] with `more` lines in `[admin.tls]`.
async fn admin_tls_gateway_with(name: &str, leaf: &Leaf, more: &str) -> Gateway {
    let files = Files::new(name, None, "127.0.0.1:0", Some(INITIAL_KEYS)).await;
    std::fs::create_dir(files.dir.join("tls")).unwrap();
    std::fs::write(files.dir.join("tls/cert.pem"), &leaf.cert_pem).unwrap();
    std::fs::write(files.dir.join("tls/key.pem"), &leaf.key_pem).unwrap();
    files.append_to_config(&format!(
        "[admin.tls]\ncert = \"tls/cert.pem\"\nkey = \"tls/key.pem\"\n{more}\n"
    ));
    Gateway::serve(files).await
}

/// `[admin.tls] handshake_timeout` bounds the admin port's handshakes (the proxy port has no
/// TLS here, whose default is 10 s). Breaks when the admin port reads `[server.tls]`'s.
#[tokio::test]
async fn admin_tls_handshake_timeout_is_the_admin_ports_own() {
    let ca = Ca::new("admin-handshake");
    let leaf = ca.leaf(&["localhost"]);
    let g = admin_tls_gateway_with(
        "console-admin-handshake",
        &leaf,
        "handshake_timeout = \"300ms\"",
    )
    .await;
    // Served first, so that the listener is up before the clock starts.
    let console = Console::tls(g.admin, client_config(&[&ca], &["http/1.1"], false));
    expect(&console.send("GET", "/healthz", &[], None).await, 200);
    let mut raw = within("connect", TcpStream::connect(g.admin))
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(3), raw.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("keygate sent {n} bytes to a client that sent none"),
        Err(_) => panic!("a stalled handshake is open after {:?}", started.elapsed()),
    }
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
}

/// With `[admin.tls]`, the admin API speaks only HTTPS, the session cookie is `Secure`, the
/// own origin is `https://…`, and a renewed certificate (files renamed over) reaches new
/// handshakes within 5 s without a restart, sessions surviving. Breaks when the cookie lacks
/// `Secure` under TLS, the listener also answers plain HTTP, or the certificate is only read at
/// start.
#[tokio::test]
async fn admin_tls_serves_https_with_secure_cookies_and_reloads_the_certificate() {
    let (ca1, ca2) = (Ca::new("admin-first"), Ca::new("admin-second"));
    let (leaf1, leaf2) = (ca1.leaf(&["localhost"]), ca2.leaf(&["localhost"]));
    let g = admin_tls_gateway("console-admin-tls", &leaf1).await;
    let (cert, key) = (
        g.files.dir.join("tls/cert.pem"),
        g.files.dir.join("tls/key.pem"),
    );
    let client = client_config(&[&ca1, &ca2], &["http/1.1"], false);
    let console = Console::tls(g.admin, client.clone());

    let s = console.session(ADMIN_SECRET).await;
    assert_eq!(
        s.set_cookie.sorted_attrs(),
        ["HttpOnly", "Path=/", "SameSite=Strict", "Secure"],
        "{:?}",
        s.set_cookie
    );
    expect(&s.get("/v1/keys").await, 200);
    expect(
        &s.change("POST", "/v1/keys", Some(&json!({"id": "tls1"})))
            .await,
        201,
    );
    // Under TLS the own origin is https: the plain-http spelling is another origin.
    let http_origin = format!("http://localhost:{}", g.admin.port());
    let foreign = s
        .send(
            "POST",
            "/v1/keys",
            &[
                ("x-csrf-token", s.csrf.as_str()),
                ("origin", http_origin.as_str()),
            ],
            Some(&json!({"id": "tls2"})),
        )
        .await;
    assert_problem(&foreign, 403, "cross_site_request");

    // Plain HTTP to the TLS listener gets no HTTP answer.
    let mut raw = within("connect", TcpStream::connect(g.admin))
        .await
        .unwrap();
    let ask = format!(
        "GET /v1/keys HTTP/1.1\r\nhost: {}\r\nx-api-key: {ADMIN_SECRET}\r\n\r\n",
        g.admin
    );
    raw.write_all(ask.as_bytes()).await.unwrap();
    let answer = read_to_close(&mut raw, Duration::from_secs(5)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        !answer.starts_with("HTTP/1.1 2") && !answer.contains("\"items\""),
        "plain HTTP was served: {answer}"
    );

    // A renewed certificate reaches new handshakes.
    let tls = tls_connect(g.admin, client.clone()).await;
    assert_eq!(peer_leaf(&tls), leaf1.der.to_vec());
    drop(tls);
    replace_file(&cert, leaf2.cert_pem.as_bytes());
    replace_file(&key, leaf2.key_pem.as_bytes());
    eventually_for(
        Duration::from_secs(5),
        "the new admin certificate on a new handshake",
        async || {
            let tls = tls_connect(g.admin, client.clone()).await;
            (peer_leaf(&tls) == leaf2.der.to_vec()).then_some(())
        },
    )
    .await;
    // Over the new certificate, the session goes on, and signs out with a Secure clearing.
    expect(&s.get("/v1/session").await, 200);
    let out = s.sign_out().await;
    assert_eq!(out.status, 204);
    assert!(SetCookie::of(&out).attrs.iter().any(|a| a == "Secure"));
    assert_no_keygate_panic();
}

/// A browser reaches an HTTPS console over HTTP/2, where the host is the `:authority`, not a
/// `Host` header: the session and the own-origin check work there as over HTTP/1.1. Breaks
/// when the origin check reads only `Host` (every change over HTTP/2 would be refused).
#[tokio::test]
async fn the_session_and_origin_check_work_over_http2() {
    let ca = Ca::new("admin-h2");
    let g = admin_tls_gateway("console-admin-h2", &ca.leaf(&["localhost"])).await;
    let client = client_config(&[&ca], &["h2", "http/1.1"], false);
    let tls = tls_connect(g.admin, client.clone()).await;
    assert_eq!(
        alpn_of(&tls).as_deref(),
        Some("h2"),
        "the admin listener does not offer h2"
    );
    drop(tls);
    let console = Console::tls_h2(g.admin, client);
    let s = console.session(ADMIN_SECRET).await;
    assert!(s.set_cookie.attrs.iter().any(|a| a == "Secure"));
    expect(&s.get("/v1/keys").await, 200);
    let created = s
        .change("POST", "/v1/keys", Some(&json!({"id": "over-h2"})))
        .await;
    expect(&created, 201);
    let foreign = s
        .send(
            "POST",
            "/v1/keys",
            &[
                ("x-csrf-token", s.csrf.as_str()),
                ("origin", "https://evil.example"),
            ],
            Some(&json!({"id": "forged-h2"})),
        )
        .await;
    assert_problem(&foreign, 403, "cross_site_request");
    assert_eq!(s.sign_out().await.status, 204);
}

// --- config errors ----------------------------------------------------------------------------

/// A bad `session_idle` or `session_max` is refused at load with the file, the line and the
/// key. Breaks when a bad duration is taken as the default or reported without its place.
#[tokio::test]
async fn bad_session_durations_are_refused_with_file_line_and_key() {
    for (setting, value) in [("session_idle", "soon"), ("session_max", "12 parsecs")] {
        let files = Files::new("console-config", None, "127.0.0.1:0", Some(INITIAL_KEYS)).await;
        files.add_to_admin(&format!("{setting} = \"{value}\""));
        let err = match launch::load(&files.config) {
            Ok(_) => panic!("{setting} = {value:?} was accepted"),
            Err(e) => format!("{e:#}"),
        };
        let text = std::fs::read_to_string(&files.config).unwrap();
        let line = text.lines().position(|l| l.starts_with(setting)).unwrap() + 1;
        assert!(err.contains(&format!("keygate.toml:{line}:")), "{err}");
        assert!(err.contains(setting), "{err}");
        assert!(err.contains(value), "{err}");
    }
}

/// Behind a TLS-ending proxy of `trusted_proxies` that says `X-Forwarded-Proto: https`, the
/// console's origin is `https://…` and its cookie `Secure`; the same header from a peer that is
/// not trusted changes nothing. Breaks when the header is ignored (every change from the
/// proxied page refused) or believed from anyone (a plain-HTTP page's `http://` origin
/// refused, or the cookie `Secure` where the browser would not send it back).
#[tokio::test]
async fn behind_a_trusted_tls_proxy_the_console_origin_is_https() {
    for (trusted, name) in [
        ("127.0.0.1", "console-xfp"),
        ("10.0.0.1", "console-xfp-untrusted"),
    ] {
        let files = Files::new(name, None, "127.0.0.1:0", Some(INITIAL_KEYS)).await;
        let text = std::fs::read_to_string(&files.config).unwrap();
        let text = text.replacen(
            "[server]\n",
            &format!("[server]\ntrusted_proxies = [\"{trusted}\"]\n"),
            1,
        );
        std::fs::write(&files.config, text).unwrap();
        let g = Gateway::serve(files).await;
        let console = Console::plain(g.admin);
        let believed = trusted == "127.0.0.1";
        let https_origin = format!("https://{}", console.host());
        let body = json!({ "key": ADMIN_SECRET }).to_string();
        let resp = console
            .send(
                "POST",
                "/v1/session",
                &[("origin", &https_origin), ("x-forwarded-proto", "https")],
                Some(&body),
            )
            .await;
        if !believed {
            assert_eq!(resp.status, 403, "an https origin over plain HTTP let in");
            continue;
        }
        let body = expect(&resp, 200);
        let cookie = SetCookie::of(&resp);
        assert!(
            cookie.sorted_attrs().iter().any(|a| a == "Secure"),
            "{cookie:?}"
        );
        let csrf = body["csrf_token"].as_str().unwrap().to_owned();
        let session = format!("{COOKIE}={}", cookie.value);
        let change = |origin: String| {
            let (session, csrf, console) = (session.clone(), csrf.clone(), console.clone());
            async move {
                let headers = [
                    ("cookie", session.as_str()),
                    ("x-csrf-token", csrf.as_str()),
                    ("origin", origin.as_str()),
                    ("x-forwarded-proto", "https"),
                ];
                console.send("POST", "/v1/keys", &headers, Some("{}")).await
            }
        };
        assert_eq!(change(https_origin.clone()).await.status, 201);
        let plain = format!("http://{}", console.host());
        assert_eq!(change(plain).await.status, 403);
    }
}

/// A consumer given `default_key = true` by a hand edit of the keys file gets its default key
/// once the edit is reloaded, made by keygate and audited as keygate's. Breaks when only the
/// API and the commands make default keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_written_default_key_consumer_gets_its_key_after_the_reload() {
    let g = Gateway::start("console-default-key-reload").await;
    let mut text = std::fs::read_to_string(&g.files.keys).unwrap_or_default();
    text.push_str("\n[[consumers]]\nid = \"handmade\"\ndefault_key = true\n");
    replace_file(&g.files.keys, text.as_bytes());
    let started = Instant::now();
    let made = loop {
        // 404 until the edit is reloaded.
        let resp = g.api().get("/v1/keys?consumer=handmade").await;
        if resp.status == 200
            && let Some(k) = resp.json()["items"].as_array().and_then(|a| a.first())
        {
            break k.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no default key made: {}",
            resp.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(made["name"], "Default key (created by keygate)", "{made}");
    let page = expect(&g.api().get("/v1/keys?consumer=handmade").await, 200);
    assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");
    // Audited just after the write that the test saw published: polled, briefly.
    let line = loop {
        let lines = g.files.audit_lines();
        if let Some(l) = lines.iter().find(|l| l["object"] == made["id"]) {
            break l.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no audit line for {made}: {lines:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(line["actor"], "keygate", "{line}");
    assert_eq!(line["action"], "key.create", "{line}");
}
