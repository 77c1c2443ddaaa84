//! What `submit --dry-run` says a sweep costs: images to train, and device-hours from throughput.
//!
//! Images: a level-0 job trains the whole recipe length; a level or control job trains from the
//! rewind point to the end. Epochs count the dataset's training images (known for the built-in
//! datasets; a custom dataset's size is only known to the workers, so an epoch-length recipe on
//! one gets no image count). Hours: images / images-per-second for the model and batch size.
//!
//! Source of the throughput, best first: what finished jobs measured on the coordinator's workers
//! (the `measured_throughput` view through GetThroughput: the same model, precision and device,
//! the nearest batch size), one line per device kind; else, for the CPU, the `lth-worker bench`
//! figures recorded in BENCHMARKS.md (fp32, 1 libtorch thread, a 2-vCPU machine under load, so a
//! pessimistic bound). A GPU kind no job has run on gets no estimate; the output says so
//! instead of guessing, and every line names its source.

use lth_proto::v1 as pb;
use lth_sweep::{DatasetKind, ModelKind, ModelSpec, Precision, SweepSpec, TrainLength};

/// One `lth-worker bench` figure: training images per second for a model at a batch size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BenchFigure {
    pub model: ModelKind,
    pub batch: u32,
    pub images_per_second: f64,
}

/// BENCHMARKS.md, "Training throughput and end-to-end epoch, CPU, fp32, 1 libtorch thread".
pub const CPU_BENCH: [BenchFigure; 6] = [
    BenchFigure { model: ModelKind::Resnet18, batch: 32, images_per_second: 7.8 },
    BenchFigure { model: ModelKind::Resnet20, batch: 32, images_per_second: 79.8 },
    BenchFigure { model: ModelKind::Resnet20, batch: 128, images_per_second: 70.3 },
    BenchFigure { model: ModelKind::Vgg16, batch: 32, images_per_second: 10.6 },
    BenchFigure { model: ModelKind::Vgg16, batch: 128, images_per_second: 12.3 },
    BenchFigure { model: ModelKind::Lenet300100, batch: 128, images_per_second: 14_457.0 },
];

/// Training images of a built-in dataset (None: the workers' own files decide).
pub fn train_images(d: DatasetKind) -> Option<u64> {
    match d {
        DatasetKind::Cifar10 | DatasetKind::Cifar100 => Some(50_000),
        DatasetKind::Mnist => Some(60_000),
        DatasetKind::TinyImagenet => Some(100_000),
        // The bundled digits' training split (worker/src/engine/data.rs: DIGITS_TRAIN_ROWS).
        DatasetKind::Digits => Some(1500),
        _ => None,
    }
}

fn images_of(len: TrainLength, epoch: Option<u64>, batch: u32) -> Option<u64> {
    match len {
        TrainLength::Iterations(i) => Some(i * u64::from(batch)),
        TrainLength::Epochs(e) => epoch.map(|n| e * n),
    }
}

/// Images the jobs train: `dense` level-0 jobs and `others` level/control jobs.
pub fn images_to_train(spec: &SweepSpec, dense: u64, others: u64) -> Option<u64> {
    let epoch = train_images(spec.dataset.name);
    let r = &spec.recipe;
    let full = images_of(r.length, epoch, r.batch_size)?;
    let rewind = images_of(r.rewind, epoch, r.batch_size)?;
    Some(dense * full + others * full.saturating_sub(rewind))
}

/// The bench figure nearest to the spec's model and batch size (same model, closest batch).
pub fn nearest_bench(spec: &SweepSpec) -> Option<BenchFigure> {
    let model = spec.model.builtin()?;
    CPU_BENCH.iter().filter(|f| f.model == model).min_by_key(|f| f.batch.abs_diff(spec.recipe.batch_size)).copied()
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The `measured_throughput` model key of a spec: the built-in name or "torchscript:<sha256>".
fn model_key(spec: &SweepSpec) -> String {
    match &spec.model {
        ModelSpec::Builtin(k) => k.as_str().to_string(),
        ModelSpec::TorchScript(t) => format!("torchscript:{}", t.sha256.clone().unwrap_or_default()),
    }
}

fn precision_name(p: Precision) -> &'static str {
    match p {
        Precision::Fp32 => "fp32",
        Precision::Bf16 => "bf16",
        Precision::Fp16 => "fp16",
    }
}

/// Per device, the measured row for the spec's model and precision at the nearest batch size.
pub fn matching_measurements<'a>(spec: &SweepSpec, measured: &'a [pb::ThroughputRow]) -> Vec<&'a pb::ThroughputRow> {
    let (model, precision, batch) = (model_key(spec), precision_name(spec.recipe.precision), spec.recipe.batch_size);
    let mut best: std::collections::BTreeMap<&str, &pb::ThroughputRow> = std::collections::BTreeMap::new();
    for r in measured.iter().filter(|r| r.model == model && r.precision == precision && r.images_per_second > 0.0) {
        let better = match best.get(r.device.as_str()) {
            None => true,
            Some(b) => r.batch_size.abs_diff(batch) < b.batch_size.abs_diff(batch),
        };
        if better {
            best.insert(&r.device, r);
        }
    }
    best.into_values().collect()
}

/// The estimate lines of a dry run for `dense` level-0 jobs and `others` level/control jobs to
/// run, from `measured` throughput where the coordinator has some (None: offline).
pub fn describe(spec: &SweepSpec, dense: u64, others: u64, measured: Option<&[pb::ThroughputRow]>) -> String {
    let Some(images) = images_to_train(spec, dense, others) else {
        return format!(
            "estimate: no image count: the recipe counts epochs of {}, whose size only the workers know (give length and rewind in iterations, e.g. \"5000it\", for an estimate)\n",
            spec.dataset.name.as_str()
        );
    };
    let mut s = format!("estimate: {} images to train ({dense} level-0 jobs, {others} from the rewind point)\n", thousands(images));
    let precision = precision_name(spec.recipe.precision);
    let rows = matching_measurements(spec, measured.unwrap_or(&[]));
    for r in &rows {
        let hours = images as f64 / r.images_per_second / 3600.0;
        let unit = if r.device == "cpu" { "CPU" } else { "GPU" };
        s.push_str(&format!(
            "  {}: {hours:.2} {unit}-hours at {:.0} img/s (source: measured by {} finished job(s) on the coordinator's workers, {} at batch {}, {precision}{}; one job per device)\n",
            r.device,
            r.images_per_second,
            r.jobs,
            model_key(spec),
            r.batch_size,
            if r.batch_size != spec.recipe.batch_size { format!("; nearest to batch {}", spec.recipe.batch_size) } else { String::new() }
        ));
    }
    if !rows.iter().any(|r| r.device == "cpu") {
        match nearest_bench(spec) {
            Some(f) => {
                let hours = images as f64 / f.images_per_second / 3600.0;
                s.push_str(&format!(
                    "  cpu: {hours:.2} CPU-hours at {} img/s (source: lth-worker bench figure in BENCHMARKS.md for {} at batch {}, fp32, 1 thread on a loaded 2-vCPU machine: a pessimistic bound{})\n",
                    f.images_per_second,
                    f.model.as_str(),
                    f.batch,
                    if f.batch != spec.recipe.batch_size { format!("; nearest to batch {}", spec.recipe.batch_size) } else { String::new() }
                ));
            }
            None => s.push_str(&format!("  cpu: no measured or lth-worker bench figure for {}: run `lth-worker bench` on a worker for one\n", spec.model)),
        }
    }
    if !rows.iter().any(|r| r.device.starts_with("cuda")) {
        let why = if measured.is_none() { "offline: the coordinator's measurements were not asked" } else { "no finished job of this model and precision has run on a GPU worker yet" };
        s.push_str(&format!("  gpu: no estimate: {why} ({precision}; `lth-worker bench --device cuda` measures one)\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_sweep_costs_what_its_grid_says() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/digits-lenet.toml")).unwrap();
        let spec = SweepSpec::from_toml_str(&text).unwrap();
        // 12 epochs of 1500 images, rewind to init: every job trains 18,000 images; 42 jobs.
        assert_eq!(images_to_train(&spec, 2, 40), Some(42 * 18_000));
        let d = describe(&spec, 2, 40, None);
        assert!(d.starts_with("estimate: 756,000 images to train (2 level-0 jobs, 40 from the rewind point)"), "{d}");
        // 756,000 / 14,457 img/s = 52.3 s = 0.01 h; nearest figure is batch 128 for batch 64.
        assert!(d.contains("cpu: 0.01 CPU-hours at 14457 img/s (source: lth-worker bench figure in BENCHMARKS.md for lenet300100 at batch 128"), "{d}");
        assert!(d.contains("nearest to batch 64"), "{d}");
        assert!(d.contains("gpu: no estimate"), "{d}");
    }

    #[test]
    fn rewinding_trains_less_and_iterations_need_no_dataset_size() {
        let mut spec = SweepSpec::from_toml_str(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/digits-lenet.toml")).unwrap()).unwrap();
        spec.recipe.length = TrainLength::Iterations(1000);
        spec.recipe.rewind = TrainLength::Iterations(100);
        // batch 64: dense 64,000 images, a level 57,600.
        assert_eq!(images_to_train(&spec, 1, 2), Some(64_000 + 2 * 57_600));
        spec.dataset.name = DatasetKind::ImageFolder;
        assert_eq!(images_to_train(&spec, 1, 2), Some(64_000 + 2 * 57_600));
        spec.recipe.length = TrainLength::Epochs(3);
        assert_eq!(images_to_train(&spec, 1, 2), None);
        assert!(describe(&spec, 1, 2, None).starts_with("estimate: no image count"));
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    fn row(device: &str, batch: u32, ips: f64) -> pb::ThroughputRow {
        pb::ThroughputRow { model: "lenet300100".into(), batch_size: batch, precision: "fp32".into(), device: device.into(), jobs: 3, images: 1, seconds: 1.0, images_per_second: ips }
    }

    #[test]
    fn measured_throughput_beats_bench_figures_per_device() {
        let spec = SweepSpec::from_toml_str(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/digits-lenet.toml")).unwrap()).unwrap();
        let other_model = pb::ThroughputRow { model: "resnet20".into(), ..row("cuda NVIDIA H200", 64, 1.0) };
        let measured = vec![row("cpu", 32, 1000.0), row("cpu", 64, 2100.0), row("cuda NVIDIA H200", 512, 756_000.0 / 36.0), other_model];
        let d = describe(&spec, 2, 40, Some(&measured));
        // 756,000 images at 2,100 img/s = 0.1 h; the batch-64 row wins over batch 32.
        assert!(d.contains("  cpu: 0.10 CPU-hours at 2100 img/s (source: measured by 3 finished job(s)"), "{d}");
        assert!(d.contains("  cuda NVIDIA H200: 0.01 GPU-hours at 21000 img/s") && d.contains("nearest to batch 64"), "{d}");
        assert!(!d.contains("bench figure") && !d.contains("gpu: no estimate"), "{d}");
        // Nothing measured for this model: the bench figure, and no GPU estimate, each saying why.
        let d = describe(&spec, 2, 40, Some(&measured[3..]));
        assert!(d.contains("cpu: 0.01 CPU-hours at 14457 img/s (source: lth-worker bench") && d.contains("no finished job of this model"), "{d}");
    }
}
