//! The config pipeline: `keygate.toml` -> [`raw::RawConfig`] -> [`validate`] -> [`Snapshot`].
//!
//! Nothing here knows about requests. The same [`load`] serves `keygate check`, startup and
//! (later) reload, so every way in applies the same rules.
//!
//! ```text
//! raw.rs          serde types that mirror the TOML, section by section
//! scan.rs         cuts the [[keys]] tables out, so a large key table is read one key at a time
//! validate.rs     runs the sections in order and assembles the snapshot
//! sections/       one validator per section of raw.rs: server, admin, log, metrics, cluster,
//!                 targets, consumers, keys
//! values.rs       how each kind of value is read (ids, networks, rates, durations, sizes, ...)
//! diagnostics.rs  every problem with its file, line, column and subject
//! defaults.rs     the default of every setting
//! ```
//!
//! A new setting touches one file per layer: `raw.rs`, its type in `model/`, its section in
//! `sections/`, and `defaults.rs` when it has a default.

pub(crate) mod defaults;
mod diagnostics;
pub(crate) mod raw;
pub(crate) mod scan;
mod sections;
pub mod validate;
mod values;

use std::fmt;
use std::path::{Path, PathBuf};

pub use self::diagnostics::{ConfigError, Severity};
use self::diagnostics::{Failure, File, Source};
use crate::snapshot::Snapshot;

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{}: cannot read: {source}", file.display())]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: the file is not UTF-8 text", file.display())]
    NotUtf8 { file: PathBuf },
    #[error("{}", Problems(.0))]
    Invalid(Vec<ConfigError>),
}

struct Problems<'a>(&'a [ConfigError]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let errors: Vec<_> = self
            .0
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .collect();
        for (i, e) in errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// A loaded config and the warnings it produced.
#[derive(Debug)]
pub struct Loaded {
    pub snapshot: Snapshot,
    pub warnings: Vec<ConfigError>,
    /// SHA-256 of the keys file's text this config was made from (of nothing without one):
    /// the reloader compares it, not a second read that an edit in between would fool.
    pub keys_digest: [u8; 32],
}

/// Reads and validates a config file (and the keys file it names).
pub fn load(file: &Path) -> Result<Loaded, LoadError> {
    parse(&read_text(file)?, file)
}

/// Reads a config file's text: `keygate run`, `check` and the commands read it through here,
/// so they refuse the same files with the same words.
pub fn read_text(file: &Path) -> Result<String, LoadError> {
    let bytes = std::fs::read(file).map_err(|source| LoadError::Io {
        file: file.to_path_buf(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|_| LoadError::NotUtf8 {
        file: file.to_path_buf(),
    })
}

/// Validates config text, reading the keys file it names (if any) from disk; `file` names the
/// config in messages and anchors relative paths.
pub fn parse(src: &str, file: &Path) -> Result<Loaded, LoadError> {
    parse_with(src, file, None)
}

/// Like [`parse`], but with the keys file's text given instead of read: how the store checks a
/// change before it writes it.
///
/// Each file is split first (`scan::split`): the `[[keys]]` tables are read one at a time as
/// they are validated, and only the rest goes through `toml` as a whole, so that a large key
/// table never exists as a TOML tree. Whenever a piece is not valid TOML on its own, that file
/// is parsed whole instead, the way it always was, so that errors read the same.
pub fn parse_with(src: &str, file: &Path, keys_text: Option<&str>) -> Result<Loaded, LoadError> {
    parse_files(src, file, keys_text, [false; 2])
}

/// [`parse_with`]; `whole` says which files (main, keys) to parse whole from the start.
fn parse_files(
    src: &str,
    file: &Path,
    keys_text: Option<&str>,
    mut whole: [bool; 2],
) -> Result<Loaded, LoadError> {
    let main_split = scan::split(src);
    let mut keys: Option<(PathBuf, std::borrow::Cow<'_, str>)> = None;
    let mut keys_split = None;
    loop {
        let main =
            read::<raw::RawConfig<'_>>(src, file, main_split.as_ref().filter(|_| !whole[0]))?;
        if keys.is_none()
            && let Some(k) = &main.raw.keys_file
        {
            let path = values::relative_to(file, k.get_ref());
            let text = match keys_text {
                Some(t) => std::borrow::Cow::Borrowed(t),
                None => std::borrow::Cow::Owned(read_keys_file(&path)?),
            };
            keys_split = scan::split(&text);
            keys = Some((path, text));
        }
        let managed = match (&main.raw.keys_file, &keys) {
            (Some(_), Some((path, text))) => Some(read::<raw::RawKeysFile<'_>>(
                text,
                path,
                keys_split.as_ref().filter(|_| !whole[1]),
            )?),
            _ => None,
        };
        match validate::validate(&main, managed.as_ref()) {
            Ok((snapshot, warnings)) => {
                let text = keys.as_ref().map_or("", |(_, t)| t.as_ref());
                let keys_digest = <sha2::Sha256 as sha2::Digest>::digest(text.as_bytes()).into();
                return Ok(Loaded {
                    snapshot,
                    warnings,
                    keys_digest,
                });
            }
            Err(Failure::Invalid(mut problems)) => {
                problems
                    .sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
                return Err(LoadError::Invalid(problems));
            }
            // Parsing the whole file either fails (with toml's error, as before) or gives the
            // keys in it: a file parsed whole has no split-off keys, so this happens once.
            Err(Failure::Reparse(i)) => whole[i] = true,
        }
    }
}

/// A file as `toml` reads it: its `[[keys]]` cut out by `split` where that works, else whole.
fn read<'a, R>(
    text: &'a str,
    file: &'a Path,
    split: Option<&'a scan::Split>,
) -> Result<File<'a, R>, LoadError>
where
    R: serde::Deserialize<'a> + raw::HasKeys<'a>,
{
    let source = Source { file, text };
    if let Some(split) = split.filter(|s| !s.keys.is_empty())
        && let Ok(raw) = toml::from_str::<R>(&split.rest)
        // Keys both in the rest and in split-off tables: only the whole file says how they go
        // together (or that they cannot).
        && raw.keys().is_none()
    {
        return Ok(File {
            source,
            raw,
            map: &split.map,
            chunks: &split.keys,
        });
    }
    Ok(File {
        source,
        raw: from_toml(text, file)?,
        map: &[],
        chunks: &[],
    })
}

/// The keys file's text; a file that does not exist yet is an empty store (the first change
/// through the admin API or the commands creates it).
pub fn read_keys_file(path: &Path) -> Result<String, LoadError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(LoadError::Io {
            file: path.to_path_buf(),
            source,
        }),
    }
}

fn from_toml<'a, T: serde::Deserialize<'a>>(src: &'a str, file: &Path) -> Result<T, LoadError> {
    toml::from_str(src).map_err(|e| {
        let (line, column) = diagnostics::line_col(src, e.span().map_or(0, |s| s.start));
        LoadError::Invalid(vec![ConfigError {
            severity: Severity::Error,
            file: file.to_path_buf(),
            line,
            column,
            subject: None,
            message: e.message().trim_end().to_owned(),
        }])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAIN: &str = r#"keys_file = "keys.toml"

[admin]
listen = "127.0.0.1:9901"

[[admin_keys]]
id = "ops"
hash = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
role = "admin"

[[targets]]
name = "production"
upstream = "http://127.0.0.1:3000"

[[keys]]
id = "static"
secret = "static-secret"
"#;

    fn errors(main: &str, keys: &str) -> Vec<String> {
        match parse_with(main, Path::new("/etc/keygate/keygate.toml"), Some(keys)) {
            Ok(_) => panic!("accepted"),
            Err(LoadError::Invalid(e)) => e
                .iter()
                .filter(|p| p.severity == Severity::Error)
                .map(ToString::to_string)
                .collect(),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn keys_file_items_are_managed_and_merged() {
        let keys = "[[consumers]]\nid = \"acme\"\nmax_keys = 2\n\n[[keys]]\nid = \"api\"\nconsumer = \"acme\"\nsecret = \"api-secret\"\nprefix = \"kg_ab\"\ncreated_at = 2026-11-01T00:00:00Z\n";
        let l = parse_with(MAIN, Path::new("/etc/keygate/keygate.toml"), Some(keys)).unwrap();
        let s = &l.snapshot;
        assert_eq!(
            s.keys_file.as_deref(),
            Some(Path::new("/etc/keygate/keys.toml"))
        );
        assert!(!s.keys[0].managed);
        assert!(s.keys[1].managed && s.consumers[0].managed);
        assert_eq!(s.consumers[0].max_keys, Some(2));
        assert_eq!(s.keys[1].prefix(), Some("kg_ab"));
        assert!(s.keys[1].created_at().is_some());
        let admin = s.admin.as_ref().unwrap();
        assert_eq!(admin.listen.port(), 9901);
        assert_eq!(&*admin.key_prefix, "kg_");
        assert_eq!(
            admin.keys.values().next().unwrap().role,
            crate::model::Role::Admin
        );
    }

    #[test]
    fn errors_name_the_file_they_are_in() {
        let e = errors(
            MAIN,
            "[[keys]]\nid = \"static\"\nsecret = \"other\"\n\n[[keys]]\nid = \"x\"\nhash = \"sha256:1\"\n",
        );
        assert_eq!(
            e,
            [
                "/etc/keygate/keys.toml:2:6: key \"static\": duplicate key id (first defined at /etc/keygate/keygate.toml:16)",
                "/etc/keygate/keys.toml:7:8: key \"x\": hash: expected \"sha256:\" followed by 64 hex digits (see `keygate keys hash`)",
            ]
        );
        let e = errors(MAIN, "[server]\nlisten = \"x\"\n");
        assert!(
            e[0].starts_with("/etc/keygate/keys.toml:1:2: unknown field `server`"),
            "{e:?}"
        );
    }

    #[test]
    fn admin_needs_its_own_port() {
        let main = MAIN.replace("127.0.0.1:9901", "127.0.0.1:8080");
        let e = errors(&main, "");
        assert!(
            e[0].contains("[admin]: listen: the admin API needs its own port"),
            "{e:?}"
        );
        let bad_role = MAIN.replace("role = \"admin\"", "role = \"root\"");
        assert!(errors(&bad_role, "")[0].contains("unknown variant `root`"));
    }

    #[test]
    fn rotation_fields_come_in_pairs() {
        let e = errors(
            MAIN,
            "[[keys]]\nid = \"k\"\nsecret = \"s\"\nprevious_hash = \"sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\n",
        );
        assert!(
            e[0].contains("previous_hash needs previous_expires_at"),
            "{e:?}"
        );
    }

    /// Everything a load gives, as text: each key's fields, warnings, or the errors.
    fn outcome(r: Result<Loaded, LoadError>) -> Vec<String> {
        match r {
            Err(e) => vec![e.to_string()],
            Ok(l) => {
                let s = &l.snapshot;
                let mut out = vec![s.summary()];
                out.extend(l.warnings.iter().map(ToString::to_string));
                for (i, k) in s.keys.iter().enumerate() {
                    out.push(format!(
                        "{i} {} {} {:?} {:?} {:?} {:?} {:?} {:?} {} {:?} {:?} {:?} {:?} {:?}",
                        k.id,
                        k.hash,
                        s.consumer_of(k).map(|c| &c.id),
                        k.status,
                        k.expires_at,
                        k.rules(),
                        k.access,
                        k.name(),
                        k.managed,
                        k.prefix(),
                        k.created_at(),
                        k.previous(),
                        k.rate_limit(),
                        s.key_by_hash(&k.hash).map(|(i, _, m)| (i, m)),
                    ));
                }
                out.extend(s.consumers.iter().map(|c| format!("{c:?}")));
                out.push(format!(
                    "{:?} {:?}",
                    s.server.trusted_proxies, s.server.failed_auth_limit
                ));
                out
            }
        }
    }

    #[test]
    fn split_files_load_exactly_as_whole_files() {
        const H: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let key = |i: u32| {
            format!(
                "[[keys]]\nid = \"k{i}\"\nhash = \"sha256:{}\"\n",
                crate::secret::KeyHash::of(&i.to_le_bytes()).to_string()[7..].to_owned()
            )
        };
        let target = "[[targets]]\nname = \"production\"\nupstream = \"http://127.0.0.1:3000\"\n";
        let consumer = "[[consumers]]\nid = \"acme\"\nallow_ips = [\"10.0.0.0/8\"]\n";
        let mains = [
            // Keys before, between and after the other tables; every kind of field.
            format!(
                "{}\n{target}{}name = \"N\"\nconsumer = \"acme\"\nstatus = \"inactive\"\nexpires_at = 2030-01-01T00:00:00.5+01:00\ntargets = [\"production\"]\nallow_ips = [\"10.1.0.0/16\", \"::1\"]\naccess = \"read-only\"\npaths = [\"/a/\", \"/b\"]\nrate_limit = \"5/s\"\ncreated_at = 2026-01-01T00:00:00Z\nprefix = \"kg_x\"\nprevious_hash = \"sha256:{H}\"\nprevious_expires_at = 2027-01-01T00:00:00Z\n\n{consumer}\n[server]\ntrusted_proxies = [\"10.0.0.0/8\"]\n{}",
                key(1),
                key(2),
                key(3)
            ),
            // Tables that only toml reads: escapes, a multi-line array, a dotted key, CRLF.
            format!(
                "{target}[[keys]]\nid = \"k\\u0031\"\nsecret = \"s1\"\n[[keys]]\r\nid = 'k2'\r\nsecret = \"s2\"\r\nallow_ips = [\n  \"10.0.0.1\", # one\n]\n{}",
                key(3)
            ),
            // Problems in split-off keys and in the rest after them.
            format!(
                "{}{}id = \"k9\"\nhash = \"sha256:{H}\"\nallow_ips = [\"nope\"]\nconsumer = \"who\"\n{target}[[targets]]\nname = \"x\"\nupstream = \"ftp://h\"\n{}{}previous_hash = \"sha256:{H}\"\nprevious_expires_at = 2027-01-01T00:00:00\n[[keys]]\nid = \"bad id\"\n",
                key(1),
                "[[keys]]\n",
                key(2),
                key(3)
            ),
            // Not valid TOML on its own: the whole file says what is wrong.
            format!("{target}{}alow_ips = []\n{}", key(1), key(2)),
            format!("{target}{}id = 5\n", "[[keys]]\n"),
            format!("{target}{}[keys.x]\na = 1\n", key(1)),
            format!("keys = []\n{target}{}", key(1)),
            format!("{target}{}", "[[keys]]\n"),
        ];
        let keys_files = [
            "",
            "[[consumers]]\nid = \"c2\"\n",
            &format!("{}{}", key(4), key(1)),
        ];
        let file = Path::new("/etc/keygate/keygate.toml");
        for main in &mains {
            let fast = outcome(parse_files(main, file, None, [false; 2]));
            let whole = outcome(parse_files(main, file, None, [true; 2]));
            assert_eq!(fast, whole, "{main}");
            let with_keys_file = format!("keys_file = \"keys.toml\"\n{main}");
            for keys in keys_files {
                let fast = outcome(parse_files(&with_keys_file, file, Some(keys), [false; 2]));
                let whole = outcome(parse_files(&with_keys_file, file, Some(keys), [true; 2]));
                assert_eq!(fast, whole, "{main}\n---\n{keys}");
            }
        }
    }

    /// Past one batch of the read-ahead thread, and with a duplicate id (the optimistic pass
    /// is then run again exactly): the same keys, warnings and errors as a whole parse.
    #[test]
    fn large_files_with_and_without_duplicates_load_as_whole_files() {
        let target = "[[targets]]\nname = \"production\"\nupstream = \"http://127.0.0.1:3000\"\n";
        let key = |i: u32, id: u32| {
            format!(
                "[[keys]]\nid = \"k{id}\"\nhash = \"{}\"\n{}",
                crate::secret::KeyHash::of(&i.to_le_bytes()),
                if i % 7 == 3 {
                    "rate_limit = \"5/s\"\n"
                } else {
                    ""
                }
            )
        };
        let file = Path::new("/etc/keygate/keygate.toml");
        let plain: String = (0..3000).map(|i| key(i, i)).collect();
        let dup: String = (0..3000)
            .map(|i| key(i, if i == 2500 { 7 } else { i }))
            .collect();
        let bad = format!("{dup}[[keys]]\nid = \"x\"\nsecret = \"s\"\nallow_ips = [\"nope\"]\n");
        for keys in [plain, dup, bad] {
            let main = format!("{target}{keys}");
            let fast = outcome(parse_files(&main, file, None, [false; 2]));
            let whole = outcome(parse_files(&main, file, None, [true; 2]));
            assert_eq!(fast, whole);
        }
        let dup: String = (0..3000)
            .map(|i| key(i, if i == 2999 { 0 } else { i }))
            .collect();
        let e = errors(&format!("keys_file = \"keys.toml\"\n{target}"), &dup);
        assert_eq!(
            e,
            [
                "/etc/keygate/keys.toml:9427:6: key \"k0\": duplicate key id (first defined at line 2)"
            ]
        );
    }

    #[test]
    fn a_missing_keys_file_is_an_empty_store() {
        let dir = std::env::temp_dir().join(format!("keygate-missing-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keygate.toml");
        std::fs::write(&path, MAIN).unwrap();
        let l = load(&path).unwrap();
        assert_eq!(l.snapshot.keys.len(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
