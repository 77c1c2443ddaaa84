//! Artifact files (safetensors) and their naming.
//!
//! - "rewind" (`rewind.safetensors`): every variable of θk under its own name
//!   (`layer1.0.conv1.weight`, `bn1.running_mean`, ...): a plain state dict.
//! - "weights" (`weights.safetensors`): the trained variables under their own names, plus the mask
//!   of every prunable layer as a uint8 tensor of the weight's shape (1 = kept, 0 = pruned) named
//!   `mask.<weight name>`, e.g. `mask.layer1.0.conv1.weight`.
//! - "checkpoint" (`checkpoint.safetensors`, see `engine::CHECKPOINT_FILE`): `model.<name>` for
//!   every variable, `momentum.<name>` for every parameter, `mask.<name>`, and `state.iteration`
//!   (i64), `state.loss_sum` (f32), `state.loss_steps` (i64), `state.spec` (the step's JSON as
//!   uint8, so a checkpoint is never resumed under another spec).
//!
//! Every file is written to a temporary name in the same folder and renamed into place, so a
//! killed process never leaves a torn artifact.

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

pub const MASK_PREFIX: &str = "mask.";

/// Writes named tensors atomically (tmp + rename). Tensors are made contiguous on the CPU first.
pub fn write_atomic(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let cpu: Vec<(String, Tensor)> = tensors.iter().map(|(n, t)| (n.clone(), t.detach().to_device(Device::Cpu).contiguous())).collect();
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    Tensor::write_safetensors(&cpu, &tmp).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

pub fn read(path: &Path) -> Result<HashMap<String, Tensor>> {
    if !path.is_file() {
        bail!("artifact {} does not exist", path.display());
    }
    let v = Tensor::read_safetensors(path).with_context(|| format!("reading safetensors file {} (corrupt or not safetensors?)", path.display()))?;
    Ok(v.into_iter().collect())
}

/// Copies `prefix + name` tensors of `src` into the network variables (all must be present).
pub fn load_variables(vars: &[(String, Tensor)], src: &HashMap<String, Tensor>, prefix: &str, what: &str) -> Result<()> {
    tch::no_grad(|| -> Result<()> {
        for (name, t) in vars {
            let key = format!("{prefix}{name}");
            let Some(s) = src.get(&key) else {
                bail!("{what} has no tensor {key}: it was written for another model or policy")
            };
            if s.size() != t.size() {
                bail!("{what}: {key} has shape {:?}, the model expects {:?}", s.size(), t.size());
            }
            let mut t = t.shallow_clone();
            t.copy_(s);
        }
        Ok(())
    })
}

pub fn scalar_i64(v: i64) -> Tensor {
    Tensor::from_slice(&[v])
}

pub fn get_i64(src: &HashMap<String, Tensor>, key: &str) -> Result<i64> {
    let t = src.get(key).with_context(|| format!("checkpoint lacks {key}"))?;
    Ok(t.to_kind(Kind::Int64).int64_value(&[0]))
}

pub fn bytes_of(t: &Tensor) -> Result<Vec<u8>> {
    Ok(Vec::<u8>::try_from(&t.to_kind(Kind::Uint8).flatten(0, -1))?)
}
