//! lthctl as a user runs it, against a real `lth-coordinator` process over a socket (SQLite store
//! in a temporary folder), and — for the results path — a real `lth-worker daemon` training the
//! bundled digits on CPU. Nothing here is mocked: the commands are the `lthctl` binary, their
//! output is what a person would read.

use lth_testkit::{bin, free_port, Coordinator, CoordinatorOptions, Proc, TestDb};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn lthctl_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lthctl"))
}

/// A coordinator on SQLite (or the given database) in its own folder, on ports it picks itself,
/// and the worker daemons started against it. Processes and binaries are lth-testkit's: a
/// binary of another workspace crate comes from lthctl's target folder, built there when missing
/// or stale (`LTH_COORDINATOR_BIN` / `LTH_WORKER_BIN` override the path).
struct Cluster {
    url: String,
    coordinator: Coordinator,
    workers: Vec<Proc>,
    // Last: the processes are gone (and printed their logs on failure) before their folder is.
    dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Daemons first, so none keeps retrying a vanished coordinator's address.
        self.workers.clear();
    }
}

impl Cluster {
    fn start() -> Cluster {
        Cluster::start_on(None)
    }

    /// A coordinator on the given database URL, or on SQLite in its folder.
    fn start_on(database: Option<&str>) -> Cluster {
        Cluster::start_with(database, &[])
    }

    /// [`Cluster::start_on`] with extra coordinator flags (e.g. `--max-input-bytes`).
    fn start_with(database: Option<&str>, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let db = database.map(str::to_string).unwrap_or_else(|| format!("sqlite://{}", dir.path().join("lth.db").display()));
        let opts = CoordinatorOptions::new(&db, &dir.path().join("artifacts"))
            .args(["--lease-seconds", "10", "--heartbeat-seconds", "1", "--reap-interval-seconds", "1"])
            .args(extra.iter().copied());
        let coordinator = Coordinator::start("coordinator", &dir.path().join("coordinator.log"), &opts);
        Cluster { url: coordinator.url(), coordinator, workers: Vec::new(), dir }
    }

    fn start_worker(&mut self, id: &str) {
        let log = self.dir.path().join(format!("{id}.log"));
        let mut cmd = Command::new(bin("lth-worker"));
        cmd.args(["daemon", "--coordinator", &self.url, "--worker-id", id, "--gpus", "none"])
            .arg("--cache-dir")
            .arg(self.dir.path().join(format!("cache-{id}")))
            .args(["--threads", "1", "--poll-seconds", "0.2", "--progress-seconds", "0.5"])
            .env("LTH_DATA_CACHE", self.dir.path().join(format!("data-cache-{id}")));
        self.workers.push(Proc::spawn(id, &mut cmd, &log));
    }

    /// Runs lthctl with `--coordinator` pointing here.
    fn lthctl(&self, args: &[&str]) -> Run {
        run_lthctl(&self.url, args, self.dir.path())
    }

    /// Runs `lthctl watch ID` until it returns (the test fails rather than hangs past `secs`);
    /// returns its stdout.
    fn watch(&self, id: &str, extra: &[&str], secs: u64) -> String {
        let mut watch = Command::new(lthctl_bin())
            .arg("watch")
            .arg(id)
            .args(extra)
            .env("LTH_COORDINATOR", &self.url)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = watch.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut stdout, &mut s).unwrap();
            s
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        let status = loop {
            if let Some(s) = watch.try_wait().unwrap() {
                break s;
            }
            if std::time::Instant::now() > deadline {
                let _ = watch.kill();
                panic!("watch did not return within {secs} s\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let out = reader.join().unwrap();
        assert!(status.success(), "watch failed: {out}\n{}", self.logs());
        out
    }

    fn logs(&self) -> String {
        let mut s = format!("--- coordinator\n{}", self.coordinator.proc.log_text());
        for w in &self.workers {
            s.push_str(&format!("\n--- {}\n{}", w.log.display(), w.log_text()));
        }
        s
    }
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn run_lthctl(url: &str, args: &[&str], cwd: &Path) -> Run {
    let Output { status, stdout, stderr } = Command::new(lthctl_bin())
        .args(args)
        .current_dir(cwd)
        .env("LTH_COORDINATOR", url)
        .stdin(Stdio::null())
        .output()
        .expect("run lthctl");
    Run { ok: status.success(), stdout: String::from_utf8_lossy(&stdout).into(), stderr: String::from_utf8_lossy(&stderr).into() }
}

impl Run {
    #[track_caller]
    fn expect_ok(self, what: &str) -> String {
        assert!(self.ok, "{what} failed:\nstdout: {}\nstderr: {}", self.stdout, self.stderr);
        self.stdout
    }
    #[track_caller]
    fn expect_err(self, what: &str) -> String {
        assert!(!self.ok, "{what} should have failed:\nstdout: {}", self.stdout);
        self.stderr
    }
}

fn examples_file(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples").join(name).display().to_string()
}

/// `submitted sweep 3 (...)` → 3
fn sweep_id(submit_output: &str) -> i64 {
    submit_output
        .split_whitespace()
        .skip_while(|w| *w != "sweep")
        .nth(1)
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no sweep id in {submit_output:?}"))
}

#[test]
fn the_sweep_lifecycle_without_workers() {
    let c = Cluster::start();
    let demo = examples_file("digits-lenet.toml");

    // Nothing yet.
    let out = c.lthctl(&["ls"]).expect_ok("ls");
    assert!(out.contains("no sweeps yet"), "{out}");
    let out = c.lthctl(&["workers"]).expect_ok("workers");
    assert!(out.contains("no workers have registered"), "{out}");

    // A dry run asks the coordinator and creates nothing.
    let out = c.lthctl(&["submit", &demo, "--dry-run"]).expect_ok("dry run");
    assert!(out.contains("jobs     42 = 2 dense"), "{out}");
    assert!(out.contains("coordinator: 10 trials, 42 jobs (2 dense), 0 already done and reused, 42 to run"), "{out}");
    assert!(!out.contains("note:"), "lthctl and the coordinator disagree on the grid: {out}");
    assert!(c.lthctl(&["ls"]).expect_ok("ls").contains("no sweeps yet"));

    // Submit; the same file again is the same sweep (token = content hash); --token makes a new one.
    let out = c.lthctl(&["submit", &demo]).expect_ok("submit");
    assert!(out.contains("submitted sweep") && out.contains("10 trials, 42 jobs"), "{out}");
    let id = sweep_id(&out);
    let again = c.lthctl(&["submit", &demo]).expect_ok("submit again");
    assert!(again.contains("already exists"), "{again}");
    assert_eq!(sweep_id(&again), id);
    let other = c.lthctl(&["submit", &demo, "--token", "second-copy"]).expect_ok("submit with a token");
    let id2 = sweep_id(&other);
    assert_ne!(id2, id);

    let out = c.lthctl(&["ls"]).expect_ok("ls");
    assert!(out.contains("digits-lenet") && out.contains(&format!("\n{id} ")) && out.contains(&format!("\n{id2} ")), "{out}");
    assert!(out.contains("0/42"), "{out}");

    let out = c.lthctl(&["status", &id.to_string()]).expect_ok("status");
    assert!(out.contains(&format!("sweep {id} \"digits-lenet\": running")), "{out}");
    assert!(out.contains("10 trials, 42 jobs: 0 succeeded, 0 running"), "{out}");
    // Progress per metric in the paper's order (the coordinator sends them alphabetically).
    let at: Vec<usize> = ["magnitude", "l1", "l2", "softmax", "min_max"]
        .iter()
        .map(|m| out.find(&format!("  {m} ")).unwrap_or_else(|| panic!("no progress line for {m}: {out}")))
        .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "metrics not in paper order: {out}");

    // No results yet: every format says so in its own way; report refuses with advice.
    let table = c.lthctl(&["results", &id.to_string()]).expect_ok("results");
    assert!(table.contains("no results yet"), "{table}");
    let csv = c.lthctl(&["results", &id.to_string(), "--format", "csv"]).expect_ok("results csv");
    assert_eq!(csv.trim(), "metric,rate,level,sparsity,weights_remaining_percent,accuracy_mean,accuracy_std,accuracy_min,accuracy_max,seeds,control,schedule");
    let json = c.lthctl(&["results", &id.to_string(), "--format", "json"]).expect_ok("results json");
    assert_eq!(serde_json::from_str::<Vec<serde_json::Value>>(&json).unwrap().len(), 0);
    let err = c.lthctl(&["report", &id.to_string()]).expect_err("report of an empty sweep");
    assert!(err.contains("no results yet"), "{err}");

    // Pause, resume, cancel; watch returns at once on a finished sweep.
    let out = c.lthctl(&["pause", &id.to_string()]).expect_ok("pause");
    assert!(out.contains("paused"), "{out}");
    let out = c.lthctl(&["resume", &id.to_string()]).expect_ok("resume");
    assert!(out.contains("running"), "{out}");
    let out = c.lthctl(&["cancel", &id.to_string()]).expect_ok("cancel");
    assert!(out.contains("cancelled"), "{out}");
    let out = c.lthctl(&["status", &id.to_string()]).expect_ok("status");
    assert!(out.contains(": cancelled"), "{out}");
    let out = c.lthctl(&["watch", &id.to_string()]).expect_ok("watch a cancelled sweep");
    assert!(out.contains(&format!("sweep {id} cancelled")), "{out}");
    // The other sweep is untouched.
    assert!(c.lthctl(&["status", &id2.to_string()]).expect_ok("status").contains(": running"));

    // Unknown sweeps and bad input say what to do.
    let err = c.lthctl(&["status", "987654"]).expect_err("status of a missing sweep");
    assert!(err.contains("lthctl ls"), "{err}");
    let err = c.lthctl(&["cancel", "987654"]).expect_err("cancel of a missing sweep");
    assert!(err.contains("987654"), "{err}");
    let bad = c.dir.path().join("bad.toml");
    std::fs::write(&bad, std::fs::read_to_string(&demo).unwrap().replace("\"softmax\"", "\"softmx\"")).unwrap();
    let err = c.lthctl(&["submit", bad.to_str().unwrap()]).expect_err("submit of a bad file");
    assert!(err.contains("bad.toml:") && err.contains("known metrics"), "{err}");
    assert_eq!(c.lthctl(&["ls"]).expect_ok("ls").matches("digits-lenet").count(), 2, "a bad file created a sweep");
}

#[test]
fn a_stopped_coordinator_gives_advice() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let r = run_lthctl(&format!("http://127.0.0.1:{port}"), &["ls"], dir.path());
    let err = r.expect_err("ls without a coordinator");
    assert!(err.contains("cannot reach the coordinator") && err.contains("LTH_COORDINATOR"), "{err}");
    // The offline dry run needs none.
    let out = run_lthctl(&format!("http://127.0.0.1:{port}"), &["submit", &examples_file("digits-lenet.toml"), "--dry-run", "--offline"], dir.path())
        .expect_ok("offline dry run");
    assert!(out.contains("42 = 2 dense"), "{out}");

    // `lthctl ... | head`: the reader leaves before lthctl writes; lthctl exits quietly.
    let mut child = Command::new(lthctl_bin())
        .args(["submit", &examples_file("digits-lenet.toml"), "--dry-run", "--offline"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "a closed pipe is not an error: {:?} {stderr}", out.status);
}

/// A small digits sweep (2 dense + 2 metrics × 2 seeds × 2 levels = 10 jobs) trained by a real CPU
/// worker: watch follows it to the end, results hold
/// one row per (metric, level) with the seeds aggregated, and report writes both SVGs.
#[test]
fn results_and_report_of_a_trained_sweep() {
    let mut c = Cluster::start();
    c.start_worker("w1");
    let sweep = c.dir.path().join("tiny.toml");
    std::fs::write(
        &sweep,
        r#"
name = "tiny-digits"
model = "lenet300100"
metrics = ["magnitude", "softmax"]
rates = [0.5]
seeds = [1, 2]
levels = 2
[dataset]
name = "digits"
[recipe]
length = "2ep"
batch_size = 64
lr = 0.05
rewind = "0it"
augment = false
checkpoint_every = "0it"
"#,
    )
    .unwrap();
    let out = c.lthctl(&["submit", sweep.to_str().unwrap()]).expect_ok("submit");
    let id = sweep_id(&out).to_string();

    // watch returns when the sweep finishes; its output is not a terminal here.
    let watch_out = c.watch(&id, &[], 240);
    assert!(watch_out.contains(&format!("sweep {id} succeeded: 10/10 jobs finished")), "{watch_out}\n{}", c.logs());
    // Not a terminal: one timestamped line per event instead of bars, every job's start and end.
    for job in ["dense seed 1", "magnitude rate 0.5 seed 2 level 2", "softmax rate 0.5 seed 1 level 1"] {
        assert!(watch_out.lines().any(|l| l.contains(job) && l.contains(" running")), "no start of {job}: {watch_out}");
        assert!(watch_out.lines().any(|l| l.contains(job) && l.contains(" succeeded (")), "no end of {job}: {watch_out}");
    }
    let first = watch_out.lines().next().unwrap_or_default();
    assert!(first.len() > 20 && first.as_bytes()[4] == b'-' && first.as_bytes()[13] == b':', "lines carry a timestamp: {first}");
    assert!(watch_out.contains("10/10 jobs done"), "{watch_out}");

    let out = c.lthctl(&["status", &id]).expect_ok("status");
    assert!(out.contains("10 jobs: 10 succeeded"), "{out}");

    let json = c.lthctl(&["results", &id, "--format", "json"]).expect_ok("results");
    let points: Vec<lthctl::results::ResultPoint> = serde_json::from_str(&json).unwrap();
    let keys: Vec<(String, u32, u32)> = points.iter().map(|p| (p.metric.clone(), p.level, p.seeds)).collect();
    let expected: Vec<(String, u32, u32)> =
        ["magnitude", "softmax"].iter().flat_map(|m| (0..=2).map(move |l| (m.to_string(), l, 2))).collect();
    assert_eq!(keys, expected, "{json}");
    for p in &points {
        assert!(p.accuracy_mean > 0.3 && p.accuracy_mean <= 1.0, "implausible accuracy {p:?}");
        assert!((p.sparsity - (1.0 - 0.5f64.powi(p.level as i32))).abs() < 0.01, "{p:?}");
        assert!(p.accuracy_min <= p.accuracy_mean && p.accuracy_mean <= p.accuracy_max);
    }
    let table = c.lthctl(&["results", &id]).expect_ok("results table");
    assert!(table.contains("softmax") && table.contains("25.00"), "{table}");

    let report_dir = c.dir.path().join("report");
    let out = c.lthctl(&["report", &id, "--out", report_dir.to_str().unwrap()]).expect_ok("report");
    let files: Vec<&str> = out.lines().collect();
    assert_eq!(files.len(), 3, "{out}");
    let acc = std::fs::read_to_string(files[0]).unwrap();
    assert!(acc.starts_with("<svg") && acc.contains("magnitude") && acc.contains("softmax") && acc.contains("dense: "));
    let heat = std::fs::read_to_string(files[1]).unwrap();
    // LeNet-300-100 has three prunable layers, named once per row of panels (".weight" dropped).
    assert!(heat.contains("layer names without") && heat.matches("fc_layers.").count() >= 2, "layer names missing from the heatmap");
    // The overlap at the deepest level both metrics reached (2): masks streamed from the coordinator.
    assert!(files[2].ends_with("ticket_overlap.svg"), "{out}");
    let overlap = std::fs::read_to_string(files[2]).unwrap();
    assert!(overlap.contains("at level 2 (25.0% of weights remaining, rate 0.5)"), "{overlap}");
    let png_dir = c.dir.path().join("png");
    let out = c.lthctl(&["report", &id, "--out", png_dir.to_str().unwrap(), "--format", "png", "--overlap-level", "1"]).expect_ok("png report");
    assert_eq!(out.lines().filter(|f| f.ends_with(".png")).count(), 3, "{out}");
    let overlap = std::fs::read(png_dir.join("ticket_overlap.png")).unwrap();
    assert_eq!(&overlap[..4], b"\x89PNG");
    let err = c.lthctl(&["report", &id, "--out", png_dir.to_str().unwrap(), "--overlap-level", "7"]).expect_err("overlap at a level not run");
    assert!(err.contains("no two metrics have masks at level 7"), "{err}");

    check_exports(&c, &id, &points, 3);

    check_measured_estimate(&c, &sweep, 10);

    let out = c.lthctl(&["workers"]).expect_ok("workers");
    assert!(out.contains("w1"), "{out}");
}

/// After `jobs` finished on a CPU worker, a dry run of the same sweep with a new seed estimates
/// from what they measured (the measured_throughput view), not from the bench figures.
fn check_measured_estimate(c: &Cluster, sweep: &Path, jobs: usize) {
    let text = std::fs::read_to_string(sweep).unwrap();
    let new_seed = c.dir.path().join("new-seed.toml");
    let replaced = with_new_seed(&text);
    std::fs::write(&new_seed, replaced).unwrap();
    let out = c.lthctl(&["submit", new_seed.to_str().unwrap(), "--dry-run"]).expect_ok("dry run");
    assert!(out.contains("  cpu: ") && out.contains(&format!("(source: measured by {jobs} finished job(s) on the coordinator's workers, lenet300100 at batch 64, fp32")), "{out}");
    assert!(!out.contains("bench figure") && out.contains("gpu: no estimate: no finished job of this model and precision has run on a GPU worker yet"), "{out}");
}

/// The sweep file with its `seeds = [...]` line replaced by a seed no test uses.
fn with_new_seed(text: &str) -> String {
    text.lines().map(|l| if l.starts_with("seeds = ") { "seeds = [77]".to_string() } else { l.to_string() }).collect::<Vec<_>>().join("\n")
}

/// Every row of a Parquet file written by `lthctl export`, read back with the parquet crate.
fn read_parquet(path: &Path) -> (Vec<String>, Vec<parquet::record::Row>) {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let columns = reader.metadata().file_metadata().schema_descr().columns().iter().map(|c| c.name().to_string()).collect();
    let rows = reader.get_row_iter(None).unwrap().map(|r| r.unwrap()).collect();
    (columns, rows)
}

/// `lthctl export` of a finished sweep in every format and table, checked against `results` and
/// against itself (layers vs masks); `layers` is the network's prunable layer count.
fn check_exports(c: &Cluster, id: &str, points: &[lthctl::results::ResultPoint], layers: usize) {
    use parquet::record::RowAccessor;
    let dir = c.dir.path().join("exports");
    std::fs::create_dir_all(&dir).unwrap();
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let expected_rows: usize = points.iter().map(|p| p.seeds as usize).sum();

    // Levels as Parquet: one row per (metric, rate, seed, level); the mean over seeds is `results`.
    let out = c.lthctl(&["export", id, "-o", &path("levels.parquet")]).expect_ok("export levels");
    assert!(out.is_empty(), "a file export writes nothing to stdout: {out}");
    let (columns, rows) = read_parquet(&dir.join("levels.parquet"));
    assert_eq!(columns[..6], ["sweep_id", "metric", "rate", "seed", "level", "job_id"]);
    assert!(columns.contains(&"test_accuracy".to_string()) && columns.contains(&"wall_seconds".to_string()));
    assert_eq!(rows.len(), expected_rows);
    let col = |name: &str| columns.iter().position(|c| c == name).unwrap();
    for p in points {
        let accs: Vec<f64> = rows
            .iter()
            .filter(|r| r.get_string(col("metric")).unwrap() == &p.metric && r.get_long(col("level")).unwrap() == p.level as i64)
            .map(|r| r.get_double(col("test_accuracy")).unwrap())
            .collect();
        assert_eq!(accs.len(), p.seeds as usize, "{p:?}");
        let mean = accs.iter().sum::<f64>() / accs.len() as f64;
        assert!((mean - p.accuracy_mean).abs() < 1e-12, "{p:?}: {accs:?}");
    }
    // Paper order: the first metric of the sweep's results first.
    assert_eq!(rows[0].get_string(col("metric")).unwrap(), &points[0].metric);

    // The same table as CSV on stdout, and as JSON lines.
    let csv_text = c.lthctl(&["export", id, "--format", "csv"]).expect_ok("export csv");
    let mut lines = csv_text.lines();
    assert_eq!(lines.next().unwrap().split(',').collect::<Vec<_>>(), columns);
    assert_eq!(lines.count(), expected_rows);
    let jsonl = c.lthctl(&["export", id, "--format", "jsonl", "--what", "layers"]).expect_ok("export layers jsonl");
    let layer_rows: Vec<serde_json::Value> = jsonl.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(layer_rows.len(), expected_rows * layers);
    for r in &layer_rows {
        let (kept, total) = (r["kept"].as_i64().unwrap(), r["total"].as_i64().unwrap());
        assert!((r["kept_fraction"].as_f64().unwrap() - kept as f64 / total as f64).abs() < 1e-12, "{r}");
    }

    // Masks: each job once (level 0 as `dense`), the bits agree with the per-layer counts.
    c.lthctl(&["export", id, "--what", "masks", "-o", &path("masks.parquet")]).expect_ok("export masks");
    let (columns, masks) = read_parquet(&dir.join("masks.parquet"));
    assert_eq!(columns.last().unwrap(), "bits");
    let col = |name: &str| columns.iter().position(|c| c == name).unwrap();
    let jobs: std::collections::BTreeSet<i64> = layer_rows.iter().map(|r| r["job_id"].as_i64().unwrap()).collect();
    assert_eq!(masks.len(), jobs.len() * layers);
    for m in &masks {
        let bits = m.get_bytes(col("bits")).unwrap().data();
        let (kept, total) = (m.get_long(col("kept")).unwrap(), m.get_long(col("total")).unwrap());
        assert_eq!(bits.len() as i64, (total + 7) / 8);
        assert_eq!(bits.iter().map(|b| b.count_ones() as i64).sum::<i64>(), kept);
        let (job, layer) = (m.get_long(col("job_id")).unwrap(), m.get_string(col("layer")).unwrap());
        let counted = layer_rows.iter().find(|r| r["job_id"].as_i64() == Some(job) && r["layer"].as_str() == Some(layer)).unwrap();
        assert_eq!(counted["kept"].as_i64(), Some(kept));
        let level = m.get_long(col("level")).unwrap();
        assert_eq!(m.get_string(col("metric")).unwrap() == "dense", level == 0);
    }
    // One level only, as hex in CSV.
    let csv_masks = c.lthctl(&["export", id, "--what", "masks", "--levels", "1"]).expect_ok("masks csv");
    assert_eq!(csv_masks.lines().count() - 1, masks.iter().filter(|m| m.get_long(col("level")).unwrap() == 1).count());

    // Bad requests say what to do and leave no file behind.
    let err = c.lthctl(&["export", id, "--levels", "1"]).expect_err("--levels without masks");
    assert!(err.contains("--what masks"), "{err}");
    let err = c.lthctl(&["export", id, "-o", &path("levels.txt")]).expect_err("unknown extension");
    assert!(err.contains("--format csv, parquet or jsonl"), "{err}");
    let err = c.lthctl(&["export", "987654", "-o", &path("none.csv")]).expect_err("missing sweep");
    assert!(err.contains("lthctl ls"), "{err}");
    let missing = dir.join("no-such-folder").join("x.parquet");
    let err = c.lthctl(&["export", id, "-o", missing.to_str().unwrap()]).expect_err("missing folder");
    assert!(err.contains("cannot create"), "{err}");
    let left: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    let mut left_sorted = left.clone();
    left_sorted.sort();
    assert_eq!(left_sorted, ["levels.parquet", "masks.parquet"], "a failed export left files: {left:?}");
}

/// The export and the overlap plot on Postgres (the default store is SQLite; a cluster runs on
/// Postgres): a small real sweep, two metrics, one seed.
#[test]
fn export_and_overlap_on_postgres() {
    let db = TestDb::postgres_named("lthctl_test");
    let mut c = Cluster::start_on(Some(&db.url));
    c.start_worker("w1");
    let sweep = c.dir.path().join("pg.toml");
    std::fs::write(
        &sweep,
        r#"
name = "pg-digits"
model = "lenet300100"
metrics = ["l2", "magnitude"]
rates = [0.5]
seeds = [3]
levels = 2
[dataset]
name = "digits"
[recipe]
length = "1ep"
batch_size = 64
lr = 0.05
rewind = "0it"
augment = false
checkpoint_every = "0it"
"#,
    )
    .unwrap();
    let id = sweep_id(&c.lthctl(&["submit", sweep.to_str().unwrap()]).expect_ok("submit")).to_string();
    let out = c.watch(&id, &["--lines"], 180);
    assert!(out.contains(&format!("sweep {id} succeeded: 5/5 jobs finished")), "{out}\n{}", c.logs());
    let json = c.lthctl(&["results", &id, "--format", "json"]).expect_ok("results");
    let points: Vec<lthctl::results::ResultPoint> = serde_json::from_str(&json).unwrap();
    // Paper order, whatever the sweep file's order.
    assert_eq!(points[0].metric, "magnitude");
    check_exports(&c, &id, &points, 3);
    let report = c.dir.path().join("report");
    let out = c.lthctl(&["report", &id, "--out", report.to_str().unwrap()]).expect_ok("report");
    let overlap = std::fs::read_to_string(report.join("ticket_overlap.svg")).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(overlap.contains("magnitude") && overlap.contains("l2") && overlap.contains("at level 2"), "{overlap}");
    check_measured_estimate(&c, &sweep, 5);
    drop(c);
}

// ---------------------------------------------------------------------------------------------
// Your own model and data, uploaded through the coordinator (issue 13)
// ---------------------------------------------------------------------------------------------

/// A sweep of one dense job and one level on `dataset` (the `[dataset]` table's lines).
fn upload_sweep(name: &str, model: &str, dataset: &str) -> String {
    format!(
        r#"
name = "{name}"
model = {model}
metrics = ["magnitude"]
rates = [0.5]
seeds = [1]
levels = 1
[dataset]
{dataset}
[recipe]
length = "2ep"
batch_size = 16
lr = 0.05
rewind = "0it"
augment = false
checkpoint_every = "0it"
"#
    )
}

/// The digest in `lthctl dataset upload`'s `upload = "sha256:..."` line.
fn uploaded_digest(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("upload = \"sha256:").map(|r| r.trim_end_matches('"').to_string()))
        .unwrap_or_else(|| panic!("no upload line in {out}"))
}

/// 8×8 grayscale images of two classes (bright top half / bright bottom half), with noise.
fn pixels(class: usize, i: usize) -> Vec<u8> {
    (0..64).map(|p| {
        let top = p < 32;
        let base: u8 = if top == (class == 0) { 200 } else { 30 };
        base.wrapping_add(((p * 7 + i * 13) % 23) as u8)
    }).collect()
}

/// A safetensors file: train/test images (N×8×8 uint8) and int64 labels, written byte by byte.
fn write_safetensors(path: &Path, train: usize, test: usize) {
    let mut tensors: Vec<(&str, &str, Vec<usize>, Vec<u8>)> = Vec::new();
    for (split, n) in [("train", train), ("test", test)] {
        let mut images = Vec::new();
        let mut labels = Vec::new();
        for i in 0..n {
            images.extend(pixels(i % 2, i));
            labels.extend(((i % 2) as i64).to_le_bytes());
        }
        tensors.push((if split == "train" { "train_images" } else { "test_images" }, "U8", vec![n, 8, 8], images));
        tensors.push((if split == "train" { "train_labels" } else { "test_labels" }, "I64", vec![n], labels));
    }
    let mut offset = 0;
    let mut header = serde_json::Map::new();
    for (name, dtype, shape, data) in &tensors {
        header.insert(name.to_string(), serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + data.len()]}));
        offset += data.len();
    }
    let mut json = serde_json::Value::Object(header).to_string();
    while !json.len().is_multiple_of(8) {
        json.push(' ');
    }
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend(json.as_bytes());
    for (_, _, _, data) in &tensors {
        bytes.extend(data);
    }
    std::fs::write(path, bytes).unwrap();
}

/// An ImageFolder tree with PNG and JPEG files.
fn write_image_folder(root: &Path) {
    for (split, n) in [("train", 12), ("val", 4)] {
        for (class, dir) in ["top", "bottom"].iter().enumerate() {
            let d = root.join(split).join(dir);
            std::fs::create_dir_all(&d).unwrap();
            for i in 0..n {
                let img = image::GrayImage::from_raw(8, 8, pixels(class, i)).unwrap();
                if i % 2 == 0 {
                    img.save_with_format(d.join(format!("{i}.png")), image::ImageFormat::Png).unwrap();
                } else {
                    img.save_with_format(d.join(format!("{i}.jpg")), image::ImageFormat::Jpeg).unwrap();
                }
            }
        }
    }
}

#[test]
fn an_uploaded_torchscript_model_trains_on_a_worker_that_cannot_see_the_clients_file() {
    let mut c = Cluster::start();
    let client = c.dir.path().join("client");
    std::fs::create_dir_all(client.join("models")).unwrap();
    std::fs::copy(examples_file("models/lenet300100-digits.pt"), client.join("models/net.pt")).unwrap();
    let sweep = client.join("sweep.toml");
    std::fs::write(&sweep, upload_sweep("uploaded-model", "{ torchscript = \"models/net.pt\" }", "name = \"digits\"")).unwrap();
    let out = c.lthctl(&["submit", sweep.to_str().unwrap()]).expect_ok("submit");
    assert!(out.contains("uploaded the model") && out.contains("net.pt"), "{out}");
    let id = sweep_id(&out).to_string();
    // The client's files are gone before any worker runs: the worker can only have the model
    // from the coordinator.
    std::fs::remove_dir_all(&client).unwrap();
    let ls = c.lthctl(&["dataset", "ls"]).expect_ok("dataset ls");
    assert!(ls.contains("torchscript") && ls.contains("net.pt"), "{ls}");
    c.start_worker("w1");
    let watch = c.watch(&id, &[], 240);
    assert!(watch.contains(&format!("sweep {id} succeeded: 2/2 jobs finished")), "{watch}\n{}", c.logs());
    let log = c.workers[0].log_text();
    assert!(log.contains("input downloaded and verified"), "{log}");
    assert!(log.lines().any(|l| l.contains("input cache hit")), "the level job reads the cached model: {log}");
}

#[test]
fn uploaded_safetensors_and_image_folder_datasets_train_and_the_second_job_hits_the_cache() {
    let mut c = Cluster::start();
    let data = c.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    write_safetensors(&data.join("halves.safetensors"), 64, 32);
    write_image_folder(&data.join("folder"));

    let out = c.lthctl(&["dataset", "upload", data.join("halves.safetensors").to_str().unwrap()]).expect_ok("upload safetensors");
    assert!(out.contains("uploaded \"halves.safetensors\"") && out.contains("name = \"safetensors\""), "{out}");
    let st = uploaded_digest(&out);
    let out = c.lthctl(&["dataset", "upload", data.join("folder").to_str().unwrap(), "--name", "halves"]).expect_ok("upload folder");
    assert!(out.contains("packed") && out.contains("name = \"image_folder\"") && out.contains("resolution"), "{out}");
    let folder = uploaded_digest(&out);
    // Content-addressed: the same tree, packed again elsewhere, is the same upload and sends nothing.
    write_image_folder(&data.join("copy"));
    let again = c.lthctl(&["dataset", "upload", data.join("copy").to_str().unwrap()]).expect_ok("upload the copy");
    assert_eq!(uploaded_digest(&again), folder);
    assert!(again.contains("already holds") && again.contains("nothing was sent"), "{again}");
    let ls = c.lthctl(&["dataset", "ls"]).expect_ok("dataset ls");
    assert!(ls.contains(&format!("sha256:{st}")) && ls.contains(&format!("sha256:{folder}")) && ls.contains("image_folder"), "{ls}");
    assert_eq!(ls.lines().filter(|l| l.contains("sha256:")).count(), 2, "one row per content: {ls}");
    // The client's copies are not needed any more.
    std::fs::remove_dir_all(&data).unwrap();

    let sweeps = [
        ("st", upload_sweep("uploaded-safetensors", "\"lenet300100\"", &format!("name = \"safetensors\"\nupload = \"sha256:{st}\""))),
        ("folder", upload_sweep("uploaded-folder", "\"lenet300100\"", &format!("name = \"image_folder\"\nupload = \"sha256:{folder}\"\nresolution = 8\nchannels = 1"))),
    ];
    let mut ids = Vec::new();
    for (name, text) in &sweeps {
        let path = c.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        ids.push(sweep_id(&c.lthctl(&["submit", path.to_str().unwrap()]).expect_ok("submit")).to_string());
    }
    c.start_worker("w1");
    for id in &ids {
        let watch = c.watch(id, &[], 240);
        assert!(watch.contains(&format!("sweep {id} succeeded: 2/2 jobs finished")), "{watch}\n{}", c.logs());
    }
    let log = c.workers[0].log_text();
    for sha in [&st, &folder] {
        assert!(log.lines().any(|l| l.contains("input downloaded and verified") && l.contains(sha.as_str())), "{sha} fetched once: {log}");
        assert_eq!(log.lines().filter(|l| l.contains("input downloaded and verified") && l.contains(sha.as_str())).count(), 1, "{log}");
        assert!(log.lines().any(|l| l.contains("input cache hit") && l.contains(sha.as_str())), "the second job of {sha} hits the cache: {log}");
    }
    assert!(log.lines().any(|l| l.contains("unpacked ImageFolder cache hit") && l.contains(folder.as_str())), "{log}");
}

#[test]
fn unknown_corrupt_and_oversized_uploads_are_refused() {
    let c = Cluster::start_with(None, &["--max-input-bytes", "4096"]);
    // A sweep naming a digest the coordinator does not hold: refused at submit, nothing created.
    let unknown = "0".repeat(64);
    let path = c.dir.path().join("unknown.toml");
    std::fs::write(&path, upload_sweep("unknown-upload", "\"lenet300100\"", &format!("name = \"safetensors\"\nupload = \"sha256:{unknown}\""))).unwrap();
    let err = c.lthctl(&["submit", path.to_str().unwrap()]).expect_err("submit naming an unknown upload");
    assert!(err.contains(&format!("sha256:{unknown}")) && err.contains("does not hold") && err.contains("lthctl dataset upload"), "{err}");
    let ls = c.lthctl(&["ls"]).expect_ok("ls");
    assert!(ls.contains("no sweeps yet"), "{ls}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let coord = lthctl::client::connect(&c.url).await.unwrap();
        let mut sweeps = coord.sweeps.clone();
        let code_and_reason = |s: tonic::Status| (s.code(), lth_proto::errors::error_reason(&s), s.message().to_string());
        // The unknown digest, asked through the wire: MISSING_UPLOADS.
        let spec: lth_sweep::SweepSpec = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let s = sweeps
            .submit_sweep(lth_proto::v1::SubmitSweepRequest { spec: Some((&spec).into()), client_token: String::new(), dry_run: true })
            .await
            .unwrap_err();
        assert_eq!(code_and_reason(s).1, Some(lth_proto::v1::ErrorReason::MissingUploads));

        // Bytes that do not hash to the declared digest: refused, nothing kept.
        let data = b"these bytes are not what the digest says".to_vec();
        let wrong = lth_proto::v1::InputChunk {
            sha256: "ab".repeat(32),
            total_bytes: data.len() as u64,
            kind: lth_proto::v1::InputKind::Safetensors as i32,
            name: "corrupt".into(),
            data: data.clone(),
        };
        let (code, _, msg) = code_and_reason(sweeps.upload_input(tokio_stream::iter(vec![wrong])).await.unwrap_err());
        assert_eq!(code, tonic::Code::DataLoss, "{msg}");
        assert!(msg.contains("sha256 mismatch"), "{msg}");
        let listed = sweeps.list_inputs(lth_proto::v1::ListInputsRequest { sha256: vec![] }).await.unwrap().into_inner().inputs;
        assert!(listed.is_empty(), "{listed:?}");

        // Over the limit: declared, or sent past a smaller declaration.
        let big = vec![7u8; 5000];
        let sha = hex_sha(&big);
        let declared = lth_proto::v1::InputChunk {
            sha256: sha.clone(),
            total_bytes: big.len() as u64,
            kind: lth_proto::v1::InputKind::Safetensors as i32,
            name: "big".into(),
            data: big.clone(),
        };
        let (code, reason, msg) = code_and_reason(sweeps.upload_input(tokio_stream::iter(vec![declared.clone()])).await.unwrap_err());
        assert_eq!((code, reason), (tonic::Code::ResourceExhausted, Some(lth_proto::v1::ErrorReason::LimitExceeded)), "{msg}");
        assert!(msg.contains("4096") && msg.contains("--max-input-bytes"), "{msg}");
        let understated = lth_proto::v1::InputChunk { total_bytes: 100, ..declared };
        let (code, reason, _) = code_and_reason(sweeps.upload_input(tokio_stream::iter(vec![understated])).await.unwrap_err());
        assert_eq!((code, reason), (tonic::Code::ResourceExhausted, Some(lth_proto::v1::ErrorReason::LimitExceeded)));

        // A right one is kept, and sending it again is answered from the store.
        let ok = b"a small safetensors-sized input".to_vec();
        let chunk = lth_proto::v1::InputChunk {
            sha256: hex_sha(&ok),
            total_bytes: ok.len() as u64,
            kind: lth_proto::v1::InputKind::Safetensors as i32,
            name: "small".into(),
            data: ok,
        };
        let first = sweeps.upload_input(tokio_stream::iter(vec![chunk.clone()])).await.unwrap().into_inner();
        let second = sweeps.upload_input(tokio_stream::iter(vec![chunk])).await.unwrap().into_inner();
        assert!(first.created && !second.created, "{first:?} {second:?}");
        let listed = sweeps.list_inputs(lth_proto::v1::ListInputsRequest { sha256: vec![] }).await.unwrap().into_inner().inputs;
        assert_eq!(listed.len(), 1, "{listed:?}");
    });
}

fn hex_sha(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The sweep's failed-job lines once it has finished (`lthctl status`).
fn wait_finished(c: &Cluster, id: &str, secs: u64) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let ls = c.lthctl(&["ls"]).expect_ok("ls");
        // Status is read after ls saw the sweep failed: read before, it may predate the failure.
        let out = c.lthctl(&["status", id]).expect_ok("status");
        if ls.lines().any(|l| l.split_whitespace().next() == Some(id) && l.split_whitespace().any(|w| w == "failed")) {
            return out;
        }
        assert!(std::time::Instant::now() < deadline, "sweep {id} did not fail within {secs} s:\n{out}\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn a_corrupt_or_missing_upload_fails_its_job_with_the_digest_and_no_training() {
    let mut c = Cluster::start();
    let data = c.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    write_safetensors(&data.join("a.safetensors"), 16, 8);
    write_safetensors(&data.join("b.safetensors"), 18, 8);
    let a = uploaded_digest(&c.lthctl(&["dataset", "upload", data.join("a.safetensors").to_str().unwrap()]).expect_ok("upload a"));
    let b = uploaded_digest(&c.lthctl(&["dataset", "upload", data.join("b.safetensors").to_str().unwrap()]).expect_ok("upload b"));
    let stored = |sha: &str| c.dir.path().join("artifacts/inputs/sha256").join(sha);
    // a: the stored bytes rot (same length, one byte changed); b: the stored object vanishes.
    let mut bytes = std::fs::read(stored(&a)).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(stored(&a), bytes).unwrap();
    std::fs::remove_file(stored(&b)).unwrap();
    let mut ids = Vec::new();
    for (name, sha) in [("rotten", &a), ("vanished", &b)] {
        let path = c.dir.path().join(format!("{name}.toml"));
        let text = upload_sweep(name, "\"lenet300100\"", &format!("name = \"safetensors\"\nupload = \"sha256:{sha}\"")).replace("levels = 1", "levels = 1\nmax_attempts = 2");
        std::fs::write(&path, text).unwrap();
        ids.push(sweep_id(&c.lthctl(&["submit", path.to_str().unwrap()]).expect_ok("submit")).to_string());
    }
    c.start_worker("w1");
    // The coordinator hashes an input as it streams it (coordinator/src/download.rs): rotten
    // bytes are caught there, named with what the store holds instead, and the job fails at once.
    let rotten = wait_finished(&c, &ids[0], 120);
    assert!(rotten.contains(&format!("sha256:{a}")) && rotten.contains("does not match its recorded sha256") && rotten.contains("after 1 attempts"), "not retried: {rotten}");
    let vanished = wait_finished(&c, &ids[1], 120);
    assert!(vanished.contains(&format!("sha256:{b}")) && vanished.contains("does not hold") && vanished.contains("after 1 attempts"), "not retried: {vanished}");
    let log = c.workers[0].log_text();
    assert!(log.lines().any(|l| l.contains("job failed") && l.contains(a.as_str())), "{log}");
    assert!(!log.contains("training started"), "nothing trained on a bad input: {log}");
}
