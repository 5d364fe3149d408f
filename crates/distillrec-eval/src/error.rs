//! The one error type of the evaluation crate.

use distillrec_data::{ItemId, SplitName};

/// Where a per-row error happened, before [`EvalError::locate`] fills it in.
pub(crate) const UNLOCATED: &str = "unlocated row";

/// Everything that can go wrong while evaluating. Every message is one line
/// and names the place (split and row key, or the offending sizes), so a bad
/// model output never turns into a silently wrong metric (SPEC 10).
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum EvalError {
    /// A score that would be compared is NaN.
    #[error("NaN score for item {item} ({location})")]
    NanScore {
        /// `"<split> row '<key>'"`, or `"unlocated row"` from the low-level API.
        location: String,
        /// The item (score column) holding the NaN.
        item: ItemId,
    },
    /// The target's own score is NaN or infinite, so no rank is meaningful.
    #[error("target item {target} has non-finite score {score} ({location})")]
    NonFiniteTarget {
        /// `"<split> row '<key>'"`, or `"unlocated row"` from the low-level API.
        location: String,
        /// The target item.
        target: ItemId,
        /// Its score.
        score: f32,
    },
    /// The target is padding or beyond the catalogue (or not among its candidates).
    #[error("target item {target} is not a valid item in 1..={num_items} ({location})")]
    BadTarget {
        /// `"<split> row '<key>'"`, or `"unlocated row"` from the low-level API.
        location: String,
        /// The offending target.
        target: ItemId,
        /// Catalogue size `N`.
        num_items: usize,
    },
    /// An item to exclude (a history item) lies beyond the catalogue.
    #[error("excluded item {item} is beyond the catalogue 1..={num_items} ({location})")]
    BadExcluded {
        /// `"<split> row '<key>'"`, or `"unlocated row"` from the low-level API.
        location: String,
        /// The offending item.
        item: ItemId,
        /// Catalogue size `N`.
        num_items: usize,
    },
    /// A score matrix or vector has the wrong number of entries.
    #[error("wrong size for {what}: expected {expected} entries, got {actual}")]
    MatrixSize {
        /// What was being checked (e.g. `"score matrix of test batch 3 [2 x 101]"`).
        what: String,
        /// Expected number of entries.
        expected: usize,
        /// Actual number of entries.
        actual: usize,
    },
    /// The split to evaluate has no rows.
    #[error("split '{}' of dataset '{dataset}' has no rows to evaluate", .split.as_str())]
    EmptySplit {
        /// Dataset name.
        dataset: String,
        /// The empty split.
        split: SplitName,
    },
    /// Not enough eligible items to draw the requested negatives.
    #[error("catalogue too small: need {needed} negative candidates but only {available} items are outside the history and target ({location})")]
    CatalogueTooSmall {
        /// `"<split> row '<key>'"`, or `"unlocated row"` from the low-level API.
        location: String,
        /// Negatives requested.
        needed: usize,
        /// Items eligible as negatives.
        available: usize,
    },
    /// Evaluation options that cannot be honoured (empty `ks`, `K = 0`, batch size 0...).
    #[error("invalid evaluation options: {0}")]
    BadOptions(String),
    /// The scorer (a model) failed; its message is passed through.
    #[error("model failed while scoring: {0}")]
    Model(String),
}

impl EvalError {
    /// Fills in the row location of a per-row error raised by the low-level
    /// ranking and sampling functions, which do not know the split or key.
    /// Other errors are returned unchanged.
    pub fn locate(self, split: SplitName, key: &str) -> Self {
        let here = format!("{} row '{}'", split.as_str(), key);
        match self {
            EvalError::NanScore { item, .. } => EvalError::NanScore {
                location: here,
                item,
            },
            EvalError::NonFiniteTarget { target, score, .. } => EvalError::NonFiniteTarget {
                location: here,
                target,
                score,
            },
            EvalError::BadTarget {
                target, num_items, ..
            } => EvalError::BadTarget {
                location: here,
                target,
                num_items,
            },
            EvalError::BadExcluded {
                item, num_items, ..
            } => EvalError::BadExcluded {
                location: here,
                item,
                num_items,
            },
            EvalError::CatalogueTooSmall {
                needed, available, ..
            } => EvalError::CatalogueTooSmall {
                location: here,
                needed,
                available,
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_names_split_and_key_on_one_line() {
        let e = EvalError::NanScore {
            location: UNLOCATED.into(),
            item: 7,
        }
        .locate(SplitName::Test, "u3#5");
        let msg = e.to_string();
        assert_eq!(msg, "NaN score for item 7 (test row 'u3#5')");
        assert!(!msg.contains('\n'));
        let m = EvalError::Model("oom".into()).locate(SplitName::Valid, "k");
        assert_eq!(m, EvalError::Model("oom".into()));
    }
}
