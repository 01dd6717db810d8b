//! Active health checks (`health_check`): each server of a pool is asked
//! `GET path` every `interval` on a fresh connection; an answer other than `2xx` within
//! `timeout`, or none, is a failure. `unhealthy` failures in a row take the server out,
//! `healthy` successes in a row bring it back. Servers start in, so traffic flows at once.
//!
//! A checker runs for as long as its pool: dropping the pool (replaced by a reload, or at
//! shutdown) cancels it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use http::header::{CONNECTION, HOST, USER_AGENT};
use http::{HeaderValue, Request};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use super::connect::connect;
use super::Server;
use crate::config::HealthCheckConfig;

/// Starts a checker for `server`; it stops when `stop` is cancelled or the server is gone.
pub fn spawn(
    server: &Arc<Server>,
    pool: Arc<str>,
    cfg: HealthCheckConfig,
    stop: CancellationToken,
) {
    let server = Arc::downgrade(server);
    tokio::spawn(async move {
        tokio::select! {
            () = stop.cancelled() => {}
            () = run(server, pool, cfg) => {}
        }
    });
}

async fn run(server: Weak<Server>, pool: Arc<str>, cfg: HealthCheckConfig) {
    loop {
        let Some(server) = server.upgrade() else {
            return;
        };
        let outcome = probe(&server, &cfg).await;
        // The streaks and the verdict live in the server's state, so a reload (which
        // starts new checkers) carries on counting where the old checker stopped.
        let state = &server.state;
        let up = state.checked_up.load(Ordering::Relaxed);
        match outcome {
            Ok(()) => {
                state.check_fails.store(0, Ordering::Relaxed);
                let passes = state
                    .check_passes
                    .fetch_add(1, Ordering::Relaxed)
                    .saturating_add(1);
                if !up && passes >= cfg.healthy {
                    state.checked_up.store(true, Ordering::Relaxed);
                    tracing::info!(
                        upstream = &*pool,
                        server = &*server.label,
                        "health check passed, server back in"
                    );
                }
            }
            // sluice's own shortage of descriptors says nothing about the server.
            Err(None) => {}
            Err(Some(cause)) => {
                state.check_passes.store(0, Ordering::Relaxed);
                let fails = state
                    .check_fails
                    .fetch_add(1, Ordering::Relaxed)
                    .saturating_add(1);
                if up && fails >= cfg.unhealthy {
                    state.checked_up.store(false, Ordering::Relaxed);
                    tracing::warn!(
                        upstream = &*pool,
                        server = &*server.label,
                        cause,
                        "health check failed, server taken out"
                    );
                }
            }
        }
        drop(server);
        tokio::time::sleep(cfg.interval).await;
    }
}

/// One check: `Ok` on a `2xx` within the timeout, otherwise why not; `Err(None)` when the
/// check could not be made for lack of a file descriptor.
async fn probe(server: &Server, cfg: &HealthCheckConfig) -> Result<(), Option<String>> {
    let exchange = async {
        let stream = connect(server.addr, cfg.timeout, server.tls.as_ref())
            .await
            .map_err(|e| e.blames_server().then(|| e.to_string()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Some(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let request = Request::get(cfg.path.as_str())
            .header(HOST, server.authority.clone())
            .header(USER_AGENT, HeaderValue::from_static("sluice-health-check"))
            .header(CONNECTION, HeaderValue::from_static("close"))
            .body(Empty::<Bytes>::new())
            .map_err(|e| Some(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| Some(e.to_string()))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(Some(format!("answered {}", response.status().as_u16())))
        }
    };
    match tokio::time::timeout(cfg.timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(Some(format!("no answer within {:?}", cfg.timeout))),
    }
}

/// Cancels a pool's checkers when the pool is dropped (the guard is only held).
#[derive(Debug)]
pub struct Checkers {
    _stop: tokio_util::sync::DropGuard,
}

impl Checkers {
    pub fn new(stop: CancellationToken) -> Checkers {
        Checkers {
            _stop: stop.drop_guard(),
        }
    }
}
