//! An in-memory replica for tests and demos. It keeps what a Dovecot
//! replica keeps that matters to dsync: mailboxes with GUID, UIDVALIDITY,
//! UIDNEXT and HIGHESTMODSEQ, mails with flags/keywords/modseqs, a change log
//! per mailbox, a mailbox-list log, subscriptions and attributes.
//!
//! Modseqs follow Dovecot's shape: every change to a mail raises the
//! mailbox's HIGHESTMODSEQ by one and gives the mail that modseq.

use std::collections::{BTreeMap, BTreeSet};

use dsync_protocol::hash::{mailbox_name_hash, message_guid_128};
use dsync_protocol::{AttributeType, Guid128, MailFlags};

use crate::storage::*;

/// One stored mail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemMail {
    pub meta: MailRecord,
    pub body: Vec<u8>,
}

/// One mailbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemMailbox {
    pub guid: Guid128,
    pub uid_validity: u32,
    pub uid_next: u32,
    pub first_recent_uid: u32,
    pub highest_modseq: u64,
    pub mails: BTreeMap<u32, MemMail>,
    pub log: Vec<LogChange>,
    pub log_first_modseq: u64,
    pub attributes: BTreeMap<(u8, Vec<u8>), AttributeRecord>,
    /// Changed by a sync since the last status update: the final status
    /// update then costs one more modseq, as in Dovecot.
    pub dirty: bool,
    /// Keyword names registered in the index; registering one costs a modseq.
    pub known_keywords: BTreeSet<Vec<u8>>,
}

impl MemMailbox {
    fn new(guid: Guid128, uid_validity: u32) -> MemMailbox {
        MemMailbox {
            guid,
            uid_validity,
            uid_next: 1,
            first_recent_uid: 1,
            highest_modseq: 1,
            mails: BTreeMap::new(),
            log: Vec::new(),
            log_first_modseq: 0,
            attributes: BTreeMap::new(),
            dirty: false,
            known_keywords: BTreeSet::new(),
        }
    }

    fn bump(&mut self) -> u64 {
        self.highest_modseq += 1;
        self.highest_modseq
    }

    fn status(&self) -> MailboxStatus {
        MailboxStatus {
            guid: self.guid,
            uid_validity: self.uid_validity,
            uid_next: self.uid_next,
            messages: self.mails.len() as u32,
            first_recent_uid: self.first_recent_uid,
            highest_modseq: self.highest_modseq,
            highest_pvt_modseq: 0,
        }
    }

    fn expunge(&mut self, uid: u32, sync: bool) -> bool {
        match self.mails.remove(&uid) {
            Some(m) => {
                let modseq = self.bump();
                self.log.push(LogChange {
                    modseq,
                    uid,
                    sync,
                    kind: LogChangeKind::Expunge(Some(message_guid_128(&m.meta.guid))),
                });
                self.dirty |= sync;
                true
            }
            None => false,
        }
    }

    fn save(&mut self, meta: MailRecord, body: Vec<u8>, sync: bool) {
        let mut meta = meta;
        let modseq = self.bump().max(meta.modseq);
        self.highest_modseq = modseq;
        meta.modseq = modseq;
        self.dirty |= sync;
        self.uid_next = self.uid_next.max(meta.uid.saturating_add(1));
        self.log.push(LogChange {
            modseq,
            uid: meta.uid,
            sync,
            kind: LogChangeKind::Modseq,
        });
        self.mails.insert(meta.uid, MemMail { meta, body });
    }

    /// Applies flag/keyword changes to one mail, logging only real changes.
    #[allow(clippy::too_many_arguments)]
    fn change_flags(
        &mut self,
        uid: u32,
        add: MailFlags,
        remove: MailFlags,
        add_kw: &[Vec<u8>],
        remove_kw: &[Vec<u8>],
        min_modseq: u64,
        sync: bool,
    ) -> bool {
        let Some(mail) = self.mails.get(&uid) else {
            return false;
        };
        let old = mail.meta.flags.0;
        let new = (old | add.0) & !remove.0 & !MailFlags::RECENT;
        let kws_before: BTreeSet<Vec<u8>> = mail.meta.keywords.iter().cloned().collect();
        let mut kws = kws_before.clone();
        for k in add_kw {
            kws.insert(k.clone());
        }
        for k in remove_kw {
            kws.remove(k);
        }
        let changed = new != old || kws != kws_before;
        if !changed && mail.meta.modseq >= min_modseq {
            return true;
        }
        for k in add_kw {
            if self.known_keywords.insert(k.clone()) {
                self.bump();
            }
        }
        let modseq = self.bump().max(min_modseq);
        self.highest_modseq = modseq;
        if new & !old != 0 || old & !new != 0 {
            self.log.push(LogChange {
                modseq,
                uid,
                sync,
                kind: LogChangeKind::Flags {
                    add: MailFlags(new & !old),
                    remove: MailFlags(old & !new),
                },
            });
        }
        for k in kws.difference(&kws_before) {
            self.log.push(LogChange {
                modseq,
                uid,
                sync,
                kind: LogChangeKind::KeywordAdd(k.clone()),
            });
        }
        for k in kws_before.difference(&kws) {
            self.log.push(LogChange {
                modseq,
                uid,
                sync,
                kind: LogChangeKind::KeywordRemove(k.clone()),
            });
        }
        if !changed {
            self.log.push(LogChange {
                modseq,
                uid,
                sync,
                kind: LogChangeKind::Modseq,
            });
        }
        self.dirty |= sync;
        if let Some(mail) = self.mails.get_mut(&uid) {
            mail.meta.flags = MailFlags(new);
            mail.meta.keywords = kws.into_iter().collect();
            mail.meta.modseq = modseq;
        }
        true
    }
}

/// A node of the mailbox list: a selectable mailbox or a `\NoSelect` dir.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemNode {
    Mailbox(MemMailbox),
    Dir,
}

/// An in-memory replica of one user's mail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryReplica {
    pub separator: u8,
    pub nodes: BTreeMap<MailboxName, MemNode>,
    pub subscriptions: BTreeSet<MailboxName>,
    pub mailbox_log: Vec<MailboxLogRecord>,
    /// Wall clock used for log records of direct operations.
    pub now: i64,
    /// Held by [`Action::LockUser`].
    pub user_locked: bool,
    /// Another process holds the user lock: [`Action::LockUser`] fails.
    pub lock_held_elsewhere: bool,
    /// Body of the last `M` received, for [`BodySource::Incoming`].
    incoming: Vec<u8>,
}

impl Default for MemoryReplica {
    fn default() -> Self {
        MemoryReplica::new()
    }
}

fn name_str(name: &[Vec<u8>]) -> String {
    String::from_utf8_lossy(&join_name(name, b'/')).into_owned()
}

/// Splits a `/`-separated name.
pub fn parse_name(s: &str) -> MailboxName {
    s.split('/').map(|c| c.as_bytes().to_vec()).collect()
}

impl MemoryReplica {
    pub fn new() -> MemoryReplica {
        MemoryReplica {
            separator: b'/',
            nodes: BTreeMap::new(),
            subscriptions: BTreeSet::new(),
            mailbox_log: Vec::new(),
            now: 1_700_000_000,
            user_locked: false,
            lock_held_elsewhere: false,
            incoming: Vec::new(),
        }
    }

    fn hash(&self, name: &[Vec<u8>]) -> Guid128 {
        mailbox_name_hash(&join_name(name, self.separator))
    }

    /// The mailbox with this name.
    pub fn mailbox(&self, name: &str) -> Option<&MemMailbox> {
        match self.nodes.get(&parse_name(name)) {
            Some(MemNode::Mailbox(m)) => Some(m),
            _ => None,
        }
    }

    pub fn mailbox_mut(&mut self, name: &str) -> Option<&mut MemMailbox> {
        match self.nodes.get_mut(&parse_name(name)) {
            Some(MemNode::Mailbox(m)) => Some(m),
            _ => None,
        }
    }

    fn by_guid_mut(&mut self, guid: Guid128) -> Option<&mut MemMailbox> {
        self.nodes.values_mut().find_map(|n| match n {
            MemNode::Mailbox(m) if m.guid == guid => Some(m),
            _ => None,
        })
    }

    fn name_of_guid(&self, guid: Guid128) -> Option<MailboxName> {
        self.nodes.iter().find_map(|(k, n)| match n {
            MemNode::Mailbox(m) if m.guid == guid => Some(k.clone()),
            _ => None,
        })
    }

    /// Names of all selectable mailboxes.
    pub fn mailbox_names(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, n)| matches!(n, MemNode::Mailbox(_)))
            .map(|(k, _)| name_str(k))
            .collect()
    }

    // ---- direct operations (what a user or delivery does) ----

    /// Creates a mailbox (parents become directories). Creation writes no
    /// mailbox-log record, like Dovecot.
    pub fn create_mailbox(
        &mut self,
        name: &str,
        guid: Guid128,
        uid_validity: u32,
    ) -> Result<(), StorageError> {
        let name = parse_name(name);
        self.create_at(name, guid, uid_validity)
    }

    fn create_at(
        &mut self,
        name: MailboxName,
        guid: Guid128,
        uid_validity: u32,
    ) -> Result<(), StorageError> {
        if let Some(MemNode::Mailbox(_)) = self.nodes.get(&name) {
            return Err(StorageError::Exists(name_str(&name)));
        }
        if self.by_guid_mut(guid).is_some() {
            return Err(StorageError::Exists(format!("mailbox GUID {guid}")));
        }
        for i in 1..name.len() {
            self.nodes.entry(name[..i].to_vec()).or_insert(MemNode::Dir);
        }
        self.nodes
            .insert(name, MemNode::Mailbox(MemMailbox::new(guid, uid_validity)));
        Ok(())
    }

    /// Delivers a mail with the next UID.
    pub fn deliver(
        &mut self,
        mailbox: &str,
        guid: &str,
        body: &[u8],
        received: i64,
    ) -> Result<u32, StorageError> {
        let now = self.now;
        let mb = self
            .mailbox_mut(mailbox)
            .ok_or_else(|| StorageError::NotFound(mailbox.into()))?;
        let uid = mb.uid_next;
        let meta = MailRecord {
            uid,
            guid: guid.as_bytes().to_vec(),
            received_date: if received == 0 { now } else { received },
            saved_date: now,
            virtual_size: body.len() as u64,
            ..MailRecord::default()
        };
        mb.save(meta, body.to_vec(), false);
        Ok(uid)
    }

    pub fn add_flags(&mut self, mailbox: &str, uid: u32, flags: u8, keywords: &[&str]) -> bool {
        let kw: Vec<Vec<u8>> = keywords.iter().map(|k| k.as_bytes().to_vec()).collect();
        self.mailbox_mut(mailbox)
            .map(|m| m.change_flags(uid, MailFlags(flags), MailFlags(0), &kw, &[], 0, false))
            .unwrap_or(false)
    }

    pub fn remove_flags(&mut self, mailbox: &str, uid: u32, flags: u8, keywords: &[&str]) -> bool {
        let kw: Vec<Vec<u8>> = keywords.iter().map(|k| k.as_bytes().to_vec()).collect();
        self.mailbox_mut(mailbox)
            .map(|m| m.change_flags(uid, MailFlags(0), MailFlags(flags), &[], &kw, 0, false))
            .unwrap_or(false)
    }

    pub fn expunge(&mut self, mailbox: &str, uid: u32) -> bool {
        self.mailbox_mut(mailbox)
            .map(|m| m.expunge(uid, false))
            .unwrap_or(false)
    }

    /// Moves a mail to another mailbox (save there with the next UID, expunge here).
    pub fn move_mail(&mut self, from: &str, uid: u32, to: &str) -> Result<u32, StorageError> {
        let src = self.mailbox(from).and_then(|m| m.mails.get(&uid)).cloned();
        let Some(mail) = src else {
            return Err(StorageError::NotFound(format!("{from} uid {uid}")));
        };
        let dst = self
            .mailbox_mut(to)
            .ok_or_else(|| StorageError::NotFound(to.into()))?;
        let new_uid = dst.uid_next;
        let mut meta = mail.meta.clone();
        meta.uid = new_uid;
        meta.modseq = 0;
        dst.save(meta, mail.body, false);
        self.expunge(from, uid);
        Ok(new_uid)
    }

    /// Deletes a mailbox and logs the deletion. INBOX cannot be deleted:
    /// its mails are expunged and the deletion is refused, as in Dovecot.
    pub fn delete_mailbox(&mut self, name: &str) -> Result<(), StorageError> {
        let n = parse_name(name);
        self.delete_at(&n, self.now)
    }

    fn delete_at(&mut self, name: &MailboxName, ts: i64) -> Result<(), StorageError> {
        let guid = match self.nodes.get_mut(name) {
            Some(MemNode::Mailbox(m)) => {
                if name.len() == 1 && name[0].eq_ignore_ascii_case(b"INBOX") {
                    let uids: Vec<u32> = m.mails.keys().copied().collect();
                    for u in uids {
                        m.expunge(u, true);
                    }
                    return Err(StorageError::NotPossible("INBOX can't be deleted".into()));
                }
                m.guid
            }
            _ => return Err(StorageError::NotFound(name_str(name))),
        };
        let has_children = self
            .nodes
            .keys()
            .any(|k| k.len() > name.len() && k.starts_with(name));
        if has_children {
            self.nodes.insert(name.clone(), MemNode::Dir);
        } else {
            self.nodes.remove(name);
        }
        self.mailbox_log.push(MailboxLogRecord {
            kind: MailboxLogKind::DeleteMailbox,
            key: guid,
            timestamp: ts,
        });
        Ok(())
    }

    /// Renames a mailbox with its children and logs the new name.
    pub fn rename(&mut self, from: &str, to: &str) -> Result<(), StorageError> {
        self.rename_at(&parse_name(from), &parse_name(to), self.now)
    }

    fn rename_at(
        &mut self,
        from: &MailboxName,
        to: &MailboxName,
        ts: i64,
    ) -> Result<(), StorageError> {
        if !self.nodes.contains_key(from) {
            return Err(StorageError::NotFound(name_str(from)));
        }
        if matches!(self.nodes.get(to), Some(MemNode::Mailbox(_))) || to.starts_with(from) {
            return Err(StorageError::Exists(name_str(to)));
        }
        let moved: Vec<MailboxName> = self
            .nodes
            .keys()
            .filter(|k| k.starts_with(from))
            .cloned()
            .collect();
        for i in 1..to.len() {
            self.nodes.entry(to[..i].to_vec()).or_insert(MemNode::Dir);
        }
        for k in moved {
            if let Some(n) = self.nodes.remove(&k) {
                let mut nk = to.clone();
                nk.extend_from_slice(&k[from.len()..]);
                if matches!(n, MemNode::Dir) && self.nodes.contains_key(&nk) {
                    continue;
                }
                self.nodes.insert(nk.clone(), n);
                let key = self.hash(&nk);
                self.mailbox_log.push(MailboxLogRecord {
                    kind: MailboxLogKind::Rename,
                    key,
                    timestamp: ts,
                });
            }
        }
        Ok(())
    }

    pub fn subscribe(&mut self, name: &str, subscribed: bool) {
        let n = parse_name(name);
        self.set_subscribed(n, subscribed, self.now);
    }

    fn set_subscribed(&mut self, name: MailboxName, subscribed: bool, ts: i64) {
        let key = self.hash(&name);
        let kind = if subscribed {
            MailboxLogKind::Subscribe
        } else {
            MailboxLogKind::Unsubscribe
        };
        if subscribed {
            self.subscriptions.insert(name);
        } else {
            self.subscriptions.remove(&name);
        }
        self.mailbox_log.push(MailboxLogRecord {
            kind,
            key,
            timestamp: ts,
        });
    }

    pub fn set_attribute(
        &mut self,
        mailbox: &str,
        attr_type: AttributeType,
        key: &str,
        value: Option<&str>,
    ) -> bool {
        let now = self.now;
        let Some(mb) = self.mailbox_mut(mailbox) else {
            return false;
        };
        let modseq = mb.bump();
        let t = attr_tag(attr_type);
        mb.attributes.insert(
            (t, key.as_bytes().to_vec()),
            AttributeRecord {
                attr_type,
                key: key.as_bytes().to_vec(),
                value: value.map(|v| v.as_bytes().to_vec()),
                last_change: now,
                modseq,
            },
        );
        let _ = now;
        true
    }

    /// Forgets the mailbox's change log (as after transaction-log rotations).
    pub fn rotate_log(&mut self, mailbox: &str) {
        if let Some(mb) = self.mailbox_mut(mailbox) {
            mb.log.clear();
            mb.log_first_modseq = mb.highest_modseq + 1;
        }
    }

    // ---- the storage interface ----

    /// Answers a query.
    pub fn answer(&self, q: &Query) -> Answer {
        match q {
            Query::Tree => Answer::Tree(TreeSnapshot {
                separator: self.separator,
                mailboxes: self
                    .nodes
                    .iter()
                    .map(|(k, n)| match n {
                        MemNode::Mailbox(m) => MailboxEntry {
                            name: k.clone(),
                            guid: Some(m.guid),
                            uid_validity: m.uid_validity,
                            uid_next: m.uid_next,
                        },
                        MemNode::Dir => MailboxEntry {
                            name: k.clone(),
                            guid: None,
                            uid_validity: 0,
                            uid_next: 0,
                        },
                    })
                    .collect(),
                subscriptions: self.subscriptions.iter().cloned().collect(),
                log: self.mailbox_log.clone(),
            }),
            Query::MailboxStatus(guid) => {
                Answer::MailboxStatus(self.nodes.values().find_map(|n| match n {
                    MemNode::Mailbox(m) if m.guid == *guid => Some(m.status()),
                    _ => None,
                }))
            }
            Query::LogReach(guid) => Answer::LogReach(self.nodes.values().find_map(|n| match n {
                // `log_first_modseq` is the first modseq logged (0: all).
                MemNode::Mailbox(m) if m.guid == *guid => {
                    Some(m.log_first_modseq.saturating_sub(1))
                }
                _ => None,
            })),
            Query::Mailbox(guid) | Query::MailboxUndated(guid) => {
                Answer::Mailbox(self.find_guid(*guid).map(|m| {
                    Box::new(MailboxSnapshot {
                        status: m.status(),
                        mails: m.mails.values().map(|x| x.meta.clone()).collect(),
                        log: m.log.clone(),
                        log_first_modseq: m.log_first_modseq,
                        attributes: m.attributes.values().cloned().collect(),
                        partial: None,
                    })
                }))
            }
            Query::MailboxSince {
                guid,
                last_common_uid,
                last_common_modseq,
            } => Answer::Mailbox(self.find_guid(*guid).map(|m| {
                // Only what a comparison since the state reads, as a large
                // store would answer; the rest is asked for by UID.
                let log: Vec<LogChange> = m
                    .log
                    .iter()
                    .filter(|c| c.modseq > *last_common_modseq)
                    .cloned()
                    .collect();
                let touched: BTreeSet<u32> = log.iter().map(|c| c.uid).collect();
                Box::new(MailboxSnapshot {
                    status: m.status(),
                    mails: m
                        .mails
                        .values()
                        .filter(|x| x.meta.uid > *last_common_uid || touched.contains(&x.meta.uid))
                        .map(|x| x.meta.clone())
                        .collect(),
                    log,
                    log_first_modseq: m.log_first_modseq,
                    attributes: m.attributes.values().cloned().collect(),
                    partial: Some((*last_common_uid, *last_common_modseq)),
                })
            })),
            Query::Mails { guid, uids } => Answer::Mails(
                self.find_guid(*guid)
                    .map(|m| {
                        uids.iter()
                            .filter_map(|u| m.mails.get(u).map(|x| x.meta.clone()))
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
        }
    }

    fn find_guid(&self, guid: Guid128) -> Option<&MemMailbox> {
        self.nodes.values().find_map(|n| match n {
            MemNode::Mailbox(m) if m.guid == guid => Some(m),
            _ => None,
        })
    }

    /// The body of a local mail.
    pub fn body(&self, r: &BodyRef) -> Option<&[u8]> {
        self.nodes.values().find_map(|n| match n {
            MemNode::Mailbox(m) if m.guid == r.mailbox => {
                m.mails.get(&r.uid).map(|x| x.body.as_slice())
            }
            _ => None,
        })
    }

    /// Remembers the data block of the last received `M`.
    pub fn set_incoming_body(&mut self, body: Vec<u8>) {
        self.incoming = body;
    }

    /// Applies one action.
    pub fn apply(&mut self, a: &Action) -> Result<(), StorageError> {
        let nf = |what: String| StorageError::NotFound(what);
        match a {
            Action::LockUser { timeout_secs } => {
                if self.lock_held_elsewhere {
                    return Err(StorageError::Temp(format!(
                        "Couldn't lock the user after {timeout_secs} s"
                    )));
                }
                self.user_locked = true;
                Ok(())
            }
            Action::CreateMailbox {
                name,
                guid,
                uid_validity,
            } => self.create_at(name.clone(), *guid, *uid_validity),
            Action::CreateDir { name } => {
                for i in 1..=name.len() {
                    self.nodes.entry(name[..i].to_vec()).or_insert(MemNode::Dir);
                }
                Ok(())
            }
            Action::DeleteMailbox { guid, timestamp } => {
                let name = self
                    .name_of_guid(*guid)
                    .ok_or_else(|| nf(format!("mailbox GUID {guid}")))?;
                self.delete_at(&name, *timestamp)
            }
            Action::DeleteDir { name, timestamp } => {
                match self.nodes.get(name) {
                    Some(MemNode::Dir) => {}
                    _ => return Err(nf(name_str(name))),
                }
                if self
                    .nodes
                    .keys()
                    .any(|k| k.len() > name.len() && k.starts_with(name))
                {
                    return Err(StorageError::Exists(format!(
                        "{} has children",
                        name_str(name)
                    )));
                }
                self.nodes.remove(name);
                let key = self.hash(name);
                self.mailbox_log.push(MailboxLogRecord {
                    kind: MailboxLogKind::DeleteDir,
                    key,
                    timestamp: *timestamp,
                });
                Ok(())
            }
            Action::Rename {
                from,
                to,
                timestamp,
            } => self.rename_at(from, to, *timestamp),
            Action::SetMailboxGuid { name, guid } => match self.nodes.get_mut(name) {
                Some(MemNode::Mailbox(m)) => {
                    m.guid = *guid;
                    Ok(())
                }
                _ => Err(nf(name_str(name))),
            },
            Action::SetSubscribed {
                name,
                subscribed,
                timestamp,
            } => {
                self.set_subscribed(name.clone(), *subscribed, *timestamp);
                Ok(())
            }
            Action::SetUidValidity {
                mailbox,
                uid_validity,
            } => {
                let m = self
                    .by_guid_mut(*mailbox)
                    .ok_or_else(|| nf(mailbox.to_string()))?;
                m.uid_validity = *uid_validity;
                Ok(())
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
                let m = self
                    .by_guid_mut(*mailbox)
                    .ok_or_else(|| nf(mailbox.to_string()))?;
                m.change_flags(
                    *uid,
                    *add,
                    *remove,
                    add_keywords,
                    remove_keywords,
                    *min_modseq,
                    true,
                );
                Ok(())
            }
            Action::ReplaceFlags {
                mailbox,
                uid,
                flags,
                keywords,
                min_modseq,
            } => {
                let m = self
                    .by_guid_mut(*mailbox)
                    .ok_or_else(|| nf(mailbox.to_string()))?;
                let Some(cur) = m.mails.get(uid).map(|x| x.meta.clone()) else {
                    return Ok(());
                };
                let remove_kw: Vec<Vec<u8>> = cur
                    .keywords
                    .iter()
                    .filter(|k| !keywords.contains(k))
                    .cloned()
                    .collect();
                m.change_flags(
                    *uid,
                    *flags,
                    MailFlags(!flags.0),
                    keywords,
                    &remove_kw,
                    *min_modseq,
                    true,
                );
                Ok(())
            }
            Action::Expunge { mailbox, uid } => {
                let m = self
                    .by_guid_mut(*mailbox)
                    .ok_or_else(|| nf(mailbox.to_string()))?;
                m.expunge(*uid, true);
                Ok(())
            }
            Action::MoveMail {
                mailbox,
                from_uid,
                to_uid,
            } => {
                let m = self
                    .by_guid_mut(*mailbox)
                    .ok_or_else(|| nf(mailbox.to_string()))?;
                if m.mails.contains_key(to_uid) {
                    return Err(StorageError::Exists(format!("uid {to_uid}")));
                }
                let Some(mail) = m.mails.get(from_uid).cloned() else {
                    return Err(nf(format!("uid {from_uid}")));
                };
                let mut meta = mail.meta;
                meta.uid = *to_uid;
                m.save(meta, mail.body, true);
                m.expunge(*from_uid, true);
                Ok(())
            }
            Action::CopyMail {
                mailbox,
                from_uid,
                mail,
            } => {
                let m = self
                    .by_guid_mut(*mailbox)
                    .ok_or_else(|| nf(mailbox.to_string()))?;
                let Some(src) = m.mails.get(from_uid).cloned() else {
                    return Err(nf(format!("uid {from_uid}")));
                };
                if m.mails.contains_key(&mail.uid) {
                    return Err(StorageError::Exists(format!("uid {}", mail.uid)));
                }
                m.save(new_meta(mail, src.body.len() as u64), src.body, true);
                Ok(())
            }
            Action::CopyToMailbox {
                from_mailbox,
                from_uid,
                to_mailbox,
                mail,
            } => {
                let src = self
                    .by_guid_mut(*from_mailbox)
                    .and_then(|m| m.mails.get(from_uid).cloned())
                    .ok_or_else(|| nf(format!("{from_mailbox} uid {from_uid}")))?;
                let m = self
                    .by_guid_mut(*to_mailbox)
                    .ok_or_else(|| nf(to_mailbox.to_string()))?;
                if m.mails.contains_key(&mail.uid) {
                    return Err(StorageError::Exists(format!("uid {}", mail.uid)));
                }
                let mut meta = new_meta(mail, src.body.len() as u64);
                meta.modseq = 0;
                m.save(meta, src.body, false);
                Ok(())
            }
            Action::SaveMail {
                mailbox,
                mail,
                body: BodySource::Incoming,
            } => {
                let body = std::mem::take(&mut self.incoming);
                let m = self
                    .by_guid_mut(*mailbox)
                    .ok_or_else(|| nf(mailbox.to_string()))?;
                if m.mails.contains_key(&mail.uid) {
                    return Err(StorageError::Exists(format!("uid {}", mail.uid)));
                }
                m.save(new_meta(mail, body.len() as u64), body.clone(), true);
                self.incoming = body;
                Ok(())
            }
            Action::RaiseStatus {
                mailbox,
                uid_next,
                highest_modseq,
                first_recent_uid,
            } => {
                let m = self
                    .by_guid_mut(*mailbox)
                    .ok_or_else(|| nf(mailbox.to_string()))?;
                m.uid_next = m.uid_next.max(*uid_next);
                m.highest_modseq = m.highest_modseq.max(*highest_modseq);
                if std::mem::take(&mut m.dirty) {
                    m.highest_modseq += 1;
                }
                m.first_recent_uid = m.first_recent_uid.max(*first_recent_uid);
                Ok(())
            }
            Action::SetAttribute {
                mailbox,
                attr_type,
                key,
                value,
                last_change,
            } => {
                let m = self
                    .by_guid_mut(*mailbox)
                    .ok_or_else(|| nf(mailbox.to_string()))?;
                let modseq = m.bump();
                m.attributes.insert(
                    (attr_tag(*attr_type), key.clone()),
                    AttributeRecord {
                        attr_type: *attr_type,
                        key: key.clone(),
                        value: value.clone(),
                        last_change: *last_change,
                        modseq,
                    },
                );
                Ok(())
            }
        }
    }

    /// A comparable view: name → (GUID, UIDVALIDITY, UIDNEXT, uid → (mail
    /// GUID, flags, sorted keywords)), and subscriptions.
    pub fn view(&self) -> ReplicaView {
        let mut mailboxes = BTreeMap::new();
        for (k, n) in &self.nodes {
            if let MemNode::Mailbox(m) = n {
                let mails = m
                    .mails
                    .values()
                    .map(|x| {
                        let mut kw: Vec<String> = x
                            .meta
                            .keywords
                            .iter()
                            .map(|k| String::from_utf8_lossy(k).into_owned())
                            .collect();
                        kw.sort();
                        (
                            x.meta.uid,
                            (
                                String::from_utf8_lossy(&x.meta.guid).into_owned(),
                                x.meta.flags.0,
                                kw,
                            ),
                        )
                    })
                    .collect();
                mailboxes.insert(
                    name_str(k),
                    MailboxView {
                        guid: m.guid,
                        uid_validity: m.uid_validity,
                        uid_next: m.uid_next,
                        mails,
                    },
                );
            }
        }
        ReplicaView {
            mailboxes,
            subscriptions: self.subscriptions.iter().map(|s| name_str(s)).collect(),
        }
    }
}

/// See [`MemoryReplica::view`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaView {
    pub mailboxes: BTreeMap<String, MailboxView>,
    pub subscriptions: BTreeSet<String>,
}

/// One mailbox of a [`ReplicaView`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailboxView {
    pub guid: Guid128,
    pub uid_validity: u32,
    pub uid_next: u32,
    pub mails: BTreeMap<u32, (String, u8, Vec<String>)>,
}

fn attr_tag(t: AttributeType) -> u8 {
    match t {
        AttributeType::Private => b'p',
        AttributeType::Shared => b's',
    }
}

fn new_meta(m: &NewMail, size: u64) -> MailRecord {
    MailRecord {
        uid: m.uid,
        guid: m.guid.clone(),
        flags: MailFlags(m.flags.0 & !MailFlags::RECENT),
        keywords: m.keywords.clone(),
        modseq: m.min_modseq,
        pvt_modseq: 0,
        received_date: m.received_date,
        saved_date: m.saved_date,
        virtual_size: size,
        pop3_uidl: m.pop3_uidl.clone(),
        pop3_order: m.pop3_order,
    }
}
