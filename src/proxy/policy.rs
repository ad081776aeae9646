//! Phases 3-5: key lookup and every check on the key, in the contract's order: failed-attempt
//! block, lookup, status, expiry, IP, target, access, and the rate limit last, so that a request
//! refused for any other reason spends no quota. Pure: (snapshot, limiter state, request facts,
//! now) -> decision, so it is unit-tested and benched without sockets.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use http::Method;

use super::deny::Deny;
use super::route::segment_prefix;
use crate::cluster::Shared;
use crate::limits::{self, FailedAuth, RateStatus};
use crate::secret::KeyHash;
use crate::snapshot::{Access, Key, Matched, Snapshot, Status, TargetIdx};

/// What the policy needs to know about a request.
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

/// The time of a decision: wall clock for expiry, monotonic for failed-attempt counting.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub wall: SystemTime,
    pub mono: Duration,
}

/// A request that may pass, and the rate-limit state to report on its response.
#[derive(Debug)]
pub struct Admitted<'s> {
    pub key: &'s Key,
    /// The key's index in the snapshot.
    pub index: usize,
    pub rate: Option<RateStatus>,
}

/// Decides whether `facts` may pass. One hash, one map lookup.
///
/// The lookup compares SHA-256 digests, not secrets: how long a comparison takes can only tell
/// a caller how many leading digest bytes of their guess match a stored one, which does not help
/// find a secret, since nobody can steer a digest without inverting SHA-256.
pub fn decide<'s>(
    snap: &'s Snapshot,
    failures: &FailedAuth,
    facts: &Facts<'_>,
    now: Now,
) -> Result<Admitted<'s>, Deny> {
    decide_noting(snap, failures, facts, now, &mut None, None)
}

/// [`decide`], which also notes the index of the key the secret matched, refused or not: the
/// access log and the per-key rate-limit metric name the key of a refusal. With `shared` (a
/// `[cluster]`), the rate limits are not applied here but handed back in it, for the fleet to
/// decide; `rate` is then `None`.
pub fn decide_noting<'s>(
    snap: &'s Snapshot,
    failures: &FailedAuth,
    facts: &Facts<'_>,
    now: Now,
    found_key: &mut Option<usize>,
    shared: Option<&mut Shared>,
) -> Result<Admitted<'s>, Deny> {
    let guard = snap.server.failed_auth_limit;
    failures
        .blocked(facts.client_ip, guard, now.mono)
        .map_err(Deny::TooManyFailures)?;
    let found = snap.key_by_hash(&KeyHash::of(facts.secret));
    // A rotated-out secret past its grace period is as unknown as a wrong one.
    let found =
        found.filter(|(_, _, m)| !matches!(m, Matched::Previous(until) if now.wall >= *until));
    let Some((index, key, _)) = found else {
        failures.record(facts.client_ip, guard, now.mono);
        return Err(Deny::KeyInvalid);
    };
    *found_key = Some(index);
    if key.status == Status::Inactive {
        return Err(Deny::KeyInactive);
    }
    if key.expires_at.is_some_and(|at| now.wall >= at) {
        return Err(Deny::KeyExpired);
    }
    let consumer = snap.consumer_of(key);
    if !key.allow_ips().allows(facts.client_ip)
        || consumer.is_some_and(|c| !c.allow_ips.allows(facts.client_ip))
    {
        return Err(Deny::IpNotAllowed);
    }
    if !key.targets().allows(facts.target)
        || consumer.is_some_and(|c| !c.targets.allows(facts.target))
    {
        return Err(Deny::TargetNotAllowed);
    }
    if !access_allows(key, facts.method, facts.path) {
        return Err(Deny::AccessDenied);
    }
    if let Some(shared) = shared {
        shared.key = key.rate_limit().map(|r| (key.id.clone(), r));
        shared.consumer = consumer.and_then(|c| c.rate_limit.map(|r| (c.id.clone(), r)));
        return Ok(Admitted {
            key,
            index,
            rate: None,
        });
    }
    let rate = limits::check(
        snap.buckets.key(index),
        key.consumer.and_then(|c| snap.buckets.consumer(c as usize)),
    )
    .map_err(Deny::RateLimited)?;
    Ok(Admitted { key, index, rate })
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
mod tests {
    use std::path::Path;

    use super::*;

    const CONFIG: &str = r#"
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

    fn at(wall: SystemTime) -> Now {
        Now {
            wall,
            mono: Duration::from_secs(1),
        }
    }

    fn facts<'a>(secret: &'a str, ip: &str) -> Facts<'a> {
        Facts {
            secret: secret.as_bytes(),
            target: 0,
            method: &Method::GET,
            path: "/",
            client_ip: ip.parse().unwrap(),
        }
    }

    fn setup() -> (Snapshot, FailedAuth) {
        let snap = crate::config::parse(CONFIG, Path::new("t.toml"))
            .unwrap()
            .snapshot;
        (snap, FailedAuth::new(64))
    }

    fn code(r: Result<Admitted<'_>, Deny>) -> &'static str {
        match r {
            Ok(_) => "ok",
            Err(d) => d.code(),
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
    fn rate_limit_is_last_and_shared_by_the_consumer() {
        let (snap, f) = setup();
        let now = at(expiry());
        let a = facts("acme-a-secret", "10.0.0.9");
        let b = facts("acme-b-secret", "10.0.0.9");
        // A refusal for another reason spends no quota.
        for _ in 0..5 {
            let from_outside = Facts {
                client_ip: "192.0.2.1".parse().unwrap(),
                ..a
            };
            assert_eq!(
                code(decide(&snap, &f, &from_outside, now)),
                "ip_not_allowed"
            );
        }
        let first = decide(&snap, &f, &a, now).unwrap().rate.unwrap();
        assert_eq!(first.policies[0].unwrap().remaining, 1);
        assert_eq!(first.policies[1].unwrap().remaining, 2);
        assert_eq!(code(decide(&snap, &f, &b, now)), "ok");
        assert_eq!(code(decide(&snap, &f, &a, now)), "ok");
        // The consumer's 3/minute is spent by a and b together.
        assert_eq!(code(decide(&snap, &f, &b, now)), "rate_limited");
        assert_eq!(code(decide(&snap, &f, &a, now)), "rate_limited");
        assert!(
            decide(&snap, &f, &facts("live-secret", "10.0.0.9"), now)
                .unwrap()
                .rate
                .is_none()
        );
    }

    #[test]
    fn failed_attempts_block_the_address_for_any_key() {
        let (snap, f) = setup();
        let now = at(expiry());
        assert_eq!(
            code(decide(&snap, &f, &facts("guess-1", "192.0.2.7"), now)),
            "key_invalid"
        );
        assert_eq!(
            code(decide(&snap, &f, &facts("guess-2", "192.0.2.7"), now)),
            "key_invalid"
        );
        assert_eq!(
            code(decide(&snap, &f, &facts("live-secret", "192.0.2.7"), now)),
            "too_many_failures"
        );
        assert_eq!(
            code(decide(&snap, &f, &facts("live-secret", "192.0.2.8"), now)),
            "ok"
        );
        let later = Now {
            mono: now.mono + Duration::from_secs(30),
            ..now
        };
        assert_eq!(
            code(decide(&snap, &f, &facts("live-secret", "192.0.2.7"), later)),
            "ok"
        );
    }
}

#[cfg(test)]
mod rotation_tests {
    use std::path::Path;

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
        let f = FailedAuth::new(64);
        let end = SystemTime::UNIX_EPOCH + Duration::from_secs(1_798_761_600);
        let facts = |s: &'static str| Facts {
            secret: s.as_bytes(),
            target: 0,
            method: &Method::GET,
            path: "/",
            client_ip: "127.0.0.1".parse().unwrap(),
        };
        let at = |wall| Now {
            wall,
            mono: Duration::from_secs(1),
        };
        let before = at(end - Duration::from_secs(1));
        assert!(decide(&snap, &f, &facts("old-secret"), before).is_ok());
        assert!(decide(&snap, &f, &facts("new-secret"), before).is_ok());
        assert_eq!(
            decide(&snap, &f, &facts("old-secret"), at(end)).unwrap_err(),
            Deny::KeyInvalid
        );
        assert!(decide(&snap, &f, &facts("new-secret"), at(end)).is_ok());
    }
}
