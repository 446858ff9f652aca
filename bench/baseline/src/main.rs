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

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

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
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--address" => address = args.next().expect("--address needs HOST:PORT"),
            "--threads" => {
                threads = Some(args.next().and_then(|n| n.parse().ok()).expect("--threads N"))
            }
            "-h" | "--help" => {
                println!("wsloop-baseline [--address 127.0.0.1:9001] [--threads N]");
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
    runtime.enable_all().build()?.block_on(serve(&address))
}

async fn serve(address: &str) -> std::io::Result<()> {
    let listener = TcpListener::bind(address).await?;
    println!("baseline listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            if let Err(err) = connection(stream).await {
                eprintln!("baseline: connection ended: {err}");
            }
        });
    }
}

/// One task per connection: handshake, then answer every request until the
/// peer closes.
async fn connection(stream: TcpStream) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let mut ws = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await?;
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
