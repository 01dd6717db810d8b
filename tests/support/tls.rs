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
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::{accept_for, full, text, TestBody};

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

/// A TLS backend serving HTTP/1.1 (and WebSocket echo on `Upgrade`) with `leaf`. It counts
/// TLS handshakes that completed and HTTP requests it received.
pub struct TlsBackend {
    pub addr: SocketAddr,
    pub handshakes: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
    /// Milliseconds to wait after accepting a connection before the TLS handshake, so a
    /// connect to this backend is slow.
    pub handshake_delay_ms: Arc<std::sync::atomic::AtomicU64>,
}

pub async fn tls_backend(leaf: &Leaf) -> TlsBackend {
    let certs: Vec<CertificateDer<'static>> = vec![leaf.der.clone()];
    let key: rustls::pki_types::PrivateKeyDer<'static> =
        rustls::pki_types::pem::PemObject::from_pem_slice(leaf.key_pem.as_bytes())
            .expect("key pem");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("backend certificate");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handshakes = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let delay = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let backend = TlsBackend {
        addr,
        handshakes: Arc::clone(&handshakes),
        requests: Arc::clone(&requests),
        connections: Arc::clone(&connections),
        handshake_delay_ms: Arc::clone(&delay),
    };
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            connections.fetch_add(1, Ordering::SeqCst);
            let (acceptor, handshakes, requests) = (
                acceptor.clone(),
                Arc::clone(&handshakes),
                Arc::clone(&requests),
            );
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                handshakes.fetch_add(1, Ordering::SeqCst);
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        requests.fetch_add(1, Ordering::SeqCst);
                        async move { Ok::<_, std::convert::Infallible>(answer(req).await) }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    backend
}

/// `200 tls backend`, or a WebSocket echo for a handshake.
pub async fn answer(mut req: http::Request<hyper::body::Incoming>) -> http::Response<TestBody> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return text(200, "tls backend");
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else {
            return;
        };
        let io = hyper_util::rt::TokioIo::new(upgraded);
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            io,
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        while let Some(Ok(message)) = ws.next().await {
            if message.is_text() && ws.send(message).await.is_err() {
                return;
            }
        }
    });
    http::Response::builder()
        .status(101)
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header(
            "sec-websocket-accept",
            accept_for(key.to_str().unwrap_or_default()),
        )
        .body(full(""))
        .expect("101")
}
