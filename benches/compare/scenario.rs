//! The scenarios, each measured against one running proxy: the load it sends, the window
//! over which the proxy's CPU is counted, and the numbers it yields. Two groups: plain
//! (HTTP and `ws://`) and TLS (the proxy terminates TLS: handshakes, `wss://`).

use std::path::Path;
use std::thread;
use std::time::Duration;

use crate::child::{self, Layout, Running};
use crate::procfs;
use crate::{wrk, Result};

/// What is measured, with its unit and direction.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum Metric {
    HttpRate,
    HttpCpu,
    Echo64Rate,
    Echo64Cpu,
    Echo4kRate,
    Echo4kCpu,
    P50Added,
    P99Added,
    StormRate,
    StormCpu,
    IdleKib,
    TlsFullRate,
    TlsFullCpu,
    TlsResumedRate,
    TlsResumedCpu,
    Wss64Rate,
    Wss64Cpu,
    WssIdleKib,
}

impl Metric {
    pub const ALL: [Metric; 18] = [
        Metric::HttpRate,
        Metric::HttpCpu,
        Metric::Echo64Rate,
        Metric::Echo64Cpu,
        Metric::Echo4kRate,
        Metric::Echo4kCpu,
        Metric::P50Added,
        Metric::P99Added,
        Metric::StormRate,
        Metric::StormCpu,
        Metric::IdleKib,
        Metric::TlsFullRate,
        Metric::TlsFullCpu,
        Metric::TlsResumedRate,
        Metric::TlsResumedCpu,
        Metric::Wss64Rate,
        Metric::Wss64Cpu,
        Metric::WssIdleKib,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Metric::HttpRate => "HTTP keep-alive: requests/s",
            Metric::HttpCpu => "HTTP keep-alive: proxy CPU µs/request",
            Metric::Echo64Rate => "WS echo 64 B: messages/s",
            Metric::Echo64Cpu => "WS echo 64 B: proxy CPU µs/message",
            Metric::Echo4kRate => "WS echo 4 KiB: messages/s",
            Metric::Echo4kCpu => "WS echo 4 KiB: proxy CPU µs/message",
            Metric::P50Added => "WS latency at fixed rate: p50 added, µs",
            Metric::P99Added => "WS latency at fixed rate: p99 added, µs",
            Metric::StormRate => "Handshake storm: handshakes/s",
            Metric::StormCpu => "Handshake storm: proxy CPU µs/handshake",
            Metric::IdleKib => "Idle tunnels: proxy RSS KiB/tunnel",
            Metric::TlsFullRate => "TLS full handshakes: connections/s",
            Metric::TlsFullCpu => "TLS full handshake + 1 request: proxy CPU µs",
            Metric::TlsResumedRate => "TLS resumed handshakes: connections/s",
            Metric::TlsResumedCpu => "TLS resumed handshake + 1 request: proxy CPU µs",
            Metric::Wss64Rate => "wss echo 64 B: messages/s",
            Metric::Wss64Cpu => "wss echo 64 B: proxy CPU µs/message",
            Metric::WssIdleKib => "Idle wss tunnels: proxy RSS KiB/tunnel",
        }
    }

    /// A short name for the chart and the CSV.
    pub fn key(self) -> &'static str {
        match self {
            Metric::HttpRate => "http_rps",
            Metric::HttpCpu => "http_cpu_us",
            Metric::Echo64Rate => "ws64_msgs",
            Metric::Echo64Cpu => "ws64_cpu_us",
            Metric::Echo4kRate => "ws4k_msgs",
            Metric::Echo4kCpu => "ws4k_cpu_us",
            Metric::P50Added => "p50_added_us",
            Metric::P99Added => "p99_added_us",
            Metric::StormRate => "storm_hs",
            Metric::StormCpu => "storm_cpu_us",
            Metric::IdleKib => "idle_kib",
            Metric::TlsFullRate => "tls_full_conns",
            Metric::TlsFullCpu => "tls_full_cpu_us",
            Metric::TlsResumedRate => "tls_resumed_conns",
            Metric::TlsResumedCpu => "tls_resumed_cpu_us",
            Metric::Wss64Rate => "wss64_msgs",
            Metric::Wss64Cpu => "wss64_cpu_us",
            Metric::WssIdleKib => "wss_idle_kib",
        }
    }

    pub fn higher_is_better(self) -> bool {
        matches!(
            self,
            Metric::HttpRate
                | Metric::Echo64Rate
                | Metric::Echo4kRate
                | Metric::StormRate
                | Metric::TlsFullRate
                | Metric::TlsResumedRate
                | Metric::Wss64Rate
        )
    }

    pub fn group(self) -> Group {
        match self {
            Metric::TlsFullRate
            | Metric::TlsFullCpu
            | Metric::TlsResumedRate
            | Metric::TlsResumedCpu
            | Metric::Wss64Rate
            | Metric::Wss64Cpu
            | Metric::WssIdleKib => Group::Tls,
            _ => Group::Plain,
        }
    }
}

/// The two groups of scenarios, each with its own report.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Group {
    /// HTTP and `ws://`: `benches/results/`.
    Plain,
    /// The proxy terminates TLS: `benches/results/tls/`.
    Tls,
}

/// How long and how much, and on which cores.
#[derive(Clone)]
pub struct Params {
    pub layout: Layout,
    pub http_secs: u32,
    pub http_conns: u32,
    pub echo_secs: f64,
    pub echo_conns: usize,
    pub latency_secs: f64,
    pub latency_rate: u32,
    pub storm_total: usize,
    pub storm_inflight: usize,
    pub idle_tunnels: usize,
    /// Connections in each TLS handshake scenario (full, resumed), and at once.
    pub tls_handshakes: usize,
    pub tls_inflight: usize,
}

/// The scenarios, in the order they run for each proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    Http,
    Echo64,
    Echo4k,
    Latency,
    Storm,
    Idle,
    TlsFull,
    TlsResumed,
    Wss64,
    WssIdle,
}

impl Scenario {
    pub const ALL: [Scenario; 10] = [
        Scenario::Http,
        Scenario::Echo64,
        Scenario::Echo4k,
        Scenario::Latency,
        Scenario::Storm,
        Scenario::Idle,
        Scenario::TlsFull,
        Scenario::TlsResumed,
        Scenario::Wss64,
        Scenario::WssIdle,
    ];

    pub fn group(self) -> Group {
        match self {
            Scenario::TlsFull | Scenario::TlsResumed | Scenario::Wss64 | Scenario::WssIdle => {
                Group::Tls
            }
            _ => Group::Plain,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Http => "http",
            Scenario::Echo64 => "ws-echo-64B",
            Scenario::Echo4k => "ws-echo-4KiB",
            Scenario::Latency => "ws-latency",
            Scenario::Storm => "handshake-storm",
            Scenario::Idle => "idle-tunnels",
            Scenario::TlsFull => "tls-full-handshakes",
            Scenario::TlsResumed => "tls-resumed-handshakes",
            Scenario::Wss64 => "wss-echo-64B",
            Scenario::WssIdle => "idle-wss-tunnels",
        }
    }
}

/// Where the load goes and which processes' CPU and memory count.
pub struct Target<'a> {
    pub addr: &'a str,
    /// The proxy's processes; empty for the backend measured directly.
    pub pids: &'a [u32],
    /// For the TLS scenarios: the CA the proxy's certificate is signed by.
    pub tls_ca: Option<&'a Path>,
}

/// What one scenario run yielded: metric values (latency as raw p50/p99, before the direct
/// baseline is subtracted) and problems worth reporting.
#[derive(Default)]
pub struct Measured {
    pub values: Vec<(Metric, f64)>,
    pub errors: u64,
    pub note: Option<String>,
    /// Worth a line in the notes even without errors (what TLS negotiated, and how many
    /// handshakes resumed).
    pub info: Option<String>,
}

pub fn run(
    scenario: Scenario,
    target: &Target,
    params: &Params,
    wrk: Option<&Path>,
) -> Result<Measured> {
    match scenario {
        Scenario::Http => http(target, params, wrk),
        Scenario::Echo64 => echo(target, params, 64, (Metric::Echo64Rate, Metric::Echo64Cpu)),
        Scenario::Echo4k => echo(
            target,
            params,
            4096,
            (Metric::Echo4kRate, Metric::Echo4kCpu),
        ),
        Scenario::Latency => latency(target, params),
        Scenario::Storm => storm(target, params),
        Scenario::Idle => idle(target, params, Metric::IdleKib),
        Scenario::TlsFull => handshakes(target, params, false),
        Scenario::TlsResumed => handshakes(target, params, true),
        Scenario::Wss64 => echo(target, params, 64, (Metric::Wss64Rate, Metric::Wss64Cpu)),
        Scenario::WssIdle => idle(target, params, Metric::WssIdleKib),
    }
}

fn http(target: &Target, params: &Params, wrk: Option<&Path>) -> Result<Measured> {
    let wrk = wrk.ok_or("wrk is not installed")?;
    let url = format!("http://{}/", target.addr);
    let before = procfs::cpu_seconds(target.pids)?;
    let out = wrk::run(
        wrk,
        params.layout,
        &url,
        params.http_conns,
        params.http_secs,
    )?;
    let cpu = procfs::cpu_seconds(target.pids)? - before;
    Ok(Measured {
        values: vec![
            (Metric::HttpRate, out.requests / out.secs),
            (Metric::HttpCpu, per_unit_us(cpu, out.requests)),
        ],
        errors: out.errors,
        ..Measured::default()
    })
}

/// The load generators' `--addr`, and `--tls-ca` when the proxy terminates TLS.
fn dial_args(cmd: &mut std::process::Command, target: &Target) {
    cmd.args(["--addr", target.addr]);
    if let Some(ca) = target.tls_ca {
        cmd.arg("--tls-ca").arg(ca);
    }
}

fn echo(
    target: &Target,
    params: &Params,
    size: usize,
    (rate, cpu_metric): (Metric, Metric),
) -> Result<Measured> {
    let mut cmd = child::self_role(params.layout, "load-echo")?;
    dial_args(&mut cmd, target);
    cmd.args(["--conns", &params.echo_conns.to_string()])
        .args(["--size", &size.to_string()])
        .args(["--secs", &params.echo_secs.to_string()]);
    let (result, cpu) = measured_child("load-echo", cmd, target, params.echo_secs)?;
    let messages = child::number(&result, "messages")?;
    let secs = child::number(&result, "secs")?;
    Ok(Measured {
        values: vec![
            (rate, messages / secs),
            (cpu_metric, per_unit_us(cpu, messages)),
        ],
        errors: child::number(&result, "errors")? as u64,
        note: first_error(&result),
        info: None,
    })
}

fn latency(target: &Target, params: &Params) -> Result<Measured> {
    let mut cmd = child::self_role(params.layout, "load-latency")?;
    dial_args(&mut cmd, target);
    cmd.args(["--rate", &params.latency_rate.to_string()])
        .args(["--secs", &params.latency_secs.to_string()]);
    let (result, _) = measured_child("load-latency", cmd, target, params.latency_secs)?;
    Ok(Measured {
        values: vec![
            (Metric::P50Added, child::number(&result, "p50_us")?),
            (Metric::P99Added, child::number(&result, "p99_us")?),
        ],
        errors: child::number(&result, "errors")? as u64,
        note: first_error(&result),
        info: None,
    })
}

fn storm(target: &Target, params: &Params) -> Result<Measured> {
    let mut cmd = child::self_role(params.layout, "load-storm")?;
    dial_args(&mut cmd, target);
    cmd.args(["--total", &params.storm_total.to_string()])
        .args(["--inflight", &params.storm_inflight.to_string()]);
    let (result, cpu) = measured_child("load-storm", cmd, target, 120.0)?;
    let handshakes = child::number(&result, "handshakes")?;
    let secs = child::number(&result, "secs")?;
    Ok(Measured {
        values: vec![
            (Metric::StormRate, handshakes / secs),
            (Metric::StormCpu, per_unit_us(cpu, handshakes)),
        ],
        errors: child::number(&result, "errors")? as u64,
        note: first_error(&result),
        info: None,
    })
}

/// RSS before the tunnels open and once they are all open and idle (after a settling
/// second), divided by the tunnels open.
fn idle(target: &Target, params: &Params, metric: Metric) -> Result<Measured> {
    let mut cmd = child::self_role(params.layout, "load-idle")?;
    dial_args(&mut cmd, target);
    cmd.args(["--count", &params.idle_tunnels.to_string()]);
    let mut load = Running::spawn("load-idle", cmd)?;
    load.expect("ready", Duration::from_secs(30))?;
    let before = procfs::rss_kib(target.pids)?;
    load.send("go")?;
    let result = child::fields(&load.expect("result", Duration::from_secs(180))?);
    thread::sleep(Duration::from_secs(1));
    let after = procfs::rss_kib(target.pids)?;
    let open = child::number(&result, "open")?;
    let failed = child::number(&result, "failed")? as u64;
    let finished = load.finish(Duration::from_secs(30));
    if let Err(e) = finished {
        eprintln!("    {e}");
    }
    if open < 1.0 {
        return Err(format!(
            "no tunnel opened: {}",
            first_error(&result).unwrap_or_default()
        ));
    }
    Ok(Measured {
        values: vec![(metric, (after as f64 - before as f64) / open)],
        errors: failed,
        note: first_error(&result)
            .map(|e| format!("{e} (RSS {before} → {after} KiB, {open} open)")),
        info: None,
    })
}

/// TLS 1.3 handshakes, each followed by one plain HTTP request and a close: full ones, or
/// resumed ones (a client that keeps its tickets, warmed up before the window opens).
fn handshakes(target: &Target, params: &Params, resume: bool) -> Result<Measured> {
    let ca = target
        .tls_ca
        .ok_or("the TLS handshake scenarios need the test CA")?;
    let mut cmd = child::self_role(params.layout, "load-tls")?;
    cmd.args(["--addr", target.addr])
        .arg("--tls-ca")
        .arg(ca)
        .args(["--total", &params.tls_handshakes.to_string()])
        .args(["--inflight", &params.tls_inflight.to_string()]);
    if resume {
        cmd.arg("--resume");
    }
    let (result, cpu) = measured_child("load-tls", cmd, target, 120.0)?;
    let done = child::number(&result, "handshakes")?;
    let resumed = child::number(&result, "resumed")?;
    let secs = child::number(&result, "secs")?;
    let (rate, cpu_metric, kind, wanted) = if resume {
        (
            Metric::TlsResumedRate,
            Metric::TlsResumedCpu,
            "resumed",
            resumed,
        )
    } else {
        (
            Metric::TlsFullRate,
            Metric::TlsFullCpu,
            "full",
            done - resumed,
        )
    };
    let negotiated = result.get("tls").map_or("-", String::as_str);
    let info = format!("{negotiated}; {wanted} of {done} handshakes {kind}");
    // A CPU figure per resumed handshake that mixes in full ones would mislead.
    if wanted < done {
        return Err(format!(
            "only {info}: not reported (the proxy does not {}?)",
            if resume {
                "resume sessions"
            } else {
                "do full handshakes"
            }
        ));
    }
    Ok(Measured {
        values: vec![(rate, done / secs), (cpu_metric, per_unit_us(cpu, done))],
        errors: child::number(&result, "errors")? as u64,
        note: first_error(&result),
        info: Some(info),
    })
}

/// Runs a load generator through `ready` / `go` / `result`, counting the target's CPU
/// between `go` and `result`. Returns the result fields and the CPU seconds.
fn measured_child(
    name: &str,
    cmd: std::process::Command,
    target: &Target,
    secs: f64,
) -> Result<(std::collections::HashMap<String, String>, f64)> {
    let mut load = Running::spawn(name, cmd)?;
    load.expect("ready", Duration::from_secs(30))?;
    let before = procfs::cpu_seconds(target.pids)?;
    load.send("go")?;
    let line = load.expect("result", Duration::from_secs_f64(secs + 60.0))?;
    let cpu = procfs::cpu_seconds(target.pids)? - before;
    load.finish(Duration::from_secs(10))?;
    Ok((child::fields(&line), cpu))
}

fn per_unit_us(cpu_secs: f64, units: f64) -> f64 {
    if units > 0.0 {
        cpu_secs * 1e6 / units
    } else {
        f64::NAN
    }
}

fn first_error(result: &std::collections::HashMap<String, String>) -> Option<String> {
    result
        .get("first_error")
        .filter(|e| e.as_str() != "-")
        .cloned()
}
