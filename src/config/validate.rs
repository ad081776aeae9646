//! Raw config -> [`Snapshot`]: every check, every conversion, once, at load time.
//!
//! All problems are collected, not just the first, and each names the file, line and column
//! and the key, consumer or target it belongs to, so one `keygate check` run shows everything
//! that needs fixing.
//!
//! The sections are checked in `sections/`, each value kind is read in `values.rs`, problems are
//! collected in `diagnostics.rs`; this is the order they run in.

use super::diagnostics::{Checker, ConfigError, Failure, File};
use super::raw::{RawConfig, RawKeysFile};
use super::sections::admin::admin;
use super::sections::cluster::cluster;
use super::sections::consumers::consumers;
use super::sections::keys::{KeyPass, key_count};
use super::sections::log::log;
use super::sections::metrics::metrics;
use super::sections::server::server;
use super::sections::targets::targets;
use super::sections::usage::usage;
use super::sections::verify::verify;
use super::sections::webhooks::webhooks;
use crate::snapshot::Snapshot;

// By their old paths (`config::validate::parse_net`, `config::validate::DEFAULT_…`), for the
// files that still name them so.
pub use super::defaults::*;
pub use super::diagnostics::line_col;
pub use super::values::{parse_net, relative_to};

/// Turns parsed files into a snapshot, or into every problem found in them. Warnings (such as
/// a plaintext secret) are returned in both cases.
pub fn validate(
    main: &File<'_, RawConfig<'_>>,
    keys_file: Option<&File<'_, RawKeysFile<'_>>>,
) -> Result<(Snapshot, Vec<ConfigError>), Failure> {
    let mut c = Checker {
        sources: vec![main.source],
        maps: vec![main.map],
        cur: 0,
        base: None,
        problems: Vec::new(),
    };
    let raw = &main.raw;
    let server = server(&mut c, &raw.server);
    let admin = admin(&mut c, raw.admin.as_ref(), &raw.admin_keys, server.as_ref());
    let log = log(&mut c, raw.log.as_ref(), main.source.file);
    let metrics_listen = metrics(
        &mut c,
        raw.metrics.as_ref(),
        server.as_ref(),
        admin.as_ref(),
    );
    let verify = verify(
        &mut c,
        raw.verify.as_ref(),
        server.as_ref(),
        admin.as_ref(),
        metrics_listen,
    );
    let cluster = raw
        .cluster
        .as_ref()
        .and_then(|r| cluster(&mut c, r.get_ref(), r.span()));
    let webhooks = webhooks(&mut c, &raw.webhooks);
    let usage = usage(&mut c, raw.usage.as_ref(), main.source.file);
    let (targets, target_names) = targets(&mut c, &raw.targets);
    let keys_path = raw
        .keys_file
        .as_ref()
        .map(|k| relative_to(main.source.file, k.get_ref()));
    if let Some(k) = keys_file {
        c.sources.push(k.source);
        c.maps.push(k.map);
    }
    let consumer_items = raw.consumers.iter().map(|r| (0, r));
    let consumer_items = consumer_items.chain(
        keys_file
            .iter()
            .flat_map(|m| m.raw.consumers.iter().map(|r| (1, r))),
    );
    let (consumers, consumer_ids) = consumers(&mut c, consumer_items, &target_names);
    let count = key_count(main) + keys_file.map_or(0, key_count);
    let key_prefix: Box<str> = match &admin {
        Some(Some(a)) => a.key_prefix.clone(),
        _ => super::defaults::DEFAULT_KEY_PREFIX.into(),
    };
    // Optimistic first (no duplicate ids), exact only when that may be wrong: the problems
    // of the first pass are then dropped and found again, duplicates among them.
    let before = c.problems.len();
    let mut pass = KeyPass::new(count, &target_names, &consumer_ids, &key_prefix, false);
    pass.file(&mut c, 0, main)?;
    if let Some(k) = keys_file {
        pass.file(&mut c, 1, k)?;
    }
    if pass.may_have_duplicate_ids() {
        c.problems.truncate(before);
        drop(pass);
        pass = KeyPass::new(count, &target_names, &consumer_ids, &key_prefix, true);
        pass.file(&mut c, 0, main)?;
        if let Some(k) = keys_file {
            pass.file(&mut c, 1, k)?;
        }
    }
    c.cur = 0;
    c.base = None;
    match (server, admin) {
        (Some(server), Some(admin)) if !c.has_errors() => {
            let mut snap = Snapshot::with_table(server, targets, consumers, pass.keys, pass.table);
            snap.key_prefix = key_prefix;
            snap.admin = admin;
            snap.keys_file = keys_path;
            snap.log = log;
            snap.metrics_listen = metrics_listen;
            snap.verify = verify;
            snap.cluster = cluster;
            snap.webhooks = webhooks;
            snap.usage = usage;
            Ok((snap, c.problems))
        }
        _ => Err(Failure::Invalid(c.problems)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{LoadError, parse};
    use std::path::Path;

    const TARGET: &str =
        "[[targets]]\nname = \"production\"\nupstream = \"http://127.0.0.1:3000\"\n";
    const HASH_A: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    /// The error lines for `src` (after the shared target), which must fail to load.
    fn errors(src: &str) -> Vec<String> {
        match parse(&format!("{TARGET}{src}"), Path::new("k.toml")) {
            Ok(_) => panic!("config was accepted:\n{src}"),
            Err(LoadError::Invalid(e)) => e
                .iter()
                .filter(|p| p.severity == super::super::Severity::Error)
                .map(ToString::to_string)
                .collect(),
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    fn one_error(src: &str) -> String {
        let e = errors(src);
        assert_eq!(e.len(), 1, "{e:#?}");
        e.into_iter().next().unwrap_or_default()
    }

    #[test]
    fn unknown_field_names_line_column_and_field() {
        let e = one_error("[[keys]]\nid = \"k\"\nhash = \"sha256:00\"\nalow_ips = []\n");
        assert!(e.starts_with("k.toml:7:1: unknown field `alow_ips`"), "{e}");
    }

    #[test]
    fn duplicate_key_ids_and_hashes() {
        let e = errors(&format!(
            "[[keys]]\nid = \"a\"\nhash = \"{HASH_A}\"\n[[keys]]\nid = \"a\"\nhash = \"{HASH_A}\"\n[[keys]]\nid = \"b\"\nsecret = \"test\"\n"
        ));
        assert_eq!(e.len(), 2, "{e:#?}");
        assert_eq!(
            e[0],
            "k.toml:8:6: key \"a\": duplicate key id (first defined at line 5)"
        );
        assert!(
            e[1].starts_with("k.toml:12:10: key \"b\": same secret hash as key \"a\""),
            "{}",
            e[1]
        );
    }

    #[test]
    fn references_must_exist() {
        let e = errors(&format!(
            "[[consumers]]\nid = \"acme\"\ntargets = [\"staging\"]\n[[keys]]\nid = \"k\"\nhash = \"{HASH_A}\"\nconsumer = \"acmee\"\ntargets = [\"prod\"]\n"
        ));
        assert_eq!(
            e,
            [
                "k.toml:6:12: consumer \"acme\": targets: no [[targets]] is named \"staging\"",
                "k.toml:10:12: key \"k\": consumer: no [[consumers]] has id \"acmee\"",
                "k.toml:11:12: key \"k\": targets: no [[targets]] is named \"prod\"",
            ]
        );
    }

    #[test]
    fn bad_cidrs_rates_and_hashes() {
        let e = errors(
            "[[keys]]\nid = \"k\"\nhash = \"sha256:abc\"\nallow_ips = [\"10.0.0.0/33\", \"::1\", \"nope\"]\nrate_limit = \"10/day\"\n",
        );
        assert_eq!(e.len(), 4, "{e:#?}");
        assert!(
            e[0].starts_with("k.toml:6:8: key \"k\": hash: expected \"sha256:\""),
            "{}",
            e[0]
        );
        assert!(
            e[1].starts_with("k.toml:7:14: key \"k\": allow_ips: \"10.0.0.0/33\""),
            "{}",
            e[1]
        );
        assert!(
            e[2].starts_with("k.toml:7:36: key \"k\": allow_ips: \"nope\""),
            "{}",
            e[2]
        );
        assert!(
            e[3].contains("rate_limit: rate \"10/day\": unknown unit \"day\""),
            "{}",
            e[3]
        );
    }

    #[test]
    fn bad_origins_name_their_line_on_a_key_a_consumer_and_a_target() {
        let e = errors(
            "[[consumers]]\nid = \"c\"\nallow_origins = [\"https://a.com/app\"]\n[[keys]]\nid = \"k\"\nsecret = \"s\"\nallow_origins = [\"https://ok.com\", \"https://a.*.com\", \"a.com\"]\n[[targets]]\nname = \"web\"\nupstream = \"http://127.0.0.1:1\"\npath_prefix = \"/web\"\n[targets.cors]\nallow_origins = [\"*\", \"https://x.com:99999\"]\nallow_credentials = true\nallow_methods = [\"GET\", \"B@D\"]\n",
        );
        assert_eq!(e.len(), 6, "{e:#?}");
        let starts = [
            "k.toml:6:18: consumer \"c\": allow_origins: \"https://a.com/app\" must not have a path",
            "k.toml:10:36: key \"k\": allow_origins: \"https://a.*.com\" has no valid host name",
            "k.toml:10:55: key \"k\": allow_origins: \"a.com\" must be scheme://host[:port]",
            "k.toml:16:23: target \"web\": cors.allow_origins: \"https://x.com:99999\" has no valid host or port",
            "k.toml:17:21: target \"web\": cors.allow_credentials = true cannot go with \"*\"",
            "k.toml:18:25: target \"web\": cors.allow_methods: \"B@D\" is not a method name",
        ];
        for (e, want) in e.iter().zip(starts) {
            assert!(e.starts_with(want), "{e}\n  wanted {want}");
        }
    }

    #[test]
    fn a_bad_quota_names_its_line_on_a_key_and_a_consumer() {
        let e = errors(
            "[[consumers]]\nid = \"c\"\nquota = \"0/day\"\n[[keys]]\nid = \"k\"\nsecret = \"s\"\nquota = \"10/minute\"\n",
        );
        assert_eq!(e.len(), 2, "{e:#?}");
        assert!(
            e[0].starts_with(
                "k.toml:6:9: consumer \"c\": quota: quota \"0/day\": N must be at least 1"
            ),
            "{}",
            e[0]
        );
        assert!(
            e[1].starts_with("k.toml:10:9: key \"k\": quota: quota \"10/minute\": unknown period"),
            "{}",
            e[1]
        );
    }

    #[test]
    fn hash_xor_secret() {
        let both = one_error(&format!(
            "[[keys]]\nid = \"k\"\nhash = \"{HASH_A}\"\nsecret = \"s\"\n"
        ));
        assert!(
            both.contains("key \"k\": has both `hash` and `secret`"),
            "{both}"
        );
        let neither = one_error("[[keys]]\nid = \"k\"\n");
        assert!(neither.contains("key \"k\": needs `hash"), "{neither}");
    }

    #[test]
    fn unknown_status_and_access() {
        let s = one_error(&format!(
            "[[keys]]\nid = \"k\"\nhash = \"{HASH_A}\"\nstatus = \"actve\"\n"
        ));
        assert!(s.starts_with("k.toml:7:10: unknown variant `actve`"), "{s}");
        let a = one_error(&format!(
            "[[keys]]\nid = \"k\"\nhash = \"{HASH_A}\"\naccess = \"admin\"\n"
        ));
        assert!(a.starts_with("k.toml:7:10: unknown variant `admin`"), "{a}");
    }

    #[test]
    fn local_datetimes_name_no_instant() {
        let e = one_error(&format!(
            "[[keys]]\nid = \"k\"\nhash = \"{HASH_A}\"\nexpires_at = 2027-01-01T00:00:00\n"
        ));
        assert!(
            e.contains(
                "key \"k\": expires_at: 2027-01-01T00:00:00 is not a date-time with an offset"
            ),
            "{e}"
        );
    }

    #[test]
    fn targets_are_checked() {
        let e = errors(
            "[[targets]]\nname = \"production\"\nupstream = \"http://127.0.0.1:3001\"\n[[targets]]\nname = \"x\"\nupstream = \"ftp://h\"\n[[targets]]\nname = \"y\"\nupstream = \"http://h/base\"\npath_prefix = \"api\"\n",
        );
        assert_eq!(e.len(), 4, "{e:#?}");
        assert!(
            e[0].contains("target \"production\": duplicate target name (first defined at line 2)"),
            "{}",
            e[0]
        );
        assert!(
            e[1].contains("target \"x\": upstream: \"ftp://h\" must use http:// or https://"),
            "{}",
            e[1]
        );
        assert!(
            e[2].contains("target \"y\": upstream: \"http://h/base\" must not have a path"),
            "{}",
            e[2]
        );
        assert!(
            e[3].contains("target \"y\": path_prefix: \"api\" must be a path"),
            "{}",
            e[3]
        );
    }

    #[test]
    fn two_targets_on_one_route_are_ambiguous() {
        let e = one_error(
            "[[targets]]\nname = \"other\"\nupstream = \"http://127.0.0.1:3001\"\npath_prefix = \"/\"\n",
        );
        assert!(e.contains("target \"other\": any host with path_prefix \"/\" is already routed to target \"production\""), "{e}");
    }

    #[test]
    fn verify_needs_trusted_proxies_and_a_port_of_its_own() {
        let none = one_error("[verify]\nlisten = \"127.0.0.1:8081\"\n");
        assert!(
            none.starts_with("k.toml:")
                && none.contains("[verify]: trusted_proxies: needed, here or in [server]"),
            "{none}"
        );
        let empty = one_error("[verify]\nlisten = \"127.0.0.1:8081\"\ntrusted_proxies = []\n");
        assert!(empty.contains("trusted_proxies: empty"), "{empty}");
        let clash = one_error(
            "[server]\nlisten = \"127.0.0.1:8081\"\n[verify]\nlisten = \"127.0.0.1:8081\"\ntrusted_proxies = [\"127.0.0.1\"]\n",
        );
        assert!(
            clash.starts_with(
                "k.toml:7:10: [verify]: listen: the verify listener needs its own port"
            ),
            "{clash}"
        );
        let bad = errors("[verify]\nlisten = \"localhost\"\ntrusted_proxies = [\"10.0.0.300\"]\n");
        assert!(
            bad[0].starts_with("k.toml:5:10: [verify]: listen: \"localhost\" is not IP:port"),
            "{bad:?}"
        );
        assert!(
            bad[1].starts_with("k.toml:6:20: [verify]: trusted_proxies: \"10.0.0.300\""),
            "{bad:?}"
        );
    }

    #[test]
    fn verify_inherits_the_servers_trusted_proxies() {
        let loaded = parse(
            &format!(
                "[server]\ntrusted_proxies = [\"10.0.0.0/8\"]\n[verify]\nlisten = \"127.0.0.1:0\"\n{TARGET}"
            ),
            Path::new("k.toml"),
        )
        .unwrap();
        let verify = loaded.snapshot.verify.unwrap();
        assert!(verify.trusted_proxies.allows("10.1.2.3".parse().unwrap()));
        assert!(!verify.trusted_proxies.allows("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn no_targets_is_an_error() {
        match parse("", Path::new("k.toml")) {
            Err(LoadError::Invalid(e)) => assert!(e[0].message.contains("no [[targets]]")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn plaintext_secret_is_accepted_with_a_warning() {
        let loaded = parse(
            &format!("{TARGET}[[keys]]\nid = \"k\"\nsecret = \"test\"\n"),
            Path::new("k.toml"),
        )
        .unwrap();
        assert_eq!(loaded.warnings.len(), 1);
        assert!(
            loaded.warnings[0]
                .to_string()
                .starts_with("k.toml:6:10: warning: key \"k\": secret is stored in plaintext")
        );
        assert_eq!(loaded.snapshot.keys[0].hash.to_string(), HASH_A);
    }

    #[test]
    fn the_example_config_is_valid() {
        let src = include_str!("../../config/keygate.toml");
        let loaded = parse(src, Path::new("config/keygate.toml")).unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    }

    #[test]
    fn ipv4_mapped_networks_become_ipv4() {
        assert_eq!(
            super::parse_net("::ffff:10.0.0.0/104").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            super::parse_net("198.51.100.7").unwrap().to_string(),
            "198.51.100.7/32"
        );
        assert_eq!(
            super::parse_net("2001:db8::1").unwrap().to_string(),
            "2001:db8::1/128"
        );
    }
}
