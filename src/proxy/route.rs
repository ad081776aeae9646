//! Route: Host + path -> target.
//!
//! Reads the host a request asked for and looks it up in the snapshot's routing table
//! (`snapshot/routes.rs`, which says how a route is chosen).

use http::Request;
use http::header::HOST;

use crate::model::TargetIdx;
use crate::snapshot::Routes;
// By its old path, for `proxy/policy.rs`.
pub use crate::snapshot::segment_prefix;

// The table is data and knows nothing of HTTP; finding a request's route is this phase's.
impl Routes {
    /// Routes a request for `host` (port included: the `Host` header (HTTP/1.1), the URI's
    /// authority (HTTP/2), or a forward-auth call's `X-Forwarded-Host`) and `path`.
    ///
    /// A request target without a path has no route: the authority-form of `CONNECT host:port`
    /// (and a `GET host`, which parses the same way). keygate is no forward proxy, and forwarding
    /// one would invent the path `/` for the upstream.
    pub fn find_asked(&self, host: Option<&str>, path: &str) -> Option<TargetIdx> {
        if path.is_empty() {
            return None;
        }
        self.find(host.map(strip_port), path)
    }
}

/// The `Host` header, else the URI's authority, with its port.
pub fn request_host_port<B>(req: &Request<B>) -> Option<&str> {
    match req.headers().get(HOST) {
        Some(v) => v.to_str().ok(),
        None => Some(req.uri().authority()?.as_str()),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_ignored() {
        assert_eq!(strip_port("api.example.com:8080"), "api.example.com");
        assert_eq!(strip_port("api.example.com"), "api.example.com");
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }
}
