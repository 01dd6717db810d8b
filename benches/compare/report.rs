//! The numbers of one group of scenarios (plain or TLS) of a run, summarised: medians,
//! min–max, ratios; as Markdown and as CSV.

use std::fmt::Write as _;
use std::time::Duration;

use crate::machine::Machine;
use crate::proxy::Kind;
use crate::scenario::{Group, Metric, Params};

/// One measured value: one metric, one proxy, one round.
#[derive(Clone)]
pub struct Sample {
    pub round: usize,
    pub proxy: Kind,
    pub metric: Metric,
    pub value: f64,
}

pub struct Report {
    /// Which scenarios this report is about.
    pub group: Group,
    pub machine: Machine,
    pub versions: Vec<(String, String)>,
    pub kinds: Vec<Kind>,
    pub samples: Vec<Sample>,
    /// Direct-to-backend latency per round: (p50, p99) in µs.
    pub direct: Vec<(f64, f64)>,
    pub notes: Vec<String>,
    pub rounds: usize,
    pub quick: bool,
    pub params: Params,
    pub elapsed: Duration,
}

/// Median and range of one metric for one proxy.
#[derive(Clone, Copy)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(values: &[f64]) -> Option<Summary> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        };
        Some(Summary {
            median,
            min: v[0],
            max: v[v.len() - 1],
        })
    }
}

/// The plain figures the TLS report shows beside its own, when the same run measured them.
const PLAIN_BESIDE_TLS: [(Metric, Metric); 2] = [
    (Metric::Wss64Cpu, Metric::Echo64Cpu),
    (Metric::WssIdleKib, Metric::IdleKib),
];

impl Report {
    /// Whether a report of `group` shows `metric`: its own metrics, and in the TLS report
    /// the plain counterparts of its CPU per message and memory per tunnel.
    pub fn shows(group: Group, metric: Metric) -> bool {
        metric.group() == group
            || (group == Group::Tls && PLAIN_BESIDE_TLS.iter().any(|(_, p)| *p == metric))
    }

    /// The rows of this report: its metrics that have samples, in order, each plain
    /// counterpart right after its TLS metric.
    pub fn metrics(&self) -> Vec<Metric> {
        let mut order = Vec::new();
        for metric in Metric::ALL.into_iter().filter(|m| m.group() == self.group) {
            order.push(metric);
            if self.group == Group::Tls {
                order.extend(
                    PLAIN_BESIDE_TLS
                        .iter()
                        .filter(|(t, _)| *t == metric)
                        .map(|(_, p)| *p),
                );
            }
        }
        order
            .into_iter()
            .filter(|&m| self.samples.iter().any(|s| s.metric == m))
            .collect()
    }

    /// A row's name; a plain metric in the TLS report says so.
    pub fn label(&self, metric: Metric) -> String {
        if self.group == Group::Tls && metric.group() == Group::Plain {
            format!("plain, same run: {}", metric.label())
        } else {
            metric.label().to_owned()
        }
    }

    pub fn values(&self, kind: Kind, metric: Metric) -> Vec<f64> {
        self.samples
            .iter()
            .filter(|s| s.proxy == kind && s.metric == metric)
            .map(|s| s.value)
            .collect()
    }

    pub fn summary(&self, kind: Kind, metric: Metric) -> Option<Summary> {
        Summary::of(&self.values(kind, metric))
    }

    pub fn versions_line(&self) -> String {
        self.versions
            .iter()
            .map(|(n, v)| {
                if v.to_lowercase().contains(n.as_str()) {
                    v.clone()
                } else {
                    format!("{n} {v}")
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn plan_line(&self) -> String {
        let p = &self.params;
        if self.group == Group::Tls {
            return format!(
                "{} round(s){}; TLS 1.3 (the client offers nothing else), ECDSA P-256 certificate; \
                 full and resumed handshakes: {} connections each, {} in flight, one GET each; \
                 wss echo {} s × {} conns; {} idle wss tunnels; run took {:.0} s",
                self.rounds,
                if self.quick { " (--quick)" } else { "" },
                p.tls_handshakes,
                p.tls_inflight,
                p.echo_secs,
                p.echo_conns,
                p.idle_tunnels,
                self.elapsed.as_secs_f64()
            );
        }
        format!(
            "{} round(s){}; HTTP {} s × {} conns (wrk); WS echo {} s × {} conns; latency {} s at {} msg/s; \
             storm {} handshakes, {} in flight; {} idle tunnels; run took {:.0} s",
            self.rounds,
            if self.quick { " (--quick)" } else { "" },
            p.http_secs,
            p.http_conns,
            p.echo_secs,
            p.echo_conns,
            p.latency_secs,
            p.latency_rate,
            p.storm_total,
            p.storm_inflight,
            p.idle_tunnels,
            self.elapsed.as_secs_f64()
        )
    }

    /// Where the proxy and the load ran, for the header.
    pub fn layout_line(&self) -> String {
        let layout = self.params.layout;
        if layout.workers == 1 {
            return "one worker pinned to core 0; backends and load generators on core 1".into();
        }
        let proxy = format!(
            "{} workers pinned to cores {}",
            layout.workers,
            layout.proxy_cpus()
        );
        if layout.load_apart() {
            format!(
                "{proxy}; backends and load generators on cores {}",
                layout.load_cpus()
            )
        } else {
            format!(
                "{proxy}; backends and load generators have no core of their own: they run \
                 on all {} cores (affinity {}, the same as unpinned), shared with the proxy",
                layout.cores,
                layout.load_cpus()
            )
        }
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let title = match self.group {
            Group::Plain => "sluice, nginx, HAProxy and Envoy side by side",
            Group::Tls => "sluice, nginx, HAProxy and Envoy side by side, terminating TLS",
        };
        let _ = writeln!(md, "# {title}: {}\n", self.machine.date);
        let _ = writeln!(md, "- Machine: {}", self.machine.describe());
        let _ = writeln!(md, "- Versions: {}", self.versions_line());
        let _ = writeln!(md, "- Plan: {}", self.plan_line());
        let _ = writeln!(
            md,
            "- Each proxy: {}. \
             Values: median (min–max) over rounds; ratios are of medians. CPU is the proxy's \
             user+system time over the measured window. See benches/README.md for the method.\n",
            self.layout_line()
        );
        let mut head = "| metric |".to_owned();
        let mut rule = "|---|".to_owned();
        for k in &self.kinds {
            let _ = write!(head, " {} |", k.name());
            rule.push_str("---:|");
        }
        let others: Vec<Kind> = self
            .kinds
            .iter()
            .copied()
            .filter(|&k| k != Kind::Sluice)
            .collect();
        let with_sluice = self.kinds.contains(&Kind::Sluice);
        if with_sluice {
            for k in &others {
                let _ = write!(head, " sluice/{} |", k.name());
                rule.push_str("---:|");
            }
        }
        let _ = writeln!(md, "{head}\n{rule}");
        for metric in self.metrics() {
            let mut row = format!("| {} |", self.label(metric));
            for &k in &self.kinds {
                match self.summary(k, metric) {
                    Some(s) => {
                        let _ = write!(
                            row,
                            " {} ({}–{}) |",
                            number(s.median),
                            number(s.min),
                            number(s.max)
                        );
                    }
                    None => row.push_str(" – |"),
                }
            }
            if with_sluice {
                for &k in &others {
                    let _ = write!(row, " {} |", self.ratio(metric, k));
                }
            }
            let _ = writeln!(md, "{row}");
        }
        let p50: Vec<f64> = self.direct.iter().map(|d| d.0).collect();
        let p99: Vec<f64> = self.direct.iter().map(|d| d.1).collect();
        if let (Some(a), Some(b)) = (Summary::of(&p50), Summary::of(&p99)) {
            let _ = writeln!(
                md,
                "\nDirect to the backend (the latency baseline): p50 {} µs ({}–{}), p99 {} µs ({}–{}).",
                number(a.median),
                number(a.min),
                number(a.max),
                number(b.median),
                number(b.min),
                number(b.max)
            );
        }
        let _ = writeln!(
            md,
            "\nLower is better for CPU, latency and memory; higher for rates. A ratio below 1× \
             means sluice uses less (or, for rates, achieves less) than the other proxy."
        );
        self.tls_over_plain(&mut md);
        self.every_round(&mut md);
        if !self.notes.is_empty() {
            let _ = writeln!(md, "\n## Notes\n");
            for n in &self.notes {
                let _ = writeln!(md, "- {n}");
            }
        }
        md
    }

    fn ratio(&self, metric: Metric, other: Kind) -> String {
        match (
            self.summary(Kind::Sluice, metric),
            self.summary(other, metric),
        ) {
            (Some(a), Some(b)) if b.median.abs() > f64::EPSILON => {
                format!("{:.2}×", a.median / b.median)
            }
            _ => "–".into(),
        }
    }

    /// TLS report: what terminating TLS adds, per proxy, against the plain figures of the
    /// same run (medians).
    fn tls_over_plain(&self, md: &mut String) {
        if self.group != Group::Tls {
            return;
        }
        let mut rows = String::new();
        for k in &self.kinds {
            let pair = |(t, p): (Metric, Metric)| {
                self.summary(*k, t)
                    .zip(self.summary(*k, p))
                    .map(|(t, p)| (t.median, p.median))
            };
            let cpu = pair(PLAIN_BESIDE_TLS[0]).map_or("–".into(), |(t, p)| {
                format!("{} → {} ({:.2}×)", number(p), number(t), t / p)
            });
            let kib = pair(PLAIN_BESIDE_TLS[1]).map_or("–".into(), |(t, p)| {
                format!("{} → {} (+{})", number(p), number(t), number(t - p))
            });
            let _ = writeln!(rows, "| {} | {cpu} | {kib} |", k.name());
        }
        if rows.lines().all(|r| r.ends_with("| – | – |")) {
            return;
        }
        let _ = write!(
            md,
            "\n## TLS over plain, same run\n\n| proxy | CPU µs per 64 B message: ws → wss | \
             RSS KiB per idle tunnel: ws → wss |\n|---|---:|---:|\n{rows}"
        );
    }

    fn every_round(&self, md: &mut String) {
        let _ = writeln!(md, "\n## Every round\n");
        let mut head = "| metric | proxy |".to_owned();
        let mut rule = "|---|---|".to_owned();
        for r in 1..=self.rounds {
            let _ = write!(head, " round {r} |");
            rule.push_str("---:|");
        }
        let _ = writeln!(md, "{head}\n{rule}");
        for metric in self.metrics() {
            for &k in &self.kinds {
                let mut row = format!("| {} | {} |", metric.key(), k.name());
                for r in 1..=self.rounds {
                    let v = self
                        .samples
                        .iter()
                        .find(|s| s.proxy == k && s.metric == metric && s.round == r)
                        .map_or("–".to_owned(), |s| number(s.value));
                    let _ = write!(row, " {v} |");
                }
                let _ = writeln!(md, "{row}");
            }
        }
    }

    /// Every sample, one per line: round, proxy, metric, value.
    pub fn csv(&self) -> String {
        let mut out = "round,proxy,metric,value\n".to_owned();
        for s in &self.samples {
            let _ = writeln!(
                out,
                "{},{},{},{}",
                s.round,
                s.proxy.name(),
                s.metric.key(),
                s.value
            );
        }
        for (i, (p50, p99)) in self.direct.iter().enumerate() {
            let _ = writeln!(out, "{},direct,p50_us,{p50}", i + 1);
            let _ = writeln!(out, "{},direct,p99_us,{p99}", i + 1);
        }
        out
    }
}

/// Three significant digits at most, thousands without decimals.
pub fn number(x: f64) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    let a = x.abs();
    if a >= 1000.0 {
        group(x.round() as i64)
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn group(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}
