//! The interface between the replicator and whatever runs a sync.
//!
//! The replicator decides *when* a user is synced and whether the sync is full;
//! a [`SyncRunner`] does the work. [`DoveadmServerRunner`] hands the sync to a
//! Dovecot `doveadm-server` socket exactly as Dovecot's replicator does;
//! [`RecordingRunner`] is a fake for tests.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::tabescape::escape;

/// One sync to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncRequest {
    pub username: String,
    /// Full sync (`doveadm sync -f`): compare every message.
    pub full: bool,
    /// The state of the last successful sync (`-s`); `None` = unknown.
    pub state: Option<String>,
    /// The user's `mail_replica` if the userdb gave one.
    pub mail_replica: Option<String>,
}

/// How a sync ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncOutcome {
    /// Success, with the new state.
    Ok { state: String },
    /// Finished but changes happened meanwhile; run again soon (dsync exit 2).
    Again { state: String },
    /// Failed; retried later. The reason is logged and counted.
    Failed { reason: String },
    /// The user does not exist (any more).
    NoUser,
    /// The user is marked `noreplicate`.
    NoReplicate,
}

/// A boxed future of a sync, so runners can be trait objects.
pub type SyncFuture = Pin<Box<dyn Future<Output = SyncOutcome> + Send + 'static>>;

/// Runs one user's sync. Implementations must not panic and must finish
/// (time out on their own if the peer stalls).
pub trait SyncRunner: Send + Sync + 'static {
    fn sync(&self, request: SyncRequest) -> SyncFuture;
}

/// A fake runner: records every request and answers with a fixed outcome
/// after an optional delay.
#[derive(Clone)]
pub struct RecordingRunner {
    calls: Arc<Mutex<Vec<SyncRequest>>>,
    outcome: Arc<Mutex<SyncOutcome>>,
    delay: Duration,
}

impl RecordingRunner {
    pub fn new(outcome: SyncOutcome, delay: Duration) -> RecordingRunner {
        RecordingRunner {
            calls: Arc::default(),
            outcome: Arc::new(Mutex::new(outcome)),
            delay,
        }
    }

    /// Requests received so far, in order.
    pub fn calls(&self) -> Vec<SyncRequest> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    pub fn set_outcome(&self, outcome: SyncOutcome) {
        if let Ok(mut o) = self.outcome.lock() {
            *o = outcome;
        }
    }
}

impl SyncRunner for RecordingRunner {
    fn sync(&self, request: SyncRequest) -> SyncFuture {
        if let Ok(mut c) = self.calls.lock() {
            c.push(request);
        }
        let outcome = self
            .outcome
            .lock()
            .map(|o| o.clone())
            .unwrap_or(SyncOutcome::Failed {
                reason: "poisoned".into(),
            });
        let delay = self.delay;
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            outcome
        })
    }
}

/// Runs syncs through a Dovecot `doveadm-server` unix socket, like Dovecot's
/// replicator: `VERSION\tdoveadm-server\t1\t0` then
/// `\t<user>\tsync\t<parameters>[\t-f]\t-s\t<state>`.
#[derive(Clone, Debug)]
pub struct DoveadmServerRunner {
    pub socket_path: PathBuf,
    /// `replication_dsync_parameters`, split on spaces (default `-d -N -l 30 -U`).
    pub parameters: Vec<String>,
    /// Upper bound for one sync.
    pub timeout: Duration,
    /// `replication_dsync_destination`: a destination appended as the last
    /// argument (`%u`/`%{user}` expanded), for peers without `-d`
    /// (Dovecot 2.4 removed `mail_replica` and `-d`). When set, a per-user
    /// `mail_replica` from homing's userdb takes precedence. `None` = only the
    /// parameters (Dovecot 2.3 with `-d` looks up `mail_replica` itself).
    pub destination: Option<String>,
}

impl DoveadmServerRunner {
    pub fn new(socket_path: PathBuf, parameters: &str) -> DoveadmServerRunner {
        DoveadmServerRunner {
            socket_path,
            parameters: parameters.split(' ').map(str::to_string).collect(),
            timeout: Duration::from_secs(3600),
            destination: None,
        }
    }

    /// Sets the destination template (see [`DoveadmServerRunner::destination`]).
    pub fn with_destination(mut self, destination: Option<String>) -> DoveadmServerRunner {
        self.destination = destination.filter(|d| !d.is_empty());
        self
    }

    /// The command line sent for a request (without the VERSION line).
    pub fn command_line(&self, req: &SyncRequest) -> String {
        let mut line = format!("\t{}\tsync", escape(&req.username));
        for p in &self.parameters {
            line.push('\t');
            line.push_str(&escape(p));
        }
        if req.full {
            line.push_str("\t-f");
        }
        line.push_str("\t-s\t");
        line.push_str(&escape(req.state.as_deref().unwrap_or("")));
        // With `-d` (no destination set) the peer finds mail_replica itself.
        let dest = self.destination.as_ref().map(|d| {
            req.mail_replica.clone().unwrap_or_else(|| {
                d.replace("%{user}", &req.username)
                    .replace("%u", &req.username)
            })
        });
        if let Some(d) = dest {
            line.push('\t');
            line.push_str(&escape(&d));
        }
        line.push('\n');
        line
    }
}

/// Interprets the reply of a doveadm-server `sync` command: `+`, then the
/// state line (`<state>\t`), then `+` or `-<CODE>`.
pub fn parse_doveadm_reply(reply: &str) -> SyncOutcome {
    let mut lines = reply.split('\n');
    match lines.next() {
        Some("+") => {}
        other => {
            return SyncOutcome::Failed {
                reason: format!("Unexpected handshake: {}", other.unwrap_or("")),
            }
        }
    }
    let Some(state_line) = lines.next() else {
        return SyncOutcome::Failed {
            reason: "disconnected before the result".into(),
        };
    };
    let state = super::tabescape::unescape(state_line.split('\t').next().unwrap_or(""));
    match lines.next() {
        Some(l) if l.starts_with('+') => SyncOutcome::Ok { state },
        Some("-NOUSER") => SyncOutcome::NoUser,
        Some("-NOREPLICATE") => SyncOutcome::NoReplicate,
        // doveadm maps dsync's exit 2 ("changes during sync") to UNKNOWN, as
        // it does other codes; keep the state only when one came back.
        Some("-UNKNOWN") if !state.is_empty() => SyncOutcome::Again { state },
        Some(l) if l.starts_with('-') => SyncOutcome::Failed {
            reason: format!("doveadm-server replied {l}"),
        },
        Some(l) => SyncOutcome::Failed {
            reason: format!("Invalid input: {l}"),
        },
        None => SyncOutcome::Failed {
            reason: "disconnected before the result".into(),
        },
    }
}

impl SyncRunner for DoveadmServerRunner {
    fn sync(&self, request: SyncRequest) -> SyncFuture {
        let me = self.clone();
        Box::pin(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let run = async {
                let mut s = tokio::net::UnixStream::connect(&me.socket_path)
                    .await
                    .map_err(|e| {
                        format!("net_connect_unix({}) failed: {e}", me.socket_path.display())
                    })?;
                let msg = format!(
                    "VERSION\tdoveadm-server\t1\t0\n{}",
                    me.command_line(&request)
                );
                s.write_all(msg.as_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
                // The reply is three short lines (the state is at most a few
                // KB per mailbox); cap what we buffer.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.len() > 64 << 20 {
                        return Err("reply too long".to_string());
                    }
                    let text = String::from_utf8_lossy(&buf);
                    if text.matches('\n').count() >= 3 {
                        break;
                    }
                }
                Ok(parse_doveadm_reply(&String::from_utf8_lossy(&buf)))
            };
            match tokio::time::timeout(me.timeout, run).await {
                Ok(Ok(o)) => o,
                Ok(Err(reason)) => SyncOutcome::Failed { reason },
                Err(_) => SyncOutcome::Failed {
                    reason: "timed out".into(),
                },
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_matches_dovecot() {
        let r = DoveadmServerRunner::new("/x".into(), "-d -N -l 30 -U");
        let req = SyncRequest {
            username: "alice".into(),
            full: false,
            state: Some("AQAAAHm4+Jk=".into()),
            mail_replica: None,
        };
        assert_eq!(
            r.command_line(&req),
            "\talice\tsync\t-d\t-N\t-l\t30\t-U\t-s\tAQAAAHm4+Jk=\n"
        );
        let req = SyncRequest {
            full: true,
            state: None,
            ..req
        };
        assert_eq!(
            r.command_line(&req),
            "\talice\tsync\t-d\t-N\t-l\t30\t-U\t-f\t-s\t\n"
        );
        // The form Dovecot 2.4's doveadm-server accepts (no -d, no -U).
        let r = DoveadmServerRunner::new("/x".into(), "-l 30")
            .with_destination(Some("tcp:peer:%{user}".into()));
        assert_eq!(
            r.command_line(&req),
            "\talice\tsync\t-l\t30\t-f\t-s\t\ttcp:peer:alice\n"
        );
        let req = SyncRequest {
            mail_replica: Some("maildir:/r/alice".into()),
            ..req
        };
        assert_eq!(
            r.command_line(&req),
            "\talice\tsync\t-l\t30\t-f\t-s\t\tmaildir:/r/alice\n"
        );
    }

    #[test]
    fn replies_from_real_doveadm_server() {
        assert_eq!(
            parse_doveadm_reply("+\nAQAAABlXfS19Dgtr3zIAAIPsw3V9DgtrAQAAAAEAAAAAAAAAAAAAAAAAAAABAAAAKkAeYQ==\t\n+\n"),
            SyncOutcome::Ok {
                state: "AQAAABlXfS19Dgtr3zIAAIPsw3V9DgtrAQAAAAEAAAAAAAAAAAAAAAAAAAABAAAAKkAeYQ==".into()
            }
        );
        assert_eq!(parse_doveadm_reply("+\n\n-NOUSER\n"), SyncOutcome::NoUser);
        assert_eq!(
            parse_doveadm_reply("+\n\n-NOREPLICATE\n"),
            SyncOutcome::NoReplicate
        );
        assert!(matches!(
            parse_doveadm_reply("+\n\t\n-UNKNOWN\n"),
            SyncOutcome::Failed { .. }
        ));
        assert!(matches!(
            parse_doveadm_reply("-\n"),
            SyncOutcome::Failed { .. }
        ));
        assert!(matches!(
            parse_doveadm_reply("+\n"),
            SyncOutcome::Failed { .. }
        ));
    }
}
