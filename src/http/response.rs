//! Writing HTTP/1.1 responses: every one closes the connection, carries a
//! `Content-Length`, and is written through a [`WriteTimeout`] so a peer
//! that stops reading cannot hold it open.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_io::Timer;
use futures_lite::io::{AsyncWrite, AsyncWriteExt};

/// Writes a complete response with `Connection: close`, `Content-Length`,
/// the given extra headers and the body, then flushes.
///
/// With `head_only` (an answer to `HEAD`) the body is left out, but
/// `Content-Length` still gives its length.
pub async fn write_response<W: AsyncWrite + Unpin>(
    w: &mut W,
    status: u16,
    extra_headers: &[(&str, &str)],
    body: &[u8],
    head_only: bool,
) -> io::Result<()> {
    write_head(w, status, extra_headers, body.len() as u64).await?;
    if !head_only {
        w.write_all(body).await?;
    }
    w.flush().await
}

/// Shorthand: a `text/plain; charset=utf-8` response whose body is `message`
/// plus a newline.
pub async fn write_error<W: AsyncWrite + Unpin>(
    w: &mut W,
    status: u16,
    message: &str,
) -> io::Result<()> {
    send_error(w, status, message, false).await
}

/// [`write_error`] that leaves the body out when answering `HEAD`.
pub(super) async fn send_error<W: AsyncWrite + Unpin>(
    w: &mut W,
    status: u16,
    message: &str,
    head_only: bool,
) -> io::Result<()> {
    let body = format!("{message}\n");
    let headers = [("Content-Type", "text/plain; charset=utf-8")];
    write_response(w, status, &headers, body.as_bytes(), head_only).await
}

/// Writes the status line and headers, up to and including the blank line.
pub(super) async fn write_head<W: AsyncWrite + Unpin>(
    w: &mut W,
    status: u16,
    extra_headers: &[(&str, &str)],
    content_length: u64,
) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", status, reason_phrase(status));
    head.push_str(&format!("Content-Length: {content_length}\r\n"));
    head.push_str("Connection: close\r\n");
    for (name, value) in extra_headers {
        // A line break in a header would let its author inject headers.
        if has_line_break(name) || has_line_break(value) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "line break in a response header",
            ));
        }
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes()).await
}

/// Whether `s` contains a CR or LF.
fn has_line_break(s: &str) -> bool {
    s.contains(['\r', '\n'])
}

/// A writer whose every write (and flush) must make progress within
/// `limit`, else it fails with `TimedOut`: a peer that stops reading an HTTP
/// response is dropped after the same [`write_timeout`] as a WebSocket
/// frame, while one that reads slowly but steadily gets the whole body.
///
/// [`write_timeout`]: crate::Config::write_timeout
pub struct WriteTimeout<'a, W> {
    inner: &'a mut W,
    limit: Duration,
    /// Armed while a write is pending; dropped once it progresses.
    timer: Option<Timer>,
}

impl<'a, W: AsyncWrite + Unpin> WriteTimeout<'a, W> {
    /// Wraps `inner`; each write may stay pending for at most `limit`.
    pub fn new(inner: &'a mut W, limit: Duration) -> Self {
        WriteTimeout {
            inner,
            limit,
            timer: None,
        }
    }

    /// Maps a pending poll to `TimedOut` once `limit` has passed since the
    /// write started waiting; any progress disarms the timer.
    fn guard<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.timer = None;
            return poll;
        }
        let limit = self.limit;
        let timer = self.timer.get_or_insert_with(|| Timer::after(limit));
        match Pin::new(timer).poll(cx) {
            Poll::Ready(_) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer stopped reading the response",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Reads pass straight through (a request body is read under the
/// caller's own time bound, not the write timeout).
impl<W: futures_lite::io::AsyncRead + Unpin> futures_lite::io::AsyncRead for WriteTimeout<'_, W> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_read(cx, buf)
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<'_, W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut *self.inner).poll_write(cx, buf);
        self.guard(cx, poll)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut *self.inner).poll_flush(cx);
        self.guard(cx, poll)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut *self.inner).poll_close(cx);
        self.guard(cx, poll)
    }
}

/// Reason phrase for the status codes this crate sends; `Unknown` otherwise.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        #[cfg(feature = "forwarder")]
        202 => "Accepted",
        301 => "Moved Permanently",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        #[cfg(feature = "forwarder")]
        409 => "Conflict",
        #[cfg(feature = "forwarder")]
        411 => "Length Required",
        #[cfg(feature = "forwarder")]
        413 => "Content Too Large",
        421 => "Misdirected Request",
        426 => "Upgrade Required",
        #[cfg(feature = "forwarder")]
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_format() {
        let mut out = Vec::new();
        smol::block_on(write_error(&mut out, 404, "no such thing")).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(text.contains("Content-Length: 14\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\nno such thing\n"));

        let mut out = Vec::new();
        let injected = [("X", "a\r\nSet-Cookie: b")];
        assert!(smol::block_on(write_response(&mut out, 200, &injected, b"", false)).is_err());
    }
}
