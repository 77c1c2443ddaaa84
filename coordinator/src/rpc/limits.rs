//! The size and naming rules of the services (issue 9, failure 6): how many rows a page holds and
//! how large it may encode, what a worker may call itself, which artifact names a job may upload,
//! and how many jobs one claim hands out. Pure functions, tested here without a server.

use lth_proto::v1 as pb;
use lth_sweep::state::JobKind;
use tonic::Status;

/// Rows per ListJobs / ListWorkers page: 0 asks for the default.
const DEFAULT_PAGE: u32 = 1_000;
const MAX_PAGE: u32 = 10_000;
/// A page ends before its encoding passes this, well under gRPC's 4 MiB default message limit
/// (a failed job's error text holds the end of its log, up to a few KiB).
const MAX_PAGE_BYTES: usize = 2 << 20;

/// At most this many jobs per claim, whatever a worker asks for.
pub(super) const MAX_CLAIM: u32 = 64;

const MAX_WORKER_ID_CHARS: usize = 128;

/// LIMIT_EXCEEDED: the request is over a configured limit; retrying it unchanged cannot help.
pub(super) fn limit_exceeded(message: String) -> Status {
    lth_proto::errors::error_status(tonic::Code::InvalidArgument, pb::ErrorReason::LimitExceeded, message)
}

/// An input upload over `--max-input-bytes`.
pub(super) fn too_large(name: &str, bytes: u64, max: u64) -> Status {
    lth_proto::errors::error_status(
        tonic::Code::ResourceExhausted,
        pb::ErrorReason::LimitExceeded,
        format!(
            "{name:?} is {bytes} bytes or more, over this coordinator's upload limit of {max} bytes: ask its admin to raise --max-input-bytes, or put the file where the workers can read it and give its path"
        ),
    )
}

pub(super) fn page_size(asked: u32) -> u32 {
    if asked == 0 {
        DEFAULT_PAGE
    } else {
        asked.min(MAX_PAGE)
    }
}

/// The rule for a page: at most `size` items (the store fetched one more, to know whether
/// another page follows) and at most [`MAX_PAGE_BYTES`] encoded. Returns the page and whether
/// more follow.
pub(super) fn page<T: prost::Message>(mut items: Vec<T>, size: u32) -> (Vec<T>, bool) {
    let mut more = items.len() > size as usize;
    items.truncate(size as usize);
    let mut bytes = 0usize;
    for (i, item) in items.iter().enumerate() {
        bytes += item.encoded_len() + 8;
        if bytes > MAX_PAGE_BYTES && i > 0 {
            items.truncate(i);
            more = true;
            break;
        }
    }
    (items, more)
}

/// The worker-id rule: what a daemon may call itself (it names the worker in every listing, log
/// line and lease).
pub(super) fn check_worker_id(id: &str) -> Result<(), String> {
    if id.trim().is_empty() {
        return Err("worker_id is empty: use a stable id such as host name plus GPU set".into());
    }
    let n = id.chars().count();
    if n > MAX_WORKER_ID_CHARS {
        return Err(format!("worker_id has {n} characters; at most {MAX_WORKER_ID_CHARS} are allowed (host name plus GPU set fits)"));
    }
    if let Some(c) = id.chars().find(|c| c.is_control()) {
        return Err(format!("worker_id contains the control character {c:?}: use printable characters only"));
    }
    if id.trim() != id {
        return Err("worker_id starts or ends with white space".into());
    }
    Ok(())
}

/// The longest daemon-process id (RegisterWorkerRequest.instance) accepted.
pub(super) const MAX_INSTANCE_CHARS: usize = 64;

/// The daemon-process id rule: empty (not said) or up to [`MAX_INSTANCE_CHARS`] printable
/// characters (the daemons make 32 hex digits).
pub(super) fn check_instance(instance: &str) -> Result<(), String> {
    let n = instance.chars().count();
    if n > MAX_INSTANCE_CHARS {
        return Err(format!("instance has {n} characters; at most {MAX_INSTANCE_CHARS} are allowed (a random id of the daemon process)"));
    }
    if instance.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("instance contains white space or a control character: use printable characters only".into());
    }
    Ok(())
}

/// The artifacts a job of `kind` may upload: what its children download (`uploads_needed`),
/// and the checkpoint it resumes from.
pub(super) fn allowed_uploads(kind: JobKind) -> &'static [&'static str] {
    kind.uploads_allowed()
}

/// The shape of any artifact name (before the job kind's own list is consulted): a short file
/// name, never a path.
pub(super) fn valid_artifact_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        && !name.starts_with('.')
}

#[cfg(test)]
mod rules {
    use super::*;

    #[test]
    fn worker_ids_are_short_and_printable() {
        assert!(check_worker_id("gpu-node-7/0,1").is_ok());
        assert!(check_worker_id(&"é".repeat(128)).is_ok(), "characters, not bytes");
        assert!(check_worker_id(&"x".repeat(129)).unwrap_err().contains("129 characters"));
        assert!(check_worker_id("").is_err());
        assert!(check_worker_id("   ").is_err());
        assert!(check_worker_id("a\u{0}b").unwrap_err().contains("control character"));
        assert!(check_worker_id("line\nbreak").is_err());
        assert!(check_worker_id(" padded").is_err());
    }

    #[test]
    fn pages_hold_at_most_size_items_and_two_mib() {
        let jobs = |n: usize, error: usize| (0..n).map(|i| pb::JobInfo { job_id: i as i64 + 1, error: "e".repeat(error), ..Default::default() }).collect::<Vec<_>>();
        let (p, more) = page(jobs(11, 0), 10);
        assert_eq!((p.len(), more), (10, true));
        let (p, more) = page(jobs(10, 0), 10);
        assert_eq!((p.len(), more), (10, false));
        // 1,000 failed jobs with 4 KiB of log each would be a 4 MiB reply: cut at 2 MiB.
        let (p, more) = page(jobs(1000, 4096), 1000);
        assert!(more && p.len() < 520 && p.len() > 400, "{}", p.len());
        assert!(p.iter().map(|j| prost::Message::encoded_len(j)).sum::<usize>() <= MAX_PAGE_BYTES);
        assert_eq!(page_size(0), DEFAULT_PAGE);
        assert_eq!(page_size(1 << 30), MAX_PAGE);
    }

    #[test]
    fn uploads_are_the_names_the_job_kind_expects() {
        assert_eq!(allowed_uploads(JobKind::Dense), &["rewind", "weights", "checkpoint"]);
        assert!(!allowed_uploads(JobKind::Level).contains(&"rewind"));
        for kind in JobKind::ALL {
            for need in crate::store::uploads_needed(kind.as_str()) {
                assert!(allowed_uploads(*kind).contains(need), "{kind} must be allowed to upload {need}");
            }
            for name in allowed_uploads(*kind) {
                assert!(valid_artifact_name(name), "{name}");
            }
        }
        let long = "x".repeat(65);
        for bad in ["", ".hidden", "../weights", "a/b", long.as_str()] {
            assert!(!valid_artifact_name(bad), "{bad:?}");
        }
    }
}
