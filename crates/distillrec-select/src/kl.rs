//! The post-hoc `kl` filter's signal (SPEC 8): per training row, the
//! Kullback–Leibler divergence `KL(q ‖ p)` between the teacher and the
//! student over the teacher's candidates. The teacher's distribution is
//! `q ∝ exp(−d)` over its confidence distances, the student's `p ∝ exp(s)`
//! over its scores of the same candidates; rows where the two disagree most
//! are the ones the teacher can still teach.

use anyhow::Result;

use distillrec_cache::TeacherCache;
use distillrec_data::Dataset;
use distillrec_models::Student;

/// Rows scored per call of the student.
const BATCH: usize = 256;

/// Teacher–student KL over each row's candidates for the training rows
/// `pool` (indices into `ds.train`); `None` where the cache has no output
/// for the row. The cache is checked against `ds` and its `fingerprint`
/// first, so a cache of another dataset is an error.
pub fn candidate_kl(
    student: &Student,
    ds: &Dataset,
    fingerprint: &str,
    cache: &TeacherCache,
    pool: &[usize],
) -> Result<Vec<Option<f64>>> {
    let lookup = cache.row_lookup(fingerprint, ds)?;
    let n1 = ds.num_items() + 1;
    let mut out = vec![None; pool.len()];
    let rows: Vec<(usize, usize)> = (0..pool.len())
        .filter_map(|i| lookup[pool[i]].map(|t| (i, t)))
        .collect();
    for chunk in rows.chunks(BATCH) {
        let hist: Vec<&[u32]> = chunk
            .iter()
            .map(|&(i, _)| ds.history(&ds.train[pool[i]]))
            .collect();
        let scores = student.score_histories(&hist)?;
        for (j, &(i, t)) in chunk.iter().enumerate() {
            let s: Vec<f64> = cache
                .row_items(t)
                .iter()
                .map(|&it| scores[j * n1 + it as usize] as f64)
                .collect();
            out[i] = Some(kl_over_candidates(cache.row_distances(t), &s));
        }
    }
    Ok(out)
}

/// `KL(q ‖ p)` for one row: `q = softmax(−distances)` (the teacher),
/// `p = softmax(scores)` (the student), both over the same candidates.
pub fn kl_over_candidates(distances: &[f32], scores: &[f64]) -> f64 {
    let q: Vec<f64> = distances.iter().map(|&x| -(x as f64)).collect();
    let lq = log_softmax(&q);
    let lp = log_softmax(scores);
    lq.iter().zip(&lp).map(|(q, p)| q.exp() * (q - p)).sum()
}

/// Numerically stable `log softmax` (the maximum is subtracted first).
fn log_softmax(x: &[f64]) -> Vec<f64> {
    let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let z = m + x.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
    x.iter().map(|v| v - z).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_matches_a_hand_computed_value() {
        // teacher: d = [0, ln 3] -> q ∝ [1, 1/3] = [3/4, 1/4];
        // student: equal scores -> p = [1/2, 1/2];
        // KL = 3/4·ln(3/2) + 1/4·ln(1/2) = 0.304098831 − 0.173286795 = 0.130812036
        let kl = kl_over_candidates(&[0.0, 3f32.ln()], &[5.0, 5.0]);
        assert!((kl - 0.130_812_036).abs() < 1e-7, "{kl}");
        // the direction matters: KL(p ‖ q) would be 0.143841036
        assert!((kl - 0.143_841_036).abs() > 1e-3);
    }

    #[test]
    fn kl_is_zero_when_student_agrees_and_survives_large_scores() {
        // q ∝ exp(−d) and p ∝ exp(s) with s = −d + const are the same distribution
        let kl = kl_over_candidates(&[1.0, 2.0, 4.0], &[999.0, 998.0, 996.0]);
        assert!(kl.abs() < 1e-12, "{kl}");
        // scores far beyond exp's range stay finite (max subtracted first)
        let kl = kl_over_candidates(&[0.0, 0.0], &[2000.0, 0.0]);
        // q = [1/2, 1/2], p ≈ [1, e^−2000]: KL = 1/2·ln(1/2) + 1/2·(ln(1/2) + 2000)
        assert!((kl - (1000.0 - 2f64.ln())).abs() < 1e-9, "{kl}");
    }
}
