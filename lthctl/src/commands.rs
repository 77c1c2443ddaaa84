//! What each subcommand does. Output for people goes to the given writer (stdout in the binary),
//! so the tests can run commands in-process and read what a user would see.

use crate::cli::{Cli, Command, DatasetCommand};
use crate::client::{connect, explain_status, unreachable_message, Coordinator};
use crate::convert::{dataset_name, metric_name, spec_model_name, sweep_state_is_final, sweep_state_name, timestamp_text};
use crate::results::{points, render};
use crate::sweep_file::{describe_grid, grid, load_sweep_file};
use crate::watch::{Display, WatchView};
use anyhow::{Context, Result};
use indicatif::ProgressDrawTarget;
use lth_proto::v1 as pb;
use std::io::Write;
use std::time::{Duration, Instant};

pub async fn run(cli: Cli, out: &mut dyn Write) -> Result<()> {
    let url = cli.coordinator.clone();
    crate::client::set_token_file(cli.token_file.clone());
    match cli.command {
        Command::Submit { file, dry_run, offline, token, no_upload } => submit(&url, &file, dry_run, offline, token, no_upload, out).await,
        Command::Dataset(DatasetCommand::Upload { path, name }) => crate::uploads::dataset_upload(&connect(&url).await?, &path, name, out).await,
        Command::Dataset(DatasetCommand::Ls) => inputs_ls(&connect(&url).await?, out).await,
        Command::Ls { limit } => ls(&connect(&url).await?, limit, out).await,
        Command::Status { id } => status(&connect(&url).await?, id, out).await,
        Command::Watch { id, lines } => {
            use std::io::IsTerminal;
            let display = if lines || !std::io::stderr().is_terminal() { Display::Lines } else { Display::Bars(ProgressDrawTarget::stderr()) };
            watch(&url, id, display, out).await
        }
        Command::Cancel { id } => change_state(&connect(&url).await?, id, StateChange::Cancel, out).await,
        Command::Pause { id } => change_state(&connect(&url).await?, id, StateChange::Pause, out).await,
        Command::Resume { id } => change_state(&connect(&url).await?, id, StateChange::Resume, out).await,
        Command::Results { id, format } => {
            let resp = get_results(&connect(&url).await?, id).await?;
            out.write_all(render(&points(&resp), format)?.as_bytes())?;
            if let Some(w) = crate::results::dead_class_warning(&resp.rows) {
                // CSV and JSON stay machine-readable: the warning goes to stderr there.
                match format {
                    crate::results::Format::Table => write!(out, "\n{}", w.replace("sweep_id = ID", &format!("sweep_id = {id}")))?,
                    _ => eprint!("{}", w.replace("sweep_id = ID", &format!("sweep_id = {id}"))),
                }
            }
            if let Some(w) = crate::results::diverged_warning(&resp.rows) {
                match format {
                    crate::results::Format::Table => write!(out, "\n{w}")?,
                    _ => eprint!("{w}"),
                }
            }
            Ok(())
        }
        Command::Export { id, format, what, output, levels } => {
            use std::io::IsTerminal;
            let args = crate::export::ExportArgs { sweep_id: id, format, what, output, levels };
            let rows = crate::export::run(&connect(&url).await?, &args, std::io::stdout().is_terminal(), out).await?;
            if let Some(path) = &args.output {
                eprintln!("wrote {rows} rows to {}", path.display());
            }
            Ok(())
        }
        Command::Workers { all } => workers(&connect(&url).await?, all, out).await,
        Command::Retry { id, trial } => retry(&connect(&url).await?, id, trial, out).await,
        Command::Report { id, out: dir, format, overlap_level } => {
            crate::report::report(&connect(&url).await?, id, dir, format, overlap_level, out).await
        }
    }
}

async fn submit(
    url: &str,
    file: &std::path::Path,
    dry_run: bool,
    offline: bool,
    token: Option<String>,
    no_upload: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let mut loaded = load_sweep_file(file)?;
    let local = grid(&loaded.spec);
    if dry_run && offline {
        writeln!(out, "{}", describe_grid(&loaded.spec, &local))?;
        write!(out, "{}", crate::estimate::describe(&loaded.spec, local.dense_jobs, local.level_jobs + local.control_jobs, None))?;
        writeln!(out, "dry run (offline): nothing submitted; the coordinator also reuses jobs it has already run (drop --offline to see how many)")?;
        return Ok(());
    }
    let mut coord = connect(url).await.map_err(|e| {
        if dry_run {
            anyhow::anyhow!("{e}\n(`lthctl submit FILE --dry-run --offline` shows the grid without a coordinator)")
        } else {
            e
        }
    })?;
    // The model file travels through the coordinator (content-addressed: a digest it already holds
    // is not sent again), so workers need no shared file system. A dry run creates nothing and
    // sends the path form: the job hashes, hence the plan, are the same.
    if !dry_run && !no_upload {
        if let lth_sweep::ModelSpec::TorchScript(t) = &mut loaded.spec.model {
            if !t.uploaded {
                let path = std::path::PathBuf::from(&t.torchscript);
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model.pt".into());
                let info = crate::uploads::upload_file(&coord, &path, pb::InputKind::Torchscript, &name).await?;
                if info.created {
                    writeln!(out, "uploaded the model {} (sha256:{}, {} bytes)", path.display(), info.sha256, info.bytes)?;
                } else {
                    writeln!(out, "the coordinator already holds the model {} (sha256:{}): not sent again", path.display(), info.sha256)?;
                }
                t.torchscript = name;
                t.uploaded = true;
            }
        }
    }
    let token = token.unwrap_or_else(|| loaded.content_sha256.clone());
    let req = pb::SubmitSweepRequest { spec: Some(pb::SweepSpec::from(&loaded.spec)), client_token: token.clone(), dry_run };
    let resp = coord
        .sweeps
        .submit_sweep(req)
        .await
        .map_err(|s| coord.explain(s, &format!("the sweep in {}", file.display())))?
        .into_inner();
    if dry_run {
        writeln!(out, "{}", describe_grid(&loaded.spec, &local))?;
        writeln!(
            out,
            "coordinator: {} trials, {} jobs ({} dense), {} already done and reused, {} to run",
            resp.trials,
            resp.jobs,
            resp.dense_jobs,
            resp.jobs_reused,
            resp.jobs.saturating_sub(resp.jobs_reused)
        )?;
        if resp.jobs != local.jobs() || resp.trials != local.trials {
            writeln!(
                out,
                "note: the coordinator counts {} jobs / {} trials, lthctl counted {} / {}: lthctl and the coordinator may be different versions",
                resp.jobs,
                resp.trials,
                local.jobs(),
                local.trials
            )?;
        }
        let to_run = resp.jobs.saturating_sub(resp.jobs_reused);
        // Measured throughput; a coordinator that cannot say (older version) leaves the bench figures.
        let measured = match coord.sweeps.get_throughput(pb::GetThroughputRequest {}).await {
            Ok(r) => r.into_inner().rows,
            Err(s) => {
                writeln!(out, "note: no measured throughput from the coordinator ({:?}: {}); estimating from bench figures", s.code(), s.message())?;
                Vec::new()
            }
        };
        if resp.jobs_reused == 0 {
            write!(out, "{}", crate::estimate::describe(&loaded.spec, resp.dense_jobs, to_run.saturating_sub(resp.dense_jobs), Some(&measured)))?;
        } else {
            // Which kinds the reused jobs are is not reported: count every remaining job from the rewind point.
            write!(out, "{}", crate::estimate::describe(&loaded.spec, 0, to_run, Some(&measured)))?;
            writeln!(out, "  (the {} reused jobs are not counted; the {to_run} others are counted from the rewind point)", resp.jobs_reused)?;
        }
        writeln!(out, "dry run: nothing submitted")?;
        return Ok(());
    }
    if resp.created {
        writeln!(
            out,
            "submitted sweep {} ({:?}): {} trials, {} jobs ({} reused from earlier sweeps)",
            resp.sweep_id, loaded.spec.name, resp.trials, resp.jobs, resp.jobs_reused
        )?;
    } else {
        writeln!(
            out,
            "sweep {} already exists for this submission (token {}): nothing new was created; pass --token to submit the same file as a new sweep",
            resp.sweep_id,
            short(&token)
        )?;
    }
    writeln!(out, "follow it with: lthctl watch {}   (or lthctl status {})", resp.sweep_id, resp.sweep_id)?;
    Ok(())
}

async fn inputs_ls(coord: &Coordinator, out: &mut dyn Write) -> Result<()> {
    let mut c = coord.sweeps.clone();
    let inputs = c
        .list_inputs(pb::ListInputsRequest { sha256: Vec::new() })
        .await
        .map_err(|s| coord.explain(s, "listing uploads"))?
        .into_inner()
        .inputs;
    if inputs.is_empty() {
        writeln!(out, "no uploads yet: `lthctl dataset upload PATH` uploads a dataset; `lthctl submit` uploads a sweep's TorchScript model")?;
        return Ok(());
    }
    let mut t = plain_table(&["sha256", "kind", "name", "bytes", "owner", "uploaded (UTC)"]);
    for i in inputs {
        t.add_row(vec![
            format!("sha256:{}", i.sha256),
            crate::uploads::kind_text(i.kind).to_string(),
            i.name.clone(),
            i.bytes.to_string(),
            owner_text(&i.owner).to_string(),
            timestamp_text(i.created_at.as_ref()),
        ]);
    }
    write_table(out, t)
}

fn short(token: &str) -> &str {
    &token[..token.len().min(12)]
}

fn jobs_total(c: &pb::JobCounts) -> u64 {
    c.blocked + c.ready + c.running + c.succeeded + c.failed + c.cancelled
}

async fn ls(coord: &Coordinator, limit: u32, out: &mut dyn Write) -> Result<()> {
    let mut c = coord.sweeps.clone();
    let sweeps = c
        .list_sweeps(pb::ListSweepsRequest { limit })
        .await
        .map_err(|s| coord.explain(s, "listing sweeps"))?
        .into_inner()
        .sweeps;
    if sweeps.is_empty() {
        writeln!(out, "no sweeps yet: submit one with `lthctl submit examples/digits-lenet.toml`")?;
        return Ok(());
    }
    let mut t = plain_table(&["id", "name", "owner", "state", "model", "dataset", "jobs done", "failed", "created (UTC)"]);
    for s in sweeps {
        let c = s.jobs.unwrap_or_default();
        let spec = s.spec.clone().unwrap_or_default();
        t.add_row(vec![
            s.sweep_id.to_string(),
            s.name.clone(),
            owner_text(&s.owner).to_string(),
            sweep_state_name(s.state).to_string(),
            spec_model_name(&spec),
            dataset_name(spec.dataset.as_ref().map(|d| d.name).unwrap_or(0)),
            format!("{}/{}", c.succeeded, jobs_total(&c)),
            c.failed.to_string(),
            timestamp_text(s.created_at.as_ref()),
        ]);
    }
    write_table(out, t)
}

fn owner_text(owner: &str) -> &str {
    if owner.is_empty() {
        "-"
    } else {
        owner
    }
}

fn plain_table(header: &[&str]) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING).set_header(header.to_vec());
    t
}

fn write_table(out: &mut dyn Write, t: comfy_table::Table) -> Result<()> {
    for line in t.to_string().lines() {
        writeln!(out, "{}", line.strip_prefix(' ').unwrap_or(line).trim_end())?;
    }
    Ok(())
}

pub(crate) async fn get_sweep(coord: &Coordinator, id: i64) -> Result<pb::SweepSummary> {
    let mut c = coord.sweeps.clone();
    Ok(c.get_sweep(pb::GetSweepRequest { sweep_id: id }).await.map_err(|s| coord.explain(s, &format!("sweep {id}")))?.into_inner())
}

async fn status(coord: &Coordinator, id: i64, out: &mut dyn Write) -> Result<()> {
    let s = get_sweep(coord, id).await?;
    let spec = s.spec.clone().unwrap_or_default();
    let c = s.jobs.unwrap_or_default();
    writeln!(
        out,
        "sweep {} {:?}: {}  ({} on {})",
        s.sweep_id,
        s.name,
        sweep_state_name(s.state),
        spec_model_name(&spec),
        dataset_name(spec.dataset.as_ref().map(|d| d.name).unwrap_or(0))
    )?;
    writeln!(
        out,
        "owner {}   created {}   finished {}",
        owner_text(&s.owner),
        timestamp_text(s.created_at.as_ref()),
        timestamp_text(s.finished_at.as_ref())
    )?;
    writeln!(
        out,
        "{} trials, {} jobs: {} succeeded, {} running, {} ready, {} blocked, {} failed, {} cancelled",
        s.trials,
        jobs_total(&c),
        c.succeeded,
        c.running,
        c.ready,
        c.blocked,
        c.failed,
        c.cancelled
    )?;
    if s.tickets_with_dead_classes > 0 {
        writeln!(
            out,
            "warning: {} ticket(s) have dead output classes (every weight into the class pruned); `lthctl results {id}` lists them",
            s.tickets_with_dead_classes
        )?;
    }
    if s.diverged > 0 {
        writeln!(out, "diverged: {} result(s) whose training loss stopped being a number; `lthctl results {id}` lists them", s.diverged)?;
    }
    if !s.metrics.is_empty() {
        writeln!(out, "progress per metric:")?;
        let mut metrics: Vec<&pb::MetricProgress> = s.metrics.iter().collect();
        metrics.sort_by_key(|m| crate::results::metric_order(&metric_name(m.metric)));
        for m in metrics {
            let frac = if m.jobs_total == 0 { 0.0 } else { m.jobs_succeeded as f64 / m.jobs_total as f64 };
            let filled = (frac * 20.0).round() as usize;
            writeln!(
                out,
                "  {:<18} [{}{}] {:>4}/{:<4} {:>5.1}%",
                metric_name(m.metric),
                "#".repeat(filled),
                "-".repeat(20 - filled),
                m.jobs_succeeded,
                m.jobs_total,
                100.0 * frac
            )?;
        }
    }
    let jobs = list_jobs(coord, id).await?;
    let running: Vec<_> = jobs.iter().filter(|j| j.state == pb::JobState::Running as i32).collect();
    if !running.is_empty() {
        writeln!(out, "running jobs:")?;
        let mut t = plain_table(&["job", "metric", "rate", "seed", "level", "progress", "ETA", "attempt", "worker"]);
        for j in running {
            t.add_row(vec![
                j.job_id.to_string(),
                metric_name(j.metric),
                j.rate.to_string(),
                j.seed.to_string(),
                j.level.to_string(),
                format!("{:.0}%", 100.0 * j.progress),
                if j.eta_seconds > 0.0 { indicatif::HumanDuration(Duration::from_secs_f64(j.eta_seconds)).to_string() } else { "-".into() },
                j.attempt.to_string(),
                j.worker_id.clone(),
            ]);
        }
        write_table(out, t)?;
    }
    let failed: Vec<_> = jobs.iter().filter(|j| j.state == pb::JobState::Failed as i32).collect();
    for j in &failed {
        writeln!(
            out,
            "failed: job {}{} ({} rate {} seed {} level {}) after {} attempts: {}",
            j.job_id,
            if j.trial_id > 0 { format!(" of trial {}", j.trial_id) } else { String::new() },
            metric_name(j.metric),
            j.rate,
            j.seed,
            j.level,
            j.attempt,
            j.error
        )?;
    }
    if !failed.is_empty() {
        writeln!(out, "retry: lthctl retry {id}   (one trial: lthctl retry {id} --trial TRIAL)")?;
    }
    if sweep_state_is_final(s.state) && c.succeeded > 0 {
        writeln!(out, "results: lthctl results {id}   plots: lthctl report {id}")?;
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum StateChange {
    Cancel,
    Pause,
    Resume,
}

async fn change_state(coord: &Coordinator, id: i64, change: StateChange, out: &mut dyn Write) -> Result<()> {
    let mut c = coord.sweeps.clone();
    let r = pb::SweepRef { sweep_id: id };
    let (verb, result) = match change {
        StateChange::Cancel => ("cancel", c.cancel_sweep(r).await),
        StateChange::Pause => ("pause", c.pause_sweep(r).await),
        StateChange::Resume => ("resume", c.resume_sweep(r).await),
    };
    let s = result.map_err(|st| coord.explain(st, &format!("{verb} sweep {id}")))?.into_inner();
    let counts = s.jobs.unwrap_or_default();
    writeln!(
        out,
        "sweep {} {:?}: {} ({} succeeded, {} running, {} cancelled of {} jobs)",
        s.sweep_id,
        s.name,
        sweep_state_name(s.state),
        counts.succeeded,
        counts.running,
        counts.cancelled,
        jobs_total(&counts)
    )?;
    Ok(())
}

/// GetResults: per-seed rows and the accuracy_vs_sparsity view's rows.
pub(crate) async fn get_results(coord: &Coordinator, id: i64) -> Result<pb::GetResultsResponse> {
    let mut c = coord.sweeps.clone();
    Ok(c.get_results(pb::GetResultsRequest { sweep_id: id })
        .await
        .map_err(|s| coord.explain(s, &format!("the results of sweep {id}")))?
        .into_inner())
}

/// Every job of a sweep, following ListJobs' pages.
pub(crate) async fn list_jobs(coord: &Coordinator, id: i64) -> Result<Vec<pb::JobInfo>> {
    let mut client = coord.sweeps.clone();
    let mut jobs = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_jobs(pb::ListJobsRequest { sweep_id: id, page_token, ..Default::default() })
            .await
            .map_err(|st| coord.explain(st, &format!("the jobs of sweep {id}")))?
            .into_inner();
        jobs.extend(page.jobs);
        if page.next_page_token.is_empty() {
            return Ok(jobs);
        }
        page_token = page.next_page_token;
    }
}

/// Every worker, following ListWorkers' pages.
async fn list_workers(coord: &Coordinator, all: bool) -> Result<Vec<pb::WorkerInfo>> {
    let mut c = coord.sweeps.clone();
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = c
            .list_workers(pb::ListWorkersRequest { page_token, all, ..Default::default() })
            .await
            .map_err(|s| coord.explain(s, "listing workers"))?
            .into_inner();
        out.extend(page.workers);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = page.next_page_token;
    }
}

async fn retry(coord: &Coordinator, id: i64, trial: Option<i64>, out: &mut dyn Write) -> Result<()> {
    let mut c = coord.sweeps.clone();
    let r = c
        .retry_sweep(pb::RetrySweepRequest { sweep_id: id, trial_id: trial.unwrap_or(0) })
        .await
        .map_err(|st| coord.explain(st, &format!("retry sweep {id}")))?
        .into_inner();
    let s = r.sweep.unwrap_or_default();
    let scope = trial.map(|t| format!(" of trial {t}")).unwrap_or_default();
    if r.jobs_requeued == 0 {
        writeln!(out, "sweep {id}: no failed jobs{scope} to retry ({})", sweep_state_name(s.state))?;
    } else {
        writeln!(
            out,
            "sweep {id}: re-queued {} failed job(s){scope} with fresh attempts; the sweep is {}. Follow it with `lthctl watch {id}`",
            r.jobs_requeued,
            sweep_state_name(s.state)
        )?;
    }
    Ok(())
}

async fn workers(coord: &Coordinator, all: bool, out: &mut dyn Write) -> Result<()> {
    let ws = list_workers(coord, all).await?;
    if ws.is_empty() {
        if all || list_workers(coord, true).await?.is_empty() {
            writeln!(out, "no workers have registered: start one with `lth-worker daemon --coordinator {}`", coord.url)?;
        } else {
            writeln!(out, "no worker is alive (heartbeating); `lthctl workers --all` also lists the lost ones. Start one with `lth-worker daemon --coordinator {}`", coord.url)?;
        }
        return Ok(());
    }
    let mut t = plain_table(&["worker", "host", "alive", "health", "slots", "running", "GPUs", "CPUs", "libtorch", "CUDA", "last seen (UTC)"]);
    for w in ws {
        let gpus = if w.gpus.is_empty() {
            "-".to_string()
        } else {
            w.gpus.iter().map(|g| format!("{}:{} ({:.0} GiB)", g.index, g.name, g.memory_bytes as f64 / (1u64 << 30) as f64)).collect::<Vec<_>>().join(", ")
        };
        t.add_row(vec![
            w.worker_id,
            w.host,
            if w.alive { "yes" } else { "lost" }.to_string(),
            if w.unhealthy.is_empty() { "ok".to_string() } else { format!("unhealthy: {}", w.unhealthy) },
            w.slots.to_string(),
            w.running_jobs.to_string(),
            gpus,
            w.cpus.to_string(),
            w.libtorch_version,
            if w.cuda_version.is_empty() { "-".into() } else { w.cuda_version },
            timestamp_text(w.last_seen.as_ref()),
        ]);
    }
    write_table(out, t)
}

/// Follows a sweep until it reaches a final state, reconnecting (and resuming after the last event
/// seen) when the stream drops. Gives up after a minute without a coordinator.
pub async fn watch(url: &str, id: i64, display: Display, out: &mut dyn Write) -> Result<()> {
    let mut view = WatchView::new(display);
    let mut down_since: Option<Instant> = None;
    let give_up = Duration::from_secs(60);
    loop {
        let attempt = async {
            let mut coord = connect(url).await?;
            let mut stream = coord
                .sweeps
                .watch_sweep(pb::WatchSweepRequest { sweep_id: id, after_event_id: view.last_event_id })
                .await
                .map_err(|s| coord.explain(s, &format!("watching sweep {id}")))?
                .into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(ev)) => {
                        down_since = None;
                        view.apply(&ev);
                        for line in view.take_lines() {
                            writeln!(out, "{line}")?;
                        }
                        if view.finished.is_some() {
                            return Ok::<bool, anyhow::Error>(true);
                        }
                    }
                    Ok(None) => return Ok(false),
                    Err(s) if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown | tonic::Code::Internal) => {
                        return Ok(false)
                    }
                    Err(s) => return Err(explain_status(url, s, &format!("watching sweep {id}"))),
                }
            }
        }
        .await;
        match attempt {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                let unreachable = e.to_string().starts_with("cannot reach the coordinator");
                if !unreachable {
                    return Err(e);
                }
                let since = *down_since.get_or_insert_with(Instant::now);
                if since.elapsed() > give_up {
                    return Err(e).context(format!("{} (gave up watching after {}s)", unreachable_message(url), give_up.as_secs()));
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let state = view.finished.clone().unwrap_or_default();
    let (done, total) = view.overall();
    writeln!(out, "sweep {id} {state}: {done}/{total} jobs finished")?;
    if state != "cancelled" {
        writeln!(out, "results: lthctl results {id}   plots: lthctl report {id}")?;
    }
    Ok(())
}
