//! Plots, each written as PNG and SVG: accuracy against teacher budget, metric bars
//! per model, learning curves and cost per model.
//!
//! Every plot is a [`Figure`]: it draws itself once onto a generic plotters
//! [`DrawingArea`], and [`save`] runs that same drawing on two backends: an in-memory
//! RGB bitmap with text rasterised from the embedded DejaVu Sans ([`Canvas`], encoded
//! with the `png` crate; no `bitmap_encoder`, which would pull in the `image` crate)
//! and plotters' SVG backend rendering to a `String` ([`SvgCanvas`], text measured
//! with the same font). Both files are written atomically. No system library is
//! involved, so the same input gives the same bytes on every machine.

mod bars;
mod budget;
mod cost;
mod curves;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use plotters::chart::SeriesAnno;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::canvas::{font, Canvas, SvgCanvas};

pub use bars::plot_metric_bars;
pub use budget::{plot_budget_curve, plot_cost_curve, ReferenceLine};
pub use cost::plot_costs;
pub use curves::{plot_learning_curves, LearningCurve};

/// Width in pixels of every plot.
pub const PLOT_WIDTH: u32 = 800;
/// Height in pixels of every plot.
pub const PLOT_HEIGHT: u32 = 500;

/// The two files a plot function wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlotFiles {
    /// The PNG ([`PLOT_WIDTH`]×[`PLOT_HEIGHT`] pixels).
    pub png: PathBuf,
    /// The SVG (same size and layout, text as `<text>` elements).
    pub svg: PathBuf,
}

impl PlotFiles {
    /// The files for `path`: its extension, if any, replaced by `png` and `svg`.
    pub fn for_path(path: &Path) -> Self {
        PlotFiles {
            png: path.with_extension("png"),
            svg: path.with_extension("svg"),
        }
    }
}

/// Font family every text style below asks for (the backends draw or name the
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

/// Font size of legend entries.
const LEGEND_FONT: u32 = 13;

/// A plot that draws itself on any plotters backend; [`save`] calls it once per
/// output format.
trait Figure {
    /// Draws the whole plot onto `root` (already filled white).
    fn draw<DB>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB: DrawingBackend,
        DB::ErrorType: 'static;
}

/// Renders `figure` as PNG and SVG and writes both atomically next to each other
/// (see [`PlotFiles::for_path`]).
fn save(figure: &impl Figure, path: &Path) -> Result<PlotFiles> {
    let files = PlotFiles::for_path(path);
    let png = render_png(figure)?;
    let svg = render_svg(figure)?;
    for (file, bytes) in [(&files.png, png.as_slice()), (&files.svg, svg.as_bytes())] {
        distillrec_data::fsutil::atomic_write(file, bytes)
            .with_context(|| format!("cannot write plot {}", file.display()))?;
    }
    Ok(files)
}

/// Draws `figure` on a white RGB canvas and returns the PNG bytes.
fn render_png(figure: &impl Figure) -> Result<Vec<u8>> {
    let font = font().context("the embedded font DejaVuSans.ttf could not be parsed")?;
    let mut rgb = vec![0u8; (PLOT_WIDTH * PLOT_HEIGHT * 3) as usize];
    {
        let bitmap = BitMapBackend::with_buffer(&mut rgb, (PLOT_WIDTH, PLOT_HEIGHT));
        let root = Canvas::new(bitmap, font).into_drawing_area();
        root.fill(&WHITE)?;
        figure.draw(&root)?;
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

/// Draws `figure` on a white SVG document and returns its text.
fn render_svg(figure: &impl Figure) -> Result<String> {
    let font = font().context("the embedded font DejaVuSans.ttf could not be parsed")?;
    let mut svg = String::new();
    {
        let backend = SVGBackend::with_string(&mut svg, (PLOT_WIDTH, PLOT_HEIGHT));
        let root = SvgCanvas::new(backend, font).into_drawing_area();
        root.fill(&WHITE)?;
        figure.draw(&root)?;
        root.present()?;
    }
    Ok(tidy_font_sizes(&svg))
}

/// Rounds every `font-size="…"` to two decimals: the SVG backend divides the size by
/// 1.24 after [`SvgCanvas`] multiplied it, which leaves `13.000000000000002`.
fn tidy_font_sizes(svg: &str) -> String {
    const KEY: &str = "font-size=\"";
    let mut out = String::with_capacity(svg.len());
    let mut rest = svg;
    while let Some(i) = rest.find(KEY) {
        let (head, tail) = rest.split_at(i + KEY.len());
        out.push_str(head);
        let end = tail.find('"').unwrap_or(tail.len());
        match tail[..end].parse::<f64>() {
            Ok(v) => out.push_str(&format!("{}", (v * 100.0).round() / 100.0)),
            Err(_) => out.push_str(&tail[..end]),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
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

/// A chart with two linear `f64` axes on backend `DB`.
type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// The light grid and axis-label styles every chart shares.
fn style_mesh<DB>(mesh: &mut plotters::chart::MeshStyle<'_, '_, RangedCoordf64, RangedCoordf64, DB>)
where
    DB: DrawingBackend,
{
    mesh.label_style(text(13))
        .axis_desc_style(text(15))
        .max_light_lines(1)
        .light_line_style(RGBColor(240, 240, 240))
        .bold_line_style(RGBColor(215, 215, 215));
}

/// Draws vertical error bars `(x, lo, hi)` with 8-pixel caps.
fn draw_error_bars<DB>(
    chart: &mut Chart<'_, DB>,
    bars: &[(f64, f64, f64)],
    style: ShapeStyle,
) -> Result<()>
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
{
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
fn legend_with_marker<'a, DB: DrawingBackend + 'a>(
    anno: &mut SeriesAnno<'a, DB>,
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
/// distinct shapes keep lines apart in greyscale prints.
fn draw_markers<DB>(
    chart: &mut Chart<'_, DB>,
    points: &[(f64, f64)],
    shape: usize,
    color: RGBColor,
) -> Result<()>
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
{
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

/// Draws the legend of `chart` at `position` in the shared style.
fn draw_legend<'a, DB>(chart: &mut Chart<'a, DB>, position: SeriesLabelPosition) -> Result<()>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
{
    draw_legend_sized(chart, position, LEGEND_FONT)
}

/// [`draw_legend`] with text of `size` pixels (a long legend beside a plot).
fn draw_legend_sized<'a, DB>(
    chart: &mut Chart<'a, DB>,
    position: SeriesLabelPosition,
    size: u32,
) -> Result<()>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .position(position)
        .label_font(text(size))
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(160, 160, 160))
        .draw()?;
    Ok(())
}

/// Legend box size in pixels for `entries`, as plotters 0.3.7 lays it out: its
/// built-in text estimate (0.7 em per character, em = size / 1.24²), lines 1.25 × size
/// apart, a 30-pixel glyph column and 10-pixel margins, 5 pixels from the area edge.
fn legend_size(entries: &[&str]) -> (f64, f64) {
    legend_size_at(entries, LEGEND_FONT)
}

/// [`legend_size`] with text of `size` pixels.
fn legend_size_at(entries: &[&str], size: u32) -> (f64, f64) {
    let size = f64::from(size);
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

/// Points along the polyline through `pts` (21 per segment), for [`legend_corner`].
fn polyline_ink(pts: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut ink: Vec<(f64, f64)> = pts.to_vec();
    for w in pts.windows(2) {
        ink.extend((0..=20).map(|k| {
            let t = k as f64 / 20.0;
            (
                w[0].0 + t * (w[1].0 - w[0].0),
                w[0].1 + t * (w[1].1 - w[0].1),
            )
        }));
    }
    ink
}
