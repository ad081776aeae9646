//! `[verify]`: the decision-only listener for forward-auth (docs/forward-auth.md).

use std::net::SocketAddr;

use toml::Spanned;

use crate::config::diagnostics::Checker;
use crate::config::raw::RawVerify;
use crate::model::{Admin, IpList, Server, Verify};

/// `[verify] listen` on a port of its own, and the proxies it believes. A verify listener that
/// believes nobody would refuse every call, and one that believed everybody would let any client
/// name its own method, path and address: so the list must be there and non-empty.
pub fn verify(
    c: &mut Checker<'_>,
    raw: Option<&Spanned<RawVerify>>,
    server: Option<&Server>,
    admin: Option<&Option<Admin>>,
    metrics: Option<SocketAddr>,
) -> Option<Verify> {
    const S: &str = "[verify]";
    let spanned = raw?;
    let raw = spanned.get_ref();
    let listen = raw.listen.get_ref().parse::<SocketAddr>().ok();
    match listen {
        None => c.error(
            raw.listen.span(),
            S,
            format!(
                "listen: {:?} is not IP:port (e.g. \"127.0.0.1:8081\")",
                raw.listen.get_ref()
            ),
        ),
        Some(l) if l.port() != 0 => {
            let taken = server.is_some_and(|s| s.listen == l)
                || admin.is_some_and(|a| a.as_ref().is_some_and(|a| a.listen == l))
                || metrics == Some(l);
            if taken {
                c.error(
                    raw.listen.span(),
                    S,
                    "listen: the verify listener needs its own port",
                );
            }
        }
        Some(_) => {}
    }
    let trusted_proxies = match &raw.trusted_proxies {
        Some(list) => {
            let nets = IpList::new(c.nets(Some(list), S, "trusted_proxies"));
            if list.is_empty() {
                c.error(
                    spanned.span(),
                    S,
                    "trusted_proxies: empty; list the proxies that ask keygate (e.g. [\"127.0.0.1\"])",
                );
            }
            nets
        }
        None => {
            let inherited = server
                .map(|s| s.trusted_proxies.clone())
                .unwrap_or_default();
            if server.is_some() && inherited.is_empty() {
                c.error(
                    spanned.span(),
                    S,
                    "trusted_proxies: needed, here or in [server]: the proxies that ask keygate \
                     (e.g. trusted_proxies = [\"127.0.0.1\"]); calls from anyone else are refused",
                );
            }
            inherited
        }
    };
    Some(Verify {
        listen: listen?,
        trusted_proxies,
    })
}
