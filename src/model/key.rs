//! One API key: the fields the request path reads, and the packed cold part that only the admin
//! API and the commands read.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::id::Id;
use super::key_hash::KeyHash;
use super::quota::{Period, Quota};
use super::rate::Rate;
use super::rules::{IpList, NO_RULES, OriginList, Paths, Rules, TargetSet};

/// `status = "active" | "inactive"`: an inactive key is refused with `key_inactive`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Active,
    Inactive,
}

/// `access = "read-only" | "read-write"`: read-only allows GET, HEAD and OPTIONS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    ReadOnly,
    #[default]
    ReadWrite,
}

/// `[[keys]]`: one API key, by the hash of its secret.
///
/// A million of these are held at once, so the fields that requests read are kept in the struct
/// (lists as one shared pointer each) and the rest, which only the admin API and the commands
/// read, in one allocation of their own that keys without any of them do not have: see
/// [`Key::name`], [`Key::prefix`], [`Key::created_at`], [`Key::previous`], [`Key::rate_limit`],
/// [`Key::quota`].
#[derive(Debug)]
pub struct Key {
    pub id: Id,
    /// [`Key::consumer`], with [`NO_CONSUMER`] for none: 4 bytes instead of an `Option`'s 8,
    /// which with the rest keeps a key at 112 bytes (8 MB less for 1,000,000 keys).
    consumer: u32,
    pub hash: KeyHash,
    pub status: Status,
    pub expires_at: Option<SystemTime>,
    pub access: Access,
    /// Defined in the keys file (changeable through the admin API), not the main file.
    pub managed: bool,
    rules: Option<Arc<Rules>>,
    cold: Cold,
}

/// Everything a [`Key`] is made of.
#[derive(Debug, Default)]
pub struct KeyParts<'a> {
    pub id: Option<Id>,
    pub name: Option<&'a str>,
    pub consumer: Option<u32>,
    pub hash: Option<KeyHash>,
    pub status: Status,
    pub expires_at: Option<SystemTime>,
    /// `None` for none (what [`Rules::default`] also means); validate shares equal ones.
    pub rules: Option<Arc<Rules>>,
    pub access: Access,
    pub rate_limit: Option<Rate>,
    pub quota: Option<Quota>,
    pub created_at: Option<SystemTime>,
    pub prefix: Option<&'a str>,
    pub previous: Option<(KeyHash, SystemTime)>,
    pub managed: bool,
}

impl Key {
    /// `None` without an id or a hash.
    pub fn new(p: KeyParts<'_>) -> Option<Key> {
        let cold = Cold::new(&p);
        Some(Key {
            id: p.id?,
            // A snapshot never has 4,294,967,295 consumers: the config would be that many
            // lines long.
            consumer: p.consumer.unwrap_or(NO_CONSUMER),
            hash: p.hash?,
            status: p.status,
            expires_at: p.expires_at,
            access: p.access,
            managed: p.managed,
            rules: p.rules.filter(|r| !r.is_empty()),
            cold,
        })
    }

    /// Index into [`Snapshot::consumers`](crate::snapshot::Snapshot::consumers).
    #[inline]
    pub fn consumer(&self) -> Option<u32> {
        (self.consumer != NO_CONSUMER).then_some(self.consumer)
    }

    pub fn rules(&self) -> &Rules {
        self.rules.as_deref().unwrap_or(&NO_RULES)
    }

    /// The deploy targets the key is bound to; empty means every target.
    pub fn targets(&self) -> &TargetSet {
        &self.rules().targets
    }

    pub fn allow_ips(&self) -> &IpList {
        &self.rules().allow_ips
    }

    /// Web origins a browser may use the key from; empty means any (and none needed).
    pub fn allow_origins(&self) -> &OriginList {
        &self.rules().allow_origins
    }

    /// Path prefixes the key may call, matched on whole segments; empty means any path.
    pub fn paths(&self) -> &Paths {
        &self.rules().paths
    }

    pub fn name(&self) -> Option<&str> {
        self.cold.text(Cold::NAME)
    }

    /// The first characters of the secret, for people to recognise it by.
    pub fn prefix(&self) -> Option<&str> {
        self.cold.text(Cold::PREFIX)
    }

    pub fn created_at(&self) -> Option<SystemTime> {
        self.cold.get(Cold::CREATED).map(decode_time)
    }

    /// After a rotation: the old secret's hash, valid until the given time.
    pub fn previous(&self) -> Option<(KeyHash, SystemTime)> {
        let b = self.cold.get(Cold::PREVIOUS)?;
        let mut hash = [0; 32];
        hash.copy_from_slice(&b[..32]);
        Some((KeyHash(hash), decode_time(&b[32..])))
    }

    pub fn rate_limit(&self) -> Option<Rate> {
        let b = self.cold.get(Cold::RATE)?;
        Some(Rate {
            count: NonZeroU32::new(u32_at(b, 0))?,
            per: Duration::new(u64_at(b, 4), u32_at(b, 12)),
        })
    }

    /// `quota = "100000/month"`: read by the request path only for keys that have one (the
    /// flag byte tells), so the common key pays one branch.
    pub fn quota(&self) -> Option<Quota> {
        let b = self.cold.get(Cold::QUOTA)?;
        let period = match b[8] {
            0 => Period::Hour,
            1 => Period::Day,
            2 => Period::Week,
            _ => Period::Month,
        };
        Some(Quota {
            limit: u64_at(b, 0),
            period,
        })
    }
}

/// [`Key`]'s `consumer` without one.
const NO_CONSUMER: u32 = u32::MAX;

/// The fields of a key that requests do not read, encoded in one allocation: a byte of flags,
/// then the fixed-size fields present (`PREVIOUS`, `CREATED`, `RATE`, `QUOTA`, in that order), then the
/// name (a `u32` length and its bytes) and the prefix (the rest).
#[derive(Debug, Default, PartialEq, Eq)]
struct Cold(Option<Box<[u8]>>);

/// A time as seconds since the epoch (negative before it) and nanoseconds.
const TIME_LEN: usize = 12;

impl Cold {
    const PREVIOUS: u8 = 1;
    const CREATED: u8 = 2;
    const RATE: u8 = 4;
    const NAME: u8 = 8;
    const PREFIX: u8 = 16;
    const QUOTA: u8 = 32;
    /// The fixed-size fields, in their order.
    const FIXED: [(u8, usize); 4] = [
        (Cold::PREVIOUS, 32 + TIME_LEN),
        (Cold::CREATED, TIME_LEN),
        (Cold::RATE, 16),
        (Cold::QUOTA, 9),
    ];

    fn new(p: &KeyParts<'_>) -> Cold {
        let fields = [
            (Cold::PREVIOUS, p.previous.is_some()),
            (Cold::CREATED, p.created_at.is_some()),
            (Cold::RATE, p.rate_limit.is_some()),
            (Cold::QUOTA, p.quota.is_some()),
            (Cold::NAME, p.name.is_some()),
            (Cold::PREFIX, p.prefix.is_some()),
        ];
        let flags = fields
            .iter()
            .filter(|(_, present)| *present)
            .fold(0, |acc, (f, _)| acc | f);
        if flags == 0 {
            return Cold(None);
        }
        // A name is stored with a 32-bit length (a longer one, which no file of 4 GiB could
        // hold anyway, would lose its end).
        let name = p
            .name
            .map(|n| &n[..n.floor_char_boundary(u32::MAX as usize)]);
        let len = 1
            + Cold::FIXED
                .iter()
                .filter(|(f, _)| flags & f != 0)
                .map(|(_, len)| len)
                .sum::<usize>()
            + name.map_or(0, |n| 4 + n.len())
            + p.prefix.map_or(0, str::len);
        let mut out = Vec::with_capacity(len);
        out.push(flags);
        if let Some((hash, until)) = p.previous {
            out.extend_from_slice(&hash.0);
            encode_time(until, &mut out);
        }
        if let Some(t) = p.created_at {
            encode_time(t, &mut out);
        }
        if let Some(r) = p.rate_limit {
            out.extend_from_slice(&r.count.get().to_le_bytes());
            out.extend_from_slice(&r.per.as_secs().to_le_bytes());
            out.extend_from_slice(&r.per.subsec_nanos().to_le_bytes());
        }
        if let Some(q) = p.quota {
            out.extend_from_slice(&q.limit.to_le_bytes());
            out.push(match q.period {
                Period::Hour => 0,
                Period::Day => 1,
                Period::Week => 2,
                Period::Month => 3,
            });
        }
        if let Some(name) = name {
            out.extend_from_slice(&(name.len() as u32).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
        }
        if let Some(prefix) = p.prefix {
            out.extend_from_slice(prefix.as_bytes());
        }
        Cold(Some(out.into_boxed_slice()))
    }

    /// The bytes of one field, when present.
    fn get(&self, field: u8) -> Option<&[u8]> {
        let b = self.0.as_deref()?;
        let flags = b[0];
        if flags & field == 0 {
            return None;
        }
        let mut at = 1;
        for (f, len) in Cold::FIXED {
            if f == field {
                return b.get(at..at + len);
            }
            if flags & f != 0 {
                at += len;
            }
        }
        let mut name = 0..0;
        if flags & Cold::NAME != 0 {
            let len = u32_at(b.get(at..)?, 0) as usize;
            name = at + 4..at + 4 + len;
            at = name.end;
        }
        match field {
            Cold::NAME => b.get(name),
            _ => b.get(at..),
        }
    }

    fn text(&self, field: u8) -> Option<&str> {
        // Written from a `&str`, so this never fails.
        std::str::from_utf8(self.get(field)?).ok()
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut v = [0; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

fn encode_time(t: SystemTime, out: &mut Vec<u8>) {
    let (secs, nanos) = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        // Before the epoch: whole seconds down, nanoseconds up, so that both add.
        Err(e) => {
            let d = e.duration();
            match d.subsec_nanos() {
                0 => (-(d.as_secs() as i64), 0),
                n => (-(d.as_secs() as i64) - 1, 1_000_000_000 - n),
            }
        }
    };
    out.extend_from_slice(&secs.to_le_bytes());
    out.extend_from_slice(&nanos.to_le_bytes());
}

fn decode_time(b: &[u8]) -> SystemTime {
    let secs = u64_at(b, 0) as i64;
    let nanos = Duration::from_nanos(u64::from(u32_at(b, 8)));
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64) + nanos
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + nanos
    }
}

impl Key {
    /// Same id aside, whether `other` grants exactly what `self` does (consumer compared by the
    /// caller, since its index depends on the snapshot).
    pub fn same_settings(&self, other: &Key) -> bool {
        self.name() == other.name()
            && self.hash == other.hash
            && self.status == other.status
            && self.expires_at == other.expires_at
            && self.rules() == other.rules()
            && self.access == other.access
            && self.rate_limit() == other.rate_limit()
            && self.quota() == other.quota()
            && self.previous() == other.previous()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A million keys are held at once: 8 bytes more per key is 8 MB more resident.
    #[test]
    fn a_key_is_112_bytes() {
        assert_eq!(std::mem::size_of::<Key>(), 112);
    }

    pub(crate) fn key(i: u32, parts: KeyParts<'_>) -> Key {
        Key::new(KeyParts {
            id: Id::new(&format!("k{i}")),
            hash: Some(KeyHash::of(&i.to_le_bytes())),
            ..parts
        })
        .unwrap()
    }

    #[test]
    fn cold_fields_round_trip() {
        let before_epoch = SystemTime::UNIX_EPOCH - Duration::new(86_400, 250_000_000);
        let later = SystemTime::UNIX_EPOCH + Duration::new(1_800_000_000, 999_999_999);
        let rate = Rate::parse("5/minute").unwrap();
        let previous = (KeyHash::of(b"old"), later);
        let full = key(
            1,
            KeyParts {
                name: Some("Ünïcode name"),
                prefix: Some("kg_ab"),
                created_at: Some(before_epoch),
                previous: Some(previous),
                rate_limit: Some(rate),
                quota: Some(Quota::parse("100000/week").unwrap()),
                ..KeyParts::default()
            },
        );
        assert_eq!(full.quota(), Some(Quota::parse("100000/week").unwrap()));
        assert_eq!(full.name(), Some("Ünïcode name"));
        assert_eq!(full.prefix(), Some("kg_ab"));
        assert_eq!(full.created_at(), Some(before_epoch));
        assert_eq!(full.previous(), Some(previous));
        assert_eq!(full.rate_limit(), Some(rate));
        let some = key(
            2,
            KeyParts {
                prefix: Some(""),
                created_at: Some(SystemTime::UNIX_EPOCH),
                ..KeyParts::default()
            },
        );
        assert_eq!(some.name(), None);
        assert_eq!(some.prefix(), Some(""));
        assert_eq!(some.created_at(), Some(SystemTime::UNIX_EPOCH));
        assert_eq!(
            (some.previous(), some.rate_limit(), some.quota()),
            (None, None, None)
        );
        let none = key(3, KeyParts::default());
        assert_eq!(none.cold, Cold(None));
        assert_eq!(
            (none.name(), none.prefix(), none.created_at()),
            (None, None, None)
        );
    }
}
