//! The three proxies: their configs (templates in `configs/`, terminating TLS or not), how
//! each is started pinned to the proxy cores with as many workers as cores, which PIDs
//! make it up, and how it is stopped.

use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::child::{pinned, Layout};
use crate::procfs;
use crate::tls::Files;
use crate::Result;

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Kind {
    Sluice,
    Nginx,
    Haproxy,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Sluice, Kind::Nginx, Kind::Haproxy];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Sluice => "sluice",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
        }
    }

    fn template(self) -> (&'static str, &'static str) {
        match self {
            Kind::Sluice => ("sluice.toml", include_str!("configs/sluice.toml")),
            Kind::Nginx => ("nginx.conf", include_str!("configs/nginx.conf")),
            Kind::Haproxy => ("haproxy.cfg", include_str!("configs/haproxy.cfg")),
        }
    }

    /// What makes the listener terminate TLS with `files`: the text for `{ssl}` (after the
    /// listen address) and for the `{tls}` line (indented settings).
    fn tls_settings(self, files: &Files) -> (String, String) {
        let path = |p: &Path| p.to_string_lossy().into_owned();
        match self {
            Kind::Sluice => (
                String::new(),
                format!(
                    "tls = {{ cert = \"{}\", key = \"{}\" }}",
                    path(&files.cert),
                    path(&files.key)
                ),
            ),
            Kind::Nginx => (
                " ssl".into(),
                [
                    format!("ssl_certificate {};", path(&files.cert)),
                    format!("ssl_certificate_key {};", path(&files.key)),
                    "ssl_protocols TLSv1.2 TLSv1.3;".into(),
                    "ssl_session_cache shared:SSL:10m;".into(),
                    "ssl_session_tickets on;".into(),
                ]
                .map(|l| format!("        {l}"))
                .join("\n"),
            ),
            Kind::Haproxy => (
                format!(
                    " ssl crt {} ssl-min-ver TLSv1.2 ssl-max-ver TLSv1.3 alpn http/1.1",
                    path(&files.combined)
                ),
                String::new(),
            ),
        }
    }
}

/// Where everything listens.
#[derive(Clone, Copy)]
pub struct Ports {
    pub http_backend: u16,
    pub ws_backend: u16,
    pub proxy: u16,
}

/// What a proxy needs to be started.
pub struct Setup<'a> {
    pub kind: Kind,
    /// The program (sluice's from Cargo, the others as found on PATH).
    pub program: &'a Path,
    pub ports: Ports,
    /// The proxy's workers (nginx processes, HAProxy threads, tokio workers) and cores.
    pub layout: Layout,
    /// Client connections the proxy must hold at once (twice as many sockets: each has an
    /// upstream connection too).
    pub max_conns: u64,
    /// The fd limit children inherit.
    pub nofile: u64,
    /// A scratch directory for config, logs, pid and temp files.
    pub dir: &'a Path,
    /// The certificate and key for the TLS scenarios.
    pub tls: Option<&'a Files>,
}

/// A running proxy.
pub struct Proxy {
    pub kind: Kind,
    child: Child,
    /// Every process of the proxy (nginx: master and worker).
    pids: Vec<u32>,
    pub addr: String,
}

impl Setup<'_> {
    /// The config file for this proxy, written into the scratch directory; with `tls`, its
    /// listener terminates TLS.
    pub fn write_config(&self, tls: bool) -> Result<PathBuf> {
        let (name, template) = self.kind.template();
        let (ssl, settings) = match (tls, self.tls) {
            (false, _) => (String::new(), None),
            (true, Some(files)) => {
                let (ssl, settings) = self.kind.tls_settings(files);
                (ssl, Some(settings))
            }
            (true, None) => return Err("TLS scenario without a test certificate".into()),
        };
        // The `{tls}` line: the settings, or gone (a plain config is as it always was).
        let template: String = template
            .lines()
            .filter_map(|line| match (&settings, line.trim() == "{tls}") {
                (None, true) => None,
                (Some(s), true) if s.is_empty() => None,
                (Some(s), true) => Some(format!("{s}\n")),
                (_, false) => Some(format!("{line}\n")),
            })
            .collect();
        let text = template
            .replace("{ssl}", &ssl)
            .replace("{listen}", &self.ports.proxy.to_string())
            .replace("{http}", &self.ports.http_backend.to_string())
            .replace("{ws}", &self.ports.ws_backend.to_string())
            .replace("{workers}", &self.layout.workers.to_string())
            .replace("{max_conns}", &self.max_conns.to_string())
            .replace("{worker_conns}", &(3 * self.max_conns).to_string())
            .replace("{nofile}", &self.nofile.to_string())
            .replace("{dir}", &self.dir.to_string_lossy());
        let path = self.dir.join(name);
        fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(path)
    }

    /// Starts the proxy on the proxy cores (its listener terminating TLS with `tls`) and
    /// waits until it accepts connections.
    pub fn start(&self, tls: bool) -> Result<Proxy> {
        fs::create_dir_all(self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        let config = self.write_config(tls)?;
        let program = self.program.to_string_lossy();
        let mut cmd = pinned(&self.layout.proxy_cpus(), &program);
        match self.kind {
            Kind::Sluice => {
                cmd.arg("run").arg("--config").arg(&config);
                cmd.env("RUST_LOG", "info,access=off");
                // The runtime sizes itself from the affinity mask already; with more than
                // one worker, say it explicitly too.
                if self.layout.workers > 1 {
                    cmd.env("TOKIO_WORKER_THREADS", self.layout.workers.to_string());
                }
            }
            Kind::Nginx => {
                cmd.arg("-p").arg(self.dir).arg("-c").arg(&config);
                cmd.arg("-e").arg(self.dir.join("error.log"));
            }
            Kind::Haproxy => {
                cmd.arg("-db").arg("-f").arg(&config);
            }
        }
        let log = self.dir.join("proxy.log");
        let out = fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.kind.name()))?;
        let addr = format!("127.0.0.1:{}", self.ports.proxy);
        let mut proxy = Proxy {
            kind: self.kind,
            pids: vec![child.id()],
            child,
            addr,
        };
        proxy.wait_listening(&log)?;
        if self.kind == Kind::Nginx {
            proxy.find_workers(self.layout.workers)?;
        }
        Ok(proxy)
    }
}

impl Proxy {
    pub fn pids(&self) -> &[u32] {
        &self.pids
    }

    fn wait_listening(&mut self, log: &Path) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                let tail = fs::read_to_string(log).unwrap_or_default();
                return Err(format!(
                    "{} exited at start ({status}): {}",
                    self.kind.name(),
                    tail.trim()
                ));
            }
            if TcpStream::connect(&self.addr).is_ok() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "{} did not listen on {} within 10 s",
            self.kind.name(),
            self.addr
        ))
    }

    /// nginx's master forks its workers after it listens: wait for all of them to appear.
    fn find_workers(&mut self, count: usize) -> Result<()> {
        let master = self.child.id();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut workers = Vec::new();
        while Instant::now() < deadline {
            workers = procfs::children(master);
            if workers.len() >= count {
                self.pids.extend(workers);
                return Ok(());
            }
            thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "nginx: {} of {count} worker process(es) under the master after 5 s",
            workers.len()
        ))
    }

    /// SIGTERM, then SIGKILL after 5 s; every process of the proxy, by PID.
    pub fn stop(mut self) {
        procfs::signal(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            eprintln!("  {} ignored SIGTERM for 5 s: killing it", self.kind.name());
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        for &pid in &self.pids[1..] {
            let deadline = Instant::now() + Duration::from_secs(2);
            while procfs::alive(pid) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            if procfs::alive(pid) {
                procfs::signal(pid, libc::SIGKILL);
            }
        }
    }
}
