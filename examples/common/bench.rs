//! Small helpers shared by the bench examples.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use homing::replicator::ReplicatorConfig;

/// Peak resident set size of this process (`VmHWM`), in KiB; 0 when unknown.
pub fn peak_rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The number after `name` on the command line, else `default`.
pub fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A replicator configuration for `users` users `user0`, `user1`, … (a
/// passwd-file in `dir`), its run and state directories below `dir`, the
/// given `replication_max_conns`, a 1 s retry interval for failed syncs,
/// and the `extra` settings; with the aggregator FIFO's path.
pub fn daemon_config(
    dir: &Path,
    users: usize,
    max_conns: u64,
    extra: &[(&str, String)],
) -> (ReplicatorConfig, PathBuf) {
    let base = dir.join("run");
    let state = dir.join("state");
    for d in [&base, &state] {
        std::fs::create_dir_all(d).expect("directory");
    }
    let mut passwd = String::new();
    for i in 0..users {
        passwd.push_str(&format!("user{i}:x:5000:5000::/nonexistent::\n"));
    }
    let pw = dir.join("passwd");
    std::fs::write(&pw, passwd).expect("passwd");
    let mut cfg = ReplicatorConfig::with_dirs(&base, &state);
    cfg.doveadm_server_socket = None;
    let common = [
        ("replication_max_conns", max_conns.to_string()),
        ("replication_failed_retry_interval", "1".to_string()),
        ("userdb_passwd_file", pw.display().to_string()),
    ];
    for (k, v) in common.iter().chain(extra) {
        cfg.set(k, v).expect("setting");
    }
    let fifo = cfg.aggregator_fifo.clone().expect("fifo");
    (cfg, fifo)
}

/// Asks for a `high` sync of each user through the aggregator FIFO, as a
/// mail process would; returns when the request was sent (relative to `t0`).
pub fn send_high(fifo: &Path, users: &[String], t0: Instant) -> Duration {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(fifo)
        .expect("fifo");
    let text: String = users.iter().map(|u| format!("{u}\thigh\n")).collect();
    let sent = t0.elapsed();
    f.write_all(text.as_bytes()).expect("fifo write");
    sent
}

/// What happened to the users' first syncs and their retries.
#[derive(Debug, Default)]
pub struct FirstSyncs {
    /// Syncs run in all.
    pub calls: usize,
    /// Users never synced.
    pub never: usize,
    /// Users whose first sync failed and was tried again.
    pub retried: usize,
    /// The longest wait from the start for a user's first sync.
    pub max_first_wait: Duration,
    /// The longest time between a failed first sync and its retry.
    pub max_retry_gap: Duration,
}

/// Tallies [`FirstSyncs`] of `user0`..`user{users-1}`; `syncs(user)` gives
/// the user's syncs in order as (start relative to t0, success).
pub fn first_syncs(
    users: usize,
    syncs: impl Fn(&str) -> Option<Vec<(Duration, bool)>>,
) -> FirstSyncs {
    let mut f = FirstSyncs::default();
    for i in 0..users {
        let Some(v) = syncs(&format!("user{i}")) else {
            f.never += 1;
            continue;
        };
        f.calls += v.len();
        f.max_first_wait = f.max_first_wait.max(v[0].0);
        if !v[0].1 {
            f.retried += 1;
            if let Some(next) = v.get(1) {
                f.max_retry_gap = f.max_retry_gap.max(next.0 - v[0].0);
            }
        }
    }
    f
}

/// The longest wait of a `high` user from `sent` to its next sync start.
pub fn max_high_wait(
    high_users: &[String],
    sent: Duration,
    syncs: impl Fn(&str) -> Option<Vec<(Duration, bool)>>,
) -> Duration {
    let mut max = Duration::ZERO;
    for u in high_users {
        if let Some(v) = syncs(u) {
            if let Some((at, _)) = v.iter().rev().find(|(at, _)| *at >= sent) {
                max = max.max(*at - sent);
            }
        }
    }
    max
}

/// Up to `n` users, in name order, of those with a successful sync
/// (`synced` gives each user and whether one of its syncs succeeded).
pub fn synced_users<'a>(synced: impl Iterator<Item = (&'a String, bool)>, n: usize) -> Vec<String> {
    let mut v: Vec<String> = synced
        .filter(|(_, ok)| *ok)
        .map(|(u, _)| u.clone())
        .collect();
    v.sort();
    v.truncate(n);
    v
}
