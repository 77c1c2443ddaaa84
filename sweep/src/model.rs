//! Which network a sweep trains: one of the built-in models, or the user's own network exported
//! from PyTorch as TorchScript (`model = { torchscript = "net.pt" }`).
//!
//! A TorchScript model is identified by the sha256 of its file, not by its path: the digest enters
//! every job's content hash (two sweeps training the same file share results wherever it lies), and
//! the worker refuses to train a file whose digest differs from the one submitted.

use crate::ModelKind;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};

/// How a TorchScript model's trainable parameters start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelInit {
    /// Kaiming-normal weights drawn from (seed, parameter name), as for the built-in models, so
    /// that seeds differ and a TorchScript copy of a built-in network starts at the same θ0.
    /// Rank ≥ 2 parameters get std = sqrt(2 / fan_in); rank-1 parameters named `weight` (norm
    /// scales) start at 1; every other trainable parameter at 0.
    #[default]
    Seed,
    /// The values stored in the file (the exporter's own initialisation): every seed then shares
    /// θ0 and differs only in data order and augmentation.
    File,
}

/// A network exported with `torch.jit.script` or `torch.jit.trace` and saved with `torch.jit.save`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TorchScriptModel {
    /// Path of the `.pt` file. In a sweep file a relative path is relative to the sweep file's
    /// folder; once read it is absolute (workers read it there, unless `uploaded`: then this is
    /// only the file's name).
    pub torchscript: String,
    /// sha256 (64 hex digits) of the file. Filled in when the sweep file is read; when written in
    /// the sweep file it pins the model, and a different file is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "is_default_init")]
    pub init: ModelInit,
    /// The file was uploaded through the coordinator (`lthctl submit` does so unless told
    /// `--no-upload`): workers fetch it by `sha256` and `torchscript` is then only the file's name.
    /// Not part of the job hash: the same file trains to the same results however it travels.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub uploaded: bool,
}

fn is_default_init(i: &ModelInit) -> bool {
    *i == ModelInit::Seed
}

/// The network of a sweep: `model = "resnet20"` or `model = { torchscript = "net.pt" }`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ModelSpec {
    Builtin(ModelKind),
    TorchScript(TorchScriptModel),
}

impl ModelKind {
    pub const ALL: [ModelKind; 5] = [Self::Resnet18, Self::Resnet18Imagenet, Self::Resnet20, Self::Vgg16, Self::Lenet300100];

    /// Parses a sweep file's model name (or an alias), naming the known models on failure.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "resnet18" | "resnet18_cifar" => Ok(Self::Resnet18),
            "resnet18_imagenet" => Ok(Self::Resnet18Imagenet),
            "resnet20" => Ok(Self::Resnet20),
            "vgg16" => Ok(Self::Vgg16),
            "lenet300100" | "lenet" | "lenet_300_100" => Ok(Self::Lenet300100),
            _ => Err(format!(
                "unknown model {s:?}; the built-in models are {}, or give your own as model = {{ torchscript = \"net.pt\" }}",
                Self::ALL.map(|m| m.as_str()).join(", ")
            )),
        }
    }
}

impl ModelSpec {
    /// The built-in model's name, or "torchscript".
    pub fn as_str(&self) -> &'static str {
        match self {
            ModelSpec::Builtin(k) => k.as_str(),
            ModelSpec::TorchScript(_) => "torchscript",
        }
    }

    pub fn builtin(&self) -> Option<ModelKind> {
        match self {
            ModelSpec::Builtin(k) => Some(*k),
            ModelSpec::TorchScript(_) => None,
        }
    }

    pub fn torchscript(&self) -> Option<&TorchScriptModel> {
        match self {
            ModelSpec::TorchScript(t) => Some(t),
            ModelSpec::Builtin(_) => None,
        }
    }

    /// Resolves a TorchScript model's relative path against `base` (the sweep file's folder) and
    /// fills in (or checks) its sha256. Built-in models are left alone.
    pub fn resolve_file(&mut self, base: &Path) -> Result<(), String> {
        let ModelSpec::TorchScript(t) = self else { return Ok(()) };
        if t.uploaded {
            return Ok(());
        }
        let given = PathBuf::from(&t.torchscript);
        let path = if given.is_absolute() { given } else { base.join(given) };
        let bytes = std::fs::read(&path).map_err(|e| {
            format!("model.torchscript: cannot read {} ({e}): export the model with torch.jit.save (see docs/byo.md) and give its path, relative to the sweep file", path.display())
        })?;
        let digest = hex::encode(Sha256::digest(&bytes));
        if let Some(pinned) = &t.sha256 {
            if !pinned.eq_ignore_ascii_case(&digest) {
                return Err(format!(
                    "model.torchscript: {} has sha256 {digest}, but the sweep pins sha256 = {pinned:?}: re-export the pinned model, or update (or drop) `sha256`",
                    path.display()
                ));
            }
        }
        let path = path.canonicalize().unwrap_or(path);
        t.torchscript = path.to_string_lossy().into_owned();
        t.sha256 = Some(digest);
        Ok(())
    }
}

/// sha256 of a file, hex; what [`ModelSpec::resolve_file`] records and the worker checks.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    Ok(hex::encode(Sha256::digest(std::fs::read(path)?)))
}

pub(crate) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl From<ModelKind> for ModelSpec {
    fn from(k: ModelKind) -> Self {
        ModelSpec::Builtin(k)
    }
}

impl PartialEq<ModelKind> for ModelSpec {
    fn eq(&self, other: &ModelKind) -> bool {
        self.builtin() == Some(*other)
    }
}

impl fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelSpec::Builtin(k) => f.write_str(k.as_str()),
            ModelSpec::TorchScript(t) => write!(f, "torchscript {}", t.torchscript),
        }
    }
}

/// A built-in model serialises as its name (so sweep files, stored specs and job hashes of
/// built-in models are unchanged), a TorchScript model as its table.
impl Serialize for ModelSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ModelSpec::Builtin(k) => k.serialize(s),
            ModelSpec::TorchScript(t) => t.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for ModelSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ModelSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a built-in model name such as \"resnet20\", or a table such as { torchscript = \"net.pt\" }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ModelSpec, E> {
                ModelKind::parse(v).map(ModelSpec::Builtin).map_err(E::custom)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<ModelSpec, A::Error> {
                TorchScriptModel::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(ModelSpec::TorchScript)
            }
        }
        d.deserialize_any(V)
    }
}

/// What of a model enters a job's content hash: a built-in model's name (exactly as before
/// TorchScript models existed, so old results stay reusable), or a TorchScript file's digest and
/// initialisation, never its path.
#[derive(Serialize)]
#[serde(untagged)]
pub(crate) enum ModelHashKey<'a> {
    Builtin(ModelKind),
    TorchScript { torchscript_sha256: &'a str, init: ModelInit },
}

impl<'a> From<&'a ModelSpec> for ModelHashKey<'a> {
    fn from(m: &'a ModelSpec) -> Self {
        match m {
            ModelSpec::Builtin(k) => ModelHashKey::Builtin(*k),
            ModelSpec::TorchScript(t) => ModelHashKey::TorchScript { torchscript_sha256: t.sha256.as_deref().unwrap_or(""), init: t.init },
        }
    }
}
