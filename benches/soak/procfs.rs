//! What the soak reads from `/proc` about a process (RSS, peak RSS, open descriptors), the
//! file-descriptor limit it raises for itself and its children, and signals to its children.

use std::fs;

use crate::Result;

/// One `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`), in KiB.
fn status_kib(pid: u32, key: &str) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| format!("/proc/{pid}/status: no {key}"))
}

/// Resident set size now, in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmRSS")
}

/// The highest resident set size the process has had, in KiB (`VmHWM`).
pub fn peak_rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmHWM")
}

/// How many descriptors the process holds open (entries of `/proc/PID/fd`).
pub fn fd_count(pid: u32) -> Result<usize> {
    let dir =
        fs::read_dir(format!("/proc/{pid}/fd")).map_err(|e| format!("/proc/{pid}/fd: {e}"))?;
    Ok(dir.filter(|e| e.is_ok()).count())
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (children inherit it); returns it.
pub fn raise_nofile_to_hard() -> Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(format!(
            "getrlimit(RLIMIT_NOFILE): {}",
            std::io::Error::last_os_error()
        ));
    }
    if lim.rlim_cur >= lim.rlim_max {
        return Ok(lim.rlim_cur);
    }
    let raised = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Err(format!(
            "setrlimit(RLIMIT_NOFILE, {}): {}",
            lim.rlim_max,
            std::io::Error::last_os_error()
        ));
    }
    Ok(raised.rlim_cur)
}

/// Sends a signal to one process this soak started, by its PID.
pub fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill has no memory preconditions; the PID is one of our own children,
        // not yet reaped (the caller still holds its handle).
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// KiB as MiB with one decimal, for the report lines.
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}
