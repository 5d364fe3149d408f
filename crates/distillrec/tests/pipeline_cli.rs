//! `pipeline` end to end on a tiny random-weight backbone: every stage runs
//! once; a second run skips them all; changing a distillation key re-runs
//! distillation and the report only; a pipeline killed during teacher
//! training continues the teacher from its last epoch without redoing the
//! stages before it.

#[path = "../../distillrec-llm/tests/common/mod.rs"]
#[allow(unused_imports)]
mod tiny;

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// The pipeline's arguments: the tiny preset, a random selection of 40 rows,
/// one-epoch student and distillation, and `extra` overrides.
fn pipeline_args(backbone: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "pipeline",
        "--config",
        TINY_TEACHER,
        "--out",
        s(out),
        "--set",
        &format!("teacher.backbone={}", backbone.display()),
        "--set",
        "selection.policy=random",
        "--set",
        "selection.budget=40",
        "--set",
        "train.distill.max_epochs=1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for e in extra {
        a.push("--set".into());
        a.push(e.to_string());
    }
    a
}

/// Stage directories of a sweep's store whose name starts with `prefix`.
fn stage_dirs(stages: &Path, prefix: &str) -> usize {
    std::fs::read_dir(stages)
        .unwrap()
        .filter(|e| {
            let e = e.as_ref().unwrap();
            e.path().is_dir() && e.file_name().to_string_lossy().starts_with(prefix)
        })
        .count()
}

fn run_pipeline(backbone: &Path, out: &Path, extra: &[&str]) -> String {
    let a = pipeline_args(backbone, out, extra);
    ok(&a.iter().map(String::as_str).collect::<Vec<_>>())
}

/// (stage, skipped) from `pipeline.json`.
fn stages(out: &Path) -> Vec<(String, bool)> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("pipeline.json")).unwrap()).unwrap();
    v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["skipped"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn ran(out: &Path) -> Vec<String> {
    stages(out)
        .into_iter()
        .filter(|(_, skipped)| !skipped)
        .map(|(n, _)| n)
        .collect()
}

fn backbone(dir: &Path) -> std::path::PathBuf {
    let cfg = tiny::llama_config("llama", 2, false);
    let b = dir.join("backbone");
    tiny::write_hf_dir(&b, &cfg, &tiny::random_weights(&cfg, 3));
    b
}

const ALL: [&str; 9] = [
    "data",
    "popularity",
    "student",
    "student-converged",
    "selection",
    "teacher",
    "cache",
    "distill",
    "report",
];

#[test]
fn stages_run_once_and_a_changed_key_reruns_only_what_depends_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let b = backbone(dir.path());
    let out = dir.path().join("p");
    let text = run_pipeline(&b, &out, &[]);
    assert_eq!(ran(&out), ALL);
    for label in [
        "popularity",
        "sasrec",
        "sasrec, converged",
        "iLoRA teacher",
        "sasrec + DLLM2Rec",
    ] {
        assert!(text.contains(&format!("| {label} |")), "{label}: {text}");
    }
    let report = std::fs::read_to_string(out.join("report/report.md")).unwrap();
    assert!(report.contains("| iLoRA teacher |"), "{report}");
    // the distillation learnt from the 40 selected rows' teacher cache
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("distill/run.json")).unwrap())
            .unwrap();
    assert_eq!(rec["kind"], "distilled");
    assert_eq!(rec["costs"]["distill.teacher"]["teacher_rows"], 40);
    let teacher_metrics = std::fs::read(out.join("teacher/metrics.json")).unwrap();

    // --json: the same metrics as the run recorded, and machine-readable top items
    let ckpt = out.join("student/checkpoints/best.safetensors");
    let shown: serde_json::Value = serde_json::from_str(&ok(&[
        "eval",
        "student",
        "--config",
        TINY_TEACHER,
        "--checkpoint",
        s(&ckpt),
        "--data",
        s(&out.join("data")),
        "--json",
    ]))
    .unwrap();
    let recorded: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("student/metrics.json")).unwrap())
            .unwrap();
    assert_eq!(shown["test"], recorded["test"]);
    assert_eq!(shown["model"], "sasrec");
    let rec: serde_json::Value = serde_json::from_str(&ok(&[
        "recommend",
        "--checkpoint",
        s(&ckpt),
        "--history",
        "1,2",
        "--top",
        "3",
        "--json",
    ]))
    .unwrap();
    let items = rec["recommendations"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    for (i, it) in items.iter().enumerate() {
        assert_eq!(it["rank"], i + 1);
        assert!(it["raw_id"] != "1" && it["raw_id"] != "2", "{rec}");
    }
    assert_eq!(rec["history"].as_array().unwrap().len(), 2);

    run_pipeline(&b, &out, &[]);
    assert!(ran(&out).is_empty(), "{:?}", stages(&out));

    run_pipeline(&b, &out, &["distill.lambda=0.3"]);
    assert_eq!(ran(&out), ["distill", "report"]);
    assert_eq!(
        std::fs::read(out.join("teacher/metrics.json")).unwrap(),
        teacher_metrics
    );
    let cfg = std::fs::read_to_string(out.join("distill/config.toml")).unwrap();
    assert!(cfg.contains("lambda = 0.3"), "{cfg}");

    // a changed selection re-runs the LLM stages and everything after them
    run_pipeline(&b, &out, &["distill.lambda=0.3", "selection.budget=30"]);
    assert_eq!(
        ran(&out),
        ["selection", "teacher", "cache", "distill", "report"]
    );

    // a finished stage whose output changed is not skipped: it runs again,
    // and so does every stage after it, with one line that says why
    let extra = ["distill.lambda=0.3", "selection.budget=30"];
    let rerun = |out: &Path| {
        let a = pipeline_args(&b, out, &extra);
        let r = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        String::from_utf8_lossy(&r.stderr).into_owned()
    };
    let best = out.join("student/checkpoints/best.safetensors");
    let good = std::fs::read(&best).unwrap();
    let mut bad = good.clone();
    *bad.last_mut().unwrap() ^= 1;
    std::fs::write(&best, &bad).unwrap();
    let said = rerun(&out);
    assert!(
        said.contains("stage `student` finished earlier, but")
            && said.contains("best.safetensors changed"),
        "{said}"
    );
    assert_eq!(
        ran(&out),
        [
            "student",
            "student-converged",
            "selection",
            "teacher",
            "cache",
            "distill",
            "report"
        ]
    );
    assert_eq!(std::fs::read(&best).unwrap(), good, "retrained the same");
    std::fs::remove_dir_all(out.join("teacher")).unwrap();
    let said = rerun(&out);
    assert!(said.contains("is missing"), "{said}");
    assert_eq!(ran(&out), ["teacher", "cache", "distill", "report"]);
    rerun(&out);
    assert!(ran(&out).is_empty(), "{:?}", stages(&out));
}

#[test]
fn a_pipeline_killed_in_teacher_training_continues_the_teacher() {
    let dir = tempfile::tempdir().unwrap();
    let b = backbone(dir.path());
    let out = dir.path().join("p");
    // many short epochs that never stop early: room to kill between them
    let extra = ["train.teacher.max_epochs=60", "train.teacher.patience=100"];
    let a = pipeline_args(&b, &out, &extra);
    let mut child = bin()
        .env("RUST_LOG", "info")
        .args(&a)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let state = out.join("teacher/checkpoints/state.json");
    let t = Instant::now();
    while !state.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "no teacher epoch after 300 s"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the pipeline ended before the teacher finished an epoch"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // each stage's run.log holds its own events, pipeline.log all of them
    let log = |p: &str| std::fs::read_to_string(out.join(p)).unwrap();
    assert!(log("student/run.log").contains("epoch done"));
    assert!(!log("popularity/run.log").contains("epoch done"));
    assert!(log("pipeline.log").contains("epoch done"));
    assert!(
        !log("pipeline.log").contains('\x1b'),
        "colour codes in the log"
    );
    let mark = std::fs::read_to_string(out.join("stages/teacher.json")).unwrap();
    assert!(mark.contains("\"running\""), "{mark}");
    let student_ckpt = std::fs::read(out.join("student/checkpoints/best.safetensors")).unwrap();

    // the run continues where it was moved to: stages are keyed by content
    let moved = dir.path().join("moved");
    std::fs::rename(&out, &moved).unwrap();
    let out = moved;
    run_pipeline(&b, &out, &extra);
    let st = stages(&out);
    for (name, skipped) in &st {
        let before_teacher = [
            "data",
            "popularity",
            "student",
            "student-converged",
            "selection",
        ]
        .contains(&name.as_str());
        assert_eq!(*skipped, before_teacher, "{st:?}");
    }
    assert_eq!(
        std::fs::read(out.join("student/checkpoints/best.safetensors")).unwrap(),
        student_ckpt
    );
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("teacher/run.json")).unwrap())
            .unwrap();
    let resumed = rec["costs"]["teacher.train"]["resumed_after"]
        .as_u64()
        .unwrap_or(0);
    assert!(resumed >= 1, "the teacher started over: {rec}");
    assert_eq!(rec["status"], "ok");
}

#[test]
fn a_sweep_shares_one_teacher_and_reports_mean_and_spread_per_setting() {
    let dir = tempfile::tempdir().unwrap();
    let b = backbone(dir.path());
    let out = dir.path().join("sweep");
    let mut a = pipeline_args(&b, &out, &[]);
    a[0] = "sweep".into();
    // a comma-valued --set is swept like --grid; a list value is not
    a.extend(
        [
            "--set",
            "distill.lambda=0.3,0.6",
            "--set",
            "eval.ks=[5,10]",
            "--seeds",
            "1,2",
        ]
        .map(String::from),
    );
    let args: Vec<&str> = a.iter().map(String::as_str).collect();
    let first = run(&args);
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{stderr}");
    let stages = out.join("stages");
    // the count line, printed before the sweep ran, names every stage directory
    let dirs = std::fs::read_dir(&stages)
        .unwrap()
        .filter(|e| {
            let e = e.as_ref().unwrap();
            e.path().is_dir() && e.file_name() != "marks"
        })
        .count();
    let line = format!("sweep: 2 settings × 2 seeds = 4 runs, {dirs} distinct stages");
    assert!(
        stderr.lines().any(|l| l == line),
        "{line:?} not in {stderr}"
    );
    let count = |prefix: &str| stage_dirs(&stages, prefix);
    // one teacher and one cache for all four runs; the two student seeds
    // (each also trained to convergence) plus the run seed's student that
    // feeds the teacher; a distillation per run
    assert_eq!(count("teacher-"), 1);
    assert_eq!(count("cache-"), 1);
    assert_eq!(count("student-"), 5);
    assert_eq!(count("distill-"), 4);
    let csv = std::fs::read_to_string(out.join("report/models.csv")).unwrap();
    let row = |label: &str| {
        csv.lines()
            .find(|l| l.starts_with(&format!("{label},")))
            .unwrap_or_else(|| panic!("no row {label} in {csv}"))
            .to_string()
    };
    for label in [
        "sasrec",
        "\"sasrec + DLLM2Rec [lambda=0.3]\"",
        "\"sasrec + DLLM2Rec [lambda=0.6]\"",
    ] {
        let r = row(label.trim_matches('"'));
        assert!(r.contains(",2,"), "{label}: two seeds expected in {r}");
    }
    // all done: a second sweep runs nothing
    let text = ok(&args);
    assert_eq!(text.matches("0 stages run").count(), 4, "{text}");
}

#[test]
fn a_sweep_over_active_rounds_shares_the_teacher_and_runs_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let b = backbone(dir.path());
    let out = dir.path().join("sweep");
    let mut a = pipeline_args(&b, &out, &[]);
    a[0] = "sweep".into();
    a.extend(["--grid", "active.rounds=1,2"].map(String::from));
    let args: Vec<&str> = a.iter().map(String::as_str).collect();
    ok(&args);
    let stages = out.join("stages");
    let count = |prefix: &str| stage_dirs(&stages, prefix);
    // one teacher for both settings; one round is the one-shot cache and
    // distillation, two rounds are two round stages
    assert_eq!(count("teacher-"), 1);
    assert_eq!(count("cache-"), 1);
    assert_eq!(count("distill-"), 1);
    assert_eq!(count("round-"), 2);
    // the two rounds label the selection's 40 rows between them, each only
    // rows the other did not
    let mut keys = std::collections::BTreeSet::new();
    let mut labelled = 0;
    for e in std::fs::read_dir(&stages).unwrap() {
        let p = e.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("round-")
        {
            let text = std::fs::read_to_string(p.join("labels/keys.txt")).unwrap();
            for k in text.lines() {
                assert!(keys.insert(k.to_string()), "{k} labelled twice");
            }
            let r: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(p.join("round.json")).unwrap())
                    .unwrap();
            labelled = labelled.max(r["labelled_rows"].as_u64().unwrap());
        }
    }
    assert_eq!((keys.len(), labelled), (40, 40));
    let csv = std::fs::read_to_string(out.join("report/models.csv")).unwrap();
    assert!(csv.contains("round 2/2"), "{csv}");
}

#[test]
fn a_refused_pipeline_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("p");
    let missing = dir.path().join("no-such-model.gguf");
    let a = pipeline_args(&missing, &out, &[]);
    let r = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_clean_error(&r, "teacher.backbone");
    let a = pipeline_args(&missing, &out, &["selection.policy=kl"]);
    let r = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_clean_error(&r, "selection.policy");
    assert!(
        !out.exists(),
        "a refused pipeline created {}",
        out.display()
    );
}
