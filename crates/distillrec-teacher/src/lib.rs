//! The LLM teacher of distillrec (SPEC 6): iLoRA — a frozen decoder-only
//! backbone with mixture-of-experts LoRA whose per-sample gate comes from a
//! frozen student's sequence representation — and LLaRA (one expert).
//! Hybrid prompts put the student's projected item embeddings next to the
//! titles; the generative objective trains the answer, the ranking
//! objective scores the whole catalogue from the last hidden state.
//!
//! - [`prompt`] — templates, titles cut to a budget, candidates;
//! - [`nets`] — projector, gate network, ranking map;
//! - [`model`] — [`Teacher`]: one micro-step's loss and gradients, scores,
//!   greedy answers;
//! - [`setup`] — backbone + student checkpoint + title table → teacher;
//! - [`checkpoint`] — trainable tensors + a manifest pinning backbone,
//!   student and dataset;
//! - [`train`] — the loop (warm-up + cosine, accumulation, early stopping,
//!   exact resume);
//! - [`evaluate`] — ranking and generative protocols;
//! - [`keys`] — the teacher's metric keys;
//! - [`infer`] — the teacher cache;
//! - [`mod@bench`] — what `distillrec bench llm --step teacher | infer` times.

pub mod answer;
pub mod bench;
pub mod checkpoint;
pub mod evaluate;
pub mod infer;
pub mod keys;
pub mod model;
pub mod nets;
pub mod plan;
pub mod prompt;
pub mod setup;
pub mod train;

pub use model::{Teacher, TeacherSpec};
