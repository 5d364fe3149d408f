//! The float trait of the explicit path and its one matrix product: strided
//! read-only and writable matrix views, and `mm`, which runs a product on
//! the system BLAS when there is one ([`crate::blas`]) and on gemm
//! otherwise, split into column blocks over the rayon pool. Every product
//! of the tape, the adapters and the LM-head loss goes through `mm`.

use std::ops::Deref;

use candle_core::{Layout, Storage};
use rayon::prelude::*;

use crate::error::{Error, Result};

/// Float types of the explicit path: f32 to train, f64 to check gradients.
pub trait Real:
    candle_core::WithDType
    + num_traits::Float
    + std::iter::Sum
    + crate::blas::BlasFloat
    + Send
    + Sync
    + 'static
{
    /// Replaces `x[j]` by `exp(x[j] − shift)` and returns their sum (the
    /// softmax's inner loop: vectorised for f32, exact libm for f64).
    fn exp_shift_sum(x: &mut [Self], shift: Self) -> Self {
        let mut z = Self::zero();
        for v in x.iter_mut() {
            *v = (*v - shift).exp();
            z += *v;
        }
        z
    }

    /// `x[j] = exp(−x[j])` (SwiGLU's sigmoid; vectorised for f32).
    fn exp_neg_inplace(x: &mut [Self]) {
        for v in x.iter_mut() {
            *v = (-*v).exp();
        }
    }
}
impl Real for f32 {
    fn exp_shift_sum(x: &mut [f32], shift: f32) -> f32 {
        distillrec_models::fastmath::exp_shift_sum_inplace(x, shift)
    }

    fn exp_neg_inplace(x: &mut [f32]) {
        for v in x.iter_mut() {
            *v = -*v;
        }
        distillrec_models::fastmath::exp_shift_sum_inplace(x, 0.0);
    }
}
impl Real for f64 {}

pub(crate) fn real<T: Real>(x: f64) -> T {
    T::from_f64(x)
}

// ---------------------------------------------------------------------------
// Strided matrices and the matmul
// ---------------------------------------------------------------------------

/// A read-only 2-D view: element `(i, j)` at `data[off + i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a, T> {
    pub(crate) data: &'a [T],
    pub(crate) off: usize,
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

impl<'a, T> Mat<'a, T> {
    /// A row-major `[rows, cols]` matrix.
    pub(crate) fn rows(data: &'a [T], cols: usize) -> Self {
        Mat {
            data,
            off: 0,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose (no copy).
    pub(crate) fn t(self) -> Self {
        Mat {
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Asserts that `rows × cols` elements are inside `data`.
    pub(crate) fn check(&self, rows: usize, cols: usize) {
        if rows > 0 && cols > 0 {
            assert!(self.off + (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len());
        }
    }
}

/// A writable 2-D block: element `(i, j)` at `data[off + i·ld + j]`.
pub(crate) struct MatMut<'a, T> {
    pub(crate) data: &'a mut [T],
    pub(crate) off: usize,
    pub(crate) ld: usize,
}

impl<'a, T> MatMut<'a, T> {
    pub(crate) fn rows(data: &'a mut [T], cols: usize) -> Self {
        MatMut {
            data,
            off: 0,
            ld: cols,
        }
    }
}

/// A raw pointer shared by threads that write disjoint column blocks.
#[derive(Clone, Copy)]
pub(crate) struct SharedPtr<T>(*mut T);
// SAFETY: used only where every thread writes a disjoint region.
unsafe impl<T> Send for SharedPtr<T> {}
unsafe impl<T> Sync for SharedPtr<T> {}
impl<T> SharedPtr<T> {
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

/// `c[m, n] (+)= a[m, k] · b[k, n]` (`accumulate`: add to `c`, else
/// overwrite). Large products are split into column blocks, one gemm per
/// thread (gemm's own threading splits these shapes poorly on few cores).
pub(crate) fn mm<T: Real>(
    mut c: MatMut<T>,
    (m, n, k): (usize, usize, usize),
    a: Mat<T>,
    b: Mat<T>,
    acc: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    a.check(m, k);
    b.check(k, n);
    assert!(c.off + (m - 1) * c.ld + n <= c.data.len() && c.ld >= n);
    if k == 0 {
        if !acc {
            for i in 0..m {
                c.data[c.off + i * c.ld..c.off + i * c.ld + n].fill(T::zero());
            }
        }
        return;
    }
    let big = m * n * k >= 1 << 18;
    // the BLAS runs its own threads: only from outside rayon's workers
    if big && rayon::current_thread_index().is_none() && blas_mm(&mut c, (m, n, k), a, b, acc) {
        return;
    }
    gemm_mm(c, (m, n, k), a, b, acc);
}

/// [`mm`] on the `gemm` crate (bounds checked by the caller).
pub(crate) fn gemm_mm<T: Real>(
    c: MatMut<T>,
    (m, n, k): (usize, usize, usize),
    a: Mat<T>,
    b: Mat<T>,
    acc: bool,
) {
    let threads = rayon::current_num_threads();
    let big = m * n * k >= 1 << 18;
    let block = if big && threads > 1 && n >= 32 * threads {
        n.div_ceil(threads).div_ceil(16) * 16
    } else {
        n
    };
    // tiles (first row, rows, first column, columns) of c, one per thread
    let tiles: Vec<(usize, usize, usize, usize)> = if block < n {
        (0..n)
            .step_by(block)
            .map(|n0| (0, m, n0, block.min(n - n0)))
            .collect()
    } else if big && threads > 1 && m >= 4 * threads {
        // narrow outputs (adapter ranks): split the rows instead
        let rows = m.div_ceil(threads);
        (0..m)
            .step_by(rows)
            .map(|m0| (m0, rows.min(m - m0), 0, n))
            .collect()
    } else {
        vec![(0, m, 0, n)]
    };
    let ptr = SharedPtr(c.data.as_mut_ptr());
    let (c_off, ld) = (c.off, c.ld);
    let run = |&(m0, mb, n0, nb): &(usize, usize, usize, usize)| {
        let a0 = Mat {
            off: a.off + m0 * a.rs,
            ..a
        };
        let b0 = Mat {
            off: b.off + n0 * b.cs,
            ..b
        };
        // SAFETY: bounds asserted above; the tiles are disjoint, so each
        // block of c belongs to this call alone.
        unsafe {
            gemm_block(
                ptr.get().add(c_off + m0 * ld + n0),
                ld,
                (mb, nb, k),
                a0,
                b0,
                acc,
            )
        }
    };
    if tiles.len() == 1 {
        run(&tiles[0]);
    } else {
        tiles.par_iter().for_each(run);
    }
}

/// One single-threaded gemm: `c[m, n] (+)= a·b` for `c` row-major with
/// leading dimension `ld`. A row-major `b` (a weight in the forward) goes
/// in as the left operand of cᵀ = bᵀ·aᵀ, a transposed one (the backward's
/// `dY·W`) as the right operand of c = a·b: the orientations gemm packs
/// fastest (measured on the teacher step: 110 → 120–130 GFLOP/s for the
/// backward products).
///
/// # Safety
/// `a`, `b` must hold their `m×k`, `k×n` elements at their strides, `c`
/// must be valid for `m` rows of `n` at `ld`, written by no one else.
unsafe fn gemm_block<T: Real>(
    c: *mut T,
    ld: usize,
    (m, n, k): (usize, usize, usize),
    a: Mat<T>,
    b: Mat<T>,
    acc: bool,
) {
    let (ap, bp) = (a.data.as_ptr().add(a.off), b.data.as_ptr().add(b.off));
    let one = T::one();
    let none = gemm::Parallelism::None;
    let (ars, acs, brs, bcs) = (a.rs as isize, a.cs as isize, b.rs as isize, b.cs as isize);
    if b.cs == 1 {
        gemm::gemm(
            n,
            m,
            k,
            c,
            ld as isize,
            1,
            acc,
            bp,
            brs,
            bcs,
            ap,
            ars,
            acs,
            one,
            one,
            false,
            false,
            false,
            none,
        )
    } else {
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            ld as isize,
            acc,
            ap,
            acs,
            ars,
            bp,
            bcs,
            brs,
            one,
            one,
            false,
            false,
            false,
            none,
        )
    }
}

/// `c (+)= a·b` through the system BLAS when there is one and both views
/// have a unit stride ([`crate::blas`]); false when it did not run.
pub(crate) fn blas_mm<T: Real>(
    c: &mut MatMut<T>,
    (m, n, k): (usize, usize, usize),
    a: Mat<T>,
    b: Mat<T>,
    acc: bool,
) -> bool {
    use crate::blas::Operand;
    let Some(blas) = crate::blas::get() else {
        return false;
    };
    let fits = |o: &Operand<T>, rows: usize, cols: usize| {
        o.ld >= if o.trans { rows } else { cols }.max(1) && o.ld <= i32::MAX as usize
    };
    let (Some(ao), Some(bo)) = (
        Operand::of(a.data[a.off..].as_ptr(), a.rs, a.cs),
        Operand::of(b.data[b.off..].as_ptr(), b.rs, b.cs),
    ) else {
        return false;
    };
    if !fits(&ao, m, k) || !fits(&bo, k, n) || m.max(n).max(k) > i32::MAX as usize {
        return false;
    }
    let beta = if acc { T::one() } else { T::zero() };
    // SAFETY: the views were bounds-checked by the caller (`Mat::check`,
    // the `c` assertion), the leading dimensions fit the shapes (above),
    // and `c` is borrowed mutably for the call.
    unsafe {
        T::gemm(
            blas,
            (m, n, k),
            ao,
            bo,
            beta,
            c.data.as_mut_ptr().add(c.off),
            c.ld,
        )
    };
    true
}

/// The CPU data and layout of a tensor of dtype `T`.
pub(crate) fn cpu_data<'a, T: Real, G: Deref<Target = Storage>>(
    g: &'a (G, &'a Layout),
) -> Result<(&'a [T], &'a Layout)> {
    match &*g.0 {
        Storage::Cpu(s) => Ok((T::cpu_storage_as_slice(s)?, g.1)),
        _ => Err(Error::Input(
            "the explicit training path runs on the CPU".into(),
        )),
    }
}

/// A 2-D view of a weight tensor's storage.
pub(crate) fn weight_view<'a, T: Real, G: Deref<Target = Storage>>(
    g: &'a (G, &'a Layout),
) -> Result<Mat<'a, T>> {
    let (data, l) = cpu_data::<T, G>(g)?;
    let st = l.stride();
    if st.len() != 2 {
        return Err(Error::Input("expected a 2-D weight".into()));
    }
    Ok(Mat {
        data,
        off: l.start_offset(),
        rs: st[0],
        cs: st[1],
    })
}

/// A contiguous 1-D tensor's values.
pub(crate) fn vector<'a, T: Real, G: Deref<Target = Storage>>(
    g: &'a (G, &'a Layout),
) -> Result<&'a [T]> {
    let (data, l) = cpu_data::<T, G>(g)?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => Err(Error::Input("expected a contiguous vector".into())),
    }
}

/// `Σ f(i)` over `0..n` with eight partial sums, so that the compiler can
/// vectorise the reduction (a single running sum fixes the order and
/// stays scalar).
#[inline(always)]
pub(crate) fn sum8<T: Real>(n: usize, f: impl Fn(usize) -> T) -> T {
    let mut acc = [T::zero(); 8];
    let full = n / 8 * 8;
    for i in (0..full).step_by(8) {
        for (k, a) in acc.iter_mut().enumerate() {
            *a += f(i + k);
        }
    }
    let mut s = T::zero();
    for i in full..n {
        s += f(i);
    }
    acc.iter().fold(s, |x, &y| x + y)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: Mat<f64>, b: Mat<f64>) -> Vec<f64> {
        let at = |x: &Mat<f64>, i: usize, j: usize| x.data[x.off + i * x.rs + j * x.cs];
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|l| at(&a, i, l) * at(&b, l, j)).sum();
            }
        }
        c
    }

    /// Both backends (gemm, and the system BLAS when one is installed)
    /// against a naive product, for every orientation of the operands,
    /// overwriting and accumulating, into a column block of a wider `c`.
    #[test]
    fn matmul_backends_match_a_naive_product_in_every_orientation() {
        // above the BLAS threshold: a column split, and a narrow output
        // (adapter ranks) split by rows
        for shape in [(70, 64, 60), (600, 8, 60)] {
            let (m, n, k) = shape;
            let vals = |len: usize, seed: usize| -> Vec<f64> {
                (0..len)
                    .map(|i| (((i * 7919 + seed * 104729) % 1000) as f64 - 500.0) / 250.0)
                    .collect()
            };
            let (ad, bd) = (vals(m * k, 1), vals(k * n, 2));
            let blas = crate::blas::get();
            for (a_t, b_t) in [(false, false), (true, false), (false, true), (true, true)] {
                let a = if a_t {
                    Mat {
                        data: &ad[..],
                        off: 0,
                        rs: 1,
                        cs: m,
                    }
                } else {
                    Mat::rows(&ad, k)
                };
                let b = if b_t {
                    Mat {
                        data: &bd[..],
                        off: 0,
                        rs: 1,
                        cs: k,
                    }
                } else {
                    Mat::rows(&bd, n)
                };
                let want = naive(m, n, k, a, b);
                for acc in [false, true] {
                    for use_blas in [false, true] {
                        if use_blas && blas.is_none() {
                            continue;
                        }
                        let ld = n + 5;
                        let mut c = vec![1.0; m * ld];
                        let block = MatMut {
                            data: &mut c,
                            off: 3,
                            ld,
                        };
                        if use_blas {
                            let mut block = block;
                            assert!(blas_mm(&mut block, (m, n, k), a, b, acc));
                        } else {
                            gemm_mm(block, (m, n, k), a, b, acc);
                        }
                        for i in 0..m {
                            for j in 0..n {
                                let got = c[3 + i * ld + j];
                                let w = want[i * n + j] + if acc { 1.0 } else { 0.0 };
                                assert!(
                                    (got - w).abs() < 1e-9,
                                    "a_t {a_t} b_t {b_t} acc {acc} blas {use_blas}: {got} vs {w}"
                                );
                            }
                            // the columns outside the block are untouched
                            assert_eq!(c[i * ld], 1.0);
                            assert_eq!(c[i * ld + 3 + n], 1.0);
                        }
                    }
                }
            }
        }
    }
}
