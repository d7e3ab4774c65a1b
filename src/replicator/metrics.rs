//! OpenMetrics text exposition at `GET /metrics`: queue sizes per priority,
//! sync results and durations, and per-user time since the last successful
//! sync.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::runner::SyncOutcome;
use super::server::Shared;

/// Upper bounds (seconds) of the sync duration histogram buckets.
const BUCKETS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Counters updated as syncs finish.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    pub ok: u64,
    pub again: u64,
    pub failed: u64,
    pub nouser: u64,
    pub noreplicate: u64,
    bucket_counts: [u64; BUCKETS.len()],
    duration_sum: f64,
    duration_count: u64,
}

impl Metrics {
    pub fn record(&mut self, outcome: &SyncOutcome, elapsed: Duration) {
        match outcome {
            SyncOutcome::Ok { .. } => self.ok += 1,
            SyncOutcome::Again { .. } => self.again += 1,
            SyncOutcome::Failed { .. } => self.failed += 1,
            SyncOutcome::NoUser => self.nouser += 1,
            SyncOutcome::NoReplicate => self.noreplicate += 1,
        }
        let secs = elapsed.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.bucket_counts[i] += 1;
            }
        }
        self.duration_sum += secs;
        self.duration_count += 1;
    }
}

/// Escapes a label value (backslash, double quote, newline).
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders the exposition text.
pub(crate) fn render(shared: &Shared) -> String {
    let now = shared.clock.now();
    let st = shared.lock();
    let c = st.queue.status_counts(now);
    let m = &st.metrics;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# TYPE homing_replicator_queue_requests gauge\n\
         # HELP homing_replicator_queue_requests Users waiting in the queue, as in the STATUS overview."
    );
    for (k, v) in [
        ("sync", c.sync),
        ("high", c.high),
        ("low", c.low),
        ("failed", c.failed),
        ("full_resync", c.full_resync),
        ("waiting_failed", c.waiting_failed),
    ] {
        let _ = writeln!(
            o,
            "homing_replicator_queue_requests{{priority=\"{k}\"}} {v}"
        );
    }
    let _ = writeln!(
        o,
        "# TYPE homing_replicator_users gauge\n\
         # HELP homing_replicator_users Known users.\n\
         homing_replicator_users {}",
        c.total
    );
    let _ = writeln!(
        o,
        "# TYPE homing_replicator_syncs counter\n\
         # HELP homing_replicator_syncs Finished syncs by result."
    );
    for (k, v) in [
        ("ok", m.ok),
        ("again", m.again),
        ("failed", m.failed),
        ("nouser", m.nouser),
        ("noreplicate", m.noreplicate),
    ] {
        let _ = writeln!(o, "homing_replicator_syncs_total{{result=\"{k}\"}} {v}");
    }
    let _ = writeln!(
        o,
        "# TYPE homing_replicator_sync_duration_seconds histogram\n\
         # UNIT homing_replicator_sync_duration_seconds seconds\n\
         # HELP homing_replicator_sync_duration_seconds Duration of finished syncs."
    );
    for (i, b) in BUCKETS.iter().enumerate() {
        let _ = writeln!(
            o,
            "homing_replicator_sync_duration_seconds_bucket{{le=\"{b}\"}} {}",
            m.bucket_counts[i]
        );
    }
    let _ = writeln!(
        o,
        "homing_replicator_sync_duration_seconds_bucket{{le=\"+Inf\"}} {}\n\
         homing_replicator_sync_duration_seconds_sum {}\n\
         homing_replicator_sync_duration_seconds_count {}",
        m.duration_count, m.duration_sum, m.duration_count
    );
    let _ = writeln!(
        o,
        "# TYPE homing_replicator_user_lag_seconds gauge\n\
         # UNIT homing_replicator_user_lag_seconds seconds\n\
         # HELP homing_replicator_user_lag_seconds Time since the user's last successful sync (users that never succeeded are not listed)."
    );
    let mut users: Vec<(&str, u64)> = st
        .queue
        .users()
        .filter(|u| u.last_successful_sync != 0)
        .map(|u| {
            (
                u.username.as_str(),
                now.saturating_sub(u.last_successful_sync),
            )
        })
        .collect();
    users.sort();
    for (u, lag) in users {
        let _ = writeln!(
            o,
            "homing_replicator_user_lag_seconds{{user=\"{}\"}} {lag}",
            label(u)
        );
    }
    let never = st
        .queue
        .users()
        .filter(|u| u.last_successful_sync == 0)
        .count();
    let _ = writeln!(
        o,
        "# TYPE homing_replicator_users_never_synced gauge\n\
         # HELP homing_replicator_users_never_synced Users without a successful sync.\n\
         homing_replicator_users_never_synced {never}"
    );
    o.push_str("# EOF\n");
    o
}

/// Serves `GET /metrics` with one response per connection.
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            // Read the request head (bounded, with a timeout).
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            let read = async {
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
            };
            if tokio::time::timeout(Duration::from_secs(10), read)
                .await
                .is_err()
            {
                return;
            }
            let text = String::from_utf8_lossy(&head);
            let mut first = text.lines().next().unwrap_or("").split(' ');
            let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
            let response = if method == "GET"
                && (path == "/metrics" || path.starts_with("/metrics?"))
            {
                let body = render(&shared);
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\nConnection: close\r\n\r\nnot found\n".to_string()
            };
            let _ = sock.write_all(response.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}
