//! `pipeline`: every stage of SPEC 1 from one config, each in its own
//! directory under `out` — `data`, `popularity`, `student`,
//! `student-converged`, `selection`, `teacher`, `cache`, `distill`,
//! `report`; with `active.rounds > 1`, `round-1` … `round-<R>` (see
//! `active`) in place of `cache` and `distill`. The stage records and the
//! rule below live in `keyed`.
//!
//! Each stage is keyed by a content hash of the config groups it reads (the
//! config *projected* onto them, which is also what its run directory's
//! `config.toml` records) and of the keys of the stages it reads from. The
//! key and the stage's state live in `out/stages/<stage>.json`:
//!
//! - same key, finished, and every file it wrote still has the digest
//!   recorded when it finished: the stage is skipped;
//! - same key, finished, but an output changed or went missing: the stage
//!   runs afresh, and so does every stage after it (one warning line says
//!   which file);
//! - same key, unfinished (a crash, a kill): the stage runs again in its
//!   directory, and training stages resume from their last epoch;
//! - another key: the directory is removed and the stage runs afresh, and so
//!   does everything downstream (their keys contain this one).
//!
//! A stage that fails is named in the error and leaves the finished stages
//! as they were. The LLM stages (teacher, cache, distill or the rounds) and
//! `student-converged` (when the baseline is a budget run) run when
//! `teacher.backbone` is set; selection runs when `selection.policy` is not
//! `all`. With `--device cuda` the teacher stages run on the GPU and the
//! distillation stages on the CPU.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::Device;
use serde::Serialize;

use distillrec_config::{reads, Config, Reads, Until};
use distillrec_data::fsutil::{atomic_write, atomic_write_json};
use distillrec_data::lock::DirLock;
use distillrec_data::store;
use distillrec_run::{open_log_file, BuildInfo, Metrics};
use distillrec_select::Policy;

use crate::active::{run_rounds, write_summary, ActiveRequest, Labeller, RoundRecord, Rounds};
use crate::keyed::{projected, stage_key, Stages};
pub use crate::keyed::{Layout, StageReport};
use crate::stages::distill_device;
use crate::stages::{
    distill, eval_popularity, select, teacher_infer, train_student, train_teacher, CacheJob,
    DistillRequest, SelectRequest, TeacherInferRequest, TrainTeacherRequest,
};

/// The selection file in the selection stage's directory.
const SELECTION_FILE: &str = "selection.csv";

/// What the pipeline did.
#[derive(Clone, Debug, Serialize)]
pub struct PipelineOutcome {
    /// `report.md` (in the [`Layout::Named`] layout).
    pub report: Option<PathBuf>,
    /// The models, in the report's order.
    pub models: Vec<ModelRun>,
    /// The stages in order.
    pub stages: Vec<StageReport>,
    /// Wall seconds of this invocation.
    pub wall_secs: f64,
}

/// The run's metrics in `dir`, if it wrote them.
fn metrics_of(dir: &Path) -> Option<Metrics> {
    let text = distillrec_data::fsutil::read_text_limited(
        &dir.join("metrics.json"),
        distillrec_data::fsutil::MAX_SMALL_FILE_BYTES,
    )
    .ok()?;
    serde_json::from_str(&text).ok()
}

/// Checks what the pipeline can know before running anything.
/// Checks what can be known before anything is written, so a refused
/// pipeline leaves `out` as it was: the selection policy, the dataset's
/// source, and the backbone (a known name is fetched now, once, rather than
/// after the student has trained). Returns the prepared dataset's
/// fingerprint when the config names one.
fn preflight(cfg: &Config) -> Result<Option<String>> {
    if let Some(backbone) = &cfg.teacher.backbone {
        if cfg.selection.policy == Policy::Kl {
            bail!("config key `selection.policy`: 'kl' filters rows by an existing teacher cache, which the pipeline builds only after selection; run `distillrec select --policy kl` by hand");
        }
        let path = crate::models::resolve_backbone(backbone, Path::new("models"))?;
        if !path.exists() {
            bail!(
                "config key `teacher.backbone`: {} does not exist (a GGUF file, an HF model directory, or a known name: smollm2)",
                path.display()
            );
        }
    }
    if let (None, Some(raw)) = (&cfg.dataset.prepared, &cfg.dataset.raw) {
        if !raw.is_dir() {
            bail!(
                "config key `dataset.raw`: {} is not a directory",
                raw.display()
            );
        }
    }
    prepared_fingerprint(cfg)
}

/// The fingerprint of the prepared dataset the config names (`None` when
/// the pipeline builds its own): an input of the data stage's key.
pub(crate) fn prepared_fingerprint(cfg: &Config) -> Result<Option<String>> {
    match &cfg.dataset.prepared {
        Some(p) => Ok(Some(store::read_manifest(p)?.fingerprint)),
        None => Ok(None),
    }
}

/// `cfg` with the baseline student trained to convergence.
fn converged_config(cfg: &Config) -> Config {
    let mut c = cfg.clone();
    c.train.student.until = Until::Converged;
    c
}

/// The key of every stage one config runs (see [`stage_key`]), the one
/// place they are derived: [`run`] keys its stages with them, and a sweep
/// counts its distinct stages with them before running anything.
#[derive(Clone, Debug, PartialEq)]
pub struct StageKeys {
    /// The prepared dataset.
    pub data: String,
    /// The popularity baseline.
    pub popularity: String,
    /// The baseline student (student seed).
    pub student: String,
    /// The same student trained to convergence (`until = "converged"`),
    /// shown beside any distilled result; `None` without an LLM teacher or
    /// when the baseline is already trained to convergence.
    pub converged: Option<String>,
    /// The LLM stages, when `teacher.backbone` is set.
    pub llm: Option<LlmKeys>,
}

/// Keys of the stages that exist only with an LLM teacher.
#[derive(Clone, Debug, PartialEq)]
pub struct LlmKeys {
    /// The student that feeds the teacher and the selection (run seed):
    /// `None` when it is the baseline student.
    pub teacher_student: Option<String>,
    /// The selection (`None` with policy `all`).
    pub selection: Option<String>,
    /// The teacher.
    pub teacher: String,
    /// The teacher cache.
    pub cache: String,
    /// The distilled student.
    pub distill: String,
    /// The active rounds, in order, replacing `cache` and `distill` when
    /// `active.rounds > 1` (empty otherwise).
    pub rounds: Vec<String>,
}

impl StageKeys {
    /// The keys of `cfg`'s stages; `given` is the prepared dataset's
    /// fingerprint (empty when the pipeline builds the dataset).
    pub fn new(cfg: &Config, given: &str) -> Self {
        let run_seed = cfg.seed;
        let student_seed = cfg.student_seed.unwrap_or(cfg.seed);
        let data = stage_key("data", &projected(cfg, reads::PREPARE, run_seed), &[given]);
        let popularity = stage_key(
            "popularity",
            &projected(cfg, reads::EVAL_POPULARITY, run_seed),
            &[&data],
        );
        let student_key = |seed| {
            stage_key(
                "student",
                &projected(cfg, reads::TRAIN_STUDENT, seed),
                &[&data],
            )
        };
        let student = student_key(student_seed);
        let converged = (cfg.teacher.backbone.is_some()
            && cfg.train.student.until == Until::Budget)
            .then(|| {
                stage_key(
                    "student",
                    &projected(&converged_config(cfg), reads::TRAIN_STUDENT, student_seed),
                    &[&data],
                )
            });
        let llm = cfg.teacher.backbone.as_ref().map(|_| {
            let teacher_student = (student_seed != run_seed).then(|| student_key(run_seed));
            let k_ts = teacher_student.as_deref().unwrap_or(&student);
            let selection = (cfg.selection.policy != Policy::All).then(|| {
                let c = projected(cfg, reads::SELECT, run_seed);
                stage_key("selection", &c, &[&data, k_ts])
            });
            let k_sel = selection.as_deref().unwrap_or("");
            let c = projected(cfg, reads::TRAIN_TEACHER, run_seed);
            let teacher = stage_key("teacher", &c, &[&data, k_ts, k_sel]);
            let c = projected(cfg, reads::TEACHER_CACHE, run_seed);
            let cache = stage_key("cache", &c, &[&teacher, k_sel]);
            let c = projected(cfg, reads::DISTILL, student_seed);
            let distill = stage_key("distill", &c, &[&data, &cache, k_sel]);
            let rounds = if cfg.active.rounds > 1 {
                let c = projected(cfg, reads::ACTIVE, student_seed);
                let inputs = [data.clone(), k_ts.to_string(), teacher.clone()];
                crate::active::round_keys(&c, &inputs, cfg.active.rounds)
            } else {
                Vec::new()
            };
            LlmKeys {
                teacher_student,
                selection,
                teacher,
                cache,
                distill,
                rounds,
            }
        });
        StageKeys {
            data,
            popularity,
            student,
            converged,
            llm,
        }
    }

    /// `(kind, key)` of each stage but the report: what names a stage's
    /// directory in the [`Layout::Shared`] store.
    pub fn stages(&self) -> Vec<(&'static str, &str)> {
        let mut out = vec![
            ("data", self.data.as_str()),
            ("popularity", &self.popularity),
            ("student", &self.student),
        ];
        out.extend(self.converged.as_deref().map(|k| ("student", k)));
        if let Some(l) = &self.llm {
            out.extend(l.teacher_student.as_deref().map(|k| ("student", k)));
            out.extend(l.selection.as_deref().map(|k| ("selection", k)));
            out.push(("teacher", l.teacher.as_str()));
            if l.rounds.is_empty() {
                out.extend([("cache", l.cache.as_str()), ("distill", &l.distill)]);
            } else {
                out.extend(l.rounds.iter().map(|k| ("round", k.as_str())));
            }
        }
        out
    }
}

/// A model the pipeline trained or evaluated, as the report lists it.
#[derive(Clone, Debug, Serialize)]
pub struct ModelRun {
    /// Label in tables (`popularity`, `sasrec`, `iLoRA teacher`, ...).
    pub label: String,
    /// Its run directory.
    pub dir: PathBuf,
}

/// Runs the pipeline for `cfg` in `out` on `device`, its stage directories
/// placed by `layout`. `on_model` is called with each model's label and
/// metrics once its stage has finished or been skipped. The report stage
/// runs in the [`Layout::Named`] layout (a sweep reports all its runs at
/// once instead).
pub fn run(
    cfg: &Config,
    out: &Path,
    layout: Layout,
    build: BuildInfo,
    device: &Device,
    on_model: &mut dyn FnMut(&str, &Metrics),
) -> Result<PipelineOutcome> {
    let given = preflight(cfg)?.unwrap_or_default();
    let t0 = Instant::now();
    let _lock = DirLock::acquire(out)?;
    // open for this run only: a sweep's runs each get their own
    let _log = open_log_file(&out.join("pipeline.log"))?;
    atomic_write(&out.join("config.toml"), cfg.to_toml().as_bytes())?;
    let named = matches!(layout, Layout::Named);
    let mut st = Stages::new(out, layout);
    let mut models: Vec<ModelRun> = Vec::new();
    let mut add_model = |label: &str, dir: &Path| {
        if let Some(m) = metrics_of(dir) {
            on_model(label, &m);
        }
        models.push(ModelRun {
            label: label.to_string(),
            dir: dir.to_path_buf(),
        });
    };
    // a stage's config: its groups, trained with `seed`
    let project = |reads: Reads, seed: u64| projected(cfg, reads, seed);
    let keys = StageKeys::new(cfg, &given);
    let run_seed = cfg.seed;
    let student_seed = cfg.student_seed.unwrap_or(cfg.seed);

    // data: the prepared dataset (given, or built from the config)
    let built = st.run("data", "data", &keys.data, |dir| {
        if cfg.dataset.prepared.is_none() {
            let ds = cfg.build_dataset()?;
            store::save(&ds, dir)?;
        }
        Ok(())
    })?;
    let data_dir = cfg.dataset.prepared.clone().unwrap_or(built);
    // the rounds' budgets against the pool, before anything trains
    let round_plan = match (&keys.llm, cfg.active.rounds > 1) {
        (Some(_), true) => {
            let data = crate::prepared::load_prepared(&data_dir)?;
            let plan = crate::active::plan_rounds(cfg, &data.ds)?;
            Some((data, plan))
        }
        _ => None,
    };

    let pop = project(reads::EVAL_POPULARITY, run_seed);
    let k_pop = keys.popularity.clone();
    let pop_dir = st.run("popularity", "popularity", &k_pop, |dir| {
        eval_popularity(&pop, &data_dir, dir, build.clone()).map(drop)
    })?;
    add_model("popularity", &pop_dir);

    // the baseline student, trained with the student seed
    let train_student_stage =
        |st: &mut Stages, name: &str, seed: u64, k: &str| -> Result<(String, PathBuf)> {
            let c = project(reads::TRAIN_STUDENT, seed);
            let dir = st.run(name, "student", k, |dir| {
                train_student(&c, Some(&data_dir), dir, build.clone(), device).map(drop)
            })?;
            Ok((k.to_string(), dir))
        };
    let (k_student, student_dir) =
        train_student_stage(&mut st, "student", student_seed, &keys.student)?;
    let mut report_inputs = vec![k_pop.clone(), k_student.clone()];
    let student_name = cfg.student.model.name();
    add_model(student_name, &student_dir);
    let mut converged_label = None;
    if let Some(k) = &keys.converged {
        // the fair baseline of any distilled result: the same student given
        // every epoch it can use
        let c = project(reads::TRAIN_STUDENT, student_seed);
        let c = converged_config(&c);
        let dir = st.run("student-converged", "student", k, |dir| {
            train_student(&c, Some(&data_dir), dir, build.clone(), device).map(drop)
        })?;
        let label = format!("{student_name}, converged");
        add_model(&label, &dir);
        converged_label = Some(label);
        report_inputs.push(k.clone());
    }

    if let Some(lk) = &keys.llm {
        // the student that feeds the teacher and the selection: the run seed's
        let (_, ts_dir) = match &lk.teacher_student {
            None => (k_student.clone(), student_dir.clone()),
            Some(k) => train_student_stage(&mut st, "teacher-student", run_seed, k)?,
        };
        let ts_ckpt = crate::absolute(&ts_dir.join("checkpoints/best.safetensors"));
        let selection = match &lk.selection {
            None => None,
            Some(k) => {
                let c = project(reads::SELECT, run_seed);
                let dir = st.run("selection", "selection", k, |dir| {
                    std::fs::create_dir_all(dir)?;
                    let req = SelectRequest {
                        policy: cfg.selection.policy,
                        budget: cfg.selection.budget,
                        threshold: cfg.selection.threshold,
                        data: data_dir.clone(),
                        student: Some(ts_ckpt.clone()),
                        teacher_cache: None,
                        out: dir.join(SELECTION_FILE),
                        exclude: Default::default(),
                    };
                    let o = select(&c, &req, device)?;
                    tracing::info!(selected = o.selected, pool = o.pool, "rows for the teacher");
                    Ok(())
                })?;
                Some(dir.join(SELECTION_FILE))
            }
        };

        // the student is an input by key, not by path, and is given to the
        // stage apart from its config: a moved `out` keeps its teacher
        let c = project(reads::TRAIN_TEACHER, run_seed);
        let k_teacher = lk.teacher.clone();
        let teacher_dir = st.run("teacher", "teacher", &k_teacher, |dir| {
            let req = TrainTeacherRequest {
                data: Some(data_dir.clone()),
                selection: selection.clone(),
                backbone: None,
                student: Some(ts_ckpt.clone()),
                out: dir.to_path_buf(),
                halt_after_epoch: None,
                init: None,
            };
            train_teacher(&c, &req, build.clone(), device).map(drop)
        })?;
        let teacher_label = if cfg.teacher.experts == 1 {
            "LLaRA teacher"
        } else {
            "iLoRA teacher"
        };
        add_model(teacher_label, &teacher_dir);

        let teacher_ckpt = teacher_dir.join("checkpoints/best.safetensors");
        if let Some((data, plan)) = &round_plan {
            // the [active] rounds give the teacher's output in place of the
            // one-shot cache and distillation
            let req = ActiveRequest {
                data: data_dir.clone(),
                student: ts_ckpt.clone(),
                labeller: Labeller::Llm {
                    checkpoint: teacher_ckpt,
                    student: ts_ckpt.clone(),
                },
                out: out.to_path_buf(),
            };
            let k_ts = lk.teacher_student.as_deref().unwrap_or(&k_student);
            let inputs = [keys.data.clone(), k_ts.to_string(), k_teacher.clone()];
            let rounds = run_rounds(
                &mut st,
                &Rounds {
                    cfg: &project(reads::ACTIVE, student_seed),
                    req: &req,
                    data,
                    plan,
                    full: None,
                    inputs: &inputs,
                    device,
                    build: build.clone(),
                },
            )?;
            let n = rounds.len();
            for (i, (_, dir)) in rounds.iter().enumerate() {
                let label = format!("{student_name} + DLLM2Rec, round {}/{n}", i + 1);
                add_model(&label, &dir.join("distill"));
            }
            if named {
                let records: Vec<RoundRecord> = rounds.into_iter().map(|(r, _)| r).collect();
                write_summary(out, &records)?;
            }
            report_inputs.push(k_teacher);
            report_inputs.extend(lk.rounds.iter().cloned());
        } else {
            let c = project(reads::TEACHER_CACHE, run_seed);
            let k_cache = lk.cache.clone();
            let cache_dir = st.run("cache", "cache", &k_cache, |dir| {
                let req = TeacherInferRequest {
                    job: CacheJob {
                        checkpoint: teacher_ckpt.clone(),
                        data: data_dir.clone(),
                        out: dir.to_path_buf(),
                        selection: selection.clone(),
                        shard: None,
                        k: None,
                    },
                    backbone: None,
                    student: Some(ts_ckpt.clone()),
                };
                let (cache, rps) = teacher_infer(&c, &req, device)?;
                tracing::info!(
                    rows = cache.rows(),
                    rows_per_sec = rps,
                    "teacher cache built"
                );
                Ok(())
            })?;

            let c = project(reads::DISTILL, student_seed);
            let k_distill = lk.distill.clone();
            let distill_dir = st.run("distill", "distill", &k_distill, |dir| {
                let req = DistillRequest {
                    teacher_cache: cache_dir.clone(),
                    selection: selection.clone(),
                    data: Some(data_dir.clone()),
                    out: dir.to_path_buf(),
                    init: None,
                };
                distill(&c, &req, build.clone(), &distill_device(device)).map(drop)
            })?;
            add_model(&format!("{student_name} + DLLM2Rec"), &distill_dir);
            report_inputs.extend([k_teacher, k_cache, k_distill]);
        }
    } else {
        tracing::info!("no `teacher.backbone` in the config: the teacher, cache and distillation stages are skipped");
    }

    let report = if named {
        let inputs: Vec<&str> = report_inputs.iter().map(String::as_str).collect();
        let k_report = stage_key("report", &project(reads::REPORT, run_seed), &inputs);
        let metric = cfg.train.student.metric.to_string();
        let dir = st.run("report", "report", &k_report, |dir| {
            let req = distillrec_report::ReportRequest {
                runs: models
                    .iter()
                    .map(|m| distillrec_report::RunSpec {
                        label: Some(m.label.clone()),
                        dir: m.dir.clone(),
                    })
                    .collect(),
                ablation_runs: Vec::new(),
                active_runs: Vec::new(),
                converged: converged_label.clone(),
                budget_runs: Vec::new(),
                baseline: Some(student_name.to_string()),
                metric: metric.clone(),
                out: dir.to_path_buf(),
            };
            distillrec_report::write_report(&req).map(drop)
        })?;
        Some(dir.join("report.md"))
    } else {
        None
    };
    let outcome = PipelineOutcome {
        report,
        models,
        stages: st.into_reports(),
        wall_secs: t0.elapsed().as_secs_f64(),
    };
    atomic_write_json(&out.join("pipeline.json"), &outcome)?;
    Ok(outcome)
}
