//! Quotas such as `100000/month`: an amount of requests per calendar window in UTC, as the config
//! writes them, and the window arithmetic every quota counter shares.
//!
//! Windows are calendar ones, not rolling: an hour starts at :00, a day at 00:00 UTC, a week on
//! Monday at 00:00 UTC (ISO 8601) and a month on its 1st at 00:00 UTC. So a plan of "100,000 a
//! month" means the same thing to keygate, to a billing job and to the customer's invoice, and a
//! counter is never reset early because of when the first request came.

use time::{Date, Duration as Days, Month, OffsetDateTime, Time};

/// The calendar window a quota counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    Hour,
    Day,
    Week,
    Month,
}

impl Period {
    pub fn name(self) -> &'static str {
        match self {
            Period::Hour => "hour",
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        }
    }

    /// The window holding `now` (seconds since the Unix epoch, UTC): `[start, end)`, both in
    /// seconds since the epoch.
    pub fn window(self, now: u64) -> Window {
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        let at = OffsetDateTime::from_unix_timestamp(now).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let day = at.date();
        let midnight = |d: Date| d.with_time(Time::MIDNIGHT).assume_utc().unix_timestamp();
        let (start, end) = match self {
            Period::Hour => {
                let start = now - now.rem_euclid(3600);
                (start, start + 3600)
            }
            Period::Day => {
                let start = midnight(day);
                (start, start + 86_400)
            }
            Period::Week => {
                let monday = day - Days::days(i64::from(day.weekday().number_days_from_monday()));
                let start = midnight(monday);
                (start, start + 7 * 86_400)
            }
            Period::Month => {
                let first = Date::from_calendar_date(day.year(), day.month(), 1).unwrap_or(day);
                let next = match day.month() {
                    Month::December => Date::from_calendar_date(day.year() + 1, Month::January, 1),
                    m => Date::from_calendar_date(day.year(), m.next(), 1),
                }
                .unwrap_or(first);
                (midnight(first), midnight(next))
            }
        };
        Window {
            start: u64::try_from(start).unwrap_or(0),
            end: u64::try_from(end).unwrap_or(0),
        }
    }
}

/// One calendar window: `[start, end)` in seconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    pub start: u64,
    pub end: u64,
}

impl Window {
    /// Whole seconds from `now` to the window's end, at least 1 (a `Retry-After`).
    pub fn seconds_left(&self, now: u64) -> u64 {
        self.end.saturating_sub(now).max(1)
    }
}

/// A quota such as `100000/month`: `limit` requests per calendar `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    pub limit: u64,
    pub period: Period,
}

impl std::fmt::Display for Quota {
    /// The canonical text form, as the config and the admin API write it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.limit, self.period.name())
    }
}

impl Quota {
    /// Parses `N/hour|day|week|month`, N > 0 (underscores allowed: `100_000/month`).
    pub fn parse(text: &str) -> Result<Quota, String> {
        let (n, unit) = text.split_once('/').ok_or_else(|| {
            format!("quota {text:?} is not of the form N/period, e.g. \"100000/month\"")
        })?;
        let digits: String = n.trim().chars().filter(|&c| c != '_').collect();
        let limit: u64 = digits
            .parse()
            .ok()
            .filter(|_| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| format!("quota {text:?}: {n:?} is not a whole number"))?;
        if limit == 0 {
            return Err(format!("quota {text:?}: N must be at least 1"));
        }
        // Far above any plan, and room left so `limit + granted` never overflows.
        if limit > 1 << 53 {
            return Err(format!("quota {text:?}: N is too large"));
        }
        let period = match unit.trim() {
            "hour" | "h" => Period::Hour,
            "day" | "d" => Period::Day,
            "week" | "w" => Period::Week,
            "month" | "mo" => Period::Month,
            other => {
                return Err(format!(
                    "quota {text:?}: unknown period {other:?}; use hour, day, week or month"
                ));
            }
        };
        Ok(Quota { limit, period })
    }

    pub fn window(&self, now: u64) -> Window {
        self.period.window(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seconds since the epoch of a UTC date and time.
    fn at(y: i32, m: u8, d: u8, h: u8, min: u8, s: u8) -> u64 {
        let date = Date::from_calendar_date(y, Month::try_from(m).unwrap(), d).unwrap();
        date.with_hms(h, min, s)
            .unwrap()
            .assume_utc()
            .unix_timestamp() as u64
    }

    #[test]
    fn quotas_parse_and_print() {
        let q = Quota::parse("100000/month").unwrap();
        assert_eq!((q.limit, q.period), (100_000, Period::Month));
        assert_eq!(q.to_string(), "100000/month");
        assert_eq!(Quota::parse("100_000/month").unwrap().limit, 100_000);
        assert_eq!(Quota::parse("5/hour").unwrap().period, Period::Hour);
        assert_eq!(Quota::parse("5/day").unwrap().period, Period::Day);
        assert_eq!(Quota::parse(" 7 / week ").unwrap().period, Period::Week);
        for bad in [
            "",
            "100",
            "0/day",
            "-1/day",
            "1.5/day",
            "10/second",
            "10/minute",
            "10/year",
            "ten/day",
            "/day",
            "_/day",
            "99999999999999999999/day",
        ] {
            assert!(Quota::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_month_runs_from_the_first_to_the_first_whatever_its_length() {
        let m = Period::Month;
        // The last second of January belongs to January; the next is February's first.
        let jan = m.window(at(2027, 1, 31, 23, 59, 59));
        assert_eq!(
            (jan.start, jan.end),
            (at(2027, 1, 1, 0, 0, 0), at(2027, 2, 1, 0, 0, 0))
        );
        assert_eq!(
            m.window(at(2027, 2, 1, 0, 0, 0)).start,
            at(2027, 2, 1, 0, 0, 0)
        );
        // 28 days in 2027, 29 in the leap year 2028.
        assert_eq!(
            m.window(at(2027, 2, 14, 12, 0, 0)).end,
            at(2027, 3, 1, 0, 0, 0)
        );
        let leap = m.window(at(2028, 2, 29, 23, 59, 59));
        assert_eq!(
            (leap.start, leap.end),
            (at(2028, 2, 1, 0, 0, 0), at(2028, 3, 1, 0, 0, 0))
        );
        assert_eq!(leap.end - leap.start, 29 * 86_400);
        // 30- and 31-day months.
        assert_eq!(
            m.window(at(2027, 4, 30, 1, 0, 0)).end,
            at(2027, 5, 1, 0, 0, 0)
        );
        // December wraps into the next year.
        let dec = m.window(at(2026, 12, 31, 23, 59, 59));
        assert_eq!(
            (dec.start, dec.end),
            (at(2026, 12, 1, 0, 0, 0), at(2027, 1, 1, 0, 0, 0))
        );
        assert_eq!(
            m.window(at(2027, 1, 1, 0, 0, 0)).start,
            at(2027, 1, 1, 0, 0, 0)
        );
    }

    #[test]
    fn a_week_starts_on_monday_even_across_a_month_or_a_year() {
        let w = Period::Week;
        // 2026-12-03 is a Thursday; its week began on Monday 2026-11-30.
        let thu = w.window(at(2026, 12, 3, 4, 0, 0));
        assert_eq!(
            (thu.start, thu.end),
            (at(2026, 11, 30, 0, 0, 0), at(2026, 12, 7, 0, 0, 0))
        );
        // Sunday's last second is still the old week; Monday's first is the new one.
        assert_eq!(
            w.window(at(2026, 12, 6, 23, 59, 59)).start,
            at(2026, 11, 30, 0, 0, 0)
        );
        assert_eq!(
            w.window(at(2026, 12, 7, 0, 0, 0)).start,
            at(2026, 12, 7, 0, 0, 0)
        );
        // 2027-01-01 is a Friday: its week began in 2026.
        assert_eq!(
            w.window(at(2027, 1, 1, 12, 0, 0)).start,
            at(2026, 12, 28, 0, 0, 0)
        );
        // Leap day 2028-02-29 is a Tuesday.
        assert_eq!(
            w.window(at(2028, 2, 29, 0, 0, 0)).start,
            at(2028, 2, 28, 0, 0, 0)
        );
    }

    #[test]
    fn days_and_hours_are_utc_calendar_ones() {
        let d = Period::Day.window(at(2028, 2, 29, 23, 59, 59));
        assert_eq!(
            (d.start, d.end),
            (at(2028, 2, 29, 0, 0, 0), at(2028, 3, 1, 0, 0, 0))
        );
        let h = Period::Hour.window(at(2026, 12, 31, 23, 30, 0));
        assert_eq!(
            (h.start, h.end),
            (at(2026, 12, 31, 23, 0, 0), at(2027, 1, 1, 0, 0, 0))
        );
        assert_eq!(h.seconds_left(at(2026, 12, 31, 23, 59, 59)), 1);
        assert_eq!(h.seconds_left(h.end), 1);
        assert_eq!(h.seconds_left(at(2026, 12, 31, 23, 30, 0)), 1800);
    }
}
