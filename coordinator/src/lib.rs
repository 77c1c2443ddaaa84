//! lth coordinator: the gRPC services, the scheduler's job store and the artifact store.
//!
//! Workers and lthctl talk only to this process; it is the single place that decides which job
//! runs where, so that no job is lost or run twice. Several coordinators may share one Postgres.

pub mod artifacts;
pub mod auth;
pub mod config;
pub mod download;
pub mod group_commit;
pub mod health;
pub mod http;
pub mod masks_rpc;
pub mod server;
pub mod service;
pub mod store;
