//! The daemon's Prometheus metrics on `--metrics-listen ADDR` (default `off`: a node may run
//! several daemons, one per GPU set, and no port is opened unless asked; the address is the
//! operator's choice, loopback or a pod IP that Prometheus scrapes).
//!
//! Recorded (through the `metrics` facade into this process's `metrics-exporter-prometheus`
//! recorder): jobs running per slot, images/s and step time per slot (from the progress events
//! the job processes send), job durations by kind and outcome, artifact cache hits, misses and
//! downloaded bytes. Read at scrape time: per-GPU utilisation and memory through NVML, which is
//! loaded at run time (`nvml-wrapper`), so CPU nodes without libnvidia-ml run the same binary and
//! log one line saying GPU metrics are off.
//!
//! The endpoint has no token: it shows no sweep data, only this machine's load, and it is off
//! unless an address is given.

use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub mod names {
    pub const JOBS_RUNNING: &str = "lth_worker_jobs_running";
    pub const IMAGES_PER_SECOND: &str = "lth_worker_images_per_second";
    pub const STEP_SECONDS: &str = "lth_worker_step_seconds";
    pub const JOB_SECONDS: &str = "lth_worker_job_duration_seconds";
    pub const CACHE_HITS: &str = "lth_worker_cache_hits_total";
    pub const CACHE_MISSES: &str = "lth_worker_cache_misses_total";
    pub const CACHE_DOWNLOADED: &str = "lth_worker_cache_downloaded_bytes_total";
}

/// Job durations: 1 s to 12 h.
const JOB_BUCKETS: &[f64] = &[1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 43200.0];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process-wide recorder, installed on first use.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().set_buckets_for_metric(Matcher::Full(names::JOB_SECONDS.into()), JOB_BUCKETS).ok()?.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
            describe_gauge!(names::JOBS_RUNNING, "Jobs running in each slot (0 or 1).");
            describe_gauge!(names::IMAGES_PER_SECOND, "Training throughput of the slot's job, from its latest progress event.");
            describe_gauge!(names::STEP_SECONDS, Unit::Seconds, "Mean optimizer step time of the slot's job between its last two progress events.");
            describe_histogram!(names::JOB_SECONDS, Unit::Seconds, "Job durations on this worker, from claim to its end, by kind and outcome.");
            describe_counter!(names::CACHE_HITS, "Input artifacts found (and sha256-verified) in the local cache.");
            describe_counter!(names::CACHE_MISSES, "Input artifacts downloaded because the cache did not hold them.");
            describe_counter!(names::CACHE_DOWNLOADED, Unit::Bytes, "Bytes downloaded into the artifact cache.");
            Some(handle)
        })
        .as_ref()
}

/// NVML when libnvidia-ml could be loaded.
struct Gpus {
    nvml: Option<nvml_wrapper::Nvml>,
}

impl Gpus {
    fn load() -> Gpus {
        match nvml_wrapper::Nvml::init() {
            Ok(nvml) => {
                let n = nvml.device_count().unwrap_or(0);
                tracing::info!(gpus = n, "NVML loaded: per-GPU utilisation and memory are exported on /metrics");
                Gpus { nvml: Some(nvml) }
            }
            Err(e) => {
                tracing::info!(error = %e, "NVML is not available (no libnvidia-ml): GPU utilisation and memory metrics are off; job metrics are exported");
                Gpus { nvml: None }
            }
        }
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP lth_worker_nvml_up Whether NVML (libnvidia-ml) was loaded, so that the GPU series below are present.");
        let _ = writeln!(out, "# TYPE lth_worker_nvml_up gauge");
        let _ = writeln!(out, "lth_worker_nvml_up {}", self.nvml.is_some() as u8);
        let Some(nvml) = &self.nvml else { return };
        let n = nvml.device_count().unwrap_or(0);
        let mut util = String::new();
        let mut used = String::new();
        let mut total = String::new();
        for i in 0..n {
            let Ok(d) = nvml.device_by_index(i) else { continue };
            let name = d.name().unwrap_or_default().replace('"', "'");
            if let Ok(u) = d.utilization_rates() {
                let _ = writeln!(util, "lth_worker_gpu_utilization_ratio{{gpu=\"{i}\",name=\"{name}\"}} {}", f64::from(u.gpu) / 100.0);
            }
            if let Ok(m) = d.memory_info() {
                let _ = writeln!(used, "lth_worker_gpu_memory_used_bytes{{gpu=\"{i}\",name=\"{name}\"}} {}", m.used);
                let _ = writeln!(total, "lth_worker_gpu_memory_total_bytes{{gpu=\"{i}\",name=\"{name}\"}} {}", m.total);
            }
        }
        let _ = writeln!(out, "# HELP lth_worker_gpu_utilization_ratio Fraction of the last sample period the GPU was busy (NVML).\n# TYPE lth_worker_gpu_utilization_ratio gauge\n{util}");
        let _ = writeln!(out, "# HELP lth_worker_gpu_memory_used_bytes GPU memory in use (NVML).\n# TYPE lth_worker_gpu_memory_used_bytes gauge\n{used}");
        let _ = writeln!(out, "# HELP lth_worker_gpu_memory_total_bytes GPU memory (NVML).\n# TYPE lth_worker_gpu_memory_total_bytes gauge\n{total}");
    }
}

/// Binds `addr` and serves `/metrics` there in the background; returns the bound address.
pub async fn serve(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let handle = install();
    if let Some(h) = handle {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                h.run_upkeep();
            }
        });
    }
    let gpus = Arc::new(tokio::task::spawn_blocking(Gpus::load).await?);
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let gpus = gpus.clone();
            async move {
                let mut body = handle.map(|h| h.render()).unwrap_or_default();
                let body = tokio::task::spawn_blocking(move || {
                    gpus.render(&mut body);
                    body
                })
                .await
                .unwrap_or_default();
                ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e} (pick another --metrics-listen, or `off`)"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the metrics endpoint stopped");
        }
    });
    Ok(bound)
}

/// `--metrics-listen`: an address, or None for `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen(pub Option<SocketAddr>);

pub fn parse_listen(s: &str) -> Result<Listen, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(Listen(None));
    }
    s.parse::<SocketAddr>().map(|a| Listen(Some(a))).map_err(|e| format!("{s:?} is neither an address like 127.0.0.1:9102 nor `off`: {e}"))
}
