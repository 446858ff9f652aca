//! Reading and parsing HTTP/1.1 heads: the [`Request`] a peer sends to the
//! one port, the [`Response`] the client's handshake reads back, and
//! percent-decoding for the paths and tokens inside them.

use std::fmt;
use std::io;

use futures_lite::io::{AsyncRead, AsyncReadExt};

/// Most headers a request head may carry. Browsers send about twenty; more
/// than this is refused as malformed rather than parsed into a growing list.
const MAX_HEADERS: usize = 64;

/// Bytes asked of the stream per read while looking for the end of a head.
/// A whole ordinary head usually arrives in one read of this size.
const READ_CHUNK: usize = 1024;

/// A parsed request head. Headers keep their original order; lookup is
/// case-insensitive.
#[derive(Debug, Clone)]
pub struct Request {
    /// The method, e.g. `GET`.
    pub method: String,
    /// The raw request-target, e.g. `/a%20b?x=1`.
    pub target: String,
    /// Header names and values in the order they were sent.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// The value of the first header called `name` (case-insensitive),
    /// trimmed of surrounding whitespace.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The target without its `?query`.
    pub fn path(&self) -> &str {
        match self.target.split_once('?') {
            Some((path, _)) => path,
            None => &self.target,
        }
    }

    /// The part of the target after the first `?`, if any.
    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, query)| query)
    }

    /// Whether the request carries an `Upgrade` header at all, whatever
    /// protocol it asks for.
    pub fn wants_upgrade(&self) -> bool {
        self.header("upgrade").is_some()
    }

    /// Whether this is a WebSocket opening handshake: `Upgrade` lists
    /// `websocket` and `Connection` lists `upgrade`.
    pub fn is_websocket_upgrade(&self) -> bool {
        is_websocket_upgrade(&self.headers)
    }
}

/// A parsed response head (what a WebSocket client reads back).
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code, e.g. `101`.
    pub status: u16,
    /// The reason phrase, e.g. `Switching Protocols`.
    pub reason: String,
    /// Header names and values in the order they were sent.
    pub headers: Vec<(String, String)>,
}

impl Response {
    /// The value of the first header called `name` (case-insensitive),
    /// trimmed of surrounding whitespace.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Whether this answers a WebSocket handshake as RFC 6455 asks:
    /// `Upgrade` lists `websocket` and `Connection` lists `upgrade`.
    pub(crate) fn is_websocket_upgrade(&self) -> bool {
        is_websocket_upgrade(&self.headers)
    }
}

/// The first header called `name` (case-insensitive), trimmed.
fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// `Upgrade` lists `websocket` and `Connection` lists `upgrade`: the same
/// test for a handshake request and for its `101` answer.
fn is_websocket_upgrade(headers: &[(String, String)]) -> bool {
    has_token(headers, "upgrade", "websocket") && has_token(headers, "connection", "upgrade")
}

/// Whether any header called `name` holds `token` in its comma-separated
/// list. Every such header is looked at: a client may split one list over
/// several lines (`Connection: keep-alive` then `Connection: Upgrade`).
fn has_token(headers: &[(String, String)], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Why a request (or response) head could not be read.
#[derive(Debug)]
#[non_exhaustive]
pub enum HeadError {
    /// The head exceeded the size limit; the caller answers 431.
    TooLarge,
    /// The head is not valid HTTP/1.x; the caller answers 400. The string
    /// says what was wrong.
    Malformed(String),
    /// The peer closed the stream before a complete head; nobody is left
    /// to answer.
    Closed,
    /// Reading from the stream failed.
    Io(io::Error),
}

impl fmt::Display for HeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeadError::TooLarge => f.write_str("HTTP head too large"),
            HeadError::Malformed(what) => write!(f, "malformed HTTP head: {what}"),
            HeadError::Closed => f.write_str("connection closed before a complete HTTP head"),
            HeadError::Io(err) => write!(f, "reading an HTTP head: {err}"),
        }
    }
}

impl std::error::Error for HeadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HeadError::Io(err) => Some(err),
            _ => None,
        }
    }
}

impl From<io::Error> for HeadError {
    fn from(err: io::Error) -> Self {
        HeadError::Io(err)
    }
}

/// Reads from `stream` until the end of the request head, reading at most
/// `max_len` bytes of head.
///
/// Returns the parsed head and any bytes read past it: a WebSocket client
/// may send its first frame right behind the head, and those bytes belong to
/// whoever reads the stream next.
pub async fn read_request_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    max_len: usize,
) -> Result<(Request, Vec<u8>), HeadError> {
    read_head(stream, max_len, parse_request_head).await
}

/// Reads a response head the way [`read_request_head`] reads a request head;
/// the bytes past it are the start of the body (or of the WebSocket stream).
pub async fn read_response_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    max_len: usize,
) -> Result<(Response, Vec<u8>), HeadError> {
    read_head(stream, max_len, parse_response_head).await
}

/// A head parser: `Ok(None)` while the head is incomplete, else the head
/// and its length in bytes.
type ParseHead<T> = fn(&[u8]) -> Result<Option<(T, usize)>, HeadError>;

/// Reads until `parse` finds a complete head, at most `max_len` bytes of it.
async fn read_head<S: AsyncRead + Unpin, T>(
    stream: &mut S,
    max_len: usize,
    parse: ParseHead<T>,
) -> Result<(T, Vec<u8>), HeadError> {
    let mut buf = Vec::with_capacity(READ_CHUNK.min(max_len));
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        // Everything buffered so far is head that has not ended yet.
        if buf.len() >= max_len {
            return Err(HeadError::TooLarge);
        }
        // Never read past the limit, so the buffer stays bounded by it.
        let want = READ_CHUNK.min(max_len - buf.len());
        let n = match stream.read(&mut chunk[..want]).await {
            Ok(0) => return Err(HeadError::Closed),
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(HeadError::Io(err)),
        };
        buf.extend_from_slice(&chunk[..n]);
        // Parse after every read so garbage is refused as soon as it shows.
        if let Some((head, head_len)) = parse(&buf)? {
            return Ok((head, buf.split_off(head_len)));
        }
    }
}

/// Parses `buf` as a request head: `Ok(None)` while it is still incomplete,
/// else the request and the length of the head within `buf`.
fn parse_request_head(buf: &[u8]) -> Result<Option<(Request, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(err) => return Err(HeadError::Malformed(err.to_string())),
    };
    // A complete parse always fills these; refuse rather than trust it.
    let (Some(method), Some(target)) = (parsed.method, parsed.path) else {
        return Err(HeadError::Malformed("missing method or target".into()));
    };
    // Two Host lines would let the Host check read one while a proxy or
    // cache in front goes by the other; RFC 9112 (3.2) asks for 400.
    let hosts = parsed.headers.iter();
    if hosts
        .filter(|h| h.name.eq_ignore_ascii_case("Host"))
        .count()
        > 1
    {
        return Err(HeadError::Malformed("more than one Host header".into()));
    }
    // RFC 6455 (4.1): the opening handshake is HTTP/1.1 or higher, and an
    // HTTP/1.0 proxy on the way would not keep the upgraded stream. Judged
    // here, where httparse has the version, so `Request` needs no field.
    let upgrade = parsed
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("Upgrade"));
    if upgrade && parsed.version == Some(0) {
        return Err(HeadError::Malformed("an upgrade needs HTTP/1.1".into()));
    }
    let request = Request {
        method: method.to_string(),
        target: target.to_string(),
        headers: owned_headers(parsed.headers)?,
    };
    Ok(Some((request, head_len)))
}

/// Parses `buf` as a response head, like [`parse_request_head`].
fn parse_response_head(buf: &[u8]) -> Result<Option<(Response, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(err) => return Err(HeadError::Malformed(err.to_string())),
    };
    let Some(status) = parsed.code else {
        return Err(HeadError::Malformed("missing status".into()));
    };
    let response = Response {
        status,
        reason: parsed.reason.unwrap_or("").to_string(),
        headers: owned_headers(parsed.headers)?,
    };
    Ok(Some((response, head_len)))
}

/// Copies parsed headers out of the read buffer. Values are bytes on the
/// wire; we only deal in UTF-8 text.
fn owned_headers(headers: &[httparse::Header<'_>]) -> Result<Vec<(String, String)>, HeadError> {
    let mut owned = Vec::with_capacity(headers.len());
    for header in headers {
        let value = std::str::from_utf8(header.value).map_err(|_| {
            HeadError::Malformed(format!("header {} is not valid UTF-8", header.name))
        })?;
        owned.push((header.name.to_string(), value.to_string()));
    }
    Ok(owned)
}

/// Decodes `%XX` escapes in `s`; `None` if an escape is cut short or not
/// hexadecimal.
pub(crate) fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let high = hex_value(*bytes.get(i + 1)?)?;
        let low = hex_value(*bytes.get(i + 2)?)?;
        out.push(high << 4 | low);
        i += 3;
    }
    Some(out)
}

/// The value of one hexadecimal digit.
fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::pin::Pin;
    use std::task::{Context, Poll};

    use futures_lite::io::Cursor;

    /// Head size limit for the tests.
    const LIMIT: usize = 8 * 1024;

    /// A reader that hands out its data a few bytes at a time, like a slow
    /// network.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        step: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            // Cycle through 1, 2 and 3 bytes per read.
            self.step = self.step % 3 + 1;
            let n = self.step.min(buf.len()).min(self.data.len() - self.pos);
            let start = self.pos;
            buf[..n].copy_from_slice(&self.data[start..start + n]);
            self.pos += n;
            Poll::Ready(Ok(n))
        }
    }

    fn read_head(data: &[u8], max_len: usize) -> Result<(Request, Vec<u8>), HeadError> {
        let mut reader = Cursor::new(data.to_vec());
        smol::block_on(read_request_head(&mut reader, max_len))
    }

    #[test]
    fn head_with_leftover_bytes() {
        let data =
            b"GET /server?x=1 HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n\x81\x05hello";
        let (req, rest) = read_head(data, LIMIT).unwrap();
        assert_eq!(req.method, "GET");
        assert_eq!(req.target, "/server?x=1");
        assert_eq!(req.path(), "/server");
        assert_eq!(req.query(), Some("x=1"));
        assert_eq!(req.headers.len(), 2);
        assert_eq!(rest, b"\x81\x05hello");
    }

    #[test]
    fn head_in_small_chunks() {
        let data = b"GET / HTTP/1.0\r\nHost: example\r\nX-Long: aaaaaaaaaaaaaaaaaaaa\r\n\r\nrest";
        let mut reader = Trickle {
            data: data.to_vec(),
            pos: 0,
            step: 0,
        };
        let (req, rest) = smol::block_on(read_request_head(&mut reader, LIMIT)).unwrap();
        assert_eq!(req.header("host"), Some("example"));
        assert_eq!(req.header("x-long"), Some("aaaaaaaaaaaaaaaaaaaa"));
        // At most three bytes were read past the head.
        assert!(b"rest".starts_with(&rest));
    }

    #[test]
    fn head_too_large() {
        let mut data = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..100 {
            data.extend_from_slice(format!("X-{i}: value\r\n").as_bytes());
        }
        assert!(matches!(read_head(&data, 64), Err(HeadError::TooLarge)));
        // A complete head that is still over the limit.
        data.extend_from_slice(b"\r\n");
        assert!(matches!(read_head(&data, 64), Err(HeadError::TooLarge)));
    }

    #[test]
    fn head_malformed() {
        let garbage = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
        assert!(matches!(
            read_head(garbage, LIMIT),
            Err(HeadError::Malformed(_))
        ));
        let bad_version = b"GET / HTTP/2.0\r\n\r\n";
        assert!(matches!(
            read_head(bad_version, LIMIT),
            Err(HeadError::Malformed(_))
        ));
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..(MAX_HEADERS + 1) {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(
            read_head(&many, LIMIT),
            Err(HeadError::Malformed(_))
        ));
        let bad_utf8 = b"GET / HTTP/1.1\r\nX: \xff\xfe\r\n\r\n";
        assert!(matches!(
            read_head(bad_utf8, LIMIT),
            Err(HeadError::Malformed(_))
        ));
    }

    #[test]
    fn head_closed() {
        assert!(matches!(read_head(b"", LIMIT), Err(HeadError::Closed)));
        assert!(matches!(
            read_head(b"GET / HTTP/1.1\r\nHost: a\r\n", LIMIT),
            Err(HeadError::Closed)
        ));
    }

    #[test]
    fn header_lookup_is_case_insensitive() {
        let data = b"GET / HTTP/1.1\r\nContent-TYPE:  text/plain  \r\nX-A: 1\r\nx-a: 2\r\n\r\n";
        let (req, _) = read_head(data, LIMIT).unwrap();
        assert_eq!(req.header("content-type"), Some("text/plain"));
        assert_eq!(req.header("X-A"), Some("1"));
        assert_eq!(req.header("missing"), None);
        assert!(!req.wants_upgrade());
    }

    #[test]
    fn websocket_upgrade_detection() {
        let data = b"GET /server HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n\r\n";
        let (req, _) = read_head(data, LIMIT).unwrap();
        assert!(req.wants_upgrade());
        assert!(req.is_websocket_upgrade());

        let data = b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n";
        let (req, _) = read_head(data, LIMIT).unwrap();
        assert!(req.wants_upgrade());
        assert!(!req.is_websocket_upgrade());

        let data = b"GET / HTTP/1.1\r\nConnection: keep-alive\r\nUpgrade: websocket\r\n\r\n";
        let (req, _) = read_head(data, LIMIT).unwrap();
        assert!(!req.is_websocket_upgrade());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("/a%20b").unwrap(), b"/a b");
        assert_eq!(percent_decode("%2E%2e").unwrap(), b"..");
        assert!(percent_decode("/%zz").is_none());
        assert!(percent_decode("/%").is_none());
        assert!(percent_decode("/%2").is_none());
    }
}
