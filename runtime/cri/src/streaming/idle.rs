//! The idle timeout of a streaming connection: like the kubelet's streaming server (4 hours
//! by default), a connection with no bytes read or written for that long fails its pending
//! reads and writes, which ends the session as if the client had gone.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Upstream's `StreamIdleTimeout`.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(4 * 3600);

/// An I/O object whose pending operations fail once it was idle for `timeout`.
pub struct IdleIo<S> {
    inner: S,
    timeout: Duration,
    last: Instant,
    read_timer: Pin<Box<Sleep>>,
    write_timer: Pin<Box<Sleep>>,
}

impl<S> IdleIo<S> {
    pub fn new(inner: S, timeout: Duration) -> IdleIo<S> {
        let now = Instant::now();
        IdleIo {
            inner,
            timeout,
            last: now,
            read_timer: Box::pin(tokio::time::sleep_until(now + timeout)),
            write_timer: Box::pin(tokio::time::sleep_until(now + timeout)),
        }
    }
}

/// Whether the connection has been idle for `timeout`; arms `timer` to wake the task then.
fn idle(
    last: Instant,
    timeout: Duration,
    timer: &mut Pin<Box<Sleep>>,
    cx: &mut Context<'_>,
) -> bool {
    loop {
        if timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        let due = last + timeout;
        if Instant::now() >= due {
            return true;
        }
        timer.as_mut().reset(due);
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "streaming connection idle timeout")
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.last = Instant::now();
                Poll::Ready(r)
            }
            Poll::Pending if idle(this.last, this.timeout, &mut this.read_timer, cx) => {
                Poll::Ready(Err(timed_out()))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                this.last = Instant::now();
                Poll::Ready(r)
            }
            Poll::Pending if idle(this.last, this.timeout, &mut this.write_timer, cx) => {
                Poll::Ready(Err(timed_out()))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_fail_after_the_idle_time_and_activity_defers_it() {
        let (a, mut b) = tokio::io::duplex(64);
        let limit = Duration::from_millis(400);
        let mut io = IdleIo::new(a, limit);
        let mut buf = [0u8; 8];
        // Activity after 300 ms pushes the deadline to 700 ms.
        tokio::time::sleep(Duration::from_millis(300)).await;
        io.write_all(b"x").await.expect("write");
        b.write_all(b"y").await.expect("peer write");
        let t0 = Instant::now();
        assert_eq!(io.read(&mut buf).await.expect("read"), 1);
        let e = io.read(&mut buf).await.expect_err("idle");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let waited = t0.elapsed();
        assert!(waited >= Duration::from_millis(350), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
    }
}
