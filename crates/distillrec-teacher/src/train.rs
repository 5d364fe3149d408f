//! Training the teacher: AdamW over every trainable tensor, linear warm-up
//! then cosine decay, gradient accumulation, global-norm clipping, early
//! stopping on the validation metric, `checkpoints/best` and
//! `checkpoints/last-e<epoch>` after every epoch and an exact resume from
//! `state.json`, which names the `last` it belongs to (the epoch commit of
//! `distillrec_train::commit`; every random choice is a function of the
//! seed, the epoch and the step, so a resumed run takes the same steps as an
//! uninterrupted one).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use distillrec_config::{EvalOptions, TeacherTrain};
use distillrec_data::{Dataset, SplitName};
use distillrec_models::optim::{AdamW, AdamWConfig};
use distillrec_train::commit::{self, LastRef};
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
    /// Run directory (`checkpoints/`, `state.json`, `history.csv`).
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

/// Progress saved after every epoch.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct State {
    key: String,
    epoch: usize,
    step: u64,
    best: Option<f64>,
    best_epoch: usize,
    bad_epochs: usize,
    history: Vec<BTreeMap<String, f64>>,
    /// The `last` checkpoint of `epoch` (absent in states written before
    /// the epoch commit named it: `last.safetensors` then).
    #[serde(default)]
    last: Option<LastRef>,
}

/// Optimiser steps between two progress log lines when stderr is not a
/// terminal (PyTorch Lightning's `log_every_n_steps` default).
pub const LOG_EVERY: u64 = 50;

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

/// The loop state to start from: a fresh one, or the one in `state.json`
/// when it belongs to this run (`run_key`) and has a finished epoch, with
/// the weights and optimiser moments of exactly the `last` checkpoint it
/// names loaded into `teacher` and `opt`.
fn resume(
    teacher: &mut Teacher,
    t: &TrainTeacher,
    run_key: &str,
    opt: &mut AdamW,
) -> Result<State> {
    let fresh = State {
        key: run_key.to_string(),
        epoch: 0,
        step: 0,
        best: None,
        best_epoch: 0,
        bad_epochs: 0,
        history: Vec::new(),
        last: None,
    };
    let state_path = t.out_dir.join("state.json");
    let text = match std::fs::read_to_string(&state_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(fresh),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot read", state_path.display())),
    };
    let old: State =
        serde_json::from_str(&text).with_context(|| format!("{}", state_path.display()))?;
    if old.key != run_key || old.epoch == 0 {
        return Ok(fresh);
    }
    let last = t
        .out_dir
        .join("checkpoints")
        .join(commit::last_file(old.last.as_ref()));
    let (m, o) = checkpoint::load_into(
        &last,
        teacher,
        &t.backbone.sha256,
        &t.student.sha256,
        &t.reference.fingerprint,
    )?;
    commit::check_last(
        &last,
        m.epoch,
        &m.weights_sha256,
        old.epoch,
        old.last.as_ref(),
    )?;
    let o = o.context("the `last` checkpoint holds no optimiser state")?;
    opt.restore(o.step, o.m, o.v)?;
    tracing::info!("resuming the teacher after epoch {}", old.epoch);
    Ok(old)
}

/// Commits the epoch `st.epoch` (`distillrec_train::commit`): writes
/// `last-e<epoch>` with the optimiser state, then `state.json` naming it,
/// then removes the older `last` files.
fn commit_epoch(
    teacher: &Teacher,
    opt: &AdamW,
    manifest: &TeacherManifest,
    st: &mut State,
    out_dir: &Path,
) -> Result<()> {
    let ckpt = out_dir.join("checkpoints");
    let (m, v) = opt.moments();
    let o = OptState {
        step: opt.step,
        m: m.to_vec(),
        v: v.to_vec(),
    };
    let stem = commit::last_stem(st.epoch);
    let wpath = checkpoint::save(&ckpt, &stem, teacher, manifest, Some(&o))?;
    let (saved, _) = checkpoint::read_manifest(&wpath)?;
    st.last = Some(LastRef {
        file: format!("{stem}.safetensors"),
        sha256: saved.weights_sha256,
    });
    distillrec_data::fsutil::atomic_write(
        &out_dir.join("state.json"),
        serde_json::to_string_pretty(&st)?.as_bytes(),
    )?;
    commit::remove_stale_last(&ckpt, &stem)
}

/// Trains `teacher` in `t.out_dir`, resuming from `state.json` when it
/// belongs to the same run (`run_key`); leaves the best weights loaded.
pub fn train(teacher: &mut Teacher, t: &TrainTeacher, run_key: &str) -> Result<TeacherOutcome> {
    let tr = t.train;
    if t.rows.is_empty() {
        bail!("no training rows for the teacher");
    }
    let ckpt = t.out_dir.join("checkpoints");
    std::fs::create_dir_all(&ckpt)?;
    let per_step = tr.batch_size * tr.grad_accum;
    let steps_per_epoch = t.rows.len().div_ceil(per_step) as u64;
    let total = steps_per_epoch * tr.max_epochs as u64;
    let warm = ((tr.warmup * total as f64).ceil() as u64).max(1);
    let mut opt = AdamW::new(
        AdamWConfig::new(tr.lr, tr.weight_decay, tr.grad_clip),
        &teacher.param_sizes(),
    );
    let mut st = resume(teacher, t, run_key, &mut opt)?;
    let (be, se) = (&t.backbone, &t.student);
    let resumed_after = st.epoch;
    let manifest =
        |teacher: &Teacher, st: &State, metrics: BTreeMap<String, f64>| TeacherManifest {
            format: FORMAT.into(),
            version: VERSION,
            spec: teacher.spec(),
            teacher: teacher.cfg.clone(),
            seed: teacher.seed,
            backbone: be.clone(),
            student: se.clone(),
            dataset: t.reference.clone(),
            epoch: st.epoch,
            step: st.step,
            metrics,
            weights: String::new(),
            weights_sha256: String::new(),
            config_sha256: None, // filled by checkpoint::save
        };
    let (mut tokens, mut train_secs, mut epochs_here) = (0usize, 0.0f64, 0usize);
    // without a terminal (nohup, a batch scheduler) the bar is not drawn:
    // a log line every LOG_EVERY optimiser steps says how the epoch goes
    let log_steps = t.progress && !std::io::stderr().is_terminal();
    while st.epoch < tr.max_epochs && (st.best.is_none() || st.bad_epochs < tr.patience.max(1)) {
        let epoch = st.epoch;
        let start = Instant::now();
        let order = epoch_order(teacher, t, epoch);
        let bar = if t.progress {
            indicatif::ProgressBar::new(t.rows.len() as u64).with_style(
                indicatif::ProgressStyle::with_template(
                    "teacher epoch {prefix} [{bar:30}] {pos}/{len} rows, {msg} · ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            )
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_prefix(format!("{}", epoch + 1));
        let mut acc = teacher.zero_grads();
        let (mut loss_sum, mut loss_n, mut in_acc) = (0.0, 0usize, 0usize);
        let chunks: Vec<&[usize]> = order.iter().map(Vec::as_slice).collect();
        let epoch_tokens_start = tokens;
        for (k, chunk) in chunks.iter().enumerate() {
            let rows: Vec<_> = chunk.iter().map(|&r| &t.ds.train[r]).collect();
            let hybrid_p = if teacher.cfg.curriculum {
                st.step as f64 / total.max(1) as f64
            } else {
                1.0
            };
            let drop_seed = teacher.seed
                ^ ((epoch as u64) << 40)
                ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let out = teacher.micro_step(t.ds, &rows, epoch, hybrid_p, drop_seed)?;
            if !out.loss.is_finite() {
                bail!(
                    "the teacher's loss became {} at epoch {} step {}",
                    out.loss,
                    epoch + 1,
                    st.step
                );
            }
            loss_sum += out.loss;
            loss_n += 1;
            tokens += out.tokens;
            let w = 1.0 / tr.grad_accum as f32;
            add_scaled(&mut acc, &out.grads, w);
            in_acc += 1;
            if in_acc == tr.grad_accum || k + 1 == chunks.len() {
                opt.config.lr = lr_at(tr.lr, st.step, warm, total);
                let gs: Vec<&[f32]> = acc.iter().map(Vec::as_slice).collect();
                opt.step(&mut teacher.params_mut(), &gs)?;
                acc.iter_mut().for_each(|a| a.fill(0.0));
                in_acc = 0;
                st.step += 1;
            }
            bar.inc(chunk.len() as u64);
            let secs = start.elapsed().as_secs_f64().max(1e-9);
            let rate = (tokens - epoch_tokens_start) as f64 / secs;
            let mean_loss = loss_sum / loss_n as f64;
            bar.set_message(format!("loss {mean_loss:.3}, {rate:.0} tokens/s"));
            if log_steps && in_acc == 0 && st.step.is_multiple_of(LOG_EVERY) {
                let done = chunks[..=k].iter().map(|c| c.len()).sum::<usize>();
                let eta = secs / done as f64 * (t.rows.len() - done) as f64;
                tracing::info!(
                    epoch = epoch + 1,
                    step = st.step,
                    rows = done,
                    of = t.rows.len(),
                    loss = format!("{mean_loss:.4}"),
                    tokens_per_sec = format!("{rate:.0}"),
                    eta_secs = format!("{eta:.0}"),
                    "teacher training"
                );
            }
        }
        bar.finish_and_clear();
        let secs = start.elapsed().as_secs_f64();
        train_secs += secs;
        epochs_here += 1;
        let mut metrics = validate(teacher, t)?;
        let score = score_of(teacher, t, &metrics)?;
        metrics.insert("train_loss".into(), loss_sum / loss_n.max(1) as f64);
        metrics.insert("epoch_secs".into(), secs);
        metrics.insert(
            "tokens_per_sec".into(),
            (tokens - epoch_tokens_start) as f64 / secs.max(1e-9),
        );
        tracing::info!("teacher epoch {}: {metrics:?}", epoch + 1);
        st.epoch += 1;
        st.history.push(metrics.clone());
        if st.best.is_none_or(|b| score > b) {
            st.best = Some(score);
            st.best_epoch = st.epoch;
            st.bad_epochs = 0;
            checkpoint::save(
                &ckpt,
                "best",
                teacher,
                &manifest(teacher, &st, metrics.clone()),
                None,
            )?;
        } else {
            st.bad_epochs += 1;
        }
        distillrec_data::fsutil::atomic_write(
            &t.out_dir.join("history.csv"),
            history_csv(&st.history).as_bytes(),
        )?;
        commit_epoch(
            teacher,
            &opt,
            &manifest(teacher, &st, metrics),
            &mut st,
            t.out_dir,
        )?;
        if t.halt_after_epoch == Some(st.epoch) {
            bail!("halted after epoch {} (as asked)", st.epoch);
        }
    }
    let best = ckpt.join("best.safetensors");
    checkpoint::load_into(
        &best,
        teacher,
        &be.sha256,
        &se.sha256,
        &t.reference.fingerprint,
    )?;
    Ok(TeacherOutcome {
        epochs: st.epoch,
        best_epoch: st.best_epoch,
        history: st.history,
        best,
        tokens_per_sec: tokens as f64 / train_secs.max(1e-9),
        mean_epoch_secs: train_secs / epochs_here.max(1) as f64,
        resumed_after,
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
