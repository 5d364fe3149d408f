//! What the informed policies read: per training row, the student's
//! uncertainty about it and its sequence representation, computed in
//! batches at inference (no dropout).

use anyhow::Result;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use distillrec_data::Dataset;
use distillrec_models::Student;

/// Per-row student signals over the pool of training rows.
#[derive(Clone, Debug, Default)]
pub struct RowSignals {
    /// `−log p(target)`.
    pub loss: Vec<f64>,
    /// Entropy of the student's distribution over the catalogue.
    pub entropy: Vec<f64>,
    /// `1 − max p`.
    pub least_confidence: Vec<f64>,
    /// `p₁ − p₂` of the two most likely items.
    pub margin: Vec<f64>,
    /// `‖p − y‖·‖h‖`: the norm of the loss gradient w.r.t. the output layer.
    pub gradient_norm: Vec<f64>,
    /// `p(target)`.
    pub target_prob: Vec<f64>,
    /// Sequence representations `[rows, dim]`.
    pub reps: Vec<f32>,
    /// Representation size.
    pub dim: usize,
    /// BADGE gradient embeddings, sketched `[rows, badge_dim]`.
    pub badge: Vec<f32>,
    /// Sketch size.
    pub badge_dim: usize,
}

/// Options of [`RowSignals::compute`].
#[derive(Clone, Debug)]
pub struct SignalOptions {
    /// Rows per forward pass.
    pub batch_size: usize,
    /// Seed of the BADGE sketch's projection.
    pub seed: u64,
    /// Show a progress bar.
    pub progress: bool,
}

/// Sketch sizes of the BADGE embedding: the gradient of the loss w.r.t.
/// the output layer is `(p − e_ŷ) ⊗ h` (`N × d` values); it is sketched as
/// `(R₁(p − e_ŷ)) ⊗ (R₂ h)` with seeded Gaussian projections, which keeps
/// inner products in expectation (`⟨a⊗b, c⊗d⟩ = ⟨a,c⟩⟨b,d⟩`).
const SKETCH_P: usize = 8;
const SKETCH_H: usize = 8;

fn gaussian(rows: usize, cols: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    use rand::distributions::Distribution;
    let normal = rand::distributions::Uniform::new(f64::EPSILON, 1.0);
    let mut v = Vec::with_capacity(rows * cols);
    while v.len() < rows * cols {
        let (a, b) = (normal.sample(rng), normal.sample(rng));
        let r = (-2.0 * a.ln()).sqrt();
        v.push((r * (2.0 * std::f64::consts::PI * b).cos() / (cols as f64).sqrt()) as f32);
    }
    v
}

impl RowSignals {
    /// Signals of `student` on the training rows `rows` (indices into
    /// `ds.train`); signal `i` belongs to `rows[i]`.
    pub fn compute(
        student: &Student,
        ds: &Dataset,
        rows: &[usize],
        opts: &SignalOptions,
    ) -> Result<Self> {
        let n1 = ds.num_items() + 1;
        let d = student.spec.hidden;
        let mut rng = ChaCha8Rng::seed_from_u64(opts.seed ^ 0xBAD6E);
        let r_p = gaussian(n1, SKETCH_P, &mut rng);
        let r_h = gaussian(d, SKETCH_H, &mut rng);
        let mut out = RowSignals {
            dim: d,
            badge_dim: SKETCH_P * SKETCH_H,
            ..Default::default()
        };
        let bar = if opts.progress {
            indicatif::ProgressBar::new(rows.len() as u64)
        } else {
            indicatif::ProgressBar::hidden()
        };
        for chunk in rows.chunks(opts.batch_size.max(1)) {
            let hist: Vec<&[u32]> = chunk.iter().map(|&r| ds.history(&ds.train[r])).collect();
            let (reps, scores) = student.represent_and_score(&hist)?;
            let per: Vec<RowStat> = chunk
                .par_iter()
                .enumerate()
                .map(|(i, &row)| {
                    let s = &scores[i * n1..(i + 1) * n1];
                    let h = &reps[i * d..(i + 1) * d];
                    let t = ds.target(&ds.train[row]) as usize;
                    row_stats(s, h, t, &r_p, &r_h)
                })
                .collect();
            for r in per {
                out.loss.push(r.loss);
                out.entropy.push(r.entropy);
                out.least_confidence.push(r.least_confidence);
                out.margin.push(r.margin);
                out.gradient_norm.push(r.gradient_norm);
                out.target_prob.push(r.target_prob);
                out.badge.extend(r.badge);
            }
            out.reps.extend(reps);
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        Ok(out)
    }
}

/// One row's statistics (fields as in [`RowSignals`]).
struct RowStat {
    loss: f64,
    entropy: f64,
    least_confidence: f64,
    margin: f64,
    gradient_norm: f64,
    target_prob: f64,
    badge: Vec<f32>,
}

/// The statistics of one row from its scores `[N + 1]` (column 0 = −∞),
/// representation `h` and target `t`.
fn row_stats(s: &[f32], h: &[f32], t: usize, r_p: &[f32], r_h: &[f32]) -> RowStat {
    let log_z = distillrec_models::fastmath::log_sum_exp_f64(&s[1..]);
    let mut ent = 0f64;
    let (mut p1, mut p2, mut top) = (0f64, 0f64, 1usize);
    let mut sq = 0f64; // ‖p − y‖²
    let mut sketch_p = [0f64; SKETCH_P];
    for j in 1..s.len() {
        let lp = s[j] as f64 - log_z;
        let p = lp.exp();
        ent -= p * lp;
        if p > p1 {
            p2 = p1;
            p1 = p;
            top = j;
        } else if p > p2 {
            p2 = p;
        }
        let y = if j == t { 1.0 } else { 0.0 };
        sq += (p - y) * (p - y);
        for (k, sp) in sketch_p.iter_mut().enumerate() {
            *sp += p * r_p[j * SKETCH_P + k] as f64;
        }
    }
    // BADGE uses the predicted label ŷ: subtract its projection row
    for (k, sp) in sketch_p.iter_mut().enumerate() {
        *sp -= r_p[top * SKETCH_P + k] as f64;
    }
    let pt = (s[t] as f64 - log_z).exp();
    let h_norm = h
        .iter()
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        .sqrt();
    let mut sketch_h = [0f64; SKETCH_H];
    for (i, &x) in h.iter().enumerate() {
        for (k, sh) in sketch_h.iter_mut().enumerate() {
            *sh += x as f64 * r_h[i * SKETCH_H + k] as f64;
        }
    }
    let badge: Vec<f32> = sketch_p
        .iter()
        .flat_map(|&a| sketch_h.iter().map(move |&b| (a * b) as f32))
        .collect();
    RowStat {
        loss: -(s[t] as f64 - log_z),
        entropy: ent,
        least_confidence: 1.0 - p1,
        margin: p1 - p2,
        gradient_norm: sq.sqrt() * h_norm,
        target_prob: pt,
        badge,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_statistics_by_hand() {
        // items 1..3 with scores ln 1, ln 2, ln 1 → p = [0.25, 0.5, 0.25]
        let s = [f32::NEG_INFINITY, 0.0, 2f32.ln(), 0.0];
        let h = [3.0f32, 4.0]; // ‖h‖ = 5
        let r_p = vec![0f32; 4 * SKETCH_P];
        let r_h = vec![0f32; 2 * SKETCH_H];
        let RowStat {
            loss,
            entropy: ent,
            least_confidence: lc,
            margin,
            gradient_norm: gn,
            target_prob: pt,
            badge,
        } = row_stats(&s, &h, 1, &r_p, &r_h);
        assert!((loss - 4f64.ln()).abs() < 1e-6);
        let want_ent = -(0.25f64 * 0.25f64.ln() * 2.0 + 0.5 * 0.5f64.ln());
        assert!((ent - want_ent).abs() < 1e-6);
        assert!((lc - 0.5).abs() < 1e-6);
        assert!((margin - 0.25).abs() < 1e-6);
        // p − y = [−0.75, 0.5, 0.25] → ‖·‖ = √0.875
        assert!((gn - 0.875f64.sqrt() * 5.0).abs() < 1e-5);
        assert!((pt - 0.25).abs() < 1e-6);
        assert_eq!(badge.len(), SKETCH_P * SKETCH_H);
    }
}
