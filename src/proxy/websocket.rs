//! WebSocket handshake rules (RFC 6455 §4), pure functions over headers.
//!
//! - A request *asks for* a WebSocket when its `Upgrade` lists `websocket` and its
//!   `Connection` lists `upgrade` (tokens case-insensitive, over any number of header lines).
//! - It *is a valid handshake* when it also is an HTTP/1.1 `GET` with
//!   `Sec-WebSocket-Version: 13` and a `Sec-WebSocket-Key` that is base64 of 16 bytes.
//! - An upstream `101` is accepted only with `Upgrade: websocket` and the
//!   `Sec-WebSocket-Accept` derived from the request's key (§4.2.2 step 5.4).

use base64::Engine as _;
use http::header::{
    CONNECTION, ORIGIN, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{HeaderMap, HeaderValue, Method, Version};

/// What a request asks for, as far as upgrades go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upgrade {
    /// No upgrade asked for (or an `Upgrade` header that `Connection` does not name: an
    /// ordinary hop-by-hop header).
    None,
    /// A valid WebSocket handshake, with its key for checking the `101`.
    WebSocket { key: HeaderValue },
    /// Asks for a WebSocket but breaks a rule: `400`.
    InvalidWebSocket { reason: &'static str },
    /// Asks for another protocol (`h2c`, …), which is never forwarded: proxied as plain HTTP.
    Other,
}

/// Whether any comma-separated token over all `name` header lines equals `token`
/// (ASCII case-insensitive). Values are read as bytes, so an obs-text byte elsewhere in a
/// line hides none of its tokens.
pub fn header_has_token(headers: &HeaderMap, name: &http::HeaderName, token: &str) -> bool {
    super::headers::tokens(headers, name).any(|t| {
        // `Upgrade: websocket/13` names a protocol version; the name is what counts.
        let t = t.split(|&b| b == b'/').next().unwrap_or(t);
        t.eq_ignore_ascii_case(token.as_bytes())
    })
}

/// Classifies a request.
pub fn classify(method: &Method, version: Version, headers: &HeaderMap) -> Upgrade {
    if !headers.contains_key(UPGRADE) || !header_has_token(headers, &CONNECTION, "upgrade") {
        return Upgrade::None;
    }
    if !header_has_token(headers, &UPGRADE, "websocket") {
        return Upgrade::Other;
    }
    if method != Method::GET {
        return Upgrade::InvalidWebSocket {
            reason: "method is not GET",
        };
    }
    if version != Version::HTTP_11 {
        return Upgrade::InvalidWebSocket {
            reason: "not HTTP/1.1",
        };
    }
    let mut versions = headers.get_all(SEC_WEBSOCKET_VERSION).iter();
    match (versions.next(), versions.next()) {
        (Some(v), None) if v.as_bytes().trim_ascii() == b"13" => {}
        _ => {
            return Upgrade::InvalidWebSocket {
                reason: "Sec-WebSocket-Version is not 13",
            }
        }
    }
    let mut keys = headers.get_all(SEC_WEBSOCKET_KEY).iter();
    let key = match (keys.next(), keys.next()) {
        (Some(key), None) => key,
        _ => {
            return Upgrade::InvalidWebSocket {
                reason: "Sec-WebSocket-Key missing or repeated",
            }
        }
    };
    if !is_valid_key(key.as_bytes()) {
        return Upgrade::InvalidWebSocket {
            reason: "Sec-WebSocket-Key is not base64 of 16 bytes",
        };
    }
    Upgrade::WebSocket { key: key.clone() }
}

fn is_valid_key(key: &[u8]) -> bool {
    // 16 bytes encode to exactly 24 base64 characters.
    let key = key.trim_ascii();
    if key.len() != 24 {
        return false;
    }
    let mut out = [0u8; 18];
    matches!(
        base64::engine::general_purpose::STANDARD.decode_slice(key, &mut out),
        Ok(16)
    )
}

/// The `Sec-WebSocket-Accept` value that answers `key`.
pub fn accept_for(key: &HeaderValue) -> String {
    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes().trim_ascii())
}

/// The GUID RFC 6455 §1.3 appends to the key before hashing.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// [`accept_for`] in a stack buffer: base64 of a SHA-1 digest (20 bytes) is always 28
/// characters. Checked once per handshake, so it allocates nothing.
fn accept_bytes(key: &HeaderValue) -> [u8; 28] {
    use sha1::Digest as _;
    let mut sha = sha1::Sha1::new();
    sha.update(key.as_bytes().trim_ascii());
    sha.update(ACCEPT_GUID);
    let digest = sha.finalize();
    let mut out = [0u8; 28];
    // 20 bytes encode to exactly 28 characters, so the buffer always fits; were it not
    // to, the zeroes left would match no header value and the `101` would be refused.
    let _ = base64::engine::general_purpose::STANDARD.encode_slice(digest, &mut out);
    out
}

/// Why an upstream `101` is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadSwitch {
    /// `Upgrade` missing or not `websocket`.
    Upgrade,
    /// `Sec-WebSocket-Accept` missing or not derived from the key.
    Accept,
}

/// Checks an upstream `101` against the handshake's key.
pub fn check_switch(response: &HeaderMap, key: &HeaderValue) -> Result<(), BadSwitch> {
    if !header_has_token(response, &UPGRADE, "websocket") {
        return Err(BadSwitch::Upgrade);
    }
    let mut accepts = response.get_all(SEC_WEBSOCKET_ACCEPT).iter();
    match (accepts.next(), accepts.next()) {
        (Some(accept), None) if accept.as_bytes().trim_ascii() == accept_bytes(key) => Ok(()),
        _ => Err(BadSwitch::Accept),
    }
}

/// Whether the handshake's `Origin` is allowed. With a list, a handshake without `Origin`
/// is refused too (the list names who may connect), and so is one with several: the check
/// would read one and the upstream might read another.
pub fn origin_allowed(allowed: Option<&[String]>, headers: &HeaderMap) -> bool {
    let Some(allowed) = allowed else {
        return true;
    };
    let mut origins = headers.get_all(ORIGIN).iter();
    let (Some(origin), None) = (origins.next(), origins.next()) else {
        return false;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim();
    allowed.iter().any(|a| a.eq_ignore_ascii_case(origin))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_static(v));
        }
        map
    }

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    #[test]
    fn rfc_6455_example_accept() {
        assert_eq!(
            accept_for(&HeaderValue::from_static(KEY)),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn classification_table() {
        let valid = [
            ("upgrade", "websocket"),
            ("connection", "keep-alive, Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", KEY),
        ];
        let get = Method::GET;
        let v11 = Version::HTTP_11;
        assert!(matches!(
            classify(&get, v11, &headers(&valid)),
            Upgrade::WebSocket { .. }
        ));
        // Tokens over several lines, any case.
        let split = [
            ("upgrade", "WebSocket"),
            ("connection", "keep-alive"),
            ("connection", "UPGRADE"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", KEY),
        ];
        assert!(matches!(
            classify(&get, v11, &headers(&split)),
            Upgrade::WebSocket { .. }
        ));
        assert_eq!(
            classify(&get, v11, &headers(&[("upgrade", "websocket")])),
            Upgrade::None
        );
        assert_eq!(
            classify(&get, v11, &headers(&[("connection", "upgrade")])),
            Upgrade::None
        );
        assert_eq!(
            classify(
                &get,
                v11,
                &headers(&[("upgrade", "h2c"), ("connection", "upgrade")])
            ),
            Upgrade::Other
        );
        let no_key = [
            ("upgrade", "websocket"),
            ("connection", "upgrade"),
            ("sec-websocket-version", "13"),
        ];
        assert!(matches!(
            classify(&get, v11, &headers(&no_key)),
            Upgrade::InvalidWebSocket { .. }
        ));
        let short_key = [
            ("upgrade", "websocket"),
            ("connection", "upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "c2hvcnQ="),
        ];
        assert!(matches!(
            classify(&get, v11, &headers(&short_key)),
            Upgrade::InvalidWebSocket { .. }
        ));
        let v8 = [
            ("upgrade", "websocket"),
            ("connection", "upgrade"),
            ("sec-websocket-version", "8"),
            ("sec-websocket-key", KEY),
        ];
        assert!(matches!(
            classify(&get, v11, &headers(&v8)),
            Upgrade::InvalidWebSocket { .. }
        ));
        assert!(matches!(
            classify(&Method::POST, v11, &headers(&valid)),
            Upgrade::InvalidWebSocket { .. }
        ));
        assert!(matches!(
            classify(&get, Version::HTTP_10, &headers(&valid)),
            Upgrade::InvalidWebSocket { .. }
        ));
    }

    /// The stack version says what tungstenite's does, for keys of any shape.
    #[test]
    fn accept_bytes_matches_accept_for() {
        for key in [KEY, "  x3JJHMbDL1EzLkh9GBhXDw==  ", "", "not base64 at all"] {
            let key = HeaderValue::from_str(key).expect("a valid header value");
            assert_eq!(accept_bytes(&key), accept_for(&key).as_bytes());
        }
    }

    #[test]
    fn switch_checks() {
        let key = HeaderValue::from_static(KEY);
        let good = headers(&[
            ("upgrade", "websocket"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ]);
        assert_eq!(check_switch(&good, &key), Ok(()));
        let wrong = headers(&[
            ("upgrade", "websocket"),
            ("sec-websocket-accept", "AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
        ]);
        assert_eq!(check_switch(&wrong, &key), Err(BadSwitch::Accept));
        let missing = headers(&[("upgrade", "websocket")]);
        assert_eq!(check_switch(&missing, &key), Err(BadSwitch::Accept));
        let no_upgrade = headers(&[("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")]);
        assert_eq!(check_switch(&no_upgrade, &key), Err(BadSwitch::Upgrade));
    }

    #[test]
    fn origins() {
        let list = vec!["https://app.example.com".to_string()];
        let ok = headers(&[("origin", "https://APP.example.com")]);
        let bad = headers(&[("origin", "https://evil.example")]);
        assert!(origin_allowed(Some(&list), &ok));
        assert!(!origin_allowed(Some(&list), &bad));
        assert!(!origin_allowed(Some(&list), &HeaderMap::new()));
        let twice = headers(&[
            ("origin", "https://app.example.com"),
            ("origin", "https://evil.example"),
        ]);
        assert!(!origin_allowed(Some(&list), &twice));
        assert!(origin_allowed(None, &bad));
    }
}
