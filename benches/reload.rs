//! How fast a revocation takes effect, and what a big reload costs the traffic around it.
//!
//! Not a criterion bench: each sample is an end-to-end event over real sockets, with the real
//! file watcher. Run with `cargo bench --bench reload` (add `-- --quick` for a short run).
//!
//! 1. Revocation latency: a keygate serves a small config from a temp dir; each run rewrites the
//!    file through write-temp-then-rename with the key removed and polls with that key until the
//!    first 403. Reported: median and worst over the runs, from `rename` to the first 403.
//! 2. Reload under load: a 100,000-key config is served while clients send requests nonstop;
//!    the file is replaced (one key changed) and the run measures the reload time (from the
//!    rename to the new key working), whether any request failed, and p50/p99/max latency of the
//!    requests in flight during the reload window against those before it.

// A test or bench that cannot go on fails loudly: unwrap, expect and panic are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Empty<Bytes>,
>;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let upstream = start_upstream().await;
        revocation_latency(upstream, if quick { 10 } else { 50 }).await;
        reload_under_load(upstream, if quick { 10_000 } else { 100_000 }).await;
    });
}

async fn start_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(
                        b"ok",
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// A config with `keys` keys named k0.. with secrets s0.., pointing at `upstream`.
fn config(upstream: SocketAddr, keys: impl Iterator<Item = usize>) -> String {
    let mut s = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n# The polls below present revoked keys on purpose.\nfailed_auth_limit = \"1000000/second\"\n\n[[targets]]\nname = \"p\"\nupstream = \"http://{upstream}\"\n"
    );
    for i in keys {
        let hash = keygate::secret::KeyHash::of(format!("s{i}").as_bytes());
        s.push_str(&format!("\n[[keys]]\nid = \"k{i}\"\nhash = \"{hash}\"\n"));
    }
    s
}

/// Writes `text` to `path` the way config management does: temp file, fsync, rename.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write temp");
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .expect("fsync");
    std::fs::rename(&tmp, path).expect("rename");
}

/// Starts keygate on its own runtime (so the load below does not share its worker threads).
fn start_keygate(path: PathBuf) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let mut gateway = keygate::Gateway::load(&path).expect("config");
            gateway.snapshot_mut().log.access = keygate::snapshot::AccessTo::Off;
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            tx.send(listener.local_addr().expect("addr")).expect("send");
            let listeners = gateway.bind(Some(listener), None).await.expect("bind");
            gateway
                .run(listeners, std::future::pending())
                .await
                .expect("serve");
        });
    });
    rx.recv().expect("keygate address")
}

fn client() -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

async fn status(client: &Client, addr: SocketAddr, secret: &str) -> Option<u16> {
    let req = Request::get(format!("http://{addr}/"))
        .header("x-api-key", secret)
        .body(Empty::new())
        .ok()?;
    let resp = client.request(req).await.ok()?;
    let code = resp.status().as_u16();
    resp.into_body().collect().await.ok()?;
    Some(code)
}

async fn revocation_latency(upstream: SocketAddr, runs: usize) {
    let dir = tempdir("revoke");
    let path = dir.join("keygate.toml");
    std::fs::write(&path, config(upstream, 0..10)).expect("write");
    let addr = start_keygate(path.clone());
    let client = client();
    let mut samples = Vec::with_capacity(runs);
    for run in 0..runs {
        // Even runs revoke k0; odd runs bring it back, so each run starts from a working key.
        let (keys, expect): (Vec<usize>, u16) = if run % 2 == 0 {
            ((1..10).collect(), 403)
        } else {
            ((0..10).collect(), 200)
        };
        assert_eq!(
            status(&client, addr, "s0").await,
            Some(if expect == 403 { 200 } else { 403 })
        );
        let started = Instant::now();
        replace(&path, &config(upstream, keys.into_iter()));
        let deadline = started + Duration::from_secs(10);
        loop {
            if status(&client, addr, "s0").await == Some(expect) {
                break;
            }
            assert!(Instant::now() < deadline, "change not seen within 10 s");
        }
        if expect == 403 {
            samples.push(started.elapsed());
        }
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "revocation: rename -> first 403 over {} runs: median {:.1} ms, best {:.1} ms, worst {:.1} ms",
        samples.len(),
        ms(samples[samples.len() / 2]),
        ms(samples[0]),
        ms(samples[samples.len() - 1]),
    );
    let _ = std::fs::remove_dir_all(dir);
}

async fn reload_under_load(upstream: SocketAddr, keys: usize) {
    let dir = tempdir("bigreload");
    let path = dir.join("keygate.toml");
    let text = config(upstream, 0..keys);
    println!(
        "reload under load: {keys} keys, {:.1} MB file",
        text.len() as f64 / 1e6
    );
    std::fs::write(&path, &text).expect("write");
    let addr = start_keygate(path.clone());

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let origin = Instant::now();
    let mut workers = Vec::new();
    for w in 0..8 {
        let (stop, failures) = (stop.clone(), failures.clone());
        workers.push(tokio::spawn(async move {
            let client = client();
            let mut lat = Vec::new();
            let mut i = w;
            // Bounded: stops on the flag or after 60 s, whichever comes first.
            while !stop.load(Ordering::Relaxed) && origin.elapsed() < Duration::from_secs(60) {
                // Never s0: that key is the one the reload replaces.
                let secret = format!("s{}", 1 + (i * 7919) % (keys - 1));
                let sent = Instant::now();
                if status(&client, addr, &secret).await != Some(200) {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                lat.push((sent.duration_since(origin), sent.elapsed()));
                i += 8;
            }
            lat
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Change one key: "new" replaces k0, so the reload is done when "snew" works.
    let changed = text.replacen("id = \"k0\"", "id = \"knew\"", 1).replacen(
        &keygate::secret::KeyHash::of(b"s0").to_string(),
        &keygate::secret::KeyHash::of(b"snew").to_string(),
        1,
    );
    let probe = client();
    let reload_start = origin.elapsed();
    replace(&path, &changed);
    let started = Instant::now();
    while status(&probe, addr, "snew").await != Some(200) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "reload not seen within 30 s"
        );
    }
    let reload_time = started.elapsed();
    let reload_end = origin.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut during = Vec::new();
    let mut before = Vec::new();
    for w in workers {
        for (at, took) in w.await.expect("worker") {
            if at >= reload_start && at <= reload_end {
                during.push(took);
            } else if at < reload_start {
                before.push(took);
            }
        }
    }
    let pct = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        v.get(((v.len() as f64 - 1.0) * p) as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "reload under load: rename -> new key works in {:.1} ms; failed requests: {} (of {} before, {} during)",
        reload_time.as_secs_f64() * 1000.0,
        failures.load(Ordering::Relaxed),
        before.len(),
        during.len(),
    );
    println!(
        "  latency before: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(&mut before, 0.5),
        pct(&mut before, 0.99),
        pct(&mut before, 1.0)
    );
    println!(
        "  latency during: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(&mut during, 0.5),
        pct(&mut during, 0.99),
        pct(&mut during, 1.0)
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keygate-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
