//! `active` with an LLM teacher (issue 30) on a tiny random-weight
//! backbone: with `active.teacher_rows = "retrain"` each round fine-tunes
//! the teacher on every row chosen so far, starting from the round
//! before's teacher, and labels its rows with that teacher. The round's
//! teacher equals `train teacher --init <round before's> --selection <rows
//! so far>` byte for byte, and its labels equal `teacher infer` with it.

#[path = "../../distillrec-llm/tests/common/mod.rs"]
#[allow(unused_imports)]
mod tiny;

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::*;

/// The keys of a selection file (CSV `key,score` with a header).
fn selection_keys(path: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().to_string())
        .collect()
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&read(path)).unwrap()
}

#[test]
fn retrain_fine_tunes_the_teacher_each_round_on_the_rows_so_far() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("data");
    prepare_synthetic(&data, 60, "42");
    let cfg = tiny::llama_config("llama", 2, false);
    let backbone = d.join("backbone");
    tiny::write_hf_dir(&backbone, &cfg, &tiny::random_weights(&cfg, 3));
    let student = one_epoch_student(&data, &d.join("student"));
    // the teacher of round 1's start, trained on 30 random rows
    let sel = d.join("sel.csv");
    random_selection(&data, &student, 30, &sel);
    // `train teacher` on the rows of `selection` into `out`, then `extra`
    let train_teacher = |selection: &Path, out: &Path, extra: &[&str]| {
        let mut a = train_teacher_args(&data, &student, &backbone, out);
        a.extend_from_slice(&["--selection", s(selection)]);
        a.extend_from_slice(extra);
        ok(&a);
        out.join("checkpoints/best.safetensors")
    };
    let t0_ckpt = train_teacher(&sel, &d.join("t0"), &[]);

    let out = d.join("active");
    let rounds = [
        "--set",
        "active.rounds=2",
        "--set",
        "selection.budget=40",
        "--set",
        "selection.policy=random",
        "--set",
        "train.distill.max_epochs=1",
    ];
    let active = |extra: &[&str], out: &Path| {
        let mut a = vec![
            "active",
            "--config",
            TINY_TEACHER,
            "--data",
            s(&data),
            "--student",
        ];
        a.extend_from_slice(&[s(&student), "--teacher", s(&t0_ckpt), "--out", s(out)]);
        a.extend_from_slice(&rounds);
        a.extend_from_slice(extra);
        ok(&a)
    };
    active(&["--set", "active.teacher_rows=retrain"], &out);
    let (r1, r2) = (out.join("round-1"), out.join("round-2"));
    let chosen = |r: &Path| selection_keys(&r.join("selection.csv"));

    // each round's teacher learnt from every row chosen so far
    assert_eq!(selection_keys(&r1.join("teacher-rows.csv")), chosen(&r1));
    let so_far: BTreeSet<String> = chosen(&r1).union(&chosen(&r2)).cloned().collect();
    assert_eq!(so_far.len(), 40);
    assert_eq!(selection_keys(&r2.join("teacher-rows.csv")), so_far);
    for r in [&r1, &r2] {
        let rec = json(&r.join("round.json"));
        let train_secs = rec["teacher_train_secs"].as_f64().unwrap();
        assert!(train_secs > 0.0, "{rec}");
        assert!(rec["teacher_secs"].as_f64().unwrap() > train_secs, "{rec}");
        assert!(rec["teacher_test"]["ndcg@10"].as_f64().is_some(), "{rec}");
    }

    // round 2's teacher is `train teacher --init <round 1's>` on those rows
    let r1_teacher = r1.join("teacher/checkpoints/best.safetensors");
    let r2_teacher = r2.join("teacher/checkpoints/best.safetensors");
    let by_hand = train_teacher(
        &r2.join("teacher-rows.csv"),
        &d.join("by-hand"),
        &["--init", s(&r1_teacher)],
    );
    assert_eq!(
        read(&by_hand),
        read(&r2_teacher),
        "round 2's teacher differs from train teacher --init"
    );
    // ... which moved away from the teacher it started from
    assert_ne!(read(&r1_teacher), read(&r2_teacher));
    assert_ne!(read(&t0_ckpt), read(&r1_teacher));

    // round 2's rows were labelled by round 2's teacher
    let labels = d.join("labels");
    ok(&[
        "teacher",
        "infer",
        "--checkpoint",
        s(&r2_teacher),
        "--data",
        s(&data),
        "--student",
        s(&student),
        "--selection",
        s(&r2.join("selection.csv")),
        "--out",
        s(&labels),
    ]);
    for f in ["keys.txt", "rows.safetensors"] {
        assert_eq!(
            read(&labels.join(f)),
            read(&r2.join("labels").join(f)),
            "{f}: round 2's labels are not its teacher's"
        );
    }

    // the same rounds without retraining never train a teacher, and label
    // round 2 with the given one (other labels, same rows)
    let plain = d.join("plain");
    active(&[], &plain);
    let p2 = plain.join("round-2");
    assert!(!p2.join("teacher").exists() && !p2.join("teacher-rows.csv").exists());
    assert_eq!(chosen(&p2), chosen(&r2), "random picks the same rows");
    assert_ne!(
        read(&p2.join("labels/rows.safetensors")),
        read(&r2.join("labels/rows.safetensors"))
    );
    let rec = json(&p2.join("round.json"));
    assert_eq!(rec["teacher_train_secs"].as_f64(), Some(0.0), "{rec}");
    assert!(rec.get("teacher_test").is_none(), "{rec}");
}
