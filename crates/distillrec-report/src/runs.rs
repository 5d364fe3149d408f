//! Run directories as the report reads them: typed views of `run.json`,
//! `metrics.json` and `config.toml` (serde), what kind of run each one is,
//! and the whole `report` command (tables, budget curve, plots) built on
//! them.
//!
//! A run's group comes from what the run is, never from its label:
//! `distilled` when its command is `distill`; `teacher` when its command is
//! `train teacher`, or when a distillation run in the same report was
//! trained on a teacher cache built from this run's checkpoint (the cache's
//! source `student:<run>/checkpoints/<file>`, recorded in the distillation's
//! `run.json`); `baseline` otherwise. Ablation runs are grouped `ablation`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use distillrec_data::fsutil::atomic_write;

use crate::aggregate::{aggregate, mean_std, BudgetPoint, RunSummary, TEACHER_ROWS, WALL_SECS};
use crate::plot::{plot_budget_curve, plot_metric_bars};
use crate::tables::{budget_csv, budget_markdown, csv_table, markdown_table};

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
    /// Measured costs; the report reads the distillation's teacher record.
    #[serde(default)]
    pub costs: CostsView,
}

/// `run.json` → `costs`, the entries the report reads.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct CostsView {
    /// What a distillation run learnt from (written by the `distill` stage).
    #[serde(default, rename = "distill.teacher")]
    pub distill_teacher: Option<TeacherRecord>,
}

/// A distillation run's teacher record (`costs["distill.teacher"]`).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct TeacherRecord {
    /// Provenance of the teacher cache (`student:<checkpoint>` for caches
    /// built from a student checkpoint).
    #[serde(default)]
    pub cache_source: Option<String>,
    /// The selection file that restricted the teacher rows, if any.
    #[serde(default)]
    pub selection: Option<PathBuf>,
    /// Training rows that had teacher output.
    #[serde(default)]
    pub teacher_rows: Option<usize>,
    /// `teacher_rows / trained_rows`.
    #[serde(default)]
    pub fraction: Option<f64>,
}

impl TeacherRecord {
    /// The checkpoint the teacher cache was built from, when it came from a
    /// student checkpoint.
    pub fn teacher_checkpoint(&self) -> Option<&Path> {
        self.cache_source
            .as_deref()
            .and_then(|s| s.strip_prefix("student:"))
            .map(Path::new)
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
}

/// The part of `config.toml` the report reads.
#[derive(Clone, Debug, Default, Deserialize)]
struct ConfigView {
    #[serde(default)]
    student: StudentView,
}

/// `config.toml` → `[student]`.
#[derive(Clone, Debug, Default, Deserialize)]
struct StudentView {
    #[serde(default)]
    model: Option<String>,
}

/// A selection file's sidecar (`<file>.json`), the fields the report reads.
#[derive(Clone, Debug, Default, Deserialize)]
struct SelectionMetaView {
    #[serde(default)]
    policy: Option<String>,
}

/// What a run directory holds, decided from its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunKind {
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
    /// `[student] model` of `config.toml` (`student` when absent).
    pub model: String,
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
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
        let config: ConfigView = match std::fs::read_to_string(&config_path) {
            Ok(text) => toml::from_str(&text)
                .with_context(|| format!("{}: not a valid config", config_path.display()))?,
            Err(_) => ConfigView::default(),
        };
        Ok(RunDir {
            dir: dir.to_path_buf(),
            record,
            metrics,
            model: config.student.model.unwrap_or_else(|| "student".into()),
        })
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
            Some(Recorded::Popularity | Recorded::Student) => return RunKind::Trained,
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
    fn owns_checkpoint(&self, checkpoint: &Path) -> bool {
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

/// What to report and where.
#[derive(Clone, Debug)]
pub struct ReportRequest {
    /// Models compared side by side; same label = seeds of one model.
    pub runs: Vec<RunSpec>,
    /// Ablation runs, listed after the models in their own group.
    pub ablation_runs: Vec<RunSpec>,
    /// Distillation runs that form the budget curve.
    pub budget_runs: Vec<PathBuf>,
    /// Label (among `runs`) drawn as a dashed baseline on the budget plot.
    pub baseline: Option<String>,
    /// Metric of the plots and the budget table (`ndcg@10`).
    pub metric: String,
    /// Output directory.
    pub out: PathBuf,
}

/// The group of a run in the models table (see the module docs).
fn group_of(run: &RunDir, distillations: &[&RunDir]) -> &'static str {
    match run.kind() {
        RunKind::Distilled => "distilled",
        RunKind::Teacher => "teacher",
        _ if distillations.iter().any(|d| {
            d.teacher()
                .and_then(TeacherRecord::teacher_checkpoint)
                .is_some_and(|c| run.owns_checkpoint(c))
        }) =>
        {
            "teacher"
        }
        _ => "baseline",
    }
}

/// The policy of a distillation run: its selection file's policy, `all`
/// without one.
fn policy_of(teacher: &TeacherRecord) -> Result<String> {
    match &teacher.selection {
        None => Ok("all".into()),
        Some(sel) => {
            let meta: SelectionMetaView = read_json(&distillrec_cache::selection_meta_path(sel))?;
            Ok(meta.policy.unwrap_or_else(|| "unknown".into()))
        }
    }
}

/// Budget-curve points: per (policy, fraction) the mean and sample std of
/// `metric` over the runs' seeds. Runs without a selection (`all`) form the
/// full-budget point of every policy.
pub fn budget_points(runs: &[RunDir], metric: &str) -> Result<Vec<BudgetPoint>> {
    // (policy, fraction) -> (teacher rows, metric values over seeds)
    let mut acc: BTreeMap<(String, u64), (usize, Vec<f64>)> = BTreeMap::new();
    for run in runs {
        let Some(t) = run.teacher() else {
            bail!(
                "{}: not a distillation run (no teacher record in run.json)",
                run.dir.display()
            );
        };
        let policy = policy_of(t)?;
        let fraction = t.fraction.unwrap_or(1.0);
        let value =
            *run.metrics.test.get(metric).with_context(|| {
                format!("{}: metrics.json has no test {metric}", run.dir.display())
            })?;
        let key = (policy, (fraction * 1e9).round() as u64);
        let e = acc
            .entry(key)
            .or_insert((t.teacher_rows.unwrap_or(0), Vec::new()));
        e.1.push(value);
    }
    let policies: Vec<String> = {
        let mut p: Vec<String> = acc
            .keys()
            .map(|k| k.0.clone())
            .filter(|p| p != "all")
            .collect();
        p.dedup();
        p
    };
    let mut points = Vec::new();
    for ((policy, f), (rows, vals)) in &acc {
        let Some((mean, spread)) = mean_std(vals) else {
            continue;
        };
        let targets: Vec<String> = if policy == "all" && !policies.is_empty() {
            policies.clone() // every policy reaches the full-budget point
        } else {
            vec![policy.clone()]
        };
        for p in targets {
            points.push(BudgetPoint {
                policy: p,
                fraction: *f as f64 / 1e9,
                teacher_rows: *rows,
                metric: mean,
                spread,
            });
        }
    }
    Ok(points)
}

/// Writes `report.md`, `models.csv`, `budget.csv` and the PNG plots into
/// `req.out`; returns the Markdown.
pub fn write_report(req: &ReportRequest) -> Result<String> {
    if req.runs.is_empty() && req.budget_runs.is_empty() && req.ablation_runs.is_empty() {
        bail!("nothing to report: give --runs and/or --budget-runs");
    }
    std::fs::create_dir_all(&req.out).with_context(|| format!("{}", req.out.display()))?;
    let named: Vec<(&RunSpec, bool)> = req
        .runs
        .iter()
        .map(|s| (s, false))
        .chain(req.ablation_runs.iter().map(|s| (s, true)))
        .collect();
    let models: Vec<RunDir> = named
        .iter()
        .map(|(s, _)| RunDir::read(&s.dir))
        .collect::<Result<_>>()?;
    let budget: Vec<RunDir> = req
        .budget_runs
        .iter()
        .map(|d| RunDir::read(d))
        .collect::<Result<_>>()?;
    let distillations: Vec<&RunDir> = models
        .iter()
        .chain(&budget)
        .filter(|r| r.kind() == RunKind::Distilled)
        .collect();
    let runs: Vec<RunSummary> = named
        .iter()
        .zip(&models)
        .map(|((spec, ablation), run)| {
            let group = if *ablation {
                "ablation"
            } else {
                group_of(run, &distillations)
            };
            run.summary(spec.label(), group)
        })
        .collect();
    let metric = req.metric.as_str();
    let cols = ["hr@10", "hr@20", "ndcg@10", "ndcg@20"];
    let mut md = String::from("# distillrec report\n\n");
    if !runs.is_empty() {
        let mut cols_cost: Vec<&str> = cols.to_vec();
        cols_cost.push(WALL_SECS);
        cols_cost.push(TEACHER_ROWS);
        let rows = aggregate(&runs, &cols_cost);
        md.push_str("## Models (test split; mean ± sample std over seeds)\n\n");
        md.push_str(&markdown_table(&rows, &cols_cost));
        md.push('\n');
        atomic_write(
            &req.out.join("models.csv"),
            csv_table(&rows, &cols_cost).as_bytes(),
        )?;
        let bars = req
            .out
            .join(format!("models_{}.png", metric.replace('@', "")));
        plot_metric_bars(&rows, metric, &bars)?;
        md.push_str(&format!(
            "![{metric} per model]({})\n\n",
            bars.file_name().unwrap_or_default().to_string_lossy()
        ));
    }
    if !budget.is_empty() {
        let points = budget_points(&budget, metric)?;
        let baseline = match &req.baseline {
            Some(label) => {
                let vals: Vec<f64> = runs
                    .iter()
                    .filter(|r| &r.label == label)
                    .filter_map(|r| r.test.get(metric).copied())
                    .collect();
                match mean_std(&vals) {
                    Some((mean, _)) => Some(mean),
                    None => bail!(
                        "--baseline {label}: no run with that label among --runs reports {metric}"
                    ),
                }
            }
            None => None,
        };
        md.push_str(&format!("## Budget curve (test {metric})\n\n"));
        md.push_str(&budget_markdown(&points, metric));
        md.push('\n');
        atomic_write(&req.out.join("budget.csv"), budget_csv(&points).as_bytes())?;
        let png = req
            .out
            .join(format!("budget_{}.png", metric.replace('@', "")));
        plot_budget_curve(&points, metric, baseline, &png)?;
        md.push_str(&format!(
            "![{metric} against teacher budget]({})\n",
            png.file_name().unwrap_or_default().to_string_lossy()
        ));
    }
    atomic_write(&req.out.join("report.md"), md.as_bytes())?;
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
