//! Helpers shared by the kernel tests.

use candle_core::Tensor;
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
