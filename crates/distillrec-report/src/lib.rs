//! Reports for distillrec: turns finished runs into tables and plots (SPEC §9, `report`).
//!
//! The crate sits at the end of the pipeline. [`runs`] reads finished run
//! directories into typed records ([`RunDir`]: `run.json`, `metrics.json`,
//! `config.toml` through serde), decides what each run is (baseline, teacher,
//! distilled) from its record, and writes the whole report
//! ([`write_report`]); the rest of the crate works on plain values
//! ([`RunSummary`], [`BudgetPoint`]) and
//!
//! - aggregates runs over seeds ([`aggregate`] → [`AggregateRow`]: mean and sample
//!   standard deviation per label),
//! - renders those aggregates as Markdown and CSV tables ([`markdown_table`],
//!   [`csv_table`]) and budget sweeps as tables ([`budget_markdown`], [`budget_csv`]),
//! - draws PNG plots: accuracy against teacher budget ([`plot_budget_curve`]) and one
//!   bar per model with error bars ([`plot_metric_bars`]).
//!
//! Table functions are pure (they return `String`s); plot functions write their PNG
//! atomically (temp file in the same directory, then rename) through
//! [`distillrec_data::fsutil::atomic_write`], so a crashed report never leaves a
//! half-written image behind.
//!
//! Rendering is pure Rust: `plotters` draws into an in-memory RGB buffer, text is
//! rasterised by `ab_glyph` (through a small backend wrapper that fixes glyph placement)
//! from an embedded copy of DejaVu Sans (see
//! `assets/README.md` for its provenance and license), and the `png` crate encodes the
//! result. No system library (fontconfig, freetype) is needed, so CI machines without
//! fonts produce identical images.

#![warn(missing_docs)]

mod aggregate;
mod canvas;
mod plot;
pub mod runs;
mod tables;

pub use aggregate::{aggregate, AggregateRow, BudgetPoint, RunSummary, TEACHER_ROWS, WALL_SECS};
pub use plot::{plot_budget_curve, plot_metric_bars, PLOT_HEIGHT, PLOT_WIDTH};
pub use runs::{budget_points, write_report, ReportRequest, RunDir, RunKind, RunSpec};
pub use tables::{budget_csv, budget_markdown, csv_table, markdown_table};
