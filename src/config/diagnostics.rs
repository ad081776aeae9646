//! Every problem in a config, with its place: the files being read, who a problem is about, and
//! the [`Checker`] that collects them all (not just the first) for one `keygate check` run.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::scan;

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

/// One file the config is read from: the main file, or the keys file.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub file: &'a Path,
    pub text: &'a str,
}

/// A file as `config::parse` read it: `raw` is what `toml` parsed, either the whole text or
/// (when `scan::split` cut the `[[keys]]` tables out) the rest, and then `chunks` are the
/// bodies of those tables, which `validate` reads one at a time.
#[derive(Debug)]
pub struct File<'a, R> {
    pub source: Source<'a>,
    pub raw: R,
    /// Where the pieces of the text `raw` comes from are in the file (`scan::Split::map`);
    /// empty when it is the whole file.
    pub map: &'a [(usize, usize)],
    pub chunks: &'a [(u32, u32)],
}

/// Why `validate` gave no snapshot.
#[derive(Debug)]
pub enum Failure {
    /// Every problem found.
    Invalid(Vec<ConfigError>),
    /// A `[[keys]]` table of this file (0: main, 1: keys file) is not valid TOML on its own:
    /// the caller parses the whole file with `toml`, which says what is wrong.
    Reparse(usize),
}

/// Who a problem is about (`[server]`, `key "acme"`, or nobody), put into words only when there
/// is a problem: a million keys are checked without formatting a million names.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'s>(&'static str, Option<&'s str>);

impl<'s> Subject<'s> {
    pub fn item(kind: &'static str, id: &'s str) -> Subject<'s> {
        Subject(kind, Some(id))
    }
}

impl From<&'static str> for Subject<'_> {
    fn from(section: &'static str) -> Self {
        Subject(section, None)
    }
}

impl fmt::Display for Subject<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            None => f.write_str(self.0),
            Some(id) => write!(f, "{} {id:?}", self.0),
        }
    }
}

/// Collects problems with their positions while the raw config is checked.
pub struct Checker<'a> {
    /// `[0]` is the main file, `[1]` the keys file when there is one.
    pub sources: Vec<Source<'a>>,
    /// For each source, [`File::map`].
    pub maps: Vec<&'a [(usize, usize)]>,
    /// The source of the item being checked: spans are positions in it.
    pub cur: usize,
    /// While a `[[keys]]` table read on its own is checked: the file offset its spans count
    /// from. `None`: spans are offsets in the text of [`File::raw`].
    pub base: Option<usize>,
    pub problems: Vec<ConfigError>,
}

impl Checker<'_> {
    pub fn main_file(&self) -> &Path {
        self.sources[0].file
    }

    /// Where in its file a span of the current item starts.
    pub fn offset(&self, span_start: usize) -> usize {
        match self.base {
            Some(base) => base + span_start,
            None => scan::file_offset(self.maps[self.cur], span_start),
        }
    }

    /// Where a span of the current source starts (source, file offset), for "first defined at"
    /// messages. The line is only worked out when a message needs it: counting lines for every
    /// key would make loading quadratic in the file's size.
    pub fn place(&self, span: Range<usize>) -> (usize, usize) {
        (self.cur, self.offset(span.start))
    }

    /// `line N` in the current file, `FILE:N` in the other one.
    pub fn describe(&self, (src, offset): (usize, usize)) -> String {
        let line = line_col(self.sources[src].text, offset).0;
        if src == self.cur {
            format!("line {line}")
        } else {
            format!("{}:{line}", self.sources[src].file.display())
        }
    }

    pub fn report(
        &mut self,
        severity: Severity,
        span: Range<usize>,
        subject: Subject,
        message: String,
    ) {
        let source = self.sources[self.cur];
        let (line, column) = line_col(source.text, self.offset(span.start));
        let subject = subject.to_string();
        self.problems.push(ConfigError {
            severity,
            file: source.file.to_path_buf(),
            line,
            column,
            subject: (!subject.is_empty()).then_some(subject),
            message,
        });
    }

    pub fn error<'s>(
        &mut self,
        span: Range<usize>,
        subject: impl Into<Subject<'s>>,
        message: impl Into<String>,
    ) {
        self.report(Severity::Error, span, subject.into(), message.into());
    }

    pub fn warn<'s>(
        &mut self,
        span: Range<usize>,
        subject: impl Into<Subject<'s>>,
        message: impl Into<String>,
    ) {
        self.report(Severity::Warning, span, subject.into(), message.into());
    }

    pub fn has_errors(&self) -> bool {
        self.problems.iter().any(|p| p.severity == Severity::Error)
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = src.get(..offset).unwrap_or(src);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}
