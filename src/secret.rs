//! API key secrets: generation. Their hash, [`KeyHash`], is plain data (`model/key_hash.rs`).

use base64::Engine as _;

// The hash is plain data, kept with the key it identifies; also here by its old path.
pub use crate::model::key_hash::{HASH_PREFIX, KeyHash, KeyHashBuilder, PassThroughHasher};

/// How many random bytes a generated secret carries: 256 bits, beyond any guessing.
pub const SECRET_BYTES: usize = 32;

/// Makes a new secret: [`SECRET_BYTES`] from the OS, URL-safe base64 without padding, after `prefix`.
pub fn generate(prefix: &str) -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; SECRET_BYTES];
    getrandom::fill(&mut bytes)?;
    let mut out = String::with_capacity(prefix.len() + 43);
    out.push_str(prefix);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(bytes, &mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_long_url_safe_and_distinct() {
        let a = generate("kg_").unwrap();
        let b = generate("kg_").unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("kg_"));
        assert_eq!(a.len(), 3 + 43);
        assert!(
            a[3..]
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
    }
}
