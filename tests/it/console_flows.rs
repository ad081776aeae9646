//! The key console's longer flows (issue 15) in a real headless Chromium against the real
//! keygate binary, beyond `console.rs`: rotating with and without a grace period, consumers and
//! their default key, editing a key (and an API error shown at its field), the audit view, search,
//! filters and paging served by the API, the keyboard alone and a label for every field, and
//! screenshots of the consumers and audit pages, the secret dialog and the sign-in page.
//!
//! Each test starts its own keygate and its own browser. Like `console.rs`, the page is driven
//! only through the ids and labels of `src/admin/console/CONTRACT.md`, `src/admin/console/index.html`
//! and its README. Without chromium these tests skip (and fail under `CI`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use fantoccini::key::Key;
use serde_json::{Value, json};

use crate::harness::admin::*;
use crate::harness::browser::*;

/// The name keygate gives a consumer's default key.
const DEFAULT_KEY_NAME: &str = "Default key (created by keygate)";

/// Polls until the keys table lists exactly `want` (ids, in order); says what it showed if not.
async fn wait_key_rows(b: &Browser, what: &str, want: &[String]) {
    let start = Instant::now();
    let mut got = Vec::new();
    for _ in 0..1_000 {
        got = b.key_rows().await;
        if got == want {
            return;
        }
        if start.elapsed() >= WAIT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "the keys table does not show {what} within {WAIT:?}\n want {} rows: {want:?}\n  got {} rows: {got:?}",
        want.len(),
        got.len()
    );
}

/// Empties the text input `#id` as a person would, with Backspace (WebDriver's own clear fires
/// no `input` event, so a page listening for typing would not see it).
async fn erase(b: &Browser, id: &str) {
    b.click(id).await;
    let len = b.value_of(&format!("#{id}")).await.chars().count();
    let end: char = Key::End.into();
    let back: char = Key::Backspace.into();
    b.press(&[end], false).await;
    b.press(&vec![back; len], false).await;
    assert_eq!(b.value_of(&format!("#{id}")).await, "", "#{id} not erased");
}

/// The text of key `id`'s prefix cell (`kg_xxxx…`).
async fn prefix_shown(b: &Browser, id: &str) -> String {
    b.text_of(&format!("{} code.prefix", row_css(id)))
        .await
        .trim()
        .to_owned()
}

// --- rotate ----------------------------------------------------------------------------------

/// Rotate with the grace period "5 minutes": the secret dialog shows a new secret, both the
/// old and the new secret pass the proxy, and the row's prefix becomes the new secret's.
/// Rotated again with "None", the secret before is refused at once (403).
/// Fails when the page does not send the chosen grace period (e.g. always 0 or always 3600).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_with_and_without_a_grace_period() {
    let Some(f) = ConsoleGate::start("flow-rotate").await else {
        return;
    };
    let (made, first) = f
        .api()
        .create_key(json!({ "id": "turning", "name": "Turning" }))
        .await;
    let first_prefix = made["prefix"].as_str().unwrap().to_owned();
    let b = &f.browser;
    f.sign_in().await;
    b.wait_key_row("turning").await;
    assert_eq!(prefix_shown(b, "turning").await, format!("{first_prefix}…"));

    b.key_action("turning", "rotate").await;
    b.wait_dialog("rotate-dialog").await;
    b.select("rotate-grace", "300").await;
    b.click("rotate-submit").await;
    let second = b.shown_secret().await;
    b.wait_dialog_closed("rotate-dialog").await;
    assert!(second.starts_with("kg_"), "secret {second:?}");
    assert_ne!(second, first, "the rotated secret is the old one");
    let context = b.text_of("#secret-context").await;
    assert!(
        context.contains("keeps working until"),
        "the dialog does not say the old secret still works: {context:?}"
    );
    assert_admitted(f.kg.proxy, &second, "turning").await;
    assert_admitted(f.kg.proxy, &first, "turning").await;

    let second_prefix = f.api().key("turning").await["prefix"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(second_prefix, first_prefix, "the prefix did not change");
    assert!(
        second.starts_with(&second_prefix),
        "prefix {second_prefix:?} is not the start of the new secret"
    );
    b.click("secret-done").await;
    b.wait_dialog_closed("secret-dialog").await;
    b.wait_js(
        "the row to show the new prefix",
        "const c = document.querySelector(arguments[0]); return !!c && c.textContent.trim() === arguments[1];",
        vec![
            json!(format!("{} code.prefix", row_css("turning"))),
            json!(format!("{second_prefix}…")),
        ],
    )
    .await;

    b.key_action("turning", "rotate").await;
    b.wait_dialog("rotate-dialog").await;
    b.select("rotate-grace", "0").await;
    b.click("rotate-submit").await;
    let third = b.shown_secret().await;
    assert!(
        third != first && third != second,
        "rotate gave an old secret"
    );
    let context = b.text_of("#secret-context").await;
    assert!(
        context.contains("no longer works"),
        "the dialog does not say the old secret stopped: {context:?}"
    );
    // The 200 of the rotate means the proxy already has it: no wait.
    let before = call(f.kg.proxy, &second).await;
    assert_eq!(
        before.status,
        403,
        "the secret before a rotate without grace still passes: {}",
        before.text()
    );
    assert_admitted(f.kg.proxy, &third, "turning").await;
    // A key keeps one previous secret; a rotate without grace drops it, even in its grace.
    let oldest = call(f.kg.proxy, &first).await;
    assert_eq!(
        oldest.status,
        403,
        "the first secret passes after a rotate without grace: {}",
        oldest.text()
    );
}

// --- consumers and their default key ---------------------------------------------------------

/// A consumer made in the console with "Max keys" 2 and "Default key" shows the default key's
/// secret (which passes the proxy), "1 of 2" in the consumers table, and its "Keys" action shows
/// the keys view filtered to it: one row, the default key. A key made from that view is the
/// consumer's; a third is refused (max_keys) with the API's message in the dialog. Revoking the
/// default key in the console (the consumer at its max_keys) shows the replacement's secret, and
/// the consumer has again exactly one default key.
/// Fails when the page drops `default_key` from the create, or ignores the revoke's replacement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_with_a_default_key_keeps_one() {
    let Some(f) = ConsoleGate::start("flow-consumer").await else {
        return;
    };
    // Keys of others, so that the consumer's filter has something to leave out.
    f.api()
        .create_key(json!({ "id": "acme-one", "consumer": "acme" }))
        .await;
    f.api().create_key(json!({ "id": "loose" })).await;
    let b = &f.browser;
    f.sign_in().await;
    b.click("nav-consumers").await;
    b.wait_for("#consumers-table tr[data-consumer-id=\"acme\"]")
        .await;
    b.click("create-consumer").await;
    b.wait_dialog("consumer-dialog").await;
    assert_eq!(b.text_of("#consumer-submit").await.trim(), "Create");
    b.fill("consumer-id", "globex").await;
    b.fill("consumer-name", "Globex").await;
    b.fill("consumer-max-keys", "2").await;
    b.click("consumer-default-key").await;
    b.click("consumer-submit").await;
    let first = b.shown_secret().await;
    b.wait_dialog_closed("consumer-dialog").await;

    let keys = f.api().all_keys("&consumer=globex").await;
    assert_eq!(keys.len(), 1, "globex's keys: {keys:#?}");
    assert_eq!(keys[0]["name"], DEFAULT_KEY_NAME);
    let first_id = keys[0]["id"].as_str().unwrap().to_owned();
    assert_admitted(f.kg.proxy, &first, &first_id).await;
    let dialog = b.text_of("#secret-dialog").await;
    assert!(dialog.contains(&first_id), "secret dialog: {dialog:?}");

    b.click("secret-done").await;
    b.wait_dialog_closed("secret-dialog").await;
    let row = "#consumers-table tr[data-consumer-id=\"globex\"]";
    b.wait_js(
        "globex's row to say 1 of 2 keys",
        "const c = document.querySelector(arguments[0]); return !!c && c.textContent.trim() === '1 of 2';",
        vec![json!(format!("{row} td:nth-child(3)"))],
    )
    .await;
    let text = b.text_of(row).await;
    assert!(text.contains("Globex"), "row: {text:?}");

    b.click_css(&format!("{row} [data-action=\"keys\"]")).await;
    b.wait_for("#keys-view").await;
    wait_key_rows(b, "globex's keys", std::slice::from_ref(&first_id)).await;
    assert_eq!(b.value_of("#keys-filter-consumer").await, "globex");
    let name = b.text_of(&format!("{} .name", row_css(&first_id))).await;
    assert_eq!(name.trim(), DEFAULT_KEY_NAME);

    // A key made from the filtered view is the consumer's; the third is past max_keys.
    b.click("create-key").await;
    b.wait_dialog("key-dialog").await;
    assert_eq!(b.value_of("#key-consumer").await, "globex");
    b.fill("key-name", "Second").await;
    b.click("key-submit").await;
    b.shown_secret().await;
    b.click("secret-done").await;
    b.wait_dialog_closed("secret-dialog").await;
    let second_key = f
        .api()
        .all_keys("&consumer=globex")
        .await
        .into_iter()
        .find(|k| k["name"] == "Second")
        .expect("no key Second of globex")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut both = vec![first_id.clone(), second_key.clone()];
    both.sort();
    wait_key_rows(b, "globex's two keys", &both).await;
    b.click("create-key").await;
    b.wait_dialog("key-dialog").await;
    b.fill("key-name", "Third").await;
    b.click("key-submit").await;
    // The API names the consumer as the field at fault: the error stands beside it.
    let refused = b.wait_for("[data-error-for=\"consumer\"]").await;
    let refused = refused.text().await.unwrap();
    assert!(refused.contains("max_keys"), "the error: {refused:?}");
    b.click("key-cancel").await;
    b.wait_dialog_closed("key-dialog").await;
    assert_eq!(f.api().all_keys("&consumer=globex").await.len(), 2);

    // At its max_keys, the default key is still replaced when revoked.
    b.key_action(&first_id, "revoke").await;
    b.wait_dialog("confirm-dialog").await;
    b.click("confirm-yes").await;
    let second = b.shown_secret().await;
    assert_ne!(second, first);
    let keys = f.api().all_keys("&consumer=globex").await;
    assert_eq!(keys.len(), 2, "globex's keys after the revoke: {keys:#?}");
    let defaults: Vec<&Value> = keys
        .iter()
        .filter(|k| k["name"] == DEFAULT_KEY_NAME)
        .collect();
    assert_eq!(defaults.len(), 1, "default keys of globex: {keys:#?}");
    let second_id = defaults[0]["id"].as_str().unwrap().to_owned();
    assert_ne!(second_id, first_id, "the revoked key is still there");
    assert!(keys.iter().any(|k| k["id"] == second_key.as_str()));
    assert_admitted(f.kg.proxy, &second, &second_id).await;
    assert_eq!(call(f.kg.proxy, &first).await.status, 403);
    let dialog = b.text_of("#secret-dialog").await;
    assert!(dialog.contains(&second_id), "secret dialog: {dialog:?}");

    let consumers = expect(&f.api().get("/v1/consumers?limit=1000").await, 200);
    let globex = consumers["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "globex")
        .expect("no consumer globex")
        .clone();
    assert_eq!(globex["keys"], 2, "{globex}");
    assert_eq!(globex["max_keys"], 2, "{globex}");
    assert_eq!(globex["default_key"], true, "{globex}");
    b.click("secret-done").await;
    let mut both = vec![second_id.clone(), second_key.clone()];
    both.sort();
    wait_key_rows(b, "the replacement and Second", &both).await;
    b.click("nav-consumers").await;
    b.wait_js(
        "globex's row to say 2 of 2 keys after the revoke",
        "const c = document.querySelector(arguments[0]); return !!c && c.textContent.trim() === '2 of 2';",
        vec![json!(format!("{row} td:nth-child(3)"))],
    )
    .await;
}

// --- edit ------------------------------------------------------------------------------------

/// The edit dialog changes a key's name, status, rate limit and consumer (the API shows each);
/// an invalid rate limit ("fast") shows the API's own message next to the Rate limit field and
/// changes nothing, not even the name changed with it.
/// Fails when the page shows a field's error at the top of the dialog instead of at the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_a_key_and_see_the_apis_error_at_its_field() {
    let Some(f) = ConsoleGate::start("flow-edit").await else {
        return;
    };
    f.api()
        .create_key(json!({ "id": "moving", "name": "Before" }))
        .await;
    let b = &f.browser;
    f.sign_in().await;
    b.wait_key_row("moving").await;
    b.key_action("moving", "edit").await;
    b.wait_dialog("key-dialog").await;
    assert_eq!(b.value_of("#key-name").await, "Before");
    b.fill("key-name", "After").await;
    b.select("key-status", "inactive").await;
    b.fill("key-rate-limit", "5/second").await;
    b.select("key-consumer", "acme").await;
    b.click("key-submit").await;
    b.wait_dialog_closed("key-dialog").await;

    let key = f.api().key("moving").await;
    assert_eq!(key["name"], "After", "{key}");
    assert_eq!(key["status"], "inactive", "{key}");
    assert_eq!(key["rate_limit"], "5/second", "{key}");
    assert_eq!(key["consumer"], "acme", "{key}");
    b.wait_for(&format!("{} [data-action=\"activate\"]", row_css("moving")))
        .await;
    let row = b.text_of(&row_css("moving")).await;
    assert!(
        row.contains("After") && row.contains("acme") && row.contains("inactive"),
        "row: {row:?}"
    );

    // What the API itself says about this rate limit.
    let refused = f
        .api()
        .patch("/v1/keys/moving", &json!({ "rate_limit": "fast" }))
        .await;
    assert_eq!(refused.status, 400, "{}", refused.text());
    let problem = refused.json();
    assert_eq!(problem["field"], "rate_limit", "{problem}");
    let detail = problem["detail"].as_str().unwrap().to_owned();

    b.key_action("moving", "edit").await;
    b.wait_dialog("key-dialog").await;
    b.fill("key-name", "After the fix").await;
    b.fill("key-rate-limit", "fast").await;
    b.click("key-submit").await;
    let error = "#key-form [data-error-for=\"rate_limit\"]";
    b.wait_for(error).await;
    assert_eq!(b.text_of(error).await.trim(), detail);
    let beside = b
        .js(
            "const e = document.querySelector(arguments[0]);\
             const field = document.getElementById('key-rate-limit').closest('.field');\
             return [field.contains(e),\
               document.getElementById('key-rate-limit').getAttribute('aria-invalid'),\
               document.getElementById('key-form-error').checkVisibility(),\
               document.getElementById('key-dialog').open];",
            vec![json!(error)],
        )
        .await;
    assert_eq!(
        beside,
        json!([true, "true", false, true]),
        "[error in the Rate limit field, aria-invalid, general error shown, dialog open]"
    );
    let key = f.api().key("moving").await;
    assert_eq!(
        key["name"], "After",
        "a refused save changed the name: {key}"
    );
    assert_eq!(key["rate_limit"], "5/second", "{key}");
    assert_eq!(key["status"], "inactive", "{key}");
    assert_eq!(key["consumer"], "acme", "{key}");

    // Fixing the field takes its error away, and the same dialog then saves.
    b.fill("key-rate-limit", "10/minute").await;
    b.wait_gone(error).await;
    assert_eq!(
        b.find("#key-rate-limit")
            .await
            .attr("aria-invalid")
            .await
            .unwrap(),
        None
    );
    b.click("key-submit").await;
    b.wait_dialog_closed("key-dialog").await;
    let key = f.api().key("moving").await;
    assert_eq!(key["name"], "After the fix", "{key}");
    assert_eq!(key["rate_limit"], "10/minute", "{key}");
}

// --- audit -----------------------------------------------------------------------------------

/// One audit row as the page shows it: id, actor, action, object.
async fn audit_rows(b: &Browser) -> Vec<[String; 4]> {
    let v = b
        .js(
            "return [...document.querySelectorAll('#audit-table tr[data-audit-id]')].map(r =>\
               [r.dataset.auditId, ...[1, 2, 3].map(i => r.cells[i].textContent.trim())]);",
            vec![],
        )
        .await;
    serde_json::from_value(v).unwrap()
}

/// Polls until the audit table's rows satisfy `ok`; returns them.
async fn wait_audit_rows(
    b: &Browser,
    what: &str,
    ok: impl Fn(&[[String; 4]]) -> bool,
) -> Vec<[String; 4]> {
    let start = Instant::now();
    let mut got = Vec::new();
    for _ in 0..1_000 {
        got = audit_rows(b).await;
        if ok(&got) {
            return got;
        }
        if start.elapsed() >= WAIT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the audit table does not show {what} within {WAIT:?}: {got:#?}");
}

/// After changes made in the console (create, edit, rotate, create, revoke), the Audit view
/// lists them newest first with the admin key's id as actor, the action and the object;
/// filtered by a key's id it shows that key's lines only. The audit file never holds a secret
/// the console showed. Fails when the page lists the lines oldest first or ignores the filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_view_lists_console_changes_newest_first() {
    let Some(f) = ConsoleGate::start("flow-audit").await else {
        return;
    };
    let b = &f.browser;
    f.sign_in().await;
    let mut secrets = Vec::new();

    b.click("create-key").await;
    b.wait_dialog("key-dialog").await;
    b.fill("key-name", "Audited").await;
    b.click("key-submit").await;
    secrets.push(b.shown_secret().await);
    b.click("secret-done").await;
    let audited = f
        .api()
        .all_keys("")
        .await
        .into_iter()
        .find(|k| k["name"] == "Audited")
        .expect("no key named Audited");
    let one = audited["id"].as_str().unwrap().to_owned();

    b.wait_key_row(&one).await;
    b.key_action(&one, "edit").await;
    b.wait_dialog("key-dialog").await;
    b.fill("key-name", "Audited twice").await;
    b.click("key-submit").await;
    b.wait_dialog_closed("key-dialog").await;

    b.key_action(&one, "rotate").await;
    b.wait_dialog("rotate-dialog").await;
    b.select("rotate-grace", "0").await;
    b.click("rotate-submit").await;
    secrets.push(b.shown_secret().await);
    b.click("secret-done").await;

    b.click("create-key").await;
    b.wait_dialog("key-dialog").await;
    b.fill("key-name", "Bystander").await;
    b.click("key-submit").await;
    secrets.push(b.shown_secret().await);
    b.click("secret-done").await;
    let two = f
        .api()
        .all_keys("")
        .await
        .into_iter()
        .find(|k| k["name"] == "Bystander")
        .expect("no key named Bystander")["id"]
        .as_str()
        .unwrap()
        .to_owned();

    b.wait_key_row(&one).await;
    b.key_action(&one, "revoke").await;
    b.wait_dialog("confirm-dialog").await;
    b.click("confirm-yes").await;
    b.wait_gone(&row_css(&one)).await;

    b.click("nav-audit").await;
    b.wait_for("#audit-view").await;
    let want = vec![
        ("key.revoke", one.as_str()),
        ("key.create", two.as_str()),
        ("key.rotate", one.as_str()),
        ("key.update", one.as_str()),
        ("key.create", one.as_str()),
    ];
    let rows = wait_audit_rows(b, "the five changes", |rows| rows.len() > want.len()).await;
    let got: Vec<(&str, &str)> = rows[..want.len()]
        .iter()
        .map(|r| (r[2].as_str(), r[3].as_str()))
        .collect();
    assert_eq!(got, want, "newest first: {rows:#?}");
    for r in &rows[..want.len()] {
        assert_eq!(r[1], "ops", "actor of {r:?}");
    }
    // The rest is the sign-in (or older); the ids go down all the way.
    let ids: Vec<u64> = rows.iter().map(|r| r[0].parse().unwrap()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "not newest first: {rows:#?}"
    );
    assert!(
        rows.iter()
            .any(|r| r[2] == "session.sign_in" && r[1] == "ops"),
        "no sign-in line: {rows:#?}"
    );
    let times = b
        .attrs("#audit-table tr[data-audit-id] time", "datetime")
        .await;
    let times: Vec<time::OffsetDateTime> = times.iter().map(|t| rfc3339(&json!(t))).collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "times not newest first: {times:?}"
    );

    let update = b
        .text_of("#audit-table tr[data-audit-id]:nth-child(4) td:nth-child(5)")
        .await;
    assert!(
        update.contains("name") && update.contains("Audited → Audited twice"),
        "the update's changes: {update:?}"
    );

    // An object in the table is a link to its own lines.
    b.click_css(&format!("#audit-table button[data-object=\"{two}\"]"))
        .await;
    wait_audit_rows(b, &format!("{two}'s line only"), |rows| {
        rows.len() == 1 && rows[0][2] == "key.create" && rows[0][3] == two
    })
    .await;
    assert_eq!(b.value_of("#audit-filter").await, two);

    b.fill("audit-filter", &one).await;
    let only = wait_audit_rows(b, &format!("{one}'s lines only"), |rows| {
        rows.len() == 4 && rows.iter().all(|r| r[3] == one)
    })
    .await;
    let actions: Vec<&str> = only.iter().map(|r| r[2].as_str()).collect();
    assert_eq!(
        actions,
        ["key.revoke", "key.rotate", "key.update", "key.create"]
    );

    let file = std::fs::read_to_string(f.files.audit_path()).unwrap();
    assert!(file.contains(&one), "the audit file lacks {one}: {file}");
    for s in secrets.iter().map(String::as_str).chain([ADMIN_SECRET]) {
        assert!(!file.contains(s), "the audit file holds a secret {s}");
        let digest = keygate_hash(s);
        let digest = digest.strip_prefix("sha256:").unwrap();
        assert!(
            !file.contains(digest),
            "the audit file holds the hash of {s}"
        );
    }
}

// --- search, filters and paging --------------------------------------------------------------

/// With 120 keys (119 made through the API, "alpha-N" and "beta-N", some inactive, some expiring
/// in 10 days, some of consumer acme; and the config file's key), the search box and each
/// filter show exactly what the API answers for the same query (first page and the next), and
/// Next / Previous walk 50 + 50 + 20 rows without a repeat. Fails when the page filters or
/// searches the rows it has instead of asking the server (the second page of "beta" is then
/// missing), or drops a filter from its query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_filters_and_paging_are_the_servers() {
    let Some(f) = ConsoleGate::start("flow-search").await else {
        return;
    };
    let api = f.api();
    let soon = in_days(10);
    let made = Instant::now();
    for n in 0..119 {
        let name = if n % 2 == 0 {
            format!("alpha-{}", n / 2)
        } else {
            format!("beta-{}", n / 2)
        };
        let mut body = json!({ "name": name });
        if n % 7 == 3 {
            body["status"] = json!("inactive");
        }
        if n % 5 == 1 {
            body["expires_at"] = json!(soon);
        }
        if n % 6 == 2 {
            body["consumer"] = json!("acme");
        }
        api.create_key(body).await;
    }
    eprintln!("119 keys made in {:?}", made.elapsed());
    let all = f.key_ids("").await;
    assert_eq!(all.len(), 120);

    let b = &f.browser;
    f.sign_in().await;
    let pages: Vec<Vec<String>> = all.chunks(50).map(<[String]>::to_vec).collect();
    wait_key_rows(b, "the first page", &pages[0]).await;

    // Paging: 50 + 50 + 20, Next disabled on the last, Previous back to the second.
    let mut walked = pages[0].clone();
    for (i, page) in pages.iter().enumerate().skip(1) {
        b.click("keys-next").await;
        wait_key_rows(b, &format!("page {}", i + 1), page).await;
        walked.extend(page.iter().cloned());
    }
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [50, 50, 20]);
    let distinct: BTreeSet<&String> = walked.iter().collect();
    assert_eq!(distinct.len(), 120, "a row shown twice while paging");
    b.wait_js(
        "Next to be disabled on the last page",
        "return document.getElementById('keys-next').disabled;",
        vec![],
    )
    .await;
    b.click("keys-prev").await;
    wait_key_rows(b, "page 2 again", &pages[1]).await;
    b.click("keys-prev").await;
    wait_key_rows(b, "page 1 again", &pages[0]).await;
    assert!(!b.find("#keys-prev").await.is_enabled().await.unwrap());

    // Search: "beta" has 59 keys, more than a page: the second page comes from the server.
    b.fill("keys-search", "beta").await;
    let beta = f.key_ids("&q=beta").await;
    assert_eq!(beta.len(), 59);
    wait_key_rows(b, "the first 50 betas", &beta[..50]).await;
    b.click("keys-next").await;
    wait_key_rows(b, "the last 9 betas", &beta[50..]).await;
    b.fill("keys-search", "alpha-1").await;
    let alpha1 = f.key_ids("&q=alpha-1").await;
    assert_eq!(alpha1.len(), 11, "alpha-1 and alpha-10..19");
    wait_key_rows(b, "alpha-1*", &alpha1).await;
    b.fill("keys-search", "ALPHA-2").await;
    let alpha2 = f.key_ids("&q=alpha-2").await;
    wait_key_rows(b, "alpha-2* typed in capitals", &alpha2).await;
    b.fill("keys-search", "no-such-key").await;
    wait_key_rows(b, "nothing", &[]).await;
    b.wait_js(
        "the empty state",
        "return document.getElementById('keys-table').innerText.includes('No keys match.');",
        vec![],
    )
    .await;
    erase(b, "keys-search").await;
    wait_key_rows(b, "the first page without a search", &pages[0]).await;

    // Each filter alone, then two together.
    let inactive = f.key_ids("&status=inactive").await;
    assert_eq!(inactive.len(), 17);
    b.select("keys-filter-status", "inactive").await;
    wait_key_rows(b, "inactive keys", &inactive).await;
    b.select("keys-filter-status", "").await;
    wait_key_rows(b, "every key", &pages[0]).await;

    let expiring = f.key_ids("&expiring_within_days=30").await;
    assert_eq!(expiring.len(), 24);
    b.click("keys-filter-expiring").await;
    wait_key_rows(b, "keys expiring within 30 days", &expiring).await;
    b.click("keys-filter-expiring").await;
    wait_key_rows(b, "every key", &pages[0]).await;

    let acme = f.key_ids("&consumer=acme").await;
    assert_eq!(acme.len(), 20);
    b.select("keys-filter-consumer", "acme").await;
    wait_key_rows(b, "acme's keys", &acme).await;
    b.select("keys-filter-status", "inactive").await;
    let both = f.key_ids("&consumer=acme&status=inactive").await;
    assert!(!both.is_empty() && both.len() < acme.len());
    wait_key_rows(b, "acme's inactive keys", &both).await;
}

// --- keyboard and labels ---------------------------------------------------------------------

/// With WebDriver key actions alone (Tab, Shift+Tab, Enter, Space, typing, Escape; no click):
/// sign in, reach `Create key`, open it, type a name, submit, read the secret, close the secret
/// dialog with Escape; the secret input is then empty and the focus is back on the new key's row.
/// Fails when a control cannot be reached or worked by the keyboard, or Escape leaves the secret
/// in the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_a_key_with_the_keyboard_alone() {
    let Some(f) = ConsoleGate::start("flow-keyboard").await else {
        return;
    };
    let b = &f.browser;
    let (enter, space, escape): (char, char, char) =
        (Key::Enter.into(), Key::Space.into(), Key::Escape.into());
    b.open_console(f.kg.admin).await;
    b.wait_js(
        "the focus in #admin-key",
        "return document.activeElement && document.activeElement.id === 'admin-key';",
        vec![],
    )
    .await;
    b.type_keys(ADMIN_SECRET).await;
    b.press(&[enter], false).await;
    b.wait_for("#keys-table").await;
    b.wait_for("#who").await;

    let tabs = b.tab_to("create-key", false, 30).await;
    eprintln!("{tabs} Tab presses to Create key");
    b.press(&[enter], false).await;
    b.wait_dialog("key-dialog").await;
    assert_eq!(
        b.focused_id().await,
        "key-name",
        "the focus is not in the dialog"
    );
    b.type_keys("Typed by keyboard").await;
    b.tab_to("key-submit", false, 40).await;
    b.press(&[Key::Tab.into()], true).await;
    assert_eq!(b.focused_id().await, "key-cancel", "Shift+Tab from Create");
    b.press(&[Key::Tab.into()], false).await;
    assert_eq!(b.focused_id().await, "key-submit");
    b.press(&[space], false).await;

    let secret = b.shown_secret().await;
    b.wait_dialog_closed("key-dialog").await;
    let inside = b
        .js(
            "return document.getElementById('secret-dialog').contains(document.activeElement);",
            vec![],
        )
        .await;
    assert_eq!(inside, json!(true), "the focus is not in the secret dialog");
    let id = f
        .api()
        .all_keys("")
        .await
        .into_iter()
        .find(|k| k["name"] == "Typed by keyboard")
        .expect("no key named 'Typed by keyboard'")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_admitted(f.kg.proxy, &secret, &id).await;

    b.press(&[escape], false).await;
    b.wait_dialog_closed("secret-dialog").await;
    // The dialog's `close` event, which empties the input, comes a task after `open` drops.
    b.wait_js(
        "Escape to empty #secret-value",
        "return document.getElementById('secret-value').value === '';",
        vec![],
    )
    .await;
    assert!(!b.page_text().await.contains(&secret));
    b.wait_js(
        "the focus on the new key's row",
        "const a = document.activeElement; return !!a && !!a.closest(arguments[0]);",
        vec![json!(row_css(&id))],
    )
    .await;
}

/// Every input, select and textarea of the page (sign-in, filters, the key, consumer, rotate
/// and secret dialogs, the target checkboxes the dialogs add, the audit filter) has a label: a
/// `<label for>`, a wrapping `<label>`, `aria-label` or `aria-labelledby`, with text; the
/// contract's fields have the contract's label. Fails when a `for` is dropped or mistyped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_field_has_a_label() {
    let Some(f) = ConsoleGate::start("flow-labels").await else {
        return;
    };
    f.api().create_key(json!({ "id": "spun" })).await;
    let b = &f.browser;
    let escape: char = Key::Escape.into();
    let labels_script = "\
        const out = {};\
        for (const el of document.querySelectorAll('input, select, textarea')) {\
          if (el.type === 'hidden') continue;\
          const texts = [...(el.labels || [])].map(l => l.textContent.trim());\
          const aria = el.getAttribute('aria-label');\
          if (aria) texts.push(aria.trim());\
          for (const id of (el.getAttribute('aria-labelledby') || '').split(/\\s+/)) {\
            const t = id && document.getElementById(id);\
            if (t) texts.push(t.textContent.trim());\
          }\
          out[el.id || el.outerHTML.slice(0, 100)] = texts.filter(Boolean);\
        }\
        return out;";
    b.open_console(f.kg.admin).await;
    let signed_out: serde_json::Map<String, Value> =
        serde_json::from_value(b.js(labels_script, vec![]).await).unwrap();
    b.sign_in_ok(ADMIN_SECRET).await;
    // The dialogs fill in their target checkboxes when they open.
    b.click("create-key").await;
    b.wait_dialog("key-dialog").await;
    b.wait_for("#key-targets input[type=checkbox]").await;
    b.press(&[escape], false).await;
    b.wait_dialog_closed("key-dialog").await;
    b.wait_key_row("spun").await;
    b.key_action("spun", "rotate").await;
    b.wait_dialog("rotate-dialog").await;
    b.press(&[escape], false).await;
    b.wait_dialog_closed("rotate-dialog").await;
    b.click("nav-consumers").await;
    b.click("create-consumer").await;
    b.wait_dialog("consumer-dialog").await;
    b.wait_for("#consumer-targets input[type=checkbox]").await;
    let fields: serde_json::Map<String, Value> =
        serde_json::from_value(b.js(labels_script, vec![]).await).unwrap();
    b.press(&[escape], false).await;

    let unlabelled: Vec<&String> = fields
        .iter()
        .filter(|(_, l)| l.as_array().unwrap().is_empty())
        .map(|(id, _)| id)
        .collect();
    assert!(
        unlabelled.is_empty(),
        "fields without a label: {unlabelled:#?}"
    );
    assert_eq!(signed_out.get("admin-key"), Some(&json!(["Admin key"])));
    let want = [
        ("admin-key", "Admin key"),
        ("keys-search", "Search"),
        ("keys-filter-consumer", "Consumer"),
        ("keys-filter-status", "Status"),
        ("keys-filter-expiring", "Expiring within 30 days"),
        ("keys-filter-unused", "Not used for 90 days"),
        ("key-name", "Name"),
        ("key-consumer", "Consumer"),
        ("key-expires", "Expires"),
        ("key-status", "Status"),
        ("key-ip-input", "Allowed IPs"),
        ("key-origin-input", "Allowed origins"),
        ("key-access", "Access"),
        ("key-paths", "Paths"),
        ("key-rate-limit", "Rate limit"),
        ("key-targets-main", "main"),
        ("key-targets-other", "other"),
        ("secret-value", "Secret"),
        ("rotate-grace", "Grace period"),
        ("consumer-id", "ID"),
        ("consumer-name", "Name"),
        ("consumer-max-keys", "Max keys"),
        ("consumer-rate-limit", "Rate limit"),
        ("consumer-ip-input", "Allowed IPs"),
        ("consumer-origin-input", "Allowed origins"),
        ("consumer-default-key", "Default key"),
        ("consumer-targets-main", "main"),
        ("audit-filter", "Key or consumer"),
    ];
    for (id, label) in want {
        let got = fields
            .get(id)
            .unwrap_or_else(|| panic!("no field #{id} on the page: {fields:#?}"));
        assert!(
            got.as_array().unwrap().iter().any(|l| l == label),
            "#{id} is labelled {got}, not {label:?}"
        );
    }
    eprintln!("{} fields, each labelled", fields.len());
}

// --- screenshots -----------------------------------------------------------------------------

/// Asserts that the page does not scroll sideways at its current width.
async fn assert_no_sideways_scroll(b: &Browser, what: &str) {
    let widths = b
        .js(
            "return [document.documentElement.scrollWidth, window.innerWidth];",
            vec![],
        )
        .await;
    assert!(
        widths[0].as_u64() <= widths[1].as_u64(),
        "{what} scrolls sideways: {widths}"
    );
}

/// The consumers and audit pages at 1280x800 and 390x844, the secret dialog and the sign-in page
/// at 390x844, written to `target/console-screenshots/`; at 390 wide no page scrolls sideways
/// and the secret dialog fits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screenshots_of_consumers_audit_secret_and_sign_in() {
    let Some(f) = ConsoleGate::start("flow-screenshots").await else {
        return;
    };
    let api = f.api();
    api.create_consumer(json!({
        "id": "globex", "name": "Globex Corporation", "max_keys": 5,
        "allow_ips": ["203.0.113.0/24", "198.51.100.7"], "rate_limit": "100/second",
        "default_key": true,
    }))
    .await;
    api.create_consumer(json!({ "id": "initech", "name": "Initech", "targets": ["other"] }))
        .await;
    let (_, _) = api
        .create_key(json!({ "name": "Checkout service", "consumer": "acme" }))
        .await;
    let (made, _) = api
        .create_key(json!({ "name": "Reporting", "consumer": "initech" }))
        .await;
    let id = made["id"].as_str().unwrap();
    expect(
        &api.patch(
            &format!("/v1/keys/{id}"),
            &json!({ "name": "Reporting (nightly)", "rate_limit": "10/minute" }),
        )
        .await,
        200,
    );
    expect(&api.rotate(id, 3600).await, 200);

    let b = &f.browser;
    f.sign_in().await;
    b.click("nav-consumers").await;
    b.wait_js(
        "the consumers in the table",
        "return document.querySelectorAll('#consumers-table tr[data-consumer-id]').length >= 4;",
        vec![],
    )
    .await;
    b.screenshot("consumers", DESKTOP).await;
    b.screenshot("consumers", PHONE).await;
    assert_no_sideways_scroll(b, "the consumers page at 390 wide").await;

    b.set_viewport(DESKTOP).await;
    b.click("nav-audit").await;
    b.wait_js(
        "the audit lines in the table",
        "return document.querySelectorAll('#audit-table tr[data-audit-id]').length >= 6;",
        vec![],
    )
    .await;
    b.screenshot("audit", DESKTOP).await;
    b.screenshot("audit", PHONE).await;
    assert_no_sideways_scroll(b, "the audit page at 390 wide").await;

    b.click("nav-keys").await;
    b.click("create-key").await;
    b.wait_dialog("key-dialog").await;
    b.fill("key-name", "Phone-made key").await;
    b.click("key-submit").await;
    b.shown_secret().await;
    b.screenshot("secret-dialog", PHONE).await;
    let fits = b
        .js(
            "const r = document.getElementById('secret-dialog').getBoundingClientRect();\
             const i = document.getElementById('secret-value').getBoundingClientRect();\
             return [r.left >= 0 && r.right <= window.innerWidth, i.width > 150];",
            vec![],
        )
        .await;
    assert_eq!(
        fits,
        json!([true, true]),
        "[the secret dialog fits in 390, its input is wide enough]"
    );
    b.click("secret-done").await;
    b.wait_dialog_closed("secret-dialog").await;

    b.click("sign-out").await;
    b.wait_for("#sign-in").await;
    b.screenshot("sign-in", PHONE).await;
    assert_no_sideways_scroll(b, "the sign-in page at 390 wide").await;

    for (name, size) in [
        ("consumers", DESKTOP),
        ("consumers", PHONE),
        ("audit", DESKTOP),
        ("audit", PHONE),
        ("secret-dialog", PHONE),
        ("sign-in", PHONE),
    ] {
        let path = screenshot_dir().join(format!("{name}-{}x{}.png", size.0, size.1));
        let png = std::fs::read(&path).unwrap();
        assert!(png.len() > 1_000, "{} is empty", path.display());
    }
}
