//! PNG plots: accuracy against teacher budget, and metric bars per model.
//!
//! Everything is drawn by `plotters` into an in-memory RGB buffer (no
//! `bitmap_encoder`, which would pull in the `image` crate), text is rasterised with
//! `ab_glyph` from the embedded DejaVu Sans by [`Canvas`], and the buffer is encoded
//! with the `png` crate and written atomically. No system library is involved, so the
//! same input gives the same bytes on every machine.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use plotters::chart::SeriesAnno;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::aggregate::{AggregateRow, BudgetPoint};
use crate::canvas::{font, Canvas};
use crate::tables::{percent, policies_in_order};

/// Width in pixels of every plot.
pub const PLOT_WIDTH: u32 = 800;
/// Height in pixels of every plot.
pub const PLOT_HEIGHT: u32 = 500;

/// Font family every text style below asks for (the canvas draws all text with the
/// embedded DejaVu Sans anyway).
const FAMILY: &str = "sans-serif";

/// Okabe–Ito colours: distinguishable with the common colour-vision deficiencies.
const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),   // blue
    RGBColor(230, 159, 0),   // orange
    RGBColor(0, 158, 115),   // bluish green
    RGBColor(213, 94, 0),    // vermillion
    RGBColor(204, 121, 167), // reddish purple
    RGBColor(86, 180, 233),  // sky blue
    RGBColor(0, 0, 0),       // black
    RGBColor(240, 228, 66),  // yellow
];

type Root<'a> = DrawingArea<Canvas<'a>, Shift>;

/// Plots a budget curve: the distilled student's metric against the fraction of
/// training rows given to the teacher, one line with markers per selection policy.
///
/// The PNG is [`PLOT_WIDTH`]×[`PLOT_HEIGHT`] (800×500). The x axis spans the
/// fractions 0..1 with ticks printed as percentages; the y axis is `metric_name`,
/// zoomed to the data (never below zero for non-negative data). Policies are drawn in
/// order of first appearance with distinct colours and marker shapes, points sorted by
/// fraction, and vertical error bars where a point has a [`BudgetPoint::spread`]. An
/// optional `baseline` (the student trained without a teacher) is a dashed horizontal
/// line. A legend names every policy and the baseline.
///
/// Errors (naming `path`): no points ("no points to plot"), a non-finite metric,
/// spread or baseline, a negative spread, a fraction outside `[0, 1]`, or a failure to
/// draw or write the file. The file is written atomically.
pub fn plot_budget_curve(
    points: &[BudgetPoint],
    metric_name: &str,
    baseline: Option<f64>,
    path: &Path,
) -> Result<()> {
    let what = || format!("cannot plot budget curve to {}", path.display());
    if points.is_empty() {
        return Err(anyhow!("no points to plot")).with_context(what);
    }
    validate_budget(points, baseline).with_context(what)?;
    let png = render(|root| draw_budget(root, points, metric_name, baseline)).with_context(what)?;
    write_png(path, &png)
}

/// Plots one bar per row: the mean of `metric` over seeds, with a ±1 std error bar
/// where the row has a std (two or more seeds).
///
/// The PNG is [`PLOT_WIDTH`]×[`PLOT_HEIGHT`] (800×500). Bars appear in the order of
/// `rows`, coloured by [`AggregateRow::group`] (baseline grey, teacher orange,
/// distilled blue, ablation green, other groups from the palette) with a legend of
/// the groups, the mean printed above each bar (up to 16 bars), and the labels under
/// the bars, turned vertical (and shortened with `…` if very long) when they do not fit
/// side by side. The y axis starts at zero. Rows without `metric` are skipped.
///
/// Errors (naming `path`): no rows, or no row with `metric` ("no points to plot"), a
/// non-finite mean or std, or a failure to draw or write the file. The file is written
/// atomically.
pub fn plot_metric_bars(rows: &[AggregateRow], metric: &str, path: &Path) -> Result<()> {
    let what = || format!("cannot plot {metric} bars to {}", path.display());
    let bars: Vec<Bar> = rows
        .iter()
        .filter_map(|r| {
            r.mean.get(metric).map(|&mean| Bar {
                label: r.label.as_str(),
                group: r.group.as_str(),
                mean,
                std: r.std.get(metric).copied(),
            })
        })
        .collect();
    if bars.is_empty() {
        let msg = if rows.is_empty() {
            "no points to plot".to_string()
        } else {
            format!("no points to plot: no row has metric {metric:?}")
        };
        return Err(anyhow!(msg)).with_context(what);
    }
    for b in &bars {
        if !b.mean.is_finite() || b.std.is_some_and(|s| !s.is_finite() || s < 0.0) {
            return Err(anyhow!(
                "row {:?}: {metric} = {} ± {:?} is not a finite value with a non-negative std",
                b.label,
                b.mean,
                b.std
            ))
            .with_context(what);
        }
    }
    let png = render(|root| draw_bars(root, &bars, metric)).with_context(what)?;
    write_png(path, &png)
}

/// One bar of [`plot_metric_bars`].
struct Bar<'a> {
    label: &'a str,
    group: &'a str,
    mean: f64,
    std: Option<f64>,
}

/// Draws on a white 800×500 RGB canvas and returns the PNG bytes.
fn render(draw: impl FnOnce(&Root<'_>) -> Result<()>) -> Result<Vec<u8>> {
    let font = font().context("the embedded font DejaVuSans.ttf could not be parsed")?;
    let mut rgb = vec![0u8; (PLOT_WIDTH * PLOT_HEIGHT * 3) as usize];
    {
        let bitmap = BitMapBackend::with_buffer(&mut rgb, (PLOT_WIDTH, PLOT_HEIGHT));
        let root = Canvas::new(bitmap, font).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    let mut png_bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut png_bytes, PLOT_WIDTH, PLOT_HEIGHT);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().context("cannot encode PNG")?;
    writer.write_image_data(&rgb).context("cannot encode PNG")?;
    writer.finish().context("cannot encode PNG")?;
    Ok(png_bytes)
}

fn write_png(path: &Path, png: &[u8]) -> Result<()> {
    distillrec_data::fsutil::atomic_write(path, png)
        .with_context(|| format!("cannot write plot {}", path.display()))
}

fn validate_budget(points: &[BudgetPoint], baseline: Option<f64>) -> Result<()> {
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
    if let Some(b) = baseline {
        if !b.is_finite() {
            bail!("the baseline {b} is not finite");
        }
    }
    Ok(())
}

/// Number of decimals that makes ticks over a span of `span` distinct.
fn decimals_for(span: f64) -> usize {
    if span.is_finite() && span > 0.0 {
        ((-span.log10()).ceil() + 1.0).clamp(0.0, 6.0) as usize
    } else {
        3
    }
}

/// The y range for values in `lo..=hi`: padded by 8%, not below zero if the data
/// are not, and never empty.
fn padded_range(lo: f64, hi: f64) -> (f64, f64) {
    let span = hi - lo;
    let pad = if span > 1e-12 {
        span * 0.08
    } else {
        (hi.abs() * 0.05).max(0.01)
    };
    let mut lo2 = lo - pad;
    if lo >= 0.0 && lo2 < 0.0 {
        lo2 = 0.0;
    }
    (lo2, hi + pad)
}

fn text(size: u32) -> TextStyle<'static> {
    (FAMILY, size).into_font().color(&BLACK)
}

type Chart<'a, 'b> = ChartContext<'a, Canvas<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Draws vertical error bars `(x, lo, hi)` with 8-pixel caps.
fn draw_error_bars(
    chart: &mut Chart<'_, '_>,
    bars: &[(f64, f64, f64)],
    style: ShapeStyle,
) -> Result<()> {
    chart.draw_series(
        bars.iter()
            .map(|&(x, lo, hi)| PathElement::new(vec![(x, lo), (x, hi)], style)),
    )?;
    chart.draw_series(bars.iter().flat_map(|&(x, lo, hi)| {
        [lo, hi].map(|y| EmptyElement::at((x, y)) + PathElement::new(vec![(-4, 0), (4, 0)], style))
    }))?;
    Ok(())
}

/// Sets a legend entry of a line with a marker of shape `shape % 4` (see
/// [`draw_markers`]).
fn legend_with_marker<'a, 'b: 'a>(
    anno: &mut SeriesAnno<'a, Canvas<'b>>,
    shape: usize,
    color: RGBColor,
) {
    let line = move |(x, y): (i32, i32)| {
        EmptyElement::at((x, y)) + PathElement::new(vec![(0, 0), (20, 0)], color.stroke_width(2))
    };
    match shape % 4 {
        0 => anno.legend(move |c| line(c) + Circle::new((10, 0), 4, color.filled())),
        1 => anno.legend(move |c| line(c) + TriangleMarker::new((10, 0), 6, color.filled())),
        2 => anno.legend(move |c| line(c) + Rectangle::new([(6, -4), (14, 4)], color.filled())),
        _ => anno.legend(move |c| line(c) + Cross::new((10, 0), 4, color.stroke_width(2))),
    };
}

/// Draws markers of shape `shape % 4` (circle, triangle, square, cross) at `points`;
/// distinct shapes keep policies apart in greyscale prints.
fn draw_markers(
    chart: &mut Chart<'_, '_>,
    points: &[(f64, f64)],
    shape: usize,
    color: RGBColor,
) -> Result<()> {
    let at = |p: &(f64, f64)| EmptyElement::at(*p);
    match shape % 4 {
        0 => chart.draw_series(
            points
                .iter()
                .map(|p| at(p) + Circle::new((0, 0), 4, color.filled())),
        )?,
        1 => chart.draw_series(
            points
                .iter()
                .map(|p| at(p) + TriangleMarker::new((0, 0), 6, color.filled())),
        )?,
        2 => chart.draw_series(
            points
                .iter()
                .map(|p| at(p) + Rectangle::new([(-4, -4), (4, 4)], color.filled())),
        )?,
        _ => chart.draw_series(
            points
                .iter()
                .map(|p| at(p) + Cross::new((0, 0), 4, color.stroke_width(2))),
        )?,
    };
    Ok(())
}

fn draw_budget(
    root: &Root<'_>,
    points: &[BudgetPoint],
    metric_name: &str,
    baseline: Option<f64>,
) -> Result<()> {
    let policies = policies_in_order(points);
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for p in points {
        let s = p.spread.unwrap_or(0.0);
        lo = lo.min(p.metric - s);
        hi = hi.max(p.metric + s);
    }
    if let Some(b) = baseline {
        lo = lo.min(b);
        hi = hi.max(b);
    }
    let (y0, y1) = padded_range(lo, hi);
    let decimals = decimals_for(y1 - y0);
    // A little room left and right so markers at 0% and 100% are not cut in half.
    let (x0, x1) = (-0.02, 1.02);

    let mut chart = ChartBuilder::on(root)
        .caption(format!("{metric_name} vs teacher budget"), text(22))
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    chart
        .configure_mesh()
        .x_labels(11)
        .y_labels(8)
        .x_label_formatter(&|x| percent(*x))
        .y_label_formatter(&|y| format!("{y:.decimals$}"))
        .x_desc("fraction of training rows given to the teacher")
        .y_desc(metric_name)
        .label_style(text(13))
        .axis_desc_style(text(15))
        .max_light_lines(1)
        .light_line_style(RGBColor(240, 240, 240))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()?;

    if let Some(b) = baseline {
        let style = RGBColor(90, 90, 90).stroke_width(2);
        chart
            .draw_series(DashedLineSeries::new(vec![(x0, b), (x1, b)], 10, 6, style))?
            .label(format!("baseline student ({b:.4})"))
            .legend(move |(x, y)| DashedPathElement::new(vec![(x, y), (x + 20, y)], 5, 3, style));
    }

    // Each policy's points, sorted by fraction.
    let curves: Vec<(&str, Vec<&BudgetPoint>)> = policies
        .iter()
        .map(|policy| {
            let mut pts: Vec<&BudgetPoint> =
                points.iter().filter(|p| &p.policy == policy).collect();
            pts.sort_by(|a, b| a.fraction.total_cmp(&b.fraction));
            (policy.as_str(), pts)
        })
        .collect();

    for (i, (policy, pts)) in curves.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let spreads: Vec<(f64, f64, f64)> = pts
            .iter()
            .filter_map(|p| {
                p.spread
                    .filter(|s| *s > 0.0)
                    .map(|s| (p.fraction, p.metric - s, p.metric + s))
            })
            .collect();
        draw_error_bars(&mut chart, &spreads, color.mix(0.8).stroke_width(1))?;
        let anno = chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (p.fraction, p.metric)),
                color.stroke_width(2),
            ))?
            .label(*policy);
        legend_with_marker(anno, i, color);
        let xy: Vec<(f64, f64)> = pts.iter().map(|p| (p.fraction, p.metric)).collect();
        draw_markers(&mut chart, &xy, i, color)?;
    }

    // Put the legend in the corner that hides the least of the curves and the baseline.
    let mut ink: Vec<(f64, f64)> = Vec::new();
    for (_, pts) in &curves {
        for p in pts {
            let s = p.spread.unwrap_or(0.0);
            ink.extend([(p.fraction, p.metric - s), (p.fraction, p.metric + s)]);
        }
        for w in pts.windows(2) {
            ink.extend((0..=20).map(|k| {
                let t = k as f64 / 20.0;
                (
                    w[0].fraction + t * (w[1].fraction - w[0].fraction),
                    w[0].metric + t * (w[1].metric - w[0].metric),
                )
            }));
        }
    }
    if let Some(b) = baseline {
        ink.extend((0..=50).map(|k| (x0 + (x1 - x0) * k as f64 / 50.0, b)));
    }
    let mut entries: Vec<&str> = policies.iter().map(String::as_str).collect();
    let baseline_label = baseline.map(|b| format!("baseline student ({b:.4})"));
    entries.extend(baseline_label.as_deref());
    let normalized: Vec<(f64, f64)> = ink
        .iter()
        .map(|&(x, y)| ((x - x0) / (x1 - x0), (y - y0) / (y1 - y0)))
        .collect();
    let position = legend_corner(&normalized, &entries, chart.plotting_area().dim_in_pixel());

    chart
        .configure_series_labels()
        .position(position)
        .label_font(text(LEGEND_FONT))
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(160, 160, 160))
        .draw()?;
    Ok(())
}

/// Font size of legend entries.
const LEGEND_FONT: u32 = 13;

/// Legend box size in pixels for `entries`, as plotters 0.3.7 lays it out: its
/// built-in text estimate (0.7 em per character, em = size / 1.24²), lines 1.25 × size
/// apart, a 30-pixel glyph column and 10-pixel margins, 5 pixels from the area edge.
fn legend_size(entries: &[&str]) -> (f64, f64) {
    let size = f64::from(LEGEND_FONT);
    let em = size / 1.24 / 1.24;
    let chars = entries.iter().map(|e| e.chars().count()).max().unwrap_or(0);
    let lines = entries.len().max(1) as f64;
    let width = 0.7 * em * chars as f64 + 30.0 + 20.0 + 5.0;
    let height = (lines - 1.0) * 1.25 * size + 1.24 * em + 20.0 + 5.0;
    (width, height)
}

/// The corner of the plotting area (`area` pixels) where a legend of `entries` covers
/// the fewest `ink` points (given as fractions of the area, y up); ties go to the
/// first of lower right, upper left, upper right, lower left.
fn legend_corner(ink: &[(f64, f64)], entries: &[&str], area: (u32, u32)) -> SeriesLabelPosition {
    const SLACK_PX: f64 = 16.0;
    let (w, h) = legend_size(entries);
    let wf = (w + SLACK_PX) / f64::from(area.0.max(1));
    let hf = (h + SLACK_PX) / f64::from(area.1.max(1));
    let candidates = [
        (SeriesLabelPosition::LowerRight, true, false),
        (SeriesLabelPosition::UpperLeft, false, true),
        (SeriesLabelPosition::UpperRight, true, true),
        (SeriesLabelPosition::LowerLeft, false, false),
    ];
    let covered = |right: bool, upper: bool| {
        ink.iter()
            .filter(|&&(x, y)| {
                let in_x = if right { x >= 1.0 - wf } else { x <= wf };
                let in_y = if upper { y >= 1.0 - hf } else { y <= hf };
                in_x && in_y
            })
            .count()
    };
    let mut best = (usize::MAX, SeriesLabelPosition::LowerRight);
    for (pos, right, upper) in candidates {
        let c = covered(right, upper);
        if c < best.0 {
            best = (c, pos);
        }
    }
    best.1
}

/// Colour of a bar group: fixed colours for the usual groups, the palette otherwise.
fn group_color(group: &str, index: usize) -> RGBColor {
    match group {
        "baseline" => RGBColor(140, 140, 140),
        "teacher" => PALETTE[1],
        "distilled" => PALETTE[0],
        "ablation" => PALETTE[2],
        _ => PALETTE[(3 + index) % PALETTE.len()],
    }
}

/// Shortens `label` with a trailing `…` until it is at most `max_px` wide.
fn fit_label(root: &Root<'_>, label: &str, style: &TextStyle, max_px: u32) -> Result<String> {
    let width = |s: &str| root.estimate_text_size(s, style).map(|(w, _)| w);
    if width(label)? <= max_px {
        return Ok(label.to_string());
    }
    let chars: Vec<char> = label.chars().collect();
    for keep in (1..chars.len()).rev() {
        let candidate: String = chars[..keep].iter().chain(std::iter::once(&'…')).collect();
        if width(&candidate)? <= max_px {
            return Ok(candidate);
        }
    }
    Ok("…".to_string())
}

fn draw_bars(root: &Root<'_>, bars: &[Bar<'_>], metric: &str) -> Result<()> {
    const MARGIN: u32 = 15;
    const Y_LABEL_AREA: u32 = 70;
    const MAX_VERTICAL_LABEL: u32 = 150;
    let n = bars.len();
    let label_style = text(13);

    // Labels side by side if they all fit under their bar, vertical otherwise.
    let slot = (PLOT_WIDTH - 2 * MARGIN - Y_LABEL_AREA) as f64 / n as f64;
    let mut widest = 0;
    for b in bars {
        widest = widest.max(root.estimate_text_size(b.label, &label_style)?.0);
    }
    let vertical = widest as f64 > slot - 6.0;
    let labels: Vec<String> = if vertical {
        bars.iter()
            .map(|b| fit_label(root, b.label, &label_style, MAX_VERTICAL_LABEL))
            .collect::<Result<_>>()?
    } else {
        bars.iter().map(|b| b.label.to_string()).collect()
    };
    let x_label_area = if vertical {
        widest.min(MAX_VERTICAL_LABEL) + 14
    } else {
        30
    };

    // Groups in order of appearance; a legend only when there is something to tell apart.
    let mut groups: Vec<&str> = Vec::new();
    for b in bars {
        if !groups.contains(&b.group) {
            groups.push(b.group);
        }
    }
    let show_legend = groups.len() >= 2;

    let mut lo: f64 = 0.0;
    let mut hi: f64 = 0.0;
    for b in bars {
        let s = b.std.unwrap_or(0.0);
        lo = lo.min(b.mean - s);
        hi = hi.max(b.mean + s);
    }
    if hi - lo < 1e-12 {
        hi = lo + 1.0;
    }
    let y0 = if lo < 0.0 { lo - 0.08 * (hi - lo) } else { 0.0 };
    // Headroom above the highest bar for its value label and, when shown, the legend
    // (upper right), computed from the approximate height of the plotting area.
    let caption_px = 22.0 * 1.5;
    let plot_px = f64::from(PLOT_HEIGHT - 2 * MARGIN - x_label_area) - caption_px;
    let mut reserved_px = 22.0;
    if show_legend {
        reserved_px += legend_size(&groups).1 + 8.0;
    }
    let free = (1.0 - reserved_px / plot_px).max(0.3);
    let y1 = y0 + (hi - y0) / free;
    let decimals = decimals_for(y1 - y0);

    let mut chart = ChartBuilder::on(root)
        .caption(
            format!("{metric} per model (mean ± std over seeds)"),
            text(22),
        )
        .margin(MARGIN)
        .x_label_area_size(x_label_area)
        .y_label_area_size(Y_LABEL_AREA)
        .build_cartesian_2d(0.0..n as f64, y0..y1)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_labels(8)
        .y_label_formatter(&|y| format!("{y:.decimals$}"))
        .y_desc(metric)
        .label_style(text(13))
        .axis_desc_style(text(15))
        .max_light_lines(1)
        .light_line_style(RGBColor(240, 240, 240))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()?;

    // One series per group so the legend lists the groups.
    for (gi, group) in groups.iter().enumerate() {
        let color = group_color(group, gi);
        let series = chart.draw_series(
            bars.iter()
                .enumerate()
                .filter(|(_, b)| b.group == *group)
                .map(|(i, b)| {
                    let x = i as f64;
                    Rectangle::new([(x + 0.15, 0.0), (x + 0.85, b.mean)], color.filled())
                }),
        )?;
        if show_legend {
            series.label(*group).legend(move |(x, y)| {
                Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled())
            });
        }
    }

    let errors: Vec<(f64, f64, f64)> = bars
        .iter()
        .enumerate()
        .filter_map(|(i, b)| {
            b.std
                .filter(|s| *s > 0.0)
                .map(|s| (i as f64 + 0.5, b.mean - s, b.mean + s))
        })
        .collect();
    draw_error_bars(&mut chart, &errors, BLACK.stroke_width(1))?;

    if n <= 16 {
        // Metrics in [0, 1] get the tables' 4 decimals; seconds and counts fewer.
        let largest = bars.iter().map(|b| b.mean.abs()).fold(0.0, f64::max);
        let places = match largest {
            m if m < 1.0 => 4,
            m if m < 10.0 => 3,
            m if m < 1000.0 => 1,
            _ => 0,
        };
        let value_style = text(12).pos(Pos::new(HPos::Center, VPos::Bottom));
        chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
            let top = b.mean.max(0.0) + b.std.unwrap_or(0.0);
            EmptyElement::at((i as f64 + 0.5, top))
                + Text::new(format!("{:.places$}", b.mean), (0, -4), value_style.clone())
        }))?;
    }

    // Labels under the bars, in backend coordinates below the x axis.
    let style = if vertical {
        label_style
            .transform(FontTransform::Rotate270)
            .pos(Pos::new(HPos::Right, VPos::Center))
    } else {
        label_style.pos(Pos::new(HPos::Center, VPos::Top))
    };
    for (i, label) in labels.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(i as f64 + 0.5, y0));
        root.draw(&Text::new(label.as_str(), (px, py + 6), style.clone()))?;
    }

    if show_legend {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font(text(LEGEND_FONT))
            .background_style(WHITE.mix(0.9))
            .border_style(RGBColor(160, 160, 160))
            .draw()?;
    }
    Ok(())
}
