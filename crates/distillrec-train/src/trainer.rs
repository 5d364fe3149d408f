//! The training loop shared by every student (and, with a different loss,
//! by distillation): AdamW, shuffling from the run seed, early stopping on a
//! validation metric, best and last checkpoints, resume, per-epoch history.
//!
//! Resume: after every epoch `checkpoints/last-e<epoch>.safetensors` holds
//! the weights and optimizer moments and `checkpoints/state.json` the loop
//! state (epoch, step, best so far, patience, history, and the `last` file
//! it belongs to); writing the state commits the epoch ([`crate::commit`]).
//! Each epoch's generator is derived from `(seed, epoch)` alone, so a run
//! killed at any point and restarted with the same command continues from
//! the last committed epoch and ends exactly as an uninterrupted run would.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use distillrec_config::{EvalOptions, LossKind, Objective, StudentConfig, TrainStage};
use distillrec_data::fsutil::{atomic_write, atomic_write_json};
use distillrec_data::{Dataset, Row, SplitName};
use distillrec_eval::{evaluate_all, EvalError, EvalReport};
use distillrec_models::loss::{bce_sampled, cross_entropy};
use distillrec_models::params::Params;
use distillrec_models::{ForwardCtx, SeqBatch, Student, StudentSpec};
use distillrec_run::History;

use crate::checkpoint::{self, DatasetRef, Expect};
use crate::commit::{self, LastRef};
use crate::optim::{AdamW, AdamWConfig};
use crate::units::{units, Batcher, HostBatch, Unit};

/// Everything the loop needs besides the data.
pub struct TrainOptions<'a> {
    /// Student architecture and loss.
    pub student: &'a StudentConfig,
    /// Loop settings of this stage.
    pub stage: &'a TrainStage,
    /// Evaluation protocol for validation and test.
    pub eval: &'a EvalOptions,
    /// Run seed.
    pub seed: u64,
    /// Run directory (checkpoints/ and history.csv go here).
    pub out_dir: &'a Path,
    /// Device the student trains and evaluates on.
    pub device: &'a Device,
    /// Show progress bars.
    pub progress: bool,
    /// Stop with an error right after this epoch's checkpoint, exactly where
    /// a killed run would stop (tests of resume; time-boxed runs).
    pub halt_after_epoch: Option<usize>,
}

/// What a finished training run reports.
#[derive(Clone, Debug, Serialize)]
pub struct TrainOutcome {
    /// Epoch of the best validation metric (1-based).
    pub best_epoch: usize,
    /// Epochs completed in total (including before a resume).
    pub epochs: usize,
    /// Epoch this invocation resumed after, if it resumed.
    pub resumed_after: Option<usize>,
    /// Validation metrics of the best checkpoint.
    pub valid: BTreeMap<String, f64>,
    /// Test metrics of the best checkpoint (evaluated once, at the end).
    pub test: BTreeMap<String, f64>,
    /// Cost of the final evaluations.
    pub valid_cost: EvalCost,
    /// Cost of the test evaluation.
    pub test_cost: EvalCost,
    /// Mean wall seconds of a training epoch (excluding validation).
    pub mean_epoch_secs: f64,
    /// Best checkpoint path.
    pub best_checkpoint: PathBuf,
}

/// Wall time and throughput of one evaluation.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EvalCost {
    /// Rows evaluated.
    pub rows: usize,
    /// Wall seconds.
    pub wall_secs: f64,
    /// Rows per second.
    pub rows_per_sec: f64,
}

impl From<&EvalReport> for EvalCost {
    fn from(r: &EvalReport) -> Self {
        EvalCost {
            rows: r.rows,
            wall_secs: r.wall_secs,
            rows_per_sec: r.rows_per_sec,
        }
    }
}

/// Loop state saved after every epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct LoopState {
    /// What this state belongs to; a resume with anything else is refused.
    run_key: String,
    epoch: usize,
    step: u64,
    best_metric: f64,
    best_epoch: usize,
    bad_epochs: usize,
    finished: bool,
    history_columns: Vec<String>,
    history: Vec<Vec<f64>>,
    epoch_secs: Vec<f64>,
    /// The `last` checkpoint of `epoch` (absent in states written before
    /// the epoch commit named it: `last.safetensors` then).
    #[serde(default)]
    last: Option<LastRef>,
}

impl LoopState {
    /// The state before the first epoch; `history.csv` gets the columns
    /// epoch, train loss, `valid_<metric>` for each of `metric_cols`, and
    /// the epoch's training and validation seconds.
    fn fresh(run_key: String, metric_cols: &[String]) -> Self {
        let mut columns = vec!["epoch".to_string(), "train_loss".to_string()];
        columns.extend(metric_cols.iter().map(|c| format!("valid_{c}")));
        columns.extend(["epoch_secs".to_string(), "eval_secs".to_string()]);
        LoopState {
            run_key,
            epoch: 0,
            step: 0,
            best_metric: f64::NEG_INFINITY,
            best_epoch: 0,
            bad_epochs: 0,
            finished: false,
            history_columns: columns,
            history: Vec::new(),
            epoch_secs: Vec::new(),
            last: None,
        }
    }
}

/// The validation metrics kept in the history: `hr@k`, `ndcg@k` for each k.
fn metric_columns(ks: &[usize]) -> Vec<String> {
    ks.iter()
        .flat_map(|k| [format!("hr@{k}"), format!("ndcg@{k}")])
        .collect()
}

/// Evaluates `student` on one split of `ds`.
pub fn evaluate_student(
    student: &Student,
    ds: &Dataset,
    split: SplitName,
    opts: &EvalOptions,
) -> Result<EvalReport, EvalError> {
    evaluate_all(ds, split, opts, |rows: &[&Row]| {
        let hist: Vec<&[u32]> = rows.iter().map(|r| ds.history(r)).collect();
        student
            .score_histories(&hist)
            .map_err(|e| EvalError::Model(e.to_string()))
    })
}

fn run_key(
    opts: &TrainOptions,
    spec: &StudentSpec,
    fingerprint: &str,
    objective: serde_json::Value,
) -> String {
    let mut key = serde_json::json!({
        "spec": spec,
        "loss": opts.student.loss,
        "negatives": opts.student.negatives,
        "objective": opts.student.objective,
        "stage": opts.stage,
        "seed": opts.seed,
        "dataset": fingerprint,
    });
    // The stage once also held `grad_accum = 1` and `warmup_steps = 0` (the
    // only values the student loop took); keep them in the key so that runs
    // started before their removal still resume, with the same state.json.
    key["stage"]["grad_accum"] = 1.into();
    key["stage"]["warmup_steps"] = 0.into();
    if !objective.is_null() {
        key["objective_extra"] = objective;
    }
    key.to_string()
}

/// The epoch generator: a function of the seed and the epoch only.
pub fn epoch_rng(seed: u64, epoch: usize) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(epoch as u64);
    r
}

/// What a training stage optimises, plugged into the shared loop: the
/// student's own loss ([`BaseObjective`]) or distillation (in
/// `distillrec-distill`). The loop owns batching, the optimizer, early
/// stopping, checkpoints and resume; the objective owns the loss, any
/// trainable tensors besides the student's, and the plain student it
/// exports.
pub trait StageObjective {
    /// Config group of the stage, for messages (`train.student`).
    fn stage_name(&self) -> &str;
    /// Everything besides the student config that defines the objective;
    /// part of the resume key, so a run directory is never resumed under
    /// another objective.
    fn key(&self) -> serde_json::Value;
    /// Trainable tensors besides the student's (saved in `last` checkpoints
    /// as `extra.<name>` and restored on resume).
    fn extra_params(&self) -> Option<&Params> {
        None
    }
    /// The loss of one batch (a scalar to minimise).
    fn batch_loss(&self, student: &Student, hb: &HostBatch, rng: &mut ChaCha8Rng)
        -> Result<Tensor>;
    /// The plain student to evaluate and to save as `best` (distillation
    /// folds its projected embeddings into the item table); `None` means
    /// the trained student itself.
    fn export(&self, student: &Student) -> Result<Option<Student>> {
        let _ = student;
        Ok(None)
    }
}

/// The student's own loss (SPEC 4): CE over the catalogue or sampled BCE.
pub struct BaseObjective<'a> {
    /// Loss settings.
    pub cfg: &'a StudentConfig,
}

impl StageObjective for BaseObjective<'_> {
    fn stage_name(&self) -> &str {
        "train.student"
    }
    fn key(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    fn batch_loss(
        &self,
        student: &Student,
        hb: &HostBatch,
        rng: &mut ChaCha8Rng,
    ) -> Result<Tensor> {
        let table = student.item_table().clone();
        let rep = forward_rep(student, self.cfg, hb, &table, rng)?;
        base_loss(self.cfg, &rep, &table, hb)
    }
}

/// Representations `[M, d]` of a host batch: `[B, d]` for `last`, every
/// position `[B·L, d]` for `all_positions` (aligned with `hb.targets`),
/// reading items from `table`.
pub fn forward_rep(
    student: &Student,
    cfg: &StudentConfig,
    hb: &HostBatch,
    table: &Tensor,
    rng: &mut ChaCha8Rng,
) -> Result<Tensor> {
    let dev = student.device().clone();
    let l = student.spec.max_len;
    let sb = SeqBatch::from_ids(hb.inputs.clone(), l, &dev)?;
    let mut ctx = ForwardCtx::train(rng);
    let d = student.spec.hidden;
    Ok(match cfg.objective {
        Objective::Last => student.represent_with(&sb, table, &mut ctx)?,
        Objective::AllPositions => student
            .hidden_all(&sb, table, &mut ctx)?
            .reshape((hb.b * l, d))?,
    })
}

/// The student's own loss on representations from [`forward_rep`]: mean
/// over supervised targets of CE over the catalogue or sampled BCE.
pub fn base_loss(
    cfg: &StudentConfig,
    rep: &Tensor,
    table: &Tensor,
    hb: &HostBatch,
) -> Result<Tensor> {
    let dev = rep.device();
    let targets = Tensor::from_vec(hb.targets.clone(), hb.targets.len(), dev)?;
    Ok(match cfg.loss {
        LossKind::Ce => cross_entropy(rep, table, &targets)?,
        LossKind::Bce => {
            let n = cfg.negatives.max(1);
            let negs = Tensor::from_vec(hb.negatives.clone(), (hb.targets.len(), n), dev)?;
            bce_sampled(rep, table, &targets, &negs)?
        }
    })
}

/// What one optimisation step reports: the batch loss and the wall time of
/// its phases (the benchmark prints them; the loop sums the loss).
#[derive(Clone, Copy, Debug, Default)]
pub struct StepReport {
    /// The batch loss before the update.
    pub loss: f64,
    /// Seconds in the forward pass and loss (up to the loss value on the host).
    pub forward_secs: f64,
    /// Seconds in backpropagation.
    pub backward_secs: f64,
    /// Seconds in the optimizer update.
    pub optimizer_secs: f64,
}

/// One optimisation step, the only one the loop (and `bench student`) runs:
/// the objective's loss of `hb`, backward, then AdamW on `params`. A
/// non-finite loss is refused before the weights change.
pub fn train_step(
    objective: &dyn StageObjective,
    student: &Student,
    params: &Params,
    opt: &mut AdamW,
    hb: &HostBatch,
    rng: &mut ChaCha8Rng,
) -> Result<StepReport> {
    let t0 = Instant::now();
    let loss = objective.batch_loss(student, hb, rng)?;
    let lv = loss.to_scalar::<f32>()? as f64;
    if !lv.is_finite() {
        bail!("training loss is {lv}; lower {}.lr", objective.stage_name());
    }
    let t1 = Instant::now();
    let grads = loss.backward()?;
    let t2 = Instant::now();
    opt.step(params, &grads)?;
    let t3 = Instant::now();
    Ok(StepReport {
        loss: lv,
        forward_secs: (t1 - t0).as_secs_f64(),
        backward_secs: (t2 - t1).as_secs_f64(),
        optimizer_secs: (t3 - t2).as_secs_f64(),
    })
}

/// Prefix of extra (non-student) trainable tensors in `last` checkpoints.
const EXTRA_PREFIX: &str = "extra.";

/// Trains a student on `ds` (described by `data`) and evaluates
/// its best checkpoint on validation and test.
pub fn train_student(ds: &Dataset, data: &DatasetRef, opts: &TrainOptions) -> Result<TrainOutcome> {
    train_with(ds, data, opts, &BaseObjective { cfg: opts.student })
}

/// The shared loop with any [`StageObjective`]: trains, keeps the best
/// exported student by validation metric, and evaluates it on validation
/// and test once at the end.
pub fn train_with(
    ds: &Dataset,
    data: &DatasetRef,
    opts: &TrainOptions,
    objective: &dyn StageObjective,
) -> Result<TrainOutcome> {
    let mut run = TrainRun::start(ds, data, opts, objective)?;
    let resumed_after = run.resume()?;
    run.train_epochs()?;
    run.final_evaluation(resumed_after)
}

/// Where a run keeps its checkpoints and loop state.
struct CheckpointPaths {
    best: PathBuf,
    /// `checkpoints/`, where each epoch's `last-e<epoch>` goes.
    dir: PathBuf,
    state: PathBuf,
}

/// One training run in progress: what it trains, where it writes, and
/// where the loop stands.
struct TrainRun<'a> {
    ds: &'a Dataset,
    data: &'a DatasetRef,
    opts: &'a TrainOptions<'a>,
    objective: &'a dyn StageObjective,
    device: Device,
    paths: CheckpointPaths,
    student: Student,
    /// The objective's trainable tensors besides the student's.
    extra: Params,
    opt: AdamW,
    state: LoopState,
    /// Validation metrics written to `history.csv`.
    metric_cols: Vec<String>,
}

impl<'a> TrainRun<'a> {
    /// Checks the stage settings against the student, builds the student
    /// from the seed and a fresh loop state, creates `checkpoints/`.
    fn start(
        ds: &'a Dataset,
        data: &'a DatasetRef,
        opts: &'a TrainOptions<'a>,
        objective: &'a dyn StageObjective,
    ) -> Result<Self> {
        let (cfg, stage) = (opts.student, opts.stage);
        let device = opts.device.clone();
        let spec = StudentSpec::from_config(cfg, ds.num_items());
        let student = Student::new(&spec, opts.seed, &device)?;
        if cfg.objective == Objective::AllPositions && !student.has_all_positions() {
            bail!(
                "student.objective = \"all_positions\" needs a per-position model; {} supports only \"last\"",
                student.name()
            );
        }
        let ckpt_dir = opts.out_dir.join("checkpoints");
        std::fs::create_dir_all(&ckpt_dir).with_context(|| format!("{}", ckpt_dir.display()))?;
        let paths = CheckpointPaths {
            best: ckpt_dir.join("best.safetensors"),
            dir: ckpt_dir.clone(),
            state: ckpt_dir.join("state.json"),
        };
        let metric_cols = metric_columns(&opts.eval.ks);
        let key = run_key(opts, &spec, &data.fingerprint, objective.key());
        let state = LoopState::fresh(key, &metric_cols);
        let extra = objective.extra_params().cloned().unwrap_or_default();
        let opt = optimizer(stage, &trainable(&student, &extra));
        Ok(TrainRun {
            ds,
            data,
            opts,
            objective,
            device,
            paths,
            student,
            extra,
            opt,
            state,
            metric_cols,
        })
    }

    /// What a checkpoint of this run must match.
    fn expect(&self) -> Expect<'_> {
        Expect {
            fingerprint: Some(self.data.fingerprint.as_str()),
            kind: Some(self.opts.student.model),
        }
    }

    /// Continues from `state.json` if there is one: refuses another run's
    /// state, and after a finished epoch restores the weights, the extra
    /// tensors and the optimizer moments from `last`. Returns the epoch it
    /// resumed after.
    fn resume(&mut self) -> Result<Option<usize>> {
        let path = &self.paths.state;
        if !path.exists() {
            return Ok(None);
        }
        let saved: LoopState = serde_json::from_str(&std::fs::read_to_string(path)?)
            .with_context(|| format!("{}: unreadable training state", path.display()))?;
        if saved.run_key != self.state.run_key {
            bail!(
                "{}: this run directory holds training state for a different config, dataset, seed or teacher; use another --out",
                path.display()
            );
        }
        let mut resumed_after = None;
        if saved.epoch > 0 {
            let last = &self.paths.dir.join(commit::last_file(saved.last.as_ref()));
            let loaded = checkpoint::load(last, &self.expect(), &self.device)?;
            let m = &loaded.manifest;
            commit::check_last(
                last,
                m.epoch,
                &m.weights_sha256,
                saved.epoch,
                saved.last.as_ref(),
            )?;
            self.student = loaded.student;
            let saved_extra: BTreeMap<String, Tensor> = loaded
                .extra
                .iter()
                .filter_map(|(k, t)| {
                    k.strip_prefix(EXTRA_PREFIX)
                        .map(|name| (name.to_string(), t.clone()))
                })
                .collect();
            self.extra.load_from(&saved_extra, last)?;
            self.opt = optimizer(self.opts.stage, &trainable(&self.student, &self.extra));
            self.opt.load_state(&loaded.extra, saved.step)?;
            resumed_after = Some(saved.epoch);
            tracing::info!(
                epoch = saved.epoch,
                "resuming after the last finished epoch"
            );
        }
        self.state = saved;
        Ok(resumed_after)
    }

    /// Runs epochs until early stopping or `max_epochs`; after each one,
    /// validation, the best checkpoint if it improved, `history.csv`, and
    /// the `last` checkpoint with `state.json`.
    fn train_epochs(&mut self) -> Result<()> {
        let cfg = self.opts.student;
        let mut all_units = units(self.ds, cfg.objective, cfg.max_len);
        if all_units.is_empty() {
            bail!("no training units for objective {}", cfg.objective);
        }
        let negatives = if cfg.loss == LossKind::Bce {
            cfg.negatives.max(1)
        } else {
            0
        };
        let mut batcher = Batcher::new(self.ds, cfg.objective, cfg.max_len, negatives);
        let params = trainable(&self.student, &self.extra);
        while !self.state.finished && self.state.epoch < self.opts.stage.max_epochs {
            let epoch = self.state.epoch + 1;
            let t0 = Instant::now();
            let train_loss = self.run_epoch(epoch, &mut all_units, &mut batcher, &params)?;
            let epoch_secs = t0.elapsed().as_secs_f64();
            let valid = self.validate(epoch, train_loss, epoch_secs)?;
            self.save_last(epoch, &valid)?;
            if self.opts.halt_after_epoch == Some(epoch) && !self.state.finished {
                bail!("halted after epoch {epoch} (halt_after_epoch); re-run to resume");
            }
        }
        if self.state.best_epoch == 0 {
            bail!(
                "no epoch was trained ({}.max_epochs = {})",
                self.objective.stage_name(),
                self.opts.stage.max_epochs
            );
        }
        Ok(())
    }

    /// One pass over the units in this epoch's shuffled order, one AdamW
    /// step per batch; returns the mean batch loss.
    fn run_epoch(
        &mut self,
        epoch: usize,
        all_units: &mut [Unit],
        batcher: &mut Batcher,
        params: &Params,
    ) -> Result<f64> {
        let batch_size = self.opts.stage.batch_size;
        let n_batches = all_units.len().div_ceil(batch_size);
        let mut rng = epoch_rng(self.opts.seed, epoch);
        all_units.sort_by_key(|u| u.row);
        Batcher::shuffle(all_units, &mut rng);
        let bar = progress_bar(self.opts.progress, n_batches, epoch);
        let mut loss_sum = 0f64;
        for chunk in all_units.chunks(batch_size) {
            let hb = batcher.batch(chunk, &mut rng);
            let step = train_step(
                self.objective,
                &self.student,
                params,
                &mut self.opt,
                &hb,
                &mut rng,
            )
            .with_context(|| format!("epoch {epoch}"))?;
            loss_sum += step.loss;
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(loss_sum / n_batches as f64)
    }

    /// Evaluates the exported student on validation, updates the best
    /// epoch and the patience count (saving `best` on improvement),
    /// appends the epoch to `history.csv` and decides whether to stop.
    /// Returns the validation metrics.
    fn validate(
        &mut self,
        epoch: usize,
        train_loss: f64,
        epoch_secs: f64,
    ) -> Result<BTreeMap<String, f64>> {
        let stage = self.opts.stage;
        let t1 = Instant::now();
        let exported = self.objective.export(&self.student)?;
        let plain = exported.as_ref().unwrap_or(&self.student);
        let valid = evaluate_student(plain, self.ds, SplitName::Valid, self.opts.eval)?;
        let eval_secs = t1.elapsed().as_secs_f64();
        let metric = *valid
            .metrics
            .get(&stage.metric.to_string())
            .with_context(|| format!("validation metric '{}' was not computed", stage.metric))?;
        tracing::info!(epoch, train_loss, metric = %stage.metric, value = metric, epoch_secs, "epoch done");
        let state = &mut self.state;
        state.epoch = epoch;
        state.step = self.opt.steps();
        state.epoch_secs.push(epoch_secs);
        if metric > state.best_metric {
            state.best_metric = metric;
            state.best_epoch = epoch;
            state.bad_epochs = 0;
            checkpoint::save(
                &self.paths.best,
                plain,
                BTreeMap::new(),
                self.data,
                epoch,
                &valid.metrics,
            )?;
        } else {
            state.bad_epochs += 1;
        }
        let mut row = vec![epoch as f64, train_loss];
        row.extend(
            self.metric_cols
                .iter()
                .map(|c| valid.metrics.get(c).copied().unwrap_or(f64::NAN)),
        );
        row.extend([epoch_secs, eval_secs]);
        state.history.push(row);
        write_history(self.opts.out_dir, state)?;
        if state.bad_epochs >= stage.patience.max(1) || epoch >= stage.max_epochs {
            state.finished = true;
        }
        Ok(valid.metrics)
    }

    /// Commits the epoch ([`crate::commit`]): writes `last-e<epoch>`
    /// (weights, optimizer moments, extra tensors), then `state.json`
    /// naming it, then removes the older `last` files.
    fn save_last(&mut self, epoch: usize, valid: &BTreeMap<String, f64>) -> Result<()> {
        let mut saved_state = self.opt.state_tensors()?;
        for (name, t) in self.extra.tensors() {
            saved_state.insert(format!("{EXTRA_PREFIX}{name}"), t);
        }
        let stem = commit::last_stem(epoch);
        let file = format!("{stem}.safetensors");
        let m = checkpoint::save(
            &self.paths.dir.join(&file),
            &self.student,
            saved_state,
            self.data,
            epoch,
            valid,
        )?;
        self.state.last = Some(LastRef {
            file,
            sha256: m.weights_sha256,
        });
        atomic_write_json(&self.paths.state, &self.state)?;
        commit::remove_stale_last(&self.paths.dir, &stem)
    }

    /// Model selection is done; the test split is touched once, here, on
    /// the best checkpoint (validation is re-evaluated on it too).
    fn final_evaluation(&self, resumed_after: Option<usize>) -> Result<TrainOutcome> {
        let best = checkpoint::load(&self.paths.best, &self.expect(), &self.device)?;
        let valid = evaluate_student(&best.student, self.ds, SplitName::Valid, self.opts.eval)?;
        let test = evaluate_student(&best.student, self.ds, SplitName::Test, self.opts.eval)?;
        let secs = &self.state.epoch_secs;
        Ok(TrainOutcome {
            best_epoch: self.state.best_epoch,
            epochs: self.state.epoch,
            resumed_after,
            valid_cost: EvalCost::from(&valid),
            test_cost: EvalCost::from(&test),
            valid: valid.metrics,
            test: test.metrics,
            mean_epoch_secs: secs.iter().sum::<f64>() / secs.len().max(1) as f64,
            best_checkpoint: self.paths.best.clone(),
        })
    }
}

/// Every trainable tensor: the student's, then the objective's under
/// [`EXTRA_PREFIX`] (sharing storage, so updates through either reach both).
/// The parameters a stage trains: the student's and the objective's
/// extra ones (under `extra.`), as one set for the optimizer.
pub fn trainable(student: &Student, extra: &Params) -> Params {
    let mut all = student.params.clone();
    all.extend_prefixed(EXTRA_PREFIX, extra);
    all
}

/// A fresh AdamW over `params` with the stage's settings.
fn optimizer(stage: &TrainStage, params: &Params) -> AdamW {
    AdamW::new(
        AdamWConfig::new(stage.lr, stage.weight_decay, stage.grad_clip),
        params,
    )
}

/// The per-epoch progress bar (hidden unless `show`).
fn progress_bar(show: bool, n_batches: usize, epoch: usize) -> indicatif::ProgressBar {
    let bar = if show {
        indicatif::ProgressBar::new(n_batches as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("epoch {msg} [{bar:30}] {pos}/{len} ({eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(epoch.to_string());
    bar
}

fn write_history(dir: &Path, state: &LoopState) -> Result<()> {
    let mut h = History::new(state.history_columns.clone());
    for r in &state.history {
        let row: Vec<(&str, f64)> = state
            .history_columns
            .iter()
            .map(|c| c.as_str())
            .zip(r.iter().copied())
            .collect();
        h.push(&row)?;
    }
    atomic_write(&dir.join("history.csv"), h.to_csv().as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use distillrec_config::{Config, StudentKind};
    use distillrec_data::prepare::{prepare, PrepareOptions};
    use distillrec_data::synthetic::{generate, SyntheticOptions};

    #[test]
    fn all_positions_is_refused_for_a_net_without_per_position_output() {
        let o = SyntheticOptions {
            users: 40,
            seed: 1,
            ..Default::default()
        };
        let ds = prepare(
            "synthetic",
            &generate(&o).unwrap(),
            &PrepareOptions::default(),
            42,
        )
        .unwrap();
        let data = DatasetRef {
            fingerprint: "unused".into(),
            name: ds.name.clone(),
            dir: None,
        };
        let mut cfg = Config::load(None, &[]).unwrap();
        cfg.student.model = StudentKind::Caser;
        cfg.student.objective = Objective::AllPositions;
        let out = tempfile::tempdir().unwrap();
        let opts = TrainOptions {
            student: &cfg.student,
            stage: &cfg.train.student,
            eval: &cfg.eval,
            seed: 0,
            out_dir: out.path(),
            device: &Device::Cpu,
            progress: false,
            halt_after_epoch: None,
        };
        let err = train_student(&ds, &data, &opts).unwrap_err().to_string();
        assert_eq!(
            err,
            "student.objective = \"all_positions\" needs a per-position model; caser supports only \"last\""
        );
        assert!(
            !out.path().join("checkpoints").exists(),
            "refused before anything is written"
        );
    }
}
