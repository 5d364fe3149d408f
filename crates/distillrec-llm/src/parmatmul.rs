//! Inference matmul `y = x · Wt` split across threads by output columns.
//!
//! gemm's own multi-threading splits prefill-sized products (a few hundred
//! rows against a 576–3072-wide weight) poorly on two cores; giving each
//! thread a contiguous block of output columns and running gemm
//! single-threaded inside it scales almost linearly, and each weight column
//! is read by one thread only (the products are memory-bound).

use candle_core::{CpuStorage, Result, Storage, Tensor};
use rayon::prelude::*;

/// A raw output pointer shared by threads writing disjoint regions.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: every thread writes a disjoint set of columns of the output.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// `x [M, K] · wt [K, N]` for constant CPU f32 tensors, where `x` is
/// contiguous and `wt` has unit column stride (a row-major matrix or a
/// column block of one). `None` when the inputs do not qualify (the caller
/// falls back to candle's matmul).
pub fn par_matmul(x: &Tensor, wt: &Tensor) -> Result<Option<Tensor>> {
    if x.track_op() || wt.track_op() || !x.device().is_cpu() {
        return Ok(None);
    }
    let threads = rayon::current_num_threads();
    if threads < 2 {
        return Ok(None);
    }
    let (m, k) = x.dims2()?;
    let (k2, n) = wt.dims2()?;
    if k != k2 || m == 0 || n < 64 {
        return Ok(None);
    }
    let x = &x.contiguous()?;
    let (xst, xl) = x.storage_and_layout();
    let xs: &[f32] = match (&*xst, xl.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => &v[a..b],
        _ => return Ok(None),
    };
    let (wst, wl) = wt.storage_and_layout();
    let w = match &*wst {
        Storage::Cpu(CpuStorage::F32(v)) => v,
        _ => return Ok(None),
    };
    let stride = wl.stride();
    // `wt` is a transposed row-major `W [N, K]` (the tied LM head): a single
    // row (the last position's logits) is N dot products, which read W once
    // instead of packing it as gemm would
    if m == 1 && stride[0] == 1 && stride[1] >= k {
        let (w_rs, w_off) = (stride[1], wl.start_offset());
        assert!(w_off + (n - 1) * w_rs + k <= w.len());
        let mut y = vec![0f32; n];
        y.par_chunks_mut(1024).enumerate().for_each(|(c, out)| {
            for (j, o) in out.iter_mut().enumerate() {
                let row = w_off + (c * 1024 + j) * w_rs;
                *o = dot(&w[row..row + k], xs);
            }
        });
        drop(wst);
        drop(xst);
        return Ok(Some(Tensor::from_vec(y, (1, n), x.device())?));
    }
    // element (kk, j) of `wt` is at w_off + kk·s0 + j·s1 (any strides: a
    // row-major weight, a column block of one, or a transposed view)
    let (s0, s1) = (stride[0], stride[1]);
    let w_off = wl.start_offset();
    // every element is written by exactly one block below (gemm with
    // read_dst = false), so the buffer needs no zeroing
    let mut y: Vec<f32> = Vec::with_capacity(m * n);
    let out = OutPtr(y.as_mut_ptr());
    // column blocks, a multiple of 16 wide, at least one per thread
    let block = n.div_ceil(threads).div_ceil(16) * 16;
    let starts: Vec<usize> = (0..n).step_by(block).collect();
    // Bounds: the last element each block reads of w and writes of y.
    assert!(w_off + (k - 1) * s0 + (n - 1) * s1 < w.len());
    starts.par_iter().for_each(|&n0| {
        let nb = block.min(n - n0);
        // SAFETY: block [n0, n0 + nb) of every output row belongs to this
        // thread alone; reads stay inside `w` and `xs` (asserted above).
        // Computed as yᵀ = W·xᵀ with W = wtᵀ as the left operand (for a
        // row-major `wt`, W is column-major, which gemm packs faster than a
        // row-major right operand).
        unsafe {
            gemm::gemm(
                nb,
                m,
                k,
                out.get().add(n0),
                n as isize,
                1,
                false,
                w.as_ptr().add(w_off + n0 * s1),
                s0 as isize,
                s1 as isize,
                xs.as_ptr(),
                k as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        }
    });
    drop(wst);
    drop(xst);
    // SAFETY: the blocks cover every column of every row, all written above.
    unsafe { y.set_len(m * n) };
    Ok(Some(Tensor::from_vec(y, (m, n), x.device())?))
}

/// `a · b` with eight independent accumulators (vectorised by LLVM).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_candle_matmul_on_blocks_and_views() {
        let dev = Device::Cpu;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        pool.install(|| {
            let x = Tensor::randn(0f32, 1.0, (7, 33), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (33, 200), &dev).unwrap();
            // a column block of a wider matrix, as Fused parts are, and a
            // transposed view (the backward product dy · Wtᵀ)
            let view = w.narrow(1, 40, 130).unwrap();
            let w2 = Tensor::randn(0f32, 1.0, (200, 100), &dev).unwrap();
            let xt = Tensor::randn(0f32, 1.0, (7, 200), &dev).unwrap();
            let got = par_matmul(&xt, &w2).unwrap().expect("qualifies");
            let tv = w2.t().unwrap().contiguous().unwrap().t().unwrap();
            let got_t = par_matmul(&xt, &tv).unwrap().expect("strided");
            let d = (got - got_t).unwrap().abs().unwrap().max_all().unwrap();
            assert!(d.to_scalar::<f32>().unwrap() < 1e-4);
            for wt in [&w, &view] {
                // a single row against a transposed row-major weight (LM head)
                let w_rows = wt.t().unwrap().contiguous().unwrap();
                let x1 = x.narrow(0, 3, 1).unwrap();
                let got = par_matmul(&x1, &w_rows.t().unwrap())
                    .unwrap()
                    .expect("gemv");
                let want = x1.matmul(wt).unwrap();
                let d = (got - want).unwrap().abs().unwrap().max_all().unwrap();
                assert!(d.to_scalar::<f32>().unwrap() < 1e-4);
                let got = par_matmul(&x, wt).unwrap().expect("qualifies");
                let want = x.matmul(wt).unwrap();
                let diff = (got - want)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(diff < 1e-4, "{diff}");
            }
        });
    }
}
