//! Student recommenders for distillrec (SPEC 4): SASRec, GRU4Rec and Caser
//! in candle, their losses, and the fused CPU kernels they train with.
//!
//! Every student maps a left-padded history `[B, L]` to a representation
//! `[B, d]` and scores all items with its item table, `scores = rep · Eᵀ`,
//! `N + 1` columns with column 0 (padding) masked.

pub mod batch;
pub mod caser;
pub mod catalogue;
mod cpu;
pub mod device;
pub mod fastmath;
pub mod fused_attention;
pub mod fused_ce;
pub mod fused_linear;
pub mod gru4rec;
pub mod loss;
pub mod net;
pub mod ops;
pub mod optim;
pub mod params;
pub mod sasrec;
pub mod student;

#[cfg(test)]
mod testutil;

pub use batch::{ForwardCtx, SeqBatch};
pub use net::{StudentNet, StudentSpec, ITEM_TABLE};
pub use params::{Init, Params};
pub use student::Student;
