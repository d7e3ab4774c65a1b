//! Locks as Dovecot takes them (spec index-format §9): dotlocks
//! (`<file>.lock`, O_EXCL, `pid:host` content, stale detection) and fcntl
//! write locks on the whole file (transaction log, sync lock files).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use rustix::fs::{fcntl_lock, FlockOperation};

use super::{io_err, Result, StorageError};

/// Who owns the files we create (the mail user), applied when running as root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    /// The owner of `path` when this process runs as root (so created files
    /// belong to the mail user); `None` otherwise (files are ours already).
    pub fn of_path_if_root(path: &Path) -> Result<Option<Owner>> {
        if !rustix::process::geteuid().is_root() {
            return Ok(None);
        }
        let md = std::fs::metadata(path).map_err(io_err(path))?;
        Ok(Some(Owner {
            uid: md.uid(),
            gid: md.gid(),
        }))
    }

    /// Creates a file that must not exist yet with `mode`, owned by `owner`
    /// (the mail user when we run as root). `Ok(None)`: it exists.
    pub fn create_new(owner: Option<Owner>, path: &Path, mode: u32) -> Result<Option<File>> {
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
        {
            Ok(f) => {
                Owner::apply_fd(owner, &f, path)?;
                Ok(Some(f))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(io_err(path)(e)),
        }
    }

    /// [`Owner::create_new`], where an existing file is an error.
    pub fn create_fresh(owner: Option<Owner>, path: &Path, mode: u32) -> Result<File> {
        Owner::create_new(owner, path, mode)?
            .ok_or_else(|| io_err(path)(std::io::Error::from(std::io::ErrorKind::AlreadyExists)))
    }

    pub fn apply(owner: Option<Owner>, path: &Path) -> Result<()> {
        if let Some(o) = owner {
            std::os::unix::fs::lchown(path, Some(o.uid), Some(o.gid)).map_err(io_err(path))?;
        }
        Ok(())
    }

    pub fn apply_fd(owner: Option<Owner>, file: &File, path: &Path) -> Result<()> {
        if let Some(o) = owner {
            std::os::unix::fs::fchown(file, Some(o.uid), Some(o.gid)).map_err(io_err(path))?;
        }
        Ok(())
    }
}

fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// A held dotlock; removed on drop.
#[derive(Debug)]
pub struct Dotlock {
    path: PathBuf,
    file: Option<File>,
}

/// Parameters of a dotlock (Dovecot's defaults differ per file).
#[derive(Debug, Clone, Copy)]
pub struct DotlockSettings {
    /// Give up after this long.
    pub timeout: Duration,
    /// A lock whose file and protected file did not change for this long is stale.
    pub stale_timeout: Duration,
}

impl DotlockSettings {
    /// `dovecot-uidlist.lock`: stale after 120 s.
    pub const UIDLIST: DotlockSettings = DotlockSettings {
        timeout: Duration::from_secs(120),
        stale_timeout: Duration::from_secs(120),
    };
    /// `subscriptions.lock`: stale after 30 s.
    pub const SUBSCRIPTIONS: DotlockSettings = DotlockSettings {
        timeout: Duration::from_secs(120),
        stale_timeout: Duration::from_secs(30),
    };
}

impl Dotlock {
    /// Takes `<target>.lock`, waiting up to the timeout; the lock file
    /// holds `pid:host` from the moment it exists (made by a hard link).
    pub fn acquire(
        target: &Path,
        settings: DotlockSettings,
        owner: Option<Owner>,
    ) -> Result<Dotlock> {
        Self::acquire_inner(target, settings, owner, true)
    }

    /// Like [`Dotlock::acquire`] for replace-style updates: the lock file
    /// stays empty, to receive the new content ([`Dotlock::replace`]).
    pub fn acquire_for_replace(
        target: &Path,
        settings: DotlockSettings,
        owner: Option<Owner>,
    ) -> Result<Dotlock> {
        Self::acquire_inner(target, settings, owner, false)
    }

    fn acquire_inner(
        target: &Path,
        settings: DotlockSettings,
        owner: Option<Owner>,
        write_pid: bool,
    ) -> Result<Dotlock> {
        let mut lock_path = target.as_os_str().to_os_string();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        let start = Instant::now();
        let me = format!(
            "{}:{}",
            rustix::process::getpid().as_raw_nonzero(),
            hostname()
        );
        let mut delay = Duration::from_millis(5);
        loop {
            // `None`: someone holds it.
            let made = if write_pid {
                link_with_pid(&lock_path, &me, owner)?
            } else {
                Owner::create_new(owner, &lock_path, 0o600)?
            };
            if let Some(f) = made {
                return Ok(Dotlock {
                    path: lock_path,
                    file: Some(f),
                });
            }
            if is_stale(&lock_path, target, settings.stale_timeout) {
                // Another waiter may remove it first; both then race to make it.
                let _ = std::fs::remove_file(&lock_path);
                continue;
            }
            if start.elapsed() >= settings.timeout {
                return Err(StorageError::LockTimeout {
                    path: lock_path,
                    secs: settings.timeout.as_secs(),
                });
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(100));
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The lock file, for replace-style updates that write the new content
    /// into it and rename it over the target.
    pub fn file_mut(&mut self) -> Option<&mut File> {
        self.file.as_mut()
    }

    /// Renames the lock file over `target` (the lock is released by this).
    pub fn replace(mut self, target: &Path) -> Result<()> {
        if let Some(f) = self.file.take() {
            f.sync_all().map_err(io_err(&self.path))?;
        }
        std::fs::rename(&self.path, target).map_err(io_err(target))?;
        // Nothing left to remove.
        self.path = PathBuf::new();
        Ok(())
    }
}

impl Drop for Dotlock {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Creates the lock file `lock` with `content` already in it: written to a
/// file of this process's own and hard-linked to the lock's name, so a
/// process killed at any point never leaves an empty lock (Dovecot, finding
/// no pid in one, waits out its stale timeout: two minutes for a uidlist).
/// `Ok(None)`: the lock is held by someone else.
fn link_with_pid(lock: &Path, content: &str, owner: Option<Owner>) -> Result<Option<File>> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = lock.as_os_str().to_os_string();
    name.push(format!(".{}.{n}.tmp", content.replace(':', ".")));
    let tmp = PathBuf::from(name);
    let mut f = Owner::create_fresh(owner, &tmp, 0o600)?;
    let linked = f
        .write_all(content.as_bytes())
        .map_err(io_err(&tmp))
        .and_then(|()| match std::fs::hard_link(&tmp, lock) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io_err(lock)(e)),
        });
    let _ = std::fs::remove_file(&tmp);
    Ok(linked?.then_some(f))
}

/// Dovecot's stale rule: dead pid on this host (lock older than 2 s), or
/// neither the lock nor the protected file changed for `stale_timeout`.
fn is_stale(lock: &Path, target: &Path, stale_timeout: Duration) -> bool {
    let Ok(md) = std::fs::metadata(lock) else {
        return false;
    };
    let age = |m: &std::fs::Metadata| {
        m.modified()
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .unwrap_or_default()
    };
    let lock_age = age(&md);
    if lock_age > Duration::from_secs(2) {
        if let Ok(content) = std::fs::read_to_string(lock) {
            if let Some((pid, host)) = content.split_once(':') {
                if host == hostname() {
                    if let Some(pid) = pid
                        .trim()
                        .parse::<i32>()
                        .ok()
                        .and_then(rustix::process::Pid::from_raw)
                    {
                        if rustix::process::test_kill_process(pid) == Err(rustix::io::Errno::SRCH) {
                            return true;
                        }
                    }
                }
            }
        }
    }
    let target_age = std::fs::metadata(target)
        .map(|m| age(&m))
        .unwrap_or(Duration::MAX);
    lock_age >= stale_timeout && target_age >= stale_timeout
}

/// An fcntl write lock on a whole file (the transaction log), held while the
/// `File` is alive. fcntl locks are per process: never open and close another
/// descriptor of the same file in this process while holding it.
#[derive(Debug)]
pub struct FcntlLock {
    file: File,
    path: PathBuf,
    unlink_on_drop: bool,
}

impl FcntlLock {
    /// Opens `path` (read+append) and waits up to `timeout` for an exclusive
    /// lock; re-opens if the path was replaced meanwhile (log rotation).
    pub fn lock_existing(path: &Path, timeout: Duration) -> Result<FcntlLock> {
        Self::lock(path, timeout, false, None)
    }

    /// Creates (if needed) and locks a lock file that is unlinked before it
    /// is unlocked (Dovecot's `.dovecot-sync.lock` / `.dovecot-box-sync.lock`).
    pub fn lock_file(path: &Path, timeout: Duration, owner: Option<Owner>) -> Result<FcntlLock> {
        Self::lock(path, timeout, true, owner)
    }

    fn lock(
        path: &Path,
        timeout: Duration,
        create: bool,
        owner: Option<Owner>,
    ) -> Result<FcntlLock> {
        let start = Instant::now();
        loop {
            let file = OpenOptions::new()
                .read(true)
                .append(true)
                .create(create)
                .mode(0o600)
                .open(path)
                .map_err(io_err(path))?;
            if create {
                Owner::apply_fd(owner, &file, path)?;
            }
            let mut delay = Duration::from_millis(2);
            loop {
                match fcntl_lock(&file, FlockOperation::NonBlockingLockExclusive) {
                    Ok(()) => break,
                    Err(e) if e == rustix::io::Errno::AGAIN || e == rustix::io::Errno::ACCESS => {
                        if start.elapsed() >= timeout {
                            return Err(StorageError::LockTimeout {
                                path: path.to_path_buf(),
                                secs: timeout.as_secs(),
                            });
                        }
                        std::thread::sleep(delay);
                        delay = (delay * 2).min(Duration::from_millis(50));
                    }
                    Err(e) => return Err(io_err(path)(e.into())),
                }
            }
            // The path may have been replaced (rotation, or the holder
            // unlinked its lock file) while we waited.
            let fmd = file.metadata().map_err(io_err(path))?;
            match std::fs::metadata(path) {
                Ok(pmd) if pmd.ino() == fmd.ino() && pmd.dev() == fmd.dev() => {
                    return Ok(FcntlLock {
                        file,
                        path: path.to_path_buf(),
                        unlink_on_drop: create,
                    });
                }
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => continue,
                Err(e) => return Err(io_err(path)(e)),
            }
        }
    }

    pub fn file(&self) -> &File {
        &self.file
    }
}

impl Drop for FcntlLock {
    fn drop(&mut self) {
        if self.unlink_on_drop {
            let _ = std::fs::remove_file(&self.path);
        }
        // Closing the descriptor releases the lock.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotlock_excludes_and_cleans_up() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("dovecot-uidlist");
        let l = Dotlock::acquire(&target, DotlockSettings::UIDLIST, None).unwrap();
        let content = std::fs::read_to_string(l.path()).unwrap();
        assert!(content.starts_with(&format!("{}:", std::process::id())));
        let quick = DotlockSettings {
            timeout: Duration::from_millis(50),
            stale_timeout: Duration::from_secs(120),
        };
        assert!(matches!(
            Dotlock::acquire(&target, quick, None),
            Err(StorageError::LockTimeout { .. })
        ));
        drop(l);
        assert!(!d.path().join("dovecot-uidlist.lock").exists());
        Dotlock::acquire(&target, quick, None).unwrap();
    }

    /// The lock file is made by a hard link of a file that already holds
    /// `pid:host`: it is never seen empty, and no helper file stays.
    #[test]
    fn the_lock_file_is_never_empty_and_leaves_nothing_behind() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("dovecot-uidlist");
        for _ in 0..20 {
            let l = Dotlock::acquire(&target, DotlockSettings::UIDLIST, None).unwrap();
            let content = std::fs::read_to_string(l.path()).unwrap();
            assert_eq!(content, format!("{}:{}", std::process::id(), hostname()));
            let names: Vec<String> = std::fs::read_dir(d.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert_eq!(names, ["dovecot-uidlist.lock"]);
        }
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn dead_holder_lock_is_stale() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("subscriptions");
        let lock = d.path().join("subscriptions.lock");
        // A pid that cannot exist on Linux (above pid_max's hard limit).
        std::fs::write(&lock, format!("{}:{}", 0x3fff_fff0, hostname())).unwrap();
        let old = SystemTime::now() - Duration::from_secs(10);
        File::options()
            .write(true)
            .open(&lock)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let quick = DotlockSettings {
            timeout: Duration::from_millis(200),
            stale_timeout: Duration::from_secs(30),
        };
        Dotlock::acquire(&target, quick, None).unwrap();
    }
}
