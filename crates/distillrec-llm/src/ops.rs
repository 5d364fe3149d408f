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

/// RMSNorm over the last dimension: `x / sqrt(mean(x²) + eps) * w`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, fused: bool) -> Result<Tensor> {
    if fused && x.is_contiguous() && x.dtype() != DType::F64 {
        return candle_nn::ops::rms_norm(x, w, eps as f32);
    }
    let dim = x.dim(D::Minus1)? as f64;
    let ms = (x.sqr()?.sum_keepdim(D::Minus1)? / dim)?;
    let inv = (ms + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&inv)?.broadcast_mul(w)
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

/// Softmax over the last dimension, stabilised by subtracting the row max.
pub fn softmax_last_dim(x: &Tensor, fused: bool) -> Result<Tensor> {
    if fused && x.is_contiguous() && x.dtype() != DType::F64 {
        return candle_nn::ops::softmax_last_dim(x);
    }
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&sum)
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

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
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
