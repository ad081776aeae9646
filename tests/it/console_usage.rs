//! The key console's usage chart and quota (issue 16) in a real headless Chromium against the
//! real keygate binary: a key's and a consumer's last 30 days drawn from real proxied requests
//! (with the totals in the text summary), the empty state, a quota set in the create dialog and
//! spent on the proxy, "Grant requests" and "Reset quota" letting exactly that many more through
//! and their audit lines, a quota on a consumer from its dialog, a read session that sees the
//! quota but no button to change it, and the 390x844 layout.
//!
//! Like `console.rs`, the page is driven only through the ids and labels of
//! `src/admin/console/CONTRACT.md`. Without chromium these tests skip (and fail under `CI`).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::admin::*;
use crate::harness::browser::*;

/// The usage dialog's summary for `requests` and `denied` over the last 30 days (the
/// sentence before any "Busiest day").
fn summary(requests: u64, denied: u64) -> String {
    let n = |v: u64| {
        // "1,234", as the page writes it (Intl.NumberFormat('en')).
        let s = v.to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    };
    let noun = if requests == 1 { "request" } else { "requests" };
    let denied = if denied == 0 {
        "none".to_owned()
    } else {
        n(denied)
    };
    format!(
        "{} {noun} in the last 30 days, {denied} denied.",
        n(requests)
    )
}

/// Today (UTC) as `YYYY-MM-DD`, as the chart names its days.
fn today() -> String {
    let d = time::OffsetDateTime::now_utc().date();
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// Sends `n` requests with `secret`; how many the upstream answered and how many keygate
/// refused, and the refusals' codes.
async fn send(proxy: std::net::SocketAddr, secret: &str, n: usize) -> (u64, u64, Vec<String>) {
    let (mut allowed, mut denied, mut codes) = (0, 0, Vec::new());
    for _ in 0..n {
        let (status, code) = outcome(&call(proxy, secret).await);
        if status == 200 && code.is_empty() {
            allowed += 1;
        } else {
            denied += 1;
            codes.push(format!("{status} {code}"));
        }
    }
    (allowed, denied, codes)
}

/// Opens the usage dialog from the row `row` (a key's or a consumer's).
async fn open_usage(b: &Browser, row: &str) {
    b.click_css(&format!("{row} button[data-usage]")).await;
    b.wait_dialog("usage-dialog").await;
}

/// Polls until the text of `css` contains `want`; returns it.
async fn wait_text(b: &Browser, css: &str, want: &str) -> String {
    let start = Instant::now();
    let mut got = String::new();
    for _ in 0..1_000 {
        got = b
            .js(
                "const e = document.querySelector(arguments[0]);\
                 return e && e.checkVisibility() ? e.textContent : '';",
                vec![json!(css)],
            )
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if got.contains(want) {
            return got;
        }
        if start.elapsed() >= WAIT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dialog = b
        .js(
            "const d = document.querySelector('dialog[open]'); return d ? d.innerText : '';",
            vec![],
        )
        .await;
    panic!(
        "{css} does not say {want:?} within {WAIT:?}; it says {got:?}\nopen dialog: {dialog}\nbrowser log: {:#?}",
        b.console_messages().await
    );
}

/// Asserts that the page does not scroll sideways and that dialog `#id` fits the window.
async fn assert_fits(b: &Browser, id: &str, what: &str) {
    let v = b
        .js(
            "const r = document.getElementById(arguments[0]).getBoundingClientRect();\
             return [document.documentElement.scrollWidth <= window.innerWidth,\
                     r.left >= 0 && r.right <= window.innerWidth];",
            vec![json!(id)],
        )
        .await;
    assert_eq!(
        v,
        json!([true, true]),
        "{what}: [no sideways scroll, #{id} fits]"
    );
}

/// Asserts that the page does not scroll sideways at its current width.
async fn assert_no_sideways_scroll(b: &Browser, what: &str) {
    let v = b
        .js(
            "return [document.documentElement.scrollWidth, window.innerWidth];",
            vec![],
        )
        .await;
    assert!(
        v[0].as_u64() <= v[1].as_u64(),
        "{what} scrolls sideways: {v}"
    );
}

/// Every message the browser logged about the Content-Security-Policy.
async fn csp_violations(b: &Browser) -> Vec<String> {
    b.console_messages()
        .await
        .into_iter()
        .filter(|(_, m)| m.contains("Content Security Policy"))
        .map(|(_, m)| m)
        .collect()
}

// --- the chart -------------------------------------------------------------------------------

/// Real requests through the proxy (some refused by the key's rate limit) show in the key's
/// usage dialog at once: a bar for today with the right counts, the totals beside the legend and
/// the summary "N requests in the last 30 days, D denied."; the SVG is an image with a title. The
/// consumer's usage dialog shows the same totals (its only used key); a key never used shows the
/// empty state and no chart. Nothing breaks the CSP, and at 390x844 the dialog fits.
/// Fails when the page draws the wrong days, or the summary adds up other counts than the API's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_shows_a_keys_and_a_consumers_last_30_days() {
    let Some(f) = ConsoleGate::start("usage-chart").await else {
        return;
    };
    let api = f.api();
    let (_, busy) = api
        .create_key(
            json!({ "id": "busy", "name": "Busy", "consumer": "acme", "rate_limit": "3/minute" }),
        )
        .await;
    api.create_key(json!({ "id": "idle", "name": "Idle" }))
        .await;
    let day = today();
    let (allowed, denied, codes) = send(f.kg.proxy, &busy, 7).await;
    // Requests on both sides of midnight UTC would make two bars; then the per-day checks wait
    // for another run.
    let one_day = today() == day;
    assert!(allowed >= 1, "nothing allowed: {codes:?}");
    assert!(denied >= 1, "the rate limit refused nothing");
    assert!(
        codes.iter().all(|c| c == "429 rate_limited"),
        "refusals: {codes:?}"
    );
    let requests = allowed + denied;
    // What the API says is what the page must show.
    let counted = expect(&api.get("/v1/keys/busy/usage").await, 200);
    assert_eq!(counted["total"]["requests"], requests, "{counted}");
    assert_eq!(counted["total"]["denied"], denied, "{counted}");

    let b = &f.browser;
    f.sign_in().await;
    b.wait_key_row("busy").await;
    open_usage(b, &row_css("busy")).await;
    let want = summary(requests, denied);
    let said = wait_text(b, "#usage-summary", &want).await;
    assert!(said.starts_with(&want), "summary: {said:?}");
    assert_eq!(b.text_of("#usage-dialog-sub").await.trim(), "“Busy” (busy)");

    let chart = b
        .js(
            "const s = document.querySelector('#usage-chart svg');\
             if (!s) return null;\
             const t = document.getElementById(s.getAttribute('aria-labelledby'));\
             const day = s.querySelector(`g.usage-day[data-day='${arguments[0]}']`);\
             return {role: s.getAttribute('role'), title: t ? t.textContent : '',\
               days: s.querySelectorAll('g.usage-day').length,\
               used_days: [...s.querySelectorAll('g.usage-day')].filter(g => g.dataset.requests !== '0').length,\
               today: day ? [day.dataset.requests, day.dataset.allowed, day.dataset.denied,\
                 day.querySelector('title').textContent,\
                 !!day.querySelector('.usage-bar-allowed'), !!day.querySelector('.usage-bar-denied')] : null,\
               allowed: document.getElementById('usage-total-allowed').textContent,\
               denied: document.getElementById('usage-total-denied').textContent,\
               styled: document.querySelectorAll('#usage-dialog [style]').length};",
            vec![json!(day)],
        )
        .await;
    assert_eq!(chart["role"], "img", "{chart}");
    assert!(
        chart["title"]
            .as_str()
            .unwrap()
            .starts_with("Requests per UTC day"),
        "{chart}"
    );
    assert_eq!(chart["days"], 30, "{chart}");
    if one_day {
        assert_eq!(chart["used_days"], 1, "{chart}");
        let bar = chart["today"].as_array().expect("no bar group for today");
        assert_eq!(
            bar[0..3],
            [
                json!(requests.to_string()),
                json!(allowed.to_string()),
                json!(denied.to_string())
            ],
            "{chart}"
        );
        assert!(
            bar[3].as_str().unwrap().contains(&format!(
                "{requests} requests, {allowed} allowed, {denied} denied"
            )),
            "{chart}"
        );
        assert_eq!(bar[4..6], [json!(true), json!(true)], "{chart}");
    }
    assert_eq!(chart["allowed"], allowed.to_string(), "{chart}");
    assert_eq!(chart["denied"], denied.to_string(), "{chart}");
    assert_eq!(chart["styled"], 0, "a style attribute in the dialog");
    // No quota on this key: the section says so and offers no button.
    let none = wait_text(b, "#quota-none", "No quota on this key").await;
    assert!(none.contains("Edit"), "{none:?}");
    assert!(!b.shown("#quota-grant").await && !b.shown("#quota-reset").await);

    b.screenshot("usage-dialog", DESKTOP).await;
    b.screenshot("usage-dialog", PHONE).await;
    assert_fits(b, "usage-dialog", "the usage dialog at 390 wide").await;
    let width = b
        .js(
            "return document.querySelector('#usage-chart svg').getBoundingClientRect().width;",
            vec![],
        )
        .await;
    assert!(
        width.as_f64().unwrap() > 200.0,
        "the chart is {width} px wide at 390"
    );
    b.set_viewport(DESKTOP).await;

    // Closed, the focus is back on the row's Usage button.
    b.click("usage-close").await;
    b.wait_dialog_closed("usage-dialog").await;
    b.wait_js(
        "the focus on busy's Usage button",
        "const a = document.activeElement; return !!a && a.matches(arguments[0]);",
        vec![json!(format!("{} button[data-usage]", row_css("busy")))],
    )
    .await;

    open_usage(b, &row_css("idle")).await;
    wait_text(b, "#usage-summary", "No requests in the last 30 days.").await;
    assert!(
        !b.shown("#usage-chart svg").await,
        "a chart for a key never used"
    );
    b.click("usage-close").await;
    b.wait_dialog_closed("usage-dialog").await;

    b.click("nav-consumers").await;
    let acme = "#consumers-table tr[data-consumer-id=\"acme\"]";
    b.wait_for(acme).await;
    open_usage(b, acme).await;
    let said = wait_text(b, "#usage-summary", &want).await;
    assert!(said.starts_with(&want), "acme's summary: {said:?}");
    assert!(b.text_of("#usage-dialog-title").await.contains("Consumer"));
    wait_text(b, "#quota-none", "No quota on this consumer").await;
    b.click("usage-close").await;
    b.wait_dialog_closed("usage-dialog").await;

    let violations = csp_violations(b).await;
    assert!(violations.is_empty(), "CSP violations: {violations:#?}");
    for size in [DESKTOP, PHONE] {
        let path = screenshot_dir().join(format!("usage-dialog-{}x{}.png", size.0, size.1));
        assert!(std::fs::read(&path).unwrap().len() > 1_000);
    }
}

// --- quota: set, spend, grant, reset -------------------------------------------------------

/// A key made in the create dialog with the quota 3 per month (after the API refused 0 and
/// the page refused "1.5", each beside the Quota field) has `quota = "3/month"`; the proxy lets
/// 3 requests through and refuses the 4th with 429 `quota_exceeded`. The keys table says the
/// quota is used up, and the usage dialog "3 used of 3 this month". "Grant requests" 2 lets
/// exactly 2 more through, "Reset quota" (after its confirm dialog) lets requests through
/// again, and the audit view shows `quota.grant` and `quota.reset` for the key; its edit dialog
/// changes the quota. A consumer made in its dialog with a quota of 5 per day has
/// `quota = "5/day"`, shown in the consumers table's Quota column; an edit that leaves the
/// field alone keeps it, and emptying the field removes it.
/// Fails when the page does not send the quota, or posts a reset or grant elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_set_in_the_console_is_spent_granted_and_reset() {
    let Some(f) = ConsoleGate::start("usage-quota").await else {
        return;
    };
    let b = &f.browser;
    f.sign_in().await;
    b.click("create-key").await;
    b.wait_dialog("key-dialog").await;
    b.fill("key-name", "Metered").await;
    // 0 passes the page's check (a whole number) and is refused by the API, beside the field.
    b.fill("key-quota", "0").await;
    b.click("key-submit").await;
    let error = "#key-form [data-error-for=\"quota\"]";
    b.wait_for(error).await;
    let detail = b.text_of(error).await;
    assert!(detail.contains("quota"), "the API's error: {detail:?}");
    assert!(
        f.key_named("Metered").await.is_none(),
        "a key made with quota 0"
    );
    b.fill("key-quota", "1.5").await;
    b.wait_gone(error).await;
    b.click("key-submit").await;
    b.wait_for(error).await;
    let beside = b
        .js(
            "const e = document.querySelector(arguments[0]);\
             return [document.getElementById('key-quota').closest('.field').contains(e),\
               document.getElementById('key-quota').getAttribute('aria-invalid')];",
            vec![json!(error)],
        )
        .await;
    assert_eq!(
        beside,
        json!([true, "true"]),
        "[error beside Quota, aria-invalid]"
    );
    b.fill("key-quota", "3").await;
    b.wait_gone(error).await;
    b.select("key-quota-period", "month").await;
    b.js(
        "document.getElementById('key-quota').scrollIntoView({block: 'center'});",
        vec![],
    )
    .await;
    b.screenshot("create-dialog-quota", DESKTOP).await;
    b.screenshot("create-dialog-quota", PHONE).await;
    b.set_viewport(DESKTOP).await;
    b.click("key-submit").await;
    let secret = b.shown_secret().await;
    b.click("secret-done").await;
    b.wait_dialog_closed("secret-dialog").await;
    let id = f.key_named("Metered").await.expect("no key Metered");
    let key = f.api().key(&id).await;
    assert_eq!(key["quota"], "3/month", "{key}");

    let (allowed, denied, codes) = send(f.kg.proxy, &secret, 4).await;
    assert_eq!((allowed, denied), (3, 1), "{codes:?}");
    assert_eq!(codes, ["429 quota_exceeded"]);

    // The table learns of it at its next load.
    b.click("nav-consumers").await;
    b.click("nav-keys").await;
    wait_text(b, &row_css(&id), "quota used up").await;
    open_usage(b, &row_css(&id)).await;
    let text = wait_text(b, "#quota-text", "3 used of 3 this month, resets ").await;
    assert!(!text.contains("granted"), "{text:?}");
    wait_text(b, "#quota-left", "Used up").await;
    let meter = b
        .js(
            "const m = document.getElementById('quota-meter'); return [m.value, m.max];",
            vec![],
        )
        .await;
    assert_eq!(meter, json!([3, 3]), "[meter value, max]");
    b.screenshot("quota-used-up", DESKTOP).await;

    b.click("quota-grant").await;
    b.wait_dialog("grant-dialog").await;
    b.fill("grant-requests", "2").await;
    b.click("grant-submit").await;
    b.wait_dialog_closed("grant-dialog").await;
    wait_text(b, "#quota-text", "3 used of 3 (+2 granted) this month").await;
    wait_text(b, "#quota-left", "2 left this month").await;
    let (allowed, denied, codes) = send(f.kg.proxy, &secret, 3).await;
    assert_eq!((allowed, denied), (2, 1), "after granting 2: {codes:?}");
    assert_eq!(codes, ["429 quota_exceeded"]);

    b.click("quota-reset").await;
    b.wait_dialog("confirm-dialog").await;
    assert_eq!(b.text_of("#confirm-yes").await.trim(), "Reset quota");
    b.click("confirm-yes").await;
    b.wait_dialog_closed("confirm-dialog").await;
    wait_text(b, "#quota-text", "0 used of 3").await;
    assert!(
        b.find("#usage-dialog")
            .await
            .attr("open")
            .await
            .unwrap()
            .is_some(),
        "the usage dialog closed with the confirm dialog"
    );
    assert_admitted(f.kg.proxy, &secret, &id).await;
    b.click("usage-refresh").await;
    wait_text(b, "#quota-text", "1 used of 3").await;
    b.click("usage-close").await;
    b.wait_dialog_closed("usage-dialog").await;

    // Closing after a change reloads the table: its row is replaced once the badge is gone, and
    // only then is its Edit button the one to click.
    b.wait_js(
        "the key's row without its used-up badge",
        "const r = document.querySelector(arguments[0]);\
         return !!r && !r.textContent.includes('quota used up') &&\
           !document.getElementById('keys-table').hasAttribute('aria-busy');",
        vec![json!(row_css(&id))],
    )
    .await;
    // The edit dialog shows the quota; changed there, the key has the new one.
    b.key_action(&id, "edit").await;
    b.wait_dialog("key-dialog").await;
    assert_eq!(b.value_of("#key-quota").await, "3");
    assert_eq!(b.value_of("#key-quota-period").await, "month");
    b.fill("key-quota", "10").await;
    b.select("key-quota-period", "day").await;
    b.click("key-submit").await;
    b.wait_dialog_closed("key-dialog").await;
    assert_eq!(f.api().key(&id).await["quota"], "10/day");
    wait_text(b, &row_css(&id), "quota 10/day").await;

    let audit = expect(&f.api().get(&format!("/v1/audit?object={id}")).await, 200);
    let audited: Vec<String> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["action"].as_str().unwrap_or_default().to_owned())
        .collect();
    for action in ["quota.grant", "quota.reset"] {
        assert!(
            audited.iter().any(|a| a == action),
            "no {action} in the audit log: {audited:?}"
        );
    }
    b.click("nav-audit").await;
    b.fill("audit-filter", &id).await;
    for action in ["quota.grant", "quota.reset"] {
        wait_text(b, "#audit-table tbody", action).await;
    }

    // A consumer's quota, from its dialog.
    b.click("nav-consumers").await;
    b.click("create-consumer").await;
    b.wait_dialog("consumer-dialog").await;
    b.fill("consumer-id", "paying").await;
    b.fill("consumer-quota", "5").await;
    b.select("consumer-quota-period", "day").await;
    b.click("consumer-submit").await;
    b.wait_dialog_closed("consumer-dialog").await;
    let paying = expect(&f.api().get("/v1/consumers/paying").await, 200);
    assert_eq!(paying["quota"], "5/day", "{paying}");
    let row = "#consumers-table tr[data-consumer-id=\"paying\"]";
    b.wait_for(row).await;
    let headers = b
        .js(
            "return [...document.querySelectorAll('#consumers-table thead th')].map(t => t.textContent.trim());",
            vec![],
        )
        .await;
    let quota_column = headers
        .as_array()
        .unwrap()
        .iter()
        .position(|h| h == "Quota")
        .expect("no Quota column");
    let cell = b
        .text_of(&format!("{row} td:nth-child({})", quota_column + 1))
        .await;
    assert!(cell.contains("0 of 5 today"), "Quota cell: {cell:?}");
    // Edited without touching the quota, it keeps it; emptied, it has none.
    b.click_css(&format!("{row} [data-action=\"edit\"]")).await;
    b.wait_dialog("consumer-dialog").await;
    assert_eq!(b.value_of("#consumer-quota").await, "5");
    assert_eq!(b.value_of("#consumer-quota-period").await, "day");
    b.fill("consumer-name", "Paying Co").await;
    b.click("consumer-submit").await;
    b.wait_dialog_closed("consumer-dialog").await;
    let paying = expect(&f.api().get("/v1/consumers/paying").await, 200);
    assert_eq!(
        (paying["name"].clone(), paying["quota"].clone()),
        (json!("Paying Co"), json!("5/day"))
    );
    // The save reloads the table; the row with the new name is the one to click.
    wait_text(b, row, "Paying Co").await;
    b.click_css(&format!("{row} [data-action=\"edit\"]")).await;
    b.wait_dialog("consumer-dialog").await;
    b.fill("consumer-quota", "").await;
    // WebDriver's clear sends no input event; the page reads the value at submit anyway.
    b.click("consumer-submit").await;
    b.wait_dialog_closed("consumer-dialog").await;
    let paying = expect(&f.api().get("/v1/consumers/paying").await, 200);
    assert_eq!(paying["quota"], Value::Null, "{paying}");
}

// --- read session, and the phone -------------------------------------------------------------

/// A read session opens a key's usage dialog and sees its quota ("1 used of 10 today") and its
/// consumer's shared one, but neither "Grant requests" nor "Reset quota", and no change button
/// anywhere. The consumers table's Quota column and the keys table's quota chip at 1280x800 and
/// 390x844 (cards), and the usage dialog with a quota at 390x844: nothing scrolls sideways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_session_sees_the_quota_but_no_quota_buttons() {
    let Some(f) = ConsoleGate::start("usage-read").await else {
        return;
    };
    let api = f.api();
    api.create_consumer(json!({ "id": "globex", "name": "Globex", "quota": "100/month" }))
        .await;
    let (_, capped) = api
        .create_key(
            json!({ "id": "capped", "name": "Capped", "consumer": "globex", "quota": "10/day" }),
        )
        .await;
    api.create_key(json!({ "id": "plain", "name": "Plain", "consumer": "acme" }))
        .await;
    assert_admitted(f.kg.proxy, &capped, "capped").await;

    let b = &f.browser;
    b.open_console(f.kg.admin).await;
    let who = b.sign_in_ok(READER_SECRET).await;
    assert!(who.contains("read only"), "#who: {who:?}");
    b.wait_key_row("capped").await;
    let row = b.text_of(&row_css("capped")).await;
    assert!(row.contains("quota 10/day"), "row: {row:?}");
    assert!(
        !b.shown("[data-action]").await,
        "change buttons for a read session"
    );
    b.screenshot("keys-quota", PHONE).await;
    assert_no_sideways_scroll(b, "the keys page at 390 wide").await;
    b.set_viewport(DESKTOP).await;

    open_usage(b, &row_css("capped")).await;
    // "resets in 5 hours", or "resets tomorrow" when the reset is about a day away (just
    // after midnight UTC): the relative time reads as people say it.
    wait_text(b, "#quota-text", "1 used of 10 today, resets ").await;
    wait_text(b, "#quota-consumer", "globex").await;
    wait_text(b, "#usage-summary", &summary(1, 0)).await;
    let buttons = b
        .js(
            "return ['quota-grant', 'quota-reset'].map(id => !!document.getElementById(id));",
            vec![],
        )
        .await;
    assert_eq!(
        buttons,
        json!([false, false]),
        "[Grant requests, Reset quota] in a read session's page"
    );
    b.screenshot("usage-quota-dialog", PHONE).await;
    assert_fits(
        b,
        "usage-dialog",
        "the usage dialog with a quota at 390 wide",
    )
    .await;
    b.set_viewport(DESKTOP).await;
    b.click("usage-close").await;
    b.wait_dialog_closed("usage-dialog").await;

    b.click("nav-consumers").await;
    let globex = "#consumers-table tr[data-consumer-id=\"globex\"]";
    wait_text(b, globex, "1 of 100 this month").await;
    b.screenshot("consumers-quota", DESKTOP).await;
    b.screenshot("consumers-quota", PHONE).await;
    assert_no_sideways_scroll(b, "the consumers page at 390 wide").await;
    b.set_viewport(DESKTOP).await;
    open_usage(b, globex).await;
    wait_text(b, "#quota-text", "1 used of 100 this month").await;
    assert!(
        !b.shown("#quota-actions").await,
        "quota actions for a read session"
    );

    // The API agrees: a read session's reset, with its CSRF token, is refused.
    let (status, body) = b.fetch("/v1/session", json!({})).await;
    assert_eq!(status, 200, "{body}");
    let token = serde_json::from_str::<Value>(&body).unwrap()["csrf_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = b
        .fetch(
            "/v1/keys/capped/quota/reset",
            json!({ "method": "POST", "credentials": "same-origin", "headers": { "x-csrf-token": token } }),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("role_insufficient"), "{body}");
}
