//! Closed sets on the command line: an unknown name ends in one line naming
//! the option and the valid names (exit code 1, like every bad input), and
//! the files a run writes spell enums by their names, never as Rust Debug
//! strings.

mod common;

use common::*;

#[test]
fn unknown_names_on_the_command_line_list_the_valid_ones() {
    let d = tempfile::tempdir().unwrap();
    let out = s(d.path());
    clean_error(
        &[
            "data",
            "prepare",
            "--dataset",
            "synthetic",
            "--split",
            "random",
            "--out",
            out,
        ],
        &["--split 'random' is not one of leave_one_out, temporal, by_user"],
    );
    clean_error(
        &[
            "data",
            "prepare",
            "--dataset",
            "synthetic",
            "--dedup",
            "drop",
            "--out",
            out,
        ],
        &["--dedup 'drop' is not one of keep, drop_consecutive"],
    );
    clean_error(
        &["select", "--policy", "bald", "--data", out, "--out", out],
        &[
            "--policy 'bald' is not one of all, random, loss",
            "gt_error",
        ],
    );
    clean_error(
        &[
            "select", "--policy", "random", "--budget", "150%", "--data", out, "--out", out,
        ],
        &["--budget '150%'", "expected a fraction in (0, 1]"],
    );
    clean_error(
        &[
            "teacher",
            "from-files",
            "--data",
            out,
            "--topk",
            out,
            "--out",
            out,
            "--distance-kind",
            "cosine",
        ],
        &["--distance-kind 'cosine' is not one of neg_log_prob, l2, given, none"],
    );
    clean_error(
        &[
            "teacher",
            "from-files",
            "--data",
            out,
            "--topk",
            out,
            "--out",
            out,
            "--ids",
            "ext",
        ],
        &["--ids 'ext' is not one of internal, raw"],
    );
    clean_error(
        &["report", "--runs", out, "--metric", "auc@10", "--out", out],
        &["--metric 'auc@10'", "hr, ndcg, recall, mrr"],
    );
    clean_error(
        &["bench", "student", "--objective", "first"],
        &["--objective 'first' is not one of last, all_positions"],
    );
    // help lists the names
    let help = run(&["select", "--help"]);
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("least_confidence") && text.contains("gt_error"),
        "{text}"
    );
}

#[test]
fn a_selection_sidecar_and_a_resolved_config_have_no_debug_strings() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let prep = run(&[
        "data",
        "prepare",
        "--dataset",
        "synthetic",
        "--set",
        "dataset.synthetic.users=60",
        "--split",
        "leave_one_out",
        "--dedup",
        "keep",
        "--out",
        s(&data),
    ]);
    assert!(
        prep.status.success(),
        "{}",
        String::from_utf8_lossy(&prep.stderr)
    );
    let sel = d.path().join("sel.csv");
    let out = run(&[
        "select",
        "--policy",
        "random",
        "--budget",
        "25%",
        "--data",
        s(&data),
        "--out",
        s(&sel),
        "--set",
        "student.objective=all_positions",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(d.path().join("sel.csv.json")).unwrap();
    let meta: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(meta["policy"], "random");
    assert_eq!(meta["budget"], serde_json::json!({"fraction": 0.25}));
    assert_eq!(meta["objective"], "all_positions");
    for debug in ["Fraction(", "Count(", "Random", "AllPositions", "Some("] {
        assert!(!text.contains(debug), "{debug} in {text}");
    }
    // the prepared dataset's provenance spells its options by name
    let manifest = std::fs::read_to_string(data.join("dataset.json")).unwrap();
    assert!(
        manifest.contains("\"leave_one_out\"") && manifest.contains("\"keep\""),
        "{manifest}"
    );
    assert!(!manifest.contains("LeaveOneOut"), "{manifest}");
}
