//! TLS with rustls and its `ring` provider (`ring` builds with nothing but the toolchain
//! and the machine's C compiler; aws-lc-rs would also want CMake or a prebuilt library).
//!
//! - [`certs`]: PEM certificates and keys for listeners, their names and expiry.
//! - [`server`]: a listener's rustls config: the certificate chosen by SNI, ALPN
//!   `http/1.1`, session resumption.
//! - [`client`]: connections to TLS upstreams, verified against the system's roots or a
//!   given CA, with SNI.

pub mod certs;
pub mod client;
pub mod server;

/// Why a TLS config could not be built (rustls refused a setting, or the trust store
/// could not be read). The running config stays when a reload hits this.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} holds no usable CA certificate", path.display())]
    NoCa { path: std::path::PathBuf },
    #[error("no trusted root certificate found on this system ({0})")]
    NoSystemRoots(String),
}

/// The largest certificate, key or CA file sluice reads: far above any real PEM bundle
/// (the Mozilla roots are about 200 KiB), and small enough that a config pointing at
/// `/dev/zero` or a huge file is refused instead of exhausting memory.
const MAX_PEM_FILE: u64 = 4 * 1024 * 1024;

/// Reads a PEM file named in the config: a regular file (a FIFO or a device would block or
/// never end) of at most [`MAX_PEM_FILE`] bytes, counted as read (files under `/proc`
/// report a size of 0).
pub(crate) fn read_pem_file(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    if !std::fs::metadata(path)?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut data = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_PEM_FILE + 1)
        .read_to_end(&mut data)?;
    if data.len() as u64 > MAX_PEM_FILE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("larger than {} MiB", MAX_PEM_FILE / (1024 * 1024)),
        ));
    }
    Ok(data)
}

/// The one crypto provider sluice uses.
fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// The only application protocol sluice speaks over TLS.
const HTTP_1_1: &[u8] = b"http/1.1";
