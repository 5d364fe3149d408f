//! Full-ranking evaluation over all `N` items (SPEC 5).

use std::time::Instant;

use distillrec_data::{Dataset, Row, SplitName};

use crate::error::EvalError;
use crate::metrics::MetricAccumulator;
use crate::options::split_rows;
pub use crate::options::{EvalOptions, EvalReport};
use crate::rank::{row_seed, Ranker};
use crate::sampled::{evaluate_sampled, split_candidates};

/// Full-ranking evaluation of `split`. `score` receives up to
/// `opts.batch_size` rows and returns a row-major `[B x (N + 1)]` score
/// matrix (column `i` = item `i`, column 0 ignored). Each row's target is
/// ranked under `opts.ties`, with its whole history masked when
/// `opts.exclude_history` is set; tie randomness is seeded by
/// `(opts.seed, row index)`, so metrics do not depend on the batch size.
pub fn evaluate<F>(
    ds: &Dataset,
    split: SplitName,
    opts: &EvalOptions,
    mut score: F,
) -> Result<EvalReport, EvalError>
where
    F: FnMut(&[&Row]) -> Result<Vec<f32>, EvalError>,
{
    opts.validate()?;
    let rows = split_rows(ds, split)?;
    let start = Instant::now();
    let n = ds.num_items();
    let width = n + 1;
    let mut ranker = Ranker::new(n);
    let mut acc = MetricAccumulator::new(&opts.ks);
    let mut batch: Vec<&Row> = Vec::with_capacity(opts.batch_size.min(rows.len()));
    for (bi, chunk) in rows.chunks(opts.batch_size).enumerate() {
        batch.clear();
        batch.extend(chunk.iter());
        let matrix = score(&batch)?;
        let expected = chunk.len() * width;
        if matrix.len() != expected {
            return Err(EvalError::MatrixSize {
                what: format!(
                    "score matrix of {} batch {bi} [{} x {width}]",
                    split.as_str(),
                    chunk.len()
                ),
                expected,
                actual: matrix.len(),
            });
        }
        for (i, (row, scores)) in chunk.iter().zip(matrix.chunks_exact(width)).enumerate() {
            let index = (bi * opts.batch_size + i) as u64;
            let excluded = if opts.exclude_history {
                ds.history(row)
            } else {
                &[]
            };
            let rank = ranker
                .rank(
                    scores,
                    ds.target(row),
                    excluded,
                    opts.ties,
                    row_seed(opts.seed, index),
                )
                .map_err(|e| e.locate(split, &row.key))?;
            acc.add(rank);
        }
    }
    let report = EvalReport::new(acc.finish(), acc.count(), start);
    tracing::debug!(
        dataset = %ds.name,
        split = split.as_str(),
        rows = report.rows,
        rows_per_sec = report.rows_per_sec,
        "full-ranking evaluation done"
    );
    Ok(report)
}

/// Full-ranking metrics plus, when `opts.sampled_negatives > 0`, the
/// sampled-candidate metrics read from the same full score rows: each
/// batch is scored once, and the candidates' scores are kept for the
/// sampled protocol (`rows × (n_neg + 1)` numbers, not the score rows).
pub fn evaluate_all<F>(
    ds: &Dataset,
    split: SplitName,
    opts: &EvalOptions,
    mut score: F,
) -> Result<EvalReport, EvalError>
where
    F: FnMut(&[&Row]) -> Result<Vec<f32>, EvalError>,
{
    if opts.sampled_negatives == 0 {
        return evaluate(ds, split, opts, score);
    }
    let cands = split_candidates(ds, split, opts, opts.sampled_negatives)?;
    let width = ds.num_items() + 1;
    let mut kept: Vec<Vec<f32>> = Vec::with_capacity(cands.len());
    let mut report = evaluate(ds, split, opts, |rows| {
        let full = score(rows)?;
        // a matrix of the wrong size is refused by `evaluate` itself
        if full.len() == rows.len() * width && kept.len() + rows.len() <= cands.len() {
            for (s, c) in full.chunks_exact(width).zip(&cands[kept.len()..]) {
                kept.push(c.iter().map(|&i| s[i as usize]).collect());
            }
        }
        Ok(full)
    })?;
    {
        let mut next = 0;
        let sampled = evaluate_sampled(ds, split, opts, opts.sampled_negatives, |rows, cs| {
            let end = next + rows.len();
            if end > kept.len() || cs != &cands[next..end] {
                return Err(EvalError::Model(
                    "the sampled protocol drew other candidates than the full pass kept".into(),
                ));
            }
            let out = kept[next..end].to_vec();
            next = end;
            Ok(out)
        })?;
        report.metrics.extend(sampled.metrics);
        report.wall_secs += sampled.wall_secs;
        report.rows_per_sec = report.rows as f64 / report.wall_secs.max(1e-12);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rank::TieBreak;
    use crate::testutil::tiny;

    #[test]
    fn evaluate_all_adds_sampled_metrics_from_full_scores() {
        // test row 1 has every other item in its history: keep rows 0 and 2
        let t = tiny();
        let ds = Dataset {
            test: vec![t.test[0].clone(), t.test[2].clone()],
            ..t
        };
        // scores rank items by id: the sampled rank of a target equals
        // 1 + the number of its candidates with a larger id
        let by_id = |rows: &[&Row]| {
            Ok(rows
                .iter()
                .flat_map(|_| (0..5).map(|i| i as f32))
                .collect::<Vec<f32>>())
        };
        let opts = EvalOptions {
            exclude_history: false,
            sampled_negatives: 1,
            ks: vec![1, 2],
            ..EvalOptions::default()
        };
        let all = evaluate_all(&ds, SplitName::Test, &opts, by_id).unwrap();
        let direct = evaluate_sampled(&ds, SplitName::Test, &opts, 1, |_, cands| {
            Ok(cands
                .iter()
                .map(|c| c.iter().map(|&i| i as f32).collect())
                .collect())
        })
        .unwrap();
        assert_eq!(all.metrics["sampled_hr@1"], direct.metrics["sampled_hr@1"]);
        assert!(all.metrics.contains_key("hr@1"));
        let plain = evaluate_all(
            &ds,
            SplitName::Test,
            &EvalOptions {
                sampled_negatives: 0,
                ..opts
            },
            by_id,
        )
        .unwrap();
        assert!(!plain.metrics.contains_key("sampled_hr@1"));
    }

    #[test]
    fn oracle_scorer_gets_perfect_hit_rate() {
        let ds = tiny();
        let opts = EvalOptions {
            batch_size: 2,
            ..EvalOptions::default()
        };
        let n = ds.num_items();
        let mut calls = 0;
        let rep = evaluate(&ds, SplitName::Test, &opts, |rows| {
            calls += 1;
            let mut m = vec![0.0; rows.len() * (n + 1)];
            for (i, r) in rows.iter().enumerate() {
                m[i * (n + 1) + ds.target(r) as usize] = 1.0;
            }
            Ok(m)
        })
        .unwrap();
        assert_eq!(rep.rows, 3);
        assert_eq!(calls, 2); // 3 rows in batches of 2
        assert_eq!(rep.metrics["hr@1"], 1.0);
        assert_eq!(rep.metrics["ndcg@20"], 1.0);
        assert_eq!(rep.metrics["mrr@5"], 1.0);
        assert!(rep.rows_per_sec > 0.0);
    }

    #[test]
    fn exclude_history_masks_the_whole_history() {
        // tiny(): test row "s0#3" has history [1, 2, 3] and target 2 (a repeat).
        // Scores favour items 1 and 3 over 2, and 4 is lowest.
        let ds = tiny();
        let scorer = |rows: &[&Row]| {
            let mut m = Vec::new();
            for _ in rows {
                m.extend_from_slice(&[0.0, 0.9, 0.5, 0.8, 0.1]);
            }
            Ok(m)
        };
        let only_first = |ds: &Dataset| Dataset {
            test: ds.test[..1].to_vec(),
            ..ds.clone()
        };
        let ds1 = only_first(&ds);
        let mut opts = EvalOptions {
            ks: vec![1, 3],
            exclude_history: false,
            ..EvalOptions::default()
        };
        let off = evaluate(&ds1, SplitName::Test, &opts, scorer).unwrap();
        assert_eq!(off.metrics["hr@1"], 0.0);
        assert!((off.metrics["mrr@3"] - 1.0 / 3.0).abs() < 1e-12);
        opts.exclude_history = true;
        let on = evaluate(&ds1, SplitName::Test, &opts, scorer).unwrap();
        assert_eq!(on.metrics["hr@1"], 1.0);
    }

    #[test]
    fn results_do_not_depend_on_batch_size() {
        let ds = tiny();
        let flat = |rows: &[&Row]| Ok(vec![0.25; rows.len() * 5]);
        let mut opts = EvalOptions {
            ties: TieBreak::Random,
            seed: 11,
            batch_size: 1,
            exclude_history: false,
            ..EvalOptions::default()
        };
        let a = evaluate(&ds, SplitName::Test, &opts, flat).unwrap();
        opts.batch_size = 64;
        let b = evaluate(&ds, SplitName::Test, &opts, flat).unwrap();
        assert_eq!(a.metrics, b.metrics);
        // pessimistic: all 4 items tie, the target is last.
        opts.ties = TieBreak::Pessimistic;
        let p = evaluate(&ds, SplitName::Test, &opts, flat).unwrap();
        assert_eq!(p.metrics["mrr@20"], 0.25);
    }

    #[test]
    fn wrong_matrix_size_is_an_error() {
        let ds = tiny();
        let err = evaluate(&ds, SplitName::Test, &EvalOptions::default(), |rows| {
            Ok(vec![0.0; rows.len() * 4])
        })
        .unwrap_err();
        assert!(matches!(
            err,
            EvalError::MatrixSize {
                expected: 15,
                actual: 12,
                ..
            }
        ));
        assert!(err.to_string().contains("expected 15"));
    }

    #[test]
    fn nan_error_names_split_and_row() {
        let ds = tiny();
        let err = evaluate(&ds, SplitName::Test, &EvalOptions::default(), |rows| {
            Ok(vec![f32::NAN; rows.len() * 5])
        })
        .unwrap_err();
        assert!(err.to_string().contains("test row 's0#3'"), "{err}");
    }

    #[test]
    fn empty_split_bad_options_and_model_errors() {
        let mut ds = tiny();
        ds.valid.clear();
        let ok = |rows: &[&Row]| Ok(vec![0.0; rows.len() * 5]);
        assert!(matches!(
            evaluate(&ds, SplitName::Valid, &EvalOptions::default(), ok),
            Err(EvalError::EmptySplit {
                split: SplitName::Valid,
                ..
            })
        ));
        let bad = EvalOptions {
            ks: vec![0],
            ..EvalOptions::default()
        };
        assert!(matches!(
            evaluate(&ds, SplitName::Test, &bad, ok),
            Err(EvalError::BadOptions(_))
        ));
        let err = evaluate(&ds, SplitName::Test, &EvalOptions::default(), |_| {
            Err(EvalError::Model("out of memory".into()))
        })
        .unwrap_err();
        assert_eq!(err, EvalError::Model("out of memory".into()));
    }

    #[test]
    fn options_deserialize_with_defaults_and_deny_unknown() {
        let o: EvalOptions = serde_json::from_str(r#"{"exclude_history": true}"#).unwrap();
        assert_eq!(o.ks, vec![1, 5, 10, 20]);
        assert_eq!(o.batch_size, 256);
        assert!(o.exclude_history);
        assert!(serde_json::from_str::<EvalOptions>(r#"{"k": [1]}"#).is_err());
    }
}
