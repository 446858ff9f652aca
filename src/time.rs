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
