//! Consistent hashing for `balance = "hash"`, built exactly as nginx builds
//! `hash $key consistent` (ngx_http_upstream_hash_module), so that independent sluice
//! instances (and nginx, given the same server list) send the same key to the same server:
//!
//! - each server gets `160 × weight` points on a 32-bit circle; point `j` is the CRC-32 of
//!   `host`, a NUL byte, `port`, and the previous point's hash as 4 little-endian bytes
//!   (0 for the first);
//! - a key is placed at `crc32(key)`; its server is the first point at or after it, going
//!   round the circle, and failover continues round the circle to the next *other* server.
//!
//! Adding or removing a server moves only the keys on its own arcs.

use http::header::COOKIE;
use http::HeaderMap;

use crate::config::HashKey;
use crate::upstream::balance::Seen;

/// Points per unit of weight, as nginx.
const POINTS_PER_WEIGHT: u32 = 160;

/// The circle: `(hash, server index)` sorted by hash.
#[derive(Debug, Default)]
pub struct HashRing {
    points: Vec<(u32, usize)>,
}

/// One server to place: its index in the pool, its weight, and its `host` and `port` as
/// they name it (the hash input).
pub struct Member<'a> {
    pub index: usize,
    pub weight: u32,
    pub host: &'a str,
    pub port: &'a str,
}

impl HashRing {
    pub fn new(members: &[Member<'_>]) -> HashRing {
        let mut points = Vec::new();
        for member in members {
            let mut base = crc32fast::Hasher::new();
            base.update(member.host.as_bytes());
            base.update(&[0]);
            base.update(member.port.as_bytes());
            let mut previous: u32 = 0;
            for _ in 0..member.weight.max(1).saturating_mul(POINTS_PER_WEIGHT) {
                let mut hasher = base.clone();
                hasher.update(&previous.to_le_bytes());
                let hash = hasher.finalize();
                points.push((hash, member.index));
                previous = hash;
            }
        }
        // Equal hashes (vanishingly rare) are ordered by server index, so every instance
        // breaks the tie the same way.
        points.sort_unstable();
        HashRing { points }
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The servers for `key_hash`, each once, in circle order from the key's place.
    pub fn walk(&self, key_hash: u32) -> HashWalk<'_> {
        let start = self.points.partition_point(|&(hash, _)| hash < key_hash);
        HashWalk {
            ring: self,
            start,
            step: 0,
            seen: Seen::default(),
        }
    }
}

/// The hash of a request's key, as nginx computes it.
pub fn key_hash(key: &[u8]) -> u32 {
    crc32fast::hash(key)
}

/// The hash of what `hash_key` names in a request, or `None` when the request does not
/// carry it (no such header or cookie), in which case the request is balanced round robin.
/// `ip` hashes the client address as text, like nginx's `$remote_addr`.
pub fn request_key(
    key: &HashKey,
    headers: &HeaderMap,
    path: &str,
    client_ip: &[u8],
) -> Option<u32> {
    match key {
        HashKey::Ip => Some(key_hash(client_ip)),
        HashKey::Path => Some(key_hash(path.as_bytes())),
        HashKey::Header(name) => headers.get(name).map(|v| key_hash(v.as_bytes())),
        HashKey::Cookie(name) => cookie(headers, name).map(key_hash),
    }
}

/// The value of cookie `name` in the request's `Cookie` headers (RFC 6265 §5.4 form:
/// `a=1; b=2`), the first one if repeated.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers.get_all(COOKIE).iter().find_map(|line| {
        line.as_bytes().split(|&b| b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
        })
    })
}

/// Iterator of [`HashRing::walk`].
pub struct HashWalk<'a> {
    ring: &'a HashRing,
    start: usize,
    step: usize,
    seen: Seen,
}

impl Iterator for HashWalk<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let len = self.ring.points.len();
        while self.step < len {
            let (_, index) = self.ring.points[(self.start + self.step) % len];
            self.step += 1;
            if self.seen.insert(index) {
                return Some(index);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(servers: &[(&str, &str, u32)]) -> HashRing {
        let members: Vec<Member<'_>> = servers
            .iter()
            .enumerate()
            .map(|(index, &(host, port, weight))| Member {
                index,
                weight,
                host,
                port,
            })
            .collect();
        HashRing::new(&members)
    }

    #[test]
    fn points_follow_nginx_construction() {
        let r = ring(&[("10.0.0.1", "80", 1)]);
        assert_eq!(r.points.len(), 160);
        // host, NUL, port, then four zero bytes for the first point.
        let mut expected = crc32fast::Hasher::new();
        expected.update(b"10.0.0.1");
        expected.update(&[0]);
        expected.update(b"80");
        expected.update(&[0, 0, 0, 0]);
        let first_hash = expected.finalize();
        assert!(r.points.iter().any(|&(h, _)| h == first_hash));
    }

    #[test]
    fn a_key_always_lands_on_the_same_server_and_walks_every_server_once() {
        let r = ring(&[
            ("10.0.0.1", "80", 1),
            ("10.0.0.2", "80", 1),
            ("10.0.0.3", "80", 2),
        ]);
        for key in ["alice", "bob", "carol", ""] {
            let first: Vec<usize> = r.walk(key_hash(key.as_bytes())).collect();
            let again: Vec<usize> = r.walk(key_hash(key.as_bytes())).collect();
            assert_eq!(first, again);
            let mut sorted = first.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, vec![0, 1, 2], "{key}");
        }
    }

    #[test]
    fn removing_a_server_moves_only_its_keys() {
        let three = ring(&[("a", "1", 1), ("b", "1", 1), ("c", "1", 1)]);
        // Same names, "c" gone; indices 0 and 1 keep their meaning.
        let two = ring(&[("a", "1", 1), ("b", "1", 1)]);
        let mut moved = 0;
        for n in 0..1000 {
            let key = format!("user-{n}");
            let before = three.walk(key_hash(key.as_bytes())).next();
            let after = two.walk(key_hash(key.as_bytes())).next();
            if before != Some(2) {
                assert_eq!(before, after, "{key} moved though its server stayed");
            } else {
                moved += 1;
            }
        }
        assert!(
            moved > 200 && moved < 470,
            "{moved} of 1000 keys were on the removed server"
        );
    }

    #[test]
    fn request_keys() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-user",
            "alice"
                .parse()
                .unwrap_or(http::HeaderValue::from_static("")),
        );
        headers.append(
            COOKIE,
            http::HeaderValue::from_static("theme=dark; sid=abc123"),
        );
        let header = HashKey::Header(http::HeaderName::from_static("x-user"));
        assert_eq!(
            request_key(&header, &headers, "/", b"1.2.3.4"),
            Some(key_hash(b"alice"))
        );
        let sid = HashKey::Cookie("sid".into());
        assert_eq!(
            request_key(&sid, &headers, "/", b"1.2.3.4"),
            Some(key_hash(b"abc123"))
        );
        let missing = HashKey::Cookie("nope".into());
        assert_eq!(request_key(&missing, &headers, "/", b"1.2.3.4"), None);
        assert_eq!(
            request_key(&HashKey::Ip, &headers, "/", b"1.2.3.4"),
            Some(key_hash(b"1.2.3.4"))
        );
        assert_eq!(
            request_key(&HashKey::Path, &headers, "/a/b", b"x"),
            Some(key_hash(b"/a/b"))
        );
    }

    #[test]
    fn weights_share_keys_proportionally() {
        let r = ring(&[("a", "1", 1), ("b", "1", 3)]);
        let on_b = (0..4000)
            .filter(|n| r.walk(key_hash(format!("k{n}").as_bytes())).next() == Some(1))
            .count();
        assert!(
            (2700..3300).contains(&on_b),
            "{on_b} of 4000 on the weight-3 server"
        );
    }
}
