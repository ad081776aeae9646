//! The usage file: every kept row, as JSON, beside the keys file (`keys.usage.json` beside
//! `keys.toml`, `keygate.usage.json` beside the config without one), or where `[usage] file`
//! says. Written whole and atomically (temp file, fsync, rename, fsync of the directory) every
//! `flush_interval` when something changed, and at shutdown.
//!
//! ```json
//! {"version":1,
//!  "days":{"2026-12-03":{"key-1":{"consumer":"acme","requests":3,"allowed":2,"denied":1,
//!          "denials":{"rate_limited":1},"responses":{"2xx":2,"3xx":0,"4xx":0,"5xx":0},
//!          "bytes_in":0,"bytes_out":812}}},
//!  "hours":{"2026-12-03T09:00:00Z":{…}}}
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::book::Book;
use super::counts::{CLASSES, CODES, Counts, CountsDoc, day_string, hour_string, parse_day};
use crate::model::Id;
use crate::snapshot::Snapshot;

#[derive(serde::Deserialize)]
struct FileDoc {
    /// 1; a file of a later format is not read as this one.
    version: u32,
    #[serde(default)]
    days: BTreeMap<String, BTreeMap<String, RowDoc>>,
    #[serde(default)]
    hours: BTreeMap<String, BTreeMap<String, RowDoc>>,
}

#[derive(serde::Deserialize)]
struct RowDoc {
    #[serde(default)]
    consumer: Option<String>,
    #[serde(flatten)]
    counts: CountsDoc,
}

/// Where the counts are kept: `[usage] file`, else beside the keys file (or the config).
pub fn path_for(snap: &Snapshot, config: &Path) -> PathBuf {
    if let Some(f) = &snap.usage.file {
        return f.clone();
    }
    snap.state_file(config, "usage")
}

/// The file's rows; an empty book for a missing file. A row that does not read (an id that is
/// not one, a date that is not one) is skipped.
pub fn load(path: &Path) -> std::io::Result<Book> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Book::default()),
        Err(e) => return Err(e),
    };
    let doc: FileDoc = serde_json::from_slice(&text).map_err(std::io::Error::other)?;
    if doc.version != 1 {
        return Err(std::io::Error::other(format!(
            "usage file version {} (this keygate reads 1)",
            doc.version
        )));
    }
    let mut book = Book::default();
    for (day, rows) in &doc.days {
        let Some(day) = parse_day(day) else { continue };
        for (key, row) in rows {
            if let Some((key, consumer, counts)) = read_row(key, row) {
                book.add_day(day, &key, &consumer, &counts);
            }
        }
    }
    for (hour, rows) in &doc.hours {
        let Some(hour) = parse_hour(hour) else {
            continue;
        };
        for (key, row) in rows {
            if let Some((key, consumer, counts)) = read_row(key, row) {
                book.add_hour(hour, &key, &consumer, &counts);
            }
        }
    }
    Ok(book)
}

fn read_row(key: &str, row: &RowDoc) -> Option<(Id, Option<Id>, Counts)> {
    let key = Id::new(key)?;
    let consumer = row.consumer.as_deref().and_then(Id::new);
    Some((key, consumer, Counts::from_doc(&row.counts)))
}

/// `YYYY-MM-DDTHH:00:00Z` back to an hour number.
fn parse_hour(s: &str) -> Option<u32> {
    let day = parse_day(s.get(..10)?)?;
    if s.get(10..11)? != "T" || s.get(13..)? != ":00:00Z" {
        return None;
    }
    let h: u32 = s.get(11..13)?.parse().ok().filter(|h| *h < 24)?;
    Some(day * 24 + h)
}

/// The book as the file's bytes, written directly rather than through serde's maps of owned
/// strings: a flush rewrites the whole file, so this is most of its cost (docs/performance.md).
/// Ids need no escaping: they are `[A-Za-z0-9._:@-]`, checked when the config was loaded.
pub fn render(book: &Book) -> Vec<u8> {
    use std::fmt::Write as _;
    let rows = book
        .days
        .values()
        .chain(book.hours.values())
        .map(|r| r.len());
    let mut out = String::with_capacity(64 + rows.sum::<usize>() * 160);
    out.push_str("{\"version\":1,\"days\":{");
    let table = |out: &mut String, rows: &std::collections::HashMap<Id, super::book::Row>| {
        for (i, (key, row)) in rows.iter().enumerate() {
            let c = &row.counts;
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(out, "{sep}\"{}\":{{", key.as_str());
            if let Some(consumer) = &row.consumer {
                let _ = write!(out, "\"consumer\":\"{}\",", consumer.as_str());
            }
            let _ = write!(
                out,
                "\"requests\":{},\"allowed\":{},\"denied\":{},\"denials\":{{",
                c.requests,
                c.allowed,
                c.denied()
            );
            let mut first = true;
            for (code, n) in CODES.iter().zip(c.codes) {
                if n != 0 {
                    let sep = if first { "" } else { "," };
                    let _ = write!(out, "{sep}\"{code}\":{n}");
                    first = false;
                }
            }
            out.push_str("},\"responses\":{");
            for (i, (class, n)) in CLASSES.iter().zip(c.classes).enumerate() {
                let sep = if i == 0 { "" } else { "," };
                let _ = write!(out, "{sep}\"{class}\":{n}");
            }
            let _ = write!(
                out,
                "}},\"bytes_in\":{},\"bytes_out\":{}}}",
                c.bytes_in, c.bytes_out
            );
        }
    };
    for (i, (day, rows)) in book.days.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        let _ = write!(out, "{sep}\"{}\":{{", day_string(*day));
        table(&mut out, rows);
        out.push('}');
    }
    out.push_str("},\"hours\":{");
    for (i, (hour, rows)) in book.hours.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        let _ = write!(out, "{sep}\"{}\":{{", hour_string(*hour));
        table(&mut out, rows);
        out.push('}');
    }
    out.push_str("}}\n");
    out.into_bytes()
}

/// Writes `book` atomically (temp file, fsync, rename, fsync of the directory).
pub fn save(book: &Book, path: &Path) -> std::io::Result<()> {
    crate::store::write_atomic(path, &render(book))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::counts::Record;

    #[test]
    fn a_book_survives_the_file() {
        let dir = std::env::temp_dir().join(format!("keygate-usage-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys.usage.json");
        assert_eq!(load(&path).unwrap(), Book::default());
        let mut c = Counts::default();
        c.add_record(&Record {
            allowed: true,
            upstream_status: Some(404),
            bytes_in: 10,
            bytes_out: 20,
            ..Record::default()
        });
        c.add_record(&Record {
            code: Some("ip_not_allowed"),
            ..Record::default()
        });
        let mut book = Book::default();
        // 2026-12-03T23:00:00Z.
        let hour = crate::usage::counts::parse_day("2026-12-03").unwrap() * 24 + 23;
        book.add(&crate::usage::shard::Taken {
            key: Id::new("k-1").unwrap(),
            consumer: Id::new("acme"),
            hour,
            counts: c,
        });
        save(&book, &path).unwrap();
        assert_eq!(load(&path).unwrap(), book);
        assert_eq!(parse_hour(&hour_string(hour)), Some(hour));
        let text = std::fs::read_to_string(&path).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            doc["days"]["2026-12-03"]["k-1"],
            serde_json::json!({"consumer": "acme", "requests": 2, "allowed": 1, "denied": 1,
                "denials": {"ip_not_allowed": 1},
                "responses": {"2xx": 0, "3xx": 0, "4xx": 1, "5xx": 0},
                "bytes_in": 10, "bytes_out": 20}),
            "{text}"
        );
        assert_eq!(doc["hours"]["2026-12-03T23:00:00Z"]["k-1"]["requests"], 2);
        // Many keys, several days: still one JSON document that reads back the same.
        for i in 0..50 {
            let key = Id::new(&format!("k-{i}")).unwrap();
            book.add_day(20_000 + i % 3, &key, &None, &c);
        }
        save(&book, &path).unwrap();
        assert_eq!(load(&path).unwrap(), book);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
