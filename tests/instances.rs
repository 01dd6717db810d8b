//! Instances that agree, tested across real network boundaries (README "Upstreams that
//! move" and "Running several instances"): two `sluice` processes, each alone in a network
//! namespace, reach their backends and their DNS server over veth pairs.
//!
//! Needs root and `ip netns` (iproute2). Without them it prints `skipped: <reason>` and
//! passes, except with `CI=true`, where that is a failure (CI runs as root and must run it).
//!
//! Topology. `N` picks a /24 in `10.213.0.0/16` that no interface or route of the host uses
//! (from the PID, claimed with a lock file in the temp dir); namespace and veth names carry
//! the PID, so runs never meet:
//!
//! ```text
//!  root namespace (this test process)                 namespace sluicetest-PID-inst1
//!   sltPIDr1 10.213.N.1/30 ──────── veth ──────── sltPIDn1 10.213.N.2/30  sluice on :8080
//!     + 10.213.N.11..14/32: HTTP backends b1..b4 (one port, answering their name)
//!     + WebSocket echo backend on 10.213.N.1
//!                                                     namespace sluicetest-PID-inst2
//!   sltPIDr2 10.213.N.5/30 ──────── veth ──────── sltPIDn2 10.213.N.6/30  sluice on :8080
//!     + DNS server for b.test on 10.213.N.5 (a UDP relay to tests/support/dns.rs)
//! ```
//!
//! Each instance namespace has `lo`, its veth end and a route to `10.213.N.0/24` through the
//! root end, nothing else; both instances run the very same config file (listener
//! `0.0.0.0:8080`, `[proxy] resolver` on 10.213.N.5, `resolve_interval = "200ms"`). The host's
//! own interfaces and routes are not touched. [`Net`] deletes the namespaces and veths and
//! kills the sluice processes (by PID) on every exit path; a run killed outright leaves
//! namespaces, veths and a lock file that the next run deletes, and its sluice processes die
//! with it (`PR_SET_PDEATHSIG`).
//!
//! The scenario (`instances_agree_across_network_namespaces`):
//! 1. `balance = "hash"`, `hash_key = "header:X-Key"` over `b.test` (three addresses): keys
//!    `k0`..`k999` through each instance reach the same backend from both, spread over all
//!    three; every backend saw only the two instances' namespace addresses as peers.
//! 2. `b.test` moves (b2's address is replaced by b4's): both instances follow, agree again
//!    on every key, and only b2's keys and the keys b4 takes over changed backend.
//! 3. Rolling restart: 20 tunnels open through instance 2; instance 1 gets SIGTERM, stops
//!    accepting, lets its own tunnel run while draining, exits 0, and starts again; once it
//!    serves (and agrees with instance 2), every one of instance 2's 20 tunnels still echoes.
//!    Then the tunnels are closed from both ends and both instances exit 0 on SIGTERM
//!    without waiting out `shutdown_timeout` (nothing left open).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::dns::DnsServer;
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_tungstenite::tungstenite::Message;

/// Keys sent through each instance.
const KEYS: usize = 1000;
/// Tunnels held open through instance 2 across instance 1's restart.
const TUNNELS: usize = 20;
/// sluice's port inside each instance namespace.
const PORT: u16 = 8080;
/// The host name of the hashed pool.
const NAME: &str = "b.test";
const BACKENDS: [&str; 4] = ["b1", "b2", "b3", "b4"];
/// Both instances' `shutdown_timeout`: how long instance 1 drains its own tunnel.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

#[tokio::test(flavor = "multi_thread")]
async fn instances_agree_across_network_namespaces() {
    if let Some(reason) = missing_requirement() {
        return skip_or_fail(&reason);
    }
    let mut net = match Net::create() {
        Ok(net) => net,
        Err(e) => return skip_or_fail(&format!("cannot build the network namespaces: {e}")),
    };

    // Backends, DNS and the config both instances share.
    let backends = Backends::start(net.backend_ips()).await;
    let (dns, resolver) = dns_on(net.root_ip(2)).await;
    dns.set(NAME, &net.backend_ips()[..3]);
    let echo_backend = ws_echo_at(net.root_ip(1)).await;
    let config = temp_config(
        "instances",
        &format!(
            r#"
[proxy]
resolver = "{resolver}"
shutdown_timeout = "{shutdown}s"

[[listener]]
addr = "0.0.0.0:{PORT}"

[upstream.keys]
servers = ["{NAME}:{port}"]
balance = "hash"
hash_key = "header:X-Key"
resolve_interval = "200ms"
connect_timeout = "2s"

[upstream.echo]
servers = ["{echo_backend}"]

[[route]]
path = "/ws"
upstream = "echo"

[[route]]
upstream = "keys"
"#,
            port = backends.port,
            shutdown = SHUTDOWN_TIMEOUT.as_secs()
        ),
    );
    net.start(0, &config).await;
    net.start(1, &config).await;
    let (a1, a2) = (net.instance_addr(0), net.instance_addr(1));
    for addr in [a1, a2] {
        eventually(WAIT, "both instances answer from b.test's backends", || {
            answers(addr, "k0")
        })
        .await;
    }

    // 1. Both instances send every key to the same backend, and use all three.
    let keys: Vec<String> = (0..KEYS).map(|i| format!("k{i}")).collect();
    let before = route_keys(a1, &keys).await;
    assert_agree(
        &keys,
        &before,
        &route_keys(a2, &keys).await,
        "before the move",
    );
    let spread = tally(&before);
    for name in &BACKENDS[..3] {
        let n = spread.get(name).copied().unwrap_or(0);
        assert!(
            n >= KEYS / 10,
            "the hash sends {n} of {KEYS} keys to {name}: {spread:?}"
        );
    }
    assert!(
        !spread.contains_key("b4"),
        "b4 is not in DNS yet: {spread:?}"
    );
    let peers = backends.peers();
    let expected: BTreeSet<IpAddr> = [net.ns_ip(1).into(), net.ns_ip(2).into()].into();
    for name in &BACKENDS[..3] {
        assert_eq!(
            peers.get(name),
            Some(&expected),
            "{name} should be reached from both instance namespaces, over their veths"
        );
    }

    // 2. The name moves: b2's address is replaced by b4's. Both instances follow.
    let ips = net.backend_ips();
    dns.set(NAME, &[ips[0], ips[3], ips[2]]);
    let sample = &keys[..200];
    eventually(
        WAIT,
        "both instances follow b.test: b4 gets keys, b2 none",
        || async move {
            for addr in [a1, a2] {
                let got = route_keys(addr, sample).await;
                if got.iter().any(|b| b == "b2") || !got.iter().any(|b| b == "b4") {
                    return false;
                }
            }
            true
        },
    )
    .await;
    let b2_seen = backends.count("b2");
    let after = route_keys(a1, &keys).await;
    assert_agree(
        &keys,
        &after,
        &route_keys(a2, &keys).await,
        "after the move",
    );
    assert_eq!(
        backends.count("b2"),
        b2_seen,
        "b2 left DNS but still gets requests"
    );
    let spread = tally(&after);
    assert!(!spread.contains_key("b2"), "b2 left DNS: {spread:?}");
    for name in ["b1", "b3", "b4"] {
        assert!(
            spread.get(name).copied().unwrap_or(0) >= KEYS / 10,
            "after the move the hash sends too few keys to {name}: {spread:?}"
        );
    }
    // Consistent hashing: only b2's keys, and the keys b4 takes over, change backend.
    let moved: Vec<String> = keys
        .iter()
        .zip(before.iter().zip(&after))
        .filter(|(_, (old, new))| old != new && *old != "b2" && *new != "b4")
        .map(|(key, (old, new))| format!("{key}: {old} -> {new}"))
        .collect();
    assert!(
        moved.is_empty(),
        "keys moved between servers that stayed: {moved:?}"
    );
    assert_eq!(
        backends.peers().get("b4"),
        Some(&expected),
        "b4 should be reached from both instance namespaces"
    );

    // 3. A rolling restart of instance 1 loses no tunnel on instance 2.
    let mut tunnels = Vec::with_capacity(TUNNELS);
    for i in 0..TUNNELS {
        let (ws, _) = ws_connect(&format!("ws://{a2}/ws"), &[])
            .await
            .unwrap_or_else(|e| panic!("tunnel {i} through instance 2: {e}"));
        tunnels.push(ws);
    }
    echo_all(&mut tunnels, "before the restart").await;
    let (mut draining, _) = ws_connect(&format!("ws://{a1}/ws"), &[])
        .await
        .expect("a tunnel through instance 1");
    echo(&mut draining, "before SIGTERM").await;

    net.instance(0).signal(libc::SIGTERM);
    eventually(
        WAIT,
        "instance 1 stops accepting on SIGTERM",
        || async move { TcpStream::connect(a1).await.is_err() },
    )
    .await;
    echo(&mut draining, "instance 1's tunnel while it drains").await;
    echo_all(&mut tunnels, "while instance 1 drains").await;
    assert_eq!(
        route_keys(a2, sample).await,
        after[..sample.len()],
        "instance 2 while instance 1 drains"
    );
    let (code, log) = net.stop(0).await;
    assert_eq!(code, Some(0), "instance 1 after SIGTERM:\n{log}");
    let last = within(WAIT, draining.next()).await;
    assert!(
        !matches!(last, Some(Ok(Message::Text(_) | Message::Binary(_)))),
        "instance 1's tunnel should be closed when it exits, got {last:?}"
    );

    net.start(0, &config).await;
    eventually(WAIT, "the restarted instance 1 serves", || {
        answers(a1, "k0")
    })
    .await;
    assert_agree(
        &keys,
        &route_keys(a1, &keys).await,
        &after,
        "restarted instance 1 vs instance 2",
    );
    echo_all(&mut tunnels, "after instance 1 restarted").await;
    assert_eq!(
        echo_backend.handshakes(),
        TUNNELS + 1,
        "the echo backend saw a handshake per tunnel, no reconnection"
    );

    // Both leave cleanly. Each tunnel is closed from both ends first (the client's Close,
    // the backend's answer and end of stream, the client's end of stream, each passed on),
    // so instance 2 has nothing left to drain and exits well before `shutdown_timeout`.
    for mut ws in tunnels {
        within(WAIT, ws.close(None)).await.expect("close a tunnel");
        within(WAIT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    }
    let signalled = tokio::time::Instant::now();
    for i in 0..2 {
        net.instance(i).signal(libc::SIGTERM);
    }
    for i in 0..2 {
        let (code, log) = net.stop(i).await;
        assert_eq!(code, Some(0), "instance {} after SIGTERM:\n{log}", i + 1);
    }
    assert!(
        signalled.elapsed() < SHUTDOWN_TIMEOUT,
        "closed tunnels should leave nothing to drain, but the instances took {:?}",
        signalled.elapsed()
    );
}

// ---------------------------------------------------------------------------------------
// Requirements.

/// Why this test cannot run here, if it cannot.
fn missing_requirement() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (creating network namespaces and veths needs root)".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "`ip -V` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("`ip` (iproute2) is not available: {e}")),
    }
}

/// Prints `skipped: <reason>`, or fails when `CI=true` (CI must run this test).
fn skip_or_fail(reason: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true, so this test must run, but: {reason}");
    }
    println!("skipped: {reason}");
}

// ---------------------------------------------------------------------------------------
// The topology, and the guard that tears it down.

/// Runs `ip ARGS…`; its stdout, or what went wrong.
fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `pid` is a running test binary of this file (cargo names it `instances-HASH`);
/// a zombie (killed, not yet reaped) is not running.
fn is_this_test(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "PID (COMM) STATE …": COMM may hold spaces and parentheses, STATE follows the last ')'.
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return false;
    };
    let comm = &stat[open + 1..close];
    let state = stat[close + 1..].trim_start().chars().next();
    comm.starts_with("instances") && !matches!(state, Some('Z' | 'X') | None)
}

const NS_PREFIX: &str = "sluicetest-";
const LINK_PREFIX: &str = "slt";
const LOCK_PREFIX: &str = "sluice-instances-";

/// The PID written in a lock file of [`claim_block`].
fn lock_holder(lock: &Path) -> Option<u32> {
    std::fs::read_to_string(lock).ok()?.trim().parse().ok()
}

/// The namespaces, veths and sluice processes of one run. Dropping it (on success, on a
/// failed assertion, on an early return) kills the processes it started, by PID, and
/// deletes the veths and namespaces it created.
struct Net {
    pid: u32,
    /// The third octet of this run's `10.213.N.0/24`.
    block: u8,
    lock: Option<PathBuf>,
    namespaces: Vec<String>,
    /// Root-side veth ends (deleting one deletes its pair).
    links: Vec<String>,
    instances: [Option<Instance>; 2],
}

impl Net {
    /// Builds the topology in the module docs. On error, what was built is torn down.
    fn create() -> Result<Net, String> {
        clean_stale();
        let pid = std::process::id();
        let mut net = Net {
            pid,
            block: 0,
            lock: None,
            namespaces: Vec::new(),
            links: Vec::new(),
            instances: [None, None],
        };
        let (block, lock) = claim_block(pid)?;
        net.block = block;
        net.lock = Some(lock);
        let subnet = format!("10.213.{block}.0/24");
        for i in 1..=2u8 {
            let ns = net.namespace(i);
            ip(&["netns", "add", &ns])?;
            net.namespaces.push(ns.clone());
            let root_end = format!("{LINK_PREFIX}{pid}r{i}");
            let ns_end = format!("{LINK_PREFIX}{pid}n{i}");
            ip(&[
                "link", "add", &root_end, "type", "veth", "peer", "name", &ns_end,
            ])?;
            net.links.push(root_end.clone());
            ip(&["link", "set", &ns_end, "netns", &ns])?;
            let root_ip = net.root_ip(i).to_string();
            ip(&["addr", "add", &format!("{root_ip}/30"), "dev", &root_end])?;
            ip(&["link", "set", &root_end, "up"])?;
            let ns_ip = format!("{}/30", net.ns_ip(i));
            ip(&["-n", &ns, "addr", "add", &ns_ip, "dev", &ns_end])?;
            ip(&["-n", &ns, "link", "set", &ns_end, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns, "route", "add", &subnet, "via", &root_ip])?;
        }
        for backend in net.backend_ips() {
            let root_end = &net.links[0];
            ip(&["addr", "add", &format!("{backend}/32"), "dev", root_end])?;
        }
        Ok(net)
    }

    fn namespace(&self, i: u8) -> String {
        format!("{NS_PREFIX}{}-inst{i}", self.pid)
    }

    /// The root-side address of instance `i`'s veth (1 or 2).
    fn root_ip(&self, i: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.block, 4 * i - 3)
    }

    /// Instance `i`'s own address (1 or 2), on its veth end.
    fn ns_ip(&self, i: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.block, 4 * i - 2)
    }

    /// The addresses of b1..b4, on the root side.
    fn backend_ips(&self) -> [Ipv4Addr; 4] {
        [11, 12, 13, 14].map(|d| Ipv4Addr::new(10, 213, self.block, d))
    }

    /// Where instance `index` (0 or 1) listens, as the test process reaches it.
    fn instance_addr(&self, index: usize) -> SocketAddr {
        SocketAddr::new(self.ns_ip(index as u8 + 1).into(), PORT)
    }

    /// Starts instance `index` (0 or 1) in its namespace and waits until it listens.
    async fn start(&mut self, index: usize, config: &Path) {
        assert!(self.instances[index].is_none(), "instance already running");
        let ns = self.namespace(index as u8 + 1);
        let addr = self.instance_addr(index);
        let instance = self.instances[index].insert(Instance::start(&ns, config));
        instance.wait_listening(addr).await;
    }

    fn instance(&mut self, index: usize) -> &mut Instance {
        self.instances[index]
            .as_mut()
            .expect("instance not running")
    }

    /// Waits for instance `index` to exit (after a signal); its exit code and output.
    async fn stop(&mut self, index: usize) -> (Option<i32>, String) {
        let instance = self.instances[index].take().expect("instance not running");
        instance.wait_exit(WAIT).await
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        for (i, instance) in self.instances.iter_mut().enumerate() {
            if let Some(instance) = instance {
                instance.kill();
                if panicking {
                    eprintln!(
                        "--- instance {} ({}) output ---\n{}",
                        i + 1,
                        instance.cmd,
                        instance.output()
                    );
                }
            }
        }
        for link in &self.links {
            if let Err(e) = ip(&["link", "del", link]) {
                eprintln!("teardown: {e}");
            }
        }
        for ns in &self.namespaces {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("teardown: {e}");
            }
        }
        if let Some(lock) = &self.lock {
            let _ = std::fs::remove_file(lock);
        }
    }
}

/// Deletes the namespaces, root-side veths and lock files left by runs of this test that
/// were killed before their [`Net`] could (their test process is gone).
fn clean_stale() {
    let stale = |name: &str, prefix: &str, end: char| {
        name.strip_prefix(prefix)
            .and_then(|rest| rest.split(end).next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| pid != std::process::id() && !is_this_test(pid))
    };
    if let Ok(list) = ip(&["netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if stale(name, NS_PREFIX, '-') {
                let _ = ip(&["netns", "del", name]);
            }
        }
    }
    if let Ok(list) = ip(&["-o", "link", "show"]) {
        for line in list.lines() {
            let Some(name) = line.split(": ").nth(1).and_then(|n| n.split('@').next()) else {
                continue;
            };
            if stale(name, LINK_PREFIX, 'r') && name.ends_with(['1', '2']) {
                let _ = ip(&["link", "del", name]);
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) {
        for path in dir.flatten().map(|e| e.path()) {
            let ours = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(LOCK_PREFIX) && n.ends_with(".lock"));
            if ours && lock_holder(&path).is_some_and(|pid| !is_this_test(pid)) {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

/// A `10.213.N.0/24` no address or route of the host mentions, held with a lock file so
/// concurrent runs pick different ones (a lock whose test process is gone is taken over).
fn claim_block(pid: u32) -> Result<(u8, PathBuf), String> {
    let taken = ip(&["-4", "-o", "addr", "show"])? + &ip(&["-4", "route", "show", "table", "all"])?;
    for step in 0..256u32 {
        let block = ((pid + step) % 256) as u8;
        if taken.contains(&format!("10.213.{block}.")) {
            continue;
        }
        let lock = std::env::temp_dir().join(format!("{LOCK_PREFIX}10.213.{block}.lock"));
        for _ in 0..2 {
            match OpenOptions::new().write(true).create_new(true).open(&lock) {
                Ok(mut file) => {
                    let _ = write!(file, "{pid}");
                    return Ok((block, lock));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if lock_holder(&lock).is_some_and(|p| !is_this_test(p)) {
                        let _ = std::fs::remove_file(&lock);
                    } else {
                        break;
                    }
                }
                Err(e) => return Err(format!("lock file {}: {e}", lock.display())),
            }
        }
    }
    Err("no free 10.213.N.0/24 block".into())
}

// ---------------------------------------------------------------------------------------
// A sluice instance in a namespace.

/// `ip netns exec NS sluice run -c CONFIG`, its output collected as it comes.
struct Instance {
    child: tokio::process::Child,
    cmd: String,
    output: Arc<Mutex<String>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Instance {
    fn start(ns: &str, config: &Path) -> Instance {
        let bin = env!("CARGO_BIN_EXE_sluice");
        let config = config.to_str().expect("config path is text");
        let args = ["netns", "exec", ns, bin, "run", "-c", config];
        let cmd = format!("ip {}", args.join(" "));
        let mut command = tokio::process::Command::new("ip");
        command
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        // `ip netns exec` execs sluice in place, so sluice dies with this test process even
        // if the test is killed before `Net` can kill it.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd}: {e}"));
        let output = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            collect(child.stdout.take().expect("stdout"), Arc::clone(&output)),
            collect(child.stderr.take().expect("stderr"), Arc::clone(&output)),
        ];
        Instance {
            child,
            cmd,
            output,
            readers,
        }
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Waits until `addr` accepts connections; fails with the output if sluice exits first
    /// or does not listen within [`WAIT`]. Then checks that the process is sluice itself
    /// (so signals reach it), not an `ip` wrapper.
    async fn wait_listening(&mut self, addr: SocketAddr) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if TcpStream::connect(addr).await.is_ok() {
                break;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.finish_readers().await;
                panic!(
                    "{} exited ({status}) before listening on {addr}:\n{}",
                    self.cmd,
                    self.output()
                );
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "{} did not listen on {addr} within {WAIT:?}:\n{}",
                    self.cmd,
                    self.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let pid = self.child.id().expect("running");
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        assert_eq!(
            comm.trim(),
            "sluice",
            "`ip netns exec` should exec sluice in place (pid {pid})"
        );
    }

    /// Sends `signal` to the sluice process, by PID.
    fn signal(&self, signal: i32) {
        let pid = self.child.id().expect("running") as i32;
        // SAFETY: kill has no memory-safety preconditions; the PID is our unreaped child.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
    }

    /// SIGKILL by PID, if still running (a reaped child has no PID to reuse).
    fn kill(&mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: as in `signal`.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }

    async fn finish_readers(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = within(WAIT, reader).await;
        }
    }

    /// Waits (bounded) for the process to exit; its code and output. On timeout it is killed
    /// and the test fails with the output.
    async fn wait_exit(mut self, dur: Duration) -> (Option<i32>, String) {
        let status = tokio::time::timeout(dur, self.child.wait()).await;
        let Ok(status) = status else {
            self.kill();
            let _ = within(WAIT, self.child.wait()).await;
            self.finish_readers().await;
            panic!(
                "{} did not exit within {dur:?}:\n{}",
                self.cmd,
                self.output()
            );
        };
        self.finish_readers().await;
        (status.expect("wait").code(), self.output())
    }
}

/// Appends every line read from `from` to `into`.
fn collect(
    from: impl AsyncRead + Unpin + Send + 'static,
    into: Arc<Mutex<String>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(from).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut out = into.lock().unwrap();
            out.push_str(&line);
            out.push('\n');
        }
    })
}

// ---------------------------------------------------------------------------------------
// Backends and DNS in the root namespace.

/// b1..b4: HTTP backends on one port, each on its own address, answering their name and
/// noting who connected.
struct Backends {
    port: u16,
    seen: Arc<Mutex<BTreeMap<&'static str, Served>>>,
}

/// What one backend served: requests, and the peer addresses they came from.
#[derive(Debug, Default)]
struct Served {
    requests: usize,
    peers: BTreeSet<IpAddr>,
}

impl Backends {
    async fn start(ips: [Ipv4Addr; 4]) -> Backends {
        let listeners = bind_same_port(&ips).await;
        let port = listeners[0].local_addr().expect("addr").port();
        let seen: Arc<Mutex<BTreeMap<&'static str, Served>>> = Arc::default();
        for (listener, name) in listeners.into_iter().zip(BACKENDS) {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                loop {
                    let Ok((stream, peer)) = listener.accept().await else {
                        continue;
                    };
                    let seen = Arc::clone(&seen);
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |_req| {
                            {
                                let mut seen = seen.lock().unwrap();
                                let entry = seen.entry(name).or_default();
                                entry.requests += 1;
                                entry.peers.insert(peer.ip());
                            }
                            async move { Ok::<_, Infallible>(text(200, name)) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        }
        Backends { port, seen }
    }

    fn count(&self, name: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .get(name)
            .map_or(0, |e| e.requests)
    }

    fn peers(&self) -> BTreeMap<&'static str, BTreeSet<IpAddr>> {
        let seen = self.seen.lock().unwrap();
        seen.iter().map(|(k, v)| (*k, v.peers.clone())).collect()
    }
}

/// Listeners on the same port on every address in `ips`.
async fn bind_same_port(ips: &[Ipv4Addr]) -> Vec<TcpListener> {
    for _ in 0..20 {
        let first = TcpListener::bind((ips[0], 0)).await.expect("bind backend");
        let port = first.local_addr().expect("addr").port();
        let mut all = vec![first];
        for ip in &ips[1..] {
            match TcpListener::bind((*ip, port)).await {
                Ok(l) => all.push(l),
                Err(_) => break,
            }
        }
        if all.len() == ips.len() {
            return all;
        }
    }
    panic!("no port free on all of {ips:?}");
}

/// The DNS server of tests/support/dns.rs (which binds loopback), reachable on `ip:PORT`
/// through a UDP relay: each query goes on from a fresh loopback socket, and its answer
/// comes back from `ip:PORT`.
async fn dns_on(ip: Ipv4Addr) -> (DnsServer, SocketAddr) {
    let dns = DnsServer::start().await;
    let server = dns.addr;
    let socket = Arc::new(UdpSocket::bind((ip, 0)).await.expect("bind DNS relay"));
    let addr = socket.local_addr().expect("DNS relay addr");
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, client)) = socket.recv_from(&mut buf).await else {
                continue;
            };
            let query = buf[..n].to_vec();
            let socket = Arc::clone(&socket);
            tokio::spawn(async move {
                let Ok(relay) = UdpSocket::bind("127.0.0.1:0").await else {
                    return;
                };
                if relay.send_to(&query, server).await.is_err() {
                    return;
                }
                let mut answer = [0u8; 1500];
                let got = tokio::time::timeout(WAIT, relay.recv_from(&mut answer)).await;
                if let Ok(Ok((m, _))) = got {
                    let _ = socket.send_to(&answer[..m], client).await;
                }
            });
        }
    });
    (dns, addr)
}

/// A WebSocket echo backend on `ip`, counting handshakes.
struct EchoBackend {
    addr: SocketAddr,
    handshakes: Arc<Mutex<usize>>,
}

impl EchoBackend {
    fn handshakes(&self) -> usize {
        *self.handshakes.lock().unwrap()
    }
}

impl std::fmt::Display for EchoBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr.fmt(f)
    }
}

async fn ws_echo_at(ip: Ipv4Addr) -> EchoBackend {
    let listener = TcpListener::bind((ip, 0)).await.expect("bind echo backend");
    let addr = listener.local_addr().expect("addr");
    let handshakes = Arc::new(Mutex::new(0));
    let count = Arc::clone(&handshakes);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                *count.lock().unwrap() += 1;
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    EchoBackend { addr, handshakes }
}

// ---------------------------------------------------------------------------------------
// Clients.

/// Whether `addr` answers `200` to a request with `X-Key: key` (no `502` for lack of an
/// address); any other outcome is `false`.
async fn answers(addr: SocketAddr, key: &str) -> bool {
    let Ok(Ok(stream)) = tokio::time::timeout(WAIT, TcpStream::connect(addr)).await else {
        return false;
    };
    drop(stream);
    let mut client = RawClient::connect(addr).await;
    client.send(request(key)).await;
    client
        .try_read_response()
        .await
        .is_some_and(|r| r.status == 200)
}

fn request(key: &str) -> String {
    format!("GET /key HTTP/1.1\r\nHost: instances.test\r\nX-Key: {key}\r\n\r\n")
}

/// The backend that answered each key, through `addr`: 8 keep-alive connections at once.
async fn route_keys(addr: SocketAddr, keys: &[String]) -> Vec<String> {
    let per_conn = keys.len().div_ceil(8);
    let conns = keys.chunks(per_conn).map(|chunk| async move {
        let mut client: Option<RawClient> = None;
        let mut out = Vec::with_capacity(chunk.len());
        for key in chunk {
            out.push(ask(&mut client, addr, key).await);
        }
        out
    });
    futures_util::future::join_all(conns)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// One request on `client` (connected first if need be; once more on a new connection if
/// the old one was closed); the answering backend's name.
async fn ask(client: &mut Option<RawClient>, addr: SocketAddr, key: &str) -> String {
    for _ in 0..2 {
        let c = match client {
            Some(c) => c,
            None => client.insert(RawClient::connect(addr).await),
        };
        c.send(request(key)).await;
        match c.try_read_response().await {
            Some(r) => {
                assert_eq!(r.status, 200, "key {key} through {addr}: {}", r.text());
                let name = r.body_str();
                assert!(
                    BACKENDS.contains(&name.as_str()),
                    "key {key} through {addr}: unknown answer {name:?}"
                );
                return name;
            }
            None => *client = None,
        }
    }
    panic!("key {key} through {addr}: the connection closed twice without an answer");
}

/// Asserts both instances sent every key to the same backend.
#[track_caller]
fn assert_agree(keys: &[String], one: &[String], two: &[String], when: &str) {
    assert_eq!(one.len(), keys.len());
    assert_eq!(two.len(), keys.len());
    let differ: Vec<String> = keys
        .iter()
        .zip(one.iter().zip(two))
        .filter(|(_, (a, b))| a != b)
        .map(|(k, (a, b))| format!("{k}: {a} vs {b}"))
        .collect();
    assert!(
        differ.is_empty(),
        "{when}: the instances disagree on {} of {} keys, e.g. {:?}",
        differ.len(),
        keys.len(),
        &differ[..differ.len().min(10)]
    );
}

fn tally(names: &[String]) -> BTreeMap<&str, usize> {
    let mut counts = BTreeMap::new();
    for name in names {
        *counts.entry(name.as_str()).or_insert(0) += 1;
    }
    counts
}

/// Sends a text message on `ws` and expects it back (bounded).
async fn echo(ws: &mut Ws, what: &str) {
    let text = format!("echo: {what}");
    within(WAIT, ws.send(Message::text(text.clone())))
        .await
        .unwrap_or_else(|e| panic!("{what}: send failed: {e}"));
    match within(WAIT, ws.next()).await {
        Some(Ok(Message::Text(got))) if got.as_str() == text => {}
        other => panic!("{what}: expected the echo of {text:?}, got {other:?}"),
    }
}

/// Every tunnel echoes (bounded).
async fn echo_all(tunnels: &mut [Ws], when: &str) {
    for (i, ws) in tunnels.iter_mut().enumerate() {
        echo(ws, &format!("tunnel {i} {when}")).await;
    }
}
