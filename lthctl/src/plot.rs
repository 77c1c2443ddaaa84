//! The report's figures, as SVG files (plotters' SVG backend; no system fonts needed).
//!
//! - `accuracy_vs_sparsity`: test accuracy against the percent of weights remaining, one line per
//!   metric with seed error bars (mean ± std), on a log axis that runs from 100% down to the
//!   sparsest level, as Lottery-Ticket papers draw it (Frankle & Carbin 2019, Figure 3).
//! - `layer_heatmap`: the fraction of each layer's weights kept at each level, one panel per metric:
//!   it shows where a metric prunes (global magnitude empties some layers, and can collapse them).

use crate::results::{LayerPoint, ResultPoint};
use anyhow::{anyhow, Context, Result};
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A linear f64 axis whose ticks sit exactly where we say (the measured levels, the heatmap's
/// cell centres). plotters' `with_key_points` would do this, but its f64 axis then loses the
/// label formatter that `configure_mesh` needs.
#[derive(Clone)]
struct TickedAxis {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
}

impl Ranged for TickedAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let frac = (value - self.lo) / (self.hi - self.lo);
        limit.0 + (frac * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        // Bold and light grid lines both land on the given ticks (callers hide the light ones).
        if hint.max_num_points() == 0 {
            return Vec::new();
        }
        self.ticks.clone()
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

/// Colours for the series, fixed per metric so every plot of a study uses the same legend.
fn metric_color(metric: &str, fallback_index: usize) -> RGBColor {
    match metric {
        "magnitude" => RGBColor(31, 119, 180),
        "l1" => RGBColor(255, 127, 14),
        "l2" => RGBColor(44, 160, 44),
        "softmax" => RGBColor(214, 39, 40),
        "min_max" => RGBColor(148, 103, 189),
        "random" => RGBColor(127, 127, 127),
        "lamp" => RGBColor(140, 86, 75),
        "uniform_magnitude" => RGBColor(227, 119, 194),
        _ => {
            let c = Palette99::pick(fallback_index).to_rgba();
            RGBColor(c.0, c.1, c.2)
        }
    }
}

/// "51.2", "5.50", "0.14": enough digits to tell neighbouring levels apart.
pub fn percent_label(p: f64) -> String {
    if p >= 99.95 {
        "100".to_string()
    } else if p >= 10.0 {
        format!("{p:.1}")
    } else {
        format!("{p:.2}")
    }
}

fn plot_err<E: std::error::Error + Send + Sync + 'static>(e: E) -> anyhow::Error {
    anyhow!("drawing the plot: {e}")
}

/// Accuracy vs weights remaining, one series per (metric, rate), error bars = ± one std over
/// seeds. The x axis is −log10(percent remaining), labelled in percent remaining, so the dense
/// network is on the left and each level at a fixed rate is one equal step to the right.
pub fn accuracy_vs_sparsity(points: &[ResultPoint], title: &str, path: &Path) -> Result<()> {
    if points.is_empty() {
        return Err(anyhow!("no results to plot yet: wait for jobs to finish (`lthctl status ID`)"));
    }
    let several_rates = {
        let mut rates: Vec<u64> = points.iter().map(|p| p.rate.to_bits()).collect();
        rates.sort();
        rates.dedup();
        rates.len() > 1
    };
    let mut series: BTreeMap<(usize, String, u64), Vec<&ResultPoint>> = BTreeMap::new();
    for p in points {
        let order = lth_sweep::ImportanceMetric::ALL.iter().position(|m| m.as_str() == p.metric).unwrap_or(usize::MAX);
        series.entry((order, p.metric.clone(), p.rate.to_bits())).or_default().push(p);
    }
    let x_of = |remaining_percent: f64| -remaining_percent.max(1e-6).log10();

    let x_min = points.iter().map(|p| x_of(p.weights_remaining_percent)).fold(f64::INFINITY, f64::min);
    let x_max = points.iter().map(|p| x_of(p.weights_remaining_percent)).fold(f64::NEG_INFINITY, f64::max);
    let x_pad = ((x_max - x_min) * 0.04).max(0.02);
    let lo = points.iter().map(|p| 100.0 * (p.accuracy_mean - p.accuracy_std)).fold(f64::INFINITY, f64::min);
    let hi = points.iter().map(|p| 100.0 * (p.accuracy_mean + p.accuracy_std)).fold(f64::NEG_INFINITY, f64::max);
    let y_pad = ((hi - lo) * 0.08).max(0.5);
    let (y_lo, y_hi) = ((lo - y_pad).max(0.0), (hi + y_pad).min(100.0));

    // Ticks at the levels actually measured (thinned to at most 12), like LTH papers.
    let mut ticks: Vec<f64> = points.iter().map(|p| p.weights_remaining_percent).collect();
    ticks.sort_by(|a, b| b.partial_cmp(a).unwrap());
    ticks.dedup_by(|a, b| (x_of(*a) - x_of(*b)).abs() < 1e-9);
    let step = ticks.len().div_ceil(12).max(1);
    let ticks: Vec<f64> = ticks.into_iter().step_by(step).map(x_of).collect();

    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(TickedAxis { lo: x_min - x_pad, hi: x_max + x_pad, ticks }, y_lo..y_hi)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("percent of weights remaining")
        .y_desc("test accuracy (%)")
        .x_label_formatter(&|x| percent_label(10f64.powf(-*x)))
        .y_label_formatter(&|y| format!("{y:.1}"))
        .light_line_style(WHITE.mix(0.0))
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .draw()
        .map_err(plot_err)?;

    for (i, ((_, metric, rate_bits), mut pts)) in series.into_iter().enumerate() {
        pts.sort_by_key(|p| p.level);
        let color = metric_color(&metric, i);
        let label = if several_rates { format!("{metric} (rate {})", f64::from_bits(rate_bits)) } else { metric.clone() };
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (x_of(p.weights_remaining_percent), 100.0 * p.accuracy_mean)),
                color.stroke_width(2),
            ))
            .map_err(plot_err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart
            .draw_series(pts.iter().map(|p| {
                ErrorBar::new_vertical(
                    x_of(p.weights_remaining_percent),
                    100.0 * (p.accuracy_mean - p.accuracy_std),
                    100.0 * p.accuracy_mean,
                    100.0 * (p.accuracy_mean + p.accuracy_std),
                    color.stroke_width(1),
                    8,
                )
            }))
            .map_err(plot_err)?;
        chart
            .draw_series(pts.iter().map(|p| Circle::new((x_of(p.weights_remaining_percent), 100.0 * p.accuracy_mean), 3, color.filled())))
            .map_err(plot_err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Per-layer kept fraction at each level, one panel per metric (for one rate). Rows are layers in
/// network order, columns levels (labelled with the percent of weights remaining overall); each
/// cell is coloured (viridis, 0 = dark) and carries its kept percentage.
pub fn layer_heatmap(layers: &[LayerPoint], rate: f64, title: &str, path: &Path) -> Result<()> {
    let layers: Vec<&LayerPoint> = layers.iter().filter(|l| l.rate.to_bits() == rate.to_bits()).collect();
    if layers.is_empty() {
        return Err(anyhow!("no per-layer statistics at rate {rate} to plot yet"));
    }
    let mut metrics: Vec<(usize, String)> = layers
        .iter()
        .map(|l| (lth_sweep::ImportanceMetric::ALL.iter().position(|m| m.as_str() == l.metric).unwrap_or(usize::MAX), l.metric.clone()))
        .collect();
    metrics.sort();
    metrics.dedup();
    let mut layer_names: Vec<String> = Vec::new();
    for l in &layers {
        if !layer_names.contains(&l.layer) {
            layer_names.push(l.layer.clone());
        }
    }
    let mut levels: Vec<u32> = layers.iter().map(|l| l.level).collect();
    levels.sort();
    levels.dedup();

    let name_width = layer_names.iter().map(|n| n.chars().count()).max().unwrap_or(4) as u32 * 7 + 16;
    let panel_width = name_width + 40 * levels.len() as u32 + 40;
    let height = 120 + 22 * layer_names.len() as u32;
    let root = SVGBackend::new(path, (panel_width * metrics.len() as u32, height)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(plot_err)?;
    let panels = root.split_evenly((1, metrics.len()));

    let n_layers = layer_names.len();
    let n_levels = levels.len();
    for (panel, (_, metric)) in panels.iter().zip(&metrics) {
        let level_labels: Vec<String> = levels.iter().map(|l| format!("L{l}")).collect();
        let layer_labels = layer_names.clone();
        let x_ticks: Vec<f64> = (0..n_levels).map(|i| i as f64 + 0.5).collect();
        let y_ticks: Vec<f64> = (0..n_layers).map(|i| i as f64 + 0.5).collect();
        let mut chart = ChartBuilder::on(panel)
            .caption(metric, ("sans-serif", 17))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(name_width)
            .build_cartesian_2d(
                TickedAxis { lo: 0.0, hi: n_levels as f64, ticks: x_ticks },
                TickedAxis { lo: 0.0, hi: n_layers as f64, ticks: y_ticks },
            )
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("level")
            .x_label_formatter(&|x| level_labels.get(x.floor() as usize).cloned().unwrap_or_default())
            // Row 0 at the top: the first layer of the network.
            .y_label_formatter(&|y| layer_labels.get(n_layers - 1 - y.floor() as usize).cloned().unwrap_or_default())
            .label_style(("sans-serif", 11))
            .draw()
            .map_err(plot_err)?;
        let cells: Vec<(f64, f64, f64)> = layers
            .iter()
            .filter(|l| &l.metric == metric)
            .filter_map(|l| {
                let col = levels.iter().position(|v| *v == l.level)? as f64;
                let row = (n_layers - 1 - layer_names.iter().position(|n| *n == l.layer)?) as f64;
                Some((col, row, l.kept_fraction))
            })
            .collect();
        chart
            .draw_series(cells.iter().map(|&(x, y, kept)| {
                Rectangle::new([(x, y), (x + 1.0, y + 1.0)], ViridisRGB::get_color(kept.clamp(0.0, 1.0)).filled())
            }))
            .map_err(plot_err)?;
        chart
            .draw_series(cells.iter().map(|&(x, y, kept)| {
                let ink = if kept > 0.6 { BLACK } else { WHITE };
                Text::new(
                    format!("{:.0}", 100.0 * kept),
                    (x + 0.5, y + 0.5),
                    ("sans-serif", 10).into_font().color(&ink).pos(Pos::new(HPos::Center, VPos::Center)),
                )
            }))
            .map_err(plot_err)?;
    }
    root.present().map_err(plot_err).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Writes the report's figures into `dir` and returns their paths: one accuracy plot, and one
/// heatmap per rate.
pub fn write_report(points: &[ResultPoint], layers: &[LayerPoint], sweep_title: &str, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating the report folder {}: choose another with --out DIR", dir.display()))?;
    let mut written = Vec::new();
    let acc_path = dir.join("accuracy_vs_sparsity.svg");
    accuracy_vs_sparsity(points, &format!("{sweep_title}: test accuracy vs weights remaining (mean ± std over seeds)"), &acc_path)?;
    written.push(acc_path);
    let mut rates: Vec<f64> = layers.iter().map(|l| l.rate).collect();
    rates.sort_by(|a, b| a.partial_cmp(b).unwrap());
    rates.dedup();
    for rate in rates {
        let p = if written.len() == 1 && layers.iter().all(|l| l.rate == rate) {
            dir.join("layer_kept_fraction.svg")
        } else {
            dir.join(format!("layer_kept_fraction_rate{rate}.svg"))
        };
        layer_heatmap(layers, rate, &format!("{sweep_title}: % of each layer's weights kept (rate {rate})"), &p)?;
        written.push(p);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{aggregate, aggregate_layers, tests::row};
    use lth_proto::v1::ImportanceMetric as M;

    fn study() -> Vec<lth_proto::v1::ResultRow> {
        let mut rows = vec![];
        for seed in 1..=3u64 {
            rows.push(row(M::Unspecified, 0.0, seed, 0, 0.91 + 0.002 * seed as f64));
            for level in 1..=6u32 {
                for (m, drop) in [(M::Magnitude, 0.001), (M::L1, 0.002), (M::Softmax, 0.01), (M::MinMax, 0.003)] {
                    rows.push(row(m, 0.2, seed, level, 0.91 - drop * level as f64 + 0.001 * seed as f64));
                }
            }
        }
        rows
    }

    /// The text of every `<text>` element, trimmed (plotters writes the content on its own line).
    fn svg_texts(svg: &str) -> Vec<String> {
        svg.split("<text").skip(1).filter_map(|t| Some(t.split_once('>')?.1.split_once("</text>")?.0.trim().to_string())).collect()
    }

    #[test]
    fn percent_labels() {
        assert_eq!(percent_label(100.0), "100");
        assert_eq!(percent_label(51.2), "51.2");
        assert_eq!(percent_label(10.737), "10.7");
        assert_eq!(percent_label(3.5184), "3.52");
    }

    #[test]
    fn report_writes_both_svgs_with_every_series_and_layer() {
        let rows = study();
        let dir = tempfile::tempdir().unwrap();
        let files = write_report(&aggregate(&rows), &aggregate_layers(&rows), "demo", dir.path()).unwrap();
        assert_eq!(files.len(), 2);
        let acc = std::fs::read_to_string(&files[0]).unwrap();
        assert!(acc.starts_with("<svg"), "not an SVG");
        let texts = svg_texts(&acc);
        for name in ["magnitude", "l1", "softmax", "min_max", "percent of weights remaining", "test accuracy (%)"] {
            assert!(texts.iter().any(|t| t == name), "{name} missing from the accuracy plot: {texts:?}");
        }
        assert!(!texts.iter().any(|t| t == "l2"), "a metric that was not run appears in the legend");
        // x ticks at the measured levels, left to right: 100, 80, 64, 51.2 ... 26.2 (0.8^6).
        let ticks: Vec<&str> = ["100", "80.0", "64.0", "51.2", "41.0", "32.8", "26.2"].to_vec();
        let pos: Vec<usize> = ticks.iter().map(|t| texts.iter().position(|x| x == t).unwrap_or_else(|| panic!("tick {t} missing: {texts:?}"))).collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "ticks out of order: {texts:?}");
        // 4 metrics × 7 levels error bars: each ErrorBar draws 3 lines.
        assert!(acc.matches("<polyline").count() + acc.matches("<line").count() >= 4 * 7 * 3, "error bars missing");
        let heat = std::fs::read_to_string(&files[1]).unwrap();
        assert!(heat.starts_with("<svg"));
        let texts = svg_texts(&heat);
        for t in ["fc1.weight", "fc2.weight", "L0", "L6", "magnitude", "min_max"] {
            assert!(texts.iter().any(|x| x == t), "{t} missing from the heatmap: {texts:?}");
        }
        // 4 panels × 7 levels × 2 layers cells; fc2 keeps 40% at level 6 (once per panel), fc1 26%.
        assert!(heat.matches("<rect").count() >= 4 * 7 * 2);
        assert_eq!(texts.iter().filter(|x| *x == "40").count(), 4);
        assert_eq!(texts.iter().filter(|x| *x == "26").count(), 4);
    }

    #[test]
    fn empty_results_give_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = accuracy_vs_sparsity(&[], "x", &dir.path().join("a.svg")).unwrap_err().to_string();
        assert!(err.contains("no results"), "{err}");
    }
}
