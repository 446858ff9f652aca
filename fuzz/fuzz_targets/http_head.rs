//! Fuzz target: wsloop's HTTP request-head reader on arbitrary bytes.
//!
//! Input layout: the first byte `k` picks how many of the following bytes
//! (k % 8) are chunk sizes for a trickling reader; the rest is the stream.
//! The stream is read three ways: whole (an in-memory cursor), in small
//! chunks of the given sizes, and with a small size limit. The reader must
//! never panic, the two 8 KiB reads must agree, leftovers must come from
//! the input, and TooLarge must only come from an input at least as long
//! as the limit.
#![no_main]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::io::{AsyncRead, Cursor};
use libfuzzer_sys::fuzz_target;
use wsloop::http::{read_request_head, HeadError, Request};

/// The server's limit (`wsloop::MAX_REQUEST_HEAD_SIZE`).
const LIMIT: usize = 8 * 1024;

/// Hands out its data in chunks whose sizes cycle through `sizes`.
struct Chunked<'a> {
    data: &'a [u8],
    pos: usize,
    sizes: &'a [u8],
    turn: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let size = match self.sizes {
            [] => 1,
            sizes => usize::from(sizes[self.turn % sizes.len()] % 32) + 1,
        };
        self.turn += 1;
        let n = size.min(buf.len()).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Poll::Ready(Ok(n))
    }
}

/// Calls every accessor; none may panic.
fn touch(req: &Request) {
    let _ = req.header("host");
    let _ = req.header("");
    let _ = req.header("UPGRADE");
    let path = req.path();
    let query = req.query();
    assert!(req.target.starts_with(path));
    if let Some(query) = query {
        assert_eq!(req.target.len(), path.len() + 1 + query.len());
    } else {
        assert_eq!(path, req.target);
    }
    let ws = req.is_websocket_upgrade();
    let wants = req.wants_upgrade();
    assert!(
        !ws || wants,
        "a WebSocket upgrade without an Upgrade header"
    );
    for (name, _) in &req.headers {
        assert!(req.header(name).is_some());
    }
}

/// Checks one result against the input it came from.
fn check(result: &Result<(Request, Vec<u8>), HeadError>, input: &[u8], limit: usize) {
    match result {
        Ok((req, rest)) => {
            touch(req);
            // Consumed head plus leftover never exceeds what was sent.
            assert!(rest.len() < input.len(), "leftover as long as the input");
            // The leftover follows a line break (the end of the head); the
            // earliest place it can start bounds the head from below, and
            // head plus leftover were all read under the limit.
            let head_len = (1..=input.len() - rest.len())
                .find(|&at| input[at - 1] == b'\n' && input[at..].starts_with(rest))
                .expect("leftover is not the bytes right after a head");
            assert!(
                head_len + rest.len() <= limit,
                "read {} bytes past limit {limit}",
                head_len + rest.len()
            );
        }
        Err(HeadError::TooLarge) => {
            assert!(input.len() >= limit, "TooLarge on {} bytes", input.len());
        }
        Err(HeadError::Malformed(_)) | Err(HeadError::Closed) => {}
        Err(HeadError::Io(err)) => panic!("I/O error from an in-memory reader: {err}"),
        Err(other) => panic!("a head error this target does not know: {other:?}"),
    }
}

/// The same kind of answer, the same request.
fn same(a: &Result<(Request, Vec<u8>), HeadError>, b: &Result<(Request, Vec<u8>), HeadError>) {
    match (a, b) {
        (Ok((ra, rest_a)), Ok((rb, rest_b))) => {
            assert_eq!(ra.method, rb.method);
            assert_eq!(ra.target, rb.target);
            assert_eq!(ra.headers, rb.headers);
            // Both leftovers start right after the head; one read further.
            assert!(rest_a.starts_with(rest_b) || rest_b.starts_with(rest_a));
        }
        (Err(HeadError::TooLarge), Err(HeadError::TooLarge))
        | (Err(HeadError::Malformed(_)), Err(HeadError::Malformed(_)))
        | (Err(HeadError::Closed), Err(HeadError::Closed)) => {}
        _ => panic!("verdicts differ: {a:?} vs {b:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let k = usize::from(k % 8).min(rest.len());
    let (sizes, input) = rest.split_at(k);

    let whole = smol::block_on(read_request_head(&mut Cursor::new(input), LIMIT));
    check(&whole, input, LIMIT);

    let mut chunked = Chunked {
        data: input,
        pos: 0,
        sizes,
        turn: 0,
    };
    let trickled = smol::block_on(read_request_head(&mut chunked, LIMIT));
    check(&trickled, input, LIMIT);
    same(&whole, &trickled);

    // A small limit, to reach TooLarge with short inputs.
    let small = sizes.first().map_or(16, |&s| usize::from(s) + 1);
    let limited = smol::block_on(read_request_head(&mut Cursor::new(input), small));
    check(&limited, input, small);
    if let Ok((req, _)) = &limited {
        let Ok((full, _)) = &whole else {
            panic!("ok under limit {small} but {whole:?} under {LIMIT}");
        };
        assert_eq!(req.target, full.target);
        assert_eq!(req.headers, full.headers);
    }
});
