//! Learning, determinism, resume and checkpoint-refusal tests of the
//! student training loop on small seeded synthetic data.

use std::path::Path;

use candle_core::Device;
use distillrec_config::{Config, StudentKind};
use distillrec_data::prepare::{prepare, PrepareOptions};
use distillrec_data::synthetic::{generate, SyntheticOptions};
use distillrec_data::{store, Dataset, SplitName};
use distillrec_eval::evaluate_popularity;
use distillrec_train::checkpoint::{self, Expect};
use distillrec_train::{train_student, DatasetRef, TrainOptions, TrainOutcome};

fn dataset(users: usize, seed: u64) -> (Dataset, DatasetRef) {
    let o = SyntheticOptions {
        users,
        seed,
        ..Default::default()
    };
    let ds = prepare(
        "synthetic",
        &generate(&o).unwrap(),
        &PrepareOptions::default(),
        42,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let m = store::save(&ds, dir.path()).unwrap();
    let r = DatasetRef {
        fingerprint: m.fingerprint,
        name: ds.name.clone(),
        dir: None,
    };
    (ds, r)
}

fn small_config(sets: &[&str]) -> Config {
    let mut all = vec![
        "student.hidden=32",
        "student.layers=1",
        "student.max_len=20",
        "student.dropout=0.1",
        "student.objective=all_positions",
        "train.student.batch_size=64",
        "train.student.lr=0.005",
        "train.student.max_epochs=8",
        "train.student.patience=3",
    ];
    all.extend_from_slice(sets);
    let sets: Vec<String> = all.iter().map(|s| s.to_string()).collect();
    Config::load(None, &sets).unwrap()
}

fn train(ds: &Dataset, r: &DatasetRef, cfg: &Config, out: &Path) -> TrainOutcome {
    let opts = TrainOptions {
        student: &cfg.student,
        stage: &cfg.train.student,
        eval: &cfg.eval,
        seed: cfg.seed,
        out_dir: out,
        device: &Device::Cpu,
        progress: false,
        halt_after_epoch: None,
        init: None,
    };
    train_student(ds, r, &opts).unwrap()
}

fn popularity_ndcg(ds: &Dataset, cfg: &Config) -> f64 {
    evaluate_popularity(ds, SplitName::Test, &cfg.eval)
        .unwrap()
        .metrics["ndcg@10"]
}

#[test]
fn sasrec_beats_popularity_on_synthetic_data() {
    let (ds, r) = dataset(600, 1);
    let cfg = small_config(&[]);
    let out = tempfile::tempdir().unwrap();
    let o = train(&ds, &r, &cfg, out.path());
    let pop = popularity_ndcg(&ds, &cfg);
    let got = o.test["ndcg@10"];
    // The generator moves to the next volume 54% of the time; popularity
    // cannot see that. Stated margin: +0.25 NDCG@10 absolute.
    assert!(
        got > pop + 0.25,
        "sasrec ndcg@10 {got:.3} vs popularity {pop:.3}"
    );
    assert!(out.path().join("history.csv").is_file());
    assert!(out.path().join("checkpoints/best.json").is_file());
}

#[test]
fn gru4rec_and_caser_beat_popularity() {
    let (ds, r) = dataset(400, 2);
    for (model, objective) in [("gru4rec", "all_positions"), ("caser", "last")] {
        let cfg = small_config(&[
            &format!("student.model={model}"),
            &format!("student.objective={objective}"),
            "student.max_len=8",
            "train.student.max_epochs=15",
            "train.student.batch_size=64",
            "train.student.patience=15",
        ]);
        let out = tempfile::tempdir().unwrap();
        let o = train(&ds, &r, &cfg, out.path());
        let pop = popularity_ndcg(&ds, &cfg);
        eprintln!(
            "{model}: ndcg@10 {:.3} (best epoch {}) vs popularity {pop:.3}",
            o.test["ndcg@10"], o.best_epoch
        );
        assert!(
            o.test["ndcg@10"] > pop + 0.15,
            "{model}: {:.3} vs popularity {pop:.3}",
            o.test["ndcg@10"]
        );
    }
}

#[test]
fn bce_with_sampled_negatives_learns() {
    let (ds, r) = dataset(400, 3);
    let cfg = small_config(&[
        "student.loss=bce",
        "student.negatives=1",
        "train.student.max_epochs=6",
    ]);
    let out = tempfile::tempdir().unwrap();
    let o = train(&ds, &r, &cfg, out.path());
    let pop = popularity_ndcg(&ds, &cfg);
    assert!(
        o.test["ndcg@10"] > pop + 0.15,
        "bce: {:.3} vs popularity {pop:.3}",
        o.test["ndcg@10"]
    );
}

#[test]
fn same_seed_same_metrics_other_seed_other_metrics() {
    let (ds, r) = dataset(150, 4);
    let cfg = small_config(&["train.student.max_epochs=2"]);
    let a = train(&ds, &r, &cfg, tempfile::tempdir().unwrap().path());
    let b = train(&ds, &r, &cfg, tempfile::tempdir().unwrap().path());
    assert_eq!(a.test, b.test);
    assert_eq!(a.valid, b.valid);
    let cfg2 = small_config(&["train.student.max_epochs=2", "seed=7"]);
    let c = train(&ds, &r, &cfg2, tempfile::tempdir().unwrap().path());
    assert_ne!(a.test, c.test);
}

#[test]
fn best_checkpoint_is_the_best_validation_epoch() {
    let (ds, r) = dataset(150, 8);
    let cfg = small_config(&["train.student.max_epochs=4", "train.student.patience=10"]);
    let out = tempfile::tempdir().unwrap();
    let o = train(&ds, &r, &cfg, out.path());
    let metric = &cfg.train.student.metric;
    let text = std::fs::read_to_string(out.path().join("history.csv")).unwrap();
    let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
    // model selection sees validation only: no test column per epoch
    assert!(!header.iter().any(|c| c.contains("test")), "{header:?}");
    let col = header
        .iter()
        .position(|c| *c == format!("valid_{metric}"))
        .unwrap_or_else(|| panic!("valid_{metric} not in {header:?}"));
    let rows = read_history(out.path());
    let valid: Vec<f64> = rows.iter().map(|r| r[col].parse().unwrap()).collect();
    // the first epoch with the largest validation metric
    let best = (0..valid.len()).fold(0, |b, i| if valid[i] > valid[b] { i } else { b });
    assert_eq!(o.best_epoch, best + 1, "validation per epoch: {valid:?}");
    assert_eq!(o.valid[metric.to_string().as_str()], valid[best]);
}

#[test]
fn resume_after_interruption_matches_uninterrupted_run() {
    let (ds, r) = dataset(150, 5);
    let cfg = small_config(&["train.student.max_epochs=4", "train.student.patience=10"]);
    let full_dir = tempfile::tempdir().unwrap();
    let full = train(&ds, &r, &cfg, full_dir.path());
    assert_eq!((full.epochs, full.resumed_after), (4, None));
    // Interrupt after two of four epochs, then re-run the same training.
    let out = tempfile::tempdir().unwrap();
    let killed = train_until(&ds, &r, &cfg, out.path(), 2);
    // What the killed run left on disk: two finished epochs, not more.
    assert_eq!(killed.state["epoch"], 2, "{}", killed.state);
    assert_eq!(killed.state["finished"], false);
    assert_eq!(killed.history.len(), 2);
    assert_eq!(epochs_of(&killed.history), [1.0, 2.0]);
    let resumed = train(&ds, &r, &cfg, out.path());
    assert_eq!(resumed.resumed_after, Some(2));
    assert_eq!(resumed.epochs, 4);
    // The resumed run did not redo finished epochs: the first two history
    // rows are those of the killed run, timings included (a re-trained epoch
    // would have measured its own), and only epochs 3 and 4 were added.
    let after = read_history(out.path());
    assert_eq!(epochs_of(&after), [1.0, 2.0, 3.0, 4.0]);
    assert_eq!(after[..2], killed.history[..]);
    let state = read_json(&out.path().join("checkpoints/state.json"));
    assert_eq!(state["epoch"], 4);
    assert_eq!(state["finished"], true);
    // It ends exactly like the uninterrupted run: same per-epoch losses and
    // validation metrics (timings aside), same weights, same metrics.
    let uninterrupted = read_history(full_dir.path());
    assert_eq!(without_timings(&after), without_timings(&uninterrupted));
    for ckpt in [
        "best.safetensors",
        "best.json",
        "last-e0004.safetensors",
        "last-e0004.json",
    ] {
        let a = std::fs::read(full_dir.path().join("checkpoints").join(ckpt)).unwrap();
        let b = std::fs::read(out.path().join("checkpoints").join(ckpt)).unwrap();
        assert!(a == b, "checkpoints/{ckpt} differs after resume");
    }
    assert_eq!(resumed.best_epoch, full.best_epoch);
    assert_eq!(resumed.valid, full.valid);
    assert_eq!(resumed.test, full.test);
}

/// What a killed run left behind: `checkpoints/state.json` and the rows of
/// `history.csv`.
struct Killed {
    state: serde_json::Value,
    history: Vec<Vec<String>>,
}

/// Trains in `out`, stops right after epoch `epochs` as a killed run would,
/// and reads back what the trainer recorded.
fn train_until(ds: &Dataset, r: &DatasetRef, cfg: &Config, out: &Path, epochs: usize) -> Killed {
    let opts = TrainOptions {
        student: &cfg.student,
        stage: &cfg.train.student,
        eval: &cfg.eval,
        seed: cfg.seed,
        out_dir: out,
        device: &Device::Cpu,
        progress: false,
        halt_after_epoch: Some(epochs),
        init: None,
    };
    let err = train_student(ds, r, &opts).expect_err("halt hook stops training");
    assert!(err.to_string().contains("halted after epoch"), "{err}");
    Killed {
        state: read_json(&out.join("checkpoints/state.json")),
        history: read_history(out),
    }
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The data rows of `<out>/history.csv`, cell by cell as written.
fn read_history(out: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(out.join("history.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(header[0], "epoch", "{header:?}");
    lines
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

fn epochs_of(rows: &[Vec<String>]) -> Vec<f64> {
    rows.iter().map(|r| r[0].parse().unwrap()).collect()
}

/// History rows without the two wall-time columns (`epoch_secs`, `eval_secs`, last).
fn without_timings(rows: &[Vec<String>]) -> Vec<Vec<String>> {
    rows.iter().map(|r| r[..r.len() - 2].to_vec()).collect()
}

#[test]
fn bad_checkpoints_are_refused() {
    let (ds, r) = dataset(100, 6);
    let cfg = small_config(&["train.student.max_epochs=1"]);
    let out = tempfile::tempdir().unwrap();
    let o = train(&ds, &r, &cfg, out.path());
    let dev = Device::Cpu;
    let ok = checkpoint::load(
        &o.best_checkpoint,
        &Expect {
            fingerprint: Some(&r.fingerprint),
            kind: Some(StudentKind::Sasrec),
        },
        &dev,
    );
    assert!(ok.is_ok());
    // another dataset
    let e = checkpoint::load(
        &o.best_checkpoint,
        &Expect {
            fingerprint: Some("sha256:other"),
            kind: None,
        },
        &dev,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("was trained on dataset 'synthetic'"), "{e}");
    // another model kind
    let e = checkpoint::load(
        &o.best_checkpoint,
        &Expect {
            fingerprint: None,
            kind: Some(StudentKind::Gru4rec),
        },
        &dev,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("holds a Sasrec model, expected Gru4rec"), "{e}");
    // truncated weights
    let bytes = std::fs::read(&o.best_checkpoint).unwrap();
    std::fs::write(&o.best_checkpoint, &bytes[..bytes.len() / 2]).unwrap();
    let e = checkpoint::load(&o.best_checkpoint, &Expect::default(), &dev)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("best.safetensors: weights do not match the manifest checksum"),
        "{e}"
    );
}
