//! Student training losses (SPEC 4): full softmax cross-entropy over the
//! catalogue, or binary cross-entropy with sampled negatives. Both take a
//! flat list of representations `[M, d]` with one target each; target `0`
//! marks a position without supervision (padding under `all_positions`).

use candle_core::{Result, Tensor, D};

use crate::ops::catalogue_cross_entropy_composed;

/// `log(1 + e^x)`, numerically stable and differentiable.
pub fn softplus(x: &Tensor) -> Result<Tensor> {
    x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?
}

/// Mean cross-entropy of `rep [M, d] · tableᵀ` against `targets [M]`.
pub fn cross_entropy(rep: &Tensor, table: &Tensor, targets: &Tensor) -> Result<Tensor> {
    crate::fused_ce::fused_cross_entropy(rep, table, targets)
}

/// [`cross_entropy`] through explicit logits (reference for tests).
pub fn cross_entropy_unfused(rep: &Tensor, table: &Tensor, targets: &Tensor) -> Result<Tensor> {
    catalogue_cross_entropy_composed(&rep.matmul(&table.t()?)?, targets)
}

/// Mean over supervised rows of `softplus(−s_pos) + Σ_n softplus(s_neg)`,
/// with `negatives [M, n]` item ids drawn by the caller outside each row's
/// history and target.
pub fn bce_sampled(
    rep: &Tensor,
    table: &Tensor,
    targets: &Tensor,
    negatives: &Tensor,
) -> Result<Tensor> {
    let (m, d) = rep.dims2()?;
    let (_, n) = negatives.dims2()?;
    let t = targets.to_vec1::<u32>()?;
    let weights: Vec<f32> = t.iter().map(|&x| if x == 0 { 0.0 } else { 1.0 }).collect();
    let count = weights.iter().sum::<f32>().max(1.0);
    let w = Tensor::from_vec(weights, m, rep.device())?;
    let pos = table.index_select(targets, 0)?; // [M, d]
    let s_pos = (rep * pos)?.sum(D::Minus1)?; // [M]
    let neg = table
        .index_select(&negatives.flatten_all()?, 0)?
        .reshape((m, n, d))?;
    let s_neg = neg.matmul(&rep.unsqueeze(2)?)?.squeeze(2)?; // [M, n]
    let per_row = (softplus(&s_pos.neg()?)? + softplus(&s_neg)?.sum(D::Minus1)?)?;
    (per_row * w)?.sum_all()? / count as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn bce_by_hand() {
        let dev = Device::Cpu;
        // items 1 and 2 in d = 2; rep = [1, 0]: s(1) = 2, s(2) = -1
        let table = Tensor::new(&[[0f32, 0.], [2., 0.], [-1., 3.]], &dev).unwrap();
        let rep = Var::new(&[[1f32, 0.], [5., 5.]], &dev).unwrap();
        let targets = Tensor::new(&[1u32, 0], &dev).unwrap();
        let negs = Tensor::new(&[[2u32], [1]], &dev).unwrap();
        let l = bce_sampled(rep.as_tensor(), &table, &targets, &negs)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let want = (1.0 + (-2f32).exp()).ln() + (1.0 + (-1f32).exp()).ln();
        assert!((l - want).abs() < 1e-6, "{l} vs {want}");
        // the unsupervised second row gets no gradient
        let g = bce_sampled(rep.as_tensor(), &table, &targets, &negs)
            .unwrap()
            .backward()
            .unwrap();
        let g = g.get(&rep).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(g[1], vec![0.0, 0.0]);
        assert!(g[0][0] != 0.0);
    }

    #[test]
    fn cross_entropy_by_hand() {
        let dev = Device::Cpu;
        let table = Tensor::new(&[[9f32], [1.], [2.]], &dev).unwrap();
        let rep = Tensor::new(&[[1f32]], &dev).unwrap();
        let l = cross_entropy(&rep, &table, &Tensor::new(&[1u32], &dev).unwrap())
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        // column 0 (score 9) is padding and must not count
        let want = -(1f32.exp() / (1f32.exp() + 2f32.exp())).ln();
        assert!((l - want).abs() < 1e-6, "{l} vs {want}");
    }
}
