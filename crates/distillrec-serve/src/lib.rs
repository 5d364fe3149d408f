//! `distillrec serve`: a trained student behind HTTP.
//!
//! Invariants (each held by a test in `crates/distillrec/tests/serve_cli.rs`):
//! - an answer is the top-k of `distillrec_pipeline::stages::rank_batch`, the
//!   function `recommend` uses, so `POST /recommend` equals `recommend --json`;
//! - concurrent requests are micro-batched ([`batcher`]) into one forward pass
//!   of at most `max_batch` rows, and a row's answer does not depend on the
//!   rows it was batched with;
//! - every bad request gets a 4xx with a one-line JSON `{"error": ...}` and
//!   the server keeps serving; limits ([`Limits`]) bound body, history, `k`,
//!   histories per request, time per request, queued jobs and connections;
//! - a reload swaps the model only after the new checkpoint loaded and matched
//!   the served dataset (fingerprint and item count); else the old one stays;
//! - SIGTERM stops accepting and lets in-flight requests finish.

mod api;
mod batcher;
mod limits;
pub mod loadgen;
mod metrics;
mod model;
mod routes;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};

pub use limits::Limits;

/// What `distillrec serve` was asked to do.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The checkpoint to serve (weights or manifest).
    pub checkpoint: PathBuf,
    /// The prepared dataset (default: the checkpoint's).
    pub data: Option<PathBuf>,
    /// Where to listen (port 0: any free port; the bound address is printed).
    pub addr: SocketAddr,
    /// Most history rows in one forward pass.
    pub max_batch: usize,
    /// Longest a request waits for others to join its batch.
    pub max_wait: Duration,
    /// Bounds on requests and connections.
    pub limits: Limits,
}

/// Loads the model, binds `addr`, prints `listening on http://ADDR` on
/// stdout, and serves until SIGTERM or Ctrl-C (in-flight requests finish).
pub fn serve(opts: ServeOptions) -> Result<()> {
    opts.limits.check(opts.max_batch)?;
    let holder = Arc::new(model::ModelHolder::open(
        &opts.checkpoint,
        opts.data.as_deref(),
    )?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(run(opts, holder))
}

/// The server's life: bind, announce, serve, drain.
async fn run(opts: ServeOptions, holder: Arc<model::ModelHolder>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(opts.addr)
        .await
        .with_context(|| format!("--addr {}: cannot listen there", opts.addr))?;
    let bound = listener.local_addr()?;
    let metrics = Arc::new(metrics::Metrics::default());
    let batcher = batcher::Batcher::start(
        holder.clone(),
        metrics.clone(),
        opts.max_batch,
        opts.max_wait,
        opts.limits.queue,
    );
    let state = routes::AppState {
        holder: holder.clone(),
        batcher,
        metrics,
        limits: opts.limits.clone(),
    };
    reload_on_sighup(state.clone())?;
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        eprintln!("shutting down: finishing in-flight requests");
    };
    let app = routes::router(state).into_make_service_with_connect_info::<limits::PeerAddr>();
    let listener =
        limits::LimitedListener::new(listener, opts.limits.max_connections, opts.limits.idle);
    println!("listening on http://{bound}");
    use std::io::Write;
    std::io::stdout().flush()?;
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("the server stopped on an error")
}

/// Reloads the served checkpoint (same path) on every SIGHUP.
fn reload_on_sighup(state: routes::AppState) -> Result<()> {
    let mut hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let _ = routes::reload(&state, None).await;
        }
    });
    Ok(())
}
