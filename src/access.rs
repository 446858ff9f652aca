//! Who may connect: the origin check, the shared-secret token, and the
//! connection limits, all decided before a WebSocket upgrade is accepted.
//!
//! - **Origin**: a browser always sends `Origin`; a page on another site
//!   must not be able to open a socket to this server with the user's
//!   cookies (cross-site WebSocket hijacking). By default an `Origin`, when
//!   present, must name the same host and port as the `Host` header;
//!   requests without one (non-browser clients) pass.
//! - **Token**: with a token set, `/server` requires
//!   `Authorization: Bearer <token>` or a `token` query parameter (browsers
//!   cannot set headers on a WebSocket). It is compared in constant time and
//!   never logged.
//! - **Limits**: concurrent connections in total and per remote IP; past
//!   either the request gets 503 before any upgrade.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::http::{percent_decode, Request};

/// Most concurrent TCP connections the server holds (503 past it). Each
/// costs a file descriptor and a few KiB; the default fits a small machine.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Most concurrent connections from one remote IP (503 past it), so one
/// host cannot take every slot.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 1_000;

/// Environment variable the binary reads the token from when no
/// `--token-file` is given.
pub const TOKEN_ENV: &str = "WSLOOP_TOKEN";

/// The server's admission rules (see the module docs).
#[derive(Clone)]
pub struct AccessPolicy {
    /// Extra origins allowed besides the server's own (`scheme://host[:port]`).
    pub allowed_origins: Vec<String>,
    /// Skip the origin check entirely (logged as a warning at start).
    pub allow_any_origin: bool,
    /// Shared secret required at `/server`, if any.
    pub token: Option<String>,
    /// Concurrent connections in total ([`DEFAULT_MAX_CONNECTIONS`]; 0 = no limit).
    pub max_connections: usize,
    /// Concurrent connections per remote IP ([`DEFAULT_MAX_CONNECTIONS_PER_IP`]; 0 = no limit).
    pub max_connections_per_ip: usize,
}

impl Default for AccessPolicy {
    fn default() -> Self {
        AccessPolicy {
            allowed_origins: Vec::new(),
            allow_any_origin: false,
            token: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
        }
    }
}

impl std::fmt::Debug for AccessPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token itself is never printed.
        f.debug_struct("AccessPolicy")
            .field("allowed_origins", &self.allowed_origins)
            .field("allow_any_origin", &self.allow_any_origin)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("max_connections", &self.max_connections)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .finish()
    }
}

impl AccessPolicy {
    /// Checks the upgrade request's `Origin` against its `Host` and the
    /// allowed list. The error is the one-line reason for the 403.
    pub fn check_origin(&self, request: &Request) -> Result<(), String> {
        let Some(origin) = request.header("Origin") else {
            return Ok(()); // not a browser
        };
        if self.allow_any_origin {
            return Ok(());
        }
        let origin_norm = normalize_origin(origin);
        if self
            .allowed_origins
            .iter()
            .any(|allowed| normalize_origin(allowed) == origin_norm)
        {
            return Ok(());
        }
        let host = request.header("Host").unwrap_or("");
        if let Some((scheme, origin_host)) = origin_norm.split_once("://") {
            if origin_host == normalize_host(host, scheme) {
                return Ok(());
            }
        }
        // Both are the peer's: quoted escaped and cut, in the log and the 403.
        let (origin, host) = (crate::log_safe::quote(origin), crate::log_safe::quote(host));
        Err(format!(
            "origin {origin:?} does not match host {host:?} \
             (behind a proxy, forward the original Host, or use --allow-origin)"
        ))
    }

    /// Whether the request carries the token (when one is required).
    pub fn check_token(&self, request: &Request) -> bool {
        let Some(expected) = &self.token else {
            return true;
        };
        let bearer = request
            .header("Authorization")
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim);
        let query = request
            .query()
            .and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("token=")))
            .and_then(percent_decode);
        let bearer = bearer.map(|b| b.as_bytes().to_vec());
        [bearer, query]
            .into_iter()
            .flatten()
            .any(|given| constant_time_eq(&given, expected.as_bytes()))
    }

    fn max_connections(&self) -> usize {
        no_limit_if_zero(self.max_connections)
    }

    fn max_connections_per_ip(&self) -> usize {
        no_limit_if_zero(self.max_connections_per_ip)
    }
}

fn no_limit_if_zero(limit: usize) -> usize {
    if limit == 0 {
        usize::MAX
    } else {
        limit
    }
}

/// `scheme://host[:port]`, lower-cased, without a trailing slash or the
/// scheme's default port.
fn normalize_origin(origin: &str) -> String {
    let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    match origin.split_once("://") {
        Some((scheme, host)) => format!("{scheme}://{}", normalize_host(host, scheme)),
        None => origin,
    }
}

/// A `Host` value lower-cased, without the default port of `scheme`.
fn normalize_host(host: &str, scheme: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    let default_port = match scheme {
        "https" | "wss" => ":443",
        _ => ":80",
    };
    match host.strip_suffix(default_port) {
        Some(bare) => bare.to_string(),
        None => host,
    }
}

/// Compares without an early exit, so the time taken does not reveal how
/// much of a guessed token was right. (The length may still show.)
fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = given.len() ^ expected.len();
    for (i, &byte) in expected.iter().enumerate() {
        diff |= usize::from(byte ^ given.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

/// Live connection counts, total and per remote IP.
#[derive(Default)]
pub(crate) struct Admission {
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// One admitted connection; dropping it frees its slot.
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Admission {
    /// Takes a slot for a connection from `ip`, or says why not.
    pub(crate) fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        policy: &AccessPolicy,
    ) -> Result<Ticket, &'static str> {
        let mut counts = self.lock();
        if counts.total >= policy.max_connections() {
            return Err("server at its connection limit; try again later");
        }
        let from_ip = counts.per_ip.entry(ip).or_insert(0);
        if *from_ip >= policy.max_connections_per_ip() {
            return Err("too many connections from your address; try again later");
        }
        *from_ip += 1;
        counts.total += 1;
        Ok(Ticket {
            admission: self.clone(),
            ip,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut counts = self.admission.lock();
        counts.total -= 1;
        if let Some(n) = counts.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade(headers: &[(&str, &str)], target: &str) -> Request {
        Request {
            method: "GET".into(),
            target: target.into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn origin_must_match_host_unless_allowed() {
        let policy = AccessPolicy::default();
        let same = upgrade(
            &[("Host", "example:8080"), ("Origin", "http://example:8080")],
            "/",
        );
        assert!(policy.check_origin(&same).is_ok());
        let default_port = upgrade(&[("Host", "Example:80"), ("Origin", "http://example")], "/");
        assert!(policy.check_origin(&default_port).is_ok());
        let no_origin = upgrade(&[("Host", "example:8080")], "/");
        assert!(policy.check_origin(&no_origin).is_ok());

        // nginx's `proxy_set_header Host $host;` drops the port.
        let proxied = upgrade(
            &[("Host", "example"), ("Origin", "http://example:8080")],
            "/",
        );
        let why = policy.check_origin(&proxied).unwrap_err();
        assert!(
            why.contains("http://example:8080") && why.contains("\"example\""),
            "{why}"
        );

        let evil = upgrade(
            &[("Host", "example:8080"), ("Origin", "http://evil.test")],
            "/",
        );
        assert!(policy.check_origin(&evil).is_err());

        let allowing = AccessPolicy {
            allowed_origins: vec!["http://example:8080/".into()],
            ..AccessPolicy::default()
        };
        assert!(allowing.check_origin(&proxied).is_ok());
        let any = AccessPolicy {
            allow_any_origin: true,
            ..AccessPolicy::default()
        };
        assert!(any.check_origin(&evil).is_ok());
    }

    #[test]
    fn token_from_header_or_query() {
        let policy = AccessPolicy {
            token: Some("s3cret".into()),
            ..AccessPolicy::default()
        };
        assert!(policy.check_token(&upgrade(&[("Authorization", "Bearer s3cret")], "/server")));
        assert!(policy.check_token(&upgrade(&[], "/server?x=1&token=s3cret")));
        assert!(policy.check_token(&upgrade(&[], "/server?token=s3%63ret")));
        assert!(!policy.check_token(&upgrade(&[("Authorization", "Bearer s3cre")], "/server")));
        assert!(!policy.check_token(&upgrade(&[], "/server?token=s3cretX")));
        assert!(!policy.check_token(&upgrade(&[], "/server")));
        assert!(AccessPolicy::default().check_token(&upgrade(&[], "/server")));
        assert!(!format!("{policy:?}").contains("s3cret"));
    }

    #[test]
    fn admission_counts_total_and_per_ip() {
        let policy = AccessPolicy {
            max_connections: 3,
            max_connections_per_ip: 2,
            ..AccessPolicy::default()
        };
        let admission = Arc::new(Admission::default());
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let first = admission.admit(a, &policy).unwrap();
        let _second = admission.admit(a, &policy).unwrap();
        assert!(admission.admit(a, &policy).is_err(), "per-IP limit");
        let _third = admission.admit(b, &policy).unwrap();
        assert!(admission.admit(b, &policy).is_err(), "total limit");
        drop(first);
        assert!(admission.admit(a, &policy).is_ok(), "slot freed on drop");
    }
}
