//! One key's counts over one period, the UTC periods they are kept by, and their JSON and CSV
//! forms (the file, the admin API and the fleet's Redis fields all name them the same way).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The refusal codes counted per key, in the order of the CSV columns (`denied_<code>`). Only
/// codes a request with a known key can end with: the rest (`no_route`, `key_missing`,
/// `key_invalid`, `too_many_failures`) are refused before any key is known. A code not listed
/// (a newer refusal) is counted under `other`. Appending (after `other`, so that no column
/// before it moves) is fine; renaming or reordering breaks billing jobs that read the CSV by
/// position.
pub const CODES: [&str; 14] = [
    "key_inactive",
    "key_expired",
    "ip_not_allowed",
    "target_not_allowed",
    "access_denied",
    "rate_limited",
    "rate_limit_unavailable",
    "quota_exceeded",
    "body_too_large",
    "invalid_body",
    "upstream_unavailable",
    "upstream_timeout",
    "other",
    "origin_not_allowed",
];

/// Where `other` is in [`CODES`].
const OTHER: usize = 12;

/// The upstream's response classes, in CSV order.
pub const CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];

/// The index of `code` in [`CODES`] (`other` for a code not listed).
pub fn code_index(code: &str) -> usize {
    CODES.iter().position(|c| *c == code).unwrap_or(OTHER)
}

/// What one request adds, as the request path knows it when the response body ends.
#[derive(Debug, Clone, Copy, Default)]
pub struct Record {
    /// Let through by authorize and the rate limit (what a quota spends).
    pub allowed: bool,
    /// keygate's refusal code, if it answered itself.
    pub code: Option<&'static str>,
    /// The upstream's status, when it answered.
    pub upstream_status: Option<u16>,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// A key's counts over a period. Fixed size: adding a request allocates nothing.
///
/// In this order, `repr(C)`: what every answered request adds (requests, allowed, bytes, the
/// 2xx class) is in the first 40 bytes, on one cache line with the slot's `in_flight` in a
/// worker's shard; the refusal codes, added only on refusals, come after.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Counts {
    pub requests: u64,
    pub allowed: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub classes: [u64; CLASSES.len()],
    pub codes: [u64; CODES.len()],
}

impl Counts {
    pub fn add_record(&mut self, r: &Record) {
        self.requests += 1;
        self.allowed += u64::from(r.allowed);
        if let Some(code) = r.code {
            self.codes[code_index(code)] += 1;
        }
        if let Some(class) = r.upstream_status.and_then(|s| (s / 100).checked_sub(2))
            && let Some(n) = self.classes.get_mut(usize::from(class))
        {
            *n += 1;
        }
        self.bytes_in = self.bytes_in.saturating_add(r.bytes_in);
        self.bytes_out = self.bytes_out.saturating_add(r.bytes_out);
    }

    pub fn add(&mut self, o: &Counts) {
        self.requests += o.requests;
        self.allowed += o.allowed;
        for (a, b) in self.codes.iter_mut().zip(o.codes) {
            *a += b;
        }
        for (a, b) in self.classes.iter_mut().zip(o.classes) {
            *a += b;
        }
        self.bytes_in = self.bytes_in.saturating_add(o.bytes_in);
        self.bytes_out = self.bytes_out.saturating_add(o.bytes_out);
    }

    pub fn is_zero(&self) -> bool {
        *self == Counts::default()
    }

    /// Refused before reaching the upstream by authorize, the rate limit or a quota.
    pub fn denied(&self) -> u64 {
        self.requests.saturating_sub(self.allowed)
    }

    /// Every counter by its field name (as Redis hash fields): `requests`, `allowed`,
    /// `denied_<code>`, `2xx`…, `bytes_in`, `bytes_out`; zeros left out.
    pub fn fields(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        let named = [("requests", self.requests), ("allowed", self.allowed)]
            .into_iter()
            .map(|(n, v)| (n.to_owned(), v));
        let codes = CODES
            .iter()
            .zip(self.codes)
            .map(|(c, v)| (format!("denied_{c}"), v));
        let classes = CLASSES
            .iter()
            .zip(self.classes)
            .map(|(c, v)| ((*c).to_owned(), v));
        let bytes = [("bytes_in", self.bytes_in), ("bytes_out", self.bytes_out)]
            .into_iter()
            .map(|(n, v)| (n.to_owned(), v));
        named
            .chain(codes)
            .chain(classes)
            .chain(bytes)
            .filter(|(_, v)| *v != 0)
    }

    /// Sets the counter named `field` (as [`Counts::fields`] names it); `false` for an unknown
    /// name.
    pub fn set_field(&mut self, field: &str, v: u64) -> bool {
        let slot = match field {
            "requests" => &mut self.requests,
            "allowed" => &mut self.allowed,
            "bytes_in" => &mut self.bytes_in,
            "bytes_out" => &mut self.bytes_out,
            f => {
                if let Some(code) = f.strip_prefix("denied_") {
                    match CODES.iter().position(|c| *c == code) {
                        Some(i) => &mut self.codes[i],
                        None => return false,
                    }
                } else {
                    match CLASSES.iter().position(|c| *c == f) {
                        Some(i) => &mut self.classes[i],
                        None => return false,
                    }
                }
            }
        };
        *slot = v;
        true
    }

    /// The JSON form: `{"requests", "allowed", "denied", "denials": {code: n},
    /// "responses": {"2xx": n, …}, "bytes_in", "bytes_out"}` (codes with no count left out).
    pub fn doc(&self) -> CountsDoc {
        CountsDoc {
            requests: self.requests,
            allowed: self.allowed,
            denied: self.denied(),
            denials: CODES
                .iter()
                .zip(self.codes)
                .filter(|(_, v)| *v != 0)
                .map(|(c, v)| ((*c).to_owned(), v))
                .collect(),
            responses: CLASSES
                .iter()
                .zip(self.classes)
                .map(|(c, v)| ((*c).to_owned(), v))
                .collect(),
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
        }
    }

    /// Back from [`Counts::doc`]'s form; unknown codes go to `other`.
    pub fn from_doc(d: &CountsDoc) -> Counts {
        let mut c = Counts {
            requests: d.requests,
            allowed: d.allowed,
            bytes_in: d.bytes_in,
            bytes_out: d.bytes_out,
            ..Counts::default()
        };
        for (code, v) in &d.denials {
            c.codes[code_index(code)] += v;
        }
        for (class, v) in &d.responses {
            if let Some(i) = CLASSES.iter().position(|x| x == class) {
                c.classes[i] += v;
            }
        }
        c
    }
}

/// [`Counts`] as JSON: the file's rows and the admin API's items.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct CountsDoc {
    #[serde(default)]
    pub requests: u64,
    #[serde(default)]
    pub allowed: u64,
    /// `requests - allowed`: written for readers, ignored when read back.
    #[serde(default)]
    pub denied: u64,
    #[serde(default)]
    pub denials: BTreeMap<String, u64>,
    #[serde(default)]
    pub responses: BTreeMap<String, u64>,
    #[serde(default)]
    pub bytes_in: u64,
    #[serde(default)]
    pub bytes_out: u64,
}

/// The CSV header of `GET /v1/usage?format=csv`.
pub fn csv_header() -> String {
    let mut h = String::from("date,key_id,consumer,requests,allowed,denied");
    for c in CODES {
        h.push_str(",denied_");
        h.push_str(c);
    }
    for c in CLASSES {
        h.push(',');
        h.push_str(c);
    }
    h.push_str(",bytes_in,bytes_out\n");
    h
}

/// One CSV row. Ids are `[A-Za-z0-9._:@-]` (checked when the config is loaded), so no field
/// needs quoting.
pub fn csv_row(out: &mut String, day: u32, key: &str, consumer: Option<&str>, c: &Counts) {
    use std::fmt::Write as _;
    let _ = write!(
        out,
        "{},{key},{},{},{},{}",
        day_string(day),
        consumer.unwrap_or(""),
        c.requests,
        c.allowed,
        c.denied()
    );
    for v in c.codes.iter().chain(&c.classes) {
        let _ = write!(out, ",{v}");
    }
    let _ = writeln!(out, ",{},{}", c.bytes_in, c.bytes_out);
}

/// Hours since the Unix epoch (UTC): the hourly period of `t`.
pub fn hour_of(t: SystemTime) -> u32 {
    (t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
        / 3600) as u32
}

/// The UTC day of an hour (days since the epoch).
pub fn day_of_hour(hour: u32) -> u32 {
    hour / 24
}

/// `YYYY-MM-DD` of a day number.
pub fn day_string(day: u32) -> String {
    let date =
        time::Date::from_julian_day(UNIX_EPOCH_JULIAN + day as i32).unwrap_or(time::Date::MIN);
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// `YYYY-MM-DDTHH:00:00Z` of an hour number.
pub fn hour_string(hour: u32) -> String {
    format!("{}T{:02}:00:00Z", day_string(day_of_hour(hour)), hour % 24)
}

/// The day number of `YYYY-MM-DD`, if it is one from 1970-01-01 on.
pub fn parse_day(s: &str) -> Option<u32> {
    u32::try_from(parse_date(s)?).ok()
}

/// Days from 1970-01-01 to the date `YYYY-MM-DD` (RFC 3339 `full-date`, years 0000 to 9999);
/// negative before 1970.
pub fn parse_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())
            .flatten()
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let month = time::Month::try_from(u8::try_from(m).ok()?).ok()?;
    let date = time::Date::from_calendar_date(i32::try_from(y).ok()?, month, u8::try_from(d).ok()?)
        .ok()?;
    Some(i64::from(date.to_julian_day() - UNIX_EPOCH_JULIAN))
}

/// The Julian day number of 1970-01-01.
const UNIX_EPOCH_JULIAN: i32 = 2_440_588;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_utc_days_and_hours() {
        // 2026-12-03T23:59:59Z and one second later.
        let before = UNIX_EPOCH + Duration::from_secs(1_796_342_399);
        let after = before + Duration::from_secs(1);
        assert_eq!(day_string(day_of_hour(hour_of(before))), "2026-12-03");
        assert_eq!(hour_string(hour_of(before)), "2026-12-03T23:00:00Z");
        assert_eq!(day_string(day_of_hour(hour_of(after))), "2026-12-04");
        assert_eq!(hour_string(hour_of(after)), "2026-12-04T00:00:00Z");
        assert_eq!(parse_day("1970-01-01"), Some(0));
        assert_eq!(parse_date("1969-12-31"), Some(-1));
        assert!(parse_date("0000-01-01").is_some() && parse_date("9999-12-31").is_some());
        assert_eq!(parse_day("2026-12-04"), Some(day_of_hour(hour_of(after))));
        assert_eq!(day_string(parse_day("2028-02-29").unwrap()), "2028-02-29");
        for bad in [
            "2027-02-29",
            "2026-13-01",
            "2026-1-01",
            "26-12-01",
            "2026-12-0a",
            "",
        ] {
            assert_eq!(parse_day(bad), None, "{bad}");
        }
    }

    #[test]
    fn records_count_by_code_and_class() {
        let mut c = Counts::default();
        c.add_record(&Record {
            allowed: true,
            upstream_status: Some(201),
            bytes_in: 5,
            bytes_out: 7,
            ..Record::default()
        });
        c.add_record(&Record {
            code: Some("rate_limited"),
            bytes_out: 100,
            ..Record::default()
        });
        c.add_record(&Record {
            allowed: true,
            code: Some("upstream_timeout"),
            ..Record::default()
        });
        c.add_record(&Record {
            code: Some("something_new"),
            ..Record::default()
        });
        c.add_record(&Record {
            allowed: true,
            upstream_status: Some(503),
            ..Record::default()
        });
        assert_eq!((c.requests, c.allowed, c.denied()), (5, 3, 2));
        assert_eq!(c.codes[code_index("rate_limited")], 1);
        assert_eq!(c.codes[code_index("upstream_timeout")], 1);
        assert_eq!(c.codes[code_index("other")], 1);
        assert_eq!(c.classes, [1, 0, 0, 1]);
        assert_eq!((c.bytes_in, c.bytes_out), (5, 107));
        assert_eq!(Counts::from_doc(&c.doc()), c);
        let mut back = Counts::default();
        for (f, v) in c.fields() {
            assert!(back.set_field(&f, v), "{f}");
        }
        assert_eq!(back, c);
    }

    #[test]
    fn csv_rows_have_the_header_s_columns() {
        let mut c = Counts::default();
        c.add_record(&Record {
            allowed: true,
            upstream_status: Some(200),
            bytes_in: 3,
            bytes_out: 4,
            ..Record::default()
        });
        c.add_record(&Record {
            code: Some("key_expired"),
            ..Record::default()
        });
        let mut out = csv_header();
        csv_row(
            &mut out,
            parse_day("2026-12-03").unwrap(),
            "k-1",
            Some("acme"),
            &c,
        );
        csv_row(
            &mut out,
            parse_day("2026-12-04").unwrap(),
            "k-2",
            None,
            &Counts::default(),
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "date,key_id,consumer,requests,allowed,denied,denied_key_inactive,denied_key_expired,\
             denied_ip_not_allowed,denied_target_not_allowed,denied_access_denied,\
             denied_rate_limited,denied_rate_limit_unavailable,denied_quota_exceeded,\
             denied_body_too_large,denied_invalid_body,denied_upstream_unavailable,\
             denied_upstream_timeout,denied_other,denied_origin_not_allowed,2xx,3xx,4xx,5xx,\
             bytes_in,bytes_out"
        );
        assert_eq!(
            lines[1],
            "2026-12-03,k-1,acme,2,1,1,0,1,0,0,0,0,0,0,0,0,0,0,0,0,1,0,0,0,3,4"
        );
        assert_eq!(
            lines[2],
            "2026-12-04,k-2,,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0"
        );
        let columns = lines[0].split(',').count();
        assert!(lines.iter().all(|l| l.split(',').count() == columns));
    }
}
