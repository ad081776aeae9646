//! The keys file behind the admin API: hand edits kept, refused changes writing nothing, parallel changes across a restart, and SIGKILL mid-write.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::harness::admin::*;
use crate::harness::live::replace_file;
use crate::harness::*;

/// A key written into the keys file by hand.
const HAND_SECRET: &str = "kg_hand_aGFuZE1hZGVTZWNyZXRGb3JTdG9yZVRlc3RzMDAwMQ";

/// The temp files a write leaves in the directory (none, unless it was interrupted).
fn temp_files(files: &Files) -> Vec<String> {
    files
        .dir_entries()
        .into_iter()
        .filter(|n| n.ends_with(".tmp"))
        .collect()
}

// --- hand edits ------------------------------------------------------------------------------

/// A hand edit made between two API calls (a comment, a key added, a key removed) is not lost by
/// the next API write, and the hand-made key is managed like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_edit_between_two_api_calls_is_kept() {
    let gw = Gateway::start("hand-edit").await;
    let api = gw.api();
    let (_, first) = api
        .create_key(json!({"id": "first", "name": "First"}))
        .await;
    let (_, doomed) = api.create_key(json!({"id": "doomed"})).await;

    // By hand: a comment on top, a key with comments at the end, and one key removed.
    let text = gw.files.keys_text();
    let mut doc: toml_edit::DocumentMut = text.parse().unwrap();
    doc["keys"]
        .as_array_of_tables_mut()
        .unwrap()
        .retain(|t| t.get("id").and_then(|v| v.as_str()) != Some("doomed"));
    let edited = format!(
        "# Edited by hand on a Tuesday: keep this line.\n{doc}\n\
         # The key below was added by hand.\n[[keys]]\nid = \"by-hand\"\nname = \"Hand made\"\n\
         hash = \"{}\" # an inline comment\n",
        keygate_hash(HAND_SECRET)
    );
    // Saved whole (temp file, rename), as a careful editor does: a write in place could be
    // reloaded between its truncate and its write, as a valid file with no keys.
    replace_file(&gw.files.keys, edited.as_bytes());

    // The next API write.
    let (_, second) = api.create_key(json!({"id": "second"})).await;
    let after = gw.files.keys_text();
    for kept in [
        "# Edited by hand on a Tuesday: keep this line.",
        "# Managed by keygate; edits by hand are welcome.",
        "# The key below was added by hand.",
        "# an inline comment",
        "id = \"by-hand\"",
        "name = \"Hand made\"",
        "id = \"first\"",
        "id = \"second\"",
    ] {
        assert!(after.contains(kept), "lost {kept:?}:\n{after}");
    }
    assert!(
        !after.contains("doomed"),
        "a key removed by hand came back:\n{after}"
    );
    // The whole hand-edited text is still there, the new key appended.
    assert!(
        after.starts_with(edited.trim_end()),
        "{edited}\n---\n{after}"
    );

    // All of it is live right after the 201.
    assert_admitted(gw.proxy, HAND_SECRET, "by-hand").await;
    assert_admitted(gw.proxy, &first, "first").await;
    assert_admitted(gw.proxy, &second, "second").await;
    assert_refused(gw.proxy, &doomed, "key_invalid").await;
    let hand = api.key("by-hand").await;
    assert_eq!(hand["managed"], true);
    assert_eq!(hand["name"], "Hand made");
    assert_eq!(hand["prefix"], Value::Null);
    assert_eq!(hand["created_at"], Value::Null);
    assert_problem(&api.get("/v1/keys/doomed").await, 404, "not_found");

    // The API changes the hand-made key too, and the comments stay.
    expect(
        &api.patch("/v1/keys/by-hand", &json!({"status": "inactive"}))
            .await,
        200,
    );
    assert_refused(gw.proxy, HAND_SECRET, "key_inactive").await;
    let last = gw.files.keys_text();
    assert!(last.contains("# an inline comment"), "{last}");
    assert!(last.contains("# Edited by hand on a Tuesday"), "{last}");
    assert_check_passes(&gw.files.config).await;
    assert_no_keygate_panic();
}

/// Without a keys file, the API shows the main file's keys and its first change creates the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_change_creates_the_keys_file() {
    let gw = Gateway::start_with("no-keys-file", None).await;
    let api = gw.api();
    assert!(gw.files.keys_bytes().is_none());
    let list = expect(&api.get("/v1/keys").await, 200);
    assert_eq!(ids(list["items"].as_array().unwrap()), [STATIC_ID]);
    let (_, secret) = api.create_key(json!({"id": "born"})).await;
    assert_admitted(gw.proxy, &secret, "born").await;
    let text = gw.files.keys_text();
    assert!(text.contains("id = \"born\""), "{text}");
    assert!(
        temp_files(&gw.files).is_empty(),
        "{:?}",
        gw.files.dir_entries()
    );
    assert_check_passes(&gw.files.config).await;
    assert_no_keygate_panic();
}

// --- refused changes -------------------------------------------------------------------------

/// Every refused change leaves the keys file byte-identical and no temp file behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_change_leaves_the_file_byte_identical() {
    let gw = Gateway::start("refused").await;
    let api = gw.api();
    api.create_consumer(json!({"id": "one", "max_keys": 1}))
        .await;
    api.create_key(json!({"id": "k", "consumer": "one", "allow_ips": ["127.0.0.1"]}))
        .await;
    let before = gw.files.keys_bytes().unwrap();
    let entries = gw.files.dir_entries();

    let refused = [
        (
            "POST",
            "/v1/keys",
            json!({"id": "x", "allow_ips": ["10.0.0.0/33"]}),
            400,
        ),
        (
            "PATCH",
            "/v1/keys/k",
            json!({"name": "x", "allow_ips": ["10.0.0.0/33"]}),
            400,
        ),
        (
            "POST",
            "/v1/keys/k/allow_ips",
            json!({"cidr": "10.0.0.0/33"}),
            400,
        ),
        (
            "PATCH",
            "/v1/keys/k",
            json!({"status": "inactive", "targets": ["nowhere"]}),
            400,
        ),
        (
            "PATCH",
            "/v1/keys/k",
            json!({"name": "x", "expires_at": "never"}),
            400,
        ),
        (
            "POST",
            "/v1/consumers",
            json!({"id": "c", "allow_ips": ["::1/129"]}),
            400,
        ),
        (
            "PATCH",
            "/v1/consumers/one",
            json!({"name": "x", "rate_limit": "x"}),
            400,
        ),
        ("POST", "/v1/keys", json!({"id": "k"}), 409),
        (
            "POST",
            "/v1/keys",
            json!({"id": "y", "consumer": "one"}),
            409,
        ),
        ("DELETE", "/v1/consumers/one", Value::Null, 409),
        ("PATCH", "/v1/keys/static", json!({"name": "x"}), 409),
        ("PATCH", "/v1/keys/nope", json!({"name": "x"}), 404),
    ];
    for (method, path, body, status) in refused {
        let body = (!body.is_null()).then(|| body.to_string());
        let resp = api.send(method, path, body.as_deref()).await;
        assert_eq!(
            resp.status.as_u16(),
            status,
            "{method} {path}: {}",
            resp.text()
        );
        assert_eq!(
            gw.files.keys_bytes().unwrap(),
            before,
            "{method} {path} was refused but changed the file"
        );
    }
    assert_eq!(
        gw.files.dir_entries(),
        entries,
        "a refused change left a file behind"
    );
    let k = api.key("k").await;
    assert_eq!(
        (k["name"].clone(), k["status"].clone()),
        (Value::Null, json!("active"))
    );
    assert_no_keygate_panic();
}

/// A keys file broken by hand: API changes are refused with 409 `store_invalid` and write
/// nothing; the proxy keeps the last good keys; once fixed by hand, changes work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_keys_file_refuses_changes_and_keeps_the_hand_text() {
    let (gw, api, secret) = Gateway::start_with_key("broken", "k").await;
    let good = gw.files.keys_text();
    let broken = format!("{good}\n[[keys]\nid = \"half-typed\"\n");
    // Saved whole: a reload between a truncate and the write would see a valid, empty file.
    replace_file(&gw.files.keys, broken.as_bytes());

    let p = assert_problem(
        &api.post("/v1/keys", &json!({"id": "new"})).await,
        409,
        "store_invalid",
    );
    assert!(p["detail"].as_str().unwrap().contains("keys.toml"), "{p}");
    assert_problem(
        &api.patch("/v1/keys/k", &json!({"name": "x"})).await,
        409,
        "store_invalid",
    );
    assert_eq!(
        gw.files.keys_text(),
        broken,
        "the hand's text was overwritten"
    );
    assert_admitted(gw.proxy, &secret, "k").await;

    replace_file(&gw.files.keys, good.as_bytes());
    let (_, new) = api.create_key(json!({"id": "new"})).await;
    assert_admitted(gw.proxy, &new, "new").await;
    assert_no_keygate_panic();
}

// --- concurrency -----------------------------------------------------------------------------

const PARALLEL: usize = 40;
/// Requests in flight at once.
const IN_FLIGHT: usize = 8;

fn base_secret(i: usize) -> String {
    format!("kg_base_{i:02}_YmFzZVNlY3JldEZvckNvbmN1cnJlbmN5VGVzdHM")
}

/// A keys file with `PARALLEL` keys `base-NN` that the test patches.
fn base_keys() -> String {
    let mut s = String::from(INITIAL_KEYS);
    for i in 0..PARALLEL {
        s.push_str(&format!(
            "\n[[keys]]\nid = \"base-{i:02}\"\nconsumer = \"acme\"\nhash = \"{}\"\n",
            keygate_hash(&base_secret(i))
        ));
    }
    s
}

fn patch_of(i: usize) -> Value {
    json!({
        "name": format!("patched {i}"),
        "status": if i.is_multiple_of(3) { "inactive" } else { "active" },
        "allow_ips": ["127.0.0.1", format!("10.{i}.0.0/16")],
    })
}

/// Asserts that the key `base-i` carries its patch.
#[track_caller]
fn assert_patched(i: usize, key: &Value) {
    let want = patch_of(i);
    assert_eq!(key["name"], want["name"], "{key}");
    assert_eq!(key["status"], want["status"], "{key}");
    let ips = key["allow_ips"].as_array().unwrap();
    assert_eq!(ips.len(), 2, "{key}");
    assert!(ips[1].as_str() == Some(&format!("10.{i}.0.0/16")), "{key}");
}

#[track_caller]
fn assert_created(i: usize, key: &Value) {
    assert_eq!(key["id"], format!("new-{i:02}"), "{key}");
    assert_eq!(key["name"], format!("created {i}"), "{key}");
    assert_eq!(key["rate_limit"], format!("{}/minute", i + 1), "{key}");
}

/// Sends `PARALLEL` creates and `PARALLEL` patches from concurrent tasks, `IN_FLIGHT` at a time;
/// returns the secrets of the created keys by index. Every answer must be 201 / 200.
async fn parallel_changes(api: &Api) -> BTreeMap<usize, String> {
    let permits = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut tasks = JoinSet::new();
    for i in 0..PARALLEL {
        for create in [true, false] {
            let (api, permits) = (api.clone(), permits.clone());
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await.unwrap();
                if create {
                    let body = json!({
                        "id": format!("new-{i:02}"),
                        "name": format!("created {i}"),
                        "consumer": "acme",
                        "rate_limit": format!("{}/minute", i + 1),
                    });
                    (i, create, api.post("/v1/keys", &body).await)
                } else {
                    let path = format!("/v1/keys/base-{i:02}");
                    (i, create, api.patch(&path, &patch_of(i)).await)
                }
            });
        }
    }
    let mut secrets = BTreeMap::new();
    let mut failures = Vec::new();
    within("the parallel changes", async {
        for _ in 0..2 * PARALLEL {
            let Some(done) = tasks.join_next().await else {
                break;
            };
            let (i, create, resp) = done.expect("a change task panicked");
            let want = if create { 201 } else { 200 };
            if resp.status.as_u16() != want {
                failures.push(format!(
                    "{} {i}: {} {}",
                    if create { "create" } else { "patch" },
                    resp.status,
                    resp.text()
                ));
                continue;
            }
            let key = resp.json();
            if create {
                assert_created(i, &key);
                secrets.insert(i, key["secret"].as_str().unwrap().to_owned());
            } else {
                assert_patched(i, &key);
            }
        }
    })
    .await;
    assert!(failures.is_empty(), "changes failed: {failures:#?}");
    assert_eq!(secrets.len(), PARALLEL);
    secrets
}

/// Asserts every created key and every patch, through the API and the proxy.
async fn assert_all_changes(api: &Api, proxy: SocketAddr, secrets: &BTreeMap<usize, String>) {
    let keys = api.all_keys("").await;
    let by_id: BTreeMap<&str, &Value> = keys
        .iter()
        .map(|k| (k["id"].as_str().unwrap(), k))
        .collect();
    let mut missing = Vec::new();
    for i in 0..PARALLEL {
        match by_id.get(format!("new-{i:02}").as_str()) {
            Some(k) => assert_created(i, k),
            None => missing.push(format!("new-{i:02}")),
        }
        assert_patched(i, by_id[format!("base-{i:02}").as_str()]);
    }
    assert!(missing.is_empty(), "created keys missing: {missing:?}");
    assert_eq!(keys.len(), 2 * PARALLEL + 1, "{:?}", ids(&keys));
    for (i, secret) in secrets {
        assert_admitted(proxy, secret, &format!("new-{i:02}")).await;
    }
    for i in 0..PARALLEL {
        let id = format!("base-{i:02}");
        if i.is_multiple_of(3) {
            assert_refused(proxy, &base_secret(i), "key_inactive").await;
        } else {
            assert_admitted(proxy, &base_secret(i), &id).await;
        }
    }
}

/// Many parallel creates and patches, then a restart of the binary on the same files: no key
/// and no change is lost, and the file is valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_creates_and_patches_survive_a_restart() {
    let files = Files::for_binary("parallel", Some(&base_keys())).await;
    let kg = Process::start(&files.config).await;
    let secrets = parallel_changes(&kg.api()).await;

    // On disk: every key and every patch, in a file keygate accepts.
    assert_check_passes(&files.config).await;
    let on_disk = files.key_ids();
    for i in 0..PARALLEL {
        assert!(
            on_disk.contains(&format!("new-{i:02}")),
            "new-{i:02} not on disk"
        );
    }
    assert!(temp_files(&files).is_empty(), "{:?}", files.dir_entries());

    let (status, log) = kg.terminate().await;
    assert!(status.success(), "{status}: {log:#?}");
    let kg = Process::start(&files.config).await;
    assert_all_changes(&kg.api(), kg.proxy, &secrets).await;
    kg.terminate_cleanly().await;
}

/// The same parallel changes, checked on the running gateway before any restart: each answer
/// was sent after its change was published, so every key and every patch must be visible and
/// in force once all answers are in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_creates_and_patches_are_all_live_without_a_restart() {
    let gw = Gateway::start_with("parallel-live", Some(&base_keys())).await;
    let secrets = parallel_changes(&gw.api()).await;
    assert_all_changes(&gw.api(), gw.proxy, &secrets).await;
    assert_no_keygate_panic();
}

// --- crash safety ----------------------------------------------------------------------------

/// Creates per worker, at most, in one round.
const CRASH_CREATES: usize = 400;
const CRASH_WORKERS: usize = 4;
/// Acknowledged creates to wait for before the kill.
const ACKS_BEFORE_KILL: usize = 12;

/// One round: keygate is SIGKILLed while workers keep creates in flight. Returns the
/// acknowledged (id, secret) pairs.
async fn create_until_killed(files: &Files, round: usize) -> Vec<(String, String)> {
    let kg = Process::start(&files.config).await;
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let unexpected: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = JoinSet::new();
    for w in 0..CRASH_WORKERS {
        let (acked, unexpected, stop) = (acked.clone(), unexpected.clone(), stop.clone());
        let admin = kg.admin;
        workers.spawn(async move {
            for i in 0..CRASH_CREATES {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let id = format!("crash-{round}-{w}-{i:03}");
                let body = json!({
                    "id": id,
                    "name": format!("made in round {round} by worker {w}: {}", "x".repeat(64)),
                    "allow_ips": ["127.0.0.1", "10.0.0.0/8", "2001:db8::/32"],
                    "paths": ["/live", "/reports"],
                })
                .to_string();
                match try_send(admin, ADMIN_SECRET, "POST", "/v1/keys", &body).await {
                    Some((201, b)) => {
                        let v: Value = serde_json::from_slice(&b).unwrap();
                        let secret = v["secret"].as_str().unwrap().to_owned();
                        acked.lock().unwrap().push((id, secret));
                    }
                    Some((status, b)) => unexpected
                        .lock()
                        .unwrap()
                        .push(format!("{id}: {status} {}", String::from_utf8_lossy(&b))),
                    // The connection died with keygate.
                    None => break,
                }
            }
        });
    }
    poll(
        Duration::from_secs(60),
        "acknowledged creates before the kill",
        async || (acked.lock().unwrap().len() >= ACKS_BEFORE_KILL).then_some(()),
    )
    .await;
    // Creates are in flight right now: kill it mid-write.
    kg.kill().await;
    stop.store(true, Ordering::SeqCst);
    within("the workers to stop", async {
        for _ in 0..CRASH_WORKERS {
            if let Some(r) = workers.join_next().await {
                r.expect("a worker panicked");
            }
        }
    })
    .await;
    let unexpected = unexpected.lock().unwrap().clone();
    assert!(unexpected.is_empty(), "{unexpected:#?}");
    acked.lock().unwrap().clone()
}

/// keygate is killed (SIGKILL) while a loop of creates is in flight, three times over: each time
/// `keygate check` passes on the files, and every key that got a 201 before the kill is in the
/// file; a restart serves them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_write_leaves_a_valid_file_with_every_acknowledged_key() {
    let files = Files::for_binary("sigkill", Some(INITIAL_KEYS)).await;
    let mut all_acked = Vec::new();
    for round in 0..3 {
        let acked = create_until_killed(&files, round).await;
        assert!(acked.len() >= ACKS_BEFORE_KILL);
        assert_check_passes(&files.config).await;
        // The file is whole TOML, whatever the kill interrupted.
        let text = files.keys_text();
        text.parse::<toml_edit::DocumentMut>()
            .unwrap_or_else(|e| panic!("torn keys file after round {round}: {e}\n{text}"));
        let on_disk = files.key_ids();
        let lost: Vec<&String> = acked
            .iter()
            .map(|(id, _)| id)
            .filter(|id| !on_disk.contains(id))
            .collect();
        assert!(lost.is_empty(), "acknowledged but not on disk: {lost:?}");
        all_acked.extend(acked);
    }

    // A restart on those files serves every acknowledged key.
    let kg = Process::start(&files.config).await;
    for (id, secret) in &all_acked {
        assert_admitted(kg.proxy, secret, id).await;
    }
    let listed = ids(&kg.api().all_keys("").await);
    for (id, _) in &all_acked {
        assert!(listed.contains(id), "{id} is not listed");
    }
    kg.terminate_cleanly().await;
}
