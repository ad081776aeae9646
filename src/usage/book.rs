//! The counts of every key that was used, by UTC day (kept `retention` days) and by hour
//! (kept 48 hours): what the file holds and what the admin API reads on one instance.
//! Only keys with counts have rows, so memory grows with the keys used, not the keys that
//! exist.

use std::collections::{BTreeMap, HashMap};

use super::counts::{Counts, day_of_hour};
use super::shard::Taken;
use crate::model::Id;

/// Hourly rows are kept this many hours, the current one included.
pub const HOURS_KEPT: u32 = 48;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Book {
    pub days: BTreeMap<u32, HashMap<Id, Row>>,
    pub hours: BTreeMap<u32, HashMap<Id, Row>>,
}

/// A key's counts in one period, with the consumer it belonged to when counted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Row {
    pub consumer: Option<Id>,
    pub counts: Counts,
}

/// What a reader asks for: days `from..=to` (days since the epoch, UTC), by day or by hour,
/// of one key, of one consumer's keys, or of all.
#[derive(Debug, Clone)]
pub struct Query {
    pub from: u32,
    pub to: u32,
    pub hourly: bool,
    pub key: Option<String>,
    pub consumer: Option<String>,
}

impl Query {
    /// The periods the query spans: days, or the hours of those days.
    pub fn periods(&self) -> std::ops::RangeInclusive<u32> {
        if self.hourly {
            self.from * 24..=self.to * 24 + 23
        } else {
            self.from..=self.to
        }
    }

    pub fn wants(&self, key: &str, consumer: Option<&str>) -> bool {
        self.key.as_deref().is_none_or(|k| k == key)
            && self.consumer.as_deref().is_none_or(|c| consumer == Some(c))
    }
}

/// One row of an answer: a key's counts in a period (a day or an hour number).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub period: u32,
    pub key: Id,
    pub consumer: Option<Id>,
    pub counts: Counts,
}

impl Row {
    fn add(&mut self, consumer: &Option<Id>, counts: &Counts) {
        if consumer.is_some() {
            self.consumer.clone_from(consumer);
        }
        self.counts.add(counts);
    }
}

impl Book {
    /// Adds counts taken from the shards to their hour and their day.
    pub fn add(&mut self, t: &Taken) {
        self.add_hour(t.hour, &t.key, &t.consumer, &t.counts);
        self.add_day(day_of_hour(t.hour), &t.key, &t.consumer, &t.counts);
    }

    pub fn add_day(&mut self, day: u32, key: &Id, consumer: &Option<Id>, counts: &Counts) {
        let day = self.days.entry(day).or_default();
        day.entry(key.clone()).or_default().add(consumer, counts);
    }

    pub fn add_hour(&mut self, hour: u32, key: &Id, consumer: &Option<Id>, counts: &Counts) {
        let h = self.hours.entry(hour).or_default();
        h.entry(key.clone()).or_default().add(consumer, counts);
    }

    /// Drops the days before the last `retention_days` (today, the day of `now_hour`, is the
    /// last) and the hours before the last [`HOURS_KEPT`]. Returns whether anything went.
    pub fn prune(&mut self, now_hour: u32, retention_days: u32) -> bool {
        let first_day = day_of_hour(now_hour).saturating_sub(retention_days.saturating_sub(1));
        let first_hour = now_hour.saturating_sub(HOURS_KEPT - 1);
        let (days, hours) = (self.days.len(), self.hours.len());
        self.days = self.days.split_off(&first_day);
        self.hours = self.hours.split_off(&first_hour);
        days != self.days.len() || hours != self.hours.len()
    }

    /// The rows `q` asks for, by period then key id.
    pub fn entries(&self, q: &Query) -> Vec<Entry> {
        let table = if q.hourly { &self.hours } else { &self.days };
        let mut out = Vec::new();
        for (&period, rows) in table.range(q.periods()) {
            let start = out.len();
            for (key, row) in rows {
                if q.wants(key.as_str(), row.consumer.as_ref().map(Id::as_str)) {
                    out.push(Entry {
                        period,
                        key: key.clone(),
                        consumer: row.consumer.clone(),
                        counts: row.counts,
                    });
                }
            }
            out[start..].sort_by(|a, b| a.key.as_str().cmp(b.key.as_str()));
        }
        out
    }

    /// Whether `key` has any row.
    pub fn knows_key(&self, key: &str) -> bool {
        self.days
            .values()
            .any(|rows| rows.keys().any(|k| k.as_str() == key))
    }

    /// Whether a key of `consumer` has any row.
    pub fn knows_consumer(&self, consumer: &str) -> bool {
        self.days.values().any(|rows| {
            rows.values()
                .any(|r| r.consumer.as_ref().is_some_and(|c| c.as_str() == consumer))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::counts::{Record, hour_of, parse_day};
    use std::time::{Duration, UNIX_EPOCH};

    fn id(s: &str) -> Id {
        Id::new(s).unwrap()
    }

    fn taken(key: &str, consumer: Option<&str>, hour: u32, requests: u64) -> Taken {
        let mut counts = Counts::default();
        for _ in 0..requests {
            counts.add_record(&Record {
                allowed: true,
                upstream_status: Some(200),
                bytes_in: 1,
                bytes_out: 2,
                ..Record::default()
            });
        }
        Taken {
            key: id(key),
            consumer: consumer.map(id),
            hour,
            counts,
        }
    }

    #[test]
    fn counts_land_in_their_utc_day_and_hour_and_shards_merge() {
        // The last hour of 2026-12-03 and the first of 2026-12-04, UTC.
        let last = hour_of(UNIX_EPOCH + Duration::from_secs(1_796_342_399));
        let first = last + 1;
        let mut book = Book::default();
        // Two workers' shards, both with key a.
        book.add(&taken("a", Some("acme"), last, 2));
        book.add(&taken("a", Some("acme"), last, 3));
        book.add(&taken("a", Some("acme"), first, 1));
        book.add(&taken("b", None, first, 4));
        let (d3, d4) = (
            parse_day("2026-12-03").unwrap(),
            parse_day("2026-12-04").unwrap(),
        );
        let days = book.entries(&Query {
            from: d3,
            to: d4,
            hourly: false,
            key: None,
            consumer: None,
        });
        let summary: Vec<(u32, &str, u64)> = days
            .iter()
            .map(|e| (e.period, e.key.as_str(), e.counts.requests))
            .collect();
        assert_eq!(summary, [(d3, "a", 5), (d4, "a", 1), (d4, "b", 4)]);
        assert_eq!(days[0].counts.bytes_out, 10);
        let hours = book.entries(&Query {
            from: d4,
            to: d4,
            hourly: true,
            key: Some("a".into()),
            consumer: None,
        });
        assert_eq!(hours.len(), 1);
        assert_eq!((hours[0].period, hours[0].counts.requests), (first, 1));
        let acme = book.entries(&Query {
            from: d3,
            to: d4,
            hourly: false,
            key: None,
            consumer: Some("acme".into()),
        });
        assert_eq!(acme.len(), 2);
        assert!(book.knows_key("b") && !book.knows_key("c"));
        assert!(book.knows_consumer("acme") && !book.knows_consumer("other"));
    }

    #[test]
    fn retention_drops_old_days_and_hours_past_48() {
        let now = hour_of(UNIX_EPOCH + Duration::from_secs(1_796_342_399));
        let today = day_of_hour(now);
        let mut book = Book::default();
        for back in [0u32, 1, 2, 47, 48, 24 * 89, 24 * 90, 24 * 200] {
            book.add(&taken("a", None, now - back, 1));
        }
        assert!(book.prune(now, 90));
        let days: Vec<u32> = book.days.keys().map(|d| today - d).collect();
        // Today and the 89 days before it stay; the 90th day back and older go.
        assert!(days.iter().all(|d| *d < 90), "{days:?}");
        assert!(days.contains(&89) && days.contains(&0));
        let hours: Vec<u32> = book.hours.keys().map(|h| now - h).collect();
        assert_eq!(hours, [47, 2, 1, 0]);
        assert!(!book.prune(now, 90), "nothing more to drop");
    }
}
