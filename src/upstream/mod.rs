//! Upstream pools: the servers of each `[upstream.NAME]`, their live state, and the order in
//! which a request tries them.
//!
//! A [`Pool`] is immutable once built (at start, and later on reload); the only mutable parts
//! are per-server atomics (health) and idle-connection lists, so the request path reads a
//! snapshot and never waits on a pool-wide lock.

pub mod balance;
pub mod connect;
pub mod health;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

use crate::config::{ServerConfig, UpstreamConfig};
use balance::Ring;
use connect::{ConnectError, IdlePool, Sender};
use health::PassiveHealth;

/// One reachable address of a pool. A `servers` entry whose hostname resolves to several
/// addresses becomes several `Server`s sharing its weight and backup flag.
#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
    /// `host:port` as written in the config; sent as Host with `host_header = "upstream"`.
    pub authority: HeaderValue,
    /// For logs and metrics: the written `host:port`, plus the address when it differs.
    pub label: Arc<str>,
    pub health: PassiveHealth,
    pub idle: Arc<IdlePool>,
}

impl Server {
    /// An idle pooled connection, or a new one.
    ///
    /// # Errors
    /// The server could not be reached; the caller records the failure and moves on.
    pub async fn connection(&self, connect_timeout: Duration) -> Result<Sender, ConnectError> {
        if let Some(sender) = self.idle.take() {
            return Ok(sender);
        }
        connect::open(self.addr, connect_timeout).await
    }
}

/// A named pool of servers with its balancing ring.
#[derive(Debug)]
pub struct Pool {
    pub name: Arc<str>,
    pub servers: Vec<Arc<Server>>,
    pub connect_timeout: Duration,
    /// `keepalive = 0`: every plain request carries `Connection: close` upstream.
    pub keepalive: bool,
    primaries: Ring,
    backups: Ring,
}

/// Why a pool could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("upstream {pool}: cannot resolve {server}: {source}")]
    Resolve {
        pool: String,
        server: String,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream {pool}: {server} resolves to no address")]
    NoAddress { pool: String, server: String },
}

impl Pool {
    /// Builds the pool, resolving hostnames once.
    ///
    /// # Errors
    /// A hostname does not resolve.
    pub async fn build(cfg: &UpstreamConfig) -> Result<Pool, PoolError> {
        let mut servers = Vec::new();
        let mut primaries = Vec::new();
        let mut backups = Vec::new();
        for server in &cfg.servers {
            for addr in resolve(cfg, server).await? {
                let index = servers.len();
                let label: Arc<str> = if server.host.parse::<std::net::IpAddr>().is_ok() {
                    Arc::from(server.addr.as_str())
                } else {
                    Arc::from(format!("{} ({addr})", server.addr).as_str())
                };
                servers.push(Arc::new(Server {
                    addr,
                    authority: HeaderValue::from_str(&server.addr)
                        .unwrap_or_else(|_| HeaderValue::from_static("invalid")),
                    label,
                    health: PassiveHealth::new(cfg.max_fails, cfg.fail_timeout),
                    idle: Arc::new(IdlePool::new(cfg.keepalive)),
                }));
                if server.backup {
                    backups.push((index, server.weight));
                } else {
                    primaries.push((index, server.weight));
                }
            }
        }
        Ok(Pool {
            name: Arc::from(cfg.name.as_str()),
            servers,
            connect_timeout: cfg.connect_timeout,
            keepalive: cfg.keepalive > 0,
            primaries: Ring::new(&primaries),
            backups: Ring::new(&backups),
        })
    }

    /// The servers this request may try, in order, each at most once: the available
    /// primaries from the next round-robin position, then the available backups.
    /// Servers taken out by passive health are skipped; an empty sequence means `502`.
    pub fn candidates(&self) -> Candidates<'_> {
        let primary_start = self.primaries.next_start();
        Candidates {
            pool: self,
            primaries: self.primaries.walk(primary_start),
            backups: None,
        }
    }
}

/// Iterator of [`Pool::candidates`].
pub struct Candidates<'a> {
    pool: &'a Pool,
    primaries: balance::RingWalk<'a>,
    backups: Option<balance::RingWalk<'a>>,
}

impl<'a> Iterator for Candidates<'a> {
    type Item = &'a Arc<Server>;

    fn next(&mut self) -> Option<&'a Arc<Server>> {
        for index in self.primaries.by_ref() {
            let server = &self.pool.servers[index];
            if server.health.is_available() {
                return Some(server);
            }
        }
        if self.pool.backups.is_empty() {
            return None;
        }
        let backups = self
            .backups
            .get_or_insert_with(|| self.pool.backups.walk(self.pool.backups.next_start()));
        for index in backups.by_ref() {
            let server = &self.pool.servers[index];
            if server.health.is_available() {
                return Some(server);
            }
        }
        None
    }
}

async fn resolve(
    cfg: &UpstreamConfig,
    server: &ServerConfig,
) -> Result<Vec<SocketAddr>, PoolError> {
    if let Ok(ip) = server.host.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, server.port)]);
    }
    let found = tokio::net::lookup_host((server.host.as_str(), server.port))
        .await
        .map_err(|source| PoolError::Resolve {
            pool: cfg.name.clone(),
            server: server.addr.clone(),
            source,
        })?;
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for addr in found {
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    if addrs.is_empty() {
        return Err(PoolError::NoAddress {
            pool: cfg.name.clone(),
            server: server.addr.clone(),
        });
    }
    Ok(addrs)
}
