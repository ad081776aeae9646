//! The routing table: Host + path -> target, built once per snapshot from its targets.
//!
//! A target that lists the request's host beats one that takes any host; among those, the
//! longest `path_prefix` wins. Prefixes match whole path segments: `/api` matches `/api` and
//! `/api/x`, not `/apix`. Reading a request's host is the request path's (`proxy/route.rs`).

use std::collections::HashMap;

use crate::model::{Target, TargetIdx};

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
}
