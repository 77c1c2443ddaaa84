//! Harness pieces shared by lth's integration tests, so that the worker's, the coordinator's,
//! lthctl's and the fault suite's tests start databases and processes the same way. A
//! dev-dependency only; it links no tch (`cargo tree -p lth-testkit`).
//!
//! # Layout
//! - [`db`]: a fresh database per test ([`TestDb`]: Postgres on `LTH_TEST_DATABASE_URL`'s server,
//!   or a SQLite file), dropped with the value.
//! - [`pg_cluster`]: a throwaway PostgreSQL cluster of the test's own ([`PgCluster`]), for tests
//!   that stop or kill the database; the machine's cluster is never touched.
//! - [`process`]: the workspace's binaries (`target/{debug,release}`, built when missing or
//!   stale), processes with their logs in files ([`Proc`]), clean stop and `kill -9` of a process
//!   or its group, log dump when a test fails, process-table helpers.
//! - [`coordinator`]: `lth-coordinator` on port 0 with the addresses it printed (no port is picked
//!   and released before the coordinator binds it).
//! - [`cluster`]: a coordinator, its database and CPU worker daemons in one temporary folder,
//!   with the gRPC calls the process tests make.
//! - [`results`]: stored results read back from Postgres (or SQLite: [`results::sqlite`]), and
//!   `lth-worker run-local`'s for the same chain, to compare bit for bit.
//! - [`sweeps`]: small digits sweeps as TOML or [`lth_sweep::SweepSpec`].

pub mod cluster;
pub mod coordinator;
pub mod db;
pub mod pg_cluster;
pub mod process;
pub mod results;
pub mod sweeps;

pub use cluster::Cluster;
pub use coordinator::{Coordinator, CoordinatorOptions};
pub use db::TestDb;
pub use pg_cluster::PgCluster;
pub use process::{bin, free_port, newest_mtime, Proc};
pub use sweeps::DigitsSweep;

/// Runs `fut` to completion on a private runtime on its own thread: usable from synchronous
/// tests, from inside a test's runtime, and from `Drop`.
pub(crate) fn block_on<F, T>(fut: F) -> T
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime for the test harness");
        rt.block_on(fut)
    })
    .join()
    .expect("test harness thread panicked")
}
