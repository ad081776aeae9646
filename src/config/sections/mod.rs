//! One validator per section of the config, in the order of `config/raw.rs`: each turns its raw
//! table into its part of the snapshot and reports what is wrong with it. A new setting is read
//! in `raw.rs`, held in `model/`, checked here, and defaulted in `defaults.rs`.

pub mod admin;
pub mod cluster;
pub mod consumers;
pub mod keys;
pub mod log;
pub mod metrics;
pub mod server;
pub mod targets;
pub mod usage;
pub mod verify;
pub mod webhooks;
