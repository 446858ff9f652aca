//! Request/response correlation, server push through the hub, the slow
//! consumer policy, and the reconnecting client across server restarts —
//! all against real peers on 127.0.0.1.

mod common;

use std::collections::HashSet;
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_tungstenite::tungstenite::Message as Frame;
use common::*;
use smol::Executor;
use wsloop::client::{Client, ClientOptions, Reconnect};
use wsloop::{Config, Message, Peer, RequestError};

/// A client handler that answers pushed commands like the Go client.
fn answer(_: &Peer, pushed: Message) -> Option<Message> {
    Some(pushed.seed_reply())
}

fn fast_reconnect(address: SocketAddr) -> ClientOptions {
    ClientOptions::new(address.to_string()).with_reconnect(
        Reconnect::default()
            .with_initial_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_millis(200)),
    )
}

#[test]
fn many_requests_in_flight_are_matched_even_when_answered_out_of_order() {
    // This server collects ten requests, then answers them in reverse order,
    // plus one reply that matches no request at all.
    let held = Arc::new(Mutex::new(Vec::new()));
    let handler = {
        let held = held.clone();
        move |peer: &Peer, request: Message| {
            let mut held = held.lock().expect("lock");
            held.push(request);
            if held.len() == 10 {
                let stray = Message {
                    request_id: 999_999,
                    success: true,
                    ..Message::default()
                };
                peer.send(stray).expect("queue stray reply");
                for request in held.drain(..).rev() {
                    peer.send(request.seed_reply()).expect("queue reply");
                }
            }
            None
        }
    };
    let server = TestServer::start_with(Config::default(), None, handler);
    let ex = Executor::new();
    bounded(
        20,
        ex.run(async {
            let client = Client::connect(&ex, ClientOptions::new(server.addr.to_string()), answer)
                .await
                .expect("connect");
            let pending: Vec<_> = (0..10)
                .map(|i| client.start_request(format!("order {i}")).expect("queue"))
                .collect();
            for (i, request) in pending.into_iter().enumerate() {
                let id = request.id();
                let reply = request.wait().await.expect("reply");
                assert_eq!(reply.request_id, id);
                assert_eq!(
                    reply.some_other_thing,
                    format!("Command 'order {i}' processed successfully.")
                );
            }
            assert_eq!(client.session().outstanding(), 0);
            client.close().await.expect("close");
        }),
    );
}

#[test]
fn a_request_without_reply_times_out() {
    let silent = |_: &Peer, _: Message| None;
    let server = TestServer::start_with(Config::default(), None, silent);
    let ex = Executor::new();
    let mut options = ClientOptions::new(server.addr.to_string());
    options.config.request_timeout = Duration::from_millis(300);
    bounded(
        10,
        ex.run(async {
            let client = Client::connect(&ex, options, answer)
                .await
                .expect("connect");
            assert_eq!(client.request("anyone?").await, Err(RequestError::Timeout));
            assert_eq!(
                client.session().outstanding(),
                0,
                "timed-out request forgotten"
            );
            client.close().await.expect("close");
        }),
    );
}

#[test]
fn the_hub_pushes_commands_and_awaits_each_clients_reply() {
    let server = TestServer::start(Config::default());
    let ex = Executor::new();
    bounded(
        20,
        ex.run(async {
            let first = Client::connect(&ex, ClientOptions::new(server.addr.to_string()), answer)
                .await
                .expect("connect");
            let second = Client::connect(&ex, ClientOptions::new(server.addr.to_string()), answer)
                .await
                .expect("connect");
            // Wait until the server has registered both connections.
            while server.hub.len() < 2 {
                smol::Timer::after(Duration::from_millis(5)).await;
            }

            // Push to one client by id.
            let target = server.hub.peers()[0].id();
            let reply = server.hub.request(target, "Eject the hot dog 7.").await;
            let reply = reply.expect("client replied");
            assert!(reply.success);
            assert_eq!(
                reply.some_other_thing,
                "Command 'Eject the hot dog 7.' processed successfully."
            );

            // Broadcast to all and collect every reply.
            let pending = server.hub.broadcast_request("all hands");
            assert_eq!(pending.len(), 2);
            for (_, request) in pending {
                let reply = request.expect("queued").wait().await.expect("reply");
                assert_eq!(
                    reply.some_other_thing,
                    "Command 'all hands' processed successfully."
                );
            }

            // The clients' own requests still work alongside pushes.
            assert!(first.request("mine").await.expect("reply").success);
            first.close().await.expect("close");
            second.close().await.expect("close");
        }),
    );
    wait_until(5, "both clients to be removed", || server.hub.is_empty());
}

#[test]
fn a_client_that_stops_reading_is_dropped_without_holding_back_a_broadcast() {
    let config = Config::default()
        .with_outbound_capacity(8)
        .with_write_timeout(Duration::from_secs(1));
    let server = TestServer::start(config);
    // The stuck client completes the handshake and never reads again.
    let mut stuck = raw_upgrade(server.addr);
    let mut reader = bounded(5, ws_connect(server.addr));
    wait_until(5, "both connections to register", || server.hub.len() == 2);

    let big = "x".repeat(64 * 1024);
    let mut delivered_to_reader = 0;
    for i in 0..400 {
        let message = Message::request(i, big.as_str());
        // Broadcast never blocks: it queues or, for a full queue, closes.
        server.hub.broadcast(&message);
        // The healthy client keeps reading everything it is sent.
        let got = bounded(5, next_message(&mut reader));
        assert_eq!(got.request_id, i);
        delivered_to_reader += 1;
        if server.hub.len() == 1 {
            break;
        }
    }
    wait_until(10, "the stuck client to be dropped", || {
        server.hub.len() == 1
    });
    assert!(delivered_to_reader > 0);
    // The stuck peer's socket is closed by the server.
    let mut sink = vec![0u8; 1 << 16];
    loop {
        match stuck.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => continue,
        }
    }
    let reply = bounded(5, request(&mut reader, 1, "still served"));
    assert!(reply.success);
}

#[test]
fn one_broadcast_reaches_every_client_whole_and_in_order() {
    // The hub encodes each broadcast once and shares the bytes among the
    // queues: every client must still get each message whole, in order.
    let server = TestServer::start(Config::default());
    let mut clients: Vec<_> = (0..3)
        .map(|_| bounded(5, ws_connect(server.addr)))
        .collect();
    wait_until(5, "three connections to register", || server.hub.len() == 3);
    for i in 1..=3 {
        let message = Message::request(i, format!("to all, number {i}"));
        assert_eq!(server.hub.broadcast(&message), 3);
    }
    for client in &mut clients {
        for i in 1..=3 {
            let got = bounded(5, next_message(client));
            assert_eq!(got.request_id, i);
            assert_eq!(got.command, format!("to all, number {i}"));
        }
    }
    // The shared message counts as sent on each connection.
    wait_until(5, "the sent counts", || server.hub.stats().sent >= 9);
}

/// The wsloop binary as a server on a fixed port, killed with SIGKILL.
struct KillableServer(Child);

impl KillableServer {
    fn start(addr: SocketAddr) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wsloop"))
            .args(["server", "-q", "--address", &addr.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn server");
        // The first stdout line says it is listening.
        let mut stdout = child.stdout.take().expect("stdout");
        let mut byte = [0u8; 1];
        while stdout.read(&mut byte).map(|n| n == 1).unwrap_or(false) && byte[0] != b'\n' {}
        KillableServer(child)
    }

    fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillableServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn requests_survive_three_server_restarts_answered_or_failed_never_lost() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let mut server = Some(KillableServer::start(addr));
    let ex = Executor::new();
    let (sent, answered, failed) = bounded(
        60,
        ex.run(async {
            let client = Client::connect(&ex, fast_reconnect(addr), answer)
                .await
                .expect("connect");
            let mut ids = HashSet::new();
            let (mut sent, mut answered, mut failed) = (0, 0, 0);
            let mut queued_while_down = Vec::new();
            for round in 0..4 {
                // A continuous stream of requests on the live connection.
                for i in 0..50 {
                    let request = client.start_request(format!("round {round} #{i}"));
                    let request = request.expect("queued");
                    sent += 1;
                    match request.wait().await {
                        Ok(reply) => {
                            assert!(ids.insert(reply.request_id), "duplicate reply");
                            answered += 1;
                        }
                        Err(RequestError::ConnectionLost | RequestError::Timeout) => failed += 1,
                        Err(other) => panic!("unexpected failure: {other}"),
                    }
                }
                if round == 3 {
                    break;
                }
                // Kill the server; one request in flight proves the client saw it.
                let probe = client.start_request("probe").expect("queued");
                sent += 1;
                if let Some(server) = server.take() {
                    server.kill();
                }
                match probe.wait().await {
                    Ok(_) => answered += 1,
                    Err(_) => failed += 1,
                }
                // Requests made while the server is down wait in the queue...
                for i in 0..5 {
                    queued_while_down.push(client.start_request(format!("queued {round}.{i}")));
                    sent += 1;
                }
                server = Some(KillableServer::start(addr));
                // ...and are answered after the reconnect.
                for request in queued_while_down.drain(..) {
                    let reply = request.expect("queued").wait().await;
                    let reply = reply.expect("queued request answered after reconnect");
                    assert!(ids.insert(reply.request_id), "duplicate reply");
                    answered += 1;
                }
            }
            client.close().await.expect("close");
            (sent, answered, failed)
        }),
    );
    eprintln!("restart test: sent {sent}, answered {answered}, failed {failed}, lost 0");
    assert_eq!(answered + failed, sent, "a request vanished");
    assert!(answered >= 200, "too few answered: {answered}");
}

#[test]
fn a_silent_client_is_sent_only_what_it_asked_for() {
    // A raw peer that only sends: the unmatched-reply rule must not make the
    // server drop requests whose command is empty but carry no result.
    let server = TestServer::start(Config::default());
    bounded(10, async {
        let mut ws = ws_connect(server.addr).await;
        ws.send(Frame::text(r#"{"requestID":5}"#))
            .await
            .expect("send");
        let reply = next_message(&mut ws).await;
        assert_eq!(reply.request_id, 5);
        assert!(reply.success, "an empty command is still a request");
    });
}
