//! The WebSocket opening handshake (RFC 6455 §4), both sides, on top of the
//! request and response heads that [`http`](crate::http) reads and writes.
//!
//! - Server: [`check_request`] says whether a request head is a valid
//!   opening handshake, and [`switching_protocols`] is the `101` answer.
//! - Client: [`client`] writes the `GET` with a fresh key, reads the answer
//!   and checks the server's `Sec-WebSocket-Accept`.
//!
//! tungstenite has a handshake of its own (its `handshake` feature), but it
//! builds on the `http` crate, a SHA-1 crate stack, base64 and `rand`: about
//! 75 KB of a small `wsloop` binary and a dozen crates, for what is the SHA-1
//! and base64 below plus a few header checks (measured with
//! `scripts/size-report`). After the handshake the stream goes to
//! tungstenite, which does all the framing.

use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::CLOSE_TIMEOUT;
use crate::http::{read_response_head, HeadError, Request, Response};
use crate::time::timeout;
use crate::Error;

/// The GUID a server appends to the client's key before hashing it
/// (RFC 6455 §1.3). It proves the server understood the WebSocket request.
const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The only WebSocket protocol version there is (RFC 6455 §4.1).
const WEBSOCKET_VERSION: &str = "13";

/// Length of a `Sec-WebSocket-Key`: 16 random bytes in base64.
const KEY_LEN: usize = 24;

/// Largest `101` response head the client reads. Servers send a few hundred
/// bytes; past this the answer is refused rather than buffered.
const MAX_RESPONSE_HEAD_SIZE: usize = 8 * 1024;

/// Most of a refusal's body quoted in the client's error, so that
/// `401 Unauthorized: missing or wrong token` reaches the user but a
/// server's whole error page does not.
const MAX_QUOTED_BODY: usize = 200;

/// Checks that `request` is a valid opening handshake: a `GET` asking for
/// `Upgrade: websocket` over `Connection: Upgrade`, version 13, with a
/// well-formed key. Returns the key, or the status and reason to refuse with.
pub(crate) fn check_request(request: &Request) -> Result<&str, (u16, &'static str)> {
    if request.method != "GET" {
        return Err((405, "a WebSocket upgrade must be a GET"));
    }
    if !request.is_websocket_upgrade() {
        return Err((400, "expected Upgrade: websocket and Connection: Upgrade"));
    }
    if request.header("Sec-WebSocket-Version") != Some(WEBSOCKET_VERSION) {
        return Err((426, "unsupported WebSocket version; use 13"));
    }
    match request.header("Sec-WebSocket-Key") {
        Some(key) if key.len() == KEY_LEN => Ok(key),
        _ => Err((400, "missing or invalid Sec-WebSocket-Key")),
    }
}

/// The server's `101` answer to a handshake carrying `key`. No extension or
/// subprotocol is offered, so none is named.
pub(crate) fn switching_protocols(key: &str) -> String {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key)
    )
}

/// The client side: sends the opening handshake for `ws://{host}{path}`
/// with the `extra_headers` (for example `Origin`), and checks the answer.
///
/// Returns the bytes read past the `101` head: a server may send its first
/// frame right behind it, and they belong to the WebSocket stream.
pub(crate) async fn client<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    host: &str,
    path: &str,
    extra_headers: &[(&str, &str)],
) -> Result<Vec<u8>, Error> {
    let key = base64(&fastrand::u128(..).to_le_bytes());
    let request = opening_request(host, path, &key, extra_headers)?;
    stream.write_all(request.as_bytes()).await?;
    stream.flush().await?;

    let (response, leftover) = match read_response_head(stream, MAX_RESPONSE_HEAD_SIZE).await {
        Ok(read) => read,
        Err(HeadError::Io(err)) => return Err(Error::Io(err)),
        Err(err) => return Err(Error::Handshake(err.to_string())),
    };
    if response.status != 101 {
        let body = refusal_body(stream, leftover, &response).await;
        return Err(refusal(&response, &body));
    }
    check_response(&response, &key)?;
    Ok(leftover)
}

/// The client's opening handshake for `ws://{host}{path}` with `key`.
fn opening_request(
    host: &str,
    path: &str,
    key: &str,
    extra_headers: &[(&str, &str)],
) -> Result<String, Error> {
    // The path is one token of the request line: origin-form, no space, no
    // control characters.
    if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::Config(format!(
            "{path:?} is not a request path (it starts with / and has no spaces)"
        )));
    }
    // A line break or other control character in a value would end its
    // header early and let the value's author inject headers.
    let values = extra_headers.iter().map(|(_, value)| *value);
    if std::iter::once(host)
        .chain(values)
        .any(|value| value.chars().any(|c| c.is_control() && c != '\t'))
    {
        return Err(Error::Config(
            "a header value (address or token) has characters a header cannot carry".into(),
        ));
    }
    let mut request = format!(
        "GET {path} HTTP/1.1\r\n\
         Host: {host}\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\n\
         Sec-WebSocket-Version: {WEBSOCKET_VERSION}\r\n"
    );
    for (name, value) in extra_headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    Ok(request)
}

/// The start of a refusal's body, at most [`MAX_QUOTED_BODY`] bytes: what
/// came with the head plus what follows it within [`CLOSE_TIMEOUT`] (the
/// body may come in a segment of its own).
async fn refusal_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    mut body: Vec<u8>,
    response: &Response,
) -> Vec<u8> {
    let promised = response
        .header("Content-Length")
        .and_then(|len| len.parse().ok())
        .unwrap_or(MAX_QUOTED_BODY);
    let want = promised.min(MAX_QUOTED_BODY);
    let mut chunk = [0u8; MAX_QUOTED_BODY];
    let read = async {
        while body.len() < want {
            match stream.read(&mut chunk[..want - body.len()]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
    };
    timeout(CLOSE_TIMEOUT, read).await;
    body.truncate(MAX_QUOTED_BODY);
    body
}

/// The error for a server that answered something other than `101`,
/// quoting the first line of its `body`.
fn refusal(response: &Response, body: &[u8]) -> Error {
    let body = String::from_utf8_lossy(body);
    let first_line = body.lines().next().unwrap_or("").trim();
    let mut reason = format!(
        "the server answered {} {}",
        response.status, response.reason
    );
    if !first_line.is_empty() {
        reason.push_str(": ");
        reason.push_str(first_line);
    }
    Error::Refused {
        status: response.status,
        reason,
    }
}

/// Checks the server's `101` answer to a handshake that sent `key`
/// (RFC 6455 §4.1, the client's checks).
fn check_response(response: &Response, key: &str) -> Result<(), Error> {
    if !response.is_websocket_upgrade() {
        return Err(Error::Handshake(
            "101 without Upgrade: websocket and Connection: Upgrade".into(),
        ));
    }
    if response.header("Sec-WebSocket-Accept") != Some(accept_key(key).as_str()) {
        return Err(Error::Handshake(
            "the server's Sec-WebSocket-Accept does not match our key".into(),
        ));
    }
    // We asked for no extension and no subprotocol; one we did not ask for
    // would change the framing under us.
    for name in ["Sec-WebSocket-Extensions", "Sec-WebSocket-Protocol"] {
        if response.header(name).is_some() {
            return Err(Error::Handshake(format!("unrequested {name} in the 101")));
        }
    }
    Ok(())
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`: base64 of the
/// SHA-1 of the key followed by the GUID (RFC 6455 §4.2.2).
fn accept_key(key: &str) -> String {
    let mut input = Vec::with_capacity(key.len() + WEBSOCKET_GUID.len());
    input.extend_from_slice(key.as_bytes());
    input.extend_from_slice(WEBSOCKET_GUID.as_bytes());
    base64(&sha1(&input))
}

/// SHA-1 (FIPS 180-4), here only to derive `Sec-WebSocket-Accept`: the
/// handshake uses it as a checksum, not for security.
fn sha1(data: &[u8]) -> [u8; 20] {
    let mut state: [u32; 5] = [
        0x6745_2301,
        0xEFCD_AB89,
        0x98BA_DCFE,
        0x1032_5476,
        0xC3D2_E1F0,
    ];
    // Padding: a 1 bit, zeros up to 8 bytes short of a 64-byte block, then
    // the message length in bits, big-endian.
    let mut message = data.to_vec();
    message.push(0x80);
    message.resize(message.len().div_ceil(64) * 64, 0);
    if message.len() - data.len() < 9 {
        message.resize(message.len() + 64, 0);
    }
    let bits = (data.len() as u64).wrapping_mul(8).to_be_bytes();
    let len = message.len();
    message[len - 8..].copy_from_slice(&bits);

    for block in message.chunks_exact(64) {
        // The message schedule: 16 words of the block, 64 derived ones.
        let mut w = [0u32; 80];
        for (word, bytes) in w.iter_mut().zip(block.chunks_exact(4)) {
            *word = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = state;
        for (i, word) in w.into_iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
                20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
                _ => (b ^ c ^ d, 0xCA62_C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(word);
            (e, d, c, b, a) = (d, c, b.rotate_left(30), a, t);
        }
        for (s, v) in state.iter_mut().zip([a, b, c, d, e]) {
            *s = s.wrapping_add(v);
        }
    }
    let mut digest = [0u8; 20];
    for (bytes, word) in digest.chunks_exact_mut(4).zip(state) {
        bytes.copy_from_slice(&word.to_be_bytes());
    }
    digest
}

/// Standard base64 with padding (RFC 4648 §4).
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        // Up to three bytes as one 24-bit number, then four 6-bit digits;
        // a short last chunk gets `=` for each digit it has no bits for.
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn sha1_matches_the_fips_vectors() {
        for (input, digest) in [
            (&b""[..], "da39a3ee5e6b4b0d3255bfef95601890afd80709"),
            (b"abc", "a9993e364706816aba3e25717850c26c9cd0d89d"),
            // 56 bytes: the padding spills into a second block.
            (
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
                "84983e441c3bd26ebaae4aa1f95129e5e54670f1",
            ),
        ] {
            assert_eq!(hex(&sha1(input)), digest, "{input:?}");
        }
        let million = vec![b'a'; 1_000_000];
        assert_eq!(
            hex(&sha1(&million)),
            "34aa973cd4c4daa4f61eeb2bdbad27316534016f"
        );
    }

    #[test]
    fn accept_keys_agree_with_tungstenite_for_every_padding_case() {
        // Keys of 0..200 bytes hash 36..236 bytes: every position of the
        // padding within a block, checked against an independent SHA-1 and
        // base64 (tungstenite's, a dev-dependency only).
        use async_tungstenite::tungstenite::handshake::derive_accept_key;
        for len in 0..200 {
            let key: String = (0..len)
                .map(|i| char::from(b'A' + (i % 26) as u8))
                .collect();
            assert_eq!(
                accept_key(&key),
                derive_accept_key(key.as_bytes()),
                "length {len}"
            );
        }
    }

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (input, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), encoded);
        }
        assert_eq!(base64(&[0xFB, 0xFF]), "+/8=");
    }

    #[test]
    fn accept_key_matches_rfc_6455() {
        // The worked example of RFC 6455 §1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn our_request_passes_our_servers_check_and_refuses_injection() {
        let key = base64(&[7; 16]);
        let origin = [("Origin", "http://127.0.0.1:9/")];
        let text = opening_request("127.0.0.1:9", "/server", &key, &origin).expect("request");
        let mut stream = futures_lite::io::Cursor::new(text.into_bytes());
        let (request, rest) =
            smol::block_on(crate::http::read_request_head(&mut stream, 1024)).expect("parses");
        assert!(rest.is_empty());
        assert_eq!(check_request(&request), Ok(key.as_str()));
        assert_eq!(request.header("origin"), Some("http://127.0.0.1:9/"));

        for bad in ["a\r\nX-Evil: 1", "a\nb", "a\0b"] {
            let headers = [("Authorization", bad)];
            assert!(
                opening_request("h:1", "/server", &key, &headers).is_err(),
                "{bad:?}"
            );
            assert!(
                opening_request(bad, "/server", &key, &[]).is_err(),
                "{bad:?}"
            );
        }
        for path in ["server", "/a b", "/a\r\nX: 1", ""] {
            assert!(opening_request("h:1", path, &key, &[]).is_err(), "{path:?}");
        }
        assert!(opening_request("h:1", "/runCase?case=1&agent=x", &key, &[]).is_ok());
    }

    fn response(status: u16, headers: &[(&str, &str)]) -> Response {
        Response {
            status,
            reason: "Whatever".into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn the_client_checks_the_servers_answer() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let good = [
            ("Upgrade", "WebSocket"),
            ("Connection", "keep-alive, Upgrade"),
            ("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ];
        assert!(check_response(&response(101, &good), key).is_ok());

        let wrong_accept = [good[0], good[1], ("Sec-WebSocket-Accept", "nope")];
        let no_upgrade = [good[1], good[2]];
        let extension = [good[0], good[1], good[2], ("Sec-WebSocket-Extensions", "x")];
        for headers in [&wrong_accept[..], &no_upgrade, &extension] {
            assert!(check_response(&response(101, headers), key).is_err());
        }

        let refused = refusal(&response(401, &[]), b"missing token\nmore").to_string();
        assert!(
            refused.ends_with("401 Whatever: missing token"),
            "{refused}"
        );
        assert_eq!(refusal(&response(404, &[]), b"").status(), Some(404));
    }
}
