//! Per-user session lock: one dsync session per user at a time inside this
//! server. A second session for the same user waits up to the lock timeout.
//!
//! This is the server's own admission control, not the `-l` lock: when a
//! client asks for `-l` and this side is the one to lock, the session takes
//! Dovecot's `<home>/.dovecot-sync.lock` (fcntl) through the store, so it
//! excludes Dovecot's own syncs of the user too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// The lock could not be taken in time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("couldn't lock user {user}: another session is running (waited {waited:?})")]
pub struct LockTimeout {
    pub user: String,
    pub waited: Duration,
}

/// Held while a user's session runs.
pub struct UserLockGuard {
    _guard: OwnedMutexGuard<()>,
}

/// The table of per-user locks. Entries vanish when no session holds or waits.
#[derive(Default)]
pub struct UserLocks {
    table: Mutex<HashMap<String, Weak<AsyncMutex<()>>>>,
}

impl UserLocks {
    pub fn new() -> UserLocks {
        UserLocks::default()
    }

    fn entry(&self, user: &str) -> Arc<AsyncMutex<()>> {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = t.get(user).and_then(Weak::upgrade) {
            return m;
        }
        // Drop dead entries now and then so the table stays as large as the
        // number of users with a live session.
        if t.len() > 64 {
            t.retain(|_, w| w.strong_count() > 0);
        }
        let m = Arc::new(AsyncMutex::new(()));
        t.insert(user.to_string(), Arc::downgrade(&m));
        m
    }

    /// Takes `user`'s lock, waiting at most `timeout`.
    pub async fn lock(&self, user: &str, timeout: Duration) -> Result<UserLockGuard, LockTimeout> {
        let m = self.entry(user);
        match tokio::time::timeout(timeout, m.lock_owned()).await {
            Ok(guard) => Ok(UserLockGuard { _guard: guard }),
            Err(_) => Err(LockTimeout {
                user: user.to_string(),
                waited: timeout,
            }),
        }
    }

    /// Users with a live entry (held or awaited).
    pub fn live_users(&self) -> usize {
        let t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        t.values().filter(|w| w.strong_count() > 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn second_session_waits_then_times_out() {
        let locks = Arc::new(UserLocks::new());
        let g = locks.lock("alice", Duration::from_secs(1)).await.unwrap();
        // Another user is independent.
        let b = locks.lock("bob", Duration::from_millis(1)).await.unwrap();
        let e = locks
            .lock("alice", Duration::from_secs(5))
            .await
            .err()
            .unwrap();
        assert_eq!(e.user, "alice");
        // Released within the timeout: the waiter gets it.
        let l2 = locks.clone();
        let waiter =
            tokio::spawn(async move { l2.lock("alice", Duration::from_secs(5)).await.is_ok() });
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(g);
        assert!(waiter.await.unwrap());
        drop(b);
        assert_eq!(locks.live_users(), 0);
    }
}
