//! Data preparation and the popularity baseline.

use std::path::Path;

use anyhow::Result;

use distillrec_config::Config;
use distillrec_data::outguard::{check_dir_output, OutputKind};
use distillrec_data::store::{self, Manifest};
use distillrec_data::{Dataset, SplitName};
use distillrec_eval::evaluate_popularity;
use distillrec_run::{BuildInfo, Metrics, Run, RunKind};
use distillrec_train::EvalCost;

use crate::runs::with_run;

/// Builds the dataset `cfg.dataset` describes from its raw source and saves
/// it in the prepared format under `out`. An `out` inside the raw source, or
/// holding anything but a dataset prepared from the same settings, is
/// refused before anything is read (see `distillrec_data::outguard`).
pub fn prepare(cfg: &Config, out: &Path) -> Result<(Dataset, Manifest)> {
    let raw: Vec<&Path> = cfg.dataset.raw.as_deref().into_iter().collect();
    // the dataset settings and the seed decide what is prepared (the raw
    // path is among the inputs, resolved)
    let mut dataset = cfg.dataset.clone();
    dataset.raw = None;
    let settings = serde_json::to_string(&(&dataset, cfg.seed))?;
    let guard = check_dir_output(out, &raw, OutputKind::PreparedDataset, &settings)?;
    let ds = cfg.build_dataset()?;
    guard.claim()?;
    let manifest = store::save(&ds, out)?;
    Ok((ds, manifest))
}

/// Evaluates the popularity baseline on validation and test; records the
/// cost in `run`.
pub fn popularity(ds: &Dataset, cfg: &Config, run: &mut Run) -> Result<Metrics> {
    run.set_kind(RunKind::Popularity)?;
    let valid = evaluate_popularity(ds, SplitName::Valid, &cfg.eval)?;
    let test = evaluate_popularity(ds, SplitName::Test, &cfg.eval)?;
    run.record_cost("popularity.valid", EvalCost::from(&valid))?;
    run.record_cost("popularity.test", EvalCost::from(&test))?;
    Ok(Metrics {
        valid: valid.metrics,
        test: test.metrics,
    })
}

/// `eval popularity`: the baseline on the prepared dataset `data`, in the
/// run directory `out` (`metrics.json`, costs in `run.json`).
pub fn eval_popularity(cfg: &Config, data: &Path, out: &Path, build: BuildInfo) -> Result<Metrics> {
    with_run(out, cfg, build, |run| {
        let ds = run.stage("load", || store::load(data).map_err(anyhow::Error::from))?;
        let m = popularity(&ds, cfg, run)?;
        run.write_metrics(&m)?;
        Ok(m)
    })
}
