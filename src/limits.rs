//! Connection limits: `max_connections` (all listeners together), `max_connections_per_ip`
//! and `max_tunnels_per_ip`.
//!
//! One [`Limits`] lives as long as the process: a reload changes its maxima in place, so
//! the connections and tunnels opened before a reload still count against the new limits
//! (a fresh set of counters per reload would let each SIGHUP admit another full load).
//! A connection holds a [`ConnPermit`] for its whole life, idle keep-alive time and tunnel
//! included; a tunnel also holds a [`TunnelPermit`]. Dropping a permit frees its slot.
//!
//! Client addresses are counted per IPv4 address and per IPv6 `/64`: one IPv6 host
//! usually holds a whole `/64`, and counting its addresses one by one would give it 2^64
//! separate limits. Counts are kept per address even with no per-IP limit set, so that a
//! reload that sets one sees the connections already open.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// No limit, for the per-IP maxima.
const UNLIMITED: usize = usize::MAX;

/// The limits and the counts under them, shared by every listener and kept across reloads.
#[derive(Debug)]
pub struct Limits {
    max_connections: AtomicUsize,
    max_per_ip: AtomicUsize,
    max_tunnels_per_ip: AtomicUsize,
    open: AtomicUsize,
    /// Open connections per client key. Touched once when a connection is accepted and once
    /// when it closes; never per request.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Open tunnels per client key. Touched once per handshake and once per tunnel close.
    tunnels_per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// A connection's place under the limits.
#[derive(Debug)]
pub struct ConnPermit {
    limits: Arc<Limits>,
    key: IpAddr,
}

/// A tunnel's place under `max_tunnels_per_ip`.
#[derive(Debug)]
pub struct TunnelPermit {
    limits: Arc<Limits>,
    key: IpAddr,
}

/// The address the per-IP limits count `ip` under: an IPv4 address (also when written as
/// an IPv4-mapped IPv6 address) or an IPv6 `/64`.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !u128::from(u64::MAX);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

impl Limits {
    pub fn new(
        max_connections: usize,
        max_per_ip: Option<usize>,
        max_tunnels_per_ip: Option<usize>,
    ) -> Arc<Limits> {
        let limits = Arc::new(Limits {
            max_connections: AtomicUsize::new(0),
            max_per_ip: AtomicUsize::new(0),
            max_tunnels_per_ip: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            tunnels_per_ip: Mutex::new(HashMap::new()),
        });
        limits.set(max_connections, max_per_ip, max_tunnels_per_ip);
        limits
    }

    /// Takes new maxima (a reload). Connections and tunnels already open keep counting; if
    /// more are open than a new maximum allows, new ones are refused until enough close.
    pub fn set(
        &self,
        max_connections: usize,
        max_per_ip: Option<usize>,
        max_tunnels_per_ip: Option<usize>,
    ) {
        self.max_connections
            .store(max_connections, Ordering::Relaxed);
        self.max_per_ip
            .store(max_per_ip.unwrap_or(UNLIMITED), Ordering::Relaxed);
        self.max_tunnels_per_ip
            .store(max_tunnels_per_ip.unwrap_or(UNLIMITED), Ordering::Relaxed);
    }

    /// A permit for a new connection from `ip`, or `None` when a limit is reached.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ConnPermit> {
        let max = self.max_connections.load(Ordering::Relaxed);
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < max).then_some(open + 1)
            })
            .ok()?;
        let key = client_key(ip);
        if !take(&self.per_ip, key, self.max_per_ip.load(Ordering::Relaxed)) {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ConnPermit {
            limits: Arc::clone(self),
            key,
        })
    }

    /// A permit for a new tunnel from `ip`, or `None` at `max_tunnels_per_ip`.
    pub fn admit_tunnel(self: &Arc<Self>, ip: IpAddr) -> Option<TunnelPermit> {
        let key = client_key(ip);
        let max = self.max_tunnels_per_ip.load(Ordering::Relaxed);
        take(&self.tunnels_per_ip, key, max).then(|| TunnelPermit {
            limits: Arc::clone(self),
            key,
        })
    }

    /// `max_connections` as configured now.
    pub fn max_connections(&self) -> usize {
        self.max_connections.load(Ordering::Relaxed)
    }

    /// Client connections open now, all listeners together.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// Counts one more for `key` unless it already has `max`.
fn take(counts: &Mutex<HashMap<IpAddr, usize>>, key: IpAddr, max: usize) -> bool {
    let mut counts = counts.lock().unwrap_or_else(|p| p.into_inner());
    let count = counts.entry(key).or_insert(0);
    if *count >= max {
        if *count == 0 {
            counts.remove(&key);
        }
        return false;
    }
    *count += 1;
    true
}

fn give_back(counts: &Mutex<HashMap<IpAddr, usize>>, key: IpAddr) {
    let mut counts = counts.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(count) = counts.get_mut(&key) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            counts.remove(&key);
        }
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        give_back(&self.limits.per_ip, self.key);
        self.limits.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for TunnelPermit {
    fn drop(&mut self) {
        give_back(&self.limits.tunnels_per_ip, self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_limit() {
        let limits = Limits::new(2, None, None);
        let ip: IpAddr = [127, 0, 0, 1].into();
        let a = limits.admit(ip);
        let b = limits.admit(ip);
        assert!(a.is_some() && b.is_some());
        assert!(limits.admit(ip).is_none());
        drop(a);
        assert!(limits.admit(ip).is_some());
    }

    #[test]
    fn per_ip_limit() {
        let limits = Limits::new(100, Some(1), None);
        let one: IpAddr = [127, 0, 0, 1].into();
        let two: IpAddr = [127, 0, 0, 2].into();
        let a = limits.admit(one);
        assert!(a.is_some());
        assert!(limits.admit(one).is_none());
        assert_eq!(
            limits.open(),
            1,
            "a refused connection holds no global slot"
        );
        assert!(limits.admit(two).is_some());
        drop(a);
        assert!(limits.admit(one).is_some());
    }

    #[test]
    fn new_maxima_count_what_is_already_open() {
        let limits = Limits::new(4, None, None);
        let ip: IpAddr = [127, 0, 0, 1].into();
        let held: Vec<_> = (0..4).filter_map(|_| limits.admit(ip)).collect();
        assert_eq!(held.len(), 4);
        limits.set(4, None, None);
        assert!(limits.admit(ip).is_none(), "a reload frees no slot");
        limits.set(8, Some(4), None);
        assert!(
            limits.admit(ip).is_none(),
            "a per-IP limit set later counts the open connections"
        );
        drop(held);
        assert_eq!(limits.open(), 0);
    }

    #[test]
    fn ipv6_clients_count_per_64() {
        let limits = Limits::new(100, Some(1), Some(1));
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap_or(IpAddr::from([0u8; 16]));
        let b: IpAddr = "2001:db8:1:2:ffff::9"
            .parse()
            .unwrap_or(IpAddr::from([0u8; 16]));
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap_or(IpAddr::from([0u8; 16]));
        let _first = limits.admit(a);
        assert!(limits.admit(b).is_none(), "same /64");
        assert!(limits.admit(c).is_some(), "another /64");
        let _tunnel = limits.admit_tunnel(a);
        assert!(limits.admit_tunnel(b).is_none());
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap_or(IpAddr::from([0u8; 16]));
        assert_eq!(client_key(mapped), IpAddr::from([10, 0, 0, 1]));
    }
}
