//! `sluice check` against the real binary: exit codes and the exact text it prints.
//!
//! The messages are user-facing API (STYLE habit 4), so every test pins the full stdout and
//! stderr. Each test writes its file as `sluice.toml` in a fresh temporary directory and
//! runs the binary there, so `FILE` in the messages is simply `sluice.toml`.
//!
//! Index: valid files (minimal, every key, the shipped example) · unknown keys · wrong
//! types · missing keys · route → unknown upstream · addresses · durations · ranges ·
//! CIDRs · route hosts · paths and origins · headers · servers entries · duplicates ·
//! TOML syntax · several problems at once · unreadable files · keys once refused ·
//! `run` with a bad file.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Every run of the binary is bounded: a hang fails the test instead of stalling CI.
const RUN_LIMIT: Duration = Duration::from_secs(20);

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("sluice-config-check-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Debug)]
struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the binary with `args` in `dir`, with `RUST_LOG` unset so logging stays quiet.
fn sluice(dir: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            panic!("sluice {args:?} still running after {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        code: status.code(),
        stdout: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
    }
}

/// `sluice check -c sluice.toml` on `toml`.
fn check(toml: &str) -> Output {
    let dir = TempDir::new();
    std::fs::write(dir.0.join("sluice.toml"), toml).expect("write config");
    sluice(&dir.0, &["check", "-c", "sluice.toml"])
}

/// Lines joined as the binary prints them: each ends in a newline.
fn lines(lines: &[&str]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

#[track_caller]
fn assert_ok(out: &Output, stdout: &[&str]) {
    // A host name that does not resolve here is a warning, not a problem.
    let stderr: String = out
        .stderr
        .lines()
        .filter(|l| !l.contains("does not resolve now"))
        .collect();
    assert_eq!(
        (out.code, out.stdout.as_str(), stderr.as_str()),
        (Some(0), lines(stdout).as_str(), ""),
        "\n--- stdout\n{}--- stderr\n{}",
        out.stdout,
        out.stderr
    );
}

#[track_caller]
fn assert_problems(out: &Output, stderr: &[&str]) {
    assert_eq!(
        (out.code, out.stdout.as_str(), out.stderr.as_str()),
        (Some(1), "", lines(stderr).as_str()),
        "\n--- stdout\n{}--- stderr\n{}",
        out.stdout,
        out.stderr
    );
}

/// A valid listener and upstream, for tests about routes.
const BASE: &str = r#"[[listener]]
addr = "0.0.0.0:8080"

[upstream.backend]
servers = ["127.0.0.1:3000"]
"#;

const DURATION_HINT: &str =
    r#"(a whole number and a unit: ms, s, m or h; e.g. "250ms", "5s", "2m", "1h")"#;

// ---- valid files -------------------------------------------------------------------------

#[test]
fn minimal_file_prints_the_summary() {
    let out = check(
        r#"[[listener]]
addr = "0.0.0.0:8080"

[upstream.backend]
servers = ["127.0.0.1:3000", "127.0.0.1:3001"]

[[route]]
path = "/websocket"
upstream = "backend"
"#,
    );
    assert_ok(
        &out,
        &[
            "ok: 1 listener, 1 route, 1 upstream (2 servers)",
            "listener 0.0.0.0:8080",
            "route /websocket -> backend",
            "upstream backend: round_robin, 127.0.0.1:3000, 127.0.0.1:3001",
        ],
    );
}

#[test]
fn admin_is_accepted_on_its_own_address_and_refused_on_a_listeners() {
    let out = check(
        r#"[[listener]]
addr = "0.0.0.0:8080"

[upstream.backend]
servers = ["127.0.0.1:3000"]

[[route]]
upstream = "backend"

[admin]
addr = "127.0.0.1:9901"
"#,
    );
    assert_ok(
        &out,
        &[
            "ok: 1 listener, 1 route, 1 upstream (1 server)",
            "listener 0.0.0.0:8080",
            "route / -> backend",
            "upstream backend: round_robin, 127.0.0.1:3000",
            "admin 127.0.0.1:9901",
        ],
    );
    let out = check(
        r#"[[listener]]
addr = "127.0.0.1:8080"

[upstream.backend]
servers = ["127.0.0.1:3000"]

[[route]]
upstream = "backend"

[admin]
addr = "127.0.0.1:8080"
"#,
    );
    assert_problems(
        &out,
        &[
            r#"sluice.toml:11:8: admin.addr: "127.0.0.1:8080" is a listener's address (the admin endpoint needs its own)"#,
        ],
    );
}

#[test]
fn a_drained_server_is_marked_in_the_summary() {
    let out = check(
        r#"[[listener]]
addr = "0.0.0.0:8080"

[upstream.backend]
servers = ["127.0.0.1:3000", { addr = "127.0.0.1:3001", drain = true }]
drain_timeout = "1m"

[[route]]
upstream = "backend"
"#,
    );
    assert_ok(
        &out,
        &[
            "ok: 1 listener, 1 route, 1 upstream (2 servers)",
            "listener 0.0.0.0:8080",
            "route / -> backend",
            "upstream backend: round_robin, 127.0.0.1:3000, 127.0.0.1:3001 drain",
        ],
    );
}

#[test]
fn every_supported_key_is_accepted() {
    let out = check(
        r#"[proxy]
shutdown_timeout = "0s"
max_connections = 1000
max_connections_per_ip = 10
trusted_proxies = ["10.0.0.0/8", "::1/128", "192.168.1.1"]

[[listener]]
addr = "0.0.0.0:8080"
header_timeout = "250ms"
max_header_bytes = 1024

[[listener]]
addr = "[::1]:0"
header_timeout = "1m30s"
max_header_bytes = 1048576

[upstream.backend]
servers = [
    "127.0.0.1:3000",
    { addr = "app.internal:3001", weight = 3 },
    { addr = "[::1]:3002", backup = true },
]
balance = "round_robin"
connect_timeout = "2s"
max_fails = 0
fail_timeout = "1m"
keepalive = 0
tls = false

[upstream.spare]
servers = ["10.0.0.9:80"]

[[route]]
host = "*.Example.com"
path = "/websocket/"
upstream = "backend"
strip_prefix = true
websocket = true
allowed_origins = ["https://example.com", "http://localhost:8080"]
host_header = "upstream"
set_headers = { "X-Forwarded-Prefix" = "/websocket", X-Empty = "" }
read_timeout = "30s"
idle_timeout = "2h"

[[route]]
path = "/"
upstream = "backend"
websocket = false
host_header = "internal.example"

[route.set_headers]
X-From = "sluice"
"#,
    );
    assert_ok(
        &out,
        &[
            "ok: 2 listeners, 2 routes, 2 upstreams (4 servers)",
            "listener 0.0.0.0:8080",
            "listener [::1]:0",
            "route *.example.com/websocket -> backend",
            "route / -> backend (websocket off)",
            "upstream backend: round_robin, 127.0.0.1:3000, app.internal:3001 weight=3, [::1]:3002 backup",
            "upstream spare: round_robin, 10.0.0.9:80 (no route uses it)",
        ],
    );
}

#[test]
fn the_shipped_example_config_passes() {
    let out = sluice(
        Path::new(env!("CARGO_MANIFEST_DIR")),
        &["check", "-c", "config/sluice.toml"],
    );
    assert_ok(
        &out,
        &[
            "ok: 1 listener, 1 route, 1 upstream (2 servers)",
            "listener 0.0.0.0:8080",
            "route /websocket -> backend",
            "upstream backend: round_robin, 127.0.0.1:3000, 127.0.0.1:3001",
        ],
    );
}

// ---- unknown keys ------------------------------------------------------------------------

#[test]
fn unknown_top_level_key() {
    let out = check(&format!(
        "[proxi]\nshutdown_timeout = \"1s\"\n\n{BASE}\n[[route]]\nupstream = \"backend\"\n"
    ));
    assert_problems(
        &out,
        &["sluice.toml:1:2: proxi: unknown key (allowed: proxy, listener, upstream, route, admin)"],
    );
}

#[test]
fn unknown_nested_keys() {
    let out = check(
        r#"[proxy]
shutdown_timout = "1s"

[[listener]]
adress = "0.0.0.0:8080"

[upstream.backend]
servers = [{ addr = "127.0.0.1:3000", wieght = 2 }]
balanse = "round_robin"

[[route]]
upstream = "backend"
websockets = false
"#,
    );
    assert_problems(&out, &[
        "sluice.toml:2:1: proxy.shutdown_timout: unknown key (allowed: shutdown_timeout, max_connections, max_connections_per_ip, max_tunnels_per_ip, resolver, trusted_proxies)",
        r#"sluice.toml:4:1: listener[0].addr: missing (required: an IP address and a port, e.g. "0.0.0.0:8080" or "[::]:8080")"#,
        "sluice.toml:5:1: listener[0].adress: unknown key (allowed: addr, tls, header_timeout, max_header_bytes, body_timeout, send_timeout)",
        "sluice.toml:8:39: upstream.backend.servers[0].wieght: unknown key (allowed: addr, weight, backup, drain)",
        "sluice.toml:9:1: upstream.backend.balanse: unknown key (allowed: servers, balance, hash_key, connect_timeout, max_fails, fail_timeout, health_check, keepalive, tls, resolve_interval, drain_timeout)",
        "sluice.toml:13:1: route[0].websockets: unknown key (allowed: host, path, upstream, strip_prefix, websocket, allowed_origins, host_header, set_headers, read_timeout, idle_timeout, ping_interval, max_message_bytes)",
    ]);
}

// ---- wrong types -------------------------------------------------------------------------

#[test]
fn wrong_types() {
    let out = check(
        r#"[proxy]
shutdown_timeout = 30
max_connections = "100"
trusted_proxies = "10.0.0.0/8"

[[listener]]
addr = 8080
max_header_bytes = 1.5

[upstream.backend]
servers = "127.0.0.1:3000"
keepalive = true

[[route]]
path = 1
upstream = ["backend"]
strip_prefix = "yes"
websocket = 1979-05-27
allowed_origins = "https://example.com"
set_headers = ["X-A"]
"#,
    );
    assert_problems(&out, &[
        &format!("sluice.toml:2:20: proxy.shutdown_timeout: expected a string, found an integer {DURATION_HINT}"),
        "sluice.toml:3:19: proxy.max_connections: expected an integer, found a string (1 to 10000000)",
        r#"sluice.toml:4:19: proxy.trusted_proxies: expected an array, found a string (a list of CIDRs, e.g. ["10.0.0.0/8", "::1/128"])"#,
        r#"sluice.toml:7:8: listener[0].addr: expected a string, found an integer (an IP address and a port, e.g. "0.0.0.0:8080" or "[::]:8080")"#,
        "sluice.toml:8:20: listener[0].max_header_bytes: expected an integer, found a float (1024 to 1048576)",
        r#"sluice.toml:11:11: upstream.backend.servers: expected an array, found a string (a list of "host:port", or a table { addr = "host:port", weight = 1, backup = false })"#,
        "sluice.toml:12:13: upstream.backend.keepalive: expected an integer, found a boolean (0 to 65536)",
        r#"sluice.toml:15:8: route[0].path: expected a string, found an integer (a path prefix starting with "/", e.g. "/websocket")"#,
        "sluice.toml:16:12: route[0].upstream: expected a string, found an array (the name of an upstream; defined: backend)",
        "sluice.toml:17:16: route[0].strip_prefix: expected true or false, found a string",
        "sluice.toml:18:13: route[0].websocket: expected true or false, found a date-time",
        r#"sluice.toml:19:19: route[0].allowed_origins: expected an array, found a string (a list of origins, e.g. ["https://example.com"])"#,
        r#"sluice.toml:20:15: route[0].set_headers: expected a table, found an array ({ "X-Name" = "value" })"#,
    ]);
}

#[test]
fn sections_of_the_wrong_shape() {
    let out = check(
        r#"proxy = 5
upstream = 5

[listener]
addr = "0.0.0.0:8080"

[[route]]
upstream = "backend"
"#,
    );
    assert_problems(&out, &[
        "sluice.toml:1:9: proxy: expected a table, found an integer ([proxy] with global settings)",
        "sluice.toml:2:12: upstream: expected a table, found an integer (one [upstream.NAME] table per server pool)",
        "sluice.toml:4:1: listener: expected an array of tables, found a table (write one [[listener]] block per address)",
        r#"sluice.toml:8:12: route[0].upstream: no upstream named "backend" (no [upstream.NAME] is defined)"#,
    ]);
}

// ---- missing keys ------------------------------------------------------------------------

#[test]
fn missing_required_keys_point_at_their_table() {
    let out = check(
        r#"[[listener]]
header_timeout = "5s"

[upstream.backend]
balance = "round_robin"

[[route]]
path = "/"
"#,
    );
    assert_problems(&out, &[
        r#"sluice.toml:1:1: listener[0].addr: missing (required: an IP address and a port, e.g. "0.0.0.0:8080" or "[::]:8080")"#,
        r#"sluice.toml:4:1: upstream.backend.servers: missing (required: "host:port", or a table { addr = "host:port", weight = 1, backup = false })"#,
        "sluice.toml:7:1: route[0].upstream: missing (required: the name of an upstream; defined: backend)",
    ]);
}

#[test]
fn missing_listener_and_route_sections() {
    let out = check("[upstream.backend]\nservers = [\"127.0.0.1:3000\"]\n");
    assert_problems(
        &out,
        &[
            "sluice.toml:1:1: listener: missing (required: at least one [[listener]] with an addr)",
            "sluice.toml:1:1: route: missing (required: at least one [[route]] with an upstream)",
        ],
    );
}

#[test]
fn empty_listener_and_route_lists() {
    let out =
        check("listener = []\nroute = []\n\n[upstream.backend]\nservers = [\"127.0.0.1:3000\"]\n");
    assert_problems(
        &out,
        &[
            "sluice.toml:1:12: listener: empty (write one [[listener]] block per address)",
            "sluice.toml:2:9: route: empty (write one [[route]] block per path)",
        ],
    );
}

// ---- references --------------------------------------------------------------------------

#[test]
fn route_to_an_unknown_upstream() {
    let out = check(&format!(
        "{BASE}\n[upstream.api]\nservers = [\"127.0.0.1:4000\"]\n\n[[route]]\npath = \"/websocket\"\nupstream = \"backnd\"\n"
    ));
    assert_problems(
        &out,
        &[
            r#"sluice.toml:12:12: route[0].upstream: no upstream named "backnd" (defined: api, backend)"#,
        ],
    );
}

#[test]
fn a_pool_with_problems_still_counts_as_defined() {
    // Only the pool's own problem: its route does not also get "no upstream named".
    let out = check(
        "[[listener]]\naddr = \"0.0.0.0:8080\"\n\n[upstream.backend]\nservers = []\n\n[[route]]\nupstream = \"backend\"\n",
    );
    assert_problems(
        &out,
        &[
            r#"sluice.toml:5:11: upstream.backend.servers: empty list (at least one server: "host:port", or a table { addr = "host:port", weight = 1, backup = false })"#,
        ],
    );
}

// ---- addresses ---------------------------------------------------------------------------

#[test]
fn bad_listener_admin_and_resolver_addresses() {
    let out = check(
        r#"[proxy]
resolver = "8.8.8.8"

[[listener]]
addr = "localhost:8080"

[[listener]]
addr = "0.0.0.0"

[[listener]]
addr = "[::1]:99999"

[[listener]]
addr = "::1"

[[listener]]
addr = "0.0.0.0:http"

[upstream.backend]
servers = ["127.0.0.1:3000"]

[[route]]
upstream = "backend"

[admin]
addr = "admin.local:9901"
"#,
    );
    let hint = r#"(an IP address and a port, e.g. "0.0.0.0:8080" or "[::]:8080")"#;
    assert_problems(
        &out,
        &[
            &format!(r#"sluice.toml:2:12: proxy.resolver: "8.8.8.8" has no port {hint}"#),
            &format!(
                r#"sluice.toml:5:8: listener[0].addr: "localhost:8080" names a host, not an IP address {hint}"#
            ),
            &format!(r#"sluice.toml:8:8: listener[1].addr: "0.0.0.0" has no port {hint}"#),
            &format!(
                r#"sluice.toml:11:8: listener[2].addr: "[::1]:99999" has an invalid port {hint}"#
            ),
            &format!(
                r#"sluice.toml:14:8: listener[3].addr: "::1" has no port, and IPv6 addresses go in brackets {hint}"#
            ),
            &format!(
                r#"sluice.toml:17:8: listener[4].addr: "0.0.0.0:http" has an invalid port {hint}"#
            ),
            &format!(
                r#"sluice.toml:26:8: admin.addr: "admin.local:9901" names a host, not an IP address {hint}"#
            ),
        ],
    );
}

#[test]
fn resolver_port_zero_is_refused() {
    let out = check(&format!(
        "[proxy]\nresolver = \"127.0.0.1:0\"\n\n{BASE}\n[[route]]\nupstream = \"backend\"\n"
    ));
    assert_problems(
        &out,
        &[
            r#"sluice.toml:2:12: proxy.resolver: "127.0.0.1:0" has port 0 (a port from 1 to 65535, e.g. "127.0.0.1:53")"#,
        ],
    );
}

#[test]
fn duplicate_listener_addresses() {
    // Port 0 asks for a fresh port each time, so it may repeat.
    let out = check(
        r#"[[listener]]
addr = "0.0.0.0:8080"

[[listener]]
addr = "127.0.0.1:0"

[[listener]]
addr = "0.0.0.0:8080"

[[listener]]
addr = "127.0.0.1:0"

[upstream.backend]
servers = ["127.0.0.1:3000"]

[[route]]
upstream = "backend"
"#,
    );
    assert_problems(
        &out,
        &[
            r#"sluice.toml:8:8: listener[2].addr: "0.0.0.0:8080" is already the address of listener[0] (one listener per address)"#,
        ],
    );
}

// ---- durations ---------------------------------------------------------------------------

#[test]
fn bad_durations() {
    let out = check(
        r#"[proxy]
shutdown_timeout = "5 seconds"

[[listener]]
addr = "0.0.0.0:8080"
header_timeout = "-1s"

[upstream.backend]
servers = ["127.0.0.1:3000"]
connect_timeout = 5
fail_timeout = "0s"

[[route]]
upstream = "backend"
read_timeout = "2d"
idle_timeout = "1.5h"
"#,
    );
    assert_problems(&out, &[
        &format!(r#"sluice.toml:2:20: proxy.shutdown_timeout: "5 seconds" is not a duration {DURATION_HINT}"#),
        &format!(r#"sluice.toml:6:18: listener[0].header_timeout: "-1s" is negative {DURATION_HINT}"#),
        &format!("sluice.toml:10:19: upstream.backend.connect_timeout: expected a string, found an integer {DURATION_HINT}"),
        r#"sluice.toml:11:16: upstream.backend.fail_timeout: "0s" is zero (a duration greater than zero, e.g. "5s")"#,
        r#"sluice.toml:15:16: route[0].read_timeout: "2d" has an unknown unit "d" (units: ms, s, m, h)"#,
        &format!(r#"sluice.toml:16:16: route[0].idle_timeout: "1.5h" is not a duration {DURATION_HINT}"#),
    ]);
}

// ---- ranges ------------------------------------------------------------------------------

#[test]
fn out_of_range_values() {
    let out = check(
        r#"[proxy]
max_connections = 0
max_connections_per_ip = 0

[[listener]]
addr = "0.0.0.0:8080"
max_header_bytes = 1023

[[listener]]
addr = "0.0.0.0:8081"
max_header_bytes = 1048577

[upstream.backend]
servers = [{ addr = "127.0.0.1:3000", weight = 0 }, { addr = "127.0.0.1:3001", weight = 1001 }]
max_fails = 1001
keepalive = -1

[upstream.other]
servers = ["127.0.0.1:4000"]
keepalive = 65537
max_fails = -1

[[route]]
upstream = "backend"
"#,
    );
    assert_problems(
        &out,
        &[
            "sluice.toml:2:19: proxy.max_connections: 0 is out of range (1 to 10000000)",
            "sluice.toml:3:26: proxy.max_connections_per_ip: 0 is out of range (1 to 10000000)",
            "sluice.toml:7:20: listener[0].max_header_bytes: 1023 is out of range (1024 to 1048576)",
            "sluice.toml:11:20: listener[1].max_header_bytes: 1048577 is out of range (1024 to 1048576)",
            "sluice.toml:14:48: upstream.backend.servers[0].weight: 0 is out of range (1 to 1000)",
            "sluice.toml:14:89: upstream.backend.servers[1].weight: 1001 is out of range (1 to 1000)",
            "sluice.toml:15:13: upstream.backend.max_fails: 1001 is out of range (0 to 1000)",
            "sluice.toml:16:13: upstream.backend.keepalive: -1 is out of range (0 to 65536)",
            "sluice.toml:20:13: upstream.other.keepalive: 65537 is out of range (0 to 65536)",
            "sluice.toml:21:13: upstream.other.max_fails: -1 is out of range (0 to 1000)",
        ],
    );
}

// ---- CIDRs, hosts, paths, origins --------------------------------------------------------

#[test]
fn bad_cidrs() {
    let out = check(&format!(
        "[proxy]\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.0/33\", \"::1/129\", \"example.com\", \"192.168.1.1\", 10]\n\n{BASE}\n[[route]]\nupstream = \"backend\"\n"
    ));
    let hint = r#"(a network such as "10.0.0.0/8" or "::1/128", or a single IP address)"#;
    assert_problems(&out, &[
        &format!(r#"sluice.toml:2:34: proxy.trusted_proxies[1]: "10.0.0.0/33" is not a CIDR {hint}"#),
        &format!(r#"sluice.toml:2:49: proxy.trusted_proxies[2]: "::1/129" is not a CIDR {hint}"#),
        &format!(r#"sluice.toml:2:60: proxy.trusted_proxies[3]: "example.com" is not a CIDR {hint}"#),
        &format!("sluice.toml:2:90: proxy.trusted_proxies[5]: expected a string, found an integer {hint}"),
    ]);
}

#[test]
fn bad_route_hosts() {
    let routes: String = [
        "example.com:8080",
        "*example.com",
        "a.*.example.com",
        "*",
        "bad host",
        "*.-bad.com",
    ]
    .iter()
    .map(|h| format!("\n[[route]]\nhost = \"{h}\"\nupstream = \"backend\"\n"))
    .collect();
    let out = check(&format!("{BASE}{routes}"));
    let hint = r#"(a host name such as "example.com" or "*.example.com", without a port)"#;
    assert_problems(
        &out,
        &[
            &format!(
                r#"sluice.toml:8:8: route[0].host: "example.com:8080" has a port, which is ignored when matching {hint}"#
            ),
            &format!(
                r#"sluice.toml:12:8: route[1].host: "*example.com" has a wildcard other than a leading "*." {hint}"#
            ),
            &format!(
                r#"sluice.toml:16:8: route[2].host: "a.*.example.com" has a wildcard other than a leading "*." {hint}"#
            ),
            &format!(
                r#"sluice.toml:20:8: route[3].host: "*" has a wildcard other than a leading "*." {hint}"#
            ),
            &format!(r#"sluice.toml:24:8: route[4].host: "bad host" is not a host name {hint}"#),
            &format!(
                r#"sluice.toml:28:8: route[5].host: "*.-bad.com" is not a wildcard host name {hint}"#
            ),
        ],
    );
}

#[test]
fn bad_paths_origins_and_host_header() {
    let out = check(&format!(
        r#"{BASE}
[[route]]
path = "websocket"
upstream = "backend"
allowed_origins = ["https://example.com/", "example.com", ""]
host_header = ""

[[route]]
path = "/a?b"
upstream = "backend"
allowed_origins = []
"#
    ));
    let origin = r#"(scheme://host[:port] as browsers send it, e.g. "https://example.com")"#;
    assert_problems(
        &out,
        &[
            r#"sluice.toml:8:8: route[0].path: "websocket" is not a path prefix (a path prefix starting with "/", e.g. "/websocket", without query or fragment)"#,
            &format!(
                r#"sluice.toml:10:20: route[0].allowed_origins[0]: "https://example.com/" has a path or a trailing "/" {origin}"#
            ),
            &format!(
                r#"sluice.toml:10:44: route[0].allowed_origins[1]: "example.com" has no scheme {origin}"#
            ),
            &format!(
                r#"sluice.toml:10:59: route[0].allowed_origins[2]: "" has no scheme {origin}"#
            ),
            r#"sluice.toml:11:15: route[0].host_header: "" is not a valid Host header value ("preserve", "upstream", or a Host value such as "app.internal")"#,
            r#"sluice.toml:14:8: route[1].path: "/a?b" is not a path prefix (a path prefix starting with "/", e.g. "/websocket", without query or fragment)"#,
            r#"sluice.toml:16:19: route[1].allowed_origins: empty list (a list of origins, e.g. ["https://example.com"]; remove the key to allow any origin)"#,
        ],
    );
}

#[test]
fn duplicate_routes() {
    let out = check(&format!(
        "{BASE}\n[[route]]\nupstream = \"backend\"\n\n[[route]]\nupstream = \"backend\"\n\n[[route]]\nhost = \"example.com\"\npath = \"/ws/\"\nupstream = \"backend\"\n\n[[route]]\nhost = \"EXAMPLE.com\"\npath = \"/ws\"\nupstream = \"backend\"\n"
    ));
    assert_problems(&out, &[
        "sluice.toml:10:1: route[1]: same host and path as route[0] (each route needs its own host or path)",
        "sluice.toml:20:8: route[3].path: same host and path as route[2] (each route needs its own host or path)",
    ]);
}

// ---- headers -----------------------------------------------------------------------------

#[test]
fn bad_set_headers() {
    let out = check(&format!(
        r#"{BASE}
[[route]]
upstream = "backend"

[route.set_headers]
"X Bad" = "v"
"X-Ok" = "line\nbreak"
Connection = "close"
Upgrade = "websocket"
Keep-Alive = "timeout=5"
Host = "example.com"
Content-Length = "0"
X-Num = 5
x-from = "a"
X-From = "b"
"#
    ));
    let hop = "which sluice removes and sets itself (end-to-end headers only; not Connection, Keep-Alive, Proxy-Connection, TE, Trailer, Transfer-Encoding or Upgrade)";
    assert_problems(&out, &[
        r#"sluice.toml:11:1: route[0].set_headers."X Bad": "X Bad" is not a valid header name (letters, digits and !#$%&'*+-.^_`|~, e.g. "X-Request-Source")"#,
        r#"sluice.toml:12:10: route[0].set_headers.X-Ok: "line\nbreak" is not a valid header value (visible ASCII text, spaces and tabs; no line breaks)"#,
        &format!("sluice.toml:13:1: route[0].set_headers.Connection: Connection is a hop-by-hop header, {hop}"),
        &format!("sluice.toml:14:1: route[0].set_headers.Upgrade: Upgrade is a hop-by-hop header, {hop}"),
        &format!("sluice.toml:15:1: route[0].set_headers.Keep-Alive: Keep-Alive is a hop-by-hop header, {hop}"),
        r#"sluice.toml:16:1: route[0].set_headers.Host: Host is set by host_header (use host_header = "..." on this route)"#,
        "sluice.toml:17:1: route[0].set_headers.Content-Length: Content-Length frames the body, which sluice does itself (any other end-to-end header)",
        "sluice.toml:18:9: route[0].set_headers.X-Num: expected a string, found an integer (visible ASCII text, spaces and tabs; no line breaks)",
        "sluice.toml:20:1: route[0].set_headers.X-From: X-From is set twice (header names ignore case; set it once)",
    ]);
}

// ---- servers entries ---------------------------------------------------------------------

#[test]
fn bad_server_strings() {
    let out = check(
        r#"[[listener]]
addr = "0.0.0.0:8080"

[upstream.a]
servers = ["127.0.0.1", "127.0.0.1:0", "localhost:65536", "http://10.0.0.1:80", "[::1]:3000", "::1:3000", "300.1.1.1:80", "bad_host-:80", ""]

[[route]]
upstream = "a"
"#,
    );
    let hint = r#"("host:port", e.g. "127.0.0.1:3000", "[::1]:3000" or "app.internal:3000")"#;
    assert_problems(
        &out,
        &[
            &format!(r#"sluice.toml:5:12: upstream.a.servers[0]: "127.0.0.1" has no port {hint}"#),
            r#"sluice.toml:5:25: upstream.a.servers[1]: "127.0.0.1:0" has an invalid port (a port from 1 to 65535)"#,
            r#"sluice.toml:5:40: upstream.a.servers[2]: "localhost:65536" has an invalid port (a port from 1 to 65535)"#,
            &format!(
                r#"sluice.toml:5:59: upstream.a.servers[3]: "http://10.0.0.1:80" has a scheme, which does not belong here {hint}"#
            ),
            &format!(
                r#"sluice.toml:5:95: upstream.a.servers[5]: "::1:3000" has no port, and IPv6 addresses go in brackets {hint}"#
            ),
            &format!(
                r#"sluice.toml:5:107: upstream.a.servers[6]: "300.1.1.1:80" has an invalid IPv4 address {hint}"#
            ),
            &format!(
                r#"sluice.toml:5:123: upstream.a.servers[7]: "bad_host-:80" has an invalid host name {hint}"#
            ),
            &format!(r#"sluice.toml:5:139: upstream.a.servers[8]: "" is empty {hint}"#),
        ],
    );
}

#[test]
fn bad_server_tables_and_types() {
    let out = check(
        r#"[[listener]]
addr = "0.0.0.0:8080"

[upstream.b]
servers = [{ adr = "10.0.0.1:80" }, { addr = 80 }, { addr = "10.0.0.1:80", backup = "yes" }, 80, ["10.0.0.1:80"]]

[upstream.d]
servers = ["10.0.0.1:80", { addr = "10.0.0.1:80", weight = 2 }, "APP:1", "app:1"]

[[route]]
upstream = "b"
"#,
    );
    let both = r#"("host:port", or a table { addr = "host:port", weight = 1, backup = false })"#;
    assert_problems(&out, &[
        r#"sluice.toml:5:12: upstream.b.servers[0].addr: missing (required: "host:port")"#,
        "sluice.toml:5:14: upstream.b.servers[0].adr: unknown key (allowed: addr, weight, backup, drain)",
        r#"sluice.toml:5:46: upstream.b.servers[1].addr: expected a string, found an integer ("host:port", e.g. "127.0.0.1:3000" or "app.internal:3000")"#,
        "sluice.toml:5:85: upstream.b.servers[2].backup: expected true or false, found a string",
        &format!("sluice.toml:5:94: upstream.b.servers[3]: expected a string or a table, found an integer {both}"),
        &format!("sluice.toml:5:98: upstream.b.servers[4]: expected a string or a table, found an array {both}"),
        r#"sluice.toml:8:36: upstream.d.servers[1].addr: "10.0.0.1:80" is already listed as upstream.d.servers[0] (list a server once; give it a weight for more traffic)"#,
        r#"sluice.toml:8:74: upstream.d.servers[3]: "app:1" is already listed as upstream.d.servers[2] (list a server once; give it a weight for more traffic)"#,
    ]);
}

#[test]
fn servers_as_array_of_tables() {
    let out = check(
        r#"[[listener]]
addr = "0.0.0.0:8080"

[[upstream.backend.servers]]
addr = "10.0.0.1:80"
weight = 5

[[upstream.backend.servers]]
addr = "10.0.0.2:80"
backup = true

[[route]]
upstream = "backend"
"#,
    );
    assert_ok(
        &out,
        &[
            "ok: 1 listener, 1 route, 1 upstream (2 servers)",
            "listener 0.0.0.0:8080",
            "route / -> backend",
            "upstream backend: round_robin, 10.0.0.1:80 weight=5, 10.0.0.2:80 backup",
        ],
    );
}

// ---- TOML syntax -------------------------------------------------------------------------

#[test]
fn toml_syntax_error_is_one_problem_with_its_place() {
    let out = check(&format!("{BASE}\n[[route]]\nupstream = backend\n"));
    assert_problems(
        &out,
        &["sluice.toml:8:12: invalid TOML: invalid string; expected `\"`, `'`"],
    );
}

#[test]
fn duplicate_toml_key_is_a_syntax_error() {
    let out = check(&format!("{BASE}servers = [\"127.0.0.1:3001\"]\n"));
    assert_problems(
        &out,
        &["sluice.toml:6:1: invalid TOML: duplicate key `servers` in table `upstream.backend`"],
    );
}

// ---- several problems at once ------------------------------------------------------------

#[test]
fn every_problem_is_reported_in_file_order() {
    let out = check(
        r#"[[route]]
path = "/websocket"
upstream = "backnd"
idle_timeout = 60

[upstream.backend]
servers = ["127.0.0.1:3000", { addr = "127.0.0.1:3001", weight = 0 }]
max_fails = "3"

[[listener]]
adress = "0.0.0.0:8080"

[proxy]
shutdown_timeout = "30 s"
"#,
    );
    assert_problems(&out, &[
        r#"sluice.toml:3:12: route[0].upstream: no upstream named "backnd" (defined: backend)"#,
        &format!("sluice.toml:4:16: route[0].idle_timeout: expected a string, found an integer {DURATION_HINT}"),
        "sluice.toml:7:66: upstream.backend.servers[1].weight: 0 is out of range (1 to 1000)",
        "sluice.toml:8:13: upstream.backend.max_fails: expected an integer, found a string (0 to 1000)",
        r#"sluice.toml:10:1: listener[0].addr: missing (required: an IP address and a port, e.g. "0.0.0.0:8080" or "[::]:8080")"#,
        "sluice.toml:11:1: listener[0].adress: unknown key (allowed: addr, tls, header_timeout, max_header_bytes, body_timeout, send_timeout)",
        &format!(r#"sluice.toml:14:20: proxy.shutdown_timeout: "30 s" is not a duration {DURATION_HINT}"#),
    ]);
}

// ---- unreadable files --------------------------------------------------------------------

#[test]
fn missing_file() {
    let dir = TempDir::new();
    let out = sluice(&dir.0, &["check", "-c", "nope.toml"]);
    assert_problems(
        &out,
        &["nope.toml: cannot read the config file: No such file or directory (os error 2)"],
    );
}

#[test]
fn directory_instead_of_a_file() {
    let dir = TempDir::new();
    std::fs::create_dir(dir.0.join("conf.d")).expect("mkdir");
    let out = sluice(&dir.0, &["check", "-c", "conf.d"]);
    assert_problems(
        &out,
        &["conf.d: cannot read the config file: Is a directory (os error 21)"],
    );
}

#[test]
fn file_that_is_not_utf8() {
    let dir = TempDir::new();
    std::fs::write(dir.0.join("sluice.toml"), b"a = \"\xff\"\n").expect("write");
    let out = sluice(&dir.0, &["check", "-c", "sluice.toml"]);
    assert_problems(
        &out,
        &["sluice.toml: cannot read the config file: stream did not contain valid UTF-8"],
    );
}

// ---- keys once refused as not supported yet -------------------------------------------------

#[test]
fn keys_once_refused_as_not_supported_yet_are_all_accepted_now() {
    let out = check(
        r#"[proxy]
resolver = "127.0.0.53:53"

[[listener]]
addr = "0.0.0.0:8443"
# tls is supported now (tests/tls.rs)

[[listener]]
addr = "0.0.0.0:8444"
# so is a list of certificates

[upstream.a]
servers = ["127.0.0.1:3000"]
balance = "least_conn"
hash_key = "cookie:sid"
health_check = { path = "/healthz", interval = "5s", timeout = "2s", healthy = 2, unhealthy = 3 }
# and upstream tls
resolve_interval = "30s"

[upstream.b]
servers = ["127.0.0.1:3001", { addr = "127.0.0.1:3002", drain = true }]
balance = "hash"
tls = true
drain_timeout = "2m"

[[route]]
upstream = "a"
ping_interval = "30s"
max_message_bytes = 1048576

[admin]
addr = "127.0.0.1:9901"
"#,
    );
    assert_problems(
        &out,
        &[
            r#"sluice.toml:15:12: upstream.a.hash_key: only used with balance = "hash" (set balance = "hash", or remove it)"#,
        ],
    );
}

#[test]
fn keys_once_refused_are_checked_for_form() {
    let out = check(
        r#"[proxy]
resolver = "localhost:53"

[[listener]]
addr = "0.0.0.0:8443"
tls = [{ cert = "fullchain.pem" }]

[upstream.a]
servers = ["127.0.0.1:3000"]
balance = "random"
hash_key = "header:"
health_check = { path = "healthz", interval = "0s", healthy = 0, timeout = 2, rise = 1 }
tls = { ca = "", server_name = "-x" }
resolve_interval = "30"

[[route]]
upstream = "a"

[admin]
port = 9901
"#,
    );
    assert_problems(&out, &[
        r#"sluice.toml:2:12: proxy.resolver: "localhost:53" names a host, not an IP address (an IP address and a port, e.g. "0.0.0.0:8080" or "[::]:8080")"#,
        "sluice.toml:6:8: listener[0].tls[0].key: missing (required: a PEM private key file)",
        r#"sluice.toml:10:11: upstream.a.balance: "random" is not a balance method ("round_robin", "least_conn" or "hash")"#,
        r#"sluice.toml:11:12: upstream.a.hash_key: "header:" has an invalid header name ("ip", "path", "header:NAME" or "cookie:NAME")"#,
        r#"sluice.toml:12:25: upstream.a.health_check.path: "healthz" is not a path (a request path starting with "/", e.g. "/healthz")"#,
        r#"sluice.toml:12:47: upstream.a.health_check.interval: "0s" is zero (a duration greater than zero, e.g. "5s")"#,
        "sluice.toml:12:63: upstream.a.health_check.healthy: 0 is out of range (1 to 1000)",
        &format!("sluice.toml:12:76: upstream.a.health_check.timeout: expected a string, found an integer {DURATION_HINT}"),
        "sluice.toml:12:79: upstream.a.health_check.rise: unknown key (allowed: path, interval, timeout, healthy, unhealthy)",
        "sluice.toml:13:14: upstream.a.tls.ca: empty path (a PEM CA bundle file)",
        r#"sluice.toml:13:32: upstream.a.tls.server_name: "-x" is not a DNS name (a DNS name, e.g. "internal.example")"#,
        &format!(r#"sluice.toml:14:20: upstream.a.resolve_interval: "30" has no unit {DURATION_HINT}"#),
        r#"sluice.toml:19:1: admin.addr: missing (required: an IP address and a port, e.g. "0.0.0.0:8080" or "[::]:8080")"#,
        "sluice.toml:20:1: admin.port: unknown key (allowed: addr)",
    ]);
}

// ---- run -------------------------------------------------------------------------------

#[test]
fn run_with_a_bad_file_exits_1_with_the_same_problems() {
    let dir = TempDir::new();
    std::fs::write(
        dir.0.join("sluice.toml"),
        "[[listener]]\nadress = \"0.0.0.0:8080\"\n\n[[route]]\nupstream = \"backnd\"\n",
    )
    .expect("write config");
    let checked = sluice(&dir.0, &["check", "-c", "sluice.toml"]);
    let problems = [
        r#"sluice.toml:1:1: listener[0].addr: missing (required: an IP address and a port, e.g. "0.0.0.0:8080" or "[::]:8080")"#,
        "sluice.toml:2:1: listener[0].adress: unknown key (allowed: addr, tls, header_timeout, max_header_bytes, body_timeout, send_timeout)",
        r#"sluice.toml:5:12: route[0].upstream: no upstream named "backnd" (no [upstream.NAME] is defined)"#,
    ];
    assert_problems(&checked, &problems);
    let ran = sluice(&dir.0, &["run", "-c", "sluice.toml"]);
    assert_problems(&ran, &problems);
}

#[test]
fn hash_with_a_key_is_accepted() {
    let out = check(
        r#"[[listener]]
addr = "0.0.0.0:8080"

[upstream.chat]
servers = ["127.0.0.1:3000", "127.0.0.1:3001"]
balance = "hash"
hash_key = "cookie:sid"

[[route]]
upstream = "chat"
"#,
    );
    assert_ok(
        &out,
        &[
            "ok: 1 listener, 1 route, 1 upstream (2 servers)",
            "listener 0.0.0.0:8080",
            "route / -> chat",
            "upstream chat: hash, 127.0.0.1:3000, 127.0.0.1:3001",
        ],
    );
}

#[test]
fn least_conn_is_accepted() {
    let out = check(
        r#"[[listener]]
addr = "0.0.0.0:8080"

[upstream.chat]
servers = ["127.0.0.1:3000", "127.0.0.1:3001"]
balance = "least_conn"

[[route]]
path = "/ws"
upstream = "chat"
"#,
    );
    assert_ok(
        &out,
        &[
            "ok: 1 listener, 1 route, 1 upstream (2 servers)",
            "listener 0.0.0.0:8080",
            "route /ws -> chat",
            "upstream chat: least_conn, 127.0.0.1:3000, 127.0.0.1:3001",
        ],
    );
}
