//! `X-Request-Id`: kept when the client sends a sane one, made up otherwise, and returned on
//! every response so a caller can quote it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderMap, HeaderName, HeaderValue};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client-chosen id kept; a longer one is replaced rather than carried into logs.
const MAX_LEN: usize = 128;

/// The client's `X-Request-Id` when it is short visible ASCII, else a new one.
pub fn of(headers: &HeaderMap) -> HeaderValue {
    match headers.get(X_REQUEST_ID) {
        Some(v) if is_sane(v.as_bytes()) => v.clone(),
        _ => generate(),
    }
}

fn is_sane(b: &[u8]) -> bool {
    !b.is_empty()
        && b.len() <= MAX_LEN
        && b.iter()
            .all(|c| c.is_ascii_graphic() && *c != b'"' && *c != b'\\')
}

/// 32 hex digits: a random per-process half and a counter half. Unique without a syscall or a
/// random draw per request; ids are labels, not secrets.
fn generate() -> HeaderValue {
    static PROCESS: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let process = *PROCESS.get_or_init(|| {
        let mut b = [0u8; 8];
        // Without OS randomness the ids are still unique within the process.
        let _ = getrandom::fill(&mut b);
        u64::from_le_bytes(b)
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&process.to_be_bytes());
    raw[8..].copy_from_slice(&n.to_be_bytes());
    let mut text = [0u8; 32];
    // Both calls cannot fail: the output buffer is exactly twice the input, and hex is ASCII.
    let _ = hex::encode_to_slice(raw, &mut text);
    HeaderValue::from_bytes(&text).unwrap_or(HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_sane_ids_and_replaces_others() {
        let mut h = HeaderMap::new();
        let a = of(&h);
        let b = of(&h);
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        h.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(of(&h), "abc-123");
        h.insert(X_REQUEST_ID, HeaderValue::from_static("has \"quotes\""));
        assert_ne!(of(&h), "has \"quotes\"");
    }
}
