//! The dashboard's figures as inline SVG, drawn on the server from the analysis views' rows.
//!
//! Every mark carries a `<title>` (the browser shows it on hover, no JavaScript needed) and the
//! series carry `data-` attributes (metric, rate) so that tests and scripts can read the plot.
//! Colours per metric are those of `lthctl report` (matplotlib's tab10 in paper order).

use super::html::esc;
use crate::store::{AccuracyRow, KeptCell, OverlapCell, ProgressPoint};
use std::collections::BTreeMap;
use std::fmt::Write;

/// The colour of a metric, as `lthctl report` draws it.
pub fn metric_color(metric: &str) -> String {
    let (r, g, b) = match metric {
        "magnitude" => (31, 119, 180),
        "l1" => (255, 127, 14),
        "l2" => (44, 160, 44),
        "softmax" => (214, 39, 40),
        "min_max" => (148, 103, 189),
        "random" => (127, 127, 127),
        "lamp" => (140, 86, 75),
        "uniform_magnitude" => (227, 119, 194),
        other => {
            let h = other.bytes().fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
            (((h >> 16) & 0xff) as u8 / 2 + 60, ((h >> 8) & 0xff) as u8 / 2 + 60, (h & 0xff) as u8 / 2 + 60)
        }
    };
    format!("#{r:02x}{g:02x}{b:02x}")
}

/// Metric names in the paper's order (lth_sweep's), unknown names last.
pub fn metric_rank(name: &str) -> (usize, String) {
    let idx = lth_sweep::ImportanceMetric::ALL.iter().position(|m| m.as_str() == name).unwrap_or(usize::MAX);
    (idx, name.to_string())
}

/// The n-th rate's dash pattern (None: solid), as `lthctl report` styles rates.
fn dash(index: usize) -> &'static str {
    match index % 4 {
        0 => "",
        1 => "10 5",
        2 => "3 3",
        _ => "14 4",
    }
}

fn pct(p: f64) -> String {
    if p >= 99.95 {
        "100".into()
    } else if p >= 10.0 {
        format!("{p:.1}")
    } else if p >= 1.0 {
        format!("{p:.2}")
    } else {
        format!("{p:.3}")
    }
}

/// "nice" ticks covering [lo, hi].
fn ticks(lo: f64, hi: f64, want: usize) -> Vec<f64> {
    if !(hi > lo) {
        return vec![lo];
    }
    let raw = (hi - lo) / want.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 {
        out.push(t);
        t += step;
    }
    out
}

/// Test accuracy (mean ± std over seeds) against the percent of weights remaining, on a log axis
/// from 100% down: one colour per metric, one dash pattern per rate, the dense network (level 0)
/// as a grey dashed reference line. Each series is a `<g class="series" data-metric data-rate>`
/// with one `<circle class="pt">` per level.
pub fn accuracy_plot(rows: &[AccuracyRow]) -> String {
    if rows.is_empty() {
        return "<p class=\"empty\">No results yet: the plot appears with the first finished level.</p>".into();
    }
    let (w, h) = (860.0, 400.0);
    let (l, r, t, b) = (62.0, 190.0, 16.0, 52.0);
    let (pw, ph) = (w - l - r, h - t - b);
    let remaining = |s: f64| (100.0 * (1.0 - s)).clamp(1e-6, 100.0);
    let pmin = rows.iter().map(|a| remaining(a.sparsity)).fold(100.0, f64::min).min(99.0);
    let lx = |p: f64| l + pw * (100f64.log10() - p.log10()) / (100f64.log10() - pmin.log10());
    let lo = rows.iter().map(|a| a.mean_accuracy - a.std_accuracy.unwrap_or(0.0)).fold(f64::INFINITY, f64::min);
    let hi = rows.iter().map(|a| a.mean_accuracy + a.std_accuracy.unwrap_or(0.0)).fold(f64::NEG_INFINITY, f64::max);
    let pad = ((hi - lo) * 0.08).max(0.005);
    let (ylo, yhi) = ((lo - pad).max(0.0) * 100.0, (hi + pad).min(1.0) * 100.0);
    let ly = |acc: f64| t + ph * (1.0 - (100.0 * acc - ylo) / (yhi - ylo).max(1e-9));

    let mut s = String::new();
    let _ = write!(s, r#"<svg class="plot accuracy" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="test accuracy vs weights remaining">"#);
    let _ = write!(s, r##"<rect x="{l}" y="{t}" width="{pw}" height="{ph}" fill="#fff" stroke="#bbb"/>"##);
    for v in ticks(ylo, yhi, 6) {
        let y = t + ph * (1.0 - (v - ylo) / (yhi - ylo).max(1e-9));
        let _ = write!(s, r##"<line x1="{l}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" class="tick" text-anchor="end">{v:.1}</text>"##, l + pw, l - 6.0, y + 4.0);
    }
    // x ticks: the levels' percents of the first series (every level of every series shares them
    // when the rates agree), thinned to ~8.
    let mut xs: Vec<f64> = rows.iter().map(|a| remaining(a.sparsity)).collect();
    xs.sort_by(|a, b| b.total_cmp(a));
    xs.dedup_by(|a, b| (*a - *b).abs() < 1e-6 * b.abs().max(1.0));
    let mut last_x = f64::NEG_INFINITY;
    for p in xs {
        let x = lx(p);
        if x - last_x < 44.0 {
            continue;
        }
        last_x = x;
        let _ = write!(s, r##"<line x1="{x:.1}" x2="{x:.1}" y1="{t}" y2="{}" stroke="#eee"/><text x="{x:.1}" y="{}" class="tick" text-anchor="middle">{}</text>"##, t + ph, t + ph + 16.0, pct(p));
    }
    let _ = write!(s, r#"<text x="{}" y="{}" class="axis" text-anchor="middle">weights remaining (%, log scale)</text>"#, l + pw / 2.0, h - 10.0);
    let _ = write!(s, r#"<text x="14" y="{}" class="axis" text-anchor="middle" transform="rotate(-90 14 {})">test accuracy (%)</text>"#, t + ph / 2.0, t + ph / 2.0);

    // Dense reference: the level-0 point with the most seeds.
    if let Some(d) = rows.iter().filter(|a| a.level == 0).max_by_key(|a| a.seeds) {
        let y = ly(d.mean_accuracy);
        let sd = d.std_accuracy.unwrap_or(0.0);
        let (y1, y2) = (ly(d.mean_accuracy + sd), ly(d.mean_accuracy - sd));
        let _ = write!(
            s,
            r##"<g class="dense"><title>dense network (level 0): {:.2}% ± {:.2} over {} seeds</title><rect x="{l}" y="{y1:.1}" width="{pw}" height="{:.1}" fill="#888" opacity="0.12"/><line x1="{l}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#5a5a5a" stroke-dasharray="6 4"/></g>"##,
            100.0 * d.mean_accuracy,
            100.0 * sd,
            d.seeds,
            (y2 - y1).max(0.0),
            l + pw
        );
    }

    // Series, grouped by (metric in paper order, rate).
    let mut rates: Vec<f64> = rows.iter().map(|a| a.rate).collect();
    rates.sort_by(f64::total_cmp);
    rates.dedup();
    let mut series: BTreeMap<((usize, String), u64), Vec<&AccuracyRow>> = BTreeMap::new();
    for a in rows {
        series.entry((metric_rank(&a.metric), a.rate.to_bits())).or_default().push(a);
    }
    let n = series.len();
    for (i, ((m, rate_bits), pts)) in series.iter().enumerate() {
        let metric = &m.1;
        let rate = f64::from_bits(*rate_bits);
        let ri = rates.iter().position(|r| *r == rate).unwrap_or(0);
        let color = metric_color(metric);
        let dodge = (i as f64 - (n as f64 - 1.0) / 2.0) * 3.0;
        let mut pts = pts.clone();
        pts.sort_by_key(|a| a.level);
        let _ = write!(s, r#"<g class="series" data-metric="{}" data-rate="{rate}">"#, esc(metric));
        let path: Vec<String> = pts.iter().map(|a| format!("{:.1},{:.1}", lx(remaining(a.sparsity)) + dodge, ly(a.mean_accuracy))).collect();
        let _ = write!(s, r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2" stroke-dasharray="{}"/>"#, path.join(" "), dash(ri));
        for a in &pts {
            let x = lx(remaining(a.sparsity)) + dodge;
            let y = ly(a.mean_accuracy);
            let sd = a.std_accuracy.unwrap_or(0.0);
            if sd > 0.0 {
                let _ = write!(s, r#"<line x1="{x:.1}" x2="{x:.1}" y1="{:.1}" y2="{:.1}" stroke="{color}" stroke-width="1.2"/>"#, ly(a.mean_accuracy + sd), ly(a.mean_accuracy - sd));
            }
            let _ = write!(
                s,
                r#"<circle class="pt" cx="{x:.1}" cy="{y:.1}" r="4" fill="{color}" data-level="{}"><title>{} rate {rate} level {}: {}% of weights remaining, accuracy {:.2}% ± {:.2} (min {:.2}, max {:.2}, {} seeds)</title></circle>"#,
                a.level,
                esc(metric),
                a.level,
                pct(remaining(a.sparsity)),
                100.0 * a.mean_accuracy,
                100.0 * sd,
                100.0 * a.min_accuracy,
                100.0 * a.max_accuracy,
                a.seeds
            );
        }
        s.push_str("</g>");
        // Legend entry.
        let ly0 = t + 10.0 + 20.0 * i as f64;
        let lx0 = l + pw + 14.0;
        let _ = write!(
            s,
            r#"<g class="legend"><line x1="{lx0}" x2="{}" y1="{ly0}" y2="{ly0}" stroke="{color}" stroke-width="2" stroke-dasharray="{}"/><circle cx="{}" cy="{ly0}" r="3.5" fill="{color}"/><text x="{}" y="{}" class="legend">{} · rate {rate}</text></g>"#,
            lx0 + 30.0,
            dash(ri),
            lx0 + 15.0,
            lx0 + 36.0,
            ly0 + 4.0,
            esc(metric)
        );
    }
    let ly0 = t + 10.0 + 20.0 * n as f64;
    let _ = write!(
        s,
        r##"<g class="legend"><line x1="{}" x2="{}" y1="{ly0}" y2="{ly0}" stroke="#5a5a5a" stroke-dasharray="6 4"/><text x="{}" y="{}" class="legend">dense (level 0)</text></g>"##,
        l + pw + 14.0,
        l + pw + 44.0,
        l + pw + 50.0,
        ly0 + 4.0
    );
    s.push_str("</svg>");
    s
}

/// A sequential colour for a fraction in [0, 1] (viridis, piecewise linear).
fn viridis(f: f64) -> (u8, u8, u8) {
    const STOPS: [(f64, (f64, f64, f64)); 5] =
        [(0.0, (68.0, 1.0, 84.0)), (0.25, (59.0, 82.0, 139.0)), (0.5, (33.0, 145.0, 140.0)), (0.75, (94.0, 201.0, 98.0)), (1.0, (253.0, 231.0, 37.0))];
    let f = f.clamp(0.0, 1.0);
    for w in STOPS.windows(2) {
        let ((a, ca), (b, cb)) = (w[0], w[1]);
        if f <= b {
            let u = (f - a) / (b - a);
            let mix = |x: f64, y: f64| (x + (y - x) * u).round() as u8;
            return (mix(ca.0, cb.0), mix(ca.1, cb.1), mix(ca.2, cb.2));
        }
    }
    (253, 231, 37)
}

fn ink((r, g, b): (u8, u8, u8)) -> &'static str {
    if 0.2126 * r as f64 + 0.7152 * g as f64 + 0.0722 * b as f64 > 140.0 {
        "#000"
    } else {
        "#fff"
    }
}

/// Per (metric, rate): the percent of each layer's weights kept at each level, layers in network
/// order (rows), levels (columns).
pub fn kept_heatmap(cells: &[KeptCell]) -> String {
    if cells.is_empty() {
        return "<p class=\"empty\">No per-layer results yet.</p>".into();
    }
    let mut panels: BTreeMap<((usize, String), u64), Vec<&KeptCell>> = BTreeMap::new();
    for c in cells {
        panels.entry((metric_rank(&c.metric), c.rate.to_bits())).or_default().push(c);
    }
    let mut s = String::from("<div class=\"heatmaps\">");
    for ((m, rate_bits), cs) in panels {
        let rate = f64::from_bits(rate_bits);
        let mut layers: Vec<(i32, &str)> = cs.iter().map(|c| (c.ordinal, c.layer.as_str())).collect();
        layers.sort();
        layers.dedup();
        let mut levels: Vec<i32> = cs.iter().map(|c| c.level).collect();
        levels.sort();
        levels.dedup();
        let name_w = 8.0 + 7.0 * layers.iter().map(|(_, n)| n.len()).max().unwrap_or(4) as f64;
        let (cw, ch) = (44.0, 24.0);
        let (w, h) = (name_w + cw * levels.len() as f64 + 8.0, 40.0 + ch * layers.len() as f64);
        let _ = write!(
            s,
            r#"<figure class="heatmap" data-metric="{}" data-rate="{rate}"><figcaption><span class="swatch" style="background:{}"></span>{} · rate {rate}</figcaption><svg viewBox="0 0 {w} {h}" width="{w}" height="{h}">"#,
            esc(&m.1),
            metric_color(&m.1),
            esc(&m.1)
        );
        for (j, lv) in levels.iter().enumerate() {
            let _ = write!(s, r#"<text x="{:.1}" y="14" class="tick" text-anchor="middle">L{lv}</text>"#, name_w + cw * (j as f64 + 0.5));
        }
        for (i, (_, layer)) in layers.iter().enumerate() {
            let y = 22.0 + ch * i as f64;
            let _ = write!(s, r#"<text x="{:.1}" y="{:.1}" class="tick" text-anchor="end">{}</text>"#, name_w - 6.0, y + ch / 2.0 + 4.0, esc(layer));
            for (j, lv) in levels.iter().enumerate() {
                let Some(c) = cs.iter().find(|c| c.layer == *layer && c.level == *lv) else { continue };
                let col = viridis(c.kept_fraction);
                let x = name_w + cw * j as f64;
                let p = 100.0 * c.kept_fraction;
                let label = if p >= 99.95 { "100".to_string() } else if p >= 10.0 { format!("{p:.1}") } else { format!("{p:.2}") };
                let _ = write!(
                    s,
                    r#"<g class="cell"><title>{} level {lv}: {}% of {} kept{}</title><rect x="{x:.1}" y="{y:.1}" width="{}" height="{}" fill="rgb({},{},{})"/><text x="{:.1}" y="{:.1}" class="cell" text-anchor="middle" fill="{}">{label}</text></g>"#,
                    esc(layer),
                    label,
                    esc(layer),
                    if c.collapsed { " (collapsed)" } else { "" },
                    cw - 1.0,
                    ch - 1.0,
                    col.0,
                    col.1,
                    col.2,
                    x + cw / 2.0,
                    y + ch / 2.0 + 4.0,
                    ink(col)
                );
            }
        }
        s.push_str("</svg></figure>");
    }
    s.push_str("</div>");
    s
}

/// Metrics × metrics mean Jaccard of the tickets at one level, one matrix per rate.
pub fn overlap_matrix(cells: &[OverlapCell], level: i32) -> String {
    if cells.is_empty() {
        return format!("<p class=\"empty\">No two metrics have tickets at level {level} yet.</p>");
    }
    let mut by_rate: BTreeMap<u64, Vec<&OverlapCell>> = BTreeMap::new();
    for c in cells {
        by_rate.entry(c.rate.to_bits()).or_default().push(c);
    }
    let mut s = String::from("<div class=\"heatmaps\">");
    for (rb, cs) in by_rate {
        let rate = f64::from_bits(rb);
        let mut metrics: Vec<(usize, String)> = cs.iter().flat_map(|c| [metric_rank(&c.metric_a), metric_rank(&c.metric_b)]).collect();
        metrics.sort();
        metrics.dedup();
        let name_w = 16.0 + 7.0 * metrics.iter().map(|m| m.1.len()).max().unwrap_or(4) as f64;
        let (cell, top) = (56.0, 22.0);
        let (w, h) = (name_w + cell * metrics.len() as f64 + 8.0, top + cell * metrics.len() as f64 + 4.0);
        let _ = write!(s, r#"<figure class="overlap" data-rate="{rate}" data-level="{level}"><figcaption>rate {rate}, level {level} (Jaccard, mean over seeds)</figcaption><svg viewBox="0 0 {w} {h}" width="{w}" height="{h}">"#);
        for (j, m) in metrics.iter().enumerate() {
            let _ = write!(s, r#"<text x="{:.1}" y="{:.1}" class="tick" text-anchor="middle">{}</text>"#, name_w + cell * (j as f64 + 0.5), top - 8.0, esc(&m.1));
            let _ = write!(s, r#"<text x="{:.1}" y="{:.1}" class="tick" text-anchor="end">{}</text>"#, name_w - 6.0, top + cell * (j as f64 + 0.5) + 4.0, esc(&m.1));
        }
        for (i, a) in metrics.iter().enumerate() {
            for (j, b) in metrics.iter().enumerate() {
                let v = if i == j {
                    Some((1.0, 0))
                } else {
                    cs.iter()
                        .find(|c| (c.metric_a == a.1 && c.metric_b == b.1) || (c.metric_a == b.1 && c.metric_b == a.1))
                        .map(|c| (c.jaccard, c.seeds))
                };
                let Some((jac, seeds)) = v else { continue };
                let col = viridis(jac);
                let (x, y) = (name_w + cell * j as f64, top + cell * i as f64);
                let _ = write!(
                    s,
                    r#"<g class="cell"><title>{} vs {}: Jaccard {jac:.3}{}</title><rect x="{x:.1}" y="{y:.1}" width="{}" height="{}" fill="rgb({},{},{})"/><text x="{:.1}" y="{:.1}" class="cell" text-anchor="middle" fill="{}">{jac:.2}</text></g>"#,
                    esc(&a.1),
                    esc(&b.1),
                    if seeds > 0 { format!(" over {seeds} seeds") } else { String::new() },
                    cell - 1.0,
                    cell - 1.0,
                    col.0,
                    col.1,
                    col.2,
                    x + cell / 2.0,
                    y + cell / 2.0 + 4.0,
                    ink(col)
                );
            }
        }
        s.push_str("</svg></figure>");
    }
    s.push_str("</div>");
    s
}

/// A small line chart of (x, y) points: one series, hover titles on the points.
pub fn line_chart(class: &str, title: &str, xlabel: &str, ylabel: &str, pts: &[(f64, f64, String)], color: &str) -> String {
    if pts.is_empty() {
        return format!("<p class=\"empty\">No {} reported yet.</p>", esc(title));
    }
    let (w, h) = (420.0, 240.0);
    let (l, r, t, b) = (56.0, 12.0, 24.0, 40.0);
    let (pw, ph) = (w - l - r, h - t - b);
    let (xlo, xhi) = pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (ylo, yhi) = pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let (xlo, xhi) = if xhi > xlo { (xlo, xhi) } else { (xlo - 1.0, xlo + 1.0) };
    let pad = ((yhi - ylo) * 0.08).max(1e-3);
    let (ylo, yhi) = (ylo - pad, yhi + pad);
    let fx = |x: f64| l + pw * (x - xlo) / (xhi - xlo);
    let fy = |y: f64| t + ph * (1.0 - (y - ylo) / (yhi - ylo));
    let mut s = String::new();
    let _ = write!(s, r##"<svg class="plot {class}" viewBox="0 0 {w} {h}" width="{w}" height="{h}"><text x="{l}" y="15" class="title">{}</text><rect x="{l}" y="{t}" width="{pw}" height="{ph}" fill="#fff" stroke="#bbb"/>"##, esc(title));
    let yt = ticks(ylo, yhi, 4);
    for &v in &yt {
        let y = fy(v);
        let _ = write!(s, r##"<line x1="{l}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" class="tick" text-anchor="end">{}</text>"##, l + pw, l - 4.0, y + 4.0, tick_label(v, &yt));
    }
    let xt = ticks(xlo, xhi, 4);
    for &v in &xt {
        let x = fx(v);
        let _ = write!(s, r#"<text x="{x:.1}" y="{}" class="tick" text-anchor="middle">{}</text>"#, t + ph + 14.0, tick_label(v, &xt));
    }
    let _ = write!(s, r#"<text x="{}" y="{}" class="axis" text-anchor="middle">{}</text>"#, l + pw / 2.0, h - 6.0, esc(xlabel));
    let _ = write!(s, r#"<text x="12" y="{}" class="axis" text-anchor="middle" transform="rotate(-90 12 {})">{}</text>"#, t + ph / 2.0, t + ph / 2.0, esc(ylabel));
    let path: Vec<String> = pts.iter().map(|p| format!("{:.1},{:.1}", fx(p.0), fy(p.1))).collect();
    let _ = write!(s, r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="1.6"/>"#, path.join(" "));
    for p in pts {
        let _ = write!(s, r#"<circle class="pt" cx="{:.1}" cy="{:.1}" r="2.5" fill="{color}"><title>{}</title></circle>"#, fx(p.0), fy(p.1), esc(&p.2));
    }
    s.push_str("</svg>");
    s
}

/// A tick's label with as many decimals as the ticks' step needs (0.286, 0.287; 22, 23).
fn tick_label(v: f64, all: &[f64]) -> String {
    let step = if all.len() >= 2 { (all[1] - all[0]).abs() } else { 1.0 };
    if v.abs() >= 10_000.0 && step >= 1000.0 {
        return format!("{:.0}k", v / 1000.0);
    }
    let decimals = if step > 0.0 { (-step.log10().floor()).max(0.0) as usize } else { 0 };
    // A tick at zero computed as -1e-17 would read "-0.0".
    let v = if v.abs() < step * 1e-6 { 0.0 } else { v };
    format!("{v:.decimals$}")
}

/// The per-epoch curves of a job: train loss and test accuracy against the iteration.
pub fn job_curves(points: &[ProgressPoint]) -> String {
    let loss: Vec<(f64, f64, String)> = points
        .iter()
        .filter_map(|p| p.train_loss.filter(|v| v.is_finite()).map(|v| (p.iteration, v, format!("attempt {} iteration {} (epoch {:.2}): train loss {v:.4}", p.attempt, p.iteration, p.epoch))))
        .collect();
    let acc: Vec<(f64, f64, String)> = points
        .iter()
        .filter_map(|p| {
            p.test_accuracy.filter(|v| v.is_finite()).map(|v| (p.iteration, 100.0 * v, format!("attempt {} iteration {} (epoch {:.2}): test accuracy {:.2}%", p.attempt, p.iteration, p.epoch, 100.0 * v)))
        })
        .collect();
    format!(
        "<div class=\"curves\">{}{}</div>",
        line_chart("loss", "train loss", "iteration", "loss", &loss, "#1f77b4"),
        line_chart("acc", "test accuracy (%)", "iteration", "%", &acc, "#d62728")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(metric: &str, level: i32, sparsity: f64, acc: f64) -> AccuracyRow {
        AccuracyRow {
            metric: metric.into(),
            rate: 0.2,
            level,
            sparsity,
            mean_accuracy: acc,
            std_accuracy: Some(0.01),
            min_accuracy: acc - 0.01,
            max_accuracy: acc + 0.01,
            seeds: 2,
        }
    }

    #[test]
    fn one_series_per_metric_and_one_point_per_level() {
        let mut rows = Vec::new();
        for m in ["l1", "magnitude"] {
            for level in 0..4 {
                rows.push(row(m, level, 1.0 - 0.8f64.powi(level), 0.9 - 0.01 * level as f64));
            }
        }
        let svg = accuracy_plot(&rows);
        assert_eq!(svg.matches("<g class=\"series\"").count(), 2);
        assert_eq!(svg.matches("class=\"pt\"").count(), 8);
        // Paper order: magnitude before l1.
        assert!(svg.find("data-metric=\"magnitude\"").unwrap() < svg.find("data-metric=\"l1\"").unwrap());
        assert!(svg.contains("<g class=\"dense\">"));
        assert!(svg.contains("<title>l1 rate 0.2 level 3: 51.2% of weights remaining"), "{svg}");
    }

    #[test]
    fn tick_labels_follow_the_step_and_never_read_minus_zero() {
        assert_eq!(tick_label(-1e-17, &[-1e-17, 0.1, 0.2]), "0.0");
        assert_eq!(tick_label(0.286, &[0.286, 0.287]), "0.286");
        assert_eq!(tick_label(200.0, &[100.0, 200.0]), "200");
    }

    #[test]
    fn names_are_escaped() {
        let svg = accuracy_plot(&[row("<x>", 0, 0.0, 0.5)]);
        assert!(!svg.contains("<x>") && svg.contains("&lt;x&gt;"));
    }
}
