//! The decoder-only transformer: one struct per layer, a forward that reads
//! like the papers, every op differentiable on the training path.
//!
//! ```text
//! h₀ = embed(ids)  (or inputs_embeds)  [+ learned positions for OPT]
//! Llama/Qwen2, OPT pre-norm:  h = h + Attn(Norm(h));  h = h + MLP(Norm(h))
//! OPT post-norm (350m):        h = Norm(h + Attn(h));  h = Norm(h + MLP(h))
//! hidden = FinalNorm(h);  logits = hidden · Eᵀ (or lm_head)
//! ```
//!
//! Padding: a 0/1 attention mask per row masks padded keys and drives the
//! positions (`cumsum(mask) - 1`), so a left-padded row gets exactly the
//! positions of the same prompt without padding.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};

use crate::config::{Activation, Config, Family};
use crate::error::{Error, Result};
use crate::lora::{matmul_wt, Adapter, AdapterCtx, Fused, Linear, Lora};
pub use crate::norm::Norm;
use crate::ops;
use crate::source::WeightSource;

/// Which linear layer of a decoder layer (adapter targets): the one
/// [`distillrec_data::AdapterTarget`] table, whose `ALL` order is the order of
/// a layer's adapter slots.
pub use distillrec_data::AdapterTarget as Target;

/// Positional information shared by every layer in one forward pass.
struct Positions {
    /// RoPE tables `(batch, seq, head_dim / 2)`, absent for OPT.
    rope: Option<(Tensor, Tensor)>,
    /// Additive attention mask `(batch, 1, 1, seq, keys)`, absent when every key is visible.
    mask: Option<Tensor>,
}

/// Multi-head attention with grouped-query heads and RoPE (or none, for OPT).
#[derive(Clone, Debug)]
pub struct Attention {
    /// Query projection `hidden → heads·head_dim`.
    pub q_proj: Linear,
    /// Key projection `hidden → kv_heads·head_dim`.
    pub k_proj: Linear,
    /// Value projection `hidden → kv_heads·head_dim`.
    pub v_proj: Linear,
    /// Output projection `heads·head_dim → hidden`.
    pub o_proj: Linear,
    /// q, k and v computed by one matmul (their weights are views of it).
    pub(crate) qkv: Fused,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(cfg: &Config, src: &mut Loader, p: &str) -> Result<Attention> {
        let (h, hd) = (cfg.hidden_size, cfg.head_dim);
        let (nq, nkv) = (cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd);
        let o_name = if cfg.family == Family::Opt {
            "out_proj"
        } else {
            "o_proj"
        };
        let mut q_proj = src.linear(&format!("{p}.q_proj"), h, nq, cfg.qkv_bias)?;
        let mut k_proj = src.linear(&format!("{p}.k_proj"), h, nkv, cfg.qkv_bias)?;
        let mut v_proj = src.linear(&format!("{p}.v_proj"), h, nkv, cfg.qkv_bias)?;
        let qkv = Fused::new(&mut [&mut q_proj, &mut k_proj, &mut v_proj])?;
        Ok(Attention {
            q_proj,
            k_proj,
            v_proj,
            qkv,
            o_proj: src.linear(&format!("{p}.{o_name}"), nq, h, cfg.o_bias)?,
            n_heads: cfg.num_attention_heads,
            n_kv_heads: cfg.num_key_value_heads,
            head_dim: hd,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        pos: &Positions,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        ctx: &AdapterCtx,
        allow_fused: bool,
    ) -> candle_core::Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        // Uncached inference without bias or adapters on q/k/v: one kernel
        // from the fused projection (RoPE inside, no head transposes).
        if let (None, Some((cos, sin))) = (&cache, &pos.rope) {
            let plain = self.q_proj.is_plain() && self.k_proj.is_plain() && self.v_proj.is_plain();
            if plain && crate::infer::applies(&[x, cos, sin]) {
                let y = self.qkv.forward_joined(x)?;
                let layout = crate::infer::QkvLayout {
                    n_heads: nh,
                    n_kv_heads: nkv,
                    head_dim: hd,
                };
                let scale = 1.0 / (hd as f32).sqrt();
                let out =
                    crate::infer::attention_qkv(&y, layout, cos, sin, pos.mask.as_ref(), scale)?;
                if let Some(out) = out {
                    return self.o_proj.forward(&out, ctx);
                }
            }
        }
        let heads = |y: Tensor, n: usize| y.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous();
        let [q, k, v]: [Tensor; 3] = self
            .qkv
            .forward_base(x)?
            .try_into()
            .map_err(|_| candle_core::Error::Msg("qkv split".into()))?;
        let mut q = heads(self.q_proj.finish(q, x, ctx)?, nh)?;
        let mut k = heads(self.k_proj.finish(k, x, ctx)?, nkv)?;
        let v = heads(self.v_proj.finish(v, x, ctx)?, nkv)?;
        if let Some((cos, sin)) = &pos.rope {
            q = ops::rope(&q, cos, sin, ops::can_fuse(allow_fused, &[&q]))?;
            k = ops::rope(&k, cos, sin, ops::can_fuse(allow_fused, &[&k]))?;
        }
        let (k, v) = match cache {
            Some(slot) => {
                let kv = match slot.take() {
                    Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                    None => (k, v),
                };
                *slot = Some(kv.clone());
                kv
            }
            None => (k, v),
        };
        if crate::infer::applies(&[&q, &k, &v]) {
            let scale = 1.0 / (hd as f32).sqrt();
            if let Some(out) = crate::infer::attention(&q, &k, &v, pos.mask.as_ref(), scale)? {
                return self.o_proj.forward(&out, ctx);
            }
        }
        let s = k.dim(2)?;
        let groups = nh / nkv;
        // Grouped-query attention without copying K/V: the `groups` query heads
        // sharing one KV head are stacked along the sequence axis.
        let q = (q * (1.0 / (hd as f64).sqrt()))?.reshape((b, nkv, groups * t, hd))?;
        let scores = q.matmul(&k.t()?)?.reshape((b, nkv, groups, t, s))?;
        let scores = match &pos.mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = ops::softmax_last_dim(&scores, ops::can_fuse(allow_fused, &[&scores]))?
            .reshape((b, nkv, groups * t, s))?;
        let out = probs
            .matmul(&v)?
            .reshape((b, nh, t, hd))?
            .transpose(1, 2)?
            .reshape((b, t, nh * hd))?;
        self.o_proj.forward(&out, ctx)
    }
}

/// The feed-forward block.
#[derive(Clone, Debug)]
pub enum Mlp {
    /// SwiGLU: `down(silu(gate(x)) ⊙ up(x))` (Llama, Qwen2).
    Gated {
        /// Gate projection.
        gate: Linear,
        /// Up projection.
        up: Linear,
        /// Down projection.
        down: Linear,
        /// gate and up computed by one matmul (their weights are views of it).
        gate_up: Fused,
    },
    /// Two layers with an activation: `fc2(act(fc1(x)))` (OPT).
    Plain {
        /// First layer (`fc1`).
        up: Linear,
        /// Second layer (`fc2`).
        down: Linear,
        /// Activation.
        act: Activation,
    },
}

impl Mlp {
    fn load(cfg: &Config, src: &mut Loader, p: &str) -> Result<Mlp> {
        let (h, i, bias) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        Ok(match cfg.family {
            Family::Opt => Mlp::Plain {
                up: src.linear(&format!("{p}.fc1"), h, i, bias)?,
                down: src.linear(&format!("{p}.fc2"), i, h, bias)?,
                act: cfg.activation,
            },
            _ => {
                let mut gate = src.linear(&format!("{p}.mlp.gate_proj"), h, i, bias)?;
                let mut up = src.linear(&format!("{p}.mlp.up_proj"), h, i, bias)?;
                let gate_up = Fused::new(&mut [&mut gate, &mut up])?;
                Mlp::Gated {
                    gate,
                    up,
                    down: src.linear(&format!("{p}.mlp.down_proj"), i, h, bias)?,
                    gate_up,
                }
            }
        })
    }

    fn forward(&self, x: &Tensor, ctx: &AdapterCtx) -> candle_core::Result<Tensor> {
        match self {
            Mlp::Gated {
                gate,
                up,
                down,
                gate_up,
            } => {
                let [g, u]: [Tensor; 2] = gate_up
                    .forward_base(x)?
                    .try_into()
                    .map_err(|_| candle_core::Error::Msg("gate/up split".into()))?;
                let g = gate.finish(g, x, ctx)?;
                let u = up.finish(u, x, ctx)?;
                if crate::infer::applies(&[&g, &u]) {
                    if let Some(h) = crate::infer::swiglu(&g, &u)? {
                        return down.forward(&h, ctx);
                    }
                }
                down.forward(&(g.silu()? * u)?, ctx)
            }
            Mlp::Plain { up, down, act } => {
                let h = up.forward(x, ctx)?;
                let h = match act {
                    Activation::Relu => h.relu()?,
                    Activation::Gelu => ops::gelu(&h)?,
                    Activation::Silu => h.silu()?,
                };
                down.forward(&h, ctx)
            }
        }
    }
}

/// One decoder layer: attention and MLP, each with its norm and residual.
#[derive(Clone, Debug)]
pub struct DecoderLayer {
    /// Norm before (pre-norm) or after (post-norm) attention.
    pub attn_norm: Norm,
    /// Self-attention.
    pub attn: Attention,
    /// Norm before (pre-norm) or after (post-norm) the MLP.
    pub mlp_norm: Norm,
    /// Feed-forward block.
    pub mlp: Mlp,
    pre_norm: bool,
}

impl DecoderLayer {
    fn load(cfg: &Config, src: &mut Loader, p: &str) -> Result<DecoderLayer> {
        let (attn_norm, mlp_norm) = match cfg.family {
            Family::Opt => ("self_attn_layer_norm", "final_layer_norm"),
            _ => ("input_layernorm", "post_attention_layernorm"),
        };
        Ok(DecoderLayer {
            attn_norm: Norm::load(cfg, &mut |n, s| src.get(n, s), &format!("{p}.{attn_norm}"))?,
            attn: Attention::load(cfg, src, &format!("{p}.self_attn"))?,
            mlp_norm: Norm::load(cfg, &mut |n, s| src.get(n, s), &format!("{p}.{mlp_norm}"))?,
            mlp: Mlp::load(cfg, src, p)?,
            pre_norm: cfg.do_layer_norm_before,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        pos: &Positions,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        ctx: &AdapterCtx,
        fused: bool,
    ) -> candle_core::Result<Tensor> {
        if self.pre_norm {
            let a =
                self.attn
                    .forward(&self.attn_norm.forward(x, fused)?, pos, cache, ctx, fused)?;
            // inference: the residual add and the MLP norm in one pass
            if let Norm::Rms { weight, eps } = &self.mlp_norm {
                if fused && crate::infer::applies(&[x, &a]) {
                    if let Some((h, n)) = crate::infer::add_rms_norm(x, &a, weight, *eps)? {
                        return &h + self.mlp.forward(&n, ctx)?;
                    }
                }
            }
            let h = (x + a)?;
            &h + self.mlp.forward(&self.mlp_norm.forward(&h, fused)?, ctx)?
        } else {
            let h = self
                .attn_norm
                .forward(&(x + self.attn.forward(x, pos, cache, ctx, fused)?)?, fused)?;
            self.mlp_norm
                .forward(&(&h + self.mlp.forward(&h, ctx)?)?, fused)
        }
    }

    /// The linear layer `target` of this layer, if the architecture has it.
    pub fn linear(&self, target: Target) -> Option<&Linear> {
        match (target, &self.mlp) {
            (Target::Q, _) => Some(&self.attn.q_proj),
            (Target::K, _) => Some(&self.attn.k_proj),
            (Target::V, _) => Some(&self.attn.v_proj),
            (Target::O, _) => Some(&self.attn.o_proj),
            (Target::Gate, Mlp::Gated { gate, .. }) => Some(gate),
            (Target::Gate, Mlp::Plain { .. }) => None,
            (Target::Up, Mlp::Gated { up, .. } | Mlp::Plain { up, .. }) => Some(up),
            (Target::Down, Mlp::Gated { down, .. } | Mlp::Plain { down, .. }) => Some(down),
        }
    }

    /// The linear layer `target` of this layer.
    pub fn linear_mut(&mut self, target: Target) -> Option<&mut Linear> {
        match (target, &mut self.mlp) {
            (Target::Q, _) => Some(&mut self.attn.q_proj),
            (Target::K, _) => Some(&mut self.attn.k_proj),
            (Target::V, _) => Some(&mut self.attn.v_proj),
            (Target::O, _) => Some(&mut self.attn.o_proj),
            (Target::Gate, Mlp::Gated { gate, .. }) => Some(gate),
            (Target::Gate, Mlp::Plain { .. }) => None,
            (Target::Up, Mlp::Gated { up, .. } | Mlp::Plain { up, .. }) => Some(up),
            (Target::Down, Mlp::Gated { down, .. } | Mlp::Plain { down, .. }) => Some(down),
        }
    }

    fn linears(&self) -> Vec<&Linear> {
        let mut v = vec![
            &self.attn.q_proj,
            &self.attn.k_proj,
            &self.attn.v_proj,
            &self.attn.o_proj,
        ];
        match &self.mlp {
            Mlp::Gated { gate, up, down, .. } => v.extend([gate, up, down]),
            Mlp::Plain { up, down, .. } => v.extend([up, down]),
        }
        v
    }
}

/// The key/value cache of an incremental forward: per layer the keys and
/// values seen so far, and per row the attention mask and positions.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    mask: Vec<Vec<bool>>,
    positions: Vec<Vec<u32>>,
}

impl KvCache {
    /// An empty cache for `model`.
    pub fn new(model: &Model) -> KvCache {
        KvCache {
            layers: vec![None; model.layers.len()],
            mask: Vec::new(),
            positions: Vec::new(),
        }
    }

    /// Number of cached positions (including padding).
    pub fn len(&self) -> usize {
        self.mask.first().map_or(0, |m| m.len())
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The transformer: embeddings, decoder layers, final norm and LM head.
#[derive(Clone, Debug)]
pub struct Model {
    cfg: Config,
    embed_tokens: Tensor,
    embed_positions: Option<Tensor>,
    project_in: Option<Linear>,
    project_out: Option<Linear>,
    /// The decoder layers (public so adapters can be attached to any linear).
    pub layers: Vec<DecoderLayer>,
    final_norm: Option<Norm>,
    lm_head: Tensor,
    inv_freq: Vec<f64>,
    dtype: DType,
    device: Device,
    allow_fused: bool,
}

/// The flat index of the first NaN or infinite value of `t`, if any.
fn first_non_finite(t: &Tensor) -> Result<Option<usize>> {
    let flat = t.flatten_all()?;
    let found = match flat.dtype() {
        DType::F32 => flat.to_vec1::<f32>()?.iter().position(|x| !x.is_finite()),
        DType::F64 => flat.to_vec1::<f64>()?.iter().position(|x| !x.is_finite()),
        _ => flat
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?
            .iter()
            .position(|x| !x.is_finite()),
    };
    Ok(found)
}

/// Resolves Hugging Face tensor names against a [`WeightSource`], checking
/// shapes and converting to the model's dtype and device.
pub(crate) struct Loader<'a> {
    src: &'a mut dyn WeightSource,
    dtype: DType,
    device: Device,
}

impl Loader<'_> {
    /// Reads one tensor, checks its shape and that every value is finite
    /// (once, at load: a NaN or infinite weight would only show up later as
    /// garbage text), then converts it to the model's dtype and device.
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.src.load(name, shape)?;
        if t.dims() != shape {
            return Err(Error::tensor(
                self.src.path(),
                name,
                format!("shape {:?}, expected {:?}", t.dims(), shape),
            ));
        }
        if self.src.generated() {
            return Ok(t.to_dtype(self.dtype)?.to_device(&self.device)?);
        }
        if let Some(i) = first_non_finite(&t)? {
            return Err(Error::tensor(
                self.src.path(),
                name,
                format!("holds a non-finite value (NaN or infinity) at flat index {i}"),
            ));
        }
        Ok(t.to_dtype(self.dtype)?.to_device(&self.device)?)
    }

    fn linear(&mut self, name: &str, in_dim: usize, out_dim: usize, bias: bool) -> Result<Linear> {
        let w = self.get(&format!("{name}.weight"), &[out_dim, in_dim])?;
        let b = if bias {
            Some(self.get(&format!("{name}.bias"), &[out_dim])?)
        } else {
            None
        };
        Ok(Linear::new(w, b)?)
    }
}

impl Model {
    /// Builds the model described by `cfg` from `src` (Hugging Face tensor
    /// names). Only the first `cfg.num_hidden_layers` layers are read.
    pub fn new(
        cfg: &Config,
        src: &mut dyn WeightSource,
        dtype: DType,
        device: &Device,
    ) -> Result<Model> {
        cfg.validate(src.path())?;
        let mut l = Loader {
            src,
            dtype,
            device: device.clone(),
        };
        let (v, h, e) = (cfg.vocab_size, cfg.hidden_size, cfg.word_embed_proj_dim);
        let prefix = match cfg.family {
            Family::Opt if l.src.contains("model.decoder.embed_tokens.weight") => "model.decoder",
            Family::Opt => "decoder",
            _ => "model",
        };
        let embed_tokens = l.get(&format!("{prefix}.embed_tokens.weight"), &[v, e])?;
        let (embed_positions, project_in, project_out) = if cfg.family == Family::Opt {
            let pos = l.get(
                &format!("{prefix}.embed_positions.weight"),
                &[cfg.max_position_embeddings + 2, h],
            )?;
            let (pin, pout) = if e != h {
                (
                    Some(l.linear(&format!("{prefix}.project_in"), e, h, false)?),
                    Some(l.linear(&format!("{prefix}.project_out"), h, e, false)?),
                )
            } else {
                (None, None)
            };
            (Some(pos), pin, pout)
        } else {
            (None, None, None)
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::load(cfg, &mut l, &format!("{prefix}.layers.{i}")))
            .collect::<Result<Vec<_>>>()?;
        let final_norm = match cfg.family {
            Family::Opt if cfg.final_norm => Some(Norm::load(
                cfg,
                &mut |n, s| l.get(n, s),
                &format!("{prefix}.final_layer_norm"),
            )?),
            Family::Opt => None,
            _ => Some(Norm::load(
                cfg,
                &mut |n, s| l.get(n, s),
                &format!("{prefix}.norm"),
            )?),
        };
        let lm_head = if cfg.tie_word_embeddings {
            embed_tokens.clone()
        } else {
            l.get("lm_head.weight", &[v, e])?
        };
        Ok(Model {
            cfg: cfg.clone(),
            embed_tokens,
            embed_positions,
            project_in,
            project_out,
            layers,
            final_norm,
            lm_head,
            inv_freq: cfg.rope_inv_freq(),
            dtype,
            device: device.clone(),
            allow_fused: true,
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Parameter dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Device holding the parameters.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The token-embedding table `(vocab, embed_dim)` (frozen).
    pub fn embed_table(&self) -> &Tensor {
        &self.embed_tokens
    }

    /// Width of the last hidden state.
    pub fn last_hidden_size(&self) -> usize {
        self.cfg.word_embed_proj_dim
    }

    /// Allows (default) or forbids candle's fused kernels for inputs that do
    /// not track gradients. Forbidding them is only useful to compare paths.
    pub fn set_allow_fused(&mut self, allow: bool) {
        self.allow_fused = allow;
    }

    /// Refuses a forward pass over `new` positions after `past` cached
    /// ones when that exceeds the context length (`max_position_embeddings`):
    /// checked before anything is allocated for the sequence.
    pub fn check_context(&self, past: usize, new: usize) -> Result<()> {
        let ctx = self.cfg.max_position_embeddings;
        if past.saturating_add(new) > ctx {
            let what = if past == 0 {
                format!("a sequence of {new} tokens")
            } else {
                format!("{past} cached + {new} new tokens")
            };
            return Err(Error::Input(format!(
                "{what} exceeds the model's context length of {ctx} tokens (max_position_embeddings)"
            )));
        }
        Ok(())
    }

    /// Token embeddings for `ids` `(batch, seq)` (u32): `(batch, seq, embed_dim)`.
    /// Errors on ids outside the vocabulary and on sequences longer than
    /// the context length.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        self.check_context(0, t)?;
        let flat = ids.flatten_all()?.to_dtype(DType::U32)?;
        if let Some(&bad) = flat
            .to_vec1::<u32>()?
            .iter()
            .find(|&&i| i as usize >= self.cfg.vocab_size)
        {
            return Err(Error::Input(format!(
                "token id {bad} >= vocab_size {}",
                self.cfg.vocab_size
            )));
        }
        Ok(self.embed_tokens.index_select(&flat, 0)?.reshape((
            b,
            t,
            self.cfg.word_embed_proj_dim,
        ))?)
    }

    /// Logits `(batch, seq, vocab)` for `ids` `(batch, seq)`.
    pub fn forward(
        &self,
        ids: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let h = self.forward_hidden(&self.embed(ids)?, mask, cache)?;
        self.logits(&h)
    }

    /// Last hidden states `(batch, seq, hidden)` for input embeddings
    /// `(batch, seq, embed_dim)` (after the final norm, like Hugging Face's
    /// `last_hidden_state`). `mask` `(batch, seq)`: nonzero marks real tokens;
    /// with a cache it covers only the new positions.
    pub fn forward_hidden(
        &self,
        embeds: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        self.forward_hidden_with(embeds, mask, cache, &AdapterCtx::default())
    }

    /// [`Model::forward_hidden`] with an adapter context (gate, train flag).
    pub fn forward_hidden_with(
        &self,
        embeds: &Tensor,
        mask: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
        ctx: &AdapterCtx,
    ) -> Result<Tensor> {
        let (b, t, e) = embeds.dims3()?;
        if e != self.cfg.word_embed_proj_dim {
            return Err(Error::Input(format!(
                "inputs_embeds width {e}, model expects {}",
                self.cfg.word_embed_proj_dim
            )));
        }
        if t == 0 {
            return Err(Error::Input("empty sequence".into()));
        }
        let cached = cache.as_deref().map_or(0, |c| c.len());
        self.check_context(cached, t)?;
        let new_mask: Vec<Vec<bool>> = match mask {
            Some(m) => {
                if m.dims() != [b, t] {
                    return Err(Error::Input(format!(
                        "attention mask {:?}, expected [{b}, {t}]",
                        m.dims()
                    )));
                }
                m.to_dtype(DType::F32)?
                    .to_vec2::<f32>()?
                    .into_iter()
                    .map(|r| r.into_iter().map(|x| x != 0.0).collect())
                    .collect()
            }
            None => vec![vec![true; t]; b],
        };
        let (mut full_mask, mut full_pos) = match cache.as_deref() {
            Some(c) if !c.is_empty() => {
                if c.mask.len() != b {
                    return Err(Error::Input(format!(
                        "batch of {b} rows, cache holds {}",
                        c.mask.len()
                    )));
                }
                (c.mask.clone(), c.positions.clone())
            }
            _ => (vec![Vec::new(); b], vec![Vec::new(); b]),
        };
        let past = full_mask[0].len();
        for r in 0..b {
            let mut next = full_mask[r].iter().filter(|&&m| m).count() as u32;
            for &m in &new_mask[r] {
                full_mask[r].push(m);
                full_pos[r].push(if m { next } else { 0 });
                next += m as u32;
            }
        }
        let s = past + t;
        let pos = self.positions(&full_mask, &full_pos, past, t)?;
        let mut h = self.input_stage(embeds, &full_pos, past, ctx)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            h = layer.forward(&h, &pos, slot, ctx, self.allow_fused)?;
        }
        h = self.output_stage(&h, ctx)?;
        if let Some(c) = cache {
            c.mask = full_mask;
            c.positions = full_pos;
            debug_assert_eq!(c.len(), s);
        }
        Ok(h)
    }

    /// What runs before the decoder layers: OPT's `project_in` and learned
    /// positions (offset by 2) of the `t` new positions after `past`;
    /// nothing for the RoPE families.
    fn input_stage(
        &self,
        embeds: &Tensor,
        full_pos: &[Vec<u32>],
        past: usize,
        ctx: &AdapterCtx,
    ) -> Result<Tensor> {
        let (b, t, _) = embeds.dims3()?;
        let mut h = embeds.clone();
        if let Some(p) = &self.project_in {
            h = p.forward(&h, ctx)?;
        }
        if let Some(table) = &self.embed_positions {
            let ids: Vec<u32> = full_pos
                .iter()
                .flat_map(|p| p[past..].iter().map(|&x| x + 2))
                .collect();
            if let Some(&bad) = ids
                .iter()
                .find(|&&x| x as usize >= table.dim(0).unwrap_or(0))
            {
                return Err(Error::Input(format!(
                    "position {} exceeds max_position_embeddings {}",
                    bad - 2,
                    self.cfg.max_position_embeddings
                )));
            }
            let ids = Tensor::from_vec(ids, b * t, &self.device)?;
            h = h.broadcast_add(&table.index_select(&ids, 0)?.reshape((
                b,
                t,
                self.cfg.hidden_size,
            ))?)?;
        }
        Ok(h)
    }

    /// What runs after the decoder layers: the final norm and OPT's
    /// `project_out`.
    fn output_stage(&self, h: &Tensor, ctx: &AdapterCtx) -> Result<Tensor> {
        let mut h = h.clone();
        if let Some(n) = &self.final_norm {
            h = n.forward(&h, self.allow_fused)?;
        }
        if let Some(p) = &self.project_out {
            h = p.forward(&h, ctx)?;
        }
        Ok(h)
    }

    /// An uncached forward over rows with real-token `mask` split into
    /// stages (input, each decoder layer, output) that can run one at a
    /// time: [`Stages::run`] of every stage in order is
    /// [`Model::forward_hidden_with`]. Training with recomputation keeps
    /// only each stage's input and reruns one stage at a time in the
    /// backward.
    pub fn stages(&self, mask: &[Vec<bool>]) -> Result<Stages<'_>> {
        let t = mask.first().map_or(0, Vec::len);
        if t == 0 || mask.iter().any(|m| m.len() != t) {
            return Err(Error::Input(
                "the batch needs rows of equal, positive length".into(),
            ));
        }
        self.check_context(0, t)?;
        let full_pos = positions_of(mask);
        let pos = self.positions(mask, &full_pos, 0, t)?;
        Ok(Stages {
            model: self,
            pos,
            full_pos,
        })
    }

    /// RoPE tables for the new positions and the additive mask over all keys.
    fn positions(
        &self,
        mask: &[Vec<bool>],
        pos: &[Vec<u32>],
        past: usize,
        t: usize,
    ) -> Result<Positions> {
        let b = mask.len();
        let s = past + t;
        let rope = if self.cfg.family == Family::Opt {
            None
        } else {
            let half = self.cfg.head_dim / 2;
            let mut cos = Vec::with_capacity(b * t * half);
            let mut sin = Vec::with_capacity(b * t * half);
            for p in pos {
                for &x in &p[past..] {
                    for f in &self.inv_freq {
                        let a = x as f64 * f;
                        cos.push(a.cos());
                        sin.push(a.sin());
                    }
                }
            }
            let mk = |v: Vec<f64>| -> Result<Tensor> {
                Ok(Tensor::from_vec(v, (b, t, half), &Device::Cpu)?
                    .to_dtype(self.dtype)?
                    .to_device(&self.device)?)
            };
            Some((mk(cos)?, mk(sin)?))
        };
        let window = self.cfg.sliding_window;
        let all_visible = t == 1
            && mask.iter().all(|m| m.iter().all(|&x| x))
            && window.is_none_or(|w| pos.iter().all(|p| p[s - 1] < w as u32));
        let mask = if all_visible {
            None
        } else {
            let neg = match self.dtype {
                DType::F16 => -65504.0,
                DType::BF16 => -3.0e38,
                _ => f32::MIN as f64,
            };
            let mut m = vec![0f64; b * t * s];
            for r in 0..b {
                for q in 0..t {
                    let qi = past + q;
                    for k in 0..s {
                        // A padded query attends only to itself, so padding
                        // never mixes with real tokens in either direction
                        // (and no softmax row is fully masked).
                        let visible = if mask[r][qi] {
                            k <= qi
                                && mask[r][k]
                                && window
                                    .is_none_or(|w| pos[r][qi].saturating_sub(pos[r][k]) < w as u32)
                        } else {
                            k == qi
                        };
                        if !visible {
                            m[(r * t + q) * s + k] = neg;
                        }
                    }
                }
            }
            Some(
                Tensor::from_vec(m, (b, 1, 1, t, s), &Device::Cpu)?
                    .to_dtype(self.dtype)?
                    .to_device(&self.device)?,
            )
        };
        Ok(Positions { rope, mask })
    }

    /// RoPE tables `(batch, seq, head_dim/2)` and the additive attention
    /// mask `(batch, 1, 1, seq, seq)` (None when every key is visible) of
    /// an uncached pass over rows with real-token `mask` (either padding
    /// side): the same positions and visibility as [`Model::forward_hidden`].
    pub fn rope_and_mask(&self, mask: &[Vec<bool>]) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let t = mask.first().map_or(0, Vec::len);
        let pos = positions_of(mask);
        let p = self.positions(mask, &pos, 0, t)?;
        let (cos, sin) = p
            .rope
            .ok_or_else(|| Error::Input("this architecture has no rotary positions".into()))?;
        Ok((cos, sin, p.mask))
    }

    /// The final norm, if the architecture has one.
    pub fn final_norm(&self) -> Option<&Norm> {
        self.final_norm.as_ref()
    }

    /// The LM-head weight `(vocab, hidden)` (the embedding table when tied).
    pub fn lm_head_weight(&self) -> &Tensor {
        &self.lm_head
    }

    /// Logits `(batch, seq, vocab)` from hidden states `(batch, seq, hidden)`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(matmul_wt(hidden, &self.lm_head)?)
    }

    /// The linear layer `target` of layer `layer`, to attach an adapter to.
    pub fn linear_mut(&mut self, layer: usize, target: Target) -> Result<&mut Linear> {
        let n = self.layers.len();
        self.layers
            .get_mut(layer)
            .ok_or_else(|| Error::Input(format!("layer {layer} out of range (model has {n})")))?
            .linear_mut(target)
            .ok_or_else(|| Error::Input(format!("{target:?} does not exist in this architecture")))
    }

    /// Attaches a fresh plain LoRA adapter (rank `rank`, scale `alpha / rank`)
    /// to each `targets` linear of every layer and returns the new variables.
    /// Seeds derive from `seed`, the layer and the target.
    pub fn add_lora(
        &mut self,
        targets: &[Target],
        rank: usize,
        alpha: f64,
        seed: u64,
    ) -> Result<Vec<Var>> {
        let mut vars = Vec::new();
        let (dtype, device) = (self.dtype, self.device.clone());
        for layer in 0..self.layers.len() {
            for (ti, &target) in targets.iter().enumerate() {
                let lin = self.linear_mut(layer, target)?;
                let s = seed
                    ^ ((layer as u64) << 32)
                    ^ (ti as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let lora = Lora::new(lin.in_dim(), lin.out_dim(), rank, alpha, s, dtype, &device)?;
                vars.extend(lora.vars());
                lin.set_adapter(Some(Arc::new(lora) as Arc<dyn Adapter>));
            }
        }
        Ok(vars)
    }

    /// Every trainable variable of the attached adapters, layer by layer.
    pub fn trainable_vars(&self) -> Vec<Var> {
        self.layers
            .iter()
            .flat_map(|l| l.linears())
            .filter_map(|lin| lin.adapter())
            .flat_map(|a| a.vars())
            .collect()
    }

    /// For each row, the index of its last real token in `mask` (`(batch, seq)`),
    /// for picking the last hidden state of right- or left-padded rows.
    pub fn last_real_index(mask: &[Vec<bool>]) -> Result<Vec<usize>> {
        mask.iter()
            .enumerate()
            .map(|(r, m)| {
                m.iter()
                    .rposition(|&x| x)
                    .ok_or_else(|| Error::Input(format!("row {r} has no real token")))
            })
            .collect()
    }
}

/// Each row's positions in an uncached pass: real tokens count up from 0,
/// padding sits at 0 (as [`Model::forward_hidden`] numbers them).
fn positions_of(mask: &[Vec<bool>]) -> Vec<Vec<u32>> {
    mask.iter()
        .map(|m| {
            let mut next = 0u32;
            m.iter()
                .map(|&x| {
                    let p = if x { next } else { 0 };
                    next += x as u32;
                    p
                })
                .collect()
        })
        .collect()
}

/// An uncached forward in stages (see [`Model::stages`]): stage 0 is the
/// input (OPT's projection and positions), stages `1..=L` the decoder
/// layers, stage `L + 1` the final norm (and OPT's output projection).
pub struct Stages<'a> {
    model: &'a Model,
    pos: Positions,
    full_pos: Vec<Vec<u32>>,
}

impl Stages<'_> {
    /// Number of stages: the decoder layers plus the input and the output.
    pub fn len(&self) -> usize {
        self.model.layers.len() + 2
    }

    /// Never empty (input and output stages always exist).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Runs stage `i` on its input `x` `(batch, seq, width)`.
    pub fn run(&self, i: usize, x: &Tensor, ctx: &AdapterCtx) -> Result<Tensor> {
        let m = self.model;
        let l = m.layers.len();
        match i {
            0 => m.input_stage(x, &self.full_pos, 0, ctx),
            i if i <= l => Ok(m.layers[i - 1].forward(x, &self.pos, None, ctx, m.allow_fused)?),
            i if i == l + 1 => m.output_stage(x, ctx),
            _ => Err(Error::Input(format!("stage {i} of {}", l + 2))),
        }
    }
}
