//! The client's TLS for `wss://`: server certificates verified against the
//! system's trust store (rustls-native-certs: `/etc/ssl/certs` on Debian,
//! or `SSL_CERT_FILE`/`SSL_CERT_DIR`) plus an optional private CA file,
//! with SNI and host-name verification always. There is no way to turn
//! verification off: a private CA is what `--ca` is for.

use std::io;
use std::path::Path;
use std::sync::Arc;

use futures_rustls::client::TlsStream;
use futures_rustls::pki_types::pem::PemObject;
use futures_rustls::pki_types::{CertificateDer, ServerName};
use futures_rustls::rustls::{self, ClientConfig, RootCertStore};
use futures_rustls::TlsConnector;

use crate::tcp::Tcp;
use crate::Error;

/// A client TLS stream over TCP.
pub type ClientTls = TlsStream<Tcp>;

/// What verifies servers: built once per client, used for every dial.
#[derive(Clone)]
pub struct Connector(TlsConnector);

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connector")
    }
}

impl Connector {
    /// Trusts the system's roots and, when given, every certificate in the
    /// PEM file `ca`.
    pub fn new(ca: Option<&Path>) -> Result<Connector, Error> {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for error in &native.errors {
            debug!("system trust store: {error}");
        }
        // A malformed system certificate is skipped, not fatal: the
        // others still verify servers.
        let (added, skipped) = roots.add_parsable_certificates(native.certs);
        debug!("trusting {added} system certificates ({skipped} unusable)");
        if let Some(ca) = ca {
            let bad = |why: String| Error::Config(format!("--ca {}: {why}", ca.display()));
            let certs = CertificateDer::pem_file_iter(ca)
                .map_err(|e| bad(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(e.to_string()))?;
            if certs.is_empty() {
                return Err(bad("no PEM certificate in the file".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| bad(e.to_string()))?;
            }
        }
        if roots.is_empty() {
            return Err(Error::Config(
                "no trusted certificates: the system's store is empty; give --ca FILE".into(),
            ));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Connector(TlsConnector::from(Arc::new(config))))
    }

    /// The TLS handshake with `host` (its name goes in SNI and must be in
    /// the certificate) over `tcp`.
    pub async fn connect(&self, host: &str, tcp: Tcp) -> Result<ClientTls, Error> {
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| Error::Config(format!("{host:?} is not a TLS server name")))?;
        self.0.connect(name, tcp).await.map_err(tls_error)
    }
}

/// A rustls verdict (a certificate that fails verification, an alert from
/// the server) as [`Error::Tls`]; socket errors stay [`Error::Io`].
fn tls_error(err: io::Error) -> Error {
    match err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls_error) => Error::Tls(rustls_error.to_string()),
        None => Error::Io(err),
    }
}
