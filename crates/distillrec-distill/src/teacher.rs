//! Teacher caches from any student checkpoint (`teacher from-student`):
//! the student's top-K per training row (history masked or not), the
//! confidence distance `d = −log p` under its softmax over the catalogue,
//! and its item table as the embedding table. Serves model-to-model
//! distillation and testing; an LLM teacher writes the same format.
//!
//! Several students make an ensemble teacher ([`cache_from_students`]):
//! its log-probabilities are the mean of theirs (the normalised geometric
//! mean of their distributions) and its item table their tables side by
//! side.

use anyhow::Result;
use rayon::prelude::*;

use distillrec_cache::{sort_row, CacheSource, DistanceKind, TeacherCache};
use distillrec_data::Dataset;
use distillrec_models::student::ensemble_scores;
use distillrec_models::Student;

use distillrec_models::fastmath;

use crate::topk::{top_k_items, top_k_where};

/// Options of [`cache_from_student`].
#[derive(Clone, Debug)]
pub struct FromStudent {
    /// Candidates per row.
    pub k: usize,
    /// Leave the row's history items out of the top-K.
    pub mask_history: bool,
    /// Rows per forward pass.
    pub batch_size: usize,
    /// Where the teacher came from (recorded in the manifest).
    pub source: CacheSource,
    /// Show a progress bar.
    pub progress: bool,
}

/// Builds the cache of `student` on the training rows `rows` (indices into
/// `ds.train`, in training order) of the dataset with `fingerprint`.
pub fn cache_from_student(
    student: &Student,
    ds: &Dataset,
    fingerprint: &str,
    rows: &[usize],
    opts: &FromStudent,
) -> Result<TeacherCache> {
    cache_from_students(&[student], ds, fingerprint, rows, opts)
}

/// [`cache_from_student`] for an ensemble of `students` (one student gives
/// exactly its own cache); they must share the catalogue.
pub fn cache_from_students(
    students: &[&Student],
    ds: &Dataset,
    fingerprint: &str,
    rows: &[usize],
    opts: &FromStudent,
) -> Result<TeacherCache> {
    anyhow::ensure!(!students.is_empty(), "an ensemble needs a student");
    let n = ds.num_items();
    anyhow::ensure!(
        opts.k >= 1 && opts.k <= n,
        "teacher top-K = {} must be between 1 and the catalogue size {n}",
        opts.k
    );
    let mut cache = TeacherCache::new(
        fingerprint,
        ds,
        opts.k,
        DistanceKind::NegLogProb,
        opts.mask_history,
        opts.source.clone(),
    );
    let bar = if opts.progress {
        indicatif::ProgressBar::new(rows.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    for chunk in rows.chunks(opts.batch_size.max(1)) {
        let hist: Vec<&[u32]> = chunk.iter().map(|&r| ds.history(&ds.train[r])).collect();
        let scores = ensemble_scores(students, &hist)?;
        let out: Vec<(Vec<u32>, Vec<f32>)> = chunk
            .par_iter()
            .enumerate()
            .map_init(
                || (vec![0f32; n], vec![false; n + 1]),
                |(scratch, in_history), (i, _)| {
                    let s = &scores[i * (n + 1) + 1..(i + 1) * (n + 1)]; // items 1..=N
                    let mx = fastmath::max(s);
                    let log_z = mx as f64 + (fastmath::exp_shift_sum(s, mx, scratch) as f64).ln();
                    let mut top = if opts.mask_history {
                        for &h in hist[i] {
                            in_history[h as usize] = true;
                        }
                        let top = top_k_where(s, opts.k, |j| !in_history[j + 1]);
                        for &h in hist[i] {
                            in_history[h as usize] = false;
                        }
                        top
                    } else {
                        top_k_items(s, opts.k)
                    };
                    let mut d: Vec<f32> = top
                        .iter()
                        .map(|&it| (log_z - s[it as usize - 1] as f64) as f32)
                        .collect();
                    // Rank order by the stored distance (ties by id): scores that
                    // differ can round to one f32 distance.
                    sort_row(&mut top, &mut d);
                    (top, d)
                },
            )
            .collect();
        for (&r, (items, d)) in chunk.iter().zip(out) {
            cache.push_row(&ds.train[r].key, &items, &d)?;
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    // the students' item tables side by side, row 0 (padding) zeros
    let dim: usize = students.iter().map(|s| s.spec.hidden).sum();
    let mut table = vec![0f32; (n + 1) * dim];
    let mut at = 0;
    for s in students {
        let h = s.spec.hidden;
        let t = s.item_table().flatten_all()?.to_vec1::<f32>()?;
        anyhow::ensure!(
            t.len() == (n + 1) * h,
            "a student's item table is not [N + 1, hidden]"
        );
        for (row, src) in table.chunks_mut(dim).zip(t.chunks(h)).skip(1) {
            row[at..at + h].copy_from_slice(src);
        }
        at += h;
    }
    cache.set_embeddings(table, dim)?;
    Ok(cache)
}
