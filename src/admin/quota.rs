//! The quota endpoints: the "customer paid" buttons, both role `admin` and audited.
//!
//! - `POST /v1/keys/{id}/quota/reset` and `POST /v1/consumers/{id}/quota/reset`: what the
//!   current window used goes back to 0 (`quota.reset`);
//! - `POST /v1/keys/{id}/quota/grant` and `…/consumers/{id}/quota/grant` with
//!   `{"requests": N}`: N more requests for the current window only (`quota.grant`).
//!
//! Both answer the quota's state after the change, `409 no_quota` when the object has none.
//! With `[cluster]` they change the fleet's count in Redis (one atomic pipeline), so every
//! instance sees them; without Redis answering they change nothing (503).

use std::time::SystemTime;

use http::StatusCode;
use serde_json::Value;

use super::{Admin, Answer, Problem, StateView, find_consumer, find_key, json};
use crate::audit::Actor;
use crate::cluster::QuotaChange;
use crate::model::{Id, Quota};
use crate::state::quotas::{Owner, Used};

/// `{"requests": N}`: what a grant adds to the current window.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Grant {
    /// Read as every `integer` of the API is (`5.0` too), as the document promises.
    #[serde(deserialize_with = "crate::store::whole")]
    pub requests: u64,
}

/// A reset takes no fields: an absent body or `{}`.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Reset {}

fn now() -> u64 {
    crate::state::unix_secs(SystemTime::now()).into()
}

/// Maximum a single grant may add: far above any plan, far below overflow.
const MAX_GRANT: u64 = 1 << 40;

impl Admin {
    /// Resets (`grant` = `None`) or grants more to the quota of a key or consumer.
    /// `POST /v1/{keys|consumers}/{id}/quota/{reset|grant}`.
    pub(super) async fn quota_route(
        &self,
        actor: &Actor,
        owner: Owner,
        id: &str,
        what: &str,
        req: http::Request<crate::http::body::RequestBody>,
    ) -> Answer {
        let grant = match what {
            "reset" => {
                let _: Reset = super::body_or_default(req).await?;
                None
            }
            _ => Some(super::body::<Grant>(req).await?.requests),
        };
        self.quota_change(actor, owner, id, grant).await
    }

    async fn quota_change(
        &self,
        actor: &Actor,
        owner: Owner,
        id: &str,
        grant: Option<u64>,
    ) -> Answer {
        if let Some(n) = grant
            && !(1..=MAX_GRANT).contains(&n)
        {
            return Err(super::field_problem(
                "requests",
                format!("requests must be a whole number from 1 to {MAX_GRANT}"),
            ));
        }
        let snap = self.published.load_full();
        let (quota, tag, found_id): (Option<Quota>, Option<Id>, Id) = match owner {
            Owner::Key => {
                let k = &snap.keys[find_key(&snap, id)?];
                (
                    k.quota(),
                    snap.consumer_of(k).map(|c| c.id.clone()),
                    k.id.clone(),
                )
            }
            Owner::Consumer => {
                let c = find_consumer(&snap, id)?;
                (c.quota, Some(c.id.clone()), c.id.clone())
            }
        };
        let what = owner.name();
        let Some(quota) = quota else {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "no_quota",
                format!("The {what} {id:?} has no quota."),
            ));
        };
        let Some(counter) = self.published.quotas().get(owner, id) else {
            return Err(Problem::internal());
        };
        let now = now();
        let before = counter.peek(quota, now);
        let after = match &self.cluster {
            None => match grant {
                None => counter.reset(quota, now),
                Some(n) => counter.grant(quota, now, n),
            },
            Some(cluster) => {
                let window = quota.window(now);
                let key = cluster.quota_key(tag.as_ref(), owner, &found_id, window);
                let change = match grant {
                    None => QuotaChange::Reset(window.end),
                    Some(n) => QuotaChange::Grant(n, window.end),
                };
                let Some((used, granted)) = cluster.quota_change(&key, change).await else {
                    return Err(Problem::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "cluster_unavailable",
                        "Redis does not answer: the fleet's quota count cannot be changed now.",
                    ));
                };
                // This instance's own view follows at once; the others' at their next request
                // (`strict`) or sync (`local-sync`).
                if grant.is_none() {
                    counter.reset(quota, now);
                }
                counter.synced(window, used, granted);
                counter.peek(quota, now)
            }
        };
        let state = |u: &Used| serde_json::json!({"used": u.used, "granted": u.granted, "window_start": u.start});
        let mut after_value = state(&after);
        if let (Some(n), Some(o)) = (grant, after_value.as_object_mut()) {
            o.insert("requests".into(), Value::from(n));
        }
        let action = match grant {
            None => "quota.reset",
            Some(_) => "quota.grant",
        };
        self.audit(actor, action, id, &state(&before), &after_value)
            .await?;
        json(StatusCode::OK, &StateView::of(&after, quota))
    }

    /// With `[cluster]`, the fleet's count of a quota (for a single key's or consumer's view),
    /// copied into this instance's counter; this instance's own when Redis does not answer.
    pub(super) async fn fleet_quota(&self, owner: Owner, id: &Id, tag: Option<&Id>, quota: Quota) {
        let (Some(cluster), Some(counter)) = (
            &self.cluster,
            self.published.quotas().get(owner, id.as_str()),
        ) else {
            return;
        };
        let window = quota.window(now());
        let key = cluster.quota_key(tag, owner, id, window);
        if let Some((used, granted)) = cluster.quota_change(&key, QuotaChange::Read).await {
            counter.peek(quota, window.start);
            counter.synced(window, used, granted);
        }
    }
}
