//! One training pass through the frozen backbone with adapters, on either
//! implementation behind one interface: the explicit [`tape`] (CPU, Llama
//! and Qwen2 in f32, the fast path) or the model's composed candle graph
//! with autograd (any family the loader reads, e.g. OPT). A trainer written
//! against [`forward`] / [`backward`] runs wherever the backbone runs, and
//! the same run can be repeated on the composed path to check the explicit
//! one (the composed path is the "before" of the explicit path's speed-up).
//!
//! Both paths take and return host `f32` buffers: input embeddings
//! `[batch·seq, hidden]`, the per-sample gate `[batch, experts]` and the
//! gradient of the loss with respect to the last hidden states.

use candle_core::{DType, Tensor, Var};

use crate::adapters::{adapter_dtype, AdapterSet, Dropout};
use crate::error::{Error, Result};
use crate::lora::AdapterCtx;
use crate::model::Model;
use crate::tape::{self, Tape};

/// Gradients of one [`backward`]: adapters, gate, input embeddings.
pub use crate::tape::Grads;

/// Which implementation runs a pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// The explicit forward/backward of [`tape`].
    Explicit,
    /// The model's candle graph with autograd.
    Composed,
}

impl Path {
    /// The explicit path where it can run `model` (see [`tape::supports`]),
    /// else the composed one.
    pub fn auto(model: &Model) -> Path {
        if tape::supports::<f32>(model) {
            Path::Explicit
        } else {
            Path::Composed
        }
    }

    /// `self`, or an error naming why `model` cannot take it.
    pub fn check(self, model: &Model) -> Result<Path> {
        if self == Path::Explicit && !tape::supports::<f32>(model) {
            return Err(Error::Input(
                "the explicit path runs Llama-family and Qwen2 models in f32 on the CPU; use the composed path"
                    .into(),
            ));
        }
        Ok(self)
    }
}

/// How a training pass runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepOpts {
    /// LoRA dropout of the step.
    pub dropout: Dropout,
    /// Composed path: keep only each stage's input (see [`Model::stages`])
    /// during the forward and recompute one stage at a time in the
    /// backward. The explicit path ignores it.
    pub recompute: bool,
}

impl From<Dropout> for StepOpts {
    fn from(dropout: Dropout) -> StepOpts {
        StepOpts {
            dropout,
            recompute: false,
        }
    }
}

/// A forward pass waiting for its [`backward`].
pub struct Pass {
    inner: Inner,
}

enum Inner {
    Explicit(Box<Tape<f32>>),
    Composed {
        /// `A`, `B` per adapted projection, in [`AdapterSet::weights`] order.
        vars: Vec<Var>,
        embeds: Var,
        gate: Option<Var>,
        hidden: Tensor,
    },
    Recomputed(Box<Recomputed>),
}

/// A composed forward that kept only each stage's input.
struct Recomputed {
    /// The model with the step's adapters attached.
    model: Model,
    /// `A`, `B` per adapted projection, in [`AdapterSet::weights`] order.
    vars: Vec<Var>,
    gate: Option<Var>,
    mask: Vec<Vec<bool>>,
    /// The input of every stage (detached), the embeddings first.
    inputs: Vec<Tensor>,
    /// The last stage's output (detached).
    hidden: Tensor,
}

/// The composed path's inputs on the model's device, after the same checks
/// as the explicit path's.
struct Inputs {
    embeds: Tensor,
    gate: Option<Tensor>,
    mask: Tensor,
}

fn composed_inputs(
    model: &Model,
    adapters: &AdapterSet<f32>,
    embeds: &[f32],
    mask: &[Vec<bool>],
    gate: Option<&[f32]>,
) -> Result<Inputs> {
    let (b, t) = (mask.len(), mask.first().map_or(0, Vec::len));
    let h = model.config().hidden_size;
    if b == 0 || t == 0 || mask.iter().any(|m| m.len() != t) {
        return Err(Error::Input(
            "the batch needs rows of equal, positive length".into(),
        ));
    }
    if embeds.len() != b * t * h {
        return Err(Error::Input(format!(
            "embeddings hold {} values, expected {b}·{t}·{h}",
            embeds.len()
        )));
    }
    let e = adapters.experts;
    if gate.is_some_and(|g| g.len() != b * e) {
        return Err(Error::Input(format!(
            "gate holds the wrong size, expected {b}·{e}"
        )));
    }
    let (dev, dtype) = (model.device(), model.dtype());
    let flat: Vec<u32> = mask.iter().flatten().map(|&x| x as u32).collect();
    Ok(Inputs {
        embeds: Tensor::from_vec(embeds.to_vec(), (b, t, h), dev)?.to_dtype(dtype)?,
        // the gate feeds the adapters, which run in their own dtype
        gate: gate
            .map(|g| Tensor::from_vec(g.to_vec(), (b, e), dev)?.to_dtype(adapter_dtype(dtype)))
            .transpose()?,
        mask: Tensor::from_vec(flat, (b, t), dev)?,
    })
}

fn host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

/// The last hidden states `[batch·seq, hidden]` of a training step with
/// LoRA `dropout`, and the pass for [`backward`]. Pad positions hold no
/// meaningful value (zero on the explicit path, which never computes them)
/// and a loss must not read them.
pub fn forward(
    path: Path,
    model: &Model,
    adapters: &AdapterSet<f32>,
    embeds: &[f32],
    mask: &[Vec<bool>],
    gate: Option<&[f32]>,
    opts: StepOpts,
) -> Result<(Vec<f32>, Pass)> {
    let dropout = opts.dropout;
    match path.check(model)? {
        Path::Explicit => {
            let (hidden, tp) = tape::forward_dropout(model, adapters, embeds, mask, gate, dropout)?;
            Ok((
                hidden,
                Pass {
                    inner: Inner::Explicit(Box::new(tp)),
                },
            ))
        }
        Path::Composed => {
            if !(0.0..1.0).contains(&dropout.p) {
                return Err(Error::Input(format!(
                    "LoRA dropout {} must be in [0, 1)",
                    dropout.p
                )));
            }
            let inp = composed_inputs(model, adapters, embeds, mask, gate)?;
            let mut m = model.clone();
            let vars = adapters.to_candle_dropout(&mut m, Some(dropout))?;
            if opts.recompute {
                return forward_recomputed(m, vars, inp, mask);
            }
            let embeds = Var::from_tensor(&inp.embeds)?;
            let gate = inp.gate.map(|g| Var::from_tensor(&g)).transpose()?;
            let ctx = AdapterCtx {
                gate: gate.as_ref().map(Var::as_tensor),
                train: true,
            };
            let hidden = m.forward_hidden_with(embeds.as_tensor(), Some(&inp.mask), None, &ctx)?;
            Ok((
                host(&hidden)?,
                Pass {
                    inner: Inner::Composed {
                        vars,
                        embeds,
                        gate,
                        hidden,
                    },
                },
            ))
        }
    }
}

/// The composed forward of [`StepOpts::recompute`]: each stage runs on a
/// fresh variable (the same ops as the backward's rerun) and only its
/// detached input is kept, so one stage's graph lives at a time.
fn forward_recomputed(
    mut model: Model,
    vars: Vec<Var>,
    inp: Inputs,
    mask: &[Vec<bool>],
) -> Result<(Vec<f32>, Pass)> {
    // training never fuses (every input tracks); keep it so on the reruns
    model.set_allow_fused(false);
    let gate = inp.gate.map(|g| Var::from_tensor(&g)).transpose()?;
    let ctx = AdapterCtx {
        gate: gate.as_ref().map(Var::as_tensor),
        train: true,
    };
    let stages = model.stages(mask)?;
    let mut inputs = Vec::with_capacity(stages.len());
    let mut h = inp.embeds;
    for i in 0..stages.len() {
        let x = Var::from_tensor(&h)?;
        inputs.push(h);
        h = stages.run(i, x.as_tensor(), &ctx)?.detach();
    }
    drop(stages);
    Ok((
        host(&h)?,
        Pass {
            inner: Inner::Recomputed(Box::new(Recomputed {
                model,
                vars,
                gate,
                mask: mask.to_vec(),
                inputs,
                hidden: h,
            })),
        },
    ))
}

/// The backward of [`forward_recomputed`]: from the last stage down, rerun
/// the stage on its kept input as a variable, take the gradient of
/// `Σ out ⊙ d_out`, add the adapters' and the gate's, and pass the input's
/// gradient down.
fn backward_recomputed(
    adapters: &AdapterSet<f32>,
    r: Recomputed,
    d_hidden: Tensor,
) -> Result<Grads<f32>> {
    let ctx = AdapterCtx {
        gate: r.gate.as_ref().map(Var::as_tensor),
        train: true,
    };
    let stages = r.model.stages(&r.mask)?;
    let mut acc: Vec<Option<Tensor>> = vec![None; r.vars.len()];
    let mut d_gate: Option<Tensor> = None;
    let add = |slot: &mut Option<Tensor>, g: &Tensor| -> Result<()> {
        *slot = Some(match slot.take() {
            Some(a) => (a + g)?,
            None => g.clone(),
        });
        Ok(())
    };
    let mut g = d_hidden;
    for (i, input) in r.inputs.iter().enumerate().rev() {
        let x = Var::from_tensor(input)?;
        let out = stages.run(i, x.as_tensor(), &ctx)?;
        let store = (out * &g)?.sum_all()?.backward()?;
        for (slot, v) in acc.iter_mut().zip(&r.vars) {
            if let Some(dv) = store.get(v.as_tensor()) {
                add(slot, dv)?;
            }
        }
        if let Some(dg) = r.gate.as_ref().and_then(|v| store.get(v.as_tensor())) {
            add(&mut d_gate, dg)?;
        }
        g = match store.get(x.as_tensor()) {
            Some(dx) => dx.clone(),
            None => x.as_tensor().zeros_like()?,
        };
    }
    let grad_of = |t: &Option<Tensor>, n: usize| -> Result<Vec<f32>> {
        match t {
            Some(t) => host(t),
            None => Ok(vec![0.0; n]),
        }
    };
    let mut grads = adapters.zeros_like();
    for (w, (d, v)) in grads.weights_mut().zip(acc.chunks(2).zip(r.vars.chunks(2))) {
        w.a = grad_of(&d[0], v[0].elem_count())?;
        w.b = grad_of(&d[1], v[1].elem_count())?;
    }
    Ok(Grads {
        adapters: grads,
        gate: r
            .gate
            .as_ref()
            .map(|v| grad_of(&d_gate, v.elem_count()))
            .transpose()?,
        embeds: host(&g)?,
    })
}

/// `d_hidden` as a tensor shaped like the pass's output `hidden`.
fn d_hidden_like(hidden: &Tensor, d_hidden: &[f32]) -> Result<Tensor> {
    if d_hidden.len() != hidden.elem_count() {
        return Err(Error::Input(format!(
            "hidden-state gradient holds {} values, expected {}",
            d_hidden.len(),
            hidden.elem_count()
        )));
    }
    Ok(
        Tensor::from_vec(d_hidden.to_vec(), hidden.shape(), hidden.device())?
            .to_dtype(hidden.dtype())?,
    )
}

/// Gradients of the adapters, the gate and the input embeddings, given
/// `d_hidden` (the loss gradient with respect to [`forward`]'s output).
pub fn backward(
    model: &Model,
    adapters: &AdapterSet<f32>,
    pass: Pass,
    d_hidden: &[f32],
) -> Result<Grads<f32>> {
    match pass.inner {
        Inner::Explicit(tp) => tape::backward(model, adapters, *tp, d_hidden),
        Inner::Recomputed(r) => {
            let dh = d_hidden_like(&r.hidden, d_hidden)?;
            backward_recomputed(adapters, *r, dh)
        }
        Inner::Composed {
            vars,
            embeds,
            gate,
            hidden,
        } => {
            let dh = d_hidden_like(&hidden, d_hidden)?;
            let store = (hidden * dh)?.sum_all()?.backward()?;
            let grad_of = |v: &Var| -> Result<Vec<f32>> {
                match store.get(v.as_tensor()) {
                    Some(g) => host(g),
                    None => Ok(vec![0.0; v.elem_count()]),
                }
            };
            let mut grads = adapters.zeros_like();
            for (w, ab) in grads.weights_mut().zip(vars.chunks(2)) {
                w.a = grad_of(&ab[0])?;
                w.b = grad_of(&ab[1])?;
            }
            Ok(Grads {
                adapters: grads,
                gate: gate.as_ref().map(grad_of).transpose()?,
                embeds: grad_of(&embeds)?,
            })
        }
    }
}

/// The last hidden state of every sequence `[batch, hidden]` (at its last
/// real position), without dropout or a tape.
pub fn infer_last(
    path: Path,
    model: &Model,
    adapters: &AdapterSet<f32>,
    embeds: &[f32],
    mask: &[Vec<bool>],
    gate: Option<&[f32]>,
) -> Result<Vec<f32>> {
    match path.check(model)? {
        Path::Explicit => tape::infer_last(model, adapters, embeds, mask, gate),
        Path::Composed => {
            let inp = composed_inputs(model, adapters, embeds, mask, gate)?;
            let mut m = model.clone();
            adapters.to_candle_frozen(&mut m)?;
            let ctx = AdapterCtx {
                gate: inp.gate.as_ref(),
                train: false,
            };
            let last = tape::last_real_rows(mask)?;
            let hidden = host(&m.forward_hidden_with(&inp.embeds, Some(&inp.mask), None, &ctx)?)?;
            Ok(tape::gather_rows(
                &hidden,
                model.config().hidden_size,
                &last,
            ))
        }
    }
}
