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

/// A raw output pointer shared by tasks writing disjoint regions.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every task writes a disjoint region of the output.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    fn get(self) -> *mut f32 {
        self.0
    }
}

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
                        let mut p = vec![0f32; t * s];
                        // SAFETY: sizes match the slices (taken from the dims above).
                        unsafe {
                            gemm::gemm(
                                t,
                                s,
                                hd,
                                p.as_mut_ptr(),
                                1,
                                s as isize,
                                false,
                                qh.as_ptr(),
                                1,
                                hd as isize,
                                kh.as_ptr(),
                                hd as isize,
                                1,
                                0.0,
                                scale,
                                false,
                                false,
                                false,
                                gemm::Parallelism::None,
                            )
                        }
                        for (r, row) in p.chunks_mut(s).enumerate() {
                            if let Some(m) = ms {
                                let mrow = &m[(bi * t + r) * s..(bi * t + r + 1) * s];
                                for (x, a) in row.iter_mut().zip(mrow) {
                                    *x += a;
                                }
                            }
                            let mx = fastmath::max(row);
                            let z = fastmath::exp_shift_sum_inplace(row, mx);
                            // masked keys give e^{-87} ≈ 1e-38 from the clamped
                            // exp: flush them to 0, or the PV product runs on
                            // denormals (microcode assists, several times slower)
                            let inv = 1.0 / z;
                            for x in row.iter_mut() {
                                let y = *x * inv;
                                *x = if y < 1e-30 { 0.0 } else { y };
                            }
                        }
                        // SAFETY: task (bi, h) writes only rows of sequence bi,
                        // columns [h·hd, (h+1)·hd) of the output.
                        unsafe {
                            gemm::gemm(
                                t,
                                hd,
                                s,
                                ptr.get().add(bi * t * nh * hd + h * hd),
                                1,
                                (nh * hd) as isize,
                                false,
                                p.as_ptr(),
                                1,
                                s as isize,
                                vh.as_ptr(),
                                1,
                                hd as isize,
                                0.0,
                                1.0,
                                false,
                                false,
                                false,
                                gemm::Parallelism::None,
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
    use candle_core::{Device, D};

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
