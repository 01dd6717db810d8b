//! Certificates for TLS listeners: a PEM chain and its private key (PKCS#8, PKCS#1 RSA or
//! SEC1 EC) read into the key rustls signs with, together with the DNS names the
//! certificate covers (for SNI) and when it expires (for `sluice check`'s warning).
//!
//! Read at validation, so `sluice check` reports every bad file at its place in the config,
//! and read again on every reload, which is how renewed certificates are picked up.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate ready to serve.
#[derive(Clone)]
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    /// The subjectAltName DNS names, lower-cased (`*.example.com` kept as written).
    pub names: Vec<String>,
    /// The end of the leaf certificate's validity.
    pub not_after: SystemTime,
}

impl std::fmt::Debug for LoadedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedCert")
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Why a certificate could not be loaded. Each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} holds no PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{} is not a certificate sluice can use: {reason}", path.display())]
    BadCertificate { path: PathBuf, reason: String },
    #[error("{} holds no PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC)", path.display())]
    NoKey { path: PathBuf },
    #[error("{} is not a private key sluice can use: {reason}", path.display())]
    BadKey { path: PathBuf, reason: String },
    #[error("the key in {} does not match the certificate in {}", key.display(), cert.display())]
    Mismatch { cert: PathBuf, key: PathBuf },
}

impl CertError {
    /// The file at fault; for a mismatch, the key.
    pub fn path(&self) -> &Path {
        match self {
            CertError::Read { path, .. }
            | CertError::NoCertificate { path }
            | CertError::BadCertificate { path, .. }
            | CertError::NoKey { path }
            | CertError::BadKey { path, .. } => path,
            CertError::Mismatch { key, .. } => key,
        }
    }
}

/// Reads `cert` (a PEM chain, leaf first) and `key`, and checks that they belong together.
///
/// # Errors
/// A file is missing or unreadable, holds no certificate or key, or the key does not match.
pub fn load(cert: &Path, key: &Path) -> Result<LoadedCert, CertError> {
    let read = |path: &Path| {
        super::read_pem_file(path).map_err(|source| CertError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|err| CertError::BadCertificate {
            path: cert.to_path_buf(),
            reason: err.to_string(),
        })?;
    let Some(leaf) = chain.first() else {
        return Err(CertError::NoCertificate {
            path: cert.to_path_buf(),
        });
    };
    let (names, not_after) = leaf_facts(leaf).map_err(|reason| CertError::BadCertificate {
        path: cert.to_path_buf(),
        reason,
    })?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|err| match err {
        rustls_pki_types::pem::Error::NoItemsFound => CertError::NoKey {
            path: key.to_path_buf(),
        },
        other => CertError::BadKey {
            path: key.to_path_buf(),
            reason: other.to_string(),
        },
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(chain, private, &provider).map_err(|err| match err {
        rustls::Error::InconsistentKeys(_) => CertError::Mismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        },
        other => CertError::BadKey {
            path: key.to_path_buf(),
            reason: other.to_string(),
        },
    })?;
    Ok(LoadedCert {
        key: Arc::new(certified),
        names,
        not_after,
    })
}

/// The leaf's DNS names and the end of its validity.
fn leaf_facts(leaf: &CertificateDer<'_>) -> Result<(Vec<String>, SystemTime), String> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    let secs = parsed.validity().not_after.timestamp();
    let not_after = match u64::try_from(secs) {
        Ok(secs) => UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => UNIX_EPOCH,
    };
    Ok((names, not_after))
}

/// Whether `name` (an SNI host name, lower-cased) is covered by the certificate name
/// `pattern`: equal, or a `*.` wildcard standing for exactly one leftmost label.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern == name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(name_matches("example.com", "example.com"));
        assert!(!name_matches("example.com", "a.example.com"));
        assert!(name_matches("*.example.com", "a.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", ".example.com"));
    }
}
