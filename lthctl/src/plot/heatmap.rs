//! Per-layer kept fraction at each level, as small multiples: one panel per metric (for one
//! rate), wrapped into a grid so that eight metrics of a 21-layer ResNet stay a page, not a
//! 5,000-pixel strip.
//!
//! In each panel rows are layers in the order the results carry them (the engine reports network
//! order; they are never sorted by name here), columns are levels, labelled with the level and the
//! percent of prunable weights the whole network keeps there. Each cell is coloured (viridis, one
//! colour bar for all panels) and carries the layer's kept percentage, exact below 1% ("0.87",
//! never "1"). A red outline marks a collapsed layer (no weight kept, or below the engine's
//! collapse threshold): no signal passes it. Drawn in pixel coordinates: a heatmap needs no axes.

use super::{ink_on, kept_label, metrics_in_order, plot_err, significant, text_width};
use crate::results::LayerPoint;
use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::collections::HashMap;
use std::path::Path;

const CELL_W: i32 = 46;
const CELL_H: i32 = 20;
const CELL_FONT: f64 = 13.0;
const NAME_FONT: f64 = 14.0;
const GAP: i32 = 24;
const MARGIN: i32 = 16;
const TITLE_H: i32 = 44;
const PANEL_TITLE_H: i32 = 24;
const LEVEL_LABELS_H: i32 = 38;
const COLOR_BAR_W: i32 = 110;
const FOOTER_H: i32 = 40;
/// The grid wraps to stay within this width.
const MAX_WIDTH: i32 = 1900;
const COLLAPSED: RGBColor = RGBColor(230, 20, 20);

pub fn viridis(fraction: f64) -> RGBColor {
    ViridisRGB::get_color(fraction.clamp(0.0, 1.0))
}

/// Layer names without a suffix every one of them shares (".weight": they are all weights).
fn short_names(names: &[String]) -> (Vec<String>, Option<&'static str>) {
    let suffix = ".weight";
    if !names.is_empty() && names.iter().all(|n| n.ends_with(suffix) && n.len() > suffix.len()) {
        (names.iter().map(|n| n[..n.len() - suffix.len()].to_string()).collect(), Some(suffix))
    } else {
        (names.to_vec(), None)
    }
}

/// (columns, rows) of the panel grid: one row up to three panels, then as square as the width
/// allows.
pub fn grid_shape(panels: usize, panel_width: i32, names_width: i32) -> (usize, usize) {
    if panels == 0 {
        return (1, 1);
    }
    let by_width = ((MAX_WIDTH - names_width - COLOR_BAR_W - 2 * MARGIN) / (panel_width + GAP)).max(1) as usize;
    let wanted = if panels <= 3 { panels } else { (panels as f64).sqrt().ceil() as usize };
    let cols = wanted.min(by_width).max(1);
    (cols, panels.div_ceil(cols))
}

pub fn layer_heatmap(layers: &[LayerPoint], rate: f64, title: &str, path: &Path) -> Result<()> {
    let layers: Vec<&LayerPoint> = layers.iter().filter(|l| l.rate.to_bits() == rate.to_bits()).collect();
    if layers.is_empty() {
        return Err(anyhow!("no per-layer statistics at rate {rate} to plot yet"));
    }
    let metrics = metrics_in_order(layers.iter().map(|l| l.metric.as_str()));
    let mut layer_names: Vec<String> = Vec::new();
    for l in &layers {
        if !layer_names.contains(&l.layer) {
            layer_names.push(l.layer.clone());
        }
    }
    let mut levels: Vec<u32> = layers.iter().map(|l| l.level).collect();
    levels.sort();
    levels.dedup();
    let (labels, dropped_suffix) = short_names(&layer_names);
    let cell: HashMap<(&str, u32, &str), &LayerPoint> = layers.iter().map(|l| ((l.metric.as_str(), l.level, l.layer.as_str()), *l)).collect();

    let names_width = labels.iter().map(|n| text_width(n, NAME_FONT)).fold(0.0, f64::max).ceil() as i32 + 12;
    let panel_w = CELL_W * levels.len() as i32;
    let panel_h = CELL_H * layer_names.len() as i32;
    let block_h = PANEL_TITLE_H + panel_h + LEVEL_LABELS_H;
    let (cols, rows) = grid_shape(metrics.len(), panel_w, names_width);
    let width = MARGIN + names_width + cols as i32 * (panel_w + GAP) + COLOR_BAR_W + MARGIN;
    let height = TITLE_H + rows as i32 * block_h + FOOTER_H;

    let root = SVGBackend::new(path, (width as u32, height as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let centre = |size: f64| ("sans-serif", size).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Center));
    root.draw(&Text::new(title.to_string(), (width / 2, TITLE_H / 2), centre(20.0))).map_err(plot_err)?;

    let max_seeds = layers.iter().map(|l| l.seeds).max().unwrap_or(0);
    let mut any_collapsed = false;
    for (k, metric) in metrics.iter().enumerate() {
        let (row, col) = ((k / cols) as i32, (k % cols) as i32);
        let x0 = MARGIN + names_width + col * (panel_w + GAP);
        let y0 = TITLE_H + row * block_h;
        root.draw(&Text::new(metric.clone(), (x0 + panel_w / 2, y0 + PANEL_TITLE_H / 2), ("sans-serif", 16.0, FontStyle::Bold).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Center))))
            .map_err(plot_err)?;
        let top = y0 + PANEL_TITLE_H;
        if col == 0 {
            for (i, name) in labels.iter().enumerate() {
                let y = top + i as i32 * CELL_H + CELL_H / 2;
                root.draw(&Text::new(
                    name.clone(),
                    (x0 - 6, y),
                    ("sans-serif", NAME_FONT).into_font().color(&BLACK).pos(Pos::new(HPos::Right, VPos::Center)),
                ))
                .map_err(plot_err)?;
            }
        }
        for (c, level) in levels.iter().enumerate() {
            let x = x0 + c as i32 * CELL_W;
            let (mut kept, mut total) = (0.0, 0.0);
            for (r, layer) in layer_names.iter().enumerate() {
                let y = top + r as i32 * CELL_H;
                let Some(p) = cell.get(&(metric.as_str(), *level, layer.as_str())) else {
                    // Not measured (yet): a light cell, no number.
                    root.draw(&Rectangle::new([(x, y), (x + CELL_W - 1, y + CELL_H - 1)], RGBColor(235, 235, 235).filled())).map_err(plot_err)?;
                    continue;
                };
                kept += p.kept_fraction * p.total as f64;
                total += p.total as f64;
                let fill = viridis(p.kept_fraction);
                root.draw(&Rectangle::new([(x, y), (x + CELL_W - 1, y + CELL_H - 1)], fill.filled())).map_err(plot_err)?;
                if p.collapsed_in_seeds > 0 {
                    any_collapsed = true;
                    root.draw(&Rectangle::new([(x + 1, y + 1), (x + CELL_W - 2, y + CELL_H - 2)], COLLAPSED.stroke_width(3))).map_err(plot_err)?;
                }
                root.draw(&Text::new(kept_label(p.kept_fraction), (x + CELL_W / 2, y + CELL_H / 2), centre(CELL_FONT).color(&ink_on(fill))))
                    .map_err(plot_err)?;
            }
            let below = top + panel_h;
            root.draw(&Text::new(format!("L{level}"), (x + CELL_W / 2, below + 10), centre(13.0))).map_err(plot_err)?;
            if total > 0.0 {
                let overall = significant_or_whole(100.0 * kept / total);
                root.draw(&Text::new(format!("{overall}%"), (x + CELL_W / 2, below + 27), centre(11.0).color(&RGBColor(90, 90, 90))))
                    .map_err(plot_err)?;
            }
        }
    }

    // One colour bar for every panel.
    let bar_x = width - MARGIN - COLOR_BAR_W + 24;
    let bar_top = TITLE_H + PANEL_TITLE_H + 18;
    let bar_h = (rows as i32 * block_h - PANEL_TITLE_H - 60).clamp(120, 320);
    root.draw(&Text::new("% kept", (bar_x + 8, bar_top - 14), centre(13.0))).map_err(plot_err)?;
    let steps = 64;
    for i in 0..steps {
        let f0 = i as f64 / steps as f64;
        let y_bottom = bar_top + bar_h - (f0 * bar_h as f64) as i32;
        let y_top = bar_top + bar_h - (((i + 1) as f64 / steps as f64) * bar_h as f64) as i32;
        root.draw(&Rectangle::new([(bar_x, y_top), (bar_x + 16, y_bottom)], viridis(f0 + 0.5 / steps as f64).filled())).map_err(plot_err)?;
    }
    root.draw(&Rectangle::new([(bar_x, bar_top), (bar_x + 16, bar_top + bar_h)], BLACK.stroke_width(1))).map_err(plot_err)?;
    for t in [0, 25, 50, 75, 100] {
        let y = bar_top + bar_h - (t as f64 / 100.0 * bar_h as f64) as i32;
        root.draw(&PathElement::new(vec![(bar_x + 16, y), (bar_x + 21, y)], BLACK.stroke_width(1))).map_err(plot_err)?;
        root.draw(&Text::new(t.to_string(), (bar_x + 24, y), ("sans-serif", 12).into_font().color(&BLACK).pos(Pos::new(HPos::Left, VPos::Center))))
            .map_err(plot_err)?;
    }

    let mut note = format!(
        "cells: % of the layer's weights kept{}; under each level: % of all prunable weights kept",
        if max_seeds > 1 { format!(" (mean over {max_seeds} seeds)") } else { String::new() }
    );
    if any_collapsed {
        note.push_str("; red outline: collapsed layer");
    }
    if let Some(s) = dropped_suffix {
        note.push_str(&format!("; layer names without \"{s}\""));
    }
    root.draw(&Text::new(
        note,
        (MARGIN, height - FOOTER_H / 2),
        ("sans-serif", 13).into_font().color(&RGBColor(90, 90, 90)).pos(Pos::new(HPos::Left, VPos::Center)),
    ))
    .map_err(plot_err)?;
    root.present().map_err(plot_err).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// "100", "51.2", "0.87": the network's overall remaining percent under a level.
fn significant_or_whole(p: f64) -> String {
    if p >= 99.995 {
        "100".to_string()
    } else if p >= 10.0 {
        format!("{p:.1}")
    } else {
        significant(p, 3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_wrap_and_stay_within_the_width() {
        assert_eq!(grid_shape(1, 300, 100), (1, 1));
        assert_eq!(grid_shape(3, 300, 100), (3, 1));
        assert_eq!(grid_shape(5, 300, 100), (3, 2));
        assert_eq!(grid_shape(8, 300, 100), (3, 3));
        // 21 levels of 46 px: two panels do not fit in 1900 px.
        let (cols, rows) = grid_shape(5, 21 * CELL_W, 160);
        assert_eq!((cols, rows), (1, 5));
    }

    #[test]
    fn a_shared_weight_suffix_is_dropped_from_names() {
        let (names, s) = short_names(&["fc1.weight".into(), "fc2.weight".into()]);
        assert_eq!((names, s), (vec!["fc1".to_string(), "fc2".to_string()], Some(".weight")));
        let (names, s) = short_names(&["fc1.weight".into(), "fc2.bias".into()]);
        assert_eq!((names.len(), s), (2, None));
    }
}
