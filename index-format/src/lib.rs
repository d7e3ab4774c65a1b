//! Dovecot 2.3's on-disk mailbox formats, read the way Dovecot reads them.
//!
//! Synchronous and allocation-light: files are memory-mapped ([`mmap`]) and parsed
//! in place. Every reader takes untrusted bytes and answers `Ok` or a typed
//! [`Error`] that names the file, the offset and the broken rule; none panics.
//!
//! | file | module |
//! |---|---|
//! | `dovecot.index`, `dovecot.list.index`, `dovecot.map.index` | [`index`] |
//! | `dovecot.index.log`, `.log.2` | [`log`] |
//! | index + log replayed into one view | [`view`] |
//! | standard extensions (modseq, keywords, dbox, map, list, ...) | [`ext`] |
//! | `dovecot.index.cache` | [`cache`] |
//! | Maildir `dovecot-uidlist`, `dovecot-keywords`, file names, `dovecot-uidvalidity` | [`maildir`] |
//! | dbox mail files (sdbox, mdbox) | [`dbox`] |
//! | `subscriptions` | [`subscriptions`] |
//! | `dovecot.mailbox.log` | [`mailbox_log`] |
//! | file-dict attributes (`dovecot-attributes`) | [`attributes`] |
//!
//! [`dump`] detects a file's kind and renders its parsed content as JSON values.

pub mod attributes;
pub mod cache;
pub mod dbox;
pub mod dump;
pub mod error;
pub mod ext;
pub mod index;
mod le;
pub mod log;
pub mod mailbox_log;
pub mod maildir;
pub mod mmap;
pub mod subscriptions;
pub mod view;
pub mod write;
pub use le::{hex, pack_offset, unpack_offset};

pub use error::{Error, FileKind, FormatRule, Result};
pub use mmap::MappedFile;
