//! The highest-scoring items of a score row, in rank order: the teacher
//! cache's candidates, the consistency weight's "in the student's top-K"
//! and the selection signals all rank this way (ties by item id).

use distillrec_data::ItemId;

/// The `k` items with the largest scores of a padding-free row (column `j`
/// is item `j + 1`), in rank order: highest score first, ties by item id.
pub fn top_k_items(row: &[f32], k: usize) -> Vec<ItemId> {
    top_k_where(row, k, |_| true)
}

/// [`top_k_items`] among the columns `keep` accepts (a history mask). One
/// pass over the row that rejects most items with a single comparison
/// against the worst kept one, so that it costs about one read of the row
/// (it runs for every distilled row of every batch, and every cached row).
pub fn top_k_where(row: &[f32], k: usize, keep: impl Fn(usize) -> bool) -> Vec<ItemId> {
    use std::cmp::Ordering;
    let k = k.min(row.len());
    if k == 0 {
        return Vec::new();
    }
    // (score, item) sorted by rank, best first
    let mut top: Vec<(f32, u32)> = Vec::with_capacity(k + 1);
    const CHUNK: usize = 16;
    for (c, chunk) in row.chunks(CHUNK).enumerate() {
        // a whole chunk below the worst kept score is skipped with one
        // vectorised test; anything else (equal scores, ±0, NaN) takes the
        // exact path below
        if top.len() == k {
            let worst = top[k - 1].0;
            if chunk.iter().fold(true, |all, &x| all & (x < worst)) {
                continue;
            }
        }
        for (o, &x) in chunk.iter().enumerate() {
            let j = c * CHUNK + o;
            // items come in id order, so an equal score never displaces a kept item
            if top.len() == k && x.total_cmp(&top[k - 1].0) != Ordering::Greater {
                continue;
            }
            if !keep(j) {
                continue;
            }
            let at = top.partition_point(|&(y, _)| y.total_cmp(&x) != Ordering::Less);
            top.insert(at, (x, j as u32 + 1));
            top.truncate(k);
        }
    }
    top.into_iter().map(|(_, i)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::{top_k_items, top_k_where};
    use rand::{Rng, SeedableRng};

    #[test]
    fn top_k_is_in_rank_order_with_ties_by_id() {
        // 200 scores in a scrambled order; the top 10 must come back sorted
        // (highest first), which a partial selection alone does not give.
        let row: Vec<f32> = (0..200u32).map(|j| ((j * 73) % 200) as f32).collect();
        let top = top_k_items(&row, 10);
        let got: Vec<f32> = top.iter().map(|&i| row[i as usize - 1]).collect();
        assert_eq!(got, (190..200).rev().map(|v| v as f32).collect::<Vec<_>>());
        // with a mask: the best kept ones
        let odd = top_k_where(&row, 3, |j| row[j] as u32 % 2 == 1);
        let got: Vec<f32> = odd.iter().map(|&i| row[i as usize - 1]).collect();
        assert_eq!(got, vec![199.0, 197.0, 195.0]);
        // equal scores: the smaller item id first
        let tied = [1.0, 3.0, 3.0, 0.5, 3.0];
        assert_eq!(top_k_items(&tied, 4), vec![2, 3, 5, 1]);
        assert_eq!(top_k_items(&tied, 9).len(), 5);
        assert!(top_k_items(&tied, 0).is_empty());
    }

    /// Against a full sort, on rows with many ties.
    #[test]
    fn top_k_equals_a_full_sort() {
        let mut g = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for case in 0..300 {
            let n = 1 + case % 40;
            let row: Vec<f32> = (0..n).map(|_| g.gen_range(0..6) as f32 * 0.5).collect();
            let mut all: Vec<u32> = (1..=n as u32).collect();
            all.sort_by(|&a, &b| {
                row[b as usize - 1]
                    .total_cmp(&row[a as usize - 1])
                    .then(a.cmp(&b))
            });
            for k in [1, 3, 10, 50] {
                let want: Vec<u32> = all.iter().copied().take(k).collect();
                assert_eq!(top_k_items(&row, k), want, "{row:?}, k {k}");
                let keep = |j: usize| j % 3 != 1;
                let want: Vec<u32> = all
                    .iter()
                    .copied()
                    .filter(|&i| keep(i as usize - 1))
                    .take(k)
                    .collect();
                assert_eq!(top_k_where(&row, k, keep), want, "{row:?}, k {k}, masked");
            }
        }
    }
}
