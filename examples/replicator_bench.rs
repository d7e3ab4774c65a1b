//! Drives `homing replicator`'s daemon with many users through a fake runner
//! and reports throughput, peak RSS and queue behaviour. Used by
//! `scripts/bench-replicator`.
//!
//! Every user is due at start (never synced). The runner does a small real
//! piece of work per sync (writes the user's small mail file, reads it back
//! and checksums it; optionally sleeps `--latency-ms` to stand in for the
//! network). `--fail-every N` fails the first sync of every Nth user, which
//! must be retried after `replication_failed_retry_interval` (1 s here).
//! Midway, `--high N` users that were already synced are notified `high`
//! through the FIFO, as mail processes would; their wait is reported apart.
//!
//! Output: one `key: value` line per figure.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use homing::replicator::runner::SyncFuture;
use homing::replicator::{Daemon, SyncOutcome, SyncRequest, SyncRunner, SystemClock};

#[path = "common/bench.rs"]
mod bench;
use bench::{
    arg, daemon_config, first_syncs, max_high_wait, peak_rss_kib, send_high, synced_users,
    FirstSyncs,
};

#[derive(Default)]
struct Log {
    /// user → start times of its syncs (relative to t0) and outcomes.
    starts: HashMap<String, Vec<(Duration, bool)>>,
    done: usize,
    /// When the high requests were written.
    high_sent: Option<Duration>,
}

struct BenchRunner {
    t0: Instant,
    dir: PathBuf,
    latency: Duration,
    fail_every: usize,
    log: Arc<Mutex<Log>>,
}

fn user_index(name: &str) -> usize {
    name.trim_start_matches("user").parse().unwrap_or(0)
}

impl SyncRunner for BenchRunner {
    fn sync(&self, req: SyncRequest) -> SyncFuture {
        let at = self.t0.elapsed();
        let first = {
            let mut l = self.log.lock().unwrap();
            let e = l.starts.entry(req.username.clone()).or_default();
            e.is_empty()
        };
        let fail = first && self.fail_every > 0 && user_index(&req.username) % self.fail_every == 0;
        let path = self.dir.join(&req.username);
        let latency = self.latency;
        let log = self.log.clone();
        Box::pin(async move {
            // A tiny sync's worth of I/O: 8 messages of 512 bytes.
            let work = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
                let mut body = Vec::with_capacity(4096);
                for i in 0..8u8 {
                    body.extend_from_slice(&[b'a' + i; 511]);
                    body.push(b'\n');
                }
                std::fs::write(&path, &body)?;
                let back = std::fs::read(&path)?;
                Ok(back.iter().map(|b| u64::from(*b)).sum())
            })
            .await;
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            let ok = matches!(work, Ok(Ok(_))) && !fail;
            let mut l = log.lock().unwrap();
            l.starts
                .entry(req.username.clone())
                .or_default()
                .push((at, ok));
            if ok {
                l.done += 1;
                SyncOutcome::Ok {
                    state: format!("s{}", l.done),
                }
            } else {
                SyncOutcome::Failed {
                    reason: "injected".into(),
                }
            }
        })
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let users = arg(&args, "--users", 10_000) as usize;
    let max_conns = arg(&args, "--max-conns", 10);
    let latency = Duration::from_millis(arg(&args, "--latency-ms", 0));
    let fail_every = arg(&args, "--fail-every", 100) as usize;
    let high = arg(&args, "--high", 100) as usize;

    let tmp = tempfile::tempdir().expect("temporary directory");
    let mail = tmp.path().join("mail");
    std::fs::create_dir_all(&mail).expect("directory");
    let (cfg, fifo) = daemon_config(tmp.path(), users, max_conns, &[]);

    let log = Arc::new(Mutex::new(Log::default()));
    let t0 = Instant::now();
    let runner = BenchRunner {
        t0,
        dir: mail,
        latency,
        fail_every,
        log: log.clone(),
    };
    let daemon = Daemon::start(cfg, Arc::new(runner), Arc::new(SystemClock))
        .await
        .expect("daemon");
    let started_in = t0.elapsed();

    let failing = if fail_every == 0 {
        0
    } else {
        (0..users).filter(|i| i % fail_every == 0).count()
    };
    let expected = users + high.min(users / 5);
    let mut high_users = Vec::new();
    loop {
        let done = log.lock().unwrap().done;
        if high > 0 && high_users.is_empty() && done >= users / 5 {
            // Users already synced ask again at high priority.
            let l = log.lock().unwrap();
            high_users = synced_users(
                l.starts
                    .iter()
                    .map(|(u, v)| (u, v.iter().any(|(_, ok)| *ok))),
                high.min(users / 5),
            );
            drop(l);
            let sent = send_high(&fifo, &high_users, t0);
            log.lock().unwrap().high_sent = Some(sent);
        }
        if done >= expected {
            break;
        }
        if t0.elapsed() > Duration::from_secs(600) {
            eprintln!("gave up after 600 s with {done}/{expected} syncs");
            std::process::exit(1);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drain = t0.elapsed();
    daemon.shutdown().await.expect("shutdown");

    let l = log.lock().unwrap();
    let syncs = |u: &str| l.starts.get(u).cloned();
    let FirstSyncs {
        calls,
        never,
        retried,
        max_first_wait,
        max_retry_gap,
    } = first_syncs(users, syncs);
    let max_high_wait = max_high_wait(&high_users, l.high_sent.unwrap_or_default(), syncs);
    let secs = drain.as_secs_f64();
    println!("users: {users}");
    println!("replication_max_conns: {max_conns}");
    println!("runner_latency_ms: {}", latency.as_millis());
    println!("daemon_start_ms: {}", started_in.as_millis());
    println!("sync_calls: {calls}");
    println!("successful_syncs: {}", l.done);
    println!("users_never_synced: {never}");
    println!("injected_failures: {failing} retried: {retried}");
    println!("max_retry_gap_ms: {}", max_retry_gap.as_millis());
    println!("time_to_drain_ms: {}", drain.as_millis());
    println!("syncs_per_second: {:.0}", calls as f64 / secs);
    println!("max_wait_first_sync_ms: {}", max_first_wait.as_millis());
    println!(
        "high_requests: {} max_wait_ms: {}",
        high_users.len(),
        max_high_wait.as_millis()
    );
    println!("peak_rss_kib: {}", peak_rss_kib());
    if never > 0 || retried != failing {
        std::process::exit(1);
    }
}
