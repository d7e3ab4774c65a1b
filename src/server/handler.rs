//! What runs a dsync session once the doveadm-server layer has authenticated
//! the client, parsed `dsync-server`, looked the user up and taken the user's
//! lock: a [`SessionHandler`]. The server has already sent `\n+\n`; the
//! handler reads the client's dsync stream, writes its own (the slave brain's
//! output) and returns an outcome. Nothing follows the dsync stream on the
//! wire; the outcome is logged (and a failure sent as an error log line).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::config::MailUser;
use super::output::SessionLog;
use super::protocol::{DsyncServerArgs, EX_TEMPFAIL};
use crate::transport::wire::CommandFlags;
use crate::transport::{spawn_command, CommandOptions, DsyncReader, DsyncWriter};

/// Everything known about the session before it starts.
#[derive(Debug, Clone)]
pub struct SessionRequest {
    /// The user, validated and found in the user database.
    pub user: MailUser,
    /// The parsed `dsync-server` options (`-U`, `-T`, …).
    pub args: DsyncServerArgs,
    /// `D`/`v` command flags.
    pub flags: CommandFlags,
    /// The client's address, for messages.
    pub peer: String,
    /// The name this server announces in the dsync handshake.
    pub hostname: String,
    /// Limits for decoding the client's stream (line length, item counts, mail size).
    pub decoder: dsync_protocol::DecoderConfig,
    /// Idle I/O timeout already applied to `reader`/`writer`.
    pub io_timeout: Option<Duration>,
}

/// The session's byte streams: `reader` is the rest of the client's plain
/// input (the master's dsync stream), `writer` goes out on channel 0.
pub struct SessionIo {
    pub reader: DsyncReader,
    pub writer: DsyncWriter,
    /// Log lines for the client (channel `L`).
    pub log: SessionLog,
}

/// How a session ended: a doveadm exit code (0 success, 2 desync, 75
/// tempfail, …) and a message for the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOutcome {
    pub exit_code: i32,
    pub message: Option<String>,
    /// What a `-U` session reports to the local replicator; None when the
    /// handler cannot tell (then no `NOTIFY` is sent).
    pub notice: Option<ReplicatorNotice>,
}

/// The slave side's view of a finished session, for `NOTIFY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicatorNotice {
    /// The master asked for a full sync.
    pub full_sync: bool,
    /// The slave's new dsync state string (empty when unknown).
    pub state: String,
}

impl SessionOutcome {
    pub fn success() -> SessionOutcome {
        SessionOutcome {
            exit_code: 0,
            message: None,
            notice: None,
        }
    }
    pub fn failed(exit_code: i32, message: impl Into<String>) -> SessionOutcome {
        SessionOutcome {
            exit_code,
            message: Some(message.into()),
            notice: None,
        }
    }
}

/// A session's future.
pub type SessionFuture = Pin<Box<dyn Future<Output = SessionOutcome> + Send + 'static>>;

/// Runs dsync sessions. Implementations must read `io.reader` and write
/// `io.writer` concurrently (dsync peers do not take turns) and should close
/// `io.writer` (shutdown or drop) when their dsync output is complete.
pub trait SessionHandler: Send + Sync + 'static {
    /// Called before the server answers `+`: a refusal here is answered as
    /// a failed command (`-CODE` from the outcome's exit code, the message
    /// as an error log line) instead of a broken dsync stream.
    fn check(&self, _user: &MailUser) -> Result<(), SessionOutcome> {
        Ok(())
    }

    fn run(&self, request: SessionRequest, io: SessionIo) -> SessionFuture;
}

impl<F> SessionHandler for F
where
    F: Fn(SessionRequest, SessionIo) -> SessionFuture + Send + Sync + 'static,
{
    fn run(&self, request: SessionRequest, io: SessionIo) -> SessionFuture {
        self(request, io)
    }
}

/// Delegates each session to an external dsync server command (for example
/// a local `doveadm dsync-server`), its stdin/stdout joined to the session.
/// `%u` (user), `%h` (home) and `%m` (mail location) are expanded in each
/// word; the user name was validated, so no word can gain path tricks.
pub struct CommandHandler {
    template: Vec<String>,
}

impl CommandHandler {
    /// `command` is split at whitespace.
    pub fn new(command: &str) -> CommandHandler {
        CommandHandler {
            template: command.split_whitespace().map(str::to_string).collect(),
        }
    }

    /// The argv for `user`.
    pub fn argv(&self, user: &MailUser) -> Vec<String> {
        self.template
            .iter()
            .map(|w| {
                let mut out = String::new();
                let mut chars = w.chars();
                while let Some(c) = chars.next() {
                    if c != '%' {
                        out.push(c);
                        continue;
                    }
                    match chars.next() {
                        Some('u') => out.push_str(&user.name),
                        Some('h') => out.push_str(&user.home.display().to_string()),
                        Some('m') => out.push_str(&user.mail_location),
                        Some('%') => out.push('%'),
                        Some(o) => {
                            out.push('%');
                            out.push(o);
                        }
                        None => out.push('%'),
                    }
                }
                out
            })
            .collect()
    }
}

/// The built-in dsync slave: the session driver with the user's mail
/// location as the local replica.
#[derive(Debug, Default, Clone)]
pub struct SlaveHandler {
    pub options: crate::session::SessionOptions,
}

impl SessionHandler for SlaveHandler {
    fn check(&self, user: &MailUser) -> Result<(), SessionOutcome> {
        crate::cli::sync::open_replica(
            &user.mail_location,
            None,
            user.attribute_dict.as_deref(),
            None,
        )
        .map(drop)
        .map_err(|f| SessionOutcome::failed(f.code, f.message))
    }

    fn run(&self, request: SessionRequest, io: SessionIo) -> SessionFuture {
        let mut options = self.options.clone();
        options.decoder = dsync_protocol::DecoderConfig {
            validate_order: options.decoder.validate_order,
            ..request.decoder.clone()
        };
        Box::pin(async move {
            // When the engine decides this side takes the `-l` lock, it is
            // Dovecot's `<home>/.dovecot-sync.lock`, shared with Dovecot's
            // own syncs of the user.
            let store = match crate::cli::sync::open_replica(
                &request.user.mail_location,
                None,
                request.user.attribute_dict.as_deref(),
                Some(request.user.home.clone()),
            ) {
                Ok(s) => s,
                Err(f) => return SessionOutcome::failed(f.code, f.message),
            };
            let r = crate::session::run_slave_session(
                io.reader,
                io.writer,
                store,
                &request.hostname,
                &request.peer,
                &options,
            )
            .await;
            for m in &r.outcome.messages {
                io.log.warning(m);
            }
            let code = r.exit_code();
            match (&r.error, code) {
                (Some(e), _) => SessionOutcome::failed(code, e.to_string()),
                (None, 0) => SessionOutcome {
                    notice: Some(ReplicatorNotice {
                        full_sync: r.outcome.sync_type == dsync_protocol::SyncType::Full,
                        state: crate::cli::sync::state_string(&r),
                    }),
                    ..SessionOutcome::success()
                },
                (None, c) => {
                    SessionOutcome::failed(c, format!("dsync session ended with status {c}"))
                }
            }
        })
    }
}

impl SessionHandler for Arc<CommandHandler> {
    fn run(&self, request: SessionRequest, io: SessionIo) -> SessionFuture {
        let argv = self.argv(&request.user);
        Box::pin(async move {
            let opts = CommandOptions {
                io_timeout: request.io_timeout,
                ..CommandOptions::default()
            };
            let child = match spawn_command(&argv, &opts).await {
                Ok(c) => c,
                Err(e) => return SessionOutcome::failed(e.exit_code(), e.to_string()),
            };
            let (mut child_out, mut child_in, finisher) = child.into_parts();
            let SessionIo {
                mut reader,
                mut writer,
                log,
            } = io;
            // Client → child runs on its own: the child's output ending ends
            // the session, while the client keeps its side open until it has
            // read everything.
            let copy_in = tokio::spawn(async move {
                let r = tokio::io::copy(&mut reader, &mut child_in).await;
                let _ = child_in.shutdown().await;
                r
            });
            let from_child = async {
                let mut buf = vec![0u8; 64 * 1024];
                let mut total = 0u64;
                loop {
                    let n = child_out.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    writer.write_all(&buf[..n]).await?;
                    total += n as u64;
                }
                writer.shutdown().await?;
                Ok::<u64, std::io::Error>(total)
            };
            let out = from_child.await;
            copy_in.abort();
            drop(child_out);
            let result = finisher.finish().await;
            match (out, result) {
                (_, Err(e)) => {
                    log.error(&e.to_string());
                    SessionOutcome::failed(e.exit_code(), e.to_string())
                }
                (Err(e), Ok(())) => SessionOutcome::failed(EX_TEMPFAIL, e.to_string()),
                (Ok(_), Ok(())) => SessionOutcome::success(),
            }
        })
    }
}
