//! What `distillrec bench llm --step teacher | infer` times: the real
//! [`Teacher`], built in memory, running its own training micro-step
//! ([`Teacher::micro_step`] then the training loop's AdamW update) or its
//! own inference ([`Teacher::rank_scores`] with top-K, or
//! [`Teacher::answer`]'s greedy decoding), so the benchmark measures the
//! teacher users train and cannot drift from it.
//!
//! The inputs: a synthetic dataset of about `items` items
//! (`distillrec_data::synthetic`), a freshly initialised student (seeded),
//! a seeded random title table (frozen input of the ranking head: its
//! values do not change the cost of a step), LoRA dropout 0 (so a
//! reference implementation computes the same loss), hybrid prompts, and
//! `teacher.max_history` set so the mean prompt approaches `tokens`.
//! [`Bench::dump`] writes those inputs and the initial weights for
//! `scripts/bench_llm_torch.py`.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use distillrec_config::{AdapterTarget, StudentConfig, TeacherConfig, TeacherObjective};
use distillrec_data::prepare::{prepare, PrepareOptions};
use distillrec_data::synthetic::{generate, SyntheticOptions};
use distillrec_data::{Dataset, ItemId, Row};
use distillrec_llm::Llm;
use distillrec_models::optim::{AdamW, AdamWConfig};
use distillrec_models::{Student, StudentSpec};

use crate::model::{has_generative, has_ranking, row_seed, streams, Teacher};
use crate::prompt::{Prompt, Prompter};

/// Which of the teacher's computations is timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One training micro-step and the AdamW update.
    Train,
    /// Inference: ranking scores with top-K, or greedy answers.
    Infer,
}

/// The sizes and settings of a teacher benchmark.
#[derive(Clone, Debug)]
pub struct BenchSpec {
    /// Training step or inference.
    pub mode: Mode,
    /// Ranking or generative (what the teacher is trained for).
    pub objective: TeacherObjective,
    /// Experts `E` (1: plain LoRA, LLaRA).
    pub experts: usize,
    /// Total adapter rank.
    pub rank: usize,
    /// LoRA α.
    pub alpha: f64,
    /// Adapted projections.
    pub targets: Vec<AdapterTarget>,
    /// Training rows per step.
    pub batch: usize,
    /// Prompt length aimed at (mean over the rows).
    pub tokens: usize,
    /// Catalogue size aimed at.
    pub items: usize,
    /// K of the ranking top-K.
    pub topk: usize,
    /// Timed repetitions (the median is reported).
    pub repeats: usize,
    /// Seed of dataset, student and teacher.
    pub seed: u64,
    /// The other teacher settings (prompts, candidates, gate width; the
    /// CLI uses the defaults); the fields above and dropout 0 override it.
    pub base: TeacherConfig,
}

/// What a benchmark measured.
#[derive(Clone, Debug)]
pub struct Timing {
    /// Median seconds of one timed run.
    pub secs: f64,
    /// Mean prompt tokens of the rows (answers included in training).
    pub prompt_tokens: f64,
    /// Catalogue size.
    pub items: usize,
    /// Loss of the first (warm-up) training step; none at inference.
    pub first_loss: Option<f64>,
}

/// Learning rate of the benchmark's AdamW (the reference uses the same).
pub const LR: f64 = 1e-4;
/// Weight decay of the benchmark's AdamW (`train.teacher.weight_decay`'s default).
pub const WEIGHT_DECAY: f64 = 0.01;

/// A teacher, its dataset and the rows of one step.
pub struct Bench {
    /// The teacher being timed.
    pub teacher: Teacher,
    /// The synthetic dataset.
    pub ds: Dataset,
    rows: Vec<usize>,
    spec: BenchSpec,
    opt: AdamW,
    /// Candidates of each row's generative inference prompt.
    candidates: Vec<Vec<ItemId>>,
}

impl Bench {
    /// Builds the dataset, the student and the teacher on `llm`, and picks
    /// `spec.batch` rows (the longest histories).
    pub fn new(llm: Llm, spec: &BenchSpec) -> Result<Bench> {
        check(spec)?;
        let ds = dataset(spec)?;
        let sspec = StudentSpec::from_config(&StudentConfig::default(), ds.num_items());
        let student = Student::new(&sspec, spec.seed, &Device::Cpu)?;
        let cfg = teacher_config(spec);
        let titles = random_titles(ds.num_items(), llm.model.config().hidden_size, spec.seed)?;
        let mut teacher = Teacher::new(llm, student, titles, &ds, &cfg, spec.seed)?;
        let mut rows: Vec<usize> = (0..ds.train.len()).collect();
        rows.sort_by_key(|&i| std::cmp::Reverse(ds.history(&ds.train[i]).len()));
        ensure!(
            rows.len() >= spec.batch,
            "the synthetic dataset has {} training rows, fewer than --batch {}",
            rows.len(),
            spec.batch
        );
        rows.truncate(spec.batch);
        fit_history(&mut teacher, &ds, &rows, spec)?;
        let candidates = draw_candidates(&teacher, &ds, &rows);
        if spec.mode == Mode::Infer && has_generative(spec.objective) {
            teacher.attach()?;
        }
        let opt = AdamW::new(
            AdamWConfig::new(LR, WEIGHT_DECAY, 0.0),
            &teacher.param_sizes(),
        );
        Ok(Bench {
            teacher,
            ds,
            rows,
            spec: spec.clone(),
            opt,
            candidates,
        })
    }

    /// The rows of every step.
    pub fn rows(&self) -> Vec<&Row> {
        self.rows.iter().map(|&i| &self.ds.train[i]).collect()
    }

    /// One timed run: the training micro-step and its AdamW update
    /// (returns the loss), or one inference pass (returns none).
    pub fn step(&mut self) -> Result<Option<f64>> {
        let rows: Vec<&Row> = self.rows.iter().map(|&i| &self.ds.train[i]).collect();
        match (self.spec.mode, has_ranking(self.spec.objective)) {
            (Mode::Train, _) => Ok(Some(self.train_once()?)),
            (Mode::Infer, true) => {
                let table = self.teacher.eval_table()?;
                let scores = self.teacher.rank_scores(&self.ds, &rows, &table)?;
                let width = self.ds.num_items() + 1;
                for row in scores.chunks(width) {
                    std::hint::black_box(top_k(row, self.spec.topk));
                }
                Ok(None)
            }
            (Mode::Infer, false) => {
                for (row, c) in rows.iter().zip(&self.candidates) {
                    std::hint::black_box(self.teacher.answer(&self.ds, row, c)?);
                }
                Ok(None)
            }
        }
    }

    /// Mean tokens of the prompts a run feeds the backbone.
    pub fn mean_prompt_tokens(&self) -> Result<f64> {
        Ok(self.layout()?.0.tokens as f64 / self.rows.len() as f64)
    }

    /// One warm-up run, then the median of `spec.repeats` timed runs.
    pub fn time(&mut self) -> Result<Timing> {
        let prompt_tokens = self.mean_prompt_tokens()?;
        let first_loss = self.step()?;
        let mut secs = Vec::with_capacity(self.spec.repeats);
        for _ in 0..self.spec.repeats {
            let t = Instant::now();
            self.step()?;
            secs.push(t.elapsed().as_secs_f64());
        }
        secs.sort_by(f64::total_cmp);
        Ok(Timing {
            secs: secs[secs.len() / 2],
            prompt_tokens,
            items: self.ds.num_items(),
            first_loss,
        })
    }

    /// The batch as the backbone sees it in a run: laid-out inputs, the
    /// placeholder items (what slots index) and the prompts.
    fn layout(&self) -> Result<(crate::model::Inputs, Vec<ItemId>, Vec<Prompt>)> {
        let t = &self.teacher;
        let rows = self.rows();
        let generative = has_generative(self.spec.objective);
        let prompts: Vec<Prompt> = match self.spec.mode {
            Mode::Train => t.train_prompts(&self.ds, &rows, generative, 0, 1.0),
            Mode::Infer if generative => rows
                .iter()
                .zip(&self.candidates)
                .map(|(r, c)| Prompt {
                    answer: Vec::new(),
                    ..t.eval_prompt(&self.ds, r, Some(c))
                })
                .collect(),
            Mode::Infer => rows
                .iter()
                .map(|r| t.eval_prompt(&self.ds, r, None))
                .collect(),
        };
        let (order, index) = Teacher::placeholder_items(&prompts);
        let projected = t.project_items(&t.live()?, &order)?;
        let inp = t.inputs(&prompts, &index, &projected, None)?;
        Ok((inp, order, prompts))
    }

    /// Writes the inputs of a run and the teacher's current weights to
    /// `path` (safetensors; metadata: the settings and, for training, the
    /// loss `first_loss` of [`Teacher::micro_step`] on them), so a
    /// reference implementation computes the same step. Call before
    /// [`Bench::time`], while the weights are the initial ones.
    pub fn dump(&mut self, path: &Path) -> Result<()> {
        let t = &self.teacher;
        let (inp, order, prompts) = self.layout()?;
        let b = self.rows.len();
        let i64s = |v: Vec<i64>| -> Result<Tensor> {
            let n = v.len();
            Ok(Tensor::from_vec(v, n, &Device::Cpu)?)
        };
        let mut m: HashMap<String, Tensor> = HashMap::new();
        let ids = inp.ids.iter().map(|&x| x as i64).collect();
        m.insert("input_ids".into(), i64s(ids)?.reshape((b, inp.t))?);
        let mask = inp.mask.iter().flatten().map(|&x| x as i64).collect();
        m.insert("attention_mask".into(), i64s(mask)?.reshape((b, inp.t))?);
        let slots = |f: &dyn Fn(&(usize, usize)) -> i64| inp.slots.iter().map(f).collect();
        m.insert("slot_pos".into(), i64s(slots(&|s| s.0 as i64))?);
        m.insert("slot_item".into(), i64s(slots(&|s| order[s.1] as i64))?);
        let rows = self.rows();
        m.insert("student_rep".into(), t.gate_features(&self.ds, &rows)?);
        m.insert("student_items".into(), t.student_items.clone());
        m.insert("titles".into(), t.titles.to_dtype(DType::F32)?);
        let targets = rows.iter().map(|r| self.ds.target(r) as i64).collect();
        m.insert("targets".into(), i64s(targets)?);
        let (mut apos, mut atok) = (Vec::new(), Vec::new());
        for (r, p) in prompts.iter().enumerate() {
            let start = r * inp.t + inp.t - p.answer.len();
            for (j, &tok) in p.answer.iter().enumerate() {
                apos.push((start + j - 1) as i64);
                atok.push(tok as i64);
            }
        }
        m.insert("answer_pos".into(), i64s(apos)?);
        m.insert("answer_tok".into(), i64s(atok)?);
        for (name, shape, v) in t.named_params() {
            let x = Tensor::from_vec(v.to_vec(), shape.as_slice(), &Device::Cpu)?;
            m.insert(format!("param.{name}"), x);
        }
        let mut meta = self.meta();
        if self.spec.mode == Mode::Train {
            let (first, second) = self.two_losses()?;
            meta.insert("first_loss".into(), format!("{first:.8}"));
            meta.insert("second_loss".into(), format!("{second:.8}"));
        }
        write_safetensors(path, &m, meta)
    }

    /// Writes what a device comparison needs to `path` (safetensors): for
    /// training, after one AdamW update from the seeded initial weights (a
    /// fresh adapter's `B` is zero, so at the very first step the gradients
    /// of `A` and of the gate are exactly zero and would compare nothing),
    /// the next micro-step's `loss` (f32 `[1]`) and the gradient of every
    /// trainable tensor (`grad.<name>`, names and shapes of
    /// [`Teacher::named_params`]); the weights are restored afterwards. For
    /// ranking inference, the scores (`scores`, f32 `[rows, N + 1]`, column
    /// 0 the padding item) of the initial weights. A CPU and a GPU run of
    /// the same seeded bench compare through these files
    /// (`scripts/device-check.sh`).
    pub fn write_grads(&mut self, path: &Path) -> Result<()> {
        let mut m: HashMap<String, Tensor> = HashMap::new();
        let cpu = Device::Cpu;
        match self.spec.mode {
            Mode::Train => {
                let out = self.after_one_update(|b, _| {
                    let rows = b.rows();
                    b.teacher.micro_step(&b.ds, &rows, 0, 1.0, 0)
                })?;
                m.insert(
                    "loss".into(),
                    Tensor::from_vec(vec![out.loss as f32], 1, &cpu)?,
                );
                let named = self.teacher.named_params();
                for ((name, shape, _), g) in named.into_iter().zip(out.grads) {
                    m.insert(
                        format!("grad.{name}"),
                        Tensor::from_vec(g, shape.as_slice(), &cpu)?,
                    );
                }
            }
            Mode::Infer => {
                ensure!(
                    has_ranking(self.spec.objective),
                    "--grads-out with --step infer writes ranking scores: use --objective ranking"
                );
                let t = &self.teacher;
                let table = t.eval_table()?;
                let scores = t.rank_scores(&self.ds, &self.rows(), &table)?;
                let w = self.ds.num_items() + 1;
                m.insert(
                    "scores".into(),
                    Tensor::from_vec(scores, (self.rows.len(), w), &cpu)?,
                );
            }
        }
        let t = &self.teacher;
        let mut meta = self.meta();
        meta.insert(
            "device".into(),
            distillrec_models::device::spec_of(t.dev()).to_string(),
        );
        meta.insert("dtype".into(), t.llm.model.dtype().as_str().to_string());
        if self.spec.mode == Mode::Train {
            meta.insert("updates_before".into(), "1".into());
        }
        write_safetensors(path, &m, meta)
    }

    /// `f` after one training step (micro-step and AdamW update with a fresh
    /// optimiser), given that step's loss; the weights and the optimiser are
    /// restored afterwards.
    pub fn after_one_update<T>(&mut self, f: impl FnOnce(&Self, f64) -> Result<T>) -> Result<T> {
        let saved: Vec<Vec<f32>> = self
            .teacher
            .params_mut()
            .iter()
            .map(|p| p.to_vec())
            .collect();
        let fresh = AdamW::new(
            AdamWConfig::new(LR, WEIGHT_DECAY, 0.0),
            &self.teacher.param_sizes(),
        );
        let kept = std::mem::replace(&mut self.opt, fresh);
        let result = self.train_once().and_then(|loss| f(self, loss));
        self.opt = kept;
        for (p, v) in self.teacher.params_mut().into_iter().zip(saved) {
            p.copy_from_slice(&v);
        }
        result
    }
    /// The losses of the first two training steps (the second after one
    /// AdamW update, when the fresh adapters' `B` is no longer zero and the
    /// gate matters); the weights are restored afterwards.
    fn two_losses(&mut self) -> Result<(f64, f64)> {
        self.after_one_update(|b, first| {
            let rows = b.rows();
            Ok((first, b.teacher.micro_step(&b.ds, &rows, 0, 1.0, 0)?.loss))
        })
    }

    /// One micro-step and its AdamW update; returns the loss.
    fn train_once(&mut self) -> Result<f64> {
        let rows: Vec<&Row> = self.rows.iter().map(|&i| &self.ds.train[i]).collect();
        let out = self.teacher.micro_step(&self.ds, &rows, 0, 1.0, 0)?;
        let gs: Vec<&[f32]> = out.grads.iter().map(Vec::as_slice).collect();
        self.opt.step(&mut self.teacher.params_mut(), &gs)?;
        Ok(out.loss)
    }

    fn meta(&self) -> HashMap<String, String> {
        let s = &self.spec;
        let targets: Vec<&str> = s.targets.iter().map(|t| t.name()).collect();
        let mode = match s.mode {
            Mode::Train => "teacher",
            Mode::Infer => "infer",
        };
        [
            ("step", mode.to_string()),
            ("objective", s.objective.name().to_string()),
            ("experts", s.experts.to_string()),
            ("rank", s.rank.to_string()),
            ("alpha", s.alpha.to_string()),
            ("targets", targets.join(",")),
            ("topk", s.topk.to_string()),
            ("lr", LR.to_string()),
            ("weight_decay", WEIGHT_DECAY.to_string()),
            (
                "eos",
                self.teacher
                    .llm
                    .tokenizer
                    .eos_ids()
                    .first()
                    .map_or(String::new(), |e| e.to_string()),
            ),
            ("newline", newline_ids(&self.teacher)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// Token ids whose text holds a newline (a greedy answer stops after
/// one: `Teacher::answer` stops at "\n"), comma-separated.
fn newline_ids(t: &Teacher) -> String {
    let tok = &t.llm.tokenizer;
    (0..tok.vocab_size() as u32)
        .filter(|&id| tok.decode(&[id], false).is_ok_and(|s| s.contains('\n')))
        .map(|id| id.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Writes `tensors` with `meta` as one safetensors file, atomically.
fn write_safetensors(
    path: &Path,
    tensors: &HashMap<String, Tensor>,
    meta: HashMap<String, String>,
) -> Result<()> {
    let mut raw: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (k, v) in tensors {
        let (dtype, bytes): (_, Vec<u8>) = match v.dtype() {
            DType::I64 => (
                safetensors::Dtype::I64,
                v.flatten_all()?
                    .to_vec1::<i64>()?
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
            ),
            _ => (
                safetensors::Dtype::F32,
                v.to_dtype(DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
            ),
        };
        raw.push((k.clone(), dtype, v.dims().to_vec(), bytes));
    }
    let views = raw
        .iter()
        .map(|(k, d, shape, b)| {
            Ok((
                k.as_str(),
                safetensors::tensor::TensorView::new(*d, shape.clone(), b)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes =
        safetensors::serialize(views, Some(meta)).context("serialising the benchmark dump")?;
    distillrec_data::fsutil::atomic_write(path, &bytes)
        .with_context(|| format!("writing {}", path.display()))
}

/// Refuses sizes that cannot make a benchmark, before anything is built.
fn check(s: &BenchSpec) -> Result<()> {
    ensure!(
        s.batch >= 1 && s.repeats >= 1 && s.tokens >= 1,
        "bench llm needs --batch, --repeats and --tokens of at least 1"
    );
    ensure!(
        (20..=1_000_000).contains(&s.items),
        "--items {} must be in 20..=1000000 for the teacher steps",
        s.items
    );
    ensure!(
        s.topk >= 1 && s.topk <= s.items,
        "--topk must be in 1..=--items ({})",
        s.items
    );
    ensure!(
        s.batch <= 4096 && s.tokens <= 1 << 16,
        "--batch {} or --tokens {} is beyond what a teacher step takes (4096 rows, 65536 tokens)",
        s.batch,
        s.tokens
    );
    if s.objective == TeacherObjective::Both {
        bail!("--objective is ranking or generative (both is their sum: time each)");
    }
    Ok(())
}

/// A synthetic dataset of about `items` items (4 topics of series of 5;
/// the catalogue keeps the items some user saw) whose users have
/// histories long enough for `tokens`-token prompts.
fn dataset(s: &BenchSpec) -> Result<Dataset> {
    // every history item takes at least 3 prompt tokens (title, placeholder, separator)
    let len = (s.tokens / 3 + 4).min(200);
    let o = SyntheticOptions {
        // about four views per item, so most of the catalogue is seen
        users: (s.batch + 8).max(4 * s.items / len),
        topics: 4,
        series_per_topic: s.items.div_ceil(20),
        series_len: 5,
        min_len: len,
        max_len: len,
        seed: s.seed,
        ..Default::default()
    };
    Ok(prepare(
        "synthetic",
        &generate(&o)?,
        &PrepareOptions::default(),
        s.seed,
    )?)
}

/// The teacher settings of the benchmark: the spec's base, with its
/// adapters and objective, dropout 0 and always-hybrid prompts.
fn teacher_config(s: &BenchSpec) -> TeacherConfig {
    TeacherConfig {
        objective: s.objective,
        experts: s.experts,
        rank: s.rank,
        alpha: s.alpha,
        targets: s.targets.clone(),
        lora_dropout: 0.0,
        curriculum: false,
        ..s.base.clone()
    }
}

/// Seeded random title embeddings `[n + 1, h]` (row 0 zeros).
fn random_titles(n: usize, h: usize, seed: u64) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0717_17e5);
    let mut v: Vec<f32> = (0..(n + 1) * h)
        .map(|_| rng.gen_range(-0.05f32..0.05))
        .collect();
    v[..h].iter_mut().for_each(|x| *x = 0.0);
    Ok(Tensor::from_vec(v, (n + 1, h), &Device::Cpu)?)
}

/// Sets `teacher.max_history` to the largest value whose mean prompt
/// (over `rows`) stays within `spec.tokens` (at least 1).
fn fit_history(teacher: &mut Teacher, ds: &Dataset, rows: &[usize], s: &BenchSpec) -> Result<()> {
    let rs: Vec<&Row> = rows.iter().map(|&i| &ds.train[i]).collect();
    let longest = rs.iter().map(|r| ds.history(r).len()).max().unwrap_or(1);
    let mean_len = |t: &Teacher| -> f64 {
        let p = t.train_prompts(ds, &rs, has_generative(s.objective), 0, 1.0);
        p.iter()
            .map(|p| p.input.len() + p.answer.len())
            .sum::<usize>() as f64
            / p.len() as f64
    };
    let mut best = 1;
    for mh in 1..=longest {
        set_history(teacher, ds, mh)?;
        if mean_len(teacher) > s.tokens as f64 {
            break;
        }
        best = mh;
    }
    set_history(teacher, ds, best)
}

fn set_history(teacher: &mut Teacher, ds: &Dataset, mh: usize) -> Result<()> {
    teacher.cfg.max_history = mh;
    let llm = &teacher.llm;
    teacher.prompter = Prompter::new(&llm.tokenizer, &llm.chat, ds, &teacher.cfg)?;
    Ok(())
}

/// The candidates of each row's generative inference prompt (seeded per row).
fn draw_candidates(t: &Teacher, ds: &Dataset, rows: &[usize]) -> Vec<Vec<ItemId>> {
    rows.iter()
        .map(|&i| {
            let row = &ds.train[i];
            let mut rng = ChaCha8Rng::seed_from_u64(row_seed(t.seed, streams::EVAL, &row.key));
            t.prompter
                .draw_candidates(ds.history(row), ds.target(row), &mut rng)
        })
        .collect()
}

/// The `k` highest-scoring items of one row of scores (ties by id).
pub fn top_k(row: &[f32], k: usize) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..row.len() as u32).collect();
    let cmp = |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
    let k = k.min(idx.len());
    if k > 0 && k < idx.len() {
        idx.select_nth_unstable_by(k - 1, cmp);
    }
    idx.truncate(k);
    idx.sort_by(cmp);
    idx
}
