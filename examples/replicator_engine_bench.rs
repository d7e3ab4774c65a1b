//! `homing replicator` with homing's own sync engine (`replication_engine =
//! homing`) replicating many small Maildirs to local replicas
//! (`replication_dsync_destination = maildir:<dir>/%u/Maildir`), through the
//! daemon's queue. Used by `scripts/bench-replicator --engine`.
//!
//! Every user has INBOX and Work with `--mails` mails in all (written with
//! homing's Maildir store, so each has its index log and uidlist) and is new
//! to the replicator, so all are due for a full sync at start. The first
//! sync of every `--fail-every`th user fails (its replica path is a plain
//! file until that failure is seen) and must be retried after
//! `replication_failed_retry_interval` (1 s). Once a fifth of the users are
//! done, `--high` of them get one new mail and a `high` request through the
//! FIFO, as a mail process would send. At the end every replica is checked
//! against its source (mail count per mailbox).
//!
//! Output: one `key: value` line per figure; exit 1 if a user was starved,
//! a failure was not retried or a replica differs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use homing::replicator::engine_runner::{EngineRunner, EngineSettings};
use homing::replicator::{Daemon, SyncFuture, SyncOutcome, SyncRequest, SyncRunner, SystemClock};
use homing::storage::maildir::{MaildirOptions, MaildirStore};
use homing::storage::{flags, MailStore, NewMessage};
use test_support::maildir_file_counts;

#[path = "common/bench.rs"]
mod bench;
use bench::{
    arg, daemon_config, first_syncs, max_high_wait, peak_rss_kib, send_high, synced_users,
    FirstSyncs,
};

#[derive(Default)]
struct Log {
    /// user → (start relative to t0, duration, success) of each sync.
    syncs: HashMap<String, Vec<(Duration, Duration, bool)>>,
    ok: usize,
    high_sent: Option<Duration>,
    running: usize,
    max_running: usize,
}

struct Bench {
    inner: EngineRunner,
    t0: Instant,
    replica_root: PathBuf,
    log: Arc<Mutex<Log>>,
}

impl SyncRunner for Bench {
    fn sync(&self, req: SyncRequest) -> SyncFuture {
        let at = self.t0.elapsed();
        {
            let mut l = self.log.lock().unwrap();
            l.running += 1;
            l.max_running = l.max_running.max(l.running);
        }
        let fut = self.inner.sync(req.clone());
        let log = self.log.clone();
        let blocker = self.replica_root.join(&req.username);
        Box::pin(async move {
            let started = Instant::now();
            let outcome = fut.await;
            let took = started.elapsed();
            let ok = matches!(outcome, SyncOutcome::Ok { .. });
            if !ok && blocker.is_file() {
                // The injected failure was seen: clear it for the retry.
                let _ = std::fs::remove_file(&blocker);
            }
            let mut l = log.lock().unwrap();
            l.running -= 1;
            l.syncs
                .entry(req.username.clone())
                .or_default()
                .push((at, took, ok));
            if ok {
                l.ok += 1;
            } else if let SyncOutcome::Failed { reason } = &outcome {
                if !reason.contains("Not a directory") && !reason.contains("File exists") {
                    eprintln!("{}: {reason}", req.username);
                }
            }
            outcome
        })
    }
}

fn mail(user: &str, i: usize) -> Vec<u8> {
    let mut m = format!(
        "From: sender{i}@example.org\r\nTo: {user}@example.org\r\n\
         Message-ID: <{user}.{i}@example.org>\r\nSubject: message {i} for {user}\r\n\
         Date: Sat, 28 Nov 2026 12:00:00 +0000\r\n\r\n"
    );
    for line in 0..20 {
        m.push_str(&format!(
            "line {line} of a small test message number {i}\r\n"
        ));
    }
    m.into_bytes()
}

/// Writes `user`'s Maildir: `mails` mails over INBOX and Work.
fn populate(root: &Path, user: &str, mails: usize) {
    let opts = MaildirOptions {
        fsync: false,
        ..Default::default()
    };
    std::fs::create_dir_all(root).expect("Maildir root");
    let store = MaildirStore::open(root, opts).expect("open source Maildir");
    for name in ["INBOX", "Work"] {
        store
            .create_mailbox(name, None, None)
            .expect("create mailbox");
    }
    for (mailbox, range) in [
        ("INBOX", 0..mails.div_ceil(2)),
        ("Work", mails.div_ceil(2)..mails),
    ] {
        if range.is_empty() {
            continue;
        }
        let mut tx = store.begin(mailbox).expect("begin");
        for i in range {
            let msg = NewMessage {
                flags: if i % 2 == 0 { flags::SEEN } else { 0 },
                ..Default::default()
            };
            tx.save(msg, &mut &mail(user, i)[..]).expect("save");
        }
        tx.commit().expect("commit");
    }
}

/// Adds one new mail to `user`'s INBOX.
fn deliver(root: &Path, user: &str, i: usize) {
    let store = MaildirStore::open(root, MaildirOptions::default()).expect("open");
    let mut tx = store.begin("INBOX").expect("begin");
    tx.save(NewMessage::default(), &mut &mail(user, i)[..])
        .expect("save");
    tx.commit().expect("commit");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let users = arg(&args, "--users", 10_000) as usize;
    let max_conns = arg(&args, "--max-conns", 10);
    let mails = arg(&args, "--mails", 4) as usize;
    let fail_every = arg(&args, "--fail-every", 100) as usize;
    let high = (arg(&args, "--high", 100) as usize).min(users / 5);

    let tmp = tempfile::tempdir().expect("temporary directory");
    let mail_root = tmp.path().join("mail");
    let replica_root = tmp.path().join("replica");
    for d in [&mail_root, &replica_root] {
        std::fs::create_dir_all(d).expect("directory");
    }
    let name = |i: usize| format!("user{i}");

    // Sources, written on both cores.
    let tg = Instant::now();
    let chunks: Vec<Vec<usize>> = (0..2)
        .map(|k| (0..users).filter(|i| i % 2 == k).collect())
        .collect();
    let handles: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let mail_root = mail_root.clone();
            std::thread::spawn(move || {
                for i in chunk {
                    let u = format!("user{i}");
                    populate(&mail_root.join(&u).join("Maildir"), &u, mails);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("populate");
    }
    let generate = tg.elapsed();
    let mut injected = 0;
    if fail_every > 0 {
        for i in (0..users).filter(|i| i % fail_every == 0) {
            std::fs::write(replica_root.join(name(i)), b"not a directory\n").expect("blocker");
            injected += 1;
        }
    }

    let (cfg, fifo) = daemon_config(
        tmp.path(),
        users,
        max_conns,
        &[
            ("replication_engine", "homing".to_string()),
            (
                "replication_mail_location",
                format!("maildir:{}/%u/Maildir", mail_root.display()),
            ),
            (
                "replication_dsync_destination",
                format!("maildir:{}/%u/Maildir", replica_root.display()),
            ),
        ],
    );
    let rss_before = peak_rss_kib();

    let log = Arc::new(Mutex::new(Log::default()));
    let t0 = Instant::now();
    let runner = Bench {
        inner: EngineRunner::new(EngineSettings::from_config(&cfg)),
        t0,
        replica_root: replica_root.clone(),
        log: log.clone(),
    };
    let daemon = Daemon::start(cfg, Arc::new(runner), Arc::new(SystemClock))
        .await
        .expect("daemon");
    let started_in = t0.elapsed();

    let expected = users + high;
    let mut high_users: Vec<String> = Vec::new();
    loop {
        let ok = log.lock().unwrap().ok;
        if high > 0 && high_users.is_empty() && ok >= users / 5 {
            high_users = synced_users(
                log.lock()
                    .unwrap()
                    .syncs
                    .iter()
                    .map(|(u, s)| (u, s.iter().any(|x| x.2))),
                high,
            );
            for u in &high_users {
                deliver(&mail_root.join(u).join("Maildir"), u, mails);
            }
            let sent = send_high(&fifo, &high_users, t0);
            log.lock().unwrap().high_sent = Some(sent);
        }
        if ok >= expected {
            break;
        }
        if t0.elapsed() > Duration::from_secs(1800) {
            eprintln!("gave up after 1800 s with {ok}/{expected} successful syncs");
            std::process::exit(1);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain = t0.elapsed();
    daemon.shutdown().await.expect("shutdown");

    let l = log.lock().unwrap();
    let syncs = |u: &str| {
        l.syncs
            .get(u)
            .map(|v| v.iter().map(|s| (s.0, s.2)).collect())
    };
    let FirstSyncs {
        calls,
        never,
        retried,
        max_first_wait,
        max_retry_gap,
    } = first_syncs(users, syncs);
    let max_high_wait = max_high_wait(&high_users, l.high_sent.unwrap_or_default(), syncs);
    let took = l.syncs.values().flatten().map(|s| s.1);
    let busy: Duration = took.clone().sum();
    let longest = took.max().unwrap_or_default();
    let mut differ = 0usize;
    for i in 0..users {
        let u = name(i);
        let a = maildir_file_counts(&mail_root.join(&u).join("Maildir"));
        let b = maildir_file_counts(&replica_root.join(&u).join("Maildir"));
        if a != b {
            if differ < 5 {
                eprintln!("{u}: source {a:?} replica {b:?}");
            }
            differ += 1;
        }
    }
    let secs = drain.as_secs_f64();
    println!("users: {users}");
    println!("mails_per_user: {mails}");
    println!("replication_max_conns: {max_conns}");
    println!("generate_sources_ms: {}", generate.as_millis());
    println!("daemon_start_ms: {}", started_in.as_millis());
    println!("sync_calls: {calls}");
    println!("successful_syncs: {}", l.ok);
    println!("max_concurrent_syncs: {}", l.max_running);
    println!("users_never_synced: {never}");
    println!("injected_failures: {injected} retried: {retried}");
    println!("max_retry_gap_ms: {}", max_retry_gap.as_millis());
    println!("time_to_drain_ms: {}", drain.as_millis());
    println!("syncs_per_second: {:.0}", calls as f64 / secs);
    println!(
        "mean_sync_ms: {:.2} longest_sync_ms: {}",
        busy.as_secs_f64() * 1000.0 / calls.max(1) as f64,
        longest.as_millis()
    );
    println!("max_wait_first_sync_ms: {}", max_first_wait.as_millis());
    println!(
        "high_requests: {} max_wait_ms: {}",
        high_users.len(),
        max_high_wait.as_millis()
    );
    println!("replicas_differing: {differ}");
    println!("peak_rss_kib_before_daemon: {rss_before}");
    println!("peak_rss_kib: {}", peak_rss_kib());
    if never > 0 || retried != injected || differ > 0 || l.max_running > max_conns as usize {
        std::process::exit(1);
    }
}
