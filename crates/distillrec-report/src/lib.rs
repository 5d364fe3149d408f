//! Reports for distillrec: turns finished runs into tables and plots (SPEC §9, `report`).
//!
//! The crate sits at the end of the pipeline. [`runs`] reads finished run
//! directories into typed records ([`RunDir`]: `run.json`, `metrics.json`,
//! `config.toml` through serde, `history.csv` through [`History`]), decides what
//! each run is (popularity, baseline, teacher, distilled) from its record, and
//! writes the whole report ([`write_report`]); the rest of the crate works on
//! plain values ([`RunSummary`] with its [`RunCosts`], [`BudgetPoint`],
//! [`LearningCurve`]) and
//!
//! - aggregates runs over seeds ([`aggregate`] → [`AggregateRow`]: mean and sample
//!   standard deviation per label, of metrics and of cost pseudo-metrics such as
//!   [`TOTAL_SECS`]),
//! - renders those aggregates as Markdown and CSV tables ([`markdown_table`],
//!   [`csv_table`], [`results_csv`], [`cost_markdown`]) and budget sweeps as tables
//!   ([`budget_markdown`], [`budget_csv`]),
//! - draws plots, each as PNG and SVG ([`PlotFiles`]): accuracy against teacher
//!   budget with reference lines ([`plot_budget_curve`]), one bar per model with
//!   error bars ([`plot_metric_bars`]), learning curves ([`plot_learning_curves`])
//!   and seconds per model ([`plot_costs`]).
//!
//! Table functions are pure (they return `String`s); plot functions write their
//! files atomically (temp file in the same directory, then rename) through
//! [`distillrec_data::fsutil::atomic_write`], so a crashed report never leaves a
//! half-written image behind.
//!
//! Each plot draws once onto a generic plotters drawing area, run on two backends.
//! PNG: `plotters` draws into an in-memory RGB buffer, text is rasterised by
//! `ab_glyph` (through a small backend wrapper that fixes glyph placement) from an
//! embedded copy of DejaVu Sans (see `assets/README.md` for its provenance and
//! license), and the `png` crate encodes the result. SVG: plotters' SVG backend
//! renders into a `String`, text stays text (font-family `DejaVu Sans` first) and is
//! measured with the same embedded font. No system library (fontconfig, freetype) is
//! needed, so CI machines without fonts produce identical files.

#![warn(missing_docs)]

pub mod active;
mod aggregate;
mod canvas;
mod checks;
mod files;
mod history;
mod plot;
mod report;
pub mod runs;
mod tables;

pub use aggregate::{
    aggregate, AggregateRow, BudgetPoint, RunCosts, RunSummary, TeacherCosts, CACHE_BUILD_SECS,
    P50_MS, P99_MS, PEAK_MB, TEACHER_ROWS, TEACHER_TRAIN_SECS, TOTAL_SECS, WALL_SECS,
};
pub use history::History;
pub use plot::{
    plot_budget_curve, plot_cost_curve, plot_costs, plot_learning_curves, plot_metric_bars,
    LearningCurve, PlotFiles, ReferenceLine, PLOT_HEIGHT, PLOT_WIDTH,
};
pub use report::{budget_points, write_report, ReportRequest};
pub use runs::{RunDir, RunKind, RunSpec};
pub use tables::{
    budget_csv, budget_markdown, cost_markdown, csv_table, markdown_table, results_csv,
    COST_METRICS,
};
