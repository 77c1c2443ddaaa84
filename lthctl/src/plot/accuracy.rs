//! Test accuracy against the percent of weights remaining.
//!
//! One series per (metric, rate): colour = metric, line style and marker = rate, so a reader
//! can tell "L1 at 20%" from "L1 at 50%" and from "L2 at 20%" without a colour per series. Error
//! bars are ± one sample std over seeds, series shifted a few pixels apart so that bars at one
//! level stay apart; the dashed grey line (and its light band, ± std) is the dense network
//! (level 0), which every metric starts from and the question is whether a ticket keeps.
//! The legend sits beside the plot, never over the data.

use super::axis::{choose_ticks, x_of, TickedAxis};
use super::{metric_color, metrics_in_order, percent_label, plot_err, rates_of};
use crate::results::ResultPoint;
use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::collections::BTreeMap;
use std::path::Path;

const WIDTH: u32 = 1100;
const HEIGHT: u32 = 640;
const MARGIN: u32 = 16;
const Y_LABEL_AREA: u32 = 64;
const X_LABEL_AREA: u32 = 52;
const TICK_FONT: f64 = 15.0;
const DENSE: RGBColor = RGBColor(90, 90, 90);
/// Horizontal shift between neighbouring series, in pixels.
const DODGE_PX: f64 = 3.0;

/// How a rate is drawn: the n-th rate of the sweep (ascending) gets the n-th style.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    Circle,
    Triangle,
    Square,
    Cross,
}

/// (dash length, gap) in pixels; None = solid.
pub fn rate_style(index: usize) -> (Option<(u32, u32)>, Marker) {
    match index % 4 {
        0 => (None, Marker::Circle),
        1 => (Some((10, 5)), Marker::Triangle),
        2 => (Some((3, 3)), Marker::Square),
        _ => (Some((14, 4)), Marker::Cross),
    }
}

fn draw_marker<DB: DrawingBackend>(area: &DrawingArea<DB, plotters::coord::Shift>, at: (i32, i32), marker: Marker, color: RGBColor) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let style = color.filled();
    match marker {
        Marker::Circle => area.draw(&Circle::new(at, 4, style)),
        Marker::Triangle => area.draw(&TriangleMarker::new(at, 5, style)),
        Marker::Square => area.draw(&Rectangle::new([(at.0 - 4, at.1 - 4), (at.0 + 4, at.1 + 4)], style)),
        Marker::Cross => area.draw(&Cross::new(at, 4, color.stroke_width(2))),
    }
    .map_err(plot_err)
}

fn draw_segment<DB: DrawingBackend>(area: &DrawingArea<DB, plotters::coord::Shift>, from: (i32, i32), to: (i32, i32), dash: Option<(u32, u32)>, style: ShapeStyle) -> Result<()>
where
    DB::ErrorType: 'static,
{
    match dash {
        None => area.draw(&PathElement::new(vec![from, to], style)),
        Some((d, g)) => area.draw(&plotters::element::DashedPathElement::new(vec![from, to], d, g, style)),
    }
    .map_err(plot_err)
}

/// The dense network's accuracy: mean and std over seeds of the level-0 points (identical in every
/// series, as all trials of a seed share the dense job).
fn dense_reference(points: &[ResultPoint]) -> Option<(f64, f64, u32)> {
    points.iter().filter(|p| p.level == 0).max_by_key(|p| p.seeds).map(|p| (p.accuracy_mean, p.accuracy_std, p.seeds))
}

pub fn accuracy_vs_sparsity(points: &[ResultPoint], title: &str, path: &Path) -> Result<()> {
    if points.is_empty() {
        return Err(anyhow!("no results to plot yet: wait for jobs to finish (`lthctl status ID`)"));
    }
    let rates = rates_of(points.iter().map(|p| p.rate));
    let several_rates = rates.len() > 1;
    let rate_index = |r: f64| rates.iter().position(|x| x.to_bits() == r.to_bits()).unwrap_or(0);
    let metric_rank = metrics_in_order(points.iter().map(|p| p.metric.as_str()));
    let mut series: BTreeMap<(usize, u64), Vec<&ResultPoint>> = BTreeMap::new();
    for p in points {
        let m = metric_rank.iter().position(|x| *x == p.metric).unwrap_or(usize::MAX);
        series.entry((m, p.rate.to_bits())).or_default().push(p);
    }
    let dense = dense_reference(points);
    let max_seeds = points.iter().map(|p| p.seeds).max().unwrap_or(0);

    // Legend entries first: the legend's width sets the plot's.
    // (label, colour, dash, marker)
    type Entry = (String, RGBColor, Option<(u32, u32)>, Option<Marker>);
    let mut entries: Vec<Entry> = Vec::new();
    for (m, rate_bits) in series.keys() {
        let metric = &metric_rank[*m];
        let rate = f64::from_bits(*rate_bits);
        let (dash, marker) = rate_style(rate_index(rate));
        let label = if several_rates { format!("{metric} · rate {rate}") } else { metric.clone() };
        entries.push((label, metric_color(metric), dash, Some(marker)));
    }
    if let Some((mean, std, _)) = dense {
        entries.push((format!("dense: {:.2} ± {:.2}", 100.0 * mean, 100.0 * std), DENSE, Some((6, 4)), None));
    }
    let legend_width = entries.iter().map(|e| super::text_width(&e.0, 15.0)).fold(0.0, f64::max) as u32 + 64;

    let x_min = points.iter().map(|p| x_of(p.weights_remaining_percent)).fold(f64::INFINITY, f64::min);
    let x_max = points.iter().map(|p| x_of(p.weights_remaining_percent)).fold(f64::NEG_INFINITY, f64::max);
    let x_pad = ((x_max - x_min) * 0.04).max(0.02);
    let (x_lo, x_hi) = (x_min - x_pad, x_max + x_pad);
    let band_lo = |p: &ResultPoint| 100.0 * (p.accuracy_mean - p.accuracy_std);
    let band_hi = |p: &ResultPoint| 100.0 * (p.accuracy_mean + p.accuracy_std);
    let lo = points.iter().map(band_lo).fold(f64::INFINITY, f64::min);
    let hi = points.iter().map(band_hi).fold(f64::NEG_INFINITY, f64::max);
    let y_pad = ((hi - lo) * 0.08).max(0.5);
    let (y_lo, y_hi) = ((lo - y_pad).max(0.0), (hi + y_pad).min(100.0));

    let root = SVGBackend::new(path, (WIDTH.max(legend_width + 500), HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(plot_err)?;
    let (plot_area, legend_area) = root.split_horizontally(root.dim_in_pixel().0 - legend_width);

    let plot_width = f64::from(plot_area.dim_in_pixel().0 - 2 * MARGIN - Y_LABEL_AREA);
    let remaining: Vec<f64> = points.iter().map(|p| p.weights_remaining_percent).collect();
    let ticks = choose_ticks(&remaining, x_lo, x_hi, plot_width, TICK_FONT, percent_label);

    let mut chart = ChartBuilder::on(&plot_area)
        .margin(MARGIN)
        .x_label_area_size(X_LABEL_AREA)
        .y_label_area_size(Y_LABEL_AREA)
        .build_cartesian_2d(TickedAxis { lo: x_lo, hi: x_hi, ticks }, y_lo..y_hi)
        .map_err(plot_err)?;
    let y_digits = if y_hi - y_lo > 10.0 { 0 } else { 1 };
    chart
        .configure_mesh()
        .x_desc("% of weights remaining (log scale)")
        .y_desc("test accuracy (%)")
        .x_label_formatter(&|x| percent_label(10f64.powf(-*x)))
        .y_label_formatter(&|y| format!("{y:.y_digits$}"))
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.08))
        .label_style(("sans-serif", TICK_FONT))
        .axis_desc_style(("sans-serif", 17))
        .draw()
        .map_err(plot_err)?;

    if let Some((mean, std, _)) = dense {
        let (m, s) = (100.0 * mean, 100.0 * std);
        if s > 0.0 {
            chart
                .draw_series(std::iter::once(Rectangle::new([(x_lo, m - s), (x_hi, m + s)], DENSE.mix(0.07).filled())))
                .map_err(plot_err)?;
        }
        chart
            .draw_series(DashedLineSeries::new(vec![(x_lo, m), (x_hi, m)], 6, 4, DENSE.stroke_width(1)))
            .map_err(plot_err)?;
    }

    // Series side by side: each is shifted a few pixels so that error bars at the same level do
    // not stack into one (seaborn's "dodge"). Bands would be the other choice; with five metrics
    // inside one std of each other they blend into one grey area.
    // Only series of one rate share levels, so the shift counts within a rate.
    let mut per_rate: BTreeMap<u64, usize> = BTreeMap::new();
    for (_, r) in series.keys() {
        *per_rate.entry(*r).or_default() += 1;
    }
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    let px_to_x = (x_hi - x_lo) / plot_width;
    for ((m, rate_bits), mut pts) in series {
        let index = *seen.entry(rate_bits).and_modify(|i| *i += 1).or_insert(0);
        let n_series = per_rate[&rate_bits];
        pts.sort_by_key(|p| p.level);
        let color = metric_color(&metric_rank[m]);
        let (dash, marker) = rate_style(rate_index(f64::from_bits(rate_bits)));
        let dodge = (index as f64 - (n_series as f64 - 1.0) / 2.0) * DODGE_PX * px_to_x;
        let xy = |p: &ResultPoint| (x_of(p.weights_remaining_percent) + dodge, 100.0 * p.accuracy_mean);
        chart
            // Level 0 is the dense network: its spread is the reference band, not nine equal bars.
            .draw_series(pts.iter().filter(|p| p.accuracy_std > 0.0 && !(p.level == 0 && dense.is_some())).map(|p| {
                let (x, y) = xy(p);
                ErrorBar::new_vertical(x, band_lo(p), y, band_hi(p), color.mix(0.8).stroke_width(1), 7)
            }))
            .map_err(plot_err)?;
        let line = color.stroke_width(2);
        match dash {
            None => chart.draw_series(LineSeries::new(pts.iter().map(|p| xy(p)), line)).map(|_| ()),
            Some((d, g)) => chart.draw_series(DashedLineSeries::new(pts.iter().map(|p| xy(p)).collect::<Vec<_>>(), d, g, line)).map(|_| ()),
        }
        .map_err(plot_err)?;
        let style = color.filled();
        match marker {
            Marker::Circle => chart.draw_series(pts.iter().map(|p| Circle::new(xy(p), 4, style))).map(|_| ()),
            Marker::Triangle => chart.draw_series(pts.iter().map(|p| TriangleMarker::new(xy(p), 5, style))).map(|_| ()),
            Marker::Square => chart.draw_series(pts.iter().map(|p| EmptyElement::at(xy(p)) + Rectangle::new([(-4, -4), (4, 4)], style))).map(|_| ()),
            Marker::Cross => chart.draw_series(pts.iter().map(|p| Cross::new(xy(p), 4, color.stroke_width(2)))).map(|_| ()),
        }
        .map_err(plot_err)?;
    }

    // The legend, beside the plot.
    let font = ("sans-serif", 15).into_font();
    let mut y = 70;
    legend_area
        .draw(&Text::new(if several_rates { "metric · rate" } else { "metric" }, (12, y - 30), font.clone().style(FontStyle::Bold)))
        .map_err(plot_err)?;
    for (label, color, dash, marker) in &entries {
        draw_segment(&legend_area, (12, y), (44, y), *dash, color.stroke_width(2))?;
        if let Some(m) = marker {
            draw_marker(&legend_area, (28, y), *m, *color)?;
        }
        legend_area
            .draw(&Text::new(label.clone(), (52, y), font.clone().color(&BLACK).pos(Pos::new(HPos::Left, VPos::Center))))
            .map_err(plot_err)?;
        y += 26;
    }
    let note = if max_seeds > 1 { format!("bars: ± 1 std over {max_seeds} seeds") } else { "one seed: no spread to show".to_string() };
    legend_area
        .draw(&Text::new(note, (12, y + 8), ("sans-serif", 13).into_font().color(&DENSE).pos(Pos::new(HPos::Left, VPos::Center))))
        .map_err(plot_err)?;
    let mut note_y = y + 28;
    if dense.is_some_and(|(_, std, _)| std > 0.0) {
        legend_area
            .draw(&Text::new("grey band: dense ± 1 std", (12, note_y), ("sans-serif", 13).into_font().color(&DENSE).pos(Pos::new(HPos::Left, VPos::Center))))
            .map_err(plot_err)?;
        note_y += 20;
    }
    if !several_rates {
        legend_area
            .draw(&Text::new(
                format!("rate {} per level", rates[0]),
                (12, note_y),
                ("sans-serif", 13).into_font().color(&DENSE).pos(Pos::new(HPos::Left, VPos::Center)),
            ))
            .map_err(plot_err)?;
    }
    root.present().map_err(plot_err).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
