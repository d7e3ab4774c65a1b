//! `homing replicator`: a drop-in for Dovecot 2.3's replicator and aggregator.
//!
//! * [`queue`]: per-user records, priorities, the due rule and order;
//! * [`db`]: `replicator.db` in Dovecot's format;
//! * [`server`]: the daemon (scheduler and sockets);
//! * [`client`]: the `homing replicator status|...` commands;
//! * [`runner`]: the [`runner::SyncRunner`] trait the scheduler calls;
//! * [`watch`]: the inotify watcher for servers without a replication plugin.
//!
//! See `docs/replicator.md`.

pub mod cli;
pub mod client;
pub mod config;
pub mod db;
pub mod engine_runner;
pub mod format;
pub mod metrics;
pub mod queue;
pub mod runner;
pub mod server;
pub use crate::tabescape;
pub mod users;
pub mod watch;

pub use config::ReplicatorConfig;
pub use queue::{Clock, ManualClock, Priority, SystemClock};
pub use runner::{SyncFuture, SyncOutcome, SyncRequest, SyncRunner};
pub use server::Daemon;
