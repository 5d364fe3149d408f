//! Helpers shared by the kernel tests.

use candle_core::{Tensor, Var};
use rand::{Rng, SeedableRng};

/// `n` values uniform in `(-bound, bound)` from a seeded generator.
pub(crate) fn uniform(n: usize, seed: u64, bound: f32) -> Vec<f32> {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| r.gen_range(-bound..bound)).collect()
}

/// Largest absolute element-wise difference of two f32 tensors.
pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("tensors of the same shape")
}

/// Asserts that a kernel's output `ours` equals the composed reference
/// within `tol_value`, and that the gradients of `Σ probe · y` with respect
/// to each named variable agree within `tol_grad`; `context` goes into the
/// failure messages.
pub(crate) fn assert_matches_composed(
    ours: &Tensor,
    reference: &Tensor,
    probe: &Tensor,
    vars: &[(&str, &Var)],
    (tol_value, tol_grad): (f32, f32),
    context: &str,
) {
    let d = max_diff(ours, reference);
    assert!(d < tol_value, "forward differs by {d} ({context})");
    let grads = |y: &Tensor| {
        (y * probe)
            .and_then(|t| t.sum_all())
            .and_then(|t| t.backward())
            .expect("backward")
    };
    let (go, gr) = (grads(ours), grads(reference));
    for (name, v) in vars {
        let d = max_diff(go.get(v).expect("gradient"), gr.get(v).expect("gradient"));
        assert!(d < tol_grad, "d{name} differs by {d} ({context})");
    }
}
