//! Helpers shared by the binary's integration tests: run the binary, expect
//! success, expect a clean one-line error.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The binary under test, with warnings-only logging.
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_distillrec"));
    c.env("RUST_LOG", "warn");
    c
}

/// Runs the binary with `args`.
pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("binary runs")
}

/// Runs the binary, asserts success, returns stdout.
pub fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A path as `&str` (test paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// One expected substring or several.
pub trait Wants {
    /// The substrings.
    fn list(&self) -> Vec<&str>;
}

impl Wants for &str {
    fn list(&self) -> Vec<&str> {
        vec![self]
    }
}

impl Wants for &[&str] {
    fn list(&self) -> Vec<&str> {
        self.to_vec()
    }
}

impl<const N: usize> Wants for &[&str; N] {
    fn list(&self) -> Vec<&str> {
        self.to_vec()
    }
}

/// Asserts a clean failure: exit code 1, no panic, one `error:` line that
/// contains every wanted string, and nothing else on stderr but `warning:`
/// lines (unread `--set` keys).
pub fn assert_clean_error(out: &Output, want: impl Wants) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let errors: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "want one error line, got: {stderr}");
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("error: ") || l.starts_with("warning: ")),
        "want only the error line (and warnings), got: {stderr}"
    );
    for w in want.list() {
        assert!(errors[0].contains(w), "want '{w}' in: {stderr}");
    }
}

/// Runs the binary with `args` and asserts a clean failure.
pub fn clean_error(args: &[&str], want: impl Wants) {
    assert_clean_error(&run(args), want);
}

/// Every file under `dir` with its bytes, sorted by path (lock files aside).
pub fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else if e.file_name() != ".distillrec.lock" {
                out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// The small student the CLI tests train (16 wide, one layer, windows of
/// 10): a run takes about a second.
pub const SMALL_STUDENT: &[&str] = &[
    "--set",
    "student.hidden=16",
    "--set",
    "student.layers=1",
    "--set",
    "student.max_len=10",
];

/// Two epochs of student training and distillation, batches of 64 (with
/// [`SMALL_STUDENT`]).
pub const TWO_EPOCHS: &[&str] = &[
    "--set",
    "train.student.max_epochs=2",
    "--set",
    "train.distill.max_epochs=2",
    "--set",
    "train.student.batch_size=64",
    "--set",
    "train.distill.batch_size=64",
];

/// The arguments of `data prepare` for the built-in synthetic data set with
/// `users` users, split with `seed`, into `out`.
pub fn prepare_args(out: &Path, users: usize, seed: &str) -> Vec<String> {
    [
        "data",
        "prepare",
        "--dataset",
        "synthetic",
        "--set",
        &format!("dataset.synthetic.users={users}"),
        "--seed",
        seed,
        "--out",
        s(out),
    ]
    .iter()
    .map(|x| x.to_string())
    .collect()
}

/// Prepares the synthetic data set ([`prepare_args`]), asserting success.
pub fn prepare_synthetic(out: &Path, users: usize, seed: &str) {
    let a = prepare_args(out, users, seed);
    ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
}

/// The arguments of `train student` for [`SMALL_STUDENT`] on `data` into
/// `out`, then `extra`.
pub fn train_small_args<'a>(data: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["train", "student", "--data", s(data), "--out", s(out)];
    a.extend_from_slice(SMALL_STUDENT);
    a.extend_from_slice(extra);
    a
}

/// The tiny teacher preset (short prompts, small adapters, one epoch) the
/// LLM teacher tests train on a random-weight backbone.
pub const TINY_TEACHER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../configs/synthetic-teacher-tiny.toml"
);

/// The arguments of `train teacher` with [`TINY_TEACHER`] on `data`, the
/// frozen `student` checkpoint and `backbone`, into `out`.
pub fn train_teacher_args<'a>(
    data: &'a Path,
    student: &'a Path,
    backbone: &'a Path,
    out: &'a Path,
) -> Vec<&'a str> {
    vec![
        "train",
        "teacher",
        "--config",
        TINY_TEACHER,
        "--data",
        s(data),
        "--student",
        s(student),
        "--backbone",
        s(backbone),
        "--out",
        s(out),
    ]
}

/// Trains the [`SMALL_STUDENT`] for one epoch on `data` into `out` and
/// returns its best checkpoint: the frozen student of the LLM teacher tests.
pub fn one_epoch_student(data: &Path, out: &Path) -> PathBuf {
    let mut a = train_small_args(data, out, &["--set", "train.student.max_epochs=1"]);
    a.push("--set");
    a.push("seed=42");
    ok(&a);
    out.join("checkpoints/best.safetensors")
}

/// `select --policy random --budget <rows>` on `data` with `student` into
/// the selection file `out`, asserting success.
pub fn random_selection(data: &Path, student: &Path, rows: usize, out: &Path) {
    let rows = rows.to_string();
    ok(&[
        "select",
        "--policy",
        "random",
        "--budget",
        &rows,
        "--data",
        s(data),
        "--student",
        s(student),
        "--out",
        s(out),
    ]);
}

/// Builds the teacher cache of the student checkpoint `ckpt` on `data` into
/// `out` (`teacher from-student`), asserting success.
pub fn cache_from_student(ckpt: &Path, data: &Path, out: &Path) {
    ok(&[
        "teacher",
        "from-student",
        "--checkpoint",
        s(ckpt),
        "--data",
        s(data),
        "--out",
        s(out),
    ]);
}
