//! The lottery-ticket controls on the bundled digits: `reinit` keeps the ticket's mask and starts
//! from another initialisation; `random_mask` starts from θk under a random mask with exactly the
//! ticket's per-layer kept counts; `run-local` yields ticket and control rows per controlled level.

use lth_sweep::{Control, ImportanceMetric, ModelKind, PrunePolicy, Rate, Recipe};
use lth_worker::engine::{self, artifacts, StepInputs, StepSpec};
use lth_worker::local::{self, LocalChain};
use std::path::Path;
use tch::{Device, Kind, Tensor};

fn recipe() -> Recipe {
    toml::from_str("length = \"4ep\"\nbatch_size = 64\nlr = 0.05\nrewind = \"20it\"\naugment = false\ncheckpoint_every = \"0it\"").unwrap()
}

fn step(level: u32, control: Option<Control>) -> StepSpec {
    StepSpec {
        model: ModelKind::Lenet300100.into(),
        dataset: toml::from_str("name = \"digits\"").unwrap(),
        recipe: recipe(),
        pruning: PrunePolicy::default(),
        seed: 4,
        metric: (level > 0).then_some(ImportanceMetric::Magnitude),
        rate: if level > 0 { 0.6 } else { 0.0 },
        level,
        control,
    }
}

fn masks_of(p: &Path) -> std::collections::HashMap<String, Tensor> {
    artifacts::read(p).unwrap().into_iter().filter(|(k, _)| k.starts_with(artifacts::MASK_PREFIX)).collect()
}

#[test]
fn reinit_keeps_the_mask_and_changes_the_initialisation_random_mask_keeps_the_counts() {
    engine::configure_threads(Some(1));
    let tmp = tempfile::tempdir().unwrap();
    let (l0, l1) = (tmp.path().join("level-0"), tmp.path().join("level-1"));
    engine::run_step(&step(0, None), &StepInputs::default(), &l0, Device::Cpu, &mut |_| {}).unwrap();
    let rewind = l0.join(engine::REWIND_FILE);
    let inputs = StepInputs { rewind: Some(rewind.clone()), parent: Some(l0.join(engine::WEIGHTS_FILE)) };
    let ticket = engine::run_step(&step(1, None), &inputs, &l1, Device::Cpu, &mut |_| {}).unwrap().report;
    let theta_k = artifacts::read(&rewind).unwrap();
    let ticket_masks = masks_of(&l1.join(engine::WEIGHTS_FILE));
    let control_inputs = StepInputs { rewind: Some(rewind), parent: Some(l1.join(engine::WEIGHTS_FILE)) };
    let data = engine::data::load(&step(0, None).dataset, Device::Cpu).unwrap();

    // The set-up of each control, before training.
    for control in Control::ALL {
        let s = step(1, Some(control));
        let net = engine::Network::new(ModelKind::Lenet300100, data.shape, data.classes, Device::Cpu, engine::init_seed(&s)).unwrap();
        let masks = engine::prune_and_rewind(&s, &control_inputs, &net).unwrap();
        let vars = net.vs.variables();
        for m in &masks {
            let t = &ticket_masks[&format!("mask.{}", m.name)];
            let mine = Tensor::from_slice(&m.to_bytes()).reshape(m.shape.as_slice());
            assert_eq!(m.kept as i64, t.sum(Kind::Int64).int64_value(&[]), "{control}: {} keeps the ticket's count exactly", m.name);
            match control {
                Control::Reinit => {
                    assert!(mine.equal(t), "reinit keeps the ticket's mask of {}", m.name);
                    assert!(!vars[&m.name].equal(&theta_k[&m.name]), "reinit must not start from θk ({})", m.name);
                }
                Control::RandomMask => {
                    assert!(!mine.equal(t), "random_mask redraws the mask of {}", m.name);
                    assert!(vars[&m.name].equal(&theta_k[&m.name]), "random_mask starts from θk ({})", m.name);
                }
            }
        }
        assert_eq!(masks.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["fc_layers.0.weight", "fc_layers.1.weight", "fc.weight"]);
    }
    assert_ne!(engine::init_seed(&step(1, Some(Control::Reinit))), 4, "reinit draws from a seed of its own");

    // Trained: each control reports the ticket's per-layer counts; the random one's positions differ.
    for control in Control::ALL {
        let dir = tmp.path().join(format!("level-1-{control}"));
        let r = engine::run_step(&step(1, Some(control)), &control_inputs, &dir, Device::Cpu, &mut |_| {}).unwrap().report;
        assert_eq!(r.sparsity, ticket.sparsity);
        for (a, b) in r.layers.iter().zip(&ticket.layers) {
            assert_eq!((a.name.as_str(), a.kept, a.total), (b.name.as_str(), b.kept, b.total));
            match control {
                Control::Reinit => assert_eq!(a.bits, b.bits),
                Control::RandomMask => assert_ne!(a.bits, b.bits),
            }
        }
        assert_eq!(r.iterations, ticket.iterations, "a control trains the ticket's span (k to the end)");
        println!("{control}: accuracy {:.4} (ticket {:.4})", r.test_accuracy, ticket.test_accuracy);
    }
    // A control needs the ticket's weights.
    let e = engine::run_step(&step(1, Some(Control::Reinit)), &StepInputs::default(), &tmp.path().join("x"), Device::Cpu, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("the reinit control of level 1 needs"), "{e}");
}

#[test]
fn run_local_yields_ticket_and_control_results_per_controlled_level() {
    let t0 = std::time::Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let sweep = tmp.path().join("controls.toml");
    std::fs::write(
        &sweep,
        r#"
name = "controls"
model = "lenet300100"
metrics = ["l2"]
rates = [[0.5, 0.3]]
seeds = [2]
controls = ["reinit", "random_mask"]
control_levels = [1, 2]
[dataset]
name = "digits"
[recipe]
length = "4ep"
batch_size = 64
lr = 0.05
rewind = "0it"
augment = false
checkpoint_every = "0it"
"#,
    )
    .unwrap();
    let out = tmp.path().join("out");
    engine::configure_threads(Some(1));
    let args = LocalChain { sweep_file: sweep, metric: None, rate: None, seed: None, levels: None, out: Some(out.clone()) };
    let run = local::run(&args, Device::Cpu).unwrap();
    // The schedule sets both the depth and each level's rate: 50%, then 30% of the rest.
    assert_eq!(run.levels.len(), 3);
    assert!((run.levels[1].sparsity - 0.5).abs() < 1e-4 && (run.levels[2].sparsity - 0.65).abs() < 1e-4, "{} {}", run.levels[1].sparsity, run.levels[2].sparsity);
    let got: Vec<(u32, Control)> = run.controls.iter().map(|(l, c, _)| (*l, *c)).collect();
    assert_eq!(got, [(1, Control::Reinit), (1, Control::RandomMask), (2, Control::Reinit), (2, Control::RandomMask)]);
    for (level, _, r) in &run.controls {
        assert_eq!(r.level, *level);
        let ticket = &run.levels[*level as usize];
        assert_eq!(r.layers.iter().map(|l| l.kept).collect::<Vec<_>>(), ticket.layers.iter().map(|l| l.kept).collect::<Vec<_>>());
    }
    let chain: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("chain.json")).unwrap()).unwrap();
    assert_eq!(chain["rate"], serde_json::json!([0.5, 0.3]));
    assert_eq!(chain["levels"][2]["rate"], 0.3);
    let controls = chain["controls"].as_array().unwrap();
    assert_eq!(controls.len(), 4);
    assert_eq!(controls[1]["control"], "random_mask");
    assert_eq!(controls[1]["ticket_accuracy"], chain["levels"][1]["test_accuracy"]);
    for c in ["level-1-reinit", "level-1-random_mask", "level-2-reinit", "level-2-random_mask"] {
        assert!(out.join(c).join(engine::REPORT_FILE).is_file(), "{c}");
    }
    // A second run reuses every finished step, controls included.
    let again = local::run(&args, Device::Cpu).unwrap();
    assert_eq!(again.controls[3].2, run.controls[3].2);
    // The schedule from the command line.
    let args = LocalChain { rate: Some(Rate::Schedule(vec![0.5])), levels: Some(1), out: Some(tmp.path().join("cli")), ..args };
    let one = local::run(&args, Device::Cpu).unwrap();
    assert_eq!((one.levels.len(), one.controls.len()), (2, 2), "control level 2 lies beyond a 1-level chain and is skipped");
    println!("took {:?}", t0.elapsed());
}
