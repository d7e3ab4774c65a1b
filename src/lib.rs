//! homing: a replication engine for Dovecot mail servers, wire- and disk-compatible
//! with Dovecot 2.3's dsync.
//!
//! See `docs/ARCHITECTURE.md` for the parts and how data flows between them.

pub mod dump;
pub mod replicator;
pub mod server;
pub mod transport;

pub use dsync_protocol as protocol;
pub use index_format;
