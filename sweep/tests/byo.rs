//! The sweep keys for your own network and data, controls, sparsity targets and rate schedules:
//! parsing, validation with clear errors, grid expansion, content hashes and the wire form.

use lth_sweep::*;
use std::io::Write;

const DIGITS: &str = r#"
name = "d"
model = "lenet300100"
metrics = ["magnitude", "l2"]
rates = [0.2]
seeds = [1, 2]
levels = 4
[dataset]
name = "digits"
[recipe]
length = "2ep"
lr = 0.05
"#;

fn spec(text: &str) -> SweepSpec {
    SweepSpec::from_toml_str(text).unwrap_or_else(|e| panic!("{e}"))
}

fn problems(text: &str) -> String {
    match SweepSpec::from_toml_str(text) {
        Err(SpecError::Invalid(ValidationErrors(v))) => v.join("\n"),
        Err(e) => panic!("expected validation errors, got {e}"),
        Ok(_) => panic!("expected validation errors, the spec is valid"),
    }
}

#[test]
fn controls_expand_to_children_of_the_levels_they_control() {
    let s = spec(&DIGITS.replace("levels = 4", "levels = 4\ncontrols = [\"reinit\", \"randomly_prune\"]\ncontrol_levels = [4, 2]"));
    assert_eq!(s.controls, vec![Control::Reinit, Control::RandomMask]);
    let plan = s.expand();
    // Every job the store creates: 2 dense, 2 trials × 2 seeds × 4 levels, and per trial 2 levels × 2 controls.
    assert_eq!((plan.total_jobs(), plan.control_jobs()), (2 + 2 * 2 * 4 + 2 * 2 * 2 * 2, 2 * 2 * 2 * 2));
    let mut hashes: Vec<&str> = plan.dense.iter().map(|d| d.content_hash.as_str()).collect();
    for t in &plan.trials {
        assert_eq!(t.controls.iter().map(|c| (c.level, c.control)).collect::<Vec<_>>(), vec![
            (2, Control::Reinit),
            (2, Control::RandomMask),
            (4, Control::Reinit),
            (4, Control::RandomMask)
        ]);
        for c in &t.controls {
            let ticket = &t.levels[c.level as usize - 1];
            assert_eq!(c.parent_hash, ticket.content_hash, "a control is a child of the level it controls");
            assert_eq!(c.content_hash, control_hash(&ticket.content_hash, c.control));
            hashes.push(&c.content_hash);
        }
        hashes.extend(t.levels.iter().map(|l| l.content_hash.as_str()));
    }
    let n = hashes.len();
    hashes.sort();
    hashes.dedup();
    assert_eq!(hashes.len(), n, "every job, control or not, has its own hash");
    // Adding controls leaves the tickets' hashes alone (finished tickets stay reusable).
    let plain = spec(DIGITS).expand();
    assert_eq!(plain.trials[0].levels, plan.trials[0].levels);
}

#[test]
fn controls_need_levels_within_every_chain() {
    let all = problems(&DIGITS.replace("levels = 4", "levels = 4\ncontrols = [\"reinit\", \"reinit\"]"));
    assert!(all.contains("`control_levels` is empty"), "{all}");
    assert!(all.contains("lists reinit twice"), "{all}");
    let all = problems(&DIGITS.replace("levels = 4", "levels = 4\ncontrols = [\"reinit\"]\ncontrol_levels = [0, 5, 5]"));
    assert!(all.contains("control level 0 is the dense network"), "{all}");
    assert!(all.contains("control level 5 is deeper than rate 0.2's 4 levels"), "{all}");
    assert!(all.contains("`control_levels` lists 5 twice"), "{all}");
    let all = problems(&DIGITS.replace("levels = 4", "levels = 4\ncontrol_levels = [2]"));
    assert!(all.contains("`controls` is empty"), "{all}");
    let err = SweepSpec::from_toml_str(&DIGITS.replace("levels = 4", "levels = 4\ncontrols = [\"shuffle\"]\ncontrol_levels = [2]")).unwrap_err().to_string();
    assert!(err.contains("unknown control \"shuffle\"") && err.contains("reinit, random_mask"), "{err}");
}

#[test]
fn rate_schedules_set_each_levels_rate_and_share_hashes_with_equal_prefixes() {
    // No `levels`: not allowed while a constant rate is listed.
    let all = problems(&DIGITS.replace("rates = [0.2]", "rates = [0.2, [0.2, 0.2, 0.5]]").replace("levels = 4\n", ""));
    assert!(all.contains("neither `levels` nor `target_sparsity`"), "{all}");

    let s = spec(&DIGITS.replace("rates = [0.2]", "rates = [0.2, [0.2, 0.2, 0.5]]").replace("levels = 4", "levels = 5"));
    assert_eq!(s.rates, vec![Rate::Constant(0.2), Rate::Schedule(vec![0.2, 0.2, 0.5])]);
    let plan = s.expand();
    let sched = plan.trials.iter().find(|t| t.schedule.is_some() && t.seed == 1 && t.metric == ImportanceMetric::Magnitude).unwrap();
    let constant = plan.trials.iter().find(|t| t.schedule.is_none() && t.seed == 1 && t.metric == ImportanceMetric::Magnitude).unwrap();
    assert_eq!(sched.levels.iter().map(|l| l.rate).collect::<Vec<_>>(), vec![0.2, 0.2, 0.5, 0.5, 0.5], "deeper levels repeat the last rate");
    assert_eq!(sched.rate, 0.2);
    // Levels 1-2 are the same computation as the constant trial's, so the same jobs.
    assert_eq!(sched.levels[..2], constant.levels[..2]);
    assert_ne!(sched.levels[2].content_hash, constant.levels[2].content_hash);
    assert!((Rate::Schedule(vec![0.2, 0.2, 0.5]).sparsity_after(3) - (1.0 - 0.8 * 0.8 * 0.5)).abs() < 1e-12);

    // Every rate a schedule: each trial as deep as its schedule.
    let s = spec(&DIGITS.replace("rates = [0.2]", "rates = [[0.5, 0.3], [0.2, 0.2, 0.2]]").replace("levels = 4\n", ""));
    assert_eq!(s.rates.iter().map(|r| s.levels_for(r)).collect::<Vec<_>>(), vec![2, 3]);
    assert_eq!(s.expand().level_jobs(), 2 * 2 * (2 + 3));

    // With a target, the schedule's last rate repeats until the target is reached.
    let s = spec(&DIGITS.replace("rates = [0.2]", "rates = [[0.5, 0.2]]").replace("levels = 4", "target_sparsity = 0.9"));
    // kept: 0.5, 0.4, 0.32, 0.256, 0.2048, 0.16384, 0.131072, 0.1048576, 0.08388608 -> 9 levels.
    assert_eq!(s.levels_for(&s.rates[0]), 9);
    assert_eq!(levels_to_reach_schedule(0.9, &[0.5, 0.2]), 9);
    assert_eq!(levels_to_reach_schedule(0.4, &[0.5, 0.2]), 1, "reached within the schedule");
    assert_eq!(levels_to_reach_schedule(0.8926258176, &[0.2]), levels_to_reach(0.8926258176, 0.2));
}

#[test]
fn bad_rate_schedules_are_refused_with_what_to_change() {
    let all = problems(&DIGITS.replace("rates = [0.2]", "rates = [[0.2, 1.2], [], [0.1, 0.1, 0.1, 0.1, 0.1], [0.3], [0.3]]"));
    assert!(all.contains("rate 1.2 in the schedule [0.2, 1.2] is outside (0, 1)"), "{all}");
    assert!(all.contains("empty schedule"), "{all}");
    assert!(all.contains("lists 5 levels but levels = 4"), "{all}");
    assert!(all.contains("`rates` lists [0.3] twice"), "{all}");
    let err = SweepSpec::from_toml_str(&DIGITS.replace("rates = [0.2]", "rates = [\"fast\"]")).unwrap_err().to_string();
    assert!(err.contains("a per-level schedule such as [0.2, 0.2, 0.5]"), "{err}");
}

#[test]
fn target_sparsity_is_an_alternative_to_levels() {
    let s = spec(&DIGITS.replace("levels = 4", "target_sparsity = 0.95").replace("rates = [0.2]", "rates = [0.2, 0.5]"));
    // 0.8^14 = 0.044 <= 0.05 < 0.8^13; 0.5^5 = 0.031 <= 0.05 < 0.5^4.
    assert_eq!((s.levels_for_rate(0.2), s.levels_for_rate(0.5)), (14, 5));
    let all = problems(&DIGITS.replace("levels = 4", "target_sparsity = 1.0"));
    assert!(all.contains("target_sparsity = 1 is outside (0, 1)"), "{all}");
    let all = problems(&DIGITS.replace("levels = 4", "target_sparsity = 0.999999").replace("rates = [0.2]", "rates = [0.01]"));
    assert!(all.contains("levels to reach target_sparsity") && all.contains("raise the rate"), "{all}");
}

fn write_model(dir: &std::path::Path, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join("net.pt");
    std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
    p
}

#[test]
fn torchscript_models_are_identified_by_their_digest_not_their_path() {
    let tmp = tempfile::tempdir().unwrap();
    write_model(tmp.path(), b"not really a model, but bytes to hash");
    let sweep = tmp.path().join("s.toml");
    std::fs::write(&sweep, DIGITS.replace("model = \"lenet300100\"", "model = { torchscript = \"net.pt\" }")).unwrap();
    let s = SweepSpec::from_toml_file(&sweep).unwrap();
    let t = s.model.torchscript().unwrap();
    let expected = file_sha256(&tmp.path().join("net.pt")).unwrap();
    assert_eq!(t.sha256.as_deref(), Some(expected.as_str()));
    assert!(std::path::Path::new(&t.torchscript).is_absolute(), "{}", t.torchscript);
    assert_eq!(s.model.as_str(), "torchscript");

    // The same file elsewhere: same jobs. Another file: other jobs. The built-in model: others.
    let mut moved = s.clone();
    if let ModelSpec::TorchScript(t) = &mut moved.model {
        t.torchscript = "/elsewhere/net.pt".into();
    }
    assert_eq!(moved.dense_hash(1), s.dense_hash(1));
    let mut other = s.clone();
    if let ModelSpec::TorchScript(t) = &mut other.model {
        t.sha256 = Some("0".repeat(64));
    }
    assert_ne!(other.dense_hash(1), s.dense_hash(1));
    assert_ne!(spec(DIGITS).dense_hash(1), s.dense_hash(1));
    let mut file_init = s.clone();
    if let ModelSpec::TorchScript(t) = &mut file_init.model {
        t.init = ModelInit::File;
    }
    assert_ne!(file_init.dense_hash(1), s.dense_hash(1));

    // A pinned digest that does not match is refused; a missing file names the path.
    std::fs::write(&sweep, DIGITS.replace("model = \"lenet300100\"", &format!("model = {{ torchscript = \"net.pt\", sha256 = \"{}\" }}", "a".repeat(64)))).unwrap();
    let err = SweepSpec::from_toml_file(&sweep).unwrap_err().to_string();
    assert!(err.contains("but the sweep pins sha256"), "{err}");
    std::fs::write(&sweep, DIGITS.replace("model = \"lenet300100\"", "model = { torchscript = \"missing.pt\" }")).unwrap();
    let err = SweepSpec::from_toml_file(&sweep).unwrap_err().to_string();
    assert!(err.contains("missing.pt") && err.contains("cannot read"), "{err}");
    // Parsed from text alone there is no file to hash: validation asks for the digest.
    let all = problems(&DIGITS.replace("model = \"lenet300100\"", "model = { torchscript = \"net.pt\" }"));
    assert!(all.contains("has no sha256"), "{all}");
    let err = SweepSpec::from_toml_str(&DIGITS.replace("model = \"lenet300100\"", "model = \"lenet5\"")).unwrap_err().to_string();
    assert!(err.contains("unknown model \"lenet5\"") && err.contains("torchscript"), "{err}");
    let err = SweepSpec::from_toml_str(&DIGITS.replace("model = \"lenet300100\"", "model = { torchscript = \"a.pt\", sha = \"x\" }")).unwrap_err().to_string();
    assert!(err.contains("unknown field `sha`"), "{err}");
}

#[test]
fn builtin_specs_keep_their_hashes_and_stored_form() {
    // New optional keys are left out of the JSON and the hash when unset: every finished job of
    // a built-in sweep stays reusable.
    let s = spec(DIGITS);
    let json = serde_json::to_string(&s).unwrap();
    for key in ["controls", "control_levels", "layers", "bundle", "max_bundle"] {
        assert!(!json.contains(&format!("\"{key}\":")), "{key} in {json}");
    }
    assert_eq!(serde_json::to_string(&s.dataset).unwrap(), r#"{"name":"digits","path":null}"#);
    assert!(json.contains("\"model\":\"lenet300100\"") && json.contains("\"rates\":[0.2]"), "{json}");
    let back: SweepSpec = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
}

#[test]
fn custom_datasets_are_validated_with_what_to_change() {
    let folder = |extra: &str| DIGITS.replace("name = \"digits\"", &format!("name = \"image_folder\"\n{extra}"));
    let s = spec(&folder("path = \"/data/pets\"\nresolution = [64, 48]\nchannels = 1\nmean = [0.5]\nstd = [0.25]\naugment = false"));
    assert_eq!(s.dataset.resolution, Some(Resolution { height: 64, width: 48 }));
    assert_eq!((s.dataset.channels, s.dataset.augment), (Some(1), Some(false)));
    assert_eq!(spec(&folder("path = \"/p\"\nresolution = 32")).dataset.resolution, Some(Resolution { height: 32, width: 32 }));
    let all = problems(&folder(""));
    assert!(all.contains("dataset.path is missing for image_folder") && all.contains("dataset.resolution is missing"), "{all}");
    let all = problems(&folder("path = \"/p\"\nresolution = 0\nchannels = 2\nmean = [0.5, 0.5, 0.5]"));
    assert!(all.contains("within 1..=4096") && all.contains("channels = 2") && all.contains("go together"), "{all}");
    let all = problems(&folder("path = \"/p\"\nresolution = 8\nmean = [0.5, 0.5]\nstd = [0.2, 0.0]"));
    assert!(all.contains("images have 3 channels") && all.contains("std must be positive"), "{all}");
    let all = problems(&DIGITS.replace("name = \"digits\"", "name = \"digits\"\nresolution = 16\naugment = true"));
    assert!(all.contains("resolution applies to image_folder only") && all.contains("dataset.augment applies to your own data"), "{all}");
    let s = spec(&DIGITS.replace("name = \"digits\"", "name = \"safetensors\"\npath = \"/data/x.safetensors\"\nmean = [0.1, 0.2]\nstd = [0.3, 0.4]"));
    assert_eq!(s.dataset.name, DatasetKind::Safetensors);
    assert_eq!(spec(&DIGITS.replace("name = \"digits\"", "name = \"tensors\"\npath = \"/x\"")).dataset.name, DatasetKind::Safetensors);
    // The dataset's keys are part of the dense job's identity.
    let a = spec(&folder("path = \"/p\"\nresolution = 32"));
    let b = spec(&folder("path = \"/p\"\nresolution = 64"));
    assert_ne!(a.dense_hash(1), b.dense_hash(1));
}

#[test]
fn pruning_layer_patterns_are_checked() {
    let s = spec(&format!("{DIGITS}[pruning]\nlayers = [\"fc_layers.*.weight\"]\nprune_linears = false\nprune_convs = false\n"));
    assert_eq!(s.pruning.layers, vec!["fc_layers.*.weight".to_string()]);
    assert!(name_matches(&s.pruning.layers[0], "fc_layers.1.weight"));
    let all = problems(&format!("{DIGITS}[pruning]\nlayers = [\"fc[.weight\", \"\"]\n"));
    assert!(all.contains("pattern \"fc[.weight\" is invalid") && all.contains("empty pattern"), "{all}");
    // The patterns change what a level prunes, so its hash.
    let p = spec(&format!("{DIGITS}[pruning]\nlayers = [\"fc.weight\"]\n"));
    let h = p.dense_hash(1);
    assert_eq!(h, spec(DIGITS).dense_hash(1));
    assert_ne!(level_hash(&h, ImportanceMetric::L1, 0.2, &p.pruning, 1), level_hash(&h, ImportanceMetric::L1, 0.2, &PrunePolicy::default(), 1));
}

#[test]
fn the_wire_carries_models_datasets_patterns_schedules_and_controls() {
    let tmp = tempfile::tempdir().unwrap();
    write_model(tmp.path(), b"model bytes");
    let sweep = tmp.path().join("s.toml");
    let text = DIGITS
        .replace("model = \"lenet300100\"", "model = { torchscript = \"net.pt\", init = \"file\" }")
        .replace("name = \"digits\"", "name = \"image_folder\"\npath = \"/data/x\"\nresolution = [16, 12]\nchannels = 3\nmean = [0.1, 0.2, 0.3]\nstd = [0.4, 0.5, 0.6]\naugment = false")
        + "[pruning]\nlayers = [\"*.weight\"]\n";
    std::fs::write(&sweep, &text).unwrap();
    let s = SweepSpec::from_toml_file(&sweep).unwrap();
    let wire = lth_proto::v1::SweepSpec::from(&s);
    assert_eq!(wire.model, 0, "a TorchScript model leaves `model` unspecified");
    assert_eq!(SweepSpec::try_from(&wire).unwrap(), s);
    assert_eq!(SweepSpec::from_toml_str(&s.to_toml_string()).unwrap(), s, "the TOML form round-trips too");

    let mut both = wire.clone();
    both.model = lth_proto::v1::Model::Vgg16 as i32;
    assert!(SweepSpec::try_from(&both).unwrap_err().to_string().contains("both `model` and `torchscript`"));

    // Schedules and controls travel and come back as sent.
    let c = spec(&DIGITS.replace("rates = [0.2]", "rates = [0.2, [0.5, 0.3]]").replace("levels = 4", "levels = 4\ncontrols = [\"random_mask\"]\ncontrol_levels = [2]"));
    let wire = lth_proto::v1::SweepSpec::from(&c);
    assert_eq!((wire.rates.clone(), wire.rate_schedules.len(), wire.controls.len(), wire.control_levels.clone()), (vec![0.2], 1, 1, vec![2]));
    assert_eq!(SweepSpec::try_from(&wire).unwrap(), c);
    let mut bad = wire.clone();
    bad.controls.push(0);
    assert!(SweepSpec::try_from(&bad).unwrap_err().to_string().contains("unspecified control"));
}

#[test]
fn uploaded_inputs_are_named_by_digest_and_validated() {
    let sha = "ab".repeat(32);
    let upload = |name: &str, extra: &str| DIGITS.replace("name = \"digits\"", &format!("name = \"{name}\"\n{extra}"));
    let s = spec(&upload("safetensors", &format!("upload = \"sha256:{sha}\"")));
    assert_eq!(s.dataset.upload_sha256(), Some(sha.as_str()));
    assert_eq!(s.dataset.path, None);
    let f = spec(&upload("image_folder", &format!("upload = \"sha256:{sha}\"\nresolution = 8")));
    // Another upload is another dataset: another dense job.
    let g = spec(&upload("image_folder", &format!("upload = \"sha256:{}\"\nresolution = 8", "cd".repeat(32))));
    assert_ne!(f.dense_hash(1), g.dense_hash(1));
    // The wire carries it.
    let back = SweepSpec::try_from(&lth_proto::v1::SweepSpec::from(&f)).unwrap();
    assert_eq!(back, f);

    let all = problems(&upload("safetensors", &format!("upload = \"{sha}\"")));
    assert!(all.contains("is not \"sha256:<64 hex digits>\"") && all.contains("lthctl dataset upload"), "{all}");
    let all = problems(&upload("safetensors", &format!("upload = \"sha256:{sha}\"\npath = \"/x.safetensors\"")));
    assert!(all.contains("both `path` and `upload`"), "{all}");
    let all = problems(&DIGITS.replace("name = \"digits\"", &format!("name = \"digits\"\nupload = \"sha256:{sha}\"")));
    assert!(all.contains("dataset.upload applies to your own data"), "{all}");
    let all = problems(&upload("safetensors", ""));
    assert!(all.contains("lthctl dataset upload"), "{all}");

    // An uploaded model: no file to read, and the same digest as the file read by path (same jobs).
    let tmp = tempfile::tempdir().unwrap();
    write_model(tmp.path(), b"model bytes");
    let sweep = tmp.path().join("s.toml");
    std::fs::write(&sweep, DIGITS.replace("model = \"lenet300100\"", "model = { torchscript = \"net.pt\" }")).unwrap();
    let by_path = SweepSpec::from_toml_file(&sweep).unwrap();
    let digest = by_path.model.torchscript().unwrap().sha256.clone().unwrap();
    std::fs::remove_file(tmp.path().join("net.pt")).unwrap();
    std::fs::write(&sweep, DIGITS.replace("model = \"lenet300100\"", &format!("model = {{ torchscript = \"net.pt\", sha256 = \"{digest}\", uploaded = true }}"))).unwrap();
    let uploaded = SweepSpec::from_toml_file(&sweep).unwrap();
    assert!(uploaded.model.torchscript().unwrap().uploaded);
    assert_eq!(uploaded.dense_hash(1), by_path.dense_hash(1));
    let back = SweepSpec::try_from(&lth_proto::v1::SweepSpec::from(&uploaded)).unwrap();
    assert_eq!(back, uploaded);
}
