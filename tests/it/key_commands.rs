//! `keygate keys ...` and `keygate consumers ...` on real files: JSON output, changes in keys.toml, errors, and a running keygate picking each change up.

use serde_json::{Value, json};

use crate::harness::admin::*;
use crate::harness::*;

/// A config directory for commands only (no keygate running).
async fn files(name: &str) -> Files {
    Files::new(name, None, "127.0.0.1:0", Some(INITIAL_KEYS)).await
}

#[track_caller]
fn assert_consumer(c: &Value, id: &str) {
    let mut fields: Vec<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(fields, CONSUMER_FIELDS, "{c}");
    assert_eq!(c["id"], id, "{c}");
}

#[tokio::test]
async fn keys_create_list_show_update_rotate_revoke_change_the_keys_file() {
    let f = files("keys-cmds").await;
    let config = f.config.as_path();

    // create: the key as JSON, with its secret this once.
    let out = keygate_cmd(
        config,
        &[
            "keys",
            "create",
            "--id",
            "cli",
            "--name",
            "CLI key",
            "--consumer",
            "acme",
            "--target",
            "main",
            "--allow-ip",
            "127.0.0.1",
            "--path",
            "/live",
            "--access",
            "read-only",
            "--rate-limit",
            "10/second",
            "--expires-at",
            "2030-01-01T00:00:00Z",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_key_shape(&created, true);
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("kg_"), "{secret}");
    assert!(secret.starts_with(created["prefix"].as_str().unwrap()));
    assert!(
        !text(&out.stderr).contains(&secret),
        "the secret is on stderr"
    );
    assert_eq!(created["id"], "cli");
    assert_eq!(created["name"], "CLI key");
    assert_eq!(created["consumer"], "acme");
    assert_eq!(created["targets"], json!(["main"]));
    assert_eq!(created["paths"], json!(["/live"]));
    assert_eq!(created["access"], "read-only");
    assert_eq!(created["rate_limit"], "10/second");
    assert_eq!(created["expires_at"], "2030-01-01T00:00:00Z");
    assert_eq!(created["managed"], true);
    assert_eq!(created["last_used_at"], Value::Null);
    rfc3339(&created["created_at"]);
    let text_now = f.keys_text();
    assert!(text_now.contains("id = \"cli\""), "{text_now}");
    assert!(text_now.contains(&keygate_hash(&secret)), "{text_now}");
    assert!(
        !text_now.contains(&secret),
        "the secret was stored: {text_now}"
    );
    assert!(
        text_now.contains("# Managed by keygate"),
        "the comment was lost"
    );

    // create with defaults and another prefix.
    let other = cmd_json(config, &["keys", "create", "--prefix", "acme_"]).await;
    let other_id = other["id"].as_str().unwrap().to_owned();
    assert!(other_id.starts_with("key_"), "{other_id}");
    assert!(other["secret"].as_str().unwrap().starts_with("acme_"));
    assert!(other["prefix"].as_str().unwrap().starts_with("acme_"));

    // list, list --consumer, show: no secret, no hash.
    let out = keygate_cmd(config, &["keys", "list"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        !stdout.contains("sha256:") && !stdout.contains(&secret),
        "{stdout}"
    );
    let list: Value = serde_json::from_str(&stdout).unwrap();
    let items = list.as_array().unwrap();
    items.iter().for_each(|k| assert_key_shape(k, false));
    let mut listed = ids(items);
    listed.sort();
    let mut want = vec!["cli".to_owned(), other_id.clone(), STATIC_ID.to_owned()];
    want.sort();
    assert_eq!(listed, want);
    let static_key = items.iter().find(|k| k["id"] == STATIC_ID).unwrap();
    assert_eq!(static_key["managed"], false);
    let acme = cmd_json(config, &["keys", "list", "--consumer", "acme"]).await;
    assert_eq!(ids(acme.as_array().unwrap()), ["cli"]);
    let out = keygate_cmd(config, &["keys", "list", "--consumer", "nobody"]).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("nobody"),
        "{}",
        text(&out.stderr)
    );
    let shown = cmd_json(config, &["keys", "show", "cli"]).await;
    assert_key_shape(&shown, false);
    for field in KEY_FIELDS {
        assert_eq!(shown[field], created[field], "{field}");
    }

    // update: the lists given replace the key's; --no-* clear.
    let updated = cmd_json(
        config,
        &[
            "keys",
            "update",
            "cli",
            "--name",
            "Renamed",
            "--status",
            "inactive",
            "--access",
            "read-write",
            "--allow-ip",
            "10.0.0.0/8",
            "--allow-ip",
            "127.0.0.1",
            "--allow-origin",
            "https://shop.example.com",
            "--allow-origin",
            "https://*.Example.com:443",
            "--no-rate-limit",
            "--no-expiry",
        ],
    )
    .await;
    assert_key_shape(&updated, false);
    assert_eq!(updated["name"], "Renamed");
    assert_eq!(updated["status"], "inactive");
    assert_eq!(updated["access"], "read-write");
    assert_eq!(updated["allow_ips"].as_array().unwrap().len(), 2);
    assert_eq!(
        updated["allow_origins"],
        json!(["https://shop.example.com", "https://*.example.com"])
    );
    assert_eq!(updated["rate_limit"], Value::Null);
    assert_eq!(updated["expires_at"], Value::Null);
    assert_eq!(updated["paths"], json!(["/live"]), "untouched");
    let text_now = f.keys_text();
    assert!(text_now.contains("name = \"Renamed\""), "{text_now}");
    assert!(text_now.contains("status = \"inactive\""), "{text_now}");
    assert!(!text_now.contains("rate_limit"), "{text_now}");
    assert!(!text_now.contains("expires_at"), "{text_now}");
    assert_eq!(cmd_json(config, &["keys", "show", "cli"]).await, updated);

    // rotate: a new secret; with grace the old one is kept as previous_hash.
    let rotated = cmd_json(config, &["keys", "rotate", "cli", "--grace-seconds", "60"]).await;
    assert_key_shape(&rotated, true);
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, secret);
    let text_now = f.keys_text();
    assert!(text_now.contains(&keygate_hash(&new_secret)), "{text_now}");
    assert!(text_now.contains("previous_hash"), "{text_now}");
    assert!(
        text_now.contains(&keygate_hash(&secret)),
        "old hash kept for the grace"
    );
    let rotated = cmd_json(config, &["keys", "rotate", "cli"]).await;
    let newest = rotated["secret"].as_str().unwrap();
    let text_now = f.keys_text();
    assert!(!text_now.contains("previous_hash"), "{text_now}");
    assert!(!text_now.contains(&keygate_hash(&secret)), "{text_now}");
    assert!(text_now.contains(&keygate_hash(newest)), "{text_now}");

    // revoke: gone from the file.
    let out = keygate_cmd(config, &["keys", "revoke", "cli"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!f.keys_text().contains("id = \"cli\""));
    let out = keygate_cmd(config, &["keys", "show", "cli"]).await;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("cli"), "{}", text(&out.stderr));
    assert!(f.key_ids().contains(&other_id));
    assert_check_passes(config).await;
}

#[tokio::test]
async fn consumers_create_list_show_update_delete_change_the_keys_file() {
    let f = files("consumer-cmds").await;
    let config = f.config.as_path();
    let created = cmd_json(
        config,
        &[
            "consumers",
            "create",
            "globex",
            "--name",
            "Globex",
            "--max-keys",
            "1",
            "--allow-ip",
            "127.0.0.0/8",
            "--allow-origin",
            "http://localhost:5173",
            "--target",
            "main",
            "--rate-limit",
            "100/minute",
        ],
    )
    .await;
    assert_consumer(&created, "globex");
    assert_eq!(created["name"], "Globex");
    assert_eq!(created["max_keys"], 1);
    assert_eq!(created["allow_ips"], json!(["127.0.0.0/8"]));
    assert_eq!(created["allow_origins"], json!(["http://localhost:5173"]));
    assert_eq!(created["targets"], json!(["main"]));
    assert_eq!(created["rate_limit"], "100/minute");
    assert_eq!(created["keys"], 0);
    assert_eq!(created["managed"], true);
    assert!(f.keys_text().contains("id = \"globex\""));

    let list = cmd_json(config, &["consumers", "list"]).await;
    let items = list.as_array().unwrap();
    let mut listed = ids(items);
    listed.sort();
    assert_eq!(listed, ["acme", "globex", HOUSE_CONSUMER]);
    let house = items.iter().find(|c| c["id"] == HOUSE_CONSUMER).unwrap();
    assert_eq!(house["managed"], false);
    assert_eq!(
        cmd_json(config, &["consumers", "show", "globex"]).await,
        created
    );

    // max_keys: one key too many is refused with a message.
    cmd_json(
        config,
        &["keys", "create", "--id", "g1", "--consumer", "globex"],
    )
    .await;
    let before = f.keys_bytes();
    let out = keygate_cmd(
        config,
        &["keys", "create", "--id", "g2", "--consumer", "globex"],
    )
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("max_keys"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(f.keys_bytes(), before);

    let updated = cmd_json(
        config,
        &[
            "consumers",
            "update",
            "globex",
            "--name",
            "Globex Inc",
            "--no-rate-limit",
            "--no-max-keys",
            "--allow-ip",
            "10.0.0.0/8",
        ],
    )
    .await;
    assert_consumer(&updated, "globex");
    assert_eq!(updated["name"], "Globex Inc");
    assert_eq!(updated["rate_limit"], Value::Null);
    assert_eq!(updated["max_keys"], Value::Null);
    assert_eq!(updated["allow_ips"], json!(["10.0.0.0/8"]));
    assert_eq!(updated["keys"], 1);
    cmd_json(
        config,
        &["keys", "create", "--id", "g2", "--consumer", "globex"],
    )
    .await;

    // A consumer that owns keys is not deleted.
    let before = f.keys_bytes();
    let out = keygate_cmd(config, &["consumers", "delete", "globex"]).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("owns keys"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(f.keys_bytes(), before);
    for id in ["g1", "g2"] {
        let out = keygate_cmd(config, &["keys", "revoke", id]).await;
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let out = keygate_cmd(config, &["consumers", "delete", "globex"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!f.keys_text().contains("globex"), "{}", f.keys_text());
    let out = keygate_cmd(config, &["consumers", "show", "globex"]).await;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("globex"));
    assert_check_passes(config).await;
}

/// Changes the commands refuse exit non-zero with a message on stderr, print nothing on stdout,
/// and leave the keys file byte-identical.
#[tokio::test]
async fn refused_commands_exit_non_zero_with_a_message_and_write_nothing() {
    let f = files("refused-cmds").await;
    let config = f.config.as_path();
    cmd_json(config, &["keys", "create", "--id", "k"]).await;
    let before = f.keys_bytes();
    let cases: [(&[&str], &[&str]); 13] = [
        (
            &["keys", "update", STATIC_ID, "--name", "x"],
            &[STATIC_ID, "main config file"],
        ),
        (
            &["keys", "update", STATIC_ID, "--status", "inactive"],
            &[STATIC_ID, "main config file"],
        ),
        (
            &["keys", "revoke", STATIC_ID],
            &[STATIC_ID, "main config file"],
        ),
        (
            &["keys", "rotate", STATIC_ID],
            &[STATIC_ID, "main config file"],
        ),
        (
            &["keys", "update", "nope", "--name", "x"],
            &["nope", "does not exist"],
        ),
        (&["keys", "revoke", "nope"], &["nope", "does not exist"]),
        (&["keys", "create", "--id", "k"], &["\"k\"", "taken"]),
        (
            &["keys", "create", "--allow-ip", "10.0.0.0/33"],
            &["allow_ips", "10.0.0.0/33"],
        ),
        (
            &["keys", "create", "--expires-at", "tomorrow"],
            &["expires_at"],
        ),
        (&["keys", "create", "--target", "nowhere"], &["nowhere"]),
        (
            &["keys", "update", "k", "--rate-limit", "3/fortnight"],
            &["rate_limit"],
        ),
        (
            &["consumers", "update", HOUSE_CONSUMER, "--name", "x"],
            &[HOUSE_CONSUMER, "main config file"],
        ),
        (&["consumers", "create", "acme"], &["acme", "taken"]),
    ];
    for (args, words) in cases {
        let out = keygate_cmd(config, args).await;
        assert!(!out.status.success(), "keygate {args:?} succeeded");
        let stderr = text(&out.stderr);
        for w in words {
            assert!(
                stderr.contains(w),
                "keygate {args:?}: no {w:?} in: {stderr}"
            );
        }
        assert!(
            out.stdout.is_empty(),
            "keygate {args:?} printed {}",
            text(&out.stdout)
        );
        assert_eq!(f.keys_bytes(), before, "keygate {args:?} changed the file");
    }
    // A value clap itself refuses.
    let out = keygate_cmd(config, &["keys", "update", "k", "--status", "paused"]).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("paused"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(f.keys_bytes(), before);
}

/// A running keygate picks up each command's change through its reload: poll the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_keygate_picks_up_each_command_change() {
    let gw = Gateway::start("cmds-live").await;
    let config = gw.files.config.as_path();
    let proxy = gw.proxy;

    let created = cmd_json(
        config,
        &["keys", "create", "--id", "cmd", "--consumer", "acme"],
    )
    .await;
    let secret = created["secret"].as_str().unwrap().to_owned();
    until_outcome(proxy, &secret, 200, "").await;
    assert_admitted(proxy, &secret, "cmd").await;
    // The admin API shows what the reload published.
    assert_eq!(gw.api().key("cmd").await["managed"], true);

    cmd_json(config, &["keys", "update", "cmd", "--status", "inactive"]).await;
    until_outcome(proxy, &secret, 403, "key_inactive").await;
    cmd_json(config, &["keys", "update", "cmd", "--status", "active"]).await;
    until_outcome(proxy, &secret, 200, "").await;

    let rotated = cmd_json(config, &["keys", "rotate", "cmd"]).await;
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    until_outcome(proxy, &new_secret, 200, "").await;
    assert_refused(proxy, &secret, "key_invalid").await;

    cmd_json(
        config,
        &["consumers", "update", "acme", "--allow-ip", "10.0.0.0/8"],
    )
    .await;
    until_outcome(proxy, &new_secret, 403, "ip_not_allowed").await;
    cmd_json(
        config,
        &["consumers", "update", "acme", "--allow-ip", "127.0.0.0/8"],
    )
    .await;
    until_outcome(proxy, &new_secret, 200, "").await;

    cmd_json(config, &["consumers", "create", "globex"]).await;
    poll(
        RELOAD_LIMIT,
        "consumer globex in the admin API",
        async || (gw.api().get("/v1/consumers/globex").await.status.as_u16() == 200).then_some(()),
    )
    .await;

    // An API change after the commands keeps what they wrote.
    let (_, api_secret) = gw
        .api()
        .create_key(json!({"id": "by-api", "consumer": "globex"}))
        .await;
    assert_admitted(proxy, &api_secret, "by-api").await;
    assert_admitted(proxy, &new_secret, "cmd").await;

    let out = keygate_cmd(config, &["keys", "revoke", "cmd"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    until_outcome(proxy, &new_secret, 403, "key_invalid").await;
    assert_admitted(proxy, &api_secret, "by-api").await;
    assert_problem(&gw.api().get("/v1/keys/cmd").await, 404, "not_found");

    // A command refused on a main-file key changes nothing on the running gateway either.
    let out = keygate_cmd(
        config,
        &["keys", "update", STATIC_ID, "--status", "inactive"],
    )
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("main config file"),
        "{}",
        text(&out.stderr)
    );
    assert_admitted(proxy, STATIC_SECRET, STATIC_ID).await;
    assert_no_keygate_panic();
}

// --- changes from several processes at once --------------------------------------------------

/// Runs `keys create --id <id>` for each id at once; returns the ids whose command succeeded.
async fn parallel_creates(config: &std::path::Path, ids: Vec<String>) -> Vec<String> {
    let mut tasks = tokio::task::JoinSet::new();
    for id in ids {
        let config = config.to_path_buf();
        tasks.spawn(async move {
            let out = keygate_cmd(&config, &["keys", "create", "--id", &id]).await;
            assert!(
                out.status.success(),
                "keys create {id}: {}",
                text(&out.stderr)
            );
            id
        });
    }
    let mut done = Vec::new();
    within("the parallel commands", async {
        while let Some(r) = tasks.join_next().await {
            done.push(r.expect("a command task panicked"));
        }
    })
    .await;
    done
}

/// Two scripts running `keygate keys create` at the same time: every command that succeeded
/// left its key in the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_key_commands_lose_no_key() {
    let f = files("parallel-cmds").await;
    let ids: Vec<String> = (0..16).map(|i| format!("cli-{i:02}")).collect();
    let done = parallel_creates(&f.config, ids).await;
    assert_eq!(done.len(), 16);
    let on_disk = f.key_ids();
    let lost: Vec<&String> = done.iter().filter(|id| !on_disk.contains(id)).collect();
    assert!(
        lost.is_empty(),
        "created (exit 0) but not in keys.toml: {lost:?}"
    );
    assert_check_passes(&f.config).await;
}

/// Commands and the admin API of a running keygate writing at the same time: no change that
/// was acknowledged (201, or exit 0) is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_and_the_admin_api_at_once_lose_nothing() {
    let gw = Gateway::start("cmds-and-api").await;
    let api = gw.api();
    // One command at a time, while the API creates keys one at a time too: only a command and
    // the gateway ever write at once.
    let api_task = tokio::spawn(async move {
        let mut made = Vec::new();
        for i in 0..40 {
            let id = format!("api-{i:02}");
            api.create_key(json!({"id": id})).await;
            made.push(id);
        }
        made
    });
    let mut acknowledged = Vec::new();
    for i in 0..12 {
        let id = format!("cli-{i:02}");
        acknowledged.extend(parallel_creates(&gw.files.config, vec![id]).await);
    }
    acknowledged.extend(within("the API creates", api_task).await.unwrap());
    let on_disk = gw.files.key_ids();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|id| !on_disk.contains(id))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged but not in keys.toml: {lost:?}"
    );
    assert_no_keygate_panic();
}
