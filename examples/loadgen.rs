//! A load generator for any server that speaks wsloop's wire protocol
//! (JSON text frames `{"requestID":N,"command":"..."}` answered with the same
//! `requestID` and `"success":true`) at `ws://ADDRESS/server`, or at
//! `wss://ADDRESS/server` with `--ca FILE` (feature `tls`).
//!
//! ```text
//! cargo run --release -- server -q &                      # something to load
//! cargo run --release --example loadgen -- throughput -c 64 -d 8 --duration 10s
//! cargo run --release --example loadgen -- rate --rate 10000 -c 32 --duration 10s
//! ulimit -n 20000; cargo run --release --example loadgen -- idle -c 10000 < /dev/tty
//! cargo run --release --example loadgen -- --help
//! ```
//!
//! Three modes:
//!
//! - `throughput`: C connections each keep D requests in flight for the
//!   duration. Prints round trips/s and latency p50/p99/max.
//! - `rate`: R requests/s in total, spread evenly over C connections, sent on
//!   a fixed schedule whether or not replies came back. Latency is measured
//!   from the *scheduled* send time, so a stalled server shows up as latency
//!   instead of silently lowering the offered load ("coordinated omission").
//! - `idle`: opens C connections, proves each alive with one request, prints
//!   `ready`, then holds them (answering the server's heartbeat pings) for
//!   `--duration`, or without it until stdin closes. Sample the server's memory between
//!   `ready` and the end. With `--fanout K`, one connection asks the server
//!   K times for a broadcast (the bench-only command `fanout` of
//!   `examples/fanout_server.rs` and `bench/baseline --fanout`) and each time
//!   the generator waits for the last of the others to have it: time to the
//!   last client, and (with `--server-pid`) the server's CPU per broadcast.
//!
//! Every reply is checked: its `requestID` must be the next one that
//! connection is waiting for (servers answer in request order) and `success`
//! must be true; anything else counts as an error. The last line of output is
//! machine-readable (`RESULT key=value ...`) for `bench/run`.
//!
//! What to watch for:
//!
//! - The generator itself must not be the bottleneck, or round trips/s
//!   measure the generator. That is why the hot loop is hand-written: after a
//!   normal handshake (async-tungstenite), each connection parses frames with
//!   tungstenite's `FrameHeader` straight out of one read buffer and writes
//!   every request of a batch with a single `write`. Pin it to its own core
//!   (`taskset -c 1`) and read the server's CPU time per round trip, which
//!   stays honest even when the generator saturates.
//! - `errors` must be 0. A reply that never comes shows up as `unanswered`.
//! - Each connection uses one local port: one target address gives at most
//!   the ephemeral port range (about 28,000 on Linux). For more, let the
//!   server listen on 0.0.0.0 and pass several targets
//!   (`-a 127.0.0.1:P,127.0.0.2:P`): connections go round-robin over them.
//! - Each connection needs a file descriptor on both sides: raise the limit
//!   first (`ulimit -n`, `prlimit --nofile`); the generator checks it.
//! - `--ca FILE` speaks TLS (rustls with the `ring` provider, through the
//!   futures-rustls that wsloop's `tls` feature already brings, so the
//!   generator stays on smol and adds no crate). The server's certificate
//!   must be signed by that CA and name the target's IP address (the
//!   targets are addresses, so that is what is verified). The frames are the
//!   same; rustls encrypts each batch's single write into one record.

use std::io::{self, Cursor, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::ops::Range;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use async_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use async_tungstenite::tungstenite::protocol::frame::FrameHeader;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use futures_lite::{future, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
#[cfg(feature = "tls")]
use futures_rustls::rustls;
use smol::{Executor, Task};

const USAGE: &str = "\
loadgen — load generator for servers speaking wsloop's JSON protocol

USAGE:
    loadgen throughput [-c C] [-d D] [--duration T] [OPTIONS]
    loadgen rate --rate R [-c C] [--duration T] [OPTIONS]
    loadgen idle [-c C] [--duration T] [OPTIONS]

OPTIONS:
    -a, --address LIST     target HOST:PORT, or several separated by commas
                           (connections go round-robin)  [127.0.0.1:8080]
        --path PATH        WebSocket endpoint path  [/server]
        --ca FILE          wss:// (TLS), trusting the CA certificate(s) in
                           FILE (PEM); the server's certificate must name
                           the target's IP address  [plain ws://]
    -c, --connections C    connections  [throughput 64, rate 32, idle 1000]
    -d, --depth D          requests in flight per connection (throughput)  [8]
    -r, --rate R           requests per second over all connections (rate)
        --duration T       measured time (throughput, rate)  [10s];
                           idle: hold time (default: until stdin closes)
        --warmup T         load before measuring, not counted  [1s]
        --threads N        executor threads  [1]
        --connect-parallel N   handshakes in progress at once  [128]
        --fanout K         idle: after `ready`, K times, ask the server for a
                           broadcast (a request with the command `fanout`)
                           and time it until every other connection has it
        --server-pid PID   idle --fanout: also report the server's CPU time
                           per broadcast (from /proc/PID/task/*/schedstat)
    -h, --help             this text

Durations: 10, 0.5, 200ms, 10s, 1m. The last line is
`RESULT mode=... rps=... p50_us=... p99_us=... max_us=... errors=...`.
";

/// How long stragglers may take to answer after the load stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Read buffer per connection under load, and while idle.
const LOAD_BUFFER: usize = 64 * 1024;
const IDLE_BUFFER: usize = 512;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Throughput,
    Rate,
    Idle,
}

#[derive(Clone, Debug)]
struct Options {
    mode: Mode,
    targets: Vec<SocketAddr>,
    path: String,
    connections: usize,
    depth: usize,
    rate: f64,
    duration: Option<Duration>,
    warmup: Duration,
    threads: usize,
    connect_parallel: usize,
    /// `--ca FILE`: dial `wss://`, trusting this CA.
    ca: Option<std::path::PathBuf>,
    /// Idle mode: broadcasts to time, and whose CPU time to count.
    fanout: usize,
    server_pid: Option<u32>,
}

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(options) => options,
        Err(err) => {
            eprintln!("loadgen: {err}\n(see loadgen --help)");
            return ExitCode::from(2);
        }
    };
    if let Err(err) = check_fd_limit(options.connections) {
        eprintln!("loadgen: {err}");
        return ExitCode::from(2);
    }
    // One executor; `--threads N` runs it on N threads (the caller's plus
    // N-1 helpers). One is right when the generator is pinned to one core.
    let ex = Executor::new();
    let (stop_helpers, helpers_stopped) = async_channel::bounded::<()>(1);
    let ok = std::thread::scope(|scope| {
        for _ in 1..options.threads {
            let stopped = helpers_stopped.clone();
            let ex = &ex;
            scope.spawn(move || smol::block_on(ex.run(stopped.recv())));
        }
        let ok = smol::block_on(ex.run(run(&ex, &options)));
        drop(stop_helpers);
        ok
    });
    // Connections still draining after DRAIN_TIMEOUT are simply abandoned:
    // exiting closes their sockets.
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs the chosen mode and prints its report; true when nothing failed.
async fn run(ex: &Executor<'_>, options: &Options) -> bool {
    // Step 1: open every connection (handshake included) before any load, so
    // the measured window holds only request traffic.
    let opened = Instant::now();
    let conns = open_all(ex, options).await;
    let connect_secs = opened.elapsed().as_secs_f64();
    let (conns, connect_errors) = conns;
    eprintln!(
        "loadgen: {} of {} connections open in {connect_secs:.2} s",
        conns.len(),
        options.connections
    );
    match options.mode {
        Mode::Idle => hold_idle(ex, options, conns, connect_errors, connect_secs).await,
        Mode::Throughput | Mode::Rate => load(ex, options, conns, connect_errors).await,
    }
}

// ---------------------------------------------------------------------------
// Connections: a handshake, then raw frames.
// ---------------------------------------------------------------------------

/// One client connection after the handshake. It owns the socket and two
/// buffers: inbound bytes not yet parsed, outbound frames not yet written.
struct Conn {
    stream: Wire,
    rbuf: Vec<u8>,
    filled: usize,
    wbuf: Vec<u8>,
    /// Scratch space for one request's JSON before it is masked into `wbuf`.
    json: Vec<u8>,
    /// xorshift state for the masking keys clients must use (RFC 6455 §5.3).
    rng: u64,
    /// The next `requestID` to send, and the next one a reply must carry.
    next_id: i64,
    expect_id: i64,
    /// Replies parsed by the last `read_frames`: (requestID, success).
    replies: Vec<(i64, bool)>,
    /// Server pings answered (heartbeat activity).
    pings: u64,
}

/// What went wrong on one connection, for the error summary.
#[derive(Debug)]
enum Fault {
    /// The socket failed or the server closed it.
    Io(io::Error),
    /// The bytes on the wire were not what the protocol promises.
    Protocol(String),
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Io(err) => write!(f, "{err}{}", fd_hint(err)),
            Fault::Protocol(what) => write!(f, "{what}"),
        }
    }
}

impl From<io::Error> for Fault {
    fn from(err: io::Error) -> Self {
        Fault::Io(err)
    }
}

/// The socket under the frames: TCP, or TLS over it (`--ca`).
enum Wire {
    Plain(Async<TcpStream>),
    /// Boxed: rustls's client state is a few hundred bytes of struct.
    #[cfg(feature = "tls")]
    Tls(Box<futures_rustls::client::TlsStream<Async<TcpStream>>>),
}

impl AsyncRead for Wire {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            Wire::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            #[cfg(feature = "tls")]
            Wire::Tls(s) => std::pin::Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Wire {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            Wire::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            #[cfg(feature = "tls")]
            Wire::Tls(s) => std::pin::Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Wire::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            #[cfg(feature = "tls")]
            Wire::Tls(s) => std::pin::Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Wire::Plain(s) => std::pin::Pin::new(s).poll_close(cx),
            #[cfg(feature = "tls")]
            Wire::Tls(s) => std::pin::Pin::new(&mut **s).poll_close(cx),
        }
    }
}

/// What `--ca` builds once for every connection: a rustls client that
/// trusts only that CA.
#[cfg(feature = "tls")]
type Tls = futures_rustls::TlsConnector;
#[cfg(not(feature = "tls"))]
type Tls = ();

/// The TLS client for `--ca FILE`, or an error saying why not.
#[cfg(feature = "tls")]
fn tls_connector(ca: &std::path::Path) -> Result<Tls, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--ca {}: {e}", ca.display()))?;
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| format!("--ca {}: {e}", ca.display()))?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(futures_rustls::TlsConnector::from(Arc::new(config)))
}

#[cfg(not(feature = "tls"))]
fn tls_connector(_: &std::path::Path) -> Result<Tls, String> {
    Err("--ca needs the `tls` feature (the default build has it)".into())
}

impl Conn {
    /// Dials `addr`, sets TCP_NODELAY (request/reply traffic), runs the TLS
    /// handshake when `tls` is given, then a normal WebSocket handshake with
    /// async-tungstenite. After it, the stream is taken back: the server
    /// sends nothing before our first request, so no frame is left behind
    /// in tungstenite's buffer.
    async fn open(
        addr: SocketAddr,
        path: &str,
        index: usize,
        buffer: usize,
        tls: Option<&Tls>,
    ) -> Result<Conn, Fault> {
        let tcp = Async::<TcpStream>::connect(addr).await?;
        tcp.get_ref().set_nodelay(true)?;
        let (stream, scheme) = match tls {
            None => (Wire::Plain(tcp), "ws"),
            #[cfg(feature = "tls")]
            Some(tls) => {
                let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| Fault::Protocol(format!("TLS handshake failed: {e}")))?;
                (Wire::Tls(Box::new(stream)), "wss")
            }
            #[cfg(not(feature = "tls"))]
            Some(()) => (Wire::Plain(tcp), "ws"),
        };
        let url = format!("{scheme}://{addr}{path}");
        // A small read buffer: tungstenite zero-fills it, and 10,000
        // handshakes at its 128 KiB default would cost seconds.
        let config = WebSocketConfig::default().read_buffer_size(4096);
        let (ws, _response) =
            async_tungstenite::client_async_with_config(url, stream, Some(config))
                .await
                .map_err(|e| match e {
                    async_tungstenite::tungstenite::Error::Io(err) => Fault::Io(err),
                    other => Fault::Protocol(format!("handshake failed: {other}")),
                })?;
        Ok(Conn {
            stream: ws.into_inner(),
            rbuf: vec![0; buffer],
            filled: 0,
            wbuf: Vec::with_capacity(1024),
            json: Vec::with_capacity(128),
            rng: 0x9E37_79B9_7F4A_7C15 ^ (index as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9),
            next_id: 1,
            expect_id: 1,
            replies: Vec::new(),
            pings: 0,
        })
    }

    /// Requests sent whose reply has not come yet.
    fn in_flight(&self) -> i64 {
        self.next_id - self.expect_id
    }

    /// Queues one masked text frame carrying the next request; returns its id.
    fn queue_request(&mut self) -> i64 {
        let id = self.next_id;
        self.next_id += 1;
        self.json.clear();
        write!(
            self.json,
            r#"{{"requestID":{id},"command":"Eject the hot dog {id}."}}"#
        )
        .expect("writing to a Vec cannot fail");
        let json = std::mem::take(&mut self.json);
        self.queue_frame(OpCode::Data(Data::Text), &json);
        self.json = json;
        id
    }

    /// Queues one request carrying `command`; returns its id.
    fn queue_command(&mut self, command: &str) -> i64 {
        let id = self.next_id;
        self.next_id += 1;
        let json = format!(r#"{{"requestID":{id},"command":"{command}"}}"#);
        self.queue_frame(OpCode::Data(Data::Text), json.as_bytes());
        id
    }

    /// Appends one frame to the write buffer, masked as clients must.
    fn queue_frame(&mut self, opcode: OpCode, payload: &[u8]) {
        // xorshift64: cheap, and any 32-bit key is a valid mask.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let mask = (self.rng as u32).to_ne_bytes();
        let header = FrameHeader {
            is_final: true,
            rsv1: false,
            rsv2: false,
            rsv3: false,
            opcode,
            mask: Some(mask),
        };
        header
            .format(payload.len() as u64, &mut self.wbuf)
            .expect("writing to a Vec cannot fail");
        let start = self.wbuf.len();
        self.wbuf.extend_from_slice(payload);
        for (i, byte) in self.wbuf[start..].iter_mut().enumerate() {
            *byte ^= mask[i & 3];
        }
    }

    /// Writes every queued frame with one `write_all` (one syscall, usually;
    /// one TLS record and its flush over TLS).
    async fn flush(&mut self) -> io::Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.stream.flush().await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Waits for bytes, then parses every complete frame in the buffer:
    /// replies go to `self.replies` (checked by the caller), pings get a
    /// pong queued, a Close frame or EOF ends the connection.
    async fn read_frames(&mut self) -> Result<(), Fault> {
        if self.filled == self.rbuf.len() {
            // A frame larger than the buffer: grow it.
            self.rbuf.resize(self.rbuf.len() * 2, 0);
        }
        let n = self.stream.read(&mut self.rbuf[self.filled..]).await?;
        if n == 0 {
            return Err(Fault::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        self.filled += n;
        self.replies.clear();
        let mut at = 0;
        while let Some((header, payload)) = parse_frame(&self.rbuf[at..self.filled])? {
            let payload = at + payload.start..at + payload.end;
            at = payload.end;
            match header.opcode {
                OpCode::Data(Data::Text) | OpCode::Data(Data::Binary) if header.is_final => {
                    let bytes = &self.rbuf[payload];
                    // wsloop's own codec, so this works under either codec feature.
                    match wsloop::decode(bytes) {
                        Ok(reply) => self.replies.push((reply.request_id, reply.success)),
                        Err(err) => {
                            return Err(Fault::Protocol(format!(
                                "reply is not the protocol's JSON ({err}): {}",
                                String::from_utf8_lossy(bytes)
                            )))
                        }
                    }
                }
                OpCode::Control(Control::Ping) => {
                    // The server's heartbeat: answer with the same payload.
                    let data = self.rbuf[payload].to_vec();
                    self.queue_frame(OpCode::Control(Control::Pong), &data);
                    self.pings += 1;
                }
                OpCode::Control(Control::Pong) => {}
                OpCode::Control(Control::Close) => {
                    let code = self.rbuf[payload.clone()]
                        .get(..2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]]));
                    return Err(Fault::Protocol(format!("server closed (code {code:?})")));
                }
                other => {
                    return Err(Fault::Protocol(format!(
                        "unexpected frame {other:?} (final: {})",
                        header.is_final
                    )))
                }
            }
        }
        // Keep the incomplete tail at the front for the next read.
        self.rbuf.copy_within(at..self.filled, 0);
        self.filled -= at;
        Ok(())
    }

    /// Checks one reply against the request it must answer; false if wrong.
    fn check(&mut self, id: i64, success: bool) -> bool {
        let expected = self.expect_id;
        // Resynchronise on whatever came, so one bad reply is one error.
        self.expect_id = id.max(expected) + 1;
        id == expected && success
    }

    /// Sends a Close frame and a TCP shutdown (after TLS's close_notify),
    /// ignoring failures.
    async fn close(mut self) {
        self.queue_frame(OpCode::Control(Control::Close), &1000u16.to_be_bytes());
        let _ = self.flush().await;
        let _ = self.stream.close().await;
    }
}

/// The header and payload range of the first complete frame in `buf`, if
/// it is all there. Server frames are never masked.
fn parse_frame(buf: &[u8]) -> Result<Option<(FrameHeader, Range<usize>)>, Fault> {
    let mut cursor = Cursor::new(buf);
    let Some((header, len)) = FrameHeader::parse(&mut cursor)
        .map_err(|e| Fault::Protocol(format!("bad frame header: {e}")))?
    else {
        return Ok(None);
    };
    if header.mask.is_some() {
        return Err(Fault::Protocol("server sent a masked frame".into()));
    }
    let start = cursor.position() as usize;
    let end = start.saturating_add(len as usize);
    Ok((end <= buf.len()).then_some((header, start..end)))
}

/// Opens `--connections` connections, at most `--connect-parallel` at a
/// time (a burst of thousands of SYNs overflows the server's listen
/// backlog). Returns the open ones and the number that failed.
async fn open_all(ex: &Executor<'_>, options: &Options) -> (Vec<Conn>, usize) {
    let buffer = match options.mode {
        Mode::Idle => IDLE_BUFFER,
        _ => LOAD_BUFFER,
    };
    // A channel of tokens works as a semaphore.
    let (give, take) = async_channel::bounded::<()>(options.connect_parallel);
    for _ in 0..options.connect_parallel {
        let _ = give.try_send(());
    }
    let idle = options.mode == Mode::Idle;
    let tls = match options.ca.as_deref().map(tls_connector) {
        None => None,
        Some(Ok(tls)) => Some(Arc::new(tls)),
        Some(Err(err)) => {
            eprintln!("loadgen: {err}");
            return (Vec::new(), options.connections);
        }
    };
    let tasks: Vec<Task<Result<Conn, Fault>>> = (0..options.connections)
        .map(|i| {
            let addr = options.targets[i % options.targets.len()];
            let path = options.path.clone();
            let (give, take) = (give.clone(), take.clone());
            let tls = tls.clone();
            ex.spawn(async move {
                let _ = take.recv().await;
                let conn = Conn::open(addr, &path, i, buffer, tls.as_deref()).await;
                // Idle mode proves each connection alive with one request.
                let conn = match conn {
                    Ok(conn) if idle => prove_alive(conn).await,
                    other => other,
                };
                let _ = give.send(()).await;
                conn
            })
        })
        .collect();
    let mut conns = Vec::with_capacity(options.connections);
    let mut errors = 0;
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(conn) => conns.push(conn),
            Err(fault) => {
                errors += 1;
                first_error.get_or_insert(fault);
            }
        }
    }
    if let Some(fault) = first_error {
        eprintln!("loadgen: {errors} connections failed; the first: {fault}");
    }
    (conns, errors)
}

/// One request, one checked reply.
async fn prove_alive(mut conn: Conn) -> Result<Conn, Fault> {
    conn.queue_request();
    conn.flush().await?;
    while conn.in_flight() > 0 {
        conn.read_frames().await?;
        conn.flush().await?; // pongs, if a ping came first
        for (id, success) in std::mem::take(&mut conn.replies) {
            if !conn.check(id, success) {
                return Err(Fault::Protocol(format!(
                    "bad reply to the first request: id {id}"
                )));
            }
        }
    }
    Ok(conn)
}

// ---------------------------------------------------------------------------
// Throughput and fixed-rate load.
// ---------------------------------------------------------------------------

/// What one connection measured; the main task reads it even from a
/// connection that never finished.
#[derive(Default)]
struct Stats {
    /// Replies received at any time, and inside the measured window.
    replies: u64,
    window_replies: u64,
    /// Latencies (µs) of the replies inside the window.
    latencies_us: Vec<u32>,
    /// Wrong replies (id or success), and requests never answered.
    bad_replies: u64,
    unanswered: u64,
    /// A connection-ending failure, if any.
    fault: Option<String>,
    done: bool,
}

/// The measured window, shared by every connection.
struct Window {
    /// When measuring starts (after the warm-up) and ends.
    from: Instant,
    until: Instant,
    /// Set by the main task at `until`: throughput connections stop
    /// sending and wait for their in-flight replies.
    stop: AtomicBool,
}

impl Window {
    fn contains(&self, t: Instant) -> bool {
        t >= self.from && t < self.until
    }
}

async fn load(
    ex: &Executor<'_>,
    options: &Options,
    conns: Vec<Conn>,
    connect_errors: usize,
) -> bool {
    let started = Instant::now();
    let duration = options.duration.unwrap_or(Duration::from_secs(10));
    let window = Arc::new(Window {
        from: started + options.warmup,
        until: started + options.warmup + duration,
        stop: AtomicBool::new(false),
    });
    let count = conns.len();
    // Step 2: one task per connection, each with its own stats slot.
    let mut slots = Vec::with_capacity(count);
    let mut tasks = Vec::with_capacity(count);
    for (i, conn) in conns.into_iter().enumerate() {
        let stats = Arc::new(Mutex::new(Stats::default()));
        slots.push(stats.clone());
        let window = window.clone();
        let task = match options.mode {
            Mode::Throughput => ex.spawn(drive_throughput(conn, options.depth, window, stats)),
            _ => {
                // Connection i sends every `interval`, offset by its share of
                // one interval so the sends of all connections interleave.
                let interval = Duration::from_secs_f64(count as f64 / options.rate);
                let offset = interval.mul_f64(i as f64 / count as f64);
                ex.spawn(drive_rate(conn, started + offset, interval, window, stats))
            }
        };
        tasks.push(task);
    }
    // Step 3: let it run, then tell throughput connections to stop and give
    // every connection DRAIN_TIMEOUT to collect its last replies.
    Timer::at(window.until).await;
    window.stop.store(true, Ordering::Relaxed);
    let all_done = async {
        for task in tasks {
            task.await;
        }
        true
    };
    let drained = future::or(all_done, async {
        Timer::after(DRAIN_TIMEOUT).await;
        false
    })
    .await;

    // Step 4: add up what every connection measured.
    let mut total = Stats::default();
    let mut faults = Vec::new();
    for slot in &slots {
        let mut stats = slot.lock().unwrap();
        total.replies += stats.replies;
        total.window_replies += stats.window_replies;
        total.bad_replies += stats.bad_replies;
        total.unanswered += stats.unanswered;
        total.latencies_us.append(&mut stats.latencies_us);
        faults.extend(stats.fault.take());
    }
    let errors = total.bad_replies + total.unanswered + faults.len() as u64 + connect_errors as u64;
    let secs = duration.as_secs_f64();
    let rps = total.window_replies as f64 / secs;
    let (p50, p99, max) = percentiles(&mut total.latencies_us);
    let mode = match options.mode {
        Mode::Throughput => format!("throughput conns={count} depth={}", options.depth),
        _ => format!("rate conns={count} target_rps={}", options.rate),
    };
    println!(
        "{mode}: {rps:.0} round trips/s over {secs:.1} s; latency p50 {p50} µs, p99 {p99} µs, max {max} µs"
    );
    if !drained {
        println!("some connections did not drain within {DRAIN_TIMEOUT:?}");
    }
    if errors > 0 {
        println!(
            "errors: {} bad replies, {} unanswered, {} broken connections, {connect_errors} failed to connect",
            total.bad_replies,
            total.unanswered,
            faults.len()
        );
        if let Some(first) = faults.first() {
            println!("first broken connection: {first}");
        }
    }
    println!(
        "RESULT mode={mode} rps={rps:.0} roundtrips={} p50_us={p50} p99_us={p99} max_us={max} errors={errors}",
        total.replies,
        mode = match options.mode {
            Mode::Throughput => "throughput",
            _ => "rate",
        }
    );
    errors == 0
}

/// Keeps `depth` requests in flight: every reply that comes back is
/// answered with a new request, all replies of one read with one write.
async fn drive_throughput(
    mut conn: Conn,
    depth: usize,
    window: Arc<Window>,
    stats: Arc<Mutex<Stats>>,
) {
    // Send times of the requests in flight, oldest first. Replies come in
    // request order, so the front always belongs to the next reply.
    let mut sent = std::collections::VecDeque::with_capacity(depth);
    let now = Instant::now();
    for _ in 0..depth {
        conn.queue_request();
        sent.push_back(now);
    }
    let result = async {
        conn.flush().await?;
        loop {
            conn.read_frames().await?;
            // One clock reading per batch: every reply in it arrived now.
            let now = Instant::now();
            let stop = window.stop.load(Ordering::Relaxed);
            let replies = std::mem::take(&mut conn.replies);
            {
                let mut stats = stats.lock().unwrap();
                for &(id, success) in &replies {
                    let sent_at = sent.pop_front().unwrap_or(now);
                    stats.replies += 1;
                    if !conn.check(id, success) {
                        stats.bad_replies += 1;
                    } else if window.contains(now) {
                        stats.window_replies += 1;
                        stats.latencies_us.push(micros(now - sent_at));
                    }
                    if !stop {
                        conn.queue_request();
                        sent.push_back(now);
                    }
                }
            }
            conn.replies = replies;
            conn.flush().await?;
            if stop && conn.in_flight() <= 0 {
                return Ok::<(), Fault>(());
            }
        }
    };
    finish(result.await, conn, stats).await;
}

/// Sends request k at `first + k × interval` (until the window ends), and
/// times each reply against its scheduled send time.
async fn drive_rate(
    mut conn: Conn,
    first: Instant,
    interval: Duration,
    window: Arc<Window>,
    stats: Arc<Mutex<Stats>>,
) {
    // Request ids start at 1, so request `id` was due at `due(id)`.
    let due = |id: i64| first + interval.mul_f64((id - 1) as f64);
    let mut timer = Timer::at(first);
    let mut sending = true;
    let result = async {
        loop {
            // Wait for whichever comes first: bytes from the server, or the
            // next send time (or, once sending ended, the drain deadline).
            let readable = async { Some(conn.read_frames().await) };
            let tick = async {
                (&mut timer).await;
                None
            };
            match future::or(readable, tick).await {
                Some(read) => {
                    read?;
                    let now = Instant::now();
                    let replies = std::mem::take(&mut conn.replies);
                    {
                        let mut stats = stats.lock().unwrap();
                        for &(id, success) in &replies {
                            stats.replies += 1;
                            if !conn.check(id, success) {
                                stats.bad_replies += 1;
                            } else if window.contains(due(id)) {
                                stats.window_replies += 1;
                                stats
                                    .latencies_us
                                    .push(micros(now.saturating_duration_since(due(id))));
                            }
                        }
                    }
                    conn.replies = replies;
                    conn.flush().await?; // pongs
                }
                None if sending => {
                    // Send everything that is due (more than one if we fell
                    // behind), in one write.
                    let now = Instant::now();
                    while due(conn.next_id) <= now && due(conn.next_id) < window.until {
                        conn.queue_request();
                    }
                    conn.flush().await?;
                    if due(conn.next_id) < window.until {
                        timer.set_at(due(conn.next_id));
                    } else {
                        sending = false;
                        timer.set_at(window.until + DRAIN_TIMEOUT);
                    }
                }
                // The drain deadline passed: `finish` counts what is missing.
                None => return Ok(()),
            }
            if !sending && conn.in_flight() <= 0 {
                return Ok::<(), Fault>(());
            }
        }
    };
    finish(result.await, conn, stats).await;
}

/// Records how a connection ended and closes it politely.
async fn finish(result: Result<(), Fault>, conn: Conn, stats: Arc<Mutex<Stats>>) {
    {
        let mut stats = stats.lock().unwrap();
        stats.unanswered += conn.in_flight().max(0) as u64;
        if let Err(fault) = &result {
            stats.fault = Some(fault.to_string());
        }
        stats.done = true;
    }
    if result.is_ok() {
        conn.close().await;
    }
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}

/// p50, p99 and max of `v` (sorted in place), in µs; zeros when empty.
fn percentiles(v: &mut [u32]) -> (u32, u32, u32) {
    if v.is_empty() {
        return (0, 0, 0);
    }
    v.sort_unstable();
    let at = |p: usize| v[(v.len() * p / 100).min(v.len() - 1)];
    (at(50), at(99), v[v.len() - 1])
}

// ---------------------------------------------------------------------------
// Idle connections.
// ---------------------------------------------------------------------------

async fn hold_idle(
    ex: &Executor<'_>,
    options: &Options,
    conns: Vec<Conn>,
    connect_errors: usize,
    connect_secs: f64,
) -> bool {
    let alive = conns.len();
    let mut conns = conns;
    // With --fanout, one connection triggers the broadcasts; the rest count.
    let trigger = if options.fanout > 0 {
        conns.pop()
    } else {
        None
    };
    let fanout = Arc::new(FanoutCount::new(conns.len()));
    // Step 2: every connection now answers pings until the end; the counters
    // say how many the server dropped and how many pings it sent.
    let dropped = Arc::new(AtomicUsize::new(0));
    let pings = Arc::new(AtomicU64::new(0));
    for mut conn in conns {
        let (dropped, pings, fanout) = (dropped.clone(), pings.clone(), fanout.clone());
        ex.spawn(async move {
            loop {
                let before = conn.pings;
                if conn.read_frames().await.is_err() || conn.flush().await.is_err() {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                pings.fetch_add(conn.pings - before, Ordering::Relaxed);
                // Broadcasts carry requestID 0; our only request was 1.
                for &(id, _) in &conn.replies {
                    if id == 0 {
                        fanout.arrived();
                    }
                }
            }
        })
        .detach();
    }
    // Step 3: tell the caller (bench/run samples the server's RSS now).
    println!("ready {alive}");
    let _ = io::stdout().flush();
    let mut fanout_result = String::new();
    let mut fanout_ok = true;
    if let Some(trigger) = trigger {
        (fanout_result, fanout_ok) = time_fanout(options, trigger, &fanout).await;
    }
    // Step 4: hold for `--duration`, or else until stdin closes (a script
    // keeps a pipe open and closes it when it has its sample); a fan-out run
    // without `--duration` ends after its broadcasts.
    let held = Instant::now();
    match options.duration {
        Some(d) => {
            Timer::after(d).await;
        }
        None if options.fanout > 0 => {}
        None => {
            let (closed, stdin_closed) = async_channel::bounded::<()>(1);
            std::thread::spawn(move || {
                let _ = io::stdin().lock().read_to_end(&mut Vec::new());
                drop(closed);
            });
            let _ = stdin_closed.recv().await;
        }
    }
    let dropped = dropped.load(Ordering::Relaxed);
    let errors = connect_errors + dropped + usize::from(!fanout_ok);
    println!(
        "idle: held {alive} of {} connections for {:.1} s; {} pings answered, {dropped} dropped by the server",
        options.connections,
        held.elapsed().as_secs_f64(),
        pings.load(Ordering::Relaxed)
    );
    println!(
        "RESULT mode=idle conns={alive} connect_s={connect_secs:.2} pings={} dropped={dropped}{fanout_result} errors={errors}",
        pings.load(Ordering::Relaxed)
    );
    errors == 0
}

// ---------------------------------------------------------------------------
// Fan-out: one broadcast, timed until the last client has it.
// ---------------------------------------------------------------------------

/// Longest one broadcast may take to reach every client before the run
/// counts it as failed.
const FANOUT_TIMEOUT: Duration = Duration::from_secs(30);

/// Broadcast copies received by the counting connections; signals when
/// every one of them has the current broadcast.
struct FanoutCount {
    receivers: usize,
    arrived: AtomicUsize,
    all_there: async_channel::Sender<()>,
    all_there_rx: async_channel::Receiver<()>,
}

impl FanoutCount {
    fn new(receivers: usize) -> Self {
        let (all_there, all_there_rx) = async_channel::unbounded();
        FanoutCount {
            receivers,
            arrived: AtomicUsize::new(0),
            all_there,
            all_there_rx,
        }
    }

    /// One connection has the broadcast; the last one of a round signals.
    /// (A round starts only once the previous one is complete.)
    fn arrived(&self) {
        let n = self.arrived.fetch_add(1, Ordering::Relaxed) + 1;
        if self.receivers > 0 && n % self.receivers == 0 {
            let _ = self.all_there.try_send(());
        }
    }
}

/// CPU time of every thread of `pid` so far, in ns (schedstat's first
/// field: nanosecond resolution, where /proc/PID/stat counts 10 ms ticks).
fn process_cpu_ns(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0;
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// User and system CPU time of `pid` so far, in clock ticks (fields 14 and
/// 15 of /proc/PID/stat): coarse, but it says where the time went.
fn process_user_sys_ticks(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after "(comm) " start at field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace().skip(11);
    let user = fields.next()?.parse().ok()?;
    let sys = fields.next()?.parse().ok()?;
    Some((user, sys))
}

/// `--fanout K`: K broadcasts asked for through `trigger`, each timed from
/// the request's write until the last counting connection has its copy.
/// Returns the RESULT fields and whether every broadcast arrived.
async fn time_fanout(options: &Options, mut trigger: Conn, count: &FanoutCount) -> (String, bool) {
    let cpu_before = options.server_pid.and_then(process_cpu_ns);
    let ticks_before = options.server_pid.and_then(process_user_sys_ticks);
    let mut times_us = Vec::with_capacity(options.fanout);
    for _ in 0..options.fanout {
        let asked = Instant::now();
        trigger.queue_command("fanout");
        if trigger.flush().await.is_err() {
            return (" fanout_error=trigger_lost".into(), false);
        }
        let arrived = future::or(async { count.all_there_rx.recv().await.is_ok() }, async {
            Timer::after(FANOUT_TIMEOUT).await;
            false
        });
        if !arrived.await {
            eprintln!(
                "loadgen: a broadcast reached {} of {} clients in {FANOUT_TIMEOUT:?}",
                count.arrived.load(Ordering::Relaxed) % count.receivers.max(1),
                count.receivers
            );
            return (" fanout_error=incomplete".into(), false);
        }
        times_us.push(micros(asked.elapsed()));
        // The trigger's own reply (and its copy of the broadcast).
        while trigger.in_flight() > 0 {
            if trigger.read_frames().await.is_err() {
                return (" fanout_error=trigger_lost".into(), false);
            }
            for (id, success) in std::mem::take(&mut trigger.replies) {
                if id != 0 && !trigger.check(id, success) {
                    return (" fanout_error=bad_reply".into(), false);
                }
            }
        }
    }
    let cpu_ms = match (cpu_before, options.server_pid.and_then(process_cpu_ns)) {
        (Some(a), Some(b)) => format!("{:.3}", (b - a) as f64 / 1e6 / options.fanout as f64),
        _ => "n/a".into(),
    };
    // The split between user and kernel time, in % of the ticks counted.
    let user_pct = match (
        ticks_before,
        options.server_pid.and_then(process_user_sys_ticks),
    ) {
        (Some((u0, s0)), Some((u1, s1))) if u1 + s1 > u0 + s0 => {
            format!(
                "{:.0}",
                (u1 - u0) as f64 * 100.0 / (u1 + s1 - u0 - s0) as f64
            )
        }
        _ => "n/a".into(),
    };
    let (p50, _, max) = percentiles(&mut times_us);
    println!(
        "fanout: {} broadcasts to {} clients; last client after p50 {:.2} ms, max {:.2} ms; server CPU {cpu_ms} ms per broadcast ({user_pct}% of it in user space)",
        options.fanout,
        count.receivers,
        p50 as f64 / 1e3,
        max as f64 / 1e3
    );
    let fields = format!(
        " fanout_clients={} fanout_ms={:.3} fanout_max_ms={:.3} fanout_cpu_ms={cpu_ms} fanout_user_pct={user_pct}",
        count.receivers,
        p50 as f64 / 1e3,
        max as f64 / 1e3
    );
    (fields, true)
}

// ---------------------------------------------------------------------------
// Options and limits.
// ---------------------------------------------------------------------------

fn parse_args() -> Result<Options, String> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_env();
    let mut mode = None;
    let mut address = "127.0.0.1:8080".to_string();
    let mut options = Options {
        mode: Mode::Throughput,
        targets: Vec::new(),
        path: "/server".into(),
        connections: 0,
        depth: 8,
        rate: 0.0,
        duration: None,
        warmup: Duration::from_secs(1),
        threads: 1,
        connect_parallel: 128,
        ca: None,
        fanout: 0,
        server_pid: None,
    };
    let duration = |v: std::ffi::OsString| -> Result<Duration, String> {
        let text = v
            .into_string()
            .map_err(|_| "duration is not UTF-8".to_string())?;
        wsloop::parse_duration(&text)
    };
    let number = |v: std::ffi::OsString| -> Result<usize, String> {
        v.to_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("{v:?} is not a whole number"))
    };
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Short('a') | Long("address") => {
                address = parser
                    .value()
                    .map_err(|e| e.to_string())?
                    .to_string_lossy()
                    .into()
            }
            Long("path") => {
                options.path = parser
                    .value()
                    .map_err(|e| e.to_string())?
                    .to_string_lossy()
                    .into()
            }
            Short('c') | Long("connections") => {
                options.connections = number(parser.value().map_err(|e| e.to_string())?)?
            }
            Short('d') | Long("depth") => {
                options.depth = number(parser.value().map_err(|e| e.to_string())?)?.max(1)
            }
            Short('r') | Long("rate") => {
                options.rate = number(parser.value().map_err(|e| e.to_string())?)? as f64
            }
            Long("duration") => {
                options.duration = Some(duration(parser.value().map_err(|e| e.to_string())?)?)
            }
            Long("warmup") => {
                options.warmup = duration(parser.value().map_err(|e| e.to_string())?)?
            }
            Long("ca") => options.ca = Some(parser.value().map_err(|e| e.to_string())?.into()),
            Long("threads") => {
                options.threads = number(parser.value().map_err(|e| e.to_string())?)?.max(1)
            }
            Long("connect-parallel") => {
                options.connect_parallel =
                    number(parser.value().map_err(|e| e.to_string())?)?.max(1)
            }
            Long("fanout") => options.fanout = number(parser.value().map_err(|e| e.to_string())?)?,
            Long("server-pid") => {
                options.server_pid =
                    Some(number(parser.value().map_err(|e| e.to_string())?)? as u32)
            }
            Short('h') | Long("help") => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            Value(v) if mode.is_none() => {
                mode = Some(match v.to_str() {
                    Some("throughput") => Mode::Throughput,
                    Some("rate") => Mode::Rate,
                    Some("idle") => Mode::Idle,
                    _ => return Err(format!("unknown mode {v:?}")),
                })
            }
            other => return Err(other.unexpected().to_string()),
        }
    }
    options.mode = mode.ok_or("give a mode: throughput, rate or idle")?;
    if options.connections == 0 {
        options.connections = match options.mode {
            Mode::Throughput => 64,
            Mode::Rate => 32,
            Mode::Idle => 1000,
        };
    }
    if options.mode == Mode::Rate && options.rate <= 0.0 {
        return Err("rate mode needs --rate R (requests per second)".into());
    }
    for part in address.split(',') {
        let addr = part
            .to_socket_addrs()
            .map_err(|e| format!("address {part:?}: {e}"))?
            .next()
            .ok_or_else(|| format!("address {part:?} resolves to nothing"))?;
        options.targets.push(addr);
    }
    Ok(options)
}

/// Fails early, with the fix, when the open-files limit cannot hold the
/// connections. (std cannot raise RLIMIT_NOFILE itself; the shell can.)
fn check_fd_limit(connections: usize) -> Result<(), String> {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse::<usize>().ok());
    let need = connections + 64;
    match soft {
        Some(soft) if soft < need => Err(format!(
            "{connections} connections need about {need} file descriptors but the limit is {soft}; \
             run `ulimit -n {need}` first (or `prlimit --nofile={need}:{need} -- ...`)"
        )),
        _ => Ok(()),
    }
}

/// Extra advice for the errors that mean "a limit, not a bug".
fn fd_hint(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        // EMFILE / ENFILE
        Some(24) | Some(23) => " (out of file descriptors: raise `ulimit -n`)",
        // EADDRNOTAVAIL
        Some(99) => {
            " (out of local ports: pass several targets, e.g. -a 127.0.0.1:P,127.0.0.2:P \
             with the server on 0.0.0.0, or widen net.ipv4.ip_local_port_range)"
        }
        _ => "",
    }
}
