//! A TLS listener's rustls config. The certificate is chosen by SNI from each certificate's
//! subjectAltName DNS names (an exact name first, then a `*.` wildcard); the first
//! certificate is the default for a ClientHello without SNI or with a name none covers.
//! TLS 1.2 and 1.3, ALPN `http/1.1`, and resumption both by session ID cache and by
//! tickets.

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use super::certs::{name_matches, LoadedCert};
use super::{provider, TlsSetupError, HTTP_1_1};

/// Sessions remembered for resumption by session ID (TLS 1.2 clients without tickets);
/// about 100 bytes each.
const SESSION_CACHE: usize = 4096;

/// Picks a certificate by SNI.
#[derive(Debug)]
struct BySni {
    /// `(names, key)` in config order; the first is the default.
    certs: Vec<(Vec<String>, Arc<CertifiedKey>)>,
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let default = self.certs.first().map(|(_, key)| Arc::clone(key));
        let Some(sni) = hello.server_name() else {
            return default;
        };
        let sni = sni.trim_end_matches('.').to_ascii_lowercase();
        let exact = self
            .certs
            .iter()
            .find(|(names, _)| names.iter().any(|n| !n.starts_with("*.") && *n == sni));
        let wildcard = || {
            self.certs
                .iter()
                .find(|(names, _)| names.iter().any(|n| name_matches(n, &sni)))
        };
        exact
            .or_else(wildcard)
            .map(|(_, key)| Arc::clone(key))
            .or(default)
    }
}

/// The rustls config for a listener serving `certs` (at least one).
///
/// # Errors
/// rustls refused the setup (no usable protocol version or ticketer).
pub fn config(certs: &[LoadedCert]) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let resolver = BySni {
        certs: certs
            .iter()
            .map(|c| (c.names.clone(), Arc::clone(&c.key)))
            .collect(),
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![HTTP_1_1.to_vec()];
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(Arc::new(config))
}
