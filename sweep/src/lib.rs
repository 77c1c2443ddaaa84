//! The sweep domain model shared by every lth component.
//!
//! One hyper-parameter set (as in open_lth) is the sweep file's TOML schema, the protocol's
//! `SweepSpec`, the engine's training recipe and the input of each job's content hash. This crate
//! has no tch dependency so that the control plane can validate and expand sweeps without libtorch.

mod convert;
mod expand;
mod length;
mod types;
mod validate;

pub use expand::{dense_hash, level_hash, DensePlan, LevelPlan, SweepPlan, TrialPlan};
pub use length::{ParseLengthError, TrainLength};
pub use types::*;
pub use validate::{levels_to_reach, SpecError, ValidationErrors, MAX_LEVELS};
