//! The orchestrator's children and the line protocol it speaks with the load generators.
//!
//! A load generator sets up (connects), prints `ready`, waits for `go` on stdin, runs, and
//! prints one `result key=value …` line. The orchestrator snapshots the proxy's CPU between
//! `ready` and `go` and again after `result`, so the window holds the measured traffic and
//! nothing of the set-up. Every wait here has a deadline; a child that misses one is killed.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use crate::Result;

/// Which cores the proxy gets and which the load generators and backends get.
///
/// One worker (the default): the proxy on core 0, everything else on core 1. `workers`
/// workers: the proxy on cores `0..workers`; the rest on the cores left over, or, when the
/// proxy has every core, on all of them (shared with the proxy).
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub workers: usize,
    pub cores: usize,
}

impl Layout {
    /// `workers` proxy workers on a machine with `cores` cores: at least one, at most one
    /// per core, and one core left for the load when there is a single worker.
    pub fn new(workers: usize, cores: usize) -> Result<Layout> {
        if workers == 0 {
            return Err("--workers must be at least 1".into());
        }
        if workers > cores {
            return Err(format!(
                "--workers {workers}: this machine has {cores} core(s); at most one worker per core"
            ));
        }
        if workers == 1 && cores < 2 {
            return Err("one worker needs two cores: one for the proxy, one for the load".into());
        }
        Ok(Layout { workers, cores })
    }

    /// The proxy's cores, for `taskset -c`: `0`, `0,1`, `0,1,2`, …
    pub fn proxy_cpus(self) -> String {
        let list: Vec<String> = (0..self.workers).map(|c| c.to_string()).collect();
        list.join(",")
    }

    /// Whether the load generators and backends have cores of their own.
    pub fn load_apart(self) -> bool {
        self.workers < self.cores
    }

    /// The cores of the load generators and backends, for `taskset -c`: `1` with one
    /// worker, the cores the proxy does not have with more, all of them when it has all.
    pub fn load_cpus(self) -> String {
        if self.workers == 1 {
            return "1".into();
        }
        let first = if self.load_apart() { self.workers } else { 0 };
        let list: Vec<String> = (first..self.cores).map(|c| c.to_string()).collect();
        list.join(",")
    }
}

/// A command pinned to some cores with `taskset` (which execs, so the PID is the program's).
pub fn pinned(cpus: &str, program: &str) -> Command {
    let mut cmd = Command::new("taskset");
    cmd.arg("-c").arg(cpus).arg(program);
    cmd
}

/// This benchmark binary, pinned to the load cores, as one of its own children.
pub fn self_role(layout: Layout, role: &str) -> Result<Command> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the bench binary: {e}"))?;
    let mut cmd = pinned(&layout.load_cpus(), &exe.to_string_lossy());
    cmd.arg(role);
    Ok(cmd)
}

/// A running child whose stdout lines arrive on a channel.
pub struct Running {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Running {
    /// Starts `cmd` with piped stdin and stdout (stderr is inherited, for its errors).
    pub fn spawn(name: &str, mut cmd: Command) -> Result<Running> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| format!("{name}: no stdout"))?;
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Running {
            name: name.to_owned(),
            child,
            stdin,
            lines,
        })
    }

    /// Waits for a line starting with `word`; other lines are echoed as notes.
    pub fn expect(&mut self, word: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.split_whitespace().next() == Some(word) => return Ok(line),
                Ok(line) => println!("    [{}] {line}", self.name),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!("{}: no `{word}` within {timeout:?}", self.name))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!("{}: exited before `{word}`", self.name))
                }
            }
        }
    }

    /// Sends one line on the child's stdin.
    pub fn send(&mut self, line: &str) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| format!("{}: stdin closed", self.name))?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("{}: cannot write to it: {e}", self.name))
    }

    /// Closes stdin (the signal to stop for children that hold connections) and waits up to
    /// `timeout` for the exit; kills the child past it.
    pub fn finish(mut self, timeout: Duration) -> Result<()> {
        self.stdin = None;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) => thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(format!("{}: cannot wait for it: {e}", self.name)),
            }
        }
        Err(format!(
            "{}: did not exit within {timeout:?}; killed",
            self.name
        ))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Parses `result key=value …` into its pairs.
pub fn fields(line: &str) -> HashMap<String, String> {
    line.split_whitespace()
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// One numeric field of a `result` line.
pub fn number(fields: &HashMap<String, String>, key: &str) -> Result<f64> {
    fields
        .get(key)
        .ok_or_else(|| format!("result has no `{key}`"))?
        .parse()
        .map_err(|e| format!("result `{key}` is not a number: {e}"))
}

/// Child side: announce readiness and wait for `go` (or stdin closing, which aborts).
pub fn ready_then_wait_for_go(note: &str) -> Result<()> {
    println!("ready {note}");
    std::io::stdout()
        .flush()
        .map_err(|e| format!("stdout: {e}"))?;
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| format!("stdin: {e}"))?;
    if line.trim() == "go" {
        Ok(())
    } else {
        Err("the orchestrator went away before `go`".into())
    }
}

/// Child side: the result line.
pub fn report(pairs: &[(&str, String)]) {
    let body: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("result {}", body.join(" "));
}
