//! The dsync brain as a sans-I/O state machine: mailbox tree sync, mailbox
//! selection, export, import with conflict-safe UID assignment, and the
//! session state machine for master and slave.
//!
//! * [`storage`]: what the engine asks a replica and what it tells it to do.
//! * [`Brain`]: one side of a session; feed [`Input`]s, poll [`Output`]s.
//! * [`memory::MemoryReplica`]: an in-memory replica for tests and demos.
//! * [`local::sync_pair`]: runs two brains against each other in memory.
//!
//! # Driving a brain
//!
//! ```
//! use sync_engine::memory::MemoryReplica;
//! use sync_engine::{Brain, Input, Output, SyncSettings};
//!
//! let mut store = MemoryReplica::new();
//! let mut brain = Brain::master(b"host-a", SyncSettings::default(), 1_700_000_000);
//! // Outputs must be handled in order.
//! while let Some(out) = brain.poll() {
//!     match out {
//!         // Encode and send `item`; for an `M` item stream the body that
//!         // `body` points at as its data block.
//!         Output::Send { item, body } => { let _ = (item, body); }
//!         Output::Query(q) => brain.feed(Input::Answer(store.answer(&q))).unwrap(),
//!         Output::Action(a) => {
//!             if let Err(error) = store.apply(&a) {
//!                 brain.feed(Input::ActionFailed { action: a, error }).unwrap();
//!             }
//!         }
//!     }
//! }
//! // Then feed every decoded peer item with `brain.feed(Input::Peer(item))`
//! // (for an `M` with a data block: after the block has arrived and was made
//! // available to the store) and handle the new outputs, until
//! // `brain.outcome()` is `Some`.
//! assert!(brain.outcome().is_none());
//! ```

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
