//! One dial, layer by layer: TCP (to the server, or to its proxy), the
//! proxy's `CONNECT` tunnel, TLS for `wss://`, then wsloop's own WebSocket
//! handshake. What does not change between dials (the parsed address, the
//! proxy, the trusted certificates, the headers) is worked out once, in
//! [`Dialer::new`].

use std::net::{SocketAddr, TcpStream};

use async_io::Async;

#[cfg(feature = "proxy")]
use super::proxy::ProxyServer;
use super::url::Target;
use super::{ClientOptions, ClientStream};
use crate::http::handshake;
use crate::tcp::Tcp;
use crate::time::timeout;
#[cfg(feature = "tls")]
use crate::tls::client::Connector;
use crate::{Config, Error};

/// Everything a dial needs, prepared once per client.
#[derive(Debug, Clone)]
pub(crate) struct Dialer {
    pub target: Target,
    #[cfg(feature = "proxy")]
    proxy: Option<ProxyServer>,
    #[cfg(feature = "tls")]
    tls: Option<Connector>,
    /// `Origin`, `Authorization` and the caller's own headers.
    headers: Vec<(String, String)>,
    pub config: Config,
}

impl Dialer {
    /// Prepares dials to `options.address`, asking for `path` instead of
    /// the address's own when given.
    pub fn new(options: &ClientOptions, path: Option<&str>) -> Result<Dialer, Error> {
        let mut target = Target::parse(&options.address)?;
        if let Some(path) = path {
            target.path = path.to_string();
        }
        #[cfg(feature = "client-id")]
        if let Some(id) = &options.id {
            // The server takes the device's name from the query.
            super::check_id(id)?;
            let join = if target.path.contains('?') { '&' } else { '?' };
            target.path = format!("{}{join}client={id}", target.path);
        }
        #[cfg(not(feature = "tls"))]
        if target.tls {
            return Err(Error::Config(
                "wss:// needs the `tls` Cargo feature, which this build leaves out".into(),
            ));
        }
        let headers = handshake_headers(options, &target)?;
        Ok(Dialer {
            #[cfg(feature = "proxy")]
            proxy: options.proxy.for_target(&target)?,
            #[cfg(feature = "tls")]
            tls: match target.tls {
                true => Some(Connector::new(options.ca.as_deref())?),
                false => None,
            },
            target,
            headers,
            config: options.config.clone(),
        })
    }

    /// Dials once, within the handshake timeout: returns the stream, the
    /// bytes read past the server's 101 and the address actually dialled
    /// (the proxy's, through one).
    pub async fn dial(&self) -> Result<(ClientStream, Vec<u8>, SocketAddr), Error> {
        let attempt = async {
            let (addr, tcp) = self.tcp().await?;
            let tcp = self.tunnel(tcp).await?;
            let mut stream = self.secure(tcp).await?;
            let headers: Vec<(&str, &str)> = self
                .headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str()))
                .collect();
            let target = &self.target;
            let leftover =
                handshake::client(&mut stream, &target.host_header, &target.path, &headers).await?;
            Ok::<_, Error>((stream, leftover, addr))
        };
        timeout(self.config.handshake_timeout, attempt)
            .await
            .unwrap_or(Err(Error::Timeout("connecting to the server")))
    }

    /// TCP to the server, or to the proxy when there is one. Each address
    /// the name resolves to is tried in turn: `localhost` may give `::1`
    /// first to a server that listens on 127.0.0.1 only.
    async fn tcp(&self) -> Result<(SocketAddr, Tcp), Error> {
        #[cfg(feature = "proxy")]
        let via = match &self.proxy {
            Some(proxy) => proxy.authority.clone(),
            None => self.target.authority(),
        };
        #[cfg(not(feature = "proxy"))]
        let via = self.target.authority();
        let mut last = None;
        for addr in crate::resolve::resolve(via.as_str()).await? {
            match Async::<TcpStream>::connect(addr).await {
                Ok(stream) => return Ok((addr, Tcp::new(stream)?)),
                Err(err) => last = Some(err),
            }
        }
        Err(match last {
            Some(err) => Error::Io(err),
            None => Error::Config(format!("address {via:?} resolves to nothing")),
        })
    }

    /// Through a proxy: asks it, over `tcp`, for a tunnel to the server.
    async fn tunnel(&self, tcp: Tcp) -> Result<Tcp, Error> {
        #[cfg(feature = "proxy")]
        if let Some(proxy) = &self.proxy {
            let mut tcp = tcp;
            proxy.connect(&mut tcp, &self.target).await?;
            return Ok(tcp);
        }
        Ok(tcp)
    }

    /// TLS over `tcp` for `wss://`; `tcp` itself for `ws://`.
    #[cfg(feature = "tls")]
    async fn secure(&self, tcp: Tcp) -> Result<ClientStream, Error> {
        if let Some(tls) = &self.tls {
            let stream = tls.connect(&self.target.host, tcp).await?;
            return Ok(ClientStream::Tls(Box::new(stream)));
        }
        Ok(ClientStream::Plain(tcp))
    }

    /// `tcp` itself: this build has no TLS (`wss://` was refused in
    /// [`Dialer::new`]).
    #[cfg(not(feature = "tls"))]
    async fn secure(&self, tcp: Tcp) -> Result<ClientStream, Error> {
        Ok(tcp)
    }
}

/// The handshake's extra headers: `Origin` (the Go client's, unless the
/// caller gives one), `Authorization: Bearer` for the token, then the
/// caller's headers (feature `headers`).
fn handshake_headers(
    options: &ClientOptions,
    target: &Target,
) -> Result<Vec<(String, String)>, Error> {
    #[cfg(feature = "headers")]
    let given = |name: &str| {
        options
            .headers
            .iter()
            .any(|(given, _)| given.eq_ignore_ascii_case(name))
    };
    // Without the caller's headers, none is given.
    #[cfg(not(feature = "headers"))]
    let given = |_: &str| false;
    let mut headers = Vec::new();
    // The server's origin check compares Origin with Host.
    if !given("Origin") {
        headers.push(("Origin".to_string(), target.origin()));
    }
    if let Some(token) = &options.token {
        if given("Authorization") {
            return Err(Error::Config(
                "both a token and an Authorization header; give one".into(),
            ));
        }
        headers.push(("Authorization".to_string(), format!("Bearer {token}")));
    }
    #[cfg(feature = "headers")]
    for (name, value) in &options.headers {
        super::check_header(name, value)?;
        headers.push((name.clone(), value.clone()));
    }
    Ok(headers)
}
