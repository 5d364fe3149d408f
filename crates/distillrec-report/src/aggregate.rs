//! The report's data: one run as the report sees it, aggregated rows (mean
//! and sample std over seeds) and budget-curve points. The table, plot and
//! run-directory modules build on these types.

use std::collections::BTreeMap;

/// One finished run as the report sees it.
///
/// Built from a run directory by [`RunDir::summary`] (or by hand); the tables and
/// plots only need these few fields.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunSummary {
    /// Row name in tables and plots; runs with the same label are one model trained
    /// with different seeds and are aggregated together.
    pub label: String,
    /// Student or teacher architecture (e.g. `"sasrec"`); informational.
    pub model: String,
    /// Kind of run, e.g. `"baseline"`, `"teacher"`, `"distilled"`, `"ablation"`; used
    /// to colour bars and kept in the aggregated rows.
    pub group: String,
    /// Seed of the run; informational (aggregation is over all runs of a label).
    pub seed: u64,
    /// Test metrics keyed like `metrics.json` (`"hr@10"`, `"ndcg@10"`, …).
    pub test: BTreeMap<String, f64>,
    /// Validation metrics with the same keys; not aggregated by [`aggregate`], kept so
    /// callers can pass a run around whole.
    pub valid: BTreeMap<String, f64>,
    /// Total wall time of the run in seconds, if recorded. Available to [`aggregate`]
    /// as the pseudo-metric [`WALL_SECS`].
    pub wall_secs: Option<f64>,
    /// Number of training rows the teacher labelled, for distilled runs. Available to
    /// [`aggregate`] as the pseudo-metric [`TEACHER_ROWS`].
    pub teacher_rows: Option<usize>,
    /// Peak memory, serving latency and the teacher's share of the cost.
    pub costs: RunCosts,
}

/// What a run cost besides its own wall time; every field is optional because older
/// runs did not record it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunCosts {
    /// Peak resident memory of the run in MB ([`PEAK_MB`]).
    pub peak_mb: Option<f64>,
    /// Median per-user top-20 recommendation latency in milliseconds ([`P50_MS`]).
    pub p50_ms: Option<f64>,
    /// 99th-percentile per-user top-20 latency in milliseconds ([`P99_MS`]).
    pub p99_ms: Option<f64>,
    /// For a run that learnt from a teacher: what the teacher cost. `None` for runs
    /// that needed no teacher, so their total is their own wall time.
    pub teacher: Option<TeacherCosts>,
}

/// The cost of the teacher behind a distilled run, paid before the run started.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TeacherCosts {
    /// Wall seconds of the teacher run that made the cache ([`TEACHER_TRAIN_SECS`]).
    pub train_secs: Option<f64>,
    /// Wall seconds of building the teacher cache ([`CACHE_BUILD_SECS`]).
    pub cache_build_secs: Option<f64>,
}

impl RunSummary {
    /// Everything it took to get this model, in seconds ([`TOTAL_SECS`]): the run's
    /// own wall time, plus for a distilled run the teacher's training and the cache
    /// build. Unknown when any of those parts is unknown (a partial sum would
    /// understate the cost).
    pub fn total_secs(&self) -> Option<f64> {
        let own = self.wall_secs?;
        match &self.costs.teacher {
            None => Some(own),
            Some(t) => Some(own + t.train_secs? + t.cache_build_secs?),
        }
    }
}

/// One point of a budget curve: a student distilled with a given selection policy
/// from a teacher that saw `fraction` of the training rows.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetPoint {
    /// Selection policy that chose the rows (e.g. `"random"`, `"uncertainty"`); one
    /// line per policy in the plot, one column per policy in the table.
    pub policy: String,
    /// Fraction of training rows given to the teacher, in `[0, 1]`.
    pub fraction: f64,
    /// Absolute number of rows given to the teacher (the cost side of the budget).
    pub teacher_rows: usize,
    /// Metric of the distilled student (usually a mean over seeds).
    pub metric: f64,
    /// Standard deviation of the metric over seeds, if there was more than one seed.
    pub spread: Option<f64>,
    /// Teacher seconds spent on those rows (mean over seeds), when known:
    /// the x of the cost curve ([`crate::plot_cost_curve`]).
    pub teacher_secs: Option<f64>,
}

/// Mean and sample standard deviation of some metrics over the runs of one label.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AggregateRow {
    /// The runs' label.
    pub label: String,
    /// The group of the first run with this label.
    pub group: String,
    /// The model (architecture) of the first run with this label.
    pub model: String,
    /// Number of runs (seeds) with this label.
    pub n: usize,
    /// Mean of each metric over the runs that report it. A metric no run reports has
    /// no entry.
    pub mean: BTreeMap<String, f64>,
    /// Sample standard deviation (divisor `k - 1`) of each metric over the `k` runs
    /// that report it. Only present when `k >= 2`: one seed says nothing about spread,
    /// so tables print no `±` and plots draw no error bar.
    pub std: BTreeMap<String, f64>,
}

/// Pseudo-metric name for [`RunSummary::wall_secs`] (used when a run's `test` map has
/// no such key), so cost per model can be tabulated and plotted like any metric.
pub const WALL_SECS: &str = "wall_secs";
/// Pseudo-metric name for [`RunSummary::teacher_rows`] (used when a run's `test` map
/// has no such key).
pub const TEACHER_ROWS: &str = "teacher_rows";
/// Pseudo-metric: [`TeacherCosts::train_secs`] of a distilled run.
pub const TEACHER_TRAIN_SECS: &str = "teacher_train_secs";
/// Pseudo-metric: [`TeacherCosts::cache_build_secs`] of a distilled run.
pub const CACHE_BUILD_SECS: &str = "cache_build_secs";
/// Pseudo-metric: [`RunSummary::total_secs`], the full cost of getting the model.
pub const TOTAL_SECS: &str = "total_secs";
/// Pseudo-metric: [`RunCosts::peak_mb`].
pub const PEAK_MB: &str = "peak_mb";
/// Pseudo-metric: [`RunCosts::p50_ms`].
pub const P50_MS: &str = "p50_ms";
/// Pseudo-metric: [`RunCosts::p99_ms`].
pub const P99_MS: &str = "p99_ms";

/// Looks up `metric` for one run: the test metrics first, then the pseudo-metrics.
fn run_value(run: &RunSummary, metric: &str) -> Option<f64> {
    if let Some(v) = run.test.get(metric) {
        return Some(*v);
    }
    match metric {
        WALL_SECS => run.wall_secs,
        TEACHER_ROWS => run.teacher_rows.map(|r| r as f64),
        TEACHER_TRAIN_SECS => run.costs.teacher.and_then(|t| t.train_secs),
        CACHE_BUILD_SECS => run.costs.teacher.and_then(|t| t.cache_build_secs),
        TOTAL_SECS => run.total_secs(),
        PEAK_MB => run.costs.peak_mb,
        P50_MS => run.costs.p50_ms,
        P99_MS => run.costs.p99_ms,
        _ => None,
    }
}

/// Mean and sample standard deviation (over seeds) of each metric, per label.
///
/// Runs are grouped by [`RunSummary::label`]; rows come out in the order in which
/// each label first appears in `runs`, so the caller controls the table order (e.g.
/// baselines first). `metrics` lists the test-metric keys to aggregate; besides the
/// keys of [`RunSummary::test`], the pseudo-metrics ([`WALL_SECS`], [`TEACHER_ROWS`],
/// [`TOTAL_SECS`] and the other cost names) read the corresponding fields. If `metrics` is empty, every key of every run's
/// `test` map is aggregated.
///
/// A run that lacks a metric is left out of that metric's mean and std (it still
/// counts in [`AggregateRow::n`]). The std is the sample standard deviation (divisor
/// `k - 1`) and is only recorded when at least two runs report the metric.
pub fn aggregate(runs: &[RunSummary], metrics: &[&str]) -> Vec<AggregateRow> {
    let all_metrics: Vec<String> = if metrics.is_empty() {
        let mut keys: Vec<String> = runs.iter().flat_map(|r| r.test.keys().cloned()).collect();
        keys.sort();
        keys.dedup();
        keys
    } else {
        metrics.iter().map(|m| m.to_string()).collect()
    };

    // Labels in first-appearance order, each with the indices of its runs.
    let mut order: Vec<(&str, Vec<usize>)> = Vec::new();
    let mut index_of: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, run) in runs.iter().enumerate() {
        let slot = *index_of.entry(run.label.as_str()).or_insert_with(|| {
            order.push((run.label.as_str(), Vec::new()));
            order.len() - 1
        });
        order[slot].1.push(i);
    }

    order
        .into_iter()
        .map(|(label, members)| {
            let mut row = AggregateRow {
                label: label.to_string(),
                group: runs[members[0]].group.clone(),
                model: runs[members[0]].model.clone(),
                n: members.len(),
                mean: BTreeMap::new(),
                std: BTreeMap::new(),
            };
            for metric in &all_metrics {
                let values: Vec<f64> = members
                    .iter()
                    .filter_map(|&i| run_value(&runs[i], metric))
                    .collect();
                if let Some((mean, std)) = mean_std(&values) {
                    row.mean.insert(metric.clone(), mean);
                    if let Some(std) = std {
                        row.std.insert(metric.clone(), std);
                    }
                }
            }
            row
        })
        .collect()
}

/// Mean and sample standard deviation of `values`; `None` for an empty slice, no std
/// for a single value.
pub(crate) fn mean_std(values: &[f64]) -> Option<(f64, Option<f64>)> {
    if values.is_empty() {
        return None;
    }
    let k = values.len() as f64;
    let mean = values.iter().sum::<f64>() / k;
    if values.len() < 2 {
        return Some((mean, None));
    }
    let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (k - 1.0);
    Some((mean, Some(var.sqrt())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(label: &str, seed: u64, hr: f64, ndcg: Option<f64>) -> RunSummary {
        let mut test = BTreeMap::new();
        test.insert("hr@10".to_string(), hr);
        if let Some(n) = ndcg {
            test.insert("ndcg@10".to_string(), n);
        }
        RunSummary {
            label: label.into(),
            model: "sasrec".into(),
            group: "baseline".into(),
            seed,
            test,
            valid: BTreeMap::new(),
            wall_secs: Some(10.0 * seed as f64),
            teacher_rows: None,
            costs: RunCosts::default(),
        }
    }

    #[test]
    fn mean_and_sample_std_on_hand_made_numbers() {
        // hr: 0.1, 0.2, 0.3 -> mean 0.2, sample var ((0.01 + 0 + 0.01) / 2) = 0.01, std 0.1
        // ndcg: 0.05, 0.15 (third run lacks it) -> mean 0.1, sample std sqrt(0.005)
        let runs = vec![
            run("a", 1, 0.1, Some(0.05)),
            run("b", 1, 0.5, None),
            run("a", 2, 0.2, Some(0.15)),
            run("a", 3, 0.3, None),
        ];
        let rows = aggregate(&runs, &["hr@10", "ndcg@10", "wall_secs", "mrr"]);
        assert_eq!(rows.len(), 2);
        let a = &rows[0];
        assert_eq!(
            (a.label.as_str(), a.group.as_str(), a.n),
            ("a", "baseline", 3)
        );
        assert!((a.mean["hr@10"] - 0.2).abs() < 1e-12);
        assert!((a.std["hr@10"] - 0.1).abs() < 1e-12);
        assert!((a.mean["ndcg@10"] - 0.1).abs() < 1e-12);
        assert!((a.std["ndcg@10"] - 0.005f64.sqrt()).abs() < 1e-12);
        // wall_secs pseudo-metric: 10, 20, 30 -> mean 20, std 10
        assert!((a.mean["wall_secs"] - 20.0).abs() < 1e-9);
        assert!((a.std["wall_secs"] - 10.0).abs() < 1e-9);
        assert!(!a.mean.contains_key("mrr"));

        let b = &rows[1];
        assert_eq!((b.label.as_str(), b.n), ("b", 1));
        assert!((b.mean["hr@10"] - 0.5).abs() < 1e-12);
        assert!(b.std.is_empty(), "one seed has no sample std: {:?}", b.std);
        assert!(!b.mean.contains_key("ndcg@10"));
    }

    #[test]
    fn empty_metric_list_means_all_test_metrics_and_empty_runs_give_no_rows() {
        let runs = vec![run("a", 1, 0.1, None), run("a", 2, 0.3, Some(0.2))];
        let rows = aggregate(&runs, &[]);
        let keys: Vec<&str> = rows[0].mean.keys().map(String::as_str).collect();
        assert_eq!(keys, ["hr@10", "ndcg@10"]);
        assert!(aggregate(&[], &["hr@10"]).is_empty());
    }
}
