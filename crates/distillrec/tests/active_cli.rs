//! `active` (issue 30): rounds label only rows without teacher output and
//! together give the final cache; one round is one-shot selection byte for
//! byte; a run killed in round 2 continues in round 2 and ends where an
//! uninterrupted run ends; the warm start starts from the previous round's
//! student; bad `[active]` settings are refused before anything is written.
//! Also `train.*.until = "converged"`.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::*;

/// A prepared dataset, a baseline student and a wider teacher student with
/// its cache over every row, in `d`.
struct Setup {
    data: PathBuf,
    student: PathBuf,
    teacher: PathBuf,
    full: PathBuf,
}

fn setup(d: &Path) -> Setup {
    let data = d.join("data");
    prepare_synthetic(&data, 150, "1");
    let train = |out: &Path, extra: &[&str]| {
        let mut a = train_small_args(&data, out, TWO_EPOCHS);
        a.extend_from_slice(extra);
        ok(&a);
        out.join("checkpoints/best.safetensors")
    };
    let student = train(&d.join("student"), &[]);
    let teacher = train(
        &d.join("teacher"),
        &["--set", "student.hidden=32", "--set", "seed=7"],
    );
    let full = d.join("full");
    cache_from_student(&teacher, &data, &full);
    Setup {
        data,
        student,
        teacher,
        full,
    }
}

/// `active` with `labeller` (`--teacher-cache DIR`, ...) into `out`, then
/// `extra`.
fn active_args<'a>(
    s_: &'a Setup,
    labeller: [&'a str; 2],
    out: &'a Path,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut a = vec![
        "active",
        "--data",
        s(&s_.data),
        "--student",
        s(&s_.student),
        labeller[0],
        labeller[1],
        "--out",
        s(out),
    ];
    a.extend_from_slice(SMALL_STUDENT);
    a.extend_from_slice(TWO_EPOCHS);
    a.extend_from_slice(&["--set", "selection.policy=entropy"]);
    a.extend_from_slice(extra);
    a
}

/// The keys of a cache directory (`keys.txt`).
fn cache_keys(dir: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(dir.join("keys.txt"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The keys of a selection file (CSV `key,score` with a header).
fn selection_keys(path: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().to_string())
        .collect()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `active.json` without the wall-time fields.
fn rounds_without_timings(out: &Path) -> Vec<serde_json::Value> {
    let v = json(&out.join("active.json"));
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let mut r = r.clone();
            for k in ["teacher_secs", "teacher_secs_total", "distill_secs"] {
                r.as_object_mut().unwrap().remove(k);
            }
            r
        })
        .collect()
}

#[test]
fn rounds_label_new_rows_only_and_resume_in_the_round_they_were_in() {
    let d = tempfile::tempdir().unwrap();
    let su = setup(d.path());
    let cache = ["--teacher-cache", s(&su.full)];
    let three = ["--set", "active.rounds=3", "--set", "selection.budget=0.3"];
    let out = d.path().join("act");
    let printed = ok(&active_args(&su, cache, &out, &three));
    assert!(printed.contains("round 3:"), "{printed}");

    // each round labels rows that had no teacher output, its budget's worth,
    // and the rounds together are the final cache
    let mut seen = BTreeSet::new();
    let pool = json(&out.join("round-1/round.json"))["pool_rows"]
        .as_u64()
        .unwrap() as usize;
    let total = (0.3 * pool as f64).round() as usize;
    for r in 1..=3 {
        let dir = out.join(format!("round-{r}"));
        let new = selection_keys(&dir.join("selection.csv"));
        assert_eq!(cache_keys(&dir.join("labels")), new, "round {r}");
        assert!(
            new.is_disjoint(&seen),
            "round {r} labelled a row again: {:?}",
            new.intersection(&seen).next()
        );
        let want = total / 3 + usize::from(r - 1 < total % 3);
        assert_eq!(new.len(), want, "round {r}");
        seen.extend(new);
        assert_eq!(cache_keys(&dir.join("cache")), seen, "round {r}");
        let rec = json(&dir.join("round.json"));
        assert_eq!(rec["labelled_rows"].as_u64().unwrap() as usize, seen.len());
    }
    assert_eq!(seen.len(), total);

    // re-running skips every round
    let again = ok(&active_args(&su, cache, &out, &three));
    assert!(again.contains("round 3 (finished earlier):"), "{again}");

    // killed after each of several writes: when the kill lands in round 2,
    // the re-run continues there, and ends with the uninterrupted run's
    // caches, checkpoints and metrics
    let mut hit_round_two = false;
    for n in (10..400).step_by(15) {
        let o = d.path().join(format!("killed-{n}"));
        let a = active_args(&su, cache, &o, &three);
        let k = bin()
            .args(&a)
            .env("DISTILLREC_KILL_AFTER_WRITES", n.to_string())
            .output()
            .unwrap();
        if k.status.success() {
            break;
        }
        let mark = o.join("stages/round-2.json");
        let in_round_two = mark.is_file()
            && json(&mark)["status"] == "running"
            && json(&o.join("stages/round-1.json"))["status"] == "ok";
        if !in_round_two {
            continue;
        }
        hit_round_two = true;
        let printed = run(&a);
        assert!(
            printed.status.success(),
            "{}",
            String::from_utf8_lossy(&printed.stderr)
        );
        let said = String::from_utf8_lossy(&printed.stdout);
        assert!(
            said.contains("round 1 (finished earlier):") && said.contains("round 2:"),
            "the re-run did not continue in round 2:\n{said}"
        );
        assert_eq!(rounds_without_timings(&o), rounds_without_timings(&out));
        for f in ["round-3/cache/rows.safetensors", "round-3/cache/keys.txt"] {
            assert_eq!(
                std::fs::read(o.join(f)).unwrap(),
                std::fs::read(out.join(f)).unwrap(),
                "{f}"
            );
        }
        let best = "round-3/distill/checkpoints/best.safetensors";
        assert_eq!(
            std::fs::read(o.join(best)).unwrap(),
            std::fs::read(out.join(best)).unwrap()
        );
    }
    assert!(hit_round_two, "no kill landed in round 2");
}

#[test]
fn one_round_is_one_shot_selection_byte_for_byte() {
    let d = tempfile::tempdir().unwrap();
    let su = setup(d.path());
    let p = |n: &str| d.path().join(n);
    let policy = [
        "--set",
        "selection.policy=entropy",
        "--set",
        "selection.budget=0.2",
    ];
    // one-shot: select, teacher from-student on the selection, distill
    let sel = p("sel.csv");
    let mut a = vec![
        "select",
        "--data",
        s(&su.data),
        "--student",
        s(&su.student),
        "--out",
        s(&sel),
    ];
    a.extend_from_slice(SMALL_STUDENT);
    a.extend_from_slice(&policy);
    ok(&a);
    let one_cache = p("one-cache");
    ok(&[
        "teacher",
        "from-student",
        "--checkpoint",
        s(&su.teacher),
        "--data",
        s(&su.data),
        "--selection",
        s(&sel),
        "--out",
        s(&one_cache),
    ]);
    let one = p("one-distill");
    let mut a = vec![
        "distill",
        "--teacher-cache",
        s(&one_cache),
        "--selection",
        s(&sel),
        "--data",
        s(&su.data),
        "--out",
        s(&one),
    ];
    a.extend_from_slice(SMALL_STUDENT);
    a.extend_from_slice(TWO_EPOCHS);
    ok(&a);

    let out = p("act");
    ok(&active_args(
        &su,
        ["--teacher-student", s(&su.teacher)],
        &out,
        &policy,
    ));
    let r1 = out.join("round-1");
    assert_eq!(
        std::fs::read(&sel).unwrap(),
        std::fs::read(r1.join("selection.csv")).unwrap()
    );
    for f in ["manifest.json", "keys.txt", "rows.safetensors"] {
        assert_eq!(
            std::fs::read(one_cache.join(f)).unwrap(),
            std::fs::read(r1.join("cache").join(f)).unwrap(),
            "cache {f}"
        );
    }
    for f in ["metrics.json", "checkpoints/best.safetensors"] {
        assert_eq!(
            std::fs::read(one.join(f)).unwrap(),
            std::fs::read(r1.join("distill").join(f)).unwrap(),
            "distilled {f}"
        );
    }
}

#[test]
fn warm_start_continues_from_the_previous_rounds_student() {
    let d = tempfile::tempdir().unwrap();
    let su = setup(d.path());
    let out = d.path().join("act");
    ok(&active_args(
        &su,
        ["--teacher-cache", s(&su.full)],
        &out,
        &[
            "--set",
            "active.rounds=2",
            "--set",
            "selection.budget=0.2",
            "--set",
            "active.warm_start=true",
        ],
    ));
    let prev = out.join("round-1/distill/checkpoints/best.safetensors");
    let record = |r: &str| json(&out.join(r).join("distill/run.json"));
    let init = |v: &serde_json::Value| v["costs"]["distill.teacher"]["init"].clone();
    assert_eq!(init(&record("round-1")), serde_json::Value::Null);
    let got = init(&record("round-2"));
    assert_eq!(
        std::fs::canonicalize(got.as_str().unwrap()).unwrap(),
        std::fs::canonicalize(&prev).unwrap()
    );

    // `distill --init` with a vanishing learning rate (and no embedding
    // distillation, whose export mixes the teacher's item table in) exports
    // the weights it started from: the checkpoint's metrics
    let again = d.path().join("again");
    let mut a = vec![
        "distill",
        "--teacher-cache",
        s(&su.full),
        "--data",
        s(&su.data),
        "--init",
        s(&prev),
        "--out",
        s(&again),
    ];
    a.extend_from_slice(SMALL_STUDENT);
    a.extend_from_slice(&[
        "--set",
        "train.distill.max_epochs=1",
        "--set",
        "train.distill.lr=1e-30",
        "--set",
        "distill.ed_weight=0",
    ]);
    ok(&a);
    let eval = |ckpt: &Path| {
        ok(&[
            "eval",
            "student",
            "--checkpoint",
            s(ckpt),
            "--data",
            s(&su.data),
        ])
    };
    // the metric lines, not the timing line
    let metrics = |o: String| o.lines().take(2).collect::<Vec<_>>().join("\n");
    assert_eq!(
        metrics(eval(&prev)),
        metrics(eval(&again.join("checkpoints/best.safetensors")))
    );
}

#[test]
fn the_report_draws_rounds_against_teacher_rows_over_seeds() {
    let d = tempfile::tempdir().unwrap();
    let su = setup(d.path());
    let cache = ["--teacher-cache", s(&su.full)];
    let runs: Vec<PathBuf> = ["1", "2"]
        .iter()
        .map(|seed| {
            let out = d.path().join(format!("act-s{seed}"));
            let set = format!("seed={seed}");
            let extra = [
                "--set",
                "active.rounds=2",
                "--set",
                "selection.budget=0.2",
                "--set",
                &set,
            ];
            ok(&active_args(&su, cache, &out, &extra));
            out
        })
        .collect();
    let spec = |p: &PathBuf| format!("entropy={}", p.display());
    let (a, b) = (&spec(&runs[0]), &spec(&runs[1]));
    let base = format!("base={}", d.path().join("student").display());
    let rep = d.path().join("rep");
    let md = ok(&[
        "report",
        "--runs",
        &base,
        "--active-runs",
        a,
        b,
        "--converged",
        "base",
        "--out",
        s(&rep),
    ]);
    assert!(md.contains("## Active distillation"), "{md}");
    let csv = std::fs::read_to_string(rep.join("active.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    for (i, l) in lines[1..].iter().enumerate() {
        let f: Vec<&str> = l.split(',').collect();
        assert_eq!(
            (f[0], f[1], f[5]),
            ("entropy", &*(i + 1).to_string(), "2"),
            "{l}"
        );
        assert!(!f[7].is_empty(), "two seeds but no spread: {l}");
    }
    assert!(rep.join("active_ndcg10.png").is_file());
    assert!(rep.join("active_secs_ndcg10.png").is_file());
    assert!(md.contains("against teacher seconds"), "{md}");
    clean_error(
        &[
            "report",
            "--runs",
            &base,
            "--active-runs",
            a,
            "--converged",
            "nope",
            "--out",
            s(&rep),
        ],
        "--converged nope",
    );
}

#[test]
fn an_ensemble_teacher_is_evaluated_and_cached_from_several_checkpoints() {
    let d = tempfile::tempdir().unwrap();
    let su = setup(d.path());
    let eval = |ckpts: &[&Path]| {
        let mut a = vec!["eval", "student", "--data", s(&su.data), "--json"];
        for c in ckpts {
            a.extend(["--checkpoint", s(c)]);
        }
        let v: serde_json::Value = serde_json::from_str(&ok(&a)).unwrap();
        v["test"].clone()
    };
    // a student with itself is that student; with another, something else
    let one = eval(&[&su.teacher]);
    let twice = eval(&[&su.teacher, &su.teacher]);
    for k in ["hr@10", "ndcg@10"] {
        let (x, y) = (one[k].as_f64().unwrap(), twice[k].as_f64().unwrap());
        assert!((x - y).abs() < 1e-9, "{k}: {x} vs {y}");
    }
    assert_ne!(eval(&[&su.teacher, &su.student]), one);
    let cache = d.path().join("ens");
    ok(&[
        "teacher",
        "from-student",
        "--checkpoint",
        s(&su.teacher),
        "--checkpoint",
        s(&su.student),
        "--data",
        s(&su.data),
        "--out",
        s(&cache),
    ]);
    let m = json(&cache.join("manifest.json"));
    assert!(
        m["source"].as_str().unwrap().starts_with("ensemble:"),
        "{m}"
    );
    // item tables side by side: 32 + 16
    assert_eq!(m["embedding_dim"], 48, "{m}");
}

#[test]
fn bad_active_settings_are_refused_before_anything_is_written() {
    let d = tempfile::tempdir().unwrap();
    let su = setup(d.path());
    let cache = ["--teacher-cache", s(&su.full)];
    let out = d.path().join("refused");
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--set", "active.rounds=0"],
            &["active.rounds", "at least 1"],
        ),
        (
            &["--set", "active.rounds=2", "--set", "selection.policy=kl"],
            &["active.rounds", "kl"],
        ),
        (
            &["--set", "active.rounds=2", "--set", "active.policy=all"],
            &["active.policy", "all"],
        ),
        (
            &["--set", "active.rounds=3", "--set", "active.budget=4000"],
            &["active.budget", "more than the"],
        ),
        (
            &["--set", "active.teacher_rows=retrain"],
            &[
                "active.teacher_rows",
                "LLM teacher",
                "--teacher <checkpoint>",
            ],
        ),
        (&["--set", "active.rounds=-1"], &["active.rounds"]),
    ];
    let data = s(&su.data).to_string();
    let inside = format!("{data}/act");
    for (extra, want) in cases {
        clean_error(&active_args(&su, cache, &out, extra), *want);
        assert!(!out.exists(), "{extra:?} wrote {}", out.display());
    }
    // an --out inside an input, or a directory of something else
    let before = snapshot(&su.data);
    clean_error(
        &active_args(&su, cache, Path::new(&inside), &[]),
        &["--out", "lies inside the input"][..],
    );
    assert_eq!(snapshot(&su.data), before, "the dataset was written to");
    let student_dir = d.path().join("student");
    clean_error(
        &active_args(&su, cache, &student_dir, &[]),
        &["--out", "not an earlier `active` output"][..],
    );
    // a pipeline's directory has `stages/` too, but is no active output
    let pipeline_like = d.path().join("pipeline-out");
    std::fs::create_dir_all(pipeline_like.join("stages")).unwrap();
    std::fs::write(pipeline_like.join("pipeline.log"), "").unwrap();
    clean_error(
        &active_args(&su, cache, &pipeline_like, &[]),
        &["--out", "not an earlier `active` output"][..],
    );
    // killed before its first round: only the lock, the log and the config
    // are there, and the same command continues
    let early = d.path().join("early");
    std::fs::create_dir_all(&early).unwrap();
    std::fs::write(early.join("active.log"), "").unwrap();
    std::fs::write(early.join("config.toml"), "").unwrap();
    std::fs::write(early.join(".distillrec.lock"), "").unwrap();
    ok(&active_args(&su, cache, &early, &[]));
}

#[test]
fn until_converged_trains_past_max_epochs_until_patience_runs_out() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    prepare_synthetic(&data, 150, "1");
    let out = d.path().join("conv");
    ok(&train_small_args(
        &data,
        &out,
        &[
            "--set",
            "train.student.max_epochs=1",
            "--set",
            "train.student.until=converged",
            "--set",
            "train.student.patience=2",
            "--set",
            "train.student.batch_size=64",
        ],
    ));
    let m = json(&out.join("run.json"));
    let train = &m["costs"]["student.train"];
    let (epochs, best) = (
        train["epochs"].as_u64().unwrap(),
        train["best_epoch"].as_u64().unwrap(),
    );
    assert!(epochs > 1, "max_epochs = 1 still bounded a converged run");
    assert_eq!(epochs, best + 2, "stopped {epochs} epochs in, best {best}");
    // a budget run is what it always was: one epoch, and its config omits
    // the default `until`
    let budget = d.path().join("budget");
    ok(&train_small_args(
        &data,
        &budget,
        &["--set", "train.student.max_epochs=1"],
    ));
    let cfg = std::fs::read_to_string(budget.join("config.toml")).unwrap();
    assert!(!cfg.contains("until"), "{cfg}");
    let conv = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(conv.contains("until = \"converged\""), "{conv}");
}
