//! The popularity baseline: score every item by how often it is a training
//! target. Fitted on training rows only (SPEC 2.3), so validation and test
//! targets never leak into it.

use distillrec_data::{Dataset, Row, SplitName};

use crate::error::EvalError;
use crate::full::evaluate_all;
use crate::options::{EvalOptions, EvalReport};

/// Non-personalised baseline: one fixed score row shared by every user.
#[derive(Clone, Debug, PartialEq)]
pub struct Popularity {
    scores: Vec<f32>,
}

impl Popularity {
    /// Counts training targets (`ds.train_target_counts()`, nothing else).
    pub fn fit(ds: &Dataset) -> Self {
        let scores = ds
            .train_target_counts()
            .iter()
            .enumerate()
            .map(|(i, &c)| if i == 0 { f32::NEG_INFINITY } else { c as f32 })
            .collect();
        Self { scores }
    }

    /// The score row: `N + 1` entries, column 0 (padding) is `-inf` and
    /// column `i` is the training-target count of item `i`.
    pub fn scores(&self) -> &[f32] {
        &self.scores
    }
}

/// Fits [`Popularity`] on `ds` and evaluates it on `split` with [`evaluate`],
/// giving every row the same score row. Ties between equally popular items
/// follow `opts.ties`.
pub fn evaluate_popularity(
    ds: &Dataset,
    split: SplitName,
    opts: &EvalOptions,
) -> Result<EvalReport, EvalError> {
    let pop = Popularity::fit(ds);
    let row = pop.scores();
    evaluate_all(ds, split, opts, |rows: &[&Row]| {
        let mut m = Vec::with_capacity(rows.len() * row.len());
        for _ in rows {
            m.extend_from_slice(row);
        }
        Ok(m)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::build;

    /// Three items. Train targets: 2, 2, 3 (item 1 never a train target);
    /// valid target 1; test targets 1, 3, 1, 1 — item 1 is frequent outside
    /// training and must not gain from it.
    fn three() -> Dataset {
        build(
            3,
            &[&[1, 2, 2, 1], &[1, 3, 1], &[3, 1, 1, 3]],
            &[(0, 1), (0, 2), (1, 1)],
            &[(1, 2)],
            &[(0, 3), (2, 3), (2, 1), (2, 2)],
        )
    }

    #[test]
    fn fit_uses_training_targets_only() {
        let pop = Popularity::fit(&three());
        assert_eq!(pop.scores().len(), 4);
        assert_eq!(pop.scores()[0], f32::NEG_INFINITY);
        assert_eq!(&pop.scores()[1..], &[0.0, 2.0, 1.0]);
    }

    #[test]
    fn popularity_metrics_by_hand() {
        // Test targets 1, 3, 1, 1 → ranks 3, 2, 3, 3 (order: item 2, 3, 1).
        let ds = three();
        let opts = EvalOptions {
            ks: vec![1, 2, 3],
            exclude_history: false,
            ..EvalOptions::default()
        };
        let rep = evaluate_popularity(&ds, SplitName::Test, &opts).unwrap();
        assert_eq!(rep.rows, 4);
        assert_eq!(rep.metrics["hr@1"], 0.0);
        assert_eq!(rep.metrics["hr@2"], 0.25);
        assert_eq!(rep.metrics["hr@3"], 1.0);
        let ndcg3 = (3.0 / 2.0 + 1.0 / 3f64.log2()) / 4.0;
        assert!((rep.metrics["ndcg@3"] - ndcg3).abs() < 1e-12);
        let mrr3 = (3.0 / 3.0 + 1.0 / 2.0) / 4.0;
        assert!((rep.metrics["mrr@3"] - mrr3).abs() < 1e-12);
    }
}
