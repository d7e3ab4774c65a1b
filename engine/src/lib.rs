//! The dsync brain as a sans-I/O state machine: mailbox tree sync, mailbox
//! selection, export, import with conflict-safe UID assignment, and the
//! session state machine for master and slave.
//!
//! * [`storage`]: what the engine asks a replica and what it tells it to do.
//! * [`Brain`]: one side of a session; feed [`Input`]s, poll [`Output`]s.
//! * [`memory::MemoryReplica`]: an in-memory replica for tests and demos.
//! * [`local::sync_pair`]: runs two brains against each other in memory.

pub mod brain;
pub mod local;
pub mod mailbox;
pub mod memory;
pub mod storage;
pub mod tree;

pub use brain::{
    Brain, EngineError, ExitStatus, Input, MailboxFilter, Outcome, Output, SyncSettings,
};
pub use storage::*;
