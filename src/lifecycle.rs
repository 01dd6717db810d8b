//! `sluice run`: load the config, bind, serve, and drain on SIGTERM/SIGINT.

use std::io;
use std::net::SocketAddr;
use std::path::Path;

use crate::config::{Config, ConfigError};
use crate::server::Server;
use crate::upstream::PoolError;

/// Why sluice could not start. Each renders as one clear line (a config error as its list
/// of problems, one per line).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Pool(#[from] PoolError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] io::Error),
}

/// Builds the multi-threaded tokio runtime every command uses.
///
/// # Errors
/// The OS refuses threads or an epoll instance.
pub fn tokio_runtime() -> Result<tokio::runtime::Runtime, StartError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(StartError::Runtime)
}

/// Runs the proxy from a config file until SIGTERM or SIGINT, then drains.
///
/// # Errors
/// The config is invalid, or the proxy cannot start; nothing was served then.
pub fn run_from_file(path: &Path) -> Result<(), StartError> {
    let config = Config::load(path)?;
    tokio_runtime()?.block_on(async move {
        let stop = stop_signal()?;
        ignore_reload_signal()?;
        let server = Server::bind(config).await?;
        server.run(stop).await;
        Ok(())
    })
}

/// SIGHUP's default action would kill the process, and `systemctl reload` sends it: until
/// reloading is built, it is caught and logged, and the running config stays.
fn ignore_reload_signal() -> Result<(), StartError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).map_err(StartError::Signals)?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::warn!("SIGHUP: reloading is not supported yet; the running config stays");
        }
    });
    Ok(())
}

/// A future that resolves on the first SIGTERM or SIGINT.
///
/// # Errors
/// The handlers cannot be installed.
pub fn stop_signal() -> Result<impl std::future::Future<Output = ()> + Send + 'static, StartError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(StartError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(StartError::Signals)?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down");
    })
}
