//! The training loop: SGD with momentum / Nesterov / weight decay on momentum buffers of our own
//! (so that they are ours to checkpoint) — libtorch's fused `_fused_sgd_` through the C++ shim
//! (`engine::fused`), or per-tensor tensor ops as the fallback —, step and cosine schedules with
//! linear warmup, masks re-applied after every optimizer step, autocast and channels-last on CUDA, and no host
//! synchronisation inside an epoch (the loss is summed on the device and read once per epoch).

use super::cuda;
use super::fused::FusedStep;
use super::graph::{GraphedStep, Outcome};
use super::data::Dataset;
use super::models::{self, Network};
use anyhow::{bail, Result};
use lth_sweep::{LrSchedule, Precision, Recipe};
use tch::{Device, Kind, Tensor};

/// The learning rate at iteration `it` (0-based) of a run of `total` iterations.
///
/// Warmup is open_lth's: lr × min(1, it / warmup). Step: × gamma for every milestone reached.
/// Cosine: × ½(1 + cos(π · it / total)).
pub fn learning_rate(recipe: &Recipe, it: u64, iterations_per_epoch: u64, total: u64) -> f64 {
    let warm = recipe.warmup.iterations(iterations_per_epoch);
    let w = if warm > 0 { (it as f64 / warm as f64).min(1.0) } else { 1.0 };
    let s = match &recipe.schedule {
        LrSchedule::Constant => 1.0,
        LrSchedule::Step { milestones, gamma } => {
            let reached = milestones.iter().filter(|m| it >= m.iterations(iterations_per_epoch)).count();
            gamma.powi(reached as i32)
        }
        LrSchedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * it as f64 / total.max(1) as f64).cos()),
    };
    recipe.lr * w * s
}

/// The network's forward pass, under CUDA autocast to `autocast` when set.
pub(crate) fn forward_with(net: &Network, autocast: Option<i8>, x: &Tensor, train: bool) -> Result<Tensor> {
    match autocast {
        Some(dt) => cuda::with_autocast(dt, || net.forward_t(x, train)),
        None => Ok(net.forward_t(x, train)),
    }
}

/// One prunable weight and its mask on the device (float 0/1, same layout as the weight).
pub struct DeviceMask {
    pub name: String,
    pub weight: Tensor,
    pub mask: Tensor,
}

/// How the optimizer step, the mask multiply and the gradient zeroing run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepImpl {
    /// One `at::_fused_sgd_` over all parameters and `at::_foreach_mul_` for the masks (the
    /// shim), gradients set to none before backward; the optimizer allocates nothing per step. Falls back
    /// to `PerTensor`, with one log line, where the shim refuses the tensors.
    Fused,
    /// The reference: per-parameter tensor ops (d = g + wd·p; buf = m·buf + d; …), one multiply
    /// per mask, one zero_ per gradient.
    PerTensor,
}

impl StepImpl {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "fused" => Ok(StepImpl::Fused),
            "per-tensor" | "per_tensor" => Ok(StepImpl::PerTensor),
            _ => bail!("unknown step implementation {s:?} (expected fused or per-tensor)"),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StepImpl::Fused => "fused",
            StepImpl::PerTensor => "per-tensor",
        }
    }
}

/// The mutable state of a training run that a checkpoint must capture beyond the variables.
pub struct Progress {
    /// Optimizer steps done (absolute: a level ≥ 1 starts at the rewind point k).
    pub iteration: u64,
    /// Sum of the per-step losses of the current epoch, on the device.
    pub loss_sum: Tensor,
    pub loss_steps: u64,
}

/// Everything needed to run optimizer steps on one network and dataset.
pub struct Trainer<'a> {
    pub net: &'a Network,
    pub data: &'a Dataset,
    pub recipe: &'a Recipe,
    pub seed: u64,
    pub device: Device,
    pub params: Vec<(String, Tensor)>,
    pub momentum: Vec<Tensor>,
    pub masks: Vec<DeviceMask>,
    pub iterations_per_epoch: u64,
    pub total_iterations: u64,
    pub channels_last: bool,
    /// c10 scalar type for CUDA autocast, when training in reduced precision.
    pub autocast: Option<i8>,
    /// Static loss scale for fp16 (gradients are unscaled inside the SGD step).
    pub loss_scale: f64,
    /// The step's implementation (default `Fused`); see `step_impl_in_use` for what runs.
    pub step_impl: StepImpl,
    /// The shim's lists (built on the first fused step; dropped when the masks change).
    fused: Option<FusedStep>,
    /// Why the shim refused these tensors (then the per-tensor step runs).
    fused_refused: Option<String>,
    /// The CUDA graph of the step (CUDA, `recipe.cuda_graph`, fused step; dropped when the masks
    /// change), and why it is not used when it could not be (logged once; eager steps then).
    graph: Option<GraphedStep>,
    graph_refused: Option<String>,
}

/// What the training loop reports after each step, for the caller's bookkeeping.
pub enum StepHook<'p> {
    /// One optimizer step finished; `progress.iteration` is the number of steps done.
    Stepped(&'p Progress),
    /// An epoch finished: mean train loss, test accuracy/loss, images/s over the epoch.
    EpochEnd { progress: &'p Progress, train_loss: f64, test_accuracy: f64, test_loss: f64, images_per_second: f64 },
}

impl<'a> Trainer<'a> {
    pub fn new(net: &'a Network, data: &'a Dataset, recipe: &'a Recipe, seed: u64, device: Device) -> Result<Self> {
        let batch = recipe.batch_size as i64;
        if batch < 1 {
            bail!("batch_size must be at least 1");
        }
        if data.train_len() < batch {
            bail!("batch_size {batch} is larger than the training set ({} images); lower batch_size", data.train_len());
        }
        if !(recipe.lr.is_finite() && recipe.lr > 0.0) {
            bail!("lr must be a positive number, got {}", recipe.lr);
        }
        // Incomplete final batches are dropped: every step sees the same batch shape (cuDNN
        // benchmark picks one algorithm) and an epoch is exactly floor(N / batch) steps.
        let ipe = (data.train_len() / batch) as u64;
        let total = recipe.length.iterations(ipe);
        if total == 0 {
            bail!("training length {} is zero iterations", recipe.length);
        }
        let cuda = device.is_cuda();
        let channels_last = cuda && recipe.channels_last && net.kind != lth_sweep::ModelKind::Lenet300100;
        if channels_last {
            net.to_channels_last();
        }
        let autocast = match (cuda, recipe.precision) {
            (true, Precision::Bf16) => Some(cuda::SCALAR_BFLOAT16),
            (true, Precision::Fp16) => Some(cuda::SCALAR_HALF),
            _ => None,
        };
        if cuda {
            tch::Cuda::cudnn_set_benchmark(true);
        }
        let params = net.named_parameters();
        let momentum = params.iter().map(|(_, p)| p.zeros_like()).collect();
        Ok(Trainer {
            net,
            data,
            recipe,
            seed,
            device,
            params,
            momentum,
            masks: Vec::new(),
            iterations_per_epoch: ipe,
            total_iterations: total,
            channels_last,
            autocast,
            loss_scale: if autocast == Some(cuda::SCALAR_HALF) { 128.0 } else { 1.0 },
            step_impl: StepImpl::Fused,
            fused: None,
            fused_refused: None,
            graph: None,
            graph_refused: None,
        })
    }

    /// Installs keep-masks (name → 0/1 bytes in the weight's shape) and zeroes pruned weights.
    pub fn set_masks(&mut self, masks: &[(String, Vec<u8>)]) -> Result<()> {
        let vars = self.net.vs.variables();
        self.masks.clear();
        self.fused = None;
        self.fused_refused = None;
        // The graph captured the old masks' memory.
        self.graph = None;
        for (name, bytes) in masks {
            let Some(w) = vars.get(name) else { bail!("mask for unknown layer {name}") };
            if bytes.len() != w.numel() {
                bail!("mask for {name} has {} entries, the weight {}", bytes.len(), w.numel());
            }
            let m = Tensor::from_slice(bytes).reshape(w.size()).to_kind(Kind::Float).to_device(self.device);
            let m = if w.dim() == 4 && self.channels_last { models::to_channels_last(&m) } else { m };
            self.masks.push(DeviceMask { name: name.clone(), weight: w.shallow_clone(), mask: m });
        }
        self.apply_masks();
        Ok(())
    }

    pub fn apply_masks(&self) {
        tch::no_grad(|| {
            for m in &self.masks {
                let mut w = m.weight.shallow_clone();
                let _ = w.g_mul_(&m.mask);
            }
        });
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        forward_with(self.net, self.autocast, x, train)
    }

    /// One SGD step (PyTorch's formulation, dampening 0):
    /// d = g + wd·p; buf = m·buf + d; d = nesterov ? d + m·buf : buf; p -= lr·d.
    pub(crate) fn sgd_step(&mut self, lr: f64) {
        let (wd, mom, nesterov) = (self.recipe.weight_decay, self.recipe.momentum, self.recipe.nesterov);
        let inv_scale = 1.0 / self.loss_scale;
        tch::no_grad(|| {
            for ((_, p), buf) in self.params.iter().zip(self.momentum.iter_mut()) {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let mut d = if inv_scale != 1.0 { g * inv_scale } else { g };
                if wd != 0.0 {
                    d = d + p * wd;
                }
                let step = if mom != 0.0 {
                    let _ = buf.g_mul_scalar_(mom);
                    let _ = buf.g_add_(&d);
                    if nesterov { d + &*buf * mom } else { buf.shallow_clone() }
                } else {
                    d
                };
                let mut p = p.shallow_clone();
                let _ = p.g_sub_(&(step * lr));
            }
        });
    }

    pub(crate) fn zero_grad(&self) {
        for (_, p) in &self.params {
            let mut p = p.shallow_clone();
            p.zero_grad();
        }
    }

    /// The shim's step for the current parameters and masks, built on first use; None where the
    /// per-tensor path runs (chosen, or the shim refused these tensors: logged once).
    fn fused_step(&mut self) -> Option<&mut FusedStep> {
        if self.step_impl != StepImpl::Fused || self.fused_refused.is_some() {
            return None;
        }
        if self.fused.is_none() {
            let weights: Vec<&Tensor> = self.masks.iter().map(|m| &m.weight).collect();
            let masks: Vec<&Tensor> = self.masks.iter().map(|m| &m.mask).collect();
            match FusedStep::checked(&self.params, &self.momentum, &weights, &masks, self.loss_scale) {
                Ok(f) => self.fused = Some(f),
                Err(e) => {
                    eprintln!("lth-worker: fused SGD not used ({e:#}); training with the per-tensor step");
                    self.fused_refused = Some(format!("{e:#}"));
                    return None;
                }
            }
        }
        self.fused.as_mut()
    }

    /// What the next step runs: `Fused` only where it was asked for and the shim accepted the tensors.
    pub fn step_impl_in_use(&mut self) -> StepImpl {
        if self.fused_step().is_some() { StepImpl::Fused } else { StepImpl::PerTensor }
    }

    /// Whether the step runs as a CUDA graph (captured already, or warming up to be).
    pub fn graph_in_use(&self) -> bool {
        self.graph.is_some() && self.graph_refused.is_none()
    }

    fn graph_wanted(&self) -> bool {
        self.device.is_cuda() && self.recipe.cuda_graph && self.step_impl == StepImpl::Fused && self.graph_refused.is_none()
    }

    /// The step through the CUDA graph (`engine::graph`): zero the gradients in place, forward,
    /// backward, SGD with the learning rate on the device, masks.
    fn graph_step(&mut self, x: &Tensor, y: &Tensor, lr: f64) -> Result<Outcome> {
        if self.fused_step().is_none() {
            return Ok(Outcome::Refused(anyhow::anyhow!("the fused step is not in use")));
        }
        if self.graph.is_none() {
            match GraphedStep::new(self.device, x, y) {
                Ok(g) => self.graph = Some(g),
                Err(e) => return Ok(Outcome::Refused(e)),
            }
        }
        let (wd, mom, nesterov) = (self.recipe.weight_decay, self.recipe.momentum, self.recipe.nesterov);
        let (net, autocast, loss_scale) = (self.net, self.autocast, self.loss_scale);
        let fused = self.fused.as_mut().expect("built by fused_step");
        let graph = self.graph.as_mut().expect("built above");
        let mut body = |x: &Tensor, y: &Tensor, lr: &Tensor| -> Result<Tensor> {
            fused.zero_grad()?;
            let out = forward_with(net, autocast, x, true)?;
            let loss = out.to_kind(Kind::Float).cross_entropy_for_logits(y);
            if loss_scale != 1.0 {
                (&loss * loss_scale).backward();
            } else {
                loss.backward();
            }
            fused.sgd_tensor_lr(wd, mom, lr, nesterov)?;
            fused.apply_masks()?;
            Ok(loss.detach())
        };
        graph.step(x, y, lr, &mut body)
    }

    /// One optimizer step on a prepared batch, masks re-applied; returns the (device) loss.
    pub fn train_step(&mut self, x: &Tensor, y: &Tensor, lr: f64) -> Result<Tensor> {
        if self.graph_wanted() {
            match self.graph_step(x, y, lr)? {
                Outcome::Ran(loss) => return Ok(loss),
                Outcome::Refused(e) => {
                    eprintln!("lth-worker: CUDA graph not used ({e:#}); training with eager steps");
                    self.graph = None;
                    self.graph_refused = Some(format!("{e:#}"));
                }
            }
        }
        let out = self.forward(x, true)?;
        let loss = out.to_kind(Kind::Float).cross_entropy_for_logits(y);
        let (wd, mom, nesterov) = (self.recipe.weight_decay, self.recipe.momentum, self.recipe.nesterov);
        let loss_scale = self.loss_scale;
        if let Some(f) = self.fused_step() {
            // Gradients set to none (PyTorch's zero_grad default): backward stores its result as
            // the gradient instead of adding it to zeros — one memset and one add pass fewer per
            // parameter (LeNet b128: 1.97 → 1.72 ms CPU per step, BENCHMARKS.md).
            f.clear_grad()?;
            if loss_scale != 1.0 {
                (&loss * loss_scale).backward();
            } else {
                loss.backward();
            }
            f.sgd(wd, mom, lr, nesterov)?;
            f.apply_masks()?;
            return Ok(loss.detach());
        }
        self.zero_grad();
        if self.loss_scale != 1.0 {
            (&loss * self.loss_scale).backward();
        } else {
            loss.backward();
        }
        self.sgd_step(lr);
        self.apply_masks();
        Ok(loss.detach())
    }

    /// Top-1 accuracy and mean cross-entropy on the test split (one host sync at the end).
    pub fn evaluate(&self) -> Result<(f64, f64)> {
        let n = self.data.test_len();
        let chunk = 1000;
        let mut correct = Tensor::zeros([], (Kind::Int64, self.device));
        let mut loss = Tensor::zeros([], (Kind::Double, self.device));
        tch::no_grad(|| -> Result<()> {
            let mut start = 0;
            while start < n {
                let len = chunk.min(n - start);
                let x = self.data.normalise(&self.data.test_images.narrow(0, start, len), self.channels_last);
                let y = self.data.test_labels.narrow(0, start, len);
                let out = self.forward(&x, false)?.to_kind(Kind::Float);
                correct += out.argmax(1, false).eq_tensor(&y).sum(Kind::Int64);
                loss += out.cross_entropy_for_logits(&y).to_kind(Kind::Double) * (len as f64);
                start += len;
            }
            Ok(())
        })?;
        Ok((correct.int64_value(&[]) as f64 / n as f64, loss.double_value(&[]) / n as f64))
    }

    pub fn fresh_progress(&self, iteration: u64) -> Progress {
        Progress { iteration, loss_sum: Tensor::zeros([], (Kind::Float, self.device)), loss_steps: 0 }
    }

    /// Trains from `progress.iteration` to `end`, calling `hook` after every step and epoch.
    pub fn run(&mut self, progress: &mut Progress, end: u64, hook: &mut dyn FnMut(&Trainer<'a>, StepHook<'_>) -> Result<()>) -> Result<()> {
        let ipe = self.iterations_per_epoch;
        let batch = self.recipe.batch_size as i64;
        let mut plan_epoch = u64::MAX;
        let mut plan = None;
        let mut epoch_timer = std::time::Instant::now();
        let mut epoch_images = 0u64;
        while progress.iteration < end {
            let it = progress.iteration;
            let epoch = it / ipe;
            let pos = (it % ipe) as i64;
            if epoch != plan_epoch {
                plan = Some(self.data.epoch_plan(self.seed, epoch, self.recipe.augment));
                plan_epoch = epoch;
            }
            let (x, y) = self.data.train_batch(plan.as_ref().expect("plan"), pos, batch, self.channels_last);
            let lr = learning_rate(self.recipe, it, ipe, self.total_iterations);
            let loss = self.train_step(&x, &y, lr)?;
            tch::no_grad(|| progress.loss_sum += loss);
            progress.loss_steps += 1;
            progress.iteration += 1;
            epoch_images += batch as u64;
            hook(self, StepHook::Stepped(progress))?;
            if progress.iteration % ipe == 0 {
                let train_loss = progress.loss_sum.double_value(&[]) / progress.loss_steps.max(1) as f64;
                let (acc, tl) = self.evaluate()?;
                let secs = epoch_timer.elapsed().as_secs_f64();
                hook(
                    self,
                    StepHook::EpochEnd {
                    progress,
                    train_loss,
                    test_accuracy: acc,
                    test_loss: tl,
                    images_per_second: epoch_images as f64 / secs.max(1e-9),
                    },
                )?;
                progress.loss_sum = Tensor::zeros([], (Kind::Float, self.device));
                progress.loss_steps = 0;
                epoch_timer = std::time::Instant::now();
                epoch_images = 0;
            }
        }
        Ok(())
    }
}
