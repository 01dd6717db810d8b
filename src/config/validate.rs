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
    "resolver",
    "trusted_proxies",
];
const LISTENER_KEYS: &[&str] = &["addr", "tls", "header_timeout", "max_header_bytes"];
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
        base_dir: base_dir(path),
    };
    let config = cx.config(&root, path);
    match config {
        Some(config) if cx.problems.is_empty() => Ok(config),
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

/// Validation state: the problems found so far and what relative paths are anchored to.
struct Cx {
    problems: Problems,
    base_dir: PathBuf,
}

impl Cx {
    fn push(&mut self, node: &Node, path: &str, message: String) {
        self.problems
            .push(node.span.clone(), path.to_owned(), message);
    }

    /// `not supported yet (remove it; REASON)`, pointing at `node`.
    fn not_yet(&mut self, node: &Node, path: &str, reason: &str) {
        self.push(
            node,
            path,
            format!("not supported yet (remove it; {reason})"),
        );
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
        let admin = top.get("admin").and_then(|node| self.admin(node));
        Some(Config {
            source: path.to_path_buf(),
            proxy,
            listeners,
            upstreams,
            routes,
            admin,
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
        if let Some(node) = f.get("resolver") {
            let path = f.key_path("resolver");
            if let Some(addr) = self.ip_port(node, &path, false) {
                settings.resolver = Some(addr);
                self.not_yet(
                    node,
                    &path,
                    "upstream host names are resolved by the system resolver",
                );
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
            if let Some(addr) = addr {
                listeners.push(ListenerConfig {
                    addr,
                    tls,
                    header_timeout,
                    max_header_bytes,
                });
            }
        }
        listeners
    }

    /// `tls = { cert, key }` or a list of such tables; checked, then refused.
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
        let before = self.problems.len();
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
            if let (Some(cert), Some(key)) = (cert, key) {
                certs.push(TlsCertConfig { cert, key });
            }
        }
        if self.problems.len() == before && !certs.is_empty() {
            self.not_yet(
                node,
                &path,
                "until TLS termination is built, terminate TLS in front of sluice",
            );
        }
        certs
    }

    fn admin(&mut self, node: &Node) -> Option<AdminConfig> {
        let table = self.table(node, "admin", "[admin] with addr = \"127.0.0.1:9901\"")?;
        let before = self.problems.len();
        let f = Fields::new(node, table, "admin".into(), &["addr"], &mut self.problems);
        let addr_node = f.require("addr", IP_PORT_HINT, &mut self.problems)?;
        let addr = self.ip_port(addr_node, &f.key_path("addr"), true)?;
        if self.problems.len() == before {
            self.not_yet(node, "admin", "the admin endpoint is not built yet");
        }
        Some(AdminConfig { addr })
    }
}

fn default_proxy() -> ProxySettings {
    ProxySettings {
        shutdown_timeout: Duration::from_secs(30),
        max_connections: 65_536,
        max_connections_per_ip: None,
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
