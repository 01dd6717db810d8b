//! The request handler, as named phases, each a function `forward` calls in turn:
//! check and normalise (`normalize`) → route ([`Router::find`]) → handshake and origin
//! check (`check_handshake`) → rewrite ([`headers::rewrite_request`]) → pick a server and
//! connect (`connect_any`) → send and wait for the head (`exchange`) → relay the answer
//! (`relay`), or check the `101` and hand both sides to a tunnel (`start_tunnel`) → count
//! and log ([`handle`], as the response body ends).
//!
//! The pure rules live in the submodules ([`malformed`], [`path`], [`route`], [`headers`],
//! [`websocket`], [`error`]); this file only sequences them and does the I/O.

pub mod body;
pub mod error;
pub mod headers;
pub mod malformed;
pub mod path;
pub mod route;
pub mod websocket;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::{CONNECTION, CONTENT_TYPE, HOST};
use http::{HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::{Body as _, Incoming};
use ipnet::IpNet;

use crate::clock::{BodyEnd, HeadClock};
use crate::config::Config;
use crate::limits::{ConnPermit, Limits, TunnelPermit};
use crate::metrics::{Rejection, RouteMetrics, NO_ROUTE};
use crate::shutdown::Shutdown;
use crate::stream::Stream;
use crate::upstream::body::OutgoingBody;
use crate::upstream::connect::{self, ConnectError, Sender};
use crate::upstream::resolve::Resolver;
use crate::upstream::{
    Active, Pool, PoolError, PoolHandle, Registry, Server, ServerKey, ServerState,
};
use body::{Access, RequestBody, ResponseBody};
use error::{status_body, ProxyError};
use route::{Route, Router};
use websocket::{BadSwitch, Upgrade};

/// Everything the request path reads, built from one config and swapped whole on reload.
#[derive(Debug)]
pub struct Runtime {
    pub router: Router,
    pub trusted_proxies: Vec<IpNet>,
    /// Every pool by name, for the next reload to take over their last known addresses.
    pools: std::collections::BTreeMap<String, Arc<PoolHandle>>,
    /// What requests that match no route count in.
    no_route: Arc<RouteMetrics>,
}

impl Runtime {
    /// Builds pools (resolving hostnames) and the route table.
    ///
    /// # Errors
    /// An upstream hostname does not resolve.
    /// `previous` is the runtime being replaced: a host name whose lookup fails now keeps
    /// the addresses it had there.
    pub async fn build(
        config: &Config,
        registry: &Arc<Registry>,
        resolver: &Resolver,
        previous: Option<&Runtime>,
    ) -> Result<Runtime, PoolError> {
        let mut pools = std::collections::BTreeMap::new();
        for (name, upstream) in &config.upstreams {
            let before = previous.and_then(|p| p.pools.get(name)).map(|h| &**h);
            pools.insert(
                name.clone(),
                PoolHandle::build(upstream, registry, resolver, before).await?,
            );
        }
        let mut routes = Vec::with_capacity(config.routes.len());
        for route in &config.routes {
            // Validation guarantees the name exists; a missing one is skipped, not a panic.
            let Some(pool) = pools.get(&route.upstream) else {
                continue;
            };
            let label: Arc<str> = Arc::from(route.label().as_str());
            routes.push(Route {
                metrics: registry.metrics().route(&label),
                label,
                config: route.clone(),
                pool: Arc::clone(pool),
            });
        }
        Ok(Runtime {
            router: Router::new(routes),
            trusted_proxies: config.proxy.trusted_proxies.clone(),
            pools,
            no_route: registry.metrics().route(&Arc::from(NO_ROUTE)),
        })
    }
}

impl Runtime {
    /// Every pool, by name.
    pub fn pools(&self) -> impl Iterator<Item = (&str, &Arc<PoolHandle>)> {
        self.pools.iter().map(|(name, pool)| (name.as_str(), pool))
    }

    /// Every server's registry key and state, over all pools.
    pub fn server_states(&self) -> Vec<(ServerKey, Arc<ServerState>)> {
        let mut seen = std::collections::HashSet::new();
        let mut states = Vec::new();
        for route in self.router.routes() {
            if seen.insert(Arc::as_ptr(&route.pool)) {
                states.extend(route.pool.load().states());
            }
        }
        states
    }
}

/// What a connection's requests share: who the client is, and the server's state.
pub struct ConnContext {
    pub peer: SocketAddr,
    /// `peer`'s IP as a header value, for `X-Forwarded-For` and `X-Real-IP`.
    pub peer_ip: HeaderValue,
    /// `http` or `https`, for `X-Forwarded-Proto`.
    pub proto: &'static str,
    pub clock: HeadClock,
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub shutdown: Shutdown,
    /// The connection's place under the connection limits, until its tunnel takes it:
    /// a connection that became a tunnel still counts. A connection upgrades once at most,
    /// so the lock is taken once, and the permit needs no allocation of its own to be
    /// shared.
    pub permit: std::sync::Mutex<Option<ConnPermit>>,
    /// For `max_tunnels_per_ip`.
    pub limits: Arc<Limits>,
    /// Unwraps the client's connection once it upgraded: the server knows its type.
    pub client_socket: fn(hyper::upgrade::Upgraded) -> Option<(Stream, bytes::Bytes)>,
}

/// What the handler learnt about a request on its way, for the metrics.
#[derive(Default)]
struct Outcome<'r> {
    route: Option<&'r Route>,
    /// The request was a WebSocket handshake on a route that allows them.
    handshake: bool,
}

/// Serves one request. Never fails: every failure becomes a response.
pub async fn handle(req: Request<Incoming>, conn: Arc<ConnContext>) -> Response<ResponseBody> {
    let started = Instant::now();
    conn.clock.request_started(!req.body().is_end_stream());
    let access = tracing::enabled!(target: "access", tracing::Level::INFO).then(|| {
        Arc::new(Access::new(
            conn.peer,
            req.method().clone(),
            request_host(&req).and_then(|h| HeaderValue::from_str(h).ok()),
            req.uri().clone(),
        ))
    });
    let runtime = conn.runtime.load_full();
    let mut outcome = Outcome::default();
    let response = match forward(req, &runtime, &conn, access.as_ref(), &mut outcome).await {
        Ok(response) => {
            if outcome.handshake && response.status() != StatusCode::SWITCHING_PROTOCOLS {
                if let Some(route) = outcome.route {
                    route.metrics.rejected(Rejection::UpstreamRefused);
                }
            }
            response
        }
        Err(failure) => {
            failure.log(conn.peer);
            if let (true, Some(route), Some(reason)) =
                (outcome.handshake, outcome.route, failure.err.rejection())
            {
                route.metrics.rejected(reason);
            }
            let mut response = error_response(failure.err.status());
            if failure.err.closes_connection() {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            response
        }
    };
    let metrics = outcome
        .route
        .map_or(&runtime.no_route, |route| &route.metrics);
    metrics.answered(response.status().as_u16());
    if let Some(access) = &access {
        access.set_status(response.status().as_u16());
    }
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    response.map(|body| {
        let body = body
            .with_access(access)
            .with_timing(started, Arc::clone(metrics));
        // A tunnel never reads another request head: its clock stays stopped.
        if switching {
            body
        } else {
            body.with_clock(Some(conn.clock.clone()))
        }
    })
}

/// A failure, with where it happened, for the log line: the route (if one matched) and the
/// server (if one was reached).
struct Failure {
    err: ProxyError,
    route: Option<Arc<str>>,
    server: Option<Arc<str>>,
}

impl Failure {
    fn new(err: ProxyError) -> Failure {
        Failure {
            err,
            route: None,
            server: None,
        }
    }

    fn log(&self, client: SocketAddr) {
        let route = self.route.as_deref().unwrap_or("-");
        let server = self.server.as_deref().unwrap_or("-");
        let err = &self.err;
        match err {
            ProxyError::NoRoute
            | ProxyError::BadRequest(_)
            | ProxyError::InvalidHandshake(_)
            | ProxyError::OriginNotAllowed
            | ProxyError::BodyTimeout
            | ProxyError::TooManyTunnels
            | ProxyError::Draining => {
                tracing::debug!(%client, route, cause = %err, "request refused");
            }
            _ => tracing::warn!(%client, route, server, cause = %err, "request failed"),
        }
    }
}

async fn forward<'r>(
    mut req: Request<Incoming>,
    runtime: &'r Runtime,
    conn: &ConnContext,
    access: Option<&Arc<Access>>,
    outcome: &mut Outcome<'r>,
) -> Result<Response<ResponseBody>, Failure> {
    normalize(&mut req, conn).map_err(Failure::new)?;
    let route = runtime
        .router
        .find(request_host(&req), req.uri().path())
        .ok_or_else(|| Failure::new(ProxyError::NoRoute))?;
    let fail = |err: ProxyError| Failure {
        err,
        route: Some(Arc::clone(&route.label)),
        server: None,
    };
    if let Some(access) = access {
        access.set_route(&route.label);
    }
    outcome.route = Some(route);

    let (key, tunnel_permit) = check_handshake(&req, route, conn, outcome).map_err(fail)?;

    // The balancing key, read before the headers are rewritten.
    let pool = route.pool.load();
    let balance_key = if pool.hashes() {
        crate::upstream::ring::request_key(
            &pool.hash_key,
            req.headers(),
            req.uri().path(),
            conn.peer_ip.as_bytes(),
        )
    } else {
        None
    };

    // Rewrite: everything that does not depend on the server.
    let client_upgrade = key.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let pool = &pool;
    let (mut parts, body) = req.into_parts();
    let client_version = parts.version;
    // Kept for the tunnel's log line: the request as the client sent it.
    let client_target = key.as_ref().map(|_| tunnel_target(&parts));
    parts.uri = route::upstream_uri(&route.config, &parts.uri);
    parts.version = Version::HTTP_11;
    // hyper's server-side extensions mean nothing to the upstream connection.
    parts.extensions.clear();
    headers::rewrite_request(
        &mut parts.headers,
        &headers::Forwarding {
            peer: &conn.peer_ip,
            trusted: crate::config::is_trusted(&runtime.trusted_proxies, conn.peer.ip()),
            proto: conn.proto,
            host_header: &route.config.host_header,
            websocket: key.is_some(),
            keepalive: pool.keepalive,
            set_headers: &route.config.set_headers,
        },
    );

    // Pick and connect: a connect failure marks the server and moves on (nothing was sent).
    // Open on the server from the moment it is picked until the response body ends or the
    // tunnel closes: counted before the connect, so a storm of handshakes spreads over the
    // pool under least_conn instead of piling onto whichever server looked idlest.
    let (server, sender, active) = connect_any(pool, balance_key, &route.label)
        .await
        .map_err(fail)?;
    let fail = |err: ProxyError| Failure {
        err,
        route: Some(Arc::clone(&route.label)),
        server: Some(Arc::clone(&server.label)),
    };
    headers::set_upstream_host(
        &mut parts.headers,
        &route.config.host_header,
        &server.authority,
    );
    if let Some(access) = access {
        access.set_server(&server.label);
    }
    // A request without a body (most GETs, every handshake) sends none: nothing to count,
    // time or allocate.
    let upstream_body = if body.is_end_stream() {
        OutgoingBody::empty()
    } else {
        OutgoingBody::streaming(RequestBody::new(body, access.cloned(), conn.clock.clone()))
    };
    let upstream_req = Request::from_parts(parts, upstream_body);

    let (mut response, sender) = exchange(
        sender,
        upstream_req,
        server,
        pool,
        route.config.read_timeout,
        conn,
    )
    .await
    .map_err(fail)?;

    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let (Some(key), Some(client_upgrade), Some((host_target, host_len))) =
            (key, client_upgrade, client_target)
        else {
            return Err(fail(ProxyError::UnexpectedSwitch));
        };
        websocket::check_switch(response.headers(), &key).map_err(|bad| {
            fail(ProxyError::BadSwitch(match bad {
                BadSwitch::Upgrade => "Upgrade",
                BadSwitch::Accept => "Sec-WebSocket-Accept",
            }))
        })?;
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let (mut parts, _) = response.into_parts();
        parts.version = client_version;
        headers::rewrite_response(&mut parts.headers, true);
        let tunnel = crate::tunnel::Tunnel {
            client: conn.peer,
            host_target,
            host_len,
            route: Arc::clone(&route.label),
            metrics: Arc::clone(&route.metrics),
            server: Arc::clone(&server.label),
            idle_timeout: route.config.idle_timeout,
            max_message_bytes: route.config.max_message_bytes,
            ping_interval: route.config.ping_interval,
            permit: conn.permit.lock().unwrap_or_else(|p| p.into_inner()).take(),
            tunnel_permit,
            active: active.into_tunnel(),
        };
        start_tunnel(tunnel, client_upgrade, upstream_upgrade, conn);
        return Ok(Response::from_parts(parts, ResponseBody::empty()));
    }

    // A refused handshake's connection is not reused: the server may still think it is
    // mid-upgrade.
    let release = (pool.keepalive && key.is_none()).then(|| (Arc::clone(server.idle()), sender));
    Ok(relay(response, client_version, release, active))
}

/// Relay: any answer but a checked `101`, to a handshake or not, goes back as plain HTTP,
/// in the client's own HTTP version whatever the upstream spoke.
fn relay(
    response: Response<Incoming>,
    client_version: Version,
    release: Option<(Arc<crate::upstream::connect::IdlePool>, Sender)>,
    active: Active,
) -> Response<ResponseBody> {
    let (mut parts, body) = response.into_parts();
    parts.version = client_version;
    headers::rewrite_response(&mut parts.headers, false);
    Response::from_parts(parts, ResponseBody::upstream(body, release, active))
}

/// Hands both sides to a tunnel, in a task of its own: they switch once hyper has written
/// and read the `101`, and each side's owner unwraps its connection to the plain stream.
fn start_tunnel(
    tunnel: crate::tunnel::Tunnel,
    client_upgrade: hyper::upgrade::OnUpgrade,
    upstream_upgrade: hyper::upgrade::OnUpgrade,
    conn: &ConnContext,
) {
    let client_socket = conn.client_socket;
    let shutdown = conn.shutdown.clone();
    conn.shutdown.spawn(async move {
        let (client, upstream) = match tokio::try_join!(client_upgrade, upstream_upgrade) {
            Ok(both) => both,
            Err(err) => {
                tracing::debug!(client = %tunnel.client, route = &*tunnel.route, cause = %err, "upgrade did not complete");
                return;
            }
        };
        let (Some(client), Some(upstream)) =
            (client_socket(client), connect::upgraded_socket(upstream))
        else {
            tracing::error!(client = %tunnel.client, route = &*tunnel.route, "tunnel sockets are not sluice's own");
            return;
        };
        // Each piece of state is a local of this task's own future, held once: `run` only
        // borrows them.
        let activity = crate::tunnel::Activity::default();
        let mut copy = tunnel.open(client, upstream, &activity);
        tunnel.run(&mut copy, &activity, &shutdown).await;
    });
}

/// Check and normalise: refuses what is not proxied or malformed, makes an absolute-form
/// target's authority the Host, and removes dot-segments from the path.
fn normalize(req: &mut Request<Incoming>, conn: &ConnContext) -> Result<(), ProxyError> {
    if req.method() == http::Method::CONNECT {
        return Err(ProxyError::BadRequest("CONNECT is not proxied"));
    }
    malformed::check(
        req.version(),
        req.uri(),
        req.headers(),
        conn.clock.take_saw_content_length(),
    )
    .map_err(ProxyError::BadRequest)?;
    // An absolute-form target's authority outranks `Host` (RFC 9112 §3.2.2): it becomes
    // the Host for routing, for `host_header = "preserve"` and for `X-Forwarded-Host`.
    if let Some(authority) = req.uri().authority() {
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            req.headers_mut().insert(HOST, host);
        }
    }
    // Dot-segments are removed before routing; the normal path is also what is sent.
    match path::normalize(req.uri().path()) {
        Ok(std::borrow::Cow::Borrowed(_)) => {}
        Ok(std::borrow::Cow::Owned(normal)) => {
            *req.uri_mut() = route::with_path(req.uri(), &normal)
        }
        Err(path::Climbs) => return Err(ProxyError::BadRequest("path climbs above /")),
    }
    Ok(())
}

/// Handshake and origin: whether the request is a WebSocket handshake this route takes
/// (its key), and its place under `max_tunnels_per_ip`. A drain refuses it here, once it
/// is classified, so the refusal is counted as a handshake's.
fn check_handshake<'r>(
    req: &Request<Incoming>,
    route: &'r Route,
    conn: &ConnContext,
    outcome: &mut Outcome<'r>,
) -> Result<(Option<HeaderValue>, Option<TunnelPermit>), ProxyError> {
    let key = match websocket::classify(req.method(), req.version(), req.headers()) {
        Upgrade::WebSocket { key } if route.config.websocket => Some(key),
        Upgrade::InvalidWebSocket { reason } if route.config.websocket => {
            outcome.handshake = true;
            return Err(ProxyError::InvalidHandshake(reason));
        }
        // No upgrade, another protocol, or upgrades off on this route: plain HTTP, and the
        // `Upgrade` header goes as the hop-by-hop header it is.
        _ => None,
    };
    outcome.handshake = key.is_some();
    if conn.shutdown.is_draining() {
        return Err(ProxyError::Draining);
    }
    if key.is_none() {
        return Ok((None, None));
    }
    if !websocket::origin_allowed(route.config.allowed_origins.as_deref(), req.headers()) {
        return Err(ProxyError::OriginNotAllowed);
    }
    let permit = conn
        .limits
        .admit_tunnel(conn.peer.ip())
        .ok_or(ProxyError::TooManyTunnels)?;
    Ok((key, Some(permit)))
}

/// Send, and wait for the response head; from here on nothing is retried on another
/// server. `read_timeout` counts from the moment the whole request is sent: a slow upload
/// is the client's doing, timed by `body_timeout`, and never blamed on the server.
async fn exchange(
    sender: Sender,
    req: Request<OutgoingBody>,
    server: &Server,
    pool: &Pool,
    read_timeout: std::time::Duration,
    conn: &ConnContext,
) -> Result<(Response<Incoming>, Sender), ProxyError> {
    let deadline = async {
        conn.clock.body_sent().await;
        tokio::time::sleep(read_timeout).await;
    };
    let sent = tokio::select! {
        sent = send(sender, req, server, pool) => sent,
        () = deadline => {
            server.record_failure();
            return Err(ProxyError::ResponseTimeout(read_timeout));
        }
    };
    sent.map_err(|err| {
        // The exchange broke: the client's body, if it failed, is the cause.
        match conn.clock.body_end() {
            BodyEnd::TimedOut => ProxyError::BodyTimeout,
            BodyEnd::Broken => ProxyError::BadRequest("broken request body"),
            BodyEnd::Complete | BodyEnd::Pending => err,
        }
    })
}

/// The first candidate that can be reached, in balancing order, each tried once, with the
/// request counted as open on it since it was picked.
async fn connect_any<'a>(
    pool: &'a Pool,
    balance_key: Option<u32>,
    route: &Arc<str>,
) -> Result<(&'a Arc<Server>, Sender, Active), ProxyError> {
    let mut last: Option<ConnectError> = None;
    for server in pool.candidates(balance_key) {
        let active = server.open();
        match server.connection(pool.connect_timeout).await {
            Ok(sender) => return Ok((server, sender, active)),
            Err(err) if !err.blames_server() => {
                // sluice's own shortage: no other server would fare better.
                return Err(ProxyError::AllServersFailed(err));
            }
            Err(err) => {
                server.state.connect_errors.inc();
                let down = server.record_failure();
                tracing::warn!(
                    route = &**route,
                    upstream = &*pool.name,
                    server = &*server.label,
                    cause = %err,
                    marked_down = down,
                    "upstream connect failed"
                );
                last = Some(err);
            }
        }
    }
    Err(match last {
        Some(err) => ProxyError::AllServersFailed(err),
        None => ProxyError::NoServerAvailable,
    })
}

/// Sends the request. A pooled connection that the server was closing hands the request
/// back unsent; it then goes once more over a fresh connection to the same server.
async fn send(
    mut sender: Sender,
    req: Request<OutgoingBody>,
    server: &Server,
    pool: &Pool,
) -> Result<(Response<Incoming>, Sender), ProxyError> {
    let req = match sender.ready().await {
        Ok(()) => match sender.try_send_request(req).await {
            Ok(response) => return Ok((response, sender)),
            Err(mut err) => match err.take_message() {
                Some(req) => req,
                None => return Err(ProxyError::Upstream(err.into_error())),
            },
        },
        Err(_) => req,
    };
    let mut fresh = connect::open(server.addr, pool.connect_timeout, server.tls.as_ref())
        .await
        .map_err(|err| {
            if err.blames_server() {
                server.state.connect_errors.inc();
                server.record_failure();
            }
            ProxyError::AllServersFailed(err)
        })?;
    match fresh.try_send_request(req).await {
        Ok(response) => Ok((response, fresh)),
        Err(err) => Err(ProxyError::Upstream(err.into_error())),
    }
}

/// A tunnel's Host and target for its log line, as one owned copy (the Host, then the
/// target as the client sent it) and where the Host ends: hyper's parsed values are slices
/// of the connection's read buffer, which they would keep alive for the tunnel's life. One
/// allocation of the exact size, made once per handshake.
fn tunnel_target(parts: &http::request::Parts) -> (Box<str>, usize) {
    use std::fmt::Write as _;
    let host = parts
        .headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("-");
    let uri = &parts.uri;
    // The length of the Uri's text as it writes itself: scheme "://", authority, path,
    // "?" query.
    let target_len = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path().len()
        + uri.query().map_or(0, |q| q.len() + 1);
    let mut text = String::with_capacity(host.len() + target_len);
    text.push_str(host);
    // Writing into a String cannot fail.
    let _ = write!(text, "{uri}");
    (text.into_boxed_str(), host.len())
}

/// The Host a request is for: the authority of an absolute-form target, which outranks
/// the `Host` header (RFC 9112 §3.2.2), or else the `Host` header.
fn request_host<B>(req: &Request<B>) -> Option<&str> {
    match req.uri().authority() {
        Some(authority) => Some(authority.as_str()),
        None => req.headers().get(HOST).and_then(|h| h.to_str().ok()),
    }
}

/// A response sluice writes itself: the status and one short line.
pub fn error_response(status: StatusCode) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::fixed(status_body(status)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
