//! `[server]` and `[server.tls]`: the proxy's listener.

use std::net::SocketAddr;

use http::HeaderName;
use toml::Spanned;

use crate::config::defaults::*;
use crate::config::diagnostics::Checker;
use crate::config::raw::{RawServer, RawTls};
use crate::config::values::relative_to;
use crate::model::{IpList, KeySource, KeySources, Rate, Server, TlsFiles};

/// hyper's smallest read buffer.
const MIN_MAX_HEADER_BYTES: u32 = 8192;

pub fn server(c: &mut Checker<'_>, raw: &RawServer) -> Option<Server> {
    const S: &str = "[server]";
    let listen = match &raw.listen {
        None => DEFAULT_LISTEN.parse().ok(),
        Some(l) => {
            let parsed = l.get_ref().parse::<SocketAddr>().ok();
            if parsed.is_none() {
                c.error(
                    l.span(),
                    S,
                    format!(
                        "listen: {:?} is not IP:port (e.g. \"127.0.0.1:8080\", \"[::1]:8080\")",
                        l.get_ref()
                    ),
                );
            }
            parsed
        }
    };
    let trusted_proxies = IpList::new(c.nets(Some(&raw.trusted_proxies), S, "trusted_proxies"));
    let key_header = match &raw.key_header {
        None => Some(HeaderName::from_static("x-api-key")),
        Some(h) => {
            let parsed = HeaderName::from_bytes(h.get_ref().as_bytes()).ok();
            if parsed.is_none() {
                c.error(
                    h.span(),
                    S,
                    format!("key_header: {:?} is not a valid header name", h.get_ref()),
                );
            }
            parsed
        }
    };
    let key_query: Box<str> = match &raw.key_query {
        None => DEFAULT_KEY_QUERY.into(),
        Some(q) => {
            let name = q.get_ref();
            if !is_plain_param(name) {
                c.error(
                    q.span(),
                    S,
                    format!("key_query: {name:?} must be a plain, non-empty parameter name"),
                );
            }
            name.as_str().into()
        }
    };
    let key_sources = match &raw.key_sources {
        None => key_header
            .map(|h| KeySources::new(vec![KeySource::Header(h), KeySource::Query(key_query)])),
        Some(list) => {
            // Two ways to say the same thing, and which one wins would be a guess.
            for (field, set) in [
                ("key_header", &raw.key_header),
                ("key_query", &raw.key_query),
            ] {
                if let Some(set) = set {
                    let at = c.describe(c.place(set.span()));
                    c.error(
                        list.span(),
                        S,
                        format!(
                            "key_sources: cannot be used with {field} ({at}): list every place in key_sources (\"header:NAME\", \"query:NAME\") and remove {field}"
                        ),
                    );
                }
            }
            key_sources(c, list)
        }
    };
    let tls = raw
        .tls
        .as_ref()
        .map(|t| tls_files(c, t.get_ref(), "[server.tls]"));
    let failed_auth_limit = match &raw.failed_auth_limit {
        None => Rate::parse(DEFAULT_FAILED_AUTH_LIMIT).ok(),
        some => c.rate(some.as_ref(), S, "failed_auth_limit"),
    };
    let shutdown_timeout = c
        .duration(raw.shutdown_timeout.as_ref(), S, "shutdown_timeout")
        .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT);
    let max_connections = match &raw.max_connections {
        None => DEFAULT_MAX_CONNECTIONS,
        Some(n) if *n.get_ref() == 0 => {
            c.error(
                n.span(),
                S,
                "max_connections: must be at least 1".to_owned(),
            );
            DEFAULT_MAX_CONNECTIONS
        }
        Some(n) => *n.get_ref(),
    };
    let header_read_timeout = c
        .duration(raw.header_read_timeout.as_ref(), S, "header_read_timeout")
        .unwrap_or(DEFAULT_HEADER_READ_TIMEOUT);
    let max_header_bytes = match &raw.max_header_bytes {
        None => DEFAULT_MAX_HEADER_BYTES,
        Some(n) if *n.get_ref() < MIN_MAX_HEADER_BYTES => {
            c.error(
                n.span(),
                S,
                format!("max_header_bytes: must be at least {MIN_MAX_HEADER_BYTES}"),
            );
            DEFAULT_MAX_HEADER_BYTES
        }
        Some(n) => *n.get_ref(),
    };
    let max_streams = match &raw.max_streams {
        None => DEFAULT_MAX_STREAMS,
        Some(n) if *n.get_ref() == 0 => {
            c.error(n.span(), S, "max_streams: must be at least 1".to_owned());
            DEFAULT_MAX_STREAMS
        }
        Some(n) => *n.get_ref(),
    };
    let idle_timeout = c
        .duration(raw.idle_timeout.as_ref(), S, "idle_timeout")
        .unwrap_or(DEFAULT_IDLE_TIMEOUT);
    Some(Server {
        listen: listen?,
        max_streams,
        idle_timeout,
        header_read_timeout,
        max_header_bytes,
        shutdown_timeout,
        max_connections,
        trusted_proxies,
        key_sources: key_sources?,
        failed_auth_limit: failed_auth_limit?,
        tls,
    })
}

/// A query parameter name that needs no encoding: what `key_query` and `query:` accept.
fn is_plain_param(name: &str) -> bool {
    !name.is_empty()
        && !name
            .bytes()
            .any(|b| matches!(b, b'&' | b'=' | b'#' | b'%' | b'+') || b <= b' ')
}

/// A cookie name (RFC 6265: an RFC 9110 token).
fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Headers that cannot be a key's place: they have their own source, or keygate logs, echoes
/// or rewrites them, so a key there would leak or be lost.
const NOT_A_KEY_HEADER: [(&str, &str); 5] = [
    ("authorization", "use \"bearer\" for Authorization: Bearer"),
    ("cookie", "use \"cookie:NAME\" for a cookie"),
    ("host", "keygate routes on it and logs it"),
    ("x-request-id", "keygate logs it and returns it"),
    (
        "proxy-authorization",
        "it is for the next proxy, never the upstream",
    ),
];

/// `[server] key_sources`: every entry checked, every problem reported at its line.
fn key_sources(c: &mut Checker<'_>, raw: &Spanned<Vec<Spanned<String>>>) -> Option<KeySources> {
    const S: &str = "[server]";
    const FORMS: &str = "expected \"header:NAME\", \"query:NAME\", \"bearer\" or \"cookie:NAME\"";
    let list = raw.get_ref();
    if list.is_empty() {
        c.error(
            raw.span(),
            S,
            format!("key_sources: must list at least one place ({FORMS})"),
        );
        return None;
    }
    let mut seen: Vec<(KeySource, (usize, usize))> = Vec::with_capacity(list.len());
    let mut ok = true;
    for entry in list {
        let text = entry.get_ref().as_str();
        let parsed = match text.split_once(':') {
            None if text == "bearer" => Ok(KeySource::Bearer),
            Some(("header", name)) => match HeaderName::from_bytes(name.as_bytes()) {
                Err(_) => Err(format!("{name:?} is not a valid header name")),
                Ok(h) => match NOT_A_KEY_HEADER.iter().find(|(n, _)| h == *n) {
                    Some((_, why)) => Err(format!("the {name} header cannot carry the key: {why}")),
                    None if h.as_str().starts_with("x-keygate-") => Err(format!(
                        "{name}: keygate sets the X-Keygate-* headers itself"
                    )),
                    None => Ok(KeySource::Header(h)),
                },
            },
            Some(("query", name)) if is_plain_param(name) => Ok(KeySource::Query(name.into())),
            Some(("query", name)) => Err(format!(
                "query: {name:?} must be a plain, non-empty parameter name"
            )),
            Some(("cookie", name)) if is_cookie_name(name) => Ok(KeySource::Cookie(name.into())),
            Some(("cookie", name)) => Err(format!(
                "cookie: {name:?} must be a non-empty cookie name (letters, digits and !#$%&'*+-.^_`|~)"
            )),
            _ => Err(FORMS.to_owned()),
        };
        match parsed {
            Err(why) => {
                c.error(entry.span(), S, format!("key_sources: {text:?}: {why}"));
                ok = false;
            }
            Ok(source) => match seen.iter().find(|(s, _)| *s == source) {
                Some((_, first)) => {
                    let first = c.describe(*first);
                    c.error(
                        entry.span(),
                        S,
                        format!("key_sources: {text:?} is listed twice (first at {first})"),
                    );
                    ok = false;
                }
                None => seen.push((source, c.place(entry.span()))),
            },
        }
    }
    ok.then(|| KeySources::new(seen.into_iter().map(|(s, _)| s).collect()))
}

/// `[server.tls]` or `[admin.tls]`: paths relative to the main file.
pub fn tls_files(c: &mut Checker<'_>, t: &RawTls, section: &'static str) -> TlsFiles {
    TlsFiles {
        cert: relative_to(c.main_file(), t.cert.get_ref()),
        key: relative_to(c.main_file(), t.key.get_ref()),
        handshake_timeout: c
            .duration(t.handshake_timeout.as_ref(), section, "handshake_timeout")
            .unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{LoadError, Severity, parse};
    use crate::model::KeySource;

    const TARGET: &str = "\n[[targets]]\nname = \"p\"\nupstream = \"http://127.0.0.1:1\"\n";

    fn sources(server: &str) -> Vec<KeySource> {
        let config = format!("[server]\n{server}\n{TARGET}");
        let snap = parse(&config, Path::new("k.toml")).unwrap().snapshot;
        snap.server.key_sources.list().to_vec()
    }

    fn errors(server: &str) -> Vec<String> {
        match parse(
            &format!("[server]\n{server}\n{TARGET}"),
            Path::new("k.toml"),
        ) {
            Ok(_) => panic!("accepted:\n{server}"),
            Err(LoadError::Invalid(e)) => e
                .iter()
                .filter(|p| p.severity == Severity::Error)
                .map(ToString::to_string)
                .collect(),
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    fn header(name: &'static str) -> KeySource {
        KeySource::Header(http::HeaderName::from_static(name))
    }

    #[test]
    fn the_default_is_key_header_then_key_query() {
        assert_eq!(
            sources(""),
            [header("x-api-key"), KeySource::Query("api_key".into())]
        );
        assert_eq!(
            sources("key_header = \"X-Token\"\nkey_query = \"token\""),
            [header("x-token"), KeySource::Query("token".into())]
        );
    }

    #[test]
    fn key_sources_in_their_order() {
        assert_eq!(
            sources(r#"key_sources = ["cookie:kg_key", "bearer", "query:t", "header:X-Key"]"#),
            [
                KeySource::Cookie("kg_key".into()),
                KeySource::Bearer,
                KeySource::Query("t".into()),
                header("x-key"),
            ]
        );
    }

    #[test]
    fn key_sources_with_key_header_or_key_query_names_both_lines() {
        let e = errors("key_header = \"X-Token\"\nkey_sources = [\"bearer\"]");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with(
                "k.toml:3:15: [server]: key_sources: cannot be used with key_header (line 2)"
            ),
            "{e:?}"
        );
        let e = errors("key_sources = [\"bearer\"]\nkey_query = \"t\"");
        assert!(
            e[0].starts_with(
                "k.toml:2:15: [server]: key_sources: cannot be used with key_query (line 3)"
            ),
            "{e:?}"
        );
    }

    #[test]
    fn invalid_entries_are_errors_at_their_line() {
        for (entry, says) in [
            ("\"\"", "expected \"header:NAME\""),
            ("\"basic\"", "expected"),
            ("\"Bearer\"", "expected"),
            ("\"header:\"", "is not a valid header name"),
            ("\"header:X Key\"", "is not a valid header name"),
            ("\"header:Authorization\"", "use \"bearer\""),
            ("\"header:cookie\"", "use \"cookie:NAME\""),
            ("\"header:Host\"", "cannot carry the key"),
            ("\"header:X-Request-Id\"", "cannot carry the key"),
            ("\"header:X-Keygate-Key-Id\"", "keygate sets"),
            ("\"query:\"", "plain, non-empty parameter name"),
            ("\"query:a&b\"", "plain, non-empty parameter name"),
            ("\"cookie:\"", "non-empty cookie name"),
            ("\"cookie:a;b\"", "non-empty cookie name"),
            ("\"cookie:a=b\"", "non-empty cookie name"),
        ] {
            let e = errors(&format!("key_sources = [\n  \"bearer\",\n  {entry},\n]"));
            assert_eq!(e.len(), 1, "{entry}: {e:?}");
            assert!(
                e[0].starts_with("k.toml:4:3: [server]: key_sources: "),
                "{e:?}"
            );
            assert!(e[0].contains(says), "{entry}: {e:?}");
        }
        let e = errors("key_sources = []");
        assert!(
            e[0].starts_with("k.toml:2:15: [server]: key_sources: must list at least one"),
            "{e:?}"
        );
    }

    #[test]
    fn a_source_twice_is_an_error_naming_the_first() {
        for (a, b) in [
            ("header:X-Key", "header:x-key"),
            ("query:t", "query:t"),
            ("bearer", "bearer"),
            ("cookie:c", "cookie:c"),
        ] {
            let e = errors(&format!("key_sources = [\n  \"{a}\",\n  \"{b}\",\n]"));
            assert_eq!(e.len(), 1, "{e:?}");
            assert!(
                e[0].starts_with("k.toml:4:3: [server]: key_sources: "),
                "{e:?}"
            );
            assert!(e[0].contains("listed twice (first at line 3)"), "{e:?}");
        }
        // Same name, different kinds: different places.
        assert_eq!(
            sources(r#"key_sources = ["query:k", "cookie:k", "header:k"]"#).len(),
            3
        );
    }
}
