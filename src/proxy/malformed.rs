//! Requests RFC 9112 says a server must reject, and the ones the SPEC adds, refused with
//! `400` before anything is routed or forwarded. hyper's parser already refuses most
//! framing errors (a `Transfer-Encoding` that does not end in `chunked`, differing
//! `Content-Length`s); what it lets through is checked here. Pure; no I/O.

use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, Uri, Version};

use super::headers::{is_forwarding_header, tokens};

/// Why a request is malformed: the reason for the log; the client gets `400`.
pub type Reason = &'static str;

/// Checks a request head. `saw_content_length`: the raw head carried a `Content-Length`
/// line (hyper drops it when `Transfer-Encoding` is there too).
///
/// # Errors
/// The first rule the request breaks.
pub fn check(
    version: Version,
    uri: &Uri,
    headers: &HeaderMap,
    saw_content_length: bool,
) -> Result<(), Reason> {
    let mut hosts = headers.get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return Err("more than one Host"),
        (None, None) if version == Version::HTTP_11 => return Err("HTTP/1.1 request without Host"),
        (Some(host), None) if !is_valid_authority(host.as_bytes()) => return Err("invalid Host"),
        _ => {}
    }
    if let Some(authority) = uri.authority() {
        if !is_valid_authority(authority.as_str().as_bytes()) {
            return Err("invalid authority in the request target");
        }
    }
    if headers.contains_key(TRANSFER_ENCODING)
        && (saw_content_length || headers.contains_key(CONTENT_LENGTH))
    {
        return Err("Content-Length together with Transfer-Encoding");
    }
    if tokens(headers, &CONNECTION).any(is_protected) {
        return Err("Connection names a header sluice sets or checks");
    }
    Ok(())
}

/// A header sluice sets or decides by, which a client may not have removed on the way:
/// `Host`, the framing headers, `Origin`, `Sec-WebSocket-*` and the forwarding headers.
fn is_protected(name: &[u8]) -> bool {
    const SEC_WEBSOCKET: &[u8] = b"sec-websocket-";
    name.eq_ignore_ascii_case(b"host")
        || name.eq_ignore_ascii_case(b"content-length")
        || name.eq_ignore_ascii_case(b"transfer-encoding")
        || name.eq_ignore_ascii_case(b"origin")
        || (name.len() >= SEC_WEBSOCKET.len()
            && name[..SEC_WEBSOCKET.len()].eq_ignore_ascii_case(SEC_WEBSOCKET))
        || is_forwarding_header(name)
}

/// `uri-host [ ":" port ]` (RFC 9110 §7.2, RFC 3986 §3.2): an IPv6 literal in brackets or
/// a non-empty reg-name / IPv4 address, and a port of at most five digits. No userinfo.
pub fn is_valid_authority(value: &[u8]) -> bool {
    let (host, port) = if let Some(inner) = value.strip_prefix(b"[") {
        let Some(close) = inner.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &inner[..close];
        let is_v6 =
            std::str::from_utf8(literal).is_ok_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok());
        if !is_v6 {
            return false;
        }
        match &inner[close + 1..] {
            [] => (&value[..0], None),
            [b':', port @ ..] => (&value[..0], Some(port)),
            _ => return false,
        }
    } else {
        match value.iter().rposition(|&b| b == b':') {
            Some(colon) => (&value[..colon], Some(&value[colon + 1..])),
            None => (value, None),
        }
    };
    let port_ok = port.is_none_or(|p| p.len() <= 5 && p.iter().all(u8::is_ascii_digit));
    let host_ok = value.starts_with(b"[") || (!host.is_empty() && is_reg_name(host));
    port_ok && host_ok
}

/// The bytes a reg-name may hold as they are: unreserved and sub-delims (RFC 3986 §3.2.2).
static REG_NAME_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        b += 1;
    }
    table
};

/// `*( unreserved / pct-encoded / sub-delims )`.
fn is_reg_name(host: &[u8]) -> bool {
    let mut i = 0;
    while i < host.len() {
        let b = host[i];
        if b == b'%' {
            let hex = host.get(i + 1..i + 3);
            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                return false;
            }
            i += 3;
            continue;
        }
        if !REG_NAME_BYTE[usize::from(b)] {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn map(pairs: &[(&'static str, &'static [u8])]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                *k,
                HeaderValue::from_bytes(v).unwrap_or(HeaderValue::from_static("x")),
            );
        }
        m
    }

    fn verdict(version: Version, pairs: &[(&'static str, &'static [u8])]) -> Result<(), Reason> {
        check(version, &Uri::from_static("/"), &map(pairs), false)
    }

    #[test]
    fn host_rules() {
        let v11 = Version::HTTP_11;
        assert!(verdict(v11, &[("host", b"example.com")]).is_ok());
        assert!(verdict(v11, &[("host", b"example.com:8080")]).is_ok());
        assert!(verdict(v11, &[("host", b"[::1]:8080")]).is_ok());
        assert!(verdict(v11, &[("host", b"127.0.0.1")]).is_ok());
        assert!(verdict(v11, &[]).is_err(), "HTTP/1.1 needs a Host");
        assert!(
            verdict(Version::HTTP_10, &[]).is_ok(),
            "HTTP/1.0 may omit it"
        );
        assert!(verdict(v11, &[("host", b"a"), ("host", b"b")]).is_err());
        assert!(verdict(v11, &[("host", b"a"), ("host", b"a")]).is_err());
        for bad in [
            &b""[..],
            b"a b",
            b"a/b",
            b"user@host",
            b"host:port",
            b"host:123456",
            b"[::1",
            b"[nope]:80",
            b"a\\b",
            b"%zz",
            b":80",
        ] {
            assert!(
                verdict(v11, &[("host", bad)]).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn framing_and_connection_rules() {
        let v11 = Version::HTTP_11;
        let te = [("host", &b"h"[..]), ("transfer-encoding", b"chunked")];
        assert!(check(v11, &Uri::from_static("/"), &map(&te), false).is_ok());
        assert!(check(v11, &Uri::from_static("/"), &map(&te), true).is_err());
        for named in [
            &b"Host"[..],
            b"upgrade, Origin",
            b"Sec-WebSocket-Key",
            b"keep-alive, X-Forwarded-For",
            b"x_real_ip",
            b"True-Client-IP",
            b"Content-Length",
            b"transfer-encoding",
            b"forwarded",
            b"\xff\xfe, host",
        ] {
            let pairs = [("host", &b"h"[..]), ("connection", named)];
            assert!(
                verdict(v11, &pairs).is_err(),
                "{:?}",
                String::from_utf8_lossy(named)
            );
        }
        let fine = [
            ("host", &b"h"[..]),
            ("connection", b"keep-alive, Upgrade, x-custom"),
        ];
        assert!(verdict(v11, &fine).is_ok());
    }

    #[test]
    fn absolute_form_authority_is_checked() {
        let headers = map(&[("host", b"h")]);
        let ok = Uri::from_static("http://example.com/x");
        assert!(check(Version::HTTP_11, &ok, &headers, false).is_ok());
        let userinfo = Uri::from_static("http://user@example.com/x");
        assert!(check(Version::HTTP_11, &userinfo, &headers, false).is_err());
    }
}
