//! Training and evaluating a student.

use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::Device;

use distillrec_config::{Config, EvalOptions, StudentKind};
use distillrec_data::SplitName;
use distillrec_eval::EvalReport;
use distillrec_models::device::spec_of;
use distillrec_models::Student;
use distillrec_run::{BuildInfo, Metrics, Run, RunKind};
use distillrec_train::checkpoint::{self, Expect};
use distillrec_train::{
    evaluate_ensemble, train_student as train, EvalCost, TrainOptions, TrainOutcome,
};

use crate::prepared::{load_prepared, run_data, Data};
use crate::runs::{record_training, with_run};

/// A trained student: its final metrics and how training went.
pub struct TrainedStudent {
    /// Validation and test metrics of the best checkpoint.
    pub metrics: Metrics,
    /// Epochs, costs and the best checkpoint's path.
    pub outcome: TrainOutcome,
}

/// Trains the configured student in `out` on `device` and records the
/// training (stage `train.student`, costs) in `run`.
pub fn train_student_in(
    cfg: &Config,
    data: &Data,
    out: &Path,
    run: &mut Run,
    device: &Device,
) -> Result<TrainedStudent> {
    run.set_kind(RunKind::Student)?;
    cfg.check_student_memory("student", data.ds.num_items())?;
    let opts = TrainOptions {
        student: &cfg.student,
        stage: &cfg.train.student,
        eval: &cfg.eval,
        seed: cfg.seed,
        out_dir: out,
        device,
        progress: true,
        halt_after_epoch: None,
        init: None,
    };
    let outcome = run.stage("train.student", || train(&data.ds, &data.reference, &opts))?;
    record_training(run, "student.train", &outcome, data, device)?;
    let metrics = Metrics {
        valid: outcome.valid.clone(),
        test: outcome.test.clone(),
    };
    Ok(TrainedStudent { metrics, outcome })
}

/// `train student`: the run directory `out` with the dataset (`data`, else
/// the config's), the trained student and its `metrics.json`.
pub fn train_student(
    cfg: &Config,
    data: Option<&Path>,
    out: &Path,
    build: BuildInfo,
    device: &Device,
) -> Result<TrainedStudent> {
    with_run(out, cfg, build, |run| {
        run.set_device(spec_of(device))?;
        let data = run.stage("data", || run_data(cfg, data, out))?;
        let trained = train_student_in(cfg, &data, out, run, device)?;
        run.write_metrics(&trained.metrics)?;
        Ok(trained)
    })
}

/// A student checkpoint evaluated on validation and test.
pub struct StudentEval {
    /// The checkpoint's architecture.
    pub kind: StudentKind,
    /// Validation evaluation (metrics and cost).
    pub valid: EvalReport,
    /// Test evaluation (metrics and cost).
    pub test: EvalReport,
}

impl StudentEval {
    /// The metrics of both splits, as `metrics.json` holds them.
    pub fn metrics(&self) -> Metrics {
        Metrics {
            valid: self.valid.metrics.clone(),
            test: self.test.metrics.clone(),
        }
    }
}

/// `eval student`: evaluates `checkpoint` (refused unless it was trained on
/// the prepared dataset `data`) with `eval`, or with `more` checkpoints the
/// ensemble of them all (mean log-probabilities); with `out`, also writes a
/// run directory (`metrics.json`, costs in `run.json`).
pub fn eval_student(
    cfg: &Config,
    checkpoint_path: &Path,
    more: &[PathBuf],
    data: &Path,
    out: Option<&Path>,
    build: BuildInfo,
    device: &Device,
) -> Result<StudentEval> {
    let data = load_prepared(data)?;
    let expect = Expect {
        fingerprint: Some(&data.reference.fingerprint),
        kind: None,
    };
    let first = checkpoint::load(checkpoint_path, &expect, device)?;
    let kind = first.manifest.spec.kind;
    let mut students = vec![first.student];
    for p in more {
        students.push(checkpoint::load(p, &expect, device)?.student);
    }
    let refs: Vec<&Student> = students.iter().collect();
    let eval: &EvalOptions = &cfg.eval;
    let result = StudentEval {
        kind,
        valid: evaluate_ensemble(&refs, &data.ds, SplitName::Valid, eval)?,
        test: evaluate_ensemble(&refs, &data.ds, SplitName::Test, eval)?,
    };
    if let Some(out) = out {
        with_run(out, cfg, build, |run| {
            run.set_kind(RunKind::Evaluation)?;
            run.set_device(spec_of(device))?;
            run.record_cost("student.valid", EvalCost::from(&result.valid))?;
            run.record_cost("student.test", EvalCost::from(&result.test))?;
            run.write_metrics(&result.metrics())?;
            Ok(())
        })?;
    }
    Ok(result)
}
