//! Teacher inference to the cache (SPEC 6): for each selected training row
//! its key, the teacher's top-K in rank order and the confidence distance
//! `d`, plus the LLM item-embedding table (the frozen backbone's title
//! embeddings). The ranking head gives `d = −log p` under its softmax over
//! the catalogue; a generative-only teacher answers greedily and the answer
//! is grounded BIGRec-style: `d` is the L2 distance between the normalised
//! embeddings of the answer and of each item's title. Rows are processed in
//! batches and keyed, so shards merge into the one-go cache.

use std::ops::Range;
use std::time::Instant;

use anyhow::{ensure, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use distillrec_cache::{sort_row, CacheSource, DistanceKind, ShardSpec, TeacherCache};
use distillrec_data::{Dataset, Row};
use distillrec_llm::embed;

use crate::model::{has_ranking, row_seed, streams, Teacher};

/// Options of [`cache_from_teacher`].
#[derive(Clone, Debug)]
pub struct InferOptions {
    /// Candidates per row.
    pub k: usize,
    /// Leave the row's history out of the top-K.
    pub mask_history: bool,
    /// Where the teacher came from (the manifest's `source`).
    pub source: CacheSource,
    /// Show a progress bar.
    pub progress: bool,
}

/// The rows of `0..len` that `shard` handles, in whole inference batches
/// of `batch` rows: a row's numbers depend on the prompts batched with it
/// (padding, product sizes), so shards cut only between the batches of the
/// one-go run, and merged shards equal the one-go cache byte for byte.
pub fn shard_range(shard: &ShardSpec, len: usize, batch: usize) -> Range<usize> {
    let batch = batch.max(1);
    let r = shard.range(len.div_ceil(batch));
    (r.start * batch).min(len)..(r.end * batch).min(len)
}

/// The `k` best columns of `d` (smallest first, ties by id) over items
/// `1..`, skipping `banned`.
fn top_k_smallest(d: &[f32], k: usize, banned: &[u32]) -> (Vec<u32>, Vec<f32>) {
    let mut idx: Vec<u32> = (1..d.len() as u32)
        .filter(|i| !banned.contains(i))
        .collect();
    let k = k.min(idx.len());
    let cmp = |a: &u32, b: &u32| d[*a as usize].total_cmp(&d[*b as usize]).then(a.cmp(b));
    if k > 0 && k < idx.len() {
        idx.select_nth_unstable_by(k - 1, cmp);
    }
    idx.truncate(k);
    let mut items = idx;
    let mut dist: Vec<f32> = items.iter().map(|&i| d[i as usize]).collect();
    sort_row(&mut items, &mut dist);
    (items, dist)
}

/// Writes the teacher cache of `rows` (indices into `ds.train`) in
/// batches of `teacher.cfg.infer_batch` from the first row (cut shards
/// with [`shard_range`]); returns it with the rows per second.
pub fn cache_from_teacher(
    teacher: &mut Teacher,
    ds: &Dataset,
    fingerprint: &str,
    rows: &[usize],
    opts: &InferOptions,
) -> Result<(TeacherCache, f64)> {
    let n = ds.num_items();
    ensure!(
        opts.k >= 1 && opts.k <= n,
        "teacher top-K = {} must be between 1 and the catalogue size {n}",
        opts.k
    );
    let ranking = has_ranking(teacher.cfg.objective);
    let kind = if ranking {
        DistanceKind::NegLogProb
    } else {
        DistanceKind::L2
    };
    let mut cache = TeacherCache::new(
        fingerprint,
        ds,
        opts.k,
        kind,
        opts.mask_history,
        opts.source.clone(),
    );
    let bar = if opts.progress {
        indicatif::ProgressBar::new(rows.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let start = Instant::now();
    let titles = teacher.titles.flatten_all()?.to_vec1::<f32>()?;
    let h = teacher.titles.dim(1)?;
    if ranking {
        let table = teacher.eval_table()?;
        for chunk in rows.chunks(teacher.cfg.infer_batch) {
            let batch: Vec<&Row> = chunk.iter().map(|&r| &ds.train[r]).collect();
            let scores = teacher.rank_scores(ds, &batch, &table)?;
            let out: Vec<(Vec<u32>, Vec<f32>)> = scores
                .par_chunks(n + 1)
                .zip(&batch)
                .map(|(s, row)| {
                    let items = &s[1..];
                    let m = items.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
                    let lz = m + items
                        .iter()
                        .map(|&x| (x as f64 - m).exp())
                        .sum::<f64>()
                        .ln();
                    let d: Vec<f32> = s.iter().map(|&x| (lz - x as f64) as f32).collect();
                    let banned = if opts.mask_history {
                        ds.history(row)
                    } else {
                        &[]
                    };
                    top_k_smallest(&d, opts.k, banned)
                })
                .collect();
            for (row, (items, d)) in batch.iter().zip(out) {
                cache.push_row(&row.key, &items, &d)?;
            }
            bar.inc(chunk.len() as u64);
        }
    } else {
        // normalised title embeddings, for BIGRec grounding
        let unit: Vec<f32> = titles
            .chunks(h)
            .flat_map(|r| {
                let norm = r.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                r.iter().map(move |x| x / norm)
            })
            .collect();
        let mut answers = Vec::with_capacity(rows.len());
        teacher.attach()?;
        let res = (|| -> Result<()> {
            for &r in rows {
                let row = &ds.train[r];
                let mut rng =
                    ChaCha8Rng::seed_from_u64(row_seed(teacher.seed, streams::EVAL, &row.key));
                let cands =
                    teacher
                        .prompter
                        .draw_candidates(ds.history(row), ds.target(row), &mut rng);
                answers.push(teacher.answer(ds, row, &cands)?);
                bar.inc(1);
            }
            Ok(())
        })();
        teacher.detach()?;
        res?;
        // an answer is embedded like a title: cut to the title budget
        let tok = &teacher.llm.tokenizer;
        let cut = answers
            .iter()
            .map(|a| {
                let ids = tok.encode(a, false)?;
                let text = tok.decode(&ids[..ids.len().min(teacher.cfg.max_title_tokens)], true)?;
                Ok(if text.trim().is_empty() {
                    " ".to_string()
                } else {
                    text
                })
            })
            .collect::<Result<Vec<String>>>()?;
        let texts: Vec<&str> = cut.iter().map(String::as_str).collect();
        let cut = embed::TitleCut {
            max_tokens: teacher.cfg.max_title_tokens,
            what: "answer",
        };
        let emb =
            embed::title_embeddings(&teacher.llm.model, &teacher.llm.tokenizer, &texts, 32, cut)?
                .flatten_all()?
                .to_vec1::<f32>()?;
        for (i, &r) in rows.iter().enumerate() {
            let row = &ds.train[r];
            let a = &emb[i * h..(i + 1) * h];
            let an = a.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            let mut d = vec![f32::INFINITY; n + 1];
            for (it, dv) in d.iter_mut().enumerate().skip(1) {
                let t = &unit[it * h..(it + 1) * h];
                *dv = a
                    .iter()
                    .zip(t)
                    .map(|(x, y)| (x / an - y).powi(2))
                    .sum::<f32>()
                    .sqrt();
            }
            let banned = if opts.mask_history {
                ds.history(row)
            } else {
                &[]
            };
            let (items, dist) = top_k_smallest(&d, opts.k, banned);
            cache.push_row(&row.key, &items, &dist)?;
        }
    }
    bar.finish_and_clear();
    let rps = rows.len() as f64 / start.elapsed().as_secs_f64().max(1e-9);
    cache.set_embeddings(titles, h)?;
    Ok((cache, rps))
}
