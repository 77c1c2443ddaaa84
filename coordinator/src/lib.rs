//! lth coordinator: the gRPC services, the scheduler's job store and the artifact store.
//!
//! Workers and lthctl talk only to this process; it is the single place that decides which job
//! runs where, so that no job is lost or run twice. Several coordinators may share one Postgres.
//!
//! # Layout
//! - [`rpc`]: the gRPC services (`SweepService`, `WorkerService`) over the shared
//!   [`rpc::Coordinator`] state: wire conversions, limits, WatchSweep, artifact and input
//!   streams, StreamMasks (see its own layout).
//! - [`store`]: the job store, Postgres or SQLite behind one type: sweeps, leases, claims,
//!   completions, repairs, results and the analysis views' reads.
//! - [`group_commit`]: concurrent ClaimJobs / UploadArtifact records / CompleteJob calls batched
//!   into one database round trip each (the batcher, `Coordinator.batcher`).
//! - [`reaper`]: the periodic upkeep (expired leases, sweeps left open, vacuum).
//! - [`artifacts`]: the object store (local directory or S3) for artifacts and uploaded inputs.
//! - [`auth`]: bearer tokens and roles, a tower layer in front of both services.
//! - [`health`]: the gRPC health service, SERVING only while the database answers.
//! - [`http`]: the HTTP port: `/healthz`, Prometheus `/metrics`, the web dashboard.
//! - [`server`]: assembles all of the above and serves until shutdown.
//! - [`config`]: flags, `LTH_*` variables and the TOML file, merged.
//! - `main.rs` the `lth-coordinator` binary; `bin/bench.rs` the claim/complete and submit
//!   benchmark (`lth-coordinator-bench`).

pub mod artifacts;
pub mod auth;
pub mod config;
pub mod group_commit;
pub mod health;
pub mod http;
pub mod reaper;
pub mod rpc;
pub mod server;
pub mod store;
