//! `[upstream.NAME]`: server pools.

use std::collections::BTreeMap;
use std::time::Duration;

use super::forms;
use super::{to_u32, to_usize, Cx};
use crate::config::raw::{as_str, join_key, wrong_type, Fields, Node, Value};
use crate::config::{
    Balance, HashKey, HealthCheckConfig, ServerConfig, UpstreamConfig, UpstreamTlsConfig,
};

const UPSTREAM_KEYS: &[&str] = &[
    "servers",
    "balance",
    "hash_key",
    "connect_timeout",
    "max_fails",
    "fail_timeout",
    "health_check",
    "keepalive",
    "tls",
    "resolve_interval",
    "drain_timeout",
];
const SERVER_KEYS: &[&str] = &["addr", "weight", "backup", "drain"];
const HEALTH_KEYS: &[&str] = &["path", "interval", "timeout", "healthy", "unhealthy"];
const SERVER_HINT: &str =
    "\"host:port\", or a table { addr = \"host:port\", weight = 1, backup = false }";

impl Cx {
    /// The pools, and the names defined in the file. Names are collected even for pools
    /// with problems, so that one bad pool does not cascade into "no upstream named"
    /// problems on every route that uses it.
    pub(super) fn upstreams(
        &mut self,
        node: &Node,
    ) -> (BTreeMap<String, UpstreamConfig>, Vec<String>) {
        let mut upstreams = BTreeMap::new();
        let hint = "one [upstream.NAME] table per server pool";
        let Some(table) = self.table(node, "upstream", hint) else {
            return (upstreams, Vec::new());
        };
        let mut names: Vec<String> = Vec::new();
        for entry in &table.entries {
            let path = join_key("upstream", &entry.key);
            if entry.key.is_empty() {
                self.problems.push(
                    entry.key_span.clone(),
                    path,
                    "empty upstream name (a name such as \"backend\")".into(),
                );
                continue;
            }
            names.push(entry.key.clone());
            if let Some(upstream) = self.upstream(&entry.key, &entry.node, path) {
                upstreams.insert(entry.key.clone(), upstream);
            }
        }
        names.sort();
        (upstreams, names)
    }

    fn upstream(&mut self, name: &str, node: &Node, path: String) -> Option<UpstreamConfig> {
        let hint = "a pool: [upstream.NAME] with servers = [\"host:port\", ...]";
        let table = self.table(node, &path, hint)?;
        let f = Fields::new(node, table, path, UPSTREAM_KEYS, &mut self.problems);
        let servers = self.servers(&f);
        let balance = self.balance(&f);
        let hash_key = self.hash_key(&f, balance);
        let connect_timeout = self.duration(&f, "connect_timeout", Duration::from_secs(5), false);
        let max_fails = self.integer(&f, "max_fails", 0, 1000).map_or(1, to_u32);
        let fail_timeout = self.duration(&f, "fail_timeout", Duration::from_secs(10), false);
        let health_check = self.health_check(&f);
        let keepalive = self
            .integer(&f, "keepalive", 0, 65_536)
            .map_or(32, to_usize);
        let tls = self.upstream_tls(&f);
        let drain_timeout = self.duration(&f, "drain_timeout", Duration::from_secs(300), false);
        let resolve_interval =
            self.duration(&f, "resolve_interval", Duration::from_secs(30), false);
        Some(UpstreamConfig {
            name: name.to_owned(),
            servers,
            balance,
            hash_key,
            connect_timeout,
            max_fails,
            fail_timeout,
            health_check,
            keepalive,
            drain_timeout,
            tls,
            resolve_interval,
        })
    }

    fn servers(&mut self, f: &Fields<'_>) -> Vec<ServerConfig> {
        let mut servers: Vec<ServerConfig> = Vec::new();
        let Some(node) = f.require("servers", SERVER_HINT, &mut self.problems) else {
            return servers;
        };
        let path = f.key_path("servers");
        let list_hint = format!("a list of {SERVER_HINT}");
        let Some(items) = self.array(node, &path, &list_hint) else {
            return servers;
        };
        if items.is_empty() {
            self.push(
                node,
                &path,
                format!("empty list (at least one server: {SERVER_HINT})"),
            );
        }
        let mut seen: Vec<(String, u16, String)> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            let Some((server, addr_node, addr_path)) = self.server(item, &item_path) else {
                continue;
            };
            let host = server.host.to_ascii_lowercase();
            if let Some((_, _, first)) = seen
                .iter()
                .find(|(h, p, _)| *h == host && *p == server.port)
            {
                let message = format!(
                    "{:?} is already listed as {first} (list a server once; give it a weight for more traffic)",
                    server.addr
                );
                self.push(addr_node, &addr_path, message);
            } else {
                seen.push((host, server.port, item_path));
            }
            servers.push(server);
        }
        servers
    }

    /// One `servers` entry: a `"host:port"` string or a `{ addr, weight, backup }` table.
    /// Returns the server and the node and path its address was read from.
    fn server<'a>(
        &mut self,
        item: &'a Node,
        path: &str,
    ) -> Option<(ServerConfig, &'a Node, String)> {
        let (addr_node, addr_path, weight, backup, drain) = match &item.value {
            Value::String(_) => (item, path.to_owned(), 1, false, false),
            Value::Table(table) => {
                let f = Fields::new(
                    item,
                    table,
                    path.to_owned(),
                    SERVER_KEYS,
                    &mut self.problems,
                );
                let addr = f.require("addr", "\"host:port\"", &mut self.problems);
                let weight = self.integer(&f, "weight", 1, 1000).map_or(1, to_u32);
                let backup = f.boolean("backup", &mut self.problems).unwrap_or(false);
                let drain = f.boolean("drain", &mut self.problems).unwrap_or(false);
                (addr?, f.key_path("addr"), weight, backup, drain)
            }
            _ => {
                wrong_type(
                    item,
                    path,
                    "a string or a table",
                    SERVER_HINT,
                    &mut self.problems,
                );
                return None;
            }
        };
        let hint = "\"host:port\", e.g. \"127.0.0.1:3000\" or \"app.internal:3000\"";
        let text = as_str(addr_node, &addr_path, hint, &mut self.problems)?;
        match forms::host_port(text) {
            Ok((host, port)) => Some((
                ServerConfig {
                    addr: text.to_owned(),
                    host,
                    port,
                    weight,
                    backup,
                    drain,
                },
                addr_node,
                addr_path,
            )),
            Err(message) => {
                self.push(addr_node, &addr_path, message);
                None
            }
        }
    }

    fn balance(&mut self, f: &Fields<'_>) -> Balance {
        let hint = "\"round_robin\", \"least_conn\" or \"hash\"";
        let Some((text, node)) = f.string("balance", hint, &mut self.problems) else {
            return Balance::RoundRobin;
        };
        let path = f.key_path("balance");
        match text {
            "round_robin" => return Balance::RoundRobin,
            "least_conn" => return Balance::LeastConn,
            "hash" => return Balance::Hash,
            _ => self.push(
                node,
                &path,
                format!("{text:?} is not a balance method ({hint})"),
            ),
        }
        Balance::RoundRobin
    }

    fn hash_key(&mut self, f: &Fields<'_>, balance: Balance) -> HashKey {
        let Some((text, node)) = f.string("hash_key", forms::HASH_KEY_HINT, &mut self.problems)
        else {
            return HashKey::Ip;
        };
        let path = f.key_path("hash_key");
        match forms::hash_key(text) {
            Ok(key) => {
                if balance != Balance::Hash {
                    // Not an error of form, but a setting that would do nothing.
                    self.push(
                        node,
                        &path,
                        "only used with balance = \"hash\" (set balance = \"hash\", or remove it)"
                            .to_owned(),
                    );
                }
                key
            }
            Err(message) => {
                self.push(node, &path, message);
                HashKey::Ip
            }
        }
    }

    fn health_check(&mut self, f: &Fields<'_>) -> Option<HealthCheckConfig> {
        let node = f.get("health_check")?;
        let path = f.key_path("health_check");
        let hint = "{ path = \"/healthz\", interval = \"5s\", timeout = \"2s\", healthy = 2, unhealthy = 3 }";
        let table = self.table(node, &path, hint)?;
        let before = self.problems.len();
        let hf = Fields::new(node, table, path.clone(), HEALTH_KEYS, &mut self.problems);
        let mut check = HealthCheckConfig {
            path: "/".into(),
            interval: self.duration(&hf, "interval", Duration::from_secs(5), false),
            timeout: self.duration(&hf, "timeout", Duration::from_secs(2), false),
            healthy: self.integer(&hf, "healthy", 1, 1000).map_or(2, to_u32),
            unhealthy: self.integer(&hf, "unhealthy", 1, 1000).map_or(3, to_u32),
        };
        let path_hint = "a request path starting with \"/\", e.g. \"/healthz\"";
        if let Some((text, pnode)) = hf.string("path", path_hint, &mut self.problems) {
            if forms::request_path(text) {
                check.path = text.to_owned();
            } else {
                self.push(
                    pnode,
                    &hf.key_path("path"),
                    format!("{text:?} is not a path ({path_hint})"),
                );
            }
        }
        if self.problems.len() > before {
            return None;
        }
        Some(check)
    }

    fn upstream_tls(&mut self, f: &Fields<'_>) -> Option<UpstreamTlsConfig> {
        let node = f.get("tls")?;
        let path = f.key_path("tls");
        let hint = "true, false, or { ca = \"ca.pem\", server_name = \"internal.example\" }";
        let before = self.problems.len();
        let tls = match &node.value {
            Value::Boolean(false) => return None,
            Value::Boolean(true) => UpstreamTlsConfig {
                ca: None,
                server_name: None,
            },
            Value::Table(table) => {
                let tf = Fields::new(
                    node,
                    table,
                    path.clone(),
                    &["ca", "server_name"],
                    &mut self.problems,
                );
                let ca = tf
                    .get("ca")
                    .and_then(|_| self.file_path(&tf, "ca", "a PEM CA bundle file"));
                let name_hint = "a DNS name, e.g. \"internal.example\"";
                let server_name = match tf.string("server_name", name_hint, &mut self.problems) {
                    Some((text, _)) if forms::dns_name(text) => Some(text.to_owned()),
                    Some((text, n)) => {
                        self.push(
                            n,
                            &tf.key_path("server_name"),
                            format!("{text:?} is not a DNS name ({name_hint})"),
                        );
                        None
                    }
                    None => None,
                };
                UpstreamTlsConfig { ca, server_name }
            }
            _ => {
                wrong_type(
                    node,
                    &path,
                    "true, false or a table",
                    hint,
                    &mut self.problems,
                );
                return None;
            }
        };
        if self.problems.len() != before {
            return None;
        }
        if let (Some(ca), Value::Table(table)) = (&tls.ca, &node.value) {
            if let Err(err) = crate::tls::client::roots_from_file(ca) {
                let at = table
                    .entries
                    .iter()
                    .find(|e| e.key == "ca")
                    .map_or(node, |e| &e.node);
                self.push(at, &format!("{path}.ca"), err.to_string());
                return None;
            }
        }
        Some(tls)
    }
}
