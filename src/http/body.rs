//! A request's body, for the few requests that carry one (the operator
//! API's JSON): by `Content-Length` only, bounded in size. Chunked bodies
//! are refused with 411 rather than parsed: no API client needs them, and
//! a second framing is a second way to get request smuggling wrong.
//! The caller bounds the read in time (the handshake timeout).

use std::io;

use futures_lite::io::{AsyncRead, AsyncReadExt};

use super::Request;

/// Why a body could not be read; each maps to the status that answers it.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// `Content-Length` says more than the limit (nothing was read).
    TooLarge,
    /// `Transfer-Encoding` (chunked or any other): not supported.
    NotContentLength,
    /// `Content-Length` is not one plain decimal number.
    BadLength,
    /// The peer closed or failed before the whole body arrived.
    Cut,
}

impl BodyError {
    /// The status that answers this error, and its reason.
    pub(crate) fn status(&self) -> (u16, &'static str) {
        match self {
            BodyError::TooLarge => (413, "request body too large"),
            BodyError::NotContentLength => (
                411,
                "Transfer-Encoding is not supported; send the body with Content-Length",
            ),
            BodyError::BadLength => (400, "malformed Content-Length"),
            BodyError::Cut => (400, "request body cut short"),
        }
    }
}

/// Reads the body of `request` from `stream`, `leftover` being the bytes
/// already read past its head. A request with neither `Content-Length`
/// nor `Transfer-Encoding` has an empty body. Refuses a body over `max`
/// bytes before reading any of it; bytes past the body are discarded
/// (every response closes the connection, so nothing is pipelined).
pub(crate) async fn read_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    request: &Request,
    mut leftover: Vec<u8>,
    max: usize,
) -> Result<Vec<u8>, BodyError> {
    if request.header("transfer-encoding").is_some() {
        return Err(BodyError::NotContentLength);
    }
    let length = content_length(request)?;
    if length > max {
        return Err(BodyError::TooLarge);
    }
    leftover.truncate(length);
    let mut body = leftover;
    let have = body.len();
    body.resize(length, 0);
    match stream.read_exact(&mut body[have..]).await {
        Ok(()) => Ok(body),
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => Err(BodyError::Cut),
        Err(_) => Err(BodyError::Cut),
    }
}

/// The one `Content-Length` of `request` (0 when absent). Several headers
/// that disagree, a sign, or anything but digits is malformed (RFC 9112,
/// 6.3: a recipient must not guess).
fn content_length(request: &Request) -> Result<usize, BodyError> {
    let mut found: Option<usize> = None;
    for (name, value) in &request.headers {
        if !name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        let value = value.trim();
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BodyError::BadLength);
        }
        let length = value.parse().map_err(|_| BodyError::BadLength)?;
        if found.is_some_and(|earlier| earlier != length) {
            return Err(BodyError::BadLength);
        }
        found = Some(length);
    }
    Ok(found.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> Request {
        Request {
            method: "POST".into(),
            target: "/api/broadcast".into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn reads_leftover_then_stream() {
        let req = request(&[("Content-Length", "5")]);
        let mut rest: &[u8] = b"lo and more";
        let body = smol::block_on(read_body(&mut rest, &req, b"hel".to_vec(), 64));
        assert_eq!(body.ok(), Some(b"hello".to_vec()));
    }

    #[test]
    fn refuses_what_it_does_not_frame() {
        let mut empty: &[u8] = b"";
        let chunked = request(&[("Transfer-Encoding", "chunked")]);
        let got = smol::block_on(read_body(&mut empty, &chunked, vec![], 64));
        assert!(matches!(got, Err(BodyError::NotContentLength)));
        let big = request(&[("Content-Length", "65")]);
        let got = smol::block_on(read_body(&mut empty, &big, vec![], 64));
        assert!(matches!(got, Err(BodyError::TooLarge)));
        let twice = request(&[("Content-Length", "1"), ("Content-Length", "2")]);
        let got = smol::block_on(read_body(&mut empty, &twice, vec![], 64));
        assert!(matches!(got, Err(BodyError::BadLength)));
        let cut = request(&[("Content-Length", "4")]);
        let got = smol::block_on(read_body(&mut empty, &cut, b"ab".to_vec(), 64));
        assert!(matches!(got, Err(BodyError::Cut)));
    }
}
