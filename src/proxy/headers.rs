//! Header rewriting towards the upstream and back (RFC 9110 §7.6.1), pure functions.
//!
//! Order towards the upstream, as the SPEC lays it down:
//! 1. headers the client named in `Connection` are removed (so a client cannot make sluice
//!    drop the headers it sets), then the fixed hop-by-hop set;
//! 2. `Host` as `host_header` says;
//! 3. `X-Forwarded-For/Proto/Host`, `X-Real-IP` (and `Forwarded` removed) by trust;
//! 4. `Upgrade: websocket` + `Connection: upgrade` for a handshake, otherwise
//!    `Connection: keep-alive` or `close`;
//! 5. `set_headers` last.

use std::net::IpAddr;

use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::HostHeader;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// The fixed hop-by-hop headers, removed in both directions. `HTTP2-Settings` belongs to an
/// `h2c` upgrade, which is never forwarded.
fn fixed_hop_by_hop() -> [&'static HeaderName; 8] {
    [
        &CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &TE,
        &TRAILER,
        &TRANSFER_ENCODING,
        &UPGRADE,
        &HTTP2_SETTINGS,
    ]
}

/// The comma-separated tokens of every `name` line, as bytes with surrounding white space
/// removed (a value with obs-text bytes is still split: none of its tokens is skipped).
pub fn tokens<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Removes every header named in `Connection`, then the fixed hop-by-hop set.
///
/// One pass over the names finds what is there; only headers present are removed (a
/// removal hashes its name, and most requests carry at most `Connection`). The usual
/// `Connection` tokens (`keep-alive`, `close`, `upgrade`) name headers that go with the
/// fixed set anyway, so the common request allocates nothing here.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    remove_scanned(headers, scan(headers, None));
}

/// What one pass over a header map's names found: the fixed hop-by-hop headers present
/// (a bit per entry of [`fixed_hop_by_hop`]), and whether a forwarding header must go.
#[derive(Clone, Copy, Default)]
struct Scan {
    hop_by_hop: u8,
    forwarding: bool,
}

/// Looks at every name once. With `trusted` set, also notes forwarding headers that must
/// be removed (all of them from an untrusted peer, those spelt with `_` from a trusted one).
fn scan(headers: &HeaderMap, trusted: Option<bool>) -> Scan {
    let fixed = fixed_hop_by_hop();
    let mut found = Scan::default();
    for name in headers.keys() {
        if let Some(i) = fixed.iter().position(|f| *f == name) {
            found.hop_by_hop |= 1 << i;
        } else if let Some(trusted) = trusted {
            found.forwarding |= is_forged(name, trusted);
        }
    }
    found
}

/// Removes what [`scan`] found to be hop-by-hop: first the headers `Connection` names,
/// then the fixed set.
fn remove_scanned(headers: &mut HeaderMap, found: Scan) {
    if found.hop_by_hop == 0 {
        return;
    }
    // Bit 0 is `Connection`.
    if found.hop_by_hop & 1 != 0 && tokens(headers, &CONNECTION).any(|t| !is_fixed_token(t)) {
        let named: Vec<HeaderName> = tokens(headers, &CONNECTION)
            .filter_map(|t| HeaderName::from_bytes(t).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in fixed_hop_by_hop().into_iter().enumerate() {
        if found.hop_by_hop & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// A `Connection` token whose header (if any) the fixed hop-by-hop set removes anyway.
fn is_fixed_token(token: &[u8]) -> bool {
    token.eq_ignore_ascii_case(b"close")
        || fixed_hop_by_hop()
            .iter()
            .any(|name| token.eq_ignore_ascii_case(name.as_str().as_bytes()))
}

/// A header name as CGI and WSGI backends see it: case folded and `_` read as `-`.
fn folded(b: u8) -> u8 {
    if b == b'_' {
        b'-'
    } else {
        b.to_ascii_lowercase()
    }
}

fn folded_eq(name: &[u8], want: &[u8]) -> bool {
    name.len() == want.len() && name.iter().zip(want).all(|(&a, &b)| folded(a) == b)
}

/// Whether `name` (any case, `_` read as `-`) is one of the headers that say who the
/// client is: `Forwarded`, `X-Real-IP`, `True-Client-IP` or any `X-Forwarded-*`.
pub fn is_forwarding_header(name: &[u8]) -> bool {
    const PREFIX: &[u8] = b"x-forwarded-";
    folded_eq(name, b"forwarded")
        || folded_eq(name, b"x-real-ip")
        || folded_eq(name, b"true-client-ip")
        || (name.len() >= PREFIX.len() && folded_eq(&name[..PREFIX.len()], PREFIX))
}

/// Whether a client's forwarding header must go: all of them from an untrusted peer, and
/// from a trusted one only the spellings with `_` (a trusted proxy writes the real names;
/// a backend that folds `_` into `-` must not see a second, forged value).
fn is_forged(name: &HeaderName, trusted: bool) -> bool {
    let name = name.as_str().as_bytes();
    is_forwarding_header(name) && (!trusted || name.contains(&b'_'))
}

/// Removes the forwarding headers [`is_forged`] picks.
fn remove_client_forwarding(headers: &mut HeaderMap, trusted: bool) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_forged(n, trusted))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

/// What the rewrite needs to know about the request and its destination.
pub struct Forwarding<'a> {
    /// The peer's address as a header value (formatted once per connection).
    pub peer: &'a HeaderValue,
    /// The peer is in `trusted_proxies`.
    pub trusted: bool,
    /// `http` or `https`: how the client reached sluice.
    pub proto: &'static str,
    pub host_header: &'a HostHeader,
    /// The request is a WebSocket handshake allowed on its route.
    pub websocket: bool,
    /// Upstream keep-alive is on (`keepalive > 0`).
    pub keepalive: bool,
    pub set_headers: &'a [(HeaderName, HeaderValue)],
}

static WEBSOCKET: HeaderValue = HeaderValue::from_static("websocket");
static UPGRADE_TOKEN: HeaderValue = HeaderValue::from_static("upgrade");
static KEEP_ALIVE_TOKEN: HeaderValue = HeaderValue::from_static("keep-alive");
static CLOSE: HeaderValue = HeaderValue::from_static("close");
static HTTP: HeaderValue = HeaderValue::from_static("http");
static HTTPS: HeaderValue = HeaderValue::from_static("https");

/// Rewrites a client request's headers, in place, into the upstream request's headers.
pub fn rewrite_request(headers: &mut HeaderMap, fwd: &Forwarding<'_>) {
    let found = scan(headers, Some(fwd.trusted));
    remove_scanned(headers, found);
    if found.forwarding {
        remove_client_forwarding(headers, fwd.trusted);
    }

    let client_host = headers.get(HOST).cloned();
    if let HostHeader::Fixed(value) = fwd.host_header {
        headers.insert(HOST, value.clone());
    }

    let peer = fwd.peer.clone();
    if fwd.trusted {
        let xff = join_values(headers, &X_FORWARDED_FOR, &peer);
        headers.insert(X_FORWARDED_FOR.clone(), xff);
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO.clone(), proto_value(fwd.proto));
        }
        if !headers.contains_key(&X_FORWARDED_HOST) {
            if let Some(host) = &client_host {
                headers.insert(X_FORWARDED_HOST.clone(), host.clone());
            }
        }
        if !headers.contains_key(&X_REAL_IP) {
            headers.insert(X_REAL_IP.clone(), peer);
        }
    } else {
        headers.insert(X_FORWARDED_FOR.clone(), peer.clone());
        headers.insert(X_FORWARDED_PROTO.clone(), proto_value(fwd.proto));
        if let Some(host) = &client_host {
            headers.insert(X_FORWARDED_HOST.clone(), host.clone());
        }
        headers.insert(X_REAL_IP.clone(), peer);
    }

    if fwd.websocket {
        headers.insert(UPGRADE, WEBSOCKET.clone());
        headers.insert(CONNECTION, UPGRADE_TOKEN.clone());
    } else if fwd.keepalive {
        headers.insert(CONNECTION, KEEP_ALIVE_TOKEN.clone());
    } else {
        headers.insert(CONNECTION, CLOSE.clone());
    }

    for (name, value) in fwd.set_headers {
        headers.insert(name.clone(), value.clone());
    }
}

/// Removes hop-by-hop headers from an upstream response. A relayed `101` gets its
/// `Upgrade: websocket` and `Connection: upgrade` back. A response framed by
/// `Transfer-Encoding` loses its `Content-Length` too (RFC 9112 §6.3): the body is
/// re-framed, and a stale length would cut it.
pub fn rewrite_response(headers: &mut HeaderMap, switching: bool) {
    if headers.contains_key(TRANSFER_ENCODING) {
        headers.remove(CONTENT_LENGTH);
    }
    remove_hop_by_hop(headers);
    if switching {
        headers.insert(UPGRADE, WEBSOCKET.clone());
        headers.insert(CONNECTION, UPGRADE_TOKEN.clone());
    }
}

/// Sets `Host` for the chosen server where it depends on it: always with
/// `host_header = "upstream"`, and with `"preserve"` when the client sent none (HTTP/1.0),
/// since an HTTP/1.1 request needs one.
pub fn set_upstream_host(
    headers: &mut HeaderMap,
    host_header: &HostHeader,
    authority: &HeaderValue,
) {
    match host_header {
        HostHeader::Upstream => {
            headers.insert(HOST, authority.clone());
        }
        HostHeader::Preserve if !headers.contains_key(HOST) => {
            headers.insert(HOST, authority.clone());
        }
        _ => {}
    }
}

fn proto_value(proto: &'static str) -> HeaderValue {
    if proto == "https" {
        HTTPS.clone()
    } else {
        HTTP.clone()
    }
}

/// The longest text an [`IpAddr`] writes: an IPv4-mapped IPv6 address,
/// `ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255` (45 bytes).
const IP_TEXT_MAX: usize = 45;

/// An IP address's text in a fixed buffer, owned by the `Bytes` of its header value.
struct IpText {
    buf: [u8; IP_TEXT_MAX],
    len: usize,
}

impl AsRef<[u8]> for IpText {
    fn as_ref(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }
}

/// An IP address as a header value, e.g. for `X-Forwarded-For`. Made once per client
/// connection and cloned into each request's headers: the text is written on the stack
/// and moved into a single reference-counted allocation, so neither the formatting (a
/// String growing octet by octet) nor the clones allocate again.
pub fn ip_value(ip: IpAddr) -> HeaderValue {
    use std::io::Write as _;
    let mut text = IpText {
        buf: [0; IP_TEXT_MAX],
        len: 0,
    };
    let mut cursor = std::io::Cursor::new(&mut text.buf[..]);
    let value = match write!(cursor, "{ip}") {
        Ok(()) => {
            text.len = usize::try_from(cursor.position()).unwrap_or(0);
            HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(text))
        }
        // Never longer than the buffer; were it to be, the String way still works.
        Err(_) => HeaderValue::try_from(ip.to_string()),
    };
    // An IP address's text is always a valid header value.
    value.unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// All lines of `name` joined with `, `, then `last` appended.
fn join_values(headers: &HeaderMap, name: &HeaderName, last: &HeaderValue) -> HeaderValue {
    let mut joined: Vec<u8> = Vec::new();
    for value in headers.get_all(name) {
        let value = value.as_bytes().trim_ascii();
        if value.is_empty() {
            continue;
        }
        if !joined.is_empty() {
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(value);
    }
    if !joined.is_empty() {
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(last.as_bytes());
    HeaderValue::from_bytes(&joined).unwrap_or_else(|_| last.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    static PEER: HeaderValue = HeaderValue::from_static("10.1.2.3");

    /// The stack-written text is the address's own, up to the longest one.
    #[test]
    fn ip_value_is_the_address_text() {
        for ip in [
            "127.0.0.1",
            "255.255.255.255",
            "::1",
            "2001:db8::1",
            "::ffff:255.255.255.255",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let ip: IpAddr = ip.parse().expect("an IP address");
            let value = ip_value(ip);
            assert_eq!(value.as_bytes(), ip.to_string().as_bytes());
            assert_eq!(value.clone(), value);
        }
    }

    fn fwd<'a>(
        trusted: bool,
        host_header: &'a HostHeader,
        _authority: &'a HeaderValue,
    ) -> Forwarding<'a> {
        Forwarding {
            peer: &PEER,
            trusted,
            proto: "http",
            host_header,
            websocket: false,
            keepalive: true,
            set_headers: &[],
        }
    }

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn connection_named_headers_and_hop_by_hop_are_removed() {
        let mut h = map(&[
            ("host", "a.example"),
            ("connection", "x-secret, keep-alive"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-connection", "keep-alive"),
            ("trailer", "x"),
            ("x-end-to-end", "kept"),
        ]);
        let auth = HeaderValue::from_static("127.0.0.1:1");
        rewrite_request(&mut h, &fwd(false, &HostHeader::Preserve, &auth));
        for gone in [
            "x-secret",
            "keep-alive",
            "te",
            "transfer-encoding",
            "upgrade",
            "proxy-connection",
            "trailer",
        ] {
            assert!(!h.contains_key(gone), "{gone} should be gone");
        }
        assert_eq!(h["connection"], "keep-alive");
        assert_eq!(h["x-end-to-end"], "kept");
        assert_eq!(h["host"], "a.example");
    }

    #[test]
    fn a_client_cannot_remove_forwarding_headers() {
        let mut h = map(&[("host", "a"), ("connection", "x-forwarded-for, x-real-ip")]);
        let auth = HeaderValue::from_static("127.0.0.1:1");
        rewrite_request(&mut h, &fwd(false, &HostHeader::Preserve, &auth));
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-real-ip"], "10.1.2.3");
    }

    #[test]
    fn untrusted_forwarding_headers_are_replaced() {
        let mut h = map(&[
            ("host", "a.example"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil"),
            ("x-real-ip", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
        ]);
        let auth = HeaderValue::from_static("127.0.0.1:1");
        rewrite_request(&mut h, &fwd(false, &HostHeader::Preserve, &auth));
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "a.example");
        assert_eq!(h["x-real-ip"], "10.1.2.3");
        assert!(!h.contains_key("forwarded"));
    }

    #[test]
    fn trusted_forwarding_headers_are_extended() {
        let mut h = map(&[
            ("host", "a.example"),
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "orig.example"),
        ]);
        let auth = HeaderValue::from_static("127.0.0.1:1");
        rewrite_request(&mut h, &fwd(true, &HostHeader::Preserve, &auth));
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "orig.example");
    }

    #[test]
    fn host_header_modes() {
        let auth = HeaderValue::from_static("backend.internal:3000");
        let mut h = map(&[("host", "a.example")]);
        rewrite_request(&mut h, &fwd(false, &HostHeader::Upstream, &auth));
        set_upstream_host(&mut h, &HostHeader::Upstream, &auth);
        assert_eq!(h["host"], "backend.internal:3000");
        assert_eq!(h["x-forwarded-host"], "a.example");
        let mut h = HeaderMap::new();
        set_upstream_host(&mut h, &HostHeader::Preserve, &auth);
        assert_eq!(h["host"], "backend.internal:3000");
        let fixed = HostHeader::Fixed(HeaderValue::from_static("fixed.example"));
        let mut h = map(&[("host", "a.example")]);
        rewrite_request(&mut h, &fwd(false, &fixed, &auth));
        assert_eq!(h["host"], "fixed.example");
    }

    #[test]
    fn websocket_and_close_and_set_headers() {
        let auth = HeaderValue::from_static("127.0.0.1:1");
        let preserve = HostHeader::Preserve;
        let set = [(
            HeaderName::from_static("x-forwarded-proto"),
            HeaderValue::from_static("https"),
        )];
        let mut f = fwd(false, &preserve, &auth);
        f.websocket = true;
        f.set_headers = &set;
        let mut h = map(&[
            ("host", "a"),
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
        ]);
        rewrite_request(&mut h, &f);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["x-forwarded-proto"], "https");
        let mut f = fwd(false, &preserve, &auth);
        f.keepalive = false;
        let mut h = map(&[("host", "a")]);
        rewrite_request(&mut h, &f);
        assert_eq!(h["connection"], "close");
    }
}
