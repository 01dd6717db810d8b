//! Finding nginx, HAProxy and wrk, installing them with apt-get when missing, and their
//! versions for the report.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A program the comparison uses, and the Debian package that brings it.
#[derive(Clone, Copy)]
pub struct Tool {
    pub program: &'static str,
    pub package: &'static str,
}

pub const NGINX: Tool = Tool {
    program: "nginx",
    package: "nginx",
};
pub const HAPROXY: Tool = Tool {
    program: "haproxy",
    package: "haproxy",
};
pub const WRK: Tool = Tool {
    program: "wrk",
    package: "wrk",
};

/// Looks for a program on PATH and in the sbin directories (root's tools live there).
pub fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"])
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file());
    found
}

/// Finds each tool, installing the missing ones with apt-get (one attempt, and one more
/// after `apt-get update`). Returns each tool's path, or `None` with the reason printed.
pub fn ensure(tools: &[Tool]) -> Vec<Option<PathBuf>> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|t| find(t.program).is_none())
        .map(|t| t.package)
        .collect();
    if !missing.is_empty() {
        println!("installing with apt-get: {}", missing.join(" "));
        if !apt_install(&missing) {
            println!("apt-get install failed; running apt-get update and trying again");
            let _ = apt(&["update", "-q"]);
            let _ = apt_install(&missing);
        }
    }
    tools
        .iter()
        .map(|t| {
            let found = find(t.program);
            if found.is_none() {
                println!(
                    "SKIPPING {}: not installed and `apt-get install {}` did not provide it",
                    t.program, t.package
                );
            }
            found
        })
        .collect()
}

fn apt_install(packages: &[&str]) -> bool {
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend_from_slice(packages);
    apt(&args)
}

fn apt(args: &[&str]) -> bool {
    Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The first line a program prints for its version flag (on stdout or stderr).
pub fn version(program: &Path, flag: &str) -> String {
    let Ok(out) = Command::new(program)
        .arg(flag)
        .stdin(Stdio::null())
        .output()
    else {
        return "unknown".into();
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("unknown");
    // Keep it short: "nginx version: nginx/1.22.1" → "nginx/1.22.1", wrk's copyright dropped.
    let line = line.rsplit(": ").next().unwrap_or(line);
    let line = line.split(" Copyright").next().unwrap_or(line);
    // HAProxy: "HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://haproxy.org/".
    let line = line.split(" - ").next().unwrap_or(line);
    line.trim().to_owned()
}
