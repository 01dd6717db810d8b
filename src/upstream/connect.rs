//! Upstream connections: connecting with `connect_timeout` and `TCP_NODELAY`, the HTTP/1.1
//! client handshake, and the per-server pool of idle keep-alive connections.
//!
//! sluice drives `hyper::client::conn::http1` itself rather than a pooled client, because
//! the proxy must know *which* step failed: a connect failure marks the server and moves
//! the request to the next one (nothing was sent), while a failure after sending is final.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyper::client::conn::http1::{Builder, SendRequest};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use super::body::OutgoingBody;
use crate::stream::Stream;
use crate::tls::client::UpstreamTls;

/// A sender on one upstream HTTP/1.1 connection; its connection task runs on its own.
pub type Sender = SendRequest<OutgoingBody>;

/// How long an idle pooled connection is kept before it is closed, like nginx's upstream
/// `keepalive_timeout` default (60 s). Servers commonly close idle connections after
/// 5–75 s; reusing one the server is closing costs a retry, so stale ones are dropped early.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why no connection could be had. Nothing was sent upstream in either case.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("connect failed: {0}")]
    Io(#[source] io::Error),
    #[error("HTTP handshake failed: {0}")]
    Handshake(#[source] hyper::Error),
    /// The TLS handshake failed: most often, the server's certificate did not verify.
    /// Not one byte of HTTP was sent.
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] io::Error),
    /// sluice itself has no descriptor to spare: not the server's fault.
    #[error("out of file descriptors: {0}")]
    NoDescriptors(#[source] io::Error),
}

impl ConnectError {
    /// Whether the failure counts against the server's passive health: everything but
    /// sluice's own shortage.
    pub fn blames_server(&self) -> bool {
        !matches!(self, ConnectError::NoDescriptors(_))
    }
}

/// Opens a TCP connection with `TCP_NODELAY` set (tunnels carry small frames both ways;
/// Nagle's algorithm would add up to 40 ms to each).
pub async fn connect_tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => return Err(ConnectError::Timeout(timeout)),
        Ok(Err(e)) if crate::resources::is_exhaustion(&e) => {
            crate::resources::report_exhaustion("upstream connect", &e);
            return Err(ConnectError::NoDescriptors(e));
        }
        Ok(Err(e)) => return Err(ConnectError::Io(e)),
        Ok(Ok(stream)) => stream,
    };
    stream.set_nodelay(true).map_err(ConnectError::Io)?;
    Ok(stream)
}

/// How to reach one server over TLS: the pool's client config and the name to send as SNI
/// and verify.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub tls: UpstreamTls,
    pub name: ServerName<'static>,
}

/// Connects, and runs the TLS handshake for a TLS server, all within `timeout`.
///
/// # Errors
/// The server could not be reached, or its certificate did not verify.
pub async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<&ServerTls>,
) -> Result<Stream, ConnectError> {
    let started = tokio::time::Instant::now();
    let tcp = connect_tcp(addr, timeout).await?;
    let Some(tls) = tls else {
        return Ok(Stream::Plain(tcp));
    };
    let left = timeout.saturating_sub(started.elapsed());
    match tokio::time::timeout(left, tls.tls.connect(tls.name.clone(), tcp)).await {
        Err(_) => Err(ConnectError::Timeout(timeout)),
        Ok(Err(err)) => Err(ConnectError::Tls(err)),
        Ok(Ok(stream)) => Ok(Stream::TlsClient(Box::new(stream))),
    }
}

/// Connects and performs the HTTP/1.1 client handshake. The connection task is spawned and
/// allows upgrades, so a `101` hands the raw connection to [`hyper::upgrade::on`].
pub async fn open(
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<&ServerTls>,
) -> Result<Sender, ConnectError> {
    let stream = connect(addr, timeout, tls).await?;
    let (sender, conn) = Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(ConnectError::Handshake)?;
    tokio::spawn(async move {
        if let Err(err) = conn.with_upgrades().await {
            tracing::debug!(upstream.addr = %addr, cause = %err, "upstream connection ended");
        }
    });
    Ok(sender)
}

/// How many worker threads keep idle connections apart; workers past it share.
const SHARDS: usize = 64;

thread_local! {
    /// The worker thread this is (see `lifecycle`'s workers); 0 elsewhere.
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Names the calling thread as worker `n`: the idle connections it returns and takes are
/// its own, as nginx keeps `keepalive` connections per worker process.
pub fn set_worker(n: usize) {
    WORKER.with(|w| w.set(n % SHARDS));
}

/// The server's socket and the bytes hyper read past its `101`, once the connection
/// upgraded; `None` if the connection is not one of ours (a bug, not a peer's doing).
pub fn upgraded_socket(upgraded: hyper::upgrade::Upgraded) -> Option<(Stream, bytes::Bytes)> {
    let parts = upgraded.downcast::<TokioIo<Stream>>().ok()?;
    Some((parts.io.into_inner(), parts.read_buf))
}

/// Idle keep-alive connections to one server, most recently used first out, kept per
/// worker thread: a connection's task runs on the worker that opened it, so a request
/// that reused another worker's connection would wake that thread for every exchange.
#[derive(Debug)]
pub struct IdlePool {
    /// The pool's `keepalive`, per worker; a reload may change it.
    max_idle: AtomicUsize,
    /// Std mutexes: held only to push or pop, never across an await; a worker only
    /// contends with a reload clearing them.
    shards: [Mutex<Vec<(Sender, Instant)>>; SHARDS],
}

impl IdlePool {
    pub fn new(max_idle: usize) -> IdlePool {
        IdlePool {
            max_idle: AtomicUsize::new(max_idle),
            shards: std::array::from_fn(|_| Mutex::new(Vec::new())),
        }
    }

    /// The calling worker's idle connections.
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<(Sender, Instant)>> {
        let shard = WORKER.with(std::cell::Cell::get) % SHARDS;
        self.shards[shard].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a new `keepalive` (a reload); extra idle connections go on their next push.
    pub fn set_max(&self, max_idle: usize) {
        self.max_idle.store(max_idle, Ordering::Relaxed);
        if max_idle == 0 {
            self.clear();
        }
    }

    fn max(&self) -> usize {
        self.max_idle.load(Ordering::Relaxed)
    }

    /// An idle connection that is still open, if any.
    pub fn take(&self) -> Option<Sender> {
        if self.max() == 0 {
            return None;
        }
        let mut idle = self.idle();
        while let Some((sender, since)) = idle.pop() {
            if !sender.is_closed() && since.elapsed() < IDLE_TIMEOUT {
                return Some(sender);
            }
        }
        None
    }

    /// Returns a connection whose last response is complete. When the connection is not
    /// ready yet (hyper finishing the previous exchange), a small task waits for it.
    pub fn put(self: &std::sync::Arc<Self>, mut sender: Sender) {
        if self.max() == 0 || sender.is_closed() {
            return;
        }
        if sender.is_ready() {
            self.push(sender);
            return;
        }
        let pool = std::sync::Arc::clone(self);
        tokio::spawn(async move {
            let ready = tokio::time::timeout(Duration::from_secs(1), sender.ready()).await;
            if matches!(ready, Ok(Ok(()))) {
                pool.push(sender);
            }
        });
    }

    fn push(&self, sender: Sender) {
        let mut idle = self.idle();
        while !idle.is_empty() && idle.len() >= self.max() {
            // Keep the newest: drop the oldest, whose server is likeliest to close it.
            idle.remove(0);
        }
        idle.push((sender, Instant::now()));
    }

    /// Closes every idle connection (the server left the pool).
    pub fn clear(&self) {
        for shard in &self.shards {
            shard.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }
}
