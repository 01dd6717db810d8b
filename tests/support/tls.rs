//! Certificates made in the tests (rcgen) and a TLS client that trusts them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{within, WAIT};

/// A test certificate authority.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate and its key, as PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
    /// SHA-256 of the leaf's SubjectPublicKeyInfo, base64: how Chromium pins a key.
    pub spki_sha256: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("CA key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf for `names` (DNS names or IP addresses), ECDSA P-256.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        self.leaf_with(names, |_| {})
    }

    pub fn leaf_with(&self, names: &[&str], edit: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        edit(&mut params);
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        let spki = ring::digest::digest(
            &ring::digest::SHA256,
            &rcgen::PublicKeyData::subject_public_key_info(&key),
        );
        Leaf {
            cert_pem: format!("{}{}", cert.pem(), self.issuer.pem()),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            spki_sha256: base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                spki.as_ref(),
            ),
        }
    }

    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).expect("CA root");
        roots
    }
}

/// A fresh directory under the test target's temp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

pub fn write(dir: &Path, file: &str, text: &str) -> PathBuf {
    let path = dir.join(file);
    std::fs::write(&path, text).expect("write test file");
    path
}

impl Leaf {
    /// Writes `NAME.pem` and `NAME.key` into `dir`.
    pub fn write(&self, dir: &Path, name: &str) {
        write(dir, &format!("{name}.pem"), &self.cert_pem);
        write(dir, &format!("{name}.key"), &self.key_pem);
    }
}

/// A TLS client that trusts `ca`, asks for `sni` (an IP address sends no SNI), and offers
/// ALPN `http/1.1`.
pub fn connector(ca: &Ca) -> TlsConnector {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(ca.roots())
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

pub type ClientTls = tokio_rustls::client::TlsStream<TcpStream>;

pub async fn tls_connect(addr: SocketAddr, ca: &Ca, sni: &str) -> ClientTls {
    let tcp = within(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect");
    let name = ServerName::try_from(sni.to_owned()).expect("server name");
    within(WAIT, connector(ca).connect(name, tcp))
        .await
        .unwrap_or_else(|e| panic!("TLS handshake with {sni}: {e}"))
}

/// The leaf certificate the server presented.
pub fn presented(tls: &ClientTls) -> CertificateDer<'static> {
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("the server presented a certificate")
        .clone()
        .into_owned()
}
