//! Frozen linear layers with an optional trainable adapter.
//!
//! [`Linear`] holds a base weight that is a plain tensor (never a `Var`, so it
//! gets no gradient and no optimiser state) and may carry an [`Adapter`]:
//! `y = W x + b + delta(x)`. The adapter trait is the hook the iLoRA stage
//! plugs its mixture-of-experts LoRA into; [`Lora`] is the plain LoRA used by
//! the benchmark and the tests.

use std::sync::Arc;

use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, DType, Device, Layout, Result, Shape, Storage, Tensor, Var,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Per-forward information handed to every adapter.
#[derive(Clone, Copy, Debug, Default)]
pub struct AdapterCtx<'a> {
    /// Per-sample gate `(batch, experts)` for mixture-of-experts adapters
    /// (iLoRA); plain LoRA ignores it.
    pub gate: Option<&'a Tensor>,
    /// Training mode (adapters with dropout apply it only then).
    pub train: bool,
}

/// A trainable correction added to a frozen linear layer's output.
pub trait Adapter: Send + Sync + std::fmt::Debug {
    /// `delta(x)` for `x` of shape `(batch, seq, in)`, returning `(batch, seq, out)`.
    fn delta(&self, x: &Tensor, ctx: &AdapterCtx) -> Result<Tensor>;
    /// The adapter's trainable variables (handed to the optimiser).
    fn vars(&self) -> Vec<Var>;
}

/// A linear layer with frozen weights `(out, in)`, optional bias, and an
/// optional adapter.
#[derive(Clone, Debug)]
pub struct Linear {
    /// The weight stored transposed, `(in, out)` contiguous: the layout
    /// candle's CPU matmul is fastest with.
    pub(crate) weight_t: Tensor,
    bias: Option<Tensor>,
    adapter: Option<Arc<dyn Adapter>>,
}

impl Linear {
    /// A frozen layer from its weight `(out, in)` and bias `(out)`.
    /// Errors if `weight` is not 2-D.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Linear> {
        weight.dims2()?;
        Ok(Linear {
            weight_t: weight.t()?.contiguous()?,
            bias,
            adapter: None,
        })
    }

    /// The frozen weight `(out, in)` (a transposed view of the stored `(in, out)`).
    pub fn weight(&self) -> Tensor {
        self.weight_t.t().expect("2-D weight")
    }

    /// The frozen bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Input width.
    pub fn in_dim(&self) -> usize {
        self.weight_t.dims()[0]
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        self.weight_t.dims()[1]
    }

    /// Attaches (or with `None` removes) an adapter.
    pub fn set_adapter(&mut self, adapter: Option<Arc<dyn Adapter>>) {
        self.adapter = adapter;
    }

    /// The attached adapter, if any.
    pub fn adapter(&self) -> Option<&Arc<dyn Adapter>> {
        self.adapter.as_ref()
    }

    /// `x W^T + b + delta(x)` for `x` of shape `(batch, seq, in)`.
    pub fn forward(&self, x: &Tensor, ctx: &AdapterCtx) -> Result<Tensor> {
        self.finish(matmul_t(x, &self.weight_t)?, x, ctx)
    }

    /// Whether the layer is exactly `x W^T` (no bias, no adapter).
    pub fn is_plain(&self) -> bool {
        self.bias.is_none() && self.adapter.is_none()
    }

    /// Adds bias and adapter to `base = x W^T` computed elsewhere (by a
    /// [`Fused`] projection that shares `x` with sibling layers).
    pub fn finish(&self, base: Tensor, x: &Tensor, ctx: &AdapterCtx) -> Result<Tensor> {
        let y = match &self.bias {
            Some(b) => base.broadcast_add(b)?,
            None => base,
        };
        match &self.adapter {
            Some(a) => y + a.delta(x, ctx)?,
            None => Ok(y),
        }
    }
}

/// Several linear layers reading the same input (q/k/v, gate/up) computed
/// with one matmul over their concatenated weights: fewer, larger matmuls
/// pack the input once and run faster on CPU. Each part stays a [`Linear`]
/// (its weight a view of the shared buffer) so adapters attach per layer.
#[derive(Clone, Debug)]
pub struct Fused {
    pub(crate) weight_t: Tensor,
    widths: Vec<usize>,
}

impl Fused {
    /// Concatenates the weights of `parts` (same input width) and makes
    /// each part's weight a view of the shared buffer.
    pub fn new(parts: &mut [&mut Linear]) -> Result<Fused> {
        let ws: Vec<Tensor> = parts.iter().map(|l| l.weight_t.clone()).collect();
        let weight_t = Tensor::cat(&ws, 1)?;
        let mut widths = Vec::new();
        let mut off = 0;
        for l in parts.iter_mut() {
            let w = l.out_dim();
            l.weight_t = weight_t.narrow(1, off, w)?;
            widths.push(w);
            off += w;
        }
        Ok(Fused { weight_t, widths })
    }

    /// `x [W_1; W_2; ..]^T`: every part side by side in one `(batch, seq,
    /// Σ out_i)` tensor.
    pub fn forward_joined(&self, x: &Tensor) -> Result<Tensor> {
        matmul_t(x, &self.weight_t)
    }

    /// `x W_i^T` for every part, from one matmul; `(batch, seq, out_i)` views.
    pub fn forward_base(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let y = matmul_t(x, &self.weight_t)?;
        let mut off = 0;
        let mut out = Vec::with_capacity(self.widths.len());
        for &w in &self.widths {
            out.push(y.narrow(2, off, w)?);
            off += w;
        }
        Ok(out)
    }
}

/// `x W^T` for `x` `(batch, seq, in)` and `W` `(out, in)`, as one 2-D matmul
/// over all `batch * seq` rows.
pub fn matmul_wt(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    matmul_t(x, &w.t()?)
}

/// `x Wt` for `x` `(batch, seq, in)` and `Wt` `(in, out)`, as one 2-D matmul
/// over all `batch * seq` rows.
///
/// When `x` tracks gradients but `Wt` does not (a frozen weight on the
/// training path), the product goes through [`FrozenMatmul`] (CPU and CUDA),
/// whose backward computes only `dx`: candle's own matmul backward would also compute the
/// (discarded) weight gradient, a third of the step's work and a weight-sized
/// buffer per layer.
pub fn matmul_t(x: &Tensor, wt: &Tensor) -> Result<Tensor> {
    let (b, t, i) = x.dims3()?;
    let x2 = x.reshape((b * t, i))?;
    if let Some(y) = crate::parmatmul::par_matmul(&x2, wt)? {
        return y.reshape((b, t, wt.dim(1)?));
    }
    let y = if x2.track_op() && !wt.track_op() && !x2.device().is_metal() {
        x2.contiguous()?
            .apply_op1(FrozenMatmul { wt: wt.clone() })?
    } else {
        x2.matmul(wt)?
    };
    y.reshape((b, t, wt.dim(1)?))
}

/// `x Wt` with a constant `Wt`: the backward pass returns only `dx = dy Wtᵀ`.
#[derive(Debug, Clone)]
pub struct FrozenMatmul {
    wt: Tensor,
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (start, end) = layout.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("frozen-matmul: input must be contiguous".into())
        })?;
        let shape = layout.shape().clone();
        let dev = Device::Cpu;
        let x = match storage {
            CpuStorage::F32(v) => Tensor::from_slice(&v[start..end], shape, &dev)?,
            CpuStorage::F64(v) => Tensor::from_slice(&v[start..end], shape, &dev)?,
            CpuStorage::F16(v) => Tensor::from_slice(&v[start..end], shape, &dev)?,
            CpuStorage::BF16(v) => Tensor::from_slice(&v[start..end], shape, &dev)?,
            _ => candle_core::bail!("frozen-matmul: unsupported dtype"),
        };
        let y = match crate::parmatmul::par_matmul(&x, &self.wt)? {
            Some(y) => y,
            None => x.matmul(&self.wt)?,
        };
        let (st, l) = y.storage_and_layout();
        match (&*st, l.contiguous_offsets()) {
            (Storage::Cpu(s), Some((0, _))) => Ok((s.clone(), y.shape().clone())),
            _ => candle_core::bail!("frozen-matmul: unexpected output layout"),
        }
    }

    /// The product on the GPU with candle's own matmul (cuBLAS); without
    /// the `cuda` feature this compiles against candle's stand-in backend
    /// and is never reached.
    fn cuda_fwd(&self, x: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let (m, k) = layout.shape().dims2()?;
        let n = self.wt.dim(1)?;
        let (ws, wl) = self.wt.storage_and_layout();
        let Storage::Cuda(w) = &*ws else {
            candle_core::bail!("frozen-matmul: the input is on the GPU, the weight is not")
        };
        let y = x.matmul(w, (1, m, n, k), layout, wl)?;
        Ok((y, Shape::from((m, n))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let wt_t = self.wt.t()?;
        Ok(Some(match crate::parmatmul::par_matmul(grad_res, &wt_t)? {
            Some(dx) => dx,
            None => grad_res.matmul(&wt_t)?,
        }))
    }
}

/// Plain LoRA: `delta(x) = (alpha / r) · B A x`, with `A ∈ R^{r×in}`
/// Kaiming-uniform and `B ∈ R^{out×r}` zeros, so a fresh adapter changes nothing.
#[derive(Debug)]
pub struct Lora {
    a: Var,
    b: Var,
    scale: f64,
}

impl Lora {
    /// A fresh adapter for a layer `in → out`, seeded deterministically.
    pub fn new(
        in_dim: usize,
        out_dim: usize,
        rank: usize,
        alpha: f64,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Lora> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // kaiming_uniform(a = sqrt(5)) as in PEFT: bound = 1 / sqrt(in).
        let bound = 1.0 / (in_dim as f64).sqrt();
        let a: Vec<f32> = (0..rank * in_dim)
            .map(|_| rng.gen_range(-bound..bound) as f32)
            .collect();
        let a = Tensor::from_vec(a, (rank, in_dim), device)?.to_dtype(dtype)?;
        let b = Tensor::zeros((out_dim, rank), dtype, device)?;
        Self::from_tensors(&a, &b, alpha)
    }

    /// An adapter with given `A (r, in)` and `B (out, r)` (tests, checkpoints).
    pub fn from_tensors(a: &Tensor, b: &Tensor, alpha: f64) -> Result<Lora> {
        let rank = a.dim(0)?;
        if b.dim(1)? != rank {
            candle_core::bail!("lora: A is {:?} but B is {:?}", a.shape(), b.shape());
        }
        Ok(Lora {
            a: Var::from_tensor(a)?,
            b: Var::from_tensor(b)?,
            scale: alpha / rank as f64,
        })
    }

    /// The `A` matrix `(r, in)`.
    pub fn a(&self) -> &Var {
        &self.a
    }

    /// The `B` matrix `(out, r)`.
    pub fn b(&self) -> &Var {
        &self.b
    }
}

impl Adapter for Lora {
    fn delta(&self, x: &Tensor, _ctx: &AdapterCtx) -> Result<Tensor> {
        let h = matmul_wt(x, self.a.as_tensor())?;
        matmul_wt(&h, self.b.as_tensor())? * self.scale
    }

    fn vars(&self) -> Vec<Var> {
        vec![self.a.clone(), self.b.clone()]
    }
}

/// Mixture-of-experts LoRA (iLoRA) for the composed path: `E` experts share
/// the rank `r` of `A (r, in)` and `B (out, r)` (expert `e` owns rank
/// columns `e·r/E .. (e+1)·r/E`), and the per-sample gate `(batch, E)` of
/// [`AdapterCtx::gate`] scales each expert's columns:
/// `delta(x) = s · ((x Aᵀ) ⊙ gate_cols) Bᵀ`, `s = α / (r/E)`. Without a
/// gate every expert counts fully; `E = 1` is plain LoRA. The branch runs
/// in the dtype of `A` and `B` (f32 for the teacher, whatever the
/// backbone's dtype): its input is cast to it and its output back.
#[derive(Debug)]
pub struct MoeLora {
    a: Var,
    b: Var,
    experts: usize,
    scale: f64,
    /// LoRA dropout in training mode: probability and mask seed.
    dropout: Option<(f64, u64)>,
    /// Whether `A` and `B` enter the product as constants (inference): no
    /// autograd graph is then built, so a forward keeps no intermediates.
    frozen: bool,
}

impl MoeLora {
    /// An adapter with given `A (r, in)` and `B (out, r)`, `E` experts.
    pub fn from_tensors(a: &Tensor, b: &Tensor, experts: usize, alpha: f64) -> Result<MoeLora> {
        let rank = a.dim(0)?;
        if b.dim(1)? != rank || experts == 0 || rank % experts != 0 {
            candle_core::bail!(
                "moe-lora: A is {:?}, B is {:?}, {experts} experts",
                a.shape(),
                b.shape()
            );
        }
        Ok(MoeLora {
            a: Var::from_tensor(a)?,
            b: Var::from_tensor(b)?,
            experts,
            scale: alpha / (rank / experts) as f64,
            dropout: None,
            frozen: false,
        })
    }

    /// The adapter with LoRA dropout `p` on its input in training mode,
    /// using the hashed mask of `seed` that the explicit path draws for the
    /// same layer and projection (`crate::dropmask`), so
    /// both paths train the same step.
    pub fn with_dropout(self, p: f64, seed: u64) -> MoeLora {
        MoeLora {
            dropout: Some((p, seed)),
            ..self
        }
    }

    /// The adapter for inference: its weights and the gate enter the
    /// product as constants, so a forward builds no autograd graph. With
    /// trainable weights, or a gate still tied to the gate network's graph,
    /// every intermediate of every layer stays alive until the output is
    /// dropped, and the inference kernels (which take untracked tensors
    /// only) are skipped: a 320-token prefill of SmolLM2-135M held 1.5 GB.
    pub fn frozen(self) -> MoeLora {
        MoeLora {
            frozen: true,
            ..self
        }
    }

    /// `A` and `B` as the product reads them (detached when frozen).
    fn weights(&self) -> (Tensor, Tensor) {
        let (a, b) = (self.a.as_tensor(), self.b.as_tensor());
        if self.frozen {
            (a.detach(), b.detach())
        } else {
            (a.clone(), b.clone())
        }
    }
}

impl Adapter for MoeLora {
    fn delta(&self, x: &Tensor, ctx: &AdapterCtx) -> Result<Tensor> {
        // the branch runs in the adapter's dtype (f32 over a bf16 or f16
        // backbone) and hands its output back in the backbone's
        let out_dtype = x.dtype();
        let x = &x.to_dtype(self.a.dtype())?;
        let dropped;
        let x = match self.dropout {
            Some((p, seed)) if ctx.train => {
                // off the CPU the mask travels as bytes and is scaled there
                let bytes = !x.device().is_cpu();
                let f = crate::dropmask::factor_tensor(p, seed, x, bytes)?;
                dropped = (x * f)?;
                &dropped
            }
            _ => x,
        };
        let (a, b) = self.weights();
        let u = matmul_wt(x, &a)?;
        let u = match ctx.gate {
            Some(g) => {
                let (bsz, e) = g.dims2()?;
                let r = a.dim(0)?;
                if e != self.experts {
                    candle_core::bail!("moe-lora: gate has {e} experts, adapter {}", self.experts);
                }
                let g = if self.frozen { g.detach() } else { g.clone() };
                let cols = g
                    .unsqueeze(2)?
                    .broadcast_as((bsz, e, r / e))?
                    .reshape((bsz, 1, r))?;
                u.broadcast_mul(&cols.to_dtype(u.dtype())?)?
            }
            None => u,
        };
        (matmul_wt(&u, &b)? * self.scale)?.to_dtype(out_dtype)
    }

    fn vars(&self) -> Vec<Var> {
        vec![self.a.clone(), self.b.clone()]
    }
}
