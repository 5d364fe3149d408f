//! Every policy on real student signals: the budget is respected, rows are
//! distinct training rows, the choice is a function of the seed, and the
//! informed policies differ from each other.

use distillrec_config::StudentConfig;
use distillrec_data::prepare::{prepare, PrepareOptions};
use distillrec_data::synthetic::{generate, SyntheticOptions};
use distillrec_models::{Student, StudentSpec};
use distillrec_select::{select, Budget, Policy, RowSignals, SelectInputs, SignalOptions};

#[test]
fn every_policy_respects_the_budget_and_the_seed() {
    let o = SyntheticOptions {
        users: 60,
        seed: 3,
        ..Default::default()
    };
    let ds = prepare(
        "synthetic",
        &generate(&o).unwrap(),
        &PrepareOptions::default(),
        42,
    )
    .unwrap();
    let cfg = StudentConfig {
        hidden: 16,
        layers: 1,
        max_len: 10,
        ..Default::default()
    };
    let student = Student::new(
        &StudentSpec::from_config(&cfg, ds.num_items()),
        1,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let opts = SignalOptions {
        batch_size: 64,
        seed: 1,
        progress: false,
    };
    let all: Vec<usize> = (0..ds.train.len()).collect();
    let sig = RowSignals::compute(&student, &ds, &all, &opts).unwrap();
    let pool = ds.train.len();
    assert_eq!(sig.loss.len(), pool);
    assert_eq!(sig.reps.len(), pool * 16);
    assert!(sig.loss.iter().all(|x| x.is_finite() && *x > 0.0));
    let budget = Budget::Fraction(0.2);
    let want = budget.rows(pool);
    let mut picks = Vec::new();
    for name in [
        "random",
        "loss",
        "entropy",
        "least_confidence",
        "margin",
        "gradient_norm",
        "coreset",
        "kmeans",
        "badge",
        "gt_error",
    ] {
        let policy: Policy = name.parse().unwrap();
        let inputs = |seed| SelectInputs {
            pool,
            signals: Some(&sig),
            kl: None,
            threshold: None,
            seed,
        };
        let a = select(policy, budget, &inputs(5)).unwrap();
        let b = select(policy, budget, &inputs(5)).unwrap();
        assert_eq!(a, b, "{name}: same seed, same rows");
        assert_eq!(a.rows.len(), want, "{name}");
        let mut rows: Vec<usize> = a.rows.iter().map(|r| r.0).collect();
        assert!(
            rows.windows(2).all(|w| w[0] < w[1]),
            "{name}: sorted and distinct"
        );
        assert!(rows.iter().all(|&r| r < pool));
        if matches!(
            policy,
            Policy::Random | Policy::Coreset | Policy::Kmeans | Policy::Badge
        ) {
            let c = select(policy, budget, &inputs(6)).unwrap();
            assert_ne!(a, c, "{name}: another seed, other rows");
        }
        rows.truncate(want);
        picks.push((name, rows));
    }
    // the informed policies do not all collapse onto the same rows
    let distinct: std::collections::BTreeSet<&Vec<usize>> = picks.iter().map(|p| &p.1).collect();
    assert!(distinct.len() >= 6, "{picks:?}");
}
