//! `lthctl report`: fetches what the plots need and writes them (`plot::write_report`).
//!
//! The ticket-overlap plot needs masks, streamed for one level only. Its level, per rate, is
//! `--overlap-level` or the deepest level that every metric of the rate has reached; a coordinator
//! that does not serve masks (older than this lthctl) gets a note on stderr and the other plots.

use crate::cli::ImageFormat;
use crate::client::Coordinator;
use crate::commands::{get_results, get_sweep};
use crate::masks::{self, MasksNotServed, Overlap};
use crate::results::{aggregate_layers, ResultPoint};
use anyhow::Result;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

/// Per rate (as bits), the deepest level every metric of that rate has a result for; rates with
/// fewer than two metrics have nothing to compare and are left out.
pub fn deepest_common_levels(points: &[ResultPoint]) -> BTreeMap<u64, u32> {
    let mut deepest: BTreeMap<u64, BTreeMap<&str, u32>> = BTreeMap::new();
    for p in points {
        let d = deepest.entry(p.rate.to_bits()).or_default().entry(p.metric.as_str()).or_insert(0);
        *d = (*d).max(p.level);
    }
    deepest
        .into_iter()
        .filter(|(_, by_metric)| by_metric.len() >= 2)
        .filter_map(|(rate, by_metric)| by_metric.values().min().filter(|l| **l > 0).map(|l| (rate, *l)))
        .collect()
}

async fn overlaps(coord: &Coordinator, id: i64, rows: &[lth_proto::v1::ResultRow], points: &[ResultPoint], level: Option<u32>) -> Result<Vec<Overlap>> {
    let wanted: BTreeMap<u64, u32> = match level {
        Some(l) => deepest_common_levels(points).keys().map(|r| (*r, l)).collect(),
        None => deepest_common_levels(points),
    };
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let mut levels: Vec<u32> = wanted.values().copied().collect();
    levels.sort();
    levels.dedup();
    let tickets = masks::collect(masks::open(coord, id, &levels).await?, coord, id).await?;
    let labels = masks::job_labels(rows);
    let mut out = Vec::new();
    for l in levels {
        out.extend(masks::overlap(&tickets, &labels, l).into_iter().filter(|o| wanted.get(&o.rate.to_bits()) == Some(&o.level) && o.metrics.len() >= 2));
    }
    if out.is_empty() {
        if let Some(l) = level {
            anyhow::bail!("no two metrics have masks at level {l} of sweep {id}: choose a level they reached (`lthctl results {id}`)");
        }
    }
    Ok(out)
}

pub async fn report(coord: &Coordinator, id: i64, dir: Option<PathBuf>, format: ImageFormat, overlap_level: Option<u32>, out: &mut dyn Write) -> Result<()> {
    let s = get_sweep(coord, id).await?;
    // The plots are about tickets; `lthctl results` shows the controls beside them.
    let mut resp = get_results(coord, id).await?;
    resp.rows = crate::results::tickets(&resp.rows);
    let rows = resp.rows.clone();
    if rows.is_empty() {
        anyhow::bail!("sweep {id} has no results yet: jobs report a row when they finish (`lthctl status {id}` shows progress)");
    }
    let dir = dir.unwrap_or_else(|| PathBuf::from(format!("lth-report-{id}")));
    let title = format!("sweep {id} {}", s.name);
    let points = crate::results::points(&resp);
    let overlaps = match overlaps(coord, id, &rows, &points, overlap_level).await {
        Ok(o) => o,
        Err(e) if e.downcast_ref::<MasksNotServed>().is_some() => {
            eprintln!("note: no ticket-overlap plot: {e}");
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    let files = crate::plot::write_report(&points, &aggregate_layers(&rows), &overlaps, &title, &dir, format)?;
    for f in files {
        writeln!(out, "{}", f.display())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::aggregate;
    use crate::results::tests::row;
    use lth_proto::v1::ImportanceMetric as M;

    #[test]
    fn the_default_overlap_level_is_the_deepest_all_metrics_reached() {
        let mut rows = vec![];
        for level in 0..=4 {
            rows.push(row(M::Magnitude, 0.2, 1, level, 0.9));
        }
        for level in 0..=3 {
            rows.push(row(M::L1, 0.2, 1, level, 0.9));
        }
        // A rate with one metric has nothing to compare.
        rows.push(row(M::L2, 0.5, 1, 2, 0.9));
        let levels = deepest_common_levels(&aggregate(&rows));
        assert_eq!(levels.into_iter().collect::<Vec<_>>(), vec![(0.2f64.to_bits(), 3)]);
    }
}
