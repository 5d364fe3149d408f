//! Causal grouped-query attention of the explicit path over the rotated
//! `qkv [N, w3]` rows, in query blocks that read only the keys they can see:
//! the padded forward (which saves the softmax weights for the backward),
//! the packed forward of inference (pad positions never computed) and the
//! backward.

use rayon::prelude::*;

use super::Dims;
use crate::kernels::{mm, real, sum8, Mat, MatMut, Real};

/// Query rows per block of the attention.
pub(crate) const QBLOCK: usize = 32;

/// The query blocks of sequence `b` as `(first row, keys to read)`: a
/// block reads keys up to the last one any of its rows sees (all `t`
/// without a mask). Keys at or below `-1e30` in the additive mask are hidden.
pub(crate) fn key_blocks<T: Real>(b: usize, t: usize, mask: Option<&[T]>) -> Vec<(usize, usize)> {
    let hidden: T = real(-1e30);
    (0..t)
        .step_by(QBLOCK)
        .map(|q0| {
            let kend = match mask {
                None => t,
                Some(m) => (q0..(q0 + QBLOCK).min(t))
                    .map(|i| {
                        let row = &m[(b * t + i) * t..(b * t + i + 1) * t];
                        row.iter().rposition(|&x| x > hidden).map_or(0, |j| j + 1)
                    })
                    .max()
                    .unwrap_or(0)
                    .max(1),
            };
            (q0, kend)
        })
        .collect()
}

/// Causal grouped-query attention over the rotated `qkv [N, w3]`: returns
/// the output `[N, nh·hd]` and the softmax weights per (row, head).
pub(crate) fn attention_forward<T: Real>(
    qkv: &[T],
    d: &Dims,
    mask: Option<&[T]>,
) -> (Vec<T>, Vec<Vec<T>>) {
    let (t, hd, w3) = (d.t, d.hd, d.w3());
    let sc: T = real(1.0 / (hd as f64).sqrt());
    let units: Vec<(Vec<T>, Vec<T>)> = (0..d.b * d.nh)
        .into_par_iter()
        .map(|u| {
            let (b, h) = (u / d.nh, u % d.nh);
            let (q, k, v) = head_views(qkv, d, b * t, h);
            let mut p = vec![T::zero(); t * t];
            let mut o = vec![T::zero(); t * hd];
            // query blocks see only the keys up to their last visible one
            // (the causal triangle): the masked tail is never multiplied
            for (q0, kend) in key_blocks(b, t, mask) {
                let qb = QBLOCK.min(t - q0);
                let qblk = Mat {
                    off: q.off + q0 * w3,
                    ..q
                };
                let pblk = MatMut {
                    data: &mut p,
                    off: q0 * t,
                    ld: t,
                };
                mm(pblk, (qb, kend, hd), qblk, k.t(), false);
                softmax_block(&mut p, (t, b), (q0, qb, kend), mask, sc);
                let oblk = MatMut {
                    data: &mut o,
                    off: q0 * hd,
                    ld: hd,
                };
                let pview = Mat {
                    data: &p[..],
                    off: q0 * t,
                    rs: t,
                    cs: 1,
                };
                mm(oblk, (qb, hd, kend), pview, v, false);
            }
            (o, p)
        })
        .collect();
    let qc = d.q_cols();
    let mut out = vec![T::zero(); d.n() * qc];
    let mut probs = Vec::with_capacity(units.len());
    for (u, (o, p)) in units.into_iter().enumerate() {
        let (b, h) = (u / d.nh, u % d.nh);
        for i in 0..t {
            out[(b * t + i) * qc + h * hd..(b * t + i) * qc + (h + 1) * hd]
                .copy_from_slice(&o[i * hd..(i + 1) * hd]);
        }
        probs.push(p);
    }
    (out, probs)
}

/// How a layer's attention sees its rows.
#[derive(Clone, Copy)]
pub(crate) enum Attend<'a, T> {
    /// Attention over the `b·t` padded layout with the additive mask
    /// (training and [`infer`]). With `src` the layer's rows are packed
    /// (each row's flat row in the padded layout, pads absent): they are
    /// scattered into the padded layout for the attention alone, so no
    /// product runs on a pad row.
    Padded {
        mask: Option<&'a [T]>,
        src: Option<&'a [usize]>,
    },
    /// Packed sequences without padding, each a causal run of rows
    /// `(first, count)`; with `last`, only each sequence's last row leaves
    /// the layer (the rest is never read).
    Packed {
        spans: &'a [(usize, usize)],
        last: bool,
    },
}

/// Causal grouped-query attention over packed sequences (see
/// [`Attend::Packed`]): the output `[rows, nh·hd]`, or `[sequences, nh·hd]`
/// with `last`. Nothing is kept for a backward.
pub(crate) fn attention_packed<T: Real>(
    qkv: &[T],
    d: &Dims,
    spans: &[(usize, usize)],
    last: bool,
) -> Vec<T> {
    let (hd, w3, qc) = (d.hd, d.w3(), d.q_cols());
    let sc: T = real(1.0 / (hd as f64).sqrt());
    let units: Vec<Vec<T>> = (0..spans.len() * d.nh)
        .into_par_iter()
        .map(|u| {
            let (s, h) = (u / d.nh, u % d.nh);
            let (first, count) = spans[s];
            let (q, k, v) = head_views(qkv, d, first, h);
            let q_first = if last { count - 1 } else { 0 };
            let mut o = vec![T::zero(); (count - q_first) * hd];
            let mut p = vec![T::zero(); QBLOCK.min(count - q_first) * count];
            for q0 in (q_first..count).step_by(QBLOCK) {
                let qb = QBLOCK.min(count - q0);
                // the block's last row sees keys up to itself
                let kend = q0 + qb;
                let qblk = Mat {
                    off: q.off + q0 * w3,
                    ..q
                };
                mm(
                    MatMut {
                        data: &mut p,
                        off: 0,
                        ld: kend,
                    },
                    (qb, kend, hd),
                    qblk,
                    k.t(),
                    false,
                );
                causal_softmax_block(&mut p, (q0, qb, kend), sc);
                mm(
                    MatMut {
                        data: &mut o,
                        off: (q0 - q_first) * hd,
                        ld: hd,
                    },
                    (qb, hd, kend),
                    Mat::rows(&p, kend),
                    v,
                    false,
                );
            }
            o
        })
        .collect();
    let mut out = vec![T::zero(); if last { spans.len() } else { d.n() } * qc];
    for (u, o) in units.into_iter().enumerate() {
        let (s, h) = (u / d.nh, u % d.nh);
        let r0 = if last { s } else { spans[s].0 };
        for (i, oi) in o.chunks_exact(hd).enumerate() {
            out[(r0 + i) * qc + h * hd..(r0 + i) * qc + (h + 1) * hd].copy_from_slice(oi);
        }
    }
    out
}

/// Backward of [`attention_forward`]: from `dout [N, nh·hd]` to the
/// gradient of the rotated `qkv [N, w3]`.
pub(crate) fn attention_backward<T: Real>(
    qkv: &[T],
    probs: &[Vec<T>],
    dout: &[T],
    d: &Dims,
    mask: Option<&[T]>,
) -> Vec<T> {
    let (t, hd, w3, qc) = (d.t, d.hd, d.w3(), d.q_cols());
    let sc: T = real(1.0 / (hd as f64).sqrt());
    let units: Vec<(Vec<T>, Vec<T>, Vec<T>)> = (0..d.b * d.nh)
        .into_par_iter()
        .map(|u| {
            let (b, h) = (u / d.nh, u % d.nh);
            let (q, k, v) = head_views(qkv, d, b * t, h);
            let dout_h = Mat {
                data: dout,
                off: b * t * qc + h * hd,
                rs: qc,
                cs: 1,
            };
            let p = &probs[u];
            let mut dv = vec![T::zero(); t * hd];
            let mut ds = vec![T::zero(); t * t];
            let mut dq = vec![T::zero(); t * hd];
            let mut dk = vec![T::zero(); t * hd];
            for (q0, kend) in key_blocks(b, t, mask) {
                let qb = QBLOCK.min(t - q0);
                let pblk = Mat {
                    data: &p[..],
                    off: q0 * t,
                    rs: t,
                    cs: 1,
                };
                let doblk = Mat {
                    off: dout_h.off + q0 * qc,
                    ..dout_h
                };
                // dV += Pᵀ dO
                mm(
                    MatMut::rows(&mut dv, hd),
                    (kend, hd, qb),
                    pblk.t(),
                    doblk,
                    true,
                );
                // dP = dO Vᵀ, then dS = P ⊙ (dP − rowsum(P ⊙ dP)), scaled
                let dsblk = MatMut {
                    data: &mut ds,
                    off: q0 * t,
                    ld: t,
                };
                mm(dsblk, (qb, kend, hd), doblk, v.t(), false);
                softmax_grad_block(&mut ds, p, t, (q0, qb, kend), sc);
                let dsview = Mat {
                    data: &ds[..],
                    off: q0 * t,
                    rs: t,
                    cs: 1,
                };
                let dqblk = MatMut {
                    data: &mut dq,
                    off: q0 * hd,
                    ld: hd,
                };
                mm(dqblk, (qb, hd, kend), dsview, k, false);
                let qblk = Mat {
                    off: q.off + q0 * w3,
                    ..q
                };
                mm(
                    MatMut::rows(&mut dk, hd),
                    (kend, hd, qb),
                    dsview.t(),
                    qblk,
                    true,
                );
            }
            (dq, dk, dv)
        })
        .collect();
    scatter_head_grads(units, d)
}

/// The `[N, w3]` gradient of `qkv` from each (sequence, head)'s `dq`, `dk`,
/// `dv` `[t, hd]`: a query head's `dq` is copied, the `dk`, `dv` of the
/// query heads sharing a key/value head add up, in head order.
#[allow(clippy::type_complexity)]
fn scatter_head_grads<T: Real>(units: Vec<(Vec<T>, Vec<T>, Vec<T>)>, d: &Dims) -> Vec<T> {
    let (t, hd, w3, qc) = (d.t, d.hd, d.w3(), d.q_cols());
    let groups = d.nh / d.nkv;
    let mut dqkv = vec![T::zero(); d.n() * w3];
    for (u, (dq, dk, dv)) in units.into_iter().enumerate() {
        let (b, h) = (u / d.nh, u % d.nh);
        let kvh = h / groups;
        for i in 0..t {
            let row = &mut dqkv[(b * t + i) * w3..(b * t + i + 1) * w3];
            row[h * hd..(h + 1) * hd].copy_from_slice(&dq[i * hd..(i + 1) * hd]);
            let kc = qc + kvh * hd;
            for (o, &g) in row[kc..kc + hd].iter_mut().zip(&dk[i * hd..(i + 1) * hd]) {
                *o += g;
            }
            let vc = qc + d.kv_cols() + kvh * hd;
            for (o, &g) in row[vc..vc + hd].iter_mut().zip(&dv[i * hd..(i + 1) * hd]) {
                *o += g;
            }
        }
    }
    dqkv
}

/// The q, k and v views `[rows, hd]` of query head `h` for the rows from
/// `row0` of `qkv [N, w3]` (its key/value head is `h / (nh / nkv)`).
fn head_views<'a, T>(
    qkv: &'a [T],
    d: &Dims,
    row0: usize,
    h: usize,
) -> (Mat<'a, T>, Mat<'a, T>, Mat<'a, T>) {
    let (hd, w3, qc) = (d.hd, d.w3(), d.q_cols());
    let kvh = h / (d.nh / d.nkv);
    let base = row0 * w3;
    let q = Mat {
        data: qkv,
        off: base + h * hd,
        rs: w3,
        cs: 1,
    };
    let k = Mat {
        off: base + qc + kvh * hd,
        ..q
    };
    let v = Mat {
        off: base + qc + d.kv_cols() + kvh * hd,
        ..q
    };
    (q, k, v)
}

/// Rows `q0..q0 + qb` of the scores `p [t, t]` of sequence `b` (keys up
/// to `kend`) into softmax weights: scaled by `sc`, plus the additive
/// mask; masked keys flush to exact zeros (no denormals in P·V).
#[inline]
fn softmax_block<T: Real>(
    p: &mut [T],
    (t, b): (usize, usize),
    (q0, qb, kend): (usize, usize, usize),
    mask: Option<&[T]>,
    sc: T,
) {
    for i in q0..q0 + qb {
        let row = &mut p[i * t..i * t + kend];
        let m = mask.map(|m| &m[(b * t + i) * t..(b * t + i) * t + kend]);
        let mut mx = T::neg_infinity();
        for (j, x) in row.iter_mut().enumerate() {
            *x = *x * sc + m.map_or(T::zero(), |m| m[j]);
            mx = num_traits::Float::max(mx, *x);
        }
        let z = T::exp_shift_sum(row, mx);
        let inv = T::one() / z;
        let tiny: T = real(1e-30);
        for x in row.iter_mut() {
            *x = if *x < tiny { T::zero() } else { *x * inv };
        }
    }
}

/// The `qb` rows of a packed block's scores `p [qb, kend]` (first query
/// `q0`) into causal softmax weights: query `q0 + i` sees keys up to
/// itself, the rest are zeros.
#[inline]
fn causal_softmax_block<T: Real>(p: &mut [T], (q0, qb, kend): (usize, usize, usize), sc: T) {
    let tiny: T = real(1e-30);
    for i in 0..qb {
        let row = &mut p[i * kend..(i + 1) * kend];
        let (seen, hidden) = row.split_at_mut(q0 + i + 1);
        let mut mx = T::neg_infinity();
        for x in seen.iter_mut() {
            *x *= sc;
            mx = num_traits::Float::max(mx, *x);
        }
        let inv = T::one() / T::exp_shift_sum(seen, mx);
        for x in seen.iter_mut() {
            *x = if *x < tiny { T::zero() } else { *x * inv };
        }
        hidden.fill(T::zero());
    }
}

/// Rows `q0..q0 + qb` of `ds [t, t]` (holding `dP = dO Vᵀ`, keys up to
/// `kend`) into the scores' gradient `dS = P ⊙ (dP − rowsum(P ⊙ dP)) · sc`.
#[inline]
fn softmax_grad_block<T: Real>(
    ds: &mut [T],
    p: &[T],
    t: usize,
    (q0, qb, kend): (usize, usize, usize),
    sc: T,
) {
    for i in q0..q0 + qb {
        let (row, prow) = (&mut ds[i * t..i * t + kend], &p[i * t..i * t + kend]);
        let dot: T = sum8(kend, |j| row[j] * prow[j]);
        for (x, &pp) in row.iter_mut().zip(prow) {
            *x = pp * (*x - dot) * sc;
        }
    }
}
