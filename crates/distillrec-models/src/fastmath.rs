//! Vectorisable `exp` and row reductions for the fused kernels.
//!
//! The catalogue cross-entropy evaluates `exp` on every logit twice per
//! step (tens of millions of values on MovieLens); libm's scalar `expf`
//! dominated the step. `exp` here is `2^t` split into an integer power
//! (built in the exponent bits) and a degree-6 polynomial on `[-½, ½]`:
//! relative error about 1e-7 near 0 and a few 1e-6 at |x| ≈ 80 (the f32
//! rounding of `x·log2 e`), branch-free so that LLVM vectorises it, and
//! compiled twice (AVX2+FMA when the CPU has it, baseline otherwise).

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2: f32 = std::f32::consts::LN_2;
// ln2^k / k! for k = 0..=6 (Taylor series of 2^f = e^(f ln 2)).
const C: [f32; 7] = [
    1.0,
    LN2,
    0.240_226_5,
    0.055_504_11,
    0.009_618_129,
    0.001_333_355_8,
    0.000_154_035_3,
];

#[inline(always)]
fn exp1(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E;
    // round to nearest without a libm call: the magic constant pushes the
    // fraction bits out of the mantissa
    let fi = (t + 12_582_912.0) - 12_582_912.0;
    let f = t - fi;
    let p = C[0] + f * (C[1] + f * (C[2] + f * (C[3] + f * (C[4] + f * (C[5] + f * C[6])))));
    let scale = f32::from_bits(((fi as i32 + 127) as u32) << 23);
    p * scale
}

#[inline(always)]
fn exp_shift_sum_kernel(x: &[f32], shift: f32, out: &mut [f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut xc = x.chunks_exact(8);
    let mut oc = out.chunks_exact_mut(8);
    for (xs, os) in (&mut xc).zip(&mut oc) {
        for k in 0..8 {
            let e = exp1(xs[k] - shift);
            os[k] = e;
            acc[k] += e;
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (xv, ov) in xc.remainder().iter().zip(oc.into_remainder()) {
        let e = exp1(xv - shift);
        *ov = e;
        s += e;
    }
    s
}

#[inline(always)]
fn exp_shift_sum_inplace_kernel(x: &mut [f32], shift: f32) -> f32 {
    let mut acc = [0f32; 8];
    let mut xc = x.chunks_exact_mut(8);
    for xs in &mut xc {
        for k in 0..8 {
            let e = exp1(xs[k] - shift);
            xs[k] = e;
            acc[k] += e;
        }
    }
    let mut s: f32 = acc.iter().sum();
    for v in xc.into_remainder() {
        *v = exp1(*v - shift);
        s += *v;
    }
    s
}

#[inline(always)]
fn max_kernel(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let mut xc = x.chunks_exact(8);
    for xs in &mut xc {
        for k in 0..8 {
            acc[k] = acc[k].max(xs[k]);
        }
    }
    let mut m = acc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for &v in xc.remainder() {
        m = m.max(v);
    }
    m
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_shift_sum_avx2(x: &[f32], shift: f32, out: &mut [f32]) -> f32 {
    exp_shift_sum_kernel(x, shift, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_shift_sum_inplace_avx2(x: &mut [f32], shift: f32) -> f32 {
    exp_shift_sum_inplace_kernel(x, shift)
}

#[inline(always)]
fn silu_mul_kernel(g: &[f32], u: &[f32], out: &mut [f32]) {
    for ((o, &a), &b) in out.iter_mut().zip(g).zip(u) {
        *o = a / (1.0 + exp1(-a)) * b;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_mul_avx2(g: &[f32], u: &[f32], out: &mut [f32]) {
    silu_mul_kernel(g, u, out)
}

/// `out[j] = silu(g[j]) · u[j]` with `silu(x) = x / (1 + e^{−x})` (SwiGLU).
pub fn silu_mul(g: &[f32], u: &[f32], out: &mut [f32]) {
    assert!(g.len() == out.len() && u.len() == out.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked in has_avx2).
        return unsafe { silu_mul_avx2(g, u, out) };
    }
    silu_mul_kernel(g, u, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn max_avx2(x: &[f32]) -> f32 {
    max_kernel(x)
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// Writes `out[j] = exp(x[j] − shift)` and returns their sum.
pub fn exp_shift_sum(x: &[f32], shift: f32, out: &mut [f32]) -> f32 {
    assert_eq!(x.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above).
        return unsafe { exp_shift_sum_avx2(x, shift, out) };
    }
    exp_shift_sum_kernel(x, shift, out)
}

/// Replaces `x[j]` by `exp(x[j] − shift)` and returns their sum.
pub fn exp_shift_sum_inplace(x: &mut [f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above).
        return unsafe { exp_shift_sum_inplace_avx2(x, shift) };
    }
    exp_shift_sum_inplace_kernel(x, shift)
}

/// The maximum of `x` (−∞ when empty).
pub fn max(x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above).
        return unsafe { max_avx2(x) };
    }
    max_kernel(x)
}

#[inline(always)]
fn sum_kernel(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut xc = x.chunks_exact(8);
    for xs in &mut xc {
        for k in 0..8 {
            acc[k] += xs[k];
        }
    }
    acc.iter().sum::<f32>() + xc.remainder().iter().sum::<f32>()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sum_avx2(x: &[f32]) -> f32 {
    sum_kernel(x)
}

/// `Σ x` in eight lanes (vectorised; the order differs from a sequential sum).
pub fn sum(x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above).
        return unsafe { sum_avx2(x) };
    }
    sum_kernel(x)
}

#[inline(always)]
fn distill_grad_kernel(
    s: &mut [f32],
    ps: &[f32],
    inv_beta: f32,
    shift: f32,
    dro: f32,
    lse: f32,
    ce: f32,
) {
    let s = &mut s[..ps.len()];
    if ce == 0.0 {
        for (v, &p) in s.iter_mut().zip(ps) {
            let x = *v;
            *v = dro * p * x * exp1(p * x * x * inv_beta - shift);
        }
    } else if dro == 0.0 {
        for v in s.iter_mut() {
            *v = ce * exp1(*v - lse);
        }
    } else {
        for (v, &p) in s.iter_mut().zip(ps) {
            let x = *v;
            *v = dro * p * x * exp1(p * x * x * inv_beta - shift) + ce * exp1(x - lse);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn distill_grad_avx2(
    s: &mut [f32],
    ps: &[f32],
    inv_beta: f32,
    shift: f32,
    dro: f32,
    lse: f32,
    ce: f32,
) {
    distill_grad_kernel(s, ps, inv_beta, shift, dro, lse, ce)
}

/// The dense part of the distillation gradient of one score row, in one
/// pass and in place: `s_i ← dro·p_i·s_i·e^{p_i s_i²/β − shift} + ce·e^{s_i − lse}`
/// (the DRO terms' shared part and the cross-entropy's softmax; `dro = 0`
/// or `ce = 0` skips that half). `ps` has the row's length.
pub fn distill_grad_row(
    s: &mut [f32],
    ps: &[f32],
    inv_beta: f32,
    shift: f32,
    dro: f32,
    lse: f32,
    ce: f32,
) {
    assert_eq!(s.len(), ps.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above).
        return unsafe { distill_grad_avx2(s, ps, inv_beta, shift, dro, lse, ce) };
    }
    distill_grad_kernel(s, ps, inv_beta, shift, dro, lse, ce)
}

/// `log Σ exp(x)` computed stably, using `scratch` (same length) as workspace.
pub fn log_sum_exp(x: &[f32], scratch: &mut [f32]) -> f32 {
    let m = max(x);
    if m == f32::NEG_INFINITY {
        return m;
    }
    m + exp_shift_sum(x, m, scratch).ln()
}

/// `log Σ_j e^{x_j}` accumulated in f64 with libm's exp (exact reference
/// quality, for scoring code off the training hot path: teacher distances,
/// selection signals).
pub fn log_sum_exp_f64(x: &[f32]) -> f64 {
    let m = x.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v)) as f64;
    m + x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_over_the_range() {
        let xs: Vec<f32> = (0..20_001).map(|i| -80.0 + i as f32 * 0.008).collect();
        let mut out = vec![0f32; xs.len()];
        exp_shift_sum(&xs, 0.0, &mut out);
        for (x, e) in xs.iter().zip(&out) {
            let want = (*x as f64).exp();
            let rel = ((*e as f64) - want).abs() / want;
            let tol = 3e-7 + 1.2e-7 * x.abs() as f64;
            assert!(rel < tol, "exp({x}) = {e}, want {want} (rel {rel})");
        }
        let mut one = [0f32];
        exp_shift_sum(&[-1e30], 0.0, &mut one);
        assert!(
            one[0] >= 0.0 && one[0] < 1e-37,
            "masked logit gives {}",
            one[0]
        );
    }

    #[test]
    fn silu_mul_matches_scalar() {
        let g: Vec<f32> = (0..203).map(|i| i as f32 * 0.1 - 10.0).collect();
        let u: Vec<f32> = (0..203).map(|i| 1.0 + i as f32 * 0.01).collect();
        let mut out = vec![0f32; g.len()];
        silu_mul(&g, &u, &mut out);
        for ((o, a), b) in out.iter().zip(&g).zip(&u) {
            let want = (*a as f64) / (1.0 + (-*a as f64).exp()) * *b as f64;
            assert!(
                (*o as f64 - want).abs() < 1e-5 * (1.0 + want.abs()),
                "{o} vs {want}"
            );
        }
    }

    #[test]
    fn sums_and_max_match_scalar() {
        let xs: Vec<f32> = (0..1037)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 5.0)
            .collect();
        let mut scratch = vec![0f32; xs.len()];
        let lse = log_sum_exp(&xs, &mut scratch) as f64;
        let m = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let want = m + xs.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
        assert!((lse - want).abs() < 1e-5, "{lse} vs {want}");
        assert_eq!(max(&xs), 4.99);
    }

    #[test]
    fn distill_grad_row_is_its_formula() {
        let s0: Vec<f32> = (0..37).map(|i| (i as f32 * 0.71).sin() * 3.0).collect();
        let ps: Vec<f32> = (0..37).map(|i| 0.5 + (i % 4) as f32 * 0.2).collect();
        let (ib, shift, lse) = (0.8f32, 4.0f32, 2.5f32);
        for (dro, ce) in [(0.3f32, 0.0f32), (0.0, 0.7), (0.3, 0.7)] {
            let mut s = s0.clone();
            distill_grad_row(&mut s, &ps, ib, shift, dro, lse, ce);
            for i in 0..37 {
                let (x, p) = (s0[i] as f64, ps[i] as f64);
                let want = dro as f64 * p * x * (p * x * x * ib as f64 - shift as f64).exp()
                    + ce as f64 * (x - lse as f64).exp();
                assert!(
                    (s[i] as f64 - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "{i}: {} vs {want}",
                    s[i]
                );
            }
        }
    }
}
