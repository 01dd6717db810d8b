//! Property tests for sluice's pure protocol rules: the same invariants the fuzz targets
//! check (`fuzz/`, see fuzz/README.md), over proptest-generated inputs, so `cargo test`
//! keeps them on stable Rust.
//!
//! The invariants live in `fuzz/src/invariants.rs` and are included here as a module, so
//! the fuzzer and these properties cannot drift apart:
//! - **rewrite**: `malformed::check` then `headers::rewrite_request` leave no hop-by-hop
//!   header, nothing the client named in `Connection`, no forged forwarding header from an
//!   untrusted peer, and every end-to-end header as it was;
//! - **handshake / 101**: `websocket::classify` agrees with a reference written from the
//!   SPEC and RFC 6455, `check_switch` accepts a `101` exactly when `Upgrade` lists
//!   `websocket` and its one `Sec-WebSocket-Accept` answers the key, `origin_allowed`
//!   wants exactly one listed `Origin`;
//! - **paths**: `path::normalize` agrees with a literal RFC 3986 §5.2.4, leaves no
//!   dot-segment, is idempotent, and a matching route prefix is a real segment prefix;
//! - **config**: a refused file names a 1-based line and column, inside the text, for
//!   every problem, each rendered as one `f.toml:LINE:COL: ` line.
//!
//! Failures are not persisted to a regressions file (the shrunk input is in the message).

#[allow(dead_code)] // Shared with the fuzz targets, which use a few items these do not.
#[path = "../fuzz/src/invariants.rs"]
mod invariants;

use std::net::IpAddr;

use base64::Engine as _;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, Version};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::Config as ProptestConfig;
use sluice::config::HostHeader;
use sluice::proxy::websocket::accept_for;

use invariants::{
    append_pairs, check_classify, check_config, check_origin, check_path, check_rewrite,
    check_switch, header_map, reference_normalize, RewriteCase, METHODS, NAMES, SAMPLE_ACCEPT,
    SAMPLE_KEY, VALUES, VERSIONS,
};

/// A fixed seed, so `cargo test` (and CI) checks the same cases every run; exploring is
/// the fuzzers' job. `PROPTEST_RNG_SEED=N` picks another seed.
fn config(cases: u32) -> ProptestConfig {
    let default = ProptestConfig::default();
    let rng_seed = if std::env::var_os("PROPTEST_RNG_SEED").is_some() {
        default.rng_seed
    } else {
        proptest::test_runner::RngSeed::Fixed(0x5_1c_e5)
    };
    ProptestConfig {
        cases,
        failure_persistence: None,
        rng_seed,
        ..default
    }
}

// ------------------------------------------------------------------------------------
// Generators.
// ------------------------------------------------------------------------------------

/// A header name: mostly one sluice cares about, sometimes any token.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(NAMES).prop_map(str::to_string),
        1 => "[A-Za-z0-9_-]{1,12}",
    ]
}

/// A header value: a known one, a `Connection`-style list of names, or visible ASCII.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(VALUES).prop_map(str::to_string),
        2 => prop::collection::vec(name(), 1..4).prop_map(|names| names.join(", ")),
        1 => "[ -~\t]{0,16}",
    ]
}

fn pairs(max: usize) -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec((name(), value()), 0..max)
}

fn version() -> impl Strategy<Value = Version> {
    prop_oneof![4 => Just(Version::HTTP_11), 1 => select(VERSIONS)]
}

fn uri() -> impl Strategy<Value = Uri> {
    prop_oneof![
        3 => Just(Uri::from_static("/")),
        1 => select(VALUES).prop_map(|authority| {
            Uri::try_from(format!("http://{authority}/p")).unwrap_or_else(|_| Uri::from_static("/"))
        }),
    ]
}

fn host_header() -> impl Strategy<Value = HostHeader> {
    prop_oneof![
        1 => Just(HostHeader::Preserve),
        1 => Just(HostHeader::Upstream),
        1 => value().prop_map(|v| match HeaderValue::from_str(&v) {
            Ok(v) => HostHeader::Fixed(v),
            Err(_) => HostHeader::Preserve,
        }),
    ]
}

fn set_headers() -> impl Strategy<Value = Vec<(HeaderName, HeaderValue)>> {
    prop::collection::vec((name(), value()), 0..3).prop_map(|pairs| {
        pairs
            .into_iter()
            .filter_map(|(n, v)| {
                Some((
                    HeaderName::from_bytes(n.as_bytes()).ok()?,
                    HeaderValue::from_str(&v).ok()?,
                ))
            })
            .collect()
    })
}

prop_compose! {
    fn rewrite_case()(
        version in version(),
        uri in uri(),
        host in prop::option::weighted(0.9, select(&["a.example", "a.example:8080", "[::1]:80", "127.0.0.1"][..])),
        headers in pairs(10),
        saw_content_length in prop::bool::weighted(0.1),
        peer in any::<IpAddr>(),
        trusted in any::<bool>(),
        https in any::<bool>(),
        host_header in host_header(),
        websocket in any::<bool>(),
        keepalive in any::<bool>(),
        set_headers in set_headers(),
    ) -> RewriteCase {
        let mut all: Vec<(String, String)> = host.map(|h| ("host".to_string(), h.to_string())).into_iter().collect();
        all.extend(headers);
        RewriteCase {
            version,
            uri,
            headers: header_map(&all),
            saw_content_length,
            peer,
            trusted,
            https,
            host_header,
            websocket,
            keepalive,
            set_headers,
        }
    }
}

/// A `Sec-WebSocket-Key`: the RFC's sample, base64 of 16 random bytes, or anything.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just(SAMPLE_KEY.to_string()),
        3 => any::<[u8; 16]>().prop_map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
        1 => any::<[u8; 15]>().prop_map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
        1 => value(),
    ]
}

prop_compose! {
    /// A request head: sometimes a valid handshake, then headers removed and added.
    fn handshake()(
        method in prop_oneof![4 => Just("GET"), 1 => select(METHODS)],
        version in version(),
        base in prop::option::weighted(0.8, key()),
        remove in prop::collection::vec(name(), 0..2),
        extra in pairs(4),
    ) -> (Method, Version, HeaderMap) {
        let mut pairs: Vec<(String, String)> = Vec::new();
        if let Some(key) = base {
            pairs.push(("upgrade".into(), "websocket".into()));
            pairs.push(("connection".into(), "Upgrade".into()));
            pairs.push(("sec-websocket-version".into(), "13".into()));
            pairs.push(("sec-websocket-key".into(), key));
        }
        let mut headers = header_map(&pairs);
        for name in remove {
            if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
                headers.remove(name);
            }
        }
        append_pairs(&mut headers, &extra);
        let method = Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET);
        (method, version, headers)
    }
}

/// How a `101`'s accept header is spelled relative to the right value.
#[derive(Debug, Clone)]
enum Accept {
    Right,
    Padded,
    Lowercase,
    Sample,
    Other(String),
}

fn accept() -> impl Strategy<Value = Accept> {
    prop_oneof![
        3 => Just(Accept::Right),
        1 => Just(Accept::Padded),
        1 => Just(Accept::Lowercase),
        1 => Just(Accept::Sample),
        1 => value().prop_map(Accept::Other),
    ]
}

/// A `101`'s headers: usually a good one, then headers removed and added.
fn switch_response(
    key: &HeaderValue,
    base: bool,
    remove: &[String],
    extra: &[(String, Accept)],
) -> HeaderMap {
    let right = accept_for(key);
    let mut pairs: Vec<(String, String)> = Vec::new();
    if base {
        pairs.push(("upgrade".into(), "websocket".into()));
        pairs.push(("connection".into(), "upgrade".into()));
        pairs.push(("sec-websocket-accept".into(), right.clone()));
    }
    let mut headers = header_map(&pairs);
    for name in remove {
        if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
            headers.remove(name);
        }
    }
    let extra: Vec<(String, String)> = extra
        .iter()
        .map(|(name, accept)| {
            let value = match accept {
                Accept::Right => right.clone(),
                Accept::Padded => format!(" {right}\t"),
                Accept::Lowercase => right.to_ascii_lowercase(),
                Accept::Sample => SAMPLE_ACCEPT.to_string(),
                Accept::Other(v) => v.clone(),
            };
            (name.clone(), value)
        })
        .collect();
    append_pairs(&mut headers, &extra);
    headers
}

/// A request path built from the pieces dot-segment handling is about.
fn path() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => Just("/".to_string()),
        2 => Just(".".to_string()),
        1 => Just("..".to_string()),
        1 => select(&["%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "\\", "%2", "%", "?"][..]).prop_map(str::to_string),
        2 => "[a-z]{1,3}",
    ];
    prop_oneof![
        6 => prop::collection::vec(piece, 0..12).prop_map(|pieces| format!("/{}", pieces.concat())),
        1 => any::<String>(),
    ]
}

/// Config text: a valid file or nothing, then lines of keys, values, tables and junk.
fn config_text() -> impl Strategy<Value = String> {
    const BASE: &str = "[[listener]]\naddr = \"127.0.0.1:8080\"\n\n[upstream.app]\nservers = [\"127.0.0.1:3000\"]\n\n[[route]]\npath = \"/\"\nupstream = \"app\"\n";
    const KEYS: &[&str] = &[
        "addr",
        "path",
        "upstream",
        "servers",
        "host",
        "websocket",
        "strip_prefix",
        "allowed_origins",
        "host_header",
        "set_headers",
        "read_timeout",
        "idle_timeout",
        "max_connections",
        "trusted_proxies",
        "shutdown_timeout",
        "balance",
        "hash_key",
        "keepalive",
        "weight",
        "max_header_bytes",
        "header_timeout",
        "unknown",
        "\"k\\nk\"",
        "é",
        "a.b",
        "\"\"",
    ];
    const VALS: &[&str] = &[
        "\"127.0.0.1:8080\"",
        "\"[::1]:0\"",
        "\"localhost\"",
        "\"/\"",
        "\"/ws/\"",
        "\"ws\"",
        "\"app\"",
        "\"nope\"",
        "true",
        "1",
        "0",
        "-1",
        "65536",
        "99999999999999999999",
        "1.5",
        "\"10s\"",
        "\"1.5s\"",
        "\"\"",
        "[]",
        "[\"10.0.0.0/8\", \"x\"]",
        "{ \"X-A\" = \"1\" }",
        "{ Connection = \"x\" }",
        "\"*.example.com\"",
        "\"hash\"",
        "\"é\"",
        "\"a\\nb\"",
        "1979-05-27",
        "{ addr = \"127.0.0.1:1\", weight = 0 }",
    ];
    const TABLES: &[&str] = &[
        "[proxy]",
        "[[listener]]",
        "[upstream.app]",
        "[upstream.other]",
        "[[route]]",
        "[admin]",
        "[nope]",
        "[[route",
        "[upstream]",
        "[route]",
    ];
    let line = prop_oneof![
        4 => (select(KEYS), select(VALS)).prop_map(|(k, v)| format!("{k} = {v}")),
        2 => select(TABLES).prop_map(str::to_string),
        1 => "[ -~é\t]{0,12}",
    ];
    (
        prop::bool::weighted(0.7),
        prop::collection::vec(line, 0..8),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(base, lines, crlf)| {
            let mut text = if base {
                BASE.to_string()
            } else {
                String::new()
            };
            text.push_str(&lines.join(if crlf { "\r\n" } else { "\n" }));
            text
        })
}

// ------------------------------------------------------------------------------------
// Properties.
// ------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn rewrite_keeps_the_forwarding_rules(case in rewrite_case()) {
        check_rewrite(&case).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn handshakes_and_101s_are_judged_as_the_spec_says(
        (method, version, headers) in handshake(),
        allowed in prop::option::of(prop::collection::vec(select(VALUES), 0..3)),
        base_response in prop::bool::weighted(0.8),
        remove in prop::collection::vec(name(), 0..2),
        extra in prop::collection::vec((name(), accept()), 0..3),
    ) {
        let allowed: Option<Vec<String>> =
            allowed.map(|list| list.into_iter().map(str::to_string).collect());
        check_origin(allowed.as_deref(), &headers).map_err(TestCaseError::fail)?;
        if let Some(key) = check_classify(&method, version, &headers).map_err(TestCaseError::fail)? {
            let response = switch_response(&key, base_response, &remove, &extra);
            check_switch(&response, &key).map_err(TestCaseError::fail)?;
        }
    }

    #[test]
    fn paths_normalise_as_rfc_3986_says(path in path()) {
        check_path(&path).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn config_errors_carry_a_location(text in config_text()) {
        check_config(&text).map_err(TestCaseError::fail)?;
    }
}

// ------------------------------------------------------------------------------------
// Fixed cases: the references themselves, and that the generators reach past the
// early exits (a property that only ever sees refused input proves little).
// ------------------------------------------------------------------------------------

#[test]
fn the_reference_normaliser_follows_rfc_3986() {
    // RFC 3986 §5.2.4's own examples (the absolute-path one), and §5.4.1's.
    assert_eq!(
        reference_normalize("/a/b/c/./../../g").as_deref(),
        Ok("/a/g")
    );
    for (input, want) in [
        ("/b/c/./g", "/b/c/g"),
        ("/b/c/g/", "/b/c/g/"),
        ("/b/c/.", "/b/c/"),
        ("/b/c/..", "/b/"),
        ("/b/c/../g", "/b/g"),
        ("/b/c/../..", "/"),
        ("/a/%2E%2e/b", "/b"),
        ("/a/%2e%2e%2e/b", "/a/%2e%2e%2e/b"),
        ("/a//../b", "/a/b"),
    ] {
        assert_eq!(reference_normalize(input).as_deref(), Ok(want), "{input}");
    }
    for climbs in ["/..", "/a/../..", "/a/..%2fb", "/a\\..\\b", "/x/..%5C"] {
        assert!(reference_normalize(climbs).is_err(), "{climbs}");
    }
}

#[test]
fn the_sample_key_is_answered_as_rfc_6455_says() {
    assert_eq!(
        accept_for(&HeaderValue::from_static(SAMPLE_KEY)),
        SAMPLE_ACCEPT
    );
}

#[test]
fn the_properties_reach_their_interesting_branches() {
    // A spoofing request from an untrusted peer gets through `malformed::check`.
    let case = RewriteCase {
        version: Version::HTTP_11,
        uri: Uri::from_static("/"),
        headers: header_map(&[
            ("host", "a.example"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x_real_ip", "6.6.6.6"),
            ("connection", "x-secret, keep-alive"),
            ("x-secret", "1"),
        ]),
        saw_content_length: false,
        peer: IpAddr::from([10, 1, 2, 3]),
        trusted: false,
        https: false,
        host_header: HostHeader::Preserve,
        websocket: false,
        keepalive: true,
        set_headers: Vec::new(),
    };
    assert_eq!(check_rewrite(&case), Ok(true));
    // A valid handshake is classified as one, and its good `101` accepted.
    let request = header_map(&[
        ("upgrade", "websocket"),
        ("connection", "Upgrade"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", SAMPLE_KEY),
    ]);
    let key = check_classify(&Method::GET, Version::HTTP_11, &request);
    let Ok(Some(key)) = key else {
        panic!("not a handshake: {key:?}");
    };
    let response = switch_response(&key, true, &[], &[]);
    assert_eq!(check_switch(&response, &key), Ok(()));
    assert!(sluice::proxy::websocket::check_switch(&response, &key).is_ok());
    // A file with problems is refused, each problem located.
    let text = "[proxy]\nshutdown_timeout = 30\nbogus = 1\n\n[[listener]]\naddr = \"localhost\"\n";
    assert_eq!(check_config(text), Ok(false));
    let err = sluice::config::Config::from_toml(text, std::path::Path::new("f.toml"))
        .err()
        .map(|e| e.problems().len());
    assert!(err.is_some_and(|n| n >= 3), "{err:?}");
}
