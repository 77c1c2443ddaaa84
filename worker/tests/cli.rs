//! `lth-worker run-local` end to end through the binary: prints a line per level, writes
//! chain.json and per-level artifacts, reuses finished levels, refuses a foreign output folder.

use std::process::Command;

fn worker() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lth-worker"));
    c.env("LTH_THREADS", "1");
    c
}

#[test]
fn run_local_runs_a_chain_and_resumes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("chain");
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/digits-chain.toml");
    let run = |metric: &str| {
        worker().args(["run-local", fixture, "--metric", metric, "--levels", "2", "--out"]).arg(&out).output().unwrap()
    };
    let o = run("l2");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    let rows: Vec<&str> = stdout.lines().filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit())).collect();
    assert_eq!(rows.len(), 3, "{stdout}");
    assert!(rows[2].contains("36.00%"), "level 2 at 20% per level is 36% sparse: {}", rows[2]);
    let chain: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("chain.json")).unwrap()).unwrap();
    assert_eq!(chain["metric"], "l2");
    assert_eq!(chain["levels"].as_array().unwrap().len(), 3);
    for l in 0..=2 {
        for f in ["report.json", "weights.safetensors", "step.json"] {
            assert!(out.join(format!("level-{l}")).join(f).exists(), "level-{l}/{f}");
        }
    }
    assert!(out.join("level-0/rewind.safetensors").exists());

    // Again: every level is reused, with the same numbers.
    let again = run("l2");
    assert!(again.status.success());
    let chain2: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("chain.json")).unwrap()).unwrap();
    assert_eq!(chain["levels"], chain2["levels"]);

    // Another metric into the same folder: refused, nothing overwritten.
    let other = run("softmax");
    assert!(!other.status.success());
    assert!(String::from_utf8_lossy(&other.stderr).contains("choose another --out"), "{}", String::from_utf8_lossy(&other.stderr));
}

#[test]
fn run_local_explains_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "name = \"x\"\nmodel = \"resnet99\"\n").unwrap();
    let o = worker().args(["run-local"]).arg(&bad).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a valid sweep file"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = worker().args(["run-local", "/nonexistent/sweep.toml"]).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("reading sweep file"));
}

/// Your own images through the binary: an ImageFolder tree of PNGs trains a chain, and a second
/// run (another output folder, so nothing is reused) reads the decoded cache instead of the images.
#[test]
fn run_local_trains_on_an_image_folder_through_the_decoded_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("shapes");
    // Two classes a LeNet tells apart: bright top half vs bright bottom half, 24 + 8 images each.
    for (split, n) in [("train", 24u32), ("val", 8)] {
        for (class, top) in [("bottom", false), ("top", true)] {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                let img = image::GrayImage::from_fn(10, 10, |_, y| image::Luma([if (y < 5) == top { 200 + (i % 50) as u8 } else { (i % 30) as u8 }]));
                img.save(dir.join(format!("{i:03}.png"))).unwrap();
            }
        }
    }
    let sweep = tmp.path().join("shapes.toml");
    std::fs::write(
        &sweep,
        format!(
            "name = \"shapes\"\nmodel = \"lenet300100\"\nmetrics = [\"magnitude\"]\nrates = [0.5]\nseeds = [1]\nlevels = 1\n\
             [dataset]\nname = \"image_folder\"\npath = {:?}\nresolution = 8\nchannels = 1\naugment = false\n\
             [recipe]\nlength = \"6ep\"\nbatch_size = 16\nlr = 0.05\nrewind = \"0it\"\ncheckpoint_every = \"0it\"\n",
            root.to_string_lossy()
        ),
    )
    .unwrap();
    let cache = tmp.path().join("cache");
    let run = |out: &str| {
        let o = worker().env("LTH_DATA_CACHE", &cache).arg("run-local").arg(&sweep).arg("--out").arg(tmp.path().join(out)).output().unwrap();
        assert!(o.status.success(), "{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        let chain: serde_json::Value = serde_json::from_slice(&std::fs::read(tmp.path().join(out).join("chain.json")).unwrap()).unwrap();
        chain
    };
    let a = run("a");
    let cached: Vec<_> = std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(cached.len(), 1, "one decoded dataset: {cached:?}");
    let stamp = std::fs::metadata(&cached[0]).unwrap().modified().unwrap();
    let b = run("b");
    assert_eq!(std::fs::metadata(&cached[0]).unwrap().modified().unwrap(), stamp, "the second run reads the cache, it does not rewrite it");
    for l in 0..2 {
        for key in ["test_accuracy", "sparsity", "layers"] {
            assert_eq!(a["levels"][l][key], b["levels"][l][key], "level {l} {key}: the cached tensors are the decoded ones");
        }
    }
    assert_eq!(a["dataset"], "image_folder");
    assert!(a["levels"][1]["test_accuracy"].as_f64().unwrap() >= 0.9, "{}", a["levels"]);
}
