//! The stages of distillrec's pipeline (SPEC 1) as library functions, so the
//! binary only parses arguments and prints, and the full pipeline is one
//! more caller of the same functions:
//!
//! - [`prepared`] — a prepared dataset with its identity ([`Data`]), and the
//!   dataset of a run (`--data`, `dataset.prepared`, or built and saved).
//! - [`runs`] — a run directory around a stage ([`with_run`]), and how a
//!   training stage is recorded in `run.json`.
//! - [`stages`] — one function per stage: prepare, popularity, train and
//!   evaluate a student, recommend, teacher caches (from a student, from
//!   files, merged shards), select, distill.
//! - [`llm`] — the LLM backbone's command-line jobs (generate, logits,
//!   item embeddings, speed).
//! - [`latency`] — per-user top-20 latency of a student or the teacher.
//! - [`models`] — backbones known by name (`smollm2`), fetched with pip.
//! - [`active`] — rounds of select, label and distil that spend the
//!   teacher where the current student is unsure.
//! - [`pipeline`] — every stage from one config, each keyed by what it
//!   reads, with a report.
//! - [`sweep`] — the pipeline over a grid of config values and seeds,
//!   sharing every stage it can, with one report.
//!
//! Every function takes the `candle_core::Device` its models run on; runs
//! record it in `run.json`.

pub mod active;
mod keyed;
pub mod latency;
pub mod llm;
pub mod models;
pub mod pipeline;
pub mod prepared;
pub mod runs;
pub mod stages;
pub mod sweep;

/// The teacher's metric keys (for the binary's summary lines).
pub use distillrec_teacher::keys as teacher_metric_keys;
pub use prepared::{absolute, load_prepared, run_data, Data};
pub use runs::{record_training, with_run};
