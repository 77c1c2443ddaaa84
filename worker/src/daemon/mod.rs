//! The worker daemon: the process that turns a machine's GPUs (or CPU) into job slots for the
//! coordinator.
//!
//! Why it is shaped this way (DESIGN.md): workers talk only to the coordinator, never to the
//! database; every job runs in a child process (`lth-worker exec-job`) in its own process group, so
//! a CUDA out-of-memory or a libtorch abort kills one job and not the daemon, and aborting a job
//! (cancel, pause, lost lease) is a signal to that group rather than a flag the training loop must
//! remember to check.
//!
//! Modules:
//! - [`host`]: what this machine has (GPUs via nvidia-smi, CPUs, libtorch/CUDA versions) and the
//!   slots made from it.
//! - [`rpc`]: the gRPC connection, retry/backoff and the classification of errors (transient,
//!   lease lost, permanent).
//! - [`artifacts`]: chunked, sha256-checked uploads and downloads, and the local content-addressed
//!   cache of input artifacts.
//! - [`convert`]: wire types (proto) to the engine's types (results go back through
//!   `lth_sweep::result`'s conversion).
//! - [`jobfile`] / [`events`]: the two files of the daemon ↔ child contract: `job.json` (or a
//!   bundle's `bundle.json`) in, JSON lines out (tagged with the member for a bundle).
//! - [`child`]: spawning and signalling a job's process group.
//! - [`job`]: one claimed job from download to CompleteJob/FailJob.
//! - [`bundle`]: a ticket bundle's members (one claim, one slot) sharing one `exec-job` process,
//!   each still a job of its own.
//! - [`failure`]: whether a failure is the job's or this machine's (node-local).
//! - [`supervisor`]: registration, the claim loop, heartbeats and shutdown.
//! - [`exec_job`]: the child side (`lth-worker exec-job`).

pub mod artifacts;
pub mod bundle;
pub mod child;
pub mod convert;
pub mod events;
pub mod exec_job;
pub mod failure;
pub mod host;
pub mod job;
pub mod jobfile;
pub mod metrics;
pub mod rpc;
pub mod supervisor;

use std::path::PathBuf;

/// `lth-worker daemon`: serve a coordinator with this machine's job slots.
#[derive(clap::Args, Debug, Clone)]
pub struct DaemonArgs {
    /// The coordinator's gRPC address (https:// for TLS: LTH_TLS_CA names its CA, and
    /// LTH_TLS_CLIENT_CERT / LTH_TLS_CLIENT_KEY this worker's certificate for mutual TLS).
    #[arg(long, env = "LTH_COORDINATOR", default_value = "http://127.0.0.1:50051")]
    pub coordinator: String,
    /// File holding the worker's token (role worker). Without it the token comes from LTH_TOKEN.
    #[arg(long, env = "LTH_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Which GPUs to use: `all` (every GPU nvidia-smi lists), `none` (CPU only), or indices `0,1`.
    #[arg(long, env = "LTH_GPUS", default_value = "all")]
    pub gpus: String,
    /// Concurrent jobs per GPU. Small models are launch-bound: two ResNet-20 trainings on one H200
    /// ran at 2× the throughput of one (DESIGN.md).
    #[arg(long, env = "LTH_SLOTS_PER_GPU", default_value_t = 1)]
    pub slots_per_gpu: u32,
    /// CPU job slots. Default: 1 when no GPU slot is used, else 0.
    #[arg(long, env = "LTH_CPU_SLOTS")]
    pub cpu_slots: Option<u32>,
    /// Where input artifacts are cached (by sha256) and jobs get their working directories.
    /// Default: $XDG_CACHE_HOME/lth-worker or ~/.cache/lth-worker.
    #[arg(long, env = "LTH_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Size limit of the artifact cache in GiB (0: no limit). Beyond it the least recently used
    /// entries are removed after each download; inputs of running jobs are never removed.
    #[arg(long, env = "LTH_CACHE_MAX_GIB", default_value_t = 50.0)]
    pub cache_max_gib: f64,
    /// Folder holding libtorch_cuda.so (a torch install's `torch/lib`), dlopened by each job on a
    /// GPU node. Default: found through `python3 -c 'import torch'`.
    #[arg(long, env = "LTH_TORCH_LIB_DIR")]
    pub torch_lib_dir: Option<PathBuf>,
    /// Stable name of this worker. Default: `<host>-cpu` or `<host>-gpu<indices>`. One daemon per
    /// name: a daemon started under a name in use takes it over (the jobs leased to it are
    /// re-queued) and the other one stops with an error.
    #[arg(long, env = "LTH_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Torch intra-op threads per job: set from lth-worker's global `--threads`, the one thread
    /// flag. None: the CPU count divided by the job slots.
    #[arg(skip)]
    pub job_threads: Option<i32>,
    /// How often to ask for work while slots are free and the queue was empty.
    #[arg(long, env = "LTH_POLL_SECONDS", default_value_t = 1.0)]
    pub poll_seconds: f64,
    /// Progress reports per running job are sent at most this often.
    #[arg(long, env = "LTH_PROGRESS_SECONDS", default_value_t = 2.0)]
    pub progress_seconds: f64,
    /// After SIGTERM to an aborted job's process group, wait this long before SIGKILL.
    #[arg(long, env = "LTH_KILL_GRACE_SECONDS", default_value_t = 3.0)]
    pub kill_grace_seconds: f64,
    /// On daemon shutdown, how long a job may take to finish or checkpoint after SIGTERM.
    #[arg(long, env = "LTH_SHUTDOWN_GRACE_SECONDS", default_value_t = 60.0)]
    pub shutdown_grace_seconds: f64,
    /// Keep the working directory of every job. By default every attempt's is removed when it
    /// ends, failed ones too (so a full disk recovers); a failed job's log tail is in its error.
    #[arg(long, env = "LTH_KEEP_WORKDIRS")]
    pub keep_workdirs: bool,
    /// Stop claiming after this many different jobs in a row failed for reasons of this machine
    /// (a dataset path missing here, a full disk, no usable CUDA device, out of memory), and
    /// report the worker unhealthy (`lthctl workers`, the dashboard) until it is restarted.
    /// Running jobs go on. 0: never stop.
    #[arg(long, env = "LTH_MAX_NODE_FAILURES", default_value_t = 3)]
    pub max_node_failures: u32,
    /// Serve Prometheus metrics (jobs per slot, images/s, step time, job durations, cache, GPU
    /// utilisation and memory through NVML) on this address, e.g. 127.0.0.1:9102, or `off`. No
    /// token: it shows this machine's load only.
    #[arg(long, env = "LTH_METRICS_LISTEN", default_value = "off", value_parser = metrics::parse_listen)]
    pub metrics_listen: metrics::Listen,
    /// Log format on stderr.
    #[arg(long, env = "LTH_LOG_FORMAT", default_value = "pretty", value_parser = ["pretty", "json"])]
    pub log_format: String,
}

/// `lth-worker exec-job`: run one job described by a job.json (started by the daemon).
#[derive(clap::Args, Debug, Clone)]
pub struct ExecJobArgs {
    /// The job file the daemon wrote.
    #[arg(long)]
    pub job: PathBuf,
}

/// Entry point of `lth-worker daemon`.
pub fn run_daemon(args: DaemonArgs) -> anyhow::Result<()> {
    init_logging(&args.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("lth-daemon")
        .build()?;
    runtime.block_on(supervisor::run(args))
}

/// Entry point of `lth-worker exec-job`; returns the process exit code.
pub fn run_exec_job(args: ExecJobArgs) -> i32 {
    exec_job::run(&args.job)
}

fn init_logging(format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("LTH_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info,h2=warn,tower=warn,hyper=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = if format == "json" { builder.json().try_init() } else { builder.try_init() };
    // A second init (tests calling run_daemon twice in one process) keeps the first subscriber.
    let _ = result;
}
