//! `[[keys]]` of both files, one at a time as they are read, into the keys and their table.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher as _;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::SystemTime;

use ipnet::IpNet;

use crate::config::diagnostics::{Checker, Failure, File, Subject};
use crate::config::raw::{HasKeys, RawKey};
use crate::config::scan;
use crate::model::KeyHash;
use crate::model::{
    IdArena, IpList, Key, KeyParts, List, OriginList, OriginPattern, Paths, Rules, TargetIdx,
    TargetSet,
};
use crate::secret::checksum_fails;
use crate::snapshot::KeyTable;

pub fn key_count<'a, R: HasKeys<'a>>(f: &File<'_, R>) -> usize {
    f.raw.keys().map_or(0, <[_]>::len) + f.chunks.len()
}

/// The `[[keys]]` of both files, checked one at a time as they are read, into the snapshot's
/// keys and key table; what else is kept while loading is a few bytes per key.
pub struct KeyPass<'t> {
    /// The prefix of generated secrets, to warn of a plaintext secret that will be refused.
    key_prefix: &'t str,
    target_names: &'t HashMap<String, TargetIdx>,
    consumer_ids: &'t HashMap<String, u32>,
    pub keys: Vec<Key>,
    pub table: KeyTable,
    /// For each key, where its id is (source, offset), for "first defined at" messages
    /// (only with `ids`).
    first: Vec<(u32, usize)>,
    /// Key indices by id, to find duplicates as they come: `None` in the first, optimistic
    /// pass (see [`KeyPass::new`]).
    ids: Option<IdIndex>,
    arena: IdArena,
    /// Each distinct list and set of rules once, shared by the keys that have it.
    nets: Interned<List<IpNet>>,
    origins: Interned<List<OriginPattern>>,
    target_sets: Interned<List<TargetIdx>>,
    paths: Interned<Paths>,
    rules: Interned<Arc<Rules>>,
    too_many: bool,
}

impl<'t> KeyPass<'t> {
    /// A pass over `count` keys. `exact`: duplicate ids are looked for as each key comes, and
    /// reported. Without it (the optimistic first pass) they are not: then
    /// [`KeyPass::may_have_duplicate_ids`] says whether the pass must be run again exactly.
    /// Duplicate ids are an error and rare, and the exact check costs a look into a table of
    /// the key count's size (a cache miss each, on a large file) and 16 bytes per key.
    pub fn new(
        count: usize,
        target_names: &'t HashMap<String, TargetIdx>,
        consumer_ids: &'t HashMap<String, u32>,
        key_prefix: &'t str,
        exact: bool,
    ) -> KeyPass<'t> {
        KeyPass {
            key_prefix,
            target_names,
            consumer_ids,
            keys: Vec::with_capacity(count),
            table: KeyTable::with_capacity(count),
            first: Vec::with_capacity(if exact { count } else { 0 }),
            ids: exact.then(|| IdIndex::with_capacity(count)),
            arena: IdArena::default(),
            nets: Interned::default(),
            origins: Interned::default(),
            target_sets: Interned::default(),
            paths: Interned::default(),
            rules: Interned::default(),
            too_many: false,
        }
    }

    /// Every key of one file: those `toml` parsed with the file, then the split-off tables.
    pub fn file<'a, R: HasKeys<'a>>(
        &mut self,
        c: &mut Checker<'_>,
        source: usize,
        file: &File<'_, R>,
    ) -> Result<(), Failure> {
        c.cur = source;
        c.base = None;
        for raw in file.raw.keys().unwrap_or_default() {
            self.key(c, raw, source);
        }
        let (text, chunks) = (file.source.text, file.chunks);
        // The plain tables are read (`scan::key`) on a second thread, a batch ahead of their
        // checks here, which stay on this thread and in file order: a large key table then
        // keeps both cores busy, and every problem is found and reported as before. The
        // channel holds a few batches, so what is read ahead is a few thousand keys at most.
        const BATCH: usize = 1024;
        let (tx, rx) = mpsc::sync_channel::<Vec<Option<RawKey<'_>>>>(4);
        std::thread::scope(|scope| {
            if chunks.len() > BATCH {
                scope.spawn(move || {
                    for batch in chunks.chunks(BATCH) {
                        let read = batch
                            .iter()
                            .map(|&(start, end)| scan::key(text, start as usize, end as usize))
                            .collect();
                        if tx.send(read).is_err() {
                            return;
                        }
                    }
                });
            } else {
                drop(tx);
            }
            // Owns the receiver: dropped on an early return, which ends the reader thread's
            // next send (the scope waits for that thread).
            let mut batches = rx.into_iter();
            let mut batch = Vec::new().into_iter();
            for &(start, end) in chunks {
                let (start, end) = (start as usize, end as usize);
                let mut next = batch.next();
                if next.is_none()
                    && let Some(b) = batches.next()
                {
                    // The key table's slots of a whole batch are looked at before its keys
                    // go in: a thousand independent reads, whose cache misses overlap, instead
                    // of one miss at a time (the inserts were a quarter of this thread's time).
                    self.table.touch(
                        b.iter()
                            .flatten()
                            .filter_map(|raw| KeyHash::parse(raw.hash.as_ref()?.get_ref())),
                    );
                    batch = b.into_iter();
                    next = batch.next();
                }
                // Without the reader thread (a small file) or past what it sent, read here.
                let read = match next {
                    Some(read) => read,
                    None => scan::key(text, start, end),
                };
                match read {
                    Some(raw) => {
                        c.base = Some(0);
                        self.key(c, &raw, source);
                    }
                    None => match toml::from_str::<RawKey<'_>>(&text[start..end]) {
                        Ok(raw) => {
                            c.base = Some(start);
                            self.key(c, &raw, source);
                        }
                        // Dropping `ahead` (with the receiver) stops the reader thread.
                        Err(_) => return Err(Failure::Reparse(source)),
                    },
                }
            }
            Ok(())
        })?;
        c.base = None;
        Ok(())
    }

    fn key(&mut self, c: &mut Checker<'_>, raw: &RawKey<'_>, source: usize) {
        let Some(id) = c.id(&raw.id, "key id", Some(&mut self.arena)) else {
            return;
        };
        let subject = Subject::item("key", raw.id.get_ref());
        let keys = &self.keys;
        let id_slot = match self.ids.as_ref().map(|ids| {
            let id_hash = ids.hash(id.as_str());
            let found = ids.find(id_hash, |i| keys[i].id.as_str() == id.as_str());
            (id_hash, found)
        }) {
            None => None,
            Some((_, Ok(first))) => {
                let (src, offset) = self.first[first];
                let first = c.describe((src as usize, offset));
                c.error(
                    raw.id.span(),
                    subject,
                    format!("duplicate key id (first defined at {first})"),
                );
                return;
            }
            Some((id_hash, Err(slot))) => Some((id_hash, slot)),
        };
        let hash = match (&raw.hash, &raw.secret) {
            (Some(h), None) => {
                let parsed = KeyHash::parse(h.get_ref());
                if parsed.is_none() {
                    c.error(h.span(), subject, "hash: expected \"sha256:\" followed by 64 hex digits (see `keygate keys hash`)");
                }
                parsed.map(|p| (p, h.span()))
            }
            (None, Some(s)) => {
                if s.get_ref().is_empty() {
                    c.error(s.span(), subject, "secret: must not be empty");
                    None
                } else {
                    c.warn(
                        s.span(),
                        subject,
                        "secret is stored in plaintext; replace it with the `hash = \"sha256:…\"` line that `keygate keys hash` prints",
                    );
                    // A warning, not an error: one such key must not stop the others from
                    // loading, and it is refused on its own anyway.
                    if checksum_fails(s.get_ref().as_bytes(), self.key_prefix) {
                        c.warn(
                            s.span(),
                            subject,
                            "secret has the shape of a generated secret (key prefix, 32 random and 6 checksum characters) but its checksum is wrong: every request with it is refused with key_invalid; make a new one with `keygate keys generate`",
                        );
                    }
                    Some((KeyHash::of(s.get_ref().as_bytes()), s.span()))
                }
            }
            (Some(h), Some(_)) => {
                c.error(
                    h.span(),
                    subject,
                    "has both `hash` and `secret`: keep only `hash`",
                );
                None
            }
            (None, None) => {
                c.error(
                    raw.id.span(),
                    subject,
                    "needs `hash = \"sha256:…\"` (or `secret`)",
                );
                None
            }
        };
        let consumer = match &raw.consumer {
            None => None,
            Some(name) => {
                let found = self.consumer_ids.get(&**name.get_ref()).copied();
                if found.is_none() {
                    c.error(
                        name.span(),
                        subject,
                        format!("consumer: no [[consumers]] has id {:?}", &**name.get_ref()),
                    );
                }
                found
            }
        };
        let expires_at = c.instant(raw.expires_at.as_ref(), subject, "expires_at");
        let created_at = c.instant(raw.created_at.as_ref(), subject, "created_at");
        // A previous hash takes part in the duplicate checks as soon as it parses; it is kept
        // with its time, or with a stand-in when that is wrong (the config is refused then).
        let previous = match (&raw.previous_hash, &raw.previous_expires_at) {
            (None, None) => None,
            (Some(h), Some(until)) => {
                let until = c.instant(Some(until), subject, "previous_expires_at");
                match KeyHash::parse(h.get_ref()) {
                    None => {
                        c.error(
                            h.span(),
                            subject,
                            "previous_hash: expected \"sha256:\" followed by 64 hex digits",
                        );
                        None
                    }
                    Some(ph) => Some((ph, until.unwrap_or(SystemTime::UNIX_EPOCH), h.span())),
                }
            }
            (Some(h), None) => {
                c.error(h.span(), subject, "previous_hash needs previous_expires_at");
                None
            }
            (None, Some(u)) => {
                c.error(u.span(), subject, "previous_expires_at needs previous_hash");
                None
            }
        };
        let targets = c.targets(raw.targets.as_deref(), self.target_names, subject);
        let nets = c.nets(raw.allow_ips.as_deref(), subject, "allow_ips");
        let origins = c.origins(raw.allow_origins.as_deref(), subject, "allow_origins");
        let paths: Vec<Box<str>> = raw
            .paths
            .as_deref()
            .unwrap_or_default()
            .iter()
            .filter_map(|p| c.path(p, subject, "paths"))
            .collect();
        let rate_limit = c.rate(raw.rate_limit.as_ref(), subject, "rate_limit");
        let quota = c.quota(raw.quota.as_ref(), subject, "quota");
        if self.keys.len() >= KeyTable::MAX_KEYS {
            if !self.too_many {
                self.too_many = true;
                c.error(
                    raw.id.span(),
                    "",
                    format!("at most {} [[keys]] are supported", KeyTable::MAX_KEYS),
                );
            }
            return;
        }
        // Every key with a new, valid id is kept from here on, even one with a problem (that
        // config is refused anyway), so that the tables can point at it.
        let index = self.keys.len();
        let mut targets = targets;
        targets.sort_unstable();
        targets.dedup();
        let rules = Rules {
            targets: TargetSet::from_list(intern(&mut self.target_sets, targets)),
            allow_ips: IpList::from_list(intern(&mut self.nets, nets)),
            allow_origins: OriginList::from_list(intern(&mut self.origins, origins)),
            paths: intern(&mut self.paths, paths),
        };
        // Most keys have no rules: those are not hashed nor looked up.
        let rules = if rules.is_empty() {
            None
        } else if let Some(shared) = self.rules.get(&rules) {
            Some(shared.clone())
        } else {
            let rules = Arc::new(rules);
            self.rules.insert(rules.clone());
            Some(rules)
        };
        let key = Key::new(KeyParts {
            id: Some(id),
            name: raw.name.as_deref(),
            consumer,
            hash: Some(hash.as_ref().map_or(KeyHash([0; 32]), |h| h.0)),
            status: raw.status.unwrap_or_default(),
            expires_at,
            rules,
            access: raw.access.unwrap_or_default(),
            rate_limit,
            quota,
            created_at,
            prefix: raw.prefix.as_deref(),
            previous: previous.as_ref().map(|&(h, until, _)| (h, until)),
            managed: source == 1,
        });
        let Some(key) = key else { return };
        self.keys.push(key);
        if let (Some(ids), Some((id_hash, slot))) = (&mut self.ids, id_slot) {
            self.first
                .push((source as u32, c.offset(raw.id.span().start)));
            ids.set(slot, id_hash, index);
        }
        if let Some((h, span)) = hash
            && let Some((other, _)) = self.table.try_insert(&self.keys, h, index, false)
        {
            c.error(
                span,
                subject,
                format!(
                    "same secret hash as key {:?}: every key needs its own secret",
                    self.keys[other].id.as_str()
                ),
            );
        }
        if let Some((ph, _, span)) = previous
            && let Some((other, _)) = self.table.insert(&self.keys, ph, index, true)
        {
            c.error(
                span,
                subject,
                format!(
                    "previous_hash is also the hash of key {:?}",
                    self.keys[other].id.as_str()
                ),
            );
        }
    }
}

impl KeyPass<'_> {
    /// After an optimistic pass (not `exact`): whether two keys may have the same id, so that
    /// the pass must be run again exactly (it also reports them). Sorts the ids' 64-bit hashes:
    /// sequential work of 8 bytes per key instead of a random look per key; two ids with the
    /// same hash count as the same (a needless second pass, never a missed duplicate).
    pub fn may_have_duplicate_ids(&self) -> bool {
        if self.ids.is_some() {
            return false;
        }
        let seed = foldhash::fast::RandomState::default();
        let mut hashes: Vec<u64> = self
            .keys
            .iter()
            .map(|k| seed.hash_one(k.id.as_str()))
            .collect();
        hashes.sort_unstable();
        hashes.windows(2).any(|w| w[0] == w[1])
    }
}

/// The sets that share equal lists and rules while loading: hashed with a seeded hash that is
/// much quicker than `HashSet`'s default on a million keys (their contents come from the
/// config, which whoever may create keys writes in part, hence a seed).
type Interned<T> = HashSet<T, foldhash::fast::RandomState>;

/// The list already made that equals `items`, or a new one.
fn intern<T: Eq + std::hash::Hash>(set: &mut Interned<List<T>>, items: Vec<T>) -> List<T> {
    if items.is_empty() {
        return List::default();
    }
    if let Some(l) = set.get(&items[..]) {
        return l.clone();
    }
    let l = List::new(items);
    set.insert(l.clone());
    l
}

/// Key indices by id while loading: open addressing over `u32` slots, each a key index with
/// 8 bits of the id's hash above it (so that another id's slot rarely costs a look at that
/// key), `u32::MAX` for none. Ids may be chosen by whoever may create keys, so they are hashed
/// with a random seed.
struct IdIndex {
    slots: Box<[u32]>,
    len: usize,
    seed: foldhash::fast::RandomState,
}

impl IdIndex {
    fn with_capacity(n: usize) -> IdIndex {
        IdIndex {
            slots: vec![u32::MAX; IdIndex::slots_for(n)].into_boxed_slice(),
            len: 0,
            seed: foldhash::fast::RandomState::default(),
        }
    }

    fn slots_for(n: usize) -> usize {
        (n + n.div_ceil(3) + 1).next_power_of_two().max(8)
    }

    fn hash(&self, id: &str) -> u64 {
        self.seed.hash_one(id)
    }

    /// `Ok(index)` of the key the id belongs to, else `Err(slot)` where it would go.
    fn find(&self, hash: u64, same: impl Fn(usize) -> bool) -> Result<usize, usize> {
        let mask = self.slots.len() - 1;
        let tag = (hash >> 56) as u32;
        let mut slot = hash as usize & mask;
        loop {
            match self.slots[slot] {
                u32::MAX => return Err(slot),
                e if e >> 24 == tag && same((e & 0xff_ffff) as usize) => {
                    return Ok((e & 0xff_ffff) as usize);
                }
                _ => slot = (slot + 1) & mask,
            }
        }
    }

    /// Fills the slot `find` gave (with no insert in between). The table was made for every
    /// key of the files (`key_count`), so it never fills up; an index fits in 24 bits because
    /// the key table holds fewer keys.
    fn set(&mut self, slot: usize, hash: u64, index: usize) {
        debug_assert!(index < KeyTable::MAX_KEYS);
        self.slots[slot] = ((hash >> 56) as u32) << 24 | index as u32;
        self.len += 1;
        assert!(self.len < self.slots.len(), "more keys than counted");
    }
}
