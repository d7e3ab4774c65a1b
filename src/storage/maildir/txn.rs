//! One write transaction on a Maildir mailbox, committed as Dovecot commits
//! a save/sync (spec index-format §10.2 and the Maildir recipes):
//!
//! 1. bodies are streamed into `tmp/` when staged (fsynced);
//! 2. at commit: `dovecot-uidlist.lock` → re-read uidlist, list `new/`+`cur/`
//!    → fcntl lock on `dovecot.index.log` (after mapping the index);
//! 3. mail files move into `new/`/`cur/`, flag changes rename, expunges
//!    unlink; directories are fsynced once;
//! 4. uidlist lines are appended in one write (or the file is rewritten when
//!    its header changes), fsynced;
//! 5. one EXTERNAL log transaction (APPEND, FLAG_UPDATE, KEYWORD_UPDATE,
//!    EXPUNGE_GUID, header/modseq raises) is appended with one write and
//!    fdatasynced; then the locks are released (log, then uidlist).
//!    Attribute changes are written to the attribute dict before step 3,
//!    and logged as a separate non-external ATTRIBUTE_UPDATE transaction
//!    after the EXTERNAL one (as Dovecot's own attribute sets are).
//!
//! A crash between steps leaves files Dovecot's own sync completes: a file
//! without uidlist line gets a UID; a uidlist line without index record is
//! added to the index; no step removes mail that a later step still needs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use index_format::log::{LogFile, RecordBody};
use index_format::maildir::{
    guid_128_from_string, parse_filename, MaildirFlags, Uidlist, MAX_KEYWORDS,
};
use index_format::write::{header_offsets, uidlist_line, TransactionBuilder, UidlistExt};

use super::attributes::AttributeSet;
use super::mailbox::{for_each_file, maildir_order, open_view, read_keywords, scan_files, FileLoc};
use super::{log_gate, MaildirStore, UidlistEnds, UIDLIST};
use crate::storage::lock::{Dotlock, DotlockSettings, FcntlLock, Owner};
use crate::storage::{
    flags, io_err, CommitResult, FlagChange, MailboxGuid, MailboxTransaction, NewMessage, Result,
    StorageError,
};

pub(crate) fn log_gate_write() -> std::sync::RwLockWriteGuard<'static, ()> {
    log_gate().write().unwrap_or_else(|e| e.into_inner())
}

static NAME_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A staged save: the body already sits in `tmp/`.
struct StagedSave {
    tmp: PathBuf,
    base: String,
    psize: u64,
    vsize: u64,
    msg: NewMessage,
}

/// A write transaction on one Maildir mailbox.
pub struct MaildirTransaction<'s> {
    store: &'s MaildirStore,
    dir: PathBuf,
    saves: Vec<StagedSave>,
    flag_changes: BTreeMap<u32, FlagChange>,
    expunges: BTreeMap<u32, Option<String>>,
    new_uid_validity: Option<u32>,
    new_guid: Option<MailboxGuid>,
    min_uid_next: u32,
    min_modseq: u64,
    attributes: Vec<AttributeSet>,
    sync: bool,
}

impl std::fmt::Debug for MaildirTransaction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaildirTransaction")
            .field("dir", &self.dir)
            .field("saves", &self.saves.len())
            .field("flag_changes", &self.flag_changes.len())
            .field("expunges", &self.expunges.len())
            .finish_non_exhaustive()
    }
}

/// Maildir host part: `/` and `:` are escaped as Dovecot does (`\057`, `\072`).
fn host_part() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .replace('/', "\\057")
        .replace(':', "\\072")
}

fn new_base_name() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let n = NAME_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{}.M{}P{}Q{}.{}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        n,
        host_part()
    )
}

impl<'s> MaildirTransaction<'s> {
    pub(crate) fn new(store: &'s MaildirStore, dir: PathBuf) -> Result<Self> {
        Ok(MaildirTransaction {
            store,
            dir,
            saves: Vec::new(),
            flag_changes: BTreeMap::new(),
            expunges: BTreeMap::new(),
            new_uid_validity: None,
            new_guid: None,
            min_uid_next: 0,
            min_modseq: 0,
            attributes: Vec::new(),
            sync: false,
        })
    }

    fn fsync_dir(&self, d: &Path) -> Result<()> {
        if self.store.options().fsync {
            File::open(d)
                .and_then(|f| f.sync_all())
                .map_err(io_err(d))?;
        }
        Ok(())
    }

    /// Gives every keyword a letter in `dovecot-keywords` (adding missing ones
    /// under `dovecot-keywords.lock`); returns name → letter index. Keywords
    /// beyond 26 letters get none (Dovecot keeps those only in the index).
    fn keyword_letters(&self, names: &[&str]) -> Result<HashMap<String, u8>> {
        let mut have = read_keywords(&self.dir)?;
        let find = |have: &[(u8, String)], n: &str| {
            have.iter()
                .find(|(_, k)| k.eq_ignore_ascii_case(n))
                .map(|(i, _)| *i)
        };
        let missing: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| find(&have, n).is_none())
            .collect();
        if !missing.is_empty() {
            let path = self.dir.join("dovecot-keywords");
            let mut lock =
                Dotlock::acquire_for_replace(&path, DotlockSettings::UIDLIST, self.store.owner())?;
            have = read_keywords(&self.dir)?;
            let mut changed = false;
            for n in missing {
                if find(&have, n).is_some() {
                    continue;
                }
                let free = (0..MAX_KEYWORDS as u8).find(|i| !have.iter().any(|(k, _)| k == i));
                if let Some(i) = free {
                    have.push((i, n.to_string()));
                    changed = true;
                }
            }
            if changed {
                have.sort_by_key(|(i, _)| *i);
                let entries: Vec<(u8, &str)> = have.iter().map(|(i, n)| (*i, n.as_str())).collect();
                let content = index_format::write::keywords_file(&entries);
                let old_mtime = fs::metadata(&path).and_then(|m| m.modified()).ok();
                let lp = lock.path().to_path_buf();
                if let Some(f) = lock.file_mut() {
                    f.write_all(&content).map_err(io_err(&lp))?;
                    // Readers notice a rewrite by mtime: make it strictly newer.
                    let now = std::time::SystemTime::now();
                    let mtime = match old_mtime {
                        Some(o) if o >= now => o + std::time::Duration::from_secs(1),
                        _ => now,
                    };
                    f.set_modified(mtime).map_err(io_err(&lp))?;
                }
                lock.replace(&path)?;
            }
        }
        Ok(names
            .iter()
            .filter_map(|n| find(&have, n).map(|i| (n.to_string(), i)))
            .collect())
    }

    /// Gives the mailbox a new GUID at commit (replication adopted the
    /// other side's): the uidlist header carries it.
    pub(crate) fn set_mailbox_guid(&mut self, guid: MailboxGuid) {
        self.new_guid = Some(guid);
    }

    pub(crate) fn commit_inner(mut self) -> Result<CommitResult> {
        let me = &mut self;
        let store = me.store;
        let dir = me.dir.clone();
        let fsync = store.options().fsync;
        let uidlist_path = dir.join(UIDLIST);
        if MaildirStore::uidlist_header(&dir)?
            .and_then(|h| h.0)
            .is_none()
        {
            store.ensure_uidlist(&dir, None, None)?;
        }
        let _uidlist_lock =
            Dotlock::acquire(&uidlist_path, DotlockSettings::UIDLIST, store.owner())?;
        // A commit that only saves new mails, or only raises the mailbox's
        // status (UIDNEXT, highest modseq), needs none of the
        // uidlist's records nor a listing of the mailbox (Dovecot's save
        // commit neither lists): the uidlist's header and last UID do, read
        // from its two ends, when the index has every record already
        // (nothing to catch up; checked once the index is mapped). Reading
        // every record and listing every file per commit made a large full
        // sync quadratic, and a stateful run's status raise as costly as a
        // full read. Deliveries not in the uidlist are then taken in by the
        // next commit that lists, or by Dovecot's next sync. (An empty
        // commit is asked for exactly that: it lists.)
        let saves_only = me.flag_changes.is_empty()
            && me.expunges.is_empty()
            && (!me.saves.is_empty() || me.min_uid_next > 0 || me.min_modseq > 0);
        let vanished = || StorageError::Inconsistent {
            path: uidlist_path.clone(),
            why: "uidlist vanished".into(),
        };
        let ends = if saves_only {
            Some(UidlistEnds::read(&uidlist_path)?.ok_or_else(vanished)?)
        } else {
            None
        };
        let fast = match &ends {
            Some(e) => e.header_and_next(&uidlist_path)?,
            None => None,
        };
        let fast_last = fast.as_ref().map(|f| f.2);
        // The uidlist's records borrow its bytes: no copy per mail. Read
        // whole only off the fast path.
        let whole = std::cell::OnceCell::new();
        let parse_all = || -> Result<Uidlist<'_>> {
            if whole.get().is_none() {
                let data = match fs::read(&uidlist_path) {
                    Ok(d) => d,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(vanished()),
                    Err(e) => return Err(io_err(&uidlist_path)(e)),
                };
                let _ = whole.set(data);
            }
            let data: &Vec<u8> = whole.get().ok_or_else(vanished)?;
            Ok(Uidlist::parse(data).map_err(|e| e.with_path(&uidlist_path))?)
        };
        let (mut uidlist, mut uidlist_next) = match fast {
            Some((head, next, _)) => (head, next),
            None => {
                let u = parse_all()?;
                let next = u.next_uid();
                (u, next)
            }
        };
        // Attribute values go to the dict before the log records that date
        // them, as Dovecot commits its dict transaction first.
        let mut attr_tx = TransactionBuilder::new(false);
        attr_tx.set_sync(me.sync);
        if !me.attributes.is_empty() {
            let dict = store
                .options()
                .attribute_dict
                .clone()
                .ok_or(StorageError::Unsupported(
                    "mailbox attributes are not enabled (no mail_attribute_dict)",
                ))?;
            let guid = uidlist
                .mailbox_guid
                .ok_or_else(|| StorageError::Inconsistent {
                    path: uidlist_path.clone(),
                    why: "mailbox has no GUID for its attributes".into(),
                })?;
            super::attributes::update(&dict, store.owner(), &guid, &me.attributes)?;
            let now = super::unix_now();
            for a in &me.attributes {
                let ts = if a.last_change != 0 {
                    a.last_change
                } else {
                    now
                };
                let len = a.value.as_ref().map_or(0, |v| v.len());
                attr_tx.attribute_update(
                    a.value.is_some(),
                    a.private,
                    a.key.as_bytes(),
                    ts,
                    u32::try_from(len).unwrap_or(u32::MAX),
                )?;
            }
        }
        // The records' UIDs strictly increase (the parser checks): found by
        // halving, no map per commit.
        let by_uid =
            |u: &Uidlist<'_>, uid: u32| u.records.binary_search_by_key(&uid, |r| r.uid).ok();
        // One listing of `new/` and `cur/`, keeping only the files this
        // commit needs: those the uidlist does not list (deliveries that
        // get UIDs now) and those of mails it renames or removes.
        let mut listed: HashSet<&str> = uidlist.records.iter().map(|e| e.filename).collect();
        let wanted: HashSet<&str> = me
            .flag_changes
            .keys()
            .chain(me.expunges.keys())
            .filter_map(|&uid| by_uid(&uidlist, uid).map(|i| uidlist.records[i].filename))
            .collect();
        let mut files: HashMap<String, FileLoc> = HashMap::new();
        let mut unlisted: HashMap<String, FileLoc> = HashMap::new();
        let list_files = |listed: &HashSet<&str>,
                          files: &mut HashMap<String, FileLoc>,
                          unlisted: &mut HashMap<String, FileLoc>| {
            for_each_file(&dir, |base, loc| {
                if !listed.contains(base) {
                    unlisted.insert(base.to_string(), loc());
                } else if wanted.contains(base) {
                    files.insert(base.to_string(), loc());
                }
            })
        };
        if fast_last.is_none() {
            list_files(&listed, &mut files, &mut unlisted)?;
        }

        // The index, mapped before the log lock is taken (mapping opens and
        // closes a descriptor of the log, which would drop our fcntl lock).
        let mut attempts = 0;
        let (view, log_lock, _gate, log_bytes) = loop {
            attempts += 1;
            if attempts > 10 {
                return Err(StorageError::Inconsistent {
                    path: dir.join("dovecot.index.log"),
                    why: "the log kept being rotated while we tried to lock it".into(),
                });
            }
            let mut view = open_view(&dir)?;
            let log_path = dir.join("dovecot.index.log");
            if view.is_none() {
                // Never indexed: start the log so that every change gets a
                // modseq from now on (spec 10.6). We hold the uidlist lock,
                // and the log only appears complete (hard link), so a racing
                // creator's file wins and is used instead.
                create_log(store, &dir)?;
                view = open_view(&dir)?;
            }
            if view.is_none() || !log_path.exists() {
                break (None, None, None, Vec::new());
            }
            let gate = log_gate_write();
            let lock = FcntlLock::lock_existing(&log_path, store.options().log_lock_timeout)?;
            let bytes = read_all(lock.file(), &log_path)?;
            let lf = LogFile::parse(&bytes).map_err(|e| e.with_path(&log_path))?;
            let seq = lf.header().file_seq;
            let head = view.as_ref().map(|v| v.head());
            if head.map(|h| h.file_seq) == Some(seq) {
                break (view, Some(lock), Some(gate), bytes);
            }
            // Rotated since we mapped: map again.
            drop(lock);
            drop(gate);
        };
        let mut index_next = 0u32;
        let mut sync_offset = 0u32;
        let mut has_modseq_ext = false;
        let mut log_modseq = 1u64;
        if let Some(v) = &view {
            index_next = v.next_uid();
            has_modseq_ext = v.extension(index_format::ext::MODSEQ).is_some();
            let lf = LogFile::parse(&log_bytes)?;
            sync_offset = lf.sync_offset();
            log_modseq = lf.highest_modseq();
            // Appends made after our mapping (under Dovecot's lock, before ours).
            for r in lf
                .records_from(v.head().offset.max(lf.header().hdr_size as u32))?
                .flatten()
            {
                match r.body() {
                    Ok(RecordBody::Append(a)) => {
                        for e in a {
                            index_next = index_next.max(e.uid.saturating_add(1));
                        }
                    }
                    Ok(RecordBody::ExtIntro(i)) if i.iter().any(|x| x.name == b"modseq") => {
                        has_modseq_ext = true
                    }
                    _ => {}
                }
            }
        }

        // The fast path's premise failed: the uidlist has records the index
        // lacks (a writer died between the two), which must be caught up
        // first. Rare: read and list everything now, under the log lock.
        if view.is_some() && fast_last.is_some_and(|l| l >= index_next) {
            uidlist = parse_all()?;
            uidlist_next = uidlist.next_uid();
            listed = uidlist.records.iter().map(|e| e.filename).collect();
            list_files(&listed, &mut files, &mut unlisted)?;
        }

        let mut result = CommitResult::default();
        let mut tx = TransactionBuilder::new(true);
        tx.set_sync(me.sync);
        let mut new_lines = String::new();
        let mut next = uidlist_next.max(1);

        // Uidlist records the index does not have yet (Dovecot's sync would
        // add them): they must precede our appends in the log.
        let mut catch_up: Vec<(u32, String)> = Vec::new();
        if view.is_some() {
            let behind: Vec<_> = uidlist
                .records
                .iter()
                .filter(|e| e.uid >= index_next)
                .collect();
            if behind.iter().any(|e| !files.contains_key(e.filename)) {
                // Rare (a writer died between uidlist and log): these files
                // were not kept by the listing above.
                for (base, loc) in scan_files(&dir)? {
                    if listed.contains(base.as_str()) {
                        files.entry(base).or_insert(loc);
                    }
                }
            }
            for e in behind {
                if let Some(loc) = files.get(e.filename) {
                    catch_up.push((e.uid, loc.name.clone()));
                }
            }
        }
        let base_next = next.max(index_next);

        // UIDs for the saves (explicit ones must not go below UIDNEXT).
        let mut uids = Vec::with_capacity(me.saves.len());
        let mut n = base_next;
        for s in &me.saves {
            let uid = match s.msg.uid {
                Some(u) if u < n => {
                    return Err(StorageError::UidTooLow {
                        uid: u,
                        next_uid: n,
                    });
                }
                Some(u) => u,
                None => n,
            };
            uids.push(uid);
            n = uid
                .checked_add(1)
                .ok_or(StorageError::UidTooLow { uid, next_uid: n })?;
        }
        // Deliveries that are not in the uidlist yet get UIDs after ours.
        let mut unlisted: Vec<(String, FileLoc)> = unlisted.into_iter().collect();
        unlisted.sort_by(|a, b| maildir_order(&a.0, &b.0));

        // Keyword letters for everything this commit sets.
        let mut kw_names: Vec<&str> = Vec::new();
        for s in &me.saves {
            kw_names.extend(s.msg.keywords.iter().map(String::as_str));
        }
        for c in me.flag_changes.values() {
            kw_names.extend(c.add_keywords.iter().map(String::as_str));
        }
        let letters = if kw_names.is_empty() {
            HashMap::new()
        } else {
            me.keyword_letters(&kw_names)?
        };
        let all_kw = read_keywords(&dir)?;
        let kw_of_flags = |f: &MaildirFlags| -> Vec<String> {
            f.keyword_indexes()
                .filter_map(|i| all_kw.iter().find(|(k, _)| *k == i).map(|(_, n)| n.clone()))
                .collect()
        };

        // Keyword log changes: name → (add?, uids).
        let mut kw_log: BTreeMap<(bool, String), Vec<u32>> = BTreeMap::new();
        let mut dirs_touched = (false, false);

        for (uid, name) in &catch_up {
            let parsed = parse_filename(name).ok();
            let f = parsed.and_then(|p| p.flags).unwrap_or_default();
            tx.append(*uid, f.system & flags::IMAP_MASK)?;
            for k in kw_of_flags(&f) {
                kw_log.entry((true, k)).or_default().push(*uid);
            }
        }

        // 1. Saves: tmp → new/ or cur/.
        for (s, uid) in me.saves.drain(..).zip(uids.iter().copied()) {
            let mut mf = MaildirFlags {
                system: s.msg.flags & flags::IMAP_MASK,
                ..Default::default()
            };
            for k in &s.msg.keywords {
                if let Some(&i) = letters.get(k.as_str()) {
                    mf.keywords |= 1 << i;
                }
            }
            let to_cur = mf.system != 0 || mf.keywords != 0;
            let uidlist_name = format!("{},S={},W={}", s.base, s.psize, s.vsize);
            let file_name = if to_cur {
                index_format::maildir::build_filename(&s.base, Some(s.psize), Some(s.vsize), &mf)
            } else {
                uidlist_name.clone()
            };
            let dest = dir
                .join(if to_cur { "cur" } else { "new" })
                .join(&file_name);
            fs::rename(&s.tmp, &dest).map_err(io_err(&dest))?;
            if to_cur {
                dirs_touched.1 = true;
            } else {
                dirs_touched.0 = true;
            }
            let guid = s.msg.guid.as_deref().filter(|g| *g != uidlist_name);
            let line = uidlist_line(
                uid,
                &uidlist_name,
                &UidlistExt {
                    guid,
                    pop3_uidl: s.msg.pop3_uidl.as_deref(),
                    pop3_order: s.msg.pop3_order,
                },
            )
            .ok_or_else(|| StorageError::BadMessage {
                uid,
                why: "GUID or POP3 UIDL contains spaces or line breaks".into(),
            })?;
            new_lines.push_str(&line);
            files.insert(
                uidlist_name,
                FileLoc {
                    new_dir: !to_cur,
                    name: file_name,
                },
            );
            tx.append(uid, mf.system)?;
            for k in &s.msg.keywords {
                kw_log.entry((true, k.clone())).or_default().push(uid);
            }
            result.saved_uids.push(uid);
            next = uid + 1;
        }
        next = next.max(base_next);
        for (base, loc) in &unlisted {
            let uid = next;
            next += 1;
            let Some(line) = uidlist_line(uid, base, &UidlistExt::default()) else {
                continue;
            };
            new_lines.push_str(&line);
            if view.is_some() {
                let f = parse_filename(&loc.name)
                    .ok()
                    .and_then(|p| p.flags)
                    .unwrap_or_default();
                tx.append(uid, f.system & flags::IMAP_MASK)?;
                for k in kw_of_flags(&f) {
                    kw_log.entry((true, k)).or_default().push(uid);
                }
            }
        }

        // 2. Flag and keyword changes: rename the files.
        let flag_changes = std::mem::take(&mut me.flag_changes);
        for (uid, ch) in flag_changes {
            let Some(i) = by_uid(&uidlist, uid) else {
                result.missing_for_flags.push(uid);
                continue;
            };
            let base = uidlist.records[i].filename;
            let Some(loc) = files.get(base).cloned() else {
                result.missing_for_flags.push(uid);
                continue;
            };
            let parsed = parse_filename(&loc.name).map_err(|e| StorageError::BadMessage {
                uid,
                why: e.to_string(),
            })?;
            let old = parsed.flags.clone().unwrap_or_default();
            let mut newf = old.clone();
            newf.system = (old.system & !ch.remove) | ch.add;
            newf.system &= flags::IMAP_MASK;
            for k in &ch.add_keywords {
                if let Some(&l) = letters.get(k.as_str()) {
                    newf.keywords |= 1 << l;
                }
            }
            for k in &ch.remove_keywords {
                if let Some((l, _)) = all_kw.iter().find(|(_, n)| n.eq_ignore_ascii_case(k)) {
                    newf.keywords &= !(1 << l);
                }
            }
            let new_name = parsed.with_flags(&newf);
            if new_name != loc.name || loc.new_dir {
                let from = dir
                    .join(if loc.new_dir { "new" } else { "cur" })
                    .join(&loc.name);
                let to = dir.join("cur").join(&new_name);
                match fs::rename(&from, &to) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        // Expunged meanwhile (or renamed by Dovecot and listed stale).
                        result.missing_for_flags.push(uid);
                        continue;
                    }
                    Err(e) => return Err(io_err(&to)(e)),
                }
                dirs_touched.1 = true;
                if loc.new_dir {
                    dirs_touched.0 = true;
                }
                files.insert(
                    base.to_string(),
                    FileLoc {
                        new_dir: false,
                        name: new_name,
                    },
                );
            }
            let add = ch.add & flags::IMAP_MASK & !old.system;
            let remove = ch.remove & flags::IMAP_MASK & old.system;
            if add != 0 || remove != 0 {
                tx.flag_update(uid, uid, add, remove)?;
            }
            for k in &ch.add_keywords {
                kw_log.entry((true, k.clone())).or_default().push(uid);
            }
            for k in &ch.remove_keywords {
                kw_log.entry((false, k.clone())).or_default().push(uid);
            }
        }

        // 3. Expunges: unlink.
        let expunges = std::mem::take(&mut me.expunges);
        for (uid, want_guid) in expunges {
            let Some(i) = by_uid(&uidlist, uid) else {
                result.already_expunged.push(uid);
                continue;
            };
            let e = &uidlist.records[i];
            let have = e.extension('G').unwrap_or(e.filename);
            if let Some(g) = &want_guid {
                if have != g {
                    result.guid_mismatch.push(uid);
                    continue;
                }
            }
            let Some(loc) = files.get(e.filename) else {
                result.already_expunged.push(uid);
                continue;
            };
            let p = dir
                .join(if loc.new_dir { "new" } else { "cur" })
                .join(&loc.name);
            match fs::remove_file(&p) {
                Ok(()) => {
                    if loc.new_dir {
                        dirs_touched.0 = true;
                    } else {
                        dirs_touched.1 = true;
                    }
                    // The mail's GUID, not zero: a stateless sync proves
                    // an expunge only by matching this GUID with the mail
                    // the peer still lists under that UID.
                    tx.expunge_guid(uid, guid_128_from_string(have))?;
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    result.already_expunged.push(uid)
                }
                Err(err) => return Err(io_err(&p)(err)),
            }
        }
        if dirs_touched.0 {
            me.fsync_dir(&dir.join("new"))?;
        }
        if dirs_touched.1 {
            me.fsync_dir(&dir.join("cur"))?;
        }

        for ((add, name), mut us) in kw_log {
            us.sort_unstable();
            us.dedup();
            tx.keyword_update(add, &name, &to_ranges(&us))?;
        }

        // 4. Uidlist.
        let uv = me.new_uid_validity.unwrap_or(uidlist.uid_validity);
        let guid_changes = me.new_guid.is_some_and(|g| Some(g) != uidlist.mailbox_guid);
        let header_next = if me.min_uid_next > next {
            me.min_uid_next
        } else {
            0
        };
        if me
            .new_uid_validity
            .is_some_and(|v| v != uidlist.uid_validity)
            || header_next != 0
            || guid_changes
            || uidlist.partial_tail
        {
            let old = fs::read(&uidlist_path).map_err(io_err(&uidlist_path))?;
            let body_start = old
                .iter()
                .position(|&b| b == b'\n')
                .map(|p| p + 1)
                .unwrap_or(old.len());
            let body_end = old
                .iter()
                .rposition(|&b| b == b'\n')
                .map(|p| p + 1)
                .unwrap_or(0)
                .max(body_start);
            let other: Vec<(char, &str)> = uidlist.header_extensions.clone();
            let mut content = index_format::write::uidlist_header(
                uv,
                header_next.max(next).max(uidlist_next),
                &me.new_guid.or(uidlist.mailbox_guid).unwrap_or_default(),
                &other,
            )
            .into_bytes();
            content.extend_from_slice(&old[body_start..body_end]);
            content.extend_from_slice(new_lines.as_bytes());
            store.replace_file_keeping_mode(&uidlist_path, &content)?;
        } else if !new_lines.is_empty() {
            let mut f = OpenOptions::new()
                .append(true)
                .open(&uidlist_path)
                .map_err(io_err(&uidlist_path))?;
            f.write_all(new_lines.as_bytes())
                .map_err(io_err(&uidlist_path))?;
            if fsync {
                f.sync_data().map_err(io_err(&uidlist_path))?;
            }
        }

        // 5. The log transaction.
        if me
            .new_uid_validity
            .is_some_and(|v| v != uidlist.uid_validity)
        {
            tx.header_update(header_offsets::UID_VALIDITY, &uv.to_le_bytes())?;
        }
        // Index-internal changes go in their own non-external transactions
        // around ours, as Dovecot writes them: `pre` before (the modseq
        // extension must exist before anything raises a modseq), `post`
        // after (a NEXT_UID raise must not precede the appends it covers).
        let mut pre = TransactionBuilder::new(false);
        let mut post = TransactionBuilder::new(false);
        if header_next != 0 {
            post.header_update(header_offsets::NEXT_UID, &header_next.to_le_bytes())?;
        }
        if let Some(v) = &view {
            let fresh = v.uid_validity() == 0;
            if fresh {
                // A log we just started: the index learns the uidlist's values.
                pre.header_update(header_offsets::UID_VALIDITY, &uv.to_le_bytes())?;
                let appended = tx.max_appended_uid().map_or(1, |u| u.saturating_add(1));
                let nu = next.max(uidlist_next).max(header_next);
                if header_next == 0 && nu > appended.max(index_next) {
                    post.header_update(header_offsets::NEXT_UID, &nu.to_le_bytes())?;
                }
            }
            let raise = me.min_modseq > 0 && v.highest_modseq() < me.min_modseq;
            if !has_modseq_ext && (raise || !tx.is_empty() || !attr_tx.is_empty() || fresh) {
                // Per-message modseqs exist only once the extension does:
                // enable it first, as Dovecot does when a mailbox is opened
                // for CONDSTORE/sync: intro + header {highest modseq now,
                // log seq 0, offset 0}; the records after it raise modseqs.
                let g = index_format::write::modseq_ext_geometry();
                let mut hdr = [0u8; 16];
                hdr[..8].copy_from_slice(&log_modseq.to_le_bytes());
                pre.ext_hdr_update(&g, 0, &hdr)?;
            }
            if raise {
                tx.modseq_update(0, me.min_modseq);
            }
        }
        let mut highest = view.as_ref().map(|v| v.highest_modseq()).unwrap_or(1);
        let nothing = tx.is_empty() && attr_tx.is_empty() && pre.is_empty() && post.is_empty();
        if let (Some(lock), false) = (&log_lock, nothing) {
            let log_path = dir.join("dovecot.index.log");
            let f = lock.file();
            let len = f.metadata().map_err(io_err(&log_path))?.len();
            if len > sync_offset as u64 {
                // A writer died mid-transaction: Dovecot truncates such garbage too.
                f.set_len(sync_offset as u64).map_err(io_err(&log_path))?;
            }
            let mut bytes = pre.encode();
            bytes.extend_from_slice(&tx.encode());
            bytes.extend_from_slice(&attr_tx.encode());
            bytes.extend_from_slice(&post.encode());
            let mut w: &File = f;
            w.write_all(&bytes).map_err(io_err(&log_path))?;
            if fsync {
                f.sync_data().map_err(io_err(&log_path))?;
            }
            let mut all = log_bytes;
            all.truncate(sync_offset as usize);
            all.extend_from_slice(&bytes);
            if let Ok(lf) = LogFile::parse(&all) {
                highest = highest.max(lf.highest_modseq());
            }
        }
        drop(log_lock);
        result.uid_next = next.max(header_next);
        result.highest_modseq = highest;
        Ok(result)
    }
}

/// Creates `dovecot.index.log` for a mailbox that has no index yet: a reset
/// header (file_seq 1, initial modseq 1, indexid = now). The file is written
/// aside and hard-linked into place so no reader ever sees it half-written.
fn create_log(store: &MaildirStore, dir: &Path) -> Result<()> {
    let log_path = dir.join("dovecot.index.log");
    let now = super::unix_now();
    let hdr = index_format::write::log_reset_header(now.max(1), 1, now, 1);
    let tmp = dir.join(format!(
        "dovecot.index.log.{}.{}.tmp",
        std::process::id(),
        NAME_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_file(&tmp);
    store.create_file(&tmp, &hdr, 0o600)?;
    let linked = fs::hard_link(&tmp, &log_path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err(&log_path)(e)),
    }
}

/// Reads a whole file through an already open descriptor (positional reads:
/// the log lock's descriptor must stay the only one we use).
pub(crate) fn read_all(f: &File, path: &Path) -> Result<Vec<u8>> {
    let len = f.metadata().map_err(io_err(path))?.len() as usize;
    let mut buf = vec![0u8; len];
    let mut off = 0;
    while off < len {
        let n = f
            .read_at(&mut buf[off..], off as u64)
            .map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        off += n;
    }
    buf.truncate(off);
    Ok(buf)
}

fn to_ranges(uids: &[u32]) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &u in uids {
        match out.last_mut() {
            Some((_, b)) if b.checked_add(1) == Some(u) => *b = u,
            _ => out.push((u, u)),
        }
    }
    out
}

impl Drop for MaildirTransaction<'_> {
    fn drop(&mut self) {
        for s in &self.saves {
            let _ = fs::remove_file(&s.tmp);
        }
    }
}

impl MailboxTransaction for MaildirTransaction<'_> {
    fn save(&mut self, msg: NewMessage, body: &mut dyn Read) -> Result<()> {
        let base = new_base_name();
        let tmp = self.dir.join("tmp").join(&base);
        let mut f = Owner::create_fresh(self.store.owner(), &tmp, 0o600)?;
        // Count bare LFs while copying: the virtual size has CRLF line ends.
        let mut buf = vec![0u8; 64 * 1024];
        let (mut psize, mut bare_lf, mut prev_cr) = (0u64, 0u64, false);
        let staged = (|| -> std::io::Result<()> {
            loop {
                let n = match body.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                for &b in &buf[..n] {
                    if b == b'\n' && !prev_cr {
                        bare_lf += 1;
                    }
                    prev_cr = b == b'\r';
                }
                psize += n as u64;
                f.write_all(&buf[..n])?;
            }
            if self.store.options().fsync {
                f.sync_data()?;
            }
            Ok(())
        })();
        if let Err(e) = staged {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(&tmp)(e));
        }
        let received = msg.received.unwrap_or_else(|| super::unix_now() as i64);
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(received.max(0) as u64);
        f.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
            .map_err(io_err(&tmp))?;
        self.saves.push(StagedSave {
            tmp,
            base,
            psize,
            vsize: psize + bare_lf,
            msg,
        });
        Ok(())
    }

    fn update_flags(&mut self, uid: u32, change: FlagChange) -> Result<()> {
        let e = self.flag_changes.entry(uid).or_default();
        e.add = (e.add & !change.remove) | change.add;
        e.remove = (e.remove & !change.add) | change.remove;
        for k in change.add_keywords {
            e.remove_keywords.retain(|x| !x.eq_ignore_ascii_case(&k));
            if !e.add_keywords.iter().any(|x| x.eq_ignore_ascii_case(&k)) {
                e.add_keywords.push(k);
            }
        }
        for k in change.remove_keywords {
            e.add_keywords.retain(|x| !x.eq_ignore_ascii_case(&k));
            if !e.remove_keywords.iter().any(|x| x.eq_ignore_ascii_case(&k)) {
                e.remove_keywords.push(k);
            }
        }
        Ok(())
    }

    fn expunge(&mut self, uid: u32, guid: Option<&str>) -> Result<()> {
        self.flag_changes.remove(&uid);
        self.expunges.insert(uid, guid.map(str::to_string));
        Ok(())
    }

    fn set_uid_validity(&mut self, uid_validity: u32) -> Result<()> {
        if uid_validity == 0 {
            return Err(StorageError::Unsupported("UIDVALIDITY 0"));
        }
        self.new_uid_validity = Some(uid_validity);
        Ok(())
    }

    fn raise_uid_next(&mut self, uid_next: u32) -> Result<()> {
        self.min_uid_next = self.min_uid_next.max(uid_next);
        Ok(())
    }

    fn raise_highest_modseq(&mut self, modseq: u64) -> Result<()> {
        self.min_modseq = self.min_modseq.max(modseq);
        Ok(())
    }

    fn set_attribute(
        &mut self,
        private: bool,
        key: &str,
        value: Option<&[u8]>,
        last_change: u32,
    ) -> Result<()> {
        if key.is_empty() || key.contains('\0') {
            return Err(StorageError::Unsupported(
                "an attribute key must be non-empty and without NUL",
            ));
        }
        self.attributes.push(AttributeSet {
            private,
            key: key.to_string(),
            value: value.map(<[u8]>::to_vec),
            last_change,
        });
        Ok(())
    }

    fn set_sync_origin(&mut self, sync: bool) {
        self.sync = sync;
    }

    fn commit(self: Box<Self>) -> Result<CommitResult> {
        (*self).commit_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_consecutive_uids() {
        assert_eq!(to_ranges(&[1, 2, 3, 5, 7, 8]), vec![(1, 3), (5, 5), (7, 8)]);
        assert_eq!(to_ranges(&[]), vec![]);
    }
}
