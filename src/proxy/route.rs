//! Phase 1: Host + path -> target.
//!
//! A target that lists the request's host beats one that takes any host; among those, the
//! longest `path_prefix` wins. Prefixes match whole path segments: `/api` matches `/api` and
//! `/api/x`, not `/apix`. The table is built once per snapshot; routing only reads it.

use std::collections::HashMap;

use http::Request;
use http::header::HOST;

use crate::snapshot::{Target, TargetIdx};

#[derive(Debug, Default)]
pub struct Routes {
    by_host: HashMap<Box<str>, Vec<Route>>,
    any_host: Vec<Route>,
}

#[derive(Debug)]
struct Route {
    prefix: Box<str>,
    target: TargetIdx,
}

impl Routes {
    pub fn build(targets: &[Target]) -> Routes {
        let mut routes = Routes::default();
        for (i, t) in targets.iter().enumerate() {
            let route = || Route {
                prefix: t.path_prefix.clone(),
                target: i as TargetIdx,
            };
            if t.hosts.is_empty() {
                routes.any_host.push(route());
            }
            for h in &t.hosts {
                routes.by_host.entry(h.clone()).or_default().push(route());
            }
        }
        // Longest prefix first, so the first match is the best one.
        let by_len = |a: &Route, b: &Route| b.prefix.len().cmp(&a.prefix.len());
        routes.any_host.sort_by(by_len);
        for list in routes.by_host.values_mut() {
            list.sort_by(by_len);
        }
        routes
    }

    /// The target for a request to `host` (already without its port) and `path`.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<TargetIdx> {
        let host_routes = host.and_then(|h| {
            let h = h.strip_suffix('.').unwrap_or(h);
            if h.bytes().any(|b| b.is_ascii_uppercase()) {
                self.by_host.get(h.to_ascii_lowercase().as_str())
            } else {
                self.by_host.get(h)
            }
        });
        let first_match = |list: &[Route]| {
            list.iter()
                .find(|r| segment_prefix(path, &r.prefix))
                .map(|r| r.target)
        };
        host_routes
            .and_then(|l| first_match(l))
            .or_else(|| first_match(&self.any_host))
    }

    /// Routes a request by its `Host` header (HTTP/1.1) or its URI authority (HTTP/2).
    ///
    /// A request target without a path has no route: the authority-form of `CONNECT host:port`
    /// (and a `GET host`, which parses the same way). keygate is no forward proxy, and forwarding
    /// one would invent the path `/` for the upstream.
    pub fn find_for<B>(&self, req: &Request<B>) -> Option<TargetIdx> {
        let path = req.uri().path();
        if path.is_empty() {
            return None;
        }
        self.find(request_host(req), path)
    }
}

/// The host the client asked for, without port: the `Host` header, else the URI's authority.
pub fn request_host<B>(req: &Request<B>) -> Option<&str> {
    let raw = match req.headers().get(HOST) {
        Some(v) => v.to_str().ok()?,
        None => req.uri().authority()?.as_str(),
    };
    Some(strip_port(raw))
}

/// `example.com:8080` -> `example.com`; `[::1]:8080` -> `[::1]`.
fn strip_port(hostport: &str) -> &str {
    if hostport.starts_with('[') {
        return match hostport.find(']') {
            Some(end) => &hostport[..=end],
            None => hostport,
        };
    }
    match hostport.rfind(':') {
        Some(i) => &hostport[..i],
        None => hostport,
    }
}

/// True when `prefix` is `/` or covers `path` on whole segments: `/api` covers `/api` and
/// `/api/v1` but not `/apiv1`. Prefixes are stored without a trailing `/` (except the root).
pub fn segment_prefix(path: &str, prefix: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_not_characters() {
        assert!(segment_prefix("/conversions", "/"));
        assert!(segment_prefix("/conv", "/conv"));
        assert!(segment_prefix("/conv/1", "/conv"));
        assert!(!segment_prefix("/conversions", "/conv"));
        assert!(!segment_prefix("/", "/conv"));
    }

    #[test]
    fn ports_are_ignored() {
        assert_eq!(strip_port("api.example.com:8080"), "api.example.com");
        assert_eq!(strip_port("api.example.com"), "api.example.com");
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }
}
