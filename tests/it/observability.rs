//! Metrics (`GET /metrics` on the admin listener and on `[metrics] listen`) and the access log
//! (`[log] access`, `format`), on the real binary: exact counts per label set after a known mix
//! of requests, bounded label cardinality whatever clients send, the config's state, and one
//! log line per request that names everything but the secret.
//!
//! The exposition text is parsed (name, labels, value) by a small parser here, so a count is
//! read from its exact series, never guessed from a substring.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use crate::harness::admin::*;
use crate::harness::live::{TempDir, key_toml, replace_file, server_toml, target_toml};
use crate::harness::*;

// ---------------------------------------------------------------------------------------------
// The exposition format
// ---------------------------------------------------------------------------------------------

/// A series' labels, sorted by name.
type Labels = Vec<(String, String)>;

/// One sample line: `name{label="value",...} value`.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: Labels,
    value: f64,
}

/// A parsed scrape: every sample, and each family's `# TYPE`.
#[derive(Debug)]
struct Exposition {
    samples: Vec<Sample>,
    types: BTreeMap<String, String>,
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    let mut l: Labels = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    l.sort();
    l
}

/// Parses the text exposition format; any line that is neither a comment nor a well-formed
/// sample fails the test.
fn parse_exposition(text: &str) -> Exposition {
    let mut samples = Vec::new();
    let mut types = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.split_whitespace();
            if words.next() == Some("TYPE") {
                let family = words.next().expect("a family in # TYPE");
                let kind = words.next().expect("a type in # TYPE");
                types.insert(family.to_owned(), kind.to_owned());
            }
            continue;
        }
        match parse_sample(line) {
            Ok(s) => samples.push(s),
            Err(e) => panic!("line {} of /metrics: {e}: {line:?}", n + 1),
        }
    }
    Exposition { samples, types }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    let valid_name = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    if !valid_name {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut pairs = BTreeMap::new();
    if let Some(mut r) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = r.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = r.find('=').ok_or("a label without '='")?;
            let key = &r[..eq];
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("bad label name {key:?}"));
            }
            r = r[eq + 1..]
                .strip_prefix('"')
                .ok_or("an unquoted label value")?;
            let mut value = String::new();
            let mut chars = r.char_indices();
            let end = loop {
                match chars.next() {
                    None => return Err("an unterminated label value".into()),
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c @ ('\\' | '"'))) => value.push(c),
                        other => return Err(format!("bad escape {other:?}")),
                    },
                    Some((_, c)) => value.push(c),
                }
            };
            r = &r[end + 1..];
            if pairs.insert(key.to_owned(), value).is_some() {
                return Err(format!("label {key:?} twice"));
            }
            if let Some(after) = r.strip_prefix(',') {
                r = after;
            } else if !r.starts_with('}') {
                return Err("labels not separated by ','".into());
            }
        }
    }
    let rest = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let mut words = rest.split(' ');
    let value = match words.next().ok_or("no value")? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse::<f64>().map_err(|e| format!("value {v:?}: {e}"))?,
    };
    // An optional timestamp, then nothing.
    let _timestamp = words.next();
    if words.next().is_some() {
        return Err("text after the value".into());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels: pairs.into_iter().collect(),
        value,
    })
}

impl Exposition {
    /// Every series of `name`, by labels.
    fn family(&self, name: &str) -> BTreeMap<Labels, f64> {
        let mut out = BTreeMap::new();
        for s in self.samples.iter().filter(|s| s.name == name) {
            assert!(
                out.insert(s.labels.clone(), s.value).is_none(),
                "series {name}{:?} twice",
                s.labels
            );
        }
        out
    }

    /// The value of exactly this series, if it exists.
    fn get(&self, name: &str, pairs: &[(&str, &str)]) -> Option<f64> {
        self.family(name).get(&labels(pairs)).copied()
    }

    /// The value of exactly this series; fails if it does not exist.
    #[track_caller]
    fn value(&self, name: &str, pairs: &[(&str, &str)]) -> f64 {
        self.get(name, pairs).unwrap_or_else(|| {
            panic!(
                "no series {name}{pairs:?}; the family has {:?}",
                self.family(name)
            )
        })
    }

    /// Asserts that `name` has exactly these series with exactly these values.
    #[track_caller]
    fn assert_family(&self, name: &str, want: &[(&[(&str, &str)], f64)]) {
        let want: BTreeMap<Labels, f64> = want.iter().map(|(l, v)| (labels(l), *v)).collect();
        assert_eq!(self.family(name), want, "series of {name}");
    }

    /// The sum of every series of `name`.
    fn total(&self, name: &str) -> f64 {
        self.family(name).values().sum()
    }
}

/// `GET /metrics` on `addr`, no key: must be 200 in the OpenMetrics text format that
/// Prometheus scrapes; returns it parsed.
async fn scrape(addr: SocketAddr) -> Exposition {
    let resp = get(addr, "/metrics", &[]).await;
    assert_eq!(resp.status, 200, "GET /metrics: {}", resp.text());
    let content_type = resp.header("content-type").unwrap_or("");
    assert_eq!(
        content_type, "application/openmetrics-text; version=1.0.0; charset=utf-8",
        "content-type of /metrics"
    );
    assert!(
        resp.text().ends_with("# EOF\n"),
        "OpenMetrics ends with # EOF"
    );
    parse_exposition(&resp.text())
}

/// Scrapes until `ready` holds (bounded), then returns that scrape.
async fn scrape_until(
    addr: SocketAddr,
    what: &str,
    ready: impl Fn(&Exposition) -> bool,
) -> Exposition {
    poll(Duration::from_secs(10), what, async || {
        let m = scrape(addr).await;
        ready(&m).then_some(m)
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Configs
// ---------------------------------------------------------------------------------------------

/// Key `limited`: 2 requests an hour, so the third is refused within any test's time.
const LIMITED_SECRET: &str = "kg_limited_bGltaXRlZFNlY3JldEZvck9ic2VydmFiaWxpdHkx";
/// Key `owned`, of the main-file consumer `house`.
const OWNED_SECRET: &str = "kg_owned_b3duZWRTZWNyZXRGb3JPYnNlcnZhYmlsaXR5VGVzdA";
/// A secret no key has.
const WRONG_SECRET: &str = "kg_wrong_d3JvbmdTZWNyZXRGb3JPYnNlcnZhYmlsaXR5VGVzdDE";
/// Another key, added by a reload.
const LATER_SECRET: &str = "kg_later_bGF0ZXJTZWNyZXRGb3JPYnNlcnZhYmlsaXR5VGVzdDE";

/// A host that no target lists: with target `main` bound to [`HOST`], a request for it outside
/// `/other` has no route.
const NOWHERE: &str = "nowhere.test";

/// [`Files`] for the binary (admin API on), target `main` bound to [`HOST`] with `main_lines`,
/// and the keys `limited` (2/hour) and `owned` (consumer `house`) beside `static`.
async fn files(name: &str, server_lines: &str, main_lines: &str) -> Files {
    let files = Files::for_binary_with(name, server_lines, None).await;
    files.add_to_target("main", &format!("hosts = [\"{HOST}\"]\n{main_lines}"));
    files.append_to_config(&key_toml(
        "limited",
        LIMITED_SECRET,
        "rate_limit = \"2/hour\"",
    ));
    files.append_to_config(&key_toml("owned", OWNED_SECRET, "consumer = \"house\""));
    files
}

/// A request on a fresh HTTP/1.1 connection.
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: TestBody,
) -> Resp {
    H1::connect(addr)
        .await
        .send(request(method, path, headers, body))
        .await
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

/// After a known mix of requests, `/metrics` on the admin listener (no key) counts each by
/// target, method class and status, denials by code, rate limits by key, latencies per target
/// and body bytes per target, exactly; and the config's state (keys, consumers, targets).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_known_mix_of_requests_exactly() {
    let files = files("metrics-mix", "", "max_body = \"1KB\"").await;
    let kg = Process::start(&files.config).await;
    let p = kg.proxy;
    // Response body bytes per target, as the clients received them.
    let mut bytes_out: BTreeMap<&str, u64> = BTreeMap::new();
    let mut record = |target: &'static str, resp: &Resp| {
        *bytes_out.entry(target).or_default() += resp.body.len() as u64;
    };

    for _ in 0..3 {
        let r = call(p, STATIC_SECRET).await;
        assert_eq!(r.status, 200, "{}", r.text());
        record("main", &r);
    }
    let r = send(
        p,
        "POST",
        PROBE,
        &[("x-api-key", STATIC_SECRET)],
        full(pattern(0, 100)),
    )
    .await;
    assert_eq!(r.echo().body_len, 100);
    record("main", &r);
    let r = get(p, PROBE, &[]).await;
    assert_problem(&r, 403, "key_missing");
    record("main", &r);
    let r = call(p, WRONG_SECRET).await;
    assert_problem(&r, 403, "key_invalid");
    record("main", &r);
    let r = get(p, "/x", &[("host", NOWHERE), ("x-api-key", STATIC_SECRET)]).await;
    assert_problem(&r, 404, "no_route");
    record("", &r);
    for _ in 0..2 {
        let r = call(p, LIMITED_SECRET).await;
        assert_eq!(r.status, 200, "{}", r.text());
        record("main", &r);
    }
    let r = call(p, LIMITED_SECRET).await;
    assert_problem(&r, 429, "rate_limited");
    record("main", &r);
    let r = send(
        p,
        "POST",
        PROBE,
        &[("x-api-key", STATIC_SECRET)],
        full(pattern(0, 2000)),
    )
    .await;
    assert_problem(&r, 413, "body_too_large");
    record("main", &r);
    // Target `other` takes any host on /other; `main`, bound to its host, wins on that host.
    let r = get(
        p,
        OTHER_PATH,
        &[("host", NOWHERE), ("x-api-key", STATIC_SECRET)],
    )
    .await;
    assert_eq!(r.echo().uri, OTHER_PATH);
    record("other", &r);
    assert_eq!(files.up.hits(), 7, "requests that reached the upstream");

    // A request is counted when its response body is done: wait (bounded) for the last one.
    let m = scrape_until(kg.admin, "all 12 requests to be counted", |m| {
        m.total("keygate_requests_total") == 12.0
            && m.get("keygate_requests_in_flight", &[]) == Some(0.0)
    })
    .await;
    m.assert_family(
        "keygate_requests_total",
        &[
            (
                &[("target", "main"), ("method", "GET"), ("status", "200")],
                5.0,
            ),
            (
                &[("target", "main"), ("method", "POST"), ("status", "200")],
                1.0,
            ),
            (
                &[("target", "main"), ("method", "GET"), ("status", "403")],
                2.0,
            ),
            (&[("target", ""), ("method", "GET"), ("status", "404")], 1.0),
            (
                &[("target", "main"), ("method", "GET"), ("status", "429")],
                1.0,
            ),
            (
                &[("target", "main"), ("method", "POST"), ("status", "413")],
                1.0,
            ),
            (
                &[("target", "other"), ("method", "GET"), ("status", "200")],
                1.0,
            ),
        ],
    );
    m.assert_family(
        "keygate_denials_total",
        &[
            (&[("code", "key_missing")], 1.0),
            (&[("code", "key_invalid")], 1.0),
            (&[("code", "no_route")], 1.0),
            (&[("code", "rate_limited")], 1.0),
            (&[("code", "body_too_large")], 1.0),
        ],
    );
    m.assert_family(
        "keygate_rate_limited_total",
        &[(&[("key_id", "limited")], 1.0)],
    );
    // Only requests the upstream answered have an upstream latency.
    m.assert_family(
        "keygate_upstream_latency_seconds_count",
        &[(&[("target", "main")], 6.0), (&[("target", "other")], 1.0)],
    );
    m.assert_family(
        "keygate_request_duration_seconds_count",
        &[
            (&[("target", "main")], 10.0),
            (&[("target", "")], 1.0),
            (&[("target", "other")], 1.0),
        ],
    );
    // The +Inf bucket holds every observation; the sum is positive.
    for target in ["main", "other", ""] {
        let count = m.value(
            "keygate_request_duration_seconds_count",
            &[("target", target)],
        );
        let inf = m.value(
            "keygate_request_duration_seconds_bucket",
            &[("target", target), ("le", "+Inf")],
        );
        assert_eq!(inf, count, "+Inf bucket of {target:?}");
        assert!(
            m.value(
                "keygate_request_duration_seconds_sum",
                &[("target", target)]
            ) > 0.0
        );
    }
    // Only the 100-byte POST sent a body upstream: the 2000-byte one was refused on its head.
    m.assert_family(
        "keygate_request_body_bytes_total",
        &[(&[("target", "main")], 100.0)],
    );
    let want_out: Vec<(Vec<(&str, &str)>, f64)> = bytes_out
        .iter()
        .map(|(t, n)| (vec![("target", *t)], *n as f64))
        .collect();
    let want_out: Vec<(&[(&str, &str)], f64)> =
        want_out.iter().map(|(l, n)| (l.as_slice(), *n)).collect();
    m.assert_family("keygate_response_body_bytes_total", &want_out);

    assert_eq!(m.value("keygate_requests_in_flight", &[]), 0.0);
    assert_eq!(
        m.value("keygate_keys_loaded", &[]),
        3.0,
        "static, limited, owned"
    );
    assert_eq!(m.value("keygate_consumers_loaded", &[]), 2.0, "house, acme");
    assert_eq!(m.value("keygate_targets_loaded", &[]), 2.0);
    assert_eq!(m.value("keygate_config_generation", &[]), 1.0);
    assert_eq!(m.value("keygate_config_last_reload_success", &[]), 1.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let loaded_at = m.value("keygate_config_last_reload_timestamp_seconds", &[]);
    assert!(
        loaded_at > now - 120.0 && loaded_at <= now + 1.0,
        "last reload at {loaded_at}, now {now}"
    );
    for (family, kind) in [
        ("keygate_requests", "counter"),
        ("keygate_denials", "counter"),
        ("keygate_rate_limited", "counter"),
        ("keygate_upstream_latency_seconds", "histogram"),
        ("keygate_request_duration_seconds", "histogram"),
        ("keygate_request_body_bytes", "counter"),
        ("keygate_response_body_bytes", "counter"),
        ("keygate_requests_in_flight", "gauge"),
        ("keygate_open_connections", "gauge"),
        ("keygate_config_generation", "gauge"),
        ("keygate_keys_loaded", "gauge"),
    ] {
        assert_eq!(
            m.types.get(family).map(String::as_str),
            Some(kind),
            "# TYPE of {family}"
        );
    }
    // The scrapes themselves are not proxy requests.
    let again = scrape(kg.admin).await;
    assert_eq!(again.total("keygate_requests_total"), 12.0);
    kg.terminate_cleanly().await;
}

/// The config's state follows reloads: a good edit bumps `config_generation` and the key
/// count; a broken edit sets `config_last_reload_success` to 0 (the generation and keys stay),
/// and fixing it sets it back to 1 with the next generation. Request counters survive reloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_reloads_and_a_failed_reload() {
    let files = files("metrics-reload", "", "").await;
    let kg = Process::start(&files.config).await;
    assert_eq!(call(kg.proxy, STATIC_SECRET).await.status, 200);
    let m = scrape_until(kg.admin, "the first request counted", |m| {
        m.total("keygate_requests_total") == 1.0
    })
    .await;
    assert_eq!(m.value("keygate_config_generation", &[]), 1.0);
    assert_eq!(m.value("keygate_keys_loaded", &[]), 3.0);
    assert_eq!(m.value("keygate_config_last_reload_success", &[]), 1.0);
    let first_at = m.value("keygate_config_last_reload_timestamp_seconds", &[]);

    let good = std::fs::read_to_string(&files.config).unwrap();
    let added = format!("{good}\n{}", key_toml("later", LATER_SECRET, ""));
    replace_file(&files.config, added.as_bytes());
    let m = scrape_until(kg.admin, "generation 2 with 4 keys", |m| {
        m.get("keygate_config_generation", &[]) == Some(2.0)
            && m.get("keygate_keys_loaded", &[]) == Some(4.0)
    })
    .await;
    assert_eq!(m.value("keygate_config_last_reload_success", &[]), 1.0);
    let second_at = m.value("keygate_config_last_reload_timestamp_seconds", &[]);
    assert!(second_at > first_at, "{second_at} after {first_at}");

    let broken = format!("{added}\n[[targets]]\nname = \"half\"\n");
    replace_file(&files.config, broken.as_bytes());
    let m = scrape_until(kg.admin, "the failed reload to show", |m| {
        m.get("keygate_config_last_reload_success", &[]) == Some(0.0)
    })
    .await;
    assert_eq!(
        m.value("keygate_config_generation", &[]),
        2.0,
        "still serving 2"
    );
    assert_eq!(m.value("keygate_keys_loaded", &[]), 4.0);
    let failed_at = m.value("keygate_config_last_reload_timestamp_seconds", &[]);
    assert!(failed_at > second_at, "{failed_at} after {second_at}");
    assert_eq!(call(kg.proxy, LATER_SECRET).await.status, 200);

    replace_file(&files.config, good.as_bytes());
    let m = scrape_until(kg.admin, "the fixed config to load", |m| {
        m.get("keygate_config_last_reload_success", &[]) == Some(1.0)
    })
    .await;
    assert_eq!(m.value("keygate_config_generation", &[]), 3.0);
    assert_eq!(m.value("keygate_keys_loaded", &[]), 3.0);
    let m = scrape_until(kg.admin, "both requests counted", |m| {
        m.total("keygate_requests_total") == 2.0
    })
    .await;
    assert_eq!(
        m.value(
            "keygate_requests_total",
            &[("target", "main"), ("method", "GET"), ("status", "200")]
        ),
        2.0
    );
    kg.terminate_cleanly().await;
}

/// `open_connections` counts client connections held open (with or without a request), and
/// `requests_in_flight` is 1 exactly while a request waits at the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_gauges_show_open_connections_and_requests_in_flight() {
    let mut up = held_upstream().await;
    let files = Files::for_binary_with("metrics-gauges", "", Some(up.addr)).await;
    let kg = Process::start(&files.config).await;
    let gauge =
        |name: &'static str, want: f64| move |m: &Exposition| m.get(name, &[]) == Some(want);
    scrape_until(
        kg.admin,
        "no connection yet",
        gauge("keygate_open_connections", 0.0),
    )
    .await;

    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(Raw::connect(kg.proxy).await);
    }
    let m = scrape_until(
        kg.admin,
        "3 open connections",
        gauge("keygate_open_connections", 3.0),
    )
    .await;
    assert_eq!(m.value("keygate_requests_in_flight", &[]), 0.0);

    let proxy = kg.proxy;
    let in_flight = tokio::spawn(async move {
        let mut h1 = H1::connect(proxy).await;
        let resp = h1
            .send(request(
                "GET",
                "/slow",
                &[("x-api-key", STATIC_SECRET)],
                empty(),
            ))
            .await;
        (resp, h1)
    });
    let release = within("the request reaches the upstream", up.arrived.recv())
        .await
        .unwrap();
    let m = scrape_until(
        kg.admin,
        "one request in flight",
        gauge("keygate_requests_in_flight", 1.0),
    )
    .await;
    assert_eq!(m.value("keygate_open_connections", &[]), 4.0);
    // Still 1 a moment later: it is the held request, not a passing one.
    assert_eq!(
        scrape(kg.admin)
            .await
            .value("keygate_requests_in_flight", &[]),
        1.0
    );
    let _ = release.send(());
    let (resp, h1) = within("the held answer", in_flight).await.unwrap();
    assert_eq!(resp.text(), "slow-done");
    scrape_until(
        kg.admin,
        "no request in flight",
        gauge("keygate_requests_in_flight", 0.0),
    )
    .await;
    let m = scrape(kg.admin).await;
    assert_eq!(m.value("keygate_open_connections", &[]), 4.0, "keep-alive");

    drop(h1);
    drop(held);
    scrape_until(
        kg.admin,
        "every connection closed",
        gauge("keygate_open_connections", 0.0),
    )
    .await;
    kg.terminate_cleanly().await;
}

/// Random paths, invented methods, random hosts, random wrong keys, junk headers and
/// malformed requests create no series beyond the bounded ones that the first request of each
/// kind created, and no label value ever holds what a client sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_label_values_never_come_from_the_client() {
    let files = files("metrics-cardinality", "", "").await;
    let kg = Process::start(&files.config).await;
    let p = kg.proxy;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    // Every string a client invents contains its token.
    let token = |i: usize| format!("zq{i}x{nanos:08x}");
    let mut tokens = Vec::new();
    let mut sent = 0.0;
    // One request of kind `i % 6`, with strings of its own.
    let one = async |i: usize| {
        let t = token(i);
        let path = format!("/{t}/p?{t}={t}");
        let host = format!("{t}.example");
        let method = format!("M{}", t.to_uppercase());
        let wrong = format!("kg_{t}");
        let junk = format!("{t}-junk");
        let resp = match i % 6 {
            0 => send(p, &method, &path, &[("x-api-key", STATIC_SECRET)], empty()).await,
            1 => send(p, "GET", &path, &[("host", &host)], empty()).await,
            2 => send(p, "GET", &path, &[(junk.as_str(), junk.as_str())], empty()).await,
            3 => {
                send(
                    p,
                    &method,
                    &path,
                    &[("host", &host), ("user-agent", &junk)],
                    empty(),
                )
                .await
            }
            4 => {
                let headers = [
                    ("x-api-key", STATIC_SECRET),
                    ("x-forwarded-for", "203.0.113.9"),
                    ("x-request-id", junk.as_str()),
                ];
                send(p, "GET", &path, &headers, empty()).await
            }
            _ => send(p, "GET", &path, &[("x-api-key", wrong.as_str())], empty()).await,
        };
        let want = [200, 404, 403, 404, 200, 403][i % 6];
        assert_eq!(resp.status, want, "kind {}: {}", i % 6, resp.text());
        t
    };
    for i in 0..6 {
        tokens.push(one(i).await);
        sent += 1.0;
    }
    let before = scrape_until(kg.admin, "the first 6 requests counted", |m| {
        m.total("keygate_requests_total") == sent
    })
    .await;
    for i in 6..56 {
        tokens.push(one(i).await);
        sent += 1.0;
    }
    // Malformed requests never reach the request path at all.
    for i in 0..5 {
        let t = token(1000 + i);
        let mut raw = Raw::connect(p).await;
        raw.write(format!("{t} /{t} HTTP/1.1\r\nHost {t}\r\n\r\n").as_bytes())
            .await;
        tokens.push(t);
    }
    let after = scrape_until(kg.admin, "all 56 requests counted", |m| {
        m.total("keygate_requests_total") == sent
    })
    .await;

    let series = |m: &Exposition| {
        let mut s: Vec<(String, Labels)> = m
            .samples
            .iter()
            .map(|s| (s.name.clone(), s.labels.clone()))
            .collect();
        s.sort();
        s
    };
    assert_eq!(
        series(&after),
        series(&before),
        "50 more requests of the same kinds created series"
    );
    for s in &after.samples {
        for (k, v) in &s.labels {
            assert!(
                !tokens.iter().any(|t| v.contains(t.as_str()))
                    && !v.to_ascii_lowercase().contains(&format!("{nanos:08x}")),
                "a client's string became a label: {}{{{k}={v:?}}}",
                s.name
            );
        }
    }
    after.assert_family(
        "keygate_requests_total",
        &[
            (
                &[("target", "main"), ("method", "OTHER"), ("status", "200")],
                10.0,
            ),
            (
                &[("target", ""), ("method", "GET"), ("status", "404")],
                10.0,
            ),
            (
                &[("target", "main"), ("method", "GET"), ("status", "403")],
                18.0,
            ),
            (
                &[("target", ""), ("method", "OTHER"), ("status", "404")],
                9.0,
            ),
            (
                &[("target", "main"), ("method", "GET"), ("status", "200")],
                9.0,
            ),
        ],
    );
    kg.terminate_cleanly().await;
}

/// With the admin API off, `[metrics] listen` serves `/metrics` (and nothing else) on its own
/// port; the proxy's port never serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listen_serves_only_metrics_when_the_admin_api_is_off() {
    let up = start_upstream("main").await;
    let dir = TempDir::new("metrics-listen");
    let config = dir.join("keygate.toml");
    // Port 0, read from the log: a port picked free beforehand could be taken by another test.
    std::fs::write(
        &config,
        format!(
            "{}{}{}[metrics]\nlisten = \"127.0.0.1:0\"\n",
            server_toml("127.0.0.1:0", ""),
            target_toml("main", &format!("http://{}", up.addr), ""),
            key_toml("static", STATIC_SECRET, ""),
        ),
    )
    .unwrap();
    let mut kg = Process::start_proxy(&config).await;
    let line = kg
        .wait_log("the metrics listening line", |l| {
            l.contains("metrics listening")
        })
        .await;
    let metrics = logged_addr(&line);
    assert!(metrics.ip().is_loopback() && metrics.port() != 0, "{line}");
    assert!(!kg.log().iter().any(|l| l.contains("admin API listening")));

    assert_eq!(call(kg.proxy, STATIC_SECRET).await.status, 200);
    let m = scrape_until(metrics, "the request counted", |m| {
        m.total("keygate_requests_total") == 1.0
    })
    .await;
    assert_eq!(
        m.value(
            "keygate_requests_total",
            &[("target", "main"), ("method", "GET"), ("status", "200")]
        ),
        1.0
    );
    assert_eq!(m.value("keygate_keys_loaded", &[]), 1.0);

    for path in [
        "/",
        "/healthz",
        "/readyz",
        "/v1/keys",
        "/metrics/x",
        "/metricsx",
    ] {
        let r = get(metrics, path, &[]).await;
        assert_eq!(r.status, 404, "{path} on the metrics listener");
    }
    let r = send(metrics, "POST", "/metrics", &[], empty()).await;
    assert_eq!(r.status, 404, "POST /metrics");
    // On the proxy's port, /metrics is just a path of target `main`, which needs a key.
    assert_problem(&get(kg.proxy, "/metrics", &[]).await, 403, "key_missing");
    let _ = kg.stop().await;
}

/// `[log] format` and `[metrics] listen` are checked at load, naming the key and the value.
#[test]
fn bad_log_format_and_metrics_listen_are_refused_naming_the_key() {
    for (toml, key, value) in [
        ("[log]\nformat = \"xml\"\n", "format", "xml"),
        ("[log]\naccess = \"\"\n", "access", ""),
        ("[metrics]\nlisten = \"nope\"\n", "listen", "nope"),
    ] {
        let dir = TempDir::new("bad-observability");
        let config = dir.join("keygate.toml");
        let text = format!(
            "{}{}{toml}",
            server_toml("127.0.0.1:0", ""),
            target_toml("main", "http://127.0.0.1:9", ""),
        );
        let bad = toml.lines().nth(1).unwrap();
        let line = text.lines().position(|l| l == bad).unwrap() + 1;
        std::fs::write(&config, &text).unwrap();
        let err = match launch::load(&config) {
            Ok(_) => panic!("loaded with {toml:?}"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(&format!("keygate.toml:{line}:")), "{err}");
        assert!(err.contains(&format!("{key}:")), "{err}");
        assert!(
            err.contains(&format!("\"{value}\"")) || value.is_empty(),
            "{err}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The access log
// ---------------------------------------------------------------------------------------------

/// Fails if any of these secrets, whole or without its `kg_<id>_` prefix, is in `lines`.
#[track_caller]
fn assert_no_secret_in(what: &str, lines: &[String], secrets: &[&str]) {
    for secret in secrets {
        let body = secret.splitn(3, '_').nth(2).unwrap();
        for line in lines {
            assert!(
                !line.contains(secret) && !line.contains(body),
                "a secret is in {what}: {line}"
            );
        }
    }
}

/// Parses every line as one JSON object; returns them by `request_id`.
#[track_caller]
fn json_lines(lines: &[String]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for line in lines {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("an access log line is not JSON ({e}): {line}"));
        let id = v["request_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no request_id: {line}"))
            .to_owned();
        assert!(out.insert(id, v).is_none(), "two lines for one request");
    }
    out
}

/// The JSON access log on stdout: one line per request with every field, the credential in a
/// query string redacted; no secret (right or wrong) in stdout or stderr even at
/// `KEYGATE_LOG=trace`, over HTTP/1.1 and HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_json_on_stdout_has_every_field_and_never_the_secret() {
    let files = files("access-json", "", "").await;
    let kg = Process::start_with(&files.config, "trace", true).await;
    let p = kg.proxy;
    let id = |name: &str| ("x-request-id", name.to_owned());
    let with = |req_id: &str, key: Option<(&'static str, &'static str)>| {
        let mut h = vec![id(req_id)];
        if let Some((k, v)) = key {
            h.push((k, v.to_owned()));
        }
        h
    };
    let go = async |method: &str, path: &str, h: Vec<(&'static str, String)>, body: TestBody| {
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        send(p, method, path, &h, body).await
    };

    let query = format!("/live/a?x=1&api_key={OWNED_SECRET}&y=2");
    let r_query = go("GET", &query, with("r-query", None), empty()).await;
    assert_eq!(r_query.echo().one("x-keygate-key-id"), Some("owned"));
    let r_post = go(
        "POST",
        PROBE,
        with("r-post", Some(("x-api-key", STATIC_SECRET))),
        full(pattern(0, 300)),
    )
    .await;
    assert_eq!(r_post.echo().body_len, 300);
    let r_missing = go("GET", PROBE, with("r-missing", None), empty()).await;
    assert_problem(&r_missing, 403, "key_missing");
    let wrong = format!("{PROBE}?api_key={WRONG_SECRET}");
    let r_wrong = go("GET", &wrong, with("r-wrong", None), empty()).await;
    assert_problem(&r_wrong, 403, "key_invalid");
    let mut h = with("r-noroute", Some(("x-api-key", LIMITED_SECRET)));
    h.push(("host", NOWHERE.to_owned()));
    let r_noroute = go("GET", "/x", h, empty()).await;
    assert_problem(&r_noroute, 404, "no_route");
    let mut h2 = H2::connect(p).await;
    let r_h2 = h2
        .send(h2_request(
            "DELETE",
            HOST,
            "/live/h2",
            &[("x-api-key", LIMITED_SECRET), ("x-request-id", "r-h2")],
            empty(),
        ))
        .await;
    assert_eq!(r_h2.echo().method, "DELETE");

    let lines = poll(Duration::from_secs(10), "6 access log lines", async || {
        let out = kg.stdout();
        (out.len() >= 6).then_some(out)
    })
    .await;
    let log = json_lines(&lines);
    assert_eq!(log.len(), 6, "{lines:#?}");

    let q = &log["r-query"];
    assert_eq!(q["method"], "GET");
    assert_eq!(q["host"], HOST);
    assert_eq!(q["path"], "/live/a?x=1&api_key=REDACTED&y=2");
    assert_eq!(q["target"], "main");
    assert_eq!(q["key_id"], "owned");
    assert_eq!(q["consumer"], "house");
    assert_eq!(q["status"], 200);
    assert_eq!(q["client_ip"], "127.0.0.1");
    assert_eq!(q["bytes_in"], 0);
    assert_eq!(q["bytes_out"], r_query.body.len() as u64);
    assert!(q["bytes_out"].as_u64().unwrap() > 0);
    assert!(q.get("code").is_none_or(Value::is_null), "{q}");
    let upstream_ms = q["upstream_ms"].as_f64().expect("upstream_ms");
    let total_ms = q["total_ms"].as_f64().expect("total_ms");
    assert!(upstream_ms > 0.0 && total_ms >= upstream_ms, "{q}");
    let time = q["time"].as_str().expect("time");
    time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("time {time:?}: {e}"));

    let post = &log["r-post"];
    assert_eq!(post["method"], "POST");
    assert_eq!(post["path"], PROBE);
    assert_eq!(post["key_id"], STATIC_ID);
    assert!(post.get("consumer").is_none_or(Value::is_null), "{post}");
    assert_eq!(post["bytes_in"], 300);
    assert_eq!(post["bytes_out"], r_post.body.len() as u64);

    for (id, code, resp) in [
        ("r-missing", "key_missing", &r_missing),
        ("r-wrong", "key_invalid", &r_wrong),
    ] {
        let l = &log[id];
        assert_eq!(l["status"], 403, "{l}");
        assert_eq!(l["code"], code, "{l}");
        assert_eq!(l["target"], "main", "{l}");
        assert_eq!(l["client_ip"], "127.0.0.1", "{l}");
        assert!(l.get("key_id").is_none_or(Value::is_null), "{l}");
        assert!(l.get("upstream_ms").is_none_or(Value::is_null), "{l}");
        assert!(l["total_ms"].as_f64().is_some(), "{l}");
        assert_eq!(l["bytes_out"], resp.body.len() as u64, "{l}");
    }
    assert_eq!(log["r-wrong"]["path"], format!("{PROBE}?api_key=REDACTED"));

    let nr = &log["r-noroute"];
    assert_eq!(nr["status"], 404);
    assert_eq!(nr["code"], "no_route");
    assert_eq!(nr["host"], NOWHERE);
    assert!(nr.get("target").is_none_or(Value::is_null), "{nr}");
    assert_eq!(nr["client_ip"], "127.0.0.1", "{nr}");

    let l = &log["r-h2"];
    assert_eq!(l["method"], "DELETE");
    assert_eq!(l["path"], "/live/h2");
    assert_eq!(l["key_id"], "limited");
    assert_eq!(l["status"], 200);
    assert_eq!(l["host"], HOST);

    drop(h2);
    let (status, stderr, stdout) = kg.terminate_drained().await;
    assert!(status.success(), "{stderr:#?}");
    assert_eq!(
        stdout.len(),
        6,
        "stdout holds the access log only: {stdout:#?}"
    );
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("TRACE") || l.contains("DEBUG")),
        "the diagnostic log was not at trace level"
    );
    let secrets = [OWNED_SECRET, STATIC_SECRET, WRONG_SECRET, LIMITED_SECRET];
    assert_no_secret_in("stdout", &stdout, &secrets);
    assert_no_secret_in("stderr", &stderr, &secrets);
}

/// `access = PATH` with `format = "text"`: one non-JSON `key=value` line per request in the
/// file (none on stdout), and the line of a request answered during the shutdown drain is in
/// the file once the process has exited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_text_to_a_file_is_flushed_at_shutdown() {
    let mut up = held_upstream().await;
    let files = files("access-file", "shutdown_timeout = \"10s\"", "").await;
    let text = std::fs::read_to_string(&files.config).unwrap();
    let other = format!("name = \"other\"\nupstream = \"http://{}\"", files.up.addr);
    assert!(text.contains(&other));
    let text = text.replace(
        &other,
        &format!("name = \"other\"\nupstream = \"http://{}\"", up.addr),
    );
    std::fs::write(&files.config, text).unwrap();
    files.append_to_config("[log]\naccess = \"logs-access.txt\"\nformat = \"text\"\n");
    let access = files.dir.join("logs-access.txt");
    let kg = Process::start_with(&files.config, "info", true).await;
    let p = kg.proxy;

    for _ in 0..20 {
        assert_eq!(call(p, STATIC_SECRET).await.status, 200);
    }
    let query = format!("/live/t?x=1&api_key={OWNED_SECRET}");
    assert_eq!(
        get(p, &query, &[("x-request-id", "t-query")]).await.status,
        200
    );
    let wrong = format!("{PROBE}?api_key={WRONG_SECRET}");
    let r_wrong = get(p, &wrong, &[("x-request-id", "t-wrong")]).await;
    assert_problem(&r_wrong, 403, "key_invalid");
    let slow = tokio::spawn(async move {
        get(
            p,
            "/other/slow",
            &[("host", NOWHERE), ("x-api-key", STATIC_SECRET)],
        )
        .await
    });
    let release = within("the request reaches the upstream", up.arrived.recv())
        .await
        .unwrap();
    // Released once the shutdown has begun (the proxy refuses connections).
    let releaser = tokio::spawn(async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(p).await.is_ok() {
            assert!(std::time::Instant::now() < deadline, "still accepting");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = release.send(());
    });
    let (status, stderr, stdout) = kg.terminate_drained().await;
    assert!(status.success(), "{stderr:#?}");
    releaser.await.unwrap();
    let resp = within("the drained answer", slow).await.unwrap();
    assert_eq!(resp.text(), "slow-done");
    assert!(
        stdout.is_empty(),
        "the access log went to stdout: {stdout:#?}"
    );

    let written = std::fs::read_to_string(&access).expect("the access log file");
    let lines: Vec<&str> = written.lines().collect();
    assert_eq!(lines.len(), 23, "{written}");
    for line in &lines {
        assert!(
            serde_json::from_str::<Value>(line).is_err(),
            "a JSON line: {line}"
        );
    }
    // Each worker writes its own buffer: lines are in time order per worker, not across them.
    let calls: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains(&format!(" path=\"{PROBE}\" ")))
        .collect();
    assert_eq!(calls.len(), 20, "{written}");
    for line in calls {
        assert!(line.contains("status=200"), "{line}");
        assert!(
            line.contains("key_id=") && line.contains("static"),
            "{line}"
        );
    }
    // Every field of the JSON format is in the text one too (strings quoted), with the secret
    // redacted.
    let by_id = |id: &str| {
        *lines
            .iter()
            .find(|l| l.contains(&format!(" request_id=\"{id}\" ")))
            .unwrap_or_else(|| panic!("no line for {id}: {written}"))
    };
    let q = by_id("t-query");
    assert!(q.starts_with("time=20"), "{q}");
    for field in [
        "client_ip=127.0.0.1".to_owned(),
        "method=\"GET\"".to_owned(),
        format!("host=\"{HOST}\""),
        "path=\"/live/t?x=1&api_key=REDACTED\"".to_owned(),
        "target=\"main\"".to_owned(),
        "key_id=\"owned\"".to_owned(),
        "consumer=\"house\"".to_owned(),
        "status=200".to_owned(),
        "upstream_ms=".to_owned(),
        "total_ms=".to_owned(),
        "bytes_in=0".to_owned(),
        "bytes_out=".to_owned(),
    ] {
        assert!(q.contains(&field), "{field} missing: {q}");
    }
    let w = by_id("t-wrong");
    for field in [
        "status=403",
        "code=\"key_invalid\"",
        "api_key=REDACTED",
        "total_ms=",
    ] {
        assert!(w.contains(field), "{field} missing: {w}");
    }
    assert!(!w.contains("key_id="), "{w}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("path=\"/other/slow\"") && l.contains("target=\"other\"")),
        "the drained request is not logged: {written}"
    );
    assert_no_secret_in(
        "the access log",
        &[written],
        &[STATIC_SECRET, OWNED_SECRET, WRONG_SECRET],
    );
}

/// `access = "off"` writes no line anywhere; the default (no `[log]`) writes to stdout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_off_writes_nothing() {
    let off = files("access-off", "", "").await;
    off.append_to_config("[log]\naccess = \"off\"\n");
    let kg = Process::start_with(&off.config, "info", true).await;
    for _ in 0..3 {
        assert_eq!(call(kg.proxy, STATIC_SECRET).await.status, 200);
    }
    assert_problem(&get(kg.proxy, PROBE, &[]).await, 403, "key_missing");
    let (status, stderr, stdout) = kg.terminate_drained().await;
    assert!(status.success(), "{stderr:#?}");
    assert!(stdout.is_empty(), "{stdout:#?}");
    assert!(
        !stderr
            .iter()
            .any(|l| l.contains("status=") || l.contains("\"status\"")),
        "access lines on stderr: {stderr:#?}"
    );
    let entries = off.dir_entries();
    assert!(
        entries.iter().all(|e| !e.contains("access") && e != "off"),
        "{entries:?}"
    );

    let default = files("access-default", "", "").await;
    let kg = Process::start_with(&default.config, "info", true).await;
    assert_eq!(call(kg.proxy, STATIC_SECRET).await.status, 200);
    let (status, _, stdout) = kg.terminate_drained().await;
    assert!(status.success());
    assert_eq!(json_lines(&stdout).len(), 1, "{stdout:#?}");
}

/// The access log is buffered per worker (like nginx's `buffer=64k flush=1s`): a quiet
/// gateway still writes its lines within about a second, without a shutdown or a full buffer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_reach_the_file_within_a_second_or_two_when_quiet() {
    let files = files("access-quiet", "", "").await;
    files.append_to_config("[log]\naccess = \"quiet-access.log\"\n");
    let access = files.dir.join("quiet-access.log");
    let kg = Process::start_with(&files.config, "info", true).await;
    for i in 0..3 {
        let id = format!("q-{i}");
        let r = get(
            kg.proxy,
            PROBE,
            &[("x-api-key", STATIC_SECRET), ("x-request-id", &id)],
        )
        .await;
        assert_eq!(r.status, 200);
    }
    let answered = std::time::Instant::now();
    let lines = poll(
        Duration::from_secs(5),
        "3 lines in the access log",
        async || {
            let text = std::fs::read_to_string(&access).unwrap_or_default();
            let lines: Vec<String> = text.lines().map(str::to_owned).collect();
            (lines.len() >= 3).then_some(lines)
        },
    )
    .await;
    let took = answered.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "the lines took {took:?} to reach the file"
    );
    let log = json_lines(&lines);
    assert_eq!(
        log.keys().collect::<Vec<_>>(),
        ["q-0", "q-1", "q-2"],
        "{lines:#?}"
    );
    kg.terminate_cleanly().await;
}

/// Many connections at once, spread over the workers, each request with a long path: every
/// line is one whole JSON object (no two workers' lines interleaved, though each fills and
/// writes its buffer many times), and a SIGTERM right after the last answer, well within the
/// flush interval, still finds every line in the file once keygate has exited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_stay_whole_across_workers_and_all_survive_a_graceful_stop() {
    const CONNS: usize = 24;
    const PER_CONN: usize = 60;
    let files = files("access-many", "", "").await;
    files.append_to_config("[log]\naccess = \"many-access.log\"\n");
    let access = files.dir.join("many-access.log");
    let kg = Process::start_with(&files.config, "info", true).await;
    let p = kg.proxy;
    // About 1.1 KB a line: the run writes some 1.6 MB, many full buffers per worker.
    let long = format!("{PROBE}/{}", "x".repeat(900));
    let mut tasks = Vec::new();
    for c in 0..CONNS {
        let long = long.clone();
        tasks.push(tokio::spawn(async move {
            let mut h1 = H1::connect(p).await;
            for i in 0..PER_CONN {
                let id = format!("m-{c}-{i}");
                let path = format!("{long}?c={c}&i={i}");
                let r = h1
                    .send(request(
                        "GET",
                        &path,
                        &[("x-api-key", STATIC_SECRET), ("x-request-id", &id)],
                        empty(),
                    ))
                    .await;
                assert_eq!(r.status, 200, "{id}");
            }
        }));
    }
    for t in tasks {
        within("a connection's requests", t).await.unwrap();
    }
    let (status, stderr, _) = kg.terminate_drained().await;
    assert!(status.success(), "{stderr:#?}");

    let written = std::fs::read_to_string(&access).expect("the access log file");
    assert!(written.ends_with('\n'), "a partial last line");
    let lines: Vec<String> = written.lines().map(str::to_owned).collect();
    let log = json_lines(&lines);
    assert_eq!(log.len(), CONNS * PER_CONN, "lines: {}", lines.len());
    for c in 0..CONNS {
        for i in 0..PER_CONN {
            let l = &log[&format!("m-{c}-{i}")];
            assert_eq!(l["path"], format!("{long}?c={c}&i={i}"), "{l}");
            assert_eq!(l["status"], 200, "{l}");
        }
    }
    assert_no_secret_in("the access log", &[written], &[STATIC_SECRET]);
}
