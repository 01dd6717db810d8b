//! `sluice run`: load the config, bind, serve; SIGHUP reloads, SIGTERM/SIGINT drain; and
//! systemd hears about each step when it asked to (`NOTIFY_SOCKET`).

use std::io;
use std::net::SocketAddr;
use std::path::Path;

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::config::{Config, ConfigError};
use crate::server::{Running, Server, SetupError};

mod watchdog;
mod workers;

/// Why sluice could not start. Each renders as one clear line (a config error as its list
/// of problems, one per line).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// Binding, TLS setup or the upstream pools failed.
    #[error(transparent)]
    Server(#[from] SetupError),
    /// One of `sluice demo`'s own backends could not listen.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
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

/// Runs the proxy from a config file until SIGTERM or SIGINT, then drains. SIGHUP reads
/// the file again and, if it is valid, takes it over.
///
/// # Errors
/// The config is invalid, or the proxy cannot start; nothing was served then.
pub fn run_from_file(path: &Path) -> Result<(), StartError> {
    let config = Config::load(path)?;
    log_warnings(&config);
    match crate::resources::raise_fd_limit() {
        Ok(limit) => tracing::debug!(limit, "file descriptor limit"),
        Err(err) => tracing::warn!(cause = %err, "cannot raise the file descriptor limit"),
    }
    let workers =
        workers::Workers::start(workers::Workers::count()).map_err(StartError::Runtime)?;
    let handles = workers.handles();
    // Housekeeping only (signals, reloads, health checks, DNS, the admin endpoint): the
    // proxying runs on the workers, so one thread is enough here.
    let housekeeping = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;
    let served = housekeeping.block_on(async move {
        let mut signals = Signals::install()?;
        let running = Server::bind_on(config, handles).await?.start();
        systemd::notify_ready();
        let watchdog = watchdog::Watchdog::start(running.liveness());
        let stop = serve_signals(&mut signals, &running, path).await;
        tracing::info!(signal = stop, "shutting down");
        watchdog.stop().await;
        systemd::notify_stopping();
        running.drain().await;
        Ok(())
    });
    workers.stop();
    served
}

/// Handles signals until SIGTERM or SIGINT, whose name it returns. A reload runs while
/// signals are still heard: a SIGTERM during a slow reload stops at once (the reload is
/// abandoned, and nothing of it was applied), and a SIGHUP during a reload starts another
/// one right after it, so the newest file always wins.
async fn serve_signals(signals: &mut Signals, running: &Running, path: &Path) -> &'static str {
    let mut reload_pending = false;
    loop {
        if !reload_pending {
            match signals.next().await {
                Event::Reload => {}
                Event::Stop(name) => return name,
            }
        }
        reload_pending = false;
        let reloading = reload(running, path);
        tokio::pin!(reloading);
        loop {
            tokio::select! {
                () = &mut reloading => break,
                event = signals.next() => match event {
                    Event::Reload => reload_pending = true,
                    Event::Stop(name) => return name,
                },
            }
        }
    }
}

/// One SIGHUP: validate the file again and take it over, or keep the running config.
async fn reload(running: &Running, path: &Path) {
    systemd::notify_reloading();
    tracing::info!(config = %path.display(), "SIGHUP: reloading");
    match Config::load(path) {
        Err(err) => {
            let text = err.to_string();
            for line in text.lines() {
                tracing::error!(problem = line, "reload failed, the running config stays");
            }
            running.reload_refused(&text);
        }
        Ok(config) => {
            log_warnings(&config);
            match running.reload(config).await {
                Ok(()) => tracing::info!("reloaded"),
                Err(err) => {
                    tracing::error!(cause = %err, "reload failed, the running config stays");
                }
            }
        }
    }
    systemd::notify_ready();
}

fn log_warnings(config: &Config) {
    for warning in &config.warnings {
        tracing::warn!(problem = warning.as_str(), "config warning");
    }
}

/// The signals `sluice run` acts on.
enum Event {
    Reload,
    Stop(&'static str),
}

struct Signals {
    hup: Signal,
    term: Signal,
    int: Signal,
}

impl Signals {
    fn install() -> Result<Signals, StartError> {
        let install = |kind| signal(kind).map_err(StartError::Signals);
        Ok(Signals {
            hup: install(SignalKind::hangup())?,
            term: install(SignalKind::terminate())?,
            int: install(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) -> Event {
        tokio::select! {
            _ = self.hup.recv() => Event::Reload,
            _ = self.term.recv() => Event::Stop("SIGTERM"),
            _ = self.int.recv() => Event::Stop("SIGINT"),
        }
    }
}

/// A future that resolves on the first SIGTERM or SIGINT (for `sluice demo`).
///
/// # Errors
/// The handlers cannot be installed.
pub fn stop_signal() -> Result<impl std::future::Future<Output = ()> + Send + 'static, StartError> {
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

/// sd_notify(3) messages. Without `NOTIFY_SOCKET` each is a no-op, and a failure to
/// notify is logged, never fatal: the proxy serves either way.
mod systemd {
    use sd_notify::NotifyState;

    fn send(states: &[NotifyState<'_>]) {
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            return;
        }
        if let Err(err) = sd_notify::notify(states) {
            tracing::warn!(cause = %err, "cannot notify systemd");
        }
    }

    pub fn notify_ready() {
        send(&[NotifyState::Ready]);
    }

    /// `Type=notify-reload` wants the reload's start time with `RELOADING=1`.
    pub fn notify_reloading() {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => send(&[NotifyState::Reloading, now]),
            Err(_) => send(&[NotifyState::Reloading]),
        }
    }

    pub fn notify_stopping() {
        send(&[NotifyState::Stopping]);
    }
}
