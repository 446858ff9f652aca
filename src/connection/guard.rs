//! The read guard: a thin stream layer between the socket and tungstenite.
//!
//! tungstenite keeps reading inside one poll while the socket has data, and
//! frames that complete no message (continuations, pongs) never reach the
//! connection loop. So the limits that must hold whatever the peer sends sit
//! here, under tungstenite, on the bytes themselves:
//!
//! - a per-poll read budget: after [`READ_BUDGET_BYTES`] delivered without the
//!   socket once saying "not yet", the next read says "not yet" itself (and
//!   wakes the task), so tungstenite returns and the task yields;
//! - a frame-*header* tracker: it parses only the 2–14 header bytes of each
//!   frame and skips payloads by their length (no second payload parse), and
//!   counts every frame (data, continuation, ping, pong, close), the
//!   fragments of the message in progress and when that message began;
//! - message (data, ping, pong), frame and byte rates per second, and the
//!   fragment cap. Past one, reads fail with an [`io::Error`] carrying a
//!   [`Violation`], which the loop answers with Close 1008;
//! - the one header check tungstenite lacks: a 64-bit length with its top
//!   bit set is a protocol error (RFC 6455 §5.2), answered with 1002, not
//!   tungstenite's 1009 "too big";
//! - the status code of the peer's Close frame as sent: tungstenite replaces
//!   a code RFC 6455 §7.4 does not allow with its own 1002 before the loop
//!   sees the frame, so only the bytes still say what the peer sent.
//!
//! It also knows when the bytes delivered end exactly at a message boundary
//! and whether a large frame went through either way, which is what lets the
//! loop release tungstenite's grown buffers (see `Connection`).

use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_lite::{AsyncRead, AsyncWrite};

use crate::config::{READ_BUDGET_BYTES, RELEASE_THRESHOLD_BYTES};
use crate::Config;

/// A limit the peer broke; the loop closes it with 1008 and this reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Violation {
    /// More messages, pings and pongs per second than
    /// [`Config::max_messages_per_second`].
    MessageRate,
    /// More frames per second than [`Config::max_frames_per_second`].
    FrameRate,
    /// More bytes per second than [`Config::max_bytes_per_second`].
    ByteRate,
    /// More fragments in one message than [`Config::max_fragments`].
    Fragments,
    /// A 64-bit payload length with its most significant bit set, which
    /// RFC 6455 §5.2 forbids: a protocol error, not a policy one.
    FrameLength,
}

impl Violation {
    /// The reason sent in the Close frame and kept in [`crate::Error::Policy`].
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Violation::MessageRate => "message rate limit exceeded",
            Violation::FrameRate => "frame rate limit exceeded",
            Violation::ByteRate => "byte rate limit exceeded",
            Violation::Fragments => "too many fragments in one message",
            Violation::FrameLength => "frame length has its top bit set",
        }
    }

    /// The close code the loop answers with: 1002 for the protocol error,
    /// 1008 for the limits.
    pub(crate) fn close_code(self) -> u16 {
        match self {
            Violation::FrameLength => crate::connection::CLOSE_PROTOCOL_ERROR,
            _ => crate::connection::CLOSE_POLICY,
        }
    }

    /// The violation an I/O error from a [`Guarded`] read carries, if any.
    pub(crate) fn of(err: &io::Error) -> Option<Violation> {
        err.get_ref()?.downcast_ref::<Violation>().copied()
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for Violation {}

/// Milliseconds since the first call, wrapping every 49 days: times are
/// kept in 4 bytes rather than an `Instant`'s 16, since every connection
/// carries them. Differences are taken with `wrapping_sub`, which is exact
/// for spans under 49 days.
fn now_ms() -> u32 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    epoch.elapsed().as_millis() as u32
}

/// Message, frame and byte counts per window of at least one second. The
/// clock is read only when a count passes its limit, so the hot path costs
/// three adds and three compares: a window lasts from its start until a
/// count first passes its limit, and only a peer that passed it in under a
/// second is refused. (A window over 49 days old is judged against a
/// wrapped start: its one crossing is wrongly refused if it falls in a
/// one-second slot of the 49.7-day cycle, a chance of one in 4 million.)
struct Window {
    start_ms: u32,
    counts: Counts,
}

/// What the peer sent, counted: messages (data messages, pings and pongs:
/// what the application or tungstenite acts on), frames of any kind, bytes.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
struct Counts {
    messages: u32,
    frames: u32,
    bytes: u32,
}

impl Counts {
    fn saturating_add(self, other: Counts) -> Counts {
        Counts {
            messages: self.messages.saturating_add(other.messages),
            frames: self.frames.saturating_add(other.frames),
            bytes: self.bytes.saturating_add(other.bytes),
        }
    }
}

impl Window {
    fn new() -> Self {
        Window {
            start_ms: now_ms(),
            counts: Counts::default(),
        }
    }

    /// Adds what one read delivered; the limit it broke, if any.
    fn add(&mut self, counts: Counts, limits: &Limits) -> Option<Violation> {
        self.counts = self.counts.saturating_add(counts);
        limits.broken(self.counts)?;
        let now = now_ms();
        if now.wrapping_sub(self.start_ms) < 1000 {
            return limits.broken(self.counts);
        }
        // A new window, starting with what arrived just now.
        self.start_ms = now;
        self.counts = counts;
        limits.broken(counts)
    }
}

/// Where the bytes delivered so far end, frame-wise.
#[derive(Default)]
struct Tracker {
    /// The first bytes of the header being parsed: the two fixed ones and
    /// the extended length (the mask that may follow is only counted).
    header: [u8; 10],
    /// How many header bytes have arrived.
    have: u8,
    /// Bytes of a Close frame's status code still to come (2, 1 or 0).
    close_left: u8,
    /// The status code of the peer's first Close frame, unmasked. These
    /// three fields fit in the struct's padding.
    close_code: u16,
    /// A Close frame went through.
    close_seen: bool,
    /// Payload bytes of the current frame still to skip.
    payload_left: u64,
    /// Fragments of the data message in progress (0: none in progress).
    fragments: u32,
    /// When the fragmented message in progress began ([`now_ms`]).
    message_started_ms: u32,
}

/// What one chunk of bytes contained.
#[derive(Default)]
struct Seen {
    counts: Counts,
    /// The largest frame payload whose header was in the chunk.
    largest: u64,
    too_many_fragments: bool,
    /// A 64-bit length with its top bit set ([`Violation::FrameLength`]).
    bad_length: bool,
}

impl Tracker {
    /// Header length once its first two bytes are known.
    fn header_len(&self) -> u8 {
        let b1 = self.header[1];
        let extended = match b1 & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
        2 + extended + mask
    }

    /// Follows `bytes` through the frame structure.
    fn feed(&mut self, mut bytes: &[u8], max_fragments: u32) -> Seen {
        let mut seen = Seen::default();
        while !bytes.is_empty() {
            if self.close_left > 0 {
                // The two status-code bytes of a Close frame are the only
                // payload bytes read.
                self.close_byte(bytes[0]);
                self.payload_left -= 1;
                bytes = &bytes[1..];
                continue;
            }
            if self.payload_left > 0 {
                // Payloads are skipped by length, never read.
                let skip = self.payload_left.min(bytes.len() as u64);
                self.payload_left -= skip;
                bytes = &bytes[skip as usize..];
                continue;
            }
            if let Some(slot) = self.header.get_mut(usize::from(self.have)) {
                *slot = bytes[0];
            }
            self.have += 1;
            bytes = &bytes[1..];
            if self.have >= 2 && self.have == self.header_len() {
                self.have = 0;
                self.on_header(&mut seen, max_fragments);
            }
        }
        seen
    }

    /// One byte of a Close frame's status code (big-endian, masked by the
    /// client). The mask is the header's last four bytes; a Close with an
    /// 8-byte length (which tungstenite refuses anyway) has it past the
    /// kept ten, and is read unmasked.
    fn close_byte(&mut self, byte: u8) {
        let mask = if self.header[1] & 0x80 != 0 {
            // A masked header is at least 6 bytes: the mask's 4 and 2 more.
            let at = usize::from(self.header_len()) - 4 + usize::from(2 - self.close_left);
            self.header.get(at).copied().unwrap_or(0)
        } else {
            0
        };
        self.close_code = self.close_code << 8 | u16::from(byte ^ mask);
        self.close_left -= 1;
    }

    /// One complete frame header.
    fn on_header(&mut self, seen: &mut Seen, max_fragments: u32) {
        let len = match self.header[1] & 0x7F {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => {
                let mut ext = [0u8; 8];
                ext.copy_from_slice(&self.header[2..10]);
                seen.bad_length |= ext[0] & 0x80 != 0;
                u64::from_be_bytes(ext)
            }
            n => u64::from(n),
        };
        self.payload_left = len;
        seen.counts.frames += 1;
        seen.largest = seen.largest.max(len);
        let fin = self.header[0] & 0x80 != 0;
        match self.header[0] & 0x0F {
            // Text or binary: a message begins (and ends, with FIN).
            1 | 2 if !fin => {
                self.fragments = 1;
                self.message_started_ms = now_ms();
            }
            1 | 2 => {
                seen.counts.messages += 1;
                self.end_message();
            }
            // Continuation: one more fragment of the message in progress.
            0 => {
                self.fragments = self.fragments.saturating_add(1);
                if max_fragments != 0 && self.fragments > max_fragments {
                    seen.too_many_fragments = true;
                }
                if fin {
                    seen.counts.messages += 1;
                    self.end_message();
                }
            }
            // Pings and pongs count as messages: a flood of them costs as
            // much as a message flood.
            9 | 10 => seen.counts.messages += 1,
            // The first Close: its status code is read (see `close_byte`);
            // tungstenite acts on the first one only, and so do we.
            8 if !self.close_seen => {
                self.close_seen = true;
                self.close_left = if len >= 2 { 2 } else { 0 };
            }
            // Later Closes (and opcodes tungstenite will refuse) leave the
            // message in progress alone.
            _ => {}
        }
    }

    fn end_message(&mut self) {
        self.fragments = 0;
    }

    /// The bytes so far end a frame, and no fragmented message is open.
    fn at_message_boundary(&self) -> bool {
        self.have == 0 && self.payload_left == 0 && self.fragments == 0
    }
}

/// The limits a [`Guarded`] stream enforces, from [`Config`] (0 = none).
#[derive(Clone, Copy)]
pub(crate) struct Limits {
    messages_per_second: u32,
    frames_per_second: u32,
    /// Saturated to `u32::MAX`: past 4 GiB/s the limit is moot anyway.
    bytes_per_second: u32,
    max_fragments: u32,
    /// [`Config::message_timeout`] in milliseconds (saturated: 49 days).
    message_timeout_ms: u32,
}

impl Limits {
    /// The rate limit these counts break, if any.
    fn broken(&self, counts: Counts) -> Option<Violation> {
        let over = |count: u32, limit: u32| limit != 0 && count > limit;
        if over(counts.messages, self.messages_per_second) {
            Some(Violation::MessageRate)
        } else if over(counts.frames, self.frames_per_second) {
            Some(Violation::FrameRate)
        } else if over(counts.bytes, self.bytes_per_second) {
            Some(Violation::ByteRate)
        } else {
            None
        }
    }
}

impl From<&Config> for Limits {
    fn from(config: &Config) -> Self {
        Limits {
            messages_per_second: config.max_messages_per_second,
            frames_per_second: config.max_frames_per_second,
            bytes_per_second: u32::try_from(config.max_bytes_per_second).unwrap_or(u32::MAX),
            max_fragments: config.max_fragments,
            message_timeout_ms: u32::try_from(config.message_timeout.as_millis())
                .unwrap_or(u32::MAX),
        }
    }
}

/// A stream whose reads are budgeted, followed frame by frame and limited;
/// writes pass through (only their size is noted).
pub(crate) struct Guarded<S> {
    inner: S,
    limits: Limits,
    tracker: Tracker,
    window: Window,
    /// Bytes delivered since the inner stream last returned `Pending`.
    run: u32,
    /// The budget ran out on the last read: the caller should yield.
    budget_spent: bool,
    /// The last read reached the inner stream and it had nothing: whoever
    /// reads from us has consumed everything delivered.
    drained: bool,
    /// A frame or a write larger than [`RELEASE_THRESHOLD_BYTES`] went
    /// through since the last [`Guarded::buffers_released`].
    grown: bool,
    /// Once broken, a limit stays broken: every later read fails too.
    violation: Option<Violation>,
    /// Bytes read and written since the loop's last [`Guarded::new_batch`].
    moved: u32,
}

impl<S> Guarded<S> {
    /// Guards `inner`. `leftover` is what the handshake read past its end,
    /// which tungstenite gets straight from the caller: the tracker follows
    /// it first, or it would start in the middle of a frame.
    pub(crate) fn new(inner: S, limits: Limits, leftover: &[u8]) -> Self {
        let mut guarded = Guarded {
            inner,
            limits,
            tracker: Tracker::default(),
            window: Window::new(),
            run: 0,
            budget_spent: false,
            drained: false,
            grown: false,
            violation: None,
            moved: 0,
        };
        guarded.violation = guarded.account(leftover);
        guarded
    }

    /// The stream underneath, for the final shutdown and discard, which
    /// must not be refused by a limit the peer already broke.
    pub(crate) fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Whether the last read stopped on the budget (and clears it).
    pub(crate) fn take_budget_spent(&mut self) -> bool {
        std::mem::take(&mut self.budget_spent)
    }

    /// Bytes read and written since the last [`new_batch`](Self::new_batch).
    pub(crate) fn moved(&self) -> usize {
        self.moved as usize
    }

    /// The loop starts a new batch.
    pub(crate) fn new_batch(&mut self) {
        self.moved = 0;
    }

    /// Whether a fragmented message has been arriving for longer than
    /// [`Config::message_timeout`].
    pub(crate) fn message_stalled(&self) -> bool {
        let age = now_ms().wrapping_sub(self.tracker.message_started_ms);
        self.tracker.fragments != 0 && age >= self.limits.message_timeout_ms
    }

    /// Everything delivered has been consumed and ends at a message
    /// boundary, after a large frame went through: a reader built afresh on
    /// this stream would lose nothing, and would shed the grown buffers.
    pub(crate) fn worth_releasing(&self) -> bool {
        self.grown && self.drained && self.tracker.at_message_boundary()
    }

    /// The status code of the peer's Close frame as it sent it, before
    /// tungstenite replaced an invalid one. Meaningful once tungstenite has
    /// delivered a Close with a code (its bytes came through here first).
    pub(crate) fn peer_close_code(&self) -> u16 {
        self.tracker.close_code
    }

    /// The reader's buffers were rebuilt small.
    pub(crate) fn buffers_released(&mut self) {
        self.grown = false;
    }

    /// Follows `bytes` just delivered; the limit they break, if any.
    fn account(&mut self, bytes: &[u8]) -> Option<Violation> {
        let seen = self.tracker.feed(bytes, self.limits.max_fragments);
        if seen.largest > RELEASE_THRESHOLD_BYTES as u64 {
            self.grown = true;
        }
        if seen.bad_length {
            return Some(Violation::FrameLength);
        }
        if seen.too_many_fragments {
            return Some(Violation::Fragments);
        }
        // A read is at most a read buffer: it fits in a u32.
        let counts = Counts {
            bytes: u32::try_from(bytes.len()).unwrap_or(u32::MAX),
            ..seen.counts
        };
        self.window.add(counts, &self.limits)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Some(violation) = this.violation {
            return Poll::Ready(Err(io::Error::other(violation)));
        }
        if this.run as usize >= READ_BUDGET_BYTES {
            // Enough for one turn: say "not yet" once, and ask to be polled
            // again at once, so the task yields to the others in between.
            this.run = 0;
            this.budget_spent = true;
            this.drained = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending => {
                this.run = 0;
                this.budget_spent = false;
                this.drained = true;
                Poll::Pending
            }
            Poll::Ready(Ok(n)) => {
                let len = u32::try_from(n).unwrap_or(u32::MAX);
                this.run = this.run.saturating_add(len);
                this.moved = this.moved.saturating_add(len);
                this.drained = false;
                match this.account(&buf[..n]) {
                    Some(violation) => {
                        this.violation = Some(violation);
                        Poll::Ready(Err(io::Error::other(violation)))
                    }
                    None => Poll::Ready(Ok(n)),
                }
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // tungstenite writes its whole buffer at once: a large write means
        // its write buffer grew that large.
        if buf.len() > RELEASE_THRESHOLD_BYTES {
            self.grown = true;
        }
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            let len = u32::try_from(n).unwrap_or(u32::MAX);
            self.moved = self.moved.saturating_add(len);
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame header plus `len` payload bytes (all zero).
    fn frame(first: u8, len: usize) -> Vec<u8> {
        let mut out = vec![first];
        match len {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&[1, 2, 3, 4]);
        out.resize(out.len() + len, 0);
        out
    }

    #[test]
    fn reads_the_first_close_code_unmasked_across_reads() {
        // Close 999, masked with [1, 2, 3, 4], fed a byte at a time, then a
        // second Close (1000) that must not overwrite it.
        let mut stream = vec![0x88, 0x80 | 2, 1, 2, 3, 4, 0x03 ^ 1, 0xE7 ^ 2];
        stream.extend_from_slice(&[0x88, 0x80 | 2, 0, 0, 0, 0, 0x03, 0xE8]);
        let mut tracker = Tracker::default();
        for byte in &stream {
            tracker.feed(std::slice::from_ref(byte), 0);
        }
        assert_eq!(tracker.close_code, 999);
        assert!(tracker.at_message_boundary());
        // A server's Close is unmasked (what the client's guard reads).
        let mut tracker = Tracker::default();
        tracker.feed(&[0x88, 2, 0x03, 0xE8], 0);
        assert_eq!(tracker.close_code, 1000);
    }

    #[test]
    fn a_top_bit_length_is_seen() {
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&(1u64 << 63).to_be_bytes());
        header.extend_from_slice(&[0; 4]);
        assert!(Tracker::default().feed(&header, 0).bad_length);
        assert!(!Tracker::default().feed(&frame(0x82, 70_000), 0).bad_length);
    }

    #[test]
    fn tracks_frames_and_boundaries_byte_by_byte() {
        let mut stream = frame(0x01, 3); // text, FIN=0
        stream.extend(frame(0x89, 0)); // ping inside the message
        stream.extend(frame(0x00, 70_000)); // continuation, 8-byte length
        stream.extend(frame(0x80, 200)); // final continuation, 2-byte length
        let mut tracker = Tracker::default();
        let mut counts = Counts::default();
        let mut boundaries = Vec::new();
        for (i, byte) in stream.iter().enumerate() {
            counts = counts.saturating_add(tracker.feed(std::slice::from_ref(byte), 0).counts);
            if tracker.at_message_boundary() {
                boundaries.push(i + 1);
            }
        }
        // Four frames: one message and one ping.
        assert_eq!((counts.frames, counts.messages), (4, 2));
        assert_eq!(boundaries, vec![stream.len()]);
        assert_eq!(tracker.fragments, 0);
    }

    #[test]
    fn caps_fragments() {
        let mut stream = frame(0x01, 1);
        for _ in 0..3 {
            stream.extend(frame(0x00, 0));
        }
        assert!(!Tracker::default().feed(&stream, 4).too_many_fragments);
        assert!(Tracker::default().feed(&stream, 3).too_many_fragments);
    }

    #[test]
    fn window_refuses_only_within_a_second() {
        let limits = Limits {
            messages_per_second: 5,
            frames_per_second: 10,
            bytes_per_second: 1000,
            max_fragments: 0,
            message_timeout_ms: 0,
        };
        let frames = |frames, messages, bytes| Counts {
            messages,
            frames,
            bytes,
        };
        let mut window = Window::new();
        assert_eq!(window.add(frames(10, 5, 100), &limits), None);
        assert_eq!(
            window.add(frames(1, 0, 0), &limits),
            Some(Violation::FrameRate)
        );
        window.start_ms = window.start_ms.wrapping_sub(2000);
        assert_eq!(window.add(frames(1, 0, 0), &limits), None);
        assert_eq!(window.counts, frames(1, 0, 0));
        assert_eq!(
            window.add(frames(0, 0, 1001), &limits),
            Some(Violation::ByteRate)
        );
        let mut window = Window::new();
        assert_eq!(
            window.add(frames(6, 6, 6), &limits),
            Some(Violation::MessageRate)
        );
    }
}
