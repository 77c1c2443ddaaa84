//! Ticket bundles: K chain steps that share (seed, model, dataset, recipe, rewind point) trained
//! as one grouped network (HFTA, MLSys 2021). Only their masks — and so their weights — differ.
//!
//! # Storage: per member
//! Every member is an ordinary [`Network`] with its own variables and an ordinary [`Trainer`] with
//! its own momentum buffers and masks, so checkpoints, artifacts, masks and per-layer reports are
//! exactly those of a solo step. The bundle owns no parameters: each forward concatenates the
//! members' tensors (autograd's `cat` backward hands each member exactly the slice of gradient
//! that belongs to it). That costs one copy of the weights per step, small beside the activations
//! of a convolutional network, and keeps every existing per-member code path unchanged.
//!
//! # The grouped forward
//! - Convolutions: members stacked on the channel axis. The first convolution reads the shared
//!   input image with the K weights stacked on the output axis (groups = 1); every later one reads
//!   the stacked activations with `groups = K` (`groups × K` in general; built-ins have groups 1).
//! - Batch norm over the stacked channel axis is per member (its channels are disjoint); running
//!   statistics are concatenated for the call and their updated slices copied back to the members.
//! - Linear layers: the first one that reads the shared input is one matmul with the stacked
//!   weights; later ones are batched matmuls over [K, batch, features].
//! - The loss is the sum of the members' own mean cross-entropies: d(Σ Lₖ)/dLₖ = 1, so each member
//!   receives exactly its solo gradient.
//!
//! # Isolation
//! Every operation is block-diagonal over members, so a member whose values become NaN or
//! infinite cannot reach another member's forward, backward or optimizer step (the fused SGD is
//! per tensor). At each epoch end a member whose epoch loss is not finite is marked diverged and
//! dropped from the bundle: it stops training (and costing time), and its step is reported as
//! diverged, as a solo run's would be.
//!
//! # Numerical equality with solo runs
//! The maths are a solo run's; the float results are not bit-identical because grouped
//! convolutions, wider matmuls and batched matmuls block their reductions differently. The
//! difference per step is at float32 rounding level and grows with training like any rounding
//! noise; `worker/tests/bundle.rs` measures it (ARCHITECTURE.md, "Ticket bundles", gives the figures).

use super::cuda;
use super::data::Dataset;
use super::fused::FusedStep;
use super::graph::{GraphedStep, Outcome};
use super::models::Network;
use super::train::{learning_rate, Progress, StepHook, StepImpl, Trainer};
use anyhow::{bail, Context, Result};
use lth_sweep::{ModelKind, ModelSpec};
use std::collections::HashMap;
use tch::{Kind, Tensor};

/// Batch norm's defaults in `tch::nn` (and PyTorch), which the built-in models use.
const BN_MOMENTUM: f64 = 0.1;
const BN_EPS: f64 = 1e-5;

/// Whether `model` can be bundled (the built-in networks; a TorchScript module cannot be grouped).
pub fn bundleable(model: &ModelSpec) -> bool {
    matches!(model, ModelSpec::Builtin(_))
}

/// The members' variables (by name) and the architecture they share.
pub struct BundledNetwork {
    kind: ModelKind,
    members: Vec<HashMap<String, Tensor>>,
}

impl BundledNetwork {
    /// The networks must be of the same built-in model and shape (one sweep's step specs).
    pub fn new(nets: &[&Network]) -> Result<Self> {
        let Some(first) = nets.first() else { bail!("a bundle needs at least one member") };
        let kind = match &first.kind {
            ModelSpec::Builtin(k) => *k,
            ModelSpec::TorchScript(_) => bail!("TorchScript models cannot be bundled (their graph cannot be grouped); run them solo"),
        };
        let shapes = |n: &Network| n.named_variables().into_iter().map(|(name, t)| (name, t.size())).collect::<Vec<_>>();
        let reference = shapes(first);
        for n in &nets[1..] {
            if n.kind != first.kind || shapes(n) != reference {
                bail!("bundle members must be the same model with the same shapes ({} vs {})", first.kind.as_str(), n.kind.as_str());
            }
        }
        Ok(BundledNetwork { kind, members: nets.iter().map(|n| n.vs.variables()).collect() })
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The logits of the `active` members, [K_active, batch, classes], for a batch shared by all.
    pub fn forward_t(&self, x: &Tensor, active: &[usize], train: bool) -> Tensor {
        let f = Grouped { members: &self.members, active, train };
        match self.kind {
            ModelKind::Lenet300100 => f.lenet(x),
            ModelKind::Resnet20 => f.resnet20(x),
            ModelKind::Resnet18 => f.resnet18(x, false),
            ModelKind::Resnet18Imagenet => f.resnet18(x, true),
            ModelKind::Vgg16 => f.vgg16(x),
        }
    }
}

/// One grouped forward pass over a subset of the members. Layer names and hyper-parameters
/// mirror `models.rs` (the tests compare against those networks, so a mismatch fails them).
struct Grouped<'b> {
    members: &'b [HashMap<String, Tensor>],
    active: &'b [usize],
    train: bool,
}

impl Grouped<'_> {
    fn k(&self) -> i64 {
        self.active.len() as i64
    }

    fn var(&self, i: usize, name: &str) -> &Tensor {
        &self.members[i][name]
    }

    fn has(&self, name: &str) -> bool {
        self.members[self.active[0]].contains_key(name)
    }

    /// The members' `name` concatenated on dim 0 ([K·d0, …]).
    fn cat(&self, name: &str) -> Tensor {
        let ts: Vec<&Tensor> = self.active.iter().map(|&i| self.var(i, name)).collect();
        Tensor::cat(&ts, 0)
    }

    /// The members' `name` stacked on a new dim 0 ([K, …]).
    fn stack(&self, name: &str) -> Tensor {
        let ts: Vec<&Tensor> = self.active.iter().map(|&i| self.var(i, name)).collect();
        Tensor::stack(&ts, 0)
    }

    /// `shared`: `x` is the input image that every member reads (groups = 1, output channels
    /// stacked); otherwise `x` holds the members' stacked channels (groups = K).
    fn conv(&self, x: &Tensor, module: &str, stride: i64, padding: i64, shared: bool) -> Tensor {
        let w = self.cat(&format!("{module}.weight"));
        let bias_name = format!("{module}.bias");
        let b = self.has(&bias_name).then(|| self.cat(&bias_name));
        x.conv2d(&w, b.as_ref(), [stride, stride], [padding, padding], [1, 1], if shared { 1 } else { self.k() })
    }

    fn bn(&self, x: &Tensor, module: &str) -> Tensor {
        let w = self.cat(&format!("{module}.weight"));
        let b = self.cat(&format!("{module}.bias"));
        let (rm_name, rv_name) = (format!("{module}.running_mean"), format!("{module}.running_var"));
        let rm = self.cat(&rm_name);
        let rv = self.cat(&rv_name);
        let y = x.batch_norm(Some(&w), Some(&b), Some(&rm), Some(&rv), self.train, BN_MOMENTUM, BN_EPS, true);
        if self.train {
            // batch_norm updated the concatenated statistics in place; hand each member its slice.
            let c = self.var(self.active[0], &rm_name).size()[0];
            tch::no_grad(|| {
                for (j, &i) in self.active.iter().enumerate() {
                    self.var(i, &rm_name).shallow_clone().copy_(&rm.narrow(0, j as i64 * c, c));
                    self.var(i, &rv_name).shallow_clone().copy_(&rv.narrow(0, j as i64 * c, c));
                }
            });
        }
        y
    }

    /// A linear layer reading the shared input [B, in]: one matmul, returned as [K, B, out].
    fn linear_shared(&self, x: &Tensor, module: &str) -> Tensor {
        let w = self.cat(&format!("{module}.weight"));
        let b = self.cat(&format!("{module}.bias"));
        self.split_features(&x.linear(&w, Some(&b)))
    }

    /// A linear layer per member: [K, B, in] → [K, B, out] as one batched matmul.
    fn linear(&self, x: &Tensor, module: &str) -> Tensor {
        let w = self.stack(&format!("{module}.weight"));
        let b = self.stack(&format!("{module}.bias"));
        b.unsqueeze(1).baddbmm(x, &w.transpose(1, 2), 1.0, 1.0)
    }

    /// [B, K·f] (members' features side by side) → [K, B, f].
    fn split_features(&self, x: &Tensor) -> Tensor {
        let s = x.size();
        x.view([s[0], self.k(), s[1] / self.k()]).transpose(0, 1)
    }

    fn lenet(&self, x: &Tensor) -> Tensor {
        let mut y = self.linear_shared(&x.flatten(1, -1), "fc_layers.0").relu();
        let mut i = 1;
        while self.has(&format!("fc_layers.{i}.weight")) {
            y = self.linear(&y, &format!("fc_layers.{i}")).relu();
            i += 1;
        }
        self.linear(&y, "fc")
    }

    /// A BasicBlock (models.rs): conv-bn-relu-conv-bn plus the (projected) shortcut, relu.
    fn block(&self, x: &Tensor, p: &str, stride: i64, shortcut: &str) -> Tensor {
        let y = self.bn(&self.conv(x, &format!("{p}.conv1"), stride, 1, false), &format!("{p}.bn1")).relu();
        let y = self.bn(&self.conv(&y, &format!("{p}.conv2"), 1, 1, false), &format!("{p}.bn2"));
        let s = if self.has(&format!("{p}.{shortcut}.0.weight")) {
            self.bn(&self.conv(x, &format!("{p}.{shortcut}.0"), stride, 0, false), &format!("{p}.{shortcut}.1"))
        } else {
            x.shallow_clone()
        };
        (y + s).relu()
    }

    fn head(&self, y: &Tensor) -> Tensor {
        self.linear(&self.split_features(&y.adaptive_avg_pool2d([1, 1]).flatten(1, -1)), "fc")
    }

    fn resnet20(&self, x: &Tensor) -> Tensor {
        let mut y = self.bn(&self.conv(x, "conv", 1, 1, true), "bn").relu();
        for idx in 0..9 {
            // Stages of three blocks; the first block of stages 2 and 3 halves the resolution.
            let stride = if idx == 3 || idx == 6 { 2 } else { 1 };
            y = self.block(&y, &format!("blocks.{idx}"), stride, "shortcut");
        }
        self.head(&y)
    }

    fn resnet18(&self, x: &Tensor, imagenet_stem: bool) -> Tensor {
        let mut y = if imagenet_stem { self.conv(x, "conv1", 2, 3, true) } else { self.conv(x, "conv1", 1, 1, true) };
        y = self.bn(&y, "bn1").relu();
        if imagenet_stem {
            y = y.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        }
        for layer in 1..=4 {
            for b in 0..2 {
                let stride = if layer > 1 && b == 0 { 2 } else { 1 };
                y = self.block(&y, &format!("layer{layer}.{b}"), stride, "downsample");
            }
        }
        self.head(&y)
    }

    fn vgg16(&self, x: &Tensor) -> Tensor {
        let mut y = x.shallow_clone();
        let mut first = true;
        for i in 0..17 {
            let m = format!("layers.{i}");
            if self.has(&format!("{m}.conv.weight")) {
                y = self.bn(&self.conv(&y, &format!("{m}.conv"), 1, 1, first), &format!("{m}.bn")).relu();
                first = false;
            } else {
                y = y.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false);
            }
        }
        self.head(&y)
    }
}

/// K members' trainers driven as one: one grouped forward and backward, one fused SGD call over
/// every active member's parameters.
pub struct BundleTrainer<'a> {
    /// One ordinary trainer per member (its parameters, momentum buffers, masks).
    pub members: Vec<Trainer<'a>>,
    net: BundledNetwork,
    /// Members still training, in member order.
    pub active: Vec<usize>,
    /// Members dropped because their loss stopped being a number.
    pub diverged: Vec<bool>,
    pub step_impl: StepImpl,
    fused: Option<FusedStep>,
    fused_refused: Option<String>,
    /// The bundle's CUDA graph, as `Trainer`'s (dropped when the masks or the active set change).
    graph: Option<GraphedStep>,
    graph_refused: Option<String>,
}

impl<'a> BundleTrainer<'a> {
    /// The members' trainers must share dataset, recipe, seed and device (checked); their masks
    /// are installed already (see [`Trainer::set_masks`]; call [`Self::masks_changed`] after
    /// changing them later).
    pub fn new(members: Vec<Trainer<'a>>) -> Result<Self> {
        let first = members.first().context("a bundle needs at least one member")?;
        for m in &members[1..] {
            if !std::ptr::eq(m.data, first.data) || m.recipe != first.recipe || m.seed != first.seed || m.device != first.device {
                bail!("bundle members must share the dataset, recipe, seed and device");
            }
        }
        let nets: Vec<&Network> = members.iter().map(|m| m.net).collect();
        let net = BundledNetwork::new(&nets)?;
        let k = members.len();
        Ok(BundleTrainer { members, net, active: (0..k).collect(), diverged: vec![false; k], step_impl: StepImpl::Fused, fused: None, fused_refused: None, graph: None, graph_refused: None })
    }

    fn lead(&self) -> &Trainer<'a> {
        &self.members[0]
    }

    pub fn iterations_per_epoch(&self) -> u64 {
        self.lead().iterations_per_epoch
    }

    pub fn total_iterations(&self) -> u64 {
        self.lead().total_iterations
    }

    /// Drops the fused step's tensor lists (after masks or the active set changed).
    pub fn masks_changed(&mut self) {
        self.fused = None;
        self.fused_refused = None;
        self.graph = None;
    }

    /// Whether the step runs as a CUDA graph (captured already, or warming up to be).
    pub fn graph_in_use(&self) -> bool {
        self.graph.is_some() && self.graph_refused.is_none()
    }

    /// The bundle's step through its CUDA graph (see `Trainer::graph_step`).
    fn graph_step(&mut self, x: &Tensor, y: &Tensor, lr: f64) -> Result<Outcome> {
        if self.fused_step().is_none() {
            return Ok(Outcome::Refused(anyhow::anyhow!("the fused step is not in use")));
        }
        let device = self.lead().device;
        if self.graph.is_none() {
            match GraphedStep::new(device, x, y) {
                Ok(g) => self.graph = Some(g),
                Err(e) => return Ok(Outcome::Refused(e)),
            }
        }
        let r = self.lead().recipe;
        let (wd, mom, nesterov) = (r.weight_decay, r.momentum, r.nesterov);
        let (autocast, loss_scale) = (self.lead().autocast, self.lead().loss_scale);
        let (net, active) = (&self.net, &self.active);
        let fused = self.fused.as_mut().expect("built by fused_step");
        let graph = self.graph.as_mut().expect("built above");
        let mut body = |x: &Tensor, y: &Tensor, lr: &Tensor| -> Result<Tensor> {
            fused.zero_grad()?;
            let out = match autocast {
                Some(dt) => cuda::with_autocast(dt, || net.forward_t(x, active, true))?,
                None => net.forward_t(x, active, true),
            };
            let losses: Vec<Tensor> = (0..active.len() as i64).map(|j| out.get(j).to_kind(Kind::Float).cross_entropy_for_logits(y)).collect();
            let losses = Tensor::stack(&losses, 0);
            let total = losses.sum(Kind::Float);
            if loss_scale != 1.0 {
                (&total * loss_scale).backward();
            } else {
                total.backward();
            }
            fused.sgd_tensor_lr(wd, mom, lr, nesterov)?;
            fused.apply_masks()?;
            Ok(losses.detach())
        };
        graph.step(x, y, lr, &mut body)
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self.lead().autocast {
            Some(dt) => cuda::with_autocast(dt, || self.net.forward_t(x, &self.active, train)),
            None => Ok(self.net.forward_t(x, &self.active, train)),
        }
    }

    /// The shim's step over every active member's tensors (as `Trainer::fused_step`).
    fn fused_step(&mut self) -> Option<&mut FusedStep> {
        if self.step_impl != StepImpl::Fused || self.fused_refused.is_some() {
            return None;
        }
        if self.fused.is_none() {
            let (mut params, mut momentum, mut weights, mut masks) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for &i in &self.active {
                let m = &self.members[i];
                params.extend(m.params.iter().map(|(n, t)| (n.clone(), t.shallow_clone())));
                momentum.extend(m.momentum.iter().map(|t| t.shallow_clone()));
                weights.extend(m.masks.iter().map(|d| d.weight.shallow_clone()));
                masks.extend(m.masks.iter().map(|d| d.mask.shallow_clone()));
            }
            let w: Vec<&Tensor> = weights.iter().collect();
            let mk: Vec<&Tensor> = masks.iter().collect();
            match FusedStep::checked(&params, &momentum, &w, &mk, self.lead().loss_scale) {
                Ok(f) => self.fused = Some(f),
                Err(e) => {
                    eprintln!("lth-worker: fused SGD not used for the bundle ({e:#}); training with the per-tensor step");
                    self.fused_refused = Some(format!("{e:#}"));
                    return None;
                }
            }
        }
        self.fused.as_mut()
    }

    pub fn step_impl_in_use(&mut self) -> StepImpl {
        if self.fused_step().is_some() { StepImpl::Fused } else { StepImpl::PerTensor }
    }

    /// One optimizer step of every active member on a shared batch; returns their losses
    /// ([K_active], on the device, in `active` order).
    pub fn train_step(&mut self, x: &Tensor, y: &Tensor, lr: f64) -> Result<Tensor> {
        let lead = self.lead();
        if lead.device.is_cuda() && lead.recipe.cuda_graph && self.step_impl == StepImpl::Fused && self.graph_refused.is_none() {
            match self.graph_step(x, y, lr)? {
                Outcome::Ran(losses) => return Ok(losses),
                Outcome::Refused(e) => {
                    eprintln!("lth-worker: CUDA graph not used for the bundle ({e:#}); training with eager steps");
                    self.graph = None;
                    self.graph_refused = Some(format!("{e:#}"));
                }
            }
        }
        let out = self.forward(x, true)?;
        // Each member's loss exactly as a solo trainer computes it.
        let losses: Vec<Tensor> = (0..self.active.len() as i64).map(|j| out.get(j).to_kind(Kind::Float).cross_entropy_for_logits(y)).collect();
        let losses = Tensor::stack(&losses, 0);
        let total = losses.sum(Kind::Float);
        let r = self.lead().recipe;
        let (wd, mom, nesterov) = (r.weight_decay, r.momentum, r.nesterov);
        let loss_scale = self.lead().loss_scale;
        let backward = |t: &Tensor| if loss_scale != 1.0 { (t * loss_scale).backward() } else { t.backward() };
        if let Some(f) = self.fused_step() {
            f.clear_grad()?;
            backward(&total);
            f.sgd(wd, mom, lr, nesterov)?;
            f.apply_masks()?;
            return Ok(losses.detach());
        }
        for &i in &self.active {
            self.members[i].zero_grad();
        }
        backward(&total);
        for &i in &self.active {
            self.members[i].sgd_step(lr);
            self.members[i].apply_masks();
        }
        Ok(losses.detach())
    }

    /// Top-1 accuracy and mean cross-entropy on the test split of each active member (in
    /// `active` order), with one grouped forward per chunk and one host sync at the end.
    pub fn evaluate(&self) -> Result<Vec<(f64, f64)>> {
        let data: &Dataset = self.lead().data;
        let device = self.lead().device;
        let channels_last = self.lead().channels_last;
        let k = self.active.len() as i64;
        let n = data.test_len();
        let chunk = 1000;
        let mut correct = Tensor::zeros([k], (Kind::Int64, device));
        let mut loss = Tensor::zeros([k], (Kind::Double, device));
        tch::no_grad(|| -> Result<()> {
            let mut start = 0;
            while start < n {
                let len = chunk.min(n - start);
                let x = data.normalise(&data.test_images.narrow(0, start, len), channels_last);
                let y = data.test_labels.narrow(0, start, len);
                let out = self.forward(&x, false)?.to_kind(Kind::Float);
                correct += out.argmax(2, false).eq_tensor(&y.unsqueeze(0)).sum_dim_intlist([1i64].as_slice(), false, Kind::Int64);
                let l: Vec<Tensor> = (0..k).map(|j| out.get(j).cross_entropy_for_logits(&y)).collect();
                loss += Tensor::stack(&l, 0).to_kind(Kind::Double) * (len as f64);
                start += len;
            }
            Ok(())
        })?;
        let correct = Vec::<i64>::try_from(&correct.to_device(tch::Device::Cpu))?;
        let loss = Vec::<f64>::try_from(&loss.to_device(tch::Device::Cpu))?;
        Ok(correct.iter().zip(&loss).map(|(&c, &l)| (c as f64 / n as f64, l / n as f64)).collect())
    }

    /// Trains every active member from their common iteration to `end`; `progress[i]` is member
    /// i's. `hook(trainer, member, event)` is called for each active member after every step and
    /// epoch. A member whose epoch loss is not finite is then dropped (`diverged[i]`), the others
    /// go on. Stops early when no member is left.
    pub fn run(&mut self, progress: &mut [Progress], end: u64, hook: &mut dyn FnMut(&Trainer<'a>, usize, StepHook<'_>) -> Result<()>) -> Result<()> {
        if progress.len() != self.members.len() {
            bail!("{} progress records for {} members", progress.len(), self.members.len());
        }
        let start = progress[self.active[0]].iteration;
        if let Some(&i) = self.active.iter().find(|&&i| progress[i].iteration != start) {
            bail!("bundle member {i} is at iteration {}, the others at {start}: members must start together", progress[i].iteration);
        }
        let ipe = self.iterations_per_epoch();
        let total = self.total_iterations();
        let (data, recipe, seed, channels_last) = (self.lead().data, self.lead().recipe, self.lead().seed, self.lead().channels_last);
        let batch = recipe.batch_size as i64;
        let mut plan_epoch = u64::MAX;
        let mut plan = None;
        let mut epoch_timer = std::time::Instant::now();
        let mut epoch_images = 0u64;
        let mut it = start;
        while it < end && !self.active.is_empty() {
            let epoch = it / ipe;
            if epoch != plan_epoch {
                // The members share the seed, hence the data order and augmentation draws.
                plan = Some(data.epoch_plan(seed, epoch, recipe.augment));
                plan_epoch = epoch;
            }
            let (x, y) = data.train_batch(plan.as_ref().expect("plan"), (it % ipe) as i64, batch, channels_last);
            let lr = learning_rate(recipe, it, ipe, total);
            let losses = self.train_step(&x, &y, lr)?;
            it += 1;
            epoch_images += batch as u64;
            for (j, &i) in self.active.iter().enumerate() {
                let p = &mut progress[i];
                tch::no_grad(|| p.loss_sum += losses.get(j as i64));
                p.loss_steps += 1;
                p.iteration = it;
                hook(&self.members[i], i, StepHook::Stepped(p))?;
            }
            if it % ipe == 0 {
                let sums: Vec<Tensor> = self.active.iter().map(|&i| progress[i].loss_sum.shallow_clone()).collect();
                let sums = Vec::<f64>::try_from(&Tensor::stack(&sums, 0).to_kind(Kind::Double).to_device(tch::Device::Cpu))?;
                let evals = self.evaluate()?;
                let secs = epoch_timer.elapsed().as_secs_f64();
                let mut dropped = false;
                for (j, i) in self.active.clone().into_iter().enumerate() {
                    let p = &mut progress[i];
                    let train_loss = sums[j] / p.loss_steps.max(1) as f64;
                    let (test_accuracy, test_loss) = evals[j];
                    let ev = StepHook::EpochEnd { progress: p, train_loss, test_accuracy, test_loss, images_per_second: epoch_images as f64 / secs.max(1e-9) };
                    hook(&self.members[i], i, ev)?;
                    p.loss_sum = Tensor::zeros([], (Kind::Float, self.lead().device));
                    p.loss_steps = 0;
                    if !train_loss.is_finite() {
                        eprintln!("lth-worker: bundle member {i} diverged (epoch loss {train_loss}); the others go on without it");
                        self.diverged[i] = true;
                        dropped = true;
                    }
                }
                if dropped {
                    let diverged = &self.diverged;
                    self.active.retain(|&i| !diverged[i]);
                    self.masks_changed();
                }
                epoch_timer = std::time::Instant::now();
                epoch_images = 0;
            }
        }
        Ok(())
    }
}
