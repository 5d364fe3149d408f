use candle_core::{Device, Tensor};
use std::time::Instant;
fn bench(name: &str, f: &dyn Fn() -> Tensor, flops: f64) {
    let mut ts = vec![];
    for _ in 0..30 {
        let t = Instant::now();
        let _ = f();
        ts.push(t.elapsed().as_secs_f64());
    }
    ts.sort_by(|a, b| a.total_cmp(b));
    let med = ts[ts.len() / 2];
    println!(
        "{name}: median {:.3} ms, {:.1} GFLOP/s",
        med * 1e3,
        flops / med / 1e9
    );
}
fn main() {
    let d = Device::Cpu;
    for (m, k, n) in [
        (128, 576, 1536),
        (128, 1536, 576),
        (128, 576, 576),
        (128, 576, 192),
        (128, 576, 960),
        (128, 576, 3072),
    ] {
        let x = Tensor::randn(0f32, 1., (m, k), &d).unwrap();
        let w = Tensor::randn(0f32, 1., (n, k), &d).unwrap();
        let wt = w.t().unwrap().contiguous().unwrap();
        let xt = x.t().unwrap().contiguous().unwrap();
        let fl = 2.0 * (m * k * n) as f64;
        bench(&format!("{m}x{k}x{n} x@wt"), &|| x.matmul(&wt).unwrap(), fl);
        bench(&format!("{m}x{k}x{n} w@xt"), &|| w.matmul(&xt).unwrap(), fl);
        bench(
            &format!("{m}x{k}x{n} w@x.t()"),
            &|| w.matmul(&x.t().unwrap()).unwrap(),
            fl,
        );
    }
}
