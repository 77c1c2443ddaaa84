//! Ticket overlap at one level: a metrics × metrics matrix.
//!
//! Cell (row a, column b) is the share of metric a's kept weights that metric b's ticket keeps
//! too, mean over seeds; with the same number of weights kept (one global count per level) the
//! matrix is symmetric and its diagonal is 100%. Two independent random tickets of this density
//! would share `density` of their weights: the subtitle gives that chance level, and the share all
//! metrics keep in common (the paper's "9.34% shared by magnitude, L1 and L2").

use super::heatmap::viridis;
use super::{ink_on, plot_err, significant, text_width};
use crate::masks::Overlap;
use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

const CELL_H: i32 = 40;
const FONT: f64 = 15.0;
const MARGIN: i32 = 20;
const TITLE_H: i32 = 76;
const COLOR_BAR_W: i32 = 100;

fn percent(f: f64) -> String {
    if !f.is_finite() {
        "–".to_string()
    } else if f >= 0.9995 {
        "100".to_string()
    } else if f >= 0.1 {
        format!("{:.1}", 100.0 * f)
    } else {
        significant(100.0 * f, 2)
    }
}

pub fn overlap_matrix(o: &Overlap, title: &str, path: &Path) -> Result<()> {
    let n = o.metrics.len() as i32;
    if n < 2 {
        return Err(anyhow!("ticket overlap needs two metrics or more at level {} (rate {})", o.level, o.rate));
    }
    let name_w = o.metrics.iter().map(|m| text_width(m, FONT)).fold(0.0, f64::max).ceil() as i32 + 14;
    let cell_w = name_w.max(64);
    let top = TITLE_H + 30;
    let remaining = 100.0 * o.density;
    let heading = format!("{title} at level {} ({}% of weights remaining, rate {})", o.level, significant(remaining, 3), o.rate);
    let line1 = format!(
        "cell: % of the row metric's kept weights that the column metric keeps too{}",
        if o.seeds > 1 { format!(" (mean over {} seeds)", o.seeds) } else { String::new() }
    );
    let mut line2 = format!("independent random tickets would share {}%", significant(remaining, 3));
    if let Some(all) = o.shared_by_all {
        line2.push_str(&format!(" · kept by all {n} metrics: {}%", percent(all)));
    }
    let text_w = [text_width(&heading, 19.0), text_width(&line1, 13.0), text_width(&line2, 13.0)].into_iter().fold(0.0, f64::max).ceil() as i32;
    let matrix_w = name_w + n * cell_w + COLOR_BAR_W;
    let width = (matrix_w + 2 * MARGIN).max(text_w + 2 * MARGIN);
    // The matrix centred under the title.
    let left = (width - matrix_w) / 2 + name_w;
    let height = top + n * CELL_H + 24;

    let root = SVGBackend::new(path, (width as u32, height as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let centre = |size: f64| ("sans-serif", size).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Center));
    let grey = RGBColor(90, 90, 90);
    root.draw(&Text::new(heading, (width / 2, 20), centre(19.0))).map_err(plot_err)?;
    root.draw(&Text::new(line1, (width / 2, 46), centre(13.0).color(&grey))).map_err(plot_err)?;
    root.draw(&Text::new(line2, (width / 2, 66), centre(13.0).color(&grey))).map_err(plot_err)?;

    for (j, m) in o.metrics.iter().enumerate() {
        root.draw(&Text::new(m.clone(), (left + j as i32 * cell_w + cell_w / 2, top - 12), centre(FONT))).map_err(plot_err)?;
    }
    for (i, a) in o.metrics.iter().enumerate() {
        let y = top + i as i32 * CELL_H;
        root.draw(&Text::new(a.clone(), (left - 8, y + CELL_H / 2), ("sans-serif", FONT).into_font().color(&BLACK).pos(Pos::new(HPos::Right, VPos::Center))))
            .map_err(plot_err)?;
        for j in 0..o.metrics.len() {
            let x = left + j as i32 * cell_w;
            let f = o.fraction[i][j];
            let fill = if f.is_finite() { viridis(f) } else { RGBColor(235, 235, 235) };
            root.draw(&Rectangle::new([(x, y), (x + cell_w - 2, y + CELL_H - 2)], fill.filled())).map_err(plot_err)?;
            root.draw(&Text::new(percent(f), (x + cell_w / 2, y + CELL_H / 2), centre(FONT).color(&ink_on(fill)))).map_err(plot_err)?;
        }
    }

    let bar_x = left + n * cell_w + 28;
    let bar_h = (n * CELL_H).max(120);
    let steps = 64;
    for s in 0..steps {
        let f0 = s as f64 / steps as f64;
        let y_bottom = top + bar_h - (f0 * bar_h as f64) as i32;
        let y_top = top + bar_h - (((s + 1) as f64 / steps as f64) * bar_h as f64) as i32;
        root.draw(&Rectangle::new([(bar_x, y_top), (bar_x + 14, y_bottom)], viridis(f0 + 0.5 / steps as f64).filled())).map_err(plot_err)?;
    }
    root.draw(&Rectangle::new([(bar_x, top), (bar_x + 14, top + bar_h)], BLACK.stroke_width(1))).map_err(plot_err)?;
    for t in [0, 50, 100] {
        let y = top + bar_h - (t as f64 / 100.0 * bar_h as f64) as i32;
        root.draw(&Text::new(format!("{t}%"), (bar_x + 20, y), ("sans-serif", 12).into_font().color(&BLACK).pos(Pos::new(HPos::Left, VPos::Center))))
            .map_err(plot_err)?;
    }
    root.present().map_err(plot_err).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
