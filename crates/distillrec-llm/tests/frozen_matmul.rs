//! The frozen matmul's custom backward (`lora::FrozenMatmul`, reached
//! through `lora::matmul_t` / `matmul_wt` / `Linear::forward` whenever the
//! input tracks gradients and the weight is a plain tensor): its value and
//! input gradient against candle's own matmul (f32, on the column-split
//! `par_matmul` path and on candle's fallback), and its input gradient
//! against central finite differences of a loss computed with plain loops
//! (f64).

use candle_core::{DType, Device, Tensor, Var};
use distillrec_llm::lora::{matmul_t, matmul_wt, AdapterCtx, Linear};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `n` values uniform in `(-1, 1)` from a seeded generator.
fn uniform(n: usize, seed: u64) -> Vec<f32> {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| r.gen_range(-1f32..1.0)).collect()
}

/// Largest absolute element-wise difference of two tensors.
fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// The weight layouts the model hands to the frozen matmul.
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// `Wt (in, out)` row-major, as `Linear` stores it.
    RowMajor,
    /// A column block of a wider `Wt`, as each part of a fused q/k/v or
    /// gate/up projection is.
    ColumnBlock,
    /// `W (out, in)` passed to `matmul_wt` (a transposed view).
    Transposed,
}

/// Checks `x Wt` and `d(Σ probe · y)/dx` of the frozen path against candle's
/// matmul on a contiguous copy of the weight (whose backward is candle's).
fn check_against_candle(b: usize, t: usize, inp: usize, out: usize, layout: Layout) {
    let dev = Device::Cpu;
    let ctx = format!("{b}×{t}×{inp} → {out}, {layout:?}");
    let x = Var::from_vec(uniform(b * t * inp, 1), (b, t, inp), &dev).unwrap();
    let probe = Tensor::from_vec(uniform(b * t * out, 2), (b, t, out), &dev).unwrap();
    let (ours, wt) = match layout {
        Layout::RowMajor => {
            let wt = Tensor::from_vec(uniform(inp * out, 3), (inp, out), &dev).unwrap();
            (matmul_t(x.as_tensor(), &wt).unwrap(), wt)
        }
        Layout::ColumnBlock => {
            let wide = Tensor::from_vec(uniform(inp * (out + 40), 3), (inp, out + 40), &dev)
                .unwrap()
                .narrow(1, 24, out)
                .unwrap();
            (matmul_t(x.as_tensor(), &wide).unwrap(), wide)
        }
        Layout::Transposed => {
            let w = Tensor::from_vec(uniform(out * inp, 3), (out, inp), &dev).unwrap();
            (matmul_wt(x.as_tensor(), &w).unwrap(), w.t().unwrap())
        }
    };
    let reference = x
        .as_tensor()
        .reshape((b * t, inp))
        .unwrap()
        .matmul(&wt.contiguous().unwrap())
        .unwrap()
        .reshape((b, t, out))
        .unwrap();
    let d = max_diff(&ours, &reference);
    // sums of `inp` products of values below 1: f32 rounding stays far below this
    assert!(d < 1e-4, "value differs by {d} ({ctx})");
    let grad = |y: &Tensor| {
        let g = (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        g.get(x.as_tensor()).expect("gradient for x").clone()
    };
    let (g_ours, g_ref) = (grad(&ours), grad(&reference));
    let d = max_diff(&g_ours, &g_ref);
    assert!(d < 1e-4, "dx differs by {d} ({ctx})");
    // and dx is not trivially zero: it is probe · W, of order one
    let norm = g_ref
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(norm > 1.0, "{ctx}: |dx|² = {norm}");
}

#[test]
fn frozen_matmul_matches_candle_matmul_in_value_and_input_gradient() {
    // two threads, so that products with at least 64 output columns take the
    // column-split `par_matmul` (forward and backward) as on this machine
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    pool.install(|| {
        for layout in [Layout::RowMajor, Layout::ColumnBlock, Layout::Transposed] {
            // wide enough for par_matmul both ways (out ≥ 64 forward, in ≥ 64 backward)
            check_against_candle(2, 5, 96, 80, layout);
            // a single row (the one-token GEMV shape)
            check_against_candle(1, 1, 72, 130, layout);
            // too narrow for par_matmul: candle's matmul inside the op
            check_against_candle(3, 4, 17, 9, layout);
        }
    });
}

#[test]
fn linear_layer_gradient_reaches_the_input_through_the_frozen_weight() {
    let dev = Device::Cpu;
    let (b, t, inp, out) = (2, 3, 70, 66);
    let w = Tensor::from_vec(uniform(out * inp, 5), (out, inp), &dev).unwrap();
    let layer = Linear::new(w.clone(), None).unwrap();
    let x = Var::from_vec(uniform(b * t * inp, 6), (b, t, inp), &dev).unwrap();
    let probe = Tensor::from_vec(uniform(b * t * out, 7), (b, t, out), &dev).unwrap();
    let y = layer
        .forward(x.as_tensor(), &AdapterCtx::default())
        .unwrap();
    let grads = (&y * &probe)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let dx = grads.get(x.as_tensor()).expect("gradient for x");
    // d(Σ probe · x Wᵀ)/dx = probe · W, computed here without autograd
    let want = probe
        .reshape((b * t, out))
        .unwrap()
        .matmul(&w)
        .unwrap()
        .reshape((b, t, inp))
        .unwrap();
    let d = max_diff(dx, &want);
    assert!(d < 1e-4, "dx differs by {d}");
}

#[test]
fn frozen_matmul_input_gradient_matches_finite_differences_in_f64() {
    let dev = Device::Cpu;
    let (b, t, inp, out) = (2, 3, 5, 4);
    let f64s = |n, seed| -> Vec<f64> { uniform(n, seed).into_iter().map(f64::from).collect() };
    let xv = f64s(b * t * inp, 11);
    let wv = f64s(inp * out, 12);
    let pv = f64s(b * t * out, 13);
    // L(x) = Σ_{r,o} probe[r,o] · Σ_i x[r,i] · Wt[i,o], with plain loops
    let loss = |x: &[f64]| -> f64 {
        let mut s = 0.0;
        for r in 0..b * t {
            for o in 0..out {
                let y: f64 = (0..inp).map(|i| x[r * inp + i] * wv[i * out + o]).sum();
                s += pv[r * out + o] * y;
            }
        }
        s
    };
    let x = Var::from_vec(xv.clone(), (b, t, inp), &dev).unwrap();
    let wt = Tensor::from_vec(wv.clone(), (inp, out), &dev).unwrap();
    let probe = Tensor::from_vec(pv.clone(), (b, t, out), &dev).unwrap();
    let y = matmul_t(x.as_tensor(), &wt).unwrap();
    assert_eq!(y.dtype(), DType::F64);
    let value = (&y * &probe)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    assert!(
        (value - loss(&xv)).abs() < 1e-12,
        "{value} vs {}",
        loss(&xv)
    );
    let grads = (&y * &probe)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let dx = grads
        .get(x.as_tensor())
        .expect("gradient for x")
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let h = 1e-6;
    for i in 0..xv.len() {
        let (mut plus, mut minus) = (xv.clone(), xv.clone());
        plus[i] += h;
        minus[i] -= h;
        let fd = (loss(&plus) - loss(&minus)) / (2.0 * h);
        // L is linear in x, so the central difference is exact up to
        // rounding: |L| · ε / h ≈ 1e-9
        assert!(
            (dx[i] - fd).abs() < 1e-7,
            "dx[{i}] = {} but finite differences give {fd}",
            dx[i]
        );
    }
}
