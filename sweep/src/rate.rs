//! Pruning rates: one rate for every level (`0.2`), or a per-level schedule (`[0.2, 0.2, 0.5]`).
//!
//! A schedule lists the fraction of the remaining weights pruned at levels 1, 2, 3, ...; levels
//! deeper than the list (when `levels` or `target_sparsity` asks for more) repeat its last rate.
//! Both kinds mix in one `rates` list: `rates = [0.2, [0.5, 0.2]]` is two trials per metric and seed.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum Rate {
    /// The same rate at every level.
    Constant(f64),
    /// The rate of level i is entry i-1; later levels repeat the last entry.
    Schedule(Vec<f64>),
}

impl Rate {
    /// The rate applied at `level` (≥ 1).
    pub fn at_level(&self, level: u32) -> f64 {
        match self {
            Rate::Constant(r) => *r,
            Rate::Schedule(v) => {
                let i = (level.max(1) as usize - 1).min(v.len().saturating_sub(1));
                v.get(i).copied().unwrap_or(f64::NAN)
            }
        }
    }

    /// The rate of level 1 (a trial's `rate` in the plan and the store).
    pub fn first(&self) -> f64 {
        self.at_level(1)
    }

    pub fn schedule(&self) -> Option<&[f64]> {
        match self {
            Rate::Schedule(v) => Some(v),
            Rate::Constant(_) => None,
        }
    }

    /// Every rate listed (one for a constant).
    pub fn values(&self) -> &[f64] {
        match self {
            Rate::Constant(r) => std::slice::from_ref(r),
            Rate::Schedule(v) => v,
        }
    }

    /// Sparsity after `levels` levels: 1 − Π (1 − rate of level i), before any minimum-keep guard.
    pub fn sparsity_after(&self, levels: u32) -> f64 {
        1.0 - (1..=levels).map(|l| 1.0 - self.at_level(l)).product::<f64>()
    }
}

impl From<f64> for Rate {
    fn from(r: f64) -> Self {
        Rate::Constant(r)
    }
}

impl PartialEq<f64> for Rate {
    fn eq(&self, other: &f64) -> bool {
        matches!(self, Rate::Constant(r) if r == other)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rate::Constant(r) => write!(f, "{r}"),
            Rate::Schedule(v) => write!(f, "[{}]", v.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", ")),
        }
    }
}

/// A constant serialises as a plain number (so sweep files, stored specs and hashes without
/// schedules are unchanged), a schedule as a list.
impl Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Rate::Constant(r) => s.serialize_f64(*r),
            Rate::Schedule(v) => v.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Rate;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a pruning rate such as 0.2, or a per-level schedule such as [0.2, 0.2, 0.5]")
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Rate, E> {
                Ok(Rate::Constant(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Rate, E> {
                Ok(Rate::Constant(v as f64))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Rate, E> {
                Ok(Rate::Constant(v as f64))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Rate, A::Error> {
                let mut v = Vec::new();
                while let Some(r) = seq.next_element::<f64>()? {
                    v.push(r);
                }
                Ok(Rate::Schedule(v))
            }
        }
        d.deserialize_any(V)
    }
}
