//! Per-server state that outlives the pool snapshot it was first built with.
//!
//! A pool is rebuilt whole on every reload, but what sluice has learnt about a server must
//! not be forgotten with it: whether passive or active health took it out (and the active
//! checks' streaks), how many requests and tunnels it has open (for `least_conn`), and its
//! idle pooled connections. So that state lives in a [`ServerState`] kept in a
//! [`Registry`] keyed by pool name and address; each new snapshot takes over the state of
//! every server it keeps. A server that leaves its pool keeps its state only as long as
//! its open requests and tunnels do (they hold it through their [`Active`] guard), and its
//! idle connections are closed at once.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio_util::sync::CancellationToken;

use super::connect::IdlePool;
use super::health::HealthState;
use crate::metrics::Metrics;

/// What sluice knows about one server of one pool.
#[derive(Debug)]
pub struct ServerState {
    /// Passive health: when it is down until, and the failures counted so far.
    pub health: HealthState,
    /// Whether active health checks let it in (true until they say otherwise).
    pub checked_up: AtomicBool,
    /// Active checks passed and failed in a row.
    pub check_passes: AtomicU32,
    pub check_fails: AtomicU32,
    /// Requests in flight and tunnels open on it, for `least_conn`.
    active: AtomicUsize,
    /// Of `active`, the tunnels (for `/status`).
    tunnels: AtomicUsize,
    /// Idle keep-alive connections to it.
    pub idle: Arc<IdlePool>,
    /// `sluice_upstream_connect_errors_total` for this server, looked up once.
    pub connect_errors: Counter,
    /// `drain = true` in the current config: no new requests or tunnels.
    draining: AtomicBool,
    /// Cancelled when a drain starts; the server's tunnels wait on it.
    drain_signal: CancellationToken,
    /// The drain's `drain_timeout`, in milliseconds.
    drain_window_ms: AtomicU64,
}

impl ServerState {
    fn new(keepalive: usize, connect_errors: Counter) -> ServerState {
        ServerState {
            health: HealthState::default(),
            checked_up: AtomicBool::new(true),
            check_passes: AtomicU32::new(0),
            check_fails: AtomicU32::new(0),
            active: AtomicUsize::new(0),
            tunnels: AtomicUsize::new(0),
            idle: Arc::new(IdlePool::new(keepalive)),
            connect_errors,
            draining: AtomicBool::new(false),
            drain_signal: CancellationToken::new(),
            drain_window_ms: AtomicU64::new(0),
        }
    }

    /// Applies the config's `drain` flag: starting a drain signals every open tunnel on
    /// the server, which closes at a random moment within `window`. Unmarking the server
    /// lets new requests and tunnels in again; tunnels already told to close still do.
    pub fn set_drain(&self, drain: bool, window: Duration) {
        let ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        self.drain_window_ms.store(ms, Ordering::Relaxed);
        let was = self.draining.swap(drain, Ordering::Relaxed);
        if drain && !was {
            tracing::info!(window = ?window, "server draining: its tunnels close over the window");
            self.drain_signal.cancel();
        }
    }

    /// Whether the server is marked `drain`.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Requests in flight and tunnels open on this server.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Tunnels open on this server.
    pub fn tunnels(&self) -> usize {
        self.tunnels.load(Ordering::Relaxed)
    }

    /// Counts a request or tunnel as open until the guard is dropped.
    pub fn open(self: &Arc<Self>) -> Active {
        self.active.fetch_add(1, Ordering::Relaxed);
        Active {
            state: Arc::clone(self),
            tunnel: false,
        }
    }
}

/// One request or tunnel counted as open on a server until it is dropped. It holds the
/// server's state, not the snapshot: a tunnel opened before a reload releases its count on
/// the state the new snapshot uses.
#[derive(Debug)]
pub struct Active {
    state: Arc<ServerState>,
    tunnel: bool,
}

impl Active {
    /// Resolves when the server's drain says this tunnel's turn has come: at a moment
    /// picked at random within `drain_timeout` once the drain starts, so the clients do not
    /// all reconnect in the same second.
    pub async fn drained(&self) {
        self.state.drain_signal.cancelled().await;
        let window = self.state.drain_window_ms.load(Ordering::Relaxed);
        let at = if window == 0 { 0 } else { random_below(window) };
        tokio::time::sleep(Duration::from_millis(at)).await;
    }

    /// The request became a tunnel: it now counts as one too, until dropped.
    pub fn into_tunnel(mut self) -> Active {
        if !self.tunnel {
            self.state.tunnels.fetch_add(1, Ordering::Relaxed);
            self.tunnel = true;
        }
        self
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.state.active.fetch_sub(1, Ordering::Relaxed);
        if self.tunnel {
            self.state.tunnels.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A number in `0..bound` (`bound` > 0), from the standard library's randomly seeded
/// hasher: enough to spread closes, no cryptography needed.
fn random_below(bound: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(bound);
    hasher.finish() % bound
}

/// Which server of which pool.
pub type ServerKey = (Arc<str>, SocketAddr);

/// Every server's state, by pool and address; kept for the process's life.
#[derive(Debug, Default)]
pub struct Registry {
    /// Weak: a state lives as long as a snapshot or an open request holds it.
    states: Mutex<HashMap<ServerKey, Weak<ServerState>>>,
    /// Where each new server's connect-error counter comes from.
    metrics: Arc<Metrics>,
}

impl Registry {
    /// A registry whose servers count their connect errors in `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Registry {
        Registry {
            states: Mutex::default(),
            metrics,
        }
    }

    /// The metrics the servers count in.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The state of `addr` in `pool`: the one already known, or a fresh one (a server
    /// starts up, with nothing open). `keepalive` is the pool's current idle limit;
    /// `label` names the server in metrics.
    pub fn state(
        &self,
        pool: &Arc<str>,
        addr: SocketAddr,
        label: &Arc<str>,
        keepalive: usize,
    ) -> Arc<ServerState> {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let key = (Arc::clone(pool), addr);
        if let Some(state) = states.get(&key).and_then(Weak::upgrade) {
            state.idle.set_max(keepalive);
            return state;
        }
        let state = Arc::new(ServerState::new(
            keepalive,
            self.metrics.connect_errors(pool, label),
        ));
        states.insert(key, Arc::downgrade(&state));
        state
    }

    /// After a new snapshot took over: the servers of `before` that `now` no longer has
    /// get no new requests (they are in no snapshot) and their idle connections are
    /// closed; states nobody holds any more are forgotten.
    pub fn retire(
        &self,
        before: &[(ServerKey, Arc<ServerState>)],
        now: &[(ServerKey, Arc<ServerState>)],
    ) {
        let kept: HashSet<&ServerKey> = now.iter().map(|(k, _)| k).collect();
        for (key, state) in before {
            if !kept.contains(key) {
                state.idle.clear();
            }
        }
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states.retain(|_, state| state.strong_count() > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_server_keeps_its_state_and_a_new_one_starts_fresh() {
        let registry = Registry::default();
        let pool: Arc<str> = Arc::from("app");
        let a: SocketAddr = ([127, 0, 0, 1], 1).into();
        let b: SocketAddr = ([127, 0, 0, 1], 2).into();
        let label: Arc<str> = Arc::from("server");
        let first = registry.state(&pool, a, &label, 4);
        let guard = first.open();
        let again = registry.state(&pool, a, &label, 8);
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(again.active(), 1);
        let other = registry.state(&pool, b, &label, 4);
        assert_eq!(other.active(), 0);
        drop(guard);
        assert_eq!(first.active(), 0);
        let before = vec![
            ((Arc::clone(&pool), a), first),
            ((Arc::clone(&pool), b), other),
        ];
        drop(again);
        registry.retire(&before, &[]);
        drop(before);
        registry.retire(&[], &[]);
        let fresh = registry.state(&pool, a, &label, 4);
        assert_eq!(fresh.active(), 0);
    }
}
