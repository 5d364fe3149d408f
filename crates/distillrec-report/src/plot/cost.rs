//! Cost per model: seconds to get each model, stacked by what they were spent on.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::bars::{bar_plot_px, BarLabels, MARGIN, Y_LABEL_AREA};
use super::{draw_legend, legend_size, save, style_mesh, text, Figure, PlotFiles, PALETTE};
use crate::aggregate::{AggregateRow, CACHE_BUILD_SECS, TEACHER_TRAIN_SECS, TOTAL_SECS, WALL_SECS};
use crate::tables::quantity;

/// The parts of a model's cost, bottom to top: pseudo-metric, legend text, colour.
const PARTS: [(&str, &str, RGBColor); 3] = [
    (WALL_SECS, "training the model", PALETTE[0]),
    (TEACHER_TRAIN_SECS, "training the teacher", PALETTE[1]),
    (CACHE_BUILD_SECS, "building the teacher cache", PALETTE[2]),
];

/// The y axis switches to a log scale when the largest bar is more than this many
/// times the smallest.
pub(crate) const LOG_SCALE_RATIO: f64 = 100.0;

/// Plots the seconds it took to get each model (mean over seeds): one bar per row,
/// stacked from the run's own wall time, the teacher's training and the teacher
/// cache build (the last two for distilled models), with the total printed above
/// (`≥` when a part is unknown) and a legend of the parts shown.
///
/// Writes `path` with its extension replaced by `png` and `svg` ([`PlotFiles`]),
/// [`PLOT_WIDTH`](super::PLOT_WIDTH)×[`PLOT_HEIGHT`](super::PLOT_HEIGHT). The y axis
/// is logarithmic (decades) when the largest total is more than 100× the smallest.
/// `rows` must have been aggregated over [`COST_METRICS`](crate::COST_METRICS); rows
/// without any recorded seconds are skipped.
///
/// Errors (naming `path`): no row with seconds ("no points to plot"), a negative or
/// non-finite number of seconds, or a failure to draw or write the files.
pub fn plot_costs(rows: &[AggregateRow], path: &Path) -> Result<PlotFiles> {
    let what = || format!("cannot plot costs to {}", path.display());
    let bars: Vec<CostBar> = rows.iter().filter_map(CostBar::of).collect();
    if bars.is_empty() {
        return Err(anyhow!("no points to plot: no model has recorded seconds")).with_context(what);
    }
    for b in &bars {
        if b.parts.iter().flatten().any(|v| !v.is_finite() || *v < 0.0) {
            return Err(anyhow!(
                "row {:?}: seconds {:?} must be finite and non-negative",
                b.label,
                b.parts
            ))
            .with_context(what);
        }
    }
    save(&CostFigure { bars }, path).with_context(what)
}

/// One bar of [`plot_costs`].
struct CostBar<'a> {
    label: &'a str,
    /// Seconds per entry of [`PARTS`].
    parts: [Option<f64>; 3],
    /// The recorded total, if every part it needs is known.
    total: Option<f64>,
}

impl<'a> CostBar<'a> {
    fn of(row: &'a AggregateRow) -> Option<Self> {
        let parts = PARTS.map(|(key, _, _)| row.mean.get(key).copied());
        if parts.iter().all(Option::is_none) {
            return None;
        }
        Some(CostBar {
            label: &row.label,
            parts,
            total: row.mean.get(TOTAL_SECS).copied(),
        })
    }

    /// The height of the bar: the total, or the sum of the known parts.
    fn height(&self) -> f64 {
        self.total
            .unwrap_or_else(|| self.parts.iter().flatten().sum())
    }
}

struct CostFigure<'a> {
    bars: Vec<CostBar<'a>>,
}

/// How seconds map to the y axis.
#[derive(Clone, Copy)]
enum Scale {
    Linear,
    /// `log10(seconds)`, clamped below at this exponent.
    Log(f64),
}

impl Scale {
    fn y(self, secs: f64) -> f64 {
        match self {
            Scale::Linear => secs,
            Scale::Log(floor) if secs > 0.0 => secs.log10().max(floor),
            Scale::Log(floor) => floor,
        }
    }
}

impl Figure for CostFigure<'_> {
    fn draw<DB>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB: DrawingBackend,
        DB::ErrorType: 'static,
    {
        let bars = &self.bars;
        let n = bars.len();
        let names: Vec<&str> = bars.iter().map(|b| b.label).collect();
        let labels = BarLabels::layout(root, &names)?;
        let shown: Vec<usize> = (0..PARTS.len())
            .filter(|&p| bars.iter().any(|b| b.parts[p].is_some_and(|v| v > 0.0)))
            .collect();
        let show_legend = shown.len() >= 2;

        let hi = bars.iter().map(CostBar::height).fold(0.0, f64::max);
        let lo_positive = bars
            .iter()
            .map(CostBar::height)
            .filter(|h| *h > 0.0)
            .fold(f64::INFINITY, f64::min);
        let scale = if hi > 0.0 && hi / lo_positive > LOG_SCALE_RATIO {
            Scale::Log(lo_positive.log10().floor())
        } else {
            Scale::Linear
        };
        let (y0, top) = match scale {
            Scale::Linear => (0.0, if hi > 0.0 { hi } else { 1.0 }),
            Scale::Log(floor) => (floor, hi.log10()),
        };
        let mut reserved_px = 22.0;
        if show_legend {
            let entries: Vec<&str> = shown.iter().map(|&p| PARTS[p].1).collect();
            reserved_px += legend_size(&entries).1 + 8.0;
        }
        let free = (1.0 - reserved_px / bar_plot_px(labels.area_px)).max(0.3);
        let y1 = y0 + (top - y0) / free;

        let mut chart = ChartBuilder::on(root)
            .caption("seconds to get each model (mean over seeds)", text(22))
            .margin(MARGIN)
            .x_label_area_size(labels.area_px)
            .y_label_area_size(Y_LABEL_AREA)
            .build_cartesian_2d(0.0..n as f64, y0..y1)?;
        let y_formatter = |y: &f64| quantity(*y);
        let mut mesh = chart.configure_mesh();
        mesh.disable_x_mesh().x_labels(0);
        match scale {
            Scale::Linear => {
                mesh.y_labels(8)
                    .y_label_formatter(&y_formatter)
                    .y_desc("seconds");
            }
            Scale::Log(_) => {
                // Decade ticks are drawn below; plotters' linear ticks would not be.
                mesh.disable_y_mesh()
                    .y_labels(0)
                    .y_desc("seconds (log scale)");
            }
        }
        style_mesh(&mut mesh);
        mesh.draw()?;
        if let Scale::Log(_) = scale {
            draw_decades(root, &mut chart, y0, y1)?;
        }

        for &p in &shown {
            let (_, name, color) = PARTS[p];
            let series = chart.draw_series(bars.iter().enumerate().filter_map(|(i, b)| {
                let v = b.parts[p].filter(|v| *v > 0.0)?;
                let below: f64 = b.parts[..p].iter().flatten().sum();
                let x = i as f64;
                Some(Rectangle::new(
                    [(x + 0.15, scale.y(below)), (x + 0.85, scale.y(below + v))],
                    color.filled(),
                ))
            }))?;
            if show_legend {
                series.label(name).legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled())
                });
            }
        }

        if n <= 16 {
            let value_style = text(12).pos(Pos::new(HPos::Center, VPos::Bottom));
            chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
                let at_least = if b.total.is_some() { "" } else { "≥ " };
                EmptyElement::at((i as f64 + 0.5, scale.y(b.height())))
                    + Text::new(
                        format!("{at_least}{} s", quantity(b.height())),
                        (0, -4),
                        value_style.clone(),
                    )
            }))?;
        }

        labels.draw(root, &chart, y0)?;
        if show_legend {
            draw_legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        }
        Ok(())
    }
}

/// Grid lines and tick labels (`0.01`, `1`, `100`, …) at every power of ten between
/// the exponents `y0` and `y1` of a log-scale chart.
fn draw_decades<DB>(
    root: &DrawingArea<DB, Shift>,
    chart: &mut super::Chart<'_, DB>,
    y0: f64,
    y1: f64,
) -> Result<()>
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
{
    let (first, last) = (y0.ceil() as i32, y1.floor() as i32);
    if first > last {
        bail!("no power of ten between 10^{y0} and 10^{y1}");
    }
    let n = chart.x_range().end;
    let grid = RGBColor(215, 215, 215);
    chart.draw_series(
        (first..=last)
            .map(|k| PathElement::new(vec![(0.0, f64::from(k)), (n, f64::from(k))], grid)),
    )?;
    let style = text(13).pos(Pos::new(HPos::Right, VPos::Center));
    for k in first..=last {
        let (px, py) = chart.backend_coord(&(0.0, f64::from(k)));
        root.draw(&PathElement::new(vec![(px - 5, py), (px, py)], BLACK))?;
        root.draw(&Text::new(decade(k), (px - 8, py), style.clone()))?;
    }
    Ok(())
}

/// `10^k` written out: `0.01`, `1`, `1000`.
fn decade(k: i32) -> String {
    if k >= 0 {
        format!("1{}", "0".repeat(k as usize))
    } else {
        format!("0.{}1", "0".repeat((-k - 1) as usize))
    }
}
