//! The names lthctl prints for wire values (metrics, models, datasets, states, timestamps).
//! The spec ↔ wire conversion itself lives in `lth-sweep` (`pb::SweepSpec::from(&spec)`).

use lth_proto::v1 as pb;
use lth_sweep as spec;

/// The spec's metric for a wire value; `None` for UNSPECIFIED (a dense job) or an unknown number.
pub fn metric_from_proto(value: i32) -> Option<spec::ImportanceMetric> {
    spec::ImportanceMetric::from_proto_i32(value).ok()
}

/// The name users write in sweep files ("min_max"), or "dense" for a metric-less job.
pub fn metric_name(value: i32) -> String {
    match metric_from_proto(value) {
        Some(m) => m.as_str().to_string(),
        None if value == 0 => "dense".to_string(),
        None => format!("metric#{value}"),
    }
}

pub fn model_name(value: i32) -> String {
    spec::ModelKind::ALL
        .into_iter()
        .find(|m| pb::Model::from(*m) as i32 == value)
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "?".to_string())
}

/// A wire spec's network: the built-in model's name, or "torchscript FILE" (the file's name).
pub fn spec_model_name(s: &pb::SweepSpec) -> String {
    match &s.torchscript {
        Some(t) => {
            let file = std::path::Path::new(&t.path).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
            format!("torchscript {file}")
        }
        None => model_name(s.model),
    }
}

pub fn dataset_name(value: i32) -> String {
    spec::DatasetKind::ALL
        .into_iter()
        .find(|d| pb::Dataset::from(*d) as i32 == value)
        .map(|d| d.as_str().to_string())
        .unwrap_or_else(|| "?".to_string())
}

pub fn sweep_state_name(value: i32) -> &'static str {
    match pb::SweepState::try_from(value) {
        Ok(pb::SweepState::Running) => "running",
        Ok(pb::SweepState::Paused) => "paused",
        Ok(pb::SweepState::Cancelled) => "cancelled",
        Ok(pb::SweepState::Succeeded) => "succeeded",
        Ok(pb::SweepState::Failed) => "failed",
        Ok(pb::SweepState::Submitting) => "submitting",
        _ => "unknown",
    }
}

/// A sweep in one of these states will not change any more.
pub fn sweep_state_is_final(value: i32) -> bool {
    matches!(
        pb::SweepState::try_from(value),
        Ok(pb::SweepState::Cancelled | pb::SweepState::Succeeded | pb::SweepState::Failed)
    )
}

pub fn job_state_name(value: i32) -> &'static str {
    match pb::JobState::try_from(value) {
        Ok(pb::JobState::Blocked) => "blocked",
        Ok(pb::JobState::Ready) => "ready",
        Ok(pb::JobState::Running) => "running",
        Ok(pb::JobState::Succeeded) => "succeeded",
        Ok(pb::JobState::Failed) => "failed",
        Ok(pb::JobState::Cancelled) => "cancelled",
        _ => "unknown",
    }
}

/// "2026-11-27 18:02:11" (UTC) for a wire timestamp, "-" when absent.
pub fn timestamp_text(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_wire_values() {
        for m in spec::ImportanceMetric::ALL {
            assert_eq!(metric_name(m.to_proto_i32()), m.as_str());
        }
        assert_eq!(metric_name(0), "dense");
        assert_eq!(metric_name(99), "metric#99");
        assert_eq!(model_name(pb::Model::Resnet18Imagenet as i32), "resnet18_imagenet");
        assert_eq!(dataset_name(pb::Dataset::TinyImagenet as i32), "tiny_imagenet");
        assert_eq!(sweep_state_name(pb::SweepState::Paused as i32), "paused");
        assert!(sweep_state_is_final(pb::SweepState::Failed as i32));
        assert!(!sweep_state_is_final(pb::SweepState::Paused as i32));
        assert_eq!(job_state_name(pb::JobState::Blocked as i32), "blocked");
        let t = prost_types::Timestamp { seconds: 1_795_000_000, nanos: 0 };
        assert_eq!(timestamp_text(Some(&t)), "2026-11-18 11:06:40");
        assert_eq!(timestamp_text(None), "-");
    }
}
