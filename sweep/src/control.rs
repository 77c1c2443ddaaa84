//! The classic lottery-ticket controls (Frankle & Carbin 2019; open_lth's `randomly_reinitialize`
//! and `randomly_prune` branches), run beside a ticket at chosen levels:
//! `controls = ["reinit", "random_mask"]`, `control_levels = [5, 10]`.
//!
//! A control job is a child of the level it controls: it reads that level's mask and the seed's θk,
//! and trains the same span as the ticket (from the rewind point k to the end of training).

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Control {
    /// The ticket's mask, trained from a fresh random initialisation (drawn from a seed derived
    /// from the trial's seed, the level and "reinit") instead of θk.
    Reinit,
    /// θk trained under a random mask that keeps exactly the ticket's number of weights in every
    /// layer (open_lth's `randomly_prune` with the layerwise strategy).
    RandomMask,
}

impl Control {
    pub const ALL: [Control; 2] = [Control::Reinit, Control::RandomMask];

    pub fn as_str(self) -> &'static str {
        match self {
            Control::Reinit => "reinit",
            Control::RandomMask => "random_mask",
        }
    }

    /// Parses the name used in sweep files (or open_lth's branch name).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "reinit" | "random_reinit" | "reinitialize" | "randomly_reinitialize" => Ok(Control::Reinit),
            "random_mask" | "randomly_prune" | "random_prune" | "shuffled_mask" => Ok(Control::RandomMask),
            _ => Err(format!("unknown control {s:?}; the controls are {}", Self::ALL.map(|c| c.as_str()).join(", "))),
        }
    }
}

impl<'de> Deserialize<'de> for Control {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Control::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
