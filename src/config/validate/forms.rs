//! The forms values may take: addresses, host names, paths, origins, header names.
//!
//! Pure functions from text to a value or to a message "what is wrong (what is allowed)";
//! `validate` adds where. Kept apart so each rule has a table test.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use http::HeaderName;
use ipnet::IpNet;

use crate::config::{HashKey, HostPattern};

pub(super) const IP_PORT_HINT: &str =
    "an IP address and a port, e.g. \"0.0.0.0:8080\" or \"[::]:8080\"";
pub(super) const SERVER_ADDR_HINT: &str =
    "\"host:port\", e.g. \"127.0.0.1:3000\", \"[::1]:3000\" or \"app.internal:3000\"";
pub(super) const CIDR_HINT: &str =
    "a network such as \"10.0.0.0/8\" or \"::1/128\", or a single IP address";
pub(super) const HASH_KEY_HINT: &str = "\"ip\", \"path\", \"header:NAME\" or \"cookie:NAME\"";
pub(super) const HOST_PATTERN_HINT: &str =
    "a host name such as \"example.com\" or \"*.example.com\", without a port";
pub(super) const ORIGIN_HINT: &str =
    "scheme://host[:port] as browsers send it, e.g. \"https://example.com\"";

/// The headers `set_headers` may not set, each with why: sluice owns them.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

/// `IP:PORT` with an IP literal (listeners, admin, resolver): these are bound or dialled
/// before any name could be resolved. `port_zero` allows port 0 ("any free port").
pub(super) fn ip_port(text: &str, port_zero: bool) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        if addr.port() == 0 && !port_zero {
            return Err(format!(
                "{text:?} has port 0 (a port from 1 to 65535, e.g. \"127.0.0.1:53\")"
            ));
        }
        return Ok(addr);
    }
    let what = if text.parse::<Ipv6Addr>().is_ok() {
        "has no port, and IPv6 addresses go in brackets"
    } else if text.parse::<IpAddr>().is_ok() {
        "has no port"
    } else {
        match text.rsplit_once(':') {
            None => "has no port",
            Some((host, _)) => {
                let bare = host
                    .strip_prefix('[')
                    .and_then(|h| h.strip_suffix(']'))
                    .unwrap_or(host);
                if bare.parse::<IpAddr>().is_ok() {
                    "has an invalid port"
                } else if dns_name(host) {
                    "names a host, not an IP address"
                } else {
                    "is not an IP address and port"
                }
            }
        }
    };
    Err(format!("{text:?} {what} ({IP_PORT_HINT})"))
}

/// A `servers` address: `host:port`, the host an IP literal (IPv6 in brackets) or a DNS
/// name, the port 1-65535. Returns the host (without brackets) and the port.
pub(super) fn host_port(text: &str) -> Result<(String, u16), String> {
    let fail = |what: &str| Err(format!("{text:?} {what} ({SERVER_ADDR_HINT})"));
    if text.is_empty() {
        return fail("is empty");
    }
    if text.contains("://") {
        return fail("has a scheme, which does not belong here");
    }
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return fail("is not a host and port");
        };
        let Some(port) = after.strip_prefix(':') else {
            return fail("has no port");
        };
        if host.parse::<Ipv6Addr>().is_err() {
            return fail("has an invalid IPv6 address");
        }
        (host, port)
    } else {
        let Some((host, port)) = text.rsplit_once(':') else {
            return fail("has no port");
        };
        if host.contains(':') {
            return if text.parse::<Ipv6Addr>().is_ok() {
                fail("has no port, and IPv6 addresses go in brackets")
            } else {
                fail("is not a host and port")
            };
        }
        if host.is_empty() {
            return fail("has no host");
        }
        if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            if host.parse::<Ipv4Addr>().is_err() {
                return fail("has an invalid IPv4 address");
            }
        } else if !dns_name(host) {
            return fail("has an invalid host name");
        }
        (host, port)
    };
    match port.parse::<u16>() {
        Ok(p) if p != 0 && port.bytes().all(|b| b.is_ascii_digit()) => Ok((host.to_owned(), p)),
        _ => Err(format!(
            "{text:?} has an invalid port (a port from 1 to 65535)"
        )),
    }
}

/// A DNS host name: dot-separated labels of letters, digits, `-` (not at either end) and
/// `_` (accepted because container platforms hand out such names), at most 253
/// characters, and not all-numeric at the end (`1.2.3` would be read as an IP by the
/// system resolver).
pub(super) fn dns_name(text: &str) -> bool {
    if text.is_empty() || text.len() > 253 {
        return false;
    }
    let labels_ok = text.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    let last_numeric = text
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    labels_ok && !last_numeric
}

/// A trusted-proxy network; a bare IP is its own /32 or /128. Host bits are cleared
/// (`10.1.2.3/8` is `10.0.0.0/8`), as the operator meant the network.
pub(super) fn cidr(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(format!("{text:?} is not a CIDR ({CIDR_HINT})"))
}

pub(super) fn hash_key(text: &str) -> Result<HashKey, String> {
    if text == "ip" {
        return Ok(HashKey::Ip);
    }
    if text == "path" {
        return Ok(HashKey::Path);
    }
    if let Some(name) = text.strip_prefix("header:") {
        return HeaderName::from_bytes(name.as_bytes())
            .map(HashKey::Header)
            .map_err(|_| format!("{text:?} has an invalid header name ({HASH_KEY_HINT})"));
    }
    if let Some(name) = text.strip_prefix("cookie:") {
        // RFC 6265 §4.1.1: a cookie name is an HTTP token, the same alphabet as header names.
        return match HeaderName::from_bytes(name.as_bytes()) {
            Ok(_) => Ok(HashKey::Cookie(name.to_owned())),
            Err(_) => Err(format!(
                "{text:?} has an invalid cookie name ({HASH_KEY_HINT})"
            )),
        };
    }
    Err(format!("{text:?} is not a hash key ({HASH_KEY_HINT})"))
}

/// A route's `host`, lower-cased: exact, or `*.` followed by a host name. IPv4 literals
/// are accepted too, since clients do send `Host: 10.0.0.1`.
pub(super) fn host_pattern(text: &str) -> Result<HostPattern, String> {
    let lower = text.to_ascii_lowercase();
    let what = if lower.contains(':') {
        "has a port, which is ignored when matching"
    } else if let Some(suffix) = lower.strip_prefix("*.") {
        if dns_name(suffix) {
            return Ok(HostPattern::Wildcard(format!(".{suffix}")));
        }
        "is not a wildcard host name"
    } else if lower.contains('*') {
        "has a wildcard other than a leading \"*.\""
    } else if dns_name(&lower) || lower.parse::<Ipv4Addr>().is_ok() {
        return Ok(HostPattern::Exact(lower));
    } else {
        "is not a host name"
    };
    Err(format!("{text:?} {what} ({HOST_PATTERN_HINT})"))
}

/// A path (or path prefix): starts with `/`; no whitespace, controls, query or fragment.
pub(super) fn request_path(text: &str) -> bool {
    text.starts_with('/')
        && !text
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#')
}

/// Drops trailing slashes (`/ws/` matches like `/ws`), keeping `/` itself.
pub(super) fn trim_path(text: &str) -> String {
    let trimmed = text.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// An `allowed_origins` entry. Browsers send `Origin` as `scheme://host[:port]` with no
/// path, so an entry with a path or a trailing `/` could never match: refuse it.
pub(super) fn origin(text: &str) -> Result<(), String> {
    let what = match text.split_once("://") {
        None => "has no scheme",
        Some((scheme, _))
            if scheme.is_empty()
                || !scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                || !scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) =>
        {
            "has an invalid scheme"
        }
        Some((_, "")) => "has no host",
        Some((_, rest)) if rest.contains('/') => "has a path or a trailing \"/\"",
        Some((_, rest))
            if rest
                .chars()
                .any(|c| c.is_whitespace() || c == '?' || c == '#') =>
        {
            "is not an origin"
        }
        Some(_) => return Ok(()),
    };
    Err(format!("{text:?} {what} ({ORIGIN_HINT})"))
}

/// A `set_headers` name: a valid header name that sluice does not manage itself.
pub(super) fn settable_header(name: &str) -> Result<HeaderName, String> {
    let Ok(header) = HeaderName::from_bytes(name.as_bytes()) else {
        return Err(format!(
            "{name:?} is not a valid header name (letters, digits and !#$%&'*+-.^_`|~, e.g. \"X-Request-Source\")"
        ));
    };
    let lower = header.as_str();
    if HOP_BY_HOP.contains(&lower) {
        return Err(format!(
            "{name} is a hop-by-hop header, which sluice removes and sets itself (end-to-end headers only; not Connection, Keep-Alive, Proxy-Connection, TE, Trailer, Transfer-Encoding or Upgrade)"
        ));
    }
    if lower == "host" {
        return Err(format!(
            "{name} is set by host_header (use host_header = \"...\" on this route)"
        ));
    }
    if lower == "content-length" {
        return Err(format!(
            "{name} frames the body, which sluice does itself (any other end-to-end header)"
        ));
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_port_forms() {
        assert_eq!(
            ip_port("0.0.0.0:8080", false),
            Ok("0.0.0.0:8080".parse().unwrap())
        );
        assert_eq!(
            ip_port("[::]:8080", false),
            Ok("[::]:8080".parse().unwrap())
        );
        assert_eq!(
            ip_port("127.0.0.1:0", true),
            Ok("127.0.0.1:0".parse().unwrap())
        );
        let err = |t: &str| ip_port(t, false).unwrap_err();
        assert!(err("127.0.0.1:0").contains("has port 0"));
        assert!(err("127.0.0.1").contains("has no port"));
        assert!(err("::1").contains("has no port, and IPv6 addresses go in brackets"));
        assert!(err("::1:80").contains("has no port, and IPv6 addresses go in brackets"));
        assert!(err("127.0.0.1:99999").contains("has an invalid port"));
        assert!(err("[::1]:x").contains("has an invalid port"));
        assert!(err("localhost:8080").contains("names a host, not an IP address"));
        assert!(err("").contains("has no port"));
        assert!(err("a b:1").contains("is not an IP address and port"));
    }

    #[test]
    fn host_port_forms() {
        let ok = |t: &str| host_port(t).unwrap();
        assert_eq!(ok("127.0.0.1:3000"), ("127.0.0.1".into(), 3000));
        assert_eq!(ok("[::1]:3000"), ("::1".into(), 3000));
        assert_eq!(ok("app.internal:80"), ("app.internal".into(), 80));
        assert_eq!(ok("my_app:80"), ("my_app".into(), 80));
        let cases = [
            ("http://a:1", "has a scheme"),
            ("a", "has no port"),
            ("[::1]", "has no port"),
            ("[::1", "is not a host and port"),
            ("[zz]:1", "has an invalid IPv6 address"),
            ("::1", "has no port, and IPv6 addresses go in brackets"),
            (
                "fe80::1:80:1",
                "has no port, and IPv6 addresses go in brackets",
            ),
            ("a:b:c", "is not a host and port"),
            (":80", "has no host"),
            ("256.1.1.1:80", "has an invalid IPv4 address"),
            ("1.2.3:80", "has an invalid IPv4 address"),
            ("-a.b:80", "has an invalid host name"),
            ("a..b:80", "has an invalid host name"),
            ("a:0", "has an invalid port"),
            ("a:65536", "has an invalid port"),
            ("a:+80", "has an invalid port"),
            ("a:", "has an invalid port"),
            ("", "is empty"),
        ];
        for (text, want) in cases {
            let got = host_port(text).unwrap_err();
            assert!(got.contains(want), "{text:?}: {got}");
        }
    }

    #[test]
    fn dns_names() {
        assert!(dns_name("example.com"));
        assert!(dns_name("a-b.c"));
        assert!(dns_name("localhost"));
        assert!(!dns_name(""));
        assert!(!dns_name("a.-b"));
        assert!(!dns_name("a."));
        assert!(!dns_name("1.2.3"));
        assert!(!dns_name(&"a".repeat(64)));
        assert!(!dns_name("é.com"));
    }

    #[test]
    fn cidrs() {
        assert_eq!(cidr("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(cidr("::1/128").unwrap().to_string(), "::1/128");
        assert_eq!(cidr("192.168.1.1").unwrap().to_string(), "192.168.1.1/32");
        assert_eq!(cidr("::1").unwrap().to_string(), "::1/128");
        assert!(cidr("10.0.0.0/33").is_err());
        assert!(cidr("10.0.0.0/").is_err());
        assert!(cidr("example.com").is_err());
    }

    #[test]
    fn hash_keys() {
        assert_eq!(hash_key("ip"), Ok(HashKey::Ip));
        assert_eq!(hash_key("path"), Ok(HashKey::Path));
        assert_eq!(
            hash_key("header:X-User"),
            Ok(HashKey::Header(HeaderName::from_static("x-user")))
        );
        assert_eq!(hash_key("cookie:sid"), Ok(HashKey::Cookie("sid".into())));
        assert!(hash_key("header:").is_err());
        assert!(hash_key("cookie:a b").is_err());
        assert!(hash_key("IP").is_err());
    }

    #[test]
    fn host_patterns() {
        assert_eq!(
            host_pattern("Example.COM"),
            Ok(HostPattern::Exact("example.com".into()))
        );
        assert_eq!(
            host_pattern("*.example.com"),
            Ok(HostPattern::Wildcard(".example.com".into()))
        );
        assert_eq!(
            host_pattern("10.0.0.1"),
            Ok(HostPattern::Exact("10.0.0.1".into()))
        );
        let cases = [
            ("example.com:8080", "has a port"),
            ("*", "has a wildcard other than"),
            ("*example.com", "has a wildcard other than"),
            ("a.*.com", "has a wildcard other than"),
            ("*.*.com", "is not a wildcard host name"),
            ("", "is not a host name"),
            ("exa mple.com", "is not a host name"),
        ];
        for (text, want) in cases {
            let got = host_pattern(text).unwrap_err();
            assert!(got.contains(want), "{text:?}: {got}");
        }
    }

    #[test]
    fn paths() {
        assert!(request_path("/"));
        assert!(request_path("/websocket"));
        assert!(!request_path("websocket"));
        assert!(!request_path(""));
        assert!(!request_path("/a b"));
        assert!(!request_path("/a?b"));
        assert!(!request_path("/a#b"));
        assert_eq!(trim_path("/"), "/");
        assert_eq!(trim_path("//"), "/");
        assert_eq!(trim_path("/ws/"), "/ws");
        assert_eq!(trim_path("/ws"), "/ws");
    }

    #[test]
    fn origins() {
        assert_eq!(origin("https://example.com"), Ok(()));
        assert_eq!(origin("http://localhost:8080"), Ok(()));
        let cases = [
            ("example.com", "has no scheme"),
            ("https://example.com/", "has a path or a trailing"),
            ("https://", "has no host"),
            ("://x", "has an invalid scheme"),
            ("https://a b", "is not an origin"),
        ];
        for (text, want) in cases {
            let got = origin(text).unwrap_err();
            assert!(got.contains(want), "{text:?}: {got}");
        }
    }

    #[test]
    fn settable_headers() {
        assert_eq!(
            settable_header("X-Name").unwrap(),
            HeaderName::from_static("x-name")
        );
        for name in [
            "Connection",
            "upgrade",
            "TE",
            "Transfer-Encoding",
            "Keep-Alive",
        ] {
            assert!(
                settable_header(name).unwrap_err().contains("hop-by-hop"),
                "{name}"
            );
        }
        assert!(settable_header("Host").unwrap_err().contains("host_header"));
        assert!(settable_header("Content-Length")
            .unwrap_err()
            .contains("frames the body"));
        assert!(settable_header("X Bad")
            .unwrap_err()
            .contains("not a valid header name"));
        assert!(settable_header("")
            .unwrap_err()
            .contains("not a valid header name"));
    }
}
