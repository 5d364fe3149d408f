//! Regression tests of issue 10's findings through the binary: selection
//! policies and files that were accepted wrongly, and run directories that a
//! refused or concurrent command could spoil.

mod common;

use std::process::{Command, Output};

use std::path::Path;

use common::*;

const SMALL: &[&str] = &[
    "--set",
    "student.hidden=16",
    "--set",
    "student.layers=1",
    "--set",
    "student.max_len=10",
    "--set",
    "train.student.max_epochs=2",
    "--set",
    "train.distill.max_epochs=1",
    "--set",
    "train.student.batch_size=64",
    "--set",
    "train.distill.batch_size=64",
];

fn prepare(dir: &Path, seed: &str) {
    ok(&[
        "data",
        "prepare",
        "--dataset",
        "synthetic",
        "--set",
        "dataset.synthetic.users=120",
        "--seed",
        seed,
        "--out",
        s(dir),
    ]);
}

fn train(data: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["train", "student", "--data", s(data), "--out", s(out)];
    args.extend_from_slice(SMALL);
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn selections_coreset_budgets_and_thresholds() {
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n);
    let (data, other) = (p("data"), p("other"));
    prepare(&data, "1");
    prepare(&other, "2");
    assert!(train(&data, &p("student"), &[]).status.success());
    let ckpt = p("student/checkpoints/best.safetensors");
    let select = |policy: &str, budget: &str, out: &Path, data: &Path| -> Vec<String> {
        let mut v = vec!["select", "--policy", policy, "--budget", budget];
        if policy != "random" {
            v.extend(["--student", s(&ckpt)]);
        }
        v.extend(["--data", s(data), "--out", s(out)]);
        v.into_iter().map(String::from).collect()
    };
    let call = |v: Vec<String>| run(&v.iter().map(String::as_str).collect::<Vec<_>>());

    // coreset works on valid data and records finite scores
    let sel = p("coreset.csv");
    let out = call(select("coreset", "25%", &sel, &data));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&sel).unwrap();
    assert!(text.lines().count() > 2);
    for line in text.lines().skip(1) {
        let score: f64 = line.rsplit(',').next().unwrap().parse().unwrap();
        assert!(score.is_finite(), "{line}");
    }
    // the sidecar records the budget as a value, not a Rust debug string
    let meta = std::fs::read_to_string(p("coreset.csv.json")).unwrap();
    assert!(meta.contains("\"fraction\": 0.25"), "{meta}");

    // a bare 1 is ambiguous; 100% and 1.0 are not
    let bad = call(select("random", "1", &p("one.csv"), &data));
    assert_eq!(bad.status.code(), Some(1));
    let e = String::from_utf8_lossy(&bad.stderr);
    assert!(e.contains("ambiguous") && e.contains("100%"), "{e}");
    assert!(!p("one.csv").exists());
    assert!(call(select("random", "100%", &p("all.csv"), &data))
        .status
        .success());

    // a NaN threshold is refused
    let mut nan = select("gt_error", "50%", &p("nan.csv"), &data);
    nan.extend(["--threshold".to_string(), "NaN".to_string()]);
    let bad = call(nan);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("threshold is NaN"));

    // a cache for the distillation checks
    let cache = p("cache");
    ok(&[
        "teacher",
        "from-student",
        "--checkpoint",
        s(&ckpt),
        "--data",
        s(&data),
        "--out",
        s(&cache),
    ]);
    let distill = |sel: &Path, out: &Path| {
        let mut a = vec![
            "distill",
            "--data",
            s(&data),
            "--teacher-cache",
            s(&cache),
            "--selection",
            s(sel),
            "--out",
            s(out),
        ];
        a.extend_from_slice(SMALL);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    // a selection made for another dataset
    let foreign = p("foreign.csv");
    assert!(call(select("random", "25%", &foreign, &other))
        .status
        .success());
    let out = call(distill(&foreign, &p("d1")));
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("foreign.csv.json") && e.contains("was made for dataset"),
        "{e}"
    );
    assert!(
        !p("d1").exists(),
        "a refused command leaves no run directory"
    );

    // cut short against its sidecar
    let short = p("short.csv");
    let text = std::fs::read_to_string(&sel).unwrap();
    let kept: Vec<&str> = text.lines().take(3).collect();
    std::fs::write(&short, kept.join("\n") + "\n").unwrap();
    std::fs::copy(p("coreset.csv.json"), p("short.csv.json")).unwrap();
    let out = call(distill(&short, &p("d2")));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("2 selected rows") && e.contains("records"),
        "{e}"
    );

    // keys that are not training rows
    let unknown = p("unknown.csv");
    std::fs::write(&unknown, "key,score\nnot-a-row:1,\n").unwrap();
    let out = call(distill(&unknown, &p("d3")));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("unknown.csv:2:") && e.contains("is not a training row"),
        "{e}"
    );
}

#[test]
fn refused_reruns_change_nothing_and_name_the_keys() {
    let d = tempfile::tempdir().unwrap();
    let (data, out) = (d.path().join("data"), d.path().join("run"));
    prepare(&data, "1");
    assert!(train(&data, &out, &[]).status.success());
    let before = snapshot(&out);
    let args: Vec<String> = ["train", "student", "--data", s(&data), "--out", s(&out)]
        .into_iter()
        .chain(SMALL.iter().copied())
        .chain(["--set", "student.hidden=32", "--set", "seed=7"])
        .map(String::from)
        .collect();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    clean_error(&refs, "keys differ: seed, student.hidden");
    assert_eq!(
        snapshot(&out),
        before,
        "the refused command changed the run"
    );

    // a run whose process died is marked interrupted by the next command
    let rj = out.join("run.json");
    let text = std::fs::read_to_string(&rj).unwrap();
    std::fs::write(
        &rj,
        text.replace("\"status\": \"ok\"", "\"status\": \"running\""),
    )
    .unwrap();
    clean_error(&refs, "different config");
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&rj).unwrap()).unwrap();
    assert_eq!(rec["status"], "interrupted");
}

#[test]
fn a_locked_run_directory_is_refused_naming_the_holder() {
    let d = tempfile::tempdir().unwrap();
    let (data, out) = (d.path().join("data"), d.path().join("run"));
    prepare(&data, "1");
    std::fs::create_dir_all(&out).unwrap();
    // another process holds the lock: this test process, with its pid inside
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out.join(".distillrec.lock"))
        .unwrap();
    lock.try_lock().unwrap();
    std::fs::write(
        out.join(".distillrec.lock"),
        format!("{}\n", std::process::id()),
    )
    .unwrap();
    let o = train(&data, &out, &[]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains(&format!("is in use by process {}", std::process::id())),
        "{e}"
    );
    assert!(!out.join("config.toml").exists() && !out.join("run.json").exists());
    // a prepared dataset being written is locked the same way
    let o = run(&[
        "data",
        "prepare",
        "--dataset",
        "synthetic",
        "--out",
        s(&out),
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("is in use by process"));
    lock.unlock().unwrap();
    assert!(train(&data, &out, &[]).status.success());
}

#[test]
fn outputs_never_overwrite_inputs_and_the_config_names_the_data() {
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n);
    let data = p("data");
    prepare(&data, "1");
    let out = p("run");
    assert!(train(&data, &out, &[]).status.success());
    // config.toml records --data
    let cfg = std::fs::read_to_string(out.join("config.toml")).unwrap();
    let abs = std::fs::canonicalize(&data).unwrap();
    assert!(
        cfg.contains(&format!("prepared = \"{}\"", abs.display())),
        "{cfg}"
    );
    // teacher merge --out equal to one of its shards
    let ckpt = out.join("checkpoints/best.safetensors");
    for i in 0..2 {
        ok(&[
            "teacher",
            "from-student",
            "--checkpoint",
            s(&ckpt),
            "--data",
            s(&data),
            "--shard",
            &format!("{i}/2"),
            "--out",
            s(&p(&format!("shard{i}"))),
        ]);
    }
    let before = snapshot(&p("shard0"));
    clean_error(
        &[
            "teacher",
            "merge",
            "--data",
            s(&data),
            "--out",
            s(&p("shard0")),
            s(&p("shard0")),
            s(&p("shard1")),
        ],
        "is the input",
    );
    assert_eq!(snapshot(&p("shard0")), before);
    // data prepare --out equal to --raw
    let raw = p("raw");
    std::fs::create_dir_all(&raw).unwrap();
    std::fs::write(raw.join("movies.dat"), "1::Toy Story (1995)::Animation\n").unwrap();
    std::fs::write(raw.join("ratings.dat"), "1::1::5::978300760\n").unwrap();
    let before = snapshot(&raw);
    clean_error(
        &[
            "data",
            "prepare",
            "--dataset",
            "ml-1m",
            "--raw",
            s(&raw),
            "--out",
            s(&raw),
        ],
        "is the input",
    );
    assert_eq!(snapshot(&raw), before);
}

#[test]
fn unread_overrides_are_named_and_unread_groups_not_validated() {
    let d = tempfile::tempdir().unwrap();
    let (data, out) = (d.path().join("data"), d.path().join("run"));
    prepare(&data, "1");
    // train.student.* is not read by `eval student`; eval.ks without 10 no
    // longer fails on train.*.metric = ndcg@10, which it does not use
    assert!(train(&data, &out, &[]).status.success());
    let o = run(&[
        "eval",
        "student",
        "--checkpoint",
        s(&out.join("checkpoints/best.safetensors")),
        "--data",
        s(&data),
        "--set",
        "eval.ks=[5,50]",
        "--set",
        "train.student.max_epochs=3",
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{e}");
    assert!(
        e.contains("warning: --set train.student.max_epochs=3: this command does not read `train.student.max_epochs`"),
        "{e}"
    );
    // the same overrides on a command that trains with ndcg@10 are refused
    clean_error(
        &[
            "train",
            "student",
            "--data",
            s(&data),
            "--out",
            s(&d.path().join("r2")),
            "--set",
            "eval.ks=[5,50]",
        ],
        "train.student.metric",
    );
}

#[test]
fn a_closed_pipe_ends_the_output_quietly() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    prepare(&data, "1");
    for _ in 0..3 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_distillrec"))
            .args(["data", "stats", s(&data)])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // the reader goes away, as `| head -0` would
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(stderr.trim().is_empty(), "{stderr}");
    }
}

#[test]
fn recommend_after_the_dataset_moved_names_the_checkpoint_and_suggests_data() {
    let d = tempfile::tempdir().unwrap();
    let (data, out) = (d.path().join("data"), d.path().join("run"));
    prepare(&data, "1");
    assert!(train(&data, &out, &[]).status.success());
    let moved = d.path().join("moved");
    std::fs::rename(&data, &moved).unwrap();
    let ckpt = out.join("checkpoints/best.safetensors");
    clean_error(
        &["recommend", "--checkpoint", s(&ckpt), "--history", "1,2"],
        "pass --data",
    );
    let o = run(&["recommend", "--checkpoint", s(&ckpt), "--history", "1,2"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("best.safetensors"));
    let o = run(&[
        "recommend",
        "--checkpoint",
        s(&ckpt),
        "--data",
        s(&moved),
        "--history",
        "1,2",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
