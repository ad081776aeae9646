//! The `keygate` binary: `check`, `keys generate`, `keys hash` and `run`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};

use crate::harness::*;

const BIN: &str = env!("CARGO_BIN_EXE_keygate");
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/keygate.toml");

/// Runs the binary with `args`, `stdin` on its standard input, and no `KEYGATE_CONFIG`.
fn keygate(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("KEYGATE_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run keygate");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A config file for this test only, removed when dropped.
struct TempConfig(PathBuf);

impl TempConfig {
    fn new(name: &str, contents: &str) -> TempConfig {
        let path =
            std::env::temp_dir().join(format!("keygate-test-{}-{name}.toml", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        TempConfig(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The example config's counts, as the library reads them.
fn example_summary() -> String {
    crate::harness::launch::load(Path::new(EXAMPLE))
        .unwrap()
        .snapshot()
        .summary()
}

// --- check ----------------------------------------------------------------------------------

#[test]
fn check_accepts_the_example_config_with_a_one_line_summary() {
    let out = keygate(&["check", "--config", EXAMPLE], b"");
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout:?}");
    let line = stdout.trim_end();
    assert!(line.contains(&example_summary()), "{line:?}");
    // The summary names all three counts.
    for what in ["targets", "consumers", "keys"] {
        assert!(line.contains(what), "{line:?}");
    }
}

#[test]
fn check_reads_keygate_config_from_the_environment_and_defaults_to_config_keygate_toml() {
    let out = Command::new(BIN)
        .args(["check"])
        .env("KEYGATE_CONFIG", EXAMPLE)
        .output()
        .unwrap();
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&example_summary()));

    let out = Command::new(BIN)
        .args(["check"])
        .env_remove("KEYGATE_CONFIG")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("config/keygate.toml"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn check_on_stdin_names_file_line_column_and_key_id() {
    let head = "[server]\nlisten = \"127.0.0.1:0\"\n\n[[targets]]\nname = \"main\"\nupstream = \"http://127.0.0.1:9\"\n\n[[keys]]\n";
    // Line 9 is the key's id; the faulty value is on line 10, at the column where it starts.
    for (key, expected_position, hint) in [
        (
            "id = \"broken-key\"\nhash = \"sha256:nothex\"\n",
            "/dev/stdin:10:8",
            "hash",
        ),
        (
            "id = \"broken-key\"\nsecret = \"s\"\nconsumer = \"nobody\"\n",
            "/dev/stdin:11:12",
            "nobody",
        ),
        (
            "id = \"broken-key\"\nsecret = \"s\"\nstatus = \"paused\"\n",
            "/dev/stdin:11:",
            "paused",
        ),
        (
            "id = \"broken-key\"\nsecret = \"s\"\nalow_ips = [\"10.0.0.1\"]\n",
            "/dev/stdin:11:1",
            "alow_ips",
        ),
        (
            "id = \"broken-key\"\nsecret = \"s\"\nallow_ips = [\"10.0.0.0/33\"]\n",
            "/dev/stdin:11:14",
            "10.0.0.0/33",
        ),
        (
            "id = \"broken-key\"\nsecret = \"s\"\nrate_limit = \"5/fortnight\"\n",
            "/dev/stdin:11:14",
            "fortnight",
        ),
    ] {
        let config = format!("{head}{key}");
        let out = keygate(&["check", "--config", "/dev/stdin"], config.as_bytes());
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "accepted:\n{config}");
        assert!(
            stderr.contains(expected_position),
            "want {expected_position} in: {stderr}\n---\n{config}"
        );
        assert!(stderr.contains(hint), "want {hint:?} in: {stderr}");
        // Unknown fields and bad enum values are reported by the TOML reader, before ids are known.
        if !matches!(hint, "alow_ips" | "paused") {
            assert!(
                stderr.contains("broken-key"),
                "want the key id in: {stderr}"
            );
        }
    }
}

#[test]
fn check_names_the_key_id_for_a_duplicate_and_a_missing_target() {
    let config = "[[targets]]\nname = \"main\"\nupstream = \"http://127.0.0.1:9\"\n\n\
                  [[keys]]\nid = \"twice\"\nsecret = \"a\"\n\n\
                  [[keys]]\nid = \"twice\"\nsecret = \"b\"\n\n\
                  [[keys]]\nid = \"lost\"\nsecret = \"c\"\ntargets = [\"staging\"]\n";
    let out = keygate(&["check", "--config", "/dev/stdin"], config.as_bytes());
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("/dev/stdin:10:6"), "{stderr}");
    assert!(stderr.contains("twice"), "{stderr}");
    assert!(stderr.contains("/dev/stdin:16:12"), "{stderr}");
    assert!(
        stderr.contains("lost") && stderr.contains("staging"),
        "{stderr}"
    );
}

#[test]
fn check_fails_on_a_missing_file_and_names_it() {
    let out = keygate(&["check", "--config", "/nonexistent/keygate.toml"], b"");
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("/nonexistent/keygate.toml"));
}

// --- keys -----------------------------------------------------------------------------------

/// Runs `keys generate` and returns (secret, hash line), checking both.
fn generate(args: &[&str], prefix: &str) -> (String, String) {
    let out = keygate(args, b"");
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout:?}");
    let secret = lines[0];
    // The prefix, 32 random base62 characters and their checksum.
    assert_generated_secret(secret, prefix);
    assert_eq!(lines[1], format!("hash = \"{}\"", hash_of(secret)));
    // The secret is not on stderr (only advice is).
    assert!(!text(&out.stderr).contains(secret));
    (secret.to_owned(), lines[1].to_owned())
}

#[test]
fn keys_generate_prints_a_prefixed_secret_and_its_hash_line() {
    let (a, hash_a) = generate(&["keys", "generate", "--prefix", "kg_"], "kg_");
    let (b, hash_b) = generate(&["keys", "generate", "--prefix", "kg_"], "kg_");
    assert_ne!(a, b, "two secrets must differ");
    assert_ne!(hash_a, hash_b);
    generate(
        &["keys", "generate", "--prefix", "acme_live_"],
        "acme_live_",
    );
    // The prefix defaults to kg_.
    generate(&["keys", "generate"], "kg_");
}

#[tokio::test]
async fn a_generated_hash_line_pastes_into_a_config_that_accepts_the_secret() {
    let (secret, hash_line) = generate(&["keys", "generate", "--prefix", "kg_"], "kg_");
    let up = start_upstream("main").await;
    let config = format!(
        "[[targets]]\nname = \"main\"\nupstream = \"http://{}\"\n\n[[keys]]\nid = \"new\"\n{hash_line}\n",
        up.addr
    );
    let out = keygate(&["check", "--config", "/dev/stdin"], config.as_bytes());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let addr = start_keygate(&config).await;
    let resp = get(addr, "/r", &[("x-api-key", &secret)]).await;
    assert!(!resp.text().contains(&secret));
    assert_eq!(resp.echo().one("x-keygate-key-id"), Some("new"));
}

#[test]
fn keys_hash_reads_stdin_and_prints_sha256_hex() {
    const TEST: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    for input in [&b"test"[..], b"test\n", b"test\r\n"] {
        let out = keygate(&["keys", "hash"], input);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), format!("{TEST}\n"), "input {input:?}");
    }
    let out = keygate(&["keys", "hash"], SECRET.as_bytes());
    let stdout = text(&out.stdout);
    let line = stdout.trim_end();
    assert_eq!(line, hash_of(SECRET));
    let hex = line.strip_prefix("sha256:").unwrap();
    assert_eq!(hex.len(), 64);
    assert!(
        hex.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
}

#[test]
fn keys_hash_refuses_empty_input() {
    let out = keygate(&["keys", "hash"], b"");
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
}

// --- run ------------------------------------------------------------------------------------

/// `keygate run` on `listen = "127.0.0.1:0"`: it logs where it listens, serves real requests
/// (including hostile ones) without dying, and never logs a secret, not even at debug level.
#[tokio::test]
async fn run_listens_serves_and_never_logs_a_secret() {
    let up = start_upstream("main").await;
    let config = TempConfig::new(
        "run",
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n{}",
            one_target(up.addr)
        ),
    );
    let mut child = tokio::process::Command::new(BIN)
        .args(["run", "--config", config.path()])
        .env_remove("KEYGATE_CONFIG")
        .env_remove("RUST_LOG")
        .env("KEYGATE_LOG", "debug")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = Vec::new();
    let mut addr = None;
    for _ in 0..100 {
        let Some(line) = within_for(
            Duration::from_secs(20),
            "keygate's startup log",
            stderr.next_line(),
        )
        .await
        .unwrap() else {
            panic!("keygate exited before listening: {log:#?}");
        };
        let found = line
            .contains("keygate listening")
            .then(|| crate::harness::logged_addr(&line));
        log.push(line);
        if found.is_some() {
            addr = found;
            break;
        }
    }
    let addr = addr.unwrap_or_else(|| panic!("no \"keygate listening\" line: {log:#?}"));
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");

    // Real traffic: good, denied, and hostile.
    assert_eq!(
        get_ok(addr, "/r").await.echo().one("x-keygate-key-id"),
        Some("primary")
    );
    let echo = get(addr, &format!("/r?a=1&api_key={SECRET}"), &[])
        .await
        .echo();
    assert_eq!(echo.uri, "/r?a=1");
    assert_problem(
        &get(addr, "/r?api_key=kg_wrong_guess_0123456789", &[]).await,
        403,
        "key_invalid",
    );
    assert_problem(
        &get(addr, &format!("/r?api_key={SECRET_INACTIVE}"), &[]).await,
        403,
        "key_inactive",
    );
    let huge = "k".repeat(8 * 1024);
    assert_problem(
        &get(addr, "/r", &[("x-api-key", &huge)]).await,
        403,
        "key_invalid",
    );
    let raw =
        b"GET /r?api_key=%zz% HTTP/1.1\r\nHost: gw\r\nX-Odd: \xff\xfe\r\nConnection: close\r\n\r\n";
    assert_problem(&raw_exchange(addr, raw).await, 403, "key_invalid");
    assert_eq!(get_ok(addr, "/after").await.echo().uri, "/after");
    assert!(child.try_wait().unwrap().is_none(), "keygate exited");

    child.start_kill().unwrap();
    within("keygate exit", child.wait()).await.unwrap();
    for _ in 0..10_000 {
        match within("rest of the log", stderr.next_line()).await {
            Ok(Some(line)) => log.push(line),
            _ => break,
        }
    }
    let log = log.join("\n");
    assert!(log.contains("denied"), "debug logging was not on: {log}");
    assert!(!log.contains("panicked"), "{log}");
    for secret in [
        SECRET,
        SECRET_INACTIVE,
        SECRET_LONER,
        "kg_wrong_guess_0123456789",
    ] {
        assert!(!log.contains(secret), "a secret was logged:\n{log}");
    }
}

#[test]
fn run_fails_on_an_invalid_config() {
    let config = TempConfig::new("bad-run", "[server]\nlisten = \"127.0.0.1:0\"\n");
    let out = keygate(&["run", "--config", config.path()], b"");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(config.path()),
        "{}",
        text(&out.stderr)
    );
}
