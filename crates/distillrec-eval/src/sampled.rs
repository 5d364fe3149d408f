//! Sampled-candidate protocol used to compare with LLM recommenders
//! (iLoRA/LLaRA, SPEC 5): each row's target plus `n_neg` seeded random items
//! not in the row's history, the model scores only those candidates and the
//! target is ranked among them with the usual tie rule.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use distillrec_data::{Dataset, ItemId, Row, SplitName, PAD};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{EvalError, UNLOCATED};
use crate::metrics::MetricAccumulator;
use crate::options::{split_rows, EvalOptions, EvalReport};
use crate::rank::{check_target_score, resolve_rank, row_seed};

/// The prefix of the sampled protocol's metric keys (`sampled_hr@10`),
/// which sit beside the full ranking's (`hr@10`) in one report.
pub const SAMPLED_PREFIX: &str = "sampled_";

/// Mixed into `opts.seed` for candidate draws, so candidates and tie
/// breaking use independent random streams.
const CANDIDATE_SALT: u64 = 0xC0FF_EE00_CA4D_1DA7;

/// Draws `n_neg` distinct items from `1..=num_items` that are neither in
/// `history` nor the `target`, appends the target and shuffles, all from
/// `rng` (deterministic for a seeded rng). Errors if fewer than `n_neg`
/// items are eligible, if the target is not an item, or if a history item
/// is beyond the catalogue (`PAD` in the history is ignored).
pub fn sample_candidates(
    rng: &mut impl Rng,
    num_items: usize,
    history: &[ItemId],
    target: ItemId,
    n_neg: usize,
) -> Result<Vec<ItemId>, EvalError> {
    if target == PAD || target as usize > num_items {
        return Err(EvalError::BadTarget {
            location: UNLOCATED.into(),
            target,
            num_items,
        });
    }
    let mut forbidden: HashSet<ItemId> = HashSet::with_capacity(history.len() + 1);
    forbidden.insert(target);
    for &h in history {
        if h == PAD {
            continue;
        }
        if h as usize > num_items {
            return Err(EvalError::BadExcluded {
                location: UNLOCATED.into(),
                item: h,
                num_items,
            });
        }
        forbidden.insert(h);
    }
    let available = num_items - forbidden.len();
    if available < n_neg {
        return Err(EvalError::CatalogueTooSmall {
            location: UNLOCATED.into(),
            needed: n_neg,
            available,
        });
    }
    let mut out = Vec::with_capacity(n_neg + 1);
    if 2 * available >= num_items && 2 * n_neg <= available {
        // Sparse case: rejection sampling succeeds with probability >= 1/4.
        let mut chosen: HashSet<ItemId> = HashSet::with_capacity(n_neg);
        while out.len() < n_neg {
            let x = rng.gen_range(1..=num_items as ItemId);
            if !forbidden.contains(&x) && chosen.insert(x) {
                out.push(x);
            }
        }
    } else {
        // Dense case: enumerate the eligible items, O(N).
        let eligible: Vec<ItemId> = (1..=num_items as ItemId)
            .filter(|i| !forbidden.contains(i))
            .collect();
        out.extend(
            rand::seq::index::sample(rng, eligible.len(), n_neg)
                .iter()
                .map(|i| eligible[i]),
        );
    }
    out.push(target);
    out.shuffle(rng);
    Ok(out)
}

/// Ranks `target` among `candidates` given their `scores` (same order),
/// under the tie rule of [`crate::rank`].
fn rank_among(
    candidates: &[ItemId],
    scores: &[f32],
    target: ItemId,
    ties: crate::rank::TieBreak,
    seed: u64,
) -> Result<usize, EvalError> {
    let pos = candidates
        .iter()
        .position(|&c| c == target)
        .ok_or_else(|| EvalError::BadTarget {
            location: UNLOCATED.into(),
            target,
            num_items: candidates.len(),
        })?;
    let t = scores[pos];
    check_target_score(target, t)?;
    let (mut higher, mut tied) = (0usize, 0usize);
    for (j, (&c, &s)) in candidates.iter().zip(scores).enumerate() {
        if j == pos {
            continue;
        }
        if s.is_nan() {
            return Err(EvalError::NanScore {
                location: UNLOCATED.into(),
                item: c,
            });
        }
        higher += (s > t) as usize;
        tied += (s == t) as usize;
    }
    Ok(resolve_rank(higher, tied, ties, seed))
}

/// The candidate lists of the sampled protocol for every row of `split`,
/// exactly as [`evaluate_sampled`] draws them (the target plus `n_neg`
/// items outside the history, shuffled, seeded by `(opts.seed, row
/// index)`), so that another model (the generative LLM teacher) can be
/// asked about the same candidates.
pub fn split_candidates(
    ds: &Dataset,
    split: SplitName,
    opts: &EvalOptions,
    n_neg: usize,
) -> Result<Vec<Vec<ItemId>>, EvalError> {
    let rows = split_rows(ds, split)?;
    rows.iter()
        .enumerate()
        .map(|(index, row)| {
            let mut rng =
                ChaCha8Rng::seed_from_u64(row_seed(opts.seed ^ CANDIDATE_SALT, index as u64));
            sample_candidates(
                &mut rng,
                ds.num_items(),
                ds.history(row),
                ds.target(row),
                n_neg,
            )
            .map_err(|e| e.locate(split, &row.key))
        })
        .collect()
}

/// Sampled-candidate evaluation of `split`: for each row, the target plus
/// `n_neg` random items outside the row's whole history (always, whatever
/// `opts.exclude_history` says), drawn from a `ChaCha8Rng` seeded by
/// `(opts.seed, row index)` so candidates do not depend on the batch size.
/// `score` gets a batch of rows with their candidate lists and returns one
/// score per candidate, in the same order. Reports `sampled_hr@K` and
/// `sampled_ndcg@K` for every `K` in `opts.ks` with `K <= n_neg + 1`.
pub fn evaluate_sampled<F>(
    ds: &Dataset,
    split: SplitName,
    opts: &EvalOptions,
    n_neg: usize,
    mut score: F,
) -> Result<EvalReport, EvalError>
where
    F: FnMut(&[&Row], &[Vec<ItemId>]) -> Result<Vec<Vec<f32>>, EvalError>,
{
    opts.validate()?;
    let ks: Vec<usize> = opts
        .ks
        .iter()
        .copied()
        .filter(|&k| k <= n_neg + 1)
        .collect();
    if ks.is_empty() {
        return Err(EvalError::BadOptions(format!(
            "no K in {:?} is at most the {} candidates of the sampled protocol",
            opts.ks,
            n_neg + 1
        )));
    }
    let rows = split_rows(ds, split)?;
    let start = Instant::now();
    let n = ds.num_items();
    let mut acc = MetricAccumulator::new(&ks);
    let mut batch: Vec<&Row> = Vec::with_capacity(opts.batch_size.min(rows.len()));
    let mut cands: Vec<Vec<ItemId>> = Vec::with_capacity(batch.capacity());
    for (bi, chunk) in rows.chunks(opts.batch_size).enumerate() {
        batch.clear();
        batch.extend(chunk.iter());
        cands.clear();
        for (i, row) in chunk.iter().enumerate() {
            let index = (bi * opts.batch_size + i) as u64;
            let mut rng = ChaCha8Rng::seed_from_u64(row_seed(opts.seed ^ CANDIDATE_SALT, index));
            let c = sample_candidates(&mut rng, n, ds.history(row), ds.target(row), n_neg)
                .map_err(|e| e.locate(split, &row.key))?;
            cands.push(c);
        }
        let scores = score(&batch, &cands)?;
        if scores.len() != chunk.len() {
            return Err(EvalError::MatrixSize {
                what: format!("candidate score rows of {} batch {bi}", split.as_str()),
                expected: chunk.len(),
                actual: scores.len(),
            });
        }
        for (i, ((row, c), s)) in chunk.iter().zip(&cands).zip(&scores).enumerate() {
            if s.len() != c.len() {
                return Err(EvalError::MatrixSize {
                    what: format!("candidate scores of {} row '{}'", split.as_str(), row.key),
                    expected: c.len(),
                    actual: s.len(),
                });
            }
            let index = (bi * opts.batch_size + i) as u64;
            let rank = rank_among(c, s, ds.target(row), opts.ties, row_seed(opts.seed, index))
                .map_err(|e| e.locate(split, &row.key))?;
            acc.add(rank);
        }
    }
    let metrics: BTreeMap<String, f64> = acc
        .finish()
        .into_iter()
        .filter(|(k, _)| k.starts_with("hr@") || k.starts_with("ndcg@"))
        .map(|(k, v)| (format!("{SAMPLED_PREFIX}{k}"), v))
        .collect();
    let report = EvalReport::new(metrics, acc.count(), start);
    tracing::debug!(
        dataset = %ds.name,
        split = split.as_str(),
        rows = report.rows,
        n_neg,
        "sampled-candidate evaluation done"
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rank::TieBreak;
    use crate::testutil::build;

    #[test]
    fn candidates_are_distinct_exclude_history_and_contain_target() {
        let history = [1, 2, 3, 2, 5, 7, 9, 9, 10, 0];
        for seed in 0..50 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            // target 5 is also in the history (repeats).
            let c = sample_candidates(&mut rng, 60, &history, 5, 19).unwrap();
            assert_eq!(c.len(), 20);
            let set: HashSet<_> = c.iter().copied().collect();
            assert_eq!(set.len(), 20, "duplicates in {c:?}");
            assert_eq!(c.iter().filter(|&&x| x == 5).count(), 1);
            for &x in &c {
                assert!((1..=60).contains(&x));
                assert!(x == 5 || !history.contains(&x), "{x} is in the history");
            }
            let mut again = ChaCha8Rng::seed_from_u64(seed);
            assert_eq!(
                c,
                sample_candidates(&mut again, 60, &history, 5, 19).unwrap()
            );
        }
    }

    #[test]
    fn split_candidates_are_the_ones_the_sampled_protocol_scores() {
        let ds = build(
            40,
            &[&[1, 2, 3, 4, 5], &[6, 7, 8, 9], &[10, 11, 12, 13, 14]],
            &[(0, 1)],
            &[(0, 3), (1, 2), (2, 4), (2, 3)],
            &[(0, 4)],
        );
        let opts = EvalOptions {
            batch_size: 3,
            ..EvalOptions::default()
        };
        let mut asked = Vec::new();
        evaluate_sampled(&ds, SplitName::Valid, &opts, 9, |_, cands| {
            asked.extend(cands.iter().cloned());
            Ok(cands.iter().map(|c| vec![0.0; c.len()]).collect())
        })
        .unwrap();
        assert_eq!(asked.len(), 4);
        assert_eq!(
            split_candidates(&ds, SplitName::Valid, &opts, 9).unwrap(),
            asked
        );
    }

    #[test]
    fn dense_catalogue_takes_every_eligible_item() {
        // 25 items, history 1..=5, target 6: exactly 19 eligible.
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let c = sample_candidates(&mut rng, 25, &[1, 2, 3, 4, 5], 6, 19).unwrap();
        let mut sorted = c.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (6..=25).collect::<Vec<_>>());
        assert!(matches!(
            sample_candidates(&mut rng, 25, &[1, 2, 3, 4, 5], 6, 20),
            Err(EvalError::CatalogueTooSmall {
                needed: 20,
                available: 19,
                ..
            })
        ));
        assert!(matches!(
            sample_candidates(&mut rng, 25, &[], 26, 1),
            Err(EvalError::BadTarget { target: 26, .. })
        ));
    }

    fn thirty() -> Dataset {
        build(
            30,
            &[&[1, 2, 3, 4, 5], &[10, 11, 12], &[20, 21, 22, 23]],
            &[(0, 1), (1, 1)],
            &[(2, 2)],
            &[(0, 4), (1, 2), (2, 3), (0, 3)],
        )
    }

    #[test]
    fn sampled_metrics_match_ranks_computed_from_the_candidates() {
        let ds = thirty();
        let opts = EvalOptions {
            batch_size: 3,
            seed: 5,
            ..EvalOptions::default()
        };
        // Score = item id: the target's rank is 1 + #candidates with larger id.
        let mut seen = Vec::new();
        let rep = evaluate_sampled(&ds, SplitName::Test, &opts, 9, |rows, cands| {
            assert_eq!(rows.len(), cands.len());
            for (r, c) in rows.iter().zip(cands) {
                assert_eq!(c.len(), 10);
                for &x in c {
                    assert!(x == ds.target(r) || !ds.history(r).contains(&x));
                }
                seen.push((ds.target(r), c.clone()));
            }
            Ok(cands
                .iter()
                .map(|c| c.iter().map(|&x| x as f32).collect())
                .collect())
        })
        .unwrap();
        assert_eq!(rep.rows, 4);
        let keys: Vec<_> = rep.metrics.keys().cloned().collect();
        let expected_keys = [
            "sampled_hr@1",
            "sampled_hr@10",
            "sampled_hr@5",
            "sampled_ndcg@1",
            "sampled_ndcg@10",
            "sampled_ndcg@5",
        ];
        assert_eq!(keys, expected_keys);
        let ranks: Vec<usize> = seen
            .iter()
            .map(|(t, c)| 1 + c.iter().filter(|&&x| x > *t).count())
            .collect();
        let hr5 = ranks.iter().filter(|&&r| r <= 5).count() as f64 / 4.0;
        assert!((rep.metrics["sampled_hr@5"] - hr5).abs() < 1e-12);
        assert_eq!(rep.metrics["sampled_hr@10"], 1.0);

        // Same candidates with another batch size.
        let mut seen2 = Vec::new();
        let opts1 = EvalOptions {
            batch_size: 1,
            ..opts.clone()
        };
        let rep2 = evaluate_sampled(&ds, SplitName::Test, &opts1, 9, |rows, cands| {
            for (r, c) in rows.iter().zip(cands) {
                seen2.push((ds.target(r), c.clone()));
            }
            Ok(cands
                .iter()
                .map(|c| c.iter().map(|&x| x as f32).collect())
                .collect())
        })
        .unwrap();
        assert_eq!(seen, seen2);
        assert_eq!(rep.metrics, rep2.metrics);
    }

    #[test]
    fn oracle_and_constant_scorers() {
        let ds = thirty();
        let opts = EvalOptions::default();
        let oracle = evaluate_sampled(&ds, SplitName::Test, &opts, 19, |rows, cands| {
            Ok(rows
                .iter()
                .zip(cands)
                .map(|(r, c)| {
                    c.iter()
                        .map(|&x| if x == ds.target(r) { 1.0 } else { 0.0 })
                        .collect()
                })
                .collect())
        })
        .unwrap();
        assert_eq!(oracle.metrics["sampled_hr@1"], 1.0);
        assert_eq!(oracle.metrics["sampled_ndcg@20"], 1.0);
        let flat = |_: &[&Row], cands: &[Vec<ItemId>]| {
            Ok(cands.iter().map(|c| vec![0.5; c.len()]).collect())
        };
        let pess = evaluate_sampled(&ds, SplitName::Test, &opts, 19, flat).unwrap();
        assert_eq!(pess.metrics["sampled_hr@1"], 0.0);
        assert_eq!(pess.metrics["sampled_hr@20"], 1.0);
        let rand_opts = EvalOptions {
            ties: TieBreak::Random,
            ..EvalOptions::default()
        };
        let r1 = evaluate_sampled(&ds, SplitName::Test, &rand_opts, 19, flat).unwrap();
        let r2 = evaluate_sampled(&ds, SplitName::Test, &rand_opts, 19, flat).unwrap();
        assert_eq!(r1.metrics, r2.metrics);
    }

    #[test]
    fn bad_shapes_nan_and_small_catalogue_are_errors() {
        let ds = thirty();
        let opts = EvalOptions::default();
        let short = evaluate_sampled(&ds, SplitName::Test, &opts, 9, |_, cands| {
            Ok(cands.iter().map(|c| vec![0.0; c.len() - 1]).collect())
        });
        assert!(matches!(
            short,
            Err(EvalError::MatrixSize {
                expected: 10,
                actual: 9,
                ..
            })
        ));
        let missing = evaluate_sampled(&ds, SplitName::Test, &opts, 9, |_, _| Ok(vec![]));
        assert!(matches!(missing, Err(EvalError::MatrixSize { .. })));
        let nan = evaluate_sampled(&ds, SplitName::Test, &opts, 9, |_, cands| {
            Ok(cands.iter().map(|c| vec![f32::NAN; c.len()]).collect())
        })
        .unwrap_err();
        assert!(nan.to_string().contains("test row 's0#4'"), "{nan}");
        // row s0#4 has 4 history items + target: 25 eligible of 30.
        let big = evaluate_sampled(&ds, SplitName::Test, &opts, 26, |_, _| Ok(vec![]));
        assert!(matches!(big, Err(EvalError::CatalogueTooSmall { .. })));
        let tiny_k = EvalOptions {
            ks: vec![5],
            ..EvalOptions::default()
        };
        assert!(matches!(
            evaluate_sampled(&ds, SplitName::Test, &tiny_k, 3, |_, _| Ok(vec![])),
            Err(EvalError::BadOptions(_))
        ));
    }
}
