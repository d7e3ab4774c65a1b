//! The server's output: one ordered queue of channel-0 data and log lines,
//! written to the socket by a pump task, as multiplex frames (clients with
//! minor ≥ 1) or raw (minor 0, log lines dropped). One queue keeps a log line
//! queued before a status line ahead of it on the wire (16-tcp-nouser).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::transport::wire::{encode_frame, encode_log, LogLevel, CHANNEL_DATA};

/// Chunks queued between producers and the pump (backpressure beyond this).
const QUEUE_DEPTH: usize = 32;
/// Bytes the pump gathers into one socket write.
const BATCH_BYTES: usize = 64 * 1024;

#[derive(Debug)]
pub(crate) enum Out {
    Data(Vec<u8>),
    Log(LogLevel, String),
}

/// Sends log lines to the client's log channel (`L`). Never blocks: when the
/// queue is full the line goes to the server log only.
#[derive(Clone)]
pub struct SessionLog {
    tx: mpsc::Sender<Out>,
    prefix: String,
    debug: bool,
}

impl SessionLog {
    pub(crate) fn new(tx: mpsc::Sender<Out>, prefix: String, debug: bool) -> SessionLog {
        SessionLog { tx, prefix, debug }
    }

    /// A log that goes nowhere (for tests of handlers).
    pub fn disconnected() -> SessionLog {
        let (tx, _rx) = mpsc::channel(1);
        SessionLog {
            tx,
            prefix: String::new(),
            debug: false,
        }
    }

    /// Whether the client asked for debug logging (`D` flag).
    pub fn debug_enabled(&self) -> bool {
        self.debug
    }

    /// Sends `<prefix>message` with the level in the frame's first byte (the
    /// text carries no level word, as in Dovecot's log frames); debug lines
    /// only when the client asked for them.
    pub fn log(&self, level: LogLevel, message: &str) {
        if level == LogLevel::Debug && !self.debug {
            return;
        }
        let line = format!("{}{message}", self.prefix);
        tracing::debug!(target: "homing::server::peer_log", "{line}");
        let _ = self.tx.try_send(Out::Log(level, line));
    }

    /// Sends a raw log line (no level word), waiting for queue space.
    pub(crate) async fn raw(&self, level: LogLevel, line: String) {
        let _ = self.tx.send(Out::Log(level, line)).await;
    }

    pub fn error(&self, message: &str) {
        self.log(LogLevel::Error, message)
    }
    pub fn warning(&self, message: &str) {
        self.log(LogLevel::Warning, message)
    }
    pub fn info(&self, message: &str) {
        self.log(LogLevel::Info, message)
    }
    pub fn debug(&self, message: &str) {
        self.log(LogLevel::Debug, message)
    }
}

type Reserve = Pin<
    Box<dyn Future<Output = Result<mpsc::OwnedPermit<Out>, mpsc::error::SendError<()>>> + Send>,
>;

/// The channel-0 byte stream (the dsync output) as an [`AsyncWrite`].
pub struct ChannelWriter {
    tx: Option<mpsc::Sender<Out>>,
    reserve: Option<Reserve>,
}

impl ChannelWriter {
    pub(crate) fn new(tx: mpsc::Sender<Out>) -> ChannelWriter {
        ChannelWriter {
            tx: Some(tx),
            reserve: None,
        }
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "client connection closed")
}

impl AsyncWrite for ChannelWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let Some(tx) = &this.tx else {
            return Poll::Ready(Err(closed()));
        };
        let fut = this
            .reserve
            .get_or_insert_with(|| Box::pin(tx.clone().reserve_owned()));
        match fut.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(r) => {
                this.reserve = None;
                match r {
                    Ok(permit) => {
                        let n = buf.len().min(BATCH_BYTES);
                        permit.send(Out::Data(buf[..n].to_vec()));
                        Poll::Ready(Ok(n))
                    }
                    Err(_) => Poll::Ready(Err(closed())),
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The pump flushes the socket whenever its queue runs empty.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.reserve = None;
        this.tx = None;
        Poll::Ready(Ok(()))
    }
}

/// Creates the output queue: a sender for the connection logic and the
/// receiving end for [`pump`].
pub(crate) fn queue() -> (mpsc::Sender<Out>, mpsc::Receiver<Out>) {
    mpsc::channel(QUEUE_DEPTH)
}

/// Writes queued output to the socket until every sender is gone, then
/// flushes and shuts the socket's write side down.
pub(crate) async fn pump<W: AsyncWrite + Unpin>(
    mut rx: mpsc::Receiver<Out>,
    mut socket: W,
    multiplexed: bool,
) -> io::Result<u64> {
    let mut buf = Vec::with_capacity(BATCH_BYTES + 64);
    let mut total = 0u64;
    let add = |out: Out, buf: &mut Vec<u8>| match (out, multiplexed) {
        (Out::Data(d), true) => encode_frame(CHANNEL_DATA, &d, buf),
        (Out::Data(d), false) => buf.extend_from_slice(&d),
        (Out::Log(level, line), true) => encode_log(level, &line, buf),
        (Out::Log(..), false) => {}
    };
    while let Some(first) = rx.recv().await {
        add(first, &mut buf);
        while buf.len() < BATCH_BYTES {
            match rx.try_recv() {
                Ok(more) => add(more, &mut buf),
                Err(_) => break,
            }
        }
        socket.write_all(&buf).await?;
        total += buf.len() as u64;
        buf.clear();
        if rx.is_empty() {
            socket.flush().await?;
        }
    }
    socket.flush().await?;
    let _ = socket.shutdown().await;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn logs_and_data_keep_their_order_in_frames() {
        let (tx, rx) = queue();
        let (client, server) = tokio::io::duplex(1 << 20);
        let pump = tokio::spawn(pump(rx, server, true));
        let log = SessionLog::new(tx.clone(), "p: ".into(), false);
        log.error("first");
        log.debug("hidden without D");
        let mut w = ChannelWriter::new(tx);
        w.write_all(b"\n-NOUSER\n").await.unwrap();
        w.shutdown().await.unwrap();
        drop(log);
        pump.await.unwrap().unwrap();
        let mut got = Vec::new();
        let mut client = client;
        tokio::io::AsyncReadExt::read_to_end(&mut client, &mut got)
            .await
            .unwrap();
        assert_eq!(got, b"L\0\0\0\x0a\x04p: first\n\0\0\0\0\x09\n-NOUSER\n");
    }

    #[tokio::test]
    async fn raw_mode_drops_logs() {
        let (tx, rx) = queue();
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let pump = tokio::spawn(pump(rx, server, false));
        SessionLog::new(tx.clone(), String::new(), true).error("x");
        let mut w = ChannelWriter::new(tx);
        let big = vec![7u8; 300_000];
        w.write_all(&big).await.unwrap();
        drop(w);
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut client, &mut got)
            .await
            .unwrap();
        pump.await.unwrap().unwrap();
        assert_eq!(got, big);
    }
}
