//! The LLM teacher's stages: `train teacher` (in its own run directory),
//! `eval teacher` and `teacher infer` (a checkpoint onto the backbone and
//! student its manifest pins, both checked by SHA-256).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use candle_core::Device;
use sha2::{Digest, Sha256};

use distillrec_cache::{CacheSource, TeacherCache};
use distillrec_config::Config;
use distillrec_data::fsutil::sha256_of_file;
use distillrec_data::memory::available_bytes;
use distillrec_data::outguard::{check_not_input, DirOutput};
use distillrec_data::SplitName;
use distillrec_models::device::spec_of;
use distillrec_run::heap::{heap_mb, peak_heap_mb};
use distillrec_run::{peak_rss_mb, rss_mb, BuildInfo, Metrics, RunKind};
use distillrec_teacher::checkpoint::{backbone_sha256, load_into, read_manifest, trained_settings};
use distillrec_teacher::evaluate::{eval_generative, eval_ranking, Answer};
use distillrec_teacher::infer::{cache_from_teacher, shard_range, InferOptions};
use distillrec_teacher::model::{has_generative, has_ranking};
use distillrec_teacher::setup::assemble;
use distillrec_teacher::train::{train, TeacherOutcome, TrainTeacher};
use distillrec_teacher::Teacher;

use crate::latency::teacher_latency;
use crate::prepared::{absolute, load_prepared, run_data, Data};
use crate::runs::with_run;
use crate::stages::{plan_for, selected_rows, CacheBuild, CacheJob};

/// What `train teacher` reads besides the config.
pub struct TrainTeacherRequest {
    /// A prepared dataset (else the config's).
    pub data: Option<PathBuf>,
    /// Train only on these rows (a selection file).
    pub selection: Option<PathBuf>,
    /// The backbone (else `teacher.backbone`).
    pub backbone: Option<PathBuf>,
    /// The student checkpoint (else `teacher.student`).
    pub student: Option<PathBuf>,
    /// Run directory.
    pub out: PathBuf,
    /// Stop after this epoch (tests of resume).
    pub halt_after_epoch: Option<usize>,
    /// Start from this teacher checkpoint's weights (adapters, gate,
    /// projector, heads) instead of a fresh initialisation, with a fresh
    /// optimiser and schedule: fine-tuning a trained teacher further (an
    /// active round's `teacher_rows = "retrain"`). It must belong to the same
    /// backbone, student, dataset and teacher settings.
    pub init: Option<PathBuf>,
}

/// A trained teacher's metrics and training record.
pub struct TrainedTeacher {
    /// Validation and test metrics of the best checkpoint.
    pub metrics: Metrics,
    /// How training went.
    pub outcome: TeacherOutcome,
}

fn required(
    flag: Option<&Path>,
    key: Option<&PathBuf>,
    what: &str,
    key_name: &str,
) -> Result<PathBuf> {
    flag.map(Path::to_path_buf)
        .or_else(|| key.cloned())
        .with_context(|| format!("no {what}: pass --{what} or set `{key_name}` in the config"))
}

/// A teacher's validation and test evaluation.
struct Evaluated {
    metrics: Metrics,
    costs: BTreeMap<String, serde_json::Value>,
    /// The generative answers per split (none for the ranking objective).
    answers: Vec<(SplitName, Vec<Answer>)>,
}

impl Evaluated {
    /// Records the costs and metrics in `run`, and writes each split's
    /// generative answers to `answers-<split>.jsonl` in its directory.
    fn record(&self, run: &mut distillrec_run::Run) -> Result<()> {
        for (k, v) in &self.costs {
            run.record_cost(k, v)?;
        }
        for (split, answers) in &self.answers {
            let mut text = String::new();
            for a in answers {
                text += &serde_json::to_string(a)?;
                text.push('\n');
            }
            let path = run.dir().join(format!("answers-{}.jsonl", split.as_str()));
            distillrec_data::fsutil::atomic_write(&path, text.as_bytes())?;
        }
        run.write_metrics(&self.metrics)?;
        Ok(())
    }
}

/// Validation and test metrics of `teacher` under its objective.
fn evaluate_both(teacher: &mut Teacher, data: &Data, cfg: &Config) -> Result<Evaluated> {
    let mut metrics = Metrics::default();
    let mut costs = BTreeMap::new();
    let mut answers = Vec::new();
    for split in [SplitName::Valid, SplitName::Test] {
        let mut m = BTreeMap::new();
        if has_ranking(teacher.cfg.objective) {
            let r = eval_ranking(teacher, &data.ds, split, &cfg.eval)?;
            costs.insert(format!("teacher.{}.ranking", split.as_str()), serde_json::json!({"rows": r.rows, "wall_secs": r.wall_secs, "rows_per_sec": r.rows_per_sec}));
            m.extend(r.metrics);
        }
        if has_generative(teacher.cfg.objective) {
            let mut g = eval_generative(teacher, &data.ds, split, &cfg.eval, None)?;
            costs.insert(
                format!("teacher.{}.generative", split.as_str()),
                serde_json::to_value(&g)?,
            );
            m.extend(g.metrics());
            answers.push((split, std::mem::take(&mut g.answers)));
        }
        match split {
            SplitName::Valid => metrics.valid = m,
            _ => metrics.test = m,
        }
    }
    Ok(Evaluated {
        metrics,
        costs,
        answers,
    })
}

/// `train teacher`: trains the configured iLoRA/LLaRA teacher in `req.out`
/// (resuming a finished epoch), then evaluates its best checkpoint.
pub fn train_teacher(
    cfg: &Config,
    req: &TrainTeacherRequest,
    build: BuildInfo,
    device: &Device,
) -> Result<TrainedTeacher> {
    let backbone = crate::models::resolve_backbone(
        &required(
            req.backbone.as_deref(),
            cfg.teacher.backbone.as_ref(),
            "backbone",
            "teacher.backbone",
        )?,
        Path::new("models"),
    )?;
    let student = required(
        req.student.as_deref(),
        cfg.teacher.student.as_ref(),
        "student",
        "teacher.student",
    )?;
    if let Some(init) = &req.init {
        // training writes its checkpoints into --out
        check_not_input(&req.out, &[init.as_path()], "--out")?;
        ensure!(
            init.is_file(),
            "--init {}: not a teacher checkpoint file",
            init.display()
        );
    }
    with_run(&req.out, cfg, build, |run| {
        run.set_kind(RunKind::Teacher)?;
        run.set_device(spec_of(device))?;
        let data = run.stage("data", || run_data(cfg, req.data.as_deref(), &req.out))?;
        let rows = selected_rows(&data, req.selection.as_deref())?;
        // the plan's memory check, before the backbone loads
        let plan = plan_for(cfg, &backbone, &data.ds, &rows, None, spec_of(device))?;
        plan.check(available_bytes())?;
        let rss_before_load = rss_mb();
        let heap_before_load = heap_mb();
        let mut a = run.stage("teacher.load", || {
            assemble(
                &cfg.teacher,
                cfg.seed,
                &backbone,
                &student,
                &data.ds,
                &data.reference,
                (&req.out, true),
                device,
            )
        })?;
        if let Some(init) = &req.init {
            load_into(
                init,
                &mut a.teacher,
                &a.backbone.sha256,
                &a.student.sha256,
                &data.reference.fingerprint,
            )?;
        }
        let rss_after_load = rss_mb();
        let peak_after_load = peak_rss_mb();
        // the run key: what the weights depend on, by content (the backbone
        // and the student by their SHA-256, not by where they lie, so a
        // moved run directory resumes)
        let mut settings = cfg.teacher.clone();
        settings.backbone = None;
        settings.student = None;
        let mut h = Sha256::new();
        h.update(serde_json::to_string(&(&settings, &cfg.train.teacher, &cfg.eval))?.as_bytes());
        h.update(cfg.seed.to_le_bytes());
        h.update(data.reference.fingerprint.as_bytes());
        h.update(a.backbone.sha256.as_bytes());
        h.update(a.student.sha256.as_bytes());
        for &r in &rows {
            h.update(data.ds.train[r].key.as_bytes());
            h.update(b"\n");
        }
        if let Some(init) = &req.init {
            // what the weights start from (absent: a fresh start, as before)
            h.update(b"init:");
            h.update(sha256_of_file(init)?.as_bytes());
        }
        let key: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        let t = TrainTeacher {
            train: &cfg.train.teacher,
            eval: &cfg.eval,
            ds: &data.ds,
            reference: &data.reference,
            rows,
            backbone: a.backbone.clone(),
            student: a.student.clone(),
            out_dir: &req.out,
            progress: true,
            halt_after_epoch: req.halt_after_epoch,
        };
        let outcome = run.stage("train.teacher", || train(&mut a.teacher, &t, &key))?;
        run.record_cost(
            "teacher.train",
            serde_json::json!({
                "epochs": outcome.epochs,
                "best_epoch": outcome.best_epoch,
                "rows": outcome.rows,
                "tokens_per_sec": outcome.tokens_per_sec,
                "mean_epoch_secs": outcome.mean_epoch_secs,
                "resumed_after": outcome.resumed_after,
                "peak_rss_mb": peak_rss_mb(),
                "rss_before_load_mb": rss_before_load,
                "rss_after_load_mb": rss_after_load,
                "peak_after_load_mb": peak_after_load,
                "planned_mb": plan.total() as f64 / (1024.0 * 1024.0),
                "heap_before_load_mb": heap_before_load,
                "peak_heap_mb": peak_heap_mb(),
                "num_layers": a.teacher.llm.model.layers.len(),
                "blas": crate::llm::blas_backend(),
            }),
        )?;
        let e = run.stage("eval.teacher", || evaluate_both(&mut a.teacher, &data, cfg))?;
        if has_ranking(a.teacher.cfg.objective) {
            let l = run.stage("latency", || teacher_latency(&a.teacher, &data.ds))?;
            run.record_cost("latency.top20", l)?;
        }
        e.record(run)?;
        Ok(TrainedTeacher {
            metrics: e.metrics,
            outcome,
        })
    })
}

/// A trained teacher loaded from `checkpoint` for `data` onto `device`: its
/// settings from the manifest, its backbone and student from the manifest
/// (or the given overrides), both checked against the pinned SHA-256.
pub fn load_teacher(
    checkpoint: &Path,
    data: &Data,
    backbone: Option<&Path>,
    student: Option<&Path>,
    device: &Device,
) -> Result<Teacher> {
    let (m, weights) = read_manifest(checkpoint)?;
    let recorded = |given: Option<&Path>, path: &Path, what: &str, flag: &str| -> Result<PathBuf> {
        if let Some(p) = given {
            return Ok(p.to_path_buf());
        }
        ensure!(
            path.exists(),
            "{}: the {what} it was trained with is no longer at {} (moved or deleted?); pass {flag} <path> (checked against the recorded SHA-256)",
            checkpoint.display(),
            path.display()
        );
        Ok(path.to_path_buf())
    };
    let backbone = recorded(backbone, &m.backbone.path, "backbone", "--backbone")?;
    let student = recorded(student, &m.student.path, "student", "--student")?;
    // the run directory holds the title table training computed
    let run_dir = checkpoint
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."));
    let mut a = assemble(
        &trained_settings(&m, &weights)?,
        m.seed,
        &backbone,
        &student,
        &data.ds,
        &data.reference,
        (run_dir, false),
        device,
    )?;
    load_into(
        checkpoint,
        &mut a.teacher,
        &backbone_sha256(&backbone)?,
        &a.student.sha256,
        &data.reference.fingerprint,
    )?;
    Ok(a.teacher)
}

/// `eval teacher`: validation and test metrics of a teacher checkpoint on
/// `device` (and a run record in `out` when given).
pub fn eval_teacher(
    cfg: &Config,
    checkpoint: &Path,
    data: &Path,
    overrides: (Option<&Path>, Option<&Path>),
    out: Option<&Path>,
    build: BuildInfo,
    device: &Device,
) -> Result<Metrics> {
    let data = load_prepared(data)?;
    let mut teacher = load_teacher(checkpoint, &data, overrides.0, overrides.1, device)?;
    // an `eval.sampled_negatives` this teacher cannot honour is refused
    // before any row is evaluated
    teacher
        .cfg
        .sampled_negatives(cfg.eval.sampled_negatives, "the config or --set")?;
    let e = evaluate_both(&mut teacher, &data, cfg)?;
    if let Some(out) = out {
        with_run(out, cfg, build, |run| {
            run.set_kind(RunKind::Evaluation)?;
            e.record(run)
        })?;
    }
    Ok(e.metrics)
}

/// What `teacher infer` reads: the cache job, and where the backbone and
/// the student are when they moved since training (checked by SHA-256).
pub struct TeacherInferRequest {
    /// The checkpoint, rows and output.
    pub job: CacheJob,
    /// Backbone override.
    pub backbone: Option<PathBuf>,
    /// Student override.
    pub student: Option<PathBuf>,
}

/// Checks `teacher infer`'s `--out` before the inference: besides the
/// job's inputs, the backbone and the student the checkpoint loads (its
/// manifest's, or the overrides) are inputs too.
fn check_infer_out(req: &TeacherInferRequest) -> Result<DirOutput> {
    let (m, _) = read_manifest(&req.job.checkpoint)?;
    let backbone = req.backbone.clone().unwrap_or(m.backbone.path);
    let student = req.student.clone().unwrap_or(m.student.path);
    let student_manifest = student.with_extension("json");
    req.job
        .check_out("teacher infer", &[&backbone, &student, &student_manifest])
}

/// `teacher infer`: the teacher cache of the selected training rows;
/// returns it with the inference rows per second.
pub fn teacher_infer(
    cfg: &Config,
    req: &TeacherInferRequest,
    device: &Device,
) -> Result<(TeacherCache, f64)> {
    let guard = check_infer_out(req)?;
    let t0 = std::time::Instant::now();
    let data = load_prepared(&req.job.data)?;
    let k = req.job.k.unwrap_or(cfg.teacher.top_k);
    let n = data.ds.num_items();
    ensure!(
        k < n,
        "{} = {k} must be less than the {n} items of {}; choose a smaller top-K",
        if req.job.k.is_some() {
            "--k"
        } else {
            "teacher.top_k"
        },
        req.job.data.display()
    );
    let mut teacher = load_teacher(
        &req.job.checkpoint,
        &data,
        req.backbone.as_deref(),
        req.student.as_deref(),
        device,
    )?;
    let mut rows = selected_rows(&data, req.job.selection.as_deref())?;
    if let Some(sh) = &req.job.shard {
        rows = rows[shard_range(sh, rows.len(), teacher.cfg.infer_batch)].to_vec();
    }
    let opts = InferOptions {
        k,
        mask_history: cfg.teacher.mask_history,
        source: CacheSource::Teacher(absolute(&req.job.checkpoint)),
        progress: true,
    };
    let (mut cache, rps) = cache_from_teacher(
        &mut teacher,
        &data.ds,
        &data.reference.fingerprint,
        &rows,
        &opts,
    )?;
    cache.manifest.shard = req.job.shard;
    guard.claim()?;
    cache.save(&req.job.out)?;
    CacheBuild {
        wall_secs: t0.elapsed().as_secs_f64(),
        rows: cache.rows(),
    }
    .write(&req.job.out)?;
    Ok((cache, rps))
}
