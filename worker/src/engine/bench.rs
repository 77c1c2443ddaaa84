//! `lth-worker bench`: training throughput of the engine's own step (forward, backward, SGD and
//! the mask multiply) on device-resident synthetic data, and the end-to-end epoch time of the real
//! input pipeline (gather, crop, flip, normalise), training loop and evaluation.
//!
//! Synthetic data is used because throughput does not depend on pixel values, and so the
//! benchmark runs on nodes without datasets. Masks prune a random 80% of every prunable layer.

use super::bundle::BundleTrainer;
use super::data::{Dataset, HostDataset, HostSplit};
use super::models::{InputShape, Network};
use super::rng::Rng;
use super::train::{StepImpl, Trainer};
use anyhow::Result;
use lth_sweep::{DatasetKind, LrSchedule, ModelKind, Precision, Recipe, TrainLength};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub model: ModelKind,
    pub batch: u32,
    pub precision: Precision,
    pub device: Device,
    pub warmup_steps: u32,
    pub steps: u32,
    /// Training images of the synthetic epoch (0: skip the epoch measurement).
    pub epoch_images: u32,
    pub test_images: u32,
    /// The optimizer step asked for (the engine falls back to per-tensor where the shim refuses).
    pub step_impl: StepImpl,
    /// Also time a bundle of this many members (0 or 1: solo only); see [`BundleBench`].
    pub bundle: u32,
    /// Ask for CUDA-graph replay of the step (`Recipe::cuda_graph`; CUDA only).
    pub graph: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    pub model: String,
    pub batch: u32,
    pub precision: String,
    pub device: String,
    pub channels_last: bool,
    pub threads: i32,
    /// The optimizer step that ran: "fused" or "per-tensor".
    pub step: String,
    /// Whether the timed steps were CUDA-graph replays.
    pub graph: bool,
    pub step_images_per_second: f64,
    pub step_ms: f64,
    pub epoch_images: u32,
    pub test_images: u32,
    pub epoch_seconds: Option<f64>,
    /// The epoch's pure step time: epoch steps × step_ms.
    pub epoch_step_seconds: Option<f64>,
    /// epoch_seconds / epoch_step_seconds (the input pipeline's and evaluation's overhead).
    pub epoch_overhead: Option<f64>,
    /// The bundle measured in the same run, when asked for.
    pub bundle: Option<BundleBench>,
}

/// K members trained as one bundle against K solo runs, measured back to back in one process on
/// the same batch: `speedup` = K × solo step time / bundle step time (> 1: the bundle is faster
/// than training the K members one after another).
#[derive(Clone, Debug, Serialize)]
pub struct BundleBench {
    pub members: u32,
    pub step: String,
    /// Whether the bundle's timed steps were CUDA-graph replays.
    pub graph: bool,
    pub step_ms: f64,
    /// Images per second summed over the members.
    pub images_per_second: f64,
    pub speedup: f64,
}

fn shape_of(model: ModelKind) -> (InputShape, i64, DatasetKind) {
    match model {
        ModelKind::Resnet18Imagenet => (InputShape { channels: 3, height: 64, width: 64 }, 200, DatasetKind::TinyImagenet),
        ModelKind::Lenet300100 => (InputShape { channels: 1, height: 28, width: 28 }, 10, DatasetKind::Mnist),
        _ => (InputShape { channels: 3, height: 32, width: 32 }, 10, DatasetKind::Cifar10),
    }
}

fn synthetic_split(rng: &mut Rng, n: usize, shape: InputShape, classes: i64) -> HostSplit {
    let per = (shape.channels * shape.height * shape.width) as usize;
    let images = (0..n * per).map(|_| rng.below(256) as u8).collect();
    let labels = (0..n).map(|_| rng.below(classes as u64) as i64).collect();
    HostSplit { images, labels, len: n }
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

pub fn run(cfg: &BenchConfig) -> Result<BenchResult> {
    let (shape, classes, kind) = shape_of(cfg.model);
    let mut rng = Rng::new(0);
    let n_train = cfg.epoch_images.max(cfg.batch) as usize;
    let host = HostDataset {
        name: kind,
        shape,
        classes,
        train: synthetic_split(&mut rng, n_train, shape, classes),
        test: synthetic_split(&mut rng, cfg.test_images.max(1) as usize, shape, classes),
    };
    let data = host.to_device(cfg.device);
    let recipe = Recipe {
        length: TrainLength::Epochs(1),
        batch_size: cfg.batch,
        lr: 0.05,
        schedule: LrSchedule::Constant,
        warmup: TrainLength::ZERO,
        weight_decay: 5e-4,
        momentum: 0.9,
        nesterov: true,
        precision: cfg.precision,
        rewind: TrainLength::ZERO,
        augment: true,
        channels_last: true,
        cuda_graph: cfg.graph,
        checkpoint_every: TrainLength::ZERO,
    };
    let net = Network::new(cfg.model, shape, classes, cfg.device, 0)?;
    let mut tr = Trainer::new(&net, &data, &recipe, 0, cfg.device)?;
    tr.step_impl = cfg.step_impl;
    let policy = lth_sweep::PrunePolicy::default();
    let masks: Vec<(String, Vec<u8>)> = super::prunable_layers(&net, &policy)
        .into_iter()
        .map(|(n, t)| {
            let bytes = (0..t.numel()).map(|_| (rng.next_f64() >= 0.8) as u8).collect();
            (n, bytes)
        })
        .collect();
    tr.set_masks(&masks)?;
    let step_used = tr.step_impl_in_use();

    // Pure step time on one fixed, already-normalised batch.
    let plan = data.epoch_plan(0, 0, true);
    let (x, y) = data.train_batch(&plan, 0, cfg.batch as i64, tr.channels_last);
    let mut acc = Tensor::zeros([], (Kind::Float, cfg.device));
    for _ in 0..cfg.warmup_steps {
        acc += tr.train_step(&x, &y, 0.05)?;
    }
    sync(cfg.device);
    let t0 = std::time::Instant::now();
    for _ in 0..cfg.steps {
        acc += tr.train_step(&x, &y, 0.05)?;
    }
    let _ = acc.double_value(&[]);
    sync(cfg.device);
    let step_s = t0.elapsed().as_secs_f64() / cfg.steps.max(1) as f64;
    let graph = tr.graph_in_use();

    let bundle = if cfg.bundle > 1 { Some(bench_bundle(cfg, &data, &recipe, shape, classes, &x, &y, step_s)?) } else { None };

    let (mut epoch_seconds, mut epoch_step_seconds) = (None, None);
    if cfg.epoch_images > 0 {
        let mut progress = tr.fresh_progress(0);
        let end = tr.iterations_per_epoch;
        sync(cfg.device);
        let t0 = std::time::Instant::now();
        tr.run(&mut progress, end, &mut |_, _| Ok(()))?;
        sync(cfg.device);
        epoch_seconds = Some(t0.elapsed().as_secs_f64());
        epoch_step_seconds = Some(end as f64 * step_s);
    }
    Ok(BenchResult {
        model: cfg.model.as_str().to_string(),
        batch: cfg.batch,
        precision: format!("{:?}", if cfg.device.is_cuda() { cfg.precision } else { Precision::Fp32 }).to_lowercase(),
        device: format!("{:?}", cfg.device).to_lowercase(),
        channels_last: tr.channels_last,
        threads: tch::get_num_threads(),
        step: step_used.as_str().to_string(),
        graph,
        step_images_per_second: cfg.batch as f64 / step_s,
        step_ms: step_s * 1e3,
        epoch_images: if cfg.epoch_images > 0 { (tr.iterations_per_epoch * cfg.batch as u64) as u32 } else { 0 },
        test_images: cfg.test_images,
        epoch_seconds,
        epoch_step_seconds,
        epoch_overhead: epoch_seconds.zip(epoch_step_seconds).map(|(a, b)| a / b),
        bundle,
    })
}

/// Times `cfg.bundle` members (the same θ0, each its own random 80% mask, as a bundle of one
/// seed's metrics) trained as one [`BundleTrainer`] on the solo measurement's batch.
#[allow(clippy::too_many_arguments)]
fn bench_bundle(cfg: &BenchConfig, data: &Dataset, recipe: &Recipe, shape: InputShape, classes: i64, x: &Tensor, y: &Tensor, solo_step_s: f64) -> Result<BundleBench> {
    let k = cfg.bundle as usize;
    let nets: Vec<Network> = (0..k).map(|_| Network::new(cfg.model, shape, classes, cfg.device, 0)).collect::<Result<_>>()?;
    let policy = lth_sweep::PrunePolicy::default();
    let mut trainers = Vec::new();
    for (i, net) in nets.iter().enumerate() {
        let mut rng = Rng::new(1 + i as u64);
        let mut tr = Trainer::new(net, data, recipe, 0, cfg.device)?;
        let masks: Vec<(String, Vec<u8>)> = super::prunable_layers(net, &policy)
            .into_iter()
            .map(|(n, t)| (n, (0..t.numel()).map(|_| (rng.next_f64() >= 0.8) as u8).collect()))
            .collect();
        tr.set_masks(&masks)?;
        trainers.push(tr);
    }
    let mut bt = BundleTrainer::new(trainers)?;
    bt.step_impl = cfg.step_impl;
    let step_used = bt.step_impl_in_use();
    let mut acc = Tensor::zeros([k as i64], (Kind::Float, cfg.device));
    for _ in 0..cfg.warmup_steps {
        acc += bt.train_step(x, y, 0.05)?;
    }
    sync(cfg.device);
    let t0 = std::time::Instant::now();
    for _ in 0..cfg.steps {
        acc += bt.train_step(x, y, 0.05)?;
    }
    let _ = acc.sum(Kind::Double).double_value(&[]);
    sync(cfg.device);
    let step_s = t0.elapsed().as_secs_f64() / cfg.steps.max(1) as f64;
    Ok(BundleBench {
        members: cfg.bundle,
        step: step_used.as_str().to_string(),
        graph: bt.graph_in_use(),
        step_ms: step_s * 1e3,
        images_per_second: (k as u32 * cfg.batch) as f64 / step_s,
        speedup: k as f64 * solo_step_s / step_s,
    })
}
