//! Wire types to engine types and back: a `JobAssignment` becomes the engine's `StepSpec`, the
//! engine's `LevelReport` becomes the `LevelResult` of CompleteJob.
//!
//! Conversion errors are deterministic (the spec itself is wrong), so a job that fails here is
//! failed as not retryable.

use crate::engine::{LevelReport, StepSpec};
use anyhow::{anyhow, bail, Result};
use lth_proto::v1 as pb;
use lth_spec::{DatasetKind, DatasetSpec, ImportanceMetric, LrSchedule, ModelKind, Precision, PrunePolicy, Recipe, TrainLength};

/// The engine's description of the job's chain step.
pub fn step_spec(job: &pb::JobAssignment) -> Result<StepSpec> {
    let spec = job.spec.as_ref().ok_or_else(|| anyhow!("job {} has no sweep spec", job.job_id))?;
    let dataset = spec.dataset.as_ref().ok_or_else(|| anyhow!("the sweep spec has no dataset"))?;
    let recipe = spec.recipe.as_ref().ok_or_else(|| anyhow!("the sweep spec has no recipe"))?;
    let metric = match pb::JobKind::try_from(job.kind) {
        Ok(pb::JobKind::Dense) => None,
        Ok(pb::JobKind::Level) => Some(metric(job.metric)?),
        _ if job.level == 0 => None,
        _ => Some(metric(job.metric)?),
    };
    Ok(StepSpec {
        model: model(spec.model)?,
        dataset: DatasetSpec {
            name: dataset_kind(dataset.name)?,
            path: (!dataset.path.is_empty()).then(|| dataset.path.clone()),
        },
        recipe: self::recipe(recipe)?,
        pruning: spec.pruning.as_ref().map(prune_policy).unwrap_or_default(),
        seed: job.seed,
        metric,
        rate: if metric.is_some() { job.rate } else { 0.0 },
        level: job.level,
    })
}

fn model(v: i32) -> Result<ModelKind> {
    Ok(match pb::Model::try_from(v) {
        Ok(pb::Model::Resnet18) => ModelKind::Resnet18,
        Ok(pb::Model::Resnet18Imagenet) => ModelKind::Resnet18Imagenet,
        Ok(pb::Model::Resnet20) => ModelKind::Resnet20,
        Ok(pb::Model::Vgg16) => ModelKind::Vgg16,
        Ok(pb::Model::Lenet300100) => ModelKind::Lenet300100,
        _ => bail!("unknown model {v} in the job's spec (is this worker older than the coordinator?)"),
    })
}

fn dataset_kind(v: i32) -> Result<DatasetKind> {
    Ok(match pb::Dataset::try_from(v) {
        Ok(pb::Dataset::Cifar10) => DatasetKind::Cifar10,
        Ok(pb::Dataset::Cifar100) => DatasetKind::Cifar100,
        Ok(pb::Dataset::Mnist) => DatasetKind::Mnist,
        Ok(pb::Dataset::TinyImagenet) => DatasetKind::TinyImagenet,
        Ok(pb::Dataset::Digits) => DatasetKind::Digits,
        _ => bail!("unknown dataset {v} in the job's spec (is this worker older than the coordinator?)"),
    })
}

pub fn metric(v: i32) -> Result<ImportanceMetric> {
    Ok(match pb::ImportanceMetric::try_from(v) {
        Ok(pb::ImportanceMetric::Magnitude) => ImportanceMetric::Magnitude,
        Ok(pb::ImportanceMetric::L1) => ImportanceMetric::L1,
        Ok(pb::ImportanceMetric::L2) => ImportanceMetric::L2,
        Ok(pb::ImportanceMetric::Softmax) => ImportanceMetric::Softmax,
        Ok(pb::ImportanceMetric::MinMax) => ImportanceMetric::MinMax,
        Ok(pb::ImportanceMetric::Random) => ImportanceMetric::Random,
        Ok(pb::ImportanceMetric::Lamp) => ImportanceMetric::Lamp,
        Ok(pb::ImportanceMetric::UniformMagnitude) => ImportanceMetric::UniformMagnitude,
        _ => bail!("a pruning-level job needs an importance metric; the job names {v}"),
    })
}

fn length(v: Option<&pb::TrainLength>) -> Option<TrainLength> {
    match v?.unit? {
        pb::train_length::Unit::Epochs(e) => Some(TrainLength::Epochs(e)),
        pb::train_length::Unit::Iterations(i) => Some(TrainLength::Iterations(i)),
    }
}

fn recipe(r: &pb::Recipe) -> Result<Recipe> {
    let schedule = match &r.schedule {
        Some(pb::recipe::Schedule::Step(s)) => LrSchedule::Step {
            milestones: s
                .milestones
                .iter()
                .map(|m| length(Some(m)).ok_or_else(|| anyhow!("a step-schedule milestone has no length")))
                .collect::<Result<_>>()?,
            gamma: s.gamma,
        },
        Some(pb::recipe::Schedule::Cosine(_)) => LrSchedule::Cosine,
        Some(pb::recipe::Schedule::Constant(_)) | None => LrSchedule::Constant,
    };
    let precision = match pb::Precision::try_from(r.precision) {
        Ok(pb::Precision::Bf16) => Precision::Bf16,
        Ok(pb::Precision::Fp16) => Precision::Fp16,
        _ => Precision::Fp32,
    };
    Ok(Recipe {
        length: length(r.length.as_ref()).ok_or_else(|| anyhow!("the recipe has no training length"))?,
        batch_size: if r.batch_size == 0 { bail!("the recipe's batch_size is 0") } else { r.batch_size },
        lr: r.lr,
        schedule,
        warmup: length(r.warmup.as_ref()).unwrap_or(TrainLength::ZERO),
        weight_decay: r.weight_decay,
        momentum: r.momentum,
        nesterov: r.nesterov,
        precision,
        rewind: length(r.rewind.as_ref()).unwrap_or(TrainLength::ZERO),
        augment: r.augment,
        channels_last: r.channels_last,
        checkpoint_every: length(r.checkpoint_every.as_ref()).unwrap_or(TrainLength::Epochs(1)),
    })
}

fn prune_policy(p: &pb::PrunePolicy) -> PrunePolicy {
    PrunePolicy {
        prune_convs: p.prune_convs,
        prune_linears: p.prune_linears,
        exclude_layers: p.exclude_layers.clone(),
        min_keep_fraction: p.min_keep_fraction,
    }
}

/// The engine's report as CompleteJob's result.
pub fn level_result(r: &LevelReport) -> pb::LevelResult {
    pb::LevelResult {
        sparsity: r.sparsity,
        test_accuracy: r.test_accuracy,
        test_loss: r.test_loss,
        train_loss: r.train_loss,
        epochs: r.epochs,
        wall_seconds: r.wall_seconds,
        iterations: r.iterations,
        layers: r
            .layers
            .iter()
            .map(|l| pb::LayerStats {
                layer: l.name.clone(),
                kept: l.kept,
                total: l.total,
                mask_bits: l.mask_bits.clone().into(),
                collapsed: l.collapsed,
                weight_norm: l.weight_norm,
            })
            .collect(),
    }
}
