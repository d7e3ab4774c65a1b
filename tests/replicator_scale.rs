//! 10,000 users through the daemon's queue with `replication_max_conns = 10`
//! and a fake runner: each user gets exactly one successful sync, the
//! failed ones are retried once, never more than 10 syncs run at once.
//! Not timed (scripts/bench-replicator measures).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use homing::replicator::runner::SyncFuture;
use homing::replicator::{
    Daemon, Priority, ReplicatorConfig, SyncOutcome, SyncRequest, SyncRunner, SystemClock,
};

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
