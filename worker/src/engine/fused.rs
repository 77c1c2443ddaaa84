//! The fused optimizer step through the C++ shim (`worker/shim/lth_shim.cpp`): libtorch's
//! `at::_fused_sgd_` for SGD with momentum, Nesterov and weight decay, `at::_foreach_mul_` for the
//! masks and `at::_foreach_zero_` for the gradients, on tensor lists built once per trainer. No
//! temporaries per step: parameters, gradients and momentum buffers are updated in place.
//!
//! tch's `Tensor` is a handle to a `torch::Tensor*`; `as_ptr` passes it across unchanged. The
//! shim keeps its own references (refcounts) to every tensor of its lists, so a `FusedStep`
//! stays valid however the Rust side's handles move; it must be rebuilt when the lists change
//! (new masks).

use anyhow::{bail, Result};
use std::ffi::CStr;
use tch::{Kind, Tensor};
use torch_sys::C_tensor;

#[repr(C)]
struct LthStep {
    _private: [u8; 0],
}

extern "C" {
    fn lth_shim_last_error() -> *const libc::c_char;
    fn lth_step_new(
        params: *const *const C_tensor,
        n_params: usize,
        bufs: *const *const C_tensor,
        n_bufs: usize,
        weights: *const *const C_tensor,
        masks: *const *const C_tensor,
        n_masks: usize,
        grad_scale: f64,
    ) -> *mut LthStep;
    fn lth_step_free(s: *mut LthStep);
    fn lth_step_sgd(s: *mut LthStep, weight_decay: f64, momentum: f64, lr: f64, nesterov: bool) -> libc::c_int;
    fn lth_step_sgd_tensor_lr(s: *mut LthStep, weight_decay: f64, momentum: f64, lr: *const C_tensor, nesterov: bool) -> libc::c_int;
    fn lth_step_masks(s: *mut LthStep) -> libc::c_int;
    fn lth_step_zero_grad(s: *mut LthStep) -> libc::c_int;
    fn lth_step_clear_grad(s: *mut LthStep) -> libc::c_int;
}

fn last_error(what: &str) -> anyhow::Error {
    // SAFETY: the shim returns a NUL-terminated thread-local string, valid until its next call.
    let msg = unsafe { CStr::from_ptr(lth_shim_last_error()) }.to_string_lossy().into_owned();
    anyhow::anyhow!("{what}: {msg}")
}

fn check(rc: libc::c_int, what: &str) -> Result<()> {
    if rc == 0 { Ok(()) } else { Err(last_error(what)) }
}

/// Why the fused path does not apply to these tensors (the per-tensor path is used then), or None.
pub fn unsupported(params: &[(String, Tensor)], weights: &[&Tensor], masks: &[&Tensor]) -> Option<String> {
    let Some((_, first)) = params.first() else { return Some("no parameters".into()) };
    let device = first.device();
    for (name, p) in params {
        match p.kind() {
            Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16 => {}
            k => return Some(format!("parameter {name} is {k:?} (fused SGD takes floating-point tensors)")),
        }
        if p.device() != device {
            return Some(format!("parameter {name} is on {:?}, the first on {device:?}", p.device()));
        }
    }
    for (w, m) in weights.iter().zip(masks) {
        if w.kind() != m.kind() || w.device() != m.device() || w.size() != m.size() {
            return Some("a mask differs from its weight in type, device or shape".into());
        }
    }
    None
}

/// The shim's lists for one trainer: parameters with their momentum buffers, masked weights with
/// their masks.
pub struct FusedStep {
    raw: *mut LthStep,
}

// SAFETY: the shim's object holds tensor references only; tch tensors are Send as well.
unsafe impl Send for FusedStep {}

impl FusedStep {
    /// `momentum` is empty when the optimizer has no momentum; otherwise one buffer per parameter.
    /// `grad_scale` ≠ 1 divides each gradient by it inside the step (fp16's static loss scale).
    /// `new` for tensors the shim accepts; for others (`unsupported`) the reason as the error, so
    /// that the caller falls back to the per-tensor step.
    pub fn checked(params: &[(String, Tensor)], momentum: &[Tensor], weights: &[&Tensor], masks: &[&Tensor], grad_scale: f64) -> Result<Self> {
        match unsupported(params, weights, masks) {
            Some(why) => Err(anyhow::anyhow!(why)),
            None => Self::new(params, momentum, weights, masks, grad_scale),
        }
    }

    pub fn new(params: &[(String, Tensor)], momentum: &[Tensor], weights: &[&Tensor], masks: &[&Tensor], grad_scale: f64) -> Result<Self> {
        if !momentum.is_empty() && momentum.len() != params.len() {
            bail!("{} momentum buffers for {} parameters", momentum.len(), params.len());
        }
        if weights.len() != masks.len() {
            bail!("{} masked weights but {} masks", weights.len(), masks.len());
        }
        let p: Vec<*const C_tensor> = params.iter().map(|(_, t)| t.as_ptr()).collect();
        let b: Vec<*const C_tensor> = momentum.iter().map(|t| t.as_ptr()).collect();
        let w: Vec<*const C_tensor> = weights.iter().map(|t| t.as_ptr()).collect();
        let m: Vec<*const C_tensor> = masks.iter().map(|t| t.as_ptr()).collect();
        // SAFETY: every pointer is a live tch tensor handle for the duration of the call; the
        // shim copies the tensors (reference counts), not the pointers.
        let raw = unsafe { lth_step_new(p.as_ptr(), p.len(), b.as_ptr(), b.len(), w.as_ptr(), m.as_ptr(), m.len(), grad_scale) };
        if raw.is_null() {
            return Err(last_error("building the fused step"));
        }
        Ok(FusedStep { raw })
    }

    /// PyTorch's SGD (dampening 0) on every parameter whose gradient is defined.
    pub fn sgd(&mut self, weight_decay: f64, momentum: f64, lr: f64, nesterov: bool) -> Result<()> {
        // SAFETY: `raw` is a live shim object owned by self.
        check(unsafe { lth_step_sgd(self.raw, weight_decay, momentum, lr, nesterov) }, "at::_fused_sgd_")
    }

    /// [`Self::sgd`] with the learning rate read from a device scalar at run time (a CUDA graph
    /// replays the step with the rate its caller filled in, `engine::graph`).
    pub fn sgd_tensor_lr(&mut self, weight_decay: f64, momentum: f64, lr: &Tensor, nesterov: bool) -> Result<()> {
        // SAFETY: `raw` is a live shim object; `lr` a live tensor for the duration of the call.
        check(unsafe { lth_step_sgd_tensor_lr(self.raw, weight_decay, momentum, lr.as_ptr(), nesterov) }, "at::_fused_sgd_ (tensor lr)")
    }

    /// weight ×= mask for every masked weight.
    pub fn apply_masks(&mut self) -> Result<()> {
        // SAFETY: as above.
        check(unsafe { lth_step_masks(self.raw) }, "at::_foreach_mul_")
    }

    /// Zeroes every defined gradient in place.
    pub fn zero_grad(&mut self) -> Result<()> {
        // SAFETY: as above.
        check(unsafe { lth_step_zero_grad(self.raw) }, "at::_foreach_zero_")
    }
}

impl FusedStep {
    /// Drops every gradient (set to none); backward then stores fresh ones.
    pub fn clear_grad(&mut self) -> Result<()> {
        // SAFETY: as above.
        check(unsafe { lth_step_clear_grad(self.raw) }, "clearing gradients")
    }
}

impl Drop for FusedStep {
    fn drop(&mut self) {
        // SAFETY: created by lth_step_new, freed once.
        unsafe { lth_step_free(self.raw) }
    }
}
