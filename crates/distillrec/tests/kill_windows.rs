//! Issue 27 §1: resume is exact wherever the process dies. Each training
//! command (student, distillation, LLM teacher) is stopped right after each
//! of its file writes in turn (`DISTILLREC_KILL_AFTER_WRITES`, exit 137 with
//! no clean-up, as a SIGKILL), then re-run with the same arguments; every
//! re-run must end with the uninterrupted run's weights, best checkpoint,
//! per-epoch history and metrics, byte for byte (timings aside).

#[path = "../../distillrec-llm/tests/common/mod.rs"]
#[allow(unused_imports)]
mod tiny;

mod common;

use std::path::Path;

use common::*;

/// Most writes a tested command makes; a higher count means the hook or the
/// loop is broken.
const MAX_WRITES: usize = 200;

/// Epochs and batches of the student and distillation runs: three epochs
/// that never stop early.
const EPOCHS: &[&str] = &[
    "--set",
    "train.student.max_epochs=3",
    "--set",
    "train.student.patience=5",
    "--set",
    "train.distill.max_epochs=3",
    "--set",
    "train.distill.patience=5",
    "--set",
    "train.student.batch_size=64",
    "--set",
    "train.distill.batch_size=64",
];

/// A JSON file's member `key`.
fn json_member(path: &Path, key: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v[key].clone()
}

/// `history.csv` without its wall-time columns (`*_secs`, `tokens_per_sec`).
fn history_without_timings(dir: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(dir.join("history.csv")).unwrap();
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split(',').collect()).collect();
    let keep: Vec<bool> = rows[0]
        .iter()
        .map(|c| !c.ends_with("_secs") && *c != "tokens_per_sec")
        .collect();
    rows.iter()
        .map(|row| {
            row.iter()
                .zip(&keep)
                .filter(|(_, k)| **k)
                .map(|(c, _)| c.to_string())
                .collect()
        })
        .collect()
}

/// What must be equal between a resumed and an uninterrupted run in `dir`.
fn outcome(dir: &Path, files: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = files
        .iter()
        .map(|f| {
            let bytes = std::fs::read(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
            format!("{f}: {}", digest(&bytes))
        })
        .collect();
    for k in ["valid", "test"] {
        out.push(format!(
            "{k}: {}",
            json_member(&dir.join("metrics.json"), k)
        ));
    }
    out.push(format!("history: {:?}", history_without_timings(dir)));
    out
}

/// A short digest of `bytes` for readable assertion messages.
fn digest(bytes: &[u8]) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    format!("{:016x} ({} bytes)", h.finish(), bytes.len())
}

/// Runs `args` (whose `--out` is `out`) once uninterrupted, then, for every
/// n, killed after its n-th write and re-run; every re-run must end with
/// the same [`outcome`]. Returns the number of kill points tried.
fn every_kill_point(args: &[&str], out: &Path, files: &[&str]) -> usize {
    ok(args);
    let want = outcome(out, files);
    for n in 1..=MAX_WRITES {
        std::fs::remove_dir_all(out).unwrap();
        let killed = bin()
            .args(args)
            .env("DISTILLREC_KILL_AFTER_WRITES", n.to_string())
            .output()
            .unwrap();
        if killed.status.success() {
            assert!(n > 5, "only {} writes: the hook is not reached", n - 1);
            return n - 1;
        }
        assert_eq!(
            killed.status.code(),
            Some(137),
            "write {n}: {}",
            String::from_utf8_lossy(&killed.stderr)
        );
        let resumed = run(args);
        assert!(
            resumed.status.success(),
            "re-run after a kill at write {n} failed: {}",
            String::from_utf8_lossy(&resumed.stderr)
        );
        assert_eq!(
            outcome(out, files),
            want,
            "a kill after write {n} changed the result"
        );
    }
    panic!("more than {MAX_WRITES} writes");
}

#[test]
fn student_and_distillation_resume_exactly_after_a_kill_at_every_write() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    prepare_synthetic(&data, 60, "1");
    let student = d.path().join("student");
    let args = train_small_args(&data, &student, EPOCHS);
    let files = ["checkpoints/best.safetensors", "checkpoints/best.json"];
    let n = every_kill_point(&args, &student, &files);
    // 3 epochs of best (2 files, at most), history, last (2), state
    assert!(n >= 3 * 4, "{n} kill points");

    let cache = d.path().join("cache");
    cache_from_student(&student.join("checkpoints/best.safetensors"), &data, &cache);
    let distilled = d.path().join("distilled");
    let mut args = vec![
        "distill",
        "--teacher-cache",
        s(&cache),
        "--data",
        s(&data),
        "--out",
        s(&distilled),
    ];
    args.extend_from_slice(SMALL_STUDENT);
    args.extend_from_slice(EPOCHS);
    let n = every_kill_point(&args, &distilled, &files);
    assert!(n >= 3 * 4, "{n} kill points");
}

#[test]
fn the_teacher_resumes_exactly_after_a_kill_at_every_write() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    prepare_synthetic(&data, 60, "1");
    let student = d.path().join("student");
    ok(&train_small_args(&data, &student, EPOCHS));
    let ckpt = student.join("checkpoints/best.safetensors");
    let cfg = tiny::llama_config("llama", 2, false);
    let backbone = d.path().join("backbone");
    tiny::write_hf_dir(&backbone, &cfg, &tiny::random_weights(&cfg, 3));
    let teacher = d.path().join("teacher");
    let mut args = train_teacher_args(&data, &ckpt, &backbone, &teacher);
    args.extend_from_slice(&[
        "--set",
        "train.teacher.max_epochs=2",
        "--set",
        "train.teacher.patience=5",
    ]);
    // the manifests hold each epoch's wall time: compare the weights
    let n = every_kill_point(&args, &teacher, &["checkpoints/best.safetensors"]);
    assert!(n >= 2 * 4, "{n} kill points");
}
