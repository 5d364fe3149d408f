//! Active distillation (`[active]`): rounds that spend the teacher where
//! the current student is unsure.
//!
//! Round r picks, with the configured policy and the student of round r−1
//! (the baseline student in round 1), `round_rows[r]` of the trained rows
//! that have no teacher output yet; the teacher labels those rows only; the
//! labels join the cache of the rounds before (by key); then a student is
//! distilled from that cache (afresh from the seed, or from round r−1's
//! student with `warm_start`) and evaluated. Each round is a pipeline stage
//! (`out/round-<r>`, marked in `out/stages/round-<r>.json`) keyed by its
//! config, its inputs and the round before, so a killed run continues in
//! the round it was in and a finished round is never redone.
//!
//! With `active.teacher_rows = "retrain"` (an LLM teacher), each round
//! first fine-tunes the teacher on every row the rounds have chosen so far,
//! from the round before's teacher (`train teacher --init`, in
//! `round-<r>/teacher`), and labels the round's rows with it; its training
//! time counts as teacher seconds.
//!
//! One round with the `[selection]` budget is one-shot selection: the same
//! selection, the same cache and the same distilled student as `select`,
//! `teacher infer --selection` and `distill`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};

use distillrec_cache::{write_selection, CacheSource, SelectionMeta, TeacherCache};
use distillrec_config::{reads, Budget, Config, TeacherRows};
use distillrec_data::fsutil::{
    atomic_write, atomic_write_json, read_text_limited, sha256_of_file, MAX_SMALL_FILE_BYTES,
};
use distillrec_data::lock::DirLock;
use distillrec_data::outguard::check_not_input;
use distillrec_data::Dataset;
use distillrec_run::{open_log_file, BuildInfo};
use distillrec_teacher::checkpoint::{read_manifest, trained_settings};
use distillrec_train::units::trained_rows;

use crate::keyed::{projected, stage_key, StageReport, Stages};
use crate::prepared::{load_prepared, Data};
use crate::stages::{
    distill, distill_device, select, teacher_from_student, teacher_infer, teacher_run_secs,
    train_teacher, CacheBuild, CacheJob, DistillRequest, SelectRequest, TeacherInferRequest,
    TrainTeacherRequest,
};

/// Who labels a round's rows.
#[derive(Clone, Debug)]
pub enum Labeller {
    /// An LLM teacher checkpoint (`teacher infer` on the new rows), with the
    /// student checkpoint that feeds its gate and projector.
    Llm {
        /// The teacher checkpoint.
        checkpoint: PathBuf,
        /// The student it was trained with.
        student: PathBuf,
    },
    /// A student checkpoint as the teacher (`teacher from-student` on the
    /// new rows).
    Student(PathBuf),
    /// A cache holding teacher output for every pool row, built once (for
    /// instance with `teacher from-files`): a round copies its rows out of
    /// it, and its teacher seconds are the cache's build time pro rata.
    Cache(PathBuf),
}

impl Labeller {
    /// The file whose digest identifies the teacher.
    fn identity(&self) -> PathBuf {
        match self {
            Labeller::Llm { checkpoint, .. } | Labeller::Student(checkpoint) => checkpoint.clone(),
            Labeller::Cache(dir) => dir.join("manifest.json"),
        }
    }
}

/// What `active` reads and writes.
#[derive(Clone, Debug)]
pub struct ActiveRequest {
    /// The prepared dataset.
    pub data: PathBuf,
    /// The baseline student checkpoint: round 1's signals.
    pub student: PathBuf,
    /// Who labels the rows.
    pub labeller: Labeller,
    /// Output directory (`round-<r>/`, `stages/`, `active.json`, `active.csv`).
    pub out: PathBuf,
}

/// One finished round, as `round-<r>/round.json` and a row of `active.csv`
/// record it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    /// Round number, from 1.
    pub round: usize,
    /// Rows labelled in this round.
    pub new_rows: usize,
    /// Rows with teacher output after this round.
    pub labelled_rows: usize,
    /// Rows the student trains on (the pool every round draws from).
    pub pool_rows: usize,
    /// Teacher seconds of this round (estimated pro rata for a given cache;
    /// with `retrain`, the fine-tuning included).
    pub teacher_secs: f64,
    /// Seconds of this round's teacher fine-tuning (`retrain`; else 0).
    #[serde(default)]
    pub teacher_train_secs: f64,
    /// Test metrics of this round's fine-tuned teacher (`retrain`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_test: Option<BTreeMap<String, f64>>,
    /// Teacher seconds of this round and every round before.
    pub teacher_secs_total: f64,
    /// Wall seconds of the round's distillation.
    pub distill_secs: f64,
    /// Best validation epoch of the round's student.
    pub best_epoch: usize,
    /// Validation metrics of the round's student.
    pub valid: BTreeMap<String, f64>,
    /// Test metrics of the round's student.
    pub test: BTreeMap<String, f64>,
}

/// What `active` did.
#[derive(Clone, Debug, Serialize)]
pub struct ActiveOutcome {
    /// Every round, in order.
    pub rounds: Vec<RoundRecord>,
    /// The round stages, skipped or run.
    pub stages: Vec<StageReport>,
}

/// The round file in a round's directory.
const ROUND_FILE: &str = "round.json";

/// What the rounds draw from and how much: the pool (the rows the
/// configured student trains on) and the rows of each round.
pub(crate) struct RoundPlan {
    /// Rows in the pool.
    pub pool: usize,
    /// Rows each round labels.
    pub rows: Vec<usize>,
}

/// The rows each round labels, checked against the pool of `ds` before
/// anything runs: every round labels at least one row, and the rounds
/// together no more than the pool.
pub(crate) fn plan_rounds(cfg: &Config, ds: &Dataset) -> Result<RoundPlan> {
    let pool = trained_rows(ds, cfg.student.objective, cfg.student.max_len).len();
    let rows = cfg.active.round_rows(&cfg.selection, pool);
    let total: usize = rows.iter().sum();
    if let Some(r) = rows.iter().position(|&n| n == 0) {
        bail!(
            "config key `active.budget`: round {} of {} would label no rows (a pool of {pool} rows, {} in all); raise the budget or lower active.rounds",
            r + 1,
            rows.len(),
            total
        );
    }
    if let Some(b) = cfg.active.budget {
        if total > pool {
            bail!(
                "config key `active.budget`: {} rounds of {b} ask for {total} rows, more than the {pool} rows of the pool; lower active.budget or active.rounds",
                rows.len()
            );
        }
    }
    Ok(RoundPlan { pool, rows })
}

/// The log `active` opens first in its `--out` (after the lock): what marks
/// a directory as an earlier `active` output, even one killed before its
/// first round started.
const LOG_FILE: &str = "active.log";

/// Refuses an `--out` that is one of the inputs or lies inside one, and an
/// existing directory that is neither empty (the lock aside) nor an earlier
/// `active` output (it has [`LOG_FILE`]), before anything is written.
fn check_out(req: &ActiveRequest) -> Result<()> {
    let teacher = match &req.labeller {
        Labeller::Llm { checkpoint, .. } | Labeller::Student(checkpoint) => checkpoint,
        Labeller::Cache(dir) => dir,
    };
    let inputs = [req.data.as_path(), req.student.as_path(), teacher.as_path()];
    check_not_input(&req.out, &inputs, "--out")?;
    let empty = std::fs::read_dir(&req.out).map_or(true, |d| {
        d.filter_map(|e| e.ok())
            .all(|e| e.file_name() == distillrec_data::lock::LOCK_FILE)
    });
    if !empty && !req.out.join(LOG_FILE).is_file() {
        bail!(
            "--out {}: exists, is not empty and is not an earlier `active` output; choose another --out",
            req.out.display()
        );
    }
    Ok(())
}

/// Runs the rounds of `cfg.active` in `req.out`.
pub fn active(
    cfg: &Config,
    req: &ActiveRequest,
    build: BuildInfo,
    device: &Device,
) -> Result<ActiveOutcome> {
    check_out(req)?;
    for (what, path) in [
        ("--student", req.student.clone()),
        ("the teacher", req.labeller.identity()),
    ] {
        if !path.is_file() {
            bail!("{what}: {} is not a file", path.display());
        }
    }
    if cfg.active.teacher_rows == TeacherRows::Retrain
        && !matches!(req.labeller, Labeller::Llm { .. })
    {
        bail!("config key `active.teacher_rows`: 'retrain' fine-tunes an LLM teacher each round, and a student or a cache has none to fine-tune; pass --teacher <checkpoint> or use 'infer_only'");
    }
    let data = load_prepared(&req.data)?;
    let plan = plan_rounds(cfg, &data.ds)?;
    // a given cache is read and checked once, and every round copies out of it
    let full = match &req.labeller {
        Labeller::Cache(dir) => {
            let full = TeacherCache::load(dir)?;
            full.check_against(&data.reference.fingerprint, &data.ds)?;
            Some(full)
        }
        _ => None,
    };
    let _lock = DirLock::acquire(&req.out)?;
    let _log = open_log_file(&req.out.join(LOG_FILE))?;
    atomic_write(&req.out.join("config.toml"), cfg.to_toml().as_bytes())?;
    let inputs = [
        data.reference.fingerprint.clone(),
        sha256_of_file(&req.student)?,
        sha256_of_file(&req.labeller.identity())?,
    ];
    let mut st = Stages::named(&req.out);
    let rounds = run_rounds(
        &mut st,
        &Rounds {
            cfg,
            req,
            data: &data,
            plan: &plan,
            full: full.as_ref(),
            inputs: &inputs,
            device,
            build,
        },
    )?;
    let records: Vec<RoundRecord> = rounds.into_iter().map(|(r, _)| r).collect();
    write_summary(&req.out, &records)?;
    Ok(ActiveOutcome {
        rounds: records,
        stages: st.into_reports(),
    })
}

/// What every round shares: the config (its seed is the students'), the
/// request, the rows per round and the keys of the inputs (dataset,
/// baseline student, teacher).
pub(crate) struct Rounds<'a> {
    pub cfg: &'a Config,
    pub req: &'a ActiveRequest,
    pub data: &'a Data,
    pub plan: &'a RoundPlan,
    /// The loaded cache of a [`Labeller::Cache`].
    pub full: Option<&'a TeacherCache>,
    pub inputs: &'a [String],
    pub device: &'a Device,
    pub build: BuildInfo,
}

/// The key of each round (`plan.len()` of them), chained: round r's key
/// holds round r−1's.
pub(crate) fn round_keys(cfg: &Config, inputs: &[String], rounds: usize) -> Vec<String> {
    let mut config = projected(cfg, reads::ACTIVE, cfg.seed);
    if cfg.active.teacher_rows == TeacherRows::InferOnly {
        // only a fine-tuning round reads [train.teacher]; the keys of the
        // other rounds stay what they were before it was read
        config.train.teacher = Default::default();
    }
    let mut keys: Vec<String> = Vec::with_capacity(rounds);
    for r in 1..=rounds {
        let mut all: Vec<&str> = inputs.iter().map(String::as_str).collect();
        all.push(keys.last().map_or("", String::as_str));
        let no = r.to_string();
        all.push(&no);
        keys.push(stage_key("round", &config, &all));
    }
    keys
}

/// Runs (or skips, when finished under the same key) every round as a
/// stage of `st`; returns each round's record and directory.
pub(crate) fn run_rounds(st: &mut Stages, rs: &Rounds) -> Result<Vec<(RoundRecord, PathBuf)>> {
    let keys = round_keys(rs.cfg, rs.inputs, rs.plan.rows.len());
    let mut done: Vec<(RoundRecord, PathBuf)> = Vec::new();
    for (i, (&rows, key)) in rs.plan.rows.iter().zip(&keys).enumerate() {
        let r = i + 1;
        let job = Round {
            cfg: rs.cfg,
            req: rs.req,
            data: rs.data,
            number: r,
            rows,
            pool: rs.plan.pool,
            full: rs.full,
            prev: done.last().map(|(_, d)| d.as_path()),
            teacher_secs_before: done.last().map_or(0.0, |(x, _)| x.teacher_secs_total),
            device: rs.device,
            build: rs.build.clone(),
        };
        let dir = st.run(&format!("round-{r}"), "round", key, |dir| job.run(dir))?;
        let record = read_round(&dir)?;
        tracing::info!(
            round = r,
            labelled = record.labelled_rows,
            teacher_secs = record.teacher_secs_total,
            "round finished"
        );
        done.push((record, dir));
    }
    Ok(done)
}

/// A round's `round.json`.
fn read_round(dir: &Path) -> Result<RoundRecord> {
    let path = dir.join(ROUND_FILE);
    let text = read_text_limited(&path, MAX_SMALL_FILE_BYTES)
        .map_err(|_| anyhow::anyhow!("{}: missing or unreadable", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a round record", path.display()))
}

/// `active.json` and `active.csv`: every round's rows, teacher seconds and
/// metrics.
pub(crate) fn write_summary(out: &Path, records: &[RoundRecord]) -> Result<()> {
    atomic_write_json(&out.join("active.json"), &records)?;
    // the cut-offs' HR and NDCG (the other metrics stay in active.json)
    let metrics: Vec<String> = records
        .first()
        .map(|r| {
            r.test
                .keys()
                .filter(|k| k.starts_with("hr@") || k.starts_with("ndcg@"))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let mut csv = String::from(
        "round,new_rows,labelled_rows,pool_rows,teacher_secs,teacher_secs_total,distill_secs,best_epoch",
    );
    for m in &metrics {
        csv.push_str(&format!(",valid_{m},test_{m}"));
    }
    csv.push('\n');
    for r in records {
        csv.push_str(&format!(
            "{},{},{},{},{:.3},{:.3},{:.3},{}",
            r.round,
            r.new_rows,
            r.labelled_rows,
            r.pool_rows,
            r.teacher_secs,
            r.teacher_secs_total,
            r.distill_secs,
            r.best_epoch
        ));
        for m in &metrics {
            let v = |x: &BTreeMap<String, f64>| x.get(m).map_or(String::new(), |v| v.to_string());
            csv.push_str(&format!(",{},{}", v(&r.valid), v(&r.test)));
        }
        csv.push('\n');
    }
    atomic_write(&out.join("active.csv"), csv.as_bytes())?;
    Ok(())
}

/// A round's fine-tuned teacher (`teacher_rows = "retrain"`), in its
/// directory.
const RETRAINED_CHECKPOINT: &str = "teacher/checkpoints/best.safetensors";

/// What a round's fine-tuning gave.
struct Retrained {
    /// Its best checkpoint.
    checkpoint: PathBuf,
    /// Wall seconds of the fine-tuning run (`run.json`: its evaluation
    /// included, as for the pipeline's teacher).
    secs: f64,
    /// Its test metrics.
    test: BTreeMap<String, f64>,
}

/// One round's inputs.
struct Round<'a> {
    cfg: &'a Config,
    req: &'a ActiveRequest,
    data: &'a Data,
    /// From 1.
    number: usize,
    /// Rows to label.
    rows: usize,
    /// Rows in the pool.
    pool: usize,
    /// The loaded cache of a [`Labeller::Cache`].
    full: Option<&'a TeacherCache>,
    /// The round before's directory.
    prev: Option<&'a Path>,
    teacher_secs_before: f64,
    device: &'a Device,
    build: BuildInfo,
}

impl Round<'_> {
    /// Select, label, merge, distil, record; every step reruns safely in a
    /// round that was killed (the selection and caches are written
    /// atomically, and the distillation resumes from its last epoch).
    fn run(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
        let before = match self.prev {
            Some(p) => Some(TeacherCache::load(&p.join("cache"))?),
            None => None,
        };
        let labelled: HashSet<String> = before
            .as_ref()
            .map(|c| c.keys.iter().cloned().collect())
            .unwrap_or_default();
        let selection = self.select(dir, labelled.clone())?;
        let retrained = self.retrain(dir, &labelled, &selection)?;
        let (labels, infer_secs) = self.label(dir, &selection, retrained.as_ref())?;
        let teacher_train_secs = retrained.as_ref().map_or(0.0, |r| r.secs);
        let teacher_secs = infer_secs + teacher_train_secs;
        let fingerprint = &self.data.reference.fingerprint;
        let cache = match (before, &retrained) {
            (Some(b), None) => TeacherCache::merge(vec![b, labels], fingerprint, &self.data.ds)?,
            (Some(mut b), Some(_)) => {
                // each round's rows keep the labels of the teacher of their
                // round; the item embeddings are the newest teacher's
                b.manifest.source = labels.manifest.source.clone();
                b.embeddings = labels.embeddings.clone();
                let mut c = TeacherCache::merge(vec![b, labels], fingerprint, &self.data.ds)?;
                c.manifest.source = CacheSource::Other(format!(
                    "active rounds 1-{} with teacher_rows = retrain: each round's rows from the teacher fine-tuned in that round",
                    self.number
                ));
                c
            }
            (None, _) => labels,
        };
        let cache_dir = dir.join("cache");
        cache.save(&cache_dir)?;
        let t = Instant::now();
        let init = match (self.cfg.active.warm_start, self.prev) {
            (true, Some(p)) => Some(p.join("distill/checkpoints/best.safetensors")),
            _ => None,
        };
        let d = distill(
            self.cfg,
            &DistillRequest {
                teacher_cache: cache_dir,
                selection: None,
                data: Some(self.req.data.clone()),
                out: dir.join("distill"),
                init,
            },
            self.build.clone(),
            &distill_device(self.device),
        )?;
        let record = RoundRecord {
            round: self.number,
            new_rows: selection.len(),
            labelled_rows: cache.rows(),
            pool_rows: self.pool,
            teacher_secs,
            teacher_train_secs,
            teacher_test: retrained.map(|r| r.test),
            teacher_secs_total: self.teacher_secs_before + teacher_secs,
            distill_secs: t.elapsed().as_secs_f64(),
            best_epoch: d.outcome.best_epoch,
            valid: d.metrics.valid.clone(),
            test: d.metrics.test.clone(),
        };
        atomic_write_json(&dir.join(ROUND_FILE), &record)?;
        Ok(())
    }

    /// Chooses this round's rows among those without teacher output, with
    /// the round before's student; returns their keys.
    fn select(&self, dir: &Path, labelled: HashSet<String>) -> Result<HashSet<String>> {
        let cfg = self.cfg;
        let student = match self.prev {
            Some(p) => p.join("distill/checkpoints/best.safetensors"),
            None => self.req.student.clone(),
        };
        // one round of the [selection] budget is exactly one-shot selection
        let budget = match (cfg.active.rounds, cfg.active.budget) {
            (1, None) => cfg.selection.budget,
            _ => Budget::Count(self.rows),
        };
        let out = dir.join("selection.csv");
        select(
            cfg,
            &SelectRequest {
                policy: cfg.active.policy(&cfg.selection),
                budget,
                threshold: cfg.selection.threshold,
                data: self.req.data.clone(),
                student: Some(student),
                teacher_cache: None,
                out: out.clone(),
                exclude: labelled,
            },
            self.device,
        )?;
        Ok(distillrec_cache::read_selection(&out)?
            .into_iter()
            .collect())
    }

    /// With `teacher_rows = "retrain"`: fine-tunes the teacher (the round
    /// before's, else the given one) on every row chosen so far, `labelled`
    /// and `new`, in `dir/teacher`, with the checkpoint's own teacher
    /// settings and the config's `[train.teacher]`. `None` otherwise.
    fn retrain(
        &self,
        dir: &Path,
        labelled: &HashSet<String>,
        new: &HashSet<String>,
    ) -> Result<Option<Retrained>> {
        let Labeller::Llm {
            checkpoint,
            student,
        } = &self.req.labeller
        else {
            return Ok(None);
        };
        if self.cfg.active.teacher_rows != TeacherRows::Retrain {
            return Ok(None);
        }
        let init = match self.prev {
            Some(p) => p.join(RETRAINED_CHECKPOINT),
            None => checkpoint.clone(),
        };
        let (m, weights) = read_manifest(checkpoint)?;
        let mut cfg = self.cfg.clone();
        cfg.teacher = trained_settings(&m, &weights)?;
        let mut keys: Vec<&String> = labelled.union(new).collect();
        keys.sort();
        let rows = dir.join("teacher-rows.csv");
        let keyed: Vec<(String, f64)> = keys.into_iter().map(|k| (k.clone(), f64::NAN)).collect();
        let round_meta = distillrec_cache::read_selection_meta(&dir.join("selection.csv"))?
            .context("the round's selection has no sidecar")?;
        write_selection(
            &rows,
            &keyed,
            // every row the rounds chose, no policy's ranking of its own
            &SelectionMeta {
                policy: None,
                budget: serde_json::json!({ "count": keyed.len() }),
                threshold: None,
                pool: self.pool,
                selected: Some(keyed.len()),
                fraction: keyed.len() as f64 / self.pool.max(1) as f64,
                student: None,
                ..round_meta
            },
        )?;
        let trained = train_teacher(
            &cfg,
            &TrainTeacherRequest {
                data: Some(self.req.data.clone()),
                selection: Some(rows),
                backbone: Some(m.backbone.path.clone()),
                student: Some(student.clone()),
                out: dir.join("teacher"),
                halt_after_epoch: None,
                init: Some(init),
            },
            self.build.clone(),
            self.device,
        )?;
        let checkpoint = dir.join(RETRAINED_CHECKPOINT);
        Ok(Some(Retrained {
            // the run's own record: a round killed while the teacher
            // trained counts both invocations, as the pipeline's teacher does
            secs: teacher_run_secs(&checkpoint).context("the fine-tuned teacher's run.json")?,
            checkpoint,
            test: trained.metrics.test,
        }))
    }

    /// The teacher's output for `keys` (in `dir/labels`) and its seconds.
    fn label(
        &self,
        dir: &Path,
        keys: &HashSet<String>,
        retrained: Option<&Retrained>,
    ) -> Result<(TeacherCache, f64)> {
        let out = dir.join("labels");
        let job = CacheJob {
            checkpoint: PathBuf::new(),
            data: self.req.data.clone(),
            out: out.clone(),
            selection: Some(dir.join("selection.csv")),
            shard: None,
            k: None,
        };
        let t = Instant::now();
        let cache = match &self.req.labeller {
            Labeller::Llm {
                checkpoint,
                student,
            } => {
                let checkpoint = retrained.map_or(checkpoint, |r| &r.checkpoint);
                let req = TeacherInferRequest {
                    job: CacheJob {
                        checkpoint: checkpoint.clone(),
                        ..job
                    },
                    backbone: None,
                    student: Some(student.clone()),
                };
                teacher_infer(self.cfg, &req, self.device)?.0
            }
            Labeller::Student(checkpoint) => {
                let job = CacheJob {
                    checkpoint: checkpoint.clone(),
                    ..job
                };
                teacher_from_student(self.cfg, &job, &[], self.device)?
            }
            Labeller::Cache(full_dir) => {
                let full = self
                    .full
                    .context("the rounds of a given cache need it loaded")?;
                let part = full.restrict(keys);
                if part.rows() < keys.len() {
                    bail!(
                        "{}: the cache has no teacher output for {} of the {} rows round {} selected; give a cache over every training row",
                        full_dir.display(),
                        keys.len() - part.rows(),
                        keys.len(),
                        self.number
                    );
                }
                part.save(&out)?;
                let secs = CacheBuild::read(full_dir).map_or(0.0, |b| {
                    b.wall_secs * part.rows() as f64 / full.rows().max(1) as f64
                });
                return Ok((part, secs));
            }
        };
        Ok((cache, t.elapsed().as_secs_f64()))
    }
}
