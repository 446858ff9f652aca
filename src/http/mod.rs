//! HTTP/1.1 for the one port: reading and parsing a request head, writing
//! simple responses, and serving static files (or the built-in page) safely.
//! The client's handshake reads a response head with the same code.
//!
//! Every response closes the connection, so there is no keep-alive or
//! pipelining to get wrong: one request head in, one response out.

pub(crate) mod access;
#[cfg(feature = "trusted-proxy")]
pub mod forwarded;
pub(crate) mod handshake;

use std::fmt;
use std::future::Future;
use std::io;
#[cfg(feature = "static-files")]
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_io::Timer;
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Most headers a request head may carry. Browsers send about twenty; more
/// than this is refused as malformed rather than parsed into a growing list.
const MAX_HEADERS: usize = 64;

/// Bytes asked of the stream per read while looking for the end of a head.
/// A whole ordinary head usually arrives in one read of this size.
const READ_CHUNK: usize = 1024;

/// The page served at `/` when no directory is given: the browser console.
#[cfg(feature = "console")]
pub const BUILTIN_PAGE: &str = include_str!("builtin/index.html");

/// The page served at `/` when no directory is given: without the
/// `console` feature, a short description of the endpoint.
#[cfg(not(feature = "console"))]
pub const BUILTIN_PAGE: &str = include_str!("builtin/minimal.html");

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

/// Writes a complete response with `Connection: close`, `Content-Length`,
/// the given extra headers and the body, then flushes.
///
/// With `head_only` (an answer to `HEAD`) the body is left out, but
/// `Content-Length` still gives its length.
pub async fn write_response<W: AsyncWrite + Unpin>(
    w: &mut W,
    status: u16,
    extra_headers: &[(&str, &str)],
    body: &[u8],
    head_only: bool,
) -> io::Result<()> {
    write_head(w, status, extra_headers, body.len() as u64).await?;
    if !head_only {
        w.write_all(body).await?;
    }
    w.flush().await
}

/// Shorthand: a `text/plain; charset=utf-8` response whose body is `message`
/// plus a newline.
pub async fn write_error<W: AsyncWrite + Unpin>(
    w: &mut W,
    status: u16,
    message: &str,
) -> io::Result<()> {
    send_error(w, status, message, false).await
}

/// [`write_error`] that leaves the body out when answering `HEAD`.
async fn send_error<W: AsyncWrite + Unpin>(
    w: &mut W,
    status: u16,
    message: &str,
    head_only: bool,
) -> io::Result<()> {
    let body = format!("{message}\n");
    let headers = [("Content-Type", "text/plain; charset=utf-8")];
    write_response(w, status, &headers, body.as_bytes(), head_only).await
}

/// Writes the status line and headers, up to and including the blank line.
async fn write_head<W: AsyncWrite + Unpin>(
    w: &mut W,
    status: u16,
    extra_headers: &[(&str, &str)],
    content_length: u64,
) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", status, reason_phrase(status));
    head.push_str(&format!("Content-Length: {content_length}\r\n"));
    head.push_str("Connection: close\r\n");
    for (name, value) in extra_headers {
        // A line break in a header would let its author inject headers.
        if has_line_break(name) || has_line_break(value) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "line break in a response header",
            ));
        }
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes()).await
}

/// Whether `s` contains a CR or LF.
fn has_line_break(s: &str) -> bool {
    s.contains(['\r', '\n'])
}

/// A writer whose every write (and flush) must make progress within
/// `limit`, else it fails with `TimedOut`: a peer that stops reading an HTTP
/// response is dropped after the same [`write_timeout`] as a WebSocket
/// frame, while one that reads slowly but steadily gets the whole body.
///
/// [`write_timeout`]: crate::Config::write_timeout
pub struct WriteTimeout<'a, W> {
    inner: &'a mut W,
    limit: Duration,
    /// Armed while a write is pending; dropped once it progresses.
    timer: Option<Timer>,
}

impl<'a, W: AsyncWrite + Unpin> WriteTimeout<'a, W> {
    /// Wraps `inner`; each write may stay pending for at most `limit`.
    pub fn new(inner: &'a mut W, limit: Duration) -> Self {
        WriteTimeout {
            inner,
            limit,
            timer: None,
        }
    }

    /// Maps a pending poll to `TimedOut` once `limit` has passed since the
    /// write started waiting; any progress disarms the timer.
    fn guard<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.timer = None;
            return poll;
        }
        let limit = self.limit;
        let timer = self.timer.get_or_insert_with(|| Timer::after(limit));
        match Pin::new(timer).poll(cx) {
            Poll::Ready(_) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer stopped reading the response",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<'_, W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut *self.inner).poll_write(cx, buf);
        self.guard(cx, poll)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut *self.inner).poll_flush(cx);
        self.guard(cx, poll)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut *self.inner).poll_close(cx);
        self.guard(cx, poll)
    }
}

/// Reason phrase for the status codes this crate sends; `Unknown` otherwise.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        301 => "Moved Permanently",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        421 => "Misdirected Request",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Where `/` is served from: a directory on disk (with the
/// `static-files` feature), or the built-in page.
#[derive(Debug, Clone)]
pub struct StaticFiles {
    /// The canonical directory files are served from; `None` serves only
    /// the built-in page.
    #[cfg(feature = "static-files")]
    root: Option<PathBuf>,
}

impl StaticFiles {
    /// Serves files under `dir`, which is canonicalized here so that every
    /// later containment check compares canonical paths.
    #[cfg(feature = "static-files")]
    pub fn from_dir(dir: &Path) -> io::Result<Self> {
        let root = std::fs::canonicalize(dir)?;
        if !root.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a directory", dir.display()),
            ));
        }
        Ok(StaticFiles { root: Some(root) })
    }

    /// Serves only the built-in page, at `/` and `/index.html`.
    pub fn builtin() -> Self {
        StaticFiles {
            #[cfg(feature = "static-files")]
            root: None,
        }
    }

    /// Answers one `GET` or `HEAD` request and returns the status it sent.
    ///
    /// The caller has already refused other methods and handled upgrades.
    pub async fn serve<W: AsyncWrite + Unpin>(&self, req: &Request, w: &mut W) -> io::Result<u16> {
        let head_only = req.method.eq_ignore_ascii_case("HEAD");
        let path = req.path();
        // Only origin-form targets name a file; `*` and absolute URLs do not.
        if !path.starts_with('/') {
            send_error(w, 400, "bad request target", head_only).await?;
            return Ok(400);
        }
        #[cfg(feature = "static-files")]
        if let Some(root) = &self.root {
            return dir::serve(root, path, w, head_only).await;
        }
        serve_builtin(path, w, head_only).await
    }
}

/// Answers a request when only the built-in page is served.
async fn serve_builtin<W: AsyncWrite + Unpin>(
    path: &str,
    w: &mut W,
    head_only: bool,
) -> io::Result<u16> {
    if path != "/" && path != "/index.html" {
        send_error(w, 404, reason_phrase(404), head_only).await?;
        return Ok(404);
    }
    let headers = [
        ("Content-Type", "text/html; charset=utf-8"),
        ("X-Content-Type-Options", "nosniff"),
    ];
    write_response(w, 200, &headers, BUILTIN_PAGE.as_bytes(), head_only).await?;
    Ok(200)
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

#[cfg(feature = "static-files")]
pub use dir::content_type;

/// Serving a directory (`--www`): paths that cannot leave the root,
/// content types, streaming. Only with the `static-files` feature.
#[cfg(feature = "static-files")]
mod dir {
    use std::io;
    use std::path::{Path, PathBuf};

    use futures_lite::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

    use super::{percent_decode, reason_phrase, send_error, write_head, write_response};

    /// Bytes of a file read ahead of the socket per response. `Unblock`'s
    /// default pipe is 8 MiB, which a peer that stops reading holds for as
    /// long as it stays connected; 32 KiB still fills a socket buffer in
    /// a few reads.
    const FILE_PIPE_CAPACITY: usize = 32 * 1024;

    /// Content types by file extension (compared case-insensitively). Text types
    /// name their charset so browsers need not guess.
    const CONTENT_TYPES: &[(&str, &str)] = &[
        ("html", "text/html; charset=utf-8"),
        ("htm", "text/html; charset=utf-8"),
        ("css", "text/css; charset=utf-8"),
        ("js", "text/javascript; charset=utf-8"),
        ("mjs", "text/javascript; charset=utf-8"),
        ("json", "application/json; charset=utf-8"),
        ("map", "application/json; charset=utf-8"),
        ("txt", "text/plain; charset=utf-8"),
        ("svg", "image/svg+xml; charset=utf-8"),
        ("xml", "application/xml; charset=utf-8"),
        ("png", "image/png"),
        ("jpg", "image/jpeg"),
        ("jpeg", "image/jpeg"),
        ("gif", "image/gif"),
        ("ico", "image/x-icon"),
        ("webp", "image/webp"),
        ("wasm", "application/wasm"),
        ("pdf", "application/pdf"),
        ("woff", "font/woff"),
        ("woff2", "font/woff2"),
    ];

    /// Content type for anything not in [`CONTENT_TYPES`]: browsers download it
    /// instead of trying to render it.
    pub(super) const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

    /// The file served for a request that names a directory.
    const INDEX_FILE: &str = "index.html";

    /// Content-Type for a file name by its extension;
    /// `application/octet-stream` when the extension is unknown.
    pub fn content_type(path: &Path) -> &'static str {
        let Some(ext) = path.extension().and_then(|ext| ext.to_str()) else {
            return DEFAULT_CONTENT_TYPE;
        };
        CONTENT_TYPES
            .iter()
            .find(|(known, _)| known.eq_ignore_ascii_case(ext))
            .map_or(DEFAULT_CONTENT_TYPE, |(_, ty)| ty)
    }

    /// What a request path resolved to inside the root.
    #[derive(Debug)]
    enum Resolved {
        /// A regular file inside the root, opened, with its length and the
        /// content type its name implies.
        File(std::fs::File, u64, &'static str),
        /// A directory named without its trailing slash; send the client here.
        Redirect(String),
        /// Nothing to serve; answer with this status.
        Status(u16),
    }

    /// Answers a `GET` or `HEAD` for `path` from under the canonical `root`.
    pub(super) async fn serve<W: AsyncWrite + Unpin>(
        root: &Path,
        path: &str,
        w: &mut W,
        head_only: bool,
    ) -> io::Result<u16> {
        // The file system is blocking: resolve and open on smol's blocking
        // pool, in one hop rather than one per system call.
        let (root, raw_path) = (root.to_path_buf(), path.to_string());
        match smol::unblock(move || resolve(&root, &raw_path)).await {
            Resolved::File(file, len, content_type) => {
                serve_file(file, len, content_type, w, head_only).await
            }
            Resolved::Redirect(location) => {
                let headers = [("Location", location.as_str())];
                write_response(w, 301, &headers, b"", head_only).await?;
                Ok(301)
            }
            Resolved::Status(status) => {
                send_error(w, status, reason_phrase(status), head_only).await?;
                Ok(status)
            }
        }
    }

    /// Streams the opened regular `file` of `len` bytes without reading it
    /// whole into memory.
    async fn serve_file<W: AsyncWrite + Unpin>(
        file: std::fs::File,
        len: u64,
        content_type: &str,
        w: &mut W,
        head_only: bool,
    ) -> io::Result<u16> {
        let headers = [
            ("Content-Type", content_type),
            ("X-Content-Type-Options", "nosniff"),
        ];
        write_head(w, 200, &headers, len).await?;
        if !head_only {
            // `take` keeps the body to the promised length if the file grows.
            let file = smol::Unblock::with_capacity(FILE_PIPE_CAPACITY, file);
            futures_lite::io::copy(file.take(len), &mut *w).await?;
        }
        w.flush().await?;
        Ok(200)
    }

    /// Resolves a raw request path (starting with `/`) to what should be served
    /// from under the canonical `root`, opening the file. Blocking.
    fn resolve(root: &Path, raw_path: &str) -> Resolved {
        let segments = match path_segments(raw_path) {
            Ok(segments) => segments,
            Err(status) => return Resolved::Status(status),
        };
        let mut joined = root.to_path_buf();
        joined.extend(&segments);
        let target = match contained(root, &joined) {
            Ok(target) => target,
            Err(status) => return Resolved::Status(status),
        };
        if target.is_dir() {
            if !raw_path.ends_with('/') {
                // One leading slash only: `//host/` would send the browser elsewhere.
                let location = format!("/{}/", raw_path.trim_start_matches('/'));
                return Resolved::Redirect(location);
            }
            // The index may itself be a symlink, so it is checked like any target.
            return match contained(root, &target.join(INDEX_FILE)) {
                Ok(index) => open_regular(&index),
                Err(status) => Resolved::Status(status),
            };
        }
        if raw_path.ends_with('/') {
            // `/file.txt/` names a directory that does not exist.
            return Resolved::Status(404);
        }
        open_regular(&target)
    }

    /// Opens `path` if it is a regular file: fifos and devices would block or
    /// never end. The type is checked before `open`, which blocks on a fifo
    /// with no writer (parking a blocking-pool thread for good), and again
    /// on the open file, whose type and length then match what is sent even
    /// if the path changed in between.
    fn open_regular(path: &Path) -> Resolved {
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => {
                log::debug!("{} is not a regular file", path.display());
                return Resolved::Status(404);
            }
            Err(err) => {
                log::debug!("inspecting {}: {err}", path.display());
                return Resolved::Status(404);
            }
        }
        let opened = std::fs::File::open(path).and_then(|file| Ok((file.metadata()?, file)));
        match opened {
            Ok((meta, file)) if meta.is_file() => {
                Resolved::File(file, meta.len(), content_type(path))
            }
            Ok(_) => Resolved::Status(404),
            Err(err) => {
                log::debug!("opening {}: {err}", path.display());
                Resolved::Status(404)
            }
        }
    }

    /// Canonicalizes `path` and checks it is still inside `root`: 404 when it
    /// does not exist, 403 when a symlink leads out of the root.
    fn contained(root: &Path, path: &Path) -> Result<PathBuf, u16> {
        let canonical = match std::fs::canonicalize(path) {
            Ok(canonical) => canonical,
            Err(err) => {
                log::debug!("resolving {}: {err}", path.display());
                return Err(404);
            }
        };
        if !canonical.starts_with(root) {
            log::debug!("{} leads outside the root", path.display());
            return Err(403);
        }
        Ok(canonical)
    }

    /// Splits a raw request path into the decoded file-name segments to join
    /// onto the root, or the status to refuse it with.
    ///
    /// The path is percent-decoded exactly once, before splitting, so an
    /// encoded `..` or `/` is judged like a literal one, while a double-encoded
    /// `%252e` stays the literal name `%2e`.
    fn path_segments(raw_path: &str) -> Result<Vec<String>, u16> {
        let decoded = percent_decode(raw_path).ok_or(400u16)?;
        let decoded = String::from_utf8(decoded).map_err(|_| 400u16)?;
        // No file name contains NUL, and the OS would cut the path at it.
        if decoded.contains('\0') {
            return Err(400);
        }
        let mut segments = Vec::new();
        for segment in decoded.split('/') {
            // Empty and `.` segments name the same directory.
            if segment.is_empty() || segment == "." {
                continue;
            }
            // `..` climbs out; a backslash is a separator on some systems.
            if segment == ".." || segment.contains('\\') {
                return Err(403);
            }
            segments.push(segment.to_string());
        }
        Ok(segments)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(feature = "static-files")]
    use dir::{content_type, DEFAULT_CONTENT_TYPE};

    #[cfg(feature = "static-files")]
    use std::path::{Path, PathBuf};
    use std::pin::Pin;
    #[cfg(feature = "static-files")]
    use std::sync::atomic::{AtomicUsize, Ordering};
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

    #[cfg(feature = "static-files")]
    /// A directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    #[cfg(feature = "static-files")]
    impl TempDir {
        fn new() -> TempDir {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let name = format!("wsloop-http-test-{}-{}", std::process::id(), n);
            let path = std::env::temp_dir().join(name);
            std::fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
    }

    #[cfg(feature = "static-files")]
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A response split into status, headers and body.
    struct Response {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Response {
        fn parse(raw: &[u8]) -> Response {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut parsed = httparse::Response::new(&mut headers);
            let httparse::Status::Complete(len) = parsed.parse(raw).unwrap() else {
                panic!("incomplete response");
            };
            Response {
                status: parsed.code.unwrap(),
                headers: parsed
                    .headers
                    .iter()
                    .map(|h| {
                        let value = String::from_utf8(h.value.to_vec()).unwrap();
                        (h.name.to_string(), value)
                    })
                    .collect(),
                body: raw[len..].to_vec(),
            }
        }

        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    fn request(method: &str, target: &str) -> Request {
        Request {
            method: method.to_string(),
            target: target.to_string(),
            headers: Vec::new(),
        }
    }

    fn serve(files: &StaticFiles, method: &str, target: &str) -> Response {
        let mut out = Vec::new();
        let status = smol::block_on(files.serve(&request(method, target), &mut out)).unwrap();
        let response = Response::parse(&out);
        assert_eq!(
            status, response.status,
            "returned status matches the sent one"
        );
        response
    }

    fn read_head(data: &[u8], max_len: usize) -> Result<(Request, Vec<u8>), HeadError> {
        let mut reader = Cursor::new(data.to_vec());
        smol::block_on(read_request_head(&mut reader, max_len))
    }

    #[cfg(feature = "static-files")]
    /// A root with `hello.txt`, `style.css`, `dir/index.html`, `empty/`.
    fn sample_root() -> TempDir {
        let tmp = TempDir::new();
        let root = tmp.0.join("root");
        std::fs::create_dir_all(root.join("dir")).unwrap();
        std::fs::create_dir_all(root.join("empty")).unwrap();
        std::fs::write(root.join("hello.txt"), "hello world").unwrap();
        std::fs::write(root.join("style.css"), "body{}").unwrap();
        std::fs::write(root.join("dir").join("index.html"), "<p>dir</p>").unwrap();
        std::fs::write(tmp.0.join("secret.txt"), "secret").unwrap();
        tmp
    }

    #[cfg(feature = "static-files")]
    fn files_of(tmp: &TempDir) -> StaticFiles {
        StaticFiles::from_dir(&tmp.0.join("root")).unwrap()
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
    fn response_format() {
        let mut out = Vec::new();
        smol::block_on(write_error(&mut out, 404, "no such thing")).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(text.contains("Content-Length: 14\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\nno such thing\n"));

        let mut out = Vec::new();
        let injected = [("X", "a\r\nSet-Cookie: b")];
        assert!(smol::block_on(write_response(&mut out, 200, &injected, b"", false)).is_err());
    }

    #[cfg(feature = "static-files")]
    #[test]
    fn content_types() {
        assert_eq!(
            content_type(Path::new("a.HTML")),
            "text/html; charset=utf-8"
        );
        assert_eq!(content_type(Path::new("a.woff2")), "font/woff2");
        assert_eq!(content_type(Path::new("a.png")), "image/png");
        assert_eq!(content_type(Path::new("noext")), DEFAULT_CONTENT_TYPE);
        assert_eq!(content_type(Path::new("a.exe")), DEFAULT_CONTENT_TYPE);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("/a%20b").unwrap(), b"/a b");
        assert_eq!(percent_decode("%2E%2e").unwrap(), b"..");
        assert!(percent_decode("/%zz").is_none());
        assert!(percent_decode("/%").is_none());
        assert!(percent_decode("/%2").is_none());
    }

    #[cfg(feature = "static-files")]
    #[test]
    fn serves_file_with_type() {
        let tmp = sample_root();
        let files = files_of(&tmp);
        let resp = serve(&files, "GET", "/hello.txt?cache=1");
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(resp.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(resp.header("content-length"), Some("11"));
        assert_eq!(resp.body, b"hello world");

        let resp = serve(&files, "GET", "/style%2ecss");
        assert_eq!(resp.header("content-type"), Some("text/css; charset=utf-8"));
        assert_eq!(resp.body, b"body{}");
    }

    #[cfg(feature = "static-files")]
    #[test]
    fn head_has_length_but_no_body() {
        let tmp = sample_root();
        let resp = serve(&files_of(&tmp), "HEAD", "/hello.txt");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("content-length"), Some("11"));
        assert!(resp.body.is_empty());
    }

    #[cfg(feature = "static-files")]
    #[test]
    fn directory_index_and_redirect() {
        let tmp = sample_root();
        let files = files_of(&tmp);
        let resp = serve(&files, "GET", "/dir/");
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        assert_eq!(resp.body, b"<p>dir</p>");

        let resp = serve(&files, "GET", "/dir");
        assert_eq!(resp.status, 301);
        assert_eq!(resp.header("location"), Some("/dir/"));

        // No open redirect to another host through a leading `//`.
        let resp = serve(&files, "GET", "//dir");
        assert_eq!(resp.header("location"), Some("/dir/"));

        // No listing for a directory without an index.
        assert_eq!(serve(&files, "GET", "/empty/").status, 404);
    }

    #[cfg(feature = "static-files")]
    #[test]
    fn missing_is_404() {
        let tmp = sample_root();
        let files = files_of(&tmp);
        assert_eq!(serve(&files, "GET", "/nope.txt").status, 404);
        assert_eq!(serve(&files, "GET", "/hello.txt/x").status, 404);
        assert_eq!(serve(&files, "GET", "/hello.txt/").status, 404);
        // Decoded once only: the literal name `%2e%2e` simply is not there.
        assert_eq!(serve(&files, "GET", "/%252e%252e/x").status, 404);
    }

    #[cfg(feature = "static-files")]
    #[test]
    fn traversal_is_403() {
        let tmp = sample_root();
        let files = files_of(&tmp);
        for target in [
            "/../etc/passwd",
            "/%2e%2e/etc/passwd",
            "/a/%2E%2E/%2e%2e/x",
            "/..%2fsecret.txt",
            "/a%5c..%5csecret.txt",
        ] {
            assert_eq!(serve(&files, "GET", target).status, 403, "{target}");
        }
    }

    #[cfg(feature = "static-files")]
    #[test]
    fn bad_targets_are_400() {
        let tmp = sample_root();
        let files = files_of(&tmp);
        for target in ["/%zz", "/%", "/a%00b", "/%ff", "*", "http://x/hello.txt"] {
            assert_eq!(serve(&files, "GET", target).status, 400, "{target}");
        }
    }

    #[cfg(feature = "static-files")]
    #[cfg(unix)]
    #[test]
    fn symlink_outside_root_is_403() {
        let tmp = sample_root();
        let root = tmp.0.join("root");
        std::os::unix::fs::symlink(tmp.0.join("secret.txt"), root.join("link.txt")).unwrap();
        std::os::unix::fs::symlink(&tmp.0, root.join("up")).unwrap();
        std::os::unix::fs::symlink(root.join("hello.txt"), root.join("inside.txt")).unwrap();
        let files = files_of(&tmp);
        assert_eq!(serve(&files, "GET", "/link.txt").status, 403);
        assert_eq!(serve(&files, "GET", "/up/secret.txt").status, 403);
        let resp = serve(&files, "GET", "/inside.txt");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, b"hello world");
    }

    #[cfg(feature = "static-files")]
    #[test]
    fn from_dir_rejects_files() {
        let tmp = sample_root();
        assert!(StaticFiles::from_dir(&tmp.0.join("secret.txt")).is_err());
        assert!(StaticFiles::from_dir(&tmp.0.join("missing")).is_err());
    }

    #[test]
    fn builtin_page() {
        let files = StaticFiles::builtin();
        let resp = serve(&files, "GET", "/");
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        assert!(String::from_utf8(resp.body).unwrap().contains("wsloop"));
        assert_eq!(serve(&files, "GET", "/index.html").status, 200);
        assert_eq!(serve(&files, "GET", "/favicon.ico").status, 404);
        assert_eq!(serve(&files, "GET", "/x").status, 404);
        assert!(BUILTIN_PAGE.len() < 12 * 1024);
    }
}
