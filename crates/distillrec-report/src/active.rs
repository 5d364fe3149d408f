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
