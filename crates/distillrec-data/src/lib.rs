//! Datasets for distillrec: readers, filters, splits, the built-in synthetic
//! dataset, the prepared on-disk format, statistics and batching.
//!
//! This crate has no tensor dependency so that it builds and tests quickly.
//! The conventions every later stage relies on (ids `1..=N` with `0` as
//! padding, left padding, rows as `(sequence, position)`) live in
//! [`dataset`] and [`batch`].

pub mod batch;
pub mod dataset;
pub mod error;
pub mod fsutil;
pub mod lock;
pub mod memory;
pub mod names;
pub mod outguard;
pub mod prepare;
pub mod readers;
pub mod stats;
pub mod store;
pub mod synthetic;
pub mod targets;

pub use dataset::{Dataset, Item, ItemId, Row, Sequence, SplitName, PAD};
pub use error::{DataError, Result};
pub use prepare::{Dedup, PrepareOptions, RawLog, SplitKind};
pub use store::DatasetRef;
pub use targets::AdapterTarget;
