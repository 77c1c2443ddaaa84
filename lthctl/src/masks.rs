//! Ticket masks from the coordinator (`StreamMasks`), and what is computed from them.
//!
//! The stream names each layer's mask by job id only; [`job_labels`] gives the (metric, rate,
//! seed, level) of every job from `GetResults`, so the server sends nothing twice. Level 0 (the
//! dense network, one job per seed shared by every trial) is labelled `dense`.
//!
//! [`overlap`] intersects tickets: for two metrics at one level, the fraction of one ticket's kept
//! weights that the other keeps too (Vandersmissen & Oramas 2023 compare tickets this way).

use crate::client::Coordinator;
use crate::convert::metric_name;
use crate::results::metric_order;
use anyhow::Result;
use lth_proto::v1 as pb;
use std::collections::{BTreeMap, HashMap};

/// The coordinator predates `StreamMasks`. A typed cause, so callers that can do without masks
/// (the report's overlap plot) decide on it rather than on message text.
#[derive(Debug)]
pub struct MasksNotServed {
    pub url: String,
}

impl std::fmt::Display for MasksNotServed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the coordinator at {} does not serve masks (no StreamMasks): upgrade lth-coordinator to the version of this lthctl", self.url)
    }
}

impl std::error::Error for MasksNotServed {}

/// What a job's results belong to.
#[derive(Debug, Clone, PartialEq)]
pub struct JobLabel {
    /// The metric's sweep-file name, or `dense` for level 0.
    pub metric: String,
    /// The pruning rate; 0 for level 0.
    pub rate: f64,
    pub seed: u64,
    pub level: u32,
}

/// Every job of the results, labelled. A dense job serves several trials and is labelled once.
pub fn job_labels(rows: &[pb::ResultRow]) -> HashMap<i64, JobLabel> {
    rows.iter()
        .map(|r| {
            let label = if r.level == 0 {
                JobLabel { metric: "dense".into(), rate: 0.0, seed: r.seed, level: 0 }
            } else {
                JobLabel { metric: metric_name(r.metric), rate: r.rate, seed: r.seed, level: r.level }
            };
            (r.job_id, label)
        })
        .collect()
}

/// Opens the mask stream of a sweep (only `levels`, or every level when empty).
pub async fn open(coord: &Coordinator, sweep_id: i64, levels: &[u32]) -> Result<tonic::Streaming<pb::LayerMask>> {
    let mut c = coord.sweeps.clone();
    match c.stream_masks(pb::StreamMasksRequest { sweep_id, levels: levels.to_vec() }).await {
        Ok(r) => Ok(r.into_inner()),
        Err(s) if s.code() == tonic::Code::Unimplemented => Err(MasksNotServed { url: coord.url.clone() }.into()),
        Err(s) => Err(coord.explain(s, &format!("the masks of sweep {sweep_id}"))),
    }
}

/// One job's ticket: its layers' masks in network order.
#[derive(Debug, Clone, Default)]
pub struct Ticket {
    pub layers: Vec<pb::LayerMask>,
}

impl Ticket {
    pub fn kept(&self) -> u64 {
        self.layers.iter().map(|l| popcount(&l.mask_bits)).sum()
    }
    pub fn total(&self) -> u64 {
        self.layers.iter().map(|l| l.total).sum()
    }
}

pub fn popcount(bits: &[u8]) -> u64 {
    bits.iter().map(|b| b.count_ones() as u64).sum()
}

/// Weights kept by every ticket (layers matched by name; a layer missing from one ticket shares
/// nothing).
pub fn shared(tickets: &[&Ticket]) -> u64 {
    let Some((first, rest)) = tickets.split_first() else { return 0 };
    let mut n = 0;
    for layer in &first.layers {
        let others: Option<Vec<&pb::LayerMask>> = rest.iter().map(|t| t.layers.iter().find(|l| l.layer == layer.layer)).collect();
        let Some(others) = others else { continue };
        for (i, byte) in layer.mask_bits.iter().enumerate() {
            let mut b = *byte;
            for o in &others {
                b &= o.mask_bits.get(i).copied().unwrap_or(0);
            }
            n += b.count_ones() as u64;
        }
    }
    n
}

/// Reads a whole mask stream into tickets, keyed by job id. For the overlap plot (one level);
/// exports stream instead.
pub async fn collect(mut stream: tonic::Streaming<pb::LayerMask>, coord: &Coordinator, sweep_id: i64) -> Result<BTreeMap<i64, Ticket>> {
    let mut tickets: BTreeMap<i64, Ticket> = BTreeMap::new();
    while let Some(m) = stream.message().await.map_err(|s| coord.explain(s, &format!("the masks of sweep {sweep_id}")))? {
        tickets.entry(m.job_id).or_default().layers.push(m);
    }
    Ok(tickets)
}

/// Ticket overlap at one (rate, level): `fraction[a][b]` is the share of metric a's kept weights
/// that metric b keeps too, averaged over the seeds both have.
#[derive(Debug, Clone, PartialEq)]
pub struct Overlap {
    pub rate: f64,
    pub level: u32,
    /// Metrics in paper order.
    pub metrics: Vec<String>,
    pub fraction: Vec<Vec<f64>>,
    /// Kept / total weights (mean over seeds): the overlap two independent random tickets of this
    /// density would have.
    pub density: f64,
    /// Share of the kept weights that every metric's ticket keeps (mean over seeds), when there
    /// are three metrics or more.
    pub shared_by_all: Option<f64>,
    pub seeds: u32,
}

/// Overlap matrices, one per rate, from the tickets of one level.
pub fn overlap(tickets: &BTreeMap<i64, Ticket>, labels: &HashMap<i64, JobLabel>, level: u32) -> Vec<Overlap> {
    // rate → seed → metric → ticket
    type ByMetric<'a> = BTreeMap<(usize, String), &'a Ticket>;
    let mut by_rate: BTreeMap<u64, BTreeMap<u64, ByMetric<'_>>> = BTreeMap::new();
    for (job, ticket) in tickets {
        let Some(l) = labels.get(job) else { continue };
        if l.level != level || l.metric == "dense" {
            continue;
        }
        by_rate.entry(l.rate.to_bits()).or_default().entry(l.seed).or_default().insert(metric_order(&l.metric), ticket);
    }
    let mut out = Vec::new();
    for (rate_bits, seeds) in by_rate {
        let mut metrics: Vec<(usize, String)> = seeds.values().flat_map(|m| m.keys().cloned()).collect();
        metrics.sort();
        metrics.dedup();
        let n = metrics.len();
        let mut sums = vec![vec![(0.0, 0u32); n]; n];
        let (mut density, mut all, mut seeds_used) = (0.0, 0.0, 0u32);
        for by_metric in seeds.values() {
            for (i, a) in metrics.iter().enumerate() {
                for (j, b) in metrics.iter().enumerate() {
                    let (Some(ta), Some(tb)) = (by_metric.get(a), by_metric.get(b)) else { continue };
                    let kept = ta.kept();
                    if kept > 0 {
                        sums[i][j].0 += shared(&[ta, tb]) as f64 / kept as f64;
                        sums[i][j].1 += 1;
                    }
                }
            }
            let present: Vec<&Ticket> = by_metric.values().copied().collect();
            let kept: f64 = present.iter().map(|t| t.kept() as f64).sum::<f64>() / present.len() as f64;
            let total = present[0].total().max(1) as f64;
            density += kept / total;
            if kept > 0.0 {
                all += shared(&present) as f64 / kept;
            }
            seeds_used += 1;
        }
        let fraction = sums.iter().map(|row| row.iter().map(|(s, k)| if *k == 0 { f64::NAN } else { s / *k as f64 }).collect()).collect();
        out.push(Overlap {
            rate: f64::from_bits(rate_bits),
            level,
            metrics: metrics.into_iter().map(|(_, m)| m).collect(),
            fraction,
            density: density / seeds_used.max(1) as f64,
            shared_by_all: (n >= 3).then(|| all / seeds_used.max(1) as f64),
            seeds: seeds_used,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(layer: &str, bits: &[u8], total: u64) -> pb::LayerMask {
        pb::LayerMask { job_id: 0, layer: layer.into(), ordinal: 0, kept: popcount(bits), total, mask_bits: bits.to_vec() }
    }

    fn label(metric: &str, seed: u64, level: u32) -> JobLabel {
        JobLabel { metric: metric.into(), rate: 0.5, seed, level }
    }

    #[test]
    fn overlap_counts_shared_kept_weights_by_hand() {
        // Two layers of 8 weights each; every ticket keeps 8 of 16.
        //   magnitude: fc1 11110000 fc2 11110000
        //   l1:        fc1 11001100 fc2 11110000   shares 2 + 4 = 6 of 8 with magnitude
        //   l2:        fc1 00001111 fc2 00001111   shares 0 with magnitude, 2 with l1
        let mut tickets = BTreeMap::new();
        tickets.insert(1, Ticket { layers: vec![mask("fc1", &[0b1111_0000], 8), mask("fc2", &[0b1111_0000], 8)] });
        tickets.insert(2, Ticket { layers: vec![mask("fc1", &[0b1100_1100], 8), mask("fc2", &[0b1111_0000], 8)] });
        tickets.insert(3, Ticket { layers: vec![mask("fc1", &[0b0000_1111], 8), mask("fc2", &[0b0000_1111], 8)] });
        let labels: HashMap<i64, JobLabel> = [(1, label("magnitude", 1, 2)), (2, label("l1", 1, 2)), (3, label("l2", 1, 2))].into();
        let o = &overlap(&tickets, &labels, 2)[0];
        assert_eq!(o.metrics, ["magnitude", "l1", "l2"]);
        assert_eq!(o.fraction[0], [1.0, 6.0 / 8.0, 0.0]);
        assert_eq!(o.fraction[1], [6.0 / 8.0, 1.0, 2.0 / 8.0]);
        assert_eq!(o.fraction[2][2], 1.0);
        assert_eq!(o.density, 0.5);
        assert_eq!(o.shared_by_all, Some(0.0));
        assert_eq!(o.seeds, 1);
        // Another level has nothing.
        assert!(overlap(&tickets, &labels, 3).is_empty());
    }

    #[test]
    fn labels_name_dense_jobs_once() {
        let rows = vec![
            pb::ResultRow { metric: pb::ImportanceMetric::L2 as i32, rate: 0.2, seed: 4, level: 0, job_id: 7, result: None, ..Default::default() },
            pb::ResultRow { metric: pb::ImportanceMetric::L1 as i32, rate: 0.2, seed: 4, level: 0, job_id: 7, result: None, ..Default::default() },
            pb::ResultRow { metric: pb::ImportanceMetric::L1 as i32, rate: 0.2, seed: 4, level: 1, job_id: 9, result: None, ..Default::default() },
        ];
        let l = job_labels(&rows);
        assert_eq!(l[&7], JobLabel { metric: "dense".into(), rate: 0.0, seed: 4, level: 0 });
        assert_eq!(l[&9], JobLabel { metric: "l1".into(), rate: 0.2, seed: 4, level: 1 });
    }
}
