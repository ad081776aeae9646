//! The config pipeline: `keygate.toml` -> [`raw::RawConfig`] -> [`validate`] -> [`Snapshot`].
//!
//! Nothing here knows about requests. The same [`load`] serves `keygate check`, startup and
//! (later) reload, so every way in applies the same rules.

pub mod raw;
pub mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

use crate::snapshot::Snapshot;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One problem in a config file, with its position: `file:line:column: subject: message`.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub severity: Severity,
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// The key, consumer or target the problem belongs to, e.g. `key "acme-reports"`.
    pub subject: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        if let Some(s) = &self.subject {
            write!(f, "{s}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{}: cannot read: {source}", file.display())]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
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
}

/// Reads and validates a config file.
pub fn load(file: &Path) -> Result<Loaded, LoadError> {
    let src = std::fs::read_to_string(file).map_err(|source| LoadError::Io {
        file: file.to_path_buf(),
        source,
    })?;
    parse(&src, file)
}

/// Validates config text, reading the keys file it names (if any) from disk; `file` names the
/// config in messages and anchors relative paths.
pub fn parse(src: &str, file: &Path) -> Result<Loaded, LoadError> {
    parse_with(src, file, None)
}

/// Like [`parse`], but with the keys file's text given instead of read: how the store checks a
/// change before it writes it.
pub fn parse_with(src: &str, file: &Path, keys_text: Option<&str>) -> Result<Loaded, LoadError> {
    let raw: raw::RawConfig = from_toml(src, file)?;
    let keys = match &raw.keys_file {
        None => None,
        Some(k) => {
            let path = validate::relative_to(file, k.get_ref());
            let text = match keys_text {
                Some(t) => t.to_owned(),
                None => read_keys_file(&path)?,
            };
            Some((path, text))
        }
    };
    let managed = match &keys {
        None => None,
        Some((path, text)) => Some((from_toml::<raw::RawKeysFile>(text, path)?, path, text)),
    };
    let main = validate::Source { file, text: src };
    let managed = managed.map(|(raw, path, text)| (raw, validate::Source { file: path, text }));
    match validate::validate(raw, main, managed) {
        Ok((snapshot, warnings)) => Ok(Loaded { snapshot, warnings }),
        Err(mut problems) => {
            problems.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
            Err(LoadError::Invalid(problems))
        }
    }
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

fn from_toml<T: serde::de::DeserializeOwned>(src: &str, file: &Path) -> Result<T, LoadError> {
    toml::from_str(src).map_err(|e| {
        let (line, column) = validate::line_col(src, e.span().map_or(0, |s| s.start));
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
        assert_eq!(admin.keys.values().next().unwrap().role, raw::Role::Admin);
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
