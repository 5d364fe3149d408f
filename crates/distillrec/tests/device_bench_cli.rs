//! The binary's device option and `bench student`'s argument checks: bad
//! input ends in a one-line error, exit code 1 and no panic; the device a
//! run used is recorded in its `run.json`.

mod common;

use common::*;

#[test]
fn bench_student_refuses_zero_sizes_cleanly() {
    let base = [
        "bench", "student", "--steps", "1", "--items", "50", "--len", "4", "--batch", "2",
    ];
    for (flag, want) in [
        ("--items", "items = 0"),
        ("--len", "max_len"),
        ("--batch", "train.student.batch_size"),
    ] {
        let mut args: Vec<&str> = base.to_vec();
        let i = args.iter().position(|a| *a == flag).unwrap();
        args[i + 1] = "0";
        assert_clean_error(&run(&args), &[want]);
    }
}

#[test]
fn bench_distill_runs_the_distillation_step_and_checks_its_arguments() {
    let base = [
        "bench",
        "distill",
        "--steps",
        "1",
        "--items",
        "50",
        "--len",
        "4",
        "--batch",
        "3",
        "--hidden",
        "8",
        "--teacher-dim",
        "6",
    ];
    for objective in ["last", "all_positions"] {
        let mut args = base.to_vec();
        args.extend(["--objective", objective, "--set", "distill.alpha=0.5"]);
        let out = run(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let result = stdout.lines().find(|l| l.starts_with("RESULT ")).unwrap();
        for field in [
            "impl=distillrec".to_string(),
            format!("objective={objective}"),
            "k=10".into(),
            "teacher_dim=6".into(),
            "alpha=0.5".into(),
            "ms_per_step=".into(),
        ] {
            assert!(result.contains(&field), "{field} missing: {result}");
        }
    }
    // more candidates than items, and a key of no group
    let mut args = base.to_vec();
    args.extend(["--k", "51"]);
    assert_clean_error(&run(&args), &["k = 51"]);
    let mut args = base.to_vec();
    args.extend(["--set", "distill.lamda=1"]);
    assert_clean_error(&run(&args), &["lamda"]);
}

#[test]
fn bench_eval_ranks_every_row_of_the_split() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    ok(&[
        "data",
        "prepare",
        "--dataset",
        "synthetic",
        "--out",
        s(&data),
        "--set",
        "dataset.synthetic.users=60",
    ]);
    for split in ["test", "valid"] {
        let out = ok(&[
            "bench",
            "eval",
            "--data",
            s(&data),
            "--split",
            split,
            "--len",
            "8",
            "--hidden",
            "8",
            "--batch",
            "7",
        ]);
        let result = out.lines().find(|l| l.starts_with("RESULT ")).unwrap();
        for field in [
            "impl=distillrec",
            "bench=eval",
            "rows=60",
            "len=8",
            "batch=7",
            "hr@10=",
        ] {
            assert!(result.contains(field), "{field} missing: {result}");
        }
    }
    // a directory that is no prepared dataset
    assert_clean_error(
        &run(&["bench", "eval", "--data", s(d.path())]),
        &["dataset.json", "prepared dataset"],
    );
}

#[test]
fn bench_student_runs_the_training_step() {
    let out = run(&[
        "bench",
        "student",
        "--steps",
        "2",
        "--items",
        "50",
        "--len",
        "4",
        "--batch",
        "3",
        "--hidden",
        "8",
        "--objective",
        "all_positions",
        "--breakdown",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result = stdout.lines().find(|l| l.starts_with("RESULT ")).unwrap();
    for field in [
        "impl=distillrec",
        "objective=all_positions",
        "heads=1",
        "items=50",
        "len=4",
        "batch=3",
        "steps_per_s=",
        "ms_per_step=",
        "peak_rss_mb=",
    ] {
        assert!(result.contains(field), "{field} missing: {result}");
    }
    assert!(stdout.contains("breakdown ms/step: forward "), "{stdout}");
}

#[test]
fn every_model_command_documents_device() {
    for args in [
        &["train", "student", "--help"][..],
        &["eval", "student", "--help"],
        &["eval", "teacher", "--help"],
        &["train", "teacher", "--help"],
        &["teacher", "infer", "--help"],
        &["recommend", "--help"],
        &["teacher", "from-student", "--help"],
        &["select", "--help"],
        &["distill", "--help"],
        &["pipeline", "--help"],
        &["llm", "generate", "--help"],
        &["llm", "embed-items", "--help"],
        &["llm", "logits", "--help"],
        &["bench", "student", "--help"],
        &["bench", "llm", "--help"],
        &["bench", "distill", "--help"],
        &["bench", "eval", "--help"],
    ] {
        let out = run(args);
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("--device <cpu|cuda[:N]>"), "{args:?}: {text}");
    }
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_on_a_cpu_build_is_a_one_line_error_that_changes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let out_dir = d.path().join("run");
    let out = run(&[
        "train",
        "student",
        "--device",
        "cuda",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert_clean_error(
        &out,
        &["device cuda:0: built without CUDA support; rebuild with --features cuda"],
    );
    assert!(
        !out_dir.exists(),
        "a refused command must not create its run directory"
    );
    // the config key is refused the same way
    let cfg = d.path().join("gpu.toml");
    std::fs::write(&cfg, "device = \"cuda:1\"\n").unwrap();
    let out = run(&[
        "train",
        "student",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert_clean_error(&out, &["device cuda:1: built without CUDA support"]);
}

#[test]
fn run_json_records_the_device() {
    let d = tempfile::tempdir().unwrap();
    let out_dir = d.path().join("run");
    let out = run(&[
        "train",
        "student",
        "--device",
        "cpu",
        "--out",
        out_dir.to_str().unwrap(),
        "--set",
        "dataset.synthetic.users=60",
        "--set",
        "student.hidden=8",
        "--set",
        "student.max_len=8",
        "--set",
        "train.student.max_epochs=1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("run.json")).unwrap()).unwrap();
    assert_eq!(record["device"], "cpu", "{record}");
    let config = std::fs::read_to_string(out_dir.join("config.toml")).unwrap();
    assert!(config.contains("device = \"cpu\""), "{config}");
}
