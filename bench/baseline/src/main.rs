//! The benchmark's baseline: the server a Rust user would write with tokio +
//! tokio-tungstenite + serde_json, speaking wsloop's wire protocol.
//!
//! ```text
//! cargo build --release --manifest-path bench/baseline/Cargo.toml
//! bench/baseline/target/release/wsloop-baseline --address 127.0.0.1:9001
//! ```
//!
//! Written the idiomatic way on purpose — one task per connection,
//! `while let Some(msg) = ws.next().await`, `ws.send(reply).await` (which
//! flushes every message) — because the point is to compare wsloop with what
//! people actually ship, not with a hand-tuned server. The one deliberate
//! setting is tungstenite's read buffer at 4 KiB: at its 128 KiB default each
//! idle connection costs ~139 KiB and the memory comparison would be a straw
//! man.
//!
//! It prints `baseline listening on ADDR` once bound (port 0 picks a free
//! port; the benchmark script reads the address from that line).
//!
//! `--tls CERT KEY` (PEM files) serves `wss://` instead, through
//! tokio-rustls with rustls's `ring` provider and its default settings (the
//! builder a tokio user copies from tokio-rustls' example), ALPN
//! `http/1.1` as wsloop offers it.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::WebSocketStream;

/// A request or reply of the wire protocol (the seed's JSON shape).
#[derive(Deserialize, Serialize, Default)]
#[serde(default)]
struct Wire {
    #[serde(rename = "requestID")]
    request_id: i64,
    command: String,
    #[serde(rename = "someOtherThing")]
    some_other_thing: String,
    success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn main() -> std::io::Result<()> {
    let mut address = "127.0.0.1:9001".to_string();
    let mut threads = None;
    let mut tls = None;
    let mut fanout = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--address" => address = args.next().expect("--address needs HOST:PORT"),
            "--threads" => {
                threads = Some(
                    args.next()
                        .and_then(|n| n.parse().ok())
                        .expect("--threads N"),
                )
            }
            "--tls" => {
                let cert = args.next().expect("--tls CERT KEY");
                let key = args.next().expect("--tls CERT KEY");
                tls = Some(acceptor(&cert, &key));
            }
            "--fanout" => fanout = true,
            "-h" | "--help" => {
                println!(
                    "wsloop-baseline [--address 127.0.0.1:9001] [--threads N] [--tls CERT KEY] [--fanout]"
                );
                return Ok(());
            }
            other => panic!("unknown argument {other:?} (try --help)"),
        }
    }
    // The multi-thread runtime with its default worker count (the available
    // parallelism, which respects `taskset`), as `#[tokio::main]` would.
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        runtime.worker_threads(n);
    }
    let runtime = runtime.enable_all().build()?;
    if fanout {
        runtime.block_on(serve_fanout(&address))
    } else {
        runtime.block_on(serve(&address, tls))
    }
}

/// The TLS acceptor for `--tls CERT KEY`: rustls defaults, ring provider.
fn acceptor(cert: &str, key: &str) -> TlsAcceptor {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect())
        .unwrap_or_else(|e| panic!("certificate {cert}: {e}"));
    let key = PrivateKeyDer::from_pem_file(key).unwrap_or_else(|e| panic!("key {key}: {e}"));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .unwrap_or_else(|e| panic!("TLS configuration: {e}"));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}

async fn serve(address: &str, tls: Option<TlsAcceptor>) -> std::io::Result<()> {
    let listener = TcpListener::bind(address).await?;
    println!("baseline listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        // Two spawns, not one future with a match inside: a task is sized
        // for its largest state, and the plain server's tasks must not
        // carry room for rustls's connection state.
        match tls.clone() {
            None => tokio::spawn(async move { report(connection(stream).await) }),
            Some(tls) => tokio::spawn(async move { report(tls_connection(tls, stream).await) }),
        };
    }
}

/// How a connection ended, when it was not a normal close.
fn report(result: Result<(), Error>) {
    if let Err(err) = result {
        eprintln!("baseline: connection ended: {err}");
    }
}

/// The TLS handshake, then the same loop as over plain TCP.
async fn tls_connection(tls: TlsAcceptor, stream: TcpStream) -> Result<(), Error> {
    stream.set_nodelay(true)?;
    let stream = tls.accept(stream).await?;
    let mut ws = tokio_tungstenite::accept_async_with_config(stream, Some(config())).await?;
    answer(&mut ws).await
}

/// One task per connection: handshake, then answer every request until the
/// peer closes.
async fn connection(stream: TcpStream) -> Result<(), Error> {
    stream.set_nodelay(true)?;
    let mut ws = tokio_tungstenite::accept_async_with_config(stream, Some(config())).await?;
    answer(&mut ws).await
}

/// tungstenite's settings: the 4 KiB read buffer (see the header).
fn config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4096)
}

/// Answers every request until the peer closes. It borrows the stream: a
/// stream moved into a nested future is laid out twice in the task (10 KiB
/// more per idle connection here, measured), which would make the baseline a
/// straw man again.
async fn answer<S>(ws: &mut WebSocketStream<S>) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(msg) = ws.next().await {
        let parsed = match msg? {
            Message::Text(text) => serde_json::from_str::<Wire>(&text),
            Message::Binary(bytes) => serde_json::from_slice::<Wire>(&bytes),
            Message::Close(_) => break,
            // tungstenite answers pings itself on the next read or write.
            _ => continue,
        };
        // The seed's reply: same requestID, success, an empty command.
        let reply = match parsed {
            Ok(request) => Wire {
                request_id: request.request_id,
                some_other_thing: format!("Command '{}' processed successfully.", request.command),
                success: true,
                ..Wire::default()
            },
            Err(err) => Wire {
                error: Some(err.to_string()),
                ..Wire::default()
            },
        };
        let text = serde_json::to_string(&reply).expect("a struct always serialises");
        ws.send(Message::text(text)).await?;
    }
    Ok(())
}

// --- fan-out (bench/run's broadcast scenario) -------------------------------

/// The command that asks for a broadcast, and the command it carries (as in
/// wsloop's examples/fanout_server.rs).
const FANOUT: &str = "fanout";

/// Messages a connection may fall behind the broadcast before it skips
/// some (tokio's `Lagged`); wsloop's outbound queue default is 64.
const FANOUT_CAPACITY: usize = 64;

/// `--fanout`: the same server, plus the idiomatic tokio broadcast: one
/// `tokio::sync::broadcast` channel, every connection task selecting
/// between its socket and its receiver and forwarding what the channel
/// brings. A request with the command `fanout` sends one message into it.
async fn serve_fanout(address: &str) -> std::io::Result<()> {
    let listener = TcpListener::bind(address).await?;
    println!("baseline listening on {}", listener.local_addr()?);
    let (tx, _) = tokio::sync::broadcast::channel::<Message>(FANOUT_CAPACITY);
    loop {
        let (stream, _) = listener.accept().await?;
        let tx = tx.clone();
        tokio::spawn(async move {
            if let Err(err) = connection_fanout(stream, tx).await {
                eprintln!("baseline: connection ended: {err}");
            }
        });
    }
}

async fn connection_fanout(
    stream: TcpStream,
    tx: tokio::sync::broadcast::Sender<Message>,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    use tokio::sync::broadcast::error::RecvError;
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let mut ws = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await?;
    let mut rx = tx.subscribe();
    loop {
        tokio::select! {
            msg = ws.next() => {
                let Some(msg) = msg else { break };
                let request = match msg? {
                    Message::Text(text) => serde_json::from_str::<Wire>(&text).unwrap_or_default(),
                    Message::Close(_) => break,
                    _ => continue,
                };
                if request.command == FANOUT {
                    let wire = Wire { command: FANOUT.into(), ..Wire::default() };
                    let text = serde_json::to_string(&wire).expect("a struct always serialises");
                    let _ = tx.send(Message::text(text));
                }
                let reply = Wire {
                    request_id: request.request_id,
                    some_other_thing: format!("Command '{}' processed successfully.", request.command),
                    success: true,
                    ..Wire::default()
                };
                let text = serde_json::to_string(&reply).expect("a struct always serialises");
                ws.send(Message::text(text)).await?;
            }
            pushed = rx.recv() => match pushed {
                Ok(message) => ws.send(message).await?,
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => break,
            },
        }
    }
    Ok(())
}
