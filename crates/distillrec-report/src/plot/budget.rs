//! Accuracy against teacher budget, with reference lines.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;

use super::{
    draw_error_bars, draw_legend, draw_legend_sized, draw_markers, legend_corner, legend_size_at,
    legend_with_marker, polyline_ink, save, style_mesh, text, Figure, PlotFiles, LEGEND_FONT,
    PALETTE,
};
use crate::aggregate::BudgetPoint;
use crate::plot::{decimals_for, padded_range};
use crate::tables::{fraction_key, percent, policies_in_order};

/// A horizontal line across the budget plot: a model that needs no budget choice, such
/// as the teacher itself or the student trained without a teacher.
#[derive(Clone, Debug, PartialEq)]
pub struct ReferenceLine {
    /// Legend text, e.g. `teacher: iLoRA` (the value is appended).
    pub label: String,
    /// Its metric (mean over seeds).
    pub value: f64,
}

/// Colour and dash pattern (dash, gap in pixels) of the reference lines, in order.
const REFERENCE_STYLES: [(RGBColor, u32, u32); 4] = [
    (RGBColor(40, 40, 40), 10, 6),
    (RGBColor(130, 130, 130), 4, 4),
    (RGBColor(170, 60, 60), 14, 4),
    (RGBColor(60, 130, 60), 6, 3),
];

/// The x-axis title: what the fraction is a fraction of.
pub(crate) const BUDGET_X_DESC: &str = "fraction of training rows given to the teacher";

/// Legend entries (curves and reference lines) drawn inside the plot; a
/// longer legend is drawn right of it.
const LEGEND_INSIDE_MAX: usize = 8;

/// Pixels above a legend drawn beside the plot (level with the plot's top).
const SIDE_LEGEND_TOP_PX: f64 = 45.0;

/// A legend line's height in units of its text size (plotters' layout).
const LEGEND_LINE: f64 = 1.25;

/// The x axis of [`plot_cost_curve`].
const SECONDS_X_DESC: &str = "teacher seconds (inference, and training in rounds that retrain)";

/// The tick label of the full budget.
pub(crate) const FULL_BUDGET_LABEL: &str = "100% (all rows)";

/// Plots a budget curve: the distilled student's metric against the fraction of
/// training rows given to the teacher, one line with markers per selection policy.
///
/// Writes `path` with its extension replaced by `png` and `svg` ([`PlotFiles`]),
/// [`PLOT_WIDTH`](super::PLOT_WIDTH)×[`PLOT_HEIGHT`](super::PLOT_HEIGHT). The x axis,
/// titled "fraction of training rows given to the teacher", spans 0 to the largest
/// fraction drawn, with ticks printed as percentages and the full budget labelled
/// "100% (all rows)"; the y axis is `metric_name`, zoomed to the data and the
/// reference lines. Policies are drawn in order of first appearance with distinct
/// colours and marker shapes, points sorted by fraction, with vertical error bars
/// where a point has a [`BudgetPoint::spread`]. Each of `references` (e.g. the
/// teacher and the baseline student) is a dashed horizontal line. A legend names
/// every policy and reference with its value (right of the plot when it has more
/// than eight entries).
///
/// Errors (naming `path`): no points ("no points to plot"), a non-finite metric,
/// spread or reference value, a negative spread, a fraction outside `[0, 1]`, or a
/// failure to draw or write the files.
pub fn plot_budget_curve(
    points: &[BudgetPoint],
    metric_name: &str,
    references: &[ReferenceLine],
    path: &Path,
) -> Result<PlotFiles> {
    plot_curve(points, metric_name, references, path, Axis::Share)
}

/// The same curves against teacher seconds (`BudgetPoint::teacher_secs`,
/// required on every point): what the rows cost rather than how many they
/// are, which differs when a teacher is also trained in rounds.
pub fn plot_cost_curve(
    points: &[BudgetPoint],
    metric_name: &str,
    references: &[ReferenceLine],
    path: &Path,
) -> Result<PlotFiles> {
    plot_curve(points, metric_name, references, path, Axis::TeacherSeconds)
}

/// What a curve's x axis measures.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Axis {
    /// The share of the training rows given to the teacher.
    Share,
    /// Teacher seconds.
    TeacherSeconds,
}

impl Axis {
    fn x(self, p: &BudgetPoint) -> f64 {
        match self {
            Axis::Share => p.fraction,
            Axis::TeacherSeconds => p.teacher_secs.unwrap_or(f64::NAN),
        }
    }
}

fn plot_curve(
    points: &[BudgetPoint],
    metric_name: &str,
    references: &[ReferenceLine],
    path: &Path,
    axis: Axis,
) -> Result<PlotFiles> {
    let what = || format!("cannot plot budget curve to {}", path.display());
    if points.is_empty() {
        return Err(anyhow!("no points to plot")).with_context(what);
    }
    validate(points, references).with_context(what)?;
    if axis == Axis::TeacherSeconds {
        if let Some(p) = points
            .iter()
            .find(|p| !p.teacher_secs.is_some_and(|s| s.is_finite() && s >= 0.0))
        {
            return Err(anyhow!(
                "point of {:?} at fraction {}: no finite, non-negative teacher seconds",
                p.policy,
                p.fraction
            ))
            .with_context(what);
        }
    }
    let figure = BudgetFigure {
        points,
        metric_name,
        references,
        axis,
    };
    save(&figure, path).with_context(what)
}

fn validate(points: &[BudgetPoint], references: &[ReferenceLine]) -> Result<()> {
    for (i, p) in points.iter().enumerate() {
        let at = || format!("point {i} (policy {:?}, fraction {})", p.policy, p.fraction);
        if !(p.fraction.is_finite() && (0.0..=1.0).contains(&p.fraction)) {
            bail!("{}: the fraction must be in [0, 1]", at());
        }
        if !p.metric.is_finite() {
            bail!("{}: the metric {} is not finite", at(), p.metric);
        }
        if let Some(s) = p.spread {
            if !s.is_finite() || s < 0.0 {
                bail!(
                    "{}: the spread {s} is not a finite non-negative number",
                    at()
                );
            }
        }
    }
    for r in references {
        if !r.value.is_finite() {
            bail!("reference line {:?}: {} is not finite", r.label, r.value);
        }
    }
    Ok(())
}

struct BudgetFigure<'a> {
    points: &'a [BudgetPoint],
    metric_name: &'a str,
    references: &'a [ReferenceLine],
    axis: Axis,
}

impl Figure for BudgetFigure<'_> {
    fn draw<DB>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB: DrawingBackend,
        DB::ErrorType: 'static,
    {
        let policies = policies_in_order(self.points);
        let mut lo = f64::INFINITY;
        let mut hi = f64::NEG_INFINITY;
        for p in self.points {
            let s = p.spread.unwrap_or(0.0);
            lo = lo.min(p.metric - s);
            hi = hi.max(p.metric + s);
        }
        for r in self.references {
            lo = lo.min(r.value);
            hi = hi.max(r.value);
        }
        let (y0, y1) = padded_range(lo, hi);
        let decimals = decimals_for(y1 - y0);
        // The x axis ends at the largest share or time drawn, so the curves
        // of a small budget are not squeezed into the left of the plot, with
        // a little room either side so no marker is cut in half.
        let most = self
            .points
            .iter()
            .map(|p| self.axis.x(p))
            .fold(0.0, f64::max)
            .max(1e-9);
        let (x0, x1) = match self.axis {
            Axis::Share => (-0.02 * most, 1.02 * most),
            Axis::TeacherSeconds => (-0.02 * most, 1.04 * most),
        };
        let (caption, x_desc) = match self.axis {
            Axis::Share => ("teacher budget", BUDGET_X_DESC),
            Axis::TeacherSeconds => ("teacher seconds", SECONDS_X_DESC),
        };

        let reference_labels: Vec<String> = self
            .references
            .iter()
            .map(|r| format!("{} ({:.4})", r.label, r.value))
            .collect();
        let mut entries: Vec<&str> = policies.iter().map(String::as_str).collect();
        entries.extend(reference_labels.iter().map(String::as_str));
        // A long legend goes right of the plot, where it hides nothing; a
        // short one into the emptiest corner of it.
        let (width, height) = root.dim_in_pixel();
        let side = (entries.len() > LEGEND_INSIDE_MAX).then(|| {
            // smaller text when the lines would not fit the height
            let fit = (f64::from(height) - SIDE_LEGEND_TOP_PX - 40.0)
                / (LEGEND_LINE * entries.len() as f64);
            let size = (fit.floor() as u32).clamp(7, LEGEND_FONT);
            let side = (legend_size_at(&entries, size).0 + 30.0).min(f64::from(width) / 2.0);
            (side as u32, size)
        });
        let (area, legend_area) = match side {
            Some((side, size)) => {
                let (plot, legend) = root.split_horizontally(width - side);
                (plot, Some((legend, size)))
            }
            None => (root.clone(), None),
        };
        let mut chart = ChartBuilder::on(&area)
            .caption(format!("{} vs {caption}", self.metric_name), text(22))
            .margin(15)
            .margin_right(45) // room for the "100% (all rows)" tick label
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        let x_formatter = |x: &f64| match self.axis {
            Axis::TeacherSeconds => format!("{x:.0} s"),
            Axis::Share if fraction_key(*x) == fraction_key(1.0) => FULL_BUDGET_LABEL.to_string(),
            Axis::Share => percent(*x),
        };
        let y_formatter = |y: &f64| format!("{y:.decimals$}");
        let mut mesh = chart.configure_mesh();
        mesh.x_labels(6)
            .y_labels(8)
            .x_label_formatter(&x_formatter)
            .y_label_formatter(&y_formatter)
            .x_desc(x_desc)
            .y_desc(self.metric_name);
        style_mesh(&mut mesh);
        mesh.draw()?;

        for (i, (r, label)) in self.references.iter().zip(&reference_labels).enumerate() {
            let (color, dash, gap) = REFERENCE_STYLES[i % REFERENCE_STYLES.len()];
            let style = color.stroke_width(2);
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(x0, r.value), (x1, r.value)],
                    dash,
                    gap,
                    style,
                ))?
                .label(label.as_str())
                .legend(reference_glyph(i));
        }

        // Each policy's points, sorted by fraction.
        let curves: Vec<(&str, Vec<&BudgetPoint>)> = policies
            .iter()
            .map(|policy| {
                let mut pts: Vec<&BudgetPoint> =
                    self.points.iter().filter(|p| &p.policy == policy).collect();
                pts.sort_by(|a, b| self.axis.x(a).total_cmp(&self.axis.x(b)));
                (policy.as_str(), pts)
            })
            .collect();

        let mut ink: Vec<(f64, f64)> = Vec::new();
        for (i, (policy, pts)) in curves.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let spreads: Vec<(f64, f64, f64)> = pts
                .iter()
                .filter_map(|p| {
                    let s = p.spread.filter(|s| *s > 0.0)?;
                    Some((self.axis.x(p), p.metric - s, p.metric + s))
                })
                .collect();
            draw_error_bars(&mut chart, &spreads, color.mix(0.8).stroke_width(1))?;
            let xy: Vec<(f64, f64)> = pts.iter().map(|p| (self.axis.x(p), p.metric)).collect();
            let anno = chart
                .draw_series(LineSeries::new(xy.iter().copied(), color.stroke_width(2)))?
                .label(*policy);
            legend_with_marker(anno, i, color);
            draw_markers(&mut chart, &xy, i, color)?;
            ink.extend(polyline_ink(&xy));
            ink.extend(spreads.iter().flat_map(|&(x, l, h)| [(x, l), (x, h)]));
        }

        if let Some((legend_area, size)) = legend_area {
            return draw_side_legend(&legend_area, size, &reference_labels, &policies);
        }
        // Put the legend in the corner that hides the least of the curves and lines.
        for r in self.references {
            ink.extend((0..=50).map(|k| (x0 + (x1 - x0) * k as f64 / 50.0, r.value)));
        }
        let normalized: Vec<(f64, f64)> = ink
            .iter()
            .map(|&(x, y)| ((x - x0) / (x1 - x0), (y - y0) / (y1 - y0)))
            .collect();
        let position = legend_corner(&normalized, &entries, chart.plotting_area().dim_in_pixel());
        draw_legend(&mut chart, position)
    }
}

/// The legend glyph of reference line `i`: a short dashed line in its style.
fn reference_glyph<DB: DrawingBackend>(
    i: usize,
) -> impl Fn((i32, i32)) -> DynElement<'static, DB, (i32, i32)> {
    let (color, dash, gap) = REFERENCE_STYLES[i % REFERENCE_STYLES.len()];
    let style = color.stroke_width(2);
    move |(x, y)| {
        DashedPathElement::new(vec![(x, y), (x + 20, y)], dash / 2, gap / 2, style).into_dyn()
    }
}

/// A legend of its own beside the plot, for more entries than fit inside
/// it: the same glyphs (reference lines, then curves), on an empty chart
/// that fills `area`.
fn draw_side_legend<DB>(
    area: &DrawingArea<DB, Shift>,
    size: u32,
    reference_labels: &[String],
    curves: &[String],
) -> Result<()>
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
{
    let mut chart = ChartBuilder::on(area)
        .margin_top(SIDE_LEGEND_TOP_PX as u32)
        .build_cartesian_2d(0.0..1.0, 0.0..1.0)?;
    let nothing = || std::iter::empty::<Circle<(f64, f64), i32>>();
    for (i, label) in reference_labels.iter().enumerate() {
        chart
            .draw_series(nothing())?
            .label(label.as_str())
            .legend(reference_glyph(i));
    }
    for (i, label) in curves.iter().enumerate() {
        let anno = chart.draw_series(nothing())?.label(label.as_str());
        legend_with_marker(anno, i, PALETTE[i % PALETTE.len()]);
    }
    draw_legend_sized(&mut chart, SeriesLabelPosition::UpperLeft, size)
}
