//! Conversions between the typed spec and the wire message `lth.v1.SweepSpec`.
//!
//! lthctl parses a TOML file into [`SweepSpec`] and sends the protobuf; the coordinator converts it
//! back and validates it. A protobuf from any other client gets the same checks, with the missing or
//! unknown fields named.

use crate::validate::ValidationErrors;
use crate::*;
use lth_proto::v1 as pb;

impl From<ImportanceMetric> for pb::ImportanceMetric {
    fn from(m: ImportanceMetric) -> Self {
        use pb::ImportanceMetric as P;
        match m {
            ImportanceMetric::Magnitude => P::Magnitude,
            ImportanceMetric::L1 => P::L1,
            ImportanceMetric::L2 => P::L2,
            ImportanceMetric::Softmax => P::Softmax,
            ImportanceMetric::MinMax => P::MinMax,
            ImportanceMetric::Random => P::Random,
            ImportanceMetric::Lamp => P::Lamp,
            ImportanceMetric::UniformMagnitude => P::UniformMagnitude,
        }
    }
}

impl TryFrom<pb::ImportanceMetric> for ImportanceMetric {
    type Error = String;
    fn try_from(m: pb::ImportanceMetric) -> Result<Self, String> {
        use pb::ImportanceMetric as P;
        Ok(match m {
            P::Magnitude => Self::Magnitude,
            P::L1 => Self::L1,
            P::L2 => Self::L2,
            P::Softmax => Self::Softmax,
            P::MinMax => Self::MinMax,
            P::Random => Self::Random,
            P::Lamp => Self::Lamp,
            P::UniformMagnitude => Self::UniformMagnitude,
            P::Unspecified => return Err("importance metric is unspecified".into()),
        })
    }
}

impl ImportanceMetric {
    /// From the wire's enum number (unknown numbers are an error, not a default).
    pub fn from_proto_i32(v: i32) -> Result<Self, String> {
        let p = pb::ImportanceMetric::try_from(v).map_err(|_| format!("unknown importance metric number {v}"))?;
        Self::try_from(p)
    }
    pub fn to_proto_i32(self) -> i32 {
        pb::ImportanceMetric::from(self) as i32
    }
}

impl From<ModelKind> for pb::Model {
    fn from(m: ModelKind) -> Self {
        match m {
            ModelKind::Resnet18 => pb::Model::Resnet18,
            ModelKind::Resnet18Imagenet => pb::Model::Resnet18Imagenet,
            ModelKind::Resnet20 => pb::Model::Resnet20,
            ModelKind::Vgg16 => pb::Model::Vgg16,
            ModelKind::Lenet300100 => pb::Model::Lenet300100,
        }
    }
}

fn model_from(v: i32) -> Result<ModelKind, String> {
    Ok(match pb::Model::try_from(v).map_err(|_| format!("unknown model number {v}"))? {
        pb::Model::Resnet18 => ModelKind::Resnet18,
        pb::Model::Resnet18Imagenet => ModelKind::Resnet18Imagenet,
        pb::Model::Resnet20 => ModelKind::Resnet20,
        pb::Model::Vgg16 => ModelKind::Vgg16,
        pb::Model::Lenet300100 => ModelKind::Lenet300100,
        pb::Model::Unspecified => return Err("spec.model is unspecified: name the network to train".into()),
    })
}

fn model_spec_to(m: &ModelSpec) -> (i32, Option<pb::TorchScriptModel>) {
    match m {
        ModelSpec::Builtin(k) => (pb::Model::from(*k) as i32, None),
        ModelSpec::TorchScript(t) => (
            pb::Model::Unspecified as i32,
            Some(pb::TorchScriptModel {
                path: t.torchscript.clone(),
                sha256: t.sha256.clone().unwrap_or_default(),
                init: match t.init {
                    ModelInit::Seed => pb::ModelInit::Seed,
                    ModelInit::File => pb::ModelInit::File,
                } as i32,
                uploaded: t.uploaded,
            }),
        ),
    }
}

fn model_spec_from(model: i32, ts: &Option<pb::TorchScriptModel>) -> Result<ModelSpec, String> {
    match ts {
        None => model_from(model).map(ModelSpec::Builtin),
        Some(t) => {
            if model != pb::Model::Unspecified as i32 {
                return Err("spec sets both `model` and `torchscript`: send one of them".into());
            }
            let init = match pb::ModelInit::try_from(t.init).map_err(|_| format!("unknown model init number {}", t.init))? {
                pb::ModelInit::Seed | pb::ModelInit::Unspecified => ModelInit::Seed,
                pb::ModelInit::File => ModelInit::File,
            };
            Ok(ModelSpec::TorchScript(TorchScriptModel {
                torchscript: t.path.clone(),
                sha256: if t.sha256.is_empty() { None } else { Some(t.sha256.clone()) },
                init,
                uploaded: t.uploaded,
            }))
        }
    }
}

impl From<DatasetKind> for pb::Dataset {
    fn from(d: DatasetKind) -> Self {
        match d {
            DatasetKind::Cifar10 => pb::Dataset::Cifar10,
            DatasetKind::Cifar100 => pb::Dataset::Cifar100,
            DatasetKind::Mnist => pb::Dataset::Mnist,
            DatasetKind::TinyImagenet => pb::Dataset::TinyImagenet,
            DatasetKind::Digits => pb::Dataset::Digits,
            DatasetKind::ImageFolder => pb::Dataset::ImageFolder,
            DatasetKind::Safetensors => pb::Dataset::Safetensors,
        }
    }
}

fn dataset_from(v: i32) -> Result<DatasetKind, String> {
    Ok(match pb::Dataset::try_from(v).map_err(|_| format!("unknown dataset number {v}"))? {
        pb::Dataset::Cifar10 => DatasetKind::Cifar10,
        pb::Dataset::Cifar100 => DatasetKind::Cifar100,
        pb::Dataset::Mnist => DatasetKind::Mnist,
        pb::Dataset::TinyImagenet => DatasetKind::TinyImagenet,
        pb::Dataset::Digits => DatasetKind::Digits,
        pb::Dataset::ImageFolder => DatasetKind::ImageFolder,
        pb::Dataset::Safetensors => DatasetKind::Safetensors,
        pb::Dataset::Unspecified => return Err("spec.dataset.name is unspecified".into()),
    })
}

fn precision_to(p: Precision) -> pb::Precision {
    match p {
        Precision::Fp32 => pb::Precision::Fp32,
        Precision::Bf16 => pb::Precision::Bf16,
        Precision::Fp16 => pb::Precision::Fp16,
    }
}

fn precision_from(v: i32) -> Result<Precision, String> {
    Ok(match pb::Precision::try_from(v).map_err(|_| format!("unknown precision number {v}"))? {
        pb::Precision::Fp32 | pb::Precision::Unspecified => Precision::Fp32,
        pb::Precision::Bf16 => Precision::Bf16,
        pb::Precision::Fp16 => Precision::Fp16,
    })
}

impl From<TrainLength> for pb::TrainLength {
    fn from(l: TrainLength) -> Self {
        use pb::train_length::Unit;
        pb::TrainLength {
            unit: Some(match l {
                TrainLength::Epochs(e) => Unit::Epochs(e),
                TrainLength::Iterations(i) => Unit::Iterations(i),
            }),
        }
    }
}

fn length_from(l: &Option<pb::TrainLength>) -> Option<TrainLength> {
    use pb::train_length::Unit;
    l.as_ref().and_then(|l| l.unit).map(|u| match u {
        Unit::Epochs(e) => TrainLength::Epochs(e),
        Unit::Iterations(i) => TrainLength::Iterations(i),
    })
}

impl From<&Recipe> for pb::Recipe {
    fn from(r: &Recipe) -> Self {
        use pb::recipe::Schedule;
        pb::Recipe {
            length: Some(r.length.into()),
            batch_size: r.batch_size,
            lr: r.lr,
            schedule: Some(match &r.schedule {
                LrSchedule::Step { milestones, gamma } => Schedule::Step(pb::StepSchedule {
                    milestones: milestones.iter().map(|m| (*m).into()).collect(),
                    gamma: *gamma,
                }),
                LrSchedule::Cosine => Schedule::Cosine(pb::CosineSchedule {}),
                LrSchedule::Constant => Schedule::Constant(pb::ConstantSchedule {}),
            }),
            warmup: Some(r.warmup.into()),
            weight_decay: r.weight_decay,
            momentum: r.momentum,
            nesterov: r.nesterov,
            precision: precision_to(r.precision) as i32,
            rewind: Some(r.rewind.into()),
            augment: r.augment,
            channels_last: r.channels_last,
            checkpoint_every: Some(r.checkpoint_every.into()),
            cuda_graph: Some(r.cuda_graph),
        }
    }
}

fn control_to(c: Control) -> pb::Control {
    match c {
        Control::Reinit => pb::Control::Reinit,
        Control::RandomMask => pb::Control::RandomMask,
    }
}

fn control_from(v: i32) -> Result<Control, String> {
    match pb::Control::try_from(v).map_err(|_| format!("unknown control number {v}"))? {
        pb::Control::Reinit => Ok(Control::Reinit),
        pb::Control::RandomMask => Ok(Control::RandomMask),
        pb::Control::Unspecified => Err("spec.controls holds an unspecified control".into()),
    }
}

impl From<&DatasetSpec> for pb::DatasetSpec {
    fn from(d: &DatasetSpec) -> Self {
        pb::DatasetSpec {
            name: pb::Dataset::from(d.name) as i32,
            path: d.path.clone().unwrap_or_default(),
            resolution: d.resolution.map(|r| vec![r.height, r.width]).unwrap_or_default(),
            channels: d.channels.unwrap_or(0),
            mean: d.mean.clone().unwrap_or_default(),
            std: d.std.clone().unwrap_or_default(),
            augment: d.augment,
            upload: d.upload.clone().unwrap_or_default(),
        }
    }
}

fn dataset_spec_from(d: &pb::DatasetSpec, errs: &mut Vec<String>) -> Option<DatasetSpec> {
    let name = dataset_from(d.name).map_err(|e| errs.push(e)).ok()?;
    let resolution = match d.resolution.as_slice() {
        [] => None,
        [h, w] => Some(Resolution { height: *h, width: *w }),
        other => {
            errs.push(format!("spec.dataset.resolution has {} values: send [height, width]", other.len()));
            return None;
        }
    };
    Some(DatasetSpec {
        name,
        path: if d.path.is_empty() { None } else { Some(d.path.clone()) },
        resolution,
        channels: if d.channels == 0 { None } else { Some(d.channels) },
        mean: if d.mean.is_empty() { None } else { Some(d.mean.clone()) },
        std: if d.std.is_empty() { None } else { Some(d.std.clone()) },
        augment: d.augment,
        upload: if d.upload.is_empty() { None } else { Some(d.upload.clone()) },
    })
}

/// The wire form. Constant rates go to `rates` and schedules to `rate_schedules`, so a sweep that
/// mixes both comes back with its constants first.
impl From<&SweepSpec> for pb::SweepSpec {
    fn from(s: &SweepSpec) -> Self {
        use pb::sweep_spec::Depth;
        let (model, torchscript) = model_spec_to(&s.model);
        pb::SweepSpec {
            name: s.name.clone(),
            model,
            torchscript,
            dataset: Some((&s.dataset).into()),
            recipe: Some((&s.recipe).into()),
            metrics: s.metrics.iter().map(|m| m.to_proto_i32()).collect(),
            rates: s.rates.iter().filter_map(|r| match r {
                Rate::Constant(x) => Some(*x),
                Rate::Schedule(_) => None,
            }).collect(),
            rate_schedules: s.rates.iter().filter_map(|r| r.schedule().map(|v| pb::RateSchedule { rates: v.to_vec() })).collect(),
            controls: s.controls.iter().map(|c| control_to(*c) as i32).collect(),
            control_levels: s.control_levels.clone(),
            seeds: s.seeds.clone(),
            // A spec with both set is invalid and never sent; `levels` wins here.
            depth: match (s.levels, s.target_sparsity) {
                (Some(l), _) => Some(Depth::Levels(l)),
                (None, Some(t)) => Some(Depth::TargetSparsity(t)),
                (None, None) => None,
            },
            pruning: Some(pb::PrunePolicy {
                prune_convs: s.pruning.prune_convs,
                prune_linears: s.pruning.prune_linears,
                exclude_layers: s.pruning.exclude_layers.clone(),
                min_keep_fraction: s.pruning.min_keep_fraction,
                layers: s.pruning.layers.clone(),
            }),
            max_attempts: s.max_attempts,
            priority: s.priority,
            description: s.description.clone(),
            bundle: if s.bundle.is_off() { String::new() } else { s.bundle.as_str().to_string() },
            max_bundle: s.max_bundle.unwrap_or(0),
        }
    }
}

impl From<SweepSpec> for pb::SweepSpec {
    fn from(s: SweepSpec) -> Self {
        (&s).into()
    }
}

impl TryFrom<&pb::SweepSpec> for SweepSpec {
    type Error = ValidationErrors;
    /// Converts and validates. Absent optional messages take the sweep file's defaults;
    /// `max_attempts = 0` (proto's unset) means the default 3.
    fn try_from(p: &pb::SweepSpec) -> Result<Self, ValidationErrors> {
        let mut errs = Vec::new();
        let model = model_spec_from(p.model, &p.torchscript).map_err(|e| errs.push(e)).ok();
        let dataset = match &p.dataset {
            None => {
                errs.push("spec.dataset is missing: name the dataset (and its path on the workers)".into());
                None
            }
            Some(d) => dataset_spec_from(d, &mut errs),
        };
        let recipe = match &p.recipe {
            None => {
                errs.push("spec.recipe is missing: give the training recipe (length, lr, ...)".into());
                None
            }
            Some(r) => {
                let length = length_from(&r.length);
                if length.is_none() {
                    errs.push("spec.recipe.length is missing: set the training length, e.g. 160 epochs".into());
                }
                let precision = precision_from(r.precision).map_err(|e| errs.push(e)).ok();
                use pb::recipe::Schedule;
                let schedule = match &r.schedule {
                    None | Some(Schedule::Constant(_)) => LrSchedule::Constant,
                    Some(Schedule::Cosine(_)) => LrSchedule::Cosine,
                    Some(Schedule::Step(s)) => LrSchedule::Step {
                        milestones: s.milestones.iter().filter_map(|m| length_from(&Some(*m))).collect(),
                        gamma: s.gamma,
                    },
                };
                match (length, precision) {
                    (Some(length), Some(precision)) => Some(Recipe {
                        length,
                        batch_size: r.batch_size,
                        lr: r.lr,
                        schedule,
                        warmup: length_from(&r.warmup).unwrap_or_default(),
                        weight_decay: r.weight_decay,
                        momentum: r.momentum,
                        nesterov: r.nesterov,
                        precision,
                        rewind: length_from(&r.rewind).unwrap_or_default(),
                        augment: r.augment,
                        channels_last: r.channels_last,
                        cuda_graph: r.cuda_graph.unwrap_or(true),
                        checkpoint_every: length_from(&r.checkpoint_every).unwrap_or(TrainLength::Epochs(1)),
                    }),
                    _ => None,
                }
            }
        };
        let mut metrics = Vec::new();
        for &m in &p.metrics {
            match ImportanceMetric::from_proto_i32(m) {
                Ok(m) => metrics.push(m),
                Err(e) => errs.push(format!("spec.metrics: {e}")),
            }
        }
        use pb::sweep_spec::Depth;
        let (levels, target_sparsity) = match p.depth {
            Some(Depth::Levels(l)) => (Some(l), None),
            Some(Depth::TargetSparsity(t)) => (None, Some(t)),
            None => (None, None),
        };
        let pruning = p
            .pruning
            .as_ref()
            .map(|q| PrunePolicy {
                prune_convs: q.prune_convs,
                prune_linears: q.prune_linears,
                exclude_layers: q.exclude_layers.clone(),
                layers: q.layers.clone(),
                min_keep_fraction: q.min_keep_fraction,
            })
            .unwrap_or_default();
        let mut controls = Vec::new();
        for &c in &p.controls {
            match control_from(c) {
                Ok(c) => controls.push(c),
                Err(e) => errs.push(e),
            }
        }
        let bundle = BundleMode::parse(&p.bundle).map_err(|e| errs.push(format!("spec.bundle: {e}"))).unwrap_or_default();
        let mut rates: Vec<Rate> = p.rates.iter().map(|&r| Rate::Constant(r)).collect();
        rates.extend(p.rate_schedules.iter().map(|s| Rate::Schedule(s.rates.clone())));
        let (Some(model), Some(dataset), Some(recipe)) = (model, dataset, recipe) else {
            return Err(ValidationErrors(errs));
        };
        let spec = SweepSpec {
            name: p.name.clone(),
            description: p.description.clone(),
            model,
            dataset,
            recipe,
            metrics,
            rates,
            seeds: p.seeds.clone(),
            levels,
            target_sparsity,
            controls,
            control_levels: p.control_levels.clone(),
            pruning,
            max_attempts: if p.max_attempts == 0 { 3 } else { p.max_attempts },
            priority: p.priority,
            bundle,
            // 0 is the wire's unset.
            max_bundle: (p.max_bundle != 0).then_some(p.max_bundle),
        };
        if let Err(ValidationErrors(more)) = spec.validate() {
            errs.extend(more);
        }
        if errs.is_empty() {
            Ok(spec)
        } else {
            Err(ValidationErrors(errs))
        }
    }
}

impl TryFrom<pb::SweepSpec> for SweepSpec {
    type Error = ValidationErrors;
    fn try_from(p: pb::SweepSpec) -> Result<Self, ValidationErrors> {
        SweepSpec::try_from(&p)
    }
}
