//! lthctl, the command-line client of an lth coordinator, as a library.
//!
//! The binary (`src/main.rs`) only parses arguments and prints errors; everything it does lives
//! here so that it can be tested in-process.
//!
//! # Layout
//! - `cli`: the command line (clap); every argument has help text.
//! - `commands`: what each subcommand does, writing to the given output.
//! - `client`: connecting to the coordinator; gRPC failures as advice.
//! - `sweep_file`, `convert`: reading and checking sweep files; names of wire values.
//! - `results`: the accuracy_vs_sparsity rows GetResults sends (mean ± std over seeds), their
//!   table/CSV/JSON rendering, per-layer aggregates and the dead-class warning.
//! - `estimate`: images to train and CPU-hours for `submit --dry-run` (bench figures).
//! - `export`: `lthctl export`: per-seed levels, per-layer stats and masks as CSV, JSON lines
//!   or Parquet (`export::table` the typed columns, `export::sink` the three writers).
//! - `masks`: the `StreamMasks` client, and ticket overlap computed from masks.
//! - `plot`: the report's figures (accuracy, per-layer heatmap, overlap) as SVG, and PNG via
//!   resvg; `report` fetches what they need.
//! - `watch`: live progress (bars on a terminal, lines in logs).
//! - `output`: stdout that notices a closed pipe (`lthctl ... | head` exits quietly).
//! - `uploads`: your own model and datasets uploaded through the coordinator (content-addressed).

pub mod cli;
pub mod client;
pub mod commands;
pub mod convert;
pub mod estimate;
pub mod export;
pub mod masks;
pub mod output;
pub mod plot;
pub mod report;
pub mod results;
pub mod sweep_file;
pub mod uploads;
pub mod watch;
