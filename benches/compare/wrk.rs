//! Plain HTTP keep-alive load with wrk, pinned to the load cores, and its output parsed.

use std::path::Path;
use std::process::Stdio;

use crate::child::{pinned, Layout};
use crate::Result;

/// What one wrk run did.
pub struct Outcome {
    pub requests: f64,
    pub secs: f64,
    /// Non-2xx answers plus socket errors.
    pub errors: u64,
}

/// Runs `wrk -t1 -c{conns} -d{secs}s` against `url`.
pub fn run(wrk: &Path, layout: Layout, url: &str, conns: u32, secs: u32) -> Result<Outcome> {
    let out = pinned(&layout.load_cpus(), &wrk.to_string_lossy())
        .args(["-t1", &format!("-c{conns}"), &format!("-d{secs}s"), url])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run wrk: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "wrk failed ({}): {}{}",
            out.status,
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    parse(&text)
}

/// Reads "N requests in 10.00s, …", "Non-2xx or 3xx responses: N" and
/// "Socket errors: connect A, read B, write C, timeout D".
fn parse(text: &str) -> Result<Outcome> {
    let line = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .ok_or_else(|| format!("wrk: no request count in its output: {text}"))?;
    let mut words = line.split_whitespace();
    let requests: f64 = words
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("wrk: cannot read `{line}`"))?;
    let span = words
        .nth(2)
        .map(|s| s.trim_end_matches(','))
        .ok_or_else(|| format!("wrk: cannot read `{line}`"))?;
    let secs = duration(span).ok_or_else(|| format!("wrk: cannot read duration `{span}`"))?;
    let mut errors = 0;
    for l in text.lines().map(str::trim) {
        if let Some(n) = l.strip_prefix("Non-2xx or 3xx responses:") {
            errors += n.trim().parse::<u64>().unwrap_or(0);
        }
        if let Some(list) = l.strip_prefix("Socket errors:") {
            errors += list
                .split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    Ok(Outcome {
        requests,
        secs,
        errors,
    })
}

/// wrk's durations: "10.00s", "1.00m", "500.00ms".
fn duration(s: &str) -> Option<f64> {
    if let Some(ms) = s.strip_suffix("ms") {
        return ms.parse::<f64>().ok().map(|v| v / 1000.0);
    }
    if let Some(sec) = s.strip_suffix('s') {
        return sec.parse().ok();
    }
    if let Some(min) = s.strip_suffix('m') {
        return min.parse::<f64>().ok().map(|v| v * 60.0);
    }
    None
}
