//! Connection limits: `max_connections` (all listeners together) and
//! `max_connections_per_ip`. A connection holds an owned [`ConnPermit`] for its whole life,
//! idle keep-alive time and tunnel included; dropping it frees the slot.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The limits, shared by every listener.
#[derive(Debug)]
pub struct Limits {
    global: Arc<Semaphore>,
    per_ip: Option<PerIp>,
}

/// Open connections per client address. Touched once per accepted connection and once when
/// it closes; never per request.
type OpenPerIp = Arc<Mutex<HashMap<IpAddr, usize>>>;

#[derive(Debug)]
struct PerIp {
    max: usize,
    open: OpenPerIp,
}

/// A connection's place under the limits.
#[derive(Debug)]
pub struct ConnPermit {
    _global: OwnedSemaphorePermit,
    per_ip: Option<(IpAddr, OpenPerIp)>,
}

impl Limits {
    pub fn new(max_connections: usize, max_per_ip: Option<usize>) -> Limits {
        Limits {
            global: Arc::new(Semaphore::new(max_connections.min(Semaphore::MAX_PERMITS))),
            per_ip: max_per_ip.map(|max| PerIp {
                max,
                open: Arc::new(Mutex::new(HashMap::new())),
            }),
        }
    }

    /// A permit for a new connection from `ip`, or `None` when a limit is reached.
    pub fn admit(&self, ip: IpAddr) -> Option<ConnPermit> {
        let global = Arc::clone(&self.global).try_acquire_owned().ok()?;
        let per_ip = match &self.per_ip {
            None => None,
            Some(limit) => {
                let mut open = limit.open.lock().unwrap_or_else(|p| p.into_inner());
                let count = open.entry(ip).or_insert(0);
                if *count >= limit.max {
                    return None;
                }
                *count += 1;
                Some((ip, Arc::clone(&limit.open)))
            }
        };
        Some(ConnPermit {
            _global: global,
            per_ip,
        })
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        if let Some((ip, open)) = &self.per_ip {
            let mut open = open.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(count) = open.get_mut(ip) {
                *count -= 1;
                if *count == 0 {
                    open.remove(ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_limit() {
        let limits = Limits::new(2, None);
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
        let limits = Limits::new(100, Some(1));
        let one: IpAddr = [127, 0, 0, 1].into();
        let two: IpAddr = [127, 0, 0, 2].into();
        let a = limits.admit(one);
        assert!(a.is_some());
        assert!(limits.admit(one).is_none());
        assert!(limits.admit(two).is_some());
        drop(a);
        assert!(limits.admit(one).is_some());
    }
}
