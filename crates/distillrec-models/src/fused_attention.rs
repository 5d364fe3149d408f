//! Causal self-attention with key padding and attention dropout as one
//! CPU op with a hand-written backward pass.
//!
//! Composed from candle ops, every `[B, h, L, L]` intermediate (scores,
//! masked scores, softmax pieces, dropout) becomes an autograd node whose
//! gradient is allocated, zeroed and accumulated — the largest cost of a
//! SASRec step after the catalogue softmax. Here, per `(batch, head)`, the
//! scores live in a scratch `L × L` block: `S = Q Kᵀ` and `O = P V` use
//! `gemm`, the softmax and dropout run in place, and the backward pass
//! recomputes `P` rather than storing it.
//!
//! Query `i` attends to key `j ≤ i` when `j` is a real item; the diagonal is
//! always allowed so that padded query rows stay finite (their outputs are
//! zeroed by the caller's padding mask). Dropout masks come from a
//! counter-based hash of `(seed, bh, i, j)`, so the backward pass and the
//! composed reference regenerate exactly the same mask.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::cpu::f32_slice;
use crate::fastmath;

/// The attention op and its parameters.
#[derive(Clone)]
pub struct CausalAttention {
    /// Heads per batch row (to map `bh` to the batch row's key mask).
    pub heads: usize,
    /// `key_valid[b * L + j]`: whether key `j` of row `b` is a real item.
    pub key_valid: Arc<Vec<bool>>,
    /// Dropout probability on the attention weights (0 at inference).
    pub dropout: f32,
    /// Seed of the dropout mask.
    pub seed: u64,
}

/// `dst = lhs · rhs` for small blocks (single-threaded; callers parallelise).
#[allow(clippy::too_many_arguments)]
fn mm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    lhs: &[f32],
    (lrs, lcs): (usize, usize),
    rhs: &[f32],
    (rrs, rcs): (usize, usize),
) {
    assert!(dst.len() >= m * n);
    assert!(lhs.len() > (m - 1) * lrs + (k - 1) * lcs);
    assert!(rhs.len() > (k - 1) * rrs + (n - 1) * rcs);
    // SAFETY: the asserts keep every access inside the slices; dst is m × n row-major.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            lcs as isize,
            lrs as isize,
            rhs.as_ptr(),
            rcs as isize,
            rrs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

/// Whether dropout keeps weight `(bh, i, j)` of an `L × L` block.
#[inline]
pub fn keep(seed: u64, bh: usize, i: usize, j: usize, l: usize, keep_prob: f32) -> bool {
    keep_index(seed, ((bh * l + i) * l + j) as u64, keep_prob)
}

/// Whether dropout keeps element `index`: a splitmix64 hash of the index
/// mixed with `seed`, compared with `keep_prob`.
#[inline]
pub fn keep_index(seed: u64, index: u64, keep_prob: f32) -> bool {
    let mut z = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ((z >> 40) as f32) < keep_prob * (1u64 << 24) as f32
}

impl CausalAttention {
    #[inline]
    fn allowed(&self, b: usize, l: usize, i: usize, j: usize) -> bool {
        j <= i && (j == i || self.key_valid[b * l + j])
    }

    /// Fills `p` (L × L) with the attention probabilities of head `bh` from
    /// raw scores `s = Q Kᵀ` (row-major), zero where not allowed.
    fn softmax(&self, bh: usize, l: usize, scale: f32, s: &[f32], p: &mut [f32]) {
        let b = bh / self.heads;
        for i in 0..l {
            let row = &s[i * l..(i + 1) * l];
            let out = &mut p[i * l..(i + 1) * l];
            let mx = row[..=i]
                .iter()
                .enumerate()
                .filter(|&(j, _)| self.allowed(b, l, i, j))
                .fold(f32::NEG_INFINITY, |m, (_, &x)| m.max(x * scale));
            for (j, (o, &x)) in out.iter_mut().zip(row).enumerate() {
                *o = if j <= i && self.allowed(b, l, i, j) {
                    x * scale - mx
                } else {
                    f32::NEG_INFINITY
                };
            }
            let sum = fastmath::exp_shift_sum_inplace(&mut out[..=i], 0.0);
            let inv = 1.0 / sum;
            for v in &mut out[..=i] {
                *v *= inv;
            }
            for (j, v) in out.iter_mut().enumerate().take(i + 1) {
                if !self.allowed(b, l, i, j) {
                    *v = 0.0;
                }
            }
            out[i + 1..].fill(0.0);
        }
    }

    /// Applies dropout in place (scaled by 1/keep); no-op when dropout is 0.
    fn drop(&self, bh: usize, l: usize, p: &mut [f32]) {
        if self.dropout <= 0.0 {
            return;
        }
        let kp = 1.0 - self.dropout;
        let inv = 1.0 / kp;
        for i in 0..l {
            for j in 0..=i {
                let v = &mut p[i * l + j];
                *v = if keep(self.seed, bh, i, j, l, kp) {
                    *v * inv
                } else {
                    0.0
                };
            }
        }
    }
}

impl CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        "causal-attention"
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
        let (bh, l, dh) = l1.shape().dims3()?;
        if l2.shape() != l1.shape() || l3.shape() != l1.shape() {
            candle_core::bail!("{}: q, k, v shapes differ", self.name());
        }
        if self.key_valid.len() * self.heads != bh * l {
            candle_core::bail!(
                "{}: key mask has {} entries for {bh}×{l}",
                self.name(),
                self.key_valid.len()
            );
        }
        let (q, k, v) = (
            f32_slice(s1, l1, self.name())?,
            f32_slice(s2, l2, self.name())?,
            f32_slice(s3, l3, self.name())?,
        );
        let scale = 1.0 / (dh as f32).sqrt();
        let mut out = vec![0f32; bh * l * dh];
        out.par_chunks_mut(l * dh).enumerate().for_each_init(
            || (vec![0f32; l * l], vec![0f32; l * l]),
            |(s, p), (h, o)| {
                let blk = h * l * dh..(h + 1) * l * dh;
                mm(
                    l,
                    l,
                    dh,
                    s,
                    &q[blk.clone()],
                    (dh, 1),
                    &k[blk.clone()],
                    (1, dh),
                );
                self.softmax(h, l, scale, s, p);
                self.drop(h, l, p);
                mm(l, dh, l, o, p, (l, 1), &v[blk], (dh, 1));
            },
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let bh = q.dim(0)?;
        let qkv = Tensor::cat(&[q, k, v], 0)?;
        let g = qkv.apply_op2_no_bwd(&grad.contiguous()?, &CausalAttentionGrad(self.clone()))?;
        Ok((
            Some(g.narrow(0, 0, bh)?),
            Some(g.narrow(0, bh, bh)?),
            Some(g.narrow(0, 2 * bh, bh)?),
        ))
    }
}

/// Backward of [`CausalAttention`]: input `[3·BH, L, dh]` (q, k, v) and
/// `dO`; output `[3·BH, L, dh]` (dq, dk, dv).
struct CausalAttentionGrad(CausalAttention);

impl CustomOp2 for CausalAttentionGrad {
    fn name(&self) -> &'static str {
        "causal-attention-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (bh3, l, dh) = l1.shape().dims3()?;
        let bh = bh3 / 3;
        let qkv = f32_slice(s1, l1, self.name())?;
        let d_o = f32_slice(s2, l2, self.name())?;
        let (q, rest) = qkv.split_at(bh * l * dh);
        let (k, v) = rest.split_at(bh * l * dh);
        let att = &self.0;
        let scale = 1.0 / (dh as f32).sqrt();
        let kp = 1.0 - att.dropout;
        let mut out = vec![0f32; 3 * bh * l * dh];
        let (dq, rest) = out.split_at_mut(bh * l * dh);
        let (dk, dv) = rest.split_at_mut(bh * l * dh);
        dq.par_chunks_mut(l * dh)
            .zip(dk.par_chunks_mut(l * dh))
            .zip(dv.par_chunks_mut(l * dh))
            .enumerate()
            .for_each_init(
                || (vec![0f32; l * l], vec![0f32; l * l], vec![0f32; l * l]),
                |(s, p, pd), (h, ((dq, dk), dv))| {
                    let blk = h * l * dh..(h + 1) * l * dh;
                    let (qh, kh, vh, doh) =
                        (&q[blk.clone()], &k[blk.clone()], &v[blk.clone()], &d_o[blk]);
                    mm(l, l, dh, s, qh, (dh, 1), kh, (1, dh));
                    att.softmax(h, l, scale, s, p);
                    pd.copy_from_slice(p);
                    att.drop(h, l, pd);
                    // dV = Pdᵀ · dO
                    mm(l, dh, l, dv, pd, (1, l), doh, (dh, 1));
                    // dPd = dO · Vᵀ (into s)
                    mm(l, l, dh, s, doh, (dh, 1), vh, (1, dh));
                    // dS = P ∘ (dP − rowsum(P ∘ dP)), dP = dPd ∘ mask / keep; scaled for q, k
                    for i in 0..l {
                        let mut dot = 0f32;
                        for j in 0..=i {
                            let mut dp = s[i * l + j];
                            if att.dropout > 0.0 {
                                dp = if keep(att.seed, h, i, j, l, kp) {
                                    dp / kp
                                } else {
                                    0.0
                                };
                            }
                            s[i * l + j] = dp;
                            dot += p[i * l + j] * dp;
                        }
                        for j in 0..l {
                            s[i * l + j] = if j <= i {
                                p[i * l + j] * (s[i * l + j] - dot) * scale
                            } else {
                                0.0
                            };
                        }
                    }
                    // dQ = dS · K ; dK = dSᵀ · Q
                    mm(l, dh, l, dq, s, (l, 1), kh, (dh, 1));
                    mm(l, dh, l, dk, s, (1, l), qh, (dh, 1));
                },
            );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// The dropout mask of [`CausalAttention`] as a tensor `[BH, L, L]` of
/// `0` or `1/keep` (for the composed reference and tests).
pub fn dropout_mask(
    seed: u64,
    bh: usize,
    l: usize,
    dropout: f32,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let kp = 1.0 - dropout;
    let mut m = vec![0f32; bh * l * l];
    for h in 0..bh {
        for i in 0..l {
            for j in 0..l {
                m[(h * l + i) * l + j] = if dropout <= 0.0 || keep(seed, h, i, j, l, kp) {
                    1.0 / kp
                } else {
                    0.0
                };
            }
        }
    }
    Tensor::from_vec(m, (bh, l, l), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_matches_composed, uniform};
    use candle_core::{DType, Device, Var, D};

    /// Which keys each query may see, built from scratch with candle ops
    /// (not with the kernel's own mask code): causal (`j ≤ i`, a lower
    /// triangle) and a real key, or the query's own position (the diagonal,
    /// so padded query rows stay finite). `[B·heads, L, L]` of 0/1.
    fn allowed_mask(key_valid: &[bool], heads: usize, l: usize, dev: &Device) -> Tensor {
        let b = key_valid.len() / l;
        let keys: Vec<f32> = key_valid.iter().map(|&v| f32::from(u8::from(v))).collect();
        let keys = Tensor::from_vec(keys, (b, 1, 1, l), dev).unwrap();
        let causal = Tensor::tril2(l, DType::F32, dev).unwrap();
        let eye = Tensor::eye(l, DType::F32, dev).unwrap();
        causal
            .broadcast_mul(&keys)
            .unwrap()
            .broadcast_maximum(&eye)
            .unwrap()
            .broadcast_as((b, heads, l, l))
            .unwrap()
            .reshape((b * heads, l, l))
            .unwrap()
    }

    /// Composed reference: additive mask from [`allowed_mask`], candle
    /// softmax, the dropout mask, matmuls.
    fn composed(q: &Tensor, k: &Tensor, v: &Tensor, op: &CausalAttention) -> Tensor {
        let (bh, l, dh) = q.dims3().unwrap();
        let dev = q.device();
        let allowed = allowed_mask(&op.key_valid, op.heads, l, dev);
        let mask = ((allowed - 1.0).unwrap() * 1e9).unwrap();
        let s =
            ((q.matmul(&k.t().unwrap()).unwrap() / (dh as f64).sqrt()).unwrap() + mask).unwrap();
        let p = candle_nn::ops::softmax(&s, D::Minus1).unwrap();
        let p = (p * dropout_mask(op.seed, bh, l, op.dropout, dev).unwrap()).unwrap();
        p.matmul(v).unwrap()
    }

    #[test]
    fn reference_mask_is_causal_with_key_padding() {
        // one row of length 4 whose first key is padding, two heads
        let m = allowed_mask(&[false, true, true, true], 2, 4, &Device::Cpu);
        let want = [
            [1f32, 0., 0., 0.], // a padded query sees only itself
            [0., 1., 0., 0.],
            [0., 1., 1., 0.],
            [0., 1., 1., 1.],
        ];
        for h in 0..2 {
            let got = m.get(h).unwrap().to_vec2::<f32>().unwrap();
            assert_eq!(got, want, "head {h}");
        }
    }

    fn check(dropout: f32) {
        let dev = Device::Cpu;
        let (b, heads, l, dh) = (3, 2, 7, 4);
        let bh = b * heads;
        let mk = |s| Var::from_vec(uniform(bh * l * dh, s, 1.0), (bh, l, dh), &dev).unwrap();
        let (q, k, v) = (mk(1), mk(2), mk(3));
        // row 1 has two leading padding positions, row 2 one
        let mut valid = vec![true; b * l];
        valid[l] = false;
        valid[l + 1] = false;
        valid[2 * l] = false;
        let op = CausalAttention {
            heads,
            key_valid: Arc::new(valid),
            dropout,
            seed: 99,
        };
        let w = Tensor::from_vec(uniform(bh * l * dh, 4, 1.0), (bh, l, dh), &dev).unwrap();
        let ours = q
            .as_tensor()
            .apply_op3(k.as_tensor(), v.as_tensor(), op.clone())
            .unwrap();
        let reference = composed(q.as_tensor(), k.as_tensor(), v.as_tensor(), &op);
        assert_matches_composed(
            &ours,
            &reference,
            &w,
            &[("q", &q), ("k", &k), ("v", &v)],
            (1e-5, 1e-5),
            &format!("dropout {dropout}"),
        );
    }

    #[test]
    fn matches_composed_reference_without_dropout() {
        check(0.0);
    }

    #[test]
    fn matches_composed_reference_with_dropout() {
        check(0.3);
    }

    #[test]
    fn dropout_keeps_about_the_right_fraction() {
        let n = 100_000;
        let kept = (0..n)
            .filter(|&i| keep(7, i / 1000, (i / 10) % 100, i % 10, 100, 0.8))
            .count();
        let frac = kept as f64 / n as f64;
        assert!((frac - 0.8).abs() < 0.01, "{frac}");
    }
}
