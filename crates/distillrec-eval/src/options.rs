//! What every evaluation protocol shares: the options, the report and the
//! rows of a split. Its own module so that `full` (which adds the sampled
//! metrics in `evaluate_all`) and `sampled` both depend on it and not on
//! each other.

use std::collections::BTreeMap;
use std::time::Instant;

use distillrec_data::{Dataset, Row, SplitName};
use serde::{Deserialize, Serialize};

use crate::error::EvalError;
use crate::rank::TieBreak;

/// How to evaluate: cut-offs, history masking, tie rule, batch size and seed.
/// Unknown fields in a config are an error, missing ones take the defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalOptions {
    /// Metric cut-offs `K` (default `[1, 5, 10, 20]`).
    pub ks: Vec<usize>,
    /// Mask every item of the row's whole history (never the target).
    /// Default on (SPEC 5, MovieLens and raw logs); the DLLM2Rec presets turn
    /// it off because that layout allows repeats.
    pub exclude_history: bool,
    /// Tie rule (default pessimistic).
    pub ties: TieBreak,
    /// Rows per call of the scorer (default 256).
    pub batch_size: usize,
    /// Seed of every random choice made during evaluation (ties, candidates).
    pub seed: u64,
    /// When above 0, [`crate::evaluate_all`] also reports the sampled-candidate
    /// protocol with this many negatives (19 in iLoRA/LLaRA), under
    /// `sampled_*` keys.
    pub sampled_negatives: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            ks: vec![1, 5, 10, 20],
            exclude_history: true,
            ties: TieBreak::Pessimistic,
            batch_size: 256,
            seed: 0,
            sampled_negatives: 0,
        }
    }
}

impl EvalOptions {
    /// Refuses options that cannot produce meaningful metrics.
    pub fn validate(&self) -> Result<(), EvalError> {
        if self.ks.is_empty() {
            return Err(EvalError::BadOptions("ks is empty".into()));
        }
        if self.ks.contains(&0) {
            return Err(EvalError::BadOptions("ks contains 0".into()));
        }
        if self.batch_size == 0 {
            return Err(EvalError::BadOptions("batch_size is 0".into()));
        }
        Ok(())
    }
}

/// The outcome of one evaluation: mean metrics and what it cost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Mean metrics keyed `hr@K`, `ndcg@K`, `recall@K`, `mrr@K`
    /// (`sampled_hr@K`, `sampled_ndcg@K` for the sampled protocol).
    pub metrics: BTreeMap<String, f64>,
    /// Rows evaluated.
    pub rows: usize,
    /// Wall time including scoring, in seconds.
    pub wall_secs: f64,
    /// Rows per second of wall time.
    pub rows_per_sec: f64,
}

impl EvalReport {
    pub(crate) fn new(metrics: BTreeMap<String, f64>, rows: usize, start: Instant) -> Self {
        let wall_secs = start.elapsed().as_secs_f64();
        Self {
            metrics,
            rows,
            wall_secs,
            rows_per_sec: rows as f64 / wall_secs.max(1e-9),
        }
    }
}

/// Rows of a split, refusing an empty one.
pub(crate) fn split_rows(ds: &Dataset, split: SplitName) -> Result<&[Row], EvalError> {
    let rows = ds.rows(split);
    if rows.is_empty() {
        return Err(EvalError::EmptySplit {
            dataset: ds.name.clone(),
            split,
        });
    }
    Ok(rows)
}
