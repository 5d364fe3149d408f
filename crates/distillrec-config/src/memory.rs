//! Memory estimate of training a student, checked once the catalogue size is
//! known (after the dataset loads, before the model is built), so a size the
//! machine cannot hold is refused in one line naming the key instead of
//! aborting in the allocator.

use distillrec_data::memory::{check_fits, product, TooLarge};

use crate::{Config, LossKind, Objective, StudentKind};

/// Bytes of an `f32`.
const F32: u64 = 4;

/// Copies of every trained weight: the weight, its gradient and AdamW's two
/// moments.
const TRAINED_COPIES: u64 = 4;

/// Activations kept per position, layer and hidden unit for the backward
/// pass (attention, feed-forward, norms, dropout masks).
const ACTIVATIONS_PER_UNIT: u64 = 16;

/// One part of the estimate: the setting to blame, what it is for, bytes.
struct Part {
    setting: String,
    what: &'static str,
    bytes: u64,
}

impl Config {
    /// Refuses training the configured student over `items` items with the
    /// stage `train.<stage>` (`student` or `distill`) when the item table,
    /// the batch's scores or its activations need more memory than is
    /// available. The message names the key of the largest part.
    pub fn check_student_memory(&self, stage: &str, items: usize) -> Result<(), TooLarge> {
        let s = &self.student;
        let batch = match stage {
            "distill" => self.train.distill.batch_size,
            _ => self.train.student.batch_size,
        } as u64;
        let (n, h, l, layers) = (
            items as u64,
            s.hidden as u64,
            s.max_len as u64,
            s.layers as u64,
        );
        let table = Part {
            setting: format!("student.hidden = {} with {items} items", s.hidden),
            what: "the item table and its optimizer state",
            bytes: product(&[n.saturating_add(l), h, F32, TRAINED_COPIES]),
        };
        let scored = match s.objective {
            Objective::AllPositions => l,
            Objective::Last => 1,
        };
        let scores = Part {
            setting: format!("train.{stage}.batch_size = {batch} with {items} items"),
            what: "a batch's scores over every item and their gradients",
            bytes: match s.loss {
                LossKind::Ce => product(&[batch, scored, n, F32, 3]),
                LossKind::Bce => 0,
            },
        };
        let attention = match s.model {
            StudentKind::Sasrec => product(&[s.heads as u64, l, l]),
            _ => 0,
        };
        let per_row = product(&[l, h, ACTIVATIONS_PER_UNIT]).saturating_add(attention);
        let activations = Part {
            setting: format!(
                "student.max_len = {} with train.{stage}.batch_size = {batch} and student.hidden = {}",
                s.max_len, s.hidden
            ),
            what: "a batch's activations",
            bytes: product(&[batch, layers, per_row, F32]),
        };
        let weights = Part {
            setting: format!(
                "student.hidden = {} with student.layers = {}",
                s.hidden, s.layers
            ),
            what: "the layers' weights and their optimizer state",
            bytes: product(&[layers, 12, h, h, F32, TRAINED_COPIES]),
        };
        let parts = [table, scores, activations, weights];
        let total = parts.iter().fold(0u64, |a, p| a.saturating_add(p.bytes));
        let worst = parts
            .into_iter()
            .max_by_key(|p| p.bytes)
            .expect("four parts");
        check_fits(&worst.setting, worst.what, total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(sets: &[&str]) -> Config {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        Config::from_toml_str("", "test", &sets).unwrap()
    }

    #[test]
    fn the_defaults_fit_and_huge_catalogues_name_their_key() {
        assert!(cfg(&[]).check_student_memory("student", 3500).is_ok());
        let e = cfg(&[])
            .check_student_memory("student", 4_000_000_000)
            .unwrap_err();
        assert_eq!(
            e.setting,
            "train.student.batch_size = 256 with 4000000000 items"
        );
        assert!(e.needed > 4_000_000_000 * 64 * 16, "{e}");
        let e = cfg(&["student.hidden=4096", "student.loss=\"bce\""])
            .check_student_memory("distill", 10_000_000)
            .unwrap_err();
        assert_eq!(e.setting, "student.hidden = 4096 with 10000000 items");
        assert!(e
            .to_string()
            .contains("for the item table and its optimizer state"));
    }

    #[test]
    fn long_windows_blame_max_len() {
        let e = cfg(&["student.max_len=65536"])
            .check_student_memory("student", 100)
            .unwrap_err();
        assert!(e.setting.starts_with("student.max_len = 65536 with"), "{e}");
    }
}
