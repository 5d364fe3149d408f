//! The pieces `distillrec bench llm` times: a prefill pass and one LoRA
//! training step (forward, backward, AdamW on the adapters).

use candle_core::Tensor;
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

use crate::error::{Error, Result};
use crate::lora::AdapterCtx;
use crate::model::{Model, Target};

/// Deterministic benchmark token ids `(i * 997 + 13) mod vocab` (the PyTorch
/// script uses the same formula).
pub fn bench_ids(n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 997 + 13) % vocab) as u32).collect()
}

/// One prefill pass over `ids` (one row): hidden states of every position and
/// the logits of the last one, as a generation prefill computes them.
pub fn prefill(model: &Model, ids: &[u32]) -> Result<Tensor> {
    let t = Tensor::from_vec(ids.to_vec(), (1, ids.len()), model.device())?;
    let h = model.forward_hidden(&model.embed(&t)?, None, None)?;
    model.logits(&h.narrow(1, ids.len() - 1, 1)?)
}

/// Causal-LM loss (mean cross-entropy of each next token) of one row of ids.
pub fn lm_loss(model: &Model, ids: &[u32], ctx: &AdapterCtx) -> Result<Tensor> {
    if ids.len() < 2 {
        return Err(Error::Input(
            "need at least 2 tokens for a language-model loss".into(),
        ));
    }
    let n = ids.len();
    let t = Tensor::from_vec(ids.to_vec(), (1, n), model.device())?;
    let h = model.forward_hidden_with(&model.embed(&t)?, None, None, ctx)?;
    let logits = model.logits(&h.narrow(1, 0, n - 1)?)?.squeeze(0)?;
    Ok(crate::ops::cross_entropy(&logits, &ids[1..])?)
}

/// A model with plain LoRA on some targets and an AdamW optimiser over the adapters.
pub struct LoraTrainer {
    opt: AdamW,
}

impl LoraTrainer {
    /// Attaches LoRA (`rank`, `alpha`) to `targets` of every layer of `model`.
    pub fn new(
        model: &mut Model,
        targets: &[Target],
        rank: usize,
        alpha: f64,
        lr: f64,
    ) -> Result<LoraTrainer> {
        let vars = model.add_lora(targets, rank, alpha, 0)?;
        let opt = AdamW::new(
            vars,
            ParamsAdamW {
                lr,
                ..Default::default()
            },
        )?;
        Ok(LoraTrainer { opt })
    }

    /// One step on `ids`: forward, backward, AdamW. Returns the loss.
    pub fn step(&mut self, model: &Model, ids: &[u32]) -> Result<f32> {
        let ctx = AdapterCtx {
            gate: None,
            train: true,
        };
        let loss = lm_loss(model, ids, &ctx)?;
        self.opt.backward_step(&loss)?;
        Ok(loss.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?)
    }
}
