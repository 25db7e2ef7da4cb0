//! duffy — a Rust reimplementation of CentOS CI's Duffy: pools of ready test hosts lent to CI
//! tenants for a few hours, then torn down or reinstalled.
//!
//! The library is the whole domain; binaries are thin (parse arguments, call in here, print).
//! See ARCHITECTURE.md for the map and the invariants.

pub mod alloc;
pub mod ansible;
pub mod api;
pub mod apikey;
pub mod bus;
pub mod cli;
pub mod client;
pub mod config;
pub mod contextualize;
pub mod db;
pub mod duration;
pub mod events;
pub mod inventory;
pub mod ipmi;
pub mod jinja;
pub mod lax;
pub mod legacy_import;
pub mod metrics;
pub mod output;
pub mod percent;
pub mod reconcile;
pub mod scheduler;
pub mod secrets;
pub mod sshkeys;
pub mod state;
pub mod tenant;
pub mod timefmt;

/// duffy's own version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The upstream Duffy release whose database, API and CLI duffy is compatible with.
pub const UPSTREAM_VERSION: &str = "3.4.0";
