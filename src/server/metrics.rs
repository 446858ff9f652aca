//! The server's counters, and `GET /metrics` in the Prometheus text format.
//!
//! One [`Metrics`] per server, shared by its connection tasks and its hub.
//! Every counter is an atomic bumped with a relaxed add: on the per-message
//! path that is the whole cost, with no lock and no allocation. Gauges that
//! the hub already knows (open connections, queued messages) are read at
//! scrape time instead of being kept up to date on every change.
//!
//! The format is written by hand (it is a few `name value` lines), so no
//! metrics crate is needed.

#[cfg(feature = "metrics")]
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(feature = "metrics")]
use std::time::Duration;

#[cfg(feature = "metrics")]
use crate::Hub;
use crate::{
    Ended, Error, CLOSE_GOING_AWAY, CLOSE_INVALID_DATA, CLOSE_NORMAL, CLOSE_POLICY,
    CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG,
};

/// Why an upgrade (or any request) was refused, as the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The `Origin` check failed (403).
    Origin,
    /// The token was missing or wrong (401).
    Token,
    /// A connection limit was reached (503).
    Limit,
    /// The request was not a valid handshake (400, 404, 405, 408, 426, 431).
    BadRequest,
}

/// The `reason` label of each [`Refusal`], in its order.
#[cfg(feature = "metrics")]
const REFUSAL_LABELS: [&str; 4] = ["origin", "token", "limit", "bad_request"];

/// Close codes counted one by one; any other goes under `other`. These are
/// the ones wsloop sends or a well-behaved peer does.
const CLOSE_CODES: [u16; 8] = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011];

/// Upper bounds of the request-latency buckets, from a loopback round trip
/// to the default 10 s request timeout: microseconds, and the `le` label
/// in seconds. Integers and written labels: formatting floats would cost
/// the binary ~18 KB.
const LATENCY_BUCKETS: [(u64, &str); 10] = [
    (1_000, "0.001"),
    (2_500, "0.0025"),
    (5_000, "0.005"),
    (10_000, "0.01"),
    (25_000, "0.025"),
    (50_000, "0.05"),
    (100_000, "0.1"),
    (500_000, "0.5"),
    (1_000_000, "1"),
    (10_000_000, "10"),
];

/// Whether anything is counted: without the `metrics` feature nothing could
/// read the counters, so every method returns at once and the optimizer
/// drops the counting from the small build.
const ENABLED: bool = cfg!(feature = "metrics");

/// Counters of one server (see the module docs).
#[derive(Debug, Default)]
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub struct Metrics {
    /// TCP connections accepted.
    accepted: AtomicU64,
    /// WebSocket upgrades completed.
    upgraded: AtomicU64,
    refused: [AtomicU64; 4],
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// By [`CLOSE_CODES`] index, then `other`, then `none` (EOF or a failure
    /// without a close frame).
    closes: [AtomicU64; CLOSE_CODES.len() + 2],
    /// TLS handshakes that failed (including plain HTTP on the TLS port).
    tls_failures: AtomicU64,
    /// By [`LATENCY_BUCKETS`] index, then `+Inf`.
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_micros: AtomicU64,
}

/// Adds one, relaxed: counters need no ordering with anything else.
fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// A set of zeroed counters.
    pub fn new() -> Self {
        Metrics::default()
    }

    /// A TCP connection was accepted.
    pub(crate) fn accepted(&self) {
        if ENABLED {
            bump(&self.accepted);
        }
    }

    /// A WebSocket upgrade completed.
    pub(crate) fn upgraded(&self) {
        if ENABLED {
            bump(&self.upgraded);
        }
    }

    /// A TLS handshake failed (or the peer spoke plain HTTP to TLS).
    #[cfg(feature = "tls")]
    pub(crate) fn tls_failed(&self) {
        if ENABLED {
            bump(&self.tls_failures);
        }
    }

    /// A request was refused.
    pub(crate) fn refused(&self, why: Refusal) {
        if ENABLED {
            bump(&self.refused[why as usize]);
        }
    }

    /// A data message of `len` payload bytes from a peer. (Messages
    /// themselves are counted per peer already; the hub sums them.)
    pub(crate) fn received_bytes(&self, len: usize) {
        if ENABLED {
            self.bytes_in.fetch_add(len as u64, Ordering::Relaxed);
        }
    }

    /// A data message of `len` payload bytes to a peer.
    pub(crate) fn sent_bytes(&self, len: usize) {
        if ENABLED {
            self.bytes_out.fetch_add(len as u64, Ordering::Relaxed);
        }
    }

    /// A connection ended so (see [`close_code`]).
    pub(crate) fn ended(&self, ended: &Result<Ended, Error>) {
        if ENABLED {
            self.closed(close_code(ended));
        }
    }

    /// A connection ended with close `code` (`None`: without one).
    fn closed(&self, code: Option<u16>) {
        let index = match code {
            Some(code) => CLOSE_CODES
                .iter()
                .position(|&c| c == code)
                .unwrap_or(CLOSE_CODES.len()),
            None => CLOSE_CODES.len() + 1,
        };
        bump(&self.closes[index]);
    }

    /// A server-initiated request got its reply after `latency`.
    #[cfg(feature = "metrics")]
    pub(crate) fn request_latency(&self, latency: Duration) {
        if !ENABLED {
            return;
        }
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|&(bound, _)| micros <= bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        bump(&self.latency_buckets[bucket]);
        self.latency_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of these counters and of `hub`'s
    /// gauges and message totals.
    #[cfg(feature = "metrics")]
    pub fn render<P>(&self, hub: &Hub<P>) -> String {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::with_capacity(4096);
        let (open, queued) = hub.open_and_queued();
        let messages = hub.stats();
        gauge(
            &mut out,
            "wsloop_connections_open",
            "Live WebSocket connections.",
            open as u64,
        );
        counter(
            &mut out,
            "wsloop_tcp_connections_total",
            "TCP connections accepted.",
            load(&self.accepted),
        );
        counter(
            &mut out,
            "wsloop_connections_total",
            "WebSocket upgrades completed.",
            load(&self.upgraded),
        );
        header(
            &mut out,
            "wsloop_upgrades_refused_total",
            "counter",
            "Requests refused, by reason.",
        );
        for (label, count) in REFUSAL_LABELS.iter().zip(&self.refused) {
            let _ = writeln!(
                out,
                "wsloop_upgrades_refused_total{{reason=\"{label}\"}} {}",
                load(count)
            );
        }
        counter(
            &mut out,
            "wsloop_messages_received_total",
            "Data messages received.",
            messages.received,
        );
        counter(
            &mut out,
            "wsloop_messages_sent_total",
            "Data messages sent.",
            messages.sent,
        );
        counter(
            &mut out,
            "wsloop_received_bytes_total",
            "Payload bytes of data messages received.",
            load(&self.bytes_in),
        );
        counter(
            &mut out,
            "wsloop_sent_bytes_total",
            "Payload bytes of data messages sent.",
            load(&self.bytes_out),
        );
        header(
            &mut out,
            "wsloop_closes_total",
            "counter",
            "Connections ended, by close code.",
        );
        let codes = CLOSE_CODES
            .iter()
            .map(u16::to_string)
            .chain(["other".into(), "none".into()]);
        for (code, count) in codes.zip(&self.closes) {
            let _ = writeln!(
                out,
                "wsloop_closes_total{{code=\"{code}\"}} {}",
                load(count)
            );
        }
        counter(
            &mut out,
            "wsloop_tls_handshake_failures_total",
            "TLS handshakes that failed.",
            load(&self.tls_failures),
        );
        gauge(
            &mut out,
            "wsloop_outbound_queue_depth",
            "Messages waiting in outbound queues.",
            queued as u64,
        );
        self.render_latency(&mut out);
        out
    }

    /// The request-latency histogram (cumulative buckets, as Prometheus wants).
    #[cfg(feature = "metrics")]
    fn render_latency(&self, out: &mut String) {
        let name = "wsloop_request_latency_seconds";
        header(
            out,
            name,
            "histogram",
            "Server-initiated requests: time to the reply.",
        );
        let mut cumulative = 0;
        let bounds = LATENCY_BUCKETS
            .iter()
            .map(|&(_, label)| label)
            .chain(["+Inf"]);
        for (bound, count) in bounds.zip(&self.latency_buckets) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let sum = self.latency_micros.load(Ordering::Relaxed);
        let (secs, micros) = (sum / 1_000_000, sum % 1_000_000);
        let _ = writeln!(out, "{name}_sum {secs}.{micros:06}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// The close code a connection's end counts under: the one either side
/// sent, or the one the loop sends for a failure; `None` for EOF and
/// failures without a close frame.
fn close_code(ended: &Result<Ended, Error>) -> Option<u16> {
    use async_tungstenite::tungstenite::Error as Ws;
    match ended {
        Ok(Ended::PeerClosed(Some((code, _)))) | Ok(Ended::Closed(code)) => Some(*code),
        Ok(Ended::PeerClosed(None)) => Some(CLOSE_NORMAL),
        Ok(Ended::IdleTimeout) => Some(CLOSE_GOING_AWAY),
        Ok(Ended::InvalidClose(_)) => Some(CLOSE_PROTOCOL_ERROR),
        Ok(Ended::Eof) => None,
        Err(Error::Policy(_)) => Some(CLOSE_POLICY),
        Err(Error::WebSocket(Ws::Capacity(_))) => Some(CLOSE_TOO_BIG),
        Err(Error::WebSocket(Ws::Utf8(_))) => Some(CLOSE_INVALID_DATA),
        Err(Error::WebSocket(Ws::Protocol(_))) => Some(CLOSE_PROTOCOL_ERROR),
        // A protocol error the read guard caught (a top-bit frame length).
        Err(Error::ProtocolViolation(_)) => Some(CLOSE_PROTOCOL_ERROR),
        Err(_) => None,
    }
}

#[cfg(feature = "metrics")]
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

#[cfg(feature = "metrics")]
fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, "counter", help);
    let _ = writeln!(out, "{name} {value}");
}

#[cfg(feature = "metrics")]
fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_once_with_cumulative_buckets() {
        let metrics = Metrics::new();
        metrics.received_bytes(10);
        metrics.sent_bytes(7);
        metrics.closed(Some(1000));
        metrics.closed(Some(4000));
        metrics.closed(None);
        metrics.refused(Refusal::Token);
        metrics.request_latency(Duration::from_millis(3));
        metrics.request_latency(Duration::from_secs(60));
        let text = metrics.render(&Hub::new());
        for line in [
            "wsloop_received_bytes_total 10",
            "wsloop_sent_bytes_total 7",
            "wsloop_closes_total{code=\"1000\"} 1",
            "wsloop_closes_total{code=\"other\"} 1",
            "wsloop_closes_total{code=\"none\"} 1",
            "wsloop_upgrades_refused_total{reason=\"token\"} 1",
            "wsloop_request_latency_seconds_bucket{le=\"0.005\"} 1",
            "wsloop_request_latency_seconds_bucket{le=\"10\"} 1",
            "wsloop_request_latency_seconds_bucket{le=\"+Inf\"} 2",
            "wsloop_request_latency_seconds_count 2",
            "wsloop_request_latency_seconds_sum 60.003000",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        assert_eq!(text.matches("# TYPE wsloop_closes_total ").count(), 1);
    }

    #[test]
    fn a_protocol_violation_counts_under_1002_and_an_io_error_under_none() {
        let violation = Err(Error::ProtocolViolation("frame length has its top bit set"));
        assert_eq!(close_code(&violation), Some(CLOSE_PROTOCOL_ERROR));
        let io = Err(Error::Io(std::io::ErrorKind::InvalidData.into()));
        assert_eq!(close_code(&io), None);
    }
}
