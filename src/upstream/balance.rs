//! Choosing servers: weighted round robin over an immutable ring.
//!
//! The ring is built once per pool (at start or reload) with nginx's *smooth* weighted
//! round robin, so weights 3:1 give `A A B A`, not `A A A B`: load spreads evenly in time.
//! A pick is one atomic increment; no lock is taken on the request path.

use std::sync::atomic::{AtomicUsize, Ordering};

/// A smooth weighted round-robin sequence of server indices, walked by an atomic cursor.
#[derive(Debug)]
pub struct Ring {
    /// Server indices (into the pool's server list), `sum(weights)` long.
    order: Vec<usize>,
    cursor: AtomicUsize,
}

impl Ring {
    /// Builds the ring for `(server index, weight)` pairs. Weights of 0 are treated as 1.
    pub fn new(members: &[(usize, u32)]) -> Ring {
        let total: i64 = members.iter().map(|&(_, w)| i64::from(w.max(1))).sum();
        let mut current = vec![0i64; members.len()];
        let mut order = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        for _ in 0..total {
            // nginx's smooth WRR: everyone gains its weight, the leader pays the total.
            let mut best = 0;
            for (i, &(_, w)) in members.iter().enumerate() {
                current[i] += i64::from(w.max(1));
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            order.push(members[best].0);
        }
        Ring {
            order,
            cursor: AtomicUsize::new(0),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Where this pick starts in the ring; every call advances the shared cursor by one.
    pub fn next_start(&self) -> usize {
        if self.order.is_empty() {
            return 0;
        }
        self.cursor.fetch_add(1, Ordering::Relaxed) % self.order.len()
    }

    /// The server indices from `start` round the ring, each at most once, in ring order.
    pub fn walk(&self, start: usize) -> RingWalk<'_> {
        RingWalk {
            ring: self,
            start,
            step: 0,
            seen: Seen::default(),
        }
    }
}

/// Iterator of [`Ring::walk`].
pub struct RingWalk<'a> {
    ring: &'a Ring,
    start: usize,
    step: usize,
    seen: Seen,
}

impl Iterator for RingWalk<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let len = self.ring.order.len();
        while self.step < len {
            let index = self.ring.order[(self.start + self.step) % len];
            self.step += 1;
            if self.seen.insert(index) {
                return Some(index);
            }
        }
        None
    }
}

/// A set of server indices that allocates only for pools of more than 128 servers.
#[derive(Debug, Default)]
pub struct Seen {
    small: u128,
    large: Vec<usize>,
}

impl Seen {
    pub fn contains(&self, index: usize) -> bool {
        if index < 128 {
            self.small & (1u128 << index) != 0
        } else {
            self.large.contains(&index)
        }
    }

    /// Adds `index`; false if it was there already.
    pub fn insert(&mut self, index: usize) -> bool {
        if index < 128 {
            let bit = 1u128 << index;
            let fresh = self.small & bit == 0;
            self.small |= bit;
            fresh
        } else if self.large.contains(&index) {
            false
        } else {
            self.large.push(index);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_weights_alternate() {
        let ring = Ring::new(&[(0, 1), (1, 1)]);
        let picks: Vec<usize> = (0..4)
            .map(|_| ring.walk(ring.next_start()).next().unwrap_or(99))
            .collect();
        assert_eq!(picks, vec![0, 1, 0, 1]);
    }

    #[test]
    fn weights_are_smooth() {
        let ring = Ring::new(&[(0, 3), (1, 1)]);
        assert_eq!(ring.order, vec![0, 0, 1, 0]);
        let ring = Ring::new(&[(0, 5), (1, 1), (2, 1)]);
        assert_eq!(ring.order, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn a_walk_yields_every_server_once() {
        let ring = Ring::new(&[(0, 3), (1, 1), (2, 2)]);
        for start in 0..6 {
            let mut all: Vec<usize> = ring.walk(start).collect();
            all.sort_unstable();
            assert_eq!(all, vec![0, 1, 2], "start {start}");
        }
    }

    #[test]
    fn seen_handles_large_indices() {
        let mut seen = Seen::default();
        assert!(seen.insert(200));
        assert!(!seen.insert(200));
        assert!(seen.insert(3));
        assert!(!seen.insert(3));
    }
}
