//! `bench distill`: the distillation objective's training step, timed on
//! the shapes of `bench student`, with a synthetic teacher of `K`
//! candidates on every row, so that one distillation step can be set
//! beside one baseline step (and beside `scripts/bench_distill_torch.py`).
//!
//! The data is the student benchmark's random windows, laid out as a
//! dataset whose training rows are the supervised positions, so the step
//! is the trainer's own: the objective looks the rows up in the teacher
//! exactly as in `train distill`.

use anyhow::Result;
use candle_core::Device;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use distillrec_config::{DistillConfig, Objective, StudentConfig, TrainStage};
use distillrec_data::{Dataset, Item, Row, Sequence};
use distillrec_models::{Student, StudentSpec};
use distillrec_train::bench::{
    check_bench, random_sequences, time_steps, window_batch, StepBench, StepBenchReport,
};
use distillrec_train::trainer::trainable;
use distillrec_train::units::HostBatch;
use distillrec_train::StageObjective;

use crate::objective::{DistillObjective, TeacherRows};

/// The synthetic teacher's shape.
#[derive(Clone, Copy, Debug)]
pub struct TeacherShape {
    /// Candidates per row.
    pub k: usize,
    /// Dimension of its item embeddings (0: none, no embedding distillation).
    pub dim: usize,
}

/// The random windows as a dataset: one sequence per window, one training
/// row per supervised position; and the batches with their rows filled in.
fn windows_dataset(
    seqs: &[Vec<u32>],
    b: usize,
    l: usize,
    items: usize,
    objective: Objective,
) -> (Dataset, Vec<HostBatch>) {
    let mut ds = Dataset {
        name: "bench".into(),
        items: (1..=items)
            .map(|i| Item {
                raw_id: i.to_string(),
                title: format!("item {i}"),
            })
            .collect(),
        sequences: Vec::new(),
        train: Vec::new(),
        valid: Vec::new(),
        test: Vec::new(),
        users_known: true,
        row_layout: false,
        provenance: serde_json::Value::Null,
    };
    let mut batches = Vec::new();
    for chunk in seqs {
        let mut hb = window_batch(chunk, b, l, objective);
        for (j, window) in chunk.chunks_exact(l + 1).enumerate() {
            let seq = ds.sequences.len() as u32;
            ds.sequences.push(Sequence {
                user: format!("u{seq}"),
                items: window.to_vec(),
                timestamps: None,
            });
            let positions = match objective {
                Objective::Last => l..=l,
                Objective::AllPositions => 1..=l,
            };
            for (slot, pos) in positions.enumerate() {
                let at = match objective {
                    Objective::Last => j,
                    Objective::AllPositions => j * l + slot,
                };
                hb.rows[at] = ds.train.len() as u32;
                ds.train.push(Row {
                    key: format!("u{seq}:{pos}"),
                    seq,
                    pos: pos as u32,
                });
            }
        }
        batches.push(hb);
    }
    (ds, batches)
}

/// A teacher with `shape.k` distinct random candidates on every training
/// row, in rank order, and random item embeddings.
fn random_teacher(ds: &Dataset, shape: TeacherShape, rng: &mut ChaCha8Rng) -> TeacherRows {
    let n = ds.num_items() as u32;
    let rows = ds.train.len();
    let mut items = Vec::with_capacity(rows * shape.k);
    let mut distances = Vec::with_capacity(rows * shape.k);
    let pool: Vec<u32> = (1..=n).collect();
    for _ in 0..rows {
        items.extend(pool.choose_multiple(rng, shape.k));
        let mut d: Vec<f32> = (0..shape.k).map(|_| rng.gen_range(0.5..6.0)).collect();
        d.sort_by(f32::total_cmp);
        distances.extend(d);
    }
    let embeddings = (shape.dim > 0).then(|| {
        let mut z: Vec<f32> = (0..(n as usize + 1) * shape.dim)
            .map(|_| rng.gen_range(-1.0..1.0))
            .collect();
        z[..shape.dim].fill(0.0);
        (z, shape.dim)
    });
    TeacherRows {
        k: shape.k,
        of_train: (0..rows).map(Some).collect(),
        items,
        distances,
        embeddings,
        content_sha256: String::new(),
    }
}

/// Times the distillation step of `dcfg` (teacher output on every row) on
/// the shapes of [`distillrec_train::bench::bench_step`]. Seeded (0).
pub fn bench_distill_step(
    cfg: &StudentConfig,
    stage: &TrainStage,
    dcfg: &DistillConfig,
    teacher: TeacherShape,
    bench: &StepBench,
    device: &Device,
) -> Result<StepBenchReport> {
    check_bench(cfg, bench)?;
    anyhow::ensure!(
        teacher.k >= 1 && teacher.k <= bench.items,
        "k = {} must be between 1 and the catalogue size {}",
        teacher.k,
        bench.items
    );
    let (b, l) = (stage.batch_size, cfg.max_len);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let seqs = random_sequences(b, l, bench.items, &mut rng);
    let (ds, batches) = windows_dataset(&seqs, b, l, bench.items, cfg.objective);
    let rows = random_teacher(&ds, teacher, &mut rng);
    let dcfg = DistillConfig {
        k: teacher.k,
        ..dcfg.clone()
    };
    let objective = DistillObjective::new(&ds, cfg, &dcfg, rows, 0)?;
    let spec = StudentSpec::from_config(cfg, bench.items);
    let student = Student::new(&spec, 0, device)?;
    let extra = objective.extra_params().cloned().unwrap_or_default();
    let params = trainable(&student, &extra);
    time_steps(
        &objective, &student, &params, stage, &batches, bench, &mut rng,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supervised_position_is_a_teacher_row() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let seqs = random_sequences(2, 3, 20, &mut rng);
        for objective in [Objective::Last, Objective::AllPositions] {
            let (ds, batches) = windows_dataset(&seqs, 2, 3, 20, objective);
            for hb in &batches {
                for (&r, &t) in hb.rows.iter().zip(&hb.targets) {
                    // the row a position points at has that position's target
                    assert_eq!(ds.target(&ds.train[r as usize]), t);
                }
            }
            let per_window = if objective == Objective::Last { 1 } else { 3 };
            assert_eq!(ds.train.len(), seqs.len() * 2 * per_window);
            let t = random_teacher(&ds, TeacherShape { k: 4, dim: 5 }, &mut rng);
            assert_eq!(t.items.len(), ds.train.len() * 4);
            for (row, d) in t.items.chunks(4).zip(t.distances.chunks(4)) {
                let mut u = row.to_vec();
                u.sort_unstable();
                u.dedup();
                assert_eq!(u.len(), 4, "candidates are distinct");
                assert!(d.windows(2).all(|w| w[0] <= w[1]), "rank order");
            }
        }
    }
}
