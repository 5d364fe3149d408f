//! DLLM2Rec distillation (SPEC 7): the loss terms ([`losses`]), the
//! distillation objective plugged into the shared training loop
//! ([`objective`]), and teacher caches computed from any student
//! checkpoint ([`teacher`]).

pub mod bench;
pub mod fused;
pub mod losses;
pub mod objective;
pub mod teacher;
pub mod topk;

pub use objective::{ActiveTerms, DistillObjective, TeacherRows};
