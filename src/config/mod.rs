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

/// Validates config text; `file` is only used to name it in messages.
pub fn parse(src: &str, file: &Path) -> Result<Loaded, LoadError> {
    let raw: raw::RawConfig = toml::from_str(src).map_err(|e| {
        let (line, column) = validate::line_col(src, e.span().map_or(0, |s| s.start));
        LoadError::Invalid(vec![ConfigError {
            severity: Severity::Error,
            file: file.to_path_buf(),
            line,
            column,
            subject: None,
            message: e.message().trim_end().to_owned(),
        }])
    })?;
    match validate::validate(raw, src, file) {
        Ok((snapshot, warnings)) => Ok(Loaded { snapshot, warnings }),
        Err(mut problems) => {
            problems.sort_by_key(|p| (p.line, p.column));
            Err(LoadError::Invalid(problems))
        }
    }
}
