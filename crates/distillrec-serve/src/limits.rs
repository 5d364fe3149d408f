//! Bounds on what one request or the whole server may take, and a listener
//! that holds at most `max_connections` connections open at once.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{bail, Result};
use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bounds on requests and connections (each a `serve` flag).
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request body in bytes (`--max-body-bytes`).
    pub max_body_bytes: usize,
    /// Longest history in items (`--max-history`).
    pub max_history: usize,
    /// Largest `k` (`--max-k`).
    pub max_k: usize,
    /// Most histories in one `/recommend/batch` request (at most `--max-batch`).
    pub max_histories: usize,
    /// Longest a request may take, reading included (`--timeout-ms`).
    pub timeout: Duration,
    /// Most connections open at once (`--max-connections`); more wait.
    pub max_connections: usize,
    /// A connection with no byte read or written for this long is closed
    /// (`--idle-timeout-ms`), so idle peers cannot hold every slot.
    pub idle: Duration,
    /// Most requests waiting for the model (`--queue`); more get 503.
    pub queue: usize,
}

impl Limits {
    /// Refuses a zero limit or a batch request larger than a forward pass,
    /// naming the flag.
    pub fn check(&self, max_batch: usize) -> Result<()> {
        let flags = [
            ("--max-batch", max_batch),
            ("--max-body-bytes", self.max_body_bytes),
            ("--max-history", self.max_history),
            ("--max-k", self.max_k),
            ("--max-connections", self.max_connections),
            ("--queue", self.queue),
            ("--timeout-ms", self.timeout.as_millis() as usize),
            ("--idle-timeout-ms", self.idle.as_millis() as usize),
        ];
        for (flag, v) in flags {
            if v == 0 {
                bail!("{flag} must be at least 1");
            }
        }
        if self.idle <= self.timeout {
            bail!(
                "--idle-timeout-ms {} must be above --timeout-ms {} (a connection waiting for its answer is not idle)",
                self.idle.as_millis(),
                self.timeout.as_millis()
            );
        }
        if max_batch > 4096 {
            bail!("--max-batch {max_batch} is too large; use at most 4096");
        }
        Ok(())
    }
}

/// The peer's address, for the loopback-only admin endpoints.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, LimitedListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, LimitedListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// A TCP listener that accepts only while fewer than its bound of
/// connections are open (the rest wait in the kernel's backlog), and closes
/// connections idle for longer than `idle`.
pub struct LimitedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    idle: Duration,
}

impl LimitedListener {
    /// Wraps `inner`, allowing `max` connections at once, each idle at most
    /// `idle`.
    pub fn new(inner: TcpListener, max: usize, idle: Duration) -> Self {
        LimitedListener {
            inner,
            slots: Arc::new(Semaphore::new(max)),
            idle,
        }
    }
}

impl Listener for LimitedListener {
    type Io = HeldStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // The semaphore is never closed, so acquiring only waits.
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("connection semaphore is never closed");
        let (stream, addr) = Listener::accept(&mut self.inner).await;
        let _ = stream.set_nodelay(true);
        (
            HeldStream {
                stream,
                _slot: permit,
                idle: self.idle,
                deadline: Box::pin(tokio::time::sleep(self.idle)),
            },
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection that frees its slot when dropped and fails its reads once
/// it has moved no byte for `idle` (the server then closes it).
pub struct HeldStream {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl HeldStream {
    /// Pushes the idle deadline back after bytes moved.
    fn touch(&mut self) {
        let next = tokio::time::Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }
}

impl AsyncRead for HeldStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.touch();
                }
                Poll::Ready(r)
            }
            Poll::Pending if self.deadline.as_mut().poll(cx).is_ready() => Poll::Ready(Err(
                io::Error::new(io::ErrorKind::TimedOut, "idle connection closed"),
            )),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for HeldStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            if n > 0 {
                self.touch();
            }
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
