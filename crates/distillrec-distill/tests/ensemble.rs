//! An ensemble teacher (`teacher from-student` with several checkpoints):
//! one student is its own cache, a student with itself gives the same
//! top-K and distances, and two students give the top-K of their mean
//! log-probabilities with the item tables side by side.

use candle_core::Device;

use distillrec_config::StudentConfig;
use distillrec_data::prepare::{prepare, PrepareOptions};
use distillrec_data::synthetic::{generate, SyntheticOptions};
use distillrec_data::Dataset;
use distillrec_distill::teacher::{cache_from_student, cache_from_students, FromStudent};
use distillrec_models::{Student, StudentSpec};

fn dataset() -> Dataset {
    let o = SyntheticOptions {
        users: 60,
        seed: 3,
        ..Default::default()
    };
    prepare(
        "synthetic",
        &generate(&o).unwrap(),
        &PrepareOptions::default(),
        42,
    )
    .unwrap()
}

fn student(ds: &Dataset, hidden: usize, seed: u64) -> Student {
    let cfg = StudentConfig {
        hidden,
        layers: 1,
        max_len: 10,
        ..Default::default()
    };
    Student::new(
        &StudentSpec::from_config(&cfg, ds.num_items()),
        seed,
        &Device::Cpu,
    )
    .unwrap()
}

fn opts() -> FromStudent {
    FromStudent {
        k: 5,
        mask_history: true,
        batch_size: 32,
        source: "test".into(),
        progress: false,
    }
}

/// `log softmax` over items `1..=N` of one score row `[N + 1]`, in f64.
fn log_softmax(row: &[f32]) -> Vec<f64> {
    let items: Vec<f64> = row[1..].iter().map(|&x| x as f64).collect();
    let mx = items.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lz = mx + items.iter().map(|x| (x - mx).exp()).sum::<f64>().ln();
    items.iter().map(|x| x - lz).collect()
}

#[test]
fn an_ensemble_ranks_by_mean_log_probabilities() {
    let ds = dataset();
    let (a, b) = (student(&ds, 16, 1), student(&ds, 8, 2));
    let rows: Vec<usize> = (0..ds.train.len()).collect();
    let alone = cache_from_student(&a, &ds, "fp", &rows, &opts()).unwrap();
    let twice = cache_from_students(&[&a, &a], &ds, "fp", &rows, &opts()).unwrap();
    assert_eq!(alone.items, twice.items);
    for (x, y) in alone.distances.iter().zip(&twice.distances) {
        assert!((x - y).abs() < 1e-4, "{x} vs {y}");
    }

    let both = cache_from_students(&[&a, &b], &ds, "fp", &rows, &opts()).unwrap();
    let n = ds.num_items();
    let mut differs = 0;
    for (t, row) in ds.train.iter().enumerate() {
        let h = ds.history(row);
        let (sa, sb) = (
            a.score_histories(&[h]).unwrap(),
            b.score_histories(&[h]).unwrap(),
        );
        let (la, lb) = (log_softmax(&sa), log_softmax(&sb));
        let mean: Vec<f64> = la.iter().zip(&lb).map(|(x, y)| 0.5 * (x + y)).collect();
        let mx = mean.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lz = mx + mean.iter().map(|x| (x - mx).exp()).sum::<f64>().ln();
        let best = (1..=n as u32)
            .filter(|i| !h.contains(i))
            .max_by(|&i, &j| mean[i as usize - 1].total_cmp(&mean[j as usize - 1]))
            .unwrap();
        assert_eq!(both.row_items(t)[0], best, "row {t}");
        let d = lz - mean[best as usize - 1];
        assert!(
            (both.row_distances(t)[0] as f64 - d).abs() < 1e-3,
            "row {t}"
        );
        differs += usize::from(both.row_items(t) != alone.row_items(t));
    }
    assert!(differs > 0, "the second student changed no row's top-K");

    // item tables side by side, padding row zero
    assert_eq!(both.embedding_dim(), Some(24));
    let table = both.embeddings.as_ref().unwrap();
    let ta = a
        .item_table()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let tb = b
        .item_table()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(table[..24].iter().all(|&x| x == 0.0));
    assert_eq!(&table[24..24 + 16], &ta[16..32]);
    assert_eq!(&table[24 + 16..48], &tb[8..16]);
}
