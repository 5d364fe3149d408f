//! One function per op that the students call — [`linear`],
//! [`layer_norm`], [`attention`] — each picking the fused CPU kernel or,
//! on other devices, the same computation composed from candle primitives;
//! the composed references; and the layer-norm kernel.
//!
//! candle's own fused `layer_norm`, `softmax_last_dim`, `sdpa` have no
//! backward (the gradient is silently cut), so training code uses these.
//! Each fused op is tested against the same computation composed from
//! candle primitives (whose gradients candle derives), see the tests.
//!
//! Kernels parallelise over rows with rayon; every output element is
//! computed by exactly one task in a fixed order, and cross-row reductions
//! sum fixed-size chunks in order, so results do not depend on the number
//! of threads (SPEC 2.6).

use std::cell::OnceCell;
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use crate::batch::{ForwardCtx, SeqBatch};
use crate::cpu::f32_slice;
use crate::fused_attention::CausalAttention;
use crate::fused_linear::fused_linear;

/// Rows per rayon task: large enough to amortise scheduling, fixed so that
/// chunked reductions are reproducible.
const ROW_CHUNK: usize = 16;

// ---------------------------------------------------------------------------
// Cross-entropy over the catalogue (reference)
// ---------------------------------------------------------------------------

/// Mean softmax cross-entropy of `logits [M, N+1]` against `targets [M]`
/// over rows whose target is not 0, column 0 masked, composed from candle
/// primitives: the reference for the fused kernel, and the path on GPUs.
pub fn catalogue_cross_entropy_composed(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (_, c) = logits.dims2()?;
    let dev = logits.device();
    let mask: Vec<f32> = (0..c).map(|j| if j == 0 { -1e30 } else { 0.0 }).collect();
    let masked = logits.broadcast_add(&Tensor::new(mask.as_slice(), dev)?)?;
    let lsm = candle_nn::ops::log_softmax(&masked, 1)?;
    let t = targets.to_vec1::<u32>()?;
    let keep: Vec<u32> = (0..t.len() as u32)
        .filter(|&i| t[i as usize] != 0)
        .collect();
    if keep.is_empty() {
        return Tensor::new(0f32, dev);
    }
    let keep = Tensor::new(keep.as_slice(), dev)?;
    candle_nn::loss::nll(
        &lsm.index_select(&keep, 0)?,
        &targets.index_select(&keep, 0)?,
    )
}

// ---------------------------------------------------------------------------
// Layer norm
// ---------------------------------------------------------------------------

/// Layer normalisation over the last dimension with affine `gamma`, `beta`.
struct LayerNormOp {
    eps: f32,
}

fn ln_row(x: &[f32], eps: f32) -> (f32, f32) {
    let d = x.len() as f32;
    let mu = x.iter().sum::<f32>() / d;
    let var = x.iter().map(|&v| (v - mu) * (v - mu)).sum::<f32>() / d;
    (mu, 1.0 / (var + eps).sqrt())
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "layer-norm"
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
        let x = f32_slice(s1, l1, self.name())?;
        let g = f32_slice(s2, l2, self.name())?;
        let b = f32_slice(s3, l3, self.name())?;
        let d = g.len();
        if d == 0 || x.len() % d != 0 || b.len() != d {
            candle_core::bail!(
                "layer-norm: shapes {:?}, {:?}, {:?}",
                l1.shape(),
                l2.shape(),
                l3.shape()
            );
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(d * ROW_CHUNK)
            .enumerate()
            .for_each(|(ci, chunk)| {
                for (k, orow) in chunk.chunks_mut(d).enumerate() {
                    let r = ci * ROW_CHUNK + k;
                    let xr = &x[r * d..(r + 1) * d];
                    let (mu, rstd) = ln_row(xr, self.eps);
                    for j in 0..d {
                        orow[j] = (xr[j] - mu) * rstd * g[j] + b[j];
                    }
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = gamma.elem_count();
        let rows = x.elem_count() / d;
        let packed =
            x.apply_op3_no_bwd(gamma, &grad.contiguous()?, &LayerNormGrad { eps: self.eps })?;
        let dx = packed.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dg = packed.narrow(0, rows, 1)?.reshape(gamma.shape())?;
        let db = packed.narrow(0, rows + 1, 1)?.reshape(gamma.shape())?;
        Ok((Some(dx), Some(dg), Some(db)))
    }
}

/// Backward of [`LayerNormOp`], packed as `[rows + 2, D]`: `dx`, `dgamma`, `dbeta`.
struct LayerNormGrad {
    eps: f32,
}

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "layer-norm-grad"
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
        let x = f32_slice(s1, l1, self.name())?;
        let g = f32_slice(s2, l2, self.name())?;
        let dy = f32_slice(s3, l3, self.name())?;
        let d = g.len();
        let rows = x.len() / d;
        let mut dx = vec![0f32; rows * d];
        // Per chunk: dx rows, plus the chunk's partial dgamma and dbeta.
        let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
            .par_chunks_mut(d * ROW_CHUNK)
            .enumerate()
            .map(|(ci, chunk)| {
                let mut dg = vec![0f32; d];
                let mut db = vec![0f32; d];
                let mut xhat = vec![0f32; d];
                let mut dxhat = vec![0f32; d];
                for (k, orow) in chunk.chunks_mut(d).enumerate() {
                    let r = ci * ROW_CHUNK + k;
                    let xr = &x[r * d..(r + 1) * d];
                    let dyr = &dy[r * d..(r + 1) * d];
                    let (mu, rstd) = ln_row(xr, self.eps);
                    let (mut m1, mut m2) = (0f32, 0f32);
                    for j in 0..d {
                        xhat[j] = (xr[j] - mu) * rstd;
                        dxhat[j] = dyr[j] * g[j];
                        m1 += dxhat[j];
                        m2 += dxhat[j] * xhat[j];
                        dg[j] += dyr[j] * xhat[j];
                        db[j] += dyr[j];
                    }
                    m1 /= d as f32;
                    m2 /= d as f32;
                    for j in 0..d {
                        orow[j] = rstd * (dxhat[j] - m1 - xhat[j] * m2);
                    }
                }
                (dg, db)
            })
            .collect();
        let mut dg = vec![0f32; d];
        let mut db = vec![0f32; d];
        for (pg, pb) in &partials {
            for j in 0..d {
                dg[j] += pg[j];
                db[j] += pb[j];
            }
        }
        dx.extend_from_slice(&dg);
        dx.extend_from_slice(&db);
        Ok((CpuStorage::F32(dx), Shape::from((rows + 2, d))))
    }
}

/// Layer norm over the last dimension (fused, differentiable in all inputs).
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return layer_norm_composed(x, gamma, beta, eps as f64);
    }
    x.contiguous()?.apply_op3(gamma, beta, LayerNormOp { eps })
}

/// Layer norm composed from candle primitives (the reference for tests and
/// the path for devices without the fused kernel).
pub fn layer_norm_composed(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    let mu = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mu)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xhat = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    xhat.broadcast_mul(gamma)?.broadcast_add(beta)
}

/// Softmax over the last dimension composed from differentiable primitives.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    candle_nn::ops::softmax(x, D::Minus1)
}

// ---------------------------------------------------------------------------
// Linear
// ---------------------------------------------------------------------------

/// `x · Wᵀ + b` for `x` of any rank ≥ 2, with `W [out, in]`: the fused
/// kernel on CPU, composed candle ops elsewhere.
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return linear_composed(x, w, Some(b));
    }
    fused_linear(x, w, b)
}

/// `x · Wᵀ + b` for `x` of any rank ≥ 2, with `W [out, in]`, composed from
/// candle ops (the reference for [`crate::fused_linear::fused_linear`]).
pub fn linear_composed(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let inner = *dims.last().expect("rank >= 1");
    let rows = x.elem_count() / inner;
    let y = x.reshape((rows, inner))?.matmul(&w.t()?)?;
    let y = match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out_dims = dims;
    *out_dims.last_mut().expect("rank >= 1") = w.dim(0)?;
    y.reshape(out_dims)
}

// ---------------------------------------------------------------------------
// Causal self-attention
// ---------------------------------------------------------------------------

/// Which keys of a batch are real items, for causal self-attention; the
/// additive mask of the composed path is built once, on first use, and
/// shared by every layer of one forward pass.
pub struct AttentionMask {
    key_valid: Arc<Vec<bool>>,
    b: usize,
    l: usize,
    additive: OnceCell<Tensor>,
    device: candle_core::Device,
}

impl AttentionMask {
    /// The key padding of `batch` (id 0 = padding).
    pub fn new(batch: &SeqBatch) -> Self {
        AttentionMask {
            key_valid: Arc::new(batch.ids.iter().map(|&i| i != 0).collect()),
            b: batch.b,
            l: batch.l,
            additive: OnceCell::new(),
            device: batch.tensor.device().clone(),
        }
    }

    /// Additive mask `[B, 1, 1, L]` of the last query alone: every real key,
    /// and the last position itself (as [`AttentionMask::additive`]'s last row).
    pub fn last_row_additive(&self) -> Result<Tensor> {
        let (b, l) = (self.b, self.l);
        let mut m = vec![-1e9f32; b * l];
        for r in 0..b {
            for j in 0..l {
                if self.key_valid[r * l + j] || j == l - 1 {
                    m[r * l + j] = 0.0;
                }
            }
        }
        Tensor::from_vec(m, (b, 1, 1, l), &self.device)
    }

    /// Additive mask `[B, 1, L, L]` for the composed path: query `i` sees
    /// key `j ≤ i` if `j` is a real item; the diagonal is always open so
    /// that fully padded rows stay finite (their outputs are zeroed by the
    /// padding mask anyway).
    fn additive(&self) -> Result<Tensor> {
        if let Some(m) = self.additive.get() {
            return Ok(m.clone());
        }
        let (b, l) = (self.b, self.l);
        let mut m = vec![-1e9f32; b * l * l];
        for r in 0..b {
            let valid = &self.key_valid[r * l..(r + 1) * l];
            for i in 0..l {
                let row = &mut m[(r * l + i) * l..(r * l + i + 1) * l];
                for j in 0..=i {
                    if valid[j] || j == i {
                        row[j] = 0.0;
                    }
                }
            }
        }
        let m = Tensor::from_vec(m, (b, 1, l, l), &self.device)?;
        let _ = self.additive.set(m.clone());
        Ok(m)
    }
}

/// Causal multi-head attention `softmax(Q Kᵀ / √dₕ + mask) V` with
/// dropout `p` on the weights (training only), for `q`, `k`, `v` of shape
/// `[B, h, L, dₕ]`: the fused kernel on CPU (scores never become autograd
/// nodes), composed candle ops elsewhere.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &AttentionMask,
    p: f64,
    ctx: &mut ForwardCtx,
) -> Result<Tensor> {
    if !q.device().is_cpu() {
        return attention_composed(q, k, v, mask, p, ctx);
    }
    let (b, heads, l, dh) = q.dims4()?;
    let dropout = if ctx.train { p as f32 } else { 0.0 };
    let seed = if dropout > 0.0 { ctx.next_seed() } else { 0 };
    let op = CausalAttention {
        heads,
        key_valid: mask.key_valid.clone(),
        dropout,
        seed,
    };
    let bh = b * heads;
    let (q, k, v) = (
        q.reshape((bh, l, dh))?,
        k.reshape((bh, l, dh))?,
        v.reshape((bh, l, dh))?,
    );
    q.apply_op3(&k, &v, op)?.reshape((b, heads, l, dh))
}

/// [`attention`] composed from candle primitives with the additive mask
/// (the path for devices without the fused kernel; its dropout masks are
/// drawn by [`ForwardCtx::dropout`], not the kernel's hash).
pub fn attention_composed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &AttentionMask,
    p: f64,
    ctx: &mut ForwardCtx,
) -> Result<Tensor> {
    let dh = q.dim(3)?;
    let scores = (q.matmul(&k.t()?.contiguous()?)? / (dh as f64).sqrt())?
        .broadcast_add(&mask.additive()?)?;
    let att = ctx.dropout(&softmax_last(&scores)?, p)?;
    att.matmul(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_matches_composed, uniform};
    use candle_core::{DType, Device, Var};

    #[test]
    fn fused_linear_matches_composed_value_and_gradients() {
        let dev = Device::Cpu;
        let (b, l, inp, out) = (3, 5, 7, 4);
        let x = Var::from_vec(uniform(b * l * inp, 1, 1.0), (b, l, inp), &dev).unwrap();
        let w = Var::from_vec(uniform(out * inp, 2, 1.0), (out, inp), &dev).unwrap();
        let bias = Var::from_vec(uniform(out, 3, 1.0), out, &dev).unwrap();
        let probe = Tensor::from_vec(uniform(b * l * out, 4, 1.0), (b, l, out), &dev).unwrap();
        let ours = fused_linear(x.as_tensor(), w.as_tensor(), bias.as_tensor()).unwrap();
        let reference =
            linear_composed(x.as_tensor(), w.as_tensor(), Some(bias.as_tensor())).unwrap();
        assert_matches_composed(
            &ours,
            &reference,
            &probe,
            &[("x", &x), ("w", &w), ("b", &bias)],
            (1e-5, 1e-5),
            "fused linear",
        );
    }

    #[test]
    fn fused_cross_entropy_gradient_matches_finite_differences() {
        let dev = Device::Cpu;
        let (m, d, c) = (3, 4, 6);
        let base = uniform(m * d, 2, 2.0);
        let table = Tensor::from_vec(uniform(c * d, 3, 2.0), (c, d), &dev).unwrap();
        let targets = Tensor::new(&[2u32, 5, 1], &dev).unwrap();
        let f = |v: &[f32]| -> f64 {
            let r = Tensor::from_vec(v.to_vec(), (m, d), &dev).unwrap();
            crate::fused_ce::fused_cross_entropy(&r, &table, &targets)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64
        };
        let var = Var::from_vec(base.clone(), (m, d), &dev).unwrap();
        let g = crate::fused_ce::fused_cross_entropy(var.as_tensor(), &table, &targets)
            .unwrap()
            .backward()
            .unwrap();
        let g = g
            .get(&var)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for i in 0..m * d {
            let h = 1e-2f32;
            let mut p = base.clone();
            p[i] += h;
            let mut q = base.clone();
            q[i] -= h;
            let fd = (f(&p) - f(&q)) / (2.0 * h as f64);
            assert!(
                (fd - g[i] as f64).abs() < 2e-3,
                "index {i}: fd {fd} vs {}",
                g[i]
            );
        }
    }

    #[test]
    fn layer_norm_matches_composed_value_and_gradients() {
        let dev = Device::Cpu;
        let (rows, d) = (41, 24);
        let x = Var::from_vec(uniform(rows * d, 3, 2.0), (rows, d), &dev).unwrap();
        let g = Var::from_vec(uniform(d, 4, 2.0), d, &dev).unwrap();
        let b = Var::from_vec(uniform(d, 5, 2.0), d, &dev).unwrap();
        let w = Tensor::from_vec(uniform(rows * d, 6, 2.0), (rows, d), &dev).unwrap();
        let ours = layer_norm(x.as_tensor(), g.as_tensor(), b.as_tensor(), 1e-8).unwrap();
        let reference =
            layer_norm_composed(x.as_tensor(), g.as_tensor(), b.as_tensor(), 1e-8).unwrap();
        assert_matches_composed(
            &ours,
            &reference,
            &w,
            &[("x", &x), ("gamma", &g), ("beta", &b)],
            (1e-5, 1e-4),
            "layer norm",
        );
    }

    #[test]
    fn attention_kernel_matches_the_composed_path_with_padding() {
        // The composed path builds its mask from the batch ids
        // (`AttentionMask::additive`), independently of the kernel's own.
        let dev = Device::Cpu;
        let (b, heads, l, dh) = (3, 2, 6, 4);
        let ids: Vec<u32> = vec![
            0, 0, 4, 7, 1, 2, // two leading pads
            5, 3, 9, 8, 6, 2, // none
            0, 0, 0, 0, 0, 3, // one item
        ];
        let batch = SeqBatch::from_ids(ids, l, &dev).unwrap();
        let mask = AttentionMask::new(&batch);
        let n = b * heads * l * dh;
        let mk = |s| Var::from_vec(uniform(n, s, 1.0), (b, heads, l, dh), &dev).unwrap();
        let (q, k, v) = (mk(11), mk(12), mk(13));
        let (q_, k_, v_) = (q.as_tensor(), k.as_tensor(), v.as_tensor());
        let ours = attention(q_, k_, v_, &mask, 0.3, &mut ForwardCtx::eval()).unwrap();
        let reference =
            attention_composed(q_, k_, v_, &mask, 0.3, &mut ForwardCtx::eval()).unwrap();
        let w = Tensor::from_vec(uniform(n, 14, 1.0), (b, heads, l, dh), &dev).unwrap();
        assert_matches_composed(
            &ours,
            &reference,
            &w,
            &[("q", &q), ("k", &k), ("v", &v)],
            (1e-5, 1e-5),
            "attention at inference",
        );
    }

    #[test]
    fn layer_norm_on_3d_input() {
        let dev = Device::Cpu;
        let x = Var::from_vec(uniform(48, 7, 2.0), (2, 3, 8), &dev).unwrap();
        let g = Tensor::ones(8, DType::F32, &dev).unwrap();
        let b = Tensor::zeros(8, DType::F32, &dev).unwrap();
        let y = layer_norm(x.as_tensor(), &g, &b, 1e-5).unwrap();
        assert_eq!(y.dims(), &[2, 3, 8]);
        let gx = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(gx.get(&x).unwrap().dims(), &[2, 3, 8]);
    }
}
