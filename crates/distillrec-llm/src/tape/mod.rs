//! Explicit forward and backward of the decoder stack, for training adapters
//! on a frozen Llama-family model (Llama, Qwen2: pre-norm RMSNorm, RoPE,
//! grouped-query attention, SwiGLU).
//!
//! The composed candle graph of a layer is dozens of small nodes, each with
//! its own buffers, gradient accumulation and thread fork; on a 30-layer
//! model that bookkeeping, not the matmuls, decides the speed of a LoRA step.
//! Here each layer is one forward that saves only what its backward needs
//! and one backward written by hand (as hand-written trainers such as llm.c
//! do):
//!
//! ```text
//! forward, per layer (x = layer input, N = the batch's real rows: a
//! padded batch runs packed, its pad rows never computed):
//!   xn = RMSNorm(x)                      saves x, 1/rms
//!   qkv = xn·Wqkv (+ bias) + adapters    saves the adapters' rank-r activations
//!   q, k = RoPE(q), RoPE(k)              saves q, k (rotated), v
//!   P = softmax(q kᵀ/√d + mask); o = P v saves P
//!   h = x + o·Wo + adapter               saves o, h
//!   hn = RMSNorm(h)                      saves 1/rms
//!   g, u = hn·Wgu + adapters             saves g, u
//!   out = h + (silu(g)·u)·Wd + adapter
//! ```
//!
//! The backward computes, for every frozen weight, only the input gradient
//! (`dY·W`), plus the gradients of the adapters, of the per-sample gate and
//! of the input embeddings (the projector of iLoRA is trained through them).
//! Frozen weights are read in place from the model's tensors.
//!
//! Adapters are [`AdapterSet`]: a mixture-of-experts LoRA (iLoRA) on any of
//! the seven projections, `E` experts sharing total rank `r`, written as one
//! rank-`r` LoRA whose rank columns are scaled per sample by the gate of
//! their expert: `delta(x) = s · ((x Aᵀ) ⊙ gate_cols) Bᵀ`, `s = α / (r/E)`.
//! `E = 1` without a gate is plain LoRA (LLaRA). [`AdapterSet::to_candle`]
//! builds the same adapters for the composed path (other devices, tests).
//!
//! Everything is generic over [`Real`] (f32 for training, f64 for the
//! finite-difference checks) and runs on the CPU with the rayon pool.
//!
//! This module holds the stack (inputs, the pass over the layers, the final
//! norm, the packed last-row inference); its private submodules hold one
//! concept each, depending one way (`elementwise`, `lora` ← `attention` ←
//! `layer` ← this module), all on the crate's `kernels` (the [`Real`] float
//! trait, strided matrix views and the one matmul `mm`: gemm or the system
//! BLAS, column-blocked over threads):
//!
//! - `elementwise` — RMSNorm, SwiGLU and RoPE, forward and backward.
//! - `lora` — the adapters' forward and backward on one projection (gate
//!   columns, LoRA dropout recomputed from its seed).
//! - `attention` — causal grouped-query attention: padded forward (saves
//!   the softmax weights), packed forward (inference), backward.
//! - `layer` — one decoder layer's forward (named steps: attention block,
//!   MLP block) and its hand-written backward, over the fused projections.
//!
//! The adapter types are [`crate::adapters`]; the LM-head loss is
//! `crate::loss`. Both build on `kernels`, not on this module, so modules
//! import one way: `kernels` ← `adapters` ← `tape` ← `pass`, and `kernels`
//! ← `loss`.

mod attention;
mod elementwise;
mod layer;
pub(crate) mod lora;

use candle_core::Tensor;

use self::attention::Attend;
use self::elementwise::{rms_backward, rms_forward};
use self::layer::{layer_backward, layer_forward, BackCtx, LayerSaved, Proj};
use self::lora::gate_cols;
use crate::adapters::{AdapterSet, Dropout};
use crate::config::Family;
use crate::dropmask::mix;
use crate::error::{Error, Result};
pub use crate::kernels::Real;
use crate::kernels::{real, vector};
use crate::model::{Mlp, Model, Norm, Target};

// ---------------------------------------------------------------------------
// The stack
// ---------------------------------------------------------------------------

/// Shapes of one pass.
#[derive(Clone, Copy, Debug)]
struct Dims {
    b: usize,
    t: usize,
    /// Rows the row-wise work runs on: `b·t` padded, fewer when packed.
    rows: usize,
    h: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
    inter: usize,
}

impl Dims {
    fn n(&self) -> usize {
        self.rows
    }
    /// The same pass over the whole padded layout (`rows = b·t`).
    fn padded(&self) -> Dims {
        Dims {
            rows: self.b * self.t,
            ..*self
        }
    }
    fn w3(&self) -> usize {
        (self.nh + 2 * self.nkv) * self.hd
    }
    fn q_cols(&self) -> usize {
        self.nh * self.hd
    }
    fn kv_cols(&self) -> usize {
        self.nkv * self.hd
    }
}

/// The saved state of [`forward`], consumed by [`backward`].
pub struct Tape<T> {
    dims: Dims,
    gate: Option<Vec<T>>,
    drop: Option<Dropout>,
    cos: Vec<T>,
    sin: Vec<T>,
    mask: Option<Vec<T>>,
    /// The packed rows' flat rows in the padded layout (`None`: unpacked).
    src: Option<Vec<usize>>,
    layers: Vec<LayerSaved<T>>,
    last: Vec<T>,
    inv_final: Vec<T>,
}

impl<T> Tape<T> {
    /// Bytes of activations this tape holds (the step's activation memory).
    pub fn bytes(&self) -> usize {
        let per: usize = self
            .layers
            .iter()
            .map(|l| {
                l.x.len()
                    + l.inv1.len()
                    + l.qkv.len()
                    + l.probs.iter().map(Vec::len).sum::<usize>()
                    + l.attn.len()
                    + l.h1.len()
                    + l.inv2.len()
                    + l.gu.len()
                    + l.adapters
                        .iter()
                        .flatten()
                        .map(|a| a.u.len())
                        .sum::<usize>()
            })
            .sum();
        (per + self.last.len() + self.cos.len() * 2) * std::mem::size_of::<T>()
    }
}

/// Gradients of one backward.
pub struct Grads<T> {
    /// Adapter gradients, same shapes as the [`AdapterSet`].
    pub adapters: AdapterSet<T>,
    /// `d loss / d gate`, `[batch, experts]` (when a gate was given).
    pub gate: Option<Vec<T>>,
    /// `d loss / d input embeddings`, `[batch·seq, hidden]`.
    pub embeds: Vec<T>,
}

/// Whether the explicit path can run `model` in dtype `T`: a pre-norm
/// RMSNorm/RoPE/SwiGLU family on the CPU in that dtype, with biases on
/// q/k/v at most (Qwen2); the rest (OPT, `attention_bias`/`mlp_bias`
/// Llamas) trains on the composed path.
pub fn supports<T: Real>(model: &Model) -> bool {
    let c = model.config();
    matches!(c.family, Family::Llama | Family::Qwen2)
        && model.device().is_cpu()
        && model.dtype() == T::DTYPE
        && c.word_embed_proj_dim == c.hidden_size
        && model.layers.iter().all(|l| {
            let plain = |t: Target| l.linear(t).is_some_and(|x| x.bias().is_none());
            matches!(l.attn_norm, Norm::Rms { .. })
                && matches!(l.mlp_norm, Norm::Rms { .. })
                && matches!(l.mlp, Mlp::Gated { .. })
                && [Target::O, Target::Gate, Target::Up, Target::Down]
                    .into_iter()
                    .all(plain)
        })
}

fn tensor_vec<T: Real>(t: &Tensor) -> Result<Vec<T>> {
    Ok(t.to_dtype(T::DTYPE)?.flatten_all()?.to_vec1::<T>()?)
}

/// Forward through every decoder layer and the final norm for input
/// embeddings `embeds [batch·seq, hidden]` (row-major), attention `mask`
/// (`true` = real token, any padding side) and an optional per-sample
/// `gate [batch, experts]`. Returns the last hidden states `[batch·seq,
/// hidden]` (zero at pad positions, which are never computed: a loss reads
/// real rows only) and the tape for [`backward`].
pub fn forward<T: Real>(
    model: &Model,
    adapters: &AdapterSet<T>,
    embeds: &[T],
    mask: &[Vec<bool>],
    gate: Option<&[T]>,
) -> Result<(Vec<T>, Tape<T>)> {
    run(model, adapters, embeds, mask, gate, None, true)
}

/// [`forward`] of a training step with LoRA dropout on every adapter's
/// input (the [`backward`] of its tape applies the same masks).
pub fn forward_dropout<T: Real>(
    model: &Model,
    adapters: &AdapterSet<T>,
    embeds: &[T],
    mask: &[Vec<bool>],
    gate: Option<&[T]>,
    dropout: Dropout,
) -> Result<(Vec<T>, Tape<T>)> {
    if !(0.0..1.0).contains(&dropout.p) {
        return Err(Error::Input(format!(
            "LoRA dropout {} must be in [0, 1)",
            dropout.p
        )));
    }
    let drop = (dropout.p > 0.0).then_some(dropout);
    run(model, adapters, embeds, mask, gate, drop, true)
}

/// [`forward`] without a tape: each layer's saved state is dropped as soon
/// as the next layer has its input (inference with unmerged, per-sample
/// adapters).
pub fn infer<T: Real>(
    model: &Model,
    adapters: &AdapterSet<T>,
    embeds: &[T],
    mask: &[Vec<bool>],
    gate: Option<&[T]>,
) -> Result<Vec<T>> {
    Ok(run(model, adapters, embeds, mask, gate, None, false)?.0)
}

/// Checks the inputs of a pass and returns its shapes (`rows = b·t`).
fn check_inputs<T: Real>(
    model: &Model,
    adapters: &AdapterSet<T>,
    embeds: &[T],
    mask: &[Vec<bool>],
    gate: Option<&[T]>,
) -> Result<Dims> {
    if !supports::<T>(model) {
        return Err(Error::Input(
            "the explicit training path needs a Llama or Qwen2 model on the CPU in the tape's dtype"
                .into(),
        ));
    }
    let c = model.config();
    let b = mask.len();
    let t = mask.first().map_or(0, Vec::len);
    let d = Dims {
        b,
        t,
        rows: b * t,
        h: c.hidden_size,
        nh: c.num_attention_heads,
        nkv: c.num_key_value_heads,
        hd: c.head_dim,
        inter: c.intermediate_size,
    };
    if b == 0 || t == 0 || mask.iter().any(|m| m.len() != t) {
        return Err(Error::Input(
            "the batch needs rows of equal, positive length".into(),
        ));
    }
    if embeds.len() != d.n() * d.h {
        return Err(Error::Input(format!(
            "embeddings hold {} values, expected {}·{}·{}",
            embeds.len(),
            b,
            t,
            d.h
        )));
    }
    if let Some(g) = gate {
        if g.len() != b * adapters.experts {
            return Err(Error::Input(format!(
                "gate holds {} values, expected {b}·{}",
                g.len(),
                adapters.experts
            )));
        }
    }
    if adapters.layers.len() != model.layers.len() {
        return Err(Error::Input("adapters were made for another model".into()));
    }
    model.check_context(0, t)?;
    Ok(d)
}

/// The flat rows `b·t + j` of the real positions of `mask`, in order, when
/// some position is padding; `None` when every position is real.
fn real_rows(mask: &[Vec<bool>]) -> Option<Vec<usize>> {
    let t = mask.first().map_or(0, Vec::len);
    let rows: Vec<usize> = mask
        .iter()
        .enumerate()
        .flat_map(|(b, m)| (0..t).filter(|&j| m[j]).map(move |j| b * t + j))
        .collect();
    (rows.len() < mask.len() * t).then_some(rows)
}

/// The forward of [`forward`], [`forward_dropout`] and [`infer`]. A batch
/// with padding runs packed: the row-wise work (norms, products, adapters,
/// SwiGLU) only on the real rows, the attention on the padded layout they
/// are scattered into; the hidden states come back in the padded layout
/// with zeros at the pads (which no loss reads: real rows never see them).
fn run<T: Real>(
    model: &Model,
    adapters: &AdapterSet<T>,
    embeds: &[T],
    mask: &[Vec<bool>],
    gate: Option<&[T]>,
    drop: Option<Dropout>,
    keep: bool,
) -> Result<(Vec<T>, Tape<T>)> {
    let full = check_inputs(model, adapters, embeds, mask, gate)?;
    let t = full.t;
    let src = real_rows(mask);
    let pack = |v: Vec<T>, cols: usize| match &src {
        Some(rows) => gather_rows(&v, cols, rows),
        None => v,
    };
    let d = Dims {
        rows: src.as_ref().map_or(full.n(), Vec::len),
        ..full
    };
    let (cos, sin, mask_add) = model.rope_and_mask(mask)?;
    let half = d.hd / 2;
    let cos = pack(tensor_vec::<T>(&cos)?, half);
    let sin = pack(tensor_vec::<T>(&sin)?, half);
    let mask_add = mask_add.map(|m| tensor_vec::<T>(&m)).transpose()?;
    let r = adapters.rank;
    let scale: T = real(adapters.scale());
    let gc = gate_cols(gate, d.n(), (t, src.as_deref()), r, adapters.experts);
    let mut x = pack(embeds.to_vec(), d.h);
    let mut layers = Vec::with_capacity(model.layers.len());
    for (li, (layer, ad)) in model.layers.iter().zip(&adapters.layers).enumerate() {
        let saved = layer_forward(
            layer,
            ad,
            &d,
            x,
            (&cos, &sin),
            Attend::Padded {
                mask: mask_add.as_deref(),
                src: src.as_deref(),
            },
            Proj {
                n: d.n(),
                t,
                r,
                e: adapters.experts,
                scale,
                gc: gc.as_deref(),
                drop: drop.map(|dr| (dr.p, mix(dr.seed, li))),
                src: src.as_deref(),
            },
        )?;
        x = saved.1;
        if keep {
            layers.push(saved.0);
        }
    }
    let (out, inv_final) = final_norm(model, &x)?;
    let out = match &src {
        Some(rows) => scatter_rows(&out, d.h, rows, full.n()),
        None => out,
    };
    Ok((
        out,
        Tape {
            dims: d,
            gate: gate.map(<[T]>::to_vec),
            drop,
            cos,
            sin,
            mask: mask_add,
            src,
            layers,
            last: x,
            inv_final,
        },
    ))
}

/// The model's final RMSNorm of `x`: the normalised rows and their 1/rms.
fn final_norm<T: Real>(model: &Model, x: &[T]) -> Result<(Vec<T>, Vec<T>)> {
    let Some(Norm::Rms { weight, eps }) = model.final_norm() else {
        return Err(Error::Input(
            "the explicit path needs a final RMSNorm".into(),
        ));
    };
    let g = weight.storage_and_layout();
    let w = vector::<T, _>(&g)?;
    let mut out = vec![T::zero(); x.len()];
    let inv = rms_forward(x, w, *eps, &mut out);
    Ok((out, inv))
}

/// The flat row `b·t + j` of each sequence's last real position, or an
/// error naming a prompt without one.
pub(crate) fn last_real_rows(mask: &[Vec<bool>]) -> Result<Vec<usize>> {
    mask.iter()
        .enumerate()
        .map(|(b, m)| {
            m.iter()
                .rposition(|&x| x)
                .map(|j| b * m.len() + j)
                .ok_or_else(|| Error::Input(format!("prompt {b} has no real token")))
        })
        .collect()
}

/// Rows `rows` of the row-major `x [_, cols]`, in that order.
pub(crate) fn gather_rows<T: Copy>(x: &[T], cols: usize, rows: &[usize]) -> Vec<T> {
    rows.iter()
        .flat_map(|&r| x[r * cols..(r + 1) * cols].iter().copied())
        .collect()
}

/// The inverse of [`gather_rows`]: `[total, cols]` holding row `i` of
/// `x` at row `rows[i]`, zeros elsewhere.
pub(crate) fn scatter_rows<T: Real>(x: &[T], cols: usize, rows: &[usize], total: usize) -> Vec<T> {
    let mut out = vec![T::zero(); total * cols];
    for (src, &r) in x.chunks_exact(cols).zip(rows) {
        out[r * cols..(r + 1) * cols].copy_from_slice(src);
    }
    out
}

/// Each mask row's real tokens as `(first, count)` when they form one
/// non-empty run (left or right padding); `None` otherwise.
fn real_runs(mask: &[Vec<bool>]) -> Option<Vec<(usize, usize)>> {
    mask.iter()
        .map(|m| {
            let first = m.iter().position(|&x| x)?;
            let count = m[first..].iter().take_while(|&&x| x).count();
            m[first + count..]
                .iter()
                .all(|&x| !x)
                .then_some((first, count))
        })
        .collect()
}

/// The last hidden state of every sequence, `[batch, hidden]` (at its last
/// real position), as [`infer`] computes it. When each row's real tokens
/// form one run (left or right padding), the pass is packed: pad positions
/// are never computed, and the last layer runs its queries, output
/// projection and MLP on the last positions only. Other masks take the
/// padded pass.
pub fn infer_last<T: Real>(
    model: &Model,
    adapters: &AdapterSet<T>,
    embeds: &[T],
    mask: &[Vec<bool>],
    gate: Option<&[T]>,
) -> Result<Vec<T>> {
    let d = check_inputs(model, adapters, embeds, mask, gate)?;
    let Some(runs) = real_runs(mask) else {
        let last = last_real_rows(mask)?;
        let hidden = infer(model, adapters, embeds, mask, gate)?;
        return Ok(gather_rows(&hidden, d.h, &last));
    };
    // packed rows: sequence b's real positions, one sequence after another
    let src: Vec<usize> = runs
        .iter()
        .enumerate()
        .flat_map(|(b, &(first, count))| b * d.t + first..b * d.t + first + count)
        .collect();
    let spans: Vec<(usize, usize)> = runs
        .iter()
        .scan(0, |off, &(_, count)| {
            let span = (*off, count);
            *off += count;
            Some(span)
        })
        .collect();
    let pd = Dims {
        rows: src.len(),
        ..d
    };
    let (cos, sin, _) = model.rope_and_mask(mask)?;
    let half = d.hd / 2;
    let cos = gather_rows(&tensor_vec::<T>(&cos)?, half, &src);
    let sin = gather_rows(&tensor_vec::<T>(&sin)?, half, &src);
    let (r, e) = (adapters.rank, adapters.experts);
    let scale: T = real(adapters.scale());
    let gc = gate_cols(gate, pd.n(), (d.t, Some(&src)), r, e);
    let mut x = gather_rows(embeds, d.h, &src);
    let layers = model.layers.len();
    for (li, (layer, ad)) in model.layers.iter().zip(&adapters.layers).enumerate() {
        let attend = Attend::Packed {
            spans: &spans,
            last: li + 1 == layers,
        };
        let p = Proj {
            n: pd.n(),
            t: d.t,
            r,
            e,
            scale,
            gc: gc.as_deref(),
            drop: None,
            src: None,
        };
        x = layer_forward(layer, ad, &pd, x, (&cos, &sin), attend, p)?.1;
    }
    if layers == 0 {
        let last: Vec<usize> = spans.iter().map(|&(o, c)| o + c - 1).collect();
        x = gather_rows(&x, d.h, &last);
    }
    Ok(final_norm(model, &x)?.0)
}

/// Backward of [`forward`] from `d_hidden`, the gradient of the last
/// hidden states `[batch·seq, hidden]`.
pub fn backward<T: Real>(
    model: &Model,
    adapters: &AdapterSet<T>,
    tape: Tape<T>,
    d_hidden: &[T],
) -> Result<Grads<T>> {
    let d = tape.dims;
    let full = d.padded();
    if d_hidden.len() != full.n() * d.h {
        return Err(Error::Input(
            "hidden-state gradient of the wrong size".into(),
        ));
    }
    let src = tape.src.as_deref();
    let packed_dh;
    let d_hidden = match src {
        Some(rows) => {
            packed_dh = gather_rows(d_hidden, d.h, rows);
            &packed_dh[..]
        }
        None => d_hidden,
    };
    let Some(Norm::Rms { weight, .. }) = model.final_norm() else {
        return Err(Error::Input(
            "the explicit path needs a final RMSNorm".into(),
        ));
    };
    let mut grads = adapters.zeros_like();
    let mut dgate = tape.gate.as_ref().map(|g| vec![T::zero(); g.len()]);
    let gc = gate_cols(
        tape.gate.as_deref(),
        d.n(),
        (d.t, src),
        adapters.rank,
        adapters.experts,
    );
    let mut dx = vec![T::zero(); d_hidden.len()];
    {
        let g = weight.storage_and_layout();
        rms_backward(
            &tape.last,
            vector::<T, _>(&g)?,
            &tape.inv_final,
            d_hidden,
            &mut dx,
        );
    }
    let ctx = BackCtx {
        d,
        cos: &tape.cos,
        sin: &tape.sin,
        mask: tape.mask.as_deref(),
        r: adapters.rank,
        e: adapters.experts,
        scale: real(adapters.scale()),
        gc: gc.as_deref(),
        drop: tape.drop,
        src,
    };
    let mut saved = tape.layers;
    for li in (0..model.layers.len()).rev() {
        let s = saved.pop().expect("one saved state per layer");
        dx = layer_backward(
            &model.layers[li],
            &adapters.layers[li],
            &mut grads.layers[li],
            s,
            dx,
            (&ctx, li),
            dgate.as_deref_mut(),
        )?;
    }
    let embeds = match src {
        Some(rows) => scatter_rows(&dx, d.h, rows, full.n()),
        None => dx,
    };
    Ok(Grads {
        adapters: grads,
        gate: dgate,
        embeds,
    })
}
