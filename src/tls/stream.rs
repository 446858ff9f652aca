//! The server's TLS stream: rustls's unbuffered API behind `AsyncRead` +
//! `AsyncWrite`, over any futures-io stream.
//!
//! Why not futures-rustls here (the client keeps it): a buffered
//! `ServerConnection` keeps its 4 KiB record read buffer, and the capacity
//! of its queues, for the connection's whole life, and no setting releases
//! them — on an idle connection that was a third of wsloop's memory. With
//! the unbuffered API the buffers are ours, and each is freed the moment
//! it is empty, so an idle connection holds only rustls's keys and state:
//!
//! - `incoming`: TLS bytes read from the socket that rustls has not taken
//!   yet (a partial record, at most, between reads);
//! - `plain`: decrypted bytes that did not fit the reader's buffer (rustls
//!   hands out a whole record at a time);
//! - `outgoing`: records encrypted or encoded (handshake messages, alerts,
//!   close_notify) and not yet written to the socket.
//!
//! Reads and writes behave as futures-rustls's do: a peer that closes
//! without close_notify is an `UnexpectedEof` error, one that sends it is a
//! clean EOF; a write is accepted once encrypted, and goes out by `flush`
//! (or at once, when the socket takes it).

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use futures_rustls::rustls::server::UnbufferedServerConnection;
use futures_rustls::rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError,
};
use futures_rustls::rustls::{self, ServerConfig};

/// How much is read from the socket at a time: rustls's own read size (a
/// record is at most 16 KiB + 256 B; several small ones fit in this).
const READ_SIZE: usize = 4096;

/// Most encrypted bytes queued for the socket before a write waits for it
/// to take some: one full record and then some, so a slow reader holds a
/// bounded amount here and the writer feels its back-pressure.
const OUTGOING_LIMIT: usize = 32 * 1024;

/// Most plaintext encrypted per `poll_write` (the rest comes in the
/// caller's next call), so one call cannot queue more than about
/// [`OUTGOING_LIMIT`] above the limit.
const WRITE_CHUNK: usize = 16 * 1024;

/// Room for a record's header and AEAD overhead: 29 B in TLS 1.2 with
/// AES-GCM (5 header, 8 explicit nonce, 16 tag), the most of the suites
/// rustls offers (TLS 1.3: 5 + 1 content type + 16). Counted per 16 KiB
/// record when sizing `outgoing` for a write.
const RECORD_OVERHEAD: usize = 29;

/// The first guess at a handshake record's size (rustls says when it is
/// short: a certificate chain can be longer).
const FLIGHT_GUESS: usize = 2048;

/// The size of `len` plaintext bytes once encrypted into TLS records.
fn sealed_len(len: usize) -> usize {
    len + RECORD_OVERHEAD * (len / (16 * 1024) + 1)
}

/// A TLS server connection over `io` whose buffers are freed when empty
/// (see the module docs). Made by [`accept`].
pub struct TlsStream<IO> {
    io: IO,
    conn: UnbufferedServerConnection,
    /// TLS bytes from the peer that rustls has not taken yet.
    incoming: Vec<u8>,
    /// Decrypted bytes not yet read, from `plain_read` on.
    plain: Vec<u8>,
    plain_read: usize,
    /// Records for the peer not yet written, from `written` on.
    outgoing: Vec<u8>,
    written: usize,
    /// The peer sent close_notify: reads end with `Ok(0)`.
    peer_closed: bool,
    /// The socket reached EOF (with or without close_notify).
    io_eof: bool,
    /// Our close_notify is queued; it is sent once.
    close_queued: bool,
}

/// Where the connection is after rustls has taken every complete record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The handshake needs more from the peer.
    Handshaking,
    /// Application data may flow (the handshake is done).
    Traffic,
    /// Both sides sent close_notify: nothing more flows.
    Closed,
}

/// What to encrypt once rustls allows application data.
enum ToSend<'a> {
    Nothing,
    Data(&'a [u8]),
    CloseNotify,
}

/// The TLS handshake over `io` with `config`: done when rustls may send
/// application data (the caller bounds its time).
///
/// The stream comes boxed: rustls's state makes it over a kilobyte, and a
/// connection task's future keeps room for its stream in more than one
/// place (the task's argument, the connection that takes it over), each
/// only a pointer this way. Measured at 10,000 idle connections: 9.00 KiB
/// each unboxed, 6.66 KiB boxed.
pub async fn accept<IO>(io: IO, config: Arc<ServerConfig>) -> io::Result<Box<TlsStream<IO>>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let conn = UnbufferedServerConnection::new(config).map_err(invalid_data)?;
    let mut stream = Box::new(TlsStream {
        io,
        conn,
        incoming: Vec::new(),
        plain: Vec::new(),
        plain_read: 0,
        outgoing: Vec::new(),
        written: 0,
        peer_closed: false,
        io_eof: false,
        close_queued: false,
    });
    poll_fn(|cx| stream.poll_handshake(cx)).await?;
    Ok(stream)
}

impl<IO: AsyncRead + AsyncWrite + Unpin> TlsStream<IO> {
    /// Drives the handshake: rustls's flights out, the peer's in, until
    /// application data may flow.
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let phase = self
                .process(&mut [], ToSend::Nothing)
                .map(|(phase, _)| phase);
            // Each flight goes out before we wait for the peer's answer to
            // it (and an alert before the error is returned).
            let sent = self.poll_send_all(cx);
            let phase = phase?;
            ready!(sent)?;
            match phase {
                // Done when both directions are keyed, as futures-rustls
                // has it (a configuration with `send_half_rtt_data` may
                // write before the client's Finished has been checked).
                Phase::Traffic if !self.conn.is_handshaking() => return Poll::Ready(Ok(())),
                Phase::Closed => return Poll::Ready(Err(eof("TLS handshake ended by the peer"))),
                Phase::Traffic | Phase::Handshaking if self.peer_closed || self.io_eof => {
                    return Poll::Ready(Err(eof("TLS handshake eof")));
                }
                Phase::Traffic | Phase::Handshaking => {
                    ready!(self.poll_fill(cx))?;
                }
            }
        }
    }

    /// Lets rustls take every complete record in `incoming`: decrypted data
    /// is copied to `out` while it has room and to `plain` after that,
    /// handshake records and alerts are queued in `outgoing`. `send` is
    /// encrypted into `outgoing` once application data may flow. Returns
    /// the phase reached and how much of `out` was filled.
    fn process(&mut self, out: &mut [u8], mut send: ToSend<'_>) -> io::Result<(Phase, usize)> {
        let mut filled = 0;
        // What rustls is done with, from the front of `incoming`: removed
        // once at the end rather than after each record (several small
        // records often come in one read).
        let mut taken = 0;
        loop {
            let status = self.conn.process_tls_records(&mut self.incoming[taken..]);
            let mut discard = status.discard;
            let state = match status.state {
                Ok(state) => state,
                Err(err) => {
                    self.incoming.drain(..taken + discard);
                    self.queue_alert();
                    return Err(invalid_data(err));
                }
            };
            let reached = match state {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record.map_err(invalid_data)?;
                        discard += record.discard;
                        // The reader's buffer first; what does not fit
                        // waits in `plain` (only ever filled once `out`
                        // is full, so the order holds).
                        let direct = record.payload.len().min(out.len() - filled);
                        out[filled..filled + direct].copy_from_slice(&record.payload[..direct]);
                        filled += direct;
                        self.plain.extend_from_slice(&record.payload[direct..]);
                    }
                    None
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    append(&mut self.outgoing, FLIGHT_GUESS, |buf| {
                        encode.encode(buf).map_err(encode_error)
                    })?;
                    None
                }
                // Already in `outgoing`, whose bytes go out in order before
                // anything queued later: as good as sent, for rustls.
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    None
                }
                ConnectionState::BlockedHandshake => Some(Phase::Handshaking),
                ConnectionState::PeerClosed => {
                    self.peer_closed = true;
                    None
                }
                ConnectionState::Closed => Some(Phase::Closed),
                ConnectionState::WriteTraffic(mut traffic) => {
                    match std::mem::replace(&mut send, ToSend::Nothing) {
                        ToSend::Nothing => {}
                        ToSend::Data(data) => {
                            append(&mut self.outgoing, sealed_len(data.len()), |buf| {
                                traffic.encrypt(data, buf).map_err(encrypt_error)
                            })?
                        }
                        ToSend::CloseNotify => {
                            append(&mut self.outgoing, RECORD_OVERHEAD + 2, |buf| {
                                traffic.queue_close_notify(buf).map_err(encrypt_error)
                            })?
                        }
                    }
                    Some(Phase::Traffic)
                }
                // Early data (0-RTT) is replayable, and wsloop's own
                // configuration never accepts it; a caller's that does is
                // refused here rather than read without that caveat.
                ConnectionState::ReadEarlyData(_) => {
                    return Err(io::Error::other("TLS early data is not supported"));
                }
                other => return Err(io::Error::other(format!("unexpected TLS state {other:?}"))),
            };
            taken += discard;
            if let Some(phase) = reached {
                self.incoming.drain(..taken);
                if self.incoming.is_empty() {
                    // Nothing partial left: the buffer goes (see the header).
                    self.incoming = Vec::new();
                }
                return Ok((phase, filled));
            }
        }
    }

    /// After a rustls error: the alert it queued for the peer, if any, into
    /// `outgoing` (sent by whoever flushes next, best effort).
    fn queue_alert(&mut self) {
        let status = self.conn.process_tls_records(&mut []);
        if let Ok(ConnectionState::EncodeTlsData(mut encode)) = status.state {
            let _ = append(&mut self.outgoing, FLIGHT_GUESS, |buf| {
                encode.encode(buf).map_err(encode_error)
            });
        }
    }

    /// Reads more TLS bytes from the peer into `incoming`.
    ///
    /// Through a buffer on the stack, and only what came is copied to
    /// `incoming`: growing `incoming` by a whole read's size first cost an
    /// allocation of [`READ_SIZE`] and its release on every read, the ones
    /// that find nothing (most, for a peer that does not pipeline)
    /// included; now those allocate nothing, and a record allocates its
    /// own size.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut chunk = [0u8; READ_SIZE];
        let got = ready!(Pin::new(&mut self.io).poll_read(cx, &mut chunk))?;
        self.incoming.extend_from_slice(&chunk[..got]);
        // 0 is the socket's EOF: the caller decides what it means (a clean
        // end after close_notify, an error before it).
        self.io_eof = got == 0;
        Poll::Ready(Ok(()))
    }

    /// Writes `outgoing` to the socket until it is empty, then frees it.
    fn poll_send_all(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.outgoing[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.outgoing = Vec::new();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// Bytes queued for the socket and not yet written.
    fn unsent(&self) -> usize {
        self.outgoing.len() - self.written
    }

    /// Copies from `plain` into `buf`, freeing it once it is all read.
    fn read_plain(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.plain.len() - self.plain_read);
        buf[..n].copy_from_slice(&self.plain[self.plain_read..self.plain_read + n]);
        self.plain_read += n;
        if self.plain_read == self.plain.len() {
            self.plain = Vec::new();
            self.plain_read = 0;
        }
        n
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            if this.plain_read < this.plain.len() {
                return Poll::Ready(Ok(this.read_plain(buf)));
            }
            let (phase, n) = this.process(buf, ToSend::Nothing)?;
            if this.unsent() > 0 {
                // What rustls answers on its own (a KeyUpdate, an alert)
                // goes out now if the socket takes it, else with the next
                // write or flush.
                if let Poll::Ready(Err(err)) = this.poll_send_all(cx) {
                    return Poll::Ready(Err(err));
                }
            }
            if n > 0 {
                return Poll::Ready(Ok(n));
            }
            if this.peer_closed || phase == Phase::Closed {
                return Poll::Ready(Ok(0));
            }
            if this.io_eof {
                return Poll::Ready(Err(eof(
                    "peer closed connection without sending TLS close_notify",
                )));
            }
            ready!(this.poll_fill(cx))?;
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // Back-pressure: a peer that does not read makes the writer wait
        // rather than this buffer grow.
        while this.unsent() >= OUTGOING_LIMIT {
            let n = ready!(Pin::new(&mut this.io).poll_write(cx, &this.outgoing[this.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            this.written += n;
        }
        let data = &buf[..buf.len().min(WRITE_CHUNK)];
        match this.process(&mut [], ToSend::Data(data))? {
            (Phase::Traffic, _) => {}
            _ => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
        // Out at once if the socket takes it; if not, it waits for flush.
        if let Poll::Ready(Err(err)) = this.poll_send_all(cx) {
            return Poll::Ready(Err(err));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_all(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_queued {
            this.close_queued = true;
            // A connection already broken has no close_notify to send;
            // the socket is still shut down below.
            let _ = this.process(&mut [], ToSend::CloseNotify);
        }
        ready!(this.poll_send_all(cx))?;
        match ready!(Pin::new(&mut this.io).poll_close(cx)) {
            // Shutting down a socket the peer already dropped is fine.
            Err(err) if err.kind() != io::ErrorKind::NotConnected => Poll::Ready(Err(err)),
            _ => Poll::Ready(Ok(())),
        }
    }
}

/// Appends what `write` puts into a buffer to `out`, growing the buffer to
/// the size rustls asks for when the first guess is short. `write` returns
/// `Err(Ok(size))` for "too small", `Err(Err(e))` for a real error.
fn append(
    out: &mut Vec<u8>,
    mut room: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, Result<InsufficientSizeError, io::Error>>,
) -> io::Result<()> {
    let start = out.len();
    loop {
        out.resize(start + room, 0);
        match write(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(Ok(InsufficientSizeError { required_size })) if required_size > room => {
                room = required_size;
            }
            Err(Ok(_)) => {
                out.truncate(start);
                return Err(io::Error::other("rustls asked for a buffer it already had"));
            }
            Err(Err(err)) => {
                out.truncate(start);
                return Err(err);
            }
        }
    }
}

/// `EncodeTlsData`'s errors in [`append`]'s terms.
fn encode_error(err: EncodeError) -> Result<InsufficientSizeError, io::Error> {
    match err {
        EncodeError::InsufficientSize(size) => Ok(size),
        other => Err(io::Error::other(other.to_string())),
    }
}

/// `WriteTraffic`'s errors in [`append`]'s terms.
fn encrypt_error(err: EncryptError) -> Result<InsufficientSizeError, io::Error> {
    match err {
        EncryptError::InsufficientSize(size) => Ok(size),
        other => Err(io::Error::other(other.to_string())),
    }
}

/// A rustls verdict as the I/O error futures-rustls would give for it.
fn invalid_data(err: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err)
}

/// The peer's end of the stream where more was due.
fn eof(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, why)
}
