//! `config::parse_with` (the pipeline behind `config::parse`, `load`, reload and the admin
//! store) on arbitrary UTF-8.
//!
//! Input: the main config's text; after the first NUL byte (which TOML text cannot contain),
//! the keys file's text. The keys text is always passed in (empty without a NUL), so a
//! `keys_file = "/dev/zero"` the fuzzer writes never reads the disk: `parse(text, path)` is
//! `parse_with(text, path, None)`, which differs only in reading that file.
//!
//! Asserts, beyond no panic: an `Invalid` error holds at least one error (its Display is never
//! empty); every problem (error or warning) displays as `file:line:column: ...`, with line and
//! column at least 1 and line within the file, naming the config file or the keys file it
//! names; the error's Display starts with a file name.
#![no_main]

use std::path::{Path, PathBuf};

use keygate::config::{self, ConfigError, LoadError, Severity};
use libfuzzer_sys::fuzz_target;

const MAIN: &str = "/fuzz/keygate.toml";

/// The keys file `main` names, when `main` is TOML that names one.
fn keys_path(main: &str) -> Option<PathBuf> {
    let table: toml::Table = toml::from_str(main).ok()?;
    let k = table.get("keys_file")?.as_str()?;
    Some(config::validate::relative_to(Path::new(MAIN), k))
}

fn check(p: &ConfigError, main: &str, keys: &str, keys_file: &Option<PathBuf>, whole: bool) {
    let shown = p.to_string();
    let prefix = format!("{}:{}:{}: ", p.file.display(), p.line, p.column);
    assert!(shown.starts_with(&prefix), "{shown:?}");
    assert!(p.line >= 1 && p.column >= 1, "{shown:?}");
    let main_lines = main.matches('\n').count() + 1;
    let keys_lines = keys.matches('\n').count() + 1;
    let lines = if p.file == Path::new(MAIN) {
        // A keys file may be the config file itself.
        if keys_file.as_deref() == Some(Path::new(MAIN)) || !whole {
            main_lines.max(keys_lines)
        } else {
            main_lines
        }
    } else {
        // Without a whole-file parse we cannot say which keys file it named.
        if whole {
            assert_eq!(Some(&p.file), keys_file.as_ref(), "{shown:?}");
        }
        keys_lines
    };
    assert!(p.line <= lines, "{shown:?}");
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (main, keys) = text.split_once('\0').unwrap_or((text, ""));
    let keys_file = keys_path(main);
    let whole = toml::from_str::<toml::Table>(main).is_ok();
    match config::parse_with(main, Path::new(MAIN), Some(keys)) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                assert_eq!(w.severity, Severity::Warning);
                check(w, main, keys, &keys_file, whole);
            }
        }
        Err(e @ LoadError::Invalid(_)) => {
            let LoadError::Invalid(problems) = &e else {
                unreachable!()
            };
            assert!(
                problems.iter().any(|p| p.severity == Severity::Error),
                "Invalid without an error: {problems:?}"
            );
            for p in problems {
                check(p, main, keys, &keys_file, whole);
            }
            let shown = e.to_string();
            let first = problems
                .iter()
                .find(|p| p.severity == Severity::Error)
                .unwrap();
            assert!(
                shown.starts_with(&format!("{}:", first.file.display())),
                "{shown:?}"
            );
        }
        Err(e @ LoadError::Io { .. }) => panic!("read the disk with the keys text given: {e}"),
    }
});
