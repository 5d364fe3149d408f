//! Issue 27 §4 and §6 at the command line: a sweep says what it will do
//! before it does it, and a report is what it looks like (no run counted
//! twice, impossible numbers left out with a warning, labels escaped,
//! long labels handled in linear time).

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::*;

/// A finished student run in `dir` with test `metrics` (JSON object text)
/// and, if given, a `history.csv`.
fn write_run(dir: &Path, metrics: &str, history: Option<&str>) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let record = r#"{"command": ["distillrec", "train", "student"], "kind": "student",
        "status": "ok", "seed": 1, "wall_secs": 2.5}"#;
    std::fs::write(dir.join("run.json"), record).unwrap();
    std::fs::write(
        dir.join("metrics.json"),
        format!("{{\"valid\": {{}}, \"test\": {metrics}}}"),
    )
    .unwrap();
    if let Some(h) = history {
        std::fs::write(dir.join("history.csv"), h).unwrap();
    }
    dir.to_path_buf()
}

const GOOD: &str = r#"{"hr@10": 0.5, "ndcg@10": 0.25}"#;

#[test]
fn a_sweep_over_max_runs_is_refused_with_its_counts_and_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("sweep");
    let args = [
        "sweep",
        "--out",
        s(&out),
        "--grid",
        "distill.lambda=0.1,0.2,0.3",
        "--grid",
        "train.student.lr=0.001,0.01",
        "--seeds",
        "1,2",
        "--max-runs",
        "11",
    ];
    clean_error(
        &args,
        "the sweep has 6 settings × 2 seeds = 12 runs, more than --max-runs 11",
    );
    assert!(!out.exists(), "a refused sweep wrote {}", out.display());
    // the default limit is 1,000: 10 × 10 × 10 settings × 2 seeds is refused
    let ten = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0";
    let (a, b, c) = (
        format!("distill.lambda={ten}"),
        format!("distill.tau={ten}"),
        format!("distill.ed_weight={ten}"),
    );
    clean_error(
        &[
            "sweep",
            "--out",
            s(&out),
            "--grid",
            &a,
            "--grid",
            &b,
            "--grid",
            &c,
            "--seeds",
            "1,2",
        ],
        "= 2000 runs, more than --max-runs 1000",
    );
    assert!(!out.exists());
}

#[test]
fn a_run_given_twice_is_refused_and_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let run = write_run(&d.path().join("runs/a-s1"), GOOD, None);
    let out = d.path().join("report");
    let other = d.path().join("runs/../runs/a-s1");
    let first = format!("x={}", s(&run));
    let second = format!("y={}", s(&other));
    clean_error(
        &["report", "--runs", &first, &second, "--out", s(&out)],
        &[
            s(&other),
            "the run is given twice (as `x` and `y`), so it would count as two seeds",
        ],
    );
    clean_error(
        &["report", "--runs", s(&run), s(&run), "--out", s(&out)],
        "the run is given twice (as `a` and `a`)",
    );
    assert!(!out.exists());
}

#[test]
fn labels_are_escaped_in_report_md_and_csv_cells_cannot_be_formulas() {
    let d = tempfile::tempdir().unwrap();
    let a = write_run(&d.path().join("a"), GOOD, None);
    let b = write_run(&d.path().join("b"), GOOD, None);
    let out = d.path().join("report");
    let script = format!("<script>alert(1)</script>={}", s(&a));
    let formula = format!("=cmd|calc={}", s(&b));
    ok(&["report", "--runs", &script, &formula, "--out", s(&out)]);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(!md.contains("<script>"), "{md}");
    assert!(
        md.contains("| &lt;script&gt;alert\\(1\\)&lt;/script&gt; | 1 |"),
        "{md}"
    );
    assert!(md.contains("| =cmd\\|calc | 1 |"), "{md}");
    for csv in ["results.csv", "models.csv"] {
        let text = std::fs::read_to_string(out.join(csv)).unwrap();
        let line = text.lines().nth(2).unwrap();
        assert!(line.starts_with("\"'=cmd|calc\","), "{csv}: {line}");
        assert!(text
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("<script>alert(1)</script>,"));
    }
}

#[test]
fn impossible_metrics_are_warned_about_and_left_out() {
    let d = tempfile::tempdir().unwrap();
    let good = write_run(
        &d.path().join("m-s1"),
        GOOD,
        Some("epoch,train_loss,valid_ndcg@10\n1,6.0,0.5\n"),
    );
    let bad = write_run(
        &d.path().join("m-s2"),
        r#"{"hr@10": -5, "ndcg@10": 1e308}"#,
        Some("epoch,train_loss,valid_ndcg@10\n1,inf,0.75\n"),
    );
    let out = d.path().join("report");
    let r = run(&["report", "--runs", s(&good), s(&bad), "--out", s(&out)]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{stderr}");
    let warnings: Vec<&str> = stderr.lines().filter(|l| !l.is_empty()).collect();
    let m = bad.join("metrics.json").display().to_string();
    let h = bad.join("history.csv").display().to_string();
    assert_eq!(
        warnings,
        [
            format!("warning: {m}: test: `hr@10` = -5 is not in [0, 1]; left out of the report"),
            format!("warning: {m}: test: `ndcg@10` = 1e308 is not in [0, 1]; left out of the report"),
            format!("warning: {h}: column `train_loss`: inf at epoch 1 is not finite and at least 0; left out of the report"),
        ]
    );
    // two seeds, the means from the one in-range run
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let row = csv.lines().nth(1).unwrap();
    assert!(row.starts_with("m,baseline,student,2,0.5,,"), "{row}");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("## Left out"), "{md}");
    // the validation curve is still drawn from both runs
    assert!(out.join("learning_curves.svg").exists());
}

#[test]
fn a_100000_character_label_is_handled_in_well_under_a_second() {
    // (one argument holds at most 128 KiB; the report crate's own test
    // takes a 200,000-character label)
    let d = tempfile::tempdir().unwrap();
    let a = write_run(&d.path().join("a"), GOOD, None);
    let spec = format!("{}={}", "x".repeat(100_000), s(&a));
    let t = Instant::now();
    ok(&[
        "report",
        "--runs",
        &spec,
        "--out",
        s(&d.path().join("report")),
    ]);
    // quadratic, 10,000 characters took 10 s and 100,000 timed out
    assert!(t.elapsed().as_secs_f64() < 5.0, "{:?}", t.elapsed());
}
