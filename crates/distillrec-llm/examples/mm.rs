use candle_core::{Device, Tensor};
use std::time::Instant;
fn main() {
    let d = Device::Cpu;
    for (m, k, n) in [
        (128, 576, 1536),
        (128, 1536, 576),
        (128, 576, 576),
        (128, 576, 192),
        (1, 576, 49152),
    ] {
        let x = Tensor::randn(0f32, 1., (m, k), &d).unwrap();
        let w = Tensor::randn(0f32, 1., (n, k), &d).unwrap();
        let wt = w.t().unwrap().contiguous().unwrap();
        for (name, f) in [("w.t()", 0), ("wt contiguous", 1)] {
            let mut best = f64::MAX;
            for _ in 0..20 {
                let t = Instant::now();
                let _y = if f == 0 {
                    x.matmul(&w.t().unwrap()).unwrap()
                } else {
                    x.matmul(&wt).unwrap()
                };
                best = best.min(t.elapsed().as_secs_f64());
            }
            println!(
                "{m}x{k}x{n} {name}: {:.3} ms, {:.1} GFLOP/s",
                best * 1e3,
                2.0 * (m * k * n) as f64 / best / 1e9
            );
        }
    }
}
