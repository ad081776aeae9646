//! API key secrets: generation and their checksum. Their hash, [`KeyHash`], is plain data
//! (`model/key_hash.rs`).
//!
//! A generated secret is `<prefix><32 random base62><6 base62 checksum>`, like GitHub's tokens:
//! the checksum is the CRC32 (IEEE, as zlib and `crc32fast`) of the prefix and the random part,
//! written in base62 with the digits `0-9A-Za-z`, most significant first, padded with `0` to 6.
//! A secret scanner can tell a real leaked key from a look-alike without asking anyone, and the
//! gateway refuses a mistyped or made-up key with the prefix before it hashes or looks it up.

// The hash is plain data, kept with the key it identifies; also here by its old path.
pub use crate::model::key_hash::{HASH_PREFIX, KeyHash, KeyHashBuilder, PassThroughHasher};

/// Random characters of a generated secret: 32 of 62 are ~190 bits, beyond any guessing.
pub const RANDOM_CHARS: usize = 32;
/// Checksum characters: 62^6 > 2^32, so any CRC32 fits.
pub const CHECKSUM_CHARS: usize = 6;
/// What follows the prefix in a generated secret.
pub const BODY_CHARS: usize = RANDOM_CHARS + CHECKSUM_CHARS;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Random bytes at or above this are drawn again, so every character is equally likely
/// (248 = 4 x 62).
const UNBIASED_BELOW: u8 = 248;
/// Draws of 64 bytes for 32 characters: each byte is kept with p = 248/256, so a second draw is
/// already rarer than one in 10^20; past this many the OS's generator is broken.
const MAX_DRAWS: usize = 8;

/// Makes a new secret: `prefix`, [`RANDOM_CHARS`] random base62 characters from the OS, and
/// their [`checksum`].
pub fn generate(prefix: &str) -> Result<String, getrandom::Error> {
    let mut out = String::with_capacity(prefix.len() + BODY_CHARS);
    out.push_str(prefix);
    let mut left = RANDOM_CHARS;
    for _ in 0..MAX_DRAWS {
        let mut bytes = [0u8; 64];
        getrandom::fill(&mut bytes)?;
        for b in bytes.into_iter().filter(|b| *b < UNBIASED_BELOW).take(left) {
            out.push(char::from(BASE62[usize::from(b % 62)]));
            left -= 1;
        }
        if left == 0 {
            let sum = checksum(out.as_bytes());
            out.extend(sum.iter().map(|&c| char::from(c)));
            return Ok(out);
        }
    }
    Err(getrandom::Error::UNEXPECTED)
}

/// The checksum of a generated secret's prefix and random part: their CRC32 in 6 base62 digits.
pub fn checksum(prefix_and_random: &[u8]) -> [u8; CHECKSUM_CHARS] {
    let mut n = crc32fast::hash(prefix_and_random);
    let mut out = [b'0'; CHECKSUM_CHARS];
    for digit in out.iter_mut().rev() {
        *digit = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out
}

/// True for a secret that has the shape of one generated with `prefix` (the prefix, then
/// exactly [`BODY_CHARS`] ASCII letters and digits) but whose checksum is wrong: mistyped,
/// truncated and re-typed, or made up. Anything of another shape is not judged (`false`):
/// older generated secrets (43 URL-safe base64 characters) and hand-written ones go to the
/// lookup as before. Without a prefix nothing is judged: a bare 38-character secret is too
/// likely to be someone's hand-written key.
pub fn checksum_fails(secret: &[u8], prefix: &str) -> bool {
    let Some(body) = secret.strip_prefix(prefix.as_bytes()) else {
        return false;
    };
    if prefix.is_empty() || body.len() != BODY_CHARS || !body.iter().all(u8::is_ascii_alphanumeric)
    {
        return false;
    }
    let (signed, sum) = secret.split_at(secret.len() - CHECKSUM_CHARS);
    checksum(signed) != sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_have_the_prefix_32_base62_and_a_valid_checksum() {
        let a = generate("kg_").unwrap();
        let b = generate("kg_").unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("kg_"));
        assert_eq!(a.len(), 3 + 32 + 6);
        assert!(a[3..].bytes().all(|c| c.is_ascii_alphanumeric()), "{a}");
        assert_eq!(
            &checksum(&a.as_bytes()[..3 + 32])[..],
            &a.as_bytes()[3 + 32..]
        );
        assert!(!checksum_fails(a.as_bytes(), "kg_"));
        // The empty prefix (console sessions) still gets 38 characters.
        assert_eq!(generate("").unwrap().len(), 38);
    }

    #[test]
    fn every_character_of_the_alphabet_turns_up() {
        let mut seen = [false; 62];
        for _ in 0..200 {
            for c in generate("").unwrap()[..RANDOM_CHARS].bytes() {
                seen[BASE62.iter().position(|&b| b == c).unwrap()] = true;
            }
        }
        assert!(
            seen.iter().all(|s| *s),
            "a character never came up in 6,400"
        );
    }

    #[test]
    fn the_checksum_is_the_crc32_in_six_base62_digits() {
        let crc = crc32fast::hash(b"kg_abc");
        let mut n = u64::from(crc);
        let mut digits = Vec::new();
        for _ in 0..6 {
            digits.push(BASE62[(n % 62) as usize]);
            n /= 62;
        }
        digits.reverse();
        assert_eq!(checksum(b"kg_abc").to_vec(), digits);
        assert_eq!(checksum(b""), *b"000000", "crc32 of nothing is 0");
        // The largest CRC fits: 62^6 > 2^32.
        assert!(62u64.pow(6) > u64::from(u32::MAX));
    }

    #[test]
    fn any_one_character_mistyped_fails_the_checksum() {
        let good = generate("kg_").unwrap();
        for i in 3..good.len() {
            let mut typo = good.clone().into_bytes();
            typo[i] = if typo[i] == b'x' { b'y' } else { b'x' };
            assert!(checksum_fails(&typo, "kg_"), "typo at {i} passed");
        }
    }

    #[test]
    fn other_shapes_are_not_judged() {
        let good = generate("kg_").unwrap();
        // An old generated secret: 43 URL-safe base64 characters.
        assert!(!checksum_fails(
            b"kg_primary_Q2xlYXJseU5vdEFSZWFsU2VjcmV0X3ByaW1hcnk",
            "kg_"
        ));
        assert!(!checksum_fails(b"live-secret", "kg_"));
        // One character more or less, a non-alphanumeric character, another prefix.
        assert!(!checksum_fails(format!("{good}x").as_bytes(), "kg_"));
        assert!(!checksum_fails(&good.as_bytes()[..good.len() - 1], "kg_"));
        let mut dashed = good.clone().into_bytes();
        dashed[10] = b'-';
        assert!(!checksum_fails(&dashed, "kg_"));
        assert!(!checksum_fails(good.as_bytes(), "acme_"));
        assert!(!checksum_fails(&good.as_bytes()[3..], ""));
        // Hostile bytes never panic.
        assert!(!checksum_fails(&[0xff; 41], "kg_"));
        assert!(!checksum_fails(b"", "kg_"));
    }
}
