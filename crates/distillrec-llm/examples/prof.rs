use distillrec_llm::{load, LoadOptions};
use std::time::Instant;
fn main() {
    let path = std::env::args().nth(1).unwrap();
    let llm = load(std::path::Path::new(&path), &LoadOptions::default()).unwrap();
    let ids = distillrec_llm::bench::bench_ids(128, llm.model.config().vocab_size);
    for _ in 0..15 {
        let t = Instant::now();
        distillrec_llm::bench::prefill(&llm.model, &ids).unwrap();
        println!("prefill {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    }
}
