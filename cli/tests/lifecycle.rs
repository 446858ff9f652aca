//! The connection lifecycle hooks: `Handler::on_connect` and
//! `Handler::on_disconnect` bracket every connection exactly once, on the
//! server side and on the (reconnecting) client side, over real sockets.

use std::sync::Arc;
use std::time::Duration;

use async_channel::{Receiver, Sender};
use futures_lite::StreamExt;
use smol::Executor;
use wsloop::client::{Client, ClientOptions};
use wsloop::{Config, Ended, Error, Handler, Message, Peer, CLOSE_GOING_AWAY};

mod common;

use common::{bounded, ws_connect, TestServer};

/// What a hook saw: which hook, for which connection, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Hook {
    Connect(u64),
    Disconnect(u64, Result<Ended, String>),
}

/// The seed's handler that reports every hook call on a channel.
struct Recorder(Sender<Hook>);

impl Handler for Recorder {
    async fn on_message(&self, _: &Peer, message: Message) -> Option<Message> {
        Some(message.seed_reply())
    }

    fn on_connect(&self, peer: &Peer) {
        let _ = self.0.try_send(Hook::Connect(peer.id()));
    }

    fn on_disconnect(&self, peer: &Peer, how: &Result<Ended, Error>) {
        let how = match how {
            Ok(ended) => Ok(ended.clone()),
            Err(err) => Err(err.to_string()),
        };
        let _ = self.0.try_send(Hook::Disconnect(peer.id(), how));
    }
}

fn recorder() -> (Recorder, Receiver<Hook>) {
    let (tx, rx) = async_channel::unbounded();
    (Recorder(tx), rx)
}

#[test]
fn the_server_calls_each_hook_once_per_connection() {
    let (handler, hooks) = recorder();
    let server = TestServer::start_with(Config::default(), None, handler);
    bounded(20, async {
        for _ in 0..2 {
            let mut ws = ws_connect(server.addr).await;
            let Ok(Hook::Connect(id)) = hooks.recv().await else {
                panic!("expected a connect first");
            };
            let reply = common::request(&mut ws, 1, "hi").await;
            assert!(reply.success);
            ws.close(None).await.expect("close");
            while let Some(Ok(_)) = ws.next().await {}
            let ended = hooks.recv().await.expect("a disconnect");
            assert!(
                matches!(&ended, Hook::Disconnect(gone, Ok(Ended::PeerClosed(_))) if *gone == id),
                "{ended:?}"
            );
        }
        // Nothing more: each hook came exactly once per connection.
        assert!(hooks.is_empty(), "{:?}", hooks.try_recv());
    });
}

#[test]
fn the_client_calls_each_hook_once_per_connection_across_reconnects() {
    let server = TestServer::start(Config::default());
    let ex = Arc::new(Executor::new());
    let (handler, hooks) = recorder();
    let mut options = ClientOptions::new(server.addr.to_string());
    options.reconnect.initial_delay = Duration::from_millis(50);
    bounded(
        20,
        ex.run(async {
            let client = Client::connect(&ex, options, handler)
                .await
                .expect("connect");
            let Ok(Hook::Connect(first)) = hooks.recv().await else {
                panic!("expected a connect first");
            };
            // The client's hook can run before the server's task has
            // registered the connection: wait for it, as push.rs does.
            while server.hub.is_empty() {
                smol::Timer::after(Duration::from_millis(5)).await;
            }
            // The server drops every connection: the client sees it end, then
            // connects again under a new connection id.
            // (Not `close_all`: that is shutdown, and refuses newcomers too.)
            server
                .hub
                .peers()
                .iter()
                .for_each(|p| p.close(CLOSE_GOING_AWAY, ""));
            match hooks.recv().await {
                Ok(Hook::Disconnect(id, Ok(Ended::PeerClosed(Some((code, _)))))) => {
                    assert_eq!((id, code), (first, CLOSE_GOING_AWAY));
                }
                other => panic!("expected the first disconnect, got {other:?}"),
            }
            let Ok(Hook::Connect(second)) = hooks.recv().await else {
                panic!("expected a second connect");
            };
            assert_ne!(first, second);
            let reply = client.request("hi").await;
            let reply = reply.unwrap_or_else(|e| panic!("{e}: {:?}", hooks.try_recv()));
            assert!(reply.success);
            client.close().await.expect("close");
            match hooks.recv().await {
                Ok(Hook::Disconnect(id, Ok(Ended::Closed(_)))) => assert_eq!(id, second),
                other => panic!("expected the last disconnect, got {other:?}"),
            }
            assert!(hooks.is_empty(), "{:?}", hooks.try_recv());
        }),
    );
}
