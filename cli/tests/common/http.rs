//! One HTTP request over a raw TCP connection of its own, answered and
//! closed by the server: the status, head and body the tests look at.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A whole answer, read to the server's close.
#[derive(Debug)]
pub struct Answer {
    /// The status code of the answer's first line.
    pub status: u16,
    /// The head without its blank line: status line and headers.
    pub head: String,
    /// Everything after the head.
    pub body: Vec<u8>,
}

impl Answer {
    /// The value of the first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    }

    /// The body as text (lossy: it is for assertions and messages).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON, `Null` when it is not JSON (an error page).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Sends `request` (head and body) on a fresh connection and reads the
/// answer to EOF, each read bounded by `read_secs`. Fails the test when no
/// status line comes back.
pub fn exchange(addr: SocketAddr, request: &[u8], read_secs: u64) -> Answer {
    let mut stream = TcpStream::connect(addr).expect("tcp connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(read_secs)))
        .expect("read timeout");
    stream.write_all(request).expect("send the request");
    // The server closes after one answer; a reset after it is no failure.
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n");
    let (head, body) = match split {
        Some(at) => (&raw[..at], &raw[at + 4..]),
        None => (&raw[..], &[][..]),
    };
    let head = String::from_utf8_lossy(head).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    Answer {
        status,
        head,
        body: body.to_vec(),
    }
}

/// The operator API's `METHOD target` with bearer `token` and `body` (if
/// any) as JSON: the status and the JSON answer. Reads wait up to 70 s,
/// longer than any `?wait=` the tests use.
pub fn api(
    addr: SocketAddr,
    token: &str,
    method: &str,
    target: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let answer = exchange(addr, request.as_bytes(), 70);
    (answer.status, answer.json())
}
