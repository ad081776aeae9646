//! Plain data: ids, rates, restrictions, a key and its packed cold part, and the validated
//! config sections. Built by `config`, held by `snapshot`, read by everything else.
//!
//! Nothing here imports the rest of the crate, and nothing here knows about requests: a type that
//! a phase of the request path needs lives with that phase.

pub mod id;
pub mod key;
pub mod key_hash;
pub mod quota;
pub mod rate;
pub mod rules;
pub mod sections;

pub use id::{Id, IdArena};
pub use key::{Access, Key, KeyParts, Status};
pub use key_hash::KeyHash;
pub use quota::{Period, Quota, Window};
pub use rate::Rate;
pub use rules::{IpList, List, Paths, Rules, TargetIdx, TargetSet};
pub use sections::{
    AccessTo, Admin, AdminKey, AuditLog, ClusterConfig, ClusterMode, Consumer, DEFAULT_KEY_NAME,
    DEFAULT_KEY_PREFIX, KeySource, KeySources, Log, LogFormat, OnRedisError, Role, Server, Target,
    TlsFiles, UsageConfig, Verify,
};
pub use sections::{EVENT_NAMES, Webhook};
