//! Loading a large key table without building its whole TOML tree.
//!
//! `toml` turns a document into tokens, then events, then a tree, and only then into the raw
//! types: for a million `[[keys]]` that is gigabytes held at once. Here a file is first split
//! ([`split`]) into its `[[keys]]` tables and the rest: the rest (server, targets, consumers,
//! usually small) still goes through `toml`; each key table is read on its own, when it is
//! validated, by [`key`] (the plain layout that `keygate` and most people write) or, for
//! anything else in it, by `toml` on that table's text alone. Nothing about the result
//! depends on which reader read a key: [`key`] refuses (returns `None`) anything it does not
//! read exactly as `toml` would, and every `toml` error sends the caller back to parsing the
//! whole file, so that errors read exactly as before.
//!
//! The split is exact for valid TOML: it follows strings, comments and brackets, so a line in
//! a multi-line string or array is never taken for a table header. Where the file is not
//! valid TOML, some piece fails to parse, and the caller parses the whole file instead.

use std::borrow::Cow;

use toml::Spanned;
use toml::value::Datetime;

use super::raw::{RawKey, Text};
use crate::model::{Access, Status};

/// A file cut into its `[[keys]]` tables and everything else.
#[derive(Debug, Default)]
pub struct Split {
    /// The file without its `[[keys]]` tables (each one's header line and body).
    pub rest: String,
    /// Where each piece of `rest` comes from: (offset in `rest`, offset in the file), in order.
    pub map: Vec<(usize, usize)>,
    /// The body of each `[[keys]]` table (the text after its header line), in file order.
    pub keys: Vec<(u32, u32)>,
}

/// Splits `text` at its top-level table headers. `None` when the file is too large for the
/// offsets kept here (4 GiB): the caller parses it whole. Without `[[keys]]` tables, `rest`
/// stays empty: the file is its own rest.
pub fn split(text: &str) -> Option<Split> {
    let b = text.as_bytes();
    u32::try_from(b.len()).ok()?;
    let mut out = Split::default();
    // Pieces of the rest, as ranges of `text`: copied only if there are keys to leave out.
    let mut pieces = Vec::new();
    // The piece being read: a `[[keys]]` body from `start`, or a piece of the rest from `start`.
    let (mut start, mut in_keys) = (0, false);
    let mut pos = 0;
    loop {
        let header = next_header(b, pos);
        if in_keys {
            out.keys.push((start as u32, header as u32));
        } else if header > start {
            pieces.push(start..header);
        }
        if header == b.len() {
            break;
        }
        let (line_end, keys) = header_line(b, header);
        in_keys = keys;
        start = if keys { line_end } else { header };
        pos = line_end;
    }
    if !out.keys.is_empty() {
        out.rest.reserve(pieces.iter().map(|p| p.len()).sum());
        for p in pieces {
            out.map.push((out.rest.len(), p.start));
            out.rest.push_str(&text[p]);
        }
    }
    Some(out)
}

/// Where an offset of `Split::rest` is in the file.
pub fn file_offset(map: &[(usize, usize)], offset: usize) -> usize {
    // Offset 0 stands for the whole file (a missing section), whichever piece is first.
    if map.is_empty() || offset == 0 {
        return offset;
    }
    let i = map.partition_point(|&(r, _)| r <= offset).max(1) - 1;
    let (r, f) = map[i];
    f + (offset - r)
}

fn is_ws(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

/// The start of the next line, from the line start `pos`, whose first non-blank character is a
/// `[` outside any string or value: a table header. The file's length when there is none.
fn next_header(b: &[u8], pos: usize) -> usize {
    let n = b.len();
    let (mut i, mut line) = (pos, pos);
    let mut at_line_start = true;
    // Open `[` and `{` of values: inside an array, a line may start with `[`.
    let mut depth = 0usize;
    while i < n {
        let c = b[i];
        if at_line_start {
            if is_ws(c) {
                i += 1;
                continue;
            }
            at_line_start = false;
            if c == b'[' && depth == 0 {
                return line;
            }
        }
        match c {
            b'\n' => {
                i += 1;
                line = i;
                at_line_start = true;
                continue;
            }
            b'#' => {
                i = line_end(b, i);
                continue;
            }
            b'"' | b'\'' => {
                i = skip_string(b, i);
                continue;
            }
            b'[' | b'{' => depth += 1,
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {
                // Past a line's start only these bytes matter: skip the others in a tight loop
                // (most of a key table's bytes; twice as fast as the match for each byte).
                i += 1;
                while i < n && !SPECIAL[usize::from(b[i])] {
                    i += 1;
                }
                continue;
            }
        }
        i += 1;
    }
    n
}

/// The bytes that [`next_header`] acts on inside a line.
const SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    let s = b"\n#\"'[]{}";
    let mut k = 0;
    while k < s.len() {
        t[s[k] as usize] = true;
        k += 1;
    }
    t
};

/// The offset of the `\n` that ends the line `i` is on (or the end of the text).
fn line_end(b: &[u8], i: usize) -> usize {
    memchr::memchr(b'\n', &b[i..]).map_or(b.len(), |p| i + p)
}

/// The offset just after the string that starts at `i` (a quote). A string left open at the end
/// of its line (invalid TOML) ends there, and TOML then reports it.
fn skip_string(b: &[u8], i: usize) -> usize {
    let (q, n) = (b[i], b.len());
    let escapes = q == b'"';
    if b[i..].starts_with(&[q, q, q]) {
        let mut j = i + 3;
        while j < n {
            if escapes && b[j] == b'\\' {
                j += 2;
            } else if b[j..].starts_with(&[q, q, q]) {
                // Up to two more quotes belong to the string: `"""a"""""` is `a""`.
                j += 3;
                let mut extra = 0;
                while extra < 2 && j < n && b[j] == q {
                    j += 1;
                    extra += 1;
                }
                return j;
            } else {
                j += 1;
            }
        }
        return n;
    }
    let mut j = i + 1;
    while j < n {
        let found = if escapes {
            memchr::memchr3(q, b'\\', b'\n', &b[j..])
        } else {
            memchr::memchr2(q, b'\n', &b[j..])
        };
        let Some(at) = found.map(|p| j + p) else {
            return n;
        };
        match b[at] {
            b'\n' => return at,
            c if c == q => return at + 1,
            // A backslash (only looked for with escapes): it and the byte it escapes.
            _ => j = at + 2,
        }
    }
    n
}

/// The end of the header line at `at` (just after its `\n`), and whether it is exactly a
/// `[[keys]]` header (blanks and a comment allowed).
fn header_line(b: &[u8], at: usize) -> (usize, bool) {
    let mut i = at;
    while i < b.len() && is_ws(b[i]) {
        i += 1;
    }
    // Scanned with strings in mind: a quoted key may hold `#` or `]`.
    let mut j = i;
    while j < b.len() && b[j] != b'\n' {
        match b[j] {
            b'"' | b'\'' => j = skip_string(b, j),
            b'#' => j = line_end(b, j),
            _ => j += 1,
        }
    }
    let end = (j + 1).min(b.len());
    (end, is_keys_header(&b[i..j]))
}

fn is_keys_header(line: &[u8]) -> bool {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(rest) = line.strip_prefix(b"[[") else {
        return false;
    };
    let rest = trim_ws(rest);
    let Some(rest) = rest.strip_prefix(b"keys") else {
        return false;
    };
    let Some(rest) = trim_ws(rest).strip_prefix(b"]]") else {
        return false;
    };
    match trim_ws(rest) {
        [] => true,
        [b'#', comment @ ..] => comment.iter().all(|&c| comment_char(c)),
        _ => false,
    }
}

fn trim_ws(mut s: &[u8]) -> &[u8] {
    while let [c, rest @ ..] = s
        && is_ws(*c)
    {
        s = rest;
    }
    s
}

/// What TOML allows in a comment: no control character but tab.
fn comment_char(c: u8) -> bool {
    c == b'\t' || (c >= 0x20 && c != 0x7f)
}

/// What TOML allows in a string without escapes: no control character but tab.
fn string_char(c: u8) -> bool {
    comment_char(c)
}

/// Reads the `[[keys]]` body `text[start..end]` when it is in the plain layout: one
/// `field = value` per line, bare field names, strings without escapes, arrays of strings on one
/// line, offset date-times, comments and blank lines. `None` for anything else, including every
/// mistake: the caller then asks `toml`, which reads it (or says what is wrong) the usual way.
/// Spans are offsets in `text`, as `toml` gives them for the whole file.
pub fn key(text: &str, start: usize, end: usize) -> Option<RawKey<'_>> {
    let mut r = Reader {
        text,
        b: &text.as_bytes()[..end],
        i: start,
    };
    let mut k = Fields::default();
    let mut seen = 0u32;
    loop {
        r.skip_ws();
        let Some(c) = r.peek() else { break };
        match c {
            b'\n' => {
                r.i += 1;
                continue;
            }
            b'\r' | b'#' => {
                r.end_of_line()?;
                continue;
            }
            _ => {}
        }
        let name_start = r.i;
        while r
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
        {
            r.i += 1;
        }
        let name = &text[name_start..r.i];
        r.skip_ws();
        if r.peek() != Some(b'=') {
            return None;
        }
        r.i += 1;
        r.skip_ws();
        let field = FIELDS.iter().position(|f| *f == name)?;
        if seen & (1 << field) != 0 {
            return None;
        }
        seen |= 1 << field;
        match name {
            "id" => k.id = Some(r.string()?),
            "name" => k.name = Some(r.string()?.into_inner()),
            "consumer" => k.consumer = Some(r.string()?),
            "hash" => k.hash = Some(r.string()?),
            "secret" => k.secret = Some(r.string()?),
            "status" => {
                k.status = Some(match &**r.string()?.get_ref() {
                    "active" => Status::Active,
                    "inactive" => Status::Inactive,
                    _ => return None,
                })
            }
            "expires_at" => k.expires_at = Some(r.datetime()?),
            "targets" => k.targets = Some(r.array()?),
            "allow_ips" => k.allow_ips = Some(r.array()?),
            "allow_origins" => k.allow_origins = Some(r.array()?),
            "access" => {
                k.access = Some(match &**r.string()?.get_ref() {
                    "read-only" => Access::ReadOnly,
                    "read-write" => Access::ReadWrite,
                    _ => return None,
                })
            }
            "paths" => k.paths = Some(r.array()?),
            "rate_limit" => k.rate_limit = Some(r.string()?),
            "quota" => k.quota = Some(r.string()?),
            "created_at" => k.created_at = Some(r.datetime()?),
            "prefix" => k.prefix = Some(r.string()?.into_inner()),
            "previous_hash" => k.previous_hash = Some(r.string()?),
            "previous_expires_at" => k.previous_expires_at = Some(r.datetime()?),
            _ => return None,
        }
        r.skip_ws();
        r.end_of_line()?;
    }
    Some(RawKey {
        id: k.id?,
        name: k.name,
        consumer: k.consumer,
        hash: k.hash,
        secret: k.secret,
        status: k.status,
        expires_at: k.expires_at,
        targets: k.targets,
        allow_ips: k.allow_ips,
        allow_origins: k.allow_origins,
        access: k.access,
        paths: k.paths,
        rate_limit: k.rate_limit,
        quota: k.quota,
        created_at: k.created_at,
        prefix: k.prefix,
        previous_hash: k.previous_hash,
        previous_expires_at: k.previous_expires_at,
    })
}

/// Every field of [`RawKey`], as written in the file.
const FIELDS: [&str; 18] = [
    "id",
    "name",
    "consumer",
    "hash",
    "secret",
    "status",
    "expires_at",
    "targets",
    "allow_ips",
    "allow_origins",
    "access",
    "paths",
    "rate_limit",
    "quota",
    "created_at",
    "prefix",
    "previous_hash",
    "previous_expires_at",
];

#[derive(Default)]
struct Fields<'a> {
    id: Option<Spanned<Text<'a>>>,
    name: Option<Text<'a>>,
    consumer: Option<Spanned<Text<'a>>>,
    hash: Option<Spanned<Text<'a>>>,
    secret: Option<Spanned<Text<'a>>>,
    status: Option<Status>,
    expires_at: Option<Spanned<Datetime>>,
    targets: Option<Vec<Spanned<Text<'a>>>>,
    allow_ips: Option<Vec<Spanned<Text<'a>>>>,
    allow_origins: Option<Vec<Spanned<Text<'a>>>>,
    access: Option<Access>,
    paths: Option<Vec<Spanned<Text<'a>>>>,
    rate_limit: Option<Spanned<Text<'a>>>,
    quota: Option<Spanned<Text<'a>>>,
    created_at: Option<Spanned<Datetime>>,
    prefix: Option<Text<'a>>,
    previous_hash: Option<Spanned<Text<'a>>>,
    previous_expires_at: Option<Spanned<Datetime>>,
}

struct Reader<'a> {
    text: &'a str,
    /// The text up to the end of the body.
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(is_ws) {
            self.i += 1;
        }
    }

    /// An optional comment, then the end of the line (or of the body).
    fn end_of_line(&mut self) -> Option<()> {
        if self.peek() == Some(b'#') {
            while let Some(c) = self.peek() {
                if c == b'\n' || c == b'\r' {
                    break;
                }
                if !comment_char(c) {
                    return None;
                }
                self.i += 1;
            }
        }
        match self.peek() {
            None => Some(()),
            Some(b'\n') => {
                self.i += 1;
                Some(())
            }
            Some(b'\r') if self.b.get(self.i + 1) == Some(&b'\n') => {
                self.i += 2;
                Some(())
            }
            _ => None,
        }
    }

    /// A basic string without escapes or a literal string, on one line.
    fn string(&mut self) -> Option<Spanned<Text<'a>>> {
        let q = self.peek().filter(|&c| c == b'"' || c == b'\'')?;
        let open = self.i;
        if self.b[open..].starts_with(&[q, q, q]) {
            return None;
        }
        let mut j = open + 1;
        loop {
            let c = *self.b.get(j)?;
            if c == q {
                break;
            }
            if (c == b'\\' && q == b'"') || !string_char(c) {
                return None;
            }
            j += 1;
        }
        self.i = j + 1;
        let value = Text(Cow::Borrowed(&self.text[open + 1..j]));
        Some(Spanned::new(open..self.i, value))
    }

    /// `[ "a", 'b', ]` on one line.
    fn array(&mut self) -> Option<Vec<Spanned<Text<'a>>>> {
        if self.peek() != Some(b'[') {
            return None;
        }
        self.i += 1;
        let mut items = Vec::new();
        loop {
            self.skip_ws();
            if self.peek() == Some(b']') {
                self.i += 1;
                return Some(items);
            }
            items.push(self.string()?);
            self.skip_ws();
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {}
                _ => return None,
            }
        }
    }

    /// An offset date-time such as `2027-01-15T12:00:00Z` or `2027-01-15T12:00:00.5+02:00`.
    fn datetime(&mut self) -> Option<Spanned<Datetime>> {
        let start = self.i;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b':' | b'.' | b'+'))
        {
            self.i += 1;
        }
        let token = &self.text[start..self.i];
        if !plain_datetime(token.as_bytes()) {
            return None;
        }
        let value = token.parse::<Datetime>().ok()?;
        Some(Spanned::new(start..self.i, value))
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM)`: the one date-time form read here.
fn plain_datetime(t: &[u8]) -> bool {
    let digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    if t.len() < 20 || !t.is_ascii() {
        return false;
    }
    let (date, rest) = t.split_at(10);
    let fixed = digits(&date[..4])
        && date[4] == b'-'
        && digits(&date[5..7])
        && date[7] == b'-'
        && digits(&date[8..10])
        && rest[0] == b'T'
        && digits(&rest[1..3])
        && rest[3] == b':'
        && digits(&rest[4..6])
        && rest[6] == b':'
        && digits(&rest[7..9]);
    if !fixed {
        return false;
    }
    let mut rest = &rest[9..];
    if let [b'.', frac @ ..] = rest {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return false;
        }
        rest = &frac[n..];
    }
    match rest {
        [b'Z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => digits(&[*h1, *h2, *m1, *m2]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything a `RawKey` holds, spans included, as text to compare.
    fn shape(k: &RawKey<'_>) -> String {
        fn s(v: &Spanned<Text<'_>>) -> String {
            format!("{:?}@{:?}", &**v.get_ref(), v.span())
        }
        fn list(v: &Option<Vec<Spanned<Text<'_>>>>) -> String {
            v.as_ref()
                .map(|v| v.iter().map(s).collect::<Vec<_>>().join(","))
                .unwrap_or_else(|| "-".into())
        }
        fn opt(v: &Option<Spanned<Text<'_>>>) -> String {
            v.as_ref().map(s).unwrap_or_else(|| "-".into())
        }
        fn dt(v: &Option<Spanned<Datetime>>) -> String {
            v.as_ref()
                .map(|d| format!("{}@{:?}", d.get_ref(), d.span()))
                .unwrap_or_else(|| "-".into())
        }
        format!(
            "id={} name={:?} consumer={} hash={} secret={} status={:?} expires={} targets={} allow={} origins={} access={:?} paths={} rate={} quota={} created={} prefix={:?} prev={} prev_exp={}",
            s(&k.id),
            k.name.as_deref(),
            opt(&k.consumer),
            opt(&k.hash),
            opt(&k.secret),
            k.status,
            dt(&k.expires_at),
            list(&k.targets),
            list(&k.allow_ips),
            list(&k.allow_origins),
            k.access,
            list(&k.paths),
            opt(&k.rate_limit),
            opt(&k.quota),
            dt(&k.created_at),
            k.prefix.as_deref(),
            opt(&k.previous_hash),
            dt(&k.previous_expires_at),
        )
    }

    /// `key` on the body of `[[keys]]` in `file`, and what toml makes of the same file.
    fn both(file: &str) -> (Option<String>, Result<String, String>) {
        let split = split(file).unwrap();
        assert_eq!(split.keys.len(), 1, "{file:?}");
        let (s, e) = split.keys[0];
        let fast = key(file, s as usize, e as usize).map(|k| shape(&k));
        let whole = toml::from_str::<crate::config::raw::RawConfig<'_>>(file)
            .map(|c| shape(&c.keys.unwrap()[0]))
            .map_err(|e| e.to_string());
        (fast, whole)
    }

    #[test]
    fn plain_keys_read_as_toml_reads_them() {
        let bodies = [
            "id = \"a\"\nhash = \"sha256:00\"\n",
            "id = \"a\"\r\nname = \"Ünïcode name, with # and ' inside\"\r\n",
            "  id='lit\\eral'  # comment\n\n# another\n\tconsumer = \"c\"",
            "id = \"k\"\nexpires_at = 2027-01-15T12:00:00Z\ncreated_at = 2026-11-01T00:00:00.250+02:00\nprevious_expires_at = 2027-01-01T00:00:00-05:30 # x\n",
            "id = \"k\"\ntargets = []\nallow_ips = [ \"10.0.0.0/8\" , '::1',]\npaths = [\"/a\",\"/b\"]\n",
            "id = \"k\"\nallow_origins = [\"https://a.example.com\", 'https://*.example.com']\n",
            "id = \"k\"\nstatus = \"inactive\"\naccess = 'read-only'\nrate_limit = \"5/second\"\nprefix = \"kg_ab\"\n",
            "id = \"k\"\nsecret = \"\"\nprevious_hash = \"sha256:11\"\n",
            "id = \"\"\n",
        ];
        for body in bodies {
            for before in [
                "",
                "[[targets]]\nname = \"t\"\nupstream = \"http://h\"\n\n",
                "keys_file = \"\"\"\n[[keys]]\n\"\"\"\n",
            ] {
                for after in ["", "\n[server]\nlisten = \"127.0.0.1:1\"\n"] {
                    let file = format!("{before}[[keys]]  # the key\n{body}{after}");
                    let (fast, whole) = both(&file);
                    assert_eq!(fast.as_ref(), whole.as_ref().ok(), "{file:?}");
                }
            }
        }
    }

    #[test]
    fn anything_else_is_left_to_toml() {
        let bodies = [
            "id = \"a\\u0041\"\n",
            "id = \"\"\"a\"\"\"\n",
            "id = '''a'''\n",
            "\"id\" = \"a\"\n",
            "id.x = \"a\"\n",
            "id = \"a\"\nid = \"b\"\n",
            "id = \"a\"\nalow_ips = []\n",
            "id = \"a\"\nstatus = \"actve\"\n",
            "id = \"a\"\nexpires_at = 2027-01-15 12:00:00Z\n",
            "id = \"a\"\nexpires_at = 2027-01-15T12:00:00\n",
            "id = \"a\"\nexpires_at = 2027-01-15\n",
            "id = \"a\"\nexpires_at = \"2027-01-15T12:00:00Z\"\n",
            "id = \"a\"\ntargets = [\n\"x\"\n]\n",
            "id = \"a\"\ntargets = [\"x\" # c\n]\n",
            "id = \"a\"\ntargets = \"x\"\n",
            "id = \"a\" junk\n",
            "id = \"a\"\rhash = \"b\"\n",
            "id = \"a\" # \u{7f}\n",
            "id = 5\n",
            "name = \"no id\"\n",
            "id = \"tab\tin a string is fine but not \u{1}\"\n",
        ];
        for body in bodies {
            let file = format!("[[keys]]\n{body}");
            let (fast, _) = both(&file);
            assert_eq!(fast, None, "{file:?}");
        }
    }

    #[test]
    fn headers_inside_strings_and_arrays_do_not_split() {
        let file = "a = \"\"\"\n[[keys]]\nb\"\"\"\"\"\nc = [\n  [1],\n]\nd = '''\n[x]'''\ne = \"[[keys]]\"\n[[keys]]\nid = \"k\"\n[s]\n";
        let s = split(file).unwrap();
        assert_eq!(s.keys.len(), 1);
        let (a, b) = s.keys[0];
        assert_eq!(&file[a as usize..b as usize], "id = \"k\"\n");
        assert_eq!(s.rest, file.replace("[[keys]]\nid = \"k\"\n", ""));
        let at = s.rest.find("[s]").unwrap();
        assert_eq!(file_offset(&s.map, at), file.find("[s]").unwrap());
    }

    #[test]
    fn only_plain_keys_headers_are_cut_out() {
        for header in ["[[keys]]", "  [[ keys ]]\t# c", "[[keys]]\r", "[[keys]] #"] {
            let s = split(&format!("{header}\nid = \"k\"\n")).unwrap();
            assert_eq!(s.keys.len(), 1, "{header:?}");
        }
        for header in [
            "[[\"keys\"]]",
            "[[keys.x]]",
            "[keys]",
            "[[keys]] x",
            "[[keys]] # \u{1}",
            "[[keysx]]",
        ] {
            let s = split(&format!("{header}\nid = \"k\"\n")).unwrap();
            assert!(s.keys.is_empty(), "{header:?}");
        }
    }
}
