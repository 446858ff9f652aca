//! The size baseline: `size-baseline server ADDR` echoes every WebSocket
//! message back; `size-baseline client ADDR` sends stdin lines and prints
//! the replies. No JSON, no options, no logging.

use async_tungstenite::tungstenite::Message;
use futures_lite::{AsyncBufReadExt, StreamExt};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_default();
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8080".into());
    smol::block_on(async {
        if mode == "client" {
            let (mut ws, _) = async_tungstenite::client_async(
                format!("ws://{addr}/server"),
                smol::net::TcpStream::connect(&addr).await?,
            )
            .await?;
            let mut lines = smol::io::BufReader::new(smol::Unblock::new(std::io::stdin())).lines();
            while let Some(line) = lines.next().await {
                ws.send(Message::text(line?)).await?;
                if let Some(reply) = ws.next().await {
                    println!("{}", reply?);
                }
            }
            Ok(())
        } else {
            let listener = smol::net::TcpListener::bind(&addr).await?;
            loop {
                let (stream, _) = listener.accept().await?;
                smol::spawn(async move {
                    let Ok(mut ws) = async_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                            break;
                        }
                    }
                })
                .detach();
            }
        }
    })
}
