//! The weights-remaining axis: a log scale whose ticks sit at measured levels and never collide.
//!
//! Lottery-Ticket papers label this axis at the levels they measured (100, 51.2, 26.2, 13.4 ...
//! for 20% per level), which tells a reader exactly where the points are. With one rate every
//! level is an equal step on the log axis; with several rates the levels interleave (80, 64, 51.2
//! at rate 0.2 against 50, 25 at rate 0.5) and labels would overlap. So ticks are chosen from the
//! measured levels, densest first from 100%, skipping any whose label would come closer than a
//! gap to the previous one; the sparsest level is labelled too when it fits, since that is where
//! the comparison happens.

use super::text_width;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};

/// A linear f64 axis whose ticks sit exactly where we say. plotters' `with_key_points` would do
/// this, but its f64 axis then loses the label formatter that `configure_mesh` needs.
#[derive(Clone)]
pub struct TickedAxis {
    pub lo: f64,
    pub hi: f64,
    pub ticks: Vec<f64>,
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

/// The axis position of a percent of weights remaining: −log10, so that 100% is on the left.
pub fn x_of(remaining_percent: f64) -> f64 {
    -remaining_percent.max(1e-6).log10()
}

/// Empty space between two neighbouring tick labels, in pixels.
pub const TICK_GAP_PX: f64 = 10.0;

/// Chooses tick positions (axis values, as [`x_of`]) among the measured `remaining` percents so
/// that no two labels, drawn with `label` at font `size`, come closer than [`TICK_GAP_PX`] on an
/// axis of `width_px` pixels spanning `lo..hi`.
pub fn choose_ticks(remaining: &[f64], lo: f64, hi: f64, width_px: f64, size: f64, label: impl Fn(f64) -> String) -> Vec<f64> {
    let mut candidates: Vec<f64> = remaining.iter().copied().filter(|p| p.is_finite()).collect();
    candidates.sort_by(|a, b| b.total_cmp(a));
    let px = |p: f64| (x_of(p) - lo) / (hi - lo) * width_px;
    // Levels closer than a pixel are one tick.
    candidates.dedup_by(|a, b| (px(*a) - px(*b)).abs() < 1.0);
    let half = |p: f64| text_width(&label(p), size) / 2.0;
    let fits = |a: f64, b: f64| (px(b) - px(a)).abs() >= half(a) + half(b) + TICK_GAP_PX;
    let mut chosen: Vec<f64> = Vec::new();
    for &p in &candidates {
        if chosen.last().is_none_or(|&last| fits(last, p)) {
            chosen.push(p);
        }
    }
    // Label the sparsest level: in place of the last chosen tick when both do not fit (but never
    // in place of the first, 100%).
    if let (Some(&sparsest), Some(&last)) = (candidates.last(), chosen.last()) {
        if sparsest != last && chosen.len() >= 2 && !fits(last, sparsest) && fits(chosen[chosen.len() - 2], sparsest) {
            chosen.pop();
            chosen.push(sparsest);
        }
    }
    chosen.into_iter().map(x_of).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::percent_label;

    fn pixels(ticks: &[f64], lo: f64, hi: f64, width: f64) -> Vec<f64> {
        ticks.iter().map(|x| (x - lo) / (hi - lo) * width).collect()
    }

    #[test]
    fn one_rate_labels_the_measured_levels_with_room_between() {
        let remaining: Vec<f64> = (0..=20).map(|l| 100.0 * 0.8f64.powi(l)).collect();
        let (lo, hi) = (x_of(100.0) - 0.05, x_of(remaining[20]) + 0.05);
        let ticks = choose_ticks(&remaining, lo, hi, 700.0, 15.0, percent_label);
        let labels: Vec<String> = ticks.iter().map(|x| percent_label(10f64.powf(-x))).collect();
        assert_eq!(labels[0], "100");
        assert_eq!(labels.last().unwrap(), &percent_label(remaining[20]), "{labels:?}");
        assert!(labels.len() >= 6, "too few ticks: {labels:?}");
        let px = pixels(&ticks, lo, hi, 700.0);
        for (w, l) in px.windows(2).zip(labels.windows(2)) {
            let need = (text_width(&l[0], 15.0) + text_width(&l[1], 15.0)) / 2.0 + TICK_GAP_PX;
            assert!(w[1] - w[0] >= need - 1e-9, "{l:?} collide: {px:?}");
        }
    }

    #[test]
    fn interleaved_rates_never_put_51_2_on_50() {
        let mut remaining: Vec<f64> = (0..=6).map(|l| 100.0 * 0.8f64.powi(l)).collect();
        remaining.extend((1..=3).map(|l| 100.0 * 0.5f64.powi(l)));
        let (lo, hi) = (x_of(100.0) - 0.05, x_of(12.5) + 0.05);
        let ticks = choose_ticks(&remaining, lo, hi, 700.0, 15.0, percent_label);
        let labels: Vec<String> = ticks.iter().map(|x| percent_label(10f64.powf(-x))).collect();
        assert!(!(labels.contains(&"51.2".to_string()) && labels.contains(&"50.0".to_string())), "{labels:?}");
        assert_eq!(labels.last().unwrap(), "12.5", "{labels:?}");
    }
}
