//! TorchScript models: a LeNet-300-100 exported by the repository's script trains, prunes and
//! rewinds through `run-local` like the built-in model, and matches it when both start from the
//! same weights; batch-norm state travels as non-trainable parameters; a model that does not fit
//! the data fails before anything is stored.
//!
//! The models are regenerated with scripts/make-torchscript-models.py when the project's venv
//! (torch 2.11; `LTH_TORCH_PYTHON` or ~/.cache/lth/venv/bin/python) is there, so the test checks
//! the script too; otherwise the checked-in files the script wrote are used.

use lth_sweep::{DatasetKind, DatasetSpec, ModelInit, ModelKind, ModelSpec, PrunePolicy, TorchScriptModel};
use lth_worker::engine::{self, artifacts, data, prunable_layers, InputShape, Network};
use lth_worker::local::{self, LocalChain};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tch::{Device, Kind, Tensor};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// (LeNet, conv+BN) model files: freshly exported when torch is at hand, else the checked-in ones.
fn models() -> &'static (PathBuf, PathBuf) {
    static M: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    M.get_or_init(|| {
        let python = std::env::var_os("LTH_TORCH_PYTHON")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/lth/venv/bin/python")))
            .filter(|p| p.is_file());
        if let Some(py) = python {
            // One export per version of the scripts, shared by the test processes (nextest runs
            // each test in its own): the folder is named by the scripts' digest and made by rename.
            let script = repo().join("scripts/make-torchscript-models.py");
            let mut text = std::fs::read(&script).unwrap();
            text.extend(std::fs::read(repo().join("scripts/lth_export.py")).unwrap());
            let digest = lth_sweep::file_sha256(&script).unwrap()[..16].to_string() + &format!("-{}", text.len());
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("torchscript-{digest}"));
            if !dir.join("tiny-convbn.pt").is_file() {
                let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("torchscript-tmp-{}", std::process::id()));
                let out = std::process::Command::new(&py).arg(&script).arg("--out-dir").arg(&tmp).output().expect("running the export script");
                assert!(out.status.success(), "scripts/make-torchscript-models.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
                if std::fs::rename(&tmp, &dir).is_err() {
                    let _ = std::fs::remove_dir_all(&tmp); // another test process got there first
                }
            }
            println!("models exported by {} into {}", py.display(), dir.display());
            return (dir.join("lenet300100-digits.pt"), dir.join("tiny-convbn.pt"));
        }
        println!("no torch python: using the checked-in models");
        (repo().join("examples/models/lenet300100-digits.pt"), repo().join("worker/tests/fixtures/tiny-convbn.pt"))
    })
}

fn torchscript(path: &Path, init: ModelInit) -> ModelSpec {
    ModelSpec::TorchScript(TorchScriptModel {
        torchscript: path.to_string_lossy().into_owned(),
        sha256: Some(lth_sweep::file_sha256(path).unwrap()),
        init,
        uploaded: false,
    })
}

const DIGITS: InputShape = InputShape { channels: 1, height: 8, width: 8 };

fn names(v: &[(String, Tensor)]) -> Vec<String> {
    v.iter().map(|(n, _)| n.clone()).collect()
}

#[test]
fn torchscript_lenet_starts_from_the_builtin_lenets_weights_in_network_order() {
    engine::configure_threads(Some(1));
    let (lenet, _) = models();
    let ts = Network::new(torchscript(lenet, ModelInit::Seed), DIGITS, 10, Device::Cpu, 3).unwrap();
    let builtin = Network::new(ModelKind::Lenet300100, DIGITS, 10, Device::Cpu, 3).unwrap();
    let (a, b) = (ts.named_variables(), builtin.named_variables());
    assert_eq!(names(&a), names(&b), "the module's order is the built-in network order");
    assert_eq!(names(&a)[0], "fc_layers.0.weight");
    for ((n, x), (_, y)) in a.iter().zip(&b) {
        assert!(x.equal(y), "{n}: θ0 differs from the built-in model's for the same seed");
    }
    assert_eq!(ts.parameter_count(), 50_610);
    let prunable = names(&prunable_layers(&ts, &PrunePolicy::default()));
    assert_eq!(prunable, ["fc_layers.0.weight", "fc_layers.1.weight", "fc.weight"]);
    // init = "file" keeps the exporter's weights, which are not lth's.
    let file = Network::new(torchscript(lenet, ModelInit::File), DIGITS, 10, Device::Cpu, 3).unwrap();
    assert!(!file.vs.variables()["fc.weight"].equal(&b[4].1));
    // Forward and backward go through the VarStore's tensors.
    let x = Tensor::randn([4, 1, 8, 8], (Kind::Float, Device::Cpu));
    assert!(ts.forward_t(&x, true).allclose(&builtin.forward_t(&x, true), 1e-6, 1e-6, false));
    ts.forward_t(&x, true).sum(Kind::Float).backward();
    assert!(ts.vs.variables()["fc_layers.0.weight"].grad().defined());
}

fn write_sweep(dir: &Path, model: &str, levels: u32, extra: &str) -> PathBuf {
    let p = dir.join(format!("sweep-{}.toml", model.len()));
    std::fs::write(
        &p,
        format!(
            r#"
name = "ts"
{model}
metrics = ["magnitude"]
rates = [0.3]
seeds = [5]
levels = {levels}
{extra}
[dataset]
name = "digits"
[recipe]
length = "6ep"
batch_size = 64
lr = 0.05
momentum = 0.9
rewind = "0it"
augment = false
checkpoint_every = "0it"
"#
        ),
    )
    .unwrap();
    p
}

fn chain(sweep: &Path, out: &Path) -> local::LocalRun {
    engine::configure_threads(Some(1));
    local::run(&LocalChain { sweep_file: sweep.to_path_buf(), metric: None, rate: None, seed: None, levels: None, out: Some(out.to_path_buf()) }, Device::Cpu)
        .unwrap()
}

#[test]
fn torchscript_lenet_trains_prunes_and_rewinds_through_run_local_like_the_builtin() {
    let t0 = std::time::Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let (lenet, _) = models();
    let ts_sweep = write_sweep(tmp.path(), &format!("model = {{ torchscript = {:?} }}", lenet.to_string_lossy()), 2, "");
    let builtin_sweep = write_sweep(tmp.path(), "model = \"lenet300100\"", 2, "");
    let ts = chain(&ts_sweep, &tmp.path().join("ts"));
    let bi = chain(&builtin_sweep, &tmp.path().join("builtin"));
    for (a, b) in ts.levels.iter().zip(&bi.levels) {
        let layer_names: Vec<&str> = a.layers.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(layer_names, ["fc_layers.0.weight", "fc_layers.1.weight", "fc.weight"], "reports list layers in network order");
        let (mut same, mut all) = (0u64, 0u64);
        for (x, y) in a.layers.iter().zip(&b.layers) {
            assert_eq!((x.name.as_str(), x.kept, x.total), (y.name.as_str(), y.kept, y.total));
            for (p, q) in x.bits.iter().zip(&y.bits) {
                same += 8 - (p ^ q).count_ones() as u64;
            }
            all += x.total;
        }
        let agree = same.min(all) as f64 / all as f64;
        println!(
            "level {}: accuracy torchscript {:.4} built-in {:.4}, masks agree on {:.5} of weights",
            a.level, a.test_accuracy, b.test_accuracy, agree
        );
        // The documented tolerance (docs/byo.md): masks agree on >= 99.9% of weights, accuracies
        // within half a point. The two networks run the same libtorch kernels from the same θ0.
        assert!(agree >= 0.999, "level {}: masks agree on only {agree}", a.level);
        assert!((a.test_accuracy - b.test_accuracy).abs() <= 0.005, "level {}: {} vs {}", a.level, a.test_accuracy, b.test_accuracy);
        assert!((a.sparsity - b.sparsity).abs() < 1e-12);
    }
    assert!(ts.levels[2].sparsity > 0.5 && ts.levels[2].test_accuracy > 0.85, "{:?}", (ts.levels[2].sparsity, ts.levels[2].test_accuracy));
    // Rewinding: level 1's survivors started at θk = θ0, which the TorchScript run wrote as its rewind artifact.
    let theta0 = artifacts::read(&tmp.path().join("ts/level-0").join(engine::REWIND_FILE)).unwrap();
    let builtin_theta0 = artifacts::read(&tmp.path().join("builtin/level-0").join(engine::REWIND_FILE)).unwrap();
    assert!(theta0["fc.weight"].equal(&builtin_theta0["fc.weight"]));
    println!("took {:?}", t0.elapsed());
}

/// A safetensors dataset of `n` random c×h×w images over `classes` classes.
fn tensor_dataset(path: &Path, c: i64, h: i64, w: i64, classes: i64) {
    let x = |n: i64| Tensor::randint(256, [n, h, w, c], (Kind::Uint8, Device::Cpu));
    let y = |n: i64| Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(classes);
    Tensor::write_safetensors(&[("train_images", x(64)), ("train_labels", y(64)), ("test_images", x(16)), ("test_labels", y(16))], path).unwrap();
}

#[test]
fn a_model_that_does_not_fit_the_data_fails_before_anything_is_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let (lenet, _) = models();
    let wrong_shape = tmp.path().join("10x10.safetensors");
    tensor_dataset(&wrong_shape, 1, 10, 10, 10);
    let sweep = write_sweep(tmp.path(), &format!("model = {{ torchscript = {:?} }}", lenet.to_string_lossy()), 1, "")
        .to_string_lossy()
        .into_owned();
    let text = std::fs::read_to_string(&sweep).unwrap().replace("name = \"digits\"", &format!("name = \"safetensors\"\npath = {:?}", wrong_shape.to_string_lossy()));
    std::fs::write(&sweep, text).unwrap();
    let out = tmp.path().join("out");
    engine::configure_threads(Some(1));
    let err = local::run(&LocalChain { sweep_file: sweep.clone().into(), metric: None, rate: None, seed: None, levels: None, out: Some(out.clone()) }, Device::Cpu)
        .err()
        .expect("a 64-input LeNet cannot take 10×10 images");
    let msg = format!("{err:#}");
    println!("{msg}");
    assert!(msg.contains("does not accept the dataset's input shape [2, 1, 10, 10]"), "{msg}");
    assert!(msg.contains("Export a model for 1×10×10 images"), "{msg}");
    assert!(!out.exists(), "nothing is stored for a model that does not fit");

    // The right shape but another number of classes.
    let five = tmp.path().join("5classes.safetensors");
    tensor_dataset(&five, 1, 8, 8, 5);
    let text = std::fs::read_to_string(&sweep).unwrap().replace(&*wrong_shape.to_string_lossy(), &five.to_string_lossy());
    std::fs::write(&sweep, text).unwrap();
    let err = local::run(&LocalChain { sweep_file: sweep.into(), metric: None, rate: None, seed: None, levels: None, out: Some(out.clone()) }, Device::Cpu)
        .err()
        .expect("a 10-class LeNet on a 5-class dataset");
    let msg = format!("{err:#}");
    assert!(msg.contains("returns shape [2, 10] for a batch of 2, but the dataset has 5 classes"), "{msg}");
    assert!(!out.exists());

    // A file that changed since the sweep was read is refused.
    let copy = tmp.path().join("copy.pt");
    std::fs::copy(lenet, &copy).unwrap();
    let spec = torchscript(&copy, ModelInit::Seed);
    std::fs::write(&copy, b"something else").unwrap();
    let e = Network::new(spec, DIGITS, 10, Device::Cpu, 0).err().unwrap().to_string();
    assert!(e.contains("the file changed since"), "{e}");
    let e = Network::new(torchscript(&copy, ModelInit::Seed), DIGITS, 10, Device::Cpu, 0).err().unwrap().to_string();
    assert!(e.contains("cannot load") && e.contains("torch.jit.save"), "{e}");
}

#[test]
fn batch_norm_state_is_carried_and_train_eval_modes_switch() {
    engine::configure_threads(Some(1));
    let (_, convbn) = models();
    let model = torchscript(convbn, ModelInit::Seed);
    let net = Network::new(model.clone(), DIGITS, 10, Device::Cpu, 1).unwrap();
    let vars = names(&net.named_variables());
    assert_eq!(vars, ["conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked", "fc.weight", "fc.bias"]);
    assert_eq!(names(&net.named_parameters()), ["conv.weight", "bn.weight", "bn.bias", "fc.weight", "fc.bias"], "exported buffers are state, not trained");
    assert_eq!(names(&prunable_layers(&net, &PrunePolicy::default())), ["conv.weight", "fc.weight"]);
    let only_fc = PrunePolicy { layers: vec!["fc.*".into()], ..Default::default() };
    assert_eq!(names(&prunable_layers(&net, &only_fc)), ["fc.weight", "fc.bias"], "patterns choose any trainable parameter");
    let bn = PrunePolicy { layers: vec!["bn.*".into()], ..Default::default() };
    assert_eq!(names(&prunable_layers(&net, &bn)), ["bn.weight", "bn.bias"], "never state: running statistics are not parameters to prune");
    let no_convs = PrunePolicy { prune_convs: false, ..Default::default() };
    assert_eq!(names(&prunable_layers(&net, &no_convs)), ["fc.weight"]);
    let v = net.vs.variables();
    assert_eq!(v["bn.weight"].sum(Kind::Double).double_value(&[]), 4.0, "norm scales start at 1");
    let x = Tensor::randn([6, 1, 8, 8], (Kind::Float, Device::Cpu)) * 3.0 + 1.0;
    let eval_before = net.forward_t(&x, false);
    let _ = net.forward_t(&x, true);
    let mean = &v["bn.running_mean"];
    assert!(mean.abs().sum(Kind::Double).double_value(&[]) > 0.0, "training mode updates the running statistics through lth's handles");
    assert_eq!(v["bn.num_batches_tracked"].int64_value(&[]), 1);
    let eval_after = net.forward_t(&x, false);
    assert!(!eval_before.allclose(&eval_after, 1e-6, 1e-6, false), "eval mode reads the running statistics");
    assert!(eval_after.equal(&net.forward_t(&x, false)), "eval mode changes nothing");

    // A level-0 step: θk and the trained weights carry the batch-norm state.
    let tmp = tempfile::tempdir().unwrap();
    let spec = engine::StepSpec {
        model,
        dataset: DatasetSpec::new(DatasetKind::Digits, None),
        recipe: toml::from_str("length = \"2ep\"\nbatch_size = 64\nlr = 0.05\nrewind = \"5it\"\naugment = false\ncheckpoint_every = \"0it\"").unwrap(),
        pruning: PrunePolicy::default(),
        seed: 1,
        metric: None,
        rate: 0.0,
        level: 0,
        control: None,
    };
    let out = engine::run_step(&spec, &Default::default(), tmp.path(), Device::Cpu, &mut |_| {}).unwrap();
    let rewind = artifacts::read(&tmp.path().join(engine::REWIND_FILE)).unwrap();
    let weights = artifacts::read(&tmp.path().join(engine::WEIGHTS_FILE)).unwrap();
    assert_eq!(rewind["bn.num_batches_tracked"].int64_value(&[]), 5, "θk is taken at iteration 5, batch-norm state included");
    assert_eq!(weights["bn.num_batches_tracked"].int64_value(&[]), 2 * (1500 / 64));
    assert!(!rewind["bn.running_mean"].equal(&weights["bn.running_mean"]));
    assert_eq!(out.report.layers.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(), ["conv.weight", "fc.weight"]);
    assert!(out.report.test_accuracy > 0.6, "two epochs of training: {}", out.report.test_accuracy);
}

#[test]
fn data_shape_is_checked_against_the_bundled_digits_too() {
    let (_, convbn) = models();
    let ds = data::load(&DatasetSpec::new(DatasetKind::Digits, None), Device::Cpu).unwrap();
    assert!(Network::new(torchscript(convbn, ModelInit::Seed), ds.shape, ds.classes, Device::Cpu, 0).is_ok());
    let e = Network::new(torchscript(convbn, ModelInit::Seed), InputShape { channels: 3, ..ds.shape }, 10, Device::Cpu, 0).err().unwrap().to_string();
    assert!(e.contains("[2, 3, 8, 8]"), "{e}");
}
