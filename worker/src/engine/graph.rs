//! CUDA-graph replay of the whole training step (forward, backward, fused SGD, masks), through
//! the graph shim `worker/shim/lth_cuda_graph.cpp`.
//!
//! Small networks on a big GPU are bound by kernel launches, not by arithmetic (ResNet-20 b128:
//! ~10 ms a step in tch and in PyTorch eager on an H200, DESIGN.md): a replayed graph launches the
//! step's few hundred kernels with one call. What a replay needs, and what [`GraphedStep`] keeps:
//! - static inputs: the batch is copied into buffers allocated once ([`GraphedStep::x`], `y`),
//!   and the learning rate is a device scalar filled before each replay (the SGD step takes it
//!   as a tensor, `FusedStep::sgd_tensor_lr`);
//! - static gradients: they are zeroed in place inside the graph (never set to none), so backward
//!   accumulates into the same memory at every replay;
//! - no host synchronisation inside: the loss stays on the device (the caller sums it and reads it
//!   once per epoch, as the eager loop does);
//! - warm-up: the first [`WARMUP_STEPS`] steps of a trainer run eagerly on the graph's side stream
//!   (cuDNN's benchmark search, cuBLAS workspaces, the gradients' memory happen there), the next
//!   is captured and then replayed, and every later step is a replay. The warm-up steps are real
//!   training steps on real batches, so a run's steps are the same with and without the graph.
//!
//! The shim is a shared object of its own because the graph API lives in libtorch_cuda, which the
//! binary does not link (one binary serves CPU and GPU nodes, `engine::cuda`). `build.rs`
//! compiles it when the CUDA runtime headers are at hand and the binary embeds it; on a GPU node
//! it is written to a memfd and dlopened after libtorch_cuda.so. Anything that goes wrong (no
//! shim in this build, no CUDA backend, an operation that cannot be captured) is an error that the
//! trainers turn into one log line and eager steps.

use anyhow::{bail, Context, Result};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use tch::{Device, Tensor};

/// Eager steps on the side stream before the capture.
pub const WARMUP_STEPS: u32 = 3;

type NewFn = unsafe extern "C" fn(c_int) -> *mut c_void;
type FreeFn = unsafe extern "C" fn(*mut c_void);
type OpFn = unsafe extern "C" fn(*mut c_void) -> c_int;
type ErrFn = unsafe extern "C" fn() -> *const c_char;

struct GraphLib {
    last_error: ErrFn,
    new: NewFn,
    free: FreeFn,
    enter: OpFn,
    leave: OpFn,
    capture_begin: OpFn,
    capture_end: OpFn,
    capture_abort: OpFn,
    replay: OpFn,
}

#[cfg(lth_cuda_graph)]
static GRAPH_SHIM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/liblth_cuda_graph.so"));

/// Whether this binary carries the graph shim (it was built with the CUDA runtime headers).
pub fn built_in() -> bool {
    cfg!(lth_cuda_graph)
}

/// Makes an already loaded library's symbols global (dlopen of a loaded object with RTLD_GLOBAL
/// promotes it); the graph shim resolves libc10_cuda's and the CUDA runtime's symbols from them.
fn promote(name: &str, noload: bool) {
    let Ok(c) = CString::new(name) else { return };
    let flags = libc::RTLD_NOW | libc::RTLD_GLOBAL | if noload { libc::RTLD_NOLOAD } else { 0 };
    // SAFETY: dlopen with a valid C string; handles are never closed (the libraries stay loaded).
    unsafe { libc::dlopen(c.as_ptr(), flags) };
}

#[cfg(lth_cuda_graph)]
fn open_shim() -> Result<*mut c_void> {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    let name = CString::new("lth_cuda_graph").expect("no NUL");
    // SAFETY: memfd_create with a valid name; the fd is owned by the File below.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    let (path, _keep): (String, Option<tempfile_guard::Guard>) = if fd >= 0 {
        // SAFETY: fd is a fresh descriptor we own.
        let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
        f.write_all(GRAPH_SHIM).context("writing the CUDA-graph shim to a memfd")?;
        let path = format!("/proc/self/fd/{fd}");
        // The File must outlive dlopen; leak it (a few tens of KiB, once per process).
        std::mem::forget(f);
        (path, None)
    } else {
        let g = tempfile_guard::Guard::write(GRAPH_SHIM)?;
        (g.path.to_string_lossy().into_owned(), Some(g))
    };
    let c = CString::new(path.as_bytes()).expect("no NUL");
    // SAFETY: dlopen of the shim we just wrote.
    let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if h.is_null() {
        bail!("loading the CUDA-graph shim failed: {} (it needs libtorch_cuda.so and libc10_cuda.so of torch 2.11 loaded first)", super::cuda::dl_error());
    }
    Ok(h)
}

#[cfg(not(lth_cuda_graph))]
fn open_shim() -> Result<*mut c_void> {
    bail!("this lth-worker was built without CUDA-graph replay (no CUDA runtime headers at build time: run scripts/fetch-libtorch.sh and rebuild)")
}

#[cfg(lth_cuda_graph)]
mod tempfile_guard {
    //! Fallback where memfd_create is refused (old kernels, seccomp): a private temporary file,
    //! removed once loaded.
    use anyhow::{Context, Result};
    use std::path::PathBuf;
    pub struct Guard {
        pub path: PathBuf,
    }
    impl Guard {
        pub fn write(bytes: &[u8]) -> Result<Guard> {
            let path = std::env::temp_dir().join(format!("lth_cuda_graph-{}.so", std::process::id()));
            std::fs::write(&path, bytes).with_context(|| format!("writing the CUDA-graph shim to {}", path.display()))?;
            Ok(Guard { path })
        }
    }
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn load() -> Result<GraphLib> {
    let Some(cuda_lib) = super::cuda::loaded_cuda_backend() else {
        bail!("CUDA graphs need the CUDA backend (libtorch_cuda.so), which is not loaded in this process");
    };
    if let Some(dir) = cuda_lib.parent() {
        promote(&dir.join("libc10_cuda.so").to_string_lossy(), false);
    }
    promote("libcudart.so.13", true);
    let h = open_shim()?;
    let sym = |name: &str| -> Result<*mut c_void> {
        let c = CString::new(name).expect("no NUL");
        // SAFETY: dlsym on the handle we opened.
        let p = unsafe { libc::dlsym(h, c.as_ptr()) };
        if p.is_null() {
            bail!("the CUDA-graph shim has no {name}");
        }
        Ok(p)
    };
    // SAFETY: the signatures match the shim's extern "C" declarations.
    unsafe {
        Ok(GraphLib {
            last_error: std::mem::transmute::<*mut c_void, ErrFn>(sym("lth_graph_last_error")?),
            new: std::mem::transmute::<*mut c_void, NewFn>(sym("lth_graph_new")?),
            free: std::mem::transmute::<*mut c_void, FreeFn>(sym("lth_graph_free")?),
            enter: std::mem::transmute::<*mut c_void, OpFn>(sym("lth_graph_enter")?),
            leave: std::mem::transmute::<*mut c_void, OpFn>(sym("lth_graph_leave")?),
            capture_begin: std::mem::transmute::<*mut c_void, OpFn>(sym("lth_graph_capture_begin")?),
            capture_end: std::mem::transmute::<*mut c_void, OpFn>(sym("lth_graph_capture_end")?),
            capture_abort: std::mem::transmute::<*mut c_void, OpFn>(sym("lth_graph_capture_abort")?),
            replay: std::mem::transmute::<*mut c_void, OpFn>(sym("lth_graph_replay")?),
        })
    }
}

fn lib() -> Result<&'static GraphLib> {
    static LIB: std::sync::OnceLock<Result<GraphLib, String>> = std::sync::OnceLock::new();
    LIB.get_or_init(|| load().map_err(|e| format!("{e:#}"))).as_ref().map_err(|e| anyhow::anyhow!("{e}"))
}

/// Whether CUDA graphs can be used in this process; the reason when not.
pub fn available() -> Result<()> {
    lib().map(|_| ())
}

/// One `at::cuda::CUDAGraph` with its side stream.
struct CudaGraph {
    raw: *mut c_void,
    lib: &'static GraphLib,
}

// SAFETY: the shim's object is used from the thread that owns the trainer only.
unsafe impl Send for CudaGraph {}

impl CudaGraph {
    fn new(device: usize) -> Result<Self> {
        let lib = lib()?;
        // SAFETY: plain call into the shim.
        let raw = unsafe { (lib.new)(device as c_int) };
        if raw.is_null() {
            bail!("creating a CUDA graph: {}", Self::error(lib));
        }
        Ok(CudaGraph { raw, lib })
    }

    fn error(lib: &GraphLib) -> String {
        // SAFETY: a NUL-terminated thread-local string of the shim.
        unsafe { CStr::from_ptr((lib.last_error)()) }.to_string_lossy().into_owned()
    }

    fn call(&self, f: OpFn, what: &str) -> Result<()> {
        // SAFETY: `raw` is a live shim object owned by self.
        if unsafe { f(self.raw) } == 0 { Ok(()) } else { bail!("{what}: {}", Self::error(self.lib)) }
    }
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        // SAFETY: created by lth_graph_new, freed once.
        unsafe { (self.lib.free)(self.raw) }
    }
}

/// The body of one training step on the static buffers: (x, y, lr as a device scalar) → the
/// step's loss (detached, on the device). It must zero the gradients in place, not drop them.
pub type StepBody<'b> = dyn FnMut(&Tensor, &Tensor, &Tensor) -> Result<Tensor> + 'b;

/// What [`GraphedStep::step`] did.
pub enum Outcome {
    /// The step ran (eagerly on the side stream while warming up, or as a replay): its loss.
    Ran(Tensor),
    /// The graph cannot run this step, and nothing of the step ran: train eagerly instead. The
    /// reason is for the log.
    Refused(anyhow::Error),
}

/// A trainer's graph: warm-up steps, then one capture, then replays (see the module docs).
pub struct GraphedStep {
    graph: CudaGraph,
    x: Tensor,
    y: Tensor,
    lr: Tensor,
    /// The captured step's output, rewritten in place by every replay.
    loss: Option<Tensor>,
    warm: u32,
}

impl GraphedStep {
    /// A graph for batches shaped like (x, y) on `device` (CUDA only).
    pub fn new(device: Device, x: &Tensor, y: &Tensor) -> Result<Self> {
        let Device::Cuda(i) = device else { bail!("CUDA graphs need a CUDA device, not {device:?}") };
        let graph = CudaGraph::new(i)?;
        // zeros_like keeps the memory format, so a channels-last batch gets a channels-last buffer.
        let x = x.zeros_like();
        let y = y.zeros_like();
        // Float: the CUDA kernel of at::_fused_sgd_ reads a tensor learning rate as a float.
        let lr = Tensor::zeros([], (tch::Kind::Float, device));
        Ok(GraphedStep { graph, x, y, lr, loss: None, warm: 0 })
    }

    pub fn captured(&self) -> bool {
        self.loss.is_some()
    }

    /// One training step through the graph. `Err` is an error of the step itself (it may have
    /// run in part); `Refused` means nothing ran (a failed capture records but runs nothing).
    pub fn step(&mut self, x: &Tensor, y: &Tensor, lr: f64, body: &mut StepBody<'_>) -> Result<Outcome> {
        if x.size() != self.x.size() || y.size() != self.y.size() || x.kind() != self.x.kind() || x.stride() != self.x.stride() {
            return Ok(Outcome::Refused(anyhow::anyhow!(
                "the batch changed shape or layout ({:?} → {:?}); a captured graph replays one shape",
                self.x.size(),
                x.size()
            )));
        }
        tch::no_grad(|| {
            self.x.copy_(x);
            self.y.copy_(y);
            let _ = self.lr.fill_(lr);
        });
        if let Some(loss) = &self.loss {
            self.graph.call(self.graph.lib.replay, "replaying the CUDA graph")?;
            return Ok(Outcome::Ran(loss.shallow_clone()));
        }
        if self.warm < WARMUP_STEPS {
            if let Err(e) = self.graph.call(self.graph.lib.enter, "entering the graph's side stream") {
                return Ok(Outcome::Refused(e));
            }
            let out = run_body(body, &self.x, &self.y, &self.lr);
            self.graph.call(self.graph.lib.leave, "leaving the graph's side stream")?;
            self.warm += 1;
            return out.map(Outcome::Ran);
        }
        if let Err(e) = self.graph.call(self.graph.lib.capture_begin, "beginning the CUDA-graph capture") {
            return Ok(Outcome::Refused(e));
        }
        let loss = match run_body(body, &self.x, &self.y, &self.lr) {
            Ok(l) => l,
            Err(e) => {
                let _ = self.graph.call(self.graph.lib.capture_abort, "abandoning the capture");
                return Ok(Outcome::Refused(e.context("capturing the training step")));
            }
        };
        if let Err(e) = self.graph.call(self.graph.lib.capture_end, "ending the CUDA-graph capture") {
            return Ok(Outcome::Refused(e));
        }
        self.loss = Some(loss.shallow_clone());
        // The capture recorded the step without running it: run it now.
        self.graph.call(self.graph.lib.replay, "replaying the CUDA graph")?;
        Ok(Outcome::Ran(loss))
    }
}

/// Runs `body`, turning a panic of a tch call (tch panics on C++ errors; a capture makes some
/// operations fail that work eagerly) into an error so that an open capture can be abandoned.
fn run_body(body: &mut StepBody<'_>, x: &Tensor, y: &Tensor, lr: &Tensor) -> Result<Tensor> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(x, y, lr))) {
        Ok(r) => r,
        Err(p) => {
            let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_else(|| "panic".into());
            bail!("{msg}")
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn without_a_cuda_backend_graphs_are_refused_with_the_reason() {
        // The unit tests run on CPU: libtorch_cuda.so is never loaded here.
        let e = super::available().unwrap_err().to_string();
        assert!(e.contains("CUDA backend") || e.contains("built without"), "{e}");
    }
}
