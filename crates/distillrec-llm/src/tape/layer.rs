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
use super::kernels::{mm, real, vector, weight_view, Mat, MatMut, Real};
use super::lora::{adapter_backward, adapter_forward, dropped_input, AdapterSaved};
use super::{gather_rows, Dims};
use crate::adapters::{target_index, Dropout, LoraWeights};
use crate::dropmask::{drop_threshold, kept, mix};
use crate::error::{Error, Result};
use crate::model::{Mlp, Norm, Target};

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
            let dropped = p.drop.map(|(pr, seed)| dropped_input(x, pr, mix(seed, ti)));
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
                    p.gc,
                    gr,
                    dgate.as_deref_mut(),
                    Some(MatMut::rows(&mut dx, in_dim)),
                ),
                Some((pr, seed)) => {
                    // the adapter saw x ⊙ mask / (1 − p): recompute it, and
                    // send its input gradient back through the same mask
                    let seed = mix(seed, ti);
                    let xd = dropped_input(x, pr, seed);
                    let mut dxa = vec![T::zero(); p.n * in_dim];
                    adapter_backward(
                        w,
                        sv,
                        Mat::rows(&xd, in_dim),
                        dyb,
                        (p.n, p.t, p.r, p.e, p.scale),
                        p.gc,
                        gr,
                        dgate.as_deref_mut(),
                        Some(MatMut::rows(&mut dxa, in_dim)),
                    );
                    let keep: T = real(1.0 / (1.0 - pr));
                    let th = drop_threshold(pr);
                    dx.par_iter_mut()
                        .zip(&dxa)
                        .enumerate()
                        .for_each(|(i, (o, g))| {
                            if kept(seed, i, th) {
                                *o += *g * keep;
                            }
                        });
                }
            }
        }
    }
    Ok(dx)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn layer_forward<T: Real>(
    layer: &crate::model::DecoderLayer,
    ad: &[Option<LoraWeights<T>>; 7],
    d: &Dims,
    x: Vec<T>,
    (cos, sin): (&[T], &[T]),
    attend: Attend<T>,
    p: Proj<T>,
) -> Result<(LayerSaved<T>, Vec<T>)> {
    let n = d.n();
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
    let mut adapters: [Option<AdapterSaved<T>>; 7] = Default::default();
    // attention norm and q/k/v
    let g1 = w1.storage_and_layout();
    let mut xn = vec![T::zero(); x.len()];
    let inv1 = rms_forward(&x, vector::<T, _>(&g1)?, *e1, &mut xn);
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
        &mut adapters,
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
    let gate_last: Option<Vec<T>>;
    let (attn, probs, x, p) = match attend {
        Attend::Padded(mask) => {
            let (attn, probs) = attention_forward(&qkv, d, mask);
            (attn, probs, x, p)
        }
        Attend::Packed { spans, last: false } => {
            (attention_packed(&qkv, d, spans, false), Vec::new(), x, p)
        }
        Attend::Packed { spans, last: true } => {
            // only each sequence's last row goes on through the layer
            let rows: Vec<usize> = spans.iter().map(|&(o, c)| o + c - 1).collect();
            gate_last = p.gc.map(|g| gather_rows(g, p.r, &rows));
            let p = Proj {
                n: rows.len(),
                gc: gate_last.as_deref(),
                ..p
            };
            let attn = attention_packed(&qkv, d, spans, true);
            (attn, Vec::new(), gather_rows(&x, d.h, &rows), p)
        }
    };
    // output projection and residual
    let mut h1 = x.clone();
    let o_parts = [(0, Target::O)];
    let w = (&mut h1[..], d.h);
    project(
        &layer.attn.o_proj.weight_t,
        (&attn, qc),
        w,
        true,
        &o_parts,
        ad,
        &mut adapters,
        p,
    )?;
    // MLP
    let g2 = w2.storage_and_layout();
    let mut hn = vec![T::zero(); h1.len()];
    let inv2 = rms_forward(&h1, vector::<T, _>(&g2)?, *e2, &mut hn);
    let i2 = 2 * d.inter;
    let mut gu = vec![T::zero(); p.n * i2];
    let gu_parts = [(0, Target::Gate), (d.inter, Target::Up)];
    let w = (&mut gu[..], i2);
    project(
        &gate_up.weight_t,
        (&hn, d.h),
        w,
        false,
        &gu_parts,
        ad,
        &mut adapters,
        p,
    )?;
    drop(hn);
    let act = swiglu_forward(&gu, d.inter);
    let mut out = h1.clone();
    let down_parts = [(0, Target::Down)];
    let w = (&mut out[..], d.h);
    project(
        &down.weight_t,
        (&act, d.inter),
        w,
        true,
        &down_parts,
        ad,
        &mut adapters,
        p,
    )?;
    Ok((
        LayerSaved {
            x,
            inv1,
            qkv,
            probs,
            attn,
            h1,
            inv2,
            gu,
            adapters,
        },
        out,
    ))
}

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
}

pub(crate) fn layer_backward<T: Real>(
    layer: &crate::model::DecoderLayer,
    ad: &[Option<LoraWeights<T>>; 7],
    grads: &mut [Option<LoraWeights<T>>; 7],
    s: LayerSaved<T>,
    dout: Vec<T>,
    (c, li): (&BackCtx<T>, usize),
    mut dgate: Option<&mut [T]>,
) -> Result<Vec<T>> {
    let d = &c.d;
    let n = d.n();
    let (Norm::Rms { weight: w1, .. }, Norm::Rms { weight: w2, .. }) =
        (&layer.attn_norm, &layer.mlp_norm)
    else {
        return Err(Error::Input(
            "the explicit path needs RMSNorm layers".into(),
        ));
    };
    let Mlp::Gated { gate_up, down, .. } = &layer.mlp else {
        return Err(Error::Input("the explicit path needs a SwiGLU MLP".into()));
    };
    let (qc, kvc, i2) = (d.q_cols(), d.kv_cols(), 2 * d.inter);
    let p = Proj {
        n,
        t: d.t,
        r: c.r,
        e: c.e,
        scale: c.scale,
        gc: c.gc,
        drop: c.drop.map(|dr| (dr.p, mix(dr.seed, li))),
    };
    // MLP: out = h1 + act·Wd (+ adapter)
    let down_parts = [(0, Target::Down)];
    let act = adapted(ad, &down_parts).then(|| swiglu_forward(&s.gu, d.inter));
    let dact = project_backward(
        &down.weight_t,
        (&dout, d.h),
        (act.as_deref(), d.inter),
        &down_parts,
        ad,
        &s.adapters,
        grads,
        dgate.as_deref_mut(),
        p,
    )?;
    drop(act);
    let dgu = swiglu_backward(&s.gu, &dact, d.inter);
    drop(dact);
    let g2 = w2.storage_and_layout();
    let w2v = vector::<T, _>(&g2)?;
    let gu_parts = [(0, Target::Gate), (d.inter, Target::Up)];
    let hn = adapted(ad, &gu_parts).then(|| rms_apply(&s.h1, w2v, &s.inv2));
    let dhn = project_backward(
        &gate_up.weight_t,
        (&dgu, i2),
        (hn.as_deref(), d.h),
        &gu_parts,
        ad,
        &s.adapters,
        grads,
        dgate.as_deref_mut(),
        p,
    )?;
    drop((dgu, hn));
    let mut dh1 = dout;
    rms_backward(&s.h1, w2v, &s.inv2, &dhn, &mut dh1);
    drop(dhn);
    // attention: h1 = x + attn·Wo (+ adapter)
    let o_parts = [(0, Target::O)];
    let dattn = project_backward(
        &layer.attn.o_proj.weight_t,
        (&dh1, d.h),
        (Some(&s.attn), qc),
        &o_parts,
        ad,
        &s.adapters,
        grads,
        dgate.as_deref_mut(),
        p,
    )?;
    let mut dqkv = attention_backward(&s.qkv, &s.probs, &dattn, d, c.mask);
    drop(dattn);
    let w3 = d.w3();
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
        &s.adapters,
        grads,
        dgate,
        p,
    )?;
    drop((dqkv, xn));
    let mut dx = dh1;
    rms_backward(&s.x, w1v, &s.inv1, &dxn, &mut dx);
    Ok(dx)
}
