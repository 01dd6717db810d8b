//! `cargo bench --bench soak`: thousands of WebSocket tunnels held through the real sluice
//! binary for minutes, every one of them echoing all the while; sluice's memory watched.
//!
//! # Usage
//!
//! ```sh
//! cargo bench --bench soak                       # default: 3 minutes, as many tunnels as fit
//! cargo bench --bench soak -- --seconds 20       # a quick run
//! cargo bench --bench soak -- --tunnels 2000 --minutes 10
//! cargo bench --bench soak -- --sluice /path/to/another/sluice
//! ```
//!
//! Options (after `--`): `--sluice PATH` (default: the release `sluice` that `cargo bench`
//! builds along with this bench, `target/release/sluice`, or under `$CARGO_TARGET_DIR`),
//! `--tunnels N` (default: as many as the descriptor limit allows, and at least 9,000),
//! `--minutes M` (default 3) or `--seconds S`, `--parallel P` (handshakes at a time, default
//! 200), `--interval-ms MS` (each tunnel's message period, default 1500). The bench binary
//! only runs when given `--bench` (as `cargo bench` does), so `cargo test --all-targets`
//! never starts a soak.
//!
//! # What it does
//!
//! 1. Raises its soft `RLIMIT_NOFILE` to the hard limit; both children inherit it. sluice
//!    needs two descriptors per tunnel (client side and upstream side), this process and
//!    the backend one each, all plus a reserve of [`FD_RESERVE`]; the default tunnel count
//!    is what fits in sluice's limit (9,900 under a hard limit of 20,000).
//! 2. Starts the WebSocket echo backend as a child process (this binary with `--backend`,
//!    on `127.0.0.1:0`), writes a config with one listener on a free loopback port and one
//!    route to the backend, and starts `sluice run -c FILE` (stderr in its log file, in a
//!    scratch directory under the system temp directory, removed after a passing run).
//! 3. Samples sluice's RSS (`VmRSS` in `/proc/PID/status`) with no tunnel open, then opens
//!    every tunnel, `--parallel` handshakes at a time.
//! 4. For the duration, every tunnel sends a numbered text message every `--interval-ms`
//!    (start times spread evenly over one period) and checks that exactly the same text
//!    comes back within 10 s. Every 10 s a line shows the open tunnels, sluice's RSS and
//!    open descriptors, and the messages sent, echoed, mismatched and lost.
//! 5. Each tunnel sends Close 1000 and waits for the answering Close; the soak waits until
//!    sluice has let go of the tunnels' descriptors, then samples its RSS five times over
//!    10 s, stops sluice with SIGTERM (it must exit 0) and the backend, and prints a
//!    summary: tunnels held, duration, messages, RSS at start, peak (`VmHWM` or the
//!    highest sample, whichever is higher) and after close, and KiB per tunnel at peak.
//!
//! It exits non-zero if a message was lost or mismatched, a tunnel failed to open, broke or
//! failed its closing handshake, sluice did not release the tunnels' descriptors, or sluice
//! did not exit 0 on SIGTERM. Every wait is bounded and the whole run has a deadline (the
//! duration plus 7 minutes); on any way out (error, deadline, Ctrl-C) both children are
//! killed by PID. All traffic stays on 127.0.0.1.

mod backend;
mod children;
mod procfs;
mod tunnels;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, timeout, timeout_at, Instant};
use tokio_util::sync::CancellationToken;

use children::{Backend, Sluice};
use tunnels::Stats;

/// Errors of the harness: a message for the operator, with its cause folded in.
pub type Result<T> = std::result::Result<T, String>;

/// The default run must hold at least this many tunnels.
const MIN_TUNNELS: usize = 9_000;

/// Descriptors each process keeps for everything but tunnels (listeners, log, epoll,
/// runtime, stdio, `/proc` reads).
const FD_RESERVE: u64 = 200;

/// How often a progress line is printed.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Longest the opening of all tunnels may take.
const OPEN_BUDGET: Duration = Duration::from_secs(300);

/// How far above its count before the tunnels sluice's descriptors may stay once they
/// are closed (a probe connection or two, a pooled upstream connection).
const FD_SLACK: usize = 8;

#[derive(Parser)]
#[command(about = "Soak: many WebSocket tunnels through sluice for minutes, echoing; RSS watched")]
struct Cli {
    /// Passed by `cargo bench`; without it (as under `cargo test --all-targets`) nothing runs.
    #[arg(long, hide = true)]
    bench: bool,
    /// Run as the echo backend (the soak starts itself this way as a child process).
    #[arg(long, hide = true)]
    backend: bool,
    /// The backend's longest life, in seconds.
    #[arg(long, hide = true, default_value_t = 3600)]
    max_life: u64,
    /// The sluice binary to soak (default: the release build Cargo made with this bench).
    #[arg(long)]
    sluice: Option<PathBuf>,
    /// Tunnels to hold (default: as many as the descriptor limit allows, at least 9,000).
    #[arg(long)]
    tunnels: Option<usize>,
    /// How long to echo, in minutes (default 3).
    #[arg(long, conflicts_with = "seconds")]
    minutes: Option<u64>,
    /// How long to echo, in seconds (for a quick run).
    #[arg(long)]
    seconds: Option<u64>,
    /// Handshakes in flight at once while opening.
    #[arg(long, default_value_t = 200)]
    parallel: usize,
    /// Each tunnel sends one message per this many milliseconds.
    #[arg(long, default_value_t = 1500)]
    interval_ms: u64,
}

/// What this run does, settled before anything starts.
struct Plan {
    sluice: PathBuf,
    tunnels: usize,
    duration: Duration,
    parallel: usize,
    period: Duration,
    nofile: u64,
}

impl Plan {
    fn new(cli: &Cli, nofile: u64) -> Result<Plan> {
        // sluice: two descriptors per tunnel; this process and the backend: one each.
        let fit = usize::try_from(nofile.saturating_sub(FD_RESERVE) / 2).unwrap_or(usize::MAX);
        let tunnels = match cli.tunnels {
            Some(0) => return Err("--tunnels must be at least 1".into()),
            Some(n) if n > fit => {
                return Err(format!(
                    "--tunnels {n}: at most {fit} fit under RLIMIT_NOFILE {nofile} (sluice \
                     needs 2 descriptors per tunnel, plus {FD_RESERVE} in reserve)"
                ))
            }
            Some(n) => n,
            None if fit < MIN_TUNNELS => {
                return Err(format!(
                    "only {fit} tunnels fit under RLIMIT_NOFILE {nofile} (hard limit), fewer \
                     than the {MIN_TUNNELS} a default run holds; pass --tunnels N to run fewer"
                ))
            }
            None => fit,
        };
        let secs = match (cli.minutes, cli.seconds) {
            (_, Some(s)) => s,
            (Some(m), None) => m.saturating_mul(60),
            (None, None) => 180,
        };
        if secs == 0 || secs > 24 * 3600 {
            return Err("the duration must be between 1 second and 24 hours".into());
        }
        if cli.parallel == 0 {
            return Err("--parallel must be at least 1".into());
        }
        if !(100..=60_000).contains(&cli.interval_ms) {
            return Err("--interval-ms must be between 100 and 60000".into());
        }
        let sluice = cli
            .sluice
            .clone()
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sluice")));
        if !sluice.is_file() {
            return Err(format!(
                "{}: no such file (build it with `cargo build --release`, or pass --sluice PATH)",
                sluice.display()
            ));
        }
        Ok(Plan {
            sluice,
            tunnels,
            duration: Duration::from_secs(secs),
            parallel: cli.parallel,
            period: Duration::from_millis(cli.interval_ms),
            nofile,
        })
    }

    /// The whole run's deadline: set-up, opening, echoing, closing, sampling, stopping.
    fn budget(&self) -> Duration {
        self.duration + OPEN_BUDGET + Duration::from_secs(120)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.backend {
        return match backend::run(Duration::from_secs(cli.max_life)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("soak: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if !cli.bench {
        println!(
            "soak: run it with `cargo bench --bench soak` (add `-- --seconds 20` for a quick run)"
        );
        return ExitCode::SUCCESS;
    }
    match soak(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Sets up and runs the soak; `Ok(false)` when it ran to the end but failed.
fn soak(cli: &Cli) -> Result<bool> {
    let nofile = procfs::raise_nofile_to_hard()?;
    let plan = Plan::new(cli, nofile)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let budget = plan.budget();
    // Dropping `run` (deadline, Ctrl-C) drops the children's handles, which kills them.
    rt.block_on(async {
        tokio::select! {
            done = timeout(budget, run(&plan)) => done.map_err(|_| {
                format!("the soak did not finish within its {budget:?} deadline; children killed")
            })?,
            _ = tokio::signal::ctrl_c() => Err("interrupted; children killed".into()),
        }
    })
}

/// sluice's RSS and descriptors at one moment.
#[derive(Clone, Copy)]
struct Sample {
    rss_kib: u64,
    fds: usize,
}

fn sample(pid: u32) -> Result<Sample> {
    Ok(Sample {
        rss_kib: procfs::rss_kib(pid)?,
        fds: procfs::fd_count(pid)?,
    })
}

fn describe(sample: &Result<Sample>) -> String {
    match sample {
        Ok(s) => format!("sluice rss {:>9}  fds {:>5}", procfs::mib(s.rss_kib), s.fds),
        Err(e) => format!("sluice: {e}"),
    }
}

/// `[  12.3s]`: time since the soak started.
fn stamp(t0: Instant) -> String {
    format!("[{:>7.1}s]", t0.elapsed().as_secs_f64())
}

fn counters(stats: &Stats) -> String {
    format!(
        "sent {}  echoed {}  mismatched {}  lost {}",
        Stats::get(&stats.sent),
        Stats::get(&stats.echoed),
        Stats::get(&stats.mismatched),
        Stats::get(&stats.lost)
    )
}

async fn run(plan: &Plan) -> Result<bool> {
    let t0 = Instant::now();
    let version = children::version(&plan.sluice).await;
    let dir = std::env::temp_dir().join(format!("sluice-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;

    let backend = Backend::start(plan.budget() + Duration::from_secs(60)).await?;
    let mut sluice = Sluice::start(&plan.sluice, &dir, &backend.addr).await?;
    let pid = sluice.pid;
    println!("soak: sluice {} ({version})", plan.sluice.display());
    println!(
        "soak: sluice pid {pid} on {}, echo backend pid {} on {}; config and log in {}",
        sluice.addr,
        backend.pid,
        backend.addr,
        dir.display()
    );
    println!(
        "soak: RLIMIT_NOFILE {} (soft raised to hard, inherited by both children): {} tunnels, \
         {} handshakes at a time, then {}s of echo, one message per tunnel every {} ms",
        plan.nofile,
        plan.tunnels,
        plan.parallel,
        plan.duration.as_secs(),
        plan.period.as_millis()
    );

    // RSS with no tunnel yet, once sluice has settled.
    sleep(Duration::from_secs(1)).await;
    let start = sample(pid)?;
    let mut peak_sampled = start.rss_kib;
    println!(
        "{} start    tunnels     0  {}",
        stamp(t0),
        describe(&Ok(start))
    );

    // Open every tunnel.
    let opening = tunnels::open_all(
        &sluice.addr,
        plan.tunnels,
        plan.parallel,
        REPORT_EVERY,
        |opened, failed| {
            let s = sample(pid);
            if let Ok(s) = &s {
                peak_sampled = peak_sampled.max(s.rss_kib);
            }
            println!(
                "{} opening  tunnels {opened:>5}  {}  failed {failed}",
                stamp(t0),
                describe(&s)
            );
        },
    );
    let (opened, open_failed) = timeout(OPEN_BUDGET, opening)
        .await
        .map_err(|_| format!("opening {} tunnels took over {OPEN_BUDGET:?}", plan.tunnels))?;
    let open_count = opened.len();
    let s = sample(pid);
    if let Ok(s) = &s {
        peak_sampled = peak_sampled.max(s.rss_kib);
    }
    println!(
        "{} opened   tunnels {open_count:>5}  {}  failed {}",
        stamp(t0),
        describe(&s),
        open_failed.len()
    );
    if let Some(e) = open_failed.first() {
        println!("soak: first failure to open: {e}");
    }
    if opened.is_empty() {
        return Err(format!(
            "no tunnel opened; {}: {}",
            sluice.log.display(),
            children::log_tail(&sluice.log)
        ));
    }

    // Echo on every tunnel for the duration, start times spread over one period.
    let stats = Arc::new(Stats::default());
    let stop = CancellationToken::new();
    let mut set = JoinSet::new();
    let echo_start = Instant::now() + Duration::from_millis(100);
    for (id, ws) in opened.into_iter().enumerate() {
        let first = echo_start + plan.period.mul_f64(id as f64 / open_count as f64);
        stats.live.fetch_add(1, Ordering::Relaxed);
        set.spawn(tunnels::run_tunnel(
            id,
            ws,
            first,
            plan.period,
            stop.clone(),
            Arc::clone(&stats),
        ));
    }
    let echo_end = echo_start + plan.duration;
    let mut report_at = echo_start;
    loop {
        report_at = (report_at + REPORT_EVERY).min(echo_end);
        sleep_until(report_at).await;
        if !sluice.running() {
            stop.cancel();
            return Err(format!(
                "sluice exited during the soak ({}); {}: {}",
                counters(&stats),
                sluice.log.display(),
                children::log_tail(&sluice.log)
            ));
        }
        let s = sample(pid);
        if let Ok(s) = &s {
            peak_sampled = peak_sampled.max(s.rss_kib);
        }
        println!(
            "{} echo     tunnels {:>5}  {}  {}",
            stamp(t0),
            Stats::get(&stats.live),
            describe(&s),
            counters(&stats)
        );
        if Instant::now() >= echo_end {
            break;
        }
    }
    let echo_secs = echo_start.elapsed().as_secs_f64();
    let held = Stats::get(&stats.live);

    // Close every tunnel: each finishes its echo in flight, sends Close, awaits the reply.
    stop.cancel();
    let close_deadline = Instant::now() + 2 * tunnels::STEP_TIMEOUT + Duration::from_secs(10);
    let mut task_failures = 0usize;
    loop {
        match timeout_at(close_deadline, set.join_next()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => {
                task_failures += 1;
                println!("soak: a tunnel task failed: {e}");
            }
            Ok(None) => break,
            Err(_) => {
                task_failures += set.len();
                println!(
                    "soak: {} tunnel(s) still closing at the deadline",
                    set.len()
                );
                set.abort_all();
                break;
            }
        }
    }
    println!(
        "{} closed   tunnels {:>5}  {}  {}  closed cleanly {}  close failed {}",
        stamp(t0),
        Stats::get(&stats.live),
        describe(&sample(pid)),
        counters(&stats),
        Stats::get(&stats.closed_clean),
        Stats::get(&stats.close_failed)
    );

    // Wait until sluice has let go of the tunnels (its descriptors back near the start).
    let fd_deadline = Instant::now() + Duration::from_secs(15);
    let fds_released = loop {
        let fds = procfs::fd_count(pid)?;
        if fds <= start.fds + FD_SLACK {
            break Ok(fds);
        }
        if Instant::now() >= fd_deadline {
            break Err(fds);
        }
        sleep(Duration::from_millis(250)).await;
    };

    // RSS after the close, five samples over 10 s.
    let mut after = Vec::new();
    for i in 0..5 {
        if i > 0 {
            sleep(Duration::from_millis(2500)).await;
        }
        let s = sample(pid);
        println!("{} after    tunnels     0  {}", stamp(t0), describe(&s));
        after.push(s?);
    }
    // VmHWM is the kernel's high-water mark, but it is kept lazily (it can trail the last
    // VmRSS read a little): the peak is the higher of it and the samples.
    let peak = procfs::peak_rss_kib(pid)?.max(peak_sampled);
    let sluice_exit = sluice.stop().await;
    if let Err(e) = backend.stop().await {
        println!("soak: warning: {e}");
    }

    // The summary.
    let sent = Stats::get(&stats.sent);
    let echoed = Stats::get(&stats.echoed);
    let mismatched = Stats::get(&stats.mismatched);
    let lost = Stats::get(&stats.lost);
    let broke = Stats::get(&stats.broke);
    let closed_clean = Stats::get(&stats.closed_clean);
    let close_failed = Stats::get(&stats.close_failed);
    let after_last = after.last().map_or(0, |s| s.rss_kib);
    let after_list: Vec<String> = after.iter().map(|s| procfs::mib(s.rss_kib)).collect();
    let per_tunnel = peak.saturating_sub(start.rss_kib) as f64 / open_count as f64;

    let mut failures = Vec::new();
    if !open_failed.is_empty() {
        failures.push(format!("{} tunnel(s) failed to open", open_failed.len()));
    }
    if lost > 0 {
        failures.push(format!("{lost} message(s) lost"));
    }
    if mismatched > 0 {
        failures.push(format!("{mismatched} echo(es) mismatched"));
    }
    if broke > 0 {
        failures.push(format!("{broke} tunnel(s) broke before the close"));
    }
    if close_failed > 0 {
        failures.push(format!("{close_failed} closing handshake(s) failed"));
    }
    if task_failures > 0 {
        failures.push(format!("{task_failures} tunnel task(s) panicked or hung"));
    }
    if sent != echoed + mismatched + lost {
        failures.push(format!(
            "accounting: sent {sent} != echoed + mismatched + lost"
        ));
    }
    if let Err(fds) = fds_released {
        failures.push(format!(
            "sluice still held {fds} descriptors 15 s after the close ({} before the tunnels)",
            start.fds
        ));
    }
    let exit_note = match &sluice_exit {
        Ok(note) => note.clone(),
        Err(e) => {
            failures.push(e.clone());
            e.clone()
        }
    };

    println!();
    println!("soak summary");
    println!("  sluice        {} ({version})", plan.sluice.display());
    println!(
        "  tunnels       {} requested, {open_count} opened, {held} held to the end of the echo \
         phase; {} failed to open, {broke} broke, {closed_clean} closed cleanly, {close_failed} \
         close failed",
        plan.tunnels,
        open_failed.len()
    );
    println!(
        "  duration      {echo_secs:.1} s of echo (one message per tunnel every {} ms), {:.1} s in all",
        plan.period.as_millis(),
        t0.elapsed().as_secs_f64()
    );
    println!("  messages      sent {sent}, echoed {echoed}, mismatched {mismatched}, lost {lost}");
    println!(
        "  sluice RSS    start {} (no tunnels), peak {} (VmHWM; highest 10 s sample {}), \
         after close {} (samples over 10 s: {})",
        procfs::mib(start.rss_kib),
        procfs::mib(peak),
        procfs::mib(peak_sampled),
        procfs::mib(after_last),
        after_list.join(", ")
    );
    println!("  per tunnel    {per_tunnel:.1} KiB at peak ((peak - start) / {open_count} tunnels)");
    println!(
        "  sluice fds    start {}, after close {}",
        start.fds,
        match fds_released {
            Ok(n) | Err(n) => n,
        }
    );
    println!("  sluice exit   {exit_note}");
    for e in stats.errors() {
        println!("  failure       {e}");
    }
    if failures.is_empty() {
        println!("  result        PASS");
        let _ = std::fs::remove_dir_all(&dir);
        Ok(true)
    } else {
        println!("  result        FAIL: {}", failures.join("; "));
        println!("  kept          {} (config and sluice.log)", dir.display());
        Ok(false)
    }
}
