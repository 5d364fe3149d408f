//! Caser (Tang & Wang, WSDM 2018) as in the DLLM2Rec reference: the window
//! of item embeddings is an `L × d` image; horizontal convolutions of
//! heights 2..=4 (16 filters each, ReLU, max-pooled over time) and one
//! vertical convolution (a learned weighted sum over positions) are
//! concatenated and passed through dropout; a linear layer maps them to size
//! `d` so that the student scores with its (tied) item table like the others.

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::batch::{ForwardCtx, SeqBatch};
use crate::net::{Layout, StudentNet, StudentSpec, ITEM_TABLE};
use crate::ops::linear;
use crate::params::{Init, Params};

/// Caser hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaserConfig {
    /// Catalogue size `N`.
    pub num_items: usize,
    /// Embedding size.
    pub hidden: usize,
    /// Filters per horizontal height.
    pub filters: usize,
    /// Horizontal filter heights.
    pub heights: Vec<usize>,
    /// Dropout before the output layer.
    pub dropout: f64,
    /// Window length.
    pub max_len: usize,
}

/// The Caser model.
pub struct Caser {
    /// Hyper-parameters.
    pub config: CaserConfig,
    item_emb: Tensor,
    horizontal: Vec<(Tensor, Tensor)>,
    vertical: Tensor,
    vertical_bias: Tensor,
    fc_w: Tensor,
    fc_b: Tensor,
}

impl Caser {
    /// Builds the model with parameters registered in `params`.
    pub fn new(config: CaserConfig, params: &mut Params, init: &mut Init) -> Result<Self> {
        let d = config.hidden;
        let l = config.max_len;
        if config.heights.iter().any(|&h| h == 0 || h > l) {
            candle_core::bail!(
                "caser: filter heights {:?} must be in 1..={l} (max_len)",
                config.heights
            );
        }
        let item_emb = params.add(ITEM_TABLE, init.item_table(config.num_items, d)?)?;
        let mut horizontal = Vec::new();
        for &h in &config.heights {
            let fan_in = h * d;
            let w = params.add(
                &format!("conv_h{h}.weight"),
                init.linear_weight(config.filters, fan_in)?,
            )?;
            let b = params.add(
                &format!("conv_h{h}.bias"),
                init.uniform(&[config.filters], 1.0 / (fan_in as f64).sqrt())?,
            )?;
            horizontal.push((w, b));
        }
        let vertical = params.add(
            "conv_v.weight",
            init.uniform(&[l, 1], 1.0 / (l as f64).sqrt())?,
        )?;
        let vertical_bias =
            params.add("conv_v.bias", init.uniform(&[1], 1.0 / (l as f64).sqrt())?)?;
        let total = config.filters * config.heights.len() + d;
        let fc_w = params.add("fc.weight", init.linear_weight(d, total)?)?;
        let fc_b = params.add("fc.bias", init.uniform(&[d], 1.0 / (total as f64).sqrt())?)?;
        Ok(Caser {
            config,
            item_emb,
            horizontal,
            vertical,
            vertical_bias,
            fc_w,
            fc_b,
        })
    }
}

/// Filters per horizontal height (as in the DLLM2Rec reference).
const FILTERS: usize = 16;

impl StudentNet for Caser {
    /// Horizontal heights 2..=4, those that fit in `max_len`.
    fn build(spec: &StudentSpec, params: &mut Params, init: &mut Init) -> Result<Self> {
        Caser::new(
            CaserConfig {
                num_items: spec.num_items,
                hidden: spec.hidden,
                filters: FILTERS,
                heights: (2..=4).filter(|&h| h <= spec.max_len).collect(),
                dropout: spec.dropout,
                max_len: spec.max_len,
            },
            params,
            init,
        )
    }

    /// `conv_v.weight [max_len, 1]`, and `fc.weight` of at least `hidden²`.
    fn layout(spec: &StudentSpec) -> Layout {
        let (l, h) = (spec.max_len, spec.hidden);
        Layout {
            exact: vec![("conv_v.weight", vec![l, 1], "spec.max_len")],
            blocks: None,
            at_least: l + h * h,
        }
    }

    fn name(&self) -> &'static str {
        "caser"
    }

    fn item_table(&self) -> &Tensor {
        &self.item_emb
    }

    /// Pooled convolutions see the whole window at once: no per-position output.
    fn per_position(&self) -> bool {
        false
    }

    /// Horizontal features max-pooled over time and the vertical
    /// feature, concatenated, dropout, then `fc` to size `d`.
    fn represent(
        &self,
        batch: &SeqBatch,
        item_table: &Tensor,
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        let (b, l, d) = (batch.b, batch.l, self.config.hidden);
        if l != self.config.max_len {
            candle_core::bail!(
                "caser needs windows of exactly max_len = {}, got {l}",
                self.config.max_len
            );
        }
        let x = item_table
            .index_select(&batch.tensor.flatten_all()?, 0)?
            .reshape((b, l, d))?;
        let x = x.broadcast_mul(&batch.pad_mask()?)?;
        let mut feats = Vec::new();
        for (&h, (w, bias)) in self.config.heights.iter().zip(&self.horizontal) {
            let steps = l - h + 1;
            // windows of h consecutive embeddings, flattened: [B, steps, h·d]
            let parts: Vec<Tensor> = (0..h)
                .map(|i| x.narrow(1, i, steps))
                .collect::<Result<_>>()?;
            let win = Tensor::cat(&parts, 2)?;
            let conv = linear(&win, w, bias)?.relu()?; // [B, steps, filters]
            feats.push(conv.max(1)?); // max-pool over time
        }
        // vertical convolution: weighted sum over positions -> [B, d]
        let v = x
            .transpose(1, 2)?
            .contiguous()?
            .broadcast_matmul(&self.vertical)?
            .squeeze(2)?;
        feats.push(v.broadcast_add(&self.vertical_bias)?);
        let z = ctx.dropout(&Tensor::cat(&feats, 1)?, self.config.dropout)?;
        linear(&z, &self.fc_w, &self.fc_b)
    }
}
