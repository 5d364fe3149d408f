//! Inference-only CPU kernels for the decoder (no autograd): attention over
//! all heads in one parallel region, and SwiGLU's `silu(gate) · up`.
//!
//! Composed from candle ops, attention is a dozen small operations per
//! layer (scale, two batched matmuls, mask add, softmax, reshapes and
//! transposes that copy), each with its own thread fork and join; at
//! prefill sizes the joins and copies cost as much as the matmuls. Here
//! each (sequence, head) is one task: `QKᵀ` with gemm, mask and softmax in
//! place with a vectorised `exp`, `PV` written straight into the
//! `[B, T, heads · head_dim]` output. Training keeps the composed,
//! differentiable path; these run only on untracked CPU f32 tensors.

use candle_core::{CpuStorage, Result, Storage, Tensor};
use rayon::prelude::*;

use distillrec_models::fastmath;

use crate::parmatmul::OutPtr;

/// Borrows a contiguous CPU f32 tensor's data.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    let (st, l) = t.storage_and_layout();
    match (&*st, l.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => Some(f(&v[a..b])),
        _ => None,
    }
}

/// Whether the inference kernels may take `xs` (CPU, f32, untracked).
pub fn applies(xs: &[&Tensor]) -> bool {
    xs.iter()
        .all(|t| !t.track_op() && t.device().is_cpu() && t.dtype() == candle_core::DType::F32)
}

/// One head's attention: `softmax(scale · q kᵀ + mask) v` for `q [t, hd]`
/// (contiguous) and `s` key/value rows read with row strides `k_rs`, `v_rs`,
/// written as `t` rows of `hd` values with row stride `out_rs`.
///
/// # Safety
/// `k` and `v` must be valid for `s` rows of `hd` values at their strides,
/// `out` for `t` rows at `out_rs`, and no other thread may write that region.
#[allow(clippy::too_many_arguments)]
unsafe fn attend_head(
    q: &[f32],
    (k, k_rs): (*const f32, usize),
    (v, v_rs): (*const f32, usize),
    (t, s, hd): (usize, usize, usize),
    scale: f32,
    mask: Option<&[f32]>,
    (out, out_rs): (*mut f32, usize),
) {
    debug_assert_eq!(q.len(), t * hd);
    let mut p = vec![0f32; t * s];
    gemm::gemm(
        t,
        s,
        hd,
        p.as_mut_ptr(),
        1,
        s as isize,
        false,
        q.as_ptr(),
        1,
        hd as isize,
        k,
        k_rs as isize,
        1,
        0.0,
        scale,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
    softmax_rows(&mut p, s, mask);
    gemm::gemm(
        t,
        hd,
        s,
        out,
        1,
        out_rs as isize,
        false,
        p.as_ptr(),
        1,
        s as isize,
        v,
        1,
        v_rs as isize,
        0.0,
        1.0,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
}

/// Attention `softmax(scale · QKᵀ + mask) V` for `q [B, nh, T, hd]`,
/// `k, v [B, nkv, S, hd]` (grouped heads: query head `h` reads KV head
/// `h / (nh / nkv)`), and an optional additive mask `[B, 1, 1, T, S]`.
/// Returns `[B, T, nh · hd]`, or `None` if an input is not contiguous CPU f32.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f32,
) -> Result<Option<Tensor>> {
    let (b, nh, t, hd) = q.dims4()?;
    let (_, nkv, s, _) = k.dims4()?;
    if nkv == 0 || nh % nkv != 0 {
        return Ok(None);
    }
    let groups = nh / nkv;
    let mut out = vec![0f32; b * t * nh * hd];
    let ptr = OutPtr(out.as_mut_ptr());
    let done = with_f32(q, |qs| {
        with_f32(k, |ks| {
            with_f32(v, |vs| {
                let run = |ms: Option<&[f32]>| {
                    (0..b * nh).into_par_iter().for_each(|task| {
                        let (bi, h) = (task / nh, task % nh);
                        let g = h / groups;
                        let qh = &qs[((bi * nh + h) * t) * hd..((bi * nh + h + 1) * t) * hd];
                        let kh = &ks[((bi * nkv + g) * s) * hd..((bi * nkv + g + 1) * s) * hd];
                        let vh = &vs[((bi * nkv + g) * s) * hd..((bi * nkv + g + 1) * s) * hd];
                        // SAFETY: the slices hold s rows of hd values; task
                        // (bi, h) writes only rows of sequence bi, columns
                        // [h·hd, (h+1)·hd) of the output.
                        unsafe {
                            attend_head(
                                qh,
                                (kh.as_ptr(), hd),
                                (vh.as_ptr(), hd),
                                (t, s, hd),
                                scale,
                                ms.map(|m| &m[bi * t * s..(bi + 1) * t * s]),
                                (ptr.get().add(bi * t * nh * hd + h * hd), nh * hd),
                            )
                        }
                    });
                };
                match mask {
                    Some(m) => with_f32(m, |ms| run(Some(ms))).is_some(),
                    None => {
                        run(None);
                        true
                    }
                }
            })
        })
    });
    if done != Some(Some(Some(true))) {
        return Ok(None);
    }
    Ok(Some(Tensor::from_vec(out, (b, t, nh * hd), q.device())?))
}

/// Shapes of [`attention_qkv`]'s fused projection output.
#[derive(Clone, Copy, Debug)]
pub struct QkvLayout {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Head size.
    pub head_dim: usize,
}

/// Writes `RoPE(src)` (Hugging Face "rotate half" pairs `i, i + half`) of
/// `t` rows read with row stride `rs` into `dst [t, hd]`.
fn rope_rows(
    src: &[f32],
    rs: usize,
    cos: &[f32],
    sin: &[f32],
    t: usize,
    hd: usize,
    dst: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA (checked above).
        return unsafe { rope_rows_avx2(src, rs, cos, sin, t, hd, dst) };
    }
    rope_rows_kernel(src, rs, cos, sin, t, hd, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rope_rows_avx2(
    src: &[f32],
    rs: usize,
    cos: &[f32],
    sin: &[f32],
    t: usize,
    hd: usize,
    dst: &mut [f32],
) {
    rope_rows_kernel(src, rs, cos, sin, t, hd, dst)
}

#[inline(always)]
fn rope_rows_kernel(
    src: &[f32],
    rs: usize,
    cos: &[f32],
    sin: &[f32],
    t: usize,
    hd: usize,
    dst: &mut [f32],
) {
    let half = hd / 2;
    for r in 0..t {
        let x = &src[r * rs..r * rs + hd];
        let (c, s) = (
            &cos[r * half..(r + 1) * half],
            &sin[r * half..(r + 1) * half],
        );
        let o = &mut dst[r * hd..(r + 1) * hd];
        for i in 0..half {
            let (a, b) = (x[i], x[i + half]);
            o[i] = a * c[i] - b * s[i];
            o[i + half] = b * c[i] + a * s[i];
        }
    }
}

/// Attention straight from the fused q/k/v projection `qkv [B, T, (nh +
/// 2·nkv)·hd]` (no KV cache: keys are the same `T` positions), with RoPE
/// tables `cos, sin [B, T, hd/2]` applied inside each task and the
/// optional additive mask `[B, 1, 1, T, T]`. Saves the head transposes and
/// RoPE passes of the composed path. Returns `[B, T, nh · hd]`, or `None`
/// when an input is not contiguous CPU f32.
pub fn attention_qkv(
    qkv: &Tensor,
    layout: QkvLayout,
    cos: &Tensor,
    sin: &Tensor,
    mask: Option<&Tensor>,
    scale: f32,
) -> Result<Option<Tensor>> {
    let (b, t, w) = qkv.dims3()?;
    let QkvLayout {
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: hd,
    } = layout;
    if nkv == 0 || nh % nkv != 0 || w != (nh + 2 * nkv) * hd || hd % 2 != 0 {
        return Ok(None);
    }
    if cos.dims() != [b, t, hd / 2] || sin.dims() != [b, t, hd / 2] {
        return Ok(None);
    }
    let groups = nh / nkv;
    let half = hd / 2;
    let mut out = vec![0f32; b * t * nh * hd];
    let ptr = OutPtr(out.as_mut_ptr());
    let run = |ys: &[f32], cs: &[f32], ss: &[f32], ms: Option<&[f32]>| {
        (0..b * nh).into_par_iter().for_each(|task| {
            let (bi, h) = (task / nh, task % nh);
            let g = h / groups;
            let base = bi * t * w;
            let (cb, sb) = (
                &cs[bi * t * half..(bi + 1) * t * half],
                &ss[bi * t * half..(bi + 1) * t * half],
            );
            let mut q = vec![0f32; t * hd];
            let mut k = vec![0f32; t * hd];
            rope_rows(&ys[base + h * hd..], w, cb, sb, t, hd, &mut q);
            rope_rows(&ys[base + (nh + g) * hd..], w, cb, sb, t, hd, &mut k);
            let v = &ys[base + (nh + nkv + g) * hd..];
            // SAFETY: k/v rows are read with stride w inside `ys` (its
            // length covers b·t·w); task (bi, h) writes only rows of
            // sequence bi, columns [h·hd, (h+1)·hd) of the output.
            unsafe {
                attend_head(
                    &q,
                    (k.as_ptr(), hd),
                    (v.as_ptr(), w),
                    (t, t, hd),
                    scale,
                    ms.map(|m| &m[bi * t * t..(bi + 1) * t * t]),
                    (ptr.get().add(bi * t * nh * hd + h * hd), nh * hd),
                )
            }
        });
    };
    let done = with_f32(qkv, |ys| {
        with_f32(cos, |cs| {
            with_f32(sin, |ss| match mask {
                Some(m) => with_f32(m, |ms| run(ys, cs, ss, Some(ms))).is_some(),
                None => {
                    run(ys, cs, ss, None);
                    true
                }
            })
        })
    });
    if done != Some(Some(Some(true))) {
        return Ok(None);
    }
    Ok(Some(Tensor::from_vec(out, (b, t, nh * hd), qkv.device())?))
}

/// Row-wise softmax of `p [rows, s]` in place after adding the optional
/// mask rows; masked weights are flushed to exact zeros (see [`attention`]).
/// Keys after a row's last visible one (the causal tail) are skipped.
fn softmax_rows(p: &mut [f32], s: usize, mask: Option<&[f32]>) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA (checked above).
        return unsafe { softmax_rows_avx2(p, s, mask) };
    }
    softmax_rows_kernel(p, s, mask)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_rows_avx2(p: &mut [f32], s: usize, mask: Option<&[f32]>) {
    softmax_rows_kernel(p, s, mask)
}

/// Values at or below this in an additive mask hide the key.
const MASKED: f32 = -1e30;

#[inline(always)]
fn softmax_rows_kernel(p: &mut [f32], s: usize, mask: Option<&[f32]>) {
    for (r, row) in p.chunks_mut(s).enumerate() {
        let end = match mask {
            Some(m) => {
                let mrow = &m[r * s..(r + 1) * s];
                let end = mrow.iter().rposition(|&a| a > MASKED).map_or(s, |i| i + 1);
                for (x, a) in row[..end].iter_mut().zip(&mrow[..end]) {
                    *x += a;
                }
                end
            }
            None => s,
        };
        let (live, tail) = row.split_at_mut(end);
        tail.fill(0.0);
        let mx = fastmath::max(live);
        let z = fastmath::exp_shift_sum_inplace(live, mx);
        let inv = 1.0 / z;
        // test before scaling: the product of a masked weight (≈ 1e-38)
        // and 1/z would be a denormal, and denormal arithmetic is slow
        for x in live.iter_mut() {
            *x = if *x < 1e-30 { 0.0 } else { *x * inv };
        }
    }
}

/// `h = x + a` and `RMSNorm(h) · w` in one parallel pass over the rows
/// (the residual add and the next norm of a decoder layer), for contiguous
/// `x, a [.., d]` and `w [d]`; `None` if an input does not qualify.
pub fn add_rms_norm(
    x: &Tensor,
    a: &Tensor,
    w: &Tensor,
    eps: f64,
) -> Result<Option<(Tensor, Tensor)>> {
    if x.dims() != a.dims() || x.rank() < 1 {
        return Ok(None);
    }
    let d = x.dim(candle_core::D::Minus1)?;
    if w.dims() != [d] || d == 0 {
        return Ok(None);
    }
    let n = x.elem_count();
    let mut h = vec![0f32; n];
    let mut y = vec![0f32; n];
    let done = with_f32(x, |xs| {
        with_f32(a, |as_| {
            with_f32(w, |ws| {
                h.par_chunks_mut(d)
                    .zip(y.par_chunks_mut(d))
                    .enumerate()
                    .for_each(|(r, (hr, yr))| {
                        let (xr, ar) = (&xs[r * d..(r + 1) * d], &as_[r * d..(r + 1) * d]);
                        let mut ss = 0f32;
                        for ((o, &p), &q) in hr.iter_mut().zip(xr).zip(ar) {
                            *o = p + q;
                            ss += *o * *o;
                        }
                        let inv = 1.0 / ((ss / d as f32) as f64 + eps).sqrt() as f32;
                        for ((o, &v), &g) in yr.iter_mut().zip(hr.iter()).zip(ws) {
                            *o = v * inv * g;
                        }
                    });
            })
        })
    });
    if done != Some(Some(Some(()))) {
        return Ok(None);
    }
    Ok(Some((
        Tensor::from_vec(h, x.shape(), x.device())?,
        Tensor::from_vec(y, x.shape(), x.device())?,
    )))
}

/// `silu(g) · u` for two `[.., n]` views with unit last stride (column
/// blocks of the fused gate/up output); returns a contiguous tensor of the
/// same shape, or `None` if the inputs do not qualify.
pub fn swiglu(g: &Tensor, u: &Tensor) -> Result<Option<Tensor>> {
    if g.dims() != u.dims() || g.rank() < 2 {
        return Ok(None);
    }
    let n = g.dim(candle_core::D::Minus1)?;
    let rows = g.elem_count() / n.max(1);
    let view = |t: &Tensor| -> Option<(usize, usize)> {
        // rows of `n` values, equally spaced
        let l = t.layout();
        let st = l.stride();
        let r = st.len();
        if st[r - 1] != 1 {
            return None;
        }
        let row_stride = st[r - 2];
        // every leading dim must fold into one row index
        let mut expect = row_stride * t.dims()[r - 2];
        for d in (0..r - 2).rev() {
            if st[d] != expect {
                return None;
            }
            expect *= t.dims()[d];
        }
        Some((l.start_offset(), row_stride))
    };
    let (Some((go, gs)), Some((uo, us))) = (view(g), view(u)) else {
        return Ok(None);
    };
    let (gst, _) = g.storage_and_layout();
    let (ust, _) = u.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(gv)), Storage::Cpu(CpuStorage::F32(uv))) = (&*gst, &*ust)
    else {
        return Ok(None);
    };
    if rows > 0 && (go + (rows - 1) * gs + n > gv.len() || uo + (rows - 1) * us + n > uv.len()) {
        return Ok(None);
    }
    let mut out = vec![0f32; rows * n];
    out.par_chunks_mut(n).enumerate().for_each(|(r, o)| {
        let gr = &gv[go + r * gs..go + r * gs + n];
        let ur = &uv[uo + r * us..uo + r * us + n];
        fastmath::silu_mul(gr, ur, o);
    });
    drop(gst);
    drop(ust);
    Ok(Some(Tensor::from_vec(out, g.shape(), g.device())?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::max_diff;
    use candle_core::{Device, D};

    #[test]
    fn attention_matches_the_composed_computation() {
        let dev = Device::Cpu;
        let (b, nh, nkv, t, s, hd) = (2, 6, 2, 5, 7, 8);
        let q = Tensor::randn(0f32, 1.0, (b, nh, t, hd), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (b, nkv, s, hd), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (b, nkv, s, hd), &dev).unwrap();
        let mut m = vec![0f32; b * t * s];
        for (i, x) in m.iter_mut().enumerate() {
            if (i * 7) % 5 == 0 && i % s != 0 {
                *x = f32::MIN;
            }
        }
        let mask = Tensor::from_vec(m, (b, 1, 1, t, s), &dev).unwrap();
        let scale = 0.3f32;
        for mk in [None, Some(&mask)] {
            let got = attention(&q, &k, &v, mk, scale)
                .unwrap()
                .expect("qualifies");
            // composed reference: repeat KV heads, softmax, weighted sum
            let groups = nh / nkv;
            let kr = k
                .unsqueeze(2)
                .unwrap()
                .repeat((1, 1, groups, 1, 1))
                .unwrap()
                .reshape((b, nh, s, hd))
                .unwrap();
            let vr = v
                .unsqueeze(2)
                .unwrap()
                .repeat((1, 1, groups, 1, 1))
                .unwrap()
                .reshape((b, nh, s, hd))
                .unwrap();
            let mut sc = (q.matmul(&kr.t().unwrap()).unwrap() * scale as f64).unwrap();
            if let Some(m) = mk {
                sc = sc.broadcast_add(&m.reshape((b, 1, t, s)).unwrap()).unwrap();
            }
            let p = candle_nn::ops::softmax(&sc, D::Minus1).unwrap();
            let want = p
                .matmul(&vr)
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .reshape((b, t, nh * hd))
                .unwrap();
            assert!(max_diff(&got, &want) < 1e-5, "{}", max_diff(&got, &want));
        }
    }

    #[test]
    fn attention_from_qkv_matches_rope_then_attention() {
        let dev = Device::Cpu;
        let (b, nh, nkv, t, hd) = (2, 4, 2, 6, 8);
        let w = (nh + 2 * nkv) * hd;
        let y = Tensor::randn(0f32, 1.0, (b, t, w), &dev).unwrap();
        let cos = Tensor::randn(0f32, 1.0, (b, t, hd / 2), &dev).unwrap();
        let sin = Tensor::randn(0f32, 1.0, (b, t, hd / 2), &dev).unwrap();
        let heads = |off: usize, n: usize| {
            y.narrow(2, off, n * hd)
                .unwrap()
                .reshape((b, t, n, hd))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let q = crate::ops::rope(&heads(0, nh), &cos, &sin, false).unwrap();
        let k = crate::ops::rope(&heads(nh * hd, nkv), &cos, &sin, false).unwrap();
        let v = heads((nh + nkv) * hd, nkv);
        let mut m = vec![0f32; b * t * t];
        for bi in 0..b {
            for r in 0..t {
                for c in r + 1..t {
                    m[(bi * t + r) * t + c] = f32::MIN;
                }
            }
        }
        let mask = Tensor::from_vec(m, (b, 1, 1, t, t), &dev).unwrap();
        let layout = QkvLayout {
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
        };
        for mk in [None, Some(&mask)] {
            let want = attention(&q, &k, &v, mk, 0.5).unwrap().unwrap();
            let got = attention_qkv(&y, layout, &cos, &sin, mk, 0.5)
                .unwrap()
                .unwrap();
            assert!(max_diff(&got, &want) < 1e-5, "{}", max_diff(&got, &want));
        }
    }

    #[test]
    fn add_rms_norm_matches_the_composed_ops() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 16), &dev).unwrap();
        let a = Tensor::randn(0f32, 1.0, (2, 3, 16), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, 16, &dev).unwrap();
        let (h, y) = add_rms_norm(&x, &a, &w, 1e-5).unwrap().unwrap();
        let want_h = (&x + &a).unwrap();
        let want_y = crate::ops::rms_norm(&want_h, &w, 1e-5, false).unwrap();
        assert!(max_diff(&h, &want_h) < 1e-6);
        assert!(max_diff(&y, &want_y) < 1e-5);
    }

    #[test]
    fn swiglu_on_column_blocks_matches_silu_mul() {
        let dev = Device::Cpu;
        let y = Tensor::randn(0f32, 2.0, (2, 3, 20), &dev).unwrap();
        let g = y.narrow(2, 0, 9).unwrap();
        let u = y.narrow(2, 9, 9).unwrap();
        let got = swiglu(&g, &u).unwrap().expect("qualifies");
        let want = (g.silu().unwrap() * &u).unwrap();
        assert!(max_diff(&got, &want) < 1e-5);
    }
}
