//! `lth-worker`: runs lottery-ticket chains locally (`run-local`), benchmarks the engine
//! (`bench`), and (added by the daemon) pulls jobs from a coordinator.

use anyhow::{bail, Result};
use clap::{Parser, Subcommand, ValueEnum};
use lth_sweep::{ImportanceMetric, ModelKind, Precision, Rate};
use lth_worker::engine;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "lth-worker", version, about = "lth worker: lottery-ticket training engine and job daemon")]
struct Cli {
    /// Torch intra-op threads of each training process: `run-local` and `bench` train in this
    /// process, the daemon gives each job (a child process) this many. Default: all cores for
    /// run-local and bench; for the daemon, the CPU count divided by its job slots. A fixed count
    /// keeps CPU runs bit-reproducible. (`--job-threads`, the daemon's old name for it, still works.)
    #[arg(long, global = true, env = "LTH_THREADS", alias = "job-threads")]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum DeviceArg {
    Cpu,
    Cuda,
}

#[derive(Subcommand)]
enum Command {
    /// Run one chain (level 0..N) of a sweep file for one (metric, rate, seed), no coordinator.
    RunLocal {
        /// The sweep file (TOML, the same schema `lthctl submit` takes).
        sweep: PathBuf,
        /// Importance metric (default: the sweep's first).
        #[arg(long, value_parser = ImportanceMetric::parse)]
        metric: Option<ImportanceMetric>,
        /// Pruning rate per level, or a per-level schedule as a comma list such as 0.2,0.2,0.5
        /// (default: the sweep's first `rates` entry).
        #[arg(long, value_parser = parse_rate)]
        rate: Option<Rate>,
        /// Seed (default: the sweep's first).
        #[arg(long)]
        seed: Option<u64>,
        /// Pruning levels after level 0 (default: the sweep's `levels` or `target_sparsity`).
        #[arg(long)]
        levels: Option<u32>,
        /// Output folder (level-N subfolders, chain.json).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "cpu", env = "LTH_DEVICE")]
        device: DeviceArg,
        /// Folder holding libtorch_cuda.so (default: the one of python3's torch).
        #[arg(long, env = "LTH_TORCH_LIB_DIR")]
        torch_lib_dir: Option<PathBuf>,
    },
    /// Training throughput (step with mask multiply) and end-to-end epoch time, per configuration.
    Bench {
        /// Comma-separated models.
        #[arg(long, value_delimiter = ',', default_value = "resnet18")]
        models: Vec<String>,
        #[arg(long, value_delimiter = ',', default_value = "32")]
        batches: Vec<u32>,
        /// Comma-separated: fp32, bf16, fp16 (reduced precision applies on CUDA only).
        #[arg(long, value_delimiter = ',', default_value = "fp32")]
        precisions: Vec<String>,
        #[arg(long, value_enum, default_value = "cpu")]
        device: DeviceArg,
        #[arg(long, default_value_t = 3)]
        warmup: u32,
        #[arg(long, default_value_t = 10)]
        steps: u32,
        /// Training images in the end-to-end epoch (0: skip it).
        #[arg(long, default_value_t = 0)]
        epoch_images: u32,
        /// Test images evaluated at the end of that epoch.
        #[arg(long, default_value_t = 0)]
        test_images: u32,
        #[arg(long, env = "LTH_TORCH_LIB_DIR")]
        torch_lib_dir: Option<PathBuf>,
        /// Print one JSON object per configuration instead of a table.
        #[arg(long)]
        json: bool,
        /// Optimizer step: fused (libtorch's _fused_sgd_ and _foreach_mul_ through the shim, the
        /// engine's default) or per-tensor (the reference tensor ops).
        #[arg(long, default_value = "fused")]
        step: String,
        /// Also train a bundle of this many members (one grouped network, engine::bundle) in the
        /// same run and print its step time and its speed-up over as many solo runs.
        #[arg(long, default_value_t = 0)]
        bundle: u32,
        /// Comma-separated: on, off. CUDA-graph replay of the step (Recipe.cuda_graph; CUDA only,
        /// falls back to eager steps with a log line where the capture fails).
        #[arg(long, value_delimiter = ',', default_value = "on")]
        graph: Vec<String>,
    },
    /// Serve a coordinator with this machine's job slots (GPUs or CPU).
    #[command(after_help = lth_proto::client_env_help!())]
    Daemon(lth_worker::daemon::DaemonArgs),
    /// Run one job from its job.json (the daemon starts this in a child process).
    ExecJob(lth_worker::daemon::ExecJobArgs),
}

fn device_for(arg: DeviceArg, torch_lib_dir: Option<&std::path::Path>) -> Result<tch::Device> {
    match arg {
        DeviceArg::Cpu => Ok(tch::Device::Cpu),
        DeviceArg::Cuda => {
            let d = engine::init_device(torch_lib_dir, Some(0))?;
            if !d.is_cuda() {
                bail!("--device cuda: no CUDA device usable (is libtorch_cuda.so in --torch-lib-dir and a GPU visible?); use --device cpu");
            }
            Ok(d)
        }
    }
}

fn parse_model(s: &str) -> Result<ModelKind> {
    ModelKind::parse(s).map_err(|e| anyhow::anyhow!(e))
}

/// `0.2` (every level) or `0.2,0.2,0.5` (a per-level schedule).
fn parse_rate(s: &str) -> Result<Rate, String> {
    let v: Vec<f64> = s
        .split(',')
        .map(|x| x.trim().parse::<f64>().map_err(|_| format!("{x:?} is not a number: give a rate such as 0.2, or a schedule such as 0.2,0.2,0.5")))
        .collect::<Result<_, _>>()?;
    Ok(if v.len() == 1 { Rate::Constant(v[0]) } else { Rate::Schedule(v) })
}

fn parse_precision(s: &str) -> Result<Precision> {
    match s.trim() {
        "fp32" => Ok(Precision::Fp32),
        "bf16" => Ok(Precision::Bf16),
        "fp16" => Ok(Precision::Fp16),
        _ => bail!("unknown precision {s:?}; use fp32, bf16 or fp16"),
    }
}

fn main() -> Result<()> {
    // Before anything allocates much: job children (exec-job), run-local and bench alike.
    engine::tune_allocator();
    let cli = Cli::parse();
    match cli.command {
        Command::Daemon(mut args) => {
            // One flag: `--threads N` is each job's thread count.
            args.job_threads = cli.threads.map(|t| t as i32);
            lth_worker::daemon::run_daemon(args)?
        }
        Command::ExecJob(args) => std::process::exit(lth_worker::daemon::run_exec_job(args)),
        Command::RunLocal { sweep, metric, rate, seed, levels, out, device, torch_lib_dir } => {
            let device = device_for(device, torch_lib_dir.as_deref())?;
            engine::configure_threads(cli.threads);
            let args = lth_worker::local::LocalChain { sweep_file: sweep, metric, rate, seed, levels, out };
            lth_worker::local::run(&args, device)?;
        }
        Command::Bench { models, batches, precisions, device, warmup, steps, epoch_images, test_images, torch_lib_dir, json, step, bundle, graph } => {
            let graphs: Vec<bool> = graph
                .iter()
                .map(|g| match g.as_str() {
                    "on" | "true" => Ok(true),
                    "off" | "false" => Ok(false),
                    other => anyhow::bail!("--graph takes on or off, not {other:?}"),
                })
                .collect::<Result<_>>()?;
            let step_impl = engine::train::StepImpl::parse(&step)?;
            let device = device_for(device, torch_lib_dir.as_deref())?;
            engine::configure_threads(cli.threads);
            if !json {
                println!(
                    "{:<18} {:>5} {:>5} {:>8} {:>3} {:>5} {:>10} {:>9} {:>10} {:>10} {:>8}",
                    "model", "batch", "prec", "device", "CL", "graph", "img/s", "ms/step", "epoch s", "steps s", "ratio"
                );
            }
            for m in &models {
                let model = parse_model(m)?;
                for &batch in &batches {
                    for (p, &graph) in precisions.iter().flat_map(|p| graphs.iter().map(move |g| (p, g))) {
                        let precision = parse_precision(p)?;
                        let cfg = engine::bench::BenchConfig { model, batch, precision, device, warmup_steps: warmup, steps, epoch_images, test_images, step_impl, bundle, graph };
                        let r = engine::bench::run(&cfg)?;
                        if json {
                            println!("{}", serde_json::to_string(&r)?);
                        } else {
                            let f = |v: Option<f64>, d: usize| v.map(|x| format!("{x:.d$}")).unwrap_or_else(|| "-".into());
                            println!(
                                "{:<18} {:>5} {:>5} {:>8} {:>3} {:>5} {:>10.1} {:>9.2} {:>10} {:>10} {:>8}",
                                r.model,
                                r.batch,
                                r.precision,
                                r.device,
                                if r.channels_last { "y" } else { "n" },
                                if r.graph { "y" } else { "n" },
                                r.step_images_per_second,
                                r.step_ms,
                                f(r.epoch_seconds, 2),
                                f(r.epoch_step_seconds, 2),
                                f(r.epoch_overhead, 3)
                            );
                            if let Some(b) = &r.bundle {
                                println!(
                                    "{:<18} {:>5} bundle of {} ({}{}): {:.1} img/s summed, {:.2} ms/step, {:.2}x {} solo steps",
                                    "", "", b.members, b.step, if b.graph { ", graph" } else { "" }, b.images_per_second, b.step_ms, b.speedup, b.members
                                );
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_thread_flag_before_or_after_the_subcommand_and_under_its_old_name() {
        for args in [&["lth-worker", "--threads", "3", "daemon"][..], &["lth-worker", "daemon", "--threads", "3"], &["lth-worker", "daemon", "--job-threads", "3"]] {
            let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert_eq!(cli.threads, Some(3), "{args:?}");
            assert!(matches!(cli.command, Command::Daemon(_)));
        }
        let mut cmd = <Cli as clap::CommandFactory>::command();
        cmd.build(); // propagates the global flags into the subcommands
        let help = cmd.find_subcommand_mut("daemon").unwrap().render_long_help().to_string();
        assert_eq!(help.matches("--threads").count(), 1, "{help}");
        assert!(!help.contains("--job-threads <"), "the old name is a hidden alias: {help}");
    }
}
