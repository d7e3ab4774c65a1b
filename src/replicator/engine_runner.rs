//! Runs each sync with homing's own engine: the local Maildir is the master,
//! the peer (`mail_replica` or `replication_dsync_destination`) the slave,
//! reached over `tcp:`/`tcps:`/`remote:` or a command, or a second local
//! Maildir (`maildir:/backup/%u`), as `homing sync` does.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sync_engine::ExitStatus;

use super::config::ReplicatorConfig;
use super::runner::{SyncFuture, SyncOutcome, SyncRequest, SyncRunner};
use super::users::{read_passwd_file, UserDb};
use crate::cli::sync::{open_location, settings, state_string, Mode};
use crate::cli::SyncArgs;
use crate::session::{
    hostname, now, run_local_pair, run_master_over, SessionOptions, SessionResult,
};
use crate::transport::{self, Destination, OpenOptions};

/// doveadm's exit code for an unknown user (`EX_NOUSER`).
const EX_NOUSER: i32 = 67;

/// Settings of the engine runner (`replication_*` keys).
#[derive(Clone, Debug, Default)]
pub struct EngineSettings {
    /// `replication_mail_location`: the local Maildir, with `%u`, `%n`,
    /// `%d` and `%h` (the user's home) expanded.
    pub mail_location: String,
    /// `replication_dsync_destination`: the peer for users without a
    /// `mail_replica` (`%u` expanded).
    pub destination: String,
    /// passwd-file giving users' homes for `%h`.
    pub userdb_passwd_file: Option<PathBuf>,
    /// `dsync_remote_cmd` for `remote:` peers; empty = the default.
    pub remote_cmd: String,
    /// `doveadm_port` for `tcp:` peers without a port.
    pub doveadm_port: Option<u16>,
    /// `doveadm_password` for `tcp:`/`tcps:` peers.
    pub doveadm_password: Option<String>,
    /// `ssl_client_ca_file` for `tcps:` peers.
    pub ca_path: Option<PathBuf>,
    /// Lock timeout for the peer (`-l`), seconds.
    pub lock_timeout: u32,
    /// Upper bound for one sync.
    pub timeout: Duration,
    /// Ask the peer's dsync-server to notify its replicator (`-U`, part of
    /// Dovecot's default `replication_dsync_parameters`): the peer then
    /// does not sync the same changes straight back, and answers
    /// NOREPLICATE for users it excludes.
    pub replicator_notify: bool,
}

/// A [`SyncRunner`] that runs the dsync session itself.
#[derive(Clone)]
pub struct EngineRunner {
    settings: Arc<EngineSettings>,
}

/// Why a sync could not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineRunnerError {
    #[error(
        "replication_mail_location {location}: %{letter} is not supported (only %u, %n, %d, %h)"
    )]
    Placeholder { location: String, letter: String },
    #[error("replication_mail_location {location}: user {user} has no home directory for %h")]
    NoHome { location: String, user: String },
    #[error("user {0} has no mail_replica and replication_dsync_destination is empty")]
    NoDestination(String),
}

/// Expands `%u`, `%n`, `%d`, `%h` (and `%%`) of a template for `user`.
pub fn expand(template: &str, user: &str, home: Option<&str>) -> Result<String, EngineRunnerError> {
    let (n, d) = user.split_once('@').unwrap_or((user, ""));
    let mut out = String::new();
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('u') => out.push_str(user),
            Some('n') => out.push_str(n),
            Some('d') => out.push_str(d),
            Some('h') => match home {
                Some(h) => out.push_str(h),
                None => {
                    return Err(EngineRunnerError::NoHome {
                        location: template.to_string(),
                        user: user.to_string(),
                    })
                }
            },
            Some('%') => out.push('%'),
            other => {
                return Err(EngineRunnerError::Placeholder {
                    location: template.to_string(),
                    letter: other.map(String::from).unwrap_or_default(),
                })
            }
        }
    }
    Ok(out)
}

/// Maps a finished session's exit code and state to the replicator's outcome.
fn outcome_of(code: i32, state: String, reason: String) -> SyncOutcome {
    match code {
        0 => SyncOutcome::Ok { state },
        2 => SyncOutcome::Again { state },
        EX_NOUSER => SyncOutcome::NoUser,
        _ => SyncOutcome::Failed { reason },
    }
}

impl EngineSettings {
    /// The settings the daemon's configuration gives.
    pub fn from_config(c: &ReplicatorConfig) -> EngineSettings {
        EngineSettings {
            mail_location: c.replication_mail_location.clone(),
            destination: c.dsync_destination.clone(),
            userdb_passwd_file: c.userdb_passwd_file.clone(),
            remote_cmd: c.peer.remote_cmd.clone(),
            doveadm_port: c.peer.doveadm_port,
            doveadm_password: c.peer.doveadm_password.clone(),
            ca_path: c.peer.ca_file.clone(),
            lock_timeout: 30,
            timeout: Duration::from_secs(3600),
            replicator_notify: true,
        }
    }
}

impl EngineRunner {
    pub fn new(settings: EngineSettings) -> EngineRunner {
        EngineRunner {
            settings: Arc::new(settings),
        }
    }

    fn home_of(&self, user: &str) -> Option<String> {
        let path = self.settings.userdb_passwd_file.as_deref()?;
        let db: UserDb = read_passwd_file(path).ok()?;
        db.get(user).and_then(|i| i.home.clone())
    }

    async fn run(
        settings: Arc<EngineSettings>,
        req: SyncRequest,
        home: Option<String>,
    ) -> SyncOutcome {
        let failed = |reason: String| SyncOutcome::Failed { reason };
        let location = match expand(&settings.mail_location, &req.username, home.as_deref()) {
            Ok(l) => l,
            Err(e) => return failed(e.to_string()),
        };
        let dest_text = match req
            .mail_replica
            .clone()
            .filter(|r| !r.is_empty())
            .or_else(|| Some(settings.destination.clone()).filter(|d| !d.is_empty()))
        {
            Some(d) => match expand(&d, &req.username, home.as_deref()) {
                Ok(d) => d,
                Err(e) => return failed(e.to_string()),
            },
            None => {
                return failed(EngineRunnerError::NoDestination(req.username.clone()).to_string())
            }
        };
        // A destination with spaces is a command line (as `doveadm sync`
        // receives it split into words).
        let words: Vec<String> = dest_text
            .split(' ')
            .filter(|w| !w.is_empty())
            .map(String::from)
            .collect();
        let dest = match Destination::parse(&words) {
            Ok(d) => d,
            Err(e) => return failed(format!("destination {dest_text}: {e}")),
        };
        let args = SyncArgs {
            full: req.full,
            state: Some(req.state.clone().unwrap_or_default()),
            lock_timeout: Some(settings.lock_timeout.to_string()),
            ..SyncArgs::default()
        };
        let (sync_settings, _) = match settings_for(&args) {
            Ok(s) => s,
            Err(reason) => return failed(reason),
        };
        let mut local = match open_location(&location) {
            Ok(l) => l,
            Err(f) => return failed(f.message),
        };
        if let Some(h) = &home {
            // Where `-l` takes `.dovecot-sync.lock` when this side locks.
            local.set_home(PathBuf::from(h));
        }
        if let Destination::Location(other) = &dest {
            // A local replica (`maildir:/backup/%u`): both sides in-process.
            if *other == location {
                return failed(format!(
                    "source and destination are the same location: {location}"
                ));
            }
            let replica = match open_location(other) {
                Ok(r) => r,
                Err(f) => return failed(f.message),
            };
            let (m, s) = run_local_pair(
                local,
                replica,
                &hostname(),
                sync_settings,
                &SessionOptions::default(),
            )
            .await;
            let mut code = m.exit_code();
            let mut reasons = failure_reasons(&m);
            if s.outcome.status != ExitStatus::Ok {
                if code == 0 {
                    code = s.exit_code();
                }
                reasons.extend(failure_reasons(&s));
            }
            if reasons.is_empty() {
                reasons.push(format!("dsync exit code {code}"));
            }
            return outcome_of(code, state_string(&m), reasons.join("; "));
        }
        let open = OpenOptions {
            user: Some(req.username.clone()),
            remote_cmd: if settings.remote_cmd.is_empty() {
                transport::DEFAULT_REMOTE_CMD.to_string()
            } else {
                settings.remote_cmd.clone()
            },
            default_port: settings.doveadm_port,
            doveadm_password: settings.doveadm_password.clone(),
            ca_path: settings.ca_path.clone(),
            // `dsync-server -U`, as Dovecot's replicator asks: the peer
            // checks `noreplicate` and sends NOTIFY to its own replicator.
            replicator_notify: settings.replicator_notify,
            ..OpenOptions::default()
        };
        let stream = match transport::open(&dest, &open).await {
            Ok(s) => s,
            Err(e) if e.exit_code() == EX_NOUSER => return SyncOutcome::NoUser,
            Err(e) if e.exit_code() == transport::EX_NOREPLICATE => {
                return SyncOutcome::NoReplicate
            }
            Err(e) => return failed(format!("{dest_text}: {e}")),
        };
        let r = run_master_over(
            stream,
            local,
            &hostname(),
            sync_settings,
            &SessionOptions::default(),
        )
        .await;
        let code = r.exit_code();
        let state = state_string(&r);
        let mut reasons = failure_reasons(&r);
        if reasons.is_empty() {
            reasons.push(format!("dsync exit code {code}"));
        }
        outcome_of(code, state, reasons.join("; "))
    }
}

/// What a finished session says went wrong (empty when nothing did).
fn failure_reasons<S>(r: &SessionResult<S>) -> Vec<String> {
    let mut reasons: Vec<String> = Vec::new();
    if let Some(e) = &r.error {
        reasons.push(e.to_string());
    }
    if let Some(e) = &r.transport_error {
        reasons.push(e.to_string());
    }
    if r.outcome.status != ExitStatus::Ok {
        reasons.extend(r.outcome.messages.iter().cloned());
    }
    reasons
}

fn settings_for(args: &SyncArgs) -> Result<(sync_engine::SyncSettings, bool), String> {
    settings(Mode::Sync { oneway: false }, args, now()).map_err(|f| f.message)
}

impl SyncRunner for EngineRunner {
    fn sync(&self, request: SyncRequest) -> SyncFuture {
        let settings = self.settings.clone();
        let home = self.home_of(&request.username);
        let timeout = settings.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, EngineRunner::run(settings, request, home)).await {
                Ok(o) => o,
                Err(_) => SyncOutcome::Failed {
                    reason: format!("sync timed out after {}s", timeout.as_secs()),
                },
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_user_parts_and_home() {
        assert_eq!(
            expand(
                "maildir:%h/Maildir/%n@%d:%u%%",
                "a@b.example",
                Some("/home/a")
            )
            .unwrap(),
            "maildir:/home/a/Maildir/a@b.example:a@b.example%"
        );
        assert!(matches!(
            expand("maildir:%h/M", "a", None),
            Err(EngineRunnerError::NoHome { .. })
        ));
        assert!(matches!(
            expand("maildir:%x", "a", None),
            Err(EngineRunnerError::Placeholder { .. })
        ));
    }

    #[test]
    fn maps_exit_codes() {
        assert_eq!(
            outcome_of(0, "S".into(), "r".into()),
            SyncOutcome::Ok { state: "S".into() }
        );
        assert_eq!(
            outcome_of(2, "S".into(), "r".into()),
            SyncOutcome::Again { state: "S".into() }
        );
        assert_eq!(
            outcome_of(67, String::new(), "r".into()),
            SyncOutcome::NoUser
        );
        assert_eq!(
            outcome_of(75, String::new(), "r".into()),
            SyncOutcome::Failed { reason: "r".into() }
        );
    }

    #[tokio::test]
    async fn missing_destination_fails_with_reason() {
        let r = EngineRunner::new(EngineSettings {
            mail_location: "maildir:/nonexistent/%u".into(),
            timeout: Duration::from_secs(5),
            ..EngineSettings::default()
        });
        let o = r
            .sync(SyncRequest {
                username: "u".into(),
                full: false,
                state: None,
                mail_replica: None,
            })
            .await;
        assert!(
            matches!(o, SyncOutcome::Failed { ref reason } if reason.contains("replication_dsync_destination")),
            "{o:?}"
        );
    }
}
