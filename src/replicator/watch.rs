//! Filesystem watcher: replication requests for servers whose Dovecot has no
//! replication plugin (Dovecot 2.4 removed it).
//!
//! Every user's mail directory is watched with inotify and changes become the
//! requests the plugin would have sent: new mail is `high`, anything else
//! (flag changes, expunges, mailbox create/delete/rename) is `low`. Events
//! are debounced per user: a burst becomes one request, sent at most
//! `watch_debounce` after its first event.
//!
//! What is watched, per mailbox:
//! * Maildir: the mailbox directory (index files, `dovecot-uidlist`, new
//!   `.Folder` directories), `cur/` and `new/` (not `tmp/`). A file that
//!   appears in `new/` or `cur/` from a directory that is not watched (`tmp/`:
//!   a save) is new mail; renames within and between `cur/` and `new/` are
//!   flag changes (Dovecot renames a file inside `new/` to set flags too).
//! * sdbox/mdbox: every directory under the mail root. A new `u.*` file
//!   (sdbox) or a changed `m.*` file (mdbox storage) is new mail.
//!
//! `dovecot.index.cache`, `dovecot.index` (rewritten from the log) and lock
//! files are ignored: reading mail updates the cache and would cause syncs
//! for nothing. Events of a user whose sync is running are dropped: they are
//! the sync's own writes.
//!
//! Watches are bounded (`watch_max_watches`, and the kernel's
//! `fs.inotify.max_user_watches`): users that do not fit are scanned every
//! `watch_scan_interval` instead (directory mtimes and index log sizes), and
//! this is logged.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use tokio::time::Instant;

use super::queue::Priority;

/// Watcher settings (`watch_*` keys).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchSettings {
    /// `watch_mail_location`, like Dovecot's `mail_location`
    /// (`maildir:~/Maildir`, `sdbox:%h/sdbox`, `mdbox:/var/vmail/%d/%n`);
    /// empty disables the watcher.
    pub mail_location: String,
    /// `watch_default_home`: home template for users the userdb gives no
    /// home (`%u`, `%n`, `%d`), like Dovecot's `default_fields = home=...`.
    pub default_home: String,
    /// `watch_debounce`: how long events of one user are gathered.
    pub debounce: Duration,
    /// `watch_max_watches`: inotify watches this process may use.
    pub max_watches: usize,
    /// `watch_scan_interval`: seconds between scans of unwatched users.
    pub scan_interval: u64,
}

impl Default for WatchSettings {
    fn default() -> Self {
        WatchSettings {
            mail_location: String::new(),
            default_home: String::new(),
            debounce: Duration::from_secs(1),
            max_watches: 8192,
            scan_interval: 300,
        }
    }
}

/// Mail storage layout to watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Maildir,
    Dbox,
}

/// Errors of the watch settings.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("watch_mail_location `{0}`: unsupported format (maildir, sdbox, mdbox)")]
    Format(String),
    #[error("watch_mail_location `{location}` needs a home directory for user {user}")]
    NoHome { location: String, user: String },
    #[error("inotify: {0}")]
    Inotify(#[source] std::io::Error),
}

/// Splits a `mail_location` into its layout and path template (options
/// after a second `:` are dropped).
pub fn parse_location(location: &str) -> Result<(Layout, String), WatchError> {
    let (format, rest) = location
        .split_once(':')
        .ok_or_else(|| WatchError::Format(location.to_string()))?;
    let layout = match format {
        "maildir" => Layout::Maildir,
        "sdbox" | "mdbox" => Layout::Dbox,
        _ => return Err(WatchError::Format(location.to_string())),
    };
    let path = rest.split(':').next().unwrap_or(rest).to_string();
    Ok((layout, path))
}

/// Expands `~`, `%h`, `%u`, `%n`, `%d` (and `%{user}`, `%{home}`) in a path template.
pub fn expand(template: &str, user: &str, home: Option<&str>) -> Option<String> {
    let (n, d) = user.split_once('@').unwrap_or((user, ""));
    let mut t = template.to_string();
    if let Some(rest) = t.strip_prefix("~/") {
        t = format!("{}/{rest}", home?);
    } else if t == "~" {
        t = home?.to_string();
    }
    if t.contains("%h") || t.contains("%{home}") {
        let h = home?;
        t = t.replace("%h", h).replace("%{home}", h);
    }
    Some(
        t.replace("%u", user)
            .replace("%{user}", user)
            .replace("%n", n)
            .replace("%d", d),
    )
}

/// One user to watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchedUser {
    pub username: String,
    pub mail_root: PathBuf,
}

/// Resolves the mail roots of users from their homes.
pub fn resolve_users<'a>(
    settings: &WatchSettings,
    users: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
) -> Result<(Layout, Vec<WatchedUser>), WatchError> {
    let (layout, template) = parse_location(&settings.mail_location)?;
    let mut out = Vec::new();
    for (user, home) in users {
        let default_home = (!settings.default_home.is_empty())
            .then(|| expand(&settings.default_home, user, None))
            .flatten();
        let home = home.map(str::to_string).or(default_home);
        let root = expand(&template, user, home.as_deref()).ok_or_else(|| WatchError::NoHome {
            location: settings.mail_location.clone(),
            user: user.to_string(),
        })?;
        out.push(WatchedUser {
            username: user.to_string(),
            mail_root: PathBuf::from(root),
        });
    }
    out.sort_by(|a, b| a.username.cmp(&b.username));
    Ok((layout, out))
}

/// Where the watcher sends requests.
pub trait WatchSink: Send + Sync + 'static {
    /// Queue a replication request.
    fn request(&self, username: &str, priority: Priority);
    /// True while the user's sync runs (its writes must not cause requests).
    fn syncing(&self, username: &str) -> bool;
}

/// Which directory a watch is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DirKind {
    /// Maildir mailbox directory (index files; the root also holds `.Folder`s).
    MaildirBox,
    MaildirNew,
    MaildirCur,
    /// Any directory of a dbox tree.
    Dbox,
}

/// Files whose changes mean nothing for replication.
fn ignored_file(name: &str) -> bool {
    name == "dovecot.index"
        || name == "dovecot.index.cache"
        || name.ends_with(".lock")
        || name.starts_with("dovecot.index.tmp")
        || name.starts_with("dovecot-uidlist.tmp")
        || name == "dovecot.index.cache.tmp"
        || name.starts_with(".temp.")
}

/// What one event means. `paired` = a `MOVED_TO` whose `MOVED_FROM` was seen
/// in a watched directory (a rename, not a save).
fn classify(kind: DirKind, mask: EventMask, name: &str, paired: bool) -> Option<Priority> {
    if mask.contains(EventMask::ISDIR) {
        // Mailbox created, deleted or renamed.
        return Some(Priority::Low);
    }
    if ignored_file(name) {
        return None;
    }
    let appeared = mask.intersects(EventMask::CREATE | EventMask::MOVED_TO);
    match kind {
        // Dovecot renames a file inside new/ when it sets flags on it.
        DirKind::MaildirNew | DirKind::MaildirCur if appeared && !paired => Some(Priority::High),
        DirKind::MaildirNew | DirKind::MaildirCur => Some(Priority::Low),
        DirKind::MaildirBox => Some(Priority::Low),
        DirKind::Dbox if name.starts_with("u.") && appeared => Some(Priority::High),
        DirKind::Dbox if name.starts_with("m.") && mask.contains(EventMask::MODIFY) => {
            Some(Priority::High)
        }
        DirKind::Dbox if name.starts_with("m.") && appeared => Some(Priority::High),
        DirKind::Dbox => Some(Priority::Low),
    }
}

const DIR_MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::DELETE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::MODIFY)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::ONLYDIR);

/// Directories of one user to watch, with their kind (bounded walk).
fn user_dirs(layout: Layout, root: &Path, limit: usize) -> Vec<(PathBuf, DirKind)> {
    let mut out = Vec::new();
    match layout {
        Layout::Maildir => {
            let mut boxes = vec![root.to_path_buf()];
            if let Ok(rd) = std::fs::read_dir(root) {
                for e in rd.flatten() {
                    let n = e.file_name();
                    let n = n.to_string_lossy();
                    if n.starts_with('.')
                        && n != "."
                        && n != ".."
                        && e.file_type().is_ok_and(|t| t.is_dir())
                    {
                        boxes.push(e.path());
                    }
                }
            }
            for b in boxes {
                out.push((b.join("new"), DirKind::MaildirNew));
                out.push((b.join("cur"), DirKind::MaildirCur));
                out.push((b, DirKind::MaildirBox));
                if out.len() > limit {
                    break;
                }
            }
        }
        Layout::Dbox => {
            let mut stack = vec![root.to_path_buf()];
            while let Some(d) = stack.pop() {
                if let Ok(rd) = std::fs::read_dir(&d) {
                    for e in rd.flatten() {
                        if e.file_type().is_ok_and(|t| t.is_dir()) {
                            stack.push(e.path());
                        }
                    }
                }
                out.push((d, DirKind::Dbox));
                if out.len() > limit {
                    break;
                }
            }
        }
    }
    out
}

/// (path, mtime in ns, size) of the files a scan compares.
type Stamps = Vec<(PathBuf, u128, u64)>;
/// (new-mail part, everything else).
type Fingerprint = (Stamps, Stamps);

/// A cheap fingerprint of a user's mail for the periodic scan: mtimes of
/// the directories (a file added or removed changes them) and sizes and
/// mtimes of index logs and mdbox storage files. Returns (new-mail part,
/// everything else).
fn fingerprint(layout: Layout, root: &Path) -> Fingerprint {
    let stat = |p: &Path| {
        std::fs::metadata(p).ok().map(|m| {
            let t = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            (p.to_path_buf(), t, m.len())
        })
    };
    let mut new_part = Vec::new();
    let mut other = Vec::new();
    for (d, kind) in user_dirs(layout, root, 100_000) {
        match kind {
            DirKind::MaildirNew => new_part.extend(stat(&d)),
            DirKind::MaildirCur => other.extend(stat(&d)),
            DirKind::MaildirBox => {
                other.extend(stat(&d));
                other.extend(stat(&d.join("dovecot.index.log")));
            }
            DirKind::Dbox => {
                other.extend(stat(&d.join("dovecot.index.log")));
                if let Ok(rd) = std::fs::read_dir(&d) {
                    for e in rd.flatten() {
                        let n = e.file_name();
                        if n.to_string_lossy().starts_with("m.") {
                            new_part.extend(stat(&e.path()));
                        }
                    }
                }
                // sdbox: a new u.N file changes its directory's mtime.
                new_part.extend(stat(&d));
            }
        }
    }
    (new_part, other)
}

struct WatchEntry {
    user: usize,
    kind: DirKind,
    dir: PathBuf,
}

/// The running watcher's counters (for tests and logs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchStats {
    /// Users watched with inotify.
    pub watched_users: usize,
    /// Users beyond the limit, scanned periodically.
    pub scanned_users: usize,
    pub watches: usize,
}

struct Watcher {
    layout: Layout,
    settings: WatchSettings,
    users: Vec<WatchedUser>,
    watches: inotify::Watches,
    by_wd: HashMap<WatchDescriptor, WatchEntry>,
    per_user: Vec<Vec<WatchDescriptor>>,
    /// Users not (or no longer) watched: index → last fingerprint.
    scanned: HashMap<usize, Fingerprint>,
    limit_logged: bool,
}

impl Watcher {
    fn stats(&self) -> WatchStats {
        WatchStats {
            watched_users: self.per_user.iter().filter(|w| !w.is_empty()).count(),
            scanned_users: self.scanned.len(),
            watches: self.by_wd.len(),
        }
    }

    /// Adds one directory watch for `user`; false if the limit is reached.
    fn add_dir(&mut self, user: usize, dir: PathBuf, kind: DirKind) -> bool {
        if self.by_wd.len() >= self.settings.max_watches {
            return false;
        }
        match self.watches.add(&dir, DIR_MASK) {
            Ok(wd) => {
                self.per_user[user].push(wd.clone());
                self.by_wd.insert(wd, WatchEntry { user, kind, dir });
                true
            }
            // Kernel limit (ENOSPC) or out of memory: fall back to scanning.
            Err(e) if matches!(e.raw_os_error(), Some(28) | Some(12)) => false,
            // Missing directory (a mailbox not yet created, e.g. `new/` of a
            // fresh user): the parent's CREATE event adds it later.
            Err(_) => true,
        }
    }

    fn drop_watches(&mut self, user: usize) {
        for wd in std::mem::take(&mut self.per_user[user]) {
            self.by_wd.remove(&wd);
            let _ = self.watches.remove(wd);
        }
    }

    /// Moves a user to the periodic scan (limit reached).
    fn move_to_scan(&mut self, user: usize) {
        self.drop_watches(user);
        let fp = fingerprint(self.layout, &self.users[user].mail_root);
        self.scanned.insert(user, fp);
        if !self.limit_logged {
            self.limit_logged = true;
            tracing::warn!(
                "watch limit reached ({} watches): {} and later users are scanned every {}s instead",
                self.by_wd.len(),
                self.users[user].username,
                self.settings.scan_interval
            );
        }
    }

    /// Watches every directory of a user, or moves it to the scan set.
    fn watch_user(&mut self, user: usize) {
        // The mail root may not exist yet: watch its parent? No: Dovecot
        // creates it on first delivery, which the periodic scan notices.
        let root = self.users[user].mail_root.clone();
        if !root.is_dir() {
            let fp = fingerprint(self.layout, &root);
            self.scanned.insert(user, fp);
            return;
        }
        let room = self.settings.max_watches.saturating_sub(self.by_wd.len());
        let dirs = user_dirs(self.layout, &root, room);
        if dirs.len() > room {
            self.move_to_scan(user);
            return;
        }
        for (d, k) in dirs {
            if !self.add_dir(user, d, k) {
                self.move_to_scan(user);
                return;
            }
        }
    }

    /// A directory appeared under a watched one: watch it (and what it holds).
    /// Watches a directory that appeared under a watched one. `High` when
    /// a mail directory already holds files: they arrived before its
    /// watch did, and no event will tell of them.
    fn new_dir(&mut self, user: usize, parent: DirKind, dir: PathBuf) -> Option<Priority> {
        let adds: Vec<(PathBuf, DirKind)> = match parent {
            DirKind::MaildirBox => {
                let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
                match name.as_deref() {
                    Some("new") => vec![(dir, DirKind::MaildirNew)],
                    Some("cur") => vec![(dir, DirKind::MaildirCur)],
                    // The mailbox first: `new/` and `cur/` made after this
                    // are then its CREATE events, those made before are
                    // found now. (The other order loses both when they
                    // appear in between.)
                    Some(n) if n.starts_with('.') => vec![
                        (dir.clone(), DirKind::MaildirBox),
                        (dir.join("new"), DirKind::MaildirNew),
                        (dir.join("cur"), DirKind::MaildirCur),
                    ],
                    _ => vec![],
                }
            }
            DirKind::Dbox => user_dirs(Layout::Dbox, &dir, self.settings.max_watches),
            _ => vec![],
        };
        let mut found = None;
        for (d, k) in adds {
            let mail_dir = matches!(k, DirKind::MaildirNew | DirKind::MaildirCur);
            if mail_dir && std::fs::read_dir(&d).is_ok_and(|mut e| e.next().is_some()) {
                found = Some(Priority::High);
            }
            if !self.add_dir(user, d, k) {
                self.move_to_scan(user);
                return found;
            }
        }
        found
    }

    /// Scans the unwatched users; returns the requests to send.
    fn scan(&mut self) -> Vec<(usize, Priority)> {
        let mut out = Vec::new();
        let keys: Vec<usize> = self.scanned.keys().copied().collect();
        for u in keys {
            let fp = fingerprint(self.layout, &self.users[u].mail_root);
            if let Some(old) = self.scanned.get(&u) {
                if old.0 != fp.0 {
                    out.push((u, Priority::High));
                } else if old.1 != fp.1 {
                    out.push((u, Priority::Low));
                }
            }
            self.scanned.insert(u, fp);
        }
        out
    }
}

/// Handle of a running watcher.
pub struct WatchHandle {
    pub task: tokio::task::JoinHandle<()>,
    /// Counters as they were after the initial watches were set.
    pub initial: WatchStats,
}

/// Starts watching `users`. Sets every watch before returning, so changes
/// made after this returns are seen.
pub fn spawn(
    settings: WatchSettings,
    layout: Layout,
    users: Vec<WatchedUser>,
    sink: Arc<dyn WatchSink>,
) -> Result<WatchHandle, WatchError> {
    let inotify = Inotify::init().map_err(WatchError::Inotify)?;
    let n = users.len();
    let mut w = Watcher {
        layout,
        watches: inotify.watches(),
        settings,
        users,
        by_wd: HashMap::new(),
        per_user: vec![Vec::new(); n],
        scanned: HashMap::new(),
        limit_logged: false,
    };
    for u in 0..n {
        w.watch_user(u);
    }
    let initial = w.stats();
    tracing::info!(
        "watching {} users ({} watches), scanning {}",
        initial.watched_users,
        initial.watches,
        initial.scanned_users
    );
    let stream = inotify
        .into_event_stream(vec![0u8; 64 * 1024])
        .map_err(WatchError::Inotify)?;
    let task = tokio::spawn(run(w, stream, sink));
    Ok(WatchHandle { task, initial })
}

async fn run(mut w: Watcher, mut stream: inotify::EventStream<Vec<u8>>, sink: Arc<dyn WatchSink>) {
    let debounce = w.settings.debounce;
    let scan_every = Duration::from_secs(w.settings.scan_interval.max(1));
    let mut next_scan = Instant::now() + scan_every;
    // user → (highest priority so far, when to send).
    let mut pending: HashMap<usize, (Priority, Instant)> = HashMap::new();
    // MOVED_FROM cookies seen in watched directories (bounded: a rename's
    // two events are adjacent in the queue, so old cookies can go).
    let mut cookies: HashSet<u32> = HashSet::new();
    loop {
        let flush_at = pending.values().map(|(_, t)| *t).min();
        let wake = flush_at.map_or(next_scan, |t| t.min(next_scan));
        tokio::select! {
            ev = stream.next() => {
                let Some(ev) = ev else { return };
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(e) => {
                        tracing::error!("inotify read failed: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                if ev.mask.contains(EventMask::Q_OVERFLOW) {
                    // Events were lost: every watched user may have changed.
                    tracing::warn!("inotify queue overflowed; requesting a sync of every watched user");
                    let now = Instant::now();
                    for (u, wds) in w.per_user.iter().enumerate() {
                        if !wds.is_empty() {
                            pending.entry(u).or_insert((Priority::Low, now + debounce));
                        }
                    }
                    continue;
                }
                let Some(entry) = w.by_wd.get(&ev.wd) else { continue };
                let (user, kind, dir) = (entry.user, entry.kind, entry.dir.clone());
                if ev.mask.contains(EventMask::IGNORED) || ev.mask.contains(EventMask::DELETE_SELF) {
                    // The directory is gone (mailbox deleted).
                    if let Some(e) = w.by_wd.remove(&ev.wd) {
                        w.per_user[e.user].retain(|x| *x != ev.wd);
                    }
                    bump(&mut pending, user, Priority::Low, debounce);
                    continue;
                }
                let name = ev.name.as_deref().map(OsStr::to_string_lossy).unwrap_or_default();
                if ev.mask.contains(EventMask::MOVED_FROM) {
                    if cookies.len() > 4096 {
                        cookies.clear();
                    }
                    cookies.insert(ev.cookie);
                }
                let paired = ev.mask.contains(EventMask::MOVED_TO) && cookies.remove(&ev.cookie);
                let early = if ev.mask.contains(EventMask::ISDIR)
                    && ev.mask.intersects(EventMask::CREATE | EventMask::MOVED_TO)
                {
                    w.new_dir(user, kind, dir.join(&*name))
                } else {
                    None
                };
                let username = &w.users[user].username;
                if sink.syncing(username) {
                    continue;
                }
                // A renamed mailbox brings its mails along: not new.
                if let (Some(p), true) = (early, ev.mask.contains(EventMask::CREATE)) {
                    bump(&mut pending, user, p, debounce);
                }
                if let Some(p) = classify(kind, ev.mask, &name, paired) {
                    tracing::debug!("{username}: {:?} {name} in {} -> {}", ev.mask, dir.display(), p.name());
                    bump(&mut pending, user, p, debounce);
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                if now >= next_scan {
                    next_scan = now + scan_every;
                    for (u, p) in w.scan() {
                        if !sink.syncing(&w.users[u].username) {
                            bump(&mut pending, u, p, Duration::ZERO);
                        }
                    }
                }
                let due: Vec<usize> = pending
                    .iter()
                    .filter(|(_, (_, t))| *t <= now)
                    .map(|(u, _)| *u)
                    .collect();
                for u in due {
                    if let Some((p, _)) = pending.remove(&u) {
                        sink.request(&w.users[u].username, p);
                    }
                }
            }
        }
    }
}

fn bump(
    pending: &mut HashMap<usize, (Priority, Instant)>,
    user: usize,
    p: Priority,
    debounce: Duration,
) {
    let e = pending
        .entry(user)
        .or_insert((Priority::None, Instant::now() + debounce));
    e.0 = e.0.max(p);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        let (l, p) = parse_location("maildir:~/Maildir:LAYOUT=fs").unwrap();
        assert_eq!((l, p.as_str()), (Layout::Maildir, "~/Maildir"));
        assert_eq!(parse_location("mdbox:/v/%d/%n").unwrap().0, Layout::Dbox);
        assert!(parse_location("mbox:~/mail").is_err());
        assert!(parse_location("nothing").is_err());
        assert_eq!(
            expand("~/Maildir", "a@b.c", Some("/h/a")).as_deref(),
            Some("/h/a/Maildir")
        );
        assert_eq!(
            expand("/v/%d/%n/%u", "a@b.c", None).as_deref(),
            Some("/v/b.c/a/a@b.c")
        );
        assert_eq!(expand("%h/x", "a", None), None);
    }

    #[test]
    fn resolves_homes() {
        let s = WatchSettings {
            mail_location: "maildir:~/Maildir".into(),
            default_home: "/home/%u".into(),
            ..WatchSettings::default()
        };
        let (_, u) = resolve_users(&s, [("b", None), ("a", Some("/x/a"))]).unwrap();
        assert_eq!(u[0].mail_root, PathBuf::from("/x/a/Maildir"));
        assert_eq!(u[1].mail_root, PathBuf::from("/home/b/Maildir"));
        let s = WatchSettings {
            default_home: String::new(),
            ..s
        };
        assert!(resolve_users(&s, [("b", None)]).is_err());
    }

    /// A mailbox whose `new/` got a mail before the mailbox's own watch
    /// existed: watching it finds the mail (`High`), and `new/` and `cur/`
    /// are watched whether they appeared before or after.
    #[test]
    fn a_new_mailbox_is_watched_with_what_it_already_holds() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("Maildir");
        std::fs::create_dir_all(root.join("new")).unwrap();
        let inotify = Inotify::init().unwrap();
        let mut w = Watcher {
            layout: Layout::Maildir,
            watches: inotify.watches(),
            settings: WatchSettings::default(),
            users: vec![WatchedUser {
                username: "bob".into(),
                mail_root: root.clone(),
            }],
            by_wd: HashMap::new(),
            per_user: vec![Vec::new()],
            scanned: HashMap::new(),
            limit_logged: false,
        };
        let empty = root.join(".Empty");
        std::fs::create_dir_all(empty.join("new")).unwrap();
        std::fs::create_dir_all(empty.join("cur")).unwrap();
        assert_eq!(w.new_dir(0, DirKind::MaildirBox, empty), None);
        let lists = root.join(".Lists");
        std::fs::create_dir_all(lists.join("new")).unwrap();
        std::fs::write(lists.join("new").join("1.M1P1.host"), b"x").unwrap();
        assert_eq!(
            w.new_dir(0, DirKind::MaildirBox, lists),
            Some(Priority::High)
        );
        // Three watches per mailbox (the mailbox, `new/`, `cur/`; `cur/`
        // of `.Lists` is missing and comes with its CREATE event).
        assert_eq!(w.stats().watches, 5);
    }

    #[test]
    fn classification() {
        let c = EventMask::CREATE;
        let to = EventMask::MOVED_TO;
        assert_eq!(
            classify(DirKind::MaildirNew, to, "1.M1.h", false),
            Some(Priority::High)
        );
        assert_eq!(
            classify(DirKind::MaildirNew, c, "1.M1.h", false),
            Some(Priority::High)
        );
        // Saved with flags straight from tmp/ into cur/: new mail.
        assert_eq!(
            classify(DirKind::MaildirCur, to, "1.M1.h:2,S", false),
            Some(Priority::High)
        );
        // Renamed within cur/ or from new/: a flag change.
        assert_eq!(
            classify(DirKind::MaildirCur, to, "1.M1.h:2,S", true),
            Some(Priority::Low)
        );
        assert_eq!(
            classify(DirKind::MaildirCur, EventMask::DELETE, "x", false),
            Some(Priority::Low)
        );
        assert_eq!(
            classify(
                DirKind::MaildirBox,
                EventMask::MODIFY,
                "dovecot.index.log",
                false
            ),
            Some(Priority::Low)
        );
        assert_eq!(
            classify(
                DirKind::MaildirBox,
                EventMask::MODIFY,
                "dovecot.index.cache",
                false
            ),
            None
        );
        assert_eq!(
            classify(DirKind::MaildirBox, c, "dovecot-uidlist.lock", false),
            None
        );
        assert_eq!(
            classify(DirKind::Dbox, to, "u.12", false),
            Some(Priority::High)
        );
        assert_eq!(
            classify(DirKind::Dbox, EventMask::MODIFY, "m.3", false),
            Some(Priority::High)
        );
        assert_eq!(
            classify(DirKind::Dbox, EventMask::MODIFY, "dovecot.index.log", false),
            Some(Priority::Low)
        );
        assert_eq!(
            classify(DirKind::Dbox, c | EventMask::ISDIR, "Sent", false),
            Some(Priority::Low)
        );
    }
}
