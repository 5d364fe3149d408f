//! The training loop of distillrec (SPEC 4, 9): batches for the `last` and
//! `all_positions` objectives, AdamW with saved state, early stopping on a
//! validation metric, checkpoints with manifests, exact resume, and the
//! final one-time test evaluation of the best checkpoint.

pub mod bench;
pub mod checkpoint;
pub mod commit;
pub mod fit;
pub mod optim;
pub mod trainer;
pub mod units;

pub use checkpoint::DatasetRef;
pub use trainer::{
    base_loss, evaluate_ensemble, evaluate_student, forward_rep, train_step, train_student,
    train_with, BaseObjective, EvalCost, StageObjective, StepReport, TrainOptions, TrainOutcome,
};
