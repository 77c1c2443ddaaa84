//! The analysis surface in SQL, on both backends: every query of docs/sql.md (read out of the file,
//! so the document cannot drift) runs against a demo-like sweep and returns rows; the ordinal
//! migration renumbers old name-ordered rows of built-in models into network order and leaves
//! everything else alone.

mod common;

use common::*;
use lth_coordinator::store::{Lease, LayerResult, LevelResult, Store, UnitStats};
use sqlx::Row;
use std::collections::HashMap;
use std::time::Duration;

const LEASE: Duration = Duration::from_secs(30);

/// The ```sql blocks of docs/sql.md, split into statements (comment lines dropped).
fn doc_queries() -> Vec<String> {
    let text = include_str!("../../docs/sql.md");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("```sql\n") {
        let body = &rest[i + 7..];
        let end = body.find("```").expect("unterminated sql block in docs/sql.md");
        let block: String = body[..end].lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n");
        out.extend(block.split(';').map(str::trim).filter(|s| !s.is_empty()).map(String::from));
        rest = &body[end + 3..];
    }
    out
}

/// Runs `sql` and returns its row count, or the database's error.
async fn rows_of(store: &Store, sql: &str) -> Result<usize, sqlx::Error> {
    match store {
        Store::Postgres(p) => sqlx::query(sql).fetch_all(p).await.map(|r| r.len()),
        Store::Sqlite(p) => sqlx::query(sql).fetch_all(p).await.map(|r| r.len()),
    }
}

/// Dead units of a row-major [outputs, inputs] mask, counted the plain way.
fn units_of(bits: &[bool], outputs: usize, inputs: usize, output_layer: bool) -> UnitStats {
    let at = |o: usize, i: usize| bits[o * inputs + i];
    UnitStats {
        outputs: outputs as u64,
        dead_outputs: (0..outputs).filter(|&o| (0..inputs).all(|i| !at(o, i))).count() as u64,
        inputs: inputs as u64,
        dead_inputs: (0..inputs).filter(|&i| (0..outputs).all(|o| !at(o, i))).count() as u64,
        output_layer,
    }
}

/// A LeNet-shaped result (three tiny layers in network order) whose masks depend on metric, seed
/// and level. min_max empties the output layer from level 3 on (a collapse: every class dead); l1
/// at level 4 prunes class 0's whole fan-in for seed 1 (one dead class, no collapse).
fn demo_result(metric: Option<&str>, seed: i64, level: i32) -> LevelResult {
    let keep = 0.8f64.powi(level);
    let salt = metric.map(|m| m.len()).unwrap_or(0) + seed as usize;
    let layer = |name: &str, outputs: usize, inputs: usize, collapse: bool, dead_row: Option<usize>, last: bool| {
        let total = outputs * inputs;
        let kept = if collapse { 0 } else { ((total as f64) * keep).round().max(1.0) as usize };
        let mut bits: Vec<bool> = (0..total).map(|i| ((i * 7 + salt) % total) < kept).collect();
        if let Some(r) = dead_row {
            bits[r * inputs..(r + 1) * inputs].iter_mut().for_each(|b| *b = false);
        }
        let kept = bits.iter().filter(|b| **b).count();
        LayerResult {
            name: name.into(),
            kept: kept as u64,
            total: total as u64,
            bits: pack(&bits),
            collapsed: kept == 0,
            weight_norm: 1.0,
            units: Some(units_of(&bits, outputs, inputs, last)),
        }
    };
    let collapse = level >= 3 && metric == Some("min_max");
    let dead_class = (level == 4 && seed == 1 && metric == Some("l1")).then_some(0);
    LevelResult {
        sparsity: 1.0 - keep,
        test_accuracy: 0.95 - 0.01 * level as f64 - 0.002 * seed as f64,
        test_loss: 0.2,
        train_loss: 0.1,
        epochs: 12.0,
        wall_seconds: 2.0,
        iterations: 280,
        layers: vec![
            layer("fc_layers.0.weight", 8, 6, false, None, false),
            layer("fc_layers.1.weight", 4, 6, false, None, false),
            layer("fc.weight", 3, 4, collapse, dead_class, true),
        ],
        device: "cpu".into(),
        diverged: false,
    }
}

/// Sweep 1 as the demo has it: five metrics at 0.2, seeds 1 and 2, 4 levels (42 jobs), every job
/// done; one job failed once before succeeding.
async fn demo_sweep(store: &Store) -> i64 {
    let s = spec(&["magnitude", "l1", "l2", "softmax", "min_max"], &[0.2], &[1, 2], 4);
    let sweep = store.submit_sweep(&s, Some("demo")).await.unwrap();
    assert_eq!(sweep.sweep_id, 1, "docs/sql.md's queries name sweep 1");
    register(store, "w").await;
    let (mut done, mut failed_once) = (0, false);
    loop {
        let jobs = store.claim_jobs("w", 8, LEASE).await.unwrap();
        if jobs.is_empty() {
            break;
        }
        for j in jobs {
            let lease = Lease { job_id: j.job.id, attempt: j.job.attempt };
            if !failed_once && j.job.level == 2 {
                store.fail_job(lease, "CUDA error: out of memory", true).await.unwrap();
                failed_once = true;
                continue;
            }
            store.complete_job(lease, &demo_result(j.job.metric.as_deref(), j.job.seed, j.job.level)).await.unwrap();
            done += 1;
        }
    }
    assert_eq!(done, 42);
    sweep.sweep_id
}

async fn doc_queries_return_rows(store: Store) {
    demo_sweep(&store).await;
    let queries = doc_queries();
    assert!(queries.len() >= 7, "found only {} queries in docs/sql.md", queries.len());
    let mut failures = Vec::new();
    for q in &queries {
        match rows_of(&store, q).await {
            Ok(0) => failures.push(format!("no rows on {}:\n{q}", store.backend_name())),
            Ok(_) => {}
            Err(e) => failures.push(format!("{e} on {}:\n{q}", store.backend_name())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[tokio::test]
async fn postgres_doc_queries_return_rows() {
    let db = TestDb::postgres().await;
    doc_queries_return_rows(db.store().await).await;
}

#[tokio::test]
async fn sqlite_doc_queries_return_rows() {
    let db = TestDb::sqlite().await;
    doc_queries_return_rows(db.store().await).await;
}

/// ticket_overlap counts the same shared weights on both backends, equal to counting the bits here.
async fn ticket_overlap_matches_the_bits(store: Store) -> Vec<(String, String, i64, i64)> {
    demo_sweep(&store).await;
    let sql = "SELECT metric_a, metric_b, seed, shared FROM ticket_overlap WHERE sweep_id = 1 AND level = 4 ORDER BY metric_a, metric_b, seed";
    let rows: Vec<(String, String, i64, i64)> = match &store {
        Store::Postgres(p) => sqlx::query(sql).fetch_all(p).await.unwrap().iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect(),
        Store::Sqlite(p) => sqlx::query(sql).fetch_all(p).await.unwrap().iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect(),
    };
    // 10 metric pairs × 2 seeds.
    assert_eq!(rows.len(), 20);
    let bits = |metric: &str, seed: i64| -> Vec<Vec<bool>> {
        demo_result(Some(metric), seed, 4).layers.iter().map(|l| (0..l.total as usize).map(|i| l.bits[i / 8] & (0x80 >> (i % 8)) != 0).collect()).collect()
    };
    for (a, b, seed, shared) in &rows {
        let (ma, mb) = (bits(a, *seed), bits(b, *seed));
        let want: usize = ma.iter().zip(&mb).map(|(x, y)| x.iter().zip(y).filter(|(p, q)| **p && **q).count()).sum();
        assert_eq!(*shared, want as i64, "{a} ∧ {b}, seed {seed}");
    }
    rows
}

#[tokio::test]
async fn ticket_overlap_is_the_same_on_both_backends() {
    let (pg, lite) = (TestDb::postgres().await, TestDb::sqlite().await);
    let a = ticket_overlap_matches_the_bits(pg.store().await).await;
    let b = ticket_overlap_matches_the_bits(lite.store().await).await;
    assert_eq!(a, b);
}

/// The old engine's order (sorted by name) and the network order of the same layers, for each
/// built-in architecture (the engine's order as worker/tests/models.rs checks it; masks only).
fn architectures() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        ("lenet", vec!["fc_layers.0.weight", "fc_layers.1.weight", "fc.weight"]),
        (
            "vgg",
            vec!["layers.0.conv.weight", "layers.1.conv.weight", "layers.3.conv.weight", "layers.4.conv.weight", "layers.10.conv.weight", "layers.16.conv.weight", "fc.weight"],
        ),
        ("resnet20", vec!["conv.weight", "blocks.0.conv1.weight", "blocks.0.conv2.weight", "blocks.3.conv1.weight", "blocks.3.conv2.weight", "blocks.3.shortcut.0.weight", "fc.weight"]),
        (
            "resnet18",
            vec!["conv1.weight", "layer1.0.conv1.weight", "layer1.0.conv2.weight", "layer2.0.conv1.weight", "layer2.0.conv2.weight", "layer2.0.downsample.0.weight", "layer4.1.conv2.weight", "fc.weight"],
        ),
    ]
}

fn result_with_layers(names: &[&str]) -> LevelResult {
    LevelResult {
        sparsity: 0.0,
        test_accuracy: 0.5,
        test_loss: 1.0,
        train_loss: 1.0,
        epochs: 1.0,
        wall_seconds: 1.0,
        iterations: 1,
        layers: names.iter().map(|n| LayerResult { name: (*n).into(), kept: 8, total: 8, bits: vec![0xff], collapsed: false, weight_norm: 1.0, units: None }).collect(),
        device: String::new(),
        diverged: false,
    }
}

async fn ordinals(store: &Store, job_id: i64) -> Vec<String> {
    let sql = format!("SELECT layer FROM masks WHERE job_id = {job_id} ORDER BY ordinal");
    match store {
        Store::Postgres(p) => sqlx::query_scalar(&sql).fetch_all(p).await.unwrap(),
        Store::Sqlite(p) => sqlx::query_scalar(&sql).fetch_all(p).await.unwrap(),
    }
}

async fn ordinal_migration_renumbers_old_rows(store: Store, migration: &str) {
    // Sweep 1: built-in model; sweep 2: the same, then turned into a TorchScript sweep.
    let s = spec(&["magnitude"], &[0.2], &[1, 2, 3, 4, 5, 6, 7], 1);
    let one = store.submit_sweep(&s, Some("one")).await.unwrap().sweep_id;
    let mut other = s.clone();
    other.name = "other".into();
    other.seeds = vec![11, 12];
    let two = store.submit_sweep(&other, Some("two")).await.unwrap().sweep_id;
    register(&store, "w").await;
    let archs = architectures();
    // Per job: the order written (old = sorted by name, or already network order) and the order wanted.
    let mut want: HashMap<i64, Vec<String>> = HashMap::new();
    let mut n = 0usize;
    loop {
        let jobs = store.claim_jobs("w", 4, LEASE).await.unwrap();
        if jobs.is_empty() {
            break;
        }
        for j in jobs {
            // One architecture per seed: a level job reports its dense job's layers (the store
            // refuses others).
            let (_, network) = &archs[j.job.seed as usize % archs.len()];
            let mut by_name: Vec<&str> = network.clone();
            by_name.sort();
            let old = n % 2 == 0;
            let written = if old { &by_name } else { network };
            store.complete_job(Lease { job_id: j.job.id, attempt: j.job.attempt }, &result_with_layers(written)).await.unwrap();
            let expected = if j.job.sweep_id == one || !old { network.clone() } else { by_name.clone() };
            want.insert(j.job.id, expected.iter().map(|s| s.to_string()).collect());
            n += 1;
        }
    }
    assert_eq!(want.len(), 7 + 7 + 2 + 2);
    let flip = match &store {
        Store::Postgres(_) => format!("UPDATE sweeps SET spec = jsonb_set(spec, '{{model}}', '{{\"torchscript\": \"net.pt\"}}') WHERE id = {two}"),
        Store::Sqlite(_) => format!("UPDATE sweeps SET spec = json_set(spec, '$.model', json('{{\"torchscript\": \"net.pt\"}}')) WHERE id = {two}"),
    };
    rows_of(&store, &flip).await.unwrap();
    // The migration already ran (on an empty database); run its statement again over these rows.
    match &store {
        Store::Postgres(p) => sqlx::raw_sql(migration).execute(p).await.map(|_| ()).unwrap(),
        Store::Sqlite(p) => sqlx::raw_sql(migration).execute(p).await.map(|_| ()).unwrap(),
    }
    for (job, expected) in &want {
        assert_eq!(&ordinals(&store, *job).await, expected, "job {job} on {}", store.backend_name());
    }
    // Ordinals stay 0..n per job.
    let gaps = scalar(&store, "SELECT count(*) FROM (SELECT job_id FROM masks GROUP BY job_id HAVING max(ordinal) <> count(*) - 1 OR min(ordinal) <> 0) g").await;
    assert_eq!(gaps, 0);
}

#[tokio::test]
async fn postgres_ordinal_migration_renumbers_old_rows() {
    let db = TestDb::postgres().await;
    ordinal_migration_renumbers_old_rows(db.store().await, include_str!("../../migrations/postgres/20261201300000_network_order_ordinals.sql")).await;
}

#[tokio::test]
async fn sqlite_ordinal_migration_renumbers_old_rows() {
    let db = TestDb::sqlite().await;
    ordinal_migration_renumbers_old_rows(db.store().await, include_str!("../../migrations/sqlite/20261201300000_network_order_ordinals.sql")).await;
}

/// Dead units travel from CompleteJob's result into the masks table, the dead_units view,
/// GetResults' rows and the sweep's count of tickets with dead classes, on both backends.
async fn dead_units_are_stored_and_counted(store: Store) {
    let sweep = demo_sweep(&store).await;
    // What was sent, per (metric, seed, level): the classifier's dead outputs.
    let mut want_tickets = 0;
    for metric in ["magnitude", "l1", "l2", "softmax", "min_max"] {
        for seed in [1, 2] {
            for level in 1..=4 {
                let r = demo_result(Some(metric), seed, level);
                if r.layers.iter().any(|l| l.units.is_some_and(|u| u.output_layer && u.dead_outputs > 0)) {
                    want_tickets += 1;
                }
            }
        }
    }
    // min_max levels 3, 4 × seeds 1, 2 (all 3 classes dead) and l1 level 4 seed 1 (class 0).
    assert_eq!(want_tickets, 5);
    assert_eq!(store.get_sweep(sweep).await.unwrap().tickets_with_dead_classes, 5);
    assert_eq!(scalar(&store, "SELECT CAST(sum(dead_classes) AS BIGINT) FROM dead_units WHERE sweep_id = 1 AND metric = 'min_max'").await, 3 * 4);
    assert_eq!(scalar(&store, "SELECT CAST(sum(dead_classes) AS BIGINT) FROM dead_units WHERE sweep_id = 1 AND metric = 'l1'").await, 1);
    // Every dead_units row agrees with the units sent for that layer, and every layer sent with a
    // dead unit has its row.
    let results = store.results(sweep).await.unwrap();
    let mut expected_rows = 0;
    for row in &results {
        let sent = demo_result(if row.level == 0 { None } else { Some(row.metric.as_str()) }, row.seed, row.level);
        for (got, sent) in row.layers.iter().zip(&sent.layers) {
            assert_eq!(got.layer, sent.name);
            assert_eq!(got.units, sent.units, "{} {} seed {} level {}", row.metric, got.layer, row.seed, row.level);
            let u = sent.units.unwrap();
            if u.dead_outputs > 0 || u.dead_inputs > 0 {
                expected_rows += 1;
                let sql = format!(
                    "SELECT dead_outputs * 1000 + dead_inputs FROM dead_units WHERE sweep_id = 1 AND metric = '{}' AND seed = {} AND level = {} AND layer = '{}'",
                    row.metric, row.seed, row.level, got.layer
                );
                assert_eq!(scalar(&store, &sql).await, (u.dead_outputs * 1000 + u.dead_inputs) as i64, "{sql}");
            }
        }
    }
    assert_eq!(scalar(&store, "SELECT count(*) FROM dead_units WHERE sweep_id = 1").await, expected_rows);
    // A worker that reports no units: NULL columns, no dead_units row, None back.
    let s = spec(&["l2"], &[0.5], &[9], 1);
    let other = store.submit_sweep(&s, Some("old-worker")).await.unwrap().sweep_id;
    loop {
        let jobs = store.claim_jobs("w", 4, LEASE).await.unwrap();
        if jobs.is_empty() {
            break;
        }
        for j in jobs {
            let mut r = demo_result(j.job.metric.as_deref(), j.job.seed, j.job.level);
            r.layers.iter_mut().for_each(|l| l.units = None);
            store.complete_job(Lease { job_id: j.job.id, attempt: j.job.attempt }, &r).await.unwrap();
        }
    }
    assert_eq!(scalar(&store, &format!("SELECT count(*) FROM dead_units WHERE sweep_id = {other}")).await, 0);
    assert!(store.results(other).await.unwrap().iter().all(|r| r.layers.iter().all(|l| l.units.is_none())));
    // Units that cannot belong to the weight are refused with a clear cause.
    let mut bad = demo_result(Some("l2"), 1, 1);
    bad.layers[0].units = Some(UnitStats { outputs: 5, dead_outputs: 0, inputs: 6, dead_inputs: 0, output_layer: false });
    let err = bad.validate().unwrap_err().to_string();
    assert!(err.contains("do not fit a weight of 48 entries"), "{err}");
}

#[tokio::test]
async fn postgres_dead_units_are_stored_and_counted() {
    let db = TestDb::postgres().await;
    dead_units_are_stored_and_counted(db.store().await).await;
}

#[tokio::test]
async fn sqlite_dead_units_are_stored_and_counted() {
    let db = TestDb::sqlite().await;
    dead_units_are_stored_and_counted(db.store().await).await;
}

/// GetResults' aggregates are the accuracy_vs_sparsity view: mean, sample std, min, max over the
/// per-seed rows of the same sweep, level 0 once per (metric, rate), on both backends.
async fn accuracy_rows_aggregate_the_seeds(store: Store) {
    let sweep = demo_sweep(&store).await;
    let rows = store.results(sweep).await.unwrap();
    let acc = store.accuracy(sweep).await.unwrap();
    assert_eq!(acc.len(), 5 * 5, "5 metrics × levels 0-4");
    for a in &acc {
        let v: Vec<f64> = rows.iter().filter(|r| r.metric == a.metric && r.rate == a.rate && r.level == a.level).map(|r| r.test_accuracy).collect();
        assert_eq!(a.seeds, 2);
        let mean = v.iter().sum::<f64>() / 2.0;
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 1.0).sqrt();
        assert!((a.mean_accuracy - mean).abs() < 1e-12, "{a:?}");
        assert!((a.std_accuracy.unwrap() - std).abs() < 1e-9, "{a:?} vs {std}");
        assert_eq!((a.min_accuracy, a.max_accuracy), (v.iter().copied().fold(f64::INFINITY, f64::min), v.iter().copied().fold(f64::NEG_INFINITY, f64::max)));
        assert!((a.sparsity - (1.0 - 0.8f64.powi(a.level))).abs() < 1e-12);
    }
    let order: Vec<(String, i32)> = acc.iter().map(|a| (a.metric.clone(), a.level)).collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted);
}

#[tokio::test]
async fn postgres_accuracy_rows_aggregate_the_seeds() {
    let db = TestDb::postgres().await;
    accuracy_rows_aggregate_the_seeds(db.store().await).await;
}

#[tokio::test]
async fn sqlite_accuracy_rows_aggregate_the_seeds() {
    let db = TestDb::sqlite().await;
    accuracy_rows_aggregate_the_seeds(db.store().await).await;
}

/// What the dashboard's queries (store/dashboard.rs) read from the demo-like sweep: the same on
/// both backends, and what the grid implies.
async fn dashboard_reads(store: Store) -> String {
    let id = demo_sweep(&store).await;
    let (sweeps, total) = store.dashboard_sweeps(None, 50, 0).await.unwrap();
    assert_eq!((total, sweeps.len(), sweeps[0].jobs, sweeps[0].succeeded, sweeps[0].failed), (1, 1, 42, 42, 0));
    assert_eq!(store.dashboard_sweeps(Some("paused"), 50, 0).await.unwrap().1, 0);
    let (page, total) = store.dashboard_jobs(id, Some("succeeded"), 10, 40).await.unwrap();
    assert_eq!((page.len(), total), (2, 42), "the last page of 42 jobs by 10");
    let kept = store.dashboard_kept(id).await.unwrap();
    let overlap = store.dashboard_overlap(id, 4).await.unwrap();
    assert_eq!(overlap.len(), 10, "5 metrics make 10 pairs at level 4");
    let collapse = store.dashboard_collapse(id, 100).await.unwrap();
    let retried = store.dashboard_jobs(id, None, 100, 0).await.unwrap().0.into_iter().find(|j| j.attempt == 2).expect("the job that failed once");
    let attempts = store.dashboard_attempts(retried.id).await.unwrap();
    assert_eq!(attempts.iter().map(|a| a.outcome.as_str()).collect::<Vec<_>>(), ["failed", "succeeded"]);
    assert!(attempts[0].error.as_deref().unwrap().contains("out of memory"));
    let result = store.dashboard_job_result(retried.id).await.unwrap().expect("a result");
    assert!(store.dashboard_running(id, 10).await.unwrap().is_empty());
    // Everything but times and ids, to compare the backends.
    let kept: Vec<String> = kept.iter().map(|k| format!("{} {} {} {} {} {:.6} {}", k.metric, k.rate, k.level, k.ordinal, k.layer, k.kept_fraction, k.collapsed)).collect();
    let overlap: Vec<String> = overlap.iter().map(|o| format!("{} {} {} {:.6} {}", o.rate, o.metric_a, o.metric_b, o.jaccard, o.seeds)).collect();
    let collapse: Vec<String> = collapse.iter().map(|c| format!("{} {} {} {} {}", c.metric, c.rate, c.seed, c.first_level, c.what)).collect();
    assert!(!kept.is_empty());
    format!("{kept:#?}\n{overlap:#?}\n{collapse:#?}\n{:.6} {:.6}", result.test_accuracy, result.sparsity)
}

#[tokio::test]
async fn dashboard_reads_agree_on_both_backends() {
    let (pg, lite) = (TestDb::postgres().await, TestDb::sqlite().await);
    let (a, b) = (dashboard_reads(pg.store().await).await, dashboard_reads(lite.store().await).await);
    assert_eq!(a, b, "Postgres and SQLite disagree");
}
