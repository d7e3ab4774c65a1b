//! One client connection: VERSION, PLAIN, then command lines until a
//! `dsync-server` session runs (the connection closes after it).

use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::config::UserLookupError;
use super::handler::{SessionIo, SessionRequest};
use super::output::{self, ChannelWriter, Out, SessionLog};
use super::protocol::{
    check_plain, parse_auth_line, parse_client_version, parse_command_line,
    parse_dsync_server_args, status_reply, AuthRequest, ServerProtocolError, AUTH_FAILED_LINE,
    AUTH_OK_LINE, AUTH_REQUIRED_LINE, DSYNC_START_REPLY, EX_NOREPLICATE, EX_NOUSER, EX_TEMPFAIL,
    EX_USAGE, SERVER_VERSION_LINE, UNKNOWN_COMMAND_REPLY,
};
use super::Shared;
use crate::transport::timeout::IdleTimeout;
use crate::transport::wire::LogLevel;

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("{0}")]
    Protocol(#[from] ServerProtocolError),
    #[error("line longer than {0} bytes")]
    LineTooLong(usize),
    #[error("authentication failed: {0}")]
    AuthFailed(&'static str),
    #[error("client asked for STARTTLS, which this listener does not offer")]
    StartTls,
    #[error("handshake not finished within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads LF-terminated lines with a length bound, keeping what follows.
struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    max: usize,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    fn new(inner: R, max: usize) -> Self {
        LineReader {
            inner,
            buf: Vec::new(),
            max,
        }
    }

    /// The next line without its LF; None at EOF (a partial last line is dropped).
    async fn read_line(&mut self) -> Result<Option<Vec<u8>>, ConnError> {
        let mut scanned = 0;
        loop {
            if let Some(nl) = self.buf[scanned..].iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=scanned + nl).collect();
                line.pop();
                return Ok(Some(line));
            }
            scanned = self.buf.len();
            if self.buf.len() > self.max {
                return Err(ConnError::LineTooLong(self.max));
            }
            let mut chunk = [0u8; 4096];
            let want = (self.max + 1 - self.buf.len()).min(chunk.len());
            let n = self.inner.read(&mut chunk[..want]).await?;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn into_parts(self) -> (Vec<u8>, R) {
        (self.buf, self.inner)
    }
}

/// Escapes a peer-supplied name for a log line (no control bytes reach logs).
fn shown(name: &str) -> String {
    let cut: String = name.chars().take(100).collect();
    cut.escape_debug().to_string()
}

/// Serves one connection to its end.
pub(crate) async fn serve<S>(
    stream: S,
    peer: SocketAddr,
    shared: Arc<Shared>,
) -> Result<(), ConnError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let cfg = &shared.config;
    let (rd, mut wr) = tokio::io::split(stream);
    let mut lines = LineReader::new(rd, cfg.max_line);
    let peer_ip = peer.ip().to_string();

    let minor = {
        let handshake = async {
            let Some(first) = lines.read_line().await? else {
                return Ok(None);
            };
            let minor = parse_client_version(&first)?;
            let mut greet = Vec::new();
            if minor > 0 {
                greet.extend_from_slice(SERVER_VERSION_LINE);
            }
            greet.extend_from_slice(AUTH_REQUIRED_LINE);
            wr.write_all(&greet).await?;
            wr.flush().await?;
            let Some(auth) = lines.read_line().await? else {
                return Ok(None);
            };
            let failure = match parse_auth_line(&auth) {
                Ok(AuthRequest::Plain {
                    authn, password, ..
                }) => match check_plain(
                    &authn,
                    &password,
                    cfg.password.as_deref().map(str::as_bytes),
                ) {
                    Ok(()) => {
                        wr.write_all(AUTH_OK_LINE).await?;
                        wr.flush().await?;
                        return Ok(Some(minor));
                    }
                    Err(f) => ConnError::AuthFailed(f.log_text()),
                },
                Ok(AuthRequest::StartTls) => ConnError::StartTls,
                Err(e) => ConnError::Protocol(e),
            };
            shared.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, "doveadm client login refused: {failure}");
            // Slow down password guessing; the delay is per connection, so
            // it also bounds what one connection slot can try.
            tokio::time::sleep(cfg.auth_failure_delay).await;
            let _ = wr.write_all(AUTH_FAILED_LINE).await;
            let _ = wr.flush().await;
            Err(failure)
        };
        match tokio::time::timeout(cfg.handshake_timeout, handshake).await {
            Ok(Ok(Some(minor))) => minor,
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(e)) => {
                let _ = wr.shutdown().await;
                return Err(e);
            }
            Err(_) => return Err(ConnError::HandshakeTimeout(cfg.handshake_timeout)),
        }
    };

    let (tx, rx) = output::queue();
    let pump = tokio::spawn(output::pump(rx, wr, minor > 0));
    let result = command_loop(lines, &tx, peer, &peer_ip, &shared).await;
    drop(tx);
    let _ = pump.await;
    result
}

async fn send(tx: &mpsc::Sender<Out>, data: &[u8]) {
    let _ = tx.send(Out::Data(data.to_vec())).await;
}

async fn command_loop<R>(
    mut lines: LineReader<R>,
    tx: &mpsc::Sender<Out>,
    peer: SocketAddr,
    peer_ip: &str,
    shared: &Arc<Shared>,
) -> Result<(), ConnError>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let cfg = &shared.config;
    loop {
        let line = match tokio::time::timeout(cfg.io_timeout, lines.read_line()).await {
            Ok(r) => r?,
            Err(_) => return Ok(()),
        };
        let Some(line) = line else { return Ok(()) };
        let cmd = match parse_command_line(&line, cfg.max_command_fields) {
            Ok(c) => c,
            Err(e @ ServerProtocolError::UnknownFlag(_)) => {
                tracing::warn!(%peer, "{e}");
                return Err(e.into());
            }
            Err(e) => {
                tracing::info!(%peer, "unusable command line: {e}");
                send(tx, UNKNOWN_COMMAND_REPLY).await;
                continue;
            }
        };
        if cmd.args[0] != "dsync-server" {
            tracing::info!(%peer, command = %shown(&cmd.args[0]), "unsupported command");
            send(tx, UNKNOWN_COMMAND_REPLY).await;
            continue;
        }
        let args = match parse_dsync_server_args(&cmd.args[1..]) {
            Ok(a) => a,
            Err(e) => {
                let log = SessionLog::new(
                    tx.clone(),
                    format!("doveadm({}): ", shown(&cmd.user)),
                    false,
                );
                log.error(&e.to_string());
                send(tx, &status_reply(EX_USAGE)).await;
                continue;
            }
        };
        let name = args.user.clone().unwrap_or_else(|| cmd.user.clone());
        let lookup_log = SessionLog::new(
            tx.clone(),
            format!("doveadm({peer_ip},{}): ", shown(&name)),
            false,
        );
        let user = match shared.config.lookup_user(&name) {
            Ok(Some(u)) => u,
            Ok(None) => {
                lookup_log
                    .raw(
                        LogLevel::Error,
                        format!("doveadm({peer_ip},{}): User doesn't exist", shown(&name)),
                    )
                    .await;
                send(tx, &status_reply(EX_NOUSER)).await;
                continue;
            }
            Err(UserLookupError::InvalidName(e)) => {
                tracing::warn!(%peer, user = %shown(&name), "refused user name: {e}");
                lookup_log
                    .raw(
                        LogLevel::Error,
                        format!("doveadm({peer_ip},{}): User doesn't exist", shown(&name)),
                    )
                    .await;
                send(tx, &status_reply(EX_NOUSER)).await;
                continue;
            }
            Err(e) => {
                tracing::error!(%peer, "user lookup failed: {e}");
                lookup_log
                    .raw(
                        LogLevel::Error,
                        format!("doveadm({peer_ip},{}): User lookup failed", shown(&name)),
                    )
                    .await;
                send(tx, &status_reply(EX_TEMPFAIL)).await;
                continue;
            }
        };
        let log = SessionLog::new(
            tx.clone(),
            format!("doveadm({}): ", user.name),
            cmd.flags.debug,
        );
        if user.noreplicate && args.replicator_notify {
            log.debug("user is disabled for replication");
            send(tx, &status_reply(EX_NOREPLICATE)).await;
            continue;
        }
        if let Err(refused) = shared.handler.check(&user) {
            log.error(refused.message.as_deref().unwrap_or("session refused"));
            send(tx, &status_reply(refused.exit_code)).await;
            continue;
        }
        if shared.stopping.load(Ordering::Relaxed) {
            log.error("server is shutting down");
            send(tx, &status_reply(EX_TEMPFAIL)).await;
            return Ok(());
        }
        let lock = match shared.locks.lock(&user.name, cfg.lock_timeout).await {
            Ok(g) => g,
            Err(e) => {
                shared.stats.lock_timeouts.fetch_add(1, Ordering::Relaxed);
                log.error(&format!("Couldn't lock {}: {e}", user.name));
                send(tx, &status_reply(EX_TEMPFAIL)).await;
                continue;
            }
        };
        let permit =
            match tokio::time::timeout(cfg.lock_timeout, shared.sessions.clone().acquire_owned())
                .await
            {
                Ok(Ok(p)) => p,
                _ => {
                    log.error("too many dsync sessions running, try again later");
                    send(tx, &status_reply(EX_TEMPFAIL)).await;
                    continue;
                }
            };
        send(tx, DSYNC_START_REPLY).await;

        let io_timeout = match args.io_timeout {
            Some(t) => t.min(cfg.io_timeout),
            None => cfg.io_timeout,
        };
        let peer_s = peer.to_string();
        let (leftover, rd) = lines.into_parts();
        let reader = Cursor::new(leftover).chain(rd);
        let io = SessionIo {
            reader: Box::pin(IdleTimeout::new(reader, Some(io_timeout), &peer_s)),
            writer: Box::pin(IdleTimeout::new(
                ChannelWriter::new(tx.clone()),
                Some(io_timeout),
                &peer_s,
            )),
            log: log.clone(),
        };
        let request = SessionRequest {
            user,
            args,
            flags: cmd.flags,
            peer: peer_s,
            hostname: cfg.hostname.clone(),
            decoder: cfg.decoder_config(),
            io_timeout: Some(io_timeout),
        };
        let user_name = request.user.name.clone();
        let notify_replicator = request.args.replicator_notify;
        shared
            .stats
            .sessions_started
            .fetch_add(1, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let outcome = shared.handler.run(request, io).await;
        drop(permit);
        drop(lock);
        if outcome.exit_code == 0 {
            if notify_replicator {
                if let (Some(path), Some(n)) = (&cfg.replicator_socket, &outcome.notice) {
                    match crate::replicator::client::notify(path, &user_name, n.full_sync, &n.state)
                        .await
                    {
                        Ok(true) => {
                            shared
                                .stats
                                .replicator_notices
                                .fetch_add(1, Ordering::Relaxed);
                            log.debug("replicator notified");
                        }
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(user = %user_name, "replicator notify: {e}");
                            log.error(&e.to_string());
                        }
                    }
                }
            }
            shared.stats.sessions_ok.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, user = %user_name, elapsed = ?started.elapsed(), "dsync session finished");
        } else {
            shared.stats.sessions_failed.fetch_add(1, Ordering::Relaxed);
            let msg = outcome.message.unwrap_or_default();
            tracing::warn!(%peer, user = %user_name, exit_code = outcome.exit_code, "dsync session failed: {msg}");
            if !msg.is_empty() {
                log.error(&msg);
            }
        }
        return Ok(());
    }
}
