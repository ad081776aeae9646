//! How each kind of value in the config is read: ids, networks, rates, durations, sizes,
//! instants, paths. Each reader reports what is wrong with the value's place and gives `None`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use toml::Spanned;
use toml::value::{Datetime, Offset};

use super::diagnostics::{Checker, Subject};
use crate::model::{Id, IdArena, OriginPattern, Quota, Rate, TargetIdx};

impl Checker<'_> {
    /// The id in `raw`, made in `arena` when one is given.
    pub fn id<S: Deref<Target = str>>(
        &mut self,
        raw: &Spanned<S>,
        what: &str,
        arena: Option<&mut IdArena>,
    ) -> Option<Id> {
        let text: &str = raw.get_ref();
        let id = match arena {
            Some(arena) => arena.id(text),
            None => Id::new(text),
        };
        if id.is_none() {
            self.error(
                raw.span(),
                "",
                format!(
                    "{what} {text:?} is not a valid id: use 1 to {} {}",
                    Id::MAX_LEN,
                    Id::ALLOWED
                ),
            );
        }
        id
    }

    pub fn nets<'s, S: Deref<Target = str>>(
        &mut self,
        raw: Option<&[Spanned<S>]>,
        subject: impl Into<Subject<'s>>,
        field: &str,
    ) -> Vec<IpNet> {
        let subject = subject.into();
        let mut nets = Vec::new();
        for item in raw.unwrap_or_default() {
            let text: &str = item.get_ref();
            match parse_net(text) {
                Some(n) => nets.push(n),
                None => self.error(
                    item.span(),
                    subject,
                    format!(
                        "{field}: {text:?} is not an IP address or CIDR (e.g. \"203.0.113.0/24\", \"2001:db8::/32\")",
                    ),
                ),
            }
        }
        nets
    }

    /// `allow_origins` of a key or consumer: `scheme://host[:port]` patterns.
    pub fn origins<'s, S: Deref<Target = str>>(
        &mut self,
        raw: Option<&[Spanned<S>]>,
        subject: impl Into<Subject<'s>>,
        field: &str,
    ) -> Vec<OriginPattern> {
        let subject = subject.into();
        let mut out = Vec::new();
        for item in raw.unwrap_or_default() {
            let text: &str = item.get_ref();
            match OriginPattern::parse(text) {
                Ok(p) => out.push(p),
                Err(why) => self.error(item.span(), subject, format!("{field}: {text:?} {why}")),
            }
        }
        out
    }

    pub fn rate<'s, S: Deref<Target = str>>(
        &mut self,
        raw: Option<&Spanned<S>>,
        subject: impl Into<Subject<'s>>,
        field: &str,
    ) -> Option<Rate> {
        self.parsed(raw, subject, field, Rate::parse)
    }

    pub fn quota<'s, S: Deref<Target = str>>(
        &mut self,
        raw: Option<&Spanned<S>>,
        subject: impl Into<Subject<'s>>,
        field: &str,
    ) -> Option<Quota> {
        self.parsed(raw, subject, field, Quota::parse)
    }

    /// `raw` read by `parse`; its error reported at its place, prefixed with `field`.
    fn parsed<'s, S: Deref<Target = str>, T>(
        &mut self,
        raw: Option<&Spanned<S>>,
        subject: impl Into<Subject<'s>>,
        field: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let raw = raw?;
        match parse(raw.get_ref()) {
            Ok(v) => Some(v),
            Err(e) => {
                self.error(raw.span(), subject, format!("{field}: {e}"));
                None
            }
        }
    }

    pub fn targets<'s, S: Deref<Target = str>>(
        &mut self,
        raw: Option<&[Spanned<S>]>,
        names: &HashMap<String, TargetIdx>,
        subject: impl Into<Subject<'s>>,
    ) -> Vec<TargetIdx> {
        let subject = subject.into();
        let mut set = Vec::new();
        for t in raw.unwrap_or_default() {
            let name: &str = t.get_ref();
            match names.get(name) {
                Some(&i) => set.push(i),
                None => self.error(
                    t.span(),
                    subject,
                    format!("targets: no [[targets]] is named {name:?}"),
                ),
            }
        }
        set
    }

    pub fn duration<'s>(
        &mut self,
        raw: Option<&Spanned<String>>,
        subject: impl Into<Subject<'s>>,
        field: &str,
    ) -> Option<Duration> {
        let raw = raw?;
        match humantime::parse_duration(raw.get_ref()) {
            Ok(d) if !d.is_zero() => Some(d),
            _ => {
                self.error(
                    raw.span(),
                    subject,
                    format!(
                        "{field}: {:?} is not a duration such as \"30s\" or \"500ms\"",
                        raw.get_ref()
                    ),
                );
                None
            }
        }
    }

    /// A byte size such as `"10MB"` (10,000,000), `"4MiB"` or `"512"`; `"unlimited"` is `None`.
    pub fn size<'s>(
        &mut self,
        raw: &Spanned<String>,
        subject: impl Into<Subject<'s>>,
        field: &str,
    ) -> Option<Option<u64>> {
        let text = raw.get_ref().trim();
        if text == "unlimited" {
            return Some(None);
        }
        match text.parse::<bytesize::ByteSize>() {
            Ok(b) => Some(Some(b.as_u64())),
            Err(_) => {
                self.error(
                    raw.span(),
                    subject,
                    format!(
                        "{field}: {:?} is not a size such as \"10MB\", \"512KiB\" or \"unlimited\"",
                        raw.get_ref()
                    ),
                );
                None
            }
        }
    }

    pub fn instant<'s>(
        &mut self,
        raw: Option<&Spanned<Datetime>>,
        subject: impl Into<Subject<'s>>,
        field: &str,
    ) -> Option<SystemTime> {
        let raw = raw?;
        let t = to_system_time(raw.get_ref());
        if t.is_none() {
            self.error(
                raw.span(),
                subject,
                format!(
                    "{field}: {} is not a date-time with an offset, e.g. 2027-01-01T00:00:00Z",
                    raw.get_ref()
                ),
            );
        }
        t
    }

    pub fn path<'s, S: Deref<Target = str>>(
        &mut self,
        raw: &Spanned<S>,
        subject: impl Into<Subject<'s>>,
        field: &str,
    ) -> Option<Box<str>> {
        let p: &str = raw.get_ref();
        if !p.starts_with('/') || p.contains(['?', '#']) || p.chars().any(char::is_whitespace) {
            self.error(
                raw.span(),
                subject,
                format!(
                    "{field}: {p:?} must be a path that starts with '/', without '?', '#' or spaces"
                ),
            );
            return None;
        }
        // Stored without a trailing '/' so that "/api/" and "/api" match the same segments.
        let trimmed = p.trim_end_matches('/');
        Some(if trimmed.is_empty() {
            "/".into()
        } else {
            trimmed.into()
        })
    }
}

/// A bare address is a single host (/32 or /128). An IPv4-mapped IPv6 network becomes the IPv4
/// network it maps, so it matches the way clients are matched.
pub fn parse_net(s: &str) -> Option<IpNet> {
    let net = match s.parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => IpNet::from(s.parse::<IpAddr>().ok()?),
    };
    if let IpNet::V6(v6) = net
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && v6.prefix_len() >= 96
    {
        return ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
            .ok()
            .map(IpNet::V4);
    }
    Some(net)
}

/// A TOML offset date-time as a `SystemTime`; `None` for local dates and times, which name no
/// instant.
fn to_system_time(dt: &Datetime) -> Option<SystemTime> {
    let (date, time, offset) = (dt.date?, dt.time?, dt.offset?);
    let month = time::Month::try_from(date.month).ok()?;
    let date = time::Date::from_calendar_date(i32::from(date.year), month, date.day).ok()?;
    let time = time::Time::from_hms_nano(
        time.hour,
        time.minute,
        time.second.unwrap_or(0),
        time.nanosecond.unwrap_or(0),
    )
    .ok()?;
    let offset = match offset {
        Offset::Z => time::UtcOffset::UTC,
        Offset::Custom { minutes } => {
            time::UtcOffset::from_whole_seconds(i32::from(minutes) * 60).ok()?
        }
    };
    Some(
        time::PrimitiveDateTime::new(date, time)
            .assume_offset(offset)
            .into(),
    )
}

/// A path from the config, relative to the config file's directory (or to the working
/// directory when the config comes from a device such as /dev/stdin).
pub fn relative_to(config: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    match config.parent() {
        _ if p.is_absolute() => p.to_path_buf(),
        Some(dir) if !dir.as_os_str().is_empty() && !config.starts_with("/dev") => dir.join(p),
        _ => p.to_path_buf(),
    }
}
