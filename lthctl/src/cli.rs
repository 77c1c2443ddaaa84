//! The command line (clap): the agreed flags of `/work/notes/cli_flags.md`, each with an
//! environment variable where a person would set it once per shell.

use crate::results::Format;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "lthctl",
    version,
    about = "Submit, watch and analyse Lottery-Ticket pruning sweeps run by an lth coordinator",
    after_help = "Start with `lthctl submit examples/digits-lenet.toml --dry-run --offline` to see what a sweep expands to."
)]
pub struct Cli {
    /// The coordinator's gRPC address.
    #[arg(long, global = true, env = "LTH_COORDINATOR", default_value = "http://127.0.0.1:50051")]
    pub coordinator: String,
    #[command(subcommand)]
    pub command: Command,
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
    },
    /// List sweeps, newest first.
    Ls {
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Job counts per state, progress per metric and the running jobs of a sweep.
    Status { id: i64 },
    /// Live progress bars for a sweep's running jobs; returns when the sweep finishes.
    Watch { id: i64 },
    /// Cancel a sweep: running jobs are stopped and nothing more is claimed.
    Cancel { id: i64 },
    /// Pause a sweep: running jobs are stopped (and resume later from their checkpoints).
    Pause { id: i64 },
    /// Resume a paused sweep.
    Resume { id: i64 },
    /// Accuracy vs sparsity per metric: mean ± std over seeds for every (metric, rate, level).
    Results {
        id: i64,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// The workers the coordinator knows, with their GPUs and running jobs.
    Workers,
    /// Write SVG plots: accuracy vs weights remaining (with seed error bars) and per-layer kept fractions.
    Report {
        id: i64,
        /// Folder for the SVG files [default: lth-report-ID].
        #[arg(long, env = "LTH_REPORT_DIR")]
        out: Option<PathBuf>,
    },
}
