//! `GET /status`: the proxy's state as JSON, the shape documented in the README (section
//! "Admin endpoint"). Counters are totals since start; a reader derives rates from two
//! snapshots and their `now_ms`.

use serde::Serialize;

use super::{unix_ms, Sources};

#[derive(Serialize)]
struct Status<'a> {
    version: &'static str,
    pid: u32,
    now_ms: u64,
    started_ms: u64,
    draining: bool,
    config: ConfigInfo,
    connections: Connections,
    tunnels: Tunnels,
    totals: Totals,
    listeners: Vec<Listener>,
    routes: Vec<Route<'a>>,
    upstreams: Vec<Upstream>,
    reloads: Vec<Reload>,
}

#[derive(Serialize)]
struct ConfigInfo {
    path: String,
    loaded_ms: u64,
}

#[derive(Serialize)]
struct Connections {
    open: usize,
    max: usize,
}

#[derive(Serialize)]
struct Tunnels {
    open: i64,
}

#[derive(Serialize)]
struct Totals {
    requests: u64,
    tunnels: u64,
    bytes_in: u64,
    bytes_out: u64,
    messages_in: u64,
    messages_out: u64,
    handshake_rejections: u64,
    /// Closed tunnels by Close code and who closed first.
    closes: Vec<Close>,
}

#[derive(Serialize)]
struct Close {
    code: String,
    initiator: &'static str,
    count: u64,
}

#[derive(Serialize)]
struct Listener {
    addr: String,
    tls: bool,
}

#[derive(Serialize)]
struct Route<'a> {
    name: &'a str,
    host: Option<String>,
    path: &'a str,
    upstream: &'a str,
    websocket: bool,
    requests: u64,
    tunnels_open: i64,
    tunnels_total: u64,
    bytes_in: u64,
    bytes_out: u64,
    rejections: u64,
}

#[derive(Serialize)]
struct Upstream {
    name: String,
    balance: &'static str,
    servers: Vec<Server>,
}

#[derive(Serialize)]
struct Server {
    server: String,
    addr: Option<String>,
    state: &'static str,
    weight: u32,
    backup: bool,
    /// Requests in flight and tunnels together: what `least_conn` compares.
    open_connections: usize,
    open_requests: usize,
    open_tunnels: usize,
    connect_errors: u64,
}

#[derive(Serialize)]
struct Reload {
    at_ms: u64,
    result: &'static str,
    error: Option<String>,
}

/// The whole `/status` document.
pub fn json(sources: &Sources) -> String {
    let runtime = sources.runtime.load_full();
    let totals = sources.metrics.totals();
    let (open, max) = (sources.connections)();
    let (config, reloads) = {
        let journal = sources
            .journal
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        (
            ConfigInfo {
                path: journal.config_path.clone(),
                loaded_ms: journal.loaded_ms,
            },
            journal
                .reloads
                .iter()
                .map(|r| Reload {
                    at_ms: r.at_ms,
                    result: if r.error.is_none() { "ok" } else { "failed" },
                    error: r.error.clone(),
                })
                .collect(),
        )
    };
    let routes = runtime
        .router
        .routes()
        .iter()
        .map(|route| Route {
            name: &route.label,
            host: route.config.host.as_ref().map(ToString::to_string),
            path: &route.config.path,
            upstream: &route.config.upstream,
            websocket: route.config.websocket,
            requests: route.metrics.requests_total(),
            tunnels_open: route.metrics.active_tunnels.get(),
            tunnels_total: route.metrics.tunnels.get(),
            bytes_in: route.metrics.bytes_in.get(),
            bytes_out: route.metrics.bytes_out.get(),
            rejections: route.metrics.rejections_total(),
        })
        .collect();
    let upstreams = runtime
        .pools()
        .map(|(name, handle)| {
            let pool = handle.load();
            let mut servers: Vec<Server> = pool
                .servers
                .iter()
                .map(|server| {
                    let tunnels = server.state.tunnels();
                    Server {
                        server: server.label.to_string(),
                        addr: Some(server.addr.to_string()),
                        state: server.health().as_str(),
                        weight: server.weight(),
                        backup: server.backup,
                        open_connections: server.active(),
                        open_requests: server.active().saturating_sub(tunnels),
                        open_tunnels: tunnels,
                        connect_errors: server.state.connect_errors.get(),
                    }
                })
                .collect();
            servers.extend(handle.unresolved().into_iter().map(|entry| Server {
                server: entry,
                addr: None,
                state: "unresolved",
                weight: 0,
                backup: false,
                open_connections: 0,
                open_requests: 0,
                open_tunnels: 0,
                connect_errors: 0,
            }));
            Upstream {
                name: name.to_owned(),
                balance: pool.balance_name(),
                servers,
            }
        })
        .collect();
    let status = Status {
        version: env!("CARGO_PKG_VERSION"),
        pid: std::process::id(),
        now_ms: unix_ms(),
        started_ms: sources.journal.started_ms,
        draining: sources.shutdown.is_draining(),
        config,
        connections: Connections { open, max },
        tunnels: Tunnels {
            open: totals.tunnels_open,
        },
        totals: Totals {
            requests: totals.requests,
            tunnels: totals.tunnels,
            bytes_in: totals.bytes_in,
            bytes_out: totals.bytes_out,
            messages_in: totals.messages_in,
            messages_out: totals.messages_out,
            handshake_rejections: totals.rejections,
            closes: sources
                .metrics
                .closes()
                .into_iter()
                .map(|((code, initiator), count)| Close {
                    code: code.to_string(),
                    initiator,
                    count,
                })
                .collect(),
        },
        listeners: sources
            .listeners
            .load()
            .iter()
            .map(|l| Listener {
                addr: l.addr.to_string(),
                tls: l.tls,
            })
            .collect(),
        routes,
        upstreams,
        reloads,
    };
    serde_json::to_string_pretty(&status).unwrap_or_else(|err| {
        // Serializing plain structs to a String cannot fail; say so if it ever does.
        format!("{{\"error\":\"{err}\"}}")
    })
}
