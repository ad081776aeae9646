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
use super::counts::{Counts, CountsDoc, day_string, hour_string, parse_day};
use crate::model::Id;
use crate::snapshot::Snapshot;

#[derive(serde::Serialize, serde::Deserialize)]
struct FileDoc {
    version: u32,
    #[serde(default)]
    days: BTreeMap<String, BTreeMap<String, RowDoc>>,
    #[serde(default)]
    hours: BTreeMap<String, BTreeMap<String, RowDoc>>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct RowDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    consumer: Option<String>,
    #[serde(flatten)]
    counts: CountsDoc,
}

/// Where the counts are kept: `[usage] file`, else beside the keys file (or the config).
pub fn path_for(snap: &Snapshot, config: &Path) -> PathBuf {
    if let Some(f) = &snap.usage.file {
        return f.clone();
    }
    let base = snap.keys_file.as_deref().unwrap_or(config);
    let stem = base
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    base.with_file_name(format!("{stem}.usage.json"))
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

/// The book as the file's bytes.
pub fn render(book: &Book) -> serde_json::Result<Vec<u8>> {
    let rows = |rows: &std::collections::HashMap<Id, super::book::Row>| {
        rows.iter()
            .map(|(k, r)| {
                (
                    k.as_str().to_owned(),
                    RowDoc {
                        consumer: r.consumer.as_ref().map(|c| c.as_str().to_owned()),
                        counts: r.counts.doc(),
                    },
                )
            })
            .collect::<BTreeMap<_, _>>()
    };
    let doc = FileDoc {
        version: 1,
        days: book
            .days
            .iter()
            .map(|(d, r)| (day_string(*d), rows(r)))
            .collect(),
        hours: book
            .hours
            .iter()
            .map(|(h, r)| (hour_string(*h), rows(r)))
            .collect(),
    };
    serde_json::to_vec(&doc)
}

/// Writes `book` atomically (temp file, fsync, rename, fsync of the directory).
pub fn save(book: &Book, path: &Path) -> std::io::Result<()> {
    let bytes = render(book).map_err(std::io::Error::other)?;
    crate::store::write_atomic(path, &bytes)
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
        let hour = 493_428 + 23;
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
        assert!(
            text.contains("\"denials\":{\"ip_not_allowed\":1}"),
            "{text}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
