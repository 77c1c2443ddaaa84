//! `SweepService`: what people and lthctl call. Submitting, reading and steering sweeps, their
//! results, jobs and workers in pages; the inputs and masks streams live in `transfer.rs` and
//! `masks.rs`.

use super::convert::{job_info, job_state_filter, metric_i32, result_row, summary, worker_info};
use super::limits::{limit_exceeded, page, page_size};
use super::watch::EventStream;
use super::{audit, status, Coordinator};
use crate::auth::{caller, Identity, Role};
use lth_proto::v1 as pb;
use lth_sweep::SweepSpec;
use std::sync::Arc;
use tonic::{Request, Response, Status};

#[derive(Clone)]
pub struct SweepSvc(pub Arc<Coordinator>);

impl SweepSvc {
    /// A submitter may change only the sweeps it submitted; an admin any.
    async fn check_owner(&self, who: &Identity, sweep_id: i64, verb: &str) -> Result<(), Status> {
        if who.role == Role::Admin {
            return Ok(());
        }
        // The owner alone (one row), not the sweep's summary with its counts.
        let owner = self.0.store.sweep_owner(sweep_id).await.map_err(status)?;
        if owner.as_deref() == Some(who.name.as_str()) {
            return Ok(());
        }
        let message = format!(
            "sweep {sweep_id} belongs to {}: a submitter token ({:?}) may {verb} only its own sweeps; this needs role admin",
            owner.as_deref().map(|o| format!("{o:?}")).unwrap_or_else(|| "no recorded owner".into()),
            who.name
        );
        let owner = owner.unwrap_or_default();
        Err(lth_proto::errors::error_status_with(
            tonic::Code::PermissionDenied,
            pb::ErrorReason::NotOwner,
            message,
            &[("needed_roles", "admin"), ("owner", owner.as_str()), ("role", who.role.as_str()), ("token", who.name.as_str())],
        ))
    }
}

#[tonic::async_trait]
impl pb::sweep_service_server::SweepService for SweepSvc {
    async fn submit_sweep(&self, req: Request<pb::SubmitSweepRequest>) -> Result<Response<pb::SubmitSweepResponse>, Status> {
        let who = caller(&req);
        let req = req.into_inner();
        let wire = req.spec.ok_or_else(|| lth_proto::errors::invalid_argument("spec is missing: send the sweep spec to submit"))?;
        let spec = SweepSpec::try_from(&wire).map_err(|e| lth_proto::errors::invalid_argument(e.to_string()))?;
        lth_sweep::check_grid_size(spec.job_count(), self.0.opts.max_jobs_per_sweep).map_err(limit_exceeded)?;
        self.0.check_inputs(&spec).await?;
        let out = if req.dry_run {
            self.0.store.plan_sweep(&spec).await
        } else {
            self.0.store.submit_sweep_as(&spec, Some(req.client_token.as_str()), Some(who.name.as_str())).await
        }
        .map_err(status)?;
        if out.created {
            audit(&who, "submit", Some(out.sweep_id), None);
            tracing::info!(sweep_id = out.sweep_id, name = %spec.name, jobs = out.jobs, reused = out.jobs_reused, "sweep submitted");
        }
        Ok(Response::new(pb::SubmitSweepResponse {
            sweep_id: out.sweep_id,
            created: out.created,
            trials: out.trials,
            jobs: out.jobs,
            jobs_reused: out.jobs_reused,
            dense_jobs: out.dense_jobs,
        }))
    }

    async fn get_sweep(&self, req: Request<pb::GetSweepRequest>) -> Result<Response<pb::SweepSummary>, Status> {
        let s = self.0.store.get_sweep(req.into_inner().sweep_id).await.map_err(status)?;
        Ok(Response::new(summary(&s)?))
    }

    async fn list_sweeps(&self, req: Request<pb::ListSweepsRequest>) -> Result<Response<pb::ListSweepsResponse>, Status> {
        let list = self.0.store.list_sweeps(req.into_inner().limit).await.map_err(status)?;
        Ok(Response::new(pb::ListSweepsResponse { sweeps: list.iter().map(summary).collect::<Result<_, _>>()? }))
    }

    async fn cancel_sweep(&self, req: Request<pb::SweepRef>) -> Result<Response<pb::SweepSummary>, Status> {
        let who = caller(&req);
        let id = req.into_inner().sweep_id;
        self.check_owner(&who, id, "cancel").await?;
        self.0.store.cancel_sweep(id).await.map_err(status)?;
        audit(&who, "cancel", Some(id), None);
        tracing::info!(sweep_id = id, "sweep cancelled");
        self.get_sweep(Request::new(pb::GetSweepRequest { sweep_id: id })).await
    }

    async fn pause_sweep(&self, req: Request<pb::SweepRef>) -> Result<Response<pb::SweepSummary>, Status> {
        let who = caller(&req);
        let id = req.into_inner().sweep_id;
        self.check_owner(&who, id, "pause").await?;
        self.0.store.pause_sweep(id).await.map_err(status)?;
        audit(&who, "pause", Some(id), None);
        tracing::info!(sweep_id = id, "sweep paused");
        self.get_sweep(Request::new(pb::GetSweepRequest { sweep_id: id })).await
    }

    async fn resume_sweep(&self, req: Request<pb::SweepRef>) -> Result<Response<pb::SweepSummary>, Status> {
        let who = caller(&req);
        let id = req.into_inner().sweep_id;
        self.check_owner(&who, id, "resume").await?;
        self.0.store.resume_sweep(id).await.map_err(status)?;
        audit(&who, "resume", Some(id), None);
        tracing::info!(sweep_id = id, "sweep resumed");
        self.get_sweep(Request::new(pb::GetSweepRequest { sweep_id: id })).await
    }

    async fn retry_sweep(&self, req: Request<pb::RetrySweepRequest>) -> Result<Response<pb::RetrySweepResponse>, Status> {
        let who = caller(&req);
        let r = req.into_inner();
        self.check_owner(&who, r.sweep_id, "retry").await?;
        let trial = (r.trial_id != 0).then_some(r.trial_id);
        let n = self.0.store.retry_sweep(r.sweep_id, trial).await.map_err(status)?;
        audit(&who, "retry", Some(r.sweep_id), None);
        tracing::info!(sweep_id = r.sweep_id, trial_id = r.trial_id, jobs = n, "failed jobs re-queued");
        let s = self.0.store.get_sweep(r.sweep_id).await.map_err(status)?;
        Ok(Response::new(pb::RetrySweepResponse { jobs_requeued: n, sweep: Some(summary(&s)?) }))
    }

    async fn list_jobs(&self, req: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        let req = req.into_inner();
        let state = pb::JobState::try_from(req.state).map_err(|_| lth_proto::errors::invalid_argument(format!("unknown job state {}", req.state)))?;
        self.0.store.sweep_owner(req.sweep_id).await.map_err(status)?;
        let after: i64 = if req.page_token.is_empty() {
            0
        } else {
            req.page_token.parse().map_err(|_| lth_proto::errors::invalid_argument(format!("page_token {:?} is not one this coordinator gave out", req.page_token)))?
        };
        let size = page_size(req.page_size);
        let filter = job_state_filter(state).map(|s| s.as_str());
        let rows = self.0.store.list_jobs_page(req.sweep_id, filter, after, size as i64 + 1).await.map_err(status)?;
        let (jobs, more) = page(rows.iter().map(job_info).collect::<Result<_, _>>()?, size);
        let next_page_token = if more { jobs.last().map(|j| j.job_id.to_string()).unwrap_or_default() } else { String::new() };
        Ok(Response::new(pb::ListJobsResponse { jobs, next_page_token }))
    }

    async fn list_workers(&self, req: Request<pb::ListWorkersRequest>) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let req = req.into_inner();
        // A worker is alive while it heartbeats; allow three missed beats.
        let window = self.0.opts.heartbeat * 3;
        let size = page_size(req.page_size);
        let rows = self.0.store.list_workers_page(window, req.all, &req.page_token, size as i64 + 1).await.map_err(status)?;
        let workers: Vec<pb::WorkerInfo> = rows.into_iter().map(worker_info).collect();
        let (workers, more) = page(workers, size);
        let next_page_token = if more { workers.last().map(|w| w.worker_id.clone()).unwrap_or_default() } else { String::new() };
        Ok(Response::new(pb::ListWorkersResponse { workers, next_page_token }))
    }

    type WatchSweepStream = EventStream;

    /// The sweep's summary, then its events as they happen, until it has finished (`watch.rs`).
    async fn watch_sweep(&self, req: Request<pb::WatchSweepRequest>) -> Result<Response<Self::WatchSweepStream>, Status> {
        super::watch::watch(self.0.clone(), req.into_inner()).await.map(Response::new)
    }

    async fn get_throughput(&self, _req: Request<pb::GetThroughputRequest>) -> Result<Response<pb::GetThroughputResponse>, Status> {
        let rows = self.0.store.measured_throughput().await.map_err(status)?;
        Ok(Response::new(pb::GetThroughputResponse {
            rows: rows
                .into_iter()
                .map(|t| pb::ThroughputRow {
                    model: t.model,
                    batch_size: t.batch_size,
                    precision: t.precision,
                    device: t.device,
                    jobs: t.jobs,
                    images: t.images,
                    seconds: t.seconds,
                    images_per_second: t.images_per_second,
                })
                .collect(),
        }))
    }

    async fn get_results(&self, req: Request<pb::GetResultsRequest>) -> Result<Response<pb::GetResultsResponse>, Status> {
        let id = req.into_inner().sweep_id;
        // Existence only: NOT_FOUND for an unknown sweep rather than an empty table.
        self.0.store.sweep_owner(id).await.map_err(status)?;
        let rows = self.0.store.results(id).await.map_err(status)?;
        let accuracy = self.0.store.accuracy(id).await.map_err(status)?;
        Ok(Response::new(pb::GetResultsResponse {
            accuracy: accuracy
                .into_iter()
                .map(|a| {
                    Ok(pb::AccuracyPoint {
                        metric: metric_i32(Some(&a.metric))?,
                        rate: a.rate,
                        level: a.level as u32,
                        sparsity: a.sparsity,
                        mean_accuracy: a.mean_accuracy,
                        std_accuracy: a.std_accuracy.unwrap_or(0.0),
                        min_accuracy: a.min_accuracy,
                        max_accuracy: a.max_accuracy,
                        seeds: a.seeds as u32,
                    })
                })
                .collect::<Result<_, Status>>()?,
            rows: rows.into_iter().map(result_row).collect::<Result<_, _>>()?,
        }))
    }

    async fn upload_input(&self, req: Request<tonic::Streaming<pb::InputChunk>>) -> Result<Response<pb::InputInfo>, Status> {
        let who = caller(&req);
        self.0.upload_input(&who, req.into_inner()).await.map(Response::new)
    }

    async fn list_inputs(&self, req: Request<pb::ListInputsRequest>) -> Result<Response<pb::ListInputsResponse>, Status> {
        self.0.list_inputs(req.into_inner()).await.map(Response::new)
    }

    type StreamMasksStream = super::masks::MaskStream;

    async fn stream_masks(&self, req: Request<pb::StreamMasksRequest>) -> Result<Response<Self::StreamMasksStream>, Status> {
        super::masks::stream_masks(&self.0.store, req.into_inner()).await.map(Response::new)
    }
}

