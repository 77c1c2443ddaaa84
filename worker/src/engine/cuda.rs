//! CUDA at run time: loading `libtorch_cuda.so` into a CPU-linked binary, and autocast in bf16 or
//! fp16 through libtorch's own (non-deprecated) entry points.
//!
//! The binary links only libtorch_cpu so it runs on any node. On a GPU node, dlopen-ing
//! libtorch_cuda.so with RTLD_GLOBAL before the first tch call registers the CUDA backend.
//! tch's `autocast` is fp16-only and calls the deprecated `at::autocast::is_enabled()`, which
//! prints a warning on every call; instead this module resolves
//! `at::autocast::{set_autocast_enabled, is_autocast_enabled, set_autocast_dtype, ...}` with dlsym
//! (they are exported by libtorch_cpu; c10's enums are int8 and pass as integers in the C ABI).

use anyhow::{bail, Context, Result};
use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use tch::Device;

/// libtorch's `c10::DeviceType::CUDA`.
const K_CUDA: i8 = 1;
/// `c10::ScalarType::Half` and `BFloat16`.
pub const SCALAR_HALF: i8 = 5;
pub const SCALAR_BFLOAT16: i8 = 15;

fn torch_lib_dir_from_python() -> Option<PathBuf> {
    let out = std::process::Command::new("python3")
        .args(["-c", "import torch, os; print(os.path.dirname(torch.__file__)+'/lib')"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    p.is_dir().then_some(p)
}

static LOADED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// The `libtorch_cuda.so` this process loaded, if any (the CUDA-graph shim resolves against it).
pub fn loaded_cuda_backend() -> Option<&'static Path> {
    LOADED.get().map(|p| p.as_path())
}

/// Loads `libtorch_cuda.so` from `dir` (or the Python torch's lib dir) when it exists; returns
/// the path loaded. Missing libraries are not an error: the node is then CPU-only.
pub fn load_cuda_backend(torch_lib_dir: Option<&Path>) -> Result<Option<PathBuf>> {
    let dir = match torch_lib_dir {
        Some(d) => Some(d.to_path_buf()),
        None => torch_lib_dir_from_python(),
    };
    let Some(dir) = dir else { return Ok(None) };
    let lib = dir.join("libtorch_cuda.so");
    if !lib.exists() {
        if torch_lib_dir.is_some() {
            eprintln!("lth-worker: no libtorch_cuda.so in {}; running on CPU only", dir.display());
        }
        return Ok(None);
    }
    let c = CString::new(lib.to_string_lossy().as_bytes()).context("library path contains NUL")?;
    // SAFETY: dlopen with a valid C string; the handle is intentionally never closed.
    let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if h.is_null() {
        let err = dl_error();
        bail!("dlopen {} failed: {err}. Check that --torch-lib-dir points at a torch 2.11 lib folder whose CUDA runtime is installed", lib.display());
    }
    let _ = LOADED.set(lib.clone());
    Ok(Some(lib))
}

/// The reason of the last failed dlopen/dlsym of this thread.
pub(crate) fn dl_error() -> String {
    // SAFETY: dlerror returns a thread-local C string or null.
    unsafe {
        let e = libc::dlerror();
        if e.is_null() { "unknown error".into() } else { CStr::from_ptr(e).to_string_lossy().into_owned() }
    }
}

/// See `engine::init_device`.
pub fn init_device(torch_lib_dir: Option<&Path>, want_cuda: Option<usize>) -> Result<Device> {
    if want_cuda.is_none() {
        return Ok(Device::Cpu);
    }
    if let Err(e) = load_cuda_backend(torch_lib_dir) {
        eprintln!("lth-worker: {e:#}; falling back to CPU");
        return Ok(Device::Cpu);
    }
    let idx = want_cuda.unwrap_or(0);
    if tch::Cuda::is_available() && (idx as i64) < tch::Cuda::device_count() {
        Ok(Device::Cuda(idx))
    } else {
        Ok(Device::Cpu)
    }
}

type SetEnabled = unsafe extern "C" fn(i8, bool);
type IsEnabled = unsafe extern "C" fn(i8) -> bool;
type SetDtype = unsafe extern "C" fn(i8, i8);
type Nesting = unsafe extern "C" fn() -> i64;
type ClearCache = unsafe extern "C" fn();
type GetDtype = unsafe extern "C" fn(i8) -> i8;

struct AutocastFns {
    set_enabled: SetEnabled,
    is_enabled: IsEnabled,
    set_dtype: SetDtype,
    increment: Nesting,
    decrement: Nesting,
    clear_cache: ClearCache,
    get_dtype: GetDtype,
}

fn sym(name: &str) -> Result<*mut libc::c_void> {
    let c = CString::new(name).expect("symbol name");
    // SAFETY: RTLD_DEFAULT lookup of an exported symbol of an already-loaded library.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c.as_ptr()) };
    if p.is_null() {
        bail!("libtorch symbol {name} not found; autocast needs libtorch 2.4 or newer");
    }
    Ok(p)
}

fn autocast_fns() -> Result<&'static AutocastFns> {
    static FNS: std::sync::OnceLock<Result<AutocastFns, String>> = std::sync::OnceLock::new();
    let r = FNS.get_or_init(|| {
        let load = || -> Result<AutocastFns> {
            // SAFETY: the signatures match libtorch's declarations in ATen/autocast_mode.h.
            unsafe {
                Ok(AutocastFns {
                    set_enabled: std::mem::transmute::<*mut libc::c_void, SetEnabled>(sym("_ZN2at8autocast20set_autocast_enabledEN3c1010DeviceTypeEb")?),
                    is_enabled: std::mem::transmute::<*mut libc::c_void, IsEnabled>(sym("_ZN2at8autocast19is_autocast_enabledEN3c1010DeviceTypeE")?),
                    set_dtype: std::mem::transmute::<*mut libc::c_void, SetDtype>(sym("_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE")?),
                    increment: std::mem::transmute::<*mut libc::c_void, Nesting>(sym("_ZN2at8autocast17increment_nestingEv")?),
                    decrement: std::mem::transmute::<*mut libc::c_void, Nesting>(sym("_ZN2at8autocast17decrement_nestingEv")?),
                    clear_cache: std::mem::transmute::<*mut libc::c_void, ClearCache>(sym("_ZN2at8autocast11clear_cacheEv")?),
                    get_dtype: std::mem::transmute::<*mut libc::c_void, GetDtype>(sym("_ZN2at8autocast18get_autocast_dtypeEN3c1010DeviceTypeE")?),
                })
            }
        };
        load().map_err(|e| format!("{e:#}"))
    });
    r.as_ref().map_err(|e| anyhow::anyhow!("{e}"))
}

/// Checks that the autocast entry points resolve (on CPU nodes too: they live in libtorch_cpu).
pub fn autocast_available() -> Result<()> {
    autocast_fns().map(|_| ())
}

/// CUDA autocast state of this thread: (enabled, c10 scalar type).
pub fn cuda_autocast_state() -> Result<(bool, i8)> {
    let fns = autocast_fns()?;
    // SAFETY: reads libtorch's thread-local autocast state.
    Ok(unsafe { ((fns.is_enabled)(K_CUDA), (fns.get_dtype)(K_CUDA)) })
}

/// Runs `f` with CUDA autocast to `dtype` (`SCALAR_HALF` or `SCALAR_BFLOAT16`).
pub fn with_autocast<T>(dtype: i8, f: impl FnOnce() -> T) -> Result<T> {
    let fns = autocast_fns()?;
    // SAFETY: plain calls into libtorch's thread-local autocast state.
    let prev = unsafe {
        let prev = (fns.is_enabled)(K_CUDA);
        (fns.set_dtype)(K_CUDA, dtype);
        (fns.set_enabled)(K_CUDA, true);
        (fns.increment)();
        prev
    };
    // Restored on unwinding too: a CUDA-graph capture turns a failing tch call's panic into an
    // error (engine::graph) and the run goes on eagerly, which must not stay under autocast.
    struct Restore(&'static AutocastFns, bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: plain calls into libtorch's thread-local autocast state.
            unsafe {
                if (self.0.decrement)() == 0 {
                    (self.0.clear_cache)();
                }
                (self.0.set_enabled)(K_CUDA, self.1);
            }
        }
    }
    let _restore = Restore(fns, prev);
    Ok(f())
}
