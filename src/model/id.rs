//! Ids of keys, consumers and targets: checked once at load time, then sent as header values
//! and printed in logs without another look.

use bytes::{Bytes, BytesMut};
use http::HeaderValue;

/// A validated id (key, consumer or target), kept ready to send as a header value.
///
/// Ids are restricted at load time to `[A-Za-z0-9._:@-]`, so they are both valid header values
/// and safe to print in logs: the request path writes `X-Keygate-Key-Id` from its bytes
/// ([`Id::as_bytes`]) with no check, and the verify listener attaches it as a `HeaderValue` with
/// a reference-count bump. (Not held as a `HeaderValue`, which is 8 bytes larger: a million keys
/// each hold one.)
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Id(Bytes);

impl Id {
    /// The characters an id may contain, for error messages.
    pub const ALLOWED: &'static str = "letters, digits and . _ : @ -";
    /// Longest id accepted: ids travel in headers and logs on every request.
    pub const MAX_LEN: usize = 128;

    /// `None` unless `s` is 1..=[`Id::MAX_LEN`] characters of [`Id::ALLOWED`].
    pub fn new(s: &str) -> Option<Id> {
        Self::valid(s).then(|| Id(Bytes::copy_from_slice(s.as_bytes())))
    }

    fn valid(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'@' | b'-'))
    }

    /// The id's bytes, without `as_str`'s UTF-8 check (which reads them all).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        // Checked ASCII in `new`, so this never falls back.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    pub fn header_value(&self) -> HeaderValue {
        // Checked in `new` (a byte loop over a short id here); never the empty fallback.
        HeaderValue::from_maybe_shared(self.0.clone())
            .unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

impl std::fmt::Debug for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Makes the ids of many keys without an allocation each: an id is a slice of a shared buffer
/// of [`IdArena::CHUNK`] bytes (a `Bytes` view, so sending it as a header is still a reference
/// count bump). Chunks are small so that an id kept after its snapshot is gone (the rate-limit
/// registry keeps the ids of buckets it carries over) keeps little else alive with it, and so
/// that the reference counts of busy keys are spread over many chunks.
#[derive(Default)]
pub struct IdArena {
    buf: BytesMut,
}

impl IdArena {
    pub const CHUNK: usize = 1024;

    /// Like [`Id::new`], with the bytes in the arena.
    pub fn id(&mut self, s: &str) -> Option<Id> {
        if !Id::valid(s) {
            return None;
        }
        if self.buf.capacity() - self.buf.len() < s.len() {
            self.buf = BytesMut::with_capacity(Self::CHUNK);
        }
        self.buf.extend_from_slice(s.as_bytes());
        Some(Id(self.buf.split().freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_header_safe() {
        assert!(Id::new("acme-reports_1.v2:eu@x").is_some());
        for bad in [
            "",
            "has space",
            "quote\"",
            "é",
            "new\nline",
            &"x".repeat(129),
        ] {
            assert!(Id::new(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn ids_in_an_arena_are_ids() {
        let mut arena = IdArena::default();
        let ids: Vec<Id> = (0..500)
            .map(|i| arena.id(&format!("key-{i:07}")).unwrap())
            .collect();
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(id, &Id::new(&format!("key-{i:07}")).unwrap());
            assert_eq!(id.header_value(), format!("key-{i:07}").as_str());
        }
        assert!(arena.id("not valid").is_none());
        assert!(arena.id(&"x".repeat(Id::MAX_LEN)).is_some());
    }
}
