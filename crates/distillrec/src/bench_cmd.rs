//! `distillrec bench student`: one SASRec training step, the same model and
//! arguments as `../shared/bench/torch_sasrec_step.py`, printing a
//! `RESULT impl=distillrec ...` line in the same format for a side-by-side ratio.

use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor};
use clap::{Args, ValueEnum};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use distillrec_config::StudentKind;
use distillrec_models::loss::cross_entropy;
use distillrec_models::{ForwardCtx, SeqBatch, Student, StudentSpec};
use distillrec_train::optim::{AdamW, AdamWConfig};

/// Objective names as the PyTorch script spells them.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum BenchObjective {
    /// One target per row at the last position.
    Last,
    /// Every position predicts the next item.
    #[value(name = "all_positions")]
    AllPositions,
}

/// Arguments of `bench student` (same names and defaults as the PyTorch reference).
#[derive(Args, Debug)]
pub struct BenchStudentArgs {
    /// Training objective.
    #[arg(long, value_enum, default_value = "last")]
    pub objective: BenchObjective,
    /// Attention heads.
    #[arg(long, default_value_t = 1)]
    pub heads: usize,
    /// Transformer blocks.
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    /// Hidden size.
    #[arg(long, default_value_t = 64)]
    pub hidden: usize,
    /// Catalogue size.
    #[arg(long, default_value_t = 3500)]
    pub items: usize,
    /// Sequence length.
    #[arg(long = "len", default_value_t = 50)]
    pub len: usize,
    /// Batch size.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Timed steps (after 3 warm-up steps).
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Worker threads (rayon and the matmul kernels).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Print a per-phase breakdown (forward, backward, optimizer).
    #[arg(long)]
    pub breakdown: bool,
}

/// Runs the benchmark.
pub fn bench_student(a: BenchStudentArgs) -> Result<()> {
    std::env::set_var("RAYON_NUM_THREADS", a.threads.to_string());
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(a.threads)
        .build_global();
    let dev = Device::Cpu;
    let spec = StudentSpec {
        kind: StudentKind::Sasrec,
        num_items: a.items,
        hidden: a.hidden,
        layers: a.layers,
        heads: a.heads,
        dropout: 0.2,
        max_len: a.len,
    };
    let student = Student::new(&spec, 0, &dev)?;
    let mut opt = AdamW::new(AdamWConfig::new(1e-3, 0.0, 0.0), &student.params);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let data: Vec<Vec<u32>> = (0..4)
        .map(|_| {
            (0..a.batch * (a.len + 1))
                .map(|_| rng.gen_range(1..=a.items as u32))
                .collect()
        })
        .collect();
    let (mut t_fwd, mut t_bwd, mut t_opt) = (0f64, 0f64, 0f64);
    let mut step = |i: usize, timed: bool| -> Result<f32> {
        let seq = &data[i % 4];
        let l = a.len;
        let mut inputs = Vec::with_capacity(a.batch * l);
        let mut targets = Vec::new();
        for r in 0..a.batch {
            let row = &seq[r * (l + 1)..(r + 1) * (l + 1)];
            inputs.extend_from_slice(&row[..l]);
            match a.objective {
                BenchObjective::Last => targets.push(row[l]),
                BenchObjective::AllPositions => targets.extend_from_slice(&row[1..]),
            }
        }
        let t0 = Instant::now();
        let sb = SeqBatch::from_ids(inputs, l, &dev)?;
        let table = student.item_table().clone();
        let mut ctx = ForwardCtx::train(&mut rng);
        let rep = match a.objective {
            BenchObjective::Last => student.represent_with(&sb, &table, &mut ctx)?,
            BenchObjective::AllPositions => student
                .hidden_all(&sb, &table, &mut ctx)?
                .reshape((a.batch * l, a.hidden))?,
        };
        let tgt = Tensor::from_vec(targets.clone(), targets.len(), &dev)?;
        let loss = cross_entropy(&rep, &table, &tgt)?;
        let lv = loss.to_scalar::<f32>()?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        let t2 = Instant::now();
        opt.step(&student.params, &grads)?;
        let t3 = Instant::now();
        if timed {
            t_fwd += (t1 - t0).as_secs_f64();
            t_bwd += (t2 - t1).as_secs_f64();
            t_opt += (t3 - t2).as_secs_f64();
        }
        Ok(lv)
    };
    for i in 0..3 {
        step(i, false)?;
    }
    let t = Instant::now();
    for i in 0..a.steps {
        step(i, true)?;
    }
    let dt = t.elapsed().as_secs_f64();
    let rss = distillrec_run::peak_rss_mb().unwrap_or(0.0);
    let obj = match a.objective {
        BenchObjective::Last => "last",
        BenchObjective::AllPositions => "all_positions",
    };
    if a.breakdown {
        let n = a.steps as f64;
        println!(
            "breakdown ms/step: forward {:.1}  backward {:.1}  optimizer {:.1}",
            1e3 * t_fwd / n,
            1e3 * t_bwd / n,
            1e3 * t_opt / n
        );
    }
    println!(
        "RESULT impl=distillrec objective={obj} heads={} items={} len={} batch={} steps_per_s={:.3} ms_per_step={:.1} peak_rss_mb={:.0}",
        a.heads,
        a.items,
        a.len,
        a.batch,
        a.steps as f64 / dt,
        1000.0 * dt / a.steps as f64,
        rss
    );
    Ok(())
}
