//! One interface over the three students: build from a config, represent a
//! batch of histories, score the catalogue, and name the model kind so that
//! checkpoints of another kind are refused.

use candle_core::{Device, Result, Tensor};
use serde::{Deserialize, Serialize};

use distillrec_config::{StudentConfig, StudentKind};
use distillrec_data::ItemId;

use crate::batch::{ForwardCtx, SeqBatch};
use crate::caser::{Caser, CaserConfig};
use crate::gru4rec::{Gru4Rec, Gru4RecConfig};
use crate::params::{Init, Params};
use crate::sasrec::{SasRec, SasRecConfig};

/// Everything needed to rebuild a student: kind, sizes, catalogue size.
/// Stored in every checkpoint manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StudentSpec {
    /// Architecture.
    pub kind: StudentKind,
    /// Catalogue size `N`.
    pub num_items: usize,
    /// Embedding size.
    pub hidden: usize,
    /// Blocks (SASRec).
    pub layers: usize,
    /// Heads (SASRec).
    pub heads: usize,
    /// Dropout.
    pub dropout: f64,
    /// Window length.
    pub max_len: usize,
}

impl StudentSpec {
    /// The spec of `config` on a catalogue of `num_items`.
    pub fn from_config(config: &StudentConfig, num_items: usize) -> Self {
        StudentSpec {
            kind: config.model,
            num_items,
            hidden: config.hidden,
            layers: config.layers,
            heads: config.heads,
            dropout: config.dropout,
            max_len: config.max_len,
        }
    }
}

enum Net {
    SasRec(SasRec),
    Gru4Rec(Gru4Rec),
    Caser(Caser),
}

/// A student model with its parameters.
pub struct Student {
    /// How it was built.
    pub spec: StudentSpec,
    /// Its trainable parameters.
    pub params: Params,
    net: Net,
    device: Device,
}

impl Student {
    /// Builds a student with parameters initialised from `seed`.
    pub fn new(spec: &StudentSpec, seed: u64, device: &Device) -> Result<Self> {
        let mut params = Params::default();
        let mut init = Init::new(seed, device);
        let net = match spec.kind {
            StudentKind::Sasrec => Net::SasRec(SasRec::new(
                SasRecConfig {
                    num_items: spec.num_items,
                    hidden: spec.hidden,
                    layers: spec.layers,
                    heads: spec.heads,
                    dropout: spec.dropout,
                    max_len: spec.max_len,
                },
                &mut params,
                &mut init,
            )?),
            StudentKind::Gru4rec => Net::Gru4Rec(Gru4Rec::new(
                Gru4RecConfig {
                    num_items: spec.num_items,
                    hidden: spec.hidden,
                    dropout: spec.dropout,
                    max_len: spec.max_len,
                },
                &mut params,
                &mut init,
            )?),
            StudentKind::Caser => Net::Caser(Caser::new(
                CaserConfig {
                    num_items: spec.num_items,
                    hidden: spec.hidden,
                    filters: 16,
                    heights: (2..=4).filter(|&h| h <= spec.max_len).collect(),
                    dropout: spec.dropout,
                    max_len: spec.max_len,
                },
                &mut params,
                &mut init,
            )?),
        };
        Ok(Student {
            spec: spec.clone(),
            params,
            net,
            device: device.clone(),
        })
    }

    /// The device the parameters live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The model's own item table `E [N + 1, d]` (inputs and scoring).
    pub fn item_table(&self) -> &Tensor {
        match &self.net {
            Net::SasRec(m) => m.item_table(),
            Net::Gru4Rec(m) => m.item_table(),
            Net::Caser(m) => m.item_table(),
        }
    }

    /// Whether the model produces an output at every position
    /// (needed by the `all_positions` objective).
    pub fn has_all_positions(&self) -> bool {
        !matches!(self.net, Net::Caser(_))
    }

    /// Hidden states `[B, L, d]` at every position (SASRec, GRU4Rec).
    pub fn hidden_all(
        &self,
        batch: &SeqBatch,
        table: &Tensor,
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        match &self.net {
            Net::SasRec(m) => m.forward(batch, table, ctx),
            Net::Gru4Rec(m) => m.forward(batch, table, ctx),
            Net::Caser(_) => {
                candle_core::bail!("caser has no per-position output; use objective = \"last\"")
            }
        }
    }

    /// Sequence representation `[B, d]` using `table` as the item table
    /// (distillation passes an augmented table).
    pub fn represent_with(
        &self,
        batch: &SeqBatch,
        table: &Tensor,
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        match &self.net {
            Net::SasRec(m) => m.represent(batch, table, ctx),
            Net::Gru4Rec(m) => m.represent(batch, table, ctx),
            Net::Caser(m) => m.represent(batch, table, ctx),
        }
    }

    /// Scores `[B, N + 1]` of every item for each history (inference, no
    /// dropout); column 0 is padding and is set to −∞.
    pub fn score_histories(&self, histories: &[&[ItemId]]) -> Result<Vec<f32>> {
        let batch =
            SeqBatch::from_histories(histories.iter().copied(), self.spec.max_len, &self.device)?;
        let table = self.item_table();
        let rep = self.represent_with(&batch, table, &mut ForwardCtx::eval())?;
        let scores = rep.matmul(&table.t()?)?;
        let mut v = scores.flatten_all()?.to_vec1::<f32>()?;
        let c = self.spec.num_items + 1;
        for row in v.chunks_mut(c) {
            row[0] = f32::NEG_INFINITY;
        }
        Ok(v)
    }
}
