//! Streams in and out of the object store: job artifacts (UploadArtifact, DownloadArtifact) and
//! uploaded inputs (UploadInput, ListInputs, DownloadInput), and the submit-time check that the
//! inputs a sweep names are here.
//!
//! Uploads are streamed into the object store and verified (size and sha256) before anything is
//! recorded; an artifact's record is fenced by its lease and goes through the batcher. Downloads
//! are checked as they stream (`download.rs`).

use super::convert::{input_info, input_kind_name, lease_of, parse_state};
use super::download::{on_lost, stream_object, ChunkStream, Expected, OnLost};
use super::limits::{allowed_uploads, limit_exceeded, too_large, valid_artifact_name};
use super::{audit, status, Coordinator};
use crate::artifacts::ArtifactStore;
use crate::auth::Identity;
use crate::http::metrics::names as M;
use crate::store::{ArtifactRecord, InputRow, Lease, StoreError};
use futures::StreamExt;
use lth_proto::v1 as pb;
use lth_sweep::state::JobKind;
use lth_sweep::SweepSpec;
use std::sync::Arc;
use tonic::Status;

impl Coordinator {
    /// UploadArtifact: the first chunk names the lease, the artifact and its digest. The name must
    /// be one the job's kind uploads, the size within `--max-artifact-mib` (declared, or counted
    /// as the chunks arrive).
    pub(super) async fn upload_artifact(&self, who: &Identity, mut stream: tonic::Streaming<pb::ArtifactChunk>) -> Result<pb::UploadArtifactResponse, Status> {
        let first = stream
            .message()
            .await?
            .ok_or_else(|| lth_proto::errors::invalid_argument("empty upload: the first chunk must name the lease, the artifact and its sha256"))?;
        let lease = lease_of(first.lease)?;
        let name = first.name.clone();
        if !valid_artifact_name(&name) {
            return Err(lth_proto::errors::invalid_argument(format!(
                "artifact name {name:?} is not allowed: use \"rewind\", \"weights\", \"checkpoint\" (letters, digits, _ - .)"
            )));
        }
        if first.sha256.len() != 64 || !first.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(lth_proto::errors::invalid_argument("the first chunk's sha256 must be the artifact's 64-digit hex digest"));
        }
        // A lease handed out here needs no lookup; the record below is the fence either way.
        let kind: JobKind = match self.leased.kind(lease) {
            Some(kind) => kind,
            None => match self.store.running_job_kind(lease).await.map_err(status)? {
                Some(kind) => parse_state(&kind)?,
                None => return Err(status(StoreError::StaleLease(format!("lease {lease} is not current: the upload was refused")))),
            },
        };
        let allowed = allowed_uploads(kind);
        if !allowed.contains(&name.as_str()) {
            return Err(lth_proto::errors::invalid_argument(format!(
                "a {kind} job uploads only {allowed:?}, not {name:?}: job {} attempt {}",
                lease.job_id, lease.attempt
            )));
        }
        let max = self.opts.max_artifact_bytes;
        if first.total_bytes > max {
            return Err(limit_exceeded(format!(
                "artifact {name:?} of job {} is {} bytes, over this coordinator's limit of {max} bytes (--max-artifact-mib)",
                lease.job_id, first.total_bytes
            )));
        }
        let declared_bytes = if first.total_bytes > 0 { Some(first.total_bytes) } else { None };
        let head = futures::stream::once(futures::future::ready(Ok::<bytes::Bytes, Status>(bytes::Bytes::from(first.data))));
        let rest = stream.map(|c| c.map(|c| bytes::Bytes::from(c.data)));
        // An upload that did not declare its size (or lied) is cut off at the limit.
        let mut seen = 0u64;
        let job_id = lease.job_id;
        let limit_name = name.clone();
        let chunks = head.chain(rest).map(move |c| {
            let c = c?;
            seen += c.len() as u64;
            if seen > max {
                return Err(limit_exceeded(format!(
                    "artifact {limit_name:?} of job {job_id} passed this coordinator's limit of {max} bytes (--max-artifact-mib); the upload was dropped"
                )));
            }
            Ok(c)
        });
        let key = ArtifactStore::key_for(lease.job_id, lease.attempt, &name, &unique_suffix());
        // Stored and recorded in a task of its own, so that it runs to its end: a client that goes
        // away after its last chunk (a daemon stops its uploads when the job process dies) cancels
        // this handler, and cut between the store and the record (or a refusal and its cleanup)
        // it would leave an object that no row names. A client gone mid-stream ends the chunks
        // with an error and the task with them.
        let (artifacts, batcher, file, declared_sha256) = (self.artifacts.clone(), self.batcher.clone(), name.clone(), first.sha256.clone());
        let store_and_record = async move {
            let stored = artifacts.put_verified(&key, &file, &declared_sha256, declared_bytes, Box::pin(chunks)).await?;
            let stored = stored.map_err(|e| Status::data_loss(e.to_string()))?;
            let rec = ArtifactRecord { lease, name: file, uri: stored.uri.clone(), sha256: stored.sha256.clone(), bytes: stored.bytes };
            match batcher.record_artifact(rec).await {
                // Deleted only after the new record committed: until then the old file is the one
                // a retry resumes from (a checkpoint) or a dependent downloads.
                Ok(recorded) => {
                    if let Some(old) = recorded.replaced_uri {
                        artifacts.delete_uri(&old).await;
                    }
                    Ok(stored)
                }
                Err(e) => {
                    artifacts.delete_uri(&stored.uri).await;
                    Err(status(e))
                }
            }
        };
        let stored = tokio::spawn(store_and_record).await.map_err(|e| Status::internal(format!("the upload's store task ended: {e}")))??;
        tracing::info!(job_id = lease.job_id, attempt = lease.attempt, name = %name, bytes = stored.bytes, "artifact stored");
        metrics::counter!(M::ARTIFACT_BYTES, "direction" => "in").increment(stored.bytes);
        audit(who, "upload_artifact", None, Some(lease.job_id));
        Ok(pb::UploadArtifactResponse { artifact: Some(pb::ArtifactRef { job_id: lease.job_id, name, sha256: stored.sha256, bytes: stored.bytes }) })
    }

    /// DownloadArtifact: a recorded file, checked against its record as it streams. With the
    /// caller's lease, a lost file is repaired ([`Coordinator::artifact_lost`]).
    pub(super) async fn download_artifact(self: Arc<Self>, r: pb::DownloadArtifactRequest) -> Result<ChunkStream, Status> {
        let a = self.store.find_artifact(r.job_id, &r.name).await.map_err(status)?;
        let expected = Expected { name: a.name.clone(), sha256: a.sha256.clone(), bytes: a.bytes as u64 };
        let lost: OnLost = match r.lease {
            Some(l) => {
                let (coordinator, lease, uri) = (self.clone(), Lease { job_id: l.job_id, attempt: l.attempt as i32 }, a.uri.clone());
                let what = format!("artifact {:?} of job {}", a.name, a.job_id);
                let name = a.name.clone();
                on_lost(move |problem| async move { coordinator.artifact_lost(lease, &what, &name, Some(&uri), &problem).await })
            }
            None => {
                let what = format!("artifact {:?} of job {}", a.name, a.job_id);
                on_lost(move |problem| async move {
                    tracing::warn!(artifact = %what, problem = %problem, "artifact lost from the object store (the download named no lease: nothing repaired)");
                    lth_proto::errors::not_found(format!("{what} {problem}: it must be made again"))
                })
            }
        };
        stream_object(&self.artifacts, &a.uri, expected, lost).await
    }

    /// DownloadInput: an uploaded model or dataset by its digest.
    pub(super) async fn download_input(&self, r: pb::DownloadInputRequest) -> Result<ChunkStream, Status> {
        let sha = r.sha256.to_ascii_lowercase();
        let Some(row) = self.store.find_input(&sha).await.map_err(status)? else {
            return Err(lth_proto::errors::not_found(format!(
                "this coordinator holds no upload sha256:{sha}: upload it again (`lthctl submit` for a model, `lthctl dataset upload` for a dataset)"
            )));
        };
        let expected = Expected { name: row.name.clone(), sha256: row.sha256.clone(), bytes: row.bytes as u64 };
        let lost = on_lost(move |problem| async move {
            tracing::error!(sha256 = %sha, problem = %problem, "an uploaded input is lost from the object store");
            lth_proto::errors::not_found(format!("the upload sha256:{sha} {problem}: upload it again"))
        });
        stream_object(&self.artifacts, &row.uri, expected, lost).await
    }

    /// ListInputs: every input, or those of the digests asked for (at most 1,000).
    pub(super) async fn list_inputs(&self, r: pb::ListInputsRequest) -> Result<pb::ListInputsResponse, Status> {
        let inputs = if r.sha256.is_empty() {
            self.store.list_inputs().await.map_err(status)?
        } else {
            let mut found = Vec::new();
            for sha in r.sha256.iter().take(1000) {
                if let Some(row) = self.store.find_input(&sha.to_ascii_lowercase()).await.map_err(status)? {
                    found.push(row);
                }
            }
            found
        };
        Ok(pb::ListInputsResponse { inputs: inputs.iter().map(|r| input_info(r, false)).collect::<Result<_, _>>()? })
    }

    /// Refuses a sweep naming an uploaded input the coordinator does not hold (or one of another
    /// kind), before anything is created.
    pub(super) async fn check_inputs(&self, spec: &SweepSpec) -> Result<(), Status> {
        let mut problems = Vec::new();
        for (sha, kind, key) in required_inputs(spec) {
            match self.store.find_input(&sha).await.map_err(status)? {
                None => problems.push(format!(
                    "{key} names the upload sha256:{sha}, which this coordinator does not hold: upload it first (`lthctl submit` uploads the sweep's model file; `lthctl dataset upload PATH` a dataset; `lthctl dataset ls` lists what is here)"
                )),
                Some(r) if r.kind != kind => problems.push(format!(
                    "{key} names the upload sha256:{sha}, which was uploaded as {} ({:?}), not as {kind}",
                    r.kind, r.name
                )),
                Some(_) => {}
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        Err(lth_proto::errors::error_status(tonic::Code::FailedPrecondition, pb::ErrorReason::MissingUploads, problems.join("; ")))
    }

    /// UploadInput: stream the chunks into a staging object, verify size and digest, then move it
    /// to its content address and record it.
    pub(super) async fn upload_input(&self, who: &Identity, mut stream: tonic::Streaming<pb::InputChunk>) -> Result<pb::InputInfo, Status> {
        let first = stream
            .message()
            .await?
            .ok_or_else(|| lth_proto::errors::invalid_argument("empty upload: the first chunk must name the input's sha256, kind, name and size"))?;
        let sha = first.sha256.to_ascii_lowercase();
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(lth_proto::errors::invalid_argument("the first chunk's sha256 must be the whole input's 64-digit hex digest"));
        }
        let kind = pb::InputKind::try_from(first.kind).ok().and_then(input_kind_name).ok_or_else(|| {
            lth_proto::errors::invalid_argument(format!("input kind {} is not one of torchscript, image_folder, safetensors", first.kind))
        })?;
        let name: String = first.name.chars().filter(|c| !c.is_control()).take(200).collect();
        let max = self.opts.max_input_bytes;
        if first.total_bytes > max {
            return Err(too_large(&name, first.total_bytes, max));
        }
        if let Some(existing) = self.store.find_input(&sha).await.map_err(status)? {
            // Content-addressed: the bytes are already here. Nothing more is read.
            tracing::info!(sha256 = %sha, kind = %existing.kind, "input already stored; upload skipped");
            return input_info(&existing, false);
        }
        let declared = (first.total_bytes > 0).then_some(first.total_bytes);
        let head = futures::stream::once(futures::future::ready(Ok::<bytes::Bytes, Status>(bytes::Bytes::from(first.data))));
        let rest = stream.map(|c| c.map(|c| bytes::Bytes::from(c.data)));
        // The limit holds whatever the first chunk declared.
        let mut seen = 0u64;
        let limit_name = name.clone();
        let limited = head.chain(rest).map(move |c| {
            let c = c?;
            seen += c.len() as u64;
            if seen > max {
                return Err(too_large(&limit_name, seen, max));
            }
            Ok(c)
        });
        let staging = format!("uploads/{sha}.{}", unique_suffix());
        let stored = self.artifacts.put_verified(&staging, &name, &sha, declared, Box::pin(limited)).await?;
        let stored = stored.map_err(|e| lth_proto::errors::error_status(tonic::Code::DataLoss, pb::ErrorReason::InvalidArgument, e.to_string()))?;
        let key = format!("inputs/sha256/{sha}");
        let uri = self.artifacts.rename(&stored.uri, &key).await.map_err(|e| lth_proto::errors::unavailable(format!("object store: {e}")))?;
        let row = InputRow { sha256: sha.clone(), kind: kind.to_string(), name: name.clone(), bytes: stored.bytes as i64, uri, owner: Some(who.name.clone()), created_at: None };
        let created = self.store.record_input(&row).await.map_err(status)?;
        let row = self.store.find_input(&sha).await.map_err(status)?.unwrap_or(row);
        tracing::info!(sha256 = %sha, kind, name = %name, bytes = stored.bytes, created, "input uploaded");
        audit(who, "upload_input", None, None);
        input_info(&row, created)
    }
}

/// The inputs a sweep downloads through the coordinator: (sha256, the kind it must have, what
/// names it in the sweep).
fn required_inputs(spec: &SweepSpec) -> Vec<(String, &'static str, &'static str)> {
    let mut out = Vec::new();
    if let Some(t) = spec.model.torchscript().filter(|t| t.uploaded) {
        out.push((t.sha256.clone().unwrap_or_default().to_ascii_lowercase(), "torchscript", "model.torchscript"));
    }
    if let Some(sha) = spec.dataset.upload_sha256() {
        out.push((sha.to_ascii_lowercase(), spec.dataset.name.as_str(), "dataset.upload"));
    }
    out
}

fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{nanos}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}
