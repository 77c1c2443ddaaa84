//! `WorkerService`: what worker daemons call. Registration, claims and completions through the
//! batcher (`group_commit.rs`), heartbeats (which answer with the jobs to abort), progress,
//! failures and hand-backs; the artifact streams live in `transfer.rs`.

use super::convert::{abort_reason, artifact_ref, control_i32, job_kind, lease_of, metric_i32, parse_state, ts};
use super::download::ChunkStream;
use super::limits::{check_instance, check_worker_id, MAX_CLAIM};
use super::{audit, outcome, status, Coordinator};
use crate::auth::caller;
use crate::http::metrics::names as M;
use crate::store::{ClaimRequest, ClaimedJob, Completion, GpuRow, Lease, ProgressInput, LevelResult, WorkerRegistration};
use lth_proto::v1 as pb;
use lth_sweep::state::JobKind;
use std::sync::Arc;
use tonic::{Request, Response, Status};

#[derive(Clone)]
pub struct WorkerSvc(pub Arc<Coordinator>);

impl WorkerSvc {
    /// Claims up to `free_slots` jobs for `worker_id` (ClaimJobs, and CompleteJob's
    /// `claim_next`), batched with concurrent claims.
    async fn claim(&self, worker_id: &str, free_slots: u32) -> Result<Vec<pb::JobAssignment>, Status> {
        let t0 = std::time::Instant::now();
        let claimed = self.0.batcher.claim(worker_id, free_slots.min(MAX_CLAIM), self.0.opts.lease).await;
        metrics::histogram!(M::CLAIM_SECONDS, "outcome" => outcome(&claimed)).record(t0.elapsed().as_secs_f64());
        self.hand_out(worker_id, claimed.map_err(status)?).await
    }

    /// The assignments of jobs just claimed for `worker_id`.
    async fn hand_out(&self, worker_id: &str, claimed: Vec<ClaimedJob>) -> Result<Vec<pb::JobAssignment>, Status> {
        metrics::counter!(M::JOBS_CLAIMED).increment(claimed.len() as u64);
        let mut jobs = Vec::with_capacity(claimed.len());
        for c in claimed {
            // A level job whose inputs have no record (a repair forgot a lost file while this
            // job was already unblocked): hand it back to wait for the re-run instead of sending
            // it off without them.
            let missing = [("rewind", c.rewind.is_none()), ("weights", c.weights.is_none())].into_iter().find(|(_, none)| *none);
            let kind: JobKind = parse_state(&c.job.kind)?;
            if let (JobKind::Level, Some((name, _))) = (kind, missing) {
                let lease = Lease { job_id: c.job.id, attempt: c.job.attempt };
                let what = format!("the {name:?} input of job {}", c.job.id);
                self.0.artifact_lost(lease, &what, name, None, "has no record (the file was lost)").await;
                continue;
            }
            tracing::info!(job_id = c.job.id, attempt = c.job.attempt, worker_id = %worker_id, "job claimed");
            self.0.leased.handed_out(Lease { job_id: c.job.id, attempt: c.job.attempt }, kind);
            jobs.push(self.assignment(c).await?);
        }
        Ok(jobs)
    }

    async fn assignment(&self, c: ClaimedJob) -> Result<pb::JobAssignment, Status> {
        let spec = self.0.spec_of(c.job.sweep_id, c.job.seed as u64).await?;
        let j = &c.job;
        let kind: JobKind = parse_state(&j.kind)?;
        let mut inputs = Vec::new();
        if let Some(a) = &c.rewind {
            inputs.push(pb::ArtifactRef { name: "rewind".into(), ..artifact_ref(a) });
        }
        if let Some(a) = &c.weights {
            inputs.push(pb::ArtifactRef { name: "weights".into(), ..artifact_ref(a) });
        }
        Ok(pb::JobAssignment {
            job_id: j.id,
            attempt: j.attempt as u32,
            kind: job_kind(kind) as i32,
            sweep_id: j.sweep_id,
            spec: Some(spec),
            seed: j.seed as u64,
            metric: metric_i32(j.metric.as_deref())?,
            rate: j.rate,
            level: j.level as u32,
            parent_job_id: j.parent_job_id.unwrap_or(0),
            dense_job_id: j.dense_job_id.unwrap_or(if kind == JobKind::Dense { j.id } else { 0 }),
            inputs,
            resume_checkpoint: c.resume_checkpoint.as_ref().map(artifact_ref),
            lease_expires_at: j.lease_expires_at.map(ts),
            content_hash: j.content_hash.clone(),
            control: control_i32(j.control.as_deref())?,
            bundle_id: j.bundle_id.unwrap_or(0),
        })
    }
}

#[tonic::async_trait]
impl pb::worker_service_server::WorkerService for WorkerSvc {
    async fn register_worker(&self, req: Request<pb::RegisterWorkerRequest>) -> Result<Response<pb::RegisterWorkerResponse>, Status> {
        let who = caller(&req);
        let r = req.into_inner();
        check_worker_id(&r.worker_id).map_err(lth_proto::errors::invalid_argument)?;
        check_instance(&r.instance).map_err(lth_proto::errors::invalid_argument)?;
        let requeued = self
            .0
            .store
            .register_worker_instance(
                &WorkerRegistration {
                    worker_id: r.worker_id.clone(),
                    host: r.host,
                    gpus: r.gpus.into_iter().map(|g| GpuRow { index: g.index, name: g.name, memory_bytes: g.memory_bytes }).collect(),
                    cpus: r.cpus,
                    slots: r.slots,
                    libtorch_version: r.libtorch_version,
                    cuda_version: r.cuda_version,
                },
                &r.instance,
            )
            .await
            .map_err(status)?;
        if !requeued.is_empty() {
            for l in &requeued {
                self.0.leased.ended(*l);
            }
            metrics::counter!(crate::http::metrics::names::LEASES_LOST).increment(requeued.len() as u64);
            tracing::warn!(
                worker_id = %r.worker_id,
                instance = %r.instance,
                jobs = ?requeued.iter().map(|l| l.job_id).collect::<Vec<_>>(),
                "worker registered again as a new process: the jobs leased to its previous process were re-queued"
            );
        }
        tracing::info!(worker_id = %r.worker_id, instance = %r.instance, "worker registered");
        audit(&who, "register_worker", None, None);
        Ok(Response::new(pb::RegisterWorkerResponse {
            lease_seconds: self.0.opts.lease.as_secs().max(1) as u32,
            heartbeat_seconds: self.0.opts.heartbeat.as_secs().max(1) as u32,
        }))
    }

    async fn claim_jobs(&self, req: Request<pb::ClaimJobsRequest>) -> Result<Response<pb::ClaimJobsResponse>, Status> {
        let r = req.into_inner();
        let jobs = self.claim(&r.worker_id, r.free_slots).await?;
        Ok(Response::new(pb::ClaimJobsResponse { jobs }))
    }

    async fn heartbeat(&self, req: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let r = req.into_inner();
        let leases: Vec<Lease> = r.running.iter().map(|l| Lease { job_id: l.job_id, attempt: l.attempt as i32 }).collect();
        // At most a line of text: it is shown in `lthctl workers` and the dashboard.
        let unhealthy: Option<String> = (!r.unhealthy.is_empty()).then(|| r.unhealthy.chars().take(500).collect());
        let aborts = self
            .0
            .store
            .heartbeat_with_health(&r.worker_id, &r.instance, &leases, self.0.opts.lease, unhealthy.as_deref())
            .await
            .map_err(status)?;
        Ok(Response::new(pb::HeartbeatResponse {
            abort: aborts
                .into_iter()
                .map(|(l, why)| pb::JobAbort {
                    lease: Some(pb::JobLease { job_id: l.job_id, attempt: l.attempt as u32 }),
                    reason: abort_reason(why) as i32,
                })
                .collect(),
        }))
    }

    async fn report_progress(&self, req: Request<pb::ReportProgressRequest>) -> Result<Response<pb::Ack>, Status> {
        let r = req.into_inner();
        let lease = lease_of(r.lease)?;
        let p = ProgressInput {
            iteration: r.iteration,
            total_iterations: r.total_iterations,
            epoch: r.epoch,
            train_loss: r.train_loss,
            test_accuracy: if r.test_accuracy.is_nan() { None } else { Some(r.test_accuracy) },
            images_per_second: r.images_per_second,
        };
        self.0.store.report_progress(lease, &p).await.map_err(status)?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn complete_job(&self, req: Request<pb::CompleteJobRequest>) -> Result<Response<pb::CompleteJobResponse>, Status> {
        let who = caller(&req);
        let r = req.into_inner();
        let lease = lease_of(r.lease)?;
        if r.claim_next > 0 {
            // Checked before the completion: a request refused after it would be retried, and
            // its retry would find the lease already ended.
            check_worker_id(&r.worker_id).map_err(lth_proto::errors::invalid_argument)?;
        }
        let result = r.result.ok_or_else(|| lth_proto::errors::invalid_argument("result is missing: send the level's result with the completion"))?;
        let input = LevelResult::from(result);
        let (accuracy, diverged) = (input.test_accuracy, input.diverged);
        // The store refuses, in the completing statement itself, a stale lease and a completion
        // whose attempt has not uploaded what the next levels download.
        let t0 = std::time::Instant::now();
        let claim = (r.claim_next > 0).then(|| ClaimRequest { worker_id: r.worker_id.clone(), n: r.claim_next.min(MAX_CLAIM), lease: self.0.opts.lease });
        let done = self.0.batcher.complete_then_claim(Completion { lease, result: input, require_uploads: true }, claim).await;
        metrics::histogram!(M::COMPLETE_SECONDS, "outcome" => outcome(&done)).record(t0.elapsed().as_secs_f64());
        let claimed = done.map_err(status)?;
        self.0.leased.ended(lease);
        metrics::counter!(M::JOBS_COMPLETED).increment(1);
        if diverged {
            tracing::warn!(job_id = lease.job_id, attempt = lease.attempt, accuracy, "job finished; its training diverged (recorded as diverged)");
        } else {
            tracing::info!(job_id = lease.job_id, attempt = lease.attempt, accuracy, "job succeeded");
        }
        audit(&who, "complete_job", None, Some(lease.job_id));
        // The completion is committed and must be acknowledged as such: a claim that failed
        // leaves the reply without jobs, and the worker claims with ClaimJobs.
        let handed = match claimed {
            None => Ok(Vec::new()),
            Some(Ok(jobs)) => self.hand_out(&r.worker_id, jobs).await,
            Some(Err(e)) => Err(status(e)),
        };
        let jobs = handed.unwrap_or_else(|e| {
            tracing::warn!(job_id = lease.job_id, worker_id = %r.worker_id, code = ?e.code(), error = %e.message(), "the claim after a completion failed; the worker claims again with ClaimJobs");
            Vec::new()
        });
        metrics::counter!(M::JOBS_CLAIMED_WITH_COMPLETION).increment(jobs.len() as u64);
        Ok(Response::new(pb::CompleteJobResponse { jobs }))
    }

    async fn fail_job(&self, req: Request<pb::FailJobRequest>) -> Result<Response<pb::Ack>, Status> {
        let who = caller(&req);
        let r = req.into_inner();
        let lease = lease_of(r.lease)?;
        let how = crate::store::Failure { retryable: r.retryable, node_local: r.node_local };
        // A node-local failure goes to another worker, if one is alive (three missed heartbeats: lost).
        self.0.store.fail_job_on(lease, &r.error, how, self.0.opts.heartbeat * 3).await.map_err(status)?;
        self.0.leased.ended(lease);
        metrics::counter!(M::JOB_FAILURES, "retryable" => if r.retryable { "true" } else { "false" }, "node_local" => if r.node_local { "true" } else { "false" }).increment(1);
        tracing::warn!(job_id = lease.job_id, attempt = lease.attempt, retryable = r.retryable, node_local = r.node_local, error = %r.error, "job attempt failed");
        audit(&who, "fail_job", None, Some(lease.job_id));
        Ok(Response::new(pb::Ack {}))
    }

    async fn release_job(&self, req: Request<pb::ReleaseJobRequest>) -> Result<Response<pb::Ack>, Status> {
        let r = req.into_inner();
        let lease = lease_of(r.lease)?;
        let reason: String = r.reason.chars().take(1000).collect();
        self.0.store.release_job(lease, &reason).await.map_err(status)?;
        self.0.leased.ended(lease);
        metrics::counter!(M::JOBS_RELEASED).increment(1);
        tracing::info!(job_id = lease.job_id, attempt = lease.attempt, reason = %reason, "job released by its worker; claimable again");
        Ok(Response::new(pb::Ack {}))
    }

    /// The first chunk names the lease, artifact and digest; the data is streamed into the object
    /// store, verified, and only then recorded (fenced by the lease).
    async fn upload_artifact(&self, req: Request<tonic::Streaming<pb::ArtifactChunk>>) -> Result<Response<pb::UploadArtifactResponse>, Status> {
        let who = caller(&req);
        self.0.upload_artifact(&who, req.into_inner()).await.map(Response::new)
    }

    type DownloadArtifactStream = ChunkStream;

    /// Streams a recorded file, checked against its record as it goes. When the caller names its
    /// lease, a lost file is repaired: the job that made it runs again and the caller's job is
    /// handed back (ARTIFACT_LOST), so no dependent waits on a file that is gone.
    async fn download_artifact(&self, req: Request<pb::DownloadArtifactRequest>) -> Result<Response<Self::DownloadArtifactStream>, Status> {
        self.0.clone().download_artifact(req.into_inner()).await.map(Response::new)
    }

    type DownloadInputStream = ChunkStream;

    async fn download_input(&self, req: Request<pb::DownloadInputRequest>) -> Result<Response<Self::DownloadInputStream>, Status> {
        self.0.download_input(req.into_inner()).await.map(Response::new)
    }
}

