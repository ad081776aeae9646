//! `[usage]`: per-key usage counting.

use std::path::Path;
use std::time::Duration;

use crate::config::diagnostics::Checker;
use crate::config::raw::RawUsage;
use crate::config::values::relative_to;
use crate::model::UsageConfig;

/// Longest `retention`: ten years of daily rows is already more than a file should hold.
const MAX_RETENTION_DAYS: u64 = 3650;
/// `flush_interval` bounds: more often than 100 ms is a disk write per handful of requests;
/// less often than an hour loses too much in a crash.
const MIN_FLUSH: Duration = Duration::from_millis(100);
const MAX_FLUSH: Duration = Duration::from_secs(3600);

/// `[usage]`: whether keys' usage is counted, how often it is written, how long it is kept.
pub fn usage(c: &mut Checker<'_>, raw: Option<&RawUsage>, config: &Path) -> UsageConfig {
    const S: &str = "[usage]";
    let mut usage = UsageConfig::default();
    let Some(raw) = raw else {
        return usage;
    };
    usage.enabled = raw.enabled.unwrap_or(true);
    if let Some(d) = c.duration(raw.flush_interval.as_ref(), S, "flush_interval") {
        if (MIN_FLUSH..=MAX_FLUSH).contains(&d) {
            usage.flush_interval = d;
        } else if let Some(f) = &raw.flush_interval {
            c.error(
                f.span(),
                S,
                format!(
                    "flush_interval: {:?} is not between \"100ms\" and \"1h\"",
                    f.get_ref()
                ),
            );
        }
    }
    if let Some(r) = &raw.retention {
        let day = 86_400;
        let days = humantime::parse_duration(r.get_ref())
            .ok()
            .map(|d| d.as_secs())
            .filter(|s| s % day == 0)
            .map(|s| s / day)
            .filter(|d| (1..=MAX_RETENTION_DAYS).contains(d));
        match days {
            Some(d) => usage.retention_days = d as u32,
            None => c.error(
                r.span(),
                S,
                format!(
                    "retention: {:?} is not a whole number of days from \"1d\" to \"{MAX_RETENTION_DAYS}d\"",
                    r.get_ref()
                ),
            ),
        }
    }
    if let Some(f) = &raw.file {
        if f.get_ref().trim().is_empty() {
            c.error(f.span(), S, "file: expected a file path");
        } else {
            usage.file = Some(relative_to(config, f.get_ref()));
        }
    }
    usage
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{LoadError, parse};

    const TARGET: &str = "[[targets]]\nname = \"p\"\nupstream = \"http://127.0.0.1:1\"\n";

    #[test]
    fn defaults_and_settings() {
        let snap = parse(TARGET, Path::new("/etc/kg/k.toml")).unwrap().snapshot;
        assert!(snap.usage.enabled);
        assert_eq!(snap.usage.retention_days, 90);
        assert_eq!(snap.usage.flush_interval.as_secs(), 10);
        let text = format!(
            "[usage]\nenabled = false\nflush_interval = \"2s\"\nretention = \"7d\"\nfile = \"u.json\"\n{TARGET}"
        );
        let snap = parse(&text, Path::new("/etc/kg/k.toml")).unwrap().snapshot;
        assert!(!snap.usage.enabled);
        assert_eq!(snap.usage.retention_days, 7);
        assert_eq!(snap.usage.flush_interval.as_secs(), 2);
        assert_eq!(
            snap.usage.file.as_deref(),
            Some(Path::new("/etc/kg/u.json"))
        );
    }

    #[test]
    fn errors_name_file_line_and_setting() {
        let text =
            format!("[usage]\nretention = \"36h\"\nflush_interval = \"2h\"\nsize = 1\n{TARGET}");
        let Err(LoadError::Invalid(e)) = parse(&text, Path::new("k.toml")) else {
            panic!("accepted");
        };
        let e: Vec<String> = e.iter().map(ToString::to_string).collect();
        assert!(
            e[0].starts_with("k.toml:4:1: unknown field `size`"),
            "{e:#?}"
        );
        let text = format!("[usage]\nretention = \"36h\"\nflush_interval = \"2h\"\n{TARGET}");
        let Err(LoadError::Invalid(e)) = parse(&text, Path::new("k.toml")) else {
            panic!("accepted");
        };
        let e: Vec<String> = e.iter().map(ToString::to_string).collect();
        assert_eq!(e.len(), 2, "{e:#?}");
        assert!(
            e.iter()
                .any(|l| l.starts_with("k.toml:2:13: [usage]: retention: \"36h\"")),
            "{e:#?}"
        );
        assert!(
            e.iter()
                .any(|l| l.starts_with("k.toml:3:18: [usage]: flush_interval: \"2h\"")),
            "{e:#?}"
        );
    }
}
