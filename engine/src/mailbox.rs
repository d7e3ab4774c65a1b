//! Per-mailbox sync: export of change records (`C`) and attributes (`A`),
//! and import: finding the last common UID, flag/keyword merge, expunges,
//! new mails with conflict-safe UID assignment, and mail requests.
//!
//! Everything here is a pure function of the local snapshot and the
//! remote's items; the results are [`Action`]s and `R` items.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use dsync_protocol::hash::message_guid_128;
use dsync_protocol::{
    Attribute, AttributeValue, ChangeType, Guid128, KeywordChange, KeywordOp, Mail, MailChange,
    MailFlags, MailRequest, Mailbox,
};

use crate::storage::*;

/// Changes one mail collected from the local change log since the last
/// common modseq (§4.1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UidChange {
    /// `Some(guid128)` when the mail was expunged.
    pub expunged: Option<Option<Guid128>>,
    pub add: u8,
    pub remove: u8,
    pub kw_add: BTreeSet<Vec<u8>>,
    pub kw_remove: BTreeSet<Vec<u8>>,
    pub kw_reset: bool,
}

/// Accumulates the change log after `since_modseq`, one entry per UID.
/// Records written by a sync are skipped, except expunges.
pub fn scan_log(snapshot: &MailboxSnapshot, since_modseq: u64) -> BTreeMap<u32, UidChange> {
    let mut out: BTreeMap<u32, UidChange> = BTreeMap::new();
    for rec in &snapshot.log {
        if rec.modseq <= since_modseq {
            continue;
        }
        let is_expunge = matches!(rec.kind, LogChangeKind::Expunge(_));
        if rec.sync && !is_expunge {
            continue;
        }
        let c = out.entry(rec.uid).or_default();
        if c.expunged.is_some() {
            continue;
        }
        match &rec.kind {
            LogChangeKind::Expunge(g) => {
                *c = UidChange {
                    expunged: Some(*g),
                    ..UidChange::default()
                };
            }
            LogChangeKind::Flags { add, remove } => {
                c.add = (c.add | add.0) & !remove.0;
                c.remove = (c.remove | remove.0) & !add.0;
            }
            LogChangeKind::KeywordAdd(k) => {
                c.kw_remove.remove(k);
                c.kw_add.insert(k.clone());
            }
            LogChangeKind::KeywordRemove(k) => {
                c.kw_add.remove(k);
                c.kw_remove.insert(k.clone());
            }
            LogChangeKind::KeywordReset => {
                c.kw_reset = true;
                c.kw_add.clear();
                c.kw_remove.clear();
            }
            LogChangeKind::Modseq => {}
        }
    }
    out
}

/// Which extra fields the exporter adds to `C` items (only when the
/// matching filter is in the handshake).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportFields {
    pub received_timestamp: bool,
    pub virtual_size: bool,
}

fn keyword_list(mail: &MailRecord, c: Option<&UidChange>) -> Vec<KeywordChange> {
    let current: BTreeSet<&Vec<u8>> = mail.keywords.iter().collect();
    let mut out = Vec::new();
    if let Some(c) = c {
        for k in &c.kw_add {
            if !current.contains(k) {
                out.push(KeywordChange {
                    op: KeywordOp::Add,
                    keyword: k.clone(),
                });
            }
        }
        for k in &c.kw_remove {
            if !current.contains(k) {
                out.push(KeywordChange {
                    op: KeywordOp::Remove,
                    keyword: k.clone(),
                });
            }
        }
    }
    for k in &mail.keywords {
        let added = c.map(|c| c.kw_add.contains(k)).unwrap_or(false);
        out.push(KeywordChange {
            op: if added {
                KeywordOp::AddFinal
            } else {
                KeywordOp::Final
            },
            keyword: k.clone(),
        });
    }
    out
}

/// The `C` list (§4.2) one item at a time, in UID order, so a large mailbox's
/// list never waits in memory as a whole: mails of the snapshot that are new
/// since the last common UID (all of them without one) or changed in the
/// log, merged with the log's expunges of mails no longer present.
///
/// Invariant: the snapshot's mails are sorted by UID and do not change
/// while the cursor is used.
#[derive(Clone, Debug)]
pub struct ChangeExport {
    last_common_uid: u32,
    fields: ExportFields,
    /// Next snapshot mail to look at.
    mail: usize,
    /// UIDs up to this one are done among the expunges.
    expunges_done: Option<u32>,
    /// The next expunge to send, once looked up (`Some(None)`: none left);
    /// looked up again only after it was sent, so the log is walked once.
    next_expunge: Option<Option<u32>>,
}

impl ChangeExport {
    pub fn new(last_common_uid: u32, fields: ExportFields) -> ChangeExport {
        ChangeExport {
            last_common_uid,
            fields,
            mail: 0,
            expunges_done: None,
            next_expunge: None,
        }
    }

    /// The next item, or `None` at the end of the list.
    pub fn next(
        &mut self,
        snapshot: &MailboxSnapshot,
        changes: &BTreeMap<u32, UidChange>,
    ) -> Option<MailChange> {
        let return_all = self.last_common_uid == 0;
        let mails = &snapshot.mails;
        while self.mail < mails.len()
            && !(return_all
                || mails[self.mail].uid > self.last_common_uid
                || changes.contains_key(&mails[self.mail].uid))
        {
            self.mail += 1;
        }
        let next_expunge = *self.next_expunge.get_or_insert_with(|| {
            let from = match self.expunges_done {
                Some(u) => std::ops::Bound::Excluded(u),
                None => std::ops::Bound::Unbounded,
            };
            changes
                .range((from, std::ops::Bound::Unbounded))
                .find(|(uid, c)| {
                    c.expunged.is_some()
                        && (return_all || **uid <= self.last_common_uid)
                        && mails.binary_search_by_key(*uid, |m| m.uid).is_err()
                })
                .map(|(uid, _)| *uid)
        });
        let expunge = next_expunge.and_then(|uid| changes.get_key_value(&uid));
        let mail = mails.get(self.mail);
        match (mail, expunge) {
            (Some(m), e) if e.is_none_or(|(uid, _)| m.uid < *uid) => {
                self.mail += 1;
                Some(self.mail_change(m, changes.get(&m.uid)))
            }
            (_, Some((uid, c))) => {
                self.expunges_done = Some(*uid);
                self.next_expunge = None;
                Some(MailChange {
                    change_type: ChangeType::Expunge,
                    uid: *uid,
                    guid: c.expunged.flatten().map(|g| g.to_hex().into_bytes()),
                    hdr_hash: None,
                    modseq: 0,
                    pvt_modseq: 0,
                    add_flags: MailFlags(0),
                    remove_flags: MailFlags(0),
                    final_flags: MailFlags(0),
                    keywords_reset: false,
                    keyword_changes: Vec::new(),
                    received_timestamp: 0,
                    virtual_size: 0,
                })
            }
            _ => None,
        }
    }

    fn mail_change(&self, mail: &MailRecord, c: Option<&UidChange>) -> MailChange {
        let change_type = if self.last_common_uid == 0 || mail.uid > self.last_common_uid {
            ChangeType::Save
        } else {
            ChangeType::FlagChange
        };
        let fields = self.fields;
        MailChange {
            change_type,
            uid: mail.uid,
            guid: Some(mail.guid.clone()),
            hdr_hash: None,
            modseq: mail.modseq,
            pvt_modseq: mail.pvt_modseq,
            add_flags: MailFlags(c.map(|c| c.add).unwrap_or(0)),
            remove_flags: MailFlags(c.map(|c| c.remove).unwrap_or(0)),
            final_flags: mail.flags,
            keywords_reset: c.map(|c| c.kw_reset).unwrap_or(false),
            keyword_changes: keyword_list(mail, c),
            received_timestamp: if fields.received_timestamp && change_type == ChangeType::Save {
                mail.received_date.max(1) as u64
            } else {
                0
            },
            virtual_size: if fields.virtual_size && change_type == ChangeType::Save {
                mail.virtual_size
            } else {
                0
            },
        }
    }
}

/// Builds the `A` list (§4.6): everything without state, else changes since
/// the last common modseq.
pub fn export_attributes(snapshot: &MailboxSnapshot, last_common_modseq: u64) -> Vec<Attribute> {
    snapshot
        .attributes
        .iter()
        .filter(|a| last_common_modseq == 0 || a.modseq > last_common_modseq)
        .filter(|a| a.value.is_some() || last_common_modseq > 0 || a.modseq > 0)
        .map(|a| Attribute {
            attr_type: a.attr_type,
            key: a.key.clone(),
            value: match &a.value {
                Some(v) => AttributeValue::Inline(v.clone()),
                None => AttributeValue::None,
            },
            deleted: a.value.is_none(),
            last_change: a.last_change,
            modseq: a.modseq,
        })
        .collect()
}

/// Decides one received attribute (§7.1). Returns the value to set, if the
/// remote's wins.
pub fn import_attribute(
    local: Option<&AttributeRecord>,
    remote: &Attribute,
    last_common_modseq: u64,
) -> Option<Option<Vec<u8>>> {
    let rvalue = match &remote.value {
        AttributeValue::Inline(v) if !remote.deleted => Some(v.clone()),
        _ => None,
    };
    let lvalue = local.and_then(|l| l.value.clone());
    let take = || Some(rvalue.clone());
    if rvalue.is_none() && lvalue.is_none() {
        return None;
    }
    let Some(local) = local else { return take() };
    let lm = local.modseq;
    if last_common_modseq > 0 {
        if lm <= last_common_modseq && last_common_modseq < remote.modseq {
            return take();
        }
        if remote.modseq <= last_common_modseq && last_common_modseq < lm {
            return None;
        }
    }
    if remote.last_change != local.last_change {
        return if remote.last_change > local.last_change {
            take()
        } else {
            None
        };
    }
    if rvalue == lvalue {
        return None;
    }
    if remote.modseq != lm {
        return if remote.modseq > lm { take() } else { None };
    }
    // Equal modseqs: the byte-wise larger value wins (a value beats none).
    if rvalue > lvalue {
        take()
    } else {
        None
    }
}

/// §5.4 for one bit set: returns (local wanted, remote wanted).
#[allow(clippy::too_many_arguments)]
fn merge_bits(
    lf: u8,
    mut la: u8,
    mut lr: u8,
    rf: u8,
    mut ra: u8,
    mut rr: u8,
    prefer_remote: bool,
) -> (u8, u8) {
    let c1 = la & rr;
    if prefer_remote {
        la &= !c1;
    } else {
        rr &= !c1;
    }
    let c2 = lr & ra;
    if prefer_remote {
        lr &= !c2;
    } else {
        ra &= !c2;
    }
    let diff = lf ^ rf;
    let add = (la | ra) & diff;
    let rem = (lr | rr) & diff;
    let mut lw = (lf | add) & !rem;
    let rw = (rf | add) & !rem;
    if lw != rw && prefer_remote {
        lw = rw;
    }
    (lw, rw)
}

/// The remote's keyword sets from a change: (final, added, removed).
type KeywordSet = BTreeSet<Vec<u8>>;

fn remote_keywords(c: &MailChange) -> (KeywordSet, KeywordSet, KeywordSet) {
    let (mut f, mut a, mut r) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for k in &c.keyword_changes {
        match k.op {
            KeywordOp::Final => {
                f.insert(k.keyword.clone());
            }
            KeywordOp::AddFinal => {
                f.insert(k.keyword.clone());
                a.insert(k.keyword.clone());
            }
            KeywordOp::Add => {
                a.insert(k.keyword.clone());
            }
            KeywordOp::Remove => {
                r.insert(k.keyword.clone());
            }
        }
    }
    (f, a, r)
}

/// Flag and keyword merge of a mail present on both sides (§5.4); returns
/// the action to apply locally, if any.
pub fn merge_flags(
    mailbox: Guid128,
    local: &MailRecord,
    local_change: Option<&UidChange>,
    remote: &MailChange,
    remote_highest_modseq: u64,
    master: bool,
) -> Option<Action> {
    let prefer_remote = local.modseq < remote.modseq || (local.modseq == remote.modseq && !master);
    let empty = UidChange::default();
    let lc = local_change.unwrap_or(&empty);
    let lf = local.flags.0 & !MailFlags::RECENT;
    let rf = remote.final_flags.0 & !MailFlags::RECENT;
    let (lw, _) = merge_bits(
        lf,
        lc.add,
        lc.remove,
        rf,
        remote.add_flags.0,
        remote.remove_flags.0,
        prefer_remote,
    );
    let mut remote_changed = lw != rf;

    let (rkf, rka, rkr) = remote_keywords(remote);
    let lkf: BTreeSet<Vec<u8>> = local.keywords.iter().cloned().collect();
    let all: BTreeSet<&Vec<u8>> = lkf
        .iter()
        .chain(rkf.iter())
        .chain(rka.iter())
        .chain(rkr.iter())
        .chain(lc.kw_add.iter())
        .collect();
    let (mut add_kw, mut rem_kw) = (Vec::new(), Vec::new());
    for k in all {
        let b = |s: &BTreeSet<Vec<u8>>| u8::from(s.contains(k));
        let (w, _) = merge_bits(
            b(&lkf),
            b(&lc.kw_add),
            b(&lc.kw_remove),
            b(&rkf),
            b(&rka),
            b(&rkr),
            prefer_remote,
        );
        if w != b(&rkf) {
            remote_changed = true;
        }
        if w == 1 && b(&lkf) == 0 {
            add_kw.push(k.clone());
        } else if w == 0 && b(&lkf) == 1 {
            rem_kw.push(k.clone());
        }
    }
    let mut new_modseq = remote.modseq;
    if remote_changed && new_modseq <= remote_highest_modseq {
        new_modseq = remote_highest_modseq.saturating_add(1);
    }
    let add = lw & !lf;
    let rem = lf & !lw;
    // Equal flags and keywords on both sides: nothing to write. Raising
    // only this mail's modseq to the remote's would be an action per mail
    // in every full comparison of equal replicas (a Maildir mail's own
    // modseq cannot even be stored); the modseq matters only when this
    // side's flags differ from the remote's, and then it is raised.
    let unchanged = add == 0 && rem == 0 && add_kw.is_empty() && rem_kw.is_empty();
    if unchanged && (!remote_changed || local.modseq >= new_modseq) {
        return None;
    }
    Some(Action::UpdateFlags {
        mailbox,
        uid: local.uid,
        add: MailFlags(add),
        remove: MailFlags(rem),
        add_keywords: add_kw,
        remove_keywords: rem_kw,
        min_modseq: new_modseq,
    })
}

/// Backup destination: replace flags/keywords with the remote's.
fn revert_flags(mailbox: Guid128, local: &MailRecord, remote: &MailChange) -> Option<Action> {
    let flags = MailFlags((remote.final_flags.0 | remote.add_flags.0) & !MailFlags::RECENT);
    let (f, a, _) = remote_keywords(remote);
    let kws: Vec<Vec<u8>> = f.union(&a).cloned().collect();
    let mut cur = local.keywords.clone();
    cur.sort();
    // Already equal: the mailbox's HIGHESTMODSEQ is raised to the
    // remote's at the end of the mailbox anyway.
    if flags == local.flags && cur == kws {
        return None;
    }
    Some(Action::ReplaceFlags {
        mailbox,
        uid: local.uid,
        flags,
        keywords: kws,
        min_modseq: remote.modseq,
    })
}

/// Filters from the handshake that decide whether a missing mail is copied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailFilter {
    pub since: i64,
    pub until: i64,
    pub max_size: u64,
    /// `-O`: (negated, flag or keyword name).
    pub flag: Option<(bool, Vec<u8>)>,
}

impl MailFilter {
    fn skips(&self, c: &MailChange) -> bool {
        let received = c.received_timestamp as i64;
        if self.since > 0 && received != 0 && received < self.since {
            return true;
        }
        if self.until > 0 && received != 0 && received > self.until {
            return true;
        }
        if self.max_size > 0
            && c.virtual_size != 0
            && c.virtual_size != u64::MAX
            && c.virtual_size > self.max_size
        {
            return true;
        }
        if let Some((neg, name)) = &self.flag {
            let has = match system_flag_bit(name) {
                Some(bit) => c.final_flags.0 & bit != 0,
                None => c.keyword_changes.iter().any(|k| {
                    &k.keyword == name && matches!(k.op, KeywordOp::Final | KeywordOp::AddFinal)
                }),
            };
            return has == *neg;
        }
        false
    }
}

/// The bit of a system flag name (`\Seen`, ...), case-insensitively.
pub fn system_flag_bit(name: &[u8]) -> Option<u8> {
    let n = String::from_utf8_lossy(name).to_ascii_lowercase();
    Some(match n.as_str() {
        "\\answered" => MailFlags::ANSWERED,
        "\\flagged" => MailFlags::FLAGGED,
        "\\deleted" => MailFlags::DELETED,
        "\\seen" => MailFlags::SEEN,
        "\\draft" => MailFlags::DRAFT,
        _ => return None,
    })
}

/// Inputs of one mailbox import.
#[derive(Clone, Debug)]
pub struct ImportInput<'a> {
    pub local: &'a MailboxSnapshot,
    /// Local log scan since the last common modseq.
    pub local_changes: &'a BTreeMap<u32, UidChange>,
    pub remote: &'a Mailbox,
    pub remote_changes: &'a [MailChange],
    pub last_common_uid: u32,
    pub last_common_modseq: u64,
    pub master: bool,
    /// Backup destination without `-1`: make local identical to remote.
    pub revert: bool,
    pub filter: &'a MailFilter,
}

/// One remote mail waiting for its body: the local UIDs to save it under,
/// each with the index (in the remote change list the import was given) of
/// the change that describes that instance. The first instance's change
/// names the mail (GUID, remote UID).
///
/// Invariant: no GUID or change is copied here. A full sync into an empty
/// replica keeps one of these per mail until its body arrives, so its size
/// is the per-mail memory of the receiving side (32 bytes with one
/// instance, no heap).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingMail {
    pub uid: u32,
    pub change: u32,
    /// Further instances (the same GUID more than once).
    pub more: Vec<(u32, u32)>,
}

impl PendingMail {
    /// Every (local UID, change index) instance, the first one first.
    pub fn instances(&self) -> impl Iterator<Item = (u32, usize)> + '_ {
        std::iter::once((self.uid, self.change as usize))
            .chain(self.more.iter().map(|&(u, c)| (u, c as usize)))
    }

    /// The change that names the mail.
    pub fn first_change<'c>(&self, changes: &'c [MailChange]) -> Option<&'c MailChange> {
        changes.get(self.change as usize)
    }

    /// The request for this mail's body (by GUID, or by remote UID when the
    /// remote has no GUIDs).
    pub fn request(&self, changes: &[MailChange]) -> MailRequest {
        let c = self.first_change(changes);
        match c.and_then(|c| c.guid.as_ref()).filter(|g| !g.is_empty()) {
            Some(g) => MailRequest {
                guid: Some(g.clone()),
                uid: 0,
            },
            None => MailRequest {
                guid: None,
                uid: c.map_or(0, |c| c.uid),
            },
        }
    }
}

/// The result of an import decision.
#[derive(Clone, Debug, Default)]
pub struct ImportPlan {
    pub actions: Vec<Action>,
    /// Mails to request, in request order (see [`PendingMail::request`]).
    pub pending: Vec<PendingMail>,
    pub last_common_uid: u32,
    /// Backup destination whose UIDs cannot be made identical.
    pub delete_mailbox: Option<String>,
    /// The state does not match the mailbox.
    pub require_full_resync: Option<String>,
    /// Mails expunged and saved, for the final message count.
    pub expunged: u32,
    pub saved: u32,
}

/// `ImportPlan::pending` indexed by GUID while planning: a linear search per
/// new mail made planning a large full sync quadratic.
type PendingIndex<'a> = HashMap<&'a [u8], usize>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    Local,
    Remote,
    Both,
}

/// One new mail of either side while planning. Compact (indexes as `u32`,
/// [`NONE`] for none): a full sync plans one per mail of the mailbox.
#[derive(Clone, Debug)]
struct NewMailRec<'a> {
    guid: &'a [u8],
    uid: u32,
    /// Remote change (Remote / Both).
    change: u32,
    final_uid: u32,
    link: u32,
    /// The previous record of the same group ([`GroupKey`]).
    prev_in_group: u32,
    origin: Origin,
    usable: bool,
    settled: bool,
}

const NONE: u32 = u32::MAX;

fn some(i: u32) -> Option<usize> {
    (i != NONE).then_some(i as usize)
}

/// What makes two new mails the same mail: the GUID, or (a remote without
/// GUIDs) the remote UID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum GroupKey<'a> {
    Guid(&'a [u8]),
    RemoteUid(u32),
}

fn guid128_of_change(c: &MailChange) -> Option<Guid128> {
    c.guid.as_deref().and_then(Guid128::parse_hex)
}

/// Runs the import of one mailbox (§5.1–§5.7).
pub fn import(inp: &ImportInput<'_>) -> ImportPlan {
    let mbox = inp.local.status.guid;
    let mut plan = ImportPlan::default();
    let mut pending_by_guid = PendingIndex::new();
    let local = &inp.local.mails;
    let by_uid: HashMap<u32, usize> = local.iter().enumerate().map(|(i, m)| (m.uid, i)).collect();
    let local_expunge_guid = |uid: u32| -> Option<Option<Guid128>> {
        inp.local_changes.get(&uid).and_then(|c| c.expunged)
    };
    let local_uidnext = inp.local.status.uid_next;
    let remote_uidnext = inp.remote.uid_next;
    // Expunges are applied after saves and moves (so a mail that is
    // expunged here can still be the source of a copy).
    let mut expunges: Vec<u32> = Vec::new();
    let expunge = |exp: &mut Vec<u32>, uid: u32| exp.push(uid);
    let flag_action = |m: &MailRecord, c: &MailChange| -> Option<Action> {
        if inp.revert {
            revert_flags(mbox, m, c)
        } else {
            merge_flags(
                mbox,
                m,
                inp.local_changes.get(&m.uid),
                c,
                inp.remote.highest_modseq,
                inp.master,
            )
        }
    };

    let stateful = inp.last_common_uid != 0 || inp.last_common_modseq != 0;
    let mut remote_new: Vec<usize> = Vec::new();
    let common: u32;

    if stateful {
        common = inp.last_common_uid;
        if local_uidnext <= common && common > 0 {
            plan.require_full_resync = Some(format!(
                "local UIDNEXT {local_uidnext} <= last common UID {common}"
            ));
            return plan;
        }
        if inp.local.status.highest_modseq < inp.last_common_modseq {
            plan.require_full_resync = Some(format!(
                "local HIGHESTMODSEQ {} < last common modseq {}",
                inp.local.status.highest_modseq, inp.last_common_modseq
            ));
            return plan;
        }
        for (ci, c) in inp.remote_changes.iter().enumerate() {
            if c.uid > common {
                if c.change_type == ChangeType::Save && !inp.filter.skips(c) {
                    remote_new.push(ci);
                }
                continue;
            }
            let Some(&li) = by_uid.get(&c.uid) else {
                continue;
            };
            let m = &local[li];
            match c.change_type {
                ChangeType::Expunge => {
                    if let Some(g) = guid128_of_change(c) {
                        if g != message_guid_128(&m.guid) {
                            plan.require_full_resync =
                                Some(format!("unexpected GUID mismatch for UID {}", c.uid));
                            return plan;
                        }
                    }
                    expunge(&mut expunges, c.uid);
                }
                _ => {
                    if let Some(g) = &c.guid {
                        if !g.is_empty() && *g != m.guid {
                            plan.require_full_resync =
                                Some(format!("unexpected GUID mismatch for UID {}", c.uid));
                            return plan;
                        }
                    }
                    if let Some(a) = flag_action(m, c) {
                        plan.actions.push(a);
                    }
                }
            }
        }
    } else {
        // §5.2: walk local mails and remote changes in UID order until the
        // first mismatch.
        let mut li = 0usize;
        let mut found = false;
        let mut last_common = 0u32;
        let mut maybe_expunge: Vec<u32> = Vec::new();
        let mut maybe_save: Vec<usize> = Vec::new();
        for (ci, c) in inp.remote_changes.iter().enumerate() {
            let is_save = c.change_type != ChangeType::Expunge;
            if found {
                if is_save && !inp.filter.skips(c) {
                    remote_new.push(ci);
                }
                continue;
            }
            while li < local.len() && local[li].uid < c.uid {
                maybe_expunge.push(local[li].uid);
                li += 1;
            }
            let filtered = is_save && inp.filter.skips(c);
            let mut mismatch = false;
            let mut matched = false;
            if li == local.len() {
                if !is_save || filtered {
                    // Nothing to decide.
                } else if c.uid >= local_uidnext {
                    mismatch = true;
                } else if inp.revert {
                    plan.delete_mailbox = Some(format!(
                        "UID={} GUID={} is missing locally",
                        c.uid,
                        show(&c.guid)
                    ));
                    return plan;
                } else {
                    match local_expunge_guid(c.uid) {
                        Some(Some(g)) if Some(g) == c.guid.as_deref().map(message_guid_128) => {
                            last_common = c.uid;
                            matched = true;
                        }
                        _ => mismatch = true,
                    }
                }
            } else if !is_save && c.guid.is_none() {
                // Undecidable expunge.
            } else if local[li].uid == c.uid {
                let m = &local[li];
                let same = if is_save {
                    c.guid.as_deref() == Some(m.guid.as_slice())
                } else {
                    guid128_of_change(c) == Some(message_guid_128(&m.guid))
                };
                if same {
                    last_common = c.uid;
                    matched = true;
                } else if inp.revert {
                    plan.delete_mailbox =
                        Some(format!("UID={} has a different mail locally", c.uid));
                    return plan;
                } else {
                    mismatch = true;
                }
            } else if filtered {
                // Ignored.
            } else if inp.revert && is_save {
                plan.delete_mailbox = Some(format!(
                    "UID={} GUID={} is missing locally",
                    c.uid,
                    show(&c.guid)
                ));
                return plan;
            } else {
                match local_expunge_guid(c.uid) {
                    Some(Some(g)) if c.guid.as_deref().map(message_guid_128) == Some(g) => {
                        last_common = c.uid;
                        matched = true;
                    }
                    _ if is_save => mismatch = true,
                    _ => {}
                }
            }
            if mismatch {
                found = true;
                if is_save && !filtered {
                    remote_new.push(ci);
                }
                continue;
            }
            if matched {
                if let Some(&lj) = by_uid.get(&c.uid) {
                    let m = &local[lj];
                    if is_save {
                        if let Some(a) = flag_action(m, c) {
                            plan.actions.push(a);
                        }
                    } else {
                        expunge(&mut expunges, c.uid);
                    }
                    li = lj + 1;
                }
                continue;
            }
            if is_save {
                if !filtered {
                    maybe_save.push(ci);
                }
            } else if by_uid.contains_key(&c.uid) {
                maybe_expunge.push(c.uid);
                if li < local.len() && local[li].uid == c.uid {
                    li += 1;
                }
            }
        }
        common = last_common;
        for uid in maybe_expunge {
            if uid <= common && by_uid.contains_key(&uid) {
                if inp.revert {
                    // The source does not have it: same as a remote expunge.
                }
                expunge(&mut expunges, uid);
            }
        }
        let mut pre: Vec<usize> = maybe_save
            .into_iter()
            .filter(|&ci| inp.remote_changes[ci].uid > common)
            .collect();
        pre.extend(remote_new);
        remote_new = pre;
    }

    // §5.7: new mails after the common UID on both sides.
    let local_new: Vec<&MailRecord> = local.iter().filter(|m| m.uid > common).collect();
    let mut recs: Vec<NewMailRec> = Vec::new();
    let (mut i, mut j) = (0usize, 0usize);
    // Each group's last record; the others are found through
    // `prev_in_group` (a group is usually one or two records).
    let mut groups: HashMap<GroupKey<'_>, u32> =
        HashMap::with_capacity(local_new.len() + remote_new.len());
    recs.reserve_exact(local_new.len() + remote_new.len());
    let mut members: Vec<usize> = Vec::new();
    while i < local_new.len() || j < remote_new.len() {
        let l = local_new.get(i).map(|m| (m.guid.as_slice(), m.uid));
        let r = remote_new.get(j).map(|&ci| {
            let c = &inp.remote_changes[ci];
            (c.guid.as_deref().unwrap_or(b""), c.uid)
        });
        let ord = match (l, r) {
            (Some(l), Some(r)) => l.cmp(&r),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        let rec = match ord {
            std::cmp::Ordering::Less => {
                let m = local_new[i];
                i += 1;
                NewMailRec {
                    origin: Origin::Local,
                    uid: m.uid,
                    guid: &m.guid,
                    change: NONE,
                    final_uid: m.uid,
                    usable: m.uid >= remote_uidnext,
                    link: NONE,
                    prev_in_group: NONE,
                    settled: false,
                }
            }
            std::cmp::Ordering::Greater => {
                let ci = remote_new[j];
                j += 1;
                let c = &inp.remote_changes[ci];
                NewMailRec {
                    origin: Origin::Remote,
                    uid: c.uid,
                    guid: c.guid.as_deref().unwrap_or_default(),
                    change: ci as u32,
                    final_uid: c.uid,
                    usable: c.uid >= local_uidnext,
                    link: NONE,
                    prev_in_group: NONE,
                    settled: false,
                }
            }
            std::cmp::Ordering::Equal => {
                let m = local_new[i];
                let ci = remote_new[j];
                i += 1;
                j += 1;
                NewMailRec {
                    origin: Origin::Both,
                    uid: m.uid,
                    guid: &m.guid,
                    change: ci as u32,
                    final_uid: m.uid,
                    usable: true,
                    link: NONE,
                    prev_in_group: NONE,
                    settled: false,
                }
            }
        };
        let idx = recs.len();
        let key = if !rec.guid.is_empty() {
            Some(GroupKey::Guid(rec.guid))
        } else if rec.origin == Origin::Remote {
            Some(GroupKey::RemoteUid(rec.uid))
        } else {
            None
        };
        recs.push(rec);
        if recs[idx].origin == Origin::Both {
            recs[idx].link = idx as u32;
        }
        if let Some(key) = key {
            let last = groups.insert(key, idx as u32).unwrap_or(NONE);
            recs[idx].prev_in_group = last;
            // The group's earlier records, first to last (the order the
            // first matching partner is picked in).
            members.clear();
            let mut e = last;
            while let Some(i) = some(e) {
                members.push(i);
                e = recs[i].prev_in_group;
            }
            members.reverse();
            for &e in &members {
                if recs[e].final_uid == recs[idx].final_uid {
                    recs[e].usable = true;
                }
            }
            if recs[idx].link == NONE {
                let other = members.iter().copied().find(|&e| {
                    recs[e].link == NONE
                        && recs[e].origin != recs[idx].origin
                        && recs[e].origin != Origin::Both
                });
                if let Some(e) = other {
                    recs[e].link = idx as u32;
                    recs[idx].link = e as u32;
                }
            }
        }
    }
    let mut next = local_uidnext.max(remote_uidnext);
    for k in 0..recs.len() {
        if recs[k].settled {
            continue;
        }
        let link = some(recs[k].link).filter(|&l| l != k);
        let uid = if recs[k].usable {
            recs[k].final_uid
        } else if let Some(l) = link.filter(|&l| recs[l].usable) {
            recs[l].final_uid
        } else {
            let u = next;
            next = next.saturating_add(1);
            u
        };
        recs[k].final_uid = uid;
        if let Some(l) = link {
            recs[l].settled = true;
            recs[l].final_uid = uid;
        }
    }
    plan.last_common_uid = next.saturating_sub(1);

    if inp.revert {
        for r in &recs {
            match r.origin {
                Origin::Both => {
                    if let (Some(&li), Some(ci)) = (by_uid.get(&r.uid), some(r.change)) {
                        if let Some(a) = revert_flags(mbox, &local[li], &inp.remote_changes[ci]) {
                            plan.actions.push(a);
                        }
                    }
                }
                Origin::Local if r.uid < remote_uidnext => expunge(&mut expunges, r.uid),
                Origin::Local => {
                    plan.delete_mailbox =
                        Some(format!("UID={} exists only locally and is too high", r.uid));
                    return plan;
                }
                Origin::Remote if r.uid >= local_uidnext => {
                    let Some(ci) = some(r.change) else { continue };
                    add_pending(
                        &mut plan,
                        &mut pending_by_guid,
                        inp.remote_changes,
                        r.uid,
                        ci,
                    );
                }
                Origin::Remote => {
                    plan.delete_mailbox = Some(format!(
                        "UID={} GUID={} is missing locally",
                        r.uid,
                        String::from_utf8_lossy(r.guid)
                    ));
                    return plan;
                }
            }
        }
        plan.last_common_uid = remote_uidnext
            .saturating_sub(1)
            .max(local_uidnext.saturating_sub(1));
        // The source's expunges and the mails only this side has.
        add_expunges(&mut plan, mbox, expunges);
        return plan;
    }

    // Realisation: one mail per representative record (and its link).
    let mut local_by_guid: Option<HashMap<&[u8], u32>> = None;
    for k in 0..recs.len() {
        if recs[k].settled {
            continue;
        }
        let uid = recs[k].final_uid;
        let link = some(recs[k].link).filter(|&l| l != k);
        let members: Vec<usize> = std::iter::once(k).chain(link).collect();
        let local_uid = members.iter().find_map(|&m| match recs[m].origin {
            Origin::Local | Origin::Both => Some(recs[m].uid),
            Origin::Remote => None,
        });
        let change = members.iter().find_map(|&m| some(recs[m].change));
        match local_uid {
            Some(lu) => {
                if lu != uid {
                    plan.actions.push(Action::MoveMail {
                        mailbox: mbox,
                        from_uid: lu,
                        to_uid: uid,
                    });
                }
                // Improvement over Dovecot: merge flags of mails present on
                // both sides right away instead of on the next run.
                if let (Some(ci), Some(&li)) = (change, by_uid.get(&lu)) {
                    let mut m = local[li].clone();
                    m.uid = uid;
                    if let Some(a) = flag_action(&m, &inp.remote_changes[ci]) {
                        plan.actions.push(a);
                    }
                }
            }
            None => {
                let Some(ci) = change else { continue };
                let c = &inp.remote_changes[ci];
                // A local instance elsewhere in the mailbox is copied instead
                // of downloading the body.
                let src = match c.guid.as_deref().filter(|g| !g.is_empty()) {
                    Some(g) if !local.is_empty() => local_by_guid
                        .get_or_insert_with(|| {
                            // The lowest UID of a GUID answers, as a scan
                            // in UID order would.
                            let mut ix = HashMap::with_capacity(local.len());
                            for m in local.iter().rev() {
                                ix.insert(m.guid.as_slice(), m.uid);
                            }
                            ix
                        })
                        .get(g)
                        .copied(),
                    _ => None,
                };
                match src {
                    Some(from_uid) => {
                        plan.actions.push(Action::CopyMail {
                            mailbox: mbox,
                            from_uid,
                            mail: new_mail_from_change(c, uid, None),
                        });
                        plan.saved += 1;
                    }
                    None => {
                        add_pending(&mut plan, &mut pending_by_guid, inp.remote_changes, uid, ci)
                    }
                }
            }
        }
    }
    add_expunges(&mut plan, mbox, expunges);
    plan
}

fn add_expunges(plan: &mut ImportPlan, mailbox: Guid128, uids: Vec<u32>) {
    for uid in uids {
        plan.actions.push(Action::Expunge { mailbox, uid });
        plan.expunged += 1;
    }
}

fn show(g: &Option<Vec<u8>>) -> String {
    g.as_deref()
        .map(|g| String::from_utf8_lossy(g).into_owned())
        .unwrap_or_default()
}

fn add_pending<'a>(
    plan: &mut ImportPlan,
    by_guid: &mut PendingIndex<'a>,
    changes: &'a [MailChange],
    uid: u32,
    ci: usize,
) {
    let guid = changes[ci].guid.as_deref().unwrap_or_default();
    if !guid.is_empty() {
        if let Some(&i) = by_guid.get(guid) {
            plan.pending[i].more.push((uid, ci as u32));
            return;
        }
        by_guid.insert(guid, plan.pending.len());
    }
    plan.pending.push(PendingMail {
        uid,
        change: ci as u32,
        more: Vec::new(),
    });
}

/// What to save for a remote mail: flags and keywords of its change, dates
/// and POP3 data of its `M` item.
pub fn new_mail_from_change(c: &MailChange, uid: u32, m: Option<&Mail>) -> NewMail {
    let (f, a, _) = remote_keywords(c);
    NewMail {
        uid,
        guid: c.guid.clone().unwrap_or_default(),
        flags: MailFlags(c.final_flags.0 & !MailFlags::RECENT),
        keywords: f.union(&a).cloned().collect(),
        min_modseq: if c.modseq > 1 { c.modseq } else { 0 },
        received_date: m.map(|m| m.received_date).unwrap_or(0),
        saved_date: m.map(|m| m.saved_date).unwrap_or(0),
        pop3_uidl: m.and_then(|m| m.pop3_uidl.clone()),
        pop3_order: m.map(|m| m.pop3_order).unwrap_or(0),
    }
}

/// The exporter's answer to one `R` (§4.5): the `M` item and where its body is.
pub fn answer_request(snapshot: &MailboxSnapshot, req: &MailRequest) -> (Mail, Option<BodyRef>) {
    let found = match &req.guid {
        Some(g) if !g.is_empty() => snapshot.mails.iter().find(|m| &m.guid == g),
        _ => snapshot.mails.iter().find(|m| m.uid == req.uid),
    };
    answer_found(snapshot, req, found)
}

/// [`answer_request`] for a whole list of requests, with the mails indexed
/// once (a search per request made a large full sync quadratic).
pub fn answer_requests(
    snapshot: &MailboxSnapshot,
    reqs: &[MailRequest],
) -> Vec<(Mail, Option<BodyRef>)> {
    if reqs.len() < 8 {
        return reqs.iter().map(|r| answer_request(snapshot, r)).collect();
    }
    let index = GuidIndex::new(snapshot);
    reqs.iter().map(|req| index.answer(snapshot, req)).collect()
}

/// A snapshot's mails ordered by GUID, as positions in `mails` (4 bytes a
/// mail, no GUID copied): the exporter answers requests one at a time
/// through it.
#[derive(Clone, Debug, Default)]
pub struct GuidIndex(Vec<u32>);

impl GuidIndex {
    pub fn new(snapshot: &MailboxSnapshot) -> GuidIndex {
        let mails = &snapshot.mails;
        let mut order: Vec<u32> = (0..mails.len() as u32).collect();
        // Ties in position order: the first mail with a GUID answers, as a
        // scan in UID order does.
        order.sort_unstable_by(|&a, &b| {
            mails[a as usize]
                .guid
                .cmp(&mails[b as usize].guid)
                .then(a.cmp(&b))
        });
        GuidIndex(order)
    }

    /// The first mail with this GUID. The index must have been built from
    /// this snapshot's current mails.
    pub fn find<'s>(&self, snapshot: &'s MailboxSnapshot, guid: &[u8]) -> Option<&'s MailRecord> {
        let mails = &snapshot.mails;
        let at = self.0.partition_point(|&i| {
            mails
                .get(i as usize)
                .is_some_and(|m| m.guid.as_slice() < guid)
        });
        let m = mails.get(*self.0.get(at)? as usize)?;
        (m.guid == guid).then_some(m)
    }

    /// The exporter's answer to one request (see [`answer_request`]).
    pub fn answer(&self, snapshot: &MailboxSnapshot, req: &MailRequest) -> (Mail, Option<BodyRef>) {
        let found = match &req.guid {
            Some(g) if !g.is_empty() => self.find(snapshot, g),
            _ => snapshot
                .mails
                .binary_search_by_key(&req.uid, |m| m.uid)
                .ok()
                .map(|i| &snapshot.mails[i])
                .or_else(|| snapshot.mails.iter().find(|m| m.uid == req.uid)),
        };
        answer_found(snapshot, req, found)
    }
}

fn answer_found(
    snapshot: &MailboxSnapshot,
    req: &MailRequest,
    found: Option<&MailRecord>,
) -> (Mail, Option<BodyRef>) {
    let mbox = snapshot.status.guid;
    match found {
        Some(m) => {
            let by_guid = req.guid.as_ref().is_some_and(|g| !g.is_empty());
            (
                Mail {
                    guid: if by_guid { Some(m.guid.clone()) } else { None },
                    uid: if by_guid { 0 } else { m.uid },
                    pop3_uidl: m.pop3_uidl.clone(),
                    pop3_order: m.pop3_order,
                    received_date: m.received_date,
                    saved_date: m.saved_date,
                    stream: true,
                },
                Some(BodyRef {
                    mailbox: mbox,
                    uid: m.uid,
                }),
            )
        }
        None => (
            Mail {
                guid: req.guid.clone(),
                uid: req.uid,
                ..Mail::default()
            },
            None,
        ),
    }
}
