//! Issue 27 §2 through the binary: a command never overwrites its own
//! input or a directory it did not make. Every refusal is one error line,
//! exit code 1, and leaves the inputs and the refused output byte for byte
//! as they were; a command re-run on its own output still replaces it.
//! (The LLM commands' cases are in `teacher_cli.rs`, beside the tiny
//! teacher they need.)

mod common;

use std::path::Path;

use common::*;

fn prepare(dir: &Path, seed: &str) -> Vec<String> {
    let a = prepare_args(dir, 80, seed);
    ok(&argv(&a));
    a
}

fn argv(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn train(data: &Path, out: &Path) {
    ok(&train_small_args(
        data,
        out,
        &["--set", "train.student.max_epochs=1"],
    ));
}

/// Runs `args`, asserts one clean error holding `want`, and that every
/// directory in `keep` is unchanged.
fn refused(args: &[&str], want: &str, keep: &[&Path]) {
    let before: Vec<_> = keep.iter().map(|d| snapshot(d)).collect();
    clean_error(args, want);
    for (d, b) in keep.iter().zip(before) {
        assert_eq!(snapshot(d), b, "{} changed", d.display());
    }
}

#[test]
fn outputs_that_are_inputs_or_foreign_directories_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let (data, other, student) = (p("data"), p("other"), p("student"));
    let again = prepare(&data, "1");
    prepare(&other, "2");
    train(&data, &student);
    let ckpt = student.join("checkpoints/best.safetensors");
    let select = |out: &Path| {
        vec![
            "select".to_string(),
            "--policy".into(),
            "loss".into(),
            "--budget".into(),
            "25%".into(),
            "--student".into(),
            s(&ckpt).into(),
            "--data".into(),
            s(&data).into(),
            "--out".into(),
            s(out).into(),
        ]
    };
    let call = |v: Vec<String>, want: &str, keep: &[&Path]| refused(&argv(&v), want, keep);

    // select --out onto the dataset, the checkpoint, or (by its sidecar
    // `<out>.json`) the checkpoint's manifest
    call(
        select(&data.join("train.csv")),
        "lies inside the input",
        &[&data],
    );
    call(select(&ckpt), "is the input", &[&student]);
    let stem = student.join("checkpoints/best");
    call(select(&stem), "is the input", &[&student]);
    // select --out a directory: refused before the signals are computed
    call(select(&other), "is a directory", &[&other]);

    // data prepare --out another prepared dataset, or a run directory
    let mut onto = again.clone();
    *onto.last_mut().unwrap() = s(&other).to_string();
    call(onto, ".distillrec-output.json", &[&other]);
    let mut onto = again.clone();
    *onto.last_mut().unwrap() = s(&student).to_string();
    call(
        onto,
        "holds no prepared-dataset this command wrote",
        &[&student],
    );
    // the same command on its own output replaces it
    ok(&argv(&again));

    // teacher caches: --out inside the dataset, onto another cache
    let cache = |out: &Path, shard: Option<&str>| {
        let mut v = vec![
            "teacher",
            "from-student",
            "--checkpoint",
            s(&ckpt),
            "--data",
            s(&data),
            "--out",
            s(out),
        ];
        v.extend(shard.map(|sh| ["--shard", sh]).into_iter().flatten());
        v.into_iter().map(String::from).collect::<Vec<_>>()
    };
    call(
        cache(&data.join("cache"), None),
        "lies inside the input",
        &[&data],
    );
    let (c, c0, c1) = (p("c"), p("c0"), p("c1"));
    ok(&argv(&cache(&c, None)));
    ok(&argv(&cache(&c0, Some("0/2"))));
    ok(&argv(&cache(&c1, Some("1/2"))));
    // another shard of the same job into the first shard's directory
    call(cache(&c0, Some("1/2")), "from other inputs", &[&c0]);
    call(cache(&other, None), "not a teacher-cache", &[&other]);
    // re-run on its own output: replaced, the same cache
    let before = std::fs::read(c.join("manifest.json")).unwrap();
    ok(&argv(&cache(&c, None)));
    assert_eq!(std::fs::read(c.join("manifest.json")).unwrap(), before);

    // teacher merge --out an existing cache, or inside a shard
    let merge = |out: &Path| {
        [
            "teacher",
            "merge",
            "--data",
            s(&data),
            "--out",
            s(out),
            s(&c0),
            s(&c1),
        ]
        .map(String::from)
        .to_vec()
    };
    call(merge(&c), "from other inputs", &[&c, &c0, &c1]);
    call(merge(&c0.join("m")), "lies inside the input", &[&c0, &c1]);
    ok(&argv(&merge(&p("m"))));
    ok(&argv(&merge(&p("m"))));
}

#[test]
fn empty_selections_are_refused() {
    // issue 27 §5: `distill` with a header-only selection (no sidecar)
    // used to train on zero teacher rows with an INFO line only
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let (data, student) = (p("data"), p("student"));
    prepare(&data, "1");
    train(&data, &student);
    let ckpt = student.join("checkpoints/best.safetensors");
    let cache = p("cache");
    cache_from_student(&ckpt, &data, &cache);
    let sel = p("empty.csv");
    std::fs::write(&sel, "key,score\n").unwrap();
    let distill = p("distill");
    clean_error(
        &[
            "distill",
            "--data",
            s(&data),
            "--teacher-cache",
            s(&cache),
            "--selection",
            s(&sel),
            "--out",
            s(&distill),
            "--set",
            "student.hidden=16",
            "--set",
            "student.layers=1",
            "--set",
            "student.max_len=10",
        ],
        "empty.csv: the selection holds no rows",
    );
    clean_error(
        &[
            "teacher",
            "from-student",
            "--checkpoint",
            s(&ckpt),
            "--data",
            s(&data),
            "--selection",
            s(&sel),
            "--out",
            s(&p("c2")),
        ],
        "the selection holds no rows",
    );
    assert!(!p("c2").exists());
}
