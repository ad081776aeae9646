//! The command line: `run`, `check`, `keys generate|hash|list|create|show|update|revoke|rotate`,
//! `consumers list|create|show|update|delete`.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config;
use crate::secret::{self, KeyHash};

/// Where the config is read from when neither `--config` nor `$KEYGATE_CONFIG` is given.
pub const DEFAULT_CONFIG: &str = "config/keygate.toml";

#[derive(Debug, Parser)]
#[command(
    name = "keygate",
    version,
    about = "An authenticating reverse proxy for HTTP APIs"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve: route, authenticate and forward requests.
    Run {
        #[arg(long, env = "KEYGATE_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a config file (use /dev/stdin to read standard input).
    Check {
        #[arg(long, env = "KEYGATE_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Make and hash secrets; list and change the keys in the keys file.
    Keys {
        #[command(subcommand)]
        command: Keys,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List and change the consumers in the keys file.
    Consumers {
        #[command(subcommand)]
        command: crate::manage::ConsumerCommand,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum Keys {
    /// Print a new random secret and the `hash = "sha256:…"` line to paste into the config.
    Generate {
        #[arg(long, default_value = "kg_")]
        prefix: String,
    },
    /// Read a secret on standard input and print its `sha256:…` hash.
    Hash,
    // Boxed: its flags make it ten times the size of the others.
    #[command(flatten)]
    Manage(Box<crate::manage::KeyCommand>),
}

/// `--config`, as every command takes it.
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The main config file (its `keys_file` is what changes).
    #[arg(long, env = "KEYGATE_CONFIG", default_value = DEFAULT_CONFIG, global = true)]
    pub config: PathBuf,
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => {
            init_tracing();
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => return fail(format_args!("cannot start the runtime: {e}")),
            };
            match runtime.block_on(crate::run(&config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(format_args!("{e:#}")),
            }
        }
        Command::Check { config } => check(&config),
        Command::Keys {
            command: Keys::Manage(cmd),
            config,
        } => match crate::manage::keys(&config.config, *cmd) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(format_args!("{e:#}")),
        },
        Command::Consumers { command, config } => {
            match crate::manage::consumers(&config.config, command) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(format_args!("{e:#}")),
            }
        }
        Command::Keys {
            command: Keys::Generate { prefix },
            ..
        } => match secret::generate(&prefix) {
            Ok(s) => {
                let hash = KeyHash::of(s.as_bytes());
                println!("{s}");
                println!("hash = \"{hash}\"");
                eprintln!("Give the secret to its owner now: keygate keeps only the hash.");
                ExitCode::SUCCESS
            }
            Err(e) => fail(format_args!("no randomness from the OS: {e}")),
        },
        Command::Keys {
            command: Keys::Hash,
            ..
        } => {
            let mut input = Vec::new();
            if let Err(e) = std::io::stdin().read_to_end(&mut input) {
                return fail(format_args!("cannot read standard input: {e}"));
            }
            // `echo secret | keygate keys hash` must hash "secret", not "secret\n".
            let secret = input.strip_suffix(b"\n").unwrap_or(&input);
            let secret = secret.strip_suffix(b"\r").unwrap_or(secret);
            if secret.is_empty() {
                return fail(format_args!("no secret on standard input"));
            }
            println!("{}", KeyHash::of(secret));
            ExitCode::SUCCESS
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match config::load(path) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("{w}");
            }
            if let Some(files) = &loaded.snapshot.server.tls
                && let Err(e) = crate::tls::load_certified_key(files)
            {
                eprintln!("{}: [server.tls]: {e}", path.display());
                return ExitCode::FAILURE;
            }
            println!("{}: ok: {}", path.display(), loaded.snapshot.summary());
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "{e}");
            ExitCode::FAILURE
        }
    }
}

fn fail(msg: std::fmt::Arguments<'_>) -> ExitCode {
    eprintln!("keygate: {msg}");
    ExitCode::FAILURE
}

/// Logs go to stderr; `KEYGATE_LOG` (or `RUST_LOG`) sets the filter, `info` by default.
fn init_tracing() {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("KEYGATE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}

/// Whether diagnostics on stderr get ANSI colours: only on a terminal (a file or journald would
/// keep the escape codes as text), and never when `NO_COLOR` is set to anything but the empty
/// string (<https://no-color.org>).
fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::colour;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(
            colour(true, Some(OsStr::new(""))),
            "an empty NO_COLOR is unset"
        );
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(true, Some(OsStr::new("0"))), "any value, even 0");
        assert!(!colour(false, None), "a file, a pipe, journald");
        assert!(!colour(false, Some(OsStr::new(""))));
        assert!(!colour(false, Some(OsStr::new("1"))));
    }
}
