//! The in-memory dataset every later stage reads.
//!
//! Conventions (SPEC 2), fixed here and nowhere else:
//! - item ids are dense `1..=N`; [`PAD`] (`0`) is padding and never an item, so
//!   a score vector has `N + 1` columns and column `i` is item `i`;
//! - a row is `(sequence, position)`: its target is `items[pos]` and its
//!   history is `items[..pos]`, so the target can never be in its own history
//!   slot and no row stores a copy of the history that could drift.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// Internal item id: `1..=N`, with `0` reserved for padding.
pub type ItemId = u32;

/// The padding id. Column 0 of every score matrix.
pub const PAD: ItemId = 0;

/// One catalogue item. Its id is its index in [`Dataset::items`] plus one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// The id in the source files (ASIN, MovieLens id, reference-layout id).
    pub raw_id: String,
    /// The human-readable title, used in prompts and `recommend` output.
    pub title: String,
}

/// One ordered interaction sequence: a user's history, or for the processed
/// reference layouts one row's history followed by its target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sequence {
    /// The user's raw id (or a group label for the reference layouts).
    pub user: String,
    /// Item ids, oldest first.
    pub items: Vec<ItemId>,
    /// Unix timestamps aligned with `items`, when the source has them.
    pub timestamps: Option<Vec<i64>>,
}

/// One supervised example: predict `sequences[seq].items[pos]` from the
/// items before it. `key` is stable across re-preparation of the same data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// Stable row key, the join key of the teacher cache (SPEC 2.5).
    pub key: String,
    /// Index into [`Dataset::sequences`].
    pub seq: u32,
    /// Position of the target within the sequence; the history is `..pos`.
    pub pos: u32,
}

/// Which split a set of rows belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitName {
    /// Training rows.
    Train,
    /// Validation rows (model selection only).
    Valid,
    /// Test rows (touched once, at the end).
    Test,
}

impl SplitName {
    /// All splits in file order.
    pub const ALL: [SplitName; 3] = [SplitName::Train, SplitName::Valid, SplitName::Test];

    /// The lowercase name used in file names and metric keys.
    pub fn as_str(self) -> &'static str {
        match self {
            SplitName::Train => "train",
            SplitName::Valid => "valid",
            SplitName::Test => "test",
        }
    }
}

/// A prepared dataset: catalogue, sequences and the three row splits.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Dataset name (`ml-1m`, `synthetic`, ...).
    pub name: String,
    /// Catalogue; item id `i` is `items[i - 1]`.
    pub items: Vec<Item>,
    /// All sequences referenced by rows.
    pub sequences: Vec<Sequence>,
    /// Training rows.
    pub train: Vec<Row>,
    /// Validation rows.
    pub valid: Vec<Row>,
    /// Test rows.
    pub test: Vec<Row>,
    /// Whether `Sequence::user` identifies real users (false for layouts
    /// whose rows carry no user id, such as DLLM2Rec's CSVs).
    pub users_known: bool,
    /// Whether each sequence is one row's history plus its target (the
    /// processed reference layouts) rather than a user's whole log.
    pub row_layout: bool,
    /// How the dataset was made: reader, options, tie rule. Free-form.
    pub provenance: serde_json::Value,
}

impl Dataset {
    /// Number of catalogue items `N` (ids `1..=N`).
    pub fn num_items(&self) -> usize {
        self.items.len()
    }

    /// The rows of one split.
    pub fn rows(&self, split: SplitName) -> &[Row] {
        match split {
            SplitName::Train => &self.train,
            SplitName::Valid => &self.valid,
            SplitName::Test => &self.test,
        }
    }

    /// The full history of a row (every earlier item, not truncated).
    pub fn history(&self, row: &Row) -> &[ItemId] {
        &self.sequences[row.seq as usize].items[..row.pos as usize]
    }

    /// The item a row must predict.
    pub fn target(&self, row: &Row) -> ItemId {
        self.sequences[row.seq as usize].items[row.pos as usize]
    }

    /// The title of item `id` (`1..=N`).
    pub fn title(&self, id: ItemId) -> Option<&str> {
        (id as usize)
            .checked_sub(1)
            .and_then(|i| self.items.get(i))
            .map(|it| it.title.as_str())
    }

    /// Number of distinct users, when the layout knows users.
    pub fn num_users(&self) -> Option<usize> {
        if !self.users_known {
            return None;
        }
        let users: HashSet<&str> = self.sequences.iter().map(|s| s.user.as_str()).collect();
        Some(users.len())
    }

    /// Number of interactions: the events of all sequences, or for a row
    /// layout the target events of all rows.
    pub fn num_interactions(&self) -> usize {
        if self.row_layout {
            self.train.len() + self.valid.len() + self.test.len()
        } else {
            self.sequences.iter().map(|s| s.items.len()).sum()
        }
    }

    /// How often each item is the target of a training row (`N + 1` entries,
    /// entry 0 is padding and stays 0). Popularity and DRO propensities are
    /// computed from this and from nothing else (SPEC 2.3).
    pub fn train_target_counts(&self) -> Vec<u64> {
        let mut counts = vec![0u64; self.num_items() + 1];
        for r in &self.train {
            counts[self.target(r) as usize] += 1;
        }
        counts
    }

    /// Checks every invariant of the conventions above; a loaded or freshly
    /// built dataset that fails this is refused.
    pub fn validate(&self) -> Result<()> {
        let n = self.num_items() as u32;
        if n == 0 {
            return Err(DataError::Invalid(format!(
                "dataset '{}' has no items",
                self.name
            )));
        }
        for (si, s) in self.sequences.iter().enumerate() {
            if let Some(&bad) = s.items.iter().find(|&&i| i == PAD || i > n) {
                return Err(DataError::Invalid(format!(
                    "sequence {si} (user '{}') holds item id {bad} outside 1..={n}",
                    s.user
                )));
            }
            if let Some(ts) = &s.timestamps {
                if ts.len() != s.items.len() {
                    return Err(DataError::Invalid(format!(
                        "sequence {si} has {} items but {} timestamps",
                        s.items.len(),
                        ts.len()
                    )));
                }
            }
        }
        let mut keys = HashSet::new();
        for split in SplitName::ALL {
            for r in self.rows(split) {
                let s = self.sequences.get(r.seq as usize).ok_or_else(|| {
                    DataError::Invalid(format!(
                        "{} row '{}' points at missing sequence {}",
                        split.as_str(),
                        r.key,
                        r.seq
                    ))
                })?;
                if r.pos as usize >= s.items.len() {
                    return Err(DataError::Invalid(format!(
                        "{} row '{}' has position {} beyond its sequence of length {}",
                        split.as_str(),
                        r.key,
                        r.pos,
                        s.items.len()
                    )));
                }
                if !keys.insert(r.key.as_str()) {
                    return Err(DataError::Invalid(format!(
                        "row key '{}' is not unique",
                        r.key
                    )));
                }
            }
        }
        if self.train.is_empty() {
            return Err(DataError::Invalid(format!(
                "dataset '{}' has no training rows",
                self.name
            )));
        }
        Ok(())
    }
}
