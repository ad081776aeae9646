//! What a key or consumer is restricted to: targets, client addresses, web origins, paths. Each list is held
//! in one pointer, shared by every key that has an equal one.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::origin::{OriginPattern, RequestOrigin};

/// Index of a target in `Snapshot::targets`. A config holds at most `u16::MAX` targets.
pub type TargetIdx = u16;

/// A list that a key holds in one pointer: nothing when empty, else a list that keys with the
/// same one share (see `config::validate`, which makes each distinct list once).
#[derive(Debug)]
pub struct List<T>(Option<Arc<Box<[T]>>>);

impl<T> List<T> {
    pub fn new(items: Vec<T>) -> List<T> {
        List((!items.is_empty()).then(|| Arc::new(items.into_boxed_slice())))
    }

    pub fn as_slice(&self) -> &[T] {
        self.0.as_deref().map_or(&[], |b| &b[..])
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.as_slice().iter()
    }
}

impl<T> Default for List<T> {
    fn default() -> Self {
        List(None)
    }
}

impl<T> Clone for List<T> {
    fn clone(&self) -> Self {
        List(self.0.clone())
    }
}

impl<T: PartialEq> PartialEq for List<T> {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl<T: Eq> Eq for List<T> {}

impl<T: std::hash::Hash> std::hash::Hash for List<T> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state);
    }
}

/// So that a set of lists can be searched by a slice.
impl<T> std::borrow::Borrow<[T]> for List<T> {
    fn borrow(&self) -> &[T] {
        self.as_slice()
    }
}

/// The deploy targets a key or consumer is bound to; empty means every target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TargetSet(List<TargetIdx>);

impl TargetSet {
    pub fn new(mut targets: Vec<TargetIdx>) -> TargetSet {
        targets.sort_unstable();
        targets.dedup();
        TargetSet(List::new(targets))
    }

    /// Shares `list`, which [`TargetSet::new`] has already sorted and deduplicated.
    pub fn from_list(list: List<TargetIdx>) -> TargetSet {
        TargetSet(list)
    }

    /// True when unrestricted, or when `t` is one of the bound targets.
    pub fn allows(&self, t: TargetIdx) -> bool {
        self.0.is_empty() || self.0.as_slice().contains(&t)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = TargetIdx> + '_ {
        self.0.iter().copied()
    }
}

/// An IP allow-list; empty means any address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct IpList(List<IpNet>);

impl IpList {
    pub fn new(nets: Vec<IpNet>) -> IpList {
        IpList(List::new(nets))
    }

    pub fn from_list(list: List<IpNet>) -> IpList {
        IpList(list)
    }

    /// True when unrestricted, or when `ip` falls in one of the networks. `ip` must already be
    /// canonical (an IPv4-mapped IPv6 address turned into IPv4) so that IPv4 rules match it.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.0.is_empty() || self.0.iter().any(|n| n.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &IpNet> {
        self.0.iter()
    }
}

/// An `allow_origins` list; empty means any origin (and none needed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct OriginList(List<OriginPattern>);

impl OriginList {
    pub fn new(patterns: Vec<OriginPattern>) -> OriginList {
        OriginList(List::new(patterns))
    }

    pub fn from_list(list: List<OriginPattern>) -> OriginList {
        OriginList(list)
    }

    /// True when unrestricted, or when `origin` (the request's `Origin`, else its `Referer`'s
    /// origin) is listed. A restricted list refuses a request that has neither.
    pub fn allows(&self, origin: Option<&[u8]>) -> bool {
        self.0.is_empty()
            || origin
                .and_then(RequestOrigin::parse)
                .is_some_and(|o| self.matches(&o))
    }

    /// Whether a parsed origin is listed (false for an empty list).
    pub fn matches(&self, origin: &RequestOrigin<'_>) -> bool {
        self.0.iter().any(|p| p.matches(origin))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &OriginPattern> {
        self.0.iter()
    }
}

/// Path prefixes a key may call (stored without a trailing `/`); empty means any path.
pub type Paths = List<Box<str>>;

/// A key's restrictions beyond its status and expiry: which targets, addresses and paths. Held
/// behind one pointer, shared by the keys that have the same ones (and none for a key without).
#[derive(Debug, Default, PartialEq, Eq, Hash)]
pub struct Rules {
    pub targets: TargetSet,
    pub allow_ips: IpList,
    /// Web origins a browser may use the key from (`Origin`, else `Referer`).
    pub allow_origins: OriginList,
    pub paths: Paths,
}

impl Rules {
    const NONE: Rules = Rules {
        targets: TargetSet(List(None)),
        allow_ips: IpList(List(None)),
        allow_origins: OriginList(List(None)),
        paths: List(None),
    };

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
            && self.allow_ips.is_empty()
            && self.allow_origins.is_empty()
            && self.paths.is_empty()
    }
}

pub(super) static NO_RULES: Rules = Rules::NONE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_lists_compare_equal_however_they_are_held() {
        let a = IpList::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let b = IpList::new(vec!["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(a, b);
        assert_eq!(a.clone(), a);
        assert_ne!(a, IpList::default());
        assert!(IpList::new(vec![]).is_empty());
        assert_eq!(
            TargetSet::new(vec![3, 1, 3]).iter().collect::<Vec<_>>(),
            [1, 3]
        );
    }

    #[test]
    fn empty_sets_allow_everything() {
        assert!(TargetSet::default().allows(3));
        assert!(TargetSet::new(vec![1, 2]).allows(2));
        assert!(!TargetSet::new(vec![1, 2]).allows(3));
        assert!(IpList::default().allows("1.2.3.4".parse().unwrap()));
        let l = IpList::new(vec!["10.0.0.0/8".parse().unwrap()]);
        assert!(l.allows("10.1.2.3".parse().unwrap()));
        assert!(!l.allows("11.1.2.3".parse().unwrap()));
    }
}
