//! The load harness (benches/load/run.sh) in its smoke mode, so it cannot silently rot: 1-second
//! runs, tables of 100 and 1,000 keys, one round, every case and every gate, this build's keygate
//! binary and a debug build of benches/load/loadgen.rs. It checks that the script exits 0, that
//! its JSON has every case and gate with requests and no errors, and that it left no process
//! behind. Skips (passes, saying why) where nginx, haproxy, wrk, curl or python3 is missing; CI
//! installs them (.ci/run). Where redis-server is installed it also checks the cluster case
//! (keygate alone, then with `[cluster]` strict and local-sync against the script's own
//! redis-server) at the first size; without it the script leaves that case out. Where nginx has
//! its auth_request module it also checks the forward-auth case at the first size: nginx
//! auth_request -> keygate's `[verify]` listener -> upstream (the recipe of docs/forward-auth.md)
//! and wrk straight at the verify listener. It also checks the logs variant's keep-alive case
//! (`keepalive+logs`: every gate writing its access log to a file, the script checking each file
//! has a line per request) at both sizes. The figures themselves are not looked at: this is not
//! a benchmark.
//!
//! Then runs benches/load/gates.sh on the smoke run's kept gates, in both its modes (system calls
//! per request, with strace as the counter too where it is installed; latency rounds), checking
//! that every gate was counted.
//!
//! Also runs the unit tests of loadgen.rs (its histogram, target and duration parsing), which
//! cargo does not run for an example.

// A test or bench that cannot go on fails loudly: unwrap, expect and panic are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(dead_code)]
#[path = "../benches/load/loadgen.rs"]
mod loadgen;

use std::fs::File;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_keygate");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// The script bounds itself (TOTAL_TIMEOUT); this is the test's own bound on top of it.
const SCRIPT_TIMEOUT_S: u64 = 240;
const TEST_TIMEOUT: Duration = Duration::from_secs(SCRIPT_TIMEOUT_S + 30);
const CASES: [&str; 5] = ["keepalive", "close", "h2c", "post", "rate"];
const CONFIGS: [&str; 4] = ["direct", "nginx", "haproxy", "keygate"];

fn have(tool: &str) -> bool {
    let in_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
    in_path || Path::new("/usr/sbin").join(tool).is_file()
}

/// A temp dir for this test only, removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Processes whose process group is `pgid` (the script runs in its own group, and so does
/// everything it starts: nginx, haproxy, keygate, wrk, loadgen).
fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    // fields after "comm)": state ppid pgrp ...
                    let rest = &s[s.rfind(')')? + 2..];
                    let mut f = rest.split(' ');
                    let state = f.next()?;
                    let pgrp: u32 = f.nth(1)?.parse().ok()?;
                    Some(pgrp == pgid && state != "Z")
                })
                .unwrap_or(false)
        })
        .collect()
}

fn kill_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
}

/// Stops the script and everything it started, if it is still running when the test ends.
struct Script(Child);

impl Drop for Script {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let pgid = self.0.id();
            kill_group(pgid, "-TERM");
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline && matches!(self.0.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(100));
            }
            kill_group(pgid, "-KILL");
            let _ = self.0.wait();
        }
    }
}

/// Runs `cmd` (a bash script) in its own process group with its output in `log_path`, for at
/// most `timeout`; fails the test if it does not finish in time or leaves a process behind.
/// Returns its exit status and output.
fn run_bounded(
    mut cmd: Command,
    log_path: &Path,
    timeout: Duration,
) -> (std::process::ExitStatus, String) {
    let log = File::create(log_path).unwrap();
    let started = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0)
        .spawn()
        .expect("run the script");
    let pgid = child.id();
    let mut script = Script(child);
    let status = loop {
        if let Some(status) = script.0.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > timeout {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = std::fs::read_to_string(log_path).unwrap_or_default();
    let Some(status) = status else {
        drop(script);
        panic!("the script did not finish within {timeout:?}:\n{output}");
    };
    eprintln!(
        "{:?}: {status} after {:.1} s",
        cmd.get_args().next().unwrap_or_default(),
        started.elapsed().as_secs_f64()
    );

    // Nothing the script started may outlive it.
    let mut left = group_members(pgid);
    for _ in 0..20 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        left = group_members(pgid);
    }
    if !left.is_empty() {
        kill_group(pgid, "-KILL");
        panic!("the script left processes behind: {left:?}\n{output}");
    }
    (status, output)
}

#[test]
fn smoke_run_of_the_load_harness() {
    let missing: Vec<&str> = ["bash", "nginx", "haproxy", "wrk", "curl", "python3"]
        .into_iter()
        .filter(|t| !have(t))
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "SKIP: the load harness needs {} (apt-get install -y nginx-light haproxy wrk curl python3; \
             .ci/run does this in CI)",
            missing.join(", ")
        );
        return;
    }

    let tmp = TempDir(std::env::temp_dir().join(format!(
        "keygate-load-harness-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )));
    std::fs::create_dir_all(&tmp.0).unwrap();
    let out = tmp.0.join("results.json");
    let mut cmd = Command::new("bash");
    cmd.arg(Path::new(ROOT).join("benches/load/run.sh"))
        .current_dir(ROOT)
        .env("SMOKE", "1")
        .env("NO_INSTALL", "1")
        // The work dir (under TMPDIR, removed with it) is kept for benches/load/gates.sh below.
        .env("KEEP_WORK", "1")
        .env("KEYGATE_BIN", BIN)
        .env("OUT", &out)
        .env("TMPDIR", &tmp.0)
        .env("KEY_CACHE", tmp.0.join("key-cache"))
        .env("TOTAL_TIMEOUT", SCRIPT_TIMEOUT_S.to_string())
        .env_remove("KG_LOAD_INNER")
        .env_remove("LOADGEN_BIN")
        .env_remove("KEYS")
        .env_remove("CASES")
        .env_remove("BIG_CASES")
        .env_remove("RATE")
        .env_remove("LOGS")
        .env_remove("LOGS_CASES")
        .env_remove("KG_ACCESS_LOG");
    let (status, output) = run_bounded(cmd, &tmp.0.join("run.log"), TEST_TIMEOUT);

    assert!(
        status.success(),
        "the smoke run failed ({status}):\n{output}"
    );
    if output.contains("[load] SKIP:") {
        eprintln!("SKIP: the harness skipped itself:\n{output}");
        return;
    }

    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(&out)
            .unwrap_or_else(|e| panic!("no {} ({e}):\n{output}", out.display())),
    )
    .expect("results.json is JSON");
    assert_eq!(json["smoke"], true);
    let tables = json["tables"].as_object().expect("tables");
    assert_eq!(
        tables.keys().collect::<Vec<_>>(),
        ["100", "1000"],
        "smoke mode measures two table sizes"
    );
    for (size, table) in tables {
        let cases = table["cases"].as_object().expect("cases");
        // All cases at the first size; at least keep-alive at the second; and keep-alive with
        // every gate's access log on (the logs variant) at both.
        let mut expected: Vec<&str> = if size == "100" {
            CASES.to_vec()
        } else {
            CASES[..1].to_vec()
        };
        expected.push("keepalive+logs");
        for case in &expected {
            let medians = &cases
                .get(*case)
                .unwrap_or_else(|| panic!("no case {case} at {size} keys:\n{output}"))["medians"];
            for config in CONFIGS {
                let m = &medians[config];
                let requests = m["requests"].as_u64().unwrap_or(0);
                assert!(
                    requests > 0,
                    "{case}/{config} at {size} keys: no requests:\n{output}"
                );
                for field in ["errors", "non_2xx", "socket_errors"] {
                    assert_eq!(
                        m[field].as_u64(),
                        Some(0),
                        "{case}/{config} at {size} keys: {field}:\n{output}"
                    );
                }
                assert!(
                    m["rps"].as_f64().is_some_and(|r| r > 0.0),
                    "{case}/{config}"
                );
                assert!(m["p99_ms"].as_f64().is_some(), "{case}/{config}: p99");
            }
        }
        assert!(
            table["keygate_start_s"].as_f64().is_some(),
            "keygate start time at {size} keys"
        );
    }
    assert!(
        tables["100"]["cases"]["rate"]["target_rps"]
            .as_f64()
            .is_some_and(|r| r > 0.0),
        "the constant-rate case has a target rate"
    );
    assert!(
        json["scaling"]["1000/100"]["keepalive"]["keygate"]
            .as_f64()
            .is_some(),
        "the table-size ratio for keep-alive"
    );
    if have("redis-server") && have("redis-cli") {
        let cluster = &tables["100"]["cases"]["cluster"];
        assert!(
            cluster.is_object(),
            "no cluster case at 100 keys though redis-server is installed:\n{output}"
        );
        for config in ["local", "strict", "local-sync"] {
            let m = &cluster["medians"][config];
            assert!(
                m["requests"].as_u64().unwrap_or(0) > 0,
                "cluster/{config}: no requests:\n{output}"
            );
            assert_eq!(
                m["errors"].as_u64(),
                Some(0),
                "cluster/{config}: errors:\n{output}"
            );
            assert!(m["p99_ms"].as_f64().is_some(), "cluster/{config}: p99");
        }
        // strict asks Redis once per request; local-sync once per sync_interval.
        let calls = |c: &str| cluster["medians"][c]["redis_scripts_per_req"].as_f64();
        assert!(
            calls("strict").is_some_and(|x| x > 0.9),
            "strict: Redis calls per request {:?}:\n{output}",
            calls("strict")
        );
        assert!(
            calls("local-sync").is_some_and(|x| x < 0.5),
            "local-sync: Redis calls per request {:?}:\n{output}",
            calls("local-sync")
        );
        assert!(
            tables["1000"]["cases"].get("cluster").is_none(),
            "the cluster case runs at the first table size only"
        );
        assert!(
            output.contains("Redis calls/req"),
            "the cluster table:\n{output}"
        );
    }
    if !output.contains("no auth_request module") {
        let fwd = &tables["100"]["cases"]["fwdauth"];
        assert!(fwd.is_object(), "no fwdauth case at 100 keys:\n{output}");
        for config in ["direct", "nginx", "nginx-authreq", "keygate", "verify"] {
            let m = &fwd["medians"][config];
            assert!(
                m["requests"].as_u64().unwrap_or(0) > 0,
                "fwdauth/{config}: no requests:\n{output}"
            );
            assert_eq!(
                m["errors"].as_u64(),
                Some(0),
                "fwdauth/{config}: errors:\n{output}"
            );
            assert!(m["p99_ms"].as_f64().is_some(), "fwdauth/{config}: p99");
        }
        assert!(
            fwd["ratios"]["nginx-authreq/nginx"]["rps"]
                .as_f64()
                .is_some(),
            "the auth_request / map ratio"
        );
        assert!(
            tables["1000"]["cases"].get("fwdauth").is_none(),
            "the fwdauth case runs at the first table size only"
        );
        assert!(
            output.contains("forward-auth"),
            "the fwdauth table:\n{output}"
        );
    }
    for needle in ["h2c (HTTP/2", "constant rate", "p99 +ms", "Table size:"] {
        assert!(
            output.contains(needle),
            "the printed report has {needle:?}:\n{output}"
        );
    }

    // benches/load/gates.sh on this run's gates, in both its modes, so it cannot rot either.
    let work = output
        .lines()
        .find_map(|l| l.strip_prefix("[load] work dir kept: "))
        .unwrap_or_else(|| panic!("KEEP_WORK=1 names its work dir:\n{output}"))
        .trim()
        .to_owned();
    // Each counter where it can run (perf needs readable syscall tracepoints; unset, the script
    // picks one or skips), then the latency rounds.
    let mut runs = vec![("syscalls", None)];
    if have("strace") {
        runs.push(("syscalls", Some("strace")));
    }
    runs.push(("latency", None));
    for (mode, counter) in runs {
        let mut cmd = Command::new("bash");
        cmd.arg(Path::new(ROOT).join("benches/load/gates.sh"))
            .arg(&work)
            .current_dir(ROOT)
            .env("MODE", mode)
            .env("KEYS", "100")
            .env("DURATION", "1")
            .env("ROUNDS", "2")
            .env("KEYGATE_BIN", BIN)
            .env("TOTAL_TIMEOUT", "120")
            .env_remove("KG_GATES_INNER")
            .env_remove("GATES")
            .env_remove("CASE")
            .env_remove("CONNS")
            .env_remove("COUNTER");
        if let Some(c) = counter {
            cmd.env("COUNTER", c);
        }
        let log = tmp
            .0
            .join(format!("gates-{mode}-{}.log", counter.unwrap_or("auto")));
        let (status, out) = run_bounded(cmd, &log, Duration::from_secs(150));
        assert!(
            status.success(),
            "gates.sh MODE={mode} failed ({status}):\n{out}"
        );
        if out.contains("SKIP:") {
            eprintln!("SKIP: gates.sh MODE={mode} skipped itself:\n{out}");
            continue;
        }
        for gate in ["keygate", "nginx", "haproxy"] {
            if mode == "syscalls" {
                // "GATE (close, ...): requests=N ...", then a line per call.
                let block: Vec<&str> = out
                    .lines()
                    .skip_while(|l| !l.starts_with(&format!("{gate} (close")))
                    .take_while(|l| l.starts_with(gate) || l.starts_with("  "))
                    .collect();
                let requests: u64 = block
                    .first()
                    .and_then(|l| l.split("requests=").nth(1))
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                assert!(requests > 0, "{gate}: no requests counted:\n{out}");
                for call in ["accept4", "recvfrom"] {
                    assert!(
                        block.iter().any(|l| l.trim_start().starts_with(call)),
                        "{gate}: no {call} counted:\n{out}"
                    );
                }
            } else {
                let rps: f64 = out
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("  {gate} ")))
                    .and_then(|l| l.split("req/s=").nth(1))
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0.0);
                assert!(rps > 0.0, "{gate}: no median req/s:\n{out}");
                assert!(
                    out.contains(&format!("{gate} 50%=")),
                    "{gate}: each run's line:\n{out}"
                );
            }
        }
    }
}
