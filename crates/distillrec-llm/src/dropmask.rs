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

/// The keep mask (1 kept, 0 dropped) of `n` elements for the mask of
/// `seed`: a quarter of [`factors`]' bytes, for devices the mask has to be
/// copied to.
pub(crate) fn keep_mask(p: f64, seed: u64, n: usize) -> Vec<u8> {
    let th = drop_threshold(p);
    (0..n)
        .into_par_iter()
        .map(|i| kept(seed, i, th) as u8)
        .collect()
}

/// The factors `mask / (1 − p)` for `x` as a tensor on `x`'s device in its
/// dtype: from [`factors`] on the CPU, from the byte [`keep_mask`] scaled
/// on the device elsewhere (`bytes`); both give the same values.
pub(crate) fn factor_tensor(
    p: f64,
    seed: u64,
    x: &candle_core::Tensor,
    bytes: bool,
) -> candle_core::Result<candle_core::Tensor> {
    use candle_core::Tensor;
    let n = x.elem_count();
    if !bytes {
        return Tensor::from_vec(factors(p, seed, n), x.shape(), x.device())?.to_dtype(x.dtype());
    }
    // the same f32 scale as `factors`, so 1 · keep is bit for bit its value
    let keep = (1.0 / (1.0 - p)) as f32 as f64;
    Tensor::from_vec(keep_mask(p, seed, n), x.shape(), x.device())?
        .to_dtype(x.dtype())?
        .affine(keep, 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};

    #[test]
    fn the_byte_mask_gives_the_factors_bit_for_bit() {
        let x = Tensor::zeros((3, 7, 11), DType::F32, &Device::Cpu).unwrap();
        for p in [0.05, 0.1, 0.3, 0.5] {
            let a = factor_tensor(p, 9, &x, false).unwrap();
            let b = factor_tensor(p, 9, &x, true).unwrap();
            let (a, b) = (
                a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert_eq!(a, b, "p = {p}");
            assert!(
                a.contains(&0.0) && a.iter().any(|&v| v > 1.0),
                "p = {p}: {a:?}"
            );
        }
    }
}
