//! The report's figures, as SVG (plotters' SVG backend; no system fonts needed), optionally
//! rasterised to PNG (`plot::png`, resvg).
//!
//! - [`accuracy`]: test accuracy against the percent of weights remaining, one colour per metric
//!   and one line style and marker per rate, a band of ± one std over seeds, the dense network's
//!   accuracy as a reference line; a log axis from 100% down to the sparsest level, as
//!   Lottery-Ticket papers draw it (Frankle & Carbin 2019, Figure 3).
//! - [`heatmap`]: the fraction of each layer's weights kept at each level, one small panel per
//!   metric, wrapped into a grid, with a colour bar: it shows where a metric prunes (global
//!   magnitude empties some layers, and can collapse them).
//! - [`overlap`]: a metrics × metrics matrix of ticket overlap at one level.
//!
//! Colours are fixed per metric so that every plot of every study uses the same legend.

pub mod accuracy;
pub mod axis;
pub mod heatmap;
pub mod overlap;
pub mod png;

use crate::cli::ImageFormat;
use crate::masks::Overlap;
use crate::results::{metric_order, LayerPoint, ResultPoint};
use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use std::path::{Path, PathBuf};

pub use accuracy::accuracy_vs_sparsity;
pub use heatmap::layer_heatmap;
pub use overlap::overlap_matrix;

/// The colour of a metric (matplotlib's tab10, in the paper's metric order).
pub fn metric_color(metric: &str) -> RGBColor {
    match metric {
        "magnitude" => RGBColor(31, 119, 180),
        "l1" => RGBColor(255, 127, 14),
        "l2" => RGBColor(44, 160, 44),
        "softmax" => RGBColor(214, 39, 40),
        "min_max" => RGBColor(148, 103, 189),
        "random" => RGBColor(127, 127, 127),
        "lamp" => RGBColor(140, 86, 75),
        "uniform_magnitude" => RGBColor(227, 119, 194),
        other => {
            // Not a metric lthctl knows (a newer coordinator): a stable colour from its name.
            let h = other.bytes().fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
            let c = Palette99::pick(h as usize).to_rgba();
            RGBColor(c.0, c.1, c.2)
        }
    }
}

/// Metric names in paper order, without repeats.
pub fn metrics_in_order<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut v: Vec<(usize, String)> = names.map(metric_order).collect();
    v.sort();
    v.dedup();
    v.into_iter().map(|(_, m)| m).collect()
}

/// "100", "51.2", "5.50", "0.14": an axis label for a percent of weights remaining, with enough
/// digits to tell neighbouring levels apart.
pub fn percent_label(p: f64) -> String {
    if p >= 99.95 {
        "100".to_string()
    } else if p >= 10.0 {
        format!("{p:.1}")
    } else if p >= 1.0 {
        format!("{p:.2}")
    } else {
        significant(p, 2)
    }
}

/// A percentage written with `digits` significant digits, never rounded to 0 or up to 100:
/// "0.87", "0.043", "99.9".
pub fn significant(p: f64, digits: i32) -> String {
    if p <= 0.0 || !p.is_finite() {
        return "0".to_string();
    }
    let decimals = (digits - 1 - p.log10().floor() as i32).max(0) as usize;
    format!("{p:.decimals$}")
}

/// The label of a heatmap cell: the percent of a layer's weights kept. Exact to the digit shown:
/// only a layer that keeps nothing reads "0" and only a dense one "100" (0.87% is "0.87", not
/// "1"; 99.96% is "99.9", not "100").
pub fn kept_label(fraction: f64) -> String {
    let p = 100.0 * fraction;
    if p <= 0.0 {
        "0".to_string()
    } else if p >= 100.0 {
        "100".to_string()
    } else if p >= 10.0 {
        // Truncated, not rounded, so that 99.96 does not read as a dense "100.0" (the epsilon
        // keeps 51.2, stored as 51.19999..., at "51.2").
        format!("{:.1}", (p * 10.0 + 1e-6).floor() / 10.0)
    } else if p >= 1.0 {
        format!("{:.2}", (p * 100.0 + 1e-6).floor() / 100.0)
    } else {
        truncated(p, 2)
    }
}

/// Like [`significant`], but cut off rather than rounded: 0.996 is "0.99", not "1.0".
pub fn truncated(p: f64, digits: i32) -> String {
    if p <= 0.0 || !p.is_finite() {
        return "0".to_string();
    }
    let decimals = (digits - 1 - p.log10().floor() as i32).max(0);
    let scale = 10f64.powi(decimals);
    let d = decimals as usize;
    format!("{:.d$}", (p * scale + 1e-6).floor() / scale)
}

pub(crate) fn plot_err<E: std::error::Error + Send + Sync + 'static>(e: E) -> anyhow::Error {
    anyhow!("drawing the plot: {e}")
}

/// Width in pixels of `text` at a plotters font size (the SVG backend writes size / 1.24 as the
/// CSS font size); DejaVu Sans' digits are 0.64 em wide, its average letter a little less.
pub fn text_width(text: &str, size: f64) -> f64 {
    text.chars().count() as f64 * 0.64 * size / 1.24
}

/// Text colour that reads on a cell of this fill.
pub(crate) fn ink_on(fill: RGBColor) -> RGBColor {
    let luminance = 0.2126 * fill.0 as f64 + 0.7152 * fill.1 as f64 + 0.0722 * fill.2 as f64;
    if luminance > 140.0 {
        BLACK
    } else {
        WHITE
    }
}

/// A figure to write: the SVG is drawn by `draw`, then rasterised when PNG is asked for.
fn write_figure(dir: &Path, stem: &str, format: ImageFormat, written: &mut Vec<PathBuf>, draw: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let svg = dir.join(format!("{stem}.svg"));
    draw(&svg)?;
    if matches!(format, ImageFormat::Png | ImageFormat::Both) {
        let png = dir.join(format!("{stem}.png"));
        png::svg_file_to_png(&svg, &png)?;
        if format == ImageFormat::Png {
            std::fs::remove_file(&svg).with_context(|| format!("removing {}", svg.display()))?;
        } else {
            written.push(svg);
        }
        written.push(png);
    } else {
        written.push(svg);
    }
    Ok(())
}

/// Rates in ascending order, without repeats.
pub fn rates_of(values: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut rates: Vec<f64> = values.collect();
    rates.sort_by(f64::total_cmp);
    rates.dedup_by(|a, b| a.to_bits() == b.to_bits());
    rates
}

/// Writes the report's figures into `dir` and returns their paths: one accuracy plot, one
/// heatmap per rate, one overlap matrix per rate that has masks.
pub fn write_report(
    points: &[ResultPoint],
    layers: &[LayerPoint],
    overlaps: &[Overlap],
    sweep_title: &str,
    dir: &Path,
    format: ImageFormat,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating the report folder {}: choose another with --out DIR", dir.display()))?;
    let mut written = Vec::new();
    write_figure(dir, "accuracy_vs_sparsity", format, &mut written, |p| {
        accuracy_vs_sparsity(points, &format!("{sweep_title}: test accuracy vs weights remaining"), p)
    })?;
    let rates = rates_of(layers.iter().map(|l| l.rate));
    for &rate in &rates {
        let stem = if rates.len() == 1 { "layer_kept_fraction".to_string() } else { format!("layer_kept_fraction_rate{rate}") };
        write_figure(dir, &stem, format, &mut written, |p| {
            layer_heatmap(layers, rate, &format!("{sweep_title}: % of each layer's weights kept (rate {rate})"), p)
        })?;
    }
    for o in overlaps {
        let stem = if overlaps.len() == 1 { "ticket_overlap".to_string() } else { format!("ticket_overlap_rate{}", o.rate) };
        write_figure(dir, &stem, format, &mut written, |p| overlap_matrix(o, &format!("{sweep_title}: ticket overlap"), p))?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests;
