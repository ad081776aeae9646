//! `[cluster]`: Redis shared by several instances.

use std::ops::Range;

use toml::Spanned;

use crate::config::defaults::{DEFAULT_CLUSTER_TIMEOUT, DEFAULT_SYNC_INTERVAL};
use crate::config::diagnostics::Checker;
use crate::config::raw::RawCluster;
use crate::model::{ClusterConfig, ClusterMode, OnRedisError};

/// `[cluster]`: the Redis URL and how rate limits use it.
pub fn cluster(
    c: &mut Checker<'_>,
    raw: &RawCluster,
    table: Range<usize>,
) -> Option<ClusterConfig> {
    const S: &str = "[cluster]";
    let valid = |url: &str| {
        ["redis://", "rediss://", "redis+unix://", "unix://"]
            .iter()
            .any(|s| url.starts_with(s))
            && redis::IntoConnectionInfo::into_connection_info(url).is_ok()
    };
    let given = [
        raw.redis.as_ref().map(Spanned::span),
        raw.redis_cluster.as_ref().map(Spanned::span),
        raw.redis_sentinel.as_ref().map(Spanned::span),
    ];
    let mut ok = true;
    if given.iter().flatten().count() != 1 {
        c.error(
            given.iter().flatten().nth(1).cloned().unwrap_or(table.clone()),
            S,
            "give one of redis = \"redis://…\", redis_cluster = [\"redis://…\", …] or redis_sentinel = [\"redis://…\", …]",
        );
        ok = false;
    }
    let mut list = |field: &str, raw: &Spanned<Vec<String>>| -> Vec<String> {
        let bad: Vec<&String> = raw.get_ref().iter().filter(|u| !valid(u)).collect();
        if raw.get_ref().is_empty() || !bad.is_empty() {
            c.error(
                raw.span(),
                S,
                format!("{field}: a list of redis:// or rediss:// URLs; not URLs: {bad:?}"),
            );
            ok = false;
        }
        raw.get_ref().clone()
    };
    let (url, nodes) = match (&raw.redis, &raw.redis_cluster, &raw.redis_sentinel) {
        (Some(r), _, _) => {
            if !valid(r.get_ref()) {
                c.error(
                    r.span(),
                    S,
                    format!(
                        "redis: {:?} is not a redis:// or rediss:// URL",
                        r.get_ref()
                    ),
                );
                ok = false;
            }
            (r.get_ref().clone(), Vec::new())
        }
        (None, Some(l), _) => {
            let nodes = list("redis_cluster", l);
            (nodes.first().cloned().unwrap_or_default(), nodes)
        }
        (None, None, Some(l)) => {
            let nodes = list("redis_sentinel", l);
            (nodes.first().cloned().unwrap_or_default(), nodes)
        }
        (None, None, None) => (String::new(), Vec::new()),
    };
    let sentinel_master = match (&raw.redis_sentinel, &raw.sentinel_master) {
        (Some(_), Some(m)) if !m.get_ref().is_empty() => Some(m.get_ref().clone()),
        (Some(l), _) => {
            c.error(
                l.span(),
                S,
                "redis_sentinel needs sentinel_master = \"<the master's name>\"",
            );
            ok = false;
            None
        }
        (None, Some(m)) => {
            c.error(m.span(), S, "sentinel_master: only with redis_sentinel");
            ok = false;
            None
        }
        (None, None) => None,
    };
    let mode = match raw.mode.as_ref().map(|m| (m, m.get_ref().as_str())) {
        None | Some((_, "strict")) => ClusterMode::Strict,
        Some((_, "local-sync")) => ClusterMode::LocalSync,
        Some((m, other)) => {
            c.error(
                m.span(),
                S,
                format!("mode: {other:?} is not \"strict\" or \"local-sync\""),
            );
            ClusterMode::Strict
        }
    };
    let on_redis_error = match raw
        .on_redis_error
        .as_ref()
        .map(|m| (m, m.get_ref().as_str()))
    {
        None | Some((_, "local")) => OnRedisError::Local,
        Some((_, "allow")) => OnRedisError::Allow,
        Some((_, "deny")) => OnRedisError::Deny,
        Some((m, other)) => {
            c.error(
                m.span(),
                S,
                format!("on_redis_error: {other:?} is not \"allow\", \"deny\" or \"local\""),
            );
            OnRedisError::Local
        }
    };
    let timeout = c
        .duration(raw.timeout.as_ref(), S, "timeout")
        .unwrap_or(DEFAULT_CLUSTER_TIMEOUT);
    let sync_interval = c
        .duration(raw.sync_interval.as_ref(), S, "sync_interval")
        .unwrap_or(DEFAULT_SYNC_INTERVAL);
    let prefix = match &raw.prefix {
        None => "keygate:".to_owned(),
        Some(p) => {
            if p.get_ref().is_empty() || p.get_ref().contains(['{', '}', ' ']) {
                c.error(
                    p.span(),
                    S,
                    "prefix: must be non-empty, without braces or spaces",
                );
            }
            p.get_ref().clone()
        }
    };
    ok.then_some(ClusterConfig {
        redis: url,
        nodes,
        sentinel_master,
        mode,
        on_redis_error,
        timeout,
        sync_interval,
        prefix,
    })
}
