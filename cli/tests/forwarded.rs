//! `--trusted-proxy` end to end: real peers on 127.0.0.1 that claim a
//! forwarded address, against the binary.
#![cfg(feature = "trusted-proxy")]

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::process::start_server;

/// Opens a WebSocket by hand with `headers` added; returns the stream (kept
/// open by the caller) and the status of the answer.
fn upgrade_claiming(addr: SocketAddr, headers: &str) -> (TcpStream, u16) {
    let mut stream = TcpStream::connect(addr).expect("tcp connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = format!(
        "GET /server HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .expect("send handshake");
    let head = common::read_head(&mut stream);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (stream, status)
}

#[test]
fn the_per_ip_limit_applies_to_the_address_a_trusted_proxy_forwards() {
    let args = [
        "server",
        "--trusted-proxy",
        "127.0.0.1",
        "--max-connections-per-ip",
        "2",
    ];
    let (mut server, addr) = start_server("proxied server", &args);
    let claim = |ip: &str| format!("X-Forwarded-For: 6.6.6.6, {ip}\r\n");

    let (_a, first) = upgrade_claiming(addr, &claim("203.0.113.5"));
    let (_b, second) = upgrade_claiming(addr, &claim("203.0.113.5"));
    assert_eq!((first, second), (101, 101));
    // A third from the same claimed client is over its limit...
    let (_c, third) = upgrade_claiming(addr, &claim("203.0.113.5"));
    assert_eq!(third, 503);
    // ...while other clients behind the same proxy are not.
    let (_d, other) = upgrade_claiming(addr, &claim("203.0.113.6"));
    assert_eq!(other, 101);
    let (_e, real_ip) = upgrade_claiming(addr, "X-Real-IP: 198.51.100.9\r\n");
    assert_eq!(real_ip, 101);

    server.sigterm();
    let run = server.finish(10);
    let connected = |ip: &str| {
        run.stderr
            .iter()
            .filter(|l| l.contains(&format!("connected from {ip}:0")))
            .count()
    };
    assert_eq!(connected("203.0.113.5"), 2, "{run:#?}");
    assert_eq!(connected("203.0.113.6"), 1, "{run:#?}");
    assert_eq!(connected("198.51.100.9"), 1, "{run:#?}");
    assert!(
        !run.stderr.iter().any(|l| l.contains("6.6.6.6")),
        "forged hop used: {run:#?}"
    );
}

#[test]
fn forwarding_headers_from_an_untrusted_peer_are_ignored() {
    let args = ["server", "--max-connections-per-ip", "2"];
    let (mut server, addr) = start_server("direct server", &args);
    let (_a, first) = upgrade_claiming(addr, "X-Forwarded-For: 203.0.113.1\r\n");
    let (_b, second) = upgrade_claiming(addr, "X-Real-IP: 203.0.113.2\r\n");
    assert_eq!((first, second), (101, 101));
    // Claiming yet another address does not escape the peer's own limit.
    let (_c, third) = upgrade_claiming(addr, "Forwarded: for=203.0.113.3\r\n");
    assert_eq!(third, 503);
    server.sigterm();
    let run = server.finish(10);
    assert!(
        !run.stderr.iter().any(|l| l.contains("203.0.113.")),
        "{run:#?}"
    );
}
