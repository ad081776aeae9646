//! The defaults `config/keygate.toml` documents are the defaults keygate applies.
//!
//! The example file writes most settings out with their default (`idle_timeout = "60s"  #
//! default "60s"`). Every such line is taken out, and the commented `[cluster]` table's
//! `# default` lines are put in, and the config keygate builds from the file without them must
//! be the one it builds from the file with them. So a changed default constant, or a comment
//! that no longer tells the truth, fails here.

use std::path::{Path, PathBuf};

/// A line that writes `key = value` and documents `# default value…` (the same value).
fn documents_its_default(line: &str) -> bool {
    let line = line.trim_start().trim_start_matches('#').trim_start();
    let Some((setting, comment)) = line.split_once("# default ") else {
        return false;
    };
    let Some((_, value)) = setting.split_once('=') else {
        return false;
    };
    let value = value.trim();
    !value.is_empty() && comment.starts_with(value)
}

/// The example with the commented `[cluster]` table switched on: its header and its settings
/// uncommented, but for the other kinds of Redis (`redis` stays).
fn with_cluster(example: &str) -> String {
    let mut out = String::new();
    let mut in_cluster = false;
    for line in example.lines() {
        if line == "# [cluster]" {
            in_cluster = true;
            out.push_str("[cluster]\n");
            continue;
        }
        if in_cluster && !line.starts_with('#') {
            in_cluster = false;
        }
        let setting = line
            .strip_prefix("# ")
            .and_then(|l| l.split_once(" = "))
            .map(|(k, _)| k);
        let uncomment = in_cluster
            && setting.is_some_and(|k| {
                k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                    && !["redis_cluster", "redis_sentinel", "sentinel_master"].contains(&k)
            });
        out.push_str(if uncomment { &line[2..] } else { line });
        out.push('\n');
    }
    out
}

/// `text` without its lines that set a setting to its documented default.
fn without_defaults(text: &str) -> (String, usize) {
    let mut removed = 0;
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            let set = !l.starts_with('#') && documents_its_default(l);
            removed += usize::from(set);
            !set
        })
        .collect();
    (kept.join("\n") + "\n", removed)
}

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/keygate.toml")
}

/// What a config decides outside its keys: every setting that has a default.
fn settings(text: &str) -> String {
    let loaded = keygate::config::parse(text, &example_path())
        .unwrap_or_else(|e| panic!("{e}\n--- in ---\n{text}"));
    let s = &loaded.snapshot;
    let admin = s.admin.as_ref().map(|a| (a.listen, &a.key_prefix));
    format!(
        "{:#?}\n{:#?}\n{:#?}\n{:#?}\n{:#?}\n{:#?}",
        s.server, s.log, s.cluster, s.targets, s.metrics_listen, admin
    )
}

#[test]
fn every_documented_default_is_the_applied_default() {
    let example = std::fs::read_to_string(example_path()).unwrap();
    let explicit = with_cluster(&example);
    assert!(
        explicit.contains("\n[cluster]\n"),
        "no [cluster] table found"
    );
    let (minimal, removed) = without_defaults(&explicit);
    // [server]'s nine, [log]'s two, [cluster]'s five, the admin prefix, a target's five.
    assert!(removed >= 20, "only {removed} defaulted lines found");
    assert_eq!(settings(&explicit), settings(&minimal));
}

#[test]
fn the_comparison_sees_a_changed_setting() {
    // Without this, a `settings` that compared nothing would pass the test above.
    let example = std::fs::read_to_string(example_path()).unwrap();
    for (from, to) in [
        ("shutdown_timeout = \"30s\"", "shutdown_timeout = \"31s\""),
        ("max_body = \"10MB\"", "max_body = \"11MB\""),
        ("# timeout = \"50ms\"", "# timeout = \"51ms\""),
    ] {
        assert!(example.contains(from), "{from}");
        let changed = example.replacen(from, to, 1);
        assert_ne!(
            settings(&with_cluster(&example)),
            settings(&with_cluster(&changed)),
            "{to}"
        );
    }
}
