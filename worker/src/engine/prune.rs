//! Layerwise importance metrics, the global threshold, and masks as compact bitsets.
//!
//! Pruning runs on the host over f64 copies of the weights: it happens once per level, it must be
//! exactly reproducible (ties broken by position, never by a parallel sort), and tests must be able
//! to compare it with hand-computed values.
//!
//! Policy (documented for users and the database):
//! - Scores are computed per layer on |w| of that layer's *unpruned* weights only; pruned weights
//!   stay pruned and take no part in any sum, min or max.
//! - The number removed at a level is `round(rate × remaining)` over all prunable weights
//!   (`f64::round`, halves away from zero). `uniform_magnitude` instead removes
//!   `round(rate × remaining_in_layer)` from every layer.
//! - The global cut keeps the weights with the highest scores: candidates are ordered by
//!   (score, layer position in name order, flat index) and the first `count` are pruned, so ties
//!   at the threshold fall deterministically on earlier layers and lower indices.
//! - `min_keep_fraction` f: a layer never drops below `ceil(f × layer_size)` kept weights; weights
//!   the floor protects are skipped and the cut continues with the next candidates, so the level
//!   still removes `count` weights when the other layers can supply them.
//! - Degenerate layers: min-max with max == min scores every weight 1; L1/L2 with a zero sum score
//!   every weight 0.

use super::rng::Rng;
use anyhow::{bail, Result};
use lth_sweep::ImportanceMetric;

/// One prunable layer's keep-mask as bits, row-major, MSB first in each byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerMask {
    pub name: String,
    pub shape: Vec<i64>,
    pub bits: Vec<u8>,
    pub total: u64,
    pub kept: u64,
}

impl LayerMask {
    pub fn ones(name: &str, shape: &[i64]) -> Self {
        let total: u64 = shape.iter().product::<i64>() as u64;
        Self::from_bools(name, shape, &vec![true; total as usize])
    }

    pub fn from_bools(name: &str, shape: &[i64], keep: &[bool]) -> Self {
        let mut bits = vec![0u8; keep.len().div_ceil(8)];
        let mut kept = 0;
        for (i, &k) in keep.iter().enumerate() {
            if k {
                bits[i / 8] |= 0x80 >> (i % 8);
                kept += 1;
            }
        }
        LayerMask { name: name.to_string(), shape: shape.to_vec(), bits, total: keep.len() as u64, kept }
    }

    pub fn get(&self, i: usize) -> bool {
        self.bits[i / 8] & (0x80 >> (i % 8)) != 0
    }

    pub fn to_bools(&self) -> Vec<bool> {
        (0..self.total as usize).map(|i| self.get(i)).collect()
    }

    /// Units whose every connection is pruned. A weight of shape [out, in, k...] (linear: [out, in];
    /// conv: [out, in, kh, kw]) has `out` output units (neurons, filters), each dead when its whole
    /// fan-in (in × k... weights) is pruned, and `in` inputs, each dead when no kept weight reads it
    /// (for every output and kernel position). A 1-D parameter counts its entries as outputs with
    /// no inputs; a scalar has neither.
    pub fn units(&self) -> UnitCounts {
        let dims: Vec<usize> = self.shape.iter().map(|&d| d.max(0) as usize).collect();
        let (outs, ins, k) = match dims.len() {
            0 => return UnitCounts::default(),
            1 => (dims[0], 0, 0),
            _ => (dims[0], dims[1], dims[2..].iter().product::<usize>()),
        };
        if ins == 0 {
            let dead = (0..outs).filter(|&o| !self.get(o)).count() as u64;
            return UnitCounts { outputs: outs as u64, dead_outputs: dead, inputs: 0, dead_inputs: 0 };
        }
        let mut input_alive = vec![false; ins];
        let mut dead_outputs = 0u64;
        for o in 0..outs {
            let mut alive = false;
            for (i, seen) in input_alive.iter_mut().enumerate() {
                let base = (o * ins + i) * k;
                if (base..base + k).any(|x| self.get(x)) {
                    alive = true;
                    *seen = true;
                }
            }
            dead_outputs += u64::from(!alive);
        }
        let dead_inputs = input_alive.iter().filter(|a| !**a).count() as u64;
        UnitCounts { outputs: outs as u64, dead_outputs, inputs: ins as u64, dead_inputs }
    }

    /// 0/1 bytes, one per weight (the form stored in safetensors files).
    pub fn to_bytes(&self) -> Vec<u8> {
        (0..self.total as usize).map(|i| self.get(i) as u8).collect()
    }
}

/// Dead units of one layer's mask (see [`LayerMask::units`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnitCounts {
    pub outputs: u64,
    pub dead_outputs: u64,
    pub inputs: u64,
    pub dead_inputs: u64,
}

/// A layer as the pruner sees it.
pub struct LayerWeights<'a> {
    pub name: &'a str,
    pub weights: &'a [f64],
    pub mask: &'a LayerMask,
}

/// Importance scores of one layer; `None` for weights already pruned.
pub fn layer_scores(metric: ImportanceMetric, w: &[f64], mask: &LayerMask, rng: &mut Rng) -> Vec<Option<f64>> {
    let alive: Vec<usize> = (0..w.len()).filter(|&i| mask.get(i)).collect();
    let a = |i: usize| w[i].abs();
    let mut s = vec![None; w.len()];
    if alive.is_empty() {
        return s;
    }
    match metric {
        ImportanceMetric::Magnitude | ImportanceMetric::UniformMagnitude => {
            for &i in &alive {
                s[i] = Some(a(i));
            }
        }
        ImportanceMetric::L1 => {
            let sum: f64 = alive.iter().map(|&i| a(i)).sum();
            for &i in &alive {
                s[i] = Some(if sum > 0.0 { a(i) / sum } else { 0.0 });
            }
        }
        ImportanceMetric::L2 => {
            let sum: f64 = alive.iter().map(|&i| a(i) * a(i)).sum();
            for &i in &alive {
                s[i] = Some(if sum > 0.0 { a(i) * a(i) / sum } else { 0.0 });
            }
        }
        ImportanceMetric::Softmax => {
            // exp(|w| - max) / Σ exp(|w| - max): the same value, without overflow.
            let max = alive.iter().map(|&i| a(i)).fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = alive.iter().map(|&i| (a(i) - max).exp()).sum();
            for &i in &alive {
                s[i] = Some((a(i) - max).exp() / sum);
            }
        }
        ImportanceMetric::MinMax => {
            let max = alive.iter().map(|&i| a(i)).fold(f64::NEG_INFINITY, f64::max);
            let min = alive.iter().map(|&i| a(i)).fold(f64::INFINITY, f64::min);
            for &i in &alive {
                s[i] = Some(if max > min { (a(i) - min) / (max - min) } else { 1.0 });
            }
        }
        ImportanceMetric::Random => {
            for &i in &alive {
                s[i] = Some(rng.next_f64());
            }
        }
        ImportanceMetric::Lamp => {
            // w_u² / Σ_{|w_v| ≥ |w_u|} w_v²: sort descending by |w|, suffix sums with ties sharing
            // the sum over every weight at least as large.
            let mut order = alive.clone();
            order.sort_by(|&x, &y| a(y).total_cmp(&a(x)).then(x.cmp(&y)));
            let mut j = 0;
            let mut running = 0.0;
            while j < order.len() {
                let v = a(order[j]);
                let mut k = j;
                while k < order.len() && a(order[k]) == v {
                    running += v * v;
                    k += 1;
                }
                for &i in &order[j..k] {
                    s[i] = Some(if running > 0.0 { v * v / running } else { 0.0 });
                }
                j = k;
            }
        }
    }
    s
}

/// Prunes `rate` of the remaining weights of `layers` by `metric`, returning the new masks.
pub fn prune(layers: &[LayerWeights], metric: ImportanceMetric, rate: f64, min_keep_fraction: f64, seed: u64, level: u32) -> Result<Vec<LayerMask>> {
    if !(0.0..1.0).contains(&rate) {
        bail!("pruning rate {rate} must be in [0, 1): the fraction of remaining weights removed per level");
    }
    if !(0.0..=1.0).contains(&min_keep_fraction) {
        bail!("min_keep_fraction {min_keep_fraction} must be in [0, 1]");
    }
    for l in layers {
        if l.weights.len() as u64 != l.mask.total {
            bail!("layer {}: {} weights but a mask of {}", l.name, l.weights.len(), l.mask.total);
        }
    }
    let mut keep: Vec<Vec<bool>> = layers.iter().map(|l| l.mask.to_bools()).collect();
    let mut kept: Vec<u64> = layers.iter().map(|l| l.mask.kept).collect();
    let floor: Vec<u64> = layers.iter().map(|l| (min_keep_fraction * l.mask.total as f64).ceil() as u64).collect();
    let mut rng = Rng::derive(seed, "random_metric", level as u64);
    let scores: Vec<Vec<Option<f64>>> = layers.iter().map(|l| layer_scores(metric, l.weights, l.mask, &mut rng)).collect();

    let cut = |cands: &mut Vec<(f64, usize, usize)>, count: u64, keep: &mut Vec<Vec<bool>>, kept: &mut Vec<u64>| {
        cands.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
        let mut removed = 0;
        for &(_, l, i) in cands.iter() {
            if removed == count {
                break;
            }
            if kept[l] <= floor[l] {
                continue;
            }
            keep[l][i] = false;
            kept[l] -= 1;
            removed += 1;
        }
    };

    if metric == ImportanceMetric::UniformMagnitude {
        for l in 0..layers.len() {
            let count = (rate * kept[l] as f64).round() as u64;
            let mut cands: Vec<(f64, usize, usize)> = scores[l].iter().enumerate().filter_map(|(i, s)| s.map(|s| (s, l, i))).collect();
            cut(&mut cands, count, &mut keep, &mut kept);
        }
    } else {
        let remaining: u64 = kept.iter().sum();
        let count = (rate * remaining as f64).round() as u64;
        let mut cands: Vec<(f64, usize, usize)> = scores
            .iter()
            .enumerate()
            .flat_map(|(l, s)| s.iter().enumerate().filter_map(move |(i, s)| s.map(|s| (s, l, i))))
            .collect();
        cut(&mut cands, count, &mut keep, &mut kept);
    }
    Ok(layers.iter().zip(keep).map(|(l, k)| LayerMask::from_bools(l.name, &l.mask.shape, &k)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask_of(keep: &[bool]) -> LayerMask {
        LayerMask::from_bools("l", &[keep.len() as i64], keep)
    }

    #[test]
    fn bitset_is_msb_first() {
        let m = mask_of(&[true, false, false, false, false, false, false, true, true]);
        assert_eq!(m.bits, vec![0b1000_0001, 0b1000_0000]);
        assert_eq!((m.kept, m.total), (3, 9));
        assert!(m.get(8) && !m.get(1));
    }

    #[test]
    fn dead_units_of_a_linear_mask_counted_by_hand() {
        // 3 outputs × 4 inputs, kept: (0, 0) and (2, 1). Row 1 is all pruned (a dead output);
        // columns 2 and 3 are pruned in every row (dead inputs).
        #[rustfmt::skip]
        let keep = [
            true,  false, false, false,
            false, false, false, false,
            false, true,  false, false,
        ];
        let u = LayerMask::from_bools("fc.weight", &[3, 4], &keep).units();
        assert_eq!(u, UnitCounts { outputs: 3, dead_outputs: 1, inputs: 4, dead_inputs: 2 });
        assert_eq!(LayerMask::ones("fc.weight", &[3, 4]).units(), UnitCounts { outputs: 3, dead_outputs: 0, inputs: 4, dead_inputs: 0 });
        let none = LayerMask::from_bools("fc.weight", &[3, 4], &[false; 12]).units();
        assert_eq!(none, UnitCounts { outputs: 3, dead_outputs: 3, inputs: 4, dead_inputs: 4 });
    }

    #[test]
    fn dead_units_of_a_conv_mask_counted_by_hand() {
        // 3 filters × 2 input channels × 2×2 kernels (8 weights per filter). Filter 0 keeps one
        // weight of channel 1; filter 1 keeps nothing; filter 2 keeps one weight of channel 1.
        // Channel 0 is read by no kept weight.
        let mut keep = vec![false; 3 * 2 * 4];
        keep[4 + 3] = true; // filter 0, channel 1, kernel position (1, 1)
        keep[2 * 8 + 4] = true; // filter 2, channel 1, kernel position (0, 0)
        let u = LayerMask::from_bools("conv.weight", &[3, 2, 2, 2], &keep).units();
        assert_eq!(u, UnitCounts { outputs: 3, dead_outputs: 1, inputs: 2, dead_inputs: 1 });
        // A 1-D parameter: its entries are outputs.
        assert_eq!(LayerMask::from_bools("bn.weight", &[3], &[true, false, false]).units(), UnitCounts { outputs: 3, dead_outputs: 2, inputs: 0, dead_inputs: 0 });
    }
}
