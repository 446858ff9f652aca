//! Fuzz target: arbitrary bytes as the inbound side of a server connection.
//!
//! The input is what a client sends after the handshake; the connection
//! runs the seed handler until the input ends (EOF). It must never panic,
//! must end (bounded by a timeout), and everything it writes back must be
//! valid server frames: unmasked, well-formed, read cleanly by a client.
#![no_main]

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite, StreamExt};
use libfuzzer_sys::fuzz_target;
use wsloop::async_tungstenite::tungstenite::protocol::Role;
use wsloop::async_tungstenite::tungstenite::{self, error::ProtocolError};
use wsloop::async_tungstenite::WebSocketStream;
use wsloop::{Config, Connection, Message, Peer};

/// Reads from `input` in chunks of at most `chunk` bytes (then EOF), and
/// collects everything written.
struct Duplex {
    input: Vec<u8>,
    pos: usize,
    chunk: usize,
    /// Every this many reads, one first says "not yet" (0: never), so the
    /// loop also takes its wait-and-flush path.
    pending_every: usize,
    reads: usize,
    output: Arc<Mutex<Vec<u8>>>,
}

impl AsyncRead for Duplex {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.reads += 1;
        if self.pending_every != 0 && self.reads.is_multiple_of(self.pending_every + 1) {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let n = self.chunk.min(buf.len()).min(self.input.len() - self.pos);
        let start = self.pos;
        buf[..n].copy_from_slice(&self.input[start..start + n]);
        self.pos += n;
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for Duplex {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.output.lock().unwrap().extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    // Chunk sizes from 1 byte to a whole read buffer.
    let chunk = match first % 4 {
        0 => 1,
        1 => 7,
        2 => 64,
        _ => usize::MAX,
    };
    let config = Config::default();
    let output = Arc::new(Mutex::new(Vec::new()));
    let stream = Duplex {
        input: input.to_vec(),
        pos: 0,
        chunk,
        pending_every: usize::from(first >> 2 & 3),
        reads: 0,
        output: output.clone(),
    };
    smol::block_on(async {
        let conn = Connection::new(stream, Role::Server, Vec::new(), None, &config).await;
        let handler = |_: &Peer, m: Message| Some(m.seed_reply());
        // The input is finite, so the loop must end long before this.
        // Ok or Err are both fine ends; only not ending is a bug.
        let ended = wsloop::timeout(Duration::from_secs(10), conn.run(handler)).await;
        assert!(ended.is_some(), "connection did not end on EOF");
    });

    // Read back what the server wrote, as its client would.
    let written = std::mem::take(&mut *output.lock().unwrap());
    let client = Duplex {
        input: written,
        pos: 0,
        chunk: usize::MAX,
        pending_every: 0,
        reads: 0,
        output: Arc::new(Mutex::new(Vec::new())),
    };
    smol::block_on(async {
        let mut ws = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        while let Some(frame) = ws.next().await {
            match frame {
                Ok(_) => {}
                // The input may end without a closing handshake.
                Err(tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake))
                | Err(tungstenite::Error::ConnectionClosed) => break,
                Err(err) => panic!("server wrote something its client cannot read: {err}"),
            }
        }
    });
});
