//! An idle I/O timeout: a read or write that makes no progress for the given
//! time fails with [`TransportError::Timeout`] (inside an `io::Error` of kind
//! `TimedOut`), like Dovecot's "I/O has stalled" check.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::TransportError;

/// Wraps a reader or writer with an idle timeout (None: no timeout).
pub struct IdleTimeout<T> {
    inner: T,
    timeout: Option<Duration>,
    peer: String,
    read_timer: Option<Pin<Box<Sleep>>>,
    write_timer: Option<Pin<Box<Sleep>>>,
}

impl<T> IdleTimeout<T> {
    pub fn new(inner: T, timeout: Option<Duration>, peer: &str) -> IdleTimeout<T> {
        IdleTimeout {
            inner,
            timeout,
            peer: peer.to_string(),
            read_timer: None,
            write_timer: None,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

/// Polls the stall timer after the inner I/O returned Pending; arms it on the
/// first Pending after progress.
fn check_stall(
    timer: &mut Option<Pin<Box<Sleep>>>,
    timeout: Option<Duration>,
    cx: &mut Context<'_>,
    peer: &str,
    during: &'static str,
) -> Poll<io::Error> {
    let Some(after) = timeout else {
        return Poll::Pending;
    };
    let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + after)));
    match t.as_mut().poll(cx) {
        Poll::Ready(()) => {
            *timer = None;
            Poll::Ready(
                TransportError::Timeout {
                    peer: peer.to_string(),
                    during,
                    after,
                }
                .into_io(),
            )
        }
        Poll::Pending => Poll::Pending,
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleTimeout<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.read_timer = None;
                Poll::Ready(r)
            }
            Poll::Pending => check_stall(
                &mut this.read_timer,
                this.timeout,
                cx,
                &this.peer,
                "waiting for input",
            )
            .map(Err),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                this.write_timer = None;
                Poll::Ready(r)
            }
            Poll::Pending => check_stall(
                &mut this.write_timer,
                this.timeout,
                cx,
                &this.peer,
                "waiting for the peer to read",
            )
            .map(Err),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(r) => {
                this.write_timer = None;
                Poll::Ready(r)
            }
            Poll::Pending => check_stall(
                &mut this.write_timer,
                this.timeout,
                cx,
                &this.peer,
                "flushing output",
            )
            .map(Err),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn stalled_reader_times_out_and_active_one_does_not() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut r = IdleTimeout::new(a, Some(Duration::from_secs(5)), "peer-x");
        // Data arriving every 3 s keeps it alive.
        let writer = tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(3)).await;
                b.write_all(b"x").await.unwrap();
            }
            b
        });
        let mut buf = [0u8; 1];
        for _ in 0..3 {
            r.read_exact(&mut buf).await.unwrap();
        }
        let _b = writer.await.unwrap();
        // Then nothing: the next read fails after 5 s.
        let start = Instant::now();
        let err = r.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        let t = TransportError::from_io("peer-x", err);
        assert!(t.to_string().contains("no data from peer-x for 5s"), "{t}");
    }

    #[tokio::test(start_paused = true)]
    async fn writer_to_a_peer_that_never_reads_times_out() {
        let (a, _b) = tokio::io::duplex(8);
        let mut w = IdleTimeout::new(a, Some(Duration::from_secs(2)), "peer-y");
        let err = w.write_all(&[0u8; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
