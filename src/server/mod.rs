//! Listeners and client connections.
//!
//! [`Server::bind`] binds every listener and builds the runtime state; [`Server::start`]
//! accepts, [`Running::reload`] takes a new config without touching open connections, and
//! [`Running::drain`] stops. Each accepted connection gets a permit under
//! the connection limits, or a `503` written straight to the socket.

pub mod conn;
pub mod head;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Admin, ListenerInfo};
use crate::config::{Config, ListenerConfig};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::proxy::error::raw_close_response;
use crate::proxy::Runtime;
use crate::resources;
use crate::shutdown::Shutdown;
use crate::tls::TlsSetupError;
use crate::upstream::resolve::Resolver;
use crate::upstream::Registry;
use tokio_rustls::TlsAcceptor;

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
    listeners: Vec<(std::net::TcpListener, Listening)>,
    /// The `[admin]` listener, bound, with its configured address.
    admin: Option<(std::net::TcpListener, SocketAddr)>,
    shared: Arc<Shared>,
}

/// What a listener's new connections get: its settings, and its TLS acceptor when it
/// terminates TLS. Built whole from a config, and swapped whole on reload, so a new
/// certificate reaches new connections while open ones carry on with theirs.
pub struct Listening {
    pub config: ListenerConfig,
    pub tls: Option<TlsAcceptor>,
}

impl Listening {
    /// # Errors
    /// rustls refused the listener's TLS setup.
    pub fn new(config: &ListenerConfig) -> Result<Listening, TlsSetupError> {
        let tls = if config.tls.is_empty() {
            None
        } else {
            let certs: Vec<_> = config.tls.iter().map(|c| c.loaded.clone()).collect();
            Some(TlsAcceptor::from(crate::tls::server::config(&certs)?))
        };
        Ok(Listening {
            config: config.clone(),
            tls,
        })
    }
}

/// What every listener and connection reads, swapped whole on reload so that the accept
/// and request paths never wait on a lock.
struct Shared {
    runtime: Arc<ArcSwap<Runtime>>,
    /// Kept for the process's life: a reload changes the maxima, not the counts.
    limits: Arc<Limits>,
    /// Every upstream server's state, kept across reloads.
    registry: Arc<Registry>,
    shutdown: Shutdown,
    /// What the admin endpoint reads (metrics, reload history, listeners).
    admin: Arc<admin::Sources>,
    /// The runtimes accept loops run on, one `SO_REUSEPORT` socket per listener each;
    /// empty: one socket, served on the runtime that starts the server.
    workers: Vec<Handle>,
}

/// Why the server could not start, or could not take a new config (a reload; the running
/// config stays in every case).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{0}")]
    Pool(#[from] crate::upstream::PoolError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("listener {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        #[source]
        source: TlsSetupError,
    },
}

impl Server {
    /// Builds the upstream pools (resolving hostnames) and binds every listener.
    ///
    /// # Errors
    /// A hostname does not resolve, or an address cannot be bound.
    pub async fn bind(config: Config) -> Result<Server, SetupError> {
        Server::bind_on(config, Vec::new()).await
    }

    /// [`Server::bind`], with each listener served by one accept loop per runtime in
    /// `workers`, on sockets of its own (`SO_REUSEPORT`), so a connection stays on the
    /// worker that accepted it.
    ///
    /// # Errors
    /// A hostname does not resolve, or an address cannot be bound.
    pub async fn bind_on(config: Config, workers: Vec<Handle>) -> Result<Server, SetupError> {
        let reuse_port = workers.len() > 1;
        let metrics = Arc::new(Metrics::new());
        let registry = Arc::new(Registry::new(Arc::clone(&metrics)));
        let resolver = Resolver::new(config.proxy.resolver);
        let runtime = Runtime::build(&config, &registry, &resolver, None).await?;
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for listener in &config.listeners {
            let listening = Listening::new(listener).map_err(|source| SetupError::Tls {
                addr: listener.addr,
                source,
            })?;
            let bound =
                bind_first(listener.addr, reuse_port).map_err(|source| SetupError::Bind {
                    addr: listener.addr,
                    source,
                })?;
            listeners.push((bound, listening));
        }
        let admin = match &config.admin {
            Some(cfg) => Some((
                bind(cfg.addr, false).map_err(|source| SetupError::Bind {
                    addr: cfg.addr,
                    source,
                })?,
                cfg.addr,
            )),
            None => None,
        };
        let runtime = Arc::new(ArcSwap::from_pointee(runtime));
        let limits = Limits::new(
            config.proxy.max_connections,
            config.proxy.max_connections_per_ip,
            config.proxy.max_tunnels_per_ip,
        );
        let shutdown = Shutdown::new();
        let sources = admin::Sources {
            metrics,
            runtime: Arc::clone(&runtime),
            shutdown: shutdown.clone(),
            connections: {
                let limits = Arc::clone(&limits);
                Box::new(move || (limits.open(), limits.max_connections()))
            },
            listeners: ArcSwap::from_pointee(Vec::new()),
            journal: admin::Journal::new(&config.source),
        };
        let shared = Arc::new(Shared {
            runtime,
            limits,
            registry,
            shutdown,
            admin: Arc::new(sources),
            workers,
        });
        Ok(Server {
            config,
            listeners,
            admin,
            shared,
        })
    }

    /// The admin endpoint's address as bound, when `[admin]` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
            .as_ref()
            .map(|(l, configured)| l.local_addr().unwrap_or(*configured))
    }

    /// The addresses actually bound (port 0 resolved), in listener order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .map(|(l, listening)| l.local_addr().unwrap_or(listening.config.addr))
            .collect()
    }

    /// Starts accepting on every listener.
    pub fn start(self) -> Running {
        let mut listeners = Vec::with_capacity(self.listeners.len());
        for (listener, listening) in self.listeners {
            listeners.push(ListenerHandle::spawn(listener, listening, &self.shared));
        }
        self.shared
            .admin
            .listeners
            .store(Arc::new(listener_infos(&listeners)));
        let admin = self.admin.map(|(listener, configured)| {
            Admin::spawn(listener, configured, Arc::clone(&self.shared.admin))
        });
        Running {
            shared: self.shared,
            state: Arc::new(Mutex::new(RunningState {
                listeners,
                admin,
                shutdown_timeout: self.config.proxy.shutdown_timeout,
            })),
        }
    }

    /// Serves until `shutdown` resolves, then drains: stops accepting, lets requests finish
    /// and tunnels run until `shutdown_timeout`, closes what is left, and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let running = self.start();
        shutdown.await;
        running.drain().await;
    }
}

/// A serving proxy: it can take a new config, and be drained.
pub struct Running {
    shared: Arc<Shared>,
    /// Touched only by reload, drain and the liveness check, never by the request path.
    state: Arc<Mutex<RunningState>>,
}

struct RunningState {
    listeners: Vec<ListenerHandle>,
    admin: Option<Admin>,
    shutdown_timeout: Duration,
}

/// What `/status` shows of each listener.
fn listener_infos(listeners: &[ListenerHandle]) -> Vec<ListenerInfo> {
    listeners
        .iter()
        .map(|l| ListenerInfo {
            addr: l.local,
            tls: l.listening.load().tls.is_some(),
        })
        .collect()
}

impl Running {
    /// The addresses listened on, in listener order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.listeners.iter().map(|l| l.local).collect()
    }

    /// The admin endpoint's address as bound, when `[admin]` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.admin.as_ref().map(|a| a.local)
    }

    /// Records a reload refused before it reached [`Running::reload`] (an invalid file),
    /// for `/status` and `sluice_config_reloads_total`.
    pub fn reload_refused(&self, reason: &str) {
        self.shared.admin.metrics.reloaded(false);
        self.shared.admin.journal.reloaded(Err(reason.to_owned()));
    }

    /// Takes over `config`: new listeners are bound, removed ones closed, kept ones take
    /// their new settings; routes, pools and limits are swapped at once. Open connections
    /// and tunnels carry on untouched with what they started with.
    ///
    /// # Errors
    /// A hostname does not resolve or a new address cannot be bound; then nothing changes.
    pub async fn reload(&self, config: Config) -> Result<(), SetupError> {
        let source = config.source.clone();
        let result = self.take_over(config).await;
        match &result {
            Ok(()) => {
                self.shared.admin.metrics.reloaded(true);
                self.shared.admin.journal.reloaded(Ok(&source));
            }
            Err(err) => self.reload_refused(&err.to_string()),
        }
        result
    }

    async fn take_over(&self, config: Config) -> Result<(), SetupError> {
        let resolver = Resolver::new(config.proxy.resolver);
        let previous = self.shared.runtime.load_full();
        let runtime = Arc::new(
            Runtime::build(&config, &self.shared.registry, &resolver, Some(&previous)).await?,
        );
        // Every listener's TLS setup first, then every new address bound, so a failure
        // leaves everything as it was.
        let mut built = Vec::with_capacity(config.listeners.len());
        for cfg in &config.listeners {
            let listening = Listening::new(cfg).map_err(|source| SetupError::Tls {
                addr: cfg.addr,
                source,
            })?;
            built.push(listening);
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut fresh = Vec::new();
        let mut kept_settings = Vec::new();
        for listening in built {
            if state
                .listeners
                .iter()
                .any(|l| l.addr() == listening.config.addr)
            {
                kept_settings.push(listening);
                continue;
            }
            let reuse_port = self.shared.workers.len() > 1;
            let bound = bind_first(listening.config.addr, reuse_port).map_err(|source| {
                SetupError::Bind {
                    addr: listening.config.addr,
                    source,
                }
            })?;
            fresh.push((bound, listening));
        }
        // The admin listener: kept when its address stays, else bound anew before anything
        // is swapped, so a failure leaves everything as it was.
        let same_admin = match (&config.admin, &state.admin) {
            (Some(cfg), Some(admin)) => cfg.addr == admin.configured,
            (None, None) => true,
            _ => false,
        };
        let new_admin = match (&config.admin, same_admin) {
            (Some(cfg), false) => Some((
                bind(cfg.addr, false).map_err(|source| SetupError::Bind {
                    addr: cfg.addr,
                    source,
                })?,
                cfg.addr,
            )),
            _ => None,
        };
        let before = self.shared.runtime.swap(Arc::clone(&runtime));
        self.shared
            .registry
            .retire(&before.server_states(), &runtime.server_states());
        self.shared.limits.set(
            config.proxy.max_connections,
            config.proxy.max_connections_per_ip,
            config.proxy.max_tunnels_per_ip,
        );
        let mut kept = Vec::with_capacity(config.listeners.len());
        for old in state.listeners.drain(..) {
            let same = kept_settings
                .iter()
                .position(|l| l.config.addr == old.addr());
            match same {
                Some(i) => {
                    old.listening.store(Arc::new(kept_settings.swap_remove(i)));
                    kept.push(old);
                }
                None => {
                    tracing::info!(addr = %old.local, "listener removed");
                    old.close();
                }
            }
        }
        for (listener, listening) in fresh {
            kept.push(ListenerHandle::spawn(listener, listening, &self.shared));
        }
        state.listeners = kept;
        self.shared
            .admin
            .listeners
            .store(Arc::new(listener_infos(&state.listeners)));
        if !same_admin {
            if let Some(old) = state.admin.take() {
                tracing::info!(addr = %old.local, "admin listener removed");
                old.close();
            }
            state.admin = new_admin.map(|(listener, configured)| {
                Admin::spawn(listener, configured, Arc::clone(&self.shared.admin))
            });
        }
        state.shutdown_timeout = config.proxy.shutdown_timeout;
        Ok(())
    }

    /// Stops accepting, lets requests finish and tunnels run until `shutdown_timeout`,
    /// then closes what is left.
    pub async fn drain(self) {
        let timeout = {
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.shutdown_timeout
        };
        tracing::info!(
            shutdown_timeout = ?timeout,
            "draining: no new connections; open requests and tunnels may finish"
        );
        self.shared.shutdown.drain(timeout).await;
        // The admin endpoint answered `503` on /healthz throughout; it closes last.
        let admin = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.admin.take()
        };
        if let Some(admin) = admin {
            admin.close();
        }
        tracing::info!("stopped");
    }

    /// Whether sluice is still taking connections: not draining, and the accept loop of
    /// every current listener still running (one a reload closed is no longer current).
    /// An accept loop ends early only if it panicked; the listener then takes no more
    /// connections, and a supervisor should restart the process.
    pub fn accepting(&self) -> bool {
        accepting(&self.shared, &self.state)
    }

    /// [`Running::accepting`] as a check that outlives `self`, for a task that watches it
    /// (the systemd watchdog). It reads `false` once the drain has begun.
    pub fn liveness(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let shared = Arc::clone(&self.shared);
        let state = Arc::clone(&self.state);
        move || accepting(&shared, &state)
    }
}

fn accepting(shared: &Shared, state: &Mutex<RunningState>) -> bool {
    if shared.shutdown.is_draining() {
        return false;
    }
    let state = state.lock().unwrap_or_else(|p| p.into_inner());
    state
        .listeners
        .iter()
        .all(|l| l.accept_loops.iter().all(|task| !task.is_finished()))
}

/// One listening socket's accept loop, and the settings its new connections get.
struct ListenerHandle {
    /// Bound address (port 0 resolved).
    local: SocketAddr,
    /// Settings (and TLS) for new connections; replaced on reload.
    listening: Arc<ArcSwap<Listening>>,
    /// Closes this listener alone (removed by a reload).
    stop: CancellationToken,
    /// The accept loops (one per worker), finished only after `stop`, a drain, or a panic.
    accept_loops: Vec<tokio::task::JoinHandle<()>>,
}

impl ListenerHandle {
    fn spawn(
        listener: std::net::TcpListener,
        listening: Listening,
        shared: &Arc<Shared>,
    ) -> ListenerHandle {
        let local = listener.local_addr().unwrap_or(listening.config.addr);
        let tls = listening.tls.is_some();
        tracing::info!(addr = %local, tls, "listening");
        let listening = Arc::new(ArcSwap::from_pointee(listening));
        let stop = CancellationToken::new();
        // One socket per worker: the first is the one bound already; the others join it
        // on the bound address (port 0 resolved).
        let mut sockets = vec![listener];
        for _ in 1..shared.workers.len() {
            match bind(local, true) {
                Ok(socket) => sockets.push(socket),
                Err(err) => {
                    tracing::warn!(addr = %local, cause = %err, "cannot open a socket for every worker; fewer serve this listener");
                    break;
                }
            }
        }
        let accept_loops = sockets
            .into_iter()
            .enumerate()
            .map(|(i, socket)| {
                let task = accept_loop(
                    socket,
                    Arc::clone(&listening),
                    Arc::clone(shared),
                    stop.clone(),
                );
                match shared.workers.get(i) {
                    Some(worker) => worker.spawn(task),
                    None => tokio::spawn(task),
                }
            })
            .collect();
        ListenerHandle {
            local,
            listening,
            stop,
            accept_loops,
        }
    }

    /// The address as configured (`127.0.0.1:0` stays that, whatever port it got), which
    /// is what a reload compares.
    fn addr(&self) -> SocketAddr {
        self.listening.load().config.addr
    }

    fn close(self) {
        self.stop.cancel();
    }
}

/// Accepts until the listener is closed or the drain begins. The socket is registered with
/// the runtime the loop runs on, so its connections are served there.
async fn accept_loop(
    listener: std::net::TcpListener,
    listening: Arc<ArcSwap<Listening>>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(addr = %listening.load().config.addr, cause = %err, "cannot register a listening socket");
            return;
        }
    };
    loop {
        let accepted = tokio::select! {
            () = shared.shutdown.draining() => break,
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => match shared.limits.admit(peer.ip()) {
                Some(permit) => shared.shutdown.spawn(conn::serve(
                    stream,
                    peer,
                    listening.load_full(),
                    Arc::clone(&shared.runtime),
                    shared.shutdown.clone(),
                    permit,
                    Arc::clone(&shared.limits),
                )),
                None => {
                    tracing::warn!(client = %peer, "connection limit reached, answering 503");
                    tokio::spawn(refuse(stream, StatusCode::SERVICE_UNAVAILABLE));
                }
            },
            Err(err) if resources::is_exhaustion(&err) => {
                // The connection waits in the backlog until descriptors free up.
                resources::report_exhaustion("accept", &err);
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
            Err(err) => {
                tracing::warn!(addr = %listening.load().config.addr, cause = %err, "accept failed");
            }
        }
    }
    // Dropping the listener closes the socket: new connections are refused from here on.
}

/// Listen backlog: room for a burst of reconnecting WebSocket clients after a deploy
/// (the kernel caps it at `net.core.somaxconn`).
const LISTEN_BACKLOG: i32 = 4096;

/// Binds a listener's first socket. With `reuse_port` the address is first bound once
/// without `SO_REUSEPORT`: that fails while anything else listens there (another sluice
/// included), which `SO_REUSEPORT` alone would let it share.
fn bind_first(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    if reuse_port && addr.port() != 0 {
        drop(bind_socket(addr, false)?);
    }
    bind(addr, reuse_port)
}

/// A socket bound to `addr`, not listening yet, with the options every listener has.
fn bind_socket(addr: SocketAddr, reuse_port: bool) -> io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// Binds a listening socket: `SO_REUSEADDR` (restart without waiting out TIME_WAIT) and,
/// for IPv6 addresses, `IPV6_V6ONLY` as nginx does, so `[::]:80` and `0.0.0.0:80` can be
/// separate listeners. With `reuse_port`, `SO_REUSEPORT` too: one socket per worker on the
/// same address, the kernel spreading new connections over them.
fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let socket = bind_socket(addr, reuse_port)?;
    socket.set_nonblocking(true)?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(listen: &str) -> Config {
        let toml = format!(
            "[[listener]]\naddr = \"{listen}\"\n\n[upstream.app]\nservers = [\"127.0.0.1:9\"]\n\n\
             [[route]]\nupstream = \"app\"\n"
        );
        Config::from_toml(&toml, std::path::Path::new("test.toml")).expect("valid config")
    }

    /// A loop a reload closed does not count; one that ended on its own does; a drain
    /// ends it all.
    #[tokio::test]
    async fn accepting_while_every_current_accept_loop_runs() {
        let running = Server::bind(config("127.0.0.1:0"))
            .await
            .expect("bind")
            .start();
        let first = running.local_addrs()[0];
        assert!(running.accepting());

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        running
            .reload(config(&format!("127.0.0.1:{port}")))
            .await
            .expect("reload");
        tokio::time::timeout(Duration::from_secs(10), async {
            while TcpStream::connect(first).await.is_ok() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the removed listener closes");
        assert!(running.accepting(), "a listener closed by a reload counts");

        // An accept loop that ends on its own (as a panic would end it).
        let mut listener = {
            let mut state = running.state.lock().unwrap_or_else(|p| p.into_inner());
            state.listeners.remove(0)
        };
        listener.accept_loops[0].abort();
        let _ = (&mut listener.accept_loops[0]).await;
        running
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .listeners
            .push(listener);
        assert!(!running.accepting(), "a dead accept loop goes unnoticed");

        let alive = running.liveness();
        running.drain().await;
        assert!(!alive(), "still accepting after the drain");
    }
}
