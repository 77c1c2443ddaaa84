//! `lth-worker run-local`: one whole chain (level 0..N) for one (metric, rate, seed) of a sweep
//! file, without a coordinator, plus the sweep's controls at its control levels. Each level is a
//! separate `run_step` in its own subfolder (`level-0`, `level-1`, ...; a control of level L in
//! `level-L-reinit`, `level-L-random_mask`), exactly as the daemon runs jobs, so an interrupted
//! chain resumes: finished steps (a `report.json` whose `step.json` matches) are reused, and an
//! unfinished one continues from its checkpoint.

use crate::engine::{self, LevelReport, StepEvent, StepInputs, StepSpec};
use anyhow::{bail, Context, Result};
use lth_sweep::{Control, ImportanceMetric, Rate, SweepSpec};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// What to run from the sweep file (each `None` takes the sweep's first value).
pub struct LocalChain {
    pub sweep_file: PathBuf,
    pub metric: Option<ImportanceMetric>,
    /// A constant rate or a per-level schedule (default: the sweep's first `rates` entry).
    pub rate: Option<Rate>,
    pub seed: Option<u64>,
    pub levels: Option<u32>,
    pub out: Option<PathBuf>,
}

/// The chain's summary (`chain.json` in the output folder): per level without the mask bits,
/// which are in each level's `report.json` and `weights.safetensors`.
#[derive(Serialize)]
struct ChainSummary<'a> {
    sweep: &'a str,
    model: String,
    dataset: &'a str,
    metric: &'a str,
    /// A number, or the per-level schedule.
    rate: &'a Rate,
    seed: u64,
    levels: Vec<LevelSummary>,
    /// The controls, per controlled level (empty when the sweep has none).
    controls: Vec<ControlSummary>,
}

#[derive(Serialize)]
struct LevelSummary {
    level: u32,
    /// The rate this level pruned (0 for level 0).
    rate: f64,
    sparsity: f64,
    test_accuracy: f64,
    test_loss: f64,
    train_loss: f64,
    wall_seconds: f64,
    collapsed_layers: Vec<String>,
    /// (layer, kept, total), in network order.
    layers: Vec<(String, u64, u64)>,
}

#[derive(Serialize)]
struct ControlSummary {
    control: Control,
    /// The controlled ticket's accuracy, for the side-by-side comparison.
    ticket_accuracy: f64,
    #[serde(flatten)]
    result: LevelSummary,
}

/// Reads, resolves (a TorchScript model's path and sha256) and validates a sweep file.
pub fn read_sweep(path: &Path) -> Result<SweepSpec> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading sweep file {}", path.display()))?;
    let mut spec: SweepSpec = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{} is not a valid sweep file: {e}", path.display()))?;
    spec.resolve_files(path.parent().unwrap_or(Path::new(".")))
        .and_then(|()| spec.validate())
        .map_err(|e| anyhow::anyhow!("{} is not a valid sweep file: {e}", path.display()))?;
    Ok(spec)
}

/// Levels after level 0 at `rate`: `levels`, else enough to reach `target_sparsity`, else the
/// schedule's length.
pub fn chain_levels(sweep: &SweepSpec, rate: &Rate) -> Result<u32> {
    match sweep.levels_for(rate) {
        0 => bail!("the sweep file sets neither `levels` nor a `target_sparsity` in (0, 1); add one or pass --levels"),
        n => Ok(n),
    }
}

fn rate_label(rate: &Rate) -> String {
    rate.values().iter().map(|r| r.to_string()).collect::<Vec<_>>().join("-")
}

fn summary(r: &LevelReport, rate: f64) -> LevelSummary {
    LevelSummary {
        level: r.level,
        rate,
        sparsity: r.sparsity,
        test_accuracy: r.test_accuracy,
        test_loss: r.test_loss,
        train_loss: r.train_loss,
        wall_seconds: r.wall_seconds,
        collapsed_layers: r.layers.iter().filter(|l| l.collapsed).map(|l| l.name.clone()).collect(),
        layers: r.layers.iter().map(|l| (l.name.clone(), l.kept, l.total)).collect(),
    }
}

/// Runs one step in `dir` unless a finished run of the same step is there already.
fn run_or_reuse(spec: &StepSpec, inputs: StepInputs, dir: &Path, device: tch::Device, what: &str) -> Result<LevelReport> {
    std::fs::create_dir_all(dir)?;
    let step_json = serde_json::to_vec_pretty(spec)?;
    let step_path = dir.join("step.json");
    let report_path = dir.join(engine::REPORT_FILE);
    let same_step = std::fs::read(&step_path).map(|b| b == step_json).unwrap_or(false);
    if step_path.exists() && !same_step {
        bail!("{} holds a different step (another sweep, metric, rate or seed); choose another --out", dir.display());
    }
    if same_step && report_path.exists() && dir.join(engine::WEIGHTS_FILE).exists() {
        return Ok(serde_json::from_slice(&std::fs::read(&report_path)?)?);
    }
    // The step is recorded only once it has started for real: a model or dataset that does not
    // fit fails in run_step's set-up, and leaves no step.json behind to be mistaken for progress.
    let mut on_event = |e: StepEvent| {
        if let StepEvent::Progress { iteration, total_iterations, epoch, train_loss, test_accuracy, images_per_second } = e {
            if std::env::var_os("LTH_VERBOSE").is_some() {
                eprintln!(
                    "  {what} it {iteration}/{total_iterations} epoch {epoch:.1} loss {train_loss:.4} acc {:.4} {images_per_second:.0} img/s",
                    test_accuracy.unwrap_or(f64::NAN)
                );
            }
        }
    };
    let out = engine::run_step(spec, &inputs, dir, device, &mut on_event);
    match out {
        Ok(o) => {
            std::fs::write(&step_path, &step_json)?;
            Ok(o.report)
        }
        Err(e) => {
            // Nothing half-made stays behind when the step could not even start (remove_dir
            // removes empty folders only; a checkpoint to resume from stays).
            let _ = std::fs::remove_dir(dir);
            Err(e)
        }
    }
}

fn print_row(label: &str, r: &LevelReport) {
    let collapsed: Vec<&str> = r.layers.iter().filter(|l| l.collapsed).map(|l| l.name.as_str()).collect();
    println!(
        "{:>5} {:<12} {:>8.2}% {:>8.2}% {:>9.4} {:>8.1}  {}",
        r.level,
        label,
        r.sparsity * 100.0,
        r.test_accuracy * 100.0,
        r.test_loss,
        r.wall_seconds,
        if collapsed.is_empty() { "-".to_string() } else { collapsed.join(",") }
    );
}

/// The ticket reports of levels 0..=N, then the control reports (level, control, report).
pub struct LocalRun {
    pub levels: Vec<LevelReport>,
    pub controls: Vec<(u32, Control, LevelReport)>,
}

pub fn run(args: &LocalChain, device: tch::Device) -> Result<LocalRun> {
    let mut created = None;
    let r = run_chain(args, device, &mut created);
    if let (Err(_), Some(out)) = (&r, created) {
        let _ = std::fs::remove_dir(out); // only when empty
    }
    r
}

fn run_chain(args: &LocalChain, device: tch::Device, created: &mut Option<PathBuf>) -> Result<LocalRun> {
    let sweep = read_sweep(&args.sweep_file)?;
    let metric = match args.metric.or(sweep.metrics.first().copied()) {
        Some(m) => m,
        None => bail!("the sweep lists no metrics; pass --metric"),
    };
    let rate = args.rate.clone().or(sweep.rates.first().cloned()).context("the sweep lists no rates; pass --rate")?;
    let seed = args.seed.or(sweep.seeds.first().copied()).context("the sweep lists no seeds; pass --seed")?;
    if rate.values().is_empty() || rate.values().iter().any(|r| !(*r > 0.0 && *r < 1.0)) {
        bail!("rate {rate} must be in (0, 1) (every entry of a schedule)");
    }
    let levels = match args.levels {
        Some(l) => l,
        None => chain_levels(&sweep, &rate)?,
    };
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from(format!("lth-local-{}-{}-{}-s{}", sweep.name, metric, rate_label(&rate), seed)));
    if !out.exists() {
        *created = Some(out.clone());
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    println!(
        "chain: {} {} on {} | metric {metric} rate {rate} seed {seed} | levels 0..={levels} | device {device:?} | out {}",
        sweep.name,
        sweep.model,
        sweep.dataset.name.as_str(),
        out.display()
    );
    println!("{:>5} {:<12} {:>9} {:>9} {:>9} {:>8}  collapsed", "level", "run", "sparsity", "accuracy", "loss", "seconds");
    let step = |level: u32, control: Option<Control>| StepSpec {
        model: sweep.model.clone(),
        dataset: sweep.dataset.clone(),
        recipe: sweep.recipe.clone(),
        pruning: sweep.pruning.clone(),
        seed,
        metric: (level > 0).then_some(metric),
        rate: if level > 0 { rate.at_level(level) } else { 0.0 },
        level,
        control,
    };
    let mut reports = Vec::new();
    let mut rewind: Option<PathBuf> = None;
    let mut parent: Option<PathBuf> = None;
    for level in 0..=levels {
        let dir = out.join(format!("level-{level}"));
        let inputs = StepInputs { rewind: rewind.clone(), parent: parent.clone() };
        let report = run_or_reuse(&step(level, None), inputs, &dir, device, &format!("level {level}"))?;
        if level == 0 {
            rewind = Some(dir.join(engine::REWIND_FILE));
        }
        parent = Some(dir.join(engine::WEIGHTS_FILE));
        print_row(if level == 0 { "dense" } else { "ticket" }, &report);
        reports.push(report);
    }

    let mut control_levels: Vec<u32> = sweep.control_levels.iter().copied().filter(|&l| l >= 1 && l <= levels).collect();
    control_levels.sort_unstable();
    let skipped: Vec<u32> = sweep.control_levels.iter().copied().filter(|&l| l > levels).collect();
    if !sweep.controls.is_empty() && !skipped.is_empty() {
        println!("note: control levels {skipped:?} lie beyond this chain's {levels} levels and are skipped");
    }
    let mut controls = Vec::new();
    for &level in &control_levels {
        for &control in &sweep.controls {
            let dir = out.join(format!("level-{level}-{control}"));
            let ticket = out.join(format!("level-{level}")).join(engine::WEIGHTS_FILE);
            let inputs = StepInputs { rewind: rewind.clone(), parent: Some(ticket) };
            let report = run_or_reuse(&step(level, Some(control)), inputs, &dir, device, &format!("level {level} {control}"))?;
            print_row(control.as_str(), &report);
            controls.push((level, control, report));
        }
    }

    let summary = ChainSummary {
        sweep: &sweep.name,
        model: sweep.model.to_string(),
        dataset: sweep.dataset.name.as_str(),
        metric: metric.as_str(),
        rate: &rate,
        seed,
        levels: reports.iter().map(|r| summary(r, if r.level > 0 { rate.at_level(r.level) } else { 0.0 })).collect(),
        controls: controls
            .iter()
            .map(|(level, control, r)| ControlSummary {
                control: *control,
                ticket_accuracy: reports[*level as usize].test_accuracy,
                result: summary(r, rate.at_level(*level)),
            })
            .collect(),
    };
    std::fs::write(out.join("chain.json"), serde_json::to_vec_pretty(&summary)?)?;
    println!("wrote {}/chain.json and level-*/{{report.json,weights.safetensors}}", out.display());
    Ok(LocalRun { levels: reports, controls })
}
