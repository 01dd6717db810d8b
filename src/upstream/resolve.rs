//! Upstream host names, resolved at start and again every `resolve_interval` (DNS-based
//! discovery: containers and pods change address), with hickory-resolver: the system's
//! `/etc/resolv.conf` by default, or the `[proxy] resolver` given.
//!
//! Every lookup is bounded by its pool's `connect_timeout` and never runs on the request
//! path: a [`Refresher`] task per pool with host names resolves them in the background and
//! swaps in a new pool snapshot when the addresses change. A failed lookup keeps the last
//! known addresses, and is logged once when it starts failing and once when it recovers.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;

use super::{Pool, PoolHandle, Registry};
use crate::config::{ServerConfig, UpstreamConfig};

/// Resolves upstream host names. The resolver itself is set up on the first lookup, so a
/// config without host names never reads `/etc/resolv.conf` (a minimal container may have
/// none).
#[derive(Clone)]
pub struct Resolver {
    server: Option<SocketAddr>,
    inner: Arc<std::sync::OnceLock<Result<TokioResolver, String>>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// The system's resolver, or the DNS server at `server` (over UDP).
    pub fn new(server: Option<SocketAddr>) -> Resolver {
        Resolver {
            server,
            inner: Arc::new(std::sync::OnceLock::new()),
        }
    }

    /// Answers are not cached: every lookup asks, since lookups are rare (one per name per
    /// `resolve_interval`) and must see a moved name at once.
    fn resolver(&self) -> std::io::Result<&TokioResolver> {
        let built = self.inner.get_or_init(|| {
            let mut builder = match self.server {
                Some(addr) => {
                    let mut config = ResolverConfig::new();
                    config.add_name_server(NameServerConfig::new(addr, Protocol::Udp));
                    TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
                        .with_options(ResolverOpts::default())
                }
                // `/etc/resolv.conf`'s name servers, search list and options (`ndots`,
                // `timeout`, …), as the system's own resolver would use them: in a pod,
                // a short name like `app-headless` resolves through the search list.
                None => TokioResolver::builder_tokio().map_err(|e| e.to_string())?,
            };
            let options = builder.options_mut();
            options.cache_size = 0;
            options.attempts = 1;
            Ok(builder.build())
        });
        built
            .as_ref()
            .map_err(|e| std::io::Error::other(format!("cannot set up the resolver: {e}")))
    }

    /// The addresses of `host`, each with `port`, sorted; within `timeout`.
    ///
    /// # Errors
    /// No answer in time, an error answer, or no address.
    pub async fn lookup(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> std::io::Result<Vec<SocketAddr>> {
        let found = tokio::time::timeout(timeout, self.resolver()?.lookup_ip(host))
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within connect_timeout ({timeout:?})"),
                )
            })?
            .map_err(std::io::Error::other)?;
        let mut addrs: Vec<SocketAddr> = found.iter().map(|ip| SocketAddr::new(ip, port)).collect();
        addrs.sort_unstable();
        addrs.dedup();
        if addrs.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no address",
            ));
        }
        Ok(addrs)
    }
}

/// One warning per host name in `config` that does not resolve now, for `sluice check`: a
/// typo should be visible, though `run` starts anyway (see [`resolve_all`]).
pub async fn unresolved(config: &crate::config::Config) -> Vec<String> {
    let resolver = Resolver::new(config.proxy.resolver);
    let mut warnings = Vec::new();
    for (name, upstream) in &config.upstreams {
        for server in upstream.servers.iter().filter(|s| is_name(s)) {
            if let Err(err) = resolver
                .lookup(&server.host, server.port, upstream.connect_timeout)
                .await
            {
                warnings.push(format!(
                    "{}: upstream.{name}.servers: warning: {} does not resolve now ({err}); \
                     sluice starts anyway and tries again every resolve_interval",
                    config.source.display(),
                    server.addr
                ));
            }
        }
    }
    warnings
}

/// Whether a `servers` entry names a host rather than an IP address.
pub fn is_name(server: &ServerConfig) -> bool {
    server.host.parse::<std::net::IpAddr>().is_err()
}

/// The addresses of every `servers` entry, in order: an IP as written, a name as resolved.
/// A name that does not resolve has no address (and is logged); `last` gives the addresses
/// to keep for a name whose lookup fails.
pub async fn resolve_all(
    cfg: &UpstreamConfig,
    resolver: &Resolver,
    last: Option<&[Vec<SocketAddr>]>,
    failing: &mut [bool],
) -> Vec<Vec<SocketAddr>> {
    let mut all = Vec::with_capacity(cfg.servers.len());
    for (i, server) in cfg.servers.iter().enumerate() {
        if let Ok(ip) = server.host.parse::<std::net::IpAddr>() {
            all.push(vec![SocketAddr::new(ip, server.port)]);
            continue;
        }
        let kept = last.and_then(|l| l.get(i)).cloned().unwrap_or_default();
        match resolver
            .lookup(&server.host, server.port, cfg.connect_timeout)
            .await
        {
            Ok(addrs) => {
                if failing.get(i).copied().unwrap_or(false) {
                    tracing::info!(upstream = %cfg.name, server = %server.addr, addrs = ?addrs, "resolves again");
                }
                if let Some(f) = failing.get_mut(i) {
                    *f = false;
                }
                all.push(addrs);
            }
            Err(err) => {
                if !failing.get(i).copied().unwrap_or(false) {
                    tracing::warn!(
                        upstream = %cfg.name,
                        server = %server.addr,
                        cause = %err,
                        kept = ?kept,
                        "cannot resolve; keeping the last known addresses"
                    );
                }
                if let Some(f) = failing.get_mut(i) {
                    *f = true;
                }
                all.push(kept);
            }
        }
    }
    all
}

/// Re-resolves one pool's names every `resolve_interval` while its handle lives.
#[derive(Debug)]
pub struct Refresher {
    _stop: tokio_util::sync::DropGuard,
}

impl Refresher {
    /// Starts refreshing `handle`, whose current snapshot was built from `addrs`.
    pub fn spawn(
        handle: &Arc<PoolHandle>,
        cfg: UpstreamConfig,
        resolver: Resolver,
        registry: Arc<Registry>,
        addrs: Vec<Vec<SocketAddr>>,
        failing: Vec<bool>,
    ) -> Refresher {
        let stop = tokio_util::sync::CancellationToken::new();
        let weak = Arc::downgrade(handle);
        let token = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = token.cancelled() => {}
                () = refresh(weak, cfg, resolver, registry, addrs, failing) => {}
            }
        });
        Refresher {
            _stop: stop.drop_guard(),
        }
    }
}

async fn refresh(
    handle: Weak<PoolHandle>,
    cfg: UpstreamConfig,
    resolver: Resolver,
    registry: Arc<Registry>,
    mut last: Vec<Vec<SocketAddr>>,
    mut failing: Vec<bool>,
) {
    loop {
        tokio::time::sleep(cfg.resolve_interval).await;
        let next = resolve_all(&cfg, &resolver, Some(&last), &mut failing).await;
        if next == last {
            continue;
        }
        let Some(handle) = handle.upgrade() else {
            return;
        };
        match Pool::build(&cfg, &registry, &next) {
            Ok(pool) => {
                let pool = Arc::new(pool);
                let before = handle.current.swap(Arc::clone(&pool));
                let old: Vec<_> = before.states().collect();
                let now: Vec<_> = pool.states().collect();
                registry.retire(&old, &now);
                tracing::info!(upstream = %cfg.name, servers = pool.servers.len(), "addresses changed");
                handle.remember(&cfg, &next);
                last = next;
            }
            Err(err) => {
                tracing::warn!(upstream = %cfg.name, cause = %err, "cannot rebuild the pool")
            }
        }
    }
}
