//! The key console (issue 15) in a real headless Chromium against the real keygate binary: sign
//! in, create a key and use its secret on the proxy, revoke it, restrict it to an address, a
//! read session that can change nothing, sign out, an idle session, a cross-site POST, the
//! Content-Security-Policy, and the screenshots of the keys page and the create dialog.
//!
//! The page is driven only through the element ids and labels it promises the tests (see
//! `src/admin/console/index.html` and its README): `#sign-in`, `#admin-key`, `#keys-table`,
//! `tr[data-key-id]`, `[data-action]`, the dialogs' ids. Renaming one breaks these tests on
//! purpose. Without chromium they skip (and fail under `CI`).
//!
//! `KEYGATE_UPDATE_SCREENSHOT=1 cargo test --test it console::screenshots` also refreshes
//! `docs/console.png`, which README.md shows.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::admin::*;
use crate::harness::browser::*;
use crate::harness::policy::{connect_from, ip};
use crate::harness::*;

/// The console's message when a call finds the session gone.
const SESSION_ENDED: &str = "Your session has ended. Sign in again.";
/// The secret dialog's statement.
const SHOWN_ONCE: &str =
    "This secret is shown only once. keygate keeps only its hash, so it cannot be shown again.";
/// The header cells of the keys table, in order.
const KEY_COLUMNS: [&str; 7] = [
    "Name",
    "Key",
    "Consumer",
    "Last used",
    "Expires",
    "Status",
    "Actions",
];

/// `GET /v1/session` with `kg_session=cookie` sent from outside the browser.
async fn replay(admin: SocketAddr, path: &str, cookie: &str) -> Resp {
    get(admin, path, &[("cookie", &format!("kg_session={cookie}"))]).await
}

/// Every value in the page's localStorage and sessionStorage, and `document.cookie`.
async fn stored_by_page(b: &Browser) -> String {
    let v = b
        .js(
            "const all = [document.cookie];\
             for (const s of [localStorage, sessionStorage])\
               for (let i = 0; i < s.length; i++) all.push(s.key(i), s.getItem(s.key(i)));\
             return all.join('\\n');",
            vec![],
        )
        .await;
    v.as_str().unwrap_or_default().to_owned()
}

// --- sign in ---------------------------------------------------------------------------------

/// `/` on the admin listener is the sign-in form; a wrong admin key is refused with a message
/// and shows no keys; the right key shows who signed in, the keys table with its columns, a key
/// by its prefix only, and a config-file key without change buttons. The session cookie is
/// HttpOnly and SameSite=Strict, and the page stores no key anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_with_the_right_key_only() {
    let Some(c) = ConsoleGate::start("sign-in").await else {
        return;
    };
    let (made, secret) = c
        .api()
        .create_key(json!({ "id": "shown", "name": "Shown key" }))
        .await;
    let prefix = made["prefix"].as_str().unwrap();
    let b = &c.browser;
    b.open_console(c.kg.admin).await;
    let label = b
        .js(
            "const l = document.querySelector('label[for=admin-key]'); return l && l.textContent;",
            vec![],
        )
        .await;
    assert_eq!(label.as_str().map(str::trim), Some("Admin key"));
    assert_eq!(b.text_of("#sign-in-button").await.trim(), "Sign in");
    b.screenshot("sign-in", DESKTOP).await;

    b.sign_in("kg_wrong_bm90QW5BZG1pbktleUF0QWxsX2p1c3RXcm9uZzAwMQ")
        .await;
    let error = b.wait_for("#sign-in-error").await;
    assert!(!error.text().await.unwrap().trim().is_empty());
    assert!(
        !b.shown("#keys-table").await,
        "keys shown after a wrong key"
    );
    assert!(!b.shown("#who").await, "#who shown after a wrong key");
    assert!(
        c.session_cookie().await.is_none(),
        "a cookie for a wrong key"
    );

    let who = b.sign_in_ok(ADMIN_SECRET).await;
    assert!(
        who.contains("ops") && who.contains("admin"),
        "#who: {who:?}"
    );
    let headers = b
        .js(
            "return [...document.querySelectorAll('#keys-table thead th')]\
               .map(th => th.textContent.trim());",
            vec![],
        )
        .await;
    assert_eq!(headers, json!(KEY_COLUMNS));

    b.wait_key_row("shown").await;
    let row = b.text_of(&row_css("shown")).await;
    assert!(row.contains("Shown key"), "row: {row:?}");
    assert!(row.contains(&format!("{prefix}…")), "row: {row:?}");
    assert!(
        !b.page_text().await.contains(&secret),
        "a secret on the page"
    );
    assert!(
        b.shown(&format!("{} [data-action]", row_css("shown")))
            .await
    );

    b.wait_key_row(STATIC_ID).await;
    let fixed = row_css(STATIC_ID);
    assert!(b.text_of(&fixed).await.contains("config file"));
    assert!(
        !b.shown(&format!("{fixed} [data-action]")).await,
        "change buttons on a key of the config file"
    );

    let cookie = b
        .client
        .get_named_cookie("kg_session")
        .await
        .expect("no kg_session cookie after signing in");
    assert_eq!(cookie.http_only(), Some(true), "kg_session is not HttpOnly");
    assert_eq!(
        format!("{:?}", cookie.same_site()),
        "Some(Strict)",
        "kg_session is not SameSite=Strict"
    );
    let stored = stored_by_page(b).await;
    assert!(!stored.contains(ADMIN_SECRET), "the admin key is stored");
    assert!(
        !stored.contains("kg_session"),
        "the cookie is readable by scripts"
    );
}

// --- create, use, revoke ---------------------------------------------------------------------

/// A key made in the create dialog shows its secret once in `#secret-value`; that secret
/// passes the proxy (200, as that key); revoked in the console (after the confirm dialog), the
/// proxy refuses it within a second. The secret is never stored by the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_made_in_the_console_passes_until_revoked_there() {
    let Some(c) = ConsoleGate::signed_in("create", ADMIN_SECRET).await else {
        return;
    };
    let b = &c.browser;
    b.click("create-key").await;
    b.wait_dialog("key-dialog").await;
    assert_eq!(b.text_of("#key-submit").await.trim(), "Create");
    b.fill("key-name", "Made in the browser").await;
    b.find("#key-consumer")
        .await
        .select_by_value("acme")
        .await
        .unwrap();
    b.click("key-submit").await;

    b.wait_dialog("secret-dialog").await;
    b.wait_dialog_closed("key-dialog").await;
    let secret = b
        .wait_js(
            "the secret in #secret-value",
            "return document.getElementById('secret-value').value;",
            vec![],
        )
        .await
        .as_str()
        .unwrap()
        .to_owned();
    assert!(secret.starts_with("kg_"), "secret {secret:?}");
    let dialog = b.text_of("#secret-dialog").await;
    assert!(dialog.contains(SHOWN_ONCE), "secret dialog: {dialog:?}");
    assert!(
        !stored_by_page(b).await.contains(&secret),
        "the page stored the secret"
    );

    let id = c
        .key_named("Made in the browser")
        .await
        .expect("no key named 'Made in the browser' in the API");
    assert_eq!(c.api().key(&id).await["consumer"], "acme");
    assert_admitted(c.kg.proxy, &secret, &id).await;

    b.click("secret-done").await;
    b.wait_dialog_closed("secret-dialog").await;
    // The dialog's close event, which empties the input, comes a moment after it closes.
    b.wait_js(
        "the secret to leave the page",
        "return document.querySelector('#secret-value').value === ''",
        vec![],
    )
    .await;
    assert!(!b.page_text().await.contains(&secret));

    b.wait_key_row(&id).await;
    b.key_action(&id, "revoke").await;
    b.wait_dialog("confirm-dialog").await;
    assert_eq!(b.text_of("#confirm-yes").await.trim(), "Revoke");
    // Still in until confirmed.
    assert_admitted(c.kg.proxy, &secret, &id).await;
    b.click("confirm-yes").await;
    let confirmed = Instant::now();
    poll(
        Duration::from_secs(1),
        "the proxy to refuse the revoked key",
        async || (call(c.kg.proxy, &secret).await.status == 403).then_some(()),
    )
    .await;
    eprintln!("refused {:?} after the confirm", confirmed.elapsed());
    b.wait_gone(&row_css(&id)).await;
    assert_eq!(c.api().get(&format!("/v1/keys/{id}")).await.status, 404);
}

// --- allowed IPs -----------------------------------------------------------------------------

/// In the edit dialog the address is checked as it is typed; adding 203.0.113.7/32 and
/// 127.0.0.2/32 and saving lets 127.0.0.2 in and refuses 127.0.0.1 with `ip_not_allowed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_ip_added_in_the_console_shuts_out_other_addresses() {
    let Some(c) = ConsoleGate::start("allow-ip").await else {
        return;
    };
    let (_, secret) = c
        .api()
        .create_key(json!({ "id": "fenced", "name": "Fenced" }))
        .await;
    assert_admitted(c.kg.proxy, &secret, "fenced").await;
    let b = &c.browser;
    b.open_console(c.kg.admin).await;
    b.sign_in_ok(ADMIN_SECRET).await;
    b.wait_key_row("fenced").await;
    b.key_action("fenced", "edit").await;
    b.wait_dialog("key-dialog").await;
    assert_eq!(b.text_of("#key-submit").await.trim(), "Save");

    b.fill("key-ip-input", "203.0.113.999").await;
    b.wait_js(
        "#key-ip-input to be marked invalid",
        "return document.getElementById('key-ip-input').getAttribute('aria-invalid') === 'true';",
        vec![],
    )
    .await;
    assert_eq!(
        b.text_of("#key-ip-error").await.trim(),
        "Not an IP address or CIDR range"
    );
    assert!(!b.find("#key-ip-add").await.is_enabled().await.unwrap());

    for cidr in ["203.0.113.7/32", "127.0.0.2/32"] {
        b.fill("key-ip-input", cidr).await;
        b.wait_js(
            &format!("{cidr} to be accepted"),
            "return document.getElementById('key-ip-input').getAttribute('aria-invalid') !== 'true'\
               && !document.getElementById('key-ip-add').disabled;",
            vec![],
        )
        .await;
        b.click("key-ip-add").await;
        b.wait_for(&format!("#key-ip-list li[data-cidr=\"{cidr}\"]"))
            .await;
    }
    b.click("key-submit").await;
    b.wait_dialog_closed("key-dialog").await;

    let ips = c.api().key("fenced").await["allow_ips"].clone();
    let ips: Vec<&str> = ips
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        ips.iter().any(|i| i.starts_with("203.0.113.7"))
            && ips.iter().any(|i| i.starts_with("127.0.0.2")),
        "allow_ips {ips:?}"
    );
    // The 200 of the PATCH means the proxy already has the change: no wait.
    assert_refused(c.kg.proxy, &secret, "ip_not_allowed").await;
    let from_allowed = connect_from(ip("127.0.0.2"), c.kg.proxy)
        .await
        .send(request("GET", PROBE, &[("x-api-key", &secret)], empty()))
        .await;
    assert_eq!(from_allowed.status, 200, "{}", from_allowed.text());
}

// --- allowed origins -------------------------------------------------------------------------

/// Adds `origin` with the list editor `prefix` (`key` or `consumer`), after `bad` is refused
/// as typed.
async fn add_origin(b: &Browser, prefix: &str, bad: &str, origin: &str) {
    let input = format!("{prefix}-origin-input");
    b.fill(&input, bad).await;
    b.wait_js(
        &format!("#{input} to be marked invalid"),
        "return document.getElementById(arguments[0]).getAttribute('aria-invalid') === 'true';",
        vec![json!(input)],
    )
    .await;
    assert!(
        !b.find(&format!("#{prefix}-origin-add"))
            .await
            .is_enabled()
            .await
            .unwrap()
    );
    b.fill(&input, origin).await;
    b.wait_js(
        &format!("{origin} to be accepted"),
        "return !document.getElementById(arguments[0]).disabled;",
        vec![json!(format!("{prefix}-origin-add"))],
    )
    .await;
    b.click(&format!("{prefix}-origin-add")).await;
    b.wait_for(&format!("#{prefix}-origin-list li[data-cidr=\"{origin}\"]"))
        .await;
}

/// "Allowed origins" in the key and consumer dialogs: a key given one in its edit dialog is
/// refused without that Origin (`origin_not_allowed`) and let in with it; a consumer created
/// with one passes it to its keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_origins_set_in_the_console_fence_keys_to_their_pages() {
    let Some(c) = ConsoleGate::start("allow-origin").await else {
        return;
    };
    let (_, secret) = c
        .api()
        .create_key(json!({ "id": "web", "name": "Web" }))
        .await;
    let b = &c.browser;
    b.open_console(c.kg.admin).await;
    b.sign_in_ok(ADMIN_SECRET).await;
    b.wait_key_row("web").await;
    b.key_action("web", "edit").await;
    b.wait_dialog("key-dialog").await;
    add_origin(
        b,
        "key",
        "shop.example.com/cart",
        "https://shop.example.com",
    )
    .await;
    // For a person to look at: the field beside the allowed IPs.
    b.js(
        "document.getElementById('key-origin-input').scrollIntoView({block: 'center'});",
        vec![],
    )
    .await;
    b.screenshot("key-dialog-origins", (1280, 800)).await;
    b.click("key-submit").await;
    b.wait_dialog_closed("key-dialog").await;
    assert_eq!(
        c.api().key("web").await["allow_origins"],
        json!(["https://shop.example.com"])
    );
    assert_refused(c.kg.proxy, &secret, "origin_not_allowed").await;
    let from_shop = get(
        c.kg.proxy,
        PROBE,
        &[
            ("x-api-key", &secret),
            ("origin", "https://shop.example.com"),
        ],
    )
    .await;
    assert_eq!(from_shop.status, 200, "{}", from_shop.text());
    // The key's row says so, for a read session too.
    assert!(
        b.text_of(&row_css("web"))
            .await
            .contains("origins: https://shop.example.com"),
        "{}",
        b.text_of(&row_css("web")).await
    );

    b.click("nav-consumers").await;
    b.click("create-consumer").await;
    b.wait_dialog("consumer-dialog").await;
    b.fill("consumer-id", "shops").await;
    add_origin(b, "consumer", "https://*", "https://*.example.com").await;
    b.click("consumer-submit").await;
    b.wait_dialog_closed("consumer-dialog").await;
    let consumer = c.api().get("/v1/consumers/shops").await;
    assert_eq!(
        expect(&consumer, 200)["allow_origins"],
        json!(["https://*.example.com"])
    );
    let (_, owned) = c
        .api()
        .create_key(json!({ "id": "owned", "consumer": "shops" }))
        .await;
    assert_refused(c.kg.proxy, &owned, "origin_not_allowed").await;
}

// --- a read session --------------------------------------------------------------------------

/// A `read` session sees the keys but no change button, and a change forged from its page
/// (with its cookie and even its CSRF token) is refused with `role_insufficient`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_session_can_change_nothing() {
    let Some(c) = ConsoleGate::start("read-only").await else {
        return;
    };
    c.api()
        .create_key(json!({ "id": "kept", "name": "Kept" }))
        .await;
    let b = &c.browser;
    b.open_console(c.kg.admin).await;
    let who = b.sign_in_ok(READER_SECRET).await;
    assert!(
        who.contains("auditor") && who.contains("read only"),
        "#who: {who:?}"
    );
    b.wait_key_row("kept").await;
    assert!(
        !b.shown("#create-key").await,
        "#create-key shown to a read session"
    );
    assert!(
        !b.shown("[data-action]").await,
        "change buttons shown to a read session"
    );

    let (status, body) = b.fetch("/v1/session", json!({})).await;
    assert_eq!(status, 200, "{body}");
    let session: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(session["role"], "read");
    let token = session["csrf_token"].as_str().unwrap();
    let forged = [
        ("POST", "/v1/keys", json!({ "name": "forged" })),
        ("PATCH", "/v1/keys/kept", json!({ "name": "forged" })),
        ("DELETE", "/v1/keys/kept", Value::Null),
    ];
    for (method, path, body) in forged {
        let mut init = json!({
            "method": method,
            "credentials": "same-origin",
            "headers": { "content-type": "application/json", "x-csrf-token": token },
        });
        if !body.is_null() {
            init["body"] = json!(body.to_string());
        }
        let (status, answer) = b.fetch(path, init).await;
        assert_eq!(status, 403, "{method} {path}: {answer}");
        let problem: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(
            problem["code"], "role_insufficient",
            "{method} {path}: {answer}"
        );
    }
    assert_eq!(c.api().key("kept").await["name"], "Kept");
    assert!(
        c.key_named("forged").await.is_none(),
        "a read session made a key"
    );
}

// --- sign out, idle expiry -------------------------------------------------------------------

/// `Sign out` returns to the sign-in form, and the cookie it used no longer works, even sent
/// again from outside the browser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_out_ends_the_session() {
    let Some(c) = ConsoleGate::signed_in("sign-out", ADMIN_SECRET).await else {
        return;
    };
    let b = &c.browser;
    let cookie = c.session_cookie().await.expect("no session cookie");
    let before = replay(c.kg.admin, "/v1/session", &cookie).await;
    assert_eq!(before.status, 200, "{}", before.text());

    b.click("sign-out").await;
    b.wait_for("#sign-in").await;
    b.wait_gone("#keys-table").await;
    assert!(!b.shown("#who").await);
    assert!(
        c.session_cookie().await.is_none(),
        "the cookie is still set"
    );

    for path in ["/v1/session", "/v1/keys"] {
        let after = replay(c.kg.admin, path, &cookie).await;
        assert_problem(&after, 403, "session_expired");
    }
    // A reload does not bring the session back.
    b.goto(&console_url(c.kg.admin)).await;
    b.wait_for("#sign-in").await;
    assert!(!b.shown("#keys-table").await);
}

/// With `session_idle = "3s"`, a session left alone for 4 s is sent back to sign-in by the next
/// thing the person does, with the console's message; its cookie is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_is_sent_back_to_sign_in() {
    let Some(c) = ConsoleGate::start_with("idle", "session_idle = \"3s\"").await else {
        return;
    };
    let b = &c.browser;
    b.open_console(c.kg.admin).await;
    b.sign_in_ok(ADMIN_SECRET).await;
    let cookie = c.session_cookie().await.expect("no session cookie");
    // The behaviour under test is time passing: nothing to poll for.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_problem(
        &replay(c.kg.admin, "/v1/session", &cookie).await,
        403,
        "session_expired",
    );

    b.click("nav-consumers").await;
    b.wait_for("#sign-in").await;
    b.wait_js(
        "the session-ended message",
        "return document.body.innerText.includes(arguments[0]);",
        vec![json!(SESSION_ENDED)],
    )
    .await;
    assert!(!b.shown("#consumers-table").await);
    assert!(!b.shown("#keys-table").await);
}

// --- cross-site requests ---------------------------------------------------------------------

/// A page on another origin (another port of 127.0.0.1: same site, so the SameSite=Strict
/// cookie does go along) whose form posts to the admin `/v1/keys` while the person is signed
/// in: 403 `cross_site_request`, and no key is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_site_post_is_refused() {
    let Some(c) = ConsoleGate::signed_in("cross-site", ADMIN_SECRET).await else {
        return;
    };
    let b = &c.browser;
    // text/plain needs no CORS preflight; the field's name, `=` and value make its body a
    // valid key: {"name":"cross-site="}.
    let page = format!(
        r#"<!doctype html><title>elsewhere</title>
<form id="f" method="POST" action="http://{admin}/v1/keys" enctype="text/plain">
<input type="hidden" name='{{"name":"cross-site' value='"}}'>
</form>
<script>document.getElementById("f").submit();</script>"#,
        admin = c.kg.admin
    );
    let elsewhere = start_upstream_with(move |_req, _peer| {
        let page = page.clone();
        async move {
            http::Response::builder()
                .header("content-type", "text/html; charset=utf-8")
                .body(full(page))
                .unwrap()
        }
    })
    .await;
    assert_ne!(elsewhere.addr, c.kg.admin);
    b.goto(&format!("http://{}/", elsewhere.addr)).await;
    let target = format!("http://{}/v1/keys", c.kg.admin);
    b.wait_js(
        "the form's POST to land on the admin listener",
        "return location.href === arguments[0] && document.body && document.body.innerText;",
        vec![json!(target)],
    )
    .await;
    let answer = b.page_text().await;
    let problem: Value = serde_json::from_str(answer.trim())
        .unwrap_or_else(|e| panic!("the answer is not JSON ({e}): {answer}"));
    assert_eq!(problem["status"], 403, "{answer}");
    assert_eq!(problem["code"], "cross_site_request", "{answer}");
    assert!(
        c.key_named("cross-site=").await.is_none(),
        "the cross-site POST made a key"
    );

    // The same from a script on that origin (the answer is opaque to it): still no key.
    b.goto(&format!("http://{}/nothing", elsewhere.addr)).await;
    b.js_async(
        "const done = arguments[arguments.length - 1];\
         fetch(arguments[0], { method: 'POST', mode: 'no-cors', credentials: 'include',\
           headers: { 'content-type': 'text/plain' }, body: '{\"name\":\"cross-site\"}' })\
           .then(() => done(true), () => done(false));",
        vec![json!(target)],
    )
    .await;
    assert!(
        c.key_named("cross-site").await.is_none(),
        "the cross-site fetch made a key"
    );
    // The person's own session is unharmed.
    let cookie = c.session_cookie().await.expect("no session cookie");
    assert_eq!(replay(c.kg.admin, "/v1/session", &cookie).await.status, 200);
}

// --- Content-Security-Policy -----------------------------------------------------------------

/// Whether `html` has a `<script>` without `src`, an `on...=` attribute or a `style=`
/// attribute: what the policy would block. Returns the first such piece.
fn inline_code(html: &str) -> Option<String> {
    let lower = html.to_ascii_lowercase();
    for (at, _) in lower.match_indices("<script") {
        let end = lower[at..].find('>').map_or(lower.len(), |e| at + e);
        if !lower[at..end].contains(" src=") {
            return Some(html[at..end.min(html.len())].to_owned());
        }
    }
    let bytes = lower.as_bytes();
    for (at, _) in lower.match_indices(" on") {
        let name: String = lower[at + 3..]
            .chars()
            .take_while(char::is_ascii_alphabetic)
            .collect();
        let after = at + 3 + name.len();
        if !name.is_empty() && bytes.get(after) == Some(&b'=') {
            return Some(html[at..(after + 20).min(html.len())].to_owned());
        }
    }
    lower
        .find(" style=")
        .map(|at| html[at..(at + 30).min(html.len())].to_owned())
}

/// Every console file is served with the policy (no inline script, `frame-ancestors 'none'`),
/// the page has no inline code, runs under the policy without a violation of its own, and a
/// script or handler injected inline does not run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_runs_under_a_strict_content_security_policy() {
    let Some(c) = ConsoleGate::start("csp").await else {
        return;
    };
    for path in ["/", "/console/app.js", "/console/app.css", "/v1/session"] {
        let resp = get(c.kg.admin, path, &[]).await;
        let csp = resp
            .header("content-security-policy")
            .unwrap_or_else(|| panic!("no Content-Security-Policy on {path}"));
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'self'",
        ] {
            assert!(
                csp.contains(directive),
                "{path}: {directive:?} not in {csp:?}"
            );
        }
        assert!(!csp.contains("unsafe-"), "{path}: {csp}");
    }
    let index = get(c.kg.admin, "/", &[]).await;
    assert_eq!(index.status, 200);
    assert!(
        index
            .header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    if let Some(piece) = inline_code(&index.text()) {
        panic!("inline code in index.html: {piece}");
    }

    let b = &c.browser;
    b.open_console(c.kg.admin).await;
    b.sign_in_ok(ADMIN_SECRET).await;
    b.click("create-key").await;
    b.wait_dialog("key-dialog").await;
    let own: Vec<_> = b
        .console_messages()
        .await
        .into_iter()
        .filter(|(_, m)| m.contains("Content Security Policy"))
        .collect();
    assert!(
        own.is_empty(),
        "the console violates its own policy: {own:#?}"
    );

    let ran = b
        .js(
            "window.__inline = false; window.__handler = false;\
             const s = document.createElement('script');\
             s.textContent = 'window.__inline = true;';\
             document.head.appendChild(s);\
             const x = document.createElement('button');\
             x.setAttribute('onclick', 'window.__handler = true;');\
             document.body.appendChild(x); x.click(); x.remove();\
             return [window.__inline, window.__handler];",
            vec![],
        )
        .await;
    assert_eq!(ran, json!([false, false]), "inline code ran");
    // Chromium reports each blocked piece in the console: the policy was what stopped them.
    let refused = b.console_messages().await;
    for what in ["inline script", "inline event handler"] {
        assert!(
            refused
                .iter()
                .any(|(_, m)| m.contains("Content Security Policy") && m.contains(what)),
            "no violation reported for the injected {what}: {refused:#?}"
        );
    }
}

// --- screenshots -----------------------------------------------------------------------------

/// The keys page (with a few keys of every kind) and the create dialog at 1280x800 and 390x844,
/// written to `target/console-screenshots/`; at 390 wide the page itself does not scroll
/// sideways (the table scrolls in its box or becomes cards).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screenshots_of_the_keys_page_and_the_create_dialog() {
    let Some(c) = ConsoleGate::start("screenshots").await else {
        return;
    };
    let api = c.api();
    let soon = in_days(12);
    let keys = [
        json!({ "name": "Checkout service", "consumer": "acme", "expires_at": "2027-06-30T00:00:00Z", "quota": "100000/month" }),
        json!({ "name": "Mobile app", "consumer": "acme", "allow_ips": ["203.0.113.0/24"] }),
        json!({ "name": "Partner export", "access": "read-only", "expires_at": soon }),
        json!({ "name": "Old staging key", "status": "inactive" }),
    ];
    let mut secrets = Vec::new();
    for k in keys {
        secrets.push(api.create_key(k).await.1);
    }
    // Used once, so "Last used" has a time.
    assert_eq!(call(c.kg.proxy, &secrets[0]).await.status, 200);

    let b = &c.browser;
    b.open_console(c.kg.admin).await;
    b.sign_in_ok(ADMIN_SECRET).await;
    b.wait_js(
        "the keys in the table",
        "return document.querySelectorAll('#keys-table tr[data-key-id]').length >= 5;",
        vec![],
    )
    .await;
    b.screenshot("keys", DESKTOP).await;
    b.screenshot("keys", PHONE).await;
    let widths = b
        .js(
            "return [document.documentElement.scrollWidth, window.innerWidth];",
            vec![],
        )
        .await;
    assert!(
        widths[0].as_u64() <= widths[1].as_u64(),
        "the keys page scrolls sideways at 390 wide: {widths}"
    );

    b.set_viewport(DESKTOP).await;
    b.click("create-key").await;
    b.wait_dialog("key-dialog").await;
    b.screenshot("create-dialog", DESKTOP).await;
    b.screenshot("create-dialog", PHONE).await;
    let fits = b
        .js(
            "const r = document.getElementById('key-dialog').getBoundingClientRect();\
             return r.left >= 0 && r.right <= window.innerWidth;",
            vec![],
        )
        .await;
    assert_eq!(fits, json!(true), "the create dialog is wider than 390");
    for name in ["keys", "create-dialog"] {
        for (w, h) in [DESKTOP, PHONE] {
            let path = screenshot_dir().join(format!("{name}-{w}x{h}.png"));
            let png = std::fs::read(&path).unwrap();
            assert!(png.len() > 1_000, "{} is empty", path.display());
        }
    }
}
