//! Cross-entropy over the whole catalogue fused with the scoring matmul.
//!
//! `loss_r = logsumexp_{j≥1}(rep_r · E_j) − rep_r · E_{t_r}`. Written with
//! candle ops, the `[M, N + 1]` logits (95 M floats for ML-1M with
//! `all_positions`) become autograd nodes, and the backward pass allocates,
//! zeroes and adds several copies of them — most of a training step.
//! Here the logits only ever exist as a reused `[R, N + 1]` block of
//! `R = 512` rows ([`crate::catalogue`]): the forward pass computes each block's log-sum-exp, the
//! backward pass recomputes the block, turns it into `softmax − onehot` in
//! place and multiplies it straight into `d rep` and `d E`.
//!
//! Rows with target 0 (padding) are ignored; column 0 (padding) never gets
//! probability mass. Tested against the composed reference in `ops`.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use crate::catalogue::{backward_rows, forward_rows};
use crate::cpu::f32_slice;
use crate::fastmath;

/// Forward: `[M, 2]` = (loss, logsumexp) per row.
struct FusedCrossEntropy;

impl CustomOp3 for FusedCrossEntropy {
    fn name(&self) -> &'static str {
        "fused-catalogue-cross-entropy"
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
        if d != d2 {
            candle_core::bail!("{}: rep has {d} columns, table {d2}", self.name());
        }
        let rep = f32_slice(s1, l1, self.name())?;
        let table = f32_slice(s2, l2, self.name())?;
        let CpuStorage::U32(tv) = s3 else {
            candle_core::bail!("{}: targets must be u32", self.name())
        };
        let targets = match l3.contiguous_offsets() {
            Some((a, b)) => &tv[a..b],
            None => candle_core::bail!("{}: targets must be contiguous", self.name()),
        };
        if targets.len() != m {
            candle_core::bail!("{}: {} targets for {m} rows", self.name(), targets.len());
        }
        let mut out = vec![0f32; 2 * m];
        forward_rows(rep, table, d, &mut out, 2, |r, logits, o, _| {
            let t = targets[r] as usize;
            if t == 0 || t >= c {
                return;
            }
            let target_logit = logits[t];
            let row = &mut logits[1..];
            let mx = fastmath::max(row);
            // exp values overwrite the row; it is not needed afterwards
            let s = fastmath::exp_shift_sum_inplace(row, mx);
            let lse = mx + s.ln();
            o[0] = lse - target_logit;
            o[1] = lse;
        });
        Ok((CpuStorage::F32(out), Shape::from((m, 2))))
    }

    fn bwd(
        &self,
        rep: &Tensor,
        table: &Tensor,
        targets: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let m = rep.dim(0)?;
        let g = grad.narrow(1, 0, 1)?.contiguous()?;
        let lse = res.narrow(1, 1, 1)?.contiguous()?;
        let t = targets.to_dtype(candle_core::DType::F32)?.reshape((m, 1))?;
        let packed = Tensor::cat(&[&g, &lse, &t], 1)?.contiguous()?;
        let both = rep.apply_op3_no_bwd(table, &packed, &FusedCrossEntropyGrad)?;
        let d_rep = both.narrow(0, 0, m)?;
        let d_table = both.narrow(0, m, table.dim(0)?)?;
        Ok((Some(d_rep), Some(d_table), None))
    }
}

/// Backward: `[M + C, d]` = (d rep, d table); input 3 is `(g, lse, target)` per row.
struct FusedCrossEntropyGrad;

impl CustomOp3 for FusedCrossEntropyGrad {
    fn name(&self) -> &'static str {
        "fused-catalogue-cross-entropy-grad"
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
        let gl = f32_slice(s3, l3, self.name())?;
        let out = backward_rows(rep, table, d, |r, row, _| {
            let (g, lse, t) = (gl[3 * r], gl[3 * r + 1], gl[3 * r + 2] as usize);
            if t == 0 || t >= c || g == 0.0 {
                row.fill(0.0);
                return;
            }
            row[0] = 0.0;
            let items = &mut row[1..];
            fastmath::exp_shift_sum_inplace(items, lse);
            for v in items.iter_mut() {
                *v *= g;
            }
            row[t] -= g;
        });
        Ok((CpuStorage::F32(out), Shape::from((m + c, d))))
    }
}

/// Mean cross-entropy of `rep [M, d] · tableᵀ` over the rows whose target is
/// not 0, without materialising the logits (CPU); composed ops elsewhere.
pub fn fused_cross_entropy(rep: &Tensor, table: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if !rep.device().is_cpu() {
        let logits = rep.matmul(&table.t()?)?;
        return crate::ops::catalogue_cross_entropy_composed(&logits, targets);
    }
    let out = rep.contiguous()?.apply_op3(
        &table.contiguous()?,
        &targets.contiguous()?,
        FusedCrossEntropy,
    )?;
    let n = targets
        .to_vec1::<u32>()?
        .iter()
        .filter(|&&t| t != 0)
        .count()
        .max(1);
    out.narrow(1, 0, 1)?.sum_all()? / n as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{max_diff, uniform};
    use candle_core::{Device, Var};

    /// Over several blocks (M > 512) with ignored rows: value and both
    /// gradients equal the composed matmul + log-softmax + nll.
    #[test]
    fn matches_composed_reference_across_blocks() {
        let dev = Device::Cpu;
        let (m, d, c) = (1100, 8, 37);
        let rep = Var::from_vec(uniform(m * d, 1, 1.0), (m, d), &dev).unwrap();
        let table = Var::from_vec(uniform(c * d, 2, 1.0), (c, d), &dev).unwrap();
        let t: Vec<u32> = (0..m as u32)
            .map(|i| {
                if i % 7 == 0 {
                    0
                } else {
                    1 + (i * 13) % (c as u32 - 1)
                }
            })
            .collect();
        let targets = Tensor::new(t.as_slice(), &dev).unwrap();
        let ours = fused_cross_entropy(rep.as_tensor(), table.as_tensor(), &targets).unwrap();
        let go = ours.backward().unwrap();
        let logits = rep
            .as_tensor()
            .matmul(&table.as_tensor().t().unwrap())
            .unwrap();
        let reference = crate::ops::catalogue_cross_entropy_composed(&logits, &targets).unwrap();
        let gr = reference.backward().unwrap();
        let (a, b) = (
            ours.to_scalar::<f32>().unwrap(),
            reference.to_scalar::<f32>().unwrap(),
        );
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        assert!(max_diff(go.get(&rep).unwrap(), gr.get(&rep).unwrap()) < 1e-6);
        assert!(max_diff(go.get(&table).unwrap(), gr.get(&table).unwrap()) < 1e-5);
        // the padding row of the table gets no gradient
        let gt = go.get(&table).unwrap().to_vec2::<f32>().unwrap();
        assert!(gt[0].iter().all(|&v| v == 0.0));
    }
}
