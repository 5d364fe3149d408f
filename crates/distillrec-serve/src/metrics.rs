//! Counters for `GET /metrics` (Prometheus text format): requests by route
//! and status, a latency histogram, forward-pass batch sizes, reloads and
//! the served model's identity.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::model::Identity;

/// Upper bounds of the latency buckets, in microseconds.
const LATENCY_US: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];
/// Upper bounds of the batch-size buckets, in rows.
const BATCH_ROWS: [u64; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];

/// A fixed-bucket histogram of integer observations.
struct Histogram {
    bounds: &'static [u64],
    counts: Vec<AtomicU64>,
    sum: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [u64]) -> Self {
        Histogram {
            bounds,
            counts: (0..bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    fn observe(&self, v: u64) {
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum.fetch_add(v, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Cumulative buckets, sum and count of `name`, bounds and sum divided
    /// by `scale` (1e6 for microseconds shown as seconds).
    fn render(&self, out: &mut String, name: &str, scale: f64) {
        let mut seen = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            seen += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {seen}", *b as f64 / scale);
        }
        let count = self.count.load(Ordering::Relaxed);
        let sum = self.sum.load(Ordering::Relaxed) as f64 / scale;
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Everything `/metrics` reports.
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    latency: Histogram,
    batch_rows: Histogram,
    max_batch_rows: AtomicU64,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::default(),
            latency: Histogram::new(&LATENCY_US),
            batch_rows: Histogram::new(&BATCH_ROWS),
            max_batch_rows: AtomicU64::new(0),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Counts one finished request on `route` (a fixed route name) with its
    /// status and time.
    pub fn observe_request(&self, route: &'static str, status: u16, took: Duration) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((route, status))
            .or_default() += 1;
        self.latency.observe(took.as_micros() as u64);
    }

    /// Counts one forward pass of `rows` rows.
    pub fn observe_batch(&self, rows: usize) {
        self.batch_rows.observe(rows as u64);
        self.max_batch_rows
            .fetch_max(rows as u64, Ordering::Relaxed);
    }

    /// Counts one reload, good or refused.
    pub fn observe_reload(&self, ok: bool) {
        let c = if ok {
            &self.reloads_ok
        } else {
            &self.reloads_failed
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text of every metric, with `model` as the identity.
    pub fn render(&self, model: &Identity) -> String {
        let mut out = String::new();
        out.push_str("# TYPE distillrec_http_requests_total counter\n");
        for ((route, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "distillrec_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# TYPE distillrec_http_request_duration_seconds histogram\n");
        self.latency
            .render(&mut out, "distillrec_http_request_duration_seconds", 1e6);
        out.push_str("# TYPE distillrec_batch_rows histogram\n");
        self.batch_rows
            .render(&mut out, "distillrec_batch_rows", 1.0);
        let max = self.max_batch_rows.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# TYPE distillrec_batch_rows_max gauge\ndistillrec_batch_rows_max {max}"
        );
        out.push_str("# TYPE distillrec_reloads_total counter\n");
        for (result, c) in [("ok", &self.reloads_ok), ("failed", &self.reloads_failed)] {
            let n = c.load(Ordering::Relaxed);
            let _ = writeln!(out, "distillrec_reloads_total{{result=\"{result}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# TYPE distillrec_model_info gauge\ndistillrec_model_info{{checkpoint_sha256=\"{}\",dataset_fingerprint=\"{}\",kind=\"{}\",epoch=\"{}\"}} 1",
            model.checkpoint_sha256, model.dataset_fingerprint, model.kind, model.epoch
        );
        out
    }
}
