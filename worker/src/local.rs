//! `lth-worker run-local`: one whole chain (level 0..N) for one (metric, rate, seed) of a sweep
//! file, without a coordinator. Each level is a separate `run_step` in its own subfolder
//! (`level-0`, `level-1`, ...), exactly as the daemon runs jobs, so an interrupted chain resumes:
//! finished levels (a `report.json` whose `step.json` matches) are reused, and an unfinished one
//! continues from its checkpoint.

use crate::engine::{self, LevelReport, StepEvent, StepInputs, StepSpec};
use anyhow::{bail, Context, Result};
use lth_sweep::{ImportanceMetric, SweepSpec};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// What to run from the sweep file (each `None` takes the sweep's first value).
pub struct LocalChain {
    pub sweep_file: PathBuf,
    pub metric: Option<ImportanceMetric>,
    pub rate: Option<f64>,
    pub seed: Option<u64>,
    pub levels: Option<u32>,
    pub out: Option<PathBuf>,
}

/// The chain's summary (`chain.json` in the output folder): per level without the mask bits,
/// which are in each level's `report.json` and `weights.safetensors`.
#[derive(Serialize)]
struct ChainSummary<'a> {
    sweep: &'a str,
    model: &'a str,
    dataset: &'a str,
    metric: &'a str,
    rate: f64,
    seed: u64,
    levels: Vec<LevelSummary>,
}

#[derive(Serialize)]
struct LevelSummary {
    level: u32,
    sparsity: f64,
    test_accuracy: f64,
    test_loss: f64,
    train_loss: f64,
    wall_seconds: f64,
    collapsed_layers: Vec<String>,
    layers: Vec<(String, u64, u64)>,
}

pub fn read_sweep(path: &Path) -> Result<SweepSpec> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading sweep file {}", path.display()))?;
    let spec: SweepSpec = toml::from_str(&text).with_context(|| format!("{} is not a valid sweep file", path.display()))?;
    Ok(spec)
}

/// Levels after level 0: `levels`, else enough to reach `target_sparsity` at `rate`.
pub fn chain_levels(sweep: &SweepSpec, rate: f64) -> Result<u32> {
    match (sweep.levels, sweep.target_sparsity) {
        (Some(l), _) => Ok(l),
        (None, Some(t)) if t > 0.0 && t < 1.0 => Ok(((1.0 - t).ln() / (1.0 - rate).ln()).ceil() as u32),
        _ => bail!("the sweep file sets neither `levels` nor a `target_sparsity` in (0, 1); add one or pass --levels"),
    }
}

pub fn run(args: &LocalChain, device: tch::Device) -> Result<Vec<LevelReport>> {
    let sweep = read_sweep(&args.sweep_file)?;
    let metric = match args.metric.or(sweep.metrics.first().copied()) {
        Some(m) => m,
        None => bail!("the sweep lists no metrics; pass --metric"),
    };
    let rate = args.rate.or(sweep.rates.first().copied()).context("the sweep lists no rates; pass --rate")?;
    let seed = args.seed.or(sweep.seeds.first().copied()).context("the sweep lists no seeds; pass --seed")?;
    if !(rate > 0.0 && rate < 1.0) {
        bail!("rate {rate} must be in (0, 1)");
    }
    let levels = match args.levels {
        Some(l) => l,
        None => chain_levels(&sweep, rate)?,
    };
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from(format!("lth-local-{}-{}-{}-s{}", sweep.name, metric, rate, seed)));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    println!(
        "chain: {} {} on {} | metric {metric} rate {rate} seed {seed} | levels 0..={levels} | device {device:?} | out {}",
        sweep.name,
        sweep.model.as_str(),
        sweep.dataset.name.as_str(),
        out.display()
    );
    println!("{:>5} {:>9} {:>9} {:>9} {:>8}  collapsed", "level", "sparsity", "accuracy", "loss", "seconds");
    let mut reports = Vec::new();
    let mut rewind: Option<PathBuf> = None;
    let mut parent: Option<PathBuf> = None;
    for level in 0..=levels {
        let spec = StepSpec {
            model: sweep.model,
            dataset: sweep.dataset.clone(),
            recipe: sweep.recipe.clone(),
            pruning: sweep.pruning.clone(),
            seed,
            metric: (level > 0).then_some(metric),
            rate: if level > 0 { rate } else { 0.0 },
            level,
        };
        let dir = out.join(format!("level-{level}"));
        std::fs::create_dir_all(&dir)?;
        let step_json = serde_json::to_vec_pretty(&spec)?;
        let step_path = dir.join("step.json");
        let report_path = dir.join(engine::REPORT_FILE);
        let same_step = std::fs::read(&step_path).map(|b| b == step_json).unwrap_or(false);
        if step_path.exists() && !same_step {
            bail!("{} holds a different step (another sweep, metric, rate or seed); choose another --out", dir.display());
        }
        std::fs::write(&step_path, &step_json)?;
        let report: LevelReport = if same_step && report_path.exists() && dir.join(engine::WEIGHTS_FILE).exists() {
            serde_json::from_slice(&std::fs::read(&report_path)?)?
        } else {
            let inputs = StepInputs { rewind: rewind.clone(), parent: parent.clone() };
            let mut on_event = |e: StepEvent| {
                if let StepEvent::Progress { iteration, total_iterations, epoch, train_loss, test_accuracy, images_per_second } = e {
                    if std::env::var_os("LTH_VERBOSE").is_some() {
                        eprintln!(
                            "  level {level} it {iteration}/{total_iterations} epoch {epoch:.1} loss {train_loss:.4} acc {:.4} {images_per_second:.0} img/s",
                            test_accuracy.unwrap_or(f64::NAN)
                        );
                    }
                }
            };
            engine::run_step(&spec, &inputs, &dir, device, &mut on_event)?.report
        };
        if level == 0 {
            rewind = Some(dir.join(engine::REWIND_FILE));
        }
        parent = Some(dir.join(engine::WEIGHTS_FILE));
        let collapsed: Vec<&str> = report.layers.iter().filter(|l| l.collapsed).map(|l| l.name.as_str()).collect();
        println!(
            "{:>5} {:>8.2}% {:>8.2}% {:>9.4} {:>8.1}  {}",
            level,
            report.sparsity * 100.0,
            report.test_accuracy * 100.0,
            report.test_loss,
            report.wall_seconds,
            if collapsed.is_empty() { "-".to_string() } else { collapsed.join(",") }
        );
        reports.push(report);
    }
    let summary = ChainSummary {
        sweep: &sweep.name,
        model: sweep.model.as_str(),
        dataset: sweep.dataset.name.as_str(),
        metric: metric.as_str(),
        rate,
        seed,
        levels: reports
            .iter()
            .map(|r| LevelSummary {
                level: r.level,
                sparsity: r.sparsity,
                test_accuracy: r.test_accuracy,
                test_loss: r.test_loss,
                train_loss: r.train_loss,
                wall_seconds: r.wall_seconds,
                collapsed_layers: r.layers.iter().filter(|l| l.collapsed).map(|l| l.name.clone()).collect(),
                layers: r.layers.iter().map(|l| (l.name.clone(), l.kept, l.total)).collect(),
            })
            .collect(),
    };
    std::fs::write(out.join("chain.json"), serde_json::to_vec_pretty(&summary)?)?;
    println!("wrote {}/chain.json and level-*/{{report.json,weights.safetensors}}", out.display());
    Ok(reports)
}
