//! homing: a replication engine for Dovecot mail servers, wire- and disk-compatible
//! with Dovecot 2.3's dsync.
//!
//! See `docs/ARCHITECTURE.md` for the parts and how data flows between them.

pub mod cli;
pub mod demo;
pub mod dump;
pub mod replicator;
pub mod server;
pub mod session;
pub mod storage;
pub mod tabescape;
pub mod transport;
pub mod userdb;

pub use dsync_protocol as protocol;
pub use index_format;
