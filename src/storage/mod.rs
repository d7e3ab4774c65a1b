//! The storage layer: a user's mail as mailboxes and messages, read and
//! written the way Dovecot does it, beside a running Dovecot.
//!
//! The interface is backend-neutral. [`MailStore`] is one user's mail root
//! (mailbox tree, subscriptions, mailbox log, tree changes).
//! [`MailStore::open_mailbox`] gives a [`Mailbox`]: a consistent read view of
//! one mailbox (status, messages, changes since a modseq, bodies as streams).
//! [`MailStore::begin`] gives a [`MailboxTransaction`]: saves, flag and keyword
//! changes, expunges and header raises, committed once (one lock round, one
//! fsync group, one transaction-log append).
//!
//! All calls are synchronous and may block on locks (bounded by timeouts);
//! async callers run them on a blocking thread.
//!
//! Backends: [`maildir`] (Maildir++ and `LAYOUT=fs`). sdbox/mdbox fit the same
//! traits: their GUIDs are 128-bit (shown as 32 hex digits in
//! [`MessageInfo::guid`]) and their flags live only in the index.

pub mod lock;
pub mod maildir;

use std::io::Read;

use thiserror::Error;

/// A mailbox GUID (128 bits).
pub type MailboxGuid = [u8; 16];

/// IMAP system flag bits as stored in the index (spec index-format 1.4).
pub mod flags {
    pub const ANSWERED: u8 = 0x01;
    pub const FLAGGED: u8 = 0x02;
    pub const DELETED: u8 = 0x04;
    pub const SEEN: u8 = 0x08;
    pub const DRAFT: u8 = 0x10;
    /// Flags a client can set (`\Recent` and index-internal bits excluded).
    pub const IMAP_MASK: u8 = 0x1f;
}

/// Errors of the storage layer; each says which rule was broken and where.
#[derive(Debug, Error)]
pub enum StorageError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("format error: {0}")]
    Format(#[from] index_format::Error),
    #[error("mailbox {0:?} does not exist")]
    MailboxNotFound(String),
    #[error("mailbox {0:?} already exists")]
    MailboxExists(String),
    #[error("mailbox name {name:?} is not valid here: {why}")]
    BadName { name: String, why: &'static str },
    #[error("mailbox {name:?} has GUID {found}, not the expected {expected}")]
    GuidMismatch {
        name: String,
        expected: String,
        found: String,
    },
    #[error("uid {uid} is below the mailbox's next uid {next_uid}: uids must increase")]
    UidTooLow { uid: u32, next_uid: u32 },
    #[error("uid {0} is not in the mailbox")]
    NoSuchUid(u32),
    #[error("message {uid}: {why}")]
    BadMessage { uid: u32, why: String },
    #[error("timed out after {secs} s waiting for lock {path}")]
    LockTimeout { path: std::path::PathBuf, secs: u64 },
    #[error("{0}")]
    Unsupported(&'static str),
    #[error("inconsistent storage in {path}: {why}")]
    Inconsistent {
        path: std::path::PathBuf,
        why: String,
    },
    #[error("log transaction rejected before writing: {0}")]
    Build(#[from] index_format::write::BuildError),
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

pub(crate) fn io_err(
    path: impl Into<std::path::PathBuf>,
) -> impl FnOnce(std::io::Error) -> StorageError {
    let path = path.into();
    move |source| StorageError::Io { path, source }
}

/// The namespace a store presents names in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// Prefix including its trailing separator (`""` for none, e.g. `"INBOX/"`).
    pub prefix: String,
    /// Hierarchy separator of names given to and returned by the store.
    pub separator: char,
}

impl Default for Namespace {
    fn default() -> Self {
        Namespace {
            prefix: String::new(),
            separator: '/',
        }
    }
}

/// One entry of the mailbox tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxEntry {
    /// Full name with namespace prefix and separator (`INBOX`, `Work/Reports`).
    pub name: String,
    /// `None` for a directory that is not a mailbox (`\NoSelect`/placeholder).
    pub guid: Option<MailboxGuid>,
    pub uid_validity: u32,
    pub uid_next: u32,
    pub subscribed: bool,
}

/// A deletion/rename/subscription record from the mailbox log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailboxLogEntry {
    pub kind: MailboxLogKind,
    /// Mailbox GUID (delete-mailbox) or SHA-1 name hash (the others).
    pub id: [u8; 16],
    /// Seconds since the epoch.
    pub timestamp: u32,
}

/// Kinds of mailbox-log records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailboxLogKind {
    DeleteMailbox,
    DeleteDir,
    Rename,
    Subscribe,
    Unsubscribe,
}

/// Status of one mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxStatus {
    pub guid: MailboxGuid,
    pub uid_validity: u32,
    pub uid_next: u32,
    pub highest_modseq: u64,
    /// Highest private modseq (0 without a private index).
    pub highest_pvt_modseq: u64,
    pub messages: u32,
    /// First UID that was recent for this mailbox (IMAP `\Recent` boundary).
    pub first_recent_uid: u32,
}

/// What the store knows about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageInfo {
    pub uid: u32,
    /// Message GUID as Dovecot presents it (Maildir: file base name or the
    /// uidlist `G` value; dbox: 32 hex digits).
    pub guid: String,
    /// IMAP system flags ([`flags`]).
    pub flags: u8,
    pub keywords: Vec<String>,
    pub modseq: u64,
    pub pvt_modseq: u64,
    /// RFC 822 size with CRLF line ends, when known without reading the body.
    pub virtual_size: Option<u64>,
    /// Size as stored.
    pub physical_size: Option<u64>,
    /// INTERNALDATE, seconds since the epoch.
    pub received: Option<i64>,
    /// When the message was saved into this mailbox.
    pub saved: Option<i64>,
    pub pop3_uidl: Option<String>,
    pub pop3_order: Option<u32>,
}

/// One change from the transaction log (oldest first), with the modseq it
/// produced. Mirrors the log records the replication export scans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChange {
    pub modseq: u64,
    /// Written by replication (the SYNC bit): exports skip these except expunges.
    pub sync: bool,
    /// The change was carried out (not a pending request).
    pub external: bool,
    pub kind: LogChangeKind,
}

/// The kinds of logged changes a sync cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogChangeKind {
    Append {
        uids: Vec<u32>,
    },
    Flags {
        uid1: u32,
        uid2: u32,
        add: u8,
        remove: u8,
    },
    Keyword {
        add: bool,
        name: String,
        ranges: Vec<(u32, u32)>,
    },
    KeywordReset {
        ranges: Vec<(u32, u32)>,
    },
    /// Expunge; `guid` is `None` for legacy records or "don't verify" (zero).
    Expunge {
        uid: u32,
        guid: Option<[u8; 16]>,
    },
    ExpungeRange {
        uid1: u32,
        uid2: u32,
    },
    /// uid 0 = only the mailbox's highest modseq was raised.
    Modseq {
        uid: u32,
        modseq: u64,
    },
    Attribute {
        key: String,
        set: bool,
        private: bool,
    },
}

/// Changes since a modseq, or the fact that the log no longer reaches back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changes {
    Since(Vec<LogChange>),
    /// The transaction log was rotated past the requested modseq: compare full state.
    TooOld,
}

/// A mailbox METADATA entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    pub private: bool,
    pub key: String,
    pub value: Vec<u8>,
}

/// A consistent read view of one mailbox, taken when it was opened.
pub trait Mailbox {
    /// Full name in the store's namespace.
    fn name(&self) -> &str;
    fn status(&self) -> MailboxStatus;
    /// Messages in UID order. To stay one pass over the index, the listing
    /// may leave [`MessageInfo::received`] and [`MessageInfo::saved`] `None`
    /// when they cost a file access per message (Maildir); [`Mailbox::message`]
    /// fills them.
    fn messages(&self) -> Box<dyn Iterator<Item = Result<MessageInfo>> + '_>;
    /// One message with every field.
    fn message(&self, uid: u32) -> Result<Option<MessageInfo>>;
    /// Calls `f` with each log change with modseq above `modseq`, in log
    /// order, without collecting them (a large mailbox's log is as long as
    /// the mailbox). `false`: the log no longer reaches back, nothing was
    /// visited.
    fn for_each_change(&self, modseq: u64, f: &mut dyn FnMut(LogChange)) -> Result<bool>;
    /// Log changes with modseq above `modseq`.
    fn changes_since(&self, modseq: u64) -> Result<Changes> {
        let mut out = Vec::new();
        Ok(if self.for_each_change(modseq, &mut |c| out.push(c))? {
            Changes::Since(out)
        } else {
            Changes::TooOld
        })
    }
    /// The modseq above which the log holds every change (0: all of them
    /// since the mailbox began): `changes_since` of it is never `TooOld`.
    fn logged_since(&self) -> u64;
    /// Mailbox METADATA (empty when the server keeps no attribute dict here).
    fn attributes(&self) -> Result<Vec<Attribute>>;
    /// The message body, streamed from its file.
    fn open_body(&self, uid: u32) -> Result<Box<dyn Read + Send>>;
}

/// A message to save.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewMessage {
    /// UID to give the message; must be ≥ the mailbox's UIDNEXT. `None` = next free.
    pub uid: Option<u32>,
    /// GUID to keep (replication); `None` = the backend's own.
    pub guid: Option<String>,
    pub flags: u8,
    pub keywords: Vec<String>,
    /// INTERNALDATE (seconds); `None` = now.
    pub received: Option<i64>,
    /// Save date (seconds); Maildir cannot store it and uses the file's ctime.
    pub saved: Option<i64>,
    pub pop3_uidl: Option<String>,
    pub pop3_order: Option<u32>,
}

/// Flag and keyword changes for one message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlagChange {
    pub add: u8,
    pub remove: u8,
    pub add_keywords: Vec<String>,
    pub remove_keywords: Vec<String>,
}

/// What a commit did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitResult {
    /// UIDs given to the saves, in call order.
    pub saved_uids: Vec<u32>,
    /// Expunge requests whose message was already gone.
    pub already_expunged: Vec<u32>,
    /// Flag changes whose message was already gone.
    pub missing_for_flags: Vec<u32>,
    /// Expunges skipped because the message has another GUID than the one given.
    pub guid_mismatch: Vec<u32>,
    /// Status after the commit.
    pub uid_next: u32,
    pub highest_modseq: u64,
}

/// A write transaction on one mailbox. Nothing is visible until
/// [`MailboxTransaction::commit`]; dropping it discards the staged work
/// (temporary files are removed).
pub trait MailboxTransaction {
    /// Stages a new message; the body is streamed into a temporary file now.
    fn save(&mut self, msg: NewMessage, body: &mut dyn Read) -> Result<()>;
    fn update_flags(&mut self, uid: u32, change: FlagChange) -> Result<()>;
    /// Expunges `uid`; with `guid` given, only if the message still has that GUID.
    fn expunge(&mut self, uid: u32, guid: Option<&str>) -> Result<()>;
    /// Sets a new UIDVALIDITY (replication picked the other side's).
    fn set_uid_validity(&mut self, uid_validity: u32) -> Result<()>;
    /// Raises UIDNEXT to at least `uid_next`.
    fn raise_uid_next(&mut self, uid_next: u32) -> Result<()>;
    /// Raises HIGHESTMODSEQ to at least `modseq`.
    fn raise_highest_modseq(&mut self, modseq: u64) -> Result<()>;
    /// Sets (`Some`) or unsets a mailbox attribute (METADATA) `key` (without
    /// the `/private` or `/shared` prefix); `last_change` (seconds, 0 = now)
    /// dates the logged change.
    fn set_attribute(
        &mut self,
        private: bool,
        key: &str,
        value: Option<&[u8]>,
        last_change: u32,
    ) -> Result<()>;
    /// Marks the log records as made by replication (SYNC bit).
    fn set_sync_origin(&mut self, sync: bool);
    /// Applies everything under the mailbox's locks, one fsync group, one
    /// log append.
    fn commit(self: Box<Self>) -> Result<CommitResult>;
}

/// One user's mail.
pub trait MailStore {
    fn namespace(&self) -> &Namespace;
    /// All mailboxes and directories (placeholders for subscribed-only names excluded).
    fn list_mailboxes(&self) -> Result<Vec<MailboxEntry>>;
    /// Subscribed names (full names in the namespace).
    fn subscriptions(&self) -> Result<Vec<String>>;
    /// Mailbox-log records, oldest first (`.2` then current).
    fn mailbox_log(&self) -> Result<Vec<MailboxLogEntry>>;
    fn open_mailbox(&self, name: &str) -> Result<Box<dyn Mailbox + '_>>;
    /// Finds a mailbox by GUID.
    fn find_mailbox(&self, guid: &MailboxGuid) -> Result<Option<String>>;
    fn begin(&self, name: &str) -> Result<Box<dyn MailboxTransaction + '_>>;
    /// Creates a mailbox with the given GUID and UIDVALIDITY (fresh ones when `None`).
    fn create_mailbox(
        &self,
        name: &str,
        guid: Option<MailboxGuid>,
        uid_validity: Option<u32>,
    ) -> Result<MailboxGuid>;
    /// Gives an existing mailbox another GUID (replication adopts the
    /// peer's GUID for a mailbox both sides created under the same name).
    /// Mails, UIDs, UIDVALIDITY and flags stay as they are.
    fn set_mailbox_guid(&self, name: &str, guid: MailboxGuid) -> Result<()>;
    /// Creates a `\NoSelect` directory.
    fn create_dir(&self, name: &str) -> Result<()>;
    /// Renames a mailbox and its children; logs a rename record at `now`.
    fn rename_mailbox(&self, old: &str, new: &str, now: u32) -> Result<()>;
    /// Deletes a mailbox (only if it still has `guid`, when given); logs a
    /// delete record at `now`. INBOX cannot be deleted.
    fn delete_mailbox(&self, name: &str, guid: Option<&MailboxGuid>, now: u32) -> Result<()>;
    /// Deletes an empty directory; logs a delete-dir record at `now`.
    fn delete_dir(&self, name: &str, now: u32) -> Result<()>;
    /// Subscribes or unsubscribes; logs the change at `now`.
    fn set_subscribed(&self, name: &str, subscribed: bool, now: u32) -> Result<()>;
}
