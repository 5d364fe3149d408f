//! Distillation on small seeded synthetic data: a strong teacher makes the
//! student better over three seeds, a random teacher does not; partial
//! distillation, export and resume keep their contracts.

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use distillrec_cache::{DistanceKind, TeacherCache};
use distillrec_config::Config;
use distillrec_data::prepare::{prepare, PrepareOptions};
use distillrec_data::synthetic::{generate, SyntheticOptions};
use distillrec_data::{store, Dataset, SplitName};
use distillrec_distill::teacher::{cache_from_student, FromStudent};
use distillrec_distill::{DistillObjective, TeacherRows};
use distillrec_train::checkpoint::{self, Expect};
use distillrec_train::{
    evaluate_student, train_student, train_with, DatasetRef, StageObjective, TrainOptions,
    TrainOutcome,
};

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

/// The small student of these tests, with `epochs` for both stages.
fn config(seed: u64, epochs: usize, sets: &[&str]) -> Config {
    let mut all: Vec<String> = [
        "student.hidden=32",
        "student.layers=1",
        "student.max_len=20",
        "student.dropout=0.1",
        "student.objective=all_positions",
        "train.student.batch_size=64",
        "train.distill.batch_size=64",
        "train.student.lr=0.005",
        "train.distill.lr=0.005",
        "train.student.patience=3",
        "train.distill.patience=3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    all.push(format!("seed={seed}"));
    all.push(format!("train.student.max_epochs={epochs}"));
    all.push(format!("train.distill.max_epochs={epochs}"));
    all.extend(sets.iter().map(|s| s.to_string()));
    Config::load(None, &all).unwrap()
}

fn opts<'a>(cfg: &'a Config, out: &'a Path, distill: bool) -> TrainOptions<'a> {
    TrainOptions {
        student: &cfg.student,
        stage: if distill {
            &cfg.train.distill
        } else {
            &cfg.train.student
        },
        eval: &cfg.eval,
        seed: cfg.seed,
        out_dir: out,
        device: &candle_core::Device::Cpu,
        progress: false,
        halt_after_epoch: None,
        init: None,
    }
}

fn distill(
    ds: &Dataset,
    r: &DatasetRef,
    cfg: &Config,
    cache: &TeacherCache,
    out: &Path,
) -> TrainOutcome {
    let rows = TeacherRows::from_cache(cache, &r.fingerprint, ds).unwrap();
    let obj = DistillObjective::new(ds, &cfg.student, &cfg.distill, rows, cfg.seed).unwrap();
    train_with(ds, r, &opts(cfg, out, true), &obj).unwrap()
}

/// A cache of random candidates, distances and embeddings.
fn random_cache(ds: &Dataset, r: &DatasetRef, seed: u64) -> TeacherCache {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = ds.num_items() as u32;
    let mut c = TeacherCache::new(
        &r.fingerprint,
        ds,
        10,
        DistanceKind::None,
        false,
        "random".into(),
    );
    for row in &ds.train {
        let mut items = Vec::new();
        while items.len() < 10 {
            let i = 1 + rng.gen_range(0..n);
            if !items.contains(&i) {
                items.push(i);
            }
        }
        let mut d: Vec<f32> = (0..10).map(|_| rng.gen_range(0.0..5.0)).collect();
        d.sort_by(f32::total_cmp); // a cache row is in rank order
        c.push_row(&row.key, &items, &d).unwrap();
    }
    let dim = 16;
    let mut table: Vec<f32> = (0..(ds.num_items() + 1) * dim)
        .map(|_| rng.gen_range(-1.0..1.0))
        .collect();
    table[..dim].fill(0.0);
    c.set_embeddings(table, dim).unwrap();
    c
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn strong_teacher_helps_and_random_teacher_does_not() {
    let (ds, r) = dataset(600, 1);
    // teacher: twice as wide, trained 20 epochs
    let tcfg = config(100, 20, &["student.hidden=64"]);
    let tdir = tempfile::tempdir().unwrap();
    let teacher = train_student(&ds, &r, &opts(&tcfg, tdir.path(), false)).unwrap();
    let tstudent = checkpoint::load(
        &teacher.best_checkpoint,
        &Expect::default(),
        &candle_core::Device::Cpu,
    )
    .unwrap()
    .student;
    let rows: Vec<usize> = (0..ds.train.len()).collect();
    let strong = cache_from_student(
        &tstudent,
        &ds,
        &r.fingerprint,
        &rows,
        &FromStudent {
            k: 10,
            mask_history: true,
            batch_size: 256,
            source: "teacher".into(),
            progress: false,
        },
    )
    .unwrap();
    // Each row is the teacher's top-10 in rank order: distances non-decreasing
    // (ties by id), and exactly the 10 best-scoring items outside the history.
    for (t, row) in ds.train.iter().enumerate() {
        let (items, d) = (strong.row_items(t), strong.row_distances(t));
        assert!(d.windows(2).all(|w| w[0] <= w[1]), "row {t}: {d:?}");
        let scores = tstudent.score_histories(&[ds.history(row)]).unwrap();
        let mut all: Vec<u32> = (1..=ds.num_items() as u32)
            .filter(|i| !ds.history(row).contains(i))
            .collect();
        all.sort_by(|&a, &b| {
            scores[b as usize]
                .total_cmp(&scores[a as usize])
                .then(a.cmp(&b))
        });
        let mut want = all[..10].to_vec();
        let mut got = items.to_vec();
        want.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, want, "row {t}");
        if t > 200 {
            break;
        }
    }
    let random = random_cache(&ds, &r, 9);
    let (mut base, mut dist, mut rand_d) = (Vec::new(), Vec::new(), Vec::new());
    for seed in [1, 2, 3] {
        // the student's budget: 2 epochs (every training target of the
        // 20–60-item sequences once per epoch, in windows of 20), for the
        // baseline and the distilled student alike
        let cfg = config(seed, 2, &[]);
        let d = tempfile::tempdir().unwrap();
        base.push(
            train_student(&ds, &r, &opts(&cfg, &d.path().join("b"), false))
                .unwrap()
                .test["ndcg@10"],
        );
        dist.push(distill(&ds, &r, &cfg, &strong, &d.path().join("s")).test["ndcg@10"]);
        rand_d.push(distill(&ds, &r, &cfg, &random, &d.path().join("r")).test["ndcg@10"]);
    }
    let t = teacher.test["ndcg@10"];
    eprintln!("teacher {t:.4} baseline {base:?} distilled {dist:?} random-teacher {rand_d:?}");
    assert!(
        t > mean(&base) + 0.03,
        "the teacher must be clearly stronger: {t} vs {base:?}"
    );
    // stated margin: +0.02 NDCG@10 on the mean of three seeds, and better on every seed
    assert!(mean(&dist) > mean(&base) + 0.02, "{dist:?} vs {base:?}");
    for (d, b) in dist.iter().zip(&base) {
        assert!(d > b, "seed-wise: {dist:?} vs {base:?}");
    }
    // a random teacher does not help
    assert!(
        mean(&rand_d) < mean(&base) + 0.005,
        "{rand_d:?} vs {base:?}"
    );
    assert!(mean(&rand_d) < mean(&dist) - 0.02, "{rand_d:?} vs {dist:?}");
}

#[test]
fn rows_without_teacher_output_train_on_the_base_loss_alone() {
    let (ds, r) = dataset(120, 4);
    for objective in ["last", "all_positions"] {
        let set = format!("student.objective={objective}");
        let cfg = config(5, 1, &[&set, "distill.ed_weight=0"]);
        let student = distillrec_models::Student::new(
            &distillrec_models::StudentSpec::from_config(&cfg.student, ds.num_items()),
            5,
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let mut cache = random_cache(&ds, &r, 1);
        let obj_loss = |cache: &TeacherCache, units: &[usize]| -> f32 {
            let rows = TeacherRows::from_cache(cache, &r.fingerprint, &ds).unwrap();
            let obj =
                DistillObjective::new(&ds, &cfg.student, &cfg.distill, rows, cfg.seed).unwrap();
            let mut batcher =
                distillrec_train::units::Batcher::new(&ds, cfg.student.objective, 20, 0);
            let us: Vec<distillrec_train::units::Unit> = units
                .iter()
                .map(|&row| distillrec_train::units::Unit { row })
                .collect();
            let mut rng = ChaCha8Rng::seed_from_u64(0);
            let hb = batcher.batch(&us, &mut rng);
            let mut rng = ChaCha8Rng::seed_from_u64(1);
            obj.batch_loss(&student, &hb, &mut rng)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let units: Vec<usize> =
            distillrec_train::units::units(&ds, cfg.student.objective, cfg.student.max_len)
                .iter()
                .take(8)
                .map(|u| u.row)
                .collect();
        let with_teacher = obj_loss(&cache, &units);
        // the same batch with no teacher rows at all: the base loss
        cache = cache.restrict(&Default::default());
        let without = obj_loss(&cache, &units);
        let base_cfg = config(
            5,
            1,
            &[
                &set,
                "distill.lambda=0",
                "distill.alpha=0",
                "distill.ed_weight=0",
            ],
        );
        let full = random_cache(&ds, &r, 1);
        let rows = TeacherRows::from_cache(&full, &r.fingerprint, &ds).unwrap();
        let obj0 =
            DistillObjective::new(&ds, &base_cfg.student, &base_cfg.distill, rows, 5).unwrap();
        let mut batcher = distillrec_train::units::Batcher::new(&ds, cfg.student.objective, 20, 0);
        let us: Vec<distillrec_train::units::Unit> = units
            .iter()
            .map(|&row| distillrec_train::units::Unit { row })
            .collect();
        let hb = batcher.batch(&us, &mut ChaCha8Rng::seed_from_u64(0));
        let zero_weights = obj0
            .batch_loss(&student, &hb, &mut ChaCha8Rng::seed_from_u64(1))
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            (without - zero_weights).abs() < 1e-6,
            "{objective}: {without} vs {zero_weights}"
        );
        assert!(
            with_teacher > without + 1e-3,
            "{objective}: distillation terms add to the loss: {with_teacher} vs {without}"
        );
    }
}

#[test]
fn exported_student_folds_the_projection_and_resume_is_exact() {
    let (ds, r) = dataset(150, 6);
    let cfg = config(7, 3, &[]);
    let cache = random_cache(&ds, &r, 2);
    // uninterrupted
    let a = tempfile::tempdir().unwrap();
    let full = distill(&ds, &r, &cfg, &cache, a.path());
    // interrupted after epoch 1, then resumed
    let b = tempfile::tempdir().unwrap();
    let rows = TeacherRows::from_cache(&cache, &r.fingerprint, &ds).unwrap();
    let obj = DistillObjective::new(&ds, &cfg.student, &cfg.distill, rows, cfg.seed).unwrap();
    let mut o = opts(&cfg, b.path(), true);
    o.halt_after_epoch = Some(1);
    assert!(train_with(&ds, &r, &o, &obj).is_err());
    let rows = TeacherRows::from_cache(&cache, &r.fingerprint, &ds).unwrap();
    let obj = DistillObjective::new(&ds, &cfg.student, &cfg.distill, rows, cfg.seed).unwrap();
    let resumed = train_with(&ds, &r, &opts(&cfg, b.path(), true), &obj).unwrap();
    assert_eq!(resumed.resumed_after, Some(1));
    assert_eq!(full.test, resumed.test, "resume must be exact");
    // the same run directory with another teacher is refused, not resumed
    let other = random_cache(&ds, &r, 3);
    let rows = TeacherRows::from_cache(&other, &r.fingerprint, &ds).unwrap();
    let obj = DistillObjective::new(&ds, &cfg.student, &cfg.distill, rows, cfg.seed).unwrap();
    let err = train_with(&ds, &r, &opts(&cfg, b.path(), true), &obj).unwrap_err();
    assert!(err.to_string().contains("different config"), "{err}");
    // the exported checkpoint is a plain student reproducing the run's metrics
    let loaded = checkpoint::load(
        &full.best_checkpoint,
        &Expect::default(),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert_eq!(loaded.student.params.count(), {
        let s = distillrec_models::Student::new(
            &distillrec_models::StudentSpec::from_config(&cfg.student, ds.num_items()),
            0,
            &candle_core::Device::Cpu,
        )
        .unwrap();
        s.params.count()
    });
    let test = evaluate_student(&loaded.student, &ds, SplitName::Test, &cfg.eval).unwrap();
    assert_eq!(test.metrics, full.test);
}
