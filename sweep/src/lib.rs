//! The sweep domain model shared by every lth component.
//!
//! One hyper-parameter set (as in open_lth) is the sweep file's TOML schema, the protocol's
//! `SweepSpec`, the engine's training recipe and the input of each job's content hash. This crate
//! has no tch dependency so that the control plane can validate and expand sweeps without libtorch.
//!
//! # Layout
//! - `types`: the sweep file's schema (`SweepSpec`, `Recipe`, `DatasetSpec`, `PrunePolicy`, ...).
//! - `model`: `ModelSpec`, a built-in model or a TorchScript file identified by its sha256.
//! - `rate`: `Rate`, one pruning rate for every level or a per-level schedule.
//! - `control`: `Control`, the reinit / random-mask controls run beside a ticket.
//! - `length`: training lengths in open_lth's notation ("160ep", "1000it").
//! - `validate`: every rule a spec must meet, all problems reported at once.
//! - `expand`: the grid (dense jobs, trials, levels, controls) and content hashes.
//! - `pattern`: `*` / `?` name patterns for `pruning.layers`.
//! - `convert`: the typed spec to and from the wire's `lth.v1.SweepSpec`.
//! - `bundle`: `bundle = "metrics" | "metrics+rates"`: which level jobs train together.
//! - `state`: sweep, trial, job and attempt states as enums, and the pure rules between them
//!   (which operations a sweep state allows, a job's initial state, the uploads a job kind needs,
//!   why a heartbeat aborts a job).
//! - `result`: `LevelResult`, one level's result as the engine emits it, the wire carries it and
//!   the store records it, with its validation (numbers that are numbers unless the run diverged,
//!   masks that match their counts, the model's layers) and its wire and JSON forms.
//! - `pack`: an ImageFolder tree as a deterministic tar (for `lthctl dataset upload`) and back.

mod bundle;
mod control;
mod convert;
mod expand;
mod length;
mod model;
pub mod pack;
mod pattern;
mod rate;
pub mod result;
pub mod state;
mod types;
mod validate;

pub use bundle::{bundleable, BundleMode, DEFAULT_MAX_BUNDLE, MAX_BUNDLE_LIMIT};
pub use control::Control;
pub use expand::{check_grid_size, control_hash, dense_hash, level_hash, level_hash_with, ControlPlan, DensePlan, LevelPlan, SweepPlan, TrialPlan};
pub use length::{ParseLengthError, TrainLength};
pub use model::{file_sha256, ModelInit, ModelSpec, TorchScriptModel};
pub use pattern::name_matches;
pub use rate::Rate;
pub use types::*;
pub use validate::{levels_to_reach, levels_to_reach_schedule, SpecError, ValidationErrors, MAX_LEVELS};
