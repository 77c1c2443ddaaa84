//! The worker's process-level tests (daemon_e2e, dashboard_browser) share lth-testkit's harness;
//! this module re-exports what they used to find here, so tests written against it keep compiling.
#![allow(unused_imports)]

pub use lth_testkit::process::{children_of, is_zombie};
pub use lth_testkit::results::{assert_one_result_per_trial_level, bit_string, run_local, stored_results, StoredLevel};
pub use lth_testkit::{bin, free_port, newest_mtime, Cluster, DigitsSweep, Proc, TestDb};
