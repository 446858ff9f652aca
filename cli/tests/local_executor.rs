//! A handler that is not `Send` (its state in `Rc<RefCell<..>>`) on smol's
//! `LocalExecutor`, through the `wsloop::Local` bridge: a server and a
//! client, over real sockets, with real WebSocket peers.

use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;

use async_channel::{Receiver, Sender};
use async_tungstenite::tungstenite::Message as Frame;
use futures_lite::future;
use futures_lite::StreamExt;
use smol::LocalExecutor;
use wsloop::client::{Client, ClientOptions};
use wsloop::{Config, Ended, Error, Local, LocalHandler, LocalSpawner, Message, Peer, Server};

mod common;

use common::{bounded, next_message, ws_connect, TestServer};

/// Clients in the server test.
const CLIENTS: i64 = 3;

/// Requests each of them sends, all at once before reading a reply.
const REQUESTS: i64 = 5;

/// Runs a `Server` on `ex` whose handler, behind the `Local` bridge, is
/// `handler`, until `use_it(addr)` is done; then stops it and checks that
/// it ended cleanly.
async fn with_local_server<H, F>(
    ex: &LocalExecutor<'_>,
    handler: H,
    use_it: impl FnOnce(SocketAddr) -> F,
) where
    H: LocalHandler,
    F: Future<Output = ()>,
{
    let server = Server::bind("127.0.0.1:0", Config::default())
        .await
        .expect("bind");
    let addr = server.local_addr().expect("addr");
    let (stop, stopped) = async_channel::bounded::<()>(1);
    let spawner = LocalSpawner::new(ex);
    let serving = server.run(&spawner, Local::new(ex, handler), async move {
        let _ = stopped.recv().await;
    });
    let using = async {
        use_it(addr).await;
        drop(stop);
    };
    let (served, ()) = future::zip(serving, using).await;
    served.expect("server run");
}

/// What the local handler saw, in the order it saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Connect(u64),
    Message(u64, i64),
    Disconnect(u64),
}

/// A handler that cannot be `Send`: it records every call in `Rc` state and
/// says on `disconnected` when a connection's loop has ended.
struct Recorder {
    seen: Rc<RefCell<Vec<Seen>>>,
    disconnected: Sender<u64>,
}

impl LocalHandler for Recorder {
    async fn on_message(&self, peer: &Peer, message: Message) -> Option<Message> {
        let seen = Seen::Message(peer.id(), message.request_id);
        self.seen.borrow_mut().push(seen);
        Some(message.seed_reply())
    }

    fn on_connect(&self, peer: &Peer) {
        self.seen.borrow_mut().push(Seen::Connect(peer.id()));
    }

    fn on_disconnect(&self, peer: &Peer, _: &Result<Ended, Error>) {
        self.seen.borrow_mut().push(Seen::Disconnect(peer.id()));
        let _ = self.disconnected.try_send(peer.id());
    }
}

/// Client `n`: sends its requests without waiting, checks that each reply
/// carries its request's id, in order, then closes.
async fn pipelined_client(addr: SocketAddr, n: i64) {
    let mut ws = ws_connect(addr).await;
    let ids: Vec<i64> = (1..=REQUESTS).map(|i| n * 100 + i).collect();
    for &id in &ids {
        let text = wsloop::encode(&Message::request(id, format!("c{n}")));
        ws.send(Frame::text(text)).await.expect("send request");
    }
    for &id in &ids {
        let reply = next_message(&mut ws).await;
        assert_eq!(reply.request_id, id, "client {n}: replies out of order");
        assert_eq!(
            reply.some_other_thing,
            format!("Command 'c{n}' processed successfully.")
        );
    }
    ws.close(None).await.expect("close");
    // Read to the end: the server's Close answer, then EOF.
    while ws.next().await.is_some() {}
}

#[test]
fn server_on_a_local_executor_serves_a_non_send_handler() {
    let ex = LocalExecutor::new();
    let seen = Rc::new(RefCell::new(Vec::new()));
    let (disconnected, gone) = async_channel::unbounded();
    let recorder = Recorder {
        seen: seen.clone(),
        disconnected,
    };
    let ex = &ex;
    bounded(
        20,
        ex.run(with_local_server(ex, recorder, |addr| async move {
            let clients: Vec<_> = (0..CLIENTS)
                .map(|n| ex.spawn(pipelined_client(addr, n)))
                .collect();
            for client in clients {
                client.await;
            }
            // Every loop has ended once its hook has run.
            for _ in 0..CLIENTS {
                gone.recv().await.expect("a disconnect");
            }
        })),
    );

    let seen = seen.borrow();
    let mut ids: Vec<u64> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Connect(id) => Some(*id),
            _ => None,
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), CLIENTS as usize, "connections: {seen:?}");
    for id in ids {
        // Per connection: connect, its messages in order, disconnect, once each.
        let calls: Vec<&Seen> = seen
            .iter()
            .filter(|s| matches!(s, Seen::Connect(i) | Seen::Message(i, _) | Seen::Disconnect(i) if *i == id))
            .collect();
        assert_eq!(calls.len(), REQUESTS as usize + 2, "{calls:?}");
        assert_eq!(calls[0], &Seen::Connect(id));
        assert_eq!(calls[calls.len() - 1], &Seen::Disconnect(id));
        let requests: Vec<i64> = calls
            .iter()
            .filter_map(|s| match s {
                Seen::Message(_, request) => Some(*request),
                _ => None,
            })
            .collect();
        let client = requests[0] / 100;
        let expected: Vec<i64> = (1..=REQUESTS).map(|i| client * 100 + i).collect();
        assert_eq!(requests, expected, "connection {id}");
    }
}

/// Holds every "wait" call until a "release" call arrives: with one task
/// per call, another connection's message gets through meanwhile.
struct Gate {
    open: Sender<()>,
    opened: Receiver<()>,
}

impl LocalHandler for Gate {
    async fn on_message(&self, _: &Peer, message: Message) -> Option<Message> {
        match message.command.as_str() {
            "wait" => {
                let _ = self.opened.recv().await;
            }
            // Closing the channel ends every wait.
            "release" => {
                self.open.close();
            }
            _ => {}
        }
        Some(message.seed_reply())
    }
}

#[test]
fn a_slow_local_call_does_not_hold_up_other_connections() {
    let ex = LocalExecutor::new();
    let (open, opened) = async_channel::bounded(1);
    let gate = Gate { open, opened };
    let ex = &ex;
    bounded(
        20,
        ex.run(with_local_server(ex, gate, |addr| async move {
            let mut waiting = ws_connect(addr).await;
            let mut releasing = ws_connect(addr).await;
            let text = wsloop::encode(&Message::request(1, "wait"));
            waiting.send(Frame::text(text)).await.expect("send");
            // Answered while the first call still waits ...
            let reply = common::request(&mut releasing, 2, "release").await;
            assert_eq!(reply.request_id, 2);
            // ... and the release lets the first one answer.
            assert_eq!(next_message(&mut waiting).await.request_id, 1);
        })),
    );
}

/// What the client's local handler saw: commands pushed, hooks called.
#[derive(Default)]
struct Pushed {
    commands: Vec<String>,
    connects: usize,
    disconnects: usize,
}

#[test]
fn client_on_a_local_executor_takes_pushes_in_a_non_send_handler() {
    let server = TestServer::start(Config::default());
    let ex = LocalExecutor::new();
    let state = Rc::new(RefCell::new(Pushed::default()));
    let (arrived, arrivals) = async_channel::unbounded::<()>();
    let (ended, end) = async_channel::bounded::<()>(1);

    /// Records pushes and hooks in `state`; answers nothing.
    struct Device {
        state: Rc<RefCell<Pushed>>,
        arrived: Sender<()>,
        ended: Sender<()>,
    }
    impl LocalHandler for Device {
        async fn on_message(&self, _: &Peer, message: Message) -> Option<Message> {
            self.state.borrow_mut().commands.push(message.command);
            let _ = self.arrived.try_send(());
            None
        }
        fn on_connect(&self, _: &Peer) {
            self.state.borrow_mut().connects += 1;
        }
        fn on_disconnect(&self, _: &Peer, _: &Result<Ended, Error>) {
            self.state.borrow_mut().disconnects += 1;
            let _ = self.ended.try_send(());
        }
    }

    let device = Device {
        state: state.clone(),
        arrived,
        ended,
    };
    let hub = server.hub.clone();
    bounded(
        20,
        ex.run(async {
            let options = ClientOptions::new(server.addr.to_string());
            // The LocalExecutor itself is the client's spawner.
            let client = Client::connect(&ex, options, Local::new(&ex, device))
                .await
                .expect("connect");
            // A reply means the server has registered the connection.
            client.request("hello").await.expect("reply");
            for n in 1..=3 {
                assert_eq!(hub.broadcast(&Message::request(n, format!("push-{n}"))), 1);
            }
            for _ in 0..3 {
                arrivals.recv().await.expect("a push");
            }
            client.close().await.expect("client closes cleanly");
            end.recv().await.expect("on_disconnect");
        }),
    );
    let state = state.borrow();
    assert_eq!(state.commands, ["push-1", "push-2", "push-3"]);
    assert_eq!((state.connects, state.disconnects), (1, 1));
}

#[test]
fn the_bridge_answers_nothing_once_its_executor_is_gone() {
    let ex = LocalExecutor::new();
    let bridge = Local::new(&ex, |_: &Peer, request: Message| Some(request.seed_reply()));
    // The task serving the handler goes with its executor.
    drop(ex);
    let mut server = TestServer::start_with(Config::default(), None, bridge);
    bounded(10, async {
        let mut ws = ws_connect(server.addr).await;
        let text = wsloop::encode(&Message::request(1, "anyone?"));
        ws.send(Frame::text(text)).await.expect("send");
        // The server handles frames in order: had the request been
        // answered, its reply would come before the Pong.
        ws.send(Frame::Ping(b"after".to_vec().into()))
            .await
            .expect("ping");
        match ws.next().await {
            Some(Ok(Frame::Pong(payload))) => assert_eq!(&payload[..], b"after"),
            other => panic!("expected only the Pong, got {other:?}"),
        }
        // The connection lives on.
        ws.send(Frame::Ping(b"again".to_vec().into()))
            .await
            .expect("ping");
        assert!(matches!(ws.next().await, Some(Ok(Frame::Pong(_)))));
    });
    // The hooks found nobody either, and nothing panicked.
    server.shutdown().expect("server shuts down cleanly");
}

/// A server on another thread's multi-threaded executor, its handler's
/// code on this thread's `LocalExecutor`.
#[test]
fn the_handler_runs_on_the_local_thread_whatever_runs_the_connections() {
    let ex = LocalExecutor::new();
    let threads = Rc::new(RefCell::new(Vec::new()));
    let seen = threads.clone();
    let handler = move |_: &Peer, request: Message| {
        seen.borrow_mut().push(std::thread::current().id());
        Some(request.seed_reply())
    };
    let server = TestServer::start_with(Config::default(), None, Local::new(&ex, handler));
    bounded(
        10,
        ex.run(async {
            let mut ws = ws_connect(server.addr).await;
            for id in 1..=3 {
                assert_eq!(common::request(&mut ws, id, "where?").await.request_id, id);
            }
        }),
    );
    assert_eq!(*threads.borrow(), [std::thread::current().id(); 3]);
}
