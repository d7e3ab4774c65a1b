//! Reading one Maildir mailbox: uidlist (UIDs, GUIDs, POP3 fields) + file
//! names in `cur/`/`new/` (flags, keywords, sizes) + index and log (modseqs,
//! changes). Files that are not yet in the uidlist get their UIDs the way
//! Dovecot's maildir sync gives them (under the uidlist lock) when the
//! mailbox is opened.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use rustix::fs::{AtFlags, Mode, OFlags};

use index_format::log::RecordBody;
use index_format::maildir::{parse_filename, Keywords, MaildirFlags, Uidlist, UidlistHead};
use index_format::view::MailboxView;

use super::{log_gate_read, MaildirStore, UIDLIST};
use crate::storage::{
    io_err, Attribute, LogChange, LogChangeKind, Mailbox, MailboxGuid, MailboxStatus, MessageInfo,
    Result, StorageError,
};

/// Where a message file is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileLoc {
    pub new_dir: bool,
    /// Full file name (with `:2,` flags).
    pub name: String,
}

/// A mailbox's `new/` and `cur/`, opened once: mail files are opened and
/// stat'ed relative to them instead of walking the whole path per mail.
#[derive(Debug)]
struct MailDirs {
    dir: PathBuf,
    new_fd: Option<OwnedFd>,
    cur_fd: Option<OwnedFd>,
}

impl MailDirs {
    fn open(dir: PathBuf) -> MailDirs {
        let open_dir = |sub: &str| {
            rustix::fs::open(
                dir.join(sub),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .ok()
        };
        let (new_fd, cur_fd) = (open_dir("new"), open_dir("cur"));
        MailDirs {
            dir,
            new_fd,
            cur_fd,
        }
    }

    fn fd(&self, new_dir: bool) -> Option<&OwnedFd> {
        if new_dir {
            self.new_fd.as_ref()
        } else {
            self.cur_fd.as_ref()
        }
    }

    fn path(&self, new_dir: bool, name: &str) -> PathBuf {
        self.dir
            .join(if new_dir { "new" } else { "cur" })
            .join(name)
    }

    /// Opens a mail file (relative to its directory when that is open).
    fn open_file(&self, new_dir: bool, name: &str) -> std::io::Result<fs::File> {
        match self.fd(new_dir) {
            Some(d) => rustix::fs::openat(d, name, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
                .map(fs::File::from)
                .map_err(std::io::Error::from),
            None => fs::File::open(self.path(new_dir, name)),
        }
    }

    /// (size, mtime, ctime) of a mail file, following symlinks like
    /// `fs::metadata`.
    fn stat(&self, new_dir: bool, name: &str) -> Option<(u64, i64, i64)> {
        match self.fd(new_dir) {
            Some(d) => rustix::fs::statat(d, name, AtFlags::empty())
                .ok()
                .map(|st| (st.st_size as u64, st.st_mtime, st.st_ctime)),
            None => fs::metadata(self.path(new_dir, name))
                .ok()
                .map(|m| (m.len(), m.mtime(), m.ctime())),
        }
    }
}

/// The position of `uid` among `items` (ascending by `key`), trying the one
/// after the last found first: mails are asked for in UID order, so the
/// search is mostly skipped.
fn find_from_hint<T>(
    items: &[T],
    key: impl Fn(&T) -> u32,
    cursor: &AtomicUsize,
    uid: u32,
) -> Option<usize> {
    let hint = cursor.load(Ordering::Relaxed);
    let i = if items.get(hint).is_some_and(|t| key(t) == uid) {
        hint
    } else {
        items.binary_search_by_key(&uid, key).ok()?
    };
    cursor.store(i + 1, Ordering::Relaxed);
    Some(i)
}

/// The files of a listed mailbox by UID (see
/// [`MaildirMailbox::into_body_files`]).
#[derive(Debug)]
pub struct BodyFiles {
    /// (UID, in `new/`, file name), sorted by UID.
    files: Vec<(u32, bool, Box<str>)>,
    cursor: AtomicUsize,
    dirs: MailDirs,
}

impl BodyFiles {
    /// Opens a mail's file. [`StorageError::NoSuchUid`] also when the file
    /// is gone since the listing (a flag change renames it): list again.
    pub fn open_body(&self, uid: u32) -> Result<Box<dyn std::io::Read + Send>> {
        let i = find_from_hint(&self.files, |f| f.0, &self.cursor, uid)
            .ok_or(StorageError::NoSuchUid(uid))?;
        let (_, new_dir, name) = &self.files[i];
        for (dir, name) in places(*new_dir, name) {
            match self.dirs.open_file(dir, &name) {
                Ok(f) => return Ok(Box::new(f)),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(io_err(&self.dirs.path(dir, &name))(err)),
            }
        }
        Err(StorageError::NoSuchUid(uid))
    }

    /// (received, saved) dates of a mail's file as a full listing reads
    /// them (modification and change time).
    pub fn dates(&self, uid: u32) -> Option<(i64, i64)> {
        let i = find_from_hint(&self.files, |f| f.0, &self.cursor, uid)?;
        let (_, new_dir, name) = &self.files[i];
        places(*new_dir, name)
            .find_map(|(dir, name)| self.dirs.stat(dir, &name))
            .map(|(_, m, c)| (m, c))
    }
}

/// Where a mail's file may be: where it was listed (or, opened from the
/// index, where its name was built: `cur/`), the same name in the other
/// directory (Dovecot renames a flagged mail in place in `new/`), and,
/// without flags, the bare base name in `new/` (as delivered).
fn places(new_dir: bool, name: &str) -> impl Iterator<Item = (bool, std::borrow::Cow<'_, str>)> {
    let bare = name
        .strip_suffix(":2,")
        .map(|base| (true, std::borrow::Cow::Borrowed(base)));
    [
        (new_dir, std::borrow::Cow::Borrowed(name)),
        (!new_dir, std::borrow::Cow::Borrowed(name)),
    ]
    .into_iter()
    .chain(bare)
}

/// One uidlist record, owned.
#[derive(Debug, Clone)]
pub(crate) struct UidEntry {
    pub uid: u32,
    /// Base name as in the uidlist (up to `:`). Boxed, as the rest: one
    /// of these per mail of a mailbox, no spare capacity.
    pub base: Box<str>,
    pub guid: Option<Box<str>>,
    pub pop3_uidl: Option<Box<str>>,
    pub pop3_order: Option<u32>,
    pub psize: Option<u64>,
    pub vsize: Option<u64>,
}

/// The uidlist as owned data.
#[derive(Debug, Clone)]
pub(crate) struct UidlistState {
    pub uid_validity: u32,
    pub next_uid: u32,
    pub guid: Option<MailboxGuid>,
    pub entries: Vec<UidEntry>,
    /// The file ends without LF (a writer died mid-line).
    pub partial_tail: bool,
}

impl UidlistState {
    pub fn read(dir: &Path) -> Result<Option<UidlistState>> {
        let Some(data) = read_uidlist_bytes(dir)? else {
            return Ok(None);
        };
        let u = Uidlist::parse(&data).map_err(|e| e.with_path(dir.join(UIDLIST)))?;
        // Sized at once: a large mailbox's table grown by doubling would be
        // up to half unused.
        let entries = u.records.iter().map(uid_entry).collect();
        Ok(Some(UidlistState::from_head(
            &UidlistHead::of(&u),
            u.records.last().map_or(0, |r| r.uid),
            entries,
        )))
    }

    /// The owned form of a uidlist read with [`Uidlist::read_visit`] or
    /// [`Uidlist::parse_visit`]: its header, its last record's UID and the
    /// entries kept.
    fn from_head(head: &UidlistHead, last_uid: u32, entries: Vec<UidEntry>) -> UidlistState {
        UidlistState {
            uid_validity: head.uid_validity,
            next_uid: head.header_next_uid.max(last_uid.saturating_add(1)),
            guid: head.mailbox_guid,
            partial_tail: head.partial_tail,
            entries,
        }
    }
}

fn uid_entry(r: &index_format::maildir::UidlistRecord<'_>) -> UidEntry {
    UidEntry {
        uid: r.uid,
        base: r.filename.into(),
        guid: r.extension('G').map(Into::into),
        pop3_uidl: r.extension('P').map(Into::into),
        pop3_order: r.extension('O').and_then(|v| v.parse().ok()),
        psize: r.physical_size(),
        vsize: r.virtual_size(),
    }
}

/// Which mails an opened mailbox keeps (`None`: all). Its status still
/// counts every mail; the others are read nowhere but in passing, so a
/// reader of a few mails of a large mailbox holds memory for those few.
pub type Keep<'a> = Option<&'a dyn Fn(u32) -> bool>;

/// A uidlist file's bytes, `None` when there is none.
fn read_uidlist_bytes(dir: &Path) -> Result<Option<Vec<u8>>> {
    let path = dir.join(UIDLIST);
    match fs::read(&path) {
        Ok(d) => Ok(Some(d)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// Lists `new/` and `cur/`: base name → location.
pub(crate) fn scan_files(dir: &Path) -> Result<HashMap<String, FileLoc>> {
    let mut out = HashMap::new();
    for_each_file(dir, |base, loc| {
        out.insert(base.to_string(), loc());
    })?;
    Ok(out)
}

/// Calls `f(base name, location)` for every mail file in `new/`, then
/// `cur/` (a base in both: the `cur/` one comes last and wins). The
/// location is made only when asked for: a caller that keeps a few files
/// of a large mailbox copies no other name.
pub(crate) fn for_each_file(
    dir: &Path,
    mut f: impl FnMut(&str, &dyn Fn() -> FileLoc),
) -> Result<()> {
    for (sub, new_dir) in [("new", true), ("cur", false)] {
        let d = dir.join(sub);
        let rd = match fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&d)(e)),
        };
        for e in rd {
            let e = e.map_err(io_err(&d))?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') {
                continue;
            }
            let base = name.split_once(':').map(|(b, _)| b).unwrap_or(name);
            f(base, &|| FileLoc {
                new_dir,
                name: name.to_string(),
            });
        }
    }
    Ok(())
}

/// Pairs the uidlist entries with the listed files (moved out of `files`).
/// Also says whether a listed file has no entry (a new delivery).
fn locate(
    mut files: HashMap<String, FileLoc>,
    entries: &[UidEntry],
) -> (Vec<Option<FileLoc>>, bool) {
    let mut missing = Vec::new();
    let mut locs: Vec<Option<FileLoc>> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let l = files.remove(&*e.base);
            if l.is_none() {
                missing.push(i);
            }
            l
        })
        .collect();
    let unlisted = !files.is_empty();
    if !missing.is_empty() {
        // Usually an expunged mail; but a base listed twice (a damaged
        // uidlist) names the same file each time.
        let want: HashSet<&str> = missing.iter().map(|&i| &*entries[i].base).collect();
        let found: HashMap<&str, usize> = entries
            .iter()
            .enumerate()
            .filter(|(i, e)| locs[*i].is_some() && want.contains(&*e.base))
            .map(|(i, e)| (&*e.base, i))
            .collect();
        for i in missing {
            if let Some(&j) = found.get(&*entries[i].base) {
                locs[i] = locs[j].clone();
            }
        }
    }
    (locs, unlisted)
}

/// Dovecot's order for files that get new UIDs: by the time stamp at the
/// start of the name (seconds, then the `.M<usecs>` part), then by name.
pub(crate) fn maildir_order(a: &str, b: &str) -> std::cmp::Ordering {
    fn key(s: &str) -> (u64, u64) {
        let secs_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let secs = s[..secs_end].parse().unwrap_or(u64::MAX);
        let rest = &s[secs_end..];
        let usecs = rest
            .strip_prefix(".M")
            .map(|r| {
                let e = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
                r[..e].parse().unwrap_or(0)
            })
            .unwrap_or(0);
        (secs, usecs)
    }
    key(a).cmp(&key(b)).then_with(|| a.cmp(b))
}

/// A consistent read view of a Maildir mailbox.
pub struct MaildirMailbox {
    name: String,
    uidlist: UidlistState,
    /// Where each uidlist entry's file is (same order as the entries;
    /// `None` for a mail whose file is gone).
    locs: Vec<Option<FileLoc>>,
    /// The entries' UIDs, ascending: a compact search key (a per-mail
    /// lookup touches little memory).
    uids: Vec<u32>,
    /// Where the next UID is expected (see [`find_from_hint`]).
    cursor: AtomicUsize,
    dirs: MailDirs,
    keywords: Vec<(u8, String)>,
    view: Option<MailboxView>,
    modseq_handle: Option<index_format::view::ExtHandle>,
    highest_modseq: u64,
    /// The store's attribute dict (`mail_attribute_dict`).
    attribute_dict: Option<PathBuf>,
    /// The message count when not every mail is kept ([`Keep`]).
    messages: Option<u32>,
}

impl std::fmt::Debug for MaildirMailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaildirMailbox")
            .field("name", &self.name)
            .field("dir", &self.dirs.dir)
            .finish_non_exhaustive()
    }
}

pub(crate) fn read_keywords(dir: &Path) -> Result<Vec<(u8, String)>> {
    let path = dir.join("dovecot-keywords");
    match fs::read(&path) {
        Ok(d) => {
            let k = Keywords::parse(&d).map_err(|e| e.with_path(&path))?;
            Ok(k.entries.iter().map(|(i, n)| (*i, n.to_string())).collect())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err(&path)(e)),
    }
}

pub(crate) fn open_view(dir: &Path) -> Result<Option<MailboxView>> {
    if !dir.join("dovecot.index.log").exists() && !dir.join("dovecot.index").exists() {
        return Ok(None);
    }
    let _gate = log_gate_read();
    Ok(Some(MailboxView::open(dir)?))
}

/// What Dovecot's index (its `maildir` header, written after each scan)
/// says about a mailbox's directories compared with them now.
struct SeenState {
    /// Neither `cur/` nor `new/` changed since the uidlist was written, or
    /// since the index's last scan of it, a scan that came more than a
    /// second after the change (one within the same second may have missed
    /// a later change in that second: Dovecot scans again then, and so
    /// does this). Equal stamps are ambiguous (coarse clocks).
    dirs_unchanged: bool,
    /// Both as the index's last scan saw them (the first rule alone): a
    /// mail's flags in the index are then those of its file name. A save
    /// writes the uidlist without scanning, so "unchanged since the
    /// uidlist" does not show that the index saw every rename.
    dirs_scanned: bool,
    /// The index last synced with this very uidlist (the header keeps its
    /// stamp and size).
    index_synced_uidlist: bool,
}

impl SeenState {
    /// `None`: no uidlist.
    fn read(dir: &Path, view: Option<&MailboxView>) -> Option<SeenState> {
        let stamp = |p: PathBuf| fs::metadata(p).ok().map(|m| (m.mtime(), m.mtime_nsec()));
        let uidlist_meta = fs::metadata(dir.join(UIDLIST)).ok()?;
        let listed = (uidlist_meta.mtime(), uidlist_meta.mtime_nsec());
        let synced = view
            .and_then(|v| v.extension(index_format::ext::MAILDIR))
            .map(|e| index_format::ext::MaildirHeader::decode(&e.header));
        let changed = ["cur", "new"].map(|sub| stamp(dir.join(sub)));
        let scanned = |i: usize| {
            let Some(changed) = changed[i] else {
                return false;
            };
            synced.is_some_and(|h| {
                let (mtime, nsecs, checked) = if i == 0 {
                    (h.cur_mtime, h.cur_mtime_nsecs, h.cur_check_time)
                } else {
                    (h.new_mtime, h.new_mtime_nsecs, h.new_check_time)
                };
                (i64::from(mtime), i64::from(nsecs)) == changed
                    && i64::from(checked) > changed.0.saturating_add(1)
            })
        };
        let dirs_scanned = scanned(0) && scanned(1);
        let dirs_unchanged = (0..2).all(|i| changed[i].is_some_and(|c| c < listed) || scanned(i));
        let index_synced_uidlist = synced.is_some_and(|h| {
            (
                i64::from(h.uidlist_mtime),
                i64::from(h.uidlist_mtime_nsecs),
                u64::from(h.uidlist_size),
            ) == (listed.0, listed.1, uidlist_meta.len())
        });
        Some(SeenState {
            dirs_unchanged,
            dirs_scanned,
            index_synced_uidlist,
        })
    }
}

impl MaildirMailbox {
    /// The status without listing the mail files, when the directories
    /// show that nothing was delivered, renamed or removed since the
    /// uidlist was written: `cur/` and `new/` were last changed before the
    /// uidlist, and the index counts as many mails as the uidlist lists.
    /// `None` when that cannot be shown (the caller opens the mailbox,
    /// which lists and syncs it).
    pub(crate) fn quick_status(dir: &Path) -> Result<Option<MailboxStatus>> {
        let view = open_view(dir)?;
        let Some(seen) = SeenState::read(dir, view.as_ref()) else {
            return Ok(None);
        };
        if !seen.dirs_unchanged {
            return Ok(None);
        }
        // When the index also synced this very uidlist, its counts are the
        // mailbox's, and the uidlist is read for its header alone. The
        // uidlist may still list mails expunged since it was last
        // rewritten; the index does not.
        let (guid, uid_validity, uidlist_next, messages) =
            if seen.index_synced_uidlist && view.is_some() {
                let Some((Some(guid), uv, next)) = MaildirStore::uidlist_header(dir)? else {
                    return Ok(None);
                };
                let messages = view.as_ref().map_or(0, |v| v.messages_count());
                (guid, uv, next, messages)
            } else {
                let Some(uidlist) = UidlistState::read(dir)? else {
                    return Ok(None);
                };
                let Some(guid) = uidlist.guid else {
                    return Ok(None);
                };
                if uidlist.partial_tail {
                    return Ok(None);
                }
                let messages = u32::try_from(uidlist.entries.len()).unwrap_or(u32::MAX);
                // Expunged records the uidlist still lists, unknown to this
                // rule: when the index counts otherwise, list.
                if view
                    .as_ref()
                    .is_some_and(|v| v.messages_count() != messages)
                {
                    return Ok(None);
                }
                (guid, uidlist.uid_validity, uidlist.next_uid, messages)
            };
        let (hm, next_idx, first_recent) = match &view {
            Some(v) => (
                v.highest_modseq().max(1),
                v.next_uid(),
                v.header().first_recent_uid,
            ),
            None => (1, 1, 1),
        };
        Ok(Some(MailboxStatus {
            guid,
            uid_validity,
            uid_next: uidlist_next.max(next_idx),
            highest_modseq: hm,
            highest_pvt_modseq: 0,
            messages,
            first_recent_uid: first_recent,
        }))
    }

    /// [`open`](Self::open) without listing the directories, when Dovecot's
    /// index describes them as they are ([`SeenState`]): each mail's flags
    /// and keywords come from the index, and its file name is built from
    /// them, in `cur/` (where Dovecot keeps a mail once seen). A file that
    /// is elsewhere (still in `new/`) is found by a listing when its body
    /// is read ([`BodyFiles::open_body`] answers `NoSuchUid`). `None`: the
    /// index cannot be trusted, or a keyword has no Maildir letter: list.
    pub(crate) fn open_indexed(
        store: &MaildirStore,
        name: String,
        dir: PathBuf,
        keep: Keep<'_>,
    ) -> Result<Option<MaildirMailbox>> {
        let Some(view) = open_view(&dir)? else {
            return Ok(None);
        };
        let seen = SeenState::read(&dir, Some(&view));
        if !seen.is_some_and(|s| s.dirs_scanned && s.index_synced_uidlist) {
            return Ok(None);
        }
        // Read a piece at a time: a large mailbox's uidlist is megabytes,
        // and only the kept records are kept.
        let uidlist_path = dir.join(UIDLIST);
        let input = match fs::File::open(&uidlist_path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&uidlist_path)(e)),
        };
        let keywords = read_keywords(&dir)?;
        // The index's keyword numbers, as Maildir letters.
        let letter: Vec<Option<u8>> = view
            .keywords()
            .iter()
            .map(|n| keywords.iter().find(|(_, k)| k == n).map(|(i, _)| *i))
            .collect();
        // Sized once: the index names the mails (each is checked against
        // its uidlist line below), and a table grown by doubling would
        // hold up to three times its size while it is copied.
        let n = match keep {
            None => view.messages_count() as usize,
            Some(k) => view.messages().filter(|m| k(m.uid())).count(),
        };
        let (mut entries, mut locs) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut found, mut unlettered) = (0u32, false);
        // Every record is checked (and counted) as it is parsed; only the
        // kept ones are kept.
        let (head, last) = Uidlist::read_visit(input, |r| {
            let kept = keep.is_none_or(|k| k(r.uid));
            // Not in the index: expunged since the uidlist was rewritten.
            let loc = view.lookup_uid(r.uid).map(|m| {
                found += 1;
                let mut flags = MaildirFlags {
                    system: m.imap_flags(),
                    ..MaildirFlags::default()
                };
                for k in m.keyword_indexes() {
                    match letter.get(k).copied().flatten() {
                        Some(i) => flags.keywords |= 1 << i,
                        None => unlettered = true,
                    }
                }
                flags
            });
            if kept {
                if entries.len() == entries.capacity() {
                    // Lines of mails expunged since the uidlist was last
                    // rewritten are beyond the index's count: a little more
                    // room, not twice as much.
                    let more = (entries.len() / 8).max(64);
                    entries.reserve_exact(more);
                    locs.reserve_exact(more);
                }
                entries.push(uid_entry(&r));
                locs.push(loc.map(|flags| FileLoc {
                    new_dir: false,
                    name: format!("{}:2,{}", r.filename, flags.letters()),
                }));
            }
        })
        .map_err(|e| e.with_path(dir.join(UIDLIST)))?;
        // Every indexed mail has its uidlist line.
        if unlettered || found != view.messages_count() {
            return Ok(None);
        }
        let uidlist = UidlistState::from_head(&head, last, entries);
        if uidlist.guid.is_none() || uidlist.partial_tail {
            return Ok(None);
        }
        let mut mb = Self::assemble(store, name, dir, uidlist, locs, keywords, Some(view));
        mb.messages = Some(found);
        Ok(Some(mb))
    }

    /// [`open`](Self::open) keeping only the mails `keep` picks (the status
    /// counts all): the uidlist's records are read in passing and the
    /// listing is matched against them as it goes, so only the kept mails'
    /// names are held. Anything unusual (a file without a uidlist line, a
    /// base listed twice, a damaged uidlist) opens the whole mailbox, which
    /// deals with it, and keeps the picked mails of that.
    pub(crate) fn open_kept(
        store: &MaildirStore,
        name: String,
        dir: PathBuf,
        keep: &dyn Fn(u32) -> bool,
    ) -> Result<MaildirMailbox> {
        if let Some(mb) = Self::open_indexed(store, name.clone(), dir.clone(), Some(keep))? {
            return Ok(mb);
        }
        if let Some(mb) = Self::open_listed_kept(store, &name, &dir, keep)? {
            return Ok(mb);
        }
        let mut mb = Self::open(store, name, dir)?;
        mb.retain(keep);
        Ok(mb)
    }

    fn open_listed_kept(
        store: &MaildirStore,
        name: &str,
        dir: &Path,
        keep: &dyn Fn(u32) -> bool,
    ) -> Result<Option<MaildirMailbox>> {
        let Some(data) = read_uidlist_bytes(dir)? else {
            return Ok(None);
        };
        // Base name -> (position among the kept entries or NOT_KEPT, seen).
        const NOT_KEPT: u32 = u32::MAX;
        let lines = data.iter().filter(|&&b| b == b'\n').count();
        let mut bases: HashMap<&str, (u32, bool)> = HashMap::with_capacity(lines);
        let (mut entries, mut twice) = (Vec::new(), false);
        let (head, last) = Uidlist::parse_visit(&data, |r| {
            let slot = if keep(r.uid) {
                entries.push(uid_entry(&r));
                entries.len() as u32 - 1
            } else {
                NOT_KEPT
            };
            twice |= bases.insert(r.filename, (slot, false)).is_some();
        })
        .map_err(|e| e.with_path(dir.join(UIDLIST)))?;
        if twice || head.mailbox_guid.is_none() || head.partial_tail {
            return Ok(None);
        }
        let uidlist = UidlistState::from_head(&UidlistHead::of(&head), last, entries);
        let mut locs: Vec<Option<FileLoc>> = vec![None; uidlist.entries.len()];
        let (mut present, mut unlisted) = (0u32, false);
        for_each_file(dir, |base, loc| match bases.get_mut(base) {
            None => unlisted = true,
            Some((slot, seen)) => {
                // A base in both directories: the `cur/` one (listed last)
                // wins, and the mail counts once.
                if !*seen {
                    present += 1;
                    *seen = true;
                }
                if *slot != NOT_KEPT {
                    locs[*slot as usize] = Some(loc());
                }
            }
        })?;
        if unlisted {
            // New deliveries: the whole open gives them UIDs.
            return Ok(None);
        }
        drop(bases);
        drop(data);
        let keywords = read_keywords(dir)?;
        let view = open_view(dir)?;
        let mut mb = Self::assemble(
            store,
            name.to_string(),
            dir.to_path_buf(),
            uidlist,
            locs,
            keywords,
            view,
        );
        mb.messages = Some(present);
        Ok(Some(mb))
    }

    /// How many mails this opened mailbox holds ([`messages`] yields as
    /// many): all of them, or the ones it was opened keeping.
    ///
    /// [`messages`]: Mailbox::messages
    pub fn held(&self) -> usize {
        self.uidlist.entries.len()
    }

    /// Keeps only the mails `keep` picks; the status still counts all.
    fn retain(&mut self, keep: &dyn Fn(u32) -> bool) {
        self.messages = Some(self.status().messages);
        let entries = std::mem::take(&mut self.uidlist.entries);
        let locs = std::mem::take(&mut self.locs);
        for (e, l) in entries.into_iter().zip(locs) {
            if keep(e.uid) {
                self.uidlist.entries.push(e);
                self.locs.push(l);
            }
        }
        self.uids = self.uidlist.entries.iter().map(|e| e.uid).collect();
    }

    pub(crate) fn open(store: &MaildirStore, name: String, dir: PathBuf) -> Result<MaildirMailbox> {
        let mut uidlist = match UidlistState::read(&dir)? {
            Some(u) if u.guid.is_some() => u,
            _ => {
                store.ensure_uidlist(&dir, None, None)?;
                UidlistState::read(&dir)?.ok_or_else(|| StorageError::Inconsistent {
                    path: dir.join(UIDLIST),
                    why: "uidlist vanished".into(),
                })?
            }
        };
        let (mut locs, unlisted) = locate(scan_files(&dir)?, &uidlist.entries);
        if unlisted {
            // New deliveries: give them UIDs now, as Dovecot's sync does.
            // An empty commit only gives UIDs to unlisted files.
            super::txn::MaildirTransaction::new(store, dir.clone())?.commit_inner()?;
            uidlist = UidlistState::read(&dir)?.ok_or_else(|| StorageError::Inconsistent {
                path: dir.join(UIDLIST),
                why: "uidlist vanished".into(),
            })?;
            locs = locate(scan_files(&dir)?, &uidlist.entries).0;
        }
        let keywords = read_keywords(&dir)?;
        let view = open_view(&dir)?;
        Ok(Self::assemble(
            store, name, dir, uidlist, locs, keywords, view,
        ))
    }

    fn assemble(
        store: &MaildirStore,
        name: String,
        dir: PathBuf,
        uidlist: UidlistState,
        locs: Vec<Option<FileLoc>>,
        keywords: Vec<(u8, String)>,
        view: Option<MailboxView>,
    ) -> MaildirMailbox {
        let uids = uidlist.entries.iter().map(|e| e.uid).collect();
        let modseq_handle = view
            .as_ref()
            .and_then(|v| v.ext_handle(index_format::ext::MODSEQ))
            .filter(|h| h.size == 8);
        let highest_modseq = view.as_ref().map(|v| v.highest_modseq()).unwrap_or(1);
        MaildirMailbox {
            attribute_dict: store.options().attribute_dict.clone(),
            modseq_handle,
            highest_modseq,
            name,
            uidlist,
            locs,
            uids,
            cursor: AtomicUsize::new(0),
            dirs: MailDirs::open(dir),
            keywords,
            view,
            messages: None,
        }
    }

    /// The index of `uid` among the uidlist entries.
    fn entry_index(&self, uid: u32) -> Option<usize> {
        find_from_hint(&self.uids, |u| *u, &self.cursor, uid)
    }

    fn open_file(&self, loc: &FileLoc) -> std::io::Result<fs::File> {
        self.dirs.open_file(loc.new_dir, &loc.name)
    }

    fn stat_file(&self, loc: &FileLoc) -> Option<(u64, i64, i64)> {
        self.dirs.stat(loc.new_dir, &loc.name)
    }

    /// `with_file`: also stat the file for the dates (and sizes missing from
    /// the name); listing all messages skips that (one syscall per mail).
    fn info(&self, i: usize, with_file: bool) -> Result<Option<MessageInfo>> {
        let (Some(e), Some(Some(loc))) = (self.uidlist.entries.get(i), self.locs.get(i)) else {
            return Ok(None);
        };
        let parsed = parse_filename(&loc.name).map_err(|err| StorageError::BadMessage {
            uid: e.uid,
            why: err.to_string(),
        })?;
        let (flags, keywords) = match &parsed.flags {
            Some(f) => (
                f.system,
                f.keyword_indexes()
                    .filter_map(|i| {
                        self.keywords
                            .iter()
                            .find(|(k, _)| *k == i)
                            .map(|(_, n)| n.clone())
                    })
                    .collect(),
            ),
            None => (0, Vec::new()),
        };
        let (modseq, pvt) = match &self.view {
            Some(v) => {
                // The handle is looked up once per view, not per message.
                let m = match (v.lookup_uid(e.uid), self.modseq_handle) {
                    (Some(m), Some(h)) => m
                        .ext(h)
                        .and_then(|d| d.get(..8))
                        .map(|d| {
                            u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
                        })
                        .unwrap_or(0),
                    _ => 0,
                };
                (if m == 0 { self.highest_modseq } else { m }, 0)
            }
            None => (1, 0),
        };
        let psize = e.psize.or(parsed.physical_size);
        let vsize = e.vsize.or(parsed.virtual_size);
        let need_file = with_file || psize.is_none() || vsize.is_none();
        let md = if need_file { self.stat_file(loc) } else { None };
        let vsize = match vsize {
            Some(v) => Some(v),
            // Plain deliveries carry no W=: count line ends as Dovecot would.
            None => self.open_file(loc).and_then(virtual_size_of).ok(),
        };
        Ok(Some(MessageInfo {
            uid: e.uid,
            guid: e.guid.as_deref().unwrap_or(&e.base).to_string(),
            flags,
            keywords,
            modseq,
            pvt_modseq: pvt,
            virtual_size: vsize,
            physical_size: psize.or(md.map(|m| m.0)),
            received: md.filter(|_| with_file).map(|m| m.1),
            saved: md.filter(|_| with_file).map(|m| m.2),
            pop3_uidl: e.pop3_uidl.as_deref().map(str::to_string),
            pop3_order: e.pop3_order,
        }))
    }

    /// Where each mail's file is, keeping nothing else of the listing: what
    /// a reader of many bodies needs (the uidlist, the directory listing
    /// and the index view are several times larger).
    /// The index view and the body table, dropping the rest (the uidlist
    /// and the listing), so a caller that still reads the log holds less.
    pub fn into_view_and_body_files(mut self) -> (Option<MailboxView>, BodyFiles) {
        let view = self.view.take();
        (view, self.into_body_files())
    }

    pub fn into_body_files(self) -> BodyFiles {
        // The listing's names are moved, not copied: for a moment both
        // tables would be alive, one name per mail each.
        let uids = self.uidlist.entries.iter().map(|e| e.uid);
        let mut files: Vec<(u32, bool, Box<str>)> = Vec::with_capacity(self.locs.len());
        files.extend(uids.zip(self.locs).filter_map(|(uid, loc)| {
            let loc = loc?;
            Some((uid, loc.new_dir, loc.name.into_boxed_str()))
        }));
        files.sort_unstable_by_key(|f| f.0);
        files.shrink_to_fit();
        BodyFiles {
            files,
            cursor: AtomicUsize::new(0),
            dirs: self.dirs,
        }
    }

    fn file_path(&self, loc: &FileLoc) -> PathBuf {
        self.dirs.path(loc.new_dir, &loc.name)
    }

    /// Every message with its dates (one stat per file), in UID order:
    /// [`Mailbox::messages`] leaves the dates out to save that stat.
    pub fn messages_with_dates(&self) -> impl Iterator<Item = Result<MessageInfo>> + '_ {
        (0..self.uidlist.entries.len()).filter_map(move |i| self.info(i, true).transpose())
    }

    /// The directory of the mailbox.
    pub fn dir(&self) -> &Path {
        &self.dirs.dir
    }

    /// The replayed index, when the mailbox has one.
    pub fn index_view(&self) -> Option<&MailboxView> {
        self.view.as_ref()
    }
}

/// Size with CRLF line ends, streaming the file.
fn virtual_size_of(mut f: fs::File) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let (mut size, mut prev_cr) = (0u64, false);
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(size);
        }
        for &b in &buf[..n] {
            size += if b == b'\n' && !prev_cr { 2 } else { 1 };
            prev_cr = b == b'\r';
        }
    }
}

fn ranges(r: index_format::log::UidRanges<'_>) -> Vec<(u32, u32)> {
    r.collect()
}

impl Mailbox for MaildirMailbox {
    fn name(&self) -> &str {
        &self.name
    }

    fn status(&self) -> MailboxStatus {
        let messages = self
            .messages
            .unwrap_or_else(|| self.locs.iter().filter(|l| l.is_some()).count() as u32);
        let (hm, next_idx, first_recent) = match &self.view {
            Some(v) => (
                v.highest_modseq().max(1),
                v.next_uid(),
                v.header().first_recent_uid,
            ),
            None => (1, 1, 1),
        };
        MailboxStatus {
            guid: self.uidlist.guid.unwrap_or_default(),
            uid_validity: self.uidlist.uid_validity,
            uid_next: self.uidlist.next_uid.max(next_idx),
            highest_modseq: hm,
            highest_pvt_modseq: 0,
            messages,
            first_recent_uid: first_recent,
        }
    }

    fn messages(&self) -> Box<dyn Iterator<Item = Result<MessageInfo>> + '_> {
        Box::new(
            (0..self.uidlist.entries.len()).filter_map(move |i| self.info(i, false).transpose()),
        )
    }

    fn message(&self, uid: u32) -> Result<Option<MessageInfo>> {
        match self.entry_index(uid) {
            Some(i) => self.info(i, true),
            None => Ok(None),
        }
    }

    fn logged_since(&self) -> u64 {
        // Never indexed: nothing was ever logged, nothing is missing.
        self.view.as_ref().map_or(0, |v| v.logged_since())
    }

    fn for_each_change(&self, modseq: u64, f: &mut dyn FnMut(LogChange)) -> Result<bool> {
        match &self.view {
            Some(view) => visit_changes(view, modseq, f),
            // Never indexed: no change was ever logged.
            None => Ok(true),
        }
    }

    fn attributes(&self) -> Result<Vec<Attribute>> {
        match (&self.attribute_dict, &self.uidlist.guid) {
            (Some(dict), Some(guid)) => super::attributes::read(dict, guid),
            // Attributes not enabled (Dovecot then has none either).
            _ => Ok(Vec::new()),
        }
    }

    fn open_body(&self, uid: u32) -> Result<Box<dyn Read + Send>> {
        let i = self.entry_index(uid).ok_or(StorageError::NoSuchUid(uid))?;
        let (Some(e), Some(Some(loc))) = (self.uidlist.entries.get(i), self.locs.get(i)) else {
            return Err(StorageError::NoSuchUid(uid));
        };
        match self.open_file(loc) {
            Ok(f) => Ok(Box::new(f)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                // Renamed by a flag change since we listed: look again.
                let files = scan_files(&self.dirs.dir)?;
                let loc = files.get(&*e.base).ok_or(StorageError::NoSuchUid(uid))?;
                let path = self.file_path(loc);
                Ok(Box::new(fs::File::open(&path).map_err(io_err(&path))?))
            }
            Err(err) => Err(io_err(&self.file_path(loc))(err)),
        }
    }
}

/// [`Mailbox::for_each_change`] on a mailbox's index view, kept apart from
/// the mailbox so the view can outlive the rest of it (see
/// [`MaildirMailbox::into_view_and_body_files`]).
pub(crate) fn visit_changes(
    view: &MailboxView,
    modseq: u64,
    f: &mut dyn FnMut(LogChange),
) -> Result<bool> {
    let changes = view.changes_since(modseq)?;
    if !changes.is_complete() {
        return Ok(false);
    }
    for c in changes {
        let c = c?;
        let r = c.record;
        let Ok(body) = r.body() else { continue };
        let mut push = |kind| {
            f(LogChange {
                modseq: r.modseq,
                sync: r.is_sync(),
                external: r.is_external(),
                kind,
            })
        };
        match body {
            RecordBody::Append(a) => push(LogChangeKind::Append {
                uids: a.map(|e| e.uid).collect(),
            }),
            RecordBody::FlagUpdate(f) => {
                for u in f {
                    push(LogChangeKind::Flags {
                        uid1: u.uid1,
                        uid2: u.uid2,
                        add: u.add_flags,
                        remove: u.remove_flags,
                    });
                }
            }
            RecordBody::KeywordUpdate { add, name, uids } => push(LogChangeKind::Keyword {
                add,
                name: String::from_utf8_lossy(name).into_owned(),
                ranges: ranges(uids),
            }),
            RecordBody::KeywordReset(u) => push(LogChangeKind::KeywordReset { ranges: ranges(u) }),
            RecordBody::ExpungeGuid(g) => {
                for (uid, guid) in g {
                    push(LogChangeKind::Expunge {
                        uid,
                        guid: (guid != [0; 16]).then_some(guid),
                    });
                }
            }
            RecordBody::Expunge(u) => {
                for (uid1, uid2) in u {
                    push(LogChangeKind::ExpungeRange { uid1, uid2 });
                }
            }
            RecordBody::ModseqUpdate(m) => {
                for (uid, modseq) in m {
                    push(LogChangeKind::Modseq { uid, modseq });
                }
            }
            RecordBody::AttributeUpdate(a) => {
                for ch in a {
                    push(LogChangeKind::Attribute {
                        key: String::from_utf8_lossy(ch.key).into_owned(),
                        set: ch.set,
                        private: ch.scope == b'p',
                    });
                }
            }
            _ => {}
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_files_sort_by_time_then_name() {
        let mut v = vec![
            "1700000001.M5P1.h",
            "1700000000.M20P1.h",
            "1700000000.M3P1.h",
            "abc",
        ];
        v.sort_by(|a, b| maildir_order(a, b));
        assert_eq!(
            v,
            vec![
                "1700000000.M3P1.h",
                "1700000000.M20P1.h",
                "1700000001.M5P1.h",
                "abc"
            ]
        );
    }
}
