//! Byte streams to a dsync peer: a child process's stdio (a command,
//! `remote:`, `remoteprefix:`), the doveadm-server protocol over TCP (`tcp:`)
//! and the same over TLS (`tcps:`).
//!
//! Every transport yields a [`DsyncStream`]: a full-duplex byte stream to the
//! peer's dsync protocol (after any doveadm handshake) plus a way to collect
//! the final outcome ([`DsyncStream::finish`]). Both halves must be driven
//! concurrently: dsync peers write without waiting for each other.
//!
//! [`wire`] holds the sans-I/O framing of the doveadm protocol.

pub mod child;
pub mod destination;
mod error;
pub mod tcp;
pub mod timeout;
pub mod tls;
pub mod wire;

use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

pub use child::{spawn_command, CommandOptions};
pub use destination::{expand_remote_cmd, split_host_port, Destination, DEFAULT_REMOTE_CMD};
pub use error::{
    reply_exit_code, TransportError, EX_DATAERR, EX_NOHOST, EX_NOPERM, EX_NOREPLICATE, EX_NOUSER,
    EX_PROTOCOL, EX_TEMPFAIL, EX_USAGE,
};
pub use tcp::{connect_dsync, run_command, run_command_line, LogSink, TcpOptions, TlsOptions};
pub use wire::CommandFlags;

/// The reading half: bytes of the peer's dsync stream.
pub type DsyncReader = Pin<Box<dyn AsyncRead + Send>>;
/// The writing half: bytes to the peer's dsync stream.
pub type DsyncWriter = Pin<Box<dyn AsyncWrite + Send>>;

/// How the session's outcome is collected after the stream is closed.
pub enum Finisher {
    /// A child process: its exit status decides.
    Child(Box<child::ChildProcess>),
    /// A socket: nothing follows the dsync stream.
    Socket,
}

impl Finisher {
    /// Collects the outcome. Close (drop) both halves of the stream first.
    pub async fn finish(self) -> Result<(), TransportError> {
        match self {
            Finisher::Child(c) => c.finish().await,
            Finisher::Socket => Ok(()),
        }
    }
}

/// An open transport to a dsync peer.
pub struct DsyncStream {
    pub reader: DsyncReader,
    pub writer: DsyncWriter,
    /// Describes the peer in messages (`127.0.0.1:24100`, `remote command …`).
    pub peer: String,
    finisher: Finisher,
}

impl std::fmt::Debug for DsyncStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DsyncStream")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl DsyncStream {
    pub fn new(
        reader: DsyncReader,
        writer: DsyncWriter,
        peer: String,
        finisher: Finisher,
    ) -> DsyncStream {
        DsyncStream {
            reader,
            writer,
            peer,
            finisher,
        }
    }

    /// The two halves and the finisher, to drive them from separate tasks.
    pub fn into_parts(self) -> (DsyncReader, DsyncWriter, Finisher) {
        (self.reader, self.writer, self.finisher)
    }

    /// Closes both directions and collects the outcome (for a child process:
    /// waits for it to exit and maps a non-zero status to an error).
    pub async fn finish(self) -> Result<(), TransportError> {
        let (reader, mut writer, finisher) = self.into_parts();
        // A peer that is already gone makes shutdown fail; the outcome below says why.
        let _ = writer.shutdown().await;
        drop(writer);
        drop(reader);
        finisher.finish().await
    }
}

/// Everything needed to open any kind of destination.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// The `-u` user (None: no user lookup; `%u` expands to nothing).
    pub user: Option<String>,
    /// `dsync_remote_cmd`.
    pub remote_cmd: String,
    /// `doveadm_port`, used when a `tcp:` destination has no port.
    pub default_port: Option<u16>,
    /// `doveadm_password`.
    pub doveadm_password: Option<String>,
    /// CA file or directory for `tcps:` (`ssl_client_ca_file`/`_dir`).
    pub ca_path: Option<PathBuf>,
    /// `-D`/`-v` of doveadm, forwarded to a doveadm server.
    pub flags: CommandFlags,
    /// `-U`: ask the remote to notify its replicator.
    pub replicator_notify: bool,
    pub connect_timeout: Duration,
    /// `-T`: idle I/O timeout (None disables it).
    pub io_timeout: Option<Duration>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            user: None,
            remote_cmd: DEFAULT_REMOTE_CMD.to_string(),
            default_port: None,
            doveadm_password: None,
            ca_path: None,
            flags: CommandFlags::default(),
            replicator_notify: false,
            connect_timeout: tcp::DEFAULT_CONNECT_TIMEOUT,
            io_timeout: Some(tcp::DEFAULT_IO_TIMEOUT),
        }
    }
}

/// Opens the transport for a classified destination.
pub async fn open(dest: &Destination, opts: &OpenOptions) -> Result<DsyncStream, TransportError> {
    let cmd_opts = |prefix_user: Option<String>| CommandOptions {
        io_timeout: opts.io_timeout,
        prefix_user,
        ..CommandOptions::default()
    };
    match dest {
        Destination::Command(argv) => spawn_command(argv, &cmd_opts(None)).await,
        Destination::Remote {
            login,
            host,
            mail_user,
            prefix_user,
        } => {
            let user = mail_user.as_deref().or(opts.user.as_deref());
            let argv = expand_remote_cmd(&opts.remote_cmd, login.as_deref(), host, user)?;
            let prefix = if *prefix_user {
                Some(user.unwrap_or_default().to_string())
            } else {
                None
            };
            spawn_command(&argv, &cmd_opts(prefix)).await
        }
        Destination::Tcp { host, port, tls } => {
            let Some(port) = port.or(opts.default_port) else {
                return Err(TransportError::BadDestination {
                    destination: format!("tcp:{host}"),
                    reason: "no port given and doveadm_port is not set".into(),
                });
            };
            let Some(user) = opts.user.as_deref() else {
                return Err(TransportError::BadDestination {
                    destination: format!("tcp:{host}:{port}"),
                    reason: "a doveadm server needs the user (-u)".into(),
                });
            };
            let mut t = TcpOptions::new(host.clone(), port);
            t.doveadm_password = opts.doveadm_password.clone();
            t.flags = opts.flags;
            t.connect_timeout = opts.connect_timeout;
            t.io_timeout = opts.io_timeout;
            if *tls {
                let Some(ca) = &opts.ca_path else {
                    return Err(TransportError::BadDestination {
                        destination: format!("tcps:{host}:{port}"),
                        reason: "no CA file or directory to verify the server with".into(),
                    });
                };
                t.tls = Some(TlsOptions {
                    ca_path: ca.clone(),
                    server_name: None,
                });
            }
            connect_dsync(&t, user, opts.replicator_notify).await
        }
        Destination::Location(loc) => Err(TransportError::BadDestination {
            destination: loc.clone(),
            reason: "a local mail location has no transport (local two-storage sync)".into(),
        }),
    }
}
