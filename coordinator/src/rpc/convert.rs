//! Store rows to wire messages, and the few wire values the store reads back.
//!
//! The store keeps states, kinds, metrics and controls as TEXT (CHECK constraints name the
//! values). They are parsed here into `lth_sweep`'s enums and then matched exhaustively onto the
//! protocol's, so a value added to one side without the other fails to compile, and a value in
//! the database that this coordinator does not know (a newer lth wrote it, or a hand edit) is an
//! INTERNAL error naming it, never a silent UNSPECIFIED.

use crate::store::{ArtifactRow, InputRow, JobRow, Lease, ResultRow, SweepInfo, WorkerRow};
use lth_proto::v1 as pb;
use lth_sweep::state::{AbortReason, JobKind, JobState, SweepState, UnknownState};
use lth_sweep::{Control, ImportanceMetric};
use std::str::FromStr;
use tonic::Status;

pub(super) fn ts(t: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}

/// A value the database holds that this coordinator cannot name on the wire.
fn unknown_in_store(what: &str, detail: impl std::fmt::Display) -> Status {
    lth_proto::errors::error_status(
        tonic::Code::Internal,
        pb::ErrorReason::Unspecified,
        format!("the store holds a {what} this coordinator does not know ({detail}): it was written by a newer lth or by hand; run a coordinator as new as the data"),
    )
}

/// A TEXT column parsed into its `lth_sweep::state` enum.
pub(super) fn parse_state<T: FromStr<Err = UnknownState>>(text: &str) -> Result<T, Status> {
    text.parse::<T>().map_err(|e| unknown_in_store("state", e))
}

fn job_state(s: JobState) -> pb::JobState {
    match s {
        JobState::Blocked => pb::JobState::Blocked,
        JobState::Ready => pb::JobState::Ready,
        JobState::Running => pb::JobState::Running,
        JobState::Succeeded => pb::JobState::Succeeded,
        JobState::Failed => pb::JobState::Failed,
        JobState::Cancelled => pb::JobState::Cancelled,
    }
}

/// A ListJobs filter: None for UNSPECIFIED (every state).
pub(super) fn job_state_filter(s: pb::JobState) -> Option<JobState> {
    match s {
        pb::JobState::Unspecified => None,
        pb::JobState::Blocked => Some(JobState::Blocked),
        pb::JobState::Ready => Some(JobState::Ready),
        pb::JobState::Running => Some(JobState::Running),
        pb::JobState::Succeeded => Some(JobState::Succeeded),
        pb::JobState::Failed => Some(JobState::Failed),
        pb::JobState::Cancelled => Some(JobState::Cancelled),
    }
}

fn sweep_state(s: SweepState) -> pb::SweepState {
    match s {
        SweepState::Submitting => pb::SweepState::Submitting,
        SweepState::Running => pb::SweepState::Running,
        SweepState::Paused => pb::SweepState::Paused,
        SweepState::Succeeded => pb::SweepState::Succeeded,
        SweepState::Failed => pb::SweepState::Failed,
        SweepState::Cancelled => pb::SweepState::Cancelled,
    }
}

pub(super) fn job_kind(k: JobKind) -> pb::JobKind {
    match k {
        JobKind::Dense => pb::JobKind::Dense,
        JobKind::Level => pb::JobKind::Level,
    }
}

/// A `metric` column (NULL for a dense job) as the protocol's enum number.
pub(super) fn metric_i32(m: Option<&str>) -> Result<i32, Status> {
    match m {
        None => Ok(pb::ImportanceMetric::Unspecified as i32),
        Some(m) => ImportanceMetric::parse(m).map(|m| m.to_proto_i32()).map_err(|e| unknown_in_store("metric", e)),
    }
}

/// A job's `control` column as the protocol's enum (UNSPECIFIED for a ticket).
pub(super) fn control_i32(c: Option<&str>) -> Result<i32, Status> {
    let c = match c {
        None => return Ok(pb::Control::Unspecified as i32),
        Some(c) => Control::parse(c).map_err(|e| unknown_in_store("control", e))?,
    };
    Ok(match c {
        Control::Reinit => pb::Control::Reinit as i32,
        Control::RandomMask => pb::Control::RandomMask as i32,
    })
}

pub(super) fn job_info(j: &JobRow) -> Result<pb::JobInfo, Status> {
    Ok(pb::JobInfo {
        job_id: j.id,
        kind: job_kind(parse_state(&j.kind)?) as i32,
        state: job_state(parse_state(&j.state)?) as i32,
        attempt: j.attempt as u32,
        level: j.level as u32,
        seed: j.seed as u64,
        metric: metric_i32(j.metric.as_deref())?,
        rate: j.rate,
        worker_id: j.worker_id.clone().unwrap_or_default(),
        progress: j.progress,
        eta_seconds: j.eta_seconds.unwrap_or(0.0),
        error: j.last_error.clone().unwrap_or_default(),
        lost_count: j.lost_count as u32,
        error_count: j.error_count as u32,
        parent_job_id: j.parent_job_id.unwrap_or(0),
        content_hash: j.content_hash.clone(),
        control: control_i32(j.control.as_deref())?,
        trial_id: j.trial_id.unwrap_or(0),
    })
}

pub(super) fn summary(s: &SweepInfo) -> Result<pb::SweepSummary, Status> {
    Ok(pb::SweepSummary {
        sweep_id: s.id,
        name: s.name.clone(),
        state: sweep_state(parse_state(&s.state)?) as i32,
        spec: Some(pb::SweepSpec::from(&s.spec)),
        jobs: Some(pb::JobCounts {
            blocked: s.jobs.blocked,
            ready: s.jobs.ready,
            running: s.jobs.running,
            succeeded: s.jobs.succeeded,
            failed: s.jobs.failed,
            cancelled: s.jobs.cancelled,
        }),
        metrics: s
            .metrics
            .iter()
            .map(|(m, total, done)| Ok(pb::MetricProgress { metric: metric_i32(Some(m))?, jobs_total: *total, jobs_succeeded: *done }))
            .collect::<Result<_, Status>>()?,
        created_at: Some(ts(s.created_at)),
        finished_at: s.finished_at.map(ts),
        trials: s.trials,
        tickets_with_dead_classes: s.tickets_with_dead_classes,
        owner: s.owner.clone().unwrap_or_default(),
        diverged: s.diverged,
    })
}

/// Whether the sweep will change no more (WatchSweep ends after its last event).
pub(super) fn sweep_finished(s: &SweepInfo) -> Result<bool, Status> {
    Ok(parse_state::<SweepState>(&s.state)?.is_finished())
}

pub(super) fn worker_info(w: WorkerRow) -> pb::WorkerInfo {
    pb::WorkerInfo {
        worker_id: w.reg.worker_id,
        host: w.reg.host,
        gpus: w.reg.gpus.into_iter().map(|g| pb::GpuInfo { index: g.index, name: g.name, memory_bytes: g.memory_bytes }).collect(),
        cpus: w.reg.cpus,
        slots: w.reg.slots,
        running_jobs: w.running_jobs as u32,
        last_seen: Some(ts(w.last_seen)),
        alive: w.alive,
        libtorch_version: w.reg.libtorch_version,
        cuda_version: w.reg.cuda_version,
        unhealthy: w.unhealthy.unwrap_or_default(),
    }
}

pub(super) fn abort_reason(why: AbortReason) -> pb::AbortReason {
    match why {
        AbortReason::Cancelled => pb::AbortReason::Cancelled,
        AbortReason::Paused => pb::AbortReason::Paused,
        AbortReason::LeaseLost => pb::AbortReason::LeaseLost,
    }
}

/// One GetResults row: the stored result without its masks (StreamMasks sends those).
pub(super) fn result_row(r: ResultRow) -> Result<pb::ResultRow, Status> {
    Ok(pb::ResultRow {
        metric: metric_i32(Some(&r.metric))?,
        rate: r.rate,
        seed: r.seed as u64,
        level: r.level as u32,
        job_id: r.job_id,
        control: control_i32(r.control.as_deref())?,
        schedule: r.schedule.clone().unwrap_or_default(),
        result: Some(pb::LevelResult {
            sparsity: r.sparsity,
            test_accuracy: r.test_accuracy,
            test_loss: r.test_loss,
            train_loss: r.train_loss,
            epochs: r.epochs,
            wall_seconds: r.wall_seconds,
            iterations: r.iterations as u64,
            diverged: r.diverged,
            layers: r
                .layers
                .into_iter()
                .map(|l| {
                    let u = l.units.unwrap_or_default();
                    pb::LayerStats {
                        layer: l.layer,
                        kept: l.kept as u64,
                        total: l.total as u64,
                        mask_bits: Vec::new(),
                        collapsed: l.collapsed,
                        weight_norm: l.weight_norm,
                        outputs: u.outputs,
                        dead_outputs: u.dead_outputs,
                        inputs: u.inputs,
                        dead_inputs: u.dead_inputs,
                        output_layer: u.output_layer,
                    }
                })
                .collect(),
            // GetResults rows carry no device (measured_throughput has it).
            device: String::new(),
        }),
    })
}

pub(super) fn artifact_ref(a: &ArtifactRow) -> pb::ArtifactRef {
    pb::ArtifactRef { job_id: a.job_id, name: a.name.clone(), sha256: a.sha256.clone(), bytes: a.bytes as u64 }
}

pub(super) fn lease_of(l: Option<pb::JobLease>) -> Result<Lease, Status> {
    let l = l.ok_or_else(|| lth_proto::errors::invalid_argument("lease is missing: send the (job_id, attempt) from the assignment"))?;
    Ok(Lease { job_id: l.job_id, attempt: l.attempt as i32 })
}

/// The store's name of an input kind (the `inputs.kind` column).
pub(super) fn input_kind_name(k: pb::InputKind) -> Option<&'static str> {
    match k {
        pb::InputKind::Unspecified => None,
        pb::InputKind::Torchscript => Some("torchscript"),
        pb::InputKind::ImageFolder => Some("image_folder"),
        pb::InputKind::Safetensors => Some("safetensors"),
    }
}

fn input_kind_of(name: &str) -> Result<pb::InputKind, Status> {
    match name {
        "torchscript" => Ok(pb::InputKind::Torchscript),
        "image_folder" => Ok(pb::InputKind::ImageFolder),
        "safetensors" => Ok(pb::InputKind::Safetensors),
        other => Err(unknown_in_store("input kind", format!("{other:?}"))),
    }
}

pub(super) fn input_info(r: &InputRow, created: bool) -> Result<pb::InputInfo, Status> {
    Ok(pb::InputInfo {
        sha256: r.sha256.clone(),
        bytes: r.bytes as u64,
        kind: input_kind_of(&r.kind)? as i32,
        name: r.name.clone(),
        owner: r.owner.clone().unwrap_or_default(),
        created_at: r.created_at.map(ts),
        created,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_store_value_has_a_wire_value() {
        for s in JobState::ALL {
            assert_ne!(job_state(*s), pb::JobState::Unspecified);
            assert_eq!(job_state_filter(job_state(*s)), Some(*s), "ListJobs' filter is the inverse");
        }
        for s in SweepState::ALL {
            assert_ne!(sweep_state(*s), pb::SweepState::Unspecified);
        }
        for k in JobKind::ALL {
            assert_ne!(job_kind(*k), pb::JobKind::Unspecified);
        }
        for k in ["torchscript", "image_folder", "safetensors"] {
            let kind = input_kind_of(k).unwrap();
            assert_eq!(input_kind_name(kind), Some(k));
        }
    }

    #[test]
    fn an_unknown_value_in_the_store_is_an_error_not_unspecified() {
        let e = parse_state::<JobState>("done").unwrap_err();
        assert_eq!(e.code(), tonic::Code::Internal);
        assert!(e.message().contains("\"done\" is not a JobState"), "{}", e.message());
        assert!(parse_state::<SweepState>("archived").is_err());
        assert!(parse_state::<JobKind>("bundle").is_err());
        assert!(metric_i32(Some("entropy")).is_err());
        assert_eq!(metric_i32(None).unwrap(), 0, "a dense job has no metric");
        assert!(control_i32(Some("shuffle")).is_err());
        assert_eq!(control_i32(None).unwrap(), pb::Control::Unspecified as i32);
        assert_eq!(control_i32(Some("random_mask")).unwrap(), pb::Control::RandomMask as i32);
        assert!(input_kind_of("onnx").is_err());
    }
}
