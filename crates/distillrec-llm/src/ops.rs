//! Normalisation, RoPE and softmax in two implementations: compositions of
//! differentiable candle primitives (the training path), and candle's fused
//! kernels (faster, but they have no backward pass).
//!
//! Each function takes `fused`; callers pass [`can_fuse`], which is true only
//! when no input tracks gradients, so a gradient can never be silently cut:
//! the moment an adapter or an `inputs_embeds` tensor carries a `Var`, every
//! op downstream of it takes the composed path.

use candle_core::{DType, Result, Tensor, D};

/// True when none of `xs` tracks gradients (and fusing is not disabled), so
/// a fused kernel without backward is safe.
pub fn can_fuse(allow: bool, xs: &[&Tensor]) -> bool {
    allow && xs.iter().all(|t| !t.track_op())
}

/// RMSNorm over the last dimension: `x / sqrt(mean(x²) + eps) * w` (the
/// composed form normalises half-precision inputs in f32).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, fused: bool) -> Result<Tensor> {
    if fused && x.is_contiguous() && x.dtype() != DType::F64 {
        return candle_nn::ops::rms_norm(x, w, eps as f32);
    }
    // half precision: normalise in f32 (as Hugging Face does), so the
    // mean of squares neither overflows nor loses the small rows
    let (dt, x) = (x.dtype(), widen(x)?);
    let dim = x.dim(D::Minus1)? as f64;
    let ms = (x.sqr()?.sum_keepdim(D::Minus1)? / dim)?;
    let inv = (ms + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&inv)?.to_dtype(dt)?.broadcast_mul(w)
}

/// `x` in f32 when it is a half-precision float (f16, bf16), else `x`.
fn widen(x: &Tensor) -> Result<Tensor> {
    match x.dtype() {
        DType::F16 | DType::BF16 => x.to_dtype(DType::F32),
        _ => Ok(x.clone()),
    }
}

/// LayerNorm over the last dimension: `(x - mean) / sqrt(var + eps) * w + b`.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64, fused: bool) -> Result<Tensor> {
    if fused && x.is_contiguous() && x.dtype() != DType::F64 {
        return candle_nn::ops::layer_norm(x, w, b, eps as f32);
    }
    let dim = x.dim(D::Minus1)? as f64;
    let mean = (x.sum_keepdim(D::Minus1)? / dim)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = (xc.sqr()?.sum_keepdim(D::Minus1)? / dim)?;
    let inv = (var + eps)?.sqrt()?.recip()?;
    xc.broadcast_mul(&inv)?.broadcast_mul(w)?.broadcast_add(b)
}

/// Softmax over the last dimension, stabilised by subtracting the row max
/// (in f32 for half-precision inputs, as Hugging Face's attention does).
pub fn softmax_last_dim(x: &Tensor, fused: bool) -> Result<Tensor> {
    if fused && x.is_contiguous() && x.dtype() != DType::F64 {
        return candle_nn::ops::softmax_last_dim(x);
    }
    let (dt, x) = (x.dtype(), widen(x)?);
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&sum)?.to_dtype(dt)
}

/// Rotary position embedding, Hugging Face "rotate_half" layout: the first
/// and second halves of each head form the rotated pairs.
///
/// `x` is `(batch, heads, seq, head_dim)`; `cos`/`sin` are
/// `(batch, seq, head_dim / 2)` so every row can have its own positions
/// (left padding).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, fused: bool) -> Result<Tensor> {
    if fused && x.dtype() != DType::F64 {
        let x = x.contiguous()?;
        return candle_nn::rotary_emb::rope(&x, cos, sin);
    }
    let half = x.dim(D::Minus1)? / 2;
    let cos = Tensor::cat(&[cos, cos], D::Minus1)?.unsqueeze(1)?;
    let sin = Tensor::cat(&[sin, sin], D::Minus1)?.unsqueeze(1)?;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
}

/// Exact GELU, `x * Φ(x)`, composed from differentiable ops when needed.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    x.gelu_erf()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::max_diff;
    use candle_core::{Device, Var};

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn fused_and_composed_agree() {
        let x = rand(&[2, 5, 8], 1);
        let w = rand(&[8], 2);
        let b = rand(&[8], 3);
        let d = max_diff(
            &rms_norm(&x, &w, 1e-5, true).unwrap(),
            &rms_norm(&x, &w, 1e-5, false).unwrap(),
        );
        assert!(d < 1e-5, "rms_norm {d}");
        let d = max_diff(
            &layer_norm(&x, &w, &b, 1e-5, true).unwrap(),
            &layer_norm(&x, &w, &b, 1e-5, false).unwrap(),
        );
        assert!(d < 1e-5, "layer_norm {d}");
        let d = max_diff(
            &softmax_last_dim(&x, true).unwrap(),
            &softmax_last_dim(&x, false).unwrap(),
        );
        assert!(d < 1e-6, "softmax {d}");
        let q = rand(&[2, 3, 5, 8], 4);
        let cos = rand(&[2, 5, 4], 5);
        let sin = rand(&[2, 5, 4], 6);
        let d = max_diff(
            &rope(&q, &cos, &sin, true).unwrap(),
            &rope(&q, &cos, &sin, false).unwrap(),
        );
        assert!(d < 1e-6, "rope {d}");
    }

    #[test]
    fn fused_cross_entropy_matches_log_softmax_and_nll() {
        for dtype in [DType::F32, DType::F64] {
            let x = Var::from_tensor(&rand(&[3, 7], 9).to_dtype(dtype).unwrap()).unwrap();
            let targets = [2u32, 0, 6];
            let t = Tensor::new(&targets, &Device::Cpu).unwrap();
            let a = cross_entropy(x.as_tensor(), &targets).unwrap();
            let lsm = candle_nn::ops::log_softmax(x.as_tensor(), D::Minus1).unwrap();
            let b = candle_nn::loss::nll(&lsm, &t).unwrap();
            let (ga, gb) = (
                (&a * 3.0).unwrap().backward().unwrap(),
                (&b * 3.0).unwrap().backward().unwrap(),
            );
            let d = (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d < 1e-6, "loss {d}");
            let (ga, gb) = (
                ga.get(x.as_tensor()).unwrap(),
                gb.get(x.as_tensor()).unwrap(),
            );
            let d = max_diff(
                &ga.to_dtype(DType::F32).unwrap(),
                &gb.to_dtype(DType::F32).unwrap(),
            );
            assert!(d < 1e-6, "grad {d}");
        }
        assert!(cross_entropy(&rand(&[2, 4], 1), &[0, 4]).is_err());
    }

    #[test]
    fn composed_ops_have_gradients_and_fusing_is_refused_for_tracked_inputs() {
        let x = Var::from_tensor(&rand(&[2, 4, 6], 7)).unwrap();
        assert!(!can_fuse(true, &[x.as_tensor()]));
        assert!(can_fuse(true, &[&rand(&[2], 1)]));
        let w = rand(&[6], 8);
        let y = rms_norm(x.as_tensor(), &w, 1e-5, false).unwrap();
        let y = softmax_last_dim(&y, false).unwrap();
        let loss = y.sqr().unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let g = grads.get(x.as_tensor()).expect("gradient reaches x");
        let n = g
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(n > 0.0);
    }
}

/// Row-wise log-sum-exp of a contiguous `(n, v)` buffer.
fn row_lse<T: candle_core::WithDType>(x: &[T], v: usize) -> Vec<f64> {
    x.chunks(v)
        .map(|row| {
            let m = row
                .iter()
                .fold(f64::NEG_INFINITY, |m, &a| m.max(a.to_f64()));
            m + row
                .iter()
                .map(|&a| (a.to_f64() - m).exp())
                .sum::<f64>()
                .ln()
        })
        .collect()
}

/// Mean cross-entropy of logits against targets as one op: the forward keeps
/// only the per-row log-sum-exp, the backward writes `softmax - onehot` once.
/// (Composed from primitives, a log-softmax over a 50k vocabulary allocates
/// and differentiates several logits-sized tensors.)
#[derive(Debug, Clone)]
struct FusedCrossEntropy {
    targets: std::sync::Arc<Vec<u32>>,
}

impl FusedCrossEntropy {
    fn fwd<T: candle_core::WithDType>(&self, x: &[T], v: usize) -> f64 {
        let lse = row_lse(x, v);
        let n = self.targets.len();
        let total: f64 = (0..n)
            .map(|r| lse[r] - x[r * v + self.targets[r] as usize].to_f64())
            .sum();
        total / n as f64
    }

    fn grad<T: candle_core::WithDType>(&self, x: &[T], v: usize, scale: f64) -> Vec<T> {
        let lse = row_lse(x, v);
        let n = self.targets.len();
        let s = scale / n as f64;
        let mut g: Vec<T> = x
            .iter()
            .enumerate()
            .map(|(i, &a)| T::from_f64(s * (a.to_f64() - lse[i / v]).exp()))
            .collect();
        for (r, &t) in self.targets.iter().enumerate() {
            let i = r * v + t as usize;
            g[i] = T::from_f64(g[i].to_f64() - s);
        }
        g
    }
}

impl candle_core::CustomOp1 for FusedCrossEntropy {
    fn name(&self) -> &'static str {
        "fused-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        st: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::CpuStorage as S;
        let (a, b) = l.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("cross-entropy: non-contiguous logits".into())
        })?;
        let v = l.dims()[1];
        let out = match st {
            S::F32(x) => S::F32(vec![self.fwd(&x[a..b], v) as f32]),
            S::F64(x) => S::F64(vec![self.fwd(&x[a..b], v)]),
            _ => candle_core::bail!("cross-entropy: logits must be f32 or f64"),
        };
        Ok((out, candle_core::Shape::from(())))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let scale = grad_res.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let (n, v) = arg.dims2()?;
        let g = match arg.dtype() {
            DType::F32 => Tensor::from_vec(
                self.grad(&arg.flatten_all()?.to_vec1::<f32>()?, v, scale),
                (n, v),
                arg.device(),
            )?,
            DType::F64 => Tensor::from_vec(
                self.grad(&arg.flatten_all()?.to_vec1::<f64>()?, v, scale),
                (n, v),
                arg.device(),
            )?,
            d => candle_core::bail!("cross-entropy: dtype {d:?}"),
        };
        Ok(Some(g))
    }
}

/// Mean cross-entropy of `logits` `(n, vocab)` (f32/f64, CPU) against
/// `targets` (n ids), differentiable w.r.t. the logits. Ids outside the
/// vocabulary are an error.
pub fn cross_entropy(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    let (n, v) = logits.dims2()?;
    if n != targets.len() || n == 0 {
        candle_core::bail!(
            "cross-entropy: {n} rows of logits, {} targets",
            targets.len()
        );
    }
    if let Some(&t) = targets.iter().find(|&&t| t as usize >= v) {
        candle_core::bail!("cross-entropy: target {t} >= vocabulary {v}");
    }
    logits.contiguous()?.apply_op1(FusedCrossEntropy {
        targets: std::sync::Arc::new(targets.to_vec()),
    })
}
