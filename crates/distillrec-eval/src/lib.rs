//! Evaluation for distillrec (SPEC 5): full ranking over all `N` items with
//! HR/NDCG/Recall/MRR at several cut-offs, the popularity baseline, and the
//! sampled-candidate protocol used by iLoRA/LLaRA.
//!
//! The crate works on plain `f32` score rows so it builds without a tensor
//! library; models hand over a row-major `[B x (N + 1)]` matrix per batch
//! (column `i` = item `i`, column 0 = padding, never ranked).
//!
//! # Tie rule
//! The rank of a target is 1-based. With [`TieBreak::Pessimistic`] (the
//! default) it is `1 + #{candidates j != target : s_j >= s_target}`: a tie
//! never favours the target, so a model that outputs a constant cannot look
//! good. With [`TieBreak::Random`] it is `1 + #{s_j > s_target} + U`, `U`
//! uniform in `0..=#ties`, drawn from a `ChaCha8Rng` seeded by the run seed
//! and the row's index in its split ([`row_seed`]), so metrics are
//! reproducible and independent of the batch size. A NaN candidate score,
//! or a NaN/infinite target score, is an error naming the split and row.
//!
//! # Exclusion rule
//! With [`EvalOptions::exclude_history`] every item of the row's *whole*
//! history (`Dataset::history`, not only the last `max_len` items the model
//! saw) is removed from the candidates, except the target itself, which is
//! never excluded: layouts with repeats can have the target in its history.
//! The sampled protocol always draws its negatives outside the history.

pub mod error;
pub mod full;
pub mod metrics;
pub mod options;
pub mod popularity;
pub mod rank;
pub mod sampled;

#[cfg(test)]
pub(crate) mod testutil;

pub use error::EvalError;
pub use full::{evaluate, evaluate_all};
pub use metrics::{Metric, MetricAccumulator, MetricError, MetricKind};
pub use options::{EvalOptions, EvalReport};
pub use popularity::{evaluate_popularity, Popularity};
pub use rank::{rank_of_target, row_seed, Ranker, TieBreak};
pub use sampled::{evaluate_sampled, sample_candidates, split_candidates};
