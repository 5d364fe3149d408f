//! `serve`: the arguments into `distillrec_serve::serve`.

use std::time::Duration;

use anyhow::{bail, Result};

use distillrec_serve::loadgen::{self, LoadOptions};
use distillrec_serve::{serve, Limits, ServeOptions};

use crate::args::{BenchServeArgs, ServeArgs};
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
            idle: Duration::from_millis(a.idle_timeout_ms),
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

/// Runs `bench serve`: each concurrency level in turn, one line each.
pub fn bench(a: BenchServeArgs) -> Result<()> {
    let seconds = parse_seconds(&a.duration)?;
    let results = loadgen::run(&LoadOptions {
        url: a.url,
        concurrency: a.concurrency,
        duration: Duration::from_secs_f64(seconds),
        max_requests: a.max_requests,
        body: a.body,
    })?;
    for r in results {
        println!(
            "RESULT concurrency={} requests={} errors={} seconds={:.2} throughput={:.1}/s p50_ms={:.3} p99_ms={:.3} p999_ms={:.3}",
            r.concurrency,
            r.ok,
            r.errors,
            r.seconds,
            r.throughput(),
            r.p50_ms,
            r.p99_ms,
            r.p999_ms
        );
    }
    Ok(())
}

/// `--duration` as seconds: `10`, `10s` or `500ms`, in (0, 600].
fn parse_seconds(text: &str) -> Result<f64> {
    let t = text.trim();
    let (num, scale) = match t.strip_suffix("ms") {
        Some(n) => (n, 1e-3),
        None => (t.strip_suffix('s').unwrap_or(t), 1.0),
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v * scale > 0.0 && v * scale <= 600.0 => Ok(v * scale),
        _ => bail!("--duration {text}: give a time in (0, 600] seconds, e.g. 10s or 500ms"),
    }
}
