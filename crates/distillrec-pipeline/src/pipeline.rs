//! `pipeline`: every stage of SPEC 1 from one config, each in its own
//! directory under `out` — `data`, `popularity`, `student`, `selection`,
//! `teacher`, `cache`, `distill`, `report`.
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
//! as they were. The LLM stages (teacher, cache, distill) run when
//! `teacher.backbone` is set; selection runs when `selection.policy` is not
//! `all`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};

use distillrec_config::{reads, Config, Reads};
use distillrec_data::fsutil::{atomic_write, atomic_write_json, sha256_of, sha256_of_file};
use distillrec_data::lock::DirLock;
use distillrec_data::store;
use distillrec_run::{open_log_file, reset_peak_rss, BuildInfo, Metrics};
use distillrec_select::Policy;

use crate::stages::{
    distill, eval_popularity, select, teacher_infer, train_student, train_teacher, CacheJob,
    DistillRequest, SelectRequest, TeacherInferRequest, TrainTeacherRequest,
};

/// The selection file in the selection stage's directory.
const SELECTION_FILE: &str = "selection.csv";

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
    /// `report.md` (in the [`Layout::Named`] layout).
    pub report: Option<PathBuf>,
    /// The models, in the report's order.
    pub models: Vec<ModelRun>,
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
    /// SHA-256 of every file in the stage's directory when it finished,
    /// by path relative to it (absent in marks of older versions).
    #[serde(default)]
    outputs: Option<BTreeMap<String, String>>,
}

/// Files of a stage directory that are not its output: the lock of a
/// running command and the temporary files of an unfinished atomic write.
fn is_bookkeeping(name: &str) -> bool {
    name == ".distillrec.lock" || (name.starts_with('.') && name.contains(".tmp"))
}

/// SHA-256 of every file under `dir` (recursively, bookkeeping files
/// aside), by path relative to `dir`; empty when `dir` does not exist.
fn output_digests(dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    if !dir.exists() {
        return Ok(out);
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("{}", d.display()))? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(path);
            } else if !is_bookkeeping(&entry.file_name().to_string_lossy()) {
                let rel = path.strip_prefix(dir).unwrap_or(&path);
                out.insert(rel.to_string_lossy().into_owned(), sha256_of_file(&path)?);
            }
        }
    }
    Ok(out)
}

/// Why a finished stage's outputs cannot be trusted any more (the first
/// file that is missing or changed), or `None` when they are as recorded.
fn changed_output(dir: &Path, mark: &StageMark) -> Result<Option<String>> {
    let Some(recorded) = &mark.outputs else {
        return Ok(Some(
            "its record has no output digests (an older distillrec)".into(),
        ));
    };
    for (rel, digest) in recorded {
        let path = dir.join(rel);
        if !path.is_file() {
            return Ok(Some(format!("{} is missing", path.display())));
        }
        if sha256_of_file(&path)? != *digest {
            return Ok(Some(format!("{} changed", path.display())));
        }
    }
    Ok(None)
}

/// Where stage directories live.
#[derive(Clone, Debug)]
pub enum Layout {
    /// `out/<stage>` with the marks in `out/stages/<stage>.json`: one
    /// pipeline, a changed stage replaces its directory.
    Named,
    /// `root/<stage>-<key prefix>` with the marks in `root/marks/`: stages
    /// addressed by content, so pipelines that share a root (a sweep) share
    /// every stage whose key is the same.
    Shared(PathBuf),
}

/// The stages of one invocation, with their state on disk.
struct Stages<'a> {
    out: &'a Path,
    layout: Layout,
    done: Vec<StageReport>,
    /// A stage ran again because its outputs had changed: every stage
    /// after it runs again too.
    rerun_rest: bool,
}

impl Stages<'_> {
    /// The directory of stage `name` (of `kind`) under `key`: by name in
    /// the named layout, by kind and key in the shared one (so two stages of
    /// one kind with one key are one directory).
    fn dir(&self, name: &str, kind: &str, key: &str) -> PathBuf {
        match &self.layout {
            Layout::Named => self.out.join(name),
            Layout::Shared(root) => {
                let hex = key.strip_prefix("sha256:").unwrap_or(key);
                root.join(format!("{kind}-{}", &hex[..hex.len().min(12)]))
            }
        }
    }

    fn mark_path(&self, name: &str, kind: &str, key: &str) -> PathBuf {
        match &self.layout {
            Layout::Named => self.out.join("stages").join(format!("{name}.json")),
            Layout::Shared(root) => {
                let dir = self.dir(name, kind, key);
                let base = dir.file_name().unwrap_or_default().to_string_lossy();
                root.join("marks").join(format!("{base}.json"))
            }
        }
    }

    fn read_mark(&self, path: &Path) -> Result<Option<StageMark>> {
        match std::fs::read(path) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| {
                format!(
                    "{}: not a stage record; remove it to re-run the stage",
                    path.display()
                )
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("{}: cannot read", path.display())),
        }
    }

    /// Runs stage `name` under `key` unless it finished under that key;
    /// `f` gets the stage's directory, which is returned.
    fn run(
        &mut self,
        name: &str,
        kind: &str,
        key: &str,
        f: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<PathBuf> {
        let dir = self.dir(name, kind, key);
        let mark_path = self.mark_path(name, kind, key);
        match self.read_mark(&mark_path)? {
            Some(m) if m.key == key && m.status == "ok" => {
                let why = if self.rerun_rest {
                    Some("a stage before it ran again".to_string())
                } else {
                    changed_output(&dir, &m)?
                };
                let Some(why) = why else {
                    tracing::info!(stage = name, "finished earlier with the same key: skipped");
                    self.done.push(StageReport {
                        name: name.into(),
                        key: key.into(),
                        skipped: true,
                        wall_secs: 0.0,
                        ran_secs: m.wall_secs,
                    });
                    return Ok(dir);
                };
                tracing::warn!(
                    "stage `{name}` finished earlier, but {why}: running it and every stage after it again"
                );
                self.rerun_rest = true;
                if dir.exists() {
                    std::fs::remove_dir_all(&dir)
                        .with_context(|| format!("{}: cannot remove", dir.display()))?;
                }
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
                        mark_path.display()
                    );
                }
            }
        }
        let mut mark = StageMark {
            key: key.into(),
            status: "running".into(),
            wall_secs: 0.0,
            outputs: None,
        };
        atomic_write_json(&mark_path, &mark)?;
        reset_peak_rss();
        let t = Instant::now();
        tracing::info!(stage = name, "pipeline stage started");
        f(&dir).with_context(|| format!("pipeline stage `{name}` failed"))?;
        let wall = t.elapsed().as_secs_f64();
        mark.status = "ok".into();
        mark.wall_secs = wall;
        mark.outputs = Some(output_digests(&dir)?);
        atomic_write_json(&mark_path, &mark)?;
        self.done.push(StageReport {
            name: name.into(),
            key: key.into(),
            skipped: false,
            wall_secs: wall,
            ran_secs: wall,
        });
        Ok(dir)
    }
}

/// The key of a stage: its kind, its projected config (device left out)
/// and the keys of its inputs.
fn stage_key(kind: &str, projected: &Config, inputs: &[&str]) -> String {
    let mut p = projected.clone();
    p.device = Config::default().device;
    let mut text = format!("{kind}\n{}\n", p.to_toml());
    for i in inputs {
        text.push_str(i);
        text.push('\n');
    }
    sha256_of(text.as_bytes())
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
fn preflight(cfg: &Config, device: &Device) -> Result<Option<String>> {
    if let Some(backbone) = &cfg.teacher.backbone {
        if !device.is_cpu() {
            // the teacher stages run on the device; the distillation stage
            // after them does not, so refuse before anything is written
            bail!("the pipeline's distillation stage runs on the CPU only for now: run the pipeline with --device cpu, or run `train teacher` and `teacher infer` with --device cuda and then `distill` on the CPU");
        }
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

/// `cfg` projected onto the groups a stage reads, trained with `seed`.
fn projected(cfg: &Config, reads: Reads, seed: u64) -> Config {
    let mut p = cfg.project_stage(reads);
    p.seed = seed;
    p.student_seed = None;
    p
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
            LlmKeys {
                teacher_student,
                selection,
                teacher,
                cache,
                distill,
            }
        });
        StageKeys {
            data,
            popularity,
            student,
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
        if let Some(l) = &self.llm {
            out.extend(l.teacher_student.as_deref().map(|k| ("student", k)));
            out.extend(l.selection.as_deref().map(|k| ("selection", k)));
            out.extend([
                ("teacher", l.teacher.as_str()),
                ("cache", &l.cache),
                ("distill", &l.distill),
            ]);
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
    let given = preflight(cfg, device)?.unwrap_or_default();
    let t0 = Instant::now();
    let _lock = DirLock::acquire(out)?;
    // open for this run only: a sweep's runs each get their own
    let _log = open_log_file(&out.join("pipeline.log"))?;
    atomic_write(&out.join("config.toml"), cfg.to_toml().as_bytes())?;
    let named = matches!(layout, Layout::Named);
    let mut st = Stages {
        out,
        layout,
        done: Vec::new(),
        rerun_rest: false,
    };
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
    let student_name = cfg.student.model.name();
    add_model(student_name, &student_dir);

    let mut report_inputs = vec![k_pop.clone(), k_student.clone()];

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
            };
            train_teacher(&c, &req, build.clone(), device).map(drop)
        })?;
        let teacher_label = if cfg.teacher.experts == 1 {
            "LLaRA teacher"
        } else {
            "iLoRA teacher"
        };
        add_model(teacher_label, &teacher_dir);

        let c = project(reads::TEACHER_CACHE, run_seed);
        let k_cache = lk.cache.clone();
        let cache_dir = st.run("cache", "cache", &k_cache, |dir| {
            let req = TeacherInferRequest {
                job: CacheJob {
                    checkpoint: teacher_dir.join("checkpoints/best.safetensors"),
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
            };
            distill(&c, &req, build.clone(), device).map(drop)
        })?;
        add_model(&format!("{student_name} + DLLM2Rec"), &distill_dir);
        report_inputs.extend([k_teacher, k_cache, k_distill]);
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
        stages: st.done,
        wall_secs: t0.elapsed().as_secs_f64(),
    };
    atomic_write_json(&out.join("pipeline.json"), &outcome)?;
    Ok(outcome)
}
