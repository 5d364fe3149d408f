//! Learning curves: a validation metric against epoch, one line per model.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::{
    decimals_for, draw_legend, draw_markers, legend_corner, legend_with_marker, padded_range,
    polyline_ink, save, style_mesh, text, Figure, PlotFiles, PALETTE,
};

/// One model's learning curve: `(epoch, value)` points in epoch order.
#[derive(Clone, Debug, PartialEq)]
pub struct LearningCurve {
    /// The model's label (legend entry).
    pub label: String,
    /// `(epoch, validation metric)`, ascending in epoch.
    pub points: Vec<(f64, f64)>,
}

/// Plots validation `metric` against epoch, one line with markers per curve, in the
/// order of `curves`, with a legend of the labels placed where it hides the least.
///
/// Writes `path` with its extension replaced by `png` and `svg` ([`PlotFiles`]),
/// [`PLOT_WIDTH`](super::PLOT_WIDTH)×[`PLOT_HEIGHT`](super::PLOT_HEIGHT). Curves
/// without points are skipped.
///
/// Errors (naming `path`): no curve with a point ("no points to plot"), a non-finite
/// epoch or value, or a failure to draw or write the files.
pub fn plot_learning_curves(
    curves: &[LearningCurve],
    metric: &str,
    path: &Path,
) -> Result<PlotFiles> {
    let what = || format!("cannot plot learning curves to {}", path.display());
    let curves: Vec<&LearningCurve> = curves.iter().filter(|c| !c.points.is_empty()).collect();
    if curves.is_empty() {
        return Err(anyhow!("no points to plot")).with_context(what);
    }
    validate(&curves).with_context(what)?;
    save(&CurvesFigure { curves, metric }, path).with_context(what)
}

fn validate(curves: &[&LearningCurve]) -> Result<()> {
    for c in curves {
        for &(x, y) in &c.points {
            if !x.is_finite() || !y.is_finite() {
                bail!("curve {:?}: point ({x}, {y}) is not finite", c.label);
            }
        }
    }
    Ok(())
}

struct CurvesFigure<'a> {
    curves: Vec<&'a LearningCurve>,
    metric: &'a str,
}

impl Figure for CurvesFigure<'_> {
    fn draw<DB>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB: DrawingBackend,
        DB::ErrorType: 'static,
    {
        let all = self.curves.iter().flat_map(|c| c.points.iter());
        let (mut xlo, mut xhi) = (f64::INFINITY, f64::NEG_INFINITY);
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for &(x, y) in all {
            (xlo, xhi) = (xlo.min(x), xhi.max(x));
            (lo, hi) = (lo.min(y), hi.max(y));
        }
        let xpad = ((xhi - xlo) * 0.03).max(0.5);
        let (x0, x1) = (xlo - xpad, xhi + xpad);
        let (y0, y1) = padded_range(lo, hi);
        let decimals = decimals_for(y1 - y0);

        let mut chart = ChartBuilder::on(root)
            .caption(format!("validation {} per epoch", self.metric), text(22))
            .margin(15)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        // Epochs are whole numbers: no tick label between two of them.
        let x_formatter = |x: &f64| {
            if (x - x.round()).abs() < 1e-6 {
                format!("{}", x.round() as i64)
            } else {
                String::new()
            }
        };
        let y_formatter = |y: &f64| format!("{y:.decimals$}");
        let mut mesh = chart.configure_mesh();
        mesh.x_labels(10)
            .y_labels(8)
            .x_label_formatter(&x_formatter)
            .y_label_formatter(&y_formatter)
            .x_desc("epoch")
            .y_desc(format!("validation {}", self.metric));
        style_mesh(&mut mesh);
        mesh.draw()?;

        let mut ink = Vec::new();
        for (i, c) in self.curves.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let anno = chart
                .draw_series(LineSeries::new(
                    c.points.iter().copied(),
                    color.stroke_width(2),
                ))?
                .label(c.label.as_str());
            legend_with_marker(anno, i, color);
            draw_markers(&mut chart, &c.points, i, color)?;
            ink.extend(polyline_ink(&c.points));
        }
        let entries: Vec<&str> = self.curves.iter().map(|c| c.label.as_str()).collect();
        let normalized: Vec<(f64, f64)> = ink
            .iter()
            .map(|&(x, y)| ((x - x0) / (x1 - x0), (y - y0) / (y1 - y0)))
            .collect();
        let position = legend_corner(&normalized, &entries, chart.plotting_area().dim_in_pixel());
        draw_legend(&mut chart, position)
    }
}
