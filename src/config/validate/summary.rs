//! The summary `sluice check` prints for a valid file.

use crate::config::{Balance, Config};

/// What `sluice check` prints for a valid file: one count line, then one line per
/// listener, route and upstream, in file order (upstreams by name).
///
/// ```text
/// ok: 1 listener, 1 route, 1 upstream (2 servers)
/// listener 0.0.0.0:8080
/// route /websocket -> backend
/// upstream backend: round_robin, 127.0.0.1:3000, 127.0.0.1:3001
/// admin 127.0.0.1:9901
/// ```
pub(crate) fn summary(config: &Config) -> String {
    use std::fmt::Write as _;

    fn count(n: usize, what: &str) -> String {
        if n == 1 {
            format!("1 {what}")
        } else {
            format!("{n} {what}s")
        }
    }

    let servers: usize = config.upstreams.values().map(|u| u.servers.len()).sum();
    let mut out = format!(
        "ok: {}, {}, {} ({})\n",
        count(config.listeners.len(), "listener"),
        count(config.routes.len(), "route"),
        count(config.upstreams.len(), "upstream"),
        count(servers, "server"),
    );
    // `write!` into a String cannot fail; the results are ignored on purpose.
    for listener in &config.listeners {
        let _ = writeln!(out, "listener {}", listener.addr);
    }
    for route in &config.routes {
        let websocket = if route.websocket {
            ""
        } else {
            " (websocket off)"
        };
        let _ = writeln!(
            out,
            "route {} -> {}{websocket}",
            route.label(),
            route.upstream
        );
    }
    for (name, upstream) in &config.upstreams {
        let balance = match upstream.balance {
            Balance::RoundRobin => "round_robin",
            Balance::LeastConn => "least_conn",
            Balance::Hash => "hash",
        };
        let _ = write!(out, "upstream {name}: {balance}");
        for server in &upstream.servers {
            let _ = write!(out, ", {}", server.addr);
            if server.weight != 1 {
                let _ = write!(out, " weight={}", server.weight);
            }
            if server.backup {
                out.push_str(" backup");
            }
            if server.drain {
                out.push_str(" drain");
            }
        }
        if !config.routes.iter().any(|r| &r.upstream == name) {
            out.push_str(" (no route uses it)");
        }
        out.push('\n');
    }
    if let Some(admin) = &config.admin {
        let _ = writeln!(out, "admin {}", admin.addr);
    }
    out
}
