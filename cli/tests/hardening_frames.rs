//! The read side under abuse (issue 11): floods of frames that complete no
//! message, buffers left grown by one large message, a fragmented message
//! kept open by pings, and peers pipelining large messages. Each peer here
//! is a real socket; each test bounds its own time.

mod common;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::process::start_server;
use common::{bounded, client_frame, raw_upgrade, request, ws_connect, TestServer};
use wsloop::{
    Config, Ended, Error, Frame, Handler, Message, Peer, CLOSE_POLICY, CLOSE_PROTOCOL_ERROR,
};

/// `{` as a text frame without FIN: a message that is never finished.
const OPEN_MESSAGE: [u8; 7] = [0x01, 0x81, 0, 0, 0, 0, b'{'];
/// An empty masked continuation frame (mask 0), as the attack sends it.
const EMPTY_CONTINUATION: [u8; 6] = [0x00, 0x80, 0, 0, 0, 0];
/// An empty masked unsolicited pong.
const EMPTY_PONG: [u8; 6] = [0x8A, 0x80, 0, 0, 0, 0];

/// Reads one (unmasked, server) frame: its first byte and its payload.
fn read_frame(stream: &mut TcpStream) -> io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head)?;
    let len = match head[1] & 0x7F {
        126 => {
            let mut ext = [0u8; 2];
            stream.read_exact(&mut ext)?;
            u64::from(u16::from_be_bytes(ext))
        }
        127 => {
            let mut ext = [0u8; 8];
            stream.read_exact(&mut ext)?;
            u64::from_be_bytes(ext)
        }
        n => u64::from(n),
    };
    let mut payload = vec![0u8; usize::try_from(len).expect("frame fits in memory")];
    stream.read_exact(&mut payload)?;
    Ok((head[0], payload))
}

/// Reads frames until a Close and returns its code; `None` on EOF, error or
/// read timeout first.
fn close_code(stream: &mut TcpStream) -> Option<u16> {
    loop {
        let (first, payload) = read_frame(stream).ok()?;
        if first & 0x0F == 0x8 {
            return payload
                .get(..2)
                .map(|code| u16::from_be_bytes([code[0], code[1]]));
        }
    }
}

/// Sends `prefix`, then `unit` over and over as fast as the socket takes it,
/// from a thread, for at most `limit`; meanwhile reads the server's frames
/// on this thread. Returns the Close code the server sent and how long
/// after the flood began it arrived.
fn flood(addr: SocketAddr, prefix: &[u8], unit: &[u8], limit: Duration) -> (Option<u16>, Duration) {
    let mut stream = raw_upgrade(addr);
    stream.write_all(prefix).expect("send prefix");
    let mut writer = stream.try_clone().expect("clone socket");
    let chunk: Vec<u8> = unit
        .iter()
        .copied()
        .cycle()
        .take(unit.len() * 10_000)
        .collect();
    let start = Instant::now();
    let sender = thread::spawn(move || {
        // Until the server drops us (the write fails) or the time is up.
        while start.elapsed() < limit && writer.write_all(&chunk).is_ok() {}
        let _ = writer.shutdown(std::net::Shutdown::Write);
    });
    stream
        .set_read_timeout(Some(limit + Duration::from_secs(2)))
        .expect("read timeout");
    let code = close_code(&mut stream);
    let after = start.elapsed();
    drop(stream);
    sender.join().expect("flood thread");
    (code, after)
}

/// The 99th percentile of `samples`.
fn p99(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    eprintln!(
        "round trips: p50 {:?} p99 {:?} max {:?}",
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
        samples[samples.len() - 1]
    );
    samples[(samples.len() * 99 / 100).min(samples.len() - 1)]
}

/// Round trips of a well-behaved client while `busy` is running elsewhere.
async fn round_trips(addr: SocketAddr, count: usize) -> Vec<Duration> {
    let mut ws = ws_connect(addr).await;
    let mut samples = Vec::with_capacity(count);
    for id in 1..=count as i64 {
        let start = Instant::now();
        let reply = request(&mut ws, id, "ping?").await;
        assert_eq!(reply.request_id, id);
        samples.push(start.elapsed());
        // Spread the requests over the attack instead of bunching them.
        async_io::Timer::after(Duration::from_millis(10)).await;
    }
    samples
}

#[test]
fn empty_continuation_flood_is_closed_and_others_stay_prompt() {
    let server = TestServer::start(Config::default());
    let addr = server.addr;
    let attacker = thread::spawn(move || {
        flood(
            addr,
            &OPEN_MESSAGE,
            &EMPTY_CONTINUATION,
            Duration::from_secs(5),
        )
    });
    let samples = bounded(30, round_trips(addr, 100));
    let (code, after) = attacker.join().expect("attacker thread");
    assert_eq!(
        code,
        Some(CLOSE_POLICY),
        "the flood was not closed with 1008"
    );
    assert!(
        after < Duration::from_secs(3),
        "closed only after {after:?}"
    );
    let p99 = p99(samples);
    assert!(
        p99 < Duration::from_millis(250),
        "good client's p99 {p99:?}"
    );
}

#[test]
fn pong_flood_is_closed_with_policy() {
    let server = TestServer::start(Config::default());
    let (code, after) = flood(server.addr, &[], &EMPTY_PONG, Duration::from_secs(5));
    assert_eq!(
        code,
        Some(CLOSE_POLICY),
        "the pong flood was not closed with 1008"
    );
    assert!(
        after < Duration::from_secs(3),
        "closed only after {after:?}"
    );
}

#[test]
fn too_many_fragments_are_closed_with_policy() {
    let config = Config::default().with_max_fragments(100);
    let server = TestServer::start(config);
    let mut stream = raw_upgrade(server.addr);
    let mut frames = OPEN_MESSAGE.to_vec();
    for _ in 0..200 {
        frames.extend_from_slice(&EMPTY_CONTINUATION);
    }
    stream.write_all(&frames).expect("send fragments");
    assert_eq!(close_code(&mut stream), Some(CLOSE_POLICY));
}

#[test]
fn stalled_fragmented_message_is_closed_while_pings_are_answered() {
    let config = Config::default()
        .with_heartbeat(Duration::from_secs(1))
        .with_message_timeout(Duration::from_secs(3));
    let server = TestServer::start(config);
    let mut stream = raw_upgrade(server.addr);
    stream.write_all(&OPEN_MESSAGE).expect("open a message");
    let start = Instant::now();
    let mut pongs = 0;
    let code = loop {
        assert!(start.elapsed() < Duration::from_secs(8), "never closed");
        let (first, payload) = read_frame(&mut stream).expect("server frame");
        match first & 0x0F {
            // Answer every ping: the connection itself stays alive.
            0x9 => {
                let mut pong = client_frame(0xA, &payload);
                pong[0] = 0x8A;
                stream.write_all(&pong).expect("send pong");
                pongs += 1;
            }
            0x8 => break payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]])),
            _ => {}
        }
    };
    assert_eq!(code, Some(CLOSE_POLICY));
    assert!(pongs >= 1, "closed before any ping was answered");
}

/// A final text frame masked with `mask`.
fn masked_text(payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut frame = vec![0x81, 0x80 | 127];
    frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// A seed request whose command makes it `size` bytes of JSON.
fn large_request(id: i64, size: usize) -> Vec<u8> {
    let shell = wsloop::encode(&Message::request(id, "")).len();
    let text = wsloop::encode(&Message::request(id, "x".repeat(size - shell)));
    client_frame(1, text.as_bytes())
}

/// The seed handler, except that large messages get a short reply without
/// being decoded: the test is about the loop's batching, not about how fast
/// the JSON code of a debug build gets through a megabyte.
struct QuickOnLarge;

impl Handler for QuickOnLarge {
    async fn on_message(&self, _peer: &Peer, message: Message) -> Option<Message> {
        Some(message.seed_reply())
    }

    async fn on_frame(&self, _peer: &Peer, frame: Frame) -> Option<Frame> {
        let Frame::Text(text) = frame else {
            return None;
        };
        if text.len() > 4096 {
            return Some(Frame::text("{}"));
        }
        let message = wsloop::decode(text.as_bytes()).ok()?;
        Some(Frame::text(wsloop::encode(&message.seed_reply())))
    }
}

#[test]
fn large_pipelined_messages_do_not_starve_small_peers() {
    // Within every limit: the byte rate is what these peers are about.
    let config = Config::default().with_max_bytes_per_second(0);
    let server = TestServer::start_with(config, None, QuickOnLarge);
    let addr = server.addr;
    let frame = large_request(1, 1 << 20);
    let duration = Duration::from_secs(4);
    let senders: Vec<_> = (0..2)
        .map(|_| {
            let frame = frame.clone();
            thread::spawn(move || {
                let mut stream = raw_upgrade(addr);
                let mut reader = stream.try_clone().expect("clone socket");
                // Replies are read and dropped, so the server never blocks
                // on writing to us.
                let drain = thread::spawn(move || {
                    let mut sink = vec![0u8; 64 * 1024];
                    while let Ok(1..) = reader.read(&mut sink) {}
                });
                let start = Instant::now();
                while start.elapsed() < duration && stream.write_all(&frame).is_ok() {}
                let _ = stream.shutdown(std::net::Shutdown::Both);
                let _ = drain.join();
            })
        })
        .collect();
    // Give the senders a moment to fill the pipes first.
    thread::sleep(Duration::from_millis(300));
    let samples = bounded(30, round_trips(addr, 100));
    for sender in senders {
        sender.join().expect("sender thread");
    }
    // Old code: ~260 ms (a batch was 64 messages of 1 MiB); now ~5 ms.
    let p99 = p99(samples);
    assert!(
        p99 < Duration::from_millis(100),
        "small client's p99 {p99:?}"
    );
}

/// The server process's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .expect("VmRSS line")
}

/// Opens a connection, sends one request of `size` bytes, waits for its
/// reply and keeps the connection open.
fn one_request(addr: SocketAddr, size: usize) -> TcpStream {
    let mut stream = raw_upgrade(addr);
    stream
        .write_all(&large_request(7, size))
        .expect("send request");
    loop {
        let (first, payload) = read_frame(&mut stream).expect("reply");
        if first & 0x0F == 0x1 {
            assert!(payload.starts_with(b"{"), "a JSON reply");
            return stream;
        }
    }
}

#[test]
fn idle_connection_sheds_the_buffers_of_a_large_message() {
    const CONNECTIONS: usize = 40;
    let (server, addr) = start_server("server", &["server", "--quiet"]);
    let pid = server.pid();
    // Two groups, each of connections that exchanged one 1 MiB message each
    // way and then idle. The allocator keeps some freed memory for reuse
    // after the first group; what the second adds is what each connection
    // holds for good.
    let first: Vec<_> = (0..CONNECTIONS)
        .map(|_| one_request(addr, 1 << 20))
        .collect();
    let before = settled_rss_kib(pid);
    let second: Vec<_> = (0..CONNECTIONS)
        .map(|_| one_request(addr, 1 << 20))
        .collect();
    let after = settled_rss_kib(pid);
    let per_connection = after.saturating_sub(before) / CONNECTIONS as u64;
    eprintln!("RSS {before} -> {after} KiB: {per_connection} KiB per large-message connection");
    // Old figure: ~2 MiB per connection, for good.
    assert!(
        per_connection < 100,
        "{per_connection} KiB per connection kept"
    );
    drop((first, second));
}

/// RSS once it stops falling: the loop rebuilds its reader when it goes
/// idle after the reply, which nothing outside the process can await, so
/// sample until two readings 100 ms apart agree (at most 5 s).
fn settled_rss_kib(pid: u32) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = rss_kib(pid);
    loop {
        thread::sleep(Duration::from_millis(100));
        let now = rss_kib(pid);
        if now >= last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

#[test]
fn frames_sent_with_the_handshake_are_followed_from_their_start() {
    // A large message whose first bytes arrive in the same packet as the
    // upgrade request: the server's handshake reads them, tungstenite gets
    // them as leftover, and the guard must count them too, or it would take
    // the payload for headers (and release buffers mid-message).
    let server = TestServer::start(Config::default());
    let addr = server.addr;
    let mut stream = TcpStream::connect(addr).expect("tcp connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    // Masked with "xxxx", the command's 'x's go out as zero bytes: to a
    // tracker that missed the header they look like empty continuation
    // frames, 100,000 of them, far past the fragment cap.
    let text = wsloop::encode(&Message::request(3, "x".repeat(200_000)));
    let frame = masked_text(text.as_bytes(), *b"xxxx");
    let mut first = format!(
        "GET /server HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes();
    first.extend_from_slice(&frame[..1000]);
    stream.write_all(&first).expect("send head and frame start");
    let head = common::read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream.write_all(&frame[1000..]).expect("send the rest");
    let small = client_frame(1, wsloop::encode(&Message::request(4, "small")).as_bytes());
    stream.write_all(&small).expect("send a small request");
    let mut ids = Vec::new();
    while ids.len() < 2 {
        let (first, payload) = read_frame(&mut stream).expect("reply");
        if first & 0x0F == 0x1 {
            let reply = wsloop::decode(&payload).expect("reply decodes");
            ids.push(reply.request_id);
        }
    }
    assert_eq!(ids, vec![3, 4]);
}

/// `payload` as masked client frames: `parts` data frames (the first text,
/// the rest continuations), with a ping after the first when there are
/// several (control frames may come between fragments). Returned in two
/// pieces: up to that ping, and the rest.
fn fragmented(payload: &[u8], parts: usize) -> [Vec<u8>; 2] {
    let size = payload.len().div_ceil(parts);
    let mut pieces = [Vec::new(), Vec::new()];
    for (i, part) in payload.chunks(size).enumerate() {
        let mut frame = client_frame(if i == 0 { 1 } else { 0 }, part);
        if i + 1 < parts {
            frame[0] &= 0x7F; // not the last fragment: FIN off
        }
        pieces[usize::from(i > 0)].extend(frame);
        if i == 0 && parts > 1 {
            pieces[0].extend(client_frame(9, b"between"));
        }
    }
    pieces
}

#[test]
fn buffers_are_released_only_between_messages() {
    // Large messages (which make the loop release its buffers when it next
    // idles), small ones, and fragmented ones with a ping inside, sent in
    // uneven chunks with pauses, so the server goes idle at arbitrary
    // points: mid-header, mid-payload, between fragments (right after a
    // large reply, too), between messages. A release anywhere but between
    // messages would lose bytes, and the replies would stop matching.
    const MESSAGES: i64 = 96;
    let server = TestServer::start(Config::default());
    let mut stream = raw_upgrade(server.addr);
    let mut reader = stream.try_clone().expect("clone socket");
    let mut messages = Vec::new();
    let mut expected = Vec::new();
    for id in 1..=MESSAGES {
        let size = if id % 2 == 0 { 70_000 } else { 200 };
        let shell = wsloop::encode(&Message::request(id, "")).len();
        let text = wsloop::encode(&Message::request(id, "x".repeat(size - shell)));
        // One to three fragments, so that every kind follows every kind.
        messages.push(fragmented(text.as_bytes(), 1 + (id % 3) as usize));
        expected.push(id);
    }
    let replies = thread::spawn(move || {
        let mut ids = Vec::new();
        while ids.len() < MESSAGES as usize {
            match read_frame(&mut reader) {
                Ok((first, payload)) if first & 0x0F == 0x1 => {
                    let reply = wsloop::decode(&payload).expect("reply decodes");
                    ids.push(reply.request_id);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        ids
    });
    let mut rng = fastrand::Rng::with_seed(11);
    // Pacing, not synchronisation: a pause lets the server run dry there.
    // False once the server has closed on us (the replies tell why).
    let mut send = |piece: &[u8]| {
        let mut rest = piece;
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rng.usize(1..=9000).min(rest.len()));
            if stream.write_all(chunk).is_err() {
                return false;
            }
            rest = tail;
            if rng.bool() {
                thread::sleep(Duration::from_millis(2));
            }
        }
        true
    };
    for [first, rest] in &messages {
        if !send(first) {
            break;
        }
        if !rest.is_empty() {
            // Idle between fragments, often right after a large reply: the
            // one place a release would be easy to get wrong.
            thread::sleep(Duration::from_millis(10));
            if !send(rest) {
                break;
            }
        }
    }
    let ids = replies.join().expect("reader thread");
    assert_eq!(ids, expected);
}

/// The seed's handler that also reports how each connection ended.
struct EndRecorder(std::sync::mpsc::Sender<Result<Ended, String>>);

impl Handler for EndRecorder {
    async fn on_message(&self, _: &Peer, message: Message) -> Option<Message> {
        Some(message.seed_reply())
    }

    fn on_disconnect(&self, _: &Peer, how: &Result<Ended, wsloop::Error>) {
        let how = match how {
            Ok(ended) => Ok(ended.clone()),
            Err(err) => Err(err.to_string()),
        };
        let _ = self.0.send(how);
    }
}

/// Sends one masked Close frame with `payload` from a raw peer; returns the
/// code the server answered and how the server says the connection ended.
fn close_with(payload: &[u8]) -> (Option<u16>, Result<Ended, String>) {
    let (tx, ended) = std::sync::mpsc::channel();
    let server = TestServer::start_with(Config::default(), None, EndRecorder(tx));
    let mut stream = raw_upgrade(server.addr);
    stream
        .write_all(&client_frame(0x8, payload))
        .expect("send close");
    let answered = close_code(&mut stream);
    let ended = ended
        .recv_timeout(Duration::from_secs(10))
        .expect("the server reports the end within 10 s");
    (answered, ended)
}

#[test]
fn an_invalid_close_code_is_reported_as_the_peers_not_as_our_1002() {
    // 999 is below the range RFC 6455 §7.4 allows: tungstenite answers 1002
    // and hands the loop a 1002 of its own making.
    let (answered, ended) = close_with(&999u16.to_be_bytes());
    assert_eq!(answered, Some(CLOSE_PROTOCOL_ERROR), "we answer 1002");
    assert_eq!(ended, Ok(Ended::InvalidClose(999)));
    let said = ended.map(|e| e.to_string()).unwrap_or_default();
    assert!(said.contains("invalid close code 999"), "said {said:?}");
}

#[test]
fn a_peer_that_really_sends_1002_is_still_reported_as_such() {
    // The same code and reason tungstenite substitutes, sent by the peer
    // itself: only the bytes on the wire tell the two apart.
    let mut payload = CLOSE_PROTOCOL_ERROR.to_be_bytes().to_vec();
    payload.extend_from_slice(b"Protocol violation");
    let (answered, ended) = close_with(&payload);
    assert_eq!(answered, Some(CLOSE_PROTOCOL_ERROR), "the close is echoed");
    assert_eq!(
        ended,
        Ok(Ended::PeerClosed(Some((
            CLOSE_PROTOCOL_ERROR,
            "Protocol violation".into()
        ))))
    );
}

/// The seed's handler that passes each connection's end on.
struct Ends(async_channel::Sender<Result<Ended, Error>>);

impl Handler for Ends {
    async fn on_message(&self, _: &Peer, message: Message) -> Option<Message> {
        Some(message.seed_reply())
    }

    fn on_disconnect(&self, _: &Peer, how_it_ended: &Result<Ended, Error>) {
        let end = match how_it_ended {
            Ok(ended) => Ok(ended.clone()),
            Err(Error::ProtocolViolation(how)) => Err(Error::ProtocolViolation(how)),
            Err(other) => Err(Error::ConnectionClosed(other.to_string())),
        };
        let _ = self.0.try_send(end);
    }
}

#[test]
fn a_64_bit_length_with_its_top_bit_set_is_a_protocol_error() {
    // RFC 6455 §5.2: "the most significant bit MUST be 0". Such a length is
    // malformed, not merely too big: 1002, not 1009.
    let (ends, ended) = async_channel::unbounded();
    let server = TestServer::start_with(Config::default(), None, Ends(ends));
    let mut stream = raw_upgrade(server.addr);
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 63 | 5).to_be_bytes());
    header.extend_from_slice(&[0, 0, 0, 0]); // the mask
    stream.write_all(&header).expect("send header");
    assert_eq!(close_code(&mut stream), Some(CLOSE_PROTOCOL_ERROR));
    // The loop's result says so in wsloop's own type.
    let end = bounded(10, ended.recv()).expect("on_disconnect");
    match end {
        Err(Error::ProtocolViolation(how)) => {
            assert_eq!(how, "frame length has its top bit set")
        }
        other => panic!("expected a ProtocolViolation, got {other:?}"),
    }
}
