//! The library's API details, each against a real server and real peers:
//! connection ids count per server, the hub lists its connections
//! oldest first whoever leaves and comes, `Hub::request` to an id that names no
//! connection says so, `Peer::close` sends its reason, and `Server::hub`
//! hands out one `Arc`.

mod common;

use common::{bounded, request, seed, wait_until, ws_connect, TestServer};
use futures_lite::StreamExt;
use std::sync::Arc;
use wsloop::client::{Client, ClientOptions};

use wsloop::{Config, Frame, RequestError, Seed, Server};

/// Each server numbers its connections 1, 2, 3, ... even when the process
/// also dials (a wsloop client's connections and the other server's do not
/// take numbers from it).
#[test]
fn connection_ids_count_per_server() {
    let a = TestServer::start(Config::default());
    let b = TestServer::start(Config::default());
    let ex = smol::Executor::new();
    bounded(
        10,
        ex.run(async {
            let mut clients = Vec::new();
            for server in [&a, &b, &a, &b, &a] {
                let options = ClientOptions::new(server.addr.to_string());
                let client = Client::connect(&ex, options, seed).await.expect("connect");
                // A round trip: the server has registered the connection.
                client.request("hello").await.expect("reply");
                clients.push(client);
            }
            let ids = |s: &TestServer| s.hub.peers().iter().map(|p| p.id()).collect::<Vec<_>>();
            assert_eq!(ids(&a), [1, 2, 3]);
            assert_eq!(ids(&b), [1, 2]);
            for client in clients {
                client.close().await.expect("close");
            }
        }),
    );
}

/// `Hub::peers` is in id order (a broadcast goes oldest first) after a
/// connection in the middle has left and another has come.
#[test]
fn the_hub_lists_connections_oldest_first() {
    let server = TestServer::start(Config::default());
    let ids = || {
        server
            .hub
            .peers()
            .iter()
            .map(|p| p.id())
            .collect::<Vec<_>>()
    };
    bounded(10, async {
        let mut sockets = Vec::new();
        for n in 0..4 {
            let mut ws = ws_connect(server.addr).await;
            // Answered: the server has registered the connection.
            request(&mut ws, n, "hi").await;
            sockets.push(ws);
        }
        assert_eq!(ids(), [1, 2, 3, 4]);
        let mut second = sockets.remove(1);
        second.close(None).await.expect("close");
        wait_until(5, "the second connection to leave the hub", || {
            ids() == [1, 3, 4]
        });
        let mut fifth = ws_connect(server.addr).await;
        request(&mut fifth, 5, "hi").await;
        assert_eq!(ids(), [1, 3, 4, 5]);
    });
}

#[test]
fn hub_request_to_an_unknown_id_says_so() {
    let server = TestServer::start(Config::default());
    bounded(10, async {
        let mut ws = ws_connect(server.addr).await;
        // The peer is registered once it has answered.
        request(&mut ws, 1, "hi").await;
        let live = server.hub.peers()[0].id();
        let unknown = live + 100;
        let err = server.hub.request(unknown, "anyone?").await.unwrap_err();
        assert_eq!(err, RequestError::UnknownPeer(unknown));
        assert_eq!(err.to_string(), format!("no connection with id {unknown}"));
    });
}

#[test]
fn peer_close_sends_its_code_and_reason() {
    let server = TestServer::start(Config::default());
    bounded(10, async {
        let mut ws = ws_connect(server.addr).await;
        request(&mut ws, 1, "hi").await;
        let peer = server.hub.peers().remove(0);
        peer.close(4000, "maintenance window");
        loop {
            match ws.next().await {
                Some(Ok(Frame::Close(Some(frame)))) => {
                    assert_eq!(u16::from(frame.code), 4000);
                    assert_eq!(frame.reason.as_str(), "maintenance window");
                    break;
                }
                Some(Ok(_)) => continue,
                other => panic!("expected a Close frame, got {other:?}"),
            }
        }
    });
}

/// `Server::hub` allocates nothing per call: every call (before and after
/// `speaking`) is the same `Arc`, and the hub sees the server's peers.
#[test]
fn server_hub_is_one_arc() {
    bounded(10, async {
        let server = Server::bind("127.0.0.1:0", Config::default())
            .await
            .expect("bind");
        assert!(Arc::ptr_eq(&server.hub(), &server.hub()));
        let server = server.speaking::<Seed>();
        let hub = server.hub();
        assert!(Arc::ptr_eq(&hub, &server.hub()));
        assert!(hub.is_empty());
    });
}
