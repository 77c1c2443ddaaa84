//! Validation of a sweep spec and parsing of sweep files.
//!
//! Exists so that every component rejects the same bad input the same way, before any job is
//! created, and so that a user sees *every* problem in a sweep file at once (not one per submit).

use crate::{DatasetKind, ImportanceMetric, LrSchedule, SweepSpec, TrainLength};
use std::collections::HashSet;
use std::fmt;
use std::path::Path;

/// Every problem found in one spec, each phrased as what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationErrors(pub Vec<String>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "the sweep spec has {n} problem{}:", if n == 1 { "" } else { "s" })?;
        for e in &self.0 {
            write!(f, "\n  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

/// Why a sweep file could not be turned into a valid spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read sweep file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// The TOML error's text names the line and column and shows the offending line.
    #[error("sweep file is not a valid sweep spec: {0}")]
    Toml(#[from] toml::de::Error),
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
}

/// The most levels one trial may have; deeper chains are almost surely a typo (and each level is a
/// full training run).
pub const MAX_LEVELS: u32 = 200;

impl SweepSpec {
    /// Parses a sweep file's text and validates it. Syntax and type errors carry the line and
    /// column; semantic problems are all listed together.
    pub fn from_toml_str(text: &str) -> Result<SweepSpec, SpecError> {
        let spec: SweepSpec = toml::from_str(text)?;
        spec.validate()?;
        Ok(spec)
    }

    /// Reads, parses and validates a sweep file.
    pub fn from_toml_file(path: &Path) -> Result<SweepSpec, SpecError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| SpecError::Io { path: path.display().to_string(), source })?;
        Self::from_toml_str(&text)
    }

    /// The sweep file's text for this spec (round-trips through [`SweepSpec::from_toml_str`]).
    pub fn to_toml_string(&self) -> String {
        toml::to_string_pretty(self).expect("a SweepSpec always serialises to TOML")
    }

    /// Checks every rule and reports all violations at once.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errs = Vec::new();
        if self.name.trim().is_empty() {
            errs.push("`name` is empty: give the sweep a short name, e.g. name = \"resnet20-cifar10\"".into());
        }

        // Grid.
        if self.metrics.is_empty() {
            errs.push(format!(
                "`metrics` is empty: list at least one of {}",
                ImportanceMetric::ALL.map(|m| m.as_str()).join(", ")
            ));
        }
        let mut seen = HashSet::new();
        for m in &self.metrics {
            if !seen.insert(*m) {
                errs.push(format!("`metrics` lists {m} twice: list each metric once"));
            }
        }
        if self.rates.is_empty() {
            errs.push("`rates` is empty: list at least one pruning rate in (0, 1), e.g. rates = [0.2]".into());
        }
        let mut seen_rates: Vec<f64> = Vec::new();
        for &r in &self.rates {
            if !(r.is_finite() && r > 0.0 && r < 1.0) {
                errs.push(format!(
                    "rate {r} is outside (0, 1): a rate is the fraction of the remaining weights pruned per level, e.g. 0.2"
                ));
            } else if seen_rates.contains(&r) {
                errs.push(format!("`rates` lists {r} twice: list each rate once"));
            }
            seen_rates.push(r);
        }
        if self.seeds.is_empty() {
            errs.push("`seeds` is empty: list at least one seed, e.g. seeds = [0, 1, 2]".into());
        }
        let mut seen_seeds = HashSet::new();
        for s in &self.seeds {
            if !seen_seeds.insert(*s) {
                errs.push(format!("`seeds` lists {s} twice: list each seed once"));
            }
        }
        if self.seeds.iter().any(|&s| s > i64::MAX as u64) {
            errs.push(format!("a seed is larger than {}: use smaller seeds", i64::MAX));
        }

        // Depth: exactly one of `levels` and `target_sparsity`.
        match (self.levels, self.target_sparsity) {
            (Some(_), Some(_)) => errs.push(
                "both `levels` and `target_sparsity` are set: keep exactly one of them".into(),
            ),
            (None, None) => errs.push(
                "neither `levels` nor `target_sparsity` is set: add e.g. levels = 10 or target_sparsity = 0.9".into(),
            ),
            (Some(l), None) => {
                if l == 0 || l > MAX_LEVELS {
                    errs.push(format!("levels = {l} is outside 1..={MAX_LEVELS}: set the number of pruning levels after the dense level 0"));
                }
            }
            (None, Some(t)) => {
                if !(t.is_finite() && t > 0.0 && t < 1.0) {
                    errs.push(format!("target_sparsity = {t} is outside (0, 1): it is the fraction of prunable weights removed, e.g. 0.9"));
                } else {
                    for &r in self.rates.iter().filter(|r| r.is_finite() && **r > 0.0 && **r < 1.0) {
                        let l = levels_to_reach(t, r);
                        if l > MAX_LEVELS as u64 {
                            errs.push(format!("rate {r} needs {l} levels to reach target_sparsity {t} (more than {MAX_LEVELS}): raise the rate or lower the target"));
                        }
                    }
                }
            }
        }

        // Data.
        let path_missing = self.dataset.path.as_deref().map(|p| p.trim().is_empty()).unwrap_or(true);
        if self.dataset.name != DatasetKind::Digits && path_missing {
            errs.push(format!(
                "dataset.path is missing for {}: set it to the dataset's directory on the workers, e.g. path = \"/data/{}\" (only the bundled `digits` needs no path)",
                self.dataset.name.as_str(),
                self.dataset.name.as_str()
            ));
        }

        // Recipe.
        let r = &self.recipe;
        if r.length.is_zero() {
            errs.push("recipe.length is zero: set the training length per level, e.g. length = \"160ep\"".into());
        }
        if r.batch_size == 0 {
            errs.push("recipe.batch_size is 0: use a positive batch size, e.g. 128".into());
        }
        if !(r.lr.is_finite() && r.lr > 0.0) {
            errs.push(format!("recipe.lr = {} is not a positive number: set the peak learning rate, e.g. 0.1", r.lr));
        }
        if !(r.weight_decay.is_finite() && r.weight_decay >= 0.0) {
            errs.push(format!("recipe.weight_decay = {} must be >= 0", r.weight_decay));
        }
        if !(r.momentum.is_finite() && (0.0..1.0).contains(&r.momentum)) {
            errs.push(format!("recipe.momentum = {} is outside [0, 1): e.g. 0.9", r.momentum));
        }
        for (what, v) in [("warmup", r.warmup), ("rewind", r.rewind)] {
            if exceeds(v, r.length) {
                errs.push(format!("recipe.{what} = {v} is beyond recipe.length = {}: it must lie within training", r.length));
            }
        }
        if let LrSchedule::Step { milestones, gamma } = &r.schedule {
            if !(gamma.is_finite() && *gamma > 0.0) {
                errs.push(format!("recipe.schedule.gamma = {gamma} must be a positive factor, e.g. 0.1"));
            }
            for m in milestones {
                if exceeds(*m, r.length) {
                    errs.push(format!("recipe.schedule milestone {m} is beyond recipe.length = {}", r.length));
                }
            }
        }

        // Pruning policy.
        let p = &self.pruning;
        if !(p.min_keep_fraction.is_finite() && (0.0..1.0).contains(&p.min_keep_fraction)) {
            errs.push(format!(
                "pruning.min_keep_fraction = {} is outside [0, 1): it is the least fraction of each layer kept (0 disables the guard)",
                p.min_keep_fraction
            ));
        }
        if !p.prune_convs && !p.prune_linears {
            errs.push("pruning.prune_convs and pruning.prune_linears are both false: nothing would be pruned".into());
        }
        if p.exclude_layers.iter().any(|l| l.trim().is_empty()) {
            errs.push("pruning.exclude_layers holds an empty name: list weight names such as \"fc.weight\"".into());
        }

        if self.max_attempts == 0 {
            errs.push("max_attempts = 0: a job needs at least one attempt (default 3)".into());
        }

        if errs.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(errs))
        }
    }
}

/// True when `v` lies beyond `length` and both are in the same unit (epochs and iterations cannot
/// be compared without the dataset size).
fn exceeds(v: TrainLength, length: TrainLength) -> bool {
    match (v, length) {
        (TrainLength::Epochs(a), TrainLength::Epochs(b)) | (TrainLength::Iterations(a), TrainLength::Iterations(b)) => a > b,
        _ => false,
    }
}

/// The fewest levels L at rate `r` with 1 − (1 − r)^L ≥ `target` (at least 1).
pub fn levels_to_reach(target: f64, rate: f64) -> u64 {
    let exact = (1.0 - target).ln() / (1.0 - rate).ln();
    // The tolerance keeps e.g. 0.8926 at rate 0.2 (exactly 10 levels on paper) from becoming 11
    // through rounding.
    (exact - 1e-9).ceil().max(1.0) as u64
}
