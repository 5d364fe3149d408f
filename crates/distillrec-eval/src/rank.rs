//! The rank of a row's target among all items, with explicit tie and
//! exclusion rules (SPEC 5).
//!
//! - Column 0 (padding) is never a candidate, whatever its score.
//! - Excluded items (a row's history when `exclude_history` is on) are not
//!   candidates, except the target itself, which is never excluded: datasets
//!   with repeats can have the target in its own history.
//! - [`TieBreak::Pessimistic`]: rank = 1 + #{candidates j != target with
//!   s_j >= s_target}. A tie never favours the target, so a constant model
//!   scores as badly as it deserves.
//! - [`TieBreak::Random`]: rank = 1 + #{s_j > s_target} + U with U uniform in
//!   `0..=#ties`, drawn from a `ChaCha8Rng` seeded with the row seed, so
//!   results are reproducible.
//! - A NaN in any candidate column, or a NaN/infinite target score, is an error.

use distillrec_data::{ItemId, PAD};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{EvalError, UNLOCATED};

/// How ties between the target's score and other candidates are resolved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TieBreak {
    /// Every tied candidate ranks above the target (the safe default: it
    /// cannot inflate metrics of degenerate, constant-scoring models).
    #[default]
    Pessimistic,
    /// The target lands uniformly at random among its ties, seeded per row.
    Random,
}

/// Derives the seed of row `row_index` from a run seed, so per-row random
/// choices do not depend on batching or on the order rows are processed.
pub fn row_seed(seed: u64, row_index: u64) -> u64 {
    splitmix64(seed ^ splitmix64(row_index.wrapping_add(0x9E37_79B9_7F4A_7C15)))
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Turns counts of strictly-higher and tied competitors into a 1-based rank.
pub(crate) fn resolve_rank(higher: usize, ties: usize, rule: TieBreak, row_seed: u64) -> usize {
    match rule {
        TieBreak::Pessimistic => 1 + higher + ties,
        TieBreak::Random if ties == 0 => 1 + higher,
        TieBreak::Random => 1 + higher + ChaCha8Rng::seed_from_u64(row_seed).gen_range(0..=ties),
    }
}

/// Checks a target score is usable.
pub(crate) fn check_target_score(target: ItemId, score: f32) -> Result<(), EvalError> {
    if score.is_finite() {
        Ok(())
    } else {
        Err(EvalError::NonFiniteTarget {
            location: UNLOCATED.into(),
            target,
            score,
        })
    }
}

/// Ranks targets over score vectors of one catalogue, reusing a
/// generation-stamped mask so that excluding a history costs O(|history|)
/// and ranking a row allocates nothing.
#[derive(Clone, Debug)]
pub struct Ranker {
    num_items: usize,
    stamp: Vec<u32>,
    generation: u32,
}

impl Ranker {
    /// A ranker for a catalogue of `num_items` items (score vectors of
    /// `num_items + 1` entries).
    pub fn new(num_items: usize) -> Self {
        Self {
            num_items,
            stamp: vec![0; num_items + 1],
            generation: 0,
        }
    }

    /// Catalogue size `N` this ranker expects.
    pub fn num_items(&self) -> usize {
        self.num_items
    }

    /// The 1-based rank of `target` given one row's `scores` (`N + 1`
    /// entries), under the module's tie and exclusion rules. O(N) time.
    pub fn rank(
        &mut self,
        scores: &[f32],
        target: ItemId,
        excluded: &[ItemId],
        ties: TieBreak,
        row_seed: u64,
    ) -> Result<usize, EvalError> {
        let n = self.num_items;
        if scores.len() != n + 1 {
            return Err(EvalError::MatrixSize {
                what: format!("score vector of one row (N = {n}, column 0 is padding)"),
                expected: n + 1,
                actual: scores.len(),
            });
        }
        if target == PAD || target as usize > n {
            return Err(EvalError::BadTarget {
                location: UNLOCATED.into(),
                target,
                num_items: n,
            });
        }
        let t = scores[target as usize];
        check_target_score(target, t)?;

        // One branch-free pass over every real item, the target included.
        let (mut higher, mut tied, mut nan) = (0usize, 0usize, 0usize);
        for &s in &scores[1..] {
            higher += (s > t) as usize;
            tied += (s == t) as usize;
            nan += s.is_nan() as usize;
        }
        tied -= 1; // the target ties with itself

        // Take each distinct excluded item (never the target) back out.
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.stamp.fill(0);
            self.generation = 1;
        }
        let generation = self.generation;
        for &e in excluded {
            if e == PAD || e == target {
                continue;
            }
            if e as usize > n {
                return Err(EvalError::BadExcluded {
                    location: UNLOCATED.into(),
                    item: e,
                    num_items: n,
                });
            }
            let slot = &mut self.stamp[e as usize];
            if *slot == generation {
                continue;
            }
            *slot = generation;
            let s = scores[e as usize];
            if s > t {
                higher -= 1;
            } else if s == t {
                tied -= 1;
            } else if s.is_nan() {
                nan -= 1;
            }
        }
        if nan > 0 {
            let item = (1..=n)
                .find(|&j| scores[j].is_nan() && self.stamp[j] != generation)
                .unwrap_or(0) as ItemId;
            return Err(EvalError::NanScore {
                location: UNLOCATED.into(),
                item,
            });
        }
        Ok(resolve_rank(higher, tied, ties, row_seed))
    }
}

/// One-off form of [`Ranker::rank`] for a single row: `scores` has `N + 1`
/// entries and `N` is inferred from it. Allocates a mask per call; loops
/// over many rows should hold a [`Ranker`] instead.
pub fn rank_of_target(
    scores: &[f32],
    target: ItemId,
    excluded: &[ItemId],
    ties: TieBreak,
    row_seed: u64,
) -> Result<usize, EvalError> {
    if scores.is_empty() {
        return Err(EvalError::MatrixSize {
            what: "score vector of one row (column 0 is padding)".into(),
            expected: 2,
            actual: 0,
        });
    }
    Ranker::new(scores.len() - 1).rank(scores, target, excluded, ties, row_seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: TieBreak = TieBreak::Pessimistic;

    #[test]
    fn rank_without_ties() {
        // items 1..=5 with scores 0.1 0.9 0.5 0.3 0.7: order 2,5,3,4,1.
        let s = [0.0, 0.1, 0.9, 0.5, 0.3, 0.7];
        assert_eq!(rank_of_target(&s, 2, &[], P, 0).unwrap(), 1);
        assert_eq!(rank_of_target(&s, 3, &[], P, 0).unwrap(), 3);
        assert_eq!(rank_of_target(&s, 1, &[], P, 0).unwrap(), 5);
        assert_eq!(rank_of_target(&s, 1, &[], TieBreak::Random, 9).unwrap(), 5);
    }

    #[test]
    fn pessimistic_ties_count_against_the_target() {
        // target 3 ties with items 1 and 5; item 2 is strictly higher.
        let s = [0.0, 0.5, 0.8, 0.5, 0.1, 0.5];
        assert_eq!(rank_of_target(&s, 3, &[], P, 0).unwrap(), 4);
        // All equal: last place.
        let flat = [0.0f32; 11];
        assert_eq!(rank_of_target(&flat, 7, &[], P, 0).unwrap(), 10);
    }

    #[test]
    fn random_ties_are_seeded_bounded_and_centred() {
        // 2 strictly higher (items 1, 2), target 3 tied with 4 others (4..=7).
        let s = [0.0, 2.0, 3.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5];
        let (lo, hi) = (3, 7);
        let mut sum = 0.0;
        let trials = 4000u64;
        for seed in 0..trials {
            let rs = row_seed(seed, 17);
            let r = rank_of_target(&s, 3, &[], TieBreak::Random, rs).unwrap();
            assert_eq!(r, rank_of_target(&s, 3, &[], TieBreak::Random, rs).unwrap());
            assert!((lo..=hi).contains(&r), "rank {r} outside [{lo}, {hi}]");
            sum += r as f64;
        }
        let mean = sum / trials as f64;
        assert!((mean - 5.0).abs() < 0.15, "mean rank {mean} not near 5");
        assert_eq!(rank_of_target(&s, 3, &[], P, 0).unwrap(), hi);
    }

    #[test]
    fn padding_column_is_ignored() {
        let s = [1e30, 0.2, 0.9, 0.1];
        assert_eq!(rank_of_target(&s, 2, &[], P, 0).unwrap(), 1);
        let nan_pad = [f32::NAN, 0.2, 0.9, 0.1];
        assert_eq!(rank_of_target(&nan_pad, 1, &[], P, 0).unwrap(), 2);
        assert_eq!(rank_of_target(&s, 1, &[PAD], P, 0).unwrap(), 2);
    }

    #[test]
    fn excluded_history_is_skipped_but_never_the_target() {
        // target 4; items 1, 2, 3 score higher.
        let s = [0.0, 0.9, 0.8, 0.7, 0.5, 0.1];
        assert_eq!(rank_of_target(&s, 4, &[], P, 0).unwrap(), 4);
        assert_eq!(rank_of_target(&s, 4, &[1, 3], P, 0).unwrap(), 2);
        // duplicates in the history are excluded once.
        assert_eq!(rank_of_target(&s, 4, &[1, 3, 1, 3, 5], P, 0).unwrap(), 2);
        // target in its own history (repeats) is still ranked.
        assert_eq!(rank_of_target(&s, 4, &[4, 1, 4], P, 0).unwrap(), 3);
        // an excluded tie no longer counts.
        let t = [0.0, 0.5, 0.5, 0.5];
        assert_eq!(rank_of_target(&t, 1, &[2], P, 0).unwrap(), 2);
    }

    #[test]
    fn ranker_reuse_forgets_previous_exclusions() {
        let s = [0.0, 0.9, 0.8, 0.7, 0.5];
        let mut r = Ranker::new(4);
        assert_eq!(r.rank(&s, 4, &[1, 2], P, 0).unwrap(), 2);
        assert_eq!(r.rank(&s, 4, &[], P, 0).unwrap(), 4);
        r.generation = u32::MAX; // force the wrap-around path
        assert_eq!(r.rank(&s, 4, &[3], P, 0).unwrap(), 3);
        assert_eq!(r.rank(&s, 4, &[], P, 0).unwrap(), 4);
    }

    #[test]
    fn nan_and_bad_inputs_are_errors() {
        let s = [0.0, 0.2, f32::NAN, 0.4];
        assert!(matches!(
            rank_of_target(&s, 1, &[], P, 0),
            Err(EvalError::NanScore { item: 2, .. })
        ));
        // a NaN in an excluded column is not counted, so not an error.
        assert_eq!(rank_of_target(&s, 1, &[2], P, 0).unwrap(), 2);
        // NaN target, even when it is in the history.
        assert!(matches!(
            rank_of_target(&s, 2, &[2], P, 0),
            Err(EvalError::NonFiniteTarget { target: 2, .. })
        ));
        let inf = [0.0, f32::INFINITY, 0.1];
        assert!(matches!(
            rank_of_target(&inf, 1, &[], P, 0),
            Err(EvalError::NonFiniteTarget { .. })
        ));
        // an infinite competitor is fine.
        assert_eq!(rank_of_target(&inf, 2, &[], P, 0).unwrap(), 2);
        let ok = [0.0, 0.1, 0.2];
        assert!(matches!(
            rank_of_target(&ok, 0, &[], P, 0),
            Err(EvalError::BadTarget { target: 0, .. })
        ));
        assert!(matches!(
            rank_of_target(&ok, 3, &[], P, 0),
            Err(EvalError::BadTarget { target: 3, .. })
        ));
        assert!(matches!(
            rank_of_target(&ok, 1, &[9], P, 0),
            Err(EvalError::BadExcluded { item: 9, .. })
        ));
        assert!(matches!(
            Ranker::new(3).rank(&ok, 1, &[], P, 0),
            Err(EvalError::MatrixSize {
                expected: 4,
                actual: 3,
                ..
            })
        ));
        assert!(rank_of_target(&[], 1, &[], P, 0).is_err());
    }

    #[test]
    fn tie_break_serde_is_snake_case() {
        let t: TieBreak = serde_json::from_str("\"random\"").unwrap();
        assert_eq!(t, TieBreak::Random);
        assert_eq!(
            serde_json::to_string(&TieBreak::Pessimistic).unwrap(),
            "\"pessimistic\""
        );
        assert_eq!(TieBreak::default(), TieBreak::Pessimistic);
    }
}
