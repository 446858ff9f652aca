//! Inputs the fuzz targets in `fuzz/` (http_head, static_path, frames)
//! reached, kept as plain tests of the public API: tricky request heads,
//! tricky static paths, and hostile byte streams fed to a server
//! connection.

mod common;

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::io::Cursor;
use futures_lite::{AsyncRead, AsyncWrite, StreamExt};
use wsloop::async_tungstenite::tungstenite::protocol::Role;
use wsloop::async_tungstenite::tungstenite::{self, Message as Frame};
use wsloop::async_tungstenite::WebSocketStream;
use wsloop::http::{read_request_head, HeadError, Request};
use wsloop::{Config, Connection, Message, Peer};

const LIMIT: usize = wsloop::MAX_REQUEST_HEAD_SIZE;

// ---------------------------------------------------------------------------
// Request heads

fn read_head(data: &[u8], limit: usize) -> Result<(Request, Vec<u8>), HeadError> {
    smol::block_on(read_request_head(&mut Cursor::new(data), limit))
}

/// Hands out its data `step` bytes per read.
struct Chunked<'a> {
    data: &'a [u8],
    step: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let n = self.step.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(n))
    }
}

/// What a head should come out as.
#[derive(Debug)]
enum Want {
    /// Parsed, with this target and this leftover.
    Ok(&'static str, &'static [u8]),
    Malformed,
    Closed,
}

fn verdict(result: &Result<(Request, Vec<u8>), HeadError>) -> String {
    match result {
        Ok((req, rest)) => format!("Ok({:?}, {:?})", req.target, rest),
        Err(HeadError::Malformed(_)) => "Malformed".into(),
        Err(HeadError::Closed) => "Closed".into(),
        Err(HeadError::TooLarge) => "TooLarge".into(),
        Err(HeadError::Io(err)) => format!("Io({err})"),
        Err(other) => format!("{other:?}"),
    }
}

fn check_head(input: &[u8], want: &Want) {
    let whole = read_head(input, LIMIT);
    let matches = match (&whole, want) {
        (Ok((req, rest)), Want::Ok(target, leftover)) => {
            req.target == *target && rest.as_slice() == *leftover
        }
        (Err(HeadError::Malformed(_)), Want::Malformed)
        | (Err(HeadError::Closed), Want::Closed) => true,
        _ => false,
    };
    assert!(
        matches,
        "{:?}: got {}, want {want:?}",
        String::from_utf8_lossy(input),
        verdict(&whole)
    );
    // Read a byte at a time, the verdict is the same (the leftover is empty:
    // nothing is read past the head).
    let mut slow = Chunked {
        data: input,
        step: 1,
    };
    let trickled = smol::block_on(read_request_head(&mut slow, LIMIT));
    match (&whole, &trickled) {
        (Ok((a, _)), Ok((b, rest))) => {
            assert_eq!(a.target, b.target);
            assert_eq!(a.headers, b.headers);
            assert!(rest.is_empty());
        }
        (a, b) => assert_eq!(verdict(a), verdict(b)),
    }
    if let Ok((req, _)) = &whole {
        // Accessors on whatever parsed.
        let _ = (req.path(), req.query(), req.wants_upgrade());
        assert!(!req.is_websocket_upgrade() || req.wants_upgrade());
    }
}

#[test]
fn tricky_request_heads() {
    let cases: &[(&[u8], Want)] = &[
        (b"GET / HTTP/1.1\r\n\r\n", Want::Ok("/", b"")),
        // Bare LF line ends are accepted.
        (b"GET /a HTTP/1.0\nX: y\n\n", Want::Ok("/a", b"")),
        // Empty lines before the request line are skipped.
        (b"\r\n\r\nGET / HTTP/1.1\r\n\r\n", Want::Ok("/", b"")),
        // The first frame right behind the head is handed back.
        (
            b"GET /server HTTP/1.1\r\nUpgrade: websocket\r\n\r\n\x81\x85abcd",
            Want::Ok("/server", b"\x81\x85abcd"),
        ),
        (b"GET /a?b?c HTTP/1.1\r\n\r\n", Want::Ok("/a?b?c", b"")),
        // Obsolete line folding, empty header names, bad versions, NUL,
        // raw non-UTF-8 header values: all refused.
        (b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", Want::Malformed),
        (b"GET / HTTP/1.1\r\n: v\r\n\r\n", Want::Malformed),
        (b"GET / HTTP/2.0\r\n\r\n", Want::Malformed),
        (b"GET /\0 HTTP/1.1\r\n\r\n", Want::Malformed),
        (b"GET / HTTP/1.1\r\nX: \xff\xfe\r\n\r\n", Want::Malformed),
        (b"GET / HTTP/1.1\rX: y\r\n\r\n", Want::Malformed),
        (b"\x16\x03\x01\x02\x00\x01\x00", Want::Malformed),
        // Cut short: nobody left to answer.
        (b"", Want::Closed),
        (b"GET / HTTP/1.1\r\nHost:", Want::Closed),
        (b"GET / HTTP/1.1\r\n\r", Want::Closed),
    ];
    for (input, want) in cases {
        check_head(input, want);
    }
}

#[test]
fn non_utf8_target_is_refused_or_kept_valid() {
    // httparse's request-target check decides; whatever it lets through
    // must still be a valid `&str` with working accessors.
    for input in [
        &b"GET /\xff HTTP/1.1\r\n\r\n"[..],
        b"GET /\xc3\xa9?\xe2\x82 HTTP/1.1\r\n\r\n",
        b"GET /\xe2\x82\xac HTTP/1.1\r\n\r\n",
    ] {
        match read_head(input, LIMIT) {
            Ok((req, _)) => {
                assert!(std::str::from_utf8(req.target.as_bytes()).is_ok());
                let _ = (req.path(), req.query());
            }
            Err(HeadError::Malformed(_)) => {}
            Err(err) => panic!("{input:?}: {err}"),
        }
    }
}

#[test]
fn too_many_headers_is_malformed() {
    let mut head = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..65 {
        head.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    assert!(matches!(
        read_head(&head, LIMIT),
        Err(HeadError::Malformed(_))
    ));
}

/// A complete head of exactly `len` bytes.
fn head_of_len(len: usize) -> Vec<u8> {
    let start = b"GET / HTTP/1.1\r\nX: ";
    let mut head = start.to_vec();
    head.resize(len - 4, b'a');
    head.extend_from_slice(b"\r\n\r\n");
    assert_eq!(head.len(), len);
    head
}

#[test]
fn head_size_limit_boundary() {
    // Exactly at the limit parses; one byte more is too large, whole or
    // trickled.
    let (req, rest) = read_head(&head_of_len(LIMIT), LIMIT).unwrap();
    assert_eq!(req.header("x").map(str::len), Some(LIMIT - 23));
    assert!(rest.is_empty());
    let over = head_of_len(LIMIT + 1);
    assert!(matches!(read_head(&over, LIMIT), Err(HeadError::TooLarge)));
    let mut slow = Chunked {
        data: &over,
        step: 7,
    };
    let trickled = smol::block_on(read_request_head(&mut slow, LIMIT));
    assert!(matches!(trickled, Err(HeadError::TooLarge)));
    // An incomplete head just under the limit that then ends is Closed,
    // not TooLarge.
    let short = &head_of_len(LIMIT)[..LIMIT - 1];
    assert!(matches!(read_head(short, LIMIT), Err(HeadError::Closed)));
    // Bytes after a head at the limit are not read (the limit bounds the
    // buffer): the leftover is empty, however much follows.
    let mut more = head_of_len(LIMIT);
    more.extend_from_slice(b"\x81\x80abcd");
    let (_, rest) = read_head(&more, LIMIT).unwrap();
    assert!(rest.is_empty());
    // Tiny limits.
    assert!(matches!(
        read_head(b"GET / HTTP/1.1\r\n\r\n", 1),
        Err(HeadError::TooLarge)
    ));
    assert!(read_head(b"GET / HTTP/1.1\r\n\r\n", 18).is_ok());
    assert!(matches!(
        read_head(b"GET / HTTP/1.1\r\n\r\n", 17),
        Err(HeadError::TooLarge)
    ));
}

// ---------------------------------------------------------------------------
// Static paths

/// Only with the `static-files` feature: without it nothing is served from
/// a directory.
#[cfg(feature = "static-files")]
mod static_paths {
    use super::*;
    use crate::common::fs::TempDir;
    use wsloop::http::StaticFiles;

    const MARKER: &str = "OUTSIDE-THE-ROOT-regression";

    /// The fuzz target's tree: files, `dir/index.html`, `dir/sub/deep.json`,
    /// `empty/`, and symlinks leading out of the root.
    fn www() -> (TempDir, StaticFiles) {
        let tmp = TempDir::new("fuzz-regressions");
        let base = tmp.to_path_buf();
        let root = base.join("www");
        std::fs::create_dir_all(root.join("dir/sub")).unwrap();
        std::fs::create_dir_all(root.join("empty")).unwrap();
        for (name, body) in [
            ("hello.txt", "hello world"),
            ("a b.html", "<p>space</p>"),
            ("%41.txt", "literal percent"),
            ("dir/index.html", "<p>dir</p>"),
            ("dir/sub/deep.json", "{}"),
        ] {
            std::fs::write(root.join(name), body).unwrap();
        }
        std::fs::write(base.join("secret.txt"), MARKER).unwrap();
        std::fs::create_dir_all(base.join("outdir")).unwrap();
        std::fs::write(base.join("outdir/index.html"), MARKER).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::symlink;
            symlink(base.join("secret.txt"), root.join("link.txt")).unwrap();
            symlink(&base, root.join("up")).unwrap();
            symlink(base.join("outdir"), root.join("outdir")).unwrap();
            symlink("../../secret.txt", root.join("dir/rel.txt")).unwrap();
        }
        let files = StaticFiles::from_dir(&root).unwrap();
        (tmp, files)
    }

    /// Serves `target` and returns the status, the Location header, the body.
    fn get(files: &StaticFiles, target: &str) -> (u16, Option<String>, Vec<u8>) {
        let req = Request {
            method: "GET".into(),
            target: target.into(),
            headers: Vec::new(),
        };
        let mut out = Vec::new();
        let status = smol::block_on(files.serve(&req, &mut out)).unwrap();
        let end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = std::str::from_utf8(&out[..end]).unwrap();
        assert!(head.starts_with(&format!("HTTP/1.1 {status} ")));
        let location = head
            .lines()
            .find_map(|l| l.strip_prefix("Location: "))
            .map(String::from);
        let body = out[end + 4..].to_vec();
        assert!(
            !body.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
            "{target}: served the file outside the root"
        );
        (status, location, body)
    }

    #[test]
    fn tricky_static_paths() {
        let (_tmp, files) = www();
        let cases: &[(&str, u16, &str)] = &[
            ("/hello.txt", 200, "hello world"),
            ("/hello.txt?x=/../../secret.txt", 200, "hello world"),
            ("/a%20b.html", 200, "<p>space</p>"),
            // Decoded once: `%2541` is the literal name `%41.txt`...
            ("/%2541.txt", 200, "literal percent"),
            // ...and `%41` is `A`, which is not there.
            ("/%41.txt", 404, ""),
            ("/./dir/./", 200, "<p>dir</p>"),
            ("/dir//", 200, "<p>dir</p>"),
            ("/dir/sub/deep.json", 200, "{}"),
            ("/dir/sub/", 404, ""),
            ("/empty/", 404, ""),
            // Every spelling of `..` is refused before touching the disk.
            ("/..", 403, ""),
            ("/dir/..", 403, ""),
            ("/dir/%2e%2e/hello.txt", 403, ""),
            ("/dir%2f..%2f..%2fsecret.txt", 403, ""),
            ("/%2E%2E%2Fsecret.txt", 403, ""),
            ("/dir\\..\\..\\secret.txt", 403, ""),
            ("/dir%5c..%5csecret.txt", 403, ""),
            // Double-encoded stays literal, and is simply missing.
            ("/%252e%252e/secret.txt", 404, ""),
            ("/..%252fsecret.txt", 404, ""),
            ("/..;/secret.txt", 404, ""),
            // Not decodable, not UTF-8, NUL: bad requests.
            ("/%", 400, ""),
            ("/%g0", 400, ""),
            ("/%c3", 400, ""),
            ("/%00", 400, ""),
            ("/hello.txt%00.html", 400, ""),
            ("", 400, ""),
            ("*", 400, ""),
            ("hello.txt", 400, ""),
            ("http://x/hello.txt", 400, ""),
            ("?/hello.txt", 400, ""),
        ];
        for (target, status, body) in cases {
            let (got, _, got_body) = get(&files, target);
            assert_eq!(got, *status, "{target:?}");
            if *status == 200 {
                assert_eq!(got_body, body.as_bytes(), "{target:?}");
            }
        }
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_out_of_the_root_are_403() {
        let (_tmp, files) = www();
        for target in [
            "/link.txt",
            "/up/secret.txt",
            "/outdir",
            "/outdir/",
            "/outdir/index.html",
            "/dir/rel.txt",
            "/up/outdir/",
        ] {
            assert_eq!(get(&files, target).0, 403, "{target}");
        }
        // A symlink that leaves the root and comes back in lands on a file
        // inside it: that is served.
        let (status, _, body) = get(&files, "/up/www/hello.txt");
        assert_eq!(status, 200);
        assert_eq!(body, b"hello world");
    }

    #[test]
    fn directory_redirects_stay_on_this_host() {
        let (_tmp, files) = www();
        for (target, location) in [
            ("/dir", "/dir/"),
            ("//dir", "/dir/"),
            ("///dir?x=1", "/dir/?x=1"),
            ("/.", "/./"),
            ("/dir/.", "/dir/./"),
            ("/dir%2f", "/dir%2f/"),
        ] {
            let (status, got, _) = get(&files, target);
            assert_eq!(status, 301, "{target}");
            assert_eq!(got.as_deref(), Some(location), "{target}");
        }
    }
}

// ---------------------------------------------------------------------------
// Frames into a server connection

/// Reads from `input` in chunks of `chunk` bytes (then EOF); collects what
/// is written.
struct Duplex {
    input: Vec<u8>,
    chunk: usize,
    output: Arc<Mutex<Vec<u8>>>,
}

impl AsyncRead for Duplex {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let n = self.chunk.min(buf.len()).min(self.input.len());
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input.drain(..n);
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

/// A masked client frame.
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut out = vec![first];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n < 65536 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Runs a server connection with the seed handler over `input` (read
/// `chunk` bytes at a time), and returns the frames it wrote, as read by a
/// client.
fn serve_frames(input: &[u8], chunk: usize) -> Vec<Frame> {
    let config = Config::default();
    let output = Arc::new(Mutex::new(Vec::new()));
    let stream = Duplex {
        input: input.to_vec(),
        chunk,
        output: output.clone(),
    };
    smol::block_on(async {
        let conn = Connection::new(stream, Role::Server, Vec::new(), None, &config).await;
        let seed = |_: &Peer, m: Message| Some(m.seed_reply());
        let ended = wsloop::timeout(Duration::from_secs(5), conn.run(seed)).await;
        assert!(ended.is_some(), "connection did not end on EOF");
    });
    let written = std::mem::take(&mut *output.lock().unwrap());
    let client = Duplex {
        input: written,
        chunk: usize::MAX,
        output: Arc::new(Mutex::new(Vec::new())),
    };
    smol::block_on(async {
        let mut ws = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        let mut frames = Vec::new();
        while let Some(next) = ws.next().await {
            match next {
                Ok(frame) => frames.push(frame),
                Err(tungstenite::Error::Protocol(
                    tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                ))
                | Err(tungstenite::Error::ConnectionClosed) => break,
                Err(err) => panic!("server wrote an unreadable frame: {err}"),
            }
        }
        frames
    })
}

/// The close code of the last frame, if it is a Close.
fn close_code(frames: &[Frame]) -> Option<u16> {
    match frames.last()? {
        Frame::Close(Some(close)) => Some(close.code.into()),
        _ => None,
    }
}

const REQUEST: &[u8] =
    br#"{"requestID":7,"command":"hello","someOtherThing":"","success":false,"error":""}"#;

fn close_frame(code: u16) -> Vec<u8> {
    frame(0x88, &code.to_be_bytes())
}

#[test]
fn valid_session_replies_then_closes() {
    let mut input = frame(0x89, b"hi");
    input.extend(frame(0x81, REQUEST));
    // A fragmented request with a ping between the fragments.
    input.extend(frame(0x01, &REQUEST[..10]));
    input.extend(frame(0x89, b"p"));
    input.extend(frame(0x80, &REQUEST[10..]));
    input.extend(close_frame(1000));
    for chunk in [1, 7, 64, usize::MAX] {
        let frames = serve_frames(&input, chunk);
        let replies: Vec<_> = frames
            .iter()
            .filter_map(|f| match f {
                Frame::Text(text) => Some(wsloop::decode(text.as_bytes()).unwrap()),
                _ => None,
            })
            .collect();
        assert_eq!(replies.len(), 2, "chunk {chunk}: {frames:?}");
        for reply in replies {
            assert_eq!(reply.request_id, 7);
            assert!(reply.success);
            assert_eq!(
                reply.some_other_thing,
                "Command 'hello' processed successfully."
            );
        }
        let pongs = frames
            .iter()
            .filter(|f| matches!(f, Frame::Pong(_)))
            .count();
        assert_eq!(pongs, 2, "chunk {chunk}");
        assert_eq!(close_code(&frames), Some(1000), "chunk {chunk}");
    }
}

#[test]
fn hostile_frames_get_the_right_close_code() {
    let mut unmasked = vec![0x81, REQUEST.len() as u8];
    unmasked.extend_from_slice(REQUEST);
    let mut huge = vec![0x82, 0xff];
    huge.extend_from_slice(&(1u64 << 62).to_be_bytes());
    huge.extend_from_slice(&[0; 4]);
    let cases: &[(&str, Vec<u8>, u16)] = &[
        ("unmasked", unmasked, wsloop::CLOSE_PROTOCOL_ERROR),
        (
            "bad utf-8",
            frame(0x81, b"\xff\xfe"),
            wsloop::CLOSE_INVALID_DATA,
        ),
        (
            "rsv1 set",
            frame(0xc1, REQUEST),
            wsloop::CLOSE_PROTOCOL_ERROR,
        ),
        (
            "reserved opcode",
            frame(0x83, b"x"),
            wsloop::CLOSE_PROTOCOL_ERROR,
        ),
        (
            "fragmented ping",
            frame(0x09, b"x"),
            wsloop::CLOSE_PROTOCOL_ERROR,
        ),
        (
            "ping over 125",
            frame(0x89, &[b'x'; 126]),
            wsloop::CLOSE_PROTOCOL_ERROR,
        ),
        (
            "continuation first",
            frame(0x80, b"abc"),
            wsloop::CLOSE_PROTOCOL_ERROR,
        ),
        ("2^62 length", huge, wsloop::CLOSE_TOO_BIG),
    ];
    for (name, input, code) in cases {
        for chunk in [1, usize::MAX] {
            let frames = serve_frames(input, chunk);
            assert_eq!(
                close_code(&frames),
                Some(*code),
                "{name}, chunk {chunk}: {frames:?}"
            );
        }
    }
}

/// Two request frames, cut at `cut` bytes.
fn two_requests_cut(cut: usize) -> (Vec<u8>, usize) {
    let mut input = frame(0x81, REQUEST);
    let one = input.len();
    input.extend(frame(0x81, REQUEST));
    input.truncate(cut);
    (input, cut / one)
}

fn text_count(frames: &[Frame]) -> usize {
    frames
        .iter()
        .filter(|f| matches!(f, Frame::Text(_)))
        .count()
}

#[test]
fn eof_anywhere_ends_the_connection() {
    // Cut at every byte: the loop ends, what it wrote is well-formed (the
    // client reader in `serve_frames` checks), and no reply is invented
    // for a request that did not arrive whole.
    for cut in 0..=2 * (REQUEST.len() + 6) {
        let (input, whole) = two_requests_cut(cut);
        for chunk in [1, 64, usize::MAX] {
            let frames = serve_frames(&input, chunk);
            assert!(text_count(&frames) <= whole, "cut at {cut}, chunk {chunk}");
        }
    }
}

/// Found by the `frames` target: requests that arrive whole right before EOF
/// (the peer half-closes, or its FIN is already in the socket buffer) must
/// still be answered. The loop used to return `Ended::Eof` with the replies
/// still in tungstenite's write buffer; it now flushes first. One reply per
/// complete request.
#[test]
fn replies_to_requests_before_eof_are_sent() {
    for cut in [REQUEST.len() + 6, 2 * (REQUEST.len() + 6)] {
        let (input, whole) = two_requests_cut(cut);
        for chunk in [1, 64, usize::MAX] {
            let frames = serve_frames(&input, chunk);
            assert_eq!(text_count(&frames), whole, "cut at {cut}, chunk {chunk}");
        }
    }
}

#[test]
fn malformed_json_gets_an_error_reply_and_the_connection_lives() {
    let mut input = frame(0x81, br#"{"requestID":3,"command":"#);
    input.extend(frame(0x81, REQUEST));
    input.extend(close_frame(1000));
    let frames = serve_frames(&input, usize::MAX);
    let replies: Vec<Message> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::Text(text) => Some(wsloop::decode(text.as_bytes()).unwrap()),
            _ => None,
        })
        .collect();
    assert_eq!(replies.len(), 2, "{frames:?}");
    assert!(!replies[0].success);
    assert!(!replies[0].error.is_empty());
    assert_eq!(replies[1].request_id, 7);
    assert!(replies[1].success);
    assert_eq!(close_code(&frames), Some(1000));
}
