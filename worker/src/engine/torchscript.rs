//! Your own network, exported from PyTorch as TorchScript, trained like a built-in one.
//!
//! The file is loaded with libtorch's JIT (`tch::CModule`) on the training device and its
//! parameters are registered in the network's VarStore under their own dotted names, in the
//! module's own order; the VarStore holds the very tensors the module computes with, so the
//! optimizer, the masks, checkpoints and artifacts all act on the module. This is what tch's
//! `TrainableCModule::load` does, except that it renames `fc1.weight` to `fc1_weight`; layer names
//! must stay the ones PyTorch prints, since they key masks and per-layer results.
//!
//! What is trained and what is state: parameters with `requires_grad` are trained; parameters
//! without it are state that checkpoints and θk carry but the optimizer leaves alone. TorchScript
//! gives libtorch's C API no way to reach a module's *buffers* (batch-norm running statistics), so
//! `scripts/lth_export.py` turns buffers into such non-trainable parameters before scripting; a
//! model exported without it still trains (its running statistics then restart from the file's
//! values at every level and on resume).
//!
//! Train/eval mode follows the engine's `train` flag (batch norm and dropout behave as in
//! PyTorch), switched only when it changes.

use super::models::InputShape;
use anyhow::{anyhow, bail, Context, Result};
use lth_sweep::TorchScriptModel;
use std::path::Path;
use std::sync::Mutex;
use tch::{nn, CModule, Device, Kind, Tensor};

/// A loaded TorchScript module and the mode it is in.
pub struct TorchScriptNet {
    module: Mutex<(CModule, Option<bool>)>,
    path: String,
}

/// The first line of a libtorch error (the rest is a C++ backtrace).
fn first_lines(e: &tch::TchError, n: usize) -> String {
    e.to_string().lines().filter(|l| !l.trim().is_empty()).take(n).collect::<Vec<_>>().join(" | ")
}

impl TorchScriptNet {
    /// Loads `model` onto `device`, registering its parameters under `root`. Returns the network
    /// order (the module's parameter order).
    pub fn load(model: &TorchScriptModel, root: &nn::Path, device: Device) -> Result<(Self, Vec<String>)> {
        let path = Path::new(&model.torchscript);
        if !path.is_file() {
            bail!(
                "the TorchScript model {} does not exist on this worker: models are read by path until they are uploaded through the coordinator, so put the file where every worker sees it",
                path.display()
            );
        }
        if let Some(expected) = &model.sha256 {
            let actual = lth_sweep::file_sha256(path).with_context(|| format!("reading {}", path.display()))?;
            if !actual.eq_ignore_ascii_case(expected) {
                bail!(
                    "the TorchScript model {} has sha256 {actual}, but the sweep was submitted with {expected}: the file changed since; restore it, or submit the sweep again",
                    path.display()
                );
            }
        }
        let module = CModule::load_on_device(path, device).map_err(|e| {
            anyhow!("cannot load {} as a TorchScript module ({}): save it with torch.jit.save(torch.jit.script(model), path), see docs/byo.md", path.display(), first_lines(&e, 2))
        })?;
        let params = module.named_parameters().map_err(|e| anyhow!("listing the parameters of {}: {}", path.display(), first_lines(&e, 2)))?;
        if !params.iter().any(|(_, t)| t.requires_grad()) {
            bail!("the TorchScript model {} has no trainable parameter (none requires grad): export it in training mode, not frozen", path.display());
        }
        let mut order = Vec::with_capacity(params.len());
        for (name, t) in params {
            if name.is_empty() || name.split('.').any(|c| c.is_empty()) {
                bail!("the TorchScript model {} has a parameter with an unusable name {name:?}", path.display());
            }
            if !matches!(t.kind(), Kind::Float) && t.requires_grad() {
                bail!("parameter {name} of {} is {:?}: lth trains float32 parameters (autocast handles reduced precision); export the model in float32", path.display(), t.kind());
            }
            let mut p = root.clone();
            let mut parts: Vec<&str> = name.split('.').collect();
            let leaf = parts.pop().expect("a name has a last component");
            for part in parts {
                p = p.sub(part);
            }
            let trainable = t.requires_grad();
            let _ = p.add(leaf, t, trainable);
            order.push(name);
        }
        Ok((TorchScriptNet { module: Mutex::new((module, None)), path: model.torchscript.clone() }, order))
    }

    fn run(&self, x: &Tensor, train: bool) -> Result<Tensor, tch::TchError> {
        let mut guard = self.module.lock().unwrap_or_else(|p| p.into_inner());
        let (module, mode) = &mut *guard;
        if *mode != Some(train) {
            if train {
                module.f_set_train()?;
            } else {
                module.f_set_eval()?;
            }
            *mode = Some(train);
        }
        module.forward_ts(&[x])
    }

    /// The forward pass. It cannot fail on the dataset's inputs once [`TorchScriptNet::check_fits`]
    /// passed, short of an out-of-memory; that aborts the job with libtorch's message.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.run(x, train).unwrap_or_else(|e| panic!("TorchScript model {}: forward failed: {}", self.path, first_lines(&e, 3)))
    }

    /// Runs a dummy batch of two images of the dataset's shape (eval mode, no gradients, so no
    /// state changes) and checks that the model returns one logit per class.
    pub fn check_fits(&self, input: InputShape, classes: i64, device: Device) -> Result<()> {
        let shape = [2, input.channels, input.height, input.width];
        let x = Tensor::zeros(shape, (Kind::Float, device));
        let out = tch::no_grad(|| self.run(&x, false)).map_err(|e| {
            anyhow!(
                "the TorchScript model {} does not accept the dataset's input shape {shape:?} (batch, channels, height, width): {}. Export a model for {}×{}×{} images, or use a dataset of the shape it was made for",
                self.path,
                first_lines(&e, 2),
                input.channels,
                input.height,
                input.width
            )
        })?;
        if out.size() != [2, classes] {
            bail!(
                "the TorchScript model {} returns shape {:?} for a batch of 2, but the dataset has {classes} classes: the model must return [batch, {classes}] logits",
                self.path,
                out.size()
            );
        }
        Ok(())
    }
}
