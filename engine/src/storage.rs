//! The storage-facing side of the engine: what it asks a replica
//! ([`Query`] → [`Answer`]) and what it tells a replica to do ([`Action`]).
//!
//! The engine never calls storage. It emits [`Query`]s and [`Action`]s as
//! outputs; the driver answers queries with [`Answer`]s and applies actions
//! **in the order they were emitted** (a later query or body reference
//! assumes every earlier action has been applied).
//!
//! Mail bodies are never held by the engine:
//! * outgoing bodies are [`BodyRef`]s attached to an `M` item; the driver
//!   streams that mail's bytes from storage into the data block after the
//!   item;
//! * an incoming `M` with a data block turns into [`Action::SaveMail`] with
//!   [`BodySource::Incoming`]: the driver pipes the data block that followed
//!   that `M` on the wire into the save. Further instances of the same mail
//!   are [`Action::CopyMail`]s from the first saved UID.

use dsync_protocol::{AttributeType, Guid128, MailFlags};

/// A mailbox name as hierarchy levels (separator-independent).
pub type MailboxName = Vec<Vec<u8>>;

/// Joins a name with a separator, for display and name hashes.
pub fn join_name(name: &[Vec<u8>], sep: u8) -> Vec<u8> {
    name.join(&[sep][..])
}

/// Questions the engine asks the local replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Query {
    /// The mailbox list, subscriptions and mailbox-list change log.
    Tree,
    /// Status, mails, change log and attributes of one mailbox, found by GUID.
    Mailbox(Guid128),
    /// [`Query::Mailbox`] for a sync run that needs no mail's dates or sizes
    /// beyond what the replica has at hand: it may leave `received_date`,
    /// `saved_date` (and a `virtual_size` it would have to read the file
    /// for) at 0. The dates of a mail sent to the peer travel in its `M`
    /// item; a driver whose replica left them out asks the replica for them
    /// when it opens that mail's body. Asked unless a `-t`/`-e`/`-I` filter
    /// needs the dates or sizes of every mail.
    MailboxUndated(Guid128),
    /// Only the status numbers of one mailbox, found by GUID: asked first
    /// in a stateful run, so a mailbox whose status equals its saved state
    /// is skipped without reading its mails.
    MailboxStatus(Guid128),
    /// How far back one mailbox's change log reaches, found by GUID: asked
    /// by the master of a stateful run for each mailbox of its saved state
    /// before it hands the state to the peer.
    LogReach(Guid128),
    /// [`Query::MailboxUndated`] for a stateful run with a saved state of
    /// this mailbox: the replica may answer with a partial snapshot
    /// ([`MailboxSnapshot::partial`]) holding only the mails above
    /// `last_common_uid` and those its log changed after
    /// `last_common_modseq`, which is what the comparison reads of a
    /// mailbox where little changed. A full snapshot is also an answer.
    MailboxSince {
        guid: Guid128,
        last_common_uid: u32,
        last_common_modseq: u64,
    },
    /// The records of these mails (those that exist; UIDs ascending), asked
    /// during a comparison from a partial snapshot for the mails the peer's
    /// changes name.
    Mails { guid: Guid128, uids: Vec<u32> },
}

/// The replica's answers, one per [`Query`], in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Tree(TreeSnapshot),
    /// `None`: no selectable mailbox with that GUID.
    Mailbox(Option<Box<MailboxSnapshot>>),
    /// `None`: no selectable mailbox with that GUID.
    MailboxStatus(Option<MailboxStatus>),
    /// The modseq above which the mailbox's log holds every change (0: all
    /// since the mailbox began); `None`: no selectable mailbox with that GUID.
    LogReach(Option<u64>),
    /// The records found, in UID order.
    Mails(Vec<MailRecord>),
}

/// One mailbox-list entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailboxEntry {
    pub name: MailboxName,
    /// `None`: a `\NoSelect` directory.
    pub guid: Option<Guid128>,
    pub uid_validity: u32,
    pub uid_next: u32,
}

/// What the mailbox-list change log records (Dovecot's `dovecot.mailbox.log`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MailboxLogKind {
    /// A mailbox GUID was deleted.
    DeleteMailbox,
    /// A directory was deleted (name hash).
    DeleteDir,
    /// A mailbox was renamed to the name with this hash.
    Rename,
    /// The name with this hash was subscribed.
    Subscribe,
    /// The name with this hash was unsubscribed.
    Unsubscribe,
}

/// One mailbox-log record: GUID (mailbox deletes) or name hash, and time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MailboxLogRecord {
    pub kind: MailboxLogKind,
    pub key: Guid128,
    pub timestamp: i64,
}

/// The answer to [`Query::Tree`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeSnapshot {
    /// Hierarchy separator used for name hashes.
    pub separator: u8,
    pub mailboxes: Vec<MailboxEntry>,
    pub subscriptions: Vec<MailboxName>,
    /// In file order (oldest first); later records override earlier ones.
    pub log: Vec<MailboxLogRecord>,
}

/// Status numbers of a mailbox (what `B` carries).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MailboxStatus {
    pub guid: Guid128,
    pub uid_validity: u32,
    pub uid_next: u32,
    pub messages: u32,
    pub first_recent_uid: u32,
    pub highest_modseq: u64,
    pub highest_pvt_modseq: u64,
}

/// One mail's metadata.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct MailRecord {
    pub uid: u32,
    /// Mail GUID as stored (Maildir base name, dbox hex GUID, ...).
    pub guid: Vec<u8>,
    pub flags: MailFlags,
    pub keywords: Vec<Vec<u8>>,
    pub modseq: u64,
    pub pvt_modseq: u64,
    pub received_date: i64,
    pub saved_date: i64,
    pub virtual_size: u64,
    pub pop3_uidl: Option<Vec<u8>>,
    pub pop3_order: u32,
}

/// What one change-log record did to one mail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogChangeKind {
    /// Expunged; GUID128 when the log recorded it.
    Expunge(Option<Guid128>),
    Flags {
        add: MailFlags,
        remove: MailFlags,
    },
    KeywordAdd(Vec<u8>),
    KeywordRemove(Vec<u8>),
    KeywordReset,
    /// Only the modseq was raised.
    Modseq,
}

/// One transaction-log record about a mail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogChange {
    pub modseq: u64,
    pub uid: u32,
    /// Written by a sync (dsync's own changes): ignored by the exporter
    /// except for expunges.
    pub sync: bool,
    pub kind: LogChangeKind,
}

/// One mailbox attribute (METADATA).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttributeRecord {
    pub attr_type: AttributeType,
    pub key: Vec<u8>,
    /// `None`: deleted (kept while the log remembers it).
    pub value: Option<Vec<u8>>,
    pub last_change: i64,
    pub modseq: u64,
}

/// The answer to [`Query::Mailbox`].
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct MailboxSnapshot {
    pub status: MailboxStatus,
    /// Sorted by UID.
    pub mails: Vec<MailRecord>,
    /// Change log in modseq order.
    pub log: Vec<LogChange>,
    /// The oldest modseq the log still reaches back to (records of lower
    /// modseqs are gone); 0 = complete.
    pub log_first_modseq: u64,
    pub attributes: Vec<AttributeRecord>,
    /// `Some((uid, modseq))`: an answer to [`Query::MailboxSince`] that holds
    /// only the mails above `uid` and those whose log records after
    /// `modseq` still exist (`log` then starts after `modseq`); any other
    /// mail is asked for with [`Query::Mails`] when needed. `None`: every
    /// mail.
    pub partial: Option<(u32, u64)>,
}

/// Where an outgoing body comes from: the mail with `uid` in mailbox
/// `mailbox` of the local replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyRef {
    pub mailbox: Guid128,
    pub uid: u32,
}

/// Where a saved mail's body comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodySource {
    /// The data block that followed the last received `M` item.
    Incoming,
}

/// A mail to save with an explicit UID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMail {
    pub uid: u32,
    pub guid: Vec<u8>,
    pub flags: MailFlags,
    pub keywords: Vec<Vec<u8>>,
    /// The mail's modseq must be at least this.
    pub min_modseq: u64,
    pub received_date: i64,
    pub saved_date: i64,
    pub pop3_uidl: Option<Vec<u8>>,
    pub pop3_order: u32,
}

/// Changes the engine asks the local replica to make. Every action that
/// writes a mail-change record marks it as written by a sync.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Take the per-user sync lock (`-l`).
    LockUser {
        timeout_secs: u32,
    },
    /// Create a mailbox with this GUID and UIDVALIDITY. Must fail (and be
    /// reported) instead of overwriting an existing mailbox's metadata.
    CreateMailbox {
        name: MailboxName,
        guid: Guid128,
        uid_validity: u32,
    },
    /// Create a `\NoSelect` directory (existing is success).
    CreateDir {
        name: MailboxName,
    },
    /// Delete the mailbox with this GUID (expunging its mails). Logged as a
    /// mailbox deletion at `timestamp`.
    DeleteMailbox {
        guid: Guid128,
        timestamp: i64,
    },
    /// Delete a directory by name.
    DeleteDir {
        name: MailboxName,
        timestamp: i64,
    },
    /// Rename a mailbox or directory with its children.
    Rename {
        from: MailboxName,
        to: MailboxName,
        timestamp: i64,
    },
    /// Change the mailbox GUID of the mailbox named `name`.
    SetMailboxGuid {
        name: MailboxName,
        guid: Guid128,
    },
    SetSubscribed {
        name: MailboxName,
        subscribed: bool,
        timestamp: i64,
    },
    SetUidValidity {
        mailbox: Guid128,
        uid_validity: u32,
    },
    /// Add/remove flags and keywords; raise the mail's modseq to at least
    /// `min_modseq`.
    UpdateFlags {
        mailbox: Guid128,
        uid: u32,
        add: MailFlags,
        remove: MailFlags,
        add_keywords: Vec<Vec<u8>>,
        remove_keywords: Vec<Vec<u8>>,
        min_modseq: u64,
    },
    /// Replace flags and keywords (backup destination).
    ReplaceFlags {
        mailbox: Guid128,
        uid: u32,
        flags: MailFlags,
        keywords: Vec<Vec<u8>>,
        min_modseq: u64,
    },
    Expunge {
        mailbox: Guid128,
        uid: u32,
    },
    /// Give an existing mail a new UID (copy to `to_uid` with its flags,
    /// then expunge `from_uid`).
    MoveMail {
        mailbox: Guid128,
        from_uid: u32,
        to_uid: u32,
    },
    /// Save another instance of a local mail under `mail.uid` (flags and
    /// metadata from `mail`).
    CopyMail {
        mailbox: Guid128,
        from_uid: u32,
        mail: NewMail,
    },
    /// Copy a local mail into another local mailbox (as a normal, not
    /// sync-written, save) under `mail.uid`.
    CopyToMailbox {
        from_mailbox: Guid128,
        from_uid: u32,
        to_mailbox: Guid128,
        mail: NewMail,
    },
    SaveMail {
        mailbox: Guid128,
        mail: NewMail,
        body: BodySource,
    },
    /// Raise UIDNEXT / HIGHESTMODSEQ / first recent UID to at least these.
    RaiseStatus {
        mailbox: Guid128,
        uid_next: u32,
        highest_modseq: u64,
        first_recent_uid: u32,
    },
    SetAttribute {
        mailbox: Guid128,
        attr_type: AttributeType,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        last_change: i64,
    },
}

/// Why the replica could not apply an action (fed back with
/// [`crate::Input::ActionFailed`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    #[error("already exists: {0}")]
    Exists(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("not possible: {0}")]
    NotPossible(String),
    #[error("temporary failure: {0}")]
    Temp(String),
}
