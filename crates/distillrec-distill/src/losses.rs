//! The DLLM2Rec loss terms of SPEC 7, each a plain function of scores so
//! that it can be checked against values computed by hand.
//!
//! Shapes: `M` distilled rows, `K` teacher candidates per row, `N` items.
//! Scores passed here have the padding column already removed (`[M, N]`,
//! column `j` is item `j + 1`), and item ids in index tensors are
//! therefore shifted by one by the caller ([`item_columns`]).

use candle_core::{Device, Result, Tensor, D};

use distillrec_models::loss::softplus;

/// Candidate weights of one row, mixed from position, confidence and
/// consistency as DLLM2Rec does (SPEC 7):
/// `w = normalise(γp·wp + γc·wc + γo·wo)`, with `wp ∝ exp(−k/τ)`
/// (normalised), `wc ∝ exp(−d_k) + 1e-8` (normalised) and
/// `wo = 1[c_k in the student's top-K] + 1e-8`.
#[derive(Clone, Debug, PartialEq)]
pub struct CandidateWeights {
    /// γp.
    pub gamma_position: f64,
    /// γc.
    pub gamma_confidence: f64,
    /// γo.
    pub gamma_consistency: f64,
    /// τ of the position weight.
    pub tau: f64,
}

impl CandidateWeights {
    /// Position weights `wp_k ∝ exp(−k/τ)`, k = 1..=K, normalised.
    pub fn position(&self, k: usize) -> Vec<f64> {
        let raw: Vec<f64> = (1..=k)
            .map(|i| (-(i as f64) / self.tau.max(1e-12)).exp())
            .collect();
        let s: f64 = raw.iter().sum();
        raw.iter().map(|x| x / s).collect()
    }

    /// Confidence weights of one row from distances `d` (smaller = more
    /// confident): `(exp(−d_k) + 1e-8)`, normalised. Computed as
    /// `exp(−(d_k − min d))`, which is the same after normalisation up to
    /// the 1e-8 term and cannot underflow to all-zero for large distances.
    pub fn confidence(&self, d: &[f32]) -> Vec<f64> {
        let min = d.iter().fold(f64::INFINITY, |m, &x| m.min(x as f64));
        let raw: Vec<f64> = d
            .iter()
            .map(|&x| (-(x as f64 - min)).exp() + 1e-8)
            .collect();
        let s: f64 = raw.iter().sum();
        raw.iter().map(|x| x / s).collect()
    }

    /// The part of one row's mixed weights that does not depend on the
    /// student, `γp·wp_k + γc·wc_k` (before normalisation).
    pub fn base(&self, pos: &[f64], d: &[f32]) -> Vec<f64> {
        let wc = self.confidence(d);
        (0..pos.len())
            .map(|k| self.gamma_position * pos[k] + self.gamma_confidence * wc[k])
            .collect()
    }

    /// The mixed, normalised weights of one row. `in_student_top` says, per
    /// candidate, whether the student currently ranks it in its top-K.
    pub fn row(&self, pos: &[f64], d: &[f32], in_student_top: &[bool]) -> Vec<f32> {
        let base = self.base(pos, d);
        mix_weights(&base, self.gamma_consistency, |k| in_student_top[k])
    }
}

/// `normalise(base_k + γo·(1[in top-K] + 1e-8))`, uniform when the sum is
/// not positive and finite.
pub fn mix_weights(
    base: &[f64],
    gamma_consistency: f64,
    in_top: impl Fn(usize) -> bool,
) -> Vec<f32> {
    let mixed: Vec<f64> = base
        .iter()
        .enumerate()
        .map(|(k, &b)| {
            let wo = if in_top(k) { 1.0 } else { 0.0 } + 1e-8;
            b + gamma_consistency * wo
        })
        .collect();
    let s: f64 = mixed.iter().sum();
    if s > 0.0 && s.is_finite() {
        mixed.iter().map(|x| (x / s) as f32).collect()
    } else {
        vec![1.0 / base.len() as f32; base.len()]
    }
}

/// Column indices `[M, K]` (u32) of item ids in padding-free scores.
pub fn item_columns(ids: &[u32], m: usize, k: usize, device: &Device) -> Result<Tensor> {
    let cols: Vec<u32> = ids.iter().map(|&i| i.saturating_sub(1)).collect();
    Tensor::from_vec(cols, (m, k), device)
}

/// Ranking distillation per row (SPEC 7):
/// `Σ_k w_k · (−log σ(s_{c_k}) − log σ(−s_neg))`, i.e.
/// `Σ_k w_k·softplus(−s_{c_k}) + (Σ_k w_k)·softplus(s_neg)`.
/// `s_cand [M, K]`, `s_neg [M]`, `w [M, K]` → `[M]`.
pub fn ranking_distill_rows(s_cand: &Tensor, s_neg: &Tensor, w: &Tensor) -> Result<Tensor> {
    let pos = (softplus(&s_cand.neg()?)? * w)?.sum(D::Minus1)?;
    let neg = (softplus(s_neg)? * w.sum(D::Minus1)?)?;
    pos + neg
}

/// Propensity scores `p_j = ((count_j + 1) / Σ_i (count_i + 1))^power` of
/// items `1..=N`, from training-target counts `[N + 1]` (index 0 unused).
pub fn propensity(counts: &[u64], power: f64) -> Vec<f32> {
    let items = &counts[1.min(counts.len())..];
    let total: f64 = items.iter().map(|&c| c as f64 + 1.0).sum();
    items
        .iter()
        .map(|&c| ((c as f64 + 1.0) / total).powf(power) as f32)
        .collect()
}

/// The DRO terms of a batch of rows (SPEC 7): for each target `t`,
/// `log Σ_j exp(p_j (s_j − y_j)² / β)` with `y` one-hot at `t`. Only the
/// target's term differs from `a_j = p_j s_j² / β`, so the sum over the
/// other items is shared: `Σ_{j≠t} e^{a_j}` is `A − e^{a_t}` for a target
/// that is not the row's largest `a`, and a separately accumulated sum
/// without the largest for the one that is (a difference there would
/// cancel catastrophically). All sums are shifted by detached row maxima,
/// and the target's own term is added with a log-add-exp, so nothing
/// overflows however large the scores get.
pub struct DroRows {
    scores: Tensor,
    ps: Tensor,
    a: Tensor,
    /// Largest `a` per row `[M, 1]` and its column.
    max: Tensor,
    argmax: Vec<u32>,
    /// Second largest `a` per row `[M, 1]`.
    max2: Tensor,
    /// `Σ_j e^{a_j − max}` `[M]`.
    sum: Tensor,
    /// `Σ_{j ≠ argmax} e^{a_j − max2}` `[M]`.
    sum_excl: Tensor,
    beta: f64,
}

impl DroRows {
    /// Prepares the DRO terms of padding-free scores `[M, N]` with
    /// propensities `ps [N]`.
    pub fn new(scores: &Tensor, ps: &Tensor, beta: f64) -> Result<Self> {
        let (m, n) = scores.dims2()?;
        let dev = scores.device();
        let a = (scores.sqr()?.broadcast_mul(ps)? / beta)?;
        let host = a.to_vec2::<f32>()?;
        let mut argmax = Vec::with_capacity(m);
        let mut max = Vec::with_capacity(m);
        let mut max2 = Vec::with_capacity(m);
        let mut keep = vec![1f32; m * n];
        for (r, row) in host.iter().enumerate() {
            let (mut bi, mut b1, mut b2) = (0usize, f32::NEG_INFINITY, f32::NEG_INFINITY);
            for (j, &x) in row.iter().enumerate() {
                if x > b1 {
                    b2 = b1;
                    b1 = x;
                    bi = j;
                } else if x > b2 {
                    b2 = x;
                }
            }
            if !b2.is_finite() {
                b2 = b1; // a single item: the excluded sum is empty
            }
            argmax.push(bi as u32);
            max.push(b1);
            max2.push(b2);
            keep[r * n + bi] = 0.0;
        }
        let max = Tensor::from_vec(max, (m, 1), dev)?;
        let max2 = Tensor::from_vec(max2, (m, 1), dev)?;
        let keep = Tensor::from_vec(keep, (m, n), dev)?;
        let sum = a.broadcast_sub(&max)?.exp()?.sum(D::Minus1)?;
        // the argmax column is pushed to e^{-200} ≈ 0 before exp (masking
        // after exp would give inf · 0)
        let shifted = ((a.broadcast_sub(&max2)? * &keep)? + ((&keep - 1.0)? * 200.0)?)?;
        let sum_excl = shifted.exp()?.sum(D::Minus1)?;
        Ok(DroRows {
            scores: scores.clone(),
            ps: ps.clone(),
            a,
            max,
            argmax,
            max2,
            sum,
            sum_excl,
            beta,
        })
    }

    /// The DRO loss per row and target column for targets `cols [M, T]`
    /// → `[M, T]`.
    pub fn loss(&self, cols: &Tensor) -> Result<Tensor> {
        let (m, t) = cols.dims2()?;
        let dev = cols.device();
        let a_t = self.a.gather(cols, 1)?; // [M, T]
        let s_t = self.scores.gather(cols, 1)?;
        let p_t = self
            .ps
            .index_select(&cols.flatten_all()?, 0)?
            .reshape((m, t))?;
        let c_t = (((s_t - 1.0)?.sqr()? * p_t)? / self.beta)?;
        // which targets are their row's largest a
        let host_cols = cols.to_vec2::<u32>()?;
        let is_max: Vec<f32> = host_cols
            .iter()
            .enumerate()
            .flat_map(|(r, row)| {
                let am = self.argmax[r];
                row.iter().map(move |&c| if c == am { 1.0 } else { 0.0 })
            })
            .collect();
        let is_max = Tensor::from_vec(is_max, (m, t), dev)?;
        let not_max = (1.0 - &is_max)?;
        let max = self.max.broadcast_as((m, t))?;
        let max2 = self.max2.broadcast_as((m, t))?;
        // Σ_{j≠t} e^{a_j − shift}, with shift = max (t not the argmax) or max2 (t the argmax)
        let rest_other = self
            .sum
            .unsqueeze(1)?
            .broadcast_as((m, t))?
            .sub(&(&a_t - &max)?.exp()?)?
            .relu()?;
        let rest_max = self.sum_excl.unsqueeze(1)?.broadcast_as((m, t))?;
        let rest = ((rest_other * &not_max)? + (rest_max * &is_max)?)?;
        let shift = ((max * &not_max)? + (max2 * &is_max)?)?;
        let log_rest = (shift + (rest + 1e-38)?.log()?)?;
        // log(e^{log_rest} + e^{c_t}) with a detached maximum
        let hi = log_rest.maximum(&c_t)?.detach();
        let lse = ((&log_rest - &hi)?.exp()? + (&c_t - &hi)?.exp()?)?.log()?;
        hi + lse
    }
}

/// Embedding distillation's item table (SPEC 7):
/// `E'[i] = E[i] + ed_weight · (W z_i + b)` for items `i ≥ 1` (row 0 stays
/// padding), with `z [N + 1, D]` the frozen LLM item embeddings and
/// `W [d, D]`, `b [d]` trained.
pub fn projected_table(
    table: &Tensor,
    z: &Tensor,
    w: &Tensor,
    b: &Tensor,
    ed_weight: f64,
) -> Result<Tensor> {
    let n1 = table.dim(0)?;
    let proj = z.matmul(&w.t()?)?.broadcast_add(b)?; // [N + 1, d]
    let mut mask = vec![1f32; n1];
    mask[0] = 0.0;
    let mask = Tensor::from_vec(mask, (n1, 1), table.device())?;
    table + (proj.broadcast_mul(&mask)? * ed_weight)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn sp(x: f64) -> f64 {
        (1.0 + x.exp()).ln()
    }

    #[test]
    fn weights_by_hand() {
        let cw = CandidateWeights {
            gamma_position: 0.3,
            gamma_confidence: 0.5,
            gamma_consistency: 0.1,
            tau: 1.0,
        };
        let pos = cw.position(2);
        // exp(-1), exp(-2) normalised
        let e1 = (-1f64).exp();
        let e2 = (-2f64).exp();
        assert!((pos[0] - e1 / (e1 + e2)).abs() < 1e-12);
        // d = [0, ln 3]: exp(-d) = [1, 1/3] → wc = [0.75, 0.25]
        let d = [0f32, 3f32.ln()];
        let wc = cw.confidence(&d);
        assert!((wc[0] - 0.75).abs() < 1e-6 && (wc[1] - 0.25).abs() < 1e-6);
        // candidate 2 in the student's top-K only
        let w = cw.row(&pos, &d, &[false, true]);
        let raw = [
            0.3 * pos[0] + 0.5 * 0.75 + 0.1 * 1e-8,
            0.3 * pos[1] + 0.5 * 0.25 + 0.1 * (1.0 + 1e-8),
        ];
        let s = raw[0] + raw[1];
        assert!((w[0] as f64 - raw[0] / s).abs() < 1e-6, "{w:?}");
        assert!((w[1] as f64 - raw[1] / s).abs() < 1e-6);
        assert!(((w[0] + w[1]) - 1.0).abs() < 1e-6);
        // large distances do not collapse to zero weights
        let far = cw.confidence(&[1000.0, 1001.0]);
        assert!((far[0] - 1.0 / (1.0 + (-1f64).exp())).abs() < 1e-6);
    }

    #[test]
    fn ranking_distillation_by_hand() {
        let dev = Device::Cpu;
        let s_c = Tensor::new(&[[2f32, -1.0]], &dev).unwrap();
        let s_n = Tensor::new(&[0.5f32], &dev).unwrap();
        let w = Tensor::new(&[[0.7f32, 0.3]], &dev).unwrap();
        let l = ranking_distill_rows(&s_c, &s_n, &w)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let want = 0.7 * sp(-2.0) + 0.3 * sp(1.0) + sp(0.5);
        assert!((l[0] as f64 - want).abs() < 1e-6, "{} vs {want}", l[0]);
    }

    #[test]
    fn propensity_by_hand() {
        // counts of items 1, 2, 3: 0, 1, 2 → (c + 1) / 6 → ^0.5
        let p = propensity(&[99, 0, 1, 2], 0.5);
        let want = [1.0f64 / 6.0, 2.0 / 6.0, 3.0 / 6.0].map(|x| x.sqrt());
        for (a, b) in p.iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-6);
        }
    }

    #[test]
    fn dro_by_hand_and_its_gradient() {
        let dev = Device::Cpu;
        // two items, scores [1, 2], propensities [0.5, 1], β = 2, target item 2 (column 1)
        let s = Var::new(&[[1f32, 2.0]], &dev).unwrap();
        let ps = Tensor::new(&[0.5f32, 1.0], &dev).unwrap();
        let dro = DroRows::new(s.as_tensor(), &ps, 2.0).unwrap();
        let cols = Tensor::new(&[[1u32, 0]], &dev).unwrap();
        let l = dro.loss(&cols).unwrap();
        let v = l.to_vec2::<f32>().unwrap();
        // target column 1: exp(0.5·1/2) + exp(1·(2−1)²/2)
        let want1 = ((0.25f64).exp() + (0.5f64).exp()).ln();
        // target column 0: exp(0.5·0/2) + exp(1·4/2)
        let want0 = (1f64 + 2f64.exp()).ln();
        assert!((v[0][0] as f64 - want1).abs() < 1e-5, "{v:?}");
        assert!((v[0][1] as f64 - want0).abs() < 1e-5, "{v:?}");
        // d/ds of the first: softmax-weighted 2 p (s − y)/β
        let g = l
            .narrow(1, 0, 1)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g = g.get(&s).unwrap().to_vec2::<f32>().unwrap();
        let (e0, e1) = ((0.25f64).exp(), (0.5f64).exp());
        let z = e0 + e1;
        let g0 = e0 / z * 2.0 * 0.5 * 1.0 / 2.0;
        let g1 = e1 / z * 2.0 * 1.0 * (2.0 - 1.0) / 2.0;
        assert!(
            (g[0][0] as f64 - g0).abs() < 1e-5 && (g[0][1] as f64 - g1).abs() < 1e-5,
            "{g:?}"
        );
        // large scores stay finite (exp(p s²) alone would overflow f32)
        let big = Tensor::new(&[[40f32, -35.0, 3.0]], &dev).unwrap();
        let ps3 = Tensor::new(&[1f32, 1.0, 1.0], &dev).unwrap();
        let l = DroRows::new(&big, &ps3, 1.0)
            .unwrap()
            .loss(&Tensor::new(&[[0u32]], &dev).unwrap())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        // terms e^{(40−1)²}, e^{35²}, e^{9}: the first dominates
        let want = 39f64 * 39.0;
        assert!((l[0][0] as f64 - want).abs() / want < 1e-5, "{l:?}");
        // a target that is not the largest: e^{1600} dominates
        let l = DroRows::new(&big, &ps3, 1.0)
            .unwrap()
            .loss(&Tensor::new(&[[2u32]], &dev).unwrap())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert!((l[0][0] as f64 - 1600.0).abs() / 1600.0 < 1e-5, "{l:?}");
    }

    #[test]
    fn projected_table_keeps_padding_and_adds_projection() {
        let dev = Device::Cpu;
        let e = Tensor::new(&[[0f32, 0.], [1., 2.], [3., 4.]], &dev).unwrap();
        let z = Tensor::new(&[[0f32], [1.], [2.]], &dev).unwrap();
        let w = Tensor::new(&[[1f32], [-1.]], &dev).unwrap();
        let b = Tensor::new(&[0.5f32, 0.5], &dev).unwrap();
        let t = projected_table(&e, &z, &w, &b, 0.2)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(t[0], vec![0.0, 0.0]);
        let want1 = [1.0 + 0.2 * 1.5, 2.0 + 0.2 * -0.5];
        let want2 = [3.0 + 0.2 * 2.5, 4.0 + 0.2 * -1.5];
        for (a, b) in t[1].iter().zip(want1).chain(t[2].iter().zip(want2)) {
            assert!((a - b).abs() < 1e-6, "{t:?}");
        }
    }
}
