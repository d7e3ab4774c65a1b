//! The session's store interface over the Maildir backend
//! ([`crate::storage::maildir`]): engine queries become reads of the
//! mailbox tree, the index and the transaction log; engine actions become
//! one storage transaction each, marked as written by replication.
//!
//! Mailbox attributes (METADATA) live in the file dict given as
//! `mail_attribute_dict`; the per-user lock (`-l`) is Dovecot's
//! `<home>/.dovecot-sync.lock`, held until the replica is dropped.
//!
//! Not carried: mailbox GUID changes are refused as not possible; a mail's
//! own modseq cannot be set, so `min_modseq` raises the mailbox's
//! HIGHESTMODSEQ instead.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use dsync_protocol::{AttributeType, Guid128, MailFlags};
use sync_engine::{
    Action, Answer, AttributeRecord, BodyRef, BodySource, LogChange, LogChangeKind, MailRecord,
    MailboxEntry, MailboxLogKind, MailboxLogRecord, MailboxName, MailboxSnapshot, MailboxStatus,
    NewMail, Query, StorageError, TreeSnapshot,
};

use super::store::{IncomingBody, SessionStore};
use crate::storage::lock::{FcntlLock, Owner};
use crate::storage::maildir::{BodyFiles, Layout, MaildirMailbox, MaildirOptions, MaildirStore};
use crate::storage::{self as st, FlagChange, MailStore, Mailbox as _, NewMessage};

/// A Maildir as the local replica of a session.
pub struct MaildirReplica {
    store: MaildirStore,
    incoming: Option<IncomingBody>,
    /// Saves of one mailbox not committed yet: Dovecot assigns the UIDs of
    /// one transaction in ascending order, and the engine may ask for a
    /// reassigned UID before a lower new one, so saves are batched and
    /// committed sorted when anything else happens.
    pending: Option<(String, Vec<PendingSave>)>,
    /// The mailbox last read bodies from: opening one reads its uidlist and
    /// lists its directory, which per body made a full sync quadratic.
    /// Dropped on every change; a UID it does not know opens it again.
    body_source: Option<(Guid128, String, BodyFiles)>,
    /// The mailbox the last `MoveMail` or `ReplaceFlags` read its mail
    /// from ([`Self::source_message`]); any other action drops it.
    read_source: Option<(String, MaildirMailbox)>,
    /// A status raise of the pending mailbox (uid_next, highest_modseq),
    /// applied after its saves: committed first, a raised next uid would
    /// refuse the pending saves below it.
    pending_raise: Option<(u32, u64)>,
    home: Option<PathBuf>,
    /// The per-user sync lock, held until the replica is dropped.
    user_lock: Option<FcntlLock>,
    /// Mailbox names by GUID: finding one lists every mailbox and reads its
    /// uidlist, too slow per saved mail. Cleared on every mailbox-tree
    /// change and every query.
    names: std::cell::RefCell<std::collections::HashMap<Guid128, String>>,
    /// Number of saves after which a batch is committed early (when the
    /// engine allows it).
    chunk_saves: usize,
    /// Commits of saved mails so far.
    save_commits: u64,
    /// Commits of batched flag changes and expunges.
    change_commits: u64,
    /// Bytes of in-memory bodies and number of spool files in `pending`.
    pending_memory: u64,
    pending_files: usize,
    /// Where in-memory bodies of the batch go beyond `PENDING_MEMORY_BYTES`
    /// (unnamed, in the mail root), and its length.
    spill: Option<(std::sync::Arc<std::fs::File>, u64)>,
    /// Flag changes and expunges of one mailbox not committed yet, with the
    /// modseq to raise to: a commit lists the mailbox, so one per changed
    /// or expunged mail made a full comparison of two large mailboxes
    /// quadratic. Committed before any other action, query, body read or
    /// the end.
    pending_flags: Option<PendingFlags>,
}

/// Mailbox name, (uid, change) in order (`None`: expunge), modseq to raise to.
type PendingFlags = (String, Vec<(u32, Option<FlagChange>)>, u64);

/// Flag changes committed together at most.
const FLAG_BATCH: usize = 4096;

/// A batch this large is committed (the part of it the engine will not add
/// lower UIDs to) while the sync goes on: memory for mail bodies and open
/// spool files stays bounded whatever the mailbox size. Each commit lists
/// the mailbox, so a batch is not made much smaller.
const CHUNK_SAVES: usize = 4096;
const CHUNK_SPOOL_FILES: usize = 256;
/// In-memory bodies a batch keeps; further ones are moved to a spill file.
const PENDING_MEMORY_BYTES: u64 = 2 << 20;
/// A spill file is replaced by a new one when it reaches this size (the
/// old one goes away with the last body in it).
const SPILL_ROTATE_BYTES: u64 = 1 << 30;

struct PendingSave {
    msg: NewMessage,
    source: SaveSource,
}

enum SaveSource {
    Incoming(IncomingBody),
    /// A local mail of the same mailbox; `expunge`: a move (UID reassignment).
    Local {
        uid: u32,
        expunge: bool,
    },
}

/// `mkdir -p` where each directory created is given to `owner`: a new
/// user's home and mail root must not stay root's.
fn create_dirs_as(path: &std::path::Path, owner: Option<Owner>) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut p = path;
    while !p.exists() {
        missing.push(p.to_path_buf());
        match p.parent() {
            Some(parent) => p = parent,
            None => break,
        }
    }
    for dir in missing.iter().rev() {
        match std::fs::create_dir(dir) {
            Ok(()) => {
                if let Some(o) = owner {
                    std::os::unix::fs::chown(dir, Some(o.uid), Some(o.gid))?;
                    // Only the user reads its mail (Dovecot's mode too).
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Why a `maildir:` location cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum LocationError {
    #[error("mail location {0}: not a maildir: location")]
    NotMaildir(String),
    #[error("mail location {location}: parameter {param} is not supported")]
    Unsupported { location: String, param: String },
    #[error("{0}")]
    AttributeDict(String),
    #[error("mail location {location}: {source}")]
    Storage {
        location: String,
        #[source]
        source: st::StorageError,
    },
}

impl MaildirReplica {
    /// Opens `maildir:PATH[:LAYOUT=fs]`, creating the root directory when
    /// it does not exist yet (like Dovecot's autocreate of a mail root).
    pub fn open_location(location: &str) -> Result<MaildirReplica, LocationError> {
        Self::open_for_user(location, None, None)
    }

    /// A user's replica: when running as root, the directories created on
    /// the way and every file written later belong to `owner` (the userdb's
    /// uid and gid; without one, the owner of the mail root); mailbox
    /// attributes are kept in the file dict `attribute_dict`
    /// (`mail_attribute_dict`, e.g. `file:/home/u/dovecot-attributes`).
    pub fn open_for_user(
        location: &str,
        owner: Option<Owner>,
        attribute_dict: Option<&str>,
    ) -> Result<MaildirReplica, LocationError> {
        let rest = location
            .strip_prefix("maildir:")
            .ok_or_else(|| LocationError::NotMaildir(location.to_string()))?;
        let mut parts = rest.split(':');
        let path = PathBuf::from(parts.next().unwrap_or(""));
        let mut opts = MaildirOptions::default();
        if let Some(uri) = attribute_dict.filter(|u| !u.is_empty()) {
            opts.attribute_dict = Some(
                crate::storage::maildir::parse_dict_uri(uri)
                    .map_err(LocationError::AttributeDict)?,
            );
        }
        for p in parts {
            match p {
                "LAYOUT=fs" => opts.layout = Layout::Fs,
                "LAYOUT=maildir++" => opts.layout = Layout::MaildirPlusPlus,
                _ => {
                    return Err(LocationError::Unsupported {
                        location: location.to_string(),
                        param: p.to_string(),
                    })
                }
            }
        }
        let storage_err = |source| LocationError::Storage {
            location: location.to_string(),
            source,
        };
        let owner = owner.filter(|_| rustix::process::geteuid().is_root());
        if !path.exists() {
            create_dirs_as(&path, owner).map_err(|e| {
                storage_err(st::StorageError::Io {
                    path: path.clone(),
                    source: e,
                })
            })?;
        }
        let store = MaildirStore::open_as(&path, opts, owner).map_err(storage_err)?;
        Ok(MaildirReplica::new(store))
    }

    pub fn new(store: MaildirStore) -> MaildirReplica {
        MaildirReplica {
            store,
            incoming: None,
            pending: None,
            body_source: None,
            read_source: None,
            change_commits: 0,
            pending_raise: None,
            home: None,
            user_lock: None,
            names: Default::default(),
            chunk_saves: CHUNK_SAVES,
            save_commits: 0,
            pending_memory: 0,
            pending_files: 0,
            spill: None,
            pending_flags: None,
        }
    }

    /// Commits a batch of saves early once it holds `saves` mails (default
    /// 4096; memory and spool-file limits apply as well).
    pub fn set_batch_limit(&mut self, saves: usize) {
        self.chunk_saves = saves.max(1);
    }

    /// How many commits of saved mails were made so far.
    pub fn save_commits(&self) -> u64 {
        self.save_commits
    }

    /// How many commits of batched flag changes and expunges were made.
    pub fn change_commits(&self) -> u64 {
        self.change_commits
    }

    /// The user's home directory, where the per-user sync lock
    /// (`-l`, `<home>/.dovecot-sync.lock`) is taken.
    pub fn set_home(&mut self, home: Option<PathBuf>) {
        self.home = home;
    }

    pub fn store(&self) -> &MaildirStore {
        &self.store
    }

    fn sep(&self) -> char {
        self.store.namespace().separator
    }

    fn name_of(&self, name: &MailboxName) -> String {
        let sep = self.sep().to_string();
        name.iter()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(&sep)
    }

    fn split(&self, name: &str) -> MailboxName {
        name.split(self.sep())
            .map(|c| c.as_bytes().to_vec())
            .collect()
    }

    fn mailbox_name(&self, guid: Guid128) -> Result<String, StorageError> {
        if let Some(n) = self.names.borrow().get(&guid) {
            return Ok(n.clone());
        }
        let name = self
            .store
            .find_mailbox(&guid.0)
            .map_err(map_err)?
            .ok_or_else(|| StorageError::NotFound(format!("mailbox GUID {guid}")))?;
        self.names.borrow_mut().insert(guid, name.clone());
        Ok(name)
    }

    fn tree(&self) -> Result<TreeSnapshot, st::StorageError> {
        let mailboxes = self
            .store
            .list_mailboxes()?
            .into_iter()
            .map(|e| MailboxEntry {
                name: self.split(&e.name),
                guid: e.guid.map(Guid128),
                uid_validity: e.uid_validity,
                uid_next: e.uid_next,
            })
            .collect();
        let subscriptions = self
            .store
            .subscriptions()?
            .iter()
            .map(|n| self.split(n))
            .collect();
        let log = self
            .store
            .mailbox_log()?
            .into_iter()
            .map(|r| MailboxLogRecord {
                kind: match r.kind {
                    st::MailboxLogKind::DeleteMailbox => MailboxLogKind::DeleteMailbox,
                    st::MailboxLogKind::DeleteDir => MailboxLogKind::DeleteDir,
                    st::MailboxLogKind::Rename => MailboxLogKind::Rename,
                    st::MailboxLogKind::Subscribe => MailboxLogKind::Subscribe,
                    st::MailboxLogKind::Unsubscribe => MailboxLogKind::Unsubscribe,
                },
                key: Guid128(r.id),
                timestamp: i64::from(r.timestamp),
            })
            .collect();
        Ok(TreeSnapshot {
            separator: self.sep() as u8,
            mailboxes,
            subscriptions,
            log,
        })
    }

    /// Status only: from the uidlist and index when the directories allow,
    /// else from an opened (listed) mailbox.
    fn mailbox_status(&self, guid: Guid128) -> Result<Option<MailboxStatus>, st::StorageError> {
        let Some(name) = self.store.find_mailbox(&guid.0)? else {
            return Ok(None);
        };
        let s = match self.store.quick_status(&name)? {
            Some(s) => s,
            // Counted while listing, keeping no mail: a status needs none.
            None => self.store.open_maildir_kept(&name, &|_| false)?.status(),
        };
        Ok(Some(engine_status(guid, &s)))
    }

    /// The engine's snapshot of a mailbox, with where its mails' files are
    /// (the listing is at hand here; kept, it saves listing the mailbox
    /// again to send bodies).
    ///
    /// `since`: `Some((last common UID, last common modseq))` reads a
    /// partial snapshot ([`MailboxSnapshot::partial`]): the mails above that
    /// UID and every mail within the UID ranges of the log records after
    /// that modseq, and the log from there. Records of other mails are kept
    /// nowhere, so a stateful run holds memory for what changed, not for
    /// the whole mailbox.
    fn mailbox(
        &self,
        guid: Guid128,
        dated: bool,
        since: Option<(u32, u64)>,
    ) -> Result<Option<(MailboxSnapshot, String, BodyFiles)>, st::StorageError> {
        let Some(name) = self.store.find_mailbox(&guid.0)? else {
            return Ok(None);
        };
        let mb = match since {
            Some((lcu, lcm)) => {
                // A partial snapshot reads the log first: its records name
                // the mails to keep (`None`: keep all). Only their UID
                // ranges are kept (the log may be as long as the mailbox).
                let mut first = Vec::new();
                self.store
                    .visit_changes_since(&name, lcm, &mut |c| add_touched(&mut first, &c))?;
                let mut touched = Some(touched_ranges_merge(first));
                // The log is read again from the opened mailbox's own view,
                // which its status comes from. A change made in between may
                // name mails that were not kept: then open again keeping
                // them too (after a few tries, every mail).
                let mut tries = 0;
                loop {
                    let t = touched.as_deref();
                    let keep = |uid: u32| t.is_none_or(|t| uid > lcu || in_ranges(t, uid));
                    let mb = self.store.open_maildir_kept(&name, &keep)?;
                    let mut now = Vec::new();
                    if let Some(v) = mb.index_view() {
                        crate::storage::maildir::visit_changes(v, lcm, &mut |c| {
                            add_touched(&mut now, &c)
                        })?;
                    }
                    let now = touched_ranges_merge(now);
                    match touched.as_mut() {
                        Some(t) if !covers(t, &now) => {
                            tries += 1;
                            if tries < 3 {
                                t.extend(now);
                                *t = touched_ranges_merge(std::mem::take(t));
                            } else {
                                touched = None;
                            }
                        }
                        _ => break mb,
                    }
                }
            }
            None => {
                // Undated, the flags Dovecot's index holds do (no listing)
                // when it describes the directories as they are.
                let indexed = if dated {
                    None
                } else {
                    self.store.open_maildir_indexed(&name)?
                };
                match indexed {
                    Some(mb) => mb,
                    None => self.store.open_maildir(&name)?,
                }
            }
        };
        let s = mb.status();
        // A partial snapshot's mailbox holds only the mails it keeps.
        let mut mails = Vec::with_capacity(mb.held());
        // The dates travel in `M` items and feed the -t/-e filters; they
        // cost a stat per mail, so an undated snapshot leaves them out
        // (`body_dates` gives them for the mails actually sent).
        let listing: Box<dyn Iterator<Item = st::Result<st::MessageInfo>> + '_> = if dated {
            Box::new(mb.messages_with_dates())
        } else {
            mb.messages()
        };
        for m in listing {
            mails.push(mail_record(m?));
        }
        // `mails` is in UID order: the UIDs of a range are found by halving.
        let uids = UidsOf(&mails);
        // Expunged UIDs are gone from `uids`; ranges are bounded by UIDNEXT.
        let all_below_next = |a: u32, b: u32| a..=b.min(s.uid_next.saturating_sub(1));
        // The last logged change of each attribute (private?, key) ->
        // (modseq, set?). Changes written by a sync are not counted, as
        // Dovecot's log scan skips them.
        let mut attr_changes: BTreeMap<(bool, String), (u64, bool)> = BTreeMap::new();
        // The log from where it is complete: a rotated log still proves
        // every change above its oldest file's initial modseq, which is
        // what a stateful sync since a later modseq needs.
        let logged_since = mb.logged_since();
        // The attributes and the body table are taken before the log is
        // read, so the uidlist and the listing are gone while it is.
        let attributes = mb.attributes()?;
        let (view, files) = mb.into_view_and_body_files();
        let mut log = Vec::new();
        // Visited, not collected: the log holds a record per saved mail.
        let mut visit = |c: st::LogChange| {
            if let st::LogChangeKind::Attribute { key, set, private } = &c.kind {
                if !c.sync {
                    attr_changes.insert((*private, key.clone()), (c.modseq, *set));
                }
                return;
            }
            let mut push = |uid: u32, kind: LogChangeKind| {
                log.push(LogChange {
                    modseq: c.modseq,
                    uid,
                    sync: c.sync,
                    kind,
                })
            };
            match c.kind {
                st::LogChangeKind::Append { .. } | st::LogChangeKind::Attribute { .. } => {}
                st::LogChangeKind::Flags {
                    uid1,
                    uid2,
                    add,
                    remove,
                } => {
                    for &u in uids.range(uid1..=uid2) {
                        push(
                            u,
                            LogChangeKind::Flags {
                                add: MailFlags(add),
                                remove: MailFlags(remove),
                            },
                        );
                    }
                }
                st::LogChangeKind::Keyword { add, name, ranges } => {
                    for (a, b) in ranges {
                        for &u in uids.range(a..=b.max(a)) {
                            let k = name.clone().into_bytes();
                            push(
                                u,
                                if add {
                                    LogChangeKind::KeywordAdd(k)
                                } else {
                                    LogChangeKind::KeywordRemove(k)
                                },
                            );
                        }
                    }
                }
                st::LogChangeKind::KeywordReset { ranges } => {
                    for (a, b) in ranges {
                        for &u in uids.range(a..=b.max(a)) {
                            push(u, LogChangeKind::KeywordReset);
                        }
                    }
                }
                st::LogChangeKind::Expunge { uid, guid } => {
                    push(uid, LogChangeKind::Expunge(guid.map(Guid128)))
                }
                st::LogChangeKind::ExpungeRange { uid1, uid2 } => {
                    for u in all_below_next(uid1, uid2) {
                        if !uids.contains(&u) {
                            push(u, LogChangeKind::Expunge(None));
                        }
                    }
                }
                st::LogChangeKind::Modseq { uid, .. } => {
                    if uid != 0 {
                        push(uid, LogChangeKind::Modseq);
                    }
                }
            }
        };
        // A partial snapshot's log starts after the state's modseq.
        let from = since.map_or(logged_since, |(_, lcm)| lcm);
        let complete = match &view {
            Some(v) => crate::storage::maildir::visit_changes(v, from, &mut visit)?,
            None => true,
        };
        drop(view);
        let log_first_modseq = if !complete {
            log.clear();
            s.highest_modseq + 1
        } else if logged_since == 0 {
            0
        } else {
            logged_since + 1
        };
        let attributes = Self::attribute_records(attributes, attr_changes);
        let snapshot = MailboxSnapshot {
            status: engine_status(guid, &s),
            mails,
            log,
            log_first_modseq,
            attributes,
            partial: since,
        };
        Ok(Some((snapshot, name, files)))
    }

    /// The records of these mails (those that exist), for a comparison
    /// from a partial snapshot.
    fn mail_records(
        &self,
        guid: Guid128,
        uids: &[u32],
    ) -> Result<Vec<MailRecord>, st::StorageError> {
        let Some(name) = self.store.find_mailbox(&guid.0)? else {
            return Ok(Vec::new());
        };
        let mb = self
            .store
            .open_maildir_kept(&name, &|u| uids.binary_search(&u).is_ok())?;
        let mut out = Vec::with_capacity(uids.len());
        for &uid in uids {
            if let Some(m) = mb.message(uid)? {
                out.push(mail_record(m));
            }
        }
        out.sort_by_key(|m| m.uid);
        Ok(out)
    }

    /// The engine's view of a mailbox's attributes: dict values with the
    /// modseq of their last logged change (0 = unknown), plus logged
    /// deletions of keys that no longer have a value. The file dict keeps
    /// no change times, so `last_change` is 0 (as Dovecot exports it).
    fn attribute_records(
        values: Vec<st::Attribute>,
        mut changes: BTreeMap<(bool, String), (u64, bool)>,
    ) -> Vec<AttributeRecord> {
        let attr_type = |private: bool| {
            if private {
                AttributeType::Private
            } else {
                AttributeType::Shared
            }
        };
        let mut out: Vec<AttributeRecord> = values
            .into_iter()
            .map(|a| {
                let modseq = changes
                    .remove(&(a.private, a.key.clone()))
                    .map_or(0, |(m, _)| m);
                AttributeRecord {
                    attr_type: attr_type(a.private),
                    key: a.key.into_bytes(),
                    value: Some(a.value),
                    last_change: 0,
                    modseq,
                }
            })
            .collect();
        for ((private, key), (modseq, set)) in changes {
            if !set {
                out.push(AttributeRecord {
                    attr_type: attr_type(private),
                    key: key.into_bytes(),
                    value: None,
                    last_change: 0,
                    modseq,
                });
            }
        }
        // Private before shared, then by key (Dovecot's export order).
        out.sort_by(|a, b| {
            (a.attr_type != AttributeType::Private, &a.key)
                .cmp(&(b.attr_type != AttributeType::Private, &b.key))
        });
        out
    }

    fn new_message(mail: &NewMail) -> NewMessage {
        NewMessage {
            uid: Some(mail.uid),
            guid: Some(String::from_utf8_lossy(&mail.guid).into_owned()),
            flags: mail.flags.0 & st::flags::IMAP_MASK,
            keywords: kw(&mail.keywords),
            received: Some(mail.received_date),
            saved: Some(mail.saved_date),
            pop3_uidl: mail
                .pop3_uidl
                .as_ref()
                .filter(|u| !u.is_empty())
                .map(|u| String::from_utf8_lossy(u).into_owned()),
            pop3_order: (mail.pop3_order != 0).then_some(mail.pop3_order),
        }
    }

    /// Copies local mail `from_uid` of `from` into another mailbox `to` as
    /// a normal (not replication-written) save.
    fn copy(
        &self,
        from: &str,
        from_uid: u32,
        to: &str,
        msg: NewMessage,
    ) -> Result<(), st::StorageError> {
        let src = self.store.open_mailbox(from)?;
        let mut body = src.open_body(from_uid)?;
        let mut t = self.store.begin(to)?;
        t.set_sync_origin(false);
        t.save(msg, &mut body)?;
        t.commit()?;
        Ok(())
    }

    fn queue(&mut self, name: String, mut save: PendingSave) -> Result<(), StorageError> {
        if self.pending.as_ref().is_some_and(|(n, _)| *n != name) {
            self.flush()?;
        }
        match &save.source {
            SaveSource::Incoming(IncomingBody::Memory(v)) => {
                if self.pending_memory + v.len() as u64 > PENDING_MEMORY_BYTES {
                    let body = self
                        .spill_body(v)
                        .map_err(|e| StorageError::Temp(format!("spilling a mail body: {e}")))?;
                    save.source = SaveSource::Incoming(body);
                } else {
                    self.pending_memory += v.len() as u64;
                }
            }
            SaveSource::Incoming(IncomingBody::File { .. }) => self.pending_files += 1,
            _ => {}
        }
        self.pending
            .get_or_insert_with(|| (name, Vec::new()))
            .1
            .push(save);
        Ok(())
    }

    /// Moves an in-memory body to the spill file.
    fn spill_body(&mut self, data: &[u8]) -> io::Result<IncomingBody> {
        use std::os::unix::fs::FileExt;
        if self
            .spill
            .as_ref()
            .is_none_or(|(_, len)| *len >= SPILL_ROTATE_BYTES)
        {
            let f = tempfile::tempfile_in(self.store.root())?;
            self.spill = Some((std::sync::Arc::new(f), 0));
        }
        let Some((file, len)) = self.spill.as_mut() else {
            return Err(io::Error::other("no spill file"));
        };
        let offset = *len;
        file.write_all_at(data, offset)?;
        *len += data.len() as u64;
        Ok(IncomingBody::Shared {
            file: file.clone(),
            offset,
            len: data.len() as u64,
        })
    }

    /// Counts what the batch holds again after part of it was committed.
    fn recount_pending(&mut self) {
        let (mut memory, mut files) = (0u64, 0usize);
        for s in self.pending.iter().flat_map(|(_, saves)| saves) {
            match &s.source {
                SaveSource::Incoming(b @ IncomingBody::Memory(_)) => memory += b.len(),
                SaveSource::Incoming(IncomingBody::File { .. }) => files += 1,
                _ => {}
            }
        }
        self.pending_memory = memory;
        self.pending_files = files;
    }

    /// Commits the batched saves of one mailbox in UID order.
    pub fn flush(&mut self) -> Result<(), StorageError> {
        let Some((name, saves)) = self.pending.take() else {
            return Ok(());
        };
        self.pending_memory = 0;
        self.pending_files = 0;
        let raise = self.pending_raise.take();
        self.commit_saves(&name, saves)?;
        match raise {
            Some((uid_next, modseq)) => self.txn(&name, |t| {
                t.raise_uid_next(uid_next)?;
                t.raise_highest_modseq(modseq)
            }),
            None => Ok(()),
        }
    }

    /// Commits the saves of a large batch that are below `floor`, the
    /// lowest UID the engine may still save into the batch's mailbox.
    fn commit_settled(&mut self, mailbox: Guid128, floor: u32) -> Result<(), StorageError> {
        let Some((name, saves)) = self.pending.as_ref() else {
            return Ok(());
        };
        if saves.len() < self.chunk_saves && self.pending_files < CHUNK_SPOOL_FILES {
            return Ok(());
        }
        if *name != self.mailbox_name(mailbox)? {
            return Ok(());
        }
        let Some((name, saves)) = self.pending.as_mut() else {
            return Ok(());
        };
        let (ready, rest): (Vec<_>, Vec<_>) = std::mem::take(saves)
            .into_iter()
            .partition(|s| s.msg.uid.is_some_and(|u| u < floor));
        // A move expunges its source at commit: a later copy of the same
        // source must be committed with it, so wait for the whole batch.
        let moved: BTreeSet<u32> = ready
            .iter()
            .filter_map(|s| match s.source {
                SaveSource::Local { uid, expunge: true } => Some(uid),
                _ => None,
            })
            .collect();
        // A copy of a mail the batch still has to save waits with it.
        let rest_uids: BTreeSet<u32> = rest.iter().filter_map(|s| s.msg.uid).collect();
        let still_read = rest
            .iter()
            .any(|s| matches!(s.source, SaveSource::Local { uid, .. } if moved.contains(&uid)))
            || ready.iter().any(
                |s| matches!(s.source, SaveSource::Local { uid, .. } if rest_uids.contains(&uid)),
            );
        if still_read {
            let mut all = ready;
            all.extend(rest);
            *saves = all;
            return Ok(());
        }
        *saves = rest;
        let name = name.clone();
        if saves.is_empty() && self.pending_raise.is_none() {
            self.pending = None;
        }
        self.recount_pending();
        self.commit_saves(&name, ready)
    }

    fn commit_saves(
        &mut self,
        name: &str,
        mut saves: Vec<PendingSave>,
    ) -> Result<(), StorageError> {
        if saves.is_empty() {
            return Ok(());
        }
        saves.sort_by_key(|s| s.msg.uid);
        // A copy of a mail saved by this very batch (the same mail twice in
        // the peer's mailbox) reads the body that save reads: the mail is
        // not in the mailbox before the commit. Readers made before any
        // body is consumed.
        let mut in_batch: HashMap<usize, Box<dyn Read + Send>> = HashMap::new();
        for (i, s) in saves.iter().enumerate() {
            let SaveSource::Local { uid, .. } = s.source else {
                continue;
            };
            let Ok(j) = saves.binary_search_by_key(&Some(uid), |t| t.msg.uid) else {
                continue;
            };
            if let SaveSource::Incoming(b) = &saves[j].source {
                let r = b
                    .reread()
                    .map_err(|e| StorageError::Temp(format!("re-reading a mail body: {e}")))?;
                in_batch.insert(i, r);
            }
        }
        // Opened only for copies and moves, keeping only their sources:
        // the whole mailbox's tables would be as large as the mailbox, once
        // per batch that copies a mail saved by an earlier one.
        let mut sources: Vec<u32> = saves
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s.source {
                SaveSource::Local { uid, .. } if !in_batch.contains_key(&i) => Some(uid),
                _ => None,
            })
            .collect();
        sources.sort_unstable();
        let src = if sources.is_empty() {
            None
        } else {
            let keep = |u: u32| sources.binary_search(&u).is_ok();
            Some(self.store.open_maildir_kept(name, &keep).map_err(map_err)?)
        };
        let mut t = self.store.begin(name).map_err(map_err)?;
        t.set_sync_origin(true);
        let mut expunges = Vec::new();
        for (i, s) in saves.into_iter().enumerate() {
            let mut body: Box<dyn Read + Send> = match s.source {
                SaveSource::Incoming(b) => b.into_reader(),
                SaveSource::Local { .. } if in_batch.contains_key(&i) => in_batch
                    .remove(&i)
                    .ok_or_else(|| StorageError::NotPossible("a copy lost its source".into()))?,
                SaveSource::Local { uid, expunge } => {
                    if expunge {
                        expunges.push(uid);
                    }
                    let src = src.as_ref().ok_or_else(|| {
                        StorageError::NotPossible(format!("no source mailbox for uid {uid}"))
                    })?;
                    src.open_body(uid).map_err(map_err)?
                }
            };
            t.save(s.msg, &mut body).map_err(map_err)?;
        }
        for uid in expunges {
            t.expunge(uid, None).map_err(map_err)?;
        }
        t.commit().map_err(map_err)?;
        self.save_commits += 1;
        Ok(())
    }

    /// Whether `uid` of mailbox `name` is written or read by the pending
    /// batch (a save's target or a move's/copy's source), so an action on
    /// it needs the batch committed first.
    fn pending_touches(&self, name: &str, uid: u32) -> bool {
        self.pending.as_ref().is_some_and(|(n, saves)| {
            n == name
                && saves.iter().any(|s| {
                    s.msg.uid == Some(uid)
                        || matches!(s.source, SaveSource::Local { uid: u, .. } if u == uid)
                })
        })
    }

    /// Whether action `a` can run with the batch still pending. Committing
    /// early is only safe when no later action of the batch can bring a
    /// lower UID, which the adapter cannot know: the engine assigns the
    /// renumbered UIDs of a conflict in any order (a move to 5 before a
    /// save of 4). So actions that do not touch the batch's mails run
    /// against committed storage, and a status raise of the batch's mailbox
    /// waits for the batch.
    /// Applies a flag change of a mail that is still only a pending save to
    /// the save itself, so it needs no early commit. `false`: not such a
    /// change.
    fn fold_flags_into_batch(&mut self, a: &Action) -> Result<bool, StorageError> {
        let (mailbox, uid, min_modseq) = match a {
            Action::UpdateFlags {
                mailbox,
                uid,
                min_modseq,
                ..
            }
            | Action::ReplaceFlags {
                mailbox,
                uid,
                min_modseq,
                ..
            } => (mailbox, *uid, *min_modseq),
            _ => return Ok(false),
        };
        if self.pending.is_none() {
            return Ok(false);
        }
        let name = self.mailbox_name(*mailbox)?;
        let Some((n, saves)) = self.pending.as_mut() else {
            return Ok(false);
        };
        let is_source = saves
            .iter()
            .any(|s| matches!(s.source, SaveSource::Local { uid: u, .. } if u == uid));
        if *n != name || is_source {
            return Ok(false);
        }
        let Some(save) = saves.iter_mut().find(|s| s.msg.uid == Some(uid)) else {
            return Ok(false);
        };
        let msg = &mut save.msg;
        match a {
            Action::UpdateFlags {
                add,
                remove,
                add_keywords,
                remove_keywords,
                ..
            } => {
                msg.flags = (msg.flags | (add.0 & st::flags::IMAP_MASK))
                    & !(remove.0 & st::flags::IMAP_MASK);
                let remove_kw = kw(remove_keywords);
                msg.keywords.retain(|k| !remove_kw.contains(k));
                for k in kw(add_keywords) {
                    if !msg.keywords.contains(&k) {
                        msg.keywords.push(k);
                    }
                }
            }
            Action::ReplaceFlags {
                flags, keywords, ..
            } => {
                msg.flags = flags.0 & st::flags::IMAP_MASK;
                msg.keywords = kw(keywords);
            }
            _ => return Ok(false),
        }
        let (_, m) = self.pending_raise.get_or_insert((0, 0));
        *m = (*m).max(min_modseq);
        Ok(true)
    }

    fn runs_beside_batch(&self, a: &Action) -> Result<bool, StorageError> {
        let Some((pending_name, _)) = self.pending.as_ref() else {
            return Ok(true);
        };
        let (mailbox, uid) = match a {
            Action::SaveMail { .. } | Action::MoveMail { .. } | Action::CopyMail { .. } => {
                return Ok(true)
            }
            // The end of a mailbox's mails: its saves are committed now,
            // before the brain reports the mailbox done to the peer, so a
            // failed commit is reported as the action's failure.
            Action::RaiseStatus { .. } => return Ok(false),
            Action::UpdateFlags { mailbox, uid, .. }
            | Action::ReplaceFlags { mailbox, uid, .. }
            | Action::Expunge { mailbox, uid } => (mailbox, *uid),
            _ => return Ok(false),
        };
        let name = self.mailbox_name(*mailbox)?;
        Ok(*pending_name != name || !self.pending_touches(&name, uid))
    }

    fn apply_inner(&mut self, a: &Action) -> Result<(), StorageError> {
        if self.fold_flags_into_batch(a)? {
            return Ok(());
        }
        if !self.runs_beside_batch(a)? {
            self.flush()?;
        }
        let ts = |t: i64| u32::try_from(t.max(0)).unwrap_or(u32::MAX);
        match a {
            Action::LockUser { timeout_secs } => {
                let home = self.home.clone().ok_or_else(|| {
                    StorageError::NotPossible("User has no home directory".into())
                })?;
                let path = home.join(".dovecot-sync.lock");
                match self
                    .store
                    .lock_user(&home, Duration::from_secs(u64::from(*timeout_secs)))
                {
                    Ok(l) => {
                        self.user_lock = Some(l);
                        Ok(())
                    }
                    Err(st::StorageError::LockTimeout { .. }) => Err(StorageError::Temp(format!(
                        "Couldn't lock {}: Timed out after {timeout_secs} seconds",
                        path.display()
                    ))),
                    Err(e) => Err(StorageError::Temp(format!(
                        "Couldn't lock {}: {e}",
                        path.display()
                    ))),
                }
            }
            Action::CreateMailbox {
                name,
                guid,
                uid_validity,
            } => self
                .store
                .create_mailbox(&self.name_of(name), Some(guid.0), Some(*uid_validity))
                .map(|_| ())
                .map_err(map_err),
            Action::CreateDir { name } => match self.store.create_dir(&self.name_of(name)) {
                Ok(()) | Err(st::StorageError::MailboxExists(_)) => Ok(()),
                Err(e) => Err(map_err(e)),
            },
            Action::DeleteMailbox { guid, timestamp } => {
                let name = self.mailbox_name(*guid)?;
                self.store
                    .delete_mailbox(&name, Some(&guid.0), ts(*timestamp))
                    .map_err(map_err)
            }
            Action::DeleteDir { name, timestamp } => self
                .store
                .delete_dir(&self.name_of(name), ts(*timestamp))
                .map_err(map_err),
            Action::Rename {
                from,
                to,
                timestamp,
            } => self
                .store
                .rename_mailbox(&self.name_of(from), &self.name_of(to), ts(*timestamp))
                .map_err(map_err),
            Action::SetMailboxGuid { name, guid } => self
                .store
                .set_mailbox_guid(&self.name_of(name), guid.0)
                .map_err(map_err),
            Action::SetSubscribed {
                name,
                subscribed,
                timestamp,
            } => self
                .store
                .set_subscribed(&self.name_of(name), *subscribed, ts(*timestamp))
                .map_err(map_err),
            Action::SetUidValidity {
                mailbox,
                uid_validity,
            } => {
                let name = self.mailbox_name(*mailbox)?;
                self.txn(&name, |t| t.set_uid_validity(*uid_validity))
            }
            Action::UpdateFlags {
                mailbox,
                uid,
                add,
                remove,
                add_keywords,
                remove_keywords,
                min_modseq,
            } => {
                let name = self.mailbox_name(*mailbox)?;
                let change = FlagChange {
                    add: add.0 & st::flags::IMAP_MASK,
                    remove: remove.0 & st::flags::IMAP_MASK,
                    add_keywords: kw(add_keywords),
                    remove_keywords: kw(remove_keywords),
                };
                self.batch_change(name, *uid, Some(change), *min_modseq)
            }
            Action::ReplaceFlags {
                mailbox,
                uid,
                flags,
                keywords,
                min_modseq,
            } => {
                let name = self.mailbox_name(*mailbox)?;
                let cur = self.source_message(&name, *uid)?;
                let want = flags.0 & st::flags::IMAP_MASK;
                let want_kw = kw(keywords);
                let change = FlagChange {
                    add: want & !cur.flags,
                    remove: cur.flags & !want & st::flags::IMAP_MASK,
                    add_keywords: want_kw
                        .iter()
                        .filter(|k| !cur.keywords.contains(k))
                        .cloned()
                        .collect(),
                    remove_keywords: cur
                        .keywords
                        .iter()
                        .filter(|k| !want_kw.contains(k))
                        .cloned()
                        .collect(),
                };
                self.batch_change(name, *uid, Some(change), *min_modseq)
            }
            Action::Expunge { mailbox, uid } => {
                let name = self.mailbox_name(*mailbox)?;
                self.batch_change(name, *uid, None, 0)
            }
            Action::MoveMail {
                mailbox,
                from_uid,
                to_uid,
            } => {
                let name = self.mailbox_name(*mailbox)?;
                let info = self.source_message(&name, *from_uid)?;
                let msg = NewMessage {
                    uid: Some(*to_uid),
                    guid: Some(info.guid),
                    flags: info.flags,
                    keywords: info.keywords,
                    received: info.received,
                    saved: info.saved,
                    pop3_uidl: info.pop3_uidl,
                    pop3_order: info.pop3_order,
                };
                self.queue(
                    name,
                    PendingSave {
                        msg,
                        source: SaveSource::Local {
                            uid: *from_uid,
                            expunge: true,
                        },
                    },
                )
            }
            Action::CopyMail {
                mailbox,
                from_uid,
                mail,
            } => {
                let name = self.mailbox_name(*mailbox)?;
                self.queue(
                    name,
                    PendingSave {
                        msg: Self::new_message(mail),
                        source: SaveSource::Local {
                            uid: *from_uid,
                            expunge: false,
                        },
                    },
                )
            }
            Action::CopyToMailbox {
                from_mailbox,
                from_uid,
                to_mailbox,
                mail,
            } => {
                let from = self.mailbox_name(*from_mailbox)?;
                let to = self.mailbox_name(*to_mailbox)?;
                self.copy(&from, *from_uid, &to, Self::new_message(mail))
                    .map_err(map_err)
            }
            Action::SaveMail {
                mailbox,
                mail,
                body: BodySource::Incoming,
            } => {
                let name = self.mailbox_name(*mailbox)?;
                let body = self
                    .incoming
                    .take()
                    .ok_or_else(|| StorageError::NotPossible("no mail body received".into()))?;
                self.queue(
                    name,
                    PendingSave {
                        msg: Self::new_message(mail),
                        source: SaveSource::Incoming(body),
                    },
                )
            }
            Action::RaiseStatus {
                mailbox,
                uid_next,
                highest_modseq,
                ..
            } => {
                let name = self.mailbox_name(*mailbox)?;
                self.txn(&name, |t| {
                    t.raise_uid_next(*uid_next)?;
                    t.raise_highest_modseq(*highest_modseq)
                })
            }
            Action::SetAttribute {
                mailbox,
                attr_type,
                key,
                value,
                last_change,
            } => {
                let name = self.mailbox_name(*mailbox)?;
                let key = std::str::from_utf8(key)
                    .map_err(|_| StorageError::NotPossible("attribute key is not UTF-8".into()))?;
                let private = *attr_type == AttributeType::Private;
                self.txn(&name, |t| {
                    t.set_attribute(private, key, value.as_deref(), ts(*last_change))
                })
            }
        }
    }

    /// Commits the batched flag changes.
    /// A committed mail as stored, read from the mailbox the last move or
    /// flag replacement read (kept while only those are applied: a conflict
    /// renumbers many mails, a backup may replace the flags of many, and
    /// opening the mailbox per mail lists it per mail). A UID the cached
    /// mailbox does not know (saved by a batch committed since) opens it
    /// again.
    fn source_message(&mut self, name: &str, uid: u32) -> Result<st::MessageInfo, StorageError> {
        for fresh in [false, true] {
            let cached = matches!(&self.read_source, Some((n, _)) if n == name);
            if fresh || !cached {
                let mb = self.store.open_maildir(name).map_err(map_err)?;
                self.read_source = Some((name.to_string(), mb));
            }
            if let Some((_, mb)) = &self.read_source {
                if let Some(info) = mb.message(uid).map_err(map_err)? {
                    return Ok(info);
                }
            }
        }
        Err(StorageError::NotFound(format!("uid {uid}")))
    }

    /// Adds a flag change (`None`: an expunge) of `uid` to the batch of
    /// mailbox `name`, committing another mailbox's batch first.
    fn batch_change(
        &mut self,
        name: String,
        uid: u32,
        change: Option<FlagChange>,
        min_modseq: u64,
    ) -> Result<(), StorageError> {
        if self
            .pending_flags
            .as_ref()
            .is_some_and(|(n, _, _)| *n != name)
        {
            self.flush_flags()?;
        }
        let (_, changes, modseq) = self
            .pending_flags
            .get_or_insert_with(|| (name, Vec::new(), 0));
        changes.push((uid, change));
        *modseq = (*modseq).max(min_modseq);
        if changes.len() >= FLAG_BATCH {
            self.flush_flags()?;
        }
        Ok(())
    }

    fn flush_flags(&mut self) -> Result<(), StorageError> {
        let Some((name, changes, modseq)) = self.pending_flags.take() else {
            return Ok(());
        };
        self.change_commits += 1;
        self.txn(&name, |t| {
            for (uid, change) in changes {
                match change {
                    Some(change) => t.update_flags(uid, change)?,
                    None => t.expunge(uid, None)?,
                }
            }
            t.raise_highest_modseq(modseq)
        })
    }

    /// The mailbox name and where the body of `r` is. No commit here: the
    /// batch may still get saves below its highest UID, so a pending save
    /// is served from its source. Finding a mailbox by GUID lists them all
    /// (and reads their uidlists): the name of the mailbox bodies are read
    /// from is reused.
    fn body_origin(&self, r: &BodyRef) -> Option<(String, BodyOrigin<'_>)> {
        let name = match &self.body_source {
            Some((guid, name, _)) if *guid == r.mailbox => name.clone(),
            _ => self.mailbox_name(r.mailbox).ok()?,
        };
        let pending = self
            .pending
            .as_ref()
            .filter(|(n, _)| *n == name)
            .and_then(|(_, saves)| saves.iter().find(|s| s.msg.uid == Some(r.uid)));
        let origin = match pending {
            Some(s) => BodyOrigin::Pending(s),
            None => BodyOrigin::Stored(r.uid),
        };
        Some((name, origin))
    }

    fn txn(
        &self,
        name: &str,
        f: impl FnOnce(&mut dyn st::MailboxTransaction) -> st::Result<()>,
    ) -> Result<(), StorageError> {
        let mut t = self.store.begin(name).map_err(map_err)?;
        t.set_sync_origin(true);
        f(t.as_mut()).map_err(map_err)?;
        t.commit().map(|_| ()).map_err(map_err)
    }
}

fn kw(k: &[Vec<u8>]) -> Vec<String> {
    k.iter()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect()
}

fn map_err(e: st::StorageError) -> StorageError {
    use st::StorageError as S;
    match e {
        S::MailboxExists(n) => StorageError::Exists(n),
        S::MailboxNotFound(n) => StorageError::NotFound(n),
        S::NoSuchUid(u) => StorageError::NotFound(format!("uid {u}")),
        e @ (S::Io { .. } | S::LockTimeout { .. }) => StorageError::Temp(e.to_string()),
        e => StorageError::NotPossible(e.to_string()),
    }
}

/// Where the body of a local mail the engine sends comes from.
enum BodyOrigin<'a> {
    /// Committed storage, under this UID.
    Stored(u32),
    /// A save of the pending batch (its body, or the local mail it copies).
    Pending(&'a PendingSave),
}

/// A mailbox's status numbers as the engine sees them.
fn engine_status(guid: Guid128, s: &st::MailboxStatus) -> MailboxStatus {
    MailboxStatus {
        guid,
        uid_validity: s.uid_validity,
        uid_next: s.uid_next,
        messages: s.messages,
        first_recent_uid: s.first_recent_uid,
        highest_modseq: s.highest_modseq,
        highest_pvt_modseq: s.highest_pvt_modseq,
    }
}

/// The UIDs of mails sorted by UID, by range.
struct UidsOf<'a>(&'a [MailRecord]);

impl UidsOf<'_> {
    fn range(&self, r: std::ops::RangeInclusive<u32>) -> impl Iterator<Item = &u32> + '_ {
        let lo = self.0.partition_point(|m| m.uid < *r.start());
        let hi = self.0.partition_point(|m| m.uid <= *r.end());
        self.0[lo..hi.max(lo)].iter().map(|m| &m.uid)
    }

    fn contains(&self, uid: &u32) -> bool {
        self.0.binary_search_by_key(uid, |m| m.uid).is_ok()
    }
}

impl MaildirReplica {
    fn answer_mailbox(&mut self, guid: Guid128, dated: bool, since: Option<(u32, u64)>) -> Answer {
        match self.mailbox(guid, dated, since) {
            Ok(Some((m, name, files))) => {
                self.body_source = Some((guid, name, files));
                Answer::Mailbox(Some(Box::new(m)))
            }
            Ok(None) => Answer::Mailbox(None),
            Err(e) => {
                tracing::error!(%e, %guid, "reading a mailbox failed");
                Answer::Mailbox(None)
            }
        }
    }
}

impl SessionStore for MaildirReplica {
    fn answer(&mut self, q: &Query) -> Answer {
        self.names.borrow_mut().clear();
        if let Err(e) = self.flush_flags() {
            tracing::error!(%e, "committing flag changes failed");
        }
        if let Err(e) = self.flush() {
            tracing::error!(%e, "committing saved mails failed");
        }
        match q {
            Query::Tree => match self.tree() {
                Ok(t) => Answer::Tree(t),
                Err(e) => {
                    // The engine's queries cannot fail; an unreadable tree
                    // is logged and answered as empty, which makes the peer's
                    // mailboxes look new here (never deletes them there).
                    tracing::error!(%e, "reading the mailbox tree failed");
                    Answer::Tree(TreeSnapshot {
                        separator: self.sep() as u8,
                        mailboxes: Vec::new(),
                        subscriptions: Vec::new(),
                        log: Vec::new(),
                    })
                }
            },
            Query::LogReach(guid) => {
                let reach = self
                    .store
                    .find_mailbox(&guid.0)
                    .and_then(|name| match name {
                        Some(name) => self.store.logged_since(&name).map(Some),
                        None => Ok(None),
                    });
                match reach {
                    Ok(r) => Answer::LogReach(r),
                    Err(e) => {
                        // Unreadable: the log proves nothing, and a full
                        // comparison of the mailbox is always right.
                        tracing::error!(%e, %guid, "reading a mailbox's log failed");
                        Answer::LogReach(Some(u64::MAX))
                    }
                }
            }
            Query::MailboxStatus(guid) => match self.mailbox_status(*guid) {
                Ok(s) => Answer::MailboxStatus(s),
                Err(e) => {
                    tracing::error!(%e, %guid, "reading a mailbox status failed");
                    Answer::MailboxStatus(None)
                }
            },
            Query::Mails { guid, uids } => match self.mail_records(*guid, uids) {
                Ok(found) => Answer::Mails(found),
                Err(e) => {
                    // Nothing can be compared safely without them: the
                    // session fails rather than take them as expunged.
                    tracing::error!(%e, %guid, "reading mails of a mailbox failed");
                    Answer::Mailbox(None)
                }
            },
            Query::Mailbox(guid) => self.answer_mailbox(*guid, true, None),
            Query::MailboxUndated(guid) => self.answer_mailbox(*guid, false, None),
            Query::MailboxSince {
                guid,
                last_common_uid,
                last_common_modseq,
            } => self.answer_mailbox(*guid, false, Some((*last_common_uid, *last_common_modseq))),
        }
    }

    fn apply(&mut self, a: &Action) -> Result<(), StorageError> {
        self.body_source = None;
        // Moves only queue saves and expunge their own sources, and a
        // mail's flags are replaced once per sync: the other mails of the
        // cached mailbox stay as they were read.
        if !matches!(a, Action::MoveMail { .. } | Action::ReplaceFlags { .. }) {
            self.read_source = None;
        }
        if !matches!(
            a,
            Action::UpdateFlags { .. } | Action::ReplaceFlags { .. } | Action::Expunge { .. }
        ) {
            self.flush_flags()?;
        }
        if matches!(
            a,
            Action::CreateMailbox { .. }
                | Action::CreateDir { .. }
                | Action::DeleteMailbox { .. }
                | Action::DeleteDir { .. }
                | Action::Rename { .. }
                | Action::SetMailboxGuid { .. }
        ) {
            self.names.borrow_mut().clear();
        }
        self.apply_inner(a)
    }

    fn saves_settled_below(&mut self, mailbox: Guid128, uid: u32) -> Result<(), StorageError> {
        self.commit_settled(mailbox, uid)
    }

    fn open_body(&mut self, r: &BodyRef) -> io::Result<Option<Box<dyn Read + Send>>> {
        if self.pending_flags.is_some() {
            self.flush_flags()
                .map_err(|e| io::Error::other(e.to_string()))?;
            self.body_source = None;
        }
        let Some((name, origin)) = self.body_origin(r) else {
            return Ok(None);
        };
        let uid = match origin {
            BodyOrigin::Stored(uid) => uid,
            BodyOrigin::Pending(s) => match &s.source {
                SaveSource::Incoming(b) => return b.reread().map(Some),
                SaveSource::Local { uid, .. } => *uid,
            },
        };
        // The cached mailbox shows committed storage, which pending saves do
        // not change; every applied change drops it.
        for fresh in [false, true] {
            let cached =
                matches!(&self.body_source, Some((g, n, _)) if *g == r.mailbox && *n == name);
            if fresh || !cached {
                match self.store.open_maildir(&name) {
                    Ok(mb) => {
                        self.body_source = Some((r.mailbox, name.clone(), mb.into_body_files()))
                    }
                    Err(_) => {
                        self.body_source = None;
                        return Ok(None);
                    }
                }
            }
            let Some((_, _, mb)) = &self.body_source else {
                return Ok(None);
            };
            match mb.open_body(uid) {
                Ok(b) => return Ok(Some(b)),
                // Possibly a mail the cached listing predates: look again once.
                Err(st::StorageError::NoSuchUid(_)) if !fresh && cached => continue,
                Err(st::StorageError::NoSuchUid(_)) => return Ok(None),
                Err(e) => return Err(io::Error::other(e.to_string())),
            }
        }
        Ok(None)
    }

    fn body_dates(&mut self, r: &BodyRef) -> Option<(i64, i64)> {
        let uid = match self.body_origin(r)?.1 {
            BodyOrigin::Stored(uid) => uid,
            BodyOrigin::Pending(s) => match &s.source {
                SaveSource::Incoming(_) => {
                    return s.msg.received.zip(s.msg.saved.or(s.msg.received))
                }
                SaveSource::Local { uid, .. } => *uid,
            },
        };
        match &self.body_source {
            Some((guid, _, files)) if *guid == r.mailbox => files.dates(uid),
            _ => None,
        }
    }

    fn set_incoming_body(&mut self, body: IncomingBody) -> io::Result<()> {
        self.incoming = Some(body);
        Ok(())
    }

    fn spool_dir(&self) -> Option<PathBuf> {
        Some(self.store.root().to_path_buf())
    }

    fn finish(&mut self) -> Result<(), StorageError> {
        self.flush_flags()?;
        self.flush()
    }
}

/// The engine's record of one mail.
fn mail_record(m: st::MessageInfo) -> MailRecord {
    MailRecord {
        uid: m.uid,
        guid: m.guid.into_bytes(),
        flags: MailFlags(m.flags),
        keywords: m.keywords.into_iter().map(String::into_bytes).collect(),
        modseq: m.modseq,
        pvt_modseq: m.pvt_modseq,
        received_date: m.received.unwrap_or(0),
        saved_date: m.saved.unwrap_or(0),
        virtual_size: m.virtual_size.unwrap_or(0),
        pop3_uidl: m.pop3_uidl.map(String::into_bytes),
        pop3_order: m.pop3_order.unwrap_or(0),
    }
}

/// Adds the UID ranges a log record names. Every mail in them may be
/// changed by a record, so a partial snapshot keeps them all (a range
/// record is then turned into per-mail changes exactly as from a whole
/// snapshot).
fn add_touched(r: &mut Vec<(u32, u32)>, c: &st::LogChange) {
    match &c.kind {
        st::LogChangeKind::Append { uids } => r.extend(uids.iter().map(|&u| (u, u))),
        st::LogChangeKind::Flags { uid1, uid2, .. }
        | st::LogChangeKind::ExpungeRange { uid1, uid2 } => r.push((*uid1, *uid2)),
        st::LogChangeKind::Keyword { ranges, .. } | st::LogChangeKind::KeywordReset { ranges } => {
            r.extend(ranges.iter().map(|&(a, b)| (a, b.max(a))))
        }
        st::LogChangeKind::Expunge { uid, .. } | st::LogChangeKind::Modseq { uid, .. } => {
            r.push((*uid, *uid))
        }
        st::LogChangeKind::Attribute { .. } => {}
    }
}

/// Sorts and merges UID ranges (adjacent ones too).
fn touched_ranges_merge(mut r: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
    r.sort_unstable();
    let mut merged: Vec<(u32, u32)> = Vec::with_capacity(r.len());
    for (a, b) in r {
        match merged.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    merged
}

/// Whether every range of `inner` lies within `outer` (both merged).
fn covers(outer: &[(u32, u32)], inner: &[(u32, u32)]) -> bool {
    inner.iter().all(|&(a, b)| {
        let i = outer.partition_point(|r| r.1 < a);
        outer.get(i).is_some_and(|r| r.0 <= a && b <= r.1)
    })
}

fn in_ranges(ranges: &[(u32, u32)], uid: u32) -> bool {
    let i = ranges.partition_point(|r| r.1 < uid);
    ranges.get(i).is_some_and(|r| r.0 <= uid)
}
