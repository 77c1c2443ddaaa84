//! Reading a sweep file the way a user wrote it: parse the TOML into `lth_sweep::SweepSpec`, check
//! it, and work out the grid it expands to.
//!
//! Why here and not only on the coordinator: a typo should be reported before anything is sent,
//! with the file, line and column, and a fix; and `submit --dry-run --offline` must be able to show
//! the grid without a coordinator.
//!
//! The checks and the grid arithmetic are thin local helpers until `lth-sweep` grows its own
//! validation and expansion; they follow the rules DESIGN.md states (one dense job per seed, one
//! job per (metric, rate, seed, level ≥ 1)).

use anyhow::{bail, Context, Result};
use lth_sweep::{DatasetKind, ImportanceMetric, ModelKind, Rate, SweepSpec, ValidationErrors};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A sweep file that parsed and passed the local checks.
#[derive(Debug, Clone)]
pub struct LoadedSweep {
    pub path: PathBuf,
    pub spec: SweepSpec,
    /// sha256 (hex) of the file's bytes: the default idempotency token, so submitting the same file
    /// twice creates one sweep.
    pub content_sha256: String,
}

/// Reads, parses and validates a sweep file.
pub fn load_sweep_file(path: &Path) -> Result<LoadedSweep> {
    let bytes = std::fs::read(path).with_context(|| {
        format!("cannot read the sweep file {}: check the path (examples/ has sweep files to start from)", path.display())
    })?;
    let text = String::from_utf8(bytes.clone())
        .map_err(|_| anyhow::anyhow!("{} is not UTF-8 text: a sweep file is TOML", path.display()))?;
    let origin = path.display().to_string();
    let mut spec = parse_sweep_toml(&text, &origin)?;
    // A TorchScript model's path is relative to the sweep file; its sha256 enters the job hashes.
    if let Err(ValidationErrors(errs)) = spec.resolve_files(path.parent().unwrap_or(Path::new("."))) {
        bail!("{origin}: {}", errs.join("; "));
    }
    let problems = validate(&spec);
    if !problems.is_empty() {
        let mut msg = format!("{origin}: the sweep is not valid; fix these and submit again:");
        for p in &problems {
            let _ = write!(msg, "\n  - {p}");
        }
        bail!(msg);
    }
    Ok(LoadedSweep { path: path.to_path_buf(), spec, content_sha256: hex::encode(Sha256::digest(&bytes)) })
}

/// Parses sweep TOML. A syntax error, an unknown key or a bad value is reported as
/// `ORIGIN:LINE:COLUMN: message`, followed by the offending line and a caret.
pub fn parse_sweep_toml(text: &str, origin: &str) -> Result<SweepSpec> {
    toml::from_str::<SweepSpec>(text).map_err(|e| anyhow::anyhow!(describe_toml_error(text, origin, &e)))
}

fn describe_toml_error(text: &str, origin: &str, err: &toml::de::Error) -> String {
    let message = err.message().trim().to_string();
    let hint = hint_for(&message);
    let Some(span) = err.span() else {
        return format!("{origin}: {message}{hint}");
    };
    let (line, column) = line_column(text, span.start);
    let line_text = text.lines().nth(line - 1).unwrap_or("");
    let width = text[span.clone()].lines().next().map(|s| s.chars().count()).unwrap_or(1).max(1);
    format!(
        "{origin}:{line}:{column}: {message}\n{line:>5} | {line_text}\n      | {pad}{carets}{hint}",
        pad = " ".repeat(column - 1),
        carets = "^".repeat(width),
    )
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    (line, before[line_start..].chars().count() + 1)
}

/// Extra advice for the errors people actually make in sweep files.
fn hint_for(message: &str) -> String {
    let mut hint = String::new();
    if message.contains("unknown variant") && message.contains("magnitude") {
        let _ = write!(
            hint,
            "\nhint: metrics are {} (the paper's five are magnitude, l1, l2, softmax, min_max)",
            ImportanceMetric::ALL.map(|m| m.as_str()).join(", ")
        );
    } else if message.contains("unknown field") {
        hint.push_str("\nhint: see examples/*.toml for every key a sweep file takes");
    } else if message.contains("missing field") {
        hint.push_str("\nhint: a sweep needs name, model, [dataset], [recipe], metrics, rates, seeds and levels (or target_sparsity)");
    }
    hint
}

/// Every problem with the sweep, each phrased as what to change. Empty when the sweep is valid.
/// `lth-sweep`'s rules (the coordinator applies the same ones), plus one lthctl adds because it
/// would otherwise only fail on a worker: the model must fit the dataset's input shape.
pub fn validate(spec: &SweepSpec) -> Vec<String> {
    let mut p = match spec.validate() {
        Ok(()) => Vec::new(),
        Err(ValidationErrors(errs)) => errs,
    };
    // Only built-in pairs are known here; a TorchScript model is checked against the data's shape
    // by the worker before it trains, and your own data may have any shape.
    let model_fits = match (spec.model.builtin(), spec.dataset.name.is_custom()) {
        (None, _) | (_, true) => true,
        (Some(ModelKind::Lenet300100), false) => matches!(spec.dataset.name, DatasetKind::Mnist | DatasetKind::Digits),
        (Some(_), false) => !matches!(spec.dataset.name, DatasetKind::Mnist | DatasetKind::Digits),
    };
    if !model_fits {
        p.push(format!(
            "model {} does not fit dataset {}: lenet300100 takes mnist or digits; the convolutional models take cifar10, cifar100 or tiny_imagenet",
            spec.model.as_str(),
            spec.dataset.name.as_str()
        ));
    }
    if spec.model == ModelKind::Lenet300100 && !spec.pruning.prune_linears {
        p.push("lenet300100 has only linear layers: set prune_linears = true in [pruning]".into());
    }
    p
}

/// What a sweep expands to (counted from `lth_sweep::SweepSpec::expand`, the plan the coordinator
/// stores).
#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    /// (rate or schedule, pruning levels after level 0) for each entry of `rates`.
    pub levels_per_rate: Vec<(Rate, u32)>,
    /// One per (metric, rate, seed).
    pub trials: u64,
    /// Level 0 plus the rewind point: one per seed, shared by every trial of that seed.
    pub dense_jobs: u64,
    /// One per (metric, rate, seed, level ≥ 1).
    pub level_jobs: u64,
    /// One per (trial, control level, control).
    pub control_jobs: u64,
}

impl Grid {
    pub fn jobs(&self) -> u64 {
        self.dense_jobs + self.level_jobs + self.control_jobs
    }
}

/// The grid of a (valid) sweep.
pub fn grid(spec: &SweepSpec) -> Grid {
    let plan = spec.expand();
    Grid {
        levels_per_rate: spec.rates.iter().map(|r| (r.clone(), spec.levels_for(r))).collect(),
        trials: plan.trials.len() as u64,
        dense_jobs: plan.dense.len() as u64,
        level_jobs: plan.level_jobs() as u64,
        control_jobs: plan.control_jobs() as u64,
    }
}

/// A human description of the grid: what will be trained, how many jobs, and the sparsity each
/// level reaches.
pub fn describe_grid(spec: &SweepSpec, grid: &Grid) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "sweep {:?}: {} on {}", spec.name, spec.model, spec.dataset.name.as_str());
    let _ = writeln!(
        s,
        "  recipe   {} per level, batch {}, lr {}, rewind to {}",
        spec.recipe.length,
        spec.recipe.batch_size,
        spec.recipe.lr,
        if spec.recipe.rewind.is_zero() { "init".to_string() } else { spec.recipe.rewind.to_string() }
    );
    let _ = writeln!(s, "  metrics  {} ({})", spec.metrics.len(), spec.metrics.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", "));
    let _ = writeln!(s, "  rates    {} ({})", spec.rates.len(), spec.rates.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", "));
    let _ = writeln!(s, "  seeds    {} ({})", spec.seeds.len(), spec.seeds.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", "));
    for (rate, levels) in &grid.levels_per_rate {
        let (rate, levels) = (rate, *levels);
        let last = rate.sparsity_after(levels);
        let _ = writeln!(
            s,
            "  levels   {levels} at rate {rate} (+ dense level 0): down to {:.2}% of weights remaining ({:.2}% sparse)",
            100.0 * (1.0 - last),
            100.0 * last
        );
    }
    let _ = writeln!(
        s,
        "  grid     {} × {} × {} = {} trials",
        plural(spec.metrics.len(), "metric"),
        plural(spec.rates.len(), "rate"),
        plural(spec.seeds.len(), "seed"),
        grid.trials
    );
    if !spec.controls.is_empty() {
        let mut levels = spec.control_levels.clone();
        levels.sort_unstable();
        let _ = writeln!(
            s,
            "  controls {} at levels {} of every trial",
            spec.controls.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", "),
            levels.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    let _ = write!(
        s,
        "  jobs     {} = {} dense (one per seed, shared by all its trials) + {} pruning levels",
        grid.jobs(),
        grid.dense_jobs,
        grid.level_jobs
    );
    if grid.control_jobs > 0 {
        let _ = write!(s, " + {} controls", grid.control_jobs);
    }
    s
}

fn plural(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
name = "t"
model = "lenet300100"
metrics = ["magnitude", "l1"]
rates = [0.2]
seeds = [1, 2]
levels = 4
[dataset]
name = "digits"
[recipe]
length = "8ep"
batch_size = 64
lr = 0.05
"#;

    #[test]
    fn valid_sweep_expands_to_the_expected_grid() {
        let spec = parse_sweep_toml(VALID, "t.toml").unwrap();
        assert!(validate(&spec).is_empty(), "{:?}", validate(&spec));
        let g = grid(&spec);
        assert_eq!(g.trials, 4);
        assert_eq!(g.dense_jobs, 2);
        assert_eq!(g.level_jobs, 2 * 2 * 4);
        assert_eq!(g.jobs(), 18);
        let text = describe_grid(&spec, &g);
        assert!(text.contains("18 = 2 dense"), "{text}");
        // 0.8^4 = 0.4096
        assert!(text.contains("40.96% of weights remaining"), "{text}");
    }

    #[test]
    fn unknown_metric_reports_line_column_and_the_known_metrics() {
        let bad = VALID.replace("\"l1\"", "\"l3\"");
        let err = parse_sweep_toml(&bad, "t.toml").unwrap_err().to_string();
        let line = bad.lines().position(|l| l.starts_with("metrics")).unwrap() + 1;
        assert!(err.starts_with(&format!("t.toml:{line}:")), "{err}");
        assert!(err.contains("\"l3\""), "{err}");
        assert!(err.contains("min_max") && err.contains("lamp") && err.contains("uniform_magnitude"), "{err}");
    }

    #[test]
    fn syntax_error_and_unknown_key_point_at_the_line() {
        let bad = VALID.replace("levels = 4", "levels = = 4");
        let err = parse_sweep_toml(&bad, "s.toml").unwrap_err().to_string();
        assert!(err.starts_with("s.toml:7:"), "{err}");
        let bad = VALID.replace("lr = 0.05", "lr = 0.05\nlearning_rate = 0.1");
        let err = parse_sweep_toml(&bad, "s.toml").unwrap_err().to_string();
        assert!(err.starts_with("s.toml:14:1: "), "{err}");
        assert!(err.contains("learning_rate") && err.contains("examples/"), "{err}");
    }

    #[test]
    fn validation_lists_every_problem_with_a_fix() {
        let bad = VALID
            .replace("rates = [0.2]", "rates = [1.5, 0.2, 0.2]")
            .replace("seeds = [1, 2]", "seeds = []")
            .replace("name = \"digits\"", "name = \"cifar10\"")
            .replace("levels = 4", "levels = 4\ntarget_sparsity = 0.9");
        let spec = parse_sweep_toml(&bad, "b.toml").unwrap();
        let problems = validate(&spec).join("\n");
        for needle in ["rate 1.5", "lists 0.2 twice", "`seeds` is empty", "dataset.path is missing", "does not fit dataset", "keep exactly one"] {
            assert!(problems.contains(needle), "missing {needle:?} in\n{problems}");
        }
    }

    #[test]
    fn target_sparsity_sets_the_depth_per_rate() {
        let spec = parse_sweep_toml(&VALID.replace("levels = 4", "target_sparsity = 0.8926").replace("rates = [0.2]", "rates = [0.2, 0.5]"), "t.toml").unwrap();
        assert!(validate(&spec).is_empty(), "{:?}", validate(&spec));
        let g = grid(&spec);
        // 0.8^10 = 0.107 (89.26% sparse, the paper's headline level); 0.5^4 = 0.0625.
        assert_eq!(g.levels_per_rate, vec![(Rate::Constant(0.2), 10), (Rate::Constant(0.5), 4)]);
        assert_eq!(g.level_jobs, 2 * 2 * (10 + 4));
        assert_eq!(g.trials, 8);
    }

    #[test]
    fn load_reports_a_missing_file_and_hashes_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_sweep_file(&dir.path().join("nope.toml")).unwrap_err().to_string();
        assert!(err.contains("cannot read the sweep file") && err.contains("examples/"), "{err}");
        let f = dir.path().join("s.toml");
        std::fs::write(&f, VALID).unwrap();
        let a = load_sweep_file(&f).unwrap();
        assert_eq!(a.content_sha256, hex::encode(Sha256::digest(VALID.as_bytes())));
        std::fs::write(&f, VALID.replace("lenet300100", "resnet20")).unwrap();
        let err = load_sweep_file(&f).unwrap_err().to_string();
        assert!(err.contains("fix these") && err.contains("does not fit dataset"), "{err}");
    }

    #[test]
    fn line_column_counts_characters() {
        let t = "ab\nçd = x";
        assert_eq!(line_column(t, 0), (1, 1));
        assert_eq!(line_column(t, 3), (2, 1));
        assert_eq!(line_column(t, t.find('x').unwrap()), (2, 6));
    }
}
