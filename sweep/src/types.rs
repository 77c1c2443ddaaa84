//! The sweep file's schema. Field names here are the TOML keys users write.

use crate::{Control, ModelSpec, Rate, TrainLength};
use serde::{Deserialize, Serialize};
use std::fmt;

/// How important a weight is, computed per layer over its unpruned weights (Vandersmissen &
/// Oramas 2023). All scores are pooled across layers and cut with one global threshold, except
/// `UniformMagnitude`, which prunes every layer at the same rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ImportanceMetric {
    /// |w| (the classic global-magnitude baseline).
    Magnitude,
    /// |w| / Σ|w| over the layer's unpruned weights.
    L1,
    /// w² / Σw².
    L2,
    /// exp|w| / Σexp|w|.
    Softmax,
    /// (|w| − min) / (max − min).
    MinMax,
    /// Uniformly random scores: the control.
    Random,
    /// LAMP (Lee et al. 2021): w_u² / Σ_{|w_v| ≥ |w_u|} w_v².
    Lamp,
    /// Prune each layer by the same rate, by |w|.
    UniformMagnitude,
}

impl ImportanceMetric {
    pub const ALL: [ImportanceMetric; 8] = [
        Self::Magnitude,
        Self::L1,
        Self::L2,
        Self::Softmax,
        Self::MinMax,
        Self::Random,
        Self::Lamp,
        Self::UniformMagnitude,
    ];
    /// The five metrics of the paper.
    pub const PAPER: [ImportanceMetric; 5] = [Self::Magnitude, Self::L1, Self::L2, Self::Softmax, Self::MinMax];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Magnitude => "magnitude",
            Self::L1 => "l1",
            Self::L2 => "l2",
            Self::Softmax => "softmax",
            Self::MinMax => "min_max",
            Self::Random => "random",
            Self::Lamp => "lamp",
            Self::UniformMagnitude => "uniform_magnitude",
        }
    }

    /// Parses the snake_case name (or an alias) used in sweep files and on the command line.
    pub fn parse(s: &str) -> Result<Self, String> {
        let norm = s.trim().to_ascii_lowercase().replace('-', "_");
        match norm.as_str() {
            "magnitude" => Ok(Self::Magnitude),
            "l1" => Ok(Self::L1),
            "l2" => Ok(Self::L2),
            "softmax" => Ok(Self::Softmax),
            "min_max" | "minmax" => Ok(Self::MinMax),
            "random" => Ok(Self::Random),
            "lamp" => Ok(Self::Lamp),
            "uniform_magnitude" | "uniform" => Ok(Self::UniformMagnitude),
            _ => Err(format!(
                "unknown importance metric {s:?}; known metrics: {}",
                Self::ALL.map(|m| m.as_str()).join(", ")
            )),
        }
    }
}

/// Parsed with [`ImportanceMetric::parse`] (not derived) so that a typo in a sweep file names the
/// known metrics in its error, and the aliases (`minmax`, `uniform`, dashes) work in files too.
impl<'de> Deserialize<'de> for ImportanceMetric {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ImportanceMetric::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for ImportanceMetric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The networks lth can train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// ResNet-18 with the CIFAR stem (3×3/1 conv, no max-pool): 11,173,962 parameters at 10 classes.
    #[serde(alias = "resnet18_cifar")]
    Resnet18,
    /// ResNet-18 with the ImageNet stem (7×7/2 conv + max-pool), for 64×64 TinyImageNet.
    Resnet18Imagenet,
    /// ResNet-20 for CIFAR (He et al. 2016; open_lth's cifar_resnet_20).
    Resnet20,
    /// VGG-16 for CIFAR (open_lth's cifar_vgg_16).
    Vgg16,
    /// LeNet-300-100 (fully connected), for MNIST and the bundled digits.
    #[serde(alias = "lenet")]
    Lenet300100,
}

impl ModelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Resnet18 => "resnet18",
            Self::Resnet18Imagenet => "resnet18_imagenet",
            Self::Resnet20 => "resnet20",
            Self::Vgg16 => "vgg16",
            Self::Lenet300100 => "lenet300100",
        }
    }
}

/// The datasets lth can load. Each has a real on-disk loader in the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetKind {
    /// CIFAR-10, binary version (`data_batch_1.bin` … `test_batch.bin`).
    Cifar10,
    /// CIFAR-100, binary version (`train.bin`, `test.bin`).
    Cifar100,
    /// MNIST in IDX format.
    Mnist,
    /// TinyImageNet-200 folder layout (`train/<wnid>/images`, `val/val_annotations.txt`).
    TinyImagenet,
    /// The UCI handwritten digits (1797 8×8 images), bundled with lth.
    Digits,
    /// Your own images in torchvision's ImageFolder layout: `train/<class>/*.png|jpg` and
    /// `val/<class>/...` (or `test/<class>/...`), decoded once at `resolution`.
    ImageFolder,
    /// Your own tensors in one safetensors file: `train_images` and `test_images` (N×H×W×C
    /// uint8), `train_labels` and `test_labels` (N integers in 0..classes).
    #[serde(alias = "tensors")]
    Safetensors,
}

impl DatasetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cifar10 => "cifar10",
            Self::Cifar100 => "cifar100",
            Self::Mnist => "mnist",
            Self::TinyImagenet => "tiny_imagenet",
            Self::Digits => "digits",
            Self::ImageFolder => "image_folder",
            Self::Safetensors => "safetensors",
        }
    }

    pub const ALL: [DatasetKind; 7] =
        [Self::Cifar10, Self::Cifar100, Self::Mnist, Self::TinyImagenet, Self::Digits, Self::ImageFolder, Self::Safetensors];

    /// Your own data (ImageFolder or safetensors) rather than a built-in dataset.
    pub fn is_custom(self) -> bool {
        matches!(self, Self::ImageFolder | Self::Safetensors)
    }
}

/// The size ImageFolder images are decoded to: `resolution = 64` (square) or `[height, width]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Resolution {
    pub height: u32,
    pub width: u32,
}

impl Serialize for Resolution {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        [self.height, self.width].serialize(s)
    }
}

impl<'de> Deserialize<'de> for Resolution {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum R {
            Square(u32),
            Pair([u32; 2]),
        }
        match R::deserialize(d).map_err(|_| serde::de::Error::custom("resolution is one size such as 64, or [height, width] such as [64, 48]"))? {
            R::Square(n) => Ok(Resolution { height: n, width: n }),
            R::Pair([h, w]) => Ok(Resolution { height: h, width: w }),
        }
    }
}

/// `[dataset]`. The keys after `path` are for your own data (image_folder, safetensors); each is
/// left out of the stored spec and the job hash when unset, so built-in datasets hash as before.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    pub name: DatasetKind,
    /// Where the dataset lives on the worker (a folder; the file itself for safetensors); not
    /// needed for the bundled digits.
    #[serde(default)]
    pub path: Option<String>,
    /// image_folder: every image is resized to this (bilinear, antialiased) when first decoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<Resolution>,
    /// image_folder: 3 (RGB, the default, as torchvision's loader converts) or 1 (grayscale).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<u32>,
    /// Per-channel normalisation, on pixel values scaled to [0, 1] (torchvision's `Normalize`
    /// convention, e.g. [0.4914, 0.4822, 0.4465]). Computed from the training images when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub std: Option<Vec<f64>>,
    /// Whether `recipe.augment`'s random crop and horizontal flip suit this data (your own data
    /// only; default true for image_folder, false for safetensors). Built-in datasets decide for
    /// themselves (CIFAR and TinyImageNet yes, digits and MNIST no).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<bool>,
    /// Your own data uploaded through the coordinator (`lthctl dataset upload PATH` prints it):
    /// `"sha256:<64 hex digits>"` of the packed ImageFolder tree or the safetensors file, instead
    /// of `path`. Workers fetch it by digest and cache it. It enters the job hash (a path does too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<String>,
}

impl DatasetSpec {
    /// A dataset by kind and path, every other key unset.
    pub fn new(name: DatasetKind, path: Option<String>) -> Self {
        DatasetSpec { name, path, resolution: None, channels: None, mean: None, std: None, augment: None, upload: None }
    }

    /// The hex digest of `upload` (`"sha256:HEX"`), when set and well formed.
    pub fn upload_sha256(&self) -> Option<&str> {
        self.upload.as_deref().and_then(|u| u.trim().strip_prefix("sha256:")).filter(|h| crate::model::is_sha256_hex(h))
    }
}

/// Numeric precision of training. bf16/fp16 use autocast on CUDA; CPU always trains in fp32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    #[default]
    Fp32,
    Bf16,
    Fp16,
}

/// The learning-rate schedule (applied after warmup).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LrSchedule {
    /// Multiply the rate by `gamma` at each milestone.
    Step {
        milestones: Vec<TrainLength>,
        #[serde(default = "default_gamma")]
        gamma: f64,
    },
    /// Cosine decay to zero at the end of training.
    Cosine,
    Constant,
}

fn default_gamma() -> f64 {
    0.1
}

impl Default for LrSchedule {
    fn default() -> Self {
        LrSchedule::Constant
    }
}

/// How one network is trained, at every level of a chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Training length per level, e.g. "160ep".
    pub length: TrainLength,
    #[serde(default = "default_batch")]
    pub batch_size: u32,
    pub lr: f64,
    #[serde(default)]
    pub schedule: LrSchedule,
    /// Linear warmup from 0 to `lr`.
    #[serde(default)]
    pub warmup: TrainLength,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    #[serde(default)]
    pub nesterov: bool,
    #[serde(default)]
    pub precision: Precision,
    /// The rewind point k: survivors are reset to θ_k at every level ("0it" rewinds to init).
    #[serde(default)]
    pub rewind: TrainLength,
    /// Random crop (4-pixel padding) and horizontal flip, for the image datasets.
    #[serde(default = "default_true")]
    pub augment: bool,
    /// Channels-last memory format on CUDA.
    #[serde(default = "default_true")]
    pub channels_last: bool,
    /// CUDA only: capture one whole training step (forward, backward, SGD, masks) as a CUDA graph
    /// and replay it, which removes the per-kernel launch cost that bounds small networks. Falls
    /// back to eager steps, with a log line, where the capture fails. The default (on) stays out of
    /// the job hashes, so sweeps written before the option keep theirs.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub cuda_graph: bool,
    /// How often a running job writes a resumable checkpoint ("0it": only at the end).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: TrainLength,
}

fn default_batch() -> u32 {
    128
}
fn default_momentum() -> f64 {
    0.9
}
fn default_true() -> bool {
    true
}
fn is_true(b: &bool) -> bool {
    *b
}
fn default_checkpoint_every() -> TrainLength {
    TrainLength::Epochs(1)
}

/// Which weights may be pruned. Biases and batch-norm parameters never are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrunePolicy {
    #[serde(default = "default_true")]
    pub prune_convs: bool,
    #[serde(default = "default_true")]
    pub prune_linears: bool,
    /// Weight names kept dense, e.g. ["fc.weight"].
    #[serde(default)]
    pub exclude_layers: Vec<String>,
    /// Name patterns (`*` any run of characters, `?` one) choosing the prunable parameters, e.g.
    /// ["features.*.weight", "classifier.weight"]. When set they replace the model's own choice
    /// (and prune_convs / prune_linears); exclude_layers still applies. Default: every conv and
    /// linear weight of a built-in model, every trainable parameter of rank ≥ 2 of a TorchScript one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<String>,
    /// Every prunable layer keeps at least this fraction of its weights (guards against layer
    /// collapse under global thresholds). 0 disables the guard.
    #[serde(default)]
    pub min_keep_fraction: f64,
}

impl Default for PrunePolicy {
    fn default() -> Self {
        PrunePolicy { prune_convs: true, prune_linears: true, exclude_layers: Vec::new(), layers: Vec::new(), min_keep_fraction: 0.0 }
    }
}

/// A whole study: metrics × rates × seeds, each a chain of `levels` prune-rewind-retrain levels
/// after the dense level 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub model: ModelSpec,
    pub dataset: DatasetSpec,
    pub recipe: Recipe,
    pub metrics: Vec<ImportanceMetric>,
    /// Fraction of the remaining prunable weights removed per level, in (0, 1): one number for
    /// every level, or a per-level schedule such as [0.2, 0.2, 0.5] (see [`Rate`]).
    pub rates: Vec<Rate>,
    pub seeds: Vec<u64>,
    /// Pruning levels after level 0. Set `levels` or `target_sparsity`, not both; neither when
    /// every rate is a schedule (each trial then runs as many levels as its schedule lists).
    #[serde(default)]
    pub levels: Option<u32>,
    /// Run enough levels at each rate to reach this sparsity.
    #[serde(default)]
    pub target_sparsity: Option<f64>,
    /// Controls trained beside the ticket at each of `control_levels`: "reinit", "random_mask".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub controls: Vec<Control>,
    /// The levels (≥ 1) whose tickets get the controls, e.g. [5, 10].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub control_levels: Vec<u32>,
    #[serde(default)]
    pub pruning: PrunePolicy,
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    #[serde(default)]
    pub priority: i32,
    /// Ticket bundles: "off" (default), "metrics" or "metrics+rates" (see [`crate::BundleMode`]).
    /// Left out of the stored spec when off, so unbundled sweeps read and hash as before.
    #[serde(default, skip_serializing_if = "crate::BundleMode::is_off")]
    pub bundle: crate::BundleMode,
    /// The largest bundle (≥ 2; default [`crate::DEFAULT_MAX_BUNDLE`] when `bundle` is on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bundle: Option<u32>,
}

fn default_max_attempts() -> u32 {
    3
}
