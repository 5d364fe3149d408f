//! SASRec (Kang & McAuley, ICDM 2018): item + learned position embeddings,
//! `layers` blocks of causal multi-head self-attention and a point-wise
//! feed-forward network, residuals and layer norm, padding masked.
//!
//! The block follows the authors' code (and the PyTorch reference in
//! `../shared/bench`): `Q = LN(x)`, `x = LN(Q + MHA(Q, x, x))`,
//! `x = (x + FFN(x)) · mask`, and a final layer norm.

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

use std::cell::OnceCell;
use std::sync::Arc;

use crate::batch::{ForwardCtx, SeqBatch};
use crate::fused_attention::CausalAttention;
use crate::fused_linear::fused_linear;
use crate::ops::{layer_norm, softmax_last};
use crate::params::{Init, Params};

/// SASRec hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SasRecConfig {
    /// Catalogue size `N` (the item table has `N + 1` rows).
    pub num_items: usize,
    /// Embedding size.
    pub hidden: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Dropout probability (embeddings, attention weights, feed-forward).
    pub dropout: f64,
    /// Window length.
    pub max_len: usize,
}

const LN_EPS: f32 = 1e-8;

/// Layer norm with affine parameters.
pub(crate) struct LayerNorm {
    gamma: Tensor,
    beta: Tensor,
}

impl LayerNorm {
    pub(crate) fn new(p: &mut Params, init: &Init, name: &str, d: usize) -> Result<Self> {
        Ok(LayerNorm {
            gamma: p.add(&format!("{name}.weight"), init.constant(&[d], 1.0)?)?,
            beta: p.add(&format!("{name}.bias"), init.constant(&[d], 0.0)?)?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        layer_norm(x, &self.gamma, &self.beta, LN_EPS)
    }
}

/// Affine map with PyTorch's default initialisation.
pub(crate) struct Linear {
    w: Tensor,
    b: Tensor,
}

impl Linear {
    pub(crate) fn new(
        p: &mut Params,
        init: &mut Init,
        name: &str,
        inp: usize,
        out: usize,
    ) -> Result<Self> {
        let w = p.add(&format!("{name}.weight"), init.linear_weight(out, inp)?)?;
        let b = p.add(
            &format!("{name}.bias"),
            init.uniform(&[out], 1.0 / (inp as f64).sqrt())?,
        )?;
        Ok(Linear { w, b })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        fused_linear(x, &self.w, &self.b)
    }
}

/// Causal multi-head self-attention.
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
}

impl Attention {
    fn forward(
        &self,
        query: &Tensor,
        kv: &Tensor,
        batch: &SeqBatch,
        mask: &OnceCell<Tensor>,
        p: f64,
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        let (b, l, d) = query.dims3()?;
        let dh = d / self.heads;
        let split = |t: Tensor| -> Result<Tensor> {
            t.reshape((b, l, self.heads, dh))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.q.forward(query)?)?;
        let k = split(self.k.forward(kv)?)?;
        let v = split(self.v.forward(kv)?)?;
        let out = if query.device().is_cpu() {
            let bh = b * self.heads;
            let key_valid = Arc::new(batch.ids.iter().map(|&i| i != 0).collect::<Vec<bool>>());
            let dropout = if ctx.train { p as f32 } else { 0.0 };
            let seed = if dropout > 0.0 { ctx.next_seed() } else { 0 };
            let op = CausalAttention {
                heads: self.heads,
                key_valid,
                dropout,
                seed,
            };
            let (q, k, v) = (
                q.reshape((bh, l, dh))?,
                k.reshape((bh, l, dh))?,
                v.reshape((bh, l, dh))?,
            );
            q.apply_op3(&k, &v, op)?.reshape((b, self.heads, l, dh))?
        } else {
            let mask = match mask.get() {
                Some(m) => m.clone(),
                None => {
                    let m = attention_mask(batch)?;
                    let _ = mask.set(m.clone());
                    m
                }
            };
            let scores =
                (q.matmul(&k.t()?.contiguous()?)? / (dh as f64).sqrt())?.broadcast_add(&mask)?;
            let att = ctx.dropout(&softmax_last(&scores)?, p)?;
            att.matmul(&v)?
        };
        let out = out.transpose(1, 2)?.reshape((b, l, d))?;
        self.o.forward(&out)
    }
}

struct Block {
    ln_attn: LayerNorm,
    attn: Attention,
    ln_ff: LayerNorm,
    ff1: Linear,
    ff2: Linear,
}

/// The SASRec model.
pub struct SasRec {
    /// Hyper-parameters.
    pub config: SasRecConfig,
    item_emb: Tensor,
    pos_emb: Tensor,
    blocks: Vec<Block>,
    ln_final: LayerNorm,
}

/// Additive attention mask `[B, 1, L, L]` for the composed (non-CPU) path: query `i` sees key `j ≤ i` if `j`
/// is a real item; the diagonal is always open so that fully padded rows
/// stay finite (their outputs are zeroed by the padding mask anyway).
fn attention_mask(batch: &SeqBatch) -> Result<Tensor> {
    let (b, l) = (batch.b, batch.l);
    let mut m = vec![-1e9f32; b * l * l];
    for r in 0..b {
        let ids = &batch.ids[r * l..(r + 1) * l];
        for i in 0..l {
            let row = &mut m[(r * l + i) * l..(r * l + i + 1) * l];
            for j in 0..=i {
                if ids[j] != 0 || j == i {
                    row[j] = 0.0;
                }
            }
        }
    }
    Tensor::from_vec(m, (b, 1, l, l), batch.tensor.device())
}

impl SasRec {
    /// Builds the model with parameters registered in `params`.
    pub fn new(config: SasRecConfig, params: &mut Params, init: &mut Init) -> Result<Self> {
        let d = config.hidden;
        let item_emb = params.add("item_emb", init.item_table(config.num_items, d)?)?;
        let pos_emb = params.add("pos_emb", init.xavier(config.max_len, d)?)?;
        let mut blocks = Vec::new();
        for i in 0..config.layers {
            let n = |s: &str| format!("blocks.{i}.{s}");
            blocks.push(Block {
                ln_attn: LayerNorm::new(params, init, &n("ln_attn"), d)?,
                attn: Attention {
                    q: Linear::new(params, init, &n("attn.q"), d, d)?,
                    k: Linear::new(params, init, &n("attn.k"), d, d)?,
                    v: Linear::new(params, init, &n("attn.v"), d, d)?,
                    o: Linear::new(params, init, &n("attn.o"), d, d)?,
                    heads: config.heads,
                },
                ln_ff: LayerNorm::new(params, init, &n("ln_ff"), d)?,
                ff1: Linear::new(params, init, &n("ff1"), d, d)?,
                ff2: Linear::new(params, init, &n("ff2"), d, d)?,
            });
        }
        let ln_final = LayerNorm::new(params, init, "ln_final", d)?;
        Ok(SasRec {
            config,
            item_emb,
            pos_emb,
            blocks,
            ln_final,
        })
    }

    /// The item table `E [N + 1, d]` used for input and scoring.
    pub fn item_table(&self) -> &Tensor {
        &self.item_emb
    }

    /// Hidden states `[B, L, d]` at every position.
    pub fn forward(
        &self,
        batch: &SeqBatch,
        item_table: &Tensor,
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        let (b, l, d) = (batch.b, batch.l, self.config.hidden);
        if l > self.config.max_len {
            candle_core::bail!("window {l} exceeds max_len {}", self.config.max_len);
        }
        let p = self.config.dropout;
        let pad = batch.pad_mask()?;
        let mask = OnceCell::new(); // built only on the composed (non-CPU) path
        let emb = item_table
            .index_select(&batch.tensor.flatten_all()?, 0)?
            .reshape((b, l, d))?;
        let pos = self.pos_emb.narrow(0, self.config.max_len - l, l)?;
        let mut x = (emb * (d as f64).sqrt())?.broadcast_add(&pos)?;
        x = ctx.dropout(&x, p)?.broadcast_mul(&pad)?;
        for blk in &self.blocks {
            let q = blk.ln_attn.forward(&x)?;
            let a = blk.attn.forward(&q, &x, batch, &mask, p, ctx)?;
            x = blk.ln_ff.forward(&(q + a)?)?;
            let h = ctx.dropout(&blk.ff1.forward(&x)?.relu()?, p)?;
            let f = ctx.dropout(&blk.ff2.forward(&h)?, p)?;
            x = (x + f)?.broadcast_mul(&pad)?;
        }
        self.ln_final.forward(&x)
    }
}
