//! 10,000 users through the daemon's queue with `replication_max_conns = 10`
//! and a fake runner: each user gets exactly one successful sync, the
//! failed ones are retried once, never more than 10 syncs run at once.
//! Not timed (scripts/bench-replicator measures).
//!
//! The same with homing's own engine (`replication_engine = homing`): 300
//! users with small Maildirs replicated to local Maildir replicas through
//! the queue; every replica ends equal to its source, injected failures are
//! retried, and new mail followed by `high` is synced incrementally.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use homing::replicator::engine_runner::{EngineRunner, EngineSettings};
use homing::replicator::runner::SyncFuture;
use homing::replicator::{
    Daemon, Priority, ReplicatorConfig, SyncOutcome, SyncRequest, SyncRunner, SystemClock,
};
use homing::storage::maildir::{MaildirOptions, MaildirStore};
use homing::storage::{MailStore, NewMessage};
use test_support::maildir_file_counts;

const USERS: usize = 10_000;
const FAIL_EVERY: usize = 97;

#[derive(Default)]
struct Counting {
    calls: Mutex<HashMap<String, Vec<SyncRequest>>>,
    running: AtomicUsize,
    max_running: AtomicUsize,
    ok: AtomicUsize,
}

#[derive(Clone)]
struct CountingRunner(Arc<Counting>);

impl SyncRunner for CountingRunner {
    fn sync(&self, req: SyncRequest) -> SyncFuture {
        let c = self.0.clone();
        let now = c.running.fetch_add(1, Ordering::SeqCst) + 1;
        c.max_running.fetch_max(now, Ordering::SeqCst);
        let first = {
            let mut m = c.calls.lock().unwrap();
            let v = m.entry(req.username.clone()).or_default();
            v.push(req.clone());
            v.len() == 1
        };
        let idx: usize = req.username.trim_start_matches('u').parse().unwrap();
        Box::pin(async move {
            tokio::task::yield_now().await;
            c.running.fetch_sub(1, Ordering::SeqCst);
            if first && idx % FAIL_EVERY == 0 {
                SyncOutcome::Failed {
                    reason: "injected".into(),
                }
            } else {
                c.ok.fetch_add(1, Ordering::SeqCst);
                SyncOutcome::Ok {
                    state: format!("state-{idx}"),
                }
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_users_each_synced_once_failures_retried() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, state) = (tmp.path().join("run"), tmp.path().join("state"));
    std::fs::create_dir_all(&base).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    let mut passwd = String::new();
    for i in 0..USERS {
        passwd.push_str(&format!("u{i}:x:5000:5000::/nonexistent::\n"));
    }
    let pw = tmp.path().join("passwd");
    std::fs::write(&pw, passwd).unwrap();
    let mut cfg = ReplicatorConfig::with_dirs(&base, &state);
    cfg.doveadm_server_socket = None;
    cfg.set("replication_max_conns", "10").unwrap();
    cfg.set("replication_failed_retry_interval", "1").unwrap();
    cfg.set("userdb_passwd_file", pw.to_str().unwrap()).unwrap();

    let counting = Arc::new(Counting::default());
    let d = Daemon::start(
        cfg,
        Arc::new(CountingRunner(counting.clone())),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let start = Instant::now();
    while counting.ok.load(Ordering::SeqCst) < USERS {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "only {} of {USERS} users synced",
            counting.ok.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Give a wrongly repeated sync the chance to show up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let records = d.records();
    d.shutdown().await.unwrap();

    let calls = counting.calls.lock().unwrap();
    assert_eq!(calls.len(), USERS, "every user was synced");
    let mut retried = 0;
    for i in 0..USERS {
        let v = &calls[&format!("u{i}")];
        if i % FAIL_EVERY == 0 {
            retried += 1;
            assert_eq!(v.len(), 2, "u{i}: failed once, retried once: {v:?}");
            assert!(
                v[0].full && v[0].state.is_none(),
                "u{i}: first sync is full"
            );
        } else {
            assert_eq!(v.len(), 1, "u{i}: exactly one sync: {v:?}");
            assert!(v[0].full, "u{i}: a never synced user gets a full sync");
        }
    }
    assert_eq!(retried, USERS.div_ceil(FAIL_EVERY));
    assert!(counting.max_running.load(Ordering::SeqCst) <= 10);
    assert!(
        counting.max_running.load(Ordering::SeqCst) >= 2,
        "syncs ran in parallel"
    );
    assert_eq!(records.len(), USERS);
    for r in &records {
        assert_eq!(r.priority, Priority::None, "{}", r.username);
        assert!(!r.last_sync_failed, "{}", r.username);
        let idx = r.username.trim_start_matches('u');
        assert_eq!(r.state.as_deref(), Some(format!("state-{idx}").as_str()));
        assert!(r.last_successful_sync > 0);
    }
}

const ENGINE_USERS: usize = 300;
const ENGINE_FAIL_EVERY: usize = 30;
const MAILS: usize = 3;

/// user → each sync's request and whether it succeeded.
type SyncsByUser = HashMap<String, Vec<(SyncRequest, bool)>>;

/// Runs syncs with the engine and remembers each request and its result.
#[derive(Clone)]
struct EngineCounting {
    inner: EngineRunner,
    replica_root: std::path::PathBuf,
    seen: Arc<Mutex<SyncsByUser>>,
    running: Arc<AtomicUsize>,
    max_running: Arc<AtomicUsize>,
    ok: Arc<AtomicUsize>,
}

impl SyncRunner for EngineCounting {
    fn sync(&self, req: SyncRequest) -> SyncFuture {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        let fut = self.inner.sync(req.clone());
        let me = self.clone();
        Box::pin(async move {
            let outcome = fut.await;
            let ok = matches!(outcome, SyncOutcome::Ok { .. });
            let blocker = me.replica_root.join(&req.username);
            if !ok && blocker.is_file() {
                // The injected failure was seen; the retry may succeed.
                std::fs::remove_file(&blocker).unwrap();
            }
            me.seen
                .lock()
                .unwrap()
                .entry(req.username.clone())
                .or_default()
                .push((req, ok));
            me.running.fetch_sub(1, Ordering::SeqCst);
            if ok {
                me.ok.fetch_add(1, Ordering::SeqCst);
            }
            outcome
        })
    }
}

fn engine_mail(user: &str, i: usize) -> Vec<u8> {
    format!(
        "From: a@example.org\r\nTo: {user}@example.org\r\nMessage-ID: <{user}.{i}@example.org>\r\n\
         Subject: {i}\r\n\r\nbody {i} of {user}\r\n"
    )
    .into_bytes()
}

fn save(root: &std::path::Path, mailbox: &str, user: &str, ids: std::ops::Range<usize>) {
    let store = MaildirStore::open(
        root,
        MaildirOptions {
            fsync: false,
            ..Default::default()
        },
    )
    .unwrap();
    let mut tx = store.begin(mailbox).unwrap();
    for i in ids {
        tx.save(NewMessage::default(), &mut &engine_mail(user, i)[..])
            .unwrap();
    }
    tx.commit().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_runner_replicates_300_small_maildirs_through_the_queue() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, state) = (tmp.path().join("run"), tmp.path().join("state"));
    let (mail, replica) = (tmp.path().join("mail"), tmp.path().join("replica"));
    for d in [&base, &state, &mail, &replica] {
        std::fs::create_dir_all(d).unwrap();
    }
    let mut passwd = String::new();
    for i in 0..ENGINE_USERS {
        let u = format!("u{i}");
        let root = mail.join(&u).join("Maildir");
        std::fs::create_dir_all(&root).unwrap();
        let store = MaildirStore::open(&root, MaildirOptions::default()).unwrap();
        store.create_mailbox("INBOX", None, None).unwrap();
        store.create_mailbox("Work", None, None).unwrap();
        save(&root, "INBOX", &u, 0..MAILS - 1);
        save(&root, "Work", &u, MAILS - 1..MAILS);
        if i % ENGINE_FAIL_EVERY == 0 {
            // A plain file where the replica's directory must go: the first
            // sync fails.
            std::fs::write(replica.join(&u), b"x").unwrap();
        }
        passwd.push_str(&format!("{u}:x:5000:5000::/nonexistent::\n"));
    }
    let pw = tmp.path().join("passwd");
    std::fs::write(&pw, passwd).unwrap();
    let mut cfg = ReplicatorConfig::with_dirs(&base, &state);
    cfg.doveadm_server_socket = None;
    for (k, v) in [
        ("replication_max_conns", "10".to_string()),
        ("replication_failed_retry_interval", "1".to_string()),
        ("userdb_passwd_file", pw.display().to_string()),
        ("replication_engine", "homing".to_string()),
        (
            "replication_mail_location",
            format!("maildir:{}/%u/Maildir", mail.display()),
        ),
        (
            "replication_dsync_destination",
            format!("maildir:{}/%u/Maildir", replica.display()),
        ),
    ] {
        cfg.set(k, &v).unwrap();
    }
    let fifo = cfg.aggregator_fifo.clone().unwrap();
    let runner = EngineCounting {
        inner: EngineRunner::new(EngineSettings::from_config(&cfg)),
        replica_root: replica.clone(),
        seen: Arc::default(),
        running: Arc::default(),
        max_running: Arc::default(),
        ok: Arc::default(),
    };
    let d = Daemon::start(cfg, Arc::new(runner.clone()), Arc::new(SystemClock))
        .await
        .unwrap();
    let wait_ok = |n: usize| {
        let ok = runner.ok.clone();
        async move {
            let start = Instant::now();
            while ok.load(Ordering::SeqCst) < n {
                assert!(
                    start.elapsed() < Duration::from_secs(240),
                    "only {} of {n} syncs succeeded",
                    ok.load(Ordering::SeqCst)
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_ok(ENGINE_USERS).await;

    // New mail for 20 users, announced as a mail process would.
    let later: Vec<String> = (0..20).map(|i| format!("u{}", i * 7 + 1)).collect();
    for u in &later {
        save(&mail.join(u).join("Maildir"), "INBOX", u, MAILS..MAILS + 1);
    }
    let text: String = later.iter().map(|u| format!("{u}\thigh\n")).collect();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&fifo)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    wait_ok(ENGINE_USERS + later.len()).await;
    // Give a wrongly repeated sync the chance to show up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let records = d.records();
    d.shutdown().await.unwrap();

    let seen = runner.seen.lock().unwrap();
    assert_eq!(seen.len(), ENGINE_USERS, "every user was synced");
    for i in 0..ENGINE_USERS {
        let u = format!("u{i}");
        let v = &seen[&u];
        let failed_first = i % ENGINE_FAIL_EVERY == 0;
        let extra = later.contains(&u);
        let expect = 1 + usize::from(failed_first) + usize::from(extra);
        assert_eq!(v.len(), expect, "{u}: {v:?}");
        assert_eq!(v[0].1, !failed_first, "{u}: {v:?}");
        assert!(v[0].0.full && v[0].0.state.is_none(), "{u}: {v:?}");
        if extra {
            let last = &v[v.len() - 1];
            assert!(last.1, "{u}: {v:?}");
            assert!(
                !last.0.full && last.0.state.as_deref().is_some_and(|s| !s.is_empty()),
                "{u}: the high request ran an incremental sync: {v:?}"
            );
        }
        let src = maildir_file_counts(&mail.join(&u).join("Maildir"));
        let dst = maildir_file_counts(&replica.join(&u).join("Maildir"));
        assert_eq!(src, dst, "{u}");
        let total: usize = src.iter().map(|c| c.1).sum();
        assert_eq!(total, MAILS + usize::from(extra), "{u}: {src:?}");
    }
    let max = runner.max_running.load(Ordering::SeqCst);
    assert!((2..=10).contains(&max), "{max} syncs at once");
    for r in &records {
        assert!(!r.last_sync_failed, "{}", r.username);
        assert!(
            r.state.as_deref().is_some_and(|s| s.starts_with("AQAAA")),
            "{r:?}"
        );
    }
}
