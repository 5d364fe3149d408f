//! A CPU f32 matmul that parallelises once per call.
//!
//! candle hands each matmul to the `gemm` crate with rayon parallelism, which
//! forks and joins several times inside one product; for the small-m
//! products of a transformer layer on a few cores (measured: 2 cores, 128
//! tokens) that scaled ~1.1x from 1 to 2 threads, against ~1.8x for PyTorch.
//! Here the output is split into one block per rayon thread (rows when there
//! are many, columns otherwise) and each block is a single-threaded `gemm`
//! call: one fork-join per product.

use candle_core::{DType, Device, Layout, Result, Storage, Tensor};
use rayon::prelude::*;

/// Rows per thread below which the split goes along columns instead.
const MIN_ROWS_PER_THREAD: usize = 32;

#[derive(Clone, Copy)]
struct SendPtr<T>(*const T);
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

#[derive(Clone, Copy)]
struct SendMutPtr<T>(*mut T);
unsafe impl<T> Send for SendMutPtr<T> {}
unsafe impl<T> Sync for SendMutPtr<T> {}

/// Base pointer and (row, column) strides of a 2-D f32 CPU tensor.
fn view(st: &Storage, l: &Layout) -> Option<(*const f32, isize, isize)> {
    match st {
        Storage::Cpu(candle_core::CpuStorage::F32(v)) if l.dims().len() == 2 => {
            let s = l.stride();
            let off = l.start_offset();
            // The whole strided extent must lie inside the buffer.
            let (r, c) = (l.dims()[0], l.dims()[1]);
            let last = off + r.saturating_sub(1) * s[0] + c.saturating_sub(1) * s[1];
            if r == 0 || c == 0 || last >= v.len() {
                return None;
            }
            Some((v[off..].as_ptr(), s[0] as isize, s[1] as isize))
        }
        _ => None,
    }
}

/// `a · b` for 2-D f32 CPU tensors with any strides, or `None` when the
/// inputs are not that (the caller falls back to candle's matmul). The
/// result does not track gradients.
pub fn matmul_2d(a: &Tensor, b: &Tensor) -> Result<Option<Tensor>> {
    if a.dtype() != DType::F32
        || b.dtype() != DType::F32
        || !a.device().is_cpu()
        || !b.device().is_cpu()
    {
        return Ok(None);
    }
    let (m, k) = a.dims2()?;
    let (k2, n) = b.dims2()?;
    if k != k2 {
        candle_core::bail!("matmul: {:?} x {:?}", a.shape(), b.shape());
    }
    let (sa, la) = a.storage_and_layout();
    let (sb, lb) = b.storage_and_layout();
    let (Some((pa, a_rs, a_cs)), Some((pb, b_rs, b_cs))) = (view(&sa, la), view(&sb, lb)) else {
        return Ok(None);
    };
    let mut out = vec![0f32; m * n];
    let threads = rayon::current_num_threads().max(1);
    let (pa, pb) = (SendPtr(pa), SendPtr(pb));
    let po = SendMutPtr(out.as_mut_ptr());
    // SAFETY: `view` checked that every strided element of a and b lies in
    // its buffer, and the read guards keep both alive and unmodified; each
    // task writes a disjoint block of `out`, which outlives the scope.
    let run = |r0: usize, r1: usize, c0: usize, c1: usize| unsafe {
        let (pa, pb, po) = (pa, pb, po);
        gemm::gemm(
            r1 - r0,
            c1 - c0,
            k,
            po.0.add(r0 * n + c0),
            1,
            n as isize,
            false,
            pa.0.offset(r0 as isize * a_rs),
            a_cs,
            a_rs,
            pb.0.offset(c0 as isize * b_cs),
            b_cs,
            b_rs,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    };
    if threads == 1 || m * n * k < 64 * 64 * 64 {
        run(0, m, 0, n);
    } else if m >= threads * MIN_ROWS_PER_THREAD {
        let chunk = m.div_ceil(threads);
        (0..threads).into_par_iter().for_each(|i| {
            let r0 = (i * chunk).min(m);
            let r1 = ((i + 1) * chunk).min(m);
            if r0 < r1 {
                run(r0, r1, 0, n);
            }
        });
    } else {
        let chunk = n.div_ceil(threads).next_multiple_of(16);
        (0..threads).into_par_iter().for_each(|i| {
            let c0 = (i * chunk).min(n);
            let c1 = ((i + 1) * chunk).min(n);
            if c0 < c1 {
                run(0, m, c0, c1);
            }
        });
    }
    drop((sa, sb));
    Ok(Some(Tensor::from_vec(out, (m, n), &Device::Cpu)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_candle_for_every_split_and_layout() {
        let d = Device::Cpu;
        for (m, k, n) in [(1, 64, 300), (5, 33, 17), (128, 96, 200), (70, 64, 64)] {
            let a = Tensor::randn(0f32, 1., (m, k), &d).unwrap();
            let b = Tensor::randn(0f32, 1., (n, k), &d).unwrap();
            let bt = b.t().unwrap();
            let bt_c = bt.contiguous().unwrap();
            let wide = Tensor::randn(0f32, 1., (k, n + 9), &d).unwrap();
            let narrow = wide.narrow(1, 4, n).unwrap();
            for rhs in [&bt, &bt_c, &narrow] {
                let want = a.matmul(rhs).unwrap();
                let got = matmul_2d(&a, rhs).unwrap().expect("f32 cpu");
                let diff = (want - got)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(diff < 1e-4, "{m}x{k}x{n}: {diff}");
            }
        }
        let a64 = Tensor::zeros((2, 2), DType::F64, &d).unwrap();
        assert!(matmul_2d(&a64, &a64).unwrap().is_none());
    }
}
