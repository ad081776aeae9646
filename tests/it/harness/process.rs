//! keygate as the real binary, for what only a process shows: signals, exit codes, stderr and
//! stdout, restarts. The one child-process wrapper of the tests.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Instant;

use tokio::io::{AsyncBufReadExt as _, BufReader};

use super::admin::{ADMIN_SECRET, Api, poll};
use super::*;

/// The keygate binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_keygate");
/// Log lines kept from a child, at most.
const MAX_LOG_LINES: usize = 100_000;
/// Pause between two looks at the log.
const POLL_EVERY: Duration = Duration::from_millis(10);
/// Most looks at the log a wait makes, whatever the clock says.
const MAX_PROBES: usize = 5_000;
/// The longest a wait for a log line may take.
const LOG_WAIT: Duration = Duration::from_secs(30);

/// A child's output, line by line, as a reader task collects it.
pub type Lines = Arc<Mutex<Vec<String>>>;

/// Collects what `from` writes, line by line (at most [`MAX_LOG_LINES`]), until it closes.
fn collect_lines(from: impl tokio::io::AsyncRead + Unpin + Send + 'static) -> Lines {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(from).lines();
        for _ in 0..MAX_LOG_LINES {
            match lines.next_line().await {
                Ok(Some(line)) => sink.lock().unwrap().push(line),
                _ => break,
            }
        }
    });
    log
}

/// `keygate run --config <config>` as a child process, its stderr (the log) collected line by
/// line. Killed when dropped.
pub struct Process {
    /// Where the proxy listens, from its `keygate listening` line.
    pub proxy: SocketAddr,
    /// Where the admin API listens, from its `admin API listening` line; `0.0.0.0:0` when
    /// started with [`Process::start_proxy`].
    pub admin: SocketAddr,
    child: tokio::process::Child,
    log: Lines,
    /// Its stdout, line by line, when started with [`Process::start_with`] asking for it.
    stdout: Option<Lines>,
}

impl Process {
    /// Starts the binary (log level `level`, no colours; stdout collected when `stdout`, else
    /// discarded) without waiting for anything.
    fn spawn(config: &Path, level: &str, stdout: bool) -> Process {
        let mut child = tokio::process::Command::new(BIN)
            .args(["run", "--config"])
            .arg(config)
            .env_remove("KEYGATE_CONFIG")
            .env_remove("RUST_LOG")
            .env("KEYGATE_LOG", level)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(if stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run keygate");
        let log = collect_lines(child.stderr.take().unwrap());
        let stdout = child.stdout.take().map(collect_lines);
        let unset = SocketAddr::from(([0, 0, 0, 0], 0));
        Process {
            proxy: unset,
            admin: unset,
            child,
            log,
            stdout,
        }
    }

    /// Runs the binary on `config`, which has an admin API, and waits until it logs where both
    /// listeners are.
    pub async fn start(config: &Path) -> Process {
        Process::start_with(config, "info", false).await
    }

    /// [`Process::start`] at `KEYGATE_LOG=level`, collecting stdout too when `stdout`.
    pub async fn start_with(config: &Path, level: &str, stdout: bool) -> Process {
        let mut p = Process::spawn(config, level, stdout);
        p.admin = p.wait_addr("admin API listening").await;
        p.proxy = p.wait_addr("keygate listening").await;
        assert_ne!(p.admin.port(), p.proxy.port());
        p
    }

    /// Runs the binary on `config` (no admin API needed) and waits until it logs where the
    /// proxy listens.
    pub async fn start_proxy(config: &Path) -> Process {
        let mut p = Process::spawn(config, "info", false);
        p.proxy = p.wait_addr("keygate listening").await;
        p
    }

    /// Waits (bounded) for the log line containing `marker` and returns its `addr=`.
    pub async fn wait_addr(&mut self, marker: &str) -> SocketAddr {
        let line = self.wait_log(marker, |l| l.contains(marker)).await;
        logged_addr(&line)
    }

    /// Waits (bounded) for a log line that `pred` accepts and returns it.
    pub async fn wait_log(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        for _ in 0..MAX_PROBES {
            if let Some(line) = self.log().into_iter().find(|l| pred(l)) {
                return line;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("keygate exited ({status}) before {what}: {:#?}", self.log());
            }
            if start.elapsed() >= LOG_WAIT {
                break;
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
        panic!("no {what} within {LOG_WAIT:?}: {:#?}", self.log());
    }

    /// Every log line so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Log lines so far that `pred` accepts.
    pub fn lines(&self, pred: impl Fn(&str) -> bool) -> Vec<String> {
        self.log().into_iter().filter(|l| pred(l)).collect()
    }

    /// Its stdout lines so far (empty unless started asking for them).
    pub fn stdout(&self) -> Vec<String> {
        self.stdout
            .as_ref()
            .map(|o| o.lock().unwrap().clone())
            .unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("keygate has exited")
    }

    /// The admin API as the `admin` role.
    pub fn api(&self) -> Api {
        Api::new(self.admin, Some(ADMIN_SECRET))
    }

    /// Sends `signal` (e.g. `-HUP`) with `kill`.
    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} failed: {status}");
    }

    /// Sends SIGHUP.
    pub fn hangup(&self) {
        self.signal("-HUP");
    }

    /// Fails if the process has exited.
    #[track_caller]
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("keygate exited ({status}): {:#?}", self.log());
        }
    }

    /// Waits (bounded) until the readers of stderr and stdout have reached their ends.
    async fn drain(&self) {
        let (log, stdout) = (self.log.clone(), self.stdout.clone());
        // Each reader lets go of its lines at the end of its stream; `log` and `stdout` here
        // and in `self` are the other two holders.
        let readers_done = || {
            Arc::strong_count(&log) == 2
                && stdout.as_ref().is_none_or(|o| Arc::strong_count(o) == 2)
        };
        poll(
            Duration::from_secs(10),
            "keygate's output to end",
            async || readers_done().then_some(()),
        )
        .await;
    }

    /// Kills the process and waits for it; returns the whole log.
    pub async fn stop(mut self) -> Vec<String> {
        let _ = self.child.start_kill();
        within("keygate exit", self.child.wait()).await.unwrap();
        // The reader task ends at EOF and lets go of the log: wait (bounded) for its last lines.
        for _ in 0..200 {
            if Arc::strong_count(&self.log) == 1 {
                break;
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
        self.log()
    }

    /// Sends SIGTERM and waits (bounded) for the exit.
    pub async fn terminate(mut self) -> (ExitStatus, Vec<String>) {
        self.signal("-TERM");
        let exit = within("keygate's exit after SIGTERM", self.child.wait())
            .await
            .unwrap();
        (exit, self.log())
    }

    /// [`Process::terminate`], and asserts keygate exited 0 (the log in the failure).
    pub async fn terminate_cleanly(self) {
        let (status, log) = self.terminate().await;
        assert!(status.success(), "keygate exited {status}: {log:#?}");
    }

    /// [`Process::terminate`], then waits (bounded) until stderr and stdout are read to their
    /// end; returns the exit, every stderr line and every stdout line.
    pub async fn terminate_drained(mut self) -> (ExitStatus, Vec<String>, Vec<String>) {
        self.signal("-TERM");
        let exit = within("keygate's exit after SIGTERM", self.child.wait())
            .await
            .unwrap();
        self.drain().await;
        (exit, self.log(), self.stdout())
    }

    /// Waits (bounded) for an exit that the test's own signals caused.
    pub async fn wait_exit(mut self) -> (ExitStatus, Vec<String>) {
        let exit = within("keygate's exit", self.child.wait()).await.unwrap();
        (exit, self.log())
    }

    /// Sends SIGKILL and waits (bounded) for the exit.
    pub async fn kill(mut self) -> ExitStatus {
        self.child.start_kill().expect("SIGKILL");
        within("keygate's exit after SIGKILL", self.child.wait())
            .await
            .unwrap()
    }
}
