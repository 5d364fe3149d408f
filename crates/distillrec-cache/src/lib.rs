//! The teacher cache (SPEC 6): what a teacher knows about each selected
//! training row of a prepared dataset. No tensor library: plain `Vec`s.
//!
//! # Format (a directory)
//!
//! ```text
//! <dir>/manifest.json                {format: "distillrec-teacher-cache", version: 1,
//!                                     dataset: {fingerprint, name}, num_items, k, rows,
//!                                     embedding_dim (null if none), distance,
//!                                     history_masked, source, shard (null | {index, count}),
//!                                     files: {name: "sha256:<hex>"}, created_by}
//! <dir>/keys.txt                     one row key per line, in cache row order
//! <dir>/rows.safetensors             items U32 [rows, k], distances F32 [rows, k]
//! <dir>/item_embeddings.safetensors  item_embeddings F32 [N + 1, D] (only if present)
//! ```
//!
//! # Invariants
//!
//! - **Keys, not order** (SPEC 2.5). Each cache row carries the stable key
//!   of its training row; a cache is joined to a dataset by key
//!   ([`TeacherCache::check_against`], [`TeacherCache::row_lookup`]), never
//!   by position, so a reordered or partial cache cannot be misaligned.
//! - **Fingerprint checked.** The manifest stores the dataset fingerprint;
//!   using a cache with another dataset (or another catalogue size) is an
//!   error naming both datasets, and a key that is not a training row of the
//!   dataset is an error naming the key and its line of `keys.txt`.
//! - **Item ids** are the dataset's internal ids `1..=N` (0 is padding and
//!   never a candidate); the embedding table has `N + 1` rows, row 0 zeros.
//!   Distances are finite; smaller means more confident.
//! - **Rank order.** Each row's top-K is in rank order: distances
//!   non-decreasing along the row (writers break ties by item id), checked
//!   when a row is added and when a cache is loaded, because the DLLM2Rec
//!   position weight is applied by list index. Distances of kind
//!   `neg_log_prob` are never negative. [`sort_row`] orders a foreign row.
//! - **Canonical row order** is the order of `ds.train`. Merged shards and
//!   caches built from files come out in that order, and the manifest holds
//!   no timestamp, so the same rows give byte-identical files however the
//!   cache was produced (one go, or shards merged).
//! - **Atomic writes.** Every file is written atomically (temporary file +
//!   rename); the old manifest is removed first, the data files are written,
//!   and the manifest is written last with the SHA-256 of every data file.
//!   Loading re-hashes the files, so a truncated, edited or mismatched file
//!   is refused rather than read.
//!
//! # Modules
//!
//! - [`TeacherCache`], [`CacheManifest`]: build, save, load, check, merge, restrict;
//! - [`ShardSpec`]: `--shard i/n` and its row range;
//! - [`CacheSource`]: the manifest's `source` (`student:<path>`, `teacher:<path>`, `files`);
//! - [`read_selection`] / [`write_selection`]: which rows get teacher output,
//!   with the sidecar [`SelectionMeta`] ([`read_selection_meta`]);
//! - [`from_files`]: import of other recommenders' top-K, distance and
//!   embedding files (CSV, whitespace text, NPY, safetensors).
//!
//! Errors are [`distillrec_data::DataError`]s: each names the file, and the
//! line (text files) or row (arrays) when there is one.

#![warn(missing_docs)]

mod cache;
mod files;
mod npy;
mod selection;
mod shard;
mod source;

pub use cache::{
    sort_row, CacheManifest, DatasetRef, DistanceKind, TeacherCache, EMBEDDINGS_FILE, FORMAT,
    KEYS_FILE, MANIFEST_FILE, ROWS_FILE, VERSION,
};
pub use distillrec_data::DataError;
pub use files::{from_files, FromFiles, IdSpace, RowKeys};
pub use selection::{
    read_selection, read_selection_meta, read_selection_rows, selection_meta_path, write_selection,
    SelectionMeta,
};
pub use shard::ShardSpec;
pub use source::CacheSource;

/// Result alias of this crate (errors name the file and line or row).
pub type Result<T, E = DataError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests;
