//! Hot reload over real sockets with the real file watcher: revocation by each kind of file change, bad files keeping the last good config, rate-limit buckets across reloads, requests in flight, SIGHUP and the listen address.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Response, StatusCode};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::harness::live::*;
use crate::harness::*;

/// Stays in every config of a test.
const KEPT: &str = "kg_live_kept_a2VwdFNlY3JldEZvclJlbG9hZFRlc3RzMDE";
/// Removed by the change under test.
const REVOKED: &str = "kg_live_revoked_cmV2b2tlZFNlY3JldEZvclJlbG9hZDAx";
/// Added by the change under test.
const NEWCOMER: &str = "kg_live_new_bmV3Y29tZXJTZWNyZXRGb3JSZWxvYWQwMQ";
/// A key with its own rate limit.
const METERED: &str = "kg_live_metered_bWV0ZXJlZFNlY3JldEZvclJlbG9hZDAx";
/// A key whose consumer has a rate limit.
const MEMBER: &str = "kg_live_member_bWVtYmVyU2VjcmV0Rm9yUmVsb2FkVGVzdA";

fn kept() -> String {
    key_toml("kept", KEPT, "")
}

fn revoked() -> String {
    key_toml("revoked", REVOKED, "")
}

fn newcomer() -> String {
    key_toml("newcomer", NEWCOMER, "")
}

/// A config directory `name` holding `keygate.toml` with `keys`, every target on a fresh echo
/// upstream: the directory, the file and the upstream.
async fn config_file(name: &str, keys: &str) -> (TempDir, PathBuf, Upstream) {
    let dir = TempDir::new(name);
    let path = dir.join("keygate.toml");
    let up = start_upstream("main").await;
    std::fs::write(&path, plain_config(up.addr, keys)).unwrap();
    (dir, path, up)
}

/// A config directory holding `keygate.toml`, an echo upstream, and keygate serving the file
/// with its real reloader.
struct Live {
    /// First, so that keygate stops before its directory goes.
    _gate: Gate,
    _dir: TempDir,
    path: PathBuf,
    up: Upstream,
    addr: SocketAddr,
}

impl Live {
    async fn start(name: &str, keys: &str) -> Live {
        let (dir, path, up) = config_file(name, keys).await;
        let gate = start_live(&path);
        Live {
            addr: gate.addr,
            _gate: gate,
            _dir: dir,
            path,
            up,
        }
    }

    fn config(&self, keys: &str) -> String {
        plain_config(self.up.addr, keys)
    }

    fn write(&self, keys: &str, how: Edit) {
        write_file(&self.path, self.config(keys).as_bytes(), how);
    }
}

/// Asserts that `secret` reaches the upstream as key `id`.
async fn assert_admitted(addr: SocketAddr, secret: &str, id: &str) {
    let echo = call(addr, secret).await.echo();
    assert_eq!(echo.one("x-keygate-key-id"), Some(id));
}

// --- revocation by each kind of file change ---------------------------------------------------

/// The key works; the file changes (by `how`) to drop it; the key gets 403 key_invalid while the
/// other key keeps working.
async fn revocation_by(how: Edit, name: &str) {
    let live = Live::start(name, &(kept() + &revoked())).await;
    assert_admitted(live.addr, REVOKED, "revoked").await;
    assert_admitted(live.addr, KEPT, "kept").await;

    live.write(&kept(), how);
    let resp = until_status(live.addr, REVOKED, 403, "key_invalid").await;
    assert_problem(&resp, 403, "key_invalid");
    assert_admitted(live.addr, KEPT, "kept").await;
    assert_no_keygate_panic();
}

#[tokio::test]
async fn an_in_place_write_revokes_a_key() {
    revocation_by(Edit::InPlace, "in-place").await;
}

#[tokio::test]
async fn a_truncate_and_write_revokes_a_key() {
    revocation_by(Edit::Truncate, "truncate").await;
}

#[tokio::test]
async fn a_write_temp_then_rename_revokes_a_key() {
    revocation_by(Edit::Rename, "rename").await;
}

/// Kubernetes mounts a ConfigMap as `keygate.toml -> ..data/keygate.toml`, `..data -> ..<ts>`,
/// and updates it by writing a new `..<ts>` directory, pointing `..data_tmp` at it and renaming
/// `..data_tmp` over `..data`; the file keygate was started with never changes itself.
#[tokio::test]
async fn a_kubernetes_configmap_symlink_swap_revokes_a_key() {
    use std::os::unix::fs::symlink;

    let dir = TempDir::new("configmap");
    let up = start_upstream("main").await;
    let version = |name: &str, keys: &str| {
        let d = dir.join(name);
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("keygate.toml"), plain_config(up.addr, keys)).unwrap();
    };
    version("..2026_a", &(kept() + &revoked()));
    symlink("..2026_a", dir.join("..data")).unwrap();
    symlink("..data/keygate.toml", dir.join("keygate.toml")).unwrap();
    let swap = |from: &str, to: &str| {
        symlink(to, dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        std::fs::remove_dir_all(dir.join(from)).unwrap();
    };

    let gate = start_live(&dir.join("keygate.toml"));
    let addr = gate.addr;
    assert_admitted(addr, REVOKED, "revoked").await;
    assert_admitted(addr, KEPT, "kept").await;

    version("..2026_b", &kept());
    swap("..2026_a", "..2026_b");
    let resp = until_status(addr, REVOKED, 403, "key_invalid").await;
    assert_problem(&resp, 403, "key_invalid");
    assert_admitted(addr, KEPT, "kept").await;

    // The watch survives the swap: a second one is seen too.
    version("..2026_c", &(kept() + &newcomer()));
    swap("..2026_b", "..2026_c");
    until_status(addr, NEWCOMER, 200, "").await;
    assert_admitted(addr, NEWCOMER, "newcomer").await;
    assert_problem(&call(addr, REVOKED).await, 403, "key_invalid");
    assert_no_keygate_panic();
}

// --- a bad file keeps the last good config ----------------------------------------------------

/// Serves `kept` + `revoked`; `break_it` leaves a bad file that, were it applied, would revoke
/// `revoked` and admit `newcomer`. For [`HOLD_WINDOW`] nothing changes; then `fix_it` leaves a
/// good file with that very change, and it is picked up.
async fn bad_file_keeps_the_last_good_config(
    name: &str,
    break_it: impl FnOnce(&Live),
    fix_it: impl FnOnce(&Live),
) {
    let live = Live::start(name, &(kept() + &revoked())).await;
    assert_admitted(live.addr, REVOKED, "revoked").await;

    break_it(&live);
    keeps_status(
        live.addr,
        &[
            (KEPT, 200, ""),
            (REVOKED, 200, ""),
            (NEWCOMER, 403, "key_invalid"),
        ],
    )
    .await;

    fix_it(&live);
    until_status(live.addr, NEWCOMER, 200, "").await;
    assert_admitted(live.addr, NEWCOMER, "newcomer").await;
    assert_problem(&call(live.addr, REVOKED).await, 403, "key_invalid");
    assert_admitted(live.addr, KEPT, "kept").await;
    assert_no_keygate_panic();
}

/// The good file the fixes write.
fn fixed(live: &Live) {
    live.write(&(kept() + &newcomer()), Edit::Rename);
}

#[tokio::test]
async fn a_syntax_error_keeps_the_last_good_config_and_the_fix_is_picked_up() {
    bad_file_keeps_the_last_good_config(
        "syntax",
        |live| {
            let bad = live.config(&(kept() + &newcomer())) + "\n[[keys]\nid = \"broken\"\n";
            write_file(&live.path, bad.as_bytes(), Edit::Truncate);
        },
        fixed,
    )
    .await;
}

#[tokio::test]
async fn a_validation_error_keeps_the_last_good_config_and_the_fix_is_picked_up() {
    bad_file_keeps_the_last_good_config(
        "invalid",
        |live| {
            // Parses, but names a consumer that does not exist.
            let ghost = key_toml(
                "ghost",
                "kg_live_ghost_secret_0000000001",
                "consumer = \"nobody\"",
            );
            live.write(&(kept() + &newcomer() + &ghost), Edit::Rename);
        },
        fixed,
    )
    .await;
}

#[tokio::test]
async fn a_deleted_file_keeps_the_last_good_config_and_a_new_file_is_picked_up() {
    bad_file_keeps_the_last_good_config(
        "deleted",
        |live| std::fs::remove_file(&live.path).unwrap(),
        fixed,
    )
    .await;
}

/// A writer that truncates and then writes in two parts: after the first part the file ends in
/// the middle of a string. Finishing the write is the fix.
#[tokio::test]
async fn a_half_written_file_keeps_the_last_good_config_and_the_finished_file_is_picked_up() {
    let whole: Arc<Mutex<Vec<u8>>> = Arc::default();
    let cut: Arc<Mutex<usize>> = Arc::default();
    let (whole2, cut2) = (whole.clone(), cut.clone());
    bad_file_keeps_the_last_good_config(
        "half",
        move |live| {
            let text = live.config(&(newcomer() + &kept()));
            // In the middle of the last key's hash: an unterminated string.
            let at = text.rfind("sha256:").unwrap() + 20;
            std::fs::write(&live.path, &text.as_bytes()[..at]).unwrap();
            *whole2.lock().unwrap() = text.into_bytes();
            *cut2.lock().unwrap() = at;
        },
        move |live| {
            use std::io::Write as _;
            let rest = whole.lock().unwrap()[*cut.lock().unwrap()..].to_vec();
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&live.path)
                .unwrap();
            f.write_all(&rest).unwrap();
            f.sync_all().unwrap();
        },
    )
    .await;
}

// --- rate-limit buckets across reloads --------------------------------------------------------

/// Rate-limited keys: `metered` (its own 2/minute) and `member` (of consumer `metered-co`,
/// 2/minute), plus `kept`.
fn metered_keys(metered_rate: &str) -> String {
    format!(
        "[[consumers]]\nid = \"metered-co\"\nrate_limit = \"2/minute\"\n\n{}{}{}",
        kept(),
        key_toml(
            "metered",
            METERED,
            &format!("rate_limit = \"{metered_rate}\"")
        ),
        key_toml("member", MEMBER, "consumer = \"metered-co\""),
    )
}

/// Spends a fresh 2/minute bucket: two 200s, then 429 rate_limited.
async fn exhaust(addr: SocketAddr, secret: &str) {
    for i in 0..2 {
        let resp = call(addr, secret).await;
        assert_eq!(resp.status, StatusCode::OK, "request {i}: {}", resp.text());
    }
    assert_problem(&call(addr, secret).await, 429, "rate_limited");
}

/// An unrelated edit (a key added) must not hand every key a fresh burst: the buckets of the
/// keys and consumers that stay are the same buckets.
#[tokio::test]
async fn rate_limit_buckets_survive_an_unrelated_edit() {
    let live = Live::start("buckets-kept", &metered_keys("2/minute")).await;
    exhaust(live.addr, METERED).await;
    exhaust(live.addr, MEMBER).await;

    live.write(&(metered_keys("2/minute") + &newcomer()), Edit::Rename);
    until_status(live.addr, NEWCOMER, 200, "").await;

    assert_problem(&call(live.addr, METERED).await, 429, "rate_limited");
    assert_problem(&call(live.addr, MEMBER).await, 429, "rate_limited");
    assert_admitted(live.addr, KEPT, "kept").await;
    assert_no_keygate_panic();
}

/// The contract (`limits::carry_over`'s doc): a key whose `rate_limit` changes gets a fresh
/// bucket of the new rate, i.e. a full new burst; the unchanged ones in the same edit keep theirs.
/// And the reload after it still happens: a rate change used to deadlock the reload thread
/// (a dashmap read guard held across an insert), after which no edit was ever applied.
#[tokio::test]
async fn a_changed_rate_limit_gets_a_fresh_bucket() {
    let live = Live::start("buckets-changed", &metered_keys("2/minute")).await;
    exhaust(live.addr, METERED).await;
    exhaust(live.addr, MEMBER).await;

    live.write(&metered_keys("3/minute"), Edit::Rename);
    // Until the reload the old, empty bucket answers 429 (and takes nothing from the new one).
    let first = until_status(live.addr, METERED, 200, "").await;
    assert_eq!(
        first.header("ratelimit-limit"),
        Some("3"),
        "{:?}",
        first.headers
    );
    assert_eq!(first.header("ratelimit-remaining"), Some("2"));
    for i in 0..2 {
        let resp = call(live.addr, METERED).await;
        assert_eq!(resp.status, StatusCode::OK, "request {i} of the new burst");
    }
    assert_problem(&call(live.addr, METERED).await, 429, "rate_limited");
    // The consumer's rate did not change: its bucket is still empty.
    assert_problem(&call(live.addr, MEMBER).await, 429, "rate_limited");

    // And reloading goes on: the next edit (a revocation) is applied too.
    let without_kept = metered_keys("3/minute").replace(&kept(), "");
    live.write(&without_kept, Edit::Rename);
    until_status(live.addr, KEPT, 403, "key_invalid").await;
    assert_no_keygate_panic();
}

/// Behaviour of src: the state of a removed key is dropped, so a key removed and then added
/// back (same id, same rate) starts with a fresh, full bucket.
#[tokio::test]
async fn a_removed_then_readded_key_starts_with_a_fresh_bucket() {
    let live = Live::start("buckets-readded", &metered_keys("2/minute")).await;
    exhaust(live.addr, METERED).await;

    let without = format!(
        "[[consumers]]\nid = \"metered-co\"\nrate_limit = \"2/minute\"\n\n{}{}",
        kept(),
        key_toml("member", MEMBER, "consumer = \"metered-co\""),
    );
    live.write(&without, Edit::Rename);
    until_status(live.addr, METERED, 403, "key_invalid").await;

    live.write(&metered_keys("2/minute"), Edit::Rename);
    let first = eventually("the key to be back", async || {
        let resp = call(live.addr, METERED).await;
        (resp.status != StatusCode::FORBIDDEN).then_some(resp)
    })
    .await;
    assert_eq!(
        first.status,
        StatusCode::OK,
        "a re-added key starts with a fresh bucket: {}",
        first.text()
    );
    assert_eq!(first.header("ratelimit-remaining"), Some("1"));
    assert_eq!(call(live.addr, METERED).await.status, StatusCode::OK);
    assert_problem(&call(live.addr, METERED).await, 429, "rate_limited");
    assert_no_keygate_panic();
}

// --- a request in flight ----------------------------------------------------------------------

/// A request admitted before a revocation finishes with the snapshot it started with; the next
/// request with that key, even on the same connection, sees the new one.
#[tokio::test]
async fn a_request_in_flight_finishes_with_the_snapshot_it_started_with() {
    let (arrived_tx, mut arrived) = mpsc::channel::<()>(1);
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let release_rx = Arc::new(Mutex::new(Some(release_rx)));
    let up = start_upstream_with(move |req, _peer| {
        let hold = (req.uri().path() == "/hold").then(|| release_rx.lock().unwrap().take());
        let arrived_tx = arrived_tx.clone();
        async move {
            if let Some(rx) = hold.flatten() {
                let _ = arrived_tx.try_send(());
                let _ = rx.await;
                return Response::new(full("held"));
            }
            Response::new(full("quick"))
        }
    })
    .await;
    let dir = TempDir::new("in-flight");
    let path = dir.join("keygate.toml");
    std::fs::write(&path, plain_config(up.addr, &(kept() + &revoked()))).unwrap();
    let gate = start_live(&path);
    let addr = gate.addr;

    let mut conn = H1::connect(addr).await;
    let in_flight = tokio::spawn(async move {
        let resp = conn
            .send(request("GET", "/hold", &[("x-api-key", REVOKED)], empty()))
            .await;
        (resp, conn)
    });
    within("the held request to reach the upstream", arrived.recv())
        .await
        .unwrap();

    replace_file(&path, plain_config(up.addr, &kept()).as_bytes());
    until_status(addr, REVOKED, 403, "key_invalid").await;

    release_tx.send(()).unwrap();
    let (resp, mut conn) = within("the held request", in_flight).await.unwrap();
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(resp.text(), "held");
    let next = conn
        .send(request("GET", "/hold", &[("x-api-key", REVOKED)], empty()))
        .await;
    assert_problem(&next, 403, "key_invalid");
    assert_no_keygate_panic();
}

// --- the binary: SIGHUP, the listen address, the error log ------------------------------------

/// The periodic content check runs this long after keygate starts (`reload::PERIODIC_CHECK`).
const PERIODIC_CHECK: Duration = Duration::from_secs(5);

/// SIGHUP reloads, logged as generation 2. The change it applies is one the watcher cannot see:
/// keygate watches the directory of the path it was given, a symlink, while the file it points
/// to lives in another directory and is edited there.
#[tokio::test]
async fn sighup_reloads_and_applies_a_change_the_watcher_cannot_see() {
    let real_dir = TempDir::new("hup-real");
    let link_dir = TempDir::new("hup-link");
    let real = real_dir.join("real.toml");
    let link = link_dir.join("keygate.toml");
    let up = start_upstream("main").await;
    std::fs::write(&real, plain_config(up.addr, &(kept() + &revoked()))).unwrap();
    std::os::unix::fs::symlink(&real, &link).unwrap();

    // The first periodic check comes at least PERIODIC_CHECK after this.
    let started = Instant::now();
    let mut kg = Process::start_proxy(&link).await;
    assert_admitted(kg.proxy, KEPT, "kept").await;
    assert_admitted(kg.proxy, REVOKED, "revoked").await;

    std::fs::write(&real, plain_config(up.addr, &kept())).unwrap();
    let margin = Duration::from_millis(500);
    let blind_checked = started.elapsed() + HOLD_WINDOW + margin < PERIODIC_CHECK;
    if blind_checked {
        // Before the first periodic check, only SIGHUP can apply this edit.
        keeps_status(kg.proxy, &[(KEPT, 200, ""), (REVOKED, 200, "")]).await;
    } else {
        eprintln!("slow start: skipped the check that the watcher does not see the edit");
    }

    kg.hangup();
    until_status(kg.proxy, REVOKED, 403, "key_invalid").await;
    let by_signal = started.elapsed() + margin < PERIODIC_CHECK;
    let reloaded = |l: &str| l.contains("config reloaded");
    let line = kg
        .wait_log("a reload by SIGHUP", |l| {
            reloaded(l) && l.contains("trigger=Signal")
        })
        .await;
    if blind_checked && by_signal {
        assert!(line.contains("generation=2"), "{line}");
        assert!(line.contains("keys_removed=1"), "{line}");
        assert!(line.contains("keys_added=0"), "{line}");
        assert!(line.contains("elapsed="), "{line}");
    }

    // SIGHUP reloads even an unchanged file, and logs it once.
    let before = kg.lines(reloaded).len() as u64;
    kg.hangup();
    let want = format!("generation={}", before + 2);
    let line = kg
        .wait_log(&want, |l| reloaded(l) && l.contains(&want))
        .await;
    assert!(line.contains("trigger=Signal"), "{line}");
    assert!(line.contains("keys_removed=0"), "{line}");
    assert_admitted(kg.proxy, KEPT, "kept").await;
    assert_problem(&call(kg.proxy, REVOKED).await, 403, "key_invalid");
    kg.assert_running();
    let log = kg.stop().await;
    assert_eq!(
        log.iter().filter(|l| l.contains(&want)).count(),
        1,
        "{log:#?}"
    );
}

/// Runs the binary on `first` (keys `kept` and `revoked`), then
/// rewrites the file to `moved(elsewhere)` (without `revoked`), where `elsewhere` is an address
/// reserved (bound) but not listening, so nobody else can take it. Waits until the rest of the
/// change applied (the revocation) and for the log line `marker` finds; returns the process,
/// that line and `elsewhere`.
async fn move_a_listener(
    name: &str,
    first: String,
    moved: impl Fn(SocketAddr) -> String,
    marker: &str,
) -> (Process, String, SocketAddr) {
    let dir = TempDir::new(name);
    let path = dir.join("keygate.toml");
    std::fs::write(&path, first).unwrap();
    let mut kg = Process::start_proxy(&path).await;
    assert_admitted(kg.proxy, REVOKED, "revoked").await;

    let reserved = tokio::net::TcpSocket::new_v4().unwrap();
    reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let elsewhere = reserved.local_addr().unwrap();
    replace_file(&path, moved(elsewhere).as_bytes());

    until_status(kg.proxy, REVOKED, 403, "key_invalid").await;
    let line = kg
        .wait_log("the restart warning", |l| l.contains(marker))
        .await;
    assert!(line.contains("restart"), "{line}");
    assert!(
        TcpStream::connect(elsewhere).await.is_err(),
        "something listens on {elsewhere}"
    );
    kg.assert_running();
    (kg, line, elsewhere)
}

/// A changed `listen` is logged as needing a restart and otherwise ignored: the old listener
/// keeps serving, the rest of the change applies, nothing listens on the new address.
#[tokio::test]
async fn a_changed_listen_address_is_logged_as_needing_a_restart_and_ignored() {
    let up = start_upstream("main").await;
    let upstream = format!("http://{}", up.addr);
    let first = plain_config(up.addr, &(kept() + &revoked()));
    let moved = |elsewhere: SocketAddr| {
        let server = server_toml(&elsewhere.to_string(), "");
        format!("{server}{}{}", target_toml("main", &upstream, ""), kept())
    };
    let (mut kg, line, elsewhere) = move_a_listener("listen", first, moved, "listen changed").await;
    // `running` names the configured address ("127.0.0.1:0" here), not the bound one.
    assert!(line.contains(&format!("configured={elsewhere}")), "{line}");
    assert_admitted(kg.proxy, KEPT, "kept").await;
    kg.assert_running();
    kg.stop().await;
}

/// A changed `[admin] listen` is logged as needing a restart too; the rest of the file applies.
#[tokio::test]
async fn a_changed_admin_listen_address_is_logged_as_needing_a_restart() {
    let up = start_upstream("main").await;
    let admin = |listen: &str| format!("\n[admin]\nlisten = \"{listen}\"\n");
    let first = plain_config(up.addr, &(kept() + &revoked())) + &admin("127.0.0.1:0");
    let moved =
        |elsewhere: SocketAddr| plain_config(up.addr, &kept()) + &admin(&elsewhere.to_string());
    let marker = "[admin] listen changed";
    let (kg, line, elsewhere) = move_a_listener("admin-listen", first, moved, marker).await;
    assert!(line.contains(&elsewhere.to_string()), "{line}");
    kg.stop().await;
}

/// A change made after the config was read but before the watch was set up raises no event;
/// it is still picked up at once, not at the next periodic check (5 s away).
#[tokio::test]
async fn a_change_before_the_watch_starts_is_picked_up_at_once() {
    let (_dir, path, up) = config_file("before-watch", &(kept() + &revoked())).await;
    let gateway = load_quiet(&path).unwrap();
    // The revocation lands between `load` and `serve`.
    replace_file(&path, plain_config(up.addr, &kept()).as_bytes());
    let gate = serve_live(gateway);
    // `until_status` gives up after 3 s: before the periodic check could have done it.
    until_status(gate.addr, REVOKED, 403, "key_invalid").await;
    assert_admitted(gate.addr, KEPT, "kept").await;
}

/// A bad file is logged once, with file, line and column; writing the same bad content again
/// logs nothing more; the next good file is reloaded.
#[tokio::test]
async fn a_bad_file_is_logged_once_with_file_line_and_column() {
    let (_dir, path, up) = config_file("error-log", &(kept() + &revoked())).await;
    let mut kg = Process::start_proxy(&path).await;
    assert_admitted(kg.proxy, REVOKED, "revoked").await;

    let good = plain_config(up.addr, &kept());
    let bad = format!(
        "{good}[[keys]]\nid = \"ghost\"\nsecret = \"kg_live_ghost_0001\"\nconsumer = \"nobody\"\n"
    );
    let line = bad.lines().count();
    let position = format!("{}:{line}:12", path.display());
    replace_file(&path, bad.as_bytes());
    let failed = |l: &str| l.contains("config reload failed");
    kg.wait_log("the reload error", failed).await;
    let log = kg.log().join("\n");
    assert!(log.contains(&position), "want {position} in:\n{log}");
    assert!(log.contains("nobody"), "{log}");

    // The same bad content again: nothing new to say.
    replace_file(&path, bad.as_bytes());
    holds_for("one error line", async || match kg.lines(failed).len() {
        1 => Ok(()),
        n => Err(format!("{n} error lines")),
    })
    .await;
    assert_admitted(kg.proxy, REVOKED, "revoked").await;

    replace_file(&path, good.as_bytes());
    until_status(kg.proxy, REVOKED, 403, "key_invalid").await;
    kg.wait_log("the reload", |l| l.contains("config reloaded"))
        .await;
    kg.assert_running();
    let log = kg.stop().await;
    assert_eq!(log.iter().filter(|l| failed(l)).count(), 1, "{log:#?}");
}
