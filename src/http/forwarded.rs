//! The client's real address behind a reverse proxy.
//!
//! Behind nginx every connection comes from the proxy's own address, so the
//! per-IP limit would cap the whole server and every log line would name
//! the proxy. For connections from a *trusted* proxy (`--trusted-proxy`),
//! the client's address is taken from the request head instead:
//!
//! 1. `X-Forwarded-For`: the rightmost address that is not itself a trusted
//!    proxy (each proxy appends the address it saw, so everything left of
//!    that one was written by the client and may be forged);
//! 2. else `X-Real-IP`;
//! 3. else `Forwarded` (RFC 7239), its `for=` parameters read like
//!    `X-Forwarded-For`.
//!
//! From any other peer these headers are ignored: anyone can send them.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::http::Request;

/// Addresses and networks whose forwarding headers are believed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    /// Network addresses (canonical: IPv4-mapped IPv6 as IPv4) and prefix
    /// lengths.
    nets: Vec<(IpAddr, u8)>,
}

impl TrustedProxies {
    /// No trusted proxy: every peer's own address is its address.
    pub fn new() -> Self {
        TrustedProxies::default()
    }

    /// Trusts `spec`: an address (`127.0.0.1`, `::1`) or a network in CIDR
    /// notation (`10.0.0.0/8`, `fd00::/8`). The error is a one-line reason.
    pub fn add(&mut self, spec: &str) -> Result<(), String> {
        let bad = || format!("bad trusted proxy {spec:?}: expected ADDR or ADDR/PREFIX");
        let (addr, prefix) = match spec.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix.parse::<u8>().map_err(|_| bad())?)),
            None => (spec.trim(), None),
        };
        let addr = addr.parse::<IpAddr>().map_err(|_| bad())?.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        self.nets.push((addr, prefix));
        Ok(())
    }

    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets
            .iter()
            .any(|&(net, prefix)| in_net(ip, net, prefix))
    }

    /// The client's address for a request that arrived from `peer`: `peer`
    /// itself unless it is a trusted proxy that says otherwise (see the
    /// module docs). A forwarded address gets port 0: proxies do not pass
    /// the client's port on.
    pub fn client_addr(&self, peer: SocketAddr, request: &Request) -> SocketAddr {
        if !self.contains(peer.ip()) {
            return peer;
        }
        let forwarded = self
            .rightmost_untrusted(header_list(request, "x-forwarded-for"))
            .or_else(|| request.header("x-real-ip").and_then(parse_ip))
            .or_else(|| self.rightmost_untrusted(forwarded_for(request)));
        match forwarded {
            Some(ip) => SocketAddr::new(ip, 0),
            None => peer,
        }
    }

    /// Walks a hop list from the right (the hop nearest to us) and returns
    /// the first address that is not a trusted proxy. When every hop is
    /// trusted, the leftmost is the client. A hop that is not an address
    /// ends the walk: what lies left of it cannot be believed, so the last
    /// good hop is the answer.
    fn rightmost_untrusted<'a>(
        &self,
        hops: impl DoubleEndedIterator<Item = &'a str>,
    ) -> Option<IpAddr> {
        let mut last = None;
        for hop in hops.rev() {
            let Some(ip) = parse_ip(hop) else { break };
            last = Some(ip);
            if !self.contains(ip) {
                break;
            }
        }
        last
    }
}

impl fmt::Debug for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nets = self
            .nets
            .iter()
            .map(|(net, prefix)| format!("{net}/{prefix}"));
        f.debug_list().entries(nets).finish()
    }
}

/// Whether `ip` lies in `net/prefix` (both canonical).
fn in_net(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// Every comma-separated entry of every header called `name`, in order (a
/// list may be split over several header lines).
fn header_list<'a>(
    request: &'a Request,
    name: &'a str,
) -> impl DoubleEndedIterator<Item = &'a str> {
    request
        .headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
}

/// The `for=` value of each element of the `Forwarded` headers, in order.
fn forwarded_for(request: &Request) -> impl DoubleEndedIterator<Item = &str> {
    header_list(request, "forwarded").map(|element| {
        element
            .split(';')
            .filter_map(|pair| pair.split_once('='))
            .find(|(key, _)| key.trim().eq_ignore_ascii_case("for"))
            .map_or("", |(_, value)| value.trim())
    })
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:5`, `::1`,
/// `[::1]:5`, optionally quoted (`Forwarded`). `unknown` and obfuscated
/// identifiers are not addresses.
fn parse_ip(text: &str) -> Option<IpAddr> {
    let text = text.trim().trim_matches('"');
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr.ip().to_canonical());
    }
    // `[::1]` without a port.
    let bracketed = text.strip_prefix('[')?.strip_suffix(']')?;
    bracketed.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(specs: &[&str]) -> TrustedProxies {
        let mut proxies = TrustedProxies::new();
        for spec in specs {
            proxies.add(spec).unwrap();
        }
        proxies
    }

    fn request(headers: &[(&str, &str)]) -> Request {
        Request {
            method: "GET".into(),
            target: "/server".into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn client(proxies: &TrustedProxies, peer: &str, headers: &[(&str, &str)]) -> String {
        let peer: SocketAddr = peer.parse().unwrap();
        proxies.client_addr(peer, &request(headers)).to_string()
    }

    #[test]
    fn addresses_and_networks_parse() {
        let p = proxies(&["127.0.0.1", "10.0.0.0/8", "fd00::/8"]);
        assert!(p.contains("127.0.0.1".parse().unwrap()));
        assert!(!p.contains("127.0.0.2".parse().unwrap()));
        assert!(p.contains("10.200.3.4".parse().unwrap()));
        assert!(
            p.contains("::ffff:10.1.1.1".parse().unwrap()),
            "IPv4-mapped"
        );
        assert!(p.contains("fd12::1".parse().unwrap()));
        assert!(!p.contains("fe80::1".parse().unwrap()));
        assert!(proxies(&["0.0.0.0/0"]).contains("8.8.8.8".parse().unwrap()));
        let mut p = TrustedProxies::new();
        for bad in ["", "localhost", "10.0.0.0/33", "::/129", "1.2.3.4/x"] {
            assert!(p.add(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn x_forwarded_for_takes_the_rightmost_untrusted_hop() {
        let p = proxies(&["127.0.0.1", "10.0.0.0/8"]);
        let xff = |v| client(&p, "127.0.0.1:5000", &[("X-Forwarded-For", v)]);
        assert_eq!(xff("203.0.113.7"), "203.0.113.7:0");
        // The client wrote the leftmost entry itself: not believed.
        assert_eq!(xff("6.6.6.6, 203.0.113.7"), "203.0.113.7:0");
        // A chain of trusted proxies is skipped.
        assert_eq!(xff("6.6.6.6, 203.0.113.7, 10.1.2.3"), "203.0.113.7:0");
        // Every hop trusted: the leftmost is the client.
        assert_eq!(xff("10.9.9.9, 10.1.2.3"), "10.9.9.9:0");
        // Garbage stops the walk at the last good hop.
        assert_eq!(xff("203.0.113.7, bogus, 10.1.2.3"), "10.1.2.3:0");
        assert_eq!(xff("bogus"), "127.0.0.1:5000");
        // Split over two header lines, and with IPv6 and ports.
        let two = [
            ("X-Forwarded-For", "1.1.1.1"),
            ("x-forwarded-for", "[2001:db8::1]:443"),
        ];
        assert_eq!(client(&p, "127.0.0.1:5000", &two), "[2001:db8::1]:0");
    }

    #[test]
    fn x_real_ip_and_forwarded() {
        let p = proxies(&["127.0.0.1"]);
        let peer = "127.0.0.1:5000";
        assert_eq!(
            client(&p, peer, &[("X-Real-IP", "198.51.100.2")]),
            "198.51.100.2:0"
        );
        let fwd = [(
            "Forwarded",
            "for=6.6.6.6, for=\"[2001:db8:cafe::17]:4711\";proto=https",
        )];
        assert_eq!(client(&p, peer, &fwd), "[2001:db8:cafe::17]:0");
        let fwd = [("Forwarded", "proto=http;For=192.0.2.60;by=203.0.113.43")];
        assert_eq!(client(&p, peer, &fwd), "192.0.2.60:0");
        assert_eq!(client(&p, peer, &[("Forwarded", "for=unknown")]), peer);
        // X-Forwarded-For wins over the others.
        let both = [
            ("X-Real-IP", "198.51.100.2"),
            ("X-Forwarded-For", "192.0.2.1"),
        ];
        assert_eq!(client(&p, peer, &both), "192.0.2.1:0");
        assert_eq!(client(&p, peer, &[]), peer);
    }

    #[test]
    fn headers_from_an_untrusted_peer_are_ignored() {
        let p = proxies(&["127.0.0.1"]);
        let spoofed = [
            ("X-Forwarded-For", "1.2.3.4"),
            ("X-Real-IP", "1.2.3.4"),
            ("Forwarded", "for=1.2.3.4"),
        ];
        assert_eq!(client(&p, "127.0.0.2:7", &spoofed), "127.0.0.2:7");
        assert_eq!(
            client(&TrustedProxies::new(), "127.0.0.1:7", &spoofed),
            "127.0.0.1:7"
        );
    }
}
