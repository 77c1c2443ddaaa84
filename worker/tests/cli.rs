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
