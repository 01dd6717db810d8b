//! `cargo bench --bench compare -- --counts`: what one operation costs each proxy in
//! user-space instructions (valgrind's callgrind) and in system calls (`strace -f -c`),
//! and, for sluice, in allocations (calls into mimalloc, from the callgrind output).
//!
//! Figures that do not depend on the machine's load: one connection at a time, sequential
//! operations (`compare load-seq`), each proxy with one worker and its whole process
//! counted. Per operation means a difference: every run does 200 plain GETs, 200 64-byte
//! echoes and 200 sessions (connect, upgrade, one 64-byte echo, close); three more runs
//! each do 5,200 of one of them, and (more − base) / 5,000 is that operation's cost, so
//! start-up, shutdown and the first connection's set-up cancel out. Method and limits:
//! `benches/README.md`.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::child::{self, Layout, Running};
use crate::install::{self, HAPROXY, NGINX, STRACE, VALGRIND};
use crate::machine::Machine;
use crate::proxy::{Kind, Ports, Setup};
use crate::{procfs, Result};

/// Operations of each kind in the base run, and in the run that has more of one kind.
const BASE: usize = 200;
const MORE: usize = 5_200;

/// The operations counted.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Get,
    Echo,
    Session,
}

impl Op {
    const ALL: [Op; 3] = [Op::Get, Op::Echo, Op::Session];

    fn label(self) -> &'static str {
        match self {
            Op::Get => "plain GET (keep-alive)",
            Op::Echo => "64 B WebSocket echo",
            Op::Session => "session (connect, upgrade, one echo, close)",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Echo => "echo",
            Op::Session => "session",
        }
    }
}

/// How the proxy is watched.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tool {
    Callgrind,
    Strace,
}

/// What one run of one proxy under one tool counted.
#[derive(Clone, Copy, Default)]
struct Totals {
    instructions: f64,
    allocations: f64,
    syscalls: f64,
}

/// Per operation, for one proxy: (more − base) / (MORE − BASE).
#[derive(Clone, Copy, Default)]
struct PerOp {
    instructions: f64,
    allocations: f64,
    syscalls: f64,
}

pub fn run(only: &[Kind], sluice: PathBuf, out: Option<PathBuf>) -> Result<()> {
    let started = Instant::now();
    let tools = install::ensure(&[NGINX, HAPROXY, VALGRIND, STRACE]);
    let (nginx, haproxy) = (tools[0].clone(), tools[1].clone());
    let (valgrind, strace) = match (&tools[2], &tools[3]) {
        (Some(v), Some(s)) => (v.clone(), s.clone()),
        _ => return Err("the counts need valgrind and strace".into()),
    };
    let kinds: Vec<Kind> = if only.is_empty() {
        Kind::ALL.to_vec()
    } else {
        only.to_vec()
    };
    let envoy = if kinds.contains(&Kind::Envoy) {
        install::ensure_envoy()
    } else {
        None
    };
    let mut versions = vec![install::version(&sluice, "--version")];
    let mut proxies = Vec::new();
    let mut notes = Vec::new();
    for kind in kinds {
        let program = match kind {
            Kind::Sluice => Some(sluice.clone()),
            Kind::Nginx => nginx.clone(),
            Kind::Haproxy => haproxy.clone(),
            Kind::Envoy => envoy.clone(),
        };
        match program {
            Some(p) => {
                match kind {
                    Kind::Sluice => {}
                    Kind::Nginx | Kind::Haproxy => versions.push(install::version(&p, "-v")),
                    Kind::Envoy => versions.push(install::envoy_version(&p)),
                }
                proxies.push((kind, p));
            }
            None => notes.push(format!("{} missing: skipped", kind.name())),
        }
    }
    versions.push(install::version(&valgrind, "--version"));
    // "strace -- version 6.1" → "strace 6.1".
    versions.push(install::version(&strace, "-V").replace(" -- version", ""));
    let machine = Machine::probe();
    println!("machine: {}", machine.describe());
    println!("versions: {}", versions.join(", "));

    let layout = Layout::new(
        1,
        std::thread::available_parallelism().map_or(2, |n| n.get()),
    )?;
    let ports = crate::orchestrate::free_ports()?;
    let scratch = std::env::temp_dir().join(format!("sluice-counts-{}", std::process::id()));
    let out =
        out.unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results/counts"));
    let raw = out.join("strace");
    fs::create_dir_all(&raw).map_err(|e| format!("{}: {e}", raw.display()))?;
    let mut backend_cmd = child::self_role(layout, "backend")?;
    backend_cmd
        .args(["--http-port", &ports.http_backend.to_string()])
        .args(["--ws-port", &ports.ws_backend.to_string()]);
    let mut backend = Running::spawn("backend", backend_cmd)?;
    backend.expect("ready", Duration::from_secs(10))?;

    let nofile = procfs::raise_fd_limit(4096);
    let mut rows: Vec<(Kind, Vec<(Op, PerOp)>)> = Vec::new();
    let mut runs_md = String::new();
    for (index, (kind, program)) in proxies.iter().enumerate() {
        let dir = scratch.join(kind.name());
        let ports = Ports {
            proxy: ports.proxy + index as u16,
            ..ports
        };
        let mut results = Vec::new();
        // The base run first, then one run with more of each operation.
        let plans: Vec<(&str, [usize; 3])> = vec![
            ("base", [BASE, BASE, BASE]),
            ("get", [MORE, BASE, BASE]),
            ("echo", [BASE, MORE, BASE]),
            ("session", [BASE, BASE, MORE]),
        ];
        let mut failed = None;
        for (name, counts) in &plans {
            let mut totals = Totals::default();
            for tool in [Tool::Callgrind, Tool::Strace] {
                let label = format!("{} · {name} · {}", kind.name(), tool_name(tool));
                let file = dir.join(format!("{name}.{}", tool_name(tool)));
                let setup = Setup {
                    kind: *kind,
                    program,
                    ports,
                    layout,
                    max_conns: 256,
                    nofile,
                    dir: &dir,
                    tls: None,
                    wrap: wrap(tool, &valgrind, &strace, &file),
                };
                let t = Instant::now();
                match one_run(&setup, *counts, tool, &file) {
                    Ok(got) => {
                        match tool {
                            Tool::Callgrind => {
                                totals.instructions = got.instructions;
                                totals.allocations = got.allocations;
                            }
                            Tool::Strace => {
                                totals.syscalls = got.syscalls;
                                let copy = raw.join(format!("{}-{name}.txt", kind.name()));
                                let _ = fs::copy(&file, &copy);
                            }
                        }
                        println!("  {label}: done in {:.0} s", t.elapsed().as_secs_f64());
                    }
                    Err(e) => {
                        println!("  {label}: FAILED: {e}");
                        failed = Some(format!("{label}: {e}"));
                    }
                }
            }
            let _ = writeln!(
                runs_md,
                "| {} | {name} | {} / {} / {} | {:.0} | {:.0} | {} |",
                kind.name(),
                counts[0],
                counts[1],
                counts[2],
                totals.instructions,
                totals.syscalls,
                if *kind == Kind::Sluice {
                    format!("{:.0}", totals.allocations)
                } else {
                    "–".into()
                }
            );
            results.push(totals);
        }
        if let Some(e) = failed {
            notes.push(e);
            continue;
        }
        let base = results[0];
        let per: Vec<(Op, PerOp)> = Op::ALL
            .iter()
            .zip(&results[1..])
            .map(|(&op, more)| {
                let n = (MORE - BASE) as f64;
                (
                    op,
                    PerOp {
                        instructions: (more.instructions - base.instructions) / n,
                        allocations: (more.allocations - base.allocations) / n,
                        syscalls: (more.syscalls - base.syscalls) / n,
                    },
                )
            })
            .collect();
        for (op, p) in &per {
            println!(
                "  {} · {}: {:.0} instructions, {:.2} system calls{}",
                kind.name(),
                op.key(),
                p.instructions,
                p.syscalls,
                if *kind == Kind::Sluice {
                    format!(", {:.2} allocations", p.allocations)
                } else {
                    String::new()
                }
            );
        }
        rows.push((*kind, per));
    }
    if let Err(e) = backend.finish(Duration::from_secs(5)) {
        eprintln!("{e}");
    }
    println!(
        "callgrind outputs and proxy logs kept in {}",
        scratch.display()
    );
    let md = markdown(
        &machine,
        &versions,
        &rows,
        &runs_md,
        &notes,
        started.elapsed(),
    );
    let path = out.join("latest.md");
    fs::write(&path, &md).map_err(|e| format!("{}: {e}", path.display()))?;
    println!("\n{md}\nwritten: {}", path.display());
    Ok(())
}

fn tool_name(tool: Tool) -> &'static str {
    match tool {
        Tool::Callgrind => "callgrind",
        Tool::Strace => "strace",
    }
}

/// The command the proxy runs under, writing its counts to `file`.
fn wrap(tool: Tool, valgrind: &Path, strace: &Path, file: &Path) -> Vec<String> {
    let file = file.to_string_lossy().into_owned();
    match tool {
        Tool::Callgrind => vec![
            valgrind.to_string_lossy().into_owned(),
            "--tool=callgrind".into(),
            format!("--callgrind-out-file={file}"),
        ],
        Tool::Strace => vec![
            strace.to_string_lossy().into_owned(),
            "-f".into(),
            "-c".into(),
            "-o".into(),
            file,
        ],
    }
}

/// Starts the proxy under the tool, runs the sequential client, stops the proxy (which
/// makes the tool write its counts), reads them.
fn one_run(setup: &Setup, counts: [usize; 3], tool: Tool, file: &Path) -> Result<Totals> {
    let _ = fs::remove_file(file);
    let proxy = setup.start(false)?;
    let mut cmd = child::self_role(setup.layout, "load-seq")?;
    cmd.args(["--addr", &proxy.addr])
        .args(["--gets", &counts[0].to_string()])
        .args(["--echoes", &counts[1].to_string()])
        .args(["--sessions", &counts[2].to_string()]);
    let result = Running::spawn("load-seq", cmd).and_then(|mut load| {
        let line = load.expect("result", Duration::from_secs(600))?;
        let _ = load.finish(Duration::from_secs(5));
        Ok(line)
    });
    let exited = proxy.stop();
    result?;
    if !exited {
        return Err("the proxy did not exit after SIGTERM: no counts".into());
    }
    let text = fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    match tool {
        Tool::Callgrind => Ok(Totals {
            instructions: callgrind_total(&text)?,
            allocations: callgrind_allocations(&text),
            syscalls: 0.0,
        }),
        Tool::Strace => Ok(Totals {
            syscalls: strace_total(&text)?,
            ..Totals::default()
        }),
    }
}

/// The `totals:` (or `summary:`) line of a callgrind output: instructions executed.
fn callgrind_total(text: &str) -> Result<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| "callgrind output without totals".into())
}

/// Calls into mimalloc's allocating entry points (`mi_malloc*`, `mi_zalloc*`,
/// `mi_calloc*`, `mi_realloc*`, …) and into libc's `malloc`, `calloc` and `realloc`, from
/// functions outside the allocators: every allocation and reallocation the program asked
/// for. Reads the call arcs (`cfn=` then `calls=`) of a callgrind output, whose function
/// names are compressed to `(id)` after their first mention.
fn callgrind_allocations(text: &str) -> f64 {
    let mut names: std::collections::HashMap<String, String> = Default::default();
    let mut name_of = |spec: &str| -> String {
        let spec = spec.trim();
        match spec.strip_prefix('(').and_then(|s| s.split_once(')')) {
            Some((id, rest)) if !rest.trim().is_empty() => {
                names.insert(id.to_owned(), rest.trim().to_owned());
                rest.trim().to_owned()
            }
            Some((id, _)) => names.get(id).cloned().unwrap_or_default(),
            None => spec.to_owned(),
        }
    };
    let in_allocator = |f: &str| {
        f.starts_with("mi_")
            || f.starts_with("_mi_")
            || f.starts_with("mi_heap")
            || matches!(f, "malloc" | "calloc" | "realloc" | "free")
            || f.starts_with("_int_")
    };
    let allocating = |f: &str| {
        (f.starts_with("mi_") && f.contains("alloc") && !f.contains("usable"))
            || matches!(f, "malloc" | "calloc" | "realloc")
    };
    let (mut caller, mut callee) = (String::new(), String::new());
    let mut total = 0u64;
    for line in text.lines() {
        if let Some(spec) = line.strip_prefix("fn=") {
            caller = name_of(spec);
        } else if let Some(spec) = line.strip_prefix("cfn=") {
            callee = name_of(spec);
        } else if let Some(rest) = line.strip_prefix("calls=") {
            if allocating(&callee) && !in_allocator(&caller) {
                total += rest
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    total as f64
}

/// The `total` line of `strace -c`: system calls made.
fn strace_total(text: &str) -> Result<f64> {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.last() == Some(&"total"))
        .and_then(|f| f.get(3)?.parse().ok())
        .ok_or_else(|| "strace output without a total".into())
}

fn markdown(
    machine: &Machine,
    versions: &[String],
    rows: &[(Kind, Vec<(Op, PerOp)>)],
    runs: &str,
    notes: &[String],
    elapsed: Duration,
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Counts per operation: {}\n", machine.date);
    let _ = writeln!(md, "- Command: `cargo bench --bench compare -- --counts`");
    let _ = writeln!(md, "- Machine: {}", machine.describe());
    let _ = writeln!(md, "- Versions: {}", versions.join(", "));
    let _ = writeln!(
        md,
        "- Each proxy: one worker, pinned to core 0; the client (`compare load-seq`) and the \
         backends on core 1. One connection at a time, sequential operations. Per operation: \
         (run with {MORE} − run with {BASE}) / {}. Instructions: valgrind's callgrind, all \
         threads of the proxy, user space only. System calls: `strace -f -c`, every thread. \
         Allocations (sluice only): calls into mimalloc's allocating functions (and libc's \
         malloc, calloc, realloc) from outside the allocators, counted in the callgrind \
         output. Run took {:.0} s. See benches/README.md.\n",
        MORE - BASE,
        elapsed.as_secs_f64()
    );
    let mut head = "| per operation |".to_owned();
    let mut rule = "|---|".to_owned();
    for (k, _) in rows {
        let _ = write!(head, " {} |", k.name());
        rule.push_str("---:|");
    }
    let _ = writeln!(md, "{head}\n{rule}");
    for op in Op::ALL {
        for (what, pick) in [
            ("instructions", 0usize),
            ("system calls", 1),
            ("allocations", 2),
        ] {
            if pick == 2 && !rows.iter().any(|(k, _)| *k == Kind::Sluice) {
                continue;
            }
            let mut row = format!("| {}: {what} |", op.label());
            for (kind, per) in rows {
                let p = per.iter().find(|(o, _)| *o == op).map(|(_, p)| *p);
                let cell = match (p, pick) {
                    (Some(p), 0) => crate::report::number(p.instructions.round()),
                    (Some(p), 1) => format!("{:.1}", p.syscalls),
                    // Rounded first, so that a stray −0.02 shows as 0.0, not −0.0.
                    (Some(p), _) if *kind == Kind::Sluice => {
                        format!("{:.1}", (p.allocations * 10.0).round() / 10.0 + 0.0)
                    }
                    _ => "–".into(),
                };
                let _ = write!(row, " {cell} |");
            }
            let _ = writeln!(md, "{row}");
        }
    }
    let _ = writeln!(
        md,
        "\n## Every run\n\nTotals of each run (start to exit); GETs / echoes / sessions.\n\n\
         | proxy | run | GETs / echoes / sessions | instructions | system calls | allocations |\n\
         |---|---|---:|---:|---:|---:|\n{runs}"
    );
    let _ = writeln!(
        md,
        "The `strace -c` table of every run is in `strace/` beside this file."
    );
    if !notes.is_empty() {
        let _ = writeln!(md, "\n## Notes\n");
        for n in notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    md
}
