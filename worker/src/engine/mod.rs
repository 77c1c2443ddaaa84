//! The training engine: one lottery-ticket chain step (dense level 0, or prune → rewind → retrain
//! at level L ≥ 1) as a library call, with resumable checkpoints and safetensors artifacts.
//!
//! The contract (`worker/ENGINE.md`): the daemon serialises a [`StepSpec`] as job.json,
//! downloads the [`StepInputs`], runs [`run_step`] in a child process, and uploads the artifacts.
//!
//! # Layout
//! - `models`: the built-in networks, their initialisation and network order; `torchscript`: your
//!   own network from a TorchScript file.
//! - `data`: built-in dataset loaders and the on-device input pipeline; `custom_data`: ImageFolder
//!   and safetensors datasets, and the decoded-image cache.
//! - `prune`: importance metrics, the global threshold, masks as bitsets; `controls`: the reinit and
//!   random-mask controls of a ticket.
//! - `train`: the training loop and SGD; `bundle`: several steps trained as one grouped network
//!   ([`run_bundle`]); `artifacts`: safetensors files; `rng`: the version-stable
//!   random streams; `cuda`: device start-up and autocast; `bench`: throughput measurement.

pub mod artifacts;
pub mod bench;
pub mod bundle;
pub mod controls;
pub mod cuda;
pub mod custom_data;
pub mod data;
pub mod fused;
pub mod graph;
pub mod models;
pub mod prune;
pub mod rng;
pub mod torchscript;
pub mod train;

use anyhow::{bail, Context, Result};
use lth_sweep::result::{LayerResult, LevelResult, UnitStats};
use lth_sweep::{Control, DatasetSpec, ImportanceMetric, ModelSpec, PrunePolicy, Recipe};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

pub use cuda::init_device;
// Whether a step diverged: the domain's rule.
pub use lth_sweep::result::diverged;
pub use models::{InputShape, Network};
pub use prune::{LayerMask, UnitCounts};

/// Everything that determines one chain step's result (serde, so it can travel as job.json).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct StepSpec {
    pub model: ModelSpec,
    pub dataset: DatasetSpec,
    pub recipe: Recipe,
    pub pruning: PrunePolicy,
    pub seed: u64,
    /// None for the dense level 0.
    pub metric: Option<ImportanceMetric>,
    /// 0 for level 0.
    pub rate: f64,
    /// 0 = dense: init θ0, train to θk (rewind point), train to the end.
    pub level: u32,
    /// A control of level `level`'s ticket instead of the ticket itself (see [`controls`]): its
    /// `parent` input is then that ticket's weights, not level − 1's. Absent from job.json when
    /// unset, so ticket steps serialise (and checkpoints match) as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<Control>,
}

/// Artifacts of earlier steps (safetensors files on local disk).
#[derive(Clone, Debug, Default)]
pub struct StepInputs {
    /// θk, produced by the seed's level-0 step (artifact "rewind"); needed for level ≥ 1.
    pub rewind: Option<PathBuf>,
    /// Weights + mask of level L-1 (artifact "weights"); needed for level ≥ 1.
    pub parent: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum StepEvent {
    /// At least once per epoch.
    Progress { iteration: u64, total_iterations: u64, epoch: f64, train_loss: f64, test_accuracy: Option<f64>, images_per_second: f64 },
    /// A resumable checkpoint was just written (atomically).
    Checkpoint { path: PathBuf },
}

/// One step's report: the domain's [`LevelResult`] (what CompleteJob sends and the store
/// records) and the level it is of. `report.json` holds it flat, as before the domain type.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct LevelReport {
    pub level: u32,
    #[serde(flatten)]
    pub result: LevelResult,
}

/// A report reads as its result (`report.test_accuracy`, `report.layers`): the level is the only
/// thing it adds.
impl std::ops::Deref for LevelReport {
    type Target = LevelResult;
    fn deref(&self) -> &LevelResult {
        &self.result
    }
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct StepOutput {
    pub report: LevelReport,
    /// "weights" always (trained weights + the mask); "rewind" for level 0.
    pub artifacts: Vec<(String, PathBuf)>,
}

/// In the workdir; if present at start, run_step resumes from it.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
pub const WEIGHTS_FILE: &str = "weights.safetensors";
pub const REWIND_FILE: &str = "rewind.safetensors";
pub const REPORT_FILE: &str = "report.json";

/// Sets libtorch's intra-op thread count (default: every available core). A fixed count also
/// keeps CPU reductions, hence whole runs, bit-reproducible.
pub fn configure_threads(threads: Option<usize>) -> usize {
    let n = threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)).max(1);
    tch::set_num_threads(n as i32);
    n
}

/// glibc's malloc for a training process: libtorch's CPU tensors come from malloc, and with
/// glibc's defaults every freed block above the (dynamic) mmap threshold or at the top of the heap
/// above 128 KiB goes back to the kernel, so the next step's activations and gradients arrive as
/// fresh pages — ~8,900 page faults per ResNet-20 b32 step (BENCHMARKS.md, "Allocator"). A fixed
/// 32 MiB mmap threshold (glibc's maximum) and a 512 MiB trim threshold keep those blocks in the
/// heap (a training process's footprint is its steady-state peak anyway). Skipped when the
/// environment already tunes malloc (GLIBC_TUNABLES with glibc.malloc.*, MALLOC_*_ variables) or
/// sets LTH_MALLOC_TUNING=0. Returns whether the tuning was applied. (A Rust global allocator
/// would not help: libtorch allocates through malloc, not through Rust.)
pub fn tune_allocator() -> bool {
    let env_tunes = std::env::var("GLIBC_TUNABLES").map(|v| v.contains("glibc.malloc.")).unwrap_or(false)
        || std::env::vars_os().any(|(k, _)| k.to_str().is_some_and(|k| k.starts_with("MALLOC_") && k.ends_with('_')));
    if env_tunes || std::env::var("LTH_MALLOC_TUNING").is_ok_and(|v| v == "0") {
        return false;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes malloc's parameters; called before threads allocate.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1 && libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

impl StepSpec {
    /// Checks what can be checked before loading data, with errors that say what to change.
    pub fn validate(&self, inputs: &StepInputs) -> Result<()> {
        if self.level == 0 {
            if self.metric.is_some() || self.rate != 0.0 {
                bail!("level 0 is the dense run: it takes no metric and rate 0 (got {:?}, {})", self.metric, self.rate);
            }
        } else {
            if self.metric.is_none() {
                bail!("level {} prunes, so it needs an importance metric", self.level);
            }
            if !(self.rate > 0.0 && self.rate < 1.0) {
                bail!("rate {} must be in (0, 1): the fraction of remaining weights pruned per level", self.rate);
            }
            if inputs.rewind.is_none() || inputs.parent.is_none() {
                match self.control {
                    None => bail!("level {} needs the seed's level-0 \"rewind\" artifact and level {}'s \"weights\" artifact", self.level, self.level - 1),
                    Some(c) => bail!("the {c} control of level {} needs the seed's level-0 \"rewind\" artifact and level {}'s \"weights\" (the ticket it controls)", self.level, self.level),
                }
            }
        }
        if self.control.is_some() && self.level == 0 {
            bail!("controls apply to pruned levels (≥ 1); level 0 is the dense network");
        }
        if !(0.0..=1.0).contains(&self.pruning.min_keep_fraction) {
            bail!("pruning.min_keep_fraction {} must be in [0, 1]", self.pruning.min_keep_fraction);
        }
        Ok(())
    }
}

/// The prunable layers of `net` under `policy`, (name, weight), in network order.
pub fn prunable_layers(net: &Network, policy: &PrunePolicy) -> Vec<(String, Tensor)> {
    net.named_parameters().into_iter().filter(|(n, t)| net.is_prunable(n, &t.size(), policy)).collect()
}

fn f64s(t: &Tensor) -> Result<Vec<f64>> {
    Ok(Vec::<f64>::try_from(&t.to_device(Device::Cpu).to_kind(Kind::Double).contiguous().flatten(0, -1))?)
}

/// The prunable layers and the parent's masks of them (all ones where the parent has none).
fn parent_masks(spec: &StepSpec, net: &Network, parent: &HashMap<String, Tensor>) -> Result<Vec<LayerMask>> {
    let layers = prunable_layers(net, &spec.pruning);
    if layers.is_empty() {
        bail!("the pruning policy leaves no prunable layer in {}; check pruning.layers, prune_convs/prune_linears and exclude_layers", spec.model.as_str());
    }
    layers
        .iter()
        .map(|(name, t)| {
            let w = parent.get(name).with_context(|| format!("parent weights lack {name}: produced by another model?"))?;
            if w.size() != t.size() {
                bail!("parent weight {name} has shape {:?}, the model {:?}", w.size(), t.size());
            }
            Ok(match parent.get(&format!("{}{name}", artifacts::MASK_PREFIX)) {
                Some(m) => LayerMask::from_bools(name, &t.size(), &artifacts::bytes_of(m)?.iter().map(|&b| b != 0).collect::<Vec<_>>()),
                None => LayerMask::ones(name, &t.size()),
            })
        })
        .collect()
}

/// Computes the level's masks from the parent's weights and masks, in network order.
///
/// The pruner itself sees the layers in name order: its tie-breaks and the random metric's draws
/// follow layer positions, and name order keeps them (hence every mask) what they were before
/// layers were reported in network order, and independent of how a model lists its layers.
fn prune_from_parent(spec: &StepSpec, net: &Network, parent: &HashMap<String, Tensor>) -> Result<Vec<LayerMask>> {
    let metric = spec.metric.context("pruning needs a metric")?;
    let mut layers = prunable_layers(net, &spec.pruning);
    if layers.is_empty() {
        bail!("the pruning policy leaves no prunable layer in {}; check pruning.layers, prune_convs/prune_linears and exclude_layers", spec.model.as_str());
    }
    let network_order: Vec<String> = layers.iter().map(|(n, _)| n.clone()).collect();
    layers.sort_by(|a, b| a.0.cmp(&b.0));
    let mut weights = Vec::new();
    let mut masks = Vec::new();
    for (name, t) in &layers {
        let w = parent.get(name).with_context(|| format!("parent weights lack {name}: produced by another model?"))?;
        if w.size() != t.size() {
            bail!("parent weight {name} has shape {:?}, the model {:?}", w.size(), t.size());
        }
        let m = match parent.get(&format!("{}{name}", artifacts::MASK_PREFIX)) {
            Some(m) => LayerMask::from_bools(name, &t.size(), &artifacts::bytes_of(m)?.iter().map(|&b| b != 0).collect::<Vec<_>>()),
            None => LayerMask::ones(name, &t.size()),
        };
        weights.push(f64s(w)?);
        masks.push(m);
    }
    let views: Vec<prune::LayerWeights> =
        layers.iter().zip(&weights).zip(&masks).map(|(((n, _), w), m)| prune::LayerWeights { name: n, weights: w, mask: m }).collect();
    let mut pruned = prune::prune(&views, metric, spec.rate, spec.pruning.min_keep_fraction, spec.seed, spec.level)?;
    let mut in_order = Vec::with_capacity(pruned.len());
    for name in &network_order {
        let i = pruned.iter().position(|m| &m.name == name).context("internal error: the pruner lost a layer")?;
        in_order.push(pruned.swap_remove(i));
    }
    Ok(in_order)
}

/// Level ≥ 1 set-up: prunes the parent's weights into new masks, then loads θk into `net`
/// (every variable, BN statistics included). The caller installs the masks, which zeroes the
/// pruned weights, so survivors start exactly at θk.
///
/// For a control step (`spec.control`), the masks come from the controlled ticket instead (see
/// [`controls`]): `reinit` keeps them and leaves `net` as built (the caller built it from
/// [`init_seed`]); `random_mask` redraws them and loads θk.
pub fn prune_and_rewind(spec: &StepSpec, inputs: &StepInputs, net: &Network) -> Result<Vec<LayerMask>> {
    spec.validate(inputs)?;
    let parent = artifacts::read(inputs.parent.as_deref().context("level ≥ 1 needs the parent's weights")?)?;
    let masks = match spec.control {
        None => prune_from_parent(spec, net, &parent)?,
        Some(Control::Reinit) => return parent_masks(spec, net, &parent),
        Some(Control::RandomMask) => controls::random_masks(&parent_masks(spec, net, &parent)?, spec.seed, spec.level),
    };
    let rewind = artifacts::read(inputs.rewind.as_deref().context("level ≥ 1 needs the rewind artifact")?)?;
    artifacts::load_variables(&net.named_variables(), &rewind, "", "rewind artifact")?;
    Ok(masks)
}

/// The seed a step's network is initialised from: the trial's, or the `reinit` control's own.
pub fn init_seed(spec: &StepSpec) -> u64 {
    match spec.control {
        Some(Control::Reinit) => controls::reinit_seed(spec.seed, spec.level),
        _ => spec.seed,
    }
}

/// The model a step builds: the spec's, except that a `reinit` control of a TorchScript model
/// kept at its file's values (`init = "file"`) draws a fresh initialisation all the same.
fn model_of(spec: &StepSpec) -> ModelSpec {
    match (&spec.model, spec.control) {
        (ModelSpec::TorchScript(t), Some(Control::Reinit)) => {
            ModelSpec::TorchScript(lth_sweep::TorchScriptModel { init: lth_sweep::ModelInit::Seed, ..t.clone() })
        }
        (m, _) => m.clone(),
    }
}

fn spec_bytes(spec: &StepSpec) -> Vec<u8> {
    serde_json::to_vec(spec).expect("StepSpec serialises")
}

/// Host copies of variables (θk kept for later checkpoints).
fn snapshot(vars: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    // `copy`: on CPU `to_device` would alias the live weights, which keep training.
    vars.iter().map(|(n, t)| (n.clone(), t.detach().to_device(Device::Cpu).contiguous().copy())).collect()
}

fn write_checkpoint(path: &Path, spec: &StepSpec, tr: &train::Trainer, progress: &train::Progress, rewind: Option<&[(String, Tensor)]>) -> Result<()> {
    let mut t: Vec<(String, Tensor)> = Vec::new();
    // θk travels inside level-0 checkpoints taken after k, so a job resumed in a fresh workdir
    // (another node, only the checkpoint downloaded) can still publish its "rewind" artifact.
    for (n, v) in rewind.unwrap_or(&[]) {
        t.push((format!("rewind.{n}"), v.shallow_clone()));
    }
    for (n, v) in tr.net.named_variables() {
        t.push((format!("model.{n}"), v));
    }
    for ((n, _), b) in tr.params.iter().zip(&tr.momentum) {
        t.push((format!("momentum.{n}"), b.shallow_clone()));
    }
    for m in &tr.masks {
        t.push((format!("{}{}", artifacts::MASK_PREFIX, m.name), m.mask.to_kind(Kind::Uint8)));
    }
    t.push(("state.iteration".into(), artifacts::scalar_i64(progress.iteration as i64)));
    t.push(("state.loss_sum".into(), progress.loss_sum.reshape([1])));
    t.push(("state.loss_steps".into(), artifacts::scalar_i64(progress.loss_steps as i64)));
    t.push(("state.spec".into(), Tensor::from_slice(&spec_bytes(spec))));
    artifacts::write_atomic(path, &t)
}

/// The per-layer result of one mask: counts, bits and dead units.
pub fn layer_report(m: &LayerMask, weight_norm: f64, output_layer: bool) -> LayerResult {
    let u = m.units();
    LayerResult {
        name: m.name.clone(),
        kept: m.kept,
        total: m.total,
        collapsed: m.kept == 0,
        bits: m.bits.clone(),
        weight_norm,
        // No output units (a weight of rank 0) reads as "not reported", as on the wire.
        units: (u.outputs > 0).then_some(UnitStats {
            outputs: u.outputs,
            dead_outputs: u.dead_outputs,
            inputs: u.inputs,
            dead_inputs: u.dead_inputs,
            output_layer,
        }),
    }
}

/// The classifier's weight: the last parameter of rank ≥ 2 in network order, if it has one output
/// per class (`fc.weight` in every built-in model).
pub fn classifier_name(net: &Network, classes: i64) -> Option<String> {
    net.named_parameters().into_iter().rev().find(|(_, t)| t.dim() >= 2).filter(|(_, t)| t.size()[0] == classes).map(|(n, _)| n)
}

fn masks_of(tr: &train::Trainer) -> Result<Vec<(String, Vec<u8>)>> {
    tr.masks.iter().map(|m| Ok((m.name.clone(), artifacts::bytes_of(&m.mask.contiguous())?))).collect()
}

/// Runs one chain step in `workdir` (created if missing), resuming from its checkpoint if present.
pub fn run_step(spec: &StepSpec, inputs: &StepInputs, workdir: &Path, device: Device, on_event: &mut dyn FnMut(StepEvent)) -> Result<StepOutput> {
    let started = std::time::Instant::now();
    spec.validate(inputs)?;
    std::fs::create_dir_all(workdir).with_context(|| format!("creating workdir {}", workdir.display()))?;
    let data = data::load(&spec.dataset, device).with_context(|| format!("loading dataset {}", spec.dataset.name.as_str()))?;
    let net = Network::new(model_of(spec), data.shape, data.classes, device, init_seed(spec))?;
    let mut tr = train::Trainer::new(&net, &data, &spec.recipe, spec.seed, device)?;
    let ipe = tr.iterations_per_epoch;
    let total = tr.total_iterations;
    let rewind_it = check_rewind(spec, ipe, total)?;
    let paths = StepPaths::new(workdir);
    let start_it = if spec.level == 0 { 0 } else { rewind_it };
    let (mut progress, mut rewind_snapshot) = start_state(spec, inputs, &net, &mut tr, &paths, start_it, rewind_it, device)?;

    if spec.level == 0 && rewind_it == 0 && progress.iteration == 0 {
        let theta0 = snapshot(&net.named_variables());
        artifacts::write_atomic(&paths.rewind, &theta0)?;
        rewind_snapshot = Some(theta0);
    }
    let every = spec.recipe.checkpoint_every.iterations(ipe);
    let mut last = (f64::NAN, f64::NAN, f64::NAN);
    let level = spec.level;
    let mut hook = |tr: &train::Trainer, h: train::StepHook| -> Result<()> {
        match h {
            train::StepHook::Stepped(p) => {
                if level == 0 && p.iteration == rewind_it {
                    let theta_k = snapshot(&tr.net.named_variables());
                    artifacts::write_atomic(&paths.rewind, &theta_k)?;
                    rewind_snapshot = Some(theta_k);
                }
                if every > 0 && p.iteration % every == 0 && p.iteration < total {
                    write_checkpoint(&paths.checkpoint, spec, tr, p, rewind_snapshot.as_deref())?;
                    on_event(StepEvent::Checkpoint { path: paths.checkpoint.clone() });
                }
            }
            train::StepHook::EpochEnd { progress: p, train_loss, test_accuracy, test_loss, images_per_second } => {
                last = (train_loss, test_accuracy, test_loss);
                on_event(progress_event(p, total, ipe, train_loss, test_accuracy, images_per_second));
            }
        }
        Ok(())
    };
    tr.run(&mut progress, total, &mut hook)?;

    // The final numbers: evaluate once more unless the last step closed an epoch.
    let finals = if last.1.is_nan() || total % ipe != 0 {
        let tl = if progress.loss_steps > 0 { progress.loss_sum.double_value(&[]) / progress.loss_steps as f64 } else { last.0 };
        let (a, l) = tr.evaluate()?;
        (tl, a, l)
    } else {
        last
    };
    finish_step(spec, &tr, &paths, start_it, progress.iteration, started, finals)
}

/// The rewind iteration k, checked to come before the end of training.
fn check_rewind(spec: &StepSpec, ipe: u64, total: u64) -> Result<u64> {
    let rewind_it = spec.recipe.rewind.iterations(ipe);
    if rewind_it >= total {
        bail!("rewind point {} ({rewind_it} iterations) must come before the end of training ({} = {total} iterations)", spec.recipe.rewind, spec.recipe.length);
    }
    Ok(rewind_it)
}

/// The files of one step's workdir.
struct StepPaths {
    workdir: PathBuf,
    rewind: PathBuf,
    checkpoint: PathBuf,
}

impl StepPaths {
    fn new(workdir: &Path) -> Self {
        StepPaths { workdir: workdir.to_path_buf(), rewind: workdir.join(REWIND_FILE), checkpoint: workdir.join(CHECKPOINT_FILE) }
    }
}

fn progress_event(p: &train::Progress, total: u64, ipe: u64, train_loss: f64, test_accuracy: f64, images_per_second: f64) -> StepEvent {
    StepEvent::Progress {
        iteration: p.iteration,
        total_iterations: total,
        epoch: p.iteration as f64 / ipe as f64,
        train_loss,
        test_accuracy: Some(test_accuracy),
        images_per_second,
    }
}

/// Host copies of a network's variables (θk).
type Snapshot = Vec<(String, Tensor)>;

/// A step's initial state: θ0's masks (level 0) or parent → prune → rewind (level ≥ 1) installed
/// in `tr`, then its checkpoint resumed if the workdir has one. Returns the progress and, for a
/// level-0 step resumed past k, θk.
#[allow(clippy::too_many_arguments)]
fn start_state(
    spec: &StepSpec,
    inputs: &StepInputs,
    net: &Network,
    tr: &mut train::Trainer,
    paths: &StepPaths,
    start_it: u64,
    rewind_it: u64,
    device: Device,
) -> Result<(train::Progress, Option<Snapshot>)> {
    let prunable = prunable_layers(net, &spec.pruning);
    if spec.level == 0 {
        let ones: Vec<(String, Vec<u8>)> = prunable.iter().map(|(n, t)| (n.clone(), vec![1u8; t.numel()])).collect();
        tr.set_masks(&ones)?;
    } else {
        let masks = prune_and_rewind(spec, inputs, net)?;
        tr.set_masks(&masks.iter().map(|m| (m.name.clone(), m.to_bytes())).collect::<Vec<_>>())?;
    }
    let mut progress = tr.fresh_progress(start_it);
    let mut rewind_snapshot = None;
    let ckpt_path = &paths.checkpoint;
    if ckpt_path.exists() {
        let ck = artifacts::read(ckpt_path)?;
        let saved = ck.get("state.spec").map(artifacts::bytes_of).transpose()?.unwrap_or_default();
        if saved != spec_bytes(spec) {
            bail!("{} was written for a different step spec; delete it (or use another workdir) to start this step afresh", ckpt_path.display());
        }
        artifacts::load_variables(&net.named_variables(), &ck, "model.", "checkpoint")?;
        let names: Vec<(String, Tensor)> = tr.params.iter().map(|(n, _)| n.clone()).zip(tr.momentum.iter().map(|b| b.shallow_clone())).collect();
        artifacts::load_variables(&names, &ck, "momentum.", "checkpoint")?;
        let mut masks = Vec::new();
        for (n, _) in &prunable {
            let m = ck.get(&format!("{}{n}", artifacts::MASK_PREFIX)).with_context(|| format!("checkpoint lacks the mask of {n}"))?;
            masks.push((n.clone(), artifacts::bytes_of(m)?));
        }
        tr.set_masks(&masks)?;
        progress.iteration = artifacts::get_i64(&ck, "state.iteration")? as u64;
        eprintln!("lth-worker: resuming from {} at iteration {}", ckpt_path.display(), progress.iteration);
        progress.loss_steps = artifacts::get_i64(&ck, "state.loss_steps")? as u64;
        progress.loss_sum = ck.get("state.loss_sum").context("checkpoint lacks state.loss_sum")?.reshape([]).to_kind(Kind::Float).to_device(device);
        if spec.level == 0 && progress.iteration >= rewind_it {
            let names: Vec<(String, Tensor)> = net.named_variables();
            let mut theta_k = Vec::new();
            for (n, _) in &names {
                match ck.get(&format!("rewind.{n}")) {
                    Some(t) => theta_k.push((n.clone(), t.shallow_clone())),
                    None => bail!("{} is past the rewind point but holds no θk (rewind.*); delete it to restart the step", ckpt_path.display()),
                }
            }
            if !paths.rewind.exists() {
                artifacts::write_atomic(&paths.rewind, &theta_k)?;
            }
            rewind_snapshot = Some(theta_k);
        }
    }
    Ok((progress, rewind_snapshot))
}

/// Writes a trained step's weights (with masks) and report, removes its checkpoint, and lists its
/// artifacts. `finals` = (train loss, test accuracy, test loss); `end_it` is the iteration
/// training stopped at (the end, or where a bundled member diverged).
fn finish_step(
    spec: &StepSpec,
    tr: &train::Trainer,
    paths: &StepPaths,
    start_it: u64,
    end_it: u64,
    started: std::time::Instant,
    finals: (f64, f64, f64),
) -> Result<StepOutput> {
    let (train_loss, test_accuracy, test_loss) = finals;
    let net = tr.net;
    let masks = masks_of(tr)?;
    let mut out: Vec<(String, Tensor)> = net.named_variables();
    let vars = net.vs.variables();
    let classifier = classifier_name(net, tr.data.classes);
    let mut layers = Vec::new();
    for (name, bytes) in &masks {
        let w = &vars[name];
        out.push((format!("{}{name}", artifacts::MASK_PREFIX), Tensor::from_slice(bytes).reshape(w.size())));
        let m = LayerMask::from_bools(name, &w.size(), &bytes.iter().map(|&b| b != 0).collect::<Vec<_>>());
        layers.push(layer_report(&m, w.to_kind(Kind::Double).norm().double_value(&[]), classifier.as_deref() == Some(name.as_str())));
    }
    let weights_path = paths.workdir.join(WEIGHTS_FILE);
    artifacts::write_atomic(&weights_path, &out)?;
    let kept: u64 = layers.iter().map(|l| l.kept).sum();
    let all: u64 = layers.iter().map(|l| l.total).sum();
    let diverged = diverged(train_loss, test_loss, layers.iter().map(|l| l.weight_norm));
    if diverged {
        eprintln!("exec-job: training diverged (train loss {train_loss}, test loss {test_loss}); reporting the level as diverged");
    }
    let report = LevelReport {
        level: spec.level,
        result: LevelResult {
            sparsity: if all > 0 { 1.0 - kept as f64 / all as f64 } else { 0.0 },
            test_accuracy,
            test_loss,
            train_loss,
            epochs: (end_it - start_it) as f64 / tr.iterations_per_epoch as f64,
            wall_seconds: started.elapsed().as_secs_f64(),
            iterations: end_it - start_it,
            layers,
            // The daemon knows its slot's device and fills it in.
            device: String::new(),
            diverged,
        },
    };
    std::fs::write(paths.workdir.join(REPORT_FILE), serde_json::to_vec_pretty(&report)?)?;
    let _ = std::fs::remove_file(&paths.checkpoint);
    let mut artifacts_out = vec![("weights".to_string(), weights_path)];
    if spec.level == 0 {
        if !paths.rewind.exists() {
            bail!("internal error: level 0 finished without writing {}", paths.rewind.display());
        }
        artifacts_out.push(("rewind".to_string(), paths.rewind.clone()));
    }
    Ok(StepOutput { report, artifacts: artifacts_out })
}

/// One member of a bundle: a step with its inputs and its own workdir.
#[derive(Clone, Debug)]
pub struct BundleMember {
    pub spec: StepSpec,
    pub inputs: StepInputs,
    pub workdir: PathBuf,
}

/// Why `members` cannot train as one bundle (they must share model, dataset, recipe and seed, be
/// pruned levels ≥ 1 — level 0 is one step per seed — and use a built-in model), or None.
pub fn bundle_incompatibility(members: &[BundleMember]) -> Option<String> {
    let first = &members.first()?.spec;
    if !bundle::bundleable(&first.model) {
        return Some(format!("{} is a TorchScript model; only built-in models can be bundled", first.model.as_str()));
    }
    for m in members {
        let s = &m.spec;
        if s.level == 0 {
            return Some("level 0 (the dense run) is one step per seed and is not bundled".into());
        }
        if s.model != first.model || s.dataset != first.dataset || s.recipe != first.recipe || s.seed != first.seed {
            return Some("bundle members must share model, dataset, recipe and seed".into());
        }
    }
    None
}

/// Trains several chain steps as one bundle ([`bundle`]): each member is set up, checkpointed
/// and finished exactly as by [`run_step`] in its own workdir, and gets its own result. A member
/// whose set-up fails (say, a missing parent) gets its error and the others train; a member
/// that diverges is reported diverged and the others go on. `on_event(i, event)` reports member
/// i's events. The outer error is for the bundle as a whole (its members cannot share a
/// network, or the dataset does not load).
pub fn run_bundle(members: &[BundleMember], device: Device, on_event: &mut dyn FnMut(usize, StepEvent)) -> Result<Vec<Result<StepOutput>>> {
    let started = std::time::Instant::now();
    if let Some(why) = bundle_incompatibility(members) {
        bail!("{why}");
    }
    let lead = &members[0].spec;
    let data = data::load(&lead.dataset, device).with_context(|| format!("loading dataset {}", lead.dataset.name.as_str()))?;
    let mut results: Vec<Option<Result<StepOutput>>> = members.iter().map(|_| None).collect();
    let mut nets = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let built = m.spec.validate(&m.inputs).and_then(|()| {
            std::fs::create_dir_all(&m.workdir).with_context(|| format!("creating workdir {}", m.workdir.display()))?;
            Network::new(model_of(&m.spec), data.shape, data.classes, device, init_seed(&m.spec))
        });
        match built {
            Ok(net) => nets.push((i, net)),
            Err(e) => results[i] = Some(Err(e)),
        }
    }
    // Set-up per member; `slots[j]` is the member index of bundle position j.
    let mut slots = Vec::new();
    let mut trainers = Vec::new();
    let mut progress = Vec::new();
    let mut start_it = 0;
    let mut alone = Vec::new();
    for (i, net) in &nets {
        let m = &members[*i];
        let setup = (|| -> Result<_> {
            let mut tr = train::Trainer::new(net, &data, &m.spec.recipe, m.spec.seed, device)?;
            let rewind_it = check_rewind(&m.spec, tr.iterations_per_epoch, tr.total_iterations)?;
            let (p, _) = start_state(&m.spec, &m.inputs, net, &mut tr, &StepPaths::new(&m.workdir), rewind_it, rewind_it, device)?;
            Ok((tr, p, rewind_it))
        })();
        match setup {
            Ok((tr, p, rewind_it)) => {
                if let Some(other) = progress.first().map(|q: &train::Progress| q.iteration) {
                    if p.iteration != other {
                        // Checkpoints at different iterations (each member uploads its own as it
                        // goes, so a handback or a crash can leave them apart): this one cannot
                        // join, and trains alone after the bundle from its own checkpoint, so
                        // that a handback never costs its job an attempt.
                        tracing::info!(job_checkpoint = p.iteration, bundle_checkpoint = other, member = *i, "bundle member resumes alone: its checkpoint is at another iteration");
                        alone.push(*i);
                        continue;
                    }
                }
                start_it = rewind_it;
                slots.push(*i);
                trainers.push(tr);
                progress.push(p);
            }
            Err(e) => results[*i] = Some(Err(e)),
        }
    }
    if !trainers.is_empty() {
        let mut bt = bundle::BundleTrainer::new(trainers)?;
        let ipe = bt.iterations_per_epoch();
        let total = bt.total_iterations();
        let every = lead.recipe.checkpoint_every.iterations(ipe);
        let mut last = vec![(f64::NAN, f64::NAN, f64::NAN); slots.len()];
        let paths: Vec<StepPaths> = slots.iter().map(|&i| StepPaths::new(&members[i].workdir)).collect();
        let mut hook = |tr: &train::Trainer, j: usize, h: train::StepHook| -> Result<()> {
            let i = slots[j];
            match h {
                train::StepHook::Stepped(p) => {
                    if every > 0 && p.iteration % every == 0 && p.iteration < total {
                        write_checkpoint(&paths[j].checkpoint, &members[i].spec, tr, p, None)?;
                        on_event(i, StepEvent::Checkpoint { path: paths[j].checkpoint.clone() });
                    }
                }
                train::StepHook::EpochEnd { progress: p, train_loss, test_accuracy, test_loss, images_per_second } => {
                    last[j] = (train_loss, test_accuracy, test_loss);
                    on_event(i, progress_event(p, total, ipe, train_loss, test_accuracy, images_per_second));
                }
            }
            Ok(())
        };
        bt.run(&mut progress, total, &mut hook)?;
        // Final numbers of the members that reached the end, unless the last step closed an epoch.
        if total % ipe != 0 || last.iter().any(|l| l.1.is_nan()) {
            let evals = bt.evaluate()?;
            for (k, &j) in bt.active.iter().enumerate() {
                let p = &progress[j];
                let tl = if p.loss_steps > 0 { p.loss_sum.double_value(&[]) / p.loss_steps as f64 } else { last[j].0 };
                last[j] = (tl, evals[k].0, evals[k].1);
            }
        }
        for (j, &i) in slots.iter().enumerate() {
            results[i] = Some(finish_step(&members[i].spec, &bt.members[j], &paths[j], start_it, progress[j].iteration, started, last[j]));
        }
    }
    drop(nets);
    for i in alone {
        let m = &members[i];
        results[i] = Some(run_step(&m.spec, &m.inputs, &m.workdir, device, &mut |e| on_event(i, e)));
    }
    Ok(results.into_iter().map(|r| r.expect("every member has a result")).collect())
}
