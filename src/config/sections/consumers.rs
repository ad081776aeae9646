//! `[[consumers]]` of both files: the accounts that own keys.

use std::collections::HashMap;

use crate::config::diagnostics::{Checker, Subject};
use crate::config::raw::RawConsumer;
use crate::model::{Consumer, IpList, OriginList, TargetIdx, TargetSet};

pub fn consumers<'r>(
    c: &mut Checker<'_>,
    raw: impl Iterator<Item = (usize, &'r RawConsumer)>,
    target_names: &HashMap<String, TargetIdx>,
) -> (Vec<Consumer>, HashMap<String, u32>) {
    let mut out = Vec::new();
    let mut ids: HashMap<String, u32> = HashMap::new();
    let mut first_seen: HashMap<&str, (usize, usize)> = HashMap::new();
    for (source, raw) in raw {
        c.cur = source;
        let Some(id) = c.id(&raw.id, "consumer id", None) else {
            continue;
        };
        let subject = Subject::item("consumer", raw.id.get_ref());
        if let Some(first) = first_seen.insert(raw.id.get_ref(), c.place(raw.id.span())) {
            let first = c.describe(first);
            c.error(
                raw.id.span(),
                subject,
                format!("duplicate consumer id (first defined at {first})"),
            );
            continue;
        }
        let created_at = c.instant(raw.created_at.as_ref(), subject, "created_at");
        let allow_ips = IpList::new(c.nets(raw.allow_ips.as_deref(), subject, "allow_ips"));
        let allow_origins =
            OriginList::new(c.origins(raw.allow_origins.as_deref(), subject, "allow_origins"));
        let targets = TargetSet::new(c.targets(raw.targets.as_deref(), target_names, subject));
        let rate_limit = c.rate(raw.rate_limit.as_ref(), subject, "rate_limit");
        let quota = c.quota(raw.quota.as_ref(), subject, "quota");
        ids.insert(raw.id.get_ref().clone(), out.len() as u32);
        out.push(Consumer {
            id,
            name: raw.name.as_deref().map(Into::into),
            allow_ips,
            allow_origins,
            targets,
            rate_limit,
            quota,
            max_keys: raw.max_keys,
            default_key: raw.default_key.unwrap_or(false),
            created_at,
            managed: source == 1,
        });
    }
    c.cur = 0;
    (out, ids)
}
