//! What the orchestrator reads from `/proc` about a proxy: CPU time, RSS, worker PIDs; and
//! the file-descriptor limit it raises for itself and its children.

use std::fs;

use crate::Result;

/// Clock ticks per second, the unit of `utime`/`stime` in `/proc/PID/stat`.
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// `/proc/PID/stat` split after the command name (which may hold spaces): field 3 onwards.
fn stat_fields(pid: u32) -> Result<Vec<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    let after = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| format!("/proc/{pid}/stat: unexpected format"))?;
    Ok(after.split_whitespace().map(str::to_owned).collect())
}

/// User + system CPU of these processes (all their threads), in seconds.
pub fn cpu_seconds(pids: &[u32]) -> Result<f64> {
    let mut ticks = 0u64;
    for &pid in pids {
        let f = stat_fields(pid)?;
        // After the `)`: state is field 3, utime field 14, stime field 15.
        let field = |i: usize| -> Result<u64> {
            f.get(i - 3)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("/proc/{pid}/stat: no field {i}"))
        };
        ticks += field(14)? + field(15)?;
    }
    Ok(ticks as f64 / clock_ticks())
}

/// Resident set size of these processes together, in KiB (`VmRSS`).
pub fn rss_kib(pids: &[u32]) -> Result<u64> {
    let mut total = 0;
    for &pid in pids {
        let status = fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| format!("/proc/{pid}/status: no VmRSS"))?;
        total += kib;
    }
    Ok(total)
}

/// Direct children of `pid` (nginx's workers under its master).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| {
            stat_fields(p)
                .ok()
                .and_then(|f| f.get(1)?.parse::<u32>().ok())
                == Some(pid)
        })
        .collect()
}

/// Whether a process still exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    stat_fields(pid)
        .map(|f| f.first().map(String::as_str) != Some("Z"))
        .unwrap_or(false)
}

/// Raises RLIMIT_NOFILE (soft and, as root, hard) to `want`; returns the soft limit now in
/// force, which children inherit.
pub fn raise_fd_limit(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    let raised = libc::rlimit {
        rlim_cur: want.max(lim.rlim_cur),
        rlim_max: want.max(lim.rlim_max),
    };
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        return raised.rlim_cur;
    }
    // Not allowed past the hard limit: take the soft limit up to it.
    let capped = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &capped) } == 0 {
        capped.rlim_cur
    } else {
        lim.rlim_cur
    }
}

/// Sends a signal to one process we started.
pub fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill has no memory preconditions; the PID is one of our own children.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}
