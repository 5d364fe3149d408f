//! `serve`: the arguments into `distillrec_serve::serve`.

use std::time::Duration;

use anyhow::Result;

use distillrec_serve::{serve, Limits, ServeOptions};

use crate::args::ServeArgs;
use crate::common::use_threads;

/// Runs `serve` until SIGTERM.
pub fn run(a: ServeArgs) -> Result<()> {
    use_threads(a.threads)?;
    ignore_sigpipe();
    serve(ServeOptions {
        checkpoint: a.checkpoint,
        data: a.data,
        addr: a.addr,
        max_batch: a.max_batch,
        max_wait: Duration::from_micros(a.max_wait_us),
        limits: Limits {
            max_body_bytes: a.max_body_bytes,
            max_history: a.max_history,
            max_k: a.max_k,
            max_histories: a.max_batch,
            timeout: Duration::from_millis(a.timeout_ms),
            max_connections: a.max_connections,
            queue: a.queue,
        },
    })
}

/// A server must outlive peers that hang up mid-answer: `main` restores
/// SIGPIPE's default (die) for pipelines, so ignore it again here and let
/// the write fail with EPIPE instead.
fn ignore_sigpipe() {
    // SAFETY: SIG_IGN installs no handler code; changing the disposition is
    // process-wide and safe with other threads running.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}
