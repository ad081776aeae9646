//! API key secrets: hashing and the `sha256:` text form.
//!
//! keygate never keeps a plaintext secret: the table is keyed by the SHA-256 of the secret, and
//! the request path hashes what the client presents once, then looks that up. Because the table
//! key is itself a uniformly distributed hash that no client can choose, the map uses its first
//! eight bytes as the bucket hash instead of hashing it again (see [`KeyHashBuilder`]).

use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

use sha2::{Digest, Sha256};

/// The text prefix of a stored hash, as written in the config: `sha256:<64 hex>`.
pub const HASH_PREFIX: &str = "sha256:";

/// The SHA-256 of a secret: what the key table is keyed by.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    /// Hashes a presented secret. This is the one hash on the request path.
    pub fn of(secret: &[u8]) -> KeyHash {
        KeyHash(Sha256::digest(secret).into())
    }

    /// Parses `sha256:<64 hex digits>`; `None` when the text is anything else.
    pub fn parse(text: &str) -> Option<KeyHash> {
        let hex_part = text.strip_prefix(HASH_PREFIX)?.as_bytes();
        if hex_part.len() != 64 {
            return None;
        }
        // By table rather than with `hex`: a million keys are parsed at startup, and random hex
        // digits make a branch per digit mispredict half the time.
        let mut out = [0u8; 32];
        let mut bad = 0u8;
        for (o, pair) in out.iter_mut().zip(hex_part.chunks_exact(2)) {
            let (hi, lo) = (HEX[usize::from(pair[0])], HEX[usize::from(pair[1])]);
            bad |= hi | lo;
            *o = (hi << 4) | (lo & 0x0f);
        }
        (bad & 0xf0 == 0).then_some(KeyHash(out))
    }
}

/// The value of each hex digit, 0xff for every other byte.
static HEX: [u8; 256] = {
    let mut t = [0xff; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{HASH_PREFIX}{}", hex::encode(self.0))
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::hash::Hash for KeyHash {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(first));
    }
}

/// A hasher that passes through the `u64` a [`KeyHash`] writes: the bytes are already SHA-256.
#[derive(Default)]
pub struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only reached if something other than KeyHash is hashed with it; stay correct anyway.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The `BuildHasher` for maps keyed by [`KeyHash`].
pub type KeyHashBuilder = BuildHasherDefault<PassThroughHasher>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_text_round_trips() {
        let h = KeyHash::of(b"test");
        let text = h.to_string();
        assert_eq!(
            text,
            "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
        assert_eq!(KeyHash::parse(&text), Some(h));
        assert_eq!(
            KeyHash::parse(&text.to_uppercase().replace("SHA256", "sha256")),
            Some(h)
        );
    }

    #[test]
    fn malformed_hashes_are_refused() {
        for bad in [
            "",
            "sha256:",
            "sha256:zz86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a0",
            "md5:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a0g",
            "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00é",
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        ] {
            assert_eq!(KeyHash::parse(bad), None, "{bad:?}");
        }
    }
}
