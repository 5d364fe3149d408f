//! LoRA dropout masks as a hash of (seed, element): the explicit path
//! (`tape`) recomputes a mask in its backward instead of storing it, and the
//! composed path's MoE-LoRA (`lora`) draws the same masks, so both paths
//! train the same step. A leaf module, so `lora` and `tape` both use it
//! without importing each other.

use rayon::prelude::*;

/// SplitMix64 finaliser of `a` combined with `b`.
pub(crate) fn mix(a: u64, b: usize) -> u64 {
    let mut z = a
        ^ (b as u64)
            .wrapping_add(1)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Hash values below this threshold are dropped (probability `p`).
pub(crate) fn drop_threshold(p: f64) -> u32 {
    (p * 4_294_967_296.0).min(u32::MAX as f64) as u32
}

/// Whether element `i` survives the mask of `seed`.
#[inline]
pub(crate) fn kept(seed: u64, i: usize, threshold: u32) -> bool {
    (mix(seed, i) >> 32) as u32 >= threshold
}

/// The factors `mask / (1 − p)` of `n` elements for the mask of `seed`
/// (the composed path multiplies its adapter inputs by them).
pub(crate) fn factors(p: f64, seed: u64, n: usize) -> Vec<f32> {
    let keep = (1.0 / (1.0 - p)) as f32;
    let th = drop_threshold(p);
    (0..n)
        .into_par_iter()
        .map(|i| if kept(seed, i, th) { keep } else { 0.0 })
        .collect()
}
