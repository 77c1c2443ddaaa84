//! lth worker library: the training engine ([`engine`]) that runs one lottery-ticket chain step,
//! usable without the daemon, and the local chain runner behind `lth-worker run-local`.
//!
//! # Layout
//! - [`engine`]: one chain step as a library call (models, data, pruning, training, bundles,
//!   checkpoints); it emits the domain's `lth_sweep::result::LevelResult` inside its
//!   [`engine::LevelReport`]. Links libtorch (tch) and the C++ shim `worker/shim/lth_shim.cpp`.
//! - [`daemon`]: `lth-worker daemon`: registration, job slots, claims, heartbeats, the artifact
//!   cache, one child process (`lth-worker exec-job`) per job (see its own layout).
//! - [`local`]: `lth-worker run-local`, a whole chain without a coordinator (the reference the
//!   process tests compare stored results with, bit for bit).
//! - `main.rs`: the `lth-worker` binary (daemon, exec-job, run-local, bench).

pub mod daemon;
pub mod engine;
pub mod local;
