//! The server against real peers on 127.0.0.1: the persistent-loop property,
//! concurrency, heartbeat, bad input, vanishing peers and shutdown.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::CloseFrame;
use async_tungstenite::tungstenite::Message as Frame;
#[cfg(feature = "static-files")]
use common::fs::TempDir;
use common::*;
use futures_lite::StreamExt;
#[cfg(feature = "static-files")]
use wsloop::http::StaticFiles;
use wsloop::{Config, Message, Peer};

#[test]
fn thousand_requests_on_one_connection_are_answered_in_order() {
    let server = TestServer::start(Config::default());
    bounded(30, async {
        let ws = ws_connect(server.addr).await;
        let (mut tx, mut rx) = ws.split();
        // Pipeline all requests while a second task reads the replies, so
        // the loop has to keep going far past the first message.
        let writer = smol::spawn(async move {
            for id in 1..=1000 {
                let text = wsloop::encode(&Message::request(id, format!("hot dog {id}")));
                tx.send(Frame::text(text)).await.expect("send");
            }
            tx
        });
        for id in 1..=1000 {
            let reply = loop {
                match rx.next().await {
                    Some(Ok(Frame::Text(t))) => {
                        break wsloop::decode(t.as_bytes()).expect("decode")
                    }
                    Some(Ok(_)) => continue,
                    other => panic!("connection ended after {} replies: {other:?}", id - 1),
                }
            };
            assert_eq!(reply.request_id, id, "replies out of order");
            assert!(reply.success);
            assert_eq!(
                reply.some_other_thing,
                format!("Command 'hot dog {id}' processed successfully.")
            );
        }
        let mut tx = writer.await;
        let normal = CloseFrame {
            code: CloseCode::Normal,
            reason: "done".into(),
        };
        tx.close(Some(normal)).await.expect("close");
        assert_eq!(next_close_reply(&mut rx).await, Some(1000));
    });
    wait_until(5, "the connection to be removed", || server.hub.is_empty());
}

#[test]
fn a_handler_that_answers_nothing_cannot_end_the_connection() {
    // The handler API has no way to end the loop: returning None only means
    // "no reply". The next request on the same connection is still served.
    let handler = |_: &Peer, m: Message| (m.command != "silent").then(|| m.seed_reply());
    let server = TestServer::start_with(Config::default(), None, handler);
    bounded(10, async {
        let mut ws = ws_connect(server.addr).await;
        let text = wsloop::encode(&Message::request(1, "silent"));
        ws.send(Frame::text(text)).await.expect("send");
        let reply = request(&mut ws, 2, "still there?").await;
        assert_eq!(reply.request_id, 2);
        assert!(reply.success);
        assert_eq!(server.hub.len(), 1);
    });
}

#[test]
fn fifty_concurrent_clients_are_never_cross_wired() {
    let server = TestServer::start(Config::default());
    let addr = server.addr;
    bounded(60, async {
        let clients: Vec<_> = (0..50)
            .map(|client| {
                smol::spawn(async move {
                    let mut ws = ws_connect(addr).await;
                    for i in 0..100 {
                        let id = client * 1000 + i;
                        let command = format!("client {client} request {i}");
                        let reply = request(&mut ws, id, &command).await;
                        assert_eq!(reply.request_id, id);
                        assert_eq!(
                            reply.some_other_thing,
                            format!("Command '{command}' processed successfully.")
                        );
                    }
                    ws.close(None).await.expect("close");
                })
            })
            .collect();
        for client in clients {
            client.await;
        }
    });
    wait_until(5, "all connections to be removed", || server.hub.is_empty());
}

#[test]
fn heartbeat_keeps_an_idle_connection_alive() {
    let config = Config::default().with_heartbeat(Duration::from_secs(1));
    let server = TestServer::start(config);
    bounded(15, async {
        let mut ws = ws_connect(server.addr).await;
        // Stay idle for 5 s but keep reading, so tungstenite answers pings.
        let mut pings = 0;
        let idle = async {
            while let Some(Ok(frame)) = ws.next().await {
                if let Frame::Ping(_) = frame {
                    pings += 1;
                }
            }
            panic!("connection ended while idle");
        };
        let _ = wsloop::timeout(Duration::from_secs(5), idle).await;
        assert!(pings >= 3, "only {pings} pings in 5 s with a 1 s heartbeat");
        let reply = request(&mut ws, 1, "after idling").await;
        assert!(reply.success);
    });
}

#[test]
fn a_silent_peer_is_dropped_within_the_idle_timeout() {
    let config = Config::default().with_heartbeat(Duration::from_secs(1));
    let idle_timeout = config.idle_timeout();
    let server = TestServer::start(config);
    // A raw TCP peer completes the handshake, then never answers a ping.
    let mut stream = raw_upgrade(server.addr);
    let start = Instant::now();
    let mut sink = [0u8; 256];
    loop {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => continue, // pings (and finally the Close frame)
        }
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed <= idle_timeout + Duration::from_secs(1),
        "dropped after {elapsed:?}"
    );
    assert!(
        elapsed >= idle_timeout - Duration::from_millis(200),
        "dropped too early: {elapsed:?}"
    );
    wait_until(5, "the silent peer to be removed", || server.hub.is_empty());
}

#[test]
fn malformed_messages_get_error_replies_and_the_connection_lives_on() {
    let server = TestServer::start(Config::default());
    bounded(10, async {
        let mut ws = ws_connect(server.addr).await;

        // Truncated JSON: no id can be read, so the reply carries 0.
        ws.send(Frame::text(r#"{"requestID":7,"command":"#))
            .await
            .expect("send");
        let reply = next_message(&mut ws).await;
        assert_eq!(reply.request_id, 0);
        assert!(!reply.success);
        assert!(reply.error.contains("line 1 column"), "{}", reply.error);

        // Valid JSON with a wrong type: the id is salvaged.
        ws.send(Frame::text(r#"{"requestID":8,"success":"yes"}"#))
            .await
            .expect("send");
        let reply = next_message(&mut ws).await;
        assert_eq!(reply.request_id, 8);
        assert!(!reply.success && !reply.error.is_empty());

        ws.send(Frame::text("not json at all")).await.expect("send");
        assert!(!next_message(&mut ws).await.success);

        // A binary frame is decoded like a text frame.
        let json = wsloop::encode(&Message::request(9, "binary"));
        ws.send(Frame::binary(json.into_bytes()))
            .await
            .expect("send");
        let reply = next_message(&mut ws).await;
        assert_eq!((reply.request_id, reply.success), (9, true));

        // And the same connection still serves ordinary requests.
        let reply = request(&mut ws, 10, "still fine").await;
        assert_eq!((reply.request_id, reply.success), (10, true));
    });
}

#[test]
fn an_oversized_message_is_closed_with_1009_and_others_are_unaffected() {
    let config = Config::default().with_max_message_size(1024);
    let server = TestServer::start(config);
    bounded(10, async {
        let mut bystander = ws_connect(server.addr).await;
        let mut ws = ws_connect(server.addr).await;
        let big = format!(r#"{{"requestID":1,"command":"{}"}}"#, "x".repeat(2000));
        ws.send(Frame::text(big)).await.expect("send");
        assert_eq!(next_close_code(&mut ws).await, Some(1009));

        let reply = request(&mut bystander, 2, "unaffected").await;
        assert!(reply.success);
    });
    wait_until(5, "the oversized peer to be removed", || {
        server.hub.len() <= 1
    });
}

#[test]
fn bad_http_gets_4xx_while_a_websocket_client_keeps_working() {
    #[cfg(feature = "static-files")]
    let (_www, files) = {
        let www = TempDir::new("bad-http");
        std::fs::write(www.join("index.html"), "hello").expect("write index");
        let files = StaticFiles::from_dir(&www).expect("www dir");
        (www, Some(files))
    };
    // A build without static files serves the built-in page.
    #[cfg(not(feature = "static-files"))]
    let files = None;
    let server = TestServer::start_with(Config::default(), files, seed);
    let addr = server.addr;
    let mut ws = bounded(5, ws_connect(addr));
    let mut id = 0;
    let mut check_ws = || {
        id += 1;
        let reply = bounded(5, request(&mut ws, id, "still here"));
        assert_eq!((reply.request_id, reply.success), (id, true));
    };

    assert_eq!(get(addr, "/"), 200);
    check_ws();
    assert_eq!(http_status(addr, b"\x16\x03\x01garbage\r\n\r\n"), 400);
    assert_eq!(
        http_status(addr, b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"),
        400
    );
    check_ws();
    for traversal in [
        "/../etc/passwd",
        "/%2e%2e/etc/passwd",
        "/a/..%2f..%2fetc/passwd",
    ] {
        // The built-in page alone has no directory to escape: plain 404.
        let refused = if cfg!(feature = "static-files") {
            403
        } else {
            404
        };
        assert_eq!(get(addr, traversal), refused, "{traversal}");
    }
    assert_eq!(get(addr, "/%252e%252e/etc/passwd"), 404);
    check_ws();
    assert_eq!(
        http_status(addr, b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
        405
    );
    let upgrade_elsewhere = format!(
        "GET /elsewhere HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    assert_eq!(http_status(addr, upgrade_elsewhere.as_bytes()), 404);
    let huge_head = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(10_000));
    assert_eq!(http_status(addr, huge_head.as_bytes()), 431);
    check_ws();
}

#[test]
fn a_peer_vanishing_mid_frame_ends_only_its_own_connection() {
    let server = TestServer::start(Config::default());
    let mut bystander = bounded(5, ws_connect(server.addr));
    for round in 0..20 {
        let mut stream = raw_upgrade(server.addr);
        // One whole request, whose reply we leave unread, then half a frame.
        let request = wsloop::encode(&Message::request(round, "vanish"));
        stream
            .write_all(&client_frame(1, request.as_bytes()))
            .expect("send");
        wait_until(5, "the request to be answered", || {
            server.hub.peers().iter().any(|p| p.sent() == 1)
        });
        stream
            .write_all(&client_frame(1, b"{\"requestID\":1}")[..4])
            .expect("send");
        // Closing with unread data makes the kernel send a TCP reset.
        drop(stream);
        wait_until(5, "the vanished peer to be removed", || {
            server.hub.len() == 1
        });
    }
    let reply = bounded(5, request(&mut bystander, 99, "survived"));
    assert!(reply.success);
    assert_eq!(server.hub.len(), 1, "connections leaked");
}

#[test]
fn graceful_shutdown_sends_close_1001() {
    let mut server = TestServer::start(Config::default());
    let mut ws = bounded(5, ws_connect(server.addr));
    assert!(bounded(5, request(&mut ws, 1, "before shutdown")).success);
    let shutdown = std::thread::spawn(move || server.shutdown());
    assert_eq!(bounded(10, next_close_code(&mut ws)), Some(1001));
    shutdown
        .join()
        .expect("shutdown thread")
        .expect("server returned an error");
}

/// Reads the receiving half until the server's Close reply; returns its code.
async fn next_close_reply(
    rx: &mut async_tungstenite::WebSocketReceiver<smol::net::TcpStream>,
) -> Option<u16> {
    while let Some(Ok(frame)) = rx.next().await {
        if let Frame::Close(frame) = frame {
            return frame.map(|f| u16::from(f.code));
        }
    }
    None
}
