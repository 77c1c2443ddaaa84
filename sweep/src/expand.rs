//! Grid expansion and content hashes.
//!
//! A sweep becomes one trial per (metric, rate, seed) and a job per (trial, level); level 0 is one
//! dense job per seed, shared by that seed's trials. Controls are jobs of their own, children of
//! the level they control. Each job has a content hash over everything that determines its result,
//! so that an identical job already done (in any sweep) is reused.

use crate::model::ModelHashKey;
use crate::validate::{levels_to_reach, levels_to_reach_schedule};
use crate::{Control, DatasetSpec, ImportanceMetric, ModelSpec, PrunePolicy, Rate, Recipe, SweepSpec};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Version tag mixed into every hash: bump it when a job's meaning changes, so old results are not
/// reused for new semantics.
const HASH_VERSION: u32 = 1;

#[derive(Serialize)]
struct DenseKey<'a> {
    v: u32,
    kind: &'static str,
    model: ModelHashKey<'a>,
    dataset: &'a DatasetSpec,
    recipe: &'a Recipe,
    seed: u64,
}

#[derive(Serialize)]
struct LevelKey<'a> {
    v: u32,
    kind: &'static str,
    parent: &'a str,
    metric: ImportanceMetric,
    rate: f64,
    pruning: &'a PrunePolicy,
    level: u32,
    /// The job may train in a bundle (`bundle` on): its numbers then equal a solo run's only
    /// within float tolerance, so it is not reused for a solo request, nor a solo one for it.
    /// Absent when false, so unbundled hashes are those written before bundles existed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    bundled: bool,
}

#[derive(Serialize)]
struct ControlKey<'a> {
    v: u32,
    kind: &'static str,
    /// The controlled level's hash (which fixes the seed, the chain and the ticket's mask).
    ticket: &'a str,
    control: Control,
}

fn sha256_json<T: Serialize>(key: &T) -> String {
    // serde_json writes struct fields in declaration order and floats in shortest round-trip form,
    // so the text (and the digest) is canonical for a given value.
    let text = serde_json::to_vec(key).expect("hash keys serialise to JSON");
    hex::encode(Sha256::digest(&text))
}

/// The hash of a seed's dense job (level 0 and the rewind point θk).
pub fn dense_hash(model: &ModelSpec, dataset: &DatasetSpec, recipe: &Recipe, seed: u64) -> String {
    sha256_json(&DenseKey { v: HASH_VERSION, kind: "dense", model: model.into(), dataset, recipe, seed })
}

/// The hash of a pruning level: its parent's hash plus how this level prunes.
pub fn level_hash(parent_hash: &str, metric: ImportanceMetric, rate: f64, pruning: &PrunePolicy, level: u32) -> String {
    level_hash_with(parent_hash, metric, rate, pruning, level, false)
}

/// [`level_hash`] of a level that may train in a bundle (`bundled`; see [`SweepSpec::bundled`]).
pub fn level_hash_with(parent_hash: &str, metric: ImportanceMetric, rate: f64, pruning: &PrunePolicy, level: u32, bundled: bool) -> String {
    sha256_json(&LevelKey { v: HASH_VERSION, kind: "level", parent: parent_hash, metric, rate, pruning, level, bundled })
}

/// The hash of a control job: the ticket (level) it controls plus which control.
pub fn control_hash(ticket_hash: &str, control: Control) -> String {
    sha256_json(&ControlKey { v: HASH_VERSION, kind: "control", ticket: ticket_hash, control })
}

/// A seed's shared level-0 job.
#[derive(Debug, Clone, PartialEq)]
pub struct DensePlan {
    pub seed: u64,
    pub content_hash: String,
}

/// One pruning level of one trial.
#[derive(Debug, Clone, PartialEq)]
pub struct LevelPlan {
    pub level: u32,
    pub content_hash: String,
    /// The dense job's hash for level 1, else the previous level's.
    pub parent_hash: String,
    /// The fraction of the remaining weights this level prunes (the trial's rate, or its
    /// schedule's entry for this level).
    pub rate: f64,
}

/// A control job: trains a variant of one level's ticket (see [`Control`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ControlPlan {
    pub level: u32,
    pub control: Control,
    pub content_hash: String,
    /// The hash of the level it controls (the job whose mask it reads).
    pub parent_hash: String,
}

/// One (metric, rate, seed) chain.
#[derive(Debug, Clone, PartialEq)]
pub struct TrialPlan {
    pub metric: ImportanceMetric,
    /// The trial's rate (a schedule's first rate; see `schedule` and each level's `rate`).
    pub rate: f64,
    /// The per-level rates of a scheduled trial, as the sweep lists them.
    pub schedule: Option<Vec<f64>>,
    pub seed: u64,
    pub dense_hash: String,
    /// Levels 1..=L in order.
    pub levels: Vec<LevelPlan>,
    /// Controls, by level then in the sweep's `controls` order; the store creates them as
    /// children of the level they control.
    pub controls: Vec<ControlPlan>,
}

/// The expanded grid of a sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepPlan {
    pub dense: Vec<DensePlan>,
    pub trials: Vec<TrialPlan>,
}

impl SweepPlan {
    pub fn level_jobs(&self) -> usize {
        self.trials.iter().map(|t| t.levels.len()).sum()
    }
    pub fn control_jobs(&self) -> usize {
        self.trials.iter().map(|t| t.controls.len()).sum()
    }
    /// Every job the store creates: dense, level and control jobs.
    pub fn total_jobs(&self) -> usize {
        self.dense.len() + self.level_jobs() + self.control_jobs()
    }
}

impl SweepSpec {
    /// Pruning levels (after level 0) run at a constant `rate`: `levels`, or enough to reach
    /// `target_sparsity`.
    pub fn levels_for_rate(&self, rate: f64) -> u32 {
        self.levels_for(&Rate::Constant(rate))
    }

    /// Pruning levels (after level 0) of a trial at `rate`: `levels`; or enough to reach
    /// `target_sparsity`; or, with neither, as many as the schedule lists.
    pub fn levels_for(&self, rate: &Rate) -> u32 {
        match (self.levels, self.target_sparsity, rate) {
            (Some(l), _, _) => l,
            (None, Some(t), Rate::Constant(r)) => levels_to_reach(t, *r) as u32,
            (None, Some(t), Rate::Schedule(v)) => levels_to_reach_schedule(t, v) as u32,
            (None, None, Rate::Schedule(v)) => v.len() as u32,
            (None, None, Rate::Constant(_)) => 0,
        }
    }

    /// Sparsity after `level` levels at `rate` (the fraction of prunable weights removed), before
    /// any minimum-keep guard.
    pub fn nominal_sparsity(rate: f64, level: u32) -> f64 {
        1.0 - (1.0 - rate).powi(level as i32)
    }

    /// The content hash of `seed`'s dense job.
    pub fn dense_hash(&self, seed: u64) -> String {
        dense_hash(&self.model, &self.dataset, &self.recipe, seed)
    }

    /// Expands the grid (call on a validated spec). Trials are ordered by metric, rate (as listed),
    /// then seed.
    /// How many jobs [`SweepSpec::expand`] creates (dense, level and control jobs), counted
    /// without computing a single hash, so a submit can refuse a huge grid before building it.
    pub fn job_count(&self) -> u64 {
        let seeds = self.seeds.len() as u64;
        let mut per_seed: u64 = 0;
        for rate in &self.rates {
            let n = self.levels_for(rate);
            let controlled = self.control_levels.iter().filter(|&&cl| cl >= 1 && cl <= n).count() as u64;
            let jobs = (n as u64).saturating_add(controlled.saturating_mul(self.controls.len() as u64));
            per_seed = per_seed.saturating_add(jobs.saturating_mul(self.metrics.len() as u64));
        }
        seeds.saturating_add(per_seed.saturating_mul(seeds))
    }

    pub fn expand(&self) -> SweepPlan {
        let dense: Vec<DensePlan> =
            self.seeds.iter().map(|&seed| DensePlan { seed, content_hash: self.dense_hash(seed) }).collect();
        let mut trials = Vec::with_capacity(self.metrics.len() * self.rates.len() * self.seeds.len());
        let bundled = self.bundled();
        for &metric in &self.metrics {
            for rate in &self.rates {
                for d in &dense {
                    let mut parent = d.content_hash.clone();
                    let n = self.levels_for(rate);
                    let mut levels = Vec::with_capacity(n as usize);
                    for level in 1..=n {
                        let r = rate.at_level(level);
                        let h = level_hash_with(&parent, metric, r, &self.pruning, level, bundled);
                        levels.push(LevelPlan { level, content_hash: h.clone(), parent_hash: parent, rate: r });
                        parent = h;
                    }
                    let mut control_levels = self.control_levels.clone();
                    control_levels.sort_unstable();
                    let controls = control_levels
                        .iter()
                        .filter_map(|&cl| cl.checked_sub(1).and_then(|i| levels.get(i as usize)))
                        .flat_map(|l| {
                            self.controls.iter().map(move |&control| ControlPlan {
                                level: l.level,
                                control,
                                content_hash: control_hash(&l.content_hash, control),
                                parent_hash: l.content_hash.clone(),
                            })
                        })
                        .collect();
                    trials.push(TrialPlan {
                        metric,
                        rate: rate.first(),
                        schedule: rate.schedule().map(|s| s.to_vec()),
                        seed: d.seed,
                        dense_hash: d.content_hash.clone(),
                        levels,
                        controls,
                    });
                }
            }
        }
        SweepPlan { dense, trials }
    }
}

/// The grid-size rule: a sweep of `jobs` jobs is accepted under a cap of `max_jobs`. Says why
/// not, and what to do, for the error message.
pub fn check_grid_size(jobs: u64, max_jobs: u64) -> Result<(), String> {
    if jobs <= max_jobs {
        return Ok(());
    }
    Err(format!(
        "the sweep expands to {jobs} jobs, more than this coordinator accepts in one sweep ({max_jobs}, --max-jobs-per-sweep): \
         split it into several sweeps (fewer metrics, rates, seeds or levels each; finished jobs are shared between them), \
         or raise the limit"
    ))
}

#[cfg(test)]
mod count_tests {
    use super::*;

    #[test]
    fn job_count_is_what_expand_creates() {
        let mut s: SweepSpec = toml::from_str(
            r#"
name = "count"
model = "lenet300100"
dataset = { name = "digits" }
metrics = ["magnitude", "l1", "random"]
rates = [0.2, 0.5, [0.5, 0.3]]
seeds = [0, 1]
levels = 4
controls = ["reinit", "random_mask"]
control_levels = [1, 3, 9]
[recipe]
length = "1ep"
batch_size = 64
lr = 0.05
"#,
        )
        .unwrap();
        assert_eq!(s.job_count(), s.expand().total_jobs() as u64);
        s.levels = None;
        s.target_sparsity = Some(0.9);
        assert_eq!(s.job_count(), s.expand().total_jobs() as u64);
        assert!(check_grid_size(100_000, 100_000).is_ok());
        assert!(check_grid_size(100_001, 100_000).unwrap_err().contains("100001 jobs"));
    }
}
