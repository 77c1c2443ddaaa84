//! Training lengths in open_lth's notation: `160ep` (epochs) or `1000it` (iterations).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A point or span in training, counted in epochs or iterations (`"160ep"`, `"1000it"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrainLength {
    Epochs(u64),
    Iterations(u64),
}

impl TrainLength {
    pub const ZERO: TrainLength = TrainLength::Iterations(0);

    /// The length in optimizer steps, given how many steps make one epoch.
    pub fn iterations(self, iterations_per_epoch: u64) -> u64 {
        match self {
            TrainLength::Epochs(e) => e * iterations_per_epoch,
            TrainLength::Iterations(i) => i,
        }
    }

    pub fn is_zero(self) -> bool {
        matches!(self, TrainLength::Epochs(0) | TrainLength::Iterations(0))
    }
}

impl Default for TrainLength {
    fn default() -> Self {
        TrainLength::ZERO
    }
}

impl fmt::Display for TrainLength {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrainLength::Epochs(e) => write!(f, "{e}ep"),
            TrainLength::Iterations(i) => write!(f, "{i}it"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid training length {0:?}: write a whole number followed by `ep` (epochs) or `it` (iterations), e.g. \"160ep\" or \"1000it\"")]
pub struct ParseLengthError(pub String);

impl FromStr for TrainLength {
    type Err = ParseLengthError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let (num, ctor): (&str, fn(u64) -> TrainLength) = if let Some(n) = t.strip_suffix("ep") {
            (n, TrainLength::Epochs)
        } else if let Some(n) = t.strip_suffix("it") {
            (n, TrainLength::Iterations)
        } else {
            return Err(ParseLengthError(s.to_string()));
        };
        num.trim().parse::<u64>().map(ctor).map_err(|_| ParseLengthError(s.to_string()))
    }
}

impl Serialize for TrainLength {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TrainLength {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_open_lth_notation() {
        assert_eq!("160ep".parse(), Ok(TrainLength::Epochs(160)));
        assert_eq!("1000it".parse(), Ok(TrainLength::Iterations(1000)));
        assert_eq!(TrainLength::Epochs(2).iterations(391), 782);
        assert!("160".parse::<TrainLength>().is_err());
        assert!("-3ep".parse::<TrainLength>().is_err());
        assert!("ep".parse::<TrainLength>().is_err());
        assert_eq!(TrainLength::Iterations(7).to_string(), "7it");
    }
}
