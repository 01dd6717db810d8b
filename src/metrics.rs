//! Prometheus metrics: the families the SPEC names, and the handles the hot paths count on.
//!
//! Every label set is resolved when a config is built, never on the request or message
//! path: each route gets a [`RouteMetrics`] with its counters already looked up, each
//! server its connect-error counter, and a request or a relayed read pays one or two
//! relaxed atomic adds. The families keep their counters across reloads (a route or server
//! that stays keeps counting from where it was), as Prometheus counters must.
//!
//! Two values are read at scrape time instead of being counted (the open connections and
//! each server's `up`); the admin endpoint writes them with [`Metrics::encode`].
//! The histograms are atomic (prometheus-client's own takes a mutex per observation).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{
    EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// The route label of requests that matched no route (and of those refused before routing).
pub const NO_ROUTE: &str = "-";

/// Why a WebSocket handshake was refused: the `reason` label of
/// `sluice_handshake_rejections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// `Origin` not in `allowed_origins`.
    Origin,
    /// The client's handshake broke RFC 6455.
    InvalidHandshake,
    /// The upstream answered the handshake with something other than `101`.
    UpstreamRefused,
    /// The upstream's `101` was wrong (`Sec-WebSocket-Accept` or `Upgrade`).
    BadAccept,
    /// `max_tunnels_per_ip` reached.
    TunnelLimit,
    /// No server could be reached, or none was available.
    UpstreamUnavailable,
    /// sluice is draining.
    Draining,
}

impl Rejection {
    pub const ALL: [Rejection; 7] = [
        Rejection::Origin,
        Rejection::InvalidHandshake,
        Rejection::UpstreamRefused,
        Rejection::BadAccept,
        Rejection::TunnelLimit,
        Rejection::UpstreamUnavailable,
        Rejection::Draining,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Origin => "origin",
            Rejection::InvalidHandshake => "invalid_handshake",
            Rejection::UpstreamRefused => "upstream_refused",
            Rejection::BadAccept => "bad_accept",
            Rejection::TunnelLimit => "tunnel_limit",
            Rejection::UpstreamUnavailable => "upstream_unavailable",
            Rejection::Draining => "draining",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    route: Arc<str>,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: Arc<str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteDirection {
    route: Arc<str>,
    direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteClose {
    route: Arc<str>,
    code: CloseCode,
    initiator: &'static str,
}

/// A tunnel's Close code as a label: its digits, or `none` when no Close frame was sent.
/// Kept as the number, so counting a closed tunnel whose label set exists allocates
/// nothing (the text is written only when a scrape or `/status` asks for it).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub struct CloseCode(pub Option<u16>);

impl CloseCode {
    /// The label's text in a stack buffer: up to five digits, or `none`.
    fn text(self) -> ([u8; 5], usize) {
        let mut buf = [0u8; 5];
        let Some(mut code) = self.0 else {
            buf[..4].copy_from_slice(b"none");
            return (buf, 4);
        };
        let mut len = 0;
        loop {
            // Digits least significant first, reversed below.
            buf[len] = b'0' + (code % 10) as u8;
            len += 1;
            code /= 10;
            if code == 0 {
                break;
            }
        }
        buf[..len].reverse();
        (buf, len)
    }
}

impl std::fmt::Display for CloseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (buf, len) = self.text();
        // Only ASCII digits or `none` are ever written into the buffer.
        f.write_str(std::str::from_utf8(&buf[..len]).map_err(|_| std::fmt::Error)?)
    }
}

/// Ordered as the text is, so `/status` lists the codes as it did when they were strings.
impl Ord for CloseCode {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let (a, a_len) = self.text();
        let (b, b_len) = other.text();
        a[..a_len].cmp(&b[..b_len])
    }
}

impl PartialOrd for CloseCode {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl EncodeLabelValue for CloseCode {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        write!(encoder, "{self}")
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteReason {
    route: Arc<str>,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamServer {
    upstream: Arc<str>,
    server: Arc<str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadResult {
    result: &'static str,
}

/// Upper bounds of `sluice_request_duration_seconds`, in seconds.
const REQUEST_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Upper bounds of `sluice_tunnel_duration_seconds`: tunnels live for minutes to days.
const TUNNEL_BUCKETS: &[f64] = &[
    1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0,
];

/// Every metric of one running proxy, kept for its life (reloads included).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RouteStatus, Counter>,
    /// Each route's requests over all statuses, for `/status`; not exported (Prometheus
    /// sums `sluice_requests_total` itself).
    route_requests: Family<RouteLabel, Counter>,
    request_duration: AtomicHistogram,
    active_tunnels: Family<RouteLabel, Gauge>,
    tunnels: Family<RouteLabel, Counter>,
    tunnel_duration: AtomicHistogram,
    tunnel_bytes: Family<RouteDirection, Counter>,
    tunnel_messages: Family<RouteDirection, Counter>,
    tunnel_closes: Family<RouteClose, Counter>,
    rejections: Family<RouteReason, Counter>,
    connect_errors: Family<UpstreamServer, Counter>,
    reloads: Family<ReloadResult, Counter>,
    /// Every route's counters by name, the newest handle of each, so totals include routes
    /// a reload removed.
    routes: Mutex<BTreeMap<Arc<str>, Arc<RouteMetrics>>>,
    /// Closed tunnels by Close code and initiator, all routes together, for `/status`.
    closes: Arc<Mutex<CloseCounts>>,
}

/// Closed tunnels by (Close code, initiator).
pub type CloseCounts = BTreeMap<(CloseCode, &'static str), u64>;

/// Totals over every route since start, for `/status`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub requests: u64,
    pub tunnels: u64,
    pub tunnels_open: i64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub rejections: u64,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::default();
        registry.register(
            "sluice_requests",
            "Requests answered, by route and status (WebSocket handshakes included)",
            requests.clone(),
        );
        let request_duration = AtomicHistogram::new(REQUEST_BUCKETS);
        registry.register(
            "sluice_request_duration_seconds",
            "Time from a request head to the end of its response",
            request_duration.clone(),
        );
        let active_tunnels = Family::default();
        registry.register(
            "sluice_active_tunnels",
            "WebSocket tunnels open now, by route",
            active_tunnels.clone(),
        );
        let tunnels = Family::default();
        registry.register(
            "sluice_tunnels",
            "WebSocket tunnels opened, by route",
            tunnels.clone(),
        );
        let tunnel_duration = AtomicHistogram::new(TUNNEL_BUCKETS);
        registry.register(
            "sluice_tunnel_duration_seconds",
            "How long closed tunnels were open",
            tunnel_duration.clone(),
        );
        let tunnel_bytes = Family::default();
        registry.register(
            "sluice_tunnel_bytes",
            "Bytes relayed through tunnels, by route and direction (in: client to upstream)",
            tunnel_bytes.clone(),
        );
        let tunnel_messages = Family::default();
        registry.register(
            "sluice_tunnel_messages",
            "WebSocket data messages relayed through tunnels, by route and direction",
            tunnel_messages.clone(),
        );
        let tunnel_closes = Family::default();
        registry.register(
            "sluice_tunnel_closes",
            "Tunnels closed, by route, Close code (none: no Close frame) and who closed first",
            tunnel_closes.clone(),
        );
        let rejections = Family::default();
        registry.register(
            "sluice_handshake_rejections",
            "WebSocket handshakes refused, by route and reason",
            rejections.clone(),
        );
        let connect_errors = Family::default();
        registry.register(
            "sluice_upstream_connect_errors",
            "Failed connections to an upstream server (refused, timed out, TLS failed)",
            connect_errors.clone(),
        );
        let reloads = Family::<ReloadResult, Counter>::default();
        // Both results from the start, so an alert on `failed` has a series to watch.
        for result in ["ok", "failed"] {
            reloads.get_or_create_owned(&ReloadResult { result });
        }
        registry.register(
            "sluice_config_reloads",
            "Config reloads, by result (ok or failed)",
            reloads.clone(),
        );
        Metrics {
            registry,
            requests,
            route_requests: Family::default(),
            request_duration,
            active_tunnels,
            tunnels,
            tunnel_duration,
            tunnel_bytes,
            tunnel_messages,
            tunnel_closes,
            rejections,
            connect_errors,
            reloads,
            routes: Mutex::default(),
            closes: Arc::default(),
        }
    }

    /// Closed tunnels by Close code and initiator, all routes together.
    pub fn closes(&self) -> CloseCounts {
        self.closes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sums every route's counters (those of routes since removed included).
    pub fn totals(&self) -> Totals {
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let mut totals = Totals::default();
        for route in routes.values() {
            totals.requests += route.requests_total();
            totals.tunnels += route.tunnels.get();
            totals.tunnels_open += route.active_tunnels.get();
            totals.bytes_in += route.bytes_in.get();
            totals.bytes_out += route.bytes_out.get();
            totals.messages_in += route.messages_in.get();
            totals.messages_out += route.messages_out.get();
            totals.rejections += route.rejections_total();
        }
        totals
    }

    /// The counters of route `name`, looked up once (at config build).
    pub fn route(&self, name: &Arc<str>) -> Arc<RouteMetrics> {
        let route = RouteLabel {
            route: Arc::clone(name),
        };
        let direction = |direction| RouteDirection {
            route: Arc::clone(name),
            direction,
        };
        let metrics = Arc::new(RouteMetrics {
            name: Arc::clone(name),
            requests: self.requests.clone(),
            by_status: (0..STATUS_SLOTS).map(|_| OnceLock::new()).collect(),
            total: self.route_requests.get_or_create_owned(&route),
            request_duration: self.request_duration.clone(),
            active_tunnels: self.active_tunnels.get_or_create_owned(&route),
            tunnels: self.tunnels.get_or_create_owned(&route),
            tunnel_duration: self.tunnel_duration.clone(),
            bytes_in: self.tunnel_bytes.get_or_create_owned(&direction("in")),
            bytes_out: self.tunnel_bytes.get_or_create_owned(&direction("out")),
            messages_in: self.tunnel_messages.get_or_create_owned(&direction("in")),
            messages_out: self.tunnel_messages.get_or_create_owned(&direction("out")),
            closes: self.tunnel_closes.clone(),
            close_counts: Arc::clone(&self.closes),
            rejections: Rejection::ALL.map(|reason| {
                self.rejections.get_or_create_owned(&RouteReason {
                    route: Arc::clone(name),
                    reason: reason.as_str(),
                })
            }),
        });
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(Arc::clone(name), Arc::clone(&metrics));
        metrics
    }

    /// The connect-error counter of `server` in pool `upstream`.
    pub fn connect_errors(&self, upstream: &Arc<str>, server: &Arc<str>) -> Counter {
        self.connect_errors.get_or_create_owned(&UpstreamServer {
            upstream: Arc::clone(upstream),
            server: Arc::clone(server),
        })
    }

    /// Counts a reload.
    pub fn reloaded(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads.get_or_create(&ReloadResult { result }).inc();
    }

    /// The whole exposition in the OpenMetrics text format, with the values read at
    /// scrape time: `connections` open now, and every current server's `up`.
    pub fn encode(&self, connections: usize, servers: &[ServerUp]) -> String {
        let mut live = Registry::default();
        let open = Gauge::<i64>::default();
        open.set(i64::try_from(connections).unwrap_or(i64::MAX));
        live.register(
            "sluice_active_connections",
            "Client connections open now (idle keep-alive connections and tunnels included)",
            open,
        );
        let up = Family::<UpstreamServer, Gauge>::default();
        for server in servers {
            up.get_or_create(&UpstreamServer {
                upstream: Arc::clone(&server.upstream),
                server: Arc::clone(&server.server),
            })
            .set(i64::from(server.up));
        }
        live.register(
            "sluice_upstream_server_up",
            "1 when a server may be picked (health checks and passive health agree), else 0",
            up,
        );
        let mut text = String::with_capacity(8 * 1024);
        let written = prometheus_client::encoding::text::encode_registry(&mut text, &self.registry)
            .and_then(|()| prometheus_client::encoding::text::encode_registry(&mut text, &live))
            .and_then(|()| prometheus_client::encoding::text::encode_eof(&mut text));
        if written.is_err() {
            // Writing to a String cannot fail; an encoder error is a bug worth a line.
            let _ = writeln!(text, "# error encoding metrics");
        }
        text
    }
}

/// One server's `sluice_upstream_server_up`, read at scrape time.
pub struct ServerUp {
    pub upstream: Arc<str>,
    pub server: Arc<str>,
    pub up: bool,
}

/// Status codes 100 to 599 each get a slot.
const STATUS_SLOTS: usize = 500;

/// One route's counters, resolved when the config is built. Per-status request counters are
/// created on a status's first use (one map lookup in the route's life), then indexed.
#[derive(Debug)]
pub struct RouteMetrics {
    name: Arc<str>,
    requests: Family<RouteStatus, Counter>,
    by_status: Box<[OnceLock<Counter>]>,
    total: Counter,
    request_duration: AtomicHistogram,
    pub active_tunnels: Gauge,
    pub tunnels: Counter,
    tunnel_duration: AtomicHistogram,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub messages_in: Counter,
    pub messages_out: Counter,
    /// Looked up once per tunnel, when it closes (the code is only known then).
    closes: Family<RouteClose, Counter>,
    close_counts: Arc<Mutex<CloseCounts>>,
    rejections: [Counter; Rejection::ALL.len()],
}

impl RouteMetrics {
    /// The route's label.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Counts a request answered with `status`.
    pub fn answered(&self, status: u16) {
        self.total.inc();
        let Some(slot) = usize::from(status)
            .checked_sub(100)
            .and_then(|i| self.by_status.get(i))
        else {
            return;
        };
        slot.get_or_init(|| {
            self.requests.get_or_create_owned(&RouteStatus {
                route: Arc::clone(&self.name),
                status,
            })
        })
        .inc();
    }

    /// Requests answered on this route so far, all statuses together.
    pub fn requests_total(&self) -> u64 {
        self.total.get()
    }

    /// Records how long a request took, head to end of response.
    pub fn request_took(&self, duration: Duration) {
        self.request_duration.observe(duration);
    }

    /// Counts a refused handshake.
    pub fn rejected(&self, reason: Rejection) {
        if let Some(counter) = Rejection::ALL
            .iter()
            .position(|r| *r == reason)
            .and_then(|i| self.rejections.get(i))
        {
            counter.inc();
        }
    }

    /// Handshakes refused on this route so far, all reasons together.
    pub fn rejections_total(&self) -> u64 {
        self.rejections.iter().map(Counter::get).sum()
    }

    /// A tunnel opened: counted, and open until [`RouteMetrics::tunnel_closed`].
    pub fn tunnel_opened(&self) {
        self.tunnels.inc();
        self.active_tunnels.inc();
    }

    /// Counts a closed tunnel by its Close code (`none` without one) and who closed first.
    pub fn tunnel_ended(&self, code: CloseCode, initiator: &'static str) {
        self.closes
            .get_or_create(&RouteClose {
                route: Arc::clone(&self.name),
                code,
                initiator,
            })
            .inc();
        *self
            .close_counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((code, initiator))
            .or_default() += 1;
    }

    pub fn tunnel_closed(&self, open_for: Duration) {
        self.active_tunnels.dec();
        self.tunnel_duration.observe(open_for);
    }
}

/// A histogram whose observation is a short scan of the bounds and two relaxed atomic
/// adds (the count is the buckets' total); encoded by prometheus-client as `_bucket`,
/// `_sum` and `_count`. Clones share the counts (the registry holds one, routes another).
#[derive(Debug, Clone)]
pub struct AtomicHistogram(Arc<Buckets>);

#[derive(Debug)]
struct Buckets {
    /// Upper bounds in seconds, ascending; `+Inf` is implied.
    bounds: &'static [f64],
    /// The same bounds in nanoseconds, compared on the hot path.
    bounds_ns: Box<[u64]>,
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    counts: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

impl AtomicHistogram {
    fn new(bounds: &'static [f64]) -> AtomicHistogram {
        AtomicHistogram(Arc::new(Buckets {
            bounds,
            // The bounds are small constants; the product fits.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            bounds_ns: bounds.iter().map(|s| (s * 1e9) as u64).collect(),
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }))
    }

    pub fn observe(&self, duration: Duration) {
        let this = &*self.0;
        let ns = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        let bucket = this
            .bounds_ns
            .iter()
            .position(|&bound| ns <= bound)
            .unwrap_or(this.bounds_ns.len());
        if let Some(count) = this.counts.get(bucket) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        this.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let this = &*self.0;
        let buckets: Vec<(f64, u64)> = this
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(this.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        // Read the buckets first: a scrape never shows a count below its buckets' total.
        let total: u64 = buckets.iter().map(|(_, n)| n).sum();
        #[allow(clippy::cast_precision_loss)]
        let sum = this.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, total, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_counts_by_status_and_the_exposition_names_match_the_spec() {
        let metrics = Metrics::new();
        let route = metrics.route(&Arc::from("/ws"));
        route.answered(200);
        route.answered(200);
        route.answered(404);
        route.answered(42); // out of range: counted in the total only, never a panic
        route.request_took(Duration::from_millis(3));
        route.tunnel_opened();
        route.bytes_in.inc_by(10);
        route.rejected(Rejection::Origin);
        metrics.reloaded(true);
        assert_eq!(route.requests_total(), 4);
        // The same labels after a reload: the same counters.
        let again = metrics.route(&Arc::from("/ws"));
        again.answered(200);
        assert_eq!(again.requests_total(), 5);
        let totals = metrics.totals();
        assert_eq!(
            (totals.requests, totals.tunnels_open, totals.bytes_in),
            (5, 1, 10)
        );
        let text = metrics.encode(
            5,
            &[ServerUp {
                upstream: Arc::from("app"),
                server: Arc::from("127.0.0.1:1"),
                up: true,
            }],
        );
        for line in [
            "sluice_requests_total{route=\"/ws\",status=\"200\"} 3",
            "sluice_requests_total{route=\"/ws\",status=\"404\"} 1",
            "sluice_request_duration_seconds_bucket{le=\"0.005\"} 1",
            "sluice_request_duration_seconds_bucket{le=\"+Inf\"} 1",
            "sluice_request_duration_seconds_count 1",
            "sluice_active_tunnels{route=\"/ws\"} 1",
            "sluice_tunnels_total{route=\"/ws\"} 1",
            "sluice_tunnel_bytes_total{route=\"/ws\",direction=\"in\"} 10",
            "sluice_handshake_rejections_total{route=\"/ws\",reason=\"origin\"} 1",
            "sluice_config_reloads_total{result=\"ok\"} 1",
            "sluice_active_connections 5",
            "sluice_upstream_server_up{upstream=\"app\",server=\"127.0.0.1:1\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
