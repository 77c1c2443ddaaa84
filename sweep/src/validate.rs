//! Validation of a sweep spec and parsing of sweep files.
//!
//! Exists so that every component rejects the same bad input the same way, before any job is
//! created, and so that a user sees *every* problem in a sweep file at once (not one per submit).

use crate::model::is_sha256_hex;
use crate::pattern::pattern_error;
use crate::{Control, DatasetKind, ImportanceMetric, LrSchedule, ModelSpec, Rate, SweepSpec, TrainLength};
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

    /// Reads, parses and validates a sweep file. A TorchScript model's path is resolved against
    /// the file's folder and its sha256 recorded (see [`SweepSpec::resolve_files`]).
    pub fn from_toml_file(path: &Path) -> Result<SweepSpec, SpecError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| SpecError::Io { path: path.display().to_string(), source })?;
        let mut spec: SweepSpec = toml::from_str(&text)?;
        spec.resolve_files(path.parent().unwrap_or(Path::new(".")))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Makes the files a sweep names concrete: a TorchScript model's relative path becomes
    /// absolute (against `base`, the sweep file's folder) and its sha256 is computed (or checked
    /// against the pinned one). Call before [`SweepSpec::validate`] on a spec read from a file.
    pub fn resolve_files(&mut self, base: &Path) -> Result<(), ValidationErrors> {
        self.model.resolve_file(base).map_err(|e| ValidationErrors(vec![e]))
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
            errs.push("`rates` is empty: list at least one pruning rate in (0, 1), e.g. rates = [0.2] (or a per-level schedule, rates = [[0.2, 0.2, 0.5]])".into());
        }
        let mut seen_rates: Vec<&Rate> = Vec::new();
        for rate in &self.rates {
            if let Rate::Schedule(v) = rate {
                if v.is_empty() {
                    errs.push("`rates` holds an empty schedule []: list the rate of each level, e.g. [0.2, 0.2, 0.5]".into());
                }
                if v.len() > MAX_LEVELS as usize {
                    errs.push(format!("the schedule {rate} lists {} levels, more than {MAX_LEVELS}", v.len()));
                }
            }
            let bad: Vec<f64> = rate.values().iter().copied().filter(|r| !(r.is_finite() && *r > 0.0 && *r < 1.0)).collect();
            for r in &bad {
                match rate {
                    Rate::Constant(_) => errs.push(format!(
                        "rate {r} is outside (0, 1): a rate is the fraction of the remaining weights pruned per level, e.g. 0.2"
                    )),
                    Rate::Schedule(_) => errs.push(format!(
                        "rate {r} in the schedule {rate} is outside (0, 1): each entry is the fraction of the remaining weights pruned at that level"
                    )),
                }
            }
            if bad.is_empty() && seen_rates.contains(&rate) {
                errs.push(format!("`rates` lists {rate} twice: list each rate once"));
            }
            seen_rates.push(rate);
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

        // Depth: `levels` or `target_sparsity` (neither when every rate is a schedule).
        let valid_rates: Vec<&Rate> =
            self.rates.iter().filter(|r| !r.values().is_empty() && r.values().iter().all(|x| x.is_finite() && *x > 0.0 && *x < 1.0)).collect();
        match (self.levels, self.target_sparsity) {
            (Some(_), Some(_)) => errs.push(
                "both `levels` and `target_sparsity` are set: keep exactly one of them".into(),
            ),
            (None, None) => {
                if self.rates.iter().any(|r| matches!(r, Rate::Constant(_))) {
                    errs.push(
                        "neither `levels` nor `target_sparsity` is set: add e.g. levels = 10 or target_sparsity = 0.9 (only a sweep whose every rate is a schedule may leave both out)".into(),
                    )
                }
            }
            (Some(l), None) => {
                if l == 0 || l > MAX_LEVELS {
                    errs.push(format!("levels = {l} is outside 1..={MAX_LEVELS}: set the number of pruning levels after the dense level 0"));
                }
                for r in &valid_rates {
                    if let Rate::Schedule(v) = r {
                        if v.len() > l as usize {
                            errs.push(format!(
                                "the schedule {r} lists {} levels but levels = {l}: its last {} would never run; shorten it or raise `levels`",
                                v.len(),
                                v.len() - l as usize
                            ));
                        }
                    }
                }
            }
            (None, Some(t)) => {
                if !(t.is_finite() && t > 0.0 && t < 1.0) {
                    errs.push(format!("target_sparsity = {t} is outside (0, 1): it is the fraction of prunable weights removed, e.g. 0.9"));
                } else {
                    for r in &valid_rates {
                        let l = match r {
                            Rate::Constant(x) => levels_to_reach(t, *x),
                            Rate::Schedule(v) => levels_to_reach_schedule(t, v),
                        };
                        if l > MAX_LEVELS as u64 {
                            errs.push(format!("rate {r} needs {l} levels to reach target_sparsity {t} (more than {MAX_LEVELS}): raise the rate or lower the target"));
                        }
                    }
                }
            }
        }

        // Controls.
        if !self.controls.is_empty() && self.control_levels.is_empty() {
            errs.push("`controls` is set but `control_levels` is empty: list the levels whose tickets get controls, e.g. control_levels = [5, 10]".into());
        }
        if self.controls.is_empty() && !self.control_levels.is_empty() {
            errs.push(format!(
                "`control_levels` is set but `controls` is empty: add controls = [{}] (or drop control_levels)",
                Control::ALL.map(|c| format!("\"{c}\"")).join(", ")
            ));
        }
        let mut seen_controls = HashSet::new();
        for c in &self.controls {
            if !seen_controls.insert(*c) {
                errs.push(format!("`controls` lists {c} twice: list each control once"));
            }
        }
        let mut seen_levels = HashSet::new();
        for &cl in &self.control_levels {
            if !seen_levels.insert(cl) {
                errs.push(format!("`control_levels` lists {cl} twice: list each level once"));
            }
            if cl == 0 {
                errs.push("control level 0 is the dense network, which has no ticket to control: control levels start at 1".into());
                continue;
            }
            if self.controls.is_empty() {
                continue;
            }
            for r in &valid_rates {
                let depth = self.levels_for(r);
                if depth > 0 && cl > depth {
                    errs.push(format!("control level {cl} is deeper than rate {r}'s {depth} levels: pick control levels within every trial's chain"));
                }
            }
        }

        // Bundles.
        match (self.bundle.is_off(), self.max_bundle) {
            (true, Some(k)) => errs.push(format!(
                "`max_bundle = {k}` is set but `bundle` is off: add bundle = \"metrics\" (or \"metrics+rates\"), or drop max_bundle"
            )),
            (false, Some(k)) if k < 2 => errs.push(format!(
                "`max_bundle = {k}`: a bundle trains at least 2 jobs together; write max_bundle = 2 or more, or bundle = \"off\""
            )),
            (false, Some(k)) if k > crate::MAX_BUNDLE_LIMIT => errs.push(format!(
                "`max_bundle = {k}` is more than {}: write a smaller max_bundle (gains flatten well before)",
                crate::MAX_BUNDLE_LIMIT
            )),
            _ => {}
        }
        if !self.bundle.is_off() && !crate::bundleable(&self.model) {
            errs.push(format!(
                "`bundle = \"{}\"` needs a built-in model: a TorchScript network cannot be grouped; write bundle = \"off\"",
                self.bundle
            ));
        }

        // Model.
        if let ModelSpec::TorchScript(t) = &self.model {
            if t.torchscript.trim().is_empty() {
                errs.push("model.torchscript is empty: give the path of the exported .pt file".into());
            }
            match t.sha256.as_deref() {
                None => errs.push(format!(
                    "model.torchscript {:?} has no sha256: read the sweep file with lthctl or lth-worker (they hash the file), or add sha256 = \"<64 hex digits>\"",
                    t.torchscript
                )),
                Some(h) if !is_sha256_hex(h) => errs.push(format!("model.sha256 {h:?} is not 64 hex digits: `sha256sum {}` prints it", t.torchscript)),
                Some(_) => {}
            }
        }

        // Data.
        let d = &self.dataset;
        let path_missing = d.path.as_deref().map(|p| p.trim().is_empty()).unwrap_or(true);
        if let Some(u) = &d.upload {
            if !d.name.is_custom() {
                errs.push(format!(
                    "dataset.upload applies to your own data (image_folder, safetensors); {} is read from `path` on the workers",
                    d.name.as_str()
                ));
            }
            if d.upload_sha256().is_none() {
                errs.push(format!(
                    "dataset.upload = {u:?} is not \"sha256:<64 hex digits>\": `lthctl dataset upload PATH` prints the line to use"
                ));
            }
            if !path_missing {
                errs.push("dataset sets both `path` and `upload`: give one (workers read `path` themselves, or fetch `upload` from the coordinator)".into());
            }
        } else if d.name != DatasetKind::Digits && path_missing {
            let example = match d.name {
                DatasetKind::ImageFolder => "/data/pets (holding train/<class>/ and val/<class>/)".to_string(),
                DatasetKind::Safetensors => "/data/mine.safetensors".to_string(),
                other => format!("/data/{}", other.as_str()),
            };
            errs.push(format!(
                "dataset.path is missing for {}: set it to the dataset's location on the workers, e.g. path = \"{example}\", or upload it with `lthctl dataset upload` and set `upload` (only the bundled `digits` needs neither)",
                d.name.as_str(),
            ));
        }
        if d.name == DatasetKind::ImageFolder {
            match d.resolution {
                None => errs.push("dataset.resolution is missing for image_folder: images are decoded once at one size, e.g. resolution = 64 or [64, 48] (height, width)".into()),
                Some(r) if r.height == 0 || r.width == 0 || r.height > 4096 || r.width > 4096 => {
                    errs.push(format!("dataset.resolution [{}, {}] must lie within 1..=4096 in both dimensions", r.height, r.width))
                }
                Some(_) => {}
            }
            if let Some(c) = d.channels {
                if c != 1 && c != 3 {
                    errs.push(format!("dataset.channels = {c}: image_folder decodes to 3 (RGB) or 1 (grayscale) channels"));
                }
            }
        } else {
            if d.resolution.is_some() {
                errs.push(format!("dataset.resolution applies to image_folder only; {} has a fixed size: drop it", d.name.as_str()));
            }
            if d.channels.is_some() {
                errs.push(format!("dataset.channels applies to image_folder only; {} has its own channel count: drop it", d.name.as_str()));
            }
        }
        if d.augment.is_some() && !d.name.is_custom() {
            errs.push(format!(
                "dataset.augment applies to your own data (image_folder, safetensors); {} decides itself (use recipe.augment to turn augmentation off)",
                d.name.as_str()
            ));
        }
        match (&d.mean, &d.std) {
            (Some(_), None) | (None, Some(_)) => errs.push("dataset.mean and dataset.std go together: give both (one value per channel) or neither (computed from the training images)".into()),
            (Some(m), Some(s)) => {
                if m.len() != s.len() || m.is_empty() {
                    errs.push(format!("dataset.mean has {} values and dataset.std {}: give one value per channel in each", m.len(), s.len()));
                }
                if let Some(c) = d.channels.or(match d.name {
                    DatasetKind::Cifar10 | DatasetKind::Cifar100 | DatasetKind::TinyImagenet => Some(3),
                    DatasetKind::Mnist | DatasetKind::Digits => Some(1),
                    DatasetKind::ImageFolder => Some(3),
                    DatasetKind::Safetensors => None,
                }) {
                    if m.len() != c as usize {
                        errs.push(format!("dataset.mean has {} values, but {} images have {c} channel{}", m.len(), d.name.as_str(), if c == 1 { "" } else { "s" }));
                    }
                }
                if m.iter().any(|v| !v.is_finite()) {
                    errs.push("dataset.mean holds a value that is not a finite number".into());
                }
                if s.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
                    errs.push("dataset.std must be positive in every channel (on pixel values scaled to [0, 1], e.g. 0.247)".into());
                }
            }
            (None, None) => {}
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
        if !p.prune_convs && !p.prune_linears && p.layers.is_empty() {
            errs.push("pruning.prune_convs and pruning.prune_linears are both false: nothing would be pruned".into());
        }
        if p.exclude_layers.iter().any(|l| l.trim().is_empty()) {
            errs.push("pruning.exclude_layers holds an empty name: list weight names such as \"fc.weight\"".into());
        }
        for l in &p.layers {
            if l.trim().is_empty() {
                errs.push("pruning.layers holds an empty pattern: list parameter names or patterns such as \"features.*.weight\"".into());
            } else if let Some(e) = pattern_error(l) {
                errs.push(format!("pruning.layers pattern {l:?} is invalid ({e}): `*` matches any characters, `?` one, `[..]` a class"));
            }
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

/// The fewest levels L of `schedule` (its last rate repeating) with 1 − Π(1 − r_i) ≥ `target`
/// (at least 1). Counted in log space with the same tolerance as [`levels_to_reach`].
pub fn levels_to_reach_schedule(target: f64, schedule: &[f64]) -> u64 {
    let Some(&last) = schedule.last() else { return 1 };
    let goal = (1.0 - target).ln();
    let tolerance = 1e-9 * goal.abs().max(1e-12);
    let mut kept = 0.0f64; // ln of the fraction of weights kept
    for (i, r) in schedule.iter().enumerate() {
        kept += (1.0 - r).ln();
        if kept - goal <= tolerance {
            return i as u64 + 1;
        }
    }
    // The remaining distance at the last rate, as levels_to_reach counts it.
    let more = ((goal - kept) / (1.0 - last).ln() - 1e-9).ceil().max(1.0) as u64;
    schedule.len() as u64 + more
}
