//! Maildir backend (spec index-format §6, §8–§10): Maildir++ (default) or
//! `LAYOUT=fs`, INBOX at the mail root, index files beside the mail.
//!
//! Reads go through `index-format` (uidlist, keywords, file names, index +
//! log view). Writes follow Dovecot's protocol: mail files via `tmp/`, uidlist
//! lines under `dovecot-uidlist.lock`, one EXTERNAL log transaction under the
//! log's fcntl lock, tree changes recorded in `dovecot.mailbox.log`.

mod attributes;
mod list_index;
mod mailbox;
mod txn;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::Duration;

use index_format::mailbox_log::{mailbox_name_hash, MailboxLog, MailboxLogType};
use index_format::maildir::{parse_uidvalidity, parse_uidvalidity_marker, Uidlist};
use index_format::subscriptions::Subscriptions;

pub use attributes::parse_dict_uri;
pub(crate) use mailbox::visit_changes;
pub use mailbox::{BodyFiles, MaildirMailbox};
pub use txn::MaildirTransaction;

use super::lock::{Dotlock, DotlockSettings, FcntlLock, Owner};
use super::{
    io_err, MailStore, Mailbox, MailboxEntry, MailboxGuid, MailboxLogEntry, MailboxLogKind,
    MailboxStatus, MailboxTransaction, Namespace, Result, StorageError,
};

/// How folder names map to directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `.<a>.<b>` directories in the root (on-disk separator `.`).
    MaildirPlusPlus,
    /// `<a>/<b>` directories in the root.
    Fs,
}

/// Options of a Maildir store (what `mail_location` and the namespace say).
#[derive(Debug, Clone)]
pub struct MaildirOptions {
    pub layout: Layout,
    pub namespace: Namespace,
    /// Give up waiting for the transaction-log lock after this long (Dovecot: 180 s).
    pub log_lock_timeout: Duration,
    /// fsync mail files, directories, uidlist and log per commit (`mail_fsync=optimized`).
    pub fsync: bool,
    /// The file dict holding mailbox attributes (`mail_attribute_dict =
    /// file:PATH`); `None`: attributes are not enabled.
    pub attribute_dict: Option<PathBuf>,
}

impl Default for MaildirOptions {
    fn default() -> Self {
        MaildirOptions {
            layout: Layout::MaildirPlusPlus,
            namespace: Namespace::default(),
            log_lock_timeout: Duration::from_secs(180),
            fsync: true,
            attribute_dict: None,
        }
    }
}

/// Serialises, inside this process, opening a transaction log against
/// holding its fcntl lock: closing any descriptor of a locked file drops a
/// POSIX lock, and readers open and close log descriptors.
static LOG_GATE: RwLock<()> = RwLock::new(());

/// One user's Maildir.
#[derive(Debug)]
pub struct MaildirStore {
    root: PathBuf,
    opts: MaildirOptions,
    owner: Option<Owner>,
}

const UIDLIST: &str = "dovecot-uidlist";
const MAILBOX_LOG: &str = "dovecot.mailbox.log";
const MAILBOX_LOG_ROTATE: u64 = 4096;

impl MaildirStore {
    /// Opens the Maildir at `root` (it must exist). When running as root,
    /// files are created as the owner of `root`.
    pub fn open(root: impl Into<PathBuf>, opts: MaildirOptions) -> Result<MaildirStore> {
        let root = root.into();
        let md = fs::metadata(&root).map_err(io_err(&root))?;
        if !md.is_dir() {
            return Err(StorageError::Inconsistent {
                path: root,
                why: "mail root is not a directory".into(),
            });
        }
        let owner = Owner::of_path_if_root(&root)?;
        Ok(MaildirStore { root, opts, owner })
    }

    /// Like [`MaildirStore::open`], but files are created as `owner` (the
    /// user's uid and gid from the userdb) when running as root, whoever
    /// owns the mail root.
    pub fn open_as(
        root: impl Into<PathBuf>,
        opts: MaildirOptions,
        owner: Option<Owner>,
    ) -> Result<MaildirStore> {
        let mut store = Self::open(root, opts)?;
        if store.owner.is_some() && owner.is_some() {
            store.owner = owner;
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn options(&self) -> &MaildirOptions {
        &self.opts
    }

    pub(crate) fn owner(&self) -> Option<Owner> {
        self.owner
    }

    /// Name components (namespace prefix removed) of a full name.
    fn components<'n>(&self, name: &'n str) -> Result<Vec<&'n str>> {
        let ns = &self.opts.namespace;
        let rest = if name.eq_ignore_ascii_case("INBOX") {
            return Ok(vec!["INBOX"]);
        } else if ns.prefix.is_empty() {
            name
        } else {
            name.strip_prefix(ns.prefix.as_str())
                .ok_or(StorageError::BadName {
                    name: name.into(),
                    why: "outside the namespace prefix",
                })?
        };
        let comps: Vec<&str> = rest.split(ns.separator).collect();
        for c in &comps {
            let bad = c.is_empty()
                || *c == "."
                || *c == ".."
                || c.contains('/')
                || c.bytes().any(|b| b < 0x20)
                || (self.opts.layout == Layout::MaildirPlusPlus && c.contains('.'))
                || (self.opts.layout == Layout::Fs && matches!(*c, "cur" | "new" | "tmp"));
            if bad {
                return Err(StorageError::BadName {
                    name: name.into(),
                    why: "a name level is empty, contains '/', '.' (Maildir++), a control character, or is reserved",
                });
            }
        }
        if comps.len() == 1 && comps[0].eq_ignore_ascii_case("INBOX") {
            return Ok(vec!["INBOX"]);
        }
        Ok(comps)
    }

    fn full_name(&self, comps: &[&str]) -> String {
        if comps.len() == 1 && comps[0] == "INBOX" {
            return "INBOX".into();
        }
        format!(
            "{}{}",
            self.opts.namespace.prefix,
            comps.join(&self.opts.namespace.separator.to_string())
        )
    }

    /// The directory of a mailbox (which may not exist).
    pub fn mailbox_dir(&self, name: &str) -> Result<PathBuf> {
        let comps = self.components(name)?;
        Ok(self.dir_of(&comps))
    }

    /// A mailbox's name components and directory; an error when no
    /// mailbox is there.
    fn existing_mailbox<'n>(&self, name: &'n str) -> Result<(Vec<&'n str>, PathBuf)> {
        let comps = self.components(name)?;
        let dir = self.dir_of(&comps);
        if !Self::is_mailbox_dir(&dir) {
            return Err(StorageError::MailboxNotFound(name.into()));
        }
        Ok((comps, dir))
    }

    fn dir_of(&self, comps: &[&str]) -> PathBuf {
        if comps == ["INBOX"] {
            return self.root.clone();
        }
        match self.opts.layout {
            Layout::MaildirPlusPlus => self.root.join(format!(".{}", comps.join("."))),
            Layout::Fs => comps.iter().fold(self.root.clone(), |p, c| p.join(c)),
        }
    }

    pub(crate) fn mkdir(&self, path: &Path) -> Result<()> {
        match fs::DirBuilder::new().mode(0o700).create(path) {
            Ok(()) => Owner::apply(self.owner, path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(io_err(path)(e)),
        }
    }

    /// Creates a file that must not exist yet, owned by the mail user.
    pub(crate) fn create_file(&self, path: &Path, content: &[u8], mode: u32) -> Result<()> {
        let mut f = Owner::create_fresh(self.owner, path, mode)?;
        f.write_all(content).map_err(io_err(path))?;
        if self.opts.fsync {
            f.sync_data().map_err(io_err(path))?;
        }
        Ok(())
    }

    /// Writes `content` to a temporary file and renames it over `path`.
    pub(crate) fn replace_file(&self, path: &Path, content: &[u8]) -> Result<()> {
        let tmp = tmp_name(path);
        let _ = fs::remove_file(&tmp);
        self.create_file(&tmp, content, 0o600)?;
        fs::rename(&tmp, path).map_err(io_err(path))
    }

    /// Like [`Self::replace_file`], with the permission bits of the file it
    /// replaces (0600 when there is none): Dovecot derives them from the
    /// mailbox directory, and a rewrite must not change who may read it.
    pub(crate) fn replace_file_keeping_mode(&self, path: &Path, content: &[u8]) -> Result<()> {
        let mode = match fs::metadata(path) {
            Ok(m) => m.permissions().mode() & 0o7777,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0o600,
            Err(e) => return Err(io_err(path)(e)),
        };
        let tmp = tmp_name(path);
        let _ = fs::remove_file(&tmp);
        self.create_file(&tmp, content, mode)?;
        // The umask may have cleared bits of `mode`.
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(io_err(&tmp))?;
        fs::rename(&tmp, path).map_err(io_err(path))
    }

    /// Allocates a new UIDVALIDITY from `dovecot-uidvalidity` (spec 6.5).
    pub fn allocate_uid_validity(&self) -> Result<u32> {
        let path = self.root.join("dovecot-uidvalidity");
        let now = unix_now();
        let mut cur = match fs::read(&path) {
            Ok(b) => parse_uidvalidity(&b).ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(&path)(e)),
        };
        if cur.is_none() {
            // Without the main file the marker files carry the value.
            if let Ok(rd) = fs::read_dir(&self.root) {
                cur = rd
                    .filter_map(|e| e.ok())
                    .filter_map(|e| parse_uidvalidity_marker(&e.file_name().to_string_lossy()))
                    .max();
            }
        }
        let next = match cur {
            Some(v) => v.wrapping_add(1).max(1),
            None => now.max(1),
        };
        let marker = |v: u32| self.root.join(format!("dovecot-uidvalidity.{v:08x}"));
        let moved = match cur {
            Some(v) => fs::rename(marker(v), marker(next)).is_ok(),
            None => false,
        };
        if !moved {
            let m = marker(next);
            if !m.exists() {
                self.create_file(&m, b"", 0o444)?;
            }
        }
        self.replace_file(&path, format!("{next:08x}").as_bytes())?;
        Ok(next)
    }

    fn append_mailbox_log(&self, kind: MailboxLogType, id: &[u8; 16], ts: u32) -> Result<()> {
        let path = self.root.join(MAILBOX_LOG);
        let rec = index_format::write::mailbox_log_record(kind, id, ts);
        let existed = path.exists();
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path))?;
        if !existed {
            Owner::apply_fd(self.owner, &f, &path)?;
        }
        f.write_all(&rec).map_err(io_err(&path))?;
        let len = f.metadata().map_err(io_err(&path))?.len();
        if len > MAILBOX_LOG_ROTATE {
            let old = self.root.join(format!("{MAILBOX_LOG}.2"));
            fs::rename(&path, &old).map_err(io_err(&old))?;
        }
        Ok(())
    }

    fn name_hash(&self, name: &str) -> [u8; 16] {
        mailbox_name_hash(name.as_bytes())
    }

    /// Reads a mailbox's uidlist header (GUID, uidvalidity, next uid),
    /// from the file's two ends only ([`UidlistEnds`]): this runs for every
    /// mailbox of a listing.
    pub(crate) fn uidlist_header(dir: &Path) -> Result<Option<(Option<MailboxGuid>, u32, u32)>> {
        let path = dir.join(UIDLIST);
        let Some(ends) = UidlistEnds::read(&path)? else {
            return Ok(None);
        };
        if let Some((u, next, _)) = ends.header_and_next(&path)? {
            return Ok(Some((u.mailbox_guid, u.uid_validity, next)));
        }
        let data = fs::read(&path).map_err(io_err(&path))?;
        let u = Uidlist::parse(&data).map_err(|e| e.with_path(&path))?;
        Ok(Some((u.mailbox_guid, u.uid_validity, u.next_uid())))
    }

    /// Gives a mailbox that has no uidlist yet one (GUID, UIDVALIDITY), as
    /// Dovecot does on first open, under the uidlist lock.
    pub(crate) fn ensure_uidlist(
        &self,
        dir: &Path,
        guid: Option<MailboxGuid>,
        uid_validity: Option<u32>,
    ) -> Result<(MailboxGuid, u32)> {
        let path = dir.join(UIDLIST);
        let _lock = Dotlock::acquire(&path, DotlockSettings::UIDLIST, self.owner)?;
        if let Some((Some(g), v, _)) = Self::uidlist_header(dir)? {
            return Ok((g, v));
        }
        let guid = guid.unwrap_or_else(new_guid);
        let uv = match uid_validity {
            Some(v) => v,
            None => self.allocate_uid_validity()?,
        };
        let header = index_format::write::uidlist_header(uv, 1, &guid, &[]);
        // An existing header-less or GUID-less file keeps its records.
        let mut content = header.into_bytes();
        if let Ok(old) = fs::read(&path) {
            if let Some(p) = old.iter().position(|&b| b == b'\n') {
                content.extend_from_slice(&old[p + 1..]);
            }
        }
        self.replace_file(&path, &content)?;
        Ok((guid, uv))
    }

    fn is_mailbox_dir(dir: &Path) -> bool {
        dir.join("cur").is_dir()
    }

    /// Lists `(components, dir)` of every folder directory below the root.
    fn folder_dirs(&self) -> Result<Vec<(Vec<String>, PathBuf)>> {
        let mut out = Vec::new();
        match self.opts.layout {
            Layout::MaildirPlusPlus => {
                let rd = fs::read_dir(&self.root).map_err(io_err(&self.root))?;
                for e in rd {
                    let e = e.map_err(io_err(&self.root))?;
                    let name = e.file_name();
                    let Some(name) = name.to_str() else { continue };
                    // ".." prefixes are Dovecot's trash/temporary directories.
                    let Some(rest) = name.strip_prefix('.') else {
                        continue;
                    };
                    if rest.is_empty() || rest.starts_with('.') || !e.path().is_dir() {
                        continue;
                    }
                    let comps: Vec<String> = rest.split('.').map(str::to_string).collect();
                    if comps.iter().any(|c| c.is_empty()) {
                        continue;
                    }
                    out.push((comps, e.path()));
                }
            }
            Layout::Fs => {
                let mut stack = vec![(Vec::<String>::new(), self.root.clone())];
                while let Some((prefix, dir)) = stack.pop() {
                    let Ok(rd) = fs::read_dir(&dir) else { continue };
                    for e in rd.flatten() {
                        let name = e.file_name();
                        let Some(name) = name.to_str() else { continue };
                        if name.starts_with('.') || matches!(name, "cur" | "new" | "tmp") {
                            continue;
                        }
                        if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                            continue;
                        }
                        let mut comps = prefix.clone();
                        comps.push(name.to_string());
                        stack.push((comps.clone(), e.path()));
                        out.push((comps, e.path()));
                    }
                }
            }
        }
        Ok(out)
    }

    fn read_subscriptions(&self) -> Result<Vec<String>> {
        let path = self.root.join("subscriptions");
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let s = Subscriptions::parse(&data).map_err(|e| e.with_path(&path))?;
        let sep = self.opts.namespace.separator;
        Ok(s.names
            .iter()
            .map(|n| {
                if s.version >= 2 {
                    let name = n.name(sep);
                    if name.eq_ignore_ascii_case("INBOX") {
                        "INBOX".to_string()
                    } else {
                        format!("{}{}", self.opts.namespace.prefix, name)
                    }
                } else {
                    String::from_utf8_lossy(n.raw).into_owned()
                }
            })
            .collect())
    }

    /// Changes the subscriptions under `subscriptions.lock` (read after
    /// locking, written into the lock file, renamed over). `change` returns
    /// false when nothing changed.
    fn update_subscriptions(&self, change: impl FnOnce(&mut Vec<String>) -> bool) -> Result<bool> {
        let path = self.root.join("subscriptions");
        let mut lock =
            Dotlock::acquire_for_replace(&path, DotlockSettings::SUBSCRIPTIONS, self.owner)?;
        let mut names = self.read_subscriptions()?;
        if !change(&mut names) {
            return Ok(false);
        }
        let mut levels: Vec<Vec<&str>> = Vec::new();
        for n in &names {
            levels.push(self.components(n)?);
        }
        let refs: Vec<&[&str]> = levels.iter().map(|v| v.as_slice()).collect();
        let content = index_format::subscriptions::build_v2(refs);
        let lock_path = lock.path().to_path_buf();
        let f = lock.file_mut().ok_or_else(|| StorageError::Inconsistent {
            path: lock_path.clone(),
            why: "lock file closed".into(),
        })?;
        f.write_all(&content).map_err(io_err(&lock_path))?;
        lock.replace(&path)?;
        Ok(true)
    }

    /// Takes Dovecot's per-user replication lock `<home>/.dovecot-sync.lock`
    /// (fcntl), waiting up to `timeout`. Unlinked, then unlocked, on drop.
    pub fn lock_user(&self, home: &Path, timeout: Duration) -> Result<FcntlLock> {
        self.mkdir(home)?;
        FcntlLock::lock_file(&home.join(".dovecot-sync.lock"), timeout, self.owner)
    }

    /// Takes the per-mailbox replication lock `.dovecot-box-sync.lock` in the
    /// mailbox's index directory (Dovecot's default timeout is 30 s).
    pub fn lock_mailbox_sync(&self, name: &str, timeout: Duration) -> Result<FcntlLock> {
        let dir = self.mailbox_dir(name)?;
        FcntlLock::lock_file(&dir.join(".dovecot-box-sync.lock"), timeout, self.owner)
    }

    /// After a change of the mailbox tree: makes running Dovecot processes
    /// re-read it (see [`list_index`]). The tree change itself is done, so
    /// a failure here is only logged.
    fn tree_changed(&self) {
        if let Err(e) = list_index::refresh_later(self) {
            tracing::warn!(%e, "could not flag Dovecot's mailbox list index for a refresh");
        }
    }

    /// A mailbox's status read from its uidlist and index alone, when its
    /// directories show nothing changed since the uidlist was written
    /// (`None`: open the mailbox instead).
    pub fn quick_status(&self, name: &str) -> Result<Option<MailboxStatus>> {
        let (_, dir) = self.existing_mailbox(name)?;
        MaildirMailbox::quick_status(&dir)
    }

    /// The modseq above which the mailbox's transaction log holds every
    /// change (0: all of them), from the log files' headers alone.
    pub fn logged_since(&self, name: &str) -> Result<u64> {
        let (_, dir) = self.existing_mailbox(name)?;
        Ok(mailbox::open_view(&dir)?.map_or(0, |v| v.logged_since()))
    }

    /// [`open_maildir`](Self::open_maildir) without listing the
    /// directories, when Dovecot's index describes them as they are
    /// ([`MaildirMailbox::open_indexed`]); `None`: open it listed.
    pub fn open_maildir_indexed(&self, name: &str) -> Result<Option<MaildirMailbox>> {
        let (comps, dir) = self.existing_mailbox(name)?;
        MaildirMailbox::open_indexed(self, self.full_name(&comps), dir, None)
    }

    /// Opens a mailbox keeping only the mails `keep` picks, without holding
    /// the others' records or names ([`MaildirMailbox::open_kept`]); its
    /// status counts every mail.
    pub fn open_maildir_kept(
        &self,
        name: &str,
        keep: &dyn Fn(u32) -> bool,
    ) -> Result<MaildirMailbox> {
        let (comps, dir) = self.existing_mailbox(name)?;
        MaildirMailbox::open_kept(self, self.full_name(&comps), dir, keep)
    }

    /// Visits the mailbox's logged changes after `modseq`; `false`: the log
    /// no longer reaches back to it (nothing visited).
    pub fn visit_changes_since(
        &self,
        name: &str,
        modseq: u64,
        f: &mut dyn FnMut(crate::storage::LogChange),
    ) -> Result<bool> {
        let (_, dir) = self.existing_mailbox(name)?;
        match mailbox::open_view(&dir)? {
            Some(v) => visit_changes(&v, modseq, f),
            None => Ok(true),
        }
    }

    /// Opens a mailbox as an owned value (callers may keep it between reads).
    pub fn open_maildir(&self, name: &str) -> Result<MaildirMailbox> {
        let (comps, dir) = self.existing_mailbox(name)?;
        MaildirMailbox::open(self, self.full_name(&comps), dir)
    }
}

fn tmp_name(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(format!(".{}.tmp", std::process::id()));
    PathBuf::from(s)
}

pub(crate) fn unix_now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

/// A fresh random mailbox GUID (from the kernel's random source).
pub(crate) fn new_guid() -> MailboxGuid {
    let mut g = [0u8; 16];
    if let Ok(mut f) = fs::File::open("/dev/urandom") {
        use std::io::Read;
        if f.read_exact(&mut g).is_ok() {
            return g;
        }
    }
    // No random source: time and pid still make it unique enough per host.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    g.copy_from_slice(&(t ^ ((std::process::id() as u128) << 64)).to_le_bytes());
    g
}

impl MailStore for MaildirStore {
    fn namespace(&self) -> &Namespace {
        &self.opts.namespace
    }

    fn list_mailboxes(&self) -> Result<Vec<MailboxEntry>> {
        let subs = self.read_subscriptions()?;
        let is_sub = |n: &str| subs.iter().any(|s| s == n);
        let mut out = Vec::new();
        let mut push = |name: String, dir: &Path| -> Result<()> {
            let entry = if Self::is_mailbox_dir(dir) {
                let (guid, uv) = match Self::uidlist_header(dir)? {
                    Some((Some(g), v, _)) => (g, v),
                    _ => self.ensure_uidlist(dir, None, None)?,
                };
                let next = Self::uidlist_header(dir)?.map(|h| h.2).unwrap_or(1);
                MailboxEntry {
                    subscribed: is_sub(&name),
                    name,
                    guid: Some(guid),
                    uid_validity: uv,
                    uid_next: next,
                }
            } else {
                MailboxEntry {
                    subscribed: is_sub(&name),
                    name,
                    guid: None,
                    uid_validity: 0,
                    uid_next: 0,
                }
            };
            out.push(entry);
            Ok(())
        };
        if Self::is_mailbox_dir(&self.root) {
            push("INBOX".into(), &self.root)?;
        }
        for (comps, dir) in self.folder_dirs()? {
            let refs: Vec<&str> = comps.iter().map(String::as_str).collect();
            if refs.len() == 1 && refs[0].eq_ignore_ascii_case("INBOX") {
                continue;
            }
            let name = self.full_name(&refs);
            push(name, &dir)?;
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn subscriptions(&self) -> Result<Vec<String>> {
        self.read_subscriptions()
    }

    fn mailbox_log(&self) -> Result<Vec<MailboxLogEntry>> {
        let mut out = Vec::new();
        for name in [format!("{MAILBOX_LOG}.2"), MAILBOX_LOG.to_string()] {
            let path = self.root.join(name);
            let data = match fs::read(&path) {
                Ok(d) => d,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&path)(e)),
            };
            for r in MailboxLog::new(&data).records() {
                let r = r.map_err(|e| e.with_path(&path))?;
                let kind = match r.kind {
                    MailboxLogType::DeleteMailbox => MailboxLogKind::DeleteMailbox,
                    MailboxLogType::DeleteDir => MailboxLogKind::DeleteDir,
                    MailboxLogType::Rename => MailboxLogKind::Rename,
                    MailboxLogType::Subscribe => MailboxLogKind::Subscribe,
                    MailboxLogType::Unsubscribe => MailboxLogKind::Unsubscribe,
                    // Never written by 2.3; nothing to replay.
                    MailboxLogType::CreateDir => continue,
                };
                out.push(MailboxLogEntry {
                    kind,
                    id: r.mailbox_guid,
                    timestamp: r.timestamp,
                });
            }
        }
        Ok(out)
    }

    fn open_mailbox(&self, name: &str) -> Result<Box<dyn Mailbox + '_>> {
        Ok(Box::new(self.open_maildir(name)?))
    }

    fn find_mailbox(&self, guid: &MailboxGuid) -> Result<Option<String>> {
        Ok(self
            .list_mailboxes()?
            .into_iter()
            .find(|e| e.guid.as_ref() == Some(guid))
            .map(|e| e.name))
    }

    fn begin(&self, name: &str) -> Result<Box<dyn MailboxTransaction + '_>> {
        let (_, dir) = self.existing_mailbox(name)?;
        Ok(Box::new(MaildirTransaction::new(self, dir)?))
    }

    fn create_mailbox(
        &self,
        name: &str,
        guid: Option<MailboxGuid>,
        uid_validity: Option<u32>,
    ) -> Result<MailboxGuid> {
        let r = (|| {
            let comps = self.components(name)?;
            let dir = self.dir_of(&comps);
            if Self::is_mailbox_dir(&dir) {
                return Err(StorageError::MailboxExists(name.into()));
            }
            if self.opts.layout == Layout::Fs {
                let mut p = self.root.clone();
                for c in &comps[..comps.len() - 1] {
                    p = p.join(c);
                    self.mkdir(&p)?;
                }
            }
            self.mkdir(&dir)?;
            for sub in ["tmp", "new"] {
                self.mkdir(&dir.join(sub))?;
            }
            if dir != self.root {
                let marker = dir.join("maildirfolder");
                if !marker.exists() {
                    self.create_file(&marker, b"", 0o600)?;
                }
            }
            let (g, _) = self.ensure_uidlist(&dir, guid, uid_validity)?;
            // cur/ last: its presence is what makes the directory a mailbox.
            self.mkdir(&dir.join("cur"))?;
            Ok(g)
        })();
        if r.is_ok() {
            self.tree_changed();
        }
        r
    }

    fn create_dir(&self, name: &str) -> Result<()> {
        let r = (|| {
            let comps = self.components(name)?;
            if comps == ["INBOX"] {
                return Err(StorageError::MailboxExists(name.into()));
            }
            let dir = self.dir_of(&comps);
            if self.opts.layout == Layout::Fs {
                let mut p = self.root.clone();
                for c in &comps {
                    p = p.join(c);
                    self.mkdir(&p)?;
                }
                Ok(())
            } else {
                // A `.Name` directory is a selectable mailbox to Dovecot; a name
                // with children already exists as their virtual parent.
                let prefix = format!(".{}.", comps.join("."));
                let has_children = self.folder_dirs()?.iter().any(|(_, d)| {
                    d.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&prefix))
                });
                if has_children {
                    return Ok(());
                }
                self.mkdir(&dir)
            }
        })();
        if r.is_ok() {
            self.tree_changed();
        }
        r
    }

    fn set_mailbox_guid(&self, name: &str, guid: MailboxGuid) -> Result<()> {
        let (comps, dir) = self.existing_mailbox(name)?;
        if let Some(other) = self.find_mailbox(&guid)? {
            if other != self.full_name(&comps) {
                return Err(StorageError::Inconsistent {
                    path: dir,
                    why: format!("mailbox {other:?} already has the GUID wanted for {name:?}"),
                });
            }
        }
        let mut t = MaildirTransaction::new(self, dir)?;
        t.set_mailbox_guid(guid);
        t.commit_inner()?;
        list_index::set_mailbox_guid(self, &comps, &guid)
    }

    fn rename_mailbox(&self, old: &str, new: &str, now: u32) -> Result<()> {
        let r = (|| {
            let oc = self.components(old)?;
            let nc = self.components(new)?;
            if oc == ["INBOX"] || nc == ["INBOX"] {
                return Err(StorageError::Unsupported("renaming INBOX or to INBOX"));
            }
            let odir = self.dir_of(&oc);
            let ndir = self.dir_of(&nc);
            if !odir.is_dir() {
                return Err(StorageError::MailboxNotFound(old.into()));
            }
            if ndir.exists() {
                return Err(StorageError::MailboxExists(new.into()));
            }
            match self.opts.layout {
                Layout::Fs => {
                    if let Some(parent) = ndir.parent() {
                        fs::create_dir_all(parent).map_err(io_err(parent))?;
                    }
                    fs::rename(&odir, &ndir).map_err(io_err(&ndir))?;
                }
                Layout::MaildirPlusPlus => {
                    // Children are separate `.a.b` directories that move along.
                    let old_prefix = format!(".{}.", oc.join("."));
                    let new_prefix = format!(".{}.", nc.join("."));
                    let mut children = Vec::new();
                    for e in fs::read_dir(&self.root)
                        .map_err(io_err(&self.root))?
                        .flatten()
                    {
                        if let Some(n) = e.file_name().to_str() {
                            if let Some(rest) = n.strip_prefix(&old_prefix) {
                                children.push((
                                    e.path(),
                                    self.root.join(format!("{new_prefix}{rest}")),
                                ));
                            }
                        }
                    }
                    for (_, to) in &children {
                        if to.exists() {
                            return Err(StorageError::MailboxExists(to.display().to_string()));
                        }
                    }
                    fs::rename(&odir, &ndir).map_err(io_err(&ndir))?;
                    for (from, to) in children {
                        fs::rename(&from, &to).map_err(io_err(&to))?;
                    }
                }
            }
            let full = self.full_name(&nc);
            self.append_mailbox_log(MailboxLogType::Rename, &self.name_hash(&full), now)
        })();
        if r.is_ok() {
            self.tree_changed();
        }
        r
    }

    fn delete_mailbox(&self, name: &str, guid: Option<&MailboxGuid>, now: u32) -> Result<()> {
        let r = (|| {
            let comps = self.components(name)?;
            if comps == ["INBOX"] {
                return Err(StorageError::Unsupported("INBOX cannot be deleted"));
            }
            let dir = self.dir_of(&comps);
            if !Self::is_mailbox_dir(&dir) {
                return Err(StorageError::MailboxNotFound(name.into()));
            }
            let found = Self::uidlist_header(&dir)?.and_then(|h| h.0);
            if let Some(want) = guid {
                if found.as_ref() != Some(want) {
                    return Err(StorageError::GuidMismatch {
                        name: name.into(),
                        expected: index_format::hex(want),
                        found: found.map(|g| index_format::hex(&g)).unwrap_or_default(),
                    });
                }
            }
            // Move it out of sight first (".." names are never listed), then remove.
            let trash = self
                .root
                .join(format!("..DOVECOT-TRASH.{}.{}", std::process::id(), now));
            match self.opts.layout {
                Layout::MaildirPlusPlus => {
                    fs::rename(&dir, &trash).map_err(io_err(&trash))?;
                    fs::remove_dir_all(&trash).map_err(io_err(&trash))?;
                }
                Layout::Fs => {
                    // Children stay; only the mail and index files of this mailbox go.
                    for sub in ["cur", "new", "tmp"] {
                        let p = dir.join(sub);
                        if p.exists() {
                            fs::remove_dir_all(&p).map_err(io_err(&p))?;
                        }
                    }
                    for e in fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
                        if e.file_type().map(|t| t.is_file()).unwrap_or(false) {
                            let _ = fs::remove_file(e.path());
                        }
                    }
                    let _ = fs::remove_dir(&dir);
                }
            }
            if let Some(g) = found {
                self.append_mailbox_log(MailboxLogType::DeleteMailbox, &g, now)?;
            }
            Ok(())
        })();
        if r.is_ok() {
            self.tree_changed();
        }
        r
    }

    fn delete_dir(&self, name: &str, now: u32) -> Result<()> {
        let r = (|| {
            let comps = self.components(name)?;
            let dir = self.dir_of(&comps);
            if Self::is_mailbox_dir(&dir) {
                return Err(StorageError::MailboxExists(name.into()));
            }
            match fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(StorageError::MailboxNotFound(name.into()))
                }
                Err(e) => return Err(io_err(&dir)(e)),
            }
            let full = self.full_name(&comps);
            self.append_mailbox_log(MailboxLogType::DeleteDir, &self.name_hash(&full), now)
        })();
        if r.is_ok() {
            self.tree_changed();
        }
        r
    }

    fn set_subscribed(&self, name: &str, subscribed: bool, now: u32) -> Result<()> {
        let comps = self.components(name)?;
        let full = self.full_name(&comps);
        let changed = self.update_subscriptions(|subs| {
            let had = subs.contains(&full);
            if had == subscribed {
                return false;
            }
            if subscribed {
                subs.push(full.clone());
            } else {
                subs.retain(|s| *s != full);
            }
            true
        })?;
        if !changed {
            return Ok(());
        }
        let kind = if subscribed {
            MailboxLogType::Subscribe
        } else {
            MailboxLogType::Unsubscribe
        };
        self.append_mailbox_log(kind, &self.name_hash(&full), now)
    }
}

pub(crate) fn log_gate_read() -> std::sync::RwLockReadGuard<'static, ()> {
    LOG_GATE.read().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn log_gate() -> &'static RwLock<()> {
    &LOG_GATE
}

/// The start and the end of a `dovecot-uidlist`: enough for its header and
/// its effective next UID (Dovecot appends records without rewriting the
/// header) without reading every record of a large mailbox. A small file
/// is read whole.
pub(crate) struct UidlistEnds {
    /// The file's first bytes (all of it when `whole`).
    pub head: Vec<u8>,
    /// The file's last bytes (empty when `whole`).
    pub tail: Vec<u8>,
    pub whole: bool,
}

impl UidlistEnds {
    /// Bytes read at each end of a large file.
    const WINDOW: u64 = 16 * 1024;

    /// `None`: there is no uidlist.
    pub fn read(path: &Path) -> Result<Option<UidlistEnds>> {
        use std::os::unix::fs::FileExt;
        let file = match fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(path)(e)),
        };
        let len = file.metadata().map_err(io_err(path))?.len();
        let read_at = |at: u64, n: u64| -> Result<Vec<u8>> {
            let mut buf = vec![0; n as usize];
            let mut got = 0;
            while got < buf.len() {
                match file.read_at(&mut buf[got..], at + got as u64) {
                    Ok(0) => break,
                    Ok(k) => got += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(io_err(path)(e)),
                }
            }
            buf.truncate(got);
            Ok(buf)
        };
        if len <= 2 * Self::WINDOW {
            return Ok(Some(UidlistEnds {
                head: read_at(0, len)?,
                tail: Vec::new(),
                whole: true,
            }));
        }
        Ok(Some(UidlistEnds {
            head: read_at(0, Self::WINDOW)?,
            tail: read_at(len - Self::WINDOW, Self::WINDOW)?,
            whole: false,
        }))
    }

    /// The header (with every record when `whole`), the effective next
    /// UID and the last record's UID (0: none); `None` when the ends
    /// cannot tell (a first or last line longer than the window): read the
    /// whole file then.
    pub fn header_and_next(&self, path: &Path) -> Result<Option<(Uidlist<'_>, u32, u32)>> {
        if self.whole {
            let u = Uidlist::parse(&self.head).map_err(|e| e.with_path(path))?;
            let next = u.next_uid();
            let last = u.records.last().map_or(0, |r| r.uid);
            return Ok(Some((u, next, last)));
        }
        if !self.head.contains(&b'\n') {
            return Ok(None);
        }
        let Some(last) = last_record_uid(&self.tail) else {
            return Ok(None);
        };
        let mut h = Uidlist::parse_header(&self.head).map_err(|e| e.with_path(path))?;
        h.partial_tail = self.tail.last() != Some(&b'\n');
        let next = h.header_next_uid.max(last.saturating_add(1));
        Ok(Some((h, next, last)))
    }
}

/// The UID of the last complete record in `tail`, the end of a uidlist
/// (an unterminated last line is being appended and does not count, as in
/// a full parse). `None` when no complete line fits in `tail`.
fn last_record_uid(tail: &[u8]) -> Option<u32> {
    let end = tail.iter().rposition(|&b| b == b'\n')?;
    // Empty lines are skipped by a full parse too.
    let mut complete = &tail[..end];
    while let Some(rest) = complete.strip_suffix(b"\n") {
        complete = rest;
    }
    let start = complete.iter().rposition(|&b| b == b'\n')? + 1;
    let line = &complete[start..];
    let digits = line.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || line.get(digits) != Some(&b' ') {
        return None;
    }
    std::str::from_utf8(&line[..digits]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two-ends reading gives what a full parse gives, for a uidlist
    /// larger than its windows, with a record appended after the header's
    /// `N`, an empty line and an unterminated line being written.
    #[test]
    fn uidlist_header_from_the_ends_matches_a_full_parse() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = String::from("3 V1700000000 N4001 G0123456789abcdef0123456789abcdef\n");
        for uid in 1..=4000u32 {
            text.push_str(&format!(
                "{uid} G{uid:032x} :1700000000.M{uid}P1.host,S=100,W=102\n"
            ));
        }
        text.push_str("4007 :1700000001.M1P2.host,S=5\n\n4008 :partial");
        fs::write(dir.path().join(UIDLIST), &text).unwrap();
        let full = Uidlist::parse(text.as_bytes()).unwrap();
        let got = MaildirStore::uidlist_header(dir.path()).unwrap().unwrap();
        assert_eq!(got, (full.mailbox_guid, full.uid_validity, full.next_uid()));
        assert_eq!(got.2, 4008);
    }

    #[test]
    fn a_tail_without_a_whole_line_is_not_read_as_a_record() {
        assert_eq!(last_record_uid(b"12 :name\n"), None);
        assert_eq!(last_record_uid(b"x\n12 :name\n"), Some(12));
        assert_eq!(last_record_uid(b"x\n12 :name\n13 :partial"), Some(12));
        assert_eq!(last_record_uid(b"x\nbad line\n"), None);
    }
}
