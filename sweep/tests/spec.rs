//! Sweep-file parsing, validation, grid expansion, content hashes and protobuf round trips.

use lth_sweep::*;

const PAPER: &str = r#"
name = "resnet20-paper"
model = "resnet20"
metrics = ["magnitude", "l1", "l2", "softmax", "min-max"]
rates = [0.2, 0.5]
seeds = [0, 1, 2]
levels = 4

[dataset]
name = "cifar10"
path = "/data/cifar-10-batches-bin"

[recipe]
length = "160ep"
batch_size = 128
lr = 0.1
weight_decay = 1e-4
rewind = "1000it"
schedule = { kind = "step", milestones = ["80ep", "120ep"], gamma = 0.1 }
"#;

fn paper() -> SweepSpec {
    SweepSpec::from_toml_str(PAPER).expect("the paper's sweep file is valid")
}

#[test]
fn paper_grid_expands_to_shared_dense_jobs_and_level_chains() {
    let spec = paper();
    assert_eq!(spec.metrics[4], ImportanceMetric::MinMax);
    let plan = spec.expand();
    assert_eq!(plan.dense.len(), 3);
    assert_eq!(plan.trials.len(), 5 * 2 * 3);
    assert_eq!(plan.level_jobs(), 120);
    assert_eq!(plan.total_jobs(), 123);
    for t in &plan.trials {
        let dense = plan.dense.iter().find(|d| d.seed == t.seed).unwrap();
        assert_eq!(t.levels[0].parent_hash, dense.content_hash);
        for w in t.levels.windows(2) {
            assert_eq!(w[1].parent_hash, w[0].content_hash);
        }
    }
    // Every job hash in the sweep is distinct.
    let mut all: Vec<&str> = plan.dense.iter().map(|d| d.content_hash.as_str()).collect();
    all.extend(plan.trials.iter().flat_map(|t| t.levels.iter().map(|l| l.content_hash.as_str())));
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n);
}

#[test]
fn hashes_are_stable_and_depend_on_what_they_should() {
    let spec = paper();
    let h = spec.dense_hash(0);
    // A golden value: changing it silently would stop reuse of every finished job.
    assert_eq!(h, GOLDEN_DENSE_SEED0);
    let l1 = level_hash(&h, ImportanceMetric::Magnitude, 0.2, &spec.pruning, 1);
    assert_eq!(l1, GOLDEN_LEVEL1);

    // The dense hash ignores the metrics, rates, name and pruning policy...
    let mut other = spec.clone();
    other.name = "renamed".into();
    other.metrics = vec![ImportanceMetric::Lamp];
    other.rates = vec![0.3.into()];
    other.pruning.min_keep_fraction = 0.05;
    assert_eq!(other.dense_hash(0), h);
    // ...but not the recipe, model, dataset or seed.
    let mut r = spec.clone();
    r.recipe.lr = 0.2;
    assert_ne!(r.dense_hash(0), h);
    assert_ne!(spec.dense_hash(1), h);
    // A level hash depends on the pruning policy, metric, rate and parent.
    assert_ne!(level_hash(&h, ImportanceMetric::Magnitude, 0.2, &other.pruning, 1), l1);
    assert_ne!(level_hash(&h, ImportanceMetric::L1, 0.2, &spec.pruning, 1), l1);
    assert_ne!(level_hash(&h, ImportanceMetric::Magnitude, 0.5, &spec.pruning, 1), l1);
    assert_ne!(level_hash(&spec.dense_hash(1), ImportanceMetric::Magnitude, 0.2, &spec.pruning, 1), l1);
}

const GOLDEN_DENSE_SEED0: &str = "a6198c57c8167dce5e13d919cbad7a3345389ef6affd5b445b41e547d2a58a44";
const GOLDEN_LEVEL1: &str = "470fb42412c03dc6cbdd0154fa368359c3adfa877d01a5ac6ba9605c18430a49";

#[test]
fn validation_lists_every_problem() {
    let text = r#"
name = ""
model = "lenet300100"
metrics = []
rates = [0.0, 1.5, 0.2]
seeds = []
levels = 3
target_sparsity = 0.9
max_attempts = 0
[dataset]
name = "mnist"
[recipe]
length = "0ep"
lr = -1.0
[pruning]
min_keep_fraction = 1.0
"#;
    let err = SweepSpec::from_toml_str(text).unwrap_err();
    let SpecError::Invalid(ValidationErrors(list)) = &err else { panic!("expected validation errors, got {err}") };
    let all = list.join("\n");
    for needle in [
        "`name` is empty",
        "`metrics` is empty",
        "rate 0 is outside (0, 1)",
        "rate 1.5 is outside (0, 1)",
        "`seeds` is empty",
        "both `levels` and `target_sparsity`",
        "dataset.path is missing for mnist",
        "recipe.length is zero",
        "recipe.lr = -1",
        "min_keep_fraction = 1",
        "max_attempts = 0",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
    assert_eq!(list.len(), 11, "{all}");
    assert!(err.to_string().starts_with("the sweep spec has 11 problems:"));
}

#[test]
fn neither_levels_nor_target_and_duplicates_are_rejected() {
    let mut spec = paper();
    spec.levels = None;
    spec.metrics.push(ImportanceMetric::L1);
    spec.seeds.push(2);
    let errs = spec.validate().unwrap_err().0.join("\n");
    assert!(errs.contains("neither `levels` nor `target_sparsity`"), "{errs}");
    assert!(errs.contains("`metrics` lists l1 twice"), "{errs}");
    assert!(errs.contains("`seeds` lists 2 twice"), "{errs}");
}

#[test]
fn unknown_metric_and_syntax_errors_name_line_and_column() {
    let bad_metric = PAPER.replace("\"softmax\"", "\"softmx\"");
    let err = SweepSpec::from_toml_str(&bad_metric).unwrap_err().to_string();
    assert!(err.contains("line 4"), "{err}");
    assert!(err.contains("unknown importance metric \"softmx\""), "{err}");
    assert!(err.contains("known metrics: magnitude, l1"), "{err}");

    let broken = PAPER.replace("levels = 4", "levels = = 4");
    let err = SweepSpec::from_toml_str(&broken).unwrap_err().to_string();
    assert!(err.contains("line 7, column"), "{err}");

    let unknown_key = PAPER.replace("levels = 4", "levels = 4\nlevles = 5");
    let err = SweepSpec::from_toml_str(&unknown_key).unwrap_err().to_string();
    assert!(err.contains("levles"), "{err}");
}

#[test]
fn digits_needs_no_path_and_target_sparsity_sets_levels() {
    let text = r#"
name = "digits"
model = "lenet300100"
metrics = ["magnitude"]
rates = [0.2, 0.5]
seeds = [7]
target_sparsity = 0.8926
[dataset]
name = "digits"
[recipe]
length = "2ep"
lr = 0.05
"#;
    let spec = SweepSpec::from_toml_str(text).unwrap();
    // 0.8^10 = 0.1074: ten levels at 20%; 0.5^4 = 0.0625 <= 0.1074 < 0.5^3: four at 50%.
    assert_eq!(spec.levels_for_rate(0.2), 10);
    assert_eq!(spec.levels_for_rate(0.5), 4);
    assert_eq!(spec.expand().level_jobs(), 14);
    assert_eq!(levels_to_reach(0.2, 0.2), 1);
    assert!((SweepSpec::nominal_sparsity(0.2, 10) - 0.8926258176).abs() < 1e-9);
}

#[test]
fn proto_round_trip_preserves_the_spec_and_hash() {
    let spec = paper();
    let wire: lth_proto::v1::SweepSpec = (&spec).into();
    let back = SweepSpec::try_from(&wire).unwrap();
    assert_eq!(back, spec);
    assert_eq!(back.dense_hash(0), spec.dense_hash(0));

    let mut t = spec.clone();
    t.levels = None;
    t.target_sparsity = Some(0.9);
    let back = SweepSpec::try_from(&lth_proto::v1::SweepSpec::from(&t)).unwrap();
    assert_eq!(back, t);

    // TOML text round trip too.
    assert_eq!(SweepSpec::from_toml_str(&spec.to_toml_string()).unwrap(), spec);
}

#[test]
fn proto_with_missing_parts_is_rejected_with_names() {
    let mut wire: lth_proto::v1::SweepSpec = (&paper()).into();
    wire.recipe = None;
    wire.metrics.push(42);
    wire.depth = None;
    let errs = SweepSpec::try_from(&wire).unwrap_err().to_string();
    assert!(errs.contains("spec.recipe is missing"), "{errs}");
    assert!(errs.contains("unknown importance metric number 42"), "{errs}");
    let mut wire: lth_proto::v1::SweepSpec = (&paper()).into();
    wire.depth = None;
    let errs = SweepSpec::try_from(&wire).unwrap_err().to_string();
    assert!(errs.contains("neither `levels` nor `target_sparsity`"), "{errs}");
}

#[test]
fn cuda_graph_defaults_on_and_only_turning_it_off_enters_the_hashes() {
    let spec = paper();
    assert!(spec.recipe.cuda_graph, "on unless the sweep file says otherwise");
    // Written out explicitly, the default keeps the golden hash (sweeps from before the option).
    let on = SweepSpec::from_toml_str(&PAPER.replace("[recipe]\n", "[recipe]\ncuda_graph = true\n")).unwrap();
    assert_eq!(on.dense_hash(0), GOLDEN_DENSE_SEED0);
    let off = SweepSpec::from_toml_str(&PAPER.replace("[recipe]\n", "[recipe]\ncuda_graph = false\n")).unwrap();
    assert!(!off.recipe.cuda_graph);
    assert_ne!(off.dense_hash(0), GOLDEN_DENSE_SEED0);
    // A client that predates the field sends no value: that is on.
    let mut wire: lth_proto::v1::SweepSpec = (&off).into();
    assert_eq!(wire.recipe.as_ref().unwrap().cuda_graph, Some(false));
    assert!(!SweepSpec::try_from(&wire).unwrap().recipe.cuda_graph);
    wire.recipe.as_mut().unwrap().cuda_graph = None;
    assert!(SweepSpec::try_from(&wire).unwrap().recipe.cuda_graph);
}
