//! Connections to TLS upstreams (`tls = true` or `{ ca, server_name }`): verified against
//! the system's trust store (read by `rustls-native-certs`) or the given CA bundle, with
//! `server_name`, or else the server's host, sent as SNI and verified. Sessions are
//! resumed (rustls keeps a small cache per config).

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{provider, TlsSetupError, HTTP_1_1};
use crate::config::UpstreamTlsConfig;

/// How one pool talks TLS to its servers.
#[derive(Clone)]
pub struct UpstreamTls {
    connector: TlsConnector,
    /// `server_name` from the config; `None`: each server's own host.
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl UpstreamTls {
    /// Builds the client config for a pool.
    ///
    /// # Errors
    /// The CA file cannot be read or holds no certificate, the system has no roots, or
    /// rustls refused the setup.
    pub fn new(cfg: &UpstreamTlsConfig) -> Result<UpstreamTls, TlsSetupError> {
        let roots = match &cfg.ca {
            Some(path) => roots_from_file(path)?,
            None => system_roots()?,
        };
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![HTTP_1_1.to_vec()];
        let server_name = match &cfg.server_name {
            Some(name) => Some(
                ServerName::try_from(name.clone())
                    .map_err(|e| TlsSetupError::Rustls(rustls::Error::General(e.to_string())))?,
            ),
            None => None,
        };
        Ok(UpstreamTls {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// The name to send as SNI and verify for a server written as `host`.
    pub fn name_for(&self, host: &str) -> Option<ServerName<'static>> {
        if let Some(name) = &self.server_name {
            return Some(name.clone());
        }
        match host.parse::<IpAddr>() {
            Ok(ip) => Some(ServerName::IpAddress(ip.into())),
            Err(_) => ServerName::try_from(host.to_owned()).ok(),
        }
    }

    /// Runs the TLS handshake on a connected socket.
    ///
    /// # Errors
    /// The handshake failed: most often, the certificate did not verify.
    pub async fn connect(
        &self,
        name: ServerName<'static>,
        tcp: TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        self.connector.connect(name, tcp).await
    }
}

/// Every certificate in a PEM bundle, as trust anchors.
pub fn roots_from_file(path: &Path) -> Result<RootCertStore, TlsSetupError> {
    let pem = super::read_pem_file(path).map_err(|source| TlsSetupError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(TlsSetupError::NoCa {
            path: path.to_path_buf(),
        });
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, TlsSetupError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found.errors.first().map_or_else(
            || "the trust store is empty".to_owned(),
            ToString::to_string,
        );
        return Err(TlsSetupError::NoSystemRoots(why));
    }
    Ok(roots)
}
