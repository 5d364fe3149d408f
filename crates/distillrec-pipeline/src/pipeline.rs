//! `pipeline`: every stage of SPEC 1 from one config, each in its own
//! directory under `out` — `data`, `popularity`, `student`, `selection`,
//! `teacher`, `cache`, `distill`, `report`.
//!
//! Each stage is keyed by a content hash of the config groups it reads (the
//! config *projected* onto them, which is also what its run directory's
//! `config.toml` records) and of the keys of the stages it reads from. The
//! key and the stage's state live in `out/stages/<stage>.json`:
//!
//! - same key, finished: the stage is skipped;
//! - same key, unfinished (a crash, a kill): the stage runs again in its
//!   directory, and training stages resume from their last epoch;
//! - another key: the directory is removed and the stage runs afresh, and so
//!   does everything downstream (their keys contain this one).
//!
//! A stage that fails is named in the error and leaves the finished stages
//! as they were. The LLM stages (teacher, cache, distill) run when
//! `teacher.backbone` is set; selection runs when `selection.policy` is not
//! `all`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};

use distillrec_config::{Config, Reads, TeacherObjective};
use distillrec_data::fsutil::{atomic_write, atomic_write_json, sha256_of};
use distillrec_data::lock::DirLock;
use distillrec_data::store;
use distillrec_run::{init_logging, reset_peak_rss, BuildInfo, Metrics};
use distillrec_select::Policy;

use crate::stages::{
    distill, eval_popularity, select, teacher_infer, train_student, train_teacher, DistillRequest,
    SelectRequest, TeacherInferRequest, TrainTeacherRequest,
};

/// The config groups each stage reads (its projection). `dataset` is kept
/// everywhere so every `config.toml` names the data it ran on; `device` is
/// kept for the record but left out of the keys (a result does not depend
/// on where it was computed, up to float noise).
mod reads {
    use distillrec_config::Reads;
    pub const DATA: Reads = Reads(&["seed", "device", "dataset"]);
    pub const POPULARITY: Reads = Reads(&["seed", "device", "dataset", "eval"]);
    pub const STUDENT: Reads = Reads(&[
        "seed",
        "device",
        "dataset",
        "student",
        "train.student",
        "eval",
    ]);
    pub const SELECTION: Reads = Reads(&["seed", "device", "dataset", "student", "selection"]);
    pub const TEACHER: Reads = Reads(&[
        "seed",
        "device",
        "dataset",
        "teacher",
        "train.teacher",
        "eval",
    ]);
    pub const CACHE: Reads = Reads(&["seed", "device", "dataset", "teacher"]);
    pub const DISTILL: Reads = Reads(&[
        "seed",
        "device",
        "dataset",
        "student",
        "distill",
        "train.distill",
        "eval",
    ]);
    pub const REPORT: Reads = Reads(&["seed", "device", "dataset", "eval", "train.student"]);
}

/// How one stage went in this invocation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StageReport {
    /// Stage name (also its directory under `out`).
    pub name: String,
    /// Its key (`sha256:<hex>`).
    pub key: String,
    /// Finished earlier with the same key, so not run.
    pub skipped: bool,
    /// Wall seconds of this invocation (0 when skipped).
    pub wall_secs: f64,
    /// Wall seconds when it last ran (this invocation or an earlier one).
    pub ran_secs: f64,
}

/// What the pipeline did.
#[derive(Clone, Debug, Serialize)]
pub struct PipelineOutcome {
    /// `report.md`.
    pub report: PathBuf,
    /// The stages in order.
    pub stages: Vec<StageReport>,
    /// Wall seconds of this invocation.
    pub wall_secs: f64,
}

/// `out/stages/<stage>.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StageMark {
    key: String,
    /// `running` or `ok`.
    status: String,
    /// Wall seconds of the last finished run.
    #[serde(default)]
    wall_secs: f64,
}

/// The stages of one invocation, with their state on disk.
struct Stages<'a> {
    out: &'a Path,
    done: Vec<StageReport>,
}

impl Stages<'_> {
    fn dir(&self, name: &str) -> PathBuf {
        self.out.join(name)
    }

    fn mark_path(&self, name: &str) -> PathBuf {
        self.out.join("stages").join(format!("{name}.json"))
    }

    fn read_mark(&self, name: &str) -> Result<Option<StageMark>> {
        let p = self.mark_path(name);
        match std::fs::read(&p) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| {
                format!(
                    "{}: not a stage record; remove it to re-run the stage",
                    p.display()
                )
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("{}: cannot read", p.display())),
        }
    }

    fn write_mark(&self, name: &str, mark: &StageMark) -> Result<()> {
        atomic_write_json(&self.mark_path(name), mark)?;
        Ok(())
    }

    /// Runs stage `name` under `key` unless it finished under that key;
    /// `f` gets the stage's directory.
    fn run(&mut self, name: &str, key: &str, f: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        let dir = self.dir(name);
        match self.read_mark(name)? {
            Some(m) if m.key == key && m.status == "ok" => {
                tracing::info!(stage = name, "finished earlier with the same key: skipped");
                self.done.push(StageReport {
                    name: name.into(),
                    key: key.into(),
                    skipped: true,
                    wall_secs: 0.0,
                    ran_secs: m.wall_secs,
                });
                return Ok(());
            }
            Some(m) if m.key == key => {
                tracing::info!(stage = name, "unfinished with the same key: continuing it");
            }
            Some(_) => {
                tracing::info!(
                    stage = name,
                    "its config or inputs changed: running it afresh"
                );
                if dir.exists() {
                    std::fs::remove_dir_all(&dir)
                        .with_context(|| format!("{}: cannot remove", dir.display()))?;
                }
            }
            None => {
                let empty = std::fs::read_dir(&dir).map_or(true, |mut d| d.next().is_none());
                if !empty {
                    bail!(
                        "{}: exists but the pipeline has no record of it ({} is missing); move it away or use another --out",
                        dir.display(),
                        self.mark_path(name).display()
                    );
                }
            }
        }
        self.write_mark(
            name,
            &StageMark {
                key: key.into(),
                status: "running".into(),
                wall_secs: 0.0,
            },
        )?;
        reset_peak_rss();
        let t = Instant::now();
        tracing::info!(stage = name, "pipeline stage started");
        f(&dir).with_context(|| format!("pipeline stage `{name}` failed"))?;
        let wall = t.elapsed().as_secs_f64();
        self.write_mark(
            name,
            &StageMark {
                key: key.into(),
                status: "ok".into(),
                wall_secs: wall,
            },
        )?;
        self.done.push(StageReport {
            name: name.into(),
            key: key.into(),
            skipped: false,
            wall_secs: wall,
            ran_secs: wall,
        });
        Ok(())
    }
}

/// The key of a stage: its name, its projected config (device left out)
/// and the keys of its inputs.
fn stage_key(name: &str, cfg: &Config, reads: Reads, inputs: &[&str]) -> String {
    let mut p = cfg.project(reads);
    p.device = Config::default().device;
    let mut text = format!("{name}\n{}\n", p.to_toml());
    for i in inputs {
        text.push_str(i);
        text.push('\n');
    }
    sha256_of(text.as_bytes())
}

/// The run's metrics in `dir`, if it wrote them.
fn metrics_of(dir: &Path) -> Option<Metrics> {
    let text = std::fs::read_to_string(dir.join("metrics.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// Checks what the pipeline can know before running anything.
fn preflight(cfg: &Config) -> Result<()> {
    if cfg.selection.policy == Policy::Kl {
        bail!("config key `selection.policy`: 'kl' filters rows by an existing teacher cache, which the pipeline builds only after selection; run `distillrec select --policy kl` by hand");
    }
    if cfg.teacher.backbone.is_some() && cfg.teacher.objective == TeacherObjective::Generative {
        tracing::info!(
            "generative teacher: the cache grounds greedy answers (BIGRec), which is slow on a CPU"
        );
    }
    Ok(())
}

/// Runs the pipeline in `out` on `device`. `on_model` is called with each
/// model's name and metrics once its stage has finished or been skipped.
pub fn run(
    cfg: &Config,
    out: &Path,
    build: BuildInfo,
    device: &Device,
    on_model: &mut dyn FnMut(&str, &Metrics),
) -> Result<PipelineOutcome> {
    preflight(cfg)?;
    let t0 = Instant::now();
    let _lock = DirLock::acquire(out)?;
    init_logging(Some(&out.join("pipeline.log")))?;
    atomic_write(&out.join("config.toml"), cfg.to_toml().as_bytes())?;
    let mut st = Stages {
        out,
        done: Vec::new(),
    };
    let mut notify = |name: &str, dir: &Path| {
        if let Some(m) = metrics_of(dir) {
            on_model(name, &m);
        }
    };

    // data: the prepared dataset (given, or built from the config)
    let data_dir = match &cfg.dataset.prepared {
        Some(p) => p.clone(),
        None => st.dir("data"),
    };
    let given = match &cfg.dataset.prepared {
        Some(p) => store::read_manifest(p)?.fingerprint,
        None => String::new(),
    };
    let k_data = stage_key("data", cfg, reads::DATA, &[&given]);
    st.run("data", &k_data, |dir| {
        if cfg.dataset.prepared.is_none() {
            let ds = cfg.build_dataset()?;
            store::save(&ds, dir)?;
        }
        Ok(())
    })?;

    let k_pop = stage_key("popularity", cfg, reads::POPULARITY, &[&k_data]);
    let pop = cfg.project(reads::POPULARITY);
    st.run("popularity", &k_pop, |dir| {
        eval_popularity(&pop, &data_dir, dir, build.clone()).map(drop)
    })?;
    notify("popularity", &st.dir("popularity"));

    let k_student = stage_key("student", cfg, reads::STUDENT, &[&k_data]);
    let student_cfg = cfg.project(reads::STUDENT);
    st.run("student", &k_student, |dir| {
        train_student(&student_cfg, Some(&data_dir), dir, build.clone(), device).map(drop)
    })?;
    let student_name = cfg.student.model.name();
    notify(student_name, &st.dir("student"));
    let student_ckpt = crate::absolute(&st.dir("student").join("checkpoints/best.safetensors"));

    let mut report_runs = vec![
        ("popularity".to_string(), st.dir("popularity")),
        (student_name.to_string(), st.dir("student")),
    ];
    let mut report_inputs = vec![k_pop.clone(), k_student.clone()];

    if cfg.teacher.backbone.is_some() {
        let (selection, k_sel) = if cfg.selection.policy == Policy::All {
            (None, String::new())
        } else {
            let k = stage_key("selection", cfg, reads::SELECTION, &[&k_data, &k_student]);
            let file = st.dir("selection").join("selection.csv");
            let sel_cfg = cfg.project(reads::SELECTION);
            st.run("selection", &k, |dir| {
                std::fs::create_dir_all(dir)?;
                let req = SelectRequest {
                    policy: cfg.selection.policy,
                    budget: cfg.selection.budget,
                    threshold: cfg.selection.threshold,
                    data: data_dir.clone(),
                    student: Some(student_ckpt.clone()),
                    teacher_cache: None,
                    out: file.clone(),
                };
                let o = select(&sel_cfg, &req, device)?;
                tracing::info!(selected = o.selected, pool = o.pool, "rows for the teacher");
                Ok(())
            })?;
            (Some(file), k)
        };

        let k_teacher = stage_key(
            "teacher",
            cfg,
            reads::TEACHER,
            &[&k_data, &k_student, &k_sel],
        );
        let mut teacher_cfg = cfg.project(reads::TEACHER);
        teacher_cfg.teacher.student = Some(student_ckpt.clone());
        st.run("teacher", &k_teacher, |dir| {
            let req = TrainTeacherRequest {
                data: Some(data_dir.clone()),
                selection: selection.clone(),
                backbone: None,
                student: Some(student_ckpt.clone()),
                out: dir.to_path_buf(),
                halt_after_epoch: None,
            };
            train_teacher(&teacher_cfg, &req, build.clone(), device).map(drop)
        })?;
        let teacher_label = if cfg.teacher.experts == 1 {
            "LLaRA teacher"
        } else {
            "iLoRA teacher"
        };
        notify(teacher_label, &st.dir("teacher"));

        let k_cache = stage_key("cache", cfg, reads::CACHE, &[&k_teacher, &k_sel]);
        let cache_cfg = cfg.project(reads::CACHE);
        st.run("cache", &k_cache, |dir| {
            let req = TeacherInferRequest {
                checkpoint: out.join("teacher/checkpoints/best.safetensors"),
                data: data_dir.clone(),
                selection: selection.clone(),
                shard: None,
                k: None,
                backbone: None,
                student: None,
                out: dir.to_path_buf(),
            };
            let (cache, rps) = teacher_infer(&cache_cfg, &req, device)?;
            tracing::info!(
                rows = cache.rows(),
                rows_per_sec = rps,
                "teacher cache built"
            );
            Ok(())
        })?;

        let k_distill = stage_key("distill", cfg, reads::DISTILL, &[&k_data, &k_cache, &k_sel]);
        let distill_cfg = cfg.project(reads::DISTILL);
        st.run("distill", &k_distill, |dir| {
            let req = DistillRequest {
                teacher_cache: out.join("cache"),
                selection: selection.clone(),
                data: Some(data_dir.clone()),
                out: dir.to_path_buf(),
            };
            distill(&distill_cfg, &req, build.clone(), device).map(drop)
        })?;
        let distilled = format!("{student_name} + DLLM2Rec");
        notify(&distilled, &st.dir("distill"));
        report_runs.push((teacher_label.to_string(), st.dir("teacher")));
        report_runs.push((distilled, st.dir("distill")));
        report_inputs.extend([k_teacher, k_cache, k_distill]);
    } else {
        tracing::info!("no `teacher.backbone` in the config: the teacher, cache and distillation stages are skipped");
    }

    let inputs: Vec<&str> = report_inputs.iter().map(String::as_str).collect();
    let k_report = stage_key("report", cfg, reads::REPORT, &inputs);
    let metric = cfg.train.student.metric.to_string();
    st.run("report", &k_report, |dir| {
        let req = distillrec_report::ReportRequest {
            runs: report_runs
                .iter()
                .map(|(label, d)| distillrec_report::RunSpec {
                    label: Some(label.clone()),
                    dir: d.clone(),
                })
                .collect(),
            ablation_runs: Vec::new(),
            budget_runs: Vec::new(),
            baseline: Some(student_name.to_string()),
            metric: metric.clone(),
            out: dir.to_path_buf(),
        };
        distillrec_report::write_report(&req).map(drop)
    })?;
    let outcome = PipelineOutcome {
        report: st.dir("report").join("report.md"),
        stages: st.done,
        wall_secs: t0.elapsed().as_secs_f64(),
    };
    atomic_write_json(&out.join("pipeline.json"), &outcome)?;
    Ok(outcome)
}
