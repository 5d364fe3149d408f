//! `report`: aggregates finished runs into CSV and Markdown tables and
//! PNG plots (SPEC 9): models side by side (mean ± std over seeds, with
//! cost), and accuracy against the teacher budget.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

use distillrec_data::fsutil::atomic_write;
use distillrec_report::{
    aggregate, budget_csv, budget_markdown, csv_table, markdown_table, plot_budget_curve,
    plot_metric_bars, BudgetPoint, RunSummary,
};

/// Arguments of `report`.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Run directories to compare, as `DIR` or `LABEL=DIR`; runs with the same label (default: the directory name without a `-s<seed>` suffix) are seeds of one model.
    #[arg(long, value_name = "[LABEL=]DIR", num_args = 1..)]
    pub runs: Vec<String>,
    /// Ablation runs (`[LABEL=]DIR`), listed after the models in their own group.
    #[arg(long, value_name = "[LABEL=]DIR", num_args = 1..)]
    pub ablation_runs: Vec<String>,
    /// Distillation runs that form the budget curve (policy from their selection file, fraction from the teacher rows they used).
    #[arg(long, value_name = "DIR", num_args = 1..)]
    pub budget_runs: Vec<PathBuf>,
    /// Label of the baseline drawn as a dashed line on the budget plot.
    #[arg(long)]
    pub baseline: Option<String>,
    /// Metric of the plots and the budget table.
    #[arg(long, default_value = "ndcg@10")]
    pub metric: String,
    /// Output directory (report.md, models.csv, budget.csv, PNG plots).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))
}

fn metric_map(v: &serde_json::Value) -> BTreeMap<String, f64> {
    v.as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, x)| x.as_f64().map(|f| (k.clone(), f)))
                .collect()
        })
        .unwrap_or_default()
}

/// The directory name without a trailing `-s<digits>`.
fn default_label(dir: &Path) -> String {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| dir.display().to_string());
    match name.rsplit_once("-s") {
        Some((head, seed)) if !seed.is_empty() && seed.chars().all(|c| c.is_ascii_digit()) => {
            head.to_string()
        }
        _ => name,
    }
}

/// What a run directory says about itself.
struct RunInfo {
    summary: RunSummary,
    /// The distillation's teacher record (`costs["distill.teacher"]`).
    teacher: Option<serde_json::Value>,
}

fn read_run(dir: &Path, label: Option<String>) -> Result<RunInfo> {
    let record = read_json(&dir.join("run.json"))?;
    if record["status"] != "ok" && record["status"] != serde_json::Value::Null {
        bail!(
            "{}: the run did not finish (status {}); re-run it before reporting",
            dir.join("run.json").display(),
            record["status"]
        );
    }
    let metrics = read_json(&dir.join("metrics.json"))?;
    let command: Vec<String> = record["command"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let is_distill = command.iter().any(|c| c == "distill");
    // an `eval` run's wall time is the evaluation's, not the model's cost
    let is_eval = command.iter().any(|c| c == "eval");
    let teacher = record["costs"].get("distill.teacher").cloned();
    let config = std::fs::read_to_string(dir.join("config.toml")).unwrap_or_default();
    let model = config
        .lines()
        .skip_while(|l| l.trim() != "[student]")
        .find_map(|l| {
            l.trim()
                .strip_prefix("model = ")
                .map(|m| m.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "student".into());
    let label = label.unwrap_or_else(|| default_label(dir));
    let group = if is_distill {
        "distilled"
    } else if label.contains("teacher") {
        "teacher"
    } else {
        "baseline"
    };
    Ok(RunInfo {
        summary: RunSummary {
            label,
            model,
            group: group.into(),
            seed: record["seed"].as_u64().unwrap_or(0),
            test: metric_map(&metrics["test"]),
            valid: metric_map(&metrics["valid"]),
            wall_secs: if is_eval {
                None
            } else {
                record["wall_secs"].as_f64()
            },
            teacher_rows: teacher
                .as_ref()
                .and_then(|t| t["teacher_rows"].as_u64())
                .map(|x| x as usize),
        },
        teacher,
    })
}

/// The policy of a distillation run: its selection file's policy, `all` without one.
fn policy_of(teacher: &serde_json::Value) -> Result<String> {
    match teacher["selection"].as_str() {
        None => Ok("all".into()),
        Some(sel) => {
            let meta = distillrec_cache::selection_meta_path(Path::new(sel));
            let m = read_json(&meta)?;
            Ok(m["policy"].as_str().unwrap_or("unknown").to_string())
        }
    }
}

/// Runs `report`.
pub fn report(a: ReportArgs) -> Result<()> {
    if a.runs.is_empty() && a.budget_runs.is_empty() && a.ablation_runs.is_empty() {
        bail!("nothing to report: give --runs and/or --budget-runs");
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("{}", a.out.display()))?;
    let mut runs = Vec::new();
    for (spec, ablation) in a
        .runs
        .iter()
        .map(|s| (s, false))
        .chain(a.ablation_runs.iter().map(|s| (s, true)))
    {
        // the directory follows the last `=` (labels may contain `=`)
        let (label, dir) = match spec.rsplit_once('=') {
            Some((l, d)) => (Some(l.to_string()), PathBuf::from(d)),
            None => (None, PathBuf::from(spec)),
        };
        let mut summary = read_run(&dir, label)?.summary;
        if ablation {
            summary.group = "ablation".into();
        }
        runs.push(summary);
    }
    let metric = a.metric.as_str();
    let cols = ["hr@10", "hr@20", "ndcg@10", "ndcg@20"];
    let mut md = String::from("# distillrec report\n\n");
    if !runs.is_empty() {
        let mut cols_cost: Vec<&str> = cols.to_vec();
        cols_cost.push(distillrec_report::WALL_SECS);
        cols_cost.push(distillrec_report::TEACHER_ROWS);
        let rows = aggregate(&runs, &cols_cost);
        md.push_str("## Models (test split; mean ± sample std over seeds)\n\n");
        md.push_str(&markdown_table(&rows, &cols_cost));
        md.push('\n');
        atomic_write(
            &a.out.join("models.csv"),
            csv_table(&rows, &cols_cost).as_bytes(),
        )?;
        let bars = a
            .out
            .join(format!("models_{}.png", metric.replace('@', "")));
        plot_metric_bars(&rows, metric, &bars)?;
        md.push_str(&format!(
            "![{metric} per model]({})\n\n",
            bars.file_name().unwrap_or_default().to_string_lossy()
        ));
    }
    if !a.budget_runs.is_empty() {
        // (policy, fraction) -> (teacher rows, metric values over seeds)
        let mut acc: BTreeMap<(String, u64), (usize, Vec<f64>)> = BTreeMap::new();
        for dir in &a.budget_runs {
            let info = read_run(dir, None)?;
            let Some(t) = &info.teacher else {
                bail!(
                    "{}: not a distillation run (no teacher record in run.json)",
                    dir.display()
                );
            };
            let policy = policy_of(t)?;
            let fraction = t["fraction"].as_f64().unwrap_or(1.0);
            let value =
                *info.summary.test.get(metric).with_context(|| {
                    format!("{}: metrics.json has no test {metric}", dir.display())
                })?;
            let key = (policy, (fraction * 1e9).round() as u64);
            let e = acc
                .entry(key)
                .or_insert((info.summary.teacher_rows.unwrap_or(0), Vec::new()));
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
            let n = vals.len() as f64;
            let mean = vals.iter().sum::<f64>() / n;
            let spread = (vals.len() > 1).then(|| {
                (vals.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0)).sqrt()
            });
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
        let baseline = match &a.baseline {
            Some(label) => {
                let vals: Vec<f64> = runs
                    .iter()
                    .filter(|r| &r.label == label)
                    .filter_map(|r| r.test.get(metric).copied())
                    .collect();
                if vals.is_empty() {
                    bail!(
                        "--baseline {label}: no run with that label among --runs reports {metric}"
                    );
                }
                Some(vals.iter().sum::<f64>() / vals.len() as f64)
            }
            None => None,
        };
        md.push_str(&format!("## Budget curve (test {metric})\n\n"));
        md.push_str(&budget_markdown(&points, metric));
        md.push('\n');
        atomic_write(&a.out.join("budget.csv"), budget_csv(&points).as_bytes())?;
        let png = a
            .out
            .join(format!("budget_{}.png", metric.replace('@', "")));
        plot_budget_curve(&points, metric, baseline, &png)?;
        md.push_str(&format!(
            "![{metric} against teacher budget]({})\n",
            png.file_name().unwrap_or_default().to_string_lossy()
        ));
    }
    atomic_write(&a.out.join("report.md"), md.as_bytes())?;
    println!("{md}");
    println!("report -> {}", a.out.display());
    Ok(())
}
