//! SASRec (Kang & McAuley, ICDM 2018): item + learned position embeddings,
//! `layers` blocks of causal multi-head self-attention and a point-wise
//! feed-forward network, residuals and layer norm, padding masked.
//!
//! The block follows the authors' code (and the PyTorch reference in
//! `../shared/bench`): `Q = LN(x)`, `x = LN(Q + MHA(Q, x, x))`,
//! `x = (x + FFN(x)) · mask`, and a final layer norm.

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::batch::{ForwardCtx, SeqBatch};
use crate::net::{StudentNet, StudentSpec, ITEM_TABLE};
use crate::ops::{self, AttentionMask};
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
        ops::layer_norm(x, &self.gamma, &self.beta, LN_EPS)
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
        ops::linear(x, &self.w, &self.b)
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
    /// `MHA(query, kv, kv)`: project, split heads, attend, merge, project.
    fn forward(
        &self,
        query: &Tensor,
        kv: &Tensor,
        mask: &AttentionMask,
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
        let out = ops::attention(&q, &k, &v, mask, p, ctx)?;
        self.o.forward(&out.transpose(1, 2)?.reshape((b, l, d))?)
    }
}

/// One SASRec block: attention and a point-wise feed-forward network.
struct Block {
    ln_attn: LayerNorm,
    attn: Attention,
    ln_ff: LayerNorm,
    ff1: Linear,
    ff2: Linear,
}

impl Block {
    /// `Q = LN(x)`, `x = LN(Q + MHA(Q, x, x))`, `x = (x + FFN(x)) · pad`.
    fn forward(
        &self,
        x: &Tensor,
        mask: &AttentionMask,
        pad: &Tensor,
        p: f64,
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        let q = self.ln_attn.forward(x)?;
        let a = self.attn.forward(&q, x, mask, p, ctx)?;
        let x = self.ln_ff.forward(&(q + a)?)?;
        let f = self.ffn(&x, p, ctx)?;
        (x + f)?.broadcast_mul(pad)
    }

    /// `FFN(x) = dropout(W₂ · dropout(ReLU(W₁ x + b₁)) + b₂)`.
    fn ffn(&self, x: &Tensor, p: f64, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let h = ctx.dropout(&self.ff1.forward(x)?.relu()?, p)?;
        ctx.dropout(&self.ff2.forward(&h)?, p)
    }
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

impl SasRec {
    /// Builds the model with parameters registered in `params`.
    pub fn new(config: SasRecConfig, params: &mut Params, init: &mut Init) -> Result<Self> {
        let d = config.hidden;
        let item_emb = params.add(ITEM_TABLE, init.item_table(config.num_items, d)?)?;
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
        let mask = AttentionMask::new(batch);
        let emb = item_table
            .index_select(&batch.tensor.flatten_all()?, 0)?
            .reshape((b, l, d))?;
        let pos = self.pos_emb.narrow(0, self.config.max_len - l, l)?;
        let mut x = (emb * (d as f64).sqrt())?.broadcast_add(&pos)?;
        x = ctx.dropout(&x, p)?.broadcast_mul(&pad)?;
        for blk in &self.blocks {
            x = blk.forward(&x, &mask, &pad, p, ctx)?;
        }
        self.ln_final.forward(&x)
    }
}

impl StudentNet for SasRec {
    fn build(spec: &StudentSpec, params: &mut Params, init: &mut Init) -> Result<Self> {
        SasRec::new(
            SasRecConfig {
                num_items: spec.num_items,
                hidden: spec.hidden,
                layers: spec.layers,
                heads: spec.heads,
                dropout: spec.dropout,
                max_len: spec.max_len,
            },
            params,
            init,
        )
    }

    fn name(&self) -> &'static str {
        "sasrec"
    }

    fn item_table(&self) -> &Tensor {
        &self.item_emb
    }

    fn per_position(&self) -> bool {
        true
    }

    fn hidden_all(&self, batch: &SeqBatch, table: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        self.forward(batch, table, ctx)
    }
}
