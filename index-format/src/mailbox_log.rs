//! `dovecot.mailbox.log` (and `.2`): fixed 24-byte change records that dsync
//! uses to propagate mailbox deletions, renames and (un)subscriptions.
//!
//! The file is appended to without a lock; a trailing piece shorter than a
//! record is a record being written and is left out.

use std::path::Path;

use serde_json::{json, Value};

use crate::error::{Error, FileKind, Result};
use crate::mmap::MappedFile;

const KIND: FileKind = FileKind::MailboxLog;
/// Size of one record.
pub const RECORD_SIZE: usize = 24;

/// What a record says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MailboxLogType {
    DeleteMailbox = 1,
    DeleteDir = 2,
    Rename = 3,
    Subscribe = 4,
    Unsubscribe = 5,
    CreateDir = 6,
}

impl MailboxLogType {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::DeleteMailbox,
            2 => Self::DeleteDir,
            3 => Self::Rename,
            4 => Self::Subscribe,
            5 => Self::Unsubscribe,
            6 => Self::CreateDir,
            _ => return None,
        })
    }

    /// The name `doveadm dump` prints.
    pub fn name(self) -> &'static str {
        match self {
            Self::DeleteMailbox => "delete-mailbox",
            Self::DeleteDir => "delete-dir",
            Self::Rename => "rename",
            Self::Subscribe => "subscribe",
            Self::Unsubscribe => "unsubscribe",
            Self::CreateDir => "create-dir",
        }
    }

    /// True when the GUID field holds a mailbox GUID (not a name hash).
    ///
    /// Only mailbox deletions do: a rename record holds the SHA-1 prefix of the
    /// mailbox's *new* name, as a live Dovecot 2.3.19.1 writes it (checked with
    /// `doveadm dump`) and as dsync reads it, although the format notes say a GUID.
    pub fn has_mailbox_guid(self) -> bool {
        matches!(self, Self::DeleteMailbox)
    }
}

/// One record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailboxLogRecord {
    pub offset: u64,
    pub kind: MailboxLogType,
    /// Mailbox GUID, or the SHA-1 prefix of the name for dir/subscription records.
    pub mailbox_guid: [u8; 16],
    /// UNIX time (stored big-endian).
    pub timestamp: u32,
}

/// The 16-byte name hash that dir and subscription records carry instead
/// of a mailbox GUID: the first 16 bytes of SHA-1 of the mailbox name.
pub fn mailbox_name_hash(name: &[u8]) -> [u8; 16] {
    let d = crate::maildir::sha1(name);
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

/// Parses one record; `offset` is only used for error positions.
pub fn parse_record(rec: &[u8], offset: u64) -> Result<MailboxLogRecord> {
    if rec.len() < RECORD_SIZE {
        return Err(Error::truncated(
            KIND,
            offset,
            "mailbox log record",
            RECORD_SIZE as u64,
            rec.len() as u64,
        ));
    }
    let kind = MailboxLogType::from_u8(rec[0]).ok_or_else(|| {
        Error::invalid(
            KIND,
            offset,
            "record type",
            format!("{} is not 1..6", rec[0]),
        )
    })?;
    let mut mailbox_guid = [0u8; 16];
    mailbox_guid.copy_from_slice(&rec[4..20]);
    let timestamp = u32::from_be_bytes([rec[20], rec[21], rec[22], rec[23]]);
    Ok(MailboxLogRecord {
        offset,
        kind,
        mailbox_guid,
        timestamp,
    })
}

/// A mailbox log borrowing its bytes.
#[derive(Debug, Clone, Copy)]
pub struct MailboxLog<'a> {
    data: &'a [u8],
}

impl<'a> MailboxLog<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        MailboxLog { data }
    }

    /// Bytes after the last whole record (a record being appended).
    pub fn partial_tail(&self) -> usize {
        self.data.len() % RECORD_SIZE
    }

    /// Records in file order; an invalid record ends the iteration with an error.
    pub fn records(&self) -> impl Iterator<Item = Result<MailboxLogRecord>> + 'a {
        let mut failed = false;
        self.data
            .chunks_exact(RECORD_SIZE)
            .enumerate()
            .map_while(move |(i, rec)| {
                if failed {
                    return None;
                }
                let r = parse_record(rec, (i * RECORD_SIZE) as u64);
                failed = r.is_err();
                Some(r)
            })
    }
}

/// Parses the mailbox log at `path` for `homing dump`.
pub fn dump(path: &Path) -> Result<Value> {
    let map = MappedFile::open(path)?;
    let log = MailboxLog::new(&map);
    let mut records = Vec::new();
    for r in log.records() {
        let r = r.map_err(|e| e.with_path(path))?;
        records.push(json!({
            "offset": r.offset,
            "type": r.kind.name(),
            "guid": crate::cache::hex(&r.mailbox_guid),
            "timestamp": r.timestamp,
        }));
    }
    Ok(json!({ "records": records, "partial_tail": log.partial_tail() }))
}
