//! Distillation (DLLM2Rec, SPEC 7) of a teacher cache into a student.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use candle_core::Device;

use distillrec_cache::{CacheSource, TeacherCache};
use distillrec_config::Config;
use distillrec_distill::{DistillObjective, TeacherRows};
use distillrec_models::device::spec_of;
use distillrec_run::{BuildInfo, Metrics, RunKind};
use distillrec_train::{train_with, TrainOptions, TrainOutcome};

use crate::prepared::{absolute, run_data};
use crate::runs::{record_training, with_run};
use crate::stages::select::selected_rows;
use crate::stages::CacheBuild;

/// What `distill` reads and writes.
pub struct DistillRequest {
    /// The teacher cache.
    pub teacher_cache: PathBuf,
    /// Distil only the rows of this selection file.
    pub selection: Option<PathBuf>,
    /// A prepared dataset (else the config's).
    pub data: Option<PathBuf>,
    /// Run directory.
    pub out: PathBuf,
    /// Start from this student checkpoint's weights instead of the seed's
    /// (an active round's warm start).
    pub init: Option<PathBuf>,
}

/// A distilled student.
pub struct DistillOutcome {
    /// Validation and test metrics of the exported best checkpoint.
    pub metrics: Metrics,
    /// Epochs, costs and the best checkpoint's path.
    pub outcome: TrainOutcome,
    /// Training rows that had teacher output.
    pub teacher_rows: usize,
}

/// The device a distillation stage of a pipeline or an active round runs
/// on: the CPU, whatever device the teacher stages use (the distillation
/// objective builds its tensors there; the student is small, and its
/// checkpoint loads on any device afterwards).
pub fn distill_device(device: &Device) -> Device {
    if !device.is_cpu() {
        tracing::info!(
            "the distillation stage runs on the CPU; the teacher stages keep the requested device"
        );
    }
    Device::Cpu
}

/// Distils the teacher cache (restricted to the selection, if any) into the
/// configured student in the run directory `req.out`. Rows without teacher
/// output train on the student's own loss.
pub fn distill(
    cfg: &Config,
    req: &DistillRequest,
    build: BuildInfo,
    device: &Device,
) -> Result<DistillOutcome> {
    if !device.is_cpu() {
        // DistillObjective builds its projection on the CPU.
        bail!("distill: the distillation objective runs on the CPU only for now; use --device cpu");
    }
    let out: &Path = &req.out;
    with_run(out, cfg, build, |run| {
        run.set_kind(RunKind::Distilled)?;
        run.set_device(spec_of(device))?;
        let data = run.stage("data", || run_data(cfg, req.data.as_deref(), out))?;
        cfg.check_student_memory("distill", data.ds.num_items())?;
        let mut cache = TeacherCache::load(&req.teacher_cache)?;
        let mut selection_rows = None;
        if let Some(sel) = &req.selection {
            let keys: HashSet<String> = selected_rows(&data, Some(sel))?
                .into_iter()
                .map(|r| data.ds.train[r].key.clone())
                .collect();
            let before = cache.rows();
            cache = cache.restrict(&keys);
            selection_rows = Some(keys.len());
            if cache.rows() == 0 && !keys.is_empty() {
                bail!(
                    "none of the {} rows of the selection {} has teacher output in the cache {}: was the cache made for another selection?",
                    keys.len(),
                    sel.display(),
                    req.teacher_cache.display()
                );
            }
            tracing::info!(
                before,
                after = cache.rows(),
                "teacher rows restricted to the selection"
            );
            if cache.rows() < keys.len() {
                tracing::warn!(
                    missing = keys.len() - cache.rows(),
                    "selected rows without teacher output in the cache train on the base loss alone"
                );
            }
        }
        let teacher = TeacherRows::from_cache(&cache, &data.reference.fingerprint, &data.ds)?;
        let objective =
            DistillObjective::new(&data.ds, &cfg.student, &cfg.distill, teacher, cfg.seed)?;
        let terms = objective.terms().clone();
        run.record_cost(
            "distill.teacher",
            serde_json::json!({
                "cache": absolute(&req.teacher_cache).display().to_string(),
                "cache_source": cache.manifest.source,
                "selection": req
                    .selection
                    .as_ref()
                    .map(|p| absolute(p).display().to_string()),
                "selection_rows": selection_rows,
                "init": req.init.as_ref().map(|p| absolute(p).display().to_string()),
                "teacher_rows": terms.teacher_rows,
                "trained_rows": terms.trained_rows,
                "train_rows": data.ds.train.len(),
                "fraction": terms.teacher_rows as f64 / terms.trained_rows.max(1) as f64,
                "terms": terms,
                "teacher_train_secs": teacher_train_secs(&cache.manifest.source),
                "cache_build_secs": CacheBuild::read(&req.teacher_cache).map(|b| b.wall_secs),
            }),
        )?;
        let opts = TrainOptions {
            student: &cfg.student,
            stage: &cfg.train.distill,
            eval: &cfg.eval,
            seed: cfg.seed,
            out_dir: out,
            device,
            progress: true,
            halt_after_epoch: None,
            init: req.init.as_deref(),
        };
        let outcome = run.stage("train.distill", || {
            train_with(&data.ds, &data.reference, &opts, &objective)
        })?;
        record_training(run, "distill.train", &outcome, &data, device)?;
        let metrics = Metrics {
            valid: outcome.valid.clone(),
            test: outcome.test.clone(),
        };
        run.write_metrics(&metrics)?;
        Ok(DistillOutcome {
            metrics,
            outcome,
            teacher_rows: terms.teacher_rows,
        })
    })
}

/// Wall seconds of the run that trained the teacher behind a cache, when the
/// cache came from a checkpoint (`teacher:<run>/checkpoints/<file>` or
/// `student:...`) whose run directory still holds its `run.json`.
fn teacher_train_secs(source: &CacheSource) -> Option<f64> {
    teacher_run_secs(source.checkpoint()?)
}

/// The wall seconds of the run that wrote `checkpoint`
/// (`<run>/checkpoints/<file>`; its `run.json`, every invocation of a
/// resumed run included), if it is there.
pub(crate) fn teacher_run_secs(checkpoint: &Path) -> Option<f64> {
    let run_dir = checkpoint.parent()?.parent()?;
    let text = distillrec_data::fsutil::read_text_limited(
        &run_dir.join("run.json"),
        distillrec_data::fsutil::MAX_SMALL_FILE_BYTES,
    )
    .ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("wall_secs")?.as_f64()
}
