//! `Keygate-Signature: t=<unix secs>,v1=<hex>`: HMAC-SHA256 over `"{t}.{body}"` with the
//! webhook's secret, the scheme Stripe uses, so receivers can reuse what they know. The
//! timestamp is signed too, so a captured delivery cannot be replayed later than the
//! receiver's tolerance.

use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;

/// The header's name.
pub const SIGNATURE: &str = "keygate-signature";

/// `None` never happens (HMAC takes a key of any length), but is not assumed.
fn mac(secret: &[u8], t: u64, body: &[u8]) -> Option<Hmac<Sha256>> {
    let mut m = <Hmac<Sha256>>::new_from_slice(secret).ok()?;
    m.update(t.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    Some(m)
}

/// The header value for `body` sent at `t` (seconds since the epoch).
pub fn sign(secret: &[u8], t: u64, body: &[u8]) -> Option<String> {
    let m = mac(secret, t, body)?;
    Some(format!(
        "t={t},v1={}",
        hex::encode(m.finalize().into_bytes())
    ))
}

/// What a receiver does (docs/webhooks.md): parse `t` and every `v1`, recompute, compare in
/// constant time, and refuse a timestamp further than `tolerance` seconds from `now`.
pub fn verify(secret: &[u8], header: &str, body: &[u8], now: u64, tolerance: u64) -> bool {
    let mut t = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => sigs.extend(hex::decode(v).ok()),
            _ => {}
        }
    }
    let Some(t) = t else {
        return false;
    };
    if t.abs_diff(now) > tolerance {
        return false;
    }
    sigs.iter()
        .any(|s| mac(secret, t, body).is_some_and(|m| m.verify_slice(s).is_ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Computed independently with printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac whsec
        let h = sign(b"whsec", 1_700_000_000, br#"{"a":1}"#).unwrap();
        assert_eq!(
            h,
            "t=1700000000,v1=8ad37ba156048ae0e0a5533c75cdf26fee88b07f93cb57ee4c80adb053012032"
        );
        assert!(verify(b"whsec", &h, br#"{"a":1}"#, 1_700_000_100, 300));
        assert!(!verify(b"whsec", &h, br#"{"a":2}"#, 1_700_000_100, 300));
        assert!(!verify(b"other", &h, br#"{"a":1}"#, 1_700_000_100, 300));
        assert!(!verify(b"whsec", &h, br#"{"a":1}"#, 1_700_001_000, 300));
        assert!(!verify(
            b"whsec",
            "v1=00",
            br#"{"a":1}"#,
            1_700_000_000,
            300
        ));
        // A second signature (as during a secret rotation) is accepted when either matches.
        let two = format!("{h},v1={}", "00".repeat(32));
        assert!(verify(b"whsec", &two, br#"{"a":1}"#, 1_700_000_000, 300));
    }

    #[test]
    fn events_hmac_matches_rfc_4231() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let mut m = <Hmac<Sha256>>::new_from_slice(b"Jefe").unwrap();
        m.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(m.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
