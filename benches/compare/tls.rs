//! TLS for the TLS scenarios: the test certificate the three proxies serve (made here with
//! rcgen, written into the run's scratch directory) and the load generators' rustls client.
//!
//! One ECDSA P-256 leaf for `localhost` and `127.0.0.1`, signed by a P-256 CA made in the
//! same run. Every proxy serves the leaf alone (no chain: the client trusts the CA
//! directly), so all three send the same bytes and make the same signature per full
//! handshake. The client speaks TLS 1.3 only and offers ALPN `http/1.1`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::ClientConfig;

use crate::Result;

/// The name the clients ask for (SNI) and the certificate covers.
pub const SERVER_NAME: &str = "localhost";

/// The PEM files of one run.
#[derive(Clone, Debug)]
pub struct Files {
    /// The leaf certificate (nginx `ssl_certificate`, sluice `cert`).
    pub cert: PathBuf,
    /// Its private key, PKCS#8 (nginx `ssl_certificate_key`, sluice `key`).
    pub key: PathBuf,
    /// Leaf and key in one file, as HAProxy's `crt` wants them.
    pub combined: PathBuf,
    /// The CA the load generators trust.
    pub ca: PathBuf,
}

/// Makes a CA and a leaf signed by it, both ECDSA P-256, and writes them into `dir`.
pub fn generate(dir: &Path) -> Result<Files> {
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let fail = |what: &str, e: rcgen::Error| format!("test certificate: {what}: {e}");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(|e| fail("CA", e))?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "sluice bench CA");
    let ca_key = KeyPair::generate().map_err(|e| fail("CA key", e))?;
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(|e| fail("CA", e))?;

    let mut params = CertificateParams::new(vec![SERVER_NAME.to_owned(), "127.0.0.1".to_owned()])
        .map_err(|e| fail("leaf", e))?;
    params
        .distinguished_name
        .push(DnType::CommonName, SERVER_NAME);
    // KeyPair::generate is ECDSA P-256 with SHA-256.
    let key = KeyPair::generate().map_err(|e| fail("leaf key", e))?;
    let leaf = params.signed_by(&key, &ca).map_err(|e| fail("leaf", e))?;

    let files = Files {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        combined: dir.join("combined.pem"),
        ca: dir.join("ca.pem"),
    };
    let key_pem = key.serialize_pem();
    for (path, text) in [
        (&files.cert, leaf.pem()),
        (&files.key, key_pem.clone()),
        (&files.combined, format!("{}{key_pem}", leaf.pem())),
        (&files.ca, ca.pem()),
    ] {
        fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(files)
}

/// A TLS 1.3 client trusting the CA in `ca_pem`, offering ALPN `http/1.1`; with
/// `resume`, it keeps its sessions (tickets) in memory and offers them again, otherwise
/// every handshake is a full one.
pub fn client_config(ca_pem: &Path, resume: bool) -> Result<Arc<ClientConfig>> {
    let ca =
        CertificateDer::from_pem_file(ca_pem).map_err(|e| format!("{}: {e}", ca_pem.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(ca)
        .map_err(|e| format!("{}: {e}", ca_pem.display()))?;
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| format!("TLS client: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = if resume {
        Resumption::in_memory_sessions(16)
    } else {
        Resumption::disabled()
    };
    Ok(Arc::new(config))
}

pub fn server_name() -> ServerName<'static> {
    ServerName::try_from(SERVER_NAME).expect("a valid DNS name")
}

/// What was negotiated, for the notes: `TLSv1_3 TLS13_AES_256_GCM_SHA384 X25519`.
pub fn describe(conn: &rustls::ClientConnection) -> String {
    let version = conn
        .protocol_version()
        .map_or("?".to_owned(), |v| format!("{v:?}"));
    let suite = conn
        .negotiated_cipher_suite()
        .map_or("?".to_owned(), |s| format!("{:?}", s.suite()));
    let group = conn
        .negotiated_key_exchange_group()
        .map_or("?".to_owned(), |g| format!("{:?}", g.name()));
    format!("{version}_{suite}_{group}")
}
