//! GRU4Rec as in the DLLM2Rec reference: item embeddings, dropout, one GRU
//! layer, the last hidden state as the sequence representation.
//!
//! With left padding the GRU would otherwise run over padding first and
//! drift from its zero state, so padded steps keep the previous state
//! (`h_t = m_t·h'_t + (1 − m_t)·h_{t−1}`): the representation of a history
//! does not depend on how much padding precedes it.

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::batch::{ForwardCtx, SeqBatch};
use crate::net::{Layout, StudentNet, StudentSpec, ITEM_TABLE};
use crate::ops::linear;
use crate::params::{Init, Params};

/// GRU4Rec hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gru4RecConfig {
    /// Catalogue size `N`.
    pub num_items: usize,
    /// Embedding and hidden size.
    pub hidden: usize,
    /// Dropout on the input embeddings.
    pub dropout: f64,
    /// Window length.
    pub max_len: usize,
}

/// The GRU4Rec model.
pub struct Gru4Rec {
    /// Hyper-parameters.
    pub config: Gru4RecConfig,
    item_emb: Tensor,
    w_ih: Tensor,
    b_ih: Tensor,
    w_hh: Tensor,
    b_hh: Tensor,
}

impl Gru4Rec {
    /// Builds the model with parameters registered in `params`.
    pub fn new(config: Gru4RecConfig, params: &mut Params, init: &mut Init) -> Result<Self> {
        let d = config.hidden;
        let item_emb = params.add(ITEM_TABLE, init.item_table(config.num_items, d)?)?;
        let bound = 1.0 / (d as f64).sqrt();
        // PyTorch layout: gates stacked as [reset, update, new].
        let w_ih = params.add("gru.weight_ih", init.uniform(&[3 * d, d], bound)?)?;
        let w_hh = params.add("gru.weight_hh", init.uniform(&[3 * d, d], bound)?)?;
        let b_ih = params.add("gru.bias_ih", init.uniform(&[3 * d], bound)?)?;
        let b_hh = params.add("gru.bias_hh", init.uniform(&[3 * d], bound)?)?;
        Ok(Gru4Rec {
            config,
            item_emb,
            w_ih,
            b_ih,
            w_hh,
            b_hh,
        })
    }

    /// Hidden states `[B, L, d]` after each step.
    pub fn forward(
        &self,
        batch: &SeqBatch,
        item_table: &Tensor,
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        let (b, l, d) = (batch.b, batch.l, self.config.hidden);
        let emb = item_table
            .index_select(&batch.tensor.flatten_all()?, 0)?
            .reshape((b, l, d))?;
        let x = ctx.dropout(&emb, self.config.dropout)?;
        let gi = linear(&x, &self.w_ih, &self.b_ih)?; // [B, L, 3d]
        let pad = batch.pad_mask()?; // [B, L, 1]
        let mut h = Tensor::zeros((b, d), candle_core::DType::F32, x.device())?;
        let mut outs = Vec::with_capacity(l);
        for t in 0..l {
            let gi_t = gi.narrow(1, t, 1)?.squeeze(1)?;
            let gh = linear(&h, &self.w_hh, &self.b_hh)?;
            let r = (gi_t.narrow(1, 0, d)? + gh.narrow(1, 0, d)?)?
                .apply(&candle_nn::Activation::Sigmoid)?;
            let z = (gi_t.narrow(1, d, d)? + gh.narrow(1, d, d)?)?
                .apply(&candle_nn::Activation::Sigmoid)?;
            let n = (gi_t.narrow(1, 2 * d, d)? + (r * gh.narrow(1, 2 * d, d)?)?)?.tanh()?;
            let h_new = ((z.ones_like()? - &z)? * n)?.add(&(z * &h)?)?;
            let m = pad.narrow(1, t, 1)?.squeeze(1)?; // [B, 1]
            h = (h_new.broadcast_mul(&m)? + h.broadcast_mul(&(1.0 - &m)?)?)?;
            outs.push(h.clone());
        }
        Tensor::stack(&outs, 1)
    }
}

impl StudentNet for Gru4Rec {
    fn build(spec: &StudentSpec, params: &mut Params, init: &mut Init) -> Result<Self> {
        Gru4Rec::new(
            Gru4RecConfig {
                num_items: spec.num_items,
                hidden: spec.hidden,
                dropout: spec.dropout,
                max_len: spec.max_len,
            },
            params,
            init,
        )
    }

    /// Two gate matrices of `3·hidden × hidden`.
    fn layout(spec: &StudentSpec) -> Layout {
        Layout {
            at_least: 6 * spec.hidden * spec.hidden,
            ..Layout::default()
        }
    }

    fn name(&self) -> &'static str {
        "gru4rec"
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
