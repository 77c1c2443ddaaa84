//! lth worker library: the training engine ([`engine`]) that runs one lottery-ticket chain step,
//! usable without the daemon, and the local chain runner behind `lth-worker run-local`.

pub mod daemon;
pub mod engine;
pub mod local;
