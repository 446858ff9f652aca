//! Test certificates, made by the tests themselves (rcgen): a CA, and leaf
//! certificates for `localhost` and `127.0.0.1` that it signs, written as
//! PEM files into a fresh temporary directory. Peers trust `ca.pem`.
#![allow(dead_code)]

use std::fs;
use std::path::PathBuf;

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
};

use super::fs::TempDir;

/// A test CA and the directory its files live in (a [`TempDir`]: removed
/// on drop, kept when the test fails).
pub struct TestPki {
    pub dir: TempDir,
    /// The CA certificate, for the clients to trust.
    pub ca: PathBuf,
    /// A valid leaf certificate and its key (PKCS#8), named `leaf`.
    pub cert: PathBuf,
    pub key: PathBuf,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// How a leaf certificate should be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// Valid from 2000 to 4000.
    Current,
    /// Expired at the start of 2001.
    Expired,
}

impl TestPki {
    /// A new CA in a new directory, with one valid leaf whose common name
    /// is `leaf`.
    pub fn new(name: &str) -> TestPki {
        let dir = TempDir::new(name);
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "wsloop test CA");
        let key = KeyPair::generate().expect("CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        let ca = dir.join("ca.pem");
        fs::write(&ca, issuer.pem()).expect("write ca.pem");
        let pki = TestPki {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            dir,
            ca,
            issuer,
        };
        let (cert, key) = pki.leaf_pem("leaf", Validity::Current);
        fs::write(&pki.cert, cert).expect("write cert.pem");
        fs::write(&pki.key, key).expect("write key.pem");
        pki
    }

    /// A leaf for `localhost` and `127.0.0.1` with common name `name`,
    /// signed by this CA: its certificate and key as PEM.
    pub fn leaf_pem(&self, name: &str, validity: Validity) -> (String, String) {
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, name);
        match validity {
            Validity::Current => {
                params.not_before = date_time_ymd(2000, 1, 1);
                params.not_after = date_time_ymd(4000, 1, 1);
            }
            Validity::Expired => {
                params.not_before = date_time_ymd(2000, 1, 1);
                params.not_after = date_time_ymd(2001, 1, 1);
            }
        }
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a leaf as `FILE.crt.pem` and `FILE.key.pem` in the directory.
    pub fn write_leaf(&self, file: &str, name: &str, validity: Validity) -> (PathBuf, PathBuf) {
        let (cert, key) = self.leaf_pem(name, validity);
        let paths = (
            self.path(&format!("{file}.crt.pem")),
            self.path(&format!("{file}.key.pem")),
        );
        fs::write(&paths.0, cert).expect("write a leaf certificate");
        fs::write(&paths.1, key).expect("write a leaf key");
        paths
    }

    /// A path in the directory.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}
