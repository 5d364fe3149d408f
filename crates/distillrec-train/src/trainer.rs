//! The training loop shared by every student (and, with a different loss,
//! by distillation): AdamW, shuffling from the run seed, early stopping on a
//! validation metric, best and last checkpoints, resume, per-epoch history.
//!
//! The epochs, early stopping, checkpoints and resume are the one loop of
//! [`crate::fit`]; a student run is its [`Trainee`]: after every epoch
//! `checkpoints/last-e<epoch>.safetensors` holds the weights, the optimizer
//! moments (`adam.m.<name>`, `adam.v.<name>`) and the objective's extra
//! tensors (`extra.<name>`). Each epoch's generator is derived from `(seed, epoch)` alone, so a run
//! killed at any point and restarted with the same command continues from
//! the last committed epoch and ends exactly as an uninterrupted run would.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use distillrec_config::{EvalOptions, LossKind, Objective, StudentConfig, TrainStage};
use distillrec_data::{Dataset, Row, SplitName};
use distillrec_eval::{evaluate_all, EvalError, EvalReport};
use distillrec_models::loss::{bce_sampled, cross_entropy};
use distillrec_models::params::Params;
use distillrec_models::student::ensemble_scores;
use distillrec_models::{ForwardCtx, SeqBatch, Student, StudentSpec};
use distillrec_run::History;

use crate::checkpoint::{self, DatasetRef, Expect};
use crate::fit::{fit, EpochRecord, FitOptions, FitReport, Progress, Trainee};
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
    /// Start from this checkpoint's weights instead of the seed's (active
    /// distillation's warm start); it must be the same student on the same
    /// dataset, and its digest is part of the run key.
    pub init: Option<&'a Path>,
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
    evaluate_ensemble(&[student], ds, split, opts)
}

/// Evaluates the ensemble of `students` (their mean log-probabilities,
/// see [`ensemble_scores`]; one student is itself) on one split of `ds`.
pub fn evaluate_ensemble(
    students: &[&Student],
    ds: &Dataset,
    split: SplitName,
    opts: &EvalOptions,
) -> Result<EvalReport, EvalError> {
    evaluate_all(ds, split, opts, |rows: &[&Row]| {
        let hist: Vec<&[u32]> = rows.iter().map(|r| ds.history(r)).collect();
        ensemble_scores(students, &hist).map_err(|e| EvalError::Model(e.to_string()))
    })
}

fn run_key(
    opts: &TrainOptions,
    spec: &StudentSpec,
    fingerprint: &str,
    objective: serde_json::Value,
    init: Option<String>,
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
    if let Some(digest) = init {
        key["init"] = digest.into();
    }
    key.to_string()
}

/// The student a run starts from: the seed's, or the weights of
/// `opts.init` (same dataset and architecture, else refused), with that
/// checkpoint's weight digest.
fn initial_student(
    spec: &StudentSpec,
    data: &DatasetRef,
    opts: &TrainOptions,
    device: &Device,
) -> Result<(Student, Option<String>)> {
    let Some(path) = opts.init else {
        return Ok((Student::new(spec, opts.seed, device)?, None));
    };
    let expect = Expect {
        fingerprint: Some(&data.fingerprint),
        kind: Some(spec.kind),
    };
    let loaded = crate::checkpoint::load(path, &expect, device)
        .with_context(|| format!("the warm-start checkpoint {}", path.display()))?;
    if loaded.manifest.spec != *spec {
        bail!(
            "{}: the warm-start checkpoint is another student ({:?}) than the configured one ({:?})",
            path.display(),
            loaded.manifest.spec,
            spec
        );
    }
    Ok((loaded.student, Some(loaded.manifest.weights_sha256)))
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

/// The shared loop ([`crate::fit`]) with any [`StageObjective`]: trains,
/// keeps the best exported student by validation metric, and evaluates it
/// on validation and test once at the end.
pub fn train_with(
    ds: &Dataset,
    data: &DatasetRef,
    opts: &TrainOptions,
    objective: &dyn StageObjective,
) -> Result<TrainOutcome> {
    let mut run = TrainRun::start(ds, data, opts, objective)?;
    let stage = opts.stage;
    let run_key = run.run_key.clone();
    let report = fit(
        &mut run,
        &FitOptions {
            out_dir: opts.out_dir,
            run_key,
            max_epochs: stage.epoch_limit(),
            patience: stage.patience,
            progress: opts.progress,
            halt_after_epoch: opts.halt_after_epoch,
            legacy_state: None,
        },
    )?;
    run.final_evaluation(&report)
}

/// One student training run: what it trains, with what, and where it
/// writes; the [`Trainee`] of the shared loop.
struct TrainRun<'a> {
    ds: &'a Dataset,
    data: &'a DatasetRef,
    opts: &'a TrainOptions<'a>,
    objective: &'a dyn StageObjective,
    device: Device,
    run_key: String,
    student: Student,
    /// The objective's trainable tensors besides the student's.
    extra: Params,
    /// The student's and the extra tensors, as the optimizer sees them.
    params: Params,
    opt: AdamW,
    units: Vec<Unit>,
    batcher: Batcher<'a>,
    /// The student the last validation evaluated (distillation's export).
    exported: Option<Student>,
    /// Validation metrics written to `history.csv`.
    metric_cols: Vec<String>,
}

impl<'a> TrainRun<'a> {
    /// Checks the stage settings against the student and the data, and
    /// builds the student from the seed; writes nothing.
    fn start(
        ds: &'a Dataset,
        data: &'a DatasetRef,
        opts: &'a TrainOptions<'a>,
        objective: &'a dyn StageObjective,
    ) -> Result<Self> {
        let (cfg, stage) = (opts.student, opts.stage);
        let device = opts.device.clone();
        let spec = StudentSpec::from_config(cfg, ds.num_items());
        let (student, init_digest) = initial_student(&spec, data, opts, &device)?;
        if cfg.objective == Objective::AllPositions && !student.has_all_positions() {
            bail!(
                "student.objective = \"all_positions\" needs a per-position model; {} supports only \"last\"",
                student.name()
            );
        }
        let units = units(ds, cfg.objective, cfg.max_len);
        if units.is_empty() {
            bail!("no training units for objective {}", cfg.objective);
        }
        let negatives = if cfg.loss == LossKind::Bce {
            cfg.negatives.max(1)
        } else {
            0
        };
        let extra = objective.extra_params().cloned().unwrap_or_default();
        let params = trainable(&student, &extra);
        Ok(TrainRun {
            ds,
            data,
            opts,
            objective,
            device,
            run_key: run_key(opts, &spec, &data.fingerprint, objective.key(), init_digest),
            opt: optimizer(stage, &params),
            student,
            extra,
            params,
            units,
            batcher: Batcher::new(ds, cfg.objective, cfg.max_len, negatives),
            exported: None,
            metric_cols: metric_columns(&opts.eval.ks),
        })
    }

    /// What a checkpoint of this run must match.
    fn expect(&self) -> Expect<'_> {
        Expect {
            fingerprint: Some(self.data.fingerprint.as_str()),
            kind: Some(self.opts.student.model),
        }
    }

    fn best_path(&self) -> PathBuf {
        self.opts.out_dir.join("checkpoints/best.safetensors")
    }

    /// Model selection is done; the test split is touched once, here, on
    /// the best checkpoint (validation is re-evaluated on it too).
    fn final_evaluation(&self, report: &FitReport<Vec<f64>>) -> Result<TrainOutcome> {
        let best_path = self.best_path();
        let best = checkpoint::load(&best_path, &self.expect(), &self.device)?;
        let valid = evaluate_student(&best.student, self.ds, SplitName::Valid, self.opts.eval)?;
        let test = evaluate_student(&best.student, self.ds, SplitName::Test, self.opts.eval)?;
        let st = &report.state;
        // every row ends with the epoch's training and validation seconds
        let secs: Vec<f64> = st.history.iter().map(|r| r[r.len() - 2]).collect();
        Ok(TrainOutcome {
            best_epoch: st.best_epoch,
            epochs: st.epoch,
            resumed_after: report.resumed_after,
            valid_cost: EvalCost::from(&valid),
            test_cost: EvalCost::from(&test),
            valid: valid.metrics,
            test: test.metrics,
            mean_epoch_secs: secs.iter().sum::<f64>() / secs.len().max(1) as f64,
            best_checkpoint: best_path,
        })
    }
}

impl Trainee for TrainRun<'_> {
    /// `epoch, train_loss, valid_<metric>…, epoch_secs, eval_secs`.
    type Row = Vec<f64>;

    fn stage_name(&self) -> &str {
        self.objective.stage_name()
    }

    /// One pass over the units in this epoch's shuffled order, one AdamW
    /// step per batch.
    fn train_epoch(&mut self, epoch: usize, progress: &mut Progress) -> Result<f64> {
        let batch_size = self.opts.stage.batch_size;
        let n_batches = self.units.len().div_ceil(batch_size);
        let mut rng = epoch_rng(self.opts.seed, epoch);
        self.units.sort_by_key(|u| u.row);
        Batcher::shuffle(&mut self.units, &mut rng);
        progress.begin(n_batches as u64, "batches");
        let mut loss_sum = 0f64;
        for (k, chunk) in self.units.chunks(batch_size).enumerate() {
            let hb = self.batcher.batch(chunk, &mut rng);
            let step = train_step(
                self.objective,
                &self.student,
                &self.params,
                &mut self.opt,
                &hb,
                &mut rng,
            )
            .with_context(|| format!("epoch {epoch}"))?;
            loss_sum += step.loss;
            let loss = loss_sum / (k + 1) as f64;
            progress.advance(1, Some(self.opt.steps()), loss, None);
        }
        Ok(loss_sum / n_batches as f64)
    }

    fn steps(&self) -> u64 {
        self.opt.steps()
    }

    /// Evaluates the exported student on validation; the score is the
    /// stage's metric.
    fn validate(&mut self) -> Result<(f64, BTreeMap<String, f64>)> {
        let stage = self.opts.stage;
        self.exported = self.objective.export(&self.student)?;
        let plain = self.exported.as_ref().unwrap_or(&self.student);
        let valid = evaluate_student(plain, self.ds, SplitName::Valid, self.opts.eval)?;
        let metric = *valid
            .metrics
            .get(&stage.metric.to_string())
            .with_context(|| format!("validation metric '{}' was not computed", stage.metric))?;
        Ok((metric, valid.metrics))
    }

    fn history_row(&self, r: &EpochRecord) -> Vec<f64> {
        let mut row = vec![r.epoch as f64, r.train_loss];
        row.extend(
            self.metric_cols
                .iter()
                .map(|c| r.metrics.get(c).copied().unwrap_or(f64::NAN)),
        );
        row.extend([r.epoch_secs, r.eval_secs]);
        row
    }

    fn history_csv(&self, rows: &[Vec<f64>]) -> Result<String> {
        let mut columns = vec!["epoch".to_string(), "train_loss".to_string()];
        columns.extend(self.metric_cols.iter().map(|c| format!("valid_{c}")));
        columns.extend(["epoch_secs".to_string(), "eval_secs".to_string()]);
        let mut h = History::new(columns.clone());
        for r in rows {
            let row: Vec<(&str, f64)> = columns
                .iter()
                .map(String::as_str)
                .zip(r.iter().copied())
                .collect();
            h.push(&row)?;
        }
        Ok(h.to_csv())
    }

    /// Saves the exported student as `best`.
    fn save_best(&mut self, r: &EpochRecord) -> Result<()> {
        let plain = self.exported.as_ref().unwrap_or(&self.student);
        let path = self.best_path();
        checkpoint::save(&path, plain, BTreeMap::new(), self.data, r.epoch, r.metrics)?;
        Ok(())
    }

    /// Saves the student with the optimizer moments and the extra tensors.
    fn save_last(&mut self, dir: &Path, stem: &str, r: &EpochRecord) -> Result<String> {
        let mut saved_state = self.opt.state_tensors()?;
        for (name, t) in self.extra.tensors() {
            saved_state.insert(format!("{EXTRA_PREFIX}{name}"), t);
        }
        let path = dir.join(format!("{stem}.safetensors"));
        let m = checkpoint::save(
            &path,
            &self.student,
            saved_state,
            self.data,
            r.epoch,
            r.metrics,
        )?;
        Ok(m.weights_sha256)
    }

    /// Restores the student, the extra tensors and the optimizer moments.
    fn load_last(&mut self, path: &Path, step: u64) -> Result<(usize, String)> {
        let loaded = checkpoint::load(path, &self.expect(), &self.device)?;
        let saved_extra: BTreeMap<String, Tensor> = loaded
            .extra
            .iter()
            .filter_map(|(k, t)| {
                k.strip_prefix(EXTRA_PREFIX)
                    .map(|name| (name.to_string(), t.clone()))
            })
            .collect();
        self.extra.load_from(&saved_extra, path)?;
        self.student = loaded.student;
        self.params = trainable(&self.student, &self.extra);
        self.opt = optimizer(self.opts.stage, &self.params);
        self.opt.load_state(&loaded.extra, step)?;
        let m = loaded.manifest;
        Ok((m.epoch, m.weights_sha256))
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
            init: None,
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
