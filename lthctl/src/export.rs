//! `lthctl export`: a sweep's raw results as CSV, JSON lines or Parquet, for pandas, polars,
//! DuckDB or R.
//!
//! Three tables (`--what`), the same columns in every format (docs/export.md lists them):
//! - `levels`: one row per (metric, rate, seed, level), as the `trial_results` SQL view.
//! - `layers`: one row per layer of each of those, as the `layer_kept_fraction` view.
//! - `masks`: one row per layer of each job with the kept-weight bits (streamed from the
//!   coordinator; level 0 once per seed, as metric `dense`).
//!
//! Rows are in paper order (metric, then rate, seed, level; layers in network order); masks come
//! in the coordinator's order (job, then layer). A file is written next to its destination and
//! renamed into place when complete, so a failed export never leaves a truncated file behind.

pub mod sink;
pub mod table;

use crate::client::Coordinator;
use crate::convert::metric_name;
use crate::masks::{job_labels, JobLabel};
use crate::results::metric_order;
use anyhow::{Context, Result};
use lth_proto::v1 as pb;
use sink::{ExportFormat, Sink};
use std::io::Write;
use std::path::{Path, PathBuf};
use table::{ColumnType as T, Record, Schema, Value as V};

/// What `lthctl export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum What {
    /// One row per (metric, rate, seed, level): accuracy, loss, sparsity, time.
    Levels,
    /// One row per layer of each (metric, rate, seed, level): kept and total weights.
    Layers,
    /// One row per layer of each job, with the kept-weight bits (large: the whole ticket).
    Masks,
}

pub fn levels_schema() -> Schema {
    Schema {
        name: "levels",
        columns: vec![
            ("sweep_id", T::I64),
            ("metric", T::Str),
            ("rate", T::F64),
            ("seed", T::I64),
            ("level", T::I64),
            ("job_id", T::I64),
            ("sparsity", T::F64),
            ("weights_remaining_percent", T::F64),
            ("test_accuracy", T::F64),
            ("test_loss", T::F64),
            ("train_loss", T::F64),
            ("epochs", T::F64),
            ("iterations", T::I64),
            ("wall_seconds", T::F64),
        ],
    }
}

pub fn layers_schema() -> Schema {
    Schema {
        name: "layers",
        columns: vec![
            ("sweep_id", T::I64),
            ("metric", T::Str),
            ("rate", T::F64),
            ("seed", T::I64),
            ("level", T::I64),
            ("job_id", T::I64),
            ("layer", T::Str),
            ("ordinal", T::I64),
            ("kept", T::I64),
            ("total", T::I64),
            ("kept_fraction", T::F64),
            ("collapsed", T::Bool),
            ("weight_norm", T::F64),
        ],
    }
}

pub fn masks_schema() -> Schema {
    Schema {
        name: "masks",
        columns: vec![
            ("sweep_id", T::I64),
            ("metric", T::Str),
            ("rate", T::F64),
            ("seed", T::I64),
            ("level", T::I64),
            ("job_id", T::I64),
            ("layer", T::Str),
            ("ordinal", T::I64),
            ("kept", T::I64),
            ("total", T::I64),
            ("bits", T::Bytes),
        ],
    }
}

/// Result rows in paper order: metric (as `ImportanceMetric::ALL`), rate, seed, level.
fn sorted(rows: &[pb::ResultRow]) -> Vec<&pb::ResultRow> {
    let mut v: Vec<&pb::ResultRow> = rows.iter().filter(|r| r.result.is_some()).collect();
    v.sort_by(|a, b| {
        metric_order(&metric_name(a.metric))
            .cmp(&metric_order(&metric_name(b.metric)))
            .then(a.rate.total_cmp(&b.rate))
            .then(a.seed.cmp(&b.seed))
            .then(a.level.cmp(&b.level))
    });
    v
}

fn to_i64(x: u64) -> V {
    V::I64(i64::try_from(x).unwrap_or(i64::MAX))
}

pub fn level_records(sweep_id: i64, rows: &[pb::ResultRow]) -> Vec<Record> {
    sorted(rows)
        .into_iter()
        .map(|r| {
            let res = r.result.as_ref().expect("filtered");
            vec![
                V::I64(sweep_id),
                V::Str(metric_name(r.metric)),
                V::F64(r.rate),
                to_i64(r.seed),
                V::I64(r.level.into()),
                V::I64(r.job_id),
                V::F64(res.sparsity),
                V::F64(100.0 * (1.0 - res.sparsity)),
                V::F64(res.test_accuracy),
                V::F64(res.test_loss),
                V::F64(res.train_loss),
                V::F64(res.epochs),
                to_i64(res.iterations),
                V::F64(res.wall_seconds),
            ]
        })
        .collect()
}

pub fn layer_records(sweep_id: i64, rows: &[pb::ResultRow]) -> Vec<Record> {
    let mut out = Vec::new();
    for r in sorted(rows) {
        for (ordinal, l) in r.result.as_ref().expect("filtered").layers.iter().enumerate() {
            out.push(vec![
                V::I64(sweep_id),
                V::Str(metric_name(r.metric)),
                V::F64(r.rate),
                to_i64(r.seed),
                V::I64(r.level.into()),
                V::I64(r.job_id),
                V::Str(l.layer.clone()),
                V::I64(ordinal as i64),
                to_i64(l.kept),
                to_i64(l.total),
                V::F64(if l.total == 0 { 0.0 } else { l.kept as f64 / l.total as f64 }),
                V::Bool(l.collapsed),
                V::F64(l.weight_norm),
            ]);
        }
    }
    out
}

pub fn mask_record(sweep_id: i64, label: &JobLabel, m: pb::LayerMask) -> Record {
    vec![
        V::I64(sweep_id),
        V::Str(label.metric.clone()),
        V::F64(label.rate),
        to_i64(label.seed),
        V::I64(label.level.into()),
        V::I64(m.job_id),
        V::Str(m.layer),
        V::I64(m.ordinal.into()),
        to_i64(m.kept),
        to_i64(m.total),
        V::Bytes(m.mask_bits),
    ]
}

/// `name.parquet` → `.name.parquet.partial` in the same folder (same file system: the rename is
/// atomic).
fn partial_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "export".into());
    path.with_file_name(format!(".{name}.partial"))
}

/// Options of one export, as the command line gives them.
pub struct ExportArgs {
    pub sweep_id: i64,
    pub format: Option<ExportFormat>,
    pub what: What,
    pub output: Option<PathBuf>,
    /// Masks only: these levels (empty = all).
    pub levels: Vec<u32>,
}

/// The format to write: `--format`, else the output file's extension, else CSV.
pub fn resolve_format(args: &ExportArgs) -> Result<ExportFormat> {
    match (args.format, args.output.as_deref()) {
        (Some(f), _) => Ok(f),
        (None, Some(p)) => match ExportFormat::from_path(p) {
            Some(f) => Ok(f),
            None => anyhow::bail!(
                "cannot tell the format from the file name {}: pass --format csv, parquet or jsonl (or name the file .csv, .parquet or .jsonl)",
                p.display()
            ),
        },
        (None, None) => Ok(ExportFormat::Csv),
    }
}

/// The records of an export: computed from GetResults, or streamed from the coordinator.
enum Source {
    Records(Vec<Record>),
    Masks { stream: Box<tonic::Streaming<pb::LayerMask>>, labels: std::collections::HashMap<i64, JobLabel> },
}

/// Runs an export into `-o PATH`, or into `out` (stdout); returns the number of rows written.
pub async fn run(coord: &Coordinator, args: &ExportArgs, stdout_is_terminal: bool, out: &mut dyn Write) -> Result<u64> {
    let format = resolve_format(args)?;
    if args.output.is_none() && format.is_binary() && stdout_is_terminal {
        anyhow::bail!("Parquet is binary and stdout is a terminal: pass -o FILE.parquet (or redirect stdout to a file)");
    }
    if !args.levels.is_empty() && args.what != What::Masks {
        anyhow::bail!("--levels selects the levels of a masks export: use it with --what masks (levels and layers exports are small: filter them after reading)");
    }
    let id = args.sweep_id;
    let mut c = coord.sweeps.clone();
    let rows = c
        .get_results(pb::GetResultsRequest { sweep_id: id })
        .await
        .map_err(|s| coord.explain(s, &format!("the results of sweep {id}")))?
        .into_inner()
        .rows;
    // Tickets only (controls are in `lthctl results` and the SQL views).
    let rows = crate::results::tickets(&rows);
    let (schema, source) = match args.what {
        What::Levels => (levels_schema(), Source::Records(level_records(id, &rows))),
        What::Layers => (layers_schema(), Source::Records(layer_records(id, &rows))),
        // Opened before any file is created: a coordinator without StreamMasks fails here.
        What::Masks => (masks_schema(), Source::Masks { stream: Box::new(crate::masks::open(coord, id, &args.levels).await?), labels: job_labels(&rows) }),
    };
    match &args.output {
        Some(path) => {
            let partial = partial_path(path);
            let file = std::fs::File::create(&partial)
                .with_context(|| format!("cannot create {}: check that the folder exists and is writable", partial.display()))?;
            let mut w = std::io::BufWriter::new(file);
            let result = match sink::open_send(format, schema, &mut w) {
                Ok(sink) => feed(coord, id, source, sink).await,
                Err(e) => Err(e),
            };
            let result = result.and_then(|n| {
                w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
                Ok(n)
            });
            match result {
                Ok(n) => {
                    std::fs::rename(&partial, path).with_context(|| format!("moving the finished export to {}", path.display()))?;
                    Ok(n)
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&partial);
                    Err(e)
                }
            }
        }
        None => feed(coord, id, source, sink::open_plain(format, schema, out)?).await,
    }
}

/// Writes every record of `source` into `sink` and finishes it.
async fn feed(coord: &Coordinator, id: i64, source: Source, mut sink: Box<dyn Sink + '_>) -> Result<u64> {
    match source {
        Source::Records(records) => {
            for r in records {
                sink.write(r)?;
            }
        }
        Source::Masks { mut stream, labels } => {
            let mut dense_seen = std::collections::HashSet::new();
            while let Some(m) = stream.message().await.map_err(|s| coord.explain(s, &format!("the masks of sweep {id}")))? {
                // A job that finished after GetResults answered is not in this export's snapshot.
                let Some(label) = labels.get(&m.job_id) else { continue };
                // The coordinator sends a dense job's masks once per job; guard anyway.
                if label.level == 0 && !dense_seen.insert((m.job_id, m.layer.clone())) {
                    continue;
                }
                sink.write(mask_record(id, label, m))?;
            }
        }
    }
    sink.finish()
}
