//! The configuration: loading, validating and the validated runtime types.
//!
//! Loading happens in two stages (see `raw` and `validate`): `raw` parses the TOML (with
//! `toml_edit`) into a tree that keeps the span of every key, value and table header, then
//! `validate` walks that tree, refusing unknown keys and wrong types as it goes (serde's
//! `deny_unknown_fields` would stop at the first), and turns it into the types below while
//! collecting *every* problem, each rendered by `diagnostic` as
//! `FILE:LINE:COL: key.path: what is wrong (what is allowed)`.
//!
//! Nothing in this module binds a socket or resolves a name: `sluice check` runs it alone.

mod diagnostic;
mod raw;
mod units;
mod validate;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use ipnet::IpNet;

pub use diagnostic::{ConfigError, Problem};

/// A fully validated configuration. Every reference in it (route → upstream) resolves.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (used in messages and to resolve relative paths).
    pub source: PathBuf,
    pub proxy: ProxySettings,
    pub listeners: Vec<ListenerConfig>,
    /// Upstream pools by name, in name order.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Routes in file order. Matching precedence is the router's business, not the file order.
    pub routes: Vec<RouteConfig>,
    pub admin: Option<AdminConfig>,
    /// Lines worth an operator's attention that do not stop the file from being used
    /// (a certificate about to expire), as `FILE:LINE:COL: key.path: warning: …`.
    pub warnings: Vec<String>,
}

/// `[proxy]`: global settings.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Default 30s.
    pub shutdown_timeout: Duration,
    /// Default 65536; at least 1.
    pub max_connections: usize,
    /// Default none (no per-IP limit); at least 1 when set.
    pub max_connections_per_ip: Option<usize>,
    /// Default none; WebSocket tunnels held at once from one client address.
    pub max_tunnels_per_ip: Option<usize>,
    /// `IP:PORT` of a DNS server; `None` means the system resolver.
    pub resolver: Option<SocketAddr>,
    /// Peers whose `X-Forwarded-*` headers are believed.
    pub trusted_proxies: Vec<IpNet>,
}

/// One `[[listener]]`.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub addr: SocketAddr,
    /// Certificates to serve; empty means plain HTTP. The first is the SNI default.
    pub tls: Vec<TlsCertConfig>,
    /// Default 10s.
    pub header_timeout: Duration,
    /// Default 65536. At least 1024.
    pub max_header_bytes: usize,
    /// Default 60s: the longest wait for the next byte of a request body.
    pub body_timeout: Duration,
    /// Default 60s: the longest a write to the client may make no progress.
    pub send_timeout: Duration,
}

/// One `{ cert, key }` table of a listener's `tls`; paths already made absolute, and the
/// files already read (so a bad certificate is a config problem, reported at its place).
#[derive(Debug, Clone)]
pub struct TlsCertConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub loaded: crate::tls::certs::LoadedCert,
}

/// One `[upstream.NAME]`.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    /// In file order; at least one.
    pub servers: Vec<ServerConfig>,
    pub balance: Balance,
    pub hash_key: HashKey,
    /// Default 5s.
    pub connect_timeout: Duration,
    /// Default 1. `0` disables passive health (nginx semantics).
    pub max_fails: u32,
    /// Default 10s.
    pub fail_timeout: Duration,
    pub health_check: Option<HealthCheckConfig>,
    /// Idle pooled connections per server; default 32; `0` sends `Connection: close`.
    pub keepalive: usize,
    pub tls: Option<UpstreamTlsConfig>,
    /// Default 30s.
    pub resolve_interval: Duration,
    /// Default 5m: the window over which a draining server's tunnels are closed.
    pub drain_timeout: Duration,
}

/// One entry of `servers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// `host:port` as written (the host may be an IP literal or a DNS name).
    pub addr: String,
    /// The host part, without brackets for IPv6.
    pub host: String,
    pub port: u16,
    /// Default 1; 1..=1000.
    pub weight: u32,
    /// Default false.
    pub backup: bool,
    /// `drain = true`: no new requests or tunnels; open tunnels closed over `drain_timeout`.
    pub drain: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastConn,
    Hash,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    Ip,
    /// Header name, lower-cased.
    Header(HeaderName),
    Cookie(String),
    Path,
}

#[derive(Debug, Clone)]
pub struct HealthCheckConfig {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy: u32,
    pub unhealthy: u32,
}

#[derive(Debug, Clone)]
pub struct UpstreamTlsConfig {
    /// Absolute path of a CA bundle; `None` means the system roots.
    pub ca: Option<PathBuf>,
    /// SNI and verified name; `None` means the server's host.
    pub server_name: Option<String>,
}

/// One `[[route]]`.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Position in the file (0-based), used to name the route in logs and metrics
    /// when it has no better name.
    pub index: usize,
    pub host: Option<HostPattern>,
    /// Starts with `/`; no trailing `/` unless it is exactly `/`.
    pub path: String,
    /// Name of an existing upstream (validated).
    pub upstream: String,
    pub strip_prefix: bool,
    pub websocket: bool,
    /// `None`: any origin. Entries compared case-insensitively with the `Origin` header.
    pub allowed_origins: Option<Vec<String>>,
    pub host_header: HostHeader,
    /// Applied last, in file order.
    pub set_headers: Vec<(HeaderName, HeaderValue)>,
    /// Default 60s.
    pub read_timeout: Duration,
    /// Default 1h.
    pub idle_timeout: Duration,
    /// Tunnels: the longest message (all its fragments) passed on; default none.
    pub max_message_bytes: Option<u64>,
    /// Tunnels: half-open detection; default none.
    pub ping_interval: Option<Duration>,
}

impl RouteConfig {
    /// A short human name for logs and metrics: `host/path` or `path`.
    pub fn label(&self) -> String {
        match &self.host {
            Some(h) => format!("{}{}", h, self.path),
            None => self.path.clone(),
        }
    }
}

/// A route's `host`: exact (`example.com`) or wildcard (`*.example.com`), lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// The suffix including the leading dot: `*.example.com` → `.example.com`.
    Wildcard(String),
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(suffix) => write!(f, "*{suffix}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostHeader {
    /// The client's Host, as `proxy_set_header Host $host`.
    Preserve,
    /// The chosen server's `host:port`.
    Upstream,
    /// Sent as it is.
    Fixed(HeaderValue),
}

/// `[admin]`.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub addr: SocketAddr,
}

impl Config {
    /// Reads and validates `path`.
    ///
    /// # Errors
    /// The file cannot be read, or any problem in it (all of them are reported).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text, path)
    }

    /// Validates `text` as if it had been read from `path` (which names the file in
    /// messages and anchors relative paths).
    ///
    /// # Errors
    /// Every problem found, in file order.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        validate::validate(text, path)
    }

    /// The short summary `sluice check` prints for a valid file.
    pub fn summary(&self) -> String {
        validate::summary(self)
    }
}

/// Whether `ip` is in one of `nets`.
pub fn is_trusted(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(&ip))
}
