//! Authorize: may the key behind this secret make this request? In the contract's order:
//! lookup, status, expiry, IP, target, access. Pure: (snapshot, request facts, `now`) ->
//! [`Authorized`] or a [`Refusal`]; no state is read or written beyond the snapshot, so it is
//! unit-tested and benched without sockets. What comes before it (the failed-attempt block) and
//! after it (the rate limit, last so that a request refused for any other reason spends no
//! quota) holds state and lives in `proxy/mod.rs` and `proxy/rate.rs`.

use std::net::IpAddr;
use std::time::SystemTime;

use http::Method;

use super::deny::{Deny, Refusal};
use super::route::segment_prefix;
use crate::secret::{KeyHash, checksum_fails};
use crate::snapshot::{Access, Key, Matched, Snapshot, Status, TargetIdx};

/// What authorization needs to know about a request.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The presented secret, as extracted by `credential::extract`.
    pub secret: &'a [u8],
    pub target: TargetIdx,
    pub method: &'a Method,
    pub path: &'a str,
    /// The resolved client address (`client_ip::resolve`), canonical.
    pub client_ip: IpAddr,
}

/// A key that may make the request (its rate limit still to be applied).
#[derive(Debug, Clone, Copy)]
pub struct Authorized<'s> {
    pub key: &'s Key,
    /// The key's index in the snapshot: where its bucket and last-used time are.
    pub index: usize,
}

/// Decides whether `facts` may pass, at wall-clock time `now`. One hash, one table lookup.
///
/// A secret shaped like a generated one (the key prefix, 38 letters and digits) whose checksum
/// is wrong is refused first, without a hash or lookup: mistyped or made up, it cannot be a key
/// keygate made, and it still counts as a failed attempt.
///
/// The lookup compares SHA-256 digests, not secrets: how long a comparison takes can only tell
/// a caller how many leading digest bytes of their guess match a stored one, which does not help
/// find a secret, since nobody can steer a digest without inverting SHA-256.
///
/// A refusal after the lookup names the key (and its consumer) it concerns, for the access log.
pub fn authorize<'s>(
    snap: &'s Snapshot,
    facts: &Facts<'_>,
    now: SystemTime,
) -> Result<Authorized<'s>, Refusal> {
    if checksum_fails(facts.secret, &snap.key_prefix) {
        return Err(Deny::KeyInvalid.into());
    }
    let found = snap.key_by_hash(&KeyHash::of(facts.secret));
    // A rotated-out secret past its grace period is as unknown as a wrong one.
    let found = found.filter(|(_, _, m)| !matches!(m, Matched::Previous(until) if now >= *until));
    let Some((index, key, _)) = found else {
        return Err(Deny::KeyInvalid.into());
    };
    let consumer = snap.consumer_of(key);
    let refuse = |deny: Deny| Refusal::of_key(deny, key, consumer);
    if key.status == Status::Inactive {
        return Err(refuse(Deny::KeyInactive));
    }
    if key.expires_at.is_some_and(|at| now >= at) {
        return Err(refuse(Deny::KeyExpired));
    }
    if !key.allow_ips().allows(facts.client_ip)
        || consumer.is_some_and(|c| !c.allow_ips.allows(facts.client_ip))
    {
        return Err(refuse(Deny::IpNotAllowed));
    }
    if !key.targets().allows(facts.target)
        || consumer.is_some_and(|c| !c.targets.allows(facts.target))
    {
        return Err(refuse(Deny::TargetNotAllowed));
    }
    if !access_allows(key, facts.method, facts.path) {
        return Err(refuse(Deny::AccessDenied));
    }
    Ok(Authorized { key, index })
}

/// `access = "read-only"` allows GET, HEAD and OPTIONS; `paths` allows those prefixes, on whole
/// segments, of a path that cannot be read two ways.
fn access_allows(key: &Key, method: &Method, path: &str) -> bool {
    if key.access == Access::ReadOnly
        && !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
    {
        return false;
    }
    key.paths().is_empty()
        || (is_unambiguous(path) && key.paths().iter().any(|p| segment_prefix(path, p)))
}

/// False for paths an upstream may normalise into another one: dot segments (`/reports/../admin`),
/// encoded dots or slashes, backslashes. A key limited to `/reports` must not reach `/admin`
/// through the upstream's normalisation, so such paths are refused for path-limited keys.
fn is_unambiguous(path: &str) -> bool {
    let b = path.as_bytes();
    let encoded = b.windows(3).any(|w| {
        w[0] == b'%'
            && (w[1..].eq_ignore_ascii_case(b"2e")
                || w[1..].eq_ignore_ascii_case(b"2f")
                || w[1..].eq_ignore_ascii_case(b"5c"))
    });
    !encoded && !path.contains('\\') && !path.split('/').any(|s| s == "." || s == "..")
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;

    /// Also the rate phase's tests' config: it authorizes before it limits.
    pub(crate) const CONFIG: &str = r#"
[server]
failed_auth_limit = "2/minute"

[[targets]]
name = "production"
upstream = "http://127.0.0.1:3000"

[[targets]]
name = "staging"
upstream = "http://127.0.0.1:3001"
path_prefix = "/staging"

[[consumers]]
id = "acme"
allow_ips = ["10.0.0.0/8"]
targets = ["production"]
rate_limit = "3/minute"

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

[[keys]]
id = "pinned"
secret = "pinned-secret"
allow_ips = ["10.0.0.2", "2001:db8::/32"]
targets = ["staging"]

[[keys]]
id = "reader"
secret = "reader-secret"
access = "read-only"
paths = ["/reports"]

[[keys]]
id = "acme-a"
secret = "acme-a-secret"
consumer = "acme"
rate_limit = "2/minute"

[[keys]]
id = "acme-b"
secret = "acme-b-secret"
consumer = "acme"
"#;

    /// 2027-01-01T00:00:00Z, the expiry of key "dated".
    fn expiry() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_798_761_600)
    }

    fn at(wall: SystemTime) -> SystemTime {
        wall
    }

    pub(crate) fn facts<'a>(secret: &'a str, ip: &str) -> Facts<'a> {
        Facts {
            secret: secret.as_bytes(),
            target: 0,
            method: &Method::GET,
            path: "/",
            client_ip: ip.parse().unwrap(),
        }
    }

    fn setup() -> (Snapshot, ()) {
        let snap = crate::config::parse(CONFIG, Path::new("t.toml"))
            .unwrap()
            .snapshot;
        (snap, ())
    }

    fn decide<'s>(
        snap: &'s Snapshot,
        _: &(),
        facts: &Facts<'_>,
        now: SystemTime,
    ) -> Result<Authorized<'s>, Refusal> {
        authorize(snap, facts, now)
    }

    fn code(r: Result<Authorized<'_>, Refusal>) -> &'static str {
        match r {
            Ok(_) => "ok",
            Err(r) => r.deny.code(),
        }
    }

    #[test]
    fn status_and_expiry() {
        let (snap, f) = setup();
        let before = at(expiry() - Duration::from_secs(1));
        let ip = "127.0.0.1";
        assert_eq!(
            decide(&snap, &f, &facts("live-secret", ip), before)
                .unwrap()
                .key
                .id
                .as_str(),
            "live"
        );
        assert_eq!(
            code(decide(&snap, &f, &facts("nope", ip), before)),
            "key_invalid"
        );
        assert_eq!(
            code(decide(&snap, &f, &facts("off-secret", ip), before)),
            "key_inactive"
        );
        assert_eq!(
            code(decide(&snap, &f, &facts("dated-secret", ip), before)),
            "ok"
        );
        assert_eq!(
            code(decide(&snap, &f, &facts("dated-secret", ip), at(expiry()))),
            "key_expired"
        );
    }

    #[test]
    fn ip_then_target() {
        let (snap, f) = setup();
        let now = at(expiry());
        let mut staging = facts("pinned-secret", "10.0.0.2");
        staging.target = 1;
        assert_eq!(code(decide(&snap, &f, &staging, now)), "ok");
        let v6 = Facts {
            client_ip: "2001:db8::7".parse().unwrap(),
            ..staging
        };
        assert_eq!(code(decide(&snap, &f, &v6, now)), "ok");
        let elsewhere = Facts {
            client_ip: "10.0.0.3".parse().unwrap(),
            ..staging
        };
        assert_eq!(code(decide(&snap, &f, &elsewhere, now)), "ip_not_allowed");
        // Wrong target from a wrong address: IP is checked first.
        assert_eq!(
            code(decide(&snap, &f, &facts("pinned-secret", "10.0.0.3"), now)),
            "ip_not_allowed"
        );
        assert_eq!(
            code(decide(&snap, &f, &facts("pinned-secret", "10.0.0.2"), now)),
            "target_not_allowed"
        );
    }

    #[test]
    fn consumer_restrictions_apply_to_its_keys() {
        let (snap, f) = setup();
        let now = at(expiry());
        assert_eq!(
            code(decide(&snap, &f, &facts("acme-b-secret", "192.0.2.1"), now)),
            "ip_not_allowed"
        );
        let mut staging = facts("acme-b-secret", "10.1.1.1");
        staging.target = 1;
        assert_eq!(code(decide(&snap, &f, &staging, now)), "target_not_allowed");
    }

    #[test]
    fn access_levels_and_paths() {
        let (snap, f) = setup();
        let now = at(expiry());
        let ok = |method: &Method, path: &str| {
            let facts = Facts {
                method,
                path,
                ..facts("reader-secret", "127.0.0.1")
            };
            code(decide(&snap, &f, &facts, now))
        };
        assert_eq!(ok(&Method::GET, "/reports"), "ok");
        assert_eq!(ok(&Method::HEAD, "/reports/2026/11"), "ok");
        assert_eq!(ok(&Method::OPTIONS, "/reports"), "ok");
        assert_eq!(ok(&Method::POST, "/reports"), "access_denied");
        assert_eq!(ok(&Method::DELETE, "/reports"), "access_denied");
        assert_eq!(ok(&Method::GET, "/reportsx"), "access_denied");
        assert_eq!(ok(&Method::GET, "/admin"), "access_denied");
        assert_eq!(ok(&Method::GET, "/reports/../admin"), "access_denied");
        assert_eq!(ok(&Method::GET, "/reports/%2e%2e/admin"), "access_denied");
        assert_eq!(ok(&Method::GET, "/reports%2F..%2Fadmin"), "access_denied");
    }

    #[test]
    fn a_refusal_after_the_lookup_names_its_key_and_consumer() {
        let (snap, f) = setup();
        let refused = decide(
            &snap,
            &f,
            &facts("acme-b-secret", "192.0.2.1"),
            at(expiry()),
        )
        .unwrap_err();
        assert_eq!(refused.deny, Deny::IpNotAllowed);
        assert_eq!(refused.key.as_ref().map(|k| k.as_str()), Some("acme-b"));
        assert_eq!(refused.consumer.as_ref().map(|c| c.as_str()), Some("acme"));
        let unknown = decide(&snap, &f, &facts("nope", "192.0.2.1"), at(expiry())).unwrap_err();
        assert_eq!((unknown.deny, unknown.key), (Deny::KeyInvalid, None));
    }
}

#[cfg(test)]
mod rotation_tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::secret::KeyHash;

    #[test]
    fn a_rotated_out_secret_works_until_its_grace_ends() {
        let old = KeyHash::of(b"old-secret");
        let config = format!(
            "[[targets]]\nname = \"p\"\nupstream = \"http://127.0.0.1:1\"\n\n[[keys]]\nid = \"k\"\nsecret = \"new-secret\"\nprevious_hash = \"{old}\"\nprevious_expires_at = 2027-01-01T00:00:00Z\n"
        );
        let snap = crate::config::parse(&config, Path::new("t.toml"))
            .unwrap()
            .snapshot;
        let end = SystemTime::UNIX_EPOCH + Duration::from_secs(1_798_761_600);
        let facts = |s: &'static str| Facts {
            secret: s.as_bytes(),
            target: 0,
            method: &Method::GET,
            path: "/",
            client_ip: "127.0.0.1".parse().unwrap(),
        };
        let decide = |facts, at| authorize(&snap, &facts, at).map_err(|r| r.deny);
        let before = end - Duration::from_secs(1);
        assert!(decide(facts("old-secret"), before).is_ok());
        assert!(decide(facts("new-secret"), before).is_ok());
        assert_eq!(
            decide(facts("old-secret"), end).unwrap_err(),
            Deny::KeyInvalid
        );
        assert!(decide(facts("new-secret"), end).is_ok());
    }
}

#[cfg(test)]
mod checksum_tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::limits::FailedAuth;
    use crate::proxy::{Now, guarded_authorize};

    /// A generated secret with one character of its random part changed.
    fn mistyped(good: &str) -> String {
        let mut typo = good.to_owned().into_bytes();
        typo[10] = if typo[10] == b'x' { b'y' } else { b'x' };
        String::from_utf8(typo).unwrap()
    }

    fn snapshot(keys: &[(&str, &str)], admin: &str) -> Snapshot {
        let mut config =
            format!("{admin}[[targets]]\nname = \"p\"\nupstream = \"http://127.0.0.1:1\"\n");
        for (id, secret) in keys {
            config.push_str(&format!(
                "\n[[keys]]\nid = \"{id}\"\nsecret = \"{secret}\"\n"
            ));
        }
        crate::config::parse(&config, Path::new("t.toml"))
            .unwrap()
            .snapshot
    }

    fn decide(snap: &Snapshot, secret: &str) -> Result<String, Deny> {
        let facts = Facts {
            secret: secret.as_bytes(),
            target: 0,
            method: &Method::GET,
            path: "/",
            client_ip: "127.0.0.1".parse().unwrap(),
        };
        authorize(snap, &facts, SystemTime::UNIX_EPOCH)
            .map(|a| a.key.id.as_str().to_owned())
            .map_err(|r| r.deny)
    }

    #[test]
    fn a_mistyped_generated_secret_is_refused_before_the_lookup() {
        let good = crate::secret::generate("kg_").unwrap();
        let typo = mistyped(&good);
        // The table holds a key whose hash is the mistyped secret's: only a refusal before the
        // lookup can refuse it.
        let snap = snapshot(&[("good", &good), ("typo", &typo)], "");
        assert_eq!(decide(&snap, &good).unwrap(), "good");
        assert_eq!(decide(&snap, &typo), Err(Deny::KeyInvalid));
        assert!(snap.key_by_hash(&KeyHash::of(typo.as_bytes())).is_some());
    }

    #[test]
    fn a_configured_secret_with_a_wrong_checksum_is_a_warning_at_its_line() {
        let good = crate::secret::generate("kg_").unwrap();
        let typo = mistyped(&good);
        let config = format!(
            "[[targets]]\nname = \"p\"\nupstream = \"http://127.0.0.1:1\"\n\n[[keys]]\nid = \"good\"\nsecret = \"{good}\"\n\n[[keys]]\nid = \"typo\"\nsecret = \"{typo}\"\n"
        );
        let loaded = crate::config::parse(&config, Path::new("t.toml")).unwrap();
        let found: Vec<String> = loaded
            .warnings
            .iter()
            .map(ToString::to_string)
            .filter(|w| w.contains("checksum"))
            .collect();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with(
                "t.toml:11:10: warning: key \"typo\": secret has the shape of a generated secret"
            ),
            "{found:?}"
        );
        assert!(found[0].contains("refused with key_invalid"), "{found:?}");
    }

    #[test]
    fn old_and_hand_written_secrets_still_go_to_the_lookup() {
        let old = "kg_primary_Q2xlYXJseU5vdEFSZWFsU2VjcmV0X3ByaW1hcnk";
        // The new shape under another prefix than the configured one is not judged.
        let other = mistyped(&crate::secret::generate("xy_").unwrap());
        let snap = snapshot(
            &[("old", old), ("hand", "live-secret"), ("other", &other)],
            "",
        );
        assert_eq!(decide(&snap, old).unwrap(), "old");
        assert_eq!(decide(&snap, "live-secret").unwrap(), "hand");
        assert_eq!(decide(&snap, &other).unwrap(), "other");
    }

    #[test]
    fn the_prefix_is_the_admin_key_prefix() {
        let admin = "[admin]\nlisten = \"127.0.0.1:9\"\nkey_prefix = \"acme_\"\n\n";
        let good = crate::secret::generate("acme_").unwrap();
        let typo = mistyped(&good);
        let kg_typo = mistyped(&crate::secret::generate("kg_").unwrap());
        let snap = snapshot(&[("good", &good), ("typo", &typo), ("kg", &kg_typo)], admin);
        assert_eq!(&*snap.key_prefix, "acme_");
        assert_eq!(decide(&snap, &good).unwrap(), "good");
        assert_eq!(decide(&snap, &typo), Err(Deny::KeyInvalid));
        // `kg_` is not this gateway's prefix: a hand-written secret like any other.
        assert_eq!(decide(&snap, &kg_typo).unwrap(), "kg");
    }

    #[test]
    fn a_checksum_refusal_counts_as_a_failed_attempt() {
        let config = "[server]\nfailed_auth_limit = \"1/minute\"\n\n[[targets]]\nname = \"p\"\nupstream = \"http://127.0.0.1:1\"\n\n[[keys]]\nid = \"live\"\nsecret = \"live-secret\"\n";
        let snap = crate::config::parse(config, Path::new("t.toml"))
            .unwrap()
            .snapshot;
        let failures = FailedAuth::new(64);
        let now = Now {
            wall: SystemTime::UNIX_EPOCH,
            mono: Duration::from_secs(1),
        };
        let typo = mistyped(&crate::secret::generate("kg_").unwrap());
        let code = |secret: &str| {
            let facts = Facts {
                secret: secret.as_bytes(),
                target: 0,
                method: &Method::GET,
                path: "/",
                client_ip: "192.0.2.7".parse().unwrap(),
            };
            match guarded_authorize(&snap, &failures, &facts, now) {
                Ok(_) => "ok",
                Err(r) => r.deny.code(),
            }
        };
        assert_eq!(code(&typo), "key_invalid");
        assert_eq!(code("live-secret"), "too_many_failures");
    }
}
