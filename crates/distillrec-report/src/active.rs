//! Active distillation in the report: each `active` output directory
//! (`active.json`, one record per round) is a curve of the test metric
//! against the rows given to the teacher so far; directories with the same
//! label are seeds, averaged per round (mean ± sample sd).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::aggregate::{mean_std, BudgetPoint};
use crate::files::read_small;
use crate::runs::RunSpec;
use crate::tables::{csv_field, csv_number, md_escape, mean_cell};

/// One round of `active.json`, as far as the report reads it.
#[derive(Deserialize)]
struct Round {
    round: usize,
    labelled_rows: usize,
    pool_rows: usize,
    teacher_secs_total: f64,
    test: BTreeMap<String, f64>,
}

/// One round of one label, over its seeds.
#[derive(Clone, Debug, PartialEq)]
pub struct ActivePoint {
    /// The curve (the runs' label).
    pub label: String,
    /// Round number, from 1.
    pub round: usize,
    /// Rows with teacher output after this round (mean over seeds).
    pub teacher_rows: f64,
    /// Rows the rounds draw from.
    pub pool_rows: usize,
    /// Teacher seconds so far (mean over seeds).
    pub teacher_secs: f64,
    /// Seeds averaged.
    pub seeds: usize,
    /// Test metric, mean over seeds.
    pub metric: f64,
    /// Its sample standard deviation (with two seeds or more).
    pub spread: Option<f64>,
}

/// The rounds of `runs` (active output directories), per label and round.
pub fn active_points(runs: &[RunSpec], metric: &str) -> Result<Vec<ActivePoint>> {
    // label (in order of first appearance) -> round -> records
    let mut order: Vec<String> = Vec::new();
    let mut acc: BTreeMap<(usize, usize), Vec<Round>> = BTreeMap::new();
    for spec in runs {
        let path = spec.dir.join("active.json");
        let rounds: Vec<Round> = serde_json::from_str(&read_small(&path)?)
            .with_context(|| format!("{}: not an active run's rounds", path.display()))?;
        let label = spec.label();
        let li = match order.iter().position(|l| *l == label) {
            Some(i) => i,
            None => {
                order.push(label);
                order.len() - 1
            }
        };
        for r in rounds {
            if !r.test.contains_key(metric) {
                bail!("{}: round {} has no test {metric}", path.display(), r.round);
            }
            acc.entry((li, r.round)).or_default().push(r);
        }
    }
    let mut points = Vec::new();
    for ((li, round), rs) in acc {
        let vals: Vec<f64> = rs.iter().map(|r| r.test[metric]).collect();
        let Some((mean, spread)) = mean_std(&vals) else {
            continue;
        };
        let n = rs.len() as f64;
        points.push(ActivePoint {
            label: order[li].clone(),
            round,
            teacher_rows: rs.iter().map(|r| r.labelled_rows as f64).sum::<f64>() / n,
            pool_rows: rs[0].pool_rows,
            teacher_secs: rs.iter().map(|r| r.teacher_secs_total).sum::<f64>() / n,
            seeds: rs.len(),
            metric: mean,
            spread,
        });
    }
    Ok(points)
}

/// The points as budget-curve points (one line per label, x = the share
/// of the pool labelled), for the budget plot.
pub fn as_budget_points(points: &[ActivePoint]) -> Vec<BudgetPoint> {
    points
        .iter()
        .map(|p| BudgetPoint {
            policy: p.label.clone(),
            fraction: p.teacher_rows / p.pool_rows.max(1) as f64,
            teacher_rows: p.teacher_rows.round() as usize,
            metric: p.metric,
            spread: p.spread,
            teacher_secs: Some(p.teacher_secs),
        })
        .collect()
}

/// The last round of `label` among `points`.
pub fn last_round<'a>(points: &'a [ActivePoint], label: &str) -> Option<&'a ActivePoint> {
    points
        .iter()
        .filter(|p| p.label == label)
        .max_by_key(|p| p.round)
}

/// One total budget of the active runs: the labels whose last round ends
/// at that share of the pool, for a plot of their own (the plot of every
/// label at once is unreadable once a grid has a dozen settings).
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetGroup {
    /// The share of the pool its labels have labelled after their last
    /// round (rounded to 0.1%).
    pub share: f64,
    /// The labels, in order of first appearance.
    pub labels: Vec<String>,
}

/// Labels grouped by the share of the pool their last round has labelled
/// (rounded to 0.1%, so 5% spent in 3 rounds and in 1 round are one group),
/// ascending; every-row labels (share 100%) come last.
pub fn budget_groups(points: &[ActivePoint]) -> Vec<BudgetGroup> {
    let mut labels: Vec<&str> = Vec::new();
    for p in points {
        if !labels.contains(&p.label.as_str()) {
            labels.push(&p.label);
        }
    }
    let mut groups: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for label in labels {
        let Some(last) = last_round(points, label) else {
            continue;
        };
        let share = last.teacher_rows / last.pool_rows.max(1) as f64;
        groups
            .entry((share * 1000.0).round() as i64)
            .or_default()
            .push(label.to_string());
    }
    groups
        .into_iter()
        .map(|(key, labels)| BudgetGroup {
            share: key as f64 / 1000.0,
            labels,
        })
        .collect()
}

/// The Markdown table: label, round, teacher rows, teacher seconds, seeds,
/// metric (mean ± sd).
pub fn active_markdown(points: &[ActivePoint], metric: &str) -> String {
    let mut out = format!(
        "| run | round | teacher rows | share of pool | teacher s | seeds | {} |\n|---|---:|---:|---:|---:|---:|---:|\n",
        md_escape(metric)
    );
    for p in points {
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.1}% | {:.1} | {} | {} |",
            md_escape(&p.label),
            p.round,
            p.teacher_rows,
            100.0 * p.teacher_rows / p.pool_rows.max(1) as f64,
            p.teacher_secs,
            p.seeds,
            mean_cell(p.metric, p.spread)
        );
    }
    out
}

/// `active.csv`: one line per label and round (text cells through the
/// report's one CSV escaping, numbers in full precision).
pub fn active_csv(points: &[ActivePoint]) -> String {
    let mut out =
        String::from("label,round,teacher_rows,pool_rows,teacher_secs,seeds,metric,spread\n");
    for p in points {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{}",
            csv_field(&p.label),
            p.round,
            p.teacher_rows,
            p.pool_rows,
            p.teacher_secs,
            p.seeds,
            p.metric,
            csv_number(p.spread)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{write_report, ReportRequest};

    /// An `active.json` with one record per `(labelled rows, test ndcg@10)`.
    fn write_rounds(dir: &std::path::Path, rounds: &[(usize, f64)]) {
        std::fs::create_dir_all(dir).unwrap();
        let records: Vec<serde_json::Value> = rounds
            .iter()
            .enumerate()
            .map(|(i, &(rows, ndcg))| {
                serde_json::json!({
                    "round": i + 1, "labelled_rows": rows, "pool_rows": 1000,
                    "teacher_secs_total": rows as f64 / 10.0, "test": {"ndcg@10": ndcg}
                })
            })
            .collect();
        std::fs::write(
            dir.join("active.json"),
            serde_json::to_string(&records).unwrap(),
        )
        .unwrap();
    }

    fn spec(root: &std::path::Path, label: &str, dir: &str) -> RunSpec {
        RunSpec {
            label: Some(label.into()),
            dir: root.join(dir),
        }
    }

    #[test]
    fn each_partial_budget_gets_its_own_plot_with_every_row_as_a_reference() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        write_rounds(&root.join("r5a"), &[(50, 0.10)]);
        write_rounds(&root.join("r5b"), &[(50, 0.12)]);
        write_rounds(&root.join("e5"), &[(17, 0.09), (33, 0.095), (50, 0.11)]);
        write_rounds(&root.join("r10"), &[(100, 0.13)]);
        write_rounds(&root.join("all"), &[(1000, 0.14)]);
        let active_runs = vec![
            spec(root, "random, 5% in 1 round", "r5a"),
            spec(root, "random, 5% in 1 round", "r5b"),
            spec(root, "entropy, 5% in 3 rounds", "e5"),
            spec(root, "random, 10% in 1 round", "r10"),
            spec(root, "every row", "all"),
        ];
        let points = active_points(&active_runs, "ndcg@10").unwrap();
        let groups = budget_groups(&points);
        let shares: Vec<f64> = groups.iter().map(|g| g.share).collect();
        assert_eq!(shares, [0.05, 0.1, 1.0]);
        assert_eq!(
            groups[0].labels,
            ["random, 5% in 1 round", "entropy, 5% in 3 rounds"]
        );

        let mut req = ReportRequest {
            runs: Vec::new(),
            ablation_runs: Vec::new(),
            active_runs,
            converged: None,
            budget_runs: Vec::new(),
            baseline: None,
            metric: "ndcg@10".into(),
            out: root.join("report"),
        };
        let md = write_report(&req).unwrap();
        let svg = |name: &str| std::fs::read_to_string(req.out.join(name)).unwrap();
        let five = svg("active_ndcg10_5pct.svg");
        assert!(five.contains("entropy, 5% in 3 rounds"), "{five}");
        assert!(five.contains("random, 5% in 1 round"), "{five}");
        assert!(!five.contains("random, 10% in 1 round"), "{five}");
        // every row as a reference line with its value; the x axis ends near 5%
        assert!(five.contains("every row (0.1400)"), "{five}");
        assert!(!five.contains("100% (all rows)"), "{five}");
        let ten = svg("active_ndcg10_10pct.svg");
        assert!(ten.contains("random, 10% in 1 round") && !ten.contains("in 3 rounds"));
        assert!(!req.out.join("active_ndcg10_100pct.svg").exists());
        assert!(md.contains("### 5% of the rows in all") && md.contains("active_ndcg10_10pct.png"));

        // one partial budget: the plot of every label is enough
        req.active_runs.retain(|s| !s.dir.ends_with("r10"));
        req.out = root.join("report-one");
        write_report(&req).unwrap();
        assert!(req.out.join("active_ndcg10.png").exists());
        assert!(!req.out.join("active_ndcg10_5pct.png").exists());
    }
}
