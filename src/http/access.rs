//! Who may connect: the Host check, the origin check, the shared-secret
//! token, and the connection limits.
//!
//! - **Host**: every request's `Host` must name this server: its bound IP
//!   literal, `localhost`, or a name in [`AccessPolicy::allowed_hosts`]
//!   (any port, or none). A DNS-rebinding page (`attacker.example` made to
//!   resolve to this machine) sends `Host: attacker.example` and its own
//!   matching `Origin`, so only this check stops it. Bound to `0.0.0.0` or
//!   `[::]`, every IP literal is accepted (the machine's addresses are not
//!   cheaply known, and a rebinding attack always names a host).
//!   Requests without `Host` (not a browser) pass.
//! - **Origin**: a browser always sends `Origin`; a page on another site
//!   must not be able to open a socket to this server with the user's
//!   cookies (cross-site WebSocket hijacking). By default an `Origin`, when
//!   present, must name the same host and port as the `Host` header, with
//!   this connection's scheme (`http`/`ws` in plain TCP); requests without
//!   one (non-browser clients) pass.
//! - **Token**: with a token set, `/server` and `/stats` require
//!   `Authorization: Bearer <token>` (the scheme in any case) or a `token`
//!   query parameter (browsers cannot set headers on a WebSocket). It is
//!   compared in constant time and never logged.
//! - **Limits**: concurrent connections in total and per remote IP, decided
//!   when the connection is accepted; past either it gets a canned 503 and
//!   is closed at once.

use std::net::{IpAddr, SocketAddr};
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
#[non_exhaustive]
pub struct AccessPolicy {
    /// Extra origins allowed besides the server's own (`scheme://host[:port]`).
    pub allowed_origins: Vec<String>,
    /// Host names that name this server besides its bound address and
    /// `localhost` (`--allow-host`). A bare name matches any port; a
    /// `name:port` entry only that port.
    pub allowed_hosts: Vec<String>,
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
            allowed_hosts: Vec::new(),
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
            .field("allowed_hosts", &self.allowed_hosts)
            .field("allow_any_origin", &self.allow_any_origin)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("max_connections", &self.max_connections)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .finish()
    }
}

impl AccessPolicy {
    /// Checks that the request's `Host` names this server, bound at
    /// `local` (see the module docs). The error is the one-line reason for
    /// the 421.
    pub fn check_host(&self, request: &Request, local: SocketAddr) -> Result<(), String> {
        let Some(value) = request.header("Host") else {
            return Ok(()); // not a browser: rebinding needs one
        };
        let host = value.to_ascii_lowercase();
        let (name, _port) = split_host_port(&host);
        // A fully qualified `localhost.` is still `localhost`.
        let name = name.strip_suffix('.').unwrap_or(name);
        let names_us = match name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            // An IP literal cannot be rebound: it names this machine when it
            // is our address (any, when bound to every address).
            Ok(ip) => local.ip().is_unspecified() || ip == local.ip(),
            Err(_) => {
                name == "localhost"
                    || self.allowed_hosts.iter().any(|allowed| {
                        let allowed = allowed.trim().to_ascii_lowercase();
                        allowed == name || allowed == host
                    })
            }
        };
        if names_us {
            return Ok(());
        }
        Err("the Host header does not name this server \
             (start it with --allow-host NAME to accept that name)"
            .to_string())
    }

    /// Checks the upgrade request's `Origin` against its `Host` and the
    /// allowed list. `tls` says whether the connection itself is encrypted,
    /// which decides the scheme a same-host origin must have. The error is
    /// the one-line reason for the 403.
    pub fn check_origin(&self, request: &Request, tls: bool) -> Result<(), String> {
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
        // A page served over another scheme is another origin, and only
        // web schemes open WebSockets.
        let schemes: [&str; 2] = if tls {
            ["https", "wss"]
        } else {
            ["http", "ws"]
        };
        if let Some((scheme, origin_host)) = origin_norm.split_once("://") {
            if schemes.contains(&scheme) && origin_host == normalize_host(host, scheme) {
                return Ok(());
            }
        }
        // Both are the peer's: quoted escaped and cut, in the log and the 403.
        let (origin, host) = (crate::log_safe::quote(origin), crate::log_safe::quote(host));
        Err(format!(
            "origin {origin:?} does not match host {host:?} over {} \
             (behind a proxy, forward the original Host, or use --allow-origin)",
            schemes[0]
        ))
    }

    /// Whether the request carries the token (when one is required).
    pub fn check_token(&self, request: &Request) -> bool {
        let Some(expected) = &self.token else {
            return true;
        };
        presented_tokens(request)
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

/// Splits a lower-cased `Host` value into its name (an IPv6 literal keeps
/// its brackets) and its port, if any.
fn split_host_port(host: &str) -> (&str, Option<&str>) {
    if host.starts_with('[') {
        return match host.split_once("]:") {
            Some((name, port)) => (&host[..name.len() + 1], Some(port)),
            None => (host, None),
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
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

/// The tokens a request presents: its `Authorization: Bearer` one and its
/// `?token=` one (percent-decoded), either or both absent.
pub(crate) fn presented_tokens(request: &Request) -> [Option<Vec<u8>>; 2] {
    [bearer_token(request), query_param(request, "token")]
}

/// The token of an `Authorization: Bearer` header.
pub(crate) fn bearer_token(request: &Request) -> Option<Vec<u8>> {
    // The auth scheme is case-insensitive (RFC 9110, 11.1).
    request
        .header("Authorization")
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("Bearer"))
        .map(|(_, token)| token.trim().as_bytes().to_vec())
}

/// The first `name=` parameter of the query, percent-decoded. A bare
/// `name` is an empty value, and one whose escapes do not decode is kept as
/// written: either is then refused by whatever reads it (a name, a wait, a
/// token) instead of passing as absent.
pub(crate) fn query_param(request: &Request, name: &str) -> Option<Vec<u8>> {
    let value = request.query()?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })?;
    Some(percent_decode(value).unwrap_or_else(|| value.as_bytes().to_vec()))
}

/// Compares without an early exit, so the time taken does not reveal how
/// much of a guessed token was right. (The length may still show.)
pub(crate) fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
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
    /// Live connections per IP, in address order, only IPs with some. A
    /// sorted `Vec`, found by binary search, rather than a hash map: the
    /// small build's last hash table, and with it the hasher, left the
    /// binary (4.9 KB). An IP's first connection and its last one's end
    /// move the entries after it (24 bytes each: at the default 10,000
    /// connections from 10,000 addresses, about 2 µs per change, measured,
    /// under this lock); every other admission is a search.
    per_ip: Vec<(IpAddr, u32)>,
}

impl Counts {
    /// Where `ip`'s count is, or would go.
    fn find(&self, ip: &IpAddr) -> Result<usize, usize> {
        self.per_ip.binary_search_by(|(other, _)| other.cmp(ip))
    }
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
        let at = match counts.find(&ip) {
            Ok(at) => at,
            Err(at) => {
                counts.per_ip.insert(at, (ip, 0));
                at
            }
        };
        let from_ip = &mut counts.per_ip[at].1;
        if *from_ip as usize >= policy.max_connections_per_ip() {
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
        if let Ok(at) = counts.find(&self.ip) {
            let n = &mut counts.per_ip[at].1;
            *n -= 1;
            if *n == 0 {
                counts.per_ip.remove(at);
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
        assert!(policy.check_origin(&same, false).is_ok());
        let default_port = upgrade(&[("Host", "Example:80"), ("Origin", "http://example")], "/");
        assert!(policy.check_origin(&default_port, false).is_ok());
        let no_origin = upgrade(&[("Host", "example:8080")], "/");
        assert!(policy.check_origin(&no_origin, false).is_ok());

        // nginx's `proxy_set_header Host $host;` drops the port.
        let proxied = upgrade(
            &[("Host", "example"), ("Origin", "http://example:8080")],
            "/",
        );
        let why = policy.check_origin(&proxied, false).unwrap_err();
        assert!(
            why.contains("http://example:8080") && why.contains("\"example\""),
            "{why}"
        );

        let evil = upgrade(
            &[("Host", "example:8080"), ("Origin", "http://evil.test")],
            "/",
        );
        assert!(policy.check_origin(&evil, false).is_err());

        let allowing =
            AccessPolicy::default().with_allowed_origins(vec!["http://example:8080/".into()]);
        assert!(allowing.check_origin(&proxied, false).is_ok());
        let any = AccessPolicy::default().with_allow_any_origin(true);
        assert!(any.check_origin(&evil, false).is_ok());
    }

    #[test]
    fn origin_scheme_must_be_this_connections() {
        let policy = AccessPolicy::default();
        let with = |origin: &str| upgrade(&[("Host", "example:8080"), ("Origin", origin)], "/");
        assert!(policy
            .check_origin(&with("ws://example:8080"), false)
            .is_ok());
        for other in [
            "https://example:8080",
            "foo://example:8080",
            "wss://example:8080",
        ] {
            assert!(policy.check_origin(&with(other), false).is_err(), "{other}");
        }
        assert!(policy
            .check_origin(&with("https://example:8080"), true)
            .is_ok());
        assert!(policy
            .check_origin(&with("http://example:8080"), true)
            .is_err());
    }

    #[test]
    fn host_must_name_this_server() {
        let policy = AccessPolicy::default()
            .with_allowed_hosts(vec!["Chat.Example".into(), "pinned.example:9000".into()]);
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let host = |value: &str| upgrade(&[("Host", value)], "/");
        for ok in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "127.0.0.1:9999",
            "localhost",
            "LOCALHOST:8080",
            "localhost.:8080",
            "chat.example",
            "chat.example:443",
            "pinned.example:9000",
        ] {
            assert!(policy.check_host(&host(ok), local).is_ok(), "{ok}");
        }
        for bad in [
            "attacker.example:8080",
            "attacker.example",
            "10.0.0.1:8080",
            "[::1]:8080",
            "pinned.example:9001",
            "pinned.example",
            "chat.example.evil",
            "",
        ] {
            let why = policy.check_host(&host(bad), local).unwrap_err();
            assert!(why.contains("--allow-host"), "{why}");
        }
        assert!(
            policy.check_host(&upgrade(&[], "/"), local).is_ok(),
            "no Host"
        );

        let v6: SocketAddr = "[::1]:8080".parse().unwrap();
        assert!(policy.check_host(&host("[::1]:8080"), v6).is_ok());
        assert!(policy.check_host(&host("[::1]"), v6).is_ok());
        assert!(policy.check_host(&host("127.0.0.1:8080"), v6).is_err());

        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        assert!(policy.check_host(&host("192.168.1.5:8080"), any).is_ok());
        assert!(policy.check_host(&host("[fe80::1]:8080"), any).is_ok());
        assert!(policy.check_host(&host("myhost.lan:8080"), any).is_err());
    }

    #[test]
    fn token_from_header_or_query() {
        let policy = AccessPolicy::default().with_token("s3cret");
        assert!(policy.check_token(&upgrade(&[("Authorization", "Bearer s3cret")], "/server")));
        assert!(policy.check_token(&upgrade(&[("Authorization", "bearer s3cret")], "/server")));
        assert!(policy.check_token(&upgrade(&[("Authorization", "BEARER  s3cret ")], "/server")));
        assert!(!policy.check_token(&upgrade(&[("Authorization", "Basic s3cret")], "/server")));
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
        let policy = AccessPolicy::default()
            .with_max_connections(3)
            .with_max_connections_per_ip(2);
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

    /// The per-IP counts stay right whatever order addresses come and go
    /// in (they are kept sorted), and an address's entry goes with its
    /// last connection.
    #[test]
    fn admission_counts_many_addresses_in_any_order() {
        let policy = AccessPolicy::default().with_max_connections_per_ip(2);
        let admission = Arc::new(Admission::default());
        let ips: Vec<IpAddr> = [9, 3, 7, 1, 5, 3, 9]
            .iter()
            .map(|n| IpAddr::from([10, 0, 0, *n]))
            .chain(["::1".parse().unwrap()])
            .collect();
        let mut tickets: Vec<Ticket> = ips
            .iter()
            .map(|ip| admission.admit(*ip, &policy).unwrap())
            .collect();
        let ip = |n| IpAddr::from([10, 0, 0, n]);
        assert!(admission.admit(ip(3), &policy).is_err(), "3 has two");
        assert!(admission.admit(ip(9), &policy).is_err(), "9 has two");
        let sorted = |a: &Admission| a.lock().per_ip.windows(2).all(|w| w[0].0 < w[1].0);
        assert!(sorted(&admission));
        assert_eq!(admission.lock().per_ip.len(), 6);
        // 7's only connection ends, and one of 3's.
        tickets.remove(2);
        tickets.remove(1);
        assert_eq!(admission.lock().per_ip.len(), 5);
        assert!(sorted(&admission));
        assert!(admission.admit(ip(3), &policy).is_ok(), "3 has one again");
        drop(tickets);
        assert_eq!(admission.lock().per_ip.len(), 0);
        assert_eq!(admission.lock().total, 0);
    }
}
