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

/// Parameter name of every student's item table.
pub const ITEM_TABLE: &str = "item_emb";

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

    /// A copy of this student whose item table (inputs and scoring) is
    /// `table [N + 1, d]`; every other parameter is copied. Distillation
    /// exports its folded table this way, so the deployed model is a plain
    /// student.
    pub fn with_item_table(&self, table: &Tensor) -> Result<Student> {
        let out = Student::new(&self.spec, 0, &self.device)?;
        let mut tensors = self.params.tensors();
        let want = self.item_table().dims().to_vec();
        if table.dims() != want.as_slice() {
            candle_core::bail!(
                "item table has shape {:?}, the student expects {:?}",
                table.dims(),
                want
            );
        }
        tensors.insert(ITEM_TABLE.to_string(), table.detach());
        out.params
            .load_from(&tensors, std::path::Path::new("<exported student>"))?;
        Ok(out)
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
            Net::Caser(m) => m.represent(batch, table, ctx),
            // left padding: the newest item is always at the last position
            _ => self
                .hidden_all(batch, table, ctx)?
                .narrow(1, batch.l - 1, 1)?
                .squeeze(1)?
                .contiguous(),
        }
    }

    /// Sequence representations `[B, d]` and scores `[B, N + 1]` (column 0
    /// = −∞) of each history at inference; selection policies need both.
    pub fn represent_and_score(&self, histories: &[&[ItemId]]) -> Result<(Vec<f32>, Vec<f32>)> {
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
        Ok((rep.flatten_all()?.to_vec1::<f32>()?, v))
    }

    /// Scores `[B, N + 1]` of every item for each history (inference, no
    /// dropout); column 0 is padding and is set to −∞.
    pub fn score_histories(&self, histories: &[&[ItemId]]) -> Result<Vec<f32>> {
        Ok(self.represent_and_score(histories)?.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: StudentKind, max_len: usize) -> StudentSpec {
        StudentSpec {
            kind,
            num_items: 20,
            hidden: 8,
            layers: 1,
            heads: 2,
            dropout: 0.1,
            max_len,
        }
    }

    #[test]
    fn gru4rec_representation_ignores_left_padding() {
        // Same seed and sizes: identical weights; only the amount of padding differs.
        let dev = Device::Cpu;
        let a = Student::new(&spec(StudentKind::Gru4rec, 4), 3, &dev).unwrap();
        let b = Student::new(&spec(StudentKind::Gru4rec, 9), 3, &dev).unwrap();
        let h: &[ItemId] = &[5, 7, 2];
        let (sa, sb) = (
            a.score_histories(&[h]).unwrap(),
            b.score_histories(&[h]).unwrap(),
        );
        for (x, y) in sa.iter().zip(&sb).skip(1) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
        assert_eq!(sa[0], f32::NEG_INFINITY, "column 0 is padding");
    }

    #[test]
    fn sasrec_scores_depend_on_the_newest_item() {
        let dev = Device::Cpu;
        let s = Student::new(&spec(StudentKind::Sasrec, 6), 1, &dev).unwrap();
        let one = s.score_histories(&[&[3, 4]]).unwrap();
        let two = s.score_histories(&[&[3, 4], &[3, 9]]).unwrap();
        let same = one
            .iter()
            .zip(&two[..21])
            .all(|(x, y)| x == y || (x - y).abs() < 1e-5);
        assert!(same, "rows are independent of their batch");
        assert_ne!(&two[..21], &two[21..]);
    }
}
