//! Phases 3-5: key lookup and the checks on the key. Pure: (snapshot, request facts, now) ->
//! the key or a [`Deny`], so it is unit-tested and benched without sockets.

use std::net::IpAddr;
use std::time::SystemTime;

use http::Method;

use super::deny::Deny;
use crate::secret::KeyHash;
use crate::snapshot::{Key, Snapshot, Status, TargetIdx};

/// What the policy needs to know about a request.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The presented secret, as extracted by `credential::extract`.
    pub secret: &'a [u8],
    pub target: TargetIdx,
    pub method: &'a Method,
    pub path: &'a str,
    pub client_ip: IpAddr,
}

/// Decides whether `facts` may pass. One hash, one map lookup.
///
/// The lookup compares SHA-256 digests, not secrets: how long a comparison takes can only tell
/// a caller how many leading digest bytes of their guess match a stored one, which does not help
/// find a secret, since nobody can steer a digest without inverting SHA-256.
pub fn decide<'s>(snap: &'s Snapshot, facts: &Facts<'_>, now: SystemTime) -> Result<&'s Key, Deny> {
    let key = snap
        .key_by_hash(&KeyHash::of(facts.secret))
        .ok_or(Deny::KeyInvalid)?;
    if key.status == Status::Inactive {
        return Err(Deny::KeyInactive);
    }
    if key.expires_at.is_some_and(|at| now >= at) {
        return Err(Deny::KeyExpired);
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;

    const CONFIG: &str = r#"
[[targets]]
name = "production"
upstream = "http://127.0.0.1:3000"

[[keys]]
id = "live"
secret = "live-secret"

[[keys]]
id = "off"
secret = "off-secret"
status = "inactive"

[[keys]]
id = "dated"
secret = "dated-secret"
expires_at = 2027-01-01T00:00:00Z
"#;

    fn facts(secret: &[u8]) -> Facts<'_> {
        Facts {
            secret,
            target: 0,
            method: &Method::GET,
            path: "/",
            client_ip: "127.0.0.1".parse().unwrap(),
        }
    }

    #[test]
    fn status_and_expiry() {
        let snap = crate::config::parse(CONFIG, Path::new("t.toml"))
            .unwrap()
            .snapshot;
        let expiry = SystemTime::UNIX_EPOCH + Duration::from_secs(1_798_761_600); // 2027-01-01
        let before = expiry - Duration::from_secs(1);
        assert_eq!(
            decide(&snap, &facts(b"live-secret"), before)
                .unwrap()
                .id
                .as_str(),
            "live"
        );
        assert_eq!(
            decide(&snap, &facts(b"nope"), before).unwrap_err(),
            Deny::KeyInvalid
        );
        assert_eq!(
            decide(&snap, &facts(b"off-secret"), before).unwrap_err(),
            Deny::KeyInactive
        );
        assert_eq!(
            decide(&snap, &facts(b"dated-secret"), before)
                .unwrap()
                .id
                .as_str(),
            "dated"
        );
        assert_eq!(
            decide(&snap, &facts(b"dated-secret"), expiry).unwrap_err(),
            Deny::KeyExpired
        );
    }
}
