//! The per-request decision, as `Proxy::admit` runs it minus routing and forwarding: find the
//! presented secret (`credential::extract` on a real `HeaderMap` and query string), resolve
//! the client address, then `proxy::guarded_authorize` and `rate`: one SHA-256, one hash-map lookup, status and
//! expiry (credential and authorize), then the IP, target and access checks and the rate limit
//! (authorize and rate), and the key's last-used stamp; against snapshots of 10,000 and 1,000,000 keys.
//!
//! Why: every request pays this before anything is forwarded, and a key-guessing flood pays it
//! too (the `miss` benches), so it must stay flat as the key table grows. Hits cycle through
//! 16,384 different keys spread over the whole table, not one hot key, so the 1M numbers include
//! the cache misses a table larger than the CPU cache really costs.
//!
//! Groups:
//! - `decision/10k/{hit,miss}`, `decision/1m/{hit,miss}`: the whole decision. Hits come from
//!   one client address and pass every check, with IP lists, target bindings, path lists and
//!   rate limits in play (the limits are set so high that the limiter's atomics run on every
//!   hit but never refuse). Misses are well-formed unknown secrets from 16,384 client
//!   addresses, so each one is also counted in the failed-attempt table.
//! - `decision/10k/blocked`: a miss from an address already past `failed_auth_limit`: the
//!   cheapest answer, and what a blocked guesser costs us.
//! - `parts/*`: pieces on their own (extraction from header or query, SHA-256 of a 46-byte
//!   secret, the map lookup with the hash precomputed, the rate-limit check of a key and its
//!   consumer), to show where the time goes. `extract_header_same_request` repeats one request:
//!   its gap to `extract_header` is the cost of reading 16,384 requests' headers from cold
//!   cache, which a real server (whose request was just parsed) does not pay, so the
//!   `decision/*` numbers are on the pessimistic side.
//! - `route/*`: the route phase, `snapshot.routes.find(host, path)`.
//!
//! `now` is read once at setup: the real path reads two clocks per request (a few ns each).
//!
//! Snapshots are built from one generated TOML text each through `keygate::config::parse`, the
//! same code that loads `keygate.toml`; setup prints how long that took (the 1M-key text is
//! about 170 MB and takes most of the setup time).
//!
//! The policy API touch points are [`facts`] (builds `authorize::Facts`) and [`decision`] (calls
//! `extract`, `client_ip::resolve`, `guarded_authorize`, `take` and `touch`): when the API changes, only those
//! two change.
//!
//! Run: `cargo bench --bench decision` (about 1.5 minutes; `-- decision/1m` for one group).

// A test or bench that cannot go on fails loudly: unwrap, expect and panic are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::borrow::Cow;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use criterion::{
    BenchmarkGroup, Criterion, criterion_group, criterion_main, measurement::WallTime,
};
use futures_util::FutureExt as _;
use http::{HeaderMap, HeaderName, HeaderValue, Method};

use keygate::limits::{self, Bucket, FailedAuth};
use keygate::proxy::authorize::Facts;
use keygate::proxy::client_ip;
use keygate::proxy::credential;
use keygate::proxy::deny::Deny;
use keygate::proxy::rate::RateLimiter;
use keygate::proxy::{self, Now};
use keygate::secret::KeyHash;
use keygate::snapshot::{Rate, Snapshot, TargetIdx};
use keygate::state::Live;

/// Distinct requests each bench cycles through (a power of two).
const REQUESTS: usize = 16_384;
/// The address every hit comes from: inside the allow-lists of the bench config.
const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);

/// One prepared request: everything the decision reads, built before timing starts.
struct Req {
    headers: HeaderMap,
    query: Option<String>,
    method: Method,
    path: String,
    target: TargetIdx,
    peer: IpAddr,
}

/// What a decision runs against, besides the request.
struct Env {
    snap: Live,
    failures: FailedAuth,
    rate: RateLimiter,
    now: Now,
}

/// Builds the policy's view of a request. When `Facts` gains fields, add them here.
fn facts<'a>(req: &'a Req, secret: &'a [u8], client_ip: IpAddr) -> Facts<'a> {
    Facts {
        secret,
        target: req.target,
        method: &req.method,
        path: &req.path,
        client_ip,
        origin: None,
    }
}

/// The decision for one request, as `Proxy::admit` makes it (minus routing and forwarding).
/// Returns whether the admitted key has a consumer, so that the lookup's result is used.
fn decision(env: &Env, req: &Req) -> Result<bool, Deny> {
    let server = &env.snap.server;
    let secret: Cow<'_, [u8]> = credential::extract(
        &req.headers,
        req.query.as_deref(),
        server.key_sources.list(),
    )?;
    let client_ip = client_ip::resolve(req.peer, &req.headers, &server.trusted_proxies);
    let facts = facts(req, &secret, client_ip);
    let authorized =
        proxy::guarded_authorize(&env.snap, &env.failures, &facts, env.now).map_err(|r| r.deny)?;
    // Local limits complete on the first poll.
    let rate = env
        .rate
        .take(&env.snap, &authorized, env.now.wall, None)
        .now_or_never();
    if let Some(Err(refused)) = rate {
        return Err(refused.deny);
    }
    env.snap.touch(authorized.index, env.now.wall);
    Ok(authorized.key.consumer().is_some())
}

/// A secret shaped like `keygate keys generate` output: "kg_" + 32 base62 characters + their
/// 6-character checksum (41 bytes: one SHA-256 block), so a hit and a miss both pay the
/// checksum check before the lookup. Deterministic in (`salt`, `i`).
fn secret(salt: &str, i: usize) -> String {
    const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let seed = KeyHash::of(format!("{salt}{i}").as_bytes()).0;
    let mut s = String::from("kg_");
    s.extend(seed.iter().map(|b| char::from(BASE62[usize::from(b % 62)])));
    let sum = keygate::secret::checksum(s.as_bytes());
    s.push_str(std::str::from_utf8(&sum).unwrap());
    s
}

/// Rate limits here are real buckets that never run out at benchmark speed, so that hits stay
/// hits: the limiter's atomics run, its refusal does not.
const HEADER: &str = r#"
[server]
listen = "127.0.0.1:8080"
trusted_proxies = ["10.0.0.0/8"]
failed_auth_limit = "1000000000/minute"

[[targets]]
name = "production"
upstream = "http://127.0.0.1:3000"
hosts = ["api.example.com"]

[[targets]]
name = "staging"
upstream = "http://127.0.0.1:3001"
hosts = ["staging.example.com"]

[[targets]]
name = "reports"
upstream = "http://127.0.0.1:3002"
path_prefix = "/reports"

[[targets]]
name = "fallback"
upstream = "http://127.0.0.1:3003"

[[consumers]]
id = "acme"
allow_ips = ["198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"]
rate_limit = "1000000000/minute"

[[consumers]]
id = "globex"
targets = ["production", "reports"]
rate_limit = "1000000000/minute"

[[consumers]]
id = "initech"
"#;

/// True for the keys `key_toml` marks inactive or already expired: never used as hits.
fn is_refused(i: usize) -> bool {
    i % 20 == 7 || i % 50 == 11
}

/// One `[[keys]]` entry with a realistic mix of optional fields, all of which a GET of
/// `/v1/conversions` on `production` from [`CLIENT`] passes (unless [`is_refused`]).
fn key_toml(out: &mut String, i: usize) {
    use std::fmt::Write as _;
    let hash = KeyHash::of(secret("hit", i).as_bytes());
    let _ = write!(out, "[[keys]]\nid = \"key-{i:07}\"\nhash = \"{hash}\"\n");
    if i.is_multiple_of(3) {
        let _ = writeln!(out, "name = \"Integration {i} for the nightly export\"");
    }
    if i.is_multiple_of(2) {
        let c = ["acme", "globex", "initech"][(i / 2) % 3];
        let _ = writeln!(out, "consumer = \"{c}\"");
    }
    if i % 20 == 7 {
        out.push_str("status = \"inactive\"\n");
    }
    if i % 50 == 11 {
        out.push_str("expires_at = 2020-01-01T00:00:00Z\n");
    } else if i % 7 == 1 {
        out.push_str("expires_at = 2099-06-15T12:00:00Z\n");
    }
    if i % 10 == 3 {
        let _ = writeln!(
            out,
            "allow_ips = [\"198.51.{}.{}\", \"203.0.113.0/24\", \"2001:db8::/32\"]",
            i % 256,
            (i / 256) % 256
        );
    }
    if i % 8 == 5 {
        let _ = writeln!(out, "rate_limit = \"{}/minute\"", 1_000_000 + i % 50);
    }
    if i % 6 == 2 {
        out.push_str("access = \"read-only\"\npaths = [\"/reports\", \"/v1/conversions\"]\n");
    }
    if i % 11 == 4 {
        out.push_str("targets = [\"staging\", \"production\"]\n");
    }
    out.push('\n');
}

/// A snapshot of `n` keys, from one generated TOML text through `config::parse`.
fn build_snapshot(n: usize) -> Snapshot {
    let t = Instant::now();
    let mut text = String::with_capacity(HEADER.len() + n * 160);
    text.push_str(HEADER);
    for i in 0..n {
        key_toml(&mut text, i);
    }
    let generated = t.elapsed();
    let t = Instant::now();
    let loaded = keygate::config::parse(&text, Path::new("bench.toml"))
        .unwrap_or_else(|e| panic!("generated config is invalid: {e}"));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    eprintln!(
        "setup: {n} keys: generate {:.1} MB of TOML {generated:.2?}, config::parse {:.2?}",
        text.len() as f64 / 1e6,
        t.elapsed()
    );
    loaded.snapshot
}

/// `REQUESTS` prepared requests for a table of `n` keys: hits on usable keys spread over the
/// whole table, from [`CLIENT`]; or misses, well-formed secrets that no key has, each from its
/// own address. Every request also carries a small query string, which `extract` has to scan
/// for `api_key`. `snap` gives the key header and the route; it need not hold the keys.
fn requests(snap: &Snapshot, n: usize, hit: bool) -> Vec<Req> {
    let host = "api.example.com";
    let path = "/v1/conversions";
    let target = snap.routes.find(Some(host), path).expect("route");
    let header = snap.server.key_sources.headers()[0].clone();
    // A large fixed stride (coprime with 10k and 1M) scatters the picks over the whole table.
    let stride = (2_654_435_761usize % n) | 1;
    let mut out = Vec::with_capacity(REQUESTS);
    let mut i = 0usize;
    while out.len() < REQUESTS {
        let (s, peer) = if hit {
            i = (i + stride) % n;
            if is_refused(i) {
                continue;
            }
            (secret("hit", i), IpAddr::V4(CLIENT))
        } else {
            let j = out.len() as u32;
            // 198.18.0.0/15, the benchmarking range.
            let peer = Ipv4Addr::from(0xC612_0000 | (j & 0x1_FFFF));
            (secret("miss", out.len()), IpAddr::V4(peer))
        };
        out.push(request(&header, host, path, target, &s, peer));
    }
    out
}

fn request(
    header: &HeaderName,
    host: &str,
    path: &str,
    target: TargetIdx,
    secret: &str,
    peer: IpAddr,
) -> Req {
    let mut headers = HeaderMap::new();
    headers.insert(http::header::HOST, HeaderValue::from_str(host).unwrap());
    headers.insert(
        http::header::USER_AGENT,
        HeaderValue::from_static("curl/8.5.0"),
    );
    headers.insert(
        http::header::ACCEPT,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header.clone(), HeaderValue::from_str(secret).unwrap());
    Req {
        headers,
        query: Some("page=2&per_page=50".to_owned()),
        method: Method::GET,
        path: path.to_owned(),
        target,
        peer,
    }
}

/// Cycles through `reqs`, one decision per iteration, after checking that every request gets
/// the outcome the bench is named for.
fn bench_decisions(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    env: &Env,
    reqs: &[Req],
    expect: fn(&Result<bool, Deny>) -> bool,
) {
    for r in reqs {
        let got = decision(env, r);
        assert!(expect(&got), "{name}: unexpected {got:?}");
    }
    let mask = reqs.len() - 1;
    g.bench_function(name, |b| {
        let mut i = 0usize;
        b.iter(|| {
            let r = &reqs[i & mask];
            i = i.wrapping_add(1);
            black_box(decision(env, black_box(r)))
        })
    });
}

fn decision_group(c: &mut Criterion, label: &str, n: usize) {
    let started = Instant::now();
    // The requests only need the server and targets, which a config without keys has. Built
    // before the big parse, they sit in a compact heap instead of scattered through the holes
    // that parse leaves behind (which made `decision/1m/miss` about 1.5 times slower).
    let frame = keygate::config::parse(HEADER, Path::new("bench.toml"))
        .expect("bench config")
        .snapshot;
    let hits = requests(&frame, n, true);
    let misses = requests(&frame, n, false);
    let mut env = Env {
        snap: Live::new(build_snapshot(n)),
        failures: FailedAuth::default(),
        rate: RateLimiter::default(),
        now: Now {
            wall: SystemTime::now(),
            mono: started.elapsed(),
        },
    };
    assert_eq!(env.snap.keys.len(), n);
    let mut g = c.benchmark_group(format!("decision/{label}"));
    g.sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    bench_decisions(&mut g, "hit", &env, &hits, Result::is_ok);
    bench_decisions(&mut g, "miss", &env, &misses, |r| {
        matches!(r, Err(Deny::KeyInvalid))
    });
    if n == 10_000 {
        // One address past a strict limit: answered before any hashing.
        let strict = Rate::parse("1/hour").unwrap();
        let mut snap = env.snap.into_snapshot();
        snap.server.failed_auth_limit = strict;
        env.snap = Live::new(snap);
        let header = env.snap.server.key_sources.headers()[0].clone();
        let blocked: Vec<Req> = misses
            .iter()
            .map(|r| {
                let s = r.headers.get(&header).unwrap().to_str().unwrap();
                let client = IpAddr::V4(CLIENT);
                request(&header, "api.example.com", &r.path, r.target, s, client)
            })
            .collect();
        env.failures
            .record(IpAddr::V4(CLIENT), strict, env.now.mono);
        env.failures
            .record(IpAddr::V4(CLIENT), strict, env.now.mono);
        bench_decisions(&mut g, "blocked", &env, &blocked, |r| {
            matches!(r, Err(Deny::TooManyFailures(_)))
        });
    }
    g.finish();
    if n == 10_000 {
        parts(c, &env, &hits);
        routes(c, &env.snap);
    }
}

fn decision_10k(c: &mut Criterion) {
    decision_group(c, "10k", 10_000);
}

fn decision_1m(c: &mut Criterion) {
    decision_group(c, "1m", 1_000_000);
}

/// The pieces of a hit on the 10k table, each alone.
fn parts(c: &mut Criterion, env: &Env, hits: &[Req]) {
    let server = &env.snap.server;
    let mask = hits.len() - 1;
    let in_query: Vec<(HeaderMap, String)> = hits
        .iter()
        .map(|r| {
            let s = r
                .headers
                .get(&server.key_sources.headers()[0])
                .unwrap()
                .to_str()
                .unwrap();
            (HeaderMap::new(), format!("page=2&api_key={s}&per_page=50"))
        })
        .collect();
    let secrets: Vec<Vec<u8>> = hits
        .iter()
        .map(|r| {
            r.headers
                .get(&server.key_sources.headers()[0])
                .unwrap()
                .as_bytes()
                .to_vec()
        })
        .collect();
    let hashes: Vec<KeyHash> = secrets.iter().map(|s| KeyHash::of(s)).collect();
    let huge = Rate::parse("1000000000/minute").unwrap();
    let (key_bucket, consumer_bucket) = (Bucket::new(huge), Bucket::new(huge));

    let mut g = c.benchmark_group("parts");
    g.sample_size(50)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let mut i = 0usize;
    g.bench_function("extract_header", |b| {
        b.iter(|| {
            let r = &hits[i & mask];
            i = i.wrapping_add(1);
            let s = credential::extract(&r.headers, r.query.as_deref(), server.key_sources.list());
            black_box(s.map(|s| s.len()))
        })
    });
    // The same request every time: its headers stay in L1, as a just-parsed request's would.
    g.bench_function("extract_header_same_request", |b| {
        let r = &hits[0];
        b.iter(|| {
            let s = credential::extract(
                black_box(&r.headers),
                r.query.as_deref(),
                server.key_sources.list(),
            );
            black_box(s.map(|s| s.len()))
        })
    });
    g.bench_function("extract_query", |b| {
        b.iter(|| {
            let (h, q) = &in_query[i & mask];
            i = i.wrapping_add(1);
            let s = credential::extract(h, Some(q), server.key_sources.list());
            black_box(s.map(|s| s.len()))
        })
    });
    g.bench_function("sha256_41_bytes", |b| {
        b.iter(|| {
            let s = &secrets[i & mask];
            i = i.wrapping_add(1);
            black_box(KeyHash::of(black_box(s)))
        })
    });
    g.bench_function("lookup_10k", |b| {
        b.iter(|| {
            let h = &hashes[i & mask];
            i = i.wrapping_add(1);
            black_box(env.snap.key_by_hash(black_box(h)).is_some())
        })
    });
    g.bench_function("rate_limit_key_and_consumer", |b| {
        // `check`'s `Ok` is as large as its `Err`.
        #[allow(clippy::result_large_err)]
        b.iter(|| {
            black_box(limits::check(
                Some(black_box(&key_bucket)),
                Some(&consumer_bucket),
            ))
        })
    });
    g.finish();
}

/// The route phase on its own: a host route, an any-host prefix route, and a mixed-case Host (which
/// lowercases into a new string before the lookup).
fn routes(c: &mut Criterion, snap: &Snapshot) {
    let mut g = c.benchmark_group("route");
    g.sample_size(50)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let cases = [
        ("host", Some("api.example.com"), "/v1/conversions/42"),
        (
            "any_host_prefix",
            Some("unknown.example.net"),
            "/reports/daily",
        ),
        ("mixed_case_host", Some("Staging.Example.COM"), "/v1/things"),
    ];
    for (name, host, path) in cases {
        assert!(snap.routes.find(host, path).is_some());
        g.bench_function(name, |b| {
            b.iter(|| black_box(snap.routes.find(black_box(host), black_box(path))))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = decision_10k, decision_1m
}
criterion_main!(benches);
