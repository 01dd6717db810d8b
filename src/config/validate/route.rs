//! `[[route]]`: which requests go where, and what is changed on the way.

use std::time::Duration;

use http::{HeaderName, HeaderValue};

use super::forms;
use super::Cx;
use crate::config::raw::{as_str, join_key, Fields, Node};
use crate::config::{HostHeader, RouteConfig};

const ROUTE_KEYS: &[&str] = &[
    "host",
    "path",
    "upstream",
    "strip_prefix",
    "websocket",
    "allowed_origins",
    "host_header",
    "set_headers",
    "read_timeout",
    "idle_timeout",
    "ping_interval",
    "max_message_bytes",
];

impl Cx {
    pub(super) fn routes(&mut self, node: &Node, names: &[&str]) -> Vec<RouteConfig> {
        let mut routes: Vec<RouteConfig> = Vec::new();
        let hint = "write one [[route]] block per path";
        for (index, (path, item)) in self.blocks(node, "route", hint).into_iter().enumerate() {
            let Some(table) = self.table(item, &path, "{ path = \"/\", upstream = \"NAME\" }")
            else {
                continue;
            };
            let before = self.problems.len();
            let f = Fields::new(item, table, path, ROUTE_KEYS, &mut self.problems);
            if let Some(route) = self.route(&f, index, names) {
                // A route with problems has defaults in place of its bad values; comparing
                // those would report duplicates that are not there.
                let clean = self.problems.len() == before;
                let same = routes
                    .iter()
                    .find(|r| clean && r.host == route.host && r.path == route.path);
                if let Some(first) = same {
                    let message = format!(
                        "same host and path as route[{}] (each route needs its own host or path)",
                        first.index
                    );
                    // Point at the path if written, else at the route's header.
                    match f.get("path") {
                        Some(node) => self.push(node, &f.key_path("path"), message),
                        None => self.problems.push(f.span.clone(), f.path.clone(), message),
                    }
                }
                routes.push(route);
            }
        }
        routes
    }

    fn route(&mut self, f: &Fields<'_>, index: usize, names: &[&str]) -> Option<RouteConfig> {
        let defined = if names.is_empty() {
            "no [upstream.NAME] is defined".to_owned()
        } else {
            // Names as key paths write them: quoted when not bare, so a name holding a
            // newline cannot break the one-line-per-problem output.
            let names: Vec<String> = names.iter().map(|n| join_key("", n)).collect();
            format!("defined: {}", names.join(", "))
        };
        let upstream = match f.require(
            "upstream",
            &format!("the name of an upstream; {defined}"),
            &mut self.problems,
        ) {
            Some(node) => {
                let hint = format!("the name of an upstream; {defined}");
                let text = as_str(node, &f.key_path("upstream"), &hint, &mut self.problems);
                match text {
                    Some(name) if names.contains(&name) => Some(name.to_owned()),
                    Some(name) => {
                        self.push(
                            node,
                            &f.key_path("upstream"),
                            format!("no upstream named {name:?} ({defined})"),
                        );
                        None
                    }
                    None => None,
                }
            }
            None => None,
        };
        let host = match f.string("host", forms::HOST_PATTERN_HINT, &mut self.problems) {
            Some((text, node)) => match forms::host_pattern(text) {
                Ok(pattern) => Some(pattern),
                Err(message) => {
                    self.push(node, &f.key_path("host"), message);
                    None
                }
            },
            None => None,
        };
        let path_hint = "a path prefix starting with \"/\", e.g. \"/websocket\"";
        let path = match f.string("path", path_hint, &mut self.problems) {
            Some((text, _)) if forms::request_path(text) => forms::trim_path(text),
            Some((text, node)) => {
                self.push(
                    node,
                    &f.key_path("path"),
                    format!(
                        "{text:?} is not a path prefix ({path_hint}, without query or fragment)"
                    ),
                );
                "/".to_owned()
            }
            None => "/".to_owned(),
        };
        let strip_prefix = f
            .boolean("strip_prefix", &mut self.problems)
            .unwrap_or(false);
        let websocket = f.boolean("websocket", &mut self.problems).unwrap_or(true);
        let allowed_origins = self.allowed_origins(f);
        let host_header = self.host_header(f);
        let set_headers = self.set_headers(f);
        let read_timeout = self.duration(f, "read_timeout", Duration::from_secs(60), false);
        let idle_timeout = self.duration(f, "idle_timeout", Duration::from_secs(3600), false);
        let ping_interval = f
            .get("ping_interval")
            .map(|_| self.duration(f, "ping_interval", Duration::from_secs(30), false));
        let max_message_bytes = self
            .integer(f, "max_message_bytes", 1, i64::MAX)
            .and_then(|n| u64::try_from(n).ok());
        Some(RouteConfig {
            index,
            host,
            path,
            upstream: upstream?,
            strip_prefix,
            websocket,
            allowed_origins,
            host_header,
            set_headers,
            read_timeout,
            idle_timeout,
            max_message_bytes,
            ping_interval,
        })
    }

    fn allowed_origins(&mut self, f: &Fields<'_>) -> Option<Vec<String>> {
        let node = f.get("allowed_origins")?;
        let path = f.key_path("allowed_origins");
        let hint = "a list of origins, e.g. [\"https://example.com\"]";
        let items = self.array(node, &path, hint)?;
        if items.is_empty() {
            self.push(
                node,
                &path,
                format!("empty list ({hint}; remove the key to allow any origin)"),
            );
        }
        let mut origins = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            let Some(text) = as_str(item, &item_path, forms::ORIGIN_HINT, &mut self.problems)
            else {
                continue;
            };
            match forms::origin(text) {
                Ok(()) => origins.push(text.to_owned()),
                Err(message) => self.push(item, &item_path, message),
            }
        }
        Some(origins)
    }

    fn host_header(&mut self, f: &Fields<'_>) -> HostHeader {
        let hint = "\"preserve\", \"upstream\", or a Host value such as \"app.internal\"";
        match f.string("host_header", hint, &mut self.problems) {
            None | Some(("preserve", _)) => HostHeader::Preserve,
            Some(("upstream", _)) => HostHeader::Upstream,
            Some((text, node)) => match HeaderValue::from_str(text) {
                Ok(value) if !text.trim().is_empty() => HostHeader::Fixed(value),
                _ => {
                    self.push(
                        node,
                        &f.key_path("host_header"),
                        format!("{text:?} is not a valid Host header value ({hint})"),
                    );
                    HostHeader::Preserve
                }
            },
        }
    }

    fn set_headers(&mut self, f: &Fields<'_>) -> Vec<(HeaderName, HeaderValue)> {
        let mut headers = Vec::new();
        let Some(node) = f.get("set_headers") else {
            return headers;
        };
        let path = f.key_path("set_headers");
        let Some(table) = self.table(node, &path, "{ \"X-Name\" = \"value\" }") else {
            return headers;
        };
        for entry in &table.entries {
            let entry_path = join_key(&path, &entry.key);
            let name = match forms::settable_header(&entry.key) {
                // Header names are case-insensitive: `X-A` and `x-a` are one header, and
                // only the last would win, silently.
                Ok(name) if headers.iter().any(|(seen, _)| *seen == name) => {
                    self.problems.push(
                        entry.key_span.clone(),
                        entry_path.clone(),
                        format!(
                            "{} is set twice (header names ignore case; set it once)",
                            entry.key
                        ),
                    );
                    None
                }
                Ok(name) => Some(name),
                Err(message) => {
                    self.problems
                        .push(entry.key_span.clone(), entry_path.clone(), message);
                    None
                }
            };
            let hint = "visible ASCII text, spaces and tabs; no line breaks";
            let Some(text) = as_str(&entry.node, &entry_path, hint, &mut self.problems) else {
                continue;
            };
            let value = match HeaderValue::from_str(text) {
                Ok(value) => Some(value),
                Err(_) => {
                    self.push(
                        &entry.node,
                        &entry_path,
                        format!("{text:?} is not a valid header value ({hint})"),
                    );
                    None
                }
            };
            if let (Some(name), Some(value)) = (name, value) {
                headers.push((name, value));
            }
        }
        headers
    }
}
