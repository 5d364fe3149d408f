//! The `report` command built on the run directories of [`crate::runs`]:
//! what to report, the groups, the budget curve, the tables, the plots and
//! `report.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use distillrec_data::fsutil::atomic_write;

use crate::aggregate::{
    aggregate, mean_std, AggregateRow, BudgetPoint, RunSummary, TEACHER_ROWS, WALL_SECS,
};
use crate::plot::{
    plot_budget_curve, plot_costs, plot_learning_curves, plot_metric_bars, LearningCurve,
    PlotFiles, ReferenceLine,
};
use crate::runs::{RunDir, RunKind, RunSpec, TeacherRecord};
use crate::tables::{
    budget_csv, budget_markdown, cost_markdown, csv_table, markdown_table, md_escape, results_csv,
    COST_METRICS,
};

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
    /// `active` output directories (`[LABEL=]DIR`, same label = seeds):
    /// their rounds as curves against teacher rows.
    pub active_runs: Vec<RunSpec>,
    /// Label (among `runs`) of the baseline trained to convergence, drawn
    /// as a second dashed line on the budget and active plots.
    pub converged: Option<String>,
    /// Metric of the plots and the budget table (`ndcg@10`).
    pub metric: String,
    /// Output directory.
    pub out: PathBuf,
}

/// The group of a run in the models table (see the module docs).
pub(crate) fn group_of(run: &RunDir, distillations: &[&RunDir]) -> &'static str {
    match run.kind() {
        RunKind::Distilled => "distilled",
        RunKind::Teacher => "teacher",
        RunKind::Popularity => "popularity",
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
pub(crate) fn policy_of(teacher: &TeacherRecord) -> Result<String> {
    match &teacher.selection {
        None => Ok("all".into()),
        Some(sel) => {
            let Some(meta) = distillrec_cache::read_selection_meta(sel)? else {
                bail!(
                    "{}: the selection's sidecar is missing; re-run select",
                    distillrec_cache::selection_meta_path(sel).display()
                );
            };
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
        let value = match run.metrics.test.get(metric) {
            Some(v) => *v,
            None if run.metrics.left_out_test.contains(metric) => continue, // warned
            None => bail!("{}: metrics.json has no test {metric}", run.dir.display()),
        };
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
                teacher_secs: None,
            });
        }
    }
    Ok(points)
}

/// The metrics of the models table, `models.csv` and `results.csv` (plus the
/// request's metric when it is not among them).
const TABLE_METRICS: [&str; 4] = ["hr@10", "hr@20", "ndcg@10", "ndcg@20"];

/// Writes the report into `req.out` and returns the Markdown:
///
/// - `report.md`: the models table, a cost table and the plots;
/// - `results.csv`: one line per model label (see [`results_csv`]);
/// - `models.csv`: the models table as before `results.csv` existed, kept for
///   scripts that read it;
/// - `budget.csv` and the budget table, when budget runs are given;
/// - plots, each as PNG and SVG: `models_<metric>` (bars with seed spread),
///   `cost` (seconds to get each model), `learning_curves` (validation metric
///   per epoch, when some run has a `history.csv` with it) and
///   `budget_<metric>` (with the teacher and the baseline as reference lines);
/// - with active runs, `active.csv`, their table, `active_<metric>` and
///   `active_secs_<metric>` (against teacher rows and seconds) and, with two
///   or more partial total budgets, `active_<metric>_<share>pct` per budget.
///
/// `<metric>` is the request's metric without `@` (`ndcg10`). Every file is
/// written atomically; nothing depends on the clock.
pub fn write_report(req: &ReportRequest) -> Result<String> {
    if req.runs.is_empty()
        && req.budget_runs.is_empty()
        && req.ablation_runs.is_empty()
        && req.active_runs.is_empty()
    {
        bail!("nothing to report: give --runs, --budget-runs and/or --active-runs");
    }
    check_specs(req)?;
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
    let mut warnings: Vec<&str> = Vec::new();
    for w in models.iter().chain(&budget).flat_map(|r| &r.warnings) {
        if !warnings.contains(&w.as_str()) {
            eprintln!("warning: {w}");
            warnings.push(w);
        }
    }
    std::fs::create_dir_all(&req.out).with_context(|| format!("{}", req.out.display()))?;
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
    let stem = metric.replace('@', "");
    let mut md = String::from("# distillrec report\n\n");
    if !runs.is_empty() {
        let labelled: Vec<(&str, &RunDir)> =
            runs.iter().map(|r| r.label.as_str()).zip(&models).collect();
        write_models(req, &runs, &labelled, &mut md)?;
    }
    if !budget.is_empty() {
        let points = budget_points(&budget, metric)?;
        let references = reference_lines(&runs, req, metric)?;
        md.push_str(&format!("## Budget curve (test {metric})\n\n"));
        md.push_str(&budget_markdown(&points, metric));
        md.push('\n');
        atomic_write(&req.out.join("budget.csv"), budget_csv(&points).as_bytes())?;
        let files = plot_budget_curve(
            &points,
            metric,
            &references,
            &req.out.join(format!("budget_{stem}")),
        )?;
        md.push_str(&embed(&format!("{metric} against teacher budget"), &files));
    }
    if !req.active_runs.is_empty() {
        let points = crate::active::active_points(&req.active_runs, metric)?;
        let references = reference_lines(&runs, req, metric)?;
        md.push_str(&format!(
            "## Active distillation (test {metric} against teacher rows)\n\n"
        ));
        md.push_str(&crate::active::active_markdown(&points, metric));
        md.push('\n');
        atomic_write(
            &req.out.join("active.csv"),
            crate::active::active_csv(&points).as_bytes(),
        )?;
        let curve = crate::active::as_budget_points(&points);
        let files = plot_budget_curve(
            &curve,
            metric,
            &references,
            &req.out.join(format!("active_{stem}")),
        )?;
        md.push_str(&embed(
            &format!("{metric} against teacher rows, by round"),
            &files,
        ));
        let files = crate::plot::plot_cost_curve(
            &curve,
            metric,
            &references,
            &req.out.join(format!("active_secs_{stem}")),
        )?;
        md.push_str(&embed(
            &format!("{metric} against teacher seconds, by round"),
            &files,
        ));
        write_active_budget_plots(&points, &references, req, &mut md)?;
    }
    if !warnings.is_empty() {
        md.push_str(
            "## Left out

",
        );
        for w in &warnings {
            md.push_str(&format!(
                "- {}
",
                md_escape(w)
            ));
        }
        md.push('\n');
    }
    atomic_write(&req.out.join("report.md"), md.as_bytes())?;
    Ok(md)
}

/// With two or more partial total budgets among the active runs, one plot
/// per budget as well (`active_<metric>_<share>pct`): that budget's
/// settings (policies, one-shot and in rounds) with the every-row runs as
/// reference lines, so the comparison at equal teacher rows is legible.
fn write_active_budget_plots(
    points: &[crate::active::ActivePoint],
    references: &[ReferenceLine],
    req: &ReportRequest,
    md: &mut String,
) -> Result<()> {
    let metric = req.metric.as_str();
    let stem = metric.replace('@', "");
    let groups = crate::active::budget_groups(points);
    let (full, partial): (Vec<_>, Vec<_>) = groups.iter().partition(|g| g.share >= 1.0);
    if partial.len() < 2 {
        return Ok(());
    }
    let mut references = references.to_vec();
    for label in full.iter().flat_map(|g| &g.labels) {
        if let Some(last) = crate::active::last_round(points, label) {
            references.push(ReferenceLine {
                label: label.clone(),
                value: last.metric,
            });
        }
    }
    for group in partial {
        let share = crate::tables::percent(group.share);
        let mine: Vec<crate::active::ActivePoint> = points
            .iter()
            .filter(|p| group.labels.contains(&p.label))
            .cloned()
            .collect();
        let slug = share.replace('%', "pct").replace('.', "_");
        let files = plot_budget_curve(
            &crate::active::as_budget_points(&mine),
            metric,
            &references,
            &req.out.join(format!("active_{stem}_{slug}")),
        )?;
        md.push_str(&format!("### {share} of the rows in all\n\n"));
        md.push_str(&embed(
            &format!("{metric} against teacher rows, {share} in all"),
            &files,
        ));
    }
    Ok(())
}

/// Refuses, before anything is read or written, a run with an empty label
/// and a run directory given twice (same directory after canonicalisation,
/// under one label or two): it would count as two seeds.
fn check_specs(req: &ReportRequest) -> Result<()> {
    let canonical = |d: &Path| std::fs::canonicalize(d).unwrap_or_else(|_| d.to_path_buf());
    let mut seen: BTreeMap<PathBuf, String> = BTreeMap::new();
    for spec in req
        .runs
        .iter()
        .chain(&req.ablation_runs)
        .chain(&req.active_runs)
    {
        let label = spec.label();
        if label.trim().is_empty() {
            bail!(
                "{}: the run's label is empty; write LABEL=DIR with a label, or DIR alone",
                spec.dir.display()
            );
        }
        if let Some(first) = seen.insert(canonical(&spec.dir), label.clone()) {
            bail!(
                "{}: the run is given twice (as `{first}` and `{label}`), so it would count as two seeds; give each run once",
                spec.dir.display()
            );
        }
    }
    let mut seen = BTreeSet::new();
    for dir in &req.budget_runs {
        if !seen.insert(canonical(dir)) {
            bail!(
                "{}: the budget run is given twice, so it would count as two seeds; give each run once",
                dir.display()
            );
        }
    }
    Ok(())
}

/// The models part of the report: tables, CSVs and the per-model plots.
fn write_models(
    req: &ReportRequest,
    runs: &[RunSummary],
    labelled: &[(&str, &RunDir)],
    md: &mut String,
) -> Result<()> {
    let metric = req.metric.as_str();
    let stem = metric.replace('@', "");
    let mut metrics: Vec<&str> = TABLE_METRICS.to_vec();
    if !metrics.contains(&metric) {
        metrics.push(metric);
    }
    let mut aggregated: Vec<&str> = metrics.clone();
    aggregated.extend(COST_METRICS);
    let rows = aggregate(runs, &aggregated);

    // The models table and models.csv exactly as before results.csv.
    let mut cols_cost: Vec<&str> = TABLE_METRICS.to_vec();
    cols_cost.push(WALL_SECS);
    cols_cost.push(TEACHER_ROWS);
    md.push_str("## Models (test split; mean ± sample std over seeds)\n\n");
    md.push_str(&markdown_table(&rows, &cols_cost));
    md.push('\n');
    atomic_write(
        &req.out.join("models.csv"),
        csv_table(&rows, &cols_cost).as_bytes(),
    )?;
    atomic_write(
        &req.out.join("results.csv"),
        results_csv(&rows, &metrics).as_bytes(),
    )?;
    let files = plot_metric_bars(&rows, metric, &req.out.join(format!("models_{stem}")))?;
    md.push_str(&embed(&format!("{metric} per model"), &files));

    md.push_str(
        "## Cost (mean over seeds; total = training + teacher training + cache building)\n\n",
    );
    md.push_str(&cost_markdown(&rows));
    md.push('\n');
    if has_seconds(&rows) {
        let files = plot_costs(&rows, &req.out.join("cost"))?;
        md.push_str(&embed("seconds per model", &files));
    }

    md.push_str(&format!("## Learning curves (validation {metric})\n\n"));
    let curves = learning_curves(labelled, metric);
    let column = format!("valid_{metric}");
    let has_column = labelled.iter().any(|(_, r)| {
        r.history
            .as_ref()
            .is_some_and(|h| h.columns.contains(&column))
    });
    if curves.is_empty() && has_column {
        md.push_str(&format!(
            "No `{column}` value in the runs' `history.csv` is in [0, 1] (see Left out): no learning curves.\n\n"
        ));
    } else if curves.is_empty() {
        md.push_str(&format!(
            "No run has a `history.csv` with `{column}`: no learning curves.\n\n"
        ));
    } else {
        let files = plot_learning_curves(&curves, metric, &req.out.join("learning_curves"))?;
        md.push_str(&embed(&format!("validation {metric} per epoch"), &files));
    }
    Ok(())
}

/// Whether some row has recorded seconds for the cost plot.
fn has_seconds(rows: &[AggregateRow]) -> bool {
    rows.iter().any(|r| {
        [
            WALL_SECS,
            crate::TEACHER_TRAIN_SECS,
            crate::CACHE_BUILD_SECS,
        ]
        .iter()
        .any(|k| r.mean.contains_key(*k))
    })
}

/// Markdown embedding a plot's PNG, with a link to its SVG.
fn embed(alt: &str, files: &PlotFiles) -> String {
    let name = |p: &Path| {
        p.file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string()
    };
    format!(
        "![{alt}]({})\n\n[SVG]({})\n\n",
        name(&files.png),
        name(&files.svg)
    )
}

/// One learning curve per label (in order of first appearance): validation
/// `metric` against epoch from the runs' `history.csv`, averaged per epoch over
/// the seeds that reached that epoch. Labels whose runs have no such column
/// get no curve.
pub fn learning_curves(runs: &[(&str, &RunDir)], metric: &str) -> Vec<LearningCurve> {
    let mut labels: Vec<&str> = Vec::new();
    for (label, _) in runs {
        if !labels.contains(label) {
            labels.push(label);
        }
    }
    labels
        .into_iter()
        .filter_map(|label| {
            // epoch (in millionths, for exact grouping) -> (epoch, values over seeds)
            let mut by_epoch: BTreeMap<i64, (f64, Vec<f64>)> = BTreeMap::new();
            let series = runs
                .iter()
                .filter(|(l, _)| *l == label)
                .filter_map(|(_, r)| r.history.as_ref()?.valid(metric));
            for points in series {
                for (epoch, v) in points {
                    let key = (epoch * 1e6).round() as i64;
                    by_epoch.entry(key).or_insert((epoch, Vec::new())).1.push(v);
                }
            }
            let points: Vec<(f64, f64)> = by_epoch
                .into_values()
                .filter_map(|(epoch, vals)| Some((epoch, mean_std(&vals)?.0)))
                .collect();
            (!points.is_empty()).then(|| LearningCurve {
                label: label.to_string(),
                points,
            })
        })
        .collect()
}

/// The budget plot's reference lines: the teacher (mean test `metric` of the
/// runs grouped `teacher`, if any report it) and the baseline label, if given
/// (an error when no run with that label reports `metric`).
fn reference_lines(
    runs: &[RunSummary],
    req: &ReportRequest,
    metric: &str,
) -> Result<Vec<ReferenceLine>> {
    let mut lines = Vec::new();
    // the teacher group, and a run labelled `teacher` (an ensemble's
    // evaluation, which no single checkpoint owns)
    let teachers: Vec<&RunSummary> = runs
        .iter()
        .filter(|r| r.group == "teacher" || r.label == "teacher")
        .collect();
    let vals: Vec<f64> = teachers
        .iter()
        .filter_map(|r| r.test.get(metric).copied())
        .collect();
    if let Some((mean, _)) = mean_std(&vals) {
        let mut names: Vec<&str> = Vec::new();
        for t in &teachers {
            if !names.contains(&t.label.as_str()) {
                names.push(&t.label);
            }
        }
        lines.push(ReferenceLine {
            label: format!("teacher: {}", names.join(", ")),
            value: mean,
        });
    }
    for (flag, label, title) in [
        ("--baseline", &req.baseline, "baseline"),
        (
            "--converged",
            &req.converged,
            "baseline trained to convergence",
        ),
    ] {
        let Some(label) = label else {
            continue;
        };
        let vals: Vec<f64> = runs
            .iter()
            .filter(|r| r.label == *label)
            .filter_map(|r| r.test.get(metric).copied())
            .collect();
        match mean_std(&vals) {
            Some((mean, _)) => lines.push(ReferenceLine {
                label: format!("{title}: {label}"),
                value: mean,
            }),
            None => {
                bail!("{flag} {label}: no run with that label among --runs reports {metric}")
            }
        }
    }
    Ok(lines)
}
