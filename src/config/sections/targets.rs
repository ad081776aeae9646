//! `[[targets]]`: the deploy targets, their upstreams and their routes.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use std::sync::Arc;

use http::uri::{Scheme, Uri};
use http::{HeaderName, HeaderValue, Method};
use toml::Spanned;

use crate::config::defaults::{DEFAULT_MAX_BODY, DEFAULT_UPSTREAM_TIMEOUT};
use crate::config::diagnostics::{Checker, Severity, Subject};
use crate::config::raw::{RawCors, RawTarget};
use crate::config::values::relative_to;
use crate::model::{Cors, OriginList, OriginPattern, Target, TargetIdx};

pub fn targets(
    c: &mut Checker<'_>,
    raw: &[RawTarget],
) -> (Vec<Target>, HashMap<String, TargetIdx>) {
    let mut out = Vec::new();
    let mut names: HashMap<String, TargetIdx> = HashMap::new();
    let mut first_line: HashMap<&str, (usize, usize)> = HashMap::new();
    // (host or "" for any host, prefix) -> target name, to refuse two targets on one route.
    let mut routes: HashMap<(String, Box<str>), String> = HashMap::new();
    // https authority -> ca_file: upstream connections are pooled per authority, so one
    // authority must be verified one way.
    let mut https_cas: HashMap<String, Option<String>> = HashMap::new();
    if raw.is_empty() {
        c.error(
            0..0,
            "",
            "no [[targets]]: keygate needs at least one upstream to route to",
        );
    }
    if raw.len() > usize::from(TargetIdx::MAX) {
        c.error(
            0..0,
            "",
            format!("at most {} [[targets]] are supported", TargetIdx::MAX),
        );
        return (out, names);
    }
    for t in raw {
        let Some(name) = c.id(&t.name, "target name", None) else {
            continue;
        };
        let subject = Subject::item("target", t.name.get_ref());
        if let Some(first) = first_line.insert(t.name.get_ref(), c.place(t.name.span())) {
            let first = c.describe(first);
            c.error(
                t.name.span(),
                subject,
                format!("duplicate target name (first defined at {first})"),
            );
            continue;
        }
        let upstream = upstream(c, &t.upstream, subject);
        let tls = match (&upstream, &t.ca_file) {
            (Some((scheme, ..)), ca) if *scheme == Scheme::HTTPS => {
                let path = ca.as_ref().map(|p| relative_to(c.main_file(), p.get_ref()));
                match crate::tls::upstream_config(path.as_deref()) {
                    Ok(config) => Some(config),
                    Err(e) => {
                        let span = ca.as_ref().map_or(t.upstream.span(), |p| p.span());
                        c.error(span, subject, format!("ca_file: {e}"));
                        None
                    }
                }
            }
            (_, Some(ca)) => {
                c.error(
                    ca.span(),
                    subject,
                    "ca_file: only an https:// upstream is verified against a CA",
                );
                None
            }
            _ => None,
        };
        if let (Some((_, authority, _)), Some(_)) = (&upstream, &tls) {
            let ca = t.ca_file.as_ref().map(|p| p.get_ref().clone());
            match https_cas.entry(authority.as_str().to_owned()) {
                Entry::Occupied(o) if *o.get() != ca => c.error(
                    t.upstream.span(),
                    subject,
                    "another target reaches the same https upstream with a different ca_file",
                ),
                Entry::Occupied(_) => {}
                Entry::Vacant(v) => {
                    v.insert(ca);
                }
            }
        }
        let mut hosts = Vec::new();
        for h in t.hosts.as_deref().unwrap_or_default() {
            let host = h.get_ref().trim_end_matches('.').to_ascii_lowercase();
            let bad_port = host
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
                && !host.ends_with(']');
            if host.is_empty() || host.contains(['/', ' ', '*']) || bad_port {
                c.error(
                    h.span(),
                    subject,
                    format!("hosts: {:?} must be a plain host name without port or wildcard (the port is ignored when matching)", h.get_ref()),
                );
                continue;
            }
            hosts.push(host.into_boxed_str());
        }
        let path_prefix = match &t.path_prefix {
            None => Some("/".into()),
            Some(p) => c.path(p, subject, "path_prefix"),
        };
        let timeout = match &t.timeout {
            None => Some(DEFAULT_UPSTREAM_TIMEOUT),
            some => c.duration(some.as_ref(), subject, "timeout"),
        };
        let max_body = match &t.max_body {
            None => Some(Some(DEFAULT_MAX_BODY)),
            Some(m) => c.size(m, subject, "max_body"),
        };
        let cors = t.cors.as_ref().map(|raw| cors(c, raw, subject));
        let (
            Some((scheme, authority, upstream_host)),
            Some(path_prefix),
            Some(timeout),
            Some(max_body),
        ) = (upstream, path_prefix, timeout, max_body)
        else {
            continue;
        };
        let route_hosts: Vec<String> = if hosts.is_empty() {
            vec![String::new()]
        } else {
            hosts.iter().map(|h| h.to_string()).collect()
        };
        for h in route_hosts {
            let shown = if h.is_empty() {
                "any host".to_owned()
            } else {
                format!("host {h:?}")
            };
            if let Some(other) = routes.insert((h, path_prefix.clone()), t.name.get_ref().clone()) {
                c.error(
                    t.name.span(),
                    subject,
                    format!("{shown} with path_prefix {path_prefix:?} is already routed to target {other:?}"),
                );
            }
        }
        names.insert(t.name.get_ref().clone(), out.len() as TargetIdx);
        out.push(Target {
            name,
            scheme,
            authority,
            upstream_host,
            hosts,
            path_prefix,
            timeout,
            max_body,
            preserve_host: t.preserve_host.unwrap_or(false),
            tls,
            cors: cors.flatten().map(Arc::new),
        });
    }
    (out, names)
}

fn upstream(
    c: &mut Checker<'_>,
    raw: &Spanned<String>,
    subject: Subject<'_>,
) -> Option<(Scheme, http::uri::Authority, HeaderValue)> {
    let text = raw.get_ref();
    let bad = |c: &mut Checker<'_>, why: &str| {
        c.error(raw.span(), subject, format!("upstream: {text:?} {why}"));
        None
    };
    let Ok(uri) = text.parse::<Uri>() else {
        return bad(c, "is not a URL such as \"http://127.0.0.1:3000\"");
    };
    let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
        return bad(
            c,
            "needs a scheme and a host, e.g. \"http://127.0.0.1:3000\"",
        );
    };
    if scheme != &Scheme::HTTP && scheme != &Scheme::HTTPS {
        return bad(c, "must use http:// or https://");
    }
    if authority.as_str().contains('@') {
        return bad(c, "must not carry credentials");
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return bad(
            c,
            "must not have a path or query: requests keep the path the client sent",
        );
    }
    let host = HeaderValue::from_str(authority.as_str()).ok()?;
    Some((scheme.clone(), authority.clone(), host))
}

/// `[targets.cors]`: every value checked and its header made here, once.
fn cors(c: &mut Checker<'_>, raw: &Spanned<RawCors>, subject: Subject<'_>) -> Option<Cors> {
    let errors = |c: &Checker<'_>| {
        c.problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .count()
    };
    let before = errors(c);
    let r = raw.get_ref();
    let credentials = r.allow_credentials.as_ref().is_some_and(|b| *b.get_ref());
    let mut any_origin = false;
    let mut patterns = Vec::new();
    if r.allow_origins.is_empty() {
        c.error(
            raw.span(),
            subject,
            "cors.allow_origins: list the origins whose pages may call this target, e.g. [\"https://shop.example.com\"]",
        );
    }
    for o in &r.allow_origins {
        if o.get_ref() == "*" {
            any_origin = true;
            if let Some(cred) = r.allow_credentials.as_ref().filter(|b| *b.get_ref()) {
                c.error(
                    cred.span(),
                    subject,
                    "cors.allow_credentials = true cannot go with \"*\" in allow_origins: any site could then read answers made with the user's credentials; list the origins",
                );
            }
            continue;
        }
        match OriginPattern::parse(o.get_ref()) {
            Ok(p) => patterns.push(p),
            Err(why) => c.error(
                o.span(),
                subject,
                format!("cors.allow_origins: {:?} {why}", o.get_ref()),
            ),
        }
    }
    let methods = match &r.allow_methods {
        None => Some(Cors::DEFAULT_METHODS.to_owned()),
        Some(list) => {
            let mut ok = true;
            for m in list {
                let text = m.get_ref();
                if text == "*" || Method::from_bytes(text.as_bytes()).is_err() {
                    ok = false;
                    c.error(
                        m.span(),
                        subject,
                        format!(
                            "cors.allow_methods: {text:?} is not a method name such as \"GET\""
                        ),
                    );
                }
            }
            ok.then(|| join(list))
        }
    };
    let mut names = |list: Option<&Vec<Spanned<String>>>, field: &str| {
        let mut ok = true;
        for h in list.map(Vec::as_slice).unwrap_or_default() {
            let text = h.get_ref();
            let why = if text == "*" {
                // The spec reads `*` as a name like any other once credentials are allowed.
                credentials
                    .then_some("cannot be \"*\" with allow_credentials = true: name the headers")
            } else if HeaderName::from_bytes(text.as_bytes()).is_err() {
                Some("is not a header name")
            } else {
                None
            };
            if let Some(why) = why {
                ok = false;
                c.error(h.span(), subject, format!("cors.{field}: {text:?} {why}"));
            }
        }
        ok
    };
    let headers_ok = names(r.allow_headers.as_ref(), "allow_headers");
    let expose_ok = names(r.expose_headers.as_ref(), "expose_headers");
    let max_age = match &r.max_age {
        None => Some(None),
        some => c
            .duration(some.as_ref(), subject, "cors.max_age")
            .map(|d| Some(HeaderValue::from(d.as_secs()))),
    };
    let expose = match &r.expose_headers {
        Some(list) if !list.is_empty() => format!("{}, {}", Cors::EXPOSED, join(list)),
        _ => Cors::EXPOSED.to_owned(),
    };
    if errors(c) != before || !headers_ok || !expose_ok {
        return None;
    }
    Some(Cors {
        any_origin,
        allow_origins: OriginList::new(patterns),
        allow_methods: HeaderValue::try_from(methods?).ok()?,
        allow_headers: match &r.allow_headers {
            None => None,
            Some(list) => Some(HeaderValue::try_from(join(list)).ok()?),
        },
        expose_headers: HeaderValue::try_from(expose).ok()?,
        max_age: max_age?,
        allow_credentials: credentials,
    })
}

/// `a, b, c`: a list header's value.
fn join(list: &[Spanned<String>]) -> String {
    list.iter()
        .map(|s| s.get_ref().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
