//! Every sweep file in examples/ must parse and validate, and the paper settings must carry the
//! paper's recipes (Vandersmissen & Oramas 2023, Appendix A.4; DESIGN.md "Paper recipes"): a typo
//! in an example is the first thing a new user would hit.

use lth_sweep::{DatasetKind, ImportanceMetric, LrSchedule, ModelKind, Precision, Rate, SweepSpec, TrainLength};
use lthctl::sweep_file::{grid, load_sweep_file};
use std::path::PathBuf;

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn load(name: &str) -> SweepSpec {
    load_sweep_file(&examples_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e:#}")).spec
}

/// The paper's settings and the CPU demo: the paper's five metrics at 20% per level.
const PAPER_EXAMPLES: [&str; 6] =
    ["cifar10-resnet18.toml", "cifar10-resnet20.toml", "cifar10-vgg16.toml", "digits-lenet.toml", "mnist-lenet.toml", "tinyimagenet-resnet18.toml"];

/// One example per feature of docs/byo.md.
const FEATURE_EXAMPLES: [&str; 9] = [
    "digits-bundles.toml",
    "digits-controls.toml",
    "digits-schedule.toml",
    "digits-target-sparsity.toml",
    "digits-torchscript.toml",
    "imagefolder-resnet20.toml",
    "safetensors-lenet.toml",
    "uploaded-imagefolder-resnet20.toml",
    "uploaded-safetensors-lenet.toml",
];

#[test]
fn every_example_parses_and_validates() {
    let mut names: Vec<String> = std::fs::read_dir(examples_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    names.sort();
    let mut expected: Vec<&str> = PAPER_EXAMPLES.iter().chain(&FEATURE_EXAMPLES).copied().collect();
    expected.sort();
    assert_eq!(names, expected);
    for name in &names {
        let path = examples_dir().join(name);
        let loaded = load_sweep_file(&path).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        // lth-sweep's own reader (what the workers' run-local uses) agrees.
        let again = SweepSpec::from_toml_file(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(again, loaded.spec);
        // And the wire form converts back to the same spec (controls and rate schedules included:
        // the coordinator's store runs them).
        let wire = lth_proto::v1::SweepSpec::from(&loaded.spec);
        let back = SweepSpec::try_from(&wire).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(back, loaded.spec, "{name}");
        if PAPER_EXAMPLES.contains(&name.as_str()) {
            assert_eq!(loaded.spec.metrics, ImportanceMetric::PAPER.to_vec(), "{name} should run the paper's five metrics");
            assert_eq!(loaded.spec.rates, vec![Rate::Constant(0.2)], "{name}: the paper prunes 20% per level");
        }
    }
}

#[test]
fn every_example_passes_an_offline_dry_run() {
    for name in PAPER_EXAMPLES.iter().chain(&FEATURE_EXAMPLES) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lthctl"))
            .args(["submit", "--dry-run", "--offline"])
            .arg(examples_dir().join(name))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("dry run (offline): nothing submitted"), "{name}: {stdout}");
    }
}

#[test]
fn feature_examples_expand_as_their_comments_say() {
    let s = load("digits-controls.toml");
    let g = grid(&s);
    assert_eq!((g.dense_jobs, g.level_jobs, g.control_jobs, g.jobs()), (1, 8, 8, 17));
    let s = load("digits-schedule.toml");
    assert_eq!(s.rates, vec![Rate::Constant(0.2), Rate::Schedule(vec![0.5, 0.3])]);
    let plan = s.expand();
    assert_eq!(plan.trials[1].levels.iter().map(|l| l.rate).collect::<Vec<_>>(), vec![0.5, 0.3, 0.3, 0.3, 0.3]);
    let s = load("digits-target-sparsity.toml");
    assert_eq!((s.levels_for_rate(0.2), s.levels_for_rate(0.5)), (11, 4));
    let s = load("digits-torchscript.toml");
    let t = s.model.torchscript().expect("a TorchScript model");
    assert!(t.torchscript.ends_with("examples/models/lenet300100-digits.pt") && t.sha256.as_deref().is_some_and(|h| h.len() == 64), "{t:?}");
    let s = load("imagefolder-resnet20.toml");
    assert_eq!((s.dataset.name, s.dataset.resolution.map(|r| (r.height, r.width))), (DatasetKind::ImageFolder, Some((32, 32))));
    let s = load("safetensors-lenet.toml");
    assert_eq!((s.dataset.name, s.dataset.mean.clone()), (DatasetKind::Safetensors, Some(vec![0.1307])));
    for (file, kind) in [("uploaded-imagefolder-resnet20.toml", DatasetKind::ImageFolder), ("uploaded-safetensors-lenet.toml", DatasetKind::Safetensors)] {
        let s = load(file);
        assert_eq!((s.dataset.name, s.dataset.path.as_deref()), (kind, None), "{file}");
        assert!(s.dataset.upload_sha256().is_some(), "{file}");
    }
}

#[test]
fn digits_demo_is_the_agreed_cpu_grid() {
    let s = load("digits-lenet.toml");
    assert_eq!(s.model, ModelKind::Lenet300100);
    assert_eq!(s.dataset.name, DatasetKind::Digits);
    assert_eq!(s.dataset.path, None);
    assert_eq!(s.seeds.len(), 2);
    assert_eq!(s.levels, Some(4));
    let g = grid(&s);
    assert_eq!((g.trials, g.dense_jobs, g.level_jobs, g.jobs()), (10, 2, 40, 42));
}

#[test]
fn paper_settings_carry_the_paper_recipes() {
    let step = |a: u64, b: u64| LrSchedule::Step { milestones: vec![TrainLength::Epochs(a), TrainLength::Epochs(b)], gamma: 0.1 };
    // (file, model, dataset, epochs, batch, lr, schedule, weight decay, rewind)
    let cases = [
        ("cifar10-resnet20.toml", ModelKind::Resnet20, DatasetKind::Cifar10, 160, 128, 0.1, step(80, 120), 1e-4, TrainLength::Iterations(1000)),
        ("cifar10-vgg16.toml", ModelKind::Vgg16, DatasetKind::Cifar10, 160, 128, 0.1, step(80, 120), 1e-4, TrainLength::Iterations(2000)),
        ("tinyimagenet-resnet18.toml", ModelKind::Resnet18Imagenet, DatasetKind::TinyImagenet, 200, 256, 0.2, step(100, 150), 1e-4, TrainLength::Iterations(1000)),
        ("mnist-lenet.toml", ModelKind::Lenet300100, DatasetKind::Mnist, 40, 128, 0.1, LrSchedule::Constant, 0.0, TrainLength::Iterations(0)),
        ("cifar10-resnet18.toml", ModelKind::Resnet18, DatasetKind::Cifar10, 160, 128, 0.1, step(80, 120), 1e-4, TrainLength::Iterations(1000)),
    ];
    for (file, model, dataset, epochs, batch, lr, schedule, wd, rewind) in cases {
        let s = load(file);
        assert_eq!((s.model.builtin(), s.dataset.name), (Some(model), dataset), "{file}");
        assert!(s.dataset.path.as_deref().is_some_and(|p| p.starts_with("/data/")), "{file}");
        let r = &s.recipe;
        assert_eq!(r.length, TrainLength::Epochs(epochs), "{file}");
        assert_eq!((r.batch_size, r.lr, r.momentum, r.weight_decay), (batch, lr, 0.9, wd), "{file}");
        assert_eq!(r.schedule, schedule, "{file}");
        assert_eq!(r.rewind, rewind, "{file}");
        assert_eq!(s.seeds.len(), 3, "{file}: the paper averages 3 seeds");
        let expected_precision = if file == "cifar10-resnet18.toml" { Precision::Bf16 } else { Precision::Fp32 };
        assert_eq!(r.precision, expected_precision, "{file}");
    }
}
