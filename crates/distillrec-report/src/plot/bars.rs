//! One bar per model: a metric with error bars, and the bar-label layout the cost
//! plot shares.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{
    decimals_for, draw_error_bars, draw_legend, legend_size, save, style_mesh, text, Chart, Figure,
    PlotFiles, PALETTE, PLOT_HEIGHT, PLOT_WIDTH,
};
use crate::aggregate::AggregateRow;

/// Outer margin of bar charts in pixels.
pub(super) const MARGIN: u32 = 15;
/// Width of the y label area of bar charts in pixels.
pub(super) const Y_LABEL_AREA: u32 = 70;

/// Plots one bar per row: the mean of `metric` over seeds, with a ±1 std error bar
/// where the row has a std (two or more seeds).
///
/// Writes `path` with its extension replaced by `png` and `svg` ([`PlotFiles`]),
/// [`PLOT_WIDTH`]×[`PLOT_HEIGHT`]. Bars appear in the order of `rows`, coloured by
/// [`AggregateRow::group`] (popularity light grey, baseline grey, teacher orange,
/// distilled blue, ablation green, other groups from the palette) with a legend of
/// the groups, the mean printed above each bar (up to 16 bars), and the labels under
/// the bars, turned vertical (and shortened with `…` if very long) when they do not fit
/// side by side. The y axis starts at zero. Rows without `metric` are skipped.
///
/// Errors (naming `path`): no rows, or no row with `metric` ("no points to plot"), a
/// non-finite mean or std, or a failure to draw or write the files.
pub fn plot_metric_bars(rows: &[AggregateRow], metric: &str, path: &Path) -> Result<PlotFiles> {
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
    save(&BarsFigure { bars, metric }, path).with_context(what)
}

/// One bar of [`plot_metric_bars`].
struct Bar<'a> {
    label: &'a str,
    group: &'a str,
    mean: f64,
    std: Option<f64>,
}

struct BarsFigure<'a> {
    bars: Vec<Bar<'a>>,
    metric: &'a str,
}

/// Colour of a bar group: fixed colours for the usual groups, the palette otherwise.
pub(super) fn group_color(group: &str, index: usize) -> RGBColor {
    match group {
        "popularity" => RGBColor(190, 190, 190),
        "baseline" => RGBColor(140, 140, 140),
        "teacher" => PALETTE[1],
        "distilled" => PALETTE[0],
        "ablation" => PALETTE[2],
        _ => PALETTE[(3 + index) % PALETTE.len()],
    }
}

/// Shortens `label` with a `…` until it is at most `max_px` wide. A label
/// that ends in a bracketed setting (`sasrec + DLLM2Rec [lambda=0.4]`, as a
/// sweep names its runs) keeps the setting whole and shortens what comes
/// before it; otherwise a third of what fits comes from the start and the
/// rest from the end. Linear in the label: the kept length is found by
/// doubling from one, then bisecting, so only candidates about as long as
/// the answer are measured.
fn fit_label<DB>(
    root: &DrawingArea<DB, Shift>,
    label: &str,
    style: &TextStyle,
    max_px: u32,
) -> Result<String>
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
{
    let width = |s: &str| root.estimate_text_size(s, style).map(|(w, _)| w);
    if width(label)? <= max_px {
        return Ok(label.to_string());
    }
    let chars: Vec<char> = label.chars().collect();
    let setting = label
        .rfind(" [")
        .filter(|_| label.ends_with(']'))
        .map(|i| label[i..].chars().count());
    // `keep` characters of the label around the `…`
    let candidate = |keep: usize| -> String {
        let tail = match setting {
            Some(t) if t < keep => t,
            _ => keep - keep / 3,
        };
        let head = keep - tail;
        chars[..head]
            .iter()
            .chain(std::iter::once(&'…'))
            .chain(&chars[chars.len() - tail..])
            .collect()
    };
    let mut fits = |keep: usize| -> Result<bool> { Ok(width(&candidate(keep))? <= max_px) };
    let longest = chars.len() - 1;
    // The width grows with `keep` within each of two runs: above the setting's
    // length (it stays whole, the head grows) and up to it (head and tail
    // grow). The longer run is preferred, as the longer candidate.
    let found = match setting {
        Some(t) if t < longest => match largest_fitting(t + 1, longest, &mut fits)? {
            Some(k) => Some(k),
            None => largest_fitting(1, t, &mut fits)?,
        },
        _ => largest_fitting(1, longest, &mut fits)?,
    };
    Ok(found.map_or_else(|| "…".to_string(), candidate))
}

/// The largest `k` in `lo..=hi` with `fits(k)`, for `fits` true up to some
/// `k` and false above it: doubles the step from `lo` until it fails, then
/// bisects. `None` when `fits(lo)` is false or the range is empty. Calls
/// `fits` O(log(answer − lo)) times, each on a candidate no longer than
/// twice the answer.
fn largest_fitting(
    lo: usize,
    hi: usize,
    fits: &mut dyn FnMut(usize) -> Result<bool>,
) -> Result<Option<usize>> {
    if lo > hi || !fits(lo)? {
        return Ok(None);
    }
    let (mut good, mut step) = (lo, 1usize);
    // `good` fits; `bad` (if ≤ hi) does not
    let mut bad = loop {
        let next = lo.saturating_add(step);
        if next > hi {
            break hi + 1;
        }
        if !fits(next)? {
            break next;
        }
        good = next;
        step = step.saturating_mul(2);
    };
    while bad - good > 1 {
        let mid = good + (bad - good) / 2;
        if fits(mid)? {
            good = mid;
        } else {
            bad = mid;
        }
    }
    Ok(Some(good))
}

/// The labels under a row of bars: side by side if they all fit under their bar,
/// vertical (and shortened) otherwise.
pub(super) struct BarLabels {
    labels: Vec<String>,
    vertical: bool,
    /// Height in pixels of the x label area they need.
    pub(super) area_px: u32,
}

impl BarLabels {
    /// Lays out `labels`, one per bar, across the width of a bar chart.
    pub(super) fn layout<DB>(root: &DrawingArea<DB, Shift>, labels: &[&str]) -> Result<Self>
    where
        DB: DrawingBackend,
        DB::ErrorType: 'static,
    {
        const MAX_VERTICAL_LABEL: u32 = 150;
        let style = text(13);
        let slot = (PLOT_WIDTH - 2 * MARGIN - Y_LABEL_AREA) as f64 / labels.len().max(1) as f64;
        let mut widest = 0;
        for l in labels {
            widest = widest.max(root.estimate_text_size(l, &style)?.0);
        }
        let vertical = widest as f64 > slot - 6.0;
        let labels: Vec<String> = if vertical {
            labels
                .iter()
                .map(|l| fit_label(root, l, &style, MAX_VERTICAL_LABEL))
                .collect::<Result<_>>()?
        } else {
            labels.iter().map(|l| l.to_string()).collect()
        };
        let area_px = if vertical {
            widest.min(MAX_VERTICAL_LABEL) + 14
        } else {
            30
        };
        Ok(BarLabels {
            labels,
            vertical,
            area_px,
        })
    }

    /// Draws the labels under bar `i` (centred on `i + 0.5`), below the x axis at `y0`.
    pub(super) fn draw<DB>(
        &self,
        root: &DrawingArea<DB, Shift>,
        chart: &Chart<'_, DB>,
        y0: f64,
    ) -> Result<()>
    where
        DB: DrawingBackend,
        DB::ErrorType: 'static,
    {
        let style = if self.vertical {
            text(13)
                .transform(FontTransform::Rotate270)
                .pos(Pos::new(HPos::Right, VPos::Center))
        } else {
            text(13).pos(Pos::new(HPos::Center, VPos::Top))
        };
        for (i, label) in self.labels.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(i as f64 + 0.5, y0));
            root.draw(&Text::new(label.as_str(), (px, py + 6), style.clone()))?;
        }
        Ok(())
    }
}

/// Height in pixels of the plotting area of a bar chart with an x label area of
/// `x_label_area` pixels and a 22-pixel caption (approximate).
pub(super) fn bar_plot_px(x_label_area: u32) -> f64 {
    let caption_px = 22.0 * 1.5;
    f64::from(PLOT_HEIGHT - 2 * MARGIN - x_label_area) - caption_px
}

/// Groups in order of first appearance.
fn groups_in_order<'a>(bars: &[Bar<'a>]) -> Vec<&'a str> {
    let mut groups: Vec<&str> = Vec::new();
    for b in bars {
        if !groups.contains(&b.group) {
            groups.push(b.group);
        }
    }
    groups
}

impl Figure for BarsFigure<'_> {
    fn draw<DB>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB: DrawingBackend,
        DB::ErrorType: 'static,
    {
        let (bars, metric) = (&self.bars, self.metric);
        let n = bars.len();
        let names: Vec<&str> = bars.iter().map(|b| b.label).collect();
        let labels = BarLabels::layout(root, &names)?;

        // A legend only when there is something to tell apart.
        let groups = groups_in_order(bars);
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
        // Headroom above the highest bar for its value label and, when shown, the
        // legend (upper right), computed from the approximate plotting-area height.
        let mut reserved_px = 22.0;
        if show_legend {
            reserved_px += legend_size(&groups).1 + 8.0;
        }
        let free = (1.0 - reserved_px / bar_plot_px(labels.area_px)).max(0.3);
        let y1 = y0 + (hi - y0) / free;
        let decimals = decimals_for(y1 - y0);

        let mut chart = ChartBuilder::on(root)
            .caption(
                format!("{metric} per model (mean ± std over seeds)"),
                text(22),
            )
            .margin(MARGIN)
            .x_label_area_size(labels.area_px)
            .y_label_area_size(Y_LABEL_AREA)
            .build_cartesian_2d(0.0..n as f64, y0..y1)?;
        let y_formatter = |y: &f64| format!("{y:.decimals$}");
        let mut mesh = chart.configure_mesh();
        mesh.disable_x_mesh()
            .x_labels(0)
            .y_labels(8)
            .y_label_formatter(&y_formatter)
            .y_desc(metric);
        style_mesh(&mut mesh);
        mesh.draw()?;

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

        labels.draw(root, &chart, y0)?;
        if show_legend {
            draw_legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn largest_fitting_finds_the_boundary_with_few_calls() {
        for limit in [1usize, 2, 3, 17, 64, 1000, 199_999] {
            let mut calls = 0;
            let mut fits = |k: usize| {
                calls += 1;
                Ok(k <= limit)
            };
            assert_eq!(largest_fitting(1, 199_999, &mut fits).unwrap(), Some(limit));
            assert!(calls <= 2 * 18 + 2, "{calls} calls for {limit}");
        }
        assert_eq!(largest_fitting(5, 9, &mut |_| Ok(false)).unwrap(), None);
        assert_eq!(largest_fitting(5, 4, &mut |_| Ok(true)).unwrap(), None);
        assert_eq!(largest_fitting(5, 9, &mut |_| Ok(true)).unwrap(), Some(9));
    }
}
