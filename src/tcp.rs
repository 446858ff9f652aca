//! The TCP stream under the server's and the client's connections.
//!
//! `async_io::Async<TcpStream>` flushes on `close` but never shuts the
//! socket down, so the peer would not see our FIN until the socket is
//! dropped — and a lingering close (reading until the peer's EOF) would
//! wait out its timeout. [`Tcp`] is the same stream with a `close` that
//! shuts down the write half, which is what [`Connection::run`] relies on
//! when it ends (the `defer ws.Close()` of the original Go program).
//!
//! It also remembers when a read came back shorter than the buffer: the
//! socket was drained at that moment, so the next read would only say
//! `EAGAIN`. That read is skipped and the task goes straight to waiting for
//! readability, as tokio does. async-io re-arms a one-shot, level-triggered
//! epoll registration when a task starts waiting, so bytes that arrived in
//! between are reported at once and nothing is missed. This halves the
//! `recvfrom` calls per round trip of a peer that is not pipelining (one
//! with data, instead of one with data and one `EAGAIN`). One byte more per
//! connection.
//!
//! [`Connection::run`]: crate::Connection::run

use std::io;
use std::net::{Shutdown, TcpStream};
use std::pin::Pin;
use std::task::{Context, Poll};

use async_io::Async;
use futures_lite::{AsyncRead, AsyncWrite};

/// A non-blocking TCP stream whose `close` sends FIN.
#[derive(Debug)]
pub struct Tcp(pub Async<TcpStream>, Drained);

/// The last read returned less than it was asked for: wait for readability
/// before reading again (see the module header).
#[derive(Debug, Default, Clone, Copy)]
struct Drained(bool);

impl Tcp {
    /// Wraps a registered stream, turning Nagle's algorithm off: our
    /// messages are small and must not wait for the peer's next packet.
    pub fn new(stream: Async<TcpStream>) -> io::Result<Tcp> {
        stream.get_ref().set_nodelay(true)?;
        Ok(Tcp(stream, Drained::default()))
    }
}

impl AsyncRead for Tcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if self.1 .0 {
            // Drained a moment ago: a read now would almost surely be
            // `EAGAIN`. Wait first (this arms the epoll registration).
            std::task::ready!(self.0.poll_readable(cx))?;
            self.1 .0 = false;
        }
        let read = std::task::ready!(Pin::new(&mut self.0).poll_read(cx, buf));
        if let Ok(n) = read {
            // 0 is EOF, not "drained": the caller sees it and stops.
            self.1 .0 = n > 0 && n < buf.len();
        }
        Poll::Ready(read)
    }
}

impl AsyncWrite for Tcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(Pin::new(&mut self.0).poll_flush(cx))?;
        // Tell the peer we are done; a socket it already reset is fine.
        match self.0.get_ref().shutdown(Shutdown::Write) {
            Err(e) if e.kind() != io::ErrorKind::NotConnected => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(())),
        }
    }
}
