//! A trained student's top items for one history.

use std::path::Path;

use anyhow::{bail, Result};
use candle_core::Device;

use distillrec_data::{Dataset, Item, ItemId};
use distillrec_models::Student;
use distillrec_train::checkpoint::{self, Expect, Loaded};

use crate::prepared::{load_prepared, Data};

/// What `recommend` found: the history as resolved and the ranked items.
pub struct Recommendation {
    /// The history's items (oldest first).
    pub history: Vec<Item>,
    /// The top items with their scores, best first.
    pub ranked: Vec<(Item, f32)>,
}

/// Resolves one history entry: a raw item id, else a title (exact, case
/// insensitive), else a unique title substring.
pub fn resolve_item(ds: &Dataset, entry: &str) -> Result<ItemId> {
    let e = entry.trim();
    if let Some(i) = ds.items.iter().position(|it| it.raw_id == e) {
        return Ok(i as ItemId + 1);
    }
    let lower = e.to_lowercase();
    if let Some(i) = ds
        .items
        .iter()
        .position(|it| it.title.to_lowercase() == lower)
    {
        return Ok(i as ItemId + 1);
    }
    let hits: Vec<usize> = ds
        .items
        .iter()
        .enumerate()
        .filter(|(_, it)| it.title.to_lowercase().contains(&lower))
        .map(|(i, _)| i)
        .collect();
    match hits.as_slice() {
        [i] => Ok(*i as ItemId + 1),
        [] => bail!(
            "--history: '{e}' is neither a raw item id nor a title of dataset '{}'",
            ds.name
        ),
        many => {
            let shown: Vec<&str> = many
                .iter()
                .take(5)
                .map(|&i| ds.items[i].title.as_str())
                .collect();
            bail!(
                "--history: '{e}' matches {} titles ({}{}); be more specific",
                many.len(),
                shown.join("; "),
                if many.len() > 5 { "; ..." } else { "" }
            )
        }
    }
}

/// One history to rank, for [`rank_batch`].
pub struct Query<'a> {
    /// The history's items, oldest first.
    pub history: &'a [ItemId],
    /// How many items to return.
    pub top: usize,
    /// Whether the history's own items may be returned.
    pub include_history: bool,
}

/// The `top` best items of one row of scores (`[N + 1]`, column 0 padding),
/// best first, ties by lower id, leaving out `history` unless
/// `include_history`. Sorts only the kept prefix.
pub fn top_k(
    scores: &mut [f32],
    history: &[ItemId],
    top: usize,
    include_history: bool,
) -> Vec<(ItemId, f32)> {
    if !include_history {
        for &h in history {
            if let Some(s) = scores.get_mut(h as usize) {
                *s = f32::NEG_INFINITY;
            }
        }
    }
    let mut order: Vec<usize> = (1..scores.len())
        .filter(|&i| scores[i].is_finite())
        .collect();
    let by_rank = |x: &usize, y: &usize| scores[*y].total_cmp(&scores[*x]).then(x.cmp(y));
    if top < order.len() {
        order.select_nth_unstable_by(top, by_rank);
        order.truncate(top);
    }
    order.sort_by(by_rank);
    order.iter().map(|&i| (i as ItemId, scores[i])).collect()
}

/// The top items of each query in one forward pass of `student`: what
/// `recommend` and `serve` both answer with (one place for the scoring).
pub fn rank_batch(student: &Student, queries: &[Query]) -> Result<Vec<Vec<(ItemId, f32)>>> {
    if queries.is_empty() {
        return Ok(Vec::new());
    }
    let histories: Vec<&[ItemId]> = queries.iter().map(|q| q.history).collect();
    let mut scores = student.score_histories(&histories)?;
    let width = scores.len() / queries.len();
    Ok(scores
        .chunks_mut(width)
        .zip(queries)
        .map(|(row, q)| top_k(row, q.history, q.top, q.include_history))
        .collect())
}

/// The prepared dataset a checkpoint is used with: `data`, else the one
/// recorded in its manifest (a one-line error when that moved).
pub fn checkpoint_data(checkpoint_path: &Path, data: Option<&Path>) -> Result<Data> {
    let (manifest, _) = checkpoint::read_manifest(checkpoint_path)?;
    let dir = match (data, &manifest.dataset.dir) {
        (Some(d), _) => d.to_path_buf(),
        (None, Some(d)) if !d.join("dataset.json").is_file() => bail!(
            "{}: the dataset it was trained on is no longer at {} (moved or deleted?); pass --data <prepared dataset dir>",
            checkpoint_path.display(),
            d.display()
        ),
        (None, Some(d)) => d.clone(),
        (None, None) => bail!(
            "{}: the checkpoint records no dataset directory; pass --data",
            checkpoint_path.display()
        ),
    };
    load_prepared(&dir)
}

/// Loads a checkpoint for scoring `data`: its manifest, its dataset
/// fingerprint and its item count must all match, so every score row has
/// one column per item of `data` (plus padding).
pub fn load_for(checkpoint_path: &Path, data: &Data, device: &Device) -> Result<Loaded> {
    let loaded = checkpoint::load(
        checkpoint_path,
        &Expect {
            fingerprint: Some(&data.reference.fingerprint),
            kind: None,
        },
        device,
    )?;
    let (want, got) = (data.ds.items.len(), loaded.student.spec.num_items);
    if want != got {
        bail!(
            "{}: the student scores {got} items but dataset '{}' has {want}; pass the dataset it was trained on",
            checkpoint_path.display(),
            data.ds.name
        );
    }
    Ok(loaded)
}

/// The `top` items `checkpoint` scores highest after `history` (raw ids or
/// titles, oldest first, separated by `,`, or by `|` when titles contain
/// commas), leaving out the history's items unless `include_history`. The
/// dataset is `data`, else the one recorded in the checkpoint.
pub fn recommend(
    checkpoint_path: &Path,
    data: Option<&Path>,
    history: &str,
    top: usize,
    include_history: bool,
    device: &Device,
) -> Result<Recommendation> {
    let data = checkpoint_data(checkpoint_path, data)?;
    let loaded = load_for(checkpoint_path, &data, device)?;
    let sep = if history.contains('|') { '|' } else { ',' };
    let ids: Vec<ItemId> = history
        .split(sep)
        .filter(|s| !s.trim().is_empty())
        .map(|s| resolve_item(&data.ds, s))
        .collect::<Result<_>>()?;
    if ids.is_empty() {
        bail!("--history is empty");
    }
    let query = Query {
        history: &ids,
        top,
        include_history,
    };
    let ranked = rank_batch(&loaded.student, &[query])?.remove(0);
    let item = |i: ItemId| data.ds.items[i as usize - 1].clone();
    Ok(Recommendation {
        history: ids.iter().map(|&i| item(i)).collect(),
        ranked: ranked.into_iter().map(|(i, s)| (item(i), s)).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The order `recommend` printed before `top_k` existed: sort every
    /// finite item, best first, ties by lower id, then cut.
    fn full_sort(
        scores: &[f32],
        history: &[ItemId],
        top: usize,
        include: bool,
    ) -> Vec<(ItemId, f32)> {
        let mut s = scores.to_vec();
        if !include {
            for &h in history {
                s[h as usize] = f32::NEG_INFINITY;
            }
        }
        let mut order: Vec<usize> = (1..s.len()).filter(|&i| s[i].is_finite()).collect();
        order.sort_by(|&x, &y| s[y].total_cmp(&s[x]).then(x.cmp(&y)));
        order
            .iter()
            .take(top)
            .map(|&i| (i as ItemId, s[i]))
            .collect()
    }

    #[test]
    fn top_k_is_the_head_of_the_full_sort_with_ties_by_lower_id() {
        // column 0 is padding; many ties, a NaN-free row with -inf holes
        let row: Vec<f32> = (0..200u32)
            .map(|i| match i {
                0 => f32::NEG_INFINITY,
                i if i % 17 == 0 => f32::NEG_INFINITY,
                i => ((i * 37) % 11) as f32 * 0.5,
            })
            .collect();
        let history = [3, 5, 150];
        for top in [0, 1, 5, 10, 64, 199, 500] {
            for include in [false, true] {
                let want = full_sort(&row, &history, top, include);
                let got = top_k(&mut row.clone(), &history, top, include);
                assert_eq!(got, want, "top {top} include {include}");
            }
        }
        let got = top_k(&mut row.clone(), &history, 10, false);
        assert!(got.iter().all(|(i, _)| !history.contains(i) && *i != 0));
        assert!(got
            .windows(2)
            .all(|w| w[0].1 > w[1].1 || (w[0].1 == w[1].1 && w[0].0 < w[1].0)));
    }

    #[test]
    fn top_k_ignores_history_ids_outside_the_row() {
        let mut row = vec![f32::NEG_INFINITY, 1.0, 2.0];
        assert_eq!(top_k(&mut row, &[7], 5, false), vec![(2, 2.0), (1, 1.0)]);
    }
}
