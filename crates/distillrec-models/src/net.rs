//! The interface every student network implements, in the manner of
//! RecBole's model zoo: a model is one file with a [`StudentNet`] impl, plus
//! one registration line in `student.rs`. The trainer, distillation and
//! selection ask the net what it supports instead of matching its kind.

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

use distillrec_config::{StudentConfig, StudentKind};

use crate::batch::{ForwardCtx, SeqBatch};
use crate::params::{Init, Params};

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

/// What a checkpoint of a net holds beyond its item table, known from the
/// spec alone: the loader checks a weights file against it before building
/// the net, so a manifest cannot make it allocate more than the file holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Layout {
    /// Tensors whose shape the spec fixes: name, shape, and the spec keys
    /// that fix it (for the error message).
    pub exact: Vec<(&'static str, Vec<usize>, &'static str)>,
    /// Numbered blocks `<prefix><i>.…`: the file must hold exactly blocks
    /// `0..count`; `(prefix, count, spec key)`.
    pub blocks: Option<(&'static str, usize, &'static str)>,
    /// Values the net allocates at least, beyond the item table.
    pub at_least: usize,
}

/// A student network: maps left-padded histories `[B, L]` (the newest item
/// at position `L − 1`) to representations of size `d`, reading items from
/// an item table that the caller passes (distillation passes an augmented
/// one). Scores are `rep · Eᵀ` with the net's own table `E`.
///
/// Parameters are registered by [`StudentNet::build`] in a [`Params`] under
/// fixed names (the checkpoint keys: renaming one breaks old checkpoints);
/// the item table is named [`ITEM_TABLE`].
pub trait StudentNet: Send + Sync {
    /// Builds the net for `spec`, registering its parameters in `params`
    /// (names as above) with values drawn from `init` in a fixed order.
    fn build(spec: &StudentSpec, params: &mut Params, init: &mut Init) -> Result<Self>
    where
        Self: Sized;

    /// What a checkpoint of this net holds for `spec` (see [`Layout`]).
    fn layout(spec: &StudentSpec) -> Layout
    where
        Self: Sized;

    /// Name in messages (the config's `student.model`).
    fn name(&self) -> &'static str;

    /// The net's own item table `E [N + 1, d]` (inputs and scoring).
    fn item_table(&self) -> &Tensor;

    /// Whether [`StudentNet::hidden_all`] gives an output at every position
    /// (needed by the `all_positions` objective).
    fn per_position(&self) -> bool;

    /// Hidden states `[B, L, d]` at every position, reading items from
    /// `table`; an error for nets without per-position output.
    fn hidden_all(&self, batch: &SeqBatch, table: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let _ = (batch, table, ctx);
        candle_core::bail!(
            "{} has no per-position output; use objective = \"last\"",
            self.name()
        )
    }

    /// Sequence representation `[B, d]`, reading items from `table`. By
    /// default the hidden state at the last position (left padding: the
    /// newest item is always there).
    fn represent(&self, batch: &SeqBatch, table: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        self.hidden_all(batch, table, ctx)?
            .narrow(1, batch.l - 1, 1)?
            .squeeze(1)?
            .contiguous()
    }
}
