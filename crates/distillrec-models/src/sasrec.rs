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
use crate::net::{Layout, StudentNet, StudentSpec, ITEM_TABLE};
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

    /// The same attention for the last query only: `query [B, 1, d]` (the
    /// last position's) against every key of `kv [B, L, d]` → `[B, 1, d]`.
    /// One query row is a handful of small composed ops.
    fn forward_last(
        &self,
        query: &Tensor,
        kv: &Tensor,
        mask: &AttentionMask,
        p: f64,
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        let (b, l, d) = kv.dims3()?;
        let (h, dh) = (self.heads, d / self.heads);
        let split = |t: Tensor, n: usize| -> Result<Tensor> {
            t.reshape((b, n, h, dh))?.transpose(1, 2)?.contiguous()
        };
        let q = split(self.q.forward(query)?, 1)?; // [B, h, 1, dh]
        let k = split(self.k.forward(kv)?, l)?; // [B, h, L, dh]
        let v = split(self.v.forward(kv)?, l)?;
        let scores = (q.matmul(&k.t()?.contiguous()?)? / (dh as f64).sqrt())?
            .broadcast_add(&mask.last_row_additive()?)?; // [B, h, 1, L]
        let att = ctx.dropout(&ops::softmax_last(&scores)?, p)?;
        let out = att.matmul(&v)?; // [B, h, 1, dh]
        self.o.forward(&out.transpose(1, 2)?.reshape((b, 1, d))?)
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

    /// [`Block::forward`] at the last position only → `[B, 1, d]`: the keys
    /// and values still come from every position, but the query, the
    /// feed-forward network and both layer norms run on one position. The
    /// `last` objective and inference read nothing else from the last block.
    fn forward_last(
        &self,
        x: &Tensor,
        mask: &AttentionMask,
        pad_last: &Tensor,
        p: f64,
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        let l = x.dim(1)?;
        let q = self
            .ln_attn
            .forward(&x.narrow(1, l - 1, 1)?.contiguous()?)?;
        let a = self.attn.forward_last(&q, x, mask, p, ctx)?;
        let x = self.ln_ff.forward(&(q + a)?)?;
        let f = self.ffn(&x, p, ctx)?;
        (x + f)?.broadcast_mul(pad_last)
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
        let (x, mask, pad) = self.embed(batch, item_table, ctx)?;
        let mut x = x;
        for blk in &self.blocks {
            x = blk.forward(&x, &mask, &pad, self.config.dropout, ctx)?;
        }
        self.ln_final.forward(&x)
    }

    /// The hidden state `[B, d]` at the last position, the same value as
    /// [`SasRec::forward`]'s last column (equal up to float rounding; the
    /// dropout masks of the last block are drawn for one position): the
    /// last block runs for that position only.
    pub fn forward_last(
        &self,
        batch: &SeqBatch,
        item_table: &Tensor,
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        let (mut x, mask, pad) = self.embed(batch, item_table, ctx)?;
        let p = self.config.dropout;
        let Some((last, rest)) = self.blocks.split_last() else {
            let l = batch.l;
            return self
                .ln_final
                .forward(&x.narrow(1, l - 1, 1)?.squeeze(1)?.contiguous()?);
        };
        for blk in rest {
            x = blk.forward(&x, &mask, &pad, p, ctx)?;
        }
        let pad_last = pad.narrow(1, batch.l - 1, 1)?;
        let x = last.forward_last(&x, &mask, &pad_last, p, ctx)?;
        self.ln_final.forward(&x.squeeze(1)?)
    }

    /// The block input `[B, L, d]` (scaled item embedding + position, dropout,
    /// padding zeroed), the attention mask and the padding mask `[B, L, 1]`.
    fn embed(
        &self,
        batch: &SeqBatch,
        item_table: &Tensor,
        ctx: &mut ForwardCtx,
    ) -> Result<(Tensor, AttentionMask, Tensor)> {
        let (b, l, d) = (batch.b, batch.l, self.config.hidden);
        if l > self.config.max_len {
            candle_core::bail!("window {l} exceeds max_len {}", self.config.max_len);
        }
        let pad = batch.pad_mask()?;
        let mask = AttentionMask::new(batch);
        let emb = item_table
            .index_select(&batch.tensor.flatten_all()?, 0)?
            .reshape((b, l, d))?;
        let pos = self.pos_emb.narrow(0, self.config.max_len - l, l)?;
        let x = (emb * (d as f64).sqrt())?.broadcast_add(&pos)?;
        let x = ctx.dropout(&x, self.config.dropout)?.broadcast_mul(&pad)?;
        Ok((x, mask, pad))
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

    /// `pos_emb [max_len, hidden]`, blocks `0..layers`, each with q, k, v,
    /// o and two feed-forward matrices of `hidden²`.
    fn layout(spec: &StudentSpec) -> Layout {
        let (l, h) = (spec.max_len, spec.hidden);
        Layout {
            exact: vec![("pos_emb", vec![l, h], "spec.max_len and spec.hidden")],
            blocks: Some(("blocks.", spec.layers, "spec.layers")),
            at_least: l * h + spec.layers * 6 * h * h,
        }
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

    fn represent(&self, batch: &SeqBatch, table: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        self.forward_last(batch, table, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::max_diff;
    use candle_core::{Device, Var};

    /// The last-position path equals the last column of the full forward
    /// pass, in value and in every parameter's gradient (no dropout), with
    /// padded rows, for 1 and 2 heads and 1 and 2 blocks.
    #[test]
    fn last_position_path_equals_the_full_forward() {
        let dev = Device::Cpu;
        for (heads, layers) in [(1, 2), (2, 1), (2, 2)] {
            let mut params = Params::default();
            let mut init = Init::new(3, &dev);
            let cfg = SasRecConfig {
                num_items: 30,
                hidden: 8,
                layers,
                heads,
                dropout: 0.0,
                max_len: 6,
            };
            let m = SasRec::new(cfg, &mut params, &mut init).unwrap();
            // rows with left padding, one fully padded but for the last item
            let ids = vec![0, 0, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6, 0, 0, 0, 0, 0, 7];
            let batch = SeqBatch::from_ids(ids, 6, &dev).unwrap();
            let table = m.item_emb.clone();
            let mut rng = rand::SeedableRng::seed_from_u64(1);
            let full = m
                .forward(&batch, &table, &mut ForwardCtx::train(&mut rng))
                .unwrap()
                .narrow(1, 5, 1)
                .unwrap()
                .squeeze(1)
                .unwrap();
            let last = m
                .forward_last(&batch, &table, &mut ForwardCtx::train(&mut rng))
                .unwrap();
            assert!(
                max_diff(&full, &last) < 1e-5,
                "values ({heads} heads, {layers} blocks)"
            );
            let probe = Tensor::from_vec(
                (0..24).map(|i| (i as f32 * 0.37).sin()).collect(),
                (3, 8),
                &dev,
            )
            .unwrap();
            let gf = (&full * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let gl = (&last * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let vars: Vec<(String, Var)> =
                params.vars().map(|(k, v)| (k.clone(), v.clone())).collect();
            for (name, v) in &vars {
                let (a, b) = (gf.get(v.as_tensor()), gl.get(v.as_tensor()));
                match (a, b) {
                    (Some(a), Some(b)) => assert!(
                        max_diff(a, b) < 1e-5,
                        "d {name} ({heads} heads, {layers} blocks)"
                    ),
                    (a, b) => assert_eq!(
                        a.is_some(),
                        b.is_some(),
                        "d {name} present in one path only"
                    ),
                }
            }
        }
    }
}
