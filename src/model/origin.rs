//! Web origins (`scheme://host[:port]`) a browser key may be used from, and the patterns that
//! list them (`allow_origins`; the list is `rules::OriginList`). Patterns are parsed and normalised once, at load; a request's
//! origin is compared against them as bytes, without allocating.

use std::fmt;

/// One `allow_origins` entry: `https://shop.example.com`, `https://*.example.com`,
/// `http://localhost:5173`. Held normalised: scheme and host lower case, a default port
/// (80 for http, 443 for https) dropped, so equal patterns compare equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OriginPattern {
    /// Lower case, without `://`.
    scheme: Box<str>,
    /// Lower case. For a wildcard, the suffix after the `*`, leading dot included
    /// (`.example.com`).
    host: Box<str>,
    wildcard: bool,
    /// The effective port: the written one, else the scheme's default; `None` for a scheme
    /// without one (such as `capacitor://localhost`), which then matches only without a port.
    port: Option<u16>,
}

/// Why a pattern was refused, for the config error.
pub type PatternError = &'static str;

impl OriginPattern {
    /// Parses one pattern as written in the config: `scheme://host[:port]`, no path, `*` only
    /// as the whole leftmost label of the host.
    pub fn parse(text: &str) -> Result<OriginPattern, PatternError> {
        let Some((scheme, authority)) = text.split_once("://") else {
            return Err("must be scheme://host[:port], e.g. \"https://shop.example.com\"");
        };
        if !is_scheme(scheme.as_bytes()) {
            return Err("has no valid scheme (e.g. \"https\")");
        }
        if authority.contains(['/', '?', '#']) {
            return Err(
                "must not have a path, query or fragment: an origin is scheme://host[:port] only",
            );
        }
        if authority.contains('@') {
            return Err("must not carry credentials");
        }
        let scheme = scheme.to_ascii_lowercase();
        let Some(parts) = split_authority(authority.as_bytes()) else {
            return Err("has no valid host or port");
        };
        let (host, wildcard) = match parts.host.strip_prefix(b"*") {
            Some(rest) if rest.starts_with(b".") && rest.len() > 1 => (rest, true),
            Some(_) => {
                return Err(
                    "may use `*` only as the leftmost label, as in \"https://*.example.com\"",
                );
            }
            None => (parts.host, false),
        };
        let labels = if wildcard { &host[1..] } else { host };
        if !is_host(labels) {
            return Err(
                "has no valid host name (letters, digits, '-' and '.'; `*` only as the leftmost label)",
            );
        }
        let port = match parts.port {
            Some(p) => Some(p),
            None => default_port(scheme.as_bytes()),
        };
        Ok(OriginPattern {
            host: String::from_utf8_lossy(host).to_ascii_lowercase().into(),
            scheme: scheme.into(),
            wildcard,
            port,
        })
    }

    /// Whether `origin` (already split by [`RequestOrigin::parse`]) is one this pattern lists.
    /// `*.example.com` lists `a.example.com` and `a.b.example.com`, not `example.com`.
    pub fn matches(&self, origin: &RequestOrigin<'_>) -> bool {
        if !origin.scheme.eq_ignore_ascii_case(self.scheme.as_bytes()) || origin.port != self.port {
            return false;
        }
        let want = self.host.as_bytes();
        if !self.wildcard {
            return origin.host.eq_ignore_ascii_case(want);
        }
        origin.host.len() > want.len()
            && origin.host[origin.host.len() - want.len()..].eq_ignore_ascii_case(want)
    }

    /// Whether this pattern is a subdomain wildcard.
    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }
}

/// Normalised, as [`OriginPattern::parse`] reads it back.
impl fmt::Display for OriginPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let star = if self.wildcard { "*" } else { "" };
        write!(f, "{}://{star}{}", self.scheme, self.host)?;
        match self.port {
            Some(p) if Some(p) != default_port(self.scheme.as_bytes()) => write!(f, ":{p}"),
            _ => Ok(()),
        }
    }
}

/// A request's origin, split into its parts (borrowed from the header, nothing copied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestOrigin<'a> {
    pub scheme: &'a [u8],
    pub host: &'a [u8],
    /// The written port, else the scheme's default.
    pub port: Option<u16>,
}

impl<'a> RequestOrigin<'a> {
    /// An `Origin` header's value, or the `scheme://authority` start of a `Referer`. `None` for
    /// what is not a tuple origin (`null`, garbage), which then matches no pattern.
    pub fn parse(origin: &'a [u8]) -> Option<RequestOrigin<'a>> {
        let sep = origin.windows(3).position(|w| w == b"://")?;
        let scheme = &origin[..sep];
        if !is_scheme(scheme) {
            return None;
        }
        let authority = &origin[sep + 3..];
        if authority.contains(&b'@') {
            return None;
        }
        let parts = split_authority(authority)?;
        if parts.host.contains(&b'*') {
            return None;
        }
        Some(RequestOrigin {
            scheme,
            host: parts.host,
            port: parts.port.or_else(|| default_port(scheme)),
        })
    }
}

/// The `scheme://authority` start of a URL (a `Referer`), as a slice of it: its origin.
pub fn origin_of_url(url: &[u8]) -> Option<&[u8]> {
    let sep = url.windows(3).position(|w| w == b"://")?;
    let rest = &url[sep + 3..];
    let end = rest
        .iter()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    Some(&url[..sep + 3 + end])
}

struct Authority<'a> {
    host: &'a [u8],
    port: Option<u16>,
}

/// `host[:port]` or `[v6]:port`; `None` for an empty host or a port that is not a number.
fn split_authority(a: &[u8]) -> Option<Authority<'_>> {
    let (host, port) = if a.first() == Some(&b'[') {
        let close = a.iter().position(|&b| b == b']')?;
        match &a[close + 1..] {
            [] => (&a[..=close], None),
            [b':', port @ ..] => (&a[..=close], Some(port)),
            _ => return None,
        }
    } else {
        match a.iter().rposition(|&b| b == b':') {
            Some(i) => (&a[..i], Some(&a[i + 1..])),
            None => (a, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        None => None,
        Some(p) if p.is_empty() || p.len() > 5 || !p.iter().all(u8::is_ascii_digit) => {
            return None;
        }
        Some(p) => Some(std::str::from_utf8(p).ok()?.parse::<u16>().ok()?),
    };
    Some(Authority { host, port })
}

/// RFC 3986: `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`.
fn is_scheme(s: &[u8]) -> bool {
    s.first().is_some_and(u8::is_ascii_alphabetic)
        && s.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// Dot-separated labels of letters, digits, `-` and `_`, or a bracketed IPv6 address.
fn is_host(h: &[u8]) -> bool {
    if let [b'[', inner @ .., b']'] = h {
        return std::str::from_utf8(inner).is_ok_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok());
    }
    !h.is_empty()
        && h.split(|&b| b == b'.').all(|label| {
            !label.is_empty()
                && label
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        })
}

fn default_port(scheme: &[u8]) -> Option<u16> {
    if scheme.eq_ignore_ascii_case(b"https") {
        Some(443)
    } else if scheme.eq_ignore_ascii_case(b"http") {
        Some(80)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::rules::OriginList;

    fn list(patterns: &[&str]) -> OriginList {
        OriginList::new(
            patterns
                .iter()
                .map(|p| OriginPattern::parse(p).unwrap())
                .collect(),
        )
    }

    #[test]
    fn patterns_are_checked_and_normalised() {
        for ok in [
            "https://shop.example.com",
            "https://*.example.com",
            "http://localhost:5173",
            "HTTPS://Shop.Example.COM:443",
            "http://127.0.0.1:8080",
            "http://[::1]:3000",
            "capacitor://localhost",
        ] {
            assert!(OriginPattern::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "shop.example.com",
            "https://shop.example.com/",
            "https://shop.example.com/app",
            "https://a.com?x",
            "https://*",
            "https://*.",
            "https://a.*.example.com",
            "https://*example.com",
            "https://**.example.com",
            "https://",
            "https://a.com:",
            "https://a.com:99999",
            "https://a.com:x",
            "https://user@a.com",
            "*",
            "null",
            "1ttp://a.com",
            "https://a..com",
            "https://a b.com",
        ] {
            assert!(OriginPattern::parse(bad).is_err(), "{bad}");
        }
        let p = OriginPattern::parse("HTTPS://Shop.Example.COM:443").unwrap();
        assert_eq!(p.to_string(), "https://shop.example.com");
        assert_eq!(p, OriginPattern::parse("https://shop.example.com").unwrap());
        let w = OriginPattern::parse("https://*.Example.com:8443").unwrap();
        assert_eq!(w.to_string(), "https://*.example.com:8443");
        assert!(w.is_wildcard());
    }

    #[test]
    fn origins_match_case_insensitively_with_default_ports() {
        let l = list(&["https://shop.example.com", "http://localhost:5173"]);
        let ok = |o: &str| l.allows(Some(o.as_bytes()));
        assert!(ok("https://shop.example.com"));
        assert!(ok("HTTPS://SHOP.example.com"));
        assert!(ok("https://shop.example.com:443"));
        assert!(ok("http://localhost:5173"));
        assert!(!ok("http://shop.example.com"));
        assert!(!ok("https://shop.example.com:8443"));
        assert!(!ok("https://evil.com"));
        assert!(!ok("https://shop.example.com.evil.com"));
        assert!(!ok("http://localhost"));
        assert!(!ok("null"));
        assert!(!ok(""));
        assert!(!l.allows(None));
        assert!(OriginList::default().allows(None));
        assert!(OriginList::default().allows(Some(b"null")));
    }

    #[test]
    fn a_wildcard_matches_subdomains_not_the_domain() {
        let l = list(&["https://*.example.com"]);
        let ok = |o: &str| l.allows(Some(o.as_bytes()));
        assert!(ok("https://a.example.com"));
        assert!(ok("https://a.b.example.com"));
        assert!(ok("https://A.EXAMPLE.COM:443"));
        assert!(!ok("https://example.com"));
        assert!(!ok("https://.example.com"));
        assert!(!ok("https://aexample.com"));
        assert!(!ok("https://a.example.com.evil.com"));
        assert!(!ok("http://a.example.com"));
        assert!(!ok("https://*.example.com"));
    }

    #[test]
    fn the_origin_of_a_referer() {
        let o =
            |u: &str| origin_of_url(u.as_bytes()).map(|b| String::from_utf8_lossy(b).into_owned());
        assert_eq!(
            o("https://shop.example.com/cart?x=1").as_deref(),
            Some("https://shop.example.com")
        );
        assert_eq!(o("http://a.com:8080").as_deref(), Some("http://a.com:8080"));
        assert_eq!(o("http://a.com#f").as_deref(), Some("http://a.com"));
        assert_eq!(o("/relative"), None);
    }
}
