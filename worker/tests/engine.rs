//! The engine end to end on CPU with the bundled digits: accuracy of LeNet-300-100 dense and
//! pruned with each of the paper's metrics, masks honoured by training, rewinding, resume from a
//! checkpoint and determinism.

use lth_sweep::{ImportanceMetric, ModelKind, PrunePolicy, Recipe};
use lth_worker::engine::{self, artifacts, LevelReport, StepEvent, StepInputs, StepSpec};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn recipe(extra: &str) -> Recipe {
    let mut base: toml::Table = toml::from_str(
        "length = \"12ep\"\nbatch_size = 64\nlr = 0.05\nweight_decay = 1e-4\nmomentum = 0.9\nrewind = \"0it\"\ncheckpoint_every = \"0it\"",
    )
    .unwrap();
    let over: toml::Table = toml::from_str(extra).unwrap();
    base.extend(over);
    base.try_into().unwrap()
}

fn spec(recipe: Recipe, level: u32, metric: Option<ImportanceMetric>, rate: f64) -> StepSpec {
    StepSpec {
        model: ModelKind::Lenet300100.into(),
        dataset: toml::from_str("name = \"digits\"").unwrap(),
        recipe,
        pruning: PrunePolicy::default(),
        seed: 1,
        metric,
        rate,
        level,
        control: None,
    }
}

fn run(spec: &StepSpec, dir: &Path, rewind: Option<PathBuf>, parent: Option<PathBuf>) -> LevelReport {
    engine::configure_threads(Some(1));
    engine::run_step(spec, &StepInputs { rewind, parent }, dir, Device::Cpu, &mut |_| {}).unwrap().report
}

/// Runs level 0..=levels in `root`, returning the reports.
fn chain(recipe: &Recipe, metric: ImportanceMetric, rate: f64, levels: u32, root: &Path) -> Vec<LevelReport> {
    let mut out = Vec::new();
    let l0 = root.join("level-0");
    out.push(run(&spec(recipe.clone(), 0, None, 0.0), &l0, None, None));
    for level in 1..=levels {
        let dir = root.join(format!("level-{level}"));
        let parent = root.join(format!("level-{}", level - 1)).join(engine::WEIGHTS_FILE);
        out.push(run(&spec(recipe.clone(), level, Some(metric), rate), &dir, Some(l0.join(engine::REWIND_FILE)), Some(parent)));
    }
    out
}

fn load(p: &Path) -> HashMap<String, Tensor> {
    artifacts::read(p).unwrap()
}

#[test]
fn lenet_on_digits_dense_and_three_levels_per_paper_metric() {
    let t0 = std::time::Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let r = recipe("");
    let dense = run(&spec(r.clone(), 0, None, 0.0), &tmp.path().join("level-0"), None, None);
    println!("dense accuracy {:.4}", dense.test_accuracy);
    assert!(dense.test_accuracy >= 0.90, "dense LeNet-300-100 on digits: {}", dense.test_accuracy);
    let rewind = tmp.path().join("level-0").join(engine::REWIND_FILE);
    for metric in ImportanceMetric::PAPER {
        let root = tmp.path().join(metric.as_str());
        let mut parent = tmp.path().join("level-0").join(engine::WEIGHTS_FILE);
        for level in 1..=3 {
            let dir = root.join(format!("level-{level}"));
            let rep = run(&spec(r.clone(), level, Some(metric), 0.2), &dir, Some(rewind.clone()), Some(parent.clone()));
            let expected = 1.0 - 0.8f64.powi(level as i32);
            println!("{metric} level {level}: sparsity {:.4} accuracy {:.4}", rep.sparsity, rep.test_accuracy);
            assert!((rep.sparsity - expected).abs() < 1e-4, "{metric} level {level}: sparsity {}", rep.sparsity);
            if level == 3 {
                assert!(
                    rep.test_accuracy >= dense.test_accuracy - 0.03,
                    "{metric}: level 3 accuracy {} more than 3 points below dense {}",
                    rep.test_accuracy,
                    dense.test_accuracy
                );
            }
            parent = dir.join(engine::WEIGHTS_FILE);
        }
    }
    println!("took {:?}", t0.elapsed());
}

#[test]
fn pruned_weights_are_exactly_zero_after_training_and_survivors_start_from_theta_k() {
    let tmp = tempfile::tempdir().unwrap();
    // Rewind to iteration 30 (not init), two levels of magnitude pruning at 50%.
    let r = recipe("rewind = \"30it\"\nlength = \"4ep\"");
    let reps = chain(&r, ImportanceMetric::Magnitude, 0.5, 2, tmp.path());
    let l0 = tmp.path().join("level-0");
    let theta_k = load(&l0.join(engine::REWIND_FILE));
    let theta_end = load(&l0.join(engine::WEIGHTS_FILE));
    assert!(!theta_k["fc.weight"].equal(&theta_end["fc.weight"]), "θk must differ from the trained level-0 weights");
    for level in 1..=2 {
        let w = load(&tmp.path().join(format!("level-{level}")).join(engine::WEIGHTS_FILE));
        let rep = &reps[level];
        for layer in &rep.layers {
            let mask = &w[&format!("mask.{}", layer.name)];
            let weight = &w[&layer.name];
            assert_eq!(mask.kind(), Kind::Uint8);
            let pruned = mask.eq(0);
            let nonzero_pruned = weight.masked_select(&pruned).ne(0.0).sum(Kind::Int64).int64_value(&[]);
            assert_eq!(nonzero_pruned, 0, "{}: pruned weights must be exactly zero", layer.name);
            assert_eq!(mask.sum(Kind::Int64).int64_value(&[]) as u64, layer.kept);
            assert!(!layer.collapsed);
            // Dead units as the report has them = rows / columns of the stored mask with no 1.
            let shape = mask.size();
            let m2 = mask.to_kind(Kind::Int64).reshape([shape[0], shape[1], -1]).sum_dim_intlist([2i64].as_slice(), false, Kind::Int64);
            let size = m2.size();
            let dead_out = m2.sum_dim_intlist([1i64].as_slice(), false, Kind::Int64).eq(0).sum(Kind::Int64).int64_value(&[]) as u64;
            let dead_in = m2.sum_dim_intlist([0i64].as_slice(), false, Kind::Int64).eq(0).sum(Kind::Int64).int64_value(&[]) as u64;
            let units = layer.units.expect("the engine counts dead units");
            assert_eq!((units.outputs, units.inputs), (size[0] as u64, size[1] as u64), "{}", layer.name);
            assert_eq!((units.dead_outputs, units.dead_inputs), (dead_out, dead_in), "{}", layer.name);
            assert_eq!(units.output_layer, layer.name == "fc.weight", "{}", layer.name);
        }
        assert!((rep.sparsity - (1.0 - 0.5f64.powi(level as i32))).abs() < 1e-4);
    }

    // Rewinding: prepare level 1 without training and compare with θk.
    let s1 = spec(r.clone(), 1, Some(ImportanceMetric::Magnitude), 0.5);
    let data = engine::data::load(&s1.dataset, Device::Cpu).unwrap();
    let net = engine::Network::new(s1.model.clone(), data.shape, data.classes, Device::Cpu, 99).unwrap();
    let inputs = StepInputs { rewind: Some(l0.join(engine::REWIND_FILE)), parent: Some(l0.join(engine::WEIGHTS_FILE)) };
    let masks = engine::prune_and_rewind(&s1, &inputs, &net).unwrap();
    let mut tr = engine::train::Trainer::new(&net, &data, &s1.recipe, 1, Device::Cpu).unwrap();
    tr.set_masks(&masks.iter().map(|m| (m.name.clone(), m.to_bytes())).collect::<Vec<_>>()).unwrap();
    let vars = net.vs.variables();
    for m in &masks {
        let keep = Tensor::from_slice(&m.to_bytes()).reshape(m.shape.as_slice()).to_kind(Kind::Bool);
        let now = &vars[&m.name];
        assert!(now.masked_select(&keep).equal(&theta_k[&m.name].masked_select(&keep)), "{}: survivors must equal θk", m.name);
        assert_eq!(now.masked_select(&keep.logical_not()).abs().sum(Kind::Double).double_value(&[]), 0.0);
    }
    for (n, t) in &vars {
        if !masks.iter().any(|m| &m.name == n) {
            assert!(t.equal(&theta_k[n]), "{n}: unpruned variables are rewound too");
        }
    }
}

#[test]
fn resume_from_checkpoint_gives_bit_identical_weights() {
    let tmp = tempfile::tempdir().unwrap();
    // 23 iterations per epoch; checkpoints every 10: the copy at 40 is mid-epoch.
    let r = recipe("length = \"3ep\"\ncheckpoint_every = \"10it\"\nrewind = \"50it\"");
    for level in [0u32, 1] {
        let a = tmp.path().join(format!("a{level}"));
        let b = tmp.path().join(format!("b{level}"));
        std::fs::create_dir_all(&b).unwrap();
        let (s, rewind, parent) = if level == 0 {
            (spec(r.clone(), 0, None, 0.0), None, None)
        } else {
            (
                spec(r.clone(), 1, Some(ImportanceMetric::L2), 0.3),
                Some(tmp.path().join("a0").join(engine::REWIND_FILE)),
                Some(tmp.path().join("a0").join(engine::WEIGHTS_FILE)),
            )
        };
        let inputs = StepInputs { rewind: rewind.clone(), parent: parent.clone() };
        // level 0 keeps the 4th checkpoint (iteration 40); level 1 (from k = 50) the 1st (60).
        let (nth, first_report) = if level == 0 { (4, 46) } else { (1, 69) };
        let mut saved = 0;
        let mut seen = 0;
        engine::configure_threads(Some(1));
        let full = engine::run_step(&s, &inputs, &a, Device::Cpu, &mut |e| {
            if let StepEvent::Checkpoint { path } = e {
                seen += 1;
                if seen == nth {
                    // what a preempted job leaves behind: the checkpoint (and θk if already written)
                    std::fs::copy(&path, b.join(engine::CHECKPOINT_FILE)).unwrap();
                    saved = 1;
                }
            }
        })
        .unwrap();
        assert_eq!(saved, 1);
        if level == 0 {
            // θk at iteration 50 is written after the copied checkpoint (40): the resumed run writes it.
            assert!(!b.join(engine::REWIND_FILE).exists());
            // A checkpoint past k (iteration 60) carries θk: resumed in a bare folder it still
            // yields the "rewind" artifact.
            let c = tmp.path().join("c0");
            std::fs::create_dir_all(&c).unwrap();
            let mut n = 0;
            let tmpdir = tmp.path().join("scratch");
            engine::run_step(&s, &inputs, &tmpdir, Device::Cpu, &mut |e| {
                if let StepEvent::Checkpoint { path } = e {
                    n += 1;
                    if n == 6 {
                        std::fs::copy(&path, c.join(engine::CHECKPOINT_FILE)).unwrap();
                    }
                }
            })
            .unwrap();
            let out = engine::run_step(&s, &inputs, &c, Device::Cpu, &mut |_| {}).unwrap();
            assert!(out.artifacts.iter().any(|(n, p)| n == "rewind" && p.exists()));
            let (ra, rc) = (load(&a.join(engine::REWIND_FILE)), load(&c.join(engine::REWIND_FILE)));
            for (k, t) in &ra {
                assert!(t.equal(&rc[k]), "θk {k} differs");
            }
            assert!(load(&a.join(engine::WEIGHTS_FILE))["fc.weight"].equal(&load(&c.join(engine::WEIGHTS_FILE))["fc.weight"]));
        }
        let mut events = Vec::new();
        let resumed = engine::run_step(&s, &inputs, &b, Device::Cpu, &mut |e| events.push(e)).unwrap();
        let first = events.iter().find_map(|e| match e {
            StepEvent::Progress { iteration, .. } => Some(*iteration),
            _ => None,
        });
        assert_eq!(first, Some(first_report), "the resumed run starts at its checkpoint and first reports at the epoch end");
        let (wa, wb) = (load(&a.join(engine::WEIGHTS_FILE)), load(&b.join(engine::WEIGHTS_FILE)));
        assert_eq!(wa.len(), wb.len());
        for (n, t) in &wa {
            assert!(t.equal(&wb[n]), "level {level}: {n} differs after resume");
        }
        assert_eq!(full.report.test_accuracy, resumed.report.test_accuracy);
        assert_eq!(full.report.train_loss.to_bits(), resumed.report.train_loss.to_bits());
        if level == 0 {
            assert!(load(&a.join(engine::REWIND_FILE))["fc.weight"].equal(&load(&b.join(engine::REWIND_FILE))["fc.weight"]));
        }
        assert!(!a.join(engine::CHECKPOINT_FILE).exists(), "the checkpoint is removed once the step is done");
    }
}

#[test]
fn same_seed_same_masks_and_accuracies() {
    let tmp = tempfile::tempdir().unwrap();
    let r = recipe("length = \"3ep\"");
    let a = chain(&r, ImportanceMetric::Random, 0.4, 2, &tmp.path().join("a"));
    let b = chain(&r, ImportanceMetric::Random, 0.4, 2, &tmp.path().join("b"));
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.test_accuracy.to_bits(), y.test_accuracy.to_bits(), "level {}", x.level);
        assert_eq!(x.test_loss.to_bits(), y.test_loss.to_bits(), "level {}", x.level);
        assert_eq!(x.train_loss.to_bits(), y.train_loss.to_bits(), "level {}", x.level);
        assert_eq!(x.sparsity, y.sparsity);
        assert!(x.layers == y.layers, "level {}: masks or weight norms differ", x.level);
    }
    assert!(a[2].sparsity > 0.6, "two levels at 40% actually pruned");
}

#[test]
fn bad_steps_are_refused_with_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let s = spec(recipe(""), 1, Some(ImportanceMetric::L1), 0.2);
    let e = engine::run_step(&s, &StepInputs::default(), tmp.path(), Device::Cpu, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("rewind"), "{e}");
    let s = spec(recipe("batch_size = 4096"), 0, None, 0.0);
    let e = engine::run_step(&s, &StepInputs::default(), tmp.path(), Device::Cpu, &mut |_| {}).unwrap_err();
    assert!(format!("{e:#}").contains("lower batch_size"), "{e:#}");
    let s = spec(recipe("rewind = \"12ep\""), 0, None, 0.0);
    let e = engine::run_step(&s, &StepInputs::default(), tmp.path(), Device::Cpu, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("before the end"), "{e}");
}
