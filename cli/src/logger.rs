//! The binary's logger: library log lines to stderr, stamped with RFC 3339
//! UTC time, as text or as one JSON object per line.
//!
//! Writing happens on a thread of its own. Executor threads format a line
//! and hand it over through a bounded queue without waiting: with a slow
//! stderr reader (a full pipe, a stalled terminal) the writer blocks, the
//! queue fills, and further lines are counted and dropped, never waited
//! for, so no connection task stalls on the log. The writer reports the
//! count ("N log lines dropped") once it can write again.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cli::{LogFormat, Verbosity};

/// Lines that may wait for the writer: a burst of this many is never
/// dropped; at -v's 1 KiB bodies the queue holds at most about 1.3 MiB.
const QUEUE_LINES: usize = 1024;

/// How long [`flush`] waits for the writer before the process exits: long
/// enough for a healthy stderr, short enough that a stuck one does not
/// hold the exit.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// The queue between the threads that log and the writer thread: a locked
/// deque and a condition variable. (std's `sync_channel` did the same job
/// for 24 KB more of the small build.) The lock is only ever held to push
/// or to take the whole queue, never while writing.
struct Queue {
    state: Mutex<State>,
    /// Signalled when lines arrive (for the writer) and when the writer
    /// has written all it took (for [`flush`]).
    changed: Condvar,
}

#[derive(Default)]
struct State {
    lines: VecDeque<String>,
    /// Lines dropped because the queue was full, not yet reported.
    dropped: u64,
    /// The writer holds lines it took but has not finished writing.
    writing: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere leaves a usable queue of strings.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Logger {
    format: LogFormat,
    queue: Queue,
    /// The writer thread was started: queued lines will be written.
    writing: AtomicBool,
}

/// The installed logger, shared with the writer thread.
static LOGGER: OnceLock<Logger> = OnceLock::new();

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.target().starts_with("wsloop")
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format_line(self.format, SystemTime::now(), record);
        // Never wait for the writer here: this runs on executor threads.
        let mut state = self.queue.lock();
        if state.lines.len() >= QUEUE_LINES {
            state.dropped += 1;
            return;
        }
        state.lines.push_back(line);
        drop(state);
        self.queue.changed.notify_all();
    }

    fn flush(&self) {
        let state = self.queue.lock();
        let _ = self
            .queue
            .changed
            .wait_timeout_while(state, FLUSH_TIMEOUT, |s| !s.lines.is_empty() || s.writing);
    }
}

/// Installs the logger at `verbosity`, starting its writer thread.
#[inline(never)]
pub fn init(verbosity: Verbosity, format: LogFormat) {
    let logger = Logger {
        format,
        queue: Queue {
            state: Mutex::default(),
            changed: Condvar::new(),
        },
        writing: AtomicBool::new(false),
    };
    if LOGGER.set(logger).is_err() {
        return;
    }
    let Some(logger) = LOGGER.get() else { return };
    if thread::Builder::new()
        .name("wsloop-log".into())
        .spawn(move || write_lines(logger))
        .is_err()
    {
        return; // no writer, no logs (rather than logs that block)
    }
    logger.writing.store(true, Ordering::Release);
    let level = match verbosity {
        Verbosity::Quiet => log::LevelFilter::Warn,
        Verbosity::Normal => log::LevelFilter::Info,
        Verbosity::Verbose => log::LevelFilter::Trace,
    };
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

/// Waits (at most [`FLUSH_TIMEOUT`]) until every line logged so far is
/// written: before the binary prints its last word and exits.
#[inline(never)]
pub fn flush() {
    if let Some(logger) = LOGGER.get() {
        log::Log::flush(logger);
    }
}

/// Prints the binary's fatal `error` as its last line (`wsloop: <error>`, or
/// an ERROR record with `--log-format json`) after every log line, then
/// [`flush`]es. Through the writer when it runs, so a stuck
/// stderr cannot hold the exit (the writer may hold stderr's lock).
pub fn last_word(error: &str) {
    let Some(logger) = LOGGER.get().filter(|l| l.writing.load(Ordering::Acquire)) else {
        eprintln!("wsloop: {error}");
        return;
    };
    let line = match logger.format {
        LogFormat::Text => {
            let mut line = String::from("wsloop: ");
            push_one_line(&mut line, error);
            line
        }
        #[cfg(feature = "json-logs")]
        LogFormat::Json => {
            let now = SystemTime::now();
            format_parts(LogFormat::Json, now, log::Level::Error, "wsloop", error)
        }
    };
    // Past a full queue too: it is the one line that must not be dropped.
    logger.queue.lock().lines.push_back(line);
    logger.queue.changed.notify_all();
    flush();
}

/// The writer thread: takes every waiting line at once and writes them to
/// stderr, reporting drops first (only it may block on a slow reader).
fn write_lines(logger: &Logger) {
    let queue = &logger.queue;
    loop {
        let (lines, dropped) = {
            let mut state = queue.lock();
            state.writing = false;
            queue.changed.notify_all();
            while state.lines.is_empty() && state.dropped == 0 {
                state = queue.changed.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            state.writing = true;
            (
                std::mem::take(&mut state.lines),
                std::mem::take(&mut state.dropped),
            )
        };
        let mut stderr = std::io::stderr().lock();
        if dropped > 0 {
            let note = format!("{dropped} log lines dropped: stderr was not read fast enough");
            let now = SystemTime::now();
            let line = format_parts(logger.format, now, log::Level::Warn, "wsloop", &note);
            let _ = writeln!(stderr, "{line}");
        }
        for line in lines {
            let _ = writeln!(stderr, "{line}");
        }
        let _ = stderr.flush();
    }
}

/// One record as one line.
fn format_line(format: LogFormat, now: SystemTime, record: &log::Record<'_>) -> String {
    let message = record.args().to_string();
    format_parts(format, now, record.level(), record.target(), &message)
}

/// `TIME wsloop: LEVEL message`, or a JSON object with those fields. The
/// library escapes what peers send; control characters left in a message
/// are escaped here as well, so one record is always one line.
fn format_parts(
    format: LogFormat,
    now: SystemTime,
    level: log::Level,
    target: &str,
    message: &str,
) -> String {
    let mut line = String::with_capacity(message.len() + 64);
    match format {
        LogFormat::Text => {
            // Only the JSON format names the target.
            #[cfg(not(feature = "json-logs"))]
            let _ = target;
            write_rfc3339(&mut line, now);
            let _ = write!(line, " wsloop: {level:<5} ");
            push_one_line(&mut line, message);
        }
        #[cfg(feature = "json-logs")]
        LogFormat::Json => {
            line.push_str("{\"time\":\"");
            write_rfc3339(&mut line, now);
            let _ = write!(line, "\",\"level\":\"{level}\",\"target\":");
            json_string(&mut line, target);
            line.push_str(",\"message\":");
            json_string(&mut line, message);
            line.push('}');
        }
    }
    line
}

/// Appends `s` with its control characters escaped, so it stays one line.
fn push_one_line(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
}

/// Appends `s` as a JSON string literal; control characters as `\u00XX`.
#[cfg(feature = "json-logs")]
fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends `t` as RFC 3339 UTC with milliseconds: `2026-12-01T09:25:00.123Z`.
///
/// The civil date comes from Howard Hinnant's days-to-civil algorithm
/// (proleptic Gregorian, exact for any date after 1970): a dozen lines,
/// where a date crate would add more than the whole logger to the binary.
fn write_rfc3339(out: &mut String, t: SystemTime) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 0000-03-01, in 400-year eras of 146,097 days.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(secs: u64, millis: u64) -> String {
        let mut out = String::new();
        write_rfc3339(
            &mut out,
            UNIX_EPOCH + Duration::from_millis(secs * 1000 + millis),
        );
        out
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(stamp(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(stamp(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(stamp(1_709_251_199, 999), "2024-02-29T23:59:59.999Z");
        assert_eq!(stamp(4_102_444_800, 0), "2100-01-01T00:00:00.000Z");
        assert_eq!(stamp(1_796_117_100, 123), "2026-12-01T09:25:00.123Z");
    }

    #[test]
    fn lines_are_one_line_in_both_formats() {
        let t = UNIX_EPOCH;
        let text = format_parts(LogFormat::Text, t, log::Level::Info, "wsloop", "a\nb\x1b");
        assert_eq!(
            text,
            "1970-01-01T00:00:00.000Z wsloop: INFO  a\\u{a}b\\u{1b}"
        );
        #[cfg(feature = "json-logs")]
        {
            let json = format_parts(LogFormat::Json, t, log::Level::Warn, "wsloop::x", "\"q\"\n");
            assert_eq!(
                json,
                r#"{"time":"1970-01-01T00:00:00.000Z","level":"WARN","target":"wsloop::x","message":"\"q\"\u000a"}"#
            );
        }
    }
}
