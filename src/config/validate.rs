//! Stage 2: the spanned tree from `raw` → the validated types of `config`, collecting
//! every problem instead of stopping at the first.
//!
//! Each section (`[proxy]`, `[[listener]]`, `[upstream.NAME]`, `[[route]]`, `[admin]`) has
//! one function that reads its table with [`Fields`] (which reports unknown keys and wrong
//! types), checks each value's form with the pure parsers in `forms`, and falls back to a
//! default after a problem so that later checks still run. Keys whose behaviour is not
//! built yet are checked for form first and then refused, so that a file written today
//! keeps working (or fails for a real reason) when the feature lands.

mod forms;
mod route;
mod summary;
mod upstream;

pub(crate) use summary::summary;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::diagnostic::{ConfigError, Problems};
use super::raw::{self, as_str, wrong_type, Fields, Node, Table, Value};
use super::units::{parse_duration, DURATION_HINT};
use super::{AdminConfig, Config, ListenerConfig, ProxySettings, TlsCertConfig};
use forms::IP_PORT_HINT;

const TOP_KEYS: &[&str] = &["proxy", "listener", "upstream", "route", "admin"];
const PROXY_KEYS: &[&str] = &[
    "shutdown_timeout",
    "max_connections",
    "max_connections_per_ip",
    "max_tunnels_per_ip",
    "resolver",
    "trusted_proxies",
];
const LISTENER_KEYS: &[&str] = &[
    "addr",
    "tls",
    "header_timeout",
    "max_header_bytes",
    "body_timeout",
    "send_timeout",
];
/// Ceiling for the connection limits: far above any real file-descriptor limit, and far
/// below tokio's `Semaphore::MAX_PERMITS`, whose constructor panics past it.
const MAX_CONNECTIONS_LIMIT: i64 = 10_000_000;

/// Parses and validates `text`; `path` names the file in messages and anchors relative
/// paths.
///
/// # Errors
/// A TOML syntax error (the only problem then reported), or every validation problem, in
/// file order.
pub(crate) fn validate(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let mut problems = Problems::default();
    let root = match raw::parse(text) {
        Ok(table) => Node {
            span: 0..0,
            value: Value::Table(table),
        },
        Err(e) => {
            problems.push(
                e.span,
                String::new(),
                format!("invalid TOML: {}", e.message),
            );
            return Err(problems.into_error(text, path));
        }
    };
    let mut cx = Cx {
        problems,
        warnings: Problems::default(),
        base_dir: base_dir(path),
    };
    let config = cx.config(&root, path);
    match config {
        Some(mut config) if cx.problems.is_empty() => {
            if !cx.warnings.is_empty() {
                config.warnings = cx
                    .warnings
                    .into_error(text, path)
                    .to_string()
                    .lines()
                    .map(str::to_owned)
                    .collect();
            }
            Ok(config)
        }
        _ => Err(cx.problems.into_error(text, path)),
    }
}

/// The directory relative paths in the file are relative to.
fn base_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Validation state: the problems and warnings found so far, and what relative paths are
/// anchored to.
struct Cx {
    problems: Problems,
    warnings: Problems,
    base_dir: PathBuf,
}

/// A certificate expiring sooner than this gets a warning from `sluice check`.
const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

impl Cx {
    fn push(&mut self, node: &Node, path: &str, message: String) {
        self.problems
            .push(node.span.clone(), path.to_owned(), message);
    }

    /// `node` as a table, or a "wrong type" problem (`hint` says what the table holds).
    fn table<'a>(&mut self, node: &'a Node, path: &str, hint: &str) -> Option<&'a Table> {
        match &node.value {
            Value::Table(t) => Some(t),
            _ => {
                wrong_type(node, path, "a table", hint, &mut self.problems);
                None
            }
        }
    }

    /// `node` as an array (of anything), or a "wrong type" problem.
    fn array<'a>(&mut self, node: &'a Node, path: &str, hint: &str) -> Option<&'a [Node]> {
        match &node.value {
            Value::Array(items) => Some(items),
            _ => {
                wrong_type(node, path, "an array", hint, &mut self.problems);
                None
            }
        }
    }

    /// An array written as `[[key]]` blocks (or an inline list of tables), at least one.
    fn blocks<'a>(&mut self, node: &'a Node, path: &str, hint: &str) -> Vec<(String, &'a Node)> {
        let Value::Array(items) = &node.value else {
            wrong_type(node, path, "an array of tables", hint, &mut self.problems);
            return Vec::new();
        };
        if items.is_empty() {
            self.push(node, path, format!("empty ({hint})"));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, item)| (format!("{path}[{i}]"), item))
            .collect()
    }

    /// A duration key, or `default` when absent or wrong (the problem is recorded).
    fn duration(&mut self, f: &Fields<'_>, key: &str, default: Duration, zero: bool) -> Duration {
        let Some((text, node)) = f.string(key, DURATION_HINT, &mut self.problems) else {
            return default;
        };
        match parse_duration(text, zero) {
            Ok(d) => d,
            Err(e) => {
                self.push(node, &f.key_path(key), e.message(text));
                default
            }
        }
    }

    fn integer(&mut self, f: &Fields<'_>, key: &str, min: i64, max: i64) -> Option<i64> {
        f.integer(key, min, max, &mut self.problems)
    }

    /// An `IP:PORT` key (listener, admin, resolver): IP literals only, since nothing may be
    /// resolved before binding.
    fn ip_port(&mut self, node: &Node, path: &str, port_zero: bool) -> Option<SocketAddr> {
        let text = as_str(node, path, IP_PORT_HINT, &mut self.problems)?;
        match forms::ip_port(text, port_zero) {
            Ok(addr) => Some(addr),
            Err(message) => {
                self.push(node, path, message);
                None
            }
        }
    }

    /// A file path, made absolute against the config file's directory.
    fn file_path(&mut self, f: &Fields<'_>, key: &str, hint: &str) -> Option<PathBuf> {
        let (text, node) = f.string(key, hint, &mut self.problems)?;
        if text.is_empty() {
            self.push(node, &f.key_path(key), format!("empty path ({hint})"));
            return None;
        }
        let joined = self.base_dir.join(text);
        Some(std::path::absolute(&joined).unwrap_or(joined))
    }

    fn config(&mut self, root: &Node, path: &Path) -> Option<Config> {
        let Value::Table(table) = &root.value else {
            return None;
        };
        let top = Fields::new(root, table, String::new(), TOP_KEYS, &mut self.problems);
        let proxy = match top.get("proxy") {
            Some(node) => self.proxy(node),
            None => default_proxy(),
        };
        let listeners = match top.require(
            "listener",
            "at least one [[listener]] with an addr",
            &mut self.problems,
        ) {
            Some(node) => self.listeners(node),
            None => Vec::new(),
        };
        let (upstreams, names) = match top.get("upstream") {
            Some(node) => self.upstreams(node),
            None => (BTreeMap::new(), Vec::new()),
        };
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let routes = match top.require(
            "route",
            "at least one [[route]] with an upstream",
            &mut self.problems,
        ) {
            Some(node) => self.routes(node, &names),
            None => Vec::new(),
        };
        let admin = top
            .get("admin")
            .and_then(|node| self.admin(node, &listeners));
        Some(Config {
            source: path.to_path_buf(),
            proxy,
            listeners,
            upstreams,
            routes,
            admin,
            warnings: Vec::new(),
        })
    }

    fn proxy(&mut self, node: &Node) -> ProxySettings {
        let mut settings = default_proxy();
        let Some(table) = self.table(node, "proxy", "[proxy] with global settings") else {
            return settings;
        };
        let f = Fields::new(node, table, "proxy".into(), PROXY_KEYS, &mut self.problems);
        settings.shutdown_timeout =
            self.duration(&f, "shutdown_timeout", settings.shutdown_timeout, true);
        if let Some(n) = self.integer(&f, "max_connections", 1, MAX_CONNECTIONS_LIMIT) {
            settings.max_connections = to_usize(n);
        }
        if let Some(n) = self.integer(&f, "max_connections_per_ip", 1, MAX_CONNECTIONS_LIMIT) {
            settings.max_connections_per_ip = Some(to_usize(n));
        }
        if let Some(n) = self.integer(&f, "max_tunnels_per_ip", 1, MAX_CONNECTIONS_LIMIT) {
            settings.max_tunnels_per_ip = Some(to_usize(n));
        }
        if let Some(node) = f.get("resolver") {
            let path = f.key_path("resolver");
            if let Some(addr) = self.ip_port(node, &path, false) {
                settings.resolver = Some(addr);
            }
        }
        if let Some(node) = f.get("trusted_proxies") {
            let path = f.key_path("trusted_proxies");
            let hint = "a list of CIDRs, e.g. [\"10.0.0.0/8\", \"::1/128\"]";
            for (i, item) in self
                .array(node, &path, hint)
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                let item_path = format!("{path}[{i}]");
                let Some(text) = as_str(item, &item_path, forms::CIDR_HINT, &mut self.problems)
                else {
                    continue;
                };
                match forms::cidr(text) {
                    Ok(net) => settings.trusted_proxies.push(net),
                    Err(message) => self.push(item, &item_path, message),
                }
            }
        }
        settings
    }

    fn listeners(&mut self, node: &Node) -> Vec<ListenerConfig> {
        let mut listeners = Vec::new();
        let mut seen: Vec<(SocketAddr, String)> = Vec::new();
        let hint = "write one [[listener]] block per address";
        for (path, item) in self.blocks(node, "listener", hint) {
            let Some(table) = self.table(item, &path, "{ addr = \"IP:PORT\" }") else {
                continue;
            };
            let f = Fields::new(item, table, path.clone(), LISTENER_KEYS, &mut self.problems);
            let addr_node = f.require("addr", IP_PORT_HINT, &mut self.problems);
            let addr_path = f.key_path("addr");
            let addr = addr_node.and_then(|n| self.ip_port(n, &addr_path, true));
            if let (Some(addr), Some(addr_node)) = (addr, addr_node) {
                // Port 0 asks the OS for a fresh port each time, so it never collides.
                match seen.iter().find(|(a, _)| *a == addr && addr.port() != 0) {
                    Some((_, first)) => self.push(
                        addr_node,
                        &addr_path,
                        format!(
                            "\"{addr}\" is already the address of {first} (one listener per address)"
                        ),
                    ),
                    None => seen.push((addr, path.clone())),
                }
            }
            let tls = self.listener_tls(&f);
            let header_timeout =
                self.duration(&f, "header_timeout", Duration::from_secs(10), false);
            let max_header_bytes = self
                .integer(&f, "max_header_bytes", 1024, 1_048_576)
                .map_or(65_536, to_usize);
            let body_timeout = self.duration(&f, "body_timeout", Duration::from_secs(60), false);
            let send_timeout = self.duration(&f, "send_timeout", Duration::from_secs(60), false);
            if let Some(addr) = addr {
                listeners.push(ListenerConfig {
                    addr,
                    tls,
                    header_timeout,
                    max_header_bytes,
                    body_timeout,
                    send_timeout,
                });
            }
        }
        listeners
    }

    /// `tls = { cert, key }` or a list of such tables. Each pair of files is read and
    /// checked here, so a missing file, a file with no certificate or key, or a key that
    /// does not match is reported at its place; a certificate expiring within 14 days is
    /// a warning.
    fn listener_tls(&mut self, f: &Fields<'_>) -> Vec<TlsCertConfig> {
        let Some(node) = f.get("tls") else {
            return Vec::new();
        };
        let path = f.key_path("tls");
        let hint = "{ cert = \"fullchain.pem\", key = \"key.pem\" }, or a list of them";
        let items: Vec<(String, &Node)> = match &node.value {
            Value::Table(_) => vec![(path.clone(), node)],
            Value::Array(items) if items.is_empty() => {
                self.push(node, &path, format!("empty list ({hint})"));
                Vec::new()
            }
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, n)| (format!("{path}[{i}]"), n))
                .collect(),
            _ => {
                wrong_type(node, &path, "a table", hint, &mut self.problems);
                Vec::new()
            }
        };
        let mut certs = Vec::new();
        for (item_path, item) in items {
            let Some(table) = self.table(item, &item_path, hint) else {
                continue;
            };
            let tf = Fields::new(item, table, item_path, &["cert", "key"], &mut self.problems);
            tf.require("cert", "a PEM certificate chain file", &mut self.problems);
            tf.require("key", "a PEM private key file", &mut self.problems);
            let cert = self.file_path(&tf, "cert", "a PEM certificate chain file");
            let key = self.file_path(&tf, "key", "a PEM private key file");
            let (Some(cert), Some(key)) = (cert, key) else {
                continue;
            };
            match crate::tls::certs::load(&cert, &key) {
                Ok(loaded) => {
                    self.warn_expiry(&tf, &loaded);
                    certs.push(TlsCertConfig { cert, key, loaded });
                }
                Err(err) => {
                    let at = match &err {
                        crate::tls::certs::CertError::Mismatch { .. } => None,
                        other if other.path() == key => Some("key"),
                        _ => Some("cert"),
                    };
                    match at.and_then(|k| tf.get(k).map(|n| (k, n))) {
                        Some((k, n)) => self.push(n, &tf.key_path(k), err.to_string()),
                        None => self.problems.push(
                            tf.span.clone(),
                            tf.path.clone(),
                            format!("{err} (a key made for this certificate)"),
                        ),
                    }
                }
            }
        }
        certs
    }

    /// A warning when the certificate has expired or expires within [`EXPIRY_WARNING`].
    fn warn_expiry(&mut self, tf: &Fields<'_>, loaded: &crate::tls::certs::LoadedCert) {
        let Some(node) = tf.get("cert") else {
            return;
        };
        let now = std::time::SystemTime::now();
        let message = match loaded.not_after.duration_since(now) {
            Err(_) => "warning: the certificate has expired (renew it)".to_owned(),
            Ok(left) if left < EXPIRY_WARNING => format!(
                "warning: the certificate expires in {} (renew it)",
                humantime::format_duration(Duration::from_secs(left.as_secs() / 3600 * 3600))
            ),
            Ok(_) => return,
        };
        self.warnings
            .push(node.span.clone(), tf.key_path("cert"), message);
    }

    /// `[admin]`: its own address, never a proxy listener's (the admin endpoint must not
    /// be reachable where the proxy faces clients).
    fn admin(&mut self, node: &Node, listeners: &[ListenerConfig]) -> Option<AdminConfig> {
        let table = self.table(node, "admin", "[admin] with addr = \"127.0.0.1:9901\"")?;
        let f = Fields::new(node, table, "admin".into(), &["addr"], &mut self.problems);
        let addr_node = f.require("addr", IP_PORT_HINT, &mut self.problems)?;
        let addr = self.ip_port(addr_node, &f.key_path("addr"), true)?;
        if addr.port() != 0 && listeners.iter().any(|l| l.addr == addr) {
            self.push(
                addr_node,
                &f.key_path("addr"),
                format!("\"{addr}\" is a listener's address (the admin endpoint needs its own)"),
            );
            return None;
        }
        Some(AdminConfig { addr })
    }
}

fn default_proxy() -> ProxySettings {
    ProxySettings {
        shutdown_timeout: Duration::from_secs(30),
        max_connections: 65_536,
        max_connections_per_ip: None,
        max_tunnels_per_ip: None,
        resolver: None,
        trusted_proxies: Vec::new(),
    }
}

/// Only called on values already range-checked, so the fallbacks never apply.
fn to_usize(n: i64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

fn to_u32(n: i64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use http::{HeaderName, HeaderValue};

    use super::*;
    use crate::config::{Balance, HashKey, HostHeader, HostPattern, ServerConfig};

    fn load(text: &str) -> Config {
        match validate(text, Path::new("t.toml")) {
            Ok(config) => config,
            Err(e) => panic!("{e}"),
        }
    }

    const MINIMAL: &str = r#"
[[listener]]
addr = "0.0.0.0:8080"
[upstream.backend]
servers = ["192.168.3.1:3000", "[::1]:3000"]
[[route]]
upstream = "backend"
"#;

    #[test]
    fn defaults_follow_the_spec() {
        let c = load(MINIMAL);
        assert_eq!(c.source, Path::new("t.toml"));
        assert_eq!(c.proxy.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(c.proxy.max_connections, 65_536);
        assert_eq!(c.proxy.max_connections_per_ip, None);
        assert_eq!(c.proxy.resolver, None);
        assert!(c.proxy.trusted_proxies.is_empty());
        let l = &c.listeners[0];
        assert_eq!(l.addr, "0.0.0.0:8080".parse::<SocketAddr>().unwrap());
        assert!(l.tls.is_empty());
        assert_eq!(l.header_timeout, Duration::from_secs(10));
        assert_eq!(l.max_header_bytes, 65_536);
        assert_eq!(l.body_timeout, Duration::from_secs(60));
        assert_eq!(l.send_timeout, Duration::from_secs(60));
        assert_eq!(c.proxy.max_tunnels_per_ip, None);
        let u = &c.upstreams["backend"];
        assert_eq!(u.name, "backend");
        assert_eq!(u.balance, Balance::RoundRobin);
        assert_eq!(u.hash_key, HashKey::Ip);
        assert_eq!(u.connect_timeout, Duration::from_secs(5));
        assert_eq!(u.max_fails, 1);
        assert_eq!(u.fail_timeout, Duration::from_secs(10));
        assert!(u.health_check.is_none());
        assert_eq!(u.keepalive, 32);
        assert!(u.tls.is_none());
        assert_eq!(u.resolve_interval, Duration::from_secs(30));
        assert_eq!(
            u.servers[1],
            ServerConfig {
                addr: "[::1]:3000".into(),
                host: "::1".into(),
                port: 3000,
                weight: 1,
                backup: false,
                drain: false,
            }
        );
        let r = &c.routes[0];
        assert_eq!(r.index, 0);
        assert_eq!(r.host, None);
        assert_eq!(r.path, "/");
        assert_eq!(r.upstream, "backend");
        assert!(!r.strip_prefix);
        assert!(r.websocket);
        assert_eq!(r.allowed_origins, None);
        assert_eq!(r.host_header, HostHeader::Preserve);
        assert!(r.set_headers.is_empty());
        assert_eq!(r.read_timeout, Duration::from_secs(60));
        assert_eq!(r.idle_timeout, Duration::from_secs(3600));
        assert!(c.admin.is_none());
    }

    #[test]
    fn every_supported_key_reaches_the_validated_types() {
        let c = load(
            r#"
[proxy]
shutdown_timeout = "0s"
max_connections = 100
max_connections_per_ip = 3
max_tunnels_per_ip = 2
trusted_proxies = ["10.1.2.3/8", "::1"]
[[listener]]
addr = "[::]:0"
header_timeout = "250ms"
max_header_bytes = 2048
body_timeout = "3s"
send_timeout = "4s"
[upstream.b]
servers = [{ addr = "App.Internal:81", weight = 7, backup = true }]
balance = "round_robin"
connect_timeout = "1m30s"
max_fails = 0
fail_timeout = "1h"
keepalive = 0
tls = false
[[route]]
host = "*.Example.COM"
path = "/ws//"
upstream = "b"
strip_prefix = true
websocket = false
allowed_origins = ["https://Example.com"]
host_header = "internal"
set_headers = { "X-B" = "2", "X-A" = "1" }
read_timeout = "1s"
idle_timeout = "2m"
[[route]]
host = "example.com"
upstream = "b"
host_header = "upstream"
"#,
        );
        assert_eq!(c.proxy.shutdown_timeout, Duration::ZERO);
        assert_eq!(c.proxy.max_connections, 100);
        assert_eq!(c.proxy.max_connections_per_ip, Some(3));
        let nets: Vec<String> = c
            .proxy
            .trusted_proxies
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(nets, ["10.0.0.0/8", "::1/128"]);
        assert!(crate::config::is_trusted(
            &c.proxy.trusted_proxies,
            "10.9.9.9".parse::<IpAddr>().unwrap()
        ));
        let l = &c.listeners[0];
        assert_eq!(l.addr, "[::]:0".parse::<SocketAddr>().unwrap());
        assert_eq!(l.header_timeout, Duration::from_millis(250));
        assert_eq!(l.max_header_bytes, 2048);
        assert_eq!(l.body_timeout, Duration::from_secs(3));
        assert_eq!(l.send_timeout, Duration::from_secs(4));
        assert_eq!(c.proxy.max_tunnels_per_ip, Some(2));
        let u = &c.upstreams["b"];
        assert_eq!(u.connect_timeout, Duration::from_secs(90));
        assert_eq!(u.max_fails, 0);
        assert_eq!(u.fail_timeout, Duration::from_secs(3600));
        assert_eq!(u.keepalive, 0);
        assert!(u.tls.is_none());
        assert_eq!(
            u.servers,
            [ServerConfig {
                addr: "App.Internal:81".into(),
                host: "App.Internal".into(),
                port: 81,
                weight: 7,
                backup: true,
                drain: false,
            }]
        );
        let r = &c.routes[0];
        assert_eq!(r.host, Some(HostPattern::Wildcard(".example.com".into())));
        assert_eq!(r.path, "/ws");
        assert_eq!(r.label(), "*.example.com/ws");
        assert!(r.strip_prefix);
        assert!(!r.websocket);
        assert_eq!(r.allowed_origins, Some(vec!["https://Example.com".into()]));
        assert_eq!(
            r.host_header,
            HostHeader::Fixed(HeaderValue::from_static("internal"))
        );
        assert_eq!(
            r.set_headers,
            [
                (
                    HeaderName::from_static("x-b"),
                    HeaderValue::from_static("2")
                ),
                (
                    HeaderName::from_static("x-a"),
                    HeaderValue::from_static("1")
                ),
            ]
        );
        assert_eq!(r.read_timeout, Duration::from_secs(1));
        assert_eq!(r.idle_timeout, Duration::from_secs(120));
        let r1 = &c.routes[1];
        assert_eq!(r1.index, 1);
        assert_eq!(r1.host, Some(HostPattern::Exact("example.com".into())));
        assert_eq!(r1.host_header, HostHeader::Upstream);
    }

    #[test]
    fn problems_come_back_located_and_in_file_order() {
        let text = "[[route]]\nupstream = \"x\"\n\n[[listener]]\naddr = \"nope\"\n";
        let err = validate(text, Path::new("t.toml")).unwrap_err();
        let got: Vec<(usize, usize, &str)> = err
            .problems()
            .iter()
            .map(|p| (p.line, p.column, p.key_path.as_str()))
            .collect();
        assert_eq!(
            got,
            [(2, 12, "route[0].upstream"), (5, 8, "listener[0].addr")]
        );
    }

    #[test]
    fn every_problem_is_one_line_whatever_the_file_quotes() {
        // Found by the property tests: a pool named with a newline, listed in a route's
        // "defined:" hint, split its problem over two lines.
        let text = "[upstream]\n\"k\\nk\" = 1.5\n[[route]]";
        let err = validate(text, Path::new("f.toml")).unwrap_err();
        assert_eq!(
            err.to_string().lines().count(),
            err.problems().len(),
            "{err}"
        );
    }

    #[test]
    fn relative_paths_are_anchored_at_the_config_directory() {
        assert_eq!(base_dir(Path::new("sluice.toml")), Path::new("."));
        assert_eq!(
            base_dir(Path::new("/etc/sluice/s.toml")),
            Path::new("/etc/sluice")
        );
        assert_eq!(base_dir(Path::new("conf/s.toml")), Path::new("conf"));
    }
}
