//! Run directories as the report reads them: typed views of `run.json`,
//! `metrics.json`, `config.toml` (serde) and `history.csv`, what kind of run
//! each one is, and the whole `report` command (tables, budget curve, plots)
//! built on them.
//!
//! A run's group comes from what the run is (its recorded `kind`, else its
//! command line), never from its label: `distilled` for a distillation;
//! `teacher` for the LLM teacher, or when a distillation run in the same
//! report was trained on a teacher cache built from this run's checkpoint
//! (the cache's source `student:<run>/checkpoints/<file>`, recorded in the
//! distillation's `run.json`); `popularity` for the most-popular-items
//! baseline; `baseline` otherwise. Ablation runs are grouped `ablation`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use distillrec_cache::CacheSource;

use crate::aggregate::{RunCosts, RunSummary, TeacherCosts};
use crate::checks::checked;
use crate::files::read_small;
use crate::history::History;

/// The part of `run.json` the report reads (other fields are ignored).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RunRecordView {
    /// The command line that produced the run (program name first).
    #[serde(default)]
    pub command: Vec<String>,
    /// What the run is, as the command that wrote it recorded; records
    /// written before it was recorded fall back to the command line.
    #[serde(default)]
    pub kind: Option<distillrec_run::RunKind>,
    /// `running`, `ok` or `failed: ...`; absent in hand-written records.
    #[serde(default)]
    pub status: Option<String>,
    /// Run seed.
    #[serde(default)]
    pub seed: u64,
    /// Total wall seconds of the run.
    #[serde(default)]
    pub wall_secs: Option<f64>,
    /// Peak resident memory of the run in MB.
    #[serde(default)]
    pub peak_rss_mb: Option<f64>,
    /// Measured costs; the report reads the distillation's teacher record and the
    /// serving latency.
    #[serde(default)]
    pub costs: CostsView,
}

/// `run.json` → `costs`, the entries the report reads.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct CostsView {
    /// What a distillation run learnt from (written by the `distill` stage).
    #[serde(default, rename = "distill.teacher")]
    pub distill_teacher: Option<TeacherRecord>,
    /// Measured per-user top-20 recommendation latency (students, distilled
    /// students, the teacher).
    #[serde(default, rename = "latency.top20")]
    pub latency_top20: Option<Latency>,
}

/// `costs["latency.top20"]`: per-user top-20 recommendation latency.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Latency {
    /// Users timed.
    #[serde(default)]
    pub users: Option<u64>,
    /// Median latency per user in milliseconds.
    #[serde(default)]
    pub p50_ms: Option<f64>,
    /// 99th-percentile latency per user in milliseconds.
    #[serde(default)]
    pub p99_ms: Option<f64>,
}

/// A distillation run's teacher record (`costs["distill.teacher"]`).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct TeacherRecord {
    /// Provenance of the teacher cache (`student:<checkpoint>` for caches
    /// built from a student checkpoint).
    #[serde(default)]
    pub cache_source: Option<CacheSource>,
    /// The selection file that restricted the teacher rows, if any.
    #[serde(default)]
    pub selection: Option<PathBuf>,
    /// Training rows that had teacher output.
    #[serde(default)]
    pub teacher_rows: Option<usize>,
    /// `teacher_rows / trained_rows`.
    #[serde(default)]
    pub fraction: Option<f64>,
    /// Wall seconds of the teacher run that made the cache.
    #[serde(default)]
    pub teacher_train_secs: Option<f64>,
    /// Wall seconds of building the teacher cache.
    #[serde(default)]
    pub cache_build_secs: Option<f64>,
}

impl TeacherRecord {
    /// The checkpoint the teacher cache was built from, when it came from a
    /// student checkpoint.
    pub fn teacher_checkpoint(&self) -> Option<&Path> {
        match self.cache_source.as_ref()? {
            CacheSource::Student(p) => Some(p.as_path()),
            _ => None,
        }
    }
}

/// `metrics.json`: metrics per split.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct MetricsView {
    /// Validation metrics.
    #[serde(default)]
    pub valid: BTreeMap<String, f64>,
    /// Test metrics.
    #[serde(default)]
    pub test: BTreeMap<String, f64>,
    /// Test metrics the file held but the report left out (outside their
    /// range, see [`RunDir::warnings`]).
    #[serde(skip)]
    pub left_out_test: BTreeSet<String>,
}

/// The part of `config.toml` the report reads.
#[derive(Clone, Debug, Default, Deserialize)]
struct ConfigView {
    #[serde(default)]
    student: StudentView,
    #[serde(default)]
    teacher: TeacherView,
}

/// `config.toml` → `[teacher]`.
#[derive(Clone, Debug, Default, Deserialize)]
struct TeacherView {
    /// The LLM backbone; kept loose (any TOML value) because the report only
    /// names it.
    #[serde(default)]
    backbone: Option<toml::Value>,
}

/// `config.toml` → `[student]`.
#[derive(Clone, Debug, Default, Deserialize)]
struct StudentView {
    #[serde(default)]
    model: Option<String>,
}

/// What a run directory holds, decided from its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunKind {
    /// The most-popular-items baseline (recorded kind `popularity`).
    Popularity,
    /// `train student` or `pipeline`: a model trained on its own.
    Trained,
    /// `train teacher`: the LLM teacher.
    Teacher,
    /// `distill`: a student distilled from a teacher cache.
    Distilled,
    /// `eval ...`: an evaluation of an existing checkpoint (its wall time is
    /// the evaluation's, not the model's cost).
    Evaluation,
}

/// One finished run directory, read with serde.
#[derive(Clone, Debug)]
pub struct RunDir {
    /// The directory.
    pub dir: PathBuf,
    /// `run.json`.
    pub record: RunRecordView,
    /// `metrics.json`.
    pub metrics: MetricsView,
    /// What model the run is: `popularity`, the teacher's `[teacher] backbone`
    /// (`teacher` when absent), else `[student] model` of `config.toml`
    /// (`student` when absent).
    pub model: String,
    /// `history.csv`, when the run wrote one.
    pub history: Option<History>,
    /// Recorded numbers outside their range (a hit ratio of −5, an infinite
    /// loss), each left out of the views above; one line each, naming the
    /// file and the key.
    pub warnings: Vec<String>,
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = read_small(path)?;
    serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))
}

impl RunDir {
    /// Reads `dir`; refuses a run that did not finish.
    pub fn read(dir: &Path) -> Result<Self> {
        let record_path = dir.join("run.json");
        let record: RunRecordView = read_json(&record_path)?;
        if let Some(status) = record.status.as_deref().filter(|s| *s != "ok") {
            bail!(
                "{}: the run did not finish (status \"{status}\"); re-run it before reporting",
                record_path.display()
            );
        }
        let metrics: MetricsView = read_json(&dir.join("metrics.json"))?;
        let config_path = dir.join("config.toml");
        let config: ConfigView = match read_small(&config_path) {
            Ok(text) => toml::from_str(&text)
                .with_context(|| format!("{}: not a valid config", config_path.display()))?,
            Err(_) => ConfigView::default(),
        };
        let history_path = dir.join("history.csv");
        let history = if history_path.is_file() {
            Some(History::read(&history_path)?)
        } else {
            None
        };
        let mut run = RunDir {
            dir: dir.to_path_buf(),
            record,
            metrics,
            model: String::new(),
            history,
            warnings: Vec::new(),
        };
        run.leave_out_impossible_values();
        run.model = match run.kind() {
            RunKind::Popularity => "popularity".into(),
            RunKind::Teacher => match config.teacher.backbone {
                Some(toml::Value::String(b)) => b,
                _ => "teacher".into(),
            },
            _ => config.student.model.unwrap_or_else(|| "student".into()),
        };
        Ok(run)
    }

    /// Removes every recorded number outside its range ([`Range`]) from the
    /// metrics, the costs and the history, with a warning each (one per
    /// history column).
    fn leave_out_impossible_values(&mut self) {
        let mut w = Vec::new();
        let file = |name: &str| self.dir.join(name).display().to_string();
        let m = &mut self.metrics;
        for (split, map) in [("valid", &mut m.valid), ("test", &mut m.test)] {
            let place = || format!("{}: {split}", file("metrics.json"));
            map.retain(|k, v| {
                let keep = checked(Some(*v), k, &place, &mut w).is_some();
                if !keep && split == "test" {
                    m.left_out_test.insert(k.clone());
                }
                keep
            });
        }
        let place = || file("run.json");
        let r = &mut self.record;
        r.wall_secs = checked(r.wall_secs, "wall_secs", &place, &mut w);
        r.peak_rss_mb = checked(r.peak_rss_mb, "peak_rss_mb", &place, &mut w);
        if let Some(l) = &mut r.costs.latency_top20 {
            l.p50_ms = checked(l.p50_ms, "p50_ms", &place, &mut w);
            l.p99_ms = checked(l.p99_ms, "p99_ms", &place, &mut w);
        }
        if let Some(t) = &mut r.costs.distill_teacher {
            t.fraction = checked(t.fraction, "fraction", &place, &mut w);
            t.teacher_train_secs =
                checked(t.teacher_train_secs, "teacher_train_secs", &place, &mut w);
            t.cache_build_secs = checked(t.cache_build_secs, "cache_build_secs", &place, &mut w);
        }
        if let Some(h) = &mut self.history {
            w.extend(h.leave_out_impossible_values(&file("history.csv")));
        }
        self.warnings = w;
    }

    /// The command words after the program name (`["train", "student"]`),
    /// up to the first option.
    fn command_words(&self) -> impl Iterator<Item = &str> {
        self.record
            .command
            .iter()
            .skip(1)
            .map(String::as_str)
            .take_while(|w| !w.starts_with('-'))
    }

    /// What the run is: its recorded kind, else from its command line.
    pub fn kind(&self) -> RunKind {
        use distillrec_run::RunKind as Recorded;
        match self.record.kind {
            Some(Recorded::Popularity) => return RunKind::Popularity,
            Some(Recorded::Student) => return RunKind::Trained,
            Some(Recorded::Teacher) => return RunKind::Teacher,
            Some(Recorded::Distilled) => return RunKind::Distilled,
            Some(Recorded::Evaluation) => return RunKind::Evaluation,
            None => {}
        }
        let words: Vec<&str> = self.command_words().collect();
        match words.as_slice() {
            ["distill", ..] => RunKind::Distilled,
            ["train", "teacher", ..] => RunKind::Teacher,
            ["eval", ..] => RunKind::Evaluation,
            _ => RunKind::Trained,
        }
    }

    /// The distillation's teacher record, for distillation runs.
    pub fn teacher(&self) -> Option<&TeacherRecord> {
        self.record.costs.distill_teacher.as_ref()
    }

    /// Whether `checkpoint` is one of this run's checkpoints.
    pub(crate) fn owns_checkpoint(&self, checkpoint: &Path) -> bool {
        let dir = std::fs::canonicalize(&self.dir).unwrap_or_else(|_| self.dir.clone());
        checkpoint.parent() == Some(dir.join("checkpoints").as_path())
    }

    /// The report's view of this run under `label` and `group`.
    pub fn summary(&self, label: String, group: &str) -> RunSummary {
        RunSummary {
            label,
            model: self.model.clone(),
            group: group.into(),
            seed: self.record.seed,
            test: self.metrics.test.clone(),
            valid: self.metrics.valid.clone(),
            wall_secs: match self.kind() {
                RunKind::Evaluation => None,
                _ => self.record.wall_secs,
            },
            teacher_rows: self.teacher().and_then(|t| t.teacher_rows),
            costs: self.costs(),
        }
    }

    /// Peak memory, latency and, for a distillation, what its teacher cost.
    fn costs(&self) -> RunCosts {
        let latency = self.record.costs.latency_top20.as_ref();
        RunCosts {
            peak_mb: self.record.peak_rss_mb,
            p50_ms: latency.and_then(|l| l.p50_ms),
            p99_ms: latency.and_then(|l| l.p99_ms),
            teacher: match self.kind() {
                RunKind::Distilled => Some(TeacherCosts {
                    train_secs: self.teacher().and_then(|t| t.teacher_train_secs),
                    cache_build_secs: self.teacher().and_then(|t| t.cache_build_secs),
                }),
                _ => None,
            },
        }
    }
}

/// A run named on the command line: `DIR` or `LABEL=DIR` (the directory
/// follows the last `=`, so labels may contain `=`).
#[derive(Clone, Debug, PartialEq)]
pub struct RunSpec {
    /// The label; default: the directory name without a `-s<seed>` suffix.
    pub label: Option<String>,
    /// The run directory.
    pub dir: PathBuf,
}

impl FromStr for RunSpec {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.rsplit_once('=') {
            Some((l, d)) => RunSpec {
                label: Some(l.to_string()),
                dir: PathBuf::from(d),
            },
            None => RunSpec {
                label: None,
                dir: PathBuf::from(s),
            },
        })
    }
}

impl RunSpec {
    /// The label, or the directory name without a trailing `-s<digits>`.
    pub fn label(&self) -> String {
        if let Some(l) = &self.label {
            return l.clone();
        }
        let name = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| self.dir.display().to_string());
        match name.rsplit_once("-s") {
            Some((head, seed)) if !seed.is_empty() && seed.chars().all(|c| c.is_ascii_digit()) => {
                head.to_string()
            }
            _ => name,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::*;

    fn write_run(dir: &Path, command: &str, teacher: Option<serde_json::Value>, ndcg: f64) {
        std::fs::create_dir_all(dir.join("checkpoints")).unwrap();
        let mut costs = serde_json::Map::new();
        if let Some(t) = teacher {
            costs.insert("distill.teacher".into(), t);
        }
        let record = serde_json::json!({
            "command": command.split(' ').collect::<Vec<_>>(),
            "status": "ok",
            "seed": 3,
            "wall_secs": 12.5,
            "costs": costs,
        });
        std::fs::write(dir.join("run.json"), record.to_string()).unwrap();
        std::fs::write(
            dir.join("metrics.json"),
            format!("{{\"valid\": {{\"ndcg@10\": 0.5}}, \"test\": {{\"ndcg@10\": {ndcg}}}}}"),
        )
        .unwrap();
        std::fs::write(
            dir.join("config.toml"),
            "seed = 3\n[student]\nmodel = \"gru4rec\"\n",
        )
        .unwrap();
    }

    #[test]
    fn group_comes_from_what_the_run_is_not_its_label() {
        let d = tempfile::tempdir().unwrap();
        let big = d.path().join("big");
        let small = d.path().join("teacher-looking-name");
        let dist = d.path().join("dist");
        write_run(&big, "distillrec train student --out big", None, 0.3);
        write_run(&small, "distillrec train student --out x", None, 0.2);
        let ckpt = std::fs::canonicalize(&big)
            .unwrap()
            .join("checkpoints/best.safetensors");
        write_run(
            &dist,
            "distillrec distill --teacher-cache c --out dist",
            Some(serde_json::json!({
                "cache_source": format!("student:{}", ckpt.display()),
                "teacher_rows": 7,
                "fraction": 1.0,
            })),
            0.25,
        );
        let runs: Vec<RunDir> = [&big, &small, &dist]
            .iter()
            .map(|p| RunDir::read(p).unwrap())
            .collect();
        let dists: Vec<&RunDir> = runs
            .iter()
            .filter(|r| r.kind() == RunKind::Distilled)
            .collect();
        assert_eq!(group_of(&runs[0], &dists), "teacher");
        assert_eq!(group_of(&runs[1], &dists), "baseline");
        assert_eq!(group_of(&runs[2], &dists), "distilled");
        let s = runs[2].summary("d".into(), "distilled");
        assert_eq!(
            (s.model.as_str(), s.seed, s.teacher_rows),
            ("gru4rec", 3, Some(7))
        );
        assert_eq!(s.wall_secs, Some(12.5));
    }

    #[test]
    fn unfinished_runs_and_budget_runs_without_teacher_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        write_run(&a, "distillrec eval student --out a", None, 0.1);
        let run = RunDir::read(&a).unwrap();
        assert_eq!(run.kind(), RunKind::Evaluation);
        assert_eq!(run.summary("a".into(), "baseline").wall_secs, None);
        let e = budget_points(&[run], "ndcg@10").unwrap_err().to_string();
        assert!(e.contains("not a distillation run"), "{e}");
        let text = std::fs::read_to_string(a.join("run.json"))
            .unwrap()
            .replace("\"ok\"", "\"running\"");
        std::fs::write(a.join("run.json"), text).unwrap();
        let e = RunDir::read(&a).unwrap_err().to_string();
        assert!(e.contains("did not finish (status \"running\")"), "{e}");
    }

    #[test]
    fn the_report_reads_the_sidecar_and_cache_source_the_pipeline_writes() {
        let d = tempfile::tempdir().unwrap();
        let sel = d.path().join("sel.csv");
        let meta = distillrec_cache::SelectionMeta {
            policy: Some("loss".into()),
            selected: Some(1),
            ..Default::default()
        };
        distillrec_cache::write_selection(&sel, &[("u:1".into(), 0.5)], &meta).unwrap();
        let t: TeacherRecord = serde_json::from_value(serde_json::json!({
            "selection": sel,
            "cache_source": "student:/r/checkpoints/best.safetensors",
        }))
        .unwrap();
        assert_eq!(policy_of(&t).unwrap(), "loss");
        assert_eq!(
            t.teacher_checkpoint(),
            Some(Path::new("/r/checkpoints/best.safetensors"))
        );
        let llm: TeacherRecord = serde_json::from_value(
            serde_json::json!({"cache_source": "teacher:/t/best.safetensors"}),
        )
        .unwrap();
        assert_eq!(llm.teacher_checkpoint(), None);
    }

    #[test]
    fn budget_points_average_seeds_and_share_the_full_budget_point() {
        let d = tempfile::tempdir().unwrap();
        let sel = d.path().join("sel.csv");
        std::fs::write(
            distillrec_cache::selection_meta_path(&sel),
            r#"{"policy": "entropy"}"#,
        )
        .unwrap();
        let mut runs = Vec::new();
        for (i, (selection, fraction, ndcg)) in [
            (None, 1.0, 0.30),
            (Some(&sel), 0.25, 0.10),
            (Some(&sel), 0.25, 0.20),
        ]
        .into_iter()
        .enumerate()
        {
            let dir = d.path().join(format!("r{i}"));
            write_run(
                &dir,
                "distillrec distill --out r",
                Some(serde_json::json!({
                    "selection": selection,
                    "teacher_rows": (fraction * 100.0) as usize,
                    "fraction": fraction,
                })),
                ndcg,
            );
            runs.push(RunDir::read(&dir).unwrap());
        }
        let points = budget_points(&runs, "ndcg@10").unwrap();
        assert_eq!(points.len(), 2);
        // (0.10 + 0.20) / 2 = 0.15, sample std sqrt(((0.05)² · 2) / 1) = 0.0707107
        let p = points.iter().find(|p| p.fraction == 0.25).unwrap();
        assert_eq!((p.policy.as_str(), p.teacher_rows), ("entropy", 25));
        assert!((p.metric - 0.15).abs() < 1e-12);
        assert!((p.spread.unwrap() - 0.005f64.sqrt()).abs() < 1e-12);
        let full = points.iter().find(|p| p.fraction == 1.0).unwrap();
        assert_eq!((full.policy.as_str(), full.spread), ("entropy", None));
        assert!((full.metric - 0.30).abs() < 1e-12);
    }

    #[test]
    fn run_specs_split_at_the_last_equals_and_default_labels_drop_the_seed() {
        let s: RunSpec = "a=b=runs/x-s3".parse().unwrap();
        assert_eq!(s.label.as_deref(), Some("a=b"));
        assert_eq!(s.dir, PathBuf::from("runs/x-s3"));
        let s: RunSpec = "runs/base-s12".parse().unwrap();
        assert_eq!(s.label(), "base");
        let s: RunSpec = "runs/base-sx".parse().unwrap();
        assert_eq!(s.label(), "base-sx");
    }

    /// Writes a run directory from its `run.json` record, test metrics,
    /// `[section] key = value` config line and optional `history.csv`.
    fn write_typed_run(
        dir: &Path,
        record: serde_json::Value,
        test: serde_json::Value,
        config: &str,
        history: Option<&str>,
    ) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("run.json"), record.to_string()).unwrap();
        let metrics = serde_json::json!({"valid": {}, "test": test});
        std::fs::write(dir.join("metrics.json"), metrics.to_string()).unwrap();
        std::fs::write(dir.join("config.toml"), config).unwrap();
        if let Some(h) = history {
            std::fs::write(dir.join("history.csv"), h).unwrap();
        }
    }

    fn metrics(hr10: f64, ndcg10: f64) -> serde_json::Value {
        serde_json::json!({"hr@10": hr10, "hr@20": 0.5, "ndcg@10": ndcg10, "ndcg@20": 0.25})
    }

    const STUDENT: &str = "[student]\nmodel = \"sasrec\"\n";

    /// Two student seeds (with latency and history), the teacher, a distilled
    /// student with teacher costs, an older distilled student without them, and
    /// the popularity baseline; returns the request.
    fn typed_runs(root: &Path) -> ReportRequest {
        let history = |a: f64, b: f64| {
            format!("epoch,train_loss,valid_ndcg@10,epoch_secs\n1,6.5,{a},1.5\n2,6.0,{b},1.5\n")
        };
        let student = |seed: u64, wall: f64, peak: f64, p50: f64, p99: f64| {
            serde_json::json!({
                "command": ["distillrec", "pipeline"], "kind": "student", "status": "ok",
                "seed": seed, "wall_secs": wall, "peak_rss_mb": peak,
                "costs": {"latency.top20": {"users": 100, "p50_ms": p50, "p99_ms": p99}},
            })
        };
        write_typed_run(
            &root.join("s1"),
            student(1, 100.0, 300.0, 2.0, 8.0),
            metrics(0.25, 0.125),
            STUDENT,
            Some(&history(0.25, 0.5)),
        );
        write_typed_run(
            &root.join("s2"),
            student(2, 110.0, 320.0, 4.0, 10.0),
            metrics(0.75, 0.125),
            STUDENT,
            Some(&history(0.75, 1.0)),
        );
        write_typed_run(
            &root.join("t"),
            serde_json::json!({
                "command": ["distillrec", "pipeline"], "kind": "teacher", "status": "ok",
                "seed": 1, "wall_secs": 1000.0, "peak_rss_mb": null,
                "costs": {"latency.top20": {"users": 20, "p50_ms": 200.0, "p99_ms": 900.0}},
            }),
            metrics(0.75, 0.5),
            "[teacher]\nbackbone = \"smollm2\"\n",
            None,
        );
        let distilled = |teacher: serde_json::Value| {
            serde_json::json!({
                "command": ["distillrec", "pipeline"], "kind": "distilled", "status": "ok",
                "seed": 1, "wall_secs": 50.0,
                "costs": {"distill.teacher": teacher},
            })
        };
        write_typed_run(
            &root.join("d"),
            distilled(serde_json::json!({
                "cache_source": "teacher:/x/best.safetensors", "teacher_rows": 40,
                "fraction": 1.0, "teacher_train_secs": 1000.0, "cache_build_secs": 250.0,
            })),
            metrics(0.5, 0.25),
            STUDENT,
            None,
        );
        write_typed_run(
            &root.join("old"),
            distilled(serde_json::json!({"teacher_rows": 40, "fraction": 1.0})),
            metrics(0.5, 0.25),
            STUDENT,
            None,
        );
        write_typed_run(
            &root.join("pop"),
            serde_json::json!({
                "command": ["distillrec", "pipeline"], "kind": "popularity", "status": "ok",
                "seed": 1, "wall_secs": 0.5,
            }),
            metrics(0.125, 0.0625),
            STUDENT, // the pipeline writes the whole config into every run
            None,
        );
        let spec = |label: &str, dir: &str| RunSpec {
            label: Some(label.into()),
            dir: root.join(dir),
        };
        ReportRequest {
            runs: vec![
                spec("pop", "pop"),
                spec("student", "s1"),
                spec("student", "s2"),
                spec("llm", "t"),
                spec("distilled", "d"),
                spec("old distilled", "old"),
            ],
            ablation_runs: Vec::new(),
            active_runs: Vec::new(),
            converged: None,
            budget_runs: vec![root.join("d")],
            baseline: Some("student".into()),
            metric: "ndcg@10".into(),
            out: root.join("report"),
        }
    }

    #[test]
    fn results_csv_has_metrics_costs_totals_and_latency_per_label() {
        let d = tempfile::tempdir().unwrap();
        let req = typed_runs(d.path());
        write_report(&req).unwrap();
        let csv = std::fs::read_to_string(req.out.join("results.csv")).unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines[0],
            "label,group,model,n,hr@10_mean,hr@10_std,hr@20_mean,hr@20_std,\
             ndcg@10_mean,ndcg@10_std,ndcg@20_mean,ndcg@20_std,train_secs,\
             teacher_train_secs,cache_build_secs,total_secs,peak_mb,p50_ms,p99_ms,teacher_rows"
        );
        // pop: one seed, no std; total = its own 0.5 s
        assert_eq!(
            lines[1],
            "pop,popularity,popularity,1,0.125,,0.5,,0.0625,,0.25,,0.5,,,0.5,,,,"
        );
        // student: hr@10 0.25, 0.75 -> mean 0.5, sample std sqrt(2 * 0.25² / 1) =
        // sqrt(0.125); ndcg@10 equal -> std 0; wall (100 + 110) / 2 = 105, peak
        // (300 + 320) / 2 = 310, p50 (2 + 4) / 2 = 3, p99 (8 + 10) / 2 = 9
        assert_eq!(
            lines[2],
            "student,baseline,sasrec,2,0.5,0.3535533905932738,0.5,0,0.125,0,0.25,0,\
             105,,,105,310,3,9,"
        );
        assert_eq!(
            lines[3],
            "llm,teacher,smollm2,1,0.75,,0.5,,0.5,,0.25,,1000,,,1000,,200,900,"
        );
        // distilled: 50 s own + 1000 s teacher + 250 s cache = 1300 s
        assert_eq!(
            lines[4],
            "distilled,distilled,sasrec,1,0.5,,0.5,,0.25,,0.25,,50,1000,250,1300,,,,40"
        );
        // teacher costs not recorded: the total is unknown, not understated
        assert_eq!(
            lines[5],
            "old distilled,distilled,sasrec,1,0.5,,0.5,,0.25,,0.25,,50,,,,,,,40"
        );
        assert_eq!(lines.len(), 6);
        // models.csv keeps its old columns
        let models = std::fs::read_to_string(req.out.join("models.csv")).unwrap();
        assert!(models.starts_with("label,group,n,hr@10_mean,"), "{models}");
        assert!(models
            .lines()
            .next()
            .unwrap()
            .ends_with(",wall_secs_mean,wall_secs_std,teacher_rows_mean,teacher_rows_std"));
    }

    #[test]
    fn report_md_has_cost_table_and_every_plot_as_png_and_svg() {
        let d = tempfile::tempdir().unwrap();
        let req = typed_runs(d.path());
        let md = write_report(&req).unwrap();
        assert_eq!(
            std::fs::read_to_string(req.out.join("report.md")).unwrap(),
            md
        );
        for line in [
            "| model | train s | teacher training s | cache s | total s | peak MB | p50 ms | p99 ms |",
            "| pop | 0.500 | - | - | 0.500 | - | - | - |",
            "| student | 105 | - | - | 105 | 310 | 3.00 | 9.00 |",
            "| llm | 1000 | - | - | 1000 | - | 200 | 900 |",
            "| distilled | 50.0 | 1000 | 250 | 1300 | - | - | - |",
            "| old distilled | 50.0 | - | - | - | - | - | - |",
        ] {
            assert!(md.lines().any(|l| l == line), "{line:?} not in\n{md}");
        }
        for stem in ["models_ndcg10", "cost", "learning_curves", "budget_ndcg10"] {
            assert!(md.contains(&format!("({stem}.png)")), "{stem}: {md}");
            assert!(md.contains(&format!("({stem}.svg)")), "{stem}: {md}");
            let png = std::fs::read(req.out.join(format!("{stem}.png"))).unwrap();
            let reader = png::Decoder::new(std::io::Cursor::new(png))
                .read_info()
                .unwrap();
            assert_eq!(
                (reader.info().width, reader.info().height),
                (800, 500),
                "{stem}"
            );
            let svg = std::fs::read_to_string(req.out.join(format!("{stem}.svg"))).unwrap();
            let doc = roxmltree::Document::parse(&svg).unwrap();
            assert_eq!(doc.root_element().tag_name().name(), "svg", "{stem}");
        }
        // the budget plot draws the teacher and the baseline as reference lines
        let svg = std::fs::read_to_string(req.out.join("budget_ndcg10.svg")).unwrap();
        for text in [
            "teacher: llm (0.5000)",
            "baseline: student (0.1250)",
            "100% (all rows)",
        ] {
            assert!(svg.contains(text), "{text} not in the budget SVG");
        }
        let svg = std::fs::read_to_string(req.out.join("learning_curves.svg")).unwrap();
        assert!(
            svg.contains("\nstudent\n") && !svg.contains("\nllm\n"),
            "{svg}"
        );
    }

    #[test]
    fn learning_curves_average_seeds_per_epoch() {
        let d = tempfile::tempdir().unwrap();
        typed_runs(d.path());
        // a third seed that stopped after epoch 1
        write_typed_run(
            &d.path().join("s3"),
            serde_json::json!({"command": ["distillrec", "pipeline"], "kind": "student", "status": "ok", "seed": 3}),
            metrics(0.5, 0.125),
            STUDENT,
            Some("epoch,valid_ndcg@10\n1,0.5\n"),
        );
        let runs: Vec<RunDir> = ["s1", "s2", "s3", "t"]
            .iter()
            .map(|n| RunDir::read(&d.path().join(n)).unwrap())
            .collect();
        let labelled: Vec<(&str, &RunDir)> = ["student", "student", "student", "llm"]
            .into_iter()
            .zip(&runs)
            .collect();
        let curves = learning_curves(&labelled, "ndcg@10");
        assert_eq!(curves.len(), 1, "the teacher has no history.csv");
        // epoch 1: (0.25 + 0.75 + 0.5) / 3 = 0.5; epoch 2: (0.5 + 1.0) / 2 = 0.75
        assert_eq!(curves[0].label, "student");
        assert_eq!(curves[0].points, [(1.0, 0.5), (2.0, 0.75)]);
        assert!(learning_curves(&labelled, "hr@10").is_empty());
    }

    #[test]
    fn no_history_means_no_learning_curves_and_no_error() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        write_run(&a, "distillrec train student --out a", None, 0.1);
        let req = ReportRequest {
            runs: vec![RunSpec {
                label: None,
                dir: a,
            }],
            ablation_runs: Vec::new(),
            active_runs: Vec::new(),
            converged: None,
            budget_runs: Vec::new(),
            baseline: None,
            metric: "ndcg@10".into(),
            out: d.path().join("out"),
        };
        let md = write_report(&req).unwrap();
        assert!(md.contains("no learning curves"), "{md}");
        assert!(!req.out.join("learning_curves.png").exists());
        assert!(!req.out.join("learning_curves.svg").exists());
        assert!(req.out.join("models_ndcg10.svg").exists());
        assert!(req.out.join("cost.svg").exists());
    }

    fn one_run(root: &Path, label: &str, dir: &str) -> RunSpec {
        write_run(&root.join(dir), "distillrec train student", None, 0.25);
        RunSpec {
            label: Some(label.into()),
            dir: root.join(dir),
        }
    }

    fn request(root: &Path, runs: Vec<RunSpec>) -> ReportRequest {
        ReportRequest {
            runs,
            ablation_runs: Vec::new(),
            active_runs: Vec::new(),
            converged: None,
            budget_runs: Vec::new(),
            baseline: None,
            metric: "ndcg@10".into(),
            out: root.join("out"),
        }
    }

    #[test]
    fn a_run_given_twice_or_with_an_empty_label_is_refused_before_writing() {
        let d = tempfile::tempdir().unwrap();
        let a = one_run(d.path(), "a", "a");
        let mut again = a.clone();
        again.dir = d.path().join("x/../a");
        std::fs::create_dir_all(d.path().join("x")).unwrap();
        again.label = Some("b".into());
        let e = write_report(&request(d.path(), vec![a.clone(), again.clone()]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("the run is given twice (as `a` and `b`)"), "{e}");
        assert!(e.starts_with(&again.dir.display().to_string()), "{e}");
        // under one label, and between --runs and --ablation-runs
        let mut req = request(d.path(), vec![a.clone()]);
        req.ablation_runs = vec![a.clone()];
        assert!(write_report(&req).is_err());
        let mut req = request(d.path(), Vec::new());
        req.budget_runs = vec![a.dir.clone(), a.dir.clone()];
        let e = write_report(&req).unwrap_err().to_string();
        assert!(e.contains("the budget run is given twice"), "{e}");
        let e = write_report(&request(d.path(), vec![one_run(d.path(), "", "c")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("c: the run's label is empty"), "{e}");
        assert!(!d.path().join("out").exists(), "a refused report wrote");
    }

    #[test]
    fn impossible_values_are_left_out_of_aggregates_with_a_warning() {
        let d = tempfile::tempdir().unwrap();
        let a = one_run(d.path(), "m", "a");
        let b = one_run(d.path(), "m", "b");
        std::fs::write(
            b.dir.join("metrics.json"),
            r#"{"valid": {}, "test": {"ndcg@10": 1e308, "hr@10": -5}}"#,
        )
        .unwrap();
        std::fs::write(b.dir.join("history.csv"), "epoch,valid_ndcg@10\n1,inf\n").unwrap();
        let run = RunDir::read(&b.dir).unwrap();
        assert_eq!(run.warnings.len(), 3, "{:?}", run.warnings);
        let metrics = format!(
            "{}: test: `hr@10` = -5 is not in [0, 1]",
            b.dir.join("metrics.json").display()
        );
        assert!(run.warnings[0].starts_with(&metrics), "{:?}", run.warnings);
        assert!(
            run.warnings[1].contains("`ndcg@10` = 1e308"),
            "{:?}",
            run.warnings
        );
        assert!(run.warnings[2].contains("history.csv: column `valid_ndcg@10`: inf"));
        let md = write_report(&request(d.path(), vec![a, b])).unwrap();
        // n = 2 seeds, but the mean is the one in-range value
        let csv = std::fs::read_to_string(d.path().join("out/results.csv")).unwrap();
        let row = csv.lines().nth(1).unwrap();
        assert!(row.starts_with("m,baseline,gru4rec,2,,,,,0.25,,"), "{row}");
        assert!(md.contains("## Left out"), "{md}");
        assert!(md.contains("No `valid_ndcg@10` value in the runs"), "{md}");
    }

    #[test]
    fn a_200000_character_label_takes_well_under_a_second() {
        let d = tempfile::tempdir().unwrap();
        let label = "x".repeat(200_000);
        let t = std::time::Instant::now();
        write_report(&request(d.path(), vec![one_run(d.path(), &label, "a")])).unwrap();
        // quadratic label fitting took about 10 s for 10,000 characters
        assert!(t.elapsed().as_secs_f64() < 5.0, "{:?}", t.elapsed());
    }

    #[test]
    fn a_malformed_history_is_a_one_line_error_naming_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let req = typed_runs(d.path());
        let bad = d.path().join("s2/history.csv");
        std::fs::write(&bad, "epoch,valid_ndcg@10\n1,0.5\n2,0.6,0.7\n").unwrap();
        let e = format!("{:#}", write_report(&req).unwrap_err());
        assert_eq!(
            e,
            format!(
                "{}:3: expected 2 cells as in the header, found 3",
                bad.display()
            )
        );
    }
}
