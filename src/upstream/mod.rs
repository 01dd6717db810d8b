//! Upstream pools: the servers of each `[upstream.NAME]`, their live state, and the order in
//! which a request tries them.
//!
//! A [`Pool`] is immutable once built (at start, and later on reload); the only mutable parts
//! are each server's [`state::ServerState`] (health, open counts, idle connections), which
//! outlives the snapshot, so the request path reads a snapshot plus atomics and never
//! waits on a pool-wide lock. A [`PoolHandle`] holds a pool's current snapshot; reloads
//! and [`resolve`] (host names resolved again every `resolve_interval`) replace it whole,
//! and [`state::Registry`] hands each new snapshot the state of every server it keeps.

pub mod balance;
pub mod body;
pub mod check;
pub mod connect;
pub mod health;
pub mod resolve;
pub mod ring;
pub mod state;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

use crate::config::{Balance, HashKey, UpstreamConfig};
use crate::tls::client::UpstreamTls;
use balance::Ring;
use connect::{ConnectError, IdlePool, Sender, ServerTls};
use health::FailPolicy;
pub use state::{Active, Registry, ServerKey, ServerState};

/// One reachable address of a pool. A `servers` entry whose hostname resolves to several
/// addresses becomes several `Server`s sharing its weight and backup flag.
#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
    /// `host:port` as written in the config; sent as Host with `host_header = "upstream"`.
    pub authority: HeaderValue,
    /// For logs and metrics: the written `host:port`, plus the address when it differs.
    pub label: Arc<str>,
    /// The server's weight, for `least_conn`'s active/weight comparison.
    weight: u32,
    /// Tried only when no primary is available.
    pub backup: bool,
    /// How to talk TLS to it (`tls` on its pool), with the name it must prove.
    pub tls: Option<ServerTls>,
    /// The pool's passive-health rule, from the current config.
    policy: FailPolicy,
    /// What is known about the server, kept across reloads.
    pub state: Arc<ServerState>,
}

impl Server {
    /// Counts a request or tunnel as open on this server until the guard is dropped.
    pub fn open(&self) -> Active {
        self.state.open()
    }

    /// Whether the server may be picked now: active checks (if any) let it in and passive
    /// health has not taken it out.
    pub fn is_available(&self) -> bool {
        !self.state.is_draining()
            && self.state.checked_up.load(Ordering::Relaxed)
            && self.state.health.is_available()
    }

    /// Records a failure to reach the server; true when it took the server out.
    pub fn record_failure(&self) -> bool {
        self.state.health.record_failure(self.policy)
    }

    /// Requests in flight and tunnels open on this server.
    pub fn active(&self) -> usize {
        self.state.active()
    }

    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// Whether the server may be picked, and if not, which health rule took it out.
    pub fn health(&self) -> Health {
        if self.state.is_draining() {
            Health::Draining
        } else if !self.state.checked_up.load(Ordering::Relaxed) {
            Health::DownActive
        } else if !self.state.health.is_available() {
            Health::DownPassive
        } else {
            Health::Up
        }
    }

    /// Idle keep-alive connections to this server.
    pub fn idle(&self) -> &Arc<IdlePool> {
        &self.state.idle
    }

    /// An idle pooled connection, or a new one.
    ///
    /// # Errors
    /// The server could not be reached; the caller records the failure and moves on.
    pub async fn connection(&self, connect_timeout: Duration) -> Result<Sender, ConnectError> {
        if let Some(sender) = self.state.idle.take() {
            return Ok(sender);
        }
        connect::open(self.addr, connect_timeout, self.tls.as_ref()).await
    }
}

/// A server's health as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Up,
    /// Taken out by passive health (`max_fails` within `fail_timeout`).
    DownPassive,
    /// Taken out by active health checks.
    DownActive,
    /// Marked `drain` in the config: no new requests or tunnels; its tunnels are closing.
    Draining,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::DownPassive => "down_passive",
            Health::DownActive => "down_active",
            Health::Draining => "draining",
        }
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
    balance: Balance,
    /// What `balance = "hash"` hashes.
    pub hash_key: HashKey,
    /// The primaries on the consistent-hash circle (empty unless `balance = "hash"`).
    hash_ring: ring::HashRing,
    primaries: Ring,
    backups: Ring,
    /// Server indices of the primaries and of the backups, for `least_conn`'s scans.
    primary_indices: Vec<usize>,
    backup_indices: Vec<usize>,
    /// The active health checkers, cancelled when the pool is dropped.
    _checkers: Option<check::Checkers>,
}

/// Why a pool could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("upstream {pool}: {source}")]
    Tls {
        pool: String,
        #[source]
        source: crate::tls::TlsSetupError,
    },
    #[error("upstream {pool}: {server} is not a name TLS can verify (set tls.server_name)")]
    TlsName { pool: String, server: String },
}

/// A pool as routes see it: its current snapshot, replaced whole when its host names
/// resolve to other addresses (requests already under way keep the snapshot they started
/// with).
#[derive(Debug)]
pub struct PoolHandle {
    pub current: arc_swap::ArcSwap<Pool>,
    /// Re-resolves the pool's host names; stopped when the handle is dropped.
    refresher: std::sync::OnceLock<resolve::Refresher>,
    /// The last known addresses of each `servers` entry, by its text (`app.internal:3000`),
    /// so that a reload whose lookup fails keeps them, as re-resolution does.
    known: std::sync::Mutex<std::collections::HashMap<String, Vec<SocketAddr>>>,
}

impl PoolHandle {
    /// Resolves the pool's host names (each bounded by `connect_timeout`), builds its
    /// first snapshot, and starts re-resolving every `resolve_interval` if it has names.
    /// A name that does not resolve now leaves its server without addresses until it does.
    ///
    /// # Errors
    /// The pool's TLS setup failed.
    pub async fn build(
        cfg: &UpstreamConfig,
        registry: &Arc<Registry>,
        resolver: &resolve::Resolver,
        previous: Option<&PoolHandle>,
    ) -> Result<Arc<PoolHandle>, PoolError> {
        let mut failing = vec![false; cfg.servers.len()];
        let last: Option<Vec<Vec<SocketAddr>>> =
            previous.map(|p| cfg.servers.iter().map(|s| p.known_addrs(&s.addr)).collect());
        let addrs = resolve::resolve_all(cfg, resolver, last.as_deref(), &mut failing).await;
        let pool = Pool::build(cfg, registry, &addrs)?;
        let handle = Arc::new(PoolHandle {
            current: arc_swap::ArcSwap::from_pointee(pool),
            refresher: std::sync::OnceLock::new(),
            known: std::sync::Mutex::default(),
        });
        handle.remember(cfg, &addrs);
        if cfg.servers.iter().any(resolve::is_name) {
            let refresher = resolve::Refresher::spawn(
                &handle,
                cfg.clone(),
                resolver.clone(),
                Arc::clone(registry),
                addrs,
                failing,
            );
            let _ = handle.refresher.set(refresher);
        }
        Ok(handle)
    }

    /// The last known addresses of the `servers` entry written `addr`.
    fn known_addrs(&self, addr: &str) -> Vec<SocketAddr> {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known.get(addr).cloned().unwrap_or_default()
    }

    /// Records `addrs[i]` as the addresses of `cfg.servers[i]`.
    pub(crate) fn remember(&self, cfg: &UpstreamConfig, addrs: &[Vec<SocketAddr>]) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known.clear();
        for (server, addrs) in cfg.servers.iter().zip(addrs) {
            known.insert(server.addr.clone(), addrs.clone());
        }
    }

    /// The `servers` entries whose host names resolve to no address now.
    pub fn unresolved(&self) -> Vec<String> {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let mut names: Vec<String> = known
            .iter()
            .filter(|(_, addrs)| addrs.is_empty())
            .map(|(name, _)| name.clone())
            .collect();
        names.sort();
        names
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<Pool> {
        self.current.load_full()
    }
}

impl Pool {
    /// Builds a snapshot of the pool with `addrs[i]` the addresses of `cfg.servers[i]`,
    /// taking over each kept server's state from `registry`.
    ///
    /// # Errors
    /// The pool's TLS setup failed.
    pub fn build(
        cfg: &UpstreamConfig,
        registry: &Registry,
        addrs: &[Vec<SocketAddr>],
    ) -> Result<Pool, PoolError> {
        let name: Arc<str> = Arc::from(cfg.name.as_str());
        let policy = FailPolicy::new(cfg.max_fails, cfg.fail_timeout);
        let mut servers = Vec::new();
        let mut primaries = Vec::new();
        let mut backups = Vec::new();
        // The hash input per primary: as written for an IP, as resolved for a name.
        let mut ring_names: Vec<(usize, u32, String)> = Vec::new();
        let tls = match &cfg.tls {
            Some(tls) => Some(UpstreamTls::new(tls).map_err(|source| PoolError::Tls {
                pool: cfg.name.clone(),
                source,
            })?),
            None => None,
        };
        for (server, resolved) in cfg.servers.iter().zip(addrs) {
            let server_tls = match &tls {
                Some(tls) => Some(ServerTls {
                    tls: tls.clone(),
                    name: tls
                        .name_for(&server.host)
                        .ok_or_else(|| PoolError::TlsName {
                            pool: cfg.name.clone(),
                            server: server.addr.clone(),
                        })?,
                }),
                None => None,
            };
            for &addr in resolved {
                let index = servers.len();
                let label: Arc<str> = if server.host.parse::<std::net::IpAddr>().is_ok() {
                    Arc::from(server.addr.as_str())
                } else {
                    Arc::from(format!("{} ({addr})", server.addr).as_str())
                };
                let state = registry.state(&name, addr, &label, cfg.keepalive);
                state.set_drain(server.drain, cfg.drain_timeout);
                servers.push(Arc::new(Server {
                    addr,
                    authority: HeaderValue::from_str(&server.addr)
                        .unwrap_or_else(|_| HeaderValue::from_static("invalid")),
                    label,
                    weight: server.weight.max(1),
                    backup: server.backup,
                    tls: server_tls.clone(),
                    policy,
                    state,
                }));
                if server.backup {
                    backups.push((index, server.weight));
                } else {
                    primaries.push((index, server.weight));
                    let name = if server.host.parse::<std::net::IpAddr>().is_ok() {
                        server.addr.clone()
                    } else {
                        addr.to_string()
                    };
                    ring_names.push((index, server.weight, name));
                }
            }
        }
        let hash_ring = if cfg.balance == Balance::Hash {
            let members: Vec<ring::Member<'_>> = ring_names
                .iter()
                .map(|(index, weight, name)| {
                    let (host, port) = name.rsplit_once(':').unwrap_or((name.as_str(), ""));
                    ring::Member {
                        index: *index,
                        weight: *weight,
                        host,
                        port,
                    }
                })
                .collect();
            ring::HashRing::new(&members)
        } else {
            ring::HashRing::default()
        };
        let checkers = cfg.health_check.as_ref().map(|health| {
            let stop = tokio_util::sync::CancellationToken::new();
            for server in &servers {
                check::spawn(server, Arc::clone(&name), health.clone(), stop.clone());
            }
            check::Checkers::new(stop)
        });
        Ok(Pool {
            name,
            servers,
            connect_timeout: cfg.connect_timeout,
            keepalive: cfg.keepalive > 0,
            balance: cfg.balance,
            hash_key: cfg.hash_key.clone(),
            hash_ring,
            primary_indices: primaries.iter().map(|&(i, _)| i).collect(),
            backup_indices: backups.iter().map(|&(i, _)| i).collect(),
            _checkers: checkers,
            primaries: Ring::new(&primaries),
            backups: Ring::new(&backups),
        })
    }

    /// Each server's registry key and state, for [`Registry::retire`].
    pub fn states(&self) -> impl Iterator<Item = (ServerKey, Arc<ServerState>)> + '_ {
        self.servers
            .iter()
            .map(|s| ((Arc::clone(&self.name), s.addr), Arc::clone(&s.state)))
    }

    /// `round_robin`, `least_conn` or `hash`.
    pub fn balance_name(&self) -> &'static str {
        match self.balance {
            Balance::RoundRobin => "round_robin",
            Balance::LeastConn => "least_conn",
            Balance::Hash => "hash",
        }
    }

    /// Whether picks depend on a per-request key (`balance = "hash"`).
    pub fn hashes(&self) -> bool {
        self.balance == Balance::Hash
    }

    /// The servers this request may try, in order, each at most once: the available
    /// primaries, then the available backups. With `round_robin` the order starts at the
    /// next position of the weighted ring; with `least_conn` each next candidate is the one
    /// with the fewest open requests and tunnels for its weight, ties going round robin;
    /// with `hash` it is the consistent-hash circle from `key` (a request without the key
    /// is balanced round robin). Servers taken out by passive health are skipped; an empty
    /// sequence means `502`.
    pub fn candidates(&self, key: Option<u32>) -> Candidates<'_> {
        let order = match (self.balance, key) {
            (Balance::LeastConn, _) => Order::LeastConn {
                start: self.primaries.next_start(),
                seen: balance::Seen::default(),
                in_backups: false,
            },
            (Balance::Hash, Some(key)) if !self.hash_ring.is_empty() => Order::Hash {
                primaries: self.hash_ring.walk(key),
                backups: None,
            },
            _ => Order::RoundRobin {
                primaries: self.primaries.walk(self.primaries.next_start()),
                backups: None,
            },
        };
        Candidates { pool: self, order }
    }
}

/// Iterator of [`Pool::candidates`].
pub struct Candidates<'a> {
    pool: &'a Pool,
    order: Order<'a>,
}

enum Order<'a> {
    Hash {
        primaries: ring::HashWalk<'a>,
        backups: Option<balance::RingWalk<'a>>,
    },
    RoundRobin {
        primaries: balance::RingWalk<'a>,
        backups: Option<balance::RingWalk<'a>>,
    },
    LeastConn {
        /// Rotates which of equally loaded servers goes first.
        start: usize,
        seen: balance::Seen,
        in_backups: bool,
    },
}

impl<'a> Iterator for Candidates<'a> {
    type Item = &'a Arc<Server>;

    fn next(&mut self) -> Option<&'a Arc<Server>> {
        let pool = self.pool;
        match &mut self.order {
            Order::Hash { primaries, backups } => {
                first_available(pool, primaries).or_else(|| next_backup(pool, backups))
            }
            Order::RoundRobin { primaries, backups } => {
                first_available(pool, primaries).or_else(|| next_backup(pool, backups))
            }
            Order::LeastConn {
                start,
                seen,
                in_backups,
            } => {
                if !*in_backups {
                    if let Some(server) = least_loaded(pool, &pool.primary_indices, *start, seen) {
                        return Some(server);
                    }
                    *in_backups = true;
                }
                least_loaded(pool, &pool.backup_indices, *start, seen)
            }
        }
    }
}

/// The next server from `walk` that passive health allows.
fn first_available<'a>(
    pool: &'a Pool,
    walk: &mut impl Iterator<Item = usize>,
) -> Option<&'a Arc<Server>> {
    walk.map(|index| &pool.servers[index])
        .find(|server| server.is_available())
}

/// The next available backup, round robin; the walk starts on first use.
fn next_backup<'a>(
    pool: &'a Pool,
    backups: &mut Option<balance::RingWalk<'a>>,
) -> Option<&'a Arc<Server>> {
    if pool.backups.is_empty() {
        return None;
    }
    let walk = backups.get_or_insert_with(|| pool.backups.walk(pool.backups.next_start()));
    first_available(pool, walk)
}

/// The available server among `indices` not yet `seen` with the fewest open requests and
/// tunnels per unit of weight; among equals, the first from `start` round the list.
fn least_loaded<'a>(
    pool: &'a Pool,
    indices: &[usize],
    start: usize,
    seen: &mut balance::Seen,
) -> Option<&'a Arc<Server>> {
    let mut best: Option<(usize, &'a Arc<Server>)> = None;
    for step in 0..indices.len() {
        let index = indices[(start + step) % indices.len()];
        let server = &pool.servers[index];
        if seen.contains(index) || !server.is_available() {
            continue;
        }
        let better = match best {
            None => true,
            // a/wa < b/wb without division: a*wb < b*wa.
            Some((_, current)) => {
                (server.active() as u128) * u128::from(current.weight)
                    < (current.active() as u128) * u128::from(server.weight)
            }
        };
        if better {
            best = Some((index, server));
        }
    }
    let (index, server) = best?;
    seen.insert(index);
    Some(server)
}
