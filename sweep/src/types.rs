//! The sweep file's schema. Field names here are the TOML keys users write.

use crate::TrainLength;
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
}

impl DatasetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cifar10 => "cifar10",
            Self::Cifar100 => "cifar100",
            Self::Mnist => "mnist",
            Self::TinyImagenet => "tiny_imagenet",
            Self::Digits => "digits",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    pub name: DatasetKind,
    /// Where the dataset lives on the worker; not needed for the bundled digits.
    #[serde(default)]
    pub path: Option<String>,
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
    /// Every prunable layer keeps at least this fraction of its weights (guards against layer
    /// collapse under global thresholds). 0 disables the guard.
    #[serde(default)]
    pub min_keep_fraction: f64,
}

impl Default for PrunePolicy {
    fn default() -> Self {
        PrunePolicy { prune_convs: true, prune_linears: true, exclude_layers: Vec::new(), min_keep_fraction: 0.0 }
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
    pub model: ModelKind,
    pub dataset: DatasetSpec,
    pub recipe: Recipe,
    pub metrics: Vec<ImportanceMetric>,
    /// Fraction of the remaining prunable weights removed per level, in (0, 1).
    pub rates: Vec<f64>,
    pub seeds: Vec<u64>,
    /// Pruning levels after level 0. Exactly one of `levels` and `target_sparsity` is set.
    #[serde(default)]
    pub levels: Option<u32>,
    /// Run enough levels at each rate to reach this sparsity.
    #[serde(default)]
    pub target_sparsity: Option<f64>,
    #[serde(default)]
    pub pruning: PrunePolicy,
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    #[serde(default)]
    pub priority: i32,
}

fn default_max_attempts() -> u32 {
    3
}
