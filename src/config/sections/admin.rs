//! `[admin]` and `[[admin_keys]]`: the admin API's listener and who may call it.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::config::defaults::{DEFAULT_KEY_PREFIX, DEFAULT_SESSION_IDLE, DEFAULT_SESSION_MAX};
use crate::config::diagnostics::{Checker, Subject};
use crate::config::raw::{RawAdmin, RawAdminKey};
use crate::config::sections::server::tls_files;
use crate::config::values::relative_to;
use crate::model::KeyHash;
use crate::model::{Admin, AdminKey, AuditLog, Server};

/// `[admin]` and `[[admin_keys]]`. `Some(None)` when there is no admin API.
pub fn admin(
    c: &mut Checker<'_>,
    raw: Option<&RawAdmin>,
    raw_keys: &[RawAdminKey],
    server: Option<&Server>,
) -> Option<Option<Admin>> {
    const S: &str = "[admin]";
    let mut keys = HashMap::new();
    let mut ids: HashMap<&str, (usize, usize)> = HashMap::new();
    for k in raw_keys {
        let subject = Subject::item("admin key", k.id.get_ref());
        let Some(id) = c.id(&k.id, "admin key id", None) else {
            continue;
        };
        if let Some(first) = ids.insert(k.id.get_ref(), c.place(k.id.span())) {
            let first = c.describe(first);
            c.error(
                k.id.span(),
                subject,
                format!("duplicate admin key id (first defined at {first})"),
            );
            continue;
        }
        match KeyHash::parse(k.hash.get_ref()) {
            None => c.error(
                k.hash.span(),
                subject,
                "hash: expected \"sha256:\" followed by 64 hex digits",
            ),
            Some(h) => {
                if keys.insert(h, AdminKey { id, role: k.role }).is_some() {
                    c.error(
                        k.hash.span(),
                        subject,
                        "same secret hash as another admin key",
                    );
                }
            }
        }
    }
    let Some(raw) = raw else {
        if let Some(k) = raw_keys.first() {
            c.warn(
                k.id.span(),
                "",
                "[[admin_keys]] without [admin] listen: the admin API is off",
            );
        }
        return Some(None);
    };
    let listen = match raw.listen.get_ref().parse::<SocketAddr>() {
        Ok(l) => l,
        Err(_) => {
            c.error(
                raw.listen.span(),
                S,
                format!("listen: {:?} is not IP:port", raw.listen.get_ref()),
            );
            return None;
        }
    };
    // Port 0 asks the OS for a free port on each bind, so two port-0 listeners never collide.
    if listen.port() != 0 && server.is_some_and(|s| s.listen == listen) {
        c.error(
            raw.listen.span(),
            S,
            "listen: the admin API needs its own port, never the proxy's",
        );
    }
    if raw_keys.is_empty() {
        c.warn(
            raw.listen.span(),
            S,
            "no [[admin_keys]]: every admin request will be refused",
        );
    }
    let key_prefix = match &raw.key_prefix {
        None => DEFAULT_KEY_PREFIX.into(),
        Some(p) => {
            let ok = p.get_ref().len() <= 16
                && p.get_ref()
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !ok {
                c.error(
                    p.span(),
                    S,
                    "key_prefix: at most 16 letters, digits, '_' or '-'",
                );
            }
            p.get_ref().as_str().into()
        }
    };
    let session_idle = c
        .duration(raw.session_idle.as_ref(), S, "session_idle")
        .unwrap_or(DEFAULT_SESSION_IDLE);
    let session_max = c
        .duration(raw.session_max.as_ref(), S, "session_max")
        .unwrap_or(DEFAULT_SESSION_MAX);
    let audit_log = match &raw.audit_log {
        None => AuditLog::BesideKeysFile,
        Some(a) if a.get_ref() == "off" => AuditLog::Off,
        Some(a) if a.get_ref().is_empty() => {
            c.error(a.span(), S, "audit_log: a file path, or \"off\"");
            AuditLog::Off
        }
        Some(a) => AuditLog::File(relative_to(c.main_file(), a.get_ref())),
    };
    let tls = raw
        .tls
        .as_ref()
        .map(|t| tls_files(c, t.get_ref(), "[admin.tls]"));
    Some(Some(Admin {
        listen,
        key_prefix,
        keys,
        session_idle,
        session_max,
        audit_log,
        tls,
    }))
}
