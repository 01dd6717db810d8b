//! The soak's two child processes: the echo backend (this binary again, `--backend`) and
//! sluice itself (`sluice run -c FILE`). Both are started with `kill_on_drop`, so every way
//! out of the soak (an error, a timeout, Ctrl-C, a panic) kills them by PID; the normal way
//! out stops them gracefully first. Every wait here has a deadline.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::{sleep, timeout, Instant};

use crate::procfs;
use crate::Result;

/// The echo backend, a child process.
pub struct Backend {
    child: Child,
    /// Closing it tells the backend to exit.
    stdin: Option<ChildStdin>,
    /// Kept open so a late line from the backend never meets a closed pipe.
    _stdout: BufReader<ChildStdout>,
    pub pid: u32,
    pub addr: String,
}

impl Backend {
    /// Starts this binary as `--backend` and waits (10 s at most) for its `ready ADDR`.
    pub async fn start(max_life: Duration) -> Result<Backend> {
        let exe =
            std::env::current_exe().map_err(|e| format!("cannot find the soak binary: {e}"))?;
        let mut child = Command::new(exe)
            .arg("--backend")
            .arg("--max-life")
            .arg(max_life.as_secs().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start the echo backend: {e}"))?;
        let pid = child.id().ok_or("the echo backend exited as it started")?;
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .ok_or("the echo backend has no stdout")?;
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        match timeout(Duration::from_secs(10), stdout.read_line(&mut line)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(Ok(_)) => return Err("the echo backend exited before it was ready".into()),
            Ok(Err(e)) => return Err(format!("the echo backend's stdout: {e}")),
            Err(_) => return Err("the echo backend was not ready within 10 s".into()),
        }
        let addr = line
            .trim()
            .strip_prefix("ready ")
            .ok_or_else(|| format!("the echo backend said {:?}, not `ready ADDR`", line.trim()))?
            .to_owned();
        Ok(Backend {
            child,
            stdin,
            _stdout: stdout,
            pid,
            addr,
        })
    }

    /// Closes its stdin and waits up to 5 s for it to exit; kills it past that.
    pub async fn stop(mut self) -> Result<()> {
        self.stdin = None;
        match timeout(Duration::from_secs(5), self.child.wait()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("echo backend: cannot wait for it: {e}")),
            Err(_) => {
                let _ = self.child.kill().await;
                Err("echo backend: did not exit within 5 s of its stdin closing; killed".into())
            }
        }
    }
}

/// sluice, a child process.
pub struct Sluice {
    child: Child,
    pub pid: u32,
    pub addr: String,
    pub log: PathBuf,
}

/// The config the soak runs sluice with: one listener, one pool of one server, one route.
pub fn config(listen: &str, backend: &str) -> String {
    format!(
        r#"# Written by benches/soak: one listener, one route to one WebSocket echo backend.
[proxy]
shutdown_timeout = "2s"

[[listener]]
addr = "{listen}"

[upstream.echo]
servers = ["{backend}"]
# A single server: never take it out of the pool.
max_fails = 0

[[route]]
path = "/"
upstream = "echo"
"#
    )
}

impl Sluice {
    /// Writes the config into `dir`, starts `program run -c FILE` with its stderr in
    /// `dir/sluice.log`, and waits (10 s at most) until it accepts connections.
    pub async fn start(program: &Path, dir: &Path, backend: &str) -> Result<Sluice> {
        let listen = free_loopback_port()?;
        let file = dir.join("sluice.toml");
        std::fs::write(&file, config(&listen, backend))
            .map_err(|e| format!("{}: {e}", file.display()))?;
        let log = dir.join("sluice.log");
        let out = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let mut child = Command::new(program)
            .arg("run")
            .arg("-c")
            .arg(&file)
            .env("RUST_LOG", "info,access=off")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        let pid = child.id().ok_or("sluice exited as it started")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "sluice exited at start ({status}); {}: {}",
                    log.display(),
                    log_tail(&log)
                ));
            }
            if tokio::net::TcpStream::connect(&listen).await.is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "sluice did not listen on {listen} within 10 s; {}: {}",
                    log.display(),
                    log_tail(&log)
                ));
            }
            sleep(Duration::from_millis(20)).await;
        }
        Ok(Sluice {
            child,
            pid,
            addr: listen,
            log,
        })
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then up to 10 s for it to drain and exit (its `shutdown_timeout` is 2 s);
    /// killed past that. Returns how it exited.
    pub async fn stop(mut self) -> Result<String> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Err(format!("sluice had already exited ({status})"));
        }
        procfs::signal(self.pid, libc::SIGTERM);
        match timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(format!("exited 0 on SIGTERM ({status})")),
            Ok(Ok(status)) => Err(format!("sluice exited on SIGTERM with {status}")),
            Ok(Err(e)) => Err(format!("sluice: cannot wait for it: {e}")),
            Err(_) => {
                let _ = self.child.kill().await;
                Err("sluice did not exit within 10 s of SIGTERM; killed".into())
            }
        }
    }
}

/// `sluice --version`, or why not (5 s at most).
pub async fn version(program: &Path) -> String {
    let run = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    match timeout(Duration::from_secs(5), run).await {
        Ok(Ok(out)) if out.status.success() => {
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        }
        Ok(Ok(out)) => format!("`--version` failed ({})", out.status),
        Ok(Err(e)) => format!("cannot run it: {e}"),
        Err(_) => "`--version` timed out".into(),
    }
}

/// A loopback address with a port that was free a moment ago (bound to port 0, then let go).
fn free_loopback_port() -> Result<String> {
    let probe = std::net::TcpListener::bind(("127.0.0.1", 0))
        .map_err(|e| format!("cannot find a free port on 127.0.0.1: {e}"))?;
    let addr = probe
        .local_addr()
        .map_err(|e| format!("cannot find a free port on 127.0.0.1: {e}"))?;
    Ok(addr.to_string())
}

/// The last lines of sluice's log, for an error message.
pub fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
    if tail.is_empty() {
        "(empty)".into()
    } else {
        tail
    }
}
