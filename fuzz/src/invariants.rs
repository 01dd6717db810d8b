//! The invariants sluice's pure protocol rules must keep, written once and driven twice:
//! by the libFuzzer targets in `fuzz/fuzz_targets/` and by the proptest properties in
//! `tests/properties.rs` (which includes this file with `#[path]`). So this file builds
//! on stable Rust with nothing but `sluice` and `http`.
//!
//! Every `check_*` function runs the code under test itself and returns `Err(what broke)`
//! instead of panicking, so a fuzz target can panic with the message and a property can
//! fail with it.
//!
//! The references here are written from SPEC.md ("On the wire", "Errors") and the RFCs,
//! not from sluice's code.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;

use http::header::{
    CONNECTION, HOST, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, Version};
use sluice::config::{Config, ConfigError, HostHeader};
use sluice::proxy::headers::{self, Forwarding};
use sluice::proxy::path::{self, Climbs};
use sluice::proxy::websocket::{self, Upgrade};
use sluice::proxy::{malformed, route};

/// The RFC 6455 §1.3 sample key and the accept value that answers it.
pub const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const SAMPLE_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Header names worth trying: the ones sluice reads, sets or removes, in several spellings.
pub const NAMES: &[&str] = &[
    "host",
    "Host",
    "connection",
    "Connection",
    "upgrade",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "http2-settings",
    "content-length",
    "x-forwarded-for",
    "X-Forwarded-For",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-",
    "x_forwarded_for",
    "X_Forwarded_Host",
    "x-forwarded_proto",
    "x-real-ip",
    "x_real_ip",
    "true-client-ip",
    "True_Client_IP",
    "forwarded",
    "Forwarded",
    "origin",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-accept",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "cookie",
    "x-custom",
    "x-secret",
];

/// Header values worth trying: tokens of `Connection` / `Upgrade`, keys, hosts, addresses.
pub const VALUES: &[&str] = &[
    "",
    "upgrade",
    "Upgrade",
    "UPGRADE",
    "keep-alive",
    "close",
    "keep-alive, Upgrade",
    "upgrade, keep-alive",
    " upgrade ",
    ",upgrade,,",
    "websocket",
    "WebSocket",
    "websocket/13",
    "h2c",
    "h2c, websocket",
    "13",
    " 13 ",
    "8",
    "13, 13",
    SAMPLE_KEY,
    SAMPLE_ACCEPT,
    "AAAAAAAAAAAAAAAAAAAAAA==",
    "dGhlIHNhbXBsZSBub25jZR==",
    "dGhlIHNhbXBsZSBub25jZQ",
    "c2hvcnQ=",
    "x-secret",
    "x-custom, x-secret",
    "x-secret, keep-alive",
    "te, trailer",
    "http2-settings",
    "keep-alive, x_real_ip",
    "x-forwarded-",
    "a.example",
    "a.example:8080",
    "[::1]:80",
    "127.0.0.1",
    "user@host",
    "6.6.6.6",
    "6.6.6.6, 7.7.7.7",
    "for=6.6.6.6",
    "https",
    "http",
    "chunked",
    "gzip, chunked",
    "trailers",
    "5",
    "https://app.example",
    "HTTPS://App.Example",
    "\t x \t",
    "\u{7f}",
];

/// Request methods worth trying.
pub const METHODS: &[&str] = &["GET", "POST", "HEAD", "OPTIONS", "CONNECT", "get", "PUT"];

/// Versions, indexed by a generated number.
pub const VERSIONS: &[Version] = &[
    Version::HTTP_11,
    Version::HTTP_10,
    Version::HTTP_09,
    Version::HTTP_2,
    Version::HTTP_3,
];

/// A header map from raw (name, value) pairs, in order, appending repeated names; pairs
/// that are not a valid name or value are skipped (hyper would never hand them over).
pub fn header_map<N: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(N, V)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    append_pairs(&mut map, pairs);
    map
}

/// Appends raw (name, value) pairs to `map`, skipping invalid ones as [`header_map`] does.
pub fn append_pairs<N: AsRef<[u8]>, V: AsRef<[u8]>>(map: &mut HeaderMap, pairs: &[(N, V)]) {
    for (name, value) in pairs {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_ref()),
            HeaderValue::from_bytes(value.as_ref()),
        ) else {
            continue;
        };
        map.append(name, value);
    }
}

// ------------------------------------------------------------------------------------
// Header-list reading, written from RFC 9110 §5.6.1 (lists) and §7.6.1 (Connection).
// ------------------------------------------------------------------------------------

/// The comma-separated elements of every `name` line, optional white space trimmed,
/// empty elements dropped.
pub fn list(headers: &HeaderMap, name: &HeaderName) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for value in headers.get_all(name) {
        for element in value.as_bytes().split(|&b| b == b',') {
            let element = trim_ows(element);
            if !element.is_empty() {
                out.push(element.to_vec());
            }
        }
    }
    out
}

fn trim_ows(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

/// Whether a `name` list holds `token` (case-insensitive). A protocol's `/version` is
/// ignored (`websocket/13` is `websocket`, RFC 9110 §7.8).
pub fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    list(headers, name).iter().any(|t| {
        let protocol = t.split(|&b| b == b'/').next().unwrap_or(t);
        protocol.eq_ignore_ascii_case(token.as_bytes())
    })
}

/// `Forwarded`, `X-Real-IP`, `True-Client-IP` or `X-Forwarded-<something>`, in any case,
/// with `_` read as `-` (SPEC "Towards the upstream").
///
/// The bare `X-Forwarded-` (nothing after the dash) counts too: the SPEC says "begins with".
pub fn is_forwarding_name(name: &[u8]) -> bool {
    let folded: Vec<u8> = name
        .iter()
        .map(|&b| {
            if b == b'_' {
                b'-'
            } else {
                b.to_ascii_lowercase()
            }
        })
        .collect();
    let prefix: &[u8] = b"x-forwarded-";
    folded == b"forwarded"
        || folded == b"x-real-ip"
        || folded == b"true-client-ip"
        || folded.starts_with(prefix)
}

/// The fixed hop-by-hop headers no request may carry upstream (besides `Connection` and
/// `Upgrade`, whose values are checked on their own).
pub const HOP_BY_HOP: &[&str] = &[
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "http2-settings",
];

/// What `set_headers` may name, as the config validation documents it: not a hop-by-hop
/// header, not `Host`, not `Content-Length`.
pub fn settable(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

fn values(headers: &HeaderMap, name: &str) -> Vec<Vec<u8>> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.as_bytes().to_vec())
        .collect()
}

fn show(values: &[Vec<u8>]) -> String {
    let shown: Vec<String> = values
        .iter()
        .map(|v| format!("{:?}", String::from_utf8_lossy(v)))
        .collect();
    format!("[{}]", shown.join(", "))
}

fn expect_values(headers: &HeaderMap, name: &str, want: &[&[u8]]) -> Result<(), String> {
    let got = values(headers, name);
    let want: Vec<Vec<u8>> = want.iter().map(|w| w.to_vec()).collect();
    if got == want {
        Ok(())
    } else {
        Err(format!("{name} is {}, want {}", show(&got), show(&want)))
    }
}

// ------------------------------------------------------------------------------------
// Request rewriting.
// ------------------------------------------------------------------------------------

/// One request head, the way `proxy::forward` sees it, plus the route and peer settings.
#[derive(Debug, Clone)]
pub struct RewriteCase {
    pub version: Version,
    pub uri: Uri,
    pub headers: HeaderMap,
    /// The raw head carried `Content-Length` (hyper drops it next to `Transfer-Encoding`).
    pub saw_content_length: bool,
    pub peer: IpAddr,
    pub trusted: bool,
    pub https: bool,
    pub host_header: HostHeader,
    pub websocket: bool,
    pub keepalive: bool,
    pub set_headers: Vec<(HeaderName, HeaderValue)>,
}

/// Runs `malformed::check`; when it passes, the absolute-form authority step of
/// `proxy::forward` and `headers::rewrite_request`, and checks the result.
///
/// Returns whether the request passed `malformed::check` (for coverage statistics).
///
/// # Errors
/// The invariant that broke, with the headers before and after.
pub fn check_rewrite(case: &RewriteCase) -> Result<bool, String> {
    if malformed::check(
        case.version,
        &case.uri,
        &case.headers,
        case.saw_content_length,
    )
    .is_err()
    {
        return Ok(false);
    }
    let mut before = case.headers.clone();
    // RFC 9112 §3.2.2: the target's authority is the Host (as `proxy::forward` does it).
    if let Some(authority) = case.uri.authority() {
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            before.insert(HOST, host);
        }
    }
    let peer = headers::ip_value(case.peer);
    let proto = if case.https { "https" } else { "http" };
    // Only names the config would accept reach `set_headers`.
    let set_headers: Vec<(HeaderName, HeaderValue)> = case
        .set_headers
        .iter()
        .filter(|(name, _)| settable(name))
        .cloned()
        .collect();
    let fwd = Forwarding {
        peer: &peer,
        trusted: case.trusted,
        proto,
        host_header: &case.host_header,
        websocket: case.websocket,
        keepalive: case.keepalive,
        set_headers: &set_headers,
    };
    let mut after = before.clone();
    headers::rewrite_request(&mut after, &fwd);
    rewrite_invariants(&before, &fwd, &after)
        .map(|()| true)
        .map_err(|broke| {
            format!(
                "{broke}\n  trusted={} websocket={} keepalive={} host_header={:?} set_headers={:?}\n  before: {before:?}\n  after:  {after:?}",
                case.trusted, case.websocket, case.keepalive, case.host_header, set_headers
            )
        })
}

fn rewrite_invariants(
    before: &HeaderMap,
    fwd: &Forwarding<'_>,
    after: &HeaderMap,
) -> Result<(), String> {
    let set: Vec<&str> = fwd.set_headers.iter().map(|(n, _)| n.as_str()).collect();
    let was_set = |name: &str| set.contains(&name);

    // `set_headers` are applied last: the last value given for a name is its only value.
    for (name, _) in fwd.set_headers {
        let last = fwd
            .set_headers
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_bytes());
        expect_values(after, name.as_str(), &[last.unwrap_or_default()])
            .map_err(|e| format!("set_headers not applied last: {e}"))?;
    }

    // Hop-by-hop: Connection and Upgrade only as sluice sets them, the rest never.
    let connection: &[u8] = if fwd.websocket {
        b"upgrade"
    } else if fwd.keepalive {
        b"keep-alive"
    } else {
        b"close"
    };
    expect_values(after, "connection", &[connection])?;
    if fwd.websocket {
        expect_values(after, "upgrade", &[b"websocket"])?;
    } else {
        expect_values(after, "upgrade", &[])?;
    }
    for name in HOP_BY_HOP {
        // `set_headers` may name `HTTP2-Settings` (the config refuses only the SPEC's
        // hop-by-hop list); that is the operator's doing, not the client's.
        if after.contains_key(*name) && !was_set(name) {
            return Err(format!("hop-by-hop header {name} survived"));
        }
    }

    // What sluice sets itself, and with which values (before `set_headers`).
    let client_host = before.get(HOST).map(HeaderValue::as_bytes);
    let fixed_host = match fwd.host_header {
        HostHeader::Fixed(value) => Some(value.as_bytes()),
        _ => None,
    };
    let sluice_sets = |name: &str| {
        matches!(
            name,
            "connection" | "x-forwarded-for" | "x-forwarded-proto" | "x-real-ip"
        ) || (name == "upgrade" && fwd.websocket)
            || (name == "x-forwarded-host" && client_host.is_some())
            || (name == "host" && fixed_host.is_some())
    };

    // A header the client named in Connection is gone, unless sluice set it itself.
    for token in list(before, &CONNECTION) {
        let Ok(named) = HeaderName::from_bytes(&token) else {
            continue;
        };
        let named = named.as_str();
        if after.contains_key(named) && !sluice_sets(named) && !was_set(named) {
            return Err(format!(
                "{named}, named in the client's Connection, survived as {}",
                show(&values(after, named))
            ));
        }
    }

    // Forwarding headers.
    let peer = fwd.peer.as_bytes();
    let proto = fwd.proto.as_bytes();
    if proto != b"http" && proto != b"https" {
        return Err(format!("X-Forwarded-Proto source {:?}", fwd.proto));
    }
    if fwd.trusted {
        // A trusted proxy's own headers are kept, the peer appended; only `_` spellings
        // (which a CGI backend would fold into a second value) go.
        for name in after.keys() {
            let name = name.as_str();
            if is_forwarding_name(name.as_bytes()) && name.contains('_') && !was_set(name) {
                return Err(format!("{name} from a trusted peer survived"));
            }
        }
        if !was_set("x-forwarded-for") {
            let xff = values(after, "x-forwarded-for");
            let last = xff
                .last()
                .and_then(|v| v.rsplit(|&b| b == b',').next())
                .map(trim_ows);
            if xff.len() != 1 || last != Some(peer) {
                return Err(format!(
                    "trusted X-Forwarded-For {} does not end with the peer",
                    show(&xff)
                ));
            }
        }
        for name in ["x-forwarded-proto", "x-real-ip"] {
            if !was_set(name) && values(after, name).is_empty() {
                return Err(format!("{name} missing"));
            }
        }
    } else {
        for name in after.keys() {
            let name = name.as_str();
            if !is_forwarding_name(name.as_bytes()) || was_set(name) {
                continue;
            }
            match name {
                "x-forwarded-for" | "x-real-ip" => expect_values(after, name, &[peer])?,
                "x-forwarded-proto" => expect_values(after, name, &[proto])?,
                "x-forwarded-host" => match client_host {
                    Some(host) => expect_values(after, name, &[host])?,
                    None => {
                        return Err(format!(
                            "X-Forwarded-Host {} without a client Host",
                            show(&values(after, name))
                        ))
                    }
                },
                other => {
                    return Err(format!(
                        "{other} from an untrusted peer survived as {}",
                        show(&values(after, other))
                    ))
                }
            }
        }
        for name in ["x-forwarded-for", "x-forwarded-proto", "x-real-ip"] {
            if !was_set(name) && values(after, name).is_empty() {
                return Err(format!("{name} missing"));
            }
        }
        if client_host.is_some() && !was_set("x-forwarded-host") {
            expect_values(
                after,
                "x-forwarded-host",
                &[client_host.unwrap_or_default()],
            )?;
        }
    }

    // Host as host_header says (`upstream` is set later, per server).
    if !was_set("host") {
        match fixed_host {
            Some(fixed) => expect_values(after, "host", &[fixed])?,
            None => {
                let host: Vec<&[u8]> = client_host.into_iter().collect();
                expect_values(after, "host", &host)?;
            }
        }
    }

    // Every other header goes through unchanged, in order.
    let named: Vec<Vec<u8>> = list(before, &CONNECTION)
        .into_iter()
        .map(|t| t.to_ascii_lowercase())
        .collect();
    for name in before.keys() {
        let n = name.as_str();
        let special = n == "connection"
            || n == "upgrade"
            || n == "host"
            || HOP_BY_HOP.contains(&n)
            || is_forwarding_name(n.as_bytes())
            || named.iter().any(|t| t.as_slice() == n.as_bytes())
            || was_set(n);
        if !special && values(before, n) != values(after, n) {
            return Err(format!(
                "end-to-end header {n} changed from {} to {}",
                show(&values(before, n)),
                show(&values(after, n))
            ));
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------
// WebSocket handshake (RFC 6455 §4.1, §4.2.1, §4.2.2; SPEC "On the wire").
// ------------------------------------------------------------------------------------

/// What the SPEC says a request is, upgrade-wise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    None,
    Other,
    Invalid,
    WebSocket(HeaderValue),
}

/// The reference classification.
pub fn expected_upgrade(method: &Method, version: Version, headers: &HeaderMap) -> Expected {
    if !headers.contains_key(UPGRADE) || !has_token(headers, &CONNECTION, "upgrade") {
        return Expected::None;
    }
    if !has_token(headers, &UPGRADE, "websocket") {
        return Expected::Other;
    }
    if method.as_str() != "GET" || version != Version::HTTP_11 {
        return Expected::Invalid;
    }
    let versions: Vec<&HeaderValue> = headers.get_all(SEC_WEBSOCKET_VERSION).iter().collect();
    if versions.len() != 1 || trim_ows(versions[0].as_bytes()) != b"13" {
        return Expected::Invalid;
    }
    let keys: Vec<&HeaderValue> = headers.get_all(SEC_WEBSOCKET_KEY).iter().collect();
    if keys.len() != 1 || !is_key(trim_ows(keys[0].as_bytes())) {
        return Expected::Invalid;
    }
    Expected::WebSocket(keys[0].clone())
}

/// Canonical base64 (RFC 4648 §4, padded, no stray bits) of exactly 16 bytes: 21
/// characters, a 22nd whose low four bits are zero, then `==`.
pub fn is_key(key: &[u8]) -> bool {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let index = |b: u8| ALPHABET.iter().position(|&a| a == b);
    key.len() == 24
        && key[..21].iter().all(|&b| index(b).is_some())
        && index(key[21]).is_some_and(|i| i & 0x0f == 0)
        && &key[22..] == b"=="
}

/// Classifies with sluice and compares with the reference. Returns the key of a valid
/// handshake.
///
/// # Errors
/// sluice and the reference disagree.
pub fn check_classify(
    method: &Method,
    version: Version,
    headers: &HeaderMap,
) -> Result<Option<HeaderValue>, String> {
    let got = websocket::classify(method, version, headers);
    let want = expected_upgrade(method, version, headers);
    let agree = match (&got, &want) {
        (Upgrade::None, Expected::None)
        | (Upgrade::Other, Expected::Other)
        | (Upgrade::InvalidWebSocket { .. }, Expected::Invalid) => true,
        (Upgrade::WebSocket { key }, Expected::WebSocket(want)) => key == want,
        _ => false,
    };
    if !agree {
        return Err(format!(
            "classify({method} {version:?}) = {got:?}, want {want:?}\n  headers: {headers:?}"
        ));
    }
    Ok(match got {
        Upgrade::WebSocket { key } => Some(key),
        _ => None,
    })
}

/// Checks `check_switch` on an upstream `101`'s headers against the reference: accepted
/// exactly when `Upgrade` lists `websocket` and there is one `Sec-WebSocket-Accept`, equal
/// to the value derived from `key`.
///
/// # Errors
/// sluice and the reference disagree, or the accept value is not 28 characters.
pub fn check_switch(response: &HeaderMap, key: &HeaderValue) -> Result<(), String> {
    let accept = websocket::accept_for(key);
    if accept.len() != 28 || !accept.ends_with('=') {
        return Err(format!(
            "accept_for({key:?}) = {accept:?}: not base64 of 20 bytes"
        ));
    }
    let accepts: Vec<&HeaderValue> = response.get_all(SEC_WEBSOCKET_ACCEPT).iter().collect();
    let want_ok = has_token(response, &UPGRADE, "websocket")
        && accepts.len() == 1
        && trim_ows(accepts[0].as_bytes()) == accept.as_bytes();
    let got = websocket::check_switch(response, key);
    if got.is_ok() != want_ok {
        return Err(format!(
            "check_switch = {got:?}, want ok={want_ok} (accept for {key:?} is {accept:?})\n  response: {response:?}"
        ));
    }
    Ok(())
}

/// Checks `origin_allowed` with an `allowed_origins` list: allowed exactly when the
/// request has one `Origin` that, trimmed, equals an entry (ASCII case-insensitive); with
/// no list, always allowed.
///
/// # Errors
/// sluice and the reference disagree.
pub fn check_origin(allowed: Option<&[String]>, headers: &HeaderMap) -> Result<(), String> {
    let origins: Vec<&HeaderValue> = headers.get_all(http::header::ORIGIN).iter().collect();
    let want = match allowed {
        None => true,
        Some(list) => {
            origins.len() == 1
                && origins[0].to_str().is_ok_and(|o| {
                    let o = o.trim_matches([' ', '\t']);
                    list.iter().any(|a| a.eq_ignore_ascii_case(o))
                })
        }
    };
    let got = websocket::origin_allowed(allowed, headers);
    if got != want {
        return Err(format!(
            "origin_allowed({allowed:?}) = {got}, want {want}\n  headers: {headers:?}"
        ));
    }
    Ok(())
}

// ------------------------------------------------------------------------------------
// Paths (RFC 3986 §5.2.4; SPEC: `%2e` counts as a dot, climbing above `/` is refused).
// ------------------------------------------------------------------------------------

/// `.` or `..` once each `%2e`/`%2E` is read as `.`; `None` for any other segment.
pub fn dot_segment(segment: &str) -> Option<&'static str> {
    let mut decoded = String::new();
    let mut rest = segment;
    while !rest.is_empty() {
        rest = rest
            .strip_prefix('.')
            .or_else(|| rest.strip_prefix("%2e"))
            .or_else(|| rest.strip_prefix("%2E"))?;
        decoded.push('.');
    }
    match decoded.as_str() {
        "." => Some("."),
        ".." => Some(".."),
        _ => None,
    }
}

/// Whether a segment hides a `..` behind a separator some backends read as `/`: `%2f`,
/// `%5c` (any case) or `\\`, or before path parameters (`..;x`, which Java servers read as
/// `..`) (README, Security: such a path is refused like a climb).
pub fn hides_dot_dot(segment: &str) -> bool {
    if let Some((before, _)) = segment.split_once(';') {
        if dot_segment(before) == Some("..") {
            return true;
        }
    }
    let mut parts = vec![String::new()];
    let mut rest = segment;
    while let Some(c) = rest.chars().next() {
        let escape = rest.get(..3).map(str::to_ascii_lowercase);
        if matches!(escape.as_deref(), Some("%2f" | "%5c")) {
            parts.push(String::new());
            rest = &rest[3..];
        } else if c == '\\' {
            parts.push(String::new());
            rest = &rest[1..];
        } else {
            if let Some(part) = parts.last_mut() {
                part.push(c);
            }
            rest = &rest[c.len_utf8()..];
        }
    }
    parts.len() > 1 && parts.iter().any(|p| dot_segment(p) == Some(".."))
}

/// RFC 3986 §5.2.4 `remove_dot_segments`, literally (the two buffers and rules A–E), on a
/// path whose dot-segments were first decoded; `Err(Climbs)` when rule C finds nothing to
/// remove, or a segment hides a `..` ([`hides_dot_dot`]). A path that does not start with
/// `/` is otherwise returned as it is.
pub fn reference_normalize(input: &str) -> Result<String, Climbs> {
    if input.split('/').any(hides_dot_dot) {
        return Err(Climbs);
    }
    if !input.starts_with('/') {
        return Ok(input.to_string());
    }
    let decoded: Vec<&str> = input
        .split('/')
        .map(|s| dot_segment(s).unwrap_or(s))
        .collect();
    let mut input = decoded.join("/");
    let mut output = String::new();
    while !input.is_empty() {
        if input.starts_with("../") {
            input.drain(..3);
        } else if input.starts_with("./") {
            input.drain(..2);
        } else if input.starts_with("/./") {
            input.replace_range(..3, "/");
        } else if input == "/." {
            input = "/".to_string();
        } else if input.starts_with("/../") || input == "/.." {
            let n = if input == "/.." { 3 } else { 4 };
            input.replace_range(..n, "/");
            if output.is_empty() {
                return Err(Climbs);
            }
            let cut = output.rfind('/').unwrap_or(0);
            output.truncate(cut);
        } else if input == "." || input == ".." {
            input.clear();
        } else {
            let skip = usize::from(input.starts_with('/'));
            let end = input[skip..].find('/').map_or(input.len(), |i| i + skip);
            output.push_str(&input[..end]);
            input.drain(..end);
        }
    }
    Ok(output)
}

/// Normalises `input` with sluice and checks the result.
///
/// # Errors
/// The invariant that broke.
pub fn check_path(input: &str) -> Result<(), String> {
    let got = path::normalize(input).map(std::borrow::Cow::into_owned);
    let want = reference_normalize(input);
    if got != want {
        return Err(format!(
            "normalize({input:?}) = {got:?}, RFC 3986 §5.2.4 says {want:?}"
        ));
    }
    let Ok(normal) = got else {
        return Ok(());
    };
    if !input.starts_with('/') {
        return Ok(());
    }
    if !normal.starts_with('/') {
        return Err(format!("normalize({input:?}) = {normal:?}: not absolute"));
    }
    if let Some(dots) = normal.split('/').find(|s| dot_segment(s).is_some()) {
        return Err(format!(
            "normalize({input:?}) = {normal:?} keeps the dot-segment {dots:?}"
        ));
    }
    match path::normalize(&normal) {
        Ok(std::borrow::Cow::Borrowed(again)) if again == normal => {}
        other => {
            return Err(format!(
                "normalize({input:?}) = {normal:?}, but normalising that gives {other:?} (want it borrowed, unchanged)"
            ))
        }
    }
    // Route prefixes drawn from the input and the output: one that matches must really be
    // a prefix of the normal path, on a segment boundary, with nothing left to climb.
    let mut prefixes = Vec::new();
    for source in [input, normal.as_str()] {
        let segments: Vec<&str> = source[1..].split('/').collect();
        for n in 1..=segments.len().min(3) {
            let prefix = format!("/{}", segments[..n].join("/"));
            if !prefix.ends_with('/') {
                prefixes.push(prefix);
            }
        }
    }
    prefixes.push("/".to_string());
    for prefix in &prefixes {
        if !route::path_matches(prefix, &normal) {
            continue;
        }
        let boundary = normal
            .strip_prefix(prefix.as_str())
            .is_some_and(|rest| prefix == "/" || rest.is_empty() || rest.starts_with('/'));
        if !boundary {
            return Err(format!(
                "path_matches({prefix:?}, {normal:?}) but it is not a segment prefix"
            ));
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------
// Config errors.
// ------------------------------------------------------------------------------------

/// The file name `check_config` passes to `Config::from_toml`.
pub const CONFIG_FILE: &str = "f.toml";

/// Loads `text`; on failure, checks that every problem carries a place inside the text and
/// renders as one `f.toml:LINE:COL: ` line, in file order; on success, checks what
/// validation promises about the result.
///
/// Returns whether the text was accepted.
///
/// # Errors
/// The invariant that broke.
pub fn check_config(text: &str) -> Result<bool, String> {
    match Config::from_toml(text, Path::new(CONFIG_FILE)) {
        Ok(config) => check_valid_config(&config).map(|()| true),
        Err(err) => check_config_error(text, &err)
            .map(|()| false)
            .map_err(|broke| format!("{broke}\n  text: {text:?}\n  error:\n{err}")),
    }
}

fn check_config_error(text: &str, err: &ConfigError) -> Result<(), String> {
    let problems = err.problems();
    if problems.is_empty() {
        return Err("an error without problems".to_string());
    }
    let lines: Vec<&str> = text.split('\n').collect();
    let mut previous = (1, 1);
    for p in problems {
        if p.line < 1 || p.column < 1 {
            return Err(format!("problem at {}:{}: not 1-based", p.line, p.column));
        }
        let Some(line) = lines.get(p.line - 1) else {
            return Err(format!(
                "problem at line {} of a {}-line text",
                p.line,
                lines.len()
            ));
        };
        if p.column > line.chars().count() + 1 {
            return Err(format!(
                "problem at {}:{} past the end of the line {line:?}",
                p.line, p.column
            ));
        }
        if (p.line, p.column) < previous {
            return Err(format!(
                "problem at {}:{} after one at {}:{}: not in file order",
                p.line, p.column, previous.0, previous.1
            ));
        }
        previous = (p.line, p.column);
        if p.message.trim().is_empty() {
            return Err(format!(
                "problem at {}:{} without a message",
                p.line, p.column
            ));
        }
    }
    let rendered = err.to_string();
    let rendered: Vec<&str> = rendered.split('\n').collect();
    if rendered.len() != problems.len() {
        return Err(format!(
            "{} problems render as {} lines",
            problems.len(),
            rendered.len()
        ));
    }
    for (line, p) in rendered.iter().zip(problems) {
        let mut want = String::new();
        let _ = write!(want, "{CONFIG_FILE}:{}:{}: ", p.line, p.column);
        if !line.starts_with(&want) {
            return Err(format!("line {line:?} does not start with {want:?}"));
        }
    }
    Ok(())
}

fn check_valid_config(config: &sluice::config::Config) -> Result<(), String> {
    if config.listeners.is_empty() {
        return Err("accepted without a listener".to_string());
    }
    for upstream in config.upstreams.values() {
        if upstream.servers.is_empty() {
            return Err(format!(
                "upstream {} accepted without servers",
                upstream.name
            ));
        }
    }
    for route in &config.routes {
        if !config.upstreams.contains_key(&route.upstream) {
            return Err(format!("route to unknown upstream {:?}", route.upstream));
        }
        let p = &route.path;
        if !p.starts_with('/') || (p.len() > 1 && p.ends_with('/')) {
            return Err(format!("route path {p:?} accepted"));
        }
        for (name, _) in &route.set_headers {
            if !settable(name) {
                return Err(format!("set_headers {name} accepted"));
            }
        }
    }
    // Never panics on an accepted config.
    let _ = config.summary();
    Ok(())
}
