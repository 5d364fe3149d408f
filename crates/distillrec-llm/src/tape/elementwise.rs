//! The row-wise kernels of a decoder layer, forward and backward: RMSNorm
//! (the backward recomputes the normalised rows from the saved `1/rms`),
//! SwiGLU and RoPE (rotated in place; the backward rotates back).

use rayon::prelude::*;

use crate::kernels::{real, sum8, Real};

/// `y = x · inv · w` per row, returning `inv = 1/√(mean(x²) + eps)`.
pub(crate) fn rms_forward<T: Real>(x: &[T], w: &[T], eps: f64, y: &mut [T]) -> Vec<T> {
    let d = w.len();
    let mut inv = vec![T::zero(); x.len() / d];
    y.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .zip(inv.par_iter_mut())
        .for_each(|((yr, xr), iv)| {
            let ss: T = sum8(d, |i| xr[i] * xr[i]);
            *iv = T::one() / (ss / real(d as f64) + real(eps)).sqrt();
            for ((o, &a), &g) in yr.iter_mut().zip(xr).zip(w) {
                *o = a * *iv * g;
            }
        });
    inv
}

/// `x · inv · w` again (the backward's recomputation of a norm output).
pub(crate) fn rms_apply<T: Real>(x: &[T], w: &[T], inv: &[T]) -> Vec<T> {
    let d = w.len();
    let mut y = vec![T::zero(); x.len()];
    y.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .zip(inv.par_iter())
        .for_each(|((yr, xr), &iv)| {
            for ((o, &a), &g) in yr.iter_mut().zip(xr).zip(w) {
                *o = a * iv * g;
            }
        });
    y
}

/// `dx += inv · (g − x̂ · mean(g · x̂))` with `g = dy · w`, `x̂ = x · inv`.
pub(crate) fn rms_backward<T: Real>(x: &[T], w: &[T], inv: &[T], dy: &[T], dx: &mut [T]) {
    let d = w.len();
    dx.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .zip(dy.par_chunks(d))
        .zip(inv.par_iter())
        .for_each(|(((dxr, xr), dyr), &iv)| {
            let dot: T = sum8(d, |i| xr[i] * dyr[i] * w[i]) * iv;
            let mean = dot / real(d as f64);
            for (((o, &a), &g), &ww) in dxr.iter_mut().zip(xr).zip(dyr).zip(w) {
                *o += iv * (g * ww - a * iv * mean);
            }
        });
}

/// `silu(g) · u` for the `[N, 2I]` gate/up buffer.
pub(crate) fn swiglu_forward<T: Real>(gu: &[T], i: usize) -> Vec<T> {
    let mut out = vec![T::zero(); gu.len() / 2];
    out.par_chunks_mut(i)
        .zip(gu.par_chunks(2 * i))
        .for_each_init(
            || vec![T::zero(); i],
            |e, (o, row)| {
                let (g, u) = row.split_at(i);
                e.copy_from_slice(g);
                T::exp_neg_inplace(e);
                for (((y, &a), &b), &en) in o.iter_mut().zip(g).zip(u).zip(e.iter()) {
                    *y = a / (T::one() + en) * b;
                }
            },
        );
    out
}

/// Gradient of `silu(g) · u` into the `[N, 2I]` buffer `dgu`.
pub(crate) fn swiglu_backward<T: Real>(gu: &[T], dh: &[T], i: usize) -> Vec<T> {
    let mut dgu = vec![T::zero(); gu.len()];
    dgu.par_chunks_mut(2 * i)
        .zip(gu.par_chunks(2 * i))
        .zip(dh.par_chunks(i))
        .for_each_init(
            || vec![T::zero(); i],
            |e, ((d, row), dhr)| {
                let (g, u) = row.split_at(i);
                let (dg, du) = d.split_at_mut(i);
                e.copy_from_slice(g);
                T::exp_neg_inplace(e);
                for j in 0..i {
                    let sig = T::one() / (T::one() + e[j]);
                    du[j] = dhr[j] * g[j] * sig;
                    dg[j] = dhr[j] * u[j] * sig * (T::one() + g[j] * (T::one() - sig));
                }
            },
        );
    dgu
}

/// Rotates the `heads` head vectors starting at column `c0` of each row of
/// `buf [N, w]` in place (`inverse`: by the negative angle, the backward).
pub(crate) fn rope_inplace<T: Real>(
    buf: &mut [T],
    w: usize,
    (c0, heads, hd): (usize, usize, usize),
    cos: &[T],
    sin: &[T],
    inverse: bool,
) {
    let half = hd / 2;
    buf.par_chunks_mut(w).enumerate().for_each(|(n, row)| {
        let (c, s) = (
            &cos[n * half..(n + 1) * half],
            &sin[n * half..(n + 1) * half],
        );
        for h in 0..heads {
            let x = &mut row[c0 + h * hd..c0 + (h + 1) * hd];
            for i in 0..half {
                let (a, b) = (x[i], x[i + half]);
                let sn = if inverse { -s[i] } else { s[i] };
                x[i] = a * c[i] - b * sn;
                x[i + half] = b * c[i] + a * sn;
            }
        }
    });
}
