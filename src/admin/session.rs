//! Console sessions: an admin key traded once for a cookie.
//!
//! The cookie (`kg_session`) is `HttpOnly` (the page's script never sees it), `SameSite=Strict`
//! and `Secure` under TLS. It holds 256 random bits; keygate keeps only their SHA-256, in
//! memory (a restart signs everyone out). A session ends `session_idle` after its last request
//! or `session_max` after sign-in, and as soon as its admin key leaves the config. Changes
//! made with a session must also carry its CSRF token in `X-CSRF-Token` and come from the
//! admin listener's own origin (see `Admin::caller`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::HeaderMap;

use crate::secret::{self, KeyHash};

/// The cookie's name.
pub const COOKIE: &str = "kg_session";
/// The header a session's changes carry its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// More open sessions than this and the least recently used one is closed: sign-ins are
/// throttled per address, but the table must stay bounded whatever happens.
const MAX_SESSIONS: usize = 10_000;

/// An open session.
#[derive(Debug, Clone)]
pub struct Session {
    /// The admin key's id: who is signed in. Their role is read from the config on each
    /// request, so a changed or removed admin key takes effect at once.
    pub admin_id: String,
    /// The hash of the secret signed in with: a replaced secret ends the session.
    pub admin_hash: KeyHash,
    pub csrf: String,
    pub started: Instant,
    last: Instant,
}

impl Session {
    /// A session another instance opened (shared through `[cluster]`), as this one holds it.
    pub fn restored(
        admin_id: String,
        admin_hash: KeyHash,
        csrf: String,
        started: Instant,
    ) -> Session {
        Session {
            admin_id,
            admin_hash,
            csrf,
            started,
            last: Instant::now(),
        }
    }
}

/// Why a cookie opened nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    Unknown,
    Idle,
    Max,
}

/// Every open session, by the hash of its token.
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<KeyHash, Session>>,
}

impl Sessions {
    /// Opens a session for `admin_id` at `now`; returns the cookie's token and the session.
    pub fn open(
        &self,
        admin_id: &str,
        admin_hash: KeyHash,
        now: Instant,
    ) -> Result<(String, Session), getrandom::Error> {
        let token = secret::generate("")?;
        let session = Session {
            admin_id: admin_id.to_owned(),
            admin_hash,
            csrf: secret::generate("")?,
            started: now,
            last: now,
        };
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.len() >= MAX_SESSIONS
            && let Some(oldest) = open.iter().min_by_key(|(_, s)| s.last).map(|(h, _)| *h)
        {
            open.remove(&oldest);
        }
        open.insert(KeyHash::of(token.as_bytes()), session.clone());
        Ok((token, session))
    }

    /// The session `token` opens at `now`, which then counts as its last use. An ended
    /// session is removed.
    pub fn touch(
        &self,
        token: &str,
        now: Instant,
        idle: Duration,
        max: Duration,
    ) -> Result<Session, Closed> {
        let hash = KeyHash::of(token.as_bytes());
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let session = open.get_mut(&hash).ok_or(Closed::Unknown)?;
        let why = if now.saturating_duration_since(session.started) >= max {
            Closed::Max
        } else if now.saturating_duration_since(session.last) >= idle {
            Closed::Idle
        } else {
            session.last = now;
            return Ok(session.clone());
        };
        open.remove(&hash);
        Err(why)
    }

    pub fn close(&self, token: &str) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.remove(&KeyHash::of(token.as_bytes()));
    }
}

/// The session token in the request's cookies, if any.
pub fn token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE && !value.is_empty()).then_some(value)
        })
}

/// `Set-Cookie` for a new session.
pub fn set_cookie(token: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{secure}")
}

/// `Set-Cookie` that removes the session's cookie.
pub fn clear_cookie(secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{secure}")
}

/// Compares two tokens in time that does not depend on where they differ.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(30 * 60);
    const MAX: Duration = Duration::from_secs(12 * 3600);

    #[test]
    fn a_session_ends_when_idle_and_at_its_maximum_age_however_busy() {
        let sessions = Sessions::default();
        let t0 = Instant::now();
        let (token, s) = sessions.open("ops", KeyHash::of(b"s"), t0).unwrap();
        assert_eq!(s.admin_id, "ops");
        // Used every 20 minutes: never idle, but over after 12 hours.
        let mut now = t0;
        for _ in 0..35 {
            now += Duration::from_secs(20 * 60);
            assert!(sessions.touch(&token, now, IDLE, MAX).is_ok());
        }
        now += Duration::from_secs(20 * 60);
        assert_eq!(
            sessions.touch(&token, now, IDLE, MAX).unwrap_err(),
            Closed::Max
        );
        assert_eq!(
            sessions.touch(&token, now, IDLE, MAX).unwrap_err(),
            Closed::Unknown
        );

        let (token, _) = sessions.open("ops", KeyHash::of(b"s"), t0).unwrap();
        let late = t0 + IDLE;
        assert_eq!(
            sessions.touch(&token, late, IDLE, MAX).unwrap_err(),
            Closed::Idle
        );
    }

    #[test]
    fn closed_and_forged_tokens_open_nothing() {
        let sessions = Sessions::default();
        let now = Instant::now();
        let (token, _) = sessions.open("ops", KeyHash::of(b"s"), now).unwrap();
        assert_eq!(
            sessions.touch("forged", now, IDLE, MAX).unwrap_err(),
            Closed::Unknown
        );
        sessions.close(&token);
        assert_eq!(
            sessions.touch(&token, now, IDLE, MAX).unwrap_err(),
            Closed::Unknown
        );
    }

    #[test]
    fn the_token_is_read_from_any_cookie_header() {
        let mut h = HeaderMap::new();
        h.append(
            http::header::COOKIE,
            "a=1; kg_session=tok; b=2".parse().unwrap(),
        );
        assert_eq!(token(&h), Some("tok"));
        let mut h = HeaderMap::new();
        h.append(http::header::COOKIE, "a=1".parse().unwrap());
        h.append(http::header::COOKIE, "kg_session=x".parse().unwrap());
        assert_eq!(token(&h), Some("x"));
        assert_eq!(token(&HeaderMap::new()), None);
        assert!(set_cookie("t", true).contains("HttpOnly; SameSite=Strict; Secure"));
        assert!(!set_cookie("t", false).contains("Secure"));
    }
}
