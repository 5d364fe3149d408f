//! A run directory around a stage, and how training is recorded in it.

use std::path::Path;

use anyhow::Result;
use candle_core::Device;

use distillrec_config::Config;
use distillrec_run::{open_log_file, BuildInfo, Run};
use distillrec_train::TrainOutcome;

use crate::latency::checkpoint_latency;
use crate::prepared::Data;

/// Opens the run directory `out` (lock, `config.toml`, `run.json`; see
/// [`Run::create`]), starts logging to its `run.log`, runs `f` in it and
/// records how it ended: `ok`, or the error (which is returned). A command
/// refused before producing anything leaves `out` as it was.
pub fn with_run<T>(
    out: &Path,
    cfg: &Config,
    build: BuildInfo,
    f: impl FnOnce(&mut Run) -> Result<T>,
) -> Result<T> {
    let mut run = Run::create(out, Some(cfg), cfg.seed, build)?;
    let log = open_log_file(&out.join("run.log"))?;
    let result = f(&mut run);
    drop(log);
    let status = result.as_ref().map(|_| ()).map_err(|e| format!("{e:#}"));
    run.finish(status)?;
    result
}

/// Records a finished training stage's epochs and evaluation costs in `run`
/// (`stage` names the training entry, e.g. `student.train`), and measures
/// the best checkpoint's per-user top-20 latency (`latency.top20`).
pub fn record_training(
    run: &mut Run,
    stage: &str,
    outcome: &TrainOutcome,
    data: &Data,
    device: &Device,
) -> Result<()> {
    run.record_cost(
        stage,
        serde_json::json!({
            "epochs": outcome.epochs,
            "best_epoch": outcome.best_epoch,
            "mean_epoch_secs": outcome.mean_epoch_secs,
            "resumed_after": outcome.resumed_after,
        }),
    )?;
    run.record_cost("student.valid", &outcome.valid_cost)?;
    run.record_cost("student.test", &outcome.test_cost)?;
    let latency = run.stage("latency", || {
        checkpoint_latency(
            &outcome.best_checkpoint,
            &data.ds,
            &data.reference.fingerprint,
            device,
        )
    })?;
    run.record_cost("latency.top20", latency)?;
    Ok(())
}
