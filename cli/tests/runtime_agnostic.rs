//! The core is runtime-agnostic: a wsloop server connection and a wsloop
//! client connection run as tasks on tokio's multi-threaded runtime (tokio
//! streams adapted to `futures-io` by tokio-util's compat layer), with no
//! smol executor anywhere, and exchange correlated requests.

use std::net::SocketAddr;
use std::time::Duration;

use tokio_util::compat::TokioAsyncReadCompatExt;
use wsloop::{Config, Connection, Ended, Message, Peer, Role};

#[test]
fn server_and_client_connections_run_on_tokio() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_io()
        .build()
        .expect("tokio runtime");
    let outcome = runtime.block_on(async {
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
            peer.close(wsloop::CLOSE_NORMAL);
            let client_end = client.await.expect("client task");
            let server_end = server.await.expect("server task");
            (client_end, server_end)
        };
        // Bound the test; async-io's timer works under any runtime.
        wsloop::timeout(Duration::from_secs(20), run).await
    });
    let (client_end, server_end) = outcome.expect("test timed out");
    assert_eq!(client_end.expect("client loop"), Ended::Closed(1000));
    assert!(matches!(
        server_end.expect("server loop"),
        Ended::PeerClosed(_)
    ));
}
