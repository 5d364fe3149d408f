//! The teacher's composed path (candle autograd: the path a GPU or a
//! half-precision backbone takes) against the explicit CPU path: the same
//! micro-step, recomputation giving the same gradients, and a bf16
//! backbone training like the f32 one.

#[path = "../../distillrec-llm/tests/common/mod.rs"]
mod common;
mod fixture;

use distillrec_data::Dataset;
use distillrec_teacher::model::Teacher;

use fixture::*;

/// Every trainable tensor given a small seeded value (a fresh `B` is zero,
/// which hides the `A` path).
fn perturb(t: &mut Teacher, seed: u64) {
    let mut rng = common::Rng::new(seed);
    for p in t.params_mut() {
        if p.iter().all(|&x| x == 0.0) {
            p.iter_mut().for_each(|x| *x = 0.05 * rng.next());
        }
    }
}

/// `‖x − y‖ / ‖x‖` over one tensor.
fn rel_diff(x: &[f32], y: &[f32]) -> f64 {
    assert_eq!(x.len(), y.len());
    let d: f64 = x
        .iter()
        .zip(y)
        .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
        .sum();
    let n: f64 = x.iter().map(|a| (*a as f64).powi(2)).sum();
    (d / n.max(1e-30)).sqrt()
}

/// Loss and every gradient of two micro-steps agree within `tol`
/// (relative), tensor by tensor.
fn assert_same_step(
    t: &Teacher,
    a: &distillrec_teacher::model::StepOut,
    b: &distillrec_teacher::model::StepOut,
    tol: f64,
) {
    assert!(
        (a.loss - b.loss).abs() <= tol * a.loss.abs(),
        "loss {} vs {}",
        a.loss,
        b.loss
    );
    assert_eq!(a.tokens, b.tokens);
    for ((name, _, _), (ga, gb)) in t.named_params().iter().zip(a.grads.iter().zip(&b.grads)) {
        assert!(ga.iter().any(|&x| x != 0.0), "no gradient reaches {name}");
        let r = rel_diff(ga, gb);
        assert!(r <= tol, "{name}: relative difference {r:e}");
    }
}

/// The composed micro-step (candle autograd on the model, the path a GPU
/// or a bf16 backbone takes) computes the explicit CPU path's loss and
/// gradients: both objectives, two experts with the gate, the projector,
/// the cue and the ranking head, LoRA dropout on.
#[test]
fn the_composed_micro_step_equals_the_explicit_one() {
    use distillrec_llm::pass::Path;
    let f = fixture();
    let cfg = config(&[
        "teacher.objective=\"both\"",
        "teacher.targets=[\"q\", \"v\", \"down\"]",
        "teacher.student_prior=true",
    ]);
    let mut a = teacher(&f, &cfg, "t");
    assert_eq!(a.teacher.path, Path::Explicit);
    perturb(&mut a.teacher, 9);
    let rows: Vec<_> = f.ds.train.iter().take(5).collect();
    let explicit = a.teacher.micro_step(&f.ds, &rows, 0, 0.5, 3).unwrap();
    a.teacher.path = Path::Composed;
    let composed = a.teacher.micro_step(&f.ds, &rows, 0, 0.5, 3).unwrap();
    assert_same_step(&a.teacher, &explicit, &composed, 1e-4);
    // a different dropout seed changes the step: the comparison is not
    // between two copies of one number
    let other = a.teacher.micro_step(&f.ds, &rows, 0, 0.5, 4).unwrap();
    assert!(rel_diff(&composed.grads[0], &other.grads[0]) > 1e-3);
}

/// `teacher.recompute` (each layer rerun in the backward from its kept
/// input) gives the gradients of the plain composed step.
#[test]
fn recomputing_the_layers_gives_the_same_gradients() {
    use distillrec_llm::pass::Path;
    let f = fixture();
    let cfg = config(&[
        "teacher.objective=\"both\"",
        "teacher.targets=[\"q\", \"k\", \"v\", \"o\", \"gate\", \"up\", \"down\"]",
        "teacher.path=\"composed\"",
    ]);
    let mut a = teacher(&f, &cfg, "t");
    assert_eq!(a.teacher.path, Path::Composed);
    perturb(&mut a.teacher, 11);
    let rows: Vec<_> = f.ds.train.iter().skip(3).take(4).collect();
    let kept = a.teacher.micro_step(&f.ds, &rows, 1, 1.0, 5).unwrap();
    a.teacher.cfg.recompute = true;
    let rerun = a.teacher.micro_step(&f.ds, &rows, 1, 1.0, 5).unwrap();
    assert_same_step(&a.teacher, &kept, &rerun, 1e-5);
}

/// Three steps of `micro_step` and AdamW, the whole tensor list.
fn three_steps(t: &mut Teacher, ds: &Dataset) -> (Vec<f64>, Vec<Vec<f32>>) {
    use distillrec_models::optim::{AdamW, AdamWConfig};
    let start: Vec<Vec<f32>> = t.params_mut().iter().map(|p| p.to_vec()).collect();
    let mut opt = AdamW::new(AdamWConfig::new(0.01, 0.0, 1.0), &t.param_sizes());
    let mut losses = Vec::new();
    for step in 0..3 {
        let rows: Vec<_> = ds.train.iter().skip(step * 6).take(6).collect();
        let out = t.micro_step(ds, &rows, 0, 1.0, step as u64).unwrap();
        losses.push(out.loss);
        let gs: Vec<&[f32]> = out.grads.iter().map(Vec::as_slice).collect();
        opt.step(&mut t.params_mut(), &gs).unwrap();
    }
    let moved = t
        .params_mut()
        .iter()
        .zip(&start)
        .map(|(p, s)| p.iter().zip(s).map(|(a, b)| a - b).collect())
        .collect();
    (losses, moved)
}

/// A bf16 backbone (`teacher.dtype = "bf16"`, composed path on the CPU)
/// trains like the f32 one: three steps' losses within bf16 tolerance and
/// every adapter's update pointing the same way.
#[test]
fn a_bf16_backbone_trains_like_the_f32_one() {
    use distillrec_llm::pass::Path;
    let f = fixture();
    let mut runs = Vec::new();
    for dtype in ["f32", "bf16"] {
        let cfg = config(&[
            "teacher.objective=\"both\"",
            &format!("teacher.dtype=\"{dtype}\""),
        ]);
        let mut a = teacher(&f, &cfg, &format!("t-{dtype}"));
        let want = if dtype == "f32" {
            candle_core::DType::F32
        } else {
            candle_core::DType::BF16
        };
        assert_eq!(a.teacher.llm.model.dtype(), want);
        let names: Vec<String> = a.teacher.named_params().into_iter().map(|n| n.0).collect();
        runs.push((a.teacher.path, three_steps(&mut a.teacher, &f.ds), names));
    }
    let ((p32, (l32, m32), names), (p16, (l16, m16), _)) = (&runs[0], &runs[1]);
    assert_eq!((*p32, *p16), (Path::Explicit, Path::Composed));
    for (a, b) in l32.iter().zip(l16) {
        assert!((a - b).abs() <= 2e-2 * a.abs(), "loss f32 {a} vs bf16 {b}");
    }
    let cos = |x: &[f32], y: &[f32]| {
        let dot: f64 = x.iter().zip(y).map(|(a, b)| *a as f64 * *b as f64).sum();
        let n = |v: &[f32]| v.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
        dot / (n(x) * n(y)).max(1e-30)
    };
    // every adapter moves the same way (a fresh A's first updates are the
    // smallest and noisiest: 0.92 here), and all of them together closely
    let (mut all32, mut all16) = (Vec::new(), Vec::new());
    for ((name, a), b) in names.iter().zip(m32).zip(m16) {
        if name.starts_with("adapter.") {
            let c = cos(a, b);
            assert!(c > 0.8, "{name}: cosine of the updates {c}");
            all32.extend_from_slice(a);
            all16.extend_from_slice(b);
        }
    }
    let c = cos(&all32, &all16);
    assert!(c > 0.95, "cosine of all the adapters' updates {c}");
}
