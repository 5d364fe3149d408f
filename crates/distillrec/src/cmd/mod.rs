//! One module per command group: each parses its arguments into library
//! calls and prints the result.

pub mod active;
pub mod bench;
pub mod data;
pub mod distill;
pub mod eval;
pub mod llm;
pub mod pipeline;
pub mod recommend;
pub mod report;
pub mod select;
pub mod serve;
pub mod teacher;
pub mod train;
