//! Ticket bundles at the sweep level: which level jobs a worker may train together as one grouped
//! network (issue 10, item 3; the engine half is `worker/src/engine/bundle.rs`).
//!
//! `bundle = "metrics"` bundles the metrics of one (seed, rate) at one level; `"metrics+rates"`
//! also its rates; `max_bundle = K` caps a bundle's size (default [`DEFAULT_MAX_BUNDLE`]). The
//! members of a bundle share (seed, model, dataset, recipe, rewind point) and become ready
//! together (their parents are the previous level of the same bundle), so a worker claims them at
//! once. Dense jobs (one per seed) and controls (children of one ticket each, ready one by one)
//! are never bundled.
//!
//! The grouping is a pure function of the spec and the plan ([`SweepSpec::bundle_groups`]), so a
//! submit forms the same bundles every time; the store numbers them and records them on the jobs.

use crate::{ModelSpec, SweepPlan, SweepSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The bundle size when `bundle` is on and `max_bundle` is unset.
pub const DEFAULT_MAX_BUNDLE: u32 = 8;
/// The largest `max_bundle` accepted: beyond it a grouped network's activations outgrow what any
/// bundle gains (HFTA's gains flatten well before).
pub const MAX_BUNDLE_LIMIT: u32 = 64;

/// Which level jobs train together (`bundle = "off" | "metrics" | "metrics+rates"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BundleMode {
    /// Every job runs alone (the default; job hashes are those of sweeps written before bundles).
    #[default]
    Off,
    /// The metrics of one (seed, rate) at one level.
    Metrics,
    /// The metrics and rates of one seed at one level.
    MetricsRates,
}

impl BundleMode {
    pub const ALL: [BundleMode; 3] = [Self::Off, Self::Metrics, Self::MetricsRates];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Metrics => "metrics",
            Self::MetricsRates => "metrics+rates",
        }
    }

    pub fn is_off(&self) -> bool {
        *self == Self::Off
    }

    /// The sweep file's (and the wire's) name; "" is off (the wire's unset).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().replace(['_', ' '], "").as_str() {
            "" | "off" | "none" | "false" => Ok(Self::Off),
            "metrics" => Ok(Self::Metrics),
            "metrics+rates" | "metricsrates" | "metrics,rates" => Ok(Self::MetricsRates),
            _ => Err(format!(
                "unknown bundle setting {s:?}: write bundle = \"off\", \"metrics\" (the metrics of one seed and rate at one level train together) or \"metrics+rates\" (also the rates)"
            )),
        }
    }
}

impl fmt::Display for BundleMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for BundleMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Parsed with [`BundleMode::parse`] so that a typo names the settings; `bundle = false` is off.
impl<'de> Deserialize<'de> for BundleMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum B {
            S(String),
            B(bool),
        }
        match B::deserialize(d)? {
            B::S(s) => BundleMode::parse(&s).map_err(serde::de::Error::custom),
            B::B(false) => Ok(BundleMode::Off),
            B::B(true) => Err(serde::de::Error::custom(
                "bundle = true is ambiguous: write bundle = \"metrics\" or \"metrics+rates\"",
            )),
        }
    }
}

/// Whether a model can be trained as a bundle: the built-in networks; a TorchScript module's
/// graph cannot be grouped. (The worker's `engine::bundle::bundleable` says the same from tch.)
pub fn bundleable(model: &ModelSpec) -> bool {
    matches!(model, ModelSpec::Builtin(_))
}

impl SweepSpec {
    /// The bundle size cap in effect (`max_bundle`, or the default when bundles are on).
    pub fn max_bundle_or_default(&self) -> u32 {
        self.max_bundle.unwrap_or(DEFAULT_MAX_BUNDLE)
    }

    /// Whether this sweep's level jobs are bundled (and so hash as bundled: see
    /// [`crate::level_hash_with`]).
    pub fn bundled(&self) -> bool {
        !self.bundle.is_off() && bundleable(&self.model)
    }

    /// The bundles of a plan, deterministic: each a list of (trial index in `plan.trials`, level),
    /// at least two members, at most `max_bundle`. Grouped by (seed, level), and by the rate too
    /// for `"metrics"`; members in the plan's trial order (metric, rate, seed); groups in (seed,
    /// rate, level) order, then chunked. `runnable(content_hash)` says which jobs will run (a job
    /// reused from an earlier result never runs, so it is left out before chunking).
    pub fn bundle_groups(&self, plan: &SweepPlan, runnable: impl Fn(&str) -> bool) -> Vec<Vec<(usize, u32)>> {
        if !self.bundled() {
            return Vec::new();
        }
        let k = self.max_bundle_or_default().max(2) as usize;
        // Trials come in (metric, rate, seed) order (`expand`); the rate's position in
        // `self.rates` keys the "metrics" grouping (two rates may share a first value).
        let (rates, seeds) = (self.rates.len(), self.seeds.len());
        let mut groups: BTreeMap<(usize, usize, u32), Vec<(usize, u32)>> = BTreeMap::new();
        for (ti, t) in plan.trials.iter().enumerate() {
            let rate_idx = if rates * seeds > 0 { (ti / seeds) % rates } else { 0 };
            let seed_idx = if seeds > 0 { ti % seeds } else { 0 };
            let rate_key = match self.bundle {
                BundleMode::Metrics => rate_idx,
                _ => 0,
            };
            for l in &t.levels {
                if runnable(&l.content_hash) {
                    groups.entry((seed_idx, rate_key, l.level)).or_default().push((ti, l.level));
                }
            }
        }
        groups.into_values().flat_map(|g| g.chunks(k).filter(|c| c.len() >= 2).map(<[_]>::to_vec).collect::<Vec<_>>()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toml(extra: &str) -> String {
        format!(
            r#"
name = "b"
model = "lenet300100"
dataset = {{ name = "digits" }}
metrics = ["magnitude", "l1", "l2"]
rates = [0.2, 0.5]
seeds = [0, 1]
levels = 2
{extra}
[recipe]
length = "1ep"
lr = 0.05
"#
        )
    }

    fn spec(extra: &str) -> SweepSpec {
        SweepSpec::from_toml_str(&toml(extra)).unwrap()
    }

    #[test]
    fn groups_are_metrics_of_one_seed_rate_and_level() {
        let s = spec("bundle = \"metrics\"");
        let plan = s.expand();
        let g = s.bundle_groups(&plan, |_| true);
        // 2 seeds × 2 rates × 2 levels, each the 3 metrics.
        assert_eq!(g.len(), 8);
        for b in &g {
            assert_eq!(b.len(), 3);
            let t0 = &plan.trials[b[0].0];
            for &(ti, level) in b {
                let t = &plan.trials[ti];
                assert_eq!((t.seed, t.rate, level), (t0.seed, t0.rate, b[0].1));
            }
            let metrics: Vec<_> = b.iter().map(|&(ti, _)| plan.trials[ti].metric).collect();
            assert_eq!(metrics, s.metrics, "members in the sweep's metric order");
        }
        assert_eq!(g, s.bundle_groups(&s.expand(), |_| true), "deterministic");
    }

    #[test]
    fn metrics_and_rates_chunked_by_max_bundle_reused_left_out() {
        let s = spec("bundle = \"metrics+rates\"\nmax_bundle = 4");
        let plan = s.expand();
        let g = s.bundle_groups(&plan, |_| true);
        // Per (seed, level) 6 jobs → chunks of 4 and 2.
        assert_eq!(g.iter().map(Vec::len).collect::<Vec<_>>(), vec![4, 2, 4, 2, 4, 2, 4, 2]);
        // Reused jobs never run: leaving five of six out leaves no bundle there.
        let skip: Vec<String> =
            plan.trials.iter().filter(|t| t.seed == 0).skip(1).map(|t| t.levels[0].content_hash.clone()).collect();
        let g2 = s.bundle_groups(&plan, |h| !skip.iter().any(|x| x == h));
        assert_eq!(g2.len(), 6, "the (seed 0, level 1) group, 4 + 2 before, is gone");
    }

    #[test]
    fn bundled_level_jobs_hash_apart_and_off_hashes_as_before() {
        let off = spec("");
        let on = spec("bundle = \"metrics\"");
        let (a, b) = (off.expand(), on.expand());
        assert_eq!(a.dense, b.dense, "dense jobs are shared");
        for (ta, tb) in a.trials.iter().zip(&b.trials) {
            for (la, lb) in ta.levels.iter().zip(&tb.levels) {
                assert_ne!(la.content_hash, lb.content_hash);
                // Off: exactly the hash of a sweep written before bundles (golden values in
                // tests/spec.rs pin `level_hash` itself).
                assert_eq!(la.content_hash, crate::level_hash(&la.parent_hash, ta.metric, la.rate, &off.pruning, la.level));
            }
        }
        // Every bundle setting hashes the same: the result is "trained in some bundle".
        let wide = spec("bundle = \"metrics+rates\"\nmax_bundle = 2");
        assert_eq!(wide.expand().trials, b.trials);
    }

    #[test]
    fn off_or_torchscript_forms_none_and_settings_parse() {
        assert!(spec("").bundle_groups(&spec("").expand(), |_| true).is_empty());
        assert_eq!(BundleMode::parse("Metrics+Rates").unwrap(), BundleMode::MetricsRates);
        assert!(BundleMode::parse("seeds").unwrap_err().contains("metrics+rates"));
        let e = SweepSpec::from_toml_str(&toml("bundle = true")).unwrap_err();
        assert!(e.to_string().contains("ambiguous"), "{e}");
        let e = SweepSpec::from_toml_str(&toml("max_bundle = 4")).unwrap_err();
        assert!(e.to_string().contains("bundle = \"metrics\""), "{e}");
        let e = SweepSpec::from_toml_str(&toml("bundle = \"metrics\"\nmax_bundle = 1")).unwrap_err();
        assert!(e.to_string().contains("at least 2"), "{e}");
        // Written back only when on, so an unbundled spec's stored text is as before.
        assert!(!spec("").to_toml_string().contains("bundle"));
        let on = spec("bundle = \"metrics+rates\"\nmax_bundle = 3");
        assert_eq!(SweepSpec::from_toml_str(&on.to_toml_string()).unwrap(), on);
    }
}
