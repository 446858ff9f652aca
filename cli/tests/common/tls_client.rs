//! Test certificates for the client's TLS tests, made by the tests
//! themselves (rcgen): a CA, and a leaf it signed for the given names,
//! written as PEM files into a directory of the test's own. (The server's
//! TLS tests have `tests/common/tls.rs`; the two may be folded together.)

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// The PEM files of one test CA and its leaf.
pub struct TestCerts {
    /// The CA certificate (what `--ca` trusts).
    pub ca: PathBuf,
    /// The leaf certificate, for the server.
    pub cert: PathBuf,
    /// The leaf's private key.
    pub key: PathBuf,
}

/// A fresh CA and a leaf for `names` (DNS names or IP addresses) in `dir`.
pub fn make_certs(dir: &Path, names: &[&str]) -> TestCerts {
    fs::create_dir_all(dir).expect("create the certificate dir");
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "wsloop test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign the CA");
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate().expect("leaf key");
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let leaf_params = CertificateParams::new(names).expect("leaf params");
    let leaf = leaf_params
        .signed_by(&leaf_key, &issuer)
        .expect("sign the leaf");

    let certs = TestCerts {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    fs::write(&certs.ca, ca_cert.pem()).expect("write ca.pem");
    fs::write(&certs.cert, leaf.pem()).expect("write cert.pem");
    fs::write(&certs.key, leaf_key.serialize_pem()).expect("write key.pem");
    certs
}
