//! The teacher: the frozen backbone with MoE-LoRA adapters, the frozen
//! student that feeds the gate and the projector, and the small networks.
//! One micro-step computes the loss and the gradients of every trainable
//! tensor: the backbone runs on one of `distillrec_llm::pass`'s paths
//! (adapters, gate and input-embedding gradients), the small networks are
//! candle graphs fed by the pass's `d gate` and `d embeddings`.
//!
//! Which path: the explicit one (hand-written backward) on the CPU with an
//! f32 backbone of a family it runs, unless `teacher.path = "composed"`;
//! the composed one (candle autograd on `Model`) anywhere else: a CUDA
//! device, a bf16 or f16 backbone (`teacher.dtype`), OPT. The backbone,
//! the adapters and the networks live on the backbone's device; the
//! adapters, the networks, their gradients and the losses are f32 whatever
//! the backbone's dtype; the frozen student runs on the CPU.

use std::collections::HashMap;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use distillrec_config::{AdapterTarget, BackbonePath, TeacherConfig, TeacherObjective};
use distillrec_data::{Dataset, ItemId, Row};
use distillrec_llm::model::Target;
use distillrec_llm::pass::{self, Grads, Path, StepOpts};
use distillrec_llm::Llm;
use distillrec_llm::{lm_head_loss, lm_head_loss_composed, AdapterSet, Dropout};
use distillrec_models::Student;

use crate::nets::{Live, NetSizes, Nets, INIT_SCALE};
use crate::prompt::{Prompt, Prompter, Tok};

/// What a teacher is, as its checkpoint manifest records it: loading
/// checks it against the config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TeacherSpec {
    /// Training objective.
    pub objective: TeacherObjective,
    /// Experts `E`.
    pub experts: usize,
    /// Total rank `r`.
    pub rank: usize,
    /// LoRA `α`.
    pub alpha: f64,
    /// Adapted projections.
    pub targets: Vec<AdapterTarget>,
    /// Gate hidden width.
    pub gate_hidden: usize,
    /// Decoder layers kept.
    pub num_layers: usize,
    /// LLM hidden width `H`.
    pub hidden: usize,
    /// Student width `d`.
    pub student_dim: usize,
    /// Catalogue size `N`.
    pub num_items: usize,
}

/// Whether an objective trains the ranking head.
pub fn has_ranking(o: TeacherObjective) -> bool {
    matches!(o, TeacherObjective::Ranking | TeacherObjective::Both)
}

/// Whether an objective trains the causal-LM answer.
pub fn has_generative(o: TeacherObjective) -> bool {
    matches!(o, TeacherObjective::Generative | TeacherObjective::Both)
}

/// `acc += w · g`, tensor by tensor (gradient sums and accumulation).
pub fn add_scaled(acc: &mut [Vec<f32>], g: &[Vec<f32>], w: f32) {
    for (a, g) in acc.iter_mut().zip(g) {
        for (x, y) in a.iter_mut().zip(g) {
            *x += y * w;
        }
    }
}

/// A seed for one row: the run seed, a stream tag and the row's key (so a
/// row's prompt does not depend on its batch or shard).
pub fn row_seed(seed: u64, tag: u64, key: &str) -> u64 {
    let mut h: u64 =
        0xcbf2_9ce4_8422_2325 ^ seed.rotate_left(17) ^ tag.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for b in key.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// Stream tags of [`row_seed`].
pub mod streams {
    /// Training prompts of an epoch are `TRAIN + epoch`.
    pub const TRAIN: u64 = 1 << 32;
    /// Evaluation and inference prompts.
    pub const EVAL: u64 = 7;
}

/// A prompt's input embeddings `[T, H]` and its placeholders as
/// `(position, item)`.
pub type PromptInputs = (Vec<f32>, Vec<(usize, ItemId)>);

/// The candidate cue of a batch: the cue vector `[H]` and the frozen
/// student's scores `[B, N + 1]` of the batch's rows.
#[derive(Clone, Copy)]
pub(crate) struct Cue<'a> {
    dir: &'a [f32],
    scores: &'a [f32],
}

/// The student's scores of `candidates` standardised over them (mean 0,
/// deviation 1; all 0 when they are equal): the weight of the cue on each
/// candidate's title tokens and placeholder, so its scale does not depend
/// on the student's logit range.
pub fn standardised(scores: &[f32]) -> Vec<f32> {
    let n = scores.len().max(1) as f64;
    let mean = scores.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = scores
        .iter()
        .map(|&x| (x as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    let sd = var.sqrt();
    scores
        .iter()
        .map(|&x| {
            if sd > 1e-12 {
                ((x as f64 - mean) / sd) as f32
            } else {
                0.0
            }
        })
        .collect()
}

/// A batch laid out for the backbone.
pub(crate) struct Inputs {
    pub(crate) embeds: Vec<f32>,
    /// Token ids `[B, T]` row-major (the pad id at padding and placeholders).
    pub(crate) ids: Vec<u32>,
    pub(crate) mask: Vec<Vec<bool>>,
    /// `(flat position, index into the batch's item list)` of placeholders.
    pub(crate) slots: Vec<(usize, usize)>,
    /// `(flat position, weight)` of every position that carries the cue
    /// (a candidate's title tokens and placeholder); empty without a cue.
    cue_at: Vec<(usize, f32)>,
    pub(crate) t: usize,
    /// Real tokens.
    pub(crate) tokens: usize,
}

/// The prompts of one objective term laid out for the backbone, with what
/// the gradients of the projector and the cue need.
struct Embedded {
    inp: Inputs,
    /// The projector over the whole item table (ranking term only).
    p_all: Option<Tensor>,
    /// The projector outputs of the placeholders' items, in the order of
    /// the batch's item list (`None` without placeholders).
    p_u: Option<Tensor>,
    /// The student prior's values that weigh the cue (generative term of a
    /// teacher with a cue only).
    prior_v: Option<Vec<f32>>,
}

/// What the ranking head reads besides the hidden states.
#[derive(Clone, Copy)]
struct RankingHead<'a> {
    live: &'a Live,
    p_all: Option<&'a Tensor>,
    prior: Option<&'a Tensor>,
}

/// `(flat row, target token)` of every answer token of the left-padded
/// `prompts` (`t` positions each): the row before the token predicts it.
fn answer_pairs(prompts: &[Prompt], t: usize) -> Vec<(usize, u32)> {
    let mut pairs = Vec::new();
    for (r, p) in prompts.iter().enumerate() {
        let off = t - p.input.len() - p.answer.len();
        for (j, &tok) in p.answer.iter().enumerate() {
            pairs.push((r * t + off + p.input.len() + j - 1, tok));
        }
    }
    pairs
}

/// What the frozen student and the gate give a batch of rows, from one
/// student pass.
pub(crate) struct RowView {
    /// The gate `[B, E]` (a graph over the live networks); `None` with one
    /// expert.
    pub(crate) gate: Option<Tensor>,
    /// The gate's values.
    pub(crate) gate_v: Option<Vec<f32>>,
    /// With `teacher.student_prior`, the student's scores `[B, N + 1]`
    /// with column 0 set to 0 (the head masks it).
    pub(crate) prior: Option<Tensor>,
    /// The student's scores `[B, N + 1]` (column 0 −∞).
    pub(crate) scores: Vec<f32>,
}

/// The result of one micro-step.
pub struct StepOut {
    /// Loss (sum over the objective's terms).
    pub loss: f64,
    /// Real tokens processed.
    pub tokens: usize,
    /// Gradients of every trainable tensor, in [`Teacher::param_sizes`] order.
    pub grads: Vec<Vec<f32>>,
}

/// The teacher.
pub struct Teacher {
    /// Backbone, tokenizer and chat template.
    pub llm: Llm,
    /// MoE-LoRA adapters.
    pub adapters: AdapterSet<f32>,
    /// Projector, gate and ranking map.
    pub nets: Nets,
    /// The frozen student (gate features and item embeddings).
    pub student: Student,
    /// Frozen LLM title embeddings `[N + 1, H]` (row 0 zeros).
    pub titles: Tensor,
    pub(crate) student_items: Tensor,
    /// Renders rows into prompts.
    pub prompter: Prompter,
    /// The teacher settings.
    pub cfg: TeacherConfig,
    /// Run seed.
    pub seed: u64,
    /// The implementation that runs the backbone (`teacher.path`).
    pub path: Path,
}

impl Teacher {
    /// A fresh teacher: adapters and networks seeded from `seed`.
    pub fn new(
        llm: Llm,
        student: Student,
        titles: Tensor,
        ds: &Dataset,
        cfg: &TeacherConfig,
        seed: u64,
    ) -> Result<Teacher> {
        // the explicit path where it can run (the CPU, f32, its families),
        // else the composed one
        let path = match cfg.path {
            BackbonePath::Auto => Path::auto(&llm.model),
            BackbonePath::Composed => Path::Composed,
        };
        if cfg.recompute && path == Path::Explicit {
            tracing::warn!("teacher.recompute applies to the composed path; the explicit CPU path keeps only what its backward reads and ignores it");
        }
        let dev = llm.model.device().clone();
        let n = ds.num_items();
        ensure!(
            student.spec.num_items == n,
            "the student knows {} items, the dataset {n}",
            student.spec.num_items
        );
        let h = llm.model.config().hidden_size;
        ensure!(
            titles.dims2()? == (n + 1, h),
            "title table {:?}, expected [{}, {h}]",
            titles.dims(),
            n + 1
        );
        let targets: Vec<Target> = cfg.targets.clone();
        check_adapter_memory(&llm, &targets, cfg)?;
        let adapters =
            AdapterSet::new(&llm.model, &targets, cfg.experts, cfg.rank, cfg.alpha, seed)?;
        let nets = Nets::new(
            NetSizes {
                student: student.spec.hidden,
                hidden: h,
                gate_hidden: cfg.gate_hidden,
                experts: cfg.experts,
                cue: cfg.student_prior && has_generative(cfg.objective),
                ranking: has_ranking(cfg.objective),
                init_scale: if cfg.student_prior { 1.0 } else { INIT_SCALE },
            },
            seed,
        );
        let mut items = student.item_table().to_dtype(DType::F32)?.to_device(&dev)?;
        // row 0 is padding: never a placeholder, and its score is masked
        items = items.slice_assign(
            &[0..1, 0..student.spec.hidden],
            &Tensor::zeros((1, student.spec.hidden), DType::F32, &dev)?,
        )?;
        let titles = titles.to_dtype(DType::F32)?.to_device(&dev)?;
        let prompter = Prompter::new(&llm.tokenizer, &llm.chat, ds, cfg)?;
        Ok(Teacher {
            llm,
            adapters,
            nets,
            student,
            titles,
            student_items: items,
            prompter,
            cfg: cfg.clone(),
            seed,
            path,
        })
    }

    /// The device the backbone, the adapters and the networks run on.
    pub fn dev(&self) -> &Device {
        self.llm.model.device()
    }

    /// The networks as one step's candle variables on [`Teacher::dev`].
    pub fn live(&self) -> Result<Live> {
        self.nets.live(self.dev())
    }

    /// The teacher's identity for manifests.
    pub fn spec(&self) -> TeacherSpec {
        TeacherSpec {
            objective: self.cfg.objective,
            experts: self.cfg.experts,
            rank: self.cfg.rank,
            alpha: self.cfg.alpha,
            targets: self.cfg.targets.clone(),
            gate_hidden: self.cfg.gate_hidden,
            num_layers: self.llm.model.layers.len(),
            hidden: self.llm.model.config().hidden_size,
            student_dim: self.student.spec.hidden,
            num_items: self.student.spec.num_items,
        }
    }

    /// Sizes of the trainable tensors: each adapter's `A` and `B`, then the
    /// networks' parameters.
    pub fn param_sizes(&self) -> Vec<usize> {
        self.adapters
            .weights()
            .flat_map(|w| [w.a.len(), w.b.len()])
            .chain(self.nets.params.iter().map(|p| p.value.len()))
            .collect()
    }

    /// Zeroed gradients of every trainable tensor.
    pub fn zero_grads(&self) -> Vec<Vec<f32>> {
        self.param_sizes()
            .into_iter()
            .map(|n| vec![0.0; n])
            .collect()
    }

    /// The trainable tensors, mutable, in [`Teacher::param_sizes`] order.
    pub fn params_mut(&mut self) -> Vec<&mut [f32]> {
        let mut out: Vec<&mut [f32]> = Vec::new();
        for w in self.adapters.weights_mut() {
            out.push(&mut w.a);
            out.push(&mut w.b);
        }
        for p in &mut self.nets.params {
            out.push(&mut p.value);
        }
        out
    }

    /// Named trainable tensors (checkpoint order and names).
    pub fn named_params(&self) -> Vec<(String, Vec<usize>, &[f32])> {
        let mut out = Vec::new();
        for (li, slots) in self.adapters.layers.iter().enumerate() {
            for (ti, w) in slots.iter().enumerate() {
                if let Some(w) = w {
                    let name = format!("adapter.{li}.{}", AdapterTarget::ALL[ti].name());
                    out.push((
                        format!("{name}.lora_A"),
                        vec![self.adapters.rank, w.in_dim],
                        &w.a[..],
                    ));
                    out.push((
                        format!("{name}.lora_B"),
                        vec![w.out_dim, self.adapters.rank],
                        &w.b[..],
                    ));
                }
            }
        }
        for p in &self.nets.params {
            out.push((p.name.clone(), p.shape.clone(), &p.value[..]));
        }
        out
    }

    /// The student's sequence representations `[B, d]` of the rows'
    /// histories (the gate's input) and its scores `[B, N + 1]` (column 0
    /// −∞, as `Student::score_histories` gives them), from one pass.
    fn student_view(&self, ds: &Dataset, rows: &[&Row]) -> Result<(Tensor, Vec<f32>)> {
        let hist: Vec<&[ItemId]> = rows.iter().map(|r| ds.history(r)).collect();
        let (rep, scores) = self.student.represent_and_score(&hist)?;
        let z = Tensor::from_vec(rep, (rows.len(), self.student.spec.hidden), self.dev())?;
        Ok((z, scores))
    }

    /// The gate of `rows` and, from the same student pass, its prior and
    /// scores (see [`RowView`]).
    pub(crate) fn gate_and_prior(
        &self,
        live: &Live,
        ds: &Dataset,
        rows: &[&Row],
    ) -> Result<RowView> {
        let (z, scores) = self.student_view(ds, rows)?;
        let gate = live.gate(&z)?;
        let gate_v = gate
            .as_ref()
            .map(|g| g.flatten_all()?.to_vec1::<f32>())
            .transpose()?;
        let prior = if self.cfg.student_prior {
            let w = self.student.spec.num_items + 1;
            let mut p = scores.clone();
            for row in p.chunks_mut(w) {
                row[0] = 0.0;
            }
            Some(Tensor::from_vec(p, (rows.len(), w), self.dev())?)
        } else {
            None
        };
        Ok(RowView {
            gate,
            gate_v,
            prior,
            scores,
        })
    }

    /// The student prior's values, when this teacher has a cue to weigh.
    pub(crate) fn cue_scores(&self, prior: Option<&Tensor>) -> Result<Option<Vec<f32>>> {
        match (prior, self.nets.cue_index()) {
            (Some(p), Some(_)) => Ok(Some(p.flatten_all()?.to_vec1::<f32>()?)),
            _ => Ok(None),
        }
    }

    /// The candidate cue over the student scores `scores` `[B, N + 1]`,
    /// when this teacher has one.
    pub(crate) fn cue<'a>(&'a self, scores: Option<&'a [f32]>) -> Option<Cue<'a>> {
        let dir = &self.nets.params[self.nets.cue_index()?].value;
        scores.map(|scores| Cue { dir, scores })
    }

    pub(crate) fn gate_features(&self, ds: &Dataset, rows: &[&Row]) -> Result<Tensor> {
        Ok(self.student_view(ds, rows)?.0)
    }

    /// Left-padded input embeddings of `prompts` (input then answer);
    /// placeholders get `projected[item index]`, and with a `cue` each
    /// candidate's title tokens and placeholder add the cue vector times
    /// the candidate's standardised student score.
    pub(crate) fn inputs(
        &self,
        prompts: &[Prompt],
        items: &HashMap<ItemId, usize>,
        projected: &[f32],
        cue: Option<Cue>,
    ) -> Result<Inputs> {
        let h = self.llm.model.config().hidden_size;
        let t = prompts
            .iter()
            .map(|p| p.input.len() + p.answer.len())
            .max()
            .unwrap_or(0);
        ensure!(t > 0, "empty prompts");
        let pad = self.llm.tokenizer.pad_id();
        let (mut ids, mut mask, mut slots, mut cue_at) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let w = self.student.spec.num_items + 1;
        for (r, p) in prompts.iter().enumerate() {
            let len = p.input.len() + p.answer.len();
            let off = t - len;
            let z = match cue {
                Some(c) => {
                    let row = c
                        .scores
                        .get(r * w..(r + 1) * w)
                        .context("the cue's student scores do not cover the batch")?;
                    let s: Vec<f32> = p.candidates.iter().map(|&c| row[c as usize]).collect();
                    Some(standardised(&s))
                }
                None => None,
            };
            let mut mark = |pos: usize, it: ItemId| {
                let k = p.candidates.iter().position(|&c| c == it);
                if let (Some(z), Some(k)) = (&z, k) {
                    if z[k] != 0.0 {
                        cue_at.push((pos, z[k]));
                    }
                }
            };
            ids.extend(std::iter::repeat_n(pad, off));
            for (j, tok) in p.input.iter().enumerate() {
                let pos = r * t + off + j;
                match *tok {
                    Tok::Id(id) => ids.push(id),
                    Tok::CandText(id, it) => {
                        ids.push(id);
                        mark(pos, it);
                    }
                    Tok::Item(it) => {
                        ids.push(pad);
                        slots.push((pos, items[&it]));
                    }
                    Tok::Cand(it) => {
                        ids.push(pad);
                        slots.push((pos, items[&it]));
                        mark(pos, it);
                    }
                }
            }
            ids.extend(&p.answer);
            mask.push((0..t).map(|j| j >= off).collect());
        }
        let tokens = prompts.iter().map(|p| p.input.len() + p.answer.len()).sum();
        let idt = Tensor::from_vec(ids.clone(), (prompts.len(), t), self.llm.model.device())?;
        let mut embeds = self
            .llm
            .model
            .embed(&idt)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for &(pos, k) in &slots {
            embeds[pos * h..(pos + 1) * h].copy_from_slice(&projected[k * h..(k + 1) * h]);
        }
        if let Some(c) = cue {
            for &(pos, z) in &cue_at {
                for (x, d) in embeds[pos * h..(pos + 1) * h].iter_mut().zip(c.dir) {
                    *x += z * d;
                }
            }
        }
        Ok(Inputs {
            embeds,
            ids,
            mask,
            slots,
            cue_at,
            t,
            tokens,
        })
    }

    /// The distinct placeholder items of `prompts`, in first-seen order.
    pub(crate) fn placeholder_items(prompts: &[Prompt]) -> (Vec<ItemId>, HashMap<ItemId, usize>) {
        let mut order = Vec::new();
        let mut index = HashMap::new();
        for p in prompts {
            for tok in &p.input {
                if let Some(it) = tok.item() {
                    index.entry(it).or_insert_with(|| {
                        order.push(it);
                        order.len() - 1
                    });
                }
            }
        }
        (order, index)
    }

    /// Training prompts of `rows` for `epoch`: ranking or generative,
    /// hybrid with probability `hybrid_p` (the LLaRA curriculum).
    pub fn train_prompts(
        &self,
        ds: &Dataset,
        rows: &[&Row],
        generative: bool,
        epoch: usize,
        hybrid_p: f64,
    ) -> Vec<Prompt> {
        rows.iter()
            .map(|row| {
                let mut rng = ChaCha8Rng::seed_from_u64(row_seed(
                    self.seed,
                    streams::TRAIN + epoch as u64,
                    &row.key,
                ));
                let hybrid = hybrid_p >= 1.0 || rng.gen_bool(hybrid_p.clamp(0.0, 1.0));
                let hist = ds.history(row);
                if generative {
                    let cands = self
                        .prompter
                        .draw_candidates(hist, ds.target(row), &mut rng);
                    self.prompter
                        .generative(hist, &cands, ds.target(row), hybrid, &mut rng)
                } else {
                    self.prompter.ranking(hist, hybrid, &mut rng)
                }
            })
            .collect()
    }

    /// One micro-step on `rows`: loss and gradients of every trainable
    /// tensor. `hybrid_p` is the curriculum's probability of a hybrid
    /// prompt; `drop_seed` seeds the LoRA dropout masks.
    pub fn micro_step(
        &self,
        ds: &Dataset,
        rows: &[&Row],
        epoch: usize,
        hybrid_p: f64,
        drop_seed: u64,
    ) -> Result<StepOut> {
        let obj = self.cfg.objective;
        let mut total = StepOut {
            loss: 0.0,
            tokens: 0,
            grads: self.zero_grads(),
        };
        for (gen, salt) in [(false, 0u64), (true, 1)] {
            if (gen && !has_generative(obj)) || (!gen && !has_ranking(obj)) {
                continue;
            }
            let prompts = self.train_prompts(ds, rows, gen, epoch, hybrid_p);
            let out = self.loss_and_grads(ds, rows, &prompts, gen, drop_seed ^ salt)?;
            total.loss += out.loss;
            total.tokens += out.tokens;
            add_scaled(&mut total.grads, &out.grads, 1.0);
        }
        Ok(total)
    }

    /// One objective term (generative or ranking) of a micro-step, in the
    /// order of iLoRA: the gate from the student's representation, the
    /// prompt embeddings with projected placeholders (and the cue), the
    /// MoE-LoRA forward, the objective's loss, the backward, then the
    /// gradients of the gate, the projector and the cue.
    fn loss_and_grads(
        &self,
        ds: &Dataset,
        rows: &[&Row],
        prompts: &[Prompt],
        generative: bool,
        drop_seed: u64,
    ) -> Result<StepOut> {
        let model = &self.llm.model;
        let live = self.live()?;
        let RowView {
            gate,
            gate_v,
            prior,
            ..
        } = self.gate_and_prior(&live, ds, rows)?;
        let emb = self.embed_prompts(&live, prompts, generative, prior.as_ref())?;
        let opts = StepOpts {
            dropout: Dropout {
                p: self.cfg.lora_dropout,
                seed: drop_seed,
            },
            recompute: self.cfg.recompute,
        };
        let (hidden, tp) = pass::forward(
            self.path,
            model,
            &self.adapters,
            &emb.inp.embeds,
            &emb.inp.mask,
            gate_v.as_deref(),
            opts,
        )?;
        let mut net_grads: Vec<Vec<f32>> = self
            .nets
            .params
            .iter()
            .map(|p| vec![0.0; p.value.len()])
            .collect();
        let (loss, dh) = if generative {
            let pairs = answer_pairs(prompts, emb.inp.t);
            match self.path {
                Path::Explicit => lm_head_loss(model, &hidden, &pairs)?,
                Path::Composed => lm_head_loss_composed(model, &hidden, &pairs)?,
            }
        } else {
            let head = RankingHead {
                live: &live,
                p_all: emb.p_all.as_ref(),
                prior: prior.as_ref(),
            };
            self.ranking_loss(head, ds, rows, &emb.inp, &hidden, &mut net_grads)?
        };
        let g = pass::backward(model, &self.adapters, tp, &dh)?;
        self.cue_grads(&emb, &g.embeds, &mut net_grads);
        self.gate_projector_grads(&live, &emb, gate.as_ref(), &g, &mut net_grads)?;
        let mut grads: Vec<Vec<f32>> = Vec::new();
        for w in g.adapters.weights() {
            grads.push(w.a.clone());
            grads.push(w.b.clone());
        }
        grads.extend(net_grads);
        Ok(StepOut {
            loss,
            tokens: emb.inp.tokens,
            grads,
        })
    }

    /// The prompt embeddings of one objective term: the projector's outputs
    /// for the placeholders' items (over the whole item table for the
    /// ranking head), placed at the placeholders, and for the generative
    /// term the cue weighted by the student prior.
    fn embed_prompts(
        &self,
        live: &Live,
        prompts: &[Prompt],
        generative: bool,
        prior: Option<&Tensor>,
    ) -> Result<Embedded> {
        let (order, index) = Self::placeholder_items(prompts);
        let dev = self.dev().clone();
        // projector outputs: the whole table for the ranking head, else
        // only the placeholders' items
        let p_all = if generative {
            None
        } else {
            Some(live.project(&self.student_items)?)
        };
        let p_u = if order.is_empty() {
            None
        } else {
            let idx = Tensor::from_vec(order.clone(), order.len(), &dev)?;
            Some(match &p_all {
                Some(p) => p.index_select(&idx, 0)?,
                None => live.project(&self.student_items.index_select(&idx, 0)?)?,
            })
        };
        let p_u_vals = match &p_u {
            Some(p) => p.flatten_all()?.to_vec1::<f32>()?,
            None => Vec::new(),
        };
        let prior_v = if generative {
            self.cue_scores(prior)?
        } else {
            None
        };
        let inp = self.inputs(prompts, &index, &p_u_vals, self.cue(prior_v.as_deref()))?;
        Ok(Embedded {
            inp,
            p_all,
            p_u,
            prior_v,
        })
    }

    /// The ranking objective: cross-entropy of the item-title head over the
    /// last hidden state of every prompt (plus the student prior). Adds the
    /// head's network gradients to `net_grads`; returns the loss and its
    /// gradient with respect to `hidden`.
    fn ranking_loss(
        &self,
        head: RankingHead,
        ds: &Dataset,
        rows: &[&Row],
        inp: &Inputs,
        hidden: &[f32],
        net_grads: &mut [Vec<f32>],
    ) -> Result<(f64, Vec<f32>)> {
        let h = self.llm.model.config().hidden_size;
        let b = rows.len();
        let dev = self.dev().clone();
        let last: Vec<usize> = (0..b).map(|r| r * inp.t + inp.t - 1).collect();
        let hl: Vec<f32> = last
            .iter()
            .flat_map(|&p| hidden[p * h..(p + 1) * h].iter().copied())
            .collect();
        let hl = Var::from_vec(hl, (b, h), &dev)?;
        let table = head
            .live
            .item_table(&self.titles, head.p_all.context("projected table")?)?;
        let mut scores = head.live.scores(hl.as_tensor(), &table)?;
        if let Some(p) = head.prior {
            scores = (scores + p)?;
        }
        let targets: Vec<u32> = rows.iter().map(|r| ds.target(r)).collect();
        let loss = candle_nn::loss::cross_entropy(&scores, &Tensor::from_vec(targets, b, &dev)?)?;
        let store = loss.backward()?;
        let dhl = store
            .get(hl.as_tensor())
            .context("the head gave no hidden-state gradient")?
            .flatten_all()?
            .to_vec1::<f32>()?;
        add_scaled(net_grads, &head.live.grads(&store)?, 1.0);
        let mut dh = vec![0f32; hidden.len()];
        for (i, &p) in last.iter().enumerate() {
            dh[p * h..(p + 1) * h].copy_from_slice(&dhl[i * h..(i + 1) * h]);
        }
        Ok((loss.to_scalar::<f32>()? as f64, dh))
    }

    /// The cue's gradient: `d cue = Σ z · d embedding` over the positions
    /// that carry it (`d_embeds` from the backward), into `net_grads`.
    fn cue_grads(&self, emb: &Embedded, d_embeds: &[f32], net_grads: &mut [Vec<f32>]) {
        let h = self.llm.model.config().hidden_size;
        if let (Some(ci), Some(_)) = (self.nets.cue_index(), &emb.prior_v) {
            let dc = &mut net_grads[ci];
            for &(pos, z) in &emb.inp.cue_at {
                for (d, &e) in dc.iter_mut().zip(&d_embeds[pos * h..(pos + 1) * h]) {
                    *d += z * e;
                }
            }
        }
    }

    /// The projector's and the gate's gradients, through the candle graphs
    /// that made them: the gradient of `Σ P ⊙ stop(dE) + Σ gate ⊙
    /// stop(dgate)` (`dE` at the placeholders, `dgate` from the backward),
    /// added to `net_grads`.
    fn gate_projector_grads(
        &self,
        live: &Live,
        emb: &Embedded,
        gate: Option<&Tensor>,
        g: &Grads<f32>,
        net_grads: &mut [Vec<f32>],
    ) -> Result<()> {
        let h = self.llm.model.config().hidden_size;
        let dev = self.dev().clone();
        let slots = &emb.inp.slots;
        let mut surrogate: Option<Tensor> = None;
        if let (Some(p_u), false) = (&emb.p_u, slots.is_empty()) {
            let idx: Vec<u32> = slots.iter().map(|&(_, k)| k as u32).collect();
            let de: Vec<f32> = slots
                .iter()
                .flat_map(|&(pos, _)| g.embeds[pos * h..(pos + 1) * h].iter().copied())
                .collect();
            let de = Tensor::from_vec(de, (idx.len(), h), &dev)?;
            let rows_p = p_u.index_select(&Tensor::from_vec(idx.clone(), idx.len(), &dev)?, 0)?;
            surrogate = Some((rows_p * de)?.sum_all()?);
        }
        if let (Some(gt), Some(dg)) = (gate, &g.gate) {
            let s = (gt * Tensor::from_vec(dg.clone(), gt.shape(), &dev)?)?.sum_all()?;
            surrogate = Some(match surrogate {
                Some(x) => (x + s)?,
                None => s,
            });
        }
        if let Some(s) = surrogate {
            add_scaled(net_grads, &live.grads(&s.backward()?)?, 1.0);
        }
        Ok(())
    }

    /// The gate vectors `[B, E]` of `rows` (row-major), `None` with one
    /// expert.
    pub fn gates(&self, ds: &Dataset, rows: &[&Row]) -> Result<Option<Vec<f32>>> {
        let live = self.live()?;
        Ok(live
            .gate(&self.gate_features(ds, rows)?)?
            .map(|g| g.flatten_all()?.to_vec1::<f32>())
            .transpose()?)
    }

    /// The input embeddings `[T, H]` of `row`'s evaluation ranking prompt
    /// and its placeholders as `(position, item)`.
    pub fn prompt_inputs(&self, ds: &Dataset, row: &Row) -> Result<PromptInputs> {
        let live = self.live()?;
        let prompt = self.eval_prompt(ds, row, None);
        let (order, index) = Self::placeholder_items(std::slice::from_ref(&prompt));
        let projected = self.project_items(&live, &order)?;
        let inp = self.inputs(std::slice::from_ref(&prompt), &index, &projected, None)?;
        let slots = inp.slots.iter().map(|&(p, k)| (p, order[k])).collect();
        Ok((inp.embeds, slots))
    }

    /// `projector(e_item)` `[H]` with the current weights.
    pub fn projected(&self, item: ItemId) -> Result<Vec<f32>> {
        self.project_items(&self.live()?, &[item])
    }

    /// The ranking head's item table `[N + 1, H]` with the current weights.
    pub fn eval_table(&self) -> Result<Tensor> {
        let live = self.live()?;
        live.item_table(&self.titles, &live.project(&self.student_items)?)
    }

    /// Evaluation prompts (hybrid, template drawn per row key).
    pub(crate) fn eval_prompt(
        &self,
        ds: &Dataset,
        row: &Row,
        candidates: Option<&[ItemId]>,
    ) -> Prompt {
        let mut rng = ChaCha8Rng::seed_from_u64(row_seed(self.seed, streams::EVAL, &row.key));
        let hist = ds.history(row);
        match candidates {
            Some(c) => self
                .prompter
                .generative(hist, c, ds.target(row), true, &mut rng),
            None => self.prompter.ranking(hist, true, &mut rng),
        }
    }

    /// Ranking-head scores `[B, N + 1]` of `rows` (column 0 very low),
    /// with `table` from [`Teacher::eval_table`].
    pub fn rank_scores(&self, ds: &Dataset, rows: &[&Row], table: &Tensor) -> Result<Vec<f32>> {
        if !has_ranking(self.cfg.objective) {
            bail!(
                "this teacher was trained without a ranking head (objective `{}`)",
                self.cfg.objective
            );
        }
        let h = self.llm.model.config().hidden_size;
        let live = self.live()?;
        let RowView { gate_v, prior, .. } = self.gate_and_prior(&live, ds, rows)?;
        let prompts: Vec<Prompt> = rows.iter().map(|r| self.eval_prompt(ds, r, None)).collect();
        let (order, index) = Self::placeholder_items(&prompts);
        let projected = self.project_items(&live, &order)?;
        let inp = self.inputs(&prompts, &index, &projected, None)?;
        // each prompt's last position (prompts are left-padded)
        let hl = pass::infer_last(
            self.path,
            &self.llm.model,
            &self.adapters,
            &inp.embeds,
            &inp.mask,
            gate_v.as_deref(),
        )?;
        let hl = Tensor::from_vec(hl, (rows.len(), h), self.dev())?;
        let mut scores = live.scores(&hl, table)?;
        if let Some(p) = &prior {
            scores = (scores + p)?;
        }
        Ok(scores.flatten_all()?.to_vec1::<f32>()?)
    }

    pub(crate) fn project_items(&self, live: &Live, order: &[ItemId]) -> Result<Vec<f32>> {
        if order.is_empty() {
            return Ok(Vec::new());
        }
        let idx = Tensor::from_vec(order.to_vec(), order.len(), self.dev())?;
        Ok(live
            .project(&self.student_items.index_select(&idx, 0)?)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    }
}

/// Copies of every adapter weight while training: the weight, its
/// gradient, AdamW's two moments and the best epoch's copy.
const ADAPTER_COPIES: u64 = 5;

/// Refuses adapters (rank `teacher.rank` on every target of every layer)
/// that cannot fit in memory, before they are allocated.
fn check_adapter_memory(llm: &Llm, targets: &[Target], cfg: &TeacherConfig) -> Result<()> {
    use distillrec_data::memory::{check_fits, product};
    let weights = AdapterSet::<f32>::weight_count(&llm.model, targets, cfg.rank);
    let setting = format!(
        "teacher.rank = {} on {} targets of {} layers",
        cfg.rank,
        targets.len(),
        llm.model.layers.len()
    );
    let needed = product(&[weights, 4, ADAPTER_COPIES]);
    check_fits(
        &setting,
        "the adapters, their gradients and optimizer state",
        needed,
    )?;
    Ok(())
}
