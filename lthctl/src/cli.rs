//! The command line (clap), each flag with an environment variable where a person would set it
//! once per shell. Every argument carries help text (`tests/cli_help.rs` walks the tree).

use crate::export::sink::ExportFormat;
use crate::export::What;
use crate::results::Format;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "lthctl",
    version,
    about = "Submit, watch and analyse Lottery-Ticket pruning sweeps run by an lth coordinator",
    after_help = concat!(
        "Start with `lthctl submit examples/digits-lenet.toml --dry-run --offline` to see what a sweep expands to.\n\n",
        lth_proto::client_env_help!()
    )
)]
pub struct Cli {
    /// The coordinator's gRPC address.
    #[arg(long, global = true, env = "LTH_COORDINATOR", default_value = "http://127.0.0.1:50051")]
    pub coordinator: String,
    /// File holding this client's token (first line). Without it the token comes from LTH_TOKEN.
    /// https:// coordinators: LTH_TLS_CA names the CA file (default: the system's roots).
    #[arg(long, global = true, env = "LTH_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// Image formats of `lthctl report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImageFormat {
    /// Vector graphics (for papers and browsers).
    Svg,
    /// Raster images at twice the SVG's size (for slides, chat and issue trackers).
    Png,
    /// Both, side by side.
    Both,
}

#[derive(Debug, Subcommand)]
pub enum DatasetCommand {
    /// Upload an ImageFolder directory (train/<class>/…, val/<class>/…; packed into a
    /// deterministic tar, so the same tree gives the same digest) or a .safetensors file, and print
    /// the `[dataset]` lines that name it in a sweep file. Nothing is sent when the coordinator
    /// already holds the same content.
    Upload {
        /// The ImageFolder directory or the .safetensors file.
        path: PathBuf,
        /// A name for people (`lthctl dataset ls`) [default: the folder's or file's name].
        #[arg(long)]
        name: Option<String>,
    },
    /// List the models and datasets uploaded to the coordinator, newest first.
    Ls,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a sweep file and submit it (or show its grid with --dry-run).
    Submit {
        /// The sweep file (TOML; see examples/).
        file: PathBuf,
        /// Show the grid (metrics × rates × seeds × levels) and job counts; create nothing.
        #[arg(long)]
        dry_run: bool,
        /// With --dry-run: compute the grid here, without asking the coordinator.
        #[arg(long, requires = "dry_run")]
        offline: bool,
        /// Idempotency token: submitting again with the same token returns the first sweep.
        /// Default: the sha256 of the file's content.
        #[arg(long, env = "LTH_SUBMIT_TOKEN")]
        token: Option<String>,
        /// Don't upload the sweep's TorchScript model through the coordinator: every worker reads
        /// it at its (absolute) path instead, so they must all see the file there.
        #[arg(long)]
        no_upload: bool,
    },
    /// Your own datasets, uploaded through the coordinator for workers without a shared file system.
    #[command(subcommand)]
    Dataset(DatasetCommand),
    /// List sweeps, newest first.
    Ls {
        /// Show at most this many sweeps.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Job counts per state, progress per metric and the running jobs of a sweep.
    Status {
        /// The sweep's id (`lthctl ls` lists them).
        id: i64,
    },
    /// Follow a sweep's running jobs until it finishes: progress bars on a terminal, one line per
    /// event otherwise (nohup, CI, Slurm logs).
    Watch {
        /// The sweep's id (`lthctl ls` lists them).
        id: i64,
        /// Print one timestamped line per event instead of progress bars (the default when stderr
        /// is not a terminal). A running job's progress is printed every 10%.
        #[arg(long)]
        lines: bool,
    },
    /// Cancel a sweep: running jobs are stopped and nothing more is claimed.
    Cancel {
        /// The sweep's id (`lthctl ls` lists them).
        id: i64,
    },
    /// Pause a sweep: running jobs are stopped (and resume later from their checkpoints).
    Pause {
        /// The sweep's id (`lthctl ls` lists them).
        id: i64,
    },
    /// Resume a paused sweep.
    Resume {
        /// The sweep's id (`lthctl ls` lists them).
        id: i64,
    },
    /// Run a sweep's failed jobs again, without resubmitting: they and the failed jobs after
    /// them get fresh attempts, and the sweep reopens. Finished results stay.
    Retry {
        /// The sweep's id (`lthctl ls` lists them).
        id: i64,
        /// Only this trial's failed jobs (and its dense job); `lthctl status ID` names the trials.
        #[arg(long)]
        trial: Option<i64>,
    },
    /// Accuracy vs sparsity per metric: mean ± std over seeds for every (metric, rate, level).
    Results {
        /// The sweep's id (`lthctl ls` lists them).
        id: i64,
        /// How to print the aggregates (per-seed rows: `lthctl export`).
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Write a sweep's per-seed results, per-layer statistics or masks as CSV, Parquet or JSON
    /// lines (docs/export.md: columns, and pandas/polars recipes).
    Export {
        /// The sweep's id (`lthctl ls` lists them).
        id: i64,
        /// File format [default: from the -o file's extension, else csv].
        #[arg(long, value_enum)]
        format: Option<ExportFormat>,
        /// Which table to write.
        #[arg(long, value_enum, default_value_t = What::Levels)]
        what: What,
        /// Write to this file (created complete or not at all) instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// With --what masks: only these levels, e.g. `--levels 4` or `--levels 1,2` [default: all].
        #[arg(long, value_delimiter = ',')]
        levels: Vec<u32>,
    },
    /// The workers that are alive (heartbeating), with their GPUs and running jobs.
    Workers {
        /// Also the lost workers (not seen for three heartbeat intervals).
        #[arg(long)]
        all: bool,
    },
    /// Write the report's plots: accuracy vs weights remaining (mean ± std over seeds), per-layer
    /// kept fractions, and ticket overlap between metrics.
    Report {
        /// The sweep's id (`lthctl ls` lists them).
        id: i64,
        /// Folder for the plots [default: lth-report-ID].
        #[arg(long, env = "LTH_REPORT_DIR")]
        out: Option<PathBuf>,
        /// Image format of the plots.
        #[arg(long, value_enum, default_value_t = ImageFormat::Svg, env = "LTH_REPORT_FORMAT")]
        format: ImageFormat,
        /// Level of the ticket-overlap plot [default: the deepest level every metric reached].
        #[arg(long)]
        overlap_level: Option<u32>,
    },
}
