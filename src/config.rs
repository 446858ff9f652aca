//! Tunables, each a named constant with the reason for its value, gathered in
//! one [`Config`] that the server, the client and the connection loop share.

use std::time::Duration;

use async_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::time::human;
use crate::Error;

/// How often the loop pings a quiet peer. Long enough that idle connections
/// cost next to nothing, short enough to keep NAT and proxy mappings alive.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);

/// The shortest heartbeat accepted; below a second pings become traffic.
pub const MIN_HEARTBEAT: Duration = Duration::from_secs(1);

/// A peer that sent nothing (no frame, no pong) for this many heartbeats is
/// considered dead and dropped. Two gives one lost ping of slack.
pub const IDLE_HEARTBEATS: u32 = 2;

/// Largest inbound message (and frame). Anything larger is refused with
/// close code 1009 before it is buffered whole.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1 << 20;

/// How many pushed messages may wait for one slow peer before
/// [`Peer::send`](crate::Peer::send) reports the queue full. The queue grows
/// lazily, so an idle connection pays nothing for this bound.
pub const DEFAULT_OUTBOUND_CAPACITY: usize = 64;

/// Time a new TCP connection gets to send its HTTP request head (and a
/// client to receive the 101). Peers that open TCP and say nothing go away.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// tungstenite's read buffer per connection. It is allocated up front and
/// zero-filled on every read, so idle memory moves 1:1 with it: 512 bytes
/// instead of tungstenite's 128 KiB default. That still holds a batch of
/// eight pipelined requests (ours are ~60 bytes). The cost: tungstenite
/// reads at most this much per syscall, so a large message takes many
/// reads; raise it if your messages are large (the echo example uses
/// 64 KiB). Measured: 4 KiB -> 512 B saved 3.5 KiB per idle connection,
/// with no change in CPU per round trip for the seed protocol.
pub const DEFAULT_READ_BUFFER_SIZE: usize = 512;

/// How long one frame may take to go out. A peer that stops reading fills
/// its socket buffers; past this it is dropped rather than allowed to stall
/// its connection task (gorilla/websocket's `writeWait`).
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`Peer::request`](crate::Peer::request) waits for its reply.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Most data messages (pings and pongs included) one connection may send
/// per second before it is closed with 1008: far above any interactive use,
/// low enough that one flooding peer cannot monopolise a small server.
/// 0 turns the check off.
pub const DEFAULT_MAX_MESSAGES_PER_SECOND: u32 = 10_000;

/// Most frames of any kind (data, continuation, ping, pong) one connection
/// may send per second before it is closed with 1008. Every frame costs a
/// parse however small it is, and frames that complete no message are
/// invisible to the message limit: endless empty continuations or pongs
/// would otherwise spin a core. Five times the message limit leaves room
/// for fragmented messages and control frames. 0 turns the check off.
pub const DEFAULT_MAX_FRAMES_PER_SECOND: u32 = 50_000;

/// Most bytes one connection may send per second before it is closed with
/// 1008: 64 messages of the largest default size, far above interactive use,
/// while a peer streaming 100 MB/s of anything is dropped within a second.
/// 0 turns the check off.
pub const DEFAULT_MAX_BYTES_PER_SECOND: u64 = 64 << 20;

/// Most fragments one message may arrive in before the connection is closed
/// with 1008. Fragments can be empty, so the size limit alone never bounds
/// them; 1,024 carries the largest default message in 1 KiB fragments
/// (Go's gorilla/websocket fragments at 4 KiB). 0 turns the check off.
pub const DEFAULT_MAX_FRAGMENTS: u32 = 1024;

/// Longest a fragmented message may stay unfinished before the connection
/// is closed with 1008, even while the peer answers pings: a partial message
/// holds its buffers, and pings alone would keep it past the idle timeout.
/// Checked at each heartbeat, so it takes up to one heartbeat longer.
pub const DEFAULT_MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes one connection reads in one turn of the executor (since the socket
/// last had nothing to give) before it yields to the other tasks. At
/// loopback speed 32 KiB of the smallest frames parse in well under a
/// millisecond, so a flooding peer cannot delay the others' replies by
/// more; a 1 MiB message takes 32 turns, which costs nothing measurable.
pub const READ_BUDGET_BYTES: usize = 32 * 1024;

/// After a frame larger than this went through (either way), the connection
/// rebuilds tungstenite's buffers small the next time it is idle at a
/// message boundary: tungstenite keeps the capacity of the largest frame it
/// read and wrote, forever. Above the write batch, so a pipelining peer's
/// ordinary batches never trigger a rebuild.
pub const RELEASE_THRESHOLD_BYTES: usize = 64 * 1024;

/// Replies buffered past this many bytes are written out even before the
/// loop flushes; it bounds the write buffer a pipelining peer can build up.
pub const WRITE_BATCH_BYTES: usize = 16 * 1024;

/// Largest HTTP request head the server reads by default (431 past it):
/// 8 KiB, as nginx's and Go's usual limits, far above what a browser's
/// upgrade with a few cookies sends, small enough that a slow-loris head
/// cannot hold much memory per connection.
pub const MAX_REQUEST_HEAD_SIZE: usize = 8 * 1024;

/// Longest interval or timeout wsloop acts on: longer settings (up to
/// `Duration::MAX`) are cut to this. A century is "never" for a
/// connection, and `Instant::now() + MAX_TIMEOUT` cannot overflow, which
/// `Instant::now() + Duration::MAX` would (a panic in the loop and in
/// every request).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// `duration`, at most [`MAX_TIMEOUT`].
pub(crate) fn saturate(duration: Duration) -> Duration {
    duration.min(MAX_TIMEOUT)
}

/// How long a closing side waits for the peer's Close reply (and the final
/// TCP shutdown) before dropping the socket anyway.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Settings for one connection loop and for the server/client around it.
///
/// Build it from [`Config::default`] with the `with_` setters (the struct
/// is `#[non_exhaustive]`, so new options are not breaking changes):
///
/// ```
/// use std::time::Duration;
/// let config = wsloop::Config::default().with_heartbeat(Duration::from_secs(5));
/// assert_eq!(config.idle_timeout(), Duration::from_secs(10));
/// ```
///
/// Memory per connection with these defaults: the read buffer
/// ([`DEFAULT_READ_BUFFER_SIZE`], allocated at accept), tungstenite's write
/// buffer (empty until the first send, then as large as the largest frame
/// sent, until the connection next idles after a frame over
/// [`RELEASE_THRESHOLD_BYTES`]), the connection future itself (a few hundred bytes) and one shared
/// [`Peer`](crate::Peer) record. The outbound queue allocates only while
/// messages wait in it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Ping interval ([`DEFAULT_HEARTBEAT`], at least [`MIN_HEARTBEAT`]).
    pub heartbeat: Duration,
    /// Drop a peer silent for this long; `None` means
    /// [`IDLE_HEARTBEATS`] × `heartbeat`.
    pub idle_timeout: Option<Duration>,
    /// Largest inbound message in bytes ([`DEFAULT_MAX_MESSAGE_SIZE`]).
    pub max_message_size: usize,
    /// Pushed messages that may queue per peer ([`DEFAULT_OUTBOUND_CAPACITY`]).
    pub outbound_capacity: usize,
    /// Deadline for the HTTP/WebSocket handshake ([`DEFAULT_HANDSHAKE_TIMEOUT`]).
    pub handshake_timeout: Duration,
    /// tungstenite read buffer in bytes ([`DEFAULT_READ_BUFFER_SIZE`]).
    pub read_buffer_size: usize,
    /// How long a request waits for its reply ([`DEFAULT_REQUEST_TIMEOUT`]).
    pub request_timeout: Duration,
    /// How long one frame may take to be written ([`DEFAULT_WRITE_TIMEOUT`]).
    pub write_timeout: Duration,
    /// Inbound data messages, pings and pongs allowed per second
    /// ([`DEFAULT_MAX_MESSAGES_PER_SECOND`]; 0 = unlimited).
    pub max_messages_per_second: u32,
    /// Inbound frames of any kind allowed per second
    /// ([`DEFAULT_MAX_FRAMES_PER_SECOND`]; 0 = unlimited).
    pub max_frames_per_second: u32,
    /// Inbound bytes allowed per second ([`DEFAULT_MAX_BYTES_PER_SECOND`];
    /// 0 = unlimited).
    pub max_bytes_per_second: u64,
    /// Fragments allowed in one inbound message ([`DEFAULT_MAX_FRAGMENTS`];
    /// 0 = unlimited).
    pub max_fragments: u32,
    /// Longest a fragmented inbound message may stay unfinished
    /// ([`DEFAULT_MESSAGE_TIMEOUT`]).
    pub message_timeout: Duration,
    /// Largest HTTP request head the server reads; a longer one gets 431
    /// ([`MAX_REQUEST_HEAD_SIZE`]).
    pub max_request_head_size: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            heartbeat: DEFAULT_HEARTBEAT,
            idle_timeout: None,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            outbound_capacity: DEFAULT_OUTBOUND_CAPACITY,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            read_buffer_size: DEFAULT_READ_BUFFER_SIZE,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            max_messages_per_second: DEFAULT_MAX_MESSAGES_PER_SECOND,
            max_frames_per_second: DEFAULT_MAX_FRAMES_PER_SECOND,
            max_bytes_per_second: DEFAULT_MAX_BYTES_PER_SECOND,
            max_fragments: DEFAULT_MAX_FRAGMENTS,
            message_timeout: DEFAULT_MESSAGE_TIMEOUT,
            max_request_head_size: MAX_REQUEST_HEAD_SIZE,
        }
    }
}

impl Config {
    /// The effective idle timeout (explicit, or [`IDLE_HEARTBEATS`] ×
    /// heartbeat), at most [`MAX_TIMEOUT`]:
    ///
    /// ```
    /// use std::time::Duration;
    /// let config = wsloop::Config::default().with_heartbeat(Duration::MAX);
    /// assert_eq!(config.idle_timeout(), wsloop::MAX_TIMEOUT);
    /// ```
    pub fn idle_timeout(&self) -> Duration {
        let derived = || self.heartbeat.saturating_mul(IDLE_HEARTBEATS);
        saturate(self.idle_timeout.unwrap_or_else(derived))
    }

    /// Checks the values make sense together.
    pub fn validate(&self) -> Result<(), Error> {
        if self.heartbeat < MIN_HEARTBEAT {
            return Err(Error::Config(format!(
                "heartbeat {} is below the minimum of {}",
                human(self.heartbeat),
                human(MIN_HEARTBEAT)
            )));
        }
        if self.idle_timeout() < saturate(self.heartbeat) {
            return Err(Error::Config(format!(
                "idle timeout {} is shorter than the heartbeat {}",
                human(self.idle_timeout()),
                human(self.heartbeat)
            )));
        }
        if self.max_message_size == 0
            || self.outbound_capacity == 0
            || self.read_buffer_size == 0
            || self.max_request_head_size == 0
        {
            return Err(Error::Config(
                "max message size, outbound capacity, read buffer and request head size must be > 0"
                    .into(),
            ));
        }
        if self.message_timeout.is_zero() {
            return Err(Error::Config("message timeout must be > 0".into()));
        }
        if self.max_bytes_per_second != 0
            && self.max_bytes_per_second < self.max_message_size as u64
        {
            // Otherwise the largest allowed message could never arrive in
            // under a second without breaking the byte limit.
            return Err(Error::Config(format!(
                "max bytes per second {} is below the max message size {}",
                self.max_bytes_per_second, self.max_message_size
            )));
        }
        Ok(())
    }

    /// The tungstenite settings this config implies, for callers that do
    /// their own handshake before [`Connection::new`](crate::Connection::new).
    pub fn websocket(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(self.read_buffer_size)
            // Replies are flushed per batch; tungstenite writes out early
            // only past this size.
            .write_buffer_size(WRITE_BATCH_BYTES)
            .max_message_size(Some(self.max_message_size))
            .max_frame_size(Some(self.max_message_size))
    }
}
