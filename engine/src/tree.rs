//! Mailbox tree sync (§2): the node model, building the local tree from a
//! [`TreeSnapshot`], applying deletion records, and the merge both brains
//! run on (local, remote) to decide the local tree changes.
//!
//! Subscriptions belong to names, not to mailboxes: renames move the
//! mailbox part of nodes and leave subscription state where it is.

use std::collections::{BTreeMap, HashMap};

use dsync_protocol::hash::mailbox_name_hash;
use dsync_protocol::{DeleteRecord, Existence, Guid128, MailboxDelete, MailboxTreeNode};

use crate::storage::*;

/// One node of a mailbox tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub existence: Existence,
    /// `None` with `Exists`: a `\NoSelect` directory.
    pub guid: Option<Guid128>,
    pub uid_validity: u32,
    pub uid_next: u32,
    pub last_renamed_or_created: i64,
    pub subscribed: bool,
    pub last_subscription_change: i64,
}

impl Node {
    fn placeholder() -> Node {
        Node {
            existence: Existence::NonExistent,
            guid: None,
            uid_validity: 0,
            uid_next: 0,
            last_renamed_or_created: 0,
            subscribed: false,
            last_subscription_change: 0,
        }
    }

    /// An existing selectable mailbox.
    pub fn is_mailbox(&self) -> bool {
        self.existence == Existence::Exists && self.guid.is_some()
    }

    fn is_dir(&self) -> bool {
        self.existence == Existence::Exists && self.guid.is_none()
    }
}

/// A side's tree with its deletion records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tree {
    pub separator: u8,
    pub nodes: BTreeMap<MailboxName, Node>,
    pub deleted_mailboxes: Vec<DeleteRecord>,
    pub deleted_dirs: Vec<DeleteRecord>,
    pub unsubscribes: Vec<DeleteRecord>,
}

fn upsert(list: &mut Vec<DeleteRecord>, key: Guid128, ts: i64) {
    match list.iter_mut().find(|r| r.guid == key) {
        Some(r) => r.timestamp = ts,
        None => list.push(DeleteRecord {
            guid: key,
            timestamp: ts,
        }),
    }
}

impl Tree {
    fn empty(separator: u8) -> Tree {
        Tree {
            separator,
            nodes: BTreeMap::new(),
            deleted_mailboxes: Vec::new(),
            deleted_dirs: Vec::new(),
            unsubscribes: Vec::new(),
        }
    }

    fn ensure(&mut self, name: &[Vec<u8>]) -> &mut Node {
        for i in 1..name.len() {
            self.nodes
                .entry(name[..i].to_vec())
                .or_insert_with(Node::placeholder);
        }
        self.nodes
            .entry(name.to_vec())
            .or_insert_with(Node::placeholder)
    }

    /// Name of the existing mailbox with this GUID.
    pub fn find_guid(&self, guid: Guid128) -> Option<MailboxName> {
        self.nodes
            .iter()
            .find(|(_, n)| n.guid == Some(guid) && n.existence == Existence::Exists)
            .map(|(k, _)| k.clone())
    }

    fn by_hash(&self, sep: u8) -> HashMap<Guid128, MailboxName> {
        self.nodes
            .keys()
            .map(|k| (mailbox_name_hash(&join_name(k, sep)), k.clone()))
            .collect()
    }

    /// Builds the local tree (§2.2), replaying the mailbox log.
    pub fn from_snapshot(s: &TreeSnapshot) -> Tree {
        let mut t = Tree::empty(s.separator);
        for e in &s.mailboxes {
            if e.name.is_empty() {
                continue;
            }
            if let Some(g) = e.guid {
                if t.find_guid(g).is_some() {
                    // A duplicate GUID inside one tree: keep the first.
                    continue;
                }
            }
            let n = t.ensure(&e.name);
            n.existence = Existence::Exists;
            n.guid = e.guid;
            n.uid_validity = e.uid_validity;
            n.uid_next = e.uid_next;
        }
        for s in &s.subscriptions {
            if !s.is_empty() {
                t.ensure(s).subscribed = true;
            }
        }
        let hashes = t.by_hash(s.separator);
        for rec in &s.log {
            let node = hashes.get(&rec.key).cloned();
            match rec.kind {
                MailboxLogKind::DeleteMailbox => {
                    if t.find_guid(rec.key).is_none() {
                        upsert(&mut t.deleted_mailboxes, rec.key, rec.timestamp);
                    }
                }
                MailboxLogKind::DeleteDir => {
                    let exists = node
                        .as_ref()
                        .and_then(|k| t.nodes.get(k))
                        .is_some_and(|n| n.existence == Existence::Exists);
                    if !exists {
                        upsert(&mut t.deleted_dirs, rec.key, rec.timestamp);
                    }
                }
                MailboxLogKind::Rename => {
                    if let Some(n) = node.and_then(|k| t.nodes.get_mut(&k)) {
                        n.last_renamed_or_created = rec.timestamp;
                    }
                }
                MailboxLogKind::Subscribe => {
                    if let Some(n) = node.and_then(|k| t.nodes.get_mut(&k)) {
                        n.last_subscription_change = rec.timestamp;
                    }
                }
                MailboxLogKind::Unsubscribe => match node.and_then(|k| t.nodes.get_mut(&k)) {
                    Some(n) => n.last_subscription_change = rec.timestamp,
                    None => upsert(&mut t.unsubscribes, rec.key, rec.timestamp),
                },
            }
        }
        t
    }

    /// The `N` items, depth-first in name order.
    pub fn to_items(&self) -> Vec<MailboxTreeNode> {
        self.nodes
            .iter()
            .map(|(k, n)| MailboxTreeNode {
                name: k.clone(),
                existence: n.existence,
                mailbox_guid: n.guid,
                uid_validity: n.uid_validity,
                uid_next: n.uid_next,
                last_renamed_or_created: n.last_renamed_or_created,
                subscribed: n.subscribed,
                last_subscription_change: n.last_subscription_change,
            })
            .collect()
    }

    /// The `D` item.
    pub fn deletes_item(&self) -> MailboxDelete {
        MailboxDelete {
            hierarchy_sep: self.separator,
            escape_char: None,
            mailboxes: self.deleted_mailboxes.clone(),
            dirs: self.deleted_dirs.clone(),
            unsubscribes: self.unsubscribes.clone(),
        }
    }

    /// The remote model from received `N` items and `D`.
    pub fn from_items(nodes: &[MailboxTreeNode], d: &MailboxDelete) -> Result<Tree, TreeError> {
        let mut t = Tree::empty(d.hierarchy_sep);
        for n in nodes {
            if n.name.is_empty() {
                continue;
            }
            let guid = n.mailbox_guid.filter(|g| !g.is_empty());
            if let Some(g) = guid {
                if n.existence == Existence::Exists && t.find_guid(g).is_some() {
                    return Err(TreeError::DuplicateGuid(g));
                }
            }
            let e = t.ensure(&n.name);
            *e = Node {
                existence: n.existence,
                guid,
                uid_validity: n.uid_validity,
                uid_next: n.uid_next,
                last_renamed_or_created: n.last_renamed_or_created,
                subscribed: n.subscribed,
                last_subscription_change: n.last_subscription_change,
            };
        }
        t.deleted_mailboxes = d.mailboxes.clone();
        t.deleted_dirs = d.dirs.clone();
        t.unsubscribes = d.unsubscribes.clone();
        Ok(t)
    }

    /// Selectable mailboxes in tree order.
    pub fn mailbox_guids(&self) -> Vec<Guid128> {
        self.nodes
            .values()
            .filter(|n| n.is_mailbox())
            .filter_map(|n| n.guid)
            .collect()
    }

    fn has_mailbox_below(&self, name: &[Vec<u8>]) -> bool {
        self.nodes
            .iter()
            .any(|(k, n)| k.len() > name.len() && k.starts_with(name) && n.is_mailbox())
    }

    /// Removes the mailbox part of a node (after a delete).
    fn clear_mailbox(&mut self, name: &[Vec<u8>]) {
        let below = self.has_mailbox_below(name);
        if let Some(n) = self.nodes.get_mut(name) {
            n.guid = None;
            n.uid_validity = 0;
            n.uid_next = 0;
            n.existence = if below {
                Existence::Exists
            } else {
                Existence::NonExistent
            };
        }
    }

    /// Moves the mailbox parts of `from` and its descendants to `to`.
    fn move_subtree(&mut self, from: &[Vec<u8>], to: &[Vec<u8>], ts: i64) {
        let keys: Vec<MailboxName> = self
            .nodes
            .keys()
            .filter(|k| k.starts_with(from))
            .cloned()
            .collect();
        let mut moved = Vec::new();
        for k in keys {
            if let Some(n) = self.nodes.get_mut(&k) {
                let part = (
                    n.existence,
                    n.guid,
                    n.uid_validity,
                    n.uid_next,
                    n.last_renamed_or_created,
                );
                n.existence = Existence::NonExistent;
                n.guid = None;
                n.uid_validity = 0;
                n.uid_next = 0;
                n.last_renamed_or_created = 0;
                let mut nk = to.to_vec();
                nk.extend_from_slice(&k[from.len()..]);
                moved.push((nk, part));
            }
        }
        for (nk, (ex, guid, uv, un, lr)) in moved {
            let n = self.ensure(&nk);
            n.existence = ex;
            n.guid = guid;
            n.uid_validity = uv;
            n.uid_next = un;
            n.last_renamed_or_created = if nk.len() == to.len() { ts } else { lr };
        }
        for i in 1..to.len() {
            if self.has_mailbox_below(&to[..i]) {
                if let Some(p) = self.nodes.get_mut(&to[..i]) {
                    if p.existence == Existence::NonExistent {
                        p.existence = Existence::Exists;
                    }
                }
            }
        }
    }

    /// `last_renamed_or_created`, inherited from ancestors (§2.6 step 2).
    fn effective_ts(&self, name: &[Vec<u8>]) -> i64 {
        (1..=name.len())
            .filter_map(|i| self.nodes.get(&name[..i]))
            .map(|n| n.last_renamed_or_created)
            .max()
            .unwrap_or(0)
    }
}

/// A remote tree that breaks a rule of §2.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    /// Two existing mailboxes in the remote tree share a GUID (§2.2 step 4).
    #[error("Remote sent duplicate mailbox GUID {0}")]
    DuplicateGuid(Guid128),
}

/// Which side's tree is authoritative.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TreeSyncMode {
    /// Normal sync and `-1`.
    TwoWay,
    /// This side is the backup source.
    PreserveLocal,
    /// This side is the backup destination.
    PreserveRemote,
}

/// The deterministic name a conflict loser moves to: `<name>-temp-<GUID hex>`
/// (both sides compute the same name, so no second run is needed).
pub fn temp_name(name: &[Vec<u8>], guid: Guid128) -> MailboxName {
    let mut out = name.to_vec();
    if let Some(last) = out.last_mut() {
        let mut base = last.clone();
        base.truncate(60);
        base.extend_from_slice(b"-temp-");
        base.extend_from_slice(guid.to_hex().as_bytes());
        *last = base;
    }
    out
}

/// The rename decision's inputs for one mailbox named `ln` locally and
/// `rn` remotely, evaluated as Dovecot does at the first of the two names
/// its name-ordered walk reaches: (local timestamp, remote timestamp, whether
/// local wins a tie). Each timestamp is the newest rename/creation time + 1
/// of the two nodes involved on that side (a node missing on a side counts
/// as 1); on a tie the node that exists sorts first, then the smaller GUID.
fn rename_timestamps(l: &Tree, r: &Tree, ln: &[Vec<u8>], rn: &[Vec<u8>]) -> (i64, i64, bool) {
    let t = |tree: &Tree, name: Option<&[Vec<u8>]>| -> i64 {
        match name {
            Some(n) if tree.nodes.contains_key(n) => tree.effective_ts(n).saturating_add(1),
            _ => 1,
        }
    };
    let exists_guid = |tree: &Tree, name: &[Vec<u8>]| {
        tree.nodes
            .get(name)
            .filter(|n| n.is_mailbox())
            .and_then(|n| n.guid)
    };
    // The pair at the first name: (l1, r2) share it; r1 is l1's mailbox on
    // the remote side, l2 is r2's mailbox on the local side.
    let at = if ln < rn { ln } else { rn };
    let l1 = exists_guid(l, at);
    let r2 = exists_guid(r, at);
    let r1_name = l1.and_then(|g| r.find_guid(g));
    let l2_name = r2.and_then(|g| l.find_guid(g));
    let lts = t(l, Some(at)).max(l2_name.as_deref().map_or(0, |n| t(l, Some(n))));
    let rts = t(r, Some(at)).max(r1_name.as_deref().map_or(0, |n| t(r, Some(n))));
    let tie_local_wins = match (l1, r2) {
        (Some(_), None) => true,
        (None, Some(_)) => false,
        (Some(a), Some(b)) => a.0 < b.0,
        (None, None) => ln < rn,
    };
    (lts, rts, tie_local_wins)
}

/// Result of the tree merge.
#[derive(Clone, Debug)]
pub struct TreeMerge {
    /// Local storage changes, in order.
    pub actions: Vec<Action>,
    /// The local tree as it will be after the actions.
    pub local: Tree,
    /// Local mailboxes deleted because the remote deleted them:
    /// (GUID, name, deletion time).
    pub deleted_by_remote: Vec<(Guid128, MailboxName, i64)>,
}

/// Moves `from` to `to` in a model, moving an occupying mailbox at `to` to
/// its temporary name first. Emits actions when `emit`.
fn rename_in(
    t: &mut Tree,
    from: &[Vec<u8>],
    to: &[Vec<u8>],
    now: i64,
    emit: Option<&mut Vec<Action>>,
) {
    let mut actions = Vec::new();
    if let Some(occ) = t
        .nodes
        .get(to)
        .filter(|n| n.is_mailbox())
        .and_then(|n| n.guid)
    {
        let tmp = temp_name(to, occ);
        t.move_subtree(to, &tmp, 0);
        actions.push(Action::Rename {
            from: to.to_vec(),
            to: tmp,
            timestamp: now,
        });
    }
    let mut from = from.to_vec();
    if to.starts_with(&from) {
        // Into its own subtree: go through a temporary name at the root.
        let guid = t.nodes.get(&from).and_then(|n| n.guid).unwrap_or_default();
        let tmp = temp_name(&from[from.len() - 1..], guid);
        t.move_subtree(&from, &tmp, 0);
        actions.push(Action::Rename {
            from: from.clone(),
            to: tmp.clone(),
            timestamp: now,
        });
        from = tmp;
    }
    t.move_subtree(&from, to, now);
    actions.push(Action::Rename {
        from: from.clone(),
        to: to.to_vec(),
        timestamp: now,
    });
    if let Some(e) = emit {
        e.extend(actions);
    }
}

/// Runs the tree merge (§2.5–§2.7) and returns the local changes.
pub fn merge(local: &Tree, remote: &Tree, mode: TreeSyncMode, now: i64) -> TreeMerge {
    let mut l = local.clone();
    let mut r = remote.clone();
    let mut actions = Vec::new();
    let mut deleted_by_remote = Vec::new();
    let apply_local = mode != TreeSyncMode::PreserveLocal;

    // 1. Mailbox deletions: a deletion beats anything the other side did.
    if mode == TreeSyncMode::TwoWay {
        for d in &remote.deleted_mailboxes {
            if let Some(name) = l.find_guid(d.guid) {
                actions.push(Action::DeleteMailbox {
                    guid: d.guid,
                    timestamp: now,
                });
                deleted_by_remote.push((d.guid, name.clone(), d.timestamp));
                l.clear_mailbox(&name);
            }
        }
        for d in &local.deleted_mailboxes {
            if let Some(name) = r.find_guid(d.guid) {
                r.clear_mailbox(&name);
            }
        }
    }

    // 2. Directory deletions and unsubscriptions, matched by name hash.
    let l_hashes = l.by_hash(remote.separator);
    let mut dir_deletes: Vec<MailboxName> = Vec::new();
    for d in &remote.deleted_dirs {
        if let Some(name) = l_hashes.get(&d.guid) {
            if let Some(n) = l.nodes.get(name) {
                if n.is_dir() && d.timestamp > l.effective_ts(name) {
                    dir_deletes.push(name.clone());
                }
            }
        }
    }
    for d in &remote.unsubscribes {
        if let Some(name) = l_hashes.get(&d.guid) {
            let lts = l
                .nodes
                .get(name)
                .map(|n| n.last_subscription_change)
                .unwrap_or(0);
            if d.timestamp > lts {
                let n = r.ensure(name);
                if d.timestamp > n.last_subscription_change {
                    n.subscribed = false;
                    n.last_subscription_change = d.timestamp;
                }
            }
        }
    }
    let r_hashes = r.by_hash(local.separator);
    for d in &local.unsubscribes {
        if let Some(name) = r_hashes.get(&d.guid) {
            let rts = r
                .nodes
                .get(name)
                .map(|n| n.last_subscription_change)
                .unwrap_or(0);
            if d.timestamp > rts {
                let n = l.ensure(name);
                if d.timestamp > n.last_subscription_change {
                    n.subscribed = false;
                    n.last_subscription_change = d.timestamp;
                }
            }
        }
    }
    let mut r_dir_deleted: Vec<MailboxName> = Vec::new();
    for d in &local.deleted_dirs {
        if let Some(name) = r_hashes.get(&d.guid) {
            if let Some(n) = r.nodes.get(name) {
                if n.is_dir() && d.timestamp > r.effective_ts(name) {
                    r_dir_deleted.push(name.clone());
                }
            }
        }
    }

    // 3. Renames: the same GUID under different names.
    let mut common: Vec<(usize, Guid128)> = l
        .nodes
        .iter()
        .filter(|(_, n)| n.is_mailbox())
        .filter_map(|(k, n)| {
            n.guid
                .filter(|g| r.find_guid(*g).is_some())
                .map(|g| (k.len(), g))
        })
        .collect();
    common.sort();
    for (_, g) in common {
        let (Some(ln), Some(rn)) = (l.find_guid(g), r.find_guid(g)) else {
            continue;
        };
        if ln == rn {
            continue;
        }
        let is_inbox = |n: &MailboxName| n.len() == 1 && n[0].eq_ignore_ascii_case(b"INBOX");
        if is_inbox(&ln) || is_inbox(&rn) {
            continue;
        }
        let (mut lts, mut rts, tie_local_wins) = rename_timestamps(&l, &r, &ln, &rn);
        match mode {
            TreeSyncMode::PreserveLocal => lts = rts.saturating_add(1),
            TreeSyncMode::PreserveRemote => rts = lts.saturating_add(1),
            TreeSyncMode::TwoWay => {}
        }
        let local_wins = lts > rts || (lts == rts && tie_local_wins);
        if local_wins {
            rename_in(&mut r, &rn, &ln, now, None);
        } else if apply_local {
            rename_in(&mut l, &ln, &rn, now, Some(&mut actions));
        }
    }

    // 4. Backup destination: delete mailboxes that cannot be made identical.
    if mode == TreeSyncMode::PreserveRemote {
        let names: Vec<MailboxName> = l
            .nodes
            .iter()
            .filter(|(_, n)| n.is_mailbox())
            .map(|(k, _)| k.clone())
            .collect();
        for name in names {
            let Some(ln) = l.nodes.get(&name).cloned() else {
                continue;
            };
            let ok = r.nodes.get(&name).is_some_and(|rn| {
                rn.is_mailbox()
                    && rn.guid == ln.guid
                    && rn.uid_validity == ln.uid_validity
                    && rn.uid_next >= ln.uid_next
            });
            if !ok {
                if let Some(g) = ln.guid {
                    actions.push(Action::DeleteMailbox {
                        guid: g,
                        timestamp: now,
                    });
                }
                l.clear_mailbox(&name);
            }
        }
    }

    // 5. Create mailboxes that exist only remotely, with the same GUID and
    //    UIDVALIDITY; same name with unknown GUIDs: the larger GUID wins.
    if apply_local {
        let rboxes: Vec<(MailboxName, Node)> = r
            .nodes
            .iter()
            .filter(|(_, n)| n.is_mailbox())
            .map(|(k, n)| (k.clone(), n.clone()))
            .collect();
        for (name, rn) in rboxes {
            let Some(g) = rn.guid else { continue };
            if l.find_guid(g).is_some() {
                continue;
            }
            match l.nodes.get(&name).cloned() {
                Some(ln) if ln.is_mailbox() => {
                    let lg = ln.guid.unwrap_or_default();
                    if mode == TreeSyncMode::PreserveRemote || g.0 > lg.0 {
                        actions.push(Action::SetMailboxGuid {
                            name: name.clone(),
                            guid: g,
                        });
                        if let Some(n) = l.nodes.get_mut(&name) {
                            n.guid = Some(g);
                        }
                    }
                }
                _ => {
                    actions.push(Action::CreateMailbox {
                        name: name.clone(),
                        guid: g,
                        uid_validity: rn.uid_validity,
                    });
                    let n = l.ensure(&name);
                    n.existence = Existence::Exists;
                    n.guid = Some(g);
                    n.uid_validity = rn.uid_validity;
                    n.uid_next = 1;
                    for i in 1..name.len() {
                        if let Some(p) = l.nodes.get_mut(&name[..i]) {
                            if p.existence == Existence::NonExistent {
                                p.existence = Existence::Exists;
                            }
                        }
                    }
                }
            }
        }
    }

    // 6. Directories and subscriptions.
    if apply_local {
        let rdirs: Vec<MailboxName> = r
            .nodes
            .iter()
            .filter(|(k, n)| n.is_dir() && !r_dir_deleted.contains(k))
            .map(|(k, _)| k.clone())
            .collect();
        for name in rdirs {
            let missing = l
                .nodes
                .get(&name)
                .is_none_or(|n| n.existence != Existence::Exists);
            if missing && (mode != TreeSyncMode::PreserveRemote || r.has_mailbox_below(&name)) {
                actions.push(Action::CreateDir { name: name.clone() });
                l.ensure(&name).existence = Existence::Exists;
            }
        }
        for name in dir_deletes {
            if l.nodes.get(&name).is_some_and(|n| n.is_dir())
                && !l.has_mailbox_below(&name)
                && !r.has_mailbox_below(&name)
            {
                let has_children = l.nodes.iter().any(|(k, n)| {
                    k.len() > name.len() && k.starts_with(&name) && n.existence == Existence::Exists
                });
                if !has_children {
                    actions.push(Action::DeleteDir {
                        name: name.clone(),
                        timestamp: now,
                    });
                    l.clear_mailbox(&name);
                }
            }
        }
    }
    let mut names: Vec<MailboxName> = l.nodes.keys().chain(r.nodes.keys()).cloned().collect();
    names.sort();
    names.dedup();
    for name in names {
        let (ls, lt) = l
            .nodes
            .get(&name)
            .map(|n| (n.subscribed, n.last_subscription_change))
            .unwrap_or((false, 0));
        let (rs, rt) = r
            .nodes
            .get(&name)
            .map(|n| (n.subscribed, n.last_subscription_change))
            .unwrap_or((false, 0));
        if ls == rs {
            continue;
        }
        let want = match mode {
            TreeSyncMode::PreserveLocal => ls,
            TreeSyncMode::PreserveRemote => rs,
            TreeSyncMode::TwoWay => {
                if lt > rt {
                    ls
                } else if rt > lt {
                    rs
                } else {
                    true
                }
            }
        };
        if want != ls && apply_local {
            actions.push(Action::SetSubscribed {
                name: name.clone(),
                subscribed: want,
                timestamp: now,
            });
            let n = l.ensure(&name);
            n.subscribed = want;
            n.last_subscription_change = now;
        }
    }
    TreeMerge {
        actions,
        local: l,
        deleted_by_remote,
    }
}
