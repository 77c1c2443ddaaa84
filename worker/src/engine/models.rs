//! The networks of the paper's experiments, written against `tch::nn` with stable parameter names
//! (torchvision's for ResNet-18, open_lth's for ResNet-20, VGG-16 and LeNet-300-100), so that masks
//! and per-layer statistics in the database can be joined across runs and compared with the
//! PyTorch implementations.
//!
//! Initialisation does not use libtorch's global generator: every conv/linear weight is drawn
//! Kaiming-normal (fan-in, ReLU gain: std = sqrt(2 / fan_in)) from the crate's own stream seeded by
//! (seed, parameter name), on the host, then copied to the device. The same seed therefore gives the
//! same θ0 on CPU and CUDA, whatever the order in which variables were created or how many threads
//! run. Biases and batch-norm shifts start at 0, batch-norm scales at 1 (PyTorch's defaults).
//!
//! Network order: every list of variables the engine hands out (`named_variables`,
//! `named_parameters`, hence prunable layers, masks and per-layer reports) is in the network's own
//! order, the order PyTorch's `state_dict` lists the same module: each built-in model records its
//! modules as it builds them (a block's convolutions, then its shortcut; the classifier last), and a
//! TorchScript model keeps the module's parameter order. Within one module: weight, bias,
//! running_mean, running_var. VarStore's own order (a hash map, sorted by name before) would put
//! LeNet's output layer first and VGG's `layers.10` before `layers.2`.

use super::rng::Rng;
use super::torchscript::TorchScriptNet;
use anyhow::{bail, Result};
use lth_sweep::{ModelKind, ModelSpec, PrunePolicy};
use std::cell::RefCell;
use tch::nn;
use tch::{Device, Kind, Tensor};

/// The shape of one input image, (channels, height, width).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputShape {
    pub channels: i64,
    pub height: i64,
    pub width: i64,
}

/// A network together with the variables it owns.
pub struct Network {
    pub kind: ModelSpec,
    pub vs: nn::VarStore,
    arch: Arch,
    /// Every variable's name, in network order (see the module comment).
    order: Vec<String>,
}

enum Arch {
    ResNet(ResNet),
    ResNet20(ResNet20),
    Vgg(Vgg),
    Lenet(Lenet),
    TorchScript(TorchScriptNet),
}

/// The modules of a built-in network in the order they are built (= PyTorch's registration order).
type Order = RefCell<Vec<String>>;

fn record(o: &Order, p: &nn::Path) {
    o.borrow_mut().push(p.components().collect::<Vec<_>>().join("."));
}

#[allow(clippy::too_many_arguments)]
fn conv(p: nn::Path, o: &Order, cin: i64, cout: i64, k: i64, stride: i64, padding: i64, bias: bool) -> nn::Conv2D {
    record(o, &p);
    let cfg = nn::ConvConfig { stride, padding, bias, ..Default::default() };
    nn::conv2d(p, cin, cout, k, cfg)
}

fn bn(p: nn::Path, o: &Order, c: i64) -> nn::BatchNorm {
    record(o, &p);
    nn::batch_norm2d(p, c, Default::default())
}

fn linear(p: nn::Path, o: &Order, cin: i64, cout: i64) -> nn::Linear {
    record(o, &p);
    nn::linear(p, cin, cout, Default::default())
}

/// A module's variables in PyTorch's order.
const LEAVES: [&str; 4] = ["weight", "bias", "running_mean", "running_var"];

/// torchvision's BasicBlock.
struct BasicBlock {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    conv2: nn::Conv2D,
    bn2: nn::BatchNorm,
    downsample: Option<(nn::Conv2D, nn::BatchNorm)>,
}

impl BasicBlock {
    fn new(p: nn::Path, o: &Order, cin: i64, cout: i64, stride: i64, shortcut_name: &str) -> Self {
        // Built in registration order (conv1, bn1, conv2, bn2, then the shortcut), as torchvision
        // and open_lth register them.
        let conv1 = conv(&p / "conv1", o, cin, cout, 3, stride, 1, false);
        let bn1 = bn(&p / "bn1", o, cout);
        let conv2 = conv(&p / "conv2", o, cout, cout, 3, 1, 1, false);
        let bn2 = bn(&p / "bn2", o, cout);
        let downsample = if stride != 1 || cin != cout {
            let d = &p / shortcut_name;
            Some((conv(&d / "0", o, cin, cout, 1, stride, 0, false), bn(&d / "1", o, cout)))
        } else {
            None
        };
        BasicBlock { conv1, bn1, conv2, bn2, downsample }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let y = x.apply(&self.conv1).apply_t(&self.bn1, train).relu();
        let y = y.apply(&self.conv2).apply_t(&self.bn2, train);
        let s = match &self.downsample {
            Some((c, b)) => x.apply(c).apply_t(b, train),
            None => x.shallow_clone(),
        };
        (y + s).relu()
    }
}

/// ResNet-18 (torchvision layout); `imagenet_stem` selects 7×7/2 + max-pool over CIFAR's 3×3/1.
struct ResNet {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    imagenet_stem: bool,
    blocks: Vec<BasicBlock>,
    fc: nn::Linear,
}

impl ResNet {
    fn new(p: &nn::Path, o: &Order, input: InputShape, classes: i64, imagenet_stem: bool) -> Self {
        let conv1 = if imagenet_stem {
            conv(p / "conv1", o, input.channels, 64, 7, 2, 3, false)
        } else {
            conv(p / "conv1", o, input.channels, 64, 3, 1, 1, false)
        };
        let bn1 = bn(p / "bn1", o, 64);
        let mut blocks = Vec::new();
        let mut cin = 64;
        for (i, &w) in [64i64, 128, 256, 512].iter().enumerate() {
            let layer = p / format!("layer{}", i + 1);
            for b in 0..2 {
                let stride = if i > 0 && b == 0 { 2 } else { 1 };
                blocks.push(BasicBlock::new(&layer / b, o, cin, w, stride, "downsample"));
                cin = w;
            }
        }
        ResNet { conv1, bn1, imagenet_stem, blocks, fc: linear(p / "fc", o, 512, classes) }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y = x.apply(&self.conv1).apply_t(&self.bn1, train).relu();
        if self.imagenet_stem {
            y = y.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        }
        for b in &self.blocks {
            y = b.forward_t(&y, train);
        }
        y.adaptive_avg_pool2d([1, 1]).flatten(1, -1).apply(&self.fc)
    }
}

/// open_lth's cifar_resnet_20: 16/32/64 filters, 3 blocks per stage, 1×1-conv shortcuts.
struct ResNet20 {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
    blocks: Vec<BasicBlock>,
    fc: nn::Linear,
}

impl ResNet20 {
    fn new(p: &nn::Path, o: &Order, input: InputShape, classes: i64) -> Self {
        let conv = conv(p / "conv", o, input.channels, 16, 3, 1, 1, false);
        let bn = bn(p / "bn", o, 16);
        let mut blocks = Vec::new();
        let mut cin = 16;
        let mut idx = 0;
        for (s, &w) in [16i64, 32, 64].iter().enumerate() {
            for b in 0..3 {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                blocks.push(BasicBlock::new(p / "blocks" / idx, o, cin, w, stride, "shortcut"));
                cin = w;
                idx += 1;
            }
        }
        ResNet20 { conv, bn, blocks, fc: linear(p / "fc", o, 64, classes) }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y = x.apply(&self.conv).apply_t(&self.bn, train).relu();
        for b in &self.blocks {
            y = b.forward_t(&y, train);
        }
        y.adaptive_avg_pool2d([1, 1]).flatten(1, -1).apply(&self.fc)
    }
}

/// open_lth's cifar_vgg_16: conv(3×3, bias)+BN+ReLU modules, max-pools between stages, a final
/// 2×2 average pool and one linear layer. Module indices count the pools, as in nn.Sequential.
struct Vgg {
    layers: Vec<Option<(nn::Conv2D, nn::BatchNorm)>>,
    fc: nn::Linear,
}

const VGG16_PLAN: [i64; 17] = [64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512];

impl Vgg {
    fn new(p: &nn::Path, o: &Order, input: InputShape, classes: i64) -> Self {
        let mut cin = input.channels;
        let layers = VGG16_PLAN
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                if w == 0 {
                    None
                } else {
                    let m = p / "layers" / i;
                    let c = conv(&m / "conv", o, cin, w, 3, 1, 1, true);
                    cin = w;
                    Some((c, bn(&m / "bn", o, w)))
                }
            })
            .collect();
        Vgg { layers, fc: linear(p / "fc", o, 512, classes) }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y = x.shallow_clone();
        for l in &self.layers {
            y = match l {
                Some((c, b)) => y.apply(c).apply_t(b, train).relu(),
                None => y.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false),
            };
        }
        // open_lth averages the final 2×2 map of 32×32 inputs; adaptive pooling is the same there
        // and keeps other input sizes working.
        y.adaptive_avg_pool2d([1, 1]).flatten(1, -1).apply(&self.fc)
    }
}

/// open_lth's mnist_lenet_300_100 (fc_layers.0, fc_layers.1, fc).
struct Lenet {
    fc_layers: Vec<nn::Linear>,
    fc: nn::Linear,
}

impl Lenet {
    fn new(p: &nn::Path, o: &Order, input: InputShape, classes: i64) -> Self {
        let inp = input.channels * input.height * input.width;
        let fc_layers = vec![linear(p / "fc_layers" / 0, o, inp, 300), linear(p / "fc_layers" / 1, o, 300, 100)];
        Lenet { fc_layers, fc: linear(p / "fc", o, 100, classes) }
    }

    fn forward_t(&self, x: &Tensor) -> Tensor {
        let mut y = x.flatten(1, -1);
        for l in &self.fc_layers {
            y = y.apply(l).relu();
        }
        y.apply(&self.fc)
    }
}

impl Network {
    /// Builds `model` for `input`-shaped images and `classes` outputs on `device`, initialised
    /// from `seed`. A TorchScript model is loaded from its file (checked against its sha256) and
    /// run once on a dummy batch of the dataset's shape, so a model that does not fit the data
    /// fails here, before anything is trained or written.
    pub fn new(model: impl Into<ModelSpec>, input: InputShape, classes: i64, device: Device, seed: u64) -> Result<Self> {
        let kind: ModelSpec = model.into();
        if classes < 2 {
            bail!("a classifier needs at least 2 classes, got {classes}");
        }
        let builtin = match &kind {
            ModelSpec::Builtin(k) => *k,
            ModelSpec::TorchScript(t) => {
                let vs = nn::VarStore::new(device);
                let (ts, order) = TorchScriptNet::load(t, &vs.root(), device)?;
                let net = Network { kind: kind.clone(), vs, arch: Arch::TorchScript(ts), order };
                if t.init == lth_sweep::ModelInit::Seed {
                    net.initialise(seed);
                }
                if let Arch::TorchScript(ts) = &net.arch {
                    ts.check_fits(input, classes, device)?;
                }
                return Ok(net);
            }
        };
        if matches!(builtin, ModelKind::Resnet18Imagenet) && (input.height < 32 || input.width < 32) {
            bail!(
                "resnet18_imagenet downsamples by 32 and needs inputs of at least 32×32, got {}×{}; use resnet18 (CIFAR stem) for small images",
                input.height,
                input.width
            );
        }
        let vs = nn::VarStore::new(device);
        let p = vs.root();
        let o: Order = RefCell::new(Vec::new());
        let arch = match builtin {
            ModelKind::Resnet18 => Arch::ResNet(ResNet::new(&p, &o, input, classes, false)),
            ModelKind::Resnet18Imagenet => Arch::ResNet(ResNet::new(&p, &o, input, classes, true)),
            ModelKind::Resnet20 => Arch::ResNet20(ResNet20::new(&p, &o, input, classes)),
            ModelKind::Vgg16 => Arch::Vgg(Vgg::new(&p, &o, input, classes)),
            ModelKind::Lenet300100 => Arch::Lenet(Lenet::new(&p, &o, input, classes)),
        };
        let vars = vs.variables();
        let mut order = Vec::with_capacity(vars.len());
        for module in o.into_inner() {
            for leaf in LEAVES {
                let name = format!("{module}.{leaf}");
                if vars.contains_key(&name) {
                    order.push(name);
                }
            }
        }
        if order.len() != vars.len() {
            bail!("internal error: {} of {}'s {} variables have no place in its network order", vars.len() - order.len(), builtin.as_str(), vars.len());
        }
        let net = Network { kind, vs, arch, order };
        net.initialise(seed);
        Ok(net)
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        match &self.arch {
            Arch::ResNet(m) => m.forward_t(x, train),
            Arch::ResNet20(m) => m.forward_t(x, train),
            Arch::Vgg(m) => m.forward_t(x, train),
            Arch::Lenet(m) => m.forward_t(x),
            Arch::TorchScript(m) => m.forward_t(x, train),
        }
    }

    /// All variables (trainable and batch-norm running statistics), in network order.
    pub fn named_variables(&self) -> Vec<(String, Tensor)> {
        let mut vars = self.vs.variables();
        self.order.iter().filter_map(|n| vars.remove(n).map(|t| (n.clone(), t))).collect()
    }

    /// Trainable parameters, in network order (the optimizer's order).
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        self.named_variables().into_iter().filter(|(_, t)| t.requires_grad()).collect()
    }

    pub fn parameter_count(&self) -> i64 {
        self.named_parameters().iter().map(|(_, t)| t.numel() as i64).sum()
    }

    /// Whether the parameter `name` (of shape `shape`) may be pruned under `policy`: the policy's
    /// `layers` patterns when given; else the model's own rule (conv and linear weights of a
    /// built-in model; every trainable parameter of rank ≥ 2 of a TorchScript model, rank 2
    /// counting as linear and higher ranks as convolutions). `exclude_layers` always wins.
    pub fn is_prunable(&self, name: &str, shape: &[i64], policy: &PrunePolicy) -> bool {
        if policy.exclude_layers.iter().any(|e| e == name) {
            return false;
        }
        if !policy.layers.is_empty() {
            return !shape.is_empty() && policy.layers.iter().any(|p| lth_sweep::name_matches(p, name));
        }
        match &self.arch {
            Arch::TorchScript(_) => match shape.len() {
                0 | 1 => false,
                2 => policy.prune_linears,
                _ => policy.prune_convs,
            },
            _ => is_prunable(name, shape, policy),
        }
    }

    /// Kaiming-normal weights from (seed, name); see the module comment. For a TorchScript model
    /// only trainable parameters are set (rank ≥ 2: Kaiming normal; rank-1 `weight`: 1; others 0);
    /// its non-trainable state (exported buffers) keeps the file's values.
    fn initialise(&self, seed: u64) {
        let torchscript = matches!(self.arch, Arch::TorchScript(_));
        tch::no_grad(|| {
            for (name, mut t) in self.named_variables() {
                if torchscript && !t.requires_grad() {
                    continue;
                }
                let size = t.size();
                let leaf = name.rsplit('.').next().unwrap_or("");
                let host = if size.len() >= 2 && (leaf == "weight" || torchscript) {
                    let fan_in: i64 = size[1..].iter().product();
                    let mut v = vec![0f32; t.numel()];
                    Rng::derive(seed, &format!("init/{name}"), 0).fill_normal(&mut v, (2.0 / fan_in.max(1) as f64).sqrt());
                    Tensor::from_slice(&v).reshape(&size)
                } else if leaf == "weight" || leaf == "running_var" {
                    Tensor::ones(&size, (Kind::Float, Device::Cpu))
                } else {
                    Tensor::zeros(&size, (Kind::Float, Device::Cpu))
                };
                t.copy_(&host.to_kind(t.kind()));
            }
        });
    }

    /// Converts 4-D conv weights to channels-last, once (CUDA speed-up; the values do not change).
    pub fn to_channels_last(&self) {
        tch::no_grad(|| {
            for (_, mut t) in self.named_variables() {
                if t.dim() == 4 {
                    let cl = to_channels_last(&t);
                    t.set_data(&cl);
                }
            }
        });
    }
}

/// The channels-last trick for tch (no MemoryFormat argument on `contiguous`).
pub fn to_channels_last(t: &Tensor) -> Tensor {
    t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// Whether a named variable is a weight that `policy` allows pruning (conv or linear weights only;
/// never biases, batch-norm parameters or running statistics).
pub fn is_prunable(name: &str, shape: &[i64], policy: &PrunePolicy) -> bool {
    if !name.ends_with(".weight") || policy.exclude_layers.iter().any(|e| e == name) {
        return false;
    }
    match shape.len() {
        4 => policy.prune_convs,
        2 => policy.prune_linears,
        _ => false,
    }
}
