//! Selection policies (SPEC 8): which training rows receive teacher
//! supervision, under a budget, because the teacher is the expensive part.
//!
//! - `all`: every row; `random`: a seeded uniform sample.
//! - uncertainty of the student on the row's true target or its
//!   prediction: `loss` (−log p_target), `entropy`, `least_confidence`
//!   (1 − max p), `margin` (smallest p₁ − p₂ first), `gradient_norm`
//!   (‖∂loss/∂output layer‖ = ‖p − y‖·‖h‖).
//! - diversity on the student's sequence representations: `coreset`
//!   (k-center greedy), `kmeans` (clusters, then the rows nearest each
//!   centroid, budget shared in proportion to cluster sizes), `badge`
//!   (k-means++ seeding on sketched gradient embeddings).
//! - post-hoc filters that need the teacher: `kl` (KL between teacher and
//!   student over the candidates, rows above a threshold) and `gt_error`
//!   (student's probability of the target below a threshold).
//!
//! Every choice is deterministic given the seed; ties go to the earlier
//! training row.

pub mod cluster;
pub mod kl;
pub mod signals;

use anyhow::{bail, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub use kl::candidate_kl;
pub use signals::{RowSignals, SignalOptions};

pub use distillrec_config::{Budget, BudgetError, Policy};

/// What a selection produced: chosen rows (indices into the pool, in
/// pool order) with the score that ranked them.
#[derive(Clone, Debug, PartialEq)]
pub struct Selection {
    /// Chosen pool indices and their scores, in pool order.
    pub rows: Vec<(usize, f64)>,
}

/// Takes the `n` highest-scoring rows (ties: the earlier row first).
fn top_by_score(scores: &[f64], n: usize) -> Vec<(usize, f64)> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut out: Vec<(usize, f64)> = idx.into_iter().take(n).map(|i| (i, scores[i])).collect();
    out.sort_by_key(|&(i, _)| i);
    out
}

/// Inputs of [`select`] besides the policy and the budget.
pub struct SelectInputs<'a> {
    /// Rows in the pool.
    pub pool: usize,
    /// Student signals per row (needed by every policy but `all`/`random`).
    pub signals: Option<&'a RowSignals>,
    /// Per pool row, the teacher–student KL over the candidates (`kl`; `None`
    /// for rows without teacher output).
    pub kl: Option<&'a [Option<f64>]>,
    /// Threshold of the post-hoc filters.
    pub threshold: Option<f64>,
    /// Seed of every random choice.
    pub seed: u64,
}

/// Chooses rows of the pool under `budget` with `policy`.
pub fn select(policy: Policy, budget: Budget, inputs: &SelectInputs) -> Result<Selection> {
    let pool = inputs.pool;
    if inputs.threshold.is_some_and(f64::is_nan) {
        bail!("the threshold is NaN; give a number");
    }
    let n = budget.rows(pool);
    let mut rng = ChaCha8Rng::seed_from_u64(inputs.seed);
    let need = |what: &str| anyhow::anyhow!("policy '{}' needs {what}", policy.name());
    let sig = || {
        inputs
            .signals
            .ok_or_else(|| need("the student's signals (--student)"))
    };
    let rows = match policy {
        Policy::All => {
            if n != pool {
                bail!("policy 'all' takes every row; with a budget below the pool use 'random' or an informed policy");
            }
            (0..pool).map(|i| (i, 1.0)).collect()
        }
        Policy::Random => {
            let mut idx: Vec<usize> = (0..pool).collect();
            idx.shuffle(&mut rng);
            let mut out: Vec<(usize, f64)> = idx.into_iter().take(n).map(|i| (i, 1.0)).collect();
            out.sort_by_key(|&(i, _)| i);
            out
        }
        Policy::Loss => top_by_score(&sig()?.loss, n),
        Policy::Entropy => top_by_score(&sig()?.entropy, n),
        Policy::LeastConfidence => top_by_score(&sig()?.least_confidence, n),
        Policy::Margin => {
            let s: Vec<f64> = sig()?.margin.iter().map(|m| -m).collect();
            top_by_score(&s, n)
        }
        Policy::GradientNorm => top_by_score(&sig()?.gradient_norm, n),
        Policy::Coreset => {
            let s = sig()?;
            cluster::k_center_greedy(&s.reps, s.dim, n, &mut rng)
        }
        Policy::Kmeans => {
            let s = sig()?;
            cluster::kmeans_select(&s.reps, s.dim, n, &mut rng)
        }
        Policy::Badge => {
            let s = sig()?;
            cluster::kmeans_pp_seeds(&s.badge, s.badge_dim, n, &mut rng)
        }
        Policy::Kl => {
            let kl = inputs
                .kl
                .ok_or_else(|| need("a teacher cache (--teacher-cache)"))?;
            let th = inputs.threshold.unwrap_or(f64::NEG_INFINITY);
            let s: Vec<f64> = kl
                .iter()
                .map(|v| match v {
                    Some(x) if *x > th => *x,
                    _ => f64::NEG_INFINITY,
                })
                .collect();
            let keep = s.iter().filter(|x| x.is_finite()).count();
            top_by_score(&s, n.min(keep))
        }
        Policy::GtError => {
            let s = sig()?;
            let th = inputs.threshold.unwrap_or(f64::INFINITY);
            let sc: Vec<f64> = s
                .target_prob
                .iter()
                .map(|&p| if p < th { -p } else { f64::NEG_INFINITY })
                .collect();
            let keep = sc.iter().filter(|x| x.is_finite()).count();
            top_by_score(&sc, n.min(keep))
        }
    };
    Ok(Selection { rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_parse() {
        assert_eq!("0.25".parse::<Budget>().unwrap(), Budget::Fraction(0.25));
        assert_eq!("25%".parse::<Budget>().unwrap(), Budget::Fraction(0.25));
        assert_eq!("1000".parse::<Budget>().unwrap(), Budget::Count(1000));
        assert_eq!("1.0".parse::<Budget>().unwrap(), Budget::Fraction(1.0));
        assert_eq!("100%".parse::<Budget>().unwrap(), Budget::Fraction(1.0));
        assert_eq!("2".parse::<Budget>().unwrap(), Budget::Count(2));
        for one in ["1", " 1 ", "01"] {
            let e = one.parse::<Budget>().unwrap_err().to_string();
            assert!(e.contains("ambiguous") && e.contains("100%"), "{e}");
        }
        for bad in ["0", "-1", "2.5", "abc", "150%"] {
            let e = bad.parse::<Budget>().unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
        assert_eq!(Budget::Fraction(0.1).rows(95), 10);
        assert_eq!(Budget::Count(500).rows(95), 95);
    }

    #[test]
    fn policies_parse_and_name() {
        for (&p, &n) in Policy::ALL.iter().zip(Policy::NAMES) {
            assert_eq!(n.parse::<Policy>().unwrap(), p);
            assert_eq!(p.name(), n);
        }
        assert!("bald"
            .parse::<Policy>()
            .unwrap_err()
            .to_string()
            .contains("coreset"));
    }

    fn signals() -> RowSignals {
        RowSignals {
            loss: vec![0.1, 3.0, 2.0, 0.5],
            entropy: vec![1.0, 0.2, 0.3, 2.0],
            least_confidence: vec![0.9, 0.1, 0.5, 0.2],
            margin: vec![0.5, 0.01, 0.3, 0.9],
            gradient_norm: vec![0.0, 1.0, 5.0, 2.0],
            target_prob: vec![0.9, 0.05, 0.1, 0.6],
            reps: vec![0.0; 8],
            dim: 2,
            badge: vec![0.0; 8],
            badge_dim: 2,
        }
    }

    #[test]
    fn uncertainty_policies_take_the_most_uncertain_rows() {
        let s = signals();
        let inp = SelectInputs {
            pool: 4,
            signals: Some(&s),
            kl: None,
            threshold: None,
            seed: 0,
        };
        let pick = |p: Policy| -> Vec<usize> {
            select(p, Budget::Count(2), &inp)
                .unwrap()
                .rows
                .iter()
                .map(|r| r.0)
                .collect()
        };
        assert_eq!(pick(Policy::Loss), vec![1, 2]);
        assert_eq!(pick(Policy::Entropy), vec![0, 3]);
        assert_eq!(pick(Policy::LeastConfidence), vec![0, 2]);
        assert_eq!(pick(Policy::Margin), vec![1, 2]);
        assert_eq!(pick(Policy::GradientNorm), vec![2, 3]);
        assert_eq!(pick(Policy::GtError), vec![1, 2]);
        // the filter keeps only rows under the threshold, even with room for more
        let inp2 = SelectInputs {
            threshold: Some(0.08),
            ..inp
        };
        let r = select(Policy::GtError, Budget::Count(3), &inp2).unwrap();
        assert_eq!(r.rows.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1]);
        let e = select(Policy::Kl, Budget::Count(1), &inp2).unwrap_err();
        assert!(e.to_string().contains("teacher cache"), "{e}");
        let nan = SelectInputs {
            threshold: Some(f64::NAN),
            ..inp
        };
        let e = select(Policy::GtError, Budget::Count(1), &nan).unwrap_err();
        assert!(e.to_string().contains("threshold is NaN"), "{e}");
    }

    #[test]
    fn kl_filter_and_random_are_deterministic() {
        let kl = [Some(0.5), None, Some(2.0), Some(0.05)];
        let inp = SelectInputs {
            pool: 4,
            signals: None,
            kl: Some(&kl),
            threshold: Some(0.1),
            seed: 7,
        };
        let r = select(Policy::Kl, Budget::Fraction(1.0), &inp).unwrap();
        assert_eq!(r.rows.iter().map(|r| r.0).collect::<Vec<_>>(), vec![0, 2]);
        let a = select(Policy::Random, Budget::Count(2), &inp).unwrap();
        let b = select(Policy::Random, Budget::Count(2), &inp).unwrap();
        assert_eq!(a, b);
        let c = select(
            Policy::Random,
            Budget::Count(2),
            &SelectInputs { seed: 8, ..inp },
        )
        .unwrap();
        assert_eq!(c.rows.len(), 2);
        assert!(select(
            Policy::All,
            Budget::Count(2),
            &SelectInputs { seed: 8, ..inp }
        )
        .is_err());
    }
}
