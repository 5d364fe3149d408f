//! Markdown and CSV renderings of aggregated runs and budget sweeps.
//!
//! Markdown is for humans (README/results pages: 4 decimals, `±` spreads); CSV is for
//! machines (full precision, one value per column, empty cells for missing values).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::aggregate::{
    AggregateRow, BudgetPoint, CACHE_BUILD_SECS, P50_MS, P99_MS, PEAK_MB, TEACHER_ROWS,
    TEACHER_TRAIN_SECS, TOTAL_SECS, WALL_SECS,
};

/// What Markdown and CSV print for a value that is missing.
const MISSING_MD: &str = "-";

/// Markdown table of aggregated runs, one row per label.
///
/// Columns: `model` (the label), `n` (number of seeds), then one column per entry of
/// `metrics`. Cells read `0.1234 ± 0.0056` (mean ± sample std, 4 decimals); the `±`
/// part is omitted when the row has no std for that metric (one seed), and a metric
/// the row lacks prints `-`. Labels are escaped ([`md_escape`]). Ends with a newline.
pub fn markdown_table(rows: &[AggregateRow], metrics: &[&str]) -> String {
    let mut out = String::new();
    out.push_str("| model | n |");
    for m in metrics {
        let _ = write!(out, " {} |", md_escape(m));
    }
    out.push_str("\n|---|---:|");
    for _ in metrics {
        out.push_str("---:|");
    }
    out.push('\n');
    for row in rows {
        let _ = write!(out, "| {} | {} |", md_escape(&row.label), row.n);
        for m in metrics {
            let cell = match row.mean.get(*m) {
                Some(mean) => mean_cell(*mean, row.std.get(*m).copied()),
                None => MISSING_MD.to_string(),
            };
            let _ = write!(out, " {cell} |");
        }
        out.push('\n');
    }
    out
}

/// `,<m>_mean,<m>_std` for each of `metrics` (a CSV header's metric part).
fn metric_header(out: &mut String, metrics: &[&str]) {
    for m in metrics {
        let _ = write!(
            out,
            ",{},{}",
            csv_field(&format!("{m}_mean")),
            csv_field(&format!("{m}_std"))
        );
    }
}

/// `,<mean>,<std>` of `row` for each of `metrics` (empty when unknown).
fn metric_cells(out: &mut String, row: &AggregateRow, metrics: &[&str]) {
    for m in metrics {
        let _ = write!(
            out,
            ",{},{}",
            csv_number(row.mean.get(*m).copied()),
            csv_number(row.std.get(*m).copied())
        );
    }
}

/// CSV table of aggregated runs: header `label,group,n,<m>_mean,<m>_std,…` in the
/// order of `metrics`, then one line per row.
///
/// Values are printed with full (round-trip) precision; a missing mean or std (metric
/// not reported, or a single seed) is an empty cell. Fields are quoted per RFC 4180
/// when they contain a comma, quote or newline. Ends with a newline.
pub fn csv_table(rows: &[AggregateRow], metrics: &[&str]) -> String {
    let mut out = String::from("label,group,n");
    metric_header(&mut out, metrics);
    out.push('\n');
    for row in rows {
        let _ = write!(
            out,
            "{},{},{}",
            csv_field(&row.label),
            csv_field(&row.group),
            row.n
        );
        metric_cells(&mut out, row, metrics);
        out.push('\n');
    }
    out
}

/// Cost columns of `results.csv`, named in the order of [`COST_METRICS`]
/// (the pseudo-metric each reads).
const COST_COLUMNS: [&str; 8] = [
    "train_secs",
    "teacher_train_secs",
    "cache_build_secs",
    "total_secs",
    "peak_mb",
    "p50_ms",
    "p99_ms",
    "teacher_rows",
];

/// The pseudo-metrics [`results_csv`] and [`cost_markdown`] read: pass them to
/// [`aggregate`](crate::aggregate()) along with the accuracy metrics.
pub const COST_METRICS: [&str; 8] = [
    WALL_SECS,
    TEACHER_TRAIN_SECS,
    CACHE_BUILD_SECS,
    TOTAL_SECS,
    PEAK_MB,
    P50_MS,
    P99_MS,
    TEACHER_ROWS,
];

/// `results.csv`: one line per model label, for machines.
///
/// Header `label,group,model,n`, then `<m>_mean,<m>_std` for each of `metrics`, then
/// the cost columns `train_secs` (mean run wall seconds), `teacher_train_secs`,
/// `cache_build_secs`, `total_secs` (all three summed: the full cost of the model),
/// `peak_mb`, `p50_ms`, `p99_ms` (per-user top-20 latency) and `teacher_rows`, each
/// the mean over the seeds that recorded it. Unknown values are empty cells; numbers
/// have round-trip precision. `rows` must have been aggregated over `metrics` and
/// [`COST_METRICS`]. Ends with a newline.
pub fn results_csv(rows: &[AggregateRow], metrics: &[&str]) -> String {
    let mut out = String::from("label,group,model,n");
    metric_header(&mut out, metrics);
    for name in COST_COLUMNS {
        let _ = write!(out, ",{name}");
    }
    out.push('\n');
    for row in rows {
        let _ = write!(
            out,
            "{},{},{},{}",
            csv_field(&row.label),
            csv_field(&row.group),
            csv_field(&row.model),
            row.n
        );
        metric_cells(&mut out, row, metrics);
        for key in COST_METRICS {
            let _ = write!(out, ",{}", csv_number(row.mean.get(key).copied()));
        }
        out.push('\n');
    }
    out
}

/// Markdown "Cost" table, one row per label: own training seconds, the teacher's
/// training and cache seconds (distilled models), their total, peak memory and the
/// per-user top-20 latency (p50, p99), each the mean over seeds, `-` when unknown.
/// `rows` must have been aggregated over [`COST_METRICS`]. Ends with a newline.
pub fn cost_markdown(rows: &[AggregateRow]) -> String {
    let mut out = String::from(
        "| model | train s | teacher training s | cache s | total s | peak MB | p50 ms | p99 ms |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for row in rows {
        let _ = write!(out, "| {} |", md_escape(&row.label));
        // every cost but the teacher rows, which the models table shows
        for key in &COST_METRICS[..7] {
            let cell = match row.mean.get(*key) {
                Some(v) => quantity(*v),
                None => MISSING_MD.to_string(),
            };
            let _ = write!(out, " {cell} |");
        }
        out.push('\n');
    }
    out
}

/// A measured quantity (seconds, MB, ms) for people: about three significant digits,
/// never in exponent notation (`1234`, `27.4`, `1.25`, `0.043`, `0.0012`).
pub(crate) fn quantity(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else if a >= 0.01 || a == 0.0 {
        format!("{v:.3}")
    } else {
        let decimals = ((-a.log10()).ceil() as usize + 1).min(12);
        format!("{v:.decimals$}")
    }
}

/// Markdown table of a budget sweep for one metric.
///
/// One row per distinct fraction (ascending, printed as a percentage such as `10%` or
/// `2.5%`), a `teacher rows` column, then one column per policy in order of first
/// appearance. The metric's name heads the first column (`budget (hr@10)`). Cells are
/// `0.1234 ± 0.0056` when the point has a spread, `0.1234` otherwise, and `-` when a
/// policy has no point at that fraction. If several points share a policy and a
/// fraction, the first one is used. When the policies disagree on the number of
/// teacher rows at one fraction, the cell shows the range `min–max`.
pub fn budget_markdown(points: &[BudgetPoint], metric_name: &str) -> String {
    let policies = policies_in_order(points);
    let fractions = fractions_ascending(points);

    let mut out = String::new();
    let _ = write!(
        out,
        "| budget ({}) | teacher rows |",
        md_escape(metric_name)
    );
    for p in &policies {
        let _ = write!(out, " {} |", md_escape(p));
    }
    out.push_str("\n|---:|---:|");
    for _ in &policies {
        out.push_str("---:|");
    }
    out.push('\n');

    for (key, fraction) in &fractions {
        let at: Vec<&BudgetPoint> = points
            .iter()
            .filter(|p| fraction_key(p.fraction) == *key)
            .collect();
        let min_rows = at.iter().map(|p| p.teacher_rows).min().unwrap_or(0);
        let max_rows = at.iter().map(|p| p.teacher_rows).max().unwrap_or(0);
        let rows_cell = if min_rows == max_rows {
            min_rows.to_string()
        } else {
            format!("{min_rows}–{max_rows}")
        };
        let _ = write!(out, "| {} | {} |", percent(*fraction), rows_cell);
        for policy in &policies {
            let cell = match at.iter().find(|p| p.policy == *policy) {
                Some(p) => mean_cell(p.metric, p.spread),
                None => MISSING_MD.to_string(),
            };
            let _ = write!(out, " {cell} |");
        }
        out.push('\n');
    }
    out
}

/// CSV of a budget sweep, one line per point in input order:
/// `policy,fraction,teacher_rows,metric,spread` (empty `spread` when absent, values in
/// full precision). Ends with a newline.
pub fn budget_csv(points: &[BudgetPoint]) -> String {
    let mut out = String::from("policy,fraction,teacher_rows,metric,spread\n");
    for p in points {
        let _ = writeln!(
            out,
            "{},{},{},{},{}",
            csv_field(&p.policy),
            p.fraction,
            p.teacher_rows,
            p.metric,
            csv_number(p.spread)
        );
    }
    out
}

/// Distinct policies in order of first appearance.
pub(crate) fn policies_in_order(points: &[BudgetPoint]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in points {
        if !out.contains(&p.policy) {
            out.push(p.policy.clone());
        }
    }
    out
}

/// Key under which two fractions count as the same budget (equal to 1e-9).
pub(crate) fn fraction_key(fraction: f64) -> i64 {
    (fraction * 1e9).round() as i64
}

/// Distinct fractions, ascending, with their grouping key.
fn fractions_ascending(points: &[BudgetPoint]) -> Vec<(i64, f64)> {
    let mut by_key: BTreeMap<i64, f64> = BTreeMap::new();
    for p in points {
        by_key.entry(fraction_key(p.fraction)).or_insert(p.fraction);
    }
    by_key.into_iter().collect()
}

/// A fraction as a percentage with at most two decimals and no trailing zeros:
/// `0.1` → `10%`, `0.025` → `2.5%`, `1.0` → `100%`.
pub(crate) fn percent(fraction: f64) -> String {
    let s = format!("{:.2}", fraction * 100.0);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    let s = if s == "-0" { "0" } else { s };
    format!("{s}%")
}

/// `mean ± std` with 4 decimals, or just the mean when there is no std.
pub(crate) fn mean_cell(mean: f64, std: Option<f64>) -> String {
    match std {
        Some(s) => format!("{mean:.4} ± {s:.4}"),
        None => format!("{mean:.4}"),
    }
}

/// Text from run directories and the command line (labels, model and policy
/// names) as literal Markdown: HTML's `<`, `>` and `&` become entities, the
/// characters that start Markdown markup are backslash-escaped, and line
/// breaks become spaces, so the text renders as written and stays in its
/// table cell. One pass, linear in the text.
pub(crate) fn md_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\n' | '\r' => out.push(' '),
            '\\' | '`' | '*' | '_' | '[' | ']' | '(' | ')' | '|' | '~' | '#' | '!' | '$' => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

/// A CSV text field (label, group, model, policy): quoted per RFC 4180 when
/// needed, and a field that a spreadsheet would run as a formula (starting
/// with `=`, `+`, `-`, `@`, tab or carriage return) gets a leading `'` and
/// quotes, as OWASP advises. Numbers go through [`csv_number`] instead and
/// stay numbers.
pub(crate) fn csv_field(s: &str) -> String {
    let formula = s.starts_with(['=', '+', '-', '@', '\t', '\r']);
    if formula {
        format!("\"'{}\"", s.replace('"', "\"\""))
    } else if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// A number in round-trip precision, or an empty cell.
pub(crate) fn csv_number(v: Option<f64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(label: &str, n: usize, hr: (f64, Option<f64>), ndcg: Option<f64>) -> AggregateRow {
        let mut r = AggregateRow {
            label: label.into(),
            group: "distilled".into(),
            n,
            ..Default::default()
        };
        r.mean.insert("hr@10".into(), hr.0);
        if let Some(s) = hr.1 {
            r.std.insert("hr@10".into(), s);
        }
        if let Some(v) = ndcg {
            r.mean.insert("ndcg@10".into(), v);
        }
        r
    }

    #[test]
    fn markdown_table_has_expected_cells() {
        let rows = vec![
            row("sasrec+kd", 3, (0.12344, Some(0.00561)), Some(0.05)),
            row("gru|4rec", 1, (0.2, None), None),
        ];
        let md = markdown_table(&rows, &["hr@10", "ndcg@10"]);
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines[0], "| model | n | hr@10 | ndcg@10 |");
        assert_eq!(lines[1], "|---|---:|---:|---:|");
        assert_eq!(lines[2], "| sasrec+kd | 3 | 0.1234 ± 0.0056 | 0.0500 |");
        assert_eq!(lines[3], "| gru\\|4rec | 1 | 0.2000 | - |");
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn markdown_shows_html_and_markup_in_labels_as_text() {
        assert_eq!(
            md_escape("<script>alert(1)</script>"),
            "&lt;script&gt;alert\\(1\\)&lt;/script&gt;"
        );
        assert_eq!(
            md_escape("a & *b* [x](y)\nz"),
            "a &amp; \\*b\\* \\[x\\]\\(y\\) z"
        );
        let md = markdown_table(&[row("<b>x</b>", 1, (0.5, None), None)], &["hr@10"]);
        assert!(md.contains("| &lt;b&gt;x&lt;/b&gt; | 1 |"), "{md}");
        assert!(!md.contains("<b>"), "{md}");
    }

    #[test]
    fn csv_text_cells_that_start_a_formula_are_prefixed_and_quoted() {
        assert_eq!(csv_field("=cmd|calc"), "\"'=cmd|calc\"");
        assert_eq!(csv_field("+1"), "\"'+1\"");
        assert_eq!(csv_field("-x,\"y\""), "\"'-x,\"\"y\"\"\"");
        assert_eq!(csv_field("@SUM(A1)"), "\"'@SUM(A1)\"");
        assert_eq!(csv_field("\tx"), "\"'\tx\"");
        assert_eq!(csv_field("sasrec"), "sasrec");
        // numbers stay numbers, negative ones too
        assert_eq!(csv_number(Some(-0.5)), "-0.5");
        let rows = vec![row("=cmd|calc", 1, (-0.25, None), None)];
        let csv = results_csv(&rows, &["hr@10"]);
        assert_eq!(
            csv.lines()
                .nth(1)
                .unwrap()
                .split(',')
                .take(5)
                .collect::<Vec<_>>(),
            ["\"'=cmd|calc\"", "distilled", "", "1", "-0.25"]
        );
    }

    #[test]
    fn csv_table_has_expected_cells() {
        let rows = vec![
            row("sasrec,kd", 3, (0.125, Some(0.5)), None),
            row("plain", 1, (0.25, None), Some(0.75)),
        ];
        let csv = csv_table(&rows, &["hr@10", "ndcg@10"]);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines[0],
            "label,group,n,hr@10_mean,hr@10_std,ndcg@10_mean,ndcg@10_std"
        );
        assert_eq!(lines[1], "\"sasrec,kd\",distilled,3,0.125,0.5,,");
        assert_eq!(lines[2], "plain,distilled,1,0.25,,0.75,");
        assert_eq!(lines.len(), 3);
    }

    fn bp(
        policy: &str,
        fraction: f64,
        rows: usize,
        metric: f64,
        spread: Option<f64>,
    ) -> BudgetPoint {
        BudgetPoint {
            policy: policy.into(),
            fraction,
            teacher_rows: rows,
            metric,
            spread,
            teacher_secs: None,
        }
    }

    #[test]
    fn budget_markdown_has_one_row_per_fraction_and_one_column_per_policy() {
        let points = vec![
            bp("random", 0.5, 500, 0.30, Some(0.01)),
            bp("random", 0.1, 100, 0.20, None),
            bp("entropy", 0.1, 100, 0.25, None),
            bp("entropy", 0.025, 25, 0.15, Some(0.02)),
            bp("random", 0.1 + 1e-12, 100, 0.99, None), // same budget, duplicate: ignored
        ];
        let md = budget_markdown(&points, "hr@10");
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(
            lines[0],
            "| budget (hr@10) | teacher rows | random | entropy |"
        );
        assert_eq!(lines[1], "|---:|---:|---:|---:|");
        assert_eq!(lines[2], "| 2.5% | 25 | - | 0.1500 ± 0.0200 |");
        assert_eq!(lines[3], "| 10% | 100 | 0.2000 | 0.2500 |");
        assert_eq!(lines[4], "| 50% | 500 | 0.3000 ± 0.0100 | - |");
        assert_eq!(lines.len(), 5, "one row per fraction:\n{md}");
        for l in &lines {
            assert_eq!(l.matches('|').count(), 5, "4 columns in {l:?}");
        }
    }

    #[test]
    fn budget_markdown_shows_row_range_when_policies_disagree() {
        let points = vec![bp("a", 0.2, 198, 0.1, None), bp("b", 0.2, 202, 0.1, None)];
        assert!(budget_markdown(&points, "m").contains("| 20% | 198–202 |"));
    }

    #[test]
    fn budget_csv_lists_every_point() {
        let points = vec![
            bp("random", 0.1, 100, 0.2, Some(0.01)),
            bp("top,k", 1.0, 1000, 0.3, None),
        ];
        assert_eq!(
            budget_csv(&points),
            "policy,fraction,teacher_rows,metric,spread\nrandom,0.1,100,0.2,0.01\n\"top,k\",1,1000,0.3,\n"
        );
    }

    #[test]
    fn percent_formatting() {
        assert_eq!(percent(0.1), "10%");
        assert_eq!(percent(0.025), "2.5%");
        assert_eq!(percent(1.0), "100%");
        assert_eq!(percent(0.0), "0%");
        assert_eq!(percent(0.333333), "33.33%");
    }
}
