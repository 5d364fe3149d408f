//! A trained student's top items for one history.

use std::path::Path;

use anyhow::{bail, Result};
use candle_core::Device;

use distillrec_data::{Dataset, Item, ItemId};
use distillrec_train::checkpoint::{self, Expect};

use crate::prepared::load_prepared;

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
    let data = load_prepared(&dir)?;
    let loaded = checkpoint::load(
        checkpoint_path,
        &Expect {
            fingerprint: Some(&data.reference.fingerprint),
            kind: None,
        },
        device,
    )?;
    let sep = if history.contains('|') { '|' } else { ',' };
    let ids: Vec<ItemId> = history
        .split(sep)
        .filter(|s| !s.trim().is_empty())
        .map(|s| resolve_item(&data.ds, s))
        .collect::<Result<_>>()?;
    if ids.is_empty() {
        bail!("--history is empty");
    }
    let mut scores = loaded.student.score_histories(&[&ids])?;
    if !include_history {
        for &h in &ids {
            scores[h as usize] = f32::NEG_INFINITY;
        }
    }
    let mut order: Vec<usize> = (1..scores.len())
        .filter(|&i| scores[i].is_finite())
        .collect();
    order.sort_by(|&x, &y| scores[y].total_cmp(&scores[x]).then(x.cmp(&y)));
    let item = |i: usize| data.ds.items[i - 1].clone();
    Ok(Recommendation {
        history: ids.iter().map(|&i| item(i as usize)).collect(),
        ranked: order
            .iter()
            .take(top)
            .map(|&i| (item(i), scores[i]))
            .collect(),
    })
}
