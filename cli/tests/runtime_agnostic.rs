//! wsloop is runtime-agnostic, with no smol executor anywhere:
//!
//! - a wsloop server connection and a wsloop client connection run as
//!   tasks on tokio's multi-threaded runtime (tokio streams adapted to
//!   `futures-io` by tokio-util's compat layer) and exchange correlated
//!   requests;
//! - the whole `Server` and a reconnecting `Client` run on tokio, with
//!   `tokio::spawn` as their spawner, through a server restart, with an
//!   independent tokio-side peer (tungstenite over the compat layer)
//!   beside them.

use std::net::SocketAddr;
use std::time::Duration;

use tokio_util::compat::TokioAsyncReadCompatExt;
use wsloop::client::{Client, ClientOptions};
use wsloop::{BoxTask, Config, Connection, Ended, Frame, Message, Peer, Role, Server};

/// tokio's spawner, as wsloop takes it.
fn tokio_spawn(task: BoxTask) {
    tokio::spawn(task);
}

fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_io()
        .build()
        .expect("tokio runtime")
}

/// Runs a `Server` on `address` with `tokio::spawn` until `stop` closes;
/// the returned task resolves once the server has shut down.
async fn tokio_server(
    address: &str,
    stop: async_channel::Receiver<()>,
) -> (
    SocketAddr,
    tokio::task::JoinHandle<Result<(), wsloop::Error>>,
) {
    let server = Server::bind(address, Config::default())
        .await
        .expect("bind");
    let addr = server.local_addr().expect("addr");
    let seed = |_: &Peer, request: Message| Some(request.seed_reply());
    let spawner = tokio_spawn;
    let run = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.recv().await;
        };
        server.run(&spawner, seed, shutdown).await
    });
    (addr, run)
}

#[test]
fn whole_server_and_reconnecting_client_run_on_tokio() {
    let outcome = tokio_runtime().block_on(async {
        let run = async {
            let (stop, stopped) = async_channel::bounded::<()>(1);
            let (addr, first) = tokio_server("127.0.0.1:0", stopped).await;

            // A reconnecting client whose tasks go to tokio::spawn too.
            let mut options = ClientOptions::new(addr.to_string());
            options.reconnect.initial_delay = Duration::from_millis(20);
            options.reconnect.max_delay = Duration::from_millis(100);
            let client = Client::connect(&tokio_spawn, options, |_: &Peer, _: Message| None)
                .await
                .expect("connect");
            let reply = client.request("before").await.expect("reply");
            assert_eq!(
                reply.some_other_thing,
                "Command 'before' processed successfully."
            );

            // An independent peer on the tokio side: tungstenite's own
            // handshake over a tokio stream through the compat layer.
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let (mut ws, _) =
                async_tungstenite::client_async(format!("ws://{addr}/server"), tcp.compat())
                    .await
                    .expect("handshake");
            use futures_lite::StreamExt;
            let request = r#"{"requestID":9,"command":"raw","someOtherThing":"","success":false}"#;
            ws.send(Frame::text(request)).await.expect("send");
            let answer = ws.next().await.expect("a frame").expect("a good frame");
            let answer: serde_json::Value =
                serde_json::from_str(answer.to_text().expect("text")).expect("json");
            assert_eq!(answer["requestID"], 9);
            assert_eq!(answer["success"], true);

            // Stop the server: every peer gets 1001, the run ends.
            drop(stop);
            first.await.expect("server task").expect("server run");
            let closing = ws.next().await;
            assert!(
                matches!(closing, Some(Ok(Frame::Close(Some(ref f)))) if u16::from(f.code) == 1001),
                "raw peer saw {closing:?}"
            );

            // A new server on the same port: the client reconnects by
            // itself (its supervisor is a tokio task) and is served again.
            let (stop, stopped) = async_channel::bounded::<()>(1);
            let (again, second) = tokio_server(&addr.to_string(), stopped).await;
            assert_eq!(again, addr);
            // A request queued while disconnected waits for the reconnect;
            // one already on the dying connection fails with
            // ConnectionLost (at most a few, never a spin: each attempt
            // waits for a reply or for that connection's end).
            let mut reply = None;
            for _ in 0..5 {
                match client.request("after").await {
                    Ok(r) => {
                        reply = Some(r);
                        break;
                    }
                    Err(err) => eprintln!("retrying after: {err}"),
                }
            }
            let reply = reply.expect("a reply after the reconnect");
            assert_eq!(
                reply.some_other_thing,
                "Command 'after' processed successfully."
            );
            client.close().await.expect("client closes cleanly");
            drop(stop);
            second.await.expect("server task").expect("server run");
        };
        wsloop::timeout(Duration::from_secs(20), run).await
    });
    outcome.expect("test timed out");
}

#[test]
fn server_and_client_connections_run_on_tokio() {
    let outcome = tokio_runtime().block_on(async {
        let run = async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr: SocketAddr = listener.local_addr().expect("addr");
            let config = Config::default();

            // Server side: accept, upgrade, and run wsloop's loop on tokio.
            let server_config = config.clone();
            let server = tokio::spawn(async move {
                let (tcp, peer_addr) = listener.accept().await.expect("accept");
                let ws = async_tungstenite::accept_async(tcp.compat())
                    .await
                    .expect("upgrade");
                // tungstenite's handshake read nothing past the request:
                // the client waits for the 101 before it sends.
                let stream = ws.into_inner();
                let conn = Connection::new(
                    stream,
                    Role::Server,
                    Vec::new(),
                    Some(peer_addr),
                    &server_config,
                )
                .await;
                let seed = |_: &Peer, request: Message| Some(request.seed_reply());
                conn.run(seed).await
            });

            // Client side: dial, then run the same loop with Role::Client.
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let (ws, _) =
                async_tungstenite::client_async(format!("ws://{addr}/server"), tcp.compat())
                    .await
                    .expect("handshake");
            // Nor past the 101: the server sends nothing before a request.
            let conn = Connection::new(
                ws.into_inner(),
                Role::Client,
                Vec::new(),
                Some(addr),
                &config,
            )
            .await;
            let peer = conn.peer().clone();
            let client = tokio::spawn(conn.run(|_: &Peer, _: Message| None));

            // Many requests in flight at once, each matched by requestID.
            let pending: Vec<_> = (0..20)
                .map(|i| peer.start_request(format!("tokio {i}")).expect("queue"))
                .collect();
            for (i, request) in pending.into_iter().enumerate() {
                let reply = request.wait().await.expect("reply");
                assert_eq!(
                    reply.some_other_thing,
                    format!("Command 'tokio {i}' processed successfully.")
                );
            }
            peer.close(wsloop::CLOSE_NORMAL, "done");
            let client_end = client.await.expect("client task");
            let server_end = server.await.expect("server task");
            (client_end, server_end)
        };
        // Bound the test; async-io's timer works under any runtime.
        wsloop::timeout(Duration::from_secs(20), run).await
    });
    let (client_end, server_end) = outcome.expect("test timed out");
    assert_eq!(client_end.expect("client loop"), Ended::Closed(1000));
    // Peer::close's reason reached the other side in the Close frame.
    assert_eq!(
        server_end.expect("server loop"),
        Ended::PeerClosed(Some((1000, "done".into())))
    );
}

/// A `Client` on smol's `LocalExecutor` (its spawner need not be `Send`),
/// against a `Server` on an `Arc<Executor>`, both polled by one thread.
#[test]
fn client_runs_on_a_local_executor() {
    let ex = std::sync::Arc::new(smol::Executor::new());
    let local = smol::LocalExecutor::new();
    let outcome = smol::block_on(local.run(ex.run(wsloop::timeout(
        Duration::from_secs(20),
        async {
            let server = Server::bind("127.0.0.1:0", Config::default())
                .await
                .expect("bind");
            let addr = server.local_addr().expect("addr");
            let (stop, stopped) = async_channel::bounded::<()>(1);
            let seed = |_: &Peer, request: Message| Some(request.seed_reply());
            let serving = server.run(&ex, seed, async move {
                let _ = stopped.recv().await;
            });
            let using = async {
                let options = ClientOptions::new(addr.to_string());
                let client = Client::connect(&local, options, |_: &Peer, _: Message| None)
                    .await
                    .expect("connect");
                let reply = client.request("local").await.expect("reply");
                assert_eq!(
                    reply.some_other_thing,
                    "Command 'local' processed successfully."
                );
                client.close().await.expect("client closes cleanly");
                drop(stop);
            };
            let (served, ()) = futures_lite::future::zip(serving, using).await;
            served.expect("server run");
        },
    ))));
    outcome.expect("test timed out");
}
