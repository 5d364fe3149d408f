//! One decoder layer of the explicit path: its forward as named steps
//! (attention block: norm, q/k/v with adapters, RoPE, attention, output
//! projection and residual; MLP block: norm, gate/up with adapters, SwiGLU,
//! down projection and residual), saving only what the backward needs, and
//! the hand-written backward of both blocks. Every frozen projection goes
//! through `project` / `project_backward`, which add the adapters of the
//! parts they carry.

use candle_core::Tensor;
use rayon::prelude::*;

use super::attention::{attention_backward, attention_forward, attention_packed, Attend};
use super::elementwise::{
    rms_apply, rms_backward, rms_forward, rope_inplace, swiglu_backward, swiglu_forward,
};
use super::lora::{adapter_backward, adapter_forward, dropped_input, padded_row, AdapterSaved};
use super::{gather_rows, scatter_rows, Dims};
use crate::adapters::{target_index, Dropout, LoraWeights};
use crate::dropmask::{drop_threshold, kept, mix};
use crate::error::{Error, Result};
use crate::kernels::{mm, real, vector, weight_view, Mat, MatMut, Real};
use crate::model::{DecoderLayer, Mlp, Norm, Target};

/// What one layer's forward keeps for its backward.
pub(crate) struct LayerSaved<T> {
    pub(super) x: Vec<T>,
    pub(super) inv1: Vec<T>,
    pub(super) qkv: Vec<T>,
    pub(super) probs: Vec<Vec<T>>,
    pub(super) attn: Vec<T>,
    pub(super) h1: Vec<T>,
    pub(super) inv2: Vec<T>,
    pub(super) gu: Vec<T>,
    pub(super) adapters: [Option<AdapterSaved<T>>; 7],
}

/// Shapes and adapter settings shared by a layer's projections.
#[derive(Clone, Copy)]
pub(crate) struct Proj<'a, T> {
    pub(super) n: usize,
    pub(super) t: usize,
    pub(super) r: usize,
    pub(super) e: usize,
    pub(super) scale: T,
    pub(super) gc: Option<&'a [T]>,
    /// LoRA dropout of this layer (probability, layer seed).
    pub(super) drop: Option<(f64, u64)>,
    /// In a packed pass, each row's flat row in the padded `b·t` layout
    /// (which sample it belongs to, which dropout mask it draws).
    pub(super) src: Option<&'a [usize]>,
}

/// `y (+)= x·W` for a frozen (fused) projection `W [in, width]` (`acc`:
/// add to `y`, else overwrite), then the delta of every adapted part
/// (column offset, target), whose rank-r activations go into `saved`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn project<T: Real>(
    weight_t: &Tensor,
    (x, in_dim): (&[T], usize),
    (y, width): (&mut [T], usize),
    acc: bool,
    parts: &[(usize, Target)],
    ad: &[Option<LoraWeights<T>>; 7],
    saved: &mut [Option<AdapterSaved<T>>; 7],
    p: Proj<T>,
) -> Result<()> {
    {
        let gw = weight_t.storage_and_layout();
        mm(
            MatMut::rows(&mut *y, width),
            (p.n, width, in_dim),
            Mat::rows(x, in_dim),
            weight_view::<T, _>(&gw)?,
            acc,
        );
    }
    for &(c0, target) in parts {
        let ti = target_index(target);
        if let Some(w) = &ad[ti] {
            let out = MatMut {
                data: &mut *y,
                off: c0,
                ld: width,
            };
            let dropped = p
                .drop
                .map(|(pr, seed)| dropped_input((x, in_dim), pr, mix(seed, ti), p.src));
            saved[ti] = Some(adapter_forward(
                w,
                Mat::rows(dropped.as_deref().unwrap_or(x), in_dim),
                p.n,
                (p.r, p.scale),
                p.gc,
                out,
            ));
        }
    }
    Ok(())
}

/// Whether any of `parts` carries an adapter.
pub(crate) fn adapted<T>(ad: &[Option<LoraWeights<T>>; 7], parts: &[(usize, Target)]) -> bool {
    parts.iter().any(|&(_, t)| ad[target_index(t)].is_some())
}

/// Backward of [`project`]: `dx = dy·Wᵀ` plus every adapter's input
/// gradient; adapter and gate gradients accumulate into `grads`, `dgate`.
/// `x` is the projection's input, needed only when a part is adapted.
#[allow(clippy::too_many_arguments)]
pub(crate) fn project_backward<T: Real>(
    weight_t: &Tensor,
    (dy, width): (&[T], usize),
    (x, in_dim): (Option<&[T]>, usize),
    parts: &[(usize, Target)],
    ad: &[Option<LoraWeights<T>>; 7],
    saved: &[Option<AdapterSaved<T>>; 7],
    grads: &mut [Option<LoraWeights<T>>; 7],
    mut dgate: Option<&mut [T]>,
    p: Proj<T>,
) -> Result<Vec<T>> {
    let mut dx = vec![T::zero(); p.n * in_dim];
    {
        let gw = weight_t.storage_and_layout();
        mm(
            MatMut::rows(&mut dx, in_dim),
            (p.n, in_dim, width),
            Mat::rows(dy, width),
            weight_view::<T, _>(&gw)?.t(),
            false,
        );
    }
    for &(c0, target) in parts {
        let ti = target_index(target);
        if let (Some(w), Some(sv), Some(gr), Some(x)) = (&ad[ti], &saved[ti], grads[ti].as_mut(), x)
        {
            let dyb = Mat {
                data: dy,
                off: c0,
                rs: width,
                cs: 1,
            };
            match p.drop {
                None => adapter_backward(
                    w,
                    sv,
                    Mat::rows(x, in_dim),
                    dyb,
                    (p.n, p.t, p.r, p.e, p.scale),
                    (p.gc, p.src),
                    gr,
                    dgate.as_deref_mut(),
                    Some(MatMut::rows(&mut dx, in_dim)),
                ),
                Some((pr, seed)) => {
                    // the adapter saw x ⊙ mask / (1 − p): recompute it, and
                    // send its input gradient back through the same mask
                    let seed = mix(seed, ti);
                    let xd = dropped_input((x, in_dim), pr, seed, p.src);
                    let mut dxa = vec![T::zero(); p.n * in_dim];
                    adapter_backward(
                        w,
                        sv,
                        Mat::rows(&xd, in_dim),
                        dyb,
                        (p.n, p.t, p.r, p.e, p.scale),
                        (p.gc, p.src),
                        gr,
                        dgate.as_deref_mut(),
                        Some(MatMut::rows(&mut dxa, in_dim)),
                    );
                    let keep: T = real(1.0 / (1.0 - pr));
                    let th = drop_threshold(pr);
                    dx.par_chunks_mut(in_dim)
                        .zip(dxa.par_chunks(in_dim))
                        .enumerate()
                        .for_each(|(r, (o, g))| {
                            let base = padded_row(r, p.src) * in_dim;
                            for (c, (o, &g)) in o.iter_mut().zip(g).enumerate() {
                                if kept(seed, base + c, th) {
                                    *o += g * keep;
                                }
                            }
                        });
                }
            }
        }
    }
    Ok(dx)
}

/// The weights of a layer that the explicit path reads besides q/k/v and
/// o: both RMSNorms (weight, eps) and the SwiGLU MLP's fused gate/up and
/// down projections (`[in, out]` transposed weights).
struct LayerWeights<'l> {
    norm1: (&'l Tensor, f64),
    norm2: (&'l Tensor, f64),
    gate_up: &'l Tensor,
    down: &'l Tensor,
}

/// [`LayerWeights`] of `layer`, or an error naming the part the explicit
/// path cannot run (a LayerNorm, a plain MLP).
fn layer_weights(layer: &DecoderLayer) -> Result<LayerWeights<'_>> {
    let (
        Norm::Rms {
            weight: w1,
            eps: e1,
        },
        Norm::Rms {
            weight: w2,
            eps: e2,
        },
    ) = (&layer.attn_norm, &layer.mlp_norm)
    else {
        return Err(Error::Input(
            "the explicit path needs RMSNorm layers".into(),
        ));
    };
    let Mlp::Gated { gate_up, down, .. } = &layer.mlp else {
        return Err(Error::Input("the explicit path needs a SwiGLU MLP".into()));
    };
    Ok(LayerWeights {
        norm1: (w1, *e1),
        norm2: (w2, *e2),
        gate_up: &gate_up.weight_t,
        down: &down.weight_t,
    })
}

/// The adapters of a layer and the slots their forward activations go to.
type Adapted<'s, T> = (
    &'s [Option<LoraWeights<T>>; 7],
    &'s mut [Option<AdapterSaved<T>>; 7],
);

/// One decoder layer's forward from its input `x`: the attention block,
/// then the MLP block. Returns what [`layer_backward`] needs (nothing of
/// the attention weights when packed) and the layer's output rows (each
/// sequence's last row only in the last layer of a packed pass).
#[allow(clippy::too_many_arguments)]
pub(crate) fn layer_forward<T: Real>(
    layer: &DecoderLayer,
    ad: &[Option<LoraWeights<T>>; 7],
    d: &Dims,
    x: Vec<T>,
    rope: (&[T], &[T]),
    attend: Attend<T>,
    p: Proj<T>,
) -> Result<(LayerSaved<T>, Vec<T>)> {
    let lw = layer_weights(layer)?;
    let mut adapters: [Option<AdapterSaved<T>>; 7] = Default::default();
    let (inv1, qkv) = qkv_forward(layer, lw.norm1, d, &x, rope, (ad, &mut adapters), p)?;
    let (attn, probs, x, last_rows) = attend_rows(&qkv, d, attend, x);
    // a packed pass's last layer goes on with each sequence's last row only
    let gate_last = last_rows
        .as_ref()
        .and_then(|rows| p.gc.map(|g| gather_rows(g, p.r, rows)));
    let p = match &last_rows {
        Some(rows) => Proj {
            n: rows.len(),
            gc: gate_last.as_deref(),
            ..p
        },
        None => p,
    };
    let h1 = output_forward(
        &layer.attn.o_proj.weight_t,
        d,
        &x,
        &attn,
        (ad, &mut adapters),
        p,
    )?;
    let (inv2, gu, out) = mlp_forward(&lw, d, &h1, (ad, &mut adapters), p)?;
    let saved = LayerSaved {
        x,
        inv1,
        qkv,
        probs,
        attn,
        h1,
        inv2,
        gu,
        adapters,
    };
    Ok((saved, out))
}

/// Attention norm and the q/k/v projection with its adapters and biases,
/// then RoPE on q and k: returns the norm's `1/rms` and the rotated
/// `qkv [N, w3]`.
fn qkv_forward<T: Real>(
    layer: &DecoderLayer,
    (w1, e1): (&Tensor, f64),
    d: &Dims,
    x: &[T],
    (cos, sin): (&[T], &[T]),
    (ad, adapters): Adapted<T>,
    p: Proj<T>,
) -> Result<(Vec<T>, Vec<T>)> {
    let n = d.n();
    let g1 = w1.storage_and_layout();
    let mut xn = vec![T::zero(); x.len()];
    let inv1 = rms_forward(x, vector::<T, _>(&g1)?, e1, &mut xn);
    let w3 = d.w3();
    let mut qkv = vec![T::zero(); n * w3];
    let (qc, kvc) = (d.q_cols(), d.kv_cols());
    let qkv_parts = [(0, Target::Q), (qc, Target::K), (qc + kvc, Target::V)];
    let w = (&mut qkv[..], w3);
    project(
        &layer.attn.qkv.weight_t,
        (&xn, d.h),
        w,
        false,
        &qkv_parts,
        ad,
        adapters,
        p,
    )?;
    for (lin, c0) in [
        (&layer.attn.q_proj, 0),
        (&layer.attn.k_proj, qc),
        (&layer.attn.v_proj, qc + kvc),
    ] {
        if let Some(bias) = lin.bias() {
            let g = bias.storage_and_layout();
            let bv = vector::<T, _>(&g)?;
            qkv.par_chunks_mut(w3).for_each(|row| {
                for (o, &bb) in row[c0..c0 + bv.len()].iter_mut().zip(bv) {
                    *o += bb;
                }
            });
        }
    }
    drop(xn);
    rope_inplace(&mut qkv, w3, (0, d.nh, d.hd), cos, sin, false);
    rope_inplace(&mut qkv, w3, (qc, d.nkv, d.hd), cos, sin, false);
    Ok((inv1, qkv))
}

/// The attention of the rotated `qkv` as `attend` says: its output, the
/// softmax weights (padded pass only), the layer input rows that go on
/// (all of `x`, or each sequence's last row in a packed pass's last layer)
/// and, in that last case, the rows kept.
#[allow(clippy::type_complexity)]
fn attend_rows<T: Real>(
    qkv: &[T],
    d: &Dims,
    attend: Attend<T>,
    x: Vec<T>,
) -> (Vec<T>, Vec<Vec<T>>, Vec<T>, Option<Vec<usize>>) {
    match attend {
        Attend::Padded { mask, src: None } => {
            let (attn, probs) = attention_forward(qkv, d, mask);
            (attn, probs, x, None)
        }
        Attend::Padded {
            mask,
            src: Some(src),
        } => {
            let pd = d.padded();
            let full = scatter_rows(qkv, d.w3(), src, pd.n());
            let (attn, probs) = attention_forward(&full, &pd, mask);
            (gather_rows(&attn, d.q_cols(), src), probs, x, None)
        }
        Attend::Packed { spans, last: false } => {
            (attention_packed(qkv, d, spans, false), Vec::new(), x, None)
        }
        Attend::Packed { spans, last: true } => {
            let rows: Vec<usize> = spans.iter().map(|&(o, c)| o + c - 1).collect();
            let attn = attention_packed(qkv, d, spans, true);
            let x = gather_rows(&x, d.h, &rows);
            (attn, Vec::new(), x, Some(rows))
        }
    }
}

/// The output projection with its adapter and the residual:
/// `h1 = x + attn·Wo (+ adapter)`.
fn output_forward<T: Real>(
    wo: &Tensor,
    d: &Dims,
    x: &[T],
    attn: &[T],
    (ad, adapters): Adapted<T>,
    p: Proj<T>,
) -> Result<Vec<T>> {
    let mut h1 = x.to_vec();
    let o_parts = [(0, Target::O)];
    let w = (&mut h1[..], d.h);
    project(wo, (attn, d.q_cols()), w, true, &o_parts, ad, adapters, p)?;
    Ok(h1)
}

/// The MLP block: `out = h1 + (silu(g)·u)·Wd` with `g, u = RMSNorm(h1)·Wgu`
/// and the adapters of gate, up and down. Returns the norm's `1/rms`, the
/// `[N, 2I]` gate/up buffer and the output.
fn mlp_forward<T: Real>(
    lw: &LayerWeights,
    d: &Dims,
    h1: &[T],
    (ad, adapters): Adapted<T>,
    p: Proj<T>,
) -> Result<(Vec<T>, Vec<T>, Vec<T>)> {
    let (w2, e2) = lw.norm2;
    let g2 = w2.storage_and_layout();
    let mut hn = vec![T::zero(); h1.len()];
    let inv2 = rms_forward(h1, vector::<T, _>(&g2)?, e2, &mut hn);
    let i2 = 2 * d.inter;
    let mut gu = vec![T::zero(); p.n * i2];
    let gu_parts = [(0, Target::Gate), (d.inter, Target::Up)];
    let w = (&mut gu[..], i2);
    project(lw.gate_up, (&hn, d.h), w, false, &gu_parts, ad, adapters, p)?;
    drop(hn);
    let act = swiglu_forward(&gu, d.inter);
    let mut out = h1.to_vec();
    let down_parts = [(0, Target::Down)];
    let w = (&mut out[..], d.h);
    project(
        lw.down,
        (&act, d.inter),
        w,
        true,
        &down_parts,
        ad,
        adapters,
        p,
    )?;
    Ok((inv2, gu, out))
}

/// What the backward of every layer shares: shapes, RoPE tables, the
/// additive mask, the adapter settings and gate columns, the dropout.
pub(crate) struct BackCtx<'a, T> {
    pub(super) d: Dims,
    pub(super) cos: &'a [T],
    pub(super) sin: &'a [T],
    pub(super) mask: Option<&'a [T]>,
    pub(super) r: usize,
    pub(super) e: usize,
    pub(super) scale: T,
    pub(super) gc: Option<&'a [T]>,
    pub(super) drop: Option<Dropout>,
    /// Packed rows' flat rows in the padded layout (see [`Proj::src`]).
    pub(super) src: Option<&'a [usize]>,
}

/// Backward of [`layer_forward`] from `dout`, the gradient of the layer's
/// output: the MLP block, then the attention block. Adapter and gate
/// gradients accumulate into `grads`, `dgate`; returns the gradient of the
/// layer input.
pub(crate) fn layer_backward<T: Real>(
    layer: &DecoderLayer,
    ad: &[Option<LoraWeights<T>>; 7],
    grads: &mut [Option<LoraWeights<T>>; 7],
    s: LayerSaved<T>,
    dout: Vec<T>,
    (c, li): (&BackCtx<T>, usize),
    mut dgate: Option<&mut [T]>,
) -> Result<Vec<T>> {
    let d = &c.d;
    let lw = layer_weights(layer)?;
    let p = Proj {
        n: d.n(),
        t: d.t,
        r: c.r,
        e: c.e,
        scale: c.scale,
        gc: c.gc,
        drop: c.drop.map(|dr| (dr.p, mix(dr.seed, li))),
        src: c.src,
    };
    let mut ad_grads = (ad, &s.adapters, grads);
    let dh1 = mlp_backward(&lw, d, &s, dout, &mut ad_grads, dgate.as_deref_mut(), p)?;
    attention_block_backward(layer, lw.norm1.0, c, &s, dh1, &mut ad_grads, dgate, p)
}

/// A layer's adapters, their saved forward activations and their gradients.
type AdGrads<'s, T> = (
    &'s [Option<LoraWeights<T>>; 7],
    &'s [Option<AdapterSaved<T>>; 7],
    &'s mut [Option<LoraWeights<T>>; 7],
);

/// Backward of the MLP block (`out = h1 + act·Wd (+ adapter)`,
/// `act = swiglu(RMSNorm(h1)·Wgu (+ adapters))`): from `dout` to `d h1`.
fn mlp_backward<T: Real>(
    lw: &LayerWeights,
    d: &Dims,
    s: &LayerSaved<T>,
    dout: Vec<T>,
    (ad, saved, grads): &mut AdGrads<T>,
    mut dgate: Option<&mut [T]>,
    p: Proj<T>,
) -> Result<Vec<T>> {
    let i2 = 2 * d.inter;
    let down_parts = [(0, Target::Down)];
    let act = adapted(ad, &down_parts).then(|| swiglu_forward(&s.gu, d.inter));
    let dact = project_backward(
        lw.down,
        (&dout, d.h),
        (act.as_deref(), d.inter),
        &down_parts,
        ad,
        saved,
        grads,
        dgate.as_deref_mut(),
        p,
    )?;
    drop(act);
    let dgu = swiglu_backward(&s.gu, &dact, d.inter);
    drop(dact);
    let g2 = lw.norm2.0.storage_and_layout();
    let w2v = vector::<T, _>(&g2)?;
    let gu_parts = [(0, Target::Gate), (d.inter, Target::Up)];
    let hn = adapted(ad, &gu_parts).then(|| rms_apply(&s.h1, w2v, &s.inv2));
    let dhn = project_backward(
        lw.gate_up,
        (&dgu, i2),
        (hn.as_deref(), d.h),
        &gu_parts,
        ad,
        saved,
        grads,
        dgate,
        p,
    )?;
    drop((dgu, hn));
    let mut dh1 = dout;
    rms_backward(&s.h1, w2v, &s.inv2, &dhn, &mut dh1);
    Ok(dh1)
}

/// Backward of the attention block (`h1 = x + attn·Wo (+ adapter)`, the
/// attention of the rotated q/k/v of `RMSNorm(x)`): from `d h1` to `d x`.
#[allow(clippy::too_many_arguments)]
fn attention_block_backward<T: Real>(
    layer: &DecoderLayer,
    w1: &Tensor,
    c: &BackCtx<T>,
    s: &LayerSaved<T>,
    dh1: Vec<T>,
    (ad, saved, grads): &mut AdGrads<T>,
    mut dgate: Option<&mut [T]>,
    p: Proj<T>,
) -> Result<Vec<T>> {
    let d = &c.d;
    let (qc, kvc) = (d.q_cols(), d.kv_cols());
    let o_parts = [(0, Target::O)];
    let dattn = project_backward(
        &layer.attn.o_proj.weight_t,
        (&dh1, d.h),
        (Some(&s.attn), qc),
        &o_parts,
        ad,
        saved,
        grads,
        dgate.as_deref_mut(),
        p,
    )?;
    let w3 = d.w3();
    let mut dqkv = match c.src {
        None => attention_backward(&s.qkv, &s.probs, &dattn, d, c.mask),
        Some(src) => {
            // packed rows: the attention's backward runs on the padded layout
            let pd = d.padded();
            let qkv = scatter_rows(&s.qkv, w3, src, pd.n());
            let dout = scatter_rows(&dattn, qc, src, pd.n());
            let dfull = attention_backward(&qkv, &s.probs, &dout, &pd, c.mask);
            gather_rows(&dfull, w3, src)
        }
    };
    drop(dattn);
    rope_inplace(&mut dqkv, w3, (0, d.nh, d.hd), c.cos, c.sin, true);
    rope_inplace(&mut dqkv, w3, (qc, d.nkv, d.hd), c.cos, c.sin, true);
    let g1 = w1.storage_and_layout();
    let w1v = vector::<T, _>(&g1)?;
    let qkv_parts = [(0, Target::Q), (qc, Target::K), (qc + kvc, Target::V)];
    let xn = adapted(ad, &qkv_parts).then(|| rms_apply(&s.x, w1v, &s.inv1));
    let dxn = project_backward(
        &layer.attn.qkv.weight_t,
        (&dqkv, w3),
        (xn.as_deref(), d.h),
        &qkv_parts,
        ad,
        saved,
        grads,
        dgate,
        p,
    )?;
    drop((dqkv, xn));
    let mut dx = dh1;
    rms_backward(&s.x, w1v, &s.inv1, &dxn, &mut dx);
    Ok(dx)
}
