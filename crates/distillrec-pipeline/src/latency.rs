//! Per-user recommendation latency: how long one user's top-20 takes when
//! requests come one at a time (a serving path, not a batched evaluation),
//! so the report can set a student's milliseconds against the teacher's.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use candle_core::Device;
use serde::Serialize;

use distillrec_data::{Dataset, ItemId, SplitName};
use distillrec_models::Student;
use distillrec_teacher::Teacher;
use distillrec_train::checkpoint::{self, Expect};

/// Users timed per model (the first test rows).
pub const LATENCY_USERS: usize = 200;
/// Users timed for the LLM teacher (a forward pass per user is costly).
pub const TEACHER_LATENCY_USERS: usize = 30;
/// Items per recommendation.
pub const TOP: usize = 20;
/// Untimed requests before timing (allocator and cache warm-up).
const WARMUP: usize = 3;

/// Per-user top-20 latency, as `run.json` records it under `latency.top20`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Latency {
    /// Requests timed.
    pub users: usize,
    /// Median milliseconds per request.
    pub p50_ms: f64,
    /// 99th-percentile milliseconds per request (nearest rank).
    pub p99_ms: f64,
}

/// Times `one(i)` for `i` in `0..n` after a few untimed calls; the
/// nearest-rank p50 and p99 in milliseconds.
pub fn measure(n: usize, mut one: impl FnMut(usize) -> Result<()>) -> Result<Latency> {
    for i in 0..WARMUP.min(n) {
        one(i)?;
    }
    let mut ms = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        one(i)?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    let rank = |q: f64| {
        if ms.is_empty() {
            return 0.0;
        }
        let r = ((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len());
        ms[r - 1]
    };
    Ok(Latency {
        users: n,
        p50_ms: rank(0.5),
        p99_ms: rank(0.99),
    })
}

/// The `top` best-scored items (scores over ids `0..=N`, column 0 padding),
/// leaving out the history: what a user is shown.
pub fn top_items(scores: &[f32], history: &[ItemId], top: usize) -> Vec<ItemId> {
    let mut s = scores.to_vec();
    s[0] = f32::NEG_INFINITY;
    for &h in history {
        if let Some(x) = s.get_mut(h as usize) {
            *x = f32::NEG_INFINITY;
        }
    }
    let mut ids: Vec<ItemId> = (1..s.len() as ItemId).collect();
    let top = top.min(ids.len());
    if top == 0 {
        return Vec::new();
    }
    let by_score =
        |a: &ItemId, b: &ItemId| s[*b as usize].total_cmp(&s[*a as usize]).then(a.cmp(b));
    ids.select_nth_unstable_by(top - 1, by_score);
    ids.truncate(top);
    ids.sort_by(by_score);
    ids
}

/// A student's per-user top-20 latency over the first test users.
pub fn student_latency(student: &Student, ds: &Dataset) -> Result<Latency> {
    let rows = ds.rows(SplitName::Test);
    let n = LATENCY_USERS.min(rows.len());
    measure(n, |i| {
        let hist = ds.history(&rows[i]);
        let scores = student.score_histories(&[hist])?;
        std::hint::black_box(top_items(&scores, hist, TOP));
        Ok(())
    })
}

/// The latency of the student checkpoint at `path`, trained on `ds`.
pub fn checkpoint_latency(
    path: &Path,
    ds: &Dataset,
    fingerprint: &str,
    device: &Device,
) -> Result<Latency> {
    let loaded = checkpoint::load(
        path,
        &Expect {
            fingerprint: Some(fingerprint),
            kind: None,
        },
        device,
    )?;
    student_latency(&loaded.student, ds)
}

/// The LLM teacher's per-user top-20 latency (ranking head: one forward
/// pass of the prompt per user; the item table is computed once, as a
/// server would).
pub fn teacher_latency(teacher: &Teacher, ds: &Dataset) -> Result<Latency> {
    let rows = ds.rows(SplitName::Test);
    let n = TEACHER_LATENCY_USERS.min(rows.len());
    let table = teacher.eval_table()?;
    measure(n, |i| {
        let scores = teacher.rank_scores(ds, &[&rows[i]], &table)?;
        std::hint::black_box(top_items(&scores, ds.history(&rows[i]), TOP));
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_items_skip_padding_and_history_and_break_ties_by_id() {
        let scores = [9.0, 1.0, 5.0, 5.0, 7.0, 0.5];
        assert_eq!(top_items(&scores, &[4], 3), vec![2, 3, 1]);
        assert_eq!(top_items(&scores, &[], 10), vec![4, 2, 3, 1, 5]);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut calls = 0;
        let l = measure(10, |_| {
            calls += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!((l.users, calls), (10, 13));
        assert!(l.p50_ms <= l.p99_ms);
    }
}
