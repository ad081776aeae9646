//! `[[webhooks]]` on the real binary: a real HTTP receiver in the test gets signed events for
//! key changes and expired keys, failures are retried, pending deliveries survive a restart,
//! and the metrics show each outcome (docs/webhooks.md).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, KeyInit as _, Mac as _};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::harness::admin::*;
use crate::harness::*;

pub(crate) const WEBHOOK_SECRET: &str = "whsec_test_0123456789";

/// One request the receiver got.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    headers: HeaderMap,
    body: String,
    /// What the receiver answered.
    status: u16,
}

impl Received {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }
}

/// A webhook receiver on `127.0.0.1:0`: records every request, answers 500 while `failing`
/// is above 0 (counting it down; negative: always), then 200.
pub(crate) struct Receiver {
    pub(crate) addr: SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
    failing: Arc<AtomicI64>,
    _up: Upstream,
}

impl Receiver {
    pub(crate) async fn start(failing: i64) -> Receiver {
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let fail = Arc::new(AtomicI64::new(failing));
        let (sink, f) = (got.clone(), fail.clone());
        let up = start_upstream_with(move |req: Request<Incoming>, _| {
            let (sink, f) = (sink.clone(), f.clone());
            async move {
                let (parts, body) = req.into_parts();
                let bytes = body.collect().await.unwrap().to_bytes();
                let left = f.load(Ordering::SeqCst);
                let status = if left != 0 {
                    if left > 0 {
                        f.fetch_sub(1, Ordering::SeqCst);
                    }
                    500
                } else {
                    200
                };
                sink.lock().unwrap().push(Received {
                    headers: parts.headers,
                    body: String::from_utf8(bytes.to_vec()).unwrap(),
                    status,
                });
                let mut resp = Response::new(full("ok"));
                *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                resp
            }
        })
        .await;
        Receiver {
            addr: up.addr,
            got,
            failing: fail,
            _up: up,
        }
    }

    fn all(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Requests for events of `kind`.
    pub(crate) fn of(&self, kind: &str) -> Vec<Received> {
        self.all()
            .into_iter()
            .filter(|r| r.json()["type"] == kind)
            .collect()
    }

    /// Waits (bounded) until `n` requests for `kind` have come.
    pub(crate) async fn wait_for(&self, kind: &str, n: usize, limit: Duration) -> Vec<Received> {
        poll(
            limit,
            &format!("{n} webhook request(s) for {kind}"),
            async || {
                let got = self.of(kind);
                (got.len() >= n).then_some(got)
            },
        )
        .await
    }
}

/// The `[[webhooks]]` table for `rx`, retrying after `retry` (then twice that, ...).
fn webhook(rx: &Receiver, retry: &str) -> String {
    format!(
        "[[webhooks]]\nname = \"rx\"\nurl = \"http://{}/hooks/keygate\"\nevents = [\"key.created\", \"key.updated\", \"key.revoked\", \"key.expired_used\"]\nsecret = \"{WEBHOOK_SECRET}\"\ntimeout = \"2s\"\nretry_initial = \"{retry}\"\n",
        rx.addr
    )
}

/// Checks `Keygate-Signature` as a receiver would, with HMAC-SHA256 computed here.
#[track_caller]
pub(crate) fn assert_signed(r: &Received) {
    let header = r.header("keygate-signature");
    let (t, v1) = header
        .split_once(',')
        .and_then(|(t, v)| Some((t.strip_prefix("t=")?, v.strip_prefix("v1=")?)))
        .unwrap_or_else(|| panic!("not t=…,v1=…: {header}"));
    let t: u64 = t.parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(t.abs_diff(now) < 300, "timestamp {t} is not now ({now})");
    let mut mac = <Hmac<sha2::Sha256>>::new_from_slice(WEBHOOK_SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.{}", r.body).as_bytes());
    assert_eq!(
        v1,
        hex::encode(mac.finalize().into_bytes()),
        "signature of {}",
        r.body
    );
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(r.header("keygate-event-id"), r.json()["id"]);
}

/// The value of the metric line starting with `series` (0 when absent).
async fn metric(kg: &Process, series: &str) -> f64 {
    let text = kg.api().get("/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn key_changes_from_the_api_a_hand_edit_and_the_commands_are_posted_signed_once() {
    let rx = Receiver::start(0).await;
    let files = Files::for_binary("webhooks-created", Some(INITIAL_KEYS)).await;
    files.append_to_config(&webhook(&rx, "1s"));
    let kg = Process::start(&files.config).await;
    let api = kg.api();

    let (_, secret) = api
        .create_key(json!({ "id": "hooked", "name": "Hooked", "consumer": "acme" }))
        .await;
    let got = rx.wait_for("key.created", 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let r = &got[0];
    assert_signed(r);
    let body = r.json();
    assert!(body["id"].as_str().unwrap().starts_with("evt_"), "{body}");
    assert_eq!(body["data"]["key"]["id"], "hooked");
    assert_eq!(body["data"]["key"]["consumer"], "acme");
    assert_eq!(body["data"]["key"]["status"], "active");
    assert!(!r.body.contains(&secret), "the secret in {}", r.body);
    assert!(!r.body.contains("sha256:"), "a hash in {}", r.body);
    assert_eq!(r.header("keygate-event-type"), "key.created");

    // An update and a revoke through the API: one event each.
    expect(
        &api.patch("/v1/keys/hooked", &json!({ "status": "inactive" }))
            .await,
        200,
    );
    let updated = rx.wait_for("key.updated", 1, Duration::from_secs(10)).await;
    assert_eq!(updated[0].json()["data"]["key"]["status"], "inactive");
    assert_eq!(updated[0].json()["data"]["previous"]["status"], "active");
    assert_signed(&updated[0]);
    let resp = api.delete("/v1/keys/hooked").await;
    assert!(resp.status.is_success(), "{}", resp.text());
    let revoked = rx.wait_for("key.revoked", 1, Duration::from_secs(10)).await;
    assert_eq!(revoked[0].json()["data"]["key"]["id"], "hooked");

    // A key added by hand to the keys file (as `keygate keys create` does): seen by the reload.
    let mut keys = files.keys_text();
    keys.push_str(&format!(
        "\n[[keys]]\nid = \"by-hand\"\nhash = \"{}\"\n",
        keygate_hash("kg_by_hand_secret_0000000000000000")
    ));
    std::fs::write(&files.keys, keys).unwrap();
    let created = rx.wait_for("key.created", 2, RELOAD_LIMIT).await;
    assert_eq!(created[1].json()["data"]["key"]["id"], "by-hand");

    // `keygate keys create` (the command, on the files) and `keygate keys revoke`.
    let out = keygate_cmd(&files.config, &["keys", "create", "--id", "from-cmd"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let created = rx.wait_for("key.created", 3, RELOAD_LIMIT).await;
    assert_eq!(created[2].json()["data"]["key"]["id"], "from-cmd");
    assert!(!created[2].body.contains("sha256:"));
    let out = keygate_cmd(&files.config, &["keys", "revoke", "from-cmd"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let revoked = rx.wait_for("key.revoked", 2, RELOAD_LIMIT).await;
    assert_eq!(revoked[1].json()["data"]["key"]["id"], "from-cmd");

    let delivered = "keygate_webhook_deliveries_total{webhook=\"rx\",event=\"key.created\",outcome=\"delivered\"}";
    poll(Duration::from_secs(5), "the delivered metric", async || {
        (metric(&kg, delivered).await == 3.0).then_some(())
    })
    .await;
    assert_eq!(
        metric(&kg, "keygate_webhook_pending{webhook=\"rx\"}").await,
        0.0
    );
    // Exactly once each: nothing more came.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.of("key.created").len(), 3);
    assert_eq!(rx.of("key.updated").len(), 1);
    assert_eq!(rx.of("key.revoked").len(), 2);
    kg.terminate_cleanly().await;
}

#[tokio::test]
async fn a_failed_delivery_is_retried_with_the_same_event_id() {
    let rx = Receiver::start(1).await;
    let files = Files::for_binary("webhooks-retry", Some(INITIAL_KEYS)).await;
    files.append_to_config(&webhook(&rx, "300ms"));
    let kg = Process::start(&files.config).await;
    kg.api().create_key(json!({ "id": "retried" })).await;
    let got = rx.wait_for("key.created", 2, Duration::from_secs(10)).await;
    assert_eq!(got[0].status, 500);
    assert_eq!(got[1].status, 200);
    assert_eq!(
        got[0].json()["id"],
        got[1].json()["id"],
        "one event, sent twice"
    );
    assert_eq!(got[0].header("keygate-delivery-attempt"), "1");
    assert_eq!(got[1].header("keygate-delivery-attempt"), "2");
    assert_signed(&got[1]);
    let series = |outcome: &str| {
        format!(
            "keygate_webhook_deliveries_total{{webhook=\"rx\",event=\"key.created\",outcome=\"{outcome}\"}}"
        )
    };
    poll(
        Duration::from_secs(5),
        "failed 1 and delivered 1",
        async || {
            (metric(&kg, &series("failed")).await == 1.0
                && metric(&kg, &series("delivered")).await == 1.0)
                .then_some(())
        },
    )
    .await;
    kg.terminate_cleanly().await;
}

#[tokio::test]
async fn pending_deliveries_are_delivered_after_a_restart() {
    // Down (500) until the test says otherwise.
    let rx = Receiver::start(-1).await;
    let files = Files::for_binary("webhooks-restart", Some(INITIAL_KEYS)).await;
    files.append_to_config(&webhook(&rx, "500ms"));
    let kg = Process::start(&files.config).await;
    kg.api().create_key(json!({ "id": "survivor" })).await;
    let first = rx.wait_for("key.created", 1, Duration::from_secs(10)).await;
    let id = first[0].json()["id"].as_str().unwrap().to_owned();
    let spool = files.dir.join("keys.webhooks.json");
    poll(
        Duration::from_secs(5),
        "the spool to hold the delivery",
        async || {
            std::fs::read_to_string(&spool)
                .ok()
                .filter(|t| t.contains(&id))
                .map(|_| ())
        },
    )
    .await;
    assert!(metric(&kg, "keygate_webhook_pending{webhook=\"rx\"}").await >= 1.0);
    kg.terminate_cleanly().await;

    rx.failing.store(0, Ordering::SeqCst);
    let before = rx.all().len();
    let kg = Process::start(&files.config).await;
    let ok = poll(
        Duration::from_secs(15),
        "the delivery after the restart",
        async || rx.all().into_iter().skip(before).find(|r| r.status == 200),
    )
    .await;
    assert_eq!(ok.json()["id"], id.as_str());
    assert_eq!(ok.json()["data"]["key"]["id"], "survivor");
    assert_signed(&ok);
    poll(
        Duration::from_secs(5),
        "the spool to be emptied",
        async || {
            std::fs::read_to_string(&spool)
                .ok()
                .filter(|t| !t.contains(&format!("\"event\":\"{id}\"")))
                .map(|_| ())
        },
    )
    .await;
    // The restart made no new key.created: only the one event, delivered once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        rx.of("key.created")
            .iter()
            .filter(|r| r.status == 200)
            .count(),
        1
    );
    kg.terminate_cleanly().await;
}

#[tokio::test]
async fn an_expired_key_used_again_and_again_is_told_once() {
    let rx = Receiver::start(0).await;
    let secret = "kg_expired_ZXhwaXJlZFNlY3JldEZvcldlYmhvb2tUZXN0cw";
    let keys = format!(
        "{INITIAL_KEYS}\n[[keys]]\nid = \"old\"\nconsumer = \"acme\"\nhash = \"{}\"\nexpires_at = 2001-01-01T00:00:00Z\n",
        keygate_hash(secret)
    );
    let files = Files::for_binary("webhooks-expired", Some(&keys)).await;
    files.append_to_config(&webhook(&rx, "1s"));
    let kg = Process::start(&files.config).await;
    for _ in 0..20 {
        assert_refused(kg.proxy, secret, "key_expired").await;
    }
    let got = rx
        .wait_for("key.expired_used", 1, Duration::from_secs(10))
        .await;
    assert_signed(&got[0]);
    let body = got[0].json();
    assert_eq!(body["data"]["key"]["id"], "old");
    assert_eq!(body["data"]["key"]["expires_at"], "2001-01-01T00:00:00Z");
    assert!(!got[0].body.contains(secret));
    for _ in 0..20 {
        assert_refused(kg.proxy, secret, "key_expired").await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(rx.of("key.expired_used").len(), 1, "{:?}", rx.all());
    assert_eq!(
        metric(
            &kg,
            "keygate_webhook_deliveries_total{webhook=\"rx\",event=\"key.expired_used\",outcome=\"delivered\"}"
        )
        .await,
        1.0
    );
    kg.terminate_cleanly().await;
}

/// Two instances sharing one keys file and one Redis (`[cluster]`): a key made through one's
/// admin API and a key added by hand to the shared file are each seen by both reloads, and
/// each is told once (the event id is the change's, claimed in Redis by the first instance).
#[tokio::test]
async fn a_fleet_tells_each_key_change_once() {
    use crate::cluster::{Redis, instance_config};
    use crate::harness::live::{call, key_toml};
    let Some(redis) = Redis::start() else { return };
    let rx = Receiver::start(0).await;
    let up = start_upstream("up").await;
    let dir = Dir::new("webhooks-fleet");
    for sub in ["shared", "a", "b"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    std::fs::write(dir.join("shared/keys.toml"), "").unwrap();
    let hook = webhook(&rx, "1s");
    let instance = instance_config(up.addr, &redis, "mode = \"strict\"", &hook);
    let a_config = format!(
        "keys_file = \"../shared/keys.toml\"\n{instance}\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[[admin_keys]]\nid = \"ops\"\nhash = \"{}\"\nrole = \"admin\"\n",
        keygate_hash(ADMIN_SECRET)
    );
    let b_config = format!("keys_file = \"../shared/keys.toml\"\n{instance}");
    let (a_path, b_path) = (dir.join("a/keygate.toml"), dir.join("b/keygate.toml"));
    std::fs::write(&a_path, a_config).unwrap();
    std::fs::write(&b_path, b_config).unwrap();
    let mut a = Process::start_proxy(&a_path).await;
    let b = Process::start_proxy(&b_path).await;
    let admin = a.wait_addr("admin API listening").await;
    // B's subscription logs nothing: give it a moment, as the cluster tests do.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (_, secret) = Api::new(admin, Some(ADMIN_SECRET))
        .create_key(json!({ "id": "fleet-made" }))
        .await;
    rx.wait_for("key.created", 1, Duration::from_secs(10)).await;
    poll(RELOAD_LIMIT, "instance B to have the new key", async || {
        (call(b.proxy, &secret).await.status == 200).then_some(())
    })
    .await;

    let by_hand = "kg_fleet_hand_aGFuZEVkaXRlZEZsZWV0S2V5MDEyMzQ1Njc4";
    let mut keys = std::fs::read_to_string(dir.join("shared/keys.toml")).unwrap();
    keys.push_str(&key_toml("by-hand", by_hand, ""));
    std::fs::write(dir.join("shared/keys.toml"), keys).unwrap();
    for gate in [a.proxy, b.proxy] {
        poll(
            RELOAD_LIMIT,
            "both instances to have the hand-made key",
            async || (call(gate, by_hand).await.status == 200).then_some(()),
        )
        .await;
    }
    rx.wait_for("key.created", 2, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ids: Vec<String> = rx
        .of("key.created")
        .iter()
        .map(|r| r.json()["data"]["key"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["fleet-made", "by-hand"], "one event per change");
    // Each instance spools apart: the shared directory holds one spool per instance.
    let spools = std::fs::read_dir(dir.join("shared"))
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            let name = name.to_string_lossy();
            name.starts_with("keys.webhooks.") && name.ends_with(".json")
        })
        .count();
    assert_eq!(spools, 2);
    a.stop().await;
    b.stop().await;
}

/// A reload applies changed webhooks: an event type added to `events` is sent from then on,
/// and a webhook removed gets nothing more.
#[tokio::test]
async fn a_reload_applies_changed_webhooks() {
    let rx = Receiver::start(0).await;
    let files = Files::for_binary("webhooks-reload", Some(INITIAL_KEYS)).await;
    let only_revoked = webhook(&rx, "1s").replace(
        "events = [\"key.created\", \"key.updated\", \"key.revoked\", \"key.expired_used\"]",
        "events = [\"key.revoked\"]",
    );
    files.append_to_config(&only_revoked);
    let kg = Process::start(&files.config).await;
    let api = kg.api();
    api.create_key(json!({ "id": "before" })).await;
    expect(&api.get("/v1/keys/before").await, 200);
    let resp = api.delete("/v1/keys/before").await;
    assert!(resp.status.is_success());
    rx.wait_for("key.revoked", 1, Duration::from_secs(10)).await;
    assert!(rx.of("key.created").is_empty(), "not asked for yet");

    let text = std::fs::read_to_string(&files.config).unwrap();
    std::fs::write(
        &files.config,
        text.replace("events = [\"key.revoked\"]", "events = [\"key.created\"]"),
    )
    .unwrap();
    // Bounded: each try makes one more key, until the reloaded webhook reports one.
    let mut n = 0;
    poll(RELOAD_LIMIT, "key.created after the reload", async || {
        n += 1;
        api.create_key(json!({ "id": format!("after-{n}") })).await;
        (!rx.of("key.created").is_empty()).then_some(())
    })
    .await;

    // Removed: nothing more.
    let text = std::fs::read_to_string(&files.config).unwrap();
    let cut = text.find("[[webhooks]]").unwrap();
    std::fs::write(&files.config, &text[..cut]).unwrap();
    poll(RELOAD_LIMIT, "the webhook to be gone", async || {
        let before = rx.all().len();
        n += 1;
        api.create_key(json!({ "id": format!("after-{n}") })).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        (rx.all().len() == before).then_some(())
    })
    .await;
    kg.terminate_cleanly().await;
}

/// `key.expiring` on the binary: at start the scan finds a key expiring within 7 days and one
/// within a day (each told once, with its threshold), not one expiring in a month nor an
/// inactive one; a restart does not tell them again.
#[tokio::test]
async fn keys_about_to_expire_are_told_once_at_seven_days_and_one_day() {
    let rx = Receiver::start(0).await;
    let at = |secs: u64| {
        let t = time::OffsetDateTime::now_utc() + time::Duration::seconds(secs as i64);
        t.replace_nanosecond(0)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let key = |id: &str, expires: String, extra: &str| {
        format!(
            "[[keys]]\nid = \"{id}\"\nhash = \"{}\"\nexpires_at = {expires}\n{extra}\n",
            keygate_hash(&format!("kg_{id}_ZXhwaXJpbmdTZWNyZXRGb3JXZWJob29rVGVzdA"))
        )
    };
    let keys = format!(
        "{INITIAL_KEYS}\n{}{}{}{}",
        key("in-3-days", at(3 * 86_400), ""),
        key("in-12-hours", at(12 * 3600), ""),
        key("in-30-days", at(30 * 86_400), ""),
        key("off-in-2-days", at(2 * 86_400), "status = \"inactive\""),
    );
    let files = Files::for_binary("webhooks-expiring", Some(&keys)).await;
    files.append_to_config(
        &webhook(&rx, "1s").replace("events = [", "events = [\"key.expiring\", "),
    );
    let kg = Process::start(&files.config).await;
    let got = rx
        .wait_for("key.expiring", 2, Duration::from_secs(10))
        .await;
    let mut told: Vec<(String, String)> = got
        .iter()
        .map(|r| {
            assert_signed(r);
            let b = r.json();
            (
                b["data"]["key"]["id"].as_str().unwrap().to_owned(),
                b["data"]["expires_in"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    told.sort();
    assert_eq!(
        told,
        [
            ("in-12-hours".to_owned(), "1d".to_owned()),
            ("in-3-days".to_owned(), "7d".to_owned())
        ]
    );
    kg.terminate_cleanly().await;
    let kg = Process::start(&files.config).await;
    // The scan runs at start: give it and a delivery time to (not) happen.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rx.of("key.expiring").len(), 2, "{:?}", rx.all());
    kg.terminate_cleanly().await;
}
