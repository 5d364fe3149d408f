//! Readers for every supported source layout (SPEC 3).
//!
//! Raw-log readers (`movielens`, `amazon`, `generic`) return a
//! [`crate::prepare::RawLog`] that [`crate::prepare::prepare`] filters and
//! splits; the processed reference layouts (`reference`) come with their
//! splits and return a [`crate::Dataset`] directly.

pub mod amazon;
pub mod generic;
pub mod movielens;
pub mod reference;
