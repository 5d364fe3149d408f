//! From a raw interaction log to a [`Dataset`]: filtering, ordering, ids and
//! splits (SPEC 3).
//!
//! Order of operations, each documented because it moves the metrics:
//! 1. drop interactions below `min_rating` (implicit feedback otherwise);
//! 2. sort each user's interactions by timestamp with a **stable** sort, so
//!    same-second neighbours keep the order of the source file;
//! 3. optionally drop consecutive repeats of the same item;
//! 4. iterate the k-core filter (users with fewer than `max(k_core,
//!    min_seq_len)` interactions, items with fewer than `k_core`) to a fixpoint;
//! 5. give items ids `1..=N` in raw-id order (numeric when every raw id is a
//!    number) and order sequences by raw user id the same way;
//! 6. split (seeded where a choice is random).

use std::collections::HashMap;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::dataset::{Dataset, Item, ItemId, Row, Sequence};
use crate::error::{DataError, Result};

/// Maps raw string ids to dense indices in first-seen order.
#[derive(Clone, Debug, Default)]
pub struct Interner {
    index: HashMap<String, u32>,
    names: Vec<String>,
}

impl Interner {
    /// The index of `name`, adding it if new.
    pub fn intern(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        let i = self.names.len() as u32;
        self.index.insert(name.to_string(), i);
        self.names.push(name.to_string());
        i
    }

    /// The index of `name` if it was interned.
    pub fn get(&self, name: &str) -> Option<u32> {
        self.index.get(name).copied()
    }

    /// The raw name of index `i`.
    pub fn name(&self, i: u32) -> &str {
        &self.names[i as usize]
    }

    /// Number of distinct names.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether nothing was interned.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// One interaction as read from a source file, with interned ids.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RawInteraction {
    /// Index into [`RawLog::users`].
    pub user: u32,
    /// Index into [`RawLog::items`].
    pub item: u32,
    /// Unix timestamp (any monotone unit).
    pub timestamp: i64,
    /// Explicit rating if the source has one.
    pub rating: Option<f32>,
}

/// An interaction log plus item titles, the common output of every raw reader.
#[derive(Clone, Debug, Default)]
pub struct RawLog {
    /// Interactions in source-file order (the tie rule depends on it).
    pub interactions: Vec<RawInteraction>,
    /// Raw user ids.
    pub users: Interner,
    /// Raw item ids (catalogue items may have no interaction).
    pub items: Interner,
    /// Titles by item index; items without one get their raw id as title.
    pub titles: HashMap<u32, String>,
}

crate::named_enum! {
    /// How the evaluation rows are cut from the sequences.
    pub enum SplitKind {
        /// Per user: last item test, second-to-last validation, the rest trains.
        LeaveOneOut = "leave_one_out",
        /// All interactions sorted by time and cut by count at
        /// `1 - valid - test` and `1 - test` (BIGRec/DLLM2Rec style).
        Temporal = "temporal",
        /// Users shuffled (seeded) into train/valid/test groups; valid and test
        /// users give one row each, their last item (iLoRA LastFM style).
        ByUser = "by_user",
    }
}

crate::named_enum! {
    /// What to do with an item repeated right after itself.
    pub enum Dedup {
        /// Keep every interaction.
        Keep = "keep",
        /// Drop an interaction whose item equals the previous one of that user.
        DropConsecutive = "drop_consecutive",
    }
}

/// Options of [`prepare`]. The `[dataset]` config group flattens these
/// (its keys are these field names), so they are defined once, here.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PrepareOptions {
    /// Keep only interactions rated at least this (None: all are positive).
    pub min_rating: Option<f32>,
    /// k-core threshold for users and items (0 or 1: off).
    pub k_core: usize,
    /// Users with fewer interactions are dropped (3 = one train, valid, test).
    pub min_seq_len: usize,
    /// Consecutive-repeat handling.
    pub dedup: Dedup,
    /// Split strategy.
    pub split: SplitKind,
    /// Fraction of interactions (temporal) or users (by user) for validation.
    pub valid_fraction: f64,
    /// Fraction for test.
    pub test_fraction: f64,
    /// Rows whose history is shorter than this are not made (None: the
    /// layout's default, [`PrepareOptions::min_history`] for raw logs).
    pub min_history: Option<usize>,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        PrepareOptions {
            min_rating: None,
            k_core: 0,
            min_seq_len: 3,
            dedup: Dedup::Keep,
            split: SplitKind::LeaveOneOut,
            valid_fraction: 0.1,
            test_fraction: 0.1,
            min_history: None,
        }
    }
}

impl PrepareOptions {
    /// The minimum history length in force for a raw log: the key, or 1.
    pub fn min_history(&self) -> usize {
        self.min_history.unwrap_or(1)
    }

    /// Rejects option combinations that cannot produce a sound split.
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(DataError::Invalid(m));
        if !(0.0..1.0).contains(&self.valid_fraction)
            || !(0.0..1.0).contains(&self.test_fraction)
            || self.valid_fraction + self.test_fraction >= 1.0
        {
            return bad(format!(
                "dataset.valid_fraction ({}) and dataset.test_fraction ({}) must be in [0, 1) and sum below 1",
                self.valid_fraction, self.test_fraction
            ));
        }
        if self.split == SplitKind::LeaveOneOut && self.min_seq_len < 3 {
            return bad(format!(
                "dataset.min_seq_len = {} is too small for leave_one_out, which needs 3 (train, valid, test)",
                self.min_seq_len
            ));
        }
        if self.min_history == Some(0) {
            return bad("dataset.min_history must be at least 1".into());
        }
        if let Some(r) = self.min_rating {
            if !r.is_finite() {
                return bad("dataset.min_rating must be a finite number".into());
            }
        }
        Ok(())
    }
}

/// Orders raw ids numerically when they all parse as integers, else as text.
fn raw_order(names: &[&str]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..names.len()).collect();
    let numeric: Option<Vec<i128>> = names.iter().map(|s| s.parse::<i128>().ok()).collect();
    match numeric {
        Some(nums) => idx.sort_by_key(|&i| nums[i]),
        None => idx.sort_by(|&a, &b| names[a].cmp(names[b])),
    }
    idx
}

/// Builds a dataset from a raw log (see the module doc for the rules).
/// `seed` drives every random choice of the split (the run seed).
pub fn prepare(name: &str, log: &RawLog, opts: &PrepareOptions, seed: u64) -> Result<Dataset> {
    opts.check()?;
    // 1. rating filter; 2. group per user keeping file order, then stable sort.
    let mut per_user: Vec<Vec<(i64, u32, usize)>> = vec![Vec::new(); log.users.len()];
    for (file_idx, it) in log.interactions.iter().enumerate() {
        if let (Some(min), Some(r)) = (opts.min_rating, it.rating) {
            if r < min {
                continue;
            }
        }
        per_user[it.user as usize].push((it.timestamp, it.item, file_idx));
    }
    for seq in &mut per_user {
        seq.sort_by_key(|&(ts, _, _)| ts); // stable: ties keep file order
        if opts.dedup == Dedup::DropConsecutive {
            seq.dedup_by_key(|x| x.1);
        }
    }
    // 4. k-core and minimum length to a fixpoint.
    let user_min = opts.k_core.max(opts.min_seq_len).max(1);
    let item_min = opts.k_core.max(1);
    let mut item_alive = vec![true; log.items.len()];
    loop {
        let mut item_count = vec![0usize; log.items.len()];
        let mut changed = false;
        for seq in &mut per_user {
            if seq.is_empty() {
                continue;
            }
            let before = seq.len();
            seq.retain(|x| item_alive[x.1 as usize]);
            if seq.len() < user_min {
                seq.clear();
            }
            changed |= seq.len() != before;
            for x in seq.iter() {
                item_count[x.1 as usize] += 1;
            }
        }
        for (alive, &c) in item_alive.iter_mut().zip(&item_count) {
            if *alive && c < item_min {
                *alive = false;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    // 5. ids.
    let used_items: Vec<u32> = {
        let mut used = vec![false; log.items.len()];
        for seq in &per_user {
            for x in seq {
                used[x.1 as usize] = true;
            }
        }
        (0..log.items.len() as u32)
            .filter(|&i| used[i as usize])
            .collect()
    };
    if used_items.is_empty() {
        return Err(DataError::Invalid(format!(
            "dataset '{name}': no interaction is left after filtering (min_rating {}, k_core {}, min_seq_len {})",
            opts.min_rating.map_or("none".to_string(), |r| r.to_string()),
            opts.k_core, opts.min_seq_len
        )));
    }
    let item_names: Vec<&str> = used_items.iter().map(|&i| log.items.name(i)).collect();
    let mut item_id = vec![0 as ItemId; log.items.len()];
    let mut items = Vec::with_capacity(used_items.len());
    for (rank, k) in raw_order(&item_names).into_iter().enumerate() {
        let raw = used_items[k];
        item_id[raw as usize] = rank as ItemId + 1;
        items.push(Item {
            raw_id: log.items.name(raw).to_string(),
            title: log
                .titles
                .get(&raw)
                .cloned()
                .unwrap_or_else(|| log.items.name(raw).to_string()),
        });
    }
    let users: Vec<u32> = (0..log.users.len() as u32)
        .filter(|&u| !per_user[u as usize].is_empty())
        .collect();
    let user_names: Vec<&str> = users.iter().map(|&u| log.users.name(u)).collect();
    let mut sequences = Vec::with_capacity(users.len());
    let mut file_pos: Vec<Vec<usize>> = Vec::with_capacity(users.len());
    for k in raw_order(&user_names) {
        let u = users[k];
        let seq = &per_user[u as usize];
        sequences.push(Sequence {
            user: log.users.name(u).to_string(),
            items: seq.iter().map(|x| item_id[x.1 as usize]).collect(),
            timestamps: Some(seq.iter().map(|x| x.0).collect()),
        });
        file_pos.push(seq.iter().map(|x| x.2).collect());
    }
    // 6. split.
    let (train, valid, test) = split(&sequences, &file_pos, opts, seed);
    for (which, rows) in [("train", &train), ("valid", &valid), ("test", &test)] {
        if rows.is_empty() {
            return Err(DataError::Invalid(format!(
                "dataset '{name}': the {which} split has no rows: {}",
                empty_split_reason(which, sequences.len(), opts)
            )));
        }
    }
    let ds = Dataset {
        name: name.to_string(),
        items,
        sequences,
        train,
        valid,
        test,
        users_known: true,
        row_layout: false,
        provenance: serde_json::json!({
            "options": provenance_options(opts, seed),
            "tie_rule": "per-user stable sort by timestamp; equal timestamps keep source-file order",
            "item_ids": "1..=N in raw-id order (numeric if all raw ids are integers)",
        }),
    };
    ds.validate()?;
    Ok(ds)
}

/// The options as recorded in `dataset.json`: every key resolved, and the
/// seed of the split.
fn provenance_options(opts: &PrepareOptions, seed: u64) -> serde_json::Value {
    let mut v = serde_json::to_value(opts).expect("options serialise");
    v["min_history"] = serde_json::json!(opts.min_history());
    v["seed"] = serde_json::json!(seed);
    v
}

/// Why `split` of a `prepare` over `users` sequences came out empty, in
/// terms of the options a user can change.
fn empty_split_reason(split: &str, users: usize, opts: &PrepareOptions) -> String {
    let h = opts.min_history();
    let fraction = match split {
        "valid" => opts.valid_fraction,
        _ => opts.test_fraction,
    };
    match (opts.split, split) {
        (SplitKind::LeaveOneOut, "train") => format!(
            "leave_one_out trains on positions min_history ({h}) .. len - 2, and no sequence is longer than {}",
            h + 2
        ),
        (SplitKind::LeaveOneOut, _) => format!(
            "leave_one_out needs a sequence of at least {} items (dataset.min_history = {h}); none is left after filtering",
            h + 2
        ),
        (SplitKind::Temporal, "train") => format!(
            "the temporal cut leaves no training interaction with at least dataset.min_history = {h} earlier items"
        ),
        (SplitKind::Temporal, _) => format!(
            "dataset.{split}_fraction = {fraction} of the timeline holds no interaction with at least dataset.min_history = {h} earlier items of its user"
        ),
        (SplitKind::ByUser, "train") => format!(
            "no training user has more than dataset.min_history = {h} items"
        ),
        (SplitKind::ByUser, _) => format!(
            "dataset.{split}_fraction = {fraction} of {users} users gives {} users, or none of them has more than dataset.min_history = {h} items",
            (fraction * users as f64).round() as usize
        ),
    }
}

fn row(seq: &Sequence, s: usize, pos: usize) -> Row {
    Row {
        key: format!("{}:{pos}", seq.user),
        seq: s as u32,
        pos: pos as u32,
    }
}

type Splits = (Vec<Row>, Vec<Row>, Vec<Row>);

fn split(
    sequences: &[Sequence],
    file_pos: &[Vec<usize>],
    opts: &PrepareOptions,
    seed: u64,
) -> Splits {
    let (mut train, mut valid, mut test) = (Vec::new(), Vec::new(), Vec::new());
    let h = opts.min_history();
    match opts.split {
        SplitKind::LeaveOneOut => {
            for (s, seq) in sequences.iter().enumerate() {
                let n = seq.items.len();
                for pos in h..n.saturating_sub(2) {
                    train.push(row(seq, s, pos));
                }
                if n >= h + 2 {
                    valid.push(row(seq, s, n - 2));
                }
                if n > h {
                    test.push(row(seq, s, n - 1));
                }
            }
        }
        SplitKind::Temporal => {
            // Global order: timestamp, then source-file order.
            let mut all: Vec<(i64, usize, usize, usize)> = Vec::new();
            for (s, seq) in sequences.iter().enumerate() {
                let ts = seq.timestamps.as_deref().unwrap_or(&[]);
                for (pos, &fp) in file_pos[s].iter().enumerate() {
                    all.push((ts.get(pos).copied().unwrap_or(0), fp, s, pos));
                }
            }
            all.sort_unstable();
            let n = all.len();
            let train_end =
                ((1.0 - opts.valid_fraction - opts.test_fraction) * n as f64).round() as usize;
            let valid_end = ((1.0 - opts.test_fraction) * n as f64).round() as usize;
            let mut which = vec![Vec::new(); sequences.len()];
            for (rank, &(_, _, s, pos)) in all.iter().enumerate() {
                let part = if rank < train_end {
                    0u8
                } else if rank < valid_end {
                    1
                } else {
                    2
                };
                which[s].push((pos, part));
            }
            for (s, seq) in sequences.iter().enumerate() {
                let mut parts = std::mem::take(&mut which[s]);
                parts.sort_unstable();
                for (pos, part) in parts {
                    if pos < h {
                        continue;
                    }
                    let r = row(seq, s, pos);
                    match part {
                        0 => train.push(r),
                        1 => valid.push(r),
                        _ => test.push(r),
                    }
                }
            }
        }
        SplitKind::ByUser => {
            let mut order: Vec<usize> = (0..sequences.len()).collect();
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
            let n = order.len();
            let n_valid = (opts.valid_fraction * n as f64).round() as usize;
            let n_test = (opts.test_fraction * n as f64).round() as usize;
            let mut group = vec![0u8; n];
            for (i, &s) in order.iter().enumerate() {
                group[s] = if i < n_valid {
                    1
                } else if i < n_valid + n_test {
                    2
                } else {
                    0
                };
            }
            for (s, seq) in sequences.iter().enumerate() {
                let len = seq.items.len();
                match group[s] {
                    0 => (h..len).for_each(|pos| train.push(row(seq, s, pos))),
                    g if len > h => {
                        let r = row(seq, s, len - 1);
                        if g == 1 {
                            valid.push(r)
                        } else {
                            test.push(r)
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    (train, valid, test)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a log from `(user, item, ts, rating)` tuples.
    pub(crate) fn log(rows: &[(&str, &str, i64, f32)]) -> RawLog {
        let mut log = RawLog::default();
        for &(u, i, ts, r) in rows {
            let user = log.users.intern(u);
            let item = log.items.intern(i);
            log.interactions.push(RawInteraction {
                user,
                item,
                timestamp: ts,
                rating: Some(r),
            });
        }
        log
    }

    fn items_of(ds: &Dataset, user: &str) -> Vec<String> {
        let s = ds.sequences.iter().find(|s| s.user == user).unwrap();
        s.items
            .iter()
            .map(|&i| ds.items[i as usize - 1].raw_id.clone())
            .collect()
    }

    #[test]
    fn stable_sort_keeps_file_order_on_ties_and_ids_are_dense() {
        let l = log(&[
            ("u1", "30", 5, 4.0),
            ("u1", "10", 5, 4.0),
            ("u1", "20", 1, 4.0),
            ("u1", "2", 9, 4.0),
        ]);
        let ds = prepare("t", &l, &PrepareOptions::default(), 42).unwrap();
        assert_eq!(items_of(&ds, "u1"), ["20", "30", "10", "2"]);
        // numeric raw-id order: 2, 10, 20, 30 -> ids 1..=4
        let raws: Vec<_> = ds.items.iter().map(|i| i.raw_id.as_str()).collect();
        assert_eq!(raws, ["2", "10", "20", "30"]);
        assert_eq!(ds.sequences[0].items, vec![3, 4, 2, 1]);
    }

    #[test]
    fn leave_one_out_rows_never_contain_their_target() {
        let l = log(&[
            ("a", "1", 1, 5.0),
            ("a", "2", 2, 5.0),
            ("a", "3", 3, 5.0),
            ("a", "4", 4, 5.0),
            ("a", "5", 5, 5.0),
        ]);
        let ds = prepare("t", &l, &PrepareOptions::default(), 42).unwrap();
        let t: Vec<_> = ds.train.iter().map(|r| (r.pos, ds.target(r))).collect();
        assert_eq!(t, vec![(1, 2), (2, 3)]);
        assert_eq!(ds.target(&ds.valid[0]), 4);
        assert_eq!(ds.history(&ds.valid[0]), &[1, 2, 3]);
        assert_eq!(ds.target(&ds.test[0]), 5);
        assert_eq!(ds.history(&ds.test[0]), &[1, 2, 3, 4]);
        assert_eq!(ds.test[0].key, "a:4");
        // popularity comes from training targets only: items 4 and 5 never count
        assert_eq!(ds.train_target_counts(), vec![0, 0, 1, 1, 0, 0]);
    }

    #[test]
    fn min_rating_k_core_and_dedup() {
        let l = log(&[
            ("a", "1", 1, 5.0),
            ("a", "1", 2, 5.0),
            ("a", "2", 3, 1.0),
            ("a", "3", 4, 5.0),
            ("a", "4", 5, 5.0),
            ("b", "1", 1, 5.0),
            ("b", "3", 2, 5.0),
            ("b", "4", 3, 5.0),
            ("c", "9", 1, 5.0),
            ("c", "1", 2, 5.0),
            ("c", "3", 3, 5.0),
            ("c", "4", 4, 5.0),
            ("d", "1", 1, 5.0),
            ("d", "3", 2, 5.0),
            ("d", "4", 3, 5.0),
            ("d", "1", 4, 5.0),
            ("d", "3", 5, 5.0),
        ]);
        let opts = PrepareOptions {
            min_rating: Some(4.0),
            k_core: 2,
            dedup: Dedup::DropConsecutive,
            ..PrepareOptions::default()
        };
        let ds = prepare("t", &l, &opts, 42).unwrap();
        // item 2 (rating 1) and item 9 (one interaction) are gone; the repeat of 1 too
        assert_eq!(items_of(&ds, "a"), ["1", "3", "4"]);
        assert_eq!(items_of(&ds, "c"), ["1", "3", "4"]);
        assert_eq!(ds.num_items(), 3);
    }

    #[test]
    fn k_core_iterates_to_a_fixpoint() {
        // Dropping item x leaves user b with 2 < 3 interactions, which then
        // leaves item y with one interaction: everything of b and y goes.
        let l = log(&[
            ("a", "1", 1, 5.0),
            ("a", "2", 2, 5.0),
            ("a", "3", 3, 5.0),
            ("a", "2", 4, 5.0),
            ("a", "3", 5, 5.0),
            ("c", "1", 1, 5.0),
            ("c", "2", 2, 5.0),
            ("c", "3", 3, 5.0),
            ("b", "x", 1, 5.0),
            ("b", "y", 2, 5.0),
            ("b", "1", 3, 5.0),
            ("d", "y", 1, 5.0),
            ("d", "2", 2, 5.0),
            ("d", "3", 3, 5.0),
            ("d", "1", 4, 5.0),
        ]);
        let opts = PrepareOptions {
            k_core: 2,
            ..PrepareOptions::default()
        };
        let ds = prepare("t", &l, &opts, 42).unwrap();
        assert_eq!(ds.num_users(), Some(3));
        assert_eq!(ds.train.len(), 2);
        assert!(ds.items.iter().all(|i| i.raw_id != "x" && i.raw_id != "y"));
        assert_eq!(items_of(&ds, "d"), ["2", "3", "1"]);
    }

    #[test]
    fn temporal_split_cuts_the_global_timeline() {
        let mut rows = vec![];
        for t in 0..10i64 {
            rows.push(("a", ["1", "2", "3", "4", "5"][(t % 5) as usize], 2 * t, 5.0));
            rows.push((
                "b",
                ["2", "3", "4", "5", "1"][(t % 5) as usize],
                2 * t + 1,
                5.0,
            ));
        }
        let l = log(&rows);
        let opts = PrepareOptions {
            split: SplitKind::Temporal,
            ..PrepareOptions::default()
        };
        let ds = prepare("t", &l, &opts, 42).unwrap();
        // 20 interactions: 16 train, 2 valid, 2 test; the first of each user has no history.
        assert_eq!((ds.train.len(), ds.valid.len(), ds.test.len()), (14, 2, 2));
        let max_train_ts = ds
            .train
            .iter()
            .map(|r| ds.sequences[r.seq as usize].timestamps.as_ref().unwrap()[r.pos as usize])
            .max()
            .unwrap();
        let min_test_ts = ds
            .test
            .iter()
            .map(|r| ds.sequences[r.seq as usize].timestamps.as_ref().unwrap()[r.pos as usize])
            .min()
            .unwrap();
        assert!(max_train_ts < min_test_ts);
        // validation and test rows see the whole earlier history, train part included
        assert_eq!(ds.valid[0].pos, 8);
    }

    #[test]
    fn by_user_split_is_seeded_and_gives_one_row_per_held_out_user() {
        let mut rows = vec![];
        let users: Vec<String> = (0..20).map(|u| format!("u{u}")).collect();
        for u in &users {
            for t in 0..5i64 {
                rows.push((u.as_str(), ["1", "2", "3", "4", "5"][t as usize], t, 5.0));
            }
        }
        let l = log(&rows);
        let opts = PrepareOptions {
            split: SplitKind::ByUser,
            ..PrepareOptions::default()
        };
        let a = prepare("t", &l, &opts, 42).unwrap();
        let b = prepare("t", &l, &opts, 42).unwrap();
        assert_eq!(a, b);
        assert_eq!((a.valid.len(), a.test.len()), (2, 2));
        assert_eq!(a.train.len(), 16 * 4);
        assert!(a.valid.iter().all(|r| r.pos == 4));
        let c = prepare("t", &l, &opts, 7).unwrap();
        assert_ne!(a.valid, c.valid);
    }

    #[test]
    fn filtering_everything_away_is_an_error() {
        let l = log(&[("a", "1", 1, 1.0), ("a", "2", 2, 1.0), ("a", "3", 3, 1.0)]);
        let opts = PrepareOptions {
            min_rating: Some(4.0),
            ..PrepareOptions::default()
        };
        let e = prepare("t", &l, &opts, 42).unwrap_err().to_string();
        assert!(e.contains("no interaction is left"), "{e}");
    }

    #[test]
    fn empty_validation_or_test_split_is_refused_with_the_reason() {
        let mut rows = Vec::new();
        let users = ["a", "b", "c", "d"];
        for (u, name) in users.iter().enumerate() {
            for t in 0..5 {
                rows.push((*name, ["1", "2", "3", "4", "5"][(u + t) % 5], t as i64, 1.0));
            }
        }
        let l = log(&rows);
        let opts = PrepareOptions {
            split: SplitKind::ByUser,
            valid_fraction: 0.0,
            ..PrepareOptions::default()
        };
        let e = prepare("t", &l, &opts, 42).unwrap_err().to_string();
        assert!(
            e.contains(
                "the valid split has no rows: dataset.valid_fraction = 0 of 4 users gives 0 users"
            ),
            "{e}"
        );
        let opts = PrepareOptions {
            split: SplitKind::Temporal,
            test_fraction: 0.0,
            ..PrepareOptions::default()
        };
        let e = prepare("t", &l, &opts, 42).unwrap_err().to_string();
        assert!(
            e.contains("the test split has no rows: dataset.test_fraction = 0"),
            "{e}"
        );
        let opts = PrepareOptions {
            min_history: Some(4),
            ..PrepareOptions::default()
        };
        let e = prepare("t", &l, &opts, 42).unwrap_err().to_string();
        assert!(
            e.contains("the train split has no rows: leave_one_out"),
            "{e}"
        );
    }
}
