//! `[metrics]`: the metrics listener.

use std::net::SocketAddr;

use crate::config::diagnostics::Checker;
use crate::config::raw::RawMetrics;
use crate::model::{Admin, Server};

/// `[metrics] listen`: its own port, never the proxy's or the admin API's.
pub fn metrics(
    c: &mut Checker<'_>,
    raw: Option<&RawMetrics>,
    server: Option<&Server>,
    admin: Option<&Option<Admin>>,
) -> Option<SocketAddr> {
    const S: &str = "[metrics]";
    let raw = raw?;
    let Ok(listen) = raw.listen.get_ref().parse::<SocketAddr>() else {
        c.error(
            raw.listen.span(),
            S,
            format!("listen: {:?} is not IP:port", raw.listen.get_ref()),
        );
        return None;
    };
    let taken = server.is_some_and(|s| s.listen == listen)
        || admin.is_some_and(|a| a.as_ref().is_some_and(|a| a.listen == listen));
    if listen.port() != 0 && taken {
        c.error(
            raw.listen.span(),
            S,
            "listen: the metrics listener needs its own port",
        );
    }
    Some(listen)
}
