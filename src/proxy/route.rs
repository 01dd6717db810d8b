//! The route table: which `[[route]]` a request belongs to. Pure; no I/O.
//!
//! Precedence (documented in the README): a route whose `host` matches beats every route
//! without `host`; an exact host beats a `*.` wildcard, a longer wildcard a shorter one;
//! within the same host class the longest path prefix wins. Prefixes match on segment
//! boundaries: `/ws` matches `/ws` and `/ws/x`, never `/wsx`.

use std::sync::Arc;

use http::uri::{PathAndQuery, Uri};

use crate::config::{HostPattern, RouteConfig};
use crate::metrics::RouteMetrics;
use crate::upstream::PoolHandle;

/// A route ready to serve: its config plus the pool it sends to.
#[derive(Debug)]
pub struct Route {
    pub config: RouteConfig,
    pub pool: Arc<PoolHandle>,
    /// Name in logs and metrics (`host/path` or `path`).
    pub label: Arc<str>,
    /// Its counters, resolved when the config was built.
    pub metrics: Arc<RouteMetrics>,
}

/// Routes sorted by precedence; the first that matches wins.
#[derive(Debug)]
pub struct Router {
    routes: Vec<Route>,
}

/// Sort key: higher is more specific.
fn precedence(route: &RouteConfig) -> (u8, usize, usize) {
    let (class, host_len) = match &route.host {
        Some(HostPattern::Exact(h)) => (2, h.len()),
        Some(HostPattern::Wildcard(suffix)) => (1, suffix.len()),
        None => (0, 0),
    };
    (class, host_len, route.path.len())
}

impl Router {
    pub fn new(mut routes: Vec<Route>) -> Router {
        // Stable: among equals, the file's order decides.
        routes.sort_by_key(|r| std::cmp::Reverse(precedence(&r.config)));
        Router { routes }
    }

    /// The route for a request to `host` (the Host header, port and case ignored) and
    /// `path` (without query).
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        let host = host.map(strip_port);
        self.routes.iter().find(|r| {
            host_matches(r.config.host.as_ref(), host) && path_matches(&r.config.path, path)
        })
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `[::1]`.
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rfind(':') {
        Some(colon) if host[colon + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..colon],
        _ => host,
    }
}

fn host_matches(pattern: Option<&HostPattern>, host: Option<&str>) -> bool {
    let Some(pattern) = pattern else {
        return true;
    };
    let Some(host) = host else {
        return false;
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    match pattern {
        HostPattern::Exact(want) => host.eq_ignore_ascii_case(want),
        HostPattern::Wildcard(suffix) => {
            // `*.example.com` matches `a.example.com` and `a.b.example.com`, not the apex.
            host.len() > suffix.len()
                && host.is_char_boundary(host.len() - suffix.len())
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        }
    }
}

/// Segment-boundary prefix match.
pub fn path_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The origin-form URI sent upstream: the matched prefix removed when `strip_prefix` is
/// set (`/api/x` → `/x`, `/api` → `/`), query kept. Absolute-form request targets become
/// origin-form.
pub fn upstream_uri(route: &RouteConfig, uri: &Uri) -> Uri {
    let strip = route.strip_prefix && route.path != "/";
    if !strip && uri.scheme().is_none() && uri.authority().is_none() {
        return uri.clone();
    }
    let path = uri.path();
    let path = if strip {
        path.strip_prefix(route.path.as_str()).unwrap_or(path)
    } else {
        path
    };
    with_path(uri, path)
}

/// `uri` in origin form with its path replaced by `path` (a leading `/` added if it has
/// none) and its query kept.
pub fn with_path(uri: &Uri, path: &str) -> Uri {
    let mut target = String::with_capacity(path.len() + 2 + uri.query().map_or(0, str::len));
    if !path.starts_with('/') {
        target.push('/');
    }
    target.push_str(path);
    if let Some(query) = uri.query() {
        target.push('?');
        target.push_str(query);
    }
    match PathAndQuery::try_from(target) {
        Ok(pq) => Uri::from(pq),
        Err(_) => Uri::from_static("/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_boundaries() {
        assert!(path_matches("/ws", "/ws"));
        assert!(path_matches("/ws", "/ws/x"));
        assert!(!path_matches("/ws", "/wsx"));
        assert!(!path_matches("/ws", "/"));
        assert!(path_matches("/", "/anything"));
        assert!(path_matches("/a/b", "/a/b/c"));
        assert!(!path_matches("/a/b", "/a/bc"));
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }

    #[test]
    fn host_patterns() {
        let exact = HostPattern::Exact("example.com".into());
        let wild = HostPattern::Wildcard(".example.com".into());
        assert!(host_matches(Some(&exact), Some("EXAMPLE.com")));
        assert!(!host_matches(Some(&exact), Some("a.example.com")));
        assert!(host_matches(Some(&wild), Some("a.Example.com")));
        assert!(host_matches(Some(&wild), Some("a.b.example.com")));
        assert!(!host_matches(Some(&wild), Some("example.com")));
        assert!(!host_matches(Some(&wild), Some("badexample.com")));
        assert!(!host_matches(Some(&exact), None));
        assert!(host_matches(None, None));
    }
}
