//! Tests that attack the server: origin and token checks, connection and
//! rate limits, slowloris, floods, oversized and malformed frames, and
//! connection churn — each while checking the server stays healthy.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use smol::Executor;
use wsloop::{AccessPolicy, Config, Message, Peer, Server};

/// Starts a server with an access policy on its own thread; returns its
/// address and a guard that stops it.
struct PolicyServer {
    addr: SocketAddr,
    hub: Arc<wsloop::Hub>,
    _stop: async_channel::Sender<()>,
}

fn start_with_access(config: Config, access: AccessPolicy) -> PolicyServer {
    let (stop, stopped) = async_channel::bounded::<()>(1);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let ex = Arc::new(Executor::new());
        smol::block_on(ex.run(async {
            let server = Server::bind("127.0.0.1:0", config)
                .await?
                .with_access(access);
            let _ = ready_tx.send((server.local_addr()?, server.hub()));
            let seed = |_: &Peer, m: Message| Some(m.seed_reply());
            server
                .run(&ex, seed, async {
                    let _ = stopped.recv().await;
                })
                .await
        }))
    });
    let (addr, hub) = ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("server started");
    PolicyServer {
        addr,
        hub,
        _stop: stop,
    }
}

/// An upgrade request with extra header lines.
fn upgrade_request(addr: SocketAddr, target: &str, extra: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Sends a request and returns the whole response (head and body).
fn exchange(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream.write_all(request.as_bytes()).expect("send");
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buf[..n]);
        if response.starts_with(b"HTTP/1.1 101") && response.ends_with(b"\r\n\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&response).into_owned()
}

#[test]
fn cross_site_origins_get_403_with_the_compared_values() {
    let server = start_with_access(Config::default(), AccessPolicy::default());
    let addr = server.addr;
    let evil = exchange(
        addr,
        &upgrade_request(addr, "/server", "Origin: http://evil.test\r\n"),
    );
    assert!(evil.starts_with("HTTP/1.1 403"), "{evil}");
    assert!(
        evil.contains("http://evil.test") && evil.contains(&addr.to_string()),
        "{evil}"
    );

    let same = format!("Origin: http://{addr}\r\n");
    let ok = exchange(addr, &upgrade_request(addr, "/server", &same));
    assert!(ok.starts_with("HTTP/1.1 101"), "{ok}");
    let no_origin = exchange(addr, &upgrade_request(addr, "/server", ""));
    assert!(no_origin.starts_with("HTTP/1.1 101"), "{no_origin}");

    // Behind a proxy that rewrote Host to drop the port, --allow-origin helps.
    let allowing = start_with_access(
        Config::default(),
        AccessPolicy::default()
            .with_allowed_origins(vec!["http://example:8080".into()])
            .with_allowed_hosts(vec!["example".into()]),
    );
    let proxied = upgrade_request(allowing.addr, "/server", "Origin: http://example:8080\r\n")
        .replace(&format!("Host: {}", allowing.addr), "Host: example");
    let ok = exchange(allowing.addr, &proxied);
    assert!(ok.starts_with("HTTP/1.1 101"), "{ok}");
}

#[test]
fn a_token_is_required_when_configured() {
    let access = AccessPolicy::default().with_token("correct horse");
    let server = start_with_access(Config::default(), access);
    let addr = server.addr;
    let missing = exchange(addr, &upgrade_request(addr, "/server", ""));
    assert!(missing.starts_with("HTTP/1.1 401"), "{missing}");
    let wrong = exchange(
        addr,
        &upgrade_request(addr, "/server", "Authorization: Bearer wrong\r\n"),
    );
    assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
    let bearer = exchange(
        addr,
        &upgrade_request(addr, "/server", "Authorization: Bearer correct horse\r\n"),
    );
    assert!(bearer.starts_with("HTTP/1.1 101"), "{bearer}");
    let query = exchange(
        addr,
        &upgrade_request(addr, "/server?token=correct%20horse", ""),
    );
    assert!(query.starts_with("HTTP/1.1 101"), "{query}");
}

#[test]
fn our_client_sends_the_token_and_reports_a_refusal_with_its_reason() {
    let access = AccessPolicy::default().with_token("correct horse");
    let server = start_with_access(Config::default(), access);
    let options =
        |token: &str| wsloop::client::ClientOptions::new(server.addr.to_string()).with_token(token);
    let ex = Executor::new();
    bounded(
        20,
        ex.run(async {
            // The wrong token: the 401 and the server's one-line reason.
            let refused = wsloop::client::Client::connect(&ex, options("wrong"), seed).await;
            let why = refused.err().expect("refused").to_string();
            assert!(
                why.contains("401 Unauthorized: missing or wrong token"),
                "{why}"
            );

            // The right one: a round trip through our handshake.
            let client = wsloop::client::Client::connect(&ex, options("correct horse"), seed)
                .await
                .expect("connects with the token");
            let reply = client.request("with a token").await.expect("reply");
            assert_eq!(
                reply.some_other_thing,
                "Command 'with a token' processed successfully."
            );
            client.close().await.expect("clean close");

            // A token that would inject a header never reaches the wire.
            let injected =
                wsloop::client::Client::connect(&ex, options("x\r\nX-Evil: 1"), seed).await;
            assert!(
                matches!(injected, Err(wsloop::Error::Config(_))),
                "{:?}",
                injected.err()
            );
        }),
    );
}

#[test]
fn connections_past_the_limit_get_503_before_the_upgrade() {
    let access = AccessPolicy::default().with_max_connections(2);
    let server = start_with_access(Config::default(), access);
    let _first = raw_upgrade(server.addr);
    let _second = raw_upgrade(server.addr);
    wait_until(5, "two connections", || server.hub.len() == 2);
    let third = exchange(server.addr, &upgrade_request(server.addr, "/server", ""));
    assert!(third.starts_with("HTTP/1.1 503"), "{third}");
    drop(_first);
    wait_until(5, "a slot to free", || server.hub.len() == 1);
    let again = exchange(server.addr, &upgrade_request(server.addr, "/server", ""));
    assert!(again.starts_with("HTTP/1.1 101"), "{again}");
}

/// Reads frames from a raw socket until a Close frame; returns its code.
fn read_close_code(stream: &mut TcpStream) -> Option<u16> {
    let mut data = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        // Parse whatever complete frames we have.
        let mut at = 0;
        while data.len() >= at + 2 {
            let opcode = data[at] & 0x0F;
            let (len, header) = match data[at + 1] & 0x7F {
                126 if data.len() >= at + 4 => {
                    (u16::from_be_bytes([data[at + 2], data[at + 3]]) as usize, 4)
                }
                127 if data.len() >= at + 10 => {
                    let mut n = [0u8; 8];
                    n.copy_from_slice(&data[at + 2..at + 10]);
                    (u64::from_be_bytes(n) as usize, 10)
                }
                126 | 127 => break,
                n => (n as usize, 2),
            };
            if data.len() < at + header + len {
                break;
            }
            if opcode == 8 {
                let payload = &data[at + header..at + header + len];
                return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            }
            at += header + len;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
}

#[test]
fn bad_frames_get_the_right_close_codes_and_others_are_unaffected() {
    let server = TestServer::start(Config::default());
    let mut bystander = bounded(5, ws_connect(server.addr));

    // Invalid UTF-8 in a text frame: 1007.
    let mut stream = raw_upgrade(server.addr);
    stream
        .write_all(&client_frame(1, b"{\"command\":\"\xff\xfe\"}"))
        .expect("send");
    assert_eq!(read_close_code(&mut stream), Some(1007));

    // An unmasked client frame: 1002.
    let mut stream = raw_upgrade(server.addr);
    stream.write_all(b"\x81\x05hello").expect("send");
    assert_eq!(read_close_code(&mut stream), Some(1002));

    // A 100 MB message is refused from its header, before any payload: 1009.
    let mut stream = raw_upgrade(server.addr);
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&(100u64 << 20).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    stream.write_all(&header).expect("send");
    let started = Instant::now();
    assert_eq!(read_close_code(&mut stream), Some(1009));
    assert!(started.elapsed() < Duration::from_secs(2));

    let reply = bounded(5, request(&mut bystander, 1, "unaffected"));
    assert!(reply.success);
}

#[test]
fn a_flood_of_messages_or_pings_is_closed_with_1008() {
    let config = Config::default().with_max_messages_per_second(200);
    let server = TestServer::start(config);
    let mut bystander = bounded(5, ws_connect(server.addr));
    for opcode in [1u8, 9] {
        let mut stream = raw_upgrade(server.addr);
        let frame = client_frame(opcode, br#"{"requestID":1}"#);
        let burst: Vec<u8> = frame
            .iter()
            .copied()
            .cycle()
            .take(frame.len() * 1000)
            .collect();
        // The server may close while we are still writing; that is the point.
        let _ = stream.write_all(&burst);
        assert_eq!(read_close_code(&mut stream), Some(1008), "opcode {opcode}");
    }
    let reply = bounded(5, request(&mut bystander, 1, "unaffected"));
    assert!(reply.success);
}

#[test]
fn slowloris_is_dropped_after_the_handshake_timeout() {
    let config = Config::default().with_handshake_timeout(Duration::from_secs(2));
    let server = TestServer::start(config);
    let mut slow = TcpStream::connect(server.addr).expect("connect");
    slow.set_read_timeout(Some(Duration::from_millis(1)))
        .expect("timeout");
    let started = Instant::now();
    let head = upgrade_request(server.addr, "/server", "");
    let mut answer = Vec::new();
    // One byte per 300 ms: the head would take far longer than the timeout.
    for byte in head.bytes() {
        if slow.write_all(&[byte]).is_err() {
            break;
        }
        let mut buf = [0u8; 256];
        match slow.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if started.elapsed() > Duration::from_secs(6) {
            panic!("slowloris peer still connected after 6 s");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(4), "took {elapsed:?}");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // Meanwhile the server serves others normally.
    let reply = bounded(5, async {
        let mut ws = ws_connect(server.addr).await;
        request(&mut ws, 1, "fine").await
    });
    assert!(reply.success);
}

/// Open file descriptors of this process (server and clients both live here).
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count())
}

#[test]
fn two_thousand_connections_opened_and_dropped_leave_nothing_behind() {
    let server = TestServer::start(Config::default());
    // Warm up so lazily created resources (reactor, threads) exist already.
    drop(raw_upgrade(server.addr));
    wait_until(5, "warm-up connection to go", || server.hub.is_empty());
    let fds_before = open_fds();
    for round in 0..20 {
        let batch: Vec<TcpStream> = (0..100).map(|_| raw_upgrade(server.addr)).collect();
        wait_until(10, "the batch to register", || server.hub.len() == 100);
        drop(batch);
        wait_until(10, "the batch to be released", || server.hub.is_empty());
        assert!(round < 20);
    }
    let fds_after = open_fds();
    eprintln!("churn: 2000 connections; fds before {fds_before}, after {fds_after}");
    assert!(
        fds_after <= fds_before + 2,
        "fd leak: {fds_before} -> {fds_after}"
    );
}

#[test]
fn after_a_protocol_error_the_server_sends_fin_at_once() {
    let server = TestServer::start(Config::default());
    let mut stream = raw_upgrade(server.addr);
    // A frame with a reserved bit set: close 1002, then our FIN at once
    // (not after the lingering-close timeout).
    let mut frame = client_frame(1, br#"{"requestID":1}"#);
    frame[0] |= 0x40;
    stream.write_all(&frame).expect("send");
    let started = Instant::now();
    assert_eq!(read_close_code(&mut stream), Some(1002));
    let mut rest = [0u8; 64];
    loop {
        match stream.read(&mut rest) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(err) => panic!("expected EOF, got {err}"),
        }
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(500),
        "FIN after {elapsed:?}"
    );
}
