//! `[active]`: distillation in rounds that spend the teacher where the
//! current student is unsure (issue 30), and `train.*.until`, what ends a
//! training stage. One round (the default) is one-shot selection as the
//! `[selection]` group describes it.

use serde::{Deserialize, Serialize};

use crate::selection::{self, Budget, Policy};

distillrec_data::named_enum! {
    /// What ends a training stage.
    #[derive(Default)]
    pub enum Until {
        /// `max_epochs`, or earlier when validation has not improved for
        /// `patience` epochs (what every stage did before this key).
        #[default]
        Budget = "budget",
        /// Early stopping alone: validation has not improved for `patience`
        /// epochs; `max_epochs` is ignored up to [`CONVERGED_MAX_EPOCHS`].
        Converged = "converged",
    }
}

/// The epoch cap of `until = "converged"`: a guard against a stage whose
/// validation metric keeps inching up, not a budget anyone should reach.
pub const CONVERGED_MAX_EPOCHS: usize = 1000;

impl Until {
    /// Whether this is the default (`budget`), which configs and run keys
    /// leave out so that they stay as they were before the key existed.
    pub fn is_budget(&self) -> bool {
        *self == Until::Budget
    }

    /// The epoch limit of a stage with `max_epochs`.
    pub fn epoch_limit(self, max_epochs: usize) -> usize {
        match self {
            Until::Budget => max_epochs,
            Until::Converged => CONVERGED_MAX_EPOCHS,
        }
    }
}

distillrec_data::named_enum! {
    /// Which rows the teacher learns from across rounds.
    #[derive(Default)]
    pub enum TeacherRows {
        /// The teacher is trained once; rounds decide which rows get its
        /// outputs.
        #[default]
        InferOnly = "infer_only",
        /// The teacher is also fine-tuned each round, before it labels the
        /// round's rows, on every row the rounds have chosen so far (from
        /// the round before's teacher, with `[train.teacher]`); rows
        /// labelled in earlier rounds keep their labels. An LLM teacher
        /// only.
        Retrain = "retrain",
    }
}

/// Largest `active.rounds`: each round distils a student, so more rounds
/// than this is a mistake, not a plan.
pub const MAX_ROUNDS: usize = 100;

/// `[active]`: rounds of select → teacher output → distil.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActiveConfig {
    /// Rounds (1: one-shot selection, as without this group).
    pub rounds: usize,
    /// Rows each round gives the teacher: a fraction of the pool or a
    /// count. Unset: `selection.budget` spread evenly over the rounds, so
    /// a sweep over `rounds` compares equal totals.
    #[serde(
        with = "optional_budget",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub budget: Option<Budget>,
    /// The policy that picks each round's rows (unset: `selection.policy`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub policy: Option<Policy>,
    /// Round r ≥ 2 continues from round r−1's distilled student instead of
    /// distilling afresh from the seed.
    pub warm_start: bool,
    /// Whether the teacher is fine-tuned again on the rows gathered so far.
    pub teacher_rows: TeacherRows,
}

impl Default for ActiveConfig {
    fn default() -> Self {
        ActiveConfig {
            rounds: 1,
            budget: None,
            policy: None,
            warm_start: false,
            teacher_rows: TeacherRows::InferOnly,
        }
    }
}

impl ActiveConfig {
    /// Whether the group is as if absent (configs and stage keys leave it
    /// out, so they are what they were before the group existed).
    pub fn is_default(&self) -> bool {
        *self == ActiveConfig::default()
    }

    /// The policy of every round.
    pub fn policy(&self, selection: &crate::SelectionConfig) -> Policy {
        self.policy.unwrap_or(selection.policy)
    }

    /// Rows of each round, for a pool of `pool` rows: `budget` each, or
    /// `selection.budget` split evenly (the first rounds take the
    /// remainder).
    pub fn round_rows(&self, selection: &crate::SelectionConfig, pool: usize) -> Vec<usize> {
        let r = self.rounds.max(1);
        match self.budget {
            Some(b) => vec![b.rows(pool); r],
            None => {
                let total = selection.budget.rows(pool);
                (0..r)
                    .map(|i| total / r + usize::from(i < total % r))
                    .collect()
            }
        }
    }

    /// Checks what the group can know alone (as `DistillConfig::check`
    /// does for `[distill]`), naming the key.
    pub fn check(
        &self,
        selection: &crate::SelectionConfig,
        source_name: &str,
    ) -> Result<(), crate::ConfigError> {
        let bad = |k: &str, msg: String| {
            Err(crate::ConfigError::Key {
                source_name: source_name.to_string(),
                key: format!("active.{k}"),
                msg,
            })
        };
        if self.rounds == 0 {
            return bad(
                "rounds",
                "must be at least 1 (one round is one-shot selection)".into(),
            );
        }
        if self.rounds > MAX_ROUNDS {
            return bad(
                "rounds",
                format!("{} is more than {MAX_ROUNDS}", self.rounds),
            );
        }
        let policy = self.policy(selection);
        let key = if self.policy.is_some() {
            "policy"
        } else {
            "rounds"
        };
        if self.rounds > 1 && policy == Policy::All {
            return bad(key, "policy 'all' takes every row at once: rounds need a policy that picks a budget (random, entropy, loss, badge, ...)".into());
        }
        if self.rounds > 1 && policy == Policy::Kl {
            return bad(key, "policy 'kl' needs a teacher cache in round 1, which rounds build only as they go: pick another policy".into());
        }
        Ok(())
    }
}

/// `Option<Budget>` in the config's spelling (see [`selection::as_config_value`]).
mod optional_budget {
    use serde::{Deserializer, Serializer};

    use super::{selection, Budget};

    pub fn serialize<S: Serializer>(b: &Option<Budget>, s: S) -> Result<S::Ok, S::Error> {
        match b {
            Some(b) => selection::as_config_value::serialize(b, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Budget>, D::Error> {
        selection::as_config_value::deserialize(d).map(Some)
    }
}
