//! End-to-end tests of the distillation commands: teacher caches from a
//! student (in one go and in shards), from plain files, refusals of caches
//! and selections that do not belong to the dataset, selection policies,
//! and a distilled student that `eval student` reproduces.

mod common;

use std::path::Path;

use common::*;

fn prepare(dir: &Path, seed: &str) {
    prepare_synthetic(dir, 150, seed);
}

fn same_files(a: &Path, b: &Path) {
    for f in [
        "manifest.json",
        "keys.txt",
        "rows.safetensors",
        "item_embeddings.safetensors",
    ] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f} differs"
        );
    }
}

#[test]
fn caches_selections_and_distillation_end_to_end() {
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n);
    let data = p("data");
    prepare(&data, "1");
    let mut args = vec!["train", "student", "--data", s(&data), "--out"];
    let t = p("teacher");
    args.push(s(&t));
    args.extend_from_slice(SMALL_STUDENT);
    args.extend_from_slice(TWO_EPOCHS);
    ok(&args);
    let ckpt = t.join("checkpoints/best.safetensors");

    // one go vs two shards merged: identical files
    let one = p("cache");
    ok(&[
        "teacher",
        "from-student",
        "--checkpoint",
        s(&ckpt),
        "--data",
        s(&data),
        "--out",
        s(&one),
    ]);
    for i in 0..2 {
        let sh = format!("{i}/2");
        let out = p(&format!("shard{i}"));
        ok(&[
            "teacher",
            "from-student",
            "--checkpoint",
            s(&ckpt),
            "--data",
            s(&data),
            "--shard",
            &sh,
            "--out",
            s(&out),
        ]);
    }
    let merged = p("merged");
    ok(&[
        "teacher",
        "merge",
        "--data",
        s(&data),
        "--out",
        s(&merged),
        s(&p("shard1")),
        s(&p("shard0")),
    ]);
    same_files(&one, &merged);
    // a missing shard is refused
    clean_error(
        &[
            "teacher",
            "merge",
            "--data",
            s(&data),
            "--out",
            s(&p("bad")),
            s(&p("shard0")),
        ],
        "shard",
    );

    let keys = std::fs::read_to_string(one.join("keys.txt")).unwrap();
    let first_key = keys.lines().next().unwrap().to_string();
    // a cache from plain files (another recommender's keyed CSV output)
    let second_key = keys.lines().nth(1).unwrap().to_string();
    let topk = p("topk.csv");
    std::fs::write(
        &topk,
        format!("key,c1,c2,c3\n{second_key},3,1,2\n{first_key},4,5,6\n"),
    )
    .unwrap();
    let dist = p("dist.csv");
    std::fs::write(
        &dist,
        format!("{first_key},0.1,0.2,0.3\n{second_key},1,2,3\n"),
    )
    .unwrap();
    let files = p("files-cache");
    ok(&[
        "teacher",
        "from-files",
        "--data",
        s(&data),
        "--topk",
        s(&topk),
        "--distances",
        s(&dist),
        "--out",
        s(&files),
    ]);
    let fk = std::fs::read_to_string(files.join("keys.txt")).unwrap();
    assert_eq!(
        fk.lines().collect::<Vec<_>>(),
        vec![first_key.as_str(), second_key.as_str()],
        "canonical order"
    );
    // an id outside the catalogue names the file and line
    std::fs::write(&topk, format!("{first_key},1,2,99999\n")).unwrap();
    clean_error(
        &[
            "teacher",
            "from-files",
            "--data",
            s(&data),
            "--topk",
            s(&topk),
            "--out",
            s(&p("bad-files")),
        ],
        "topk.csv:1",
    );
    // every key unknown: the error says how to give the rows' keys
    std::fs::write(&topk, "u1,1,2,3\nu2,3,2,1\n").unwrap();
    clean_error(
        &[
            "teacher",
            "from-files",
            "--data",
            s(&data),
            "--topk",
            s(&topk),
            "--out",
            s(&p("unknown-keys")),
        ],
        ["2 of 2 keys are unknown", "--keys", "--train-order"].as_slice(),
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(one.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["rows"].as_u64().unwrap() as usize,
        keys.lines().count()
    );

    // a cache of another dataset is refused, naming the datasets
    let other = p("other");
    prepare(&other, "2");
    let mut args = vec![
        "distill",
        "--teacher-cache",
        s(&one),
        "--data",
        s(&other),
        "--out",
    ];
    let r = p("refused");
    args.push(s(&r));
    args.extend_from_slice(SMALL_STUDENT);
    args.extend_from_slice(TWO_EPOCHS);
    clean_error(&args, "the teacher cache was built for dataset");

    // selection: 25% of the rows by entropy, as a key file
    let sel = p("sel.csv");
    ok(&[
        "select",
        "--policy",
        "entropy",
        "--budget",
        "25%",
        "--student",
        s(&ckpt),
        "--data",
        s(&data),
        "--out",
        s(&sel),
    ]);
    let sel_text = std::fs::read_to_string(&sel).unwrap();
    let selected = sel_text.lines().count() - 1;
    let rows = keys.lines().count();
    assert_eq!(selected, (rows as f64 * 0.25).round() as usize);
    // post-hoc KL filter: a teacher cache made from the student itself
    // agrees with it on every row (KL = 0), so a positive threshold keeps
    // none: an empty selection is refused (issue 27 §5), nothing written
    let kl_sel = p("kl.csv");
    clean_error(
        &[
            "select",
            "--policy",
            "kl",
            "--budget",
            "1.0",
            "--threshold",
            "1e-4",
            "--student",
            s(&ckpt),
            "--teacher-cache",
            s(&one),
            "--data",
            s(&data),
            "--out",
            s(&kl_sel),
        ],
        "selects no rows",
    );
    assert!(!kl_sel.exists());
    let kl_all = p("kl-all.csv");
    ok(&[
        "select",
        "--policy",
        "kl",
        "--budget",
        "1.0",
        "--student",
        s(&ckpt),
        "--teacher-cache",
        s(&one),
        "--data",
        s(&data),
        "--out",
        s(&kl_all),
    ]);
    let text = std::fs::read_to_string(&kl_all).unwrap();
    assert_eq!(text.lines().count() - 1, rows, "no threshold: every row");
    for line in text.lines().skip(1) {
        let kl: f64 = line.rsplit(',').next().unwrap().parse().unwrap();
        assert!(kl.abs() < 1e-4, "self-KL {kl}");
    }
    // policies that need a student say so
    clean_error(
        &[
            "select",
            "--policy",
            "coreset",
            "--budget",
            "0.1",
            "--data",
            s(&data),
            "--out",
            s(&p("x.csv")),
        ],
        "--student",
    );
    // the teacher infers only on the selection
    let part = p("part");
    ok(&[
        "teacher",
        "from-student",
        "--checkpoint",
        s(&ckpt),
        "--data",
        s(&data),
        "--selection",
        s(&sel),
        "--out",
        s(&part),
    ]);
    let part_keys = std::fs::read_to_string(part.join("keys.txt")).unwrap();
    assert_eq!(part_keys.lines().count(), selected);

    // a selection naming a row that does not exist is refused with its line
    let bogus = p("bogus.csv");
    std::fs::write(&bogus, format!("key,score\n{first_key},1\nnot-a-row,1\n")).unwrap();
    clean_error(
        &[
            "teacher",
            "from-student",
            "--checkpoint",
            s(&ckpt),
            "--data",
            s(&data),
            "--selection",
            s(&bogus),
            "--out",
            s(&p("b")),
        ],
        "bogus.csv:3",
    );

    // partial distillation; the exported student is a plain student
    let run_dir = p("distilled");
    let mut args = vec![
        "distill",
        "--teacher-cache",
        s(&one),
        "--selection",
        s(&sel),
        "--data",
        s(&data),
        "--out",
        s(&run_dir),
    ];
    args.extend_from_slice(SMALL_STUDENT);
    args.extend_from_slice(TWO_EPOCHS);
    ok(&args);
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("run.json")).unwrap()).unwrap();
    let text = record.to_string();
    assert!(
        text.contains(&format!("\"teacher_rows\":{selected}")),
        "{text}"
    );
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("metrics.json")).unwrap())
            .unwrap();
    let eval_dir = p("eval");
    ok(&[
        "eval",
        "student",
        "--checkpoint",
        s(&run_dir.join("checkpoints/best.safetensors")),
        "--data",
        s(&data),
        "--out",
        s(&eval_dir),
    ]);
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(eval_dir.join("metrics.json")).unwrap())
            .unwrap();
    assert_eq!(metrics["test"], again["test"]);

    // the report puts them side by side and draws the budget curve
    let rep = p("report");
    let teacher_run = format!("teacher={}", s(&t));
    let distilled_run = format!("distilled={}", s(&run_dir));
    let text = ok(&[
        "report",
        "--runs",
        &teacher_run,
        &distilled_run,
        "--budget-runs",
        s(&run_dir),
        "--baseline",
        "teacher",
        "--out",
        s(&rep),
    ]);
    assert!(
        text.contains("| teacher") && text.contains("| distilled"),
        "{text}"
    );
    assert!(
        text.contains("entropy"),
        "budget table names the policy: {text}"
    );
    for f in [
        "report.md",
        "models.csv",
        "budget.csv",
        "budget_ndcg10.png",
        "models_ndcg10.png",
    ] {
        let bytes = std::fs::read(rep.join(f)).unwrap();
        assert!(!bytes.is_empty(), "{f}");
    }
    // an unfinished or foreign directory is refused clearly
    clean_error(
        &["report", "--runs", s(&data), "--out", s(&p("r2"))],
        "run.json",
    );
}
