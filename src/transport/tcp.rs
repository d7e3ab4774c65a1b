//! The doveadm-server protocol over TCP (`tcp:`), TLS (`tcps:`) or a unix
//! socket (`doveadm -S PATH`), client side.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::timeout::IdleTimeout;
use super::wire::{
    self, ClientHandshake, CommandFlags, DemuxEvent, Demuxer, HandshakeStep, LogLevel, Reply,
    ReplyParser, ReplyStatus, MAX_LINE,
};
use super::{tls, DsyncStream, Finisher, TransportError};

/// Dovecot's default for `-T` (seconds without any input before giving up).
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a TCP connect (and the TLS handshake) may take.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// TLS settings of a `tcps:` connection.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// A PEM file of CA certificates, or a directory of such files.
    pub ca_path: PathBuf,
    /// Name to verify the certificate against; default: the destination host.
    pub server_name: Option<String>,
}

/// Where and how to reach a doveadm server.
#[derive(Debug, Clone)]
pub struct TcpOptions {
    pub host: String,
    pub port: u16,
    /// Connect to this unix socket instead of `host:port` (no TLS there).
    pub unix_socket: Option<PathBuf>,
    /// `Some` for `tcps:`.
    pub tls: Option<TlsOptions>,
    /// PLAIN authentication id; Dovecot requires `doveadm`.
    pub doveadm_username: String,
    /// `doveadm_password`; None = not configured.
    pub doveadm_password: Option<String>,
    /// `D`/`v` command flags (server-side debug/verbose logging).
    pub flags: CommandFlags,
    pub connect_timeout: Duration,
    /// Idle I/O timeout; None disables it.
    pub io_timeout: Option<Duration>,
}

impl TcpOptions {
    pub fn new(host: impl Into<String>, port: u16) -> TcpOptions {
        TcpOptions {
            host: host.into(),
            port,
            unix_socket: None,
            tls: None,
            doveadm_username: wire::DEFAULT_USERNAME.to_string(),
            doveadm_password: None,
            flags: CommandFlags::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            io_timeout: Some(DEFAULT_IO_TIMEOUT),
        }
    }

    /// A doveadm server listening on the unix socket at `path` (Dovecot's
    /// `<base_dir>/doveadm-server`; a 0600 socket needs no password).
    pub fn unix(path: impl Into<PathBuf>) -> TcpOptions {
        let path = path.into();
        TcpOptions {
            unix_socket: Some(path.clone()),
            ..TcpOptions::new(path.display().to_string(), 0)
        }
    }

    /// `host:port` (IPv6 in brackets) or the socket path, for messages.
    pub fn peer(&self) -> String {
        if let Some(p) = &self.unix_socket {
            p.display().to_string()
        } else if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

async fn open_stream(opts: &TcpOptions) -> Result<Box<dyn Stream>, TransportError> {
    let peer = opts.peer();
    if let Some(path) = &opts.unix_socket {
        let s = tokio::time::timeout(opts.connect_timeout, tokio::net::UnixStream::connect(path))
            .await
            .map_err(|_| TransportError::ConnectTimeout {
                addr: peer.clone(),
                after: opts.connect_timeout,
            })?
            .map_err(|source| TransportError::Connect {
                addr: peer.clone(),
                source,
            })?;
        return Ok(Box::new(s));
    }
    let addrs: Vec<std::net::SocketAddr> = tokio::time::timeout(
        opts.connect_timeout,
        tokio::net::lookup_host((opts.host.as_str(), opts.port)),
    )
    .await
    .map_err(|_| TransportError::ConnectTimeout {
        addr: peer.clone(),
        after: opts.connect_timeout,
    })?
    .map_err(|source| TransportError::Resolve {
        host: opts.host.clone(),
        source,
    })?
    .collect();
    let mut last = None;
    let mut tcp = None;
    for addr in &addrs {
        match tokio::time::timeout(opts.connect_timeout, TcpStream::connect(addr)).await {
            Err(_) => {
                return Err(TransportError::ConnectTimeout {
                    addr: addr.to_string(),
                    after: opts.connect_timeout,
                })
            }
            Ok(Ok(s)) => {
                tcp = Some(s);
                break;
            }
            Ok(Err(e)) => last = Some((addr.to_string(), e)),
        }
    }
    let tcp = match (tcp, last) {
        (Some(t), _) => t,
        (None, Some((addr, source))) => return Err(TransportError::Connect { addr, source }),
        (None, None) => {
            return Err(TransportError::Resolve {
                host: opts.host.clone(),
                source: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
            })
        }
    };
    // Small protocol lines go out at once.
    let _ = tcp.set_nodelay(true);
    let Some(t) = &opts.tls else {
        return Ok(Box::new(tcp));
    };
    let config = tls::client_config(&t.ca_path)?;
    let name = tls::server_name(t.server_name.as_deref().unwrap_or(&opts.host))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let stream = tokio::time::timeout(opts.connect_timeout, connector.connect(name, tcp))
        .await
        .map_err(|_| TransportError::ConnectTimeout {
            addr: format!("{peer} (TLS handshake)"),
            after: opts.connect_timeout,
        })?
        .map_err(|e| tls::handshake_error(&peer, e))?;
    Ok(Box::new(stream))
}

type BoxRead = IdleTimeout<tokio::io::ReadHalf<Box<dyn Stream>>>;
type BoxWrite = IdleTimeout<tokio::io::WriteHalf<Box<dyn Stream>>>;

/// Receives the log lines (channel `L`) of a doveadm server's output.
pub type LogSink = Box<dyn FnMut(LogLevel, &str) + Send>;

/// Connects, authenticates, sends `command` and reads the command reply,
/// whatever its status. Returns the reply and a reader positioned after it
/// (channel 0 only). Log lines go to `log`, else to `tracing`.
async fn exchange(
    opts: &TcpOptions,
    command: Vec<u8>,
    log: Option<LogSink>,
) -> Result<(Reply, DemuxReader<BoxRead>, BoxWrite), TransportError> {
    let peer = opts.peer();
    let stream = open_stream(opts).await?;
    let (r, w) = tokio::io::split(stream);
    let mut r = IdleTimeout::new(r, opts.io_timeout, &peer);
    let mut w = IdleTimeout::new(w, opts.io_timeout, &peer);
    let io_err = |e: io::Error| TransportError::from_io(&peer, e);

    let mut hs = ClientHandshake::new(
        &opts.doveadm_username,
        opts.doveadm_password.as_deref(),
        command,
    );
    w.write_all(hs.start()).await.map_err(io_err)?;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut pos = 0;
    let multiplexed = 'handshake: loop {
        while let Some(nl) = buf[pos..].iter().position(|b| *b == b'\n') {
            let line = &buf[pos..pos + nl];
            pos += nl + 1;
            let step = hs.on_line(line).map_err(|e| match e {
                wire::WireError::AuthenticationFailed => {
                    TransportError::AuthenticationFailed { peer: peer.clone() }
                }
                wire::WireError::PasswordRequired => {
                    TransportError::PasswordRequired { peer: peer.clone() }
                }
                other => TransportError::Protocol {
                    peer: peer.clone(),
                    source: other,
                },
            })?;
            match step {
                HandshakeStep::Continue => {}
                HandshakeStep::Send(bytes) => w.write_all(&bytes).await.map_err(io_err)?,
                HandshakeStep::Finished { send, multiplexed } => {
                    w.write_all(&send).await.map_err(io_err)?;
                    break 'handshake multiplexed;
                }
            }
        }
        if buf.len() - pos > MAX_LINE {
            return Err(TransportError::Protocol {
                peer: peer.clone(),
                source: wire::WireError::LineTooLong,
            });
        }
        buf.drain(..pos);
        pos = 0;
        let mut chunk = [0u8; 4096];
        let n = r.read(&mut chunk).await.map_err(io_err)?;
        if n == 0 {
            return Err(TransportError::Eof {
                peer: peer.clone(),
                during: "during the doveadm handshake",
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    w.flush().await.map_err(io_err)?;

    let mut reader = DemuxReader::new(r, &peer, multiplexed, buf.split_off(pos));
    reader.sink = log;
    let reply = reader.read_reply().await?;
    Ok((reply, reader, w))
}

/// [`exchange`], with a failure reply turned into the error `doveadm sync`
/// reports for a refused `dsync-server`.
async fn connect_and_send(
    opts: &TcpOptions,
    user: &str,
    command: Vec<u8>,
) -> Result<(Reply, DemuxReader<BoxRead>, BoxWrite), TransportError> {
    let (reply, reader, w) = exchange(opts, command, None).await?;
    if let ReplyStatus::Failure(code) = &reply.status {
        let peer = opts.peer();
        let detail = reader.last_error.clone();
        return Err(match code.as_str() {
            "NOUSER" => TransportError::UnknownUser {
                peer,
                user: user.to_string(),
                detail,
            },
            "NOREPLICATE" => TransportError::NoReplicate {
                peer,
                user: user.to_string(),
            },
            _ => TransportError::RemoteCommandRefused {
                peer,
                code: code.clone(),
                detail,
            },
        });
    }
    Ok((reply, reader, w))
}

/// Opens a dsync session for `user` on a doveadm server: handshake, PLAIN
/// authentication, `dsync-server -u<user>` (plus `-U` with
/// `replicator_notify`), then the server's multiplexed output is split: channel
/// 0 becomes the returned stream's reader, log lines go to `tracing`.
pub async fn connect_dsync(
    opts: &TcpOptions,
    user: &str,
    replicator_notify: bool,
) -> Result<DsyncStream, TransportError> {
    let command = wire::dsync_server_command(opts.flags, user, replicator_notify);
    let (_reply, reader, writer) = connect_and_send(opts, user, command).await?;
    let peer = opts.peer();
    Ok(DsyncStream::new(
        Box::pin(reader),
        Box::pin(writer),
        peer,
        Finisher::Socket,
    ))
}

/// Runs an ordinary doveadm command (e.g. `["mailbox", "list"]`) for `user`
/// on a doveadm server and returns its reply.
pub async fn run_command(
    opts: &TcpOptions,
    user: &str,
    args: &[&str],
) -> Result<Reply, TransportError> {
    let command = wire::command_line(opts.flags, user, args);
    let (reply, _r, _w) = connect_and_send(opts, user, command).await?;
    Ok(reply)
}

/// Sends one complete command line (see [`wire::command_line`]) to a
/// doveadm server and returns its reply as it is: a failure status is a
/// reply, not an error. The server's log lines go to `log` as they arrive
/// (else to `tracing`). This is what `doveadm -S` does with a command.
pub async fn run_command_line(
    opts: &TcpOptions,
    command: Vec<u8>,
    log: Option<LogSink>,
) -> Result<Reply, TransportError> {
    let (reply, _r, _w) = exchange(opts, command, log).await?;
    Ok(reply)
}

/// Channel-0 reader over the server's multiplexed output; log lines are
/// forwarded to `tracing` as they pass.
pub struct DemuxReader<R> {
    inner: R,
    peer: String,
    multiplexed: bool,
    demux: Demuxer,
    raw: Vec<u8>,
    raw_pos: usize,
    /// Channel-0 bytes already taken out of frames but not yet delivered.
    pending: Vec<u8>,
    pending_pos: usize,
    /// The last error-or-worse log line, for error messages.
    last_error: Option<String>,
    /// Where log lines go instead of `tracing`.
    sink: Option<LogSink>,
}

impl<R: AsyncRead + Unpin> DemuxReader<R> {
    fn new(inner: R, peer: &str, multiplexed: bool, leftover: Vec<u8>) -> Self {
        DemuxReader {
            inner,
            peer: peer.to_string(),
            multiplexed,
            demux: Demuxer::new(),
            raw: leftover,
            raw_pos: 0,
            pending: Vec::new(),
            pending_pos: 0,
            last_error: None,
            sink: None,
        }
    }

    fn log(&mut self, level: LogLevel, text: &str) {
        if let Some(sink) = &mut self.sink {
            sink(level, text);
            return;
        }
        let peer = &self.peer;
        match level {
            LogLevel::Debug => tracing::debug!("remote({peer}): {text}"),
            LogLevel::Info => tracing::info!("remote({peer}): {text}"),
            LogLevel::Warning => tracing::warn!("remote({peer}): {text}"),
            LogLevel::Error | LogLevel::Fatal | LogLevel::Panic | LogLevel::Other(_) => {
                tracing::error!("remote({peer}): {text}");
                self.last_error = Some(text.to_string());
            }
        }
    }

    /// Reads the command reply from channel 0; what follows stays buffered.
    async fn read_reply(&mut self) -> Result<Reply, TransportError> {
        let mut parser = ReplyParser::new();
        let mut chunk = vec![0u8; 8192];
        loop {
            let n = self
                .read(&mut chunk)
                .await
                .map_err(|e| TransportError::from_io(&self.peer, e))?;
            if n == 0 {
                return Err(TransportError::Eof {
                    peer: self.peer.clone(),
                    during: "before the command reply",
                });
            }
            let (used, reply) =
                parser
                    .push(&chunk[..n])
                    .map_err(|source| TransportError::Protocol {
                        peer: self.peer.clone(),
                        source,
                    })?;
            if let Some(reply) = reply {
                // Bytes after the reply belong to the command's own output.
                let mut rest = chunk[used..n].to_vec();
                rest.extend_from_slice(&self.pending[self.pending_pos..]);
                self.pending = rest;
                self.pending_pos = 0;
                return Ok(reply);
            }
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for DemuxReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.pending_pos < this.pending.len() {
                let n = out.remaining().min(this.pending.len() - this.pending_pos);
                out.put_slice(&this.pending[this.pending_pos..this.pending_pos + n]);
                this.pending_pos += n;
                return Poll::Ready(Ok(()));
            }
            if this.raw_pos < this.raw.len() {
                if !this.multiplexed {
                    let n = out.remaining().min(this.raw.len() - this.raw_pos);
                    out.put_slice(&this.raw[this.raw_pos..this.raw_pos + n]);
                    this.raw_pos += n;
                    return Poll::Ready(Ok(()));
                }
                let (used, ev) = this.demux.next(&this.raw[this.raw_pos..], out.remaining());
                match ev {
                    Some(DemuxEvent::Data(d)) => {
                        out.put_slice(d);
                        this.raw_pos += used;
                        return Poll::Ready(Ok(()));
                    }
                    Some(DemuxEvent::Log { level, text }) => {
                        this.raw_pos += used;
                        this.log(level, &text);
                    }
                    None => this.raw_pos += used,
                }
                continue;
            }
            // Everything buffered is used up: read more.
            this.raw.clear();
            this.raw.resize(16 * 1024, 0);
            this.raw_pos = 0;
            let mut rb = ReadBuf::new(&mut this.raw);
            let polled = Pin::new(&mut this.inner).poll_read(cx, &mut rb);
            let n = rb.filled().len();
            // Keep only what was read: on Pending (or error) nothing is buffered.
            this.raw.truncate(n);
            ready!(polled)?;
            if n == 0 {
                if !this.demux.at_frame_boundary() {
                    return Poll::Ready(Err(TransportError::Eof {
                        peer: this.peer.clone(),
                        during: "inside a multiplex frame",
                    }
                    .into_io()));
                }
                return Poll::Ready(Ok(()));
            }
        }
    }
}
