//! The replication queue: one record per user, the order in which users are
//! synced, and the "due" rule.
//!
//! The order follows Dovecot 2.3's replicator (higher priority first, then the
//! oldest fast sync; among idle users failed ones first, then the oldest full
//! sync), but without its head-of-line defect: the real server only looks at
//! the head of one priority queue, so a failed user waiting out its retry
//! interval blocks every other user's periodic full sync. Here idle users are
//! kept in two sets ordered by due time (failed retries and periodic full
//! syncs), and the earliest due user of either set starts.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

/// A pending request level, as stored in `replicator.db` (0-3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    None = 0,
    Low = 1,
    High = 2,
    Sync = 3,
}

impl Priority {
    /// The name used on the wire and in `doveadm replicator status`.
    pub fn name(self) -> &'static str {
        match self {
            Priority::None => "none",
            Priority::Low => "low",
            Priority::High => "high",
            Priority::Sync => "sync",
        }
    }

    /// Parses a wire name (`none`, `low`, `high`, `sync`).
    pub fn from_name(s: &str) -> Option<Priority> {
        match s {
            "none" => Some(Priority::None),
            "low" => Some(Priority::Low),
            "high" => Some(Priority::High),
            "sync" => Some(Priority::Sync),
            _ => None,
        }
    }

    /// Parses the numeric form stored in `replicator.db`.
    pub fn from_number(n: u64) -> Option<Priority> {
        match n {
            0 => Some(Priority::None),
            1 => Some(Priority::Low),
            2 => Some(Priority::High),
            3 => Some(Priority::Sync),
            _ => None,
        }
    }
}

/// Source of "now" in unix seconds, so tests can drive time.
pub trait Clock: Send + Sync {
    fn now(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(now: u64) -> ManualClock {
        ManualClock(AtomicU64::new(now))
    }
    pub fn set(&self, now: u64) {
        self.0.store(now, Ordering::SeqCst);
    }
    pub fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Scheduling settings of the queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueSettings {
    /// `replication_full_sync_interval` in seconds (Dovecot default: 1 day).
    pub full_sync_interval: u64,
    /// Retry interval after a failed sync (fixed at 300 s in Dovecot).
    pub failed_retry_interval: u64,
    /// How long a `sync`-priority waiter waits before it is answered `-`.
    pub sync_timeout: u64,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            full_sync_interval: 86400,
            failed_retry_interval: 300,
            sync_timeout: 10,
        }
    }
}

/// Someone waiting for the result of a `sync`-priority request.
#[derive(Debug)]
pub struct Waiter {
    deadline: u64,
    reply: oneshot::Sender<bool>,
}

impl Waiter {
    fn answer(self, ok: bool) {
        // The requester may have gone away; nothing to do then.
        let _ = self.reply.send(ok);
    }
}

/// One user's replication record.
#[derive(Debug)]
pub struct UserRecord {
    pub username: String,
    pub priority: Priority,
    pub last_update: u64,
    pub last_fast_sync: u64,
    pub last_full_sync: u64,
    pub last_successful_sync: u64,
    pub last_sync_failed: bool,
    /// dsync state for incremental syncs; `None` means unknown (full state exchange).
    pub state: Option<String>,
    pub force_full_sync: bool,
    /// Currently being synced (not in the queue).
    pub popped: bool,
    /// Waiters whose request arrived before the running sync started (answered
    /// when it ends) and waiters for the next sync.
    running_waiters: Vec<Waiter>,
    waiters: Vec<Waiter>,
}

impl UserRecord {
    fn new(username: &str) -> UserRecord {
        UserRecord {
            username: username.to_string(),
            priority: Priority::None,
            last_update: 0,
            last_fast_sync: 0,
            last_full_sync: 0,
            last_successful_sync: 0,
            last_sync_failed: false,
            state: None,
            force_full_sync: false,
            popped: false,
            running_waiters: Vec::new(),
            waiters: Vec::new(),
        }
    }

    /// Number of requesters waiting for this user's next sync result.
    pub fn waiter_count(&self) -> usize {
        self.running_waiters.len() + self.waiters.len()
    }
}

/// Which index set a queued (not popped) user is in, with its sort key.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Slot {
    Requested(Reverse<Priority>, u64),
    FailedIdle(u64),
    Idle(u64),
}

fn slot_of(r: &UserRecord) -> Option<Slot> {
    if r.popped {
        None
    } else if r.priority != Priority::None {
        Some(Slot::Requested(Reverse(r.priority), r.last_fast_sync))
    } else if r.last_sync_failed {
        Some(Slot::FailedIdle(r.last_fast_sync))
    } else {
        Some(Slot::Idle(r.last_full_sync))
    }
}

/// How a sync is shown in `dsync-status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncKind {
    Full,
    Incremental,
    Normal,
}

impl SyncKind {
    pub fn name(self) -> &'static str {
        match self {
            SyncKind::Full => "full",
            SyncKind::Incremental => "incremental",
            SyncKind::Normal => "normal",
        }
    }
}

/// A sync taken out of the queue; run it, then call [`Queue::finish_sync`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncJob {
    pub username: String,
    /// Run a full sync (`-f`): the periodic interval elapsed or a forced full sync was asked.
    pub full: bool,
    pub state: Option<String>,
    pub kind: SyncKind,
    pub started: u64,
}

/// How a sync ended, as far as the queue cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncResult {
    /// Success; the new state (empty means "unknown, do a full exchange next time").
    Ok { state: String },
    /// Completed, but changes during the sync mean it should run again soon
    /// (dsync exit code 2). The state is kept, unlike Dovecot which treats this
    /// as a failure and throws the state away.
    Again { state: String },
    /// Failed; retried after the failed retry interval. The previous state is
    /// kept (Dovecot clears it, which makes the retry a non-incremental sync).
    Failed,
    /// The user does not exist or is marked `noreplicate`: forget the user.
    Remove,
}

/// Counts for the `STATUS` overview.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusCounts {
    pub sync: usize,
    pub high: usize,
    pub low: usize,
    pub failed: usize,
    pub full_resync: usize,
    pub waiting_failed: usize,
    pub total: usize,
}

/// The queue itself. All methods take `now` explicitly so that tests can
/// drive time; the daemon passes its [`Clock`].
#[derive(Debug)]
pub struct Queue {
    settings: QueueSettings,
    users: HashMap<String, UserRecord>,
    requested: BTreeSet<(Reverse<Priority>, u64, String)>,
    failed_idle: BTreeSet<(u64, String)>,
    idle: BTreeSet<(u64, String)>,
    /// Users that may have sync waiters, so that the scheduler's per-sync
    /// waiter checks do not walk every user (a superset: cleaned up by
    /// [`Queue::expire_waiters`]).
    waiting: HashSet<String>,
}

/// True if `mask` contains `*` or `?` wildcards.
pub fn has_wildcards(mask: &str) -> bool {
    mask.contains('*') || mask.contains('?')
}

/// Case-sensitive wildcard match (`*` any run, `?` one character).
pub fn wildcard_match(mask: &str, name: &str) -> bool {
    let m: Vec<char> = mask.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative matcher with single backtrack point: linear-ish, no recursion.
    let (mut mi, mut ni) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if mi < m.len() && (m[mi] == '?' || m[mi] == n[ni]) {
            mi += 1;
            ni += 1;
        } else if mi < m.len() && m[mi] == '*' {
            star = Some((mi, ni));
            mi += 1;
        } else if let Some((smi, sni)) = star {
            mi = smi + 1;
            ni = sni + 1;
            star = Some((smi, sni + 1));
        } else {
            return false;
        }
    }
    while mi < m.len() && m[mi] == '*' {
        mi += 1;
    }
    mi == m.len()
}

impl Queue {
    pub fn new(settings: QueueSettings) -> Queue {
        Queue {
            settings,
            users: HashMap::new(),
            requested: BTreeSet::new(),
            failed_idle: BTreeSet::new(),
            idle: BTreeSet::new(),
            waiting: HashSet::new(),
        }
    }

    pub fn settings(&self) -> &QueueSettings {
        &self.settings
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub fn get(&self, username: &str) -> Option<&UserRecord> {
        self.users.get(username)
    }

    /// All records, in unspecified order.
    pub fn users(&self) -> impl Iterator<Item = &UserRecord> {
        self.users.values()
    }

    fn unindex(&mut self, username: &str) {
        let Some(r) = self.users.get(username) else {
            return;
        };
        match slot_of(r) {
            Some(Slot::Requested(p, t)) => {
                self.requested.remove(&(p, t, username.to_string()));
            }
            Some(Slot::FailedIdle(t)) => {
                self.failed_idle.remove(&(t, username.to_string()));
            }
            Some(Slot::Idle(t)) => {
                self.idle.remove(&(t, username.to_string()));
            }
            None => {}
        }
    }

    fn index(&mut self, username: &str) {
        let Some(r) = self.users.get(username) else {
            return;
        };
        match slot_of(r) {
            Some(Slot::Requested(p, t)) => {
                self.requested.insert((p, t, username.to_string()));
            }
            Some(Slot::FailedIdle(t)) => {
                self.failed_idle.insert((t, username.to_string()));
            }
            Some(Slot::Idle(t)) => {
                self.idle.insert((t, username.to_string()));
            }
            None => {}
        }
    }

    /// Mutates one record and keeps the index sets in step. Creates the user
    /// (priority none, all times 0) if missing.
    fn update<T>(&mut self, username: &str, f: impl FnOnce(&mut UserRecord) -> T) -> T {
        self.unindex(username);
        let r = self
            .users
            .entry(username.to_string())
            .or_insert_with(|| UserRecord::new(username));
        let out = f(r);
        self.index(username);
        out
    }

    /// Adds a user with priority none if it is unknown. `last_update` is 0 for
    /// users from the startup listing and "now" for `ADD` with a mask.
    /// Returns true if the user was new.
    pub fn add(&mut self, username: &str, last_update: u64) -> bool {
        if self.users.contains_key(username) {
            return false;
        }
        self.update(username, |r| r.last_update = last_update);
        true
    }

    /// A replication request (aggregator `U`, doveadm `REPLICATE` for one user).
    /// A lower priority than the pending one changes nothing at all.
    pub fn request(&mut self, username: &str, priority: Priority, force_full: bool, now: u64) {
        self.update(username, |r| {
            if priority < r.priority {
                return;
            }
            r.priority = priority;
            r.last_update = now;
            if force_full {
                r.force_full_sync = true;
            }
        });
    }

    /// A `sync`-priority request: the returned receiver gets `true` when a
    /// sync that started after this call succeeded, `false` when it failed,
    /// the user was removed, or `sync_timeout` passed first (see
    /// [`Queue::expire_waiters`]).
    pub fn request_sync(&mut self, username: &str, now: u64) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        let deadline = now.saturating_add(self.settings.sync_timeout);
        self.request(username, Priority::Sync, false, now);
        self.update(username, |r| {
            r.waiters.push(Waiter {
                deadline,
                reply: tx,
            })
        });
        self.waiting.insert(username.to_string());
        rx
    }

    /// `REPLICATE` with a mask: without wildcards the user is created if
    /// needed and 1 is returned; with wildcards only known users are matched,
    /// and all matches are counted even if their priority did not change.
    pub fn replicate_mask(
        &mut self,
        mask: &str,
        priority: Priority,
        force_full: bool,
        now: u64,
    ) -> usize {
        if !has_wildcards(mask) {
            self.request(mask, priority, force_full, now);
            return 1;
        }
        let names: Vec<String> = self
            .users
            .keys()
            .filter(|u| wildcard_match(mask, u))
            .cloned()
            .collect();
        for u in &names {
            self.request(u, priority, force_full, now);
        }
        names.len()
    }

    /// Forgets a user. Its waiters get `-`. Returns false if unknown.
    pub fn remove(&mut self, username: &str) -> bool {
        self.unindex(username);
        match self.users.remove(username) {
            Some(r) => {
                for w in r.running_waiters.into_iter().chain(r.waiters) {
                    w.answer(false);
                }
                true
            }
            None => false,
        }
    }

    /// `NOTIFY` from the peer's dsync-server: the peer just synced this user
    /// with us, so postpone our own sync. Success time, failed flag and
    /// priority stay as they are.
    pub fn notify(&mut self, username: &str, full: bool, state: &str, now: u64) {
        self.update(username, |r| {
            r.last_fast_sync = now;
            if full {
                r.last_full_sync = now;
            }
            r.last_update = now;
            if !state.is_empty() {
                r.state = Some(state.to_string());
            }
        });
    }

    fn is_due(&self, r: &UserRecord, now: u64) -> bool {
        if r.priority != Priority::None {
            true
        } else if r.last_sync_failed {
            r.last_fast_sync
                .saturating_add(self.settings.failed_retry_interval)
                <= now
        } else {
            r.last_full_sync
                .saturating_add(self.settings.full_sync_interval)
                <= now
        }
    }

    /// The user that should start next, if any is due now.
    pub fn peek_due(&self, now: u64) -> Option<&str> {
        if let Some((_, _, u)) = self.requested.first() {
            return Some(u);
        }
        let failed = self
            .failed_idle
            .first()
            .filter(|(t, _)| t.saturating_add(self.settings.failed_retry_interval) <= now);
        if let Some((_, u)) = failed {
            return Some(u);
        }
        let idle = self
            .idle
            .first()
            .filter(|(t, _)| t.saturating_add(self.settings.full_sync_interval) <= now);
        idle.map(|(_, u)| u.as_str())
    }

    /// When the next user becomes due (unix seconds), or `None` if the queue
    /// holds nobody waiting. A time in the past means "now".
    pub fn next_due_time(&self) -> Option<u64> {
        if !self.requested.is_empty() {
            return Some(0);
        }
        let failed = self
            .failed_idle
            .first()
            .map(|(t, _)| t.saturating_add(self.settings.failed_retry_interval));
        let idle = self
            .idle
            .first()
            .map(|(t, _)| t.saturating_add(self.settings.full_sync_interval));
        match (failed, idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Earliest deadline of any pending sync waiter.
    pub fn next_waiter_deadline(&self) -> Option<u64> {
        self.waiting
            .iter()
            .filter_map(|u| self.users.get(u))
            .flat_map(|r| r.waiters.iter().chain(r.running_waiters.iter()))
            .map(|w| w.deadline)
            .min()
    }

    /// Takes the next due user out of the queue and records the start of its
    /// sync. Call only when a sync slot is free.
    pub fn pop_due(&mut self, now: u64) -> Option<SyncJob> {
        let username = self.peek_due(now)?.to_string();
        self.start_sync(&username, now)
    }

    /// Marks the start of a sync for `username` (which must not be running).
    fn start_sync(&mut self, username: &str, now: u64) -> Option<SyncJob> {
        if self.users.get(username).is_none_or(|r| r.popped) {
            return None;
        }
        let interval = self.settings.full_sync_interval;
        let job = self.update(username, |r| {
            let periodic_full = r.last_full_sync.saturating_add(interval) <= now;
            // A forced full sync really is run as a full sync (Dovecot only
            // moves the timestamp).
            let full = periodic_full || r.force_full_sync;
            r.last_fast_sync = now;
            if full {
                r.last_full_sync = now;
                r.force_full_sync = false;
            }
            r.priority = Priority::None;
            r.popped = true;
            let waiters = std::mem::take(&mut r.waiters);
            r.running_waiters.extend(waiters);
            let kind = if full {
                SyncKind::Full
            } else if r.state.as_deref().is_some_and(|s| !s.is_empty()) {
                SyncKind::Incremental
            } else {
                SyncKind::Normal
            };
            SyncJob {
                username: r.username.clone(),
                full,
                state: r.state.clone(),
                kind,
                started: now,
            }
        });
        Some(job)
    }

    /// Applies the result of a sync started by [`Queue::pop_due`] and answers
    /// the waiters whose request came before that sync started.
    pub fn finish_sync(&mut self, username: &str, result: SyncResult, now: u64) {
        if !self.users.get(username).is_some_and(|r| r.popped) {
            // Removed while running; its waiters were answered then.
            return;
        }
        let (ok, new_state, again) = match result {
            SyncResult::Remove => {
                self.remove(username);
                return;
            }
            SyncResult::Ok { state } => (true, Some(state), false),
            SyncResult::Again { state } => (true, Some(state), true),
            SyncResult::Failed => (false, None, false),
        };
        self.update(username, |r| {
            r.popped = false;
            if ok {
                r.state = new_state.filter(|s| !s.is_empty());
                r.last_sync_failed = false;
                r.last_successful_sync = now;
            } else {
                r.last_sync_failed = true;
            }
            if again && r.priority < Priority::Low {
                r.priority = Priority::Low;
            }
            for w in r.running_waiters.drain(..) {
                w.answer(ok);
            }
        });
    }

    /// Answers `-` to every waiter whose deadline passed. The request itself
    /// stays queued at its priority. Returns how many were answered.
    pub fn expire_waiters(&mut self, now: u64) -> usize {
        let mut n = 0;
        let users = &mut self.users;
        self.waiting.retain(|u| {
            let Some(r) = users.get_mut(u) else {
                return false;
            };
            for list in [&mut r.waiters, &mut r.running_waiters] {
                let (expired, keep): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(list)
                    .into_iter()
                    .partition(|w| w.deadline <= now);
                *list = keep;
                n += expired.len();
                for w in expired {
                    w.answer(false);
                }
            }
            r.waiter_count() > 0
        });
        n
    }

    /// Replaces or adds a record read from `replicator.db`, following the
    /// merge rule: the in-memory record wins if its `last_update` is newer, or
    /// equal with a higher priority.
    pub fn import(&mut self, rec: crate::replicator::db::DbRecord) -> bool {
        if let Some(cur) = self.users.get(&rec.username) {
            if cur.last_update > rec.last_update
                || (cur.last_update == rec.last_update && cur.priority > rec.priority)
            {
                return false;
            }
        }
        let name = rec.username.clone();
        self.update(&name, |r| {
            r.priority = rec.priority;
            r.last_update = rec.last_update;
            r.last_fast_sync = rec.last_fast_sync;
            r.last_full_sync = rec.last_full_sync;
            r.last_sync_failed = rec.last_sync_failed;
            r.state = rec.state.filter(|s| !s.is_empty());
            r.last_successful_sync = rec.last_successful_sync;
        });
        true
    }

    /// The `STATUS` overview counts.
    pub fn status_counts(&self, now: u64) -> StatusCounts {
        let mut c = StatusCounts {
            total: self.users.len(),
            ..StatusCounts::default()
        };
        for r in self.users.values() {
            match r.priority {
                Priority::Sync => c.sync += 1,
                Priority::High => c.high += 1,
                Priority::Low => c.low += 1,
                Priority::None => {
                    if self.is_due(r, now) {
                        if r.last_sync_failed {
                            c.failed += 1;
                        } else {
                            c.full_resync += 1;
                        }
                    } else if r.last_sync_failed {
                        c.waiting_failed += 1;
                    }
                }
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q() -> Queue {
        Queue::new(QueueSettings {
            full_sync_interval: 1000,
            failed_retry_interval: 300,
            sync_timeout: 5,
        })
    }

    fn ok() -> SyncResult {
        SyncResult::Ok {
            state: "S".to_string(),
        }
    }

    #[test]
    fn wildcard_matching() {
        assert!(wildcard_match("b*", "bob"));
        assert!(wildcard_match("*", ""));
        assert!(wildcard_match("a?ice", "alice"));
        assert!(!wildcard_match("a?ice", "aice"));
        assert!(!wildcard_match("B*", "bob"), "case-sensitive");
        assert!(wildcard_match("*o*b", "bob"));
        assert!(!wildcard_match("*x", "bob"));
    }

    #[test]
    fn new_users_are_due_for_full_sync_and_priority_orders_first() {
        let mut q = q();
        let now = 10_000;
        q.add("alice", 0);
        q.add("bob", 0);
        q.request("carol", Priority::Low, false, now);
        q.request("dave", Priority::High, false, now);
        let c = q.status_counts(now);
        assert_eq!((c.high, c.low, c.full_resync, c.total), (1, 1, 2, 4));
        let order: Vec<String> =
            std::iter::from_fn(|| q.pop_due(now).map(|j| j.username)).collect();
        assert_eq!(&order[..2], ["dave", "carol"]);
        assert_eq!(order.len(), 4);
        // Idle users with all-zero times sync as full.
        let mut q2 = self::q();
        q2.add("x", 0);
        let j = q2.pop_due(now).unwrap();
        assert!(j.full);
        assert_eq!(j.kind, SyncKind::Full);
    }

    #[test]
    fn lower_priority_request_changes_nothing() {
        let mut q = q();
        q.request("alice", Priority::High, false, 50);
        q.request("alice", Priority::Low, false, 60);
        let r = q.get("alice").unwrap();
        assert_eq!(r.priority, Priority::High);
        assert_eq!(r.last_update, 50);
        q.request("alice", Priority::Sync, false, 70);
        assert_eq!(q.get("alice").unwrap().priority, Priority::Sync);
    }

    #[test]
    fn same_priority_orders_by_oldest_fast_sync() {
        let mut q = q();
        for (u, fast) in [("a", 300u64), ("b", 100), ("c", 200)] {
            q.import(crate::replicator::db::DbRecord {
                username: u.into(),
                priority: Priority::High,
                last_update: 1,
                last_fast_sync: fast,
                last_full_sync: fast,
                last_sync_failed: false,
                state: None,
                last_successful_sync: 0,
            });
        }
        let order: Vec<String> =
            std::iter::from_fn(|| q.pop_due(5000).map(|j| j.username)).collect();
        assert_eq!(order, ["b", "c", "a"]);
    }

    #[test]
    fn due_rule_and_timers() {
        let mut q = q();
        let t0 = 100_000;
        q.add("alice", 0);
        let j = q.pop_due(t0).unwrap();
        q.finish_sync(&j.username, ok(), t0);
        // Synced at t0: next periodic full sync at t0 + 1000.
        assert_eq!(q.peek_due(t0 + 999), None);
        assert_eq!(q.next_due_time(), Some(t0 + 1000));
        assert_eq!(q.peek_due(t0 + 1000), Some("alice"));
        // A request makes it due at once; a non-full sync with state is incremental.
        q.request("alice", Priority::Low, false, t0 + 10);
        let j = q.pop_due(t0 + 10).unwrap();
        assert!(!j.full);
        assert_eq!(j.kind, SyncKind::Incremental);
        assert_eq!(j.state.as_deref(), Some("S"));
        q.finish_sync("alice", SyncResult::Failed, t0 + 11);
        let r = q.get("alice").unwrap();
        assert!(r.last_sync_failed);
        assert_eq!(r.state.as_deref(), Some("S"), "state kept on failure");
        // Failed: retried 300 s after the fast sync started.
        assert_eq!(q.next_due_time(), Some(t0 + 10 + 300));
        assert_eq!(q.peek_due(t0 + 309), None);
        let c = q.status_counts(t0 + 309);
        assert_eq!((c.waiting_failed, c.failed), (1, 0));
        let c = q.status_counts(t0 + 310);
        assert_eq!((c.waiting_failed, c.failed), (0, 1));
        assert_eq!(q.peek_due(t0 + 310), Some("alice"));
    }

    #[test]
    fn no_starvation_behind_waiting_failed_user() {
        let mut q = q();
        let t0 = 100_000;
        q.add("failer", 0);
        let j = q.pop_due(t0).unwrap();
        q.finish_sync(&j.username, SyncResult::Failed, t0);
        // A user whose periodic full sync is due, while the failed one waits
        // out its 300 s. Dovecot would block it until t0 + 300.
        q.import(crate::replicator::db::DbRecord {
            username: "idle".into(),
            priority: Priority::None,
            last_update: 1,
            last_fast_sync: t0 - 2000,
            last_full_sync: t0 - 2000,
            last_sync_failed: false,
            state: Some("X".into()),
            last_successful_sync: t0 - 2000,
        });
        assert_eq!(q.peek_due(t0 + 1), Some("idle"));
        let j = q.pop_due(t0 + 1).unwrap();
        assert!(j.full);
        // Now nothing is due until the failed retry.
        assert_eq!(q.pop_due(t0 + 2), None);
        assert_eq!(q.next_due_time(), Some(t0 + 300));
        // When both are due, the failed user goes first.
        q.finish_sync("idle", ok(), t0 - 5000);
        assert_eq!(q.peek_due(t0 + 300), Some("failer"));
    }

    #[test]
    fn forced_full_sync_is_full() {
        let mut q = q();
        q.add("u", 0);
        let j = q.pop_due(5000).unwrap();
        q.finish_sync(&j.username, ok(), 5000);
        assert_eq!(q.replicate_mask("u", Priority::Low, true, 5001), 1);
        let j = q.pop_due(5001).unwrap();
        assert!(j.full);
        assert_eq!(j.kind, SyncKind::Full);
        assert!(!q.get("u").unwrap().force_full_sync);
    }

    #[test]
    fn replicate_mask_counts_known_matches() {
        let mut q = q();
        q.add("bob", 0);
        q.add("bert", 0);
        q.add("alice", 0);
        q.request("bob", Priority::High, false, 1);
        assert_eq!(q.replicate_mask("b*", Priority::Low, false, 2), 2);
        assert_eq!(q.get("bob").unwrap().priority, Priority::High);
        assert_eq!(q.get("bert").unwrap().priority, Priority::Low);
        assert_eq!(q.replicate_mask("z*", Priority::Low, false, 2), 0);
        assert_eq!(q.replicate_mask("zed", Priority::Low, false, 2), 1);
        assert!(q.get("zed").is_some());
    }

    #[tokio::test]
    async fn sync_waiters_answered_by_the_sync_that_started_after_them() {
        let mut q = q();
        q.add("u", 0);
        let before = q.request_sync("u", 10);
        let j = q.pop_due(10).unwrap();
        // Arrives during the sync: must wait for the next one.
        let mut during = q.request_sync("u", 11);
        q.finish_sync(&j.username, ok(), 12);
        assert!(before.await.unwrap());
        assert!(
            during.try_recv().is_err(),
            "not answered by the earlier sync"
        );
        assert_eq!(q.get("u").unwrap().priority, Priority::Sync);
        let j = q.pop_due(13).unwrap();
        q.finish_sync(&j.username, SyncResult::Failed, 14);
        assert!(!during.await.unwrap());
    }

    #[tokio::test]
    async fn sync_waiters_time_out_and_removed_users_answer_minus() {
        let mut q = q();
        let w = q.request_sync("u", 100);
        assert_eq!(q.next_waiter_deadline(), Some(105));
        assert_eq!(q.expire_waiters(104), 0);
        assert_eq!(q.expire_waiters(105), 1);
        assert!(!w.await.unwrap());
        // The request itself stays queued.
        assert_eq!(q.get("u").unwrap().priority, Priority::Sync);
        let w = q.request_sync("u", 200);
        assert!(q.remove("u"));
        assert!(!w.await.unwrap());
        assert!(!q.remove("u"));
    }

    #[test]
    fn notify_postpones_without_touching_success() {
        let mut q = q();
        q.add("u", 0);
        q.notify("u", true, "ST", 500);
        let r = q.get("u").unwrap();
        assert_eq!(
            (r.last_fast_sync, r.last_full_sync, r.last_successful_sync),
            (500, 500, 0)
        );
        assert_eq!(r.state.as_deref(), Some("ST"));
        assert_eq!(q.peek_due(1499), None);
        q.notify("u", false, "", 600);
        let r = q.get("u").unwrap();
        assert_eq!((r.last_fast_sync, r.last_full_sync), (600, 500));
        assert_eq!(r.state.as_deref(), Some("ST"));
    }

    #[test]
    fn remove_result_forgets_user() {
        let mut q = q();
        q.add("gone", 0);
        let j = q.pop_due(5000).unwrap();
        assert_eq!(q.status_counts(5000).total, 1, "popped users are counted");
        q.finish_sync(&j.username, SyncResult::Remove, 5001);
        assert!(q.get("gone").is_none());
        assert_eq!(q.next_due_time(), None);
    }

    #[test]
    fn changes_during_sync_keep_state_and_requeue() {
        let mut q = q();
        q.add("u", 0);
        let j = q.pop_due(5000).unwrap();
        q.finish_sync(&j.username, SyncResult::Again { state: "N".into() }, 5001);
        let r = q.get("u").unwrap();
        assert_eq!(r.state.as_deref(), Some("N"));
        assert_eq!(r.priority, Priority::Low);
        assert!(!r.last_sync_failed);
        let j = q.pop_due(5002).unwrap();
        assert_eq!(j.kind, SyncKind::Incremental);
    }
}
