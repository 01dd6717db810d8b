//! The run: set up (fd limit, tools, backends, the test certificate), then the interleaved
//! rounds (each round measures direct latency once when the latency scenario runs, then
//! every proxy through every scenario, each scenario on a freshly started proxy), then a
//! report and a chart per group of scenarios: plain in `results/`, TLS in `results/tls/`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::child::{self, Layout, Running};
use crate::install::{self, HAPROXY, NGINX, WRK};
use crate::machine::Machine;
use crate::proxy::{Kind, Ports, Setup};
use crate::report::{Report, Sample};
use crate::scenario::{self, Group, Measured, Metric, Params, Scenario, Target};
use crate::{chart, procfs, tls, Result};

/// Descriptors kept for everything but the tunnels' sockets (listeners, logs, pipes).
const FD_SLACK: u64 = 512;

pub struct Plan {
    pub quick: bool,
    pub rounds: usize,
    pub proxies: Vec<Kind>,
    pub scenarios: Vec<Scenario>,
    /// The sluice binary: Cargo's release build unless `--sluice` names another.
    pub sluice: PathBuf,
    /// `benches/results` with one worker, `benches/results/workers-N` with N, unless
    /// `--out` names another directory. The TLS group's report goes to `tls/` in it.
    pub out: PathBuf,
    pub params: Params,
}

impl Plan {
    /// The plan from the command line; fails when `workers` does not fit the machine.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        quick: bool,
        rounds: Option<usize>,
        only: Vec<Kind>,
        scenarios: Vec<Scenario>,
        sluice: Option<PathBuf>,
        out: Option<PathBuf>,
        workers: usize,
    ) -> Result<Plan> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let layout = Layout::new(workers, cores)?;
        let params = if quick {
            Params {
                layout,
                http_secs: 3,
                http_conns: 50,
                echo_secs: 3.0,
                echo_conns: 50,
                latency_secs: 3.0,
                latency_rate: 5000,
                storm_total: 2000,
                storm_inflight: 50,
                idle_tunnels: 2000,
                tls_handshakes: 1000,
                tls_inflight: 50,
            }
        } else {
            Params {
                layout,
                http_secs: 10,
                http_conns: 50,
                echo_secs: 10.0,
                echo_conns: 50,
                latency_secs: 10.0,
                latency_rate: 5000,
                storm_total: 10_000,
                storm_inflight: 50,
                idle_tunnels: 10_000,
                tls_handshakes: 10_000,
                tls_inflight: 50,
            }
        };
        let results = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results");
        let default_out = if workers == 1 {
            results
        } else {
            results.join(format!("workers-{workers}"))
        };
        Ok(Plan {
            quick,
            rounds: rounds.unwrap_or(if quick { 1 } else { 3 }).clamp(1, 20),
            proxies: if only.is_empty() {
                Kind::ALL.to_vec()
            } else {
                only
            },
            scenarios,
            sluice: sluice.unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sluice"))),
            out: out.unwrap_or(default_out),
            params,
        })
    }
}

pub fn run(plan: &Plan) -> Result<()> {
    let started = Instant::now();
    let mut plan_notes: Vec<Note> = Vec::new();
    let mut infos: Vec<Note> = Vec::new();
    let mut params = plan.params.clone();

    // Every idle tunnel costs the proxy two descriptors, and the limit cannot always be
    // raised (no CAP_SYS_RESOURCE in a container): then fewer tunnels.
    let want = (params.idle_tunnels as u64) * 2 + FD_SLACK;
    let nofile = procfs::raise_fd_limit(want.max(65_536));
    if nofile < want {
        let fit = (nofile.saturating_sub(FD_SLACK) / 2) as usize;
        let note = format!(
            "file-descriptor limit {nofile} (cannot raise it): idle tunnels cut from {} to {fit}",
            params.idle_tunnels
        );
        println!("{note}");
        plan_notes.push(Note {
            group: None,
            text: note,
        });
        params.idle_tunnels = fit.max(1);
    }

    let sluice = plan.sluice.clone();
    let tools = install::ensure(&[NGINX, HAPROXY, WRK]);
    let (nginx, haproxy, wrk) = (tools[0].clone(), tools[1].clone(), tools[2].clone());
    let envoy = if plan.proxies.contains(&Kind::Envoy) {
        install::ensure_envoy()
    } else {
        None
    };
    if wrk.is_none() {
        plan_notes.push(Note::plain(
            "wrk missing: the plain HTTP scenario was skipped".into(),
        ));
    }
    let mut versions = vec![("sluice".to_owned(), install::version(&sluice, "--version"))];
    for (name, path, flag) in [
        ("nginx", &nginx, "-v"),
        ("haproxy", &haproxy, "-v"),
        ("wrk", &wrk, "-v"),
    ] {
        if let Some(p) = path {
            versions.push((name.to_owned(), install::version(p, flag)));
        }
    }
    if let Some(p) = &envoy {
        versions.push(("envoy".to_owned(), install::envoy_version(p)));
    }
    let mut proxies = Vec::new();
    for &kind in &plan.proxies {
        let program = match kind {
            Kind::Sluice => Some(sluice.clone()),
            Kind::Nginx => nginx.clone(),
            Kind::Haproxy => haproxy.clone(),
            Kind::Envoy => envoy.clone(),
        };
        match program {
            Some(p) => proxies.push((kind, p)),
            None => plan_notes.push(Note {
                group: None,
                text: format!("{} missing: skipped", kind.name()),
            }),
        }
    }
    let machine = Machine::probe();
    println!("machine: {}", machine.describe());
    for (name, v) in &versions {
        println!("{name}: {v}");
    }

    let ports = free_ports()?;
    let scratch = std::env::temp_dir().join(format!("sluice-bench-{}", std::process::id()));
    let tls_files = if plan.scenarios.iter().any(|s| s.group() == Group::Tls) {
        Some(tls::generate(&scratch.join("tls"))?)
    } else {
        None
    };
    let mut backend_cmd = child::self_role(params.layout, "backend")?;
    backend_cmd
        .args(["--http-port", &ports.http_backend.to_string()])
        .args(["--ws-port", &ports.ws_backend.to_string()]);
    let mut backend = Running::spawn("backend", backend_cmd)?;
    backend.expect("ready", Duration::from_secs(10))?;
    let direct_addr = format!("127.0.0.1:{}", ports.ws_backend);

    let mut samples = Vec::new();
    let mut direct = Vec::new();
    let plan_notes_len = plan_notes.len();
    let mut notes = plan_notes;
    for round in 1..=plan.rounds {
        println!("round {round}/{}", plan.rounds);
        let base = if plan.scenarios.contains(&Scenario::Latency) {
            let base = scenario::run(
                Scenario::Latency,
                &Target {
                    addr: &direct_addr,
                    pids: &[],
                    tls_ca: None,
                },
                &params,
                None,
            );
            let base = match base {
                Ok(m) => (value(&m, Metric::P50Added), value(&m, Metric::P99Added)),
                Err(e) => {
                    notes.push(Note::plain(format!(
                        "round {round}: direct latency failed: {e}"
                    )));
                    (f64::NAN, f64::NAN)
                }
            };
            println!(
                "  direct to the backend: p50 {:.1} µs, p99 {:.1} µs",
                base.0, base.1
            );
            direct.push(base);
            base
        } else {
            (f64::NAN, f64::NAN)
        };
        for (index, (kind, program)) in proxies.iter().enumerate() {
            let setup = Setup {
                kind: *kind,
                program,
                ports: Ports {
                    proxy: ports.proxy + index as u16,
                    ..ports
                },
                layout: params.layout,
                max_conns: params.idle_tunnels as u64 + 64,
                nofile,
                dir: &scratch.join(kind.name()),
                tls: tls_files.as_ref(),
                wrap: Vec::new(),
            };
            for &scen in &plan.scenarios {
                if matches!(scen, Scenario::Http) && wrk.is_none() {
                    continue;
                }
                let label = format!("round {round} · {} · {}", kind.name(), scen.name());
                let group = Some(scen.group());
                match measure(&setup, scen, &params, wrk.as_deref()) {
                    Ok(mut m) => {
                        subtract_direct(&mut m, base);
                        print_line(&label, &m);
                        if m.errors > 0 {
                            notes.push(Note {
                                group,
                                text: format!(
                                    "{label}: {} errors ({})",
                                    m.errors,
                                    m.note.as_deref().unwrap_or("-")
                                ),
                            });
                        }
                        if let Some(info) = &m.info {
                            println!("    {info}");
                            let text = format!("{} · {}: {info}", kind.name(), scen.name());
                            if !infos.iter().any(|n: &Note| n.text == text) {
                                infos.push(Note { group, text });
                            }
                        }
                        samples.extend(m.values.iter().map(|&(metric, value)| Sample {
                            round,
                            proxy: *kind,
                            metric,
                            value,
                        }));
                    }
                    Err(e) => {
                        println!("  {label}: FAILED: {e}");
                        notes.push(Note {
                            group,
                            text: format!("{label}: failed: {e}"),
                        });
                    }
                }
            }
        }
    }
    if let Err(e) = backend.finish(Duration::from_secs(5)) {
        eprintln!("{e}");
    }
    if notes.len() == plan_notes_len {
        let _ = std::fs::remove_dir_all(&scratch);
    } else {
        println!("configs and proxy logs kept in {}", scratch.display());
    }

    notes.extend(infos);
    let elapsed = started.elapsed();
    let kinds: Vec<Kind> = proxies.iter().map(|(k, _)| *k).collect();
    for (group, dir) in [
        (Group::Plain, plan.out.clone()),
        (Group::Tls, plan.out.join("tls")),
    ] {
        if !plan.scenarios.iter().any(|s| s.group() == group) {
            continue;
        }
        let report = Report {
            group,
            machine: machine.clone(),
            versions: versions.clone(),
            kinds: kinds.clone(),
            samples: samples
                .iter()
                .filter(|s| Report::shows(group, s.metric))
                .cloned()
                .collect(),
            direct: if group == Group::Plain {
                direct.clone()
            } else {
                Vec::new()
            },
            notes: notes
                .iter()
                .filter(|n| n.group.is_none_or(|g| g == group))
                .map(|n| n.text.clone())
                .collect(),
            rounds: plan.rounds,
            quick: plan.quick,
            params: params.clone(),
            elapsed,
        };
        write_report(&report, &dir)?;
    }
    Ok(())
}

/// A line for the notes, and the report it belongs in (`None`: every report).
struct Note {
    group: Option<Group>,
    text: String,
}

impl Note {
    fn plain(text: String) -> Note {
        Note {
            group: Some(Group::Plain),
            text,
        }
    }
}

/// `latest.md`, `latest.csv` and `latest.svg` in `dir`; the Markdown is printed too.
fn write_report(report: &Report, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let markdown = report.markdown();
    let md_path = dir.join("latest.md");
    std::fs::write(&md_path, &markdown).map_err(|e| format!("{}: {e}", md_path.display()))?;
    let csv_path = dir.join("latest.csv");
    std::fs::write(&csv_path, report.csv()).map_err(|e| format!("{}: {e}", csv_path.display()))?;
    let svg_path = dir.join("latest.svg");
    chart::draw(report, &svg_path)?;
    println!("\n{markdown}");
    println!(
        "written: {}, {}, {}",
        md_path.display(),
        csv_path.display(),
        svg_path.display()
    );
    Ok(())
}

/// Starts a fresh proxy (terminating TLS for the TLS scenarios), runs one scenario through
/// it, stops it.
fn measure(setup: &Setup, scen: Scenario, params: &Params, wrk: Option<&Path>) -> Result<Measured> {
    let tls = scen.group() == Group::Tls;
    let proxy = setup.start(tls)?;
    let target = Target {
        addr: &proxy.addr,
        pids: proxy.pids(),
        tls_ca: if tls {
            setup.tls.map(|f| f.ca.as_path())
        } else {
            None
        },
    };
    let result = scenario::run(scen, &target, params, wrk);
    proxy.stop();
    result
}

/// Latency scenarios measure raw percentiles; the report wants what the proxy adds.
fn subtract_direct(m: &mut Measured, (p50, p99): (f64, f64)) {
    for (metric, value) in &mut m.values {
        match metric {
            Metric::P50Added => *value -= p50,
            Metric::P99Added => *value -= p99,
            _ => {}
        }
    }
}

fn value(m: &Measured, metric: Metric) -> f64 {
    m.values
        .iter()
        .find(|(k, _)| *k == metric)
        .map_or(f64::NAN, |(_, v)| *v)
}

fn print_line(label: &str, m: &Measured) {
    let parts: Vec<String> = m
        .values
        .iter()
        .map(|(k, v)| format!("{} {:.1}", k.key(), v))
        .collect();
    let errors = if m.errors > 0 {
        format!(" ({} errors)", m.errors)
    } else {
        String::new()
    };
    println!("  {label}: {}{errors}", parts.join(", "));
}

/// Consecutive free ports: HTTP backend, WebSocket backend, and one per proxy.
pub fn free_ports() -> Result<Ports> {
    let count = 2 + Kind::ALL.len() as u16;
    for base in [18_180u16, 28_180, 38_180, 48_180] {
        let all_free = (0..count).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if all_free {
            return Ok(Ports {
                http_backend: base,
                ws_backend: base + 1,
                proxy: base + 2,
            });
        }
    }
    Err(format!(
        "no block of {count} free ports found at 18180, 28180, 38180 or 48180"
    ))
}
