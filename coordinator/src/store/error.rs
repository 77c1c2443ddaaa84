//! Why a store operation did not happen.

use super::types::Lease;

/// Why a store operation did not happen. Each maps onto one gRPC status code.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    NotFound(String),
    /// The object is in a state that forbids the operation (pausing a finished sweep, …).
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The worker is not registered (never was, or the store was reset): register again.
    #[error("{0}")]
    UnknownWorker(String),
    /// Another daemon process registered the worker id since this one did (the id is shared, or
    /// this process was taken for dead): this process must stop.
    #[error("{0}")]
    Superseded(String),
    /// The caller's lease (job, attempt) is no longer the job's current running attempt.
    #[error("{0}")]
    StaleLease(String),
    /// A completion came before the uploads the job's children need.
    #[error("{0}")]
    MissingUploads(String),
    #[error("{0}")]
    InvalidArgument(String),
    /// A completion's result is not valid (a loss that is not a number without `diverged`, an
    /// accuracy out of range, a layer the model does not have, …): retrying it cannot help.
    #[error("{0}")]
    InvalidResult(String),
    #[error("cannot open the database: {0}")]
    Connect(String),
    #[error("database migration failed: {0}")]
    Migrate(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

impl StoreError {
    /// The machine-readable cause sent to clients with this error.
    pub fn reason(&self) -> lth_proto::v1::ErrorReason {
        use lth_proto::v1::ErrorReason as R;
        match self {
            StoreError::NotFound(_) => R::NotFound,
            StoreError::FailedPrecondition(_) => R::Refused,
            StoreError::AlreadyExists(_) => R::AlreadyExists,
            StoreError::InvalidArgument(_) => R::InvalidArgument,
            StoreError::InvalidResult(_) => R::InvalidResult,
            StoreError::UnknownWorker(_) => R::UnknownWorker,
            StoreError::Superseded(_) => R::WorkerSuperseded,
            StoreError::StaleLease(_) => R::StaleLease,
            StoreError::MissingUploads(_) => R::MissingUploads,
            StoreError::Connect(_) | StoreError::Migrate(_) | StoreError::Db(_) => R::StoreUnavailable,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A lease that is not the job's current running attempt.
pub(crate) fn stale(lease: Lease) -> StoreError {
    StoreError::StaleLease(format!(
        "lease {lease} is not current (the lease was lost, the job was re-queued, or the sweep was paused or cancelled): stop this attempt and claim again"
    ))
}

/// A worker the store does not know.
pub(crate) fn unknown_worker(worker_id: &str) -> StoreError {
    StoreError::UnknownWorker(format!("worker {worker_id:?} is not registered: call RegisterWorker first"))
}

/// A heartbeat from a daemon process that another one replaced under the same worker id.
pub(crate) fn superseded(worker_id: &str) -> StoreError {
    StoreError::Superseded(format!(
        "another daemon process registered as worker {worker_id:?} after this one, and the jobs leased to the id were re-queued: \
         stop this daemon, and give each daemon its own --worker-id"
    ))
}

/// The sweep does not exist.
pub(crate) fn no_such_sweep(sweep_id: i64) -> StoreError {
    StoreError::NotFound(format!("sweep {sweep_id} does not exist: `lthctl ls` lists the sweeps"))
}
