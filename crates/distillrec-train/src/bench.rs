//! `bench student`: the trainer's own step ([`train_step`] with the
//! student's [`BaseObjective`]) timed on random batches, with the model and
//! arguments of `../shared/bench/torch_sasrec_step.py`, so both print
//! comparable steps per second. The student and the stage come from a
//! checked config; only the data is synthetic (uniform item ids, every row
//! a full window, so no padding).

use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::Device;
use distillrec_config::{LossKind, Objective, StudentConfig, TrainStage};
use distillrec_models::{Params, Student, StudentSpec};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::optim::{AdamW, AdamWConfig};
use crate::trainer::{train_step, BaseObjective, StageObjective};
use crate::units::{HostBatch, NO_ROW};

/// Distinct random batches the timed steps cycle through.
pub const BATCHES: usize = 4;

/// Size of a step benchmark; the model and optimizer come from the config.
#[derive(Clone, Debug)]
pub struct StepBench {
    /// Catalogue size.
    pub items: usize,
    /// Untimed steps first.
    pub warmup: usize,
    /// Timed steps.
    pub steps: usize,
}

/// What a step benchmark measured.
#[derive(Clone, Debug, Default)]
pub struct StepBenchReport {
    /// Timed steps.
    pub steps: usize,
    /// Wall seconds of the timed steps.
    pub wall_secs: f64,
    /// Seconds of the timed steps in forward + loss, backward and optimizer.
    pub forward_secs: f64,
    /// See `forward_secs`.
    pub backward_secs: f64,
    /// See `forward_secs`.
    pub optimizer_secs: f64,
}

/// Checks what every step benchmark needs: items, steps and the CE loss
/// the PyTorch references use.
pub fn check_bench(cfg: &StudentConfig, bench: &StepBench) -> Result<()> {
    if bench.items == 0 {
        bail!("items = 0: the catalogue needs at least one item");
    }
    if bench.steps == 0 {
        bail!("steps = 0: nothing to time");
    }
    if cfg.loss != LossKind::Ce {
        bail!("student.loss: the step benchmark uses \"ce\", as the PyTorch reference does");
    }
    Ok(())
}

/// `BATCHES` × `b` random sequences of `l + 1` items each (seeded, so the
/// same arguments time the same data); windows of [`window_batch`].
pub fn random_sequences(b: usize, l: usize, items: usize, rng: &mut ChaCha8Rng) -> Vec<Vec<u32>> {
    (0..BATCHES)
        .map(|_| {
            (0..b * (l + 1))
                .map(|_| rng.gen_range(1..=items as u32))
                .collect()
        })
        .collect()
}

/// Times `bench.steps` training steps (after `bench.warmup` untimed ones)
/// of the student `cfg` with the loop settings `stage` (batch size, AdamW)
/// on `device`. Seeded (0): the same arguments run the same steps.
pub fn bench_step(
    cfg: &StudentConfig,
    stage: &TrainStage,
    bench: &StepBench,
    device: &Device,
) -> Result<StepBenchReport> {
    check_bench(cfg, bench)?;
    let (b, l) = (stage.batch_size, cfg.max_len);
    let spec = StudentSpec::from_config(cfg, bench.items);
    let student = Student::new(&spec, 0, device)?;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let batches: Vec<HostBatch> = random_sequences(b, l, bench.items, &mut rng)
        .iter()
        .map(|seqs| window_batch(seqs, b, l, cfg.objective))
        .collect();
    let objective = BaseObjective { cfg };
    time_steps(
        &objective,
        &student,
        &student.params,
        stage,
        &batches,
        bench,
        &mut rng,
    )
}

/// Times the trainer's step of `objective` over `params` on `batches`
/// (cycled): `bench.warmup` untimed steps, then `bench.steps` timed ones.
pub fn time_steps(
    objective: &dyn StageObjective,
    student: &Student,
    params: &Params,
    stage: &TrainStage,
    batches: &[HostBatch],
    bench: &StepBench,
    rng: &mut ChaCha8Rng,
) -> Result<StepBenchReport> {
    let mut opt = AdamW::new(
        AdamWConfig::new(stage.lr, stage.weight_decay, stage.grad_clip),
        params,
    );
    let mut report = StepBenchReport {
        steps: bench.steps,
        ..Default::default()
    };
    let n = batches.len();
    for i in 0..bench.warmup {
        train_step(objective, student, params, &mut opt, &batches[i % n], rng)?;
    }
    let t = Instant::now();
    for i in 0..bench.steps {
        let s = train_step(objective, student, params, &mut opt, &batches[i % n], rng)?;
        report.forward_secs += s.forward_secs;
        report.backward_secs += s.backward_secs;
        report.optimizer_secs += s.optimizer_secs;
    }
    report.wall_secs = t.elapsed().as_secs_f64();
    Ok(report)
}

/// A batch of `b` windows of `l + 1` items each: the first `l` are the
/// input, the last is the target (`last`) or every next item is
/// (`all_positions`).
pub fn window_batch(seqs: &[u32], b: usize, l: usize, objective: Objective) -> HostBatch {
    let mut inputs = Vec::with_capacity(b * l);
    let mut targets = Vec::new();
    for row in seqs.chunks_exact(l + 1) {
        inputs.extend_from_slice(&row[..l]);
        match objective {
            Objective::Last => targets.push(row[l]),
            Objective::AllPositions => targets.extend_from_slice(&row[1..]),
        }
    }
    HostBatch {
        rows: vec![NO_ROW; targets.len()],
        inputs,
        targets,
        negatives: Vec::new(),
        b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_split_into_inputs_and_targets() {
        let seqs = [1, 2, 3, 4, 5, 6];
        let hb = window_batch(&seqs, 2, 2, Objective::Last);
        assert_eq!(
            (hb.inputs, hb.targets, hb.b),
            (vec![1, 2, 4, 5], vec![3, 6], 2)
        );
        let hb = window_batch(&seqs, 2, 2, Objective::AllPositions);
        assert_eq!(hb.targets, vec![2, 3, 5, 6]);
        assert_eq!(hb.rows.len(), 4);
    }

    #[test]
    fn zero_items_or_steps_are_errors_not_panics() {
        let cfg = StudentConfig {
            hidden: 8,
            max_len: 4,
            ..Default::default()
        };
        let stage = TrainStage {
            batch_size: 2,
            ..distillrec_config::TrainConfig::default().student
        };
        let run = |items, steps| {
            let bench = StepBench {
                items,
                warmup: 0,
                steps,
            };
            bench_step(&cfg, &stage, &bench, &Device::Cpu).map(|r| r.steps)
        };
        assert!(run(0, 1).unwrap_err().to_string().contains("items = 0"));
        assert!(run(5, 0).unwrap_err().to_string().contains("steps = 0"));
        assert_eq!(run(5, 2).unwrap(), 2);
    }
}
