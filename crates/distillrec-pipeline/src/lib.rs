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
//! - [`models`] — backbones known by name (`smollm2`), fetched with pip.
//! - [`pipeline`] — every available stage from one config, with a report.
//!
//! Every function takes the `candle_core::Device` its models run on; runs
//! record it in `run.json`.

pub mod llm;
pub mod models;
pub mod pipeline;
pub mod prepared;
pub mod runs;
pub mod stages;

pub use prepared::{absolute, load_prepared, run_data, Data};
pub use runs::{record_training, with_run};
