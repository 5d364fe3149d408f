//! The backbone steps `distillrec bench llm` times on its own: a prefill
//! pass and the plain causal-LM adapter step ([`LmStep`], compared with
//! PEFT). The teacher's steps (`--step teacher | infer`) are timed on the
//! real teacher by `distillrec_teacher::bench`.

use std::time::Instant;

use candle_core::{DType, Tensor};

use crate::adapters::AdapterSet;
use crate::error::{Error, Result};
use crate::lora::AdapterCtx;
use crate::loss::lm_head_loss;
use crate::model::{Model, Target};
use crate::tape;
use distillrec_models::optim::{AdamW, AdamWConfig};

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

/// What `bench llm --step` times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchStep {
    /// One forward over a single row (logits of the last position).
    Prefill,
    /// The causal-LM adapter step.
    Lm,
}

/// The shapes and adapters of a benchmark step (the PyTorch reference
/// `scripts/bench_llm_torch.py` takes the same).
#[derive(Clone, Debug)]
pub struct BenchSpec {
    /// Which step.
    pub step: BenchStep,
    /// Experts (1: plain LoRA).
    pub experts: usize,
    /// Total adapter rank.
    pub rank: usize,
    /// LoRA α.
    pub alpha: f64,
    /// Adapted projections.
    pub targets: Vec<Target>,
    /// Rows per batch.
    pub batch: usize,
    /// Positions per row (padding included).
    pub tokens: usize,
    /// Timed repetitions (the median is reported).
    pub repeats: usize,
}

/// Token ids of a batch and its real-token mask (`true` = real).
#[derive(Clone, Debug)]
pub struct Batch {
    /// Ids per row, all rows of equal length (padding included).
    pub ids: Vec<Vec<u32>>,
    /// `true` for real tokens.
    pub mask: Vec<Vec<bool>>,
}

impl Batch {
    /// Rows.
    pub fn rows(&self) -> usize {
        self.ids.len()
    }

    /// Positions per row.
    pub fn len(&self) -> usize {
        self.ids.first().map_or(0, Vec::len)
    }

    /// Whether the batch has no positions.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The input embeddings `[rows·len, hidden]` of the ids.
    pub fn embeds(&self, model: &Model) -> Result<Vec<f32>> {
        let (b, t) = (self.rows(), self.len());
        let flat: Vec<u32> = self.ids.iter().flatten().copied().collect();
        let ids = Tensor::from_vec(flat, (b, t), model.device())?;
        Ok(model
            .embed(&ids)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    }

    /// `(row index in the flat batch, next token)` for every position whose
    /// next token is real (the pairs of the causal-LM loss, as Hugging Face
    /// counts them with padded labels ignored).
    pub fn next_token_pairs(&self) -> Vec<(usize, u32)> {
        let t = self.len();
        let mut out = Vec::new();
        for (r, (ids, m)) in self.ids.iter().zip(&self.mask).enumerate() {
            for j in 0..t.saturating_sub(1) {
                if m[j + 1] {
                    out.push((r * t + j, ids[j + 1]));
                }
            }
        }
        out
    }

    /// For each row, the flat index of its last real token.
    pub fn last_rows(&self) -> Result<Vec<usize>> {
        let t = self.len();
        Ok(Model::last_real_index(&self.mask)?
            .into_iter()
            .enumerate()
            .map(|(r, j)| r * t + j)
            .collect())
    }
}

fn adam_step(
    opt: &mut AdamW,
    adapters: &mut AdapterSet<f32>,
    grads: &AdapterSet<f32>,
) -> Result<()> {
    let mut params: Vec<&mut [f32]> = Vec::new();
    for w in adapters.weights_mut() {
        params.push(&mut w.a);
        params.push(&mut w.b);
    }
    let gs: Vec<&[f32]> = grads.weights().flat_map(|w| [&w.a[..], &w.b[..]]).collect();
    opt.step(&mut params, &gs)
        .map_err(|e| Error::Input(e.to_string()))?;
    Ok(())
}

fn adam_for(adapters: &AdapterSet<f32>, lr: f64, wd: f64) -> AdamW {
    let sizes: Vec<usize> = adapters
        .weights()
        .flat_map(|w| [w.a.len(), w.b.len()])
        .collect();
    AdamW::new(AdamWConfig::new(lr, wd, 0.0), &sizes)
}

/// The causal-LM step: mean next-token cross-entropy, backward through
/// the tape, AdamW on the adapters.
pub struct LmStep {
    /// The adapters being trained.
    pub adapters: AdapterSet<f32>,
    opt: AdamW,
}

impl LmStep {
    /// Adapters (`experts`, total `rank`, `alpha`) on `targets` of every
    /// layer, AdamW with learning rate `lr` (weight decay 0.01).
    pub fn new(
        model: &Model,
        targets: &[Target],
        (experts, rank, alpha): (usize, usize, f64),
        lr: f64,
        seed: u64,
    ) -> Result<LmStep> {
        let adapters = AdapterSet::new(model, targets, experts, rank, alpha, seed)?;
        let opt = adam_for(&adapters, lr, 0.01);
        Ok(LmStep { adapters, opt })
    }

    /// One step on `batch`; returns the loss.
    pub fn step(&mut self, model: &Model, batch: &Batch) -> Result<f64> {
        let x = batch.embeds(model)?;
        let (hidden, tp) = tape::forward(model, &self.adapters, &x, &batch.mask, None)?;
        let pairs = batch.next_token_pairs();
        let (loss, dh) = lm_head_loss(model, &hidden, &pairs)?;
        let g = tape::backward(model, &self.adapters, tp, &dh)?;
        adam_step(&mut self.opt, &mut self.adapters, &g.adapters)?;
        Ok(loss)
    }
}

/// The benchmark batch: row `r`, position `j` holds id `((r·T + j)·997 +
/// 13) mod vocab`, left-padded with `(r·5) mod 17` pads (id 0).
pub fn bench_batch(rows: usize, tokens: usize, vocab: usize) -> Batch {
    let mut ids = Vec::with_capacity(rows);
    let mut mask = Vec::with_capacity(rows);
    for r in 0..rows {
        let pad = if rows > 1 { (r * 5) % 17 } else { 0 };
        ids.push(
            (0..tokens)
                .map(|j| {
                    if j < pad {
                        0
                    } else {
                        (((r * tokens + j) * 997 + 13) % vocab) as u32
                    }
                })
                .collect(),
        );
        mask.push((0..tokens).map(|j| j >= pad).collect());
    }
    Batch { ids, mask }
}

/// Median seconds of `spec.repeats` runs of `spec.step` on `model`, after
/// one warm-up run.
pub fn time_step(model: &Model, spec: &BenchSpec) -> Result<f64> {
    if spec.tokens < 18 || spec.batch == 0 || spec.repeats == 0 {
        return Err(Error::Input(
            "bench llm needs --tokens >= 18 (17 pads at most, then 2 real tokens), --batch >= 1 and --repeats >= 1".into(),
        ));
    }
    let vocab = model.config().vocab_size;
    let mut run: Box<dyn FnMut() -> Result<()>> = match spec.step {
        BenchStep::Prefill => {
            let ids = bench_ids(spec.tokens, vocab);
            Box::new(move || prefill(model, &ids).map(|_| ()))
        }
        BenchStep::Lm => {
            let batch = bench_batch(spec.batch, spec.tokens, vocab);
            let mut st = LmStep::new(
                model,
                &spec.targets,
                (spec.experts, spec.rank, spec.alpha),
                1e-4,
                0,
            )?;
            Box::new(move || st.step(model, &batch).map(|_| ()))
        }
    };
    run()?;
    let mut secs = Vec::with_capacity(spec.repeats);
    for _ in 0..spec.repeats {
        let t = Instant::now();
        run()?;
        secs.push(t.elapsed().as_secs_f64());
    }
    secs.sort_by(f64::total_cmp);
    Ok(secs[secs.len() / 2])
}
