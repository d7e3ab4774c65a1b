//! Client of the `replicator-doveadm` socket, printing exactly what
//! `doveadm replicator status|dsync-status|replicate|add|remove` prints.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::format::{render, time_ago, Column, Formatter};
use super::queue::{Clock, SystemClock};
use super::tabescape::{escape, split_line};

/// One `doveadm replicator` command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientCommand {
    Status {
        mask: Option<String>,
    },
    DsyncStatus,
    Replicate {
        priority: String,
        full: bool,
        mask: String,
    },
    Add {
        mask: String,
    },
    Remove {
        user: String,
    },
}

impl ClientCommand {
    /// The request line sent to the server (with newline).
    pub fn request(&self) -> String {
        let fields: Vec<String> = match self {
            ClientCommand::Status { mask: None } => vec!["STATUS".into()],
            ClientCommand::Status { mask: Some(m) } => vec!["STATUS".into(), escape(m)],
            ClientCommand::DsyncStatus => vec!["STATUS-DSYNC".into()],
            ClientCommand::Replicate {
                priority,
                full,
                mask,
            } => vec![
                "REPLICATE".into(),
                escape(priority),
                if *full { "f".into() } else { String::new() },
                escape(mask),
            ],
            ClientCommand::Add { mask } => vec!["ADD".into(), escape(mask)],
            ClientCommand::Remove { user } => vec!["REMOVE".into(), escape(user)],
        };
        let mut s = fields.join("\t");
        s.push('\n');
        s
    }

    /// doveadm's default formatter for the command.
    pub fn default_formatter(&self) -> Formatter {
        match self {
            ClientCommand::Replicate { .. } => Formatter::Flow,
            _ => Formatter::Table,
        }
    }
}

/// What the command printed and its exit code.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientOutput {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: u8,
}

fn fail(stderr: String, exit_code: u8) -> ClientOutput {
    ClientOutput {
        stdout: String::new(),
        stderr,
        exit_code,
    }
}

/// The OS error text without Rust's ` (os error N)` suffix, as strerror gives it.
fn os_error(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

const STATUS_COLUMNS: [Column; 6] = [
    Column::expanding("username"),
    Column::new("priority"),
    Column::new("fast sync"),
    Column::new("full sync"),
    Column::new("success sync"),
    Column::new("failed"),
];
const OVERVIEW_COLUMNS: [Column; 2] = [Column::hidden("field"), Column::hidden("value")];
const DSYNC_COLUMNS: [Column; 3] = [
    Column::expanding("username"),
    Column::new("type"),
    Column::new("status"),
];
const RESULT_COLUMNS: [Column; 1] = [Column::hidden("result")];

/// Reads one reply line; `Some("\0timeout")` when none came within 5 s.
async fn next_line<R: tokio::io::AsyncBufRead + Unpin>(
    rd: &mut R,
    line: &mut String,
) -> Option<String> {
    line.clear();
    // Replies are a handful of short lines; bound a misbehaving server.
    let mut limited = rd.take(1 << 20);
    match tokio::time::timeout(Duration::from_secs(5), limited.read_line(line)).await {
        Ok(Ok(0)) | Ok(Err(_)) => None,
        Ok(Ok(_)) => Some(line.trim_end_matches('\n').to_string()),
        Err(_) => Some("\u{0}timeout".into()),
    }
}

/// Runs one command against the socket at `path`. `width` is the terminal
/// width for the table formatter (80 when not a terminal).
pub async fn run(
    path: &Path,
    cmd: &ClientCommand,
    formatter: Option<Formatter>,
    width: usize,
) -> ClientOutput {
    let fmt = formatter.unwrap_or_else(|| cmd.default_formatter());
    let stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e) => {
            return fail(
                format!(
                    "Fatal: net_connect_unix({}) failed: {}\n",
                    path.display(),
                    os_error(&e)
                ),
                75,
            )
        }
    };
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let hello = format!(
        "VERSION\treplicator-doveadm-client\t1\t0\n{}",
        cmd.request()
    );
    let _ = wr.write_all(hello.as_bytes()).await;

    let mut line = String::new();
    match next_line(&mut rd, &mut line).await {
        None => return fail(format!("Fatal: {} disconnected\n", path.display()), 75),
        Some(l) if l == "\u{0}timeout" => {
            return fail(format!("Fatal: read({}) timed out\n", path.display()), 75)
        }
        Some(l) => {
            let f: Vec<&str> = l.split('\t').collect();
            if f.len() < 3
                || f[0] != "VERSION"
                || f[1] != "replicator-doveadm-server"
                || f[2] != "1"
            {
                return fail(
                    format!(
                        "Fatal: {} not a compatible replicator-doveadm socket\n",
                        path.display()
                    ),
                    76,
                );
            }
        }
    }
    let unexpected = || fail("Error: Replicator disconnected unexpectedly\n".into(), 75);
    let now = SystemClock.now();
    match cmd {
        ClientCommand::Status { .. } | ClientCommand::DsyncStatus => {
            let mut rows = Vec::new();
            loop {
                let Some(l) = next_line(&mut rd, &mut line).await else {
                    return unexpected();
                };
                if l == "\u{0}timeout" {
                    return unexpected();
                }
                if l.is_empty() {
                    break;
                }
                let f = split_line(&l);
                let get = |i: usize| f.get(i).cloned().unwrap_or_default();
                let num = |i: usize| get(i).parse::<u64>().unwrap_or(0);
                let row = match cmd {
                    ClientCommand::Status { mask: None } => vec![get(0), get(1)],
                    ClientCommand::Status { mask: Some(_) } => vec![
                        get(0),
                        get(1),
                        time_ago(num(2), now),
                        time_ago(num(3), now),
                        time_ago(num(5), now),
                        if get(4) == "0" {
                            "-".into()
                        } else {
                            "y".into()
                        },
                    ],
                    _ => vec![get(0), get(1), get(2)],
                };
                rows.push(row);
            }
            let cols: &[Column] = match cmd {
                ClientCommand::Status { mask: None } => &OVERVIEW_COLUMNS,
                ClientCommand::Status { mask: Some(_) } => &STATUS_COLUMNS,
                _ => &DSYNC_COLUMNS,
            };
            ClientOutput {
                stdout: render(fmt, cols, &rows, width),
                ..Default::default()
            }
        }
        ClientCommand::Replicate { .. }
        | ClientCommand::Add { .. }
        | ClientCommand::Remove { .. } => {
            let Some(l) = next_line(&mut rd, &mut line)
                .await
                .filter(|l| l != "\u{0}timeout")
            else {
                return unexpected();
            };
            if let Some(rest) = l.strip_prefix('+') {
                let stdout = match cmd {
                    ClientCommand::Replicate { .. } => render(
                        fmt,
                        &RESULT_COLUMNS,
                        &[vec![format!("{rest} users updated")]],
                        width,
                    ),
                    _ => String::new(),
                };
                ClientOutput {
                    stdout,
                    ..Default::default()
                }
            } else {
                let text = l.strip_prefix('-').unwrap_or(&l);
                fail(format!("Error: Replicator failed: {text}\n"), 64)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        assert_eq!(ClientCommand::Status { mask: None }.request(), "STATUS\n");
        assert_eq!(
            ClientCommand::Status {
                mask: Some("b*".into())
            }
            .request(),
            "STATUS\tb*\n"
        );
        assert_eq!(
            ClientCommand::Replicate {
                priority: "low".into(),
                full: true,
                mask: "bob".into()
            }
            .request(),
            "REPLICATE\tlow\tf\tbob\n"
        );
        assert_eq!(ClientCommand::DsyncStatus.request(), "STATUS-DSYNC\n");
    }

    #[tokio::test]
    async fn missing_socket() {
        // A path inside a fresh directory: `/nonexistent` may exist (it is
        // the home of system users such as `nobody`).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replicator-doveadm");
        let out = run(&path, &ClientCommand::Status { mask: None }, None, 80).await;
        assert_eq!(
            out.stderr,
            format!(
                "Fatal: net_connect_unix({}) failed: No such file or directory\n",
                path.display()
            )
        );
        assert_eq!(out.exit_code, 75);
    }
}

/// Why a `NOTIFY` to the local replicator did not get through.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("net_connect_unix({path}) failed: {source}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("write({path}) failed: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("read({path}) failed: {reason}")]
    Read { path: String, reason: String },
}

/// How long a `NOTIFY` may take before it is given up (the sync itself is
/// already done; the notice only saves the peer's replicator a sync back).
pub const NOTIFY_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends `NOTIFY <user> <f|> <state>` to the `replicator-doveadm` socket at
/// `path`, as a `dsync-server -U` does after a successful session: the
/// local replicator then counts the user as just synced and does not sync
/// straight back. `full` marks a full sync. The answer is read (so the
/// replicator has taken the line before the connection closes) but not
/// judged.
///
/// Returns `Ok(false)` when no replicator runs there (the socket is missing
/// or refuses connections): that is normal on hosts without one and is not
/// an error.
pub async fn notify(path: &Path, user: &str, full: bool, state: &str) -> Result<bool, NotifyError> {
    let shown = || path.display().to_string();
    let stream = match tokio::time::timeout(NOTIFY_TIMEOUT, UnixStream::connect(path)).await {
        Err(_) => {
            return Err(NotifyError::Connect {
                path: shown(),
                source: std::io::Error::from(std::io::ErrorKind::TimedOut),
            })
        }
        Ok(Err(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(false)
        }
        Ok(Err(source)) => {
            return Err(NotifyError::Connect {
                path: shown(),
                source,
            })
        }
        Ok(Ok(s)) => s,
    };
    let (rd, mut wr) = stream.into_split();
    let request = format!(
        "VERSION\treplicator-doveadm-client\t1\t0\nNOTIFY\t{}\t{}\t{}\n",
        escape(user),
        if full { "f" } else { "" },
        escape(state)
    );
    match tokio::time::timeout(NOTIFY_TIMEOUT, wr.write_all(request.as_bytes())).await {
        Ok(Ok(())) => {}
        Ok(Err(source)) => {
            return Err(NotifyError::Write {
                path: shown(),
                source,
            })
        }
        Err(_) => {
            return Err(NotifyError::Write {
                path: shown(),
                source: std::io::Error::from(std::io::ErrorKind::TimedOut),
            })
        }
    }
    // The server's VERSION line, then the answer to NOTIFY.
    let mut rd = BufReader::new(rd);
    let mut line = String::new();
    for _ in 0..2 {
        match next_line(&mut rd, &mut line).await {
            Some(l) if l == "\u{0}timeout" => {
                return Err(NotifyError::Read {
                    path: shown(),
                    reason: "timed out".into(),
                })
            }
            Some(_) => {}
            None => {
                return Err(NotifyError::Read {
                    path: shown(),
                    reason: "disconnected before answering".into(),
                })
            }
        }
    }
    Ok(true)
}
