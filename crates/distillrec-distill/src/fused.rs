//! Ranking distillation and DRO fused with the catalogue scoring (CPU).
//!
//! Per distilled row `r` (SPEC 7, the per-row part of the objective):
//!
//! ```text
//! loss_r = α·DRO_r(t_r) + λ·(RD_r + α·Σ_k w_rk·DRO_r(c_rk))
//! DRO_r(j) = log(Σ_{i≠j} e^{a_i} + e^{b_j}),  a_i = p_i s_i²/β,  b_j = p_j (s_j − 1)²/β
//! ```
//!
//! Written with candle ops (`losses::DroRows`), the `[M, N]` scores, their
//! squares, exponentials and masks become autograd nodes (1.7 GB for an
//! ML-100k epoch). Here they exist only as a block of rows
//! (`distillrec_models::catalogue`): the forward pass computes, per row,
//! the student's top-K (for the consistency weights), the weights, the
//! shared sum `Σ_i e^{a_i}` and the `K + 1` DRO terms; the backward pass
//! recomputes the block and writes `∂loss/∂s` in place.
//!
//! The gradient of `DRO(j)` is `π_i·∂(exponent_i)/∂s_i` with `π` the
//! softmax of its exponents. Every item that is not an entry (target or
//! candidate) has exponent `a_i ≤ DRO(j)` for every entry `j`, so its
//! gradient is `(2 p_i s_i/β)·e^{a_i − D}·Σ_e u_e e^{D − DRO_e}` with
//! `D = min_e DRO_e` (no overflow, one exp per item); the `K + 1` entry
//! columns are then overwritten with their exact value in f64.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use distillrec_models::catalogue::{backward_rows, f32_slice, forward_rows};
use distillrec_models::fastmath;

use crate::losses::mix_weights;
use crate::topk::top_k_items;

/// What one batch of distilled rows is trained against.
#[derive(Clone, Debug)]
pub struct DistillRows {
    /// Candidates per row.
    pub k: usize,
    /// Target item id per row `[M]`.
    pub targets: Vec<u32>,
    /// Teacher candidate item ids `[M, K]`.
    pub cands: Vec<u32>,
    /// Sampled negative item id per row `[M]`.
    pub negs: Vec<u32>,
    /// The score-independent part of each candidate's weight,
    /// `γp·wp + γc·wc` `[M, K]` (f64, as `CandidateWeights::row` mixes it).
    pub wbase: Vec<f64>,
}

/// The loss coefficients.
#[derive(Clone, Copy, Debug)]
pub struct DistillCoefs {
    /// α (DRO); 0 turns DRO off.
    pub alpha: f64,
    /// λ (ranking distillation); 0 turns it off.
    pub lambda: f64,
    /// β of DRO.
    pub beta: f64,
    /// γo, the weight of "candidate in the student's top-K".
    pub gamma_consistency: f64,
}

/// The fused op over rows of `rep`: each row's own cross-entropy (when
/// `ce` holds its target) plus the distillation terms of the teacher row
/// `slot[r]` (when it has one). Output `[M, 3 + 2K]`: loss, log-sum-exp of
/// the scores (for the cross-entropy's backward), `DRO` of the target and
/// of the K candidates, and the K weights.
struct FusedDistill {
    rows: DistillRows,
    coefs: DistillCoefs,
    /// Per row of `rep`: its index in `rows`, or [`NO_SLOT`].
    slot: Vec<u32>,
    /// Per row of `rep`: the cross-entropy target (0: none), if the base
    /// loss is fused in too.
    ce: Option<Vec<u32>>,
}

/// A row of `rep` without teacher output.
pub const NO_SLOT: u32 = u32::MAX;

/// Output columns before the DRO values: loss, log-sum-exp.
const HEAD: usize = 2;

/// `log(e^x + e^y)` in f64.
fn log_add_exp(x: f64, y: f64) -> f64 {
    let hi = x.max(y);
    if hi == f64::NEG_INFINITY {
        return hi;
    }
    hi + ((x - hi).exp() + (y - hi).exp()).ln()
}

/// `log(1 + e^x)`.
fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// `1 / (1 + e^{−x})`.
fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

impl FusedDistill {
    fn dro(&self) -> bool {
        self.coefs.alpha > 0.0
    }

    fn ranking(&self) -> bool {
        self.coefs.lambda > 0.0
    }

    fn cols(&self) -> usize {
        HEAD + 1 + 2 * self.rows.k
    }

    /// The teacher row of row `r` of `rep`, if any.
    fn slot(&self, r: usize) -> Option<usize> {
        let t = self.slot[r];
        (t != NO_SLOT).then_some(t as usize)
    }

    /// The cross-entropy target of row `r`, if the base loss is fused in.
    fn ce_target(&self, r: usize) -> Option<usize> {
        let t = self.ce.as_ref()?[r] as usize;
        (t != 0).then_some(t)
    }

    /// Entries of teacher row `t`: (column, coefficient) — the target, then
    /// the candidates (only the ones the active terms use).
    fn entries(&self, t: usize, w: &[f32]) -> Vec<(usize, f64)> {
        let (a, l) = (self.coefs.alpha, self.coefs.lambda);
        let mut e = Vec::with_capacity(self.rows.k + 1);
        if self.dro() {
            e.push((self.rows.targets[t] as usize, a));
            if self.ranking() {
                let k = self.rows.k;
                for (&c, &wk) in self.rows.cands[t * k..(t + 1) * k].iter().zip(w) {
                    e.push((c as usize, l * a * wk as f64));
                }
            }
        }
        e
    }

    /// The mixed, normalised candidate weights of teacher row `t` given the
    /// student's scores `s` (padding-free, column `j` = item `j + 1`).
    fn weights(&self, t: usize, s: &[f32]) -> Vec<f32> {
        let k = self.rows.k;
        let cands = &self.rows.cands[t * k..(t + 1) * k];
        let base = &self.rows.wbase[t * k..(t + 1) * k];
        let go = self.coefs.gamma_consistency;
        let top = if go > 0.0 {
            top_k_items(s, k)
        } else {
            Vec::new()
        };
        mix_weights(base, go, |i| top.contains(&cands[i]))
    }

    /// `a_i = p_i s_i²/β` of every column into `a` (column 0 gets −∞).
    fn exponents(&self, scores: &[f32], ps: &[f32], a: &mut [f32]) {
        let inv_beta = (1.0 / self.coefs.beta) as f32;
        for ((x, &s), &p) in a.iter_mut().zip(scores).zip(ps) {
            *x = p * s * s * inv_beta;
        }
        a[0] = f32::NEG_INFINITY;
    }

    /// Checks the row data against `m` rows of `rep` and `c` columns.
    fn check(&self, m: usize, c: usize) -> Result<()> {
        let (k, n) = (self.rows.k, self.rows.targets.len());
        if self.rows.negs.len() != n
            || self.rows.cands.len() != n * k
            || self.rows.wbase.len() != n * k
        {
            candle_core::bail!("{}: teacher rows of different lengths", self.name());
        }
        if self.slot.len() != m || self.ce.as_ref().is_some_and(|t| t.len() != m) {
            candle_core::bail!("{}: row data does not match {m} rows", self.name());
        }
        if self.slot.iter().any(|&t| t != NO_SLOT && t as usize >= n) {
            candle_core::bail!("{}: a row points past the {n} teacher rows", self.name());
        }
        let in_range = |i: &u32| (1..c).contains(&(*i as usize));
        if !(self.rows.targets.iter().all(in_range)
            && self.rows.cands.iter().all(in_range)
            && self.rows.negs.iter().all(in_range)
            && self.ce.iter().flatten().all(|&t| (t as usize) < c))
        {
            candle_core::bail!("{}: an item id is outside 1..{c}", self.name());
        }
        Ok(())
    }

    /// Forward of one row: `scores` (overwritten) → `o`.
    fn forward_row(
        &self,
        r: usize,
        scores: &mut [f32],
        ps: &[f32],
        o: &mut [f32],
        a: &mut Vec<f32>,
    ) {
        let k = self.rows.k;
        let beta = self.coefs.beta;
        let mut loss = 0.0f64;
        a.resize(scores.len(), 0.0);
        if let Some(t) = self.ce_target(r) {
            let items = &scores[1..];
            let mx = fastmath::max(items);
            let lse = mx + fastmath::exp_shift_sum(items, mx, &mut a[1..]).ln();
            loss += (lse - scores[t]) as f64;
            o[1] = lse;
        }
        let Some(t) = self.slot(r) else {
            o[0] = loss as f32;
            return;
        };
        let w = self.weights(t, &scores[1..]);
        o[HEAD + 1 + k..].copy_from_slice(&w);
        let s = |i: usize| scores[i] as f64;
        if self.ranking() {
            let cands = &self.rows.cands[t * k..(t + 1) * k];
            let wsum: f64 = w.iter().map(|&x| x as f64).sum();
            let rd: f64 = cands
                .iter()
                .zip(&w)
                .map(|(&ci, &wk)| wk as f64 * softplus(-s(ci as usize)))
                .sum::<f64>()
                + wsum * softplus(s(self.rows.negs[t] as usize));
            loss += self.coefs.lambda * rd;
        }
        let entries = self.entries(t, &w);
        if !entries.is_empty() {
            let s_entries: Vec<f64> = entries.iter().map(|&(j, _)| s(j)).collect();
            self.exponents(scores, ps, a);
            // largest and second largest exponent, and where the largest is
            // (three vectorised passes rather than one branching one)
            let m1 = fastmath::max(a);
            let arg = a.iter().position(|&x| x == m1).unwrap_or(0);
            let m2 = fastmath::max(&a[..arg]).max(fastmath::max(&a[arg + 1..]));
            // Σ_i e^{a_i − m1}; the scores are not needed any more
            let sum = fastmath::exp_shift_sum(a, m1, scores) as f64;
            // log Σ_{i≠arg} e^{a_i}: from the same exponentials when the
            // second largest is close enough not to underflow, else again
            let log_excl = if m2 == f32::NEG_INFINITY {
                f64::NEG_INFINITY
            } else if m1 - m2 <= 40.0 {
                scores[arg] = 0.0;
                m1 as f64 + (fastmath::sum(scores) as f64).ln()
            } else {
                a[arg] = f32::NEG_INFINITY;
                m2 as f64 + (fastmath::exp_shift_sum(a, m2, scores) as f64).ln()
            };
            for (e, (&(j, coef), &sj)) in entries.iter().zip(&s_entries).enumerate() {
                let pj = ps[j] as f64;
                let aj = pj * sj * sj / beta;
                let bj = pj * (sj - 1.0) * (sj - 1.0) / beta;
                let log_rest = if j == arg {
                    log_excl
                } else {
                    // the largest term stays in, so this cannot cancel
                    let rest = sum - (aj - m1 as f64).exp();
                    m1 as f64 + rest.max(1.0).ln()
                };
                let dro = log_add_exp(log_rest, bj);
                o[HEAD + e] = dro as f32;
                loss += coef * dro;
            }
        }
        o[0] = loss as f32;
    }

    /// Backward of one row: its scores in `row` → `∂loss/∂scores`, given the
    /// forward output `p` with the loss column replaced by its gradient.
    fn backward_row(&self, r: usize, row: &mut [f32], ps: &[f32], p: &[f32]) {
        let k = self.rows.k;
        let (lambda, beta) = (self.coefs.lambda, self.coefs.beta);
        let g = p[0] as f64;
        let ce = self.ce_target(r);
        let slot = self.slot(r);
        if g == 0.0 || (ce.is_none() && slot.is_none()) {
            row.fill(0.0);
            return;
        }
        let lse = p[1];
        // the cross-entropy's softmax at the entry columns, before the
        // scores are overwritten
        let ce_at = |x: f32| {
            if ce.is_some() {
                g * ((x - lse) as f64).exp()
            } else {
                0.0
            }
        };
        // additions to single columns: the ranking-distillation terms
        let mut sparse: Vec<(usize, f64)> = Vec::with_capacity(k + 2);
        let mut entries = Vec::new();
        let mut exact: Vec<(usize, f64, f64)> = Vec::new();
        if let Some(t) = slot {
            let w = &p[HEAD + 1 + k..];
            if self.ranking() {
                let cands = &self.rows.cands[t * k..(t + 1) * k];
                let mut wsum = 0.0;
                for (&ci, &wk) in cands.iter().zip(w) {
                    let sc = row[ci as usize] as f64;
                    sparse.push((ci as usize, -g * lambda * wk as f64 * sigmoid(-sc)));
                    wsum += wk as f64;
                }
                let neg = self.rows.negs[t] as usize;
                sparse.push((neg, g * lambda * wsum * sigmoid(row[neg] as f64)));
            }
            entries = self.entries(t, w);
            let dro = &p[HEAD..HEAD + entries.len()];
            // the entry columns exactly, in f64
            for (idx, &(j, _)) in entries.iter().enumerate() {
                if entries[..idx].iter().any(|&(jj, _)| jj == j) {
                    continue; // a column that is two entries is done once
                }
                let sj = row[j] as f64;
                let pj = ps[j] as f64;
                let (aj, bj) = (pj * sj * sj / beta, pj * (sj - 1.0) * (sj - 1.0) / beta);
                let v: f64 = entries
                    .iter()
                    .zip(dro)
                    .map(|(&(je, coef), &de)| {
                        let u = g * coef;
                        if je == j {
                            u * (bj - de as f64).exp() * 2.0 * pj * (sj - 1.0) / beta
                        } else {
                            u * (aj - de as f64).exp() * 2.0 * pj * sj / beta
                        }
                    })
                    .sum();
                exact.push((j, v, ce_at(row[j])));
            }
        }
        // every column as if it were no entry, in one pass:
        // (2 p_i s_i/β)·e^{a_i − D}·shared + g·e^{s_i − lse}
        let (mut dmin, mut shared) = (0f32, 0f64);
        if !entries.is_empty() {
            let dro = &p[HEAD..HEAD + entries.len()];
            dmin = dro.iter().fold(f32::INFINITY, |x, &v| x.min(v));
            shared = entries
                .iter()
                .zip(dro)
                .map(|(&(_, coef), &de)| g * coef * ((dmin - de) as f64).exp())
                .sum();
        }
        let ce_scale = if ce.is_some() { g as f32 } else { 0.0 };
        let inv_beta = (1.0 / beta) as f32;
        let dro_scale = (2.0 / beta * shared) as f32;
        fastmath::distill_grad_row(row, ps, inv_beta, dmin, dro_scale, lse, ce_scale);
        // the entry columns exactly (the softmax part added back)
        for &(j, v, ce_j) in &exact {
            row[j] = (v + ce_j) as f32;
        }
        if let Some(t) = ce {
            row[t] -= g as f32;
        }
        row[0] = 0.0;
        for (j, v) in sparse {
            row[j] += v as f32;
        }
    }
}

impl CustomOp3 for FusedDistill {
    fn name(&self) -> &'static str {
        "fused-distillation"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, d) = l1.shape().dims2()?;
        let (c, d2) = l2.shape().dims2()?;
        let rep = f32_slice(s1, l1, self.name())?;
        let table = f32_slice(s2, l2, self.name())?;
        let ps = f32_slice(s3, l3, self.name())?;
        if d != d2 || ps.len() != c {
            candle_core::bail!("{}: shapes do not match", self.name());
        }
        self.check(m, c)?;
        let cols = self.cols();
        let mut out = vec![0f32; m * cols];
        forward_rows(rep, table, d, &mut out, cols, |r, scores, o, a| {
            self.forward_row(r, scores, ps, o, a)
        });
        Ok((CpuStorage::F32(out), Shape::from((m, cols))))
    }

    fn bwd(
        &self,
        rep: &Tensor,
        table: &Tensor,
        ps: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let m = rep.dim(0)?;
        // upstream gradient of the loss column beside the saved values
        let packed = Tensor::cat(
            &[&grad.narrow(1, 0, 1)?, &res.narrow(1, 1, res.dim(1)? - 1)?],
            1,
        )?;
        let grads = FusedDistillGrad {
            op: self,
            packed: packed.flatten_all()?.to_vec1::<f32>()?,
        };
        let both = rep.apply_op3_no_bwd(table, ps, &grads)?;
        Ok((
            Some(both.narrow(0, 0, m)?),
            Some(both.narrow(0, m, table.dim(0)?)?),
            None,
        ))
    }
}

/// The backward pass of [`FusedDistill`]: `[M + C, d]` = (d rep, d table).
struct FusedDistillGrad<'a> {
    op: &'a FusedDistill,
    /// Per row, the forward output with the loss column replaced by its
    /// upstream gradient.
    packed: Vec<f32>,
}

impl CustomOp3 for FusedDistillGrad<'_> {
    fn name(&self) -> &'static str {
        "fused-distillation-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, d) = l1.shape().dims2()?;
        let (c, _) = l2.shape().dims2()?;
        let rep = f32_slice(s1, l1, self.name())?;
        let table = f32_slice(s2, l2, self.name())?;
        let ps = f32_slice(s3, l3, self.name())?;
        let cols = self.op.cols();
        let out = backward_rows(rep, table, d, |r, row, _| {
            let p = &self.packed[r * cols..(r + 1) * cols];
            self.op.backward_row(r, row, ps, p)
        });
        Ok((CpuStorage::F32(out), Shape::from((m + c, d))))
    }
}

/// Runs the op and returns its per-row loss `[M]`.
fn apply(rep: &Tensor, table: &Tensor, ps: &Tensor, op: FusedDistill) -> Result<Tensor> {
    let out = rep
        .contiguous()?
        .apply_op3(&table.contiguous()?, &ps.contiguous()?, op)?;
    out.narrow(1, 0, 1)?.squeeze(1)
}

/// The per-row distillation loss `[M]` of `rep [M, d]` (one row per teacher
/// row of `rows`) scored against `table [N + 1, d]`, with propensities
/// `ps [N + 1]` (column 0 unused), fused (CPU tensors only; `losses` has
/// the composed form).
pub fn fused_distill_rows(
    rep: &Tensor,
    table: &Tensor,
    ps: &Tensor,
    rows: DistillRows,
    coefs: DistillCoefs,
) -> Result<Tensor> {
    let slot = (0..rows.targets.len() as u32).collect();
    apply(
        rep,
        table,
        ps,
        FusedDistill {
            rows,
            coefs,
            slot,
            ce: None,
        },
    )
}

/// Per row of `rep [M, d]`: the catalogue cross-entropy of target
/// `targets[r]` (0: none) plus the distillation terms of teacher row
/// `slot[r]` ([`NO_SLOT`]: none), sharing one scoring pass — the base loss
/// and the distillation of a batch in one op.
pub fn fused_ce_distill_rows(
    rep: &Tensor,
    table: &Tensor,
    ps: &Tensor,
    targets: Vec<u32>,
    slot: Vec<u32>,
    rows: DistillRows,
    coefs: DistillCoefs,
) -> Result<Tensor> {
    let op = FusedDistill {
        rows,
        coefs,
        slot,
        ce: Some(targets),
    };
    apply(rep, table, ps, op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::losses::{item_columns, ranking_distill_rows, DroRows};
    use candle_core::{Device, Var, D};
    use rand::{Rng, SeedableRng};

    /// Random rows over `n` items: distinct candidates, a target that is
    /// sometimes one of them, a negative outside both.
    fn rows(m: usize, n: u32, k: usize, seed: u64) -> DistillRows {
        let mut g = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut out = DistillRows {
            k,
            targets: vec![],
            cands: vec![],
            negs: vec![],
            wbase: vec![],
        };
        for r in 0..m {
            let mut c: Vec<u32> = Vec::new();
            while c.len() < k {
                let x = 1 + g.gen_range(0..n);
                if !c.contains(&x) {
                    c.push(x);
                }
            }
            let t = if r % 3 == 0 {
                c[g.gen_range(0..k)]
            } else {
                1 + g.gen_range(0..n)
            };
            let neg = loop {
                let x = 1 + g.gen_range(0..n);
                if x != t && !c.contains(&x) {
                    break x;
                }
            };
            out.wbase.extend((0..k).map(|_| g.gen_range(0.0..1.0)));
            out.cands.extend(c);
            out.targets.push(t);
            out.negs.push(neg);
        }
        out
    }

    /// The composed candle computation of the same per-row loss.
    fn composed(
        rep: &Tensor,
        table: &Tensor,
        ps: &[f32],
        rows: &DistillRows,
        c: DistillCoefs,
    ) -> Tensor {
        let dev = rep.device();
        let (m, k) = (rows.targets.len(), rows.k);
        let n = ps.len() - 1;
        let scores = rep
            .matmul(&table.t().unwrap())
            .unwrap()
            .narrow(1, 1, n)
            .unwrap()
            .contiguous()
            .unwrap();
        let host = scores.to_vec2::<f32>().unwrap();
        let mut w = Vec::new();
        for (r, scores_r) in host.iter().enumerate() {
            let top = top_k_items(scores_r, k);
            let cands = &rows.cands[r * k..(r + 1) * k];
            w.extend(mix_weights(
                &rows.wbase[r * k..(r + 1) * k],
                c.gamma_consistency,
                |i| c.gamma_consistency > 0.0 && top.contains(&cands[i]),
            ));
        }
        let w = Tensor::from_vec(w, (m, k), dev).unwrap();
        let cand_cols = item_columns(&rows.cands, m, k, dev).unwrap();
        let ps_t = Tensor::new(&ps[1..], dev).unwrap();
        let dro = DroRows::new(&scores, &ps_t, c.beta).unwrap();
        let mut per_row = Tensor::zeros(m, candle_core::DType::F32, dev).unwrap();
        if c.alpha > 0.0 {
            let t = item_columns(&rows.targets, m, 1, dev).unwrap();
            per_row =
                (per_row + (dro.loss(&t).unwrap().squeeze(1).unwrap() * c.alpha).unwrap()).unwrap();
        }
        if c.lambda > 0.0 {
            let s_c = scores.gather(&cand_cols, 1).unwrap();
            let s_n = scores
                .gather(&item_columns(&rows.negs, m, 1, dev).unwrap(), 1)
                .unwrap()
                .squeeze(1)
                .unwrap();
            let mut rd = ranking_distill_rows(&s_c, &s_n, &w).unwrap();
            if c.alpha > 0.0 {
                let dc = (dro.loss(&cand_cols).unwrap() * &w)
                    .unwrap()
                    .sum(D::Minus1)
                    .unwrap();
                rd = (rd + (dc * c.alpha).unwrap()).unwrap();
            }
            per_row = (per_row + (rd * c.lambda).unwrap()).unwrap();
        }
        per_row
    }

    fn uniform(n: usize, seed: u64, bound: f32) -> Vec<f32> {
        let mut g = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| g.gen_range(-bound..bound)).collect()
    }

    fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
            / scale
    }

    /// Values and both gradients equal the composed computation, over
    /// several blocks, for every combination of terms, with ordinary and
    /// with very large scores (where a row's largest DRO exponent dominates).
    #[test]
    fn matches_the_composed_computation() {
        let dev = Device::Cpu;
        let (n, d, k) = (57usize, 6usize, 5usize);
        let mut ps = vec![0f32];
        ps.extend((0..n).map(|i| (0.2 + (i % 7) as f32 * 0.1).sqrt()));
        let ps_t = Tensor::new(ps.as_slice(), &dev).unwrap();
        for (case, (m, bound)) in [(700usize, 0.5f32), (40, 3.0)].into_iter().enumerate() {
            let rows = rows(m, n as u32, k, case as u64);
            for (alpha, lambda, go) in [
                (1.0, 0.5, 0.1),
                (0.0, 1.0, 0.1),
                (0.7, 0.0, 0.0),
                (0.3, 2.0, 0.0),
            ] {
                let c = DistillCoefs {
                    alpha,
                    lambda,
                    beta: 0.8,
                    gamma_consistency: go,
                };
                let rep =
                    Var::from_vec(uniform(m * d, 1 + case as u64, bound), (m, d), &dev).unwrap();
                let table =
                    Var::from_vec(uniform((n + 1) * d, 9, bound), (n + 1, d), &dev).unwrap();
                let ours =
                    fused_distill_rows(rep.as_tensor(), table.as_tensor(), &ps_t, rows.clone(), c)
                        .unwrap();
                let reference = composed(rep.as_tensor(), table.as_tensor(), &ps, &rows, c);
                let ctx = format!("m {m}, bound {bound}, {c:?}");
                let dv = max_rel_diff(&ours, &reference);
                assert!(dv < 1e-5, "values differ by {dv} ({ctx})");
                // a probe that weights rows differently
                let go_ = assert_same_gradients(&ours, &reference, 77, &rep, &table, &ctx);
                let gt = go_.get(&table).unwrap().to_vec2::<f32>().unwrap();
                assert!(
                    gt[0].iter().all(|&v| v == 0.0),
                    "padding row got a gradient"
                );
            }
        }
    }

    /// Scores so large that `e^{p s²/β}` overflows f32 stay finite, and the
    /// gradient agrees with central differences of the fused loss itself.
    #[test]
    fn large_scores_and_finite_differences() {
        let dev = Device::Cpu;
        let (n, d, k) = (9usize, 3usize, 3usize);
        let ps: Vec<f32> = std::iter::once(0.0).chain((0..n).map(|_| 1.0)).collect();
        let ps_t = Tensor::new(ps.as_slice(), &dev).unwrap();
        let rows = rows(4, n as u32, k, 5);
        let c = DistillCoefs {
            alpha: 1.0,
            lambda: 0.5,
            beta: 1.0,
            gamma_consistency: 0.1,
        };
        let table = Tensor::from_vec(uniform((n + 1) * d, 3, 1.0), (n + 1, d), &dev).unwrap();
        let big = Tensor::from_vec(uniform(4 * d, 4, 30.0), (4, d), &dev).unwrap();
        let v = fused_distill_rows(&big, &table, &ps_t, rows.clone(), c)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(v.iter().all(|x| x.is_finite() && *x > 0.0), "{v:?}");
        let reference = composed(&big, &table, &ps, &rows, c)
            .to_vec1::<f32>()
            .unwrap();
        for (a, b) in v.iter().zip(&reference) {
            assert!(
                (a - b).abs() / b.abs().max(1.0) < 1e-4,
                "{v:?} vs {reference:?}"
            );
        }
        // finite differences at moderate scores (the weights' top-K does not
        // change within ±eps there)
        let x0 = uniform(4 * d, 6, 1.0);
        let loss = |x: &[f32]| -> f64 {
            let rep = Tensor::from_vec(x.to_vec(), (4, d), &dev).unwrap();
            fused_distill_rows(&rep, &table, &ps_t, rows.clone(), c)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64
        };
        let rep = Var::from_vec(x0.clone(), (4, d), &dev).unwrap();
        let y = fused_distill_rows(rep.as_tensor(), &table, &ps_t, rows.clone(), c).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        let g = g
            .get(&rep)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let eps = 1e-2f32;
        for i in 0..x0.len() {
            let (mut hi, mut lo) = (x0.clone(), x0.clone());
            hi[i] += eps;
            lo[i] -= eps;
            let fd = (loss(&hi) - loss(&lo)) / (2.0 * eps as f64);
            assert!(
                (fd - g[i] as f64).abs() < 2e-3 * fd.abs().max(1.0),
                "coordinate {i}: fd {fd} vs {}",
                g[i]
            );
        }
    }

    /// The base cross-entropy fused in: every row's own CE (rows with
    /// target 0 have none) plus the distillation of the rows with a teacher
    /// row, across blocks, equal to the two computed apart.
    #[test]
    fn cross_entropy_and_distillation_together() {
        let dev = Device::Cpu;
        let (n, d, k, m) = (31usize, 5usize, 4usize, 600usize);
        let mut ps = vec![0f32];
        ps.extend((0..n).map(|i| 0.5 + (i % 5) as f32 * 0.1));
        let ps_t = Tensor::new(ps.as_slice(), &dev).unwrap();
        let mut g = rand_chacha::ChaCha8Rng::seed_from_u64(8);
        // every third row has no teacher output, every seventh no target
        let slot_of: Vec<Option<usize>> = (0..m).map(|r| (r % 3 != 0).then_some(r)).collect();
        let ce_t: Vec<u32> = (0..m)
            .map(|r| {
                if r % 7 == 0 {
                    0
                } else {
                    1 + g.gen_range(0..n as u32)
                }
            })
            .collect();
        let picked: Vec<usize> = slot_of.iter().flatten().copied().collect();
        let mut rows = rows(picked.len(), n as u32, k, 9);
        // a distilled row's DRO target is its own target when it has one
        for (i, &r) in picked.iter().enumerate() {
            if ce_t[r] != 0 {
                rows.targets[i] = ce_t[r];
            }
        }
        let mut slot = vec![NO_SLOT; m];
        for (i, &r) in picked.iter().enumerate() {
            slot[r] = i as u32;
        }
        let c = DistillCoefs {
            alpha: 0.6,
            lambda: 0.9,
            beta: 1.3,
            gamma_consistency: 0.2,
        };
        let rep = Var::from_vec(uniform(m * d, 2, 1.0), (m, d), &dev).unwrap();
        let table = Var::from_vec(uniform((n + 1) * d, 3, 1.0), (n + 1, d), &dev).unwrap();
        let ours = fused_ce_distill_rows(
            rep.as_tensor(),
            table.as_tensor(),
            &ps_t,
            ce_t.clone(),
            slot,
            rows.clone(),
            c,
        )
        .unwrap();
        // apart: CE per row from log-softmax over items 1..=N, distillation on the picked rows
        let scores = rep
            .as_tensor()
            .matmul(&table.as_tensor().t().unwrap())
            .unwrap();
        let logp = candle_nn_free_log_softmax(&scores.narrow(1, 1, n).unwrap());
        let cols: Vec<u32> = ce_t.iter().map(|&t| t.saturating_sub(1)).collect();
        let mask: Vec<f32> = ce_t
            .iter()
            .map(|&t| if t == 0 { 0.0 } else { 1.0 })
            .collect();
        let ce = (logp
            .gather(&Tensor::from_vec(cols, (m, 1), &dev).unwrap(), 1)
            .unwrap()
            .squeeze(1)
            .unwrap()
            .neg()
            .unwrap()
            * Tensor::from_vec(mask, m, &dev).unwrap())
        .unwrap();
        let idx = Tensor::from_vec(
            picked.iter().map(|&r| r as u32).collect::<Vec<_>>(),
            picked.len(),
            &dev,
        )
        .unwrap();
        let dist = composed(
            &rep.as_tensor().index_select(&idx, 0).unwrap(),
            table.as_tensor(),
            &ps,
            &rows,
            c,
        );
        let reference = ce.index_add(&idx, &dist, 0).unwrap();
        let dv = max_rel_diff(&ours, &reference);
        assert!(dv < 1e-5, "values differ by {dv}");
        assert_same_gradients(&ours, &reference, 4, &rep, &table, "with the cross-entropy");
    }

    /// Asserts that the gradients of `Σ probe · y` with respect to `rep` and
    /// `table` agree for both losses (a seeded probe weights rows
    /// differently); returns ours.
    fn assert_same_gradients(
        ours: &Tensor,
        reference: &Tensor,
        probe_seed: u64,
        rep: &Var,
        table: &Var,
        ctx: &str,
    ) -> candle_core::backprop::GradStore {
        let m = ours.dim(0).unwrap();
        let probe = Tensor::from_vec(uniform(m, probe_seed, 1.0), m, ours.device()).unwrap();
        let grads = |y: &Tensor| (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let (go, gr) = (grads(ours), grads(reference));
        for (name, v) in [("rep", rep), ("table", table)] {
            let dg = max_rel_diff(go.get(v).unwrap(), gr.get(v).unwrap());
            assert!(dg < 2e-4, "d {name} differs by {dg} ({ctx})");
        }
        go
    }

    /// `log_softmax` over the last dimension from composed ops.
    fn candle_nn_free_log_softmax(x: &Tensor) -> Tensor {
        let mx = x.max_keepdim(D::Minus1).unwrap().detach();
        let shifted = x.broadcast_sub(&mx).unwrap();
        let lse = shifted
            .exp()
            .unwrap()
            .sum_keepdim(D::Minus1)
            .unwrap()
            .log()
            .unwrap();
        shifted.broadcast_sub(&lse).unwrap()
    }

    /// A target (and candidate) whose DRO exponent dominates its row by
    /// 21 and by 96: `Σ_{i≠t}` is taken without cancelling against it.
    #[test]
    fn dominant_entries() {
        let dev = Device::Cpu;
        let n = 6usize;
        let ps: Vec<f32> = std::iter::once(0.0).chain((0..n).map(|_| 1.0)).collect();
        let ps_t = Tensor::new(ps.as_slice(), &dev).unwrap();
        let rows = DistillRows {
            k: 2,
            targets: vec![1, 1],
            cands: vec![1, 3, 2, 1],
            negs: vec![4, 5],
            wbase: vec![0.6, 0.4, 0.5, 0.5],
        };
        let c = DistillCoefs {
            alpha: 1.0,
            lambda: 1.0,
            beta: 1.0,
            gamma_consistency: 0.0,
        };
        // d = 1: scores are rep · table, item 1 scores 5 (gap 21) and 10 (gap 96)
        let table = Tensor::new(
            &[[0f32], [1.0], [0.2], [0.1], [-0.15], [0.05], [0.18]],
            &dev,
        )
        .unwrap();
        let rep = Var::new(&[[5f32], [10.0]], &dev).unwrap();
        let ours = fused_distill_rows(rep.as_tensor(), &table, &ps_t, rows.clone(), c).unwrap();
        let reference = composed(rep.as_tensor(), &table, &ps, &rows, c);
        let (a, b) = (
            ours.to_vec1::<f32>().unwrap(),
            reference.to_vec1::<f32>().unwrap(),
        );
        // by hand for row 0, target 1: log(Σ_{i≠1} e^{s_i²} + e^{(5−1)²})
        let others: f64 = [0.2f64, 0.1, -0.15, 0.05, 0.18]
            .iter()
            .map(|v| (25.0 * v * v).exp())
            .sum();
        let dro_t = (others + 16f64.exp()).ln();
        assert!((dro_t - 16.0).abs() < 1e-3);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-4 * y.abs().max(1.0), "{a:?} vs {b:?}");
        }
        let go_ = ours.sum_all().unwrap().backward().unwrap();
        let gr = reference.sum_all().unwrap().backward().unwrap();
        let dg = max_rel_diff(go_.get(&rep).unwrap(), gr.get(&rep).unwrap());
        assert!(dg < 1e-4, "d rep differs by {dg}");
        // gap 95 (beyond what one shifted exp can hold) and the rest of the
        // row, not the target's own term, dominating: s = [50, 49.04, ...]
        let rows = DistillRows {
            k: 1,
            targets: vec![1],
            cands: vec![3],
            negs: vec![4],
            wbase: vec![1.0],
        };
        let table = Tensor::new(
            &[[0f32], [1.0], [0.98077], [0.01], [0.02], [0.03], [0.04]],
            &dev,
        )
        .unwrap();
        let rep = Tensor::new(&[[50f32]], &dev).unwrap();
        let c = DistillCoefs {
            alpha: 1.0,
            lambda: 0.0,
            beta: 1.0,
            gamma_consistency: 0.0,
        };
        let ours = fused_distill_rows(&rep, &table, &ps_t, rows, c)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let s2 = (50.0f64 * 0.98077f32 as f64).powi(2);
        let want = (s2.max(2401.0)) + (1.0 + (-(s2 - 2401.0).abs()).exp()).ln();
        assert!(
            (ours[0] as f64 - want).abs() < 0.05,
            "{} vs {want}",
            ours[0]
        );
    }
}
