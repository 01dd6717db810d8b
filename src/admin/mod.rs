//! The operator's endpoint, `[admin] addr`: `GET /healthz`, `/metrics`, `/status` and the
//! live dashboard at `/`.
//!
//! It has its own listener, never a proxy listener's, so an operator can keep it on
//! loopback or a private interface while the proxy faces the internet. It reads what the
//! proxy already keeps (the runtime snapshot, the connection count, the metric families);
//! nothing on the request path waits for it. It stays up through a drain, so that the load
//! balancer in front sees `/healthz` turn `503` and stops sending new clients, and closes
//! once the drain is over.

mod status;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{ACCEPT, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, ServerUp};
use crate::proxy::Runtime;
use crate::shutdown::Shutdown;

/// The dashboard: one self-contained page that polls `status`.
const DASHBOARD: &str = include_str!("dashboard.html");

/// How many admin connections are served at once; more wait in the backlog. Scrapers and
/// dashboards are few; this bounds what a stray client can hold.
const MAX_CONNECTIONS: usize = 64;

/// Time a client has to send a request head on the admin listener.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How many reloads `/status` remembers.
const RELOADS_KEPT: usize = 20;

/// What the admin endpoint reads. Built once by the server; the parts a reload changes are
/// swapped inside it.
pub struct Sources {
    pub metrics: Arc<Metrics>,
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub shutdown: Shutdown,
    /// Client connections open now, and `max_connections`.
    pub connections: Box<dyn Fn() -> (usize, usize) + Send + Sync>,
    /// The listeners serving now, replaced on reload.
    pub listeners: ArcSwap<Vec<ListenerInfo>>,
    pub journal: Journal,
}

/// One proxy listener as `/status` shows it.
#[derive(Debug, Clone)]
pub struct ListenerInfo {
    pub addr: SocketAddr,
    pub tls: bool,
}

/// When the process started, which config it runs and when that was loaded, and how the
/// recent reloads went.
#[derive(Debug)]
pub struct Journal {
    started_ms: u64,
    inner: Mutex<JournalInner>,
}

#[derive(Debug)]
struct JournalInner {
    config_path: String,
    loaded_ms: u64,
    /// Newest first.
    reloads: std::collections::VecDeque<ReloadRecord>,
}

#[derive(Debug, Clone)]
struct ReloadRecord {
    at_ms: u64,
    error: Option<String>,
}

impl Journal {
    pub fn new(config_path: &std::path::Path) -> Journal {
        let now = unix_ms();
        Journal {
            started_ms: now,
            inner: Mutex::new(JournalInner {
                config_path: config_path.display().to_string(),
                loaded_ms: now,
                reloads: std::collections::VecDeque::new(),
            }),
        }
    }

    /// Records a reload: `Ok` with the config now running, or the reason it was refused.
    pub fn reloaded(&self, result: Result<&std::path::Path, String>) {
        let now = unix_ms();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let error = match result {
            Ok(path) => {
                inner.config_path = path.display().to_string();
                inner.loaded_ms = now;
                None
            }
            Err(err) => Some(err),
        };
        inner.reloads.push_front(ReloadRecord { at_ms: now, error });
        inner.reloads.truncate(RELOADS_KEPT);
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A running admin listener; closed by [`Admin::close`] or when dropped.
pub struct Admin {
    /// As configured (port 0 stays 0), what a reload compares.
    pub configured: SocketAddr,
    /// As bound.
    pub local: SocketAddr,
    stop: CancellationToken,
}

impl Admin {
    /// Starts serving on an already bound listener.
    pub fn spawn(
        listener: std::net::TcpListener,
        configured: SocketAddr,
        sources: Arc<Sources>,
    ) -> Admin {
        let local = listener.local_addr().unwrap_or(configured);
        tracing::info!(addr = %local, "admin listening");
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, sources, stop.clone()));
        Admin {
            configured,
            local,
            stop,
        }
    }

    pub fn close(&self) {
        self.stop.cancel();
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept_loop(
    listener: std::net::TcpListener,
    sources: Arc<Sources>,
    stop: CancellationToken,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(cause = %err, "cannot register the admin socket");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = tokio::select! {
            () = stop.cancelled() => break,
            slot = Arc::clone(&slots).acquire_owned() => slot,
        };
        let Ok(slot) = slot else { break };
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                if crate::resources::is_exhaustion(&err) {
                    crate::resources::report_exhaustion("admin accept", &err);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let sources = Arc::clone(&sources);
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let sources = Arc::clone(&sources);
                async move { Ok::<_, Infallible>(respond(&req, &sources)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stop.cancelled() => {}
            }
            drop(slot);
        });
    }
}

/// Answers one admin request.
fn respond(req: &Request<Incoming>, sources: &Sources) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let mut response = match req.uri().path() {
        "/healthz" => {
            if sources.shutdown.is_draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else {
                text(StatusCode::OK, "ok\n")
            }
        }
        "/metrics" => metrics(req, sources),
        "/status" => with_type(StatusCode::OK, status::json(sources), "application/json"),
        "/" => with_type(
            StatusCode::OK,
            DASHBOARD.to_owned(),
            "text/html; charset=utf-8",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `/metrics`: OpenMetrics when the scraper asks for it (Prometheus does), otherwise the
/// classic Prometheus text format.
fn metrics(req: &Request<Incoming>, sources: &Sources) -> Response<Full<Bytes>> {
    let (open, _) = (sources.connections)();
    let runtime = sources.runtime.load();
    let mut servers = Vec::new();
    for (_, pool) in runtime.pools() {
        let pool = pool.load();
        for server in &pool.servers {
            servers.push(ServerUp {
                upstream: Arc::clone(&pool.name),
                server: Arc::clone(&server.label),
                up: server.is_available(),
            });
        }
    }
    let text = sources.metrics.encode(open, &servers);
    let openmetrics = req.headers().get_all(ACCEPT).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.contains("application/openmetrics-text"))
    });
    if openmetrics {
        with_type(
            StatusCode::OK,
            text,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    } else {
        with_type(
            StatusCode::OK,
            classic_text(&text),
            "text/plain; version=0.0.4; charset=utf-8",
        )
    }
}

/// OpenMetrics text as the classic Prometheus format: a counter's `TYPE` and `HELP` name
/// its `_total` sample, and there is no `# EOF`. Everything else is the same.
fn classic_text(openmetrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some(name) = line
            .strip_prefix("# TYPE ")
            .and_then(|rest| rest.strip_suffix(" counter"))
        {
            counters.insert(name.to_owned());
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# TYPE ", "# HELP "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    with_type(status, body.to_owned(), "text/plain; charset=utf-8")
}

fn with_type(
    status: StatusCode,
    body: String,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_names_counter_samples_and_drops_eof() {
        let om = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total{x=\"1\"} 2\n# HELP b Gauge.\n# TYPE b gauge\nb 1\n# EOF\n";
        let classic = classic_text(om);
        assert_eq!(
            classic,
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\na_requests_total{x=\"1\"} 2\n# HELP b Gauge.\n# TYPE b gauge\nb 1\n"
        );
    }
}
