//! Training the teacher: a [`Trainee`] of the one training loop
//! (`distillrec_train::fit`, which owns the epochs, early stopping on the
//! validation metric, `checkpoints/best`, the epoch commit of
//! `checkpoints/last-e<epoch>` and `checkpoints/state.json`, and the exact
//! resume) with the one AdamW (`distillrec_models::optim`: global-norm
//! clipping included) over every trainable tensor, linear warm-up then
//! cosine decay, and gradient accumulation. Every random choice is a
//! function of the seed, the epoch and the step, so a resumed run takes the
//! same steps as an uninterrupted one. Runs from before the shared loop
//! kept `state.json` at the run root; it is still read there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use distillrec_config::{EvalOptions, TeacherTrain};
use distillrec_data::{Dataset, SplitName};
use distillrec_models::optim::{AdamW, AdamWConfig};
use distillrec_train::fit::{fit, EpochRecord, FitOptions, Progress, Trainee};
use distillrec_train::DatasetRef;

use crate::checkpoint::{self, OptState, Pinned, TeacherManifest, FORMAT, VERSION};
use crate::evaluate::{eval_generative, eval_ranking};
use crate::keys;
use crate::model::{add_scaled, has_ranking, Teacher};

/// What training needs besides the teacher.
pub struct TrainTeacher<'a> {
    /// Loop settings.
    pub train: &'a TeacherTrain,
    /// Evaluation protocol (K values, history masking, ties).
    pub eval: &'a EvalOptions,
    /// The dataset and its identity.
    pub ds: &'a Dataset,
    /// Its identity for the manifest.
    pub reference: &'a DatasetRef,
    /// Training rows (indices into `ds.train`).
    pub rows: Vec<usize>,
    /// Backbone and student identities for the manifest.
    pub backbone: Pinned,
    /// The student checkpoint.
    pub student: Pinned,
    /// Run directory (`checkpoints/` with `state.json`, `history.csv`).
    pub out_dir: &'a Path,
    /// Show a progress bar.
    pub progress: bool,
    /// Stop with an error after this epoch (tests of resume).
    pub halt_after_epoch: Option<usize>,
}

/// How training went.
#[derive(Clone, Debug, Serialize)]
pub struct TeacherOutcome {
    /// Epochs run (including resumed ones).
    pub epochs: usize,
    /// Best epoch (1-based).
    pub best_epoch: usize,
    /// Validation metrics per epoch.
    pub history: Vec<BTreeMap<String, f64>>,
    /// The best checkpoint.
    pub best: PathBuf,
    /// Training tokens per second (this process's epochs).
    pub tokens_per_sec: f64,
    /// Mean wall seconds per epoch (this process's epochs).
    pub mean_epoch_secs: f64,
    /// Epochs found finished at start.
    pub resumed_after: usize,
    /// Training rows.
    pub rows: usize,
}

/// Per-epoch columns that are not validation metrics.
const EPOCH_COLUMNS: [&str; 3] = ["train_loss", "epoch_secs", "tokens_per_sec"];

/// `history.csv` in the students' layout: `epoch`, `train_loss`, the
/// validation metrics as `valid_<name>`, `epoch_secs`, `tokens_per_sec`;
/// rewritten whole after every epoch from the resumable state, so a resumed
/// run's history is the same as an uninterrupted one's.
fn history_csv(history: &[BTreeMap<String, f64>]) -> String {
    let metrics: Vec<&String> = history
        .first()
        .map(|h| {
            h.keys()
                .filter(|k| !EPOCH_COLUMNS.contains(&k.as_str()))
                .collect()
        })
        .unwrap_or_default();
    let mut s = String::from("epoch,train_loss");
    for m in &metrics {
        s.push_str(&format!(",valid_{m}"));
    }
    s.push_str(",epoch_secs,tokens_per_sec\n");
    let cell =
        |h: &BTreeMap<String, f64>, k: &str| h.get(k).map_or(String::new(), |v| v.to_string());
    for (i, h) in history.iter().enumerate() {
        s.push_str(&format!("{},{}", i + 1, cell(h, "train_loss")));
        for m in &metrics {
            s.push(',');
            s.push_str(&cell(h, m));
        }
        s.push_str(&format!(
            ",{},{}\n",
            cell(h, "epoch_secs"),
            cell(h, "tokens_per_sec")
        ));
    }
    s
}

/// The micro-batches of `epoch`: the rows shuffled from the seed and the
/// epoch, then, within windows of 16 batches, sorted by the length of their
/// rendered history so a batch holds prompts of similar length (little
/// padding), and the batches shuffled again.
fn epoch_order(teacher: &Teacher, t: &TrainTeacher, epoch: usize) -> Vec<Vec<usize>> {
    let bs = t.train.batch_size;
    let mut rng = ChaCha8Rng::seed_from_u64(
        teacher.seed ^ (epoch as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407),
    );
    let mut rows = t.rows.clone();
    rows.shuffle(&mut rng);
    let mut batches: Vec<Vec<usize>> = Vec::new();
    for window in rows.chunks(bs * 16) {
        let mut w = window.to_vec();
        w.sort_by_key(|&r| teacher.prompter.history_len(t.ds.history(&t.ds.train[r])));
        batches.extend(w.chunks(bs).map(<[usize]>::to_vec));
    }
    batches.shuffle(&mut rng);
    batches
}

/// The learning rate at optimiser step `step` (0-based) of `total`: linear
/// warm-up over `warm` steps, then cosine decay to 0.
pub fn lr_at(peak: f64, step: u64, warm: u64, total: u64) -> f64 {
    if step < warm {
        return peak * (step + 1) as f64 / warm as f64;
    }
    let span = total.saturating_sub(warm).max(1) as f64;
    let p = ((step - warm) as f64 / span).min(1.0);
    peak * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
}

/// The validation score of the early-stopping metric: the ranking head's
/// configured metric, or the generative HR@1.
fn validate(teacher: &mut Teacher, t: &TrainTeacher) -> Result<BTreeMap<String, f64>> {
    let ds = t.ds;
    let limit = (t.train.valid_rows > 0).then_some(t.train.valid_rows);
    let mut out = BTreeMap::new();
    if has_ranking(teacher.cfg.objective) {
        let vds;
        let ds = match limit {
            Some(n) if n < ds.valid.len() => {
                let mut d = ds.clone();
                d.valid.truncate(n);
                vds = d;
                &vds
            }
            _ => ds,
        };
        out.extend(eval_ranking(teacher, ds, SplitName::Valid, t.eval)?.metrics);
    } else {
        out.extend(eval_generative(teacher, ds, SplitName::Valid, t.eval, limit)?.metrics());
    }
    Ok(out)
}

fn score_of(teacher: &Teacher, t: &TrainTeacher, m: &BTreeMap<String, f64>) -> Result<f64> {
    let key = if has_ranking(teacher.cfg.objective) {
        t.train.metric.to_string()
    } else {
        keys::GEN_HR1.to_string()
    };
    m.get(&key)
        .copied()
        .with_context(|| format!("validation gave no `{key}`"))
}

/// The teacher in the shared loop: its optimiser, its schedule and the
/// tokens it trained on.
struct TeacherRun<'a, 'b> {
    teacher: &'a mut Teacher,
    t: &'a TrainTeacher<'b>,
    opt: AdamW,
    /// Warm-up steps and total steps of the learning-rate schedule.
    warm: u64,
    total: u64,
    /// Training tokens of this process's epochs, and of the current one.
    tokens: usize,
    epoch_tokens: usize,
}

impl TeacherRun<'_, '_> {
    /// The manifest of a checkpoint of this run after `epoch`.
    fn manifest(&self, epoch: usize, metrics: &BTreeMap<String, f64>) -> TeacherManifest {
        let (teacher, t) = (&*self.teacher, self.t);
        TeacherManifest {
            format: FORMAT.into(),
            version: VERSION,
            spec: teacher.spec(),
            teacher: teacher.cfg.clone(),
            seed: teacher.seed,
            backbone: t.backbone.clone(),
            student: t.student.clone(),
            dataset: t.reference.clone(),
            epoch,
            step: self.opt.step,
            metrics: metrics.clone(),
            weights: String::new(),
            weights_sha256: String::new(),
            config_sha256: None, // filled by checkpoint::save
        }
    }

    /// Loads the checkpoint `path` after checking that it belongs to this
    /// backbone, student and dataset.
    fn load(&mut self, path: &Path) -> Result<(TeacherManifest, Option<OptState>)> {
        let t = self.t;
        checkpoint::load_into(
            path,
            self.teacher,
            &t.backbone.sha256,
            &t.student.sha256,
            &t.reference.fingerprint,
        )
    }

    /// One micro-batch (`k`-th of epoch `e0`, 0-based): forward and
    /// backward, its gradients added to `acc`; returns the loss.
    fn micro_batch(
        &mut self,
        e0: usize,
        k: usize,
        chunk: &[usize],
        acc: &mut [Vec<f32>],
    ) -> Result<f64> {
        let t = self.t;
        let rows: Vec<_> = chunk.iter().map(|&r| &t.ds.train[r]).collect();
        let hybrid_p = if self.teacher.cfg.curriculum {
            self.opt.step as f64 / self.total.max(1) as f64
        } else {
            1.0
        };
        let drop_seed = self.teacher.seed
            ^ ((e0 as u64) << 40)
            ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let out = self
            .teacher
            .micro_step(t.ds, &rows, e0, hybrid_p, drop_seed)?;
        if !out.loss.is_finite() {
            bail!(
                "the teacher's loss became {} at epoch {} step {}",
                out.loss,
                e0 + 1,
                self.opt.step
            );
        }
        self.epoch_tokens += out.tokens;
        add_scaled(acc, &out.grads, 1.0 / t.train.grad_accum as f32);
        Ok(out.loss)
    }

    /// One AdamW step with the accumulated gradients (clipped by the
    /// optimiser) at the scheduled learning rate; clears them.
    fn update(&mut self, acc: &mut [Vec<f32>]) -> Result<()> {
        let tr = self.t.train;
        self.opt.config.lr = lr_at(tr.lr, self.opt.step, self.warm, self.total);
        let gs: Vec<&[f32]> = acc.iter().map(Vec::as_slice).collect();
        self.opt.step(&mut self.teacher.params_mut(), &gs)?;
        acc.iter_mut().for_each(|a| a.fill(0.0));
        Ok(())
    }
}

impl Trainee for TeacherRun<'_, '_> {
    /// The validation metrics plus `train_loss`, `epoch_secs` and
    /// `tokens_per_sec`.
    type Row = BTreeMap<String, f64>;

    fn stage_name(&self) -> &str {
        "train.teacher"
    }

    /// The epoch's micro-batches ([`epoch_order`]), one optimiser step
    /// every `grad_accum` of them and after the last.
    fn train_epoch(&mut self, epoch: usize, progress: &mut Progress) -> Result<f64> {
        let e0 = epoch - 1;
        let order = epoch_order(self.teacher, self.t, e0);
        progress.begin(self.t.rows.len() as u64, "rows");
        let start = Instant::now();
        self.epoch_tokens = 0;
        let mut acc = self.teacher.zero_grads();
        let (mut loss_sum, mut in_acc) = (0.0, 0usize);
        for (k, chunk) in order.iter().enumerate() {
            loss_sum += self.micro_batch(e0, k, chunk, &mut acc)?;
            in_acc += 1;
            if in_acc == self.t.train.grad_accum || k + 1 == order.len() {
                self.update(&mut acc)?;
                in_acc = 0;
            }
            let rate = self.epoch_tokens as f64 / start.elapsed().as_secs_f64().max(1e-9);
            let stepped = (in_acc == 0).then_some(self.opt.step);
            let loss = loss_sum / (k + 1) as f64;
            progress.advance(chunk.len() as u64, stepped, loss, Some(rate));
        }
        self.tokens += self.epoch_tokens;
        Ok(loss_sum / order.len().max(1) as f64)
    }

    fn steps(&self) -> u64 {
        self.opt.step
    }

    fn validate(&mut self) -> Result<(f64, BTreeMap<String, f64>)> {
        let metrics = validate(self.teacher, self.t)?;
        Ok((score_of(self.teacher, self.t, &metrics)?, metrics))
    }

    fn history_row(&self, r: &EpochRecord) -> BTreeMap<String, f64> {
        let mut row = r.metrics.clone();
        row.insert("train_loss".into(), r.train_loss);
        row.insert("epoch_secs".into(), r.epoch_secs);
        let rate = self.epoch_tokens as f64 / r.epoch_secs.max(1e-9);
        row.insert("tokens_per_sec".into(), rate);
        row
    }

    fn history_csv(&self, rows: &[BTreeMap<String, f64>]) -> Result<String> {
        Ok(history_csv(rows))
    }

    /// Saves `best`; its manifest records the epoch's history row.
    fn save_best(&mut self, record: &EpochRecord) -> Result<()> {
        let dir = self.t.out_dir.join("checkpoints");
        let manifest = self.manifest(record.epoch, &self.history_row(record));
        checkpoint::save(&dir, "best", self.teacher, &manifest, None)?;
        Ok(())
    }

    fn save_last(&mut self, dir: &Path, stem: &str, record: &EpochRecord) -> Result<String> {
        let (m, v) = self.opt.moments();
        let o = OptState {
            step: self.opt.step,
            m: m.to_vec(),
            v: v.to_vec(),
        };
        let manifest = self.manifest(record.epoch, &self.history_row(record));
        let wpath = checkpoint::save(dir, stem, self.teacher, &manifest, Some(&o))?;
        let (saved, _) = checkpoint::read_manifest(&wpath)?;
        Ok(saved.weights_sha256)
    }

    fn load_last(&mut self, path: &Path, _step: u64) -> Result<(usize, String)> {
        let (m, o) = self.load(path)?;
        let o = o.context("the `last` checkpoint holds no optimiser state")?;
        self.opt.restore(o.step, o.m, o.v)?;
        Ok((m.epoch, m.weights_sha256))
    }
}

/// Trains `teacher` in `t.out_dir`, resuming after the last committed epoch
/// of the same run (`run_key`; another run's state is refused); leaves the
/// best weights loaded.
pub fn train(teacher: &mut Teacher, t: &TrainTeacher, run_key: &str) -> Result<TeacherOutcome> {
    let tr = t.train;
    if t.rows.is_empty() {
        bail!("no training rows for the teacher");
    }
    let per_step = tr.batch_size * tr.grad_accum;
    let total = t.rows.len().div_ceil(per_step) as u64 * tr.max_epochs as u64;
    let opt = AdamW::new(
        AdamWConfig::new(tr.lr, tr.weight_decay, tr.grad_clip),
        &teacher.param_sizes(),
    );
    let mut run = TeacherRun {
        teacher,
        t,
        opt,
        warm: ((tr.warmup * total as f64).ceil() as u64).max(1),
        total,
        tokens: 0,
        epoch_tokens: 0,
    };
    let report = fit(
        &mut run,
        &FitOptions {
            out_dir: t.out_dir,
            run_key: run_key.to_string(),
            max_epochs: tr.max_epochs,
            patience: tr.patience,
            progress: t.progress,
            halt_after_epoch: t.halt_after_epoch,
            legacy_state: Some(t.out_dir.join("state.json")),
        },
    )?;
    let best = t.out_dir.join("checkpoints/best.safetensors");
    run.load(&best)?;
    let train_secs: f64 = report.secs_here.iter().sum();
    let st = report.state;
    Ok(TeacherOutcome {
        epochs: st.epoch,
        best_epoch: st.best_epoch,
        history: st.history,
        best,
        tokens_per_sec: run.tokens as f64 / train_secs.max(1e-9),
        mean_epoch_secs: train_secs / report.secs_here.len().max(1) as f64,
        resumed_after: report.resumed_after.unwrap_or(0),
        rows: t.rows.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_csv_has_the_students_layout() {
        let h = |loss: f64, ndcg: f64| {
            BTreeMap::from([
                ("train_loss".to_string(), loss),
                ("ndcg@10".to_string(), ndcg),
                ("hr@10".to_string(), 0.5),
                ("epoch_secs".to_string(), 2.0),
                ("tokens_per_sec".to_string(), 100.0),
            ])
        };
        assert_eq!(
            history_csv(&[h(3.0, 0.25), h(2.5, 0.375)]),
            "epoch,train_loss,valid_hr@10,valid_ndcg@10,epoch_secs,tokens_per_sec\n\
             1,3,0.5,0.25,2,100\n\
             2,2.5,0.5,0.375,2,100\n"
        );
    }
}
