//! One level's result: what the engine measures, the worker sends with CompleteJob and the store
//! records, as one type with one validation.
//!
//! Before this module there were three shapes (the engine's report, the wire's `LevelResult`, the
//! store's input) and four conversions between them; now the engine emits a [`LevelResult`]
//! (inside its `LevelReport`, which adds the level), the wire message is converted here in both
//! directions, and the store records it as it is. The rules a result must meet before it is
//! recorded ([`LevelResult::validate`], [`layers_match`]) are pure and tested here without a
//! database; the store applies them identically on Postgres and SQLite.
//!
//! A run whose loss or weights stop being numbers is a real outcome, not an error: it is reported
//! with `diverged` and recorded with its level ([`diverged`], [`stored_number`]). Non-finite
//! numbers without `diverged` are refused.

use lth_proto::v1 as pb;
use serde::{Deserialize, Serialize};

/// Unit-level collapse of one layer's mask (see `LayerStats` in the proto): output units
/// (neurons, filters: the weight's first dimension) whose whole fan-in is pruned, and inputs
/// (second dimension) that no kept weight reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnitStats {
    pub outputs: u64,
    pub dead_outputs: u64,
    pub inputs: u64,
    pub dead_inputs: u64,
    /// The classifier: the network's last weight of rank ≥ 2 with one output per class. Its dead
    /// outputs are dead classes, which the network can never predict from its input.
    pub output_layer: bool,
}

/// One prunable layer of a level's result: its mask and what the mask leaves of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "LayerJson", into = "LayerJson")]
pub struct LayerResult {
    /// The parameter's name, e.g. "layer1.0.conv1.weight".
    pub name: String,
    pub kept: u64,
    pub total: u64,
    /// Kept bits, row-major over the weight, MSB-first in each byte; exactly ceil(total / 8)
    /// bytes, zero padding.
    pub bits: Vec<u8>,
    /// kept == 0: no signal passes this layer.
    pub collapsed: bool,
    /// L2 norm of the layer's trained (masked) weights (NaN or infinite when training diverged).
    pub weight_norm: f64,
    /// Dead units, when the worker reports them (None: a worker from before they were counted).
    pub units: Option<UnitStats>,
}

/// One level's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelResult {
    /// Fraction of prunable weights that are pruned.
    pub sparsity: f64,
    /// Top-1, in [0, 1].
    pub test_accuracy: f64,
    #[serde(with = "nonfinite")]
    pub test_loss: f64,
    /// Mean training loss over the last epoch.
    #[serde(with = "nonfinite")]
    pub train_loss: f64,
    /// Epochs trained by this step (from the rewind point for level ≥ 1).
    pub epochs: f64,
    /// Wall time of the process that finished the step.
    pub wall_seconds: f64,
    /// Optimizer steps of this step (from the rewind point for level ≥ 1).
    pub iterations: u64,
    /// In network order (PyTorch's `state_dict` order).
    pub layers: Vec<LayerResult>,
    /// Where it ran ("cpu", "cuda <GPU name>"); empty when the worker did not say (the engine
    /// does not know: the daemon fills it in for its slot).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub device: String,
    /// Training diverged: a loss or a weight norm is NaN or infinite ([`diverged`]). Recorded as
    /// such, with its level.
    #[serde(default)]
    pub diverged: bool,
}

/// Why a result is refused: its text says what is wrong and how to report it instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid result: {0}")]
pub struct InvalidResult(pub String);

/// Whether a finished step diverged: its losses or trained weights stopped being numbers.
pub fn diverged(train_loss: f64, test_loss: f64, weight_norms: impl IntoIterator<Item = f64>) -> bool {
    !train_loss.is_finite() || !test_loss.is_finite() || weight_norms.into_iter().any(|n| !n.is_finite())
}

/// A loss or norm as stored: a diverged run's non-finite values become +Infinity, the same on
/// both backends (SQLite cannot store NaN: it binds as NULL).
pub fn stored_number(x: f64) -> f64 {
    if x.is_finite() {
        x
    } else {
        f64::INFINITY
    }
}

/// The rule for a loss or weight norm: a finite number ≥ 0, or anything when the run diverged.
/// Returns what is wrong, for the error message.
pub fn check_loss(what: &str, x: f64, diverged: bool) -> Result<(), String> {
    if x.is_finite() && x >= 0.0 {
        return Ok(());
    }
    if !x.is_finite() && diverged {
        return Ok(());
    }
    if x.is_finite() {
        Err(format!("{what} = {x} is negative"))
    } else {
        Err(format!("{what} = {x} is not a number: a run whose loss stops being a number diverged; report it with diverged = true"))
    }
}

/// The rule for a result's layers: exactly the model's prunable layers (each once; duplicates
/// are refused earlier, by [`LevelResult::validate`]). The model is known by the layers its dense
/// job reported. Says what differs.
pub fn layers_match(reported: &[&str], model: &[String]) -> Result<(), String> {
    let known: std::collections::HashSet<&str> = model.iter().map(|s| s.as_str()).collect();
    if let Some(unknown) = reported.iter().find(|l| !known.contains(**l)) {
        return Err(format!("layer {unknown:?} is not a layer of this sweep's model (its prunable layers: {})", model.join(", ")));
    }
    let got: std::collections::HashSet<&str> = reported.iter().copied().collect();
    let missing: Vec<&str> = model.iter().map(|s| s.as_str()).filter(|l| !got.contains(l)).collect();
    if !missing.is_empty() {
        return Err(format!("the result lacks the model's layers {missing:?}"));
    }
    Ok(())
}

impl LevelResult {
    /// Rejects results that would corrupt the analysis: numbers that are not numbers (unless the
    /// run diverged, for losses and norms) or out of range, masks whose size or popcount disagree
    /// with kept/total, unit counts that do not fit the weight, duplicate layers. (Layer names the
    /// model does not have are [`layers_match`]'s, which needs the model's layers.)
    pub fn validate(&self) -> Result<(), InvalidResult> {
        let bad = |m: String| Err(InvalidResult(m));
        if !(0.0..=1.0).contains(&self.sparsity) {
            return bad(format!("sparsity = {} is outside [0, 1]", self.sparsity));
        }
        if !(0.0..=1.0).contains(&self.test_accuracy) {
            return bad(format!("test_accuracy = {} is outside [0, 1]", self.test_accuracy));
        }
        if !(self.epochs.is_finite() && self.epochs >= 0.0) {
            return bad(format!("epochs = {} must be a finite number ≥ 0", self.epochs));
        }
        if !(self.wall_seconds.is_finite() && self.wall_seconds >= 0.0) {
            return bad(format!("wall_seconds = {} must be a finite number ≥ 0", self.wall_seconds));
        }
        if self.iterations > i64::MAX as u64 {
            return bad(format!("iterations = {} is out of range", self.iterations));
        }
        for (what, x) in [("test_loss", self.test_loss), ("train_loss", self.train_loss)] {
            if let Err(m) = check_loss(what, x, self.diverged) {
                return bad(m);
            }
        }
        if self.device.len() > 128 || self.device.chars().any(|c| c.is_control()) {
            return bad(format!("result.device must be at most 128 printable characters (got {} bytes)", self.device.len()));
        }
        let mut names = std::collections::HashSet::new();
        for l in &self.layers {
            if !names.insert(l.name.as_str()) {
                return bad(format!("layer {:?} is reported twice", l.name));
            }
            if let Err(m) = check_loss(&format!("layer {:?}: weight_norm", l.name), l.weight_norm, self.diverged) {
                return bad(m);
            }
            if l.total > i64::MAX as u64 {
                return bad(format!("layer {:?}: total {} is out of range", l.name, l.total));
            }
            if l.kept > l.total {
                return bad(format!("layer {:?}: kept {} > total {}", l.name, l.kept, l.total));
            }
            let want = l.total.div_ceil(8) as usize;
            if l.bits.len() != want {
                return bad(format!(
                    "layer {:?}: mask has {} bytes, expected ceil({}/8) = {want} (one bit per weight, MSB-first)",
                    l.name,
                    l.bits.len(),
                    l.total
                ));
            }
            let ones: u64 = l.bits.iter().map(|b| b.count_ones() as u64).sum();
            let pad = (want as u64) * 8 - l.total;
            if pad > 0 && (l.bits[want - 1] & ((1u8 << pad) - 1)) != 0 {
                return bad(format!("layer {:?}: the mask's padding bits after bit {} must be zero", l.name, l.total));
            }
            if ones != l.kept {
                return bad(format!("layer {:?}: mask has {ones} bits set but kept = {}", l.name, l.kept));
            }
            if let Some(u) = &l.units {
                let block = u.outputs.saturating_mul(u.inputs.max(1));
                if u.dead_outputs > u.outputs || u.dead_inputs > u.inputs || block == 0 || l.total % block != 0 {
                    return bad(format!(
                        "layer {:?}: units (outputs {}, dead {}; inputs {}, dead {}) do not fit a weight of {} entries",
                        l.name, u.outputs, u.dead_outputs, u.inputs, u.dead_inputs, l.total
                    ));
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The wire: `lth.v1.LevelResult` / `LayerStats`. Units travel flat, outputs = 0 meaning "not
// reported"; every other field is the same.
// ---------------------------------------------------------------------------------------------

impl From<pb::LayerStats> for LayerResult {
    fn from(l: pb::LayerStats) -> LayerResult {
        LayerResult {
            units: (l.outputs > 0).then_some(UnitStats {
                outputs: l.outputs,
                dead_outputs: l.dead_outputs,
                inputs: l.inputs,
                dead_inputs: l.dead_inputs,
                output_layer: l.output_layer,
            }),
            name: l.layer,
            kept: l.kept,
            total: l.total,
            bits: l.mask_bits,
            collapsed: l.collapsed,
            weight_norm: l.weight_norm,
        }
    }
}

impl From<LayerResult> for pb::LayerStats {
    fn from(l: LayerResult) -> pb::LayerStats {
        let u = l.units.unwrap_or_default();
        pb::LayerStats {
            layer: l.name,
            kept: l.kept,
            total: l.total,
            mask_bits: l.bits,
            collapsed: l.collapsed,
            weight_norm: l.weight_norm,
            outputs: u.outputs,
            dead_outputs: u.dead_outputs,
            inputs: u.inputs,
            dead_inputs: u.dead_inputs,
            output_layer: u.output_layer,
        }
    }
}

/// A CompleteJob result as the store records it (validated there, not here: a conversion cannot
/// fail, so the refusal comes with the store's reason code).
impl From<pb::LevelResult> for LevelResult {
    fn from(r: pb::LevelResult) -> LevelResult {
        LevelResult {
            sparsity: r.sparsity,
            test_accuracy: r.test_accuracy,
            test_loss: r.test_loss,
            train_loss: r.train_loss,
            epochs: r.epochs,
            wall_seconds: r.wall_seconds,
            iterations: r.iterations,
            layers: r.layers.into_iter().map(LayerResult::from).collect(),
            device: r.device,
            diverged: r.diverged,
        }
    }
}

impl From<LevelResult> for pb::LevelResult {
    fn from(r: LevelResult) -> pb::LevelResult {
        pb::LevelResult {
            sparsity: r.sparsity,
            test_accuracy: r.test_accuracy,
            test_loss: r.test_loss,
            train_loss: r.train_loss,
            epochs: r.epochs,
            wall_seconds: r.wall_seconds,
            iterations: r.iterations,
            layers: r.layers.into_iter().map(pb::LayerStats::from).collect(),
            device: r.device,
            diverged: r.diverged,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// JSON (the job process's `report.json`, read by the daemon and by `lth-worker run-local`'s
// resume): layers keep the flat shape of the files written before this type existed.
// ---------------------------------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct LayerJson {
    name: String,
    kept: u64,
    total: u64,
    mask_bits: Vec<u8>,
    collapsed: bool,
    #[serde(with = "nonfinite")]
    weight_norm: f64,
    // Reports written before dead units were counted lack these: they read as 0, "not reported".
    #[serde(default)]
    outputs: u64,
    #[serde(default)]
    dead_outputs: u64,
    #[serde(default)]
    inputs: u64,
    #[serde(default)]
    dead_inputs: u64,
    #[serde(default)]
    output_layer: bool,
}

impl From<LayerJson> for LayerResult {
    fn from(l: LayerJson) -> LayerResult {
        LayerResult {
            units: (l.outputs > 0).then_some(UnitStats {
                outputs: l.outputs,
                dead_outputs: l.dead_outputs,
                inputs: l.inputs,
                dead_inputs: l.dead_inputs,
                output_layer: l.output_layer,
            }),
            name: l.name,
            kept: l.kept,
            total: l.total,
            bits: l.mask_bits,
            collapsed: l.collapsed,
            weight_norm: l.weight_norm,
        }
    }
}

impl From<LayerResult> for LayerJson {
    fn from(l: LayerResult) -> LayerJson {
        let u = l.units.unwrap_or_default();
        LayerJson {
            name: l.name,
            kept: l.kept,
            total: l.total,
            mask_bits: l.bits,
            collapsed: l.collapsed,
            weight_norm: l.weight_norm,
            outputs: u.outputs,
            dead_outputs: u.dead_outputs,
            inputs: u.inputs,
            dead_inputs: u.dead_inputs,
            output_layer: u.output_layer,
        }
    }
}

/// JSON has no NaN or infinity (serde_json writes `null`, which then does not read back as an
/// f64): numbers that may be non-finite are written as the strings "NaN", "inf", "-inf".
pub mod nonfinite {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        if x.is_finite() {
            s.serialize_f64(*x)
        } else if x.is_nan() {
            s.serialize_str("NaN")
        } else if *x > 0.0 {
            s.serialize_str("inf")
        } else {
            s.serialize_str("-inf")
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Num {
        N(f64),
        S(String),
        Null(()),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        match Num::deserialize(d)? {
            Num::N(x) => Ok(x),
            // Reports written before this encoding had null for a NaN.
            Num::Null(()) => Ok(f64::NAN),
            Num::S(s) => match s.as_str() {
                "NaN" => Ok(f64::NAN),
                "inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                other => Err(serde::de::Error::custom(format!("{other:?} is not a number"))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid two-layer result: fc1 keeps 3 of 10 weights (2 bytes of mask), fc2 all 4 (with
    /// units: 2 outputs × 2 inputs, nothing dead).
    fn valid() -> LevelResult {
        LevelResult {
            sparsity: 0.5,
            test_accuracy: 0.9,
            test_loss: 0.3,
            train_loss: 0.2,
            epochs: 2.0,
            wall_seconds: 1.5,
            iterations: 40,
            layers: vec![
                LayerResult { name: "fc1.weight".into(), kept: 3, total: 10, bits: vec![0b1110_0000, 0], collapsed: false, weight_norm: 1.0, units: None },
                LayerResult {
                    name: "fc2.weight".into(),
                    kept: 4,
                    total: 4,
                    bits: vec![0b1111_0000],
                    collapsed: false,
                    weight_norm: 2.0,
                    units: Some(UnitStats { outputs: 2, dead_outputs: 0, inputs: 2, dead_inputs: 0, output_layer: true }),
                },
            ],
            device: "cpu".into(),
            diverged: false,
        }
    }

    fn refused(r: &LevelResult) -> String {
        r.validate().unwrap_err().to_string()
    }

    #[test]
    fn a_valid_result_passes_and_each_broken_field_is_named() {
        assert_eq!(valid().validate(), Ok(()));
        let cases: [(fn(&mut LevelResult), &str); 18] = [
            (|r| r.sparsity = 1.5, "sparsity = 1.5 is outside [0, 1]"),
            (|r| r.test_accuracy = f64::NAN, "test_accuracy = NaN is outside"),
            (|r| r.epochs = -1.0, "epochs = -1"),
            (|r| r.epochs = f64::INFINITY, "epochs = inf"),
            (|r| r.wall_seconds = -0.5, "wall_seconds"),
            (|r| r.iterations = u64::MAX, "iterations"),
            (|r| r.test_loss = f64::NAN, "report it with diverged = true"),
            (|r| r.train_loss = -0.1, "train_loss = -0.1 is negative"),
            (|r| r.device = "x".repeat(129), "result.device"),
            (|r| r.device = "cuda\n".into(), "result.device"),
            (|r| r.layers[1].name = "fc1.weight".into(), "reported twice"),
            (|r| r.layers[0].weight_norm = f64::INFINITY, "weight_norm = inf is not a number"),
            (|r| r.layers[0].kept = 11, "kept 11 > total 10"),
            (|r| r.layers[0].bits = vec![0b1110_0000], "mask has 1 bytes, expected ceil(10/8) = 2"),
            (|r| r.layers[0].bits = vec![0b1110_0000, 0b0000_0001], "padding bits after bit 10"),
            (|r| r.layers[0].kept = 2, "mask has 3 bits set but kept = 2"),
            (|r| r.layers[1].units.as_mut().unwrap().dead_outputs = 3, "do not fit a weight of 4 entries"),
            (|r| r.layers[1].units.as_mut().unwrap().inputs = 3, "do not fit"),
        ];
        for (i, (break_it, expect)) in cases.into_iter().enumerate() {
            let mut r = valid();
            break_it(&mut r);
            let e = refused(&r);
            assert!(e.starts_with("invalid result: ") && e.contains(expect), "case {i}: {e:?} should say {expect:?}");
        }
    }

    #[test]
    fn a_diverged_run_may_have_non_finite_losses_and_norms_but_nothing_else() {
        let mut r = valid();
        r.train_loss = f64::NAN;
        r.test_loss = f64::INFINITY;
        r.layers[0].weight_norm = f64::NAN;
        assert!(refused(&r).contains("diverged = true"));
        r.diverged = true;
        assert_eq!(r.validate(), Ok(()));
        r.test_loss = -1.0;
        assert!(refused(&r).contains("negative"), "a negative loss is wrong even in a diverged run");
        r.test_loss = f64::NAN;
        r.test_accuracy = 2.0;
        assert!(refused(&r).contains("test_accuracy"), "diverged excuses losses and norms only");
    }

    #[test]
    fn losses_are_numbers_unless_the_run_diverged() {
        assert!(check_loss("l", 0.3, false).is_ok());
        assert!(check_loss("l", f64::NAN, false).unwrap_err().contains("diverged = true"));
        assert!(check_loss("l", f64::INFINITY, false).is_err());
        assert!(check_loss("l", -0.1, false).unwrap_err().contains("negative"));
        assert!(check_loss("l", -0.1, true).is_err(), "a negative loss is wrong even in a diverged run");
        assert!(check_loss("l", f64::NAN, true).is_ok());
        assert_eq!(stored_number(f64::NAN), f64::INFINITY);
        assert_eq!(stored_number(f64::NEG_INFINITY), f64::INFINITY);
        assert_eq!(stored_number(0.25), 0.25);
        assert!(diverged(f64::NAN, 0.1, [1.0]));
        assert!(diverged(0.1, 0.1, [f64::INFINITY]));
        assert!(!diverged(0.1, 0.2, [1.0, 2.0]));
    }

    #[test]
    fn layers_must_be_the_models() {
        let model = vec!["fc1.weight".to_string(), "fc2.weight".to_string()];
        assert!(layers_match(&["fc2.weight", "fc1.weight"], &model).is_ok());
        assert!(layers_match(&["fc1.weight", "fc9.weight"], &model).unwrap_err().contains("\"fc9.weight\" is not a layer"));
        assert!(layers_match(&["fc1.weight"], &model).unwrap_err().contains("lacks"));
    }

    #[test]
    fn the_wire_round_trips_and_outputs_zero_means_no_units() {
        let r = valid();
        let wire = pb::LevelResult::from(r.clone());
        assert_eq!(wire.layers[0].outputs, 0);
        assert_eq!((wire.layers[1].outputs, wire.layers[1].output_layer), (2, true));
        assert_eq!(wire.layers[0].mask_bits, r.layers[0].bits);
        assert_eq!(LevelResult::from(wire), r);
    }

    #[test]
    fn json_keeps_the_report_files_shape_and_non_finite_numbers() {
        let mut r = valid();
        r.train_loss = f64::INFINITY;
        r.layers[0].weight_norm = f64::NEG_INFINITY;
        r.device = String::new();
        let json: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(json["train_loss"], "inf");
        assert_eq!(json["layers"][0]["weight_norm"], "-inf");
        assert_eq!(json["layers"][0]["mask_bits"], serde_json::json!([0b1110_0000, 0]));
        assert_eq!(json["layers"][1]["dead_inputs"], 0);
        assert!(json.get("device").is_none(), "the engine does not know its device");
        let back: LevelResult = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
        // A report from before dead units and `diverged`, with a NaN written as null.
        let old = r#"{"sparsity":0.5,"test_accuracy":0.9,"test_loss":null,"train_loss":0.2,"epochs":2.0,"wall_seconds":1.0,"iterations":4,
            "layers":[{"name":"fc.weight","kept":1,"total":8,"mask_bits":[128],"collapsed":false,"weight_norm":1.0}]}"#;
        let old: LevelResult = serde_json::from_str(old).unwrap();
        assert!(old.test_loss.is_nan() && !old.diverged && old.device.is_empty());
        assert_eq!(old.layers[0].units, None);
    }
}
