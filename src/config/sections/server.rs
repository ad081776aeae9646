//! `[server]` and `[server.tls]`: the proxy's listener.

use std::net::SocketAddr;

use http::HeaderName;

use crate::config::defaults::*;
use crate::config::diagnostics::Checker;
use crate::config::raw::{RawServer, RawTls};
use crate::config::values::relative_to;
use crate::model::{IpList, Rate, Server, TlsFiles};

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
            if name.is_empty()
                || name
                    .bytes()
                    .any(|b| matches!(b, b'&' | b'=' | b'#' | b'%' | b'+') || b <= b' ')
            {
                c.error(
                    q.span(),
                    S,
                    format!("key_query: {name:?} must be a plain, non-empty parameter name"),
                );
            }
            name.as_str().into()
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
        key_header: key_header?,
        key_query,
        failed_auth_limit: failed_auth_limit?,
        tls,
    })
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
