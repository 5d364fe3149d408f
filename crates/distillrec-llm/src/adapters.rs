//! The trainable adapters of the teacher: [`AdapterSet`], a mixture-of-
//! experts LoRA (iLoRA) on any of the seven projections of every layer, `E`
//! experts sharing total rank `r`, written as one rank-`r` LoRA whose rank
//! columns are scaled per sample by the gate of their expert:
//! `delta(x) = s · ((x Aᵀ) ⊙ gate_cols) Bᵀ`, `s = α / (r/E)` (`E = 1`
//! without a gate is plain LoRA, LLaRA); and [`Dropout`], the LoRA dropout
//! of one training step.
//!
//! The explicit path (`pass`) trains these buffers directly;
//! [`AdapterSet::to_candle`] attaches the same adapters to the model's
//! linears for the composed path. Fresh adapters change nothing (`B = 0`).

use candle_core::{DType, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::dropmask::mix;
use crate::error::{Error, Result};
use crate::kernels::{real, Real};
use crate::model::{Model, Target};

/// The projections in slot order (a layer's adapters are `[_; 7]`).
pub(crate) const TARGETS: [Target; 7] = Target::ALL;

/// The slot of projection `t` in a layer's `[_; 7]` adapters.
pub(crate) fn target_index(t: Target) -> usize {
    TARGETS
        .iter()
        .position(|&x| x == t)
        .expect("every target listed")
}

/// One adapted projection: `A [r, in]`, `B [out, r]` (row-major).
#[derive(Clone, Debug, PartialEq)]
pub struct LoraWeights<T> {
    /// Down-projection `A`, `r × in`.
    pub a: Vec<T>,
    /// Up-projection `B`, `out × r`.
    pub b: Vec<T>,
    /// Input width.
    pub in_dim: usize,
    /// Output width.
    pub out_dim: usize,
}

/// Mixture-of-experts LoRA on chosen projections of every layer.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterSet<T> {
    /// Experts `E` (1: plain LoRA).
    pub experts: usize,
    /// Total rank `r` (each expert has `r / E`).
    pub rank: usize,
    /// `α`; the scale is `α / (r / E)`.
    pub alpha: f64,
    /// Adapted projections.
    pub targets: Vec<Target>,
    /// `[layer][target index]`: the weights of each adapted projection.
    pub layers: Vec<[Option<LoraWeights<T>>; 7]>,
}

impl<T: Real> AdapterSet<T> {
    /// Fresh adapters for `model`: Kaiming-uniform `A` (bound `1/√in`, as
    /// PEFT) and zero `B`, so a fresh set changes nothing. Seeded per
    /// layer and target from `seed`.
    pub fn new(
        model: &Model,
        targets: &[Target],
        experts: usize,
        rank: usize,
        alpha: f64,
        seed: u64,
    ) -> Result<Self> {
        if experts == 0 || rank == 0 || !rank.is_multiple_of(experts) {
            return Err(Error::Input(format!(
                "adapter rank {rank} must be a positive multiple of the {experts} experts"
            )));
        }
        let mut layers = Vec::with_capacity(model.layers.len());
        for (li, layer) in model.layers.iter().enumerate() {
            let mut slots: [Option<LoraWeights<T>>; 7] = Default::default();
            for &t in targets {
                let lin = layer.linear(t).ok_or_else(|| {
                    Error::Input(format!("{t:?} does not exist in this architecture"))
                })?;
                let (i, o) = (lin.in_dim(), lin.out_dim());
                let ti = target_index(t);
                let s = seed
                    ^ ((li as u64) << 32)
                    ^ (ti as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let mut rng = ChaCha8Rng::seed_from_u64(s);
                let bound = 1.0 / (i as f64).sqrt();
                let a = (0..rank * i)
                    .map(|_| real(rng.gen_range(-bound..bound)))
                    .collect();
                slots[ti] = Some(LoraWeights {
                    a,
                    b: vec![T::zero(); o * rank],
                    in_dim: i,
                    out_dim: o,
                });
            }
            layers.push(slots);
        }
        Ok(AdapterSet {
            experts,
            rank,
            alpha,
            targets: targets.to_vec(),
            layers,
        })
    }

    /// Weights the adapters on `targets` at total rank `rank` would hold on
    /// `model` (`A` and `B` of every adapted projection), so the size can
    /// be checked before [`AdapterSet::new`] allocates them.
    pub fn weight_count(model: &Model, targets: &[Target], rank: usize) -> u64 {
        let per_rank: u64 = model
            .layers
            .iter()
            .flat_map(|layer| targets.iter().filter_map(|&t| layer.linear(t)))
            .map(|lin| (lin.in_dim() as u64).saturating_add(lin.out_dim() as u64))
            .fold(0u64, u64::saturating_add);
        per_rank.saturating_mul(rank as u64)
    }

    /// `α / (r / E)`.
    pub fn scale(&self) -> f64 {
        self.alpha / (self.rank / self.experts) as f64
    }

    /// A zeroed set of the same shapes (gradient buffers).
    pub fn zeros_like(&self) -> Self {
        let mut z = self.clone();
        for w in z.weights_mut() {
            w.a.fill(T::zero());
            w.b.fill(T::zero());
        }
        z
    }

    /// Every adapted projection, layer by layer.
    pub fn weights(&self) -> impl Iterator<Item = &LoraWeights<T>> {
        self.layers.iter().flat_map(|l| l.iter().flatten())
    }

    /// Every adapted projection, mutable.
    pub fn weights_mut(&mut self) -> impl Iterator<Item = &mut LoraWeights<T>> {
        self.layers.iter_mut().flat_map(|l| l.iter_mut().flatten())
    }

    /// Trainable values in total.
    pub fn num_params(&self) -> usize {
        self.weights().map(|w| w.a.len() + w.b.len()).sum()
    }

    /// Attaches the same adapters to `model`'s linears for the composed
    /// candle path (any device); returns the candle variables, `A` then `B`
    /// per projection in [`AdapterSet::weights`] order.
    pub fn to_candle(&self, model: &mut Model) -> Result<Vec<candle_core::Var>> {
        self.to_candle_dropout(model, None)
    }

    /// Attaches the same adapters to `model`'s linears for inference on the
    /// composed path: their weights are constants, so a forward builds no
    /// autograd graph and frees each layer's intermediates as it goes
    /// (generation, `pass::infer_last`).
    pub fn to_candle_frozen(&self, model: &mut Model) -> Result<()> {
        self.attach(model, None, true).map(drop)
    }

    /// [`AdapterSet::to_candle`] for a training step with LoRA dropout:
    /// each attached adapter applies, in training mode, the same masks the
    /// explicit path's `pass::forward` draws for `dropout`.
    pub fn to_candle_dropout(
        &self,
        model: &mut Model,
        dropout: Option<Dropout>,
    ) -> Result<Vec<candle_core::Var>> {
        self.attach(model, dropout, false)
    }

    /// Attaches one `MoeLora` per adapted projection (frozen for
    /// inference) and returns their variables.
    fn attach(
        &self,
        model: &mut Model,
        dropout: Option<Dropout>,
        frozen: bool,
    ) -> Result<Vec<candle_core::Var>> {
        let (dtype, device) = (adapter_dtype(model.dtype()), model.device().clone());
        let mut vars = Vec::new();
        for (li, slots) in self.layers.iter().enumerate() {
            for (ti, w) in slots.iter().enumerate() {
                let Some(w) = w else { continue };
                let a = Tensor::from_vec(w.a.clone(), (self.rank, w.in_dim), &device)?
                    .to_dtype(dtype)?;
                let b = Tensor::from_vec(w.b.clone(), (w.out_dim, self.rank), &device)?
                    .to_dtype(dtype)?;
                let mut ad = crate::lora::MoeLora::from_tensors(&a, &b, self.experts, self.alpha)?;
                if let Some(dr) = dropout.filter(|dr| dr.p > 0.0) {
                    ad = ad.with_dropout(dr.p, mix(mix(dr.seed, li), ti));
                }
                if frozen {
                    ad = ad.frozen();
                }
                vars.extend(crate::lora::Adapter::vars(&ad));
                model
                    .linear_mut(li, TARGETS[ti])?
                    .set_adapter(Some(std::sync::Arc::new(ad)));
            }
        }
        Ok(vars)
    }
}

/// The dtype adapters attached to a backbone held in `backbone` run in:
/// f32 over half precision (f16, bf16: `MoeLora` casts its input and
/// output), else the backbone's own.
pub fn adapter_dtype(backbone: DType) -> DType {
    match backbone {
        DType::F16 | DType::BF16 => DType::F32,
        d => d,
    }
}

/// LoRA dropout of one training step: each adapter sees its input with
/// elements zeroed with probability `p` and the rest scaled by
/// `1/(1 − p)` (PEFT's `lora_dropout`). The mask is a hash of the seed,
/// the layer, the projection and the element, so the backward recomputes
/// it instead of storing it, and a step is reproducible from its seed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    /// Probability of zeroing an element, in `[0, 1)`.
    pub p: f64,
    /// Seed of the step's masks.
    pub seed: u64,
}
