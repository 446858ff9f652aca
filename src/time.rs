//! Time helpers shared by the server, the client and the CLI: a deadline for
//! any future, and parsing of human-written durations (`2`, `0.2`, `200ms`, `30s`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_io::Timer;

/// Runs `fut` to completion unless `limit` passes first (then `None`).
///
/// The timer is only created if `fut` does not finish on its first poll,
/// so the common fast path costs no timer syscalls. A plain struct rather
/// than an `async fn`, which would store `fut` twice in its state (this
/// wraps every write, so its size is paid by every connection); for the
/// same reason the timer, when there is one, is boxed: a pointer in every
/// write's state instead of a whole `Timer` (48 bytes more), its
/// allocation paid only by a write that had to wait.
pub fn timeout<F: Future>(limit: Duration, fut: F) -> Timeout<F> {
    Timeout {
        fut,
        limit,
        timer: None,
    }
}

pin_project_lite::pin_project! {
    /// The future returned by [`timeout`].
    #[must_use = "futures do nothing unless polled"]
    pub struct Timeout<F> {
        #[pin]
        fut: F,
        limit: Duration,
        timer: Option<Box<Timer>>,
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Some(out));
        }
        expired(this.timer, *this.limit, cx).map(|()| None)
    }
}

/// Whether the deadline `limit` from the first call has passed (the timer
/// is made then). Apart from [`Timeout`]'s generic `poll`, so that its
/// many instances share one copy.
#[inline(never)]
fn expired(timer: &mut Option<Box<Timer>>, limit: Duration, cx: &mut Context<'_>) -> Poll<()> {
    let timer = timer.get_or_insert_with(|| Box::new(Timer::after(limit)));
    Pin::new(&mut **timer).poll(cx).map(|_| ())
}

/// A duration for messages, in the units [`parse_duration`] reads back:
/// `30s`, `1500ms`. Duration's own `Debug` would bring its decimal
/// formatting code into the binary for a few log lines.
pub(crate) fn human(duration: Duration) -> String {
    let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Parses a duration: a plain number is seconds (fractions allowed); the
/// suffixes `ms`, `s`, `m` and `h` are understood.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(wsloop::parse_duration("0.2"), Ok(Duration::from_millis(200)));
/// assert_eq!(wsloop::parse_duration("200ms"), Ok(Duration::from_millis(200)));
/// assert_eq!(wsloop::parse_duration("30s"), Ok(Duration::from_secs(30)));
/// assert!(wsloop::parse_duration("-1").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    /// Nanoseconds in a second, the unit of a plain number.
    const SEC: u64 = 1_000_000_000;
    /// The longest duration accepted, in nanoseconds: 10^9 s (31 years).
    const MAX_NANOS: u64 = 1_000_000_000 * SEC;
    let text = text.trim();
    let (number, unit) = if let Some(n) = text.strip_suffix("ms") {
        (n, SEC / 1000)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, SEC)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60 * SEC)
    } else if let Some(n) = text.strip_suffix('h') {
        (n, 3600 * SEC)
    } else {
        (text, SEC)
    };
    let invalid = || format!("invalid duration {text:?} (try 2, 0.5, 200ms or 30s)");
    let out_of_range = || format!("duration {text:?} is out of range");
    // A decimal number as `f64` reads one (`2`, `0.5`, `.5`, `5.`, `+1`,
    // `-0`), in whole nanoseconds: integers only, so that std's float
    // parser is not in the binary for this alone.
    let number = number.trim();
    let (negative, digits) = match number.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, number.strip_prefix('+').unwrap_or(number)),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.len() + fraction.len() == 0 || !all_digits(whole) || !all_digits(fraction) {
        return Err(invalid());
    }
    // Below zero, however little (`-0` is zero, as for `f64`).
    if negative && digits.bytes().any(|b| b.is_ascii_digit() && b != b'0') {
        return Err(out_of_range());
    }
    let digit = |b: u8| u64::from(b - b'0');
    let whole_nanos = whole
        .bytes()
        .try_fold(0_u64, |n, d| n.checked_mul(10)?.checked_add(digit(d)))
        .and_then(|w| w.checked_mul(unit));
    // The fraction's share of a unit in half nanoseconds, rounded down:
    // from its last digit to its first, each step a tenth of the digit's
    // share plus what came after (exact for any number of digits, and
    // always under two units, so it cannot overflow).
    let half_nanos = fraction
        .bytes()
        .rev()
        .fold(0, |after, d| (digit(d) * 2 * unit + after) / 10);
    // To the nearest nanosecond, as `Duration::from_secs_f64` rounds (an
    // odd count of half nanoseconds is a half or more, rounded up).
    let nanos = whole_nanos
        .and_then(|w| w.checked_add(half_nanos.div_ceil(2)))
        .filter(|&n| n <= MAX_NANOS)
        .ok_or_else(out_of_range)?;
    Ok(Duration::from_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_fractions() {
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("NaN").is_err());
        assert!(parse_duration("inf").is_err());
    }

    /// The `f64` reading this parser replaced, as the reference for the
    /// forms people write.
    fn through_f64(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        let (number, unit_secs) = if let Some(n) = text.strip_suffix("ms") {
            (n, 0.001)
        } else if let Some(n) = text.strip_suffix('s') {
            (n, 1.0)
        } else if let Some(n) = text.strip_suffix('m') {
            (n, 60.0)
        } else if let Some(n) = text.strip_suffix('h') {
            (n, 3600.0)
        } else {
            (text, 1.0)
        };
        let value: f64 = number
            .trim()
            .parse()
            .map_err(|_| format!("invalid duration {text:?} (try 2, 0.5, 200ms or 30s)"))?;
        let secs = value * unit_secs;
        if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
            return Err(format!("duration {text:?} is out of range"));
        }
        Ok(Duration::from_secs_f64(secs))
    }

    #[test]
    fn reads_what_f64_read() {
        let mut forms: Vec<String> = [
            // --help's, the defaults', the tests'.
            "0.05",
            "0.1",
            "0.2",
            "0.5",
            "1.5s",
            "1ms",
            "10ms",
            "50ms",
            "100ms",
            "200ms",
            "500ms",
            "1s",
            "2s",
            "10s",
            "30s",
            "60s",
            "5m",
            "2m",
            "24h",
            "1h",
            "2",
            "0",
            "1",
            "20",
            "0s",
            "1500ms",
            // Other spellings f64 reads.
            ".5",
            "5.",
            "+1",
            "-0",
            "-0.0",
            "007",
            " 3 ",
            "3 s",
            " 2.25 m ",
            "0.000000001",
            "1.000000001",
            "0.0000000001",
            "1000000000",
            "16666666.6m",
            "0.1h",
            "1.999999999999999999999s",
            // And what it refused, or was out of range.
            "",
            "s",
            "ms",
            ".",
            "-",
            "+",
            "fast",
            "1.2.3",
            "1,5",
            "--1",
            "+-1",
            "1 000",
            "-1",
            "-0.5",
            "-0.0000000001",
            "1000000000.5",
            "1000000001",
            "16666667m",
            "277778h",
            "99999999999999999999999999999999999999999999",
        ]
        .map(String::from)
        .to_vec();
        for whole in ["0", "1", "7", "42", "360"] {
            for fraction in [
                "", ".0", ".1", ".25", ".333", ".5", ".75", ".999", ".123456",
            ] {
                for unit in ["", "ms", "s", "m", "h"] {
                    forms.push(format!("{whole}{fraction}{unit}"));
                }
            }
        }
        let differ: Vec<String> = forms
            .into_iter()
            .filter(|form| parse_duration(form) != through_f64(form))
            .map(|form| {
                format!(
                    "{form:?}: {:?}, f64 {:?}",
                    parse_duration(&form),
                    through_f64(&form)
                )
            })
            .collect();
        assert!(differ.is_empty(), "{}", differ.join("\n"));
    }

    #[test]
    fn is_exact_where_f64_was_not() {
        for (form, want) in [
            (
                "999999999.999999999",
                Duration::new(999_999_999, 999_999_999),
            ),
            ("277777.77h", Duration::from_secs(999_999_972)),
            ("3600.333h", Duration::new(12_961_198, 800_000_000)),
            ("3600.123456h", Duration::new(12_960_444, 441_600_000)),
            ("0.0000000004", Duration::ZERO),
            ("0.0000000005", Duration::from_nanos(1)),
            // However many digits: the rounding sees them all.
            ("0.00000000049999999999999999999999", Duration::ZERO),
            (
                "0.00000000050000000000000000000001s",
                Duration::from_nanos(1),
            ),
            ("0.000000000000000000000000000001h", Duration::ZERO),
            (
                "1.99999999999999999999999999999999h",
                Duration::from_secs(7200),
            ),
        ] {
            assert_eq!(parse_duration(form), Ok(want), "{form}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_decimal_number() {
        // f64 read these; a duration option has no use for them.
        for form in ["1e3", "1E3s", "inf", "NaN", "infinity", "-inf"] {
            let err = parse_duration(form).unwrap_err();
            assert!(err.starts_with("invalid duration"), "{form}: {err}");
        }
        assert_eq!(
            parse_duration("-1"),
            Err("duration \"-1\" is out of range".to_string())
        );
    }

    #[test]
    fn human_durations_parse_back() {
        for (duration, text) in [
            (Duration::from_secs(30), "30s"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::ZERO, "0s"),
        ] {
            assert_eq!(human(duration), text);
            assert_eq!(parse_duration(text), Ok(duration));
        }
    }

    #[test]
    fn timeout_expires_and_passes_through() {
        smol::block_on(async {
            assert_eq!(timeout(Duration::from_secs(5), async { 7 }).await, Some(7));
            let never = futures_lite::future::pending::<()>();
            assert_eq!(timeout(Duration::from_millis(20), never).await, None);
        });
    }
}
