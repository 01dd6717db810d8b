//! sluice: a WebSocket-aware reverse proxy daemon.
//!
//! # Layout
//! - [`cli`]: the command line (clap types only).
//! - [`logging`]: text/JSON log output; the `access` target.
//! - [`config`]: TOML → validated [`config::Config`], every problem reported with its place.
//! - [`server`]: listeners, the accept loops and per-connection serving (head timeout →
//!   408, head size → 431).
//! - [`limits`]: connection and tunnel limits, kept for the process's life.
//! - [`clock`]: the per-connection request clock the socket and the handler share.
//! - [`proxy`]: the request handler as named phases (route, origin check, pick upstream,
//!   rewrite, forward, relay or upgrade, log) and its pure protocol rules.
//! - [`stream`]: plain TCP or TLS over it, one type for every connection.
//! - [`tls`]: certificates, TLS listeners (SNI) and TLS upstreams.
//! - [`tunnel`]: the bidirectional copy after a checked `101`: idle timeout, pings, message
//!   limits, drains, and sluice's own Close frames at frame boundaries.
//! - [`frames`]: WebSocket framing followed as bytes pass, without buffering or altering them.
//! - [`upstream`]: server pools, balancing, passive health, upstream connections.
//! - [`resources`]: the file-descriptor limit, and running out of descriptors.
//! - [`shutdown`]: stop-accepting signal and tracking of in-flight connections and tunnels.
//! - [`metrics`]: the Prometheus metric families and the per-route, per-server handles the
//!   hot paths count on.
//! - [`admin`]: the operator's endpoint: `/healthz`, `/metrics`, `/status`, the dashboard.
//! - [`lifecycle`]: `sluice run`: signals, drain, exit codes.
//! - [`demo`]: `sluice demo`: two in-process echo backends behind the proxy, with a page.
#![forbid(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod frames;
pub mod lifecycle;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod resources;
pub mod server;
pub mod shutdown;
pub mod stream;
pub mod tls;
pub mod tunnel;
pub mod upstream;
