//! `cargo bench --bench compare`: sluice, nginx, HAProxy and Envoy side by side on one machine.
//!
//! The same binary plays every part. Without a subcommand it is the orchestrator: it
//! installs what is missing, starts each proxy pinned to core 0 (cores 0..N-1 with
//! `--workers N`), runs the scenarios in interleaved rounds and writes `benches/results/`
//! (`benches/results/workers-N/`). With a subcommand it is one of the orchestrator's
//! children, pinned to core 1 (or the cores left over, or all of them when the proxy has
//! every core): the echo backends (`backend`) or a load generator (`load-echo`,
//! `load-latency`, `load-storm`, `load-idle`, `load-tls`). Method and limits:
//! `benches/README.md`.

mod backend;
mod chart;
mod child;
mod counts;
mod install;
mod load;
mod machine;
mod orchestrate;
mod procfs;
mod proxy;
mod report;
mod scenario;
mod tls;
mod wrk;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "sluice vs nginx vs HAProxy vs Envoy, side by side")]
struct Cli {
    /// Smoke run: one round, short runs, fewer handshakes and tunnels.
    #[arg(long)]
    quick: bool,
    /// Instead of the scenarios: instructions (callgrind), system calls (strace) and, for
    /// sluice, allocations per plain GET, per 64 B echo and per session, one connection at
    /// a time; written to benches/results/counts/latest.md (or --out).
    #[arg(long)]
    counts: bool,
    /// Passed by `cargo bench`; without it (as under `cargo test --all-targets`) the
    /// orchestrator does nothing, so tests never start a 15-minute benchmark.
    #[arg(long, hide = true)]
    bench: bool,
    /// Rounds (default 3, or 1 with --quick).
    #[arg(long)]
    rounds: Option<usize>,
    /// Only these proxies (comma-separated: sluice,nginx,haproxy,envoy).
    #[arg(long, value_delimiter = ',')]
    only: Vec<proxy::Kind>,
    /// Only these scenarios (comma-separated), or groups of them: `plain` (http, echo64,
    /// echo4k, latency, storm, idle) and `tls` (tls-full, tls-resumed, wss64, wss-idle).
    /// Default: all of them.
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<Pick>,
    /// Where to write latest.md, latest.csv and latest.svg (default: benches/results, or
    /// benches/results/workers-N with --workers N above 1); the TLS scenarios' report goes
    /// to its `tls/` subdirectory.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// Workers per proxy (nginx processes, HAProxy threads, Envoy workers, tokio workers), each proxy
    /// pinned to cores 0..N-1; at most one per core. With one, the load has a core of its
    /// own; with as many as there are cores, it shares them with the proxy.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Another sluice binary to measure instead of the one Cargo built (to compare a change).
    #[arg(long)]
    sluice: Option<std::path::PathBuf>,
    #[command(subcommand)]
    role: Option<Role>,
}

/// A scenario, or a group of them, on the command line.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Pick {
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
    /// Every plain scenario.
    Plain,
    /// Every TLS scenario.
    Tls,
}

impl Pick {
    fn covers(self, s: scenario::Scenario) -> bool {
        use scenario::{Group, Scenario};
        match self {
            Pick::Http => s == Scenario::Http,
            Pick::Echo64 => s == Scenario::Echo64,
            Pick::Echo4k => s == Scenario::Echo4k,
            Pick::Latency => s == Scenario::Latency,
            Pick::Storm => s == Scenario::Storm,
            Pick::Idle => s == Scenario::Idle,
            Pick::TlsFull => s == Scenario::TlsFull,
            Pick::TlsResumed => s == Scenario::TlsResumed,
            Pick::Wss64 => s == Scenario::Wss64,
            Pick::WssIdle => s == Scenario::WssIdle,
            Pick::Plain => s.group() == Group::Plain,
            Pick::Tls => s.group() == Group::Tls,
        }
    }
}

#[derive(Subcommand)]
enum Role {
    /// HTTP and WebSocket echo backends (a child of the orchestrator).
    Backend(backend::Args),
    /// Closed-loop WebSocket echo: messages/s.
    LoadEcho(load::echo::Args),
    /// WebSocket echo at a fixed rate: latency percentiles.
    LoadLatency(load::latency::Args),
    /// Connect, upgrade, one echo, close, many times: handshakes/s.
    LoadStorm(load::storm::Args),
    /// Opens idle tunnels and holds them until told to stop.
    LoadIdle(load::idle::Args),
    /// TLS handshakes, full or resumed, one request each: connections/s.
    LoadTls(load::tls::Args),
    /// Sequential GETs, echoes and sessions, one connection at a time (for --counts).
    LoadSeq(load::seq::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.role {
        Some(Role::Backend(args)) => backend::run(args),
        Some(Role::LoadEcho(args)) => load::echo::run(args),
        Some(Role::LoadLatency(args)) => load::latency::run(args),
        Some(Role::LoadStorm(args)) => load::storm::run(args),
        Some(Role::LoadIdle(args)) => load::idle::run(args),
        Some(Role::LoadTls(args)) => load::tls::run(args),
        Some(Role::LoadSeq(args)) => load::seq::run(args),
        None if !cli.bench => {
            println!("compare: run it with `cargo bench --bench compare` (add `-- --quick` for a smoke run)");
            Ok(())
        }
        None if cli.counts => counts::run(
            &cli.only,
            cli.sluice
                .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_BIN_EXE_sluice"))),
            cli.out,
        ),
        None => orchestrate::Plan::new(
            cli.quick,
            cli.rounds,
            cli.only,
            scenario::Scenario::ALL
                .into_iter()
                .filter(|&s| cli.scenarios.is_empty() || cli.scenarios.iter().any(|p| p.covers(s)))
                .collect(),
            cli.sluice,
            cli.out,
            cli.workers,
        )
        .and_then(|plan| orchestrate::run(&plan)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("compare: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Errors of the harness: a message for the operator, with its cause folded in.
pub type Result<T> = std::result::Result<T, String>;
