//! The server's TLS: `https://` and `wss://` on the server's one port.
//!
//! [`ServerTls`] is what [`Server::with_tls`](crate::Server::with_tls)
//! takes: either PEM files, which are watched (a certificate renewed on disk
//! is used by the next handshake; live connections keep theirs), or a
//! rustls `ServerConfig` of the caller's own.
//!
//! Renewal is noticed by the files' modification time and length, looked at
//! on each TLS handshake: two `stat` calls, small next to the handshake's
//! own public-key work, and no signal handling needed (it works the same in
//! the library and the binary). A renewal that does not load (a half-written
//! file, a key that does not match) is logged once and the old certificate
//! kept until the files change again.
//!
//! ```no_run
//! # use wsloop::{Config, Message, Peer, Server};
//! use wsloop::tls::server::ServerTls;
//!
//! let ex = std::sync::Arc::new(smol::Executor::new());
//! smol::block_on(ex.run(async {
//!     let tls = ServerTls::from_pem_files("cert.pem", "key.pem")?;
//!     let server = Server::bind("0.0.0.0:8443", Config::default()).await?.with_tls(tls);
//!     // https://HOST:8443/ and wss://HOST:8443/server
//!     server.run(&ex, |_: &Peer, m: Message| Some(m.seed_reply()), std::future::pending()).await
//! }))?;
//! # Ok::<(), wsloop::Error>(())
//! ```

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_rustls::rustls::pki_types::pem::PemObject;
use futures_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use futures_rustls::rustls::{self as tls, ServerConfig};

use crate::Error;

/// The rustls crate wsloop's TLS is built on, for callers that build their
/// own [`ServerConfig`] for [`ServerTls::from_config`].
pub use futures_rustls::rustls;

/// A server's TLS settings (see the module docs).
pub struct ServerTls {
    source: Source,
}

enum Source {
    /// A configuration of the caller's own, used as it is.
    Fixed(Arc<ServerConfig>),
    /// PEM files, reloaded when they change on disk.
    Files(Watched),
}

struct Watched {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<Loaded>,
}

struct Loaded {
    /// Of the files as last looked at (loaded or not).
    stamp: Stamp,
    config: Arc<ServerConfig>,
}

/// Modification time and length of the certificate and key files.
type Stamp = Option<[(SystemTime, u64); 2]>;

impl ServerTls {
    /// Loads a certificate chain (`cert`, PEM, leaf first) and its private
    /// key (`key`, PEM: PKCS#8, RSA or SEC1), and watches both for renewal.
    ///
    /// Fails with a one-line [`Error::Config`] when a file is missing or
    /// unreadable, holds no certificate or key, or the key does not match
    /// the certificate. A certificate that has expired (or is not valid yet)
    /// only logs a warning: the operator may be about to renew it.
    pub fn from_pem_files(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self, Error> {
        let (cert, key) = (cert.as_ref().to_path_buf(), key.as_ref().to_path_buf());
        let stamp = stamp(&cert, &key);
        let config = load(&cert, &key)?;
        let state = Mutex::new(Loaded { stamp, config });
        Ok(ServerTls {
            source: Source::Files(Watched { cert, key, state }),
        })
    }

    /// Uses `config` as it is (no reloading). Build it with the `ring`
    /// provider, e.g. `ServerConfig::builder_with_provider(..)`; set
    /// `alpn_protocols` to `http/1.1` if clients ask for ALPN.
    pub fn from_config(config: Arc<ServerConfig>) -> Self {
        ServerTls {
            source: Source::Fixed(config),
        }
    }

    /// The configuration for the next handshake, reloading the files
    /// first if they changed.
    pub(crate) fn config(&self) -> Arc<ServerConfig> {
        match &self.source {
            Source::Fixed(config) => config.clone(),
            Source::Files(watched) => watched.config(),
        }
    }
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            Source::Fixed(_) => f.write_str("ServerTls(custom config)"),
            Source::Files(w) => write!(f, "ServerTls({}, {})", w.cert.display(), w.key.display()),
        }
    }
}

impl Watched {
    fn config(&self) -> Arc<ServerConfig> {
        let now = stamp(&self.cert, &self.key);
        let mut loaded = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if now != loaded.stamp {
            // Looked at once per change, whether it loads or not, so a bad
            // renewal is logged once rather than on every handshake.
            loaded.stamp = now;
            match load(&self.cert, &self.key) {
                Ok(config) => {
                    log::info!("reloaded the TLS certificate from {}", self.cert.display());
                    loaded.config = config;
                }
                Err(err) => log::warn!("{err}; keeping the previous certificate"),
            }
        }
        loaded.config.clone()
    }
}

/// Modification time and length of both files; `None` if either is gone.
fn stamp(cert: &Path, key: &Path) -> Stamp {
    let one = |path: &Path| {
        let meta = fs::metadata(path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    };
    Some([one(cert)?, one(key)?])
}

/// Reads, checks and assembles the files into a configuration.
fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<ServerConfig>, Error> {
    let file_error = |what: &str, path: &Path, err: &dyn std::fmt::Display| {
        Error::Config(format!("TLS {what} {}: {err}", path.display()))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect())
        .map_err(|e| file_error("certificate", cert_path, &pem_error(e)))?;
    let Some(leaf) = certs.first() else {
        return Err(file_error(
            "certificate",
            cert_path,
            &"no CERTIFICATE in it",
        ));
    };
    check_validity(leaf, cert_path);
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| file_error("key", key_path, &pem_error(e)))?;
    let provider = Arc::new(tls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| match e {
            tls::Error::InconsistentKeys(_) => Error::Config(format!(
                "TLS key {} does not match the certificate {}",
                key_path.display(),
                cert_path.display()
            )),
            other => file_error("key", key_path, &other),
        })?;
    // Only HTTP/1.1 is spoken here (WebSocket upgrades need it).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The PEM reader's errors, worded for a file.
fn pem_error(err: tls::pki_types::pem::Error) -> String {
    match err {
        tls::pki_types::pem::Error::Io(io) => io.to_string(),
        tls::pki_types::pem::Error::NoItemsFound => "no PEM item of the right kind in it".into(),
        other => other.to_string(),
    }
}

/// Warns when the leaf certificate is outside its validity period: clients
/// will refuse it, but the server still starts (a renewal may be on its way).
fn check_validity(leaf: &CertificateDer<'_>, path: &Path) {
    let Some((not_before, not_after)) = validity(leaf) else {
        log::warn!("cannot read the validity period of {}", path.display());
        return;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs() as i64;
    if now > not_after.0 {
        log::warn!(
            "TLS certificate {} expired on {}; clients will refuse it",
            path.display(),
            not_after.1
        );
    } else if now < not_before.0 {
        log::warn!(
            "TLS certificate {} is not valid until {}",
            path.display(),
            not_before.1
        );
    }
}

/// A point in time as Unix seconds and as written (`2025-01-31 23:59:59 UTC`).
type Instant = (i64, String);

/// `notBefore` and `notAfter` of a DER certificate (RFC 5280 4.1):
/// Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version
/// OPTIONAL, serialNumber, signature, issuer, validity SEQUENCE { notBefore,
/// notAfter }, ... }, ... }.
fn validity(cert: &[u8]) -> Option<(Instant, Instant)> {
    let (_, cert, _) = der(cert)?;
    let (_, tbs, _) = der(cert)?;
    let (tag, _, mut rest) = der(tbs)?;
    if tag != 0xa0 {
        rest = tbs; // no explicit version: the first field is the serial
    }
    let (_, _, rest) = der(rest)?; // serialNumber
    let (_, _, rest) = der(rest)?; // signature
    let (_, _, rest) = der(rest)?; // issuer
    let (_, validity, _) = der(rest)?;
    let (tag, before, rest) = der(validity)?;
    let not_before = time(tag, before)?;
    let (tag, after, _) = der(rest)?;
    Some((not_before, time(tag, after)?))
}

/// One DER element: its tag, its contents, and what follows it.
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, after) = rest.split_at(count);
        rest = after;
        bytes.iter().fold(0, |len, &b| (len << 8) | usize::from(b))
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// A UTCTime (tag 23, `YYMMDDHHMMSSZ`) or GeneralizedTime (tag 24,
/// `YYYYMMDDHHMMSSZ`), the only forms RFC 5280 allows.
fn time(tag: u8, text: &[u8]) -> Option<Instant> {
    let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        23 if text.len() == 12 => {
            let yy: i64 = text[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        24 if text.len() == 14 => (text[..4].parse().ok()?, &text[4..]),
        _ => return None,
    };
    let field = |i: usize| rest.get(i..i + 2)?.parse::<i64>().ok();
    let (month, day) = (field(0)?, field(2)?);
    let (hour, minute, second) = (field(4)?, field(6)?, field(8)?);
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    let shown = format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02} UTC");
    Some((secs, shown))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_convert_to_unix_seconds() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        let (secs, shown) = time(23, b"250131235959Z").unwrap();
        assert_eq!(secs, 1_738_367_999);
        assert_eq!(shown, "2025-01-31 23:59:59 UTC");
        assert_eq!(time(24, b"19991231000000Z").unwrap().0, 946_598_400);
        assert!(time(23, b"2501312359Z").is_none());
        assert!(time(4, b"250131235959Z").is_none());
    }

    #[test]
    fn der_lengths_are_bounded() {
        assert_eq!(
            der(&[0x30, 0x01, 0xff, 0x00]),
            Some((0x30, &[0xff][..], &[0x00][..]))
        );
        assert_eq!(
            der(&[0x30, 0x82, 0x00, 0x01, 0xaa]),
            Some((0x30, &[0xaa][..], &[][..]))
        );
        assert!(der(&[0x30, 0x05, 0x00]).is_none());
        assert!(der(&[0x30, 0x85, 0, 0, 0, 0, 1]).is_none());
        assert!(validity(b"not a certificate").is_none());
    }
}
