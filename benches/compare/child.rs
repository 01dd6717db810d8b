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

/// The core the proxies run on, and the one for everything else.
pub const PROXY_CORE: &str = "0";
pub const LOAD_CORE: &str = "1";

/// A command pinned to one core with `taskset` (which execs, so the PID is the program's).
pub fn pinned(core: &str, program: &str) -> Command {
    let mut cmd = Command::new("taskset");
    cmd.arg("-c").arg(core).arg(program);
    cmd
}

/// This benchmark binary, pinned to the load core, as one of its own children.
pub fn self_role(role: &str) -> Result<Command> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the bench binary: {e}"))?;
    let mut cmd = pinned(LOAD_CORE, &exe.to_string_lossy());
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
