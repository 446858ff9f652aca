//! Where the client dials: the `--address` (or [`ClientOptions::address`])
//! as `HOST:PORT` (the original program's form, path `/server`) or as a
//! `ws://` / `wss://` URL (RFC 6455 §3; feature `urls`: without it a URL
//! is refused with a one-line error naming the feature).
//!
//! [`ClientOptions::address`]: super::ClientOptions::address

use std::net::Ipv6Addr;

use crate::server::WEBSOCKET_PATH;
use crate::Error;

/// The port of a `ws://` URL that names none.
#[cfg(feature = "urls")]
const WS_DEFAULT_PORT: u16 = 80;

/// The port of a `wss://` URL that names none.
#[cfg(feature = "urls")]
const WSS_DEFAULT_PORT: u16 = 443;

/// A parsed address: what to dial, how, and what to ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `wss://`: TLS before the WebSocket handshake.
    pub tls: bool,
    /// The host name or IP address, IPv6 without its brackets.
    pub host: String,
    /// The TCP port (the scheme's default when the URL names none).
    pub port: u16,
    /// The request target: path and query, starting with `/`.
    pub path: String,
    /// The `Host` header: the host, and the port when one was written.
    pub host_header: String,
}

impl Target {
    /// Parses `HOST:PORT` (path `/server`), `ws://HOST[:PORT][/PATH][?QUERY]`
    /// or `wss://...`. A URL without a path asks for `/server`, wsloop's
    /// endpoint; IPv6 literals go in brackets (`ws://[::1]:8080`).
    ///
    /// URLs need the `urls` feature; without it only `HOST:PORT` parses
    /// (`[::1]:8080` for IPv6), and a URL is refused with an error that
    /// names the feature.
    pub fn parse(address: &str) -> Result<Target, Error> {
        let bad = |why: &str| Error::Config(format!("address {address:?}: {why}"));
        #[cfg(not(feature = "urls"))]
        if address.contains("://") {
            return Err(bad(
                "a ws:// or wss:// URL needs the `urls` Cargo feature, \
                 which this build leaves out; give HOST:PORT",
            ));
        }
        #[cfg(not(feature = "urls"))]
        return Self::host_port(address).map_err(|why| bad(&why));
        #[cfg(feature = "urls")]
        Self::from_url(address).map_err(|why| bad(&why))
    }

    /// A `ws://` or `wss://` URL, or `HOST:PORT` (feature `urls`).
    #[cfg(feature = "urls")]
    fn from_url(address: &str) -> Result<Target, String> {
        let (tls, rest) = match address.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("ws") => (false, rest),
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("wss") => (true, rest),
            Some((scheme, _)) => return Err(format!("scheme {scheme:?} is not ws or wss")),
            None => return Self::host_port(address),
        };
        // RFC 6455 §3: a WebSocket URI has no fragment.
        if rest.contains('#') {
            return Err("a WebSocket URL has no #fragment".into());
        }
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(split);
        if authority.contains('@') {
            return Err("credentials in the URL are not sent; use --header or --token-file".into());
        }
        let default_port = if tls {
            WSS_DEFAULT_PORT
        } else {
            WS_DEFAULT_PORT
        };
        let (host, port) = split_host_port(authority)?;
        let port = match port {
            Some(port) => parse_port(port)?,
            None => default_port,
        };
        let path = match target {
            "" => WEBSOCKET_PATH.to_string(),
            query if query.starts_with('?') => format!("{WEBSOCKET_PATH}{query}"),
            path => path.to_string(),
        };
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("the path has spaces or control characters".into());
        }
        Ok(Target {
            tls,
            host: host.to_string(),
            port,
            path,
            host_header: authority.to_string(),
        })
    }

    /// `HOST:PORT`, as the original program takes it.
    fn host_port(address: &str) -> Result<Target, String> {
        let (host, port) = split_host_port(address)?;
        let Some(port) = port else {
            #[cfg(feature = "urls")]
            return Err("expected HOST:PORT, ws://HOST[:PORT][/PATH] or wss://...".into());
            #[cfg(not(feature = "urls"))]
            return Err("expected HOST:PORT".into());
        };
        Ok(Target {
            tls: false,
            host: host.to_string(),
            port: parse_port(port)?,
            path: WEBSOCKET_PATH.to_string(),
            host_header: address.to_string(),
        })
    }

    /// `host:port` for dialing and for a proxy's `CONNECT`, IPv6 in brackets.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The `Origin` the client sends (the Go client's `http://HOST:PORT/`;
    /// `https://` over TLS), which a same-origin check compares to `Host`.
    pub fn origin(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/", self.host_header)
    }

    /// The URL as logged: `ws://HOST:PORT/PATH` or `wss://...`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}{}", self.host_header, self.path)
    }
}

/// Splits `host[:port]` or `[v6][:port]`, checking the host's characters.
fn split_host_port(authority: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or("an IPv6 address lacks its closing ]")?;
        v6.parse::<Ipv6Addr>()
            .map_err(|_| format!("{v6:?} is not an IPv6 address"))?;
        return match after {
            "" => Ok((v6, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((v6, Some(port))),
                None => Err(format!("unexpected {after:?} after the IPv6 address")),
            },
        };
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    // A registered name or IPv4 address (RFC 3986 §3.2.2, without the
    // percent-encoding no DNS name needs). A bare IPv6 address ends up here
    // with colons in `host`: it needs brackets.
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
    if host.is_empty() || !host.chars().all(valid) {
        return Err(format!(
            "{host:?} is not a host name or address (IPv6 goes in brackets)"
        ));
    }
    Ok((host, port))
}

/// A TCP port to dial: 1 to 65535.
fn parse_port(port: &str) -> Result<u16, String> {
    // Digits only: `u16::from_str` would also take a leading `+`.
    let digits = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
    match port.parse::<u16>() {
        Ok(number) if digits && number > 0 => Ok(number),
        _ => Err(format!("{port:?} is not a port (1-65535)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(address: &str) -> Target {
        Target::parse(address).unwrap_or_else(|e| panic!("{address}: {e}"))
    }

    #[test]
    fn host_port_keeps_the_original_form() {
        let t = parse("127.0.0.1:8080");
        assert!(!t.tls);
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("127.0.0.1", 8080, "/server")
        );
        assert_eq!(t.host_header, "127.0.0.1:8080");
        assert_eq!(t.origin(), "http://127.0.0.1:8080/");
        assert_eq!(parse("localhost:9").authority(), "localhost:9");
    }

    #[test]
    #[cfg(feature = "urls")]
    fn urls_take_default_ports_paths_and_queries() {
        for (url, tls, host, port, path, host_header) in [
            (
                "ws://example.com",
                false,
                "example.com",
                80,
                "/server",
                "example.com",
            ),
            (
                "wss://example.com",
                true,
                "example.com",
                443,
                "/server",
                "example.com",
            ),
            ("WSS://h:8443", true, "h", 8443, "/server", "h:8443"),
            ("ws://h:1/", false, "h", 1, "/", "h:1"),
            (
                "ws://127.0.0.1:8080/server?x=1",
                false,
                "127.0.0.1",
                8080,
                "/server?x=1",
                "127.0.0.1:8080",
            ),
            ("wss://h/a/b?c=d&e", true, "h", 443, "/a/b?c=d&e", "h"),
            ("ws://h?token=t", false, "h", 80, "/server?token=t", "h"),
            ("ws://[::1]:8080/x", false, "::1", 8080, "/x", "[::1]:8080"),
            (
                "wss://[2001:db8::1]",
                true,
                "2001:db8::1",
                443,
                "/server",
                "[2001:db8::1]",
            ),
        ] {
            let t = parse(url);
            assert_eq!(t.tls, tls, "{url}");
            assert_eq!(t.host, host, "{url}");
            assert_eq!(t.port, port, "{url}");
            assert_eq!(t.path, path, "{url}");
            assert_eq!(t.host_header, host_header, "{url}");
        }
        assert_eq!(parse("ws://[::1]:8080/x").authority(), "[::1]:8080");
        assert_eq!(parse("wss://[::1]").authority(), "[::1]:443");
        assert_eq!(parse("wss://h:8443/s").origin(), "https://h:8443/");
        assert_eq!(parse("wss://h:8443/s?q").url(), "wss://h:8443/s?q");
    }

    #[test]
    fn bad_addresses_are_refused() {
        for bad in [
            "",
            "host",
            "host:",
            "host:0",
            "host:65536",
            "host:+80",
            "host:http",
            ":8080",
            "::1:8080",
            "http://host:80/",
            "ws://",
            "ws://:80",
            "ws://host:/x",
            "ws://user:pw@host/",
            "ws://host/#frag",
            "ws://host/a b",
            "ws://[::1/",
            "ws://[nope]:80",
            "ws://[::1]x",
            "ws://ho st/",
            "ws://host\r\n:80",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    #[cfg(not(feature = "urls"))]
    fn urls_are_refused_naming_the_feature() {
        for url in ["ws://h:1/x", "wss://h", "WS://[::1]:8080"] {
            let err = Target::parse(url).err().map(|e| e.to_string());
            let err = err.unwrap_or_else(|| panic!("{url} parsed"));
            assert!(err.contains("`urls` Cargo feature"), "{url}: {err}");
        }
        assert_eq!(parse("[::1]:8080").authority(), "[::1]:8080");
    }
}
