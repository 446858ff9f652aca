//! Shared test harness: a real server on 127.0.0.1 in a background thread,
//! real WebSocket and raw-TCP peers, and a time bound for every test.
#![allow(dead_code)]
pub mod fs;
pub mod http;
pub mod process;
pub mod tls;
pub mod tls_client;

use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use async_tungstenite::tungstenite::Message as Frame;
use async_tungstenite::WebSocketStream;
use futures_lite::StreamExt;
use smol::Executor;
use wsloop::http::StaticFiles;
use wsloop::{Config, Error, Handler, Hub, Message, Peer, Server};

/// Runs `fut` to completion or fails the test after `secs` seconds.
pub fn bounded<T>(secs: u64, fut: impl Future<Output = T>) -> T {
    smol::block_on(wsloop::timeout(Duration::from_secs(secs), fut))
        .unwrap_or_else(|| panic!("test did not finish within {secs} s"))
}

/// Polls `condition` until it holds or `secs` pass (for state that has no
/// event to await, such as the hub's size after a peer vanished).
pub fn wait_until(secs: u64, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// A wsloop server running on two executor threads until dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub hub: Arc<Hub>,
    stop: Option<async_channel::Sender<()>>,
    thread: Option<thread::JoinHandle<Result<(), Error>>>,
}

/// The seed's handler.
pub fn seed(_: &Peer, request: Message) -> Option<Message> {
    Some(request.seed_reply())
}

impl TestServer {
    /// Starts a server with the seed handler.
    pub fn start(config: Config) -> TestServer {
        Self::start_with(config, None, seed)
    }

    /// Starts a server with any handler and optional static files.
    pub fn start_with(config: Config, files: Option<StaticFiles>, handler: impl Handler) -> Self {
        let (stop, stopped) = async_channel::bounded::<()>(1);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = thread::spawn(move || {
            let ex = Arc::new(Executor::new());
            // A second executor thread, so the server runs multi-threaded.
            let helper_ex = ex.clone();
            let helper_stop = stopped.clone();
            let helper = thread::spawn(move || smol::block_on(helper_ex.run(helper_stop.recv())));
            let result = smol::block_on(ex.run(async {
                let mut server = Server::bind("127.0.0.1:0", config).await?;
                if let Some(files) = files {
                    server = server.with_static_files(files);
                }
                let _ = ready_tx.send((server.local_addr()?, server.hub()));
                server
                    .run(&ex, handler, async {
                        let _ = stopped.recv().await;
                    })
                    .await
            }));
            let _ = helper.join();
            result
        });
        let (addr, hub) = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server did not start");
        TestServer {
            addr,
            hub,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Triggers a graceful shutdown and waits for the server to return.
    pub fn shutdown(&mut self) -> Result<(), Error> {
        self.stop.take();
        match self.thread.take() {
            Some(thread) => thread.join().expect("server thread panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

pub type Ws = WebSocketStream<smol::net::TcpStream>;

/// A real WebSocket client (async-tungstenite) connected to `/server`.
pub async fn ws_connect(addr: SocketAddr) -> Ws {
    let stream = smol::net::TcpStream::connect(addr)
        .await
        .expect("tcp connect");
    let (ws, _) = async_tungstenite::client_async(format!("ws://{addr}/server"), stream)
        .await
        .expect("websocket handshake");
    ws
}

/// Reads frames until a data frame arrives and decodes it.
pub async fn next_message(ws: &mut Ws) -> Message {
    loop {
        match ws.next().await {
            Some(Ok(Frame::Text(text))) => {
                return wsloop::decode(text.as_bytes()).expect("reply decodes")
            }
            Some(Ok(Frame::Binary(bytes))) => {
                return wsloop::decode(&bytes).expect("reply decodes")
            }
            Some(Ok(_)) => continue,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

/// Sends one request and returns the next message.
pub async fn request(ws: &mut Ws, id: i64, command: &str) -> Message {
    let text = wsloop::encode(&Message::request(id, command));
    ws.send(Frame::text(text)).await.expect("send request");
    next_message(ws).await
}

/// Reads until a Close frame arrives; returns its code (None for EOF).
pub async fn next_close_code(ws: &mut Ws) -> Option<u16> {
    while let Some(frame) = ws.next().await {
        match frame {
            Ok(Frame::Close(frame)) => return frame.map(|f| u16::from(f.code)),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
    None
}

/// A raw TCP connection that has completed the WebSocket handshake by hand.
pub fn raw_upgrade(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("tcp connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let request = format!(
        "GET /server HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .expect("send handshake");
    let head = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    stream
}

/// Reads an HTTP response head byte by byte (tests only).
pub fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A masked client frame (`opcode` 1 = text, 2 = binary).
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Sends a raw HTTP request and returns the status code of the answer.
pub fn http_status(addr: SocketAddr, request: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(addr).expect("tcp connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    stream.write_all(request).expect("send request");
    let head = read_head(&mut stream);
    head.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"))
}

/// A GET for `target`.
pub fn get(addr: SocketAddr, target: &str) -> u16 {
    http_status(
        addr,
        format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes(),
    )
}
