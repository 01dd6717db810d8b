//! The four proxies: their configs (templates in `configs/`, terminating TLS or not), how
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
    Envoy,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Sluice, Kind::Nginx, Kind::Haproxy, Kind::Envoy];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Sluice => "sluice",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
            Kind::Envoy => "envoy",
        }
    }

    fn template(self) -> (&'static str, &'static str) {
        match self {
            Kind::Sluice => ("sluice.toml", include_str!("configs/sluice.toml")),
            Kind::Nginx => ("nginx.conf", include_str!("configs/nginx.conf")),
            Kind::Haproxy => ("haproxy.cfg", include_str!("configs/haproxy.cfg")),
            Kind::Envoy => ("envoy.yaml", include_str!("configs/envoy.yaml")),
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
            Kind::Envoy => (
                String::new(),
                [
                    "transport_socket:".to_owned(),
                    "  name: envoy.transport_sockets.tls".into(),
                    "  typed_config:".into(),
                    "    \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext".into(),
                    "    common_tls_context:".into(),
                    "      tls_params: { tls_minimum_protocol_version: TLSv1_2, tls_maximum_protocol_version: TLSv1_3 }".into(),
                    "      alpn_protocols: [\"http/1.1\"]".into(),
                    "      tls_certificates:".into(),
                    format!("      - certificate_chain: {{ filename: \"{}\" }}", path(&files.cert)),
                    format!("        private_key: {{ filename: \"{}\" }}", path(&files.key)),
                ]
                .map(|l| format!("      {l}"))
                .join("\n"),
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
    /// A command the proxy runs under (`valgrind …`, `strace …`), for the counts; empty
    /// for the measured scenarios. Wrapped, nginx runs as one process (no master) and the
    /// deadlines to listen and to exit are long.
    pub wrap: Vec<String>,
}

/// A running proxy.
pub struct Proxy {
    pub kind: Kind,
    child: Child,
    /// Every process of the proxy (nginx: master and worker).
    pids: Vec<u32>,
    /// The process SIGTERM stops: the proxy itself (under strace, strace's child).
    term: u32,
    /// How long it may take to exit after SIGTERM.
    exit_within: Duration,
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
        let template = if self.kind == Kind::Nginx && !self.wrap.is_empty() {
            template.replace("master_process on;", "master_process off;")
        } else {
            template
        };
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
        let mut cmd = match self.wrap.split_first() {
            None => pinned(&self.layout.proxy_cpus(), &program),
            Some((first, rest)) => {
                let mut cmd = pinned(&self.layout.proxy_cpus(), first);
                cmd.args(rest).arg(&*program);
                cmd
            }
        };
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
            Kind::Envoy => {
                cmd.arg("-c").arg(&config);
                cmd.args(["--concurrency", &self.layout.workers.to_string()]);
                cmd.args(["--log-level", "warn", "--disable-hot-restart"]);
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
        let wrapped = !self.wrap.is_empty();
        let mut proxy = Proxy {
            kind: self.kind,
            pids: vec![child.id()],
            term: child.id(),
            exit_within: Duration::from_secs(if wrapped { 120 } else { 5 }),
            child,
            addr,
        };
        let listen_within = Duration::from_secs(if wrapped { 180 } else { 10 });
        proxy.wait_listening(&log, listen_within)?;
        if self.kind == Kind::Nginx && !wrapped {
            proxy.find_workers(self.layout.workers)?;
        }
        if self.wrap.first().is_some_and(|w| w.ends_with("strace")) {
            // strace's one child is the proxy; a SIGTERM to strace would only detach it.
            proxy.term = procfs::children(proxy.term)
                .first()
                .copied()
                .ok_or_else(|| format!("{}: no process under strace", self.kind.name()))?;
            proxy.pids.push(proxy.term);
        }
        Ok(proxy)
    }
}

impl Proxy {
    pub fn pids(&self) -> &[u32] {
        &self.pids
    }

    fn wait_listening(&mut self, log: &Path, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
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
            "{} did not listen on {} within {within:?}",
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

    /// SIGTERM, then SIGKILL after 5 s (2 minutes under valgrind or strace); every process
    /// of the proxy, by PID. Returns whether it exited by itself.
    pub fn stop(mut self) -> bool {
        procfs::signal(self.term, libc::SIGTERM);
        let deadline = Instant::now() + self.exit_within;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let exited = !matches!(self.child.try_wait(), Ok(None));
        if !exited {
            eprintln!(
                "  {} ignored SIGTERM for {:?}: killing it",
                self.kind.name(),
                self.exit_within
            );
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
        exited
    }
}
