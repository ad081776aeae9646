//! The snapshot's one lookup table: keys by the hashes of their secrets.

use crate::model::Key;
use crate::model::KeyHash;

/// Keys by the hashes of their secrets (current and, after a rotation, previous): open
/// addressing over `u32` slots, each the index of a key in `Snapshot::keys` with 7 bits of the
/// hash (so that a slot of another key rarely costs a look at that key) and a bit for "previous
/// hash"; linear probing from a slot chosen by the hash's first bytes, which SHA-256 makes
/// uniform (no client can choose them without a preimage). At least 1.3 slots per entry, so a
/// lookup is one probe of one cache line, plus the one key it finds, however many keys there are.
#[derive(Debug, Default)]
pub struct KeyTable {
    slots: Box<[u32]>,
    len: usize,
}

impl KeyTable {
    /// At most this many keys: an index takes 24 bits of a slot.
    pub const MAX_KEYS: usize = INDEX_MASK as usize;

    /// Room for `entries` before it grows.
    pub fn with_capacity(entries: usize) -> KeyTable {
        KeyTable {
            slots: vec![EMPTY; KeyTable::slots_for(entries)].into_boxed_slice(),
            len: 0,
        }
    }

    fn slots_for(entries: usize) -> usize {
        (entries + entries.div_ceil(3) + 1)
            .next_power_of_two()
            .max(8)
    }

    /// The index of the key whose current (`false`) or previous (`true`) hash is `hash`.
    pub fn get(&self, keys: &[Key], hash: &KeyHash) -> Option<(usize, bool)> {
        let (_, entry) = self.find(keys, hash).ok()?;
        Some(((entry & INDEX_MASK) as usize, entry & PREVIOUS != 0))
    }

    /// Adds `hash` for `keys[index]` (which must already hold it) unless the table has it:
    /// then returns the key index and kind that has it, as [`KeyTable::get`] would.
    pub fn try_insert(
        &mut self,
        keys: &[Key],
        hash: KeyHash,
        index: usize,
        previous: bool,
    ) -> Option<(usize, bool)> {
        self.put(keys, hash, index, previous, false)
    }

    /// Adds `hash` for `keys[index]` (which must already hold it), replacing any entry of the
    /// same hash; returns the replaced one's key index and kind.
    pub fn insert(
        &mut self,
        keys: &[Key],
        hash: KeyHash,
        index: usize,
        previous: bool,
    ) -> Option<(usize, bool)> {
        self.put(keys, hash, index, previous, true)
    }

    fn put(
        &mut self,
        keys: &[Key],
        hash: KeyHash,
        index: usize,
        previous: bool,
        replace: bool,
    ) -> Option<(usize, bool)> {
        assert!(
            index < KeyTable::MAX_KEYS,
            "too many keys for the key table"
        );
        if KeyTable::slots_for(self.len + 1) > self.slots.len() {
            self.grow(keys);
        }
        let entry = (index as u32 & INDEX_MASK)
            | (tag(&hash) << TAG_SHIFT)
            | if previous { PREVIOUS } else { 0 };
        match self.find(keys, &hash) {
            Ok((slot, old)) => {
                if replace {
                    self.slots[slot] = entry;
                }
                Some(((old & INDEX_MASK) as usize, old & PREVIOUS != 0))
            }
            Err(slot) => {
                self.slots[slot] = entry;
                self.len += 1;
                None
            }
        }
    }

    /// `Ok((slot, entry))` where `hash` is, else `Err(slot)` of the empty slot it would take.
    fn find(&self, keys: &[Key], hash: &KeyHash) -> Result<(usize, u32), usize> {
        let mask = self.slots.len().wrapping_sub(1);
        if self.slots.is_empty() {
            return Err(0);
        }
        let tag = tag(hash) << TAG_SHIFT;
        let mut slot = home(hash) & mask;
        loop {
            let entry = self.slots[slot];
            if entry == EMPTY {
                return Err(slot);
            }
            if entry & TAG_MASK == tag && entry_hash(keys, entry).as_ref() == Some(hash) {
                return Ok((slot, entry));
            }
            slot = (slot + 1) & mask;
        }
    }

    fn grow(&mut self, keys: &[Key]) {
        let old = std::mem::take(&mut self.slots);
        self.slots = vec![EMPTY; KeyTable::slots_for((self.len + 1) * 2)].into_boxed_slice();
        let mask = self.slots.len() - 1;
        for entry in old.iter().copied().filter(|&e| e != EMPTY) {
            let Some(hash) = entry_hash(keys, entry) else {
                continue;
            };
            let mut slot = home(&hash) & mask;
            while self.slots[slot] != EMPTY {
                slot = (slot + 1) & mask;
            }
            self.slots[slot] = entry;
        }
    }

    /// Reads the slot each of `hashes` starts at, and nothing else: a hint, before inserting
    /// them, that brings those slots into the cache all at once.
    pub fn touch(&self, hashes: impl Iterator<Item = KeyHash>) {
        let mask = self.slots.len().wrapping_sub(1);
        if self.slots.is_empty() {
            return;
        }
        // The slots first, then the reads in a loop of a few instructions each, so that the
        // processor has many of them under way at once.
        let slots: Vec<usize> = hashes.map(|h| home(&h) & mask).collect();
        let seen = slots.iter().fold(0u32, |acc, &slot| acc ^ self.slots[slot]);
        std::hint::black_box(seen);
    }

    /// Bytes held.
    pub fn memory(&self) -> usize {
        self.slots.len() * std::mem::size_of::<u32>()
    }
}

const EMPTY: u32 = u32::MAX;
const PREVIOUS: u32 = 1 << 31;
const TAG_SHIFT: u32 = 24;
const TAG_MASK: u32 = 0x7f << TAG_SHIFT;
/// Index bits; the all-ones index is never used, so no entry is `EMPTY`.
const INDEX_MASK: u32 = (1 << TAG_SHIFT) - 1;

fn home(hash: &KeyHash) -> usize {
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.0[..8]);
    u64::from_le_bytes(first) as usize
}

fn tag(hash: &KeyHash) -> u32 {
    u32::from(hash.0[8] & 0x7f)
}

/// The hash an entry stands for.
fn entry_hash(keys: &[Key], entry: u32) -> Option<KeyHash> {
    let key = keys.get((entry & INDEX_MASK) as usize)?;
    match entry & PREVIOUS {
        0 => Some(key.hash),
        _ => key.previous().map(|(h, _)| h),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::model::KeyParts;
    use crate::model::key::tests::key;

    #[test]
    fn the_key_table_finds_current_and_previous_hashes() {
        let until = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let keys: Vec<Key> = (0..5000u32)
            .map(|i| {
                let previous =
                    (i % 3 == 0).then(|| (KeyHash::of(&(i + 1_000_000).to_le_bytes()), until));
                key(
                    i,
                    KeyParts {
                        previous,
                        ..KeyParts::default()
                    },
                )
            })
            .collect();
        // Built from too small a start, so that it grows on the way.
        let mut table = KeyTable::with_capacity(10);
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(table.try_insert(&keys, k.hash, i, false), None);
            if let Some((h, _)) = k.previous() {
                assert_eq!(table.try_insert(&keys, h, i, true), None);
            }
        }
        assert!(
            table.slots.len() * 10 >= table.len * 13,
            "at least 1.3 slots per entry"
        );
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(table.get(&keys, &k.hash), Some((i, false)));
            if let Some((h, _)) = k.previous() {
                assert_eq!(table.get(&keys, &h), Some((i, true)));
            }
        }
        for miss in 0..5000u32 {
            assert_eq!(
                table.get(&keys, &KeyHash::of(&(miss + 9_000_000).to_le_bytes())),
                None
            );
        }
        // A hash already there: kept by `try_insert`, replaced by `insert`.
        assert_eq!(
            table.try_insert(&keys, keys[7].hash, 8, false),
            Some((7, false))
        );
        assert_eq!(table.get(&keys, &keys[7].hash), Some((7, false)));
        assert_eq!(
            table.insert(&keys, keys[7].hash, 7, false),
            Some((7, false))
        );
    }
}
