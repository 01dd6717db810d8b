//! TLS at the edge and to the backends, with certificates made here (rcgen) and real TLS
//! clients and servers (tokio-rustls), end to end through the proxy.
//!
//! - `wss_through_a_tls_listener`: a WebSocket client over rustls echoes through sluice;
//!   plain requests over the same listener carry `X-Forwarded-Proto: https`.
//! - `sni_chooses_the_certificate`: the certificate the client actually received, for an
//!   exact name, a wildcard, an unknown name and no SNI at all.
//! - `plain_garbage_and_silence_on_a_tls_listener_disturb_nobody`: none is proxied, the
//!   silent one is dropped at `header_timeout`, and an open wss tunnel keeps echoing.
//! - `certificates_renew_on_sighup_under_an_open_tunnel`: through the real binary; a broken
//!   certificate on reload keeps the old config.
//! - `tls_upstreams_verify_and_pool`: plain requests (pooled) and tunnels to a TLS backend;
//!   a wrong CA or a wrong name is `502` with not one byte of HTTP sent.
//! - `check_reports_bad_certificates_where_they_are`, `run_with_a_bad_certificate_exits_1`.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use support::tls::*;

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, ServerName};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

/// One request over `tls`; returns the status line and the body (read to close).
async fn https_get(mut tls: ClientTls, host: &str, path: &str) -> (String, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    within(WAIT, tls.write_all(request.as_bytes()))
        .await
        .expect("write request");
    let mut response = Vec::new();
    let _ = within(WAIT, tls.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, body.to_owned())
}

fn listener_tls_config(listen: &str, tls: &str, upstream: SocketAddr) -> String {
    format!(
        r#"
[[listener]]
addr = "{listen}"
header_timeout = "300ms"
tls = {tls}

[upstream.app]
servers = ["{upstream}"]

[[route]]
upstream = "app"
"#
    )
}

// ---------------------------------------------------------------------------------------
// TLS listeners.

#[tokio::test]
async fn wss_through_a_tls_listener() {
    let ca = Ca::new("test CA");
    let dir = temp_dir("wss");
    ca.leaf(&["app.example"]).write(&dir, "app");
    let ws = ws_echo_backend().await;
    let toml = listener_tls_config(
        "127.0.0.1:0",
        &format!(
            r#"{{ cert = "{}", key = "{}" }}"#,
            dir.join("app.pem").display(),
            dir.join("app.key").display()
        ),
        ws.addr,
    );
    let proxy = spawn_proxy(&toml).await;

    let tls = tls_connect(proxy.addr, &ca, "app.example").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut socket, response) = within(
        WAIT,
        tokio_tungstenite::client_async("wss://app.example/chat", tls),
    )
    .await
    .expect("wss handshake through sluice");
    assert_eq!(response.status(), 101);
    for i in 0..3 {
        let message = Message::Text(format!("over tls {i}"));
        within(WAIT, socket.send(message.clone()))
            .await
            .expect("send");
        let echoed = within(WAIT, socket.next()).await;
        assert_eq!(echoed.expect("open").expect("frame"), message);
    }
    let heads = ws.handshakes();
    assert_eq!(heads.len(), 1);
    assert_eq!(heads[0]["x-forwarded-proto"], "https");
}

#[tokio::test]
async fn plain_requests_over_tls_say_https() {
    let ca = Ca::new("test CA");
    let dir = temp_dir("https");
    ca.leaf(&["app.example"]).write(&dir, "app");
    let backend = http_backend(|_| async { text(200, "secure") }).await;
    let toml = listener_tls_config(
        "127.0.0.1:0",
        &format!(
            r#"{{ cert = "{}", key = "{}" }}"#,
            dir.join("app.pem").display(),
            dir.join("app.key").display()
        ),
        backend.addr,
    );
    let proxy = spawn_proxy(&toml).await;
    let tls = tls_connect(proxy.addr, &ca, "app.example").await;
    let (status, body) = https_get(tls, "app.example", "/x").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(body, "secure");
    let seen = backend.only();
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("host"), Some("app.example"));
}

#[tokio::test]
async fn sni_chooses_the_certificate() {
    let ca = Ca::new("test CA");
    let dir = temp_dir("sni");
    let first = ca.leaf(&["a.example"]);
    let wildcard = ca.leaf(&["*.b.example", "b.example"]);
    let exact = ca.leaf(&["x.b.example"]);
    first.write(&dir, "a");
    wildcard.write(&dir, "b");
    exact.write(&dir, "x");
    let backend = named_backend("ok").await;
    let list = ["a", "b", "x"]
        .iter()
        .map(|n| {
            format!(
                r#"{{ cert = "{}", key = "{}" }}"#,
                dir.join(format!("{n}.pem")).display(),
                dir.join(format!("{n}.key")).display()
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let proxy = spawn_proxy(&listener_tls_config(
        "127.0.0.1:0",
        &format!("[{list}]"),
        backend.addr,
    ))
    .await;

    let got = |sni: &'static str| {
        let ca = &ca;
        async move { presented(&tls_connect(proxy.addr, ca, sni).await) }
    };
    assert_eq!(got("a.example").await, first.der, "exact name");
    assert_eq!(got("y.b.example").await, wildcard.der, "wildcard");
    assert_eq!(got("B.Example").await, wildcard.der, "names ignore case");
    assert_eq!(
        got("x.b.example").await,
        exact.der,
        "an exact name beats a wildcard"
    );

    // A name nobody covers, and no SNI at all: the first certificate, which the client
    // then refuses for the name it wanted (it is not valid for it).
    let tcp = TcpStream::connect(proxy.addr).await.expect("connect");
    let name = ServerName::try_from("unknown.example").expect("name");
    let refused = within(WAIT, connector(&ca).connect(name, tcp)).await;
    assert!(
        refused.is_err(),
        "the default certificate does not cover unknown.example"
    );
    let tcp = TcpStream::connect(proxy.addr).await.expect("connect");
    let ip = ServerName::IpAddress(proxy.addr.ip().into());
    let no_sni = within(WAIT, connector(&ca).connect(ip, tcp)).await;
    assert!(
        no_sni.is_err(),
        "without SNI the default (a.example) is served, which does not cover an IP"
    );
    // And the default is indeed the first: accept any certificate to look at it.
    let tcp = TcpStream::connect(proxy.addr).await.expect("connect");
    let peek = peek_default(tcp).await;
    assert_eq!(peek, first.der, "no SNI: the first certificate");
}

/// The certificate served to a ClientHello without SNI, seen by a client that verifies
/// nothing (only for looking).
async fn peek_default(tcp: TcpStream) -> CertificateDer<'static> {
    #[derive(Debug)]
    struct AnyCert(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    let ip = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let tls = within(WAIT, TlsConnector::from(Arc::new(config)).connect(ip, tcp))
        .await
        .expect("handshake without verification");
    presented(&tls)
}

#[tokio::test]
async fn plain_garbage_and_silence_on_a_tls_listener_disturb_nobody() {
    let ca = Ca::new("test CA");
    let dir = temp_dir("garbage");
    ca.leaf(&["app.example"]).write(&dir, "app");
    let ws = ws_echo_backend().await;
    let proxy = spawn_proxy(&listener_tls_config(
        "127.0.0.1:0",
        &format!(
            r#"{{ cert = "{}", key = "{}" }}"#,
            dir.join("app.pem").display(),
            dir.join("app.key").display()
        ),
        ws.addr,
    ))
    .await;
    let tls = tls_connect(proxy.addr, &ca, "app.example").await;
    let (mut tunnel, _) = within(
        WAIT,
        tokio_tungstenite::client_async("wss://app.example/", tls),
    )
    .await
    .expect("wss tunnel");

    // Plain HTTP, then garbage, to the TLS port: dropped, never proxied.
    for bytes in [
        &b"GET / HTTP/1.1\r\nHost: app.example\r\n\r\n"[..],
        b"\x00\x01garbage\xff\xfe\r\n\r\n",
    ] {
        let mut c = RawClient::connect(proxy.addr).await;
        c.send(bytes).await;
        let answer = c.read_to_close(WAIT).await;
        assert!(
            !String::from_utf8_lossy(&answer).contains("HTTP/1.1 101"),
            "never proxied: {answer:?}"
        );
    }
    // A client that says nothing is dropped at header_timeout.
    let mut silent = RawClient::connect(proxy.addr).await;
    let nothing = silent.read_to_close(WAIT).await;
    assert!(nothing.is_empty(), "{nothing:?}");
    assert_eq!(ws.count(), 1, "only the real tunnel reached the backend");

    let message = Message::Text("still here".into());
    within(WAIT, tunnel.send(message.clone()))
        .await
        .expect("send");
    let echoed = within(WAIT, tunnel.next()).await;
    assert_eq!(echoed.expect("open").expect("frame"), message);
}

#[tokio::test]
async fn certificates_renew_on_sighup_under_an_open_tunnel() {
    let ca = Ca::new("test CA");
    let dir = temp_dir("renew");
    let old = ca.leaf(&["app.example"]);
    old.write(&dir, "app");
    let ws = ws_echo_backend().await;
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let config = write(
        &dir,
        "sluice.toml",
        &format!(
            "[proxy]\nshutdown_timeout = \"1s\"\n{}",
            listener_tls_config(
                &listen.to_string(),
                r#"{ cert = "app.pem", key = "app.key" }"#,
                ws.addr,
            )
        ),
    );
    let mut daemon = Daemon::start(&["run", "-c", config.to_str().expect("utf-8 path")]);
    daemon.wait_listening(listen).await;

    let tls = tls_connect(listen, &ca, "app.example").await;
    assert_eq!(presented(&tls), old.der);
    let (mut tunnel, _) = within(
        WAIT,
        tokio_tungstenite::client_async("wss://app.example/", tls),
    )
    .await
    .expect("wss tunnel");

    // Renew: new files, SIGHUP; new connections get the new certificate.
    let new = ca.leaf(&["app.example"]);
    new.write(&dir, "app");
    daemon.sighup();
    eventually(
        WAIT,
        "new connections get the renewed certificate",
        || async { presented(&tls_connect(listen, &ca, "app.example").await) == new.der },
    )
    .await;
    let message = Message::Text("across the renewal".into());
    within(WAIT, tunnel.send(message.clone()))
        .await
        .expect("send");
    assert_eq!(
        within(WAIT, tunnel.next())
            .await
            .expect("open")
            .expect("frame"),
        message
    );

    // A broken certificate on reload: logged, and the running config stays whole.
    write(&dir, "app.pem", "not a certificate\n");
    daemon.sighup();
    let mut fresh = Vec::new();
    for _ in 0..3 {
        fresh.push(presented(&tls_connect(listen, &ca, "app.example").await));
    }
    assert!(fresh.iter().all(|c| *c == new.der));
    within(WAIT, tunnel.send(message.clone()))
        .await
        .expect("send");
    assert!(within(WAIT, tunnel.next()).await.is_some());

    daemon.sigterm();
    let exit = daemon.wait_exit(WAIT).await;
    assert_eq!(exit.code, Some(0), "{exit}");
    assert!(
        exit.stderr.contains("reload failed") && exit.stderr.contains("app.pem"),
        "the broken certificate is logged with its file{exit}"
    );
}

// ---------------------------------------------------------------------------------------
// TLS upstreams.

fn upstream_tls_config(backend: SocketAddr, tls: &str) -> String {
    format!(
        r#"
[[listener]]
addr = "127.0.0.1:0"

[upstream.app]
servers = ["{backend}"]
tls = {tls}

[[route]]
upstream = "app"
"#
    )
}

#[tokio::test]
async fn tls_upstreams_verify_and_pool() {
    let ca = Ca::new("backend CA");
    let dir = temp_dir("upstream");
    let ca_file = write(&dir, "ca.pem", &ca.pem());
    let backend = tls_backend(&ca.leaf(&["backend.internal"])).await;
    let proxy = spawn_proxy(&upstream_tls_config(
        backend.addr,
        &format!(
            r#"{{ ca = "{}", server_name = "backend.internal" }}"#,
            ca_file.display()
        ),
    ))
    .await;

    // Plain requests, pooled over one TLS connection.
    let mut client = RawClient::connect(proxy.addr).await;
    for _ in 0..3 {
        client.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
        let r = client.read_response().await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.body_str(), "tls backend");
    }
    assert_eq!(
        backend.handshakes.load(Ordering::SeqCst),
        1,
        "one pooled TLS connection"
    );

    // A WebSocket tunnel over TLS to the backend.
    let (mut tunnel, _) = ws_connect(&format!("ws://{}/ws", proxy.addr), &[])
        .await
        .expect("tunnel to a TLS backend");
    let message = Message::Text("to wss backend".into());
    within(WAIT, tunnel.send(message.clone()))
        .await
        .expect("send");
    assert_eq!(
        within(WAIT, tunnel.next())
            .await
            .expect("open")
            .expect("frame"),
        message
    );

    // The server's own address as the name: its certificate does not cover it.
    let wrong_name = spawn_proxy(&upstream_tls_config(
        backend.addr,
        &format!(r#"{{ ca = "{}" }}"#, ca_file.display()),
    ))
    .await;
    // A CA that did not sign the backend's certificate.
    let other = Ca::new("another CA");
    let other_file = write(&dir, "other.pem", &other.pem());
    let wrong_ca = spawn_proxy(&upstream_tls_config(
        backend.addr,
        &format!(
            r#"{{ ca = "{}", server_name = "backend.internal" }}"#,
            other_file.display()
        ),
    ))
    .await;
    let before = backend.requests.load(Ordering::SeqCst);
    for proxy in [&wrong_name, &wrong_ca] {
        let r = http_get(proxy.addr, "h", "/").await;
        assert_eq!(r.status, 502, "{}", r.text());
    }
    assert_eq!(
        backend.requests.load(Ordering::SeqCst),
        before,
        "not one request reached the backend over an unverified connection"
    );
}

#[tokio::test]
async fn upstream_tls_true_uses_the_system_roots() {
    // The test CA is in no system trust store, so verification must fail: 502.
    let ca = Ca::new("private CA");
    let backend = tls_backend(&ca.leaf(&["127.0.0.1"])).await;
    let proxy = spawn_proxy(&upstream_tls_config(backend.addr, "true")).await;
    let r = http_get(proxy.addr, "h", "/").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(backend.requests.load(Ordering::SeqCst), 0);
    assert!(
        backend.connections.load(Ordering::SeqCst) >= 1,
        "a TLS handshake was tried"
    );
}

// ---------------------------------------------------------------------------------------
// check and run.

fn sluice_in(dir: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run sluice")
}

#[test]
fn check_reports_bad_certificates_where_they_are() {
    let ca = Ca::new("test CA");
    let dir = temp_dir("check");
    ca.leaf(&["good.example"]).write(&dir, "good");
    let other = ca.leaf(&["other.example"]);
    write(&dir, "other.key", &other.key_pem);
    write(&dir, "empty.pem", "nothing here\n");
    write(
        &dir,
        "sluice.toml",
        r#"[[listener]]
addr = "127.0.0.1:8443"
tls = [
  { cert = "missing.pem", key = "good.key" },
  { cert = "empty.pem", key = "good.key" },
  { cert = "good.pem", key = "empty.pem" },
  { cert = "good.pem", key = "other.key" },
]

[upstream.app]
servers = ["127.0.0.1:3000"]

[[route]]
upstream = "app"
"#,
    );
    let out = sluice_in(&dir, &["check", "-c", "sluice.toml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 4, "{stderr}");
    assert!(
        lines[0].starts_with("sluice.toml:4:12: listener[0].tls[0].cert: cannot read "),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("missing.pem"), "{}", lines[0]);
    assert!(
        lines[1].starts_with("sluice.toml:5:12: listener[0].tls[1].cert: "),
        "{}",
        lines[1]
    );
    assert!(
        lines[1].contains("empty.pem holds no PEM certificate"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].starts_with("sluice.toml:6:30: listener[0].tls[2].key: "),
        "{}",
        lines[2]
    );
    assert!(
        lines[2].contains("holds no PEM private key"),
        "{}",
        lines[2]
    );
    assert!(
        lines[3].starts_with("sluice.toml:7:3: listener[0].tls[3]: "),
        "{}",
        lines[3]
    );
    assert!(
        lines[3].contains("does not match the certificate"),
        "{}",
        lines[3]
    );
}

#[test]
fn check_refuses_special_files_as_certificates() {
    let ca = Ca::new("test CA");
    let dir = temp_dir("special");
    ca.leaf(&["good.example"]).write(&dir, "good");
    write(
        &dir,
        "sluice.toml",
        r#"[[listener]]
addr = "127.0.0.1:8443"
tls = { cert = "/dev/zero", key = "good.key" }

[upstream.app]
servers = ["127.0.0.1:3000"]
tls = { ca = "/dev/zero" }

[[route]]
upstream = "app"
"#,
    );
    let out = sluice_in(&dir, &["check", "-c", "sluice.toml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(
            "sluice.toml:3:16: listener[0].tls.cert: cannot read /dev/zero: not a regular file"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("upstream.app.tls.ca: cannot read /dev/zero: not a regular file"),
        "{stderr}"
    );
}

#[test]
fn check_warns_of_a_certificate_about_to_expire() {
    let ca = Ca::new("test CA");
    let dir = temp_dir("expiry");
    let soon = ca.leaf_with(&["soon.example"], |params| {
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - Duration::from_secs(86_400);
        params.not_after = now + Duration::from_secs(3 * 86_400);
    });
    soon.write(&dir, "soon");
    write(
        &dir,
        "sluice.toml",
        r#"[[listener]]
addr = "127.0.0.1:8443"
tls = { cert = "soon.pem", key = "soon.key" }

[upstream.app]
servers = ["127.0.0.1:3000"]

[[route]]
upstream = "app"
"#,
    );
    let out = sluice_in(&dir, &["check", "-c", "sluice.toml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "a warning is no error: {stderr}"
    );
    assert!(
        stderr.starts_with(
            "sluice.toml:3:16: listener[0].tls.cert: warning: the certificate expires in 2days"
        ),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok: "));
}

#[tokio::test]
async fn run_with_a_bad_certificate_exits_1_naming_the_file() {
    let dir = temp_dir("run-bad");
    write(
        &dir,
        "broken.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    );
    write(&dir, "broken.key", "nothing\n");
    let config = write(
        &dir,
        "sluice.toml",
        &format!(
            r#"[[listener]]
addr = "127.0.0.1:{}"
tls = {{ cert = "broken.pem", key = "broken.key" }}

[upstream.app]
servers = ["127.0.0.1:3000"]

[[route]]
upstream = "app"
"#,
            free_port()
        ),
    );
    let daemon = Daemon::start(&["run", "-c", config.to_str().expect("utf-8 path")]);
    let exit = daemon.wait_exit(WAIT).await;
    assert_eq!(exit.code, Some(1), "{exit}");
    let lines: Vec<&str> = exit.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line{exit}");
    assert!(lines[0].contains("broken.pem"), "names the file{exit}");
}
