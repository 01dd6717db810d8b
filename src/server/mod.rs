//! Listeners and client connections.
//!
//! [`Server::bind`] binds every listener and builds the runtime state; [`Server::run`]
//! accepts until told to stop, then drains. Each accepted connection gets a permit under
//! the connection limits, or a `503` written straight to the socket.

pub mod conn;
pub mod head;
pub mod limits;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::config::{Config, ListenerConfig};
use crate::lifecycle::StartError;
use crate::proxy::error::raw_close_response;
use crate::proxy::Runtime;
use crate::shutdown::Shutdown;
use limits::Limits;

/// How long a refused connection (over a limit) is kept open to read and discard what the
/// client sends after the `503`: closing a socket with unread data sends a reset, which can
/// destroy the `503` before the client reads it.
const REFUSE_LINGER: Duration = Duration::from_millis(500);

/// How long the accept loop pauses when the process is out of file descriptors, so it does
/// not spin while connections close (pingora and linkerd do the same).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// A bound, ready-to-run proxy.
pub struct Server {
    config: Config,
    listeners: Vec<(TcpListener, Arc<ListenerConfig>)>,
    runtime: Arc<ArcSwap<Runtime>>,
    limits: Arc<Limits>,
    shutdown: Shutdown,
}

impl Server {
    /// Builds the upstream pools (resolving hostnames) and binds every listener.
    ///
    /// # Errors
    /// A hostname does not resolve, or an address cannot be bound.
    pub async fn bind(config: Config) -> Result<Server, StartError> {
        let runtime = Runtime::build(&config).await?;
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for listener in &config.listeners {
            let bound = bind(listener.addr).map_err(|source| StartError::Bind {
                addr: listener.addr,
                source,
            })?;
            listeners.push((bound, Arc::new(listener.clone())));
        }
        Ok(Server {
            limits: Arc::new(Limits::new(
                config.proxy.max_connections,
                config.proxy.max_connections_per_ip,
            )),
            config,
            listeners,
            runtime: Arc::new(ArcSwap::from_pointee(runtime)),
            shutdown: Shutdown::new(),
        })
    }

    /// The addresses actually bound (port 0 resolved), in listener order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|(l, cfg)| l.local_addr().ok().or(Some(cfg.addr)))
            .collect()
    }

    /// Serves until `shutdown` resolves, then drains: stops accepting, lets requests finish
    /// and tunnels run until `shutdown_timeout`, closes what is left, and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        for (listener, cfg) in self.listeners {
            match listener.local_addr() {
                Ok(addr) => tracing::info!(%addr, "listening"),
                Err(_) => tracing::info!(addr = %cfg.addr, "listening"),
            }
            tokio::spawn(accept_loop(
                listener,
                cfg,
                Arc::clone(&self.runtime),
                Arc::clone(&self.limits),
                self.shutdown.clone(),
            ));
        }
        shutdown.await;
        tracing::info!(
            shutdown_timeout = ?self.config.proxy.shutdown_timeout,
            "draining: no new connections; open requests and tunnels may finish"
        );
        self.shutdown
            .drain(self.config.proxy.shutdown_timeout)
            .await;
        tracing::info!("stopped");
    }
}

async fn accept_loop(
    listener: TcpListener,
    cfg: Arc<ListenerConfig>,
    runtime: Arc<ArcSwap<Runtime>>,
    limits: Arc<Limits>,
    shutdown: Shutdown,
) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.draining() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => match limits.admit(peer.ip()) {
                Some(permit) => shutdown.spawn(conn::serve(
                    stream,
                    peer,
                    Arc::clone(&cfg),
                    Arc::clone(&runtime),
                    shutdown.clone(),
                    permit,
                )),
                None => {
                    tracing::warn!(client = %peer, "connection limit reached, answering 503");
                    tokio::spawn(refuse(stream, StatusCode::SERVICE_UNAVAILABLE));
                }
            },
            Err(err) => {
                tracing::warn!(addr = %cfg.addr, cause = %err, "accept failed");
                if is_resource_exhaustion(&err) {
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
    }
    // Dropping the listener closes the socket: new connections are refused from here on.
}

/// Listen backlog: room for a burst of reconnecting WebSocket clients after a deploy
/// (the kernel caps it at `net.core.somaxconn`).
const LISTEN_BACKLOG: i32 = 4096;

/// Binds a listening socket: `SO_REUSEADDR` (restart without waiting out TIME_WAIT) and,
/// for IPv6 addresses, `IPV6_V6ONLY` as nginx does, so `[::]:80` and `0.0.0.0:80` can be
/// separate listeners.
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

fn is_resource_exhaustion(err: &io::Error) -> bool {
    // EMFILE (24), ENFILE (23), ENOBUFS (105), ENOMEM (12).
    matches!(err.raw_os_error(), Some(23 | 24 | 105 | 12))
}

/// Answers `status` and closes, reading (and discarding) for a moment so the answer is not
/// lost to a reset.
async fn refuse(mut stream: TcpStream, status: StatusCode) {
    let _ = stream.set_nodelay(true);
    if stream.write_all(&raw_close_response(status)).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(REFUSE_LINGER, async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}
