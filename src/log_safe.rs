//! Logging what a peer controls without letting the peer control the log.
//!
//! A peer chooses its Close reason, its request path and headers, and the
//! bytes of its messages. Quoted raw, a `\n` forges a log line of its own
//! and an ANSI escape rewrites the operator's terminal; quoted whole, one
//! request writes kilobytes. And a peer that repeats what gets logged
//! (unmatched replies, refused upgrades, malformed messages) decides how
//! fast the log grows. So every log site that quotes peer data wraps it in
//! [`quote`] (or [`body`] for message bodies at trace level), and every
//! line a peer can repeat at will goes through a [`LogLimit`].

use std::fmt::{self, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::Peer;

/// Most bytes of one peer-supplied string a log line quotes: enough for any
/// honest Origin, Host, path or Close reason (at most 123 bytes), short
/// enough that a refused 8 KB header costs a line, not a page.
pub const QUOTE_LIMIT: usize = 200;

/// Most bytes of a message body logged at `-v` (trace): a whole seed
/// message fits many times over, a 1 MiB message does not fill the log.
pub const BODY_LIMIT: usize = 1024;

/// Most bytes of a refusal's reason a log line shows: the reason is ours,
/// but may quote (cut) peer text, such as the Origin and Host of a 403.
pub const REASON_LIMIT: usize = 512;

/// How many lines of one kind a [`LogLimit`] lets through per interval.
pub const LOG_BURST: u32 = 10;

/// The interval of a [`LogLimit`].
pub const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Peer-supplied text, escaped and truncated for a log line (see [`quote`]).
#[derive(Clone, Copy)]
pub struct Escaped<'a> {
    text: &'a [u8],
    limit: usize,
    /// Whether `"` and `\` are escaped too (so that a quote can be parsed).
    quotes: bool,
}

/// `text` made safe to quote in a log line: control characters (`\n`,
/// `\r`, ESC and so every ANSI escape, DEL, C1), Unicode line separators
/// and bidirectional overrides, `\` and `"` are escaped, so the quote is
/// one line that shows what the peer sent; past [`QUOTE_LIMIT`] bytes it is
/// cut, with a marker saying how many bytes were left out.
pub fn quote(text: &str) -> Escaped<'_> {
    Escaped {
        text: text.as_bytes(),
        limit: QUOTE_LIMIT,
        quotes: true,
    }
}

/// A message body as [`quote`] shows it, cut at [`BODY_LIMIT`] bytes; bytes
/// that are not UTF-8 show as `\xNN`.
pub fn body(bytes: &[u8]) -> Escaped<'_> {
    Escaped {
        text: bytes,
        limit: BODY_LIMIT,
        quotes: true,
    }
}

/// A reason of our own that may quote peer text: control characters
/// escaped as by [`quote`], but not `"` or `\` (its quotes are already
/// escaped), cut at [`REASON_LIMIT`] bytes.
pub fn reason(text: &str) -> Escaped<'_> {
    Escaped {
        text: text.as_bytes(),
        limit: REASON_LIMIT,
        quotes: false,
    }
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = 0;
        for chunk in self.text.utf8_chunks() {
            for c in chunk.valid().chars() {
                if shown + c.len_utf8() > self.limit {
                    return cut(f, self.text.len() - shown);
                }
                shown += c.len_utf8();
                match c {
                    '"' | '\\' if !self.quotes => f.write_char(c)?,
                    c => escape_char(f, c)?,
                }
            }
            for b in chunk.invalid() {
                if shown + 1 > self.limit {
                    return cut(f, self.text.len() - shown);
                }
                shown += 1;
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// The marker after a cut quote.
fn cut(f: &mut fmt::Formatter<'_>, left_out: usize) -> fmt::Result {
    write!(f, "...[{left_out} more bytes]")
}

/// Writes `c` as is when it cannot change how the line reads, else escaped.
fn escape_char(f: &mut fmt::Formatter<'_>, c: char) -> fmt::Result {
    match c {
        '\\' => f.write_str("\\\\"),
        '"' => f.write_str("\\\""),
        '\n' => f.write_str("\\n"),
        '\r' => f.write_str("\\r"),
        '\t' => f.write_str("\\t"),
        // Line and paragraph separators, bidi marks, embeddings, overrides
        // and isolates (which can make a line read backwards), the BOM.
        c if c.is_control()
            || matches!(
                c,
                '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{feff}'
            )
            || ('\u{202a}'..='\u{202e}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c) =>
        {
            write!(f, "\\u{{{:x}}}", u32::from(c))
        }
        c => f.write_char(c),
    }
}

/// Log lines name a connection as `peer ID (ADDR)`: the id every line about
/// it shares and the address it came from.
impl<P> fmt::Display for Peer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr() {
            Some(addr) => write!(f, "peer {} ({addr})", self.id()),
            None => write!(f, "peer {}", self.id()),
        }
    }
}

/// At most [`LOG_BURST`] lines of one kind per [`LOG_INTERVAL`], across all
/// connections (so many peers cannot multiply the rate); the next line let
/// through says how many were suppressed in between. One `static` per kind.
pub struct LogLimit {
    state: Mutex<Window>,
}

/// One [`LogLimit`]'s current interval.
struct Window {
    /// When the interval began; `None` before the first line.
    start: Option<Instant>,
    /// Lines let through in this interval.
    logged: u32,
    /// Lines suppressed since the last one let through.
    suppressed: u64,
}

impl LogLimit {
    /// A limit that has let nothing through yet.
    pub const fn new() -> LogLimit {
        LogLimit {
            state: Mutex::new(Window {
                start: None,
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// `Some` when this line may be logged (its `Display` is the note on
    /// lines suppressed before it, to append), `None` when it is one too many.
    pub fn admit(&self) -> Option<Suppressed> {
        let now = Instant::now();
        let mut w = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if w.start
            .is_none_or(|start| now.duration_since(start) >= LOG_INTERVAL)
        {
            w.start = Some(now);
            w.logged = 0;
        }
        if w.logged >= LOG_BURST {
            w.suppressed += 1;
            return None;
        }
        w.logged += 1;
        Some(Suppressed(std::mem::take(&mut w.suppressed)))
    }
}

impl Default for LogLimit {
    fn default() -> Self {
        LogLimit::new()
    }
}

/// How many lines a [`LogLimit`] suppressed before this one; shows as
/// nothing when none were.
pub struct Suppressed(pub u64);

impl fmt::Display for Suppressed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => Ok(()),
            n => write!(f, " ({n} similar lines suppressed)"),
        }
    }
}

/// Logs at `$level` through the [`LogLimit`] `$limit`; nothing is formatted
/// (and the limit not touched) when the level is off.
macro_rules! log_limited {
    ($limit:expr, $level:expr, $($arg:tt)+) => {
        if log::log_enabled!($level) {
            if let Some(suppressed) = $limit.admit() {
                log::log!($level, "{}{}", format_args!($($arg)+), suppressed);
            }
        }
    };
}
pub(crate) use log_limited;

/// Malformed messages, at DEBUG, rate-limited.
static MALFORMED: LogLimit = LogLimit::new();

/// Logs one malformed message; the decoder's reason may quote the peer's
/// text (serde_json's "invalid type: string ..." does).
pub(crate) fn malformed<P>(peer: &Peer<P>, err: &crate::DecodeError) {
    // A DEBUG line, so only with `debug-logs` (see `debug!`).
    if !cfg!(feature = "debug-logs") {
        return;
    }
    log_limited!(
        MALFORMED,
        log::Level::Debug,
        "{peer} sent a malformed message: {}",
        quote(&err.to_string())
    );
}

/// Refused requests (4xx/5xx), one line each at INFO, rate-limited.
pub(crate) static REFUSALS: LogLimit = LogLimit::new();

/// Logs one refused request: who (the peer's address), the status and why
/// (quoted safely).
pub(crate) fn refused(peer: std::net::SocketAddr, status: u16, why: &str) {
    log_limited!(
        REFUSALS,
        log::Level::Info,
        "{}: refused {status}: {}",
        peer,
        reason(why)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_escapes_cannot_leave_the_quote() {
        let forged = "bye\nwsloop: WARN forged\r\x1b[31mred\x1b[0m \"q\" \\ \u{202e}x\u{7f}";
        let shown = quote(forged).to_string();
        assert_eq!(
            shown,
            "bye\\nwsloop: WARN forged\\r\\u{1b}[31mred\\u{1b}[0m \\\"q\\\" \\\\ \\u{202e}x\\u{7f}"
        );
        assert!(!shown.chars().any(char::is_control));
        assert_eq!(quote("弹出热狗 😀").to_string(), "弹出热狗 😀");
        assert_eq!(body(b"a\xffb").to_string(), "a\\xffb");
        assert_eq!(reason("a \"b\\\"\n").to_string(), "a \"b\\\"\\n");
    }

    #[test]
    fn long_text_is_cut_at_a_char_boundary_with_a_marker() {
        let long = "é".repeat(QUOTE_LIMIT);
        let shown = quote(&long).to_string();
        let kept = "é".repeat(QUOTE_LIMIT / 2);
        assert_eq!(shown, format!("{kept}...[{} more bytes]", QUOTE_LIMIT));
        let big = vec![b'a'; 5000];
        let shown = body(&big).to_string();
        assert!(shown.starts_with(&"a".repeat(BODY_LIMIT)));
        assert!(shown.ends_with(&format!("...[{} more bytes]", 5000 - BODY_LIMIT)));
        assert_eq!(
            quote(&"a".repeat(QUOTE_LIMIT)).to_string().len(),
            QUOTE_LIMIT
        );
    }

    #[test]
    fn a_limit_lets_a_burst_through_then_counts() {
        let limit = LogLimit::new();
        let through = (0..100).filter(|_| limit.admit().is_some()).count();
        assert_eq!(through, LOG_BURST as usize);
        assert_eq!(
            limit.state.lock().unwrap().suppressed,
            100 - u64::from(LOG_BURST)
        );
        assert_eq!(Suppressed(3).to_string(), " (3 similar lines suppressed)");
        assert_eq!(Suppressed(0).to_string(), "");
    }
}
