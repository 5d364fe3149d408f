//! The adapters on one projection, forward and backward: the mixture-of-
//! experts LoRA `delta(x) = s · ((x Aᵀ) ⊙ gate_cols) Bᵀ` with the gate's
//! per-row column factors, and LoRA dropout, whose mask is recomputed from
//! its seed in the backward instead of stored.

use rayon::prelude::*;

use crate::adapters::LoraWeights;
use crate::dropmask::{drop_threshold, kept};
use crate::kernels::{mm, real, Mat, MatMut, Real};

/// Per-row gate column factors of the `n` rows of a pass:
/// `gc[i·r + j] = gate[padded_row(i) / t, j / (r/E)]`, or `None` (all
/// ones) without a gate.
pub(crate) fn gate_cols<T: Real>(
    gate: Option<&[T]>,
    n: usize,
    (t, src): (usize, Option<&[usize]>),
    r: usize,
    e: usize,
) -> Option<Vec<T>> {
    let g = gate?;
    let per = r / e;
    let mut out = Vec::with_capacity(n * r);
    for row in 0..n {
        let b = padded_row(row, src) / t;
        for j in 0..r {
            out.push(g[b * e + j / per]);
        }
    }
    Some(out)
}

/// Row `r` of a pass in the padded `b·t` layout: `r` itself, or in a packed
/// pass (`src`: each row's flat row in the padded layout) `src[r]`. It
/// names the row's sample (`padded_row(r) / t`) and its dropout mask
/// (element `(r, c)` of a `[_, cols]` buffer draws mask element
/// `padded_row(r)·cols + c`), so a packed pass draws what a padded one does.
#[inline]
pub(crate) fn padded_row(r: usize, src: Option<&[usize]>) -> usize {
    src.map_or(r, |s| s[r])
}

/// `x ⊙ mask / (1 − p)` for the mask of `seed` over `x [_, cols]` (rows
/// mapped by `src` as in [`padded_row`]).
pub(crate) fn dropped_input<T: Real>(
    (x, cols): (&[T], usize),
    p: f64,
    seed: u64,
    src: Option<&[usize]>,
) -> Vec<T> {
    let keep: T = real(1.0 / (1.0 - p));
    let th = drop_threshold(p);
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(cols)
        .zip(x.par_chunks(cols))
        .enumerate()
        .for_each(|(r, (o, xr))| {
            let base = padded_row(r, src) * cols;
            for (c, (o, &v)) in o.iter_mut().zip(xr).enumerate() {
                if kept(seed, base + c, th) {
                    *o = v * keep;
                }
            }
        });
    out
}

/// What one adapter's forward keeps: `u = x Aᵀ` `[N, r]`.
pub(crate) struct AdapterSaved<T> {
    pub(super) u: Vec<T>,
}

/// `y[:, cols] += s·((x Aᵀ) ⊙ gc) Bᵀ`; returns `u = x Aᵀ`.
pub(crate) fn adapter_forward<T: Real>(
    w: &LoraWeights<T>,
    x: Mat<T>,
    n: usize,
    (r, scale): (usize, T),
    gc: Option<&[T]>,
    y: MatMut<T>,
) -> AdapterSaved<T> {
    let mut u = vec![T::zero(); n * r];
    mm(
        MatMut::rows(&mut u, r),
        (n, r, w.in_dim),
        x,
        Mat::rows(&w.a, w.in_dim).t(),
        false,
    );
    let v: Vec<T> = match gc {
        Some(g) => u.iter().zip(g).map(|(&a, &b)| a * b * scale).collect(),
        None => u.iter().map(|&a| a * scale).collect(),
    };
    mm(
        y,
        (n, w.out_dim, r),
        Mat::rows(&v, r),
        Mat::rows(&w.b, r).t(),
        true,
    );
    AdapterSaved { u }
}

/// Backward of [`adapter_forward`] given `dy` (the output gradient block):
/// accumulates `dA`, `dB`, `d gate` and (when given) `dx`. Row `i` belongs
/// to sample `padded_row(i) / t`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn adapter_backward<T: Real>(
    w: &LoraWeights<T>,
    saved: &AdapterSaved<T>,
    x: Mat<T>,
    dy: Mat<T>,
    (n, t, r, e, scale): (usize, usize, usize, usize, T),
    (gc, src): (Option<&[T]>, Option<&[usize]>),
    grad: &mut LoraWeights<T>,
    dgate: Option<&mut [T]>,
    dx: Option<MatMut<T>>,
) {
    let u = &saved.u;
    let v: Vec<T> = match gc {
        Some(g) => u.iter().zip(g).map(|(&a, &b)| a * b * scale).collect(),
        None => u.iter().map(|&a| a * scale).collect(),
    };
    // dB += dyᵀ v
    mm(
        MatMut::rows(&mut grad.b, r),
        (w.out_dim, r, n),
        dy.t(),
        Mat::rows(&v, r),
        true,
    );
    // dv = dy B
    let mut dv = vec![T::zero(); n * r];
    mm(
        MatMut::rows(&mut dv, r),
        (n, r, w.out_dim),
        dy,
        Mat::rows(&w.b, r),
        false,
    );
    if let Some(dg) = dgate {
        let per = r / e;
        for row in 0..n {
            let b = padded_row(row, src) / t;
            for j in 0..r {
                dg[b * e + j / per] += dv[row * r + j] * u[row * r + j] * scale;
            }
        }
    }
    let du: Vec<T> = match gc {
        Some(g) => dv.iter().zip(g).map(|(&a, &b)| a * b * scale).collect(),
        None => dv.iter().map(|&a| a * scale).collect(),
    };
    // dA += duᵀ x
    mm(
        MatMut::rows(&mut grad.a, w.in_dim),
        (r, w.in_dim, n),
        Mat::rows(&du, r).t(),
        x,
        true,
    );
    if let Some(dx) = dx {
        mm(
            dx,
            (n, w.in_dim, r),
            Mat::rows(&du, r),
            Mat::rows(&w.a, w.in_dim),
            true,
        );
    }
}
