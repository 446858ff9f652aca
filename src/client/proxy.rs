//! HTTP `CONNECT` proxies (RFC 9110 §9.3.6) for `ws://` and `wss://`: the
//! client asks the proxy for a tunnel to the server, then speaks TLS and
//! WebSocket through it as if it had dialled the server itself.
//!
//! Which proxy: [`Proxy::Url`] (`--proxy URL`) for every connection, else
//! (by default) the environment as curl reads it: `https_proxy` (or
//! `HTTPS_PROXY`) for `wss://`, `http_proxy` for `ws://` — lowercase only,
//! since a CGI program gets `HTTP_PROXY` from a request's `Proxy:` header —
//! and `no_proxy` (or `NO_PROXY`): hosts, domains (`example.com` also
//! matches its subdomains) and IP addresses to reach directly, comma
//! separated, `*` for all.

use futures_lite::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::url::Target;
use crate::http::handshake::base64;
use crate::http::{percent_decode, read_response_head, HeadError};
use crate::Error;

/// The port of a proxy URL that names none (the `http` scheme's).
const PROXY_DEFAULT_PORT: &str = "80";

/// Largest answer head read from a proxy: they send a few hundred bytes.
const MAX_PROXY_HEAD_SIZE: usize = 8 * 1024;

/// Which proxy the client goes through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Proxy {
    /// As the environment says (`https_proxy`, `http_proxy`, `no_proxy`);
    /// directly when it says nothing. The default.
    #[default]
    Environment,
    /// Always directly, whatever the environment says.
    Direct,
    /// Always through this proxy: `http://[USER:PASSWORD@]HOST[:PORT]`
    /// (port 80 by default); the credentials go as `Proxy-Authorization:
    /// Basic`.
    Url(String),
}

/// A proxy to tunnel through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProxyServer {
    /// `host:port` to dial.
    pub authority: String,
    /// `Proxy-Authorization` value, when the URL had credentials.
    authorization: Option<String>,
}

impl Proxy {
    /// The proxy for `target`, if any.
    pub(crate) fn for_target(&self, target: &Target) -> Result<Option<ProxyServer>, Error> {
        match self {
            Proxy::Direct => Ok(None),
            Proxy::Url(url) => ProxyServer::parse(url).map(Some),
            Proxy::Environment => {
                let no_proxy = env(&["no_proxy", "NO_PROXY"]);
                if no_proxy.is_some_and(|list| bypassed(&list, &target.host)) {
                    return Ok(None);
                }
                let names: &[&str] = if target.tls {
                    &["https_proxy", "HTTPS_PROXY"]
                } else {
                    &["http_proxy"]
                };
                env(names).map(|url| ProxyServer::parse(&url)).transpose()
            }
        }
    }
}

/// The first of `names` set to something in the environment.
fn env(names: &[&str]) -> Option<String> {
    names
        .iter()
        .filter_map(|name| std::env::var(name).ok())
        .find(|value| !value.trim().is_empty())
}

/// Whether `no_proxy` says to reach `host` directly.
fn bypassed(no_proxy: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    no_proxy.split(',').any(|entry| {
        let entry = entry.trim().to_ascii_lowercase();
        // `.example.com` and `example.com` both cover the domain and its
        // subdomains (as curl reads them); `[::1]` is the address `::1`.
        let entry = entry.trim_start_matches('.').trim_start_matches('[');
        let entry = entry.trim_end_matches(']').trim_end_matches('.');
        entry == "*"
            || (!entry.is_empty() && (host == entry || host.ends_with(&format!(".{entry}"))))
    })
}

impl ProxyServer {
    /// Parses `http://[USER:PASSWORD@]HOST[:PORT]` (a bare `HOST:PORT` too).
    fn parse(url: &str) -> Result<ProxyServer, Error> {
        // The URL may carry a password: say what is wrong without it.
        let bad = |why: &str| Error::Config(format!("proxy URL: {why}"));
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some(_) => return Err(bad("only http:// proxies are supported")),
            None => url,
        };
        let rest = rest.trim_end_matches('/');
        let (credentials, host_port) = match rest.rsplit_once('@') {
            Some((credentials, host_port)) => (Some(credentials), host_port),
            None => (None, rest),
        };
        if host_port.is_empty() || host_port.contains(['/', '?', '#']) {
            return Err(bad("expected http://[USER:PASSWORD@]HOST[:PORT]"));
        }
        let has_port = match host_port.rsplit_once(':') {
            Some((_, port)) => !port.contains(']'),
            None => false,
        };
        // The proxy's own address checks as a HOST:PORT address would
        // (in every build: no need for the `urls` feature).
        let with_port = if has_port {
            host_port.to_string()
        } else {
            format!("{host_port}:{PROXY_DEFAULT_PORT}")
        };
        let target = Target::parse(&with_port)
            .map_err(|_| bad("expected http://[USER:PASSWORD@]HOST[:PORT]"))?;
        let authorization = credentials
            .map(|credentials| {
                let decoded = percent_decode(credentials)
                    .ok_or_else(|| bad("bad percent-encoding in the credentials"))?;
                Ok::<_, Error>(format!("Basic {}", base64(&decoded)))
            })
            .transpose()?;
        Ok(ProxyServer {
            authority: target.authority(),
            authorization,
        })
    }

    /// Asks the proxy, at the other end of `stream`, for a tunnel to
    /// `target`. On success the stream is the tunnel.
    pub(crate) async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        target: &Target,
    ) -> Result<(), Error> {
        let authority = target.authority();
        let mut request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
        if let Some(authorization) = &self.authorization {
            request.push_str(&format!("Proxy-Authorization: {authorization}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await?;
        stream.flush().await?;
        let (response, leftover) = match read_response_head(stream, MAX_PROXY_HEAD_SIZE).await {
            Ok(read) => read,
            Err(HeadError::Io(err)) => return Err(Error::Io(err)),
            Err(err) => return Err(Error::Handshake(format!("proxy {}: {err}", self.authority))),
        };
        if !(200..300).contains(&response.status) {
            return Err(Error::Refused {
                status: response.status,
                reason: format!(
                    "the proxy {} answered {} {} to CONNECT {authority}",
                    self.authority, response.status, response.reason
                ),
            });
        }
        // The server has not been spoken to yet, so nothing of it can have
        // come; bytes here would be the proxy's, in the tunnel's way.
        if !leftover.is_empty() {
            return Err(Error::Handshake(format!(
                "proxy {} sent data after its 2xx to CONNECT",
                self.authority
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls_parse_with_credentials_and_default_port() {
        let p = ProxyServer::parse("http://127.0.0.1:3128").expect("parses");
        assert_eq!(p.authority, "127.0.0.1:3128");
        assert_eq!(p.authorization, None);
        let p = ProxyServer::parse("http://user:pa%40ss@proxy.lan/").expect("parses");
        assert_eq!(p.authority, "proxy.lan:80");
        // base64("user:pa@ss")
        assert_eq!(p.authorization.as_deref(), Some("Basic dXNlcjpwYUBzcw=="));
        let p = ProxyServer::parse("[::1]:8080").expect("parses");
        assert_eq!(p.authority, "[::1]:8080");
        assert_eq!(
            ProxyServer::parse("http://[::1]").expect("v6").authority,
            "[::1]:80"
        );
        for bad in [
            "https://p:1",
            "socks5://p:1",
            "http://",
            "http://p:1/path",
            "http://p:x",
        ] {
            assert!(ProxyServer::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn no_proxy_matches_hosts_domains_and_addresses() {
        let list = "localhost, .internal.lan,example.com,10.0.0.1,[::1]";
        for host in [
            "localhost",
            "a.internal.lan",
            "example.com",
            "www.example.com",
            "10.0.0.1",
            "::1",
            "EXAMPLE.COM.",
        ] {
            assert!(bypassed(list, host), "{host}");
        }
        for host in [
            "notexample.com",
            "internal.lan.evil",
            "10.0.0.10",
            "127.0.0.1",
        ] {
            assert!(!bypassed(list, host), "{host}");
        }
        assert!(bypassed("*", "anything"));
        assert!(!bypassed("", "anything"));
        assert!(!bypassed(" , ", "anything"));
    }
}
