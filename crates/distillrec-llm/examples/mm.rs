use candle_core::{Device, Tensor};
use distillrec_llm::matmul::matmul_2d;
use std::time::Instant;
fn med(f: &dyn Fn()) -> f64 {
    let mut ts = vec![];
    for _ in 0..40 {
        let t = Instant::now();
        f();
        ts.push(t.elapsed().as_secs_f64());
    }
    ts.sort_by(|a, b| a.total_cmp(b));
    ts[ts.len() / 2] * 1e3
}
fn main() {
    let d = Device::Cpu;
    let (mut tc, mut to) = (0.0, 0.0);
    for (m, k, n) in [
        (128, 576, 960),
        (128, 576, 576),
        (128, 576, 3072),
        (128, 1536, 576),
        (1, 576, 49152),
        (1, 576, 3072),
    ] {
        let x = Tensor::randn(0f32, 1., (m, k), &d).unwrap();
        let wt = Tensor::randn(0f32, 1., (k, n), &d).unwrap();
        let a = med(&|| {
            x.matmul(&wt).unwrap();
        });
        let b = med(&|| {
            matmul_2d(&x, &wt).unwrap().unwrap();
        });
        tc += a;
        to += b;
        println!("{m}x{k}x{n}: candle {a:.3} ms, ours {b:.3} ms");
    }
    println!("total candle {tc:.2} ours {to:.2}");
}
