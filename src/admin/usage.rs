//! The usage endpoints (docs/usage.md), all role `read`:
//!
//! - `GET /v1/keys/{id}/usage?from=&to=&granularity=day|hour`: a key's counts per period;
//! - `GET /v1/consumers/{id}/usage?…`: its keys' counts summed per period;
//! - `GET /v1/usage?from=&to=`: one row per key per day, as JSON or, with `Accept: text/csv`
//!   or `format=csv`, as CSV for billing jobs.
//!
//! Each answers what was counted up to the request, the workers' unflushed counts included,
//! and, with `[cluster]`, the fleet's sums. Paged by `?limit=&after=` like the other lists.

use std::time::SystemTime;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

use super::{Admin, Answer, Problem, field_problem, json};
use crate::usage::counts::{
    Counts, CountsDoc, csv_header, csv_row, day_of_hour, day_string, hour_of, hour_string,
    parse_date,
};
use crate::usage::{Entry, Query, Scope};

/// Rows per page when `limit` is absent, and the most a page may hold: rows are small, and a
/// billing job reads many.
const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 10_000;
/// The longest range a request may span, in days: a year by day, a week by hour (hourly
/// counts are kept 48 hours anyway).
const MAX_DAYS: u32 = 366;
const MAX_HOUR_DAYS: u32 = 7;
/// The days a range spans when `from` is absent, `to` included: 30 by day; by hour 2, which
/// hold the 48 hours kept.
const DEFAULT_DAYS: u32 = 30;
const DEFAULT_HOUR_DAYS: u32 = 2;

/// The cursor of the next page of a CSV answer (a JSON answer has it as `next_after`).
pub const NEXT_AFTER: HeaderName = HeaderName::from_static("keygate-next-after");

/// What a usage request asks.
struct Ask {
    from: u32,
    to: u32,
    hourly: bool,
    limit: usize,
    after: Option<String>,
    csv: Option<bool>,
}

impl Ask {
    /// Reads `query`; `export` allows `format` (only `GET /v1/usage` answers CSV) and refuses
    /// `granularity` (its rows are days).
    fn parse(query: &str, export: bool) -> Result<Ask, Problem> {
        let (mut from, mut to, mut hourly, mut limit, mut after, mut csv) =
            (None, None, false, DEFAULT_LIMIT, None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned();
            let date = |field: &str| {
                parse_date(&v).ok_or_else(|| {
                    field_problem(
                        field,
                        format!("{field} must be a date such as 2026-12-03 (YYYY-MM-DD, UTC)"),
                    )
                })
            };
            match k {
                "from" => from = Some(date("from")?),
                "to" => to = Some(date("to")?),
                "granularity" if !export => {
                    hourly = match v.as_str() {
                        "day" => false,
                        "hour" => true,
                        _ => {
                            return Err(field_problem(
                                "granularity",
                                "granularity must be day or hour".into(),
                            ));
                        }
                    }
                }
                "format" if export => {
                    csv = Some(match v.as_str() {
                        "csv" => true,
                        "json" => false,
                        _ => {
                            return Err(field_problem(
                                "format",
                                "format must be csv or json".into(),
                            ));
                        }
                    })
                }
                "limit" => {
                    limit = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| {
                            field_problem("limit", format!("limit must be 1 to {MAX_LIMIT}"))
                        })?;
                }
                "after" => after = Some(v).filter(|a| !a.is_empty()),
                _ => return Err(field_problem(k, format!("unknown query parameter {k:?}"))),
            }
        }
        let today = i64::from(day_of_hour(hour_of(SystemTime::now())));
        let to = to.unwrap_or(today);
        let span = if hourly {
            DEFAULT_HOUR_DAYS
        } else {
            DEFAULT_DAYS
        };
        let from = from.unwrap_or(to - i64::from(span - 1));
        if from > to {
            return Err(field_problem("from", "from must be on or before to".into()));
        }
        let most = if hourly { MAX_HOUR_DAYS } else { MAX_DAYS };
        if to - from + 1 > i64::from(most) {
            return Err(field_problem(
                "to",
                format!(
                    "the range spans {} days; at most {most} {}",
                    to - from + 1,
                    if hourly { "by hour" } else { "by day" }
                ),
            ));
        }
        // Nothing was counted before 1970: days before it read as its first.
        let day = |d: i64| u32::try_from(d.max(0)).unwrap_or(u32::MAX);
        Ok(Ask {
            from: day(from),
            to: day(to),
            hourly,
            limit,
            after,
            csv,
        })
    }

    fn query(&self, key: Option<&str>, consumer: Option<&str>) -> Query {
        Query {
            from: self.from,
            to: self.to,
            hourly: self.hourly,
            key: key.map(str::to_owned),
            consumer: consumer.map(str::to_owned),
        }
    }

    fn period(&self, p: u32) -> String {
        if self.hourly {
            hour_string(p)
        } else {
            day_string(p)
        }
    }

    fn granularity(&self) -> &'static str {
        if self.hourly { "hour" } else { "day" }
    }
}

/// One period of a key's or a consumer's counts.
#[derive(Serialize)]
struct Period {
    period: String,
    #[serde(flatten)]
    counts: CountsDoc,
}

/// `GET /v1/keys/{id}/usage` and `GET /v1/consumers/{id}/usage`.
#[derive(Serialize)]
struct Series<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<&'a str>,
    consumer: Option<String>,
    from: String,
    to: String,
    granularity: &'static str,
    scope: Scope,
    /// Every period of the range summed, not only this page's.
    total: CountsDoc,
    items: Vec<Period>,
    next_after: Option<String>,
}

/// A row of `GET /v1/usage`.
#[derive(Serialize)]
struct Row {
    date: String,
    key_id: String,
    consumer: Option<String>,
    #[serde(flatten)]
    counts: CountsDoc,
}

#[derive(Serialize)]
struct Export {
    from: String,
    to: String,
    scope: Scope,
    items: Vec<Row>,
    next_after: Option<String>,
}

impl Admin {
    fn usage_on(&self) -> Result<&std::sync::Arc<crate::usage::Usage>, Problem> {
        self.usage.as_ref().ok_or_else(|| {
            Problem::new(
                StatusCode::NOT_FOUND,
                "usage_disabled",
                "usage counting is off ([usage] enabled = false)",
            )
        })
    }

    /// `GET /v1/keys/{id}/usage`.
    pub(super) async fn key_usage(&self, id: &str, query: &str) -> Answer {
        let usage = self.usage_on()?;
        let ask = Ask::parse(query, false)?;
        let consumer = {
            let snap = self.published.load();
            let key = snap.keys.iter().find(|k| k.id.as_str() == id);
            if key.is_none() && !usage.knows_key(id) {
                return Err(Problem::not_found("key", id));
            }
            key.and_then(|k| snap.consumer_of(k))
                .map(|c| c.id.as_str().to_owned())
        };
        let (rows, scope) = usage.entries(&ask.query(Some(id), None)).await;
        let consumer = consumer.or_else(|| {
            rows.iter()
                .rev()
                .find_map(|r| r.consumer.as_ref().map(|c| c.as_str().to_owned()))
        });
        let periods = rows.iter().map(|r| (r.period, r.counts)).collect();
        series(&ask, Some(id), consumer, scope, periods)
    }

    /// `GET /v1/consumers/{id}/usage`: the consumer's keys (as they were when counted) summed.
    pub(super) async fn consumer_usage(&self, id: &str, query: &str) -> Answer {
        let usage = self.usage_on()?;
        let ask = Ask::parse(query, false)?;
        let known = self
            .published
            .load()
            .consumers
            .iter()
            .any(|c| c.id.as_str() == id);
        if !known && !usage.knows_consumer(id) {
            return Err(Problem::not_found("consumer", id));
        }
        let (rows, scope) = usage.entries(&ask.query(None, Some(id))).await;
        let mut periods: Vec<(u32, Counts)> = Vec::new();
        for r in &rows {
            match periods.last_mut() {
                Some((p, c)) if *p == r.period => c.add(&r.counts),
                _ => periods.push((r.period, r.counts)),
            }
        }
        series(&ask, None, Some(id.to_owned()), scope, periods)
    }

    /// `GET /v1/usage`: one row per key per day, JSON or CSV.
    pub(super) async fn usage_export(&self, query: &str, headers: &HeaderMap) -> Answer {
        let usage = self.usage_on()?;
        let ask = Ask::parse(query, true)?;
        let csv = ask.csv.unwrap_or_else(|| {
            headers
                .get_all(ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.to_ascii_lowercase().contains("text/csv"))
        });
        let (rows, scope) = usage.entries(&ask.query(None, None)).await;
        // `DATE/KEY_ID`: the date is fixed-width and followed by `/`, so comparing cursors as
        // strings compares (date, key id), the order of the rows.
        let cursor = |r: &Entry| format!("{}/{}", day_string(r.period), r.key.as_str());
        let mut page: Vec<&Entry> = rows
            .iter()
            .filter(|r| ask.after.as_deref().is_none_or(|a| cursor(r).as_str() > a))
            .take(ask.limit + 1)
            .collect();
        let more = page.len() > ask.limit;
        page.truncate(ask.limit);
        let next = more.then(|| page.last().map(|r| cursor(r))).flatten();
        if csv {
            let mut out = csv_header();
            for r in &page {
                csv_row(
                    &mut out,
                    r.period,
                    r.key.as_str(),
                    r.consumer.as_ref().map(|c| c.as_str()),
                    &r.counts,
                );
            }
            let mut resp = Response::new(Full::new(Bytes::from(out)));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8; header=present"),
            );
            if let Some(n) = next.and_then(|n| HeaderValue::try_from(n).ok()) {
                resp.headers_mut().insert(NEXT_AFTER, n);
            }
            return Ok(resp);
        }
        json(
            StatusCode::OK,
            &Export {
                from: day_string(ask.from),
                to: day_string(ask.to),
                scope,
                items: page
                    .iter()
                    .map(|r| Row {
                        date: day_string(r.period),
                        key_id: r.key.as_str().to_owned(),
                        consumer: r.consumer.as_ref().map(|c| c.as_str().to_owned()),
                        counts: r.counts.doc(),
                    })
                    .collect(),
                next_after: next,
            },
        )
    }
}

/// A key's or consumer's periods (sorted) as one page, with the range's total.
fn series(
    ask: &Ask,
    key: Option<&str>,
    consumer: Option<String>,
    scope: Scope,
    periods: Vec<(u32, Counts)>,
) -> Answer {
    let mut total = Counts::default();
    for (_, c) in &periods {
        total.add(c);
    }
    let mut items: Vec<Period> = periods
        .iter()
        .map(|(p, c)| Period {
            period: ask.period(*p),
            counts: c.doc(),
        })
        .filter(|p| ask.after.as_deref().is_none_or(|a| p.period.as_str() > a))
        .take(ask.limit + 1)
        .collect();
    let more = items.len() > ask.limit;
    items.truncate(ask.limit);
    let next = more
        .then(|| items.last().map(|p| p.period.clone()))
        .flatten();
    json(
        StatusCode::OK,
        &Series {
            key_id: key,
            consumer,
            from: day_string(ask.from),
            to: day_string(ask.to),
            granularity: ask.granularity(),
            scope,
            total: total.doc(),
            items,
            next_after: next,
        },
    )
}
