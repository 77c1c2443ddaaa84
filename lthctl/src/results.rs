//! Accuracy vs sparsity per metric: the numbers a Lottery-Ticket study reports.
//!
//! `GetResults` returns one row per (metric, rate, seed, level) and the rows of the
//! `accuracy_vs_sparsity` view: the mean ± standard deviation over seeds at each level, as papers
//! report them and as SQL users read them. `points` takes the view's rows (one aggregation source
//! of truth); `aggregate` does the same over the per-seed rows, for coordinators that predate the
//! view's rows in GetResults. Rendering as a table, CSV or JSON; the per-layer kept fractions (for
//! the heatmap) are aggregated here.
//!
//! The dense level 0 is shared by every trial of a seed. A coordinator may report it once per seed
//! with no metric; such rows are copied into every (metric, rate) series so each curve starts at
//! 100% of weights remaining. A level-0 row that names its metric takes precedence.

use crate::convert::{metric_from_proto, metric_name};
use anyhow::{Context, Result};
use lth_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One point of an accuracy-vs-sparsity curve: a (metric, rate, level) over its seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultPoint {
    pub metric: String,
    pub rate: f64,
    pub level: u32,
    /// Fraction of prunable weights removed (mean over seeds; equal across seeds unless a layer
    /// guard kicked in differently).
    pub sparsity: f64,
    /// 100 × (1 − sparsity): the x axis of LTH plots.
    pub weights_remaining_percent: f64,
    /// Top-1 test accuracy in [0, 1], mean over seeds.
    pub accuracy_mean: f64,
    /// Sample standard deviation over seeds (n − 1 in the denominator; 0 for one seed).
    pub accuracy_std: f64,
    pub accuracy_min: f64,
    pub accuracy_max: f64,
    pub seeds: u32,
    /// "ticket", or the control ("reinit", "random_mask") trained beside it at this level.
    #[serde(default = "ticket")]
    pub control: String,
    /// A scheduled trial's per-level rates ("0.5 0.3 0.3"; `rate` is the first); empty for a
    /// constant rate.
    #[serde(default)]
    pub schedule: String,
}

fn ticket() -> String {
    TICKET.to_string()
}

/// The `control` of a ticket's point.
pub const TICKET: &str = "ticket";

/// The control a row belongs to: "ticket" or the control's name.
pub fn control_name(row: &pb::ResultRow) -> String {
    match pb::Control::try_from(row.control) {
        Ok(pb::Control::Reinit) => "reinit".into(),
        Ok(pb::Control::RandomMask) => "random_mask".into(),
        Ok(pb::Control::Unspecified) => TICKET.into(),
        Err(_) => format!("control#{}", row.control),
    }
}

fn schedule_label(row: &pb::ResultRow) -> String {
    row.schedule.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(" ")
}

/// The ticket rows alone (what the plots, the masks and `lthctl export` are about).
pub fn tickets(rows: &[pb::ResultRow]) -> Vec<pb::ResultRow> {
    rows.iter().filter(|r| r.control == pb::Control::Unspecified as i32).cloned().collect()
}

/// Kept fraction of one layer at one (metric, rate, level), mean over seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerPoint {
    pub metric: String,
    pub rate: f64,
    pub level: u32,
    pub layer: String,
    pub kept_fraction: f64,
    /// The layer's weight count (the same in every seed).
    pub total: u64,
    pub collapsed_in_seeds: u32,
    pub seeds: u32,
}

/// Mean and sample standard deviation (n − 1); std is 0 for fewer than two values.
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// Sort key for a metric name: the order metrics are declared in (paper metrics first).
pub fn metric_order(name: &str) -> (usize, String) {
    let idx = lth_sweep::ImportanceMetric::ALL
        .iter()
        .position(|m| m.as_str() == name)
        .unwrap_or(usize::MAX);
    (idx, name.to_string())
}

/// (metric, rate as ordered bits, schedule, level, control) → seed → row. Keyed by seed so that a
/// seed never counts twice however the coordinator reports level 0. The ticket sorts before its
/// controls ("ticket" is keyed as the empty string).
type Key = ((usize, String), u64, String, u32, String);
type Grouped<'a> = BTreeMap<Key, BTreeMap<u64, &'a pb::ResultRow>>;

fn group_rows(rows: &[pb::ResultRow]) -> Grouped<'_> {
    let mut groups: Grouped<'_> = BTreeMap::new();
    let rate_key = |r: f64| r.to_bits();
    let control_key = |r: &pb::ResultRow| if r.control == 0 { String::new() } else { control_name(r) };
    // Rows that name a metric first, so they win over shared dense rows.
    for row in rows.iter().filter(|r| metric_from_proto(r.metric).is_some() && r.result.is_some()) {
        let key = (metric_order(&metric_name(row.metric)), rate_key(row.rate), schedule_label(row), row.level, control_key(row));
        groups.entry(key).or_default().insert(row.seed, row);
    }
    // The ticket series (controls have no level 0 of their own).
    let series: Vec<((usize, String), u64, String)> = {
        let mut s: Vec<_> = groups.keys().filter(|k| k.4.is_empty()).map(|(m, r, sc, _, _)| (m.clone(), *r, sc.clone())).collect();
        s.dedup();
        s
    };
    for dense in rows.iter().filter(|r| metric_from_proto(r.metric).is_none() && r.level == 0 && r.result.is_some()) {
        for (metric, rate, schedule) in &series {
            groups.entry((metric.clone(), *rate, schedule.clone(), 0, String::new())).or_default().entry(dense.seed).or_insert(dense);
        }
    }
    groups
}

/// Mean ± std over seeds for every (metric, rate, level), ordered by metric, rate, level.
pub fn aggregate(rows: &[pb::ResultRow]) -> Vec<ResultPoint> {
    group_rows(rows)
        .into_iter()
        .map(|((metric, rate_bits, schedule, level, control), by_seed)| {
            let results: Vec<&pb::LevelResult> = by_seed.values().filter_map(|r| r.result.as_ref()).collect();
            let acc: Vec<f64> = results.iter().map(|r| r.test_accuracy).collect();
            let (sparsity, _) = mean_std(&results.iter().map(|r| r.sparsity).collect::<Vec<_>>());
            let (accuracy_mean, accuracy_std) = mean_std(&acc);
            ResultPoint {
                metric: metric.1,
                rate: f64::from_bits(rate_bits),
                level,
                sparsity,
                weights_remaining_percent: 100.0 * (1.0 - sparsity),
                accuracy_mean,
                accuracy_std,
                accuracy_min: acc.iter().copied().fold(f64::INFINITY, f64::min),
                accuracy_max: acc.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                seeds: acc.len() as u32,
                control: if control.is_empty() { ticket() } else { control },
                schedule,
            }
        })
        .collect()
}

/// The points `lthctl results` and `report` show: the coordinator's rows of the accuracy_vs_sparsity
/// view (the aggregation SQL users read), ordered by metric (paper order), rate, level. Only a
/// coordinator older than that field sends none; then the same aggregation runs here on the
/// per-seed rows. The field holds the tickets of constant-rate trials only, so a sweep with
/// controls or rate schedules is aggregated here too, from the same rows the view reads.
pub fn points(resp: &pb::GetResultsResponse) -> Vec<ResultPoint> {
    let controls_or_schedules = resp.rows.iter().any(|r| r.control != pb::Control::Unspecified as i32 || !r.schedule.is_empty());
    if resp.accuracy.is_empty() || controls_or_schedules {
        return aggregate(&resp.rows);
    }
    let mut out: Vec<ResultPoint> = resp
        .accuracy
        .iter()
        .map(|a| ResultPoint {
            metric: metric_name(a.metric),
            rate: a.rate,
            level: a.level,
            sparsity: a.sparsity,
            weights_remaining_percent: 100.0 * (1.0 - a.sparsity),
            accuracy_mean: a.mean_accuracy,
            accuracy_std: a.std_accuracy,
            accuracy_min: a.min_accuracy,
            accuracy_max: a.max_accuracy,
            seeds: a.seeds,
            control: ticket(),
            schedule: String::new(),
        })
        .collect();
    out.sort_by(|a, b| metric_order(&a.metric).cmp(&metric_order(&b.metric)).then(a.rate.total_cmp(&b.rate)).then(a.level.cmp(&b.level)));
    out
}

/// Per-layer kept fraction, mean over seeds, for every (metric, rate, level, layer). Layers keep the
/// order the engine reports them in (network order).
pub fn aggregate_layers(rows: &[pb::ResultRow]) -> Vec<LayerPoint> {
    let mut out = Vec::new();
    for ((metric, rate_bits, _schedule, level, control), by_seed) in group_rows(rows) {
        if !control.is_empty() {
            continue;
        }
        let mut layer_order: Vec<String> = Vec::new();
        let mut per_layer: BTreeMap<String, (Vec<f64>, u32, u64)> = BTreeMap::new();
        for row in by_seed.values() {
            for l in row.result.iter().flat_map(|r| r.layers.iter()) {
                if !per_layer.contains_key(&l.layer) {
                    layer_order.push(l.layer.clone());
                }
                let entry = per_layer.entry(l.layer.clone()).or_default();
                let frac = if l.total == 0 { 0.0 } else { l.kept as f64 / l.total as f64 };
                entry.0.push(frac);
                entry.1 += u32::from(l.collapsed);
                entry.2 = entry.2.max(l.total);
            }
        }
        for layer in layer_order {
            let (fracs, collapsed, total) = &per_layer[&layer];
            out.push(LayerPoint {
                metric: metric.1.clone(),
                rate: f64::from_bits(rate_bits),
                level,
                layer,
                kept_fraction: mean_std(fracs).0,
                total: *total,
                collapsed_in_seeds: *collapsed,
                seeds: fracs.len() as u32,
            });
        }
    }
    out
}

/// A ticket whose classifier has output classes with their whole fan-in pruned.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadClasses {
    pub metric: String,
    pub rate: f64,
    pub seed: u64,
    pub level: u32,
    pub dead: u64,
    pub classes: u64,
}

/// Tickets with dead classes, in metric, rate, seed, level order (the worker's unit counts).
pub fn dead_class_tickets(rows: &[pb::ResultRow]) -> Vec<DeadClasses> {
    let mut out: Vec<DeadClasses> = rows
        .iter()
        .filter_map(|r| {
            let l = r.result.as_ref()?.layers.iter().find(|l| l.output_layer && l.dead_outputs > 0)?;
            Some(DeadClasses { metric: metric_name(r.metric), rate: r.rate, seed: r.seed, level: r.level, dead: l.dead_outputs, classes: l.outputs })
        })
        .collect();
    out.sort_by(|a, b| {
        (metric_order(&a.metric), a.seed, a.level).cmp(&(metric_order(&b.metric), b.seed, b.level)).then(a.rate.total_cmp(&b.rate))
    });
    out
}

/// The warning `lthctl results` prints when tickets have dead classes (None when none do).
pub fn dead_class_warning(rows: &[pb::ResultRow]) -> Option<String> {
    let dead = dead_class_tickets(rows);
    if dead.is_empty() {
        return None;
    }
    let mut s = format!(
        "warning: {} ticket(s) have dead output classes (every weight into the class pruned: the network cannot predict it from its input):\n",
        dead.len()
    );
    for d in dead.iter().take(10) {
        s.push_str(&format!("  {} rate {} seed {} level {}: {} of {} classes dead\n", d.metric, d.rate, d.seed, d.level, d.dead, d.classes));
    }
    if dead.len() > 10 {
        s.push_str(&format!("  … and {} more\n", dead.len() - 10));
    }
    s.push_str("  per layer: SELECT * FROM dead_units WHERE sweep_id = ID (docs/sql.md)\n");
    Some(s)
}

/// The results whose training diverged (their loss stopped being a number), one line each; they
/// are part of the averages above (a diverged run is a real outcome at its sparsity).
pub fn diverged_warning(rows: &[pb::ResultRow]) -> Option<String> {
    let diverged: Vec<&pb::ResultRow> = rows.iter().filter(|r| r.result.as_ref().is_some_and(|x| x.diverged)).collect();
    if diverged.is_empty() {
        return None;
    }
    let mut s = format!("warning: {} result(s) diverged (the training loss stopped being a number; counted in the rows above at their accuracy):\n", diverged.len());
    for r in diverged.iter().take(10) {
        let acc = r.result.as_ref().map(|x| x.test_accuracy).unwrap_or_default();
        let control = match pb::Control::try_from(r.control).unwrap_or(pb::Control::Unspecified) {
            pb::Control::Unspecified => String::new(),
            c => format!(" ({})", c.as_str_name().trim_start_matches("CONTROL_").to_ascii_lowercase()),
        };
        s.push_str(&format!(
            "  job {} {} rate {} seed {} level {}{control}: diverged, test accuracy {:.4}\n",
            r.job_id,
            crate::convert::metric_name(r.metric),
            r.rate,
            r.seed,
            r.level,
            acc
        ));
    }
    if diverged.len() > 10 {
        s.push_str(&format!("  … and {} more\n", diverged.len() - 10));
    }
    s.push_str("  in SQL: SELECT * FROM trial_results t JOIN level_results r ON r.job_id = t.result_job_id WHERE r.diverged\n");
    Some(s)
}

/// Output formats of `lthctl results`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

pub fn render(points: &[ResultPoint], format: Format) -> Result<String> {
    match format {
        Format::Table => Ok(render_table(points)),
        Format::Csv => render_csv(points),
        Format::Json => Ok(serde_json::to_string_pretty(points)? + "\n"),
    }
}

/// A table for people: accuracy in percent as mean ± std.
pub fn render_table(points: &[ResultPoint]) -> String {
    if points.is_empty() {
        return "no results yet: jobs report a row when they finish (`lthctl status ID` shows progress)\n".to_string();
    }
    // Controls go in columns of their own beside the ticket of the same (metric, rate, level).
    let mut controls: Vec<&str> = points.iter().filter(|p| p.control != TICKET).map(|p| p.control.as_str()).collect();
    controls.sort_unstable();
    controls.dedup();
    let control_of = |t: &ResultPoint, c: &str| {
        points.iter().find(|p| p.control == c && p.metric == t.metric && p.rate == t.rate && p.schedule == t.schedule && p.level == t.level)
    };
    let scheduled = points.iter().any(|p| !p.schedule.is_empty());
    let mut header: Vec<String> =
        ["metric", "rate", "level", "remaining %", "sparsity %", "accuracy % (mean ± std)", "min %", "max %", "seeds"].map(String::from).to_vec();
    header.extend(controls.iter().map(|c| format!("{c} %")));
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING).set_header(header.clone());
    for p in points.iter().filter(|p| p.control == TICKET) {
        let mut cells = vec![
            p.metric.clone(),
            if scheduled && !p.schedule.is_empty() { format!("[{}]", p.schedule.replace(' ', ", ")) } else { format!("{}", p.rate) },
            p.level.to_string(),
            format!("{:.2}", p.weights_remaining_percent),
            format!("{:.2}", 100.0 * p.sparsity),
            format!("{:.2} ± {:.2}", 100.0 * p.accuracy_mean, 100.0 * p.accuracy_std),
            format!("{:.2}", 100.0 * p.accuracy_min),
            format!("{:.2}", 100.0 * p.accuracy_max),
            p.seeds.to_string(),
        ];
        for c in &controls {
            cells.push(match control_of(p, c) {
                Some(q) => format!("{:.2} ± {:.2}", 100.0 * q.accuracy_mean, 100.0 * q.accuracy_std),
                None => String::new(),
            });
        }
        table.add_row(cells);
    }
    for i in 1..header.len() {
        if let Some(c) = table.column_mut(i) {
            c.set_cell_alignment(comfy_table::CellAlignment::Right);
        }
    }
    let mut s = table.to_string();
    // comfy-table's NOTHING preset leaves a leading space on every line.
    s = s.lines().map(|l| l.strip_prefix(' ').unwrap_or(l).trim_end()).collect::<Vec<_>>().join("\n");
    s.push('\n');
    s
}

/// CSV with a header; accuracies as fractions in [0, 1] (as on the wire), full precision.
pub fn render_csv(points: &[ResultPoint]) -> Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    if points.is_empty() {
        // Still write the header, so scripts see the columns.
        w.write_record(["metric", "rate", "level", "sparsity", "weights_remaining_percent", "accuracy_mean", "accuracy_std", "accuracy_min", "accuracy_max", "seeds", "control", "schedule"])?;
    }
    for p in points {
        w.serialize(p)?;
    }
    let bytes = w.into_inner().context("finishing the CSV")?;
    Ok(String::from_utf8(bytes)?)
}

/// Reads what `render_csv` wrote.
pub fn parse_csv(text: &str) -> Result<Vec<ResultPoint>> {
    let mut r = csv::Reader::from_reader(text.as_bytes());
    r.deserialize().map(|p| p.context("reading a results CSV row")).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn row(metric: pb::ImportanceMetric, rate: f64, seed: u64, level: u32, acc: f64) -> pb::ResultRow {
        let sparsity = 1.0 - (1.0 - rate).powi(level as i32);
        let kept_fc1 = ((1.0 - sparsity) * 1000.0).round() as u64;
        pb::ResultRow {
            metric: metric as i32,
            rate,
            seed,
            level,
            job_id: 0,
            control: 0,
            schedule: vec![],
            result: Some(pb::LevelResult {
                sparsity,
                test_accuracy: acc,
                layers: vec![
                    pb::LayerStats { layer: "fc1.weight".into(), kept: kept_fc1, total: 1000, ..Default::default() },
                    pb::LayerStats { layer: "fc2.weight".into(), kept: 100 - level as u64 * 10, total: 100, ..Default::default() },
                ],
                ..Default::default()
            }),
        }
    }

    #[test]
    fn points_are_the_views_rows_in_paper_order() {
        let rows = vec![row(pb::ImportanceMetric::L1, 0.2, 1, 1, 0.5)];
        let a = |metric: pb::ImportanceMetric, rate: f64, level: u32, mean: f64| pb::AccuracyPoint {
            metric: metric as i32,
            rate,
            level,
            sparsity: 0.2 * level as f64,
            mean_accuracy: mean,
            std_accuracy: 0.01,
            min_accuracy: mean - 0.01,
            max_accuracy: mean + 0.01,
            seeds: 2,
        };
        // The view orders metrics by name; lthctl shows the paper's order (magnitude before l1).
        let resp = pb::GetResultsResponse {
            rows: rows.clone(),
            accuracy: vec![a(pb::ImportanceMetric::L1, 0.2, 1, 0.7), a(pb::ImportanceMetric::Magnitude, 0.2, 1, 0.8), a(pb::ImportanceMetric::Magnitude, 0.1, 1, 0.9)],
        };
        let p = points(&resp);
        assert_eq!(p.iter().map(|p| (p.metric.as_str(), p.rate)).collect::<Vec<_>>(), [("magnitude", 0.1), ("magnitude", 0.2), ("l1", 0.2)]);
        assert_eq!((p[2].accuracy_mean, p[2].accuracy_std, p[2].accuracy_min, p[2].seeds), (0.7, 0.01, 0.7 - 0.01, 2));
        assert!((p[2].weights_remaining_percent - 80.0).abs() < 1e-12);
        // Without the view's rows (an older coordinator) the same numbers come from the per-seed rows.
        let old = pb::GetResultsResponse { rows: rows.clone(), accuracy: vec![] };
        assert_eq!(points(&old), aggregate(&rows));
    }

    #[test]
    fn dead_classes_are_listed_once_per_ticket() {
        let mut rows = vec![row(pb::ImportanceMetric::L1, 0.2, 1, 3, 0.5), row(pb::ImportanceMetric::L1, 0.2, 1, 4, 0.4)];
        assert_eq!(dead_class_warning(&rows), None);
        let fc = pb::LayerStats { layer: "fc.weight".into(), kept: 10, total: 40, outputs: 10, dead_outputs: 3, inputs: 4, output_layer: true, ..Default::default() };
        let hidden = pb::LayerStats { layer: "fc_layers.0.weight".into(), kept: 1, total: 40, outputs: 10, dead_outputs: 9, inputs: 4, ..Default::default() };
        rows[1].result.as_mut().unwrap().layers = vec![hidden.clone(), fc];
        rows[0].result.as_mut().unwrap().layers = vec![hidden];
        let w = dead_class_warning(&rows).unwrap();
        assert!(w.starts_with("warning: 1 ticket(s) have dead output classes"), "{w}");
        assert!(w.contains("l1 rate 0.2 seed 1 level 4: 3 of 10 classes dead"), "{w}");
    }

    #[test]
    fn mean_and_sample_std_of_known_numbers() {
        let (m, s) = mean_std(&[0.90, 0.92, 0.94]);
        assert!((m - 0.92).abs() < 1e-12);
        assert!((s - 0.02).abs() < 1e-12, "{s}");
        assert_eq!(mean_std(&[0.5]), (0.5, 0.0));
        // 2, 4, 4, 4, 5, 5, 7, 9: mean 5, sample variance 32/7
        let (m, s) = mean_std(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert_eq!(m, 5.0);
        assert!((s - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn aggregates_over_seeds_and_shares_the_dense_level() {
        use pb::ImportanceMetric::{Magnitude, L1};
        let mut rows = vec![];
        for (seed, base) in [(1u64, 0.90), (2, 0.94)] {
            // The dense level reported once per seed, without a metric.
            rows.push(row(pb::ImportanceMetric::Unspecified, 0.0, seed, 0, base));
            rows.push(row(Magnitude, 0.2, seed, 1, base - 0.01));
            rows.push(row(L1, 0.2, seed, 1, base - 0.03));
        }
        let pts = aggregate(&rows);
        let names: Vec<(String, u32)> = pts.iter().map(|p| (p.metric.clone(), p.level)).collect();
        assert_eq!(names, vec![("magnitude".into(), 0), ("magnitude".into(), 1), ("l1".into(), 0), ("l1".into(), 1)]);
        let l1_1 = &pts[3];
        assert!((l1_1.accuracy_mean - 0.89).abs() < 1e-12);
        assert!((l1_1.accuracy_std - 0.02 * 2f64.sqrt()).abs() < 1e-12, "{}", l1_1.accuracy_std);
        assert!((l1_1.sparsity - 0.2).abs() < 1e-12);
        assert!((l1_1.weights_remaining_percent - 80.0).abs() < 1e-9);
        assert!((l1_1.accuracy_min - 0.87).abs() < 1e-12 && (l1_1.accuracy_max - 0.91).abs() < 1e-12);
        assert_eq!(l1_1.seeds, 2);
        // The dense point of each metric holds both seeds, at rate 0.2 (the series' rate).
        assert_eq!(pts[0].seeds, 2);
        assert_eq!(pts[0].rate, 0.2);
        assert!((pts[0].accuracy_mean - 0.92).abs() < 1e-12);
    }

    #[test]
    fn metric_tagged_dense_rows_are_not_counted_twice() {
        let rows = vec![
            row(pb::ImportanceMetric::Magnitude, 0.2, 1, 0, 0.5),
            row(pb::ImportanceMetric::Unspecified, 0.0, 1, 0, 0.7),
            row(pb::ImportanceMetric::Magnitude, 0.2, 1, 1, 0.6),
        ];
        let pts = aggregate(&rows);
        assert_eq!(pts.len(), 2);
        assert_eq!((pts[0].seeds, pts[0].accuracy_mean), (1, 0.5));
    }

    #[test]
    fn layer_kept_fractions_are_averaged_in_network_order() {
        let rows = vec![row(pb::ImportanceMetric::L2, 0.2, 1, 2, 0.9), row(pb::ImportanceMetric::L2, 0.2, 2, 2, 0.8)];
        let layers = aggregate_layers(&rows);
        assert_eq!(layers.iter().map(|l| l.layer.as_str()).collect::<Vec<_>>(), ["fc1.weight", "fc2.weight"]);
        assert!((layers[0].kept_fraction - 0.64).abs() < 1e-12);
        assert!((layers[1].kept_fraction - 0.80).abs() < 1e-12);
        assert_eq!(layers[1].seeds, 2);
    }

    /// Equal, except that floats may differ in the last bit: the csv crate's and serde_json's
    /// default float parsers are not exactly round-trip.
    fn assert_close(back: &[ResultPoint], pts: &[ResultPoint]) {
        assert_eq!(back.len(), pts.len());
        for (b, p) in back.iter().zip(pts) {
            assert_eq!((&b.metric, b.rate, b.level, b.seeds), (&p.metric, p.rate, p.level, p.seeds));
            let pairs = [
                (b.sparsity, p.sparsity),
                (b.weights_remaining_percent, p.weights_remaining_percent),
                (b.accuracy_mean, p.accuracy_mean),
                (b.accuracy_std, p.accuracy_std),
                (b.accuracy_min, p.accuracy_min),
                (b.accuracy_max, p.accuracy_max),
            ];
            for (x, y) in pairs {
                assert!((x - y).abs() <= 1e-15 * y.abs().max(1.0), "{x} != {y}");
            }
        }
    }

    #[test]
    fn csv_round_trips_and_json_parses() {
        let rows: Vec<_> = (1..=3)
            .flat_map(|seed| (0..4).map(move |level| row(pb::ImportanceMetric::Softmax, 0.2, seed, level, 0.8 + 0.01 * seed as f64 - 0.02 * level as f64)))
            .collect();
        let pts = aggregate(&rows);
        assert_eq!(pts.len(), 4);
        let csv_text = render(&pts, Format::Csv).unwrap();
        assert!(csv_text.starts_with("metric,rate,level,sparsity,weights_remaining_percent,accuracy_mean,accuracy_std"));
        assert_close(&parse_csv(&csv_text).unwrap(), &pts);
        let json: Vec<ResultPoint> = serde_json::from_str(&render(&pts, Format::Json).unwrap()).unwrap();
        assert_close(&json, &pts);
        let empty = render(&[], Format::Csv).unwrap();
        assert!(empty.starts_with("metric,rate,level") && parse_csv(&empty).unwrap().is_empty());
    }

    #[test]
    fn table_shows_percent_mean_and_std() {
        let rows = vec![row(pb::ImportanceMetric::MinMax, 0.2, 1, 10, 0.9050), row(pb::ImportanceMetric::MinMax, 0.2, 2, 10, 0.9052)];
        let t = render_table(&aggregate(&rows));
        assert!(t.contains("min_max"), "{t}");
        assert!(t.contains("90.51 ± 0.01"), "{t}");
        assert!(t.contains("10.74"), "{t}"); // 0.8^10 = 10.74% remaining
        assert!(render_table(&[]).contains("no results yet"));
    }

    #[test]
    fn controls_sit_beside_their_ticket() {
        use pb::ImportanceMetric::L1;
        let mut rows = vec![row(pb::ImportanceMetric::Unspecified, 0.0, 1, 0, 0.95)];
        for seed in [1u64, 2] {
            rows.push(row(L1, 0.2, seed, 1, 0.93));
            rows.push(pb::ResultRow { control: pb::Control::Reinit as i32, ..row(L1, 0.2, seed, 1, 0.80 + 0.02 * seed as f64) });
            rows.push(pb::ResultRow { control: pb::Control::RandomMask as i32, ..row(L1, 0.2, seed, 1, 0.70) });
        }
        let pts = aggregate(&rows);
        let labels: Vec<(u32, &str)> = pts.iter().map(|p| (p.level, p.control.as_str())).collect();
        assert_eq!(labels, [(0, "ticket"), (1, "ticket"), (1, "random_mask"), (1, "reinit")], "the dense level is the ticket's alone");
        let reinit = &pts[3];
        assert!((reinit.accuracy_mean - 0.83).abs() < 1e-12 && reinit.seeds == 2);
        let t = render_table(&pts);
        let header = t.lines().next().unwrap();
        assert!(header.contains("random_mask %") && header.contains("reinit %"), "{t}");
        let level1 = t.lines().find(|l| l.contains("93.00 ±")).unwrap();
        assert!(level1.contains("70.00 ± 0.00") && level1.contains("83.00 ± 1.41"), "{t}");
        assert_eq!(t.lines().count(), 3, "controls are columns, not rows: {t}");
        let csv_text = render(&pts, Format::Csv).unwrap();
        assert_eq!(parse_csv(&csv_text).unwrap().iter().filter(|p| p.control == "reinit").count(), 1);
        assert_eq!(tickets(&rows).len(), 3);
        // A table without controls has no control columns.
        assert!(!render_table(&aggregate(&tickets(&rows))).contains("reinit"));
    }
}
