//! Training and inference steps on the explicit path ([`crate::tape`]): the
//! causal-LM step (generative objective) and the ranking step (the last
//! hidden state scored against an item table), each with its optimiser,
//! and batched scoring with top-K. The benchmark times exactly these.
//!
//! Gate and ranking head are small candle graphs: their gradients come
//! from candle's autograd, fed by the tape's `d gate` and `d hidden`.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::Optimizer;

use crate::error::{Error, Result};
use crate::model::{Model, Target};
use crate::tape::{self, AdamW};
use crate::AdapterSet;

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

fn adam_step(opt: &mut AdamW, adapters: &mut AdapterSet<f32>, grads: &AdapterSet<f32>) {
    let mut params: Vec<&mut [f32]> = Vec::new();
    for w in adapters.weights_mut() {
        params.push(&mut w.a);
        params.push(&mut w.b);
    }
    let gs: Vec<&[f32]> = grads.weights().flat_map(|w| [&w.a[..], &w.b[..]]).collect();
    opt.step(&mut params, &gs);
}

fn adam_for(adapters: &AdapterSet<f32>, lr: f64, wd: f64) -> AdamW {
    let sizes: Vec<usize> = adapters
        .weights()
        .flat_map(|w| [w.a.len(), w.b.len()])
        .collect();
    AdamW::new(&sizes, lr, wd)
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
        let (loss, dh) = crate::loss::lm_head_loss(model, &hidden, &pairs)?;
        let g = tape::backward(model, &self.adapters, tp, &dh)?;
        adam_step(&mut self.opt, &mut self.adapters, &g.adapters);
        Ok(loss)
    }
}

/// A per-sample gate `softmax(z · Wg)` over `E` experts from a fixed
/// per-row feature `z [B, d]` (the student's representation in the
/// teacher; a fixed random feature in the benchmark).
pub struct Gate {
    /// Trainable `Wg [d, E]`.
    pub wg: Var,
}

impl Gate {
    /// The gate `[B, E]` for features `z [B, d]` (a candle graph, so the
    /// gradient of `Wg` follows from `d gate`).
    pub fn forward(&self, z: &Tensor) -> Result<Tensor> {
        // the composed softmax: candle's fused one has no backward
        Ok(candle_nn::ops::softmax(
            &z.matmul(self.wg.as_tensor())?,
            candle_core::D::Minus1,
        )?)
    }
}

/// The ranking head: the last hidden state `h [B, H]` scored against a
/// fixed item table `I [items, H]` through a trainable map `M [H, H]`:
/// `scores = (h M) Iᵀ`, cross-entropy against the target item.
pub struct RankingHead {
    /// Fixed item table `[items, H]`.
    pub items: Tensor,
    /// Trainable map `[H, H]`, initialised to the identity.
    pub m: Var,
}

impl RankingHead {
    /// A head over `items [n, H]` with `M = I`.
    pub fn new(items: Tensor) -> Result<RankingHead> {
        let h = items.dim(1)?;
        let m = Var::from_tensor(&Tensor::eye(h, DType::F32, items.device())?)?;
        Ok(RankingHead { items, m })
    }

    /// Scores `[B, items]` for last hidden states `h [B, H]`.
    pub fn scores(&self, h: &Tensor) -> Result<Tensor> {
        Ok(h.matmul(self.m.as_tensor())?.matmul(&self.items.t()?)?)
    }
}

/// The ranking step: forward through the tape with a per-sample gate,
/// cross-entropy of the head's scores at each row's last real position,
/// backward through the head, the tape and the gate, AdamW on adapters,
/// `Wg` and `M`.
pub struct RankingStep {
    /// The adapters being trained.
    pub adapters: AdapterSet<f32>,
    /// The gate network (absent: no gate, plain LoRA).
    pub gate: Option<Gate>,
    /// The ranking head.
    pub head: RankingHead,
    opt: AdamW,
    head_opt: candle_nn::AdamW,
}

impl RankingStep {
    /// A step over `adapters`, an optional `gate` and `head`, learning rate `lr`.
    pub fn new(
        adapters: AdapterSet<f32>,
        gate: Option<Gate>,
        head: RankingHead,
        lr: f64,
    ) -> Result<RankingStep> {
        let opt = adam_for(&adapters, lr, 0.01);
        let mut vars = vec![head.m.clone()];
        if let Some(g) = &gate {
            vars.push(g.wg.clone());
        }
        let head_opt = candle_nn::AdamW::new(
            vars,
            candle_nn::ParamsAdamW {
                lr,
                ..Default::default()
            },
        )?;
        Ok(RankingStep {
            adapters,
            gate,
            head,
            opt,
            head_opt,
        })
    }

    /// One step on `batch` with gate features `z [B, d]` and target items;
    /// returns the loss.
    pub fn step(
        &mut self,
        model: &Model,
        batch: &Batch,
        z: Option<&Tensor>,
        targets: &[u32],
    ) -> Result<f64> {
        let b = batch.rows();
        if targets.len() != b {
            return Err(Error::Input(format!(
                "{} targets for {b} rows",
                targets.len()
            )));
        }
        let dev = Device::Cpu;
        let gate_t = match (&self.gate, z) {
            (Some(g), Some(z)) => Some(g.forward(z)?),
            (None, None) => None,
            _ => {
                return Err(Error::Input(
                    "a gate needs its features and vice versa".into(),
                ))
            }
        };
        let gate_v = gate_t
            .as_ref()
            .map(|g| g.flatten_all()?.to_vec1::<f32>())
            .transpose()?;
        let x = batch.embeds(model)?;
        let (hidden, tp) =
            tape::forward(model, &self.adapters, &x, &batch.mask, gate_v.as_deref())?;
        let hsize = model.config().hidden_size;
        let last = batch.last_rows()?;
        let hl: Vec<f32> = last
            .iter()
            .flat_map(|&r| hidden[r * hsize..(r + 1) * hsize].iter().copied())
            .collect();
        let hl = Var::from_tensor(&Tensor::from_vec(hl, (b, hsize), &dev)?)?;
        let scores = self.head.scores(hl.as_tensor())?;
        let tg = Tensor::from_vec(targets.to_vec(), b, &dev)?;
        let loss = candle_nn::loss::cross_entropy(&scores, &tg)?;
        let mut grads = loss.backward()?;
        let dhl = grads
            .remove(hl.as_tensor())
            .ok_or_else(|| Error::Input("the head gave no hidden-state gradient".into()))?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mut dh = vec![0f32; hidden.len()];
        for (i, &r) in last.iter().enumerate() {
            dh[r * hsize..(r + 1) * hsize].copy_from_slice(&dhl[i * hsize..(i + 1) * hsize]);
        }
        let g = tape::backward(model, &self.adapters, tp, &dh)?;
        if let (Some(gt), Some(dg)) = (&gate_t, &g.gate) {
            // d gate into Wg: the gradient of Σ gate ⊙ stop_grad(d gate)
            let dg = Tensor::from_vec(dg.clone(), gt.shape(), &dev)?;
            let gate_grads = (gt * dg)?.sum_all()?.backward()?;
            if let Some(gw) = gate_grads.get(self.gate.as_ref().expect("gate").wg.as_tensor()) {
                grads.insert(self.gate.as_ref().expect("gate").wg.as_tensor(), gw.clone());
            }
        }
        self.head_opt.step(&grads)?;
        adam_step(&mut self.opt, &mut self.adapters, &g.adapters);
        Ok(loss.to_scalar::<f32>()? as f64)
    }
}

/// Scores of every row's last real position against the head, and the
/// top `k` items per row (highest score first, ties by id), with the
/// adapters and gate applied unmerged.
pub fn score_top_k(
    model: &Model,
    adapters: &AdapterSet<f32>,
    head: &RankingHead,
    batch: &Batch,
    gate: Option<&Tensor>,
    k: usize,
) -> Result<Vec<Vec<(u32, f32)>>> {
    let b = batch.rows();
    let gate_v = gate
        .map(|g| g.flatten_all()?.to_vec1::<f32>())
        .transpose()?;
    let x = batch.embeds(model)?;
    let hl = tape::infer_last(model, adapters, &x, &batch.mask, gate_v.as_deref())?;
    let hsize = model.config().hidden_size;
    let scores = head
        .scores(&Tensor::from_vec(hl, (b, hsize), &Device::Cpu)?)?
        .to_vec2::<f32>()?;
    Ok(scores
        .into_iter()
        .map(|row| {
            let mut idx: Vec<u32> = (0..row.len() as u32).collect();
            let k = k.min(idx.len());
            let cmp =
                |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
            if k > 0 && k < idx.len() {
                idx.select_nth_unstable_by(k - 1, cmp);
            }
            idx.truncate(k);
            idx.sort_by(cmp);
            idx.into_iter().map(|i| (i, row[i as usize])).collect()
        })
        .collect())
}
