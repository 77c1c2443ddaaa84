//! The daemon's connection to the coordinator and what it does when a call fails.
//!
//! The coordinator may restart or be unreachable for a while; running jobs must keep going and
//! their writes must eventually land. So every call is classified: transient (retry with capped
//! exponential backoff), lease lost (FAILED_PRECONDITION: the job is no longer ours, kill it and
//! drop it), an input lost from the object store (the coordinator repairs it and takes the job
//! back: drop it), unknown worker (register again), or permanent (a bug or bad data: report it).

use lth_proto::client::{ClientOptions, TokenInterceptor};
use lth_proto::v1::worker_service_client::WorkerServiceClient;
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Messages carry masks (ResNet-18: 1.4 MB as bits) and artifact chunks; allow generous sizes.
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Every call carries the worker's token (LTH_TOKEN / --token-file).
pub type Client = WorkerServiceClient<InterceptedService<Channel, TokenInterceptor>>;

/// A lazily connecting channel: tonic reconnects by itself once the coordinator is back.
/// `https://` means TLS (LTH_TLS_CA; LTH_TLS_CLIENT_CERT/KEY for mutual TLS).
pub fn connect(url: &str, opts: &ClientOptions) -> anyhow::Result<Client> {
    let endpoint = opts
        .endpoint(url)
        .map_err(|e| anyhow::anyhow!("--coordinator {url:?}: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_keepalive(Some(Duration::from_secs(20)))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10));
    let channel = endpoint.connect_lazy();
    Ok(WorkerServiceClient::with_interceptor(channel, opts.interceptor()?)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// How a failed call should be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The coordinator is away or overloaded: try again later.
    Transient,
    /// The (job, attempt) is no longer current: the job must be killed and forgotten.
    LeaseLost,
    /// The coordinator does not know this worker (e.g. its store was reset): register again.
    UnknownWorker,
    /// Another daemon process registered under this worker id after this one (a second daemon
    /// with the same id, or this one taken for dead and restarted): the jobs leased to the id were
    /// re-queued. This daemon must stop.
    Superseded,
    /// A download found its file lost from the object store: the coordinator re-runs the job
    /// that made it and has taken the downloading job back. Drop the attempt; it is not a failure.
    ArtifactLost,
    /// Anything else: a bug or invalid data, retrying will not help.
    Permanent,
}

/// Decides from the status's reason code (`lth_proto::errors`), never from its message. Statuses
/// without one come from the transport, a proxy or an older coordinator: the gRPC code decides.
pub fn classify(status: &Status) -> Failure {
    use lth_proto::v1::ErrorReason as R;
    if let Some(reason) = lth_proto::errors::error_reason(status) {
        return match reason {
            R::UnknownWorker => Failure::UnknownWorker,
            R::WorkerSuperseded => Failure::Superseded,
            R::StaleLease => Failure::LeaseLost,
            R::ArtifactLost => Failure::ArtifactLost,
            R::StoreUnavailable => Failure::Transient,
            R::MissingUploads | R::InvalidResult | R::LimitExceeded | R::NotFound | R::Refused | R::InvalidArgument | R::AlreadyExists | R::Unspecified => Failure::Permanent,
            // Auth refusals: a token or certificate must change, retrying will not help.
            R::MissingToken | R::UnknownToken | R::RoleRefused | R::NotOwner | R::ClientCertRequired => Failure::Permanent,
        };
    }
    match status.code() {
        Code::FailedPrecondition => Failure::LeaseLost,
        Code::Unavailable
        | Code::Unknown
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::ResourceExhausted
        | Code::Aborted => Failure::Transient,
        // A message from a coordinator that lost its connection mid-call comes back as Internal
        // with an h2/transport text (tonic's own, not ours); the call can be retried.
        Code::Internal if is_transport_error(status) => Failure::Transient,
        _ => Failure::Permanent,
    }
}

fn is_transport_error(status: &Status) -> bool {
    let m = status.message().to_ascii_lowercase();
    m.contains("transport") || m.contains("h2 protocol") || m.contains("connection") || m.contains("broken pipe")
}

/// Capped exponential backoff with jitter, for reconnecting while the coordinator is away.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff { base, cap, next: base }
    }

    /// The default for coordinator calls: 250 ms doubling up to 10 s.
    pub fn coordinator() -> Self {
        Self::new(Duration::from_millis(250), Duration::from_secs(10))
    }

    /// The next wait (with up to 25% jitter so that many workers do not reconnect in lockstep).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.cap);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
        let jitter = d.mul_f64((nanos % 1000) as f64 / 4000.0);
        d + jitter
    }

    pub fn reset(&mut self) {
        self.next = self.base;
    }
}

/// Runs `call` until it succeeds or fails with anything but a transient error, backing off
/// between tries. Logs the first transient failure and then every tenth.
pub async fn retry_transient<T, F, Fut>(what: &str, mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let mut backoff = Backoff::coordinator();
    let mut failures = 0u32;
    loop {
        match call().await {
            Ok(v) => {
                if failures > 0 {
                    tracing::info!(what, failures, "coordinator reachable again");
                }
                return Ok(v);
            }
            Err(status) if classify(&status) == Failure::Transient => {
                if failures % 10 == 0 {
                    tracing::warn!(what, code = ?status.code(), error = %status.message(), "coordinator call failed; retrying with backoff");
                }
                failures += 1;
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(status) => return Err(status),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_by_reason_code_not_by_message() {
        use lth_proto::errors::error_status;
        use lth_proto::v1::ErrorReason as R;
        let with = |code, reason, msg: &str| classify(&error_status(code, reason, msg));
        assert_eq!(with(Code::FailedPrecondition, R::UnknownWorker, "worker \"w1\" is not registered"), Failure::UnknownWorker);
        assert_eq!(with(Code::FailedPrecondition, R::StaleLease, "lease job 3 attempt 1 is not current"), Failure::LeaseLost);
        assert_eq!(with(Code::FailedPrecondition, R::MissingUploads, "upload weights first"), Failure::Permanent);
        assert_eq!(with(Code::Unavailable, R::StoreUnavailable, "database error"), Failure::Transient);
        assert_eq!(with(Code::FailedPrecondition, R::ArtifactLost, "artifact \"weights\" of job 4 is missing"), Failure::ArtifactLost);
        assert_eq!(with(Code::NotFound, R::NotFound, "no artifact for worker w1"), Failure::Permanent, "the word worker means nothing");
        // Without a reason code: the gRPC code decides (transport errors, proxies, old coordinators).
        assert_eq!(classify(&Status::failed_precondition("stale attempt")), Failure::LeaseLost);
        assert_eq!(classify(&Status::unavailable("down")), Failure::Transient);
        assert_eq!(classify(&Status::not_found("unknown worker w1")), Failure::Permanent);
        assert_eq!(classify(&Status::invalid_argument("bad")), Failure::Permanent);
        assert_eq!(classify(&Status::unauthenticated("/lth.v1.WorkerService/ClaimJobs needs a token with role worker or admin")), Failure::Permanent);
        assert_eq!(classify(&Status::permission_denied("needs role worker")), Failure::Permanent);
    }

    #[test]
    fn backoff_is_capped() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let waits: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
        assert!(waits[0] >= Duration::from_millis(100) && waits[0] < Duration::from_millis(130));
        assert!(waits[5] >= Duration::from_millis(800) && waits[5] <= Duration::from_millis(1000));
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(130));
    }
}
