//! Training units and batches.
//!
//! - objective `last`: one unit per training row; the input is the row's
//!   history window, the target the row's target.
//! - objective `all_positions`: windows of at most `max_len` positions that
//!   together cover every training target of a sequence once: the last
//!   window ends at the sequence's last training row, each earlier one at
//!   the last training row at least `max_len` positions before the end of
//!   the window after it. A unit names the training row its window ends at;
//!   every input position predicts the next item, and a position is
//!   supervised only if that next item is itself the target of a training
//!   row of the sequence (so validation/test targets never leak in, and
//!   rows dropped by `min_history` stay dropped).
//!
//! Negatives for the BCE loss are drawn uniformly from items that are
//! neither in the unit's history nor its target.

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use distillrec_config::Objective;
use distillrec_data::{Dataset, ItemId, Row, PAD};

/// One training unit: a row index into `ds.train`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unit {
    /// Index of the training row whose target ends this unit's window.
    pub row: usize,
}

/// The units of an objective for windows of `max_len`, in a fixed order
/// (sequence by sequence, windows from the first to the last).
pub fn units(ds: &Dataset, objective: Objective, max_len: usize) -> Vec<Unit> {
    match objective {
        Objective::Last => (0..ds.train.len()).map(|row| Unit { row }).collect(),
        Objective::AllPositions => {
            let max_len = max_len.max(1);
            let mut out = Vec::new();
            for at in row_positions(ds) {
                let mut ends = Vec::new();
                // the last training target, then the last one at least
                // `max_len` before each window's end: disjoint windows
                let mut bound = at.len();
                while let Some(end) = at[..bound].iter().rposition(|&r| r != NO_ROW) {
                    ends.push(at[end] as usize);
                    match end.checked_sub(max_len) {
                        Some(b) => bound = b + 1,
                        None => break,
                    }
                }
                out.extend(ends.into_iter().rev().map(|row| Unit { row }));
            }
            out
        }
    }
}

/// The training rows the objective supervises, in `ds.train` order: every
/// row, for both objectives (`all_positions` windows cover every training
/// target once). Selection draws from this pool, so a teacher budget is
/// never spent on rows the student cannot learn from.
pub fn trained_rows(ds: &Dataset, objective: Objective, max_len: usize) -> Vec<usize> {
    let mut rows = match objective {
        Objective::Last => return (0..ds.train.len()).collect(),
        Objective::AllPositions => Vec::with_capacity(ds.train.len()),
    };
    let at = row_positions(ds);
    for u in units(ds, objective, max_len) {
        let row = &ds.train[u.row];
        let pos = row.pos as usize;
        let start = pos.saturating_sub(max_len);
        for &r in &at[row.seq as usize][start + 1..=pos] {
            if r != NO_ROW {
                rows.push(r as usize);
            }
        }
    }
    rows.sort_unstable();
    rows
}

/// Marks "no training row" in [`HostBatch::rows`] and [`row_positions`].
pub const NO_ROW: u32 = u32::MAX;

/// For `all_positions`: per sequence and position, the index into
/// `ds.train` of the training row whose target sits there ([`NO_ROW`] if
/// that position is not a training target).
pub fn row_positions(ds: &Dataset) -> Vec<Vec<u32>> {
    let mut at: Vec<Vec<u32>> = ds
        .sequences
        .iter()
        .map(|s| vec![NO_ROW; s.items.len()])
        .collect();
    for (i, r) in ds.train.iter().enumerate() {
        at[r.seq as usize][r.pos as usize] = i as u32;
    }
    at
}

/// A host-side training batch.
pub struct HostBatch {
    /// Left-padded inputs `[B, L]`.
    pub inputs: Vec<ItemId>,
    /// Targets: `[B]` for `last`, `[B·L]` for `all_positions` (0 = none).
    pub targets: Vec<ItemId>,
    /// Per target: the index into `ds.train` of the row it supervises
    /// ([`NO_ROW`] where the target is 0); distillation looks up the
    /// teacher's output for that row by it.
    pub rows: Vec<u32>,
    /// Negatives `[targets.len(), n]` (empty when `n = 0`).
    pub negatives: Vec<ItemId>,
    /// Batch size.
    pub b: usize,
}

/// Builds batches for one epoch.
pub struct Batcher<'a> {
    ds: &'a Dataset,
    objective: Objective,
    max_len: usize,
    negatives: usize,
    row_at: Vec<Vec<u32>>,
    seen: Vec<u32>,
    stamp: u32,
}

impl<'a> Batcher<'a> {
    /// A batcher over `ds` for the given objective, window and negatives.
    pub fn new(ds: &'a Dataset, objective: Objective, max_len: usize, negatives: usize) -> Self {
        let row_at = if objective == Objective::AllPositions {
            row_positions(ds)
        } else {
            Vec::new()
        };
        Batcher {
            ds,
            objective,
            max_len,
            negatives,
            row_at,
            seen: vec![0; ds.num_items() + 1],
            stamp: 0,
        }
    }

    /// Shuffles `units` with the epoch generator.
    pub fn shuffle(units: &mut [Unit], rng: &mut ChaCha8Rng) {
        units.shuffle(rng);
    }

    fn sample_negatives(
        &mut self,
        history: &[ItemId],
        target: ItemId,
        rng: &mut ChaCha8Rng,
        out: &mut Vec<ItemId>,
    ) {
        let n_items = self.ds.num_items() as u32;
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.seen.fill(0);
            self.stamp = 1;
        }
        let mut blocked = 0u32;
        for &i in history.iter().chain(std::iter::once(&target)) {
            if self.seen[i as usize] != self.stamp {
                self.seen[i as usize] = self.stamp;
                blocked += 1;
            }
        }
        for _ in 0..self.negatives {
            if blocked >= n_items {
                out.push(1 + rng.gen_range(0..n_items)); // degenerate catalogue
                continue;
            }
            loop {
                let c = 1 + rng.gen_range(0..n_items);
                if self.seen[c as usize] != self.stamp {
                    out.push(c);
                    break;
                }
            }
        }
    }

    /// The batch for `units`.
    pub fn batch(&mut self, units: &[Unit], rng: &mut ChaCha8Rng) -> HostBatch {
        let l = self.max_len;
        let mut inputs = vec![PAD; units.len() * l];
        let mut targets = Vec::new();
        let mut rows = Vec::new();
        let mut negatives = Vec::new();
        for (k, u) in units.iter().enumerate() {
            let row: &Row = &self.ds.train[u.row];
            let seq = &self.ds.sequences[row.seq as usize].items;
            let pos = row.pos as usize;
            let start = pos.saturating_sub(l);
            let window = &seq[start..pos];
            let slot = &mut inputs[k * l..(k + 1) * l];
            distillrec_data::batch::left_pad_into(slot, window);
            match self.objective {
                Objective::Last => {
                    targets.push(seq[pos]);
                    rows.push(u.row as u32);
                    if self.negatives > 0 {
                        self.sample_negatives(&seq[..pos], seq[pos], rng, &mut negatives);
                    }
                }
                Objective::AllPositions => {
                    let pad = l - window.len();
                    for j in 0..l {
                        // input position j holds seq[start + j - pad]; its target is the next item
                        let r = if j < pad {
                            NO_ROW
                        } else {
                            self.row_at[row.seq as usize][start + (j - pad) + 1]
                        };
                        let t = if r == NO_ROW {
                            PAD
                        } else {
                            seq[start + (j - pad) + 1]
                        };
                        targets.push(t);
                        rows.push(r);
                        if self.negatives > 0 {
                            if t == PAD {
                                negatives.extend(std::iter::repeat_n(1, self.negatives));
                            } else {
                                let tpos = start + (j - pad) + 1;
                                self.sample_negatives(&seq[..tpos], t, rng, &mut negatives);
                            }
                        }
                    }
                }
            }
        }
        HostBatch {
            inputs,
            targets,
            rows,
            negatives,
            b: units.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use distillrec_data::prepare::{prepare, PrepareOptions, RawInteraction, RawLog};
    use rand::SeedableRng;

    fn ds() -> Dataset {
        let mut log = RawLog::default();
        let u = log.users.intern("a");
        for (t, i) in ["1", "2", "3", "4", "5", "6"].iter().enumerate() {
            let item = log.items.intern(i);
            log.interactions.push(RawInteraction {
                user: u,
                item,
                timestamp: t as i64,
                rating: None,
            });
        }
        prepare("t", &log, &PrepareOptions::default(), 42).unwrap()
    }

    #[test]
    fn all_positions_targets_are_training_targets_only() {
        let ds = ds(); // items 1..6; train targets at pos 1..=3, valid 5, test 6
        let us = units(&ds, Objective::AllPositions, 5);
        assert_eq!(us.len(), 1);
        let mut b = Batcher::new(&ds, Objective::AllPositions, 5, 0);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let hb = b.batch(&us, &mut rng);
        // last training row: pos 3 (target 4), history [1, 2, 3]
        assert_eq!(hb.inputs, vec![0, 0, 1, 2, 3]);
        assert_eq!(hb.targets, vec![0, 0, 2, 3, 4]);
        // each supervised position names the training row whose target it is
        let keys: Vec<Option<&str>> = hb
            .rows
            .iter()
            .map(|&r| (r != NO_ROW).then(|| ds.train[r as usize].key.as_str()))
            .collect();
        assert_eq!(
            keys,
            vec![None, None, Some("a:1"), Some("a:2"), Some("a:3")]
        );
        assert!(
            !hb.targets.contains(&5) && !hb.targets.contains(&6),
            "valid/test targets leaked"
        );
    }

    #[test]
    fn windows_cover_every_training_target_once() {
        let ds = ds(); // items 1..6; train targets at pos 1, 2, 3
        assert_eq!(trained_rows(&ds, Objective::Last, 2), vec![0, 1, 2]);
        // windows of 2: one ending at pos 3 (targets at 2, 3), one at pos 1
        let us = units(&ds, Objective::AllPositions, 2);
        let ends: Vec<&str> = us.iter().map(|u| ds.train[u.row].key.as_str()).collect();
        assert_eq!(ends, vec!["a:1", "a:3"]);
        let mut b = Batcher::new(&ds, Objective::AllPositions, 2, 0);
        let hb = b.batch(&us, &mut ChaCha8Rng::seed_from_u64(0));
        assert_eq!(hb.inputs, vec![0, 1, 2, 3]);
        assert_eq!(hb.targets, vec![0, 2, 3, 4]);
        let mut supervised: Vec<u32> = hb.rows.iter().copied().filter(|&r| r != NO_ROW).collect();
        supervised.sort_unstable();
        assert_eq!(supervised, vec![0, 1, 2], "each training row exactly once");
        assert_eq!(trained_rows(&ds, Objective::AllPositions, 2), vec![0, 1, 2]);
        // windows of 1: one per training target
        assert_eq!(units(&ds, Objective::AllPositions, 1).len(), 3);
        assert_eq!(units(&ds, Objective::AllPositions, 5).len(), 1);
    }

    #[test]
    fn last_objective_and_negatives_avoid_history_and_target() {
        let ds = ds();
        let us = units(&ds, Objective::Last, 2);
        assert_eq!(us.len(), 3);
        let mut b = Batcher::new(&ds, Objective::Last, 2, 3);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let hb = b.batch(&us[2..], &mut rng); // history [1,2,3], target 4
        assert_eq!(hb.inputs, vec![2, 3]);
        assert_eq!(hb.targets, vec![4]);
        assert_eq!(hb.negatives.len(), 3);
        assert!(
            hb.negatives.iter().all(|&n| n == 5 || n == 6),
            "{:?}",
            hb.negatives
        );
    }
}
