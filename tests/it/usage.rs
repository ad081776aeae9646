//! Usage counting (docs/usage.md) on the real binary: counts by code, class and bytes after
//! real requests through a real upstream, the three endpoints (JSON, CSV, pages, errors), the
//! counts across a restart and a crash, retention, and a fleet of two summing in a real
//! `redis-server`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::cluster::Redis;
use crate::harness::admin::*;
use crate::harness::*;

const METERED: &str = "kg_usage_metered_bWV0ZXJlZFNlY3JldEZvclVzYWdlVGVzdHM";
const FENCED: &str = "kg_usage_fenced_ZmVuY2VkU2VjcmV0Rm9yVXNhZ2VUZXN0czAx";

/// Consumer `acme` with key `metered` (4 requests a minute) and key `fenced` (only from
/// 203.0.113.0/24, so every request of the tests is refused `ip_not_allowed`).
fn keys() -> String {
    format!(
        "[[consumers]]\nid = \"acme\"\n\n\
         [[keys]]\nid = \"metered\"\nconsumer = \"acme\"\nhash = \"{}\"\nrate_limit = \"4/minute\"\n\n\
         [[keys]]\nid = \"fenced\"\nconsumer = \"acme\"\nhash = \"{}\"\nallow_ips = [\"203.0.113.0/24\"]\n",
        keygate_hash(METERED),
        keygate_hash(FENCED)
    )
}

/// Files for the binary with [`keys`] and `usage` as the `[usage]` table's lines.
async fn usage_files(name: &str, usage: &str) -> Files {
    let files = Files::for_binary(name, Some(&keys())).await;
    files.append_to_config(&format!("[usage]\n{usage}\n"));
    files
}

/// A day `back` days before today (UTC).
fn day_back(back: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let d = time::OffsetDateTime::from_unix_timestamp((now - back * 86_400) as i64)
        .unwrap()
        .date();
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// What the client saw, to compare with what keygate counted.
#[derive(Default, Debug)]
struct Seen {
    requests: u64,
    allowed: u64,
    codes: BTreeMap<String, u64>,
    classes: BTreeMap<String, u64>,
    bytes_in: u64,
    bytes_out: u64,
}

impl Seen {
    /// Sends one request with `secret` on `conn` and notes its outcome. `status` asks the echo
    /// upstream for that status; `body` is sent as the request body.
    async fn send(&mut self, proxy: SocketAddr, secret: &str, status: u16, body: &str) -> Resp {
        let status = status.to_string();
        let headers = [("x-api-key", secret), ("x-reply-status", status.as_str())];
        let method = if body.is_empty() { "GET" } else { "POST" };
        let resp = H1::connect(proxy)
            .await
            .send(request(method, PROBE, &headers, full(body.to_owned())))
            .await;
        self.requests += 1;
        self.bytes_out += resp.body.len() as u64;
        let code = (resp.header("content-type") == Some("application/problem+json"))
            .then(|| resp.json()["code"].as_str().unwrap().to_owned());
        match code {
            Some(code) => *self.codes.entry(code).or_default() += 1,
            None => {
                self.allowed += 1;
                self.bytes_in += body.len() as u64;
                let class = format!("{}xx", resp.status.as_u16() / 100);
                *self.classes.entry(class).or_default() += 1;
            }
        }
        resp
    }

    /// Asserts `counts` (an item or a total of the API) are what the client saw.
    fn assert_counted(&self, counts: &Value) {
        assert_eq!(counts["requests"], self.requests, "{counts}");
        assert_eq!(counts["allowed"], self.allowed, "{counts}");
        assert_eq!(counts["denied"], self.requests - self.allowed, "{counts}");
        let denials: BTreeMap<String, u64> =
            serde_json::from_value(counts["denials"].clone()).unwrap();
        assert_eq!(denials, self.codes, "{counts}");
        for class in ["2xx", "3xx", "4xx", "5xx"] {
            let want = self.classes.get(class).copied().unwrap_or(0);
            assert_eq!(counts["responses"][class], want, "{class} in {counts}");
        }
        assert_eq!(counts["bytes_in"], self.bytes_in, "{counts}");
        assert_eq!(counts["bytes_out"], self.bytes_out, "{counts}");
    }
}

/// `metered`: 200, 404, 503 and a POST with a body, then requests until the rate limit
/// refuses one (bounded). `fenced`: two refusals. Returns what each key's client saw.
async fn traffic(proxy: SocketAddr) -> (Seen, Seen) {
    let mut metered = Seen::default();
    assert_eq!(metered.send(proxy, METERED, 200, "").await.status, 200);
    assert_eq!(metered.send(proxy, METERED, 404, "").await.status, 404);
    assert_eq!(metered.send(proxy, METERED, 503, "").await.status, 503);
    assert_eq!(
        metered
            .send(proxy, METERED, 201, "twelve bytes")
            .await
            .status,
        201
    );
    for _ in 0..20 {
        if metered.send(proxy, METERED, 200, "").await.status == 429 {
            break;
        }
    }
    assert_eq!(metered.codes.get("rate_limited"), Some(&1), "{metered:?}");
    let mut fenced = Seen::default();
    for _ in 0..2 {
        assert_eq!(fenced.send(proxy, FENCED, 200, "").await.status, 403);
    }
    // Not a key: refused before any key is known, counted nowhere.
    let stranger = call_path(proxy, PROBE, "kg_nobody_bm9ib2R5U2VjcmV0").await;
    assert_eq!(stranger.status, 403);
    (metered, fenced)
}

/// The usage of `path` as the `read` role, with the range of [`days`].
async fn usage(admin: SocketAddr, path: &str, more: &str) -> Value {
    let (from, to) = days();
    let sep = if path.contains('?') { '&' } else { '?' };
    let resp = Api::new(admin, Some(READER_SECRET))
        .get(&format!("{path}{sep}from={from}&to={to}{more}"))
        .await;
    expect(&resp, 200)
}

#[tokio::test]
async fn requests_are_counted_by_code_class_and_bytes_and_answered_three_ways() {
    // An hour between flushes: every count below is read from the workers' shards.
    let files = usage_files("usage-counts", "flush_interval = \"1h\"").await;
    let kg = Process::start(&files.config).await;
    let (metered, fenced) = traffic(kg.proxy).await;

    // A key, by day: the requests just made, without waiting for a flush.
    let key = usage(kg.admin, "/v1/keys/metered/usage", "").await;
    assert_eq!(key["key_id"], "metered");
    assert_eq!(key["consumer"], "acme");
    assert_eq!(key["granularity"], "day");
    assert_eq!(key["scope"], "instance");
    metered.assert_counted(&key["total"]);
    let items = key["items"].as_array().unwrap();
    assert!((1..=2).contains(&items.len()), "{key}");
    // By hour: the same total.
    let hourly = usage(kg.admin, "/v1/keys/metered/usage", "&granularity=hour").await;
    metered.assert_counted(&hourly["total"]);
    let period = hourly["items"][0]["period"].as_str().unwrap();
    assert!(
        period.ends_with(":00:00Z") && period.len() == 20,
        "{period}"
    );

    // The consumer: both keys summed.
    let consumer = usage(kg.admin, "/v1/consumers/acme/usage", "").await;
    let total = &consumer["total"];
    assert_eq!(total["requests"], metered.requests + fenced.requests);
    assert_eq!(
        total["denials"]["ip_not_allowed"],
        fenced.codes["ip_not_allowed"]
    );
    assert_eq!(total["denials"]["rate_limited"], 1);

    // Everything: one row per key per day, paged.
    let all = usage(kg.admin, "/v1/usage", "").await;
    let rows = all["items"].as_array().unwrap();
    let mut by_key: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for r in rows {
        assert_eq!(r["consumer"], "acme", "{r}");
        by_key
            .entry(r["key_id"].as_str().unwrap().into())
            .or_default()
            .push(r);
    }
    assert_eq!(by_key.keys().collect::<Vec<_>>(), ["fenced", "metered"]);
    if let [one] = by_key["fenced"].as_slice() {
        fenced.assert_counted(one);
    }
    let mut pages = Vec::new();
    let mut after = String::new();
    for _ in 0..10 {
        let page = usage(kg.admin, "/v1/usage", &format!("&limit=1{after}")).await;
        assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");
        pages.push(page["items"][0].clone());
        match page["next_after"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    assert_eq!(&pages, rows, "the pages, joined, are the whole list");

    // CSV for billing jobs, asked by Accept or by format=csv: the same rows.
    let (from, to) = days();
    let path = format!("/v1/usage?from={from}&to={to}");
    let by_accept = get(
        kg.admin,
        &path,
        &[("x-api-key", READER_SECRET), ("accept", "text/csv")],
    )
    .await;
    let by_format = get(
        kg.admin,
        &format!("{path}&format=csv"),
        &[("x-api-key", READER_SECRET)],
    )
    .await;
    for csv in [&by_accept, &by_format] {
        assert_eq!(csv.status, 200, "{}", csv.text());
        assert!(
            csv.header("content-type").unwrap().starts_with("text/csv"),
            "{:?}",
            csv.headers
        );
    }
    assert_eq!(by_accept.text(), by_format.text());
    let text = by_accept.text();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("date,key_id,consumer,requests,allowed,denied,denied_key_inactive,"),
        "{}",
        lines[0]
    );
    assert!(lines[0].ends_with(",2xx,3xx,4xx,5xx,bytes_in,bytes_out"));
    assert_eq!(lines.len(), 1 + rows.len(), "{text}");
    let header: Vec<&str> = lines[0].split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let fenced_line: Vec<&str> = lines
        .iter()
        .find(|l| l.split(',').nth(1) == Some("fenced"))
        .unwrap()
        .split(',')
        .collect();
    assert_eq!(fenced_line.len(), header.len());
    assert_eq!(fenced_line[col("consumer")], "acme");
    assert_eq!(fenced_line[col("denied_ip_not_allowed")], "2");
    let csv_page = get(
        kg.admin,
        &format!("{path}&format=csv&limit=1"),
        &[("x-api-key", READER_SECRET)],
    )
    .await;
    assert_eq!(csv_page.text().lines().count(), 2);
    assert!(csv_page.header("keygate-next-after").is_some());
    kg.terminate_cleanly().await;
}

#[tokio::test]
async fn bad_ranges_and_unknown_keys_are_clear_problems() {
    let files = usage_files("usage-errors", "").await;
    let kg = Process::start(&files.config).await;
    let api = Api::new(kg.admin, Some(READER_SECRET));
    let (from, to) = days();
    let field = |path: &str, field: &'static str| {
        let api = api.clone();
        let path = path.to_owned();
        async move {
            assert_field_problem(&api.get(&path).await, "invalid_field", field);
        }
    };
    field("/v1/keys/metered/usage?from=2026-02-30", "from").await;
    field("/v1/keys/metered/usage?to=yesterday", "to").await;
    field(
        &format!("/v1/keys/metered/usage?from={to}&to={from}"),
        "from",
    )
    .await;
    field("/v1/keys/metered/usage?from=2020-01-01&to=2026-01-01", "to").await;
    field(
        &format!(
            "/v1/keys/metered/usage?from={}&to={to}&granularity=hour",
            day_back(10)
        ),
        "to",
    )
    .await;
    field("/v1/keys/metered/usage?granularity=week", "granularity").await;
    field("/v1/keys/metered/usage?format=csv", "format").await;
    field("/v1/usage?limit=0", "limit").await;
    field("/v1/usage?colour=blue", "colour").await;
    for path in ["/v1/keys/nobody/usage", "/v1/consumers/nobody/usage"] {
        let resp = api.get(path).await;
        assert_eq!(resp.status, 404, "{}", resp.text());
        assert_eq!(resp.json()["code"], "not_found");
    }
    // Read-only endpoints: a write is 405 with the methods there are (admin role).
    let resp = kg.api().send("POST", "/v1/usage", None).await;
    assert_eq!(resp.status, 405);
    assert_eq!(resp.header("allow"), Some("GET"));
    // A known key never used: an empty answer, not an error.
    let empty = usage(kg.admin, "/v1/keys/static/usage", "").await;
    assert_eq!(empty["items"], serde_json::json!([]));
    assert_eq!(empty["total"]["requests"], 0);
    kg.terminate_cleanly().await;
}

#[tokio::test]
async fn counts_survive_a_restart_and_a_crash_loses_at_most_one_interval() {
    // Shutdown: an hour between flushes, so only the flush at shutdown can have written them.
    let files = usage_files("usage-restart", "flush_interval = \"1h\"").await;
    let path = files.dir.join("keys.usage.json");
    let kg = Process::start(&files.config).await;
    let (metered, _) = traffic(kg.proxy).await;
    kg.terminate_cleanly().await;
    assert!(path.exists(), "no usage file beside the keys file");
    let kg = Process::start(&files.config).await;
    let key = usage(kg.admin, "/v1/keys/metered/usage", "").await;
    metered.assert_counted(&key["total"]);

    // A crash: what was flushed survives. 200 ms between flushes; wait (bounded) until the
    // file has the new request, then SIGKILL.
    let files2 = usage_files("usage-crash", "flush_interval = \"200ms\"").await;
    let path2 = files2.dir.join("keys.usage.json");
    let kg2 = Process::start(&files2.config).await;
    let mut seen = Seen::default();
    seen.send(kg2.proxy, METERED, 200, "").await;
    poll(
        Duration::from_secs(10),
        "the usage file to have the request",
        async || {
            let text = std::fs::read_to_string(&path2).ok()?;
            text.contains("\"metered\"").then_some(())
        },
    )
    .await;
    kg2.kill().await;
    let kg2 = Process::start(&files2.config).await;
    let key = usage(kg2.admin, "/v1/keys/metered/usage", "").await;
    seen.assert_counted(&key["total"]);
    kg.terminate_cleanly().await;
    kg2.terminate_cleanly().await;
}

#[tokio::test]
async fn retention_drops_days_past_it_and_hours_past_48() {
    let files = usage_files(
        "usage-retention",
        "flush_interval = \"200ms\"\nretention = \"30d\"",
    )
    .await;
    let path = files.dir.join("keys.usage.json");
    let (old, kept) = (day_back(31), day_back(29));
    let row = r#"{"consumer":"acme","requests":7,"allowed":7,"denials":{},"responses":{"2xx":7},"bytes_in":0,"bytes_out":70}"#;
    let stale_hour = format!("{}T05:00:00Z", day_back(3));
    std::fs::write(
        &path,
        format!(
            r#"{{"version":1,"days":{{"{old}":{{"metered":{row}}},"{kept}":{{"metered":{row}}}}},"hours":{{"{stale_hour}":{{"metered":{row}}}}}}}"#
        ),
    )
    .unwrap();
    let kg = Process::start(&files.config).await;
    let api = Api::new(kg.admin, Some(READER_SECRET));
    let range = format!("from={}&to={}", day_back(40), day_back(0));
    let key = expect(
        &api.get(&format!("/v1/keys/metered/usage?{range}")).await,
        200,
    );
    let periods: Vec<&str> = key["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["period"].as_str().unwrap())
        .collect();
    assert_eq!(periods, [kept.as_str()]);
    assert_eq!(key["total"]["requests"], 7);
    let hours = expect(
        &api.get(&format!(
            "/v1/keys/metered/usage?from={}&to={}&granularity=hour",
            day_back(3),
            day_back(0)
        ))
        .await,
        200,
    );
    assert_eq!(hours["items"], serde_json::json!([]));
    // The file is rewritten without them at the next flush.
    poll(
        Duration::from_secs(10),
        "the old rows to leave the file",
        async || {
            let text = std::fs::read_to_string(&path).ok()?;
            (!text.contains(&old) && !text.contains(&stale_hour) && text.contains(&kept))
                .then_some(())
        },
    )
    .await;
    kg.terminate_cleanly().await;
}

#[tokio::test]
async fn usage_off_counts_nothing_and_says_so() {
    let files = usage_files("usage-off", "enabled = false").await;
    let kg = Process::start(&files.config).await;
    assert_eq!(call_path(kg.proxy, PROBE, METERED).await.status, 200);
    let resp = Api::new(kg.admin, Some(READER_SECRET))
        .get("/v1/keys/metered/usage")
        .await;
    assert_eq!(resp.status, 404, "{}", resp.text());
    assert_eq!(resp.json()["code"], "usage_disabled");
    kg.terminate_cleanly().await;
    assert!(!files.dir.join("keys.usage.json").exists());
}

#[tokio::test]
async fn a_fleet_sums_its_counts_in_redis() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let mut gates = Vec::new();
    let mut seen = Vec::new();
    for (name, n) in [("usage-fleet-a", 2), ("usage-fleet-b", 3)] {
        // An hour between flushes: only a read's own flush can have sent the counts.
        let files = usage_files(name, "flush_interval = \"1h\"").await;
        files.append_to_config(&format!("[cluster]\nredis = \"{}\"\n", redis.url()));
        let mut kg = Process::start(&files.config).await;
        kg.wait_log("the connection to Redis", |l| {
            l.contains("connected to Redis")
        })
        .await;
        let mut s = Seen::default();
        for _ in 0..n {
            assert_eq!(s.send(kg.proxy, FENCED, 200, "").await.status, 403);
        }
        seen.push(s);
        gates.push((kg, files));
    }
    // B's counts reach Redis when B is asked (its read sends them first); then A answers the
    // fleet's sum.
    let b = usage(gates[1].0.admin, "/v1/keys/fenced/usage", "").await;
    assert_eq!(b["scope"], "fleet");
    let a = usage(gates[0].0.admin, "/v1/keys/fenced/usage", "").await;
    assert_eq!(a["scope"], "fleet");
    assert_eq!(a["total"]["requests"], 5, "{a}");
    assert_eq!(a["total"]["denials"]["ip_not_allowed"], 5);
    let all = usage(gates[0].0.admin, "/v1/usage", "").await;
    let fenced: u64 = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["key_id"] == "fenced")
        .map(|r| r["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(fenced, 5);
    let consumer = usage(gates[1].0.admin, "/v1/consumers/acme/usage", "").await;
    assert_eq!(consumer["total"]["requests"], 5);
    let hourly = usage(
        gates[0].0.admin,
        "/v1/keys/fenced/usage",
        "&granularity=hour",
    )
    .await;
    assert_eq!(hourly["total"]["requests"], 5, "{hourly}");
    // Redis gone: each instance answers its own counts, and says so.
    redis.kill();
    let alone = usage(gates[0].0.admin, "/v1/keys/fenced/usage", "").await;
    assert_eq!(alone["scope"], "instance_fallback", "{alone}");
    assert_eq!(alone["total"]["requests"], 2);
    for (kg, _) in gates {
        kg.terminate_cleanly().await;
    }
}
