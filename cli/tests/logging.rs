//! What the `wsloop` binary logs when peers misbehave (issues 11 and 12):
//! peer text is escaped and cut, peer-repeated lines are rate-limited, a
//! slow log reader cannot stall service, and lines carry an RFC 3339
//! timestamp, as text or JSON. Real processes and real sockets only.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
#[cfg(feature = "debug-logs")]
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[cfg(feature = "debug-logs")]
use common::process::{announced_addr, BIN};
use common::process::{start_server, Proc};
use common::{client_frame, raw_upgrade, read_head};

/// The library's cut for quoted peer text (`log_safe::QUOTE_LIMIT`).
const QUOTE_LIMIT: usize = 200;

/// The library's rate limit: lines of one kind per second.
const LOG_BURST: usize = 10;

/// A Close frame from the client with `code` and `reason`.
fn close_frame(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    client_frame(8, &payload)
}

/// Reads one unmasked server frame: its opcode and payload.
fn read_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).expect("frame head");
    let len = match head[1] & 0x7F {
        126 => {
            let mut n = [0u8; 2];
            stream.read_exact(&mut n).expect("frame length");
            usize::from(u16::from_be_bytes(n))
        }
        127 => {
            let mut n = [0u8; 8];
            stream.read_exact(&mut n).expect("frame length");
            usize::try_from(u64::from_be_bytes(n)).expect("length fits")
        }
        n => usize::from(n),
    };
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).expect("frame payload");
    (head[0] & 0x0F, payload)
}

/// Sends a Close with `reason` and reads until the server's Close reply.
fn close_with(stream: &mut TcpStream, reason: &[u8]) {
    stream
        .write_all(&close_frame(1000, reason))
        .expect("send close");
    while read_frame(stream).0 != 8 {}
}

/// Whether `line` starts with an RFC 3339 UTC timestamp with milliseconds
/// (`2026-12-01T09:25:00.123Z`).
fn is_rfc3339(stamp: &str) -> bool {
    let b = stamp.as_bytes();
    let digits = |r: std::ops::Range<usize>| r.into_iter().all(|i| b[i].is_ascii_digit());
    b.len() == 24
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..23)
        && b[23] == b'Z'
}

#[test]
fn a_forged_close_reason_stays_on_its_own_line_escaped() {
    let (mut server, addr) = start_server("server", &["server", "-v"]);
    let mut ws = raw_upgrade(addr);
    let reason = b"bye\nwsloop: WARN  forged line\r\x1b[2J\x1b[31mred";
    close_with(&mut ws, reason);
    let line = server.wait_for_stderr(10, "the disconnect line", |l| l.contains("disconnected"));

    for seen in server.stderr_seen() {
        assert!(
            !seen.contains('\x1b'),
            "a raw ESC reached the log: {seen:?}"
        );
        assert!(!seen.contains('\r'), "a raw CR reached the log: {seen:?}");
        assert!(
            !seen.contains("forged") || seen.contains(r"bye\nwsloop: WARN  forged line\r\u{1b}[2J"),
            "the reason is not escaped on one line: {seen:?}\n{:#?}",
            server.stderr_seen()
        );
    }
    // At -v the reason shows twice: where the Close arrived (a DEBUG line,
    // so only with `debug-logs`: compiled out of the small build), and at
    // INFO in the disconnect line (with the client's id and address).
    assert!(line.contains("forged line"), "{line}");
    assert!(line.contains("(127.0.0.1:"), "{line}");
    let closes = server
        .stderr_seen()
        .iter()
        .filter(|l| l.contains("sent close 1000"))
        .count();
    let expected = usize::from(cfg!(feature = "debug-logs"));
    assert_eq!(closes, expected, "{:#?}", server.stderr_seen());
    let stamp = line.split(' ').next().unwrap_or_default();
    assert!(is_rfc3339(stamp), "no RFC 3339 timestamp: {line}");
}

#[test]
fn floods_of_unmatched_replies_and_refusals_log_boundedly() {
    let started = Instant::now();
    let (mut server, addr) = start_server("server", &["server"]);

    // Thousands of replies that match nothing, then a request whose reply
    // proves they were all handled.
    let mut ws = raw_upgrade(addr);
    let mut burst = Vec::new();
    for id in 0..3000 {
        let reply =
            format!(r#"{{"requestID":{id},"command":"","someOtherThing":"","success":true}}"#);
        burst.extend(client_frame(1, reply.as_bytes()));
    }
    let request = r#"{"requestID":1,"command":"after the flood"}"#;
    burst.extend(client_frame(1, request.as_bytes()));
    ws.write_all(&burst).expect("send the flood");
    let (opcode, reply) = read_frame(&mut ws);
    assert_eq!(opcode, 1);
    assert!(String::from_utf8_lossy(&reply).contains("after the flood"));

    // Refused upgrades quoting a 7 KB Origin.
    let origin = format!("http://evil.example/{}", "a".repeat(7000));
    let refusals = 100;
    for _ in 0..refusals {
        let mut stream = TcpStream::connect(addr).expect("tcp connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        let upgrade = format!(
            "GET /server HTTP/1.1\r\nHost: {addr}\r\nOrigin: {origin}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(upgrade.as_bytes()).expect("send upgrade");
        let head = read_head(&mut stream);
        assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    }

    // Lines are written in order: once this one is out, the flood's are.
    close_with(&mut ws, b"sentinel");
    server.wait_for_stderr(10, "the sentinel", |l| l.contains("sentinel"));
    let secs = started.elapsed().as_secs() as usize + 1;
    let seen = server.stderr_seen();
    let bytes: usize = seen.iter().map(|l| l.len() + 1).sum();
    assert!(bytes < 32 * 1024, "{bytes} bytes of log:\n{seen:#?}");
    let refused: Vec<&String> = seen.iter().filter(|l| l.contains("refused 403")).collect();
    assert!(
        !refused.is_empty() && refused.len() <= LOG_BURST * secs,
        "{} refusal lines in {secs} s:\n{seen:#?}",
        refused.len()
    );
    for line in &refused {
        assert!(
            line.len() < 3 * QUOTE_LIMIT + 200,
            "refusal line too long: {line}"
        );
        assert!(line.contains("more bytes]"), "quote not cut: {line}");
    }
    assert!(
        !seen
            .iter()
            .any(|l| l.contains("matches no outstanding request")),
        "unmatched replies are logged at the default level:\n{seen:#?}"
    );
}

/// A `wsloop` whose stderr is a pipe nobody reads; killed on drop.
#[cfg(feature = "debug-logs")]
struct Unread(Child);

#[cfg(feature = "debug-logs")]
impl Drop for Unread {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// `-v` fills the pipe only with its per-message DEBUG lines.
#[cfg(feature = "debug-logs")]
#[test]
fn a_log_reader_that_never_reads_does_not_stall_service() {
    let mut child = Command::new(BIN)
        .args(["server", "-v", "--address", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start wsloop");
    let mut stdout = child.stdout.take().expect("stdout was piped");
    // Held, never read: the pipe fills after 64 KiB.
    let _stderr = child.stderr.take().expect("stderr was piped");
    let server = Unread(child);
    let mut first = Vec::new();
    let mut byte = [0u8; 1];
    while !first.ends_with(b"\n") {
        match stdout.read(&mut byte) {
            Ok(1) => first.push(byte[0]),
            _ => panic!("no address line: {:?}", String::from_utf8_lossy(&first)),
        }
    }
    let first = String::from_utf8_lossy(&first);
    let addr = announced_addr(&first).unwrap_or_else(|| panic!("unexpected first line {first:?}"));

    // At -v every request and reply is logged: 3000 of each, a few MB,
    // far more than the pipe holds.
    let mut ws = raw_upgrade(addr);
    ws.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let started = Instant::now();
    let command = "x".repeat(400);
    for batch in 0..30 {
        let mut frames = Vec::new();
        for i in 0..100 {
            let id = batch * 100 + i + 1;
            let request = format!(r#"{{"requestID":{id},"command":"{command}"}}"#);
            frames.extend(client_frame(1, request.as_bytes()));
        }
        ws.write_all(&frames).expect("send requests");
        for i in 0..100 {
            let id = batch * 100 + i + 1;
            let (opcode, reply) = read_frame(&mut ws);
            assert_eq!(opcode, 1);
            let reply = String::from_utf8_lossy(&reply);
            assert!(
                reply.starts_with(&format!(r#"{{"requestID":{id},"#)),
                "reply {id}: {reply}"
            );
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "3000 replies took {:?}",
        started.elapsed()
    );
    drop(server);
}

// `-v` fills the pipe only with its per-message DEBUG lines.
#[cfg(feature = "debug-logs")]
#[test]
fn a_stuck_log_reader_does_not_hold_the_exit() {
    let (server, addr) = start_server("server", &["server"]);
    let mut child = Command::new(BIN)
        .args(["client", "-v", "--no-reconnect", "--interval", "1ms"])
        .args(["--address", &addr.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start wsloop client");
    let stdout = child.stdout.take().expect("stdout was piped");
    // Held, never read: at -v the client fills the pipe within moments.
    let _stderr = child.stderr.take().expect("stderr was piped");
    let client = Unread(child);
    let (lines, replies) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.starts_with(common::process::RECEIVED) && lines.send(()).is_err() {
                break;
            }
        }
        // Dropping `lines` here tells the test stdout has closed.
    });
    // 1000 replies: about 300 KB of log at -v, far more than the pipe holds.
    for n in 0..1000 {
        if replies.recv_timeout(Duration::from_secs(10)).is_err() {
            panic!("the client stopped after {n} replies");
        }
    }
    server.sigterm();
    // The client fails (the server went away) and must exit, although its
    // log writer is stuck on the full pipe: stdout closing says it did.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match replies.recv_timeout(left) {
            Ok(()) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("the client did not exit with its log reader stuck")
            }
        }
    }
    drop(client);
}

#[test]
fn version_names_the_version_and_the_features() {
    let run = Proc::wsloop("wsloop", &["--version"], None).finish(5);
    assert!(run.status.success(), "{run:#?}");
    assert_eq!(
        run.stdout.first().map(String::as_str),
        Some(concat!("wsloop ", env!("CARGO_PKG_VERSION"))),
        "{run:#?}"
    );
    let features = run.stdout.get(1).cloned().unwrap_or_default();
    let codec = if cfg!(feature = "nanoserde") {
        "nanoserde"
    } else {
        "serde"
    };
    assert!(
        features.starts_with("features:") && features.split(' ').any(|f| f == codec),
        "{run:#?}"
    );
    assert_eq!(
        features.split(' ').any(|f| f == "signals"),
        cfg!(feature = "signals"),
        "{run:#?}"
    );
}

#[cfg(feature = "json-logs")]
#[test]
fn json_log_lines_parse_and_carry_a_timestamp() {
    let (mut server, addr) = start_server("server", &["server", "--log-format", "json"]);
    let mut ws = raw_upgrade(addr);
    close_with(&mut ws, b"done \"here\"\n");
    server.wait_for_stderr(10, "the disconnect line", |l| l.contains("disconnected"));
    let seen = server.stderr_seen().to_vec();
    assert!(seen.len() >= 2, "{seen:#?}");
    for line in &seen {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let field = |name: &str| value[name].as_str().unwrap_or_default().to_string();
        assert!(is_rfc3339(&field("time")), "{line}");
        assert!(["INFO", "WARN", "ERROR", "DEBUG", "TRACE"].contains(&field("level").as_str()));
        assert!(field("target").starts_with("wsloop"), "{line}");
        assert!(!field("message").is_empty(), "{line}");
    }
    let last: serde_json::Value = serde_json::from_str(&seen[seen.len() - 1]).expect("JSON");
    let message = last["message"].as_str().unwrap_or_default();
    assert!(message.contains(r#"done \"here\"\n"#), "{message}");
}

#[cfg(not(feature = "json-logs"))]
#[test]
fn json_logs_are_refused_without_the_feature() {
    let run = Proc::wsloop("server", &["server", "--log-format", "json"], None).finish(5);
    assert_eq!(run.status.code(), Some(2), "{run:#?}");
    let first = run.stderr.first().map(String::as_str).unwrap_or_default();
    assert!(
        first.contains("needs the `json-logs` Cargo feature"),
        "{run:#?}"
    );
}
