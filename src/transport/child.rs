//! A child process whose stdin/stdout carry the dsync stream (a plain command,
//! `remote:` through `dsync_remote_cmd`, `remoteprefix:`).

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use super::timeout::IdleTimeout;
use super::{DsyncStream, Finisher, TransportError};

/// How long to wait for the child after the session before killing it.
pub const DEFAULT_EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Environment variables a child keeps. Everything else is dropped, above all
/// the `DOVECONF_*`/setting variables a parent doveadm exports, which would make
/// a nested doveadm ignore its own `-c` configuration.
pub const ENV_PASSTHROUGH: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SSH_AUTH_SOCK",
    "TZ",
    "LANG",
    "LC_ALL",
];
const STDERR_TAIL_LINES: usize = 5;
const MAX_STDERR_LINE: usize = 16 * 1024;

/// Options of a command transport.
#[derive(Debug, Clone)]
pub struct CommandOptions {
    /// Idle I/O timeout of the dsync stream; None disables it.
    pub io_timeout: Option<Duration>,
    /// How long [`DsyncStream::finish`] waits for the child to exit.
    pub exit_timeout: Duration,
    /// Write `USER\n` before any dsync byte (`remoteprefix:`).
    pub prefix_user: Option<String>,
}

impl Default for CommandOptions {
    fn default() -> Self {
        CommandOptions {
            io_timeout: Some(super::tcp::DEFAULT_IO_TIMEOUT),
            exit_timeout: DEFAULT_EXIT_TIMEOUT,
            prefix_user: None,
        }
    }
}

/// Tracks a running child for [`Finisher::Child`].
pub struct ChildProcess {
    child: Child,
    command: String,
    stderr_task: Option<JoinHandle<()>>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    exit_timeout: Duration,
}

/// Starts `argv` with a clean environment and piped stdio.
pub async fn spawn_command(
    argv: &[String],
    opts: &CommandOptions,
) -> Result<DsyncStream, TransportError> {
    let command = argv.join(" ");
    let Some((program, args)) = argv.split_first() else {
        return Err(TransportError::BadDestination {
            destination: command,
            reason: "empty command".into(),
        });
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for k in ENV_PASSTHROUGH {
        if let Some(v) = std::env::var_os(k) {
            cmd.env(k, v);
        }
    }
    if std::env::var_os("PATH").is_none() {
        cmd.env("PATH", "/usr/bin:/bin");
    }
    let mut child = cmd.spawn().map_err(|source| TransportError::Spawn {
        command: command.clone(),
        source,
    })?;
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(TransportError::Spawn {
            command,
            source: std::io::Error::other("stdio pipes missing"),
        });
    };
    let peer = format!("remote command `{command}`");
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let tail2 = Arc::clone(&tail);
    let stderr_task = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr);
        let mut line = Vec::new();
        loop {
            line.clear();
            // One line at most MAX_STDERR_LINE bytes: a child writing without
            // newlines cannot grow this buffer without limit.
            let mut limited = (&mut lines).take(MAX_STDERR_LINE as u64);
            match limited.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&line).trim_end().to_string();
            if text.is_empty() {
                continue;
            }
            tracing::warn!("remote: {text}");
            let mut t = tail2.lock().unwrap_or_else(|p| p.into_inner());
            if t.len() == STDERR_TAIL_LINES {
                t.pop_front();
            }
            t.push_back(text);
        }
    });
    if let Some(user) = &opts.prefix_user {
        let mut first = user.clone().into_bytes();
        first.push(b'\n');
        stdin
            .write_all(&first)
            .await
            .map_err(|e| TransportError::from_io(&peer, e))?;
    }
    let proc = ChildProcess {
        child,
        command,
        stderr_task: Some(stderr_task),
        stderr_tail: tail,
        exit_timeout: opts.exit_timeout,
    };
    Ok(DsyncStream::new(
        Box::pin(IdleTimeout::new(stdout, opts.io_timeout, &peer)),
        Box::pin(IdleTimeout::new(stdin, opts.io_timeout, &peer)),
        peer,
        Finisher::Child(Box::new(proc)),
    ))
}

impl ChildProcess {
    /// Waits for the child (killing it after the exit timeout) and maps its
    /// exit status. The dsync stream must already be closed.
    pub async fn finish(mut self) -> Result<(), TransportError> {
        let status = match tokio::time::timeout(self.exit_timeout, self.child.wait()).await {
            Ok(r) => r.map_err(|e| TransportError::from_io(&self.command, e))?,
            Err(_) => {
                tracing::error!("remote command process isn't dying, killing it");
                let _ = self.child.start_kill();
                self.child
                    .wait()
                    .await
                    .map_err(|e| TransportError::from_io(&self.command, e))?
            }
        };
        if let Some(t) = self.stderr_task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        if status.success() {
            return Ok(());
        }
        if let Some(code) = status.code() {
            let tail = self.stderr_tail.lock().unwrap_or_else(|p| p.into_inner());
            let joined: Vec<String> = tail.iter().cloned().collect();
            return Err(TransportError::RemoteCommandFailed {
                command: self.command.clone(),
                status: code,
                stderr_tail: (!joined.is_empty()).then(|| joined.join(" | ")),
            });
        }
        use std::os::unix::process::ExitStatusExt;
        Err(TransportError::RemoteCommandKilled {
            command: self.command.clone(),
            signal: status.signal().unwrap_or(0),
        })
    }
}
