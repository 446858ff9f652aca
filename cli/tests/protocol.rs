//! The protocol layer over real sockets: raw text and binary frames beside
//! typed messages, reply routing that an `on_frame` override cannot
//! disable, topics on the hub, and a server and a client speaking the
//! application's own serde types through `Json<T>`.

use std::time::Duration;

use async_tungstenite::tungstenite::Message as Frame;
use futures_lite::StreamExt;
use wsloop::{Config, Frame as WsFrame, Handler, Message, Peer};

mod common;

use common::{bounded, next_message, ws_connect, TestServer, Ws};

/// The next data frame, raw.
async fn next_frame(ws: &mut Ws) -> Frame {
    loop {
        match ws.next().await {
            Some(Ok(frame @ (Frame::Text(_) | Frame::Binary(_)))) => return frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a data frame, got {other:?}"),
        }
    }
}

/// Connects and waits until the server has registered the connection;
/// returns it with its id on the server.
async fn connect_registered(server: &TestServer) -> (Ws, u64) {
    let before: Vec<u64> = server.hub.peers().iter().map(Peer::id).collect();
    let ws = ws_connect(server.addr).await;
    loop {
        let fresh = server
            .hub
            .peers()
            .iter()
            .map(Peer::id)
            .find(|id| !before.contains(id));
        if let Some(id) = fresh {
            return (ws, id);
        }
        smol::Timer::after(Duration::from_millis(5)).await;
    }
}

#[test]
fn raw_text_and_binary_frames_go_out_beside_typed_messages() {
    let server = TestServer::start(Config::default());
    bounded(20, async {
        let (mut ws, id) = connect_registered(&server).await;
        let peer = server.hub.get(id).expect("the peer is live");
        peer.send_text("plain text, not JSON").expect("queued");
        peer.send_binary(vec![0u8, 159, 146, 150]).expect("queued");
        peer.send(Message::request(5, "typed")).expect("queued");
        // In queue order, each as it was given.
        assert_eq!(
            next_frame(&mut ws).await,
            Frame::text("plain text, not JSON")
        );
        assert_eq!(
            next_frame(&mut ws).await,
            Frame::binary(vec![0u8, 159, 146, 150])
        );
        let typed = next_message(&mut ws).await;
        assert_eq!((typed.request_id, typed.command.as_str()), (5, "typed"));
    });
}

#[test]
fn broadcast_frame_reaches_every_peer_with_the_same_bytes() {
    let server = TestServer::start(Config::default());
    bounded(20, async {
        let (mut a, _) = connect_registered(&server).await;
        let (mut b, _) = connect_registered(&server).await;
        let taken = server
            .hub
            .broadcast_frame(Frame::binary(b"\x01\x02".to_vec()));
        assert_eq!(taken, 2);
        for ws in [&mut a, &mut b] {
            assert_eq!(next_frame(ws).await, Frame::binary(b"\x01\x02".to_vec()));
        }
    });
}

/// A handler that speaks raw text for its own frames: it never decodes
/// JSON, and routes replies to its requests with `Peer::route_reply`.
struct Shouter;

impl Handler for Shouter {
    async fn on_message(&self, _: &Peer, _: Message) -> Option<Message> {
        None
    }

    async fn on_frame(&self, peer: &Peer, frame: WsFrame) -> Option<WsFrame> {
        let frame = peer.route_reply(frame)?;
        let text = frame.into_text().ok()?;
        Some(WsFrame::text(text.to_uppercase()))
    }
}

#[test]
fn an_on_frame_override_still_gets_replies_to_its_requests() {
    let server = TestServer::start_with(Config::default(), None, Shouter);
    bounded(20, async {
        let (mut ws, id) = connect_registered(&server).await;
        // Its own frames: raw text in, raw text out.
        ws.send(Frame::text("hello")).await.expect("send");
        assert_eq!(next_frame(&mut ws).await, Frame::text("HELLO"));

        // The server asks the peer; the peer answers like the seed.
        let hub = server.hub.clone();
        let asking = smol::spawn(async move { hub.request(id, "status?").await });
        let request = next_message(&mut ws).await;
        assert_eq!(request.command, "status?");
        let reply = wsloop::encode(&request.seed_reply());
        ws.send(Frame::text(reply)).await.expect("send reply");
        let reply = asking.await.expect("the reply reached the request");
        assert!(reply.success, "{reply:?}");
        assert_eq!(
            reply.some_other_thing,
            "Command 'status?' processed successfully."
        );

        // And the override still sees its own frames afterwards.
        ws.send(Frame::text("again")).await.expect("send");
        assert_eq!(next_frame(&mut ws).await, Frame::text("AGAIN"));
    });
}

/// Today's API, unannotated: a seed client whose handler is a channel
/// (the protocol is inferred as the seed's) gets the server's pushes.
#[test]
fn a_channel_is_still_a_seed_clients_handler() {
    use std::sync::Arc;

    use wsloop::client::{Client, ClientOptions};

    let server = TestServer::start(Config::default());
    let ex = Arc::new(smol::Executor::new());
    bounded(
        20,
        ex.run(async {
            let (pushes_tx, pushes) = async_channel::unbounded::<Message>();
            let options = ClientOptions::new(server.addr.to_string());
            let client = Client::connect(&ex, options, pushes_tx)
                .await
                .expect("connect");
            while server.hub.is_empty() {
                smol::Timer::after(Duration::from_millis(5)).await;
            }
            assert_eq!(server.hub.broadcast(&Message::request(3, "pushed")), 1);
            let pushed = pushes.recv().await.expect("the push");
            assert_eq!((pushed.request_id, pushed.command.as_str()), (3, "pushed"));
            client
                .send(Message::request(4, "typed as before"))
                .expect("queued");
            client.close().await.expect("close");
        }),
    );
}

#[cfg(feature = "topics")]
#[test]
fn publish_reaches_the_subscribers_only_and_ends_with_the_connection() {
    use common::wait_until;

    let server = TestServer::start(Config::default());
    bounded(20, async {
        let (mut a, id_a) = connect_registered(&server).await;
        let (mut b, id_b) = connect_registered(&server).await;
        let (mut c, id_c) = connect_registered(&server).await;
        let hub = &server.hub;
        assert!(hub.subscribe(id_a, "news"));
        assert!(hub.subscribe(id_b, "news"));
        assert!(!hub.subscribe(id_b, "news"), "subscribed twice");
        assert!(hub.subscribe(id_c, "sport"));
        assert!(!hub.subscribe(9999, "news"), "no such connection");
        assert_eq!(hub.subscribers("news"), vec![id_a, id_b]);

        let taken = hub.publish("news", &Message::request(0, "headline"));
        assert_eq!(taken, 2);
        for ws in [&mut a, &mut b] {
            assert_eq!(next_message(ws).await.command, "headline");
        }
        assert_eq!(hub.publish_frame("sport", Frame::text("goal")), 1);
        assert_eq!(next_frame(&mut c).await, Frame::text("goal"));

        // Unsubscribing and leaving both end a subscription.
        assert!(hub.unsubscribe(id_a, "news"));
        assert!(!hub.unsubscribe(id_a, "news"));
        b.close(None).await.expect("close");
        while let Some(Ok(_)) = b.next().await {}
        wait_until(10, "the server to drop b", || hub.get(id_b).is_none());
        assert!(hub.subscribers("news").is_empty());
        assert_eq!(hub.publish("news", &Message::request(0, "nobody")), 0);

        // `a` got nothing more: the next frame it sees is this broadcast.
        hub.broadcast_frame(Frame::text("last"));
        assert_eq!(next_frame(&mut a).await, Frame::text("last"));
    });
}

/// The application's own types for the typed tests.
#[cfg(feature = "serde")]
mod typed {
    use wsloop::{Correlated, DecodeError};

    /// One message of a tiny key-value protocol.
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(tag = "op", rename_all = "snake_case")]
    pub enum Kv {
        Get { seq: i64, key: String },
        Value { seq: i64, value: Option<String> },
        Oops { seq: i64, why: String },
        Changed { key: String },
    }

    impl Correlated for Kv {
        const ID_FIELD: &'static str = "seq";

        fn correlation_id(&self) -> Option<i64> {
            match self {
                Kv::Get { seq, .. } | Kv::Value { seq, .. } | Kv::Oops { seq, .. } => Some(*seq),
                Kv::Changed { .. } => None,
            }
        }

        fn set_correlation_id(&mut self, id: i64) {
            if let Kv::Get { seq, .. } | Kv::Value { seq, .. } | Kv::Oops { seq, .. } = self {
                *seq = id;
            }
        }

        fn is_reply(&self) -> bool {
            matches!(self, Kv::Value { .. } | Kv::Oops { .. })
        }

        fn error_reply(error: &DecodeError) -> Option<Self> {
            Some(Kv::Oops {
                seq: error.request_id.unwrap_or(0),
                why: error.to_string(),
            })
        }
    }
}

#[cfg(feature = "serde")]
#[test]
fn a_json_server_and_client_speak_the_applications_own_types() {
    use std::sync::Arc;

    use smol::Executor;
    use typed::Kv;
    use wsloop::client::{Client, ClientOptions};
    use wsloop::{Json, Server};

    type P = Json<Kv>;
    let ex = Arc::new(Executor::new());
    bounded(
        20,
        ex.run(async {
            let server = Server::bind("127.0.0.1:0", Config::default())
                .await
                .expect("bind")
                .speaking::<P>();
            let addr = server.local_addr().expect("addr");
            let hub = server.hub();
            let answer = |_: &Peer<P>, request: Kv| match request {
                Kv::Get { seq, key } => Some(Kv::Value {
                    seq,
                    value: (key == "colour").then(|| "blue".to_string()),
                }),
                _ => None,
            };
            let (stop, stopped) = async_channel::bounded::<()>(1);
            let spawner = ex.clone();
            let running = ex.spawn(async move {
                let stop = async move {
                    let _ = stopped.recv().await;
                };
                server.run(&spawner, answer, stop).await
            });

            // The client's handler gets what the server pushes.
            let (pushes_tx, pushes) = async_channel::unbounded::<Kv>();
            let options = ClientOptions::new(addr.to_string());
            let client: Client<P> = Client::connect(&ex, options, pushes_tx)
                .await
                .expect("connect");
            // A request stamped with a fresh `seq`, answered under it.
            let reply = client
                .request_message(Kv::Get {
                    seq: 0,
                    key: "colour".into(),
                })
                .await
                .expect("a reply");
            let Kv::Value { seq, value } = reply else {
                panic!("unexpected reply {reply:?}");
            };
            assert!(seq > 0);
            assert_eq!(value.as_deref(), Some("blue"));

            // A typed push to every client, encoded once.
            while hub.is_empty() {
                smol::Timer::after(Duration::from_millis(5)).await;
            }
            let changed = Kv::Changed {
                key: "colour".into(),
            };
            assert_eq!(hub.broadcast(&changed), 1);
            assert_eq!(pushes.recv().await.expect("a push"), changed);

            // The server asks the client too; the client's handler (a
            // channel) answers nothing, so the request times out... unless
            // the client replies itself: here it answers through `send`.
            let id = hub.peers()[0].id();
            let asking = {
                let hub = hub.clone();
                ex.spawn(async move {
                    let get = Kv::Get {
                        seq: 0,
                        key: "who".into(),
                    };
                    hub.request_message(id, get).await
                })
            };
            let Kv::Get { seq, .. } = pushes.recv().await.expect("the request") else {
                panic!("expected the server's request");
            };
            let me = Kv::Value {
                seq,
                value: Some("client".into()),
            };
            client.send(me.clone()).expect("queued");
            assert_eq!(asking.await.expect("the reply"), me);

            client.close().await.expect("close");
            drop(stop);
            running.await.expect("server ran");
        }),
    );
}

#[cfg(feature = "serde")]
#[test]
fn a_malformed_json_message_gets_the_protocols_error_reply() {
    use std::sync::Arc;

    use smol::Executor;
    use typed::Kv;
    use wsloop::{Json, Server};

    type P = Json<Kv>;
    let ex = Arc::new(Executor::new());
    bounded(
        20,
        ex.run(async {
            let server = Server::bind("127.0.0.1:0", Config::default())
                .await
                .expect("bind")
                .speaking::<P>();
            let addr = server.local_addr().expect("addr");
            let (stop, stopped) = async_channel::bounded::<()>(1);
            let none = |_: &Peer<P>, _: Kv| None;
            let spawner = ex.clone();
            let running = ex.spawn(async move {
                let stop = async move {
                    let _ = stopped.recv().await;
                };
                server.run(&spawner, none, stop).await
            });
            let mut ws = ws_connect(addr).await;
            // Valid JSON with a `seq`, but no such op: the id is salvaged.
            ws.send(Frame::text(r#"{"op":"fly","seq":41}"#))
                .await
                .expect("send");
            let Frame::Text(text) = next_frame(&mut ws).await else {
                panic!("expected text");
            };
            let reply: serde_json::Value = serde_json::from_str(&text).expect("JSON reply");
            assert_eq!(reply["op"], "oops", "{text}");
            assert_eq!(reply["seq"], 41, "{text}");
            assert!(
                reply["why"]
                    .as_str()
                    .is_some_and(|why| why.contains("line 1")),
                "{text}"
            );
            drop(ws);
            drop(stop);
            running.await.expect("server ran");
        }),
    );
}
