//! The pieces `distillrec bench llm` times: a prefill pass, and the steps
//! the teacher runs, as [`crate::steps`] runs them: the causal-LM adapter
//! step, the ranking step (MoE-LoRA with a per-sample gate, ranking loss
//! over an item table) and batched scoring with top-K.

use candle_core::Tensor;
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::adapters::AdapterSet;
use crate::error::{Error, Result};
use crate::lora::AdapterCtx;
use crate::model::{Model, Target};
use crate::steps::{score_top_k, Batch, Gate, LmStep, RankingHead, RankingStep};

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

/// What `bench llm --step` times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchStep {
    /// One forward over a single row (logits of the last position).
    Prefill,
    /// The causal-LM adapter step.
    Lm,
    /// The teacher's ranking step.
    Teacher,
    /// Batched scoring against the item table with top-K.
    Infer,
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
    /// Item-table size of the ranking head.
    pub items: usize,
    /// K of the top-K.
    pub topk: usize,
    /// Timed repetitions (the median is reported).
    pub repeats: usize,
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

/// Uniform values of unit variance times `scale` (weights and features of
/// the benchmark; their distribution does not change its speed).
fn normal(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    let b = 3f32.sqrt();
    (0..n).map(|_| rng.gen_range(-b..b) * scale).collect()
}

/// Median seconds of `spec.repeats` runs of `spec.step` on `model`, after
/// one warm-up run.
pub fn time_step(model: &Model, spec: &BenchSpec) -> Result<f64> {
    if spec.tokens < 18 || spec.batch == 0 || spec.repeats == 0 {
        return Err(Error::Input(
            "bench llm needs --tokens >= 18 (17 pads at most, then 2 real tokens), --batch >= 1 and --repeats >= 1".into(),
        ));
    }
    if spec.topk == 0 || spec.topk > spec.items {
        return Err(Error::Input(format!(
            "--topk must be in 1..=--items ({})",
            spec.items
        )));
    }
    let vocab = model.config().vocab_size;
    let h = model.config().hidden_size;
    let batch = bench_batch(spec.batch, spec.tokens, vocab);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let dev = model.device().clone();
    let adapters =
        || AdapterSet::<f32>::new(model, &spec.targets, spec.experts, spec.rank, spec.alpha, 0);
    let gate_parts = |rng: &mut ChaCha8Rng| -> Result<Option<(Gate, Tensor)>> {
        if spec.experts == 1 {
            return Ok(None);
        }
        let z = Tensor::from_vec(normal(rng, spec.batch * 64, 1.0), (spec.batch, 64), &dev)?;
        let wg = Tensor::from_vec(
            normal(rng, 64 * spec.experts, 0.02),
            (64, spec.experts),
            &dev,
        )?;
        Ok(Some((
            Gate {
                wg: candle_core::Var::from_tensor(&wg)?,
            },
            z,
        )))
    };
    let head = |rng: &mut ChaCha8Rng| -> Result<RankingHead> {
        RankingHead::new(Tensor::from_vec(
            normal(rng, spec.items * h, 0.02),
            (spec.items, h),
            &dev,
        )?)
    };
    let mut run: Box<dyn FnMut() -> Result<()>> = match spec.step {
        BenchStep::Prefill => {
            let ids = bench_ids(spec.tokens, vocab);
            Box::new(move || prefill(model, &ids).map(|_| ()))
        }
        BenchStep::Lm => {
            let mut st = LmStep::new(
                model,
                &spec.targets,
                (spec.experts, spec.rank, spec.alpha),
                1e-4,
                0,
            )?;
            Box::new(move || st.step(model, &batch).map(|_| ()))
        }
        BenchStep::Teacher => {
            let gate = gate_parts(&mut rng)?;
            let head = head(&mut rng)?;
            let targets: Vec<u32> = (0..spec.batch)
                .map(|r| ((r * 611 + 7) % spec.items) as u32)
                .collect();
            let (gate, z) = match gate {
                Some((g, z)) => (Some(g), Some(z)),
                None => (None, None),
            };
            let mut st = RankingStep::new(adapters()?, gate, head, 1e-4)?;
            Box::new(move || st.step(model, &batch, z.as_ref(), &targets).map(|_| ()))
        }
        BenchStep::Infer => {
            let gate = gate_parts(&mut rng)?;
            let head = head(&mut rng)?;
            let ad = adapters()?;
            let k = spec.topk;
            Box::new(move || {
                let g = gate.as_ref().map(|(g, z)| g.forward(z)).transpose()?;
                score_top_k(model, &ad, &head, &batch, g.as_ref(), k).map(|_| ())
            })
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
