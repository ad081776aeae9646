//! Rates such as `10/second`, as the config writes them and the limiters read them.

use std::num::NonZeroU32;
use std::time::Duration;

/// A rate such as `10/second`: `count` requests per `per`, with a burst of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: NonZeroU32,
    pub per: Duration,
}

impl std::fmt::Display for Rate {
    /// The canonical text form: `10/second`, `1000/minute`, `5/hour`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "second",
            60 => "minute",
            _ => "hour",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl Rate {
    /// Parses `N/second|minute|hour` (also `s`, `m`, `h`, `sec`, `min`, `hr`), N > 0.
    pub fn parse(text: &str) -> Result<Rate, String> {
        let (n, unit) = text.split_once('/').ok_or_else(|| {
            format!("rate {text:?} is not of the form N/unit, e.g. \"10/second\"")
        })?;
        let count: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("rate {text:?}: {n:?} is not a whole number"))?;
        let count =
            NonZeroU32::new(count).ok_or_else(|| format!("rate {text:?}: N must be at least 1"))?;
        let secs = match unit.trim() {
            "second" | "sec" | "s" => 1,
            "minute" | "min" | "m" => 60,
            "hour" | "hr" | "h" => 3600,
            other => {
                return Err(format!(
                    "rate {text:?}: unknown unit {other:?}; use second, minute or hour (or s, m, h)"
                ));
            }
        };
        Ok(Rate {
            count,
            per: Duration::from_secs(secs),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_long_and_short_units() {
        let r = Rate::parse("10/second").unwrap();
        assert_eq!((r.count.get(), r.per), (10, Duration::from_secs(1)));
        assert_eq!(Rate::parse("5/m").unwrap().per, Duration::from_secs(60));
        assert_eq!(
            Rate::parse("1/hour").unwrap().per,
            Duration::from_secs(3600)
        );
        for bad in [
            "",
            "10",
            "0/second",
            "-1/second",
            "10/day",
            "ten/second",
            "10/",
        ] {
            assert!(Rate::parse(bad).is_err(), "{bad:?}");
        }
    }
}
